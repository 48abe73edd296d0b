//! Douyin (抖音开放平台) private messages (kind `douyin`): the enterprise account's DM webhooks
//! in, replies through `POST /im/send/msg/` out.
//!
//! * **Webhook signature** (Webhooks 概述, developer.open-douyin.com …/dop/develop/webhooks/summarize):
//!   header `X-Douyin-Signature` = lower-case hex `SHA1(client_secret ‖ raw body)` — plain
//!   SHA-1, the secret *prefixed*, no HMAC, no separator, no timestamp. The mini-app webhook
//!   page hands out a dedicated "webhook 验签秘钥"; set `webhook_secret` when it differs from
//!   `client_secret`.
//! * **Handshake**: saving the URL POSTs `{"event":"verify_webhook","content":{"challenge":N}}`
//!   (signed like any event); the answer is the JSON `{"challenge":N}`.
//! * **Events** (private-msg-webhook, enter-direct-msg-webhook): `im_receive_msg` (the account
//!   received a DM: from = customer, to = account), `im_enter_direct_msg` (the customer opened
//!   the DM page), `im_send_msg` (the account sent one — our own API sends included — never
//!   routed). `content` is an object on the IM pages and a JSON *string* on others: both work.
//! * **Dedupe**: `content.server_message_id` (stable across the 3 retries, like the `Msg-Id`
//!   header, which is the fallback).
//! * **Reply**: `POST {api_base}/im/send/msg/?open_id={account open_id}` with header
//!   `access-token` = the account's OAuth `access_token` (`/oauth/access_token/`, refreshed with
//!   `/oauth/refresh_token/`; the app-level `client_token` is not accepted by this API) and
//!   `{"msg_id": customer's server_message_id (valid 24 h), "conversation_id":
//!   conversation_short_id, "to_user_id": customer open_id, "content": {"msg_type": 1,
//!   "text": {"text": …}}}`. An image given by URL is uploaded first with the image upload
//!   tool (`POST /tool/imagex/client_upload/`, header `access-token` = the app's
//!   `client_token`, multipart field `image`), and its `image_id` sent as `image.media_id`
//!   (shared flow and cache: [`crate::media`]).
//!
//! The reply needs the customer's `server_message_id` and `conversation_short_id`, which the
//! router does not carry: [`Connector::deliver`] keeps them in the shared store under the
//! inbound envelope's id (the outbound envelope's `reply_to`) and under the customer, for 24 h.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha1::{Digest, Sha1};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::{ChannelRef, Content, Envelope, Media, Sender};
use switchyard_core::identity::IdentityKey;
use switchyard_core::store::Store;

use crate::api::{retry_after, snippet};
use crate::caption::{MediaSent, send_media_then_caption};
use crate::media::{Accept, MediaCache, MediaResolver, MediaSpec, Upload};
use crate::rules::{Captions, ChannelRules};
use crate::signature::constant_time_eq;
use crate::token_cache::{TokenCache, base_url, encode_component, encode_pairs, with_fresh_token};
use crate::{
    Accepted, Connector, ConnectorContext, ConnectorError, EnvelopeSink, HttpReply, InboundRequest,
    RawPolicy, SendReceipt, take_raw_entry,
};

/// Connector kind.
pub const KIND: &str = "douyin";
/// Configuration keys besides the common ones.
pub const KEYS: &[&str] = &[
    "client_key",
    "client_secret",
    "webhook_secret",
    "account_open_id",
    "access_token",
    "refresh_token",
];
/// The platform's API host.
pub const DEFAULT_API_BASE: &str = "https://open.douyin.com";
/// Header carrying the webhook signature.
pub const SIGNATURE_HEADER: &str = "x-douyin-signature";
/// Header carrying Douyin's delivery id (constant across retries).
pub const MSG_ID_HEADER: &str = "msg-id";
/// How long a customer's `server_message_id` can be replied to.
pub const REPLY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Key (inside `raw`) under which `normalize` hands the reply context to `deliver`, which
/// removes it before publishing.
const REPLY_CONTEXT_KEY: &str = "_douyin_reply_context";
/// The image upload tool (图片上传, scope `tool.image.upload`, no user authorization).
pub const IMAGE_UPLOAD_PATH: &str = "/tool/imagex/client_upload/";
/// The app-level token the image upload takes (`stable_client_token`: fetching it again
/// within its 2 h returns the same token instead of invalidating the previous one).
pub const CLIENT_TOKEN_PATH: &str = "/oauth/stable_client_token/";
/// How long an uploaded image id is reused for the same URL. Douyin does not document how
/// long an `image_id` stays usable; a day keeps the guess conservative.
const IMAGE_ID_TTL: Duration = Duration::from_secs(24 * 3600);
/// What the image upload tool takes: JPEG, PNG, BMP or WebP, at most 10 MB.
pub const IMAGE_MEDIA: MediaSpec = MediaSpec {
    kind: "image",
    accept: Accept::OneOf(&["image/jpeg", "image/png", "image/bmp", "image/webp"]),
    default_mime: "image/jpeg",
    max_bytes: 10 * 1024 * 1024,
    min_bytes: 1,
};

