//! The Store conformance suite against a real Redis (`SWITCHYARD_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379/0`), one `#[tokio::test]` per case, plus checks specific to Redis
//! (two routers on separate connections, exact round trips, prefix isolation).
//!
//! Every test keeps its keys under a prefix of its own (`sy-test-<ulid>`) and deletes every key
//! under it afterwards (SCAN MATCH + DEL), also when it fails. Nothing else on the server is
//! touched. Skips loudly without Redis; fails under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use switchyard_core::conformance::services::TestRedisPrefix;
use switchyard_core::conformance::store::{
    self, app_channel, at, inbound_envelope, key, message_from, outbound_envelope, wechat_channel,
};
use switchyard_core::envelope::{Content, DEFAULT_TENANT};
use switchyard_core::identity::IdentityStrength;
use switchyard_core::model::{AgentStatus, ConversationStatus};
use switchyard_core::store::redis::RedisStore;
use switchyard_core::store::{AgentUpdate, Placement, ResolveRequest, Store};

/// The members of `P:pool-online:{pool}`, in order.
fn online_index(t: &TestRedisPrefix, con: &mut redis::Connection, pool: &str) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(format!("{}:pool-online:{pool}", t.prefix))
        .arg(0)
        .arg(-1)
        .query(con)
        .unwrap()
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let Some(t) = TestRedisPrefix::new().await else {
                    return;
                };
                store::$case(&t.factory(), "redis.").await;
            }
        )*
    };
}

conformance!(
    dedupe_claim_release_ttl,
    strong_identities_merge,
    weak_identities_merge_only_explicitly,
    one_open_conversation_across_channels,
    record_inbound_is_idempotent,
    record_outbound_is_idempotent,
    resolve_retry_reports_created,
    lapsed_agents_are_swept,
    longest_idle_agent_first,
    capacity_never_exceeded,
    concurrent_assignment_never_doubles,
    queue_fifo_head_assigned_when_room_frees,
    skills_route_past_heads_nobody_can_take,
    priority_goes_first_and_ties_keep_arrival_order,
    last_agent_preferred_when_it_can_take_the_conversation,
    offers_are_accepted_declined_or_expire,
    unanswered_customers_are_taken_back,
    overflow_moves_only_what_still_waits,
    least_busy_pool_gives_the_agent_holding_the_fewest,
    record_outbound_conflicts,
    unannounced_notes,
    transfer_to_pool_and_agent,
    handovers_are_kept_with_the_conversation,
    conversations_go_back_to_a_bot,
    merge_with_open_conversations,
    concurrent_resolution_converges,
    presence_heartbeat_ttl,
    presence_lapse_resume_and_updates,
    mailbox_push_read_ack,
    route_inbound_opens_and_assigns,
    route_inbound_queues_without_agent,
    route_inbound_opens_with_a_bot,
    idle_bot_conversations_longest_silent_first,
    close_idle_only_when_unchanged,
    route_inbound_retry_changes_nothing,
    route_inbound_retry_reports_other_assignments,
    route_inbound_duplicate_claim_changes_nothing,
    route_inbound_profiles_converge,
    route_inbound_matches_stepwise,
    erase_customer_deletes_everything,
    customer_conversations_newest_first,
    pool_conversations_open_oldest_first,
    start_conversation_opens_assigned,
    update_customer_tags_and_attributes,
    quiet_customers_are_erased,
);

#[tokio::test]
async fn run_all_on_one_prefix() {
    // Every case under its own name prefix on one key prefix: the names keep them apart.
    let Some(t) = TestRedisPrefix::new().await else {
        return;
    };
    store::run_all(&t.factory(), "shared.").await;
}

#[tokio::test]
async fn keys_are_deleted_with_the_prefix() {
    let Some(t) = TestRedisPrefix::new().await else {
        return;
    };
    let s = t.store().await;
    s.claim_key("k", "v", Duration::from_secs(60))
        .await
        .unwrap();
    s.upsert_agent(
        AgentUpdate {
            id: "a".to_owned(),
            status: Some(AgentStatus::Online),
            ..AgentUpdate::default()
        },
        at(0),
    )
    .await
    .unwrap();
    let keys = t.keys().unwrap();
    assert!(!keys.is_empty(), "no keys written under the prefix");
    assert_eq!(t.delete_all().unwrap(), keys.len());
    assert!(t.keys().unwrap().is_empty(), "keys left after cleanup");
}

/// A mailbox is `P:mailbox:{key}` (ids) and `P:mailbox-items:{key}` (items), both expiring with
/// the TTL of the latest push; acknowledging every item leaves no key behind.
#[tokio::test]
async fn mailbox_keys_expire_and_vanish_when_empty() {
    let Some(t) = TestRedisPrefix::new().await else {
        return;
    };
    let s = t.store().await;
    let mailbox = "web:web:v1";
    s.mailbox_push(mailbox, "r1", "{}", 100, Duration::from_secs(60))
        .await
        .unwrap();
    let mut con = t.raw_connection().unwrap();
    for family in ["mailbox", "mailbox-items"] {
        let k = format!("{}:{family}:{mailbox}", t.prefix);
        let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut con).unwrap();
        assert!((50_000..=60_000).contains(&ttl), "{k}: PTTL {ttl}");
    }
    assert_eq!(t.keys().unwrap().len(), 2);
    s.mailbox_ack(mailbox, &["r1".to_owned()]).await.unwrap();
    assert!(
        t.keys().unwrap().is_empty(),
        "an emptied mailbox left keys behind"
    );
}

