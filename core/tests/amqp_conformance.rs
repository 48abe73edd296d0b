//! The Bus conformance suite against a real RabbitMQ, in a vhost of its own that is deleted
//! afterwards. Skips loudly without RabbitMQ; fails under `CI=true`.

use std::sync::Arc;

use switchyard_core::bus::Bus;
use switchyard_core::bus::amqp::AmqpBus;
use switchyard_core::conformance::bus;
use switchyard_core::conformance::services::{TestVhost, absent};

/// A bus on `vhost` named `name`, with `prefix` before every name; `None` (said loudly, or a
/// failure under CI) when RabbitMQ does not answer.
async fn connect(vhost: &TestVhost, name: &str, prefix: &str) -> Option<AmqpBus> {
    match AmqpBus::connect(&vhost.url, name, prefix, bus::DEFAULT_PUBLISH_TIMEOUT).await {
        Ok(bus) => Some(bus),
        Err(e) => absent("RabbitMQ", &e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_bus_conforms() {
    let Some(vhost) = TestVhost::create("bus") else {
        return;
    };
    let timeout = bus::DEFAULT_PUBLISH_TIMEOUT;
    let url = vhost.url.clone();
    // Probe once so an unreachable broker is reported as absent, not as a failed case.
    if connect(&vhost, "conformance-probe", "").await.is_none() {
        return;
    }
    let make = || {
        let url = url.clone();
        async move {
            let bus = AmqpBus::connect(&url, "switchyard-conformance", "", timeout)
                .await
                .expect("connect to the test vhost");
            Arc::new(bus) as Arc<dyn Bus>
        }
    };
    // Quorum queues enforce `x-max-length` with `reject-publish` asynchronously (a publish or two
    // past the limit may still be accepted), so the exact-capacity back-pressure case does not
    // apply; a full queue still nacks, which the bus turns into waiting and then a timeout.
    bus::run_all(&make, "amqp.", None).await;
    drop(vhost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_replays_from_any_offset() {
    use futures_util::StreamExt;
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use switchyard_core::bus::Message;
    use switchyard_core::bus::topology::{
        EVENTS_EXCHANGE, EVENTS_STREAM_QUEUE, Topology, TopologyOptions,
    };

    let Some(vhost) = TestVhost::create("stream") else {
        return;
    };
    let Some(bus) = connect(&vhost, "stream-test", "").await else {
        return;
    };
    let topology = Topology::standard(&TopologyOptions {
        shards: 2,
        queue_capacity: 1000,
        delivery_limit: 3,
        outbound_kinds: vec![],
        publish_timeout: bus::DEFAULT_PUBLISH_TIMEOUT,
        events_stream_max_age: Some("1h".into()),
        webhooks: Vec::new(),
    });
    bus.declare(&topology).await.expect("declare with stream");
    bus.declare(&topology)
        .await
        .expect("declaring again is idempotent");
    for (i, kind) in [
        "conversation.created",
        "message.received",
        "conversation.assigned",
    ]
    .iter()
    .enumerate()
    {
        bus.publish(
            EVENTS_EXCHANGE,
            kind,
            Message::new(format!("e{i}"), format!("{{\"n\":{i}}}")),
        )
        .await
        .expect("publish event");
    }
    // A helpdesk reads the stream from the first offset, twice: it is a replayable log.
    let connection = lapin::Connection::connect(&vhost.url, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    for round in 0..2 {
        let ch = connection.create_channel().await.expect("channel");
        ch.basic_qos(10, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut args = FieldTable::default();
        args.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString(LongString::from("first")),
        );
        let mut consumer = ch
            .basic_consume(
                EVENTS_STREAM_QUEUE.into(),
                format!("reader-{round}").as_str().into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .expect("consume stream");
        let mut ids = Vec::new();
        while ids.len() < 3 {
            let d = tokio::time::timeout(std::time::Duration::from_secs(5), consumer.next())
                .await
                .expect("stream delivers within 5 s")
                .expect("stream open")
                .expect("delivery");
            ids.push(
                d.properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
            );
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        assert_eq!(
            ids,
            ["e0", "e1", "e2"],
            "round {round}: the whole stream, in order"
        );
    }
    drop(vhost);
}

/// A consumer whose connection the broker closed is recovered by itself and then says, once, that
/// its subscription was resumed (a router waits for another's hand-back before routing on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_recovered_after_its_connection_closed_says_it_resumed() {
    use std::time::Duration;
    use switchyard_core::bus::Message;
    use switchyard_core::bus::topology::{INBOUND_EXCHANGE, Topology, inbound_queue};

    let Some(vhost) = TestVhost::create("resume") else {
        return;
    };
    let Some(bus) = connect(&vhost, "resume-test", "").await else {
        return;
    };
    bus.declare(&Topology::standard(&bus::options(100)))
        .await
        .expect("declare");
    let mut deliveries = bus.consume(&inbound_queue(0), 10).await.expect("consume");
    async fn next(
        deliveries: &mut Box<dyn switchyard_core::bus::Deliveries>,
    ) -> switchyard_core::bus::Delivery {
        tokio::time::timeout(Duration::from_secs(30), deliveries.next())
            .await
            .expect("a delivery within 30 s")
            .expect("the stream goes on")
    }

    bus.publish(INBOUND_EXCHANGE, "0", Message::new("before", "{}"))
        .await
        .expect("publish");
    let before = next(&mut deliveries).await;
    assert_eq!(before.message.message_id, "before");
    assert!(!deliveries.take_resumed(), "resumed without a break");
    before.ack().await.expect("ack");

    vhost
        .close_connections("switchyard resume test")
        .expect("close the vhost's connections");
    // Publishes fail until the connection is recovered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = bus
        .publish(INBOUND_EXCHANGE, "0", Message::new("after", "{}"))
        .await
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bus did not recover within 30 s: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = next(&mut deliveries).await;
    assert_eq!(after.message.message_id, "after");
    assert!(
        deliveries.take_resumed(),
        "a recovered consumer did not say it resumed"
    );
    assert!(!deliveries.take_resumed(), "resumed is told once");
    after.ack().await.expect("ack");
    drop(vhost);
}

/// A message RabbitMQ dead-letters by itself (here: nacked past the quorum queue's delivery
/// limit by another client) reaches the dead letters with the same two headers as the ones
/// Switchyard dead-letters: the queue it came from, without the bus's name prefix, and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_rabbitmq_dead_lettered_carries_its_queue_and_reason() {
    use lapin::options::{BasicGetOptions, BasicNackOptions};
    use lapin::types::ShortString;
    use std::time::Duration;
    use switchyard_core::bus::topology::{
        DEAD_LETTER_QUEUE, OUTBOUND_EXCHANGE, Topology, outbound_queue,
    };
    use switchyard_core::bus::{HEADER_DEATH_REASON, HEADER_ORIGINAL_QUEUE, Message};

    let Some(vhost) = TestVhost::create("firstdeath") else {
        return;
    };
    let prefix = "tenant-a.";
    let Some(bus) = connect(&vhost, "first-death", prefix).await else {
        return;
    };
    bus.declare(&Topology::standard(&bus::options(100)))
        .await
        .expect("declare");
    bus.publish(
        OUTBOUND_EXCHANGE,
        bus::OUTBOUND_KIND,
        Message::new("poison", "{}"),
    )
    .await
    .expect("publish");
    let raw = lapin::Connection::connect(&vhost.url, lapin::ConnectionProperties::default())
        .await
        .expect("a raw connection");
    let channel = raw.create_channel().await.expect("a channel");
    // (`basic.get` is refused on a single-active-consumer queue such as an inbound shard.)
    let queue = format!("{prefix}{}", outbound_queue(bus::OUTBOUND_KIND));
    // Delivered and nacked with requeue past the limit: RabbitMQ dead-letters it.
    for _ in 0..=bus::DELIVERY_LIMIT {
        let got = channel
            .basic_get(
                ShortString::from(queue.as_str()),
                BasicGetOptions::default(),
            )
            .await
            .expect("basic.get")
            .expect("the message is in its queue");
        got.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("nack");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (reader, dead) = loop {
        let mut reader = bus.browse(DEAD_LETTER_QUEUE).await.expect("browse");
        if let Some(d) = reader.next().await.expect("read the dead letters") {
            break (reader, d);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "RabbitMQ did not dead-letter the message within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.message.message_id, "poison");
    assert_eq!(
        dead.message
            .headers
            .get(HEADER_ORIGINAL_QUEUE)
            .map(String::as_str),
        Some(outbound_queue(bus::OUTBOUND_KIND).as_str()),
        "headers: {:?}",
        dead.message.headers
    );
    assert_eq!(
        dead.message
            .headers
            .get(HEADER_DEATH_REASON)
            .map(String::as_str),
        Some("dead-lettered by RabbitMQ: delivery_limit"),
    );
    dead.ack().await.expect("ack");
    drop(reader);
    drop(vhost);
}
