//! The [`Store`] conformance suite: dedupe, identity resolution and merges, one open conversation
//! per customer, idempotent recording, longest-idle assignment within capacity, FIFO queues,
//! outbound checks, transfers, routing a message in one call, and concurrent callers converging
//! (DESIGN.md "Guarantees").
//!
//! Every identity key value, agent id and pool name a case creates starts with the case's prefix;
//! times are fixed instants ([`at`]) passed as `now`, except for dedupe TTLs, which are real time.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::MakeStore;
use crate::envelope::{ChannelRef, Content, DEFAULT_TENANT, Direction, Envelope, Sender, new_id};
use crate::handover::{Handover, HandoverContext, Sentiment, SlotValue};
use crate::identity::{IdentityKey, IdentityStrength};
use crate::model::{
    Agent, AgentStatus, AssignedBy, Conversation, ConversationStatus, Customer, Skills,
};
use crate::store::{
    AGENT_AT_CAPACITY, AgentUpdate, Assignment, CONVERSATION_CHANGED, CONVERSATION_OPEN,
    ConversationStart, CustomerConversationsQuery, CustomerUpdate, ERASED_BY_RETENTION,
    ERASED_ON_REQUEST, Erasure, InboundOutcome, InboundRecord, InboundRouting,
    MAX_CUSTOMER_ATTRIBUTES, MAX_CUSTOMER_TAGS, MailboxPush, Merge, NO_PENDING_OFFER, Note,
    NoteKind, OPEN_STATUSES, Placement, QueueStats, QueueTarget, QuietSweep, Release, Resolution,
    ResolveRequest, SenderResolution, Store, StoreError, TOO_MANY_ATTRIBUTES, TOO_MANY_TAGS,
    TransferTarget, UNKNOWN_CURSOR, Withdrawal, route_inbound_stepwise,
};

use IdentityStrength::{Strong, Weak};

/// The instant `secs` seconds after the suite's fixed epoch (2026-01-01T00:00:00Z).
pub fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).expect("valid epoch") + TimeDelta::seconds(secs)
}

/// The API channel `shop-app`.
pub fn app_channel() -> ChannelRef {
    ChannelRef {
        kind: "api".to_owned(),
        id: "shop-app".to_owned(),
    }
}

/// The WeChat Official Account channel `oa-main`.
pub fn wechat_channel() -> ChannelRef {
    ChannelRef {
        kind: "wechat_oa".to_owned(),
        id: "oa-main".to_owned(),
    }
}

/// The identity key `kind:scope:{prefix}{value}`.
pub fn key(prefix: &str, kind: &str, scope: &str, value: &str) -> IdentityKey {
    IdentityKey::new(kind, scope, &format!("{prefix}{value}"))
        .unwrap_or_else(|e| panic!("test identity key: {e}"))
}

/// An inbound text envelope from `external_id` on `channel`, already resolved to `customer_id`.
pub fn inbound_envelope(
    customer_id: &str,
    channel: &ChannelRef,
    external_id: &str,
    identities: Vec<IdentityKey>,
    text: &str,
    now: DateTime<Utc>,
) -> Envelope {
    let id = new_id();
    Envelope {
        id: id.clone(),
        tenant: DEFAULT_TENANT.to_owned(),
        direction: Direction::Inbound,
        channel: channel.clone(),
        sender: Sender {
            external_id: external_id.to_owned(),
            scope: channel.id.clone(),
            display_name: None,
            identities,
        },
        customer_id: Some(customer_id.to_owned()),
        conversation_id: None,
        sent_at: now,
        received_at: now,
        dedupe_key: format!("{}:{id}", channel.id),
        content: Content::Text {
            text: text.to_owned(),
        },
        reply_to: None,
        agent_id: None,
        raw: None,
    }
}

/// A message from app user `user` (the strong key `app_user:shop-app:{user}`, resolved first),
/// recorded in `pool` at `now`; returns its conversation's id.
pub async fn message_from(
    store: &Arc<dyn Store>,
    user: &str,
    pool: &str,
    now: DateTime<Utc>,
) -> String {
    let k = key("", "app_user", "shop-app", user);
    let customer = resolve(store, &[(&k, Strong)], false, now).await.customer;
    let envelope = inbound_envelope(&customer.id, &app_channel(), user, vec![k], "hi", now);
    record(store, &envelope, pool, now).await.conversation.id
}

/// An agent's reply in `conversation`.
pub fn outbound_envelope(
    conversation: &Conversation,
    agent_id: &str,
    now: DateTime<Utc>,
) -> Envelope {
    let id = new_id();
    Envelope {
        id: id.clone(),
        tenant: conversation.tenant.clone(),
        direction: Direction::Outbound,
        channel: conversation.channel.clone(),
        sender: conversation.recipient.clone(),
        customer_id: Some(conversation.customer_id.clone()),
        conversation_id: Some(conversation.id.clone()),
        sent_at: now,
        received_at: now,
        dedupe_key: format!("out:{id}"),
        content: Content::Text {
            text: "how can I help?".to_owned(),
        },
        reply_to: conversation.last_inbound_id.clone(),
        agent_id: Some(agent_id.to_owned()),
        raw: None,
    }
}

/// The conflict code of an error, if it is a [`StoreError::Conflict`].
fn conflict_code(e: &StoreError) -> Option<&'static str> {
    match e {
        StoreError::Conflict { code, .. } => Some(code),
        _ => None,
    }
}

async fn resolve(
    store: &Arc<dyn Store>,
    identities: &[(&IdentityKey, IdentityStrength)],
    explicit: bool,
    now: DateTime<Utc>,
) -> Resolution {
    store
        .resolve_customer(ResolveRequest {
            tenant: DEFAULT_TENANT.to_owned(),
            identities: identities.iter().map(|(k, s)| ((*k).clone(), *s)).collect(),
            explicit,
            display_name: None,
            now,
            source: None,
        })
        .await
        .unwrap_or_else(|e| panic!("resolve_customer({identities:?}): {e}"))
}

async fn record(
    store: &Arc<dyn Store>,
    envelope: &Envelope,
    pool: &str,
    now: DateTime<Utc>,
) -> InboundRecord {
    record_placed(store, envelope, &Placement::queued(pool), now).await
}

async fn record_placed(
    store: &Arc<dyn Store>,
    envelope: &Envelope,
    placement: &Placement,
    now: DateTime<Utc>,
) -> InboundRecord {
    store
        .record_inbound(envelope, placement, now)
        .await
        .unwrap_or_else(|e| panic!("record_inbound({}): {e}", envelope.id))
}

/// A new customer (one strong app-user key `{prefix}{name}`) writing once; returns the customer,
/// the envelope and its (queued) conversation.
async fn open(
    store: &Arc<dyn Store>,
    prefix: &str,
    name: &str,
    pool: &str,
    now: DateTime<Utc>,
) -> (Customer, Envelope, Conversation) {
    let k = key(prefix, "app_user", "shop-app", name);
    let customer = resolve(store, &[(&k, Strong)], false, now).await.customer;
    let e = inbound_envelope(&customer.id, &app_channel(), name, vec![k], "hello", now);
    let rec = record(store, &e, pool, now).await;
    assert!(rec.created, "a first message did not open a conversation");
    (customer, e, rec.conversation)
}

/// A new customer `{prefix}{name}` writing once, opening a conversation in `pool` that asks for
/// `skills`; returns its id.
async fn open_asking(
    store: &Arc<dyn Store>,
    prefix: &str,
    name: &str,
    pool: &str,
    skills: &[&str],
    now: DateTime<Utc>,
) -> String {
    let placement = Placement::queued(pool).with_skills(Skills::new(skills.iter().copied()));
    open_placed(store, prefix, name, &placement, now).await
}

/// A new customer `{prefix}{name}` writing once, opening a conversation placed by `placement`;
/// returns its id.
async fn open_placed(
    store: &Arc<dyn Store>,
    prefix: &str,
    name: &str,
    placement: &Placement,
    now: DateTime<Utc>,
) -> String {
    let k = key(prefix, "app_user", "shop-app", name);
    let customer = resolve(store, &[(&k, Strong)], false, now).await.customer;
    let e = inbound_envelope(&customer.id, &app_channel(), name, vec![k], "hello", now);
    let rec = record_placed(store, &e, placement, now).await;
    assert!(rec.created, "a first message did not open a conversation");
    rec.conversation.id
}

/// Agent `id` online in `pools` with `capacity` and `skills`.
async fn skilled_agent(
    store: &Arc<dyn Store>,
    id: &str,
    pools: &[&str],
    capacity: u32,
    skills: &[&str],
    now: DateTime<Utc>,
) -> Agent {
    update_agent(
        store,
        AgentUpdate {
            id: id.to_owned(),
            name: None,
            pools: Some(pools.iter().map(|p| (*p).to_owned()).collect()),
            skills: Some(skills.iter().map(|s| (*s).to_owned()).collect()),
            capacity: Some(capacity),
            status: Some(AgentStatus::Online),
        },
        now,
    )
    .await
}

async fn agent(
    store: &Arc<dyn Store>,
    id: &str,
    pools: &[&str],
    capacity: u32,
    status: AgentStatus,
    now: DateTime<Utc>,
) -> Agent {
    store
        .upsert_agent(
            AgentUpdate {
                id: id.to_owned(),
                name: Some(format!("Agent {id}")),
                pools: Some(pools.iter().map(|p| (*p).to_owned()).collect()),
                skills: Some(Vec::new()),
                capacity: Some(capacity),
                status: Some(status),
            },
            now,
        )
        .await
        .unwrap_or_else(|e| panic!("upsert_agent({id}): {e}"))
}

async fn update_agent(store: &Arc<dyn Store>, update: AgentUpdate, now: DateTime<Utc>) -> Agent {
    let id = update.id.clone();
    store
        .upsert_agent(update, now)
        .await
        .unwrap_or_else(|e| panic!("upsert_agent({id}): {e}"))
}

/// Sets agent `id`'s capacity, nothing else (the store assigns nothing by itself).
async fn set_capacity(
    store: &Arc<dyn Store>,
    id: &str,
    capacity: u32,
    now: DateTime<Utc>,
) -> Agent {
    update_agent(
        store,
        AgentUpdate {
            id: id.to_owned(),
            capacity: Some(capacity),
            ..AgentUpdate::default()
        },
        now,
    )
    .await
}

async fn get_agent(store: &Arc<dyn Store>, id: &str) -> Agent {
    store
        .agent(id)
        .await
        .unwrap_or_else(|e| panic!("agent({id}): {e}"))
        .unwrap_or_else(|| panic!("agent `{id}` does not exist"))
}

async fn get_conversation(store: &Arc<dyn Store>, id: &str) -> Conversation {
    store
        .conversation(id)
        .await
        .unwrap_or_else(|e| panic!("conversation({id}): {e}"))
        .unwrap_or_else(|| panic!("conversation `{id}` does not exist"))
}

async fn get_customer(store: &Arc<dyn Store>, id: &str) -> Customer {
    store
        .customer(id)
        .await
        .unwrap_or_else(|e| panic!("customer({id}): {e}"))
        .unwrap_or_else(|| panic!("customer `{id}` does not exist"))
}

async fn owner(store: &Arc<dyn Store>, k: &IdentityKey) -> Option<Customer> {
    store
        .customer_by_identity(k)
        .await
        .unwrap_or_else(|e| panic!("customer_by_identity({k}): {e}"))
}

async fn queue(store: &Arc<dyn Store>, pool: &str) -> Vec<String> {
    store
        .queue(pool)
        .await
        .unwrap_or_else(|e| panic!("queue({pool}): {e}"))
}

async fn assign(store: &Arc<dyn Store>, pool: &str, now: DateTime<Utc>) -> Vec<Assignment> {
    store
        .assign_queued(pool, now)
        .await
        .unwrap_or_else(|e| panic!("assign_queued({pool}): {e}"))
}

async fn message_ids(store: &Arc<dyn Store>, conversation_id: &str) -> Vec<String> {
    store
        .messages(conversation_id, 1000)
        .await
        .unwrap_or_else(|e| panic!("messages({conversation_id}): {e}"))
        .into_iter()
        .map(|m| m.id)
        .collect()
}

fn pairs(assignments: &[Assignment]) -> Vec<(String, String)> {
    assignments
        .iter()
        .map(|a| (a.conversation.id.clone(), a.agent_id.clone()))
        .collect()
}

/// How each assignment's agent was chosen ([`Conversation::assigned_by`]).
fn rules(assignments: &[Assignment]) -> Vec<Option<AssignedBy>> {
    assignments
        .iter()
        .map(|a| a.conversation.assigned_by)
        .collect()
}

fn has_key(c: &Customer, k: &IdentityKey) -> bool {
    c.identities.iter().any(|r| &r.key == k)
}

/// Dedupe keys: a claim wins once and later claimers see the holder's value; `set_key`
/// overwrites the value and TTL; a released claim can be won again; a claim expires after its TTL;
/// `release_key` releases only the holder's own claim.
pub async fn dedupe_claim_release_ttl(factory: &impl MakeStore, prefix: &str) {
    let what = "dedupe_claim_release_ttl";
    let store = factory.make().await;
    let k1 = format!("{prefix}dedupe:oa-main:msg-1");
    let k2 = format!("{prefix}dedupe:oa-main:msg-2");
    let long = Duration::from_secs(60);
    let claim = |k: &str, value: &str, ttl: Duration| {
        let store = Arc::clone(&store);
        let (k, value) = (k.to_owned(), value.to_owned());
        async move {
            store
                .claim_key(&k, &value, ttl)
                .await
                .unwrap_or_else(|e| panic!("claim_key({k}): {e}"))
        }
    };
    let set = |k: &str, value: &str, ttl: Duration| {
        let store = Arc::clone(&store);
        let (k, value) = (k.to_owned(), value.to_owned());
        async move {
            store
                .set_key(&k, &value, ttl)
                .await
                .unwrap_or_else(|e| panic!("set_key({k}): {e}"))
        }
    };
    assert_eq!(
        claim(&k1, "env-1", long).await,
        None,
        "{what}: first claim refused"
    );
    assert_eq!(
        claim(&k1, "env-2", long).await.as_deref(),
        Some("env-1"),
        "{what}: a duplicate claim must lose and see the holder's value"
    );
    set(&k1, "env-1:accepted", long).await;
    assert_eq!(
        claim(&k1, "env-3", long).await.as_deref(),
        Some("env-1:accepted"),
        "{what}: set_key did not overwrite the value"
    );
    assert_eq!(
        claim(&k2, "b", long).await,
        None,
        "{what}: an unrelated key was refused"
    );
    store
        .delete_key(&k1)
        .await
        .unwrap_or_else(|e| panic!("{what}: delete_key: {e}"));
    assert_eq!(
        claim(&k1, "env-4", long).await,
        None,
        "{what}: a released key could not be claimed again (the channel's retry would be lost)"
    );
    assert_eq!(
        claim(&k2, "b2", long).await.as_deref(),
        Some("b"),
        "{what}: releasing k1 released k2"
    );
    store
        .delete_key(&format!("{prefix}dedupe:never-claimed"))
        .await
        .unwrap_or_else(|e| panic!("{what}: releasing an unclaimed key failed: {e}"));

    let k3 = format!("{prefix}dedupe:oa-main:msg-3");
    let k4 = format!("{prefix}dedupe:oa-main:msg-4");
    let short = Duration::from_millis(300);
    assert_eq!(
        claim(&k3, "c", short).await,
        None,
        "{what}: short claim refused"
    );
    assert_eq!(
        claim(&k3, "c2", short).await.as_deref(),
        Some("c"),
        "{what}: claim within TTL won"
    );
    assert_eq!(
        claim(&k4, "d", short).await,
        None,
        "{what}: short claim refused"
    );
    set(&k4, "d:accepted", long).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        claim(&k3, "c3", short).await,
        None,
        "{what}: a claim did not expire after its TTL"
    );
    assert_eq!(
        claim(&k4, "d2", short).await.as_deref(),
        Some("d:accepted"),
        "{what}: set_key did not replace the TTL"
    );

    // `release_key` gives up a claim only while it is still ours: `c` expired and `c3` holds k3.
    let release = |k: &str, value: &str| {
        let store = Arc::clone(&store);
        let (k, value) = (k.to_owned(), value.to_owned());
        async move {
            store
                .release_key(&k, &value)
                .await
                .unwrap_or_else(|e| panic!("release_key({k}): {e}"))
        }
    };
    assert!(
        !release(&k3, "c").await,
        "{what}: an expired claim released its successor's"
    );
    assert_eq!(
        claim(&k3, "c4", long).await.as_deref(),
        Some("c3"),
        "{what}: releasing an expired claim deleted its successor's"
    );
    assert!(
        release(&k3, "c3").await,
        "{what}: the holder could not release"
    );
    assert_eq!(
        claim(&k3, "c5", long).await,
        None,
        "{what}: a released claim could not be claimed again"
    );
    assert!(
        !release(&format!("{prefix}dedupe:never-claimed"), "x").await,
        "{what}: released a key nobody claimed"
    );
}

/// Two profiles each holding a strong key merge when one request carries both keys: the oldest
/// survives, records `merged_from`, reports the merge with the keys that caused it, and answers
/// lookups by either key and by the merged-away id.
pub async fn strong_identities_merge(factory: &impl MakeStore, prefix: &str) {
    let what = "strong_identities_merge";
    let store = factory.make().await;
    let a_key = key(prefix, "app_user", "shop-app", "42");
    let b_key = key(prefix, "wechat_unionid", "", "u42");
    let c_key = key(prefix, "phone", "", "+8613800000042");

    let ra = resolve(&store, &[(&a_key, Strong)], false, at(1)).await;
    assert!(ra.created, "{what}: a new key did not create a profile");
    assert!(
        ra.merges.is_empty(),
        "{what}: a new profile reported merges"
    );
    assert!(
        has_key(&ra.customer, &a_key),
        "{what}: key not recorded on profile"
    );
    let again = resolve(&store, &[(&a_key, Strong)], false, at(2)).await;
    assert!(
        !again.created && again.customer.id == ra.customer.id,
        "{what}: the same key resolved to a different or new profile"
    );
    let rb = resolve(&store, &[(&b_key, Strong)], false, at(3)).await;
    assert!(
        rb.created,
        "{what}: second key did not create its own profile"
    );
    let (a, b) = (ra.customer.id.clone(), rb.customer.id.clone());
    assert_ne!(a, b, "{what}: two unrelated keys share a profile");

    // The newer profile's key first: the oldest profile must still survive.
    let r = resolve(&store, &[(&b_key, Strong), (&a_key, Strong)], false, at(4)).await;
    assert_eq!(
        r.customer.id, a,
        "{what}: the oldest profile must survive a merge"
    );
    assert!(!r.created, "{what}: a merge reported a created profile");
    assert_eq!(
        r.merges,
        vec![Merge {
            from: b.clone(),
            into: a.clone(),
            via: vec![b_key.clone()],
        }],
        "{what}: merges reported"
    );
    assert!(
        r.customer.merged_from.contains(&b),
        "{what}: merged_from lacks the merged profile: {:?}",
        r.customer.merged_from
    );
    for k in [&a_key, &b_key] {
        let n = r.customer.identities.iter().filter(|i| &i.key == k).count();
        assert_eq!(n, 1, "{what}: survivor lists key {k} {n} times");
    }
    assert_eq!(
        r.customer.first_seen,
        at(1),
        "{what}: first_seen of the survivor"
    );
    for k in [&a_key, &b_key] {
        let got = owner(&store, k).await.map(|c| c.id);
        assert_eq!(got.as_deref(), Some(a.as_str()), "{what}: lookup by {k}");
    }
    assert_eq!(
        get_customer(&store, &b).await.id,
        a,
        "{what}: the merged-away id must answer with the survivor"
    );
    let again = resolve(&store, &[(&b_key, Strong), (&a_key, Strong)], false, at(5)).await;
    assert!(
        again.merges.is_empty() && again.customer.id == a,
        "{what}: resolving merged keys again merged again"
    );

    // A third profile joins; redirects of earlier merges still hold.
    let rc = resolve(&store, &[(&c_key, Strong)], false, at(6)).await;
    let c = rc.customer.id.clone();
    let r = resolve(&store, &[(&c_key, Strong), (&b_key, Strong)], false, at(7)).await;
    assert_eq!(r.customer.id, a, "{what}: third merge survivor");
    assert_eq!(r.merges.len(), 1, "{what}: third merge: {:?}", r.merges);
    assert_eq!(r.merges[0].from, c, "{what}: third merge `from`");
    assert_eq!(
        r.merges[0].via,
        vec![c_key.clone()],
        "{what}: third merge `via`"
    );
    assert!(
        r.customer.merged_from.contains(&b) && r.customer.merged_from.contains(&c),
        "{what}: merged_from after two merges: {:?}",
        r.customer.merged_from
    );
    for id in [&a, &b, &c] {
        assert_eq!(
            get_customer(&store, id).await.id,
            a,
            "{what}: lookup of `{id}`"
        );
    }
}

/// Weak keys never merge profiles implicitly (the request resolves to the first key's profile and
/// a weak key held elsewhere stays there); with `explicit: true` they do.
pub async fn weak_identities_merge_only_explicitly(factory: &impl MakeStore, prefix: &str) {
    let what = "weak_identities_merge_only_explicitly";
    let store = factory.make().await;
    let w1 = key(prefix, "web_visitor", "web", "v1");
    let w2 = key(prefix, "web_visitor", "web", "v2");
    let s = key(prefix, "phone", "", "+8613800000001");
    let a = resolve(&store, &[(&w1, Weak)], false, at(1))
        .await
        .customer
        .id;
    let b = resolve(&store, &[(&w2, Weak)], false, at(2))
        .await
        .customer
        .id;
    let c = resolve(&store, &[(&s, Strong)], false, at(3))
        .await
        .customer
        .id;
    assert!(
        a != b && b != c && a != c,
        "{what}: distinct keys share profiles"
    );

    let r = resolve(&store, &[(&w1, Weak), (&w2, Weak)], false, at(4)).await;
    assert!(
        r.merges.is_empty(),
        "{what}: weak keys merged implicitly: {:?}",
        r.merges
    );
    assert_eq!(
        r.customer.id, a,
        "{what}: should resolve to the first key's profile"
    );
    assert!(
        !has_key(&r.customer, &w2),
        "{what}: a weak key held by another profile was copied onto this one"
    );
    assert_eq!(
        owner(&store, &w2).await.map(|c| c.id),
        Some(b.clone()),
        "{what}: owner of w2"
    );
    assert_eq!(
        get_customer(&store, &b).await.id,
        b,
        "{what}: profile b vanished"
    );

    let r = resolve(&store, &[(&s, Strong), (&w1, Weak)], false, at(5)).await;
    assert!(
        r.merges.is_empty(),
        "{what}: strong+weak merged implicitly: {:?}",
        r.merges
    );
    assert_eq!(r.customer.id, c, "{what}: strong key's profile");
    assert!(
        !has_key(&r.customer, &w1),
        "{what}: a weak key held by another profile was copied onto the strong one"
    );
    assert_eq!(
        owner(&store, &w1).await.map(|c| c.id),
        Some(a.clone()),
        "{what}: owner of w1"
    );
    for id in [&a, &b, &c] {
        let cust = get_customer(&store, id).await;
        for k in [&w1, &w2, &s] {
            if has_key(&cust, k) {
                assert_eq!(
                    owner(&store, k).await.map(|c| c.id).as_deref(),
                    Some(id.as_str()),
                    "{what}: profile `{id}` lists {k}, which belongs to another profile"
                );
            }
        }
    }

    // An explicit identify call merges weak keys too; the oldest survives.
    let r = resolve(&store, &[(&w2, Weak), (&w1, Weak)], true, at(6)).await;
    assert_eq!(r.customer.id, a, "{what}: explicit merge survivor");
    assert_eq!(
        r.merges,
        vec![Merge {
            from: b.clone(),
            into: a.clone(),
            via: vec![w2.clone()],
        }],
        "{what}: explicit weak merge"
    );
    assert_eq!(
        owner(&store, &w2).await.map(|c| c.id),
        Some(a.clone()),
        "{what}: w2 after merge"
    );
    assert_eq!(
        get_customer(&store, &b).await.id,
        a,
        "{what}: merged-away b"
    );
    let r = resolve(&store, &[(&w1, Weak), (&s, Strong)], true, at(7)).await;
    assert_eq!(r.customer.id, a, "{what}: explicit weak+strong survivor");
    assert_eq!(
        r.merges.len(),
        1,
        "{what}: explicit weak+strong merges: {:?}",
        r.merges
    );
    assert_eq!(
        (r.merges[0].from.as_str(), &r.merges[0].via),
        (c.as_str(), &vec![s.clone()]),
        "{what}: explicit weak+strong merge"
    );
    assert_eq!(
        owner(&store, &s).await.map(|c| c.id),
        Some(a),
        "{what}: s after merge"
    );
}

/// A customer has one open conversation across channels: a message on a second channel joins
/// it and moves its reply channel and recipient there; after a close the next message opens a
/// new one.
pub async fn one_open_conversation_across_channels(factory: &impl MakeStore, prefix: &str) {
    let what = "one_open_conversation_across_channels";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let other_pool = format!("{prefix}other");
    let phone = key(prefix, "phone", "", "+8613800000002");
    let app_key = key(prefix, "app_user", "shop-app", "42");
    let wx_key = key(prefix, "wechat_openid", "wx1", "oAbC");
    let r1 = resolve(
        &store,
        &[(&app_key, Strong), (&phone, Strong)],
        false,
        at(1),
    )
    .await;
    let r2 = resolve(&store, &[(&wx_key, Strong), (&phone, Strong)], false, at(2)).await;
    let cust = r1.customer.id.clone();
    assert_eq!(
        r2.customer.id, cust,
        "{what}: shared phone did not unify the channels"
    );

    let e1 = inbound_envelope(&cust, &app_channel(), "42", vec![app_key], "hi", at(3));
    let rec1 = record(&store, &e1, &pool, at(3)).await;
    let conv = rec1.conversation.clone();
    assert!(rec1.created && !rec1.duplicate, "{what}: first message");
    assert_eq!(
        conv.status,
        ConversationStatus::Queued,
        "{what}: new conversation status"
    );
    assert_eq!(conv.pool, pool, "{what}: new conversation pool");
    assert_eq!(conv.customer_id, cust, "{what}: conversation customer");
    assert_eq!(conv.channel, app_channel(), "{what}: conversation channel");
    assert_eq!(conv.queued_at, Some(at(3)), "{what}: queued_at");
    assert_eq!(conv.message_count, 1, "{what}: message_count");
    assert_eq!(
        conv.last_inbound_id.as_deref(),
        Some(e1.id.as_str()),
        "{what}: last_inbound_id"
    );
    assert_eq!(
        queue(&store, &pool).await,
        vec![conv.id.clone()],
        "{what}: pool queue"
    );

    let e2 = inbound_envelope(
        &cust,
        &wechat_channel(),
        "oAbC",
        vec![wx_key],
        "again",
        at(4),
    );
    // The pool only applies when a conversation is opened.
    let rec2 = record(&store, &e2, &other_pool, at(4)).await;
    let c2 = rec2.conversation;
    assert!(
        !rec2.created && !rec2.duplicate,
        "{what}: second-channel message opened anew"
    );
    assert_eq!(
        c2.id, conv.id,
        "{what}: second channel got another conversation"
    );
    assert_eq!(
        c2.channel,
        wechat_channel(),
        "{what}: reply channel not moved"
    );
    assert_eq!(c2.recipient, e2.sender, "{what}: recipient not moved");
    assert_eq!(
        c2.last_inbound_id.as_deref(),
        Some(e2.id.as_str()),
        "{what}: last_inbound_id"
    );
    assert_eq!(c2.message_count, 2, "{what}: message_count");
    assert_eq!(c2.pool, pool, "{what}: pool changed by a later message");
    assert_eq!(
        queue(&store, &pool).await,
        vec![conv.id.clone()],
        "{what}: queue after 2nd"
    );
    assert!(
        queue(&store, &other_pool).await.is_empty(),
        "{what}: other pool queued it"
    );
    let stored = store
        .messages(&conv.id, 10)
        .await
        .unwrap_or_else(|e| panic!("{what}: messages: {e}"));
    let ids: Vec<&str> = stored.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![e1.id.as_str(), e2.id.as_str()],
        "{what}: messages"
    );
    for m in &stored {
        assert_eq!(
            m.conversation_id.as_deref(),
            Some(conv.id.as_str()),
            "{what}: stored conversation_id"
        );
        assert_eq!(
            m.customer_id.as_deref(),
            Some(cust.as_str()),
            "{what}: stored customer_id"
        );
    }
    let last = store
        .messages(&conv.id, 1)
        .await
        .unwrap_or_else(|e| panic!("{what}: messages: {e}"));
    assert_eq!(
        last.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        vec![e2.id.clone()],
        "{what}: messages(limit 1) must be the latest"
    );

    let closed = store
        .close_conversation(&conv.id, "agent", at(5))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    assert_eq!(
        closed.conversation.status,
        ConversationStatus::Closed,
        "{what}: closed status"
    );
    assert_eq!(
        closed.conversation.close_reason.as_deref(),
        Some("agent"),
        "{what}: reason"
    );
    assert!(
        queue(&store, &pool).await.is_empty(),
        "{what}: closed conversation still queued"
    );
    let again = store.close_conversation(&conv.id, "agent", at(6)).await;
    assert_eq!(
        again.as_ref().err().and_then(conflict_code),
        Some("conversation_closed"),
        "{what}: closing twice gave {again:?}"
    );
    let e3 = inbound_envelope(&cust, &app_channel(), "42", Vec::new(), "me again", at(7));
    let rec3 = record(&store, &e3, &pool, at(7)).await;
    assert!(
        rec3.created,
        "{what}: a message after close did not open a new conversation"
    );
    assert_ne!(
        rec3.conversation.id, conv.id,
        "{what}: closed conversation reopened"
    );
    assert_eq!(
        queue(&store, &pool).await,
        vec![rec3.conversation.id],
        "{what}: new queue"
    );
}

