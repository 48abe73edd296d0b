//! Redis implementation of [`Store`] (redis-rs, one multiplexed [`ConnectionManager`]).
//!
//! - Every method that changes state is exactly one Lua script (`core/src/store/redis/*.lua`,
//!   run with EVALSHA through [`Script::invoke_async`], which reloads a script the server lost),
//!   so concurrent routers never read-modify-write across an await: two resolutions of one
//!   person converge on one profile, a conversation is never assigned twice, no agent goes over
//!   capacity. The mailbox operations are scripts too; `set_key` and `delete_key` are single
//!   commands (`SET PX`, `DEL`), atomic on their own, and `claim_key` is a `SET NX PX` (plus a
//!   `GET` of the holder when the key is taken; a script would cost the server more than both
//!   commands). Pure reads run
//!   one read-only script each, so they see one consistent snapshot, and are retried once on an
//!   I/O error.
//! - `route_inbound`, the router's whole work for one inbound message, is one script as well,
//!   composed here rather than written twice: the scripts of `claim_key`, `resolve_customer`,
//!   `record_inbound` and `assign_queued`, each wrapped as a local function of its `ARGV`
//!   (`routine`), then `route_inbound.lua`, which chains them and answers the error reply of a
//!   failing step as its own (the steps before it stay done, as with separate calls). Routing a
//!   message thus costs one `EVALSHA` (one round trip). What a script costs the server is the
//!   `redis.call`s it makes and the Lua around them, so the scripts avoid re-reading what they
//!   know (see docs/benchmarks-amqp.md).
//! - Records that scripts change are hashes of scalar fields (customer, conversation, agent);
//!   collections are lists, sets and sorted sets; messages are a capped list of envelope JSON
//!   strings written and read only by Rust (Lua never decodes or encodes JSON). The key layout
//!   is documented in `docs/redis-keys.md`; every key starts with `{key_prefix}:`, so several
//!   deployments or test runs can share one Redis.
//! - Ids are generated in Rust and passed to the scripts; time is always the caller's `now`
//!   (never the Redis clock), stored as fixed-width RFC 3339 strings with nanoseconds
//!   (`2026-01-01T00:00:00.000000000Z`): they round-trip exactly and compare byte-wise in Lua.
//!   Years outside 0000–9999 are not supported. Only what expires lives in real time on the
//!   server's clock (a `PX` TTL): `P:kv:*` keys, agent presence (`P:presence:*`) and mailboxes
//!   (`P:mailbox:*`, `P:mailbox-items:*`).
//! - Connection, I/O and timeout errors (and any server error) are
//!   [`StoreError::Unavailable`]; a script reports "not found" and conflicts as a reply, before
//!   writing anything, and they become [`StoreError::NotFound`] / [`StoreError::Conflict`] with
//!   the same codes as the embedded store.
//!
//! **Redis Cluster is not supported**: the scripts derive the keys they touch from their
//! arguments (identity owners, merged profiles, agents of a pool), so the keys of one script
//! cannot be declared up front or kept in one hash slot. Use one primary, standalone or with
//! replicas and Sentinel ([`RedisTarget::Sentinel`]; the store follows the primary through
//! failovers, see `link.rs`), with `maxmemory-policy noeviction`: an evicted key would corrupt
//! the state.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{Cmd, RedisError, Script, ScriptInvocation, Value};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};

mod link;
pub mod server;

use link::Link;
pub use link::RedisTarget;

use super::{
    AGENT_AT_CAPACITY, AgentUpdate, Assignment, CONVERSATION_CHANGED, CONVERSATION_OPEN,
    ConversationStart, CustomerConversationsQuery, CustomerUpdate, ERASED_BY_RETENTION, Erasure,
    IDLE_CLOSE_REASON, InboundOutcome, InboundRecord, InboundRouting, MAX_CUSTOMER_ATTRIBUTES,
    MAX_CUSTOMER_TAGS, MailboxHead, MailboxItem, MailboxPush, Merge, MergeClosed, NO_PENDING_OFFER,
    Note, OutboundRecord, Placement, QueueStats, QueueTarget, QuietSweep, Release, Resolution,
    ResolveRequest, SenderResolution, Store, StoreError, TOO_MANY_ATTRIBUTES, TOO_MANY_TAGS,
    TransferTarget, UNKNOWN_CURSOR, Withdrawal, offer_deadline,
};
use crate::envelope::{ChannelRef, Envelope, Sender, new_id};
use crate::handover::Handover;
use crate::identity::{IdentityKey, IdentityStrength};
use crate::model::{
    Agent, AgentStatus, AssignedBy, Conversation, ConversationStatus, Customer, IdentityRecord,
    Skills,
};
use crate::tls::ClientTls;

/// `claim_key` attempts when the held key vanishes between `SET NX` and `GET`.
const CLAIM_ATTEMPTS: usize = 3;

/// Messages kept per conversation; older ones are trimmed from the list.
pub const MAX_MESSAGES_PER_CONVERSATION: usize = 10_000;
/// Longest presence a heartbeat arms.
const MAX_PRESENCE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest life of a mailbox after a push.
const MAX_MAILBOX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Timeout of one connection attempt.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of one command or script.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect attempts (exponential backoff from 100 ms) before a command fails, so an outage
/// is reported within about a second rather than hanging callers and probes.
const RECONNECT_RETRIES: usize = 3;
/// Longest backoff between reconnect attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
/// Longest wait for the first connection in [`RedisStore::connect`].
const INITIAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const PRELUDE: &str = include_str!("redis/prelude.lua");
const CLAIM_LUA: &str = include_str!("redis/claim.lua");
const RESOLVE_LUA: &str = include_str!("redis/resolve.lua");
const RECORD_INBOUND_LUA: &str = include_str!("redis/record_inbound.lua");
const ASSIGN_LUA: &str = include_str!("redis/assign.lua");
const ROUTE_INBOUND_LUA: &str = include_str!("redis/route_inbound.lua");

/// A store script: `body` after `MAX_MESSAGES` and the prelude's shared helpers.
fn script(body: &str) -> Script {
    let conversation_fields = CONVERSATION_FIELDS
        .iter()
        .map(|f| format!("'{f}'"))
        .collect::<Vec<_>>()
        .join(", ");
    Script::new(&format!(
        "local MAX_MESSAGES = {MAX_MESSAGES_PER_CONVERSATION}\n\
         local CONV_FIELDS = {{ {conversation_fields} }}\n{PRELUDE}\n{body}"
    ))
}

/// The fields of a conversation hash that scripts reply (`conv_reply` in `prelude.lua`, as
/// `CONV_FIELDS`), values only, in this order: half the size of the field-value pairs of
/// `HGETALL`, and without the internal fields.
const CONVERSATION_FIELDS: [&str; 26] = [
    "id",
    "tenant",
    "customer_id",
    "status",
    "pool",
    "skills",
    "priority",
    "agent_id",
    "channel_kind",
    "channel_id",
    "recipient",
    "last_inbound_id",
    "last_inbound_at",
    "replies_since_inbound",
    "awaiting_reply_since",
    "created_at",
    "updated_at",
    "queued_at",
    "assigned_at",
    "assigned_by",
    "handover",
    "offered_at",
    "offer_secs",
    "closed_at",
    "close_reason",
    "message_count",
];

/// `body`, a script's top-level code (reading `ARGV`, answering with `return`), as the source
/// of a local function `name(ARGV)` answering that reply, so that one script can run the steps
/// of several others without a copy of their code.
fn routine(name: &str, body: &str) -> String {
    format!("local function {name}(ARGV)\n{body}\nend\n")
}

