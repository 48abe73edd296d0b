//! `switchyard-bench`: a load generator for Switchyard's API channel.
//!
//! By default it starts Switchyard in this process (embedded bus and store, plus an `api`
//! channel on 127.0.0.1:0), registers agents over REST, sends signed messages from many users
//! over many connections, and reports accepted msg/s, HTTP latency, ingress-to-assignment
//! latency (from the `conversation.assigned` events), CPU per message and memory. With
//! `--target URL --secret S --channel ID` it drives a running server instead (HTTP figures and
//! the server's own metrics only). See docs/benchmarks.md.

mod load;
mod prom;
mod report;
mod sys;
mod watch;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use reqwest::{Client, Url};
use switchyard_core::bus::Bus;
use switchyard_core::config::Settings;
use switchyard_router::{App, Role};

use crate::load::{Endpoint, Plan, Rate};
use crate::prom::Scrape;
use crate::report::{Assignment, Cpu, Http, Machine, Mem, Percentiles, Report, RunConfig};
use crate::watch::Watch;

/// Name prefix of the in-process server runtime's threads (for CPU accounting).
const SERVER_THREADS: &str = "sy-server";

#[derive(Debug, Parser)]
#[command(
    name = "switchyard-bench",
    version,
    about = "Load generator for Switchyard's API channel (in-process by default, or --target)"
)]
struct Args {
    /// Messages to send in the measured phase [default: 100000, or unlimited with --duration].
    #[arg(long)]
    messages: Option<u64>,
    /// Send for this many seconds (with --messages too, whichever ends first).
    #[arg(long)]
    duration: Option<f64>,
    /// `max` (as fast as possible) or a fixed rate in messages per second, scheduled
    /// open-loop (latency is measured from each message's scheduled send time).
    #[arg(long, default_value = "max")]
    rate: Rate,
    /// Concurrent requests, each on its own keep-alive connection.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Consecutive messages per user: 1 = every message comes from a new user and opens (and
    /// assigns) a conversation; 10 = one conversation per 10 messages.
    #[arg(long, default_value_t = 1)]
    messages_per_user: u64,
    /// Agents registered in pool `default` before the run.
    #[arg(long, default_value_t = 50)]
    agents: u32,
    /// Capacity of each agent (the server allows at most 1000). When the run will open more
    /// conversations than agents x capacity, more agents are registered so that assignment
    /// never waits for room.
    #[arg(long, default_value_t = 1_000)]
    agent_capacity: u32,
    /// Do not register agents (the target already has them).
    #[arg(long)]
    skip_agents: bool,
    /// Messages sent (as fast as possible, unmeasured) before the measured phase, to open
    /// connections and warm allocators.
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
    /// Seconds to wait after sending for outstanding assignments (in-process).
    #[arg(long, default_value_t = 60.0)]
    drain_secs: f64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout_secs: f64,
    /// Pacer granularity for fixed rates, in microseconds.
    #[arg(long, default_value_t = 100)]
    tick_us: u64,
    /// Sign every request inside the timed section instead of before it.
    #[arg(long)]
    no_presign: bool,

    /// In-process: a configuration file instead of the embedded default plus an `api`
    /// channel (it must define an `api` channel; --channel picks one).
    #[arg(long, conflicts_with = "target")]
    config: Option<PathBuf>,
    /// In-process: inbound shard queues [default: the configuration's, 16].
    #[arg(long, conflicts_with = "target")]
    shards: Option<u16>,
    /// In-process: worker threads of the server's runtime [default: CPUs].
    #[arg(long, conflicts_with = "target")]
    server_threads: Option<usize>,
    /// Worker threads of the load generator's runtime [default: CPUs].
    #[arg(long)]
    client_threads: Option<usize>,

