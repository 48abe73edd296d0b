//! Telegram (kind `telegram`): a bot's webhook updates in, replies through the Bot API out.
//!
//! * **Webhook** (core.telegram.org/bots/api#setwebhook): the bot is registered with
//!   `setWebhook(url, secret_token)`; Telegram then POSTs every update as JSON with the header
//!   `X-Telegram-Bot-Api-Secret-Token` equal to `secret_token` (1–256 characters of
//!   `[A-Za-z0-9_-]`). There is no body signature and no handshake: the header is compared with
//!   the configured token in constant time. A non-2xx answer makes Telegram retry the same
//!   update ("a reasonable number of attempts").
//! * **Updates**: `{update_id, message | edited_message | channel_post | callback_query | …}`.
//!   Only `message` is routed, and only from a private chat (`chat.type == "private"`) with a
//!   user who is not a bot; every other update answers 200 and is not routed (`Unsupported`).
//!   Ids are 64-bit integers (read as `i64`, never as floats); `date` is in seconds.
//! * **Dedupe**: `telegram:{bot id}:{update_id}`, where the bot id is the numeric part of the
//!   bot token before `:` (the secret part never leaves the connector).
//! * **Captions**: a photo's, video's, animation's, document's, audio's or voice message's
//!   `caption` is the content's `caption`; replies send it as `caption` (0–1024 characters).
//! * **Reply**: `POST {api_base}/bot{token}/sendMessage` `{"chat_id", "text"}` (in a private
//!   chat the chat id is the user id); images, audio, video and files by URL (or by a Telegram
//!   `file_id`) through `sendPhoto`/`sendAudio`/`sendVideo`/`sendDocument`; a document by URL
//!   that is not a GIF, PDF or ZIP (the only types `sendDocument` fetches) is downloaded and
//!   uploaded as multipart `document` (up to 50 MB). Errors are
//!   `{"ok": false, "error_code", "description", "parameters": {"retry_after"}}`.
//!
//! * **Media a customer sent** ([`Connector::fetch_media`], core.telegram.org/bots/api#getfile):
//!   `getFile {"file_id"}` answers `result.file_path`, then `GET {api_base}/file/bot{token}/
//!   {file_path}` is the file. Bots may download files of up to 20 MB; getFile refuses bigger
//!   ones ("file is too big": `media_too_large`) and unknown ids (`media_not_found`).
//!
//! The URL of every Bot API call contains the bot token: errors are built without it
//! ([`reqwest::Error::without_url`]) and every message is passed through a redaction of the
//! token before it leaves this module.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::{ChannelRef, Content, Envelope, Media, Sender};
use switchyard_core::identity::IdentityKey;
use switchyard_core::store::Store;

use crate::api::retry_after;
use crate::caption::within_limit;
use crate::media::{self, MediaDownload, Multipart};
use crate::rules::{Captions, ChannelRules};
use crate::signature::constant_time_eq;
use crate::token_cache::base_url;
use crate::{
    Accepted, Connector, ConnectorContext, ConnectorError, EnvelopeSink, HttpReply, InboundRequest,
    RawPolicy, SendReceipt, take_raw_entry,
};

/// Connector kind.
pub const KIND: &str = "telegram";
/// Configuration keys besides the common ones.
pub const KEYS: &[&str] = &["bot_token", "secret_token", "quote_replies"];
/// The Bot API host.
pub const DEFAULT_API_BASE: &str = "https://api.telegram.org";
/// Header carrying the webhook's secret token.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";
/// Longest message text Telegram accepts (`sendMessage`: 1–4096 characters).
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest media caption Telegram accepts (0–1024 characters).
pub const MAX_CAPTION_CHARS: usize = 1024;
/// Largest file a bot may download (getFile).
pub const MAX_DOWNLOAD_BYTES: u64 = 20 * 1024 * 1024;
/// Largest file a bot may upload (Bot API "Sending files": 50 MB for other files).
pub const MAX_UPLOAD_BYTES: usize = 50 * 1024 * 1024;
/// The only file types `sendDocument` fetches by URL (Bot API: "sending by URL will currently
/// only work for GIF, PDF and ZIP files"); a document of another type is uploaded.
const DOCUMENT_URL_TYPES: [(&str, &str); 3] = [
    (".gif", "image/gif"),
    (".pdf", "application/pdf"),
    (".zip", "application/zip"),
];
/// Longest webhook secret token Telegram accepts.
pub const MAX_SECRET_TOKEN_CHARS: usize = 256;
/// Key (inside `raw`) under which `normalize` hands the quoted message to `deliver`, which
/// removes it before publishing.
const REPLY_CONTEXT_KEY: &str = "_telegram_reply_context";
/// How long the Telegram message behind an inbound envelope is remembered for quoting it.
/// Telegram has no reply window; this only bounds the store.
const REPLY_CONTEXT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The update kinds of the Bot API's `Update` table, in its order: an update carries one of
/// them (the name says what was not routed).
const UPDATE_KINDS: &[&str] = &[
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "message_reaction",
    "message_reaction_count",
    "inline_query",
    "chosen_inline_result",
    "callback_query",
    "shipping_query",
    "pre_checkout_query",
    "purchased_paid_media",
    "poll",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
];
/// `Message` fields that describe the message rather than being its content: the first field
/// not listed here names a message type this connector does not map.
const MESSAGE_METADATA: &[&str] = &[
    "message_id",
    "message_thread_id",
    "direct_messages_topic",
    "from",
    "sender_chat",
    "sender_boost_count",
    "sender_business_bot",
    "date",
    "business_connection_id",
    "chat",
    "forward_origin",
    "is_topic_message",
    "is_automatic_forward",
    "reply_to_message",
    "external_reply",
    "quote",
    "reply_to_story",
    "reply_to_checklist_task_id",
    "via_bot",
    "edit_date",
    "has_protected_content",
    "is_from_offline",
    "is_paid_post",
    "media_group_id",
    "author_signature",
    "paid_star_count",
    "entities",
    "caption",
    "caption_entities",
    "link_preview_options",
    "suggested_post_info",
    "effect_id",
    "show_caption_above_media",
    "has_media_spoiler",
    "reply_markup",
];

