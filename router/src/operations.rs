//! Commands from agents and helpdesks (REST and the agent WebSocket): presence, replies, writing
//! first to a customer, closing, transferring, linking identities, tagging and erasing customers.
//! Each is one atomic store operation followed by its events and any assignment it makes
//! possible; events the bus refuses wait in the [outbox](crate::outbox).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use switchyard_connectors::Registry;
use switchyard_core::bus::Message;
use switchyard_core::bus::topology::OUTBOUND_EXCHANGE;
use switchyard_core::config::{BOT_AGENT_PREFIX, bot_of_agent};
use switchyard_core::envelope::{Content, Direction, Envelope, new_id};
use switchyard_core::event::EventType;
use switchyard_core::handover::{Handover, HandoverContext};
use switchyard_core::identity::IdentityKey;
use switchyard_core::metrics::Metrics;
use switchyard_core::model::{Agent, Conversation, ConversationStatus, Customer};
use switchyard_core::protocol::ConversationView;
use switchyard_core::store::{
    AgentUpdate, CONVERSATION_OPEN, ConversationStart, CustomerUpdate, ERASED_ON_REQUEST,
    ERASURE_CLOSE_REASON, Erasure, Note, NoteKind, OVERFLOW, QueueTarget, Release, ResolveRequest,
    Store, StoreError, TransferTarget, Withdrawal,
};

use crate::assignment::assign_pools;
use crate::error::RouteError;
use crate::events::EventBatch;
use crate::outbox::{Outbox, Staged};

/// Agent and conversation commands.
#[derive(Clone)]
pub struct Operations {
    store: Arc<dyn Store>,
    registry: Registry,
    outbox: Outbox,
    metrics: Metrics,
    history_limit: usize,
    /// The configured pools, whose queues move when a merge frees an agent.
    pools: Vec<String>,
    /// Channel id -> its pool: where a conversation an agent starts belongs.
    channel_pools: Arc<HashMap<String, String>>,
    /// Pool id -> the seconds its agents have to accept a conversation (pools with offers).
    offer_secs: Arc<HashMap<String, u64>>,
    /// The pools that give a returning customer their last agent (`prefer_last_agent`): an
    /// agent writing first there becomes the customer's last agent.
    last_agent_pools: Arc<HashSet<String>>,
    /// Bot agent id (`bot:{id}`) -> the pools whose bot it is, in configured order: a
    /// conversation handed to that bot belongs to the one the transfer names, or the first.
    bot_pools: Arc<HashMap<String, Vec<String>>>,
}

/// A conversation an agent started by writing first ([`Operations::write_first`]).
#[derive(Debug, Clone)]
pub struct Started {
    /// The conversation, assigned to the agent.
    pub conversation: Conversation,
    /// The agent's first message, on its way to the channel.
    pub envelope: Envelope,
}

/// An outbound message [`Operations::send_outbound`] handled.
#[derive(Debug, Clone)]
pub(crate) struct SentOutbound {
    /// The envelope as this send built it (for a duplicate, the recorded copy is the first
    /// send's, with its own timestamps).
    pub(crate) envelope: Envelope,
    /// Whether its id was recorded before: this send recorded and published nothing.
    pub(crate) duplicate: bool,
}

/// The pool of a channel that names none in the configuration.
const DEFAULT_POOL: &str = "default";

impl Operations {
    /// Commands over `store` and `bus`.
    pub fn new(
        store: Arc<dyn Store>,
        registry: Registry,
        outbox: Outbox,
        metrics: Metrics,
        history_limit: usize,
    ) -> Self {
        Operations {
            store,
            registry,
            outbox,
            metrics,
            history_limit,
            pools: Vec::new(),
            channel_pools: Arc::default(),
            offer_secs: Arc::default(),
            last_agent_pools: Arc::default(),
            bot_pools: Arc::default(),
        }
    }

    /// The same commands, knowing each bot's pools (bot agent id `bot:{id}` -> the pools whose
    /// `bot` it is, in configured order): a conversation handed to a bot belongs to the pool
    /// the transfer names, or to the first.
    pub fn with_bot_pools(mut self, pools: HashMap<String, Vec<String>>) -> Self {
        self.bot_pools = Arc::new(pools);
        self
    }

    /// The same commands, where agents writing first in `pools` become the customer's last
    /// agent (the pools with `prefer_last_agent`).
    pub fn with_last_agent_pools(mut self, pools: HashSet<String>) -> Self {
        self.last_agent_pools = Arc::new(pools);
        self
    }

