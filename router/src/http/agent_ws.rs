//! The agent WebSocket, `GET /v1/agents/ws` (`schemas/agent-ws.v1.json`): the first frame is
//! `hello`; then assignments, customer messages and closes arrive as they happen, and the agent
//! replies, closes, transfers and changes presence. When an agent's last socket closes, the
//! agent goes offline (keeping its conversations).

use axum::extract::State;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use switchyard_core::model::AgentStatus;
use switchyard_core::protocol::{AgentEvent, AgentRequest};
use switchyard_core::store::{AgentUpdate, TransferTarget};
use tokio::sync::mpsc;

use super::{ApiError, HttpState};
use crate::error::RouteError;
use crate::hub::SOCKET_BUFFER;

/// Largest agent frame accepted.
const MAX_FRAME: usize = 256 * 1024;

/// Upgrades to an agent session.
pub async fn upgrade(State(state): State<HttpState>, ws: WebSocketUpgrade) -> Response {
    let tracker = state.sockets.clone();
    ws.max_message_size(MAX_FRAME)
        .on_upgrade(move |socket| tracker.track_future(session(socket, state)))
}

fn error_event(client_id: Option<String>, e: ApiError) -> AgentEvent {
    AgentEvent::Error {
        client_id,
        code: e.code,
        message: e.message,
    }
}

async fn session(socket: WebSocket, state: HttpState) {
    let gauge = state
        .metrics
        .websocket_sessions
        .with_label_values(&["agent"]);
    gauge.inc();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<AgentEvent>(SOCKET_BUFFER);
    let writer = async {
        while let Some(event) = rx.recv().await {
            let Ok(text) = serde_json::to_string(&event) else {
                continue;
            };
            if sink.send(WsMessage::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.send(WsMessage::Close(None)).await;
    };
    let reader = async {
        let mut agent: Option<(String, crate::hub::AgentSession)> = None;
        loop {
            let frame = tokio::select! {
                _ = state.shutdown.cancelled() => break,
                f = stream.next() => f,
            };
            let text = match frame {
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            };
            let request: AgentRequest = match serde_json::from_str(text.as_str()) {
                Ok(r) => r,
                Err(e) => {
                    state
                        .metrics
                        .api_errors
                        .with_label_values(&["malformed"])
                        .inc();
                    let _ = tx
                        .send(error_event(
                            None,
                            ApiError::bad_request("malformed", format!("invalid frame: {e}")),
                        ))
                        .await;
                    continue;
                }
            };
            if let AgentRequest::Hello {
                agent_id,
                name,
                pools,
                capacity,
                status,
            } = request
            {
                if agent_id.is_empty() || agent_id.len() > 128 {
                    let _ = tx
                        .send(error_event(
                            None,
                            ApiError::bad_request("invalid", "agent_id must be 1 to 128 bytes"),
                        ))
                        .await;
                    continue;
                }
                // Register before going online, so no assignment slips between the two.
                let session = state.hub.register(&agent_id, tx.clone());
                let update = AgentUpdate {
                    id: agent_id.clone(),
                    name,
                    pools,
                    skills: None,
                    capacity,
                    status: Some(status.unwrap_or(AgentStatus::Online)),
                };
                match welcome(&state, update).await {
                    Ok(event) => {
                        let _ = tx.send(event).await;
                        agent = Some((agent_id, session));
                    }
                    Err(e) => {
                        let _ = tx.send(error_event(None, e.into())).await;
                    }
                }
                continue;
            }
            let Some((agent_id, _)) = &agent else {
                let _ = tx
                    .send(error_event(
                        None,
                        ApiError::bad_request("hello_required", "send `hello` first"),
                    ))
                    .await;
                continue;
            };
            if let Some(answer) = command(&state, agent_id, request).await
                && tx.send(answer).await.is_err()
            {
                break;
            }
        }
        if let Some((agent_id, session)) = agent
            && session.end()
        {
            let update = AgentUpdate {
                id: agent_id.clone(),
                status: Some(AgentStatus::Offline),
                ..AgentUpdate::default()
            };
            if let Err(e) = state.ops.put_agent(update).await {
                tracing::warn!(error = %e, agent_id, "could not mark a disconnected agent offline");
            }
        }
        drop(tx);
    };
    tokio::join!(reader, writer);
    gauge.dec();
}

async fn welcome(state: &HttpState, update: AgentUpdate) -> Result<AgentEvent, RouteError> {
    let agent = state.ops.put_agent(update).await?;
    let mut conversations = Vec::new();
    for c in state.ops.store().agent_conversations(&agent.id).await? {
        conversations.push(state.ops.view_of(c).await?);
    }
    Ok(AgentEvent::Welcome {
        agent,
        conversations,
    })
}

async fn command(state: &HttpState, agent_id: &str, request: AgentRequest) -> Option<AgentEvent> {
    match request {
        AgentRequest::Hello { .. } => None,
        AgentRequest::Ping => Some(AgentEvent::Pong),
        AgentRequest::Status { status, capacity } => {
            let update = AgentUpdate {
                id: agent_id.to_owned(),
                status: Some(status),
                capacity,
                ..AgentUpdate::default()
            };
            match state.ops.put_agent(update).await {
                // The hub forwards `agent.updated` to every socket of this agent.
                Ok(_) => None,
                Err(e) => Some(error_event(None, e.into())),
            }
        }
        AgentRequest::Reply {
            client_id,
            conversation_id,
            content,
        } => match state
            .ops
            .reply(&conversation_id, Some(agent_id), content)
            .await
        {
            Ok(envelope) => Some(AgentEvent::Ack {
                client_id,
                id: Some(envelope.id),
            }),
            Err(e) => Some(error_event(Some(client_id), e.into())),
        },
        AgentRequest::Close { conversation_id } => {
            match state.ops.close(&conversation_id, Some(agent_id)).await {
                Ok(_) => None,
                Err(e) => Some(error_event(None, e.into())),
            }
        }
        AgentRequest::Transfer {
            conversation_id,
            pool,
            agent_id: to_agent,
        } => {
            let target = match (pool, to_agent) {
                (Some(pool), None) => TransferTarget::Pool(pool),
                (None, Some(agent)) => TransferTarget::Agent(agent),
                _ => {
                    return Some(error_event(
                        None,
                        ApiError::bad_request("invalid", "give exactly one of `pool`, `agent_id`"),
                    ));
                }
            };
            match state
                .ops
                .transfer(&conversation_id, Some(agent_id), target)
                .await
            {
                Ok(_) => None,
                Err(e) => Some(error_event(None, e.into())),
            }
        }
    }
}
