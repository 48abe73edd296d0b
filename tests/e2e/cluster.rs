//! Switchyard as separate processes on the real RabbitMQ and Redis: one gateway, two routers.
//! The guarantees of DESIGN.md hold under load and when things break on purpose: every accepted
//! message lands in its conversation exactly once and in order per identity ("0 lost, 0
//! doubled"), one profile per person, one open conversation per customer, no agent over capacity.
//!
//! Each test has its own RabbitMQ vhost and Redis key prefix, deleted afterwards.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_core::bus::amqp::AmqpBus;
use switchyard_core::bus::{Bus, Message};
use switchyard_core::conformance::services::{TestVhost, absent, redis_url};
use tokio::sync::Mutex;

use crate::binary::{binary, free_port, sigterm};
use crate::support::{SECRET, api_message, metric_at};

/// Cluster tests run one at a time: each runs three processes and a load on a 2-core machine,
/// and in parallel they would mostly measure each other.
static ONE_AT_A_TIME: std::sync::LazyLock<Arc<Mutex<()>>> =
    std::sync::LazyLock::new(|| Arc::new(Mutex::new(())));

/// A Switchyard deployment of child processes sharing a vhost and a Redis prefix.
pub struct Cluster {
    _turn: tokio::sync::OwnedMutexGuard<()>,
    pub vhost: TestVhost,
    pub redis_url: String,
    pub prefix: String,
    pub config: PathBuf,
    pub gateway: Child,
    pub gateway_url: String,
    pub routers: Vec<RouterProcess>,
    pub http: reqwest::Client,
    /// Posts that were tried again after a 503 or no answer. Each may have published its message
    /// twice (a publish confirmed after the gateway gave up waiting), and the routers then
    /// rightly drop one copy as a duplicate.
    pub retried_posts: AtomicUsize,
}

/// The router metric of messages that arrived again after they had been routed.
const ROUTED_TWICE: &str = "switchyard_router_messages_total{outcome=\"duplicate\"}";
/// The router metric of messages routed.
const ROUTED: &str = "switchyard_router_messages_total{outcome=\"routed\"}";
/// The router metric of shards handed back to their owner.
const HANDED_BACK: &str = "switchyard_router_shard_handovers_total{step=\"handed_back\"}";

/// A router child process.
pub struct RouterProcess {
    pub child: Child,
    /// Base URL of its HTTP listener (probes and metrics).
    pub url: String,
    /// Its `router.instance`.
    pub instance: usize,
}

