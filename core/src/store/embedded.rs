//! In-process store: all state behind one mutex, so every operation is atomic exactly as a Redis
//! Lua script is. Never held across an await.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    AGENT_AT_CAPACITY, AgentUpdate, Assignment, CONVERSATION_CHANGED, CONVERSATION_OPEN,
    ConversationStart, CustomerConversationsQuery, CustomerUpdate, ERASED_BY_RETENTION, Erasure,
    IDLE_CLOSE_REASON, InboundOutcome, InboundRecord, InboundRouting, MailboxHead, MailboxItem,
    MailboxPush, Merge, MergeClosed, NO_PENDING_OFFER, Note, NoteKind, OutboundRecord, Placement,
    QueueStats, QueueTarget, QuietSweep, Release, Resolution, ResolveRequest, SenderResolution,
    Store, StoreError, TransferTarget, UNKNOWN_CURSOR, Withdrawal, decode_others_assigned,
    encode_others_assigned, offer_deadline, others_assigned_key, replay_others_assigned,
    status_listed,
};
use crate::envelope::{Envelope, new_id};
use crate::handover::Handover;
use crate::identity::{IdentityKey, IdentityStrength};
use crate::model::{
    Agent, AgentStatus, AssignedBy, Conversation, ConversationStatus, Customer, IdentityRecord,
    Skills,
};

/// Messages kept per conversation in memory; older ones are dropped from the embedded store.
const MAX_MESSAGES_PER_CONVERSATION: usize = 10_000;
/// Longest presence a heartbeat arms.
const MAX_PRESENCE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest life of a mailbox after a push.
const MAX_MAILBOX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Sweep expired mailboxes every this many pushes.
const MAILBOX_SWEEP_EVERY: u64 = 1024;

/// The embedded (in-process) store.
///
/// Two locks: the expiring keys ([`Store::claim_key`] and its siblings) and everything else.
/// An operation that needs both takes the state first, then the keys.
#[derive(Default)]
pub struct EmbeddedStore {
    state: Mutex<State>,
    keys: Mutex<ExpiringKeys>,
}

/// A hash map with a fast, randomly seeded hasher (foldhash), for the store's tables: SipHash
/// took about 6 % of the in-process pipeline's CPU, much of it rehashing tables as they grew.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A hash set with [`FastMap`]'s hasher.
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

#[derive(Default)]
struct State {
    customers: Table<Customer>,
    /// Merged-away customer id -> the profile it was merged into.
    redirects: FastMap<String, String>,
    identity_owner: FastMap<IdentityKey, String>,
    conversations: Table<Conversation>,
    open_by_customer: FastMap<String, String>,
    messages: FastMap<String, VecDeque<Envelope>>,
    message_ids: FastMap<String, String>,
    /// Each pool's queued conversations, per priority and skill requirement.
    queues: queues::Queues,
    /// Customer id -> the agent most recently handed one of their conversations opened
    /// preferring the last agent.
    last_agent: FastMap<String, String>,
    /// Open conversations opened preferring the last agent: the agent they are handed to
    /// becomes their customer's last agent.
    remembers_agent: FastSet<String>,
    /// Queued or bot-held conversation -> the agent it prefers
    /// ([`Placement::prefer_last_agent`]), until it is assigned or closed.
    preferred_agent: FastMap<String, String>,
    /// Open conversation -> seconds its agents have to accept it ([`Placement::offer_secs`];
    /// absent: 0).
    offer_secs: FastMap<String, u64>,
    /// Queued conversation -> the agent whose offer of it was taken back, passed over by its
    /// next assignment while another agent can take it.
    declined_by: FastMap<String, String>,
    /// Pending offers by `offered_at`.
    offers: BTreeSet<(DateTime<Utc>, String)>,
    /// Pools whose assignments choose the least busy agent ([`Store::set_least_busy_pools`]).
    least_busy: FastSet<String>,
    /// Agents, with the per-pool index of those ready for a conversation.
    agents: agents::Agents,
    /// Customer id -> the `source` of the resolution that created it.
    customer_created_by: FastMap<String, String>,
    /// Conversation id -> the envelope that opened it.
    conversation_opened_by: FastMap<String, String>,
    /// Agent id -> its heart-beated session presence (absent: not presence-tracked).
    presence: FastMap<String, Presence>,
    /// Agents an assignment set offline (lapsed presence) that no sweep has returned yet.
    expired_unannounced: BTreeSet<String>,
    /// Changes whose events their command may not have published ([`Note`]), by key.
    /// Ordered by key, which orders them by time, as the Redis store lists them.
    notes: BTreeMap<String, Note>,
    /// Mailboxes by key ([`Store::mailbox_push`]).
    mailboxes: FastMap<String, Mailbox>,
    /// Closed conversations by close time, for [`Store::expire_closed`].
    closed: BTreeSet<(DateTime<Utc>, String)>,
    /// One entry per profile (created with it, moved on by each sweep): when it was last known
    /// quiet, for [`Store::erase_quiet_customers`].
    quiet: BTreeSet<(DateTime<Utc>, String)>,
    mailbox_pushes: u64,
}

/// Undelivered items, oldest first, expiring together.
#[derive(Debug)]
struct Mailbox {
    items: VecDeque<MailboxItem>,
    expires: Instant,
}

/// The presence of an agent that heart-beats ([`Store::heartbeat_agent`]).
#[derive(Debug, Clone, Copy)]
enum Presence {
    /// Tracked: present until this instant.
    Live(Instant),
    /// The session lapsed and set the agent offline; a resumed heartbeat restores this status.
    Lapsed(AgentStatus),
}

mod agents;
mod keys;
mod queues;
mod table;

use keys::ExpiringKeys;
use table::Table;

use queues::QueueKey;

/// What resolving a sender did ([`State::resolve`]), naming the surviving profile by id.
struct Resolved {
    customer_id: String,
    created: bool,
    merges: Vec<Merge>,
    linked: Vec<IdentityKey>,
    closed: Vec<MergeClosed>,
}

impl EmbeddedStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The expiring keys; while holding [`EmbeddedStore::lock`]'s guard, take this one after it.
    fn keys(&self) -> MutexGuard<'_, ExpiringKeys> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The conflict [`UNKNOWN_CURSOR`] of a `before` that is not one of `customer`'s conversations.
fn unknown_cursor(cursor: &str, customer: &str) -> StoreError {
    StoreError::Conflict {
        code: UNKNOWN_CURSOR,
        message: format!("`{cursor}` is not a conversation of customer `{customer}`"),
    }
}

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

impl State {
    /// [`Store::mailbox_push`]: whether the item was added.
    fn mailbox_push(&mut self, push: MailboxPush<'_>) -> bool {
        let now = Instant::now();
        self.mailbox_pushes += 1;
        if self.mailbox_pushes.is_multiple_of(MAILBOX_SWEEP_EVERY) {
            self.mailboxes.retain(|_, m| m.expires > now);
        }
        let expires = now + push.ttl.min(MAX_MAILBOX_TTL);
        let mailbox = self
            .mailboxes
            .entry(push.key.to_owned())
            .or_insert(Mailbox {
                items: VecDeque::new(),
                expires,
            });
        if mailbox.expires <= now {
            mailbox.items.clear();
        }
        if mailbox.items.iter().any(|item| item.id == push.id) {
            return false;
        }
        mailbox.items.push_back(MailboxItem {
            id: push.id.to_owned(),
            body: push.body.to_owned(),
        });
        while mailbox.items.len() > push.max_len.max(1) {
            mailbox.items.pop_front();
        }
        mailbox.expires = expires;
        true
    }

    fn canonical_customer_id(&self, id: &str) -> String {
        let mut id = id.to_owned();
        // Redirect chains are short (merges re-point older redirects), but bound the walk anyway.
        for _ in 0..64 {
            match self.redirects.get(&id) {
                Some(next) => id = next.clone(),
                None => break,
            }
        }
        id
    }

    fn owner_of(&self, key: &IdentityKey) -> Option<String> {
        self.identity_owner
            .get(key)
            .map(|id| self.canonical_customer_id(id))
    }

    fn conversation_mut(&mut self, id: &str) -> Result<&mut Conversation, StoreError> {
        self.conversations
            .get_mut(id)
            .ok_or_else(|| not_found("conversation", id))
    }

    /// Keeps a [`Note`] until [`Store::clear_notes`] clears it.
    fn note(&mut self, note: Note) {
        self.notes.insert(note.key(), note);
    }