/// The webhook signature: lower-case hex SHA-1 of the secret followed by the raw body.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(secret.as_bytes());
    sha.update(body);
    hex::encode(sha.finalize())
}

/// A verified, parsed webhook event.
#[derive(Debug, Clone, PartialEq)]
pub struct DouyinInbound {
    /// Event name (`im_receive_msg`, ...).
    pub event: String,
    /// The app the event is for.
    pub client_key: Option<String>,
    /// Sender open id.
    pub from_user_id: Option<String>,
    /// Receiver open id.
    pub to_user_id: Option<String>,
    /// The event content (an object, also when it arrived as a JSON string).
    pub content: Map<String, Value>,
    /// The `Msg-Id` header, if any.
    pub msg_id_header: Option<String>,
    /// The event as sent (with a `content` string parsed, so masking reaches into it), kept
    /// by `decode` only when the channel keeps raw ([`RawPolicy`]).
    pub raw: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct RawEvent {
    event: String,
    #[serde(default)]
    client_key: Option<String>,
    #[serde(default)]
    from_user_id: Option<String>,
    #[serde(default)]
    to_user_id: Option<String>,
    #[serde(default)]
    content: Option<Value>,
}

/// Parses the webhook body (any event). `content` may be an object or a JSON string holding one.
pub fn parse_event(body: &[u8]) -> Result<(String, RawParts), ConnectorError> {
    parts_of(serde_json::from_slice(body).map_err(invalid_event)?)
}

fn invalid_event(e: serde_json::Error) -> ConnectorError {
    ConnectorError::Malformed(format!("invalid Douyin event JSON: {e}"))
}

/// [`parse_event`] of a body already read: the event's name and its parts.
fn parts_of(raw: RawEvent) -> Result<(String, RawParts), ConnectorError> {
    let content = match raw.content {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(Value::String(s)) if s.trim().is_empty() => Map::new(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(ConnectorError::Malformed(
                    "event content is a string but not a JSON object".into(),
                ));
            }
            Err(e) => {
                return Err(ConnectorError::Malformed(format!(
                    "event content is not JSON: {e}"
                )));
            }
        },
        Some(_) => {
            return Err(ConnectorError::Malformed(
                "event content must be an object or a JSON string".into(),
            ));
        }
    };
    Ok((
        raw.event,
        RawParts {
            client_key: raw.client_key,
            from_user_id: raw.from_user_id,
            to_user_id: raw.to_user_id,
            content,
        },
    ))
}

/// The parts of an event besides its name.
#[derive(Debug, Clone, PartialEq)]
pub struct RawParts {
    /// `client_key`.
    pub client_key: Option<String>,
    /// `from_user_id`.
    pub from_user_id: Option<String>,
    /// `to_user_id`.
    pub to_user_id: Option<String>,
    /// `content`, as an object.
    pub content: Map<String, Value>,
}

/// What a reply to one customer message needs (kept in the store by `deliver`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyContext {
    /// The business account (the `open_id` query parameter of the send API).
    pub account_open_id: String,
    /// The customer.
    pub customer_open_id: String,
    /// `conversation_short_id`.
    pub conversation_id: String,
    /// The customer's `server_message_id` (the send API's `msg_id`, valid 24 h).
    pub server_message_id: String,
    /// Send-API scene: `None` for the default reply, `im_enter_direct_msg` for a reply to the
    /// customer opening the DM page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scene: Option<String>,
    /// When the customer's message was created.
    pub at: DateTime<Utc>,
}

/// The Douyin connector.
pub struct DouyinConnector {
    channel: ChannelRef,
    client_key: String,
    client_secret: String,
    webhook_secret: String,
    account_open_id: Option<String>,
    static_access_token: Option<String>,
    refresh_token: Option<String>,
    api_base: String,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    media: MediaResolver,
    raw: RawPolicy,
}