fn spawn(role: &str, config: &PathBuf, port: u16, instance: usize) -> Child {
    Command::new(binary())
        .env("SWITCHYARD__ROUTER__INSTANCE", instance.to_string())
        .env("SWITCHYARD__ROUTER__INSTANCES", "2")
        .env("SWITCHYARD__ROUTER__STANDBY_DELAY_MS", "1000")
        .arg(role)
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env(
            "RUST_LOG",
            std::env::var("SY_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(if std::env::var_os("SY_CHILD_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn switchyard")
}

async fn wait_ready(http: &reqwest::Client, url: &str) {
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not become ready within 20 s");
}

impl Cluster {
    /// Starts a gateway and `routers` routers; `None` when RabbitMQ or Redis is absent.
    pub async fn start(label: &str, routers: usize, redis: Option<String>) -> Option<Cluster> {
        Self::start_with(label, routers, redis, "").await
    }

    /// [`Cluster::start`] with `extra` TOML appended to the shared configuration.
    pub async fn start_with(
        label: &str,
        routers: usize,
        redis: Option<String>,
        extra: &str,
    ) -> Option<Cluster> {
        let turn = Arc::clone(&ONE_AT_A_TIME).lock_owned().await;
        let vhost = TestVhost::create(label)?;
        let redis_url = redis.unwrap_or_else(redis_url);
        if let Err(e) = redis::Client::open(redis_url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        {
            return absent("Redis", &e.to_string());
        }
        let prefix = format!("sy-test-{label}-{}", rand_suffix());
        let config = std::env::temp_dir().join(format!("{prefix}.toml"));
        std::fs::write(
            &config,
            format!(
                "[bus]\nkind = \"amqp\"\nurl = \"{}\"\nshards = 8\npublish_timeout_ms = 3000\n\
                 [store]\nkind = \"redis\"\nurl = \"{redis_url}\"\nkey_prefix = \"{prefix}\"\n\
                 [log]\nformat = \"json\"\nlevel = \"warn\"\n\
                 [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\n\
                 [[channels]]\nid = \"bank\"\nkind = \"api\"\nsecret = \"{SECRET}\"\n{extra}",
                vhost.url
            ),
        )
        .expect("write config");
        let http = reqwest::Client::new();
        let port = free_port();
        let gateway = spawn("gateway", &config, port, 0);
        let gateway_url = format!("http://127.0.0.1:{port}");
        wait_ready(&http, &gateway_url).await;
        let mut cluster = Cluster {
            _turn: turn,
            vhost,
            redis_url,
            prefix,
            config,
            gateway,
            gateway_url,
            routers: Vec::new(),
            http,
            retried_posts: AtomicUsize::new(0),
        };
        for _ in 0..routers {
            cluster.add_router().await;
        }
        Some(cluster)
    }

    /// Kills the gateway with SIGKILL (no shutdown, no goodbye to anyone) and starts a new one
    /// on another port.
    pub async fn replace_gateway(&mut self) {
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
        let port = free_port();
        self.gateway = spawn("gateway", &self.config, port, 0);
        self.gateway_url = format!("http://127.0.0.1:{port}");
        wait_ready(&self.http, &self.gateway_url).await;
    }

    /// Starts one more router, instance 0 or 1 in turn, and waits until it is ready.
    pub async fn add_router(&mut self) {
        self.add_router_as(self.routers.len() % 2).await;
    }

    /// Starts a router as `router.instance` `instance` (of 2) and waits until it is ready.
    pub async fn add_router_as(&mut self, instance: usize) {
        let port = free_port();
        let child = spawn("router", &self.config, port, instance);
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&self.http, &url).await;
        self.routers.push(RouterProcess {
            child,
            url,
            instance,
        });
    }

    /// The sum of a metric `series` over the running routers.
    pub async fn routers_metric(&self, series: &str) -> f64 {
        let mut sum = 0.0;
        for router in &self.routers {
            sum += metric_at(&self.http, &router.url, series).await;
        }
        sum
    }

    /// Checks that no message reached a router again after it was routed, besides the copies
    /// that posts tried again may have published: `earlier` is what routers that have stopped
    /// counted, `why` what more would mean.
    pub async fn assert_routed_once(&self, earlier: f64, why: &str) {
        let routed_twice = earlier + self.routers_metric(ROUTED_TWICE).await;
        let retried = self.retried_posts.load(Ordering::Relaxed);
        assert!(
            routed_twice <= retried as f64,
            "{routed_twice} messages reached a router again after they were routed, more than \
             the {retried} posts tried again: {why}"
        );
    }

    /// A bus client on the cluster's vhost (for the event stream and direct publishes).
    pub async fn bus(&self) -> AmqpBus {
        AmqpBus::connect(&self.vhost.url, "test-observer", "", Duration::from_secs(3))
            .await
            .expect("observer connects")
    }

    /// Posts a signed API message, retrying the same message until it is accepted (as a
    /// channel does), and returns the answer.
    pub async fn post_until_accepted(&self, channel: &str, body: &[u8]) -> Value {
        for _ in 0..600 {
            let ts = chrono::Utc::now().timestamp();
            let sent = self
                .http
                .post(format!(
                    "{}/v1/channels/{channel}/messages",
                    self.gateway_url
                ))
                .header("content-type", "application/json")
                .header("x-switchyard-timestamp", ts.to_string())
                .header(
                    "x-switchyard-signature",
                    switchyard_connectors::signature::switchyard_signature(
                        SECRET.as_bytes(),
                        ts,
                        body,
                    ),
                )
                .body(body.to_vec())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            if let Ok(r) = sent {
                if r.status() == 202 {
                    return r.json().await.expect("202 body");
                }
                assert!(
                    r.status() == 503,
                    "unexpected status {} for a valid message",
                    r.status()
                );
            }
            self.retried_posts.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("a valid message was not accepted within 60 s of retries");
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.gateway_url))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put_agent(&self, id: &str, capacity: u32) {
        let r = self
            .http
            .put(format!("{}/v1/agents/{id}", self.gateway_url))
            .json(&json!({"pools": ["default"], "capacity": capacity, "status": "online"}))
            .send()
            .await
            .expect("PUT agent");
        assert_eq!(r.status(), 200);
    }

    /// Stops every process cleanly (SIGTERM), then deletes the Redis keys (on drop; the vhost
    /// goes with `self.vhost`).
    pub async fn teardown(mut self) {
        for child in self
            .routers
            .iter_mut()
            .map(|r| &mut r.child)
            .chain(std::iter::once(&mut self.gateway))
        {
            let _ = sigterm(child);
        }
        for child in self
            .routers
            .iter_mut()
            .map(|r| &mut r.child)
            .chain(std::iter::once(&mut self.gateway))
        {
            let _ = child.wait();
        }
        // Dropping `self` deletes the keys.
    }

    /// Deletes the configuration file and every Redis key under the cluster's prefix.
    fn delete_keys(&self) {
        let _ = std::fs::remove_file(&self.config);
        if let Ok(client) = redis::Client::open(self.redis_url.as_str())
            && let Ok(mut con) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query(&mut con)
                .unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut con);
            }
        }
    }
}

