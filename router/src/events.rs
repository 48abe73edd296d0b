//! Publishes CloudEvents on `switchyard.events` (routing key = event type), with the data shapes
//! documented in `schemas/event.v1.json`.
//!
//! Events are built into an [`EventBatch`] and published together: in order, on one channel,
//! with one round of confirms. State events (a customer created, a conversation queued,
//! assigned, closed) get ids derived from what happened ([`CloudEvent::state_id`]) and message
//! events carry the envelope id, so an event re-emitted after a retry has the id of the first
//! emission and consumers deduplicate it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use switchyard_core::bus::topology::EVENTS_EXCHANGE;
use switchyard_core::bus::{Bus, BusError, Message};
use switchyard_core::envelope::Envelope;
use switchyard_core::event::{CloudEvent, CloudEventRef, EventType};
use switchyard_core::identity::IdentityKey;
use switchyard_core::model::{Agent, Conversation, Customer};

/// Events to publish together, in order, each already encoded.
#[derive(Debug, Default)]
#[must_use = "an event batch does nothing until it is published"]
pub struct EventBatch {
    events: Vec<Encoded>,
}

/// One event of a batch: routing key (the event type), id, and JSON body (or why it could not
/// be encoded).
#[derive(Debug)]
struct Encoded {
    event_type: EventType,
    id: String,
    body: Result<Vec<u8>, String>,
}

/// The identity of an event being built: its type, tenant, subject, id and time.
struct Head<'a> {
    event_type: EventType,
    tenant: &'a str,
    subject: &'a str,
    id: String,
    time: DateTime<Utc>,
}

impl<'a> Head<'a> {
    /// A state event: id derived from (type, subject, `at`), time `at`.
    fn state(event_type: EventType, tenant: &'a str, subject: &'a str, at: DateTime<Utc>) -> Self {
        Head {
            event_type,
            tenant,
            subject,
            id: CloudEvent::state_id(event_type, subject, at),
            time: at,
        }
    }

    /// An event with a fresh id, now.
    fn fresh(event_type: EventType, tenant: &'a str, subject: &'a str) -> Self {
        Head {
            event_type,
            tenant,
            subject,
            id: switchyard_core::envelope::new_id(),
            time: switchyard_core::time::now(),
        }
    }

    /// A message event: id = envelope id, subject = its conversation.
    fn message(event_type: EventType, m: &'a Envelope) -> Self {
        Head {
            event_type,
            tenant: &m.tenant,
            subject: m.conversation_id.as_deref().unwrap_or_default(),
            id: m.id.clone(),
            time: switchyard_core::time::now(),
        }
    }
}

#[derive(Serialize)]
struct ConversationData<'a> {
    conversation: &'a Conversation,
}

#[derive(Serialize)]
struct ClosedData<'a> {
    conversation: &'a Conversation,
    agent_id: Option<&'a str>,
}

#[derive(Serialize)]
struct TransferredData<'a> {
    conversation: &'a Conversation,
    from_agent_id: Option<&'a str>,
}

#[derive(Serialize)]
struct ReceivedData<'a> {
    message: &'a Envelope,
    agent_id: Option<&'a str>,
}

#[derive(Serialize)]
struct SentData<'a> {
    message: &'a Envelope,
    channel_message_id: Option<&'a str>,
}

#[derive(Serialize)]
struct FailedData<'a> {
    message: &'a Envelope,
    code: &'a str,
    reason: &'a str,
}

#[derive(Serialize)]
struct CustomerData<'a> {
    customer: &'a Customer,
}

#[derive(Serialize)]
struct MergedData<'a> {
    customer: &'a Customer,
    from: &'a str,
    into: &'a str,
    via: &'a [IdentityKey],
}

#[derive(Serialize)]
struct AgentData<'a> {
    agent: &'a Agent,
}

