//! `amqp_ceiling`: the raw lapin ceiling of Switchyard's bus path on one RabbitMQ, and an
//! observer of a running Switchyard's event stream.
//!
//! `amqp_ceiling run` reproduces the broker work of gateway -> router -> events with no
//! application work at all:
//!
//! ```text
//! "gateway" connection: publish (persistent, mandatory, confirm awaited; pipelined over
//!   4 confirm channels, --inflight at once) -> direct exchange -> S quorum shard queues
//!   (single active consumer, delivery limit, at-least-once DLX, max-length + reject-publish,
//!   exactly Switchyard's inbound arguments)
//! "router" connection: one consumer channel per shard (prefetch N); every delivery is handled
//!   concurrently: K publishes to a second exchange, each confirm awaited before the next
//!   (K = --serial-publishes, 1 by default), then the delivery is acked
//! "helpdesk" connection: consumes the second quorum queue (prefetch N), acks, and records
//!   end-to-end latency (scheduled send -> final delivery) of the last of the K copies
//! ```
//!
//! At `--rate max` the publisher keeps `--inflight` publishes in flight (like the load
//! generator's 64 connections); at a fixed rate it is open-loop (latency counts from each
//! message's scheduled time). CPU is utime+stime of this process (and of the broker, found as
//! `beam.smp` in /proc) per message.
//!
//! `amqp_ceiling watch` binds a queue to a running Switchyard's `switchyard.events`
//! (`message.received`, `conversation.assigned`) and measures, per conversation opened by the
//! load generator's measured phase (users `<run>-m<n>`), the time from the gateway's
//! `received_at` (HTTP request verified) to the router's `assigned_at`, and to this observer
//! receiving `conversation.assigned`; plus end-to-end routed throughput.
//!
//! The vhost is given in the URL; bench/run-amqp.sh creates and deletes it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

const USER_HZ: u64 = 100;
const MAX_US: u64 = 120_000_000;

#[derive(Debug, Parser)]
#[command(
    name = "amqp_ceiling",
    about = "Raw lapin ceiling of Switchyard's bus path, and a Switchyard event observer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Publish -> quorum shards -> consume + republish with confirm -> quorum queue -> consume.
    Run(RunArgs),
    /// Observe a running Switchyard's events (ingress-to-assignment, routed throughput).
    Watch(WatchArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// AMQP URL including the vhost, e.g. amqp://guest:guest@127.0.0.1:5672/bench
    #[arg(long)]
    url: String,
    /// Measured messages (default 100000, or unbounded with --duration).
    #[arg(long)]
    messages: Option<u64>,
    /// Seconds to send for (with --messages, whichever ends first).
    #[arg(long)]
    duration: Option<f64>,
    /// `max` or messages per second (open-loop).
    #[arg(long, default_value = "max")]
    rate: String,
    /// Publishes in flight at once at max rate (the load generator's connections).
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Shard queues (Switchyard's bus.shards default).
    #[arg(long, default_value_t = 16)]
    shards: u16,
    /// Prefetch of every consumer (Switchyard's bus.prefetch default).
    #[arg(long, default_value_t = 64)]
    prefetch: u16,
    /// Confirm channels per publishing connection (Switchyard's PUBLISH_CHANNELS).
    #[arg(long, default_value_t = 4)]
    publish_channels: usize,
    /// Publishes per consumed message, each confirm awaited before the next.
    #[arg(long, default_value_t = 1)]
    serial_publishes: u32,
    /// Message body size in bytes (a bench envelope is about 700 B).
    #[arg(long, default_value_t = 700)]
    body_bytes: usize,
    /// Unmeasured messages sent first.
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
    /// Seconds to wait for the last deliveries after sending.
    #[arg(long, default_value_t = 60.0)]
    drain_secs: f64,
    /// Name prefix of the exchanges and queues (deleted at the end).
    #[arg(long, default_value = "ceiling")]
    prefix: String,
    /// Label in the report.
    #[arg(long)]
    label: Option<String>,
    /// Also write the JSON report here.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// AMQP URL including Switchyard's vhost.
    #[arg(long)]
    url: String,
    /// Stop after this many measured-phase assignments (and `--expect-messages` messages).
    #[arg(long)]
    expect: Option<u64>,
    /// With several messages per user: also wait for this many measured-phase
    /// `message.received` events (default: as many as `--expect`).
    #[arg(long)]
    expect_messages: Option<u64>,
    /// Stop after this many seconds without a measured-phase event (once one was seen).
    #[arg(long, default_value_t = 15.0)]
    idle_secs: f64,
    /// Stop after this many seconds in any case.
    #[arg(long, default_value_t = 900.0)]
    max_secs: f64,
    /// Write the JSON report here (also printed).
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
    /// Write a line here once the queue is bound (for scripts to wait on).
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
    /// Extra binding keys on `switchyard.events` (e.g. `#` to count every event type per
    /// message; adds broker work).
    #[arg(long)]
    also_bind: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ceiling")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("amqp_ceiling: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => run(a).await,
            Cmd::Watch(a) => watch(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amqp_ceiling: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc helpers

fn stat_ticks(path: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let close = stat.rfind(')').context("no `)` in stat")?;
    let fields: Vec<&str> = stat
        .get(close + 1..)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let f = |n: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(n - 3)
            .context("stat too short")?
            .parse::<u64>()?)
    };
    Ok(f(14)? + f(15)?)
}

fn cpu_secs(pid: Option<u32>) -> anyhow::Result<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    Ok(stat_ticks(&path)? as f64 / USER_HZ as f64)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The RabbitMQ node's process (`beam.smp`), to account its CPU.
fn broker_pid() -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            && comm.trim() == "beam.smp"
        {
            return Some(pid);
        }
    }
    None
}