/// Recording the same envelope id again changes nothing and reports a duplicate, also after its
/// conversation closed; an envelope without customer is refused.
pub async fn record_inbound_is_idempotent(factory: &impl MakeStore, prefix: &str) {
    let what = "record_inbound_is_idempotent";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let (cust, e, conv) = open(&store, prefix, "idem", &pool, at(1)).await;
    let dup = record(&store, &e, &pool, at(2)).await;
    assert!(dup.duplicate, "{what}: second record not a duplicate");
    assert!(
        dup.created,
        "{what}: a retry of the opening message must report the conversation as opened by it \
         (so its events can be re-emitted after a lost reply)"
    );
    assert_eq!(
        dup.conversation.id, conv.id,
        "{what}: duplicate answered another conversation"
    );
    assert_eq!(
        dup.conversation.message_count, 1,
        "{what}: duplicate counted"
    );
    assert_eq!(
        message_ids(&store, &conv.id).await,
        vec![e.id.clone()],
        "{what}: messages"
    );
    assert_eq!(
        queue(&store, &pool).await,
        vec![conv.id.clone()],
        "{what}: queue"
    );
    let k = key(prefix, "app_user", "shop-app", "idem");
    let second = inbound_envelope(&cust.id, &app_channel(), "idem", vec![k], "again", at(2));
    let rec = record(&store, &second, &pool, at(2)).await;
    assert!(!rec.created && !rec.duplicate, "{what}: second message");
    let dup = record(&store, &second, &pool, at(2)).await;
    assert!(
        dup.duplicate && !dup.created,
        "{what}: a retry of a later message reported the conversation as opened by it"
    );

    store
        .close_conversation(&conv.id, "agent", at(3))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    let dup = record(&store, &e, &pool, at(4)).await;
    assert!(dup.duplicate, "{what}: replay after close not a duplicate");
    assert_eq!(dup.conversation.id, conv.id, "{what}: replay after close");
    assert!(
        queue(&store, &pool).await.is_empty(),
        "{what}: replay after close queued"
    );

    let mut anonymous = inbound_envelope(&cust.id, &app_channel(), "x", Vec::new(), "?", at(5));
    anonymous.customer_id = None;
    assert!(
        store
            .record_inbound(&anonymous, &Placement::queued(pool), at(5))
            .await
            .is_err(),
        "{what}: an envelope without customer_id was recorded"
    );
}

/// Each queued conversation goes to the online agent of the pool idle the longest, who then
/// becomes the most recently busy; away, offline and other-pool agents get nothing; one call
/// assigns repeatedly, head first.
pub async fn longest_idle_agent_first(factory: &impl MakeStore, prefix: &str) {
    let what = "longest_idle_agent_first";
    let store = factory.make().await;
    let pool = format!("{prefix}sales");
    let elsewhere = format!("{prefix}support");
    let [a, b, c, d, e, f] = ["a", "b", "c", "d", "e", "f"].map(|n| format!("{prefix}agent-{n}"));
    // d was online first but is away now; e is idle longest but in another pool; f is offline.
    agent(&store, &d, &[&pool], 2, AgentStatus::Online, at(-30)).await;
    update_agent(
        &store,
        AgentUpdate {
            id: d.clone(),
            status: Some(AgentStatus::Away),
            ..AgentUpdate::default()
        },
        at(-29),
    )
    .await;
    agent(&store, &e, &[&elsewhere], 2, AgentStatus::Online, at(-20)).await;
    agent(&store, &f, &[&pool], 2, AgentStatus::Offline, at(-10)).await;
    agent(&store, &b, &[&pool], 2, AgentStatus::Online, at(1)).await;
    agent(&store, &a, &[&pool], 2, AgentStatus::Online, at(2)).await;
    agent(&store, &c, &[&pool], 2, AgentStatus::Online, at(3)).await;

    let mut expected_owner = Vec::new();
    for (i, expect) in [&b, &a, &c, &b].into_iter().enumerate() {
        let t = 10 + 2 * i as i64;
        let (_, _, conv) = open(&store, prefix, &format!("cust-{i}"), &pool, at(t)).await;
        let got = assign(&store, &pool, at(t + 1)).await;
        assert_eq!(
            pairs(&got),
            vec![(conv.id.clone(), expect.clone())],
            "{what}: assignment {i} should go to the longest-idle agent"
        );
        let assigned = &got[0];
        assert_eq!(
            assigned.conversation.assigned_by,
            Some(AssignedBy::LongestIdle),
            "{what}: why {i}"
        );
        assert_eq!(
            assigned.conversation.status,
            ConversationStatus::Assigned,
            "{what}: status"
        );
        assert_eq!(
            assigned.conversation.agent_id.as_ref(),
            Some(expect),
            "{what}: agent_id"
        );
        assert_eq!(
            assigned.conversation.assigned_at,
            Some(at(t + 1)),
            "{what}: assigned_at"
        );
        assert_eq!(
            &assigned.agent_id, expect,
            "{what}: agent_id of the assignment"
        );
        let holder = get_agent(&store, expect).await;
        assert!(
            holder.conversations.contains(&conv.id),
            "{what}: the agent does not list the conversation"
        );
        for other in [&a, &b, &c] {
            if other != expect {
                let o = get_agent(&store, other).await;
                assert!(
                    o.idle_since < holder.idle_since,
                    "{what}: `{expect}` should now be the most recently busy ({} vs {other}'s {})",
                    holder.idle_since,
                    o.idle_since
                );
            }
        }
        expected_owner.push((conv.id.clone(), expect.clone()));
    }

    // Two queued at once: one call assigns both, head first, to a then c (b is busiest).
    let (_, _, c5) = open(&store, prefix, "cust-5", &pool, at(30)).await;
    let (_, _, c6) = open(&store, prefix, "cust-6", &pool, at(31)).await;
    let got = assign(&store, &pool, at(32)).await;
    assert_eq!(
        pairs(&got),
        vec![(c5.id.clone(), a.clone()), (c6.id.clone(), c.clone())],
        "{what}: one call must assign the whole queue in order"
    );
    expected_owner.push((c5.id, a.clone()));
    expected_owner.push((c6.id, c.clone()));
    for (conv, owner) in &expected_owner {
        let got = get_conversation(&store, conv).await;
        assert_eq!(
            got.agent_id.as_ref(),
            Some(owner),
            "{what}: stored agent of `{conv}`"
        );
        assert!(
            get_agent(&store, owner).await.conversations.contains(conv),
            "{what}: agent list"
        );
    }
    for idle in [&d, &e, &f] {
        assert!(
            get_agent(&store, idle).await.conversations.is_empty(),
            "{what}: away/offline/other-pool agent `{idle}` got a conversation"
        );
    }
    let held = store
        .agent_conversations(&a)
        .await
        .unwrap_or_else(|e| panic!("{what}: agent_conversations: {e}"));
    assert_eq!(held.len(), 2, "{what}: agent_conversations of a");
}

/// An agent never holds more conversations than its capacity: assignment stops, a direct
/// transfer is refused, and concurrent assigners share the room.
pub async fn capacity_never_exceeded(factory: &impl MakeStore, prefix: &str) {
    let what = "capacity_never_exceeded";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let x = format!("{prefix}agent-x");
    agent(&store, &x, &[&pool], 2, AgentStatus::Online, at(0)).await;
    let mut convs = Vec::new();
    for i in 0..5 {
        convs.push(
            open(&store, prefix, &format!("c{i}"), &pool, at(1 + i))
                .await
                .2
                .id,
        );
    }
    let got = assign(&store, &pool, at(10)).await;
    assert_eq!(
        pairs(&got),
        vec![(convs[0].clone(), x.clone()), (convs[1].clone(), x.clone())],
        "{what}: capacity 2"
    );
    assert!(
        assign(&store, &pool, at(11)).await.is_empty(),
        "{what}: assigned beyond capacity"
    );
    assert_eq!(
        get_agent(&store, &x).await.conversations.len(),
        2,
        "{what}: agent load"
    );
    assert_eq!(
        queue(&store, &pool).await,
        convs[2..].to_vec(),
        "{what}: remaining queue"
    );

    let refused = store
        .transfer(&convs[2], TransferTarget::Agent(x.clone()), None, at(12))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{what}: transfer to a full agent gave {refused:?}"
    );
    assert_eq!(
        get_agent(&store, &x).await.conversations.len(),
        2,
        "{what}: load after refusal"
    );
    assert_eq!(
        get_conversation(&store, &convs[2]).await.status,
        ConversationStatus::Queued,
        "{what}: refused transfer changed the conversation"
    );
    assert_eq!(
        queue(&store, &pool).await,
        convs[2..].to_vec(),
        "{what}: queue after refusal"
    );

    // One more slot, three concurrent assigners: exactly one assignment, of the head.
    set_capacity(&store, &x, 3, at(13)).await;
    let (r1, r2, r3) = tokio::join!(
        assign(&store, &pool, at(14)),
        assign(&store, &pool, at(14)),
        assign(&store, &pool, at(14))
    );
    let all: Vec<(String, String)> = [r1, r2, r3].iter().flat_map(|r| pairs(r)).collect();
    assert_eq!(
        all,
        vec![(convs[2].clone(), x.clone())],
        "{what}: concurrent assigners"
    );
    let x_now = get_agent(&store, &x).await;
    assert_eq!(x_now.conversations.len(), 3, "{what}: load after raise");
    assert!(
        x_now.conversations.len() as u64 <= u64::from(x_now.capacity),
        "{what}: over capacity"
    );
}

/// Concurrent assigners over several agents never hand one conversation out twice.
pub async fn concurrent_assignment_never_doubles(factory: &impl MakeStore, prefix: &str) {
    let what = "concurrent_assignment_never_doubles";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let agents: Vec<String> = (0..4).map(|i| format!("{prefix}agent-{i}")).collect();
    for (i, id) in agents.iter().enumerate() {
        agent(&store, id, &[&pool], 1, AgentStatus::Online, at(i as i64)).await;
    }
    let mut convs = Vec::new();
    for i in 0..6 {
        convs.push(
            open(&store, prefix, &format!("c{i}"), &pool, at(10 + i))
                .await
                .2
                .id,
        );
    }
    let (r1, r2, r3) = tokio::join!(
        assign(&store, &pool, at(20)),
        assign(&store, &pool, at(20)),
        assign(&store, &pool, at(20))
    );
    let all: Vec<(String, String)> = [r1, r2, r3].iter().flat_map(|r| pairs(r)).collect();
    assert_eq!(all.len(), 4, "{what}: 4 agents with room 1 each: {all:?}");
    let conv_set: HashSet<&String> = all.iter().map(|(c, _)| c).collect();
    let agent_set: HashSet<&String> = all.iter().map(|(_, a)| a).collect();
    assert_eq!(
        conv_set.len(),
        4,
        "{what}: a conversation was assigned twice: {all:?}"
    );
    assert_eq!(agent_set.len(), 4, "{what}: an agent got two: {all:?}");
    let head: HashSet<&String> = convs[..4].iter().collect();
    assert_eq!(
        conv_set, head,
        "{what}: the four at the head must be assigned"
    );
    assert_eq!(
        queue(&store, &pool).await,
        convs[4..].to_vec(),
        "{what}: rest stays queued"
    );
}

/// The queue is FIFO: when every agent is full conversations wait in arrival order, and the head
/// is assigned as soon as room appears (a close, an agent coming online, a raised capacity).
pub async fn queue_fifo_head_assigned_when_room_frees(factory: &impl MakeStore, prefix: &str) {
    let what = "queue_fifo_head_assigned_when_room_frees";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let x = format!("{prefix}agent-x");
    let y = format!("{prefix}agent-y");
    agent(&store, &x, &[&pool], 1, AgentStatus::Online, at(0)).await;
    let mut convs = Vec::new();
    for i in 0..4 {
        convs.push(
            open(&store, prefix, &format!("c{i}"), &pool, at(1 + i))
                .await
                .2,
        );
    }
    let ids: Vec<String> = convs.iter().map(|c| c.id.clone()).collect();
    assert_eq!(queue(&store, &pool).await, ids, "{what}: arrival order");
    let got = assign(&store, &pool, at(10)).await;
    assert_eq!(
        pairs(&got),
        vec![(ids[0].clone(), x.clone())],
        "{what}: first"
    );
    assert_eq!(
        queue(&store, &pool).await,
        ids[1..].to_vec(),
        "{what}: waiting in order"
    );
    let queued_at: Vec<_> = convs[1..].iter().map(|c| c.queued_at).collect();
    assert!(
        queued_at.windows(2).all(|w| w[0] <= w[1]),
        "{what}: queued_at order"
    );

    let release = store
        .close_conversation(&ids[0], "agent", at(11))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    let freed = release
        .released_agent
        .unwrap_or_else(|| panic!("{what}: close of an assigned conversation released no agent"));
    assert_eq!(freed.id, x, "{what}: released agent");
    assert!(
        freed.conversations.is_empty(),
        "{what}: released agent still holds it"
    );
    let got = assign(&store, &pool, at(12)).await;
    assert_eq!(
        pairs(&got),
        vec![(ids[1].clone(), x.clone())],
        "{what}: after close"
    );

    agent(&store, &y, &[&pool], 1, AgentStatus::Online, at(13)).await;
    let got = assign(&store, &pool, at(14)).await;
    assert_eq!(
        pairs(&got),
        vec![(ids[2].clone(), y.clone())],
        "{what}: after y came online"
    );

    set_capacity(&store, &x, 2, at(15)).await;
    let got = assign(&store, &pool, at(16)).await;
    assert_eq!(
        pairs(&got),
        vec![(ids[3].clone(), x.clone())],
        "{what}: after raise"
    );
    assert!(
        queue(&store, &pool).await.is_empty(),
        "{what}: queue drained"
    );
}

/// Skills-based assignment: a conversation asking for skills goes only to an agent with every
/// one of them, the longest idle of those with room; one nobody with room can take holds back
/// only those asking for the same skills, never older or newer ones asking for other skills or
/// none. The queue lists every queued conversation in arrival order, whatever it asks for. A
/// transfer to a pool keeps the skills asked unless it names others (none clears them); an agent
/// gaining a skill can take what waited for it; a closed conversation leaves its skill queue.
pub async fn skills_route_past_heads_nobody_can_take(factory: &impl MakeStore, prefix: &str) {
    let what = "skills_route_past_heads_nobody_can_take";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let (a, b, z) = (
        format!("{prefix}agent-a"),
        format!("{prefix}agent-b"),
        format!("{prefix}agent-z"),
    );
    let zh = open_asking(&store, prefix, "c0", &pool, &["zh"], at(1)).await;
    let plain = open_asking(&store, prefix, "c1", &pool, &[], at(2)).await;
    let en = open_asking(&store, prefix, "c2", &pool, &["en"], at(3)).await;
    let zh_billing =
        open_asking(&store, prefix, "c3", &pool, &["zh", "billing", "zh"], at(4)).await;
    let ids = [&zh, &plain, &en, &zh_billing].map(|id| id.to_owned());
    assert_eq!(
        queue(&store, &pool).await,
        ids,
        "{what}: arrival order across skills"
    );
    assert_eq!(
        get_conversation(&store, &zh_billing)
            .await
            .skills
            .as_slice(),
        ["billing", "zh"],
        "{what}: skills kept sorted, each once"
    );
    assert!(
        get_conversation(&store, &plain).await.skills.is_empty(),
        "{what}: no skills asked"
    );

    // a speaks English only: the Chinese head waits, the two behind it go to a.
    skilled_agent(&store, &a, &[&pool], 2, &["en"], at(10)).await;
    let got = assign(&store, &pool, at(11)).await;
    assert_eq!(
        pairs(&got),
        vec![(plain.clone(), a.clone()), (en.clone(), a.clone())],
        "{what}: past the head nobody can take"
    );
    assert_eq!(
        queue(&store, &pool).await,
        vec![zh.clone(), zh_billing.clone()],
        "{what}: still waiting"
    );

    // b speaks Chinese; z also does billing. The older head goes first, to the longer idle.
    skilled_agent(&store, &b, &[&pool], 1, &["zh"], at(12)).await;
    skilled_agent(&store, &z, &[&pool], 1, &["zh", "billing", "en"], at(13)).await;
    let got = assign(&store, &pool, at(14)).await;
    assert_eq!(
        pairs(&got),
        vec![(zh.clone(), b.clone()), (zh_billing.clone(), z.clone())],
        "{what}: each to the longest idle with the skills"
    );
    assert!(queue(&store, &pool).await.is_empty(), "{what}: drained");

    // a is the longest idle once it has room again, but it does not speak Chinese.
    close(&store, &plain, at(15)).await;
    close(&store, &zh, at(16)).await;
    let later = open_asking(&store, prefix, "c4", &pool, &["zh"], at(17)).await;
    let got = assign(&store, &pool, at(18)).await;
    assert_eq!(
        pairs(&got),
        vec![(later.clone(), b.clone())],
        "{what}: the longest idle without the skill is passed over"
    );

    // A transfer keeps the skills asked, or sets new ones.
    let moved = transfer(&store, &en, TransferTarget::pool(pool.as_str()), at(19)).await;
    assert_eq!(
        moved.skills.as_slice(),
        ["en"],
        "{what}: transfer keeps skills"
    );
    let got = assign(&store, &pool, at(20)).await;
    assert_eq!(
        pairs(&got),
        vec![(en.clone(), a.clone())],
        "{what}: back to a"
    );
    let to_french = TransferTarget::Pool(QueueTarget {
        pool: pool.clone(),
        skills: Some(Skills::new(["fr"])),
        priority: None,
        offer_secs: 0,
    });
    let moved = transfer(&store, &en, to_french, at(21)).await;
    assert_eq!(
        moved.skills.as_slice(),
        ["fr"],
        "{what}: transfer sets skills"
    );
    assert_eq!(
        moved.status,
        ConversationStatus::Queued,
        "{what}: queued again"
    );
    let newer = open_asking(&store, prefix, "c5", &pool, &[], at(22)).await;
    let got = assign(&store, &pool, at(23)).await;
    assert_eq!(
        pairs(&got),
        vec![(newer.clone(), a.clone())],
        "{what}: the French one holds back nobody"
    );
    assert_eq!(
        queue(&store, &pool).await,
        vec![en.clone()],
        "{what}: French waits"
    );

    // a learns French.
    close(&store, &newer, at(24)).await;
    skilled_agent(&store, &a, &[&pool], 2, &["en", "fr"], at(25)).await;
    let got = assign(&store, &pool, at(26)).await;
    assert_eq!(
        pairs(&got),
        vec![(en.clone(), a.clone())],
        "{what}: a learnt French"
    );

    // Skills cleared by a transfer: any agent with room.
    let cleared = TransferTarget::Pool(QueueTarget {
        pool: pool.clone(),
        skills: Some(Skills::default()),
        priority: None,
        offer_secs: 0,
    });
    let moved = transfer(&store, &zh_billing, cleared, at(27)).await;
    assert!(moved.skills.is_empty(), "{what}: transfer clears skills");
    let got = assign(&store, &pool, at(28)).await;
    assert_eq!(
        pairs(&got),
        vec![(zh_billing.clone(), z.clone())],
        "{what}: the longest idle with room takes it (z, released by the transfer)"
    );

    // A closed conversation leaves its skill queue; the queue works on after it.
    let gone = open_asking(&store, prefix, "c6", &pool, &["de"], at(29)).await;
    let kept = open_asking(&store, prefix, "c7", &pool, &["de"], at(30)).await;
    close(&store, &gone, at(31)).await;
    assert_eq!(
        queue(&store, &pool).await,
        vec![kept.clone()],
        "{what}: closed one left"
    );
    skilled_agent(&store, &b, &[&pool], 2, &["de"], at(32)).await;
    let got = assign(&store, &pool, at(33)).await;
    assert_eq!(
        pairs(&got),
        vec![(kept, b.clone())],
        "{what}: the next in its queue"
    );
    assert!(
        queue(&store, &pool).await.is_empty(),
        "{what}: drained at last"
    );
}

/// Priorities: a higher-priority conversation is listed and assigned before older ones of lower
/// priority, equal priorities in arrival order; one nobody with room can take (its skills) holds
/// back nobody of another priority or skills. A transfer keeps the priority or sets another.
pub async fn priority_goes_first_and_ties_keep_arrival_order(
    factory: &impl MakeStore,
    prefix: &str,
) {
    let what = "priority_goes_first_and_ties_keep_arrival_order";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let (a, b, z) = (
        format!("{prefix}agent-a"),
        format!("{prefix}agent-b"),
        format!("{prefix}agent-z"),
    );
    let placed = |priority: u8, skills: &[&str]| {
        Placement::queued(pool.as_str())
            .with_priority(priority)
            .with_skills(Skills::new(skills.iter().copied()))
    };
    let low = open_placed(&store, prefix, "c0", &placed(0, &[]), at(1)).await;
    let high = open_placed(&store, prefix, "c1", &placed(2, &[]), at(2)).await;
    let middle_zh = open_placed(&store, prefix, "c2", &placed(1, &["zh"]), at(3)).await;
    let high_later = open_placed(&store, prefix, "c3", &placed(2, &[]), at(4)).await;
    let low_later = open_placed(&store, prefix, "c4", &placed(0, &[]), at(5)).await;
    assert_eq!(
        get_conversation(&store, &high).await.priority,
        2,
        "{what}: kept"
    );
    assert_eq!(
        queue(&store, &pool).await,
        vec![
            high.clone(),
            high_later.clone(),
            middle_zh.clone(),
            low.clone(),
            low_later.clone()
        ],
        "{what}: priority, then arrival"
    );
    let stats = |store: Arc<dyn Store>, pool: String| async move {
        store
            .queue_stats(&pool)
            .await
            .unwrap_or_else(|e| panic!("queue_stats({pool}): {e}"))
    };
    assert_eq!(
        stats(store.clone(), pool.clone()).await,
        QueueStats {
            depth: 5,
            oldest_queued_at: Some(at(1))
        },
        "{what}: stats over three queues"
    );
    assert_eq!(
        stats(store.clone(), format!("{prefix}nobody")).await,
        QueueStats::default(),
        "{what}: an empty pool"
    );

    skilled_agent(&store, &a, &[&pool], 2, &[], at(10)).await;
    let got = assign(&store, &pool, at(11)).await;
    assert_eq!(
        pairs(&got),
        vec![(high.clone(), a.clone()), (high_later.clone(), a.clone())],
        "{what}: the higher priority first, in arrival order"
    );
    skilled_agent(&store, &b, &[&pool], 1, &[], at(12)).await;
    let got = assign(&store, &pool, at(13)).await;
    assert_eq!(
        pairs(&got),
        vec![(low.clone(), b.clone())],
        "{what}: past the priority nobody can take"
    );
    assert_eq!(
        stats(store.clone(), pool.clone()).await,
        QueueStats {
            depth: 2,
            oldest_queued_at: Some(at(3))
        },
        "{what}: stats once the oldest is assigned"
    );

    let raise = TransferTarget::Pool(QueueTarget {
        pool: pool.clone(),
        skills: None,
        priority: Some(5),
        offer_secs: 0,
    });
    let raised = transfer(&store, &low_later, raise, at(14)).await;
    assert_eq!(raised.priority, 5, "{what}: transfer sets the priority");
    assert_eq!(
        queue(&store, &pool).await,
        vec![low_later.clone(), middle_zh.clone()],
        "{what}: raised ahead"
    );
    skilled_agent(&store, &z, &[&pool], 2, &["zh"], at(15)).await;
    let got = assign(&store, &pool, at(16)).await;
    assert_eq!(
        pairs(&got),
        vec![
            (low_later.clone(), z.clone()),
            (middle_zh.clone(), z.clone())
        ],
        "{what}: by priority"
    );
    let moved = transfer(&store, &high, TransferTarget::pool(pool.as_str()), at(17)).await;
    assert_eq!(
        (moved.priority, moved.status),
        (2, ConversationStatus::Queued),
        "{what}: transfer keeps the priority"
    );
}

/// The last-agent preference: a conversation opened preferring it goes to the agent most
/// recently handed one of the customer's conversations, ahead of longer-idle agents, when that
/// agent can take it (online in the pool, with room and the skills); otherwise, and without the
/// preference, to the longest idle. A conversation keeps the preference while it waits, and a
/// transfer straight to an agent makes that agent the customer's last.
pub async fn last_agent_preferred_when_it_can_take_the_conversation(
    factory: &impl MakeStore,
    prefix: &str,
) {
    let what = "last_agent_preferred_when_it_can_take_the_conversation";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let (a, b) = (format!("{prefix}agent-a"), format!("{prefix}agent-b"));
    let prefer = Placement::queued(pool.as_str()).preferring_last_agent(true);
    skilled_agent(&store, &a, &[&pool], 5, &[], at(1)).await;
    skilled_agent(&store, &b, &[&pool], 5, &[], at(2)).await;

    // x's first conversation goes to a, the longest idle; b is then the longest idle.
    let first = open_placed(&store, prefix, "x", &prefer, at(3)).await;
    assert_eq!(
        pairs(&assign(&store, &pool, at(4)).await),
        vec![(first.clone(), a.clone())]
    );
    close(&store, &first, at(5)).await;
    let again = open_placed(&store, prefix, "x", &prefer, at(6)).await;
    let got = assign(&store, &pool, at(7)).await;
    assert_eq!(
        pairs(&got),
        vec![(again.clone(), a.clone())],
        "{what}: back to the last agent, not the longest idle"
    );
    assert_eq!(rules(&got), [Some(AssignedBy::LastAgent)], "{what}: why");
    close(&store, &again, at(8)).await;

    // Without the preference: the longest idle (b).
    let plain = open_placed(
        &store,
        prefix,
        "x",
        &Placement::queued(pool.as_str()),
        at(9),
    )
    .await;
    assert_eq!(
        pairs(&assign(&store, &pool, at(10)).await),
        vec![(plain.clone(), b.clone())],
        "{what}: no preference"
    );
    close(&store, &plain, at(11)).await;

    // b is now x's last agent. While b is away, the preference waits in the queue; a takes it
    // when it is assigned anyway.
    let away = AgentUpdate {
        id: b.clone(),
        status: Some(AgentStatus::Away),
        ..AgentUpdate::default()
    };
    update_agent(&store, away, at(12)).await;
    let waiting = open_placed(&store, prefix, "x", &prefer, at(13)).await;
    assert_eq!(
        pairs(&assign(&store, &pool, at(14)).await),
        vec![(waiting.clone(), a.clone())],
        "{what}: the last agent cannot take it"
    );
    close(&store, &waiting, at(15)).await;

    // A new customer has no last agent; a transfer to an agent makes that agent the last.
    let fresh = open_placed(&store, prefix, "y", &prefer, at(16)).await;
    assert_eq!(
        pairs(&assign(&store, &pool, at(17)).await),
        vec![(fresh.clone(), a.clone())],
        "{what}: no last agent yet: the longest idle"
    );
    let online = AgentUpdate {
        id: b.clone(),
        status: Some(AgentStatus::Online),
        ..AgentUpdate::default()
    };
    update_agent(&store, online, at(18)).await;
    transfer(&store, &fresh, TransferTarget::Agent(b.clone()), at(19)).await;
    close(&store, &fresh, at(20)).await;
    let later = open_placed(&store, prefix, "y", &prefer, at(21)).await;
    assert_eq!(
        pairs(&assign(&store, &pool, at(22)).await),
        vec![(later.clone(), b.clone())],
        "{what}: the agent of the transfer"
    );
    let y = store
        .conversation(&later)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{what}: read y's conversation"));
    close(&store, &later, at(23)).await;

    // An agent writing first becomes the customer's last agent only where the pool prefers it.
    for (remember_agent, step, expected) in [(false, 30, &b), (true, 40, &a)] {
        let conversation = new_id();
        let envelope = first_outbound_envelope(
            &y.customer_id,
            &conversation,
            &y.channel,
            &y.recipient,
            &a,
            at(step),
        );
        store
            .start_conversation(ConversationStart {
                remember_agent,
                ..starting(&envelope, &a, &pool, None, at(step))
            })
            .await
            .unwrap_or_else(|e| panic!("{what}: a writes first to y: {e}"));
        close(&store, &conversation, at(step + 1)).await;
        let back = open_placed(&store, prefix, "y", &prefer, at(step + 2)).await;
        assert_eq!(
            pairs(&assign(&store, &pool, at(step + 3)).await),
            vec![(back.clone(), expected.clone())],
            "{what}: after a wrote first, remembering the agent: {remember_agent}"
        );
        close(&store, &back, at(step + 4)).await;
    }
}