    /// The same commands, knowing the pools that make offers (pool id -> seconds to accept): a
    /// conversation transferred to one of them is offered to its next agent.
    pub fn with_offers(mut self, offer_secs: HashMap<String, u64>) -> Self {
        self.offer_secs = Arc::new(offer_secs);
        self
    }

    /// Whether some pool makes offers, so that expired ones need taking back.
    pub fn makes_offers(&self) -> bool {
        !self.offer_secs.is_empty()
    }

    /// The same commands, knowing each channel's pool (channel id -> pool): a conversation an
    /// agent starts on a channel belongs to its pool (`default` for a channel not listed).
    pub fn with_channel_pools(mut self, pools: HashMap<String, String>) -> Self {
        self.channel_pools = Arc::new(pools);
        self
    }

    /// The same commands, knowing the configured pools: a merge that frees an agent lets every
    /// one of them move (by default, only the pools of the conversations the merge closed).
    pub fn with_pools(mut self, pools: Vec<String>) -> Self {
        self.pools = pools;
        self
    }

    /// The configured pools ([`Operations::with_pools`]; empty when not given).
    pub fn pools(&self) -> &[String] {
        &self.pools
    }

    /// The store, for queries.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A conversation that must exist.
    async fn conversation_record(&self, id: &str) -> Result<Conversation, RouteError> {
        self.store.conversation(id).await?.ok_or_else(|| {
            StoreError::NotFound {
                kind: "conversation",
                id: id.to_owned(),
            }
            .into()
        })
    }

    /// A customer that must exist (a merged-away id gives the survivor).
    async fn customer_record(&self, id: &str) -> Result<Customer, RouteError> {
        self.store.customer(id).await?.ok_or_else(|| {
            StoreError::NotFound {
                kind: "customer",
                id: id.to_owned(),
            }
            .into()
        })
    }

    /// Creates or updates an agent, then assigns whatever its new room allows. Ids starting
    /// with `bot:` are the bots' (`[[bots]]`), which are not agent records.
    pub async fn put_agent(&self, update: AgentUpdate) -> Result<Agent, RouteError> {
        if update.id.starts_with(BOT_AGENT_PREFIX) {
            return Err(RouteError::Refused {
                code: "reserved_agent_id",
                message: format!(
                    "agent ids starting with `{BOT_AGENT_PREFIX}` belong to bots ([[bots]])"
                ),
            });
        }
        let now = switchyard_core::time::now();
        let agent = self.store.upsert_agent(update, now).await?;
        let mut events = EventBatch::new();
        events.agent_updated(&agent);
        let mut notes = vec![Note::new(NoteKind::AgentUpdated, &agent.id, now)];
        self.assign(&agent.pools, &mut events, &mut notes).await?;
        self.outbox.publish_noted(events, &notes).await?;
        // Assignment may have changed the agent's conversations; answer with the fresh record.
        Ok(self.store.agent(&agent.id).await?.unwrap_or(agent))
    }

    /// A conversation with its customer and latest messages.
    pub async fn conversation_view(&self, id: &str) -> Result<ConversationView, RouteError> {
        let conversation = self.conversation_record(id).await?;
        self.view_of(conversation).await
    }

    /// The view of a conversation record.
    pub async fn view_of(
        &self,
        conversation: Conversation,
    ) -> Result<ConversationView, RouteError> {
        let customer = self.store.customer(&conversation.customer_id).await?;
        let messages = self
            .store
            .messages(&conversation.id, self.history_limit)
            .await?;
        Ok(ConversationView {
            conversation,
            customer,
            messages,
        })
    }

    /// Sends an agent's reply to the customer on the channel they last wrote from. Returns the
    /// outbound envelope once it is on the bus.
    pub async fn reply(
        &self,
        conversation_id: &str,
        agent_id: Option<&str>,
        content: Content,
    ) -> Result<Envelope, RouteError> {
        check_content(&content)?;
        let conversation = self.conversation_record(conversation_id).await?;
        let sent = self
            .send_outbound(&conversation, agent_id, new_id(), content)
            .await?;
        Ok(sent.envelope)
    }

