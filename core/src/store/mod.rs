//! The state store: customers, identities, conversations, queues and agents.
//!
//! Every method is one atomic operation (a lock in the embedded store, one Lua script in Redis),
//! so concurrent routers never read-modify-write across an await: one conversation is never
//! assigned twice, no agent goes over capacity, and two channels of one person arriving at once
//! converge on one profile. [`Store::route_inbound`] does everything routing one inbound message
//! needs as one such operation, so the router's hot path costs one store call.

pub mod embedded;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::handover::Handover;
use crate::identity::{IdentityKey, IdentityStrength};
use crate::model::{Agent, AgentStatus, Conversation, ConversationStatus, Customer, Skills};

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The record does not exist.
    #[error("{kind} `{id}` not found")]
    NotFound {
        /// `customer`, `conversation`, `agent`.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The operation contradicts the record's state (closed conversation, wrong agent, full).
    #[error("{message}")]
    Conflict {
        /// Stable machine-readable code, e.g. `not_assigned_to_agent`.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The store cannot be reached or answered with an error; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Identities to resolve into one customer.
#[derive(Debug, Clone)]
pub struct ResolveRequest {
    /// Tenant.
    pub tenant: String,
    /// Keys with their strength; the channel's own key first.
    pub identities: Vec<(IdentityKey, IdentityStrength)>,
    /// An explicit identify/link call: weak keys merge too.
    pub explicit: bool,
    /// Name to record if the profile has none.
    pub display_name: Option<String>,
    /// Time of the resolution.
    pub now: DateTime<Utc>,
    /// What asks (the envelope id): a retry of the request that created the profile reports it
    /// created again, so its `customer.created` event is re-emitted after a lost reply.
    pub source: Option<String>,
}

impl ResolveRequest {
    /// The request that routing `envelope` makes: the sender's identities with their default
    /// strength, its display name, the envelope id as the source; `explicit` for an
    /// identify/link event.
    pub fn of_sender(envelope: &Envelope, explicit: bool, now: DateTime<Utc>) -> Self {
        ResolveRequest {
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
            source: Some(envelope.id.clone()),
        }
    }
}

/// One merge performed while resolving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merge {
    /// The profile that no longer exists.
    pub from: String,
    /// The surviving profile.
    pub into: String,
    /// The keys whose sharing caused the merge.
    pub via: Vec<IdentityKey>,
}

/// Outcome of [`Store::resolve_customer`].
#[derive(Debug, Clone)]
pub struct Resolution {
    /// The customer the identities belong to now.
    pub customer: Customer,
    /// Whether the profile was created by this call, or by an earlier call with the same
    /// [`ResolveRequest::source`] (a retry).
    pub created: bool,
    /// Profiles merged into it by this call.
    pub merges: Vec<Merge>,
    /// Keys newly linked to the customer.
    pub linked: Vec<IdentityKey>,
    /// Conversations closed because their customer was merged into one with its own open one
    /// (their messages were moved into the survivor's conversation).
    pub closed: Vec<MergeClosed>,
}

/// A conversation a merge closed ([`Resolution::closed`]), with the agent or bot that held it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergeClosed {
    /// The conversation after the close.
    pub conversation: Conversation,
    /// The agent (or bot, `bot:{id}`) that held it: its `conversation.closed` names it, so
    /// that agent's console, or that bot, learns the conversation is over.
    pub released_holder: Option<String>,
}

/// How [`Store::route_inbound`] resolved the sender: a [`Resolution`] that carries the whole
/// profile only when an event announces it (it was created, or others were merged into it), so
/// that routing the common message, from a known customer, does not read the profile back.
#[derive(Debug, Clone, PartialEq)]
pub struct SenderResolution {
    /// The customer the identities belong to now.
    pub customer_id: String,
    /// The profile, exactly when `created` is set or `merges` is not empty.
    pub profile: Option<Customer>,
    /// As [`Resolution::created`].
    pub created: bool,
    /// As [`Resolution::merges`].
    pub merges: Vec<Merge>,
    /// As [`Resolution::closed`].
    pub closed: Vec<MergeClosed>,
}

impl SenderResolution {
    /// Whether a resolution that `created` the profile or made `merges` into it carries the
    /// profile: exactly then `customer.created` or `customer.merged` announces it.
    pub fn carries_profile(created: bool, merges: &[Merge]) -> bool {
        created || !merges.is_empty()
    }
}

impl From<Resolution> for SenderResolution {
    fn from(r: Resolution) -> Self {
        let announced = SenderResolution::carries_profile(r.created, &r.merges);
        SenderResolution {
            customer_id: r.customer.id.clone(),
            profile: announced.then_some(r.customer),
            created: r.created,
            merges: r.merges,
            closed: r.closed,
        }
    }
}

/// Outcome of [`Store::record_inbound`].
#[derive(Debug, Clone)]
pub struct InboundRecord {
    /// The customer's open conversation holding the message.
    pub conversation: Conversation,
    /// Whether the conversation was opened by this message: now, or when this envelope id was
    /// recorded before (a retry after a lost reply reports it again, so events are re-emitted).
    pub created: bool,
    /// Whether this envelope id was recorded before (nothing changed).
    pub duplicate: bool,
}

/// Outcome of [`Store::record_outbound`].
#[derive(Debug, Clone)]
pub struct OutboundRecord {
    /// The conversation holding the message.
    pub conversation: Conversation,
    /// Whether this envelope id was recorded before: nothing changed and nothing was staged.
    pub duplicate: bool,
}

/// A conversation handed to an agent.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The conversation, now assigned (its `agent_id` names the agent).
    pub conversation: Conversation,
    /// The agent now holding it (only the id: an agent's whole record, with every conversation
    /// it holds, is not worth carrying on the routing path).
    pub agent_id: String,
    /// Made by an earlier attempt of the same routing and reported again by its retry
    /// ([`InboundOutcome::Routed`]): announced again, but not a new assignment.
    pub replayed: bool,
}

/// What [`Store::route_inbound`] does for one inbound message (not an identify/link event).
#[derive(Debug, Clone)]
pub struct InboundRouting<'a> {
    /// The message. Its `customer_id` and `conversation_id` are ignored: the store records it
    /// under the customer `resolve` finds, in that customer's open conversation.
    pub envelope: &'a Envelope,
    /// The sender's identities; `resolve.now` is the time of every step.
    pub resolve: ResolveRequest,
    /// The dedupe key claimed with the envelope id (the router's `routed:{dedupe_key}`).
    pub claim: String,
    /// How long the claim holds (real time, like [`Store::claim_key`]).
    pub claim_ttl: Duration,
    /// Where a conversation opened by this message goes.
    pub placement: Placement,
}

/// Where a conversation opened by an inbound message goes: its pool, the bot that holds it
/// first, and the skills it asks of the agent offered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The pool it belongs to.
    pub pool: String,
    /// The bot (its agent id, `bot:{id}`) that holds it: it starts in status `bot` instead of
    /// the pool's queue. `None`: queued.
    pub bot: Option<String>,
    /// The skills an agent needs to be offered it ([`Conversation::skills`]).
    pub skills: Skills,
    /// Its priority in the pool's queue ([`Conversation::priority`]).
    pub priority: u8,
    /// Whether it goes to the customer's last agent (the agent most recently handed one of their
    /// conversations opened with this preference) rather than the longest idle, when that agent
    /// can take it as it leaves the queue: online in its pool, with room and every skill it asks
    /// for. The agent it is handed to becomes the customer's last agent.
    pub prefer_last_agent: bool,
    /// Seconds an agent it is assigned to from the queue has to accept it
    /// ([`Store::accept_offer`]) before it goes back to the queue; 0: assignments are final.
    pub offer_secs: u64,
}

