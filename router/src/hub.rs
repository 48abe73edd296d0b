//! The agent hub: connected agent sockets, fed from the event stream, so an agent connected to
//! any gateway sees assignments and messages made by any router.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use switchyard_core::bus::Bus;
use switchyard_core::bus::topology::EVENTS_EXCHANGE;
use switchyard_core::envelope::Envelope;
use switchyard_core::event::{CloudEvent, EventType};
use switchyard_core::model::{Agent, Conversation};
use switchyard_core::protocol::AgentEvent;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::error::RouteError;
use crate::operations::Operations;

/// Frames queued per agent socket before the socket counts as too slow and is dropped.
pub const SOCKET_BUFFER: usize = 1024;

/// The event types the hub turns into agent frames: its subscription binds only these.
const HUB_EVENTS: [EventType; 7] = [
    EventType::ConversationAssigned,
    EventType::ConversationAccepted,
    EventType::MessageReceived,
    EventType::ConversationClosed,
    EventType::ConversationTransferred,
    EventType::AgentUpdated,
    EventType::MessageFailed,
];

/// Connected agent sockets by agent id.
///
/// The hub subscribes to the event stream only once the first agent connects, so a gateway
/// that serves only channel webhooks never receives events it would throw away.
pub struct AgentHub {
    inner: Mutex<HubInner>,
    /// Wakes [`AgentHub::run`] when an agent registers.
    wanted: Notify,
    /// Whether the event subscription is live.
    live: watch::Sender<bool>,
}

impl Default for AgentHub {
    fn default() -> Self {
        AgentHub {
            inner: Mutex::default(),
            wanted: Notify::new(),
            live: watch::Sender::new(false),
        }
    }
}

#[derive(Default)]
struct HubInner {
    next: u64,
    sockets: HashMap<String, Vec<(u64, mpsc::Sender<AgentEvent>)>>,
}

/// Unregisters an agent socket when dropped; reports whether it was the agent's last.
pub struct AgentSession {
    hub: Arc<AgentHub>,
    agent_id: String,
    id: u64,
}

impl AgentSession {
    /// Unregisters now; `true` if no other socket of this agent remains.
    pub fn end(self) -> bool {
        // Drop removes again, which is a no-op for an id already gone.
        self.hub.remove(&self.agent_id, self.id)
    }
}

impl Drop for AgentSession {
    fn drop(&mut self) {
        self.hub.remove(&self.agent_id, self.id);
    }
}

impl AgentHub {
    fn lock(&self) -> MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a socket of `agent_id`.
    pub fn register(
        self: &Arc<Self>,
        agent_id: &str,
        tx: mpsc::Sender<AgentEvent>,
    ) -> AgentSession {
        let mut inner = self.lock();
        inner.next += 1;
        let id = inner.next;
        inner
            .sockets
            .entry(agent_id.to_owned())
            .or_default()
            .push((id, tx));
        drop(inner);
        self.wanted.notify_one();
        AgentSession {
            hub: Arc::clone(self),
            agent_id: agent_id.to_owned(),
            id,
        }
    }

    /// Returns once the hub receives events (immediately after the first agent's wait), so an
    /// agent's snapshot taken afterwards misses nothing that follows it.
    pub async fn subscribed(&self) {
        let mut live = self.live.subscribe();
        let _ = live.wait_for(|live| *live).await;
    }

    fn remove(&self, agent_id: &str, id: u64) -> bool {
        let mut inner = self.lock();
        let Some(list) = inner.sockets.get_mut(agent_id) else {
            return true;
        };
        list.retain(|(s, _)| *s != id);
        if list.is_empty() {
            inner.sockets.remove(agent_id);
            true
        } else {
            false
        }
    }