    /// [`Store::transfer`], noted as `noted` when given (else as a transfer to the target).
    fn transfer(
        &mut self,
        id: &str,
        target: TransferTarget,
        handover: Option<&Handover>,
        noted: Option<NoteKind>,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError> {
        let (status, released_bot) = self
            .conversations
            .get(id)
            .map(|c| (c.status, c.bot_holder().map(str::to_owned)))
            .ok_or_else(|| not_found("conversation", id))?;
        if status == ConversationStatus::Closed {
            return Err(StoreError::Conflict {
                code: "conversation_closed",
                message: format!("conversation `{id}` is closed"),
            });
        }
        if let TransferTarget::Bot { bot, .. } = &target
            && released_bot.as_ref() == Some(bot)
        {
            return Err(StoreError::Conflict {
                code: "already_assigned",
                message: format!("conversation `{id}` is already with `{bot}`"),
            });
        }
        if let TransferTarget::Agent(agent_id) = &target {
            let agent = self
                .agents
                .get(agent_id)
                .ok_or_else(|| not_found("agent", agent_id))?;
            if agent.conversations.iter().any(|c| c == id) {
                return Err(StoreError::Conflict {
                    code: "already_assigned",
                    message: format!("conversation `{id}` is already with agent `{agent_id}`"),
                });
            }
            if agent.status == AgentStatus::Offline
                || self.presence_lapsed(agent_id)
                || agent.conversations.len() as u64 >= u64::from(agent.capacity)
            {
                return Err(StoreError::Conflict {
                    code: "agent_unavailable",
                    message: format!("agent `{agent_id}` is offline or at capacity"),
                });
            }
        }
        let released_agent = self.detach(id);
        let kind = noted.unwrap_or(match target {
            TransferTarget::Pool(_) => NoteKind::TransferredToPool,
            TransferTarget::Agent(_) | TransferTarget::Bot { .. } => NoteKind::TransferredToAgent,
        });
        if let Some(handover) = handover {
            self.conversation_mut(id)?.handover = Some(Box::new(handover.clone()));
        }
        match target {
            TransferTarget::Pool(QueueTarget {
                pool,
                skills,
                priority,
                offer_secs,
            }) => {
                if offer_secs > 0 {
                    self.offer_secs.insert(id.to_owned(), offer_secs);
                } else {
                    self.offer_secs.remove(id);
                }
                let c = self.conversation_mut(id)?;
                if let Some(skills) = skills {
                    c.skills = skills;
                }
                if let Some(priority) = priority {
                    c.priority = priority;
                }
                c.status = ConversationStatus::Queued;
                c.pool = pool.clone();
                c.agent_id = None;
                c.queued_at = Some(now);
                c.updated_at = now;
                let key = QueueKey::of(c);
                self.queues.push(&pool, &key, id.to_owned());
            }
            TransferTarget::Agent(agent_id) => {
                self.hand_to_agent(id, &agent_id, now);
                let c = self.conversation_mut(id)?;
                c.status = ConversationStatus::Assigned;
                c.agent_id = Some(agent_id);
                c.assigned_at = Some(now);
                c.assigned_by = Some(AssignedBy::Transfer);
                c.updated_at = now;
            }
            TransferTarget::Bot { pool, bot } => {
                self.offer_secs.remove(id);
                let c = self.conversation_mut(id)?;
                c.status = ConversationStatus::Bot;
                c.pool = pool;
                c.agent_id = Some(bot);
                c.updated_at = now;
            }
        }
        let release = Release {
            conversation: self.conversation_mut(id)?.clone(),
            released_agent,
            released_bot,
        };
        self.note_release(kind, id, &release, now);
        Ok(release)
    }

    /// Takes a conversation away from its agent or its queue; returns the agent it left.
    fn detach(&mut self, conversation_id: &str) -> Option<Agent> {
        let (status, agent_id, pool, key) = {
            let c = self.conversations.get(conversation_id)?;
            (
                c.status,
                c.agent_id.clone(),
                c.pool.clone(),
                QueueKey::of(c),
            )
        };
        match status {
            ConversationStatus::Assigned => {
                self.clear_offer(conversation_id);
                self.agents.update(agent_id.as_deref()?, |agent| {
                    agent.conversations.retain(|c| c != conversation_id);
                    agent.clone()
                })
            }
            ConversationStatus::Queued => {
                self.queues.remove(&pool, &key, conversation_id);
                None
            }
            ConversationStatus::Bot | ConversationStatus::Closed => None,
        }
    }

    /// Clears the pending offer of conversation `id`, if any.
    fn clear_offer(&mut self, id: &str) {
        if let Some(c) = self.conversations.get_mut(id)
            && let Some(offered_at) = c.offered_at.take()
        {
            c.offer_expires_at = None;
            self.offers.remove(&(offered_at, id.to_owned()));
        }
    }

    /// The pending offer of conversation `id` to `agent_id`, checked: the conversation.
    fn offered_to(&mut self, id: &str, agent_id: &str) -> Result<&mut Conversation, StoreError> {
        let c = self.conversation_mut(id)?;
        if c.status != ConversationStatus::Assigned
            || c.agent_id.as_deref() != Some(agent_id)
            || c.offered_at.is_none()
        {
            return Err(StoreError::Conflict {
                code: NO_PENDING_OFFER,
                message: format!("conversation `{id}` is not offered to agent `{agent_id}` now"),
            });
        }
        Ok(c)
    }

    fn close(&mut self, id: &str, reason: &str, now: DateTime<Utc>) -> Result<Release, StoreError> {
        let held = self
            .conversations
            .get(id)
            .ok_or_else(|| not_found("conversation", id))?;
        if held.status == ConversationStatus::Closed {
            return Err(StoreError::Conflict {
                code: "conversation_closed",
                message: format!("conversation `{id}` is already closed"),
            });
        }
        let released_bot = held.bot_holder().map(str::to_owned);
        let released_agent = self.detach(id);
        self.preferred_agent.remove(id);
        self.offer_secs.remove(id);
        self.declined_by.remove(id);
        self.remembers_agent.remove(id);
        let c = self.conversation_mut(id)?;
        c.status = ConversationStatus::Closed;
        c.agent_id = None;
        c.closed_at = Some(now);
        c.updated_at = now;
        c.close_reason = Some(reason.to_owned());
        let conversation = c.clone();
        self.closed.insert((now, conversation.id.clone()));
        if self.open_by_customer.get(&conversation.customer_id) == Some(&conversation.id) {
            self.open_by_customer.remove(&conversation.customer_id);
        }
        Ok(Release {
            conversation,
            released_agent,
            released_bot,
        })
    }

    /// Notes the close or transfer `release` made, with the agent (or bot) it left.
    fn note_release(&mut self, kind: NoteKind, id: &str, release: &Release, now: DateTime<Utc>) {
        let mut note = Note::new(kind, id, now);
        note.from_agent = release.released_holder().map(str::to_owned);
        self.note(note);
    }

    /// Merges profile `from` into `into`, moving identities, tags, attributes and the open
    /// conversation; returns a conversation closed by the merge, if any.
    fn merge_customers(
        &mut self,
        from: &str,
        into: &str,
        now: DateTime<Utc>,
    ) -> Option<MergeClosed> {
        let loser = self.customers.remove(from)?;
        for record in &loser.identities {
            self.identity_owner
                .insert(record.key.clone(), into.to_owned());
        }
        for target in self.redirects.values_mut() {
            if target == from {
                *target = into.to_owned();
            }
        }
        self.redirects.insert(from.to_owned(), into.to_owned());
        if let Some(winner) = self.customers.get_mut(into) {
            for record in loser.identities {
                if !winner.identities.iter().any(|r| r.key == record.key) {
                    winner.identities.push(record);
                }
            }
            winner.merged_from.push(loser.id.clone());
            winner.merged_from.extend(loser.merged_from);
            for tag in loser.tags {
                if !winner.tags.contains(&tag) {
                    winner.tags.push(tag);
                }
            }
            for (k, v) in loser.attributes {
                winner.attributes.entry(k).or_insert(v);
            }
            if winner.display_name.is_none() {
                winner.display_name = loser.display_name;
            }
            winner.first_seen = winner.first_seen.min(loser.first_seen);
            winner.last_seen = winner.last_seen.max(loser.last_seen).max(now);
        }
        let loser_conv = self.open_by_customer.remove(from)?;
        match self.open_by_customer.get(into).cloned() {
            None => {
                self.open_by_customer
                    .insert(into.to_owned(), loser_conv.clone());
                if let Some(c) = self.conversations.get_mut(&loser_conv) {
                    c.customer_id = into.to_owned();
                    c.updated_at = now;
                }
                for m in self.messages.get_mut(&loser_conv).into_iter().flatten() {
                    m.customer_id = Some(into.to_owned());
                }
                None
            }
            Some(winner_conv) => {
                let moved = self.messages.remove(&loser_conv).unwrap_or_default();
                let count = moved.len() as u64;
                for mut m in moved {
                    m.customer_id = Some(into.to_owned());
                    m.conversation_id = Some(winner_conv.clone());
                    self.message_ids.insert(m.id.clone(), winner_conv.clone());
                    self.messages
                        .entry(winner_conv.clone())
                        .or_default()
                        .push_back(m);
                }
                if let Some(c) = self.conversations.get_mut(&winner_conv) {
                    c.message_count += count;
                }
                // The loser's conversation is no longer open for anyone; close it.
                let release = self.close(&loser_conv, "merged", now).ok()?;
                let released_holder = release.released_holder().map(str::to_owned);
                let mut conversation = release.conversation;
                if let Some(c) = self.conversations.get_mut(&loser_conv) {
                    c.customer_id = into.to_owned();
                    conversation = c.clone();
                }
                Some(MergeClosed {
                    conversation,
                    released_holder,
                })
            }
        }
    }

    /// Whether the agent is presence-tracked and its presence has lapsed.
    fn presence_lapsed(&self, id: &str) -> bool {
        matches!(self.presence.get(id), Some(Presence::Live(until)) if *until <= Instant::now())
    }

    /// The agent as reads report it: offline while its tracked presence has lapsed.
    fn agent_view(&self, agent: &Agent) -> Agent {
        let mut agent = agent.clone();
        if self.presence_lapsed(&agent.id) {
            agent.status = AgentStatus::Offline;
        }
        agent
    }

    /// Sets an agent whose tracked presence has lapsed offline, remembering its status for a
    /// resumed heartbeat; does nothing to any other agent.
    fn expire_presence(&mut self, id: &str, now: DateTime<Utc>) {
        if !self.presence_lapsed(id) {
            return;
        }
        match self.agents.get(id).map(|a| a.status) {
            None | Some(AgentStatus::Offline) => {
                self.presence.remove(id);
            }
            Some(status) => {
                self.presence
                    .insert(id.to_owned(), Presence::Lapsed(status));
            }
        }
        self.agents.update(id, |agent| {
            agent.status = AgentStatus::Offline;
            agent.updated_at = now;
        });
    }

    /// The agent to take the next conversation of `pool` asking `skills`, preferring
    /// `preferred` and passing over `avoid`: `preferred` when it is in the pool's ready index,
    /// present and has the skills (and is not `avoid`); else the first of the index (longest
    /// idle, then lowest id) with every skill asked other than `avoid` (in a least-busy pool, the
    /// one of them holding the fewest conversations, the first in index order among equals);
    /// else `avoid` if it is one. A candidate whose tracked presence lapsed is set offline on the
    /// way (which takes it out of the index) and skipped, never chosen.
    fn next_ready_agent(
        &mut self,
        pool: &str,
        skills: &Skills,
        preferred: Option<&str>,
        avoid: Option<&str>,
        now: DateTime<Utc>,
    ) -> Option<(String, AssignedBy)> {
        if let Some(id) = preferred.filter(|id| self.agents.is_ready(pool, id)) {
            if self.presence_lapsed(id) {
                self.expire_lapsed(id, now);
            } else if avoid != Some(id)
                && self
                    .agents
                    .get(id)
                    .is_some_and(|agent| skills.held_by(&agent.skills))
            {
                return Some((id.to_owned(), AssignedBy::LastAgent));
            }
        }
        let least_busy = self.least_busy.contains(pool);
        let rule = if least_busy {
            AssignedBy::LeastBusy
        } else {
            AssignedBy::LongestIdle
        };
        loop {
            let mut lapsed = None;
            let mut avoided = None;
            // The chosen agent and its load.
            let mut chosen: Option<(String, usize)> = None;
            for (_, id) in self.agents.ready(pool) {
                if self.presence_lapsed(id) {
                    lapsed = Some(id.clone());
                    break;
                }
                let Some(agent) = self
                    .agents
                    .get(id)
                    .filter(|agent| skills.held_by(&agent.skills))
                else {
                    continue;
                };
                if avoid == Some(id.as_str()) {
                    avoided = Some(id.clone());
                    continue;
                }
                let load = agent.conversations.len();
                if chosen.as_ref().is_none_or(|(_, least)| load < *least) {
                    chosen = Some((id.clone(), load));
                }
                if !least_busy || load == 0 {
                    break;
                }
            }
            let chosen = chosen.map(|(id, _)| (id, rule));
            match lapsed {
                Some(id) => self.expire_lapsed(&id, now),
                None => return chosen.or(avoided.map(|id| (id, AssignedBy::NoOtherAgent))),
            }
        }
    }

    /// Sets agent `id`, met while choosing an agent, offline because its presence lapsed; the
    /// next sweep (`expire_lapsed_agents`) announces it.
    fn expire_lapsed(&mut self, id: &str, now: DateTime<Utc>) {
        self.expire_presence(id, now);
        self.expired_unannounced.insert(id.to_owned());
    }

    /// Whether conversation `id` is queued in `pool`'s queue `key` (its entry there is not
    /// stale).
    fn queued_in(&self, id: &str, pool: &str, key: &QueueKey) -> bool {
        self.conversations.get(id).is_some_and(|c| {
            c.status == ConversationStatus::Queued && c.pool == pool && QueueKey::of(c) == *key
        })
    }

    /// Where queued conversation `id` stands among its pool's: higher priority first, then
    /// older (ties: lower id first).
    fn queue_rank(&self, id: &str) -> (Reverse<u8>, Option<DateTime<Utc>>) {
        let c = self.conversations.get(id);
        (
            Reverse(c.map_or(0, |c| c.priority)),
            c.and_then(|c| c.queued_at),
        )
    }

    /// The first head by [`State::queue_rank`] (then id) of `pool`'s queues that are not
    /// `blocked`: its queue and id. Stale entries met on the way are dropped.
    fn next_head(&mut self, pool: &str, blocked: &[QueueKey]) -> Option<(QueueKey, String)> {
        let mut first: Option<(_, String, QueueKey)> = None;
        for key in self.queues.keys(pool) {
            if blocked.contains(&key) {
                continue;
            }
            let head = loop {
                let Some(head) = self.queues.front(pool, &key) else {
                    break None;
                };
                if self.queued_in(head, pool, &key) {
                    break Some(head.clone());
                }
                // Stale entry (closed or moved meanwhile).
                self.queues.pop_front(pool, &key);
            };
            let Some(head) = head else {
                continue;
            };
            let order = self.queue_rank(&head);
            if first
                .as_ref()
                .is_none_or(|(best, id, _)| (order, &head) < (*best, id))
            {
                first = Some((order, head, key));
            }
        }
        first.map(|(_, id, key)| (key, id))
    }

    /// `pool`'s queued conversations in the order they are offered to agents that could take
    /// any of them: the queues merged by their heads' [`State::queue_rank`] (then id), each in
    /// its order.
    fn queued_in_order(&self, pool: &str) -> Vec<String> {
        let mut queues: Vec<_> = self
            .queues
            .of_pool(pool)
            .map(|(key, queue)| {
                queue
                    .iter()
                    .filter(|id| self.queued_in(id, pool, key))
                    .map(|id| (self.queue_rank(id), id))
                    .peekable()
            })
            .collect();
        let mut out = Vec::new();
        loop {
            let next = queues
                .iter_mut()
                .enumerate()
                .filter_map(|(i, q)| q.peek().map(|head| (*head, i)))
                .min();
            let Some((_, i)) = next else {
                return out;
            };
            if let Some((_, id)) = queues[i].next() {
                out.push(id.clone());
            }
        }
    }

    /// Adds conversation `id` to agent `agent_id`'s load (its idle time restarts), and makes the
    /// agent its customer's last agent; the conversation's own preference is used up.
    fn hand_to_agent(&mut self, id: &str, agent_id: &str, now: DateTime<Utc>) {
        self.agents.update(agent_id, |agent| {
            agent.conversations.push(id.to_owned());
            agent.idle_since = now;
            agent.updated_at = now;
        });
        if self.remembers_agent.contains(id)
            && let Some(customer) = self.conversations.get(id).map(|c| c.customer_id.clone())
        {
            let customer = self.canonical_customer_id(&customer);
            self.last_agent.insert(customer, agent_id.to_owned());
        }
        if !self.preferred_agent.is_empty() {
            self.preferred_agent.remove(id);
        }
        if !self.declined_by.is_empty() {
            self.declined_by.remove(id);
        }
    }

    /// Hands the queued conversation `id` (the head of its queue) to agent `agent_id`, as an
    /// offer when its pool asks agents to accept ([`Placement::offer_secs`]).
    fn assign(
        &mut self,
        id: &str,
        (agent_id, by): (String, AssignedBy),
        now: DateTime<Utc>,
    ) -> Option<Assignment> {
        let offer_secs = self.offer_secs.get(id).copied().unwrap_or(0);
        let c = self.conversations.get_mut(id)?;
        c.status = ConversationStatus::Assigned;
        c.agent_id = Some(agent_id.clone());
        c.assigned_at = Some(now);
        c.assigned_by = Some(by);
        c.updated_at = now;
        if offer_secs > 0 {
            c.offered_at = Some(now);
            c.offer_expires_at = offer_deadline(now, offer_secs);
            self.offers.insert((now, id.to_owned()));
        }
        let conversation = c.clone();
        self.hand_to_agent(id, &agent_id, now);
        Some(Assignment {
            conversation,
            agent_id,
            replayed: false,
        })
    }

    /// [`Store::resolve_customer`]: the resolution with the whole profile.
    fn resolve_customer(&mut self, req: &ResolveRequest) -> Result<Resolution, StoreError> {
        let r = self.resolve(req)?;
        Ok(Resolution {
            customer: self.profile(&r.customer_id)?,
            created: r.created,
            merges: r.merges,
            linked: r.linked,
            closed: r.closed,
        })
    }

    /// The resolution [`Store::route_inbound`] answers: the profile only when it was created or
    /// others were merged into it (as [`SenderResolution`] says), so a known customer's is not
    /// copied.
    fn resolve_sender(&mut self, req: &ResolveRequest) -> Result<SenderResolution, StoreError> {
        let r = self.resolve(req)?;
        let announced = SenderResolution::carries_profile(r.created, &r.merges);
        Ok(SenderResolution {
            profile: announced
                .then(|| self.profile(&r.customer_id))
                .transpose()?,
            customer_id: r.customer_id,
            created: r.created,
            merges: r.merges,
            closed: r.closed,
        })
    }

    /// The open conversation of a customer, if any.
    fn open_conversation(&self, customer_id: &str) -> Option<&Conversation> {
        self.open_by_customer
            .get(customer_id)
            .and_then(|id| self.conversations.get(id))
            .filter(|c| c.status != ConversationStatus::Closed)
    }

    /// [`Store::erase_customer`] of the surviving profile `id`, which has no open conversation.
    fn erase(&mut self, id: &str, reason: &str, now: DateTime<Utc>) -> Option<Erasure> {
        let customer = self.customers.remove(id)?;
        let mut owners: Vec<&str> = vec![id];
        owners.extend(customer.merged_from.iter().map(String::as_str));
        let mut conversations: Vec<String> = self
            .conversations
            .values()
            .filter(|c| owners.contains(&c.customer_id.as_str()))
            .map(|c| c.id.clone())
            .collect();
        conversations.sort();
        for conv in &conversations {
            if let Some(c) = self.conversations.remove(conv)
                && let Some(closed_at) = c.closed_at
            {
                self.closed.remove(&(closed_at, c.id));
            }
            self.conversation_opened_by.remove(conv);
            for envelope in self.messages.remove(conv).unwrap_or_default() {
                self.message_ids.remove(&envelope.id);
            }
        }
        for owner in &owners {
            self.redirects.remove(*owner);
            self.customer_created_by.remove(*owner);
            self.open_by_customer.remove(*owner);
            self.last_agent.remove(*owner);
        }
        self.identity_owner
            .retain(|_, owner| !owners.contains(&owner.as_str()));
        let erasure = Erasure {
            customer_id: id.to_owned(),
            tenant: customer.tenant,
            reason: reason.to_owned(),
            merged_from: customer.merged_from,
            conversations,
        };
        self.note(Note::of_erasure(&erasure, now));
        Some(erasure)
    }

    fn profile(&self, id: &str) -> Result<Customer, StoreError> {
        self.customers
            .get(id)
            .cloned()
            .ok_or_else(|| not_found("customer", id))
    }

    /// Resolves `req`'s identities into one profile (merging, linking, creating as the rules
    /// say) and reports what it did, naming the profile by id.
    fn resolve(&mut self, req: &ResolveRequest) -> Result<Resolved, StoreError> {
        let now = req.now;
        // Owners that this request may merge: strong keys always, weak keys only when explicit.
        let mut merging: Vec<(String, IdentityKey)> = Vec::new();
        let mut weak_owner: Option<String> = None;
        for (key, strength) in &req.identities {
            let Some(owner) = self.owner_of(key) else {
                continue;
            };
            if *strength == IdentityStrength::Strong || req.explicit {
                merging.push((owner, key.clone()));
            } else if weak_owner.is_none() {
                weak_owner = Some(owner);
            }
        }
        let mut owners: Vec<String> = Vec::new();
        for (owner, _) in &merging {
            if !owners.contains(owner) {
                owners.push(owner.clone());
            }
        }
        // The oldest profile survives a merge.
        owners.sort_by(|a, b| {
            let fa = self.customers.get(a).map(|c| c.first_seen);
            let fb = self.customers.get(b).map(|c| c.first_seen);
            fa.cmp(&fb).then(a.cmp(b))
        });
        let (winner, created) = match owners.first().cloned().or(weak_owner) {
            Some(id) => {
                // A retry of the request that created the profile reports it created again.
                let retry = req
                    .source
                    .as_ref()
                    .is_some_and(|src| self.customer_created_by.get(&id) == Some(src));
                (id, retry)
            }
            None => {
                let id = new_id();
                self.customers.insert(
                    id.clone(),
                    Customer {
                        id: id.clone(),
                        tenant: req.tenant.clone(),
                        display_name: None,
                        identities: Vec::new(),
                        merged_from: Vec::new(),
                        tags: Vec::new(),
                        attributes: serde_json::Map::new(),
                        first_seen: now,
                        last_seen: now,
                    },
                );
                if let Some(source) = &req.source {
                    self.customer_created_by.insert(id.clone(), source.clone());
                }
                self.quiet.insert((now, id.clone()));
                (id, true)
            }
        };
        let mut merges = Vec::new();
        let mut closed = Vec::new();
        for loser in owners.iter().skip(1) {
            let via: BTreeSet<IdentityKey> = merging
                .iter()
                .filter(|(o, _)| o == loser)
                .map(|(_, k)| k.clone())
                .collect();
            if let Some(c) = self.merge_customers(loser, &winner, now) {
                closed.push(c);
            }
            merges.push(Merge {
                from: loser.clone(),
                into: winner.clone(),
                via: via.into_iter().collect(),
            });
        }
        let mut linked = Vec::new();
        for (key, strength) in &req.identities {
            let owner = self.owner_of(key);
            if owner.is_none() || (req.explicit && owner.as_deref() != Some(&winner)) {
                self.identity_owner.insert(key.clone(), winner.clone());
                linked.push(key.clone());
            } else if owner.as_deref() != Some(winner.as_str()) {
                // A weak key of another profile, not merged implicitly: it stays with its owner
                // and must not be listed on this profile too.
                continue;
            }
            if let Some(c) = self.customers.get_mut(&winner) {
                match c.identities.iter_mut().find(|r| &r.key == key) {
                    Some(r) if req.explicit => r.strength = *strength,
                    Some(_) => {}
                    None => c.identities.push(IdentityRecord {
                        key: key.clone(),
                        strength: *strength,
                        linked_at: now,
                    }),
                }
            }
        }
        let customer = self
            .customers
            .get_mut(&winner)
            .ok_or_else(|| not_found("customer", &winner))?;
        customer.last_seen = customer.last_seen.max(now);
        if customer.display_name.is_none() {
            customer.display_name = req.display_name.clone();
        }
        Ok(Resolved {
            customer_id: winner,
            created,
            merges,
            linked,
            closed,
        })
    }

    /// Stores a copy of `envelope` as the newest message of conversation `conv_id` of customer
    /// `customer_id` (both set on the copy), keeping the latest
    /// [`MAX_MESSAGES_PER_CONVERSATION`], as the Redis store's `trim_messages` does.
    fn append_message(&mut self, conv_id: &str, customer_id: &str, envelope: &Envelope) {
        let mut stored = envelope.clone();
        stored.customer_id = Some(customer_id.to_owned());
        stored.conversation_id = Some(conv_id.to_owned());
        self.message_ids
            .insert(stored.id.clone(), conv_id.to_owned());
        // Most conversations hold a message or two: start with room for one instead of the
        // four slots (≈ 2 KiB) a default `VecDeque` takes on its first push.
        let messages = self
            .messages
            .entry(conv_id.to_owned())
            .or_insert_with(|| VecDeque::with_capacity(1));
        messages.push_back(stored);
        if messages.len() > MAX_MESSAGES_PER_CONVERSATION {
            messages.pop_front();
        }
    }

    /// [`Store::record_inbound`] of `envelope` for `customer_id` (the envelope's own
    /// `customer_id` is not read); a conversation it opens goes where `placement` says.
    fn record_inbound(
        &mut self,
        envelope: &Envelope,
        customer_id: Option<&str>,
        placement: &Placement,
        now: DateTime<Utc>,
    ) -> Result<InboundRecord, StoreError> {
        if let Some(conv_id) = self.message_ids.get(&envelope.id).cloned() {
            let conversation = self
                .conversations
                .get(&conv_id)
                .cloned()
                .ok_or_else(|| not_found("conversation", &conv_id))?;
            let created = self.conversation_opened_by.get(&conv_id) == Some(&envelope.id);
            return Ok(InboundRecord {
                conversation,
                created,
                duplicate: true,
            });
        }
        let customer_id = customer_id
            .map(|id| self.canonical_customer_id(id))
            .ok_or_else(|| StoreError::Conflict {
                code: "customer_unresolved",
                message: format!("envelope `{}` has no customer_id", envelope.id),
            })?;
        let (conv_id, created) = match self.open_by_customer.get(&customer_id) {
            Some(id) => (id.clone(), false),
            None => {
                let id = new_id();
                let Placement {
                    pool,
                    bot,
                    skills,
                    priority,
                    prefer_last_agent,
                    offer_secs,
                } = placement;
                self.conversations.insert(
                    id.clone(),
                    Conversation {
                        status: if bot.is_some() {
                            ConversationStatus::Bot
                        } else {
                            ConversationStatus::Queued
                        },
                        skills: skills.clone(),
                        priority: *priority,
                        agent_id: bot.clone(),
                        queued_at: bot.is_none().then_some(now),
                        ..Conversation::opened_by(id.clone(), envelope, &customer_id, pool, now)
                    },
                );
                self.open_by_customer
                    .insert(customer_id.clone(), id.clone());
                self.conversation_opened_by
                    .insert(id.clone(), envelope.id.clone());
                if *prefer_last_agent {
                    self.remembers_agent.insert(id.clone());
                    if let Some(agent) = self.last_agent.get(&customer_id) {
                        self.preferred_agent.insert(id.clone(), agent.clone());
                    }
                }
                if *offer_secs > 0 {
                    self.offer_secs.insert(id.clone(), *offer_secs);
                }
                if bot.is_none() {
                    self.queues.push(
                        pool,
                        &QueueKey {
                            priority: *priority,
                            skills: skills.clone(),
                        },
                        id.clone(),
                    );
                }
                (id, true)
            }
        };
        self.append_message(&conv_id, &customer_id, envelope);
        let c = self.conversation_mut(&conv_id)?;
        c.channel = envelope.channel.clone();
        c.recipient = envelope.sender.clone();
        c.last_inbound_id = Some(envelope.id.clone());
        c.last_inbound_at = Some(now);
        c.replies_since_inbound = 0;
        c.awaiting_reply_since.get_or_insert(now);
        c.updated_at = now;
        c.message_count += 1;
        Ok(InboundRecord {
            conversation: c.clone(),
            created,
            duplicate: false,
        })
    }

    /// [`Store::assign_queued`]: repeatedly, the first head of the pool's queues (by
    /// [`State::queue_rank`], then id) goes to the first ready agent with its skills; a queue
    /// whose head no such agent can take is passed over until the end of this call.
    fn assign_queued(&mut self, pool: &str, now: DateTime<Utc>) -> Vec<Assignment> {
        let mut out = Vec::new();
        let mut blocked = Vec::new();
        while let Some((key, head)) = self.next_head(pool, &blocked) {
            let preferred = self.preferred_agent.get(&head).cloned();
            let avoid = self.declined_by.get(&head).cloned();
            match self.next_ready_agent(
                pool,
                &key.skills,
                preferred.as_deref(),
                avoid.as_deref(),
                now,
            ) {
                Some(chosen) => {
                    self.queues.pop_front(pool, &key);
                    out.extend(self.assign(&head, chosen, now));
                }
                // Nobody with room at all.
                None if key.skills.is_empty() => break,
                None => blocked.push(key),
            }
        }
        out
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn claim_key(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        Ok(self.keys().claim(key, value, ttl))
    }

    async fn set_key(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        self.keys().set(key, value.to_owned(), ttl);
        Ok(())
    }

    async fn get_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.keys().get(key).map(str::to_owned))
    }

