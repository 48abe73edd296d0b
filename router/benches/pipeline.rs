//! `cargo bench -p switchyard-router --bench pipeline`: Switchyard's own API-channel pipeline,
//! in-process, without sockets and without an HTTP client (docs/benchmarks.md, "`cargo bench`").
//!
//! Each batch starts a fresh app (the embedded default plus an `api` channel, embedded bus and
//! store, like `switchyard-bench` in-process), registers enough agents through
//! `PUT /v1/agents/{id}` for every conversation the batch opens, subscribes to
//! `conversation.assigned` on the bus, and pre-signs one message per new user (untimed). The
//! timed part sends them as signed `POST /v1/channels/{id}/messages` requests straight into
//! [`App::http_service`] from 64 tasks (like 64 keep-alive connections, each sending its next
//! request when the previous one is answered, yielding to the scheduler in between as a
//! connection waiting for its socket does), checking every answer is 202:
//!
//! - `pipeline/api_message_to_assignment` stops the clock when every message's conversation
//!   was announced `conversation.assigned` (ingress, bus, routing, store, events);
//! - `pipeline/api_message_accepted` stops it at the last 202 (handler, signature, JSON,
//!   dedupe claim, bus publish), with routing running alongside; the batch's assignments are
//!   then awaited untimed, so no work spills into the next batch;
//! - `pipeline/api_message_ingress_only` runs the gateway role alone (nobody consumes the inbound
//!   shard queues, which hold 16 × 20 000 messages) and stops the clock at the last 202: the
//!   ingress's own cost, without routing competing for the CPUs;
//! - `pipeline/api_message_latency` runs as `api_message_to_assignment` and also measures each
//!   message's ingress-to-assignment latency: from the moment its request is handed to the
//!   service to the moment its `conversation.assigned` reaches the watcher. The watcher keeps
//!   each event's body and arrival time (which costs a few per cent of the throughput, hence a
//!   benchmark of its own); they are matched to the requests after the clock stops, and the
//!   p50/p99/max over its batches (warm-up included) are printed when the benchmarks end. The
//!   loop is closed: the time a request waits for its sender's previous one is not counted
//!   (`switchyard-bench --rate N` measures open-loop).
//!
//! The runtime has two worker threads (the reference machine's cores); the benchmark's own
//! thread only waits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group};
use switchyard_connectors::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, switchyard_signature};
use switchyard_core::bus::Bus;
use switchyard_core::bus::embedded::EmbeddedBus;
use switchyard_core::bus::topology::EVENTS_EXCHANGE;
use switchyard_core::config::Settings;
use switchyard_core::metrics::Metrics;
use switchyard_core::store::embedded::EmbeddedStore;
use switchyard_router::{App, Role};
use tokio::sync::Notify;
use tower::ServiceExt;

/// The allocator the `switchyard` binary uses, so the pipeline measures as it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Requests in flight (the load generator's default `--connections`).
const IN_FLIGHT: usize = 64;
/// The most conversations `PUT /v1/agents/{id}` lets one agent hold.
const AGENT_CAPACITY: u64 = 1_000;
/// Agents registered at least (the load generator's default `--agents`).
const MIN_AGENTS: u64 = 50;
/// How long a batch may wait for its assignments before the benchmark gives up.
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The API channel's id.
const CHANNEL: &str = "bench";
/// The API channel's secret.
const SECRET: &str = "cargo-bench-secret-0123456789abcdef";

/// What runs, and where the clock stops.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Everything runs; the clock stops at the last `conversation.assigned`.
    Assigned,
    /// As [`Until::Assigned`], also measuring each message's latency.
    AssignedTimed,
    /// Everything runs; the clock stops at the last 202.
    Accepted,
    /// Only the gateway role runs (no router consumes the inbound queues); the clock stops at
    /// the last 202.
    IngressOnly,
}

/// The embedded default plus an `api` channel, listening on 127.0.0.1:0.
fn settings() -> Settings {
    Settings::embedded_with_api_channel(CHANNEL, SECRET).expect("the bench configuration")
}