impl Placement {
    /// Queued in `pool`, asking no skill.
    pub fn queued(pool: impl Into<String>) -> Self {
        Placement {
            pool: pool.into(),
            bot: None,
            skills: Skills::default(),
            priority: 0,
            prefer_last_agent: false,
            offer_secs: 0,
        }
    }

    /// Held first by `bot` (an agent id, `bot:{id}`).
    pub fn with_bot(mut self, bot: impl Into<String>) -> Self {
        self.bot = Some(bot.into());
        self
    }

    /// Asking `skills` of its agent.
    pub fn with_skills(mut self, skills: Skills) -> Self {
        self.skills = skills;
        self
    }

    /// With `priority` in the queue.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Preferring the customer's last agent when `prefer` ([`Placement::prefer_last_agent`]).
    pub fn preferring_last_agent(mut self, prefer: bool) -> Self {
        self.prefer_last_agent = prefer;
        self
    }

    /// Offered to its agents for `secs` seconds ([`Placement::offer_secs`]).
    pub fn offered_for(mut self, secs: u64) -> Self {
        self.offer_secs = secs;
        self
    }
}

/// Outcome of [`Store::route_inbound`].
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "a transient return value, matched at once; `Routed` is the common case, so boxing \
              it would add an allocation per message to save stack space in the rare one"
)]
pub enum InboundOutcome {
    /// Another envelope (a copy of this message under another id) holds the claim: nothing else
    /// was done.
    Duplicate {
        /// The id of the envelope holding the claim.
        first: String,
    },
    /// The message is recorded (now, or by an earlier attempt with this envelope id).
    Routed {
        /// The customer the sender's identities resolved to.
        resolution: SenderResolution,
        /// The recording; its conversation is as recorded, before any assignment below.
        record: InboundRecord,
        /// Assignments made in the conversation's pool because the conversation was queued
        /// (the conversation itself, if an agent had room, and older ones ahead of it). On a
        /// retry (the envelope held the claim already), also the other conversations its first
        /// routing assigned that are still with the same agent, so that their
        /// `conversation.assigned` is announced even if the first routing's reply was lost.
        assignments: Vec<Assignment>,
    },
}

/// [`Store::route_inbound`] as four calls of `store`, in order: [`Store::claim_key`],
/// [`Store::resolve_customer`], [`Store::record_inbound`] and, when the conversation is queued,
/// [`Store::assign_queued`]. Not atomic across the steps, but each is idempotent, so a retry
/// after a failed step completes the work; the default of [`Store::route_inbound`], and the
/// reference its overrides are tested against.
pub async fn route_inbound_stepwise<S: Store + ?Sized>(
    store: &S,
    req: InboundRouting<'_>,
) -> Result<InboundOutcome, StoreError> {
    let InboundRouting {
        envelope,
        resolve,
        claim,
        claim_ttl,
        placement,
    } = req;
    let retry = match store.claim_key(&claim, &envelope.id, claim_ttl).await? {
        Some(first) if first != envelope.id => return Ok(InboundOutcome::Duplicate { first }),
        held => held.is_some(),
    };
    let now = resolve.now;
    let resolution = store.resolve_customer_noted(resolve).await?;
    let mut resolved = envelope.clone();
    resolved.customer_id = Some(resolution.customer.id.clone());
    let record = store.record_inbound(&resolved, &placement, now).await?;
    let mut assignments = if record.conversation.status == ConversationStatus::Queued {
        store.assign_queued(&record.conversation.pool, now).await?
    } else {
        Vec::new()
    };
    let others_key = others_assigned_key(&claim);
    if retry {
        let remembered = store
            .get_key(&others_key)
            .await?
            .map(|v| decode_others_assigned(&v))
            .unwrap_or_default();
        let mut current = Vec::with_capacity(remembered.len());
        for (id, agent) in remembered {
            current.push((store.conversation(&id).await?, agent));
        }
        replay_others_assigned(&mut assignments, current);
    } else if let Some(others) = encode_others_assigned(&record.conversation.id, &assignments) {
        store.set_key(&others_key, &others, claim_ttl).await?;
    }
    Ok(InboundOutcome::Routed {
        resolution: resolution.into(),
        record,
        assignments,
    })
}

/// The key under which a routing (with claim `claim`) remembers the other conversations it
/// assigned, as long as the claim, for a retry to announce them again.
pub(crate) fn others_assigned_key(claim: &str) -> String {
    format!("{claim}:assigned")
}

/// The conversations of `assignments` other than `own`, as remembered under
/// [`others_assigned_key`] (JSON pairs of conversation id and agent id); `None` when there is
/// none.
pub(crate) fn encode_others_assigned(own: &str, assignments: &[Assignment]) -> Option<String> {
    let others: Vec<(&str, &str)> = assignments
        .iter()
        .filter(|a| a.conversation.id != own)
        .map(|a| (a.conversation.id.as_str(), a.agent_id.as_str()))
        .collect();
    if others.is_empty() {
        return None;
    }
    serde_json::to_string(&others).ok()
}

/// The pairs [`encode_others_assigned`] wrote (none if the value is not such a list).
pub(crate) fn decode_others_assigned(value: &str) -> Vec<(String, String)> {
    serde_json::from_str(value).unwrap_or_default()
}

/// Adds to `assignments` each remembered conversation (as it is now, with the agent it was
/// assigned to) that is still assigned to that agent and not in `assignments` already.
pub(crate) fn replay_others_assigned(
    assignments: &mut Vec<Assignment>,
    remembered: Vec<(Option<Conversation>, String)>,
) {
    for (conversation, agent_id) in remembered {
        let Some(conversation) = conversation else {
            continue;
        };
        let still_held = conversation.status == ConversationStatus::Assigned
            && conversation.agent_id.as_deref() == Some(agent_id.as_str());
        if still_held
            && !assignments
                .iter()
                .any(|a| a.conversation.id == conversation.id)
        {
            assignments.push(Assignment {
                conversation,
                agent_id,
                replayed: true,
            });
        }
    }
}

/// Fields of `PUT /v1/agents/{id}`; absent fields keep their value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentUpdate {
    /// Agent id.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Pools.
    pub pools: Option<Vec<String>>,
    /// Skills.
    pub skills: Option<Vec<String>>,
    /// Capacity.
    pub capacity: Option<u32>,
    /// Presence.
    pub status: Option<AgentStatus>,
}

/// A pool's queue, as a transfer or a queue overflow sends a conversation to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueTarget {
    /// The pool.
    pub pool: String,
    /// The skills it asks of its next agent from now on; `None` keeps those it asked.
    pub skills: Option<Skills>,
    /// Its priority in that queue from now on; `None` keeps the one it had.
    pub priority: Option<u8>,
    /// Seconds the agents of that pool have to accept it ([`Placement::offer_secs`]).
    pub offer_secs: u64,
}