    async fn delete_key(&self, key: &str) -> Result<(), StoreError> {
        self.keys().delete(key);
        Ok(())
    }

    async fn release_key(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        Ok(self.keys().release(key, value))
    }

    async fn resolve_customer(&self, req: ResolveRequest) -> Result<Resolution, StoreError> {
        self.lock().resolve_customer(&req)
    }

    async fn resolve_customer_noted(&self, req: ResolveRequest) -> Result<Resolution, StoreError> {
        let mut s = self.lock();
        let resolution = s.resolve_customer(&req)?;
        for note in Note::of_merges(&resolution.merges, &resolution.closed, req.now) {
            s.note(note);
        }
        Ok(resolution)
    }

    async fn customer(&self, id: &str) -> Result<Option<Customer>, StoreError> {
        let s = self.lock();
        Ok(s.customers.get(&s.canonical_customer_id(id)).cloned())
    }

    async fn customer_by_identity(
        &self,
        key: &IdentityKey,
    ) -> Result<Option<Customer>, StoreError> {
        let s = self.lock();
        Ok(s.owner_of(key).and_then(|id| s.customers.get(&id).cloned()))
    }

    async fn record_inbound(
        &self,
        envelope: &Envelope,
        placement: &Placement,
        now: DateTime<Utc>,
    ) -> Result<InboundRecord, StoreError> {
        self.lock()
            .record_inbound(envelope, envelope.customer_id.as_deref(), placement, now)
    }

