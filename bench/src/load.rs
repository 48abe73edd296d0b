//! The load engine: builds signed API-channel requests, sends them from `connections`
//! concurrent workers (as fast as possible, or open-loop at a fixed rate), and records latency,
//! status codes and the send instant of every conversation-opening message.
//!
//! The HTTP client is deliberately lean: each worker owns one HTTP/1.1 keep-alive connection
//! (hyper's `client::conn::http1` over a `TcpStream` with `TCP_NODELAY`) and sends its requests
//! on it one after the other. No pool, no tower layers, no URL handling per request: in
//! in-process mode the generator shares the CPUs with the server, so every µs it spends per
//! request is taken from the server's measured throughput.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use switchyard_connectors::signature::switchyard_signature;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::{JoinHandle, JoinSet};

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
    /// Per-request timeout (connecting, sending and reading the whole answer).
    pub timeout: Duration,
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
    wire: Wire,
    connections: Connections,
    prepared: Option<Arc<Vec<Prepared>>>,
    send_times: Option<Arc<SendTimes>>,
    source: Source,
    started: Instant,
    deadline: Option<Instant>,
    interval_ns: f64,
    progress: Arc<AtomicU64>,
    /// Set when the run ends early (the server cannot be reached); also stops the pacer.
    stop: Arc<AtomicBool>,
    /// Why the run was given up, if it was.
    gave_up: std::sync::Mutex<Option<String>>,
}

impl Shared {
    async fn next(&self) -> Option<u64> {
        // Past the deadline nothing more is sent; at a fixed rate, messages still waiting for a
        // free worker then are counted as unsent.
        if self.deadline.is_some_and(|d| Instant::now() >= d) || self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let i = match &self.source {
            Source::Counter(c) => c.fetch_add(1, Ordering::Relaxed),
            Source::Paced(rx) => {
                let i = rx.lock().await.recv().await?;
                if self.stop.load(Ordering::Relaxed) {
                    return None;
                }
                i
            }
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

/// Connection attempts per request before it counts as a `connect error`.
const CONNECT_ATTEMPTS: u32 = 3;
/// Pause before the second connection attempt of a request (doubled before the third).
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// A worker whose requests fail to connect this many times in a row stops the run.
const CONNECT_FAILURES_TO_GIVE_UP: u32 = 3;

/// What the lean client needs to know about the endpoint, worked out once per phase.
struct Wire {
    /// The resolved addresses of the host, tried in order.
    addrs: Vec<SocketAddr>,
    /// Origin-form request target (path and query).
    uri: Uri,
    /// `Host` header value.
    host: HeaderValue,
    /// Per-request timeout.
    timeout: Duration,
}

impl Wire {
    async fn new(endpoint: &Endpoint) -> anyhow::Result<Self> {
        let url = &endpoint.url;
        if url.scheme() != "http" {
            bail!(
                "`{url}`: the load generator speaks plain http:// only (HTTP/1.1 keep-alive); \
                 https is not supported"
            );
        }
        let host = url.host_str().context("the target URL has no host")?;
        let port = url
            .port_or_known_default()
            .context("the target URL has no port")?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> =
            tokio::time::timeout(endpoint.timeout, tokio::net::lookup_host((bare, port)))
                .await
                .with_context(|| format!("resolving {host}: timed out"))?
                .with_context(|| format!("resolving {host}"))?
                .collect();
        if addrs.is_empty() {
            bail!("{host} resolves to no address");
        }
        let host_header = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let mut target = url.path().to_owned();
        if let Some(query) = url.query() {
            target.push('?');
            target.push_str(query);
        }
        Ok(Wire {
            addrs,
            uri: Uri::try_from(target).context("request target")?,
            host: HeaderValue::try_from(host_header).context("host header")?,
            timeout: endpoint.timeout,
        })
    }

    /// Opens a connection: a few attempts (over every address) with a short pause in between.
    async fn connect(&self) -> Result<Conn, &'static str> {
        for attempt in 0..CONNECT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(CONNECT_BACKOFF * (1 << (attempt - 1))).await;
            }
            for addr in &self.addrs {
                let Ok(stream) = TcpStream::connect(addr).await else {
                    continue;
                };
                if stream.set_nodelay(true).is_err() {
                    continue;
                }
                let Ok((sender, connection)) = http1::handshake(TokioIo::new(stream)).await else {
                    continue;
                };
                let task = tokio::spawn(async move {
                    // Its errors reach the sender as the failed request's error.
                    let _ = connection.await;
                });
                return Ok(Conn { sender, task });
            }
        }
        Err(CONNECT_ERROR)
    }
}

