//! Configuration: one TOML file, every key overridable from the environment
//! (`SWITCHYARD__SECTION__KEY`), secrets by `*_env` (environment variable) or `*_file`
//! (a mounted Kubernetes Secret) references.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hours::{Hours, HoursSettings};
use crate::model::{MAX_TAG_CHARS, is_valid_skill, is_valid_tag};
use crate::tls::TlsFiles;

/// Prefix of environment overrides: `SWITCHYARD__SERVER__LISTEN=0.0.0.0:8080`.
pub const ENV_PREFIX: &str = "SWITCHYARD";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed.
    #[error("cannot read configuration{}: {message}", source_name(.path))]
    Load {
        /// The file, if one was given.
        path: Option<PathBuf>,
        /// What went wrong.
        message: String,
    },
    /// A key has a wrong type or value.
    #[error("configuration key `{key}`: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `channels[1].kind`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Ids of channels and webhooks: non-empty `[A-Za-z0-9_-]+` (they become path segments and queue
/// names).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What webhooks and bots have in common: an id, a URL, limits and a secret, checked alike.
struct Endpoint<'a> {
    section: &'static str,
    index: usize,
    id: &'a str,
    url: &'a str,
    timeout_ms: u64,
    concurrency: u16,
}

impl Endpoint<'_> {
    fn invalid(&self, field: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            key: format!("{}[{}].{field}", self.section, self.index),
            message,
        }
    }

    /// A valid id not in `seen`, an HTTP(S) URL, limits of at least 1, a secret of 16 or more.
    fn check(
        &self,
        seen: &mut HashSet<String>,
        secret: impl FnOnce() -> Result<String, ConfigError>,
    ) -> Result<(), ConfigError> {
        let kind = &self.section[..self.section.len() - 1];
        if !valid_id(self.id) {
            return Err(self.invalid(
                "id",
                format!("`{}` must be non-empty [A-Za-z0-9_-]+", self.id),
            ));
        }
        if !seen.insert(self.id.to_owned()) {
            return Err(self.invalid("id", format!("{kind} id `{}` is used twice", self.id)));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(self.invalid(
                "url",
                format!("`{}` is not an http:// or https:// URL", self.url),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(self.invalid("timeout_ms", "must be at least 1".into()));
        }
        if self.concurrency == 0 {
            return Err(self.invalid("concurrency", "must be at least 1".into()));
        }
        if secret()?.len() < 16 {
            return Err(self.invalid("secret", "must be at least 16 characters".into()));
        }
        Ok(())
    }
}

/// TLS files need a URL of the TLS scheme, and a client certificate comes with its key.
fn check_tls_files(
    files: &TlsFiles<'_>,
    url: Option<&str>,
    scheme: &str,
) -> Result<(), ConfigError> {
    let section = files.section;
    match (files.cert_file, files.key_file) {
        (Some(_), None) => {
            return Err(ConfigError::Invalid {
                key: format!("{section}.tls_key_file"),
                message: format!(
                    "required with {section}.tls_cert_file (the certificate's private key)"
                ),
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Invalid {
                key: format!("{section}.tls_cert_file"),
                message: format!("required with {section}.tls_key_file (the key's certificate)"),
            });
        }
        _ => {}
    }
    if files.any() && !url.is_some_and(|u| u.starts_with(scheme)) {
        let key = if files.ca_file.is_some() {
            "tls_ca_file"
        } else {
            "tls_cert_file"
        };
        return Err(ConfigError::Invalid {
            key: format!("{section}.{key}"),
            message: if section == "store" {
                format!(
                    "TLS files need store.url (or, behind Sentinel, store.sentinel.nodes) to \
                     start with {scheme}"
                )
            } else {
                format!("TLS files need {section}.url to start with {scheme}")
            },
        });
    }
    Ok(())
}

fn source_name(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" from `{}`", p.display()))
        .unwrap_or_default()
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// HTTP server.
    #[serde(default)]
    pub server: ServerSettings,
    /// API keys for REST and agent endpoints.
    #[serde(default)]
    pub auth: AuthSettings,
    /// Message bus.
    #[serde(default)]
    pub bus: BusSettings,
    /// State store.
    #[serde(default)]
    pub store: StoreSettings,
    /// Routing behaviour.
    #[serde(default)]
    pub router: RouterSettings,
    /// Logging.
    #[serde(default)]
    pub log: LogSettings,
    /// Channel instances.
    #[serde(default)]
    pub channels: Vec<ChannelSettings>,
    /// Agent pools (`default` always exists).
    #[serde(default)]
    pub pools: Vec<PoolSettings>,
    /// Signed outgoing webhooks of the event stream.
    #[serde(default)]
    pub webhooks: Vec<WebhookSettings>,
    /// Routing rules: which pool a new conversation goes to, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
    /// HTTP bots that hold the conversations their pools open, until they hand them off.
    #[serde(default)]
    pub bots: Vec<BotSettings>,
    /// Personal data taken out of what customers write, before it reaches the bus.
    #[serde(default)]
    pub redaction: RedactionSettings,
}

/// `[redaction]`: the rules every channel applies unless its `redact` key names others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionSettings {
    /// Built-in detectors every channel applies by default (`payment_card`, `email`, `phone`,
    /// `cn_resident_id`, `iban`).
    #[serde(default)]
    pub detectors: Vec<String>,
    /// Patterns of the operator's own, applied by every channel by default.
    #[serde(default)]
    pub patterns: Vec<RedactionPattern>,
    /// What replaces a match: `{name}` becomes the rule's name, `{last4}` the match's last
    /// four letters or digits.
    #[serde(default = "default_replacement")]
    pub replacement: String,
}

impl Default for RedactionSettings {
    fn default() -> Self {
        RedactionSettings {
            detectors: Vec::new(),
            patterns: Vec::new(),
            replacement: default_replacement(),
        }
    }
}

fn default_replacement() -> String {
    crate::redaction::DEFAULT_REPLACEMENT.to_owned()
}

/// One `[[redaction.patterns]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionPattern {
    /// Its name (`[A-Za-z0-9_-]+`): what the channel key `redact` lists, the `{name}` of the
    /// replacement and the `rule` label of its metric.
    pub name: String,
    /// A regular expression (Rust `regex` syntax): every match is replaced.
    pub regex: String,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Seconds to drain in-flight work on shutdown.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            shutdown_grace_secs: default_shutdown_grace(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_shutdown_grace() -> u64 {
    20
}

/// `[auth]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// API keys; with none, the server refuses to listen beyond loopback.
    #[serde(default)]
    pub api_keys: Vec<ApiKeySettings>,
}

/// One API key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// A name for logs.
    pub name: String,
    /// The key itself (prefer `key_env` / `key_file`).
    #[serde(default)]
    pub key: Option<String>,
    /// Environment variable holding the key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// File holding the key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Scopes: `admin`, `agent`, `read`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
}

fn default_scopes() -> Vec<String> {
    vec!["admin".to_owned()]
}

/// Which bus implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    /// In-process.
    #[default]
    Embedded,
    /// RabbitMQ over AMQP 0-9-1.
    Amqp,
}

/// `[bus]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSettings {
    /// Implementation.
    #[serde(default)]
    pub kind: BusKind,
    /// AMQP URL, for `amqp` (`amqps://` for TLS).
    #[serde(default)]
    pub url: Option<String>,
    /// For an `amqps://` URL: a PEM file with the CA certificate(s) that signed the broker's
    /// certificate, trusted beside the system's roots.
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// For an `amqps://` URL: a PEM file with a client certificate, for brokers that verify
    /// their clients (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// The PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Inbound shard queues.
    #[serde(default = "default_shards")]
    pub shards: u16,
    /// Messages a queue holds before publishers wait.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Redeliveries before a message is dead-lettered.
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
    /// Milliseconds a publish may wait for its confirm.
    #[serde(default = "default_publish_timeout_ms")]
    pub publish_timeout_ms: u64,
    /// Unsettled deliveries per consumer.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Keep every event in the replayable stream queue `switchyard.events.stream` for this
    /// long (RabbitMQ duration such as `7D`, `12h`); unset: no stream. RabbitMQ only.
    #[serde(default)]
    pub events_stream_max_age: Option<String>,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            kind: BusKind::default(),
            url: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            shards: default_shards(),
            queue_capacity: default_queue_capacity(),
            delivery_limit: default_delivery_limit(),
            publish_timeout_ms: default_publish_timeout_ms(),
            prefetch: default_prefetch(),
            events_stream_max_age: None,
        }
    }
}

impl BusSettings {
    /// The configured TLS files of the broker connection.
    pub fn tls_files(&self) -> TlsFiles<'_> {
        TlsFiles {
            section: "bus",
            ca_file: self.tls_ca_file.as_deref(),
            cert_file: self.tls_cert_file.as_deref(),
            key_file: self.tls_key_file.as_deref(),
        }
    }
}

fn default_shards() -> u16 {
    16
}
fn default_queue_capacity() -> usize {
    20_000
}
fn default_delivery_limit() -> u32 {
    5
}
fn default_publish_timeout_ms() -> u64 {
    5_000
}
fn default_prefetch() -> u16 {
    64
}