    async fn route_inbound(&self, req: InboundRouting<'_>) -> Result<InboundOutcome, StoreError> {
        let mut s = self.lock();
        let envelope = req.envelope;
        // The claim is taken under the state's lock, so no other routing step sees it before
        // this one has routed.
        let claimed = self.keys().claim(&req.claim, &envelope.id, req.claim_ttl);
        let retry = match claimed {
            Some(first) if first != envelope.id => {
                return Ok(InboundOutcome::Duplicate { first });
            }
            held => held.is_some(),
        };
        let now = req.resolve.now;
        let resolution = s.resolve_sender(&req.resolve)?;
        for note in Note::of_merges(&resolution.merges, &resolution.closed, now) {
            s.note(note);
        }
        let record =
            s.record_inbound(envelope, Some(&resolution.customer_id), &req.placement, now)?;
        let mut assignments = if record.conversation.status == ConversationStatus::Queued {
            s.assign_queued(&record.conversation.pool, now)
        } else {
            Vec::new()
        };
        if retry {
            let remembered = self
                .keys()
                .get(&others_assigned_key(&req.claim))
                .map(decode_others_assigned)
                .unwrap_or_default()
                .into_iter()
                .map(|(id, agent)| (s.conversations.get(&id).cloned(), agent))
                .collect();
            replay_others_assigned(&mut assignments, remembered);
        } else if let Some(others) = encode_others_assigned(&record.conversation.id, &assignments) {
            self.keys()
                .set(&others_assigned_key(&req.claim), others, req.claim_ttl);
        }
        Ok(InboundOutcome::Routed {
            resolution,
            record,
            assignments,
        })
    }

