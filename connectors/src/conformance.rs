//! The connector conformance kit (feature `conformance`): checks every connector's tests run
//! over its fixtures, so each channel meets the same guarantees.
//!
//! A [`Fixture`] is one request to a channel endpoint — method, headers, query, raw body, the
//! time it arrived — with the outcome it must have ([`Expect`]) and which of its parts the
//! channel's signature covers ([`Signed`]). Fixtures live as JSON files in
//! `tests/fixtures/<channel>/`, written by a generator that computes their signatures (never
//! pasted), and [`load_fixtures`] reads them.
//!
//! [`check_fixture`] runs, for one fixture:
//! * the expected outcome (handshake answer, envelopes with their content types, or the error
//!   class);
//! * (a) [`check_tamper`]: every single-byte change of the signed body (each position, or an
//!   even sample of 512 for bigger bodies) and every change or removal of a signed header or
//!   query parameter is refused, with no envelope produced;
//! * (c) [`check_deterministic`]: normalizing twice gives the same envelopes but for `id`;
//! * (d) [`check_retry_stable`]: the channel's retry of the same request (later) gets the same
//!   dedupe keys and fresh ids;
//! * (e) [`check_schema`]: every envelope validates against `schemas/message.v1.json`.
//!
//! (b) is a property: [`check_decode_total`] must not panic for any body, fed by
//! [`arbitrary_bodies`] (random bytes, random JSON, XML-ish text) from a `proptest!`, possibly
//! re-signed first so the body gets past `verify` into `decode` and `normalize`.
//!
//! For snapshots, [`redact`] replaces `id` and `received_at`; for [`Connector::deliver`],
//! [`CollectSink`] is an in-memory bus with the ingress's dedupe semantics.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_core::envelope::Envelope;

use crate::{Accepted, Connector, ConnectorError, EnvelopeSink, HttpReply, InboundRequest};

/// The envelope schema, as committed.
pub const MESSAGE_SCHEMA: &str = include_str!("../../schemas/message.v1.json");

/// Body positions checked by [`check_tamper`] at most (bigger bodies are sampled evenly).
pub const MAX_TAMPER_POSITIONS: usize = 512;

/// One request with the outcome it must have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// Short name (the file name without `.json`); snapshots are named after it.
    pub name: String,
    /// What the request is and why it is here.
    #[serde(default)]
    pub description: String,
    /// HTTP method.
    pub method: String,
    /// Headers (lower-case names).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Decoded query parameters.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// The raw body, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The raw body in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// When the request arrived (fixed, so outputs are reproducible).
    pub received_at: DateTime<Utc>,
    /// What the connector must make of it.
    pub expect: Expect,
    /// What the signature covers (for [`check_tamper`]).
    #[serde(default)]
    pub signed: Signed,
}

/// The outcome a fixture must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum Expect {
    /// A handshake answered with this status and body.
    Handshake {
        /// HTTP status.
        status: u16,
        /// Exact body.
        body: String,
    },
    /// Envelopes whose contents have these `type`s, in order (empty: valid, nothing routed).
    Envelopes {
        /// Content type of each envelope.
        content_types: Vec<String>,
    },
    /// An error of this class ([`ConnectorError::code`]: `bad_signature`, `malformed`,
    /// `unsupported`, ...).
    Error {
        /// The class.
        class: String,
    },
}

/// The parts of a request its signature covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The body is signed (all of it unless `body_range` says otherwise).
    #[serde(default)]
    pub body: bool,
    /// Only body bytes `[start, end)` are signed (WeCom signs the `Encrypt` text, not the XML
    /// around it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_range: Option<(usize, usize)>,
    /// Headers that carry or feed the signature.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Query parameters that carry or feed the signature.
    #[serde(default)]
    pub query: Vec<String>,
}

/// A request owning its parts; [`OwnedRequest::as_inbound`] borrows it as an
/// [`InboundRequest`].
#[derive(Debug, Clone)]
pub struct OwnedRequest {
    /// Method.
    pub method: Method,
    /// Headers.
    pub headers: HeaderMap,
    /// Query.
    pub query: HashMap<String, String>,
    /// Raw body.
    pub body: Vec<u8>,
    /// Arrival time.
    pub received_at: DateTime<Utc>,
}

impl OwnedRequest {
    /// Borrows the request as the connector sees it.
    pub fn as_inbound(&self) -> InboundRequest<'_> {
        InboundRequest {
            method: &self.method,
            headers: &self.headers,
            query: &self.query,
            body: &self.body,
            received_at: self.received_at,
        }
    }

    /// Sets (or replaces) a header.
    pub fn set_header(&mut self, name: &str, value: &str) {
        match (
            HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                self.headers.insert(n, v);
            }
            _ => panic!("fixture header `{name}: {value}` is not a valid HTTP header"),
        }
    }
}

