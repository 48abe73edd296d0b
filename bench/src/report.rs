//! The report: a machine-readable structure (`--json`) and its human-readable rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Observations.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// CPU model.
    pub cpu_model: String,
    /// Speed probe just before the measured phase: µs per HMAC-SHA256 of 1 KiB on one thread
    /// (lower is faster; it rises when neighbours share the CPUs).
    pub calibration_us: f64,
}

/// What was asked for.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// `in-process` or `external`.
    pub mode: String,
    /// Base URL sent to.
    pub target: String,
    /// Channel id.
    pub channel: String,
    /// `max` or messages per second.
    pub rate: String,
    /// Messages planned (None = until the duration passed).
    pub messages: Option<u64>,
    /// Seconds planned.
    pub duration_s: Option<f64>,
    /// Concurrent requests.
    pub connections: usize,
    /// Consecutive messages per user.
    pub messages_per_user: u64,
    /// Agents registered.
    pub agents: u32,
    /// Capacity of each agent.
    pub agent_capacity: u32,
    /// Inbound shards (in-process).
    pub shards: Option<u16>,
    /// Server runtime worker threads (in-process).
    pub server_threads: Option<usize>,
    /// Client runtime worker threads.
    pub client_threads: usize,
    /// Warm-up messages sent before measuring.
    pub warmup: u64,
    /// Whether bodies were signed before the timed section.
    pub presigned: bool,
}

/// HTTP side.
#[derive(Debug, Clone, Serialize)]
pub struct Http {
    /// Requests sent.
    pub sent: u64,
    /// Fixed rate: messages due but not sent when the duration ended.
    pub unsent: u64,
    /// 202 answers.
    pub accepted: u64,
    /// 202 answers flagged duplicate.
    pub duplicates: u64,
    /// Failures by status code or transport error.
    pub errors: BTreeMap<String, u64>,
    /// Seconds from the first scheduled send to the last answer.
    pub elapsed_s: f64,
    /// Accepted per second over `elapsed_s`.
    pub accepted_per_s: f64,
    /// Open-loop latency: from the scheduled send time (= actual send at max rate).
    pub latency: Percentiles,
    /// Service time: from the actual send.
    pub service: Percentiles,
}

/// Ingress-to-assignment, observed on the event stream (in-process mode).
#[derive(Debug, Clone, Serialize)]
pub struct Assignment {
    /// Conversations the run opened (first messages answered 202, not duplicate).
    pub conversations_opened: u64,
    /// `conversation.assigned` events observed for them.
    pub assigned: u64,
    /// Opened but not observed assigned when the drain timed out.
    pub missing: u64,
    /// Seconds from the first send to the last assignment.
    pub elapsed_s: f64,
    /// Assigned conversations per second over `elapsed_s` (end-to-end routing throughput).
    pub assigned_per_s: f64,
    /// Seconds the last assignment came after the last HTTP answer (router backlog).
    pub backlog_s: f64,
    /// From the HTTP request being sent to the assigned event being observed.
    pub latency: Percentiles,
    /// Events about this run's users that matched no recorded send (should be 0).
    pub unmatched: u64,
}

/// The server's own metrics over the measured phase (bucket-interpolated).
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    /// `switchyard_inbound_messages_total{outcome="accepted"}` delta.
    pub inbound_accepted: f64,
    /// `switchyard_router_messages_total{outcome="routed"}` delta.
    pub routed: f64,
    /// `switchyard_ingress_to_assignment_seconds` p50, ms (from the conversation's creation
    /// in the router, so without the HTTP and bus time).
    pub ingress_to_assignment_p50_ms: Option<f64>,
    /// Same, p99.
    pub ingress_to_assignment_p99_ms: Option<f64>,
    /// `switchyard_ingress_publish_seconds` p50, ms (request to bus confirm).
    pub ingress_publish_p50_ms: Option<f64>,
    /// Same, p99.
    pub ingress_publish_p99_ms: Option<f64>,
}

