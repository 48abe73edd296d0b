//! The web channel behind a load balancer: two gateways and a router, each an `App` of its own
//! in this test process, sharing a bus and a store exactly as separate processes do. Each
//! scenario runs twice: on one embedded bus and store, and on the real RabbitMQ (a vhost per
//! test) and Redis (a key prefix per test) with a connection of its own per app. A reply consumed
//! by either gateway reaches the visitor on the other, and a visitor who was away gets what
//! waited for them, once, on whichever gateway they come back to.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_core::bus::Bus;
use switchyard_core::bus::amqp::AmqpBus;
use switchyard_core::bus::embedded::EmbeddedBus;
use switchyard_core::conformance::services::{TestVhost, absent, redis_url};
use switchyard_core::metrics::Metrics;
use switchyard_core::store::Store;
use switchyard_core::store::embedded::EmbeddedStore;
use switchyard_core::store::redis::RedisStore;
use switchyard_router::{App, Role};

use crate::support::{Server, WEB_SECRET, Ws, eventually, rand_id, settings};

/// Two gateways and a router over one bus and one store.
struct Cluster {
    a: Server,
    b: Server,
    router: Server,
    /// A store client of the deployment, to look into mailboxes.
    store: Arc<dyn Store>,
    /// RabbitMQ and Redis: the vhost (deleted when dropped) and the Redis URL and key prefix.
    services: Option<(TestVhost, String, String)>,
}

/// Starts one app of the deployment.
async fn start_app(role: Role, bus: Arc<dyn Bus>, store: Arc<dyn Store>) -> Server {
    let settings = settings(&format!(
        "[[channels]]\nid = \"web\"\nkind = \"web\"\nsecret = \"{WEB_SECRET}\"\n"
    ));
    Server::of(
        App::start_with(settings, role, bus, store, Metrics::new().unwrap())
            .await
            .unwrap(),
    )
}

/// Waits until every reply in `mailbox` was written to a socket (and so removed).
async fn mailbox_drained(cluster: &Cluster, mailbox: &str) {
    eventually(|| async {
        cluster
            .store
            .mailbox_read(mailbox)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
}

impl Cluster {
    /// On one embedded bus and store.
    async fn embedded() -> Cluster {
        let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(Duration::from_secs(5)));
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
        let router = start_app(Role::Router, Arc::clone(&bus), Arc::clone(&store)).await;
        let a = start_app(Role::Gateway, Arc::clone(&bus), Arc::clone(&store)).await;
        let b = start_app(Role::Gateway, Arc::clone(&bus), Arc::clone(&store)).await;
        Cluster {
            a,
            b,
            router,
            store,
            services: None,
        }
    }

    /// On RabbitMQ and Redis, each app with connections of its own; `None` (after saying so)
    /// when either is absent.
    async fn amqp(label: &str) -> Option<Cluster> {
        let vhost = TestVhost::create(label)?;
        let redis = redis_url();
        let prefix = format!("sy-test-{label}-{}", rand_id());
        let connect = |name: &'static str| {
            let (url, redis, prefix) = (vhost.url.clone(), redis.clone(), prefix.clone());
            async move {
                let bus = AmqpBus::connect(&url, name, "", Duration::from_secs(5)).await;
                let store = RedisStore::connect(&redis, &prefix).await;
                (bus, store)
            }
        };
        let mut apps = Vec::new();
        let mut probe = None;
        for (name, role) in [
            ("web-router", Role::Router),
            ("web-gateway-a", Role::Gateway),
            ("web-gateway-b", Role::Gateway),
        ] {
            let (bus, store) = match connect(name).await {
                (Ok(bus), Ok(store)) => (bus, store),
                (Err(e), _) => return absent("RabbitMQ", &e.to_string()),
                (_, Err(e)) => return absent("Redis", &e.to_string()),
            };
            let store: Arc<dyn Store> = Arc::new(store);
            probe.get_or_insert_with(|| Arc::clone(&store));
            apps.push(start_app(role, Arc::new(bus), store).await);
        }
        let (b, a, router) = (apps.pop()?, apps.pop()?, apps.pop()?);
        Some(Cluster {
            a,
            b,
            router,
            store: probe?,
            services: Some((vhost, redis, prefix)),
        })
    }

    async fn stop(self) {
        let Cluster {
            a,
            b,
            router,
            store,
            services,
        } = self;
        a.stop().await;
        b.stop().await;
        router.stop().await;
        drop(store);
        if let Some((vhost, redis, prefix)) = services {
            delete_keys(&redis, &prefix);
            drop(vhost);
        }
    }
}

