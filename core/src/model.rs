//! Domain records kept by the [`crate::store::Store`]: customers, conversations, agents.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{ChannelRef, Sender};
use crate::identity::{IdentityKey, IdentityStrength};

/// One identity key attached to a customer, with when and how it was linked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IdentityRecord {
    /// The key.
    pub key: IdentityKey,
    /// Strong or weak.
    pub strength: IdentityStrength,
    /// When it was linked to this profile.
    #[serde(serialize_with = "crate::time::rfc3339::serialize")]
    pub linked_at: DateTime<Utc>,
}

/// A unified customer profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Customer {
    /// Customer id (ULID).
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Best known display name.
    pub display_name: Option<String>,
    /// Every identity key of this person.
    pub identities: Vec<IdentityRecord>,
    /// Ids of profiles merged into this one.
    pub merged_from: Vec<String>,
    /// Free-form tags (`vip`, ...), in the order they were added, each once; routing rules may
    /// match them (`customer_tags`).
    pub tags: Vec<String>,
    /// Free-form attributes: any JSON value by name.
    #[schemars(with = "std::collections::BTreeMap<String, serde_json::Value>")]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// First message or link.
    #[serde(serialize_with = "crate::time::rfc3339::serialize")]
    pub first_seen: DateTime<Utc>,
    /// Latest message or link.
    #[serde(serialize_with = "crate::time::rfc3339::serialize")]
    pub last_seen: DateTime<Utc>,
}

/// Longest customer tag, in characters.
pub const MAX_TAG_CHARS: usize = 64;

/// Whether `tag` can be a customer tag: 1 to [`MAX_TAG_CHARS`] characters, none of them a
/// control character. `PATCH /v1/customers/{id}` refuses other tags, and a routing rule's
/// `customer_tags` may name no other.
pub fn is_valid_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.chars().count() <= MAX_TAG_CHARS && !tag.chars().any(char::is_control)
}

/// Whether `skill` can name an agent's skill or one a conversation asks for: the rule of tags
/// ([`is_valid_tag`]). `PUT /v1/agents/{id}`, a transfer and a routing rule's `skills` refuse
/// other names.
pub fn is_valid_skill(skill: &str) -> bool {
    is_valid_tag(skill)
}

/// The skills a conversation asks of the agent offered it: every one of them. Kept sorted and
/// each once, so that two requirements naming the same skills are equal (and queue together).
/// Empty: any agent of the pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Skills(Vec<String>);

impl Skills {
    /// Asking for no skill.
    pub const NONE: Skills = Skills(Vec::new());

    /// The requirement naming `skills` (sorted, repeats dropped).
    pub fn new<S: Into<String>>(skills: impl IntoIterator<Item = S>) -> Self {
        let mut skills: Vec<String> = skills.into_iter().map(Into::into).collect();
        skills.sort_unstable();
        skills.dedup();
        Skills(skills)
    }

    /// Whether it asks for nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The skills, sorted.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether an agent with `skills` has every skill asked for.
    pub fn held_by(&self, skills: &[String]) -> bool {
        self.0.iter().all(|wanted| skills.contains(wanted))
    }
}

impl<'de> Deserialize<'de> for Skills {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(deserializer).map(Skills::new)
    }
}

/// Where a conversation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationStatus {
    /// A bot is handling it.
    Bot,
    /// Waiting in a pool's queue for an agent.
    Queued,
    /// An agent has it.
    Assigned,
    /// Finished; the customer's next message opens a new one.
    Closed,
}

