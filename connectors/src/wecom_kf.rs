//! WeCom customer service (企业微信 · 微信客服, kind `wecom_kf`): WeChat users write to a kf
//! account; WeCom notifies us, we pull the messages and answer through the kf API.
//!
//! * **Callback** (回调配置 / 接收消息和事件, developer.work.weixin.qq.com/document/path/94670):
//!   WXBizMsgCrypt with receive id = CorpID ([`crate::wechat::crypto`]). GET
//!   `?msg_signature&timestamp&nonce&echostr` is answered with the decrypted echostr (plain text,
//!   within 1 s); POST carries `<xml><ToUserName/><Encrypt/>…</xml>` whose decrypted event is
//!   `kf_msg_or_event` with `Token` (valid 10 min) and `OpenKfId`.
//! * **Pull** (`POST cgi-bin/kf/sync_msg`): `{cursor, token, limit, open_kfid}` →
//!   `{errcode, next_cursor, has_more, msg_list}`. `normalize` turns the notification into a
//!   notice envelope; [`Connector::deliver`] (where I/O is allowed) pulls page by page under a
//!   per-account lock, publishes each page, and only then stores `next_cursor` in the shared
//!   store, so a crash or a bus outage re-pulls instead of losing messages (duplicates are
//!   dropped by `msgid`). Only `origin = 3` (the WeChat customer) messages are routed.
//! * **Delivery failures**: `send_msg` may accept a message WeCom then cannot deliver (session
//!   expired, customer refuses messages, …); the next pull carries a `msg_send_fail` event
//!   (`fail_msgid`, `fail_type`). Every accepted send is remembered in the store
//!   ([`crate::sent`]: `wecom_kf:sent:{corp}:{msgid}`, 3 days), and the pull reports a failure
//!   of a remembered message through [`EnvelopeSink::delivery_failed`] (`message.failed`, code
//!   `wecom_fail_type_{n}`) before the cursor moves past its page.
//! * **Send** (`POST cgi-bin/kf/send_msg`): `{touser, open_kfid, msgid, msgtype, …}`; allowed
//!   only while the session's `service_state` is 0 or 1 (else errcode 95018), at most 5
//!   messages within 48 h of the customer's last message. Media given by URL is uploaded first
//!   (`POST cgi-bin/media/upload?type=image|voice|video|file`, multipart field `media`) through
//!   the shared [`crate::media`] flow, and the `media_id` cached per URL.
//! * **Media a customer sent** ([`Connector::fetch_media`]): `GET cgi-bin/media/get?
//!   access_token&media_id` (获取临时素材, document/path/90254) answers the file, or JSON with
//!   an `errcode` (40007: unknown or expired media id, kept 3 days).
//! * **Session state** (`cgi-bin/kf/service_state/get|trans`, document/path/94669):
//!   [`Connector::conversation_changed`] keeps a session in state 1 ("智能助手接待", API replies
//!   allowed) while our conversation is open, and ends it (state 4) when ours closes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::{ChannelRef, Content, Envelope, Media, Sender, new_id};
use switchyard_core::identity::IdentityKey;
use switchyard_core::model::{Conversation, ConversationStatus};
use switchyard_core::store::Store;

use crate::caption::{MediaSent, Part, send_media_then_caption};
use crate::media::{
    self, Accept, MediaAnswer, MediaCache, MediaDownload, MediaResolver, MediaSpec,
};
use crate::rules::{Captions, ChannelRules};
use crate::sent::SentMessages;
use crate::token_cache::{TokenCache, base_url, encode_pairs, with_fresh_token};
use crate::wechat::client::{MEDIA_GONE_ERRORS, errcode};
use crate::wechat::crypto::{CryptoError, WxCrypto};
use crate::{
    Accepted, Connector, ConnectorContext, ConnectorError, EnvelopeSink, HttpReply, InboundRequest,
    RawPolicy, SendReceipt,
};

/// Connector kind.
pub const KIND: &str = "wecom_kf";
/// Configuration keys besides the common ones.
pub const KEYS: &[&str] = &[
    "corp_id",
    "corp_secret",
    "token",
    "encoding_aes_key",
    "open_kfid",
];
/// The platform's API host.
pub const DEFAULT_API_BASE: &str = "https://qyapi.weixin.qq.com";
/// Name of the notice envelope `normalize` makes of a `kf_msg_or_event` callback.
pub const NOTICE_EVENT: &str = "kf_msg_or_event";
/// Most time one `deliver` spends pulling before it asks WeCom to call again (its callback
/// deadline is 5 s).
pub const PULL_BUDGET: Duration = Duration::from_secs(3);
/// `sync_msg` page size (the documented maximum).
pub const PAGE_LIMIT: u32 = 1000;
/// Reply window after the customer's last message.
pub const REPLY_WINDOW: Duration = Duration::from_secs(48 * 3600);
/// `send_msg` text limit, in bytes.
pub const MAX_TEXT_BYTES: usize = 2048;
/// How long the per-account pull lock may be held.
const PULL_LOCK_TTL: Duration = Duration::from_secs(30);
/// How long `deliver` waits for another replica's pull of the same account.
const PULL_LOCK_WAIT: Duration = Duration::from_secs(2);
/// How long a sync cursor is kept (WeCom keeps messages 3 days; re-pulling is harmless).
const CURSOR_TTL: Duration = Duration::from_secs(30 * 86400);
/// How long the customer → kf account routing is remembered.
const ROUTE_TTL: Duration = Duration::from_secs(7 * 86400);
/// How long an uploaded media id is reused for the same URL (temporary media live 3 days).
const MEDIA_ID_TTL: Duration = Duration::from_secs(2 * 86400);
/// `errcode` of `send_msg` for an unknown or expired `media_id`.
const INVALID_MEDIA_ID: i64 = 40007;
/// `event_type` of the `sync_msg` event by which WeCom reports that a message `send_msg` had
/// accepted was not delivered after all.
pub const SEND_FAIL_EVENT: &str = "msg_send_fail";
/// Added to the envelope id to make the `msgid` of a media reply's caption, which goes out as a
/// text message of its own (a ULID and this make 30 of the 32 bytes WeCom allows).
pub const CAPTION_MSGID_SUFFIX: &str = "_cap";
/// How long a sent message is remembered (`msgid` → envelope) so that a later
/// `msg_send_fail` can name it: `sync_msg` returns at most 3 days of history.
const SENT_TTL: Duration = Duration::from_secs(3 * 86400);