/// Deletes every Redis key under `prefix:`.
fn delete_keys(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut con)
        .unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut con);
    }
}

/// Runs `scenario` on the embedded cluster.
async fn on_embedded<F, Fut>(scenario: F)
where
    F: FnOnce(Cluster) -> Fut,
    Fut: Future<Output = Cluster>,
{
    let cluster = scenario(Cluster::embedded().await).await;
    cluster.stop().await;
}

/// Runs `scenario` on RabbitMQ and Redis (skipped when they are absent, failed under CI).
async fn on_amqp<F, Fut>(label: &str, scenario: F)
where
    F: FnOnce(Cluster) -> Fut,
    Fut: Future<Output = Cluster>,
{
    let Some(cluster) = Cluster::amqp(label).await else {
        return;
    };
    let cluster = scenario(cluster).await;
    cluster.stop().await;
}

/// Replies a gateway's outbound worker handed to the web channel.
fn sent(server: &Server) -> u64 {
    server
        .app
        .metrics
        .outbound
        .with_label_values(&["web", "sent"])
        .get()
}

/// Visitor sockets open on a gateway.
fn visitors(server: &Server) -> i64 {
    server
        .app
        .metrics
        .websocket_sessions
        .with_label_values(&["visitor"])
        .get()
}

fn visitor_url(server: &Server, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("ws://{}/v1/channels/web/ws?visitor_token={t}", server.addr),
        None => format!("ws://{}/v1/channels/web/ws", server.addr),
    }
}

/// A new visitor on `server` who wrote once and whose conversation is assigned to agent `w1`
/// (online through REST); returns the socket, visitor id, token and conversation id.
async fn visitor_in_conversation(
    cluster: &Cluster,
    server: &Server,
) -> (Ws, String, String, String) {
    cluster.b.agent_online("w1", 10).await;
    let mut ws = Ws::connect(&visitor_url(server, None)).await;
    let welcome = ws.recv_type("welcome").await;
    let visitor_id = welcome["visitor_id"].as_str().unwrap().to_owned();
    let token = welcome["visitor_token"].as_str().unwrap().to_owned();
    ws.send(json!({"type": "message", "client_id": "c-1",
                   "content": {"type": "text", "text": "hello from behind the balancer"}}))
        .await;
    let ack = ws.recv_type("ack").await;
    assert_eq!(ack["duplicate"], false);
    let customer_key = format!("web_visitor:web:{visitor_id}");
    let (customer_id, conversation_id) = eventually(|| async {
        let (_, list) = cluster.a.get_json("/v1/agents/w1/conversations").await;
        list["conversations"].as_array()?.iter().find_map(|c| {
            let customer = c["customer_id"].as_str()?;
            Some((customer.to_owned(), c["id"].as_str()?.to_owned()))
        })
    })
    .await;
    // The conversation is this visitor's.
    let (status, customer) = cluster
        .a
        .get_json(&format!("/v1/customers?identity={customer_key}"))
        .await;
    assert_eq!(status, 200, "{customer}");
    assert_eq!(customer["id"], customer_id.as_str());
    (ws, visitor_id, token, conversation_id)
}