impl Fixture {
    /// The raw body.
    pub fn body_bytes(&self) -> Vec<u8> {
        match (&self.body, &self.body_base64) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(b64)) => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(bytes) => bytes,
                Err(e) => panic!("fixture `{}`: body_base64 is not base64: {e}", self.name),
            },
            (None, None) => Vec::new(),
        }
    }

    /// Sets the raw body (as text when it is UTF-8, else base64).
    pub fn set_body(&mut self, bytes: &[u8]) {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                self.body = Some(text.to_owned());
                self.body_base64 = None;
            }
            Err(_) => {
                self.body = None;
                self.body_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
        }
    }

    /// The request.
    pub fn request(&self) -> OwnedRequest {
        let method = match Method::from_bytes(self.method.as_bytes()) {
            Ok(m) => m,
            Err(e) => panic!("fixture `{}`: bad method: {e}", self.name),
        };
        let mut req = OwnedRequest {
            method,
            headers: HeaderMap::new(),
            query: self.query.clone().into_iter().collect(),
            body: self.body_bytes(),
            received_at: self.received_at,
        };
        for (name, value) in &self.headers {
            req.set_header(name, value);
        }
        req
    }
}

/// Reads every `*.json` fixture in `dir`, sorted by name.
pub fn load_fixtures(dir: impl AsRef<Path>) -> Vec<Fixture> {
    let dir = dir.as_ref();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => panic!("cannot read fixtures in {}: {e}", dir.display()),
    };
    let mut fixtures: Vec<Fixture> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) => panic!("cannot read {}: {e}", p.display()),
            };
            match serde_json::from_str(&text) {
                Ok(f) => f,
                Err(e) => panic!("{} is not a fixture: {e}", p.display()),
            }
        })
        .collect();
    fixtures.sort_by(|a, b| a.name.cmp(&b.name));
    if fixtures.is_empty() {
        panic!("no fixtures in {}", dir.display());
    }
    fixtures
}

/// Writes fixtures as pretty JSON files `<name>.json` in `dir` (for generators), removing
/// stale `*.json` files first.
pub fn write_fixtures(dir: impl AsRef<Path>, fixtures: &[Fixture]) -> std::io::Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "json") {
            std::fs::remove_file(path)?;
        }
    }
    for f in fixtures {
        let text = serde_json::to_string_pretty(f).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(format!("{}.json", f.name)), text + "\n")?;
    }
    Ok(())
}

/// What a connector made of a request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It was a handshake, answered so.
    Handshake(HttpReply),
    /// Verified, decoded and normalized into these envelopes.
    Envelopes(Vec<Envelope>),
    /// Refused.
    Error(ConnectorError),
}

impl Outcome {
    /// A one-line description for failure messages.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Handshake(r) => format!(
                "handshake {} `{}`",
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
            Outcome::Envelopes(e) => format!(
                "{} envelope(s): {:?}",
                e.len(),
                e.iter().map(|e| e.content.type_name()).collect::<Vec<_>>()
            ),
            Outcome::Error(e) => format!("error {}: {e}", e.code()),
        }
    }

    /// The envelopes, if any were produced.
    pub fn envelopes(&self) -> &[Envelope] {
        match self {
            Outcome::Envelopes(e) => e,
            _ => &[],
        }
    }

    fn accepted_something(&self) -> bool {
        match self {
            Outcome::Handshake(r) => (200..300).contains(&r.status),
            Outcome::Envelopes(_) => true,
            Outcome::Error(_) => false,
        }
    }
}

/// Runs a request the way the ingress does: handshake first, else verify, decode, normalize.
pub fn run<C: Connector>(connector: &C, req: &OwnedRequest) -> Outcome {
    let inbound = req.as_inbound();
    match connector.handshake(&inbound) {
        Ok(Some(reply)) => return Outcome::Handshake(reply),
        Ok(None) => {}
        Err(e) => return Outcome::Error(e),
    }
    let result = connector
        .verify(&inbound)
        .and_then(|()| connector.decode(&inbound))
        .and_then(|native| connector.normalize(native, req.received_at));
    match result {
        Ok(envelopes) => Outcome::Envelopes(envelopes),
        Err(e) => Outcome::Error(e),
    }
}

