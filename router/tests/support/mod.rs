//! What the router tests share: an embedded bus whose event publishes can be made to fail, a
//! router over the embedded store with one agent, and readers of the events it published.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use switchyard_connectors::{ConnectorContext, Registry};
use switchyard_core::bus::embedded::EmbeddedBus;
use switchyard_core::bus::topology::{EVENTS_EXCHANGE, TopologyOptions, outbound_queue};
use switchyard_core::bus::{Bus, BusError, Deliveries, Delivery, Message, QueueReader, Topology};
use switchyard_core::conformance::store::{app_channel, inbound_envelope, key};
use switchyard_core::event::CloudEvent;
use switchyard_core::metrics::Metrics;
use switchyard_core::model::AgentStatus;
use switchyard_core::store::embedded::EmbeddedStore;
use switchyard_core::store::{AgentUpdate, Store};
use switchyard_router::events::EventPublisher;
use switchyard_router::inbound::{InboundRouter, Routed};
use switchyard_router::operations::Operations;
use switchyard_router::outbox::Outbox;
use switchyard_router::routes::RoutingTable;

/// The embedded bus, except that the next `failing` event batches, and the next
/// `failing_publishes` single publishes, fail as if the broker were gone, and the next
/// `hanging_publishes` single publishes and `hanging` event batches never finish (as if the
/// process stopped during them); `hung` keeps the (routing key, message id) of each hanging
/// event batch's messages, and `hung_events` their bodies (the CloudEvents, as JSON).
pub struct FlakyBus {
    pub inner: EmbeddedBus,
    pub failing: AtomicUsize,
    pub failing_publishes: AtomicUsize,
    pub hanging_publishes: AtomicUsize,
    pub hanging: AtomicUsize,
    pub hung: std::sync::Mutex<Vec<Vec<(String, String)>>>,
    pub hung_events: std::sync::Mutex<Vec<Vec<serde_json::Value>>>,
    /// Set to make every consumer report, once, that its subscription was resumed (as after a
    /// dropped connection).
    pub resumed: Arc<AtomicBool>,
}

/// A consumer of the [`FlakyBus`]: the embedded one, resumed when the bus says so.
struct FlakyDeliveries {
    inner: Box<dyn Deliveries>,
    resumed: Arc<AtomicBool>,
}

#[async_trait]
impl Deliveries for FlakyDeliveries {
    async fn next(&mut self) -> Option<Delivery> {
        self.inner.next().await
    }
    async fn cancel(&mut self) -> Result<(), BusError> {
        self.inner.cancel().await
    }
    fn take_resumed(&mut self) -> bool {
        self.resumed.swap(false, Ordering::SeqCst)
    }
}