    /// Sends `content` to the customer of `conversation` on the channel they last wrote from,
    /// as `agent_id` (`None`: an automatic message), under envelope id `id`: checks the
    /// channel's rules, records the outbound envelope with its bus message staged in the outbox
    /// (one atomic step), then publishes it. Returns the envelope once it is on the bus (or kept
    /// in the outbox).
    ///
    /// A message that must go out once whatever retries its cause has (the automatic reply)
    /// passes an id derived from that cause ([`switchyard_core::envelope::derived_id`]): when
    /// the id was recorded before, nothing is recorded, staged or published again (the first
    /// send is on the bus, or in the outbox until the bus takes it), and the answer says it is
    /// a [duplicate](SentOutbound::duplicate). Others pass a fresh [`new_id`].
    pub(crate) async fn send_outbound(
        &self,
        conversation: &Conversation,
        agent_id: Option<&str>,
        id: String,
        content: Content,
    ) -> Result<SentOutbound, RouteError> {
        let conversation_id = conversation.id.as_str();
        let now = switchyard_core::time::now();
        // The channel's rules decide before anything is queued: an undeliverable reply is
        // refused now, with the rule, instead of failing later at the platform.
        let content = match self.registry.get(&conversation.channel.id) {
            Some(channel) => check_rules(channel.rules(), conversation, content, now)?,
            None => content,
        };
        let envelope = Envelope {
            id: id.clone(),
            tenant: conversation.tenant.clone(),
            direction: Direction::Outbound,
            channel: conversation.channel.clone(),
            sender: conversation.recipient.clone(),
            customer_id: Some(conversation.customer_id.clone()),
            conversation_id: Some(conversation.id.clone()),
            sent_at: now,
            received_at: now,
            dedupe_key: format!("outbound:{id}"),
            content,
            reply_to: conversation.last_inbound_id.clone(),
            agent_id: agent_id.map(str::to_owned),
            raw: None,
        };
        let staged = self.stage_outbound(&envelope)?;
        // Recording checks that the agent holds the conversation and that it is open.
        let record = self
            .store
            .record_outbound(
                conversation_id,
                agent_id,
                &envelope,
                now,
                Some(staged.push()),
            )
            .await?;
        if record.duplicate {
            // Recorded and staged by an earlier send: publishing this copy would only repeat
            // it (and the staged batch was not kept, so there is nothing to send).
            return Ok(SentOutbound {
                envelope,
                duplicate: true,
            });
        }
        self.outbox.send_staged(staged).await?;
        Ok(SentOutbound {
            envelope,
            duplicate: false,
        })
    }