/// A conversation: one open at a time per customer, across channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Conversation {
    /// Conversation id (ULID).
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// The customer.
    pub customer_id: String,
    /// Where it is in its life.
    pub status: ConversationStatus,
    /// The pool routing it.
    pub pool: String,
    /// Skills an agent of the pool needs to be offered it (all of them); empty: any agent.
    /// Set by the routing rule that opened it, or by a transfer.
    #[serde(default)]
    pub skills: Skills,
    /// Its place among the pool's waiting conversations: a higher priority is offered to agents
    /// first, whatever waited longer; equal priorities in arrival order. Set by the routing rule
    /// that opened it, or by a transfer (0 otherwise).
    #[serde(default)]
    pub priority: u8,
    /// The agent holding it, when assigned.
    pub agent_id: Option<String>,
    /// The channel the customer last wrote from; replies go out here.
    pub channel: ChannelRef,
    /// The customer on that channel (replies are addressed to them).
    pub recipient: Sender,
    /// Id of the customer's latest message (replies answer it).
    pub last_inbound_id: Option<String>,
    /// When the customer last wrote (channel reply windows count from here).
    #[serde(default)]
    #[serde(serialize_with = "crate::time::rfc3339::option::serialize")]
    pub last_inbound_at: Option<DateTime<Utc>>,
    /// Replies sent since the customer last wrote (channel reply quotas count these).
    #[serde(default)]
    pub replies_since_inbound: u32,
    /// While the customer waits for an answer: when they wrote their first message since the
    /// agent (or bot) holding it last replied. A reply of the agent holding it clears it; a
    /// transfer keeps it (the customer still waits). A pool's `answer_timeout_secs` counts from
    /// here, or from the assignment when that came later.
    #[serde(default)]
    #[serde(serialize_with = "crate::time::rfc3339::option::serialize")]
    pub awaiting_reply_since: Option<DateTime<Utc>>,
    /// When it was opened.
    #[serde(serialize_with = "crate::time::rfc3339::serialize")]
    pub created_at: DateTime<Utc>,
    /// Latest change.
    #[serde(serialize_with = "crate::time::rfc3339::serialize")]
    pub updated_at: DateTime<Utc>,
    /// When it last entered a queue.
    #[serde(serialize_with = "crate::time::rfc3339::option::serialize")]
    pub queued_at: Option<DateTime<Utc>>,
    /// When it was last assigned.
    #[serde(serialize_with = "crate::time::rfc3339::option::serialize")]
    pub assigned_at: Option<DateTime<Utc>>,
    /// How the agent of its latest assignment (at `assigned_at`) was chosen; `null` before its
    /// first (and for conversations assigned by a version without it).
    #[serde(default)]
    pub assigned_by: Option<AssignedBy>,
    /// What the bot or agent that last handed it on said of it (given with the transfer);
    /// `null` before its first hand-over with a context. A later one replaces it; a transfer
    /// without one keeps it.
    #[serde(default)]
    pub handover: Option<Box<crate::handover::Handover>>,
    /// While its agent has not accepted it yet (a pool with `offer_timeout_secs`): when it was
    /// offered to that agent.
    #[serde(default)]
    #[serde(serialize_with = "crate::time::rfc3339::option::serialize")]
    pub offered_at: Option<DateTime<Utc>>,
    /// While its agent has not accepted it yet: until when the agent may accept it; after
    /// that it goes back to the front of its queue, and the agent is set away.
    #[serde(default)]
    #[serde(serialize_with = "crate::time::rfc3339::option::serialize")]
    pub offer_expires_at: Option<DateTime<Utc>>,
    /// When it was closed.
    #[serde(serialize_with = "crate::time::rfc3339::option::serialize")]
    pub closed_at: Option<DateTime<Utc>>,
    /// Why it was closed: `closed` (an agent or the API), `merged`, `idle`, `erased`.
    pub close_reason: Option<String>,
    /// Messages in it, both directions.
    pub message_count: u64,
}

/// How a conversation's agent was chosen ([`Conversation::assigned_by`]): which rule of the
/// routing gave it to that agent, so that an assignment can be explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssignedBy {
    /// From the pool's queue, to the agent idle longest among those online with room and the
    /// skills it asks for (`strategy = "longest_idle"`, the default).
    LongestIdle,
    /// From the pool's queue, to the agent holding the fewest conversations among those
    /// (`strategy = "least_busy"`), the longest idle among equals.
    LeastBusy,
    /// From the pool's queue, to the customer's last agent (`prefer_last_agent`).
    LastAgent,
    /// From the pool's queue, back to the agent who declined it or left it unanswered: nobody
    /// else with room and its skills could take it.
    NoOtherAgent,
    /// Transferred straight to the agent.
    Transfer,
    /// The agent opened it by writing first.
    WriteFirst,
}

impl AssignedBy {
    /// Its name, as serialized and as the Redis store keeps it.
    pub fn as_str(self) -> &'static str {
        match self {
            AssignedBy::LongestIdle => "longest_idle",
            AssignedBy::LeastBusy => "least_busy",
            AssignedBy::LastAgent => "last_agent",
            AssignedBy::NoOtherAgent => "no_other_agent",
            AssignedBy::Transfer => "transfer",
            AssignedBy::WriteFirst => "write_first",
        }
    }

    /// The rule named `name` ([`AssignedBy::as_str`]).
    pub fn parse(name: &str) -> Option<AssignedBy> {
        [
            AssignedBy::LongestIdle,
            AssignedBy::LeastBusy,
            AssignedBy::LastAgent,
            AssignedBy::NoOtherAgent,
            AssignedBy::Transfer,
            AssignedBy::WriteFirst,
        ]
        .into_iter()
        .find(|by| by.as_str() == name)
    }
}

