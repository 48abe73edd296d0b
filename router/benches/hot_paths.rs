//! `cargo bench -p switchyard-router --bench hot_paths`: single pieces of the API-channel
//! pipeline, one message each (docs/benchmarks.md, "`cargo bench`"):
//!
//! - `hot_paths/api_verify_decode`: the API connector verifying (timestamp window, HMAC-SHA256)
//!   and decoding one signed request, and normalizing it into an envelope;
//! - `hot_paths/envelope_json_roundtrip`: serde_json encoding and decoding of that inbound text
//!   envelope (what crosses the bus between ingress and router);
//! - `hot_paths/event_batch_new_conversation`: encoding the five events a new conversation
//!   announces (`customer.created`, `conversation.created`, `conversation.queued`,
//!   `message.received`, `conversation.assigned`) into an `EventBatch`;
//! - `hot_paths/redact_clean_text`, `hot_paths/redact_text_with_digits` and
//!   `hot_paths/redact_text_with_data`: every redaction detector over the example's text (no
//!   digit, no `@`: nothing to scan), over a text with an order number, a date and a time
//!   (scanned, nothing found) and over one with a card number, an e-mail address and a phone
//!   number in it;
//! - `hot_paths/embedded_route_inbound`: `EmbeddedStore::route_inbound` for a message from a new
//!   customer, with an online agent with room (claim, resolve, record, assign).
//!
//! The message is the DESIGN.md example (a name, a phone identity, a short text).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Method};
use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchyard_connectors::api::ApiConnector;
use switchyard_connectors::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, switchyard_signature};
use switchyard_connectors::{Connector, ConnectorContext, InboundRequest};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::Envelope;
use switchyard_core::event::EventType;
use switchyard_core::model::AgentStatus;
use switchyard_core::redaction::{DEFAULT_REPLACEMENT, Detector, Redactor, Rule};
use switchyard_core::store::embedded::EmbeddedStore;
use switchyard_core::store::{
    AgentUpdate, InboundOutcome, InboundRouting, Placement, ResolveRequest, Store,
};
use switchyard_router::events::EventBatch;

/// The allocator the `switchyard` binary uses, so the pipeline measures as it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CHANNEL: &str = "shop-app";
const SECRET: &str = "cargo-bench-secret-0123456789abcdef";
/// The most conversations one agent may hold.
const AGENT_CAPACITY: u64 = 1_000;
/// Agents registered at least (the load generator's default).
const MIN_AGENTS: u64 = 50;
const DEDUPE_TTL: Duration = Duration::from_secs(86_400);

/// The DESIGN.md example body, from user `user`.
fn body(user: u64) -> String {
    format!(
        r#"{{"message_id":"m-{user}","user":{{"id":"{user}","name":"Li Lei","identities":["phone::+86138{user:08}"]}},"content":{{"type":"text","text":"你好，我的订单还没有到"}},"sent_at":"2026-11-24T09:00:00Z"}}"#
    )
}

fn connector() -> ApiConnector {
    let mut options = BTreeMap::new();
    options.insert("secret".to_owned(), serde_json::Value::from(SECRET));
    let settings = ChannelSettings {
        id: CHANNEL.into(),
        kind: "api".into(),
        pool: "default".into(),
        api_base: None,
        options,
    };
    ApiConnector::new(&settings, &ConnectorContext::default()).expect("the API connector")
}

/// Headers of a signed request for `body`.
fn signed_headers(body: &[u8]) -> HeaderMap {
    let ts = Utc::now().timestamp();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(TIMESTAMP_HEADER, HeaderValue::from(ts));
    headers.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(&switchyard_signature(SECRET.as_bytes(), ts, body)).unwrap(),
    );
    headers
}

