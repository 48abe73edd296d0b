//! The channel rules registry: what a channel lets us send and when (reply windows, quotas,
//! content types, text length) and how unsupported content is downgraded. The router consults
//! a channel's rules before queueing a reply, so an undeliverable reply is refused at once with
//! the rule that forbids it, never "sent" into the void. Exposed at `GET /v1/channels/{id}/rules`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use switchyard_core::envelope::Content;
use switchyard_core::model::Conversation;

/// A channel's sending rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelRules {
    /// How long after the customer's last message replies are allowed (`None`: always).
    #[serde(with = "opt_secs")]
    pub reply_window: Option<Duration>,
    /// Content types that may still be sent after the reply window closed, such as WhatsApp
    /// templates; they are not held to `max_replies_per_inbound` either. Only types the channel
    /// accepts (`content_types`) count.
    pub window_exempt: Vec<&'static str>,
    /// Replies allowed per customer message within the window (`None`: unlimited).
    pub max_replies_per_inbound: Option<u32>,
    /// Outbound content types the channel accepts.
    pub content_types: Vec<&'static str>,
    /// Longest text, in characters (`None`: no limit we know of).
    pub max_text_chars: Option<usize>,
    /// What an unsupported type becomes, tried in order: `card -> link -> text`.
    pub downgrades: Vec<(&'static str, &'static str)>,
    /// How the caption of a media reply reaches the customer.
    pub captions: Captions,
    /// Where the rules come from / what else to know.
    pub notes: &'static str,
}

/// How a channel carries the caption of a media reply (image, audio, video, file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Captions {
    /// On the media message itself, up to `max_chars` characters (`None`: no limit known).
    OnMedia {
        /// Longest caption, in characters.
        max_chars: Option<usize>,
    },
    /// As a text message right after the media: held to `max_text_chars`, and it takes one more
    /// of the replies `max_replies_per_inbound` allows.
    AsText,
}

mod opt_secs {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }
}

/// Why a reply may not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleViolation {
    /// Stable code: `reply_window_closed`, `reply_quota_exceeded`, `content_unsupported`,
    /// `text_too_long`, `caption_too_long`.
    pub code: &'static str,
    /// What rule forbids it.
    pub message: String,
}

/// The outbound content types of the unrestricted (web and API) channels: every type but
/// `template`, which names a template approved on a messaging platform (WhatsApp) that a web
/// visitor or an app backend has no way to render.
pub const ALL_TYPES: &[&str] = &[
    "text", "image", "audio", "video", "file", "location", "link", "sticker", "card", "event",
];

impl ChannelRules {
    /// No window, no quota, every type, no length limit (the web and API channels).
    pub fn unrestricted(notes: &'static str) -> Self {
        ChannelRules {
            reply_window: None,
            window_exempt: Vec::new(),
            max_replies_per_inbound: None,
            content_types: ALL_TYPES.to_vec(),
            max_text_chars: None,
            downgrades: Vec::new(),
            captions: Captions::OnMedia { max_chars: None },
            notes,
        }
    }

