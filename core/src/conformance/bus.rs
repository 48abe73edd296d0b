//! The [`Bus`] conformance suite: routing, confirms, ordering, redelivery, dead-lettering,
//! prefetch, back-pressure and shutdown, as promised by `crate::bus` and DESIGN.md.
//!
//! Every case declares the standard topology ([`Topology::standard`]) with every exchange and
//! queue name prefixed by the case's prefix (see [`prefixed_topology`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep, timeout};

use super::MakeBus;
use crate::bus::topology::{
    BOTS_EXCHANGE, DEAD_LETTER_QUEUE, EVENTS_EXCHANGE, INBOUND_EXCHANGE, OUTBOUND_EXCHANGE,
    TopologyOptions, WebhookRoute, bot_event_key, inbound_queue, outbound_queue, shard_of,
};
use crate::bus::{
    Bus, BusError, Deliveries, Delivery, HEADER_DEATH_REASON, HEADER_ORIGINAL_QUEUE, Message,
    QueueReader, Topology,
};
use crate::envelope::shard_key;

/// How long a case waits for something that must happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a case waits to be confident that something does not happen.
pub const QUIET: Duration = Duration::from_millis(150);
/// A publish timeout suitable for a bus under test: short enough for [`back_pressure`].
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_millis(400);

/// Shards of the test topology.
pub const SHARDS: u16 = 4;
/// Delivery limit of the test topology's work queues.
pub const DELIVERY_LIMIT: u32 = 3;
/// The channel kind that gets an outbound queue in the test topology.
pub const OUTBOUND_KIND: &str = "api";

/// Prefixed names of the standard topology.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
        }
    }
    /// `prefix` + `name`.
    pub fn p(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
    /// The inbound exchange.
    pub fn inbound_exchange(&self) -> String {
        self.p(INBOUND_EXCHANGE)
    }
    /// Inbound shard queue `shard`.
    pub fn inbound_queue(&self, shard: u16) -> String {
        self.p(&inbound_queue(shard))
    }
    /// The outbound exchange.
    pub fn outbound_exchange(&self) -> String {
        self.p(OUTBOUND_EXCHANGE)
    }
    /// The outbound queue of `kind`.
    pub fn outbound_queue(&self, kind: &str) -> String {
        self.p(&outbound_queue(kind))
    }
    /// The event exchange.
    pub fn events_exchange(&self) -> String {
        self.p(EVENTS_EXCHANGE)
    }
    /// The dead-letter queue (`switchyard.dead`).
    pub fn dead_queue(&self) -> String {
        self.p(DEAD_LETTER_QUEUE)
    }
}

/// Options of the test topology, with `queue_capacity` per work queue.
pub fn options(queue_capacity: usize) -> TopologyOptions {
    TopologyOptions {
        shards: SHARDS,
        queue_capacity,
        delivery_limit: DELIVERY_LIMIT,
        outbound_kinds: vec![OUTBOUND_KIND.to_owned()],
        publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
        events_stream_max_age: None,
        webhooks: Vec::new(),
    }
}

/// [`Topology::standard`] with every exchange, queue, binding and dead-letter exchange name
/// prefixed by `prefix`.
pub fn prefixed_topology(prefix: &str, opts: &TopologyOptions) -> Topology {
    let p = |name: &str| format!("{prefix}{name}");
    let mut topology = Topology::standard(opts);
    for ex in &mut topology.exchanges {
        ex.name = p(&ex.name);
    }
    for q in &mut topology.queues {
        q.name = p(&q.name);
        q.dead_letter_exchange = q.dead_letter_exchange.as_deref().map(p);
        for (exchange, _) in q.bindings.iter_mut().chain(q.stale_bindings.iter_mut()) {
            *exchange = p(exchange);
        }
    }
    topology
}

async fn setup(factory: &impl MakeBus, prefix: &str, queue_capacity: usize) -> Arc<dyn Bus> {
    let bus = factory.make().await;
    bus.declare(&prefixed_topology(prefix, &options(queue_capacity)))
        .await
        .unwrap_or_else(|e| panic!("declaring the standard topology under `{prefix}`: {e}"));
    // Declaring is idempotent.
    bus.declare(&prefixed_topology(prefix, &options(queue_capacity)))
        .await
        .unwrap_or_else(|e| panic!("declaring the standard topology a second time: {e}"));
    bus
}

fn msg(id: &str) -> Message {
    Message::new(id, format!("{{\"id\":\"{id}\"}}"))
}

async fn publish(bus: &Arc<dyn Bus>, exchange: &str, key: &str, m: Message) {
    let id = m.message_id.clone();
    bus.publish(exchange, key, m)
        .await
        .unwrap_or_else(|e| panic!("publishing `{id}` to `{exchange}`/`{key}`: {e}"));
}

async fn consume(bus: &Arc<dyn Bus>, queue: &str, prefetch: u16) -> Box<dyn Deliveries> {
    bus.consume(queue, prefetch)
        .await
        .unwrap_or_else(|e| panic!("consuming `{queue}`: {e}"))
}

/// The next delivery, which must come within [`WAIT`].
async fn next(d: &mut Box<dyn Deliveries>, what: &str) -> Delivery {
    match timeout(WAIT, d.next()).await {
        Ok(Some(delivery)) => delivery,
        Ok(None) => panic!("{what}: the delivery stream ended"),
        Err(_) => panic!("{what}: nothing was delivered within {WAIT:?}"),
    }
}