/// Which store implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In-process.
    #[default]
    Embedded,
    /// Redis.
    Redis,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// Implementation.
    #[serde(default)]
    pub kind: StoreKind,
    /// Redis URL, for `redis`. With `sentinel`, only its username, password and database are
    /// used (for the master the sentinels name).
    #[serde(default)]
    pub url: Option<String>,
    /// For a `rediss://` URL: a PEM file with the CA certificate(s) that signed the Redis
    /// server's certificate, trusted instead of the system's roots.
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// For a `rediss://` URL: a PEM file with a client certificate, for servers that verify
    /// their clients (`tls-auth-clients`; with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// The PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Find the Redis master through Redis Sentinel, for `redis`.
    #[serde(default)]
    pub sentinel: Option<SentinelSettings>,
    /// Key prefix, for `redis`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Seconds a dedupe key is remembered.
    #[serde(default = "default_dedupe_ttl")]
    pub dedupe_ttl_secs: u64,
    /// Days a closed conversation (with its messages) is kept; 0 keeps everything.
    #[serde(default)]
    pub retention_days: u32,
    /// Days a customer is kept after their last message once nothing of theirs is open; then
    /// the profile is erased with its conversations. 0 keeps every profile.
    #[serde(default)]
    pub customer_retention_days: u32,
}

impl StoreSettings {
    /// The configured TLS files of the Redis connection.
    pub fn tls_files(&self) -> TlsFiles<'_> {
        TlsFiles {
            section: "store",
            ca_file: self.tls_ca_file.as_deref(),
            cert_file: self.tls_cert_file.as_deref(),
            key_file: self.tls_key_file.as_deref(),
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            kind: StoreKind::default(),
            url: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            sentinel: None,
            key_prefix: default_key_prefix(),
            dedupe_ttl_secs: default_dedupe_ttl(),
            retention_days: 0,
            customer_retention_days: 0,
        }
    }
}

/// `[store.sentinel]`: the Redis master is the one the sentinels name, and the store follows
/// it through failovers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSettings {
    /// The master's name, as the sentinels monitor it (`sentinel monitor <name> …`).
    pub master: String,
    /// The sentinels' URLs (`redis://host:26379`), as a list or one comma-separated string
    /// (for `SWITCHYARD__STORE__SENTINEL__NODES`).
    #[serde(deserialize_with = "list_or_commas")]
    pub nodes: Vec<String>,
}

/// A list of strings, given as a list or as one comma-separated string.
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Commas(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(list) => list,
        Either::Commas(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

fn default_key_prefix() -> String {
    "switchyard".to_owned()
}
fn default_dedupe_ttl() -> u64 {
    24 * 3600
}

/// `[router]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSettings {
    /// In-place retries of a failing message after which a warning is logged (it keeps being
    /// retried while the store or bus is unavailable); for outbound sends, attempts per delivery.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Messages of history sent with an assignment.
    #[serde(default = "default_history")]
    pub history_limit: usize,
    /// This router's index among `instances` (e.g. a StatefulSet ordinal). Inbound shards have
    /// a single active consumer, the first to register; each router registers at once on the
    /// shards `shard % instances == instance` and only after `standby_delay_ms` on the others,
    /// so routers started together share the shards and each stands by for the rest.
    #[serde(default)]
    pub instance: u16,
    /// Number of router replicas sharing the shards.
    #[serde(default = "default_instances")]
    pub instances: u16,
    /// Delay before registering as standby on another router's shards.
    #[serde(default = "default_standby_delay")]
    pub standby_delay_ms: u64,
    /// Whether a router hands the shards it took over back to their owner once the owner is
    /// up again (see docs/operations.md, "Routers"). Without it, shards stay with the router
    /// that took them over until the routers restart together.
    #[serde(default = "default_true")]
    pub hand_back_shards: bool,
    /// Messages routed at once by this router, across all its shards (each holds store and bus
    /// calls in flight). More deliveries than this may wait in memory (up to prefetch × shards);
    /// the bound keeps an overloaded router's store calls within their timeouts.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Seconds an agent stays present after its gateway's last heartbeat. While an agent has a
    /// WebSocket open, its gateway heart-beats every third of this; when the gateway dies, the
    /// agent is set offline (never assigned again) once this has passed. `0` turns heartbeats
    /// off: agents then stay online until their socket closes, as REST-managed agents do.
    #[serde(default = "default_presence_ttl")]
    pub presence_ttl_secs: u64,
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            attempts: default_attempts(),
            history_limit: default_history(),
            instance: 0,
            instances: default_instances(),
            standby_delay_ms: default_standby_delay(),
            hand_back_shards: true,
            max_in_flight: default_max_in_flight(),
            presence_ttl_secs: default_presence_ttl(),
        }
    }
}

fn default_presence_ttl() -> u64 {
    30
}

fn default_max_in_flight() -> usize {
    128
}