const CONNECT_ERROR: &str = "connect error";

/// One keep-alive HTTP/1.1 connection: the sender and the task that drives the socket.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Conn {
    /// Closes the connection at once (after an error or a timeout its state is unknown).
    fn discard(self) {
        self.task.abort();
    }
}

/// Keep-alive connections handed from one phase to the next (the warm-up opens the ones the
/// measured phase uses), at most one per worker.
#[derive(Clone, Default)]
pub struct Connections(Arc<std::sync::Mutex<Vec<Conn>>>);

impl Connections {
    fn take(&self) -> Option<Conn> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    fn give_back(&self, conn: Conn) {
        if conn.sender.is_closed() {
            conn.discard();
        } else {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(conn);
        }
    }
}

/// Sends one request on the worker's connection (opening one if there is none or the server
/// closed the idle one) and reads the whole answer: `Ok(duplicate)` for a 202, or the failure.
/// After a transport error the connection is dropped; the next request opens a new one.
async fn exchange(
    wire: &Wire,
    conn: &mut Option<Conn>,
    request: Request<Full<Bytes>>,
) -> Result<bool, String> {
    // A keep-alive connection the server closed while it was idle is replaced without counting
    // an error (no request was lost), as any client pool does.
    let alive = match conn.as_mut() {
        Some(c) => c.sender.ready().await.is_ok(),
        None => false,
    };
    if !alive {
        if let Some(old) = conn.take() {
            old.discard();
        }
        let mut fresh = wire.connect().await.map_err(str::to_owned)?;
        if let Err(e) = fresh.sender.ready().await {
            fresh.discard();
            return Err(hyper_kind(&e).to_owned());
        }
        *conn = Some(fresh);
    }
    let Some(c) = conn.as_mut() else {
        return Err(CONNECT_ERROR.to_owned());
    };
    let result = match c.sender.send_request(request).await {
        Ok(response) => {
            let status = response.status();
            match response.into_body().collect().await {
                Ok(body) => Ok((status, body.to_bytes())),
                Err(e) => Err(body_kind(&e)),
            }
        }
        Err(e) => Err(hyper_kind(&e)),
    };
    match result {
        Ok((status, body)) if status == StatusCode::ACCEPTED => {
            Ok(contains(&body, br#""duplicate":true"#))
        }
        Ok((status, _)) => Err(status.as_u16().to_string()),
        Err(kind) => {
            if let Some(old) = conn.take() {
                old.discard();
            }
            Err(kind.to_owned())
        }
    }
}

async fn worker(shared: Arc<Shared>) -> anyhow::Result<LoadStats> {
    let mut stats = LoadStats::new(shared.started)?;
    let json = HeaderValue::from_static("application/json");
    let mut conn = shared.connections.take();
    let mut connect_failures = 0;
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
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(HOST, shared.wire.host.clone());
        headers.insert(CONTENT_TYPE, json.clone());
        headers.insert(TIMESTAMP.clone(), prepared.timestamp);
        headers.insert(SIGNATURE.clone(), prepared.signature);
        // `content-length` is set by hyper from the `Full` body.
        let mut request = Request::new(Full::new(prepared.body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = shared.wire.uri.clone();
        *request.headers_mut() = headers;

        let sent_at = Instant::now();
        let scheduled = shared.scheduled(i).unwrap_or(sent_at).min(sent_at);
        if opens && let Some(times) = &shared.send_times {
            times.insert(user, sent_at);
        }
        let outcome = match tokio::time::timeout(
            shared.wire.timeout,
            exchange(&shared.wire, &mut conn, request),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_elapsed) => {
                if let Some(old) = conn.take() {
                    old.discard();
                }
                Err("timeout".to_owned())
            }
        };
        let done = Instant::now();
        stats.sent += 1;
        record(&mut stats.latency, done - scheduled);
        record(&mut stats.service, done - sent_at);
        stats.finished = done;
        let opened = match outcome {
            Ok(duplicate) => {
                connect_failures = 0;
                stats.accepted += 1;
                stats.duplicates += u64::from(duplicate);
                !duplicate
            }
            Err(kind) => {
                if kind == CONNECT_ERROR {
                    connect_failures += 1;
                } else {
                    connect_failures = 0;
                }
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
        if connect_failures >= CONNECT_FAILURES_TO_GIVE_UP {
            // The server is gone: end the run instead of spinning through the remaining messages.
            let mut gave_up = shared
                .gave_up
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            gave_up.get_or_insert_with(|| {
                format!(
                    "{} requests in a row could not connect to {} ({CONNECT_ATTEMPTS} attempts each)",
                    CONNECT_FAILURES_TO_GIVE_UP, shared.endpoint.url
                )
            });
            shared.stop.store(true, Ordering::Relaxed);
            break;
        }
    }
    if let Some(c) = conn {
        shared.connections.give_back(c);
    }
    Ok(stats)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The error kind of a failed request.
fn hyper_kind(e: &hyper::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_canceled() || e.is_closed() || e.is_incomplete_message() {
        // The server closed the connection before answering.
        "connection closed"
    } else if e.is_parse() {
        "parse error"
    } else if let Some(io) = io_source(e) {
        match io.kind() {
            std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof => "connection closed",
            _ => "io error",
        }
    } else {
        "transport error"
    }
}

/// The error kind of an answer whose body could not be read.
fn body_kind(e: &hyper::Error) -> &'static str {
    match hyper_kind(e) {
        "transport error" => "body error",
        kind => kind,
    }
}

fn io_source(e: &hyper::Error) -> Option<&std::io::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = s.source();
    }
    None
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
    connections: Connections,
    prepared: Option<Arc<Vec<Prepared>>>,
    send_times: Option<Arc<SendTimes>>,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<LoadStats> {
    let wire = Wire::new(&endpoint).await?;
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
        wire,
        connections,
        prepared,
        send_times,
        source,
        started,
        deadline,
        interval_ns,
        progress,
        stop: Arc::clone(&stop),
        gave_up: std::sync::Mutex::new(None),
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
    if let Some(e) = failure {
        return Err(e);
    }
    let gave_up = shared
        .gave_up
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(reason) = gave_up {
        bail!(
            "{reason}; the run was stopped after {} requests ({} accepted), errors: {:?}",
            total.sent,
            total.accepted,
            total.errors
        );
    }
    Ok(total)
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

    fn plan(total: u64, connections: usize) -> Plan {
        Plan {
            run_id: "r".into(),
            phase: 'm',
            total: Some(total),
            duration: None,
            rate: Rate::Max,
            connections,
            messages_per_user: 1,
            tick: Duration::from_micros(100),
        }
    }

    fn endpoint(addr: SocketAddr) -> Endpoint {
        Endpoint {
            url: Url::parse(&format!("http://{addr}/v1/channels/c/messages")).expect("url"),
            secret: Arc::from(&b"0123456789abcdef"[..]),
            timeout: Duration::from_secs(5),
        }
    }

    /// Runs `plan` against the server at `addr`, without send times, with its own progress
    /// counter.
    async fn run_at(
        plan: Plan,
        addr: SocketAddr,
        connections: Connections,
    ) -> anyhow::Result<LoadStats> {
        run(
            plan,
            endpoint(addr),
            connections,
            None,
            None,
            Arc::new(AtomicU64::new(0)),
        )
        .await
    }

    /// A minimal HTTP/1.1 server: answers every request with 202 (`"duplicate":true` for odd
    /// message numbers) and closes the connection after `per_connection` answers. It sends the
    /// head of each request it reads down `heads`.
    async fn fake_server(
        per_connection: usize,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<String>, Arc<AtomicU64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    for _ in 0..per_connection {
                        // Read one head and its body.
                        let (head, body_len) = loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                                let len = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length: "))
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                                    .unwrap_or(0);
                                buf.drain(..end + 4);
                                break (head, len);
                            }
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        while buf.len() < body_len {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Vec<u8> = buf.drain(..body_len).collect();
                        let odd = String::from_utf8_lossy(&body).contains("1\",\"user\"");
                        let answer = if odd {
                            r#"{"duplicate":true}"#
                        } else {
                            r#"{"duplicate":false}"#
                        };
                        let _ = tx.send(head);
                        let reply = format!(
                            "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if socket.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    // Close after `per_connection` answers: the client must reconnect.
                });
            }
        });
        (addr, rx, accepted)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lean_client_sends_signed_requests_and_reconnects() {
        let (addr, mut heads, connections_seen) = fake_server(7).await;
        let stats = run_at(plan(100, 3), addr, Connections::default())
            .await
            .expect("run");
        assert_eq!(stats.sent, 100);
        // A connection closed by the server after an answer is replaced, but a request racing
        // with the close may fail as `connection closed`.
        let failed: u64 = stats.errors.values().sum();
        assert!(
            stats.errors.keys().all(|k| k == "connection closed"),
            "{:?}",
            stats.errors
        );
        assert_eq!(stats.accepted + failed, 100);
        assert!(stats.accepted >= 90, "{:?}", stats.errors);
        assert!(stats.duplicates > 0 && stats.duplicates < stats.accepted);
        assert!(connections_seen.load(Ordering::Relaxed) >= 100 / 7);
        let head = heads.recv().await.expect("a request");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.starts_with("post /v1/channels/c/messages http/1.1\r\n"),
            "{head}"
        );
        for header in [
            format!("host: {addr}"),
            "content-type: application/json".to_owned(),
            "content-length: ".to_owned(),
            "x-switchyard-timestamp: ".to_owned(),
            "x-switchyard-signature: ".to_owned(),
        ] {
            assert!(lower.contains(&header), "{header} missing in {head}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_carry_over_to_the_next_phase() {
        let (addr, _heads, connections_seen) = fake_server(usize::MAX).await;
        let pool = Connections::default();
        for _ in 0..2 {
            let stats = run_at(plan(50, 4), addr, pool.clone()).await.expect("run");
            assert_eq!((stats.accepted, stats.errors.len()), (50, 0));
        }
        assert_eq!(connections_seen.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_server_ends_the_run_quickly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let started = Instant::now();
        let err = run_at(plan(100_000, 4), addr, Connections::default())
            .await
            .err()
            .expect("the run fails");
        assert!(started.elapsed() < Duration::from_secs(5));
        let text = format!("{err:#}");
        assert!(text.contains("could not connect"), "{text}");
        assert!(text.contains("connect error"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_hangs_up_counts_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let stats = run_at(plan(20, 2), addr, Connections::default())
            .await
            .expect("run");
        assert_eq!(stats.sent, 20);
        assert_eq!(stats.accepted, 0);
        assert_eq!(stats.errors.values().sum::<u64>(), 20, "{:?}", stats.errors);
    }

    #[tokio::test]
    async fn https_is_refused() {
        let mut e = endpoint("127.0.0.1:1".parse().expect("addr"));
        e.url = Url::parse("https://127.0.0.1:1/v1/channels/c/messages").expect("url");
        let err = Wire::new(&e).await.err().expect("refused");
        assert!(format!("{err}").contains("http://"), "{err}");
    }
}