impl Drop for Cluster {
    /// A test that fails before its teardown still leaves nothing behind: its processes are
    /// killed and its keys deleted (the vhost goes with `self.vhost`).
    fn drop(&mut self) {
        for child in self
            .routers
            .iter_mut()
            .map(|r| &mut r.child)
            .chain(std::iter::once(&mut self.gateway))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.delete_keys();
    }
}

fn rand_suffix() -> String {
    format!("{:x}", rand::random::<u32>())
}

/// What the event stream showed.
#[derive(Default)]
pub struct Observed {
    /// dedupe keys of message.received events (events are at-least-once; counted once).
    pub received: HashSet<String>,
    /// Conversations each agent holds, replayed from assigned/closed/transferred events.
    pub holding: HashMap<String, HashSet<String>>,
    /// Most conversations any agent held at once.
    pub max_held: HashMap<String, usize>,
}

/// Collects events from the cluster's event exchange in the background.
pub async fn observe(bus: &AmqpBus) -> Arc<Mutex<Observed>> {
    let queue = bus
        .declare_subscriber("switchyard.events", &["#"])
        .await
        .expect("subscribe to events");
    let mut deliveries = bus.consume(&queue, 500).await.expect("consume events");
    let observed = Arc::new(Mutex::new(Observed::default()));
    let sink = Arc::clone(&observed);
    tokio::spawn(async move {
        while let Some(d) = deliveries.next().await {
            let event: Value = serde_json::from_slice(&d.message.body).unwrap_or(Value::Null);
            let _ = d.ack().await;
            let kind = event["type"].as_str().unwrap_or_default().to_owned();
            let mut o = sink.lock().await;
            match kind.as_str() {
                "io.switchyard.message.received" => {
                    if let Some(k) = event["data"]["message"]["dedupe_key"].as_str() {
                        o.received.insert(k.to_owned());
                    }
                }
                "io.switchyard.conversation.assigned" => {
                    let c = &event["data"]["conversation"];
                    if let (Some(agent), Some(id)) = (c["agent_id"].as_str(), c["id"].as_str()) {
                        let held = o.holding.entry(agent.to_owned()).or_default();
                        held.insert(id.to_owned());
                        let n = held.len();
                        let max = o.max_held.entry(agent.to_owned()).or_default();
                        *max = (*max).max(n);
                    }
                }
                "io.switchyard.conversation.closed" => {
                    let id = event["data"]["conversation"]["id"]
                        .as_str()
                        .unwrap_or_default();
                    if let Some(agent) = event["data"]["agent_id"].as_str()
                        && let Some(held) = o.holding.get_mut(agent)
                    {
                        held.remove(id);
                    }
                }
                "io.switchyard.conversation.transferred" => {
                    let id = event["data"]["conversation"]["id"]
                        .as_str()
                        .unwrap_or_default();
                    if let Some(agent) = event["data"]["from_agent_id"].as_str()
                        && let Some(held) = o.holding.get_mut(agent)
                    {
                        held.remove(id);
                    }
                }
                _ => {}
            }
        }
    });
    observed
}