impl EventBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Encodes one event (as [`CloudEvent`] would serialize it) and appends it.
    fn push(&mut self, head: Head<'_>, data: impl Serialize) -> &mut Self {
        let source = format!("/switchyard/{}/router", head.tenant);
        let event_type = head.event_type.cloudevents_type();
        let body = serde_json::to_vec(&CloudEventRef {
            specversion: "1.0",
            id: &head.id,
            source: &source,
            event_type: &event_type,
            subject: Some(head.subject),
            time: head.time,
            datacontenttype: "application/json",
            tenant: head.tenant,
            data,
        })
        .map_err(|e| format!("cannot encode {event_type}: {e}"));
        self.events.push(Encoded {
            event_type: head.event_type,
            id: head.id,
            body,
        });
        self
    }

    /// `conversation.created|queued|assigned`, its id derived from the conversation's matching
    /// timestamp (created, queued, assigned), so a re-emission has the same id.
    pub fn conversation(&mut self, t: EventType, c: &Conversation) -> &mut Self {
        let at = match t {
            EventType::ConversationQueued => c.queued_at.unwrap_or(c.created_at),
            EventType::ConversationAssigned => c.assigned_at.unwrap_or(c.updated_at),
            EventType::ConversationCreated => c.created_at,
            _ => c.updated_at,
        };
        self.push(
            Head::state(t, &c.tenant, &c.id, at),
            ConversationData { conversation: c },
        )
    }

    /// `conversation.closed`, naming the agent who held it.
    pub fn conversation_closed(&mut self, c: &Conversation, agent_id: Option<&str>) -> &mut Self {
        let at = c.closed_at.unwrap_or(c.updated_at);
        self.push(
            Head::state(EventType::ConversationClosed, &c.tenant, &c.id, at),
            ClosedData {
                conversation: c,
                agent_id,
            },
        )
    }

    /// `conversation.transferred`, naming the agent it left.
    pub fn conversation_transferred(
        &mut self,
        c: &Conversation,
        from_agent_id: Option<&str>,
    ) -> &mut Self {
        self.push(
            Head::state(
                EventType::ConversationTransferred,
                &c.tenant,
                &c.id,
                c.updated_at,
            ),
            TransferredData {
                conversation: c,
                from_agent_id,
            },
        )
    }

    /// `message.received` (id = envelope id).
    pub fn message_received(&mut self, m: &Envelope, agent_id: Option<&str>) -> &mut Self {
        self.push(
            Head::message(EventType::MessageReceived, m),
            ReceivedData {
                message: m,
                agent_id,
            },
        )
    }

    /// `message.sent` (id = envelope id).
    pub fn message_sent(&mut self, m: &Envelope, channel_message_id: Option<&str>) -> &mut Self {
        self.push(
            Head::message(EventType::MessageSent, m),
            SentData {
                message: m,
                channel_message_id,
            },
        )
    }

    /// `message.failed`. Its id is derived from the envelope id (not the envelope id itself:
    /// a failure the channel reports late follows a `message.sent` that already carries it).
    pub fn message_failed(&mut self, m: &Envelope, code: &str, reason: &str) -> &mut Self {
        let mut head = Head::message(EventType::MessageFailed, m);
        head.id = message_failed_id(m);
        self.push(
            head,
            FailedData {
                message: m,
                code,
                reason,
            },
        )
    }

    /// `customer.created` (id derived from the profile's creation).
    pub fn customer_created(&mut self, c: &Customer) -> &mut Self {
        self.push(
            Head::state(EventType::CustomerCreated, &c.tenant, &c.id, c.first_seen),
            CustomerData { customer: c },
        )
    }

    /// `customer.merged`.
    pub fn customer_merged(&mut self, c: &Customer, from: &str, via: &[IdentityKey]) -> &mut Self {
        self.push(
            Head::fresh(EventType::CustomerMerged, &c.tenant, &c.id),
            MergedData {
                customer: c,
                from,
                into: &c.id,
                via,
            },
        )
    }

    /// `agent.updated`.
    pub fn agent_updated(&mut self, a: &Agent) -> &mut Self {
        self.push(
            Head::fresh(
                EventType::AgentUpdated,
                switchyard_core::envelope::DEFAULT_TENANT,
                &a.id,
            ),
            AgentData { agent: a },
        )
    }
}

/// The id of `message.failed` for an outbound envelope: stable across re-emissions, distinct
/// from the envelope id that `message.sent` carries.
pub fn message_failed_id(m: &Envelope) -> String {
    CloudEvent::state_id(EventType::MessageFailed, &m.id, m.sent_at)
}

/// Publishes events; a publish returns once the bus confirmed every event of it.
#[derive(Clone)]
pub struct EventPublisher {
    bus: Arc<dyn Bus>,
}