/// The next delivery must be message `id`.
async fn expect_id(d: &mut Box<dyn Deliveries>, id: &str, what: &str) -> Delivery {
    let delivery = next(d, what).await;
    assert_eq!(
        delivery.message.message_id, id,
        "{what}: expected message `{id}`, got `{}`",
        delivery.message.message_id
    );
    delivery
}

/// Nothing may be delivered within [`QUIET`].
async fn expect_nothing(d: &mut Box<dyn Deliveries>, what: &str) {
    match timeout(QUIET, d.next()).await {
        Err(_) => {}
        Ok(Some(delivery)) => panic!(
            "{what}: expected no delivery, got `{}` (routing key `{}`)",
            delivery.message.message_id, delivery.routing_key
        ),
        Ok(None) => panic!("{what}: the delivery stream ended unexpectedly"),
    }
}

async fn ack(d: Delivery, what: &str) {
    d.ack()
        .await
        .unwrap_or_else(|e| panic!("{what}: ack failed: {e}"));
}

/// A message published with headers arrives with the same id, body, headers and routing key,
/// exactly once; `is_ready` holds on a live bus.
pub async fn publish_consume_roundtrip(factory: &impl MakeBus, prefix: &str) {
    let what = "publish_consume_roundtrip";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    assert!(
        bus.is_ready(),
        "{what}: a freshly declared bus is not ready"
    );
    let mut m = Message::new("rt-1", &b"{\"hello\":\"\xe4\xbd\xa0\xe5\xa5\xbd\"}"[..]);
    m.headers
        .insert("x-switchyard-tenant".to_owned(), "default".to_owned());
    m.headers
        .insert("x-switchyard-trace".to_owned(), "abc 123".to_owned());
    publish(&bus, &n.outbound_exchange(), OUTBOUND_KIND, m.clone()).await;
    let mut out = consume(&bus, &n.outbound_queue(OUTBOUND_KIND), 1).await;
    let d = expect_id(&mut out, "rt-1", what).await;
    assert_eq!(d.message.body, m.body, "{what}: body changed in transit");
    for (k, v) in &m.headers {
        assert_eq!(
            d.message.headers.get(k),
            Some(v),
            "{what}: header `{k}` lost or changed (got headers {:?})",
            d.message.headers
        );
    }
    assert!(
        !d.message.headers.contains_key(HEADER_DEATH_REASON),
        "{what}: a live message carries a death reason"
    );
    assert_eq!(d.routing_key, OUTBOUND_KIND, "{what}: routing key changed");
    assert_eq!(
        d.redeliveries, 0,
        "{what}: first delivery counted as a redelivery"
    );
    ack(d, what).await;
    expect_nothing(&mut out, &format!("{what}: after ack")).await;

    // The same through an inbound shard.
    publish(&bus, &n.inbound_exchange(), "2", msg("rt-2")).await;
    let mut shard = consume(&bus, &n.inbound_queue(2), 1).await;
    let d = expect_id(&mut shard, "rt-2", what).await;
    assert_eq!(d.routing_key, "2", "{what}: inbound routing key changed");
    ack(d, what).await;
    expect_nothing(&mut shard, &format!("{what}: inbound after ack")).await;
}

/// A publish nobody is bound for fails with [`BusError::Unroutable`] and is stored nowhere; a
/// publish to an undeclared exchange fails.
pub async fn unroutable_publish_is_refused(factory: &impl MakeBus, prefix: &str) {
    let what = "unroutable_publish_is_refused";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    match bus
        .publish(&n.outbound_exchange(), "no-such-kind", msg("lost-1"))
        .await
    {
        Err(BusError::Unroutable { .. }) => {}
        other => panic!("{what}: direct publish without binding gave {other:?}, not Unroutable"),
    }
    match bus
        .publish(&n.inbound_exchange(), &SHARDS.to_string(), msg("lost-2"))
        .await
    {
        Err(BusError::Unroutable { .. }) => {}
        other => panic!("{what}: publish to shard {SHARDS} (out of range) gave {other:?}"),
    }
    // The standard topology binds nothing to the event exchange.
    match bus
        .publish(&n.events_exchange(), "message.received", msg("lost-3"))
        .await
    {
        Err(BusError::Unroutable { .. }) => {}
        other => panic!("{what}: topic publish without binding gave {other:?}, not Unroutable"),
    }
    let missing = n.p("switchyard.no-such-exchange");
    assert!(
        bus.publish(&missing, "x", msg("lost-4")).await.is_err(),
        "{what}: publish to an undeclared exchange succeeded"
    );
    // Nothing was stored: every queue is empty, and the bus still works.
    for queue in (0..SHARDS)
        .map(|s| n.inbound_queue(s))
        .chain([n.outbound_queue(OUTBOUND_KIND), n.dead_queue()])
    {
        let mut d = consume(&bus, &queue, 10).await;
        expect_nothing(&mut d, &format!("{what}: queue `{queue}`")).await;
    }
    publish(&bus, &n.outbound_exchange(), OUTBOUND_KIND, msg("ok-1")).await;
    let mut out = consume(&bus, &n.outbound_queue(OUTBOUND_KIND), 1).await;
    let d = expect_id(&mut out, "ok-1", what).await;
    ack(d, what).await;
}

