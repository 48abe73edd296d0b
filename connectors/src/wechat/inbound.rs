//! What the WeChat OA and mini-program webhooks share: configuration, the URL handshake,
//! signature checks (plain `signature`, safe-mode `msg_signature`), decryption, and the
//! envelope fields (sender identities, dedupe key, times).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::{ChannelRef, Content, Envelope, Media, Sender};
use switchyard_core::identity::IdentityKey;

use super::crypto::{self, CryptoError, WxCrypto};
use super::message::{self, Body, EncryptedBody, Format, Head, WxMessage};
use super::xml;
use crate::signature::check_timestamp;
use crate::{ConnectorError, HttpReply, InboundRequest, RawPolicy};

/// Requests whose `timestamp` is further than this from our clock are refused (replay).
pub const REPLAY_WINDOW_SECS: i64 = 300;

/// Configuration keys of both WeChat kinds.
pub const KEYS: &[&str] = &["app_id", "app_secret", "token", "encoding_aes_key"];

/// The inbound side of one WeChat account (OA or mini-program).
#[derive(Debug, Clone)]
pub struct WxInbound {
    kind: &'static str,
    app_id: String,
    token: String,
    crypto: Option<WxCrypto>,
    raw: RawPolicy,
}

impl WxInbound {
    /// Reads `app_id`, `token` and the optional `encoding_aes_key` (safe mode).
    pub fn from_settings(
        kind: &'static str,
        settings: &ChannelSettings,
    ) -> Result<Self, ConnectorError> {
        let app_id = settings.required_secret("app_id")?;
        let token = settings.required_secret("token")?;
        if app_id.trim().is_empty() || app_id.contains(':') {
            return Err(ConnectorError::Config(format!(
                "channels.{}.app_id must be the account's AppID (wx...)",
                settings.id
            )));
        }
        if token.is_empty() {
            return Err(ConnectorError::Config(format!(
                "channels.{}.token must not be empty",
                settings.id
            )));
        }
        let crypto = match settings.secret("encoding_aes_key")? {
            None => None,
            Some(key) if key.trim().is_empty() => None,
            Some(key) => Some(
                WxCrypto::new(token.clone(), &key, app_id.clone()).map_err(|e| {
                    ConnectorError::Config(format!(
                        "channels.{}.encoding_aes_key: {e}",
                        settings.id
                    ))
                })?,
            ),
        };
        Ok(WxInbound {
            kind,
            app_id,
            token,
            crypto,
            raw: RawPolicy::from_settings(settings)?,
        })
    }

    /// Builds the inbound side directly (tests, fixture generators); it keeps no raw.
    pub fn new(
        kind: &'static str,
        app_id: &str,
        token: &str,
        encoding_aes_key: Option<&str>,
    ) -> Result<Self, ConnectorError> {
        let crypto = encoding_aes_key
            .map(|key| WxCrypto::new(token, key, app_id))
            .transpose()
            .map_err(|e| ConnectorError::Config(format!("encoding_aes_key: {e}")))?;
        Ok(WxInbound {
            kind,
            app_id: app_id.to_owned(),
            token: token.to_owned(),
            crypto,
            raw: RawPolicy::default(),
        })
    }

    /// The account's AppID.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// Whether safe mode (AES) is configured.
    pub fn safe_mode(&self) -> bool {
        self.crypto.is_some()
    }

    /// Answers the URL verification `GET ?signature&timestamp&nonce&echostr` with `echostr`.
    /// WeChat OA and mini-programs send `echostr` in clear in every mode; a WeCom-style
    /// encrypted `echostr` (with `msg_signature`) is also understood when a key is configured.
    pub fn handshake(&self, req: &InboundRequest<'_>) -> Result<Option<HttpReply>, ConnectorError> {
        if req.method != http::Method::GET {
            return Ok(None);
        }
        let Some(echostr) = req.query.get("echostr") else {
            return Ok(None);
        };
        let (timestamp, nonce) = self.timestamp_nonce(req)?;
        if let (Some(msg_signature), Some(crypto)) = (req.query.get("msg_signature"), &self.crypto)
        {
            let plain = crypto
                .open(timestamp, nonce, echostr, msg_signature)
                .map_err(unauthorized)?;
            let plain = String::from_utf8(plain)
                .map_err(|_| ConnectorError::Unauthorized("encrypted echostr is invalid".into()))?;
            return Ok(Some(HttpReply::text(200, plain)));
        }
        let signature = req
            .query
            .get("signature")
            .ok_or_else(|| ConnectorError::Unauthorized("missing `signature`".into()))?;
        crypto::verify_signature(&self.token, timestamp, nonce, signature).map_err(unauthorized)?;
        Ok(Some(HttpReply::text(200, echostr.clone())))
    }