static RESOLVE: LazyLock<Script> = LazyLock::new(|| script(RESOLVE_LUA));
static RECORD_INBOUND: LazyLock<Script> = LazyLock::new(|| script(RECORD_INBOUND_LUA));
static ASSIGN: LazyLock<Script> = LazyLock::new(|| script(ASSIGN_LUA));
/// [`Store::route_inbound`]: the four scripts above as functions, chained by `route_inbound.lua`.
static ROUTE_INBOUND: LazyLock<Script> = LazyLock::new(|| {
    script(
        &[
            routine("claim_key", CLAIM_LUA),
            routine("resolve_customer", RESOLVE_LUA),
            routine("record_inbound", RECORD_INBOUND_LUA),
            routine("assign_queued", ASSIGN_LUA),
            ROUTE_INBOUND_LUA.to_owned(),
        ]
        .concat(),
    )
});
static RECORD_OUTBOUND: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("redis/record_outbound.lua")));
static UPSERT_AGENT: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("redis/upsert_agent.lua")));
static CLOSE: LazyLock<Script> = LazyLock::new(|| script(include_str!("redis/close.lua")));
static TRANSFER: LazyLock<Script> = LazyLock::new(|| script(include_str!("redis/transfer.lua")));
static OFFER: LazyLock<Script> = LazyLock::new(|| script(include_str!("redis/offer.lua")));
static READS: LazyLock<Script> = LazyLock::new(|| script(include_str!("redis/reads.lua")));
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| script(include_str!("redis/heartbeat.lua")));
static UNANNOUNCED: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("redis/unannounced.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| script(include_str!("redis/release.lua")));
static MAILBOX: LazyLock<Script> = LazyLock::new(|| script(include_str!("redis/mailbox.lua")));
static EXPIRE_CLOSED: LazyLock<Script> = LazyLock::new(|| script(include_str!("redis/expire.lua")));
static ERASE: LazyLock<Script> = LazyLock::new(|| script(include_str!("redis/erase.lua")));
static START: LazyLock<Script> = LazyLock::new(|| script(include_str!("redis/start.lua")));
static UPDATE_CUSTOMER: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("redis/update_customer.lua")));
static SWEEP_PRESENCE: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("redis/sweep_presence.lua")));

/// The Redis store.
#[derive(Clone)]
pub struct RedisStore {
    link: Arc<Link>,
    prefix: String,
    /// Pools whose assignments choose the least busy agent ([`Store::set_least_busy_pools`]).
    least_busy: Arc<std::sync::RwLock<Arc<Vec<String>>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// [`Store::transfer`], or with `waiting` = (pool, time) [`Store::overflow`]: only if the
    /// conversation waits in that pool's queue since before that time.
    async fn transfer_if(
        &self,
        id: &str,
        target: TransferTarget,
        handover: Option<&Handover>,
        waiting: Option<(&str, DateTime<Utc>)>,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError> {
        let mut inv = TRANSFER.prepare_invoke();
        inv.arg(&self.prefix).arg(id).arg(stamp(now));
        match &target {
            TransferTarget::Pool(QueueTarget {
                pool,
                skills,
                priority,
                offer_secs,
            }) => {
                inv.arg("pool").arg(pool);
                match skills {
                    Some(skills) => inv.arg(skills_arg(skills)?),
                    None => inv.arg("keep"),
                };
                inv.arg(priority.map(|p| p.to_string()).unwrap_or_default())
                    .arg(offer_secs);
            }
            TransferTarget::Agent(agent) => {
                inv.arg("agent").arg(agent).arg("").arg("").arg(0);
            }
            TransferTarget::Bot { pool, bot } => {
                inv.arg("bot").arg(bot).arg(pool).arg("").arg(0);
            }
        }
        match handover {
            Some(handover) => inv.arg(json(handover)?),
            None => inv.arg(""),
        };
        if let Some((pool, queued_before)) = waiting {
            inv.arg(pool).arg(stamp(queued_before));
        }
        release(self.eval(&inv, false).await?)
    }

    /// Connects to `url` (`redis://host:6379/0`, `rediss://…`, `?protocol=resp3` allowed) and
    /// keeps every key under `{key_prefix}:`. Fails with [`StoreError::Unavailable`] when Redis
    /// does not answer within a few seconds.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self, StoreError> {
        let target = RedisTarget::Url {
            url: url.to_owned(),
            tls: ClientTls::default(),
        };
        Self::connect_to(&target, key_prefix).await
    }

    /// Connects to the master of `target` (a URL, or through Redis Sentinel) and keeps every key
    /// under `{key_prefix}:`. After a failover, the store reconnects to the new master when a
    /// command finds the old one gone or read-only (see [`RedisTarget`]).
    pub async fn connect_to(target: &RedisTarget, key_prefix: &str) -> Result<Self, StoreError> {
        Ok(Self {
            link: Arc::new(Link::connect(target).await?),
            prefix: key_prefix.to_owned(),
            least_busy: Arc::default(),
        })
    }

    /// What matters of the server this store talks to, from `INFO`
    /// ([`server::ServerInfo::findings`] says what is wrong with it).
    pub async fn server_info(&self) -> Result<server::ServerInfo, StoreError> {
        match self.command(&::redis::cmd("INFO")).await? {
            Value::BulkString(bytes) => {
                Ok(server::ServerInfo::parse(&String::from_utf8_lossy(&bytes)))
            }
            Value::VerbatimString { text, .. } => Ok(server::ServerInfo::parse(&text)),
            other => Err(StoreError::Unavailable(format!(
                "INFO answered something unexpected: {other:?}"
            ))),
        }
    }

    /// The key prefix (without the trailing `:`).
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    fn kv_key(&self, key: &str) -> String {
        format!("{}:kv:{key}", self.prefix)
    }

    /// Runs a script. `idempotent` ones (reads) are retried once after an I/O error; the
    /// connection manager reconnects meanwhile. Any script is retried once on a new connection
    /// when the server turned out to be a replica (a script refused with `READONLY` wrote
    /// nothing).
    async fn eval(
        &self,
        invocation: &ScriptInvocation<'_>,
        idempotent: bool,
    ) -> Result<Value, StoreError> {
        let (mut con, generation) = self.link.get();
        let e = match invocation.invoke_async::<Value>(&mut con).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(mut con) = self.after_error(&e, generation, idempotent).await? else {
            return Err(unavailable(e));
        };
        tracing::debug!(error = %e, "Redis script failed; retrying once");
        invocation.invoke_async(&mut con).await.map_err(unavailable)
    }

    /// Runs one idempotent command, retried once after an I/O error or on a new connection.
    async fn command(&self, cmd: &Cmd) -> Result<Value, StoreError> {
        self.query(cmd, true).await
    }

    /// Runs one command; `idempotent` ones are retried once after an I/O error, and any is
    /// retried once on a new connection when the server turned out to be a replica.
    async fn query(&self, cmd: &Cmd, idempotent: bool) -> Result<Value, StoreError> {
        let (mut con, generation) = self.link.get();
        let e = match cmd.query_async::<Value>(&mut con).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(mut con) = self.after_error(&e, generation, idempotent).await? else {
            return Err(unavailable(e));
        };
        tracing::debug!(error = %e, "Redis command failed; retrying once");
        cmd.query_async(&mut con).await.map_err(unavailable)
    }

    /// What to retry on after `e` on connection `generation`: a new connection when the old one
    /// lost the master, the same one after an I/O error of an `idempotent` call, or nothing
    /// (`None`: the error stands).
    async fn after_error(
        &self,
        e: &RedisError,
        generation: u64,
        idempotent: bool,
    ) -> Result<Option<ConnectionManager>, StoreError> {
        let read_only = e.code() == Some("READONLY");
        if self.link.lost_master(e) {
            tracing::warn!(error = %e, "the Redis connection lost the master; reconnecting");
            self.link.replace(generation).await?;
            if read_only || idempotent {
                return Ok(Some(self.link.get().0));
            }
            return Ok(None);
        }
        Ok((idempotent && retryable(e)).then(|| self.link.get().0))
    }