/// Whether `token` is a valid webhook secret token: 1–256 characters of `[A-Za-z0-9_-]`.
pub fn is_valid_secret_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_SECRET_TOKEN_CHARS
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The bot id of a bot token `{bot id}:{secret}` (the part before `:`, digits only), if the
/// token has that shape.
pub fn bot_id_of(bot_token: &str) -> Option<&str> {
    let (id, secret) = bot_token.split_once(':')?;
    let id_ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
    let secret_ok = !secret.is_empty()
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (id_ok && secret_ok).then_some(id)
}

/// A verified, parsed webhook update.
#[derive(Debug, Clone, PartialEq)]
pub struct TelegramUpdate {
    /// `update_id` (increasing; stable across Telegram's retries).
    pub update_id: i64,
    /// What kind of update it is: the name of its one optional field (`message`,
    /// `edited_message`, `callback_query`, ...); `unknown` when it has none.
    pub kind: String,
    /// The message, for a `message` update.
    pub message: Option<Message>,
    /// A message type this connector does not map, named by its first content field.
    pub unmapped_type: Option<String>,
    /// The update as sent, kept by `decode` only when the channel keeps raw ([`RawPolicy`]).
    pub raw: Option<Map<String, Value>>,
}

/// A Telegram `Message` (the fields this connector reads).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    /// Unique in its chat.
    pub message_id: i64,
    /// The sender (absent for messages sent on behalf of chats).
    #[serde(default)]
    pub from: Option<User>,
    /// The chat it belongs to.
    pub chat: Chat,
    /// When it was sent, Unix seconds.
    pub date: i64,
    /// Text of a text message.
    #[serde(default)]
    pub text: Option<String>,
    /// Caption of a media message.
    #[serde(default)]
    pub caption: Option<String>,
    /// A photo, in every size Telegram made of it.
    #[serde(default)]
    pub photo: Option<Vec<PhotoSize>>,
    /// A general file.
    #[serde(default)]
    pub document: Option<TelegramFile>,
    /// An audio file (music).
    #[serde(default)]
    pub audio: Option<TelegramFile>,
    /// A voice message.
    #[serde(default)]
    pub voice: Option<TelegramFile>,
    /// A video.
    #[serde(default)]
    pub video: Option<TelegramFile>,
    /// A round video message.
    #[serde(default)]
    pub video_note: Option<TelegramFile>,
    /// A sticker.
    #[serde(default)]
    pub sticker: Option<TelegramFile>,
    /// A GIF or silent H.264 video (Telegram also sets `document` for it).
    #[serde(default)]
    pub animation: Option<TelegramFile>,
    /// A point on the map.
    #[serde(default)]
    pub location: Option<Location>,
    /// A venue (Telegram also sets `location` for it).
    #[serde(default)]
    pub venue: Option<Venue>,
    /// A shared contact.
    #[serde(default)]
    pub contact: Option<Contact>,
}

/// A Telegram `User`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    /// 64-bit user id (at most 52 significant bits today).
    pub id: i64,
    /// Whether the user is a bot.
    #[serde(default)]
    pub is_bot: bool,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// `@username` without the `@`.
    #[serde(default)]
    pub username: Option<String>,
}

/// A Telegram `Chat`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Chat {
    /// 64-bit chat id (negative for groups).
    pub id: i64,
    /// `private`, `group`, `supergroup` or `channel`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// One size of a photo.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PhotoSize {
    /// The file id (valid for this bot).
    pub file_id: String,
    /// Width in pixels.
    #[serde(default)]
    pub width: Option<u64>,
    /// Height in pixels.
    #[serde(default)]
    pub height: Option<u64>,
    /// Size in bytes.
    #[serde(default)]
    pub file_size: Option<u64>,
}

/// The common fields of Telegram's file objects (`Document`, `Audio`, `Voice`, `Video`,
/// `VideoNote`, `Sticker`, `Animation`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TelegramFile {
    /// The file id (valid for this bot).
    pub file_id: String,
    /// File name as the sender gave it.
    #[serde(default)]
    pub file_name: Option<String>,
    /// MIME type as the sender gave it.
    #[serde(default)]
    pub mime_type: Option<String>,
    /// Size in bytes.
    #[serde(default)]
    pub file_size: Option<u64>,
    /// Playing time in seconds (`Audio`, `Voice`, `Video`, `VideoNote`, `Animation`).
    #[serde(default)]
    pub duration: Option<u64>,
    /// Thumbnail.
    #[serde(default)]
    pub thumbnail: Option<PhotoSize>,
}