impl std::fmt::Debug for DouyinConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DouyinConnector")
            .field("channel", &self.channel)
            .field("client_key", &self.client_key)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl DouyinConnector {
    /// Builds the connector from its `[[channels]]` entry.
    pub fn new(settings: &ChannelSettings, ctx: &ConnectorContext) -> Result<Self, ConnectorError> {
        let client_key = settings.required_secret("client_key")?;
        let client_secret = settings.required_secret("client_secret")?;
        if client_key.trim().is_empty() || client_secret.trim().is_empty() {
            return Err(ConnectorError::Config(format!(
                "channels.{}: client_key and client_secret must not be empty",
                settings.id
            )));
        }
        let webhook_secret = settings
            .secret("webhook_secret")?
            .unwrap_or_else(|| client_secret.clone());
        Ok(DouyinConnector {
            channel: ChannelRef {
                kind: KIND.to_owned(),
                id: settings.id.clone(),
            },
            media: MediaResolver::new(
                ctx.http.clone(),
                MediaCache::new(
                    Arc::clone(&ctx.store),
                    format!("douyin:{client_key}:media"),
                    IMAGE_ID_TTL,
                ),
            ),
            client_key,
            client_secret,
            webhook_secret,
            account_open_id: settings.secret("account_open_id")?,
            static_access_token: settings.secret("access_token")?,
            refresh_token: settings.secret("refresh_token")?,
            api_base: base_url(settings.api_base.as_deref(), DEFAULT_API_BASE),
            http: ctx.http.clone(),
            store: Arc::clone(&ctx.store),
            raw: RawPolicy::from_settings(settings)?,
        })
    }

    /// The identity key of a customer: `douyin_open_id:{client_key}:{open_id}`.
    pub fn customer_key(&self, open_id: &str) -> Result<IdentityKey, ConnectorError> {
        IdentityKey::new("douyin_open_id", &self.client_key, open_id)
            .map_err(|e| ConnectorError::Malformed(e.to_string()))
    }

    fn check_signature(&self, req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
        let received = req.header(SIGNATURE_HEADER).ok_or_else(|| {
            ConnectorError::Unauthorized(format!("missing `{SIGNATURE_HEADER}` header"))
        })?;
        let expected = webhook_signature(&self.webhook_secret, req.body);
        if constant_time_eq(&received.trim().to_ascii_lowercase(), &expected) {
            Ok(())
        } else {
            Err(ConnectorError::Unauthorized(
                "X-Douyin-Signature does not match the body".into(),
            ))
        }
    }

    fn reply_key(&self, envelope_id: &str) -> String {
        format!("douyin:{}:reply:{envelope_id}", self.channel.id)
    }

    fn latest_key(&self, customer: &str) -> String {
        format!("douyin:{}:reply_latest:{customer}", self.channel.id)
    }

    fn token_cache(&self, account: &str) -> TokenCache {
        TokenCache::new(
            Arc::clone(&self.store),
            format!("douyin:{}:{account}:access_token", self.client_key),
        )
    }

    fn client_token_cache(&self) -> TokenCache {
        TokenCache::new(
            Arc::clone(&self.store),
            format!("douyin:{}:client_token", self.client_key),
        )
    }

    /// The app's `client_token` (for APIs without user authorization, such as the image
    /// upload tool): cached in the store, fetched by one replica at a time.
    pub async fn client_token(&self, stale: Option<&str>) -> Result<String, ConnectorError> {
        self.client_token_cache()
            .get(stale, || self.fetch_client_token())
            .await
    }

    /// `POST /oauth/stable_client_token/` `{client_key, client_secret, grant_type}`.
    async fn fetch_client_token(&self) -> Result<(String, Duration), ConnectorError> {
        let response = self
            .http
            .post(format!("{}{CLIENT_TOKEN_PATH}", self.api_base))
            .json(&json!({
                "client_key": self.client_key,
                "client_secret": self.client_secret,
                "grant_type": "client_credential",
            }))
            .send()
            .await
            .map_err(|e| ConnectorError::Transient(format!("Douyin client_token failed: {e}")))?;
        let status = response.status().as_u16();
        let value = read_json(response, status).await?;
        let (code, description) = douyin_error(&value);
        if code != 0 {
            return Err(match code {
                // client_key unknown / client_key or client_secret wrong.
                10003 | 10013 | 20010003 | 20010013 => ConnectorError::Config(format!(
                    "Douyin refused channels.{}.client_key/client_secret ({code}: {description})",
                    self.channel.id
                )),
                c if is_rate_limit(c) => ConnectorError::RateLimited { retry_after: None },
                _ => ConnectorError::Transient(format!(
                    "Douyin client_token error {code}: {description}"
                )),
            });
        }
        token_of(value.get("data"), "client_token")
    }

    /// `POST {api_base}/tool/imagex/client_upload/` with header `access-token: <client_token>`
    /// and the multipart field `image`; returns the `image_id` (sent as the image message's
    /// `media_id`). A refused client token is refreshed and the upload retried once.
    pub async fn upload_image(&self, file: &Upload) -> Result<String, ConnectorError> {
        let form = file.multipart("image");
        let (value, code, message) = with_fresh_token(
            |stale| async move { self.client_token(stale.as_deref()).await },
            |token| {
                let request = form.apply(
                    self.http
                        .post(format!("{}{IMAGE_UPLOAD_PATH}", self.api_base))
                        .header("access-token", token.as_str()),
                );
                async move {
                    let response = request.send().await.map_err(|e| {
                        ConnectorError::Transient(format!("Douyin image upload failed: {e}"))
                    })?;
                    read_answer(response).await
                }
            },
            |(_, code, _)| is_token_error(*code),
        )
        .await?;
        if code != 0 {
            return Err(classify(code, message, "image upload"));
        }
        image_id(&value).ok_or_else(|| {
            ConnectorError::Transient(format!(
                "Douyin image upload answered no image_id: {}",
                snippet(&value.to_string())
            ))
        })
    }

    fn refresh_key(&self, account: &str) -> String {
        format!("douyin:{}:{account}:refresh_token", self.client_key)
    }

    /// The reply context of `message`: the one kept for the envelope it answers, else the
    /// customer's latest.
    pub async fn reply_context(
        &self,
        message: &Envelope,
    ) -> Result<Option<ReplyContext>, ConnectorError> {
        let mut keys = Vec::new();
        if let Some(id) = &message.reply_to {
            keys.push(self.reply_key(id));
        }
        keys.push(self.latest_key(&message.sender.external_id));
        for key in keys {
            if let Some(raw) = self.store.get_key(&key).await?
                && let Ok(ctx) = serde_json::from_str::<ReplyContext>(&raw)
                && ctx.customer_open_id == message.sender.external_id
            {
                return Ok(Some(ctx));
            }
        }
        Ok(None)
    }

    async fn keep_reply_context(
        &self,
        envelope_id: &str,
        ctx: &ReplyContext,
        now: DateTime<Utc>,
    ) -> Result<(), ConnectorError> {
        let left = (ctx.at + TimeDelta::seconds(REPLY_WINDOW.as_secs() as i64)) - now;
        let Ok(ttl) = left.to_std() else {
            return Ok(()); // Already outside the window: nothing to reply to.
        };
        let ttl = ttl.max(Duration::from_secs(1));
        let value = serde_json::to_string(ctx)
            .map_err(|e| ConnectorError::Transient(format!("cannot encode reply context: {e}")))?;
        self.store
            .set_key(&self.reply_key(envelope_id), &value, ttl)
            .await?;
        let latest = self.latest_key(&ctx.customer_open_id);
        let newer = match self.store.get_key(&latest).await? {
            Some(old) => {
                serde_json::from_str::<ReplyContext>(&old).map_or(true, |o| o.at <= ctx.at)
            }
            None => true,
        };
        if newer {
            self.store.set_key(&latest, &value, ttl).await?;
        }
        Ok(())
    }

    /// The account's access token: cached in the store, refreshed (single flight) with the
    /// account's `refresh_token` when missing or refused.
    pub async fn access_token(
        &self,
        account: &str,
        stale: Option<&str>,
    ) -> Result<String, ConnectorError> {
        let refresh = match self.store.get_key(&self.refresh_key(account)).await? {
            Some(r) => Some(r),
            None => self.refresh_token.clone().filter(|_| {
                self.account_open_id
                    .as_deref()
                    .is_none_or(|configured| configured == account)
            }),
        };
        let Some(refresh_token) = refresh else {
            return match (&self.static_access_token, stale) {
                (Some(t), s) if Some(t.as_str()) != s => Ok(t.clone()),
                (Some(_), _) => Err(ConnectorError::Rejected {
                    code: "access_token_expired".into(),
                    message: format!(
                        "Douyin refused channels.{}.access_token and no refresh_token is \
                         configured; re-authorize the account",
                        self.channel.id
                    ),
                }),
                (None, _) => Err(ConnectorError::Rejected {
                    code: "no_access_token".into(),
                    message: format!(
                        "no access_token/refresh_token for Douyin account `{account}`; the \
                         account must authorize the app (scope im.direct_message)"
                    ),
                }),
            };
        };
        let cache = self.token_cache(account);
        cache
            .get(stale, || self.refresh_access_token(account, refresh_token))
            .await
    }

    async fn refresh_access_token(
        &self,
        account: &str,
        refresh_token: String,
    ) -> Result<(String, Duration), ConnectorError> {
        let url = format!("{}/oauth/refresh_token/", self.api_base);
        let form = encode_pairs(&[
            ("client_key", &self.client_key),
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
        ]);
        let response = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| ConnectorError::Transient(format!("Douyin token refresh failed: {e}")))?;
        let status = response.status().as_u16();
        let body: Value = read_json(response, status).await?;
        let data = body.get("data").cloned().unwrap_or(Value::Null);
        let code = data.get("error_code").and_then(Value::as_i64).unwrap_or(0);
        if code != 0 {
            let description = data
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(match code {
                // refresh_token expired / renewals exhausted: a human must re-authorize.
                10010 | 10020 | 2190002 | 2190003 => ConnectorError::Rejected {
                    code: code.to_string(),
                    message: format!("Douyin refresh_token refused ({description}); re-authorize"),
                },
                _ => ConnectorError::Transient(format!(
                    "Douyin token refresh error {code}: {description}"
                )),
            });
        }
        let (token, lifetime) = token_of(Some(&data), "token refresh")?;
        if let Some(new_refresh) = data.get("refresh_token").and_then(Value::as_str)
            && !new_refresh.is_empty()
            && new_refresh != refresh_token
        {
            let ttl = data
                .get("refresh_expires_in")
                .and_then(Value::as_u64)
                .unwrap_or(30 * 86400);
            self.store
                .set_key(
                    &self.refresh_key(account),
                    new_refresh,
                    Duration::from_secs(ttl),
                )
                .await?;
        }
        Ok((token, lifetime))
    }

    #[allow(clippy::too_many_arguments)]
    fn envelope(
        &self,
        customer: &str,
        display_name: Option<String>,
        sent_at: DateTime<Utc>,
        received_at: DateTime<Utc>,
        dedupe: &str,
        content: Content,
        reply: Option<ReplyContext>,
    ) -> Result<Envelope, ConnectorError> {
        let raw = match reply {
            Some(ctx) => {
                let ctx = serde_json::to_value(ctx)
                    .map_err(|e| ConnectorError::Malformed(e.to_string()))?;
                Some(json!({ REPLY_CONTEXT_KEY: ctx }))
            }
            None => None,
        };
        Ok(Envelope {
            raw,
            ..Envelope::inbound(
                self.channel.clone(),
                Sender {
                    external_id: customer.to_owned(),
                    scope: self.client_key.clone(),
                    display_name,
                    identities: vec![self.customer_key(customer)?],
                },
                content,
                format!("{KIND}:{}:{dedupe}", self.client_key),
                sent_at,
                received_at,
            )
        })
    }

    /// The send body of `content`; an image given by URL is uploaded with the image tool first.
    /// A caption is not part of it (it goes as a text message of its own).
    async fn send_body(
        &self,
        ctx: &ReplyContext,
        content: &Content,
    ) -> Result<Value, ConnectorError> {
        let content = match content {
            Content::Text { text } => json!({ "msg_type": 1, "text": { "text": text } }),
            Content::Image { media, .. } => {
                let id = self
                    .media
                    .resolve(media, &IMAGE_MEDIA, None, |file| async move {
                        self.upload_image(&file).await
                    })
                    .await?;
                json!({ "msg_type": 2, "image": { "media_id": id } })
            }
            other => {
                return Err(ConnectorError::Rejected {
                    code: "content_unsupported".into(),
                    message: format!(
                        "the Douyin connector sends text and image, not {}",
                        other.type_name()
                    ),
                });
            }
        };
        let mut body = json!({
            "msg_id": ctx.server_message_id,
            "conversation_id": ctx.conversation_id,
            "to_user_id": ctx.customer_open_id,
            "content": content,
        });
        if let (Some(scene), Some(obj)) = (&ctx.scene, body.as_object_mut()) {
            obj.insert("scene".into(), Value::String(scene.clone()));
        }
        Ok(body)
    }

    /// One send of `content` in reply to `ctx`; a refused access token is refreshed once.
    async fn send_one(
        &self,
        ctx: &ReplyContext,
        content: &Content,
    ) -> Result<SendReceipt, ConnectorError> {
        let body = self.send_body(ctx, content).await?;
        let answer = with_fresh_token(
            |stale| async move {
                self.access_token(&ctx.account_open_id, stale.as_deref())
                    .await
            },
            |token| {
                let body = &body;
                async move { self.post_send(ctx, &token, body).await }
            },
            |answer| matches!(answer, Err((code, _)) if is_token_error(*code)),
        )
        .await?;
        match answer {
            Ok(receipt) => Ok(receipt),
            Err((code, _)) if is_token_error(code) => Err(ConnectorError::Rejected {
                code: "access_token_refused".into(),
                message: "Douyin refused a freshly refreshed access token".into(),
            }),
            Err((code, message)) => Err(classify(code, message, "send")),
        }
    }

    async fn post_send(
        &self,
        ctx: &ReplyContext,
        token: &str,
        body: &Value,
    ) -> Result<Result<SendReceipt, (i64, String)>, ConnectorError> {
        let url = format!(
            "{}/im/send/msg/?open_id={}",
            self.api_base,
            encode_component(&ctx.account_open_id)
        );
        let response = self
            .http
            .post(url)
            .header("access-token", token)
            .header("content-type", "application/json")
            .json(body)
            .send()
            .await
            .map_err(|e| ConnectorError::Transient(format!("Douyin send failed: {e}")))?;
        let (value, code, message) = read_answer(response).await?;
        if code == 0 {
            let msg_id = value
                .pointer("/data/msg_id")
                .or_else(|| value.get("msg_id"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            return Ok(Ok(SendReceipt {
                channel_message_id: msg_id,
            }));
        }
        Ok(Err((code, message)))
    }
}

/// Reads a JSON answer; non-2xx statuses are classified first (5xx transient, 429 limited).
/// Reads a Douyin API answer: 429 is `RateLimited` (honouring `Retry-After`); otherwise the
/// JSON body with its error code and message (code 0: success).
async fn read_answer(response: reqwest::Response) -> Result<(Value, i64, String), ConnectorError> {
    let status = response.status().as_u16();
    if status == 429 {
        return Err(ConnectorError::RateLimited {
            retry_after: retry_after(&response),
        });
    }
    let value = read_json(response, status).await?;
    let (code, message) = douyin_error(&value);
    Ok((value, code, message))
}

async fn read_json(response: reqwest::Response, status: u16) -> Result<Value, ConnectorError> {
    let text = response
        .text()
        .await
        .map_err(|e| ConnectorError::Transient(format!("reading Douyin answer: {e}")))?;
    if !(200..300).contains(&status) {
        return Err(crate::api::classify_http_failure(status, None, &text));
    }
    serde_json::from_str(&text).map_err(|e| {
        ConnectorError::Transient(format!(
            "Douyin answered non-JSON ({e}): {}",
            snippet(&text)
        ))
    })
}

/// Classifies a non-zero Douyin error code (token errors are handled by the caller first):
/// frequency codes → RateLimited, negative (system) codes → Transient, the rest → Rejected.
fn classify(code: i64, message: String, what: &str) -> ConnectorError {
    if is_rate_limit(code) {
        ConnectorError::RateLimited { retry_after: None }
    } else if code < 0 {
        ConnectorError::Transient(format!("Douyin {what} error {code}: {message}"))
    } else {
        ConnectorError::Rejected {
            code: code.to_string(),
            message,
        }
    }
}

/// The `image_id` of an image upload answer: at the top level (as the SKIT .NET and
/// ArtisanCloud Go SDKs read it) or inside `data` (as the official page's field table and
/// other client code suggest).
fn image_id(value: &Value) -> Option<String> {
    [value.get("image_id"), value.pointer("/data/image_id")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|id| !id.is_empty())
        .map(str::to_owned)
}

/// The error code and message of a Douyin API answer, in either of its shapes
/// (`{data:{error_code,description}, extra:{error_code,sub_error_code,…}}` or
/// `{err_no, err_msg}`); `(0, _)` is success.
pub fn douyin_error(value: &Value) -> (i64, String) {
    let int = |v: Option<&Value>| {
        v.and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(0)
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    for (code, msg) in [
        (value.get("err_no"), value.get("err_msg")),
        (
            value.pointer("/data/error_code"),
            value.pointer("/data/description"),
        ),
        (
            value.pointer("/extra/error_code"),
            value.pointer("/extra/description"),
        ),
        (
            value.pointer("/extra/sub_error_code"),
            value.pointer("/extra/sub_description"),
        ),
    ] {
        let c = int(code);
        if c != 0 {
            return (c, text(msg));
        }
    }
    (0, String::new())
}

/// Error codes meaning "this access token is no longer good".
fn is_token_error(code: i64) -> bool {
    matches!(
        code,
        10008 | 2190008 | 28001003 | 28001008 | 2190004 | 40001 | 40014
    )
}

/// The `access_token` of a Douyin token answer's `data`, with its lifetime (`expires_in`,
/// 2 h when absent).
fn token_of(data: Option<&Value>, what: &str) -> Result<(String, Duration), ConnectorError> {
    let token = data
        .and_then(|d| d.get("access_token"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ConnectorError::Transient(format!("{what} answered no access_token")))?
        .to_owned();
    let expires_in = data
        .and_then(|d| d.get("expires_in"))
        .and_then(Value::as_u64)
        .unwrap_or(7200);
    Ok((token, Duration::from_secs(expires_in)))
}

/// Error codes meaning "slow down".
fn is_rate_limit(code: i64) -> bool {
    matches!(code, 10020 | 2190001 | 28003017)
}

fn text_field(content: &Map<String, Value>, key: &str) -> Option<String> {
    match content.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn ms_time(content: &Map<String, Value>, key: &str) -> Option<DateTime<Utc>> {
    let v = content.get(key)?;
    let n = v
        .as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))?;
    // Documented as 13-digit milliseconds; accept seconds too.
    if n > 100_000_000_000 {
        switchyard_core::time::from_unix_millis(n)
    } else {
        switchyard_core::time::from_unix_secs(n)
    }
}

fn nick_name(content: &Map<String, Value>, open_id: &str) -> Option<String> {
    content
        .get("user_infos")?
        .as_array()?
        .iter()
        .find(|u| u.get("open_id").and_then(Value::as_str) == Some(open_id))?
        .get("nick_name")?
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

fn media_of(content: &Map<String, Value>, id_key: Option<&str>) -> Media {
    Media {
        url: text_field(content, "resource_url"),
        media_id: id_key.and_then(|k| text_field(content, k)),
        ..Media::default()
    }
}

/// Maps a DM's `message_type` onto content.
fn message_content(content: &Map<String, Value>) -> Content {
    let kind = text_field(content, "message_type").unwrap_or_default();
    match kind.as_str() {
        "text" => Content::Text {
            text: text_field(content, "text").unwrap_or_default(),
        },
        "image" | "user_local_image" => Content::Image {
            media: media_of(content, None),
            caption: None,
        },
        "emoji" => Content::Sticker {
            media: media_of(content, None),
        },
        "video" | "user_local_video" => Content::Video {
            media: media_of(content, Some("item_id")),
            thumbnail: None,
            caption: None,
        },
        "retain_consult_card" => {
            let mut attributes = Map::new();
            for key in ["card_id", "card_status", "card_data"] {
                if let Some(v) = content.get(key) {
                    attributes.insert(key.to_owned(), v.clone());
                }
            }
            Content::Card {
                title: "retain_consult_card".into(),
                url: None,
                thumbnail: None,
                attributes,
            }
        }
        "" => Content::Unsupported {
            original_type: "unknown".into(),
        },
        other => Content::Unsupported {
            original_type: other.to_owned(),
        },
    }
}

#[async_trait]
impl Connector for DouyinConnector {
    type Inbound = DouyinInbound;

    fn channel(&self) -> &ChannelRef {
        &self.channel
    }

    fn handshake(&self, req: &InboundRequest<'_>) -> Result<Option<HttpReply>, ConnectorError> {
        if req.method != http::Method::POST {
            return Ok(None);
        }
        #[derive(Deserialize)]
        struct Probe {
            event: String,
        }
        let Ok(probe) = serde_json::from_slice::<Probe>(req.body) else {
            return Ok(None);
        };
        if probe.event != "verify_webhook" {
            return Ok(None);
        }
        self.check_signature(req)?;
        let (_, parts) = parse_event(req.body)?;
        let challenge = parts
            .content
            .get("challenge")
            .filter(|c| c.is_number() || c.is_string())
            .cloned()
            .ok_or_else(|| {
                ConnectorError::Malformed("verify_webhook without a challenge".into())
            })?;
        Ok(Some(HttpReply::json(
            200,
            &json!({ "challenge": challenge }),
        )))
    }

    fn verify(&self, req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
        self.check_signature(req)
    }

    fn decode(&self, req: &InboundRequest<'_>) -> Result<DouyinInbound, ConnectorError> {
        // One parse: the kept event, when the channel keeps raw, is the JSON the parts came from.
        let (event, kept) = self
            .raw
            .decode_json::<RawEvent>(req.body)
            .map_err(invalid_event)?;
        let (event, parts) = parts_of(event)?;
        let raw = kept.map(|mut sent| {
            if sent.get("content").is_some_and(Value::is_string) {
                sent.insert("content".into(), Value::Object(parts.content.clone()));
            }
            sent
        });
        Ok(DouyinInbound {
            event,
            client_key: parts.client_key,
            from_user_id: parts.from_user_id,
            to_user_id: parts.to_user_id,
            content: parts.content,
            msg_id_header: req.header(MSG_ID_HEADER).map(str::to_owned),
            raw,
        })
    }

    fn normalize(
        &self,
        inbound: DouyinInbound,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, ConnectorError> {
        if let Some(key) = inbound.client_key.as_deref()
            && !key.is_empty()
            && key != self.client_key
        {
            return Err(ConnectorError::Unsupported(format!(
                "event for client_key `{key}`, this channel is `{}`",
                self.client_key
            )));
        }
        let scene = match inbound.event.as_str() {
            "im_receive_msg" => None,
            "im_enter_direct_msg" => Some("im_enter_direct_msg".to_owned()),
            "im_send_msg" => {
                return Err(ConnectorError::Unsupported(
                    "im_send_msg: the account's own message (our replies echo here) is not \
                     routed"
                        .into(),
                ));
            }
            "verify_webhook" => {
                return Err(ConnectorError::Unsupported(
                    "verify_webhook is answered by the handshake".into(),
                ));
            }
            other => {
                return Err(ConnectorError::Unsupported(format!(
                    "Douyin event `{other}` is not routed"
                )));
            }
        };
        let content = &inbound.content;
        let customer = inbound
            .from_user_id
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ConnectorError::Malformed("event without from_user_id".into()))?;
        let account = inbound
            .to_user_id
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ConnectorError::Malformed("event without to_user_id".into()))?;
        if let Some(only) = &self.account_open_id
            && *only != account
        {
            return Err(ConnectorError::Unsupported(format!(
                "event for account `{account}`, this channel serves `{only}`"
            )));
        }
        if let Some(t) = content.get("conversation_type").and_then(Value::as_i64)
            && t != 1
        {
            return Err(ConnectorError::Unsupported(format!(
                "conversation_type {t} (only private chats are routed)"
            )));
        }
        let server_message_id = text_field(content, "server_message_id");
        let sent_at = ms_time(content, "create_time").unwrap_or(received_at);
        let dedupe = match (&server_message_id, &inbound.msg_id_header) {
            (Some(id), _) => id.clone(),
            (None, Some(h)) if !h.is_empty() => format!("msg-id:{h}"),
            _ => {
                return Err(ConnectorError::Malformed(
                    "event without server_message_id or Msg-Id".into(),
                ));
            }
        };
        let body = if scene.is_some() {
            let mut data = Map::new();
            for (from, to) in [
                ("conversation_short_id", "conversation_id"),
                ("scene_type", "scene_type"),
                ("objectId", "object_id"),
                ("data-im-extra", "im_extra"),
                ("ad_info", "ad_info"),
            ] {
                if let Some(v) = content.get(from).filter(|v| !v.is_null()) {
                    data.insert(to.to_owned(), v.clone());
                }
            }
            Content::Event {
                name: inbound.event.clone(),
                data,
            }
        } else {
            message_content(content)
        };
        if let Content::Text { text } = &body
            && text.is_empty()
        {
            return Err(ConnectorError::Malformed(
                "text message without text".into(),
            ));
        }
        let reply = match (
            text_field(content, "conversation_short_id"),
            server_message_id,
        ) {
            (Some(conversation_id), Some(server_message_id)) => Some(ReplyContext {
                account_open_id: account,
                customer_open_id: customer.clone(),
                conversation_id,
                server_message_id,
                scene,
                at: sent_at,
            }),
            _ => None,
        };
        let name = nick_name(content, &customer);
        let mut envelopes =
            vec![self.envelope(&customer, name, sent_at, received_at, &dedupe, body, reply)?];
        self.raw.attach(&mut envelopes, || inbound.raw);
        Ok(envelopes)
    }

    async fn deliver(
        &self,
        mut envelopes: Vec<Envelope>,
        sink: &dyn EnvelopeSink,
    ) -> Result<Vec<Accepted>, ConnectorError> {
        let now = Utc::now();
        for envelope in &mut envelopes {
            let ctx = take_raw_entry(envelope, REPLY_CONTEXT_KEY)
                .and_then(|v| serde_json::from_value::<ReplyContext>(v).ok());
            if let Some(ctx) = ctx {
                self.keep_reply_context(&envelope.id, &ctx, now).await?;
            }
        }
        sink.publish(envelopes).await
    }

    fn accepted(&self, _accepted: &[Accepted]) -> HttpReply {
        HttpReply::json(200, &json!({ "err_no": 0, "err_msg": "success" }))
    }

    fn rules(&self) -> ChannelRules {
        ChannelRules {
            reply_window: Some(REPLY_WINDOW),
            window_exempt: Vec::new(),
            max_replies_per_inbound: None,
            content_types: vec!["text", "image"],
            max_text_chars: None,
            downgrades: vec![
                ("card", "link"),
                ("link", "text"),
                ("location", "text"),
                ("sticker", "image"),
            ],
            captions: Captions::AsText,
            notes: "Douyin DMs: replies quote the customer's server_message_id, valid 24 h; \
                    images by media_id, or by URL (uploaded with the image upload tool first: \
                    JPEG/PNG/BMP/WebP, at most 10 MB), an image's caption following as a text \
                    message; proactive messages \
                    (im_authorize_message, once a day, at most 3) are not sent by this \
                    connector.",
        }
    }

    async fn send(&self, message: &Envelope) -> Result<SendReceipt, ConnectorError> {
        let ctx = self
            .reply_context(message)
            .await?
            .ok_or_else(|| ConnectorError::Rejected {
                code: "reply_window_closed".into(),
                message: "no Douyin message of this customer within the last 24 h to reply to"
                    .into(),
            })?;
        if Utc::now() - ctx.at > TimeDelta::seconds(REPLY_WINDOW.as_secs() as i64) {
            return Err(ConnectorError::Rejected {
                code: "reply_window_closed".into(),
                message: "the customer's last Douyin message is older than 24 h".into(),
            });
        }
        // Douyin images carry no caption: it follows as a text message.
        let ctx = &ctx;
        let sent = MediaSent::of(Arc::clone(&self.store), &message.id);
        send_media_then_caption(&message.content, &sent, |content, _| async move {
            self.send_one(ctx, &content).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_times_take_milliseconds_or_seconds_within_what_an_envelope_carries() {
        let time = |v: Value| {
            let content: Map<String, Value> = [("create_time".to_owned(), v)].into_iter().collect();
            ms_time(&content, "create_time").map(|t| t.timestamp_millis())
        };
        assert_eq!(time(json!(1_764_000_000_123_i64)), Some(1_764_000_000_123));
        assert_eq!(time(json!("1764000000")), Some(1_764_000_000_000));
        // Found by the property test: year 98816 cannot be written as an RFC 3339 `sent_at`.
        assert_eq!(time(json!(3_056_218_502_280_514_i64)), None);
        assert_eq!(time(json!(-5)), None);
    }

    #[test]
    fn signature_is_sha1_of_secret_then_body() {
        // Computed independently (Python hashlib.sha1(b"secret" + body)).
        let body =
            br#"{"event":"verify_webhook","client_key":"abc","content":{"challenge":12345}}"#;
        assert_eq!(
            webhook_signature("secret", body),
            "277df63c0efb431eccf64a233b0eee5ea94b6c4a"
        );
    }

    #[test]
    fn content_as_string_or_object() {
        let a = parse_event(br#"{"event":"x","content":"{\"a\":1}"}"#).unwrap();
        let b = parse_event(br#"{"event":"x","content":{"a":1}}"#).unwrap();
        assert_eq!(a.1.content, b.1.content);
        assert!(parse_event(br#"{"event":"x","content":"[1]"}"#).is_err());
        assert!(parse_event(br#"{"event":"x","content":5}"#).is_err());
    }

    #[test]
    fn error_shapes() {
        assert_eq!(douyin_error(&json!({"data": {"error_code": 0}})).0, 0);
        assert_eq!(
            douyin_error(&json!({"data": {"error_code": 2190008, "description": "x"}})),
            (2190008, "x".into())
        );
        assert_eq!(
            douyin_error(&json!({"err_no": 28001008, "err_msg": "y"})).0,
            28001008
        );
        assert_eq!(
            douyin_error(&json!({"data": {}, "extra": {"error_code": "0", "sub_error_code": 7}})).0,
            7
        );
    }
}