impl QueueTarget {
    /// Into `pool`'s queue, asking the skills and with the priority it had.
    pub fn pool(pool: impl Into<String>) -> Self {
        QueueTarget {
            pool: pool.into(),
            skills: None,
            priority: None,
            offer_secs: 0,
        }
    }
}

/// Where a transfer sends a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferTarget {
    /// Back into a pool's queue.
    Pool(QueueTarget),
    /// Straight to an agent (who must have room).
    Agent(String),
    /// To a bot (its agent id, `bot:{id}`), which then holds it in `pool` (status `bot`), as if
    /// the pool had opened it: the bot is sent its messages and hands it off again, or the pool's
    /// `bot_timeout_secs` hands it off when the bot stays silent.
    Bot {
        /// The pool whose bot it is.
        pool: String,
        /// The bot's agent id (`bot:{id}`).
        bot: String,
    },
}

impl TransferTarget {
    /// Into `pool`'s queue, asking the skills it asked before.
    pub fn pool(pool: impl Into<String>) -> Self {
        TransferTarget::Pool(QueueTarget::pool(pool))
    }
}

/// How a pool's queue stands ([`Store::queue_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Conversations waiting in it.
    pub depth: usize,
    /// The earliest `queued_at` among the heads of its queues; `None` when nothing waits.
    pub oldest_queued_at: Option<DateTime<Utc>>,
}

impl QueueStats {
    /// Seconds from `oldest_queued_at` to `now` (0 for a `queued_at` after `now`, from another
    /// process's clock); `None` when nothing waits.
    pub fn oldest_wait_secs(&self, now: DateTime<Utc>) -> Option<f64> {
        self.oldest_queued_at
            .map(|at| (now - at).as_seconds_f64().max(0.0))
    }
}

/// Why a conversation is taken back from its agent ([`Store::take_back`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// The agent declined its offer.
    Declined,
    /// Nobody accepted its offer in time: taken back only if it is still the offer made at
    /// `offered_at` (not a later one), and its agent is set away.
    Expired {
        /// The `offered_at` of the offer that expired.
        offered_at: DateTime<Utc>,
    },
    /// Its customer waits for an answer the agent did not give in time (the pool's
    /// `answer_timeout_secs`): taken back only if it is still assigned to the agent (offer
    /// accepted) and has waited for an answer since before `before`, counting from the
    /// assignment when that came later (`awaiting_reply_since` and `assigned_at` both before
    /// it). Its agent is set away, as for an expired offer, when `sets_away` (the pool's
    /// `answer_timeout_sets_away`).
    Unanswered {
        /// The cutoff: now minus the pool's answer timeout.
        before: DateTime<Utc>,
        /// Whether the agent is set away too.
        sets_away: bool,
    },
}

/// The `reason` of the `conversation.transferred` (and of the agent's `unassigned` frame) of an
/// offer the agent declined.
pub const OFFER_DECLINED: &str = "declined";
/// The `reason` of the `conversation.transferred` (and of the agent's `unassigned` frame) of an
/// offer nobody accepted in time.
pub const OFFER_EXPIRED: &str = "offer_expired";
/// The `reason` of the `conversation.transferred` (and of the agent's `unassigned` frame) of a
/// conversation taken back from an agent who left its customer unanswered too long.
pub const UNANSWERED: &str = "unanswered";

impl Withdrawal {
    /// The kind of the note it leaves ([`NoteKind::Declined`], [`NoteKind::OfferExpired`] or
    /// [`NoteKind::Unanswered`]), whose [`NoteKind::transfer_reason`] is the `reason` of the
    /// `conversation.transferred` that announces it.
    pub fn note_kind(self) -> NoteKind {
        match self {
            Withdrawal::Declined => NoteKind::Declined,
            Withdrawal::Expired { .. } => NoteKind::OfferExpired,
            Withdrawal::Unanswered { .. } => NoteKind::Unanswered,
        }
    }

    /// Whether it sets the agent away (an agent who lets an offer expire or leaves a customer
    /// unanswered is not at work, so it stops being given conversations).
    pub fn sets_agent_away(self) -> bool {
        match self {
            Withdrawal::Declined => false,
            Withdrawal::Expired { .. } => true,
            Withdrawal::Unanswered { sets_away, .. } => sets_away,
        }
    }
}

/// The `reason` of the `conversation.transferred` of a conversation that waited its pool's
/// `[pools.overflow] after_secs` in the queue and moved on ([`Store::overflow`]).
pub const OVERFLOW: &str = "overflow";

/// Conflict code of an offer that cannot be accepted or taken back: the conversation is not
/// offered to that agent now.
pub const NO_PENDING_OFFER: &str = "no_pending_offer";

/// Conflict code of a timer's change refused because the conversation changed since the timer
/// saw it ([`Store::close_idle`], [`Store::overflow`]).
pub const CONVERSATION_CHANGED: &str = "conversation_changed";

/// When an offer made at `offered_at` for `secs` seconds expires
/// ([`Conversation::offer_expires_at`]; `None` only past the end of time).
pub fn offer_deadline(offered_at: DateTime<Utc>, secs: u64) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(secs).ok()?;
    offered_at.checked_add_signed(chrono::TimeDelta::try_seconds(secs)?)
}

/// Outcome of a close or transfer: the conversation and the agent it left, if any.
#[derive(Debug, Clone)]
pub struct Release {
    /// The conversation after the change.
    pub conversation: Conversation,
    /// The agent who held it before, with capacity freed.
    pub released_agent: Option<Agent>,
    /// The bot that held it before (`bot:{id}`; a bot is no agent record): set by a transfer
    /// or a close of a conversation a bot held.
    pub released_bot: Option<String>,
}

impl Release {
    /// The id of the agent, or bot, that held the conversation before.
    pub fn released_holder(&self) -> Option<&str> {
        self.released_agent
            .as_ref()
            .map(|a| a.id.as_str())
            .or(self.released_bot.as_deref())
    }
}

/// What a [`Note`] stands for: the events a change of state calls for. Kinds are ordered as a
/// command announces changes it made at one instant (a link's merge before the close it caused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoteKind {
    /// A profile was merged into another by an explicit link: `customer.merged`.
    Merged,
    /// A conversation was assigned: `conversation.assigned`.
    Assigned,
    /// An agent accepted the offer of a conversation ([`Store::accept_offer`]; the note names the
    /// agent): `conversation.accepted`, if the conversation is still with that agent, accepted.
    Accepted,
    /// A conversation was closed: `conversation.closed`.
    Closed,
    /// A conversation was transferred to a pool: `conversation.transferred`, then
    /// `conversation.queued`.
    TransferredToPool,
    /// A conversation was transferred straight to an agent: `conversation.transferred`, then
    /// `conversation.assigned`.
    TransferredToAgent,
    /// An agent declined the offer of a conversation, which went back to its pool's queue
    /// ([`Store::take_back`] with [`Withdrawal::Declined`]; the note names the agent):
    /// `conversation.transferred` with the reason `declined`, then `conversation.queued`.
    Declined,
    /// The offer of a conversation expired, and it went back to its pool's queue
    /// ([`Store::take_back`] with [`Withdrawal::Expired`]; the note names the agent):
    /// `conversation.transferred` with the reason `offer_expired`, then `conversation.queued`.
    OfferExpired,
    /// A conversation whose customer its agent left unanswered too long went back to its pool's
    /// queue ([`Store::take_back`] with [`Withdrawal::Unanswered`]; the note names the agent):
    /// `conversation.transferred` with the reason `unanswered`, then `conversation.queued`.
    Unanswered,
    /// A conversation that waited too long in its pool's queue moved on ([`Store::overflow`]):
    /// `conversation.transferred` with the reason `overflow`, then `conversation.queued`.
    Overflowed,
    /// An agent was created or changed: `agent.updated`.
    AgentUpdated,
    /// A customer was erased: `customer.erased`, rendered from the note's [`Erasure`] (the
    /// records are gone).
    Erased,
    /// A customer's tags or attributes were changed: `customer.updated`, rendered from the
    /// profile as it is then.
    CustomerUpdated,
    /// An agent opened a conversation by writing first ([`Store::start_conversation`]):
    /// `conversation.created`, then `conversation.assigned`.
    Started,
}