/// A point on the map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Location {
    /// Latitude in degrees.
    pub latitude: f64,
    /// Longitude in degrees.
    pub longitude: f64,
}

/// A venue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Venue {
    /// Where it is.
    pub location: Location,
    /// Its name.
    #[serde(default)]
    pub title: Option<String>,
    /// Its address.
    #[serde(default)]
    pub address: Option<String>,
}

/// A shared contact.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Contact {
    /// Phone number as shared.
    pub phone_number: String,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// The contact's Telegram user id, if it is a Telegram user.
    #[serde(default)]
    pub user_id: Option<i64>,
    /// vCard.
    #[serde(default)]
    pub vcard: Option<String>,
}

/// The Telegram message an inbound envelope came from (kept by `deliver` so a reply can quote
/// it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyContext {
    /// The chat (for a private chat: the user id).
    pub chat_id: i64,
    /// The customer's message.
    pub message_id: i64,
}

fn malformed(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Malformed(e.to_string())
}

/// Parses a webhook body into an update: its id, its kind and, for `message`, the message.
pub fn parse_update(body: &[u8]) -> Result<TelegramUpdate, ConnectorError> {
    update_of(read_update(body)?)
}

/// The JSON of a Telegram update.
fn read_update(body: &[u8]) -> Result<Value, ConnectorError> {
    serde_json::from_slice(body)
        .map_err(|e| malformed(format!("invalid Telegram update JSON: {e}")))
}