/// A least-busy pool gives each conversation to the agent holding the fewest, the longest idle
/// among equals, among those with the skills it asks for, whether it is routed in one step or
/// assigned from the queue; the same arrivals in a longest-idle pool go to the longest idle
/// whatever it holds.
pub async fn least_busy_pool_gives_the_agent_holding_the_fewest(
    factory: &impl MakeStore,
    prefix: &str,
) {
    let what = "least_busy_pool_gives_the_agent_holding_the_fewest";
    let run = |least_busy: bool| async move {
        let store = factory.make().await;
        let prefix = format!("{prefix}{}", if least_busy { "lb-" } else { "li-" });
        let pool = format!("{prefix}default");
        if least_busy {
            store.set_least_busy_pools(std::slice::from_ref(&pool));
        }
        let (a, b) = (format!("{prefix}agent-a"), format!("{prefix}agent-b"));
        let mut got = Vec::new();
        // Routed in one step (Store::route_inbound) when it asks for nothing; recorded, then
        // assigned (Store::assign_queued) when it asks for skills.
        let step = async |store: &Arc<dyn Store>, name: &str, skills: &[&str], t: i64| {
            let assigned = if skills.is_empty() {
                let e = unrouted(&prefix, name, &[], at(t));
                routed(what, route(store, routing(&prefix, &e, &pool, at(t))).await).2
            } else {
                open_asking(store, &prefix, name, &pool, skills, at(t)).await;
                assign(store, &pool, at(t)).await
            };
            assert_eq!(assigned.len(), 1, "{what}: {name} assigned");
            let rule = if least_busy {
                AssignedBy::LeastBusy
            } else {
                AssignedBy::LongestIdle
            };
            assert_eq!(rules(&assigned), [Some(rule)], "{what}: why {name}");
            let agent = assigned[0].agent_id.clone();
            (if agent == a { "a" } else { "b" }).to_owned()
        };
        skilled_agent(&store, &a, &[&pool], 5, &["zh"], at(0)).await;
        got.push(step(&store, "c1", &[], 1).await);
        got.push(step(&store, "c2", &[], 2).await);
        // b comes online after a's last assignment: a is the longest idle, b the least busy.
        skilled_agent(&store, &b, &[&pool], 5, &[], at(3)).await;
        got.push(step(&store, "c3", &[], 4).await);
        got.push(step(&store, "c4", &[], 5).await);
        got.push(step(&store, "c5", &[], 6).await);
        // Only a has zh, however busy.
        got.push(step(&store, "c6", &["zh"], 7).await);
        got
    };
    assert_eq!(
        run(true).await,
        ["a", "a", "b", "b", "a", "a"],
        "{what}: least busy (c5: a tie, a the longest idle)"
    );
    assert_eq!(
        run(false).await,
        ["a", "a", "a", "b", "a", "a"],
        "{what}: longest idle"
    );
}

/// Queue overflow: a conversation moves on only while it still waits in the pool's queue since
/// before the time given; the move is a transfer (new pool, skills or priority; a new
/// `queued_at`, a note), so a second router's overflow with the same cutoff is refused, as is an
/// overflow of an assigned, closed or transferred conversation.
pub async fn overflow_moves_only_what_still_waits(factory: &impl MakeStore, prefix: &str) {
    let what = "overflow_moves_only_what_still_waits";
    let store = factory.make().await;
    let (tier1, tier2) = (format!("{prefix}tier1"), format!("{prefix}tier2"));
    let to_tier2 = QueueTarget {
        pool: tier2.clone(),
        skills: None,
        priority: Some(4),
        offer_secs: 0,
    };
    let changed = |r: Result<Release, StoreError>, step: &str| match r {
        Err(e) => assert_eq!(
            conflict_code(&e),
            Some(CONVERSATION_CHANGED),
            "{what}: {step}: {e}"
        ),
        Ok(r) => panic!("{what}: {step}: moved {:?}", r.conversation),
    };

    // Queued at 1 in tier1 (asking for zh). Not yet waiting since before 1: stays.
    let c1 = open_asking(&store, prefix, "c1", &tier1, &["zh"], at(1)).await;
    changed(
        store
            .overflow(&c1, &tier1, at(1), to_tier2.clone(), at(2))
            .await,
        "queued at the cutoff",
    );
    changed(
        store
            .overflow(&c1, &tier2, at(5), to_tier2.clone(), at(2))
            .await,
        "another pool",
    );
    // Waiting since before 5: moves to tier2, at the back of its queue, keeping its skills.
    let moved = store
        .overflow(&c1, &tier1, at(5), to_tier2.clone(), at(6))
        .await
        .unwrap_or_else(|e| panic!("{what}: overflow: {e}"));
    let c = &moved.conversation;
    assert_eq!(
        (c.status, c.pool.as_str(), c.queued_at, c.priority),
        (ConversationStatus::Queued, tier2.as_str(), Some(at(6)), 4),
        "{what}: moved"
    );
    assert_eq!(c.skills, Skills::new(["zh"]), "{what}: skills kept");
    assert!(moved.released_agent.is_none(), "{what}: no agent left");
    assert!(queue(&store, &tier1).await.is_empty(), "{what}: left tier1");
    assert_eq!(
        queue(&store, &tier2).await,
        vec![c1.clone()],
        "{what}: in tier2"
    );
    let noted: Vec<(NoteKind, DateTime<Utc>)> = store
        .unannounced(at(7))
        .await
        .unwrap_or_else(|e| panic!("{what}: unannounced: {e}"))
        .into_iter()
        .filter(|n| n.subject == c1 && n.kind != NoteKind::Assigned)
        .map(|n| (n.kind, n.at))
        .collect();
    assert_eq!(
        noted,
        vec![(NoteKind::Overflowed, at(6))],
        "{what}: noted as an overflow"
    );
    // A second router with the same cutoff: refused, nothing changes.
    changed(
        store
            .overflow(&c1, &tier1, at(5), to_tier2.clone(), at(7))
            .await,
        "moved already",
    );

    // Relaxing in place: the same pool, no skills; its wait restarts, so the same cutoff
    // cannot relax it twice, and an agent without skills takes it.
    let relax = QueueTarget {
        pool: tier2.clone(),
        skills: Some(Skills::NONE),
        priority: None,
        offer_secs: 0,
    };
    let relaxed = store
        .overflow(&c1, &tier2, at(8), relax.clone(), at(8))
        .await
        .unwrap_or_else(|e| panic!("{what}: relax: {e}"))
        .conversation;
    assert_eq!(
        (
            relaxed.skills.is_empty(),
            relaxed.priority,
            relaxed.queued_at
        ),
        (true, 4, Some(at(8))),
        "{what}: relaxed"
    );
    changed(
        store
            .overflow(&c1, &tier2, at(8), relax.clone(), at(9))
            .await,
        "relaxed already",
    );
    let a = format!("{prefix}agent-a");
    skilled_agent(&store, &a, &[&tier2], 1, &[], at(10)).await;
    assert_eq!(
        pairs(&assign(&store, &tier2, at(11)).await),
        vec![(c1.clone(), a.clone())],
        "{what}: assigned once relaxed"
    );
    changed(
        store
            .overflow(&c1, &tier2, at(20), relax.clone(), at(12))
            .await,
        "assigned",
    );
    close(&store, &c1, at(13)).await;
    changed(
        store
            .overflow(&c1, &tier2, at(20), relax.clone(), at(14))
            .await,
        "closed",
    );
    match store
        .overflow("no-such", &tier2, at(20), relax, at(15))
        .await
    {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("{what}: unknown conversation: {other:?}"),
    }
}

/// Offers: a conversation of a pool whose agents must accept it is offered by its assignment
/// (`offered_at`, `offer_expires_at`, listed as pending) until its agent accepts it; only that
/// agent may, once. Declined, it goes back to the front of the queue and to another agent, or to
/// the same one when nobody else can take it; expired (the same offer only), likewise, and its
/// agent is set away. A close ends the offer; a transfer to a pool sets the pool's offer time.
/// Each answer is noted in the same step, naming the agent ([`NoteKind::Accepted`],
/// [`NoteKind::Declined`], [`NoteKind::OfferExpired`]), so that it is announced even if its
/// command stops before announcing it.
pub async fn offers_are_accepted_declined_or_expire(factory: &impl MakeStore, prefix: &str) {
    let what = "offers_are_accepted_declined_or_expire";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let (a, b) = (format!("{prefix}agent-a"), format!("{prefix}agent-b"));
    skilled_agent(&store, &a, &[&pool], 2, &[], at(0)).await;
    skilled_agent(&store, &b, &[&pool], 2, &[], at(1)).await;
    let offered = Placement::queued(pool.as_str()).offered_for(30);
    let pending = |store: Arc<dyn Store>| async move {
        store
            .pending_offers()
            .await
            .unwrap_or_else(|e| panic!("pending_offers: {e}"))
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>()
    };
    let refused = |r: Result<Conversation, StoreError>, step: &str| match r {
        Err(e) => assert_eq!(
            conflict_code(&e),
            Some(NO_PENDING_OFFER),
            "{what}: {step}: {e}"
        ),
        Ok(c) => panic!("{what}: {step}: accepted {c:?}"),
    };
    // The notes of the answers ([`Store::unannounced`]): about `subjects` (only this case's:
    // `run_all` shares one store between cases), in the order the outbox announces them.
    let noted = |subjects: Vec<String>| {
        let store = Arc::clone(&store);
        async move {
            let mut notes: Vec<Note> = store
                .unannounced(at(1000))
                .await
                .unwrap_or_else(|e| panic!("{what}: unannounced: {e}"))
                .into_iter()
                .filter(|n| subjects.contains(&n.subject))
                .collect();
            notes.sort_by_key(|n| (n.at, n.kind));
            notes
        }
    };
    let answer = |kind, subject: &str, t: i64, agent: &str| Note {
        from_agent: Some(agent.to_owned()),
        ..Note::new(kind, subject, at(t))
    };

    // Offered to a, the longest idle; only a accepts it, once.
    let c1 = open_placed(&store, prefix, "c1", &offered, at(2)).await;
    let got = assign(&store, &pool, at(3)).await;
    assert_eq!(
        pairs(&got),
        vec![(c1.clone(), a.clone())],
        "{what}: offered"
    );
    let c = &got[0].conversation;
    assert_eq!(
        (c.offered_at, c.offer_expires_at),
        (Some(at(3)), Some(at(33))),
        "{what}: offer times"
    );
    assert_eq!(
        pending(store.clone()).await,
        vec![c1.clone()],
        "{what}: pending"
    );
    refused(
        store.accept_offer(&c1, &b, at(4)).await,
        "another agent accepts",
    );
    let accepted = store
        .accept_offer(&c1, &a, at(5))
        .await
        .unwrap_or_else(|e| panic!("{what}: accept: {e}"));
    assert_eq!(
        (
            accepted.status,
            accepted.offered_at,
            accepted.offer_expires_at
        ),
        (ConversationStatus::Assigned, None, None),
        "{what}: accepted"
    );
    assert!(
        pending(store.clone()).await.is_empty(),
        "{what}: none pending"
    );
    refused(store.accept_offer(&c1, &a, at(6)).await, "accepted twice");
    // The acceptance is noted (naming the agent), in the same step; refused answers are not.
    assert_eq!(
        noted(vec![c1.clone()]).await,
        vec![answer(NoteKind::Accepted, &c1, 5, &a)],
        "{what}: the acceptance's note"
    );

    // Declined by b: back to the front of the queue, and to a next.
    let c2 = open_placed(&store, prefix, "c2", &offered, at(7)).await;
    let c3 = open_placed(
        &store,
        prefix,
        "c3",
        &Placement::queued(pool.as_str()),
        at(8),
    )
    .await;
    let got = assign(&store, &pool, at(9)).await;
    assert_eq!(
        pairs(&got),
        vec![(c2.clone(), b.clone()), (c3.clone(), a.clone())],
        "{what}: c2 offered to b, c3 (no offer) to a"
    );
    assert_eq!(got[1].conversation.offered_at, None, "{what}: no offer");
    let back = store
        .take_back(&c2, &b, Withdrawal::Declined, at(10))
        .await
        .unwrap_or_else(|e| panic!("{what}: decline: {e}"));
    assert_eq!(
        back.conversation.status,
        ConversationStatus::Queued,
        "{what}: queued"
    );
    assert_eq!(
        back.conversation.queued_at,
        Some(at(7)),
        "{what}: queued_at kept"
    );
    assert_eq!(
        back.released_agent.map(|r| (r.id, r.conversations.len())),
        Some((b.clone(), 0)),
        "{what}: b let go"
    );
    assert_eq!(
        noted(vec![c2.clone()]).await,
        vec![answer(NoteKind::Declined, &c2, 10, &b)],
        "{what}: the decline's note"
    );
    let c4 = open_placed(
        &store,
        prefix,
        "c4",
        &Placement::queued(pool.as_str()),
        at(11),
    )
    .await;
    assert_eq!(
        queue(&store, &pool).await,
        vec![c2.clone(), c4.clone()],
        "{what}: front"
    );
    // a comes back online with more room: b is now the longest idle, and passed over.
    let offline = AgentUpdate {
        id: a.clone(),
        status: Some(AgentStatus::Offline),
        ..AgentUpdate::default()
    };
    update_agent(&store, offline, at(12)).await;
    skilled_agent(&store, &a, &[&pool], 3, &[], at(12)).await;
    let got = assign(&store, &pool, at(13)).await;
    assert_eq!(
        pairs(&got),
        vec![(c2.clone(), a.clone()), (c4.clone(), b.clone())],
        "{what}: the decliner passed over, though idle longest"
    );

    // Expired: only that offer is taken back, and a is set away.
    let stale = Withdrawal::Expired { offered_at: at(9) };
    let e = store.take_back(&c2, &a, stale, at(40)).await;
    assert!(
        matches!(&e, Err(e) if conflict_code(e) == Some(NO_PENDING_OFFER)),
        "{what}: an older offer: {e:?}"
    );
    let expired = Withdrawal::Expired { offered_at: at(13) };
    let back = store
        .take_back(&c2, &a, expired, at(44))
        .await
        .unwrap_or_else(|e| panic!("{what}: expire: {e}"));
    assert_eq!(
        back.released_agent.map(|r| r.status),
        Some(AgentStatus::Away),
        "{what}: the agent that let it expire is away"
    );
    assert_eq!(get_agent(&store, &a).await.status, AgentStatus::Away);
    // Noted as expired (not declined), with the agent set away; the stale attempt noted nothing.
    let agent_away = Note::new(NoteKind::AgentUpdated, &a, at(44));
    assert_eq!(
        noted(vec![c2.clone(), a.clone()])
            .await
            .into_iter()
            .filter(|n| n.at > at(13))
            .collect::<Vec<_>>(),
        vec![answer(NoteKind::OfferExpired, &c2, 44, &a), agent_away],
        "{what}: the expiry's notes"
    );
    let got = assign(&store, &pool, at(45)).await;
    assert_eq!(pairs(&got), vec![(c2.clone(), b.clone())], "{what}: to b");

    // Declined by b, the only agent with room: offered to b again.
    store
        .take_back(&c2, &b, Withdrawal::Declined, at(46))
        .await
        .unwrap_or_else(|e| panic!("{what}: decline again: {e}"));
    let got = assign(&store, &pool, at(47)).await;
    assert_eq!(
        pairs(&got),
        vec![(c2.clone(), b.clone())],
        "{what}: nobody else"
    );
    assert_eq!(
        rules(&got),
        [Some(AssignedBy::NoOtherAgent)],
        "{what}: why back to b"
    );

    // A close ends the offer; a transfer to a pool sets its offer time.
    close(&store, &c2, at(48)).await;
    assert!(pending(store.clone()).await.is_empty(), "{what}: closed");
    let to_offer = TransferTarget::Pool(QueueTarget {
        pool: pool.clone(),
        skills: None,
        priority: None,
        offer_secs: 10,
    });
    transfer(&store, &c3, to_offer, at(49)).await;
    let got = assign(&store, &pool, at(50)).await;
    assert_eq!(got.len(), 1, "{what}: c3 assigned again");
    assert_eq!(
        got[0].conversation.offer_expires_at,
        Some(at(60)),
        "{what}: the target pool's offer time"
    );
}