    fn timestamp_nonce<'r>(
        &self,
        req: &'r InboundRequest<'_>,
    ) -> Result<(&'r str, &'r str), ConnectorError> {
        let timestamp = req
            .query
            .get("timestamp")
            .ok_or_else(|| ConnectorError::Unauthorized("missing `timestamp`".into()))?;
        let nonce = req
            .query
            .get("nonce")
            .ok_or_else(|| ConnectorError::Unauthorized("missing `nonce`".into()))?;
        check_timestamp(timestamp, req.received_at, REPLAY_WINDOW_SECS)?;
        Ok((timestamp.as_str(), nonce.as_str()))
    }

    /// Whether the request says it is encrypted (`encrypt_type=aes`).
    fn encrypted(req: &InboundRequest<'_>) -> Result<bool, ConnectorError> {
        match req.query.get("encrypt_type").map(|s| s.trim()) {
            None | Some("") | Some("raw") => Ok(false),
            Some(t) if t.eq_ignore_ascii_case("aes") => Ok(true),
            Some(other) => Err(ConnectorError::Malformed(format!(
                "unsupported encrypt_type `{other}`"
            ))),
        }
    }

    /// Authenticates a push before anything in it is trusted: the timestamp window, the plain
    /// `signature` over `[token, timestamp, nonce]`, and in safe mode `msg_signature` over
    /// `[token, timestamp, nonce, Encrypt]`. With a key configured, plain pushes are refused
    /// (their body is not covered by any signature).
    pub fn verify(&self, req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
        let (timestamp, nonce) = self.timestamp_nonce(req)?;
        // WeChat sends `signature` on every push, in safe mode next to `msg_signature`.
        let signature = req
            .query
            .get("signature")
            .ok_or_else(|| ConnectorError::Unauthorized("missing `signature`".into()))?;
        crypto::verify_signature(&self.token, timestamp, nonce, signature).map_err(unauthorized)?;
        match (Self::encrypted(req)?, &self.crypto) {
            (true, Some(crypto)) => {
                let msg_signature = req.query.get("msg_signature").ok_or_else(|| {
                    ConnectorError::Unauthorized("safe-mode push without `msg_signature`".into())
                })?;
                let encrypt = encrypt_field(req.body)?;
                crypto
                    .verify_msg_signature(timestamp, nonce, &encrypt, msg_signature)
                    .map_err(unauthorized)
            }
            (true, None) => Err(ConnectorError::Unauthorized(
                "safe-mode push, but this channel has no encoding_aes_key".into(),
            )),
            (false, Some(_)) => Err(ConnectorError::Unauthorized(
                "plain push refused: this channel is configured for safe mode \
                 (encoding_aes_key); set the platform to safe or compatible mode"
                    .into(),
            )),
            (false, None) => Ok(()),
        }
    }

    /// Decrypts (safe mode, re-checking `msg_signature` first) and parses the push.
    pub fn decode(&self, req: &InboundRequest<'_>) -> Result<WxMessage, ConnectorError> {
        let text = xml::body_text(req.body)?;
        if !Self::encrypted(req)? {
            let mut msg = WxMessage::parse(text, false)?;
            msg.raw = self.raw.capture(|| message::fields(text));
            return Ok(msg);
        }
        let crypto = self.crypto.as_ref().ok_or_else(|| {
            ConnectorError::Unauthorized(
                "safe-mode push, but this channel has no encoding_aes_key".into(),
            )
        })?;
        let (timestamp, nonce) = self.timestamp_nonce(req)?;
        let msg_signature = req.query.get("msg_signature").ok_or_else(|| {
            ConnectorError::Unauthorized("safe-mode push without `msg_signature`".into())
        })?;
        let encrypt = encrypt_field(req.body)?;
        let plain = crypto
            .open(timestamp, nonce, &encrypt, msg_signature)
            .map_err(|e| match e {
                CryptoError::BadSignature => unauthorized(e),
                // Opaque on purpose: which step failed is not revealed.
                _ => ConnectorError::Malformed("encrypted payload cannot be decrypted".into()),
            })?;
        let plain = String::from_utf8(plain)
            .map_err(|_| ConnectorError::Malformed("decrypted payload is not UTF-8".into()))?;
        let mut msg = WxMessage::parse(&plain, true)?;
        // The decrypted push, never the ciphertext around it.
        msg.raw = self.raw.capture(|| message::fields(&plain));
        Ok(msg)
    }

    /// The sender of a push: OpenID in this AppID's scope, plus the UnionID when given.
    pub fn sender(&self, head: &Head) -> Result<Sender, ConnectorError> {
        let openid = head
            .from_user_name
            .as_deref()
            .ok_or_else(|| ConnectorError::Malformed("push has no FromUserName".into()))?;
        let mut identities = vec![
            IdentityKey::new("wechat_openid", &self.app_id, openid)
                .map_err(|e| ConnectorError::Malformed(e.to_string()))?,
        ];
        if let Some(unionid) = head.union_id.as_deref() {
            identities.push(
                IdentityKey::new("wechat_unionid", "", unionid)
                    .map_err(|e| ConnectorError::Malformed(e.to_string()))?,
            );
        }
        Ok(Sender {
            external_id: openid.to_owned(),
            scope: self.app_id.clone(),
            display_name: None,
            identities,
        })
    }

    /// `{kind}:{app_id}:{MsgId}` for messages; `{kind}:{app_id}:{FromUserName}:{CreateTime}:
    /// {Event}` for events (and anything without a MsgId). Stable across WeChat's retries.
    pub fn dedupe_key(&self, msg: &WxMessage) -> Result<String, ConnectorError> {
        let head = &msg.head;
        let is_event = matches!(msg.body, Body::Event { .. });
        if let (false, Some(id)) = (is_event, head.msg_id.as_deref()) {
            return Ok(format!("{}:{}:{id}", self.kind, self.app_id));
        }
        let from = head.from_user_name.as_deref().unwrap_or_default();
        let time = head
            .create_time
            .ok_or_else(|| ConnectorError::Malformed("push has no CreateTime".into()))?;
        let what = match &msg.body {
            Body::Event { name, .. } => name.as_str(),
            _ => head.msg_type.as_deref().unwrap_or_default(),
        };
        Ok(format!(
            "{}:{}:{from}:{time}:{what}",
            self.kind, self.app_id
        ))
    }

    /// One inbound envelope for `msg` with `content` (and, when the channel keeps raw, the
    /// push's fields).
    pub fn envelope(
        &self,
        channel: &ChannelRef,
        msg: &WxMessage,
        content: Content,
        received_at: DateTime<Utc>,
    ) -> Result<Envelope, ConnectorError> {
        let sender = self.sender(&msg.head)?;
        let dedupe_key = self.dedupe_key(msg)?;
        let sent_at = msg
            .head
            .create_time
            .and_then(switchyard_core::time::from_unix_secs)
            .unwrap_or(received_at);
        let mut envelope = Envelope::inbound(
            channel.clone(),
            sender,
            content,
            dedupe_key,
            sent_at,
            received_at,
        );
        self.raw
            .attach(std::slice::from_mut(&mut envelope), || msg.raw.clone());
        Ok(envelope)
    }
}