impl Conversation {
    /// The bot holding it (`bot:{id}`): its agent while its status is `bot`. A bot is no agent
    /// record, so a close or transfer names it as the one it left all the same.
    pub fn bot_holder(&self) -> Option<&str> {
        self.agent_id
            .as_deref()
            .filter(|_| self.status == ConversationStatus::Bot)
    }

    /// A conversation just opened at `now` in `pool`'s queue, with nothing in it yet: no
    /// skills asked, priority 0, no agent, no message. Stores open theirs from it, setting
    /// what differs (a bot holding it, an agent writing first).
    pub fn opened(
        id: String,
        customer: (&str, &str),
        pool: &str,
        channel: ChannelRef,
        recipient: Sender,
        now: DateTime<Utc>,
    ) -> Conversation {
        let (tenant, customer_id) = customer;
        Conversation {
            id,
            tenant: tenant.to_owned(),
            customer_id: customer_id.to_owned(),
            status: ConversationStatus::Queued,
            pool: pool.to_owned(),
            skills: Skills::default(),
            priority: 0,
            agent_id: None,
            channel,
            recipient,
            last_inbound_id: None,
            last_inbound_at: None,
            replies_since_inbound: 0,
            awaiting_reply_since: None,
            created_at: now,
            updated_at: now,
            queued_at: Some(now),
            assigned_at: None,
            assigned_by: None,
            handover: None,
            offered_at: None,
            offer_expires_at: None,
            closed_at: None,
            close_reason: None,
            message_count: 0,
        }
    }

    /// The same conversation as opened by `agent_id` writing first at `now`: assigned to the
    /// agent at once, never queued (`assigned_by` `write_first`).
    pub fn written_first_by(self, agent_id: &str, now: DateTime<Utc>) -> Conversation {
        Conversation {
            status: ConversationStatus::Assigned,
            agent_id: Some(agent_id.to_owned()),
            queued_at: None,
            assigned_at: Some(now),
            assigned_by: Some(AssignedBy::WriteFirst),
            ..self
        }
    }

    /// [`Conversation::opened`] by `envelope` for `customer_id`: in its tenant, on its channel,
    /// its sender the recipient of replies.
    pub fn opened_by(
        id: String,
        envelope: &crate::envelope::Envelope,
        customer_id: &str,
        pool: &str,
        now: DateTime<Utc>,
    ) -> Conversation {
        Conversation::opened(
            id,
            (&envelope.tenant, customer_id),
            pool,
            envelope.channel.clone(),
            envelope.sender.clone(),
            now,
        )
    }

    /// Whether its agent has left its customer waiting for an answer since before `before`
    /// (a pool's `answer_timeout_secs` ago): assigned with its offer accepted (an offer has its
    /// own timeout), a customer message unanswered since before then, and assigned before then
    /// (each agent's time counts from its assignment).
    pub fn unanswered_since_before(&self, before: DateTime<Utc>) -> bool {
        self.status == ConversationStatus::Assigned
            && self.offered_at.is_none()
            && self.awaiting_reply_since.is_some_and(|at| at < before)
            && self.assigned_at.is_some_and(|at| at < before)
    }
}

/// An agent's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Takes new conversations.
    Online,
    /// Keeps current conversations, takes no new ones.
    Away,
    /// Not working.
    Offline,
}

/// An agent (a human, or a bot acting as one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Agent {
    /// Agent id (chosen by the helpdesk).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Pools the agent takes conversations from.
    pub pools: Vec<String>,
    /// Skills: the agent is offered only conversations asking for skills it all has.
    pub skills: Vec<String>,
    /// Most conversations the agent holds at once.
    pub capacity: u32,
    /// Presence.
    pub status: AgentStatus,
    /// Conversations the agent holds now.
    pub conversations: Vec<String>,
    /// Since when the agent has had no new conversation (longest idle goes first).
    #[serde(serialize_with = "crate::time::rfc3339::serialize")]
    pub idle_since: DateTime<Utc>,
    /// Latest change.
    #[serde(serialize_with = "crate::time::rfc3339::serialize")]
    pub updated_at: DateTime<Utc>,
}

impl Agent {
    /// Whether the agent can take another conversation from `pool` now.
    pub fn can_take(&self, pool: &str) -> bool {
        self.status == AgentStatus::Online
            && self.pools.iter().any(|p| p == pool)
            && (self.conversations.len() as u64) < u64::from(self.capacity)
    }
}