/// Direct exchanges route by exact key; topic exchanges fan out to every subscriber queue whose
/// pattern matches (`*` one word, `#` any), each getting its own copy.
pub async fn direct_and_topic_routing(factory: &impl MakeBus, prefix: &str) {
    let what = "direct_and_topic_routing";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    for shard in 0..SHARDS {
        publish(
            &bus,
            &n.inbound_exchange(),
            &shard.to_string(),
            msg(&format!("s{shard}")),
        )
        .await;
    }
    for shard in 0..SHARDS {
        let mut d = consume(&bus, &n.inbound_queue(shard), 4).await;
        let got = expect_id(
            &mut d,
            &format!("s{shard}"),
            &format!("{what}: shard {shard}"),
        )
        .await;
        ack(got, what).await;
        expect_nothing(
            &mut d,
            &format!("{what}: shard {shard} got a foreign message"),
        )
        .await;
    }

    let events = n.events_exchange();
    let conv = bus
        .declare_subscriber(&events, &["conversation.*"])
        .await
        .unwrap_or_else(|e| panic!("{what}: declare_subscriber conversation.*: {e}"));
    let all = bus
        .declare_subscriber(&events, &["#"])
        .await
        .unwrap_or_else(|e| panic!("{what}: declare_subscriber #: {e}"));
    let received = bus
        .declare_subscriber(&events, &["message.received"])
        .await
        .unwrap_or_else(|e| panic!("{what}: declare_subscriber message.received: {e}"));
    let pair = bus
        .declare_subscriber(&events, &["message.received", "conversation.assigned"])
        .await
        .unwrap_or_else(|e| panic!("{what}: declare_subscriber with two patterns: {e}"));
    assert!(
        conv != all && all != received && conv != received && pair != all,
        "{what}: subscriber queues share a name: {conv}, {all}, {received}, {pair}"
    );
    assert!(
        bus.declare_subscriber(&n.p("switchyard.no-such-exchange"), &["#"])
            .await
            .is_err(),
        "{what}: subscribing to an undeclared exchange succeeded"
    );
    let mut conv_d = consume(&bus, &conv, 10).await;
    let mut all_d = consume(&bus, &all, 10).await;
    let mut received_d = consume(&bus, &received, 10).await;
    let mut pair_d = consume(&bus, &pair, 10).await;

    publish(&bus, &events, "conversation.assigned", msg("e1")).await;
    publish(&bus, &events, "message.received", msg("e2")).await;
    publish(&bus, &events, "conversation.queue.changed", msg("e3")).await;

    let d = expect_id(&mut conv_d, "e1", &format!("{what}: conversation.*")).await;
    assert_eq!(
        d.routing_key, "conversation.assigned",
        "{what}: topic routing key changed"
    );
    ack(d, what).await;
    expect_nothing(&mut conv_d, &format!("{what}: conversation.* matched more")).await;

    for id in ["e1", "e2", "e3"] {
        let d = expect_id(&mut all_d, id, &format!("{what}: # subscriber")).await;
        ack(d, what).await;
    }
    expect_nothing(&mut all_d, &format!("{what}: # got extra")).await;

    let d = expect_id(&mut received_d, "e2", &format!("{what}: message.received")).await;
    ack(d, what).await;
    expect_nothing(
        &mut received_d,
        &format!("{what}: message.received got extra"),
    )
    .await;
    for id in ["e1", "e2"] {
        let d = expect_id(&mut pair_d, id, &format!("{what}: two-pattern subscriber")).await;
        ack(d, what).await;
    }
    expect_nothing(
        &mut pair_d,
        &format!("{what}: two-pattern subscriber got extra"),
    )
    .await;

    // A batch of events: published in order, one that nobody subscribed to is no error.
    let batch = vec![
        ("conversation.created".to_owned(), msg("b1")),
        ("nobody.listens".to_owned(), msg("b2")),
        ("conversation.assigned".to_owned(), msg("b3")),
        ("message.received".to_owned(), msg("b4")),
    ];
    bus.publish_events(&events, batch)
        .await
        .unwrap_or_else(|e| panic!("{what}: publish_events: {e}"));
    for id in ["b1", "b3"] {
        let d = expect_id(&mut conv_d, id, &format!("{what}: batch on conversation.*")).await;
        ack(d, what).await;
    }
    expect_nothing(
        &mut conv_d,
        &format!("{what}: batch: conversation.* got extra"),
    )
    .await;
    for id in ["b1", "b2", "b3", "b4"] {
        let d = expect_id(&mut all_d, id, &format!("{what}: batch in order on #")).await;
        ack(d, what).await;
    }
    for id in ["b3", "b4"] {
        let d = expect_id(&mut pair_d, id, &format!("{what}: batch on two patterns")).await;
        ack(d, what).await;
    }
}