/// Two routers (separate connections) resolving, recording and assigning at once converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_converge() {
    let Some(t) = TestRedisPrefix::new().await else {
        return;
    };
    let (r1, r2): (Arc<dyn Store>, Arc<dyn Store>) = (t.store().await, t.store().await);
    let pool = "default";
    for round in 0..20 {
        let phone = key("", "phone", "", &format!("+86138{round:08}"));
        let app = key("", "app_user", "shop-app", &format!("u{round}"));
        let wx = key("", "wechat_openid", "wx1", &format!("o{round}"));
        let req = |ids: Vec<_>| ResolveRequest {
            tenant: DEFAULT_TENANT.to_owned(),
            identities: ids,
            explicit: false,
            display_name: None,
            now: at(round),
            source: None,
        };
        let strong = IdentityStrength::Strong;
        let (a, b) = tokio::join!(
            tokio::spawn({
                let (r1, req) = (
                    Arc::clone(&r1),
                    req(vec![(app.clone(), strong), (phone.clone(), strong)]),
                );
                async move { r1.resolve_customer(req).await }
            }),
            tokio::spawn({
                let (r2, req) = (
                    Arc::clone(&r2),
                    req(vec![(wx.clone(), strong), (phone.clone(), strong)]),
                );
                async move { r2.resolve_customer(req).await }
            }),
        );
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        assert_eq!(a.customer.id, b.customer.id, "round {round}: two profiles");
        let id = a.customer.id;
        let e1 = inbound_envelope(&id, &app_channel(), "u", vec![app], "a", at(round));
        let e2 = inbound_envelope(&id, &wechat_channel(), "o", vec![wx], "b", at(round));
        let (i1, i2) = tokio::join!(
            tokio::spawn({
                let r1 = Arc::clone(&r1);
                async move {
                    r1.record_inbound(&e1, &Placement::queued(pool), at(round))
                        .await
                }
            }),
            tokio::spawn({
                let r2 = Arc::clone(&r2);
                async move {
                    r2.record_inbound(&e2, &Placement::queued(pool), at(round))
                        .await
                }
            }),
        );
        let (i1, i2) = (i1.unwrap().unwrap(), i2.unwrap().unwrap());
        assert_eq!(i1.conversation.id, i2.conversation.id, "round {round}");
        assert!(i1.created != i2.created, "round {round}: created twice");
    }
    for i in 0..5 {
        r1.upsert_agent(
            AgentUpdate {
                id: format!("agent-{i}"),
                capacity: Some(3),
                status: Some(AgentStatus::Online),
                ..AgentUpdate::default()
            },
            at(100 + i),
        )
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..6 {
        let s = Arc::clone(if i % 2 == 0 { &r1 } else { &r2 });
        tasks.push(tokio::spawn(
            async move { s.assign_queued(pool, at(200)).await },
        ));
    }
    let mut assigned = Vec::new();
    for task in tasks {
        assigned.extend(
            task.await
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|a| a.conversation.id),
        );
    }
    let mut unique = assigned.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        assigned.len(),
        "a conversation assigned twice"
    );
    assert_eq!(assigned.len(), 15, "5 agents with room for 3 each");
    assert_eq!(
        r2.queue(pool).await.unwrap().len(),
        5,
        "the rest stays queued"
    );
    for a in r2.agents().await.unwrap() {
        assert_eq!(a.conversations.len(), 3, "agent {} load", a.id);
    }
}

/// Sub-second timestamps, names, rich content and raw payloads come back exactly.
#[tokio::test]
async fn records_round_trip_exactly() {
    let Some(t) = TestRedisPrefix::new().await else {
        return;
    };
    let s = t.store().await;
    let now: DateTime<Utc> = at(5) + TimeDelta::nanoseconds(123_456_789);
    let k = key("", "app_user", "shop-app", "名字:with:colons");
    let r = s
        .resolve_customer(ResolveRequest {
            tenant: "tenant-x".to_owned(),
            identities: vec![(k.clone(), IdentityStrength::Strong)],
            explicit: false,
            display_name: Some("李雷 | Li Lei".to_owned()),
            now,
            source: None,
        })
        .await
        .unwrap();
    assert_eq!(r.customer.first_seen, now);
    assert_eq!(r.customer.identities[0].linked_at, now);
    assert_eq!(r.customer.display_name.as_deref(), Some("李雷 | Li Lei"));
    assert_eq!(r.customer.tenant, "tenant-x");
    assert_eq!(
        s.customer(&r.customer.id).await.unwrap(),
        Some(r.customer.clone())
    );
    assert_eq!(
        s.customer_by_identity(&k).await.unwrap(),
        Some(r.customer.clone())
    );

    let mut e = inbound_envelope(&r.customer.id, &app_channel(), "42", vec![k], "x", now);
    e.content = Content::Location {
        latitude: 31.230_416_123_456_78,
        longitude: 121.473_701_987_654_32,
        label: Some("上海".to_owned()),
    };
    e.raw = Some(serde_json::json!({
        "big": 12_345_678_901_234_567_890_u64,
        "empty": [],
        "obj": {},
        "f": 0.1,
    }));
    e.sender.display_name = Some("Li Lei".to_owned());
    let rec = s
        .record_inbound(&e, &Placement::queued("default"), now)
        .await
        .unwrap();
    let conv = rec.conversation;
    assert_eq!(conv.created_at, now);
    assert_eq!(conv.queued_at, Some(now));
    assert_eq!(conv.last_inbound_at, Some(now));
    assert_eq!(conv.recipient, e.sender);
    assert_eq!(s.conversation(&conv.id).await.unwrap(), Some(conv.clone()));
    let stored = s.messages(&conv.id, 10).await.unwrap();
    let mut expected = e.clone();
    expected.conversation_id = Some(conv.id.clone());
    assert_eq!(stored, vec![expected]);

    let later = now + TimeDelta::nanoseconds(1);
    let agent = s
        .upsert_agent(
            AgentUpdate {
                id: "agent|with|bars".to_owned(),
                name: Some("Ágent".to_owned()),
                pools: Some(vec!["default".to_owned(), "vip".to_owned()]),
                skills: Some(vec!["zh".to_owned(), "en".to_owned()]),
                capacity: Some(2),
                status: Some(AgentStatus::Online),
            },
            later,
        )
        .await
        .unwrap();
    assert_eq!(agent.idle_since, later);
    assert_eq!(s.agent(&agent.id).await.unwrap(), Some(agent.clone()));
    let got = s.assign_queued("default", later).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].agent_id, agent.id);
    let reply = outbound_envelope(&got[0].conversation, &agent.id, later);
    let c = s
        .record_outbound(&conv.id, Some(&agent.id), &reply, later, None)
        .await
        .unwrap()
        .conversation;
    assert_eq!(c.replies_since_inbound, 1);
    assert_eq!(c.status, ConversationStatus::Assigned);
    assert_eq!(s.messages(&conv.id, 1).await.unwrap(), vec![reply]);
    assert!(s.messages(&conv.id, 0).await.unwrap().is_empty());
}