impl NoteKind {
    /// Every kind.
    pub const ALL: [NoteKind; 14] = [
        NoteKind::Assigned,
        NoteKind::Accepted,
        NoteKind::Closed,
        NoteKind::TransferredToPool,
        NoteKind::TransferredToAgent,
        NoteKind::Declined,
        NoteKind::OfferExpired,
        NoteKind::Unanswered,
        NoteKind::Overflowed,
        NoteKind::AgentUpdated,
        NoteKind::Merged,
        NoteKind::Erased,
        NoteKind::CustomerUpdated,
        NoteKind::Started,
    ];

    /// The kind's name in a note's key.
    pub fn as_str(self) -> &'static str {
        match self {
            NoteKind::Assigned => "assigned",
            NoteKind::Closed => "closed",
            NoteKind::TransferredToPool => "transferred_to_pool",
            NoteKind::TransferredToAgent => "transferred_to_agent",
            NoteKind::Accepted => "accepted",
            NoteKind::Declined => "declined",
            NoteKind::OfferExpired => "offer_expired",
            NoteKind::Unanswered => "unanswered",
            NoteKind::Overflowed => "overflowed",
            NoteKind::AgentUpdated => "agent_updated",
            NoteKind::Merged => "merged",
            NoteKind::Erased => "erased",
            NoteKind::CustomerUpdated => "customer_updated",
            NoteKind::Started => "started",
        }
    }

    /// The `reason` of the `conversation.transferred` announcing a change of this kind that was
    /// not asked for as a transfer: an offer declined or expired, an unanswered customer, an
    /// overflow. `None` for other kinds.
    pub fn transfer_reason(self) -> Option<&'static str> {
        match self {
            NoteKind::Declined => Some(OFFER_DECLINED),
            NoteKind::OfferExpired => Some(OFFER_EXPIRED),
            NoteKind::Unanswered => Some(UNANSWERED),
            NoteKind::Overflowed => Some(OVERFLOW),
            _ => None,
        }
    }

    /// The kind named `name` in a note's key.
    pub fn parse(name: &str) -> Option<NoteKind> {
        NoteKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// A change a command made whose events the command may not have published yet.
///
/// Commands store their change first and publish its events second, and no bus redelivery
/// repeats a command. So the store writes a note in the same atomic step as the change
/// ([`Store::assign_queued_noted`], [`Store::close_conversation`], [`Store::transfer`],
/// [`Store::upsert_agent`], [`Store::expire_lapsed_agents`],
/// [`Store::resolve_customer_noted`], [`Store::erase_customer`], [`Store::update_customer`],
/// [`Store::start_conversation`], [`Store::accept_offer`], [`Store::take_back`]),
/// and the command clears it
/// ([`Store::clear_notes`]) once its events are published or kept in the outbox. If the command
/// stops, or loses the store's reply, before that, the note stays: the outbox's republisher
/// finds it ([`Store::unannounced`]) and announces the change from the stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// What changed.
    pub kind: NoteKind,
    /// The conversation changed (for [`NoteKind::AgentUpdated`], the agent; for
    /// [`NoteKind::Merged`], the profile merged away; for [`NoteKind::Erased`] and
    /// [`NoteKind::CustomerUpdated`], the customer).
    pub subject: String,
    /// When: the `now` of the change.
    pub at: DateTime<Utc>,
    /// The agent (or, for a transfer, the bot) a close or a transfer took the conversation
    /// from; for an offer's answer
    /// ([`NoteKind::Accepted`], [`NoteKind::Declined`], [`NoteKind::OfferExpired`]), the agent it
    /// was offered to; for [`NoteKind::Unanswered`], the agent it was taken from.
    pub from_agent: Option<String>,
    /// The keys whose sharing caused a merge.
    pub via: Vec<IdentityKey>,
    /// What an erasure removed ([`NoteKind::Erased`]).
    pub erasure: Option<Erasure>,
}

impl Note {
    /// A note of `kind` about `subject` at `at`, with no agent left.
    pub fn new(kind: NoteKind, subject: impl Into<String>, at: DateTime<Utc>) -> Self {
        Note {
            kind,
            subject: subject.into(),
            at,
            from_agent: None,
            via: Vec::new(),
            erasure: None,
        }
    }

    /// The note of an erasure at `at`.
    pub fn of_erasure(erasure: &Erasure, at: DateTime<Utc>) -> Self {
        Note {
            erasure: Some(erasure.clone()),
            ..Note::new(NoteKind::Erased, &erasure.customer_id, at)
        }
    }

    /// The note's key, unique per change: `<at, RFC 3339 with nanoseconds>|<kind>|<subject>`.
    /// Keys sort byte-wise by time (the timestamp is fixed-width), which is how the Redis store
    /// lists them.
    pub fn key(&self) -> String {
        let at = self.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        format!("{at}|{}|{}", self.kind.as_str(), self.subject)
    }

    /// The notes a resolution at `at` makes ([`Store::resolve_customer_noted`]): one per merge,
    /// with its keys, and one per conversation a merge closed, with the agent or bot it left.
    pub fn of_merges(merges: &[Merge], closed: &[MergeClosed], at: DateTime<Utc>) -> Vec<Note> {
        let merged = merges.iter().map(|m| Note {
            via: m.via.clone(),
            ..Note::new(NoteKind::Merged, &m.from, at)
        });
        let closed = closed.iter().map(|c| Note {
            from_agent: c.released_holder.clone(),
            ..Note::new(NoteKind::Closed, &c.conversation.id, at)
        });
        merged.chain(closed).collect()
    }

    /// The note a key was made from, with the detail the store keeps beside the key (the agent a
    /// close or transfer left or an offer was made to, a merge's keys as a JSON array of strings,
    /// an erasure as the JSON of [`Erasure`]); `None` when the key or the detail is not one.
    pub fn from_key(key: &str, detail: Option<String>) -> Option<Note> {
        let (at, rest) = key.split_once('|')?;
        let (kind, subject) = rest.split_once('|')?;
        let mut note = Note::new(
            NoteKind::parse(kind)?,
            subject,
            DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
        );
        match note.kind {
            NoteKind::Merged => note.via = serde_json::from_str(detail.as_deref()?).ok()?,
            NoteKind::Erased => note.erasure = serde_json::from_str(detail.as_deref()?).ok()?,
            _ => note.from_agent = detail,
        }
        Some(note)
    }
}

/// The `reason` of an erasure asked for through the API (`DELETE /v1/customers/{id}`).
pub const ERASED_ON_REQUEST: &str = "request";
/// The `reason` of an erasure by `store.customer_retention_days`.
pub const ERASED_BY_RETENTION: &str = "retention";
/// The `close_reason` of an open conversation closed because its customer is being erased.
pub const ERASURE_CLOSE_REASON: &str = "erased";

