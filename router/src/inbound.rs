//! Routing of one inbound envelope: identity resolution, the customer's conversation,
//! assignment, and the events that announce each step. Idempotent by envelope id, so a
//! redelivered message re-emits its events and changes nothing else.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;

use switchyard_connectors::web::IDENTIFY_EVENT;
use switchyard_core::bus::BusError;
use switchyard_core::envelope::{Content, Envelope};
use switchyard_core::event::EventType;
use switchyard_core::identity::{IdentityKey, IdentityStrength};
use switchyard_core::metrics::Metrics;
use switchyard_core::model::{ConversationStatus, Customer};
use switchyard_core::store::{
    InboundOutcome, InboundRouting, Note, ResolveRequest, SenderResolution, Store,
};

use crate::assignment::{announce_assignments, assign_pools};
use crate::auto_reply::AutoReplies;
use crate::error::RouteError;
use crate::events::{EventBatch, EventPublisher};
use crate::outbox::announced;
use crate::routes::RoutingTable;

/// Routes inbound envelopes.
#[derive(Clone)]
pub struct InboundRouter {
    store: Arc<dyn Store>,
    events: EventPublisher,
    metrics: Metrics,
    /// The routing rules and channel pools: where a new conversation goes.
    routes: Arc<RoutingTable>,
    all_pools: Arc<Vec<String>>,
    dedupe_ttl: Duration,
    /// Bounds the messages routed at once (see `router.max_in_flight`).
    in_flight: Arc<Semaphore>,
    /// The automatic replies outside business hours, when any pool has hours.
    auto_replies: Option<AutoReplies>,
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
        routes: RoutingTable,
        all_pools: Vec<String>,
        dedupe_ttl: Duration,
        max_in_flight: usize,
    ) -> Self {
        InboundRouter {
            store,
            events,
            metrics,
            routes: Arc::new(routes),
            all_pools: Arc::new(all_pools),
            dedupe_ttl,
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            auto_replies: None,
        }
    }

    /// The same router, sending `auto_replies` when a message opens a conversation in a pool
    /// outside its business hours.
    pub fn with_auto_replies(mut self, auto_replies: AutoReplies) -> Self {
        self.auto_replies = Some(auto_replies);
        self
    }

    /// Routes one inbound envelope, waiting for a routing slot first.
    pub async fn route(&self, envelope: Envelope) -> Result<Routed, RouteError> {
        let _slot = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| BusError::Unavailable("the router is shutting down".into()))?;
        self.route_now(envelope).await
    }

    async fn route_now(&self, mut envelope: Envelope) -> Result<Routed, RouteError> {
        if envelope.sender.identities.is_empty() {
            return Err(RouteError::Invalid(format!(
                "envelope `{}` names no sender identity",
                envelope.id
            )));
        }
        let explicit =
            matches!(&envelope.content, Content::Event { name, .. } if name == IDENTIFY_EVENT);
        let now = switchyard_core::time::now();
        let request = ResolveRequest::of_sender(&envelope, explicit, now);
        // The second line of defence against channel retries (the ingress claim is the first):
        // another envelope with this dedupe key was routed already, so this one is dropped.
        let claim = format!("routed:{}", envelope.dedupe_key);
        if explicit {
            return self.link(&envelope, request, claim).await;
        }
        // Decides only for a conversation this message opens; an open one keeps its pool. The
        // profile is read only when a rule looks at the customer's tags.
        let customer = if self.routes.reads_customer_tags() {
            self.sender_profile(&envelope).await?
        } else {
            None
        };
        let route = self.routes.choose(&envelope, customer.as_ref());
        // Claim, resolution, recording and assignment are one atomic store operation (one
        // Redis script, one round trip).
        let outcome = self
            .store
            .route_inbound(InboundRouting {
                envelope: &envelope,
                resolve: request,
                claim,
                claim_ttl: self.dedupe_ttl,
                placement: route.placement(),
            })
            .await?;
        let (resolution, record, assignments) = match outcome {
            InboundOutcome::Duplicate { first } => return Ok(Routed::Duplicate(first)),
            InboundOutcome::Routed {
                resolution,
                record,
                assignments,
            } => (resolution, record, assignments),
        };
        // Everything this message causes is announced in one batch once the store holds it. A
        // retry (the first attempt's reply or publish was lost) finds its work done and
        // re-announces it from the stored state, with the same event ids.
        let mut events = EventBatch::new();
        announce_resolution(&resolution, now, &mut events);
        let conversation = &record.conversation;
        envelope.conversation_id = Some(conversation.id.clone());
        envelope.customer_id = Some(conversation.customer_id.clone());
        if record.created && !record.duplicate {
            self.metrics
                .conversations_opened
                .with_label_values(&[route.pool, route.rule.unwrap_or_default()])
                .inc();
        }
        if record.created {
            events.conversation(EventType::ConversationCreated, conversation);
            // A bot's conversation is not queued until the bot hands it off.
            if conversation.status != ConversationStatus::Bot {
                events.conversation(EventType::ConversationQueued, conversation);
            }
        }
        events.message_received(&envelope, conversation.agent_id.as_deref());
        // Made only when the conversation was queued (it, or older ones of its pool ahead of it).
        announce_assignments(&self.metrics, &conversation.pool, &assignments, &mut events);
        if conversation.status == ConversationStatus::Assigned && record.duplicate && record.created
        {
            // The message that opened this conversation, retried after its assignment was
            // stored but not announced.
            events.conversation(EventType::ConversationAssigned, conversation);
        }
        let mut notes = Note::of_merges(&resolution.merges, &resolution.closed, now);
        notes.extend(self.assign_after_merges(&resolution, &mut events).await?);
        self.events.publish(events).await?;
        announced(&*self.store, &notes).await;
        // Once the routing is announced: a retry of the opening message (its first attempt
        // failed before this point, or after it) gets here too, and the reply's id, derived
        // from the conversation, keeps it to one.
        if record.created
            && let Some(auto_replies) = &self.auto_replies
        {
            auto_replies.opened(&envelope, conversation).await;
        }
        Ok(if record.duplicate {
            Routed::Duplicate(conversation.id.clone())
        } else {
            Routed::Recorded(conversation.id.clone())
        })
    }

    /// The sender's profile as it will be once `envelope` is routed, as far as the routing
    /// rules on customer tags need it, read before the message is routed. Resolution merges
    /// the owners of the sender's strong identities into one profile whose tags are the union
    /// of theirs, so the tags are that union; with no strong identity owned, the owner of the
    /// first weak one (weak identities never merge by themselves). `None` for a new customer.
    /// A tag set between this read and the routing counts from the next conversation.
    async fn sender_profile(&self, envelope: &Envelope) -> Result<Option<Customer>, RouteError> {
        let identities = &envelope.sender.identities;
        let (strong, weak): (Vec<&IdentityKey>, Vec<&IdentityKey>) = identities
            .iter()
            .partition(|key| key.default_strength() == IdentityStrength::Strong);
        let mut merged: Option<Customer> = None;
        for key in strong {
            let Some(owner) = self.store.customer_by_identity(key).await? else {
                continue;
            };
            match &mut merged {
                None => merged = Some(owner),
                Some(profile) if profile.id == owner.id => {}
                Some(profile) => {
                    for tag in owner.tags {
                        if !profile.tags.contains(&tag) {
                            profile.tags.push(tag);
                        }
                    }
                }
            }
        }
        if merged.is_some() {
            return Ok(merged);
        }
        for key in weak {
            if let Some(customer) = self.store.customer_by_identity(key).await? {
                return Ok(Some(customer));
            }
        }
        Ok(None)
    }

    /// When a merge closed a conversation (and so freed its agent), assigns every pool's queue,
    /// adding the assignments to `events`; returns their notes, for the caller to clear once
    /// `events` is published.
    async fn assign_after_merges(
        &self,
        resolution: &SenderResolution,
        events: &mut EventBatch,
    ) -> Result<Vec<Note>, RouteError> {
        let mut notes = Vec::new();
        if !resolution.closed.is_empty() {
            assign_pools(
                &*self.store,
                &self.metrics,
                &self.all_pools,
                events,
                &mut notes,
            )
            .await?;
        }
        Ok(notes)
    }

    /// Routes an identify/link event: claims its dedupe key and resolves its identities (weak
    /// ones merge too); no conversation is touched.
    async fn link(
        &self,
        envelope: &Envelope,
        request: ResolveRequest,
        claim: String,
    ) -> Result<Routed, RouteError> {
        // The claim and the resolution go out together (one round trip less): resolving the
        // identities of a copy changes nothing its first routing did not (same identities, same
        // shard, so never concurrently with it), and its result is then simply dropped.
        let now = request.now;
        let (claimed, resolution) = tokio::join!(
            self.store.claim_key(&claim, &envelope.id, self.dedupe_ttl),
            self.store.resolve_customer_noted(request)
        );
        if let Some(first) = claimed?
            && first != envelope.id
        {
            return Ok(Routed::Duplicate(first));
        }
        let resolution = SenderResolution::from(resolution?);
        let mut events = EventBatch::new();
        announce_resolution(&resolution, now, &mut events);
        let mut notes = Note::of_merges(&resolution.merges, &resolution.closed, now);
        notes.extend(self.assign_after_merges(&resolution, &mut events).await?);
        self.events.publish(events).await?;
        announced(&*self.store, &notes).await;
        Ok(Routed::Linked(resolution.customer_id))
    }
}

/// Adds what resolving a sender did to `events`: `customer.created`, `customer.merged` for each
/// merge, and `conversation.closed` for each conversation a merge closed.
fn announce_resolution(resolution: &SenderResolution, now: DateTime<Utc>, events: &mut EventBatch) {
    // The profile is there exactly when one of these events announces it.
    if let Some(customer) = &resolution.profile {
        if resolution.created {
            events.customer_created(customer);
        }
        for merge in &resolution.merges {
            events.customer_merged(customer, &merge.from, &merge.via, now);
        }
    }
    events.closed_by_merges(&resolution.closed);
}