/// Temporary media kinds of `cgi-bin/media/upload` (上传临时素材, document/path/90253): every
/// file larger than 5 bytes; images JPG/PNG ≤ 10 MB, voice AMR ≤ 2 MB, video MP4 ≤ 10 MB,
/// files ≤ 20 MB.
pub const IMAGE_MEDIA: MediaSpec = MediaSpec {
    kind: "image",
    accept: Accept::OneOf(&["image/jpeg", "image/png"]),
    default_mime: "image/jpeg",
    max_bytes: 10 * 1024 * 1024,
    min_bytes: 6,
};
/// See [`IMAGE_MEDIA`].
pub const VOICE_MEDIA: MediaSpec = MediaSpec {
    kind: "voice",
    accept: Accept::OneOf(&["audio/amr"]),
    default_mime: "audio/amr",
    max_bytes: 2 * 1024 * 1024,
    min_bytes: 6,
};
/// See [`IMAGE_MEDIA`].
pub const VIDEO_MEDIA: MediaSpec = MediaSpec {
    kind: "video",
    accept: Accept::OneOf(&["video/mp4"]),
    default_mime: "video/mp4",
    max_bytes: 10 * 1024 * 1024,
    min_bytes: 6,
};
/// See [`IMAGE_MEDIA`].
pub const FILE_MEDIA: MediaSpec = MediaSpec {
    kind: "file",
    accept: Accept::Any,
    default_mime: "application/octet-stream",
    max_bytes: 20 * 1024 * 1024,
    min_bytes: 6,
};

/// The decrypted callback event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KfCallback {
    /// CorpID.
    #[serde(rename = "ToUserName", default)]
    pub to_user_name: String,
    /// Unix seconds.
    #[serde(rename = "CreateTime", default)]
    pub create_time: Option<i64>,
    /// `event`.
    #[serde(rename = "MsgType")]
    pub msg_type: String,
    /// `kf_msg_or_event`.
    #[serde(rename = "Event", default)]
    pub event: String,
    /// Sync token for `sync_msg` (10 min).
    #[serde(rename = "Token", default)]
    pub token: Option<String>,
    /// The kf account with news.
    #[serde(rename = "OpenKfId", default)]
    pub open_kfid: Option<String>,
    /// The decrypted callback's fields as a JSON object, kept by `decode` only when the
    /// channel keeps raw ([`RawPolicy`]); never read from the XML.
    #[serde(skip)]
    pub raw: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct EncryptedXml {
    #[serde(rename = "Encrypt")]
    encrypt: String,
}

/// Extracts `Encrypt` from a callback body.
/// Parsed with the hardened WeChat XML reader ([`crate::wechat::xml`]: no DTDs, no custom
/// entities, bounded depth and size).
pub fn encrypted_field(body: &[u8]) -> Result<String, ConnectorError> {
    let text = crate::wechat::xml::body_text(body)?;
    let xml: EncryptedXml = crate::wechat::xml::from_str(text)?;
    Ok(xml.encrypt)
}

/// Parses a decrypted callback event.
pub fn parse_callback(xml: &[u8]) -> Result<KfCallback, ConnectorError> {
    let text = crate::wechat::xml::body_text(xml)?;
    crate::wechat::xml::from_str(text)
}

/// One `sync_msg` answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SyncPage {
    /// 0 on success.
    #[serde(default)]
    pub errcode: i64,
    /// Error text.
    #[serde(default)]
    pub errmsg: String,
    /// Where the next pull starts.
    #[serde(default)]
    pub next_cursor: Option<String>,
    /// 1 while more messages wait (even with an empty `msg_list`).
    #[serde(default)]
    pub has_more: i64,
    /// Messages and events.
    #[serde(default)]
    pub msg_list: Vec<Value>,
}

/// Parses a `sync_msg` answer.
pub fn parse_sync_page(body: &[u8]) -> Result<SyncPage, ConnectorError> {
    serde_json::from_slice(body)
        .map_err(|e| ConnectorError::Transient(format!("sync_msg answered invalid JSON: {e}")))
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn owned(v: &Value, key: &str) -> Option<String> {
    str_of(v, key).map(str::to_owned)
}

fn media(v: &Value, mime: Option<&str>) -> Media {
    Media {
        url: None,
        media_id: owned(v, "media_id"),
        mime: mime.map(str::to_owned),
        ..Media::default()
    }
}

fn number(v: &Value, key: &str) -> Option<f64> {
    let x = v.get(key)?;
    x.as_f64()
        .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
        .filter(|f| f.is_finite())
}

/// Maps one `msg_list` item's body onto content (`msgtype` and its same-named object).
pub fn message_content(msg: &Value) -> Content {
    let kind = str_of(msg, "msgtype").unwrap_or("unknown");
    let body = msg.get(kind).cloned().unwrap_or(Value::Null);
    let unsupported = || Content::Unsupported {
        original_type: kind.to_owned(),
    };
    match kind {
        "text" => match owned(&body, "content") {
            Some(text) => Content::Text { text },
            None => unsupported(),
        },
        "image" => Content::Image {
            media: media(&body, None),
            caption: None,
        },
        "voice" => Content::Audio {
            media: media(&body, Some("audio/amr")),
            recognition: None,
            caption: None,
        },
        "video" => Content::Video {
            media: media(&body, None),
            thumbnail: None,
            caption: None,
        },
        "file" => Content::File {
            media: media(&body, None),
            name: None,
            caption: None,
        },
        "location" => match (number(&body, "latitude"), number(&body, "longitude")) {
            (Some(latitude), Some(longitude)) => Content::Location {
                latitude,
                longitude,
                label: match (owned(&body, "name"), owned(&body, "address")) {
                    (Some(n), Some(a)) => Some(format!("{n} {a}")),
                    (n, a) => n.or(a),
                },
            },
            _ => unsupported(),
        },
        "link" => match owned(&body, "url") {
            Some(url) => Content::Link {
                url,
                title: owned(&body, "title"),
                description: owned(&body, "desc"),
            },
            None => unsupported(),
        },
        "miniprogram" => {
            let mut attributes = Map::new();
            for key in ["appid", "pagepath"] {
                if let Some(v) = owned(&body, key) {
                    attributes.insert(key.to_owned(), Value::String(v));
                }
            }
            Content::Card {
                title: owned(&body, "title").unwrap_or_else(|| "miniprogram".into()),
                url: None,
                thumbnail: owned(&body, "thumb_media_id").map(|id| Media {
                    media_id: Some(id),
                    ..Media::default()
                }),
                attributes,
            }
        }
        "business_card" => {
            let mut attributes = Map::new();
            if let Some(v) = owned(&body, "userid") {
                attributes.insert("userid".into(), Value::String(v));
            }
            Content::Card {
                title: "business_card".into(),
                url: None,
                thumbnail: None,
                attributes,
            }
        }
        _ => unsupported(),
    }
}

/// A `msg_send_fail` event of a `sync_msg` page (`origin` 4, `msgtype` `event`): WeCom could not
/// deliver a message that `send_msg` had accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    /// `fail_msgid`: the `msgid` of the message that failed (for ours, the envelope id we sent
    /// as `msgid`, which `send_msg` answers back).
    pub fail_msgid: String,
    /// `fail_type` (see [`fail_type_meaning`]); `None` when WeCom gave none that reads as a
    /// number.
    pub fail_type: Option<i64>,
    /// The customer (`external_userid`), when given.
    pub external_userid: Option<String>,
}