fn unauthorized(e: CryptoError) -> ConnectorError {
    ConnectorError::Unauthorized(e.to_string())
}

/// The `Encrypt` field of a safe-mode body (XML or JSON).
fn encrypt_field(body: &[u8]) -> Result<String, ConnectorError> {
    let text = xml::body_text(body)?;
    let outer: EncryptedBody = message::parse(text, Format::sniff(text)?)?;
    outer
        .encrypt
        .ok_or_else(|| ConnectorError::Malformed("safe-mode push has no Encrypt".into()))
}

/// Maps a parsed body to envelope content. `events` lists the (lower-case) event names that
/// are routed; any other event or message type is [`ConnectorError::Unsupported`] (answered
/// 200 `success`, not routed).
pub fn content_of(body: &Body, types: &[&str], events: &[&str]) -> Result<Content, ConnectorError> {
    let type_name = match body {
        Body::Text(_) => "text",
        Body::Image(_) => "image",
        Body::Voice(_) => "voice",
        Body::Video { short: false, .. } => "video",
        Body::Video { short: true, .. } => "shortvideo",
        Body::Location(_) => "location",
        Body::Link(_) => "link",
        Body::MiniProgramPage(_) => "miniprogrampage",
        Body::Event { .. } => "event",
        Body::Unknown { msg_type } => {
            return Err(ConnectorError::Unsupported(format!(
                "WeChat MsgType `{msg_type}` is not routed"
            )));
        }
    };
    if !types.contains(&type_name) {
        return Err(ConnectorError::Unsupported(format!(
            "WeChat MsgType `{type_name}` is not routed on this channel kind"
        )));
    }
    let media = |url: &Option<String>, media_id: &Option<String>, mime: Option<String>| Media {
        url: url.clone(),
        media_id: media_id.clone(),
        mime,
        ..Media::default()
    };
    Ok(match body {
        Body::Text(t) => Content::Text {
            text: t.content.clone().unwrap_or_default(),
        },
        Body::Image(i) => Content::Image {
            media: media(&i.pic_url, &i.media_id, None),
            caption: None,
        },
        Body::Voice(v) => Content::Audio {
            media: media(&None, &v.media_id, v.format.as_deref().map(audio_mime)),
            recognition: v.recognition.clone(),
            caption: None,
        },
        Body::Video { video, .. } => Content::Video {
            media: media(&None, &video.media_id, None),
            thumbnail: video
                .thumb_media_id
                .as_ref()
                .map(|id| media(&None, &Some(id.clone()), None)),
            caption: None,
        },
        Body::Location(l) => Content::Location {
            latitude: l
                .latitude
                .ok_or_else(|| ConnectorError::Malformed("location has no Location_X".into()))?,
            longitude: l
                .longitude
                .ok_or_else(|| ConnectorError::Malformed("location has no Location_Y".into()))?,
            label: l.label.clone(),
        },
        Body::Link(l) => Content::Link {
            url: l
                .url
                .clone()
                .ok_or_else(|| ConnectorError::Malformed("link has no Url".into()))?,
            title: l.title.clone(),
            description: l.description.clone(),
        },
        Body::MiniProgramPage(p) => {
            let mut attributes = Map::new();
            if let Some(appid) = &p.app_id {
                attributes.insert("appid".into(), Value::String(appid.clone()));
            }
            if let Some(path) = &p.page_path {
                attributes.insert("pagepath".into(), Value::String(path.clone()));
            }
            let thumbnail = (p.thumb_url.is_some() || p.thumb_media_id.is_some())
                .then(|| media(&p.thumb_url, &p.thumb_media_id, None));
            Content::Card {
                title: p.title.clone().unwrap_or_default(),
                url: None,
                thumbnail,
                attributes,
            }
        }
        Body::Event { name, body } => {
            let name = name.to_ascii_lowercase();
            if !events.contains(&name.as_str()) {
                return Err(ConnectorError::Unsupported(format!(
                    "WeChat event `{name}` is not routed"
                )));
            }
            let mut data = Map::new();
            let mut put = |key: &str, value: &Option<String>| {
                if let Some(v) = value {
                    data.insert(key.to_owned(), Value::String(v.clone()));
                }
            };
            put("event_key", &body.event_key);
            put("ticket", &body.ticket);
            put("menu_id", &body.menu_id);
            put("session_from", &body.session_from);
            if let Some(scene) = body
                .event_key
                .as_deref()
                .and_then(|k| k.strip_prefix("qrscene_"))
            {
                data.insert("scene".into(), Value::String(scene.to_owned()));
            } else if name == "scan" {
                put("scene", &body.event_key);
            }
            for (key, value) in [
                ("latitude", body.latitude),
                ("longitude", body.longitude),
                ("precision", body.precision),
            ] {
                if let Some(n) = value.and_then(serde_json::Number::from_f64) {
                    data.insert(key.into(), Value::Number(n));
                }
            }
            Content::Event { name, data }
        }
        Body::Unknown { msg_type } => {
            return Err(ConnectorError::Unsupported(format!(
                "WeChat MsgType `{msg_type}` is not routed"
            )));
        }
    })
}

fn audio_mime(format: &str) -> String {
    match format.to_ascii_lowercase().as_str() {
        "amr" => "audio/amr".into(),
        "speex" => "audio/speex".into(),
        "mp3" => "audio/mpeg".into(),
        other => format!("audio/{other}"),
    }
}