/// What erasing a customer removed ([`Store::erase_customer`]): the ids a consumer of the event
/// stream needs to erase its own copies (`customer.erased`), and nothing personal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    /// The erased profile.
    pub customer_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Why: [`ERASED_ON_REQUEST`] or [`ERASED_BY_RETENTION`].
    pub reason: String,
    /// The profiles merged into it earlier, whose ids no longer lead anywhere.
    pub merged_from: Vec<String>,
    /// Its conversations, deleted with their messages, in id order.
    pub conversations: Vec<String>,
}

/// Outcome of [`Store::erase_quiet_customers`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuietSweep {
    /// Entries of the quiet index it went through; fewer than the limit means none older than
    /// the cut-off is left.
    pub handled: usize,
    /// The customers it erased.
    pub erased: Vec<Erasure>,
}

/// Most tags one customer profile may have: [`Store::update_customer`] refuses to add beyond it
/// (the conflict [`TOO_MANY_TAGS`]).
pub const MAX_CUSTOMER_TAGS: usize = 100;
/// Most attributes one customer profile may have: [`Store::update_customer`] refuses to add
/// beyond it (the conflict [`TOO_MANY_ATTRIBUTES`]).
pub const MAX_CUSTOMER_ATTRIBUTES: usize = 100;
/// The conflict code of an update that would leave a profile with more than
/// [`MAX_CUSTOMER_TAGS`] tags.
pub const TOO_MANY_TAGS: &str = "too_many_tags";
/// The conflict code of an update that would leave a profile with more than
/// [`MAX_CUSTOMER_ATTRIBUTES`] attributes.
pub const TOO_MANY_ATTRIBUTES: &str = "too_many_attributes";

/// A change of a customer's tags and attributes ([`Store::update_customer`]), applied in this
/// order: `remove_tags`, then `add_tags`, then `attributes`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerUpdate {
    /// Tags to add, at the end, in this order; tags the profile has already stay where they are.
    pub add_tags: Vec<String>,
    /// Tags to remove; a tag the profile does not have is ignored.
    pub remove_tags: Vec<String>,
    /// A JSON Merge Patch (RFC 7386) of the attributes, at the top level: a value sets the
    /// attribute (replacing it whole), `null` removes it.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl CustomerUpdate {
    /// Whether it changes nothing whatever the profile.
    pub fn is_empty(&self) -> bool {
        self.add_tags.is_empty() && self.remove_tags.is_empty() && self.attributes.is_empty()
    }

    /// The tags and attributes of `customer` after the update (the removed tags gone, the added
    /// ones appended once each, the merge patch applied), or the conflict refusing it past the
    /// limits (see [`Store::update_customer`]).
    pub(crate) fn applied_to(
        &self,
        customer: &Customer,
    ) -> Result<(Vec<String>, serde_json::Map<String, serde_json::Value>), StoreError> {
        let mut tags: Vec<String> = customer
            .tags
            .iter()
            .filter(|t| !self.remove_tags.contains(t))
            .cloned()
            .collect();
        for tag in &self.add_tags {
            if !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
        let mut attributes = customer.attributes.clone();
        for (name, value) in &self.attributes {
            if value.is_null() {
                attributes.remove(name);
            } else {
                attributes.insert(name.clone(), value.clone());
            }
        }
        refuse_past_limit(
            customer.tags.len(),
            tags.len(),
            MAX_CUSTOMER_TAGS,
            TOO_MANY_TAGS,
            "tags",
        )?;
        refuse_past_limit(
            customer.attributes.len(),
            attributes.len(),
            MAX_CUSTOMER_ATTRIBUTES,
            TOO_MANY_ATTRIBUTES,
            "attributes",
        )?;
        Ok((tags, attributes))
    }
}

/// The conflict `code` refusing an update from `before` to `after` items (tags or attributes)
/// past `max`. An update may not leave more than `max`, unless it leaves no more than there
/// were: a merge keeps both profiles' tags and attributes, which can exceed the limit, and such
/// a profile can still lose some.
fn refuse_past_limit(
    before: usize,
    after: usize,
    max: usize,
    code: &'static str,
    what: &str,
) -> Result<(), StoreError> {
    if after > max && after > before {
        return Err(StoreError::Conflict {
            code,
            message: format!(
                "a customer may have at most {max} {what}; this update would leave {after}"
            ),
        });
    }
    Ok(())
}

/// One undelivered item of a mailbox ([`Store::mailbox_push`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxItem {
    /// The item's id, unique within its mailbox (the web channel uses the reply's envelope id).
    pub id: String,
    /// The item, opaque to the store (the web channel keeps the visitor frame as JSON).
    pub body: String,
}

/// The oldest items of a mailbox ([`Store::mailbox_head`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailboxHead {
    /// The items asked for, oldest first.
    pub items: Vec<MailboxItem>,
    /// How many items the mailbox holds in all.
    pub len: usize,
}

/// An item to push to a mailbox in the same atomic step as the store change it belongs to (see
/// [`Store::mailbox_push`] for what a push does).
#[derive(Debug, Clone, Copy)]
pub struct MailboxPush<'a> {
    /// The mailbox.
    pub key: &'a str,
    /// The item's id, unique within the mailbox.
    pub id: &'a str,
    /// The item.
    pub body: &'a str,
    /// The most items the mailbox keeps (at least 1); the oldest go first.
    pub max_len: usize,
    /// How long after this push the whole mailbox expires.
    pub ttl: Duration,
}

/// A conversation an agent opens by writing first to a customer ([`Store::start_conversation`]).
#[derive(Debug, Clone, Copy)]
pub struct ConversationStart<'a> {
    /// The agent's first message, outbound: its `conversation_id` is the id of the conversation
    /// to open (chosen by the caller, so that the bus message staged with it names it), its
    /// `customer_id` the customer (a merged-away id stands for the profile it was merged into),
    /// its `channel` and `sender` the channel and recipient of the conversation.
    pub envelope: &'a Envelope,
    /// The agent who writes, and holds the conversation.
    pub agent_id: &'a str,
    /// The pool the conversation belongs to (the channel's).
    pub pool: &'a str,
    /// Whether the agent becomes the customer's last agent, as the assignment of a conversation
    /// opened preferring the last agent makes it (the pool has `prefer_last_agent`); so does a
    /// later transfer of this conversation to an agent.
    pub remember_agent: bool,
    /// Pushed to its mailbox in the same atomic step, as [`Store::record_outbound`] does.
    pub stage: Option<MailboxPush<'a>>,
    /// Time of the change.
    pub now: DateTime<Utc>,
}

/// The conflict code of [`Store::start_conversation`] when the customer has an open
/// conversation already (the agent should reply in it).
pub const CONVERSATION_OPEN: &str = "conversation_open";
/// The conflict code of [`Store::start_conversation`] when the agent holds as many
/// conversations as its capacity allows.
pub const AGENT_AT_CAPACITY: &str = "agent_at_capacity";

/// The `close_reason` of a conversation [`Store::close_idle`] closed.
pub const IDLE_CLOSE_REASON: &str = "idle";