    /// An agent writes first to a customer (a merged-away id: the profile it was merged into)
    /// on channel `channel_id`: opens a conversation assigned to the agent, in the channel's
    /// pool, addressed to the customer's identity on that channel, with `content` as its first
    /// message, in one atomic store step ([`Store::start_conversation`]); announces
    /// `conversation.created` and `conversation.assigned`, then sends the message as a reply is
    /// sent.
    ///
    /// Refused (422) for content a reply could not have (`empty_reply`, `invalid_template`), a
    /// channel that is not configured (`unknown_channel`) or that cannot start conversations
    /// (`channel_cannot_start_conversations`), a customer with no identity it addresses
    /// (`no_identity_on_channel`), and by the channel's rules, for which the conversation has
    /// no customer message: a reply window is closed (`reply_window_closed`; WhatsApp lets
    /// only a template through). `NotFound` for an unknown customer or agent; the conflicts
    /// `conversation_open` (the customer has one: reply in it) and `agent_at_capacity`.
    pub async fn write_first(
        &self,
        customer_id: &str,
        agent_id: &str,
        channel_id: &str,
        content: Content,
    ) -> Result<Started, RouteError> {
        check_content(&content)?;
        let customer = self.customer_record(customer_id).await?;
        let channel = self
            .registry
            .get(channel_id)
            .ok_or_else(|| RouteError::Refused {
                code: "unknown_channel",
                message: format!("no channel `{channel_id}` is configured"),
            })?;
        if !channel.starts_conversations() {
            return Err(RouteError::Refused {
                code: "channel_cannot_start_conversations",
                message: format!(
                    "channel `{channel_id}` (kind `{}`) can only answer a customer who wrote \
                     to it",
                    channel.channel().kind
                ),
            });
        }
        let identities: Vec<IdentityKey> =
            customer.identities.iter().map(|r| r.key.clone()).collect();
        let mut recipient =
            channel
                .recipient_of(&identities)
                .ok_or_else(|| RouteError::Refused {
                    code: "no_identity_on_channel",
                    message: format!(
                        "customer `{}` has no identity that channel `{channel_id}` (kind `{}`) \
                         can write to",
                        customer.id,
                        channel.channel().kind
                    ),
                })?;
        recipient.display_name.clone_from(&customer.display_name);
        // Checked again in the atomic step; asked first so that an agent who should reply in
        // the open conversation hears so rather than a channel rule's refusal.
        if let Some(open) = self.store.open_conversation(&customer.id).await? {
            return Err(StoreError::Conflict {
                code: CONVERSATION_OPEN,
                message: format!(
                    "customer `{}` has the open conversation `{}`; reply in it",
                    customer.id, open.id
                ),
            }
            .into());
        }
        let now = switchyard_core::time::now();
        let pool = self
            .channel_pools
            .get(channel_id)
            .map_or(DEFAULT_POOL, String::as_str);
        let conversation_id = new_id();
        // The conversation as it will be stored, for the rules: no customer message in it.
        let opening = Conversation::opened(
            conversation_id.clone(),
            (&customer.tenant, &customer.id),
            pool,
            channel.channel().clone(),
            recipient.clone(),
            now,
        )
        .written_first_by(agent_id, now);
        let content = check_rules(channel.rules(), &opening, content, now)?;
        let id = new_id();
        let envelope = Envelope {
            id: id.clone(),
            tenant: customer.tenant.clone(),
            direction: Direction::Outbound,
            channel: channel.channel().clone(),
            sender: recipient,
            customer_id: Some(customer.id.clone()),
            conversation_id: Some(conversation_id),
            sent_at: now,
            received_at: now,
            dedupe_key: format!("outbound:{id}"),
            content,
            reply_to: None,
            agent_id: Some(agent_id.to_owned()),
            raw: None,
        };
        let staged = self.stage_outbound(&envelope)?;
        let conversation = self
            .store
            .start_conversation(ConversationStart {
                envelope: &envelope,
                agent_id,
                pool,
                remember_agent: self.last_agent_pools.contains(pool),
                stage: Some(staged.push()),
                now,
            })
            .await?;
        // Opened in the channel's pool, no routing rule involved.
        self.metrics
            .conversations_opened
            .with_label_values(&[pool, ""])
            .inc();
        // The conversation is announced before its first message can be reported sent.
        let mut events = EventBatch::new();
        events
            .conversation(EventType::ConversationCreated, &conversation)
            .conversation(EventType::ConversationAssigned, &conversation);
        self.outbox
            .publish_noted(
                events,
                &[Note::new(NoteKind::Started, &conversation.id, now)],
            )
            .await?;
        self.outbox.send_staged(staged).await?;
        Ok(Started {
            conversation,
            envelope,
        })
    }

    /// The outbound queue's message of `envelope`, staged: recorded, an agent's message must go
    /// out, so the outbox keeps its bus message from the moment the store records it (one atomic
    /// step with the staged push) until the bus confirms it, even if this process stops.
    fn stage_outbound(&self, envelope: &Envelope) -> Result<Staged, RouteError> {
        let body = serde_json::to_vec(envelope)
            .map_err(|e| RouteError::Invalid(format!("cannot encode the message: {e}")))?;
        Ok(self.outbox.stage(
            OUTBOUND_EXCHANGE,
            vec![(
                envelope.channel.kind.clone(),
                Message::new(envelope.id.clone(), body),
            )],
        )?)
    }

    /// Closes a conversation (only its agent may, when `agent_id` is given).
    pub async fn close(
        &self,
        conversation_id: &str,
        agent_id: Option<&str>,
    ) -> Result<Conversation, RouteError> {
        if let Some(agent) = agent_id {
            self.check_holder(conversation_id, agent).await?;
        }
        let now = switchyard_core::time::now();
        let release = self
            .store
            .close_conversation(conversation_id, "closed", now)
            .await?;
        self.announce_close(conversation_id, release, now).await
    }

    /// Closes a conversation with the reason `idle` if it is still queued or assigned and
    /// unchanged since before `unchanged_before` ([`Store::close_idle`]); else the conflict
    /// `conversation_changed`.
    pub async fn close_idle(
        &self,
        conversation_id: &str,
        unchanged_before: DateTime<Utc>,
    ) -> Result<Conversation, RouteError> {
        let now = switchyard_core::time::now();
        let release = self
            .store
            .close_idle(conversation_id, unchanged_before, now)
            .await?;
        self.announce_close(conversation_id, release, now).await
    }