    /// Checks a reply against the rules; returns the content to send (possibly downgraded).
    pub fn check(
        &self,
        conversation: &Conversation,
        content: Content,
        now: DateTime<Utc>,
    ) -> Result<Content, RuleViolation> {
        let exempt = self.is_window_exempt(&content);
        if let Some(window) = self.reply_window.filter(|_| !exempt) {
            // A conversation the customer has not written in (an agent started it) has no
            // window open, whatever the customer wrote in an earlier conversation.
            let elapsed = conversation
                .last_inbound_at
                .map(|last| (now - last).to_std().unwrap_or_default());
            if elapsed.is_none_or(|elapsed| elapsed > window) {
                let hours = window.as_secs() / 3600;
                let mut message = match elapsed {
                    Some(elapsed) => format!(
                        "the channel allows replies only within {hours} h of the customer's \
                         last message; it was {} h ago",
                        elapsed.as_secs() / 3600
                    ),
                    None => format!(
                        "the channel allows replies only within {hours} h of the customer's \
                         last message, and the customer has not written in this conversation"
                    ),
                };
                let still_allowed: Vec<&str> = self
                    .window_exempt
                    .iter()
                    .copied()
                    .filter(|kind| self.content_types.contains(kind))
                    .collect();
                if !still_allowed.is_empty() {
                    message.push_str(&format!(
                        "; only {} content can be sent now",
                        still_allowed.join(", ")
                    ));
                }
                return Err(RuleViolation {
                    code: "reply_window_closed",
                    message,
                });
            }
        }
        // A caption sent as its own text message is one more message of the quota.
        let messages = match (self.captions, content.caption()) {
            (Captions::AsText, Some(_)) => 2,
            _ => 1,
        };
        if let Some(max) = self.max_replies_per_inbound.filter(|_| !exempt)
            && conversation.replies_since_inbound.saturating_add(messages) > max
        {
            return Err(RuleViolation {
                code: "reply_quota_exceeded",
                message: if messages > 1 && conversation.replies_since_inbound < max {
                    format!(
                        "the channel allows {max} replies per customer message and sends a \
                         caption as a message of its own: only {} left, this needs 2",
                        max - conversation.replies_since_inbound
                    )
                } else {
                    format!(
                        "the channel allows {max} replies per customer message; wait for the \
                         customer to write again"
                    )
                },
            });
        }
        let content = self.downgrade(content)?;
        if let Some(caption) = content.caption() {
            let chars = caption.chars().count();
            let max = match self.captions {
                Captions::OnMedia { max_chars } => max_chars,
                Captions::AsText => self.max_text_chars,
            };
            if let Some(max) = max.filter(|max| chars > *max) {
                return Err(RuleViolation {
                    code: "caption_too_long",
                    message: format!("caption has {chars} characters; the channel allows {max}"),
                });
            }
        }
        if let (Content::Text { text }, Some(max)) = (&content, self.max_text_chars) {
            let chars = text.chars().count();
            if chars > max {
                return Err(RuleViolation {
                    code: "text_too_long",
                    message: format!("text has {chars} characters; the channel allows {max}"),
                });
            }
        }
        Ok(content)
    }

    /// Whether `content` may go out after the reply window closed (and beyond the reply
    /// quota): its type is one the channel accepts and lists in `window_exempt`.
    pub fn is_window_exempt(&self, content: &Content) -> bool {
        let kind = content.type_name();
        self.window_exempt.contains(&kind) && self.content_types.contains(&kind)
    }

    /// Downgrades content the channel does not accept along the downgrade chain.
    pub fn downgrade(&self, mut content: Content) -> Result<Content, RuleViolation> {
        for _ in 0..4 {
            let kind = content.type_name();
            if self.content_types.contains(&kind) {
                return Ok(content);
            }
            let Some(next) = self
                .downgrades
                .iter()
                .find(|(from, _)| *from == kind)
                .map(|(_, to)| *to)
            else {
                break;
            };
            content = match convert(content, next) {
                Some(c) => c,
                None => break,
            };
        }
        Err(RuleViolation {
            code: "content_unsupported",
            message: format!(
                "the channel does not accept this content; it accepts {}",
                self.content_types.join(", ")
            ),
        })
    }
}