/// A customer waits for an answer ([`Conversation::awaiting_reply_since`]) from their first
/// message after the last reply of the agent holding the conversation; an automatic message
/// (no agent) does not answer them, a transfer keeps the wait. [`Withdrawal::Unanswered`] takes
/// the conversation back only while it is still assigned to that agent, its offer accepted, and
/// both the wait and the assignment began before the cutoff: to the front of the queue, the
/// agent set away (unless the pool keeps it: `sets_away` false), noted. Anything else is refused
/// with [`CONVERSATION_CHANGED`], changing nothing.
pub async fn unanswered_customers_are_taken_back(factory: &impl MakeStore, prefix: &str) {
    let what = "unanswered_customers_are_taken_back";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let (a, b) = (format!("{prefix}agent-a"), format!("{prefix}agent-b"));
    skilled_agent(&store, &a, &[&pool], 2, &[], at(0)).await;
    let refused = |r: Result<Release, StoreError>, step: &str| match r {
        Err(e) => assert_eq!(
            conflict_code(&e),
            Some(CONVERSATION_CHANGED),
            "{what}: {step}: {e}"
        ),
        Ok(r) => panic!("{what}: {step}: taken back {:?}", r.conversation),
    };
    let unanswered = |t: i64| Withdrawal::Unanswered {
        before: at(t),
        sets_away: true,
    };
    let waits_since = |store: Arc<dyn Store>, id: String| async move {
        get_conversation(&store, &id).await.awaiting_reply_since
    };

    // The first message starts the wait; another one does not move it.
    let (_, first, opened) = open(&store, prefix, "c1", &pool, at(2)).await;
    let c1 = opened.id.clone();
    assert_eq!(opened.awaiting_reply_since, Some(at(2)), "{what}: opened");
    let got = assign(&store, &pool, at(3)).await;
    assert_eq!(pairs(&got), vec![(c1.clone(), a.clone())], "{what}: to a");
    let again = inbound_envelope(
        &opened.customer_id,
        &app_channel(),
        "c1",
        first.sender.identities.clone(),
        "anyone there?",
        at(4),
    );
    let rec = record(&store, &again, &pool, at(4)).await;
    assert_eq!(
        rec.conversation.awaiting_reply_since,
        Some(at(2)),
        "{what}: still waiting since the first"
    );
    // The agent's time counts from the assignment (at 3).
    refused(
        store.take_back(&c1, &a, unanswered(3), at(5)).await,
        "assigned at the cutoff",
    );
    refused(
        store.take_back(&c1, &b, unanswered(100), at(5)).await,
        "another agent",
    );

    // The agent's reply answers; an automatic message does not.
    let conversation = get_conversation(&store, &c1).await;
    let reply = outbound_envelope(&conversation, &a, at(6));
    store
        .record_outbound(&c1, Some(&a), &reply, at(6), None)
        .await
        .unwrap_or_else(|e| panic!("{what}: reply: {e}"));
    assert_eq!(
        waits_since(store.clone(), c1.clone()).await,
        None,
        "{what}: answered"
    );
    refused(
        store.take_back(&c1, &a, unanswered(100), at(7)).await,
        "answered",
    );
    let later = Envelope {
        id: new_id(),
        dedupe_key: new_id(),
        ..again.clone()
    };
    record(&store, &later, &pool, at(8)).await;
    let conversation = get_conversation(&store, &c1).await;
    let mut automatic = outbound_envelope(&conversation, &a, at(9));
    automatic.agent_id = None;
    store
        .record_outbound(&c1, None, &automatic, at(9), None)
        .await
        .unwrap_or_else(|e| panic!("{what}: automatic message: {e}"));
    assert_eq!(
        waits_since(store.clone(), c1.clone()).await,
        Some(at(8)),
        "{what}: an automatic message does not answer"
    );
    refused(
        store.take_back(&c1, &a, unanswered(8), at(10)).await,
        "waiting since the cutoff",
    );

    // Taken back: to the front of the queue (its queued_at kept), the agent set away, noted.
    let back = store
        .take_back(&c1, &a, unanswered(9), at(11))
        .await
        .unwrap_or_else(|e| panic!("{what}: take back: {e}"));
    let c = &back.conversation;
    assert_eq!(
        (c.status, c.agent_id.as_deref(), c.queued_at),
        (ConversationStatus::Queued, None, Some(at(2))),
        "{what}: queued again"
    );
    assert_eq!(c.awaiting_reply_since, Some(at(8)), "{what}: still waiting");
    assert_eq!(
        back.released_agent
            .map(|r| (r.id, r.status, r.conversations.len())),
        Some((a.clone(), AgentStatus::Away, 0)),
        "{what}: a let go, away"
    );
    let mut notes: Vec<Note> = store
        .unannounced(at(1000))
        .await
        .unwrap_or_else(|e| panic!("{what}: unannounced: {e}"))
        .into_iter()
        .filter(|n| n.at == at(11) && (n.subject == c1 || n.subject == a))
        .collect();
    notes.sort_by_key(|n| n.kind);
    let taken = Note {
        from_agent: Some(a.clone()),
        ..Note::new(NoteKind::Unanswered, &c1, at(11))
    };
    assert_eq!(
        notes,
        vec![taken, Note::new(NoteKind::AgentUpdated, &a, at(11))],
        "{what}: notes"
    );
    refused(
        store.take_back(&c1, &a, unanswered(100), at(12)).await,
        "taken back twice",
    );

    // The next agent's time counts from its assignment; the wait goes on through it.
    skilled_agent(&store, &b, &[&pool], 2, &[], at(13)).await;
    let got = assign(&store, &pool, at(14)).await;
    assert_eq!(pairs(&got), vec![(c1.clone(), b.clone())], "{what}: to b");
    assert_eq!(
        got[0].conversation.awaiting_reply_since,
        Some(at(8)),
        "{what}: the customer still waits"
    );
    refused(
        store.take_back(&c1, &b, unanswered(14), at(15)).await,
        "b assigned at the cutoff",
    );

    // An offer has its own timeout: an offered conversation is not taken back as unanswered.
    let c2 = open_placed(
        &store,
        prefix,
        "c2",
        &Placement::queued(pool.as_str()).offered_for(30),
        at(16),
    )
    .await;
    let got = assign(&store, &pool, at(17)).await;
    assert_eq!(
        pairs(&got),
        vec![(c2.clone(), b.clone())],
        "{what}: offered"
    );
    refused(
        store.take_back(&c2, &b, unanswered(100), at(18)).await,
        "an offer pending",
    );

    // A pool that does not set its agents away: the conversation is taken back all the same,
    // the agent keeps its status (and c2), and only the take-back is noted.
    let kept = store
        .take_back(
            &c1,
            &b,
            Withdrawal::Unanswered {
                before: at(17),
                sets_away: false,
            },
            at(18),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: take back, b kept online: {e}"));
    assert_eq!(
        (
            kept.conversation.status,
            kept.conversation.agent_id.as_deref()
        ),
        (ConversationStatus::Queued, None),
        "{what}: queued again from b"
    );
    assert_eq!(
        kept.released_agent
            .map(|r| (r.id, r.status, r.conversations)),
        Some((b.clone(), AgentStatus::Online, vec![c2.clone()])),
        "{what}: b let go of c1 only, still online"
    );
    let kinds: Vec<NoteKind> = store
        .unannounced(at(1000))
        .await
        .unwrap_or_else(|e| panic!("{what}: unannounced: {e}"))
        .into_iter()
        .filter(|n| n.at == at(18) && (n.subject == c1 || n.subject == b))
        .map(|n| n.kind)
        .collect();
    assert_eq!(kinds, [NoteKind::Unanswered], "{what}: no agent update");
    close(&store, &c1, at(19)).await;
    close(&store, &c2, at(19)).await;
}

/// Commands' changes are noted in the same step as the change ([`Note`]): an assignment by
/// `assign_queued_noted` (never by routing's `assign_queued`), an agent update, a close and a
/// transfer (with the agent they took the conversation from), and a lapsed agent's expiry. Notes
/// are listed once old enough, oldest first, until cleared; a refused command notes nothing.
pub async fn unannounced_notes(factory: &impl MakeStore, prefix: &str) {
    use NoteKind::*;
    let what = "unannounced_notes";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let other_pool = format!("{prefix}other");
    let (x, y) = (format!("{prefix}agent-x"), format!("{prefix}agent-y"));
    let (_, _, first) = open(&store, prefix, "n1", &pool, at(1)).await;
    let (_, _, second) = open(&store, prefix, "n2", &pool, at(2)).await;
    let (_, _, third) = open(&store, prefix, "n3", &pool, at(2)).await;
    // Only this case's notes: `run_all` shares one store between cases.
    let ours: Vec<String> = vec![
        first.id.clone(),
        second.id.clone(),
        third.id.clone(),
        x.clone(),
        y.clone(),
    ];
    // The notes about `subjects` made at or before `before`.
    let notes_of = |subjects: Vec<String>, before: DateTime<Utc>| {
        let store = Arc::clone(&store);
        async move {
            store
                .unannounced(before)
                .await
                .unwrap_or_else(|e| panic!("{what}: list: {e}"))
                .into_iter()
                .filter(|n| subjects.contains(&n.subject))
                .collect::<Vec<_>>()
        }
    };
    let listed = |before: DateTime<Utc>| notes_of(ours.clone(), before);
    let note = |kind, subject: &str, t: i64, from: Option<&str>| Note {
        kind,
        subject: subject.to_owned(),
        at: at(t),
        from_agent: from.map(str::to_owned),
        via: Vec::new(),
        erasure: None,
    };

    agent(&store, &x, &[&pool], 2, AgentStatus::Online, at(3)).await;
    let made = store
        .assign_queued_noted(&pool, at(4))
        .await
        .unwrap_or_else(|e| panic!("{what}: assign: {e}"));
    assert_eq!(
        pairs(&made),
        vec![
            (first.id.clone(), x.clone()),
            (second.id.clone(), x.clone())
        ],
        "{what}: assignments"
    );
    assert!(listed(at(2)).await.is_empty(), "{what}: listed too early");
    // Notes of the same instant are listed by subject.
    let mut assigned = vec![
        note(Assigned, &first.id, 4, None),
        note(Assigned, &second.id, 4, None),
    ];
    assigned.sort_by(|a, b| a.subject.cmp(&b.subject));
    let mut want = vec![note(AgentUpdated, &x, 3, None)];
    want.extend(assigned);
    assert_eq!(listed(at(4)).await, want, "{what}: agent and assignments");

    store
        .close_conversation(&first.id, "resolved", at(5))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    agent(&store, &y, &[&pool], 1, AgentStatus::Online, at(6)).await;
    for (target, t) in [
        (TransferTarget::Agent(y.clone()), 7),
        (TransferTarget::pool(other_pool.clone()), 8),
    ] {
        store
            .transfer(&second.id, target, None, at(t))
            .await
            .unwrap_or_else(|e| panic!("{what}: transfer: {e}"));
    }
    // Refused commands note nothing.
    assert!(
        store
            .close_conversation(&first.id, "again", at(9))
            .await
            .is_err(),
        "{what}: a second close"
    );
    assert!(
        store
            .transfer(&first.id, TransferTarget::pool(pool.clone()), None, at(9))
            .await
            .is_err(),
        "{what}: a transfer of a closed conversation"
    );
    want.extend([
        note(Closed, &first.id, 5, Some(&x)),
        note(AgentUpdated, &y, 6, None),
        note(TransferredToAgent, &second.id, 7, Some(&x)),
        note(TransferredToPool, &second.id, 8, Some(&y)),
    ]);
    assert_eq!(listed(at(9)).await, want, "{what}: every change");
    assert_eq!(
        listed(at(6)).await,
        want[..5].to_vec(),
        "{what}: those at or before a time"
    );

    // Cleared notes are gone, matched by key (whatever agent a copy names); clearing again
    // changes nothing.
    let mut cleared = want[..3].to_vec();
    cleared[0].from_agent = Some("someone".to_owned());
    for _ in 0..2 {
        store
            .clear_notes(&cleared)
            .await
            .unwrap_or_else(|e| panic!("{what}: clear: {e}"));
        assert_eq!(listed(at(9)).await, want[3..].to_vec(), "{what}: cleared");
    }

    // Routing's `assign_queued` notes nothing.
    let plain = assign(&store, &pool, at(10)).await;
    assert_eq!(
        pairs(&plain),
        vec![(third.id.clone(), x.clone())],
        "{what}: the plain assignment"
    );
    assert_eq!(
        listed(at(10)).await,
        want[3..].to_vec(),
        "{what}: assign_queued noted an assignment"
    );

    // A lapsed agent set offline by a sweep is noted.
    store
        .heartbeat_agent(&y, Duration::from_millis(1), at(11))
        .await
        .unwrap_or_else(|e| panic!("{what}: heartbeat: {e}"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let swept = store
        .expire_lapsed_agents(at(12))
        .await
        .unwrap_or_else(|e| panic!("{what}: sweep: {e}"));
    assert!(swept.iter().any(|a| a.id == y), "{what}: {y} not swept");
    want.push(note(AgentUpdated, &y, 12, None));
    assert_eq!(
        listed(at(12)).await,
        want[3..].to_vec(),
        "{what}: the sweep"
    );

    // A noted link notes each merge, with its keys, and the conversation the merge closed; a
    // plain resolution (routing's) notes nothing.
    let link = |names: [&str; 2], t: i64| ResolveRequest {
        tenant: DEFAULT_TENANT.to_owned(),
        identities: names
            .iter()
            .map(|n| (key(prefix, "app_user", "shop-app", n), Strong))
            .collect(),
        explicit: true,
        display_name: None,
        now: at(t),
        source: None,
    };
    let (older, _, _) = open(&store, prefix, "m1", &pool, at(13)).await;
    let (younger, _, merged_away) = open(&store, prefix, "m2", &pool, at(14)).await;
    let merged = store
        .resolve_customer_noted(link(["m1", "m2"], 15))
        .await
        .unwrap_or_else(|e| panic!("{what}: noted link: {e}"));
    assert_eq!(merged.customer.id, older.id, "{what}: the survivor");
    assert_eq!(merged.closed.len(), 1, "{what}: closed by the merge");
    let mut merge_note = note(Merged, &younger.id, 15, None);
    merge_note.via = vec![key(prefix, "app_user", "shop-app", "m2")];
    // Same instant: by key, `closed` before `merged`.
    assert_eq!(
        notes_of(vec![younger.id.clone(), merged_away.id.clone()], at(15)).await,
        vec![note(Closed, &merged_away.id, 15, None), merge_note],
        "{what}: the link's notes"
    );
    open(&store, prefix, "m3", &pool, at(16)).await;
    let (plain_loser, _, plain_closed) = open(&store, prefix, "m4", &pool, at(17)).await;
    let plain = store
        .resolve_customer(link(["m3", "m4"], 18))
        .await
        .unwrap_or_else(|e| panic!("{what}: plain link: {e}"));
    assert_eq!(plain.merges.len(), 1, "{what}: the plain link merged");
    assert!(
        notes_of(vec![plain_loser.id, plain_closed.id], at(18))
            .await
            .is_empty(),
        "{what}: resolve_customer noted"
    );

    // A merge that closes a conversation a bot held names the bot, in its reply and its note,
    // so `conversation.closed` tells the bot (an agent is named alike: see
    // merge_with_open_conversations).
    let bot = format!("bot:{prefix}faq");
    open(&store, prefix, "m5", &pool, at(19)).await;
    let (bot_loser, _, bot_held) = open(&store, prefix, "m6", &pool, at(20)).await;
    store
        .transfer(
            &bot_held.id,
            TransferTarget::Bot {
                pool: format!("{prefix}bots"),
                bot: bot.clone(),
            },
            None,
            at(21),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: transfer to the bot: {e}"));
    // The transfer's own note, as if announced.
    store
        .clear_notes(&notes_of(vec![bot_held.id.clone()], at(21)).await)
        .await
        .unwrap_or_else(|e| panic!("{what}: clear the transfer's note: {e}"));
    let merged = store
        .resolve_customer_noted(link(["m5", "m6"], 22))
        .await
        .unwrap_or_else(|e| panic!("{what}: noted link of a bot's customer: {e}"));
    assert_eq!(
        merged
            .closed
            .iter()
            .map(|c| (c.conversation.id.as_str(), c.released_holder.as_deref()))
            .collect::<Vec<_>>(),
        vec![(bot_held.id.as_str(), Some(bot.as_str()))],
        "{what}: the merge closed the bot's conversation"
    );
    let mut merge_note = note(Merged, &bot_loser.id, 22, None);
    merge_note.via = vec![key(prefix, "app_user", "shop-app", "m6")];
    assert_eq!(
        notes_of(vec![bot_loser.id.clone(), bot_held.id.clone()], at(22)).await,
        vec![note(Closed, &bot_held.id, 22, Some(&bot)), merge_note],
        "{what}: the close is noted with the bot"
    );
}

/// `record_outbound` only accepts the agent holding an open conversation, and pushes the item
/// staged with it exactly when it records the envelope.
pub async fn record_outbound_conflicts(factory: &impl MakeStore, prefix: &str) {
    let what = "record_outbound_conflicts";
    let store = factory.make().await;
    let outbox = format!("{prefix}outbox");
    let stage = |id: &'static str| MailboxPush {
        key: &outbox,
        id,
        body: "the reply's bus message",
        max_len: 10,
        ttl: Duration::from_secs(60),
    };
    let pool = format!("{prefix}default");
    let x = format!("{prefix}agent-x");
    let y = format!("{prefix}agent-y");
    let (_, e_in, conv) = open(&store, prefix, "c", &pool, at(1)).await;

    let early = store
        .record_outbound(
            &conv.id,
            Some(&x),
            &outbound_envelope(&conv, &x, at(2)),
            at(2),
            Some(stage("early")),
        )
        .await;
    assert_eq!(
        early.as_ref().err().and_then(conflict_code),
        Some("not_assigned_to_agent"),
        "{what}: reply to a queued conversation gave {early:?}"
    );
    agent(&store, &x, &[&pool], 1, AgentStatus::Online, at(3)).await;
    agent(&store, &y, &[&pool], 1, AgentStatus::Online, at(4)).await;
    let got = assign(&store, &pool, at(5)).await;
    assert_eq!(
        pairs(&got),
        vec![(conv.id.clone(), x.clone())],
        "{what}: assignment"
    );
    let conv = got[0].conversation.clone();

    let wrong = store
        .record_outbound(
            &conv.id,
            Some(&y),
            &outbound_envelope(&conv, &y, at(6)),
            at(6),
            Some(stage("wrong")),
        )
        .await;
    assert_eq!(
        wrong.as_ref().err().and_then(conflict_code),
        Some("not_assigned_to_agent"),
        "{what}: reply by the wrong agent gave {wrong:?}"
    );
    let reply = outbound_envelope(&conv, &x, at(7));
    let ok = store
        .record_outbound(&conv.id, Some(&x), &reply, at(7), Some(stage("ok")))
        .await
        .unwrap_or_else(|e| panic!("{what}: reply by the right agent: {e}"));
    assert!(!ok.duplicate, "{what}: a first reply is no duplicate");
    assert_eq!(
        ok.conversation.message_count, 2,
        "{what}: message_count after reply"
    );
    assert_eq!(
        message_ids(&store, &conv.id).await,
        vec![e_in.id.clone(), reply.id.clone()],
        "{what}: messages after reply"
    );
    let missing = store
        .record_outbound(
            &new_id(),
            Some(&x),
            &outbound_envelope(&conv, &x, at(8)),
            at(8),
            Some(stage("missing")),
        )
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{what}: reply to an unknown conversation gave {missing:?}"
    );

    store
        .close_conversation(&conv.id, "agent", at(9))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    for agent_id in [Some(x.as_str()), None] {
        let late = store
            .record_outbound(
                &conv.id,
                agent_id,
                &outbound_envelope(&conv, &x, at(10)),
                at(10),
                Some(stage("late")),
            )
            .await;
        assert_eq!(
            late.as_ref().err().and_then(conflict_code),
            Some("conversation_closed"),
            "{what}: reply ({agent_id:?}) to a closed conversation gave {late:?}"
        );
    }
    assert_eq!(
        message_ids(&store, &conv.id).await.len(),
        2,
        "{what}: refused replies stored"
    );
    let staged: Vec<String> = store
        .mailbox_read(&outbox)
        .await
        .unwrap_or_else(|e| panic!("{what}: read the outbox: {e}"))
        .into_iter()
        .map(|item| format!("{}={}", item.id, item.body))
        .collect();
    assert_eq!(
        staged,
        ["ok=the reply's bus message"],
        "{what}: only the recorded reply's item is pushed"
    );
}

/// `record_outbound` is idempotent by envelope id: recording an id again (a retry after a lost
/// answer, an automatic reply sent twice) changes nothing, stages nothing and answers the
/// conversation holding it, marked duplicate, even once the conversation is closed or when the
/// sender would now be refused.
pub async fn record_outbound_is_idempotent(factory: &impl MakeStore, prefix: &str) {
    let what = "record_outbound_is_idempotent";
    let store = factory.make().await;
    let outbox = format!("{prefix}outbox");
    let stage = |id: &'static str| MailboxPush {
        key: &outbox,
        id,
        body: "the reply's bus message",
        max_len: 10,
        ttl: Duration::from_secs(60),
    };
    let pool = format!("{prefix}default");
    let (_, e_in, conv) = open(&store, prefix, "c", &pool, at(1)).await;

    // An automatic reply (no agent) to the queued conversation.
    let mut reply = outbound_envelope(&conv, "", at(2));
    reply.agent_id = None;
    let first = store
        .record_outbound(&conv.id, None, &reply, at(2), Some(stage("first")))
        .await
        .unwrap_or_else(|e| panic!("{what}: first record: {e}"));
    assert!(!first.duplicate, "{what}: the first record is no duplicate");
    assert_eq!(
        (
            first.conversation.message_count,
            first.conversation.replies_since_inbound
        ),
        (2, 1),
        "{what}: counts after the first record"
    );

    // The same id again, later, even with other content and an agent that does not hold the
    // conversation: the first record stands.
    let mut again = reply.clone();
    again.content = Content::Text {
        text: "a second copy".into(),
    };
    again.agent_id = Some(format!("{prefix}nobody"));
    let second = store
        .record_outbound(
            &conv.id,
            again.agent_id.as_deref(),
            &again,
            at(3),
            Some(stage("second")),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: second record: {e}"));
    assert!(second.duplicate, "{what}: the second record is a duplicate");
    assert_eq!(
        second.conversation, first.conversation,
        "{what}: the conversation is unchanged"
    );
    let stored = store
        .messages(&conv.id, 10)
        .await
        .unwrap_or_else(|e| panic!("{what}: messages: {e}"));
    assert_eq!(
        stored.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        [e_in.id.as_str(), reply.id.as_str()],
        "{what}: the reply is kept once"
    );
    assert_eq!(
        stored[1].content, reply.content,
        "{what}: the first copy is kept"
    );

    // Once the conversation is closed, the same id is still a duplicate, not a conflict.
    store
        .close_conversation(&conv.id, "agent", at(4))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    let late = store
        .record_outbound(&conv.id, None, &reply, at(5), Some(stage("late")))
        .await
        .unwrap_or_else(|e| panic!("{what}: record after the close: {e}"));
    assert!(
        late.duplicate,
        "{what}: a record after the close is a duplicate"
    );
    assert_eq!(
        (late.conversation.id.as_str(), late.conversation.status),
        (conv.id.as_str(), ConversationStatus::Closed),
        "{what}: the conversation holding the reply"
    );
    assert_eq!(
        message_ids(&store, &conv.id).await.len(),
        2,
        "{what}: nothing recorded after the close"
    );

    let staged: Vec<String> = store
        .mailbox_read(&outbox)
        .await
        .unwrap_or_else(|e| panic!("{what}: read the outbox: {e}"))
        .into_iter()
        .map(|item| item.id)
        .collect();
    assert_eq!(staged, ["first"], "{what}: only the first record stages");
}

/// A hand-over context given with a transfer becomes the conversation's `handover` in the same
/// step, in the reply and in the record; a transfer without one keeps it, a later one replaces
/// it, a refused transfer changes nothing, and the closed conversation keeps it.
pub async fn handovers_are_kept_with_the_conversation(factory: &impl MakeStore, prefix: &str) {
    let what = "handovers_are_kept_with_the_conversation";
    let store = factory.make().await;
    let bots = format!("{prefix}bots");
    let humans = format!("{prefix}humans");
    let x = format!("{prefix}agent-x");
    let full = format!("{prefix}agent-full");
    agent(&store, &x, &[&humans], 2, AgentStatus::Online, at(0)).await;
    agent(&store, &full, &[&humans], 0, AgentStatus::Online, at(0)).await;
    let (_, _, conv) = open(&store, prefix, "c", &bots, at(1)).await;
    assert_eq!(conv.handover, None, "{what}: none when opened");
    let handover = |by: &str, intent: &str, t: i64| Handover {
        by: Some(by.to_owned()),
        at: at(t),
        context: HandoverContext {
            summary: Some(format!("{intent}: the customer's story, 中文 too")),
            intent: Some(intent.to_owned()),
            sentiment: Some(Sentiment::Negative),
            language: Some("zh-CN".to_owned()),
            slots: [
                ("order_id".to_owned(), SlotValue::Text("A-1042".to_owned())),
                ("amount".to_owned(), SlotValue::Number(129.into())),
                ("tracked".to_owned(), SlotValue::Flag(false)),
            ]
            .into(),
            transcript_url: Some("https://bot.example.com/t/1".to_owned()),
        },
    };
    let first = handover("bot:faq", "refund", 2);
    let moved = store
        .transfer(
            &conv.id,
            TransferTarget::pool(humans.clone()),
            Some(&first),
            at(2),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: hand over to the pool: {e}"));
    assert_eq!(
        moved.conversation.handover.as_deref(),
        Some(&first),
        "{what}: in the reply"
    );
    assert_eq!(
        get_conversation(&store, &conv.id).await.handover.as_deref(),
        Some(&first),
        "{what}: in the record"
    );

    // Refused: nothing changes, the context given with it included.
    let refused = store
        .transfer(
            &conv.id,
            TransferTarget::Agent(full.clone()),
            Some(&handover("bot:faq", "other", 3)),
            at(3),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Conflict {
                code: "agent_unavailable",
                ..
            })
        ),
        "{what}: a full agent refuses: {refused:?}"
    );
    assert_eq!(
        get_conversation(&store, &conv.id).await.handover.as_deref(),
        Some(&first),
        "{what}: kept after a refused transfer"
    );

    // Without a context: kept; with one: replaced.
    let kept = store
        .transfer(&conv.id, TransferTarget::Agent(x.clone()), None, at(4))
        .await
        .unwrap_or_else(|e| panic!("{what}: transfer to x: {e}"));
    assert_eq!(
        kept.conversation.handover.as_deref(),
        Some(&first),
        "{what}: kept by a transfer without one"
    );
    let second = Handover {
        by: None,
        at: at(5),
        context: HandoverContext {
            intent: Some("escalation".to_owned()),
            ..HandoverContext::default()
        },
    };
    let replaced = store
        .transfer(
            &conv.id,
            TransferTarget::pool(humans.clone()),
            Some(&second),
            at(5),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: hand over again: {e}"));
    assert_eq!(
        replaced.conversation.handover.as_deref(),
        Some(&second),
        "{what}: replaced by the next one"
    );
    let closed = store
        .close_conversation(&conv.id, "agent", at(6))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    assert_eq!(
        closed.conversation.handover.as_deref(),
        Some(&second),
        "{what}: the closed conversation keeps it"
    );
    assert_eq!(
        get_conversation(&store, &conv.id).await.handover.as_deref(),
        Some(&second),
        "{what}: in the closed record"
    );
}

/// A transfer to a bot: the conversation is the bot's (status `bot`, its agent id, the bot's
/// pool), the agent it left is freed, and the pool's silent-bot sweep sees it from the transfer
/// on; the bot holding it already is refused; the bot's hand-off releases it from the sweep.
pub async fn conversations_go_back_to_a_bot(factory: &impl MakeStore, prefix: &str) {
    let what = "conversations_go_back_to_a_bot";
    let store = factory.make().await;
    let humans = format!("{prefix}humans");
    let bots = format!("{prefix}bots");
    let bot = format!("bot:{prefix}faq");
    let x = format!("{prefix}agent-x");
    agent(&store, &x, &[&humans], 1, AgentStatus::Online, at(0)).await;
    let (_, _, conv) = open(&store, prefix, "c", &humans, at(1)).await;
    assert_eq!(
        pairs(&assign(&store, &humans, at(2)).await),
        vec![(conv.id.clone(), x.clone())],
        "{what}: x has it"
    );
    let silent = |t: i64| {
        let store = Arc::clone(&store);
        let bots = bots.clone();
        async move {
            store
                .idle_bot_conversations(&bots, at(t), 10)
                .await
                .unwrap_or_else(|e| panic!("{what}: idle bot conversations: {e}"))
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        }
    };
    let to_bot = || TransferTarget::Bot {
        pool: bots.clone(),
        bot: bot.clone(),
    };

    let moved = store
        .transfer(&conv.id, to_bot(), None, at(3))
        .await
        .unwrap_or_else(|e| panic!("{what}: transfer to the bot: {e}"));
    let c = &moved.conversation;
    assert_eq!(
        (c.status, c.agent_id.as_deref(), c.pool.as_str()),
        (ConversationStatus::Bot, Some(bot.as_str()), bots.as_str()),
        "{what}: the bot's"
    );
    assert_eq!(
        (
            moved.released_agent.map(|a| (a.id, a.conversations.len())),
            moved.released_bot
        ),
        (Some((x.clone(), 0)), None),
        "{what}: x is freed"
    );
    assert!(
        get_agent(&store, &x).await.conversations.is_empty(),
        "{what}: x holds nothing"
    );
    assert_eq!(
        get_conversation(&store, &conv.id).await.status,
        ConversationStatus::Bot,
        "{what}: stored"
    );
    assert!(
        silent(3).await.is_empty(),
        "{what}: not silent since before the transfer"
    );
    assert_eq!(
        silent(4).await,
        vec![conv.id.clone()],
        "{what}: silent since the transfer"
    );

    let again = store.transfer(&conv.id, to_bot(), None, at(5)).await;
    assert!(
        matches!(
            again,
            Err(StoreError::Conflict {
                code: "already_assigned",
                ..
            })
        ),
        "{what}: the bot has it already: {again:?}"
    );

    // The bot hands it off: no longer the bot's, no longer swept.
    let off = store
        .transfer(&conv.id, TransferTarget::pool(humans.clone()), None, at(6))
        .await
        .unwrap_or_else(|e| panic!("{what}: hand-off: {e}"));
    assert_eq!(
        (
            off.conversation.status,
            off.conversation.agent_id,
            off.released_agent.is_none(),
            off.released_bot.as_deref()
        ),
        (ConversationStatus::Queued, None, true, Some(bot.as_str())),
        "{what}: queued again, released by the bot"
    );
    // Both transfers are noted with the one they left: the agent, then the bot.
    let left: Vec<Option<String>> = store
        .unannounced(at(100))
        .await
        .unwrap_or_else(|e| panic!("{what}: notes: {e}"))
        .into_iter()
        .filter(|n| n.subject == conv.id)
        .filter(|n| {
            matches!(
                n.kind,
                NoteKind::TransferredToPool | NoteKind::TransferredToAgent
            )
        })
        .map(|n| n.from_agent)
        .collect();
    assert_eq!(left, [Some(x.clone()), Some(bot.clone())], "{what}: notes");
    assert!(
        silent(100).await.is_empty(),
        "{what}: released from the sweep"
    );

    // Back to the bot, and closed while it holds it: the close names the bot.
    store
        .transfer(&conv.id, to_bot(), None, at(7))
        .await
        .unwrap_or_else(|e| panic!("{what}: back to the bot: {e}"));
    let closed = store
        .close_conversation(&conv.id, "resolved", at(8))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    assert_eq!(
        (
            closed.conversation.status,
            closed.released_agent.is_none(),
            closed.released_bot.as_deref()
        ),
        (ConversationStatus::Closed, true, Some(bot.as_str())),
        "{what}: closed, released by the bot"
    );
    let closed_by: Vec<Option<String>> = store
        .unannounced(at(100))
        .await
        .unwrap_or_else(|e| panic!("{what}: notes: {e}"))
        .into_iter()
        .filter(|n| n.subject == conv.id && n.kind == NoteKind::Closed)
        .map(|n| n.from_agent)
        .collect();
    assert_eq!(closed_by, [Some(bot.clone())], "{what}: the close's note");
    assert!(
        silent(100).await.is_empty(),
        "{what}: a closed conversation is not swept"
    );
}

/// Transfers: to a pool (the agent is freed, the conversation queues at the back with a new
/// `queued_at`), to an agent with room (assigned at once), to a full or unknown agent (refused,
/// nothing changes), of a closed conversation (refused).
pub async fn transfer_to_pool_and_agent(factory: &impl MakeStore, prefix: &str) {
    let what = "transfer_to_pool_and_agent";
    let store = factory.make().await;
    let sales = format!("{prefix}sales");
    let vip = format!("{prefix}vip");
    let x = format!("{prefix}agent-x");
    let y = format!("{prefix}agent-y");
    agent(&store, &x, &[&sales], 1, AgentStatus::Online, at(0)).await;
    let (_, _, conv) = open(&store, prefix, "c", &sales, at(1)).await;
    let (_, _, waiting) = open(&store, prefix, "w", &vip, at(2)).await;
    assert_eq!(
        pairs(&assign(&store, &sales, at(3)).await),
        vec![(conv.id.clone(), x.clone())],
        "{what}: first assignment"
    );

    let moved = store
        .transfer(&conv.id, TransferTarget::pool(vip.clone()), None, at(4))
        .await
        .unwrap_or_else(|e| panic!("{what}: transfer to pool: {e}"));
    let c = &moved.conversation;
    assert_eq!(
        c.status,
        ConversationStatus::Queued,
        "{what}: status after pool transfer"
    );
    assert_eq!(c.pool, vip, "{what}: pool after pool transfer");
    assert_eq!(c.agent_id, None, "{what}: agent_id after pool transfer");
    assert_eq!(
        c.queued_at,
        Some(at(4)),
        "{what}: queued_at after pool transfer"
    );
    let freed = moved
        .released_agent
        .unwrap_or_else(|| panic!("{what}: pool transfer released no agent"));
    assert_eq!(freed.id, x, "{what}: released agent");
    assert!(
        freed.conversations.is_empty(),
        "{what}: released agent still holds it"
    );
    assert!(
        get_agent(&store, &x).await.conversations.is_empty(),
        "{what}: stored agent load"
    );
    assert_eq!(
        queue(&store, &vip).await,
        vec![waiting.id.clone(), conv.id.clone()],
        "{what}: transferred conversation must queue behind earlier ones"
    );

    // x and y are both full: a direct transfer to y is refused and nothing changes.
    agent(&store, &y, &[&sales], 1, AgentStatus::Online, at(5)).await;
    let (_, _, busy) = open(&store, prefix, "b", &sales, at(6)).await;
    assert_eq!(
        pairs(&assign(&store, &sales, at(7)).await),
        vec![(busy.id.clone(), x.clone())],
        "{what}: x (idle since 3) before y (idle since 5)"
    );
    let (_, _, busy2) = open(&store, prefix, "b2", &sales, at(9)).await;
    assert_eq!(
        pairs(&assign(&store, &sales, at(10)).await),
        vec![(busy2.id.clone(), y.clone())],
        "{what}: y takes the next"
    );
    let refused = store
        .transfer(&conv.id, TransferTarget::Agent(y.clone()), None, at(11))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{what}: transfer to a full agent gave {refused:?}"
    );
    let unknown = store
        .transfer(
            &conv.id,
            TransferTarget::Agent(format!("{prefix}nobody")),
            None,
            at(11),
        )
        .await;
    assert!(
        unknown.is_err(),
        "{what}: transfer to an unknown agent succeeded"
    );
    let still = get_conversation(&store, &conv.id).await;
    assert_eq!(
        (still.status, still.pool.as_str(), still.agent_id.as_deref()),
        (ConversationStatus::Queued, vip.as_str(), None),
        "{what}: a refused transfer changed the conversation"
    );
    assert_eq!(
        get_agent(&store, &y).await.conversations,
        vec![busy2.id.clone()],
        "{what}: y"
    );

    // Room for y: the direct transfer assigns it at once and takes it out of the queue.
    set_capacity(&store, &y, 2, at(12)).await;
    let direct = store
        .transfer(&conv.id, TransferTarget::Agent(y.clone()), None, at(13))
        .await
        .unwrap_or_else(|e| panic!("{what}: transfer to agent with room: {e}"));
    assert!(
        direct.released_agent.is_none(),
        "{what}: a queued conversation released an agent"
    );
    let c = direct.conversation;
    assert_eq!(
        c.status,
        ConversationStatus::Assigned,
        "{what}: status after agent transfer"
    );
    assert_eq!(c.assigned_by, Some(AssignedBy::Transfer), "{what}: why y");
    assert_eq!(
        c.agent_id.as_ref(),
        Some(&y),
        "{what}: agent after agent transfer"
    );
    assert_eq!(
        queue(&store, &vip).await,
        vec![waiting.id.clone()],
        "{what}: vip queue"
    );
    let y_now = get_agent(&store, &y).await;
    assert!(
        y_now.conversations.contains(&conv.id),
        "{what}: y does not list it"
    );
    assert_eq!(y_now.conversations.len(), 2, "{what}: y load");

    // Agent to agent: refused while x is full, done (releasing y) once x has room.
    let back = store
        .transfer(&conv.id, TransferTarget::Agent(x.clone()), None, at(14))
        .await;
    assert!(
        matches!(back, Err(StoreError::Conflict { .. })),
        "{what}: transfer to full x gave {back:?}"
    );
    store
        .close_conversation(&busy.id, "agent", at(15))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    let handed = store
        .transfer(&conv.id, TransferTarget::Agent(x.clone()), None, at(16))
        .await
        .unwrap_or_else(|e| panic!("{what}: agent-to-agent transfer: {e}"));
    assert_eq!(
        handed.conversation.agent_id.as_ref(),
        Some(&x),
        "{what}: agent-to-agent"
    );
    assert_eq!(
        handed.released_agent.map(|a| (a.id, a.conversations)),
        Some((y.clone(), vec![busy2.id.clone()])),
        "{what}: agent-to-agent must release y"
    );
    assert_eq!(
        get_agent(&store, &x).await.conversations,
        vec![conv.id.clone()],
        "{what}: x"
    );

    store
        .close_conversation(&conv.id, "agent", at(17))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    let closed = store
        .transfer(&conv.id, TransferTarget::pool(sales.clone()), None, at(18))
        .await;
    assert_eq!(
        closed.as_ref().err().and_then(conflict_code),
        Some("conversation_closed"),
        "{what}: transfer of a closed conversation gave {closed:?}"
    );
    assert!(
        queue(&store, &sales).await.is_empty(),
        "{what}: closed conversation queued"
    );
}

/// Merging two customers who both have an open conversation: the survivor's conversation gets
/// every message, the other is closed with reason `merged` and its agent is freed; later
/// messages under either id land in the survivor's conversation. When only the merged-away
/// customer has one, it moves to the survivor and stays open.
/// Conversations closed before the cut-off go, oldest first and at most `limit` per call, with
/// their messages and the record of their ids (the first message sent again opens a new
/// conversation); open conversations, conversations closed later, and conversations closed by
/// a merge stay.
pub async fn closed_conversations_expire(factory: &impl MakeStore, prefix: &str) {
    let what = "closed_conversations_expire";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    // Later than anything the other cases close, which a store shared by the cases holds too,
    // and which go first.
    let t = |secs: i64| at(1_000_000 + secs);
    while store
        .expire_closed(t(0), 100)
        .await
        .unwrap_or_else(|e| panic!("{what}: expire_closed: {e}"))
        == 100
    {}
    let (_, ea, ca) = open(&store, prefix, "a", &pool, t(1)).await;
    let (_, _, cd) = open(&store, prefix, "d", &pool, t(1)).await;
    let (_, _, cb) = open(&store, prefix, "b", &pool, t(1)).await;
    let (_, _, cc) = open(&store, prefix, "c", &pool, t(1)).await;
    for (conversation, closed_at) in [(&ca, t(2)), (&cd, t(3)), (&cb, t(10))] {
        store
            .close_conversation(&conversation.id, "agent", closed_at)
            .await
            .unwrap_or_else(|e| panic!("{what}: close {}: {e}", conversation.id));
    }
    let expire = |before, limit| {
        let store = Arc::clone(&store);
        async move {
            store
                .expire_closed(before, limit)
                .await
                .unwrap_or_else(|e| panic!("{what}: expire_closed: {e}"))
        }
    };
    assert_eq!(expire(t(5), 1).await, 1, "{what}: the oldest of two");
    assert!(
        store.conversation(&ca.id).await.unwrap().is_none(),
        "{what}: the first closed conversation is still there"
    );
    assert!(
        store.conversation(&cd.id).await.unwrap().is_some(),
        "{what}: the limit was not kept"
    );
    assert_eq!(expire(t(5), 1).await, 1, "{what}: the second");
    assert_eq!(
        expire(t(5), 1).await,
        0,
        "{what}: nothing left before the cut-off"
    );
    assert!(
        store.conversation(&cd.id).await.unwrap().is_none(),
        "{what}: the second closed conversation is still there"
    );
    assert!(
        message_ids(&store, &ca.id).await.is_empty(),
        "{what}: messages of an expired conversation"
    );
    assert_eq!(
        get_conversation(&store, &cb.id).await.status,
        ConversationStatus::Closed,
        "{what}: a conversation closed after the cut-off"
    );
    assert_eq!(
        get_conversation(&store, &cc.id).await.status,
        ConversationStatus::Queued,
        "{what}: an open conversation"
    );
    let again = record(&store, &ea, &pool, t(20)).await;
    assert!(
        !again.duplicate && again.created && again.conversation.id != ca.id,
        "{what}: the first message of an expired conversation, sent again, must open a new \
         conversation: {again:?}"
    );

    // A merge closes the merged-away profile's conversation; it stays.
    let d_key = key(prefix, "app_user", "shop-app", "d");
    let c_key = key(prefix, "app_user", "shop-app", "c");
    let (_, _, cd2) = open(&store, prefix, "d", &pool, t(21)).await;
    let r = resolve(&store, &[(&c_key, Strong), (&d_key, Strong)], false, t(22)).await;
    assert_eq!(r.closed.len(), 1, "{what}: the merge closed {:?}", r.closed);
    let merged_away = r.closed[0].conversation.id.clone();
    assert!(
        [&cc.id, &cd2.id].contains(&&merged_away),
        "{what}: {merged_away}"
    );
    assert!(
        expire(t(100), 100).await >= 1,
        "{what}: the merged-away entry"
    );
    assert!(
        store.conversation(&merged_away).await.unwrap().is_some(),
        "{what}: a conversation closed by a merge expired"
    );
    assert!(
        store.conversation(&cb.id).await.unwrap().is_none(),
        "{what}: the conversation closed at 10 s is still there"
    );
}

pub async fn merge_with_open_conversations(factory: &impl MakeStore, prefix: &str) {
    let what = "merge_with_open_conversations";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let x = format!("{prefix}agent-x");
    let y = format!("{prefix}agent-y");
    agent(&store, &x, &[&pool], 1, AgentStatus::Online, at(0)).await;
    let (a, ea, ca) = open(&store, prefix, "a", &pool, at(1)).await;
    assert_eq!(
        pairs(&assign(&store, &pool, at(2)).await),
        vec![(ca.id.clone(), x.clone())]
    );
    agent(&store, &y, &[&pool], 1, AgentStatus::Online, at(3)).await;
    let (b, eb, cb) = open(&store, prefix, "b", &pool, at(4)).await;
    assert_eq!(
        pairs(&assign(&store, &pool, at(5)).await),
        vec![(cb.id.clone(), y.clone())]
    );

    let a_key = key(prefix, "app_user", "shop-app", "a");
    let b_key = key(prefix, "app_user", "shop-app", "b");
    let phone = key(prefix, "phone", "", "+8613800000003");
    let r = resolve(
        &store,
        &[(&b_key, Strong), (&phone, Strong), (&a_key, Strong)],
        false,
        at(6),
    )
    .await;
    assert_eq!(r.customer.id, a.id, "{what}: survivor");
    assert_eq!(r.merges.len(), 1, "{what}: merges {:?}", r.merges);
    assert_eq!(
        r.closed.len(),
        1,
        "{what}: closed conversations {:?}",
        r.closed
    );
    let closed = &r.closed[0].conversation;
    assert_eq!(
        closed.id, cb.id,
        "{what}: the merged-away customer's conversation closes"
    );
    assert_eq!(
        closed.status,
        ConversationStatus::Closed,
        "{what}: closed status"
    );
    assert_eq!(
        closed.close_reason.as_deref(),
        Some("merged"),
        "{what}: close reason"
    );
    assert_eq!(
        closed.agent_id, None,
        "{what}: closed conversation keeps an agent"
    );
    assert_eq!(
        r.closed[0].released_holder.as_deref(),
        Some(y.as_str()),
        "{what}: the close names the agent it released"
    );
    let stored = get_conversation(&store, &cb.id).await;
    assert_eq!(
        stored.status,
        ConversationStatus::Closed,
        "{what}: stored closed status"
    );
    assert!(
        get_agent(&store, &y).await.conversations.is_empty(),
        "{what}: the closed conversation's agent was not freed"
    );
    assert_eq!(
        get_agent(&store, &x).await.conversations,
        vec![ca.id.clone()],
        "{what}: x"
    );
    let survivor = get_conversation(&store, &ca.id).await;
    assert_eq!(
        survivor.status,
        ConversationStatus::Assigned,
        "{what}: survivor status"
    );
    assert_eq!(survivor.customer_id, a.id, "{what}: survivor customer");
    let ids = message_ids(&store, &ca.id).await;
    assert!(
        ids.contains(&ea.id) && ids.contains(&eb.id) && ids.len() == 2,
        "{what}: survivor's messages should be both customers': {ids:?}"
    );
    let closed_ids = message_ids(&store, &cb.id).await;
    assert!(
        !closed_ids.contains(&eb.id),
        "{what}: a moved message is in two conversations"
    );

    // Replays and new messages under the merged-away id go to the survivor's conversation.
    let dup = record(&store, &eb, &pool, at(7)).await;
    assert!(
        dup.duplicate,
        "{what}: replay of a moved message not a duplicate"
    );
    assert_eq!(
        dup.conversation.id, ca.id,
        "{what}: replay of a moved message"
    );
    let late = inbound_envelope(&b.id, &app_channel(), "b", Vec::new(), "still me", at(8));
    let rec = record(&store, &late, &pool, at(8)).await;
    assert!(
        !rec.created,
        "{what}: message under the old id opened a conversation"
    );
    assert_eq!(
        rec.conversation.id, ca.id,
        "{what}: message under the old id"
    );
    assert_eq!(
        rec.conversation.customer_id, a.id,
        "{what}: message under the old id"
    );

    // Only the merged-away customer has an open conversation: it moves over and stays open.
    let e_key = key(prefix, "app_user", "shop-app", "e");
    let e = resolve(&store, &[(&e_key, Strong)], false, at(9))
        .await
        .customer;
    let (c, _, cc) = open(&store, prefix, "c", &pool, at(10)).await;
    let c_key = key(prefix, "app_user", "shop-app", "c");
    let r = resolve(&store, &[(&c_key, Strong), (&e_key, Strong)], false, at(11)).await;
    assert_eq!(
        r.customer.id, e.id,
        "{what}: older profile without conversation survives"
    );
    assert!(
        r.closed.is_empty(),
        "{what}: a lone open conversation was closed: {:?}",
        r.closed
    );
    let moved = get_conversation(&store, &cc.id).await;
    assert_eq!(
        moved.customer_id, e.id,
        "{what}: conversation not moved to the survivor"
    );
    assert_eq!(
        moved.status,
        ConversationStatus::Queued,
        "{what}: moved conversation status"
    );
    assert_eq!(
        queue(&store, &pool).await,
        vec![cc.id.clone()],
        "{what}: moved stays queued"
    );
    let next = inbound_envelope(&e.id, &app_channel(), "e", Vec::new(), "hi", at(12));
    let rec = record(&store, &next, &pool, at(12)).await;
    assert!(
        !rec.created && rec.conversation.id == cc.id,
        "{what}: survivor's next message"
    );
    let via_old = inbound_envelope(&c.id, &app_channel(), "c", Vec::new(), "hi", at(13));
    let rec = record(&store, &via_old, &pool, at(13)).await;
    assert_eq!(rec.conversation.id, cc.id, "{what}: old id's next message");
}

/// Two channels of one person resolving at once converge on one profile and one conversation.
pub async fn concurrent_resolution_converges(factory: &impl MakeStore, prefix: &str) {
    let what = "concurrent_resolution_converges";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let phone = key(prefix, "phone", "", "+8613800000004");
    let app_key = key(prefix, "app_user", "shop-app", "7");
    let wx_key = key(prefix, "wechat_openid", "wx1", "o7");
    let from_app = [(&app_key, Strong), (&phone, Strong)];
    let from_wechat = [(&wx_key, Strong), (&phone, Strong)];
    let (r1, r2) = tokio::join!(
        resolve(&store, &from_app, false, at(1)),
        resolve(&store, &from_wechat, false, at(1))
    );
    assert_eq!(
        r1.customer.id, r2.customer.id,
        "{what}: concurrent resolutions diverged"
    );
    let id = r1.customer.id.clone();
    for k in [&phone, &app_key, &wx_key] {
        assert_eq!(
            owner(&store, k).await.map(|c| c.id).as_deref(),
            Some(id.as_str()),
            "{what}: {k}"
        );
    }
    let e1 = inbound_envelope(&id, &app_channel(), "7", vec![app_key], "a", at(2));
    let e2 = inbound_envelope(&id, &wechat_channel(), "o7", vec![wx_key], "b", at(2));
    let (i1, i2) = tokio::join!(
        record(&store, &e1, &pool, at(2)),
        record(&store, &e2, &pool, at(2))
    );
    assert_eq!(
        i1.conversation.id, i2.conversation.id,
        "{what}: two conversations opened"
    );
    assert!(
        i1.created != i2.created,
        "{what}: exactly one message opens the conversation"
    );
    assert_eq!(
        queue(&store, &pool).await,
        vec![i1.conversation.id.clone()],
        "{what}: queue"
    );
}

/// A retry of the resolution that created a profile (same `source`) reports it created again,
/// so the router can re-emit `customer.created` after a lost reply; other requests do not.
pub async fn resolve_retry_reports_created(factory: &impl MakeStore, prefix: &str) {
    let what = "resolve_retry_reports_created";
    let store = factory.make().await;
    let k = key(prefix, "app_user", "shop-app", "retry");
    let request = |source: Option<&str>, t: i64| ResolveRequest {
        tenant: DEFAULT_TENANT.to_owned(),
        identities: vec![(k.clone(), Strong)],
        explicit: false,
        display_name: None,
        now: at(t),
        source: source.map(str::to_owned),
    };
    let resolve_with = |source: Option<&'static str>, t: i64| {
        let store = Arc::clone(&store);
        let req = request(source, t);
        async move {
            store
                .resolve_customer(req)
                .await
                .unwrap_or_else(|e| panic!("{what}: resolve_customer: {e}"))
        }
    };
    let first = resolve_with(Some("env-1"), 1).await;
    assert!(first.created, "{what}: first resolution");
    let retry = resolve_with(Some("env-1"), 2).await;
    assert_eq!(
        retry.customer.id, first.customer.id,
        "{what}: retry profile"
    );
    assert!(
        retry.created,
        "{what}: a retry of the creating request must report created"
    );
    let other = resolve_with(Some("env-2"), 3).await;
    assert_eq!(
        other.customer.id, first.customer.id,
        "{what}: later profile"
    );
    assert!(
        !other.created,
        "{what}: a later message reported the profile created"
    );
    let unnamed = resolve_with(None, 4).await;
    assert!(
        !unnamed.created,
        "{what}: a request without source reported created"
    );
}

