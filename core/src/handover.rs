//! A hand-over's context: what a bot (or an agent) that hands a conversation on tells whoever
//! takes it next, so that the customer does not have to say it all again. Given with a
//! transfer (`POST /v1/conversations/{id}/transfer` `{"pool": "humans", "handover": {…}}`, or
//! the agent WebSocket's `transfer`), kept on the conversation as [`Handover`] (the latest one),
//! and carried wherever the conversation goes: the REST view, every event carrying it (first
//! `conversation.transferred`), the agent's `assigned` frame and the agent console.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest `summary`, in characters.
pub const MAX_SUMMARY_CHARS: usize = 4000;
/// Longest `intent`, in characters.
pub const MAX_INTENT_CHARS: usize = 128;
/// Longest `language` tag, in characters.
pub const MAX_LANGUAGE_CHARS: usize = 35;
/// Most `slots`.
pub const MAX_SLOTS: usize = 32;
/// Longest slot name, in characters.
pub const MAX_SLOT_NAME_CHARS: usize = 64;
/// Longest text value of a slot, in characters.
pub const MAX_SLOT_TEXT_CHARS: usize = 1000;
/// Longest `transcript_url`, in characters.
pub const MAX_TRANSCRIPT_URL_CHARS: usize = 2048;

/// What the one handing a conversation on knows of it, as given with the transfer. Every field
/// is optional, but at least one must be given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandoverContext {
    /// What the customer wants and what was tried, in a few sentences (at most 4000
    /// characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The customer's intent as the bot classified it, e.g. `refund` (1 to 128 characters, no
    /// control characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// How the customer seems to feel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentiment: Option<Sentiment>,
    /// The language the customer writes in, as a BCP 47 tag (`zh-CN`, `en`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// What was collected so far, by name (`order_id`: `"A-1042"`): at most 32 names of 1 to
    /// 64 characters without control characters, each a text (at most 1000 characters), a
    /// number or a boolean.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, SlotValue>,
    /// Where the full transcript of the bot's part can be read: an `http://` or `https://` URL
    /// of at most 2048 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_url: Option<String>,
}

/// How the customer seems to feel, as the one handing over judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sentiment {
    /// Upset or angry.
    Negative,
    /// Neither.
    Neutral,
    /// Pleased.
    Positive,
}

/// One collected value of a hand-over's `slots`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum SlotValue {
    /// `true` or `false`.
    Flag(bool),
    /// A JSON number.
    Number(serde_json::Number),
    /// A text.
    Text(String),
}

/// Why a hand-over context was refused. Its `Display` names the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoverError {
    /// Nothing was given.
    #[error(
        "`handover` gives nothing: give at least one of `summary`, `intent`, `sentiment`, `language`, `slots`, `transcript_url`"
    )]
    Empty,
    /// A text is too long.
    #[error("`handover.{key}` is longer than {max} characters")]
    TooLong {
        /// The key at fault.
        key: String,
        /// Its limit.
        max: usize,
    },
    /// A text is empty or holds control characters where none are allowed.
    #[error("`handover.{key}` must be 1 to {max} characters without control characters")]
    NotALabel {
        /// The key at fault.
        key: String,
        /// Its limit.
        max: usize,
    },
    /// `language` is not a BCP 47 tag.
    #[error("`handover.language` `{0}` is not a language tag such as `en` or `zh-CN`")]
    Language(String),
    /// Too many slots.
    #[error("`handover.slots` has {0} entries; at most {MAX_SLOTS}")]
    TooManySlots(usize),
    /// `transcript_url` is not an http(s) URL.
    #[error("`handover.transcript_url` must be an http:// or https:// URL without spaces")]
    TranscriptUrl,
}

impl HandoverContext {
    /// Refuses a context that gives nothing or breaks a limit.
    pub fn check(&self) -> Result<(), HandoverError> {
        if *self == HandoverContext::default() {
            return Err(HandoverError::Empty);
        }
        if let Some(summary) = &self.summary {
            if summary.trim().is_empty() {
                return Err(HandoverError::NotALabel {
                    key: "summary".to_owned(),
                    max: MAX_SUMMARY_CHARS,
                });
            }
            at_most("summary", summary, MAX_SUMMARY_CHARS)?;
        }
        if let Some(intent) = &self.intent {
            label("intent", intent, MAX_INTENT_CHARS)?;
        }
        if let Some(language) = &self.language
            && !is_language_tag(language)
        {
            return Err(HandoverError::Language(language.clone()));
        }
        if self.slots.len() > MAX_SLOTS {
            return Err(HandoverError::TooManySlots(self.slots.len()));
        }
        for (name, value) in &self.slots {
            label(&format!("slots.{name}"), name, MAX_SLOT_NAME_CHARS)?;
            if let SlotValue::Text(text) = value {
                at_most(&format!("slots.{name}"), text, MAX_SLOT_TEXT_CHARS)?;
            }
        }
        if let Some(url) = &self.transcript_url {
            at_most("transcript_url", url, MAX_TRANSCRIPT_URL_CHARS)?;
            if !is_web_url(url) {
                return Err(HandoverError::TranscriptUrl);
            }
        }
        Ok(())
    }
}

fn at_most(key: &str, text: &str, max: usize) -> Result<(), HandoverError> {
    if text.chars().count() > max {
        return Err(HandoverError::TooLong {
            key: key.to_owned(),
            max,
        });
    }
    Ok(())
}