/// Counts `conversation.assigned` events and wakes the bench when a target is reached.
#[derive(Default)]
struct Assigned {
    count: AtomicU64,
    target: AtomicU64,
    reached: Notify,
    /// When each event arrived, with its body (kept only while latencies are measured).
    arrivals: Mutex<Vec<(Instant, bytes::Bytes)>>,
    /// Whether to keep the arrivals.
    timing: AtomicBool,
}

/// Every ingress-to-assignment latency measured, over all batches.
static LATENCIES: Mutex<Vec<Duration>> = Mutex::new(Vec::new());

impl Assigned {
    async fn wait_for(&self, target: u64) {
        let wait = async {
            loop {
                let reached = self.reached.notified();
                if self.count.load(Ordering::Acquire) >= target {
                    return;
                }
                reached.await;
            }
        };
        if tokio::time::timeout(ASSIGNMENT_TIMEOUT, wait)
            .await
            .is_err()
        {
            panic!(
                "only {} of {target} conversations were assigned within {ASSIGNMENT_TIMEOUT:?}",
                self.count.load(Ordering::Acquire)
            );
        }
    }
}

/// Subscribes to `conversation.assigned` on `bus` and counts the events until the bus closes.
async fn watch_assignments(bus: Arc<dyn Bus>) -> Arc<Assigned> {
    let queue = bus
        .declare_subscriber(EVENTS_EXCHANGE, &["conversation.assigned"])
        .await
        .expect("subscribing to conversation.assigned");
    let mut deliveries = bus
        .consume(&queue, 1024)
        .await
        .expect("consuming conversation.assigned");
    let assigned = Arc::new(Assigned::default());
    let counter = Arc::clone(&assigned);
    tokio::spawn(async move {
        while let Some(delivery) = deliveries.next().await {
            if counter.timing.load(Ordering::Acquire) {
                let arrival = (Instant::now(), delivery.message.body.clone());
                counter.arrivals.lock().unwrap().push(arrival);
            }
            let n = counter.count.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= counter.target.load(Ordering::Acquire) {
                counter.reached.notify_one();
            }
            let _ = delivery.ack().await;
        }
    });
    assigned
}

/// Registers `agents` online agents in pool `default`, each with room for `AGENT_CAPACITY`.
async fn register_agents(service: &axum::Router, agents: u64) {
    for i in 0..agents {
        let body = format!(
            r#"{{"name":"Bench agent {i}","pools":["default"],"capacity":{AGENT_CAPACITY},"status":"online"}}"#
        );
        let request = Request::put(format!("/v1/agents/bench-agent-{i}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert!(
            response.status().is_success(),
            "PUT /v1/agents/bench-agent-{i} answered {}",
            response.status()
        );
    }
}

/// Signed requests for `count` messages, each from a new user (message `i` from user `u{i}`),
/// with their `i`, dealt round-robin to `IN_FLIGHT` senders.
fn signed_requests(count: u64) -> Vec<Vec<(u64, Request<Body>)>> {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let timestamp = ts.to_string();
    let uri = format!("/v1/channels/{CHANNEL}/messages");
    let mut senders: Vec<Vec<(u64, Request<Body>)>> = (0..IN_FLIGHT)
        .map(|_| Vec::with_capacity((count as usize).div_ceil(IN_FLIGHT)))
        .collect();
    for i in 0..count {
        let body = format!(
            r#"{{"message_id":"m{i}","user":{{"id":"u{i}"}},"content":{{"type":"text","text":"bench message {i}"}}}}"#
        );
        let signature = switchyard_signature(SECRET.as_bytes(), ts, body.as_bytes());
        let request = Request::post(uri.as_str())
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, timestamp.as_str())
            .header(SIGNATURE_HEADER, signature)
            .body(Body::from(body))
            .unwrap();
        senders[i as usize % IN_FLIGHT].push((i, request));
    }
    senders
}