impl SendFailure {
    /// The `message.failed` code: `wecom_fail_type_{fail_type}`, or `wecom_fail_type_unknown`
    /// without one.
    pub fn code(&self) -> String {
        match self.fail_type {
            Some(n) => format!("wecom_fail_type_{n}"),
            None => "wecom_fail_type_unknown".to_owned(),
        }
    }

    /// The `message.failed` reason, for people: what WeCom says the fail type means.
    pub fn reason(&self) -> String {
        let meaning = self
            .fail_type
            .and_then(fail_type_meaning)
            .unwrap_or("a reason WeCom does not document");
        match self.fail_type {
            Some(n) => {
                format!("WeCom did not deliver the reply (msg_send_fail, fail_type {n}: {meaning})")
            }
            None => format!(
                "WeCom did not deliver the reply (msg_send_fail without fail_type: {meaning})"
            ),
        }
    }
}

/// What a `msg_send_fail` `fail_type` means, per WeCom's 接收消息和事件 (kf `sync_msg` events);
/// `None` for a value it does not list.
pub fn fail_type_meaning(fail_type: i64) -> Option<&'static str> {
    Some(match fail_type {
        0 => "unknown reason",
        1 => "the kf account was deleted",
        2 => "the app was closed",
        4 => "the session expired: more than 48 h since the customer's last message",
        5 => "the session was closed",
        6 => "over the limit of 5 messages per customer message",
        7 => "no WeChat Channels account is bound",
        8 => "the corp is not verified",
        9 => "no WeChat Channels account is bound and the corp is not verified",
        10 => "the customer refuses messages",
        11 => "no member of the corp has logged in to the WeCom app",
        12 => "the kf component does not allow this message type",
        13 => "security restriction",
        _ => return None,
    })
}

/// The `msg_send_fail` events of a `sync_msg` page, in page order; other items are ignored, and
/// an event without `fail_msgid` is skipped. Pure.
pub fn send_failures(msgs: &[Value]) -> Vec<SendFailure> {
    let mut out = Vec::new();
    for msg in msgs {
        if str_of(msg, "msgtype") != Some("event") {
            continue;
        }
        let Some(event) = msg.get("event") else {
            continue;
        };
        if str_of(event, "event_type") != Some(SEND_FAIL_EVENT) {
            continue;
        }
        let Some(fail_msgid) = owned(event, "fail_msgid") else {
            tracing::debug!("msg_send_fail without fail_msgid skipped");
            continue;
        };
        let fail_type = event.get("fail_type").and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        });
        out.push(SendFailure {
            fail_msgid,
            fail_type,
            external_userid: owned(event, "external_userid")
                .or_else(|| owned(msg, "external_userid")),
        });
    }
    out
}

/// The WeCom kf connector.
pub struct WecomKfConnector {
    channel: ChannelRef,
    corp_id: String,
    corp_secret: String,
    crypto: WxCrypto,
    open_kfid: Option<String>,
    api_base: String,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    media: MediaResolver,
    /// Every message `send_msg` accepted, by `msgid`, for a later `msg_send_fail`.
    sent: SentMessages,
    raw: RawPolicy,
}

impl std::fmt::Debug for WecomKfConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WecomKfConnector")
            .field("channel", &self.channel)
            .field("corp_id", &self.corp_id)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

/// A query parameter; `+` decoded as a space by form decoding is put back (base64 and hex
/// values never contain spaces).
fn query<'a>(req: &'a InboundRequest<'_>, key: &str) -> Option<String> {
    req.query
        .get(key)
        .map(|v: &'a String| v.replace(' ', "+"))
        .filter(|v| !v.is_empty())
}

fn crypto_err(e: CryptoError) -> ConnectorError {
    match e {
        CryptoError::BadSignature => {
            ConnectorError::Unauthorized("msg_signature does not match".into())
        }
        CryptoError::WrongReceiver => {
            ConnectorError::Unauthorized("the message is for another CorpID".into())
        }
        CryptoError::Invalid => ConnectorError::Malformed("Encrypt cannot be decrypted".into()),
        CryptoError::BadKey => ConnectorError::Config("bad encoding_aes_key".into()),
    }
}