/// Busy CPU seconds of the whole machine (all CPUs) from /proc/stat.
fn machine_busy_secs() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("cpu "))?.to_owned();
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
            Some(busy as f64 / USER_HZ as f64)
        })
        .unwrap_or(0.0)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn new_hist() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_US, 3).context("histogram")
}

fn pct(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": h.len(),
        "mean_ms": h.mean() / 1000.0,
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    Connection::connect(url, props)
        .await
        .with_context(|| format!("connecting {name}"))
}

async fn confirm_channels(conn: &Connection, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        out.push(ch);
    }
    Ok(out)
}

/// A pool of confirm channels used round-robin, as `AmqpBus::publisher` does.
struct Publishers {
    channels: Vec<Channel>,
    next: AtomicUsize,
    errors: AtomicU64,
}

impl Publishers {
    /// Publishes persistent + mandatory and awaits the broker's confirm (like
    /// `AmqpBus::publish_on`). Returns false when nacked, returned or failed.
    async fn publish(&self, exchange: &str, key: &str, id: &str, body: &[u8]) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let ch = &self.channels[i % self.channels.len()];
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(id))
            .with_content_type(ShortString::from("application/json"))
            .with_headers(FieldTable::default());
        let res = tokio::time::timeout(Duration::from_secs(5), async {
            let confirm = ch
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(key),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    props,
                )
                .await?;
            confirm.await
        })
        .await;
        let ok = match res {
            Ok(Ok(c)) => c.is_ack() && c.take_message().is_none(),
            _ => false,
        };
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

// ---------------------------------------------------------------------------------------------
// run

/// Body layout: [0..8) scheduled ns since the run's epoch, [8..16) sequence, [16] phase
/// (0 warm-up, 1 measured), [17] last copy (1) or not; then padding.
fn body(size: usize, sched_ns: u64, seq: u64, measured: bool) -> Vec<u8> {
    let mut b = vec![b'x'; size.max(18)];
    b[0..8].copy_from_slice(&sched_ns.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16] = u8::from(measured);
    b[17] = 0;
    b
}

