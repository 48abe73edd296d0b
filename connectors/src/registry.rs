//! Builds connectors from `[[channels]]` configuration: the one place that lists channel kinds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::config::{COMMON_CHANNEL_KEYS, ChannelSettings};
use switchyard_core::store::Store;
use switchyard_core::store::embedded::EmbeddedStore;

use crate::api::{self, ApiConnector};
use crate::douyin::{self, DouyinConnector};
use crate::line::{self, LineConnector};
use crate::telegram::{self, TelegramConnector};
use crate::web::{self, WebConnector};
use crate::wechat::{WeChatMiniProgramConnector, WeChatOaConnector, miniprogram, oa};
use crate::wecom_kf::{self, WecomKfConnector};
use crate::whatsapp::{self, WhatsAppConnector};
use crate::{Channel, ConnectorError};

/// What connectors are given when built.
#[derive(Clone)]
pub struct ConnectorContext {
    /// Shared HTTP client for channel APIs.
    pub http: reqwest::Client,
    /// The shared store, for state every replica must see (access tokens, sync cursors, locks).
    pub store: Arc<dyn Store>,
}

impl ConnectorContext {
    /// A context over `store` with the default HTTP client.
    pub fn new(store: Arc<dyn Store>) -> Self {
        ConnectorContext {
            store,
            ..ConnectorContext::default()
        }
    }
}

impl Default for ConnectorContext {
    /// A default HTTP client and a private in-process store (for tests and `check-config`).
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        ConnectorContext {
            http,
            store: Arc::new(EmbeddedStore::new()),
        }
    }
}

/// Channel kinds this build knows, with their configuration keys.
pub const KINDS: &[(&str, &[&str])] = &[
    (api::KIND, api::KEYS),
    (web::KIND, web::KEYS),
    (douyin::KIND, douyin::KEYS),
    (wecom_kf::KIND, wecom_kf::KEYS),
    (oa::KIND, oa::KEYS),
    (miniprogram::KIND, miniprogram::KEYS),
    (whatsapp::KIND, whatsapp::KEYS),
    (telegram::KIND, telegram::KEYS),
    (line::KIND, line::KEYS),
];

/// Every configured channel, by id.
#[derive(Clone, Default)]
pub struct Registry {
    // Shared, so the per-request clones of the HTTP state copy two pointers, not the maps.
    channels: Arc<BTreeMap<String, Arc<dyn Channel>>>,
    web: Arc<BTreeMap<String, Arc<WebConnector>>>,
}

impl Registry {
    /// Builds a connector for every `[[channels]]` entry.
    pub fn build(
        settings: &[ChannelSettings],
        ctx: &ConnectorContext,
    ) -> Result<Registry, ConnectorError> {
        let mut channels: BTreeMap<String, Arc<dyn Channel>> = BTreeMap::new();
        let mut webs: BTreeMap<String, Arc<WebConnector>> = BTreeMap::new();
        for ch in settings {
            let Some((_, keys)) = KINDS.iter().find(|(kind, _)| *kind == ch.kind) else {
                let known: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
                return Err(ConnectorError::Config(format!(
                    "channels.{}.kind: unknown channel kind `{}` (this build knows: {})",
                    ch.id,
                    ch.kind,
                    known.join(", ")
                )));
            };
            let unknown = ch.unknown_options(keys);
            if !unknown.is_empty() {
                let known: Vec<&str> = keys.iter().chain(COMMON_CHANNEL_KEYS).copied().collect();
                return Err(ConnectorError::Config(format!(
                    "channels.{}: unknown key(s) {} for kind `{}` (known: {})",
                    ch.id,
                    unknown.join(", "),
                    ch.kind,
                    known.join(", ")
                )));
            }
            let channel: Arc<dyn Channel> = match ch.kind.as_str() {
                api::KIND => Arc::new(ApiConnector::new(ch, ctx)?),
                oa::KIND => Arc::new(WeChatOaConnector::new(ch, ctx)?),
                miniprogram::KIND => Arc::new(WeChatMiniProgramConnector::new(ch, ctx)?),
                douyin::KIND => Arc::new(DouyinConnector::new(ch, ctx)?),
                wecom_kf::KIND => Arc::new(WecomKfConnector::new(ch, ctx)?),
                telegram::KIND => Arc::new(TelegramConnector::new(ch, ctx)?),
                line::KIND => Arc::new(LineConnector::new(ch, ctx)?),
                whatsapp::KIND => Arc::new(WhatsAppConnector::new(ch, ctx)?),
                web::KIND => {
                    let web = Arc::new(WebConnector::new(ch, ctx)?);
                    webs.insert(ch.id.clone(), Arc::clone(&web));
                    web
                }
                other => {
                    return Err(ConnectorError::Config(format!(
                        "channel kind `{other}` has no constructor"
                    )));
                }
            };
            channels.insert(ch.id.clone(), channel);
        }
        Ok(Registry {
            channels: Arc::new(channels),
            web: Arc::new(webs),
        })
    }

    /// A channel by id.
    pub fn get(&self, id: &str) -> Option<&Arc<dyn Channel>> {
        self.channels.get(id)
    }

    /// A web channel by id.
    pub fn web(&self, id: &str) -> Option<&Arc<WebConnector>> {
        self.web.get(id)
    }

    /// Every channel.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Channel>> {
        self.channels.values()
    }

    /// Distinct channel kinds configured.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self
            .channels
            .values()
            .map(|c| c.channel().kind.clone())
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }
}
