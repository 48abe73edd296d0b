//! The presence sweeper: an agent whose heartbeats stopped is set offline and announced with
//! `agent.updated`, without waiting for an assignment; agents that heart-beat are left alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::bus::embedded::EmbeddedBus;
use switchyard_core::bus::topology::EVENTS_EXCHANGE;
use switchyard_core::bus::{Bus, Topology};
use switchyard_core::event::{CloudEvent, EventType};
use switchyard_core::metrics::Metrics;
use switchyard_core::model::{Agent, AgentStatus};
use switchyard_core::store::embedded::EmbeddedStore;
use switchyard_core::store::{AgentUpdate, Store};
use switchyard_router::assignment::sweep_lapsed_agents;
use switchyard_router::outbox::Outbox;
use tokio_util::sync::CancellationToken;

async fn online(store: &Arc<dyn Store>, id: &str) {
    store
        .upsert_agent(
            AgentUpdate {
                id: id.into(),
                pools: Some(vec!["default".into()]),
                capacity: Some(2),
                status: Some(AgentStatus::Online),
                ..AgentUpdate::default()
            },
            switchyard_core::time::now(),
        )
        .await
        .expect("agent");
}

#[tokio::test]
async fn an_agent_whose_heartbeats_stop_is_set_offline_and_announced() {
    let bus = Arc::new(EmbeddedBus::new(Duration::from_secs(2)));
    bus.declare(&Topology::standard(
        &switchyard_core::conformance::bus::options(100),
    ))
    .await
    .expect("declare");
    let queue = bus
        .declare_subscriber(EVENTS_EXCHANGE, &["agent.updated"])
        .await
        .expect("subscriber");
    let mut events = bus.consume(&queue, 10).await.expect("consume");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
    for id in ["gone", "alive"] {
        online(&store, id).await;
    }
    let now = switchyard_core::time::now();
    store
        .heartbeat_agent("gone", Duration::from_millis(200), now)
        .await
        .expect("heartbeat");
    store
        .heartbeat_agent("alive", Duration::from_secs(60), now)
        .await
        .expect("heartbeat");

    let stop = CancellationToken::new();
    let dyn_bus: Arc<dyn Bus> = bus.clone();
    let sweeper = tokio::spawn(sweep_lapsed_agents(
        Arc::clone(&store),
        Outbox::new(
            dyn_bus,
            Arc::clone(&store),
            Metrics::new().expect("metrics"),
        ),
        Duration::from_millis(50),
        stop.clone(),
    ));

    let delivery = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("agent.updated within 5 s")
        .expect("event");
    let event: CloudEvent = serde_json::from_slice(&delivery.message.body).unwrap();
    assert_eq!(event.known_type(), Some(EventType::AgentUpdated));
    let agent: Agent = serde_json::from_value(event.data["agent"].clone()).unwrap();
    assert_eq!(agent.id, "gone");
    assert_eq!(agent.status, AgentStatus::Offline);
    delivery.ack().await.unwrap();

    // Nothing else is announced: the live agent stays, and the lapsed one is swept once.
    assert!(
        tokio::time::timeout(Duration::from_millis(400), events.next())
            .await
            .is_err(),
        "another agent.updated was published"
    );
    let alive = store.agent("alive").await.unwrap().unwrap();
    assert_eq!(alive.status, AgentStatus::Online);
    let gone = store.agent("gone").await.unwrap().unwrap();
    assert_eq!(gone.status, AgentStatus::Offline);

    stop.cancel();
    sweeper.await.unwrap().unwrap();
}
