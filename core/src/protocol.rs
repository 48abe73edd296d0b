//! WebSocket protocols: the visitor socket (`/v1/channels/{id}/ws`) and the agent socket
//! (`/v1/agents/ws`). Every frame is one JSON text message tagged by `type`
//! (`schemas/visitor-ws.v1.json`, `schemas/agent-ws.v1.json`).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{Content, Direction, Envelope};
use crate::identity::IdentityKey;
use crate::model::{Agent, AgentStatus, Conversation, Customer};

/// The most messages in a visitor `welcome`'s `history` (its description in
/// `schemas/visitor-ws.v1.json` names the number too).
pub const VISITOR_HISTORY_LIMIT: usize = 50;

/// Visitor -> server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schemars(title = "Visitor WebSocket: frames from the visitor")]
pub enum VisitorRequest {
    /// Say something. Acknowledged with `ack` once the message is safely on the bus.
    Message {
        /// The visitor's own id for this message; a repeat is not routed twice.
        client_id: String,
        /// What the visitor says.
        content: Content,
    },
    /// Tell who the visitor is: `user_hash` = hex HMAC-SHA256(channel secret, user_id).
    /// Links the anonymous visitor to `web_user:{channel}:{user_id}` (strong) and merges.
    Identify {
        /// The visitor's own id for this request.
        client_id: String,
        /// The site's user id.
        user_id: String,
        /// Proof from the site's backend.
        user_hash: String,
        /// Display name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Further identities the site vouches for (e.g. `phone::+86…`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        identities: Vec<IdentityKey>,
    },
    /// Keep-alive.
    Ping,
}

/// Server -> visitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schemars(title = "Visitor WebSocket: frames to the visitor")]
pub enum VisitorEvent {
    /// First frame: who the server takes the visitor to be. Keep `visitor_token` (e.g. in
    /// localStorage) and pass it as `?visitor_token=` next time to stay the same visitor.
    Welcome {
        /// Anonymous visitor id.
        visitor_id: String,
        /// Signed form of the id, to resume as the same visitor.
        visitor_token: String,
        /// Channel instance id.
        channel_id: String,
        /// The latest messages (at most 50, oldest first) of the visitor's open conversation
        /// that were written on this channel instance or sent to it: what the visitor wrote and
        /// the replies. Empty (or absent) for a new visitor, with no open conversation, or when
        /// it could not be read. Replies still waiting for the visitor follow the welcome as
        /// `message` frames even when they are in it: show each id once.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        history: Vec<HistoryMessage>,
    },
    /// A visitor request was accepted (the message is on the bus).
    Ack {
        /// The request's `client_id`.
        client_id: String,
        /// Envelope id assigned.
        id: String,
        /// Whether this `client_id` had been accepted before.
        duplicate: bool,
    },
    /// A reply from an agent.
    Message {
        /// Envelope id.
        id: String,
        /// What the agent says.
        // Boxed: content is by far the largest field of any frame.
        content: Box<Content>,
        /// When it was sent.
        sent_at: DateTime<Utc>,
        /// Who wrote it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_id: Option<String>,
    },
    /// A request was refused.
    Error {
        /// The request's `client_id`, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// Machine-readable code.
        code: String,
        /// What went wrong.
        message: String,
    },
    /// Answer to `ping`.
    Pong,
    /// Where the visitor's open conversation waits in its pool's queue, sent when that changes
    /// (the server looks every `queue_position_secs` of the channel, 3 s by default).
    /// `position` 1 is the next conversation offered to an agent. `null` once it no longer
    /// waits: an agent or a bot has it, or it was closed; that frame only follows a position.
    Queue {
        /// Place in the queue, from 1 (next); `null`: no longer waiting. Always present.
        #[schemars(schema_with = "queue_position_schema")]
        position: Option<u32>,
        /// About how long it still waits, in seconds, rounded up to whole minutes: its place
        /// divided by how many conversations left the pool's queue per second over the last
        /// 10 minutes, as the gateway saw them leave. Absent until the gateway has seen enough
        /// (3 leave within at least a minute), and when the conversation no longer waits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        estimated_wait_secs: Option<u64>,
    },
}

/// The schema of a `queue` frame's `position`: a place from 1, or `null`, never absent.
fn queue_position_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": ["integer", "null"],
        "format": "uint32",
        "minimum": 1
    })
}

/// A message of the visitor's conversation in `welcome.history`: the fields of a `message`
/// frame, with the direction, so a page shows both kinds alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryMessage {
    /// Envelope id: the `ack` id of a visitor's message, the `message` frame id of a reply.
    pub id: String,
    /// `inbound`: the visitor wrote it; `outbound`: a reply to the visitor.
    pub direction: Direction,
    /// What it says.
    pub content: Content,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// Who wrote a reply, if an agent did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

impl HistoryMessage {
    /// The history item of a recorded message, with the envelope's id.
    pub fn of_envelope(envelope: &Envelope) -> Self {
        HistoryMessage {
            id: envelope.id.clone(),
            direction: envelope.direction,
            content: envelope.content.clone(),
            sent_at: envelope.sent_at,
            agent_id: envelope.agent_id.clone(),
        }
    }
}

