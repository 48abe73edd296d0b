//! The message envelope (`schemas/message.v1.json`): one shape for every channel, both directions.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::identity::IdentityKey;

/// Tenant used when a message does not name one.
pub const DEFAULT_TENANT: &str = "default";

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From a customer, through a connector, to the router.
    Inbound,
    /// From an agent or bot, through the router, to a channel.
    Outbound,
}

/// A configured channel instance: its connector type and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelRef {
    /// Connector type, e.g. `wechat_oa`, `api`, `web`.
    pub kind: String,
    /// Configured instance id, the `{channel_id}` path segment.
    pub id: String,
}

/// Who sent an inbound message (or, on outbound messages, who it goes to).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sender {
    /// The user's id on the channel (open id, visitor id, app user id).
    pub external_id: String,
    /// Namespace the external id is unique in (app id, channel id); empty when global.
    #[serde(default)]
    pub scope: String,
    /// Name the channel reports, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Identity keys of this person, the channel's own key first.
    pub identities: Vec<IdentityKey>,
}

/// A media object, either at a URL or held by the channel under a media id.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Media {
    /// Where the media can be fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The channel's own media id (WeChat MediaId, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
    /// MIME type, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// Size in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Playing time of audio or video in milliseconds, when known (LINE needs it to send
    /// audio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// What a message says, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Content {
    /// Plain text.
    Text {
        /// The text, exactly as the user wrote it.
        text: String,
    },
    /// A picture.
    Image {
        /// The picture.
        media: Media,
        /// Text that goes with the media (a caption), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
    /// A voice message or audio file.
    Audio {
        /// The audio.
        media: Media,
        /// Speech-to-text the channel supplied, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recognition: Option<String>,
        /// Text that goes with the media (a caption), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
    /// A video.
    Video {
        /// The video.
        media: Media,
        /// Its thumbnail, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thumbnail: Option<Media>,
        /// Text that goes with the media (a caption), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
    /// Any other file.
    File {
        /// The file.
        media: Media,
        /// Its file name, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Text that goes with the media (a caption), if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
    /// A point on a map.
    Location {
        /// Latitude in degrees.
        latitude: f64,
        /// Longitude in degrees.
        longitude: f64,
        /// A place name or address, if given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    /// A shared link.
    Link {
        /// Target URL.
        url: String,
        /// Title shown for the link.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        /// Description shown for the link.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// A sticker or emoji image.
    Sticker {
        /// The sticker.
        media: Media,
    },
    /// A rich card (mini-program page, product card, ...).
    Card {
        /// Card title.
        title: String,
        /// Where tapping the card leads, if anywhere.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// Card picture.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thumbnail: Option<Media>,
        /// Channel-specific card fields (app id, page path, ...).
        #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
        #[schemars(with = "std::collections::BTreeMap<String, serde_json::Value>")]
        attributes: serde_json::Map<String, serde_json::Value>,
    },
    /// Something that happened rather than something said (subscribe, menu click, ...).
    Event {
        /// Event name, e.g. `subscribe`, `click`, `visitor_identified`.
        name: String,
        /// Event details.
        #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
        #[schemars(with = "std::collections::BTreeMap<String, serde_json::Value>")]
        data: serde_json::Map<String, serde_json::Value>,
    },
    /// An approved message template of the platform (a WhatsApp template), filled in with its
    /// parameters. Outbound only: connectors never make one of an inbound message. WhatsApp
    /// takes one after its 24-hour customer service window has closed, when free-form replies
    /// are refused.
    Template {
        /// The template's name, as approved on the platform.
        #[schemars(length(min = 1))]
        name: String,
        /// The template's language code, e.g. `en_US`.
        #[schemars(length(min = 1))]
        language: String,
        /// The values of the body's `{{1}}`, `{{2}}`, … in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        parameters: Vec<String>,
        /// The platform's own `components` array, passed through as given (header media,
        /// buttons, …); when given, `parameters` must be empty.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(with = "Option<Vec<std::collections::BTreeMap<String, serde_json::Value>>>")]
        components: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
    },
    /// A message type the connector does not map; kept so nothing is silently lost.
    Unsupported {
        /// The channel's own type name.
        original_type: String,
    },
}

impl Content {
    /// The `type` tag of this content.
    pub fn type_name(&self) -> &'static str {
        match self {
            Content::Text { .. } => "text",
            Content::Image { .. } => "image",
            Content::Audio { .. } => "audio",
            Content::Video { .. } => "video",
            Content::File { .. } => "file",
            Content::Location { .. } => "location",
            Content::Link { .. } => "link",
            Content::Sticker { .. } => "sticker",
            Content::Card { .. } => "card",
            Content::Event { .. } => "event",
            Content::Template { .. } => "template",
            Content::Unsupported { .. } => "unsupported",
        }
    }

    /// What is wrong with template content, if anything: a blank `name` or `language`, or
    /// both `parameters` and `components` given. `None` for valid templates and other content.
    pub fn template_problem(&self) -> Option<&'static str> {
        let Content::Template {
            name,
            language,
            parameters,
            components,
        } = self
        else {
            return None;
        };
        if name.trim().is_empty() {
            Some("a template needs its `name`")
        } else if language.trim().is_empty() {
            Some("a template needs its `language` code, e.g. `en_US`")
        } else if components.is_some() && !parameters.is_empty() {
            Some("a template gives either `parameters` or `components`, not both")
        } else {
            None
        }
    }

    /// The caption of media content (image, audio, video, file), unless it is absent or blank.
    pub fn caption(&self) -> Option<&str> {
        match self {
            Content::Image { caption, .. }
            | Content::Audio { caption, .. }
            | Content::Video { caption, .. }
            | Content::File { caption, .. } => caption.as_deref().filter(|c| !c.trim().is_empty()),
            _ => None,
        }
    }

    /// Takes the caption out of media content, leaving it without one; `None` (and nothing
    /// changed) for content that has no caption or a blank one.
    pub fn take_caption(&mut self) -> Option<String> {
        match self {
            Content::Image { caption, .. }
            | Content::Audio { caption, .. }
            | Content::Video { caption, .. }
            | Content::File { caption, .. } => caption.take_if(|c| !c.trim().is_empty()),
            _ => None,
        }
    }
}

/// One message, as it travels on the bus (`message.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Switchyard message envelope v1")]
pub struct Envelope {
    /// ULID, assigned by the connector (or the router, for outbound messages).
    #[schemars(pattern(r"^[0-9A-HJKMNP-TV-Z]{26}$"))]
    pub id: String,
    /// Tenant the message belongs to.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Which way the message travels.
    pub direction: Direction,
    /// The channel instance it came from or goes to.
    pub channel: ChannelRef,
    /// The customer on the channel.
    pub sender: Sender,
    /// Unified customer profile; null at ingress, set by the router.
    #[serde(default)]
    pub customer_id: Option<String>,
    /// Conversation; null at ingress, set by the router.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// When the sender sent it (the channel's clock when it gives one).
    #[serde(serialize_with = "crate::time::rfc3339::serialize")]
    pub sent_at: DateTime<Utc>,
    /// When Switchyard received it.
    #[serde(serialize_with = "crate::time::rfc3339::serialize")]
    pub received_at: DateTime<Utc>,
    /// Stable across the channel's retries of this message; duplicates are dropped.
    #[schemars(length(min = 1))]
    pub dedupe_key: String,
    /// What the message says.
    pub content: Content,
    /// Id of the envelope this one answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// For outbound messages: the agent who wrote it, if a human did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The original payload, only when configured to keep it (secrets masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<serde_json::Value>,
}

fn default_tenant() -> String {
    DEFAULT_TENANT.to_owned()
}

impl Envelope {
    /// A message a connector received: a new id, the default tenant, not routed yet (no
    /// customer or conversation), replying to nothing, without the raw payload.
    pub fn inbound(
        channel: ChannelRef,
        sender: Sender,
        content: Content,
        dedupe_key: String,
        sent_at: DateTime<Utc>,
        received_at: DateTime<Utc>,
    ) -> Envelope {
        Envelope {
            id: new_id(),
            tenant: DEFAULT_TENANT.to_owned(),
            direction: Direction::Inbound,
            channel,
            sender,
            customer_id: None,
            conversation_id: None,
            sent_at,
            received_at,
            dedupe_key,
            content,
            reply_to: None,
            agent_id: None,
            raw: None,
        }
    }

    /// The bus shard key: channel id + external user id, so one identity's messages stay in order.
    pub fn shard_key(&self) -> String {
        shard_key(&self.channel.id, &self.sender.external_id)
    }
}

/// The shard key for a channel instance and one of its users.
pub fn shard_key(channel_id: &str, external_id: &str) -> String {
    format!("{channel_id}\u{1f}{external_id}")
}

/// A fresh envelope id (ULID).
pub fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

/// The envelope id of the one message that `name` stands for (e.g. `auto-reply:{conversation
/// id}`): a ULID whose time part is `at` and whose 80 random bits come from a SHA-256 of
/// `name`. The same `name` and `at` give the same id in every process and version, so a message
/// sent again under it is recognised as the same message ([`crate::store::Store::record_outbound`]
/// records it once, the outbound sender sends it once); distinct names give distinct ids.
pub fn derived_id(name: &str, at: DateTime<Utc>) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    let mut high = [0u8; 16];
    high.copy_from_slice(&digest[..16]);
    let random = u128::from_be_bytes(high) >> 48;
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    ulid::Ulid::from_parts(millis, random).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_valid_ulids_and_distinct() {
        let at: DateTime<Utc> = "2026-11-30T03:00:00.123Z".parse().unwrap();
        let id = derived_id("auto-reply:c1", at);
        assert_eq!(
            id,
            derived_id("auto-reply:c1", at),
            "the same name, the same id"
        );
        let parsed: ulid::Ulid = id.parse().unwrap();
        assert_eq!(parsed.timestamp_ms(), 1_796_007_600_123);
        assert_eq!(id.len(), 26);
        assert_ne!(id, derived_id("auto-reply:c2", at));
        assert_ne!(
            id,
            derived_id("auto-reply:c1", at + chrono::TimeDelta::milliseconds(1))
        );
    }
}