/// Runs a fixture and checks its expected outcome; returns the outcome.
pub fn check_expected<C: Connector>(connector: &C, fixture: &Fixture) -> Outcome {
    let outcome = run(connector, &fixture.request());
    let ok = match (&fixture.expect, &outcome) {
        (Expect::Handshake { status, body }, Outcome::Handshake(r)) => {
            r.status == *status && r.body.as_ref() == body.as_bytes()
        }
        (Expect::Envelopes { content_types }, Outcome::Envelopes(envelopes)) => {
            let got: Vec<&str> = envelopes.iter().map(|e| e.content.type_name()).collect();
            got == content_types.iter().map(String::as_str).collect::<Vec<_>>()
        }
        (Expect::Error { class }, Outcome::Error(e)) => e.code() == class,
        _ => false,
    };
    if !ok {
        panic!(
            "fixture `{}`: expected {:?}, got {}",
            fixture.name,
            fixture.expect,
            outcome.describe()
        );
    }
    outcome
}

/// Positions of the body to tamper with: all of the signed range, or an even sample.
fn tamper_positions(fixture: &Fixture, len: usize) -> Vec<usize> {
    if !fixture.signed.body || len == 0 {
        return Vec::new();
    }
    let (start, end) = fixture.signed.body_range.unwrap_or((0, len));
    let end = end.min(len);
    if start >= end {
        return Vec::new();
    }
    let span = end - start;
    if span <= MAX_TAMPER_POSITIONS {
        return (start..end).collect();
    }
    let mut positions: Vec<usize> = (0..MAX_TAMPER_POSITIONS)
        .map(|i| start + i * span / MAX_TAMPER_POSITIONS)
        .collect();
    positions.push(end - 1);
    positions.dedup();
    positions
}

/// A different value of the same shape: the last character changed (hex stays hex).
fn mutate_value(value: &str) -> String {
    let mut chars: Vec<char> = value.chars().collect();
    match chars.last_mut() {
        None => "x".into(),
        Some(c) => {
            *c = match *c {
                '0' => '1',
                '1'..='9' | 'a'..='f' | 'A'..='F' => '0',
                other => {
                    if other == 'x' {
                        'y'
                    } else {
                        'x'
                    }
                }
            };
            chars.into_iter().collect()
        }
    }
}

fn expect_refused(fixture: &Fixture, what: &str, outcome: &Outcome) {
    let refused = match outcome {
        Outcome::Error(ConnectorError::Unauthorized(_) | ConnectorError::Malformed(_)) => true,
        Outcome::Handshake(r) => !(200..300).contains(&r.status),
        _ => false,
    };
    if !refused {
        panic!(
            "fixture `{}`: {what} was not refused as unauthorized/malformed: {}",
            fixture.name,
            outcome.describe()
        );
    }
}

/// (a) Every single-byte change of the signed body, and every change or removal of a signed
/// header or query parameter, is refused (only checked for fixtures that are accepted as
/// they are).
pub fn check_tamper<C: Connector>(connector: &C, fixture: &Fixture) {
    let base = fixture.request();
    if !run(connector, &base).accepted_something() {
        return;
    }
    for pos in tamper_positions(fixture, base.body.len()) {
        let mut req = base.clone();
        req.body[pos] ^= 0x01;
        expect_refused(
            fixture,
            &format!("flipping body byte {pos}"),
            &run(connector, &req),
        );
    }
    for name in &fixture.signed.headers {
        let Some(value) = fixture.headers.get(name) else {
            panic!(
                "fixture `{}`: signed header `{name}` is absent",
                fixture.name
            );
        };
        let mut changed = base.clone();
        changed.set_header(name, &mutate_value(value));
        expect_refused(
            fixture,
            &format!("changing header `{name}`"),
            &run(connector, &changed),
        );
        let mut removed = base.clone();
        removed.headers.remove(name.as_str());
        expect_refused(
            fixture,
            &format!("removing header `{name}`"),
            &run(connector, &removed),
        );
    }
    for key in &fixture.signed.query {
        let Some(value) = fixture.query.get(key) else {
            panic!("fixture `{}`: signed query `{key}` is absent", fixture.name);
        };
        let mut changed = base.clone();
        changed.query.insert(key.clone(), mutate_value(value));
        expect_refused(
            fixture,
            &format!("changing query `{key}`"),
            &run(connector, &changed),
        );
        let mut removed = base.clone();
        removed.query.remove(key);
        expect_refused(
            fixture,
            &format!("removing query `{key}`"),
            &run(connector, &removed),
        );
    }
}