/// Errcodes meaning the access token is no longer good.
fn is_token_error(code: i64) -> bool {
    matches!(code, 40001 | 40014 | 42001)
}

/// Errcodes meaning "slow down".
fn is_rate_limit(code: i64) -> bool {
    matches!(code, 45009 | 45033 | 45011)
}

fn api_error(code: i64, message: &str, what: &str) -> ConnectorError {
    if is_rate_limit(code) {
        ConnectorError::RateLimited { retry_after: None }
    } else if code == -1 {
        ConnectorError::Transient(format!("{what}: WeCom busy (-1) {message}"))
    } else {
        ConnectorError::Rejected {
            code: code.to_string(),
            message: format!("{what}: {message}"),
        }
    }
}

impl WecomKfConnector {
    /// Builds the connector from its `[[channels]]` entry.
    pub fn new(settings: &ChannelSettings, ctx: &ConnectorContext) -> Result<Self, ConnectorError> {
        let corp_id = settings.required_secret("corp_id")?;
        let corp_secret = settings.required_secret("corp_secret")?;
        let token = settings.required_secret("token")?;
        let key = settings.required_secret("encoding_aes_key")?;
        let crypto = WxCrypto::new(token, &key, corp_id.clone()).map_err(|e| {
            ConnectorError::Config(format!("channels.{}.encoding_aes_key: {e}", settings.id))
        })?;
        Ok(WecomKfConnector {
            channel: ChannelRef {
                kind: KIND.to_owned(),
                id: settings.id.clone(),
            },
            corp_secret,
            crypto,
            open_kfid: settings.secret("open_kfid")?,
            api_base: base_url(settings.api_base.as_deref(), DEFAULT_API_BASE),
            http: ctx.http.clone(),
            store: Arc::clone(&ctx.store),
            media: MediaResolver::new(
                ctx.http.clone(),
                // Media ids are valid corp-wide, whichever app uploaded them.
                MediaCache::new(
                    Arc::clone(&ctx.store),
                    format!("wecom:{corp_id}:media"),
                    MEDIA_ID_TTL,
                ),
            ),
            // `wecom_kf:sent:{corp_id}:{msgid}`, as before the memory was shared.
            sent: SentMessages::new(
                Arc::clone(&ctx.store),
                format!("{KIND}:sent:{corp_id}"),
                SENT_TTL,
            ),
            corp_id,
            raw: RawPolicy::from_settings(settings)?,
        })
    }

    /// The identity key of a customer: `wecom_external:{corp_id}:{external_userid}`.
    pub fn customer_key(&self, external_userid: &str) -> Result<IdentityKey, ConnectorError> {
        IdentityKey::new("wecom_external", &self.corp_id, external_userid)
            .map_err(|e| ConnectorError::Malformed(e.to_string()))
    }

    fn token_cache(&self) -> TokenCache {
        let app = hex::encode(Sha256::digest(self.corp_secret.as_bytes()));
        TokenCache::new(
            Arc::clone(&self.store),
            format!("wecom:{}:{}:access_token", self.corp_id, &app[..12]),
        )
    }

    fn cursor_key(&self, open_kfid: &str) -> String {
        format!("wecom_kf:{}:{open_kfid}:cursor", self.corp_id)
    }

    fn route_key(&self, external_userid: &str) -> String {
        format!("wecom_kf:{}:route:{external_userid}", self.channel.id)
    }

    /// Reports the page's `msg_send_fail` events through `sink`
    /// ([`EnvelopeSink::delivery_failed`]) for the messages we sent ([`SentMessages::report`]:
    /// a failure of a message we do not know is skipped). Only a `Transient` error is returned,
    /// so that the page is pulled again.
    async fn report_failures(
        &self,
        msgs: &[Value],
        sink: &dyn EnvelopeSink,
    ) -> Result<(), ConnectorError> {
        for failure in send_failures(msgs) {
            self.sent
                .report(
                    &failure.fail_msgid,
                    &failure.code(),
                    &failure.reason(),
                    sink,
                )
                .await?;
        }
        Ok(())
    }

    /// The access token (cached in the store, one refresh at a time).
    pub async fn access_token(&self, stale: Option<&str>) -> Result<String, ConnectorError> {
        self.token_cache()
            .get(stale, || async {
                let url = format!(
                    "{}/cgi-bin/gettoken?{}",
                    self.api_base,
                    encode_pairs(&[("corpid", &self.corp_id), ("corpsecret", &self.corp_secret)])
                );
                let value = self.request(self.http.get(url), "gettoken").await?;
                let code = errcode(&value);
                if code != 0 {
                    let msg = str_of(&value, "errmsg").unwrap_or_default();
                    return Err(match code {
                        40001 | 40013 | 40091 | 48002 => ConnectorError::Config(format!(
                            "WeCom refused corp_id/corp_secret ({code} {msg})"
                        )),
                        _ => api_error(code, msg, "gettoken"),
                    });
                }
                let token = owned(&value, "access_token").ok_or_else(|| {
                    ConnectorError::Transient("gettoken answered without access_token".into())
                })?;
                let ttl = value
                    .get("expires_in")
                    .and_then(Value::as_u64)
                    .unwrap_or(7200);
                Ok((token, Duration::from_secs(ttl)))
            })
            .await
    }

    /// Sends one request and reads its JSON answer (5xx transient, 429 rate limited).
    async fn request(
        &self,
        builder: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Value, ConnectorError> {
        let response = builder
            .send()
            .await
            .map_err(|e| ConnectorError::Transient(format!("WeCom {what} failed: {e}")))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| ConnectorError::Transient(format!("WeCom {what}: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(
                match crate::api::classify_http_failure(status, None, &text) {
                    // A 4xx from the API gateway is not a verdict on the message.
                    ConnectorError::Rejected { .. } => {
                        ConnectorError::Transient(format!("WeCom {what}: HTTP {status}"))
                    }
                    other => other,
                },
            );
        }
        serde_json::from_str(&text)
            .map_err(|e| ConnectorError::Transient(format!("WeCom {what} answered non-JSON: {e}")))
    }

    /// POSTs `body` to `path` with the access token, refreshing it once if WeCom refuses it.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, ConnectorError> {
        self.call_with(path, &[], |url| self.http.post(url).json(body))
            .await
    }