/// Real time a presence case waits for a short heartbeat TTL to lapse.
const PRESENCE_TTL: Duration = Duration::from_millis(300);
/// A heartbeat TTL that does not lapse during a case.
const LONG_PRESENCE_TTL: Duration = Duration::from_secs(60);

async fn heartbeat(store: &Arc<dyn Store>, id: &str, ttl: Duration, now: DateTime<Utc>) -> bool {
    store
        .heartbeat_agent(id, ttl, now)
        .await
        .unwrap_or_else(|e| panic!("heartbeat_agent({id}, {ttl:?}): {e}"))
}

/// Agent presence (`heartbeat_agent`): a heart-beated agent whose TTL lapses reads as offline,
/// is refused as a transfer target, and is never assigned: the queue head goes to the next
/// agent and the lapsed one is set offline, keeping the conversation it holds. A re-armed
/// heartbeat keeps an agent assignable, `ttl = 0` ends tracking (the agent keeps its status),
/// agents never heart-beated are unaffected, and an unknown agent is `NotFound`. TTLs are real
/// time.
pub async fn presence_heartbeat_ttl(factory: &impl MakeStore, prefix: &str) {
    let what = "presence_heartbeat_ttl";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let [t, r, e, u] =
        ["lapsing", "rearmed", "ended", "untracked"].map(|n| format!("{prefix}agent-{n}"));

    let unknown = store
        .heartbeat_agent(&format!("{prefix}nobody"), PRESENCE_TTL, at(0))
        .await;
    assert!(
        matches!(&unknown, Err(StoreError::NotFound { kind: "agent", .. })),
        "{what}: heartbeat of an unknown agent gave {unknown:?}"
    );

    // t holds a conversation before its gateway dies; then t is the longest idle, r, e, u follow.
    agent(&store, &t, &[&pool], 2, AgentStatus::Online, at(0)).await;
    let (_, _, held) = open(&store, prefix, "held", &pool, at(1)).await;
    assert_eq!(
        pairs(&assign(&store, &pool, at(2)).await),
        vec![(held.id.clone(), t.clone())],
        "{what}: first assignment"
    );
    agent(&store, &r, &[&pool], 1, AgentStatus::Online, at(3)).await;
    agent(&store, &e, &[&pool], 1, AgentStatus::Online, at(4)).await;
    agent(&store, &u, &[&pool], 1, AgentStatus::Online, at(5)).await;

    for id in [&t, &r, &e] {
        assert!(
            !heartbeat(&store, id, PRESENCE_TTL, at(6)).await,
            "{what}: a first heartbeat of `{id}` reported a resumed session"
        );
    }
    assert!(
        !heartbeat(&store, &e, Duration::ZERO, at(6)).await,
        "{what}: ending a session reported it resumed"
    );
    assert_eq!(
        get_agent(&store, &t).await.status,
        AgentStatus::Online,
        "{what}: a live tracked agent must read online"
    );
    tokio::time::sleep(PRESENCE_TTL / 2).await;
    heartbeat(&store, &r, LONG_PRESENCE_TTL, at(7)).await;
    tokio::time::sleep(PRESENCE_TTL * 2).await;

    // t's presence lapsed: reads say offline before anything wrote it.
    assert_eq!(
        get_agent(&store, &t).await.status,
        AgentStatus::Offline,
        "{what}: an agent whose presence lapsed must read offline"
    );
    let listed = store
        .agents()
        .await
        .unwrap_or_else(|err| panic!("{what}: agents: {err}"));
    let status_of = |id: &str| listed.iter().find(|a| a.id == id).map(|a| a.status);
    assert_eq!(
        status_of(&t),
        Some(AgentStatus::Offline),
        "{what}: agents() of the lapsed agent"
    );
    for id in [&r, &e, &u] {
        assert_eq!(
            status_of(id),
            Some(AgentStatus::Online),
            "{what}: agents() of `{id}`"
        );
    }

    let convs: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(
                open(&store, prefix, &format!("c{i}"), &pool, at(10 + i))
                    .await
                    .2
                    .id,
            );
        }
        v
    };
    let refused = store
        .transfer(&convs[0], TransferTarget::Agent(t.clone()), None, at(15))
        .await;
    assert!(
        matches!(&refused, Err(e) if conflict_code(e) == Some("agent_unavailable")),
        "{what}: a transfer to an agent whose presence lapsed gave {refused:?}"
    );

    // The head skips t (set offline), then r (re-armed), e (ended: untracked) and u (untracked).
    let got = assign(&store, &pool, at(20)).await;
    assert_eq!(
        pairs(&got),
        vec![
            (convs[0].clone(), r.clone()),
            (convs[1].clone(), e.clone()),
            (convs[2].clone(), u.clone()),
        ],
        "{what}: assignment must skip the lapsed agent"
    );
    assert_eq!(
        queue(&store, &pool).await,
        vec![convs[3].clone()],
        "{what}: the rest waits"
    );
    let lapsed = get_agent(&store, &t).await;
    assert_eq!(
        lapsed.status,
        AgentStatus::Offline,
        "{what}: status after expiry"
    );
    assert_eq!(lapsed.updated_at, at(20), "{what}: expiry time");
    assert_eq!(
        lapsed.conversations,
        vec![held.id.clone()],
        "{what}: the lapsed agent keeps what it holds"
    );
    let kept = get_conversation(&store, &held.id).await;
    assert_eq!(
        (kept.status, kept.agent_id.as_ref()),
        (ConversationStatus::Assigned, Some(&t)),
        "{what}: the held conversation"
    );
    assert!(
        assign(&store, &pool, at(21)).await.is_empty(),
        "{what}: the lapsed agent (with room) got the last conversation"
    );
    for id in [&r, &e, &u] {
        assert_eq!(
            get_agent(&store, id).await.status,
            AgentStatus::Online,
            "{what}: `{id}` after assignment"
        );
    }
}

/// What follows a lapse: heartbeats that resume restore the status the agent had (online, with
/// `idle_since` = the heartbeat's time, assignable again) and report it; an update without a
/// status expires a lapsed agent first (it ends offline); an explicit status (a new `hello`)
/// replaces the restore; `ttl = 0` of a lapsed session sets the agent offline.
pub async fn presence_lapse_resume_and_updates(factory: &impl MakeStore, prefix: &str) {
    let what = "presence_lapse_resume_and_updates";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let [x, y, z] = ["x", "y", "z"].map(|n| format!("{prefix}agent-{n}"));
    for (i, id) in [&x, &y, &z].into_iter().enumerate() {
        agent(&store, id, &[&pool], 1, AgentStatus::Online, at(i as i64)).await;
        heartbeat(&store, id, PRESENCE_TTL, at(5)).await;
    }
    tokio::time::sleep(PRESENCE_TTL * 2).await;

    // y: an update without status expires it first.
    let updated = set_capacity(&store, &y, 2, at(10)).await;
    assert_eq!(
        (updated.status, updated.capacity),
        (AgentStatus::Offline, 2),
        "{what}: an update of a lapsed agent"
    );
    // z: `ttl = 0` of a lapsed session.
    assert!(
        !heartbeat(&store, &z, Duration::ZERO, at(11)).await,
        "{what}: ending a lapsed session"
    );
    assert_eq!(
        get_agent(&store, &z).await.status,
        AgentStatus::Offline,
        "{what}: ending a lapsed session must leave the agent offline"
    );

    // Nobody is assignable: x is expired by the assignment.
    let (_, _, c1) = open(&store, prefix, "c1", &pool, at(12)).await;
    assert!(
        assign(&store, &pool, at(13)).await.is_empty(),
        "{what}: lapsed agents got a conversation"
    );
    assert_eq!(
        get_agent(&store, &x).await.status,
        AgentStatus::Offline,
        "{what}: x after expiry"
    );

    // x's gateway comes back: the heartbeat resumes x, online, idle since now, assignable.
    assert!(
        heartbeat(&store, &x, LONG_PRESENCE_TTL, at(14)).await,
        "{what}: a heartbeat after expiry must report the session resumed"
    );
    let resumed = get_agent(&store, &x).await;
    assert_eq!(
        (resumed.status, resumed.idle_since, resumed.updated_at),
        (AgentStatus::Online, at(14), at(14)),
        "{what}: the resumed agent"
    );
    assert!(
        !heartbeat(&store, &x, LONG_PRESENCE_TTL, at(15)).await,
        "{what}: a second heartbeat reported a resume"
    );
    assert_eq!(
        pairs(&assign(&store, &pool, at(16)).await),
        vec![(c1.id.clone(), x.clone())],
        "{what}: the resumed agent is assignable"
    );

    // y set away explicitly after its expiry: a later heartbeat does not bring it online.
    update_agent(
        &store,
        AgentUpdate {
            id: y.clone(),
            status: Some(AgentStatus::Away),
            ..AgentUpdate::default()
        },
        at(17),
    )
    .await;
    assert!(
        !heartbeat(&store, &y, LONG_PRESENCE_TTL, at(18)).await,
        "{what}: an explicit status must replace the restore"
    );
    assert_eq!(
        get_agent(&store, &y).await.status,
        AgentStatus::Away,
        "{what}: y keeps its explicit status"
    );
    // z (ended, untracked) comes back online through an explicit update and stays online.
    update_agent(
        &store,
        AgentUpdate {
            id: z.clone(),
            status: Some(AgentStatus::Online),
            ..AgentUpdate::default()
        },
        at(19),
    )
    .await;
    let (_, _, c2) = open(&store, prefix, "c2", &pool, at(20)).await;
    assert_eq!(
        pairs(&assign(&store, &pool, at(21)).await),
        vec![(c2.id.clone(), z.clone())],
        "{what}: an ended session leaves the agent untracked"
    );
}

/// Mailboxes: items come back oldest first and only once per id, acknowledged items go, the
/// oldest give way beyond the length limit, mailboxes are independent, a mailbox expires `ttl`
/// after its latest push (each push extends it), and concurrent pushes of one id add it once.
pub async fn mailbox_push_read_ack(factory: &impl MakeStore, prefix: &str) {
    let what = "mailbox_push_read_ack";
    let store = factory.make().await;
    let long = Duration::from_secs(60);
    let m1 = format!("{prefix}web:visitor-1");
    let m2 = format!("{prefix}web:visitor-2");
    let push = |m: &str, id: &str, body: &str, max_len: usize, ttl: Duration| {
        let store = Arc::clone(&store);
        let (m, id, body) = (m.to_owned(), id.to_owned(), body.to_owned());
        async move {
            store
                .mailbox_push(&m, &id, &body, max_len, ttl)
                .await
                .unwrap_or_else(|e| panic!("{what}: mailbox_push({m}, {id}): {e}"))
        }
    };
    let read = |m: &str| {
        let store = Arc::clone(&store);
        let m = m.to_owned();
        async move {
            store
                .mailbox_read(&m)
                .await
                .unwrap_or_else(|e| panic!("{what}: mailbox_read({m}): {e}"))
                .into_iter()
                .map(|item| (item.id, item.body))
                .collect::<Vec<_>>()
        }
    };
    let ack = |m: &str, ids: &[&str]| {
        let store = Arc::clone(&store);
        let m = m.to_owned();
        let ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
        async move {
            store
                .mailbox_ack(&m, &ids)
                .await
                .unwrap_or_else(|e| panic!("{what}: mailbox_ack({m}): {e}"))
        }
    };
    let pairs = |items: &[(&str, &str)]| -> Vec<(String, String)> {
        items
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };

    assert!(read(&m1).await.is_empty(), "{what}: a new mailbox is empty");
    let odd = "{\"text\":\"你好 👋\\n line two\"}\nraw newline, tab\t, 'quote'";
    assert!(
        push(&m1, "a", "A", 3, long).await,
        "{what}: first push refused"
    );
    assert!(
        push(&m1, "b", odd, 3, long).await,
        "{what}: second push refused"
    );
    assert!(
        push(&m1, "c", "C", 3, long).await,
        "{what}: third push refused"
    );
    assert!(
        !push(&m1, "b", "B again", 3, long).await,
        "{what}: a second push of one id must change nothing"
    );
    assert_eq!(
        read(&m1).await,
        pairs(&[("a", "A"), ("b", odd), ("c", "C")]),
        "{what}: items must come back oldest first, bodies intact, each id once"
    );
    assert!(
        read(&m2).await.is_empty(),
        "{what}: mailboxes are independent"
    );
    store
        .set_key(&m2, "a plain key", long)
        .await
        .unwrap_or_else(|e| panic!("{what}: set_key: {e}"));
    assert!(
        read(&m2).await.is_empty(),
        "{what}: a plain key of the same name is not a mailbox"
    );
    assert!(
        push(&m2, "a", "other A", 3, long).await,
        "{what}: push to m2"
    );

    ack(&m1, &["b", "never-pushed"]).await;
    ack(&m1, &[]).await;
    assert_eq!(
        read(&m1).await,
        pairs(&[("a", "A"), ("c", "C")]),
        "{what}: acknowledging must remove exactly the named items"
    );
    assert_eq!(
        read(&m2).await,
        pairs(&[("a", "other A")]),
        "{what}: acknowledging in one mailbox touched another"
    );

    // Length limit: the oldest give way.
    assert!(push(&m1, "d", "D", 3, long).await, "{what}: push d");
    assert!(push(&m1, "e", "E", 3, long).await, "{what}: push e");
    assert_eq!(
        read(&m1).await,
        pairs(&[("c", "C"), ("d", "D"), ("e", "E")]),
        "{what}: beyond max_len the oldest item must be dropped"
    );
    assert!(
        push(&m1, "f", "F", 0, long).await,
        "{what}: push with max_len 0"
    );
    assert_eq!(
        read(&m1).await,
        pairs(&[("f", "F")]),
        "{what}: max_len 0 keeps the newest item"
    );

    // Emptied by acknowledgement; an acknowledged id may come again.
    ack(&m1, &["f"]).await;
    assert!(read(&m1).await.is_empty(), "{what}: all acknowledged");
    assert!(
        push(&m1, "f", "F again", 3, long).await,
        "{what}: an acknowledged id could not be pushed again"
    );
    assert_eq!(read(&m1).await, pairs(&[("f", "F again")]));

    // The head of a mailbox, with its length; acknowledging its head, its tail, its middle.
    let m6 = format!("{prefix}web:visitor-6");
    let all = ["h1", "h2", "h3", "h4", "h5"];
    for id in all {
        assert!(push(&m6, id, id, 10, long).await, "{what}: push {id}");
    }
    let head = |limit: usize| {
        let store = Arc::clone(&store);
        let m = m6.clone();
        async move {
            let head = store
                .mailbox_head(&m, limit)
                .await
                .unwrap_or_else(|e| panic!("{what}: mailbox_head({m}, {limit}): {e}"));
            let ids: Vec<String> = head.items.into_iter().map(|item| item.id).collect();
            (head.len, ids)
        }
    };
    let ids = |items: &[&str]| items.iter().map(|i| (*i).to_owned()).collect::<Vec<_>>();
    assert_eq!(head(0).await, (5, Vec::new()), "{what}: head(0)");
    assert_eq!(head(2).await, (5, ids(&all[..2])), "{what}: head(2)");
    assert_eq!(head(9).await, (5, ids(&all)), "{what}: head(9)");
    for id in ["h1", "h5", "h3"] {
        ack(&m6, &[id]).await;
    }
    assert_eq!(
        read(&m6).await,
        pairs(&[("h2", "h2"), ("h4", "h4")]),
        "{what}: acknowledging the head, the tail and the middle"
    );
    assert_eq!(
        head(1).await,
        (2, ids(&["h2"])),
        "{what}: head(1) after acks"
    );

    // Expiry: the whole mailbox expires after its latest push; a later push extends it.
    let short = Duration::from_millis(300);
    let m3 = format!("{prefix}web:visitor-3");
    let m4 = format!("{prefix}web:visitor-4");
    assert!(push(&m3, "x", "X", 10, short).await, "{what}: push x");
    assert!(push(&m4, "y1", "Y1", 10, short).await, "{what}: push y1");
    assert!(push(&m4, "y2", "Y2", 10, long).await, "{what}: push y2");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        read(&m3).await.is_empty(),
        "{what}: a mailbox did not expire after its TTL"
    );
    assert_eq!(
        read(&m4).await,
        pairs(&[("y1", "Y1"), ("y2", "Y2")]),
        "{what}: a later push must extend the whole mailbox"
    );
    assert!(
        push(&m3, "x", "X2", 10, long).await,
        "{what}: an expired mailbox must accept its old ids again"
    );
    assert_eq!(read(&m3).await, pairs(&[("x", "X2")]));

    // Concurrent pushes of one id add it once; of distinct ids, all of them.
    let m5 = format!("{prefix}web:visitor-5");
    let same = (0..16).map(|i| push(&m5, "dup", if i % 2 == 0 { "D0" } else { "D1" }, 100, long));
    let added = futures_util::future::join_all(same)
        .await
        .into_iter()
        .filter(|added| *added)
        .count();
    assert_eq!(
        added, 1,
        "{what}: concurrent pushes of one id added it {added} times"
    );
    let ids: Vec<String> = (0..16).map(|i| format!("id-{i}")).collect();
    let distinct = ids.iter().map(|id| push(&m5, id, "body", 100, long));
    let all = futures_util::future::join_all(distinct).await;
    assert!(
        all.iter().all(|a| *a),
        "{what}: a concurrent push was refused"
    );
    let got = read(&m5).await;
    assert_eq!(
        got.len(),
        17,
        "{what}: concurrent pushes lost items: {got:?}"
    );
    let unique: HashSet<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(unique.len(), 17, "{what}: an id appears twice: {got:?}");
}