/// The conflict code of [`Store::customer_conversations`] when the cursor (`before`) is not one
/// of the customer's conversations.
pub const UNKNOWN_CURSOR: &str = "unknown_cursor";

/// Which conversations [`Store::customer_conversations`] lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerConversationsQuery {
    /// The statuses listed; every status when empty.
    pub statuses: Vec<ConversationStatus>,
    /// List only the conversations after this one, newest first (a page's cursor).
    pub before: Option<String>,
    /// The most conversations listed.
    pub limit: usize,
}

impl Default for CustomerConversationsQuery {
    fn default() -> Self {
        CustomerConversationsQuery {
            statuses: Vec::new(),
            before: None,
            limit: usize::MAX,
        }
    }
}

/// Every status a conversation has while open (`bot`, `queued`, `assigned`).
pub const OPEN_STATUSES: [ConversationStatus; 3] = [
    ConversationStatus::Bot,
    ConversationStatus::Queued,
    ConversationStatus::Assigned,
];

/// Whether `status` is listed by a filter of `statuses` (every status when empty).
pub fn status_listed(statuses: &[ConversationStatus], status: ConversationStatus) -> bool {
    statuses.is_empty() || statuses.contains(&status)
}

/// The state store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Claims `key` with `value` for `ttl` if nobody holds it (`SET NX EX`): `None` when the
    /// claim is ours, else the value the holder stored. Used for dedupe keys and locks.
    async fn claim_key(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError>;

    /// Sets `key` to `value` for `ttl` (`SET EX`), whoever held it. Used to confirm a claim and
    /// for shared caches (channel access tokens, sync cursors).
    async fn set_key(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError>;

    /// The value of `key`, if set and not expired.
    async fn get_key(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Deletes `key` (gives up a claim, so a retry of the message is not dropped).
    async fn delete_key(&self, key: &str) -> Result<(), StoreError>;

    /// Deletes `key` only while it holds `value`: gives up a claim made with
    /// [`Store::claim_key`] without touching one that another holder took after ours expired.
    /// Returns whether it was deleted.
    async fn release_key(&self, key: &str, value: &str) -> Result<bool, StoreError>;

    /// Finds or creates the one customer these identities belong to, merging profiles that
    /// share a strong key (or any key, when `explicit`).
    async fn resolve_customer(&self, req: ResolveRequest) -> Result<Resolution, StoreError>;

    /// [`Store::resolve_customer`], also noting, in the same atomic step and at `req.now`, each
    /// merge ([`NoteKind::Merged`]) and each conversation a merge closed ([`NoteKind::Closed`]).
    /// For a command's link, whose events no bus redelivery would repeat.
    async fn resolve_customer_noted(&self, req: ResolveRequest) -> Result<Resolution, StoreError>;

    /// A customer by id; a merged-away id answers with the surviving profile.
    async fn customer(&self, id: &str) -> Result<Option<Customer>, StoreError>;

    /// The customer holding an identity key.
    async fn customer_by_identity(&self, key: &IdentityKey)
    -> Result<Option<Customer>, StoreError>;

    /// Appends an inbound envelope (its `customer_id` set) to the customer's open conversation,
    /// opening one as `placement` says if there is none: held by its bot (status `bot`) when it
    /// names one, else queued in its pool. Idempotent by envelope id.
    async fn record_inbound(
        &self,
        envelope: &Envelope,
        placement: &Placement,
        now: DateTime<Utc>,
    ) -> Result<InboundRecord, StoreError>;

    /// Assigns queued conversations of `pool`, highest [`Conversation::priority`] first and,
    /// within a priority, oldest first, each to the longest-idle online agent of the pool with
    /// room who has every skill it asks for ([`Conversation::skills`]) — or to the customer's
    /// last agent when the conversation was opened preferring it
    /// ([`Placement::prefer_last_agent`]) and that agent is one of those — until no queued
    /// conversation can go to an agent. A conversation no agent with room can take holds back
    /// only the others of its priority asking for the same skills, not those asking for other
    /// skills or none.
    async fn assign_queued(
        &self,
        pool: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Assignment>, StoreError>;

    /// [`Store::assign_queued`], also noting each assignment ([`NoteKind::Assigned`] at `now`)
    /// in the same atomic step. For assignments outside routing (a command's), whose
    /// `conversation.assigned` no bus redelivery would repeat.
    async fn assign_queued_noted(
        &self,
        pool: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Assignment>, StoreError>;

    /// The notes ([`Note`]) made at or before `before` and not cleared since, oldest first (then
    /// by key).
    async fn unannounced(&self, before: DateTime<Utc>) -> Result<Vec<Note>, StoreError>;

    /// Clears these notes (matched by [`Note::key`]): their events are published, or kept in the
    /// outbox, or no longer due. Notes that are gone already are ignored.
    async fn clear_notes(&self, notes: &[Note]) -> Result<(), StoreError>;

    /// Everything routing one inbound message (not an identify/link event) does to the store,
    /// as one atomic operation, in order:
    ///
    /// 1. claims `req.claim` with the envelope id for `req.claim_ttl`, as [`Store::claim_key`];
    ///    if another envelope id holds it, answers [`InboundOutcome::Duplicate`] and does
    ///    nothing else (a claim held by this envelope id is a retry, which carries on);
    /// 2. resolves `req.resolve`, as [`Store::resolve_customer_noted`] (a merge's events are not
    ///    announced again by a retry, which finds the profiles merged already);
    /// 3. records the envelope under the resolved customer in `req.pool`, as
    ///    [`Store::record_inbound`];
    /// 4. if the conversation is queued, assigns its pool, as [`Store::assign_queued`].
    ///
    /// Every step uses `req.resolve.now` and is idempotent, so a retry of the whole call (a
    /// redelivery after a lost reply) records nothing twice and reports the `created` flags of
    /// the first call again, for its events to be re-emitted. The error of a step is the error
    /// of the call; a step reports not-found and conflicts before it writes, but the steps
    /// before it stay done. The default runs the steps as four calls
    /// ([`route_inbound_stepwise`]); the embedded and Redis stores do all of it at once.
    async fn route_inbound(&self, req: InboundRouting<'_>) -> Result<InboundOutcome, StoreError> {
        route_inbound_stepwise(self, req).await
    }

    /// Creates or updates an agent, noting it ([`NoteKind::AgentUpdated`] at `now`).
    async fn upsert_agent(
        &self,
        update: AgentUpdate,
        now: DateTime<Utc>,
    ) -> Result<Agent, StoreError>;

    /// Records a heartbeat of the agent's session (the agent WebSocket sends one every `ttl`/3
    /// while the agent has a socket open): the agent becomes *presence-tracked* and present for
    /// `ttl`. `NotFound` for an unknown agent.
    ///
    /// While a tracked agent's presence has lapsed (its gateway stopped heart-beating, e.g. was
    /// killed), it reads as offline and is never assigned: the next [`Store::assign_queued`] that
    /// considers it, or [`Store::upsert_agent`] of it, sets it offline (out of every pool's
    /// online index) and [`Store::transfer`] to it is refused as `agent_unavailable`. The
    /// conversations it holds stay with it, for helpdesks to transfer. If heartbeats resume
    /// after such an expiry, with no explicit status set meanwhile, the agent gets back the
    /// status it had (`online` with `idle_since = now`) and this returns `true`, so the caller
    /// can announce the change and assign; otherwise it returns `false`.
    ///
    /// `ttl == 0` ends the session cleanly (a disconnect): the agent is no longer tracked and
    /// keeps its status (the caller sets it offline first); a session that had already lapsed
    /// is expired first. Agents never heart-beated (managed through `PUT /v1/agents/{id}`) are
    /// unaffected by all of this. Expiry is real time (a Redis `PX` key), like [`Store::claim_key`].
    async fn heartbeat_agent(
        &self,
        id: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Sets offline every presence-tracked agent whose heartbeats stopped longer than its TTL
    /// ago, exactly as assignment does when it meets one, and returns them (for
    /// `agent.updated`): the expiry becomes visible without waiting for an assignment. Also
    /// returns, once, each agent that an assignment set offline that way since the last call,
    /// as it is now, so that every expiry is announced. Notes each agent it returns
    /// ([`NoteKind::AgentUpdated`] at `now`).
    async fn expire_lapsed_agents(&self, now: DateTime<Utc>) -> Result<Vec<Agent>, StoreError>;

    /// An agent by id.
    async fn agent(&self, id: &str) -> Result<Option<Agent>, StoreError>;

    /// Every agent.
    async fn agents(&self) -> Result<Vec<Agent>, StoreError>;

    /// A conversation by id.
    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError>;

    /// The open conversation of a customer (a merged-away id: of the profile it was merged
    /// into), if it has one.
    async fn open_conversation(
        &self,
        customer_id: &str,
    ) -> Result<Option<Conversation>, StoreError>;

    /// The latest `limit` messages of a conversation, oldest first.
    async fn messages(
        &self,
        conversation_id: &str,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError>;

    /// Conversations an agent holds now.
    async fn agent_conversations(&self, agent_id: &str) -> Result<Vec<Conversation>, StoreError>;

    /// Conversation ids waiting in a pool's queue, head first.
    async fn queue(&self, pool: &str) -> Result<Vec<String>, StoreError>;

    /// Sets the pools whose assignments choose the least busy agent (`[[pools]] strategy =
    /// "least_busy"`): among the agents that can take the conversation, the one holding the
    /// fewest conversations, then the longest idle. Other pools choose the longest idle. A
    /// customer's last agent, when preferred and ready, comes first either way. Configuration
    /// of this process, set at start (every process of a deployment is given the same).
    fn set_least_busy_pools(&self, pools: &[String]);

    /// How `pool`'s queue stands: how many conversations wait in it, and since when the one
    /// waiting longest at the front of its queue waits (the earliest `queued_at` among the heads
    /// of the pool's queues, one per priority and set of skills). Cheaper than [`Store::queue`]:
    /// it does not read every waiting conversation. (A declined offer goes back to the front
    /// with its own `queued_at`, so an older conversation may wait behind a head; the heads are
    /// the conversations agents are offered next.)
    async fn queue_stats(&self, pool: &str) -> Result<QueueStats, StoreError>;

    /// The conversations of a customer (a merged-away id: of the profile it was merged into),
    /// with those of every profile merged into it, open and closed, newest first: by
    /// `created_at`, then by id, both descending. Only those whose status is in
    /// `query.statuses` (all when empty), after the conversation `query.before` in that order
    /// (from the start when `None`), at most `query.limit`. A conversation keeps the
    /// `customer_id` it has (that of a profile merged away, if it was closed before the merge).
    ///
    /// `NotFound` for an unknown customer; the conflict [`UNKNOWN_CURSOR`] when `query.before`
    /// is not one of the customer's conversations. Conversations are found through the index
    /// [`Store::erase_customer`] reads, so those opened by a version of Switchyard without that
    /// index are not listed.
    async fn customer_conversations(
        &self,
        customer_id: &str,
        query: &CustomerConversationsQuery,
    ) -> Result<Vec<Conversation>, StoreError>;

    /// The open conversations of `pool` (held by a bot, queued or assigned, to an agent of the
    /// pool or not), oldest first: by `created_at`, then by id. Only those whose status is in
    /// `statuses` (every open one when empty; `closed` matches none), at most `limit`. The Redis
    /// store reads the pool's queue, the pool's bot index and every agent's conversations (there
    /// is no index of a pool's assigned conversations), so it costs the number of agents and of
    /// the conversations they hold, besides the pool's queue and bot-held ones; the embedded
    /// store scans its conversations. The idle-close sweep reads a pool through it.
    async fn pool_conversations(
        &self,
        pool: &str,
        statuses: &[ConversationStatus],
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError>;

    /// Appends an outbound envelope to an open conversation; when `agent_id` is given it must be
    /// the agent holding the conversation. `stage`, when given, is pushed to its mailbox in the
    /// same atomic step (the outbox keeps the reply's bus message there until it is confirmed),
    /// and only if the envelope is recorded.
    ///
    /// Idempotent by envelope id: when an envelope with this id was recorded before (in any
    /// conversation still kept), nothing changes, nothing is checked or staged, and the answer
    /// is the conversation holding it (following merges), marked
    /// [`duplicate`](OutboundRecord::duplicate).
    async fn record_outbound(
        &self,
        conversation_id: &str,
        agent_id: Option<&str>,
        envelope: &Envelope,
        now: DateTime<Utc>,
        stage: Option<MailboxPush<'_>>,
    ) -> Result<OutboundRecord, StoreError>;

    /// Opens a conversation because an agent writes first to a customer, in one atomic step:
    ///
    /// 1. the customer (`start.envelope.customer_id`, a merged-away id following its merges)
    ///    must exist, else `NotFound` `customer`; it must have no open conversation, else the
    ///    conflict [`CONVERSATION_OPEN`] naming that conversation;
    /// 2. the agent must exist (`NotFound` `agent`) and hold fewer conversations than its
    ///    capacity (else the conflict [`AGENT_AT_CAPACITY`]); its status does not matter: an
    ///    agent who is away or offline may still write, and the conversation counts against
    ///    its capacity like any other;
    /// 3. opens conversation `start.envelope.conversation_id`, `assigned` to the agent (who
    ///    takes it as an assignment does: its `idle_since` becomes `now`), in `start.pool`, on
    ///    the envelope's channel, addressed to its sender, with no inbound message
    ///    (`last_inbound_at` and `last_inbound_id` are `None`), as the customer's open
    ///    conversation (their next message is recorded in it);
    /// 4. records the envelope in it as [`Store::record_outbound`] does (with the canonical
    ///    customer id), pushes `start.stage`, and notes the change ([`NoteKind::Started`] at
    ///    `now`).
    ///
    /// Refusals change nothing. Returns the conversation.
    async fn start_conversation(
        &self,
        start: ConversationStart<'_>,
    ) -> Result<Conversation, StoreError>;

    /// Closes a conversation, freeing its agent's capacity or its queue place, and notes it
    /// ([`NoteKind::Closed`] at `now`, with the agent it left).
    async fn close_conversation(
        &self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError>;

    /// Closes conversation `id` with the reason `idle`, in one step with the check that it is
    /// queued or assigned and unchanged since before `unchanged_before` (its `updated_at` is
    /// older); otherwise the conflict [`CONVERSATION_CHANGED`], and nothing changes. A message
    /// recorded meanwhile therefore keeps it open. Notes the close like
    /// [`Store::close_conversation`].
    async fn close_idle(
        &self,
        id: &str,
        unchanged_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError>;

    /// The conversations of `pool` a bot holds whose latest message (either way) is older than
    /// `before`, the longest silent first, at most `limit`: what a bot timeout hands off.
    async fn idle_bot_conversations(
        &self,
        pool: &str,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError>;

    /// Deletes conversations closed before `closed_before`, oldest first, at most `limit` of
    /// them: each with its messages and the record of their ids (a copy of one of them that
    /// arrives later is a new message). A conversation closed by a merge stays, as a small
    /// record: its messages moved into the survivor's conversation, and go when that one goes.
    /// Returns how many closed conversations it went through; fewer than `limit` means none
    /// closed before `closed_before` is left.
    async fn expire_closed(
        &self,
        closed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError>;

    /// Erases a customer (a merged-away id erases the profile it was merged into): the profile
    /// with its identities, tags and attributes, the profiles merged into it, and every
    /// conversation of theirs with its messages. Identity keys then belong to nobody: a message
    /// from one of them starts a new profile. Refused with the conflict
    /// `customer_has_open_conversation` while the customer has an open conversation (close it
    /// first), and nothing changes. Notes the erasure ([`NoteKind::Erased`] at `now`).
    ///
    /// Conversations are found through an index the store writes when it opens one, so those
    /// opened by a version of Switchyard without that index are not found.
    async fn erase_customer(
        &self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Erasure, StoreError>;

    /// Goes through the index of quiet customers up to `quiet_before`, oldest first, at most
    /// `limit` entries, and erases (reason [`ERASED_BY_RETENTION`], as
    /// [`Store::erase_customer`]) each customer who has no open conversation and whose
    /// `last_seen` is before `quiet_before`. A customer with an open conversation is looked at
    /// again after `now`, one seen since after its `last_seen`. Every profile has one entry,
    /// from its creation; profiles created by a version of Switchyard without that index have
    /// none and are never erased this way.
    async fn erase_quiet_customers(
        &self,
        quiet_before: DateTime<Utc>,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<QuietSweep, StoreError>;

    /// Changes the tags and attributes of a customer (a merged-away id changes the profile it
    /// was merged into) as `update` says, in one atomic step, and notes it
    /// ([`NoteKind::CustomerUpdated`] at `now`); returns the profile after the change.
    /// `NotFound` for an unknown customer. Refused, changing nothing, with the conflict
    /// [`TOO_MANY_TAGS`] or [`TOO_MANY_ATTRIBUTES`] when the profile would have more than
    /// [`MAX_CUSTOMER_TAGS`] tags or [`MAX_CUSTOMER_ATTRIBUTES`] attributes (and more than
    /// before: a merge keeps both profiles' tags and attributes, which may exceed the limits, and
    /// such a profile may still lose some). `first_seen` and `last_seen` stay.
    async fn update_customer(
        &self,
        id: &str,
        update: &CustomerUpdate,
        now: DateTime<Utc>,
    ) -> Result<Customer, StoreError>;

    /// Moves a conversation to another pool's queue or straight to an agent with room, and notes
    /// it ([`NoteKind::TransferredToPool`] or [`NoteKind::TransferredToAgent`] at `now`, with the
    /// agent it left). A `handover` becomes the conversation's [`Conversation::handover`] in the
    /// same step; without one, the conversation keeps the one it had.
    async fn transfer(
        &self,
        id: &str,
        target: TransferTarget,
        handover: Option<&Handover>,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError>;

    /// Moves conversation `id` on to `target`'s queue as [`Store::transfer`] does, in one step
    /// with the check that it still waits in `pool`'s queue since before `queued_before` (status
    /// queued, that pool, an older `queued_at`); otherwise the conflict
    /// [`CONVERSATION_CHANGED`], and nothing changes. A queue overflow: of several routers that
    /// see it wait too long, one moves it, and a move back into the same pool (new skills or
    /// priority) restarts its wait, so it is made once. Notes it ([`NoteKind::Overflowed`] at
    /// `now`).
    async fn overflow(
        &self,
        id: &str,
        pool: &str,
        queued_before: DateTime<Utc>,
        target: QueueTarget,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError>;

    /// Accepts the offer of conversation `id` to `agent_id` ([`Placement::offer_secs`]): it stays
    /// with the agent for good (its `offered_at` and `offer_expires_at` are cleared), and notes it
    /// ([`NoteKind::Accepted`] at `now`, naming the agent). Conflict
    /// [`NO_PENDING_OFFER`] when it is not offered to that agent now (never offered, accepted,
    /// expired, taken back, closed).
    async fn accept_offer(
        &self,
        id: &str,
        agent_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Conversation, StoreError>;

    /// Takes conversation `id` back from `agent_id`: it goes to the front of its pool's queue
    /// (keeping its `queued_at`), and the next assignment gives it to another agent when one can
    /// take it. `why` says whether the agent declined its offer, let the offer expire, or left
    /// its customer unanswered too long ([`Withdrawal`]); the last two also set the agent `away`
    /// ([`Withdrawal::sets_agent_away`]), so that it stops being given conversations it does
    /// not answer. Notes it ([`Withdrawal::note_kind`] at `now`, naming the agent) and, when the
    /// agent was set away, the agent's update.
    ///
    /// Conflict [`NO_PENDING_OFFER`] for a decline or an expiry when the conversation is not
    /// offered to that agent now (as for accepting); [`CONVERSATION_CHANGED`] for an unanswered
    /// one when it is no longer assigned to the agent, its offer is still pending, or its customer
    /// no longer waits since before the cutoff (answered, or assigned since). Nothing changes
    /// then.
    async fn take_back(
        &self,
        id: &str,
        agent_id: &str,
        why: Withdrawal,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError>;

    /// Every conversation offered to an agent and not accepted yet, by `offered_at` (then id).
    async fn pending_offers(&self) -> Result<Vec<Conversation>, StoreError>;

    /// Appends `body` under `id` to the end of mailbox `key`, unless an item with this id is in
    /// the mailbox already (a retry of the same push changes nothing); then drops the oldest items
    /// beyond `max_len` (at least 1) and makes the whole mailbox expire `ttl` (at most a year,
    /// real time, like [`Store::claim_key`]) after this push. Returns whether the item was added.
    ///
    /// Items stay until acknowledged ([`Store::mailbox_ack`]), pushed out by newer ones, or
    /// expired with their mailbox. An id acknowledged before can be pushed again. Mailboxes are
    /// a namespace of their own: `key` never collides with [`Store::set_key`] keys.
    async fn mailbox_push(
        &self,
        key: &str,
        id: &str,
        body: &str,
        max_len: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// The items of mailbox `key`, oldest first; empty when it has none or has expired.
    async fn mailbox_read(&self, key: &str) -> Result<Vec<MailboxItem>, StoreError> {
        Ok(self.mailbox_head(key, usize::MAX).await?.items)
    }

    /// The oldest `limit` items of mailbox `key` (as [`Store::mailbox_read`]), and how many it
    /// holds in all: reading the head of a long mailbox costs the head, not the whole mailbox.
    async fn mailbox_head(&self, key: &str, limit: usize) -> Result<MailboxHead, StoreError>;

    /// Removes the items with these ids from mailbox `key` (they were delivered); ids that are
    /// not in it are ignored. Does not change when the mailbox expires.
    async fn mailbox_ack(&self, key: &str, ids: &[String]) -> Result<(), StoreError>;

    /// Whether the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
}