fn label(key: &str, text: &str, max: usize) -> Result<(), HandoverError> {
    if text.is_empty() || text.chars().count() > max || text.chars().any(char::is_control) {
        return Err(HandoverError::NotALabel {
            key: key.to_owned(),
            max,
        });
    }
    Ok(())
}

/// A BCP 47 tag in its common shape: a primary tag of 2 to 8 letters, then subtags of 1 to 8
/// letters or digits, joined by `-`.
fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let primary_ok = parts
        .next()
        .is_some_and(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    primary_ok
        && tag.len() <= MAX_LANGUAGE_CHARS
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `http://` or `https://`, a host, and no whitespace or control characters.
fn is_web_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|rest| {
        !rest.is_empty()
            && !rest.starts_with('/')
            && !url.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

/// The latest hand-over of a conversation: its context, who gave it and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Handover {
    /// Who handed the conversation on: the bot or agent that asked the transfer
    /// (`by_agent_id`, or the agent of the WebSocket); `null` when the API asked without one.
    pub by: Option<String>,
    /// When.
    #[serde(serialize_with = "crate::time::rfc3339::serialize")]
    pub at: DateTime<Utc>,
    /// What they said of it.
    #[serde(flatten)]
    pub context: HandoverContext,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn context(json: serde_json::Value) -> Result<HandoverContext, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn a_full_context_is_accepted_and_round_trips() {
        let c = context(serde_json::json!({
            "summary": "Wants a refund for order A-1042; the parcel never came.",
            "intent": "refund",
            "sentiment": "negative",
            "language": "zh-Hans-CN",
            "slots": {"order_id": "A-1042", "amount": 129.5, "tracked": false},
            "transcript_url": "https://bot.example.com/t/42"
        }))
        .unwrap();
        c.check().unwrap();
        assert_eq!(
            c.slots["amount"],
            SlotValue::Number(serde_json::Number::from_f64(129.5).unwrap())
        );
        assert_eq!(c.slots["tracked"], SlotValue::Flag(false));
        assert_eq!(c.slots["order_id"], SlotValue::Text("A-1042".to_owned()));
        let handover = Handover {
            by: Some("bot:faq".to_owned()),
            at: chrono::DateTime::parse_from_rfc3339("2026-11-30T09:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            context: c,
        };
        let json = serde_json::to_value(&handover).unwrap();
        assert_eq!(json["by"], "bot:faq");
        assert_eq!(json["intent"], "refund");
        assert_eq!(json["slots"]["amount"], 129.5);
        let back: Handover = serde_json::from_value(json).unwrap();
        assert_eq!(back, handover);
    }

    #[test]
    fn unknown_keys_and_nested_slot_values_are_refused() {
        assert!(context(serde_json::json!({"summery": "typo"})).is_err());
        assert!(context(serde_json::json!({"slots": {"a": {"b": 1}}})).is_err());
        assert!(context(serde_json::json!({"slots": {"a": [1]}})).is_err());
        assert!(context(serde_json::json!({"slots": {"a": null}})).is_err());
        assert!(context(serde_json::json!({"sentiment": "furious"})).is_err());
    }

    #[test]
    fn limits_name_the_key_at_fault() {
        let refused = |json: serde_json::Value| context(json).unwrap().check().unwrap_err();
        assert_eq!(refused(serde_json::json!({})), HandoverError::Empty);
        assert_eq!(
            refused(serde_json::json!({"slots": {}})),
            HandoverError::Empty
        );
        let long = "x".repeat(MAX_SUMMARY_CHARS + 1);
        assert_eq!(
            refused(serde_json::json!({ "summary": long })).to_string(),
            format!("`handover.summary` is longer than {MAX_SUMMARY_CHARS} characters")
        );
        assert!(matches!(
            refused(serde_json::json!({"summary": "  "})),
            HandoverError::NotALabel { .. }
        ));
        assert!(matches!(
            refused(serde_json::json!({"intent": "re\nfund"})),
            HandoverError::NotALabel { key, .. } if key == "intent"
        ));
        assert!(matches!(
            refused(serde_json::json!({"slots": {"": "x"}})),
            HandoverError::NotALabel { key, .. } if key == "slots."
        ));
        let text = "y".repeat(MAX_SLOT_TEXT_CHARS + 1);
        assert!(matches!(
            refused(serde_json::json!({"slots": {"note": text}})),
            HandoverError::TooLong { key, .. } if key == "slots.note"
        ));
        let many: serde_json::Map<String, serde_json::Value> = (0..=MAX_SLOTS)
            .map(|i| (format!("s{i}"), serde_json::json!(i)))
            .collect();
        assert_eq!(
            refused(serde_json::json!({ "slots": many })),
            HandoverError::TooManySlots(MAX_SLOTS + 1)
        );
        for bad in ["e", "en_US", "en-", "zh-CN-toolongsubtag", "1a"] {
            assert_eq!(
                refused(serde_json::json!({ "language": bad })),
                HandoverError::Language(bad.to_owned()),
                "{bad}"
            );
        }
        for bad in [
            "ftp://x",
            "https://",
            "https:///path",
            "https://a b",
            "javascript:alert(1)",
        ] {
            assert_eq!(
                refused(serde_json::json!({ "transcript_url": bad })),
                HandoverError::TranscriptUrl,
                "{bad}"
            );
        }
        for good in ["en", "zh-CN", "sr-Latn-RS"] {
            context(serde_json::json!({ "language": good }))
                .unwrap()
                .check()
                .unwrap();
        }
    }
}