/// `expire_lapsed_agents` sets offline, once, exactly the presence-tracked agents whose
/// presence lapsed, and returns them; live and never-tracked agents are left alone, and a
/// resumed heartbeat brings a swept agent back. An agent that an assignment set offline before
/// the sweep came is returned by the sweep too, once, so its expiry is announced as well.
pub async fn lapsed_agents_are_swept(factory: &impl MakeStore, prefix: &str) {
    let what = "lapsed_agents_are_swept";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let met_pool = format!("{prefix}met-pool");
    let [gone, live, plain] = ["gone", "live", "plain"].map(|n| format!("{prefix}agent-{n}"));
    for id in [&gone, &live, &plain] {
        agent(&store, id, &[&pool], 1, AgentStatus::Online, at(0)).await;
    }
    let met = format!("{prefix}agent-met");
    agent(&store, &met, &[&met_pool], 1, AgentStatus::Online, at(0)).await;
    heartbeat(&store, &gone, PRESENCE_TTL, at(1)).await;
    heartbeat(&store, &met, PRESENCE_TTL, at(1)).await;
    heartbeat(&store, &live, LONG_PRESENCE_TTL, at(1)).await;
    // Other cases may share the store: only this case's agents count.
    let sweep = |t: i64| {
        let store = Arc::clone(&store);
        let prefix = prefix.to_owned();
        async move {
            store
                .expire_lapsed_agents(at(t))
                .await
                .unwrap_or_else(|e| panic!("{what}: expire_lapsed_agents: {e}"))
                .into_iter()
                .filter(|a| a.id.starts_with(&prefix))
                .collect::<Vec<Agent>>()
        }
    };
    assert!(
        sweep(2).await.is_empty(),
        "{what}: swept an agent whose presence is alive"
    );
    tokio::time::sleep(PRESENCE_TTL * 2).await;
    // An assignment meets `met` first and sets it offline; the sweep announces it.
    open(&store, prefix, "waits", &met_pool, at(2)).await;
    assert!(
        assign(&store, &met_pool, at(2)).await.is_empty(),
        "{what}: a lapsed agent got a conversation"
    );
    assert_eq!(get_agent(&store, &met).await.updated_at, at(2));
    let mut swept = sweep(3).await;
    swept.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected = vec![(gone.clone(), at(3)), (met.clone(), at(2))];
    expected.sort();
    assert_eq!(
        swept
            .iter()
            .map(|a| (a.id.clone(), a.updated_at))
            .collect::<Vec<_>>(),
        expected,
        "{what}: swept agents (with the time each was set offline)"
    );
    for agent in &swept {
        assert_eq!(
            agent.status,
            AgentStatus::Offline,
            "{what}: swept status of `{}`",
            agent.id
        );
    }
    assert_eq!(get_agent(&store, &gone).await.status, AgentStatus::Offline);
    assert_eq!(get_agent(&store, &live).await.status, AgentStatus::Online);
    assert_eq!(get_agent(&store, &plain).await.status, AgentStatus::Online);
    assert!(
        sweep(4).await.is_empty(),
        "{what}: an agent was swept twice"
    );
    assert!(
        heartbeat(&store, &gone, LONG_PRESENCE_TTL, at(5)).await,
        "{what}: a heartbeat after the sweep must resume the session"
    );
    assert_eq!(
        get_agent(&store, &gone).await.status,
        AgentStatus::Online,
        "{what}: resumed status"
    );
}

/// A message from the person with app-user key `{prefix}{name}` (and the `extra` keys), not
/// routed yet (no `customer_id`).
pub(crate) fn unrouted(
    prefix: &str,
    name: &str,
    extra: &[IdentityKey],
    now: DateTime<Utc>,
) -> Envelope {
    let mut identities = vec![key(prefix, "app_user", "shop-app", name)];
    identities.extend_from_slice(extra);
    let mut e = inbound_envelope("", &app_channel(), name, identities, "hello", now);
    e.customer_id = None;
    e
}

/// What the router asks [`Store::route_inbound`] for `envelope`: its identities at their default
/// strength, its dedupe key claimed (under `prefix`) for a minute, new conversations in `pool`.
fn routing<'a>(
    prefix: &str,
    envelope: &'a Envelope,
    pool: &str,
    now: DateTime<Utc>,
) -> InboundRouting<'a> {
    InboundRouting {
        envelope,
        resolve: ResolveRequest::of_sender(envelope, false, now),
        claim: format!("{prefix}routed:{}", envelope.dedupe_key),
        claim_ttl: Duration::from_secs(60),
        placement: Placement::queued(pool.to_owned()),
    }
}

async fn route(store: &Arc<dyn Store>, req: InboundRouting<'_>) -> InboundOutcome {
    let id = req.envelope.id.clone();
    store
        .route_inbound(req)
        .await
        .unwrap_or_else(|e| panic!("route_inbound({id}): {e}"))
}

/// The parts of a [`InboundOutcome::Routed`]; panics on a duplicate.
fn routed(
    what: &str,
    outcome: InboundOutcome,
) -> (SenderResolution, InboundRecord, Vec<Assignment>) {
    match outcome {
        InboundOutcome::Routed {
            resolution,
            record,
            assignments,
        } => (resolution, record, assignments),
        InboundOutcome::Duplicate { first } => {
            panic!("{what}: routed as a duplicate of `{first}`")
        }
    }
}

/// A first message of a new customer, with an online agent of the pool having room: one call
/// creates the profile, opens the conversation (reported as recorded, queued), stores the
/// message with both ids filled in, and assigns the conversation to the agent.
pub async fn route_inbound_opens_and_assigns(factory: &impl MakeStore, prefix: &str) {
    let what = "route_inbound_opens_and_assigns";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let x = format!("{prefix}agent-x");
    agent(&store, &x, &[&pool], 2, AgentStatus::Online, at(0)).await;
    let e = unrouted(prefix, "new", &[], at(1));
    let (resolution, record, assignments) =
        routed(what, route(&store, routing(prefix, &e, &pool, at(1))).await);

    let customer = resolution
        .profile
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: a created profile must come with the outcome"));
    assert_eq!(customer.id, resolution.customer_id, "{what}: customer id");
    assert!(resolution.created, "{what}: profile not reported created");
    assert!(
        resolution.merges.is_empty() && resolution.closed.is_empty(),
        "{what}: a new customer merged: {resolution:?}"
    );
    let k = key(prefix, "app_user", "shop-app", "new");
    assert_eq!(
        owner(&store, &k).await.map(|c| c.id).as_deref(),
        Some(customer.id.as_str()),
        "{what}: the sender's key does not lead to the profile"
    );
    let conversation = &record.conversation;
    assert!(
        record.created && !record.duplicate,
        "{what}: record {record:?}"
    );
    assert_eq!(
        conversation.status,
        ConversationStatus::Queued,
        "{what}: the record must show the conversation as recorded, before its assignment"
    );
    assert_eq!(conversation.customer_id, customer.id, "{what}: customer");
    assert_eq!(conversation.pool, pool, "{what}: pool");
    assert_eq!(conversation.message_count, 1, "{what}: message count");
    assert_eq!(
        pairs(&assignments),
        vec![(conversation.id.clone(), x.clone())],
        "{what}: assignments"
    );
    assert_eq!(
        assignments[0].conversation.status,
        ConversationStatus::Assigned,
        "{what}: assignment status"
    );
    let stored = get_conversation(&store, &conversation.id).await;
    assert_eq!(
        (stored.status, stored.agent_id.as_deref()),
        (ConversationStatus::Assigned, Some(x.as_str())),
        "{what}: stored conversation"
    );
    assert_eq!(
        get_agent(&store, &x).await.conversations,
        vec![conversation.id.clone()],
        "{what}: agent load"
    );
    assert!(queue(&store, &pool).await.is_empty(), "{what}: queue");
    let messages = store
        .messages(&conversation.id, 10)
        .await
        .unwrap_or_else(|err| panic!("{what}: messages: {err}"));
    assert_eq!(messages.len(), 1, "{what}: messages {messages:?}");
    let m = &messages[0];
    assert_eq!(m.id, e.id, "{what}: stored message");
    assert_eq!(
        (m.customer_id.as_deref(), m.conversation_id.as_deref()),
        (Some(customer.id.as_str()), Some(conversation.id.as_str())),
        "{what}: the stored message's ids"
    );
    assert_eq!(m.content, e.content, "{what}: stored content");
}

/// With no agent to take it, a routed message's conversation stays queued and nothing is
/// assigned; a later [`Store::assign_queued`] hands it to an agent who came online.
pub async fn route_inbound_queues_without_agent(factory: &impl MakeStore, prefix: &str) {
    let what = "route_inbound_queues_without_agent";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let x = format!("{prefix}agent-x");
    agent(&store, &x, &[&pool], 2, AgentStatus::Away, at(0)).await;
    let e = unrouted(prefix, "waiting", &[], at(1));
    let (_, record, assignments) =
        routed(what, route(&store, routing(prefix, &e, &pool, at(1))).await);
    let id = record.conversation.id.clone();
    assert!(record.created, "{what}: no conversation opened");
    assert!(
        assignments.is_empty(),
        "{what}: assigned without an online agent: {:?}",
        pairs(&assignments)
    );
    assert_eq!(
        get_conversation(&store, &id).await.status,
        ConversationStatus::Queued,
        "{what}: stored status"
    );
    assert_eq!(
        queue(&store, &pool).await,
        vec![id.clone()],
        "{what}: queue"
    );

    update_agent(
        &store,
        AgentUpdate {
            id: x.clone(),
            status: Some(AgentStatus::Online),
            ..AgentUpdate::default()
        },
        at(2),
    )
    .await;
    assert_eq!(
        pairs(&assign(&store, &pool, at(3)).await),
        vec![(id.clone(), x.clone())],
        "{what}: the queued conversation was not assigned later"
    );
    assert!(queue(&store, &pool).await.is_empty(), "{what}: queue after");
}

/// A conversation opened with a bot starts held by it (status `bot`), outside the pool's queue:
/// no agent gets it, however much room they have. Its messages and the bot's replies are
/// recorded in it; a transfer to the pool hands it to an agent, and it closes like any other.
pub async fn route_inbound_opens_with_a_bot(factory: &impl MakeStore, prefix: &str) {
    let what = "route_inbound_opens_with_a_bot";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let bot = format!("bot:{prefix}faq");
    let x = format!("{prefix}agent-x");
    agent(&store, &x, &[&pool], 5, AgentStatus::Online, at(0)).await;
    let e = unrouted(prefix, "asks-the-bot", &[], at(1));
    let mut req = routing(prefix, &e, &pool, at(1));
    req.placement.bot = Some(bot.clone());
    let (_, record, assignments) = routed(what, route(&store, req).await);
    let id = record.conversation.id.clone();
    assert!(record.created, "{what}: no conversation opened");
    assert!(
        assignments.is_empty(),
        "{what}: assigned to an agent: {:?}",
        pairs(&assignments)
    );
    let held = get_conversation(&store, &id).await;
    assert_eq!(
        (held.status, held.agent_id.as_deref(), held.pool.as_str()),
        (ConversationStatus::Bot, Some(bot.as_str()), pool.as_str()),
        "{what}: stored conversation"
    );
    assert_eq!(held.queued_at, None, "{what}: queued_at");
    assert!(queue(&store, &pool).await.is_empty(), "{what}: queued");
    assert!(
        assign(&store, &pool, at(2)).await.is_empty(),
        "{what}: an assignment pass took it from the bot"
    );

    // The customer's next message stays with the bot; the bot answers as its agent.
    let mut next = unrouted(prefix, "asks-the-bot", &[], at(3));
    next.dedupe_key = format!("{prefix}second");
    let mut req = routing(prefix, &next, &pool, at(3));
    req.placement.bot = Some(bot.clone());
    let (_, record, _) = routed(what, route(&store, req).await);
    assert_eq!(
        (record.conversation.id.as_str(), record.created),
        (id.as_str(), false),
        "{what}: the second message"
    );
    let reply = outbound_envelope(&held, &bot, at(4));
    store
        .record_outbound(&id, Some(&bot), &reply, at(4), None)
        .await
        .unwrap_or_else(|e| panic!("{what}: the bot's reply: {e}"));
    let refused = store
        .record_outbound(
            &id,
            Some(&x),
            &outbound_envelope(&held, &x, at(4)),
            at(4),
            None,
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Conflict {
                code: "not_assigned_to_agent",
                ..
            })
        ),
        "{what}: an agent replied in the bot's conversation: {refused:?}"
    );
    assert_eq!(message_ids(&store, &id).await.len(), 3, "{what}: messages");

    // The hand-off: to the pool's queue, and on to the agent.
    let release = store
        .transfer(&id, TransferTarget::pool(pool.clone()), None, at(5))
        .await
        .unwrap_or_else(|e| panic!("{what}: transfer: {e}"));
    assert!(
        release.released_agent.is_none(),
        "{what}: released an agent"
    );
    assert_eq!(release.conversation.status, ConversationStatus::Queued);
    assert_eq!(
        pairs(&assign(&store, &pool, at(6)).await),
        vec![(id.clone(), x.clone())],
        "{what}: the handed-off conversation was not assigned"
    );

    // Closing a conversation the bot holds releases no agent.
    let other = unrouted(prefix, "closes-with-the-bot", &[], at(7));
    let mut req = routing(prefix, &other, &pool, at(7));
    req.placement.bot = Some(bot.clone());
    let (_, record, _) = routed(what, route(&store, req).await);
    let release = store
        .close_conversation(&record.conversation.id, "bot", at(8))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    assert!(
        release.released_agent.is_none(),
        "{what}: close released an agent"
    );
    assert_eq!(release.conversation.status, ConversationStatus::Closed);
    assert_eq!(
        release.conversation.agent_id, None,
        "{what}: closed agent_id"
    );
}

/// A bot's conversations of a pool, longest silent first: a message either way makes one
/// recent again; one the bot no longer holds (handed off, closed) is not among them.
pub async fn idle_bot_conversations_longest_silent_first(factory: &impl MakeStore, prefix: &str) {
    let what = "idle_bot_conversations_longest_silent_first";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let bot = format!("bot:{prefix}faq");
    let open = |name: &'static str, t: i64, with_bot: bool| {
        let (store, pool, bot) = (&store, &pool, &bot);
        async move {
            let e = unrouted(prefix, name, &[], at(t));
            let mut req = routing(prefix, &e, pool, at(t));
            req.placement.bot = with_bot.then(|| bot.clone());
            routed(what, route(store, req).await).1.conversation
        }
    };
    let idle = |before: i64, limit: usize| {
        let (store, pool) = (&store, &pool);
        async move {
            store
                .idle_bot_conversations(pool, at(before), limit)
                .await
                .unwrap_or_else(|e| panic!("{what}: idle_bot_conversations: {e}"))
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        }
    };
    let a = open("first", 1, true).await;
    let _queued = open("queued", 2, false).await;
    let c = open("second", 3, true).await;
    assert_eq!(
        idle(5, 10).await,
        [a.id.as_str(), c.id.as_str()],
        "{what}: both, oldest first"
    );
    assert_eq!(
        idle(2, 10).await,
        [a.id.as_str()],
        "{what}: silent since before 2"
    );
    assert_eq!(idle(5, 1).await, [a.id.as_str()], "{what}: limit");
    assert!(
        store
            .idle_bot_conversations(&format!("{prefix}other"), at(9), 10)
            .await
            .unwrap()
            .is_empty(),
        "{what}: another pool"
    );

    // The bot answers in `a` at 6, the customer writes in `c` at 7.
    store
        .record_outbound(
            &a.id,
            Some(&bot),
            &outbound_envelope(&a, &bot, at(6)),
            at(6),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: the bot's reply: {e}"));
    let mut later = unrouted(prefix, "second", &[], at(7));
    later.dedupe_key = format!("{prefix}second-again");
    route(&store, routing(prefix, &later, &pool, at(7))).await;
    assert_eq!(
        idle(7, 10).await,
        [a.id.as_str()],
        "{what}: after the messages"
    );
    assert_eq!(
        idle(8, 10).await,
        [a.id.as_str(), c.id.as_str()],
        "{what}: both again"
    );

    store
        .transfer(&a.id, TransferTarget::pool(pool.clone()), None, at(8))
        .await
        .unwrap_or_else(|e| panic!("{what}: transfer: {e}"));
    assert_eq!(
        idle(9, 10).await,
        [c.id.as_str()],
        "{what}: after the hand-off"
    );
    store
        .close_conversation(&c.id, "bot", at(9))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    assert!(idle(10, 10).await.is_empty(), "{what}: after the close");
}

/// `close_idle` closes a queued or assigned conversation only when nothing changed since the
/// given time, in the same step: a message recorded meanwhile keeps it open; a closed
/// conversation, or one a bot holds, is not its to close.
pub async fn close_idle_only_when_unchanged(factory: &impl MakeStore, prefix: &str) {
    let what = "close_idle_only_when_unchanged";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let x = format!("{prefix}agent-x");
    agent(&store, &x, &[&pool], 1, AgentStatus::Online, at(0)).await;
    let changed = |r: Result<Release, StoreError>| {
        matches!(
            r,
            Err(StoreError::Conflict {
                code: "conversation_changed",
                ..
            })
        )
    };
    let e = unrouted(prefix, "quiet", &[], at(1));
    let id = routed(what, route(&store, routing(prefix, &e, &pool, at(1))).await)
        .1
        .conversation
        .id;
    assert!(
        changed(store.close_idle(&id, at(1), at(1)).await),
        "{what}: changed at the cut-off itself"
    );
    let mut later = unrouted(prefix, "quiet", &[], at(3));
    later.dedupe_key = format!("{prefix}quiet-again");
    route(&store, routing(prefix, &later, &pool, at(3))).await;
    assert!(
        changed(store.close_idle(&id, at(2), at(3)).await),
        "{what}: a message came after the cut-off"
    );
    assert_eq!(
        get_conversation(&store, &id).await.status,
        ConversationStatus::Assigned,
        "{what}: still open"
    );
    let release = store
        .close_idle(&id, at(4), at(4))
        .await
        .unwrap_or_else(|e| panic!("{what}: close_idle: {e}"));
    assert_eq!(release.conversation.status, ConversationStatus::Closed);
    assert_eq!(release.conversation.close_reason.as_deref(), Some("idle"));
    assert_eq!(
        release.released_agent.map(|a| a.id),
        Some(x.clone()),
        "{what}: the agent's room"
    );
    assert!(
        changed(store.close_idle(&id, at(9), at(9)).await),
        "{what}: closed already"
    );

    let b = unrouted(prefix, "with-the-bot", &[], at(5));
    let mut req = routing(prefix, &b, &pool, at(5));
    req.placement.bot = Some(format!("bot:{prefix}faq"));
    let held = routed(what, route(&store, req).await).1.conversation.id;
    assert!(
        changed(store.close_idle(&held, at(9), at(9)).await),
        "{what}: a bot's conversation"
    );
    assert!(
        matches!(
            store
                .close_idle(&format!("{prefix}nope"), at(9), at(9))
                .await,
            Err(StoreError::NotFound { .. })
        ),
        "{what}: an unknown conversation"
    );
}

/// Routing the same envelope again (a redelivery after a lost reply or a failed publish)
/// reports what the first call did, `created` flags included, and changes nothing: no second
/// message, no second assignment. A retry of a later message reports nothing as created.
pub async fn route_inbound_retry_changes_nothing(factory: &impl MakeStore, prefix: &str) {
    let what = "route_inbound_retry_changes_nothing";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let x = format!("{prefix}agent-x");
    agent(&store, &x, &[&pool], 5, AgentStatus::Online, at(0)).await;
    let e = unrouted(prefix, "retry", &[], at(1));
    let (first, opened, assigned) =
        routed(what, route(&store, routing(prefix, &e, &pool, at(1))).await);
    let id = opened.conversation.id.clone();
    assert_eq!(pairs(&assigned), vec![(id.clone(), x.clone())], "{what}");

    let (resolution, record, assignments) =
        routed(what, route(&store, routing(prefix, &e, &pool, at(2))).await);
    assert_eq!(
        resolution.customer_id, first.customer_id,
        "{what}: retry profile"
    );
    assert!(
        resolution.created,
        "{what}: a retry must report the profile created (customer.created is re-emitted)"
    );
    assert!(
        record.duplicate && record.created,
        "{what}: a retry must be a duplicate that opened the conversation: {record:?}"
    );
    assert_eq!(record.conversation.id, id, "{what}: retry conversation");
    assert_eq!(
        (
            record.conversation.status,
            record.conversation.agent_id.as_deref()
        ),
        (ConversationStatus::Assigned, Some(x.as_str())),
        "{what}: a retry reports the stored conversation"
    );
    assert!(
        assignments.is_empty(),
        "{what}: a retry assigned again: {:?}",
        pairs(&assignments)
    );
    assert_eq!(
        message_ids(&store, &id).await,
        vec![e.id.clone()],
        "{what}: messages after the retry"
    );
    assert_eq!(
        get_conversation(&store, &id).await.message_count,
        1,
        "{what}: message count"
    );
    assert_eq!(
        get_agent(&store, &x).await.conversations,
        vec![id.clone()],
        "{what}: agent load"
    );

    let later = unrouted(prefix, "retry", &[], at(3));
    let (resolution, record, _) = routed(
        what,
        route(&store, routing(prefix, &later, &pool, at(3))).await,
    );
    assert!(
        !resolution.created && !record.created && !record.duplicate,
        "{what}: a later message: {resolution:?} {record:?}"
    );
    assert!(
        resolution.profile.is_none(),
        "{what}: the profile of a known customer is not read back for routing: {resolution:?}"
    );
    let (resolution, record, assignments) = routed(
        what,
        route(&store, routing(prefix, &later, &pool, at(4))).await,
    );
    assert!(
        !resolution.created && !record.created && record.duplicate && assignments.is_empty(),
        "{what}: a retry of a later message: {resolution:?} {record:?}"
    );
    assert_eq!(
        message_ids(&store, &id).await,
        vec![e.id.clone(), later.id.clone()],
        "{what}: messages"
    );
}

/// Routes with [`Store::route_inbound`], or with [`route_inbound_stepwise`] when `stepwise`.
async fn route_via(
    store: &Arc<dyn Store>,
    stepwise: bool,
    req: InboundRouting<'_>,
) -> InboundOutcome {
    if stepwise {
        let id = req.envelope.id.clone();
        route_inbound_stepwise(&**store, req)
            .await
            .unwrap_or_else(|e| panic!("route_inbound_stepwise({id}): {e}"))
    } else {
        route(store, req).await
    }
}

/// A routing that also assigned *other* conversations (queued ahead of its own, because room
/// freed without an assignment) reports them again when it is retried, as long as each is still
/// with the agent it got, so that their `conversation.assigned` is not lost with a lost reply.
/// Once such a conversation is closed, a retry no longer reports it. The same holds for
/// [`route_inbound_stepwise`].
pub async fn route_inbound_retry_reports_other_assignments(factory: &impl MakeStore, prefix: &str) {
    let store = factory.make().await;
    for stepwise in [false, true] {
        let what = if stepwise {
            "route_inbound_retry_reports_other_assignments (stepwise)"
        } else {
            "route_inbound_retry_reports_other_assignments"
        };
        let prefix = format!(
            "{prefix}{}.",
            if stepwise { "stepwise" } else { "one-call" }
        );
        let pool = format!("{prefix}default");
        let x = format!("{prefix}agent-x");
        agent(&store, &x, &[&pool], 1, AgentStatus::Online, at(0)).await;
        // Routes `envelope` at second `t`.
        let route_at = async |envelope: &Envelope, t: i64| {
            routed(
                what,
                route_via(&store, stepwise, routing(&prefix, envelope, &pool, at(t))).await,
            )
        };
        let (_, first, _) = route_at(&unrouted(&prefix, "a", &[], at(1)), 1).await;
        let (_, waiting, none) = route_at(&unrouted(&prefix, "b", &[], at(2)), 2).await;
        assert!(none.is_empty(), "{what}: b was assigned to a full agent");
        // Room frees without an assignment: the next routing assigns b, then its own.
        set_capacity(&store, &x, 3, at(3)).await;
        let c = unrouted(&prefix, "c", &[], at(4));
        let (_, own, assigned) = route_at(&c, 4).await;
        assert_eq!(
            pairs(&assigned),
            vec![
                (waiting.conversation.id.clone(), x.clone()),
                (own.conversation.id.clone(), x.clone()),
            ],
            "{what}: the routing of c"
        );
        // The retry (its first reply was lost) reports b's assignment again, unchanged.
        let (_, again, replayed) = route_at(&c, 5).await;
        assert!(again.duplicate, "{what}: the retry is a duplicate");
        assert_eq!(
            pairs(&replayed),
            vec![(waiting.conversation.id.clone(), x.clone())],
            "{what}: the retry's assignments"
        );
        assert_eq!(
            replayed[0].conversation.assigned_at, assigned[0].conversation.assigned_at,
            "{what}: a replayed assignment keeps its time (and so its event id)"
        );
        // Once b is closed, a retry no longer reports it.
        store
            .close_conversation(&waiting.conversation.id, "resolved", at(6))
            .await
            .unwrap_or_else(|e| panic!("{what}: close: {e}"));
        let (_, _, after_close) = route_at(&c, 7).await;
        assert!(
            after_close.is_empty(),
            "{what}: a closed conversation was reported assigned: {:?}",
            pairs(&after_close)
        );
        assert_ne!(first.conversation.id, waiting.conversation.id);
    }
}

/// Another envelope with a dedupe key already claimed (a copy of a routed message under a new
/// id) answers [`InboundOutcome::Duplicate`] naming the first envelope and touches nothing: no
/// message, no profile for its new identities, not even the known profile's `last_seen`.
pub async fn route_inbound_duplicate_claim_changes_nothing(factory: &impl MakeStore, prefix: &str) {
    let what = "route_inbound_duplicate_claim_changes_nothing";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let e = unrouted(prefix, "orig", &[], at(1));
    let (resolution, record, _) =
        routed(what, route(&store, routing(prefix, &e, &pool, at(1))).await);
    let id = record.conversation.id.clone();

    let fresh = key(prefix, "app_user", "shop-app", "copy");
    let copies = [
        unrouted(prefix, "copy", &[], at(5)),
        unrouted(prefix, "orig", &[], at(5)),
    ];
    for mut copy in copies {
        copy.dedupe_key.clone_from(&e.dedupe_key);
        match route(&store, routing(prefix, &copy, &pool, at(5))).await {
            InboundOutcome::Duplicate { first } => {
                assert_eq!(first, e.id, "{what}: the duplicate names another envelope");
            }
            InboundOutcome::Routed { record, .. } => {
                panic!("{what}: a copy was routed: {record:?}")
            }
        }
    }
    assert!(
        owner(&store, &fresh).await.is_none(),
        "{what}: a duplicate's identity was linked to a profile"
    );
    assert_eq!(
        get_customer(&store, &resolution.customer_id)
            .await
            .last_seen,
        at(1),
        "{what}: a duplicate touched the sender's profile"
    );
    assert_eq!(
        message_ids(&store, &id).await,
        vec![e.id.clone()],
        "{what}: messages"
    );
    let stored = get_conversation(&store, &id).await;
    assert_eq!(stored.message_count, 1, "{what}: message count");
    assert_eq!(
        stored.last_inbound_at,
        Some(at(1)),
        "{what}: a duplicate touched the conversation"
    );
    assert_eq!(queue(&store, &pool).await, vec![id], "{what}: queue");
}

/// Two channels of one person (sharing a strong phone key) routed at once converge on one
/// profile and one conversation; a later message carrying the keys of two existing profiles
/// merges them, closes the merged-away one's conversation and lands in the survivor's.
pub async fn route_inbound_profiles_converge(factory: &impl MakeStore, prefix: &str) {
    let what = "route_inbound_profiles_converge";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let phone = key(prefix, "phone", "", "+8613800000005");
    let from_app = unrouted(prefix, "8", std::slice::from_ref(&phone), at(1));
    let wx_key = key(prefix, "wechat_openid", "wx1", "o8");
    let mut from_wechat = inbound_envelope(
        "",
        &wechat_channel(),
        "o8",
        vec![wx_key.clone(), phone.clone()],
        "hi",
        at(1),
    );
    from_wechat.customer_id = None;
    let (a, b) = tokio::join!(
        route(&store, routing(prefix, &from_app, &pool, at(1))),
        route(&store, routing(prefix, &from_wechat, &pool, at(1)))
    );
    let ((ra, ia, _), (rb, ib, _)) = (routed(what, a), routed(what, b));
    assert_eq!(
        ra.customer_id, rb.customer_id,
        "{what}: concurrent routings diverged"
    );
    assert!(
        ra.created != rb.created,
        "{what}: exactly one routing creates the profile"
    );
    assert_eq!(
        ia.conversation.id, ib.conversation.id,
        "{what}: two conversations opened"
    );
    assert!(
        ia.created != ib.created,
        "{what}: exactly one message opens the conversation"
    );
    let id = ra.customer_id.clone();
    let app_key = key(prefix, "app_user", "shop-app", "8");
    for k in [&phone, &app_key, &wx_key] {
        assert_eq!(
            owner(&store, k).await.map(|c| c.id).as_deref(),
            Some(id.as_str()),
            "{what}: {k}"
        );
    }
    assert_eq!(
        message_ids(&store, &ia.conversation.id).await.len(),
        2,
        "{what}: messages"
    );

    // Two profiles with open conversations, then one message carrying both their keys.
    let (_, older, _) = routed(
        what,
        route(
            &store,
            routing(prefix, &unrouted(prefix, "p", &[], at(2)), &pool, at(2)),
        )
        .await,
    );
    let (_, newer, _) = routed(
        what,
        route(
            &store,
            routing(prefix, &unrouted(prefix, "q", &[], at(3)), &pool, at(3)),
        )
        .await,
    );
    let q_key = key(prefix, "app_user", "shop-app", "q");
    let both = unrouted(prefix, "p", &[q_key], at(4));
    let (resolution, record, _) = routed(
        what,
        route(&store, routing(prefix, &both, &pool, at(4))).await,
    );
    assert_eq!(
        resolution.customer_id, older.conversation.customer_id,
        "{what}: the older profile survives"
    );
    assert_eq!(resolution.merges.len(), 1, "{what}: merges");
    assert_eq!(
        resolution.profile.as_ref().map(|c| c.id.as_str()),
        Some(older.conversation.customer_id.as_str()),
        "{what}: a merge comes with the survivor's profile (customer.merged announces it)"
    );
    assert_eq!(
        resolution
            .closed
            .iter()
            .map(|c| c.conversation.id.as_str())
            .collect::<Vec<_>>(),
        vec![newer.conversation.id.as_str()],
        "{what}: the merged-away profile's conversation closes"
    );
    assert!(
        !record.created && record.conversation.id == older.conversation.id,
        "{what}: the message lands in the survivor's conversation: {record:?}"
    );
    assert_eq!(
        record.conversation.message_count, 3,
        "{what}: survivor's messages (own, moved, new)"
    );
}