/// (b) `decode` (and `normalize`, when decode succeeds) of `body` in the request `template`
/// must return, not panic; `resign` may re-sign the request first so `verify` passes. Call it
/// from a `proptest!` over [`arbitrary_bodies`].
pub fn check_decode_total<C: Connector>(
    connector: &C,
    template: &OwnedRequest,
    body: &[u8],
    resign: Option<&dyn Fn(&mut OwnedRequest)>,
) {
    let mut req = template.clone();
    req.body = body.to_vec();
    if let Some(resign) = resign {
        resign(&mut req);
    }
    let inbound = req.as_inbound();
    let _ = connector.handshake(&inbound);
    let _ = connector.verify(&inbound);
    if let Ok(native) = connector.decode(&inbound)
        && let Ok(envelopes) = connector.normalize(native, req.received_at)
    {
        check_schema(&envelopes);
    }
}

/// `envelopes` as JSON with `id` and `received_at` replaced (for snapshots and comparisons).
pub fn redact(envelopes: &[Envelope]) -> Value {
    let mut value = match serde_json::to_value(envelopes) {
        Ok(v) => v,
        Err(e) => panic!("envelopes do not serialize: {e}"),
    };
    if let Some(list) = value.as_array_mut() {
        for item in list {
            if let Some(obj) = item.as_object_mut() {
                obj.insert("id".into(), Value::String("[id]".into()));
                obj.insert("received_at".into(), Value::String("[received_at]".into()));
            }
        }
    }
    value
}

/// (c) Normalizing the same request twice gives the same envelopes but for `id` (fresh each
/// time).
pub fn check_deterministic<C: Connector>(connector: &C, fixture: &Fixture) {
    let req = fixture.request();
    let (a, b) = (run(connector, &req), run(connector, &req));
    let (a, b) = (a.envelopes(), b.envelopes());
    if redact(a) != redact(b) {
        panic!(
            "fixture `{}`: normalize is not deterministic:\n{}\nvs\n{}",
            fixture.name,
            redact(a),
            redact(b)
        );
    }
    for (x, y) in a.iter().zip(b) {
        if x.id == y.id {
            panic!(
                "fixture `{}`: two runs gave the same envelope id",
                fixture.name
            );
        }
    }
}

/// (d) The channel's retry of the request (the same bytes, arriving later) gets the same
/// dedupe keys.
pub fn check_retry_stable<C: Connector>(connector: &C, fixture: &Fixture) {
    let first = fixture.request();
    let mut retry = first.clone();
    retry.received_at = first.received_at + TimeDelta::seconds(5);
    let (a, b) = (run(connector, &first), run(connector, &retry));
    let keys = |o: &Outcome| {
        o.envelopes()
            .iter()
            .map(|e| e.dedupe_key.clone())
            .collect::<Vec<_>>()
    };
    if keys(&a) != keys(&b) {
        panic!(
            "fixture `{}`: dedupe keys differ across a retry: {:?} vs {:?}",
            fixture.name,
            keys(&a),
            keys(&b)
        );
    }
    if let Some(empty) = a.envelopes().iter().find(|e| e.dedupe_key.is_empty()) {
        panic!(
            "fixture `{}`: empty dedupe key in {}",
            fixture.name, empty.id
        );
    }
}

static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value = match serde_json::from_str(MESSAGE_SCHEMA) {
        Ok(v) => v,
        Err(e) => panic!("schemas/message.v1.json is not JSON: {e}"),
    };
    match jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
    {
        Ok(v) => v,
        Err(e) => panic!("schemas/message.v1.json does not compile: {e}"),
    }
});

/// (e) Every envelope validates against `schemas/message.v1.json`.
pub fn check_schema(envelopes: &[Envelope]) {
    for envelope in envelopes {
        let value = match serde_json::to_value(envelope) {
            Ok(v) => v,
            Err(e) => panic!("envelope {} does not serialize: {e}", envelope.id),
        };
        let errors: Vec<String> = VALIDATOR
            .iter_errors(&value)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        if !errors.is_empty() {
            panic!(
                "envelope does not match message.v1.json: {}\n{value:#}",
                errors.join("; ")
            );
        }
    }
}

/// Every check for one fixture: expected outcome, (a), (c), (d), (e).
pub fn check_fixture<C: Connector>(connector: &C, fixture: &Fixture) -> Outcome {
    let outcome = check_expected(connector, fixture);
    check_schema(outcome.envelopes());
    check_tamper(connector, fixture);
    check_deterministic(connector, fixture);
    check_retry_stable(connector, fixture);
    outcome
}

