//! LINE Messaging API (kind `line`): a LINE Official Account's webhooks in, agents' replies
//! out through the push API.
//!
//! * **Webhook signature** (developers.line.biz …/messaging-api/verify-webhook-signature):
//!   header `X-Line-Signature` = standard base64 (with padding) of
//!   `HMAC-SHA256(key = channel secret, message = raw body)`. LINE publishes no source IPs: the
//!   signature is the only authentication.
//! * **Payload**: `{"destination": <bot user id>, "events": [...]}`; one webhook may carry
//!   several events, each normalized in order. An empty `events` array is the console's
//!   "Verify" request: valid, nothing routed, 200.
//! * **Routed**: `message` events from a one-to-one chat (`source.type == "user"`) in `active`
//!   mode. Group and multi-person chats, `standby` mode, and every other event (follow,
//!   unfollow, postback, unsend, …) are not routed.
//! * **Dedupe**: `line:{destination}:{webhookEventId}` (a redelivery keeps the event id), the
//!   message id when an event has no `webhookEventId`.
//! * **Send**: `POST {api_base}/v2/bot/message/push` with `Authorization: Bearer <channel access
//!   token>` and `X-Line-Retry-Key` derived from the outbound envelope id, so a retry of the
//!   same envelope is accepted at most once (a `409` answer means LINE already accepted it).
//!   LINE media messages have no caption: a captioned image or video is pushed as two message
//!   objects of the same request, the media then the caption as text, so both go or neither.
//!   Reply tokens are not used: they are single-use and expire quickly, while an agent's
//!   answer may take minutes.
//! * **Media a customer sent** ([`Connector::fetch_media`], Messaging API reference "Get
//!   content", developers.line.biz/en/reference/messaging-api/#get-content): `GET
//!   {data_api_base}/v2/bot/message/{message id}/content` with the bearer token. LINE serves
//!   content from its own host, `data_api_base` (default `https://api-data.line.me`); the
//!   media id of an inbound image, video, audio or file is its message id. Content is kept
//!   for a limited time (404 afterwards); a video or audio still being prepared answers 202.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::{ChannelRef, Content, Envelope, Media, Sender};
use switchyard_core::identity::IdentityKey;

use crate::api::retry_after;
use crate::caption::split_caption;
use crate::media::{self, MAX_FETCH_BYTES, MediaDownload};
use crate::rules::{Captions, ChannelRules};
use crate::signature::{constant_time_eq, hmac_sha256, hmac_sha256_base64};
use crate::token_cache::{base_url, encode_component};
use crate::{
    Accepted, Connector, ConnectorContext, ConnectorError, HttpReply, InboundRequest, RawPolicy,
    SendReceipt, keep_valid,
};

/// Connector kind.
pub const KIND: &str = "line";
/// Configuration keys besides the common ones.
pub const KEYS: &[&str] = &["channel_secret", "channel_access_token", "data_api_base"];
/// The Messaging API host.
pub const DEFAULT_API_BASE: &str = "https://api.line.me";
/// The host LINE serves message content from (`data_api_base` overrides it).
pub const DEFAULT_DATA_API_BASE: &str = "https://api-data.line.me";
/// Header carrying the webhook signature.
pub const SIGNATURE_HEADER: &str = "x-line-signature";
/// Header carrying the idempotency key of a push.
pub const RETRY_KEY_HEADER: &str = "x-line-retry-key";
/// The push API path.
pub const PUSH_PATH: &str = "/v2/bot/message/push";
/// Longest text message, in UTF-16 code units (LINE counts text that way).
pub const MAX_TEXT_UTF16: usize = 5000;
/// The identity kind of a LINE user.
pub const IDENTITY_KIND: &str = "line_user_id";

/// The webhook signature: standard base64 of HMAC-SHA256(channel secret, raw body).
pub fn webhook_signature(channel_secret: &str, body: &[u8]) -> String {
    hmac_sha256_base64(channel_secret.as_bytes(), &[body])
}