    /// Drive a running server at this base URL (e.g. http://127.0.0.1:8080) instead.
    #[arg(long, requires_all = ["secret", "channel"])]
    target: Option<String>,
    /// The API channel's secret (external mode).
    #[arg(long, env = "SWITCHYARD_BENCH_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The API channel's id.
    #[arg(long)]
    channel: Option<String>,
    /// API key for agent registration (`Authorization: Bearer`), when the server has keys.
    #[arg(long, env = "SWITCHYARD_BENCH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// External mode: the server's process id on this machine, to report its CPU and memory.
    #[arg(long, requires = "target")]
    server_pid: Option<u32>,
    /// Allow a --target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,

    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// A label for the report.
    #[arg(long)]
    label: Option<String>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if self.messages_per_user == 0 {
            bail!("--messages-per-user must be at least 1");
        }
        if self.messages == Some(0) {
            bail!("--messages must be at least 1");
        }
        if let Some(d) = self.duration
            && !(d.is_finite() && d > 0.0)
        {
            bail!("--duration must be a positive number of seconds");
        }
        if !(self.timeout_secs.is_finite() && self.timeout_secs > 0.0) {
            bail!("--timeout-secs must be positive");
        }
        if !(self.drain_secs.is_finite() && self.drain_secs >= 0.0) {
            bail!("--drain-secs must not be negative");
        }
        Ok(())
    }

    /// Messages of the measured phase, if bounded by a count.
    fn total(&self) -> Option<u64> {
        match (self.messages, self.duration) {
            (Some(m), _) => Some(m),
            (None, Some(_)) => None,
            (None, None) => Some(100_000),
        }
    }

    /// Agents to register: `--agents`, raised so that every conversation the run opens finds
    /// room (when the count is known).
    fn agents_needed(&self) -> u32 {
        let per_user = self.messages_per_user.max(1);
        let conversations = self
            .known_count()
            .map(|n| n.div_ceil(per_user) + self.warmup.div_ceil(per_user));
        let needed = conversations
            .map(|c| c.div_ceil(u64::from(self.agent_capacity.max(1))))
            .unwrap_or(0);
        u32::try_from(needed).unwrap_or(u32::MAX).max(self.agents)
    }

    /// Messages the measured phase will send, when known in advance.
    fn known_count(&self) -> Option<u64> {
        match self.rate {
            Rate::Max => self.total(),
            Rate::PerSec(r) => {
                let by_time = self.duration.map(|d| (r * d).ceil() as u64);
                match (self.total(), by_time) {
                    (Some(t), Some(b)) => Some(t.min(b)),
                    (t, b) => t.or(b),
                }
            }
        }
    }
}

/// Where to send.
struct Target {
    base: Url,
    channel: String,
    secret: String,
    api_key: Option<String>,
}

/// In-process extras.
struct InProcess {
    bus: Arc<dyn Bus>,
    shards: u16,
    server_threads: usize,
    queue_capacity: usize,
}

/// The allocator the `switchyard` binary uses, so the in-process server measures as it runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    args.validate()?;
    let client_threads = args.client_threads.unwrap_or_else(sys::cpus).max(1);
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .context("building the client runtime")?;

    let report = match &args.target {
        Some(url) => {
            let base = Url::parse(url).with_context(|| format!("--target `{url}`"))?;
            if base.scheme() != "http" {
                bail!(
                    "--target `{url}`: the load generator speaks plain http:// only (https is not supported)"
                );
            }
            if !is_loopback(&base) && !args.allow_remote {
                bail!(
                    "--target `{url}` is not a loopback address; pass --allow-remote to load a server you own elsewhere"
                );
            }
            let target = Target {
                base,
                channel: args.channel.clone().context("--channel is required")?,
                secret: args.secret.clone().context("--secret is required")?,
                api_key: args.api_key.clone(),
            };
            client_rt.block_on(drive(&args, target, None, client_threads))?
        }
        None => {
            let server_threads = args.server_threads.unwrap_or_else(sys::cpus).max(1);
            let server_rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(server_threads)
                .thread_name(SERVER_THREADS)
                .enable_all()
                .build()
                .context("building the server runtime")?;
            let (settings, channel, secret) = in_process_settings(&args)?;
            let inproc = InProcess {
                bus: Arc::new(switchyard_core::bus::embedded::EmbeddedBus::new(
                    Duration::from_millis(settings.bus.publish_timeout_ms),
                )),
                shards: settings.bus.shards,
                server_threads,
                queue_capacity: settings.bus.queue_capacity,
            };
            let app = server_rt
                .block_on(async {
                    let metrics = switchyard_core::metrics::Metrics::new()
                        .context("creating the metrics registry")?;
                    let store = Arc::new(switchyard_core::store::embedded::EmbeddedStore::new());
                    App::start_with(settings, Role::All, Arc::clone(&inproc.bus), store, metrics)
                        .await
                })
                .context("starting Switchyard in-process")?;
            let addr = app.addr.context("the in-process server is not listening")?;
            let target = Target {
                base: Url::parse(&format!("http://{addr}/")).context("server address")?,
                channel,
                secret,
                api_key: args.api_key.clone(),
            };
            let result = client_rt.block_on(drive(&args, target, Some(inproc), client_threads));
            if let Err(e) = server_rt.block_on(app.stop()) {
                eprintln!("warning: the in-process server stopped with an error: {e:#}");
            }
            server_rt.shutdown_timeout(Duration::from_secs(2));
            result?
        }
    };
    client_rt.shutdown_timeout(Duration::from_secs(2));

    let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The embedded default plus an `api` channel on 127.0.0.1:0 (or `--config`), and the api