    /// Announces a close (`conversation.closed`) and assigns what the freed agent has room for.
    async fn announce_close(
        &self,
        conversation_id: &str,
        release: Release,
        now: DateTime<Utc>,
    ) -> Result<Conversation, RouteError> {
        let released = release.released_agent.as_ref();
        let mut events = EventBatch::new();
        events.conversation_closed(&release.conversation, release.released_holder());
        let mut notes = vec![Note::new(NoteKind::Closed, conversation_id, now)];
        if let Some(agent) = released {
            self.assign(&agent.pools, &mut events, &mut notes).await?;
        }
        self.outbox.publish_noted(events, &notes).await?;
        Ok(release.conversation)
    }

    /// The pool a conversation handed to `bot` goes to: `asked` when the bot is that pool's,
    /// the bot's first pool when `asked` is empty. An unknown bot is not found; a pool that is
    /// not the bot's is invalid.
    fn bot_pool(&self, bot: &str, asked: &str) -> Result<String, RouteError> {
        let name = bot_of_agent(bot).unwrap_or(bot);
        let not_found = || StoreError::NotFound {
            kind: "bot",
            id: name.to_owned(),
        };
        let pools = self.bot_pools.get(bot).ok_or_else(not_found)?;
        if asked.is_empty() {
            return Ok(pools.first().cloned().ok_or_else(not_found)?);
        }
        if pools.iter().any(|p| p == asked) {
            return Ok(asked.to_owned());
        }
        Err(RouteError::Invalid(format!(
            "pool `{asked}` is not bot `{name}`'s (its pools: {})",
            pools.join(", ")
        )))
    }

    /// Moves a conversation to a pool's queue or to an agent; a `handover` context becomes the
    /// conversation's [`Handover`], given by `by_agent` now.
    pub async fn transfer(
        &self,
        conversation_id: &str,
        by_agent: Option<&str>,
        target: TransferTarget,
        handover: Option<HandoverContext>,
    ) -> Result<Conversation, RouteError> {
        if let Some(agent) = by_agent {
            self.check_holder(conversation_id, agent).await?;
        }
        let target = match target {
            TransferTarget::Pool(queue) => TransferTarget::Pool(self.with_offer_time(queue)),
            TransferTarget::Bot { bot, pool } => {
                let pool = self.bot_pool(&bot, &pool)?;
                TransferTarget::Bot { pool, bot }
            }
            agent => agent,
        };
        let now = switchyard_core::time::now();
        let handover = handover.map(|context| Handover {
            by: by_agent.map(str::to_owned),
            at: now,
            context,
        });
        let release = self
            .store
            .transfer(conversation_id, target.clone(), handover.as_ref(), now)
            .await?;
        self.count_transfer(
            by_agent,
            &target,
            handover.is_some(),
            &release.conversation.pool,
        );
        let noted = match target {
            TransferTarget::Pool(_) => NoteKind::TransferredToPool,
            // A bot is an agent to the notes: the outbox announces the transfer alone, as the
            // conversation is not `assigned`.
            TransferTarget::Agent(_) | TransferTarget::Bot { .. } => NoteKind::TransferredToAgent,
        };
        self.announce_transfer(conversation_id, release, target, None, noted, now)
            .await
    }

    /// Counts a transfer in `switchyard_transfers_total`: who asked (a bot, an agent, the API
    /// naming none), where it went, the conversation's pool afterwards, and whether a hand-over
    /// went with it.
    fn count_transfer(
        &self,
        by_agent: Option<&str>,
        target: &TransferTarget,
        with_handover: bool,
        pool: &str,
    ) {
        let from = match by_agent {
            Some(agent) if bot_of_agent(agent).is_some() => "bot",
            Some(_) => "agent",
            None => "api",
        };
        let to = match target {
            TransferTarget::Pool(_) => "pool",
            TransferTarget::Agent(_) => "agent",
            TransferTarget::Bot { .. } => "bot",
        };
        let handover = if with_handover { "true" } else { "false" };
        self.metrics
            .transfers
            .with_label_values(&[from, handover, pool, to])
            .inc();
    }

    /// Moves a conversation that waits in `pool`'s queue since before `queued_before` on to
    /// `target` ([`Store::overflow`]; the conflict `conversation_changed` when it no longer
    /// waits there since then): announced as a transfer with the reason `overflow`, after which
    /// the target pool is assigned.
    pub async fn overflow(
        &self,
        conversation_id: &str,
        pool: &str,
        queued_before: DateTime<Utc>,
        target: QueueTarget,
    ) -> Result<Conversation, RouteError> {
        let target = self.with_offer_time(target);
        let now = switchyard_core::time::now();
        let release = self
            .store
            .overflow(conversation_id, pool, queued_before, target.clone(), now)
            .await?;
        self.announce_transfer(
            conversation_id,
            release,
            TransferTarget::Pool(target),
            Some(OVERFLOW),
            NoteKind::Overflowed,
            now,
        )
        .await
    }