/// Summary of one outcome that does not depend on generated ids: conversations by order of
/// appearance, agents without the run's prefix.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    Duplicate,
    Routed {
        customer_created: bool,
        profile: bool,
        merges: usize,
        closed: Vec<usize>,
        /// The notes made at the routing's time about its merges and the conversations they
        /// closed.
        noted: Vec<NoteKind>,
        conversation: usize,
        created: bool,
        duplicate: bool,
        status: ConversationStatus,
        agent: Option<String>,
        message_count: u64,
        assignments: Vec<(usize, String)>,
    },
}

/// A scenario run once through [`Store::route_inbound`] and once through
/// [`route_inbound_stepwise`], under its own name prefix.
struct Scenario<'a> {
    store: &'a Arc<dyn Store>,
    prefix: String,
    stepwise: bool,
    pool: String,
    conversations: Vec<String>,
}

impl Scenario<'_> {
    fn ordinal(&mut self, id: &str) -> usize {
        match self.conversations.iter().position(|c| c == id) {
            Some(i) => i,
            None => {
                self.conversations.push(id.to_owned());
                self.conversations.len() - 1
            }
        }
    }

    fn agent_name(&self, id: &str) -> String {
        id.strip_prefix(&self.prefix).unwrap_or(id).to_owned()
    }

    async fn route(&mut self, e: &Envelope, t: i64) -> Shape {
        let req = routing(&self.prefix, e, &self.pool, at(t));
        let outcome = if self.stepwise {
            route_inbound_stepwise(&**self.store, req).await
        } else {
            self.store.route_inbound(req).await
        }
        .unwrap_or_else(|err| panic!("route {}: {err}", e.id));
        let (resolution, record, assignments) = match outcome {
            InboundOutcome::Duplicate { .. } => return Shape::Duplicate,
            InboundOutcome::Routed {
                resolution,
                record,
                assignments,
            } => (resolution, record, assignments),
        };
        let subjects: Vec<&str> = resolution
            .merges
            .iter()
            .map(|m| m.from.as_str())
            .chain(resolution.closed.iter().map(|c| c.conversation.id.as_str()))
            .collect();
        let mut noted: Vec<NoteKind> = self
            .store
            .unannounced(at(t))
            .await
            .unwrap_or_else(|err| panic!("unannounced: {err}"))
            .into_iter()
            .filter(|n| n.at == at(t) && subjects.contains(&n.subject.as_str()))
            .map(|n| n.kind)
            .collect();
        noted.sort();
        let c = &record.conversation;
        Shape::Routed {
            customer_created: resolution.created,
            profile: resolution.profile.is_some(),
            merges: resolution.merges.len(),
            noted,
            closed: resolution
                .closed
                .iter()
                .map(|c| self.ordinal(&c.conversation.id))
                .collect(),
            conversation: self.ordinal(&c.id),
            created: record.created,
            duplicate: record.duplicate,
            status: c.status,
            agent: c.agent_id.as_deref().map(|a| self.agent_name(a)),
            message_count: c.message_count,
            assignments: assignments
                .iter()
                .map(|a| {
                    (
                        self.ordinal(&a.conversation.id),
                        self.agent_name(&a.agent_id),
                    )
                })
                .collect(),
        }
    }

    /// Runs the scenario: every outcome, then each conversation's status, agent and message
    /// count.
    async fn run(mut self) -> (Vec<Shape>, Vec<(ConversationStatus, Option<String>, u64)>) {
        let x = format!("{}agent-x", self.prefix);
        agent(self.store, &x, &[&self.pool], 1, AgentStatus::Online, at(0)).await;
        let p = &self.prefix.clone();
        let first = unrouted(p, "p1", &[], at(1));
        let mut copy = unrouted(p, "p1", &[], at(6));
        copy.dedupe_key.clone_from(&first.dedupe_key);
        let second = unrouted(p, "p2", &[], at(2));
        let p2_key = key(p, "app_user", "shop-app", "p2");
        let mut shapes = vec![
            self.route(&first, 1).await,  // opens, assigned to x
            self.route(&second, 2).await, // opens, queued: x is full
            self.route(&unrouted(p, "p1", &[], at(3)), 3).await, // joins the assigned one
            self.route(&second, 4).await, // a retry
            self.route(&copy, 5).await,   // a copy under another id
            self.route(&unrouted(p, "p1", &[p2_key], at(6)), 6).await, // merges p2 into p1
        ];
        let open = self.conversations[0].clone();
        self.store
            .close_conversation(&open, "agent", at(7))
            .await
            .unwrap_or_else(|e| panic!("close {open}: {e}"));
        shapes.push(self.route(&unrouted(p, "p1", &[], at(8)), 8).await); // reopens, assigned
        let mut states = Vec::new();
        for id in &self.conversations {
            let c = get_conversation(self.store, id).await;
            states.push((
                c.status,
                c.agent_id.as_deref().map(|a| self.agent_name(a)),
                message_ids(self.store, id).await.len() as u64,
            ));
        }
        (shapes, states)
    }
}

/// [`Store::route_inbound`] gives what the four separate calls of [`route_inbound_stepwise`]
/// give, step by step and in the resulting state: openings, queueing, joining an assigned
/// conversation, a retry, a copy, a merge, a reopening after a close.
pub async fn route_inbound_matches_stepwise(factory: &impl MakeStore, prefix: &str) {
    let what = "route_inbound_matches_stepwise";
    let store = factory.make().await;
    let scenario = |name: &str, stepwise| Scenario {
        store: &store,
        prefix: format!("{prefix}{name}."),
        stepwise,
        pool: format!("{prefix}{name}.default"),
        conversations: Vec::new(),
    };
    let (one_call, one_call_states) = scenario("one-call", false).run().await;
    let (stepwise, stepwise_states) = scenario("stepwise", true).run().await;
    assert!(
        matches!(
            one_call.first(),
            Some(Shape::Routed { assignments, .. }) if assignments.len() == 1
        ),
        "{what}: the first message was not assigned: {one_call:?}"
    );
    assert_eq!(one_call, stepwise, "{what}: outcomes differ");
    assert_eq!(
        one_call_states, stepwise_states,
        "{what}: resulting conversations differ"
    );
    // The merge is noted (its events are not announced again by a retry), with the close of
    // p2's conversation.
    assert!(
        matches!(
            &one_call[5],
            Shape::Routed { merges: 1, closed, noted, .. }
                if closed.len() == 1 && *noted == [NoteKind::Merged, NoteKind::Closed]
        ),
        "{what}: the merge was not noted: {:?}",
        one_call[5]
    );
}

/// Transfers conversation `id`; returns it as the transfer left it.
async fn transfer(
    store: &Arc<dyn Store>,
    id: &str,
    target: TransferTarget,
    now: DateTime<Utc>,
) -> Conversation {
    store
        .transfer(id, target.clone(), None, now)
        .await
        .unwrap_or_else(|e| panic!("transfer({id}, {target:?}): {e}"))
        .conversation
}

async fn close(store: &Arc<dyn Store>, id: &str, now: DateTime<Utc>) {
    store
        .close_conversation(id, "agent", now)
        .await
        .unwrap_or_else(|e| panic!("close_conversation({id}): {e}"));
}

/// The erasure note of `customer` made at or before `before`, if any.
async fn erasure_note(
    store: &Arc<dyn Store>,
    customer: &str,
    before: DateTime<Utc>,
) -> Option<Erasure> {
    store
        .unannounced(before)
        .await
        .unwrap_or_else(|e| panic!("unannounced: {e}"))
        .into_iter()
        .find(|n| n.kind == NoteKind::Erased && n.subject == customer)
        .and_then(|n| n.erasure)
}

pub async fn erase_customer_deletes_everything(factory: &impl MakeStore, prefix: &str) {
    let what = "erase_customer_deletes_everything";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let t = |secs: i64| at(2_000_000 + secs);
    let (a, ea, ca) = open(&store, prefix, "a", &pool, t(1)).await;
    close(&store, &ca.id, t(2)).await;
    let (b, _, cb) = open(&store, prefix, "b", &pool, t(3)).await;
    close(&store, &cb.id, t(4)).await;
    let ka = key(prefix, "app_user", "shop-app", "a");
    let kb = key(prefix, "app_user", "shop-app", "b");
    let merged = resolve(&store, &[(&ka, Strong), (&kb, Strong)], false, t(5)).await;
    assert_eq!(
        (merged.customer.id.as_str(), merged.merges.len()),
        (a.id.as_str(), 1),
        "{what}: b merges into the older a"
    );
    let again = inbound_envelope(&a.id, &app_channel(), "a", vec![ka.clone()], "back", t(6));
    let cc = record(&store, &again, &pool, t(6)).await.conversation;
    assert!(cc.id != ca.id, "{what}: a new conversation after the close");
    // The other customer's data must survive.
    let (other, _, co) = open(&store, prefix, "other", &pool, t(6)).await;

    // Through the merged-away id, and refused while a conversation is open.
    let refused = store.erase_customer(&b.id, ERASED_ON_REQUEST, t(7)).await;
    assert_eq!(
        refused.as_ref().err().and_then(conflict_code),
        Some("customer_has_open_conversation"),
        "{what}: erasing with an open conversation: {refused:?}"
    );
    assert!(
        store.customer(&a.id).await.unwrap().is_some(),
        "{what}: a refused erasure changed the profile"
    );
    let open_now = store
        .open_conversation(&b.id)
        .await
        .unwrap_or_else(|e| panic!("{what}: open_conversation: {e}"));
    assert_eq!(
        open_now.map(|c| c.id),
        Some(cc.id.clone()),
        "{what}: the open conversation, through the merged-away id"
    );
    close(&store, &cc.id, t(8)).await;
    assert!(
        store.open_conversation(&a.id).await.unwrap().is_none(),
        "{what}: no open conversation once closed"
    );
    let erasure = store
        .erase_customer(&b.id, ERASED_ON_REQUEST, t(9))
        .await
        .unwrap_or_else(|e| panic!("{what}: erase: {e}"));
    let mut conversations = vec![ca.id.clone(), cb.id.clone(), cc.id.clone()];
    conversations.sort();
    let want = Erasure {
        customer_id: a.id.clone(),
        tenant: DEFAULT_TENANT.to_owned(),
        reason: ERASED_ON_REQUEST.to_owned(),
        merged_from: vec![b.id.clone()],
        conversations,
    };
    assert_eq!(erasure, want, "{what}: what the erasure reports");
    assert_eq!(
        erasure_note(&store, &a.id, t(9)).await.as_ref(),
        Some(&want),
        "{what}: the erasure's note"
    );
    for id in [&a.id, &b.id] {
        assert!(
            store.customer(id).await.unwrap().is_none(),
            "{what}: customer {id} is still there"
        );
    }
    for k in [&ka, &kb] {
        assert!(
            owner(&store, k).await.is_none(),
            "{what}: {k} still has an owner"
        );
    }
    for c in [&ca.id, &cb.id, &cc.id] {
        assert!(
            store.conversation(c).await.unwrap().is_none(),
            "{what}: conversation {c} is still there"
        );
        assert!(
            message_ids(&store, c).await.is_empty(),
            "{what}: messages of {c}"
        );
    }
    assert_eq!(
        get_customer(&store, &other.id).await.id,
        other.id,
        "{what}: other"
    );
    assert_eq!(
        get_conversation(&store, &co.id).await.status,
        ConversationStatus::Queued,
        "{what}: the other customer's conversation"
    );
    let twice = store.erase_customer(&a.id, ERASED_ON_REQUEST, t(10)).await;
    assert!(
        matches!(
            twice,
            Err(StoreError::NotFound {
                kind: "customer",
                ..
            })
        ),
        "{what}: erasing twice: {twice:?}"
    );

    // The person writes again: a new profile, and the old message id is a new message.
    let fresh = resolve(&store, &[(&ka, Strong)], false, t(11)).await;
    assert!(
        fresh.created && fresh.customer.id != a.id,
        "{what}: a message after the erasure must create a new profile: {fresh:?}"
    );
    let mut resent = ea.clone();
    resent.customer_id = Some(fresh.customer.id.clone());
    let rec = record(&store, &resent, &pool, t(11)).await;
    assert!(
        !rec.duplicate && rec.created,
        "{what}: an erased message sent again is new: {rec:?}"
    );
}

/// The ids [`Store::customer_conversations`] lists for `customer` with these filters.
async fn history(
    store: &Arc<dyn Store>,
    customer: &str,
    statuses: &[ConversationStatus],
    before: Option<&str>,
    limit: usize,
) -> Vec<String> {
    let query = CustomerConversationsQuery {
        statuses: statuses.to_vec(),
        before: before.map(str::to_owned),
        limit,
    };
    store
        .customer_conversations(customer, &query)
        .await
        .unwrap_or_else(|e| panic!("customer_conversations({customer}, {query:?}): {e}"))
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// The ids [`Store::pool_conversations`] lists for `pool` with these filters.
async fn pool_listing(
    store: &Arc<dyn Store>,
    pool: &str,
    statuses: &[ConversationStatus],
    limit: usize,
) -> Vec<String> {
    store
        .pool_conversations(pool, statuses, limit)
        .await
        .unwrap_or_else(|e| panic!("pool_conversations({pool}, {statuses:?}): {e}"))
        .into_iter()
        .map(|c| c.id)
        .collect()
}

pub async fn customer_conversations_newest_first(factory: &impl MakeStore, prefix: &str) {
    use ConversationStatus::{Assigned, Bot, Closed};
    let what = "customer_conversations_newest_first";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let t = |secs: i64| at(2_500_000 + secs);
    let all = usize::MAX;
    let (a, _, ca) = open(&store, prefix, "a", &pool, t(1)).await;
    close(&store, &ca.id, t(2)).await;
    let (b, _, cb) = open(&store, prefix, "b", &pool, t(3)).await;
    close(&store, &cb.id, t(4)).await;
    let ka = key(prefix, "app_user", "shop-app", "a");
    let kb = key(prefix, "app_user", "shop-app", "b");
    let kc = key(prefix, "app_user", "shop-app", "c");
    let again = inbound_envelope(&a.id, &app_channel(), "a", vec![ka.clone()], "back", t(5));
    let cc = record(&store, &again, &pool, t(5)).await.conversation;
    // Opened at the same instant as cc: ties are ordered by id.
    let (c, _, cd) = open(&store, prefix, "c", &pool, t(5)).await;
    let (other, _, co) = open(&store, prefix, "other", &pool, t(5)).await;
    assert_eq!(
        history(&store, &a.id, &[], None, all).await,
        vec![cc.id.clone(), ca.id.clone()],
        "{what}: a before any merge"
    );
    let ab = resolve(&store, &[(&ka, Strong), (&kb, Strong)], false, t(6)).await;
    let ac = resolve(&store, &[(&ka, Strong), (&kc, Strong)], false, t(8)).await;
    assert_eq!(
        (ab.customer.id.as_str(), ac.customer.id.as_str()),
        (a.id.as_str(), a.id.as_str()),
        "{what}: b and c merge into the older a"
    );
    assert_eq!(
        get_conversation(&store, &cd.id).await.status,
        Closed,
        "{what}: c's open conversation is closed by the merge"
    );
    let mut tie = [cc.id.clone(), cd.id.clone()];
    tie.sort_by(|x, y| y.cmp(x));
    let newest_first = vec![tie[0].clone(), tie[1].clone(), cb.id.clone(), ca.id.clone()];
    for id in [&a.id, &b.id, &c.id] {
        assert_eq!(
            history(&store, id, &[], None, all).await,
            newest_first,
            "{what}: every conversation, newest first, through {id}"
        );
    }
    let listed = store
        .customer_conversations(&b.id, &CustomerConversationsQuery::default())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        listed.iter().find(|x| x.id == cb.id),
        Some(&get_conversation(&store, &cb.id).await),
        "{what}: a listed conversation is the record `conversation` reads"
    );
    assert_eq!(
        history(&store, &a.id, &OPEN_STATUSES, None, all).await,
        vec![cc.id.clone()],
        "{what}: open ones"
    );
    let closed: Vec<String> = newest_first
        .iter()
        .filter(|id| **id != cc.id)
        .cloned()
        .collect();
    assert_eq!(
        history(&store, &a.id, &[Closed], None, all).await,
        closed,
        "{what}: closed ones"
    );
    assert_eq!(
        history(&store, &a.id, &[Assigned, Bot], None, all).await,
        Vec::<String>::new(),
        "{what}: none assigned or with a bot"
    );
    assert_eq!(
        history(&store, &a.id, &[], None, 2).await,
        newest_first[..2].to_vec(),
        "{what}: limit"
    );
    assert_eq!(
        history(&store, &a.id, &[], None, 0).await,
        Vec::<String>::new(),
        "{what}: limit 0"
    );
    // Pages: each starts after the last of the previous one.
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = history(&store, &a.id, &[], cursor.as_deref(), 3).await;
        let Some(last) = page.last().cloned() else {
            break;
        };
        pages.extend(page);
        cursor = Some(last);
    }
    assert_eq!(pages, newest_first, "{what}: pages of 3");
    assert_eq!(
        history(&store, &a.id, &[Closed], Some(&tie[0]), 1).await,
        newest_first[1..]
            .iter()
            .filter(|id| **id != cc.id)
            .take(1)
            .cloned()
            .collect::<Vec<_>>(),
        "{what}: the cursor counts in every status, the filter applies after it"
    );
    let foreign = store
        .customer_conversations(
            &a.id,
            &CustomerConversationsQuery {
                before: Some(co.id.clone()),
                ..CustomerConversationsQuery::default()
            },
        )
        .await;
    assert_eq!(
        foreign.as_ref().err().and_then(conflict_code),
        Some(UNKNOWN_CURSOR),
        "{what}: another customer's conversation as the cursor: {foreign:?}"
    );
    assert_eq!(
        history(&store, &other.id, &[], None, all).await,
        vec![co.id.clone()],
        "{what}: the other customer's own"
    );
    let unknown = store
        .customer_conversations(
            &format!("{prefix}nobody"),
            &CustomerConversationsQuery::default(),
        )
        .await;
    assert!(
        matches!(
            unknown,
            Err(StoreError::NotFound {
                kind: "customer",
                ..
            })
        ),
        "{what}: an unknown customer: {unknown:?}"
    );

    // Closed, it is listed with the closed ones.
    close(&store, &cc.id, t(9)).await;
    assert_eq!(
        history(&store, &a.id, &[Closed], None, all).await,
        newest_first,
        "{what}: every one closed"
    );
    assert_eq!(
        history(&store, &a.id, &OPEN_STATUSES, None, all).await,
        Vec::<String>::new(),
        "{what}: none open"
    );
    // Erased, the customer is gone with every conversation.
    store
        .erase_customer(&c.id, ERASED_ON_REQUEST, t(10))
        .await
        .unwrap_or_else(|e| panic!("{what}: erase: {e}"));
    for id in [&a.id, &b.id, &c.id] {
        let gone = store
            .customer_conversations(id, &CustomerConversationsQuery::default())
            .await;
        assert!(
            matches!(gone, Err(StoreError::NotFound { .. })),
            "{what}: an erased customer through {id}: {gone:?}"
        );
    }
    assert_eq!(
        history(&store, &other.id, &[], None, all).await,
        vec![co.id.clone()],
        "{what}: the other customer's survive the erasure"
    );
}

pub async fn pool_conversations_open_oldest_first(factory: &impl MakeStore, prefix: &str) {
    use ConversationStatus::{Assigned, Bot, Closed, Queued};
    let what = "pool_conversations_open_oldest_first";
    let store = factory.make().await;
    let pool = format!("{prefix}pool");
    let elsewhere = format!("{prefix}elsewhere");
    let t = |secs: i64| at(2_600_000 + secs);
    let all = usize::MAX;
    // Closed: not listed.
    let (_, _, closed) = open(&store, prefix, "n", &pool, t(19)).await;
    close(&store, &closed.id, t(19)).await;
    // Assigned to an agent of the pool.
    let (_, _, cf) = open(&store, prefix, "f", &pool, t(20)).await;
    let g1 = format!("{prefix}g1");
    agent(&store, &g1, &[&pool], 1, AgentStatus::Online, t(20)).await;
    assert_eq!(
        pairs(&assign(&store, &pool, t(20)).await),
        vec![(cf.id.clone(), g1.clone())],
        "{what}: f's conversation assigned"
    );
    // Queued (the agent is full).
    let (_, _, ce) = open(&store, prefix, "e", &pool, t(21)).await;
    // Held by a bot.
    let kh = key(prefix, "app_user", "shop-app", "h");
    let h = resolve(&store, &[(&kh, Strong)], false, t(22))
        .await
        .customer;
    let eh = inbound_envelope(&h.id, &app_channel(), "h", vec![kh], "hi bot", t(22));
    let ch = store
        .record_inbound(
            &eh,
            &Placement::queued(pool.as_str()).with_bot("bot:helper"),
            t(22),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: record_inbound with a bot: {e}"))
        .conversation;
    assert_eq!(ch.status, Bot, "{what}: h's conversation is the bot's");
    // Assigned to an agent of another pool, by a transfer: it stays in this pool.
    let (_, _, ck) = open(&store, prefix, "k", &pool, t(23)).await;
    let g2 = format!("{prefix}g2");
    agent(&store, &g2, &[&elsewhere], 1, AgentStatus::Online, t(23)).await;
    let moved = store
        .transfer(&ck.id, TransferTarget::Agent(g2.clone()), None, t(23))
        .await
        .unwrap_or_else(|e| panic!("{what}: transfer to {g2}: {e}"));
    assert_eq!(
        (moved.conversation.status, moved.conversation.pool.as_str()),
        (Assigned, pool.as_str()),
        "{what}: k's conversation with g2, still in the pool"
    );
    // Another pool's: not listed.
    let (_, _, cm) = open(&store, prefix, "m", &elsewhere, t(24)).await;

    let open_ones = vec![cf.id.clone(), ce.id.clone(), ch.id.clone(), ck.id.clone()];
    assert_eq!(
        pool_listing(&store, &pool, &[], all).await,
        open_ones,
        "{what}: every open conversation, oldest first"
    );
    let listed = store
        .pool_conversations(&pool, &[], all)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        listed.iter().find(|x| x.id == ck.id),
        Some(&get_conversation(&store, &ck.id).await),
        "{what}: a listed conversation is the record `conversation` reads"
    );
    assert_eq!(
        pool_listing(&store, &pool, &[Queued], all).await,
        vec![ce.id.clone()],
        "{what}: queued"
    );
    assert_eq!(
        pool_listing(&store, &pool, &[Assigned], all).await,
        vec![cf.id.clone(), ck.id.clone()],
        "{what}: assigned"
    );
    assert_eq!(
        pool_listing(&store, &pool, &[Bot], all).await,
        vec![ch.id.clone()],
        "{what}: with a bot"
    );
    assert_eq!(
        pool_listing(&store, &pool, &[Bot, Queued], all).await,
        vec![ce.id.clone(), ch.id.clone()],
        "{what}: with a bot or queued"
    );
    assert_eq!(
        pool_listing(&store, &pool, &[Closed], all).await,
        Vec::<String>::new(),
        "{what}: closed ones are never listed"
    );
    assert_eq!(
        pool_listing(&store, &pool, &[], 2).await,
        open_ones[..2].to_vec(),
        "{what}: limit"
    );
    assert_eq!(
        pool_listing(&store, &elsewhere, &[], all).await,
        vec![cm.id.clone()],
        "{what}: the other pool"
    );
    assert_eq!(
        pool_listing(&store, &format!("{prefix}nowhere"), &[], all).await,
        Vec::<String>::new(),
        "{what}: a pool with nothing"
    );
    // Closing and transferring away take conversations out of the listing.
    close(&store, &cf.id, t(30)).await;
    store
        .transfer(&ce.id, TransferTarget::pool(elsewhere.clone()), None, t(31))
        .await
        .unwrap_or_else(|e| panic!("{what}: transfer to {elsewhere}: {e}"));
    assert_eq!(
        pool_listing(&store, &pool, &[], all).await,
        vec![ch.id.clone(), ck.id.clone()],
        "{what}: after a close and a transfer"
    );
    assert_eq!(
        pool_listing(&store, &elsewhere, &[], all).await,
        vec![ce.id.clone(), cm.id.clone()],
        "{what}: the other pool, with the transferred one"
    );
}

/// [`Store::erase_quiet_customers`] up to `before` at `now`, keeping only this case's erasures.
async fn sweep_quiet(
    store: &Arc<dyn Store>,
    ours: &[&str],
    before: DateTime<Utc>,
    limit: usize,
    now: DateTime<Utc>,
) -> QuietSweep {
    let mut sweep = store
        .erase_quiet_customers(before, limit, now)
        .await
        .unwrap_or_else(|e| panic!("erase_quiet_customers: {e}"));
    sweep
        .erased
        .retain(|e| ours.contains(&e.customer_id.as_str()));
    sweep
}

pub async fn quiet_customers_are_erased(factory: &impl MakeStore, prefix: &str) {
    let what = "quiet_customers_are_erased";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    // Later than every profile the other cases create, which a shared store holds too: the
    // first sweep goes through those, erasing them or moving them past this case's times.
    let t = |secs: i64| at(3_000_000 + secs);
    while store
        .erase_quiet_customers(t(0), 100, t(1_000_000))
        .await
        .unwrap_or_else(|e| panic!("{what}: drain: {e}"))
        .handled
        == 100
    {}
    let (q1, _, c1) = open(&store, prefix, "q1", &pool, t(1)).await;
    close(&store, &c1.id, t(2)).await;
    let (q2, _, c2) = open(&store, prefix, "q2", &pool, t(1)).await;
    let (q3, _, c3) = open(&store, prefix, "q3", &pool, t(1)).await;
    let k3 = key(prefix, "app_user", "shop-app", "q3");
    let later = inbound_envelope(
        &q3.id,
        &app_channel(),
        "q3",
        vec![k3.clone()],
        "more",
        t(10),
    );
    resolve(&store, &[(&k3, Strong)], false, t(10)).await;
    record(&store, &later, &pool, t(10)).await;
    close(&store, &c3.id, t(11)).await;
    let ours = [q1.id.as_str(), q2.id.as_str(), q3.id.as_str()];
    let ids = |s: &QuietSweep| {
        s.erased
            .iter()
            .map(|e| e.customer_id.clone())
            .collect::<Vec<_>>()
    };

    let first = sweep_quiet(&store, &ours, t(5), 100, t(20)).await;
    assert_eq!(
        first.handled, 3,
        "{what}: the three entries before the cut-off"
    );
    assert_eq!(
        ids(&first),
        vec![q1.id.clone()],
        "{what}: only q1 is quiet and closed"
    );
    assert_eq!(
        first.erased[0].reason, ERASED_BY_RETENTION,
        "{what}: reason"
    );
    assert_eq!(
        first.erased[0].conversations,
        vec![c1.id.clone()],
        "{what}: q1's conversation"
    );
    assert!(
        store.customer(&q1.id).await.unwrap().is_none(),
        "{what}: q1 is still there"
    );
    assert!(
        store.conversation(&c1.id).await.unwrap().is_none(),
        "{what}: c1 is still there"
    );
    assert!(
        erasure_note(&store, &q1.id, t(20)).await.is_some(),
        "{what}: the retention erasure is noted"
    );

    // q3 wrote at 10 s: still there at a cut-off of 5 s, erased at 15 s. q2 is open.
    let second = sweep_quiet(&store, &ours, t(15), 100, t(21)).await;
    assert_eq!(
        second.handled, 1,
        "{what}: q3's entry moved to its last_seen"
    );
    assert_eq!(ids(&second), vec![q3.id.clone()], "{what}: q3 once quiet");
    assert_eq!(
        get_customer(&store, &q2.id).await.id,
        q2.id,
        "{what}: open q2 kept"
    );

    // q2's entry was moved to the first sweep's `now` (20 s); once closed it goes.
    close(&store, &c2.id, t(22)).await;
    let third = sweep_quiet(&store, &ours, t(19), 100, t(23)).await;
    assert_eq!(third.handled, 0, "{what}: q2's entry is at 20 s");
    let fourth = sweep_quiet(&store, &ours, t(25), 100, t(26)).await;
    assert_eq!(ids(&fourth), vec![q2.id.clone()], "{what}: q2 once closed");

    // The limit, and a merged-away profile's entry is dropped without erasing anyone.
    let (q4, _, c4) = open(&store, prefix, "q4", &pool, t(30)).await;
    let (q5, _, c5) = open(&store, prefix, "q5", &pool, t(31)).await;
    let k4 = key(prefix, "app_user", "shop-app", "q4");
    let k5 = key(prefix, "app_user", "shop-app", "q5");
    let merged = resolve(&store, &[(&k4, Strong), (&k5, Strong)], false, t(32)).await;
    assert_eq!(merged.customer.id, q4.id, "{what}: q5 merges into q4");
    for c in [&c4.id, &c5.id] {
        if get_conversation(&store, c).await.status != ConversationStatus::Closed {
            close(&store, c, t(33)).await;
        }
    }
    let ours = [q4.id.as_str(), q5.id.as_str()];
    let limited = sweep_quiet(&store, &ours, t(31), 1, t(40)).await;
    assert_eq!(limited.handled, 1, "{what}: the limit");
    assert!(
        limited.erased.is_empty(),
        "{what}: q4 was seen at 32 s, after the cut-off: {limited:?}"
    );
    let last = sweep_quiet(&store, &ours, t(35), 100, t(41)).await;
    assert_eq!(
        ids(&last),
        vec![q4.id.clone()],
        "{what}: q4 (with q5 merged in) erased once, q5's own entry dropped"
    );
    assert_eq!(
        last.erased[0].merged_from,
        vec![q5.id.clone()],
        "{what}: merged_from"
    );
}