/// channel's id and secret.
fn in_process_settings(args: &Args) -> anyhow::Result<(Settings, String, String)> {
    let no_env: Vec<(String, String)> = Vec::new();
    let mut settings = match &args.config {
        Some(path) => Settings::load_with_env(Some(path), no_env)
            .with_context(|| format!("loading {}", path.display()))?,
        None => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let channel = args.channel.as_deref().unwrap_or("bench");
            let secret = format!("bench-secret-{nanos:032x}");
            Settings::embedded_with_api_channel(channel, &secret)
                .context("building the in-process configuration")?
        }
    };
    if let Some(shards) = args.shards {
        settings.bus.shards = shards.max(1);
    }
    settings
        .validate()
        .context("validating the configuration")?;
    let channel = settings
        .channels
        .iter()
        .find(|c| c.kind == "api" && args.channel.as_ref().is_none_or(|id| *id == c.id))
        .context("the configuration defines no `api` channel (or none with the --channel id)")?;
    let secret = channel
        .required_secret("secret")
        .context("the api channel's secret")?;
    let id = channel.id.clone();
    Ok((settings, id, secret))
}

fn run_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("b{millis:x}")
}

async fn register_agents(
    client: &Client,
    target: &Target,
    args: &Args,
    agents: u32,
) -> anyhow::Result<()> {
    for i in 0..agents {
        let url = target
            .base
            .join(&format!("v1/agents/bench-agent-{i}"))
            .context("agent URL")?;
        let body = serde_json::json!({
            "name": format!("Bench agent {i}"),
            "pools": ["default"],
            "capacity": args.agent_capacity,
            "status": "online",
        });
        let mut request = client.put(url).json(&body);
        if let Some(key) = &target.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.context("registering an agent")?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("PUT /v1/agents/bench-agent-{i} answered {status}: {text}");
        }
    }
    Ok(())
}

async fn scrape(client: &Client, target: &Target) -> Option<Scrape> {
    let url = target.base.join("metrics").ok()?;
    let response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    Some(Scrape::parse(&response.text().await.ok()?))
}

fn progress_task(
    done: Arc<AtomicU64>,
    expected: Option<u64>,
    quiet: bool,
) -> Option<tokio::task::JoinHandle<()>> {
    if quiet {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut last = 0;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let now = done.load(Ordering::Relaxed);
            match expected {
                Some(e) => eprintln!("  … {now}/{e} answered ({} /s)", now - last),
                None => eprintln!("  … {now} answered ({} /s)", now - last),
            }
            last = now;
        }
    }))
}