/// [`parse_update`] of a body already read as JSON.
fn update_of(value: Value) -> Result<TelegramUpdate, ConnectorError> {
    let Value::Object(mut update) = value else {
        return Err(malformed("a Telegram update must be a JSON object"));
    };
    let update_id = update
        .get("update_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| malformed("update without an integer update_id"))?;
    let kind = UPDATE_KINDS
        .iter()
        .find(|k| update.contains_key(**k))
        .map(|k| (*k).to_owned())
        .or_else(|| update.keys().filter(|k| *k != "update_id").min().cloned())
        .unwrap_or_else(|| "unknown".to_owned());
    if kind != "message" {
        return Ok(TelegramUpdate {
            update_id,
            kind,
            message: None,
            unmapped_type: None,
            raw: None,
        });
    }
    let raw_message = update.remove("message").unwrap_or(Value::Null);
    let unmapped_type = raw_message.as_object().and_then(first_content_field);
    let message: Message = serde_json::from_value(raw_message)
        .map_err(|e| malformed(format!("invalid Telegram message: {e}")))?;
    Ok(TelegramUpdate {
        update_id,
        kind,
        message: Some(message),
        unmapped_type,
        raw: None,
    })
}

/// The alphabetically first field of a message that is not metadata: the name of its type
/// when the connector maps none of its fields.
fn first_content_field(message: &Map<String, Value>) -> Option<String> {
    message
        .keys()
        .filter(|k| !MESSAGE_METADATA.contains(&k.as_str()))
        .min()
        .cloned()
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn media_of(file_id: &str, mime: Option<&str>, size: Option<u64>) -> Media {
    Media {
        media_id: non_empty(Some(file_id)),
        mime: non_empty(mime),
        size,
        ..Media::default()
    }
}

fn file_media(file: &TelegramFile) -> Media {
    Media {
        duration_ms: file.duration.map(|secs| secs.saturating_mul(1000)),
        ..media_of(&file.file_id, file.mime_type.as_deref(), file.file_size)
    }
}

fn thumbnail_of(file: &TelegramFile) -> Option<Media> {
    file.thumbnail
        .as_ref()
        .map(|t| media_of(&t.file_id, None, t.file_size))
        .filter(|m| m.media_id.is_some())
}

/// The largest size of a photo (by pixels, then bytes; the last of equals).
fn largest_photo(sizes: &[PhotoSize]) -> Option<&PhotoSize> {
    sizes.iter().max_by_key(|p| {
        (
            p.width.unwrap_or(0).saturating_mul(p.height.unwrap_or(0)),
            p.file_size.unwrap_or(0),
        )
    })
}

fn full_name(first: Option<&str>, last: Option<&str>) -> Option<String> {
    let parts: Vec<String> = [non_empty(first), non_empty(last)]
        .into_iter()
        .flatten()
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// The customer's display name: first and last name, else `@username`.
fn display_name(user: &User) -> Option<String> {
    full_name(user.first_name.as_deref(), user.last_name.as_deref())
        .or_else(|| non_empty(user.username.as_deref()).map(|u| format!("@{u}")))
}

/// The content of a message, in the order the checks matter (`animation` before `document`,
/// `venue` before `location`, as Telegram sets both), with the message's caption on media.
fn message_content(
    message: &Message,
    unmapped_type: Option<&str>,
) -> Result<Content, ConnectorError> {
    if let Some(text) = &message.text {
        if text.is_empty() {
            return Err(malformed("text message without text"));
        }
        return Ok(Content::Text { text: text.clone() });
    }
    let caption = || non_empty(message.caption.as_deref());
    if let Some(sizes) = &message.photo {
        let largest =
            largest_photo(sizes).ok_or_else(|| malformed("photo message without any size"))?;
        return Ok(Content::Image {
            media: media_of(&largest.file_id, None, largest.file_size),
            caption: caption(),
        });
    }
    if let Some(animation) = &message.animation {
        return Ok(Content::Video {
            media: file_media(animation),
            thumbnail: thumbnail_of(animation),
            caption: caption(),
        });
    }
    if let Some(document) = &message.document {
        return Ok(Content::File {
            media: file_media(document),
            name: non_empty(document.file_name.as_deref()),
            caption: caption(),
        });
    }
    if let Some(audio) = message.audio.as_ref().or(message.voice.as_ref()) {
        return Ok(Content::Audio {
            media: file_media(audio),
            recognition: None,
            caption: caption(),
        });
    }
    if let Some(video) = message.video.as_ref().or(message.video_note.as_ref()) {
        return Ok(Content::Video {
            media: file_media(video),
            thumbnail: thumbnail_of(video),
            caption: caption(),
        });
    }
    if let Some(sticker) = &message.sticker {
        return Ok(Content::Sticker {
            media: file_media(sticker),
        });
    }
    if let Some(venue) = &message.venue {
        let label: Vec<String> = [
            non_empty(venue.title.as_deref()),
            non_empty(venue.address.as_deref()),
        ]
        .into_iter()
        .flatten()
        .collect();
        return Ok(Content::Location {
            latitude: venue.location.latitude,
            longitude: venue.location.longitude,
            label: (!label.is_empty()).then(|| label.join(", ")),
        });
    }
    if let Some(location) = &message.location {
        return Ok(Content::Location {
            latitude: location.latitude,
            longitude: location.longitude,
            label: None,
        });
    }
    if let Some(contact) = &message.contact {
        let mut attributes = Map::new();
        attributes.insert(
            "phone_number".into(),
            Value::String(contact.phone_number.clone()),
        );
        for (key, value) in [
            ("first_name", &contact.first_name),
            ("last_name", &contact.last_name),
            ("vcard", &contact.vcard),
        ] {
            if let Some(v) = non_empty(value.as_deref()) {
                attributes.insert(key.into(), Value::String(v));
            }
        }
        if let Some(user_id) = contact.user_id {
            attributes.insert("user_id".into(), Value::from(user_id));
        }
        let title = full_name(contact.first_name.as_deref(), contact.last_name.as_deref())
            .unwrap_or_else(|| contact.phone_number.clone());
        return Ok(Content::Card {
            title,
            url: None,
            thumbnail: None,
            attributes,
        });
    }
    Ok(Content::Unsupported {
        original_type: unmapped_type.unwrap_or("unknown").to_owned(),
    })
}

/// The Telegram connector.
pub struct TelegramConnector {
    channel: ChannelRef,
    bot_token: String,
    bot_id: String,
    secret_token: String,
    api_base: String,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    /// `quote_replies`: a reply quotes the customer's message it answers.
    quote_replies: bool,
    raw: RawPolicy,
}

impl std::fmt::Debug for TelegramConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramConnector")
            .field("channel", &self.channel)
            .field("bot_id", &self.bot_id)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl TelegramConnector {
    /// Builds the connector from its `[[channels]]` entry.
    pub fn new(settings: &ChannelSettings, ctx: &ConnectorContext) -> Result<Self, ConnectorError> {
        let bot_token = settings.required_secret("bot_token")?;
        let bot_token = bot_token.trim().to_owned();
        let bot_id = bot_id_of(&bot_token)
            .ok_or_else(|| {
                ConnectorError::Config(format!(
                    "channels.{}.bot_token must be the token BotFather gave: `<bot id>:<secret>` \
                     (digits, a colon, then letters, digits, `_` or `-`)",
                    settings.id
                ))
            })?
            .to_owned();
        let secret_token = settings.required_secret("secret_token")?;
        if !is_valid_secret_token(&secret_token) {
            return Err(ConnectorError::Config(format!(
                "channels.{}.secret_token must be 1 to {MAX_SECRET_TOKEN_CHARS} characters of \
                 A-Z, a-z, 0-9, `_` and `-` (what setWebhook accepts)",
                settings.id
            )));
        }
        Ok(TelegramConnector {
            channel: ChannelRef {
                kind: KIND.to_owned(),
                id: settings.id.clone(),
            },
            bot_token,
            bot_id,
            secret_token,
            api_base: base_url(settings.api_base.as_deref(), DEFAULT_API_BASE),
            http: ctx.http.clone(),
            store: Arc::clone(&ctx.store),
            quote_replies: settings.flag("quote_replies")?,
            raw: RawPolicy::from_settings(settings)?,
        })
    }

    /// The bot's numeric id (the public part of its token).
    pub fn bot_id(&self) -> &str {
        &self.bot_id
    }

    /// The identity key of a Telegram user: `telegram_user_id::{user id}`.
    pub fn customer_key(user_id: i64) -> Result<IdentityKey, ConnectorError> {
        IdentityKey::new("telegram_user_id", "", &user_id.to_string()).map_err(malformed)
    }

    /// `text` with the bot token (and its secret part) replaced, for error messages.
    fn redact(&self, text: impl Into<String>) -> String {
        let mut text = text.into();
        if !self.bot_token.is_empty() {
            text = text.replace(&self.bot_token, "<bot token>");
        }
        if let Some((_, secret)) = self.bot_token.split_once(':')
            && secret.len() >= 8
        {
            text = text.replace(secret, "<bot token>");
        }
        text
    }

    fn reply_key(&self, envelope_id: &str) -> String {
        format!("telegram:{}:reply:{envelope_id}", self.channel.id)
    }

    /// The Telegram message `message` answers, if its `reply_to` envelope came from this chat
    /// and is still remembered. A store failure only costs the quote.
    async fn reply_context(&self, message: &Envelope, chat_id: i64) -> Option<ReplyContext> {
        let id = message.reply_to.as_deref()?;
        match self.store.get_key(&self.reply_key(id)).await {
            Ok(Some(raw)) => serde_json::from_str::<ReplyContext>(&raw)
                .ok()
                .filter(|ctx| ctx.chat_id == chat_id),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "reply context lookup failed; sending without a quote");
                None
            }
        }
    }

    fn envelope(
        &self,
        user: &User,
        sent_at: DateTime<Utc>,
        received_at: DateTime<Utc>,
        dedupe_key: String,
        content: Content,
        reply: ReplyContext,
    ) -> Result<Envelope, ConnectorError> {
        let reply = serde_json::to_value(reply).map_err(malformed)?;
        Ok(Envelope {
            raw: Some(json!({ REPLY_CONTEXT_KEY: reply })),
            ..Envelope::inbound(
                self.channel.clone(),
                Sender {
                    external_id: user.id.to_string(),
                    scope: String::new(),
                    display_name: display_name(user),
                    identities: vec![Self::customer_key(user.id)?],
                },
                content,
                dedupe_key,
                sent_at,
                received_at,
            )
        })
    }

    /// The Bot API method and body that deliver `content` to `chat_id`.
    fn request_for(
        &self,
        chat_id: i64,
        content: &Content,
    ) -> Result<(&'static str, Value), ConnectorError> {
        let by_reference = |method: &'static str, field: &str, media: &Media| {
            let reference = media_reference(media)?;
            let mut body = Map::new();
            body.insert("chat_id".into(), Value::from(chat_id));
            body.insert(field.into(), Value::String(reference));
            if let Some(caption) = content.caption() {
                let caption = within_limit(caption, MAX_CAPTION_CHARS, "Telegram")?;
                body.insert("caption".into(), Value::String(caption.to_owned()));
            }
            // Whole seconds, as the Bot API takes them; a part second counts as one.
            if let Some(ms) = media
                .duration_ms
                .filter(|_| matches!(method, "sendAudio" | "sendVideo"))
            {
                body.insert("duration".into(), Value::from(ms.div_ceil(1000)));
            }
            Ok::<_, ConnectorError>((method, Value::Object(body)))
        };
        match content {
            Content::Text { text } => {
                if text.trim().is_empty() {
                    return Err(ConnectorError::rejected(
                        "empty_text",
                        "Telegram does not send empty messages",
                    ));
                }
                let chars = text.chars().count();
                if chars > MAX_TEXT_CHARS {
                    return Err(ConnectorError::rejected(
                        "text_too_long",
                        format!("text has {chars} characters; Telegram allows {MAX_TEXT_CHARS}"),
                    ));
                }
                Ok(("sendMessage", json!({ "chat_id": chat_id, "text": text })))
            }
            Content::Image { media, .. } => by_reference("sendPhoto", "photo", media),
            Content::Audio { media, .. } => by_reference("sendAudio", "audio", media),
            Content::Video { media, .. } => by_reference("sendVideo", "video", media),
            Content::File { media, .. } => by_reference("sendDocument", "document", media),
            other => Err(ConnectorError::rejected(
                "content_unsupported",
                format!(
                    "the Telegram connector sends text, image, audio, video and file, not {}",
                    other.type_name()
                ),
            )),
        }
    }

    /// `POST {api_base}/bot{token}/{method}` with a JSON body; the sent message's id.
    async fn call(&self, method: &str, body: &Value) -> Result<SendReceipt, ConnectorError> {
        Ok(receipt_of(&self.call_result(method, body).await?))
    }

    /// `sendDocument` of a file Telegram will not fetch by URL (see [`DOCUMENT_URL_TYPES`]):
    /// downloads `url` (at most [`MAX_UPLOAD_BYTES`]) and uploads it as the `document` part of
    /// a multipart request, with the other fields of `body` (the JSON request) as plain fields.
    async fn upload_document(
        &self,
        url: &str,
        name: Option<&str>,
        body: &Value,
    ) -> Result<SendReceipt, ConnectorError> {
        let file = media::download(&self.http, url, MAX_UPLOAD_BYTES).await?;
        let mime = file
            .served_mime
            .clone()
            .or_else(|| media::sniff_mime(&file.bytes).map(str::to_owned))
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let filename = name
            .map(str::to_owned)
            .or_else(|| media::url_file_name(url))
            .unwrap_or_else(|| format!("file.{}", media::extension(&mime)));
        let fields: Vec<(&str, String)> = body
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| key.as_str() != "document")
            .map(|(key, value)| {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (key.as_str(), text)
            })
            .collect();
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let form = Multipart::fields_and_file(&fields, "document", &filename, &mime, &file.bytes);
        let url = format!("{}/bot{}/sendDocument", self.api_base, self.bot_token);
        let answer = self
            .answer_of("sendDocument", form.apply(self.http.post(url)))
            .await?;
        Ok(receipt_of(&answer))
    }

    /// `POST {api_base}/bot{token}/{method}` with a JSON body; the answer's `result`.
    async fn call_result(&self, method: &str, body: &Value) -> Result<Value, ConnectorError> {
        let url = format!("{}/bot{}/{method}", self.api_base, self.bot_token);
        self.answer_of(method, self.http.post(url).json(body)).await
    }

    /// Sends a Bot API `request` for `method`; the answer's `result`, or the classified error.
    async fn answer_of(
        &self,
        method: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, ConnectorError> {
        let response = request.send().await.map_err(|e| {
            ConnectorError::Transient(
                self.redact(format!("Telegram {method} failed: {}", e.without_url())),
            )
        })?;
        let status = response.status().as_u16();
        let header_retry_after = retry_after(&response);
        let text = response.text().await.map_err(|e| {
            ConnectorError::Transient(self.redact(format!(
                "reading Telegram's {method} answer: {}",
                e.without_url()
            )))
        })?;
        let mut answer: Option<Value> = serde_json::from_str(&text).ok();
        let ok = answer
            .as_ref()
            .and_then(|a| a.get("ok"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if (200..300).contains(&status) && ok {
            return Ok(answer
                .as_mut()
                .and_then(|a| a.get_mut("result"))
                .map(Value::take)
                .unwrap_or(Value::Null));
        }
        Err(self.classify(method, status, answer.as_ref(), &text, header_retry_after))
    }

    /// The file behind a `file_id` (see the module documentation).
    async fn download_file(&self, file_id: &str) -> Result<MediaDownload, ConnectorError> {
        let file = self
            .call_result("getFile", &json!({ "file_id": file_id }))
            .await
            .map_err(|e| match e {
                ConnectorError::Rejected { code, message } if code == "bad_request" => {
                    if message.to_ascii_lowercase().contains("too big") {
                        media::too_large(MAX_DOWNLOAD_BYTES)
                    } else {
                        media::not_found("Telegram getFile", message)
                    }
                }
                other => other,
            })?;
        let path = file
            .get("file_path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| media::not_found("Telegram getFile", "no file_path in the answer"))?;
        let url = format!("{}/file/bot{}/{path}", self.api_base, self.bot_token);
        let response = media::fetch(
            self.http.get(url),
            "Telegram file download",
            |status, text| match status {
                401 => self.classify("file download", status, None, text, None),
                _ => media::not_found(
                    "Telegram file download",
                    self.redact(format!("HTTP {status}")),
                ),
            },
        )
        .await
        .map_err(|e| match e {
            ConnectorError::Transient(m) => ConnectorError::Transient(self.redact(m)),
            other => other,
        })?;
        MediaDownload::from_response(response, MAX_DOWNLOAD_BYTES)
    }

    /// Classifies a refused Bot API call by its `error_code` (else the HTTP status).
    fn classify(
        &self,
        method: &str,
        status: u16,
        answer: Option<&Value>,
        text: &str,
        header_retry_after: Option<Duration>,
    ) -> ConnectorError {
        let code = answer
            .and_then(|a| a.get("error_code"))
            .and_then(Value::as_i64)
            .unwrap_or(i64::from(status));
        let description = self.redact(
            answer
                .and_then(|a| a.get("description"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| text.chars().take(200).collect()),
        );
        match code {
            429 => ConnectorError::RateLimited {
                retry_after: answer
                    .and_then(|a| a.pointer("/parameters/retry_after"))
                    .and_then(Value::as_u64)
                    .map(Duration::from_secs)
                    .or(header_retry_after),
            },
            401 | 404 => ConnectorError::rejected(
                "bot_token_invalid",
                format!(
                    "Telegram refused the bot token of channel `{}` ({code} {description}); check \
                     channels.{}.bot_token",
                    self.channel.id, self.channel.id
                ),
            ),
            403 => {
                let lower = description.to_ascii_lowercase();
                let reason = if lower.contains("blocked") {
                    "bot_blocked"
                } else if lower.contains("deactivated") {
                    "user_deactivated"
                } else {
                    "forbidden"
                };
                ConnectorError::rejected(reason, description)
            }
            400 => ConnectorError::rejected("bad_request", description),
            c @ 402..=499 => ConnectorError::rejected(format!("telegram_{c}"), description),
            _ => ConnectorError::Transient(format!(
                "Telegram {method} answered HTTP {status} (error {code}): {description}"
            )),
        }
    }
}

/// How a media object is given to the Bot API: its `http(s)` URL, else its Telegram `file_id`.
/// The receipt of a sent message: its `message_id`.
fn receipt_of(sent: &Value) -> SendReceipt {
    SendReceipt {
        channel_message_id: sent
            .get("message_id")
            .and_then(Value::as_i64)
            .map(|id| id.to_string()),
    }
}

/// Whether `sendDocument` fetches a document at `url` itself: a GIF, PDF or ZIP, by the URL's
/// path or the declared `mime`.
fn fetched_by_url(url: &str, mime: Option<&str>) -> bool {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    DOCUMENT_URL_TYPES.iter().any(|(extension, type_)| {
        path.ends_with(extension) || mime.is_some_and(|m| m.eq_ignore_ascii_case(type_))
    })
}

fn media_reference(media: &Media) -> Result<String, ConnectorError> {
    if let Some(url) = media
        .url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(ConnectorError::rejected(
                "media_url_invalid",
                "Telegram fetches media by http(s) URL only",
            ));
        }
        return Ok(url.to_owned());
    }
    non_empty(media.media_id.as_deref()).ok_or_else(|| {
        ConnectorError::rejected("no_media", "media has neither a url nor a media_id")
    })
}

#[async_trait]
impl Connector for TelegramConnector {
    type Inbound = TelegramUpdate;

    fn channel(&self) -> &ChannelRef {
        &self.channel
    }

    fn verify(&self, req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
        let received = req.header(SECRET_HEADER).ok_or_else(|| {
            ConnectorError::Unauthorized("missing `X-Telegram-Bot-Api-Secret-Token` header".into())
        })?;
        if constant_time_eq(received, &self.secret_token) {
            Ok(())
        } else {
            Err(ConnectorError::Unauthorized(
                "X-Telegram-Bot-Api-Secret-Token does not match the channel's secret_token".into(),
            ))
        }
    }

    fn decode(&self, req: &InboundRequest<'_>) -> Result<TelegramUpdate, ConnectorError> {
        // Read once: the kept payload is a copy of the JSON, not a second parse of the bytes.
        let value = read_update(req.body)?;
        let raw = self.raw.capture(|| value.as_object().cloned());
        let mut update = update_of(value)?;
        update.raw = raw;
        Ok(update)
    }

    fn normalize(
        &self,
        update: TelegramUpdate,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, ConnectorError> {
        let Some(message) = update.message else {
            return Err(ConnectorError::Unsupported(format!(
                "Telegram `{}` updates are not routed",
                update.kind
            )));
        };
        if message.chat.kind != "private" {
            return Err(ConnectorError::Unsupported(format!(
                "messages in `{}` chats are not routed (only private chats)",
                message.chat.kind
            )));
        }
        let Some(user) = &message.from else {
            return Err(ConnectorError::Unsupported(
                "a message without a sender is not routed".into(),
            ));
        };
        if user.is_bot {
            return Err(ConnectorError::Unsupported(
                "messages from bots are not routed".into(),
            ));
        }
        let content = message_content(&message, update.unmapped_type.as_deref())?;
        let sent_at = switchyard_core::time::from_unix_secs(message.date).unwrap_or(received_at);
        let reply = ReplyContext {
            chat_id: message.chat.id,
            message_id: message.message_id,
        };
        let dedupe_key = format!("{KIND}:{}:{}", self.bot_id, update.update_id);
        // A caption the content cannot hold (on a message type that is not mapped) follows as
        // text, so that the customer's words are not lost.
        let stray_caption = match &content {
            Content::Text { .. }
            | Content::Image { .. }
            | Content::Audio { .. }
            | Content::Video { .. }
            | Content::File { .. } => None,
            _ => non_empty(message.caption.as_deref()),
        };
        let mut envelopes = vec![self.envelope(
            user,
            sent_at,
            received_at,
            dedupe_key.clone(),
            content,
            reply,
        )?];
        if let Some(caption) = stray_caption {
            envelopes.push(self.envelope(
                user,
                sent_at,
                received_at,
                format!("{dedupe_key}:caption"),
                Content::Text { text: caption },
                reply,
            )?);
        }
        self.raw.attach(&mut envelopes, || update.raw);
        Ok(envelopes)
    }

    async fn deliver(
        &self,
        mut envelopes: Vec<Envelope>,
        sink: &dyn EnvelopeSink,
    ) -> Result<Vec<Accepted>, ConnectorError> {
        for envelope in &mut envelopes {
            let context = take_raw_entry(envelope, REPLY_CONTEXT_KEY);
            let Some(context) = context.filter(|_| self.quote_replies) else {
                continue;
            };
            let stored = self
                .store
                .set_key(
                    &self.reply_key(&envelope.id),
                    &context.to_string(),
                    REPLY_CONTEXT_TTL,
                )
                .await;
            if let Err(e) = stored {
                // Only the quote in a later reply is lost; the message itself goes on.
                tracing::warn!(error = %e, channel = %self.channel.id,
                    "could not keep a Telegram reply context");
            }
        }
        sink.publish(envelopes).await
    }

    fn accepted(&self, _accepted: &[Accepted]) -> HttpReply {
        // Any 2xx stops Telegram's retries; an empty body asks the Bot API for nothing.
        HttpReply::text(200, "")
    }

    fn rules(&self) -> ChannelRules {
        ChannelRules {
            reply_window: None,
            window_exempt: Vec::new(),
            max_replies_per_inbound: None,
            content_types: vec!["text", "image", "audio", "video", "file"],
            max_text_chars: Some(MAX_TEXT_CHARS),
            downgrades: vec![
                ("card", "link"),
                ("link", "text"),
                ("location", "text"),
                ("sticker", "image"),
            ],
            captions: Captions::OnMedia {
                max_chars: Some(MAX_CAPTION_CHARS),
            },
            notes: "Telegram bots: no reply window and no reply quota (about 1 message per \
                    second per chat); text up to 4096 characters, captions of media up to \
                    1024; images, audio (MP3/M4A), \
                    video and files by http(s) URL (Telegram fetches them: photos up to 5 MB, \
                    other files up to 20 MB; sendDocument by URL takes GIF, PDF and ZIP only, \
                    so other documents are downloaded and uploaded, up to 50 MB) \
                    or by a Telegram file_id; a user who blocked the bot cannot be written to.",
        }
    }

    async fn fetch_media(&self, media_id: &str) -> Result<MediaDownload, ConnectorError> {
        self.download_file(media_id).await
    }

    /// The user `telegram_user_id::{id}`: their private chat with the bot has the user's id.
    /// (The bot can write only to users who started it; others make the send fail.)
    fn recipient_of(&self, identities: &[IdentityKey]) -> Option<Sender> {
        let numeric: Vec<IdentityKey> = identities
            .iter()
            .filter(|k| k.value().parse::<i64>().is_ok())
            .cloned()
            .collect();
        crate::recipient_by_key(&numeric, "telegram_user_id", Some(""), |_| String::new())
    }

    fn starts_conversations(&self) -> bool {
        true
    }

    async fn send(&self, message: &Envelope) -> Result<SendReceipt, ConnectorError> {
        let chat_id: i64 = message.sender.external_id.parse().map_err(|_| {
            ConnectorError::rejected(
                "recipient_invalid",
                format!("`{}` is not a Telegram user id", message.sender.external_id),
            )
        })?;
        let (method, mut body) = self.request_for(chat_id, &message.content)?;
        if self.quote_replies
            && let Some(ctx) = self.reply_context(message, chat_id).await
            && let Some(obj) = body.as_object_mut()
        {
            obj.insert(
                "reply_parameters".into(),
                json!({ "message_id": ctx.message_id, "allow_sending_without_reply": true }),
            );
        }
        if let Content::File { media, name, .. } = &message.content
            && let Some(url) = media.url.as_deref()
            && !fetched_by_url(url, media.mime.as_deref())
        {
            return self.upload_document(url, name.as_deref(), &body).await;
        }
        self.call(method, &body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_tokens_follow_set_webhook() {
        assert!(is_valid_secret_token("abc_DEF-123"));
        assert!(is_valid_secret_token(&"a".repeat(256)));
        assert!(!is_valid_secret_token(""));
        assert!(!is_valid_secret_token(&"a".repeat(257)));
        assert!(!is_valid_secret_token("has space"));
        assert!(!is_valid_secret_token("ümlaut"));
    }

    #[test]
    fn bot_ids_come_from_well_formed_tokens_only() {
        assert_eq!(bot_id_of("123456:AAH-x_y"), Some("123456"));
        assert_eq!(bot_id_of("123456:"), None);
        assert_eq!(bot_id_of(":secret"), None);
        assert_eq!(bot_id_of("12a:secret"), None);
        assert_eq!(bot_id_of("123:sec ret"), None);
        assert_eq!(bot_id_of("no-colon"), None);
    }

    #[test]
    fn ids_above_two_to_the_53_stay_exact() {
        let update = parse_update(
            br#"{"update_id":9007199254740993,"message":{"message_id":9007199254740995,
                "from":{"id":9007199254740997,"is_bot":false,"first_name":"A"},
                "chat":{"id":9007199254740997,"type":"private"},"date":1,"text":"x"}}"#,
        )
        .unwrap();
        assert_eq!(update.update_id, 9_007_199_254_740_993);
        let message = update.message.unwrap();
        assert_eq!(message.message_id, 9_007_199_254_740_995);
        assert_eq!(message.from.unwrap().id, 9_007_199_254_740_997);
    }

    #[test]
    fn update_kinds_and_unmapped_types_are_named() {
        let update = parse_update(br#"{"update_id":1,"callback_query":{"id":"x"}}"#).unwrap();
        assert_eq!(update.kind, "callback_query");
        let update = parse_update(br#"{"update_id":1,"zz_new_kind":{}}"#).unwrap();
        assert_eq!(update.kind, "zz_new_kind");
        let update = parse_update(
            br#"{"update_id":1,"message":{"message_id":1,"chat":{"id":1,"type":"private"},
                "date":1,"dice":{"emoji":"d","value":3},"entities":[]}}"#,
        )
        .unwrap();
        assert_eq!(update.unmapped_type.as_deref(), Some("dice"));
        assert!(parse_update(br#"{"message":{}}"#).is_err());
        assert!(parse_update(br#"{"update_id":1.5}"#).is_err());
        assert!(parse_update(b"[1]").is_err());
    }

    #[test]
    fn the_largest_photo_size_wins() {
        let size = |id: &str, w: u64, h: u64| PhotoSize {
            file_id: id.into(),
            width: Some(w),
            height: Some(h),
            file_size: None,
        };
        let sizes = [size("s", 90, 60), size("x", 1280, 853), size("m", 320, 213)];
        assert_eq!(largest_photo(&sizes).unwrap().file_id, "x");
        assert!(largest_photo(&[]).is_none());
    }
}
