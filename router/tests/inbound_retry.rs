//! Retries and hand-overs of inbound messages. A message whose effects were stored but whose
//! events were not published (the bus failed, or the reply of a store script was lost) is
//! retried; the retry announces everything the first attempt did, with the same event ids, and
//! changes nothing else. A shard consumer keeps each user's messages in order when it stops or
//! when its connection is resumed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchyard_core::bus::topology::{INBOUND_EXCHANGE, inbound_queue, shard_of};
use switchyard_core::bus::{Bus, Message};
use switchyard_core::conformance::bus::SHARDS;
use switchyard_core::metrics::Metrics;
use switchyard_router::inbound::Routed;
use switchyard_router::peers::Peers;
use switchyard_router::workers::{ShardWorker, run_shard};
use tokio_util::sync::CancellationToken;

mod support;
use support::*;

#[tokio::test]
async fn a_retry_after_lost_events_announces_everything_once_more_with_the_same_ids() {
    let mut s = setup().await;
    let envelope = message_of("retry-1", "hi");

    // First attempt: stored and assigned, but the events never reach the bus.
    s.bus.failing.store(1, Ordering::SeqCst);
    let first = s.router.route(envelope.clone()).await;
    assert!(
        matches!(&first, Err(e) if e.is_transient()),
        "a lost event batch must fail the attempt transiently: {first:?}"
    );
    assert!(
        drain(&mut s.events).await.is_empty(),
        "events escaped a failed publish"
    );
    let held = s.store.agent_conversations("a1").await.expect("agent load");
    assert_eq!(held.len(), 1, "the first attempt's assignment is stored");
    let conversation = held[0].id.clone();

    // The retry finds the work done and announces all of it.
    let retry = s.router.route(envelope.clone()).await.expect("retry");
    assert_eq!(retry, Routed::Duplicate(conversation.clone()));
    let announced = drain(&mut s.events).await;
    assert_eq!(
        types(&announced),
        [
            "customer.created",
            "conversation.created",
            "conversation.queued",
            "message.received",
            "conversation.assigned",
        ],
        "the retry must announce what the first attempt did"
    );
    assert_eq!(
        announced[3].1, envelope.id,
        "message.received carries the envelope id"
    );

    // Another redelivery announces the same events with the same ids (consumers dedupe them),
    // and nothing changed in the store.
    s.router.route(envelope.clone()).await.expect("redelivery");
    assert_eq!(
        drain(&mut s.events).await,
        announced,
        "a re-announcement must reuse the ids"
    );
    let held = s.store.agent_conversations("a1").await.expect("agent load");
    assert_eq!(held.len(), 1, "a retry assigned again");
    let stored = s
        .store
        .conversation(&conversation)
        .await
        .expect("conversation")
        .expect("exists");
    assert_eq!(
        stored.message_count, 1,
        "a retry recorded the message twice"
    );

    // A later message of the same customer announces only itself.
    let later = message_of("retry-1", "again");
    assert_eq!(
        s.router.route(later.clone()).await.expect("later"),
        Routed::Recorded(conversation)
    );
    let announced = drain(&mut s.events).await;
    assert_eq!(types(&announced), ["message.received"]);
    assert_eq!(announced[0].1, later.id);
}

#[tokio::test]
async fn a_retry_of_a_later_message_does_not_reannounce_the_conversation() {
    let mut s = setup().await;
    let opening = message_of("retry-2", "hi");
    s.router.route(opening).await.expect("opening message");
    assert_eq!(drain(&mut s.events).await.len(), 5, "opening events");

    let later = message_of("retry-2", "second");
    s.bus.failing.store(1, Ordering::SeqCst);
    assert!(s.router.route(later.clone()).await.is_err());
    s.router.route(later.clone()).await.expect("retry");
    let announced = drain(&mut s.events).await;
    assert_eq!(
        types(&announced),
        ["message.received"],
        "only the message is announced again"
    );
    assert_eq!(announced[0].1, later.id);
}

#[tokio::test]
async fn a_retry_reannounces_the_conversations_its_first_routing_assigned_ahead_of_its_own() {
    let mut s = setup().await;
    set_capacity(&s.store, 1).await;
    let Routed::Recorded(_) = s.router.route(message_of("u-a", "a")).await.expect("a") else {
        panic!("a was not recorded");
    };
    let Routed::Recorded(waiting) = s.router.route(message_of("u-b", "b")).await.expect("b") else {
        panic!("b was not recorded");
    };
    drain(&mut s.events).await;
    // Room frees without an assignment (the store assigns nothing by itself).
    set_capacity(&s.store, 3).await;

    // c's routing assigns b (queued ahead), then c; its events are lost.
    let c = message_of("u-c", "c");
    s.bus.failing.store(1, Ordering::SeqCst);
    assert!(s.router.route(c.clone()).await.is_err());
    assert!(drain(&mut s.events).await.is_empty());

    let Routed::Duplicate(own) = s.router.route(c.clone()).await.expect("retry") else {
        panic!("the retry was not a duplicate");
    };
    let announced = drain_conversations(&mut s.events).await;
    let assigned: Vec<&str> = announced
        .iter()
        .filter(|(t, _, _)| t == "conversation.assigned")
        .map(|(_, conversation, _)| conversation.as_str())
        .collect();
    assert_eq!(
        assigned,
        [waiting.as_str(), own.as_str()],
        "the retry must announce b's assignment as well as c's: {announced:?}"
    );
    // A further redelivery announces them with the same ids.
    s.router.route(c).await.expect("redelivery");
    assert_eq!(drain_conversations(&mut s.events).await, announced);
    // a and the first attempt's b and c: re-announced assignments are not measured again.
    assert_eq!(
        s.assignments_measured(),
        3,
        "a retry recorded the ingress-to-assignment latency of an assignment again"
    );
}