/// CPU used over the measured phase (sending and draining).
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    /// Wall-clock seconds the CPU figures cover.
    pub window_s: f64,
    /// Process CPU seconds (user + system, all threads).
    pub process_s: f64,
    /// Process CPU per accepted message, µs.
    pub process_us_per_msg: f64,
    /// Share of the machine's CPUs the process used over the window.
    pub utilisation: f64,
    /// What this machine could sustain if the process had every CPU to itself at this cost:
    /// CPUs x 1 s / (server + generator CPU per message); robust to neighbours, unlike
    /// wall-clock throughput. Only when the server's CPU is known.
    pub cpu_bound_ceiling_per_s: Option<f64>,
    /// Share of the machine's CPUs busy over the window (every process).
    pub machine_utilisation: f64,
    /// Share of the machine's CPUs used by other processes over the window.
    pub others_utilisation: f64,
    /// CPU seconds of the server: the server runtime's threads (in-process) or the
    /// `--server-pid` process (external).
    pub server_s: Option<f64>,
    /// Server CPU per accepted message, µs.
    pub server_us_per_msg: Option<f64>,
    /// The load generator (client, pacer, event watcher), per accepted message, µs.
    pub client_us_per_msg: Option<f64>,
}

/// Memory.
#[derive(Debug, Clone, Serialize)]
pub struct Mem {
    /// RSS before the measured phase, MiB.
    pub rss_before_mib: f64,
    /// RSS after it, MiB.
    pub rss_after_mib: f64,
    /// Peak RSS of the process, MiB.
    pub peak_mib: f64,
    /// External mode with `--server-pid`: the server's RSS after the run, MiB.
    pub server_rss_after_mib: Option<f64>,
    /// External mode with `--server-pid`: the server's peak RSS, MiB.
    pub server_peak_mib: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Free-form label.
    pub label: Option<String>,
    /// The machine.
    pub machine: Machine,
    /// The run.
    pub config: RunConfig,
    /// HTTP results.
    pub http: Http,
    /// Ingress-to-assignment (in-process).
    pub assignment: Option<Assignment>,
    /// The server's metrics.
    pub server: Option<ServerView>,
    /// CPU.
    pub cpu: Cpu,
    /// Memory.
    pub memory: Mem,
    /// Caveats.
    pub notes: Vec<String>,
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3} ms"))
        .unwrap_or_else(|| "n/a".into())
}

fn line(out: &mut String, name: &str, p: &Percentiles) {
    let _ = writeln!(
        out,
        "  {name:<22} p50 {:>8.3}  p90 {:>8.3}  p99 {:>8.3}  p99.9 {:>8.3}  max {:>9.3}  mean {:>8.3}  (ms, n={})",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.mean_ms, p.count
    );
}