/// The `X-Line-Retry-Key` of an outbound envelope: a UUID (hexadecimal, 8-4-4-4-12) made from
/// the envelope id's 128 ULID bits with the version-4 and RFC 4122 variant bits set, so every
/// retry of the same envelope carries the same key. An id that is not a ULID is hashed first.
pub fn retry_key(envelope_id: &str) -> String {
    let mut bytes = match ulid::Ulid::from_string(envelope_id) {
        Ok(id) => id.0.to_be_bytes(),
        Err(_) => {
            let digest = hmac_sha256(b"switchyard-line-retry-key", &[envelope_id.as_bytes()]);
            let mut first = [0u8; 16];
            first.copy_from_slice(&digest[..16]);
            first
        }
    };
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A verified, parsed webhook: the bot's user id and its events, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct LineWebhook {
    /// The bot's user id (`destination`): the scope of identity keys.
    pub destination: String,
    /// The events, as sent.
    pub events: Vec<LineEvent>,
}

/// One webhook event, read leniently: fields of an unexpected type count as absent.
#[derive(Debug, Clone, PartialEq)]
pub struct LineEvent {
    /// `type` (`message`, `follow`, `postback`, …).
    pub event_type: String,
    /// `mode`: `active`, or `standby` while another module handles the chat.
    pub mode: Option<String>,
    /// `timestamp`, Unix milliseconds.
    pub timestamp_ms: Option<i64>,
    /// `source.type`: `user`, `group` or `room`.
    pub source_type: Option<String>,
    /// `source.userId`.
    pub user_id: Option<String>,
    /// `webhookEventId` (a ULID, kept across redeliveries).
    pub webhook_event_id: Option<String>,
    /// `deliveryContext.isRedelivery`.
    pub is_redelivery: bool,
    /// The `message` object of a message event.
    pub message: Option<Map<String, Value>>,
    /// The event as sent: what an envelope keeps in `raw` when the channel keeps raw.
    pub original: Value,
}

fn string_at(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl LineEvent {
    fn read(value: Value) -> LineEvent {
        let source = value.get("source").unwrap_or(&Value::Null);
        LineEvent {
            event_type: string_at(&value, "type").unwrap_or_default(),
            mode: string_at(&value, "mode"),
            timestamp_ms: value.get("timestamp").and_then(Value::as_i64),
            source_type: string_at(source, "type"),
            user_id: string_at(source, "userId"),
            webhook_event_id: string_at(&value, "webhookEventId"),
            is_redelivery: value
                .pointer("/deliveryContext/isRedelivery")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            message: value.get("message").and_then(Value::as_object).cloned(),
            original: value,
        }
    }
}

/// Parses a webhook body: an object with a string `destination` and an `events` array.
pub fn parse_webhook(body: &[u8]) -> Result<LineWebhook, ConnectorError> {
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| ConnectorError::Malformed(format!("invalid LINE webhook JSON: {e}")))?;
    let destination = value
        .get("destination")
        .and_then(Value::as_str)
        .ok_or_else(|| ConnectorError::Malformed("webhook without a `destination`".into()))?
        .to_owned();
    // Taken out, not copied: each event keeps its own object.
    let Some(Value::Array(events)) = value.get_mut("events").map(Value::take) else {
        return Err(ConnectorError::Malformed(
            "webhook without an `events` array".into(),
        ));
    };
    let events = events.into_iter().map(LineEvent::read).collect();
    Ok(LineWebhook {
        destination,
        events,
    })
}

/// The LINE connector.
pub struct LineConnector {
    channel: ChannelRef,
    channel_secret: String,
    channel_access_token: String,
    api_base: String,
    data_api_base: String,
    http: reqwest::Client,
    raw: RawPolicy,
}

impl std::fmt::Debug for LineConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineConnector")
            .field("channel", &self.channel)
            .field("api_base", &self.api_base)
            .field("data_api_base", &self.data_api_base)
            .finish_non_exhaustive()
    }
}