    /// Whether any socket of `agent_id` is connected here.
    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.lock().sockets.contains_key(agent_id)
    }

    /// Sends a frame to every socket of an agent (a socket whose buffer is full misses it).
    pub fn send(&self, agent_id: &str, event: AgentEvent) {
        let inner = self.lock();
        for (_, tx) in inner.sockets.get(agent_id).into_iter().flatten() {
            if tx.try_send(event.clone()).is_err() {
                tracing::warn!(agent_id, "agent socket is not keeping up; frame dropped");
            }
        }
    }

    /// Feeds the hub from `switchyard.events` until `stop`.
    pub async fn run(
        self: Arc<Self>,
        bus: Arc<dyn Bus>,
        ops: Operations,
        stop: CancellationToken,
    ) -> Result<(), RouteError> {
        while !self.anyone_connected() {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = self.wanted.notified() => {}
            }
        }
        let patterns: Vec<&str> = HUB_EVENTS.iter().map(|t| t.as_str()).collect();
        let queue = bus.declare_subscriber(EVENTS_EXCHANGE, &patterns).await?;
        let mut deliveries = bus.consume(&queue, 256).await?;
        self.live.send_replace(true);
        while let Some(delivery) = crate::workers::next_until(&mut deliveries, &stop).await {
            // Nobody to tell: skip decoding (the common case on a gateway without agents).
            if !self.anyone_connected() {
                let _ = delivery.ack().await;
                continue;
            }
            match serde_json::from_slice::<CloudEvent>(&delivery.message.body) {
                Ok(event) => self.dispatch(event, &ops).await,
                Err(e) => tracing::warn!(error = %e, "undecodable event ignored by the agent hub"),
            }
            let _ = delivery.ack().await;
        }
        Ok(())
    }

    /// Whether any agent socket is connected here.
    fn anyone_connected(&self) -> bool {
        !self.lock().sockets.is_empty()
    }

    async fn dispatch(&self, event: CloudEvent, ops: &Operations) {
        let Some(kind) = event.known_type() else {
            return;
        };
        let field = |name: &str| event.data.get(name).cloned().unwrap_or(Value::Null);
        let conversation = || serde_json::from_value::<Conversation>(field("conversation")).ok();
        let string = |name: &str| field(name).as_str().map(str::to_owned);
        match kind {
            // An accepted offer goes to the agent's sockets again, as it is now (without its
            // offer times): every console of the agent, not only the one that accepted it, sees
            // that it is no longer an offer.
            EventType::ConversationAssigned | EventType::ConversationAccepted => {
                let Some(c) = conversation() else { return };
                let Some(agent_id) = c.agent_id.clone() else {
                    return;
                };
                if !self.is_connected(&agent_id) {
                    return;
                }
                match ops.view_of(c).await {
                    Ok(view) => self.send(&agent_id, AgentEvent::Assigned { conversation: view }),
                    Err(e) => tracing::warn!(error = %e, "could not load an assigned conversation"),
                }
            }
            EventType::MessageReceived => {
                let Ok(message) = serde_json::from_value::<Envelope>(field("message")) else {
                    return;
                };
                if let (Some(agent_id), Some(conversation_id)) =
                    (string("agent_id"), message.conversation_id.clone())
                {
                    self.send(
                        &agent_id,
                        AgentEvent::Message {
                            conversation_id,
                            message,
                        },
                    );
                }
            }
            EventType::ConversationClosed => {
                let Some(c) = conversation() else { return };
                let reason = c.close_reason.clone().unwrap_or_else(|| "closed".into());
                if let Some(agent_id) = string("agent_id") {
                    self.send(
                        &agent_id,
                        AgentEvent::Unassigned {
                            conversation_id: c.id,
                            reason,
                        },
                    );
                }
            }
            EventType::ConversationTransferred => {
                let Some(c) = conversation() else { return };
                if let Some(agent_id) = string("from_agent_id") {
                    self.send(
                        &agent_id,
                        AgentEvent::Unassigned {
                            conversation_id: c.id,
                            reason: string("reason").unwrap_or_else(|| "transferred".into()),
                        },
                    );
                }
            }
            EventType::AgentUpdated => {
                if let Ok(agent) = serde_json::from_value::<Agent>(field("agent")) {
                    let id = agent.id.clone();
                    self.send(&id, AgentEvent::Agent { agent });
                }
            }
            EventType::MessageFailed => {
                let Ok(message) = serde_json::from_value::<Envelope>(field("message")) else {
                    return;
                };
                if let Some(agent_id) = message.agent_id.clone() {
                    let reason = string("reason").unwrap_or_default();
                    self.send(
                        &agent_id,
                        AgentEvent::Error {
                            client_id: None,
                            code: "delivery_failed".into(),
                            message: format!(
                                "reply {} in conversation {} was not delivered: {reason}",
                                message.id,
                                message.conversation_id.unwrap_or_default()
                            ),
                        },
                    );
                }
            }
            _ => {}
        }
    }
}
