//! Publishes CloudEvents on `switchyard.events` (routing key = event type), with the data shapes
//! documented in `schemas/event.v1.json`.

use std::sync::Arc;

use serde_json::json;
use switchyard_core::bus::topology::EVENTS_EXCHANGE;
use switchyard_core::bus::{Bus, BusError, Message};
use switchyard_core::envelope::Envelope;
use switchyard_core::event::{CloudEvent, EventType};
use switchyard_core::identity::IdentityKey;
use switchyard_core::model::{Agent, Conversation, Customer};

/// Publishes events; a publish returns once the bus confirmed it.
#[derive(Clone)]
pub struct EventPublisher {
    bus: Arc<dyn Bus>,
}

impl EventPublisher {
    /// A publisher on `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        EventPublisher { bus }
    }

    /// Publishes one event. An event nobody is bound to receive is not an error.
    pub async fn publish(&self, event: CloudEvent) -> Result<(), BusError> {
        let routing_key = event
            .event_type
            .strip_prefix(switchyard_core::event::CLOUDEVENTS_TYPE_PREFIX)
            .unwrap_or(&event.event_type)
            .to_owned();
        let body = serde_json::to_vec(&event).map_err(|e| BusError::Nacked {
            exchange: EVENTS_EXCHANGE.into(),
            reason: format!("cannot encode event: {e}"),
        })?;
        let mut message = Message::new(event.id.clone(), body);
        message
            .headers
            .insert("content-type".into(), "application/cloudevents+json".into());
        match self
            .bus
            .publish(EVENTS_EXCHANGE, &routing_key, message)
            .await
        {
            Ok(()) | Err(BusError::Unroutable { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `conversation.created|queued|assigned`.
    pub async fn conversation(&self, t: EventType, c: &Conversation) -> Result<(), BusError> {
        self.publish(CloudEvent::new(
            t,
            &c.tenant,
            &c.id,
            json!({ "conversation": c }),
        ))
        .await
    }

    /// `conversation.closed`, naming the agent who held it.
    pub async fn conversation_closed(
        &self,
        c: &Conversation,
        agent_id: Option<&str>,
    ) -> Result<(), BusError> {
        let data = json!({ "conversation": c, "agent_id": agent_id });
        self.publish(CloudEvent::new(
            EventType::ConversationClosed,
            &c.tenant,
            &c.id,
            data,
        ))
        .await
    }

    /// `conversation.transferred`, naming the agent it left.
    pub async fn conversation_transferred(
        &self,
        c: &Conversation,
        from_agent_id: Option<&str>,
    ) -> Result<(), BusError> {
        let data = json!({ "conversation": c, "from_agent_id": from_agent_id });
        self.publish(CloudEvent::new(
            EventType::ConversationTransferred,
            &c.tenant,
            &c.id,
            data,
        ))
        .await
    }

    /// `message.received`; its id is the envelope id, so a redelivered message re-emits the
    /// same event and consumers deduplicate on it.
    pub async fn message_received(
        &self,
        m: &Envelope,
        agent_id: Option<&str>,
    ) -> Result<(), BusError> {
        let subject = m.conversation_id.clone().unwrap_or_default();
        let mut event = CloudEvent::new(
            EventType::MessageReceived,
            &m.tenant,
            subject,
            json!({ "message": m, "agent_id": agent_id }),
        );
        event.id = m.id.clone();
        self.publish(event).await
    }

    /// `message.sent` (id = envelope id).
    pub async fn message_sent(
        &self,
        m: &Envelope,
        channel_message_id: Option<&str>,
    ) -> Result<(), BusError> {
        let subject = m.conversation_id.clone().unwrap_or_default();
        let mut event = CloudEvent::new(
            EventType::MessageSent,
            &m.tenant,
            subject,
            json!({ "message": m, "channel_message_id": channel_message_id }),
        );
        event.id = m.id.clone();
        self.publish(event).await
    }

    /// `message.failed` (id = envelope id).
    pub async fn message_failed(
        &self,
        m: &Envelope,
        code: &str,
        reason: &str,
    ) -> Result<(), BusError> {
        let subject = m.conversation_id.clone().unwrap_or_default();
        let mut event = CloudEvent::new(
            EventType::MessageFailed,
            &m.tenant,
            subject,
            json!({ "message": m, "code": code, "reason": reason }),
        );
        event.id = m.id.clone();
        self.publish(event).await
    }

    /// `customer.created`.
    pub async fn customer_created(&self, c: &Customer) -> Result<(), BusError> {
        self.publish(CloudEvent::new(
            EventType::CustomerCreated,
            &c.tenant,
            &c.id,
            json!({ "customer": c }),
        ))
        .await
    }

    /// `customer.merged`.
    pub async fn customer_merged(
        &self,
        c: &Customer,
        from: &str,
        via: &[IdentityKey],
    ) -> Result<(), BusError> {
        let data = json!({ "customer": c, "from": from, "into": c.id, "via": via });
        self.publish(CloudEvent::new(
            EventType::CustomerMerged,
            &c.tenant,
            &c.id,
            data,
        ))
        .await
    }

    /// `agent.updated`.
    pub async fn agent_updated(&self, a: &Agent) -> Result<(), BusError> {
        self.publish(CloudEvent::new(
            EventType::AgentUpdated,
            switchyard_core::envelope::DEFAULT_TENANT,
            &a.id,
            json!({ "agent": a }),
        ))
        .await
    }
}