/// Sends `messages_per_identity` messages for each of `people` persons on both channels
/// (`shop` user `s{i}` and `bank` user `b{i}`, sharing the strong key `phone::+1{i}`),
/// identities in parallel, each identity's messages in order. Runs `during` meanwhile.
pub async fn load(
    cluster: &Cluster,
    people: usize,
    messages_per_identity: usize,
    concurrency: usize,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let identities: Arc<Vec<(String, String, String)>> = Arc::new(
        (0..people)
            .flat_map(|i| {
                let phone = format!("phone::+1{i:07}");
                [
                    ("shop".to_owned(), format!("s{i}"), phone.clone()),
                    ("bank".to_owned(), format!("b{i}"), phone),
                ]
            })
            .collect(),
    );
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, identities) = (Arc::clone(&next), Arc::clone(&identities));
        workers.push(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((channel, user, phone)) = identities.get(i) else {
                    return;
                };
                for m in 0..messages_per_identity {
                    let body = api_message(&format!("{user}-{m}"), user, &format!("{m}"), &[phone]);
                    cluster.post_until_accepted(channel, &body).await;
                }
            }
        });
    }
    futures_util::future::join_all(workers).await;
}

/// Waits until the event stream has seen every message, then checks every guarantee from the
/// store through the REST API.
pub async fn verify(
    cluster: &Cluster,
    observed: &Arc<Mutex<Observed>>,
    people: usize,
    per_identity: usize,
    capacity: usize,
) {
    let expected = people * 2 * per_identity;
    // Wait while routing makes progress (debug builds on 2 cores are slow); give up after
    // 30 s without progress.
    let (mut seen, mut last_progress, mut last_seen) = (0, tokio::time::Instant::now(), 0);
    while last_progress.elapsed() < Duration::from_secs(30) {
        seen = observed.lock().await.received.len();
        if seen >= expected {
            break;
        }
        if seen > last_seen {
            (last_seen, last_progress) = (seen, tokio::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen, expected, "every accepted message was routed (0 lost)");

    let mut conversations_seen = HashSet::new();
    for i in 0..people {
        let (s1, a) = cluster
            .get(&format!("/v1/customers?identity=app_user:shop:s{i}"))
            .await;
        let (s2, b) = cluster
            .get(&format!("/v1/customers?identity=app_user:bank:b{i}"))
            .await;
        assert_eq!((s1, s2), (200, 200));
        assert_eq!(
            a["id"], b["id"],
            "person {i}: one profile for both channels"
        );
        let (_, by_phone) = cluster
            .get(&format!("/v1/customers?identity=phone::%2B1{i:07}"))
            .await;
        assert_eq!(by_phone["id"], a["id"]);
        // Find the customer's conversation through any message's event? Use the queue or an
        // agent: every conversation is either queued or held; look it up via the pools/agents.
        let customer = a["id"].as_str().expect("customer id").to_owned();
        conversations_seen.insert(customer);
    }
    assert_eq!(conversations_seen.len(), people, "one profile per person");

    // Every conversation: queued in `default` or held by an agent.
    let mut conversation_ids = Vec::new();
    let (_, queue) = cluster.get("/v1/pools/default/queue").await;
    for c in queue["conversations"].as_array().expect("queue") {
        conversation_ids.push(c["id"].as_str().expect("id").to_owned());
    }
    let (_, agents) = cluster.get("/v1/agents").await;
    for agent in agents["agents"].as_array().expect("agents") {
        let held = agent["conversations"].as_array().expect("held");
        assert!(
            held.len() <= capacity,
            "agent over capacity in the store: {agent}"
        );
        for c in held {
            conversation_ids.push(c.as_str().expect("id").to_owned());
        }
    }
    assert_eq!(
        conversation_ids.len(),
        people,
        "one open conversation per customer"
    );
    let mut customers = HashSet::new();
    for id in &conversation_ids {
        let (status, conv) = cluster.get(&format!("/v1/conversations/{id}")).await;
        assert_eq!(status, 200);
        assert!(
            customers.insert(conv["customer_id"].clone()),
            "two open conversations for one customer"
        );
        let messages = conv["messages"].as_array().expect("messages");
        assert_eq!(
            messages.len(),
            2 * per_identity,
            "conversation {id}: 0 lost, 0 doubled"
        );
        let mut by_identity: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for m in messages {
            let user = m["sender"]["external_id"]
                .as_str()
                .expect("user")
                .to_owned();
            let n: usize = m["content"]["text"]
                .as_str()
                .expect("text")
                .parse()
                .expect("n");
            by_identity.entry(user).or_default().push(n);
        }
        for (user, ns) in by_identity {
            assert_eq!(
                ns,
                (0..per_identity).collect::<Vec<_>>(),
                "{user}: in order, each once"
            );
        }
    }
    let o = observed.lock().await;
    for (agent, max) in &o.max_held {
        assert!(
            *max <= capacity,
            "agent {agent} held {max} > capacity {capacity} (event stream)"
        );
    }
}

async fn agents(cluster: &Cluster, n: usize, capacity: u32) {
    for a in 0..n {
        cluster.put_agent(&format!("agent-{a}"), capacity).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_routers_one_gateway_20k_messages_keep_every_guarantee() {
    let Some(cluster) = Cluster::start("load", 2, None).await else {
        return;
    };
    let bus = cluster.bus().await;
    let observed = observe(&bus).await;
    agents(&cluster, 10, 5).await;
    // 2,000 persons × 2 channels × 5 messages = 20,000 messages.
    load(&cluster, 2000, 5, 64).await;
    verify(&cluster, &observed, 2000, 5, 5).await;
    cluster.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_connections_closed_mid_burst_lose_and_double_nothing() {
    let Some(cluster) = Cluster::start("closeconn", 2, None).await else {
        return;
    };
    let bus = cluster.bus().await;
    let observed = observe(&bus).await;
    agents(&cluster, 4, 5).await;
    let breaker = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster
            .vhost
            .close_connections("switchyard failure test")
            .expect("close the vhost's connections");
    };
    tokio::join!(load(&cluster, 300, 5, 32), breaker);
    // Our observer's connection was closed too; read the outcome from the store instead.
    let fresh = cluster.bus().await;
    let _ = fresh;
    verify_from_store(&cluster, 300, 5, 5).await;
    drop(observed);
    cluster.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_router_killed_mid_burst_and_restarted_loses_and_doubles_nothing() {
    let Some(mut cluster) = Cluster::start("kill9", 2, None).await else {
        return;
    };
    agents(&cluster, 4, 5).await;
    let mut victim = cluster.routers.remove(0);
    let killer = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        victim.child.kill().expect("kill -9");
        let _ = victim.child.wait();
    };
    tokio::join!(load(&cluster, 300, 5, 32), killer);
    cluster.add_router_as(victim.instance).await;
    verify_from_store(&cluster, 300, 5, 5).await;
    cluster.teardown().await;
}

/// A router stopped cleanly (SIGTERM) while it still has a backlog: the standby router takes its
/// shards over, and every user's messages are still routed once each and in order. The stopping
/// router holds prefetched messages of users whose next messages wait in the queue; it leaves
/// them to the queue as a crash would ([`switchyard_core::bus::Deliveries::leave`]), because
/// after a clean close RabbitMQ 3.x would give the standby the later messages first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_router_stopped_with_a_backlog_hands_its_shards_over_in_order() {
    let Some(mut cluster) = Cluster::start("sigterm", 0, None).await else {
        return;
    };
    agents(&cluster, 4, 5).await;
    // The backlog: every message is accepted before any router runs.
    load(&cluster, 500, 10, 64).await;
    cluster.add_router_as(0).await;
    cluster.add_router_as(1).await;
    // Router 1 stands by on router 0's shards after its standby delay (1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut stopping = cluster.routers.remove(0);
    let stopped_routed_twice = metric_at(&cluster.http, &stopping.url, ROUTED_TWICE).await;
    let _ = sigterm(&stopping.child);
    let status = stopping.child.wait().expect("wait for the stopped router");
    assert!(
        status.success(),
        "a router stopped by SIGTERM exits 0, got {status}"
    );
    verify_from_store(&cluster, 500, 10, 5).await;
    cluster
        .assert_routed_once(stopped_routed_twice, "the stopped router's acks were lost")
        .await;
    cluster.teardown().await;
}

/// A router that comes back gets its shards back, while the other router works through a
/// backlog on them, and every user's messages are still routed once each and in order. Router 1
/// alone takes all the shards; once router 0 is up, router 1 hands router 0's four shards back
/// (`switchyard_router_shard_handovers_total`), each time holding prefetched messages whose
/// users' next messages router 0 gets first from the queue: router 0 waits until router 1 has
/// routed what it held ([`switchyard_router::peers`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_router_gets_its_shards_back_in_order() {
    let Some(mut cluster) = Cluster::start("handback", 0, None).await else {
        return;
    };
    agents(&cluster, 4, 5).await;
    load(&cluster, 500, 10, 64).await;
    cluster.add_router_as(1).await;
    // Router 1 takes router 0's shards after its standby delay (1 s), and starts on the backlog.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.add_router_as(0).await;
    verify_from_store(&cluster, 500, 10, 5).await;
    let (one, zero) = (&cluster.routers[0], &cluster.routers[1]);
    assert_eq!((one.instance, zero.instance), (1, 0));
    let handed_back = metric_at(&cluster.http, &one.url, HANDED_BACK).await;
    assert_eq!(
        handed_back, 4.0,
        "router 1 hands each of router 0's four shards back once"
    );
    let routed_by_zero = metric_at(&cluster.http, &zero.url, ROUTED).await;
    assert!(
        routed_by_zero > 0.0,
        "router 0 routed nothing: its shards stayed with router 1"
    );
    // The handing-back router acks what it held after its cancel, and keeps the channel open
    // until the broker has applied those acks (closing it at once returned some of them to the
    // queue); only a post tried again may arrive twice.
    cluster
        .assert_routed_once(0.0, "a message handed over with its shard came back")
        .await;
    cluster.teardown().await;
}

/// [`verify`] without an event stream: waits until the store holds every message.
pub async fn verify_from_store(
    cluster: &Cluster,
    people: usize,
    per_identity: usize,
    capacity: usize,
) {
    let observed = Arc::new(Mutex::new(Observed::default()));
    // Wait for the routers to drain: every person's conversation complete.
    for _ in 0..1200 {
        let mut complete = 0;
        let (_, queue) = cluster.get("/v1/pools/default/queue").await;
        let (_, agents) = cluster.get("/v1/agents").await;
        let mut ids: Vec<String> = queue["conversations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for agent in agents["agents"].as_array().cloned().unwrap_or_default() {
            for c in agent["conversations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                ids.extend(c.as_str().map(str::to_owned));
            }
        }
        let mut keys = HashSet::new();
        for id in &ids {
            let (_, conv) = cluster.get(&format!("/v1/conversations/{id}")).await;
            let n = conv["messages"].as_array().map_or(0, Vec::len);
            if n >= 2 * per_identity {
                complete += 1;
            }
            for m in conv["messages"].as_array().cloned().unwrap_or_default() {
                keys.extend(m["dedupe_key"].as_str().map(str::to_owned));
            }
        }
        if complete == people {
            let mut o = observed.lock().await;
            o.received = keys;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    verify(cluster, &observed, people, per_identity, capacity).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_is_dead_lettered_with_its_reason_and_its_shard_keeps_flowing() {
    let Some(cluster) = Cluster::start("poison", 1, None).await else {
        return;
    };
    let bus = cluster.bus().await;
    // Publish garbage straight onto every shard, as a broken foreign connector might.
    for shard in 0..8 {
        bus.publish(
            "switchyard.inbound",
            &shard.to_string(),
            Message::new(format!("poison-{shard}"), "{not an envelope"),
        )
        .await
        .expect("publish poison");
    }
    agents(&cluster, 2, 5).await;
    load(&cluster, 20, 2, 8).await;
    verify_from_store(&cluster, 20, 2, 5).await;
    let mut dead = bus
        .consume("switchyard.dead", 100)
        .await
        .expect("consume dead letters");
    let mut ids = HashSet::new();
    for _ in 0..8 {
        let d = tokio::time::timeout(Duration::from_secs(10), dead.next())
            .await
            .expect("a dead letter within 10 s")
            .expect("stream open");
        assert!(
            d.message
                .headers
                .get("x-switchyard-death-reason")
                .is_some_and(|r| r.contains("undecodable envelope")),
            "reason header: {:?}",
            d.message.headers
        );
        assert!(
            d.message
                .headers
                .get("x-switchyard-original-queue")
                .is_some_and(|q| q.starts_with("switchyard.inbound."))
        );
        ids.insert(d.message.message_id.clone());
        d.ack().await.expect("ack");
    }
    assert_eq!(ids.len(), 8);
    cluster.teardown().await;
}

/// A Redis server of this test's own, on a free port, persisting every write (AOF, fsync
/// always) so a restart keeps the data, as a production Redis with persistence does.
struct OwnRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Option<OwnRedis> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("sy-redis-{port}-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).ok()?;
        let mut redis = OwnRedis {
            port,
            dir,
            child: None,
        };
        if let Err(e) = redis.spawn() {
            return absent("redis-server", &e);
        }
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
        for _ in 0..100 {
            if redis::Client::open(self.url().as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("redis-server did not answer within 5 s".into())
    }

    /// Stops the server (SIGTERM: it flushes its AOF) and waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = sigterm(&child);
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_mid_burst_loses_and_doubles_nothing() {
    let Some(mut redis) = OwnRedis::start() else {
        return;
    };
    let Some(cluster) = Cluster::start("redisrestart", 2, Some(redis.url())).await else {
        return;
    };
    agents(&cluster, 4, 5).await;
    let restarter = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        redis.stop();
        // Down for a while: ingress answers 503 (channels retry), routers wait and retry.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        redis.spawn().expect("restart redis");
    };
    tokio::join!(load(&cluster, 300, 5, 32), restarter);
    verify_from_store(&cluster, 300, 5, 5).await;
    cluster.teardown().await;
}