/// What the ingress does with one request: verify, decode, normalize.
fn verify_decode(
    connector: &ApiConnector,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Vec<Envelope> {
    let received_at = Utc::now();
    let request = InboundRequest {
        method: &Method::POST,
        headers,
        query,
        body,
        received_at,
    };
    connector.verify(&request).expect("the signature verifies");
    let message = connector.decode(&request).expect("the body decodes");
    connector
        .normalize(message, received_at)
        .expect("the message normalizes")
}

/// A normalized inbound text envelope from user `user`.
fn envelope(connector: &ApiConnector, user: u64) -> Envelope {
    let body = body(user);
    let headers = signed_headers(body.as_bytes());
    let mut envelopes = verify_decode(connector, &headers, &HashMap::new(), body.as_bytes());
    assert_eq!(envelopes.len(), 1);
    envelopes.remove(0)
}

/// The router's request to the store for `envelope` (router/src/inbound.rs).
fn routing_parts(envelope: &Envelope) -> (ResolveRequest, String) {
    let request = ResolveRequest::of_sender(envelope, false, switchyard_core::time::now());
    (request, format!("routed:{}", envelope.dedupe_key))
}

/// A store with enough online agents in pool `default` for `conversations` new ones.
async fn store_with_agents(conversations: u64) -> EmbeddedStore {
    let store = EmbeddedStore::new();
    let now = switchyard_core::time::now();
    for i in 0..conversations.div_ceil(AGENT_CAPACITY).max(MIN_AGENTS) {
        store
            .upsert_agent(
                AgentUpdate {
                    id: format!("bench-agent-{i}"),
                    name: Some(format!("Bench agent {i}")),
                    pools: Some(vec!["default".into()]),
                    skills: None,
                    capacity: Some(AGENT_CAPACITY as u32),
                    status: Some(AgentStatus::Online),
                },
                now,
            )
            .await
            .expect("registering an agent");
    }
    store
}

async fn route(
    store: &EmbeddedStore,
    envelope: &Envelope,
    resolve: ResolveRequest,
    claim: String,
) -> InboundOutcome {
    store
        .route_inbound(InboundRouting {
            envelope,
            resolve,
            claim,
            claim_ttl: DEDUPE_TTL,
            placement: Placement::queued("default"),
        })
        .await
        .expect("route_inbound")
}

fn hot_paths(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the runtime");
    let connector = connector();
    let mut group = c.benchmark_group("hot_paths");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    // The ingress's work on one request (the timestamp window is checked against the time the
    // request is received, so the signature stays valid for the whole run: 300 s).
    {
        let body = body(1);
        let headers = signed_headers(body.as_bytes());
        let query = HashMap::new();
        group.bench_function("api_verify_decode", |b| {
            b.iter(|| verify_decode(&connector, &headers, &query, black_box(body.as_bytes())));
        });
    }

    {
        let envelope = envelope(&connector, 1);
        group.bench_function("envelope_json_roundtrip", |b| {
            b.iter(|| {
                let json = serde_json::to_vec(black_box(&envelope)).unwrap();
                serde_json::from_slice::<Envelope>(&json).unwrap()
            });
        });
    }

    {
        let redactor = Redactor::new(
            Detector::ALL
                .into_iter()
                .map(|d| std::sync::Arc::new(Rule::detector(d).unwrap()))
                .collect(),
            DEFAULT_REPLACEMENT,
        );
        let clean = "你好，我的订单还没有到";
        let with_data = "卡号 4111 1111 1111 1111，邮箱 li.lei@example.com，手机13800138000，谢谢";
        let with_digits = "订单 20261130042 已于 11 月 30 日 09:00 发货，共 3 件";
        assert!(redactor.redact_text(clean).is_none());
        assert!(redactor.redact_text(with_digits).is_none());
        assert!(redactor.redact_text(with_data).is_some());
        group.bench_function("redact_clean_text", |b| {
            b.iter(|| redactor.redact_text(black_box(clean)));
        });
        group.bench_function("redact_text_with_digits", |b| {
            b.iter(|| redactor.redact_text(black_box(with_digits)));
        });
        group.bench_function("redact_text_with_data", |b| {
            b.iter(|| redactor.redact_text(black_box(with_data)));
        });
    }

    // The records a new conversation's events carry, as the store returns them to the router.
    {
        let store = runtime.block_on(store_with_agents(1));
        let mut envelope = envelope(&connector, 1);
        let (resolve, claim) = routing_parts(&envelope);
        let InboundOutcome::Routed {
            resolution,
            record,
            assignments,
        } = runtime.block_on(route(&store, &envelope, resolve, claim))
        else {
            panic!("a new message was taken for a duplicate");
        };
        assert!(resolution.created && record.created && assignments.len() == 1);
        let queued = record.conversation;
        let assigned = assignments[0].conversation.clone();
        envelope.conversation_id = Some(queued.id.clone());
        envelope.customer_id = Some(queued.customer_id.clone());
        let customer = resolution
            .profile
            .expect("a new customer comes with its profile");
        group.bench_function("event_batch_new_conversation", |b| {
            b.iter(|| {
                let mut events = EventBatch::new();
                events.customer_created(black_box(&customer));
                events
                    .conversation(EventType::ConversationCreated, black_box(&queued))
                    .conversation(EventType::ConversationQueued, &queued);
                events.message_received(&envelope, queued.agent_id.as_deref());
                events.conversation(EventType::ConversationAssigned, black_box(&assigned));
                events
            });
        });
    }

    // Each batch: a fresh store with room for every conversation it opens, and one envelope per
    // new customer with the router's request for it (untimed); timed: routing them one after
    // the other.
    group.bench_function("embedded_route_inbound", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let connector = &connector;
            async move {
                let store = store_with_agents(iters).await;
                let envelopes: Vec<Envelope> =
                    (0..iters).map(|user| envelope(connector, user)).collect();
                let requests: Vec<(ResolveRequest, String)> =
                    envelopes.iter().map(routing_parts).collect();
                let mut assigned = 0u64;
                let start = Instant::now();
                for (envelope, (resolve, claim)) in envelopes.iter().zip(requests) {
                    if let InboundOutcome::Routed { assignments, .. } =
                        route(&store, black_box(envelope), resolve, claim).await
                    {
                        assigned += assignments.len() as u64;
                    }
                }
                let elapsed = start.elapsed();
                assert_eq!(assigned, iters, "every new conversation is assigned");
                drop(envelopes);
                drop(store);
                elapsed
            }
        });
    });
    group.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