    /// `assign.lua`: [`Store::assign_queued`], or with `noted` [`Store::assign_queued_noted`].
    async fn assign(
        &self,
        pool: &str,
        now: DateTime<Utc>,
        noted: bool,
    ) -> Result<Vec<Assignment>, StoreError> {
        let mut inv = ASSIGN.prepare_invoke();
        let least_busy = self.least_busy_pools().iter().any(|p| p == pool);
        inv.arg(&self.prefix)
            .arg(pool)
            .arg(stamp(now))
            .arg(if noted { "noted" } else { "" })
            .arg(flag(least_busy));
        assignments(self.eval(&inv, false).await?)
    }

    /// The pools set by [`Store::set_least_busy_pools`].
    fn least_busy_pools(&self) -> Arc<Vec<String>> {
        match self.least_busy.read() {
            Ok(pools) => Arc::clone(&pools),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    async fn read(&self, op: &str, arg: &str) -> Result<Value, StoreError> {
        let mut inv = READS.prepare_invoke();
        inv.arg(&self.prefix).arg(op).arg(arg);
        self.eval(&inv, true).await
    }

    /// The `ARGV` of `claim.lua`.
    fn claim_args(&self, key: &str, value: &str, ttl: Duration) -> Vec<String> {
        vec![
            self.kv_key(key),
            value.to_owned(),
            ttl_millis(ttl).to_string(),
        ]
    }

    /// The `ARGV` of `resolve.lua`, with the id of a profile it may create.
    fn resolve_args(&self, req: &ResolveRequest) -> Vec<String> {
        let mut args = vec![
            self.prefix.clone(),
            req.tenant.clone(),
            flag(req.explicit).to_owned(),
            flag(req.display_name.is_some()).to_owned(),
            req.display_name.clone().unwrap_or_default(),
            stamp(req.now),
            new_id(),
            req.identities.len().to_string(),
        ];
        for (key, strength) in &req.identities {
            args.push(key.as_str().to_owned());
            args.push(strength_name(*strength).to_owned());
        }
        args.push(req.source.clone().unwrap_or_default());
        args
    }

    /// The `ARGV` of `record_inbound.lua`, with the id of a conversation it may open where
    /// `placement` says.
    fn record_args(
        &self,
        envelope: &Envelope,
        placement: &Placement,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        Ok(vec![
            self.prefix.clone(),
            envelope.id.clone(),
            flag(envelope.customer_id.is_some()).to_owned(),
            envelope.customer_id.clone().unwrap_or_default(),
            placement.pool.clone(),
            stamp(now),
            new_id(),
            envelope.tenant.clone(),
            envelope.channel.kind.clone(),
            envelope.channel.id.clone(),
            json(&envelope.sender)?,
            json(envelope)?,
            placement.bot.clone().unwrap_or_default(),
            skills_arg(&placement.skills)?,
            placement.priority.to_string(),
            flag(placement.prefer_last_agent).to_owned(),
            placement.offer_secs.to_string(),
        ])
    }
}

/// Skills as the scripts take them: the JSON array, which with the priority also names the
/// queue of the conversations asking for them (`P:sub-queue:{pool}|{priority}|{skills}`); empty
/// for none.
fn skills_arg(skills: &Skills) -> Result<String, StoreError> {
    if skills.is_empty() {
        Ok(String::new())
    } else {
        json(skills)
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn retryable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout()
}

/// Milliseconds for `PX`, at least 1 (Redis refuses 0), rounded up.
/// The trailing arguments of a script that pushes `push` to a mailbox with its change
/// (`mailbox_push` in the prelude): key, item id, item, max length, ttl in ms.
fn push_args(inv: &mut redis::ScriptInvocation<'_>, push: &MailboxPush<'_>) {
    inv.arg(push.key)
        .arg(push.id)
        .arg(push.body)
        .arg(push.max_len.max(1))
        .arg(ttl_millis(push.ttl.min(MAX_MAILBOX_TTL)));
}

fn ttl_millis(ttl: Duration) -> u64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000).max(1);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn flag(b: bool) -> &'static str {
    if b { "1" } else { "0" }
}

fn strength_name(s: IdentityStrength) -> &'static str {
    match s {
        IdentityStrength::Strong => "strong",
        IdentityStrength::Weak => "weak",
    }
}

fn agent_status_name(s: AgentStatus) -> &'static str {
    match s {
        AgentStatus::Online => "online",
        AgentStatus::Away => "away",
        AgentStatus::Offline => "offline",
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Unavailable(format!("cannot encode for Redis: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Replies

fn bad(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply from Redis: {what}"))
}

fn is_none(v: &Value) -> bool {
    matches!(v, Value::Nil | Value::Boolean(false))
}

fn text(v: Value) -> Result<String, StoreError> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).map_err(|_| bad("a string is not UTF-8")),
        Value::SimpleString(s) => Ok(s),
        Value::VerbatimString { text, .. } => Ok(text),
        Value::Int(i) => Ok(i.to_string()),
        Value::Okay => Ok("OK".to_owned()),
        other => Err(bad(format_args!("expected a string, got {other:?}"))),
    }
}

fn opt_text(v: Value) -> Result<Option<String>, StoreError> {
    if is_none(&v) {
        Ok(None)
    } else {
        text(v).map(Some)
    }
}

fn list(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        Value::Map(pairs) => Ok(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        other => Err(bad(format_args!("expected an array, got {other:?}"))),
    }
}

fn texts(v: Value) -> Result<Vec<String>, StoreError> {
    list(v)?.into_iter().map(text).collect()
}

/// A flat `HGETALL` reply as a map.
fn fields(v: Value) -> Result<HashMap<String, String>, StoreError> {
    let items = list(v)?;
    if items.len() % 2 != 0 {
        return Err(bad("odd number of hash fields"));
    }
    let mut map = HashMap::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        map.insert(text(k)?, text(v)?);
    }
    Ok(map)
}

/// The elements of an array reply, taken in order.
struct Items(std::vec::IntoIter<Value>);

impl Items {
    fn of(v: Value) -> Result<Self, StoreError> {
        Ok(Self(list(v)?.into_iter()))
    }

    fn next(&mut self) -> Result<Value, StoreError> {
        self.0.next().ok_or_else(|| bad("reply too short"))
    }
}

/// A reply `{tag, ...}`: `err` replies become the matching [`StoreError`].
fn tagged(v: Value) -> Result<(String, Items), StoreError> {
    let mut items = Items::of(v)?;
    let tag = text(items.next()?)?;
    if tag != "err" {
        return Ok((tag, items));
    }
    let kind = text(items.next()?)?;
    let a = text(items.next()?)?;
    let b = text(items.next()?)?;
    Err(match kind.as_str() {
        "not_found" => StoreError::NotFound {
            kind: record_kind(&a),
            id: b,
        },
        "conflict" => StoreError::Conflict {
            code: conflict_code(&a),
            message: b,
        },
        other => bad(format_args!("unknown error kind `{other}`")),
    })
}

fn record_kind(s: &str) -> &'static str {
    match s {
        "customer" => "customer",
        "conversation" => "conversation",
        "agent" => "agent",
        _ => "record",
    }
}