/// A LINE media message's media: the message id (content held by LINE), or the URLs of an
/// `external` content provider.
fn media_of(message: &Map<String, Value>, id: &str) -> (Media, Option<Media>) {
    // Audio and video carry their playing time in milliseconds.
    let duration_ms = message.get("duration").and_then(Value::as_u64);
    let provider = message.get("contentProvider").unwrap_or(&Value::Null);
    if string_at(provider, "type").as_deref() == Some("external") {
        let url = string_at(provider, "originalContentUrl");
        let preview = string_at(provider, "previewImageUrl").map(|url| Media {
            url: Some(url),
            ..Media::default()
        });
        if url.is_some() {
            return (
                Media {
                    url,
                    duration_ms,
                    ..Media::default()
                },
                preview,
            );
        }
    }
    (
        Media {
            media_id: Some(id.to_owned()),
            duration_ms,
            ..Media::default()
        },
        None,
    )
}

/// Maps a message object onto content; a text or location message that lacks what it needs
/// is `Malformed`.
fn message_content(message: &Map<String, Value>, id: &str) -> Result<Content, ConnectorError> {
    let object = Value::Object(message.clone());
    let kind = string_at(&object, "type").unwrap_or_default();
    Ok(match kind.as_str() {
        // LINE emojis arrive as their alternative text and mentions as `@name` inside `text`:
        // both are kept as plain text.
        "text" => Content::Text {
            text: string_at(&object, "text").ok_or_else(|| {
                ConnectorError::Malformed(format!("text message {id} without text"))
            })?,
        },
        "image" => Content::Image {
            media: media_of(message, id).0,
            caption: None,
        },
        "video" => {
            let (media, thumbnail) = media_of(message, id);
            Content::Video {
                media,
                thumbnail,
                caption: None,
            }
        }
        "audio" => Content::Audio {
            media: media_of(message, id).0,
            recognition: None,
            caption: None,
        },
        "file" => Content::File {
            media: Media {
                media_id: Some(id.to_owned()),
                size: object.get("fileSize").and_then(Value::as_u64),
                ..Media::default()
            },
            name: string_at(&object, "fileName"),
            caption: None,
        },
        "location" => {
            let (Some(latitude), Some(longitude)) = (
                object.get("latitude").and_then(Value::as_f64),
                object.get("longitude").and_then(Value::as_f64),
            ) else {
                return Err(ConnectorError::Malformed(format!(
                    "location message {id} without latitude/longitude"
                )));
            };
            let label = match (string_at(&object, "title"), string_at(&object, "address")) {
                (Some(title), Some(address)) if title != address => {
                    Some(format!("{title}, {address}"))
                }
                (Some(title), _) => Some(title),
                (None, address) => address,
            };
            Content::Location {
                latitude,
                longitude,
                label,
            }
        }
        "sticker" => Content::Sticker {
            media: Media {
                media_id: match (
                    string_at(&object, "packageId"),
                    string_at(&object, "stickerId"),
                ) {
                    (Some(package), Some(sticker)) => Some(format!("{package}:{sticker}")),
                    (None, Some(sticker)) => Some(sticker),
                    _ => Some(id.to_owned()),
                },
                ..Media::default()
            },
        },
        "" => Content::Unsupported {
            original_type: "unknown".into(),
        },
        other => Content::Unsupported {
            original_type: other.to_owned(),
        },
    })
}

fn sent_at(timestamp_ms: Option<i64>, received_at: DateTime<Utc>) -> DateTime<Utc> {
    timestamp_ms
        .and_then(switchyard_core::time::from_unix_millis)
        .unwrap_or(received_at)
}