fn default_attempts() -> u32 {
    3
}
fn default_instances() -> u16 {
    1
}
fn default_true() -> bool {
    true
}
fn default_standby_delay() -> u64 {
    3_000
}
fn default_history() -> usize {
    50
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable.
    Pretty,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Format.
    #[serde(default)]
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info,switchyard_router=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// Option keys every channel kind accepts besides `id`, `kind`, `pool` and `api_base` (they
/// are read from [`ChannelSettings::options`]): `keep_raw`, `raw_mask` and `redact`.
pub const COMMON_CHANNEL_KEYS: &[&str] = &["keep_raw", "raw_mask", "redact"];

/// One `[[channels]]` entry: the common keys plus the connector's own.
#[derive(Debug, Clone, Deserialize)]
pub struct ChannelSettings {
    /// Instance id: the path segment and the `channel.id` of its envelopes.
    pub id: String,
    /// Connector type.
    pub kind: String,
    /// Pool its conversations go to.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// The platform API's base URL (proxies, fakes in tests).
    #[serde(default)]
    pub api_base: Option<String>,
    /// The connector's own keys.
    #[serde(flatten)]
    pub options: BTreeMap<String, serde_json::Value>,
}

fn default_pool() -> String {
    "default".to_owned()
}

impl ChannelSettings {
    /// A string option given as `key`, `key_env` (environment variable) or `key_file`.
    pub fn secret(&self, key: &str) -> Result<Option<String>, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: format!("channels.{}.{key}", self.id),
            message,
        };
        if let Some(v) = self.options.get(key) {
            return match v {
                serde_json::Value::String(s) => Ok(Some(s.clone())),
                serde_json::Value::Number(n) => Ok(Some(n.to_string())),
                other => Err(invalid(format!("expected a string, found {other}"))),
            };
        }
        if let Some(var) = self.options.get(&format!("{key}_env")) {
            let var = var
                .as_str()
                .ok_or_else(|| invalid("`_env` must name an environment variable".into()))?;
            return std::env::var(var)
                .map(Some)
                .map_err(|_| invalid(format!("environment variable `{var}` is not set")));
        }
        if let Some(file) = self.options.get(&format!("{key}_file")) {
            let file = file
                .as_str()
                .ok_or_else(|| invalid("`_file` must be a path".into()))?;
            return std::fs::read_to_string(file)
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|e| invalid(format!("cannot read `{file}`: {e}")));
        }
        Ok(None)
    }

    /// A yes/no option: `true`/`false`, or the strings `"true"`/`"false"` (as environment
    /// overrides give it); `false` when absent.
    pub fn flag(&self, key: &str) -> Result<bool, ConfigError> {
        match self.options.get(key) {
            None => Ok(false),
            Some(serde_json::Value::Bool(b)) => Ok(*b),
            Some(serde_json::Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
            Some(other) => Err(ConfigError::Invalid {
                key: format!("channels.{}.{key}", self.id),
                message: format!("expected true or false, found {other}"),
            }),
        }
    }

    /// A whole number of seconds, at most `max`: a number, or a string of digits (as environment
    /// overrides give it); `default` when absent. It is no secret, so a `key_env` or `key_file`
    /// form is refused rather than ignored.
    pub fn seconds(&self, key: &str, default: u64, max: u64) -> Result<u64, ConfigError> {
        for form in ["_env", "_file"] {
            if self.options.contains_key(&format!("{key}{form}")) {
                return Err(ConfigError::Invalid {
                    key: format!("channels.{}.{key}{form}", self.id),
                    message: format!("`{key}` is no secret: give the number itself"),
                });
            }
        }
        let invalid = |found: &serde_json::Value| ConfigError::Invalid {
            key: format!("channels.{}.{key}", self.id),
            message: format!("expected whole seconds from 0 to {max}, found {found}"),
        };
        let secs = match self.options.get(key) {
            None => return Ok(default),
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        match secs {
            Some(secs) if secs <= max => Ok(secs),
            _ => Err(invalid(&self.options[key])),
        }
    }

    /// `keep_raw`: whether the channel's envelopes keep the original payload in `raw`
    /// (masked); `false` when absent.
    pub fn keep_raw(&self) -> Result<bool, ConfigError> {
        self.flag("keep_raw")
    }

    /// `raw_mask`: field names masked in a kept `raw` besides the built-in ones; a list of
    /// non-blank strings (empty when absent).
    pub fn raw_mask(&self) -> Result<Vec<String>, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: format!("channels.{}.raw_mask", self.id),
            message,
        };
        let Some(value) = self.options.get("raw_mask") else {
            return Ok(Vec::new());
        };
        let list = value
            .as_array()
            .ok_or_else(|| invalid(format!("expected a list of strings, found {value}")))?;
        list.iter()
            .map(|entry| match entry {
                serde_json::Value::String(name) if !name.trim().is_empty() => Ok(name.clone()),
                serde_json::Value::String(_) => {
                    Err(invalid("has an empty entry, which masks nothing".into()))
                }
                other => Err(invalid(format!(
                    "expected a list of strings, found the entry {other}"
                ))),
            })
            .collect()
    }

    /// `redact`: the names of the redaction rules this channel applies (detectors or
    /// `[[redaction.patterns]]`), instead of `[redaction]`'s; `None` when absent, so the
    /// defaults apply; an empty list turns redaction off for the channel.
    pub fn redact(&self) -> Result<Option<Vec<String>>, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: format!("channels.{}.redact", self.id),
            message,
        };
        let Some(value) = self.options.get("redact") else {
            return Ok(None);
        };
        let list = value
            .as_array()
            .ok_or_else(|| invalid(format!("expected a list of rule names, found {value}")))?;
        list.iter()
            .map(|entry| match entry {
                serde_json::Value::String(name) => Ok(name.clone()),
                other => Err(invalid(format!(
                    "expected a list of rule names, found the entry {other}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Like [`Self::secret`] but the key must be present.
    pub fn required_secret(&self, key: &str) -> Result<String, ConfigError> {
        self.secret(key)?.ok_or_else(|| ConfigError::Invalid {
            key: format!("channels.{}.{key}", self.id),
            message: format!("required (or `{key}_env` / `{key}_file`)"),
        })
    }

    /// Keys that are not common channel keys ([`COMMON_CHANNEL_KEYS`], as given) nor any of
    /// `known` (with `_env`/`_file` forms).
    pub fn unknown_options(&self, known: &[&str]) -> Vec<String> {
        self.options
            .keys()
            .filter(|k| !COMMON_CHANNEL_KEYS.contains(&k.as_str()))
            .filter(|k| {
                let base = k
                    .strip_suffix("_env")
                    .or_else(|| k.strip_suffix("_file"))
                    .unwrap_or(k);
                !known.contains(&base) && !known.contains(&k.as_str())
            })
            .cloned()
            .collect()
    }
}

/// Pool assignment strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The online agent with room who has waited longest since their last assignment.
    #[default]
    LongestIdle,
    /// The online agent with room holding the fewest conversations; among equals, the longest
    /// idle. Spreads concurrent chats evenly; each choice reads every agent with room.
    LeastBusy,
}

/// Longest `offer_timeout_secs` of a pool.
pub const MAX_OFFER_TIMEOUT_SECS: u64 = 3600;
/// Longest `answer_timeout_secs` of a pool: a day.
pub const MAX_ANSWER_TIMEOUT_SECS: u64 = 86_400;

/// One `[[pools]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// Pool id.
    pub id: String,
    /// Assignment strategy.
    #[serde(default)]
    pub strategy: Strategy,
    /// A `[[bots]]` id: the bot holds every conversation this pool opens (status `bot`) until
    /// it hands it off to a pool's queue or an agent.
    #[serde(default)]
    pub bot: Option<String>,
    /// Seconds without a message either way after which the bot's conversation is handed off
    /// to this pool's queue anyway (0: never).
    #[serde(default)]
    pub bot_timeout_secs: u64,
    /// Seconds without any change (a message either way, an assignment, a transfer) after
    /// which a queued or assigned conversation of this pool is closed, reason `idle` (0: never).
    #[serde(default)]
    pub close_idle_secs: u64,
    /// Business hours (`[pools.hours]`) and the automatic reply outside them; none: always open.
    #[serde(default)]
    pub hours: Option<HoursSettings>,
    /// A conversation this pool opens goes to the customer's last agent (the agent most
    /// recently handed one of their conversations) instead of the longest idle, when that agent
    /// can take it as it leaves the queue.
    #[serde(default)]
    pub prefer_last_agent: bool,
    /// Seconds an agent has to accept a conversation this pool's queue offers it (accept or
    /// decline over REST or the agent WebSocket); unanswered, it goes back to the queue and the
    /// agent is set away. 0 (the default): assignments are final, nobody accepts.
    #[serde(default)]
    pub offer_timeout_secs: u64,
    /// Seconds a customer of an agent of this pool waits for an answer (since their first
    /// message after the agent's last reply, or since the assignment when that came later)
    /// before the conversation is taken back from the agent: it goes to the front of the pool's
    /// queue, to another agent, and the agent is set away (unless `answer_timeout_sets_away` is
    /// false). 0 (the default): never.
    #[serde(default)]
    pub answer_timeout_secs: u64,
    /// Whether an agent whose conversation `answer_timeout_secs` took back is set away (the
    /// default), or keeps its status and is only passed over for that conversation.
    #[serde(default = "default_true")]
    pub answer_timeout_sets_away: bool,
    /// What happens to a conversation that waits too long in this pool's queue
    /// (`[pools.overflow]`); none: it waits for an agent of the pool.
    #[serde(default)]
    pub overflow: Option<OverflowSettings>,
}

/// Longest `[pools.overflow] after_secs`: a day.
pub const MAX_OVERFLOW_AFTER_SECS: u64 = 86_400;

/// `[pools.overflow]`: a conversation queued in the pool for `after_secs` without being assigned
/// moves on, to `pool`'s queue (this pool's again when absent), asking `skills` and with
/// `priority` when they are given. At least one of the three must change something.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverflowSettings {
    /// Seconds in the queue (since its `queued_at`) after which the conversation moves on.
    pub after_secs: u64,
    /// The pool it moves to; absent: it stays in this pool's queue (with new `skills` or
    /// `priority`).
    #[serde(default)]
    pub pool: Option<String>,
    /// The skills it asks of its next agent from then on (`[]`: none); absent: those it asked.
    #[serde(default)]
    pub skills: Option<Vec<String>>,
    /// Its priority from then on; absent: the one it had.
    #[serde(default)]
    pub priority: Option<u8>,
}

/// One `[[routes]]` entry: a routing rule. A conversation opened by a message the rule matches
/// goes to its `pool`. Every condition given must hold (a list holds when any of its entries
/// does); a rule with no condition matches every message. Rules are tried in order; when none
/// matches, the channel's `pool` applies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Rule id (`[A-Za-z0-9_-]+`), the `rule` label of its metric.
    pub id: String,
    /// The pool it routes to.
    pub pool: String,
    /// Channel ids the message may come from.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Channel kinds the message may come from (`wechat_oa`, `api`, ...).
    #[serde(default)]
    pub channel_kinds: Vec<String>,
    /// Tenants the message may belong to.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Identity kinds of which the sender must have one (`phone`, `wechat_unionid`, ...).
    #[serde(default)]
    pub identity_kinds: Vec<String>,
    /// Words or phrases of which a text message must contain one (case-insensitive).
    #[serde(default)]
    pub text_contains: Vec<String>,
    /// A regular expression a text message must match (Rust `regex` syntax; `(?i)` for
    /// case-insensitive).
    #[serde(default)]
    pub text_matches: Option<String>,
    /// Tags of which the customer must have one (set through `PATCH /v1/customers/{id}`), as the
    /// profile is just before the message is routed; a new customer has none. Given, the list
    /// may not be empty.
    #[serde(default)]
    pub customer_tags: Option<Vec<String>>,
    /// Skills the conversation asks of its agent: it is offered only to agents of the pool who
    /// have every one of them (not a condition of the rule; the rule's effect with `pool`).
    #[serde(default)]
    pub skills: Vec<String>,
    /// The conversation's priority in the pool's queue (0 to 255): a higher priority is offered
    /// to agents first, whatever waited longer (like `skills`, not a condition).
    #[serde(default)]
    pub priority: u8,
}

impl RouteSettings {
    /// `text_matches` compiled, if given (at most 1 MiB compiled, so a rule stays cheap).
    pub fn text_pattern(&self) -> Result<Option<regex::Regex>, regex::Error> {
        self.text_matches
            .as_deref()
            .map(|pattern| {
                regex::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
            })
            .transpose()
    }
}

/// One `[[webhooks]]` entry: events of the stream POSTed, signed, to `url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Webhook id (`[A-Za-z0-9_-]+`); its queue is `switchyard.webhooks.{id}`.
    pub id: String,
    /// Where the events are POSTed (`http://` or `https://`).
    pub url: String,
    /// The signing secret (prefer `secret_env` / `secret_file`).
    #[serde(default)]
    pub secret: Option<String>,
    /// Environment variable holding the secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Event types to send, as AMQP topic patterns (`conversation.*`, `#` for all).
    #[serde(default = "default_webhook_events")]
    pub events: Vec<String>,
    /// Milliseconds a request may take.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at once. Events of one subject (a conversation, a customer, an agent)
    /// are sent one after the other, in order, whatever this is; 1 sends every event in order.
    #[serde(default = "default_webhook_concurrency")]
    pub concurrency: u16,
}

fn default_webhook_concurrency() -> u16 {
    16
}

fn default_webhook_events() -> Vec<String> {
    vec!["#".to_owned()]
}