fn conflict_code(s: &str) -> &'static str {
    match s {
        "conversation_closed" => "conversation_closed",
        "not_assigned_to_agent" => "not_assigned_to_agent",
        "already_assigned" => "already_assigned",
        "agent_unavailable" => "agent_unavailable",
        "customer_unresolved" => "customer_unresolved",
        CONVERSATION_CHANGED => CONVERSATION_CHANGED,
        "customer_has_open_conversation" => "customer_has_open_conversation",
        CONVERSATION_OPEN => CONVERSATION_OPEN,
        AGENT_AT_CAPACITY => AGENT_AT_CAPACITY,
        TOO_MANY_TAGS => TOO_MANY_TAGS,
        TOO_MANY_ATTRIBUTES => TOO_MANY_ATTRIBUTES,
        UNKNOWN_CURSOR => UNKNOWN_CURSOR,
        NO_PENDING_OFFER => NO_PENDING_OFFER,
        _ => "conflict",
    }
}

fn time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| bad(format_args!("timestamp `{s}`: {e}")))
}

/// A record's fields, with the record named in errors.
struct Fields {
    what: &'static str,
    map: HashMap<String, String>,
}

impl Fields {
    fn take(&mut self, name: &str) -> Option<String> {
        self.map.remove(name)
    }

    fn req(&mut self, name: &str) -> Result<String, StoreError> {
        self.take(name)
            .ok_or_else(|| bad(format_args!("{} lacks `{name}`", self.what)))
    }

    fn time(&mut self, name: &str) -> Result<DateTime<Utc>, StoreError> {
        time(&self.req(name)?)
    }

    fn opt_time(&mut self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.take(name).map(|s| time(&s)).transpose()
    }

    fn num<T: std::str::FromStr>(&mut self, name: &str) -> Result<T, StoreError> {
        self.opt_num(name)?
            .ok_or_else(|| bad(format_args!("{} lacks `{name}`", self.what)))
    }

    fn opt_num<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>, StoreError> {
        let what = self.what;
        self.take(name)
            .map(|s| {
                s.parse()
                    .map_err(|_| bad(format_args!("{what} field `{name}` = `{s}`")))
            })
            .transpose()
    }
}

/// A `conv_reply`: the values of [`CONVERSATION_FIELDS`], in order, absent ones nil (all of
/// them when the conversation does not exist).
fn conversation(v: Value) -> Result<Option<Conversation>, StoreError> {
    let values = list(v)?;
    if values.len() != CONVERSATION_FIELDS.len() {
        return Err(bad(format_args!(
            "a conversation reply has {} values, not {}",
            values.len(),
            CONVERSATION_FIELDS.len()
        )));
    }
    let mut map = HashMap::with_capacity(values.len());
    for (name, value) in CONVERSATION_FIELDS.iter().zip(values) {
        if let Some(value) = opt_text(value)? {
            map.insert((*name).to_owned(), value);
        }
    }
    if map.is_empty() {
        return Ok(None);
    }
    let mut f = Fields {
        what: "conversation",
        map,
    };
    let status = match f.req("status")?.as_str() {
        "bot" => ConversationStatus::Bot,
        "queued" => ConversationStatus::Queued,
        "assigned" => ConversationStatus::Assigned,
        "closed" => ConversationStatus::Closed,
        other => return Err(bad(format_args!("conversation status `{other}`"))),
    };
    let recipient: Sender = serde_json::from_str(&f.req("recipient")?)
        .map_err(|e| bad(format_args!("conversation recipient: {e}")))?;
    let offered_at = f.opt_time("offered_at")?;
    let offer_secs: u64 = f.opt_num("offer_secs")?.unwrap_or(0);
    Ok(Some(Conversation {
        id: f.req("id")?,
        tenant: f.req("tenant")?,
        customer_id: f.req("customer_id")?,
        status,
        pool: f.req("pool")?,
        skills: match f.take("skills") {
            Some(skills) => serde_json::from_str(&skills)
                .map_err(|e| bad(format_args!("conversation skills: {e}")))?,
            None => Skills::default(),
        },
        priority: f.opt_num("priority")?.unwrap_or(0),
        agent_id: f.take("agent_id"),
        channel: ChannelRef {
            kind: f.req("channel_kind")?,
            id: f.req("channel_id")?,
        },
        recipient,
        last_inbound_id: f.take("last_inbound_id"),
        last_inbound_at: f.opt_time("last_inbound_at")?,
        replies_since_inbound: f.opt_num("replies_since_inbound")?.unwrap_or(0),
        awaiting_reply_since: f.opt_time("awaiting_reply_since")?,
        created_at: f.time("created_at")?,
        updated_at: f.time("updated_at")?,
        queued_at: f.opt_time("queued_at")?,
        assigned_at: f.opt_time("assigned_at")?,
        assigned_by: match f.take("assigned_by") {
            Some(by) => Some(
                AssignedBy::parse(&by)
                    .ok_or_else(|| bad(format_args!("conversation assigned_by `{by}`")))?,
            ),
            None => None,
        },
        handover: match f.take("handover") {
            Some(handover) => Some(
                serde_json::from_str(&handover)
                    .map_err(|e| bad(format_args!("conversation handover: {e}")))?,
            ),
            None => None,
        },
        offered_at,
        offer_expires_at: offered_at.and_then(|at| offer_deadline(at, offer_secs)),
        closed_at: f.opt_time("closed_at")?,
        close_reason: f.take("close_reason"),
        message_count: f.num("message_count")?,
    }))
}