impl EventPublisher {
    /// A publisher on `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        EventPublisher { bus }
    }

    /// Publishes a batch, in order, with one round of confirms. An event nobody is bound to
    /// receive is not an error.
    pub async fn publish(&self, batch: EventBatch) -> Result<(), BusError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut messages = Vec::with_capacity(batch.events.len());
        for event in batch.events {
            let body = event.body.map_err(|reason| BusError::Nacked {
                exchange: EVENTS_EXCHANGE.into(),
                reason,
            })?;
            let mut message = Message::new(event.id, body);
            message
                .headers
                .insert("content-type".into(), "application/cloudevents+json".into());
            messages.push((event.event_type.as_str().to_owned(), message));
        }
        self.bus.publish_events(EVENTS_EXCHANGE, messages).await
    }

    /// Builds a batch with `build` and publishes it.
    pub async fn emit(&self, build: impl FnOnce(&mut EventBatch)) -> Result<(), BusError> {
        let mut batch = EventBatch::new();
        build(&mut batch);
        self.publish(batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema's example of `event_type`, parsed.
    fn example(event_type: &str) -> CloudEvent {
        let path = format!(
            "{}/../schemas/examples/event.{event_type}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn field<T: serde::de::DeserializeOwned>(event: &CloudEvent, name: &str) -> T {
        serde_json::from_value(event.data[name].clone()).unwrap()
    }

    /// Rebuilds each schema example from its records and checks the encoding: everything but
    /// the id and time equals the example, and state events have their derived id and time.
    #[test]
    fn encoded_events_match_the_schema_examples() {
        for name in [
            "conversation.created",
            "conversation.queued",
            "conversation.assigned",
            "conversation.closed",
            "conversation.transferred",
            "message.received",
            "message.sent",
            "message.failed",
            "customer.created",
            "customer.merged",
            "agent.updated",
        ] {
            let want = example(name);
            let t = want.known_type().unwrap();
            let mut batch = EventBatch::new();
            let str_of = |k: &str| want.data[k].as_str().map(str::to_owned);
            match t {
                EventType::ConversationCreated
                | EventType::ConversationQueued
                | EventType::ConversationAssigned => {
                    batch.conversation(t, &field(&want, "conversation"));
                }
                EventType::ConversationClosed => {
                    batch.conversation_closed(
                        &field(&want, "conversation"),
                        str_of("agent_id").as_deref(),
                    );
                }
                EventType::ConversationTransferred => {
                    batch.conversation_transferred(
                        &field(&want, "conversation"),
                        str_of("from_agent_id").as_deref(),
                    );
                }
                EventType::MessageReceived => {
                    batch.message_received(&field(&want, "message"), str_of("agent_id").as_deref());
                }
                EventType::MessageSent => {
                    batch.message_sent(
                        &field(&want, "message"),
                        str_of("channel_message_id").as_deref(),
                    );
                }
                EventType::MessageFailed => {
                    batch.message_failed(
                        &field(&want, "message"),
                        &str_of("code").unwrap(),
                        &str_of("reason").unwrap(),
                    );
                }
                EventType::CustomerCreated => {
                    batch.customer_created(&field(&want, "customer"));
                }
                EventType::CustomerMerged => {
                    batch.customer_merged(
                        &field(&want, "customer"),
                        &str_of("from").unwrap(),
                        &field::<Vec<IdentityKey>>(&want, "via"),
                    );
                }
                EventType::AgentUpdated => {
                    batch.agent_updated(&field(&want, "agent"));
                }
            }
            let encoded = batch.events.pop().unwrap();
            assert_eq!(encoded.event_type, t);
            let got: CloudEvent = serde_json::from_slice(&encoded.body.unwrap()).unwrap();
            assert_eq!(got.id, encoded.id, "{name}: id");
            assert_eq!(
                serde_json::to_value(&got.data).unwrap(),
                serde_json::to_value(&want.data).unwrap(),
                "{name}: data"
            );
            assert_eq!(
                (&got.specversion, &got.source, &got.event_type),
                (&want.specversion, &want.source, &want.event_type),
                "{name}: attributes"
            );
            assert_eq!(
                (&got.subject, &got.datacontenttype, &got.tenant),
                (&want.subject, &want.datacontenttype, &want.tenant),
                "{name}: attributes"
            );
            if name == "message.failed" {
                let message: Envelope = field(&want, "message");
                assert_eq!(got.id, message_failed_id(&message), "{name}: id");
                assert_ne!(
                    got.id, message.id,
                    "{name}: must not reuse message.sent's id"
                );
            } else if name.starts_with("message.") {
                assert_eq!(Some(got.id.as_str()), want.data["message"]["id"].as_str());
            }
            if name.starts_with("conversation.") || name == "customer.created" {
                let again: CloudEvent = serde_json::from_slice(&encoded_again(&want, t)).unwrap();
                assert_eq!(again.id, got.id, "{name}: a state event's id is stable");
                assert_eq!(
                    again.time, got.time,
                    "{name}: a state event's time is stable"
                );
                let subject = got.subject.clone().unwrap_or_default();
                assert_eq!(
                    got.id,
                    CloudEvent::state_id(t, &subject, got.time),
                    "{name}: a state event's id is derived from its subject and time"
                );
            }
            if name == "conversation.assigned" {
                let c: Conversation = field(&want, "conversation");
                assert_eq!(Some(got.time), c.assigned_at, "{name}: time of the change");
            }
        }
    }

    /// Encodes the example's state event once more.
    fn encoded_again(want: &CloudEvent, t: EventType) -> Vec<u8> {
        let mut batch = EventBatch::new();
        match t {
            EventType::CustomerCreated => batch.customer_created(&field(want, "customer")),
            EventType::ConversationClosed => {
                batch.conversation_closed(&field(want, "conversation"), None)
            }
            EventType::ConversationTransferred => {
                batch.conversation_transferred(&field(want, "conversation"), None)
            }
            _ => batch.conversation(t, &field(want, "conversation")),
        };
        batch.events.pop().unwrap().body.unwrap()
    }
}
