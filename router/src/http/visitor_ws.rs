//! The visitor WebSocket, `GET /v1/channels/{channel_id}/ws` (`schemas/visitor-ws.v1.json`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use switchyard_connectors::web::{WebConnector, WebInbound};
use switchyard_connectors::{Connector, ConnectorError};
use switchyard_core::protocol::{VisitorEvent, VisitorRequest};
use tokio::sync::mpsc;

use super::{ApiError, HttpState};

/// Largest visitor frame accepted.
const MAX_FRAME: usize = 64 * 1024;

/// Upgrades to a visitor session; `?visitor_token=` resumes a visitor.
pub async fn upgrade(
    State(state): State<HttpState>,
    Path(channel_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let web = state
        .registry
        .web(&channel_id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no web channel `{channel_id}`")))?;
    let (visitor_id, token) = match query.get("visitor_token") {
        Some(token) => match web.verify_visitor_token(token) {
            Ok(id) => (id, token.clone()),
            // A stale token (secret rotated, restart without secret) starts a new visitor.
            Err(_) => web.new_visitor(),
        },
        None => web.new_visitor(),
    };
    let tracker = state.sockets.clone();
    Ok(ws
        .max_message_size(MAX_FRAME)
        .on_upgrade(move |socket| {
            tracker.track_future(session(socket, state, web, visitor_id, token))
        })
        .into_response())
}

async fn session(
    socket: WebSocket,
    state: HttpState,
    web: Arc<WebConnector>,
    visitor_id: String,
    token: String,
) {
    let gauge = state
        .metrics
        .websocket_sessions
        .with_label_values(&["visitor"]);
    gauge.inc();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<VisitorEvent>(256);
    let (guard, waiting) = web.sessions().register(&visitor_id, tx.clone());
    let welcome = VisitorEvent::Welcome {
        visitor_id: visitor_id.clone(),
        visitor_token: token,
        channel_id: web.channel().id.clone(),
    };
    let _ = tx.try_send(welcome);
    for event in waiting {
        let _ = tx.try_send(event);
    }
    let sessions = Arc::clone(web.sessions());
    let writer = async {
        while let Some(event) = rx.recv().await {
            let Ok(text) = serde_json::to_string(&event) else {
                continue;
            };
            if sink.send(WsMessage::Text(text.into())).await.is_err() {
                // The socket is gone: keep this reply and any queued behind it for next time.
                sessions.keep_for_later(&visitor_id, event);
                rx.close();
                while let Some(rest) = rx.recv().await {
                    sessions.keep_for_later(&visitor_id, rest);
                }
                return;
            }
        }
        let _ = sink.send(WsMessage::Close(None)).await;
    };
    let reader = async {
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
            let answer = handle_frame(&state, &web, &visitor_id, text.as_str()).await;
            if tx.send(answer).await.is_err() {
                break;
            }
        }
        // Unregister first so new replies go to the mailbox, then let the writer finish.
        drop(guard);
        drop(tx);
    };
    // The reader ends the session; the writer then flushes and closes.
    tokio::join!(reader, writer);
    gauge.dec();
}

async fn handle_frame(
    state: &HttpState,
    web: &Arc<WebConnector>,
    visitor_id: &str,
    text: &str,
) -> VisitorEvent {
    let request: VisitorRequest = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.count_inbound(
                &web.channel().id,
                switchyard_core::metrics::InboundOutcome::Malformed,
            );
            return VisitorEvent::Error {
                client_id: None,
                code: "malformed".into(),
                message: format!("invalid frame: {e}"),
            };
        }
    };
    let client_id = match &request {
        VisitorRequest::Message { client_id, .. } | VisitorRequest::Identify { client_id, .. } => {
            client_id.clone()
        }
        VisitorRequest::Ping => return VisitorEvent::Pong,
    };
    let inbound = WebInbound {
        visitor_id: visitor_id.to_owned(),
        request,
    };
    let result = match web.normalize(inbound, switchyard_core::time::now()) {
        Ok(envelopes) => state.ingress.publish_all(&**web, envelopes).await,
        Err(e) => {
            state
                .metrics
                .count_inbound(&web.channel().id, crate::ingress::outcome_of(&e));
            Err(e)
        }
    };
    match result {
        Ok(accepted) => match accepted.into_iter().next() {
            Some(a) => VisitorEvent::Ack {
                client_id,
                id: a.id,
                duplicate: a.duplicate,
            },
            None => VisitorEvent::Error {
                client_id: Some(client_id),
                code: "ignored".into(),
                message: "nothing to route".into(),
            },
        },
        Err(e) => VisitorEvent::Error {
            client_id: Some(client_id),
            code: error_code(&e).into(),
            message: e.to_string(),
        },
    }
}

fn error_code(e: &ConnectorError) -> &'static str {
    e.code()
}