/// One batch of `iters` messages on a fresh app; the time until `until`.
async fn batch(iters: u64, until: Until) -> Duration {
    let metrics = Metrics::new().expect("creating the metrics registry");
    let settings = settings();
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(Duration::from_millis(
        settings.bus.publish_timeout_ms,
    )));
    let store = Arc::new(EmbeddedStore::new());
    let role = if until == Until::IngressOnly {
        Role::Gateway
    } else {
        Role::All
    };
    let app = App::start_with(settings, role, Arc::clone(&bus), store, metrics)
        .await
        .expect("starting Switchyard in-process");
    let service = app.http_service();
    register_agents(&service, iters.div_ceil(AGENT_CAPACITY).max(MIN_AGENTS)).await;
    let assigned = watch_assignments(bus).await;
    assigned.target.store(iters, Ordering::Release);
    assigned
        .timing
        .store(until == Until::AssignedTimed, Ordering::Release);
    let senders = signed_requests(iters);

    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|requests| {
            let service = service.clone();
            tokio::spawn(async move {
                let mut sent = Vec::with_capacity(requests.len());
                for (i, request) in requests {
                    sent.push((i, Instant::now()));
                    let response = service.clone().oneshot(request).await.unwrap();
                    if response.status() != StatusCode::ACCEPTED {
                        let status = response.status();
                        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
                            .await
                            .unwrap_or_default();
                        panic!(
                            "POST /v1/channels/{CHANNEL}/messages answered {status}: {}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                    // A keep-alive connection waits for its next request between two: without
                    // this, a sender whose requests never wait would hold its worker thread and
                    // starve routing (and the assignment watcher) for the whole batch.
                    tokio::task::yield_now().await;
                }
                sent
            })
        })
        .collect();
    let mut sent_at = vec![start; iters as usize];
    for task in tasks {
        match task.await {
            Ok(sent) => {
                for (i, at) in sent {
                    sent_at[i as usize] = at;
                }
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let accepted = start.elapsed();
    let elapsed = match until {
        Until::IngressOnly => accepted,
        Until::Accepted => {
            // Untimed: no routing is left behind for the next batch.
            assigned.wait_for(iters).await;
            accepted
        }
        Until::Assigned => {
            assigned.wait_for(iters).await;
            start.elapsed()
        }
        Until::AssignedTimed => {
            assigned.wait_for(iters).await;
            let elapsed = start.elapsed();
            record_latencies(&assigned, &sent_at);
            elapsed
        }
    };
    app.stop().await.expect("stopping Switchyard");
    elapsed
}

/// Matches each `conversation.assigned` that arrived to its message (by the user the
/// conversation is with) and records the latency from the request to the event (untimed).
fn record_latencies(assigned: &Assigned, sent_at: &[Instant]) {
    let arrivals = std::mem::take(&mut *assigned.arrivals.lock().unwrap());
    let mut latencies = LATENCIES.lock().unwrap();
    for (arrived, body) in arrivals {
        let event: serde_json::Value = serde_json::from_slice(&body).expect("an event's JSON");
        let user = event["data"]["conversation"]["recipient"]["external_id"]
            .as_str()
            .expect("the conversation's recipient");
        let i: usize = user
            .strip_prefix('u')
            .and_then(|n| n.parse().ok())
            .expect("a bench user");
        latencies.push(arrived.duration_since(sent_at[i]));
    }
}

/// Prints the p50/p99/max of [`LATENCIES`].
fn report_latencies() {
    let mut latencies = std::mem::take(&mut *LATENCIES.lock().unwrap());
    if latencies.is_empty() {
        return;
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "pipeline/api_message_latency: ingress-to-assignment latency over {} messages \
         (every batch, warm-up included): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        latencies.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sy-bench")
        .enable_all()
        .build()
        .expect("building the runtime");
    let mut group = c.benchmark_group("pipeline");
    group
        .throughput(Throughput::Elements(1))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("api_message_to_assignment", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| batch(iters, Until::Assigned));
    });
    group.bench_function("api_message_latency", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| batch(iters, Until::AssignedTimed));
    });
    group.bench_function("api_message_accepted", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| batch(iters, Until::Accepted));
    });
    group.bench_function("api_message_ingress_only", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| batch(iters, Until::IngressOnly));
    });
    group.finish();
}

criterion_group!(benches, pipeline);

/// `criterion_main!`, then the latencies.
fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report_latencies();
}