fn default_webhook_timeout_ms() -> u64 {
    10_000
}

/// One `[[bots]]` entry: an HTTP bot. It is sent the events of the conversations it holds
/// (`conversation.created`, `message.received`), signed like a webhook, and answers, hands off
/// and closes through the REST API as the agent `bot:{id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BotSettings {
    /// Bot id (`[A-Za-z0-9_-]+`); its agent id is `bot:{id}`, its queue `switchyard.bots.{id}`.
    pub id: String,
    /// Where its events are POSTed (`http://` or `https://`).
    pub url: String,
    /// The signing secret (prefer `secret_env` / `secret_file`).
    #[serde(default)]
    pub secret: Option<String>,
    /// Environment variable holding the secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Milliseconds a request may take.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at once (the events of one conversation always go one by one).
    #[serde(default = "default_webhook_concurrency")]
    pub concurrency: u16,
}

/// The event types a bot is sent (only those of the conversations it holds; a
/// `conversation.transferred` only when the transfer handed the conversation to it or took it
/// from it; a `conversation.closed` when the conversation closed while the bot held it).
pub const BOT_EVENTS: &[&str] = &[
    "conversation.created",
    "conversation.closed",
    "conversation.transferred",
    "message.received",
];

impl BotSettings {
    /// The agent id the bot holds conversations, replies and hands off as.
    pub fn agent_id(&self) -> String {
        bot_agent_id(&self.id)
    }

    /// The signing secret.
    pub fn resolved_secret(&self) -> Result<String, ConfigError> {
        resolve_secret(
            &format!("bots.{}.secret", self.id),
            self.secret.as_ref(),
            self.secret_env.as_ref(),
            self.secret_file.as_ref(),
        )
    }
}

/// What the agent id of every bot starts with.
pub const BOT_AGENT_PREFIX: &str = "bot:";

/// The agent id of bot `id`: `bot:{id}`.
pub fn bot_agent_id(id: &str) -> String {
    format!("{BOT_AGENT_PREFIX}{id}")
}

/// The bot id of an agent id that is a bot's (`bot:{id}`), else `None`.
pub fn bot_of_agent(agent_id: &str) -> Option<&str> {
    agent_id
        .strip_prefix(BOT_AGENT_PREFIX)
        .filter(|id| !id.is_empty())
}

/// A secret given as `value`, as the environment variable `env`, or in `file` (surrounding
/// whitespace trimmed); `key` is the configuration path, for errors.
fn resolve_secret(
    key: &str,
    value: Option<&String>,
    env: Option<&String>,
    file: Option<&PathBuf>,
) -> Result<String, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: key.to_owned(),
        message,
    };
    if let Some(value) = value {
        Ok(value.clone())
    } else if let Some(var) = env {
        std::env::var(var).map_err(|_| invalid(format!("environment variable `{var}` is not set")))
    } else if let Some(file) = file {
        std::fs::read_to_string(file)
            .map(|s| s.trim().to_owned())
            .map_err(|e| invalid(format!("cannot read `{}`: {e}", file.display())))
    } else {
        Err(invalid(format!(
            "one of `{0}`, `{0}_env`, `{0}_file` is required",
            key.rsplit('.').next().unwrap_or(key)
        )))
    }
}

impl WebhookSettings {
    /// The signing secret.
    pub fn resolved_secret(&self) -> Result<String, ConfigError> {
        resolve_secret(
            &format!("webhooks.{}.secret", self.id),
            self.secret.as_ref(),
            self.secret_env.as_ref(),
            self.secret_file.as_ref(),
        )
    }
}

/// The embedded default: a `web` channel, the `default` pool, everything in-process.
pub const EMBEDDED_DEFAULT: &str = r#"
[[channels]]
id = "web"
kind = "web"
"#;