/// Takes one failure from `counter`: whether the next call must fail.
fn take_failure(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl Bus for FlakyBus {
    async fn declare(&self, topology: &Topology) -> Result<(), BusError> {
        self.inner.declare(topology).await
    }
    async fn declare_subscriber(
        &self,
        exchange: &str,
        patterns: &[&str],
    ) -> Result<String, BusError> {
        self.inner.declare_subscriber(exchange, patterns).await
    }
    async fn publish(&self, exchange: &str, key: &str, message: Message) -> Result<(), BusError> {
        if take_failure(&self.failing_publishes) {
            return Err(BusError::Unavailable("broker gone (test)".into()));
        }
        if take_failure(&self.hanging_publishes) {
            std::future::pending::<()>().await;
        }
        self.inner.publish(exchange, key, message).await
    }
    async fn publish_events(
        &self,
        exchange: &str,
        messages: Vec<(String, Message)>,
    ) -> Result<(), BusError> {
        if take_failure(&self.failing) {
            return Err(BusError::Unavailable("broker gone (test)".into()));
        }
        if take_failure(&self.hanging) {
            let batch = messages
                .iter()
                .map(|(key, m)| (key.clone(), m.message_id.clone()))
                .collect();
            self.hung.lock().expect("hung").push(batch);
            let events = messages
                .iter()
                .map(|(_, m)| serde_json::from_slice(&m.body).expect("event json"))
                .collect();
            self.hung_events.lock().expect("hung").push(events);
            std::future::pending::<()>().await;
        }
        self.inner.publish_events(exchange, messages).await
    }
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Deliveries>, BusError> {
        Ok(Box::new(FlakyDeliveries {
            inner: self.inner.consume(queue, prefetch).await?,
            resumed: Arc::clone(&self.resumed),
        }))
    }
    async fn browse(&self, queue: &str) -> Result<Box<dyn QueueReader>, BusError> {
        self.inner.browse(queue).await
    }
    async fn publish_to_queue(&self, queue: &str, message: Message) -> Result<(), BusError> {
        self.inner.publish_to_queue(queue, message).await
    }
    async fn ready_messages(&self, queue: &str) -> Result<u64, BusError> {
        self.inner.ready_messages(queue).await
    }
    fn is_ready(&self) -> bool {
        true
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

pub struct Setup {
    pub bus: Arc<FlakyBus>,
    pub store: Arc<dyn Store>,
    pub router: InboundRouter,
    pub events: Box<dyn Deliveries>,
    pub metrics: Metrics,
}

impl Setup {
    /// The same setup, its router choosing the pool of a new conversation by `routes`.
    pub fn with_routes(mut self, routes: RoutingTable) -> Self {
        let bus: Arc<dyn Bus> = self.bus.clone();
        self.router = InboundRouter::new(
            Arc::clone(&self.store),
            EventPublisher::new(bus),
            self.metrics.clone(),
            routes,
            vec!["default".into()],
            Duration::from_secs(600),
            4,
        );
        self
    }

    /// How many ingress-to-assignment latencies the router has recorded.
    pub fn assignments_measured(&self) -> u64 {
        self.metrics
            .ingress_to_assignment
            .with_label_values(&["default"])
            .get_sample_count()
    }
}

/// A router over the embedded store (see [`setup_on`]).
pub async fn setup() -> Setup {
    setup_on(Arc::new(EmbeddedStore::new())).await
}

/// A router over `store` and a [`FlakyBus`], with agent `a1` online in pool `default`
/// (capacity 5), and a consumer of every event.
pub async fn setup_on(store: Arc<dyn Store>) -> Setup {
    let bus = Arc::new(FlakyBus {
        inner: EmbeddedBus::new(Duration::from_secs(2)),
        failing: AtomicUsize::new(0),
        failing_publishes: AtomicUsize::new(0),
        hanging_publishes: AtomicUsize::new(0),
        hanging: AtomicUsize::new(0),
        hung: std::sync::Mutex::new(Vec::new()),
        hung_events: std::sync::Mutex::new(Vec::new()),
        resumed: Arc::new(AtomicBool::new(false)),
    });
    bus.declare(&Topology::standard(
        &switchyard_core::conformance::bus::options(100),
    ))
    .await
    .expect("declare");
    let queue = bus
        .declare_subscriber(EVENTS_EXCHANGE, &["#"])
        .await
        .expect("subscriber");
    let events = bus.consume(&queue, 100).await.expect("consume events");
    store
        .upsert_agent(
            AgentUpdate {
                id: "a1".into(),
                pools: Some(vec!["default".into()]),
                capacity: Some(5),
                status: Some(AgentStatus::Online),
                ..AgentUpdate::default()
            },
            switchyard_core::time::now(),
        )
        .await
        .expect("agent");
    forget_notes(&store).await;
    let dyn_bus: Arc<dyn Bus> = bus.clone();
    let metrics = Metrics::new().expect("metrics");
    let router = InboundRouter::new(
        Arc::clone(&store),
        EventPublisher::new(dyn_bus),
        metrics.clone(),
        RoutingTable::default(),
        vec!["default".into()],
        Duration::from_secs(600),
        4,
    );
    Setup {
        bus,
        store,
        router,
        events,
        metrics,
    }
}

/// Every event published so far, as (type without prefix, id), in order.
pub async fn drain(events: &mut Box<dyn Deliveries>) -> Vec<(String, String)> {
    drain_events(events)
        .await
        .into_iter()
        .map(|(routing_key, event)| (routing_key, event.id))
        .collect()
}

/// Every event published so far, with its routing key, in order; each delivery's message id
/// is its event id.
pub async fn drain_events(events: &mut Box<dyn Deliveries>) -> Vec<(String, CloudEvent)> {
    let mut out = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
        let event: CloudEvent = serde_json::from_slice(&d.message.body).expect("event json");
        assert_eq!(event.id, d.message.message_id, "message id is the event id");
        out.push((d.routing_key.clone(), event));
        d.ack().await.expect("ack");
    }
    out
}

pub fn types(events: &[(String, String)]) -> Vec<&str> {
    events.iter().map(|(t, _)| t.as_str()).collect()
}

/// A user's message, not routed yet.
pub fn message_of(user: &str, text: &str) -> switchyard_core::envelope::Envelope {
    let identity = key("", "app_user", "shop-app", user);
    let mut envelope = inbound_envelope(
        "",
        &app_channel(),
        user,
        vec![identity],
        text,
        switchyard_core::time::now(),
    );
    envelope.customer_id = None;
    envelope
}

pub async fn set_capacity(store: &Arc<dyn Store>, capacity: u32) {
    store
        .upsert_agent(
            AgentUpdate {
                id: "a1".into(),
                capacity: Some(capacity),
                ..AgentUpdate::default()
            },
            switchyard_core::time::now(),
        )
        .await
        .expect("capacity");
    forget_notes(store).await;
}

/// Clears every note (`Store::unannounced`): the changes a test set up directly in the store
/// need no announcing.
pub async fn forget_notes(store: &Arc<dyn Store>) {
    let everything = switchyard_core::time::now() + chrono::TimeDelta::days(1);
    let notes = store.unannounced(everything).await.expect("notes");
    store.clear_notes(&notes).await.expect("clear notes");
}

/// Every event published so far, as (type, conversation id in its data, event id).
pub async fn drain_conversations(
    events: &mut Box<dyn Deliveries>,
) -> Vec<(String, String, String)> {
    drain_events(events)
        .await
        .into_iter()
        .map(|(routing_key, event)| {
            let conversation = event.data["conversation"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (routing_key, conversation, event.id)
        })
        .collect()
}

/// A consumer of the outbound queue of channel kind `kind`, declared on the setup's bus first.
pub async fn consume_outbound(s: &Setup, kind: &str) -> Box<dyn Deliveries> {
    let options = TopologyOptions {
        outbound_kinds: vec![kind.to_owned()],
        ..switchyard_core::conformance::bus::options(100)
    };
    s.bus
        .declare(&Topology::standard(&options))
        .await
        .expect("declare");
    s.bus
        .consume(&outbound_queue(kind), 10)
        .await
        .expect("outbound consumer")
}

/// The setup's router, plus commands and an outbox over the same store and bus.
pub fn commands(s: &Setup) -> (Operations, Outbox) {
    let bus: Arc<dyn Bus> = s.bus.clone();
    let outbox = Outbox::new(bus, Arc::clone(&s.store), s.metrics.clone());
    let registry =
        Registry::build(&[], &ConnectorContext::new(Arc::clone(&s.store))).expect("empty registry");
    let ops = Operations::new(
        Arc::clone(&s.store),
        registry,
        outbox.clone(),
        s.metrics.clone(),
        10,
    );
    (ops, outbox)
}

/// Routes a message of `user` and returns its conversation.
pub async fn conversation_of(s: &Setup, user: &str) -> String {
    match s.router.route(message_of(user, "hello")).await.expect(user) {
        Routed::Recorded(conversation) => conversation,
        other => panic!("{user}'s message was not recorded: {other:?}"),
    }
}

/// The customer of a conversation that must exist.
pub async fn customer_of(s: &Setup, conversation: &str) -> String {
    s.store
        .conversation(conversation)
        .await
        .expect("conversation")
        .expect("the conversation exists")
        .customer_id
}

/// Each case (an async fn taking a [`Setup`]) as a test on the embedded store and one on Redis.
#[allow(unused_macros)]
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::setup().await).await;
                }
            )*
        }
        mod redis {
            use switchyard_core::conformance::services::TestRedisPrefix;
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(prefix) = TestRedisPrefix::new().await else {
                        return;
                    };
                    super::$case(super::setup_on(prefix.store().await).await).await;
                }
            )*
        }
    };
}