    /// Sends the request `build(url)` makes for `path?access_token=…&{query}`; on an
    /// access-token errcode the token is refreshed and the request rebuilt and sent once more.
    /// Returns the JSON answer (errcode not checked).
    pub async fn call_with<F>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        build: F,
    ) -> Result<Value, ConnectorError>
    where
        F: Fn(String) -> reqwest::RequestBuilder,
    {
        self.with_token(
            path,
            query,
            |url| self.request(build(url), path),
            |value: &Value| is_token_error(errcode(value)),
        )
        .await
    }

    /// Runs `attempt(url)` for `path?access_token=…&{query}`; when `refused` finds an
    /// access-token error in its answer, refreshes the token and runs it once more.
    async fn with_token<T, F, Fut>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        attempt: F,
        refused: impl Fn(&T) -> bool,
    ) -> Result<T, ConnectorError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, ConnectorError>>,
    {
        with_fresh_token(
            |stale| async move { self.access_token(stale.as_deref()).await },
            |token| {
                let mut pairs = vec![("access_token", token.as_str())];
                pairs.extend_from_slice(query);
                attempt(format!("{}{path}?{}", self.api_base, encode_pairs(&pairs)))
            },
            refused,
        )
        .await
    }

    /// `GET cgi-bin/media/get`: media a customer sent (see the module documentation).
    pub async fn download_media(&self, media_id: &str) -> Result<MediaDownload, ConnectorError> {
        const WHAT: &str = "WeCom media/get";
        let answer = self
            .with_token(
                "/cgi-bin/media/get",
                &[("media_id", media_id)],
                |url| media::fetch_file_or_json(self.http.get(url), WHAT),
                |answer: &MediaAnswer| {
                    matches!(answer, MediaAnswer::Json(v) if is_token_error(errcode(v)))
                },
            )
            .await?;
        let value = match answer {
            MediaAnswer::File(file) => return Ok(file),
            MediaAnswer::Json(value) => value,
        };
        let message = str_of(&value, "errmsg").unwrap_or_default();
        Err(match errcode(&value) {
            0 => ConnectorError::Transient(format!("{WHAT} answered JSON without a file")),
            code if MEDIA_GONE_ERRORS.contains(&code) => {
                media::not_found(WHAT, format!("{code}: {message}"))
            }
            code => api_error(code, message, WHAT),
        })
    }

    /// `POST cgi-bin/media/upload?type={kind}`: uploads temporary media (multipart field
    /// `media` with filename and content type); returns its `media_id` (valid 3 days).
    pub async fn upload_media(
        &self,
        kind: &str,
        file: &crate::media::Upload,
    ) -> Result<String, ConnectorError> {
        let form = file.multipart("media");
        let value = self
            .call_with("/cgi-bin/media/upload", &[("type", kind)], |url| {
                form.apply(self.http.post(url))
            })
            .await?;
        let code = errcode(&value);
        if code != 0 {
            return Err(api_error(
                code,
                str_of(&value, "errmsg").unwrap_or_default(),
                "media/upload",
            ));
        }
        owned(&value, "media_id")
            .ok_or_else(|| ConnectorError::Transient("media/upload answered no media_id".into()))
    }

    /// The `media_id` of outbound media of `spec`'s kind: its own, else an upload of its URL
    /// (cached per URL for 2 days).
    pub async fn media_id(
        &self,
        media: &Media,
        spec: &MediaSpec,
        name: Option<&str>,
    ) -> Result<String, ConnectorError> {
        self.media
            .resolve(media, spec, name, |file| async move {
                self.upload_media(spec.kind, &file).await
            })
            .await
    }

    /// Normalizes one page of `sync_msg`: customer messages (`origin = 3`) become envelopes
    /// (each keeping its own `msg_list` item when the channel keeps raw); events, our agents'
    /// messages and system messages are skipped. Pure.
    pub fn normalize_page(
        &self,
        msgs: &[Value],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, ConnectorError> {
        let mut out = Vec::new();
        for msg in msgs {
            if msg.get("origin").and_then(Value::as_i64) != Some(3) {
                continue;
            }
            let (Some(msgid), Some(customer)) =
                (str_of(msg, "msgid"), str_of(msg, "external_userid"))
            else {
                tracing::debug!("sync_msg item without msgid or external_userid skipped");
                continue;
            };
            if str_of(msg, "msgtype") == Some("event") {
                continue;
            }
            let sent_at = msg
                .get("send_time")
                .and_then(Value::as_i64)
                .and_then(switchyard_core::time::from_unix_secs)
                .unwrap_or(received_at);
            let identity = match self.customer_key(customer) {
                Ok(k) => k,
                Err(e) => {
                    tracing::debug!(error = %e, "sync_msg item with an unusable external_userid");
                    continue;
                }
            };
            let mut envelope = Envelope::inbound(
                self.channel.clone(),
                Sender {
                    external_id: customer.to_owned(),
                    scope: self.corp_id.clone(),
                    display_name: None,
                    identities: vec![identity],
                },
                message_content(msg),
                format!("{KIND}:{}:{msgid}", self.corp_id),
                sent_at,
                received_at,
            );
            self.raw.attach(std::slice::from_mut(&mut envelope), || {
                msg.as_object().cloned()
            });
            out.push(envelope);
        }
        Ok(out)
    }

    /// Pulls every new message of `open_kfid` and publishes it page by page. Returns what
    /// became of the published envelopes.
    pub async fn pull(
        &self,
        open_kfid: &str,
        sync_token: Option<&str>,
        sink: &dyn EnvelopeSink,
    ) -> Result<Vec<Accepted>, ConnectorError> {
        let lock = format!("wecom_kf:{}:{open_kfid}:pull_lock", self.corp_id);
        let holder = new_id();
        let started = tokio::time::Instant::now();
        loop {
            let claim = self.store.claim_key(&lock, &holder, PULL_LOCK_TTL).await?;
            if claim.is_none() {
                break;
            }
            if started.elapsed() >= PULL_LOCK_WAIT {
                return Err(ConnectorError::Transient(format!(
                    "another replica is pulling kf account `{open_kfid}`; call again"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let result = self.pull_locked(open_kfid, sync_token, sink, started).await;
        if let Err(e) = self.store.release_key(&lock, &holder).await {
            tracing::warn!(key = %lock, error = %e, "could not release the kf pull lock");
        }
        result
    }

    async fn pull_locked(
        &self,
        open_kfid: &str,
        sync_token: Option<&str>,
        sink: &dyn EnvelopeSink,
        started: tokio::time::Instant,
    ) -> Result<Vec<Accepted>, ConnectorError> {
        let cursor_key = self.cursor_key(open_kfid);
        let mut cursor = self.store.get_key(&cursor_key).await?;
        let mut accepted = Vec::new();
        loop {
            let mut body = json!({ "limit": PAGE_LIMIT, "open_kfid": open_kfid });
            if let Some(obj) = body.as_object_mut() {
                if let Some(c) = &cursor {
                    obj.insert("cursor".into(), Value::String(c.clone()));
                }
                if let Some(t) = sync_token {
                    obj.insert("token".into(), Value::String(t.to_owned()));
                }
            }
            let value = self.call("/cgi-bin/kf/sync_msg", &body).await?;
            let page: SyncPage = serde_json::from_value(value).map_err(|e| {
                ConnectorError::Transient(format!("sync_msg answered an unexpected shape: {e}"))
            })?;
            if page.errcode != 0 {
                return Err(api_error(page.errcode, &page.errmsg, "sync_msg"));
            }
            let envelopes = self.normalize_page(&page.msg_list, Utc::now())?;
            for envelope in &envelopes {
                self.store
                    .set_key(
                        &self.route_key(&envelope.sender.external_id),
                        open_kfid,
                        ROUTE_TTL,
                    )
                    .await?;
            }
            if !envelopes.is_empty() {
                accepted.extend(sink.publish(envelopes).await?);
            }
            self.report_failures(&page.msg_list, sink).await?;
            // Only now that the page is on the bus does the cursor move past it.
            if let Some(next) = page.next_cursor.filter(|c| !c.is_empty()) {
                self.store.set_key(&cursor_key, &next, CURSOR_TTL).await?;
                cursor = Some(next);
            }
            if page.has_more == 0 {
                return Ok(accepted);
            }
            if started.elapsed() >= PULL_BUDGET {
                return Err(ConnectorError::Transient(format!(
                    "more messages wait for kf account `{open_kfid}`; call again to continue"
                )));
            }
        }
    }

    /// The kf account a customer last wrote to (else the configured `open_kfid`).
    pub async fn open_kfid_for(
        &self,
        external_userid: &str,
    ) -> Result<Option<String>, ConnectorError> {
        let routed = self.store.get_key(&self.route_key(external_userid)).await?;
        Ok(routed.or_else(|| self.open_kfid.clone()))
    }

    /// The outbound media of `content` and its kind, if it carries any.
    fn outbound_media(content: &Content) -> Option<(&Media, &'static MediaSpec, Option<&str>)> {
        match content {
            Content::Image { media, .. } => Some((media, &IMAGE_MEDIA, None)),
            Content::Audio { media, .. } => Some((media, &VOICE_MEDIA, None)),
            Content::Video { media, .. } => Some((media, &VIDEO_MEDIA, None)),
            Content::File { media, name, .. } => Some((media, &FILE_MEDIA, name.as_deref())),
            _ => None,
        }
    }

    /// The `send_msg` body that sends `content` as `msgid`; media given by URL is uploaded
    /// first. A caption is not part of it (it goes as a text message of its own).
    async fn send_body(
        &self,
        to: &str,
        open_kfid: &str,
        msgid: &str,
        content: &Content,
    ) -> Result<Value, ConnectorError> {
        let (msgtype, payload) = match content {
            Content::Text { text } => {
                if text.len() > MAX_TEXT_BYTES {
                    return Err(ConnectorError::Rejected {
                        code: "text_too_long".into(),
                        message: format!(
                            "WeCom kf text is at most {MAX_TEXT_BYTES} bytes; this is {}",
                            text.len()
                        ),
                    });
                }
                ("text", json!({ "content": text }))
            }
            Content::Image { media, .. } => {
                let id = self.media_id(media, &IMAGE_MEDIA, None).await?;
                ("image", json!({ "media_id": id }))
            }
            Content::Audio { media, .. } => {
                let id = self.media_id(media, &VOICE_MEDIA, None).await?;
                ("voice", json!({ "media_id": id }))
            }
            Content::Video { media, .. } => {
                let id = self.media_id(media, &VIDEO_MEDIA, None).await?;
                ("video", json!({ "media_id": id }))
            }
            Content::File { media, name, .. } => {
                let id = self.media_id(media, &FILE_MEDIA, name.as_deref()).await?;
                ("file", json!({ "media_id": id }))
            }
            Content::Location {
                latitude,
                longitude,
                label,
            } => (
                "location",
                json!({
                    "latitude": latitude,
                    "longitude": longitude,
                    "name": label.clone().unwrap_or_default(),
                }),
            ),
            other => {
                return Err(ConnectorError::Rejected {
                    code: "content_unsupported".into(),
                    message: format!("the WeCom kf connector does not send {}", other.type_name()),
                });
            }
        };
        let mut body = json!({
            "touser": to,
            "open_kfid": open_kfid,
            "msgid": msgid,
            "msgtype": msgtype,
        });
        if let Some(obj) = body.as_object_mut() {
            obj.insert(msgtype.to_owned(), payload);
        }
        Ok(body)
    }

    /// One `send_msg` of `content` (a part of `message`) as `msgid`; what WeCom accepted is
    /// remembered under its `msgid` as `message`.
    async fn send_one(
        &self,
        to: &str,
        open_kfid: &str,
        msgid: &str,
        content: &Content,
        message: &Envelope,
    ) -> Result<SendReceipt, ConnectorError> {
        let body = self.send_body(to, open_kfid, msgid, content).await?;
        let value = self.call("/cgi-bin/kf/send_msg", &body).await?;
        let code = errcode(&value);
        if code == 0 {
            // WeCom answers the `msgid` we gave (or its own): a later `msg_send_fail` names it.
            let msgid = owned(&value, "msgid").unwrap_or_else(|| msgid.to_owned());
            self.sent.remember(&msgid, message).await;
            return Ok(SendReceipt {
                channel_message_id: Some(msgid),
            });
        }
        let msg = str_of(&value, "errmsg").unwrap_or_default();
        if code == INVALID_MEDIA_ID
            && let Some((media, spec, _)) = Self::outbound_media(content)
        {
            // A cached upload WeCom no longer knows: the next send uploads the URL again.
            self.media.forget(media, spec).await;
        }
        Err(match code {
            95018 => ConnectorError::Rejected {
                code: "95018".into(),
                message: format!(
                    "the WeCom session is not in a state that allows API replies ({msg}); a \
                     WeCom servicer holds it or it ended"
                ),
            },
            _ => api_error(code, msg, "send_msg"),
        })
    }

    async fn service_state(&self, open_kfid: &str, customer: &str) -> Result<i64, ConnectorError> {
        let value = self
            .call(
                "/cgi-bin/kf/service_state/get",
                &json!({ "open_kfid": open_kfid, "external_userid": customer }),
            )
            .await?;
        let code = errcode(&value);
        if code != 0 {
            return Err(api_error(
                code,
                str_of(&value, "errmsg").unwrap_or_default(),
                "service_state/get",
            ));
        }
        value
            .get("service_state")
            .and_then(Value::as_i64)
            .ok_or_else(|| ConnectorError::Transient("service_state/get without a state".into()))
    }

    async fn trans(
        &self,
        open_kfid: &str,
        customer: &str,
        state: i64,
    ) -> Result<(), ConnectorError> {
        let value = self
            .call(
                "/cgi-bin/kf/service_state/trans",
                &json!({ "open_kfid": open_kfid, "external_userid": customer, "service_state": state }),
            )
            .await?;
        let code = errcode(&value);
        if code != 0 {
            return Err(api_error(
                code,
                str_of(&value, "errmsg").unwrap_or_default(),
                "service_state/trans",
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Connector for WecomKfConnector {
    type Inbound = KfCallback;

    fn channel(&self) -> &ChannelRef {
        &self.channel
    }

    fn handshake(&self, req: &InboundRequest<'_>) -> Result<Option<HttpReply>, ConnectorError> {
        if req.method != http::Method::GET {
            return Ok(None);
        }
        let Some(echostr) = query(req, "echostr") else {
            return Ok(None);
        };
        let (Some(sig), Some(ts), Some(nonce)) = (
            query(req, "msg_signature"),
            query(req, "timestamp"),
            query(req, "nonce"),
        ) else {
            return Err(ConnectorError::Unauthorized(
                "URL verification needs msg_signature, timestamp and nonce".into(),
            ));
        };
        let plain = self
            .crypto
            .open(&ts, &nonce, &echostr, &sig)
            .map_err(|e| match e {
                CryptoError::Invalid => ConnectorError::Unauthorized("echostr is invalid".into()),
                other => crypto_err(other),
            })?;
        let text = String::from_utf8(plain)
            .map_err(|_| ConnectorError::Malformed("echostr is not UTF-8".into()))?;
        Ok(Some(HttpReply::text(200, text)))
    }

    fn verify(&self, req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
        let (Some(sig), Some(ts), Some(nonce)) = (
            query(req, "msg_signature"),
            query(req, "timestamp"),
            query(req, "nonce"),
        ) else {
            return Err(ConnectorError::Unauthorized(
                "callback needs msg_signature, timestamp and nonce".into(),
            ));
        };
        let encrypt = encrypted_field(req.body)
            .map_err(|_| ConnectorError::Unauthorized("no Encrypt element to verify".into()))?;
        self.crypto
            .verify_msg_signature(&ts, &nonce, &encrypt, &sig)
            .map_err(crypto_err)
    }

    fn decode(&self, req: &InboundRequest<'_>) -> Result<KfCallback, ConnectorError> {
        let encrypt = encrypted_field(req.body)?;
        let plain = self.crypto.decrypt(&encrypt).map_err(crypto_err)?;
        let mut callback = parse_callback(&plain)?;
        // The decrypted callback, never the ciphertext around it.
        callback.raw = self.raw.capture(|| {
            let text = std::str::from_utf8(&plain).ok()?;
            crate::wechat::xml::fields(text).ok()
        });
        Ok(callback)
    }

    fn normalize(
        &self,
        inbound: KfCallback,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, ConnectorError> {
        if !inbound.msg_type.eq_ignore_ascii_case("event") || inbound.event != NOTICE_EVENT {
            return Err(ConnectorError::Unsupported(format!(
                "WeCom callback `{}`/`{}` is not a kf notification",
                inbound.msg_type, inbound.event
            )));
        }
        let open_kfid = inbound
            .open_kfid
            .filter(|k| !k.is_empty())
            .or_else(|| self.open_kfid.clone())
            .ok_or_else(|| ConnectorError::Malformed("kf notification without OpenKfId".into()))?;
        let mut data = Map::new();
        data.insert("open_kfid".into(), Value::String(open_kfid.clone()));
        if let Some(t) = inbound.token.filter(|t| !t.is_empty()) {
            data.insert("token".into(), Value::String(t));
        }
        let created = inbound.create_time.unwrap_or_default();
        let sent_at = switchyard_core::time::from_unix_secs(created).unwrap_or(received_at);
        let token_tag = data
            .get("token")
            .and_then(Value::as_str)
            .map(|t| hex::encode(&Sha256::digest(t.as_bytes())[..8]))
            .unwrap_or_default();
        let mut envelopes = vec![Envelope::inbound(
            self.channel.clone(),
            Sender {
                external_id: open_kfid.clone(),
                scope: self.corp_id.clone(),
                display_name: None,
                identities: Vec::new(),
            },
            Content::Event {
                name: NOTICE_EVENT.to_owned(),
                data,
            },
            format!(
                "{KIND}:{}:notice:{open_kfid}:{created}:{token_tag}",
                self.corp_id
            ),
            sent_at,
            received_at,
        )];
        self.raw.attach(&mut envelopes, || inbound.raw);
        Ok(envelopes)
    }

    async fn deliver(
        &self,
        envelopes: Vec<Envelope>,
        sink: &dyn EnvelopeSink,
    ) -> Result<Vec<Accepted>, ConnectorError> {
        let mut accepted = Vec::new();
        for envelope in envelopes {
            match &envelope.content {
                Content::Event { name, data } if name == NOTICE_EVENT => {
                    let open_kfid = data
                        .get("open_kfid")
                        .and_then(Value::as_str)
                        .unwrap_or(&envelope.sender.external_id)
                        .to_owned();
                    let token = data.get("token").and_then(Value::as_str).map(str::to_owned);
                    accepted.extend(self.pull(&open_kfid, token.as_deref(), sink).await?);
                }
                _ => accepted.extend(sink.publish(vec![envelope]).await?),
            }
        }
        Ok(accepted)
    }

    fn accepted(&self, _accepted: &[Accepted]) -> HttpReply {
        // WeCom wants a fast empty 200.
        HttpReply::text(200, "")
    }

    fn rules(&self) -> ChannelRules {
        ChannelRules {
            reply_window: Some(REPLY_WINDOW),
            window_exempt: Vec::new(),
            max_replies_per_inbound: Some(5),
            content_types: vec!["text", "image", "audio", "video", "file", "location"],
            // 2048 bytes of UTF-8: 682 characters is what always fits.
            max_text_chars: Some(MAX_TEXT_BYTES / 3),
            downgrades: vec![("card", "link"), ("link", "text"), ("sticker", "image")],
            captions: Captions::AsText,
            notes: "WeCom kf: at most 5 messages within 48 h of the customer's last message, \
                    and only while the session is new or bot-handled (service_state 0/1; the \
                    connector keeps it at 1 while the conversation is open, else errcode \
                    95018); media by media_id, or by URL (uploaded as temporary media first: \
                    image JPG/PNG ≤ 10 MB, voice AMR ≤ 2 MB, video MP4 ≤ 10 MB, file ≤ 20 MB); \
                    text at most 2048 bytes; a media reply's caption follows as a text \
                    message (msgid `{envelope id}_cap`), a second message of the 5.",
        }
    }

    /// The customer `wecom_external:{corp_id}:{external_userid}`, when the channel names a
    /// default kf account (`open_kfid`) to send from: `send_msg` needs the external_userid and
    /// a kf account, and the one the customer last wrote to is known only after they wrote
    /// (else the configured one is used). Without `open_kfid`, no recipient. (WeCom accepts
    /// messages only within 48 h of the customer's last one, which a conversation the agent
    /// starts never is: the rules refuse it.)
    fn recipient_of(&self, identities: &[IdentityKey]) -> Option<Sender> {
        self.open_kfid.as_ref()?;
        crate::recipient_by_key(identities, "wecom_external", Some(&self.corp_id), |_| {
            self.corp_id.clone()
        })
    }

    fn starts_conversations(&self) -> bool {
        self.open_kfid.is_some()
    }

    async fn send(&self, message: &Envelope) -> Result<SendReceipt, ConnectorError> {
        let to = &message.sender.external_id;
        let open_kfid = self
            .open_kfid_for(to)
            .await?
            .ok_or_else(|| ConnectorError::Rejected {
                code: "no_open_kfid".into(),
                message: format!("no kf account known for customer `{to}`"),
            })?;
        // A caption goes as a text message after the media, with a `msgid` of its own.
        let open_kfid = open_kfid.as_str();
        let sent = MediaSent::of(Arc::clone(&self.store), &message.id);
        send_media_then_caption(&message.content, &sent, |content, part| async move {
            let msgid = match part {
                Part::Caption => format!("{}{CAPTION_MSGID_SUFFIX}", message.id),
                Part::Whole | Part::Media => message.id.clone(),
            };
            self.send_one(to, open_kfid, &msgid, &content, message)
                .await
        })
        .await
    }

    async fn fetch_media(&self, media_id: &str) -> Result<MediaDownload, ConnectorError> {
        self.download_media(media_id).await
    }

    fn follows_conversations(&self) -> bool {
        true
    }

    async fn conversation_changed(
        &self,
        conversation: &Conversation,
    ) -> Result<(), ConnectorError> {
        if conversation.channel != self.channel {
            return Ok(());
        }
        let customer = &conversation.recipient.external_id;
        let Some(open_kfid) = self.open_kfid_for(customer).await? else {
            tracing::debug!(%customer, "no kf account known; session state left alone");
            return Ok(());
        };
        let current = self.service_state(&open_kfid, customer).await?;
        let target = match (conversation.status, current) {
            // Ended or not started: WeCom allows no change; the next message reopens it at 0.
            (_, 4) => return Ok(()),
            (ConversationStatus::Closed, _) => 4,
            (_, 0) => 1,
            (_, 1) => return Ok(()),
            (_, state) => {
                return Err(ConnectorError::Rejected {
                    code: format!("service_state_{state}"),
                    message: format!(
                        "the WeCom session of `{customer}` is in state {state} (pool or a WeCom \
                         servicer); API replies will fail with 95018 until it ends"
                    ),
                });
            }
        };
        match self.trans(&open_kfid, customer, target).await {
            // 95016: "this state change is not allowed" — e.g. ending from a state WeCom does
            // not end from; nothing we can do, and nothing to retry.
            Err(ConnectorError::Rejected { code, message }) if code == "95016" => {
                tracing::info!(%customer, %message, "WeCom refused the session state change");
                Ok(())
            }
            other => other,
        }
    }
}