/// [`check_fixture`] for every fixture; returns the outcomes by fixture name.
pub fn check_all<C: Connector>(connector: &C, fixtures: &[Fixture]) -> BTreeMap<String, Outcome> {
    fixtures
        .iter()
        .map(|f| (f.name.clone(), check_fixture(connector, f)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// proptest strategies for (b)

/// Any JSON value, nested a few levels.
pub fn json_values() -> impl Strategy<Value = Value> {
    json_like(&[
        "event",
        "content",
        "type",
        "text",
        "id",
        "msgid",
        "from",
        "to",
        "user",
        "message_id",
    ])
}

/// JSON values whose object keys come from `keys` (a connector's field names, so the decoder
/// gets past "unknown field" into its real paths).
pub fn json_like(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,16}".prop_map(Value::String),
        // Numbers and JSON inside strings, as some platforms send them.
        any::<u64>().prop_map(|n| Value::String(n.to_string())),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(proptest::sample::select(keys), inner.clone(), 0..8)
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            inner.prop_map(|v| Value::String(v.to_string())),
        ]
    })
}

/// XML-ish text: tags from `tags`, CDATA, entities, truncation.
pub fn xmlish(tags: &'static [&'static str]) -> impl Strategy<Value = String> {
    let node = (
        proptest::sample::select(tags),
        prop_oneof![
            "[a-zA-Z0-9+/=]{0,40}",
            ".{0,12}".prop_map(|s| format!("<![CDATA[{s}]]>")),
            Just("&amp;&lt;&#x41;&bogus;".to_owned()),
            Just("<![CDATA[".to_owned()),
        ],
        any::<bool>(),
    )
        .prop_map(|(tag, text, close)| {
            if close {
                format!("<{tag}>{text}</{tag}>")
            } else {
                format!("<{tag}>{text}")
            }
        });
    (
        proptest::collection::vec(node, 0..8),
        any::<bool>(),
        0usize..4,
    )
        .prop_map(|(nodes, wrap, cut)| {
            let inner = nodes.concat();
            let s = if wrap {
                format!("<xml>{inner}</xml>")
            } else {
                inner
            };
            let keep = s.len().saturating_sub(cut);
            let mut end = keep;
            while end > 0 && !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        })
}

/// Request bodies for (b): random bytes, random JSON, XML-ish text.
pub fn arbitrary_bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        json_values().prop_map(|v| v.to_string().into_bytes()),
        xmlish(&[
            "xml",
            "ToUserName",
            "Encrypt",
            "MsgType",
            "Event",
            "Content"
        ])
        .prop_map(String::into_bytes),
    ]
}

// ---------------------------------------------------------------------------------------------
// An in-memory bus for `deliver`

/// An [`EnvelopeSink`] that keeps what is published, with the ingress's dedupe semantics (a
/// repeated dedupe key answers the first copy's id, `duplicate: true`).
#[derive(Default)]
pub struct CollectSink {
    published: Mutex<Vec<Envelope>>,
    seen: Mutex<HashMap<String, String>>,
    fail_after: Mutex<Option<usize>>,
    calls: AtomicUsize,
}

impl CollectSink {
    /// An empty sink.
    pub fn new() -> Self {
        CollectSink::default()
    }

    /// Makes every `publish` call after the first `n` fail as if the bus were down.
    pub fn fail_after(&self, n: usize) {
        *lock(&self.fail_after) = Some(n);
    }

    /// Lets publishes succeed again.
    pub fn recover(&self) {
        *lock(&self.fail_after) = None;
    }

    /// Everything published (first copies only), in order.
    pub fn published(&self) -> Vec<Envelope> {
        lock(&self.published).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl EnvelopeSink for CollectSink {
    async fn publish(&self, envelopes: Vec<Envelope>) -> Result<Vec<Accepted>, ConnectorError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if lock(&self.fail_after).is_some_and(|n| call >= n) {
            return Err(ConnectorError::Transient("bus unavailable (test)".into()));
        }
        check_schema(&envelopes);
        let mut accepted = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let mut seen = lock(&self.seen);
            if let Some(first) = seen.get(&envelope.dedupe_key) {
                accepted.push(Accepted {
                    id: first.clone(),
                    duplicate: true,
                });
                continue;
            }
            seen.insert(envelope.dedupe_key.clone(), envelope.id.clone());
            accepted.push(Accepted {
                id: envelope.id.clone(),
                duplicate: false,
            });
            lock(&self.published).push(envelope);
        }
        Ok(accepted)
    }
}