/// Sends an agent reply through `server`'s REST API.
async fn reply(server: &Server, conversation_id: &str, text: &str) -> String {
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{conversation_id}/messages"),
            json!({"agent_id": "w1", "content": {"type": "text", "text": text}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// The next frame is the answer to a ping: nothing else (no second copy of a reply) is queued.
async fn nothing_more(ws: &mut Ws) {
    ws.send(json!({"type": "ping"})).await;
    let next: Value = ws.recv().await;
    assert_eq!(next["type"], "pong", "unexpected frame {next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_consumed_by_any_gateway_reaches_the_visitor_on_every_gateway() {
    on_embedded(reply_reaches_every_gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_a_reply_consumed_by_any_gateway_reaches_the_visitor_on_every_gateway() {
    on_amqp("web-every-gateway", reply_reaches_every_gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_away_visitor_gets_waiting_replies_once_on_another_gateway() {
    on_embedded(away_visitor_comes_back_elsewhere).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_an_away_visitor_gets_waiting_replies_once_on_another_gateway() {
    on_amqp("web-away", away_visitor_comes_back_elsewhere).await;
}

/// A visitor with a tab on each gateway: every reply reaches both tabs once, in order, whichever
/// gateway consumed it.
async fn reply_reaches_every_gateway(cluster: Cluster) -> Cluster {
    let (mut on_a, visitor_id, token, conversation_id) =
        visitor_in_conversation(&cluster, &cluster.a).await;
    // The same visitor in a second tab, through the other gateway.
    let mut on_b = Ws::connect(&visitor_url(&cluster.b, Some(&token))).await;
    let welcome = on_b.recv_type("welcome").await;
    assert_eq!(welcome["visitor_id"], visitor_id.as_str());

    // The outbound queue is shared by both gateways: reply until gateway B has consumed at least
    // one; every reply must reach both tabs, once, in order, whichever gateway took it.
    let mut n = 0;
    while sent(&cluster.b) == 0 || sent(&cluster.a) == 0 {
        assert!(n < 40, "the two gateways never both consumed a reply");
        let text = format!("reply {n}");
        let through = if n % 2 == 0 { &cluster.a } else { &cluster.b };
        let id = reply(through, &conversation_id, &text).await;
        for ws in [&mut on_a, &mut on_b] {
            let got = ws.recv_type("message").await;
            assert_eq!(got["id"], id.as_str());
            assert_eq!(got["content"]["text"], text.as_str());
            assert_eq!(got["agent_id"], "w1");
        }
        n += 1;
        // The reply has been consumed (and counted) by now.
        eventually(|| async { (sent(&cluster.a) + sent(&cluster.b) == n).then_some(()) }).await;
    }
    nothing_more(&mut on_a).await;
    nothing_more(&mut on_b).await;
    // Written replies leave the shared mailbox.
    let mailbox = format!("web:web:{visitor_id}");
    mailbox_drained(&cluster, &mailbox).await;
    on_a.close().await;
    on_b.close().await;
    cluster
}

/// Replies to a visitor who is away wait in the store; the visitor gets them, once, in order, on
/// the other gateway, and nothing again on the next visit.
async fn away_visitor_comes_back_elsewhere(cluster: Cluster) -> Cluster {
    let (on_a, visitor_id, token, conversation_id) =
        visitor_in_conversation(&cluster, &cluster.a).await;
    on_a.close().await;
    eventually(|| async { (visitors(&cluster.a) == 0).then_some(()) }).await;

    // Replies while the visitor is away, each consumed by either gateway.
    let first = reply(&cluster.a, &conversation_id, "while you were away (1)").await;
    // Two gateways consume concurrently: let the first be kept before the second is sent.
    eventually(|| async { (sent(&cluster.a) + sent(&cluster.b) == 1).then_some(()) }).await;
    let second = reply(&cluster.b, &conversation_id, "while you were away (2)").await;
    eventually(|| async { (sent(&cluster.a) + sent(&cluster.b) == 2).then_some(()) }).await;
    let mailbox = format!("web:web:{visitor_id}");
    let kept: Vec<String> = cluster
        .store
        .mailbox_read(&mailbox)
        .await
        .unwrap()
        .into_iter()
        .map(|item| item.id)
        .collect();
    assert_eq!(kept, [first.clone(), second.clone()]);

    // Back through the other gateway, with the token: the waiting replies, in order, once.
    let mut on_b = Ws::connect(&visitor_url(&cluster.b, Some(&token))).await;
    let welcome = on_b.recv().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["visitor_id"], visitor_id.as_str());
    let got1 = on_b.recv().await;
    let got2 = on_b.recv().await;
    assert_eq!(
        (got1["type"].as_str(), got1["id"].as_str()),
        (Some("message"), Some(first.as_str()))
    );
    assert_eq!(got1["content"]["text"], "while you were away (1)");
    assert_eq!(
        (got2["type"].as_str(), got2["id"].as_str()),
        (Some("message"), Some(second.as_str()))
    );
    nothing_more(&mut on_b).await;
    mailbox_drained(&cluster, &mailbox).await;

    // Delivered means gone: coming back once more (to the first gateway) replays nothing.
    on_b.close().await;
    eventually(|| async { (visitors(&cluster.b) == 0).then_some(()) }).await;
    let mut again = Ws::connect(&visitor_url(&cluster.a, Some(&token))).await;
    let welcome = again.recv().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["visitor_id"], visitor_id.as_str());
    nothing_more(&mut again).await;
    // And live replies still arrive there.
    let third = reply(&cluster.b, &conversation_id, "welcome back").await;
    let got3 = again.recv_type("message").await;
    assert_eq!(got3["id"], third.as_str());
    nothing_more(&mut again).await;
    again.close().await;
    cluster
}