/// Messages of one shard key keep their order on its shard queue, also when one is retried:
/// the retried message comes back before every later one, with its redelivery counted; several
/// retried in delivery order come back in that order.
pub async fn per_key_order_with_retry(factory: &impl MakeBus, prefix: &str) {
    let what = "per_key_order_with_retry";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    let key = shard_key("web", "visitor-42");
    let shard = shard_of(&key, SHARDS);
    let ids: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    for id in &ids {
        publish(&bus, &n.inbound_exchange(), &shard.to_string(), msg(id)).await;
    }
    let mut d = consume(&bus, &n.inbound_queue(shard), 1).await;
    let first = expect_id(&mut d, "k0", what).await;
    ack(first, what).await;
    // k1 fails twice, then succeeds; nothing overtakes it.
    for attempt in 0..3u32 {
        let got = expect_id(&mut d, "k1", &format!("{what}: attempt {attempt} of k1")).await;
        assert_eq!(
            got.redeliveries, attempt,
            "{what}: k1 attempt {attempt} reports {} earlier deliveries",
            got.redeliveries
        );
        if attempt < 2 {
            got.retry("transient failure")
                .await
                .unwrap_or_else(|e| panic!("{what}: retry failed: {e}"));
        } else {
            ack(got, what).await;
        }
    }
    for id in &ids[2..] {
        let got = expect_id(&mut d, id, what).await;
        assert_eq!(got.redeliveries, 0, "{what}: `{id}` was never retried");
        ack(got, what).await;
    }
    expect_nothing(&mut d, &format!("{what}: after the last message")).await;
    drop(d);

    // Several unsettled at once (prefetch 3): messages retried in delivery order come back in
    // that order, before every later message.
    let ids: Vec<String> = (0..5).map(|i| format!("q{i}")).collect();
    for id in &ids {
        publish(&bus, &n.inbound_exchange(), &shard.to_string(), msg(id)).await;
    }
    let mut d = consume(&bus, &n.inbound_queue(shard), 3).await;
    let q0 = expect_id(&mut d, "q0", what).await;
    let q1 = expect_id(&mut d, "q1", what).await;
    let q2 = expect_id(&mut d, "q2", what).await;
    for retried in [q0, q1] {
        retried
            .retry("transient failure")
            .await
            .unwrap_or_else(|e| panic!("{what}: retry failed: {e}"));
    }
    ack(q2, what).await;
    for id in ["q0", "q1", "q3", "q4"] {
        let got = expect_id(
            &mut d,
            id,
            &format!("{what}: after retrying q0 and q1 with prefetch 3"),
        )
        .await;
        ack(got, what).await;
    }
    expect_nothing(&mut d, &format!("{what}: after the last message")).await;
}

fn assert_dead_lettered(d: &Delivery, id: &str, queue: &str, reason: &str, what: &str) {
    assert_eq!(
        d.message.message_id, id,
        "{what}: wrong message dead-lettered"
    );
    assert_eq!(
        d.message.body,
        msg(id).body,
        "{what}: dead-lettered body changed"
    );
    let got_reason = d.message.headers.get(HEADER_DEATH_REASON);
    assert!(
        got_reason.is_some_and(|r| r.contains(reason)),
        "{what}: header `{HEADER_DEATH_REASON}` should mention `{reason}`, got {got_reason:?}"
    );
    assert_eq!(
        d.message
            .headers
            .get(HEADER_ORIGINAL_QUEUE)
            .map(String::as_str),
        Some(queue),
        "{what}: header `{HEADER_ORIGINAL_QUEUE}` should name the work queue"
    );
}

/// A message retried past the queue's delivery limit goes to `switchyard.dead` with the reason
/// and the original queue in its headers, and stops blocking its shard.
pub async fn delivery_limit_dead_letters(factory: &impl MakeBus, prefix: &str) {
    let what = "delivery_limit_dead_letters";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    let queue = n.inbound_queue(1);
    publish(&bus, &n.inbound_exchange(), "1", msg("poison")).await;
    publish(&bus, &n.inbound_exchange(), "1", msg("healthy")).await;
    let mut d = consume(&bus, &queue, 1).await;
    for attempt in 0..=DELIVERY_LIMIT {
        let got = expect_id(&mut d, "poison", &format!("{what}: attempt {attempt}")).await;
        assert_eq!(got.redeliveries, attempt, "{what}: redelivery count");
        got.retry("handler exploded")
            .await
            .unwrap_or_else(|e| panic!("{what}: retry failed: {e}"));
    }
    // Delivery limit reached: the shard moves on.
    let got = expect_id(
        &mut d,
        "healthy",
        &format!("{what}: after the poison message"),
    )
    .await;
    ack(got, what).await;
    expect_nothing(&mut d, &format!("{what}: work queue after dead-lettering")).await;
    let mut dead = consume(&bus, &n.dead_queue(), 10).await;
    let got = next(&mut dead, &format!("{what}: dead-letter queue")).await;
    assert_dead_lettered(&got, "poison", &queue, "handler exploded", what);
    ack(got, what).await;
    expect_nothing(&mut dead, &format!("{what}: dead-letter queue has extra")).await;
}

/// `reject` dead-letters at once, whatever the delivery limit.
pub async fn reject_dead_letters_at_once(factory: &impl MakeBus, prefix: &str) {
    let what = "reject_dead_letters_at_once";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    let queue = n.outbound_queue(OUTBOUND_KIND);
    publish(&bus, &n.outbound_exchange(), OUTBOUND_KIND, msg("bad")).await;
    let mut d = consume(&bus, &queue, 1).await;
    let got = expect_id(&mut d, "bad", what).await;
    got.reject("malformed envelope")
        .await
        .unwrap_or_else(|e| panic!("{what}: reject failed: {e}"));
    expect_nothing(&mut d, &format!("{what}: a rejected message came back")).await;
    let mut dead = consume(&bus, &n.dead_queue(), 10).await;
    let got = next(&mut dead, &format!("{what}: dead-letter queue")).await;
    assert_dead_lettered(&got, "bad", &queue, "malformed envelope", what);
    ack(got, what).await;
}

/// The next message a reader yields, which must be `id`.
async fn read_id(reader: &mut Box<dyn QueueReader>, id: &str, what: &str) -> Delivery {
    match timeout(WAIT, reader.next()).await {
        Ok(Ok(Some(d))) => {
            assert_eq!(d.message.message_id, id, "{what}: read the wrong message");
            d
        }
        Ok(Ok(None)) => panic!("{what}: the reader found nothing, expected `{id}`"),
        Ok(Err(e)) => panic!("{what}: reading failed: {e}"),
        Err(_) => panic!("{what}: reading did not answer within {WAIT:?}"),
    }
}

