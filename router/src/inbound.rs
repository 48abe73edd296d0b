//! Routing of one inbound envelope: identity resolution, the customer's conversation,
//! assignment, and the events that announce each step. Idempotent by envelope id, so a
//! redelivered message re-emits its events and changes nothing else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_connectors::web::IDENTIFY_EVENT;
use switchyard_core::envelope::{Content, Envelope};
use switchyard_core::event::EventType;
use switchyard_core::metrics::Metrics;
use switchyard_core::model::ConversationStatus;
use switchyard_core::store::{ResolveRequest, Store};

use crate::assignment::assign_pools;
use crate::error::RouteError;
use crate::events::EventPublisher;

/// Routes inbound envelopes.
#[derive(Clone)]
pub struct InboundRouter {
    store: Arc<dyn Store>,
    events: EventPublisher,
    metrics: Metrics,
    /// Channel id -> pool its conversations go to.
    pools_by_channel: Arc<HashMap<String, String>>,
    all_pools: Arc<Vec<String>>,
    dedupe_ttl: Duration,
}

/// What routing did with an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// Recorded in conversation `0`.
    Recorded(String),
    /// Already routed: a redelivery (events re-emitted; names the conversation) or another
    /// copy of a message routed before (names the first copy).
    Duplicate(String),
    /// An identify/link event: identities linked, no conversation touched.
    Linked(String),
}

impl InboundRouter {
    /// A router over `store`, emitting on `events`.
    pub fn new(
        store: Arc<dyn Store>,
        events: EventPublisher,
        metrics: Metrics,
        pools_by_channel: HashMap<String, String>,
        all_pools: Vec<String>,
        dedupe_ttl: Duration,
    ) -> Self {
        InboundRouter {
            store,
            events,
            metrics,
            pools_by_channel: Arc::new(pools_by_channel),
            all_pools: Arc::new(all_pools),
            dedupe_ttl,
        }
    }

    /// Routes one inbound envelope.
    pub async fn route(&self, mut envelope: Envelope) -> Result<Routed, RouteError> {
        if envelope.sender.identities.is_empty() {
            return Err(RouteError::Invalid(format!(
                "envelope `{}` names no sender identity",
                envelope.id
            )));
        }
        // The second line of defence against channel retries (the ingress claim is the first):
        // another envelope with this dedupe key was routed already, so this one is dropped.
        let claim = format!("routed:{}", envelope.dedupe_key);
        if let Some(first) = self
            .store
            .claim_key(&claim, &envelope.id, self.dedupe_ttl)
            .await?
            && first != envelope.id
        {
            return Ok(Routed::Duplicate(first));
        }
        let explicit =
            matches!(&envelope.content, Content::Event { name, .. } if name == IDENTIFY_EVENT);
        let now = switchyard_core::time::now();
        let resolution = self
            .store
            .resolve_customer(ResolveRequest {
                tenant: envelope.tenant.clone(),
                identities: envelope
                    .sender
                    .identities
                    .iter()
                    .map(|k| (k.clone(), k.default_strength()))
                    .collect(),
                explicit,
                display_name: envelope.sender.display_name.clone(),
                now,
            })
            .await?;
        let customer = &resolution.customer;
        if resolution.created {
            self.events.customer_created(customer).await?;
        }
        for merge in &resolution.merges {
            self.events
                .customer_merged(customer, &merge.from, &merge.via)
                .await?;
        }
        for closed in &resolution.closed {
            self.events.conversation_closed(closed, None).await?;
        }
        if !resolution.closed.is_empty() {
            // A merge closed a conversation and freed its agent: let queues move.
            assign_pools(&*self.store, &self.events, &self.metrics, &self.all_pools).await?;
        }
        if explicit {
            return Ok(Routed::Linked(customer.id.clone()));
        }
        envelope.customer_id = Some(customer.id.clone());
        let pool = self
            .pools_by_channel
            .get(&envelope.channel.id)
            .cloned()
            .unwrap_or_else(|| "default".to_owned());
        let record = self.store.record_inbound(&envelope, &pool, now).await?;
        let conversation = &record.conversation;
        envelope.conversation_id = Some(conversation.id.clone());
        envelope.customer_id = Some(conversation.customer_id.clone());
        if record.created {
            self.events
                .conversation(EventType::ConversationCreated, conversation)
                .await?;
            self.events
                .conversation(EventType::ConversationQueued, conversation)
                .await?;
        }
        self.events
            .message_received(&envelope, conversation.agent_id.as_deref())
            .await?;
        if conversation.status == ConversationStatus::Queued {
            assign_pools(
                &*self.store,
                &self.events,
                &self.metrics,
                std::slice::from_ref(&conversation.pool),
            )
            .await?;
        }
        Ok(if record.duplicate {
            Routed::Duplicate(conversation.id.clone())
        } else {
            Routed::Recorded(conversation.id.clone())
        })
    }
}