impl Settings {
    /// Loads `path` (or the embedded default when `None`), then applies `SWITCHYARD__…`
    /// environment overrides, then validates.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let env = std::env::vars().filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")));
        Self::load_with_env(path, env)
    }

    /// The embedded default on an ephemeral loopback port (`127.0.0.1:0`, 2 s shutdown grace)
    /// plus one `api` channel `channel` with `secret`: what the load generator and `cargo bench`
    /// run in-process. No file and no environment are read.
    pub fn embedded_with_api_channel(channel: &str, secret: &str) -> Result<Settings, ConfigError> {
        // A JSON string literal is a valid TOML basic string (same escapes).
        let quoted = |v: &str| serde_json::Value::from(v).to_string();
        let (channel, secret) = (quoted(channel), quoted(secret));
        let text = format!(
            r#"[server]
listen = "127.0.0.1:0"
shutdown_grace_secs = 2

[[channels]]
id = "web"
kind = "web"

[[channels]]
id = {channel}
kind = "api"
secret = {secret}
"#
        );
        Self::from_toml(&text, None, std::iter::empty())
    }

    /// [`Self::load`] with explicit environment variables (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| ConfigError::Load {
                path: Some(p.to_path_buf()),
                message: e.to_string(),
            })?,
            None => EMBEDDED_DEFAULT.to_owned(),
        };
        Self::from_toml(&text, path, env)
    }

    /// Parses `text` (TOML, read from `path` if any), applies `env` overrides, validates.
    fn from_toml(
        text: &str,
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml));
        let env: config::Map<String, String> = env.into_iter().collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let raw = builder.build().map_err(|e| ConfigError::Load {
            path: path.map(Path::to_path_buf),
            message: e.to_string(),
        })?;
        let settings: Settings =
            serde_path_to_error::deserialize(raw).map_err(|e| ConfigError::Invalid {
                key: e.path().to_string(),
                message: e.into_inner().to_string(),
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Webhooks: valid unique ids, an HTTP(S) URL, a secret, event patterns.
    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, hook) in self.webhooks.iter().enumerate() {
            let endpoint = Endpoint {
                section: "webhooks",
                index: i,
                id: &hook.id,
                url: &hook.url,
                timeout_ms: hook.timeout_ms,
                concurrency: hook.concurrency,
            };
            endpoint.check(&mut seen, || hook.resolved_secret())?;
            if hook.events.is_empty() {
                return Err(
                    endpoint.invalid("events", "lists no event types (`#` sends all)".into())
                );
            }
            if let Some(bad) = hook.events.iter().find(|p| {
                p.is_empty()
                    || p.split('.')
                        .any(|word| word.is_empty() || word.contains(char::is_whitespace))
            }) {
                return Err(endpoint.invalid(
                    "events",
                    format!("`{bad}` is not a topic pattern such as `conversation.*`"),
                ));
            }
        }
        Ok(())
    }

    /// Bots: like webhooks, and every pool's `bot` names one.
    fn validate_bots(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, bot) in self.bots.iter().enumerate() {
            Endpoint {
                section: "bots",
                index: i,
                id: &bot.id,
                url: &bot.url,
                timeout_ms: bot.timeout_ms,
                concurrency: bot.concurrency,
            }
            .check(&mut seen, || bot.resolved_secret())?;
        }
        for (i, pool) in self.pools.iter().enumerate() {
            if let Some(bot) = &pool.bot
                && !self.bots.iter().any(|b| &b.id == bot)
            {
                return Err(ConfigError::Invalid {
                    key: format!("pools[{i}].bot"),
                    message: format!("bot `{bot}` is not defined in [[bots]]"),
                });
            }
            if pool.bot_timeout_secs > 0 && pool.bot.is_none() {
                return Err(ConfigError::Invalid {
                    key: format!("pools[{i}].bot_timeout_secs"),
                    message: "needs the pool's `bot`".into(),
                });
            }
            if pool.offer_timeout_secs > MAX_OFFER_TIMEOUT_SECS {
                return Err(ConfigError::Invalid {
                    key: format!("pools[{i}].offer_timeout_secs"),
                    message: format!(
                        "{} is more than {MAX_OFFER_TIMEOUT_SECS} seconds: an offer is a \
                         conversation nobody answers meanwhile",
                        pool.offer_timeout_secs
                    ),
                });
            }
            if pool.answer_timeout_secs > MAX_ANSWER_TIMEOUT_SECS {
                return Err(ConfigError::Invalid {
                    key: format!("pools[{i}].answer_timeout_secs"),
                    message: format!(
                        "{} is more than {MAX_ANSWER_TIMEOUT_SECS} seconds (a day)",
                        pool.answer_timeout_secs
                    ),
                });
            }
        }
        Ok(())
    }

    /// Queue overflows: a time within bounds, a known pool, valid skills, and a move that
    /// changes something.
    fn validate_overflows(&self) -> Result<(), ConfigError> {
        let pools = self.pool_ids();
        for (i, pool) in self.pools.iter().enumerate() {
            let Some(overflow) = &pool.overflow else {
                continue;
            };
            let invalid = |field: &str, message: String| ConfigError::Invalid {
                key: format!("pools[{i}].overflow.{field}"),
                message,
            };
            if !(1..=MAX_OVERFLOW_AFTER_SECS).contains(&overflow.after_secs) {
                return Err(invalid(
                    "after_secs",
                    format!(
                        "{} is not between 1 and {MAX_OVERFLOW_AFTER_SECS} seconds",
                        overflow.after_secs
                    ),
                ));
            }
            if let Some(to) = &overflow.pool
                && !pools.contains(to)
            {
                return Err(invalid(
                    "pool",
                    format!("pool `{to}` is not defined (pools: {})", pools.join(", ")),
                ));
            }
            if let Some(bad) = overflow
                .skills
                .iter()
                .flatten()
                .find(|skill| !is_valid_skill(skill))
            {
                return Err(invalid(
                    "skills",
                    format!(
                        "`{bad}` is not a skill name: 1 to {MAX_TAG_CHARS} characters without \
                         control characters"
                    ),
                ));
            }
            let moves = overflow.pool.as_ref().is_some_and(|to| *to != pool.id);
            if !moves && overflow.skills.is_none() && overflow.priority.is_none() {
                return Err(invalid(
                    "pool",
                    "an overflow needs another `pool`, or `skills` or `priority` to change".into(),
                ));
            }
        }
        Ok(())
    }

    /// Routing rules: valid unique ids, known pools and channels, conditions that can hold.
    fn validate_routes(&self) -> Result<(), ConfigError> {
        let pools = self.pool_ids();
        let mut seen = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let invalid = |field: &str, message: String| ConfigError::Invalid {
                key: format!("routes[{i}].{field}"),
                message,
            };
            if !valid_id(&route.id) {
                return Err(invalid(
                    "id",
                    format!("`{}` must be non-empty [A-Za-z0-9_-]+", route.id),
                ));
            }
            if !seen.insert(route.id.as_str()) {
                return Err(invalid(
                    "id",
                    format!("route id `{}` is used twice", route.id),
                ));
            }
            if !pools.contains(&route.pool) {
                return Err(invalid(
                    "pool",
                    format!(
                        "pool `{}` is not defined (pools: {})",
                        route.pool,
                        pools.join(", ")
                    ),
                ));
            }
            if let Some(unknown) = route
                .channels
                .iter()
                .find(|id| !self.channels.iter().any(|ch| &ch.id == *id))
            {
                return Err(invalid(
                    "channels",
                    format!("channel `{unknown}` is not configured"),
                ));
            }
            let lists = [
                ("channel_kinds", &route.channel_kinds),
                ("tenants", &route.tenants),
                ("identity_kinds", &route.identity_kinds),
                ("text_contains", &route.text_contains),
            ];
            if let Some((field, _)) = lists
                .iter()
                .find(|(_, list)| list.iter().any(|entry| entry.trim().is_empty()))
            {
                return Err(invalid(
                    field,
                    "has an empty entry, which never matches".into(),
                ));
            }
            route.text_pattern().map_err(|e| {
                invalid(
                    "text_matches",
                    format!("not a valid regular expression: {e}"),
                )
            })?;
            if let Some(tags) = &route.customer_tags {
                if tags.is_empty() {
                    return Err(invalid(
                        "customer_tags",
                        "is empty, which never matches: list at least one tag, or leave the key \
                         out"
                        .into(),
                    ));
                }
                if tags.iter().any(|tag| tag.trim().is_empty()) {
                    return Err(invalid(
                        "customer_tags",
                        "has an empty entry, which never matches".into(),
                    ));
                }
                if let Some(bad) = tags.iter().find(|tag| !is_valid_tag(tag)) {
                    return Err(invalid(
                        "customer_tags",
                        format!(
                            "`{bad}` never matches: a tag is 1 to {MAX_TAG_CHARS} characters \
                             without control characters"
                        ),
                    ));
                }
            }
            if let Some(bad) = route.skills.iter().find(|skill| !is_valid_skill(skill)) {
                return Err(invalid(
                    "skills",
                    format!(
                        "`{bad}` is not a skill name: 1 to {MAX_TAG_CHARS} characters without \
                         control characters"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks what types cannot: unique ids, known pools, the loopback rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, ch) in self.channels.iter().enumerate() {
            if !valid_id(&ch.id) {
                return Err(ConfigError::Invalid {
                    key: format!("channels[{i}].id"),
                    message: format!("`{}` must be non-empty [A-Za-z0-9_-]+", ch.id),
                });
            }
            if !seen.insert(ch.id.as_str()) {
                return Err(ConfigError::Invalid {
                    key: format!("channels[{i}].id"),
                    message: format!("channel id `{}` is used twice", ch.id),
                });
            }
            ch.keep_raw()?;
            ch.raw_mask()?;
            let pools = self.pool_ids();
            if !pools.contains(&ch.pool) {
                return Err(ConfigError::Invalid {
                    key: format!("channels[{i}].pool"),
                    message: format!(
                        "pool `{}` is not defined (pools: {})",
                        ch.pool,
                        pools.join(", ")
                    ),
                });
            }
        }
        crate::redaction::Redaction::from_settings(self)?;
        self.validate_webhooks()?;
        self.validate_bots()?;
        self.validate_routes()?;
        self.validate_overflows()?;
        self.pool_hours()?;
        if self.auth.api_keys.is_empty() && !self.server.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                key: "server.listen".into(),
                message: format!(
                    "`{}` is not a loopback address and no [[auth.api_keys]] are configured; \
                     add an API key or listen on 127.0.0.1",
                    self.server.listen
                ),
            });
        }
        if self.bus.kind == BusKind::Amqp && self.bus.url.is_none() {
            return Err(ConfigError::Invalid {
                key: "bus.url".into(),
                message: "required when bus.kind = \"amqp\" (e.g. amqp://user:pass@host:5672/%2f)"
                    .into(),
            });
        }
        if self.bus.kind == BusKind::Amqp {
            check_tls_files(&self.bus.tls_files(), self.bus.url.as_deref(), "amqps://")?;
        }
        if self.store.kind == StoreKind::Redis {
            // Behind Sentinel, the TLS files serve every `rediss://` connection: to the master
            // (`store.url`) and to the sentinels (`store.sentinel.nodes`); one of them must be one.
            let tls_url = match &self.store.sentinel {
                None => self.store.url.as_deref(),
                Some(sentinel) => self
                    .store
                    .url
                    .iter()
                    .chain(&sentinel.nodes)
                    .map(String::as_str)
                    .find(|url| url.starts_with("rediss://")),
            };
            check_tls_files(&self.store.tls_files(), tls_url, "rediss://")?;
        }
        if let Some(sentinel) = &self.store.sentinel {
            let tls_nodes = sentinel
                .nodes
                .iter()
                .filter(|node| node.starts_with("rediss://"))
                .count();
            if tls_nodes != 0 && tls_nodes != sentinel.nodes.len() {
                return Err(ConfigError::Invalid {
                    key: "store.sentinel.nodes".into(),
                    message: "mixes redis:// and rediss:// sentinels; give them all one scheme"
                        .into(),
                });
            }
            if sentinel.master.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "store.sentinel.master".into(),
                    message: "must name the master the sentinels monitor".into(),
                });
            }
            if sentinel.nodes.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "store.sentinel.nodes".into(),
                    message: "must list at least one sentinel (e.g. redis://host:26379)".into(),
                });
            }
        } else if self.store.kind == StoreKind::Redis && self.store.url.is_none() {
            return Err(ConfigError::Invalid {
                key: "store.url".into(),
                message: "required when store.kind = \"redis\" (e.g. redis://host:6379/0), \
                          unless store.sentinel is set"
                    .into(),
            });
        }
        if self.router.instances == 0 || self.router.instance >= self.router.instances {
            return Err(ConfigError::Invalid {
                key: "router.instance".into(),
                message: format!(
                    "must be below router.instances ({}), which must be at least 1",
                    self.router.instances
                ),
            });
        }
        if self.bus.shards == 0 {
            return Err(ConfigError::Invalid {
                key: "bus.shards".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// Every pool id; `default` is always among them.
    /// The pools whose `strategy` is `least_busy`.
    pub fn least_busy_pools(&self) -> Vec<String> {
        self.pools
            .iter()
            .filter(|p| p.strategy == Strategy::LeastBusy)
            .map(|p| p.id.clone())
            .collect()
    }

    pub fn pool_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = vec!["default".to_owned()];
        for p in &self.pools {
            if !ids.contains(&p.id) {
                ids.push(p.id.clone());
            }
        }
        ids
    }

    /// The checked business hours of every pool that has `[pools.hours]`, by pool id.
    pub fn pool_hours(&self) -> Result<Vec<(String, Hours)>, ConfigError> {
        self.pools
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let hours = p.hours.as_ref()?;
                Some(
                    hours
                        .schedule(&format!("pools[{i}].hours"))
                        .map(|h| (p.id.clone(), h)),
                )
            })
            .collect()
    }

    /// Resolved API keys: `(name, key, scopes)`.
    pub fn api_keys(&self) -> Result<Vec<(String, String, Vec<String>)>, ConfigError> {
        self.auth
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let key = resolve_secret(
                    &format!("auth.api_keys[{i}].key"),
                    k.key.as_ref(),
                    k.key_env.as_ref(),
                    k.key_file.as_ref(),
                )?;
                Ok((k.name.clone(), key, k.scopes.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::new(text)
    }

    #[test]
    fn pool_strategies_are_read() {
        let f = write(
            "[[pools]]\nid = \"chat\"\nstrategy = \"least_busy\"\n\
             [[pools]]\nid = \"calls\"\nstrategy = \"longest_idle\"\n[[pools]]\nid = \"vip\"\n",
        );
        let s = Settings::load_with_env(Some(&f.0), []).unwrap();
        assert_eq!(s.pools[0].strategy, Strategy::LeastBusy);
        assert_eq!(s.pools[1].strategy, Strategy::LongestIdle);
        assert_eq!(s.pools[2].strategy, Strategy::LongestIdle);
        assert_eq!(s.least_busy_pools(), ["chat"]);
        refused(
            "[[pools]]\nid = \"chat\"\nstrategy = \"round_robin\"\n",
            "strategy",
            "does not have variant constructor round_robin",
        );
    }

    #[test]
    fn a_pool_overflow_is_read() {
        let f = write(
            "[[pools]]\nid = \"tier1\"\n[pools.overflow]\nafter_secs = 90\npool = \"tier2\"\n\
             skills = []\npriority = 3\n[[pools]]\nid = \"tier2\"\n\
             [[pools]]\nid = \"vip\"\n[pools.overflow]\nafter_secs = 30\nskills = [\"zh\"]\n",
        );
        let s = Settings::load_with_env(Some(&f.0), []).unwrap();
        let tier1 = s.pools[0].overflow.as_ref().unwrap();
        assert_eq!(tier1.after_secs, 90);
        assert_eq!(tier1.pool.as_deref(), Some("tier2"));
        assert_eq!(tier1.skills.as_deref(), Some(&[][..]));
        assert_eq!(tier1.priority, Some(3));
        assert!(s.pools[1].overflow.is_none());
        let vip = s.pools[2].overflow.as_ref().unwrap();
        assert_eq!((vip.pool.as_deref(), vip.priority), (None, None));
        assert_eq!(vip.skills.as_deref(), Some(&["zh".to_owned()][..]));
    }

    /// Asserts that `toml` is refused with an error naming `key` and saying `says`.
    fn refused(toml: &str, key: &str, says: &str) {
        let f = write(toml);
        let err = Settings::load_with_env(Some(&f.0), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains(says), "{toml}: {err}");
    }

    /// Minimal temp-file helper (std only).
    mod tempfile_path {
        use std::path::PathBuf;
        pub struct TempPath(pub PathBuf);
        impl TempPath {
            pub fn new(text: &str) -> Self {
                let p = std::env::temp_dir()
                    .join(format!("switchyard-test-{}.toml", ulid::Ulid::new()));
                std::fs::write(&p, text).unwrap();
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn embedded_with_api_channel_adds_one_api_channel_on_an_ephemeral_port() {
        // Quotes and backslashes in the secret survive the TOML round trip.
        let secret = r#"s3"cr\et"#;
        let s = Settings::embedded_with_api_channel("shop-app", secret).unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:0");
        let kinds: Vec<_> = s
            .channels
            .iter()
            .map(|c| (c.id.as_str(), c.kind.as_str()))
            .collect();
        assert_eq!(kinds, [("web", "web"), ("shop-app", "api")]);
        assert_eq!(
            s.channels[1].required_secret("secret").unwrap(),
            secret.to_owned()
        );
        assert!(Settings::embedded_with_api_channel("bad id", "x").is_err());
    }

    #[test]
    fn embedded_default_has_web_channel_and_default_pool() {
        let s = Settings::load_with_env(None, []).unwrap();
        assert_eq!(s.channels.len(), 1);
        assert_eq!(
            (s.channels[0].id.as_str(), s.channels[0].kind.as_str()),
            ("web", "web")
        );
        assert_eq!(s.pool_ids(), vec!["default".to_owned()]);
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn env_overrides_nested_keys() {
        let s = Settings::load_with_env(
            None,
            [
                ("SWITCHYARD__BUS__SHARDS".to_owned(), "4".to_owned()),
                (
                    "SWITCHYARD__SERVER__LISTEN".to_owned(),
                    "127.0.0.1:9999".to_owned(),
                ),
            ],
        )
        .unwrap();
        assert_eq!(s.bus.shards, 4);
        assert_eq!(s.server.listen.port(), 9999);
    }

    #[test]
    fn redis_through_sentinel_needs_no_url_and_takes_nodes_from_env() {
        let f = write(
            "[store]\nkind = \"redis\"\n[store.sentinel]\nmaster = \"main\"\n\
             nodes = [\"redis://s0:26379\"]\n",
        );
        let s = Settings::load_with_env(Some(&f.0), []).unwrap();
        let sentinel = s.store.sentinel.expect("sentinel");
        assert_eq!(
            (sentinel.master.as_str(), sentinel.nodes),
            ("main", vec!["redis://s0:26379".to_owned()])
        );
        assert_eq!(s.store.url, None);
        let s = Settings::load_with_env(
            Some(&f.0),
            [(
                "SWITCHYARD__STORE__SENTINEL__NODES".to_owned(),
                "redis://s0:26379, redis://s1:26379".to_owned(),
            )],
        )
        .unwrap();
        assert_eq!(
            s.store.sentinel.expect("sentinel").nodes,
            ["redis://s0:26379", "redis://s1:26379"]
        );
        let f =
            write("[store]\nkind = \"redis\"\n[store.sentinel]\nmaster = \"main\"\nnodes = []\n");
        let err = Settings::load_with_env(Some(&f.0), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.sentinel.nodes"), "{err}");
        let f = write("[store]\nkind = \"redis\"\n");
        let err = Settings::load_with_env(Some(&f.0), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.url"), "{err}");
        let f = write(
            "[store]\nkind = \"redis\"\ntls_ca_file = \"/ca.pem\"\n[store.sentinel]\n\
             master = \"main\"\nnodes = [\"redis://s0:26379\"]\n",
        );
        let err = Settings::load_with_env(Some(&f.0), [])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("store.tls_ca_file") && err.contains("rediss://"),
            "{err}"
        );
        // TLS to the master, or to the sentinels, takes the files.
        for (url, nodes) in [
            ("url = \"rediss://:pw@ignored/2\"\n", "redis://s0:26379"),
            ("", "rediss://s0:26379"),
        ] {
            let f = write(&format!(
                "[store]\nkind = \"redis\"\n{url}tls_ca_file = \"/ca.pem\"\n[store.sentinel]\n\
                 master = \"main\"\nnodes = [\"{nodes}\"]\n"
            ));
            Settings::load_with_env(Some(&f.0), []).expect("TLS files with a TLS connection");
        }
        let f = write(
            "[store]\nkind = \"redis\"\n[store.sentinel]\nmaster = \"main\"\n\
             nodes = [\"rediss://s0:26379\", \"redis://s1:26379\"]\n",
        );
        let err = Settings::load_with_env(Some(&f.0), [])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("store.sentinel.nodes") && err.contains("mixes"),
            "{err}"
        );
    }

    #[test]
    fn tls_files_need_a_tls_url_and_a_certificate_needs_its_key() {
        let bus = "[bus]\nkind = \"amqp\"\n";
        refused(
            &format!("{bus}url = \"amqp://h\"\ntls_ca_file = \"/ca.pem\"\n"),
            "bus.tls_ca_file",
            "amqps://",
        );
        refused(
            &format!("{bus}url = \"amqps://h\"\ntls_cert_file = \"/c.pem\"\n"),
            "bus.tls_key_file",
            "required",
        );
        refused(
            &format!("{bus}url = \"amqps://h\"\ntls_key_file = \"/c.key\"\n"),
            "bus.tls_cert_file",
            "required",
        );
        let store = "[store]\nkind = \"redis\"\n";
        refused(
            &format!(
                "{store}url = \"redis://h\"\ntls_cert_file = \"/c.pem\"\ntls_key_file = \"/k\"\n"
            ),
            "store.tls_cert_file",
            "rediss://",
        );
        refused(
            &format!(
                "{store}tls_key_file = \"/k\"\ntls_cert_file = \"/c\"\n[store.sentinel]\n\
                 master = \"main\"\nnodes = [\"redis://s0:26379\"]\n"
            ),
            "store.tls_cert_file",
            "rediss://",
        );
        let f = write(&format!(
            "{bus}url = \"amqps://h\"\ntls_ca_file = \"/ca.pem\"\ntls_cert_file = \"/c.pem\"\n\
             tls_key_file = \"/c.key\"\n{store}url = \"rediss://h\"\ntls_cert_file = \"/r.pem\"\n\
             tls_key_file = \"/r.key\"\n"
        ));
        let s = Settings::load_with_env(Some(&f.0), []).expect("complete TLS settings");
        let files = s.bus.tls_files();
        assert_eq!(files.cert_file, Some(Path::new("/c.pem")));
        assert_eq!(s.store.tls_files().key_file, Some(Path::new("/r.key")));
    }

    #[test]
    fn webhooks_are_checked_and_their_secret_resolved() {
        let hook = |fields: &str| {
            format!("[[webhooks]]\nid = \"helpdesk\"\nurl = \"https://h.example/hook\"\n{fields}")
        };
        refused(&hook(""), "webhooks.helpdesk.secret", "secret_env");
        refused(&hook("secret = \"short\"\n"), "webhooks[0].secret", "16");
        refused(
            &hook("secret = \"0123456789abcdef\"\nevents = []\n"),
            "webhooks[0].events",
            "no event types",
        );
        refused(
            &hook("secret = \"0123456789abcdef\"\nevents = [\"conversation..x\"]\n"),
            "webhooks[0].events",
            "topic pattern",
        );
        refused(
            &hook("secret = \"0123456789abcdef\"\nconcurrency = 0\n"),
            "webhooks[0].concurrency",
            "at least 1",
        );
        refused(
            &hook("secret_env = \"SY_TEST_UNSET_HOOK_SECRET\"\n"),
            "webhooks.helpdesk.secret",
            "SY_TEST_UNSET_HOOK_SECRET",
        );
        refused(
            "[[webhooks]]\nid = \"a b\"\nurl = \"https://h\"\nsecret = \"0123456789abcdef\"\n",
            "webhooks[0].id",
            "[A-Za-z0-9_-]+",
        );
        refused(
            "[[webhooks]]\nid = \"h\"\nurl = \"ftp://h\"\nsecret = \"0123456789abcdef\"\n",
            "webhooks[0].url",
            "http://",
        );
        let twice = format!(
            "{}{}",
            hook("secret = \"0123456789abcdef\"\n"),
            hook("secret = \"0123456789abcdef\"\n")
        );
        refused(&twice, "webhooks[1].id", "used twice");

        let f = write(&hook("secret = \"0123456789abcdef\"\n"));
        let s = Settings::load_with_env(Some(&f.0), []).expect("a complete webhook");
        let hook = &s.webhooks[0];
        assert_eq!(hook.events, ["#"], "every event by default");
        assert_eq!(hook.timeout_ms, 10_000);
        assert_eq!(hook.concurrency, 16);
        assert_eq!(hook.resolved_secret().unwrap(), "0123456789abcdef");
    }

    #[test]
    fn pool_hours_are_checked_with_their_key() {
        let pool = |hours: &str| {
            format!(
                "[[pools]]\nid = \"default\"\n\n[[pools]]\nid = \"support\"\n[pools.hours]\n{hours}"
            )
        };
        let good = pool(
            "timezone = \"Asia/Shanghai\"\nmon = \"09:00-18:00\"\n\
             tue = \"09:00-12:00,13:00-18:00\"\nsat = \"00:00-24:00\"\n\
             closed_dates = [\"2026-10-01\", \"2026-10-02\"]\n\
             outside_hours_reply = \"We are closed now.\"\n",
        );
        let f = write(&good);
        let s = Settings::load_with_env(Some(&f.0), []).expect("good hours");
        let hours = s.pool_hours().expect("hours");
        assert_eq!(hours.len(), 1);
        assert_eq!(hours[0].0, "support");
        assert_eq!(hours[0].1.reply(), "We are closed now.");
        assert_eq!(hours[0].1.timezone(), "Asia/Shanghai");
        assert!(s.pools[0].hours.is_none());

        let reply = "outside_hours_reply = \"closed\"\n";
        refused(
            &pool(&format!("mon = \"09:00-18:00\"\n{reply}")),
            "pools[1].hours.timezone",
            "required",
        );
        refused(
            &pool(&format!("timezone = \"Asia/Beijing\"\n{reply}")),
            "pools[1].hours.timezone",
            "IANA",
        );
        refused(
            &pool(&format!(
                "timezone = \"UTC\"\ntue = \"09:00-12:00,11:00-13:00\"\n{reply}"
            )),
            "pools[1].hours.tue",
            "overlap",
        );
        refused(
            &pool(&format!(
                "timezone = \"UTC\"\nwed = \"18:00-09:00\"\n{reply}"
            )),
            "pools[1].hours.wed",
            "start before",
        );
        refused(
            &pool(&format!(
                "timezone = \"UTC\"\nsun = \"9:00-10:00\"\n{reply}"
            )),
            "pools[1].hours.sun",
            "HH:MM",
        );
        refused(
            &pool(&format!(
                "timezone = \"UTC\"\nclosed_dates = [\"2026-02-30\"]\n{reply}"
            )),
            "pools[1].hours.closed_dates[0]",
            "YYYY-MM-DD",
        );
        refused(
            &pool("timezone = \"UTC\"\nmon = \"09:00-18:00\"\n"),
            "pools[1].hours.outside_hours_reply",
            "required",
        );
        refused(
            &pool(&format!(
                "timezone = \"UTC\"\nmonday = \"09:00-18:00\"\n{reply}"
            )),
            "monday",
            "unknown field",
        );
    }

    #[test]
    fn bots_are_checked_and_pools_name_them() {
        let bot = |fields: &str| {
            format!("[[bots]]\nid = \"faq\"\nurl = \"https://bot.example/hook\"\n{fields}")
        };
        refused(&bot(""), "bots.faq.secret", "secret_env");
        refused(&bot("secret = \"short\"\n"), "bots[0].secret", "16");
        refused(
            &bot("secret = \"0123456789abcdef\"\nevents = [\"#\"]\n"),
            "events",
            "unknown field",
        );
        refused(
            "[[bots]]\nid = \"faq\"\nurl = \"ftp://b\"\nsecret = \"0123456789abcdef\"\n",
            "bots[0].url",
            "http://",
        );
        refused(
            "[[pools]]\nid = \"triage\"\nbot = \"faq\"\n",
            "pools[0].bot",
            "bot `faq` is not defined",
        );
        refused(
            "[[pools]]\nid = \"triage\"\noffer_timeout_secs = 3601\n",
            "pools[0].offer_timeout_secs",
            "more than 3600",
        );
        refused(
            "[[pools]]\nid = \"triage\"\nanswer_timeout_secs = 86401\n",
            "pools[0].answer_timeout_secs",
            "more than 86400",
        );
        refused(
            "[[pools]]\nid = \"tier1\"\n[pools.overflow]\nafter_secs = 0\npool = \"default\"\n",
            "pools[0].overflow.after_secs",
            "not between 1 and 86400",
        );
        refused(
            "[[pools]]\nid = \"tier1\"\n[pools.overflow]\nafter_secs = 60\npool = \"tier2\"\n",
            "pools[0].overflow.pool",
            "pool `tier2` is not defined",
        );
        refused(
            "[[pools]]\nid = \"tier1\"\n[pools.overflow]\nafter_secs = 60\nskills = [\"\"]\n",
            "pools[0].overflow.skills",
            "not a skill name",
        );
        refused(
            "[[pools]]\nid = \"tier1\"\n[pools.overflow]\nafter_secs = 60\npool = \"tier1\"\n",
            "pools[0].overflow.pool",
            "needs another `pool`",
        );
        refused(
            "[[pools]]\nid = \"tier1\"\n[pools.overflow]\nafter_secs = 60\nwait = 1\n",
            "overflow",
            "unknown field `wait`",
        );
        refused(
            "[[pools]]\nid = \"triage\"\nbot_timeout_secs = 60\n",
            "pools[0].bot_timeout_secs",
            "needs the pool's `bot`",
        );
        let f = write(&format!(
            "{}[[pools]]\nid = \"triage\"\nbot = \"faq\"\n",
            bot("secret = \"0123456789abcdef\"\n")
        ));
        let s = Settings::load_with_env(Some(&f.0), []).expect("a bot and its pool");
        assert_eq!(s.bots[0].agent_id(), "bot:faq");
        assert_eq!(s.pools[0].bot.as_deref(), Some("faq"));
        assert_eq!((s.bots[0].timeout_ms, s.bots[0].concurrency), (10_000, 16));
    }

    #[test]
    fn routes_are_checked() {
        let base = "[[pools]]\nid = \"billing\"\n\n[[channels]]\nid = \"web\"\nkind = \"web\"\n";
        let route = |fields: &str| format!("{base}\n[[routes]]\nid = \"refunds\"\n{fields}");
        refused(&route(""), "routes", "pool");
        refused(&route("pool = \"vip\"\n"), "routes[0].pool", "not defined");
        refused(
            &route("pool = \"billing\"\nchannels = [\"app\"]\n"),
            "routes[0].channels",
            "`app` is not configured",
        );
        refused(
            &route("pool = \"billing\"\ntext_contains = [\"refund\", \" \"]\n"),
            "routes[0].text_contains",
            "empty entry",
        );
        refused(
            &route("pool = \"billing\"\ncustomer_tags = []\n"),
            "routes[0].customer_tags",
            "is empty",
        );
        refused(
            &route("pool = \"billing\"\ncustomer_tags = [\"vip\", \"\"]\n"),
            "routes[0].customer_tags",
            "empty entry",
        );
        refused(
            &route(&format!(
                "pool = \"billing\"\ncustomer_tags = [\"{}\"]\n",
                "x".repeat(65)
            )),
            "routes[0].customer_tags",
            "1 to 64 characters",
        );
        refused(
            &route("pool = \"billing\"\npriority = 256\n"),
            "priority",
            "256",
        );
        refused(
            &route("pool = \"billing\"\nskills = [\"zh\", \"\"]\n"),
            "routes[0].skills",
            "not a skill name",
        );
        refused(
            &route("pool = \"billing\"\ntext_matches = \"(unclosed\"\n"),
            "routes[0].text_matches",
            "regular expression",
        );
        refused(
            &route("pool = \"billing\"\ntext_contain = [\"x\"]\n"),
            "text_contain",
            "unknown field",
        );
        let twice = format!(
            "{}\n[[routes]]\nid = \"refunds\"\npool = \"default\"\n",
            route("pool = \"billing\"\n")
        );
        refused(&twice, "routes[1].id", "used twice");

        let f = write(&route(
            "pool = \"billing\"\nchannels = [\"web\"]\ntext_matches = \"(?i)order #\\\\d+\"\n\
             customer_tags = [\"vip\", \"金卡\"]\nskills = [\"zh\", \"billing\"]\npriority = 7\n",
        ));
        let s = Settings::load_with_env(Some(&f.0), []).expect("a valid route");
        assert_eq!(s.routes[0].skills, ["zh", "billing"]);
        assert_eq!(s.routes[0].priority, 7);
        let pattern = s.routes[0].text_pattern().unwrap().expect("compiled");
        assert!(pattern.is_match("ORDER #42"));
        assert_eq!(s.routes[0].channels, ["web"]);
        assert_eq!(
            s.routes[0].customer_tags.as_deref(),
            Some(&["vip".to_owned(), "金卡".to_owned()][..])
        );
    }

    #[test]
    fn errors_name_the_key_path() {
        let f = write("[bus]\nshards = \"many\"\n");
        let err = Settings::load_with_env(Some(&f.0), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bus.shards"), "{err}");
        let f = write("[server]\nlisten = \"0.0.0.0:80\"\n");
        let err = Settings::load_with_env(Some(&f.0), [])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.listen") && err.contains("API key"),
            "{err}"
        );
        let f = write("[[channels]]\nid = \"a\"\nkind = \"api\"\npool = \"vip\"\n");
        let err = Settings::load_with_env(Some(&f.0), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("channels[0].pool"), "{err}");
        let f = write("[serverr]\n");
        let err = Settings::load_with_env(Some(&f.0), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("serverr"), "{err}");
    }

    #[test]
    fn an_answer_timeout_sets_the_agent_away_unless_the_pool_says_not_to() {
        let f = write(
            "[[pools]]\nid = \"a\"\nanswer_timeout_secs = 60\n\
             [[pools]]\nid = \"b\"\nanswer_timeout_secs = 60\nanswer_timeout_sets_away = false\n",
        );
        let s = Settings::load_with_env(Some(&f.0), []).expect("valid pools");
        let away: Vec<bool> = s.pools.iter().map(|p| p.answer_timeout_sets_away).collect();
        assert_eq!(away, [true, false]);
    }

    #[test]
    fn redaction_rules_are_checked_by_path() {
        let channel = |fields: &str| {
            format!("[[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"x\"\n{fields}")
        };
        refused(
            "[redaction]\ndetectors = [\"credit_card\"]\n",
            "redaction.detectors[0]",
            "`credit_card` is no detector (detectors: payment_card, email",
        );
        refused(
            "[redaction]\ndetectors = [\"email\", \"email\"]\n",
            "redaction.detectors[1]",
            "listed twice",
        );
        refused(
            "[[redaction.patterns]]\nname = \"sec\"\nregex = \"SEC-([0-9]\"\n",
            "redaction.patterns[0].regex",
            "not a valid regular expression",
        );
        refused(
            "[[redaction.patterns]]\nname = \"sec\"\nregex = \"[0-9]*\"\n",
            "redaction.patterns[0].regex",
            "matches an empty text",
        );
        refused(
            "[[redaction.patterns]]\nname = \"email\"\nregex = \"x\"\n",
            "redaction.patterns[0].name",
            "taken by a detector",
        );
        refused(
            "[[redaction.patterns]]\nname = \"a b\"\nregex = \"x\"\n",
            "redaction.patterns[0].name",
            "[A-Za-z0-9_-]+",
        );
        refused(
            "[redaction]\nreplacement = \"\"\n",
            "redaction.replacement",
            "must not be empty",
        );
        refused(
            &channel("redact = \"email\"\n"),
            "channels.shop.redact",
            "expected a list of rule names",
        );
        refused(
            &channel("redact = [\"order_secret\"]\n"),
            "channels.shop.redact",
            "`order_secret` is neither a detector",
        );

        let f = write(&format!(
            "[redaction]\ndetectors = [\"email\"]\n[[redaction.patterns]]\nname = \"sec\"\n\
             regex = \"SEC-[0-9]{{6}}\"\n{}{}",
            channel(""),
            channel("redact = [\"payment_card\", \"sec\"]\n").replace("\"shop\"", "\"cards\"")
                + &channel("redact = []\n").replace("\"shop\"", "\"staff\"")
        ));
        let s = Settings::load_with_env(Some(&f.0), []).expect("valid redaction");
        let redaction = crate::redaction::Redaction::from_settings(&s).unwrap();
        let names = |id: &str| -> Vec<String> {
            redaction
                .for_channel(id)
                .map(|r| r.rule_names().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        assert_eq!(names("shop"), ["email", "sec"], "the defaults");
        assert_eq!(names("cards"), ["payment_card", "sec"], "its own list");
        assert!(
            redaction.for_channel("staff").is_none(),
            "`redact = []`: off"
        );
        assert_eq!(s.redaction.replacement, "[redacted:{name}]");
    }

    #[test]
    fn keep_raw_and_raw_mask_are_common_channel_keys_checked_by_path() {
        let channel = |fields: &str| {
            format!("[[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"x\"\n{fields}")
        };
        refused(
            &channel("raw_mask = \"note\"\n"),
            "channels.shop.raw_mask",
            "expected a list of strings",
        );
        refused(
            &channel("raw_mask = [\"note\", 3]\n"),
            "channels.shop.raw_mask",
            "expected a list of strings",
        );
        refused(
            &channel("raw_mask = [\"note\", \" \"]\n"),
            "channels.shop.raw_mask",
            "empty entry",
        );
        refused(
            &channel("keep_raw = \"yes\"\n"),
            "channels.shop.keep_raw",
            "expected true or false",
        );

        let f = write(&channel(
            "keep_raw = true\nraw_mask = [\"note\", \"Order_Ref\"]\n",
        ));
        let s = Settings::load_with_env(Some(&f.0), []).expect("valid raw keys");
        let ch = &s.channels[0];
        assert!(ch.keep_raw().unwrap());
        assert_eq!(ch.raw_mask().unwrap(), ["note", "Order_Ref"]);
        assert!(
            ch.unknown_options(&["secret"]).is_empty(),
            "every kind accepts them"
        );

        let f = write(&channel(""));
        let s = Settings::load_with_env(Some(&f.0), []).expect("no raw keys");
        assert!(!s.channels[0].keep_raw().unwrap(), "off by default");
        assert!(s.channels[0].raw_mask().unwrap().is_empty());

        // Only the keys themselves: they are not secrets, so no `_env` / `_file` forms.
        let f = write(&channel("keep_raw_env = \"X\"\n"));
        let s = Settings::load_with_env(Some(&f.0), []).expect("parsed");
        assert_eq!(s.channels[0].unknown_options(&["secret"]), ["keep_raw_env"]);
    }

    #[test]
    fn channel_seconds_are_whole_and_bounded() {
        let f = write(
            "[[channels]]\nid = \"w\"\nkind = \"web\"\nevery = 5\ntext = \" 7 \"\n\
             too_long = 301\nnegative = -1\nfraction = 1.5\nwords = \"soon\"\n",
        );
        let s = Settings::load_with_env(Some(&f.0), []).unwrap();
        let ch = &s.channels[0];
        assert_eq!(ch.seconds("every", 3, 300).unwrap(), 5);
        assert_eq!(
            ch.seconds("text", 3, 300).unwrap(),
            7,
            "as the environment gives it"
        );
        assert_eq!(ch.seconds("absent", 3, 300).unwrap(), 3, "the default");
        for bad in ["too_long", "negative", "fraction", "words"] {
            let err = ch.seconds(bad, 3, 300).unwrap_err().to_string();
            assert!(err.contains(&format!("channels.w.{bad}")), "{err}");
            assert!(err.contains("from 0 to 300"), "{err}");
        }
        let f = write("[[channels]]\nid = \"w\"\nkind = \"web\"\nevery_env = \"EVERY\"\n");
        let s = Settings::load_with_env(Some(&f.0), []).unwrap();
        let err = s.channels[0]
            .seconds("every", 3, 300)
            .unwrap_err()
            .to_string();
        assert!(err.contains("channels.w.every_env"), "{err}");
        assert!(err.contains("no secret"), "{err}");
    }

    #[test]
    fn secrets_resolve_from_env_and_file() {
        let f = write("s3cret\n");
        let path = f.0.display().to_string();
        let cfg = write(&format!(
            "[[channels]]\nid = \"a\"\nkind = \"api\"\nsecret_file = \"{path}\"\ncallback_url_env = \"SWITCHYARD_TEST_UNSET_VAR\"\n"
        ));
        let s = Settings::load_with_env(Some(&cfg.0), []).unwrap();
        assert_eq!(s.channels[0].required_secret("secret").unwrap(), "s3cret");
        let err = s.channels[0]
            .secret("callback_url")
            .unwrap_err()
            .to_string();
        assert!(err.contains("SWITCHYARD_TEST_UNSET_VAR"), "{err}");
        assert!(s.channels[0].required_secret("token").is_err());
    }
}