/// A router that stops while a message keeps failing transiently hands it back, and the later
/// messages of the same user that it holds go back with it, unrouted, so none overtakes it.
#[tokio::test]
async fn a_message_handed_back_while_stopping_takes_its_users_later_messages_with_it() {
    let s = setup().await;
    let messages: Vec<_> = (0..3)
        .map(|i| message_of("u-stop", &format!("m{i}")))
        .collect();
    let shard = shard_of(&messages[0].shard_key(), SHARDS);
    let queue = inbound_queue(shard);
    for m in &messages {
        let body = serde_json::to_vec(m).expect("envelope json");
        s.bus
            .publish(
                INBOUND_EXCHANGE,
                &shard.to_string(),
                Message::new(m.id.clone(), body),
            )
            .await
            .expect("publish");
    }
    // Every event batch fails until the stop: the first message is retried in place, the other
    // two wait behind it.
    s.bus.failing.store(usize::MAX / 2, Ordering::SeqCst);
    let stop = CancellationToken::new();
    let dyn_bus: Arc<dyn Bus> = s.bus.clone();
    let worker = ShardWorker {
        bus: dyn_bus,
        shard,
        queue: queue.clone(),
        prefetch: 10,
        attempts: 3,
        router: s.router.clone(),
        metrics: Metrics::new().expect("metrics"),
        peers: Peers::new(Arc::clone(&s.store), 0, 1, true),
    };
    let consumer = tokio::spawn(run_shard(
        worker,
        None,
        stop.clone(),
        Arc::new(AtomicBool::new(false)),
    ));
    tokio::time::sleep(Duration::from_millis(120)).await;
    // Only the first message's next attempt fails (and sees the stop); the others would route.
    s.bus.failing.store(1, Ordering::SeqCst);
    stop.cancel();
    consumer.await.expect("join").expect("shard consumer");

    let mut back = s.bus.consume(&queue, 10).await.expect("consume");
    for m in &messages {
        let d = tokio::time::timeout(Duration::from_secs(2), back.next())
            .await
            .expect("a handed-back message")
            .expect("delivery");
        assert_eq!(
            d.message.message_id, m.id,
            "the user's messages must be back on the queue, in order"
        );
        d.ack().await.expect("ack");
    }
}

/// A consumer whose connection dropped and was recovered waits, before routing its next
/// delivery, while another router's hand-back mark is on the shard: that router may have been
/// active meanwhile and still hold earlier messages of the same users. On a subscription that was
/// not resumed, a delivery does not wait.
#[tokio::test]
async fn a_resumed_consumer_waits_while_another_router_hands_the_shard_back() {
    let s = setup().await;
    let user = "u-resume";
    let messages: Vec<_> = (0..3).map(|i| message_of(user, &format!("m{i}"))).collect();
    let shard = shard_of(&messages[0].shard_key(), SHARDS);
    let queue = inbound_queue(shard);
    let publish = |i: usize| {
        let (bus, m) = (s.bus.clone(), messages[i].clone());
        async move {
            let body = serde_json::to_vec(&m).expect("envelope json");
            bus.publish(
                INBOUND_EXCHANGE,
                &shard.to_string(),
                Message::new(m.id.clone(), body),
            )
            .await
            .expect("publish");
        }
    };
    // This router owns the shard; the other one marks a hand-back of it.
    let owner = shard % 2;
    let other = Peers::new(Arc::clone(&s.store), 1 - owner, 2, true);
    let metrics = Metrics::new().expect("metrics");
    let routed = || metrics.routed.with_label_values(&["routed"]).get();
    let stop = CancellationToken::new();
    let dyn_bus: Arc<dyn Bus> = s.bus.clone();
    let worker = ShardWorker {
        bus: dyn_bus,
        shard,
        queue,
        prefetch: 10,
        attempts: 3,
        router: s.router.clone(),
        metrics: metrics.clone(),
        peers: Peers::new(Arc::clone(&s.store), owner, 2, true),
    };
    let consumer = tokio::spawn(run_shard(
        worker,
        None,
        stop.clone(),
        Arc::new(AtomicBool::new(false)),
    ));
    let routed_within = |n: u64| async move {
        for _ in 0..100 {
            if routed() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };

    publish(0).await;
    assert!(routed_within(1).await, "the first message was not routed");

    // Not resumed: a mark on the shard does not hold the subscription's next delivery up.
    other.mark_hand_back(shard).await.expect("mark");
    publish(1).await;
    assert!(
        routed_within(2).await,
        "a running subscription waited for a hand-back mark"
    );

    // Resumed: the next delivery waits until the other router's mark is gone.
    s.bus.resumed.store(true, Ordering::SeqCst);
    publish(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        routed(),
        2,
        "a resumed consumer routed while another router was handing the shard back"
    );
    other.unmark_hand_back(shard).await.expect("unmark");
    assert!(
        routed_within(3).await,
        "the resumed consumer did not go on once the mark was gone"
    );
    stop.cancel();
    consumer.await.expect("join").expect("shard consumer");
}
