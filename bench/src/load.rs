//! The load engine: builds signed API-channel requests, sends them from `connections`
//! concurrent workers (as fast as possible, or open-loop at a fixed rate), and records latency,
//! status codes and the send instant of every conversation-opening message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, Url};
use switchyard_connectors::signature::switchyard_signature;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use crate::watch::SendTimes;

/// Highest latency a histogram records, in microseconds (larger values are clamped).
pub const MAX_LATENCY_US: u64 = 120_000_000;

/// How fast to send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// As fast as the workers can.
    Max,
    /// This many messages per second, scheduled open-loop.
    PerSec(f64),
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSec(r)),
            _ => Err(format!(
                "`{s}` is neither `max` nor a positive number of messages per second"
            )),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::PerSec(r) => write!(f, "{r}"),
        }
    }
}

/// Where and how to sign.
#[derive(Clone)]
pub struct Endpoint {
    /// `{base}/v1/channels/{channel}/messages`.
    pub url: Url,
    /// The channel secret.
    pub secret: Arc<[u8]>,
}

/// One phase of load (warm-up or measured).
#[derive(Clone)]
pub struct Plan {
    /// Distinguishes runs (message and user ids start with it).
    pub run_id: String,
    /// `w` (warm-up) or `m` (measured).
    pub phase: char,
    /// How many messages; `None` = until `duration` has passed.
    pub total: Option<u64>,
    /// Stop sending after this long (with `total`, whichever comes first).
    pub duration: Option<Duration>,
    /// Rate.
    pub rate: Rate,
    /// Concurrent requests (and connections).
    pub connections: usize,
    /// Consecutive messages sent by each user.
    pub messages_per_user: u64,
    /// Pacer granularity for fixed rates.
    pub tick: Duration,
}

impl Plan {
    /// The user id of message `i`.
    pub fn user_of(&self, i: u64) -> u64 {
        i / self.messages_per_user.max(1)
    }

    /// Whether message `i` is its user's first (it opens a conversation).
    pub fn opens_conversation(&self, i: u64) -> bool {
        i.is_multiple_of(self.messages_per_user.max(1))
    }
}

/// The external user id of user `user` in `phase` of `run_id` (see [`parse_user`]).
pub fn user_id(run_id: &str, phase: char, user: u64) -> String {
    format!("{run_id}-{phase}{user}")
}

/// Inverse of [`user_id`]: the phase and user number, if `external_id` belongs to `run_id`.
pub fn parse_user(run_id: &str, external_id: &str) -> Option<(char, u64)> {
    let rest = external_id.strip_prefix(run_id)?.strip_prefix('-')?;
    let mut chars = rest.chars();
    let phase = chars.next()?;
    Some((phase, chars.as_str().parse().ok()?))
}

/// A ready-to-send request.
#[derive(Clone)]
pub struct Prepared {
    body: Bytes,
    timestamp: HeaderValue,
    signature: HeaderValue,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Builds and signs message `i` of `plan`.
pub fn prepare(plan: &Plan, secret: &[u8], i: u64) -> anyhow::Result<Prepared> {
    let user = user_id(&plan.run_id, plan.phase, plan.user_of(i));
    let body = format!(
        r#"{{"message_id":"{run}-{phase}-m{i}","user":{{"id":"{user}"}},"content":{{"type":"text","text":"bench message {i}"}}}}"#,
        run = plan.run_id,
        phase = plan.phase,
    );
    let ts = unix_now();
    let signature = switchyard_signature(secret, ts, body.as_bytes());
    Ok(Prepared {
        body: Bytes::from(body),
        timestamp: HeaderValue::from_str(&ts.to_string()).context("timestamp header")?,
        signature: HeaderValue::from_str(&signature).context("signature header")?,
    })
}

/// Pre-signs every message of a plan with a known count (so signing is outside the timed section).
pub fn prepare_all(plan: &Plan, secret: &[u8], total: u64) -> anyhow::Result<Vec<Prepared>> {
    (0..total).map(|i| prepare(plan, secret, i)).collect()
}

/// What the workers measured.
pub struct LoadStats {
    /// Requests sent (answered or not).
    pub sent: u64,
    /// Fixed rate: messages whose scheduled time came but that were still waiting for a free
    /// connection when the duration ended (the generator or the server fell behind).
    pub unsent: u64,
    /// 202 answers.
    pub accepted: u64,
    /// 202 answers that said `"duplicate": true`.
    pub duplicates: u64,
    /// 202 answers to a user's first message (each opened a conversation).
    pub conversations_opened: u64,
    /// Failures by status code or transport error kind.
    pub errors: BTreeMap<String, u64>,
    /// Microseconds from the scheduled send time to the complete answer (open-loop latency).
    pub latency: Histogram<u64>,
    /// Microseconds from the actual send to the complete answer (service time).
    pub service: Histogram<u64>,
    /// When the first request was scheduled.
    pub started: Instant,
    /// When the last answer arrived.
    pub finished: Instant,
}

impl LoadStats {
    fn new(started: Instant) -> anyhow::Result<Self> {
        Ok(LoadStats {
            sent: 0,
            unsent: 0,
            accepted: 0,
            duplicates: 0,
            conversations_opened: 0,
            errors: BTreeMap::new(),
            latency: new_histogram()?,
            service: new_histogram()?,
            started,
            finished: started,
        })
    }

