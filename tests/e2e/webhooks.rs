//! Signed outgoing webhooks: an API-channel message's events reach a fake helpdesk endpoint as
//! signed CloudEvents, in order, only the types the webhook asked for; an endpoint that fails
//! gets the event again until it takes it, and the events behind it wait; an event the endpoint
//! refuses (4xx) is dead-lettered and the next one goes out. Runs on the embedded bus and on
//! RabbitMQ (a vhost of its own), where the refused event is read back from `switchyard.dead`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use switchyard_core::bus::amqp::AmqpBus;
use switchyard_core::bus::topology::DEAD_LETTER_QUEUE;
use switchyard_core::bus::{Bus, HEADER_DEATH_REASON, HEADER_ORIGINAL_QUEUE};
use switchyard_core::conformance::services::{TestVhost, absent};
use switchyard_core::metrics::Metrics;
use switchyard_core::store::embedded::EmbeddedStore;
use switchyard_router::{App, Role};

use crate::support::{
    Callback, Received, SECRET, Server, api_message, settings, signed_cloud_event,
};

const HOOK_SECRET: &str = "helpdesk-webhook-secret-0123";

/// An `api` channel `shop` and a webhook `helpdesk` posting to `endpoint`.
fn config(endpoint: &str) -> String {
    format!(
        "[[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\n\
         [[webhooks]]\nid = \"helpdesk\"\nurl = \"{endpoint}\"\nsecret = \"{HOOK_SECRET}\"\n\
         events = [\"conversation.*\", \"message.received\"]\n"
    )
}

/// A request the endpoint got, checked: content type, signature; returns the CloudEvent.
fn event_of(request: &Received) -> Value {
    signed_cloud_event(request, HOOK_SECRET)
}