/// The [`NoteKind::CustomerUpdated`] notes about `customer` made at or before `before`.
async fn update_notes(store: &Arc<dyn Store>, customer: &str, before: DateTime<Utc>) -> Vec<Note> {
    store
        .unannounced(before)
        .await
        .unwrap_or_else(|e| panic!("unannounced: {e}"))
        .into_iter()
        .filter(|n| n.kind == NoteKind::CustomerUpdated && n.subject == customer)
        .collect()
}

/// An update adding `add`, removing `remove` and patching the attributes with `attributes` (a
/// JSON object).
fn tag_update(add: &[&str], remove: &[&str], attributes: serde_json::Value) -> CustomerUpdate {
    let owned = |tags: &[&str]| tags.iter().map(|t| (*t).to_owned()).collect();
    CustomerUpdate {
        add_tags: owned(add),
        remove_tags: owned(remove),
        attributes: match attributes {
            serde_json::Value::Object(map) => map,
            other => panic!("attributes must be a JSON object, not {other}"),
        },
    }
}

/// `count` distinct tags `{stem}-{i}`.
fn many_tags(stem: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{stem}-{i}")).collect()
}

pub async fn update_customer_tags_and_attributes(factory: &impl MakeStore, prefix: &str) {
    use serde_json::json;

    let what = "update_customer_tags_and_attributes";
    let store = factory.make().await;
    let pool = format!("{prefix}default");
    let t = |secs: i64| at(2_500_000 + secs);
    let update = async |id: &str, u: &CustomerUpdate, now: DateTime<Utc>| {
        store
            .update_customer(id, u, now)
            .await
            .unwrap_or_else(|e| panic!("{what}: update_customer({id}, {u:?}): {e}"))
    };
    let (a, _, _) = open(&store, prefix, "a", &pool, t(1)).await;

    // Tags in order, each once (an absent one removed is fine); attributes of every JSON type.
    let values = json!({
        "plan": "gold",
        "score": 7,
        "ratio": 0.25,
        "big": 18_446_744_073_709_551_615_u64,
        "active": true,
        "flags": [true, null, "x", 1.5],
        "address": {"city": "上海", "lines": ["a", "b"], "none": null},
        "nothing": null,
    });
    let first = update(
        &a.id,
        &tag_update(&["vip", "gold", "vip"], &["absent"], values.clone()),
        t(2),
    )
    .await;
    assert_eq!(
        first.tags,
        ["vip", "gold"],
        "{what}: tags in order, no duplicates"
    );
    let mut want_attributes = values.as_object().cloned().unwrap_or_default();
    want_attributes.remove("nothing");
    assert_eq!(
        first.attributes, want_attributes,
        "{what}: attributes set (a null sets nothing)"
    );
    assert_eq!(
        (first.id.as_str(), first.first_seen, first.last_seen),
        (a.id.as_str(), a.first_seen, a.last_seen),
        "{what}: only tags and attributes change"
    );
    assert_eq!(
        get_customer(&store, &a.id).await,
        first,
        "{what}: the stored profile is the one answered (every JSON type round-trips)"
    );
    assert_eq!(
        update_notes(&store, &a.id, t(2)).await,
        [Note::new(NoteKind::CustomerUpdated, &a.id, t(2))],
        "{what}: the update is noted"
    );

    // Removed, then added (a tag in both moves to the end); overwritten; removed with null.
    let second = update(
        &a.id,
        &tag_update(
            &["silver", "gold"],
            &["gold"],
            json!({"plan": {"tier": "platinum"}, "score": null, "absent": null}),
        ),
        t(3),
    )
    .await;
    assert_eq!(
        second.tags,
        ["vip", "silver", "gold"],
        "{what}: removed, then added"
    );
    assert_eq!(second.attributes["plan"], json!({"tier": "platinum"}));
    assert!(
        !second.attributes.contains_key("score") && !second.attributes.contains_key("absent"),
        "{what}: null removes: {:?}",
        second.attributes
    );
    assert_eq!(second.attributes.len(), want_attributes.len() - 1);

    // Through a merged-away id; a merge keeps both profiles' tags and attributes (the
    // survivor's value wins).
    let kb = key(prefix, "app_user", "shop-app", "b");
    let b = resolve(&store, &[(&kb, Strong)], false, t(4))
        .await
        .customer;
    update(
        &b.id,
        &tag_update(
            &["b-only", "silver"],
            &[],
            json!({"plan": "bronze", "b_attr": [1, 2]}),
        ),
        t(5),
    )
    .await;
    let ka = key(prefix, "app_user", "shop-app", "a");
    let merged = resolve(&store, &[(&ka, Strong), (&kb, Strong)], false, t(6)).await;
    assert_eq!(
        merged.customer.id, a.id,
        "{what}: b merges into the older a"
    );
    assert_eq!(
        merged.customer.tags,
        ["vip", "silver", "gold", "b-only"],
        "{what}: the merge keeps both profiles' tags, each once"
    );
    assert_eq!(
        (
            &merged.customer.attributes["plan"],
            &merged.customer.attributes["b_attr"]
        ),
        (&json!({"tier": "platinum"}), &json!([1, 2])),
        "{what}: the merge keeps the survivor's attributes and adds the others"
    );
    let through = update(&b.id, &tag_update(&["via-b"], &["b-only"], json!({})), t(7)).await;
    assert_eq!(
        through.id, a.id,
        "{what}: a merged-away id updates the survivor"
    );
    assert_eq!(through.tags, ["vip", "silver", "gold", "via-b"]);
    assert_eq!(
        update_notes(&store, &a.id, t(7)).await.len(),
        3,
        "{what}: each update of the survivor is noted under its id"
    );

    // Unknown.
    let unknown = store
        .update_customer(
            &format!("{prefix}nobody"),
            &tag_update(&["x"], &[], json!({})),
            t(8),
        )
        .await;
    assert!(
        matches!(
            unknown,
            Err(StoreError::NotFound {
                kind: "customer",
                ..
            })
        ),
        "{what}: an unknown customer: {unknown:?}"
    );

    // The limits: up to them, then refused without any change or note.
    let (c, _, _) = open(&store, prefix, "c", &pool, t(10)).await;
    let full_tags = many_tags("t", MAX_CUSTOMER_TAGS);
    let mut full_attributes = serde_json::Map::new();
    for i in 0..MAX_CUSTOMER_ATTRIBUTES {
        full_attributes.insert(format!("attr-{i}"), json!(i));
    }
    let full = update(
        &c.id,
        &CustomerUpdate {
            add_tags: full_tags.clone(),
            remove_tags: Vec::new(),
            attributes: full_attributes.clone(),
        },
        t(11),
    )
    .await;
    assert_eq!(
        (full.tags.len(), full.attributes.len()),
        (MAX_CUSTOMER_TAGS, MAX_CUSTOMER_ATTRIBUTES),
        "{what}: up to the limits"
    );
    for (u, code) in [
        (
            tag_update(&["one-more"], &[], json!({"fresh": 1})),
            TOO_MANY_TAGS,
        ),
        (
            tag_update(&["t-0"], &[], json!({"one-more": 1, "attr-0": 0})),
            TOO_MANY_ATTRIBUTES,
        ),
    ] {
        let refused = store.update_customer(&c.id, &u, t(12)).await;
        assert_eq!(
            refused.as_ref().err().and_then(conflict_code),
            Some(code),
            "{what}: past the limit: {refused:?}"
        );
    }
    assert_eq!(
        get_customer(&store, &c.id).await,
        full,
        "{what}: a refused update changes nothing"
    );
    assert_eq!(
        update_notes(&store, &c.id, t(12)).await.len(),
        1,
        "{what}: a refused update is not noted"
    );
    // Replacing one tag, or one attribute with another, stays within the limits.
    let swapped = update(
        &c.id,
        &tag_update(&["t-new"], &["t-0"], json!({"attr-0": null, "attr-new": 0})),
        t(13),
    )
    .await;
    assert_eq!(
        (swapped.tags.len(), swapped.attributes.len()),
        (MAX_CUSTOMER_TAGS, MAX_CUSTOMER_ATTRIBUTES),
        "{what}: swapped within the limits"
    );
    assert_eq!(swapped.tags.last().map(String::as_str), Some("t-new"));

    // A merge may leave more than the limit: more is refused, fewer is fine.
    let kd = key(prefix, "app_user", "shop-app", "d");
    let d = resolve(&store, &[(&kd, Strong)], false, t(14))
        .await
        .customer;
    update(
        &d.id,
        &tag_update(&["d-only"], &[], json!({"d-attr": 1})),
        t(15),
    )
    .await;
    let kc = key(prefix, "app_user", "shop-app", "c");
    let over = resolve(&store, &[(&kc, Strong), (&kd, Strong)], false, t(16))
        .await
        .customer;
    assert_eq!(
        (over.id.as_str(), over.tags.len(), over.attributes.len()),
        (
            c.id.as_str(),
            MAX_CUSTOMER_TAGS + 1,
            MAX_CUSTOMER_ATTRIBUTES + 1
        ),
        "{what}: the merge keeps everything"
    );
    let more = store
        .update_customer(&d.id, &tag_update(&["yet-more"], &[], json!({})), t(17))
        .await;
    assert_eq!(
        more.as_ref().err().and_then(conflict_code),
        Some(TOO_MANY_TAGS),
        "{what}: more than a merged profile has: {more:?}"
    );
    let fewer = update(
        &d.id,
        &tag_update(
            &["in"],
            &["t-1", "t-2"],
            json!({"attr-1": null, "other": 2}),
        ),
        t(18),
    )
    .await;
    assert_eq!(
        (fewer.tags.len(), fewer.attributes.len()),
        (MAX_CUSTOMER_TAGS, MAX_CUSTOMER_ATTRIBUTES + 1),
        "{what}: a merged profile over the limits may lose some, or swap"
    );
}

/// Runs every case, each on a fresh store with its own sub-prefix of `prefix`.
/// The outbound envelope an agent writes first to `customer` on `channel`, addressed to
/// `recipient`, as the opening message of conversation `conversation`.
pub fn first_outbound_envelope(
    customer: &str,
    conversation: &str,
    channel: &ChannelRef,
    recipient: &Sender,
    agent_id: &str,
    now: DateTime<Utc>,
) -> Envelope {
    let id = new_id();
    Envelope {
        id: id.clone(),
        tenant: DEFAULT_TENANT.to_owned(),
        direction: Direction::Outbound,
        channel: channel.clone(),
        sender: recipient.clone(),
        customer_id: Some(customer.to_owned()),
        conversation_id: Some(conversation.to_owned()),
        sent_at: now,
        received_at: now,
        dedupe_key: format!("outbound:{id}"),
        content: Content::Text {
            text: "your order has shipped".to_owned(),
        },
        reply_to: None,
        agent_id: Some(agent_id.to_owned()),
        raw: None,
    }
}

/// The start of a conversation by `agent_id` with `envelope` in `pool`.
fn starting<'a>(
    envelope: &'a Envelope,
    agent_id: &'a str,
    pool: &'a str,
    stage: Option<MailboxPush<'a>>,
    now: DateTime<Utc>,
) -> ConversationStart<'a> {
    ConversationStart {
        envelope,
        agent_id,
        pool,
        remember_agent: false,
        stage,
        now,
    }
}

/// An agent writing first ([`Store::start_conversation`]): the conversation opens assigned to the
/// agent with no inbound message, as the customer's one open conversation (their next message
/// lands in it), on the agent's list, with the message recorded, the stage pushed and the change
/// noted; refused, changing nothing, while the customer has an open conversation, for an agent
/// at capacity, an unknown agent or customer; a merged-away id opens for the survivor; an
/// offline agent may write; closing frees the agent's room; erasure finds the conversation.
pub async fn start_conversation_opens_assigned(factory: &impl MakeStore, prefix: &str) {
    let what = "start_conversation_opens_assigned";
    let store = factory.make().await;
    let outbox = format!("{prefix}outbox");
    let stage = |id: &'static str| MailboxPush {
        key: &outbox,
        id,
        body: "the first message's bus message",
        max_len: 10,
        ttl: Duration::from_secs(60),
    };
    let pool = format!("{prefix}default");
    let a = format!("{prefix}agent-a");
    let wa = ChannelRef {
        kind: "whatsapp".to_owned(),
        id: "wa-main".to_owned(),
    };
    let recipient = Sender {
        external_id: format!("{prefix}4915112345678"),
        scope: String::new(),
        display_name: None,
        identities: vec![key(prefix, "whatsapp_wa_id", "", "4915112345678")],
    };
    // A customer known from an earlier conversation, closed since.
    let (customer, _, earlier) = open(&store, prefix, "c", &pool, at(1)).await;
    store
        .close_conversation(&earlier.id, "closed", at(2))
        .await
        .unwrap_or_else(|e| panic!("{what}: close the earlier conversation: {e}"));
    agent(&store, &a, &[&pool], 1, AgentStatus::Offline, at(3)).await;
    let conv_id = new_id();
    let first = first_outbound_envelope(&customer.id, &conv_id, &wa, &recipient, &a, at(10));
    let start = |envelope, agent_id, stage, now| starting(envelope, agent_id, &pool, stage, now);

    // Unknown agent, unknown customer: refused.
    let unknown_agent = store
        .start_conversation(start(&first, "nobody", Some(stage("nobody")), at(10)))
        .await;
    assert!(
        matches!(
            &unknown_agent,
            Err(StoreError::NotFound { kind: "agent", .. })
        ),
        "{what}: an unknown agent gave {unknown_agent:?}"
    );
    let mut stranger = first.clone();
    stranger.customer_id = Some(new_id());
    let unknown_customer = store
        .start_conversation(start(&stranger, &a, Some(stage("stranger")), at(10)))
        .await;
    assert!(
        matches!(
            &unknown_customer,
            Err(StoreError::NotFound {
                kind: "customer",
                ..
            })
        ),
        "{what}: an unknown customer gave {unknown_customer:?}"
    );

    // An offline agent with room writes first.
    let conv = store
        .start_conversation(start(&first, &a, Some(stage("first")), at(10)))
        .await
        .unwrap_or_else(|e| panic!("{what}: start: {e}"));
    assert_eq!(conv.id, conv_id, "{what}: the caller's conversation id");
    assert_eq!(conv.customer_id, customer.id, "{what}: customer");
    assert_eq!(conv.status, ConversationStatus::Assigned, "{what}: status");
    assert_eq!(conv.agent_id.as_deref(), Some(a.as_str()), "{what}: agent");
    assert_eq!(conv.pool, pool, "{what}: pool");
    assert_eq!(conv.channel, wa, "{what}: channel");
    assert_eq!(conv.recipient, recipient, "{what}: recipient");
    assert_eq!(conv.last_inbound_at, None, "{what}: no inbound message");
    assert_eq!(conv.last_inbound_id, None, "{what}: no inbound message id");
    assert_eq!(conv.replies_since_inbound, 1, "{what}: replies");
    assert_eq!(conv.message_count, 1, "{what}: message_count");
    assert_eq!(
        (conv.created_at, conv.updated_at, conv.assigned_at),
        (at(10), at(10), Some(at(10))),
        "{what}: times"
    );
    assert_eq!(
        conv.assigned_by,
        Some(AssignedBy::WriteFirst),
        "{what}: why"
    );
    assert_eq!((conv.queued_at, conv.closed_at), (None, None), "{what}");
    assert_eq!(
        get_conversation(&store, &conv_id).await,
        conv,
        "{what}: read back"
    );
    let messages = store
        .messages(&conv_id, 10)
        .await
        .unwrap_or_else(|e| panic!("{what}: messages: {e}"));
    assert_eq!(messages.len(), 1, "{what}: one message");
    assert_eq!(messages[0].id, first.id, "{what}: the first message");
    assert_eq!(
        (
            messages[0].customer_id.as_deref(),
            messages[0].conversation_id.as_deref()
        ),
        (Some(customer.id.as_str()), Some(conv_id.as_str())),
        "{what}: the message's ids"
    );
    let held = get_agent(&store, &a).await;
    assert_eq!(
        held.conversations,
        std::slice::from_ref(&conv_id),
        "{what}: agent holds it"
    );
    assert_eq!(
        held.idle_since,
        at(10),
        "{what}: the agent took a conversation"
    );
    let listed: Vec<String> = store
        .agent_conversations(&a)
        .await
        .unwrap_or_else(|e| panic!("{what}: agent_conversations: {e}"))
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        listed,
        std::slice::from_ref(&conv_id),
        "{what}: the agent's conversation list"
    );
    // The listings find it: the customer's history (newest first) and the pool's open ones.
    let history = store
        .customer_conversations(&customer.id, &CustomerConversationsQuery::default())
        .await
        .unwrap_or_else(|e| panic!("{what}: customer_conversations: {e}"));
    assert_eq!(
        history.first().map(|c| c.id.as_str()),
        Some(conv_id.as_str()),
        "{what}: the customer's newest conversation"
    );
    let open_in_pool: Vec<String> = store
        .pool_conversations(&pool, &[], 100)
        .await
        .unwrap_or_else(|e| panic!("{what}: pool_conversations: {e}"))
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(
        open_in_pool.contains(&conv_id),
        "{what}: the pool lists it: {open_in_pool:?}"
    );
    let open_now = store
        .open_conversation(&customer.id)
        .await
        .unwrap_or_else(|e| panic!("{what}: open_conversation: {e}"));
    assert_eq!(
        open_now.map(|c| c.id),
        Some(conv_id.clone()),
        "{what}: the customer's open conversation"
    );
    let noted = store
        .unannounced(at(10))
        .await
        .unwrap_or_else(|e| panic!("{what}: unannounced: {e}"));
    let started = Note::new(NoteKind::Started, &conv_id, at(10));
    assert!(noted.contains(&started), "{what}: noted: {noted:?}");

    // The customer has an open conversation now: refused, naming it.
    let again_conv = new_id();
    let again = first_outbound_envelope(&customer.id, &again_conv, &wa, &recipient, &a, at(11));
    let refused = store
        .start_conversation(start(&again, &a, Some(stage("again")), at(11)))
        .await;
    match &refused {
        Err(StoreError::Conflict { code, message }) => {
            assert_eq!(*code, CONVERSATION_OPEN, "{what}");
            assert!(message.contains(&conv_id), "{what}: names it: {message}");
        }
        other => panic!("{what}: a second start gave {other:?}"),
    }
    // Another customer, the agent at capacity: refused.
    let (other, _, other_conv) = open(&store, prefix, "d", &pool, at(12)).await;
    store
        .close_conversation(&other_conv.id, "closed", at(13))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    let full_conv = new_id();
    let full = first_outbound_envelope(&other.id, &full_conv, &wa, &recipient, &a, at(14));
    let refused = store
        .start_conversation(start(&full, &a, Some(stage("full")), at(14)))
        .await;
    assert_eq!(
        refused.as_ref().err().and_then(conflict_code),
        Some(AGENT_AT_CAPACITY),
        "{what}: an agent at capacity gave {refused:?}"
    );
    for (id, name) in [(&again_conv, "again"), (&full_conv, "full")] {
        let c = store
            .conversation(id)
            .await
            .unwrap_or_else(|e| panic!("{what}: conversation: {e}"));
        assert!(
            c.is_none(),
            "{what}: the refused `{name}` start opened {c:?}"
        );
    }
    let open_other = store
        .open_conversation(&other.id)
        .await
        .unwrap_or_else(|e| panic!("{what}: open_conversation: {e}"));
    assert!(open_other.is_none(), "{what}: refused, yet {open_other:?}");
    assert_eq!(
        get_agent(&store, &a).await.conversations,
        std::slice::from_ref(&conv_id),
        "{what}: refusals leave the agent alone"
    );

    // The customer's next message lands in it, which stays with the agent.
    let k = key(prefix, "app_user", "shop-app", "c");
    let inbound = inbound_envelope(&customer.id, &app_channel(), "c", vec![k], "thanks", at(20));
    let rec = record(&store, &inbound, &pool, at(20)).await;
    assert!(
        !rec.created,
        "{what}: the reply opened another conversation"
    );
    assert_eq!(
        rec.conversation.id, conv_id,
        "{what}: the reply's conversation"
    );
    assert_eq!(
        rec.conversation.status,
        ConversationStatus::Assigned,
        "{what}: still assigned"
    );
    assert_eq!(rec.conversation.last_inbound_at, Some(at(20)), "{what}");
    assert_eq!(rec.conversation.message_count, 2, "{what}");
    assert!(
        queue(&store, &pool).await.is_empty(),
        "{what}: nothing queued"
    );

    // Closing frees the agent's room: the other customer can be written to now, through a
    // merged-away id of theirs.
    let release = store
        .close_conversation(&conv_id, "closed", at(21))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    assert_eq!(
        release.released_agent.map(|ag| ag.conversations),
        Some(Vec::new()),
        "{what}: the close frees the agent"
    );
    let kd = key(prefix, "app_user", "shop-app", "d");
    let ke = key(prefix, "app_user", "shop-app", "e");
    let younger = resolve(&store, &[(&ke, Strong)], false, at(22))
        .await
        .customer;
    let merged = resolve(&store, &[(&kd, Strong), (&ke, Strong)], true, at(23)).await;
    assert_eq!(
        merged.customer.id, other.id,
        "{what}: the older profile survives"
    );
    let via_merged_conv = new_id();
    let via_merged =
        first_outbound_envelope(&younger.id, &via_merged_conv, &wa, &recipient, &a, at(24));
    let conv2 = store
        .start_conversation(start(&via_merged, &a, None, at(24)))
        .await
        .unwrap_or_else(|e| panic!("{what}: start through a merged-away id: {e}"));
    assert_eq!(
        conv2.customer_id, other.id,
        "{what}: opened for the survivor"
    );
    let open_other = store
        .open_conversation(&other.id)
        .await
        .unwrap_or_else(|e| panic!("{what}: open_conversation: {e}"));
    assert_eq!(
        open_other.map(|c| c.id),
        Some(via_merged_conv.clone()),
        "{what}"
    );

    let staged: Vec<String> = store
        .mailbox_read(&outbox)
        .await
        .unwrap_or_else(|e| panic!("{what}: read the outbox: {e}"))
        .into_iter()
        .map(|item| item.id)
        .collect();
    assert_eq!(
        staged,
        ["first"],
        "{what}: only the opening start's stage is pushed"
    );

    // Erasure finds both conversations (after the open one is closed).
    store
        .close_conversation(&via_merged_conv, "closed", at(25))
        .await
        .unwrap_or_else(|e| panic!("{what}: close: {e}"));
    let erasure = store
        .erase_customer(&customer.id, ERASED_ON_REQUEST, at(26))
        .await
        .unwrap_or_else(|e| panic!("{what}: erase: {e}"));
    let mut want = vec![earlier.id.clone(), conv_id.clone()];
    want.sort();
    assert_eq!(erasure.conversations, want, "{what}: erased conversations");
    assert!(
        store
            .conversation(&conv_id)
            .await
            .unwrap_or_else(|e| panic!("{what}: conversation: {e}"))
            .is_none(),
        "{what}: the started conversation is erased"
    );

    // Leave no note of this case for the others sharing the store.
    let mine: Vec<Note> = store
        .unannounced(at(100))
        .await
        .unwrap_or_else(|e| panic!("{what}: unannounced: {e}"))
        .into_iter()
        .filter(|n| {
            [&conv_id, &via_merged_conv, &earlier.id, &other_conv.id].contains(&&n.subject)
                || [&customer.id, &other.id, &younger.id, &a].contains(&&n.subject)
        })
        .collect();
    store
        .clear_notes(&mine)
        .await
        .unwrap_or_else(|e| panic!("{what}: clear_notes: {e}"));
}

pub async fn run_all(factory: &impl MakeStore, prefix: &str) {
    let p = |case: &str| format!("{prefix}{case}.");
    dedupe_claim_release_ttl(factory, &p("dedupe")).await;
    strong_identities_merge(factory, &p("strong")).await;
    weak_identities_merge_only_explicitly(factory, &p("weak")).await;
    one_open_conversation_across_channels(factory, &p("one-open")).await;
    record_inbound_is_idempotent(factory, &p("idempotent")).await;
    resolve_retry_reports_created(factory, &p("resolve-retry")).await;
    longest_idle_agent_first(factory, &p("longest-idle")).await;
    capacity_never_exceeded(factory, &p("capacity")).await;
    concurrent_assignment_never_doubles(factory, &p("concurrent-assign")).await;
    queue_fifo_head_assigned_when_room_frees(factory, &p("fifo")).await;
    skills_route_past_heads_nobody_can_take(factory, &p("skills")).await;
    priority_goes_first_and_ties_keep_arrival_order(factory, &p("priority")).await;
    last_agent_preferred_when_it_can_take_the_conversation(factory, &p("last-agent")).await;
    offers_are_accepted_declined_or_expire(factory, &p("offers")).await;
    unanswered_customers_are_taken_back(factory, &p("unanswered")).await;
    overflow_moves_only_what_still_waits(factory, &p("overflow")).await;
    least_busy_pool_gives_the_agent_holding_the_fewest(factory, &p("least-busy")).await;
    record_outbound_conflicts(factory, &p("outbound")).await;
    record_outbound_is_idempotent(factory, &p("outbound-idempotent")).await;
    unannounced_notes(factory, &p("unannounced")).await;
    transfer_to_pool_and_agent(factory, &p("transfer")).await;
    handovers_are_kept_with_the_conversation(factory, &p("handover")).await;
    conversations_go_back_to_a_bot(factory, &p("to-bot")).await;
    merge_with_open_conversations(factory, &p("merge-open")).await;
    closed_conversations_expire(factory, &p("expire")).await;
    concurrent_resolution_converges(factory, &p("concurrent-resolve")).await;
    presence_heartbeat_ttl(factory, &p("presence-ttl")).await;
    presence_lapse_resume_and_updates(factory, &p("presence-resume")).await;
    lapsed_agents_are_swept(factory, &p("presence-sweep")).await;
    mailbox_push_read_ack(factory, &p("mailbox")).await;
    route_inbound_opens_and_assigns(factory, &p("route-assign")).await;
    route_inbound_queues_without_agent(factory, &p("route-queue")).await;
    route_inbound_opens_with_a_bot(factory, &p("route-bot")).await;
    idle_bot_conversations_longest_silent_first(factory, &p("idle-bot")).await;
    close_idle_only_when_unchanged(factory, &p("close-idle")).await;
    route_inbound_retry_changes_nothing(factory, &p("route-retry")).await;
    route_inbound_retry_reports_other_assignments(factory, &p("route-retry-others")).await;
    route_inbound_duplicate_claim_changes_nothing(factory, &p("route-dup")).await;
    route_inbound_profiles_converge(factory, &p("route-converge")).await;
    route_inbound_matches_stepwise(factory, &p("route-stepwise")).await;
    erase_customer_deletes_everything(factory, &p("erase")).await;
    customer_conversations_newest_first(factory, &p("history")).await;
    pool_conversations_open_oldest_first(factory, &p("pool-listing")).await;
    start_conversation_opens_assigned(factory, &p("start")).await;
    update_customer_tags_and_attributes(factory, &p("update-customer")).await;
    // Last: its first sweep erases every profile the cases before created.
    quiet_customers_are_erased(factory, &p("quiet")).await;
}