    fn merge(&mut self, other: LoadStats) -> anyhow::Result<()> {
        self.sent += other.sent;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.conversations_opened += other.conversations_opened;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.latency
            .add(&other.latency)
            .context("merging histograms")?;
        self.service
            .add(&other.service)
            .context("merging histograms")?;
        self.finished = self.finished.max(other.finished);
        Ok(())
    }

    /// Seconds from the first scheduled send to the last answer.
    pub fn elapsed(&self) -> Duration {
        self.finished.saturating_duration_since(self.started)
    }
}

/// A histogram of microseconds, 3 significant figures.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("creating a histogram")
}

/// Records `d` in microseconds, clamped to the histogram's range.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, MAX_LATENCY_US);
    h.saturating_record(us);
}

/// Where workers get the index of the next message to send.
enum Source {
    /// Take the next index at once (max rate).
    Counter(AtomicU64),
    /// Indices released by the pacer when their scheduled time has come (fixed rate).
    Paced(Mutex<mpsc::UnboundedReceiver<u64>>),
}

struct Shared {
    plan: Plan,
    endpoint: Endpoint,
    client: Client,
    prepared: Option<Arc<Vec<Prepared>>>,
    send_times: Option<Arc<SendTimes>>,
    source: Source,
    started: Instant,
    deadline: Option<Instant>,
    interval_ns: f64,
    progress: Arc<AtomicU64>,
}

impl Shared {
    async fn next(&self) -> Option<u64> {
        // Past the deadline nothing more is sent; at a fixed rate, messages still waiting for a
        // free worker then are counted as unsent.
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let i = match &self.source {
            Source::Counter(c) => c.fetch_add(1, Ordering::Relaxed),
            Source::Paced(rx) => rx.lock().await.recv().await?,
        };
        match self.plan.total {
            Some(total) if i >= total => None,
            _ => Some(i),
        }
    }

    fn scheduled(&self, i: u64) -> Option<Instant> {
        match self.source {
            Source::Counter(_) => None,
            Source::Paced(_) => {
                Some(self.started + Duration::from_nanos((i as f64 * self.interval_ns) as u64))
            }
        }
    }
}

static TIMESTAMP: HeaderName = HeaderName::from_static("x-switchyard-timestamp");
static SIGNATURE: HeaderName = HeaderName::from_static("x-switchyard-signature");

async fn worker(shared: Arc<Shared>) -> anyhow::Result<LoadStats> {
    let mut stats = LoadStats::new(shared.started)?;
    let json = HeaderValue::from_static("application/json");
    while let Some(i) = shared.next().await {
        let prepared = match &shared.prepared {
            Some(all) => all
                .get(i as usize)
                .cloned()
                .context("message index beyond the prepared set")?,
            None => prepare(&shared.plan, &shared.endpoint.secret, i)?,
        };
        let opens = shared.plan.opens_conversation(i);
        let user = shared.plan.user_of(i);
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert(CONTENT_TYPE, json.clone());
        headers.insert(TIMESTAMP.clone(), prepared.timestamp);
        headers.insert(SIGNATURE.clone(), prepared.signature);
        let mut request = reqwest::Request::new(Method::POST, shared.endpoint.url.clone());
        *request.headers_mut() = headers;
        *request.body_mut() = Some(prepared.body.into());

        let sent_at = Instant::now();
        let scheduled = shared.scheduled(i).unwrap_or(sent_at).min(sent_at);
        if opens && let Some(times) = &shared.send_times {
            times.insert(user, sent_at);
        }
        let outcome = match shared.client.execute(request).await {
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Ok(body) if status == reqwest::StatusCode::ACCEPTED => {
                        Ok(contains(&body, br#""duplicate":true"#))
                    }
                    Ok(_) => Err(status.as_u16().to_string()),
                    Err(e) => Err(transport_kind(&e)),
                }
            }
            Err(e) => Err(transport_kind(&e)),
        };
        let done = Instant::now();
        stats.sent += 1;
        record(&mut stats.latency, done - scheduled);
        record(&mut stats.service, done - sent_at);
        stats.finished = done;
        let opened = match outcome {
            Ok(duplicate) => {
                stats.accepted += 1;
                stats.duplicates += u64::from(duplicate);
                !duplicate
            }
            Err(kind) => {
                *stats.errors.entry(kind).or_default() += 1;
                false
            }
        };
        if opens {
            if opened {
                stats.conversations_opened += 1;
            } else if let Some(times) = &shared.send_times {
                // No conversation was opened: no assignment will come for this user.
                times.remove(user);
            }
        }
        shared.progress.fetch_add(1, Ordering::Relaxed);
    }
    Ok(stats)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn transport_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect error".into()
    } else if e.is_body() || e.is_decode() {
        "body error".into()
    } else {
        "transport error".into()
    }
}

