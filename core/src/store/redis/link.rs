//! The store's connection to the Redis master: to a fixed address, or to the master that Redis
//! Sentinel names; replaced when it no longer reaches the master.
//!
//! A [`ConnectionManager`] reconnects by itself after an I/O error, but always to the address it
//! started with. After a failover that is the wrong server: it is gone, or it is a replica now
//! and refuses writes (`READONLY`). So when a command fails that way, the link builds a new
//! connection manager: from the same URL (a DNS name that follows the master, as managed Redis
//! services provide, resolves anew), or to the master the sentinels name now. Callers that saw
//! the same failure replace the connection once between them ([`Link::replace`] takes the
//! generation they used).

use std::sync::RwLock;
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use ::redis::{
    Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError,
    TlsCertificates, TlsMode,
};

use super::{
    CONNECTION_TIMEOUT, INITIAL_CONNECT_TIMEOUT, RECONNECT_MAX_DELAY, RECONNECT_RETRIES,
    RESPONSE_TIMEOUT, retryable, unavailable,
};
use crate::store::StoreError;
use crate::tls::ClientTls;

/// Where the store finds its Redis master.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// A fixed URL (`redis://host:6379/0`, or `rediss://` for TLS).
    Url {
        /// The URL.
        url: String,
        /// For `rediss://`: the CA to trust instead of the system's roots, and the client
        /// certificate to present to a server that verifies its clients.
        tls: ClientTls,
    },
    /// The master named `master`, found through the sentinels at `nodes`
    /// (`redis://host:26379`, or `rediss://` for TLS; the first one's username and password
    /// are used with every sentinel). `url`, if given, supplies the master's username, password
    /// and database, and with `rediss://` TLS; its host and port are not used.
    Sentinel {
        /// The master's name, as the sentinels monitor it.
        master: String,
        /// The sentinels.
        nodes: Vec<String>,
        /// Credentials and database of the master.
        url: Option<String>,
        /// For every `rediss://` connection (the master's, the sentinels'): the CA to trust
        /// instead of the system's roots, and the client certificate to present.
        tls: ClientTls,
    },
}