/// Two key prefixes on one server see nothing of each other.
#[tokio::test]
async fn prefixes_are_isolated() {
    let (Some(t1), Some(t2)) = (TestRedisPrefix::new().await, TestRedisPrefix::new().await) else {
        return;
    };
    let (s1, s2) = (t1.store().await, t2.store().await);
    let k = key("", "phone", "", "+8613800000000");
    let req = || ResolveRequest {
        tenant: DEFAULT_TENANT.to_owned(),
        identities: vec![(k.clone(), IdentityStrength::Strong)],
        explicit: false,
        display_name: None,
        now: at(1),
        source: None,
    };
    let a = s1.resolve_customer(req()).await.unwrap();
    assert!(s2.customer_by_identity(&k).await.unwrap().is_none());
    assert!(s2.customer(&a.customer.id).await.unwrap().is_none());
    assert_eq!(
        s1.claim_key("d", "1", Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s2.claim_key("d", "2", Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
    assert_eq!(s2.get_key("d").await.unwrap().as_deref(), Some("2"));
    let b = s2.resolve_customer(req()).await.unwrap();
    assert!(b.created && b.customer.id != a.customer.id);
}

/// The presence layout of docs/redis-keys.md: a heartbeat writes `P:presence:{agent}` with the
/// TTL and marks the agent hash `presence = live`; an expiry by `assign_queued` takes the agent
/// out of its pools' online index and leaves `presence = lapsed:online`; a resumed heartbeat puts
/// it back in the index; `ttl = 0` deletes both.
#[tokio::test]
async fn presence_keys_and_online_index() {
    let Some(t) = TestRedisPrefix::new().await else {
        return;
    };
    let s = t.store().await;
    let p = &t.prefix;
    let mut con = t.raw_connection().unwrap();
    let mut hget = |field: &str| -> Option<String> {
        redis::cmd("HGET")
            .arg(format!("{p}:agent:a"))
            .arg(field)
            .query(&mut con)
            .unwrap()
    };
    s.upsert_agent(
        AgentUpdate {
            id: "a".to_owned(),
            pools: Some(vec!["p1".to_owned(), "p2".to_owned()]),
            status: Some(AgentStatus::Online),
            ..AgentUpdate::default()
        },
        at(0),
    )
    .await
    .unwrap();
    assert_eq!(hget("presence"), None, "untracked before any heartbeat");
    s.heartbeat_agent("a", Duration::from_millis(300), at(1))
        .await
        .unwrap();
    assert_eq!(hget("presence").as_deref(), Some("live"));
    let mut con2 = t.raw_connection().unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{p}:presence:a"))
        .query(&mut con2)
        .unwrap();
    assert!((1..=300).contains(&pttl), "presence PTTL {pttl}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        online_index(&t, &mut con2, "p2").len(),
        1,
        "not expired yet"
    );
    // An empty queue expires nobody; a queued conversation makes `a` a candidate.
    message_from(&s, "u1", "p1", at(2)).await;
    assert!(s.assign_queued("p1", at(3)).await.unwrap().is_empty());
    assert_eq!(hget("status").as_deref(), Some("offline"));
    assert_eq!(hget("presence").as_deref(), Some("lapsed:online"));
    for pool in ["p1", "p2"] {
        assert!(
            online_index(&t, &mut con2, pool).is_empty(),
            "`{pool}` still indexes the expired agent"
        );
    }
    assert!(
        s.heartbeat_agent("a", Duration::from_secs(60), at(4))
            .await
            .unwrap()
    );
    assert_eq!(hget("presence").as_deref(), Some("live"));
    let member = format!("{}|a", "2026-01-01T00:00:04.000000000Z");
    for pool in ["p1", "p2"] {
        assert_eq!(
            online_index(&t, &mut con2, pool),
            vec![member.clone()],
            "{pool}"
        );
    }
    s.heartbeat_agent("a", Duration::ZERO, at(5)).await.unwrap();
    assert_eq!(hget("presence"), None, "ttl 0 clears the mark");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{p}:presence:a"))
        .query(&mut con2)
        .unwrap();
    assert_eq!(exists, 0, "ttl 0 deletes the presence key");
    assert_eq!(
        hget("status").as_deref(),
        Some("online"),
        "ttl 0 keeps the status"
    );
}

/// The ready index of docs/redis-keys.md: `P:pool-online:{pool}` holds exactly the pool's agents
/// that can take a conversation (online, with room), longest idle first. An agent leaves it when
/// an assignment fills it and comes back when a close frees room; a member an older version left
/// for a full agent is dropped by the next assignment instead of being chosen.
#[tokio::test]
async fn ready_index_holds_agents_with_room() {
    let Some(t) = TestRedisPrefix::new().await else {
        return;
    };
    let s = t.store().await;
    let p = &t.prefix;
    let mut con = t.raw_connection().unwrap();
    let index = |con: &mut redis::Connection| online_index(&t, con, "default");
    // Members are `{idle_since}|{id}`, idle_since as the store writes it (nanoseconds).
    let member = |secs: i64, id: &str| format!("2026-01-01T00:00:{secs:02}.000000000Z|{id}");
    for (id, secs) in [("a", 0), ("b", 1)] {
        s.upsert_agent(
            AgentUpdate {
                id: id.to_owned(),
                capacity: Some(1),
                status: Some(AgentStatus::Online),
                ..AgentUpdate::default()
            },
            at(secs),
        )
        .await
        .unwrap();
    }
    assert_eq!(index(&mut con), vec![member(0, "a"), member(1, "b")]);

    // A message from `user` opens a conversation in `default`, then the pool is assigned.
    let open = |user: &'static str, secs: i64| {
        let s = Arc::clone(&s);
        async move {
            let conversation = message_from(&s, user, "default", at(secs)).await;
            let assigned = s.assign_queued("default", at(secs)).await.unwrap();
            let agents: Vec<String> = assigned.into_iter().map(|a| a.agent_id).collect();
            (conversation, agents)
        }
    };
    let (c1, agents) = open("u1", 10).await;
    assert_eq!(agents, ["a"], "the longest idle agent");
    assert_eq!(index(&mut con), vec![member(1, "b")], "a full agent leaves");

    // An older version's index also listed full agents: put `a` back as it would have.
    let _: i64 = redis::cmd("ZADD")
        .arg(format!("{p}:pool-online:default"))
        .arg(0)
        .arg(member(10, "a"))
        .query(&mut con)
        .unwrap();
    let (_, agents) = open("u2", 20).await;
    assert_eq!(agents, ["b"]);
    assert_eq!(
        index(&mut con),
        vec![member(10, "a")],
        "the stale member is not reached yet"
    );
    let (c3, agents) = open("u3", 30).await;
    assert!(
        agents.is_empty(),
        "the full agent `a` was chosen: {agents:?}"
    );
    assert!(index(&mut con).is_empty(), "the stale member was dropped");

    // Closing frees room: `a` is back (idle since its last assignment), and takes the queue.
    s.close_conversation(&c1, "resolved", at(40)).await.unwrap();
    assert_eq!(
        index(&mut con),
        vec![member(10, "a")],
        "an agent with room again is back"
    );
    let assigned = s.assign_queued("default", at(41)).await.unwrap();
    assert_eq!(assigned.len(), 1);
    assert_eq!(
        (
            assigned[0].conversation.id.as_str(),
            assigned[0].agent_id.as_str()
        ),
        (c3.as_str(), "a")
    );
    assert!(index(&mut con).is_empty(), "both agents are full");
}

#[tokio::test]
async fn unreachable_redis_is_unavailable() {
    // Nothing listens on port 1.
    let started = std::time::Instant::now();
    let r = RedisStore::connect("redis://127.0.0.1:1/0", "sy-test-none").await;
    assert!(
        matches!(r, Err(switchyard_core::store::StoreError::Unavailable(_))),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// Differential test: random operation sequences give the same results on Redis as on the
// embedded store (the reference semantics), once the ids each store generated are paired up.

mod differential {
    use std::sync::Arc;

    use serde_json::{Value, json};
    use switchyard_core::conformance::store::{
        app_channel, at, inbound_envelope, key, outbound_envelope, wechat_channel,
    };
    use switchyard_core::envelope::{DEFAULT_TENANT, Envelope, new_id};
    use switchyard_core::handover::{Handover, HandoverContext, SlotValue};
    use switchyard_core::identity::{IdentityKey, IdentityStrength};
    use switchyard_core::model::{AgentStatus, ConversationStatus, Skills};
    use switchyard_core::store::embedded::EmbeddedStore;
    use switchyard_core::store::{
        AgentUpdate, ConversationStart, CustomerConversationsQuery, CustomerUpdate, InboundOutcome,
        InboundRouting, Placement, QueueTarget, ResolveRequest, Store, StoreError, TransferTarget,
        Withdrawal,
    };

    use switchyard_core::conformance::services::TestRedisPrefix;

    const PEOPLE: usize = 4;
    const AGENTS: usize = 3;
    const POOLS: [&str; 2] = ["default", "vip"];

    /// xorshift64*, so a failing seed replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
        /// Skills asked or held: none half of the time, else some of `en`, `zh`.
        fn skills(&mut self) -> Skills {
            match self.below(6) {
                0..=2 => Skills::default(),
                3 => Skills::new(["en"]),
                4 => Skills::new(["zh"]),
                _ => Skills::new(["zh", "en"]),
            }
        }
        /// A queue priority: 0 most of the time, else 1 or 2.
        fn priority(&mut self) -> u8 {
            if self.chance(70) {
                0
            } else {
                1 + self.below(2) as u8
            }
        }
    }

    struct Pair {
        emb: Arc<dyn Store>,
        red: Arc<dyn Store>,
        /// (redis id, embedded id) of every generated customer and conversation.
        ids: Vec<(String, String)>,
        customers: Vec<String>,
        conversations: Vec<String>,
        envelopes: Vec<(Envelope, Envelope)>,
        last_customer: [Option<String>; PEOPLE],
        log: Vec<String>,
    }

    fn err_shape(e: &StoreError) -> Value {
        match e {
            StoreError::NotFound { kind, .. } => json!({"not_found": kind}),
            StoreError::Conflict { code, .. } => json!({"conflict": code}),
            StoreError::Unavailable(m) => panic!("store unavailable: {m}"),
        }
    }

    fn shape<T>(r: &Result<T, StoreError>, ok: impl Fn(&T) -> Value) -> Value {
        match r {
            Ok(v) => ok(v),
            Err(e) => err_shape(e),
        }
    }

    impl Pair {
        fn pair(&mut self, red: &str, emb: &str) {
            if red != emb && !self.ids.iter().any(|(r, _)| r == red) {
                self.ids.push((red.to_owned(), emb.to_owned()));
            }
        }

        fn to_emb(&self, v: &Value) -> Value {
            let mut s = v.to_string();
            for (r, e) in &self.ids {
                s = s.replace(r.as_str(), e);
            }
            serde_json::from_str(&s).unwrap()
        }

        fn to_red<T: serde::Serialize + serde::de::DeserializeOwned>(&self, v: &T) -> T {
            let mut s = serde_json::to_string(v).unwrap();
            for (r, e) in &self.ids {
                s = s.replace(e.as_str(), r);
            }
            serde_json::from_str(&s).unwrap()
        }

        fn red_id(&self, emb: &str) -> String {
            self.ids
                .iter()
                .find(|(_, e)| e == emb)
                .map_or_else(|| emb.to_owned(), |(r, _)| r.clone())
        }

        fn check(&self, what: &str, emb: Value, red: Value) {
            let red = self.to_emb(&red);
            if emb != red {
                let tail = self
                    .log
                    .iter()
                    .rev()
                    .take(15)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>();
                panic!(
                    "{what}: stores disagree\n embedded: {emb}\n    redis: {red}\nlast ops:\n  {}",
                    tail.join("\n  ")
                );
            }
        }

        fn person_keys(p: usize, channel: usize) -> IdentityKey {
            if channel == 0 {
                key("", "app_user", "shop-app", &format!("p{p}"))
            } else {
                key("", "wechat_openid", "wx1", &format!("o{p}"))
            }
        }

        /// The keys person `p` writes with on `channel`: its own, sometimes a phone shared with
        /// another person, a weak visitor key, or another person's key.
        fn identities(
            rng: &mut Rng,
            p: usize,
            channel: usize,
        ) -> Vec<(IdentityKey, IdentityStrength)> {
            let mut identities = vec![(Self::person_keys(p, channel), IdentityStrength::Strong)];
            if rng.chance(40) {
                // A phone shared by pairs of people: merges.
                let phone = key("", "phone", "", &format!("+86{}", (p + rng.below(2)) / 2));
                identities.push((phone, IdentityStrength::Strong));
            }
            if rng.chance(30) {
                let visitor = key("", "web_visitor", "web", &format!("v{}", rng.below(PEOPLE)));
                identities.push((visitor, IdentityStrength::Weak));
            }
            if rng.chance(20) {
                identities.push((Self::person_keys(rng.below(PEOPLE), 1 - channel), {
                    IdentityStrength::Strong
                }));
            }
            if rng.chance(50) {
                identities.reverse();
            }
            identities
        }

        async fn resolve(&mut self, rng: &mut Rng, p: usize, channel: usize, now: i64) {
            let req = ResolveRequest {
                tenant: DEFAULT_TENANT.to_owned(),
                identities: Self::identities(rng, p, channel),
                explicit: rng.chance(15),
                display_name: rng.chance(50).then(|| format!("Person {p}")),
                now: at(now),
                source: None,
            };
            self.log.push(format!(
                "resolve {:?} explicit={}",
                req.identities, req.explicit
            ));
            let e = self.emb.resolve_customer(req.clone()).await;
            let r = self.red.resolve_customer(req).await;
            if let (Ok(e), Ok(r)) = (&e, &r) {
                if e.created {
                    self.pair(&r.customer.id, &e.customer.id);
                    self.customers.push(e.customer.id.clone());
                }
                self.last_customer[p] = Some(e.customer.id.clone());
            }
            let f = |x: &switchyard_core::store::Resolution| {
                json!({"customer": x.customer, "created": x.created, "merges": x.merges,
                    "linked": x.linked, "closed": x.closed})
            };
            self.check("resolve_customer", shape(&e, f), shape(&r, f));
        }

        async fn inbound(&mut self, rng: &mut Rng, now: i64) {
            let p = rng.below(PEOPLE);
            let channel = rng.below(2);
            if self.last_customer[p].is_none() || rng.chance(30) {
                self.resolve(rng, p, channel, now).await;
            }
            // Sometimes a stale (possibly merged-away) id of anyone.
            let cust = if rng.chance(15) && !self.customers.is_empty() {
                self.customers[rng.below(self.customers.len())].clone()
            } else {
                self.last_customer[p].clone().unwrap_or_default()
            };
            let ch = if channel == 0 {
                app_channel()
            } else {
                wechat_channel()
            };
            let e = inbound_envelope(
                &cust,
                &ch,
                &format!("x{p}"),
                vec![Self::person_keys(p, channel)],
                &format!("m{now}"),
                at(now),
            );
            let r = self.to_red(&e);
            self.log.push(format!("inbound {} cust={cust}", e.id));
            self.envelopes.push((e.clone(), r.clone()));
            let placement = Placement::queued(POOLS[channel])
                .with_skills(rng.skills())
                .with_priority(rng.priority())
                .preferring_last_agent(rng.chance(50))
                .offered_for(if rng.chance(40) { 30 } else { 0 });
            self.record(&e, &r, &placement, now).await;
        }

        async fn record(&mut self, e: &Envelope, r: &Envelope, placement: &Placement, now: i64) {
            let eo = self.emb.record_inbound(e, placement, at(now)).await;
            let ro = self.red.record_inbound(r, placement, at(now)).await;
            if let (Ok(eo), Ok(ro)) = (&eo, &ro)
                && eo.created
            {
                self.pair(&ro.conversation.id, &eo.conversation.id);
                self.conversations.push(eo.conversation.id.clone());
            }
            let f = |x: &switchyard_core::store::InboundRecord| {
                json!({"conversation": x.conversation, "created": x.created,
                    "duplicate": x.duplicate})
            };
            self.check("record_inbound", shape(&eo, f), shape(&ro, f));
        }

        /// Routes a new message of a random person in one call, or routes an earlier envelope
        /// again (a retry), or a copy of one under a new id (a channel's retry).
        async fn route(&mut self, rng: &mut Rng, now: i64) {
            let p = rng.below(PEOPLE);
            let channel = rng.below(2);
            let identities = Self::identities(rng, p, channel);
            let e = if !self.envelopes.is_empty() && rng.chance(25) {
                let (mut e, _) = self.envelopes[rng.below(self.envelopes.len())].clone();
                if rng.chance(50) {
                    e.id = new_id();
                }
                e
            } else {
                let ch = if channel == 0 {
                    app_channel()
                } else {
                    wechat_channel()
                };
                let keys = identities.iter().map(|(k, _)| k.clone()).collect();
                let mut e = inbound_envelope("", &ch, &format!("x{p}"), keys, "m", at(now));
                e.customer_id = None;
                e
            };
            let r = self.to_red(&e);
            if !self.envelopes.iter().any(|(known, _)| known.id == e.id) {
                self.envelopes.push((e.clone(), r.clone()));
            }
            let pool = POOLS[rng.below(2)];
            let skills = rng.skills();
            let priority = rng.priority();
            let prefer = rng.chance(50);
            let offer_secs = if rng.chance(40) { 30 } else { 0 };
            let display_name = rng.chance(50).then(|| format!("Person {p}"));
            let routing = |envelope| InboundRouting {
                envelope,
                resolve: ResolveRequest {
                    tenant: DEFAULT_TENANT.to_owned(),
                    identities: identities.clone(),
                    explicit: false,
                    display_name: display_name.clone(),
                    now: at(now),
                    source: Some(e.id.clone()),
                },
                claim: format!("routed:{}", e.dedupe_key),
                claim_ttl: std::time::Duration::from_secs(600),
                placement: Placement::queued(pool.to_owned())
                    .with_skills(skills.clone())
                    .with_priority(priority)
                    .preferring_last_agent(prefer)
                    .offered_for(offer_secs),
            };
            self.log.push(format!(
                "route {} {identities:?} {pool} {skills:?} {priority}",
                e.id
            ));
            let eo = self.emb.route_inbound(routing(&e)).await;
            let ro = self.red.route_inbound(routing(&r)).await;
            if let (
                Ok(InboundOutcome::Routed {
                    resolution: er,
                    record: ei,
                    ..
                }),
                Ok(InboundOutcome::Routed {
                    resolution: rr,
                    record: ri,
                    ..
                }),
            ) = (&eo, &ro)
            {
                if er.created && !self.customers.contains(&er.customer_id) {
                    self.pair(&rr.customer_id, &er.customer_id);
                    self.customers.push(er.customer_id.clone());
                }
                self.last_customer[p] = Some(er.customer_id.clone());
                if ei.created && !self.conversations.contains(&ei.conversation.id) {
                    self.pair(&ri.conversation.id, &ei.conversation.id);
                    self.conversations.push(ei.conversation.id.clone());
                }
            }
            let f = |o: &InboundOutcome| match o {
                InboundOutcome::Duplicate { first } => json!({ "duplicate": first }),
                InboundOutcome::Routed {
                    resolution: x,
                    record: i,
                    assignments,
                } => json!({
                    "customer": x.customer_id, "profile": x.profile, "created": x.created,
                    "merges": x.merges, "closed": x.closed,
                    "conversation": i.conversation, "opened": i.created,
                    "recorded_before": i.duplicate,
                    "assignments": assignments
                        .iter()
                        .map(|a| json!({"c": a.conversation, "a": a.agent_id}))
                        .collect::<Vec<_>>(),
                }),
            };
            self.check("route_inbound", shape(&eo, f), shape(&ro, f));
        }

        fn agent_id(i: usize) -> String {
            format!("agent-{i}")
        }

        async fn upsert(&mut self, update: AgentUpdate, now: i64) {
            self.log.push(format!("upsert {update:?}"));
            let e = self.emb.upsert_agent(update.clone(), at(now)).await;
            let r = self.red.upsert_agent(update, at(now)).await;
            let f = |a: &switchyard_core::model::Agent| json!(a);
            self.check("upsert_agent", shape(&e, f), shape(&r, f));
        }

        /// Changes the tags and attributes of a random customer (possibly merged away since).
        async fn update_customer(&mut self, rng: &mut Rng, now: i64) {
            if self.customers.is_empty() {
                return;
            }
            let c = self.customers[rng.below(self.customers.len())].clone();
            let tag = |rng: &mut Rng| format!("tag-{}", rng.below(5));
            let update = CustomerUpdate {
                add_tags: (0..rng.below(3)).map(|_| tag(rng)).collect(),
                remove_tags: (0..rng.below(2)).map(|_| tag(rng)).collect(),
                attributes: (0..rng.below(3))
                    .map(|_| {
                        let value = if rng.chance(30) {
                            Value::Null
                        } else {
                            json!({"n": rng.below(10)})
                        };
                        (format!("attr-{}", rng.below(4)), value)
                    })
                    .collect(),
            };
            self.log.push(format!("update_customer {c} {update:?}"));
            let e = self.emb.update_customer(&c, &update, at(now)).await;
            let r = self
                .red
                .update_customer(&self.red_id(&c), &update, at(now))
                .await;
            let f = |x: &switchyard_core::model::Customer| json!(x);
            self.check("update_customer", shape(&e, f), shape(&r, f));
        }

        /// An agent (possibly unknown) writes first to a random customer (possibly merged away
        /// since): opens a conversation, or is refused the same way by both stores.
        async fn start(&mut self, rng: &mut Rng, now: i64) {
            if self.customers.is_empty() {
                return;
            }
            let c = self.customers[rng.below(self.customers.len())].clone();
            let agent = Self::agent_id(rng.below(AGENTS + 1));
            let pool = POOLS[rng.below(2)];
            let channel = if rng.chance(50) {
                app_channel()
            } else {
                wechat_channel()
            };
            let recipient = switchyard_core::envelope::Sender {
                external_id: format!("x{}", rng.below(PEOPLE)),
                scope: channel.id.clone(),
                display_name: None,
                identities: Vec::new(),
            };
            let conv = new_id();
            let e = switchyard_core::conformance::store::first_outbound_envelope(
                &c,
                &conv,
                &channel,
                &recipient,
                &agent,
                at(now),
            );
            let r = self.to_red(&e);
            let remember_agent = rng.below(2) == 0;
            self.log.push(format!(
                "start {c} {agent} {pool} {conv} remember {remember_agent}"
            ));
            let start = |envelope| ConversationStart {
                envelope,
                agent_id: &agent,
                pool,
                remember_agent,
                stage: None,
                now: at(now),
            };
            let eo = self.emb.start_conversation(start(&e)).await;
            let ro = self.red.start_conversation(start(&r)).await;
            if eo.is_ok() {
                self.conversations.push(conv);
            }
            let f = |c: &switchyard_core::model::Conversation| json!(c);
            self.check("start_conversation", shape(&eo, f), shape(&ro, f));
        }

        fn pick_conversation(&self, rng: &mut Rng) -> Option<String> {
            (!self.conversations.is_empty())
                .then(|| self.conversations[rng.below(self.conversations.len())].clone())
        }

        async fn step(&mut self, rng: &mut Rng, now: i64) {
            let release = |x: &switchyard_core::store::Release| json!({"conversation": x.conversation, "released": x.released_agent});
            match rng.below(20) {
                0..=3 => self.inbound(rng, now).await,
                14 | 15 => self.route(rng, now).await,
                16 => self.start(rng, now).await,
                4 => {
                    if !self.envelopes.is_empty() {
                        let (e, r) = self.envelopes[rng.below(self.envelopes.len())].clone();
                        self.log.push(format!("replay {}", e.id));
                        let placement = Placement::queued(POOLS[rng.below(2)])
                            .with_skills(rng.skills())
                            .with_priority(rng.priority())
                            .preferring_last_agent(rng.chance(50));
                        self.record(&e, &r, &placement, now).await;
                    }
                }
                5 => {
                    let status = [AgentStatus::Online, AgentStatus::Away, AgentStatus::Offline]
                        [rng.below(3)];
                    let update = AgentUpdate {
                        id: Self::agent_id(rng.below(AGENTS)),
                        status: Some(status),
                        ..AgentUpdate::default()
                    };
                    self.upsert(update, now).await;
                }
                6 => {
                    let update = AgentUpdate {
                        id: Self::agent_id(rng.below(AGENTS)),
                        capacity: Some(rng.below(4) as u32),
                        pools: rng.chance(40).then(|| match rng.below(3) {
                            0 => vec!["default".to_owned()],
                            1 => vec!["vip".to_owned()],
                            _ => vec!["vip".to_owned(), "default".to_owned()],
                        }),
                        skills: rng
                            .chance(40)
                            .then(|| rng.skills().as_slice().iter().rev().cloned().collect()),
                        ..AgentUpdate::default()
                    };
                    self.upsert(update, now).await;
                }
                7 | 8 => {
                    let pool = POOLS[rng.below(2)];
                    self.log.push(format!("assign {pool}"));
                    let e = self.emb.assign_queued(pool, at(now)).await;
                    let r = self.red.assign_queued(pool, at(now)).await;
                    let f = |v: &Vec<switchyard_core::store::Assignment>| {
                        json!(
                            v.iter()
                                .map(|a| json!({"c": a.conversation, "a": a.agent_id}))
                                .collect::<Vec<_>>()
                        )
                    };
                    self.check("assign_queued", shape(&e, f), shape(&r, f));
                }
                9 => {
                    if let Some(c) = self.pick_conversation(rng) {
                        self.log.push(format!("close {c}"));
                        let e = self.emb.close_conversation(&c, "agent", at(now)).await;
                        let r = self
                            .red
                            .close_conversation(&self.red_id(&c), "agent", at(now))
                            .await;
                        self.check("close", shape(&e, release), shape(&r, release));
                    }
                }
                10 => {
                    if let Some(c) = self.pick_conversation(rng) {
                        let target = if rng.chance(50) {
                            TransferTarget::Pool(QueueTarget {
                                pool: POOLS[rng.below(2)].to_owned(),
                                skills: rng.chance(50).then(|| rng.skills()),
                                priority: rng.chance(30).then(|| rng.below(3) as u8),
                                offer_secs: if rng.chance(50) { 30 } else { 0 },
                            })
                        } else if rng.chance(80) {
                            TransferTarget::Agent(Self::agent_id(rng.below(AGENTS + 1)))
                        } else {
                            // Handed to a bot (one of two, in either pool).
                            TransferTarget::Bot {
                                pool: POOLS[rng.below(2)].to_owned(),
                                bot: format!("bot:b{}", rng.below(2)),
                            }
                        };
                        if let (true, TransferTarget::Pool(target)) =
                            (rng.chance(50), target.clone())
                        {
                            // A queue overflow: only while it waits in that pool since before
                            // the cutoff.
                            let pool = POOLS[rng.below(2)];
                            let before = at(now - rng.below(40) as i64);
                            self.log
                                .push(format!("overflow {c} {pool} {before} {target:?}"));
                            let e = self
                                .emb
                                .overflow(&c, pool, before, target.clone(), at(now))
                                .await;
                            let r = self
                                .red
                                .overflow(&self.red_id(&c), pool, before, target, at(now))
                                .await;
                            self.check("overflow", shape(&e, release), shape(&r, release));
                            return;
                        }
                        // Half the transfers hand over a context, which replaces the one kept.
                        let handover = rng.chance(50).then(|| Handover {
                            by: Some(format!("bot:b{}", rng.below(2))),
                            at: at(now),
                            context: HandoverContext {
                                intent: Some(format!("intent-{}", rng.below(4))),
                                slots: [("n".to_owned(), SlotValue::Number(rng.below(100).into()))]
                                    .into(),
                                ..HandoverContext::default()
                            },
                        });
                        self.log
                            .push(format!("transfer {c} {target:?} handover {handover:?}"));
                        let e = self
                            .emb
                            .transfer(&c, target.clone(), handover.as_ref(), at(now))
                            .await;
                        let r = self
                            .red
                            .transfer(&self.red_id(&c), target, handover.as_ref(), at(now))
                            .await;
                        self.check("transfer", shape(&e, release), shape(&r, release));
                    }
                }
                11 => {
                    if let Some(c) = self.pick_conversation(rng) {
                        let conv = self.emb.conversation(&c).await.unwrap().unwrap();
                        let agent = rng
                            .chance(70)
                            .then(|| Self::agent_id(rng.below(AGENTS)))
                            .or_else(|| conv.agent_id.clone());
                        let env =
                            outbound_envelope(&conv, agent.as_deref().unwrap_or("-"), at(now));
                        let renv = self.to_red(&env);
                        self.log.push(format!("outbound {c} {agent:?}"));
                        let e = self
                            .emb
                            .record_outbound(&c, agent.as_deref(), &env, at(now), None)
                            .await;
                        let r = self
                            .red
                            .record_outbound(
                                &self.red_id(&c),
                                agent.as_deref(),
                                &renv,
                                at(now),
                                None,
                            )
                            .await;
                        let f = |o: &switchyard_core::store::OutboundRecord| {
                            json!([o.conversation, o.duplicate])
                        };
                        self.check("record_outbound", shape(&e, f), shape(&r, f));
                    }
                }
                12 => self.update_customer(rng, now).await,
                17..=19 => self.answer_offer(rng, now).await,
                _ => self.compare_state(rng).await,
            }
        }

        /// Accepts, declines or lets expire an offer, or takes a conversation back as
        /// unanswered: mostly of a conversation offered now, by its agent (the expiry with the
        /// `offered_at` seen), sometimes of a random one or by another agent (refused alike by
        /// both stores).
        async fn answer_offer(&mut self, rng: &mut Rng, now: i64) {
            let offered = self.emb.pending_offers().await.unwrap();
            let (c, agent, offered_at) = match offered.get(rng.below(offered.len().max(1))) {
                Some(conv) if rng.chance(80) => (
                    conv.id.clone(),
                    conv.agent_id.clone().unwrap_or_default(),
                    conv.offered_at.unwrap_or(at(now)),
                ),
                _ => match self.pick_conversation(rng) {
                    Some(c) => (c, Self::agent_id(rng.below(AGENTS)), at(now)),
                    None => return,
                },
            };
            let r = self.red_id(&c);
            match rng.below(4) {
                0 => {
                    self.log.push(format!("accept {c} {agent}"));
                    let f = |c: &switchyard_core::model::Conversation| json!(c);
                    let e = self.emb.accept_offer(&c, &agent, at(now)).await;
                    let rr = self.red.accept_offer(&r, &agent, at(now)).await;
                    self.check("accept_offer", shape(&e, f), shape(&rr, f));
                }
                n => {
                    let why = match n {
                        1 => Withdrawal::Declined,
                        2 => Withdrawal::Expired { offered_at },
                        _ => Withdrawal::Unanswered {
                            before: at(now - rng.below(3) as i64),
                            sets_away: rng.below(2) == 0,
                        },
                    };
                    // An unanswered customer is taken back from the agent holding the
                    // conversation (refused alike while its offer is pending).
                    let agent = match why {
                        Withdrawal::Unanswered { .. } => self
                            .emb
                            .conversation(&c)
                            .await
                            .unwrap()
                            .and_then(|c| c.agent_id)
                            .unwrap_or(agent),
                        _ => agent,
                    };
                    self.log.push(format!("withdraw {c} {agent} {why:?}"));
                    let f = |x: &switchyard_core::store::Release| json!({"conversation": x.conversation, "released": x.released_agent});
                    let e = self.emb.take_back(&c, &agent, why, at(now)).await;
                    let rr = self.red.take_back(&r, &agent, why, at(now)).await;
                    self.check("take_back", shape(&e, f), shape(&rr, f));
                }
            }
        }

        async fn compare_state(&self, rng: &mut Rng) {
            let f = |v: &Vec<switchyard_core::model::Conversation>| json!(v);
            self.check(
                "pending_offers",
                shape(&self.emb.pending_offers().await, f),
                shape(&self.red.pending_offers().await, f),
            );
            let f = |v: &Vec<switchyard_core::model::Agent>| json!(v);
            self.check(
                "agents",
                shape(&self.emb.agents().await, f),
                shape(&self.red.agents().await, f),
            );
            for pool in POOLS {
                let f = |v: &Vec<String>| json!(v);
                self.check(
                    "queue",
                    shape(&self.emb.queue(pool).await, f),
                    shape(&self.red.queue(pool).await, f),
                );
                let f =
                    |s: &switchyard_core::store::QueueStats| json!([s.depth, s.oldest_queued_at]);
                self.check(
                    "queue_stats",
                    shape(&self.emb.queue_stats(pool).await, f),
                    shape(&self.red.queue_stats(pool).await, f),
                );
            }
            for i in 0..=AGENTS {
                let a = Self::agent_id(i);
                let f = |v: &Vec<switchyard_core::model::Conversation>| json!(v);
                self.check(
                    "agent_conversations",
                    shape(&self.emb.agent_conversations(&a).await, f),
                    shape(&self.red.agent_conversations(&a).await, f),
                );
            }
            for c in &self.conversations {
                let f = |v: &Option<switchyard_core::model::Conversation>| json!(v);
                let r = self.red_id(c);
                self.check(
                    "conversation",
                    shape(&self.emb.conversation(c).await, f),
                    shape(&self.red.conversation(&r).await, f),
                );
                let limit = rng.below(6) + if rng.chance(50) { 1000 } else { 0 };
                let f = |v: &Vec<Envelope>| json!(v);
                self.check(
                    "messages",
                    shape(&self.emb.messages(c, limit).await, f),
                    shape(&self.red.messages(&r, limit).await, f),
                );
            }
            for c in &self.customers {
                let f = |v: &Option<switchyard_core::model::Customer>| json!(v);
                self.check(
                    "customer",
                    shape(&self.emb.customer(c).await, f),
                    shape(&self.red.customer(&self.red_id(c)).await, f),
                );
            }
            for pool in POOLS {
                let statuses = random_statuses(rng);
                let limit = if rng.chance(30) { rng.below(3) } else { 1000 };
                let f = |v: &Vec<switchyard_core::model::Conversation>| json!(v);
                self.check(
                    "pool_conversations",
                    shape(
                        &self.emb.pool_conversations(pool, &statuses, limit).await,
                        f,
                    ),
                    shape(
                        &self.red.pool_conversations(pool, &statuses, limit).await,
                        f,
                    ),
                );
            }
            for c in &self.customers {
                let f = |v: &Vec<switchyard_core::model::Conversation>| json!(v);
                let all = self
                    .emb
                    .customer_conversations(c, &CustomerConversationsQuery::default())
                    .await
                    .unwrap_or_default();
                let before = if all.is_empty() || rng.chance(50) {
                    None
                } else {
                    Some(all[rng.below(all.len())].id.clone())
                };
                let query = CustomerConversationsQuery {
                    statuses: random_statuses(rng),
                    before: before.clone(),
                    limit: if rng.chance(30) { rng.below(3) } else { 1000 },
                };
                let red_query = CustomerConversationsQuery {
                    before: before.map(|b| self.red_id(&b)),
                    ..query.clone()
                };
                self.check(
                    "customer_conversations",
                    shape(&self.emb.customer_conversations(c, &query).await, f),
                    shape(
                        &self
                            .red
                            .customer_conversations(&self.red_id(c), &red_query)
                            .await,
                        f,
                    ),
                );
            }
            for p in 0..PEOPLE {
                for channel in 0..2 {
                    let k = Self::person_keys(p, channel);
                    let f = |v: &Option<switchyard_core::model::Customer>| json!(v);
                    self.check(
                        "customer_by_identity",
                        shape(&self.emb.customer_by_identity(&k).await, f),
                        shape(&self.red.customer_by_identity(&k).await, f),
                    );
                }
            }
        }
    }

    /// No status (every one), or one or two random ones.
    fn random_statuses(rng: &mut Rng) -> Vec<ConversationStatus> {
        const ALL: [ConversationStatus; 4] = [
            ConversationStatus::Bot,
            ConversationStatus::Queued,
            ConversationStatus::Assigned,
            ConversationStatus::Closed,
        ];
        (0..rng.below(3))
            .map(|_| ALL[rng.below(ALL.len())])
            .collect()
    }

    #[tokio::test]
    async fn redis_matches_embedded_on_random_operations() {
        let Some(t) = TestRedisPrefix::new().await else {
            return;
        };
        let seeds: Vec<u64> = match std::env::var("SWITCHYARD_DIFF_SEED") {
            Ok(s) => vec![s.parse().expect("SWITCHYARD_DIFF_SEED is a number")],
            Err(_) => (1..=12)
                .map(|i| 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(i))
                .collect(),
        };
        for seed in seeds {
            let prefix = TestRedisPrefix {
                url: t.url.clone(),
                prefix: format!("{}-{seed:x}", t.prefix),
            };
            let mut pair = Pair {
                emb: Arc::new(EmbeddedStore::new()),
                red: prefix.store().await,
                ids: Vec::new(),
                customers: Vec::new(),
                conversations: Vec::new(),
                envelopes: Vec::new(),
                last_customer: Default::default(),
                log: vec![format!("seed {seed}")],
            };
            let mut rng = Rng(seed);
            // Some seeds' pools choose the least busy agent.
            let least_busy: Vec<String> = POOLS
                .iter()
                .filter(|_| rng.chance(50))
                .map(|p| (*p).to_owned())
                .collect();
            pair.log.push(format!("least busy pools {least_busy:?}"));
            pair.emb.set_least_busy_pools(&least_busy);
            pair.red.set_least_busy_pools(&least_busy);
            for step in 0..300 {
                pair.step(&mut rng, i64::from(step)).await;
            }
            pair.compare_state(&mut rng).await;
        }
    }
}

/// During a rolling upgrade, a newer version may note a change with a kind this version does
/// not know: listing skips that note (left for a process that can announce it) and still lists
/// the others.
#[tokio::test]
async fn notes_of_a_newer_version_are_left_without_holding_back_the_others() {
    use switchyard_core::store::{Note, NoteKind};
    let Some(t) = TestRedisPrefix::new().await else {
        return;
    };
    let s = t.store().await;
    s.upsert_agent(
        AgentUpdate {
            id: "a".to_owned(),
            status: Some(AgentStatus::Online),
            ..AgentUpdate::default()
        },
        at(5),
    )
    .await
    .unwrap();
    let mut con = t.raw_connection().unwrap();
    let future = format!(
        "{}|reassigned_by_magic|c-1",
        at(1).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    );
    let _: i64 = redis::cmd("ZADD")
        .arg(format!("{}:unannounced:notes", t.prefix))
        .arg(0)
        .arg(&future)
        .query(&mut con)
        .unwrap();
    let agent_update = Note::new(NoteKind::AgentUpdated, "a", at(5));
    let listed = s.unannounced(at(10)).await.unwrap();
    assert_eq!(listed, [agent_update]);
    s.clear_notes(&listed).await.unwrap();
    let left: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{}:unannounced:notes", t.prefix))
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .unwrap();
    assert_eq!(
        left,
        [future],
        "the unknown note is left for a newer version"
    );
}

/// During a rolling upgrade, processes of the previous version still note their commands'
/// assignments in `P:unannounced:assigned` (conversation id by assignment time, Unix ms). Listing
/// the notes takes over those made at or before its time as `assigned` notes (at the
/// conversation's `assigned_at`), drops those whose conversation is no longer assigned, and
/// leaves younger ones for a later listing.
#[tokio::test]
async fn notes_of_the_previous_version_are_taken_over() {
    use switchyard_core::store::{Note, NoteKind};
    let Some(t) = TestRedisPrefix::new().await else {
        return;
    };
    let s = t.store().await;
    s.upsert_agent(
        AgentUpdate {
            id: "a".to_owned(),
            pools: Some(vec!["default".to_owned()]),
            capacity: Some(5),
            status: Some(AgentStatus::Online),
            ..AgentUpdate::default()
        },
        at(0),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let app = key("", "app_user", "shop-app", user);
        let customer = s
            .resolve_customer(ResolveRequest {
                tenant: DEFAULT_TENANT.to_owned(),
                identities: vec![(app.clone(), IdentityStrength::Strong)],
                explicit: false,
                display_name: None,
                now: at(1),
                source: None,
            })
            .await
            .unwrap()
            .customer;
        let e = inbound_envelope(&customer.id, &app_channel(), user, vec![app], user, at(1));
        ids.push(
            s.record_inbound(&e, &Placement::queued("default"), at(1))
                .await
                .unwrap()
                .conversation
                .id,
        );
    }
    assert_eq!(s.assign_queued("default", at(2)).await.unwrap().len(), 3);
    s.close_conversation(&ids[1], "resolved", at(3))
        .await
        .unwrap();
    // The agent update and the close note themselves: announced, as their commands would.
    let own = s.unannounced(at(1000)).await.unwrap();
    s.clear_notes(&own).await.unwrap();

    let legacy = format!("{}:unannounced:assigned", t.prefix);
    let mut con = t.raw_connection().unwrap();
    for (id, noted_at) in [(&ids[0], at(2)), (&ids[1], at(2)), (&ids[2], at(100))] {
        let _: i64 = redis::cmd("ZADD")
            .arg(&legacy)
            .arg(noted_at.timestamp_millis())
            .arg(id)
            .query(&mut con)
            .unwrap();
    }
    let assigned = |id: &str| Note::new(NoteKind::Assigned, id, at(2));
    assert_eq!(
        s.unannounced(at(10)).await.unwrap(),
        [assigned(&ids[0])],
        "the old note of an assigned conversation is taken over; the closed one's is dropped"
    );
    let left: Vec<String> = redis::cmd("ZRANGE")
        .arg(&legacy)
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .unwrap();
    assert_eq!(left, [ids[2].clone()], "the younger note waits");
    assert_eq!(
        s.unannounced(at(100)).await.unwrap(),
        [assigned(&ids[0]), assigned(&ids[2])]
    );
    let exists: i64 = redis::cmd("EXISTS").arg(&legacy).query(&mut con).unwrap();
    assert_eq!(exists, 0, "the old key is gone once empty");
    s.clear_notes(&[assigned(&ids[0]), assigned(&ids[2])])
        .await
        .unwrap();
    assert!(s.unannounced(at(1000)).await.unwrap().is_empty());
}