/// Agent -> server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schemars(title = "Agent WebSocket: frames from the agent")]
pub enum AgentRequest {
    /// First frame: who the agent is. Creates or updates the agent and sets it online (unless
    /// `status` says otherwise). Answered with `welcome`.
    Hello {
        /// Agent id.
        agent_id: String,
        /// Display name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Pools to take conversations from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pools: Option<Vec<String>>,
        /// Skills: only conversations asking for skills the agent all has are offered to it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skills: Option<Vec<String>>,
        /// Most conversations at once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capacity: Option<u32>,
        /// Presence after hello (default `online`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<AgentStatus>,
    },
    /// Change presence and/or capacity.
    Status {
        /// New presence.
        status: AgentStatus,
        /// New capacity.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capacity: Option<u32>,
    },
    /// Reply to the customer of a conversation the agent holds.
    Reply {
        /// The agent's own id for this request.
        client_id: String,
        /// Conversation.
        conversation_id: String,
        /// What to say.
        content: Content,
    },
    /// Write first to a customer who has no open conversation, on a channel that can address
    /// them: opens a conversation assigned to this agent (`POST /v1/customers/{id}/messages`).
    /// Acknowledged with the message's envelope id; the conversation arrives as `assigned`.
    WriteFirst {
        /// The agent's own id for this request.
        client_id: String,
        /// The customer (a merged-away id stands for the profile it was merged into).
        customer_id: String,
        /// The configured channel to write on.
        channel_id: String,
        /// What to say.
        content: Content,
    },
    /// Close a conversation the agent holds.
    Close {
        /// Conversation.
        conversation_id: String,
    },
    /// Accept a conversation offered to this agent (its `offer_expires_at` is set): it stays.
    /// Answered with `ack` when `client_id` is given; every socket of the agent then gets it
    /// again as `assigned`, without its offer times (`conversation.accepted`).
    Accept {
        /// Conversation.
        conversation_id: String,
        /// Echoed in the `ack`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// Decline a conversation offered to this agent: it goes back to the queue, for another
    /// agent if one can take it, and arrives here as `unassigned` (reason `declined`).
    Decline {
        /// Conversation.
        conversation_id: String,
    },
    /// Hand a conversation to a pool or another agent.
    Transfer {
        /// Conversation.
        conversation_id: String,
        /// Target pool; with `bot`, which of the bot's pools the conversation goes to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
        /// Target agent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_id: Option<String>,
        /// Target bot (a `[[bots]]` id): it holds the conversation in the pool `pool` names, or
        /// in the first pool whose bot it is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bot: Option<String>,
        /// With `pool`: the skills the conversation asks of its next agent from now on (`[]`:
        /// none); absent, it keeps those it asked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        skills: Option<Vec<String>>,
        /// With `pool`: its priority in that pool's queue from now on; absent, it keeps its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        priority: Option<u8>,
        /// What the next one should know: becomes the conversation's `handover` (absent, it
        /// keeps the one it had).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handover: Option<crate::handover::HandoverContext>,
    },
    /// Keep-alive.
    Ping,
}

/// Server -> agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schemars(title = "Agent WebSocket: frames to the agent")]
pub enum AgentEvent {
    /// Answer to `hello`: the agent record and the conversations it holds, with history.
    Welcome {
        /// The agent.
        agent: Agent,
        /// Conversations the agent holds now.
        conversations: Vec<ConversationView>,
    },
    /// A conversation was assigned to this agent; or, sent again, the agent accepted its offer
    /// (over any socket or REST), and it comes without its offer times.
    Assigned {
        /// The conversation with its customer and history.
        conversation: ConversationView,
    },
    /// A customer message in a conversation this agent holds.
    Message {
        /// Conversation id.
        conversation_id: String,
        /// The message.
        message: Envelope,
    },
    /// A conversation left this agent (closed, transferred, merged).
    Unassigned {
        /// Conversation id.
        conversation_id: String,
        /// `closed`, `transferred`, `merged`, another close reason (`idle`, `erased`), or why
        /// it was taken back from the agent (`declined`, `offer_expired`, `unanswered`).
        reason: String,
    },
    /// The agent record changed.
    Agent {
        /// The agent now.
        agent: Agent,
    },
    /// A request was accepted.
    Ack {
        /// The request's `client_id`.
        client_id: String,
        /// Envelope id of a reply, or of the first message of `write_first`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// A request was refused.
    Error {
        /// The request's `client_id`, if it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        /// Machine-readable code.
        code: String,
        /// What went wrong.
        message: String,
    },
    /// Answer to `ping`.
    Pong,
}

/// A conversation as agents and the REST API see it: the record, its customer, its messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationView {
    /// The conversation record.
    #[serde(flatten)]
    pub conversation: Conversation,
    /// Its customer's profile, if it still exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<Customer>,
    /// Latest messages, oldest first.
    pub messages: Vec<Envelope>,
}