/// Releases message indices at their scheduled times, in batches every `tick` at most.
fn pace(
    tx: mpsc::UnboundedSender<u64>,
    started: Instant,
    interval_ns: f64,
    total: u64,
    tick: Duration,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut released: u64 = 0;
    while released < total && !stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed().as_nanos() as f64;
        let due = ((elapsed / interval_ns).floor() as u64 + 1).min(total);
        while released < due {
            if tx.send(released).is_err() {
                return released;
            }
            released += 1;
        }
        if released >= total {
            break;
        }
        let next_due = released as f64 * interval_ns;
        let wait =
            Duration::from_nanos((next_due - started.elapsed().as_nanos() as f64).max(0.0) as u64);
        std::thread::sleep(wait.max(tick));
    }
    released
}

/// Runs one phase and returns what it measured.
pub async fn run(
    plan: Plan,
    endpoint: Endpoint,
    client: Client,
    prepared: Option<Arc<Vec<Prepared>>>,
    send_times: Option<Arc<SendTimes>>,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<LoadStats> {
    let started = Instant::now();
    let deadline = plan.duration.map(|d| started + d);
    let interval_ns = match plan.rate {
        Rate::Max => 0.0,
        Rate::PerSec(r) => 1e9 / r,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut pacer = None;
    let source = match plan.rate {
        Rate::Max => Source::Counter(AtomicU64::new(0)),
        Rate::PerSec(r) => {
            let total = match (plan.total, plan.duration) {
                (Some(t), Some(d)) => t.min((r * d.as_secs_f64()).ceil() as u64),
                (Some(t), None) => t,
                (None, Some(d)) => (r * d.as_secs_f64()).ceil() as u64,
                (None, None) => anyhow::bail!("a run needs a message count or a duration"),
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let (tick, stop) = (plan.tick, Arc::clone(&stop));
            pacer = Some(
                std::thread::Builder::new()
                    .name("bench-pacer".into())
                    .spawn(move || pace(tx, started, interval_ns, total, tick, stop))
                    .context("starting the pacer thread")?,
            );
            Source::Paced(Mutex::new(rx))
        }
    };
    let shared = Arc::new(Shared {
        plan,
        endpoint,
        client,
        prepared,
        send_times,
        source,
        started,
        deadline,
        interval_ns,
        progress,
    });
    let mut workers = JoinSet::new();
    for _ in 0..shared.plan.connections.max(1) {
        workers.spawn(worker(Arc::clone(&shared)));
    }
    let mut total = LoadStats::new(started)?;
    let mut failure = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(stats)) => total.merge(stats)?,
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(anyhow::anyhow!("a worker panicked: {e}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = pacer {
        let released = p
            .join()
            .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
        total.unsent = released.saturating_sub(total.sent);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_round_trip() {
        assert_eq!(parse_user("r1", &user_id("r1", 'm', 42)), Some(('m', 42)));
        assert_eq!(parse_user("r1", "r2-m42"), None);
        assert_eq!(parse_user("r1", "r1-m"), None);
    }

    #[test]
    fn rate_parses() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("5000".parse::<Rate>(), Ok(Rate::PerSec(5000.0)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }

    #[test]
    fn prepared_messages_verify() {
        let plan = Plan {
            run_id: "r".into(),
            phase: 'm',
            total: Some(4),
            duration: None,
            rate: Rate::Max,
            connections: 1,
            messages_per_user: 2,
            tick: Duration::from_micros(100),
        };
        let secret = b"0123456789abcdef";
        let p = prepare(&plan, secret, 3).expect("prepare");
        let ts = p.timestamp.to_str().expect("ascii").to_owned();
        let sig = p.signature.to_str().expect("ascii").to_owned();
        let now = switchyard_core::time::now();
        switchyard_connectors::signature::verify_switchyard_signature(
            secret,
            Some(&ts),
            Some(&sig),
            &p.body,
            now,
        )
        .expect("signature verifies");
        let v: serde_json::Value = serde_json::from_slice(&p.body).expect("json");
        assert_eq!(v["user"]["id"], "r-m1");
        assert!(plan.opens_conversation(2) && !plan.opens_conversation(3));
    }
}