/// Statuses as the read scripts take them: `,`-separated names, empty for every status.
fn status_list(statuses: &[ConversationStatus]) -> String {
    statuses
        .iter()
        .map(|s| match s {
            ConversationStatus::Bot => "bot",
            ConversationStatus::Queued => "queued",
            ConversationStatus::Assigned => "assigned",
            ConversationStatus::Closed => "closed",
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn some_conversation(v: Value) -> Result<Conversation, StoreError> {
    conversation(v)?.ok_or_else(|| bad("the conversation vanished"))
}

/// `{hash, pools, skills, conversations}`.
fn agent(v: Value) -> Result<Agent, StoreError> {
    let mut items = Items::of(v)?;
    let mut f = Fields {
        what: "agent",
        map: fields(items.next()?)?,
    };
    let status = match f.req("status")?.as_str() {
        "online" => AgentStatus::Online,
        "away" => AgentStatus::Away,
        "offline" => AgentStatus::Offline,
        other => return Err(bad(format_args!("agent status `{other}`"))),
    };
    Ok(Agent {
        id: f.req("id")?,
        name: f.req("name")?,
        pools: texts(items.next()?)?,
        skills: texts(items.next()?)?,
        capacity: f.num("capacity")?,
        status,
        conversations: texts(items.next()?)?,
        idle_since: f.time("idle_since")?,
        updated_at: f.time("updated_at")?,
    })
}

fn opt_agent(v: Value) -> Result<Option<Agent>, StoreError> {
    if is_none(&v) {
        Ok(None)
    } else {
        agent(v).map(Some)
    }
}

fn identity_key(s: String) -> Result<IdentityKey, StoreError> {
    s.parse()
        .map_err(|e| bad(format_args!("stored identity key: {e}")))
}

/// `{hash, identity keys, identity info, merged_from, tags, attributes}`.
fn customer(v: Value) -> Result<Customer, StoreError> {
    let mut items = Items::of(v)?;
    let mut f = Fields {
        what: "customer",
        map: fields(items.next()?)?,
    };
    let keys = texts(items.next()?)?;
    let mut info = fields(items.next()?)?;
    let mut identities = Vec::with_capacity(keys.len());
    for k in keys {
        let entry = info
            .remove(&k)
            .ok_or_else(|| bad(format_args!("identity `{k}` has no record")))?;
        let (strength, linked_at) = entry
            .split_once('|')
            .ok_or_else(|| bad(format_args!("identity record `{entry}`")))?;
        let strength = match strength {
            "strong" => IdentityStrength::Strong,
            "weak" => IdentityStrength::Weak,
            other => return Err(bad(format_args!("identity strength `{other}`"))),
        };
        identities.push(IdentityRecord {
            key: identity_key(k)?,
            strength,
            linked_at: time(linked_at)?,
        });
    }
    let merged_from = texts(items.next()?)?;
    let tags = texts(items.next()?)?;
    let mut attributes = serde_json::Map::new();
    for (k, v) in fields(items.next()?)? {
        let value = serde_json::from_str(&v)
            .map_err(|e| bad(format_args!("customer attribute `{k}`: {e}")))?;
        attributes.insert(k, value);
    }
    Ok(Customer {
        id: f.req("id")?,
        tenant: f.req("tenant")?,
        display_name: f.take("display_name"),
        identities,
        merged_from,
        tags,
        attributes,
        first_seen: f.time("first_seen")?,
        last_seen: f.time("last_seen")?,
    })
}

fn opt_customer(v: Value) -> Result<Option<Customer>, StoreError> {
    if is_none(&v) {
        Ok(None)
    } else {
        customer(v).map(Some)
    }
}

/// `resolve.lua`'s reply: `{'ok', created, customer, merges, linked, closed, customer id}`, each
/// closed conversation as `{conversation, the agent or bot it released or false}`.
fn resolution(v: Value) -> Result<Resolution, StoreError> {
    let parts = ResolutionParts::of(v)?;
    let customer = parts
        .profile
        .ok_or_else(|| bad("resolve_customer answered without the profile"))?;
    Ok(Resolution {
        customer,
        created: parts.created,
        merges: parts.merges,
        linked: parts.linked,
        closed: parts.closed,
    })
}

/// `resolve.lua`'s reply when asked for the profile only if an event announces it (`false`
/// in its place otherwise).
fn sender_resolution(v: Value) -> Result<SenderResolution, StoreError> {
    let parts = ResolutionParts::of(v)?;
    Ok(SenderResolution {
        customer_id: parts.customer_id,
        profile: parts.profile,
        created: parts.created,
        merges: parts.merges,
        closed: parts.closed,
    })
}

/// The fields of `resolve.lua`'s reply.
struct ResolutionParts {
    created: bool,
    profile: Option<Customer>,
    merges: Vec<Merge>,
    linked: Vec<IdentityKey>,
    closed: Vec<MergeClosed>,
    customer_id: String,
}

impl ResolutionParts {
    fn of(v: Value) -> Result<Self, StoreError> {
        let (_, mut items) = tagged(v)?;
        let created = text(items.next()?)? == "1";
        let profile = opt_customer(items.next()?)?;
        let mut merges = Vec::new();
        for m in list(items.next()?)? {
            let mut m = Items::of(m)?;
            merges.push(Merge {
                from: text(m.next()?)?,
                into: text(m.next()?)?,
                via: texts(m.next()?)?
                    .into_iter()
                    .map(identity_key)
                    .collect::<Result<_, _>>()?,
            });
        }
        let linked = texts(items.next()?)?
            .into_iter()
            .map(identity_key)
            .collect::<Result<_, _>>()?;
        let mut closed = Vec::new();
        for c in list(items.next()?)? {
            let mut c = Items::of(c)?;
            closed.push(MergeClosed {
                conversation: some_conversation(c.next()?)?,
                released_holder: opt_text(c.next()?)?,
            });
        }
        Ok(ResolutionParts {
            created,
            profile,
            merges,
            linked,
            closed,
            customer_id: text(items.next()?)?,
        })
    }
}

/// `record_inbound.lua`'s reply: `{'ok' | 'dup', created, conversation}`.
fn inbound_record(v: Value) -> Result<InboundRecord, StoreError> {
    let (tag, mut items) = tagged(v)?;
    let created = text(items.next()?)? == "1";
    Ok(InboundRecord {
        conversation: some_conversation(items.next()?)?,
        created,
        duplicate: tag == "dup",
    })
}

/// `assign.lua`'s reply: `{{conversation, agent id}...}`.
fn assignments(v: Value) -> Result<Vec<Assignment>, StoreError> {
    list(v)?
        .into_iter()
        .map(|a| {
            let mut a = Items::of(a)?;
            Ok(Assignment {
                conversation: some_conversation(a.next()?)?,
                agent_id: text(a.next()?)?,
                replayed: false,
            })
        })
        .collect()
}

/// `route_inbound.lua`'s reply: `{'dup', holder}` or `{'routed', resolution, record,
/// assignments}`.
fn inbound_outcome(v: Value) -> Result<InboundOutcome, StoreError> {
    let (tag, mut items) = tagged(v)?;
    match tag.as_str() {
        "dup" => Ok(InboundOutcome::Duplicate {
            first: text(items.next()?)?,
        }),
        "routed" => Ok(InboundOutcome::Routed {
            resolution: sender_resolution(items.next()?)?,
            record: inbound_record(items.next()?)?,
            assignments: assignments(items.next()?)?,
        }),
        other => Err(bad(format_args!("route_inbound answered `{other}`"))),
    }
}

/// `{'ok', conversation, released agent or nil}`.
/// An erasure as `erase.lua` replies it: `{customer, tenant, reason, {merged...}, {conv...}}`.
fn erasure(v: Value) -> Result<Erasure, StoreError> {
    let mut items = Items::of(v)?;
    Ok(Erasure {
        customer_id: text(items.next()?)?,
        tenant: text(items.next()?)?,
        reason: text(items.next()?)?,
        merged_from: texts(items.next()?)?,
        conversations: texts(items.next()?)?,
    })
}

fn release(v: Value) -> Result<Release, StoreError> {
    let (_, mut items) = tagged(v)?;
    Ok(Release {
        conversation: some_conversation(items.next()?)?,
        released_agent: opt_agent(items.next()?)?,
        // A transfer and a close reply the bot they took the conversation from.
        released_bot: items.0.next().map(opt_text).transpose()?.flatten(),
    })
}

// ---------------------------------------------------------------------------------------------

#[async_trait]
impl Store for RedisStore {
    async fn claim_key(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        // No script: a new key (the common case) costs one plain `SET NX`; only a held key
        // costs a `GET` for its holder, and one that vanished in between (expired or released)
        // is claimed again.
        let full = self.kv_key(key);
        for _ in 0..CLAIM_ATTEMPTS {
            let mut set = ::redis::cmd("SET");
            set.arg(&full)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(ttl_millis(ttl));
            // Not retried after an I/O error: a claim that reached the server before the error
            // would answer ourselves.
            let claimed = self.query(&set, false).await?;
            if !is_none(&claimed) {
                return Ok(None);
            }
            let mut get = ::redis::cmd("GET");
            get.arg(&full);
            if let Some(holder) = opt_text(self.command(&get).await?)? {
                return Ok(Some(holder));
            }
        }
        Err(StoreError::Unavailable(format!(
            "the claim on `{key}` changed hands {CLAIM_ATTEMPTS} times in a row"
        )))
    }

    async fn set_key(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(self.kv_key(key))
            .arg(value)
            .arg("PX")
            .arg(ttl_millis(ttl));
        self.command(&cmd).await.map(drop)
    }

    async fn get_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut cmd = ::redis::cmd("GET");
        cmd.arg(self.kv_key(key));
        opt_text(self.command(&cmd).await?)
    }

    async fn delete_key(&self, key: &str) -> Result<(), StoreError> {
        let mut cmd = ::redis::cmd("DEL");
        cmd.arg(self.kv_key(key));
        self.command(&cmd).await.map(drop)
    }

    async fn release_key(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        let mut inv = RELEASE.prepare_invoke();
        inv.arg(&self.prefix).arg(self.kv_key(key)).arg(value);
        // Retrying is safe: once deleted, the key no longer holds our value.
        Ok(text(self.eval(&inv, true).await?)? == "1")
    }

    async fn resolve_customer(&self, req: ResolveRequest) -> Result<Resolution, StoreError> {
        let mut inv = RESOLVE.prepare_invoke();
        inv.arg(self.resolve_args(&req));
        resolution(self.eval(&inv, false).await?)
    }

    async fn resolve_customer_noted(&self, req: ResolveRequest) -> Result<Resolution, StoreError> {
        let mut inv = RESOLVE.prepare_invoke();
        // The whole profile (not only when announced), then the notes.
        inv.arg(self.resolve_args(&req)).arg("whole").arg("noted");
        resolution(self.eval(&inv, false).await?)
    }

    async fn customer(&self, id: &str) -> Result<Option<Customer>, StoreError> {
        opt_customer(self.read("customer", id).await?)
    }

    async fn customer_by_identity(
        &self,
        key: &IdentityKey,
    ) -> Result<Option<Customer>, StoreError> {
        opt_customer(self.read("customer_by_identity", key.as_str()).await?)
    }

    async fn record_inbound(
        &self,
        envelope: &Envelope,
        placement: &Placement,
        now: DateTime<Utc>,
    ) -> Result<InboundRecord, StoreError> {
        let mut inv = RECORD_INBOUND.prepare_invoke();
        inv.arg(self.record_args(envelope, placement, now)?);
        inbound_record(self.eval(&inv, false).await?)
    }

    async fn route_inbound(&self, req: InboundRouting<'_>) -> Result<InboundOutcome, StoreError> {
        let claim = self.claim_args(&req.claim, &req.envelope.id, req.claim_ttl);
        let mut resolve = self.resolve_args(&req.resolve);
        // Routing needs the profile only for the events that announce it; merges are noted.
        resolve.push("announced".to_owned());
        resolve.push("noted".to_owned());
        // The script replaces the customer fields with the customer it resolves.
        let record = self.record_args(req.envelope, &req.placement, req.resolve.now)?;
        let mut inv = ROUTE_INBOUND.prepare_invoke();
        inv.arg(&self.prefix);
        for section in [&claim, &resolve, &record] {
            inv.arg(section.len()).arg(section);
        }
        let least_busy = self.least_busy_pools();
        if least_busy.is_empty() {
            inv.arg("");
        } else {
            inv.arg(least_busy.join(","));
        }
        inbound_outcome(self.eval(&inv, false).await?)
    }

    async fn assign_queued(
        &self,
        pool: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Assignment>, StoreError> {
        self.assign(pool, now, false).await
    }

    async fn assign_queued_noted(
        &self,
        pool: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Assignment>, StoreError> {
        self.assign(pool, now, true).await
    }

    async fn unannounced(&self, before: DateTime<Utc>) -> Result<Vec<Note>, StoreError> {
        let mut inv = UNANNOUNCED.prepare_invoke();
        inv.arg(&self.prefix)
            .arg("list")
            .arg(stamp(before))
            .arg(before.timestamp_millis());
        let mut items = list(self.eval(&inv, true).await?)?.into_iter();
        let mut notes = Vec::new();
        while let Some(key) = items.next() {
            let key = text(key)?;
            let detail = opt_text(
                items
                    .next()
                    .ok_or_else(|| bad("a note without its detail"))?,
            )?;
            match Note::from_key(&key, detail) {
                Some(note) => notes.push(note),
                // A kind a newer version notes (during a rolling upgrade): left for a process
                // that can announce it, without holding back the notes this one can.
                None => tracing::warn!(
                    note = %key,
                    "a change noted in a form this version cannot read; left for a newer version"
                ),
            }
        }
        Ok(notes)
    }

    async fn clear_notes(&self, notes: &[Note]) -> Result<(), StoreError> {
        if notes.is_empty() {
            return Ok(());
        }
        let mut inv = UNANNOUNCED.prepare_invoke();
        inv.arg(&self.prefix).arg("clear");
        for note in notes {
            inv.arg(note.key());
        }
        // Clearing what is gone already changes nothing, so a retry is safe.
        self.eval(&inv, true).await.map(drop)
    }

    async fn upsert_agent(
        &self,
        update: AgentUpdate,
        now: DateTime<Utc>,
    ) -> Result<Agent, StoreError> {
        let mut inv = UPSERT_AGENT.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(&update.id)
            .arg(stamp(now))
            .arg(flag(update.name.is_some()))
            .arg(update.name.as_deref().unwrap_or_default())
            .arg(flag(update.capacity.is_some()))
            .arg(update.capacity.unwrap_or_default())
            .arg(flag(update.status.is_some()))
            .arg(update.status.map(agent_status_name).unwrap_or_default());
        for items in [&update.pools, &update.skills] {
            let items = items.as_deref();
            inv.arg(flag(items.is_some()))
                .arg(items.map_or(0, <[String]>::len));
            for item in items.unwrap_or_default() {
                inv.arg(item);
            }
        }
        agent(self.eval(&inv, false).await?)
    }

    async fn heartbeat_agent(
        &self,
        id: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // 0 ends the session; any other TTL is at least 1 ms (`PX` refuses 0) and at most a
        // year (as in the embedded store; `PX` refuses what overflows the server's clock).
        let ms = if ttl.is_zero() {
            0
        } else {
            ttl_millis(ttl.min(MAX_PRESENCE_TTL))
        };
        let mut inv = HEARTBEAT.prepare_invoke();
        inv.arg(&self.prefix).arg(id).arg(ms).arg(stamp(now));
        let (_, mut items) = tagged(self.eval(&inv, false).await?)?;
        Ok(text(items.next()?)? == "1")
    }

    async fn expire_lapsed_agents(&self, now: DateTime<Utc>) -> Result<Vec<Agent>, StoreError> {
        let mut inv = SWEEP_PRESENCE.prepare_invoke();
        inv.arg(&self.prefix).arg(stamp(now));
        list(self.eval(&inv, false).await?)?
            .into_iter()
            .map(agent)
            .collect()
    }

    async fn agent(&self, id: &str) -> Result<Option<Agent>, StoreError> {
        opt_agent(self.read("agent", id).await?)
    }

    async fn agents(&self) -> Result<Vec<Agent>, StoreError> {
        let mut agents = list(self.read("agents", "").await?)?
            .into_iter()
            .map(agent)
            .collect::<Result<Vec<_>, _>>()?;
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(agents)
    }

    async fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        conversation(self.read("conversation", id).await?)
    }

    async fn open_conversation(
        &self,
        customer_id: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        let open = conversation(self.read("open_conversation", customer_id).await?)?;
        Ok(open.filter(|c| c.status != ConversationStatus::Closed))
    }

    async fn messages(
        &self,
        conversation_id: &str,
        limit: usize,
    ) -> Result<Vec<Envelope>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = format!("-{}", limit.min(MAX_MESSAGES_PER_CONVERSATION));
        let mut inv = READS.prepare_invoke();
        inv.arg(&self.prefix)
            .arg("messages")
            .arg(start)
            .arg(conversation_id);
        let mut items = Items::of(self.eval(&inv, true).await?)?;
        // Messages always belong to their conversation's customer (a merge moves them along),
        // so both ids are filled in from the conversation rather than rewritten in Lua.
        let customer_id = opt_text(items.next()?)?;
        texts(items.next()?)?
            .into_iter()
            .map(|raw| {
                let mut e: Envelope = serde_json::from_str(&raw)
                    .map_err(|e| bad(format_args!("stored envelope: {e}")))?;
                if customer_id.is_some() {
                    e.customer_id.clone_from(&customer_id);
                }
                e.conversation_id = Some(conversation_id.to_owned());
                Ok(e)
            })
            .collect()
    }

    async fn agent_conversations(&self, agent_id: &str) -> Result<Vec<Conversation>, StoreError> {
        let (_, mut items) = tagged(self.read("agent_conversations", agent_id).await?)?;
        list(items.next()?)?
            .into_iter()
            .map(some_conversation)
            .collect()
    }

    async fn queue(&self, pool: &str) -> Result<Vec<String>, StoreError> {
        texts(self.read("queue", pool).await?)
    }

    fn set_least_busy_pools(&self, pools: &[String]) {
        let mut set = match self.least_busy.write() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        *set = Arc::new(pools.to_vec());
    }

    async fn queue_stats(&self, pool: &str) -> Result<QueueStats, StoreError> {
        let mut inv = READS.prepare_invoke();
        inv.arg(&self.prefix).arg("queue_stats").arg(pool);
        let mut reply = list(self.eval(&inv, true).await?)?.into_iter();
        let depth = reply
            .next()
            .ok_or_else(|| bad("queue_stats without a depth"))?;
        let depth = text(depth)?
            .parse::<usize>()
            .map_err(|e| bad(format_args!("a queue depth: {e}")))?;
        let oldest_queued_at = match reply.next() {
            Some(at) => opt_text(at)?.map(|at| time(&at)).transpose()?,
            None => None,
        };
        Ok(QueueStats {
            depth,
            oldest_queued_at,
        })
    }

    async fn customer_conversations(
        &self,
        customer_id: &str,
        query: &CustomerConversationsQuery,
    ) -> Result<Vec<Conversation>, StoreError> {
        let mut inv = READS.prepare_invoke();
        inv.arg(&self.prefix)
            .arg("customer_conversations")
            .arg(customer_id)
            .arg(status_list(&query.statuses))
            .arg(query.before.as_deref().unwrap_or_default())
            .arg(query.limit);
        let (_, mut items) = tagged(self.eval(&inv, true).await?)?;
        list(items.next()?)?
            .into_iter()
            .map(some_conversation)
            .collect()
    }

    async fn pool_conversations(
        &self,
        pool: &str,
        statuses: &[ConversationStatus],
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        let mut inv = READS.prepare_invoke();
        inv.arg(&self.prefix)
            .arg("pool_conversations")
            .arg(pool)
            .arg(status_list(statuses))
            .arg(limit);
        list(self.eval(&inv, true).await?)?
            .into_iter()
            .map(some_conversation)
            .collect()
    }

    async fn idle_bot_conversations(
        &self,
        pool: &str,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Conversation>, StoreError> {
        let mut inv = READS.prepare_invoke();
        inv.arg(&self.prefix)
            .arg("idle_bot")
            .arg(pool)
            .arg(stamp(before))
            .arg(limit.max(1));
        list(self.eval(&inv, true).await?)?
            .into_iter()
            .map(some_conversation)
            .collect()
    }

    async fn record_outbound(
        &self,
        conversation_id: &str,
        agent_id: Option<&str>,
        envelope: &Envelope,
        now: DateTime<Utc>,
        stage: Option<MailboxPush<'_>>,
    ) -> Result<OutboundRecord, StoreError> {
        let mut inv = RECORD_OUTBOUND.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(conversation_id)
            .arg(flag(agent_id.is_some()))
            .arg(agent_id.unwrap_or_default())
            .arg(&envelope.id)
            .arg(json(envelope)?)
            .arg(stamp(now));
        if let Some(push) = stage {
            push_args(&mut inv, &push);
        }
        let (tag, mut items) = tagged(self.eval(&inv, false).await?)?;
        Ok(OutboundRecord {
            conversation: some_conversation(items.next()?)?,
            duplicate: tag == "dup",
        })
    }

    async fn start_conversation(
        &self,
        start: ConversationStart<'_>,
    ) -> Result<Conversation, StoreError> {
        let envelope = start.envelope;
        let mut inv = START.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(envelope.customer_id.as_deref().unwrap_or_default())
            .arg(start.agent_id)
            .arg(envelope.conversation_id.clone().unwrap_or_else(new_id))
            .arg(start.pool)
            .arg(stamp(start.now))
            .arg(&envelope.tenant)
            .arg(&envelope.channel.kind)
            .arg(&envelope.channel.id)
            .arg(json(&envelope.sender)?)
            .arg(&envelope.id)
            .arg(json(envelope)?)
            .arg(if start.remember_agent { "1" } else { "" });
        if let Some(push) = start.stage {
            push_args(&mut inv, &push);
        }
        let (_, mut items) = tagged(self.eval(&inv, false).await?)?;
        some_conversation(items.next()?)
    }

    async fn close_conversation(
        &self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError> {
        let mut inv = CLOSE.prepare_invoke();
        inv.arg(&self.prefix).arg(id).arg(reason).arg(stamp(now));
        release(self.eval(&inv, false).await?)
    }

    async fn close_idle(
        &self,
        id: &str,
        unchanged_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError> {
        let mut inv = CLOSE.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(id)
            .arg(IDLE_CLOSE_REASON)
            .arg(stamp(now))
            .arg(stamp(unchanged_before));
        release(self.eval(&inv, false).await?)
    }

    async fn expire_closed(
        &self,
        closed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let mut inv = EXPIRE_CLOSED.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(stamp(closed_before))
            .arg(limit.max(1));
        let handled = text(self.eval(&inv, true).await?)?;
        handled
            .parse()
            .map_err(|_| bad(format_args!("expire_closed answered `{handled}`")))
    }

    async fn erase_customer(
        &self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Erasure, StoreError> {
        let mut inv = ERASE.prepare_invoke();
        inv.arg(&self.prefix)
            .arg("one")
            .arg(id)
            .arg(reason)
            .arg(stamp(now));
        let (_, mut items) = tagged(self.eval(&inv, false).await?)?;
        erasure(items.next()?)
    }

    async fn erase_quiet_customers(
        &self,
        quiet_before: DateTime<Utc>,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<QuietSweep, StoreError> {
        let mut inv = ERASE.prepare_invoke();
        inv.arg(&self.prefix)
            .arg("quiet")
            .arg(stamp(quiet_before))
            .arg(limit.max(1))
            .arg(stamp(now))
            .arg(ERASED_BY_RETENTION);
        let mut items = list(self.eval(&inv, false).await?)?.into_iter();
        let handled = items
            .next()
            .ok_or_else(|| bad("erase quiet: empty reply"))
            .and_then(text)?;
        Ok(QuietSweep {
            handled: handled
                .parse()
                .map_err(|_| bad(format_args!("erase quiet answered `{handled}`")))?,
            erased: items.map(erasure).collect::<Result<_, _>>()?,
        })
    }

    async fn update_customer(
        &self,
        id: &str,
        update: &CustomerUpdate,
        now: DateTime<Utc>,
    ) -> Result<Customer, StoreError> {
        let mut inv = UPDATE_CUSTOMER.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(id)
            .arg(stamp(now))
            .arg(MAX_CUSTOMER_TAGS)
            .arg(MAX_CUSTOMER_ATTRIBUTES);
        for tags in [&update.remove_tags, &update.add_tags] {
            inv.arg(tags.len());
            for tag in tags {
                inv.arg(tag);
            }
        }
        let (unset, set): (Vec<_>, Vec<_>) = update
            .attributes
            .iter()
            .partition(|(_, value)| value.is_null());
        inv.arg(set.len());
        for (name, value) in set {
            inv.arg(name).arg(json(value)?);
        }
        inv.arg(unset.len());
        for (name, _) in unset {
            inv.arg(name);
        }
        let (_, mut items) = tagged(self.eval(&inv, false).await?)?;
        customer(items.next()?)
    }

    async fn transfer(
        &self,
        id: &str,
        target: TransferTarget,
        handover: Option<&Handover>,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError> {
        self.transfer_if(id, target, handover, None, now).await
    }

    async fn overflow(
        &self,
        id: &str,
        pool: &str,
        queued_before: DateTime<Utc>,
        target: QueueTarget,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError> {
        self.transfer_if(
            id,
            TransferTarget::Pool(target),
            None,
            Some((pool, queued_before)),
            now,
        )
        .await
    }

    async fn accept_offer(
        &self,
        id: &str,
        agent_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Conversation, StoreError> {
        let mut inv = OFFER.prepare_invoke();
        inv.arg(&self.prefix)
            .arg("accept")
            .arg(id)
            .arg(agent_id)
            .arg(stamp(now));
        let (_, mut items) = tagged(self.eval(&inv, false).await?)?;
        some_conversation(items.next()?)
    }

    async fn take_back(
        &self,
        id: &str,
        agent_id: &str,
        why: Withdrawal,
        now: DateTime<Utc>,
    ) -> Result<Release, StoreError> {
        let mut inv = OFFER.prepare_invoke();
        inv.arg(&self.prefix)
            .arg("withdraw")
            .arg(id)
            .arg(agent_id)
            .arg(stamp(now));
        match why {
            Withdrawal::Declined => inv.arg("declined"),
            Withdrawal::Expired { offered_at } => inv.arg("expired").arg(stamp(offered_at)),
            Withdrawal::Unanswered { before, sets_away } => inv
                .arg("unanswered")
                .arg(stamp(before))
                .arg(if sets_away { "1" } else { "0" }),
        };
        release(self.eval(&inv, false).await?)
    }

    async fn pending_offers(&self) -> Result<Vec<Conversation>, StoreError> {
        let mut inv = READS.prepare_invoke();
        inv.arg(&self.prefix).arg("pending_offers").arg("");
        list(self.eval(&inv, true).await?)?
            .into_iter()
            .map(some_conversation)
            .collect()
    }

    async fn mailbox_push(
        &self,
        key: &str,
        id: &str,
        body: &str,
        max_len: usize,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut inv = MAILBOX.prepare_invoke();
        inv.arg(&self.prefix)
            .arg("push")
            .arg(key)
            .arg(id)
            .arg(body)
            .arg(max_len.max(1))
            .arg(ttl_millis(ttl.min(MAX_MAILBOX_TTL)));
        // Not retried: a push that reached the server before the error would answer `false`.
        Ok(text(self.eval(&inv, false).await?)? == "1")
    }

    async fn mailbox_head(&self, key: &str, limit: usize) -> Result<MailboxHead, StoreError> {
        let mut inv = MAILBOX.prepare_invoke();
        inv.arg(&self.prefix).arg("read").arg(key);
        if let Ok(limit) = i64::try_from(limit) {
            inv.arg(limit);
        }
        let mut flat = texts(self.eval(&inv, true).await?)?.into_iter();
        let len = flat
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("a mailbox read without its length"))?;
        if flat.len() % 2 != 0 {
            return Err(bad("odd number of mailbox fields"));
        }
        let mut items = Vec::with_capacity(flat.len() / 2);
        while let (Some(id), Some(body)) = (flat.next(), flat.next()) {
            items.push(MailboxItem { id, body });
        }
        Ok(MailboxHead { items, len })
    }

    async fn mailbox_ack(&self, key: &str, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut inv = MAILBOX.prepare_invoke();
        inv.arg(&self.prefix).arg("ack").arg(key);
        for id in ids {
            inv.arg(id);
        }
        // Removing what is gone already changes nothing, so a retry is safe.
        self.eval(&inv, true).await.map(drop)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self.command(&::redis::cmd("PING")).await? {
            Value::SimpleString(s) if s == "PONG" => Ok(()),
            Value::BulkString(b) if b == b"PONG" => Ok(()),
            other => Err(bad(format_args!("PING answered {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_fixed_width_and_round_trip() {
        let t = DateTime::from_timestamp(1_767_225_600, 123_456_789).unwrap();
        let s = stamp(t);
        assert_eq!(s, "2026-01-01T00:00:00.123456789Z");
        assert_eq!(time(&s).unwrap(), t);
        let whole = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        assert_eq!(stamp(whole).len(), s.len());
        assert!(stamp(whole) < s);
    }

    #[test]
    fn ttl_is_at_least_one_millisecond() {
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_millis(Duration::from_secs(60)), 60_000);
    }

    #[test]
    fn conversation_replies_are_positional() {
        let nil = || Value::Nil;
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let absent = Value::Array(CONVERSATION_FIELDS.iter().map(|_| nil()).collect());
        assert!(conversation(absent).unwrap().is_none());
        let short = Value::Array(vec![bulk("c-1")]);
        assert!(matches!(
            conversation(short),
            Err(StoreError::Unavailable(_))
        ));

        let stamp = "2026-01-01T00:00:00.000000000Z";
        let recipient = r#"{"external_id":"u1","scope":"shop-app","identities":[]}"#;
        let value = |field: &str| match field {
            "id" => Some("c-1"),
            "tenant" => Some("default"),
            "customer_id" => Some("cu-1"),
            "status" => Some("assigned"),
            "pool" => Some("default"),
            "skills" => Some(r#"["billing","zh"]"#),
            "priority" => Some("3"),
            "agent_id" => Some("a-1"),
            "channel_kind" => Some("api"),
            "channel_id" => Some("shop-app"),
            "recipient" => Some(recipient),
            "replies_since_inbound" => Some("2"),
            "created_at" | "updated_at" | "assigned_at" => Some(stamp),
            "message_count" => Some("7"),
            _ => None,
        };
        let reply = Value::Array(
            CONVERSATION_FIELDS
                .iter()
                .map(|f| value(f).map_or_else(nil, bulk))
                .collect(),
        );
        let c = conversation(reply).unwrap().unwrap();
        assert_eq!(
            (c.id.as_str(), c.customer_id.as_str(), c.agent_id.as_deref()),
            ("c-1", "cu-1", Some("a-1"))
        );
        assert_eq!(c.status, ConversationStatus::Assigned);
        assert_eq!(c.skills, Skills::new(["zh", "billing"]));
        assert_eq!(c.priority, 3);
        assert_eq!(
            (c.channel.kind.as_str(), c.channel.id.as_str()),
            ("api", "shop-app")
        );
        assert_eq!((c.replies_since_inbound, c.message_count), (2, 7));
        assert_eq!(c.assigned_at, Some(time(stamp).unwrap()));
        assert_eq!(
            (c.queued_at, c.closed_at, c.close_reason),
            (None, None, None)
        );
    }

    #[test]
    fn script_errors_map_to_store_errors() {
        let reply = |items: &[&str]| {
            Value::Array(
                items
                    .iter()
                    .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                    .collect(),
            )
        };
        assert!(matches!(
            tagged(reply(&["err", "not_found", "agent", "a-1"])),
            Err(StoreError::NotFound { kind: "agent", id }) if id == "a-1"
        ));
        assert!(matches!(
            tagged(reply(&["err", "conflict", "conversation_closed", "closed"])),
            Err(StoreError::Conflict {
                code: "conversation_closed",
                ..
            })
        ));
        assert!(tagged(reply(&["ok"])).is_ok());
    }
}