    /// `target` with the offer time of its pool (a conversation sent into a pool that makes
    /// offers is offered to its next agent).
    fn with_offer_time(&self, target: QueueTarget) -> QueueTarget {
        QueueTarget {
            offer_secs: self.offer_secs.get(&target.pool).copied().unwrap_or(0),
            ..target
        }
    }

    /// Announces a transfer the store made and noted as `noted` (`conversation.transferred`
    /// with `reason`, then `conversation.queued` or `conversation.assigned`), clears its note,
    /// and assigns the pools it concerns: the target pool and those of the agent it left.
    /// Returns the conversation as it is then.
    async fn announce_transfer(
        &self,
        conversation_id: &str,
        release: Release,
        target: TransferTarget,
        reason: Option<&str>,
        noted: NoteKind,
        now: DateTime<Utc>,
    ) -> Result<Conversation, RouteError> {
        let from = release.released_holder();
        let mut events = EventBatch::new();
        events.conversation_transferred(&release.conversation, from, reason, now);
        let mut pools: Vec<String> = release
            .released_agent
            .as_ref()
            .map(|a| a.pools.clone())
            .unwrap_or_default();
        match target {
            TransferTarget::Pool(queue) => {
                events.conversation(EventType::ConversationQueued, &release.conversation);
                pools.push(queue.pool);
            }
            TransferTarget::Agent(_) => {
                events.conversation(EventType::ConversationAssigned, &release.conversation);
            }
            // The bot learns it holds the conversation from `conversation.transferred`.
            TransferTarget::Bot { .. } => {}
        }
        pools.dedup();
        let mut notes = vec![Note::new(noted, conversation_id, now)];
        self.assign(&pools, &mut events, &mut notes).await?;
        self.outbox.publish_noted(events, &notes).await?;
        Ok(self
            .store
            .conversation(conversation_id)
            .await?
            .unwrap_or(release.conversation))
    }

    /// Accepts the offer of a conversation to `agent_id` ([`Store::accept_offer`]): it stays with
    /// the agent. Announces `conversation.accepted`.
    pub async fn accept_offer(
        &self,
        conversation_id: &str,
        agent_id: &str,
    ) -> Result<Conversation, RouteError> {
        let now = switchyard_core::time::now();
        let conversation = self
            .store
            .accept_offer(conversation_id, agent_id, now)
            .await?;
        self.count_offer(&conversation.pool, "accepted");
        let mut events = EventBatch::new();
        events.conversation_accepted(&conversation, now);
        self.outbox
            .publish_noted(
                events,
                &[Note::new(NoteKind::Accepted, conversation_id, now)],
            )
            .await?;
        Ok(conversation)
    }

    /// Takes a conversation back from `agent_id` ([`Store::take_back`]): its offer declined by
    /// the agent or expired, or its customer left unanswered too long. Announces
    /// `conversation.transferred` (from the agent, with the reason) and `conversation.queued`
    /// (and `agent.updated` for an agent it set away), then assigns the pool, which gives it to
    /// another agent when one can take it.
    pub async fn take_back(
        &self,
        conversation_id: &str,
        agent_id: &str,
        why: Withdrawal,
    ) -> Result<Conversation, RouteError> {
        let now = switchyard_core::time::now();
        let release = self
            .store
            .take_back(conversation_id, agent_id, why, now)
            .await?;
        let conversation = &release.conversation;
        match why {
            Withdrawal::Declined => self.count_offer(&conversation.pool, "declined"),
            Withdrawal::Expired { .. } => self.count_offer(&conversation.pool, "expired"),
            Withdrawal::Unanswered { .. } => self
                .metrics
                .unanswered
                .with_label_values(&[conversation.pool.as_str()])
                .inc(),
        }
        let mut events = EventBatch::new();
        let reason = why.note_kind().transfer_reason();
        events.conversation_transferred(conversation, Some(agent_id), reason, now);
        events.conversation(EventType::ConversationQueued, conversation);
        let mut notes = vec![Note::new(why.note_kind(), conversation_id, now)];
        if why.sets_agent_away()
            && let Some(agent) = &release.released_agent
        {
            events.agent_updated(agent);
            notes.push(Note::new(NoteKind::AgentUpdated, agent_id, now));
        }
        self.assign(
            std::slice::from_ref(&conversation.pool),
            &mut events,
            &mut notes,
        )
        .await?;
        self.outbox.publish_noted(events, &notes).await?;
        Ok(self
            .store
            .conversation(conversation_id)
            .await?
            .unwrap_or(release.conversation))
    }