/// How the link reaches the master.
enum Source {
    Url(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// The connection to the master, and how to make a new one.
pub(super) struct Link {
    /// The connection, and its generation (counted up by every replacement).
    current: RwLock<(ConnectionManager, u64)>,
    source: Source,
    /// Held while a replacement is made: when the last one was tried, if one was.
    replacing: tokio::sync::Mutex<Option<Instant>>,
}

/// After a replacement, callers whose connection still fails fail at once for this long instead
/// of each replacing it again (the sentinels may not have named a new master yet, or the URL
/// may still reach a replica).
const RETRY_GAP: Duration = Duration::from_secs(1);

impl Link {
    /// Connects to the master of `target`, failing with [`StoreError::Unavailable`] when it does
    /// not answer within a few seconds.
    pub(super) async fn connect(target: &RedisTarget) -> Result<Self, StoreError> {
        let source = match target {
            RedisTarget::Url { url, tls } => {
                let client = match certificates(tls) {
                    None => Client::open(url.as_str()),
                    Some(certificates) => Client::build_with_tls(url.as_str(), certificates),
                };
                Source::Url(
                    client
                        .map_err(|e| StoreError::Unavailable(format!("invalid Redis URL: {e}")))?,
                )
            }
            RedisTarget::Sentinel {
                master,
                nodes,
                url,
                tls,
            } => Source::Sentinel(tokio::sync::Mutex::new(sentinel_client(
                master,
                nodes,
                url.as_deref(),
                tls,
            )?)),
        };
        let con = source.connect().await?;
        Ok(Link {
            current: RwLock::new((con, 0)),
            source,
            replacing: tokio::sync::Mutex::new(None),
        })
    }

    /// The connection, and its generation (for [`Link::replace`]).
    pub(super) fn get(&self) -> (ConnectionManager, u64) {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `e` says that the connection no longer reaches the master: the server is a
    /// replica now (`READONLY`), or, with Sentinel, the server does not answer (the sentinels may
    /// name another master).
    pub(super) fn lost_master(&self, e: &RedisError) -> bool {
        e.code() == Some("READONLY") || (matches!(self.source, Source::Sentinel(_)) && retryable(e))
    }

    /// Replaces connection `generation` with a new connection to the master, unless another
    /// caller replaced it already.
    pub(super) async fn replace(&self, generation: u64) -> Result<(), StoreError> {
        let mut last_try = self.replacing.lock().await;
        if self.get().1 != generation {
            return Ok(());
        }
        if last_try.is_some_and(|at| at.elapsed() < RETRY_GAP) {
            return Err(StoreError::Unavailable(
                "no connection to the Redis master; trying again shortly".into(),
            ));
        }
        *last_try = Some(Instant::now());
        let con = self.source.connect().await?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = (con, generation.wrapping_add(1));
        tracing::info!(generation = current.1, "reconnected to the Redis master");
        Ok(())
    }
}

/// The certificates of `tls` for the redis crate; `None` when it is the default (the system's
/// roots, no client certificate).
fn certificates(tls: &ClientTls) -> Option<TlsCertificates> {
    (*tls != ClientTls::default()).then(|| TlsCertificates {
        client_tls: tls.identity.as_ref().map(|id| ClientTlsConfig {
            client_cert: id.cert_pem.clone(),
            client_key: id.key_pem.clone(),
        }),
        root_cert: tls.ca_pem.clone(),
    })
}

/// A client of the sentinels at `nodes` that names the master `master`, and connects to it with
/// the credentials, database and TLS of `url`.
fn sentinel_client(
    master: &str,
    nodes: &[String],
    url: Option<&str>,
    tls: &ClientTls,
) -> Result<SentinelClient, StoreError> {
    let invalid =
        |what: &str, e: RedisError| StoreError::Unavailable(format!("invalid {what}: {e}"));
    let is_tls = |info: &ConnectionInfo| matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let sentinels = nodes
        .iter()
        .map(|node| node.as_str().into_connection_info())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("Sentinel node URL", e))?;
    let mut builder = SentinelClientBuilder::new(
        sentinels.iter().map(|info| info.addr().clone()),
        master,
        SentinelServerType::Master,
    )
    .map_err(|e| invalid("Sentinel settings", e))?;
    if let Some(first) = sentinels.first() {
        let auth = first.redis_settings();
        if let Some(username) = auth.username() {
            builder = builder.set_client_to_sentinel_username(username);
        }
        if let Some(password) = auth.password() {
            builder = builder.set_client_to_sentinel_password(password);
        }
    }
    if let Some(certificates) = certificates(tls)
        && sentinels.iter().any(is_tls)
    {
        builder = builder.set_client_to_sentinel_certificates(certificates);
    }
    if let Some(url) = url {
        let info = url
            .into_connection_info()
            .map_err(|e| invalid("Redis URL", e))?;
        let auth = info.redis_settings();
        builder = builder.set_client_to_redis_db(auth.db());
        if let Some(username) = auth.username() {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = auth.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if is_tls(&info) {
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
            if let Some(certificates) = certificates(tls) {
                builder = builder.set_client_to_redis_certificates(certificates);
            }
        }
    }
    builder.build().map_err(|e| invalid("Sentinel settings", e))
}

impl Source {
    /// A new connection manager on the master.
    async fn connect(&self) -> Result<ConnectionManager, StoreError> {
        let connecting = async {
            let client = match self {
                Source::Url(client) => client.clone(),
                Source::Sentinel(sentinel) => sentinel
                    .lock()
                    .await
                    .async_get_client()
                    .await
                    .map_err(|e| {
                        StoreError::Unavailable(format!("no Redis master from the sentinels: {e}"))
                    })?,
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECTION_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(RECONNECT_RETRIES)
                .set_max_delay(RECONNECT_MAX_DELAY);
            ConnectionManager::new_with_config(client, config)
                .await
                .map_err(unavailable)
        };
        tokio::time::timeout(INITIAL_CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "no connection to Redis within {INITIAL_CONNECT_TIMEOUT:?}"
                ))
            })?
    }
}