/// `https://` URLs only: LINE fetches media over HTTPS (TLS 1.2 or later).
fn https_url(media: &Media, what: &str) -> Result<String, ConnectorError> {
    let Some(url) = media
        .url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    else {
        return Err(ConnectorError::rejected(
            "media_url_required",
            format!(
                "LINE sends {what} by URL only; this one has {}",
                if media.media_id.is_some() {
                    "only a media id"
                } else {
                    "no URL"
                }
            ),
        ));
    };
    let scheme_ok = url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
    if !scheme_ok {
        return Err(ConnectorError::rejected(
            "media_url_not_https",
            format!("LINE fetches {what} over HTTPS only"),
        ));
    }
    Ok(url.to_owned())
}

/// The push message objects for `content`: one, or for captioned media the media then the
/// caption as a text message (a push takes up to 5). Content LINE cannot carry is `Rejected`
/// here, before any request.
pub fn push_messages(content: &Content) -> Result<Vec<Value>, ConnectorError> {
    match split_caption(content) {
        Some((media, caption)) => Ok(vec![push_message(&media)?, push_message(&caption)?]),
        None => Ok(vec![push_message(content)?]),
    }
}

/// The push message object for `content`, without its caption (see [`push_messages`]);
/// content LINE cannot carry is `Rejected` here, before any request.
pub fn push_message(content: &Content) -> Result<Value, ConnectorError> {
    match content {
        Content::Text { text } => {
            if text.is_empty() {
                return Err(ConnectorError::rejected(
                    "text_empty",
                    "LINE does not send empty text",
                ));
            }
            let units = text.encode_utf16().count();
            if units > MAX_TEXT_UTF16 {
                return Err(ConnectorError::rejected(
                    "text_too_long",
                    format!("text is {units} UTF-16 code units; LINE allows {MAX_TEXT_UTF16}"),
                ));
            }
            Ok(json!({ "type": "text", "text": text }))
        }
        Content::Image { media, .. } => {
            let url = https_url(media, "images")?;
            Ok(json!({
                "type": "image",
                "originalContentUrl": url,
                "previewImageUrl": url,
            }))
        }
        Content::Video {
            media, thumbnail, ..
        } => {
            let url = https_url(media, "videos")?;
            let preview = match thumbnail {
                Some(t) => https_url(t, "video previews")?,
                None => {
                    return Err(ConnectorError::rejected(
                        "video_preview_required",
                        "a LINE video message needs a preview image (the video's thumbnail URL)",
                    ));
                }
            };
            Ok(json!({
                "type": "video",
                "originalContentUrl": url,
                "previewImageUrl": preview,
            }))
        }
        Content::Audio { media, .. } => {
            let url = https_url(media, "audio")?;
            let Some(duration) = media.duration_ms.filter(|ms| *ms > 0) else {
                return Err(ConnectorError::rejected(
                    "audio_duration_required",
                    "a LINE audio message needs the audio's playing time: set the media's \
                     `duration_ms`",
                ));
            };
            Ok(json!({
                "type": "audio",
                "originalContentUrl": url,
                "duration": duration,
            }))
        }
        other => Err(ConnectorError::rejected(
            "content_unsupported",
            format!(
                "the LINE connector sends text, image, audio and video, not {}",
                other.type_name()
            ),
        )),
    }
}

/// The first `sentMessages[].id` of a push answer.
fn sent_message_id(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body).ok()?;
    let first = value.get("sentMessages")?.as_array()?.first()?;
    string_at(first, "id")
}