    async fn assign_queued(
        &self,
        pool: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Assignment>, StoreError> {
        Ok(self.lock().assign_queued(pool, now))
    }

    async fn assign_queued_noted(
        &self,
        pool: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Assignment>, StoreError> {
        let mut s = self.lock();
        let assignments = s.assign_queued(pool, now);
        for a in &assignments {
            s.note(Note::new(NoteKind::Assigned, &a.conversation.id, now));
        }
        Ok(assignments)
    }

    async fn unannounced(&self, before: DateTime<Utc>) -> Result<Vec<Note>, StoreError> {
        let s = self.lock();
        Ok(s.notes
            .values()
            .filter(|note| note.at <= before)
            .cloned()
            .collect())
    }

    async fn clear_notes(&self, notes: &[Note]) -> Result<(), StoreError> {
        let mut s = self.lock();
        for note in notes {
            s.notes.remove(&note.key());
        }
        Ok(())
    }

    async fn upsert_agent(
        &self,
        update: AgentUpdate,
        now: DateTime<Utc>,
    ) -> Result<Agent, StoreError> {
        let mut s = self.lock();
        // A lapsed session is over: expire it first, then apply the update.
        s.expire_presence(&update.id, now);
        if update.status.is_some()
            && matches!(s.presence.get(&update.id), Some(Presence::Lapsed(_)))
        {
            // An explicit status replaces the one a resumed heartbeat would restore.
            s.presence.remove(&update.id);
        }
        if !s.agents.contains_key(&update.id) {
            s.agents.add(Agent {
                id: update.id.clone(),
                name: update.id.clone(),
                pools: vec!["default".to_owned()],
                skills: Vec::new(),
                capacity: 1,
                status: AgentStatus::Offline,
                conversations: Vec::new(),
                idle_since: now,
                updated_at: now,
            });
        }
        let agent = s
            .agents
            .update(&update.id, |agent| {
                if let Some(name) = update.name {
                    agent.name = name;
                }
                if let Some(pools) = update.pools {
                    agent.pools = pools;
                }
                if let Some(skills) = update.skills {
                    agent.skills = skills;
                }
                if let Some(capacity) = update.capacity {
                    agent.capacity = capacity;
                }
                if let Some(status) = update.status {
                    if status == AgentStatus::Online && agent.status != AgentStatus::Online {
                        agent.idle_since = now;
                    }
                    agent.status = status;
                }
                agent.updated_at = now;
                agent.clone()
            })
            .ok_or_else(|| not_found("agent", &update.id))?;
        s.note(Note::new(NoteKind::AgentUpdated, &agent.id, now));
        Ok(agent)
    }

    async fn heartbeat_agent(
        &self,
        id: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock();
        if !s.agents.contains_key(id) {
            return Err(not_found("agent", id));
        }
        if ttl.is_zero() {
            s.expire_presence(id, now);
            s.presence.remove(id);
            return Ok(false);
        }
        let restore = match s.presence.get(id) {
            Some(Presence::Lapsed(status)) => Some(*status),
            _ => None,
        };
        let resumed = restore.is_some_and(|status| {
            s.agents.update(id, |agent| {
                if agent.status != AgentStatus::Offline {
                    return false;
                }
                if status == AgentStatus::Online {
                    agent.idle_since = now;
                }
                agent.status = status;
                agent.updated_at = now;
                true
            }) == Some(true)
        });
        let start = Instant::now();
        // An absurdly long TTL is capped at a year rather than overflowing the clock.
        let until = start
            .checked_add(ttl.min(MAX_PRESENCE_TTL))
            .unwrap_or(start);
        s.presence.insert(id.to_owned(), Presence::Live(until));
        Ok(resumed)
    }

    async fn expire_lapsed_agents(&self, now: DateTime<Utc>) -> Result<Vec<Agent>, StoreError> {
        let mut s = self.lock();
        let mut lapsed: Vec<String> = s
            .presence
            .keys()
            .filter(|id| s.presence_lapsed(id))
            .cloned()
            .collect();
        lapsed.sort();
        let mut out = Vec::with_capacity(lapsed.len());
        for id in &lapsed {
            s.expire_presence(id, now);
            if let Some(agent) = s.agents.get(id) {
                out.push(agent.clone());
            }
        }
        for id in std::mem::take(&mut s.expired_unannounced) {
            if !lapsed.contains(&id)
                && let Some(agent) = s.agents.get(&id)
            {
                out.push(s.agent_view(agent));
            }
        }
        for agent in &out {
            s.note(Note::new(NoteKind::AgentUpdated, &agent.id, now));
        }
        Ok(out)
    }

    async fn agent(&self, id: &str) -> Result<Option<Agent>, StoreError> {
        let s = self.lock();
        Ok(s.agents.get(id).map(|a| s.agent_view(a)))
    }

    async fn agents(&self) -> Result<Vec<Agent>, StoreError> {
        let s = self.lock();
        let mut agents: Vec<Agent> = s.agents.values().map(|a| s.agent_view(a)).collect();
        drop(s);
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(agents)
    }

    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        Ok(self.lock().conversations.get(id).cloned())
    }

    async fn open_conversation(
        &self,
        customer_id: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        let s = self.lock();
        let id = s.canonical_customer_id(customer_id);
        Ok(s.open_conversation(&id).cloned())
    }

    async fn messages(
        &self,
        conversation_id: &str,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        let s = self.lock();
        let Some(all) = s.messages.get(conversation_id) else {
            return Ok(Vec::new());
        };
        let skip = all.len().saturating_sub(limit);
        Ok(all.iter().skip(skip).cloned().collect())
    }

    async fn agent_conversations(&self, agent_id: &str) -> Result<Vec<Conversation>, StoreError> {
        let s = self.lock();
        let agent = s
            .agents
            .get(agent_id)
            .ok_or_else(|| not_found("agent", agent_id))?;
        Ok(agent
            .conversations
            .iter()
            .filter_map(|id| s.conversations.get(id).cloned())
            .collect())
    }

    async fn queue(&self, pool: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().queued_in_order(pool))
    }