async fn drive(
    args: &Args,
    target: Target,
    inproc: Option<InProcess>,
    client_threads: usize,
) -> anyhow::Result<Report> {
    let client = Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs_f64(args.timeout_secs))
        .build()
        .context("building the HTTP client")?;
    let health = target.base.join("healthz").context("health URL")?;
    let response = client
        .get(health)
        .send()
        .await
        .with_context(|| format!("reaching {}", target.base))?;
    if !response.status().is_success() {
        bail!("{} answered {} to /healthz", target.base, response.status());
    }
    let agents = if args.skip_agents {
        0
    } else {
        args.agents_needed()
    };
    if agents > 0 {
        register_agents(&client, &target, args, agents).await?;
    }
    let endpoint = Endpoint {
        url: target
            .base
            .join(&format!("v1/channels/{}/messages", target.channel))
            .context("messages URL")?,
        secret: Arc::from(target.secret.as_bytes()),
        timeout: Duration::from_secs_f64(args.timeout_secs),
    };
    // The load engine's own keep-alive connections (one per worker), opened by the warm-up and
    // reused by the measured phase; `client` is only for /healthz, agents and /metrics.
    let connections = load::Connections::default();
    let run_id = run_id();
    let watch = match &inproc {
        Some(p) => {
            let watch = Arc::new(Watch::new(&run_id)?);
            watch.start(Arc::clone(&p.bus)).await?;
            Some(watch)
        }
        None => None,
    };
    let tick = Duration::from_micros(args.tick_us.max(1));
    let drain = Duration::from_secs_f64(args.drain_secs);

    // Warm-up: unmeasured, as fast as possible.
    if args.warmup > 0 {
        if !args.quiet {
            eprintln!("warm-up: {} messages", args.warmup);
        }
        let plan = Plan {
            run_id: run_id.clone(),
            phase: 'w',
            total: Some(args.warmup),
            duration: None,
            rate: Rate::Max,
            connections: args.connections,
            messages_per_user: args.messages_per_user,
            tick,
        };
        let warm = load::run(
            plan,
            endpoint.clone(),
            connections.clone(),
            None,
            None,
            Arc::new(AtomicU64::new(0)),
        )
        .await?;
        if warm.accepted == 0 {
            bail!(
                "no warm-up message was accepted; errors: {:?} (wrong --secret or --channel?)",
                warm.errors
            );
        }
        if let Some(w) = &watch {
            w.wait_for_warmup(warm.conversations_opened, drain).await;
        }
    }

    let plan = Plan {
        run_id: run_id.clone(),
        phase: 'm',
        total: args.total(),
        duration: args.duration.map(Duration::from_secs_f64),
        rate: args.rate,
        connections: args.connections,
        messages_per_user: args.messages_per_user,
        tick,
    };
    // Pre-sign when the count is known and every timestamp stays inside the 300 s window.
    let known = args.known_count();
    let expected_secs = match (args.rate, known) {
        (Rate::PerSec(r), Some(n)) => n as f64 / r,
        _ => 0.0,
    };
    let presign =
        !args.no_presign && known.is_some_and(|n| n <= 5_000_000) && expected_secs < 240.0;
    let prepared = match (presign, known) {
        (true, Some(n)) => {
            if !args.quiet {
                eprintln!("pre-signing {n} messages");
            }
            Some(Arc::new(load::prepare_all(&plan, &endpoint.secret, n)?))
        }
        _ => None,
    };

    let calibration_us = sys::calibrate();
    let before = scrape(&client, &target).await;
    let mem_before = sys::memory()?;
    let server_prefix = if inproc.is_some() { SERVER_THREADS } else { "" };
    let cpu_before = sys::cpu(server_prefix)?;
    let server_cpu_before = args.server_pid.map(sys::process_cpu).transpose()?;
    let machine_before = sys::machine_cpu()?;
    let window_start = Instant::now();
    if !args.quiet {
        eprintln!("measuring: rate {} ({run_id})", args.rate);
    }
    let done = Arc::new(AtomicU64::new(0));
    let progress = progress_task(Arc::clone(&done), known, args.quiet);
    let result = load::run(
        plan,
        endpoint,
        connections,
        prepared,
        watch.as_ref().map(|w| Arc::clone(&w.measured)),
        done,
    )
    .await;
    if let Some(p) = &progress {
        p.abort();
    }
    let stats = result?;
    let drained = match &watch {
        Some(w) => {
            if !args.quiet && w.assigned.load(Ordering::Acquire) < stats.conversations_opened {
                eprintln!("draining outstanding assignments");
            }
            w.wait_for(stats.conversations_opened, drain).await
        }
        None => true,
    };
    let window = window_start.elapsed();
    let cpu = sys::cpu(server_prefix)?.since(&cpu_before);
    let server_cpu = match (args.server_pid, server_cpu_before) {
        (Some(pid), Some(before)) => Some(sys::process_cpu(pid)?.saturating_sub(before)),
        _ => None,
    };
    let server_mem = args.server_pid.map(sys::memory_of).transpose()?;
    let machine_after = sys::machine_cpu()?;
    let mem_after = sys::memory()?;
    let after = scrape(&client, &target).await;

    // Assemble the report.
    let elapsed = stats.elapsed().as_secs_f64().max(1e-9);
    let http = Http {
        sent: stats.sent,
        unsent: stats.unsent,
        accepted: stats.accepted,
        duplicates: stats.duplicates,
        errors: stats.errors.clone(),
        elapsed_s: elapsed,
        accepted_per_s: stats.accepted as f64 / elapsed,
        latency: Percentiles::of(&stats.latency),
        service: Percentiles::of(&stats.service),
    };
    let assignment = watch.as_ref().map(|w| {
        let assigned = w.assigned.load(Ordering::Acquire);
        let last = w.last_assigned().unwrap_or(stats.finished);
        let span = last.saturating_duration_since(stats.started).as_secs_f64();
        let backlog = last.saturating_duration_since(stats.finished).as_secs_f64();
        Assignment {
            conversations_opened: stats.conversations_opened,
            assigned,
            missing: stats.conversations_opened.saturating_sub(assigned),
            elapsed_s: span,
            assigned_per_s: if span > 0.0 {
                assigned as f64 / span
            } else {
                0.0
            },
            backlog_s: backlog,
            latency: Percentiles::of(&w.latency()),
            unmatched: w.unmatched.load(Ordering::Relaxed),
        }
    });
    let server = match (before, after) {
        (Some(b), Some(a)) => {
            let d = a.since(&b);
            let ms = |name: &str, q: f64| d.quantile(name, q).map(|s| s * 1000.0);
            Some(report::ServerView {
                inbound_accepted: d.sum(
                    "switchyard_inbound_messages_total",
                    &[("channel", &target.channel), ("outcome", "accepted")],
                ),
                routed: d.sum("switchyard_router_messages_total", &[("outcome", "routed")]),
                ingress_to_assignment_p50_ms: ms("switchyard_ingress_to_assignment_seconds", 0.5),
                ingress_to_assignment_p99_ms: ms("switchyard_ingress_to_assignment_seconds", 0.99),
                ingress_publish_p50_ms: ms("switchyard_ingress_publish_seconds", 0.5),
                ingress_publish_p99_ms: ms("switchyard_ingress_publish_seconds", 0.99),
            })
        }
        _ => None,
    };
    let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / stats.accepted.max(1) as f64;
    let cpus = sys::cpus();
    let machine_capacity = window.as_secs_f64().max(1e-9) * cpus as f64;
    let machine_busy = machine_after.0.saturating_sub(machine_before.0);
    let machine_utilisation = (machine_busy.as_secs_f64() / machine_capacity).min(1.0);
    let ours = cpu.process + server_cpu.unwrap_or_default();
    let others_utilisation =
        (machine_busy.saturating_sub(ours).as_secs_f64() / machine_capacity).min(1.0);
    let (server_s, client_s) = match (&inproc, server_cpu) {
        (Some(_), _) => (
            Some(cpu.server),
            Some(cpu.process.saturating_sub(cpu.server)),
        ),
        (None, Some(server)) => (Some(server), Some(cpu.process)),
        (None, None) => (None, None),
    };
    let all_us_per_msg = per_msg(ours);
    let cpu_report = Cpu {
        cpu_bound_ceiling_per_s: (server_s.is_some() && all_us_per_msg > 0.0)
            .then(|| cpus as f64 * 1e6 / all_us_per_msg),
        machine_utilisation,
        others_utilisation,
        window_s: window.as_secs_f64(),
        process_s: cpu.process.as_secs_f64(),
        process_us_per_msg: per_msg(cpu.process),
        utilisation: cpu.process.as_secs_f64() / window.as_secs_f64().max(1e-9) / cpus as f64,
        server_s: server_s.map(|d| d.as_secs_f64()),
        server_us_per_msg: server_s.map(per_msg),
        client_us_per_msg: client_s.map(per_msg),
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    let memory = Mem {
        rss_before_mib: mib(mem_before.rss_kib),
        rss_after_mib: mib(mem_after.rss_kib),
        peak_mib: mib(mem_after.hwm_kib),
        server_rss_after_mib: server_mem.map(|m| mib(m.rss_kib)),
        server_peak_mib: server_mem.map(|m| mib(m.hwm_kib)),
    };

    let mut notes = Vec::new();
    if let Some(p) = &inproc {
        notes.push(format!(
            "In-process mode: the load generator and the server share this machine's {cpus} CPUs (and one process), so the generator's own work (HTTP client, event watcher) competes with the server; a server on its own cores would do better. CPU is split by thread: the server runtime's threads (`{SERVER_THREADS}*`) vs the rest."
        ));
        notes.push(format!(
            "HTTP 202 means the message is on the bus (publisher confirm), not yet routed; the {} inbound shard queues hold up to {} messages each, so accepted msg/s can exceed routing throughput for a while: compare with assignments/s.",
            p.shards, p.queue_capacity
        ));
    } else {
        notes.push(format!(
            "External mode: ingress-to-assignment is only available from the server's own histogram (bucket-interpolated, from the conversation's creation in the router); {}",
            if args.server_pid.is_some() {
                "server CPU and memory are read from /proc/<--server-pid>."
            } else {
                "CPU and memory figures are the load generator's only (pass --server-pid for the server's)."
            }
        ));
    }
    if let Rate::PerSec(r) = args.rate {
        notes.push(format!(
            "Open-loop at {r} msg/s: latency counts from each message's scheduled send time (no coordinated omission); the pacer releases messages every {} µs, which adds up to that much to latency.",
            args.tick_us
        ));
        if http.accepted_per_s < 0.95 * r || http.unsent > 0 {
            notes.push(format!(
                "The target rate was NOT sustained: {:.0} accepted msg/s of {r} asked; {} due messages were never sent. Latency then grows with the backlog for as long as the run lasts.",
                http.accepted_per_s, http.unsent
            ));
        }
    }
    if agents > args.agents {
        notes.push(format!(
            "{agents} agents were registered instead of {} so that agents x capacity ({}) covers every conversation of the run.",
            args.agents, args.agent_capacity
        ));
    }
    if args.known_count().is_none() {
        notes.push(format!(
            "With --duration at max rate the number of conversations is not known in advance: beyond {} agents x {} they stay queued (raise --agents).",
            args.agents, args.agent_capacity
        ));
    }
    if presign {
        notes.push("Requests were built and signed before the timed section.".to_owned());
    } else {
        notes.push("Requests were built and signed inside the timed section (HMAC-SHA256 per message counts as client CPU).".to_owned());
    }
    if others_utilisation > 0.05 {
        notes.push(format!(
            "Other processes (not this one{}) used {:.0}% of the machine during the run: these figures are pessimistic.",
            if args.server_pid.is_some() { " nor the server" } else { "" },
            others_utilisation * 100.0
        ));
    }
    if !drained {
        notes.push(format!(
            "Drain timed out after {:.0} s with assignments still missing.",
            args.drain_secs
        ));
    }
    if !stats.errors.is_empty() {
        notes.push(format!("Errors: {:?}", stats.errors));
    }
    notes.push("CPU from /proc/self/stat and /proc/self/task/*/stat (10 ms tick resolution); memory from /proc/self/status.".to_owned());

    Ok(Report {
        label: args.label.clone(),
        machine: Machine {
            cpus,
            cpu_model: sys::cpu_model(),
            calibration_us,
        },
        config: RunConfig {
            mode: if inproc.is_some() {
                "in-process".into()
            } else {
                "external".into()
            },
            target: target.base.to_string(),
            channel: target.channel.clone(),
            rate: args.rate.to_string(),
            messages: args.total(),
            duration_s: args.duration,
            connections: args.connections,
            messages_per_user: args.messages_per_user,
            agents,
            agent_capacity: args.agent_capacity,
            shards: inproc.as_ref().map(|p| p.shards),
            server_threads: inproc.as_ref().map(|p| p.server_threads),
            client_threads,
            warmup: args.warmup,
            presigned: presign,
        },
        http,
        assignment,
        server,
        cpu: cpu_report,
        memory,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1/",
            "http://[::1]:80",
            "http://127.1.2.3",
        ] {
            assert!(is_loopback(&Url::parse(ok).expect("url")), "{ok}");
        }
        for no in [
            "http://10.0.0.1",
            "http://example.com",
            "http://192.168.1.1",
        ] {
            assert!(!is_loopback(&Url::parse(no).expect("url")), "{no}");
        }
    }

    #[test]
    fn generated_settings_have_an_api_channel() {
        let args = Args::parse_from(["switchyard-bench", "--shards", "4"]);
        let (settings, channel, secret) = in_process_settings(&args).expect("settings");
        assert_eq!(channel, "bench");
        assert!(secret.len() >= 16);
        assert_eq!(settings.bus.shards, 4);
        assert_eq!(settings.server.listen.port(), 0);
    }

    #[test]
    fn counts() {
        let a = Args::parse_from(["b", "--rate", "5000", "--duration", "10"]);
        assert_eq!(a.total(), None);
        assert_eq!(a.known_count(), Some(50_000));
        let a = Args::parse_from(["b"]);
        assert_eq!(a.known_count(), Some(100_000));
        assert_eq!(a.agents_needed(), 102);
        let a = Args::parse_from(["b", "--duration", "3"]);
        assert_eq!(a.known_count(), None);
        assert_eq!(a.agents_needed(), 50);
    }
}