/// The reader must find nothing ready.
async fn read_nothing(reader: &mut Box<dyn QueueReader>, what: &str) {
    match timeout(WAIT, reader.next()).await {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(d))) => panic!("{what}: expected nothing, read `{}`", d.message.message_id),
        Ok(Err(e)) => panic!("{what}: reading failed: {e}"),
        Err(_) => panic!("{what}: reading did not answer within {WAIT:?}"),
    }
}

/// Waits until `queue` holds `n` messages ready ([`Bus::ready_messages`]; a broker may count a
/// moment late).
async fn expect_ready(bus: &Arc<dyn Bus>, queue: &str, n: u64, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = bus
            .ready_messages(queue)
            .await
            .unwrap_or_else(|e| panic!("{what}: counting `{queue}`: {e}"));
        if ready == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: `{queue}` holds {ready} ready, expected {n}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// [`Bus::browse`] takes a queue's messages one at a time, in order, with their headers, and
/// finds nothing once none is ready; [`Bus::ready_messages`] counts what is ready; what one
/// reader holds no other reader sees, a dropped delivery goes back and an acked one is gone.
/// [`Bus::publish_to_queue`] puts a message into exactly the queue it names (how a dead letter
/// goes back where it came from), and all three refuse a queue that does not exist.
pub async fn browse_and_publish_to_queue(factory: &impl MakeBus, prefix: &str) {
    let what = "browse_and_publish_to_queue";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    let shard = n.inbound_queue(1);
    publish(&bus, &n.inbound_exchange(), "1", msg("first")).await;
    publish(&bus, &n.inbound_exchange(), "1", msg("second")).await;
    let mut work = consume(&bus, &shard, 10).await;
    for (id, reason) in [("first", "cannot route"), ("second", "bad envelope")] {
        let d = expect_id(&mut work, id, what).await;
        d.reject(reason)
            .await
            .unwrap_or_else(|e| panic!("{what}: reject failed: {e}"));
    }

    expect_ready(&bus, &n.dead_queue(), 2, what).await;
    let mut reader = bus
        .browse(&n.dead_queue())
        .await
        .unwrap_or_else(|e| panic!("{what}: browsing the dead letters: {e}"));
    let first = read_id(&mut reader, "first", what).await;
    assert_dead_lettered(&first, "first", &shard, "cannot route", what);
    let second = read_id(&mut reader, "second", what).await;
    assert_dead_lettered(&second, "second", &shard, "bad envelope", what);
    read_nothing(&mut reader, &format!("{what}: after the last")).await;
    expect_ready(&bus, &n.dead_queue(), 0, &format!("{what}: both held")).await;
    let mut other = bus
        .browse(&n.dead_queue())
        .await
        .unwrap_or_else(|e| panic!("{what}: a second reader: {e}"));
    read_nothing(
        &mut other,
        &format!("{what}: a second reader saw held messages"),
    )
    .await;

    // `first` goes back to its shard, and only there; `second` is put back.
    bus.publish_to_queue(&shard, first.message.clone())
        .await
        .unwrap_or_else(|e| panic!("{what}: publishing to `{shard}`: {e}"));
    ack(first, what).await;
    drop(second);
    let back = expect_id(&mut work, "first", &format!("{what}: the replayed message")).await;
    assert_eq!(back.message.body, msg("first").body, "{what}: body changed");
    ack(back, what).await;
    expect_nothing(&mut work, &format!("{what}: the shard after the replay")).await;
    for other_shard in [0, 2, 3] {
        let mut d = consume(&bus, &n.inbound_queue(other_shard), 10).await;
        expect_nothing(&mut d, &format!("{what}: shard {other_shard}")).await;
    }
    // A dropped delivery comes back (on RabbitMQ, once its nack has arrived).
    let deadline = Instant::now() + WAIT;
    let second = loop {
        if let Ok(Ok(Some(d))) = timeout(WAIT, other.next()).await {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the dropped delivery did not go back to the dead letters"
        );
        sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(second.message.message_id, "second", "{what}: put back");
    ack(second, what).await;
    read_nothing(&mut other, &format!("{what}: after acking both")).await;
    drop((reader, other));

    let missing = n.p("no-such-queue");
    match bus.publish_to_queue(&missing, msg("lost")).await {
        Err(BusError::NotDeclared { .. }) => {}
        other => panic!("{what}: publishing to a missing queue gave {other:?}"),
    }
    match bus.ready_messages(&missing).await {
        Err(BusError::NotDeclared { .. }) => {}
        other => panic!("{what}: counting a missing queue gave {other:?}"),
    }
    match bus.browse(&missing).await {
        Err(BusError::NotDeclared { .. }) => {}
        Err(e) => panic!("{what}: browsing a missing queue gave {e}"),
        Ok(_) => panic!("{what}: browsing a missing queue succeeded"),
    }
}

/// A delivery dropped without ack/retry/reject (its handler died) is delivered again, before
/// later messages; also when the consumer stream is dropped first.
pub async fn dropped_delivery_is_redelivered(factory: &impl MakeBus, prefix: &str) {
    let what = "dropped_delivery_is_redelivered";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    let queue = n.inbound_queue(0);
    for id in ["a", "b", "c"] {
        publish(&bus, &n.inbound_exchange(), "0", msg(id)).await;
    }
    let mut d = consume(&bus, &queue, 1).await;
    let got = expect_id(&mut d, "a", what).await;
    drop(got);
    let got = expect_id(&mut d, "a", &format!("{what}: after dropping `a`")).await;
    ack(got, what).await;
    let got = expect_id(&mut d, "b", what).await;
    // The consumer goes away with `b` unsettled.
    drop(d);
    drop(got);
    let mut d = consume(&bus, &queue, 1).await;
    let got = expect_id(
        &mut d,
        "b",
        &format!("{what}: new consumer after dropping `b`"),
    )
    .await;
    ack(got, what).await;
    let got = expect_id(&mut d, "c", what).await;
    ack(got, what).await;
    expect_nothing(&mut d, &format!("{what}: after the last message")).await;
}

/// With prefetch 2, a third `next()` waits until one of the two unsettled deliveries is
/// settled; a `next()` abandoned while waiting loses nothing.
pub async fn prefetch_bounds_unsettled(factory: &impl MakeBus, prefix: &str) {
    let what = "prefetch_bounds_unsettled";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    for id in ["p0", "p1", "p2", "p3"] {
        publish(&bus, &n.outbound_exchange(), OUTBOUND_KIND, msg(id)).await;
    }
    let mut d = consume(&bus, &n.outbound_queue(OUTBOUND_KIND), 2).await;
    let first = expect_id(&mut d, "p0", what).await;
    let second = expect_id(&mut d, "p1", what).await;
    if let Ok(got) = timeout(QUIET, d.next()).await {
        panic!(
            "{what}: a third delivery ({:?}) arrived with 2 unsettled and prefetch 2",
            got.map(|g| g.message.message_id)
        );
    }
    ack(first, what).await;
    let third = expect_id(&mut d, "p2", &format!("{what}: after acking one")).await;
    if let Ok(got) = timeout(QUIET, d.next()).await {
        panic!(
            "{what}: a delivery ({:?}) arrived with 2 unsettled again",
            got.map(|g| g.message.message_id)
        );
    }
    second
        .retry("later")
        .await
        .unwrap_or_else(|e| panic!("{what}: retry failed: {e}"));
    let again = expect_id(&mut d, "p1", &format!("{what}: after retrying p1")).await;
    ack(third, what).await;
    ack(again, what).await;
    let last = expect_id(&mut d, "p3", what).await;
    ack(last, what).await;
    expect_nothing(&mut d, &format!("{what}: after the last message")).await;
}

/// Deliveries settled out of order, some acked, some requeued, one dropped: once everything is
/// settled, exactly the requeued and dropped ones come again, and after a new consumer starts,
/// nothing else does (every ack reached the broker, none settled a delivery it should not have).
pub async fn out_of_order_settlements_settle_exactly_those(factory: &impl MakeBus, prefix: &str) {
    let what = "out_of_order_settlements_settle_exactly_those";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    let queue = n.outbound_queue(OUTBOUND_KIND);
    let ids: Vec<String> = (0..8).map(|i| format!("o{i}")).collect();
    for id in &ids {
        publish(&bus, &n.outbound_exchange(), OUTBOUND_KIND, msg(id)).await;
    }
    let mut d = consume(&bus, &queue, 8).await;
    let mut got = Vec::new();
    for id in &ids {
        got.push(Some(expect_id(&mut d, id, what).await));
    }
    let mut take = |i: usize| {
        got[i]
            .take()
            .unwrap_or_else(|| panic!("{what}: o{i} taken twice"))
    };
    // Later ones first, while o0–o4 are unsettled.
    for i in [7, 6, 5] {
        ack(take(i), what).await;
    }
    for i in [0, 1] {
        ack(take(i), what).await;
    }
    take(3)
        .retry("later")
        .await
        .unwrap_or_else(|e| panic!("{what}: retry failed: {e}"));
    drop(take(2));
    ack(take(4), what).await;
    let mut again = Vec::new();
    for _ in 0..2 {
        let delivery = next(&mut d, &format!("{what}: the requeued and the dropped")).await;
        again.push(delivery.message.message_id.clone());
        ack(delivery, what).await;
    }
    again.sort();
    assert_eq!(
        again,
        ["o2", "o3"],
        "{what}: only the requeued o3 and the dropped o2 come again"
    );
    expect_nothing(&mut d, &format!("{what}: after settling everything")).await;
    drop(d);
    let mut d = consume(&bus, &queue, 8).await;
    expect_nothing(
        &mut d,
        &format!("{what}: a new consumer after settling everything"),
    )
    .await;
}

/// Acks behind a delivery that is not settled yet free the prefetch: with prefetch 4, the first
/// delivery unsettled and the next two acked, more deliveries come.
pub async fn acks_behind_an_unsettled_delivery_free_the_prefetch(
    factory: &impl MakeBus,
    prefix: &str,
) {
    let what = "acks_behind_an_unsettled_delivery_free_the_prefetch";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    let ids: Vec<String> = (0..6).map(|i| format!("h{i}")).collect();
    for id in &ids {
        publish(&bus, &n.outbound_exchange(), OUTBOUND_KIND, msg(id)).await;
    }
    let mut d = consume(&bus, &n.outbound_queue(OUTBOUND_KIND), 4).await;
    let slow = expect_id(&mut d, "h0", what).await;
    let mut held = Vec::new();
    for id in ["h1", "h2", "h3"] {
        held.push(expect_id(&mut d, id, what).await);
    }
    let third = held.pop();
    for delivery in held {
        ack(delivery, what).await;
    }
    for id in ["h4", "h5"] {
        let delivery = expect_id(&mut d, id, &format!("{what}: with h0 still unsettled")).await;
        ack(delivery, what).await;
    }
    if let Some(third) = third {
        ack(third, what).await;
    }
    ack(slow, what).await;
    drop(d);
    let mut d = consume(&bus, &n.outbound_queue(OUTBOUND_KIND), 4).await;
    expect_nothing(
        &mut d,
        &format!("{what}: a new consumer after acking everything"),
    )
    .await;
}

/// A full queue (capacity 2, reject-publish) makes a publish wait for room and then fail with
/// [`BusError::Timeout`], storing nothing; a waiting publish goes through as soon as a message is
/// acked. Only for buses where queue capacity applies; `publish_timeout` is the timeout the
/// factory's buses were made with (keep it short, e.g. [`DEFAULT_PUBLISH_TIMEOUT`]).
pub async fn back_pressure(factory: &impl MakeBus, prefix: &str, publish_timeout: Duration) {
    let what = "back_pressure";
    let bus = setup(factory, prefix, 2).await;
    let n = Names::new(prefix);
    let exchange = n.outbound_exchange();
    publish(&bus, &exchange, OUTBOUND_KIND, msg("f0")).await;
    publish(&bus, &exchange, OUTBOUND_KIND, msg("f1")).await;
    let started = Instant::now();
    let refused = bus.publish(&exchange, OUTBOUND_KIND, msg("f2")).await;
    let waited = started.elapsed();
    assert!(
        matches!(refused, Err(BusError::Timeout { .. })),
        "{what}: publish to a full queue gave {refused:?}, not Timeout"
    );
    assert!(
        waited >= publish_timeout.mul_f32(0.8),
        "{what}: publish to a full queue gave up after {waited:?}, before its {publish_timeout:?}"
    );
    assert!(
        waited <= publish_timeout + WAIT,
        "{what}: publish to a full queue waited {waited:?}, far beyond {publish_timeout:?}"
    );
    assert!(bus.is_ready(), "{what}: back-pressure made the bus unready");

    let mut d = consume(&bus, &n.outbound_queue(OUTBOUND_KIND), 1).await;
    let publisher = async {
        let started = Instant::now();
        let result = bus.publish(&exchange, OUTBOUND_KIND, msg("f3")).await;
        (result, started.elapsed())
    };
    let consumer = async {
        sleep(publish_timeout / 4).await;
        let got = expect_id(&mut d, "f0", &format!("{what}: consumer")).await;
        ack(got, what).await;
    };
    let ((result, waited), ()) = tokio::join!(publisher, consumer);
    assert!(
        result.is_ok(),
        "{what}: a publish waiting for room failed after {waited:?} although room was made: {result:?}"
    );
    for id in ["f1", "f3"] {
        let got = expect_id(&mut d, id, &format!("{what}: draining (f2 must be absent)")).await;
        ack(got, what).await;
    }
    expect_nothing(&mut d, &format!("{what}: after draining")).await;
}

/// `cancel` stops one consumer while the bus runs on: the broker sends it nothing more, its
/// stream yields what had already been sent to it and then ends, and a consumer that starts
/// after it gets the rest. On one queue, nothing is lost, nothing comes twice, and the order
/// holds across the two.
pub async fn cancel_yields_what_was_sent_then_ends(factory: &impl MakeBus, prefix: &str) {
    let what = "cancel_yields_what_was_sent_then_ends";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    let ids: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    for id in &ids {
        publish(&bus, &n.inbound_exchange(), "0", msg(id)).await;
    }
    let mut first = consume(&bus, &n.inbound_queue(0), 4).await;
    let mut seen = Vec::new();
    for id in ["c0", "c1"] {
        let got = expect_id(&mut first, id, what).await;
        seen.push(got.message.message_id.clone());
        ack(got, what).await;
    }
    first
        .cancel()
        .await
        .unwrap_or_else(|e| panic!("{what}: cancel failed: {e}"));
    loop {
        match timeout(WAIT, first.next()).await {
            Ok(Some(got)) => {
                seen.push(got.message.message_id.clone());
                ack(got, what).await;
            }
            Ok(None) => break,
            Err(_) => panic!("{what}: a cancelled consumer's stream did not end within {WAIT:?}"),
        }
    }
    let held = seen.len();
    let mut second = consume(&bus, &n.inbound_queue(0), 4).await;
    while seen.len() < ids.len() {
        let got = next(&mut second, &format!("{what}: the next consumer")).await;
        seen.push(got.message.message_id.clone());
        ack(got, what).await;
    }
    assert_eq!(
        seen, ids,
        "{what}: the cancelled consumer's {held} and the next consumer's messages, in order, each once"
    );
    expect_nothing(&mut second, &format!("{what}: after the last message")).await;
}

/// `close` ends every consumer stream (also one waiting in `next()`), makes the bus unready and
/// refuses further publishes.
pub async fn close_ends_consumer_streams(factory: &impl MakeBus, prefix: &str) {
    let what = "close_ends_consumer_streams";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    let mut waiting = consume(&bus, &n.inbound_queue(0), 1).await;
    let mut idle = consume(&bus, &n.inbound_queue(1), 1).await;
    let mut reader = bus
        .browse(&n.dead_queue())
        .await
        .unwrap_or_else(|e| panic!("{what}: browsing: {e}"));
    let closer = async {
        sleep(QUIET).await;
        bus.close().await;
    };
    let (ended, ()) = tokio::join!(timeout(WAIT, waiting.next()), closer);
    match ended {
        Ok(None) => {}
        Ok(Some(d)) => panic!("{what}: got `{}` from an empty queue", d.message.message_id),
        Err(_) => panic!("{what}: a waiting consumer did not end within {WAIT:?} of close"),
    }
    match timeout(WAIT, idle.next()).await {
        Ok(None) => {}
        Ok(Some(d)) => panic!("{what}: got `{}` after close", d.message.message_id),
        Err(_) => panic!("{what}: next() after close did not end within {WAIT:?}"),
    }
    // A reader tells a bus it cannot read from an empty queue.
    match timeout(WAIT, reader.next()).await {
        Ok(Err(_)) => {}
        Ok(Ok(None)) => panic!("{what}: a reader of a closed bus reported an empty queue"),
        Ok(Ok(Some(d))) => panic!("{what}: read `{}` after close", d.message.message_id),
        Err(_) => panic!("{what}: reading after close did not end within {WAIT:?}"),
    }
    assert!(!bus.is_ready(), "{what}: a closed bus reports ready");
    let result = bus.publish(&n.inbound_exchange(), "0", msg("late")).await;
    assert!(result.is_err(), "{what}: publish on a closed bus succeeded");
}

/// Runs every case, each on a bus from `factory` with its own sub-prefix of `prefix`. Only
/// [`close_ends_consumer_streams`] closes its bus, and it runs last, so a factory may also hand out
/// one shared bus. `back_pressure_timeout` is `Some(publish timeout of the factory's buses)` for
/// implementations where queue capacity applies, to run [`back_pressure`] too.
pub async fn run_all(
    factory: &impl MakeBus,
    prefix: &str,
    back_pressure_timeout: Option<Duration>,
) {
    let p = |case: &str| format!("{prefix}{case}.");
    publish_consume_roundtrip(factory, &p("roundtrip")).await;
    unroutable_publish_is_refused(factory, &p("unroutable")).await;
    direct_and_topic_routing(factory, &p("routing")).await;
    per_key_order_with_retry(factory, &p("order")).await;
    delivery_limit_dead_letters(factory, &p("limit")).await;
    reject_dead_letters_at_once(factory, &p("reject")).await;
    browse_and_publish_to_queue(factory, &p("browse")).await;
    dropped_delivery_is_redelivered(factory, &p("dropped")).await;
    prefetch_bounds_unsettled(factory, &p("prefetch")).await;
    out_of_order_settlements_settle_exactly_those(factory, &p("settle")).await;
    acks_behind_an_unsettled_delivery_free_the_prefetch(factory, &p("held")).await;
    cancel_yields_what_was_sent_then_ends(factory, &p("cancel")).await;
    if let Some(publish_timeout) = back_pressure_timeout {
        back_pressure(factory, &p("backpressure"), publish_timeout).await;
    }
    a_bot_queue_takes_its_copies_and_drops_its_old_bindings(factory, &p("bots")).await;
    close_ends_consumer_streams(factory, &p("close")).await;
}

/// A bot's queue is bound to its own keys on `switchyard.bots`; declaring it removes the
/// bindings to `switchyard.events` that earlier versions made (a broker keeps them), so the
/// queue stops receiving every conversation's events.
pub async fn a_bot_queue_takes_its_copies_and_drops_its_old_bindings(
    factory: &impl MakeBus,
    prefix: &str,
) {
    let what = "a_bot_queue_takes_its_copies_and_drops_its_old_bindings";
    let bus = setup(factory, prefix, 1000).await;
    let n = Names::new(prefix);
    let route = WebhookRoute::bot("faq", &["message.received"]);
    // What an earlier version declared: the queue bound to the event type on the event stream.
    let old = WebhookRoute {
        exchange: EVENTS_EXCHANGE.to_owned(),
        patterns: vec!["message.received".to_owned()],
        stale_bindings: Vec::new(),
        ..route.clone()
    };
    let with = |route: WebhookRoute| TopologyOptions {
        webhooks: vec![route],
        ..options(1000)
    };
    bus.declare(&prefixed_topology(prefix, &with(old)))
        .await
        .unwrap_or_else(|e| panic!("{what}: declaring the old binding: {e}"));
    let queue = n.p(&route.queue);
    let mut d = consume(&bus, &queue, 4).await;
    publish_event(&bus, &n.events_exchange(), "message.received", "old").await;
    let got = expect_id(&mut d, "old", &format!("{what}: the old binding")).await;
    ack(got, what).await;

    // This version's declaration, twice (idempotent, and unbinding what is gone succeeds).
    for _ in 0..2 {
        bus.declare(&prefixed_topology(prefix, &with(route.clone())))
            .await
            .unwrap_or_else(|e| panic!("{what}: declaring the bot queue: {e}"));
    }
    publish_event(&bus, &n.events_exchange(), "message.received", "stream").await;
    let bots = n.p(BOTS_EXCHANGE);
    publish_event(
        &bus,
        &bots,
        &bot_event_key("other", "message.received"),
        "other",
    )
    .await;
    publish_event(
        &bus,
        &bots,
        &bot_event_key("faq", "message.received"),
        "mine",
    )
    .await;
    let got = expect_id(&mut d, "mine", &format!("{what}: the bot's own copy")).await;
    ack(got, what).await;
    expect_nothing(&mut d, &format!("{what}: another conversation's event")).await;
}

/// Publishes one event as [`Bus::publish_events`] does (a message nobody is bound to is fine).
async fn publish_event(bus: &Arc<dyn Bus>, exchange: &str, key: &str, id: &str) {
    bus.publish_events(exchange, vec![(key.to_owned(), msg(id))])
        .await
        .unwrap_or_else(|e| panic!("publishing event {id} to {exchange}: {e}"));
}