fn convert(content: Content, to: &str) -> Option<Content> {
    let text_of = |title: Option<String>, url: Option<String>| {
        let parts: Vec<String> = [title, url].into_iter().flatten().collect();
        (!parts.is_empty()).then(|| Content::Text {
            text: parts.join(" "),
        })
    };
    match (content, to) {
        (
            Content::Card {
                title,
                url: Some(url),
                ..
            },
            "link",
        ) => Some(Content::Link {
            url,
            title: Some(title),
            description: None,
        }),
        (Content::Card { title, url, .. }, "text") => text_of(Some(title), url),
        (Content::Link { url, title, .. }, "text") => text_of(title, Some(url)),
        (Content::Sticker { media }, "image") => Some(Content::Image {
            media,
            caption: None,
        }),
        (
            Content::Location {
                latitude,
                longitude,
                label,
            },
            "text",
        ) => Some(Content::Text {
            text: match label {
                Some(l) => format!("{l} ({latitude}, {longitude})"),
                None => format!("{latitude}, {longitude}"),
            },
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::envelope::{ChannelRef, Sender};
    use switchyard_core::model::ConversationStatus;

    fn conversation(last: DateTime<Utc>, replies: u32) -> Conversation {
        let channel = ChannelRef {
            kind: "x".into(),
            id: "x".into(),
        };
        let recipient = Sender {
            external_id: "e".into(),
            scope: String::new(),
            display_name: None,
            identities: vec![],
        };
        Conversation {
            status: ConversationStatus::Assigned,
            agent_id: Some("a".into()),
            last_inbound_at: Some(last),
            replies_since_inbound: replies,
            queued_at: None,
            message_count: 1,
            ..Conversation::opened(
                "c".into(),
                ("default", "u"),
                "default",
                channel,
                recipient,
                last,
            )
        }
    }

    fn wechat_like() -> ChannelRules {
        ChannelRules {
            reply_window: Some(Duration::from_secs(48 * 3600)),
            window_exempt: Vec::new(),
            max_replies_per_inbound: Some(5),
            content_types: vec!["text", "image", "link"],
            max_text_chars: Some(10),
            downgrades: vec![("card", "link"), ("link", "text")],
            captions: Captions::AsText,
            notes: "test",
        }
    }

    #[test]
    fn a_conversation_without_inbound_message_has_its_window_closed() {
        let now = Utc::now();
        let whatsapp_like = ChannelRules {
            reply_window: Some(Duration::from_secs(24 * 3600)),
            window_exempt: vec!["template"],
            max_replies_per_inbound: None,
            content_types: vec!["text", "template"],
            max_text_chars: Some(4096),
            downgrades: Vec::new(),
            captions: Captions::OnMedia { max_chars: None },
            notes: "test",
        };
        // Started by an agent a minute ago: the customer never wrote in it.
        let mut started = conversation(now - chrono::TimeDelta::minutes(1), 1);
        started.last_inbound_at = None;
        let refused = whatsapp_like
            .check(&started, Content::Text { text: "hi".into() }, now)
            .unwrap_err();
        assert_eq!(refused.code, "reply_window_closed");
        assert!(
            refused.message.contains("has not written") && refused.message.contains("template"),
            "{}",
            refused.message
        );
        let template = Content::Template {
            name: "order_update".into(),
            language: "en_US".into(),
            parameters: vec!["#1234".into()],
            components: None,
        };
        assert_eq!(
            whatsapp_like.check(&started, template.clone(), now),
            Ok(template)
        );
        // Without a reply window, anything goes.
        let open = ChannelRules::unrestricted("test");
        assert!(
            open.check(&started, Content::Text { text: "hi".into() }, now)
                .is_ok()
        );
        // Once the customer writes, the window counts from their message.
        started.last_inbound_at = Some(now);
        assert!(
            whatsapp_like
                .check(&started, Content::Text { text: "hi".into() }, now)
                .is_ok()
        );
    }

    #[test]
    fn window_quota_length_and_downgrades() {
        let now = Utc::now();
        let rules = wechat_like();
        let text = || Content::Text { text: "hi".into() };
        assert!(rules.check(&conversation(now, 0), text(), now).is_ok());
        let late = now - chrono::TimeDelta::hours(49);
        assert_eq!(
            rules
                .check(&conversation(late, 0), text(), now)
                .unwrap_err()
                .code,
            "reply_window_closed"
        );
        assert_eq!(
            rules
                .check(&conversation(now, 5), text(), now)
                .unwrap_err()
                .code,
            "reply_quota_exceeded"
        );
        let long = Content::Text {
            text: "一二三四五六七八九十十一".into(),
        };
        assert_eq!(
            rules
                .check(&conversation(now, 0), long, now)
                .unwrap_err()
                .code,
            "text_too_long"
        );
        let card = Content::Card {
            title: "Order".into(),
            url: Some("https://x.test/o".into()),
            thumbnail: None,
            attributes: Default::default(),
        };
        assert!(matches!(
            rules.check(&conversation(now, 0), card, now).unwrap(),
            Content::Link { .. }
        ));
        let video = Content::Video {
            media: Default::default(),
            thumbnail: None,
            caption: None,
        };
        assert_eq!(
            rules
                .check(&conversation(now, 0), video, now)
                .unwrap_err()
                .code,
            "content_unsupported"
        );
        let text_only = ChannelRules {
            content_types: vec!["text"],
            ..wechat_like()
        };
        let card = Content::Card {
            title: "Order".into(),
            url: Some("u".into()),
            thumbnail: None,
            attributes: Default::default(),
        };
        assert_eq!(
            text_only.check(&conversation(now, 0), card, now).unwrap(),
            Content::Text {
                text: "Order u".into()
            }
        );
    }

    #[test]
    fn captions_are_held_to_their_limit_and_as_text_take_a_second_reply() {
        let now = Utc::now();
        let image = |caption: &str| Content::Image {
            media: Default::default(),
            caption: Some(caption.into()),
        };
        let as_text = wechat_like();
        assert!(
            as_text
                .check(&conversation(now, 3), image("ok"), now)
                .is_ok()
        );
        let refused = as_text
            .check(&conversation(now, 4), image("ok"), now)
            .unwrap_err();
        assert_eq!(refused.code, "reply_quota_exceeded");
        assert!(
            refused.message.contains("only 1 left"),
            "{}",
            refused.message
        );
        assert!(
            as_text
                .check(&conversation(now, 4), image(" "), now)
                .is_ok(),
            "a blank caption is no caption"
        );
        assert_eq!(
            as_text
                .check(
                    &conversation(now, 0),
                    image("一二三四五六七八九十十一"),
                    now
                )
                .unwrap_err()
                .code,
            "caption_too_long",
            "held to max_text_chars"
        );
        let on_media = ChannelRules {
            captions: Captions::OnMedia { max_chars: Some(3) },
            ..wechat_like()
        };
        assert!(
            on_media
                .check(&conversation(now, 4), image("abc"), now)
                .is_ok()
        );
        assert_eq!(
            on_media
                .check(&conversation(now, 0), image("abcd"), now)
                .unwrap_err()
                .code,
            "caption_too_long"
        );
        let rules = serde_json::to_value(&on_media).unwrap();
        assert_eq!(
            rules["captions"],
            serde_json::json!({"mode": "on_media", "max_chars": 3})
        );
    }

    fn template() -> Content {
        Content::Template {
            name: "order_update".into(),
            language: "en_US".into(),
            parameters: vec!["Ada".into(), "#1234".into()],
            components: None,
        }
    }

    /// A channel like WhatsApp: a window, templates accepted and exempt from it.
    fn with_templates() -> ChannelRules {
        ChannelRules {
            content_types: vec!["text", "image", "link", "template"],
            window_exempt: vec!["template"],
            ..wechat_like()
        }
    }

    #[test]
    fn a_window_exempt_template_passes_a_closed_window_and_text_does_not() {
        let now = Utc::now();
        let late = conversation(now - chrono::TimeDelta::hours(49), 0);
        let rules = with_templates();
        assert_eq!(rules.check(&late, template(), now).unwrap(), template());
        let refused = rules
            .check(&late, Content::Text { text: "hi".into() }, now)
            .unwrap_err();
        assert_eq!(refused.code, "reply_window_closed");
        assert!(
            refused
                .message
                .ends_with("; only template content can be sent now"),
            "{}",
            refused.message
        );
        assert!(
            rules.check(&conversation(now, 5), template(), now).is_ok(),
            "not held to the replies per customer message"
        );
        let not_exempt = ChannelRules {
            window_exempt: Vec::new(),
            ..with_templates()
        };
        assert_eq!(
            not_exempt.check(&late, template(), now).unwrap_err().code,
            "reply_window_closed"
        );
        let rules = serde_json::to_value(&rules).unwrap();
        assert_eq!(rules["window_exempt"], serde_json::json!(["template"]));
    }

    #[test]
    fn a_template_is_unsupported_where_not_accepted_and_never_downgraded() {
        let now = Utc::now();
        let everything_to_text = ChannelRules {
            window_exempt: vec!["template"],
            downgrades: vec![("template", "text"), ("card", "text")],
            ..wechat_like()
        };
        let refused = everything_to_text
            .check(&conversation(now, 0), template(), now)
            .unwrap_err();
        assert_eq!(
            refused.code, "content_unsupported",
            "a template cannot become free text"
        );
        let unrestricted = ChannelRules::unrestricted("web");
        assert_eq!(
            unrestricted
                .check(&conversation(now, 0), template(), now)
                .unwrap_err()
                .code,
            "content_unsupported"
        );
    }
}