    /// Takes back every offer that expired by now; returns how many.
    pub async fn expire_offers(&self) -> Result<usize, RouteError> {
        let now = switchyard_core::time::now();
        let mut expired = 0;
        for c in self.store.pending_offers().await? {
            let (Some(offered_at), Some(expires), Some(agent)) =
                (c.offered_at, c.offer_expires_at, c.agent_id.as_deref())
            else {
                continue;
            };
            if expires > now {
                continue;
            }
            match self
                .take_back(&c.id, agent, Withdrawal::Expired { offered_at })
                .await
            {
                Ok(_) => expired += 1,
                // Accepted, declined or closed meanwhile.
                Err(RouteError::Store(StoreError::Conflict { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(expired)
    }

    fn count_offer(&self, pool: &str, outcome: &str) {
        self.metrics
            .offers
            .with_label_values(&[pool, outcome])
            .inc();
    }

    /// Assigns what waits in `pools` (see [`assign_pools`]).
    async fn assign(
        &self,
        pools: &[String],
        events: &mut EventBatch,
        notes: &mut Vec<Note>,
    ) -> Result<(), RouteError> {
        assign_pools(&*self.store, &self.metrics, pools, events, notes).await
    }

    async fn check_holder(&self, conversation_id: &str, agent_id: &str) -> Result<(), RouteError> {
        let conversation = self.conversation_record(conversation_id).await?;
        let held = matches!(
            conversation.status,
            ConversationStatus::Assigned | ConversationStatus::Bot
        );
        if !held || conversation.agent_id.as_deref() != Some(agent_id) {
            return Err(StoreError::Conflict {
                code: "not_assigned_to_agent",
                message: format!(
                    "conversation `{conversation_id}` is not assigned to agent `{agent_id}`"
                ),
            }
            .into());
        }
        Ok(())
    }

    /// Links identity keys to a customer explicitly (merging any profile that holds them); when a
    /// merge closed a conversation (its agent has room again), assigns the configured pools'
    /// queues and the closed conversations' own.
    pub async fn link_identities(
        &self,
        customer_id: &str,
        keys: Vec<IdentityKey>,
    ) -> Result<Customer, RouteError> {
        let customer = self.customer_record(customer_id).await?;
        let anchor = customer
            .identities
            .first()
            .map(|r| r.key.clone())
            .ok_or_else(|| RouteError::Refused {
                code: "customer_without_identity",
                message: format!("customer `{customer_id}` has no identity to link to"),
            })?;
        let mut identities = vec![(anchor.clone(), anchor.default_strength())];
        identities.extend(keys.into_iter().map(|k| {
            let s = k.default_strength();
            (k, s)
        }));
        let now = switchyard_core::time::now();
        let resolution = self
            .store
            .resolve_customer_noted(ResolveRequest {
                tenant: customer.tenant.clone(),
                identities,
                explicit: true,
                display_name: None,
                now,
                source: None,
            })
            .await?;
        let mut events = EventBatch::new();
        for merge in &resolution.merges {
            events.customer_merged(&resolution.customer, &merge.from, &merge.via, now);
        }
        events.closed_by_merges(&resolution.closed);
        let mut notes = Note::of_merges(&resolution.merges, &resolution.closed, now);
        // A conversation the merge closed may have freed its agent: let the queues move.
        if !resolution.closed.is_empty() {
            let mut pools: Vec<String> = resolution
                .closed
                .iter()
                .map(|c| c.conversation.pool.clone())
                .collect();
            pools.extend(self.pools.iter().cloned());
            pools.sort();
            pools.dedup();
            self.assign(&pools, &mut events, &mut notes).await?;
        }
        self.outbox.publish_noted(events, &notes).await?;
        Ok(resolution.customer)
    }

    /// Erases a customer on request ([`Store::erase_customer`]): closes its open conversation
    /// first (reason `erased`, announced like any close), then erases the profile, the profiles
    /// merged into it and every conversation of theirs, and announces `customer.erased`. A
    /// message that opens a new conversation in between is closed the same way, a few times at
    /// most, then the conflict `customer_has_open_conversation` is returned.
    pub async fn erase_customer(&self, customer_id: &str) -> Result<Erasure, RouteError> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = switchyard_core::time::now();
            match self
                .store
                .erase_customer(customer_id, ERASED_ON_REQUEST, now)
                .await
            {
                Ok(erasure) => {
                    self.announce_erasure(&erasure, now).await?;
                    return Ok(erasure);
                }
                Err(StoreError::Conflict {
                    code: "customer_has_open_conversation",
                    ..
                }) if attempt < ATTEMPTS => {
                    if let Some(open) = self.store.open_conversation(customer_id).await? {
                        let now = switchyard_core::time::now();
                        match self
                            .store
                            .close_conversation(&open.id, ERASURE_CLOSE_REASON, now)
                            .await
                        {
                            Ok(release) => {
                                self.announce_close(&open.id, release, now).await?;
                            }
                            // Closed meanwhile by someone else: erase again.
                            Err(StoreError::Conflict {
                                code: "conversation_closed",
                                ..
                            }) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Erases the customers quiet since before `quiet_before` ([`Store::erase_quiet_customers`],
    /// at most `limit` index entries) and announces each erasure. Returns how many entries it
    /// went through.
    pub async fn erase_quiet_customers(
        &self,
        quiet_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, RouteError> {
        let now = switchyard_core::time::now();
        let sweep = self
            .store
            .erase_quiet_customers(quiet_before, limit, now)
            .await?;
        for erasure in &sweep.erased {
            self.announce_erasure(erasure, now).await?;
        }
        Ok(sweep.handled)
    }

    /// Announces an erasure (`customer.erased`) and counts it.
    async fn announce_erasure(
        &self,
        erasure: &Erasure,
        now: DateTime<Utc>,
    ) -> Result<(), RouteError> {
        self.metrics
            .customers_erased
            .with_label_values(&[erasure.reason.as_str()])
            .inc();
        let mut events = EventBatch::new();
        events.customer_erased(erasure, now);
        self.outbox
            .publish_noted(events, &[Note::of_erasure(erasure, now)])
            .await?;
        Ok(())
    }

    /// Changes a customer's tags and attributes ([`Store::update_customer`]; a merged-away id
    /// changes the profile it was merged into) and announces `customer.updated` with the profile
    /// after the change, which it returns. Refused past the store's limits
    /// (`too_many_tags`, `too_many_attributes`).
    pub async fn update_customer(
        &self,
        customer_id: &str,
        update: &CustomerUpdate,
    ) -> Result<Customer, RouteError> {
        let now = switchyard_core::time::now();
        let customer = self.store.update_customer(customer_id, update, now).await?;
        let mut events = EventBatch::new();
        events.customer_updated(&customer, now);
        self.outbox
            .publish_noted(
                events,
                &[Note::new(NoteKind::CustomerUpdated, &customer.id, now)],
            )
            .await?;
        Ok(customer)
    }

    /// Merges customer `other` into `into` (explicitly, through one identity of each).
    pub async fn merge_customers(&self, into: &str, other: &str) -> Result<Customer, RouteError> {
        let other_customer = self.customer_record(other).await?;
        let keys = other_customer
            .identities
            .iter()
            .map(|r| r.key.clone())
            .collect();
        self.link_identities(into, keys).await
    }
}

/// Refuses content no reply may have: blank text (`empty_reply`), a malformed template
/// (`invalid_template`).
fn check_content(content: &Content) -> Result<(), RouteError> {
    if let Content::Text { text } = content
        && text.trim().is_empty()
    {
        return Err(RouteError::Refused {
            code: "empty_reply",
            message: "a text reply needs some text".into(),
        });
    }
    if let Some(problem) = content.template_problem() {
        return Err(RouteError::Refused {
            code: "invalid_template",
            message: problem.into(),
        });
    }
    Ok(())
}

/// The channel's rules on `content` for `conversation` at `now` (see
/// [`switchyard_connectors::ChannelRules::check`]): the content to send, or the refusal.
fn check_rules(
    rules: switchyard_connectors::ChannelRules,
    conversation: &Conversation,
    content: Content,
    now: DateTime<Utc>,
) -> Result<Content, RouteError> {
    rules
        .check(conversation, content, now)
        .map_err(|v| RouteError::Refused {
            code: v.code,
            message: v.message,
        })
}