/// The types of the events of `requests` from `from` on.
fn types(requests: &[Received], from: usize) -> Vec<String> {
    requests[from..]
        .iter()
        .map(|r| event_of(r)["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The scenario, on a started `server` whose webhook posts to `endpoint`.
async fn scenario(server: &Server, endpoint: &Callback) {
    server.agent_online("a1", 5).await;
    let post = |id: &str, text: &str| {
        let body = api_message(id, "42", text, &[]);
        async move {
            let response = server.post_signed("shop", &body).await;
            assert_eq!(response.status(), 202);
        }
    };

    // A new customer's first message: the conversation's events, in order; not
    // `customer.created`, which the webhook did not ask for.
    post("m-1", "hello").await;
    let got = endpoint.wait_for(4).await;
    assert_eq!(
        types(&got, 0),
        [
            "io.switchyard.conversation.created",
            "io.switchyard.conversation.queued",
            "io.switchyard.message.received",
            "io.switchyard.conversation.assigned"
        ]
    );
    let conversation = event_of(&got[0])["data"]["conversation"]["id"].clone();
    assert!(conversation.is_string(), "{conversation}");

    // The endpoint fails: the event comes again, with the same id, until it is taken; the next
    // message's event waits behind it.
    endpoint.answer(503);
    post("m-2", "are you there?").await;
    let failing = endpoint.wait_for(6).await;
    post("m-3", "hello?").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    endpoint.answer(200);
    let got = endpoint
        .wait_until(|got| {
            got.iter()
                .filter(|r| event_of(r)["data"]["message"]["content"]["text"] == "hello?")
                .count()
                == 1
        })
        .await;
    let retried_id = event_of(&failing[4])["id"].clone();
    let tries: Vec<usize> = (4..got.len())
        .filter(|&i| event_of(&got[i])["id"] == retried_id)
        .collect();
    assert!(tries.len() >= 3, "503, 503, then taken: tries at {tries:?}");
    let last_try = tries[tries.len() - 1];
    assert_eq!(
        types(&got, last_try),
        [
            "io.switchyard.message.received",
            "io.switchyard.message.received"
        ],
        "m-2's event, then m-3's, nothing in between or after"
    );
    assert_eq!(
        event_of(&got[last_try + 1])["data"]["message"]["content"]["text"],
        "hello?"
    );
    let transient = server
        .metric("switchyard_webhook_deliveries_total{outcome=\"transient\",webhook=\"helpdesk\"}")
        .await;
    assert!(transient >= 2.0, "failed tries counted: {transient}");

    // The endpoint refuses one event for good: it is not sent again, and the next one goes out.
    endpoint.answer(422);
    let before = got.len();
    post("m-4", "refused").await;
    endpoint.wait_for(before + 1).await;
    endpoint.answer(200);
    post("m-5", "after the refusal").await;
    let got = endpoint.wait_for(before + 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_now = endpoint.received.lock().unwrap().clone();
    assert_eq!(got_now.len(), got.len(), "the refused event was sent again");
    let texts: Vec<Value> = got[before..]
        .iter()
        .map(|r| event_of(r)["data"]["message"]["content"]["text"].clone())
        .collect();
    assert_eq!(texts, ["refused", "after the refusal"]);
    assert_eq!(
        server
            .metric(
                "switchyard_webhook_deliveries_total{outcome=\"rejected\",webhook=\"helpdesk\"}"
            )
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric(
                "switchyard_webhook_deliveries_total{outcome=\"delivered\",webhook=\"helpdesk\"}"
            )
            .await,
        7.0,
        "4 + 2 + 1 events delivered"
    );
}

/// A slow endpoint gets the events of different conversations at once, and the events of one
/// conversation one after the other, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_conversations_at_once_and_each_in_order() {
    let endpoint = Callback::start().await;
    endpoint.answer_after(Duration::from_millis(200));
    let server = Server::start(&config(&endpoint.url)).await;
    server.agent_online("a1", 10).await;
    let users = ["u1", "u2", "u3"];
    for user in users {
        let body = api_message(&format!("m-{user}"), user, "hi", &[]);
        assert_eq!(server.post_signed("shop", &body).await.status(), 202);
    }
    // Four events per conversation.
    let got = endpoint.wait_for(4 * users.len()).await;
    let open_at_arrival = endpoint.open_at_arrival.lock().unwrap().clone();
    let subject = |i: usize| event_of(&got[i])["subject"].as_str().unwrap().to_owned();
    let mut subjects: Vec<String> = (0..got.len()).map(subject).collect();
    assert!(
        open_at_arrival.iter().any(|open| !open.is_empty()),
        "no two requests were ever open at once: {open_at_arrival:?}"
    );
    for (i, open) in open_at_arrival.iter().enumerate() {
        for &j in open {
            assert_ne!(
                subjects[i], subjects[j],
                "request {i} came while request {j} of the same conversation was open"
            );
        }
    }
    let order = [
        "io.switchyard.conversation.created",
        "io.switchyard.conversation.queued",
        "io.switchyard.message.received",
        "io.switchyard.conversation.assigned",
    ];
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), users.len(), "one subject per conversation");
    for s in &subjects {
        let of_subject: Vec<String> = (0..got.len())
            .filter(|&i| &subject(i) == s)
            .map(|i| event_of(&got[i])["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            of_subject, order,
            "the events of conversation {s}, in order"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_webhook_signed_and_in_order_on_the_embedded_bus() {
    let endpoint = Callback::start().await;
    let server = Server::start(&config(&endpoint.url)).await;
    scenario(&server, &endpoint).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_a_webhook_signed_and_in_order_on_rabbitmq() {
    let Some(vhost) = TestVhost::create("webhooks") else {
        return;
    };
    let connect = |name: &'static str| {
        let url = vhost.url.clone();
        async move { AmqpBus::connect(&url, name, "", Duration::from_secs(5)).await }
    };
    let bus = match connect("webhook-app").await {
        Ok(bus) => bus,
        Err(e) => return absent::<()>("RabbitMQ", &e.to_string()).unwrap_or(()),
    };
    let endpoint = Callback::start().await;
    let app = App::start_with(
        settings(&config(&endpoint.url)),
        Role::All,
        Arc::new(bus),
        Arc::new(EmbeddedStore::new()),
        Metrics::new().unwrap(),
    )
    .await
    .unwrap();
    let server = Server::of(app);
    scenario(&server, &endpoint).await;

    // The refused event is in the dead-letter queue, with its reason and queue.
    let observer = connect("webhook-observer").await.unwrap();
    let mut dead = observer.consume(DEAD_LETTER_QUEUE, 1).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), dead.next())
        .await
        .expect("a dead-lettered event")
        .expect("the stream is open");
    let event: Value = serde_json::from_slice(&delivery.message.body).unwrap();
    assert_eq!(event["data"]["message"]["content"]["text"], "refused");
    assert_eq!(
        delivery
            .message
            .headers
            .get(HEADER_ORIGINAL_QUEUE)
            .map(String::as_str),
        Some("switchyard.webhooks.helpdesk")
    );
    let reason = delivery.message.headers.get(HEADER_DEATH_REASON).cloned();
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("422")),
        "reason: {reason:?}"
    );
    delivery.ack().await.unwrap();
    server.stop().await;
    drop(vhost);
}