/// LINE's error body `{"message": …, "details": [{"message", "property"}]}` as one line.
fn error_text(body: &str) -> String {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return body.chars().take(200).collect();
    };
    let mut text = value
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let details: Vec<String> = value
        .get("details")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|d| {
                    let message = d.get("message").and_then(Value::as_str).unwrap_or("");
                    match d.get("property").and_then(Value::as_str) {
                        Some(property) => format!("{property}: {message}"),
                        None => message.to_owned(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if !details.is_empty() {
        text.push_str(&format!(" ({})", details.join("; ")));
    }
    text.chars().take(300).collect()
}

/// Classifies a push answer that is neither 2xx nor 409.
pub fn classify_push_failure(
    status: u16,
    retry_after: Option<std::time::Duration>,
    body: &str,
) -> ConnectorError {
    let text = error_text(body);
    match status {
        429 if text.to_ascii_lowercase().contains("monthly limit") => ConnectorError::rejected(
            "monthly_limit_reached",
            format!("LINE's monthly message quota for this channel is used up: {text}"),
        ),
        429 => ConnectorError::RateLimited { retry_after },
        401 => ConnectorError::rejected(
            "access_token_invalid",
            format!("LINE refused the channel access token (check channel_access_token): {text}"),
        ),
        400..=499 => {
            let code = match status {
                400 => "bad_request".to_owned(),
                403 => "forbidden".to_owned(),
                other => format!("http_{other}"),
            };
            ConnectorError::rejected(&code, text)
        }
        _ => ConnectorError::Transient(format!("LINE push answered HTTP {status}: {text}")),
    }
}

impl LineConnector {
    /// Builds the connector from its `[[channels]]` entry.
    pub fn new(settings: &ChannelSettings, ctx: &ConnectorContext) -> Result<Self, ConnectorError> {
        let channel_secret = settings.required_secret("channel_secret")?;
        let channel_access_token = settings.required_secret("channel_access_token")?;
        for (key, value) in [
            ("channel_secret", &channel_secret),
            ("channel_access_token", &channel_access_token),
        ] {
            if value.trim().is_empty() {
                return Err(ConnectorError::Config(format!(
                    "channels.{}.{key} must not be empty",
                    settings.id
                )));
            }
        }
        let data_api_base = settings.secret("data_api_base")?;
        if let Some(base) = &data_api_base
            && !(base.starts_with("https://") || base.starts_with("http://"))
        {
            return Err(ConnectorError::Config(format!(
                "channels.{}.data_api_base must be an http(s) URL (LINE's content host, \
                 default {DEFAULT_DATA_API_BASE})",
                settings.id
            )));
        }
        Ok(LineConnector {
            channel: ChannelRef {
                kind: KIND.to_owned(),
                id: settings.id.clone(),
            },
            channel_secret,
            channel_access_token,
            api_base: base_url(settings.api_base.as_deref(), DEFAULT_API_BASE),
            data_api_base: base_url(data_api_base.as_deref(), DEFAULT_DATA_API_BASE),
            http: ctx.http.clone(),
            raw: RawPolicy::from_settings(settings)?,
        })
    }

    /// The identity key of a user: `line_user_id:{destination}:{userId}`.
    pub fn user_key(
        &self,
        destination: &str,
        user_id: &str,
    ) -> Result<IdentityKey, ConnectorError> {
        IdentityKey::new(IDENTITY_KIND, destination, user_id)
            .map_err(|e| ConnectorError::Malformed(e.to_string()))
    }

    fn envelope(
        &self,
        destination: &str,
        event: &LineEvent,
        received_at: DateTime<Utc>,
    ) -> Result<Envelope, ConnectorError> {
        let message = event.message.as_ref().ok_or_else(|| {
            ConnectorError::Malformed("message event without a `message` object".into())
        })?;
        let message_value = Value::Object(message.clone());
        let message_id = string_at(&message_value, "id")
            .ok_or_else(|| ConnectorError::Malformed("message without an `id`".into()))?;
        let user_id = event.user_id.clone().ok_or_else(|| {
            ConnectorError::Malformed(format!("message {message_id} without source.userId"))
        })?;
        let event_key = event.webhook_event_id.as_deref().unwrap_or(&message_id);
        let mut envelope = Envelope::inbound(
            self.channel.clone(),
            Sender {
                identities: vec![self.user_key(destination, &user_id)?],
                external_id: user_id,
                scope: destination.to_owned(),
                display_name: None,
            },
            message_content(message, &message_id)?,
            format!("{KIND}:{destination}:{event_key}"),
            sent_at(event.timestamp_ms, received_at),
            received_at,
        );
        // This event's own object, not the whole webhook.
        self.raw.attach(std::slice::from_mut(&mut envelope), || {
            event.original.as_object().cloned()
        });
        Ok(envelope)
    }

    /// Why an event is not routed, or `None` when it is a routable message.
    fn skip_reason(event: &LineEvent) -> Option<String> {
        if event.event_type != "message" {
            return Some(format!("`{}` event", event.event_type));
        }
        if event.mode.as_deref() == Some("standby") {
            return Some("message in standby mode (another module handles the chat)".into());
        }
        match event.source_type.as_deref() {
            Some("user") => None,
            Some(other) => Some(format!("message from a `{other}` chat")),
            None => Some("message without a source".into()),
        }
    }
}

#[async_trait]
impl Connector for LineConnector {
    type Inbound = LineWebhook;

    fn channel(&self) -> &ChannelRef {
        &self.channel
    }

    fn verify(&self, req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
        let received = req.header(SIGNATURE_HEADER).ok_or_else(|| {
            ConnectorError::Unauthorized(format!("missing `{SIGNATURE_HEADER}` header"))
        })?;
        let expected = webhook_signature(&self.channel_secret, req.body);
        if constant_time_eq(received.trim(), &expected) {
            Ok(())
        } else {
            Err(ConnectorError::Unauthorized(
                "X-Line-Signature does not match the body".into(),
            ))
        }
    }

    fn decode(&self, req: &InboundRequest<'_>) -> Result<LineWebhook, ConnectorError> {
        parse_webhook(req.body)
    }

    fn normalize(
        &self,
        webhook: LineWebhook,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, ConnectorError> {
        let mut skipped = Vec::new();
        let mut routable = Vec::new();
        for event in &webhook.events {
            match Self::skip_reason(event) {
                Some(reason) => skipped.push(reason),
                None => routable.push(event),
            }
        }
        let envelopes = keep_valid(
            &self.channel,
            routable
                .into_iter()
                .map(|event| self.envelope(&webhook.destination, event, received_at)),
        )?;
        if envelopes.is_empty() && !skipped.is_empty() {
            return Err(ConnectorError::Unsupported(format!(
                "nothing to route in this LINE webhook: {}",
                skipped.join(", ")
            )));
        }
        Ok(envelopes)
    }

    fn accepted(&self, _accepted: &[Accepted]) -> HttpReply {
        HttpReply::json(200, &json!({}))
    }

    fn rules(&self) -> ChannelRules {
        ChannelRules {
            reply_window: None,
            window_exempt: Vec::new(),
            max_replies_per_inbound: None,
            content_types: vec!["text", "image", "audio", "video"],
            max_text_chars: Some(MAX_TEXT_UTF16),
            downgrades: vec![
                ("card", "link"),
                ("link", "text"),
                ("location", "text"),
                ("sticker", "image"),
            ],
            captions: Captions::AsText,
            notes: "LINE push messages: no reply window, but every push counts against the \
                    channel's monthly message quota (429 'monthly limit' is rejected as \
                    monthly_limit_reached). Text up to 5000 UTF-16 code units; images, audio \
                    and videos by https URL only (a video needs its thumbnail as preview, audio \
                    its media's duration_ms). A caption is pushed as a text message after its \
                    media, in the same request. Reply tokens are not used.",
        }
    }

    async fn fetch_media(&self, media_id: &str) -> Result<MediaDownload, ConnectorError> {
        const WHAT: &str = "LINE content";
        // Message ids are numeric; a sticker's `package:sticker` id has no content to fetch.
        if media_id.is_empty() || !media_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(media::not_found(WHAT, "not a LINE message id"));
        }
        let url = format!(
            "{}/v2/bot/message/{}/content",
            self.data_api_base,
            encode_component(media_id)
        );
        let request = self.http.get(url).bearer_auth(&self.channel_access_token);
        let response = media::fetch(request, WHAT, |status, text| match status {
            400 | 404 | 410 => media::not_found(WHAT, error_text(text)),
            _ => classify_push_failure(status, None, text),
        })
        .await?;
        if response.status() == reqwest::StatusCode::ACCEPTED {
            return Err(ConnectorError::Transient(
                "LINE is still preparing this content (202); try again shortly".into(),
            ));
        }
        MediaDownload::from_response(response, MAX_FETCH_BYTES)
    }

    /// The user `line_user_id:{destination}:{userId}`: the push API takes the userId. The
    /// channel's configuration does not name its bot (`destination`), so the customer must have
    /// keys of one LINE bot only; with keys of several, which is this channel's is unknown, and
    /// there is no recipient.
    fn recipient_of(&self, identities: &[IdentityKey]) -> Option<Sender> {
        let mut line = identities.iter().filter(|k| k.kind() == IDENTITY_KIND);
        let first = line.next()?;
        if line.any(|k| k.scope() != first.scope()) {
            return None;
        }
        crate::recipient_by_key(identities, IDENTITY_KIND, Some(first.scope()), |k| {
            k.scope().to_owned()
        })
    }

    fn starts_conversations(&self) -> bool {
        true
    }

    async fn send(&self, message: &Envelope) -> Result<SendReceipt, ConnectorError> {
        let to = message.sender.external_id.trim();
        if to.is_empty() {
            return Err(ConnectorError::rejected(
                "no_recipient",
                "the outbound envelope has no LINE user id",
            ));
        }
        let body = json!({
            "to": to,
            "messages": push_messages(&message.content)?,
        });
        let response = self
            .http
            .post(format!("{}{PUSH_PATH}", self.api_base))
            .bearer_auth(&self.channel_access_token)
            .header(RETRY_KEY_HEADER, retry_key(&message.id))
            .json(&body)
            .send()
            .await
            .map_err(|e| ConnectorError::Transient(format!("LINE push failed: {e}")))?;
        let status = response.status().as_u16();
        let wait = retry_after(&response);
        let text = response
            .text()
            .await
            .map_err(|e| ConnectorError::Transient(format!("reading LINE's answer: {e}")))?;
        match status {
            // 409: a push with this retry key was accepted before (this is a retry).
            200..=299 | 409 => Ok(SendReceipt {
                channel_message_id: sent_message_id(&text),
            }),
            _ => Err(classify_push_failure(status, wait, &text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_keys_are_stable_uuid_shaped_and_distinct() {
        let id = "01JDQ3Z6X9V4T2B8N5M7K1H0GF";
        let key = retry_key(id);
        assert_eq!(key, retry_key(id));
        assert_eq!(key.len(), 36);
        assert_eq!(&key[14..15], "4", "version nibble");
        assert!(matches!(&key[19..20], "8" | "9" | "a" | "b"), "variant");
        assert_ne!(key, retry_key("01JDQ3Z6X9V4T2B8N5M7K1H0GG"));
        // Not a ULID: still a stable UUID.
        assert_eq!(retry_key("outbound-1"), retry_key("outbound-1"));
        assert_eq!(retry_key("outbound-1").len(), 36);
    }

    #[test]
    fn error_bodies_read_message_and_details() {
        assert_eq!(
            error_text(
                r#"{"message":"The request body has 1 error(s)","details":[{"message":"May not be empty","property":"messages[0].text"}]}"#
            ),
            "The request body has 1 error(s) (messages[0].text: May not be empty)"
        );
        assert_eq!(error_text("oops"), "oops");
    }

    #[test]
    fn out_of_range_timestamps_fall_back_to_received_at() {
        let received = DateTime::from_timestamp(1_795_510_800, 0).unwrap_or_default();
        assert_eq!(sent_at(Some(-1), received), received);
        assert_eq!(sent_at(Some(i64::MAX), received), received);
        assert_eq!(sent_at(None, received), received);
        assert_eq!(
            sent_at(Some(1_795_510_799_500), received).timestamp_millis(),
            1_795_510_799_500
        );
    }
}