impl Report {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let c = &self.config;
        let _ = writeln!(
            o,
            "switchyard-bench{}",
            self.label
                .as_ref()
                .map(|l| format!(" — {l}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            o,
            "  machine: {} CPUs, {} (speed probe: {:.2} µs per 1 KiB HMAC-SHA256)",
            self.machine.cpus, self.machine.cpu_model, self.machine.calibration_us
        );
        let _ = writeln!(
            o,
            "  mode: {} ({}, channel `{}`)",
            c.mode, c.target, c.channel
        );
        let _ = writeln!(
            o,
            "  rate {} | messages {} | duration {} | connections {} | messages/user {} | agents {} x capacity {} | warm-up {} | pre-signed {}",
            c.rate,
            c.messages
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            c.duration_s
                .map(|d| format!("{d} s"))
                .unwrap_or_else(|| "-".into()),
            c.connections,
            c.messages_per_user,
            c.agents,
            c.agent_capacity,
            c.warmup,
            c.presigned,
        );
        if let (Some(shards), Some(st)) = (c.shards, c.server_threads) {
            let _ = writeln!(
                o,
                "  server: {shards} shards, {st} runtime threads | client: {} runtime threads",
                c.client_threads
            );
        }
        let h = &self.http;
        let _ = writeln!(o, "\nHTTP (POST /v1/channels/{}/messages)", c.channel);
        let _ = writeln!(
            o,
            "  sent {} | accepted (202) {} | duplicates {} | errors {}",
            h.sent,
            h.accepted,
            h.duplicates,
            if h.errors.is_empty() {
                "none".to_owned()
            } else {
                h.errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        if h.unsent > 0 {
            let _ = writeln!(
                o,
                "  NOT SENT: {} messages were due but still waiting for a free connection when the duration ended",
                h.unsent
            );
        }
        let _ = writeln!(
            o,
            "  throughput: {:.0} accepted msg/s over {:.2} s",
            h.accepted_per_s, h.elapsed_s
        );
        line(&mut o, "latency (scheduled)", &h.latency);
        if c.rate != "max" {
            line(&mut o, "service time (sent)", &h.service);
        }
        if let Some(a) = &self.assignment {
            let _ = writeln!(
                o,
                "\nIngress to assignment (request sent -> conversation.assigned observed)"
            );
            let _ = writeln!(
                o,
                "  conversations opened {} | assigned {} | missing {} | unmatched {}",
                a.conversations_opened, a.assigned, a.missing, a.unmatched
            );
            let _ = writeln!(
                o,
                "  routing throughput: {:.0} assignments/s over {:.2} s; last assignment {:.2} s after the last HTTP answer",
                a.assigned_per_s, a.elapsed_s, a.backlog_s
            );
            line(&mut o, "ingress->assignment", &a.latency);
        }
        if let Some(s) = &self.server {
            let _ = writeln!(o, "\nServer metrics over the run (bucket-interpolated)");
            let _ = writeln!(
                o,
                "  inbound accepted {:.0} | routed {:.0} | ingress_publish p50 {} p99 {} | ingress_to_assignment p50 {} p99 {}",
                s.inbound_accepted,
                s.routed,
                opt_ms(s.ingress_publish_p50_ms),
                opt_ms(s.ingress_publish_p99_ms),
                opt_ms(s.ingress_to_assignment_p50_ms),
                opt_ms(s.ingress_to_assignment_p99_ms),
            );
        }
        let u = &self.cpu;
        let _ = writeln!(o, "\nCPU over {:.2} s (sending + draining)", u.window_s);
        let _ = write!(
            o,
            "  process {:.2} s = {:.1} µs/msg ({:.0}% of {} CPUs)",
            u.process_s,
            u.process_us_per_msg,
            u.utilisation * 100.0,
            self.machine.cpus
        );
        if let (Some(s), Some(c)) = (u.server_us_per_msg, u.client_us_per_msg) {
            let _ = write!(o, " | server {s:.1} µs/msg | load generator {c:.1} µs/msg");
        }
        let _ = writeln!(
            o,
            "\n  CPU-bound ceiling at this cost: {} msg/s on {} CPUs | machine busy {:.0}%, of which other processes {:.0}%",
            u.cpu_bound_ceiling_per_s
                .map(|c| format!("{c:.0}"))
                .unwrap_or_else(|| "n/a".into()),
            self.machine.cpus,
            u.machine_utilisation * 100.0,
            u.others_utilisation * 100.0
        );
        let m = &self.memory;
        let _ = writeln!(
            o,
            "Memory (this process): RSS {:.1} MiB before, {:.1} MiB after, peak {:.1} MiB",
            m.rss_before_mib, m.rss_after_mib, m.peak_mib
        );
        if let (Some(r), Some(p)) = (m.server_rss_after_mib, m.server_peak_mib) {
            let _ = writeln!(o, "Server memory: RSS {r:.1} MiB after, peak {p:.1} MiB");
        }
        if !self.notes.is_empty() {
            let _ = writeln!(o, "\nNotes");
            for n in &self.notes {
                let _ = writeln!(o, "  - {n}");
            }
        }
        o
    }
}
