//! The agent WebSocket, `GET /v1/agents/ws` (`schemas/agent-ws.v1.json`): the first frame is
//! `hello`; then assignments, customer messages and closes arrive as they happen, and the agent
//! replies, closes, transfers and changes presence. When an agent's last socket closes, the
//! agent goes offline (keeping its conversations).
//!
//! While a socket of an agent is open, this gateway heart-beats the agent's presence
//! ([`Store::heartbeat_agent`](switchyard_core::store::Store::heartbeat_agent)): right after the
//! `hello` set it online, then every third of `router.presence_ttl_secs`. If the gateway dies
//! without closing its sockets, the heartbeats stop and the store sets the agent offline once the
//! TTL has passed, so conversations are not assigned to an agent nobody is watching. A clean
//! close ends the presence session (`ttl = 0`) after the offline update.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use switchyard_core::metrics::Metrics;
use switchyard_core::model::AgentStatus;
use switchyard_core::protocol::{AgentEvent, AgentRequest};
use switchyard_core::store::{AgentUpdate, StoreError, Withdrawal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::rest::{check_skill_names, checked_handover, transfer_target};
use super::{ApiError, HttpState};
use crate::error::RouteError;
use crate::hub::SOCKET_BUFFER;

/// Largest agent frame accepted.
const MAX_FRAME: usize = 256 * 1024;
/// How long an agent's hello waits for the gateway's event subscription.
const SUBSCRIBE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Upgrades to an agent session.
pub async fn upgrade(State(state): State<HttpState>, ws: WebSocketUpgrade) -> Response {
    let tracker = state.sockets.clone();
    ws.max_message_size(MAX_FRAME)
        .on_upgrade(move |socket| tracker.track_future(session(socket, state)))
}

/// Sends one heartbeat of `agent_id`'s presence. A heartbeat that resumed a session the store
/// had expired (the agent got its status back) is announced like any agent update, and assigns
/// what waits in the agent's pools.
async fn beat(state: &HttpState, agent_id: &str, ttl: Duration) -> Result<(), StoreError> {
    let resumed = state
        .ops
        .store()
        .heartbeat_agent(agent_id, ttl, switchyard_core::time::now())
        .await?;
    if resumed {
        tracing::info!(agent_id, "agent presence resumed after it had lapsed");
        let update = AgentUpdate {
            id: agent_id.to_owned(),
            ..AgentUpdate::default()
        };
        if let Err(e) = state.put_agent(update).await {
            tracing::warn!(error = %e, agent_id, "could not announce a resumed agent");
        }
    }
    Ok(())
}

/// The heartbeats of one agent socket; stopped (also when dropped) as the socket ends.
struct Heartbeat {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Heartbeat {
    /// Heart-beats `agent_id` once now, then every third of the TTL, until stopped. `None` when
    /// presence is off (`router.presence_ttl_secs = 0`).
    async fn start(state: &HttpState, agent_id: &str) -> Option<Heartbeat> {
        let ttl = state.presence_ttl;
        if ttl.is_zero() {
            return None;
        }
        if let Err(e) = beat(state, agent_id, ttl).await {
            tracing::warn!(error = %e, agent_id, "agent heartbeat failed");
        }
        let period = (ttl / 3).clamp(Duration::from_millis(10), Duration::from_secs(24 * 3600));
        let stop = state.shutdown.child_token();
        let (state, agent_id, token) = (state.clone(), agent_id.to_owned(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                // A heartbeat in flight when the socket ends is not awaited past the stop.
                tokio::select! {
                    _ = token.cancelled() => break,
                    r = beat(&state, &agent_id, ttl) => {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, agent_id, "agent heartbeat failed");
                        }
                    }
                }
            }
        });
        Some(Heartbeat { stop, task })
    }

    /// Stops the heartbeats and waits until none is in flight.
    async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn error_event(metrics: &Metrics, client_id: Option<String>, e: ApiError) -> AgentEvent {
    metrics
        .api_errors
        .with_label_values(&[e.code.as_str()])
        .inc();
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
        let mut heartbeat: Option<Heartbeat> = None;
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
                    let _ = tx
                        .send(error_event(
                            &state.metrics,
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
                skills,
                capacity,
                status,
            } = request
            {
                if agent_id.is_empty() || agent_id.len() > 128 {
                    let _ = tx
                        .send(error_event(
                            &state.metrics,
                            None,
                            ApiError::bad_request("invalid", "agent_id must be 1 to 128 bytes"),
                        ))
                        .await;
                    continue;
                }
                if let Some(Err(e)) = skills.as_deref().map(check_skill_names) {
                    let _ = tx.send(error_event(&state.metrics, None, e)).await;
                    continue;
                }
                // Register before going online, so no assignment slips between the two.
                let session = state.hub.register(&agent_id, tx.clone());
                // The snapshot below must not miss events that follow it.
                if tokio::time::timeout(SUBSCRIBE_WAIT, state.hub.subscribed())
                    .await
                    .is_err()
                {
                    let _ = tx
                        .send(error_event(
                            &state.metrics,
                            None,
                            ApiError::new(
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                "unavailable",
                                "the event stream is not reachable; retry",
                            ),
                        ))
                        .await;
                    continue;
                }
                let update = AgentUpdate {
                    id: agent_id.clone(),
                    name,
                    pools,
                    skills,
                    capacity,
                    status: Some(status.unwrap_or(AgentStatus::Online)),
                };
                match welcome(&state, update).await {
                    Ok(event) => {
                        let _ = tx.send(event).await;
                        if let Some(previous) = heartbeat.take() {
                            previous.stop().await;
                        }
                        heartbeat = Heartbeat::start(&state, &agent_id).await;
                        agent = Some((agent_id, session));
                    }
                    Err(e) => {
                        let _ = tx.send(error_event(&state.metrics, None, e.into())).await;
                    }
                }
                continue;
            }
            let Some((agent_id, _)) = &agent else {
                let _ = tx
                    .send(error_event(
                        &state.metrics,
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
        if let Some(heartbeat) = heartbeat.take() {
            heartbeat.stop().await;
        }
        if let Some((agent_id, session)) = agent
            && session.end()
        {
            let update = AgentUpdate {
                id: agent_id.clone(),
                status: Some(AgentStatus::Offline),
                ..AgentUpdate::default()
            };
            match state.put_agent(update).await {
                // Offline now: the presence session ends cleanly.
                Ok(_) if !state.presence_ttl.is_zero() => {
                    if let Err(e) = state
                        .ops
                        .store()
                        .heartbeat_agent(&agent_id, Duration::ZERO, switchyard_core::time::now())
                        .await
                    {
                        tracing::warn!(error = %e, agent_id, "could not end an agent's presence");
                    }
                }
                Ok(_) => {}
                // Still heart-beat tracked: the presence TTL sets the agent offline instead.
                Err(e) => {
                    tracing::warn!(error = %e, agent_id, "could not mark a disconnected agent offline");
                }
            }
        }
        drop(tx);
    };
    tokio::join!(reader, writer);
    gauge.dec();
}

async fn welcome(state: &HttpState, update: AgentUpdate) -> Result<AgentEvent, RouteError> {
    let agent = state.put_agent(update).await?;
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
            match state.put_agent(update).await {
                // The hub forwards `agent.updated` to every socket of this agent.
                Ok(_) => None,
                Err(e) => Some(error_event(&state.metrics, None, e.into())),
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
            Err(e) => Some(error_event(&state.metrics, Some(client_id), e.into())),
        },
        AgentRequest::WriteFirst {
            client_id,
            customer_id,
            channel_id,
            content,
        } => match state
            .ops
            .write_first(&customer_id, agent_id, &channel_id, content)
            .await
        {
            Ok(started) => Some(AgentEvent::Ack {
                client_id,
                id: Some(started.envelope.id),
            }),
            Err(e) => Some(error_event(&state.metrics, Some(client_id), e.into())),
        },
        AgentRequest::Close { conversation_id } => {
            match state.ops.close(&conversation_id, Some(agent_id)).await {
                Ok(_) => None,
                Err(e) => Some(error_event(&state.metrics, None, e.into())),
            }
        }
        AgentRequest::Accept {
            conversation_id,
            client_id,
        } => match state.ops.accept_offer(&conversation_id, agent_id).await {
            Ok(_) => client_id.map(|client_id| AgentEvent::Ack {
                client_id,
                id: None,
            }),
            Err(e) => Some(error_event(&state.metrics, client_id, e.into())),
        },
        AgentRequest::Decline { conversation_id } => match state
            .ops
            .take_back(&conversation_id, agent_id, Withdrawal::Declined)
            .await
        {
            Ok(_) => None,
            Err(e) => Some(error_event(&state.metrics, None, e.into())),
        },
        AgentRequest::Transfer {
            conversation_id,
            pool,
            agent_id: to_agent,
            bot,
            skills,
            priority,
            handover,
        } => {
            let checked = transfer_target(pool, to_agent, bot, skills, priority)
                .and_then(|target| Ok((target, checked_handover(handover)?)));
            let (target, handover) = match checked {
                Ok(checked) => checked,
                Err(e) => return Some(error_event(&state.metrics, None, e)),
            };
            match state
                .ops
                .transfer(&conversation_id, Some(agent_id), target, handover)
                .await
            {
                Ok(_) => None,
                Err(e) => Some(error_event(&state.metrics, None, e.into())),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;

    use switchyard_connectors::{ConnectorContext, Registry};
    use switchyard_core::bus::embedded::EmbeddedBus;
    use switchyard_core::bus::topology::EVENTS_EXCHANGE;
    use switchyard_core::bus::{Bus, Topology};
    use switchyard_core::metrics::Metrics;
    use switchyard_core::store::Store;
    use switchyard_core::store::embedded::EmbeddedStore;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::http::HttpContext;
    use crate::hub::AgentHub;
    use crate::ingress::Ingress;
    use crate::operations::Operations;
    use crate::outbox::Outbox;

    async fn state(presence_ttl: Duration) -> (HttpState, Arc<dyn Store>, Arc<dyn Bus>) {
        let timeout = Duration::from_secs(2);
        let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(timeout));
        bus.declare(&Topology::standard(
            &switchyard_core::conformance::bus::options(100),
        ))
        .await
        .unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
        let metrics = Metrics::new().unwrap();
        let registry = Registry::build(&[], &ConnectorContext::new(Arc::clone(&store))).unwrap();
        let ops = Operations::new(
            Arc::clone(&store),
            registry.clone(),
            Outbox::new(Arc::clone(&bus), Arc::clone(&store), metrics.clone()),
            metrics.clone(),
            10,
        );
        let state = HttpState::new(HttpContext {
            registry,
            ingress: Ingress::new(
                Arc::clone(&bus),
                Arc::clone(&store),
                metrics.clone(),
                1,
                timeout,
            ),
            ops,
            dead_letters: crate::dead_letters::DeadLetters::new(Arc::clone(&bus), metrics.clone()),
            hub: Arc::new(AgentHub::default()),
            metrics,
            api_keys: Arc::new(Vec::new()),
            max_body_bytes: 1024,
            shutdown: CancellationToken::new(),
            sockets: TaskTracker::new(),
            presence_ttl,
            pool_hours: Arc::default(),
            pool_policies: Arc::default(),
            agents: crate::http::AgentsCache::default(),
        });
        store
            .upsert_agent(
                AgentUpdate {
                    id: "a".to_owned(),
                    status: Some(AgentStatus::Online),
                    ..AgentUpdate::default()
                },
                switchyard_core::time::now(),
            )
            .await
            .unwrap();
        (state, store, bus)
    }

    async fn status(store: &Arc<dyn Store>) -> AgentStatus {
        store.agent("a").await.unwrap().unwrap().status
    }

    /// Real time: the embedded store's presence expiry is real time, like Redis `PX`.
    #[tokio::test]
    async fn heartbeats_keep_an_agent_present_until_stopped_or_dropped() {
        let ttl = Duration::from_millis(300);
        let (state, store, _) = state(ttl).await;
        let beating = Heartbeat::start(&state, "a").await.expect("presence is on");
        // Twice the TTL: only the periodic heartbeats keep the agent online.
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(status(&store).await, AgentStatus::Online, "while beating");
        beating.stop().await;
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(status(&store).await, AgentStatus::Offline, "after stop");

        // A new session resumes it; dropping the heartbeat (the socket task was dropped) stops it.
        let beating = Heartbeat::start(&state, "a").await.expect("presence is on");
        assert_eq!(status(&store).await, AgentStatus::Online, "resumed");
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(status(&store).await, AgentStatus::Online, "beating again");
        drop(beating);
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(status(&store).await, AgentStatus::Offline, "after drop");
    }

    #[tokio::test]
    async fn a_zero_ttl_turns_heartbeats_off() {
        let (state, store, _) = state(Duration::ZERO).await;
        assert!(Heartbeat::start(&state, "a").await.is_none());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(status(&store).await, AgentStatus::Online);
    }

    #[tokio::test]
    async fn a_heartbeat_that_resumes_an_expired_agent_restores_and_announces_it() {
        let ttl = Duration::from_millis(200);
        let (state, store, bus) = state(ttl).await;
        let beating = Heartbeat::start(&state, "a").await.expect("presence is on");
        beating.stop().await;
        tokio::time::sleep(ttl * 2).await;
        // An update expires the lapsed session: offline, to be restored by a resumed heartbeat.
        let update = AgentUpdate {
            id: "a".to_owned(),
            capacity: Some(2),
            ..AgentUpdate::default()
        };
        let after = store
            .upsert_agent(update, switchyard_core::time::now())
            .await
            .unwrap();
        assert_eq!(after.status, AgentStatus::Offline);
        let queue = bus
            .declare_subscriber(EVENTS_EXCHANGE, &["#"])
            .await
            .unwrap();
        let mut events = bus.consume(&queue, 10).await.unwrap();
        beat(&state, "a", Duration::from_secs(60)).await.unwrap();
        let back = store.agent("a").await.unwrap().unwrap();
        assert_eq!(back.status, AgentStatus::Online);
        assert_eq!(back.capacity, 2);
        let announced = tokio::time::timeout(Duration::from_secs(2), events.next())
            .await
            .expect("an event within 2 s")
            .expect("the event stream is open");
        assert!(
            announced.routing_key.ends_with("agent.updated"),
            "announced as {}",
            announced.routing_key
        );
        // An ordinary heartbeat announces nothing.
        beat(&state, "a", Duration::from_secs(60)).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), events.next())
                .await
                .is_err(),
            "a heartbeat that changed nothing was announced"
        );
    }
}