    fn set_least_busy_pools(&self, pools: &[String]) {
        self.lock().least_busy = pools.iter().cloned().collect();
    }

    async fn queue_stats(&self, pool: &str) -> Result<QueueStats, StoreError> {
        let s = self.lock();
        let mut stats = QueueStats::default();
        for (key, queue) in s.queues.of_pool(pool) {
            // From the first live entry on, as the Redis store counts (stale entries are rare
            // and dropped as assignment meets them).
            let Some(at) = queue.iter().position(|id| s.queued_in(id, pool, key)) else {
                continue;
            };
            let head = &queue[at];
            stats.depth += queue.len() - at;
            let queued_at = s.conversations.get(head).and_then(|c| c.queued_at);
            stats.oldest_queued_at = stats.oldest_queued_at.into_iter().chain(queued_at).min();
        }
        Ok(stats)
    }

    async fn customer_conversations(
        &self,
        customer_id: &str,
        query: &CustomerConversationsQuery,
    ) -> Result<Vec<Conversation>, StoreError> {
        // One process's store: a scan serves (as erasure finds a customer's conversations).
        let s = self.lock();
        let id = s.canonical_customer_id(customer_id);
        let customer = s
            .customers
            .get(&id)
            .ok_or_else(|| not_found("customer", &id))?;
        let mut owners: Vec<&str> = vec![id.as_str()];
        owners.extend(customer.merged_from.iter().map(String::as_str));
        let mut theirs: Vec<&Conversation> = s
            .conversations
            .values()
            .filter(|c| owners.contains(&c.customer_id.as_str()))
            .collect();
        theirs.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        let start = match &query.before {
            None => 0,
            Some(cursor) => theirs
                .iter()
                .position(|c| &c.id == cursor)
                .map(|i| i + 1)
                .ok_or_else(|| unknown_cursor(cursor, &id))?,
        };
        Ok(theirs
            .into_iter()
            .skip(start)
            .filter(|c| status_listed(&query.statuses, c.status))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn pool_conversations(
        &self,
        pool: &str,
        statuses: &[ConversationStatus],
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        let s = self.lock();
        let mut open: Vec<&Conversation> = s
            .conversations
            .values()
            .filter(|c| {
                c.pool == pool
                    && c.status != ConversationStatus::Closed
                    && status_listed(statuses, c.status)
            })
            .collect();
        open.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(open.into_iter().take(limit).cloned().collect())
    }

    async fn record_outbound(
        &self,
        conversation_id: &str,
        agent_id: Option<&str>,
        envelope: &Envelope,
        now: DateTime<Utc>,
        stage: Option<MailboxPush<'_>>,
    ) -> Result<OutboundRecord, StoreError> {
        let mut s = self.lock();
        if let Some(recorded_in) = s.message_ids.get(&envelope.id).cloned() {
            let conversation = s
                .conversations
                .get(&recorded_in)
                .cloned()
                .ok_or_else(|| not_found("conversation", &recorded_in))?;
            return Ok(OutboundRecord {
                conversation,
                duplicate: true,
            });
        }
        let c = s.conversation_mut(conversation_id)?;
        if c.status == ConversationStatus::Closed {
            return Err(StoreError::Conflict {
                code: "conversation_closed",
                message: format!("conversation `{conversation_id}` is closed"),
            });
        }
        if let Some(agent) = agent_id
            && c.agent_id.as_deref() != Some(agent)
        {
            return Err(StoreError::Conflict {
                code: "not_assigned_to_agent",
                message: format!(
                    "conversation `{conversation_id}` is not assigned to agent `{agent}`"
                ),
            });
        }
        c.updated_at = now;
        c.message_count += 1;
        c.replies_since_inbound = c.replies_since_inbound.saturating_add(1);
        if agent_id.is_some() {
            c.awaiting_reply_since = None;
        }
        let c = c.clone();
        s.append_message(&c.id, &c.customer_id, envelope);
        if let Some(push) = stage {
            s.mailbox_push(push);
        }
        Ok(OutboundRecord {
            conversation: c,
            duplicate: false,
        })
    }

    async fn start_conversation(
        &self,
        start: ConversationStart<'_>,
    ) -> Result<Conversation, StoreError> {
        let ConversationStart {
            envelope,
            agent_id,
            pool,
            remember_agent,
            stage,
            now,
        } = start;
        let mut s = self.lock();
        let asked = envelope.customer_id.as_deref().unwrap_or_default();
        let customer_id = s.canonical_customer_id(asked);
        if !s.customers.contains_key(&customer_id) {
            return Err(not_found("customer", asked));
        }
        if let Some(open) = s.open_conversation(&customer_id) {
            return Err(StoreError::Conflict {
                code: CONVERSATION_OPEN,
                message: format!(
                    "customer `{customer_id}` has the open conversation `{}`; reply in it",
                    open.id
                ),
            });
        }
        let agent = s
            .agents
            .get(agent_id)
            .ok_or_else(|| not_found("agent", agent_id))?;
        if agent.conversations.len() as u64 >= u64::from(agent.capacity) {
            return Err(StoreError::Conflict {
                code: AGENT_AT_CAPACITY,
                message: format!(
                    "agent `{agent_id}` holds {} conversations, its capacity",
                    agent.conversations.len()
                ),
            });
        }
        let id = envelope.conversation_id.clone().unwrap_or_else(new_id);
        let conversation = Conversation {
            // The first message is a reply as `record_outbound` counts them.
            replies_since_inbound: 1,
            message_count: 1,
            ..Conversation::opened_by(id.clone(), envelope, &customer_id, pool, now)
                .written_first_by(agent_id, now)
        };
        s.conversations.insert(id.clone(), conversation.clone());
        s.open_by_customer.insert(customer_id.clone(), id.clone());
        if remember_agent {
            s.remembers_agent.insert(id.clone());
        }
        s.hand_to_agent(&id, agent_id, now);
        s.append_message(&id, &customer_id, envelope);
        if let Some(push) = stage {
            s.mailbox_push(push);
        }
        s.note(Note::new(NoteKind::Started, &id, now));
        Ok(conversation)
    }

    async fn close_conversation(
        &self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError> {
        let mut s = self.lock();
        let release = s.close(id, reason, now)?;
        s.note_release(NoteKind::Closed, id, &release, now);
        Ok(release)
    }

    async fn close_idle(
        &self,
        id: &str,
        unchanged_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError> {
        let mut s = self.lock();
        let c = s
            .conversations
            .get(id)
            .ok_or_else(|| not_found("conversation", id))?;
        let open = matches!(
            c.status,
            ConversationStatus::Queued | ConversationStatus::Assigned
        );
        if !open || c.updated_at >= unchanged_before {
            return Err(StoreError::Conflict {
                code: CONVERSATION_CHANGED,
                message: format!(
                    "conversation `{id}` is not open or changed since {unchanged_before}"
                ),
            });
        }
        let release = s.close(id, IDLE_CLOSE_REASON, now)?;
        s.note_release(NoteKind::Closed, id, &release, now);
        Ok(release)
    }

    async fn idle_bot_conversations(
        &self,
        pool: &str,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        // Only a message either way changes a bot's conversation (`updated_at`) while it holds
        // it; the embedded store is one process's, so a scan serves.
        let s = self.lock();
        let mut idle: Vec<&Conversation> = s
            .conversations
            .values()
            .filter(|c| {
                c.status == ConversationStatus::Bot && c.pool == pool && c.updated_at < before
            })
            .collect();
        idle.sort_by(|a, b| (a.updated_at, &a.id).cmp(&(b.updated_at, &b.id)));
        Ok(idle.into_iter().take(limit.max(1)).cloned().collect())
    }

    async fn expire_closed(
        &self,
        closed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let mut s = self.lock();
        let due: Vec<(DateTime<Utc>, String)> = s
            .closed
            .iter()
            .take_while(|(at, _)| *at < closed_before)
            .take(limit.max(1))
            .cloned()
            .collect();
        for entry in &due {
            s.closed.remove(entry);
            let id = &entry.1;
            let expires = s.conversations.get(id).is_some_and(|c| {
                c.status == ConversationStatus::Closed
                    && c.close_reason.as_deref() != Some("merged")
            });
            if !expires {
                continue;
            }
            s.conversations.remove(id);
            s.conversation_opened_by.remove(id);
            for envelope in s.messages.remove(id).unwrap_or_default() {
                s.message_ids.remove(&envelope.id);
            }
        }
        Ok(due.len())
    }

    async fn erase_customer(
        &self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Erasure, StoreError> {
        let mut s = self.lock();
        let id = s.canonical_customer_id(id);
        if !s.customers.contains_key(&id) {
            return Err(not_found("customer", &id));
        }
        if let Some(open) = s.open_conversation(&id) {
            return Err(StoreError::Conflict {
                code: "customer_has_open_conversation",
                message: format!(
                    "customer `{id}` has the open conversation `{}`: close it first",
                    open.id
                ),
            });
        }
        s.erase(&id, reason, now)
            .ok_or_else(|| not_found("customer", &id))
    }

    async fn erase_quiet_customers(
        &self,
        quiet_before: DateTime<Utc>,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<QuietSweep, StoreError> {
        let mut s = self.lock();
        let due: Vec<(DateTime<Utc>, String)> = s
            .quiet
            .iter()
            .take_while(|(at, _)| *at < quiet_before)
            .take(limit.max(1))
            .cloned()
            .collect();
        let mut sweep = QuietSweep {
            handled: due.len(),
            erased: Vec::new(),
        };
        for entry in due {
            s.quiet.remove(&entry);
            let id = entry.1;
            let Some(last_seen) = s.customers.get(&id).map(|c| c.last_seen) else {
                continue; // erased, or merged into a profile that has its own entry
            };
            if s.open_conversation(&id).is_some() {
                s.quiet.insert((now, id));
            } else if last_seen >= quiet_before {
                s.quiet.insert((last_seen, id));
            } else if let Some(erasure) = s.erase(&id, ERASED_BY_RETENTION, now) {
                sweep.erased.push(erasure);
            }
        }
        Ok(sweep)
    }

    async fn update_customer(
        &self,
        id: &str,
        update: &CustomerUpdate,
        now: DateTime<Utc>,
    ) -> Result<Customer, StoreError> {
        let mut s = self.lock();
        let id = s.canonical_customer_id(id);
        let customer = s
            .customers
            .get_mut(&id)
            .ok_or_else(|| not_found("customer", &id))?;
        let (tags, attributes) = update.applied_to(customer)?;
        customer.tags = tags;
        customer.attributes = attributes;
        let updated = customer.clone();
        s.note(Note::new(NoteKind::CustomerUpdated, &id, now));
        Ok(updated)
    }

    async fn transfer(
        &self,
        id: &str,
        target: TransferTarget,
        handover: Option<&Handover>,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError> {
        self.lock().transfer(id, target, handover, None, now)
    }

    async fn overflow(
        &self,
        id: &str,
        pool: &str,
        queued_before: DateTime<Utc>,
        target: QueueTarget,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError> {
        let mut s = self.lock();
        let c = s
            .conversations
            .get(id)
            .ok_or_else(|| not_found("conversation", id))?;
        let waits = c.status == ConversationStatus::Queued
            && c.pool == pool
            && c.queued_at.is_some_and(|at| at < queued_before);
        if !waits {
            return Err(StoreError::Conflict {
                code: CONVERSATION_CHANGED,
                message: format!(
                    "conversation `{id}` does not wait in pool `{pool}` since before {queued_before}"
                ),
            });
        }
        s.transfer(
            id,
            TransferTarget::Pool(target),
            None,
            Some(NoteKind::Overflowed),
            now,
        )
    }

    async fn accept_offer(
        &self,
        id: &str,
        agent_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Conversation, StoreError> {
        let mut s = self.lock();
        s.offered_to(id, agent_id)?.updated_at = now;
        s.clear_offer(id);
        let mut note = Note::new(NoteKind::Accepted, id, now);
        note.from_agent = Some(agent_id.to_owned());
        s.note(note);
        s.conversations
            .get(id)
            .cloned()
            .ok_or_else(|| not_found("conversation", id))
    }

    async fn take_back(
        &self,
        id: &str,
        agent_id: &str,
        why: Withdrawal,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError> {
        let mut s = self.lock();
        match why {
            Withdrawal::Declined => {
                s.offered_to(id, agent_id)?;
            }
            Withdrawal::Expired { offered_at } => {
                if s.offered_to(id, agent_id)?.offered_at != Some(offered_at) {
                    return Err(StoreError::Conflict {
                        code: NO_PENDING_OFFER,
                        message: format!("conversation `{id}` was offered again since"),
                    });
                }
            }
            Withdrawal::Unanswered { before, .. } => {
                let c = s
                    .conversations
                    .get(id)
                    .ok_or_else(|| not_found("conversation", id))?;
                if c.agent_id.as_deref() != Some(agent_id) || !c.unanswered_since_before(before) {
                    return Err(StoreError::Conflict {
                        code: CONVERSATION_CHANGED,
                        message: format!(
                            "conversation `{id}` is not left unanswered by agent `{agent_id}` since before {before}"
                        ),
                    });
                }
            }
        }
        s.detach(id);
        let c = s.conversation_mut(id)?;
        c.status = ConversationStatus::Queued;
        c.agent_id = None;
        c.updated_at = now;
        let (pool, key) = (c.pool.clone(), QueueKey::of(c));
        s.queues.push_front(&pool, &key, id.to_owned());
        s.declined_by.insert(id.to_owned(), agent_id.to_owned());
        let mut note = Note::new(why.note_kind(), id, now);
        note.from_agent = Some(agent_id.to_owned());
        s.note(note);
        if why.sets_agent_away() {
            let was_online = s
                .agents
                .update(agent_id, |agent| {
                    let online = agent.status == AgentStatus::Online;
                    if online {
                        agent.status = AgentStatus::Away;
                        agent.updated_at = now;
                    }
                    online
                })
                .unwrap_or(false);
            if was_online {
                s.note(Note::new(NoteKind::AgentUpdated, agent_id, now));
            }
        }
        let conversation = s.conversation_mut(id)?.clone();
        let released_agent = s.agents.get(agent_id).cloned();
        Ok(Release {
            conversation,
            released_agent,
            released_bot: None,
        })
    }

    async fn pending_offers(&self) -> Result<Vec<Conversation>, StoreError> {
        let s = self.lock();
        Ok(s.offers
            .iter()
            .filter_map(|(_, id)| s.conversations.get(id).cloned())
            .collect())
    }

    async fn mailbox_push(
        &self,
        key: &str,
        id: &str,
        body: &str,
        max_len: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self.lock().mailbox_push(MailboxPush {
            key,
            id,
            body,
            max_len,
            ttl,
        }))
    }

    async fn mailbox_head(&self, key: &str, limit: usize) -> Result<MailboxHead, StoreError> {
        let mut s = self.lock();
        let live = match s.mailboxes.get(key) {
            None => return Ok(MailboxHead::default()),
            Some(m) => m.expires > Instant::now(),
        };
        if !live {
            s.mailboxes.remove(key);
            return Ok(MailboxHead::default());
        }
        Ok(s.mailboxes
            .get(key)
            .map(|m| MailboxHead {
                items: m.items.iter().take(limit).cloned().collect(),
                len: m.items.len(),
            })
            .unwrap_or_default())
    }

    async fn mailbox_ack(&self, key: &str, ids: &[String]) -> Result<(), StoreError> {
        let mut s = self.lock();
        let Some(mailbox) = s.mailboxes.get_mut(key) else {
            return Ok(());
        };
        for id in ids {
            // As in Redis: the head is where the outbox acknowledges, the tail where a published
            // reply is.
            if mailbox.items.front().is_some_and(|item| &item.id == id) {
                mailbox.items.pop_front();
            } else if let Some(at) = mailbox.items.iter().rposition(|item| &item.id == id) {
                mailbox.items.remove(at);
            }
        }
        if mailbox.items.is_empty() || mailbox.expires <= Instant::now() {
            s.mailboxes.remove(key);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The ready index against a brute-force recomputation from the agents, under random
    //! operations through the public [`Store`] API.

    use proptest::prelude::*;

    use super::agents::ReadyKey;
    use super::*;
    use crate::conformance::store::{at, key, unrouted};

    const AGENTS: usize = 5;
    const PEOPLE: usize = 6;
    const POOLS: [&str; 3] = ["default", "vip", "sales"];

    /// Panics unless the ready index holds, for every pool, exactly the agents for which
    /// [`Agent::can_take`] of that pool holds, keyed by (idle_since, id).
    fn assert_ready_index_consistent(state: &State) {
        let mut expected: FastMap<String, BTreeSet<ReadyKey>> = FastMap::default();
        for agent in state.agents.values() {
            for pool in &agent.pools {
                if agent.can_take(pool) {
                    expected
                        .entry(pool.clone())
                        .or_default()
                        .insert((agent.idle_since, agent.id.clone()));
                }
            }
        }
        assert_eq!(
            state.agents.ready_index(),
            &expected,
            "the ready index differs from the agents"
        );
    }

    /// A presence TTL armed by a heartbeat.
    #[derive(Debug, Clone, Copy)]
    enum Ttl {
        /// Zero: ends tracking.
        End,
        /// Lapsed by the next operation.
        Lapsing,
        /// Outlives the test.
        Long,
    }

    impl Ttl {
        fn duration(self) -> Duration {
            match self {
                Ttl::End => Duration::ZERO,
                Ttl::Lapsing => Duration::from_nanos(1),
                Ttl::Long => Duration::from_secs(3600),
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// An update of agent `agent` (created if new); `None` leaves a field as it is. Pools
        /// are indices into [`POOLS`], repeats included.
        Upsert {
            agent: usize,
            pools: Option<Vec<usize>>,
            capacity: Option<u32>,
            status: Option<AgentStatus>,
        },
        Heartbeat {
            agent: usize,
            ttl: Ttl,
        },
        /// Person `person` writes; a conversation it opens is queued in `POOLS[pool]`. With
        /// `phone`, the message carries a phone number shared by everyone who sends one, which
        /// merges their profiles (and closes all but one of their open conversations).
        Inbound {
            person: usize,
            pool: usize,
            phone: bool,
        },
        Assign {
            pool: usize,
        },
        /// `pick` selects among every conversation seen so far (closed ones included).
        Close {
            pick: usize,
        },
        TransferPool {
            pick: usize,
            pool: usize,
        },
        TransferAgent {
            pick: usize,
            agent: usize,
        },
        ExpireLapsed,
    }

    fn op() -> impl Strategy<Value = Op> {
        let status = || {
            prop_oneof![
                3 => Just(AgentStatus::Online),
                1 => Just(AgentStatus::Away),
                1 => Just(AgentStatus::Offline),
            ]
        };
        let pools = proptest::collection::vec(0..POOLS.len(), 0..=3);
        let ttl = prop_oneof![Just(Ttl::End), Just(Ttl::Lapsing), Just(Ttl::Long)];
        prop_oneof![
            4 => (
                0..AGENTS,
                proptest::option::of(pools),
                proptest::option::of(0..4u32),
                proptest::option::of(status()),
            )
                .prop_map(|(agent, pools, capacity, status)| Op::Upsert {
                    agent,
                    pools,
                    capacity,
                    status,
                }),
            3 => (0..AGENTS, ttl).prop_map(|(agent, ttl)| Op::Heartbeat { agent, ttl }),
            5 => (0..PEOPLE, 0..POOLS.len(), proptest::bool::weighted(0.3))
                .prop_map(|(person, pool, phone)| Op::Inbound { person, pool, phone }),
            2 => (0..POOLS.len()).prop_map(|pool| Op::Assign { pool }),
            2 => any::<usize>().prop_map(|pick| Op::Close { pick }),
            1 => (any::<usize>(), 0..POOLS.len())
                .prop_map(|(pick, pool)| Op::TransferPool { pick, pool }),
            1 => (any::<usize>(), 0..AGENTS)
                .prop_map(|(pick, agent)| Op::TransferAgent { pick, agent }),
            1 => Just(Op::ExpireLapsed),
        ]
    }

    fn agent_id(i: usize) -> String {
        format!("agent-{i}")
    }

    /// A text message from `person` on the `shop-app` API channel, with the shared phone key
    /// when `phone`.
    fn inbound(person: usize, phone: bool, now: DateTime<Utc>) -> Envelope {
        let phone: Vec<IdentityKey> = phone
            .then(|| key("", "phone", "", "+8613800000000"))
            .into_iter()
            .collect();
        unrouted("", &person.to_string(), &phone, now)
    }

    /// Accepts a refusal the operation may legitimately meet (`Conflict`, `NotFound`).
    fn allow_refusal<T>(what: &str, result: Result<T, StoreError>) {
        if let Err(e @ StoreError::Unavailable(_)) = result {
            panic!("{what}: {e}");
        }
    }

    /// One random run against a fresh store.
    #[derive(Default)]
    struct Run {
        store: EmbeddedStore,
        /// Every conversation id the store reported.
        conversations: Vec<String>,
        /// Conversations each agent held after the previous step.
        prev_load: HashMap<String, usize>,
    }

    impl Run {
        fn pick(&self, pick: usize) -> Option<String> {
            if self.conversations.is_empty() {
                return None;
            }
            Some(self.conversations[pick % self.conversations.len()].clone())
        }

        fn saw(&mut self, conversation: &Conversation) {
            if !self.conversations.contains(&conversation.id) {
                self.conversations.push(conversation.id.clone());
            }
        }

        async fn apply(&mut self, op: &Op, now: DateTime<Utc>) {
            let store = &self.store;
            match op {
                Op::Upsert {
                    agent,
                    pools,
                    capacity,
                    status,
                } => {
                    let update = AgentUpdate {
                        id: agent_id(*agent),
                        pools: pools
                            .as_ref()
                            .map(|p| p.iter().map(|i| POOLS[*i].to_owned()).collect()),
                        capacity: *capacity,
                        status: *status,
                        ..AgentUpdate::default()
                    };
                    store.upsert_agent(update, now).await.unwrap();
                }
                Op::Heartbeat { agent, ttl } => {
                    let result = store
                        .heartbeat_agent(&agent_id(*agent), ttl.duration(), now)
                        .await;
                    allow_refusal("heartbeat", result);
                }
                Op::Inbound {
                    person,
                    pool,
                    phone,
                } => {
                    let envelope = inbound(*person, *phone, now);
                    let mut agents = store.agents().await.unwrap();
                    let outcome = store
                        .route_inbound(InboundRouting {
                            envelope: &envelope,
                            resolve: ResolveRequest::of_sender(&envelope, false, now),
                            claim: format!("routed:{}", envelope.dedupe_key),
                            claim_ttl: Duration::from_secs(3600),
                            placement: Placement::queued(POOLS[*pool].to_owned()),
                        })
                        .await
                        .unwrap();
                    let InboundOutcome::Routed {
                        resolution,
                        record,
                        assignments,
                    } = outcome
                    else {
                        panic!("a new envelope was taken for a duplicate");
                    };
                    // A merge closed these before the assignments: their agents have room again.
                    for closed in &resolution.closed {
                        for agent in &mut agents {
                            agent.conversations.retain(|c| *c != closed.conversation.id);
                        }
                    }
                    self.saw(&record.conversation);
                    let pool = (record.conversation.status == ConversationStatus::Queued)
                        .then_some(record.conversation.pool.as_str());
                    self.check_assignments(agents, &assignments, pool, now)
                        .await;
                }
                Op::Assign { pool } => {
                    let agents = store.agents().await.unwrap();
                    let assignments = store.assign_queued(POOLS[*pool], now).await.unwrap();
                    self.check_assignments(agents, &assignments, Some(POOLS[*pool]), now)
                        .await;
                }
                Op::Close { pick } => {
                    if let Some(id) = self.pick(*pick) {
                        let result = store.close_conversation(&id, "agent", now).await;
                        allow_refusal("close", result);
                    }
                }
                Op::TransferPool { pick, pool } => {
                    if let Some(id) = self.pick(*pick) {
                        let target = TransferTarget::pool(POOLS[*pool].to_owned());
                        let result = store.transfer(&id, target, None, now).await;
                        allow_refusal("transfer to a pool", result);
                    }
                }
                Op::TransferAgent { pick, agent } => {
                    if let Some(id) = self.pick(*pick) {
                        let target = TransferTarget::Agent(agent_id(*agent));
                        let result = store.transfer(&id, target, None, now).await;
                        allow_refusal("transfer to an agent", result);
                    }
                }
                Op::ExpireLapsed => {
                    store.expire_lapsed_agents(now).await.unwrap();
                }
            }
        }

        /// Checks `assignments` against a brute-force choice from `agents` (as reads showed
        /// them just before the call, so a lapsed agent reads offline): each went to the agent
        /// with the least (idle_since, id) of those that could take it, which then holds one more
        /// conversation and is idle since `now`. When the call assigned from `pool`, it stopped
        /// only when the queue ran out or nobody could take its head.
        async fn check_assignments(
            &mut self,
            mut agents: Vec<Agent>,
            assignments: &[Assignment],
            pool: Option<&str>,
            now: DateTime<Utc>,
        ) {
            for a in assignments {
                let pool = &a.conversation.pool;
                let best = agents
                    .iter()
                    .filter(|x| x.can_take(pool))
                    .min_by_key(|x| (x.idle_since, &x.id))
                    .map(|x| x.id.clone());
                assert_eq!(
                    Some(&a.agent_id),
                    best.as_ref(),
                    "agent chosen for {} in `{pool}`",
                    a.conversation.id
                );
                let chosen = agents.iter_mut().find(|x| x.id == a.agent_id).unwrap();
                chosen.conversations.push(a.conversation.id.clone());
                chosen.idle_since = now;
                self.saw(&a.conversation);
            }
            if let Some(pool) = pool
                && !self.store.queue(pool).await.unwrap().is_empty()
            {
                let idle: Vec<&str> = agents
                    .iter()
                    .filter(|x| x.can_take(pool))
                    .map(|x| x.id.as_str())
                    .collect();
                assert!(
                    idle.is_empty(),
                    "`{pool}` still has a queue while {idle:?} could take it"
                );
            }
        }

        /// The state after any operation: the index is exact, no agent grew over its capacity
        /// (one whose capacity was lowered below its load keeps what it holds), and every
        /// conversation an agent holds is assigned to it.
        fn check_state(&mut self) {
            let state = self.store.lock();
            assert_ready_index_consistent(&state);
            let mut load = HashMap::new();
            for agent in state.agents.values() {
                let n = agent.conversations.len();
                let prev = self.prev_load.get(&agent.id).copied().unwrap_or(0);
                assert!(
                    n as u64 <= u64::from(agent.capacity) || n <= prev,
                    "{} holds {n} > capacity {} (had {prev})",
                    agent.id,
                    agent.capacity
                );
                for id in &agent.conversations {
                    let c = state
                        .conversations
                        .get(id)
                        .unwrap_or_else(|| panic!("{} holds unknown {id}", agent.id));
                    assert_eq!(
                        (c.status, c.agent_id.as_deref()),
                        (ConversationStatus::Assigned, Some(agent.id.as_str())),
                        "{id}, held by {}",
                        agent.id
                    );
                }
                load.insert(agent.id.clone(), n);
            }
            drop(state);
            self.prev_load = load;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The ready index stays exact, and assignment takes the longest idle agent that can
        /// take the conversation, under random operations.
        #[test]
        fn ready_index_matches_agents_under_random_operations(
            ops in proptest::collection::vec(op(), 1..=80)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let mut run = Run::default();
                for (step, op) in ops.iter().enumerate() {
                    // Four steps per second: agents made idle in nearby steps tie on time.
                    run.apply(op, at(step as i64 / 4)).await;
                    run.check_state();
                }
            });
        }
    }
}