struct Sink {
    epoch: Instant,
    e2e: std::sync::Mutex<Histogram<u64>>,
    confirm: std::sync::Mutex<Histogram<u64>>,
    measured_done: AtomicU64,
    warm_done: AtomicU64,
    last_done_ns: AtomicU64,
    notify: Notify,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn quorum_args(dlx: &str, capacity: i64, single_active: bool) -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-queue-type".into(), long("quorum"));
    a.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(5));
    if single_active {
        a.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    a.insert("x-dead-letter-exchange".into(), long(dlx));
    a.insert("x-dead-letter-strategy".into(), long("at-least-once"));
    a.insert("x-max-length".into(), AMQPValue::LongLongInt(capacity));
    a.insert("x-overflow".into(), long("reject-publish"));
    a
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let rate: Option<f64> = if a.rate.eq_ignore_ascii_case("max") {
        None
    } else {
        let r: f64 = a.rate.parse().context("--rate: `max` or a number")?;
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be positive");
        }
        Some(r)
    };
    let total = match (a.messages, a.duration) {
        (Some(m), _) => Some(m),
        (None, Some(_)) => None,
        (None, None) => Some(100_000),
    };
    let k = a.serial_publishes.max(1);
    let p = &a.prefix;
    let in_ex = format!("{p}.inbound");
    let out_ex = format!("{p}.events");
    let dlx = format!("{p}.dlx");
    let out_q = format!("{p}.events.q");
    let shard_q = |s: u16| format!("{p}.inbound.{s}");

    // Topology.
    let admin = connect(&a.url, "ceiling-admin").await?;
    let ch = admin.create_channel().await?;
    for (name, kind) in [
        (&in_ex, lapin::ExchangeKind::Direct),
        (&out_ex, lapin::ExchangeKind::Direct),
        (&dlx, lapin::ExchangeKind::Topic),
    ] {
        ch.exchange_declare(
            ShortString::from(name.as_str()),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    }
    for s in 0..a.shards {
        ch.queue_declare(
            ShortString::from(shard_q(s)),
            QueueDeclareOptions::durable(),
            quorum_args(&dlx, 20_000, true),
        )
        .await?;
        ch.queue_bind(
            ShortString::from(shard_q(s)),
            ShortString::from(in_ex.as_str()),
            ShortString::from(s.to_string()),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    ch.queue_declare(
        ShortString::from(out_q.as_str()),
        QueueDeclareOptions::durable(),
        quorum_args(&dlx, 1_000_000, false),
    )
    .await?;
    ch.queue_bind(
        ShortString::from(out_q.as_str()),
        ShortString::from(out_ex.as_str()),
        ShortString::from("out"),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    let sink = Arc::new(Sink {
        epoch: Instant::now(),
        e2e: std::sync::Mutex::new(new_hist()?),
        confirm: std::sync::Mutex::new(new_hist()?),
        measured_done: AtomicU64::new(0),
        warm_done: AtomicU64::new(0),
        last_done_ns: AtomicU64::new(0),
        notify: Notify::new(),
    });

    // "helpdesk": final consumer.
    let helpdesk = connect(&a.url, "ceiling-helpdesk").await?;
    let hch = helpdesk.create_channel().await?;
    hch.basic_qos(a.prefetch, BasicQosOptions::default())
        .await?;
    let mut final_consumer = hch
        .basic_consume(
            ShortString::from(out_q.as_str()),
            ShortString::from("helpdesk"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    {
        let sink = Arc::clone(&sink);
        tokio::spawn(async move {
            while let Some(Ok(d)) = final_consumer.next().await {
                if d.data.len() >= 18 && d.data[17] == 1 {
                    let now_ns = sink.epoch.elapsed().as_nanos() as u64;
                    let mut sched = [0u8; 8];
                    sched.copy_from_slice(&d.data[0..8]);
                    let sched_ns = u64::from_le_bytes(sched);
                    if d.data[16] == 1 {
                        let us = now_ns.saturating_sub(sched_ns) / 1000;
                        lock(&sink.e2e).saturating_record(us.clamp(1, MAX_US));
                        sink.last_done_ns.fetch_max(now_ns, Ordering::Relaxed);
                        sink.measured_done.fetch_add(1, Ordering::Release);
                    } else {
                        sink.warm_done.fetch_add(1, Ordering::Release);
                    }
                    sink.notify.notify_waiters();
                }
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
        });
    }

    // "router": one consumer channel per shard; each delivery handled concurrently.
    let router = connect(&a.url, "ceiling-router").await?;
    let router_pub = Arc::new(Publishers {
        channels: confirm_channels(&router, a.publish_channels).await?,
        next: AtomicUsize::new(0),
        errors: AtomicU64::new(0),
    });
    for s in 0..a.shards {
        let cch = router.create_channel().await?;
        cch.basic_qos(a.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = cch
            .basic_consume(
                ShortString::from(shard_q(s)),
                ShortString::from(format!("router-{s}")),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let publishers = Arc::clone(&router_pub);
        let out_ex = out_ex.clone();
        tokio::spawn(async move {
            let _keep = cch;
            while let Some(Ok(d)) = consumer.next().await {
                let publishers = Arc::clone(&publishers);
                let out_ex = out_ex.clone();
                tokio::spawn(async move {
                    let mut data = d.data;
                    let id = format!(
                        "{}-ev",
                        u64::from_le_bytes(
                            data.get(8..16)
                                .and_then(|b| b.try_into().ok())
                                .unwrap_or([0; 8]),
                        )
                    );
                    for i in 0..k {
                        if data.len() >= 18 {
                            data[17] = u8::from(i + 1 == k);
                        }
                        publishers.publish(&out_ex, "out", &id, &data).await;
                    }
                    let _ = d.acker.ack(BasicAckOptions::default()).await;
                });
            }
        });
    }

    // "gateway": publishers.
    let gateway = connect(&a.url, "ceiling-gateway").await?;
    let gw = Arc::new(Publishers {
        channels: confirm_channels(&gateway, a.publish_channels).await?,
        next: AtomicUsize::new(0),
        errors: AtomicU64::new(0),
    });

    let send = |seq: u64, sched: Instant, measured: bool| {
        let gw = Arc::clone(&gw);
        let sink = Arc::clone(&sink);
        let in_ex = in_ex.clone();
        let shards = a.shards.max(1);
        let size = a.body_bytes;
        async move {
            let sched_ns = sched.saturating_duration_since(sink.epoch).as_nanos() as u64;
            let b = body(size, sched_ns, seq, measured);
            let key = (seq % u64::from(shards)).to_string();
            let id = format!("{}{seq}", if measured { "m" } else { "w" });
            let ok = gw.publish(&in_ex, &key, &id, &b).await;
            if ok && measured {
                let us = sched.elapsed().as_micros() as u64;
                lock(&sink.confirm).saturating_record(us.clamp(1, MAX_US));
            }
            ok
        }
    };

    // Warm-up at max rate.
    if a.warmup > 0 {
        let sem = Arc::new(Semaphore::new(a.inflight.max(1)));
        for i in 0..a.warmup {
            let permit = Arc::clone(&sem).acquire_owned().await?;
            let fut = send(i, Instant::now(), false);
            tokio::spawn(async move {
                fut.await;
                drop(permit);
            });
        }
        let deadline = Instant::now() + Duration::from_secs_f64(a.drain_secs);
        while sink.warm_done.load(Ordering::Acquire) < a.warmup && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Measured phase.
    let broker = broker_pid();
    let load_before = loadavg();
    let cpu0 = cpu_secs(None)?;
    let bcpu0 = broker.map(|p| cpu_secs(Some(p))).transpose()?;
    let machine0 = machine_busy_secs();
    let start = Instant::now();
    let stop_at = a.duration.map(|d| start + Duration::from_secs_f64(d));
    let mut sent: u64 = 0;
    let publish_failed = Arc::new(AtomicU64::new(0));
    match rate {
        None => {
            let sem = Arc::new(Semaphore::new(a.inflight.max(1)));
            loop {
                if total.is_some_and(|t| sent >= t) || stop_at.is_some_and(|s| Instant::now() >= s)
                {
                    break;
                }
                let permit = Arc::clone(&sem).acquire_owned().await?;
                let fut = send(sent, Instant::now(), true);
                let failed = Arc::clone(&publish_failed);
                tokio::spawn(async move {
                    if !fut.await {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                });
                sent += 1;
            }
            // Wait for the last confirms.
            let _ = sem.acquire_many(a.inflight.max(1) as u32).await;
        }
        Some(r) => {
            let interval = 1.0 / r;
            loop {
                if total.is_some_and(|t| sent >= t) {
                    break;
                }
                let due = start + Duration::from_secs_f64(sent as f64 * interval);
                if stop_at.is_some_and(|s| due >= s) {
                    break;
                }
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                let fut = send(sent, due, true);
                let failed = Arc::clone(&publish_failed);
                tokio::spawn(async move {
                    if !fut.await {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
                sent += 1;
            }
        }
    }
    let sent_done = Instant::now();
    let expected = sent.saturating_sub(publish_failed.load(Ordering::Relaxed));
    let deadline = Instant::now() + Duration::from_secs_f64(a.drain_secs);
    while sink.measured_done.load(Ordering::Acquire) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu1 = cpu_secs(None)?;
    let bcpu1 = broker.map(|p| cpu_secs(Some(p))).transpose()?;
    let machine1 = machine_busy_secs();
    let window = start.elapsed().as_secs_f64();
    let load_after = loadavg();
    let done = sink.measured_done.load(Ordering::Acquire);
    let start_ns = start.saturating_duration_since(sink.epoch).as_nanos() as u64;
    let span = (sink
        .last_done_ns
        .load(Ordering::Relaxed)
        .saturating_sub(start_ns)) as f64
        / 1e9;
    let send_span = sent_done.duration_since(start).as_secs_f64();
    let per_msg = |secs: f64| secs * 1e6 / (done.max(1) as f64);
    let report = json!({
        "label": a.label,
        "kind": "amqp_ceiling",
        "rate": a.rate,
        "config": {
            "messages": sent, "shards": a.shards, "prefetch": a.prefetch,
            "inflight": a.inflight, "publish_channels": a.publish_channels,
            "serial_publishes": k, "body_bytes": a.body_bytes, "warmup": a.warmup,
        },
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "sent": sent,
        "publish_failed": publish_failed.load(Ordering::Relaxed),
        "router_publish_failed": router_pub.errors.load(Ordering::Relaxed),
        "delivered": done,
        "send_s": send_span,
        "elapsed_s": span,
        "publish_per_s": sent as f64 / send_span.max(1e-9),
        "delivered_per_s": done as f64 / span.max(1e-9),
        "e2e": pct(&lock(&sink.e2e)),
        "publish_confirm": pct(&lock(&sink.confirm)),
        "cpu": {
            "process_s": cpu1 - cpu0,
            "process_us_per_msg": per_msg(cpu1 - cpu0),
            "broker_s": bcpu0.zip(bcpu1).map(|(b0, b1)| b1 - b0),
            "broker_us_per_msg": bcpu0.zip(bcpu1).map(|(b0, b1)| per_msg(b1 - b0)),
            "window_s": window,
            "machine_busy_s": machine1 - machine0,
            // Everything but this process and the broker, as a share of the machine.
            "others_share": ((machine1 - machine0) - (cpu1 - cpu0)
                - bcpu0.zip(bcpu1).map_or(0.0, |(b0, b1)| b1 - b0)).max(0.0)
                / (window * cpus() as f64).max(1e-9),
        },
        "memory": { "rss_mib": status_kib("VmRSS:") as f64 / 1024.0, "hwm_mib": status_kib("VmHWM:") as f64 / 1024.0 },
    });

    // Clean up our queues (the vhost is deleted by the script anyway).
    for s in 0..a.shards {
        let _ = ch
            .queue_delete(ShortString::from(shard_q(s)), QueueDeleteOptions::default())
            .await;
    }
    let _ = ch
        .queue_delete(
            ShortString::from(out_q.as_str()),
            QueueDeleteOptions::default(),
        )
        .await;
    for c in [&gateway, &router, &helpdesk, &admin] {
        let _ = c.close(200, ShortString::from("done")).await;
    }

    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &a.json_out {
        std::fs::write(path, format!("{text}\n"))?;
    }
    println!("{text}");
    if done < expected {
        bail!("only {done} of {expected} measured messages arrived within the drain time");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// watch

/// `<run>-m<digits>`: a measured-phase user of switchyard-bench.
fn measured_user(external_id: &str) -> bool {
    match external_id.rfind('-') {
        Some(i) => {
            let rest = &external_id[i + 1..];
            rest.len() > 1 && rest.starts_with('m') && rest[1..].bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn ts(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn us_between(a: DateTime<Utc>, b: DateTime<Utc>) -> u64 {
    (b - a).num_microseconds().unwrap_or(0).max(1) as u64
}

async fn watch(a: WatchArgs) -> anyhow::Result<()> {
    let conn = connect(&a.url, "switchyard-bench-watch").await?;
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let qname = q.name().clone();
    let mut keys: Vec<String> = vec!["message.received".into(), "conversation.assigned".into()];
    keys.extend(a.also_bind.iter().cloned());
    for key in &keys {
        ch.queue_bind(
            qname.clone(),
            ShortString::from("switchyard.events"),
            ShortString::from(key.as_str()),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding to switchyard.events (is the gateway up?)")?;
    }
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            qname,
            ShortString::from("watch"),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    if let Some(path) = &a.ready_file {
        std::fs::write(path, "ready\n")?;
    }
    // conversation -> received_at of its first message (measured users); conversation ->
    // (assigned_at, observed) when the assignment came first; conversations assigned already
    // (their later messages measure nothing).
    let mut received: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut early: HashMap<String, (DateTime<Utc>, DateTime<Utc>)> = HashMap::new();
    let mut assigned: HashSet<String> = HashSet::new();
    let expect_messages = a.expect_messages.or(a.expect);
    let mut to_assigned = new_hist()?;
    let mut to_observed = new_hist()?;
    let mut routed_lag = new_hist()?;
    let mut types: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut n_received: u64 = 0;
    let mut n_assigned: u64 = 0;
    let mut first_received: Option<DateTime<Utc>> = None;
    let mut last_assigned: Option<DateTime<Utc>> = None;
    let mut last_observed: Option<DateTime<Utc>> = None;
    let mut last_received_observed: Option<DateTime<Utc>> = None;
    let mut last_event = Instant::now();
    let started = Instant::now();
    let idle = Duration::from_secs_f64(a.idle_secs);
    let max = Duration::from_secs_f64(a.max_secs);
    loop {
        if a.expect.is_some_and(|e| n_assigned >= e)
            && expect_messages.is_none_or(|e| n_received >= e)
        {
            break;
        }
        if started.elapsed() > max || (n_received > 0 && last_event.elapsed() > idle) {
            break;
        }
        let next = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
        let d = match next {
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(Err(e))) => bail!("consumer: {e}"),
            Ok(Some(Ok(d))) => d,
        };
        let observed: DateTime<Utc> = SystemTime::now().into();
        let Ok(ev) = serde_json::from_slice::<Value>(&d.data) else {
            continue;
        };
        let ty = ev.get("type").and_then(Value::as_str).unwrap_or_default();
        *types.entry(ty.to_owned()).or_default() += 1;
        let event_time = ts(&ev["time"]);
        if ty.ends_with("message.received") {
            let m = &ev["data"]["message"];
            let user = m["sender"]["external_id"].as_str().unwrap_or_default();
            if !measured_user(user) {
                continue;
            }
            last_event = Instant::now();
            let (Some(conv), Some(at)) = (m["conversation_id"].as_str(), ts(&m["received_at"]))
            else {
                continue;
            };
            n_received += 1;
            last_received_observed = Some(observed);
            first_received = Some(first_received.map_or(at, |f| f.min(at)));
            if let Some(t) = event_time {
                routed_lag.saturating_record(us_between(at, t).min(MAX_US));
            }
            if let Some((assigned_at, obs)) = early.remove(conv) {
                assigned.insert(conv.to_owned());
                to_assigned.saturating_record(us_between(at, assigned_at).min(MAX_US));
                to_observed.saturating_record(us_between(at, obs).min(MAX_US));
            } else if !assigned.contains(conv) {
                // Only a conversation's first message waits for its assignment.
                received.entry(conv.to_owned()).or_insert(at);
            }
        } else if ty.ends_with("conversation.assigned") {
            let c = &ev["data"]["conversation"];
            let user = c["recipient"]["external_id"].as_str().unwrap_or_default();
            if !measured_user(user) {
                continue;
            }
            last_event = Instant::now();
            let (Some(conv), Some(assigned_at)) = (c["id"].as_str(), ts(&c["assigned_at"])) else {
                continue;
            };
            n_assigned += 1;
            last_assigned = Some(last_assigned.map_or(assigned_at, |l| l.max(assigned_at)));
            last_observed = Some(observed);
            match received.remove(conv) {
                Some(at) => {
                    assigned.insert(conv.to_owned());
                    to_assigned.saturating_record(us_between(at, assigned_at).min(MAX_US));
                    to_observed.saturating_record(us_between(at, observed).min(MAX_US));
                }
                None => {
                    early.insert(conv.to_owned(), (assigned_at, observed));
                }
            }
        }
    }
    let seconds_between =
        |first: Option<DateTime<Utc>>, last: Option<DateTime<Utc>>| match (first, last) {
            (Some(f), Some(l)) => (l - f).num_microseconds().unwrap_or(0) as f64 / 1e6,
            _ => 0.0,
        };
    let span = seconds_between(first_received, last_observed);
    let messages_span = seconds_between(first_received, last_received_observed);
    let report = json!({
        "kind": "switchyard_watch",
        "received": n_received,
        "assigned": n_assigned,
        "unmatched": received.len() + early.len(),
        "first_received_at": first_received.map(|t| t.to_rfc3339()),
        "last_assigned_at": last_assigned.map(|t| t.to_rfc3339()),
        "last_observed_at": last_observed.map(|t| t.to_rfc3339()),
        "span_s": span,
        "assigned_per_s": if span > 0.0 { n_assigned as f64 / span } else { 0.0 },
        "messages_per_s": if messages_span > 0.0 { n_received as f64 / messages_span } else { 0.0 },
        "received_to_assigned": pct(&to_assigned),
        "received_to_observed": pct(&to_observed),
        "received_to_message_received_event": pct(&routed_lag),
        "event_types_seen": types,
        "cpu_s": cpu_secs(None).unwrap_or(0.0),
    });
    let _ = conn.close(200, ShortString::from("done")).await;
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &a.json_out {
        std::fs::write(path, format!("{text}\n"))?;
    }
    println!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::measured_user;

    #[test]
    fn measured_users() {
        assert!(measured_user("r20260101-abc-m12"));
        assert!(!measured_user("r20260101-abc-w12"));
        assert!(!measured_user("r-m"));
        assert!(!measured_user("nobody"));
    }
}
