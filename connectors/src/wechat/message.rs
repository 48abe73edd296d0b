//! WeChat push payloads (OA and mini-program), from XML or JSON: the element / key names are
//! the same in both formats (`ToUserName`, `MsgType`, ...), only scalar types differ (XML
//! carries text, JSON numbers), so scalars are read leniently from either.
//!
//! Parsing is two-step: the [`Head`] (common fields plus the `MsgType`/`Event` probe) first,
//! then the concrete body struct for that type.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde_json::{Map, Value};

use super::xml;
use crate::ConnectorError;

/// The wire format of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `<xml>...</xml>`.
    Xml,
    /// `{...}` (mini-program "JSON" data format).
    Json,
}

impl Format {
    /// Sniffs the format from the first non-whitespace character.
    pub fn sniff(text: &str) -> Result<Format, ConnectorError> {
        match text.trim_start().as_bytes().first() {
            Some(b'<') => Ok(Format::Xml),
            Some(b'{') => Ok(Format::Json),
            _ => Err(ConnectorError::Malformed(
                "body is neither WeChat XML nor JSON".into(),
            )),
        }
    }
}

/// Deserializes `text` in `format` (XML through the safe parser).
pub fn parse<T: DeserializeOwned>(text: &str, format: Format) -> Result<T, ConnectorError> {
    match format {
        Format::Xml => xml::from_str(text),
        Format::Json => serde_json::from_str(text)
            .map_err(|e| ConnectorError::Malformed(format!("invalid WeChat JSON: {e}"))),
    }
}

/// The outer body in safe mode: `<xml><ToUserName/><Encrypt/></xml>` or
/// `{"ToUserName": .., "Encrypt": ..}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptedBody {
    /// Base64 ciphertext.
    #[serde(default, deserialize_with = "opt_string")]
    pub encrypt: Option<String>,
}

/// Fields every push carries, plus the type probe.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Head {
    /// The account's original id (`gh_...`).
    #[serde(default, deserialize_with = "opt_string")]
    pub to_user_name: Option<String>,
    /// The user's OpenID.
    #[serde(default, deserialize_with = "opt_string")]
    pub from_user_name: Option<String>,
    /// Unix seconds.
    #[serde(default, deserialize_with = "opt_i64")]
    pub create_time: Option<i64>,
    /// `text`, `image`, ..., `event`.
    #[serde(default, deserialize_with = "opt_string")]
    pub msg_type: Option<String>,
    /// Event name when `MsgType` is `event`.
    #[serde(default, deserialize_with = "opt_string")]
    pub event: Option<String>,
    /// 64-bit message id (kept as a string: never through f64).
    #[serde(default, alias = "MsgID", deserialize_with = "opt_string")]
    pub msg_id: Option<String>,
    /// UnionID, when the platform includes it.
    #[serde(
        default,
        alias = "UnionID",
        alias = "unionid",
        deserialize_with = "opt_string"
    )]
    pub union_id: Option<String>,
}

/// `MsgType=text`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Text {
    /// The text, exactly.
    #[serde(default, deserialize_with = "opt_string_raw")]
    pub content: Option<String>,
}

/// `MsgType=image`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Image {
    /// Picture URL.
    #[serde(default, deserialize_with = "opt_string")]
    pub pic_url: Option<String>,
    /// Media id.
    #[serde(default, deserialize_with = "opt_string")]
    pub media_id: Option<String>,
}

/// `MsgType=voice`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Voice {
    /// Media id.
    #[serde(default, deserialize_with = "opt_string")]
    pub media_id: Option<String>,
    /// `amr`, `speex`, ...
    #[serde(default, deserialize_with = "opt_string")]
    pub format: Option<String>,
    /// Speech recognition result, when enabled.
    #[serde(default, deserialize_with = "opt_string_raw")]
    pub recognition: Option<String>,
}

/// `MsgType=video` / `shortvideo`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Video {
    /// Media id.
    #[serde(default, deserialize_with = "opt_string")]
    pub media_id: Option<String>,
    /// Thumbnail media id.
    #[serde(default, deserialize_with = "opt_string")]
    pub thumb_media_id: Option<String>,
}

/// `MsgType=location`.
#[derive(Debug, Clone, Deserialize)]
pub struct Location {
    /// Latitude.
    #[serde(rename = "Location_X", default, deserialize_with = "opt_f64")]
    pub latitude: Option<f64>,
    /// Longitude.
    #[serde(rename = "Location_Y", default, deserialize_with = "opt_f64")]
    pub longitude: Option<f64>,
    /// Map zoom.
    #[serde(rename = "Scale", default, deserialize_with = "opt_string")]
    pub scale: Option<String>,
    /// Place name.
    #[serde(rename = "Label", default, deserialize_with = "opt_string_raw")]
    pub label: Option<String>,
}

/// `MsgType=link`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Link {
    /// Title.
    #[serde(default, deserialize_with = "opt_string_raw")]
    pub title: Option<String>,
    /// Description.
    #[serde(default, deserialize_with = "opt_string_raw")]
    pub description: Option<String>,
    /// Target.
    #[serde(default, deserialize_with = "opt_string")]
    pub url: Option<String>,
}

/// `MsgType=miniprogrampage` (mini-program customer service).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MiniProgramPage {
    /// Card title.
    #[serde(default, deserialize_with = "opt_string_raw")]
    pub title: Option<String>,
    /// Mini-program AppID.
    #[serde(default, deserialize_with = "opt_string")]
    pub app_id: Option<String>,
    /// Page path.
    #[serde(default, deserialize_with = "opt_string")]
    pub page_path: Option<String>,
    /// Thumbnail URL.
    #[serde(default, deserialize_with = "opt_string")]
    pub thumb_url: Option<String>,
    /// Thumbnail media id.
    #[serde(default, deserialize_with = "opt_string")]
    pub thumb_media_id: Option<String>,
}

/// `MsgType=event`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventBody {
    /// Scene (`qrscene_...`), menu key, or URL.
    #[serde(default, deserialize_with = "opt_string_raw")]
    pub event_key: Option<String>,
    /// QR code ticket.
    #[serde(default, deserialize_with = "opt_string")]
    pub ticket: Option<String>,
    /// `LOCATION` event latitude.
    #[serde(default, deserialize_with = "opt_f64")]
    pub latitude: Option<f64>,
    /// `LOCATION` event longitude.
    #[serde(default, deserialize_with = "opt_f64")]
    pub longitude: Option<f64>,
    /// `LOCATION` event precision.
    #[serde(default, deserialize_with = "opt_f64")]
    pub precision: Option<f64>,
    /// `VIEW` menu id.
    #[serde(default, alias = "MenuID", deserialize_with = "opt_string")]
    pub menu_id: Option<String>,
    /// `user_enter_tempsession` session-from.
    #[serde(default, deserialize_with = "opt_string_raw")]
    pub session_from: Option<String>,
}

/// The body of a push, by type.
#[derive(Debug, Clone)]
pub enum Body {
    /// Text.
    Text(Text),
    /// Image.
    Image(Image),
    /// Voice.
    Voice(Voice),
    /// Video (`short`: `shortvideo`).
    Video {
        /// The video.
        video: Video,
        /// Whether it is a `shortvideo`.
        short: bool,
    },
    /// Location.
    Location(Location),
    /// Link.
    Link(Link),
    /// Mini-program page card.
    MiniProgramPage(MiniProgramPage),
    /// Event (name as sent).
    Event {
        /// `Event` as sent (`subscribe`, `CLICK`, ...).
        name: String,
        /// Event fields.
        body: EventBody,
    },
    /// Any other `MsgType`.
    Unknown {
        /// The type name.
        msg_type: String,
    },
}

/// A parsed push.
#[derive(Debug, Clone)]
pub struct WxMessage {
    /// Common fields.
    pub head: Head,
    /// Typed body.
    pub body: Body,
    /// The format it came in.
    pub format: Format,
    /// Whether it was encrypted (safe mode).
    pub encrypted: bool,
    /// The decrypted push's fields as a JSON object ([`fields`]), kept by `decode` only when
    /// the channel keeps raw ([`crate::RawPolicy`]).
    pub raw: Option<Map<String, Value>>,
}

impl WxMessage {
    /// Parses a decrypted (or plain) push.
    pub fn parse(text: &str, encrypted: bool) -> Result<WxMessage, ConnectorError> {
        let format = Format::sniff(text)?;
        let head: Head = parse(text, format)?;
        let msg_type = head
            .msg_type
            .clone()
            .ok_or_else(|| ConnectorError::Malformed("push has no MsgType".into()))?;
        let body = match msg_type.as_str() {
            "text" => Body::Text(parse(text, format)?),
            "image" => Body::Image(parse(text, format)?),
            "voice" => Body::Voice(parse(text, format)?),
            "video" | "shortvideo" => Body::Video {
                video: parse(text, format)?,
                short: msg_type == "shortvideo",
            },
            "location" => Body::Location(parse(text, format)?),
            "link" => Body::Link(parse(text, format)?),
            "miniprogrampage" => Body::MiniProgramPage(parse(text, format)?),
            "event" => Body::Event {
                name: head
                    .event
                    .clone()
                    .ok_or_else(|| ConnectorError::Malformed("event push has no Event".into()))?,
                body: parse(text, format)?,
            },
            _ => Body::Unknown { msg_type },
        };
        Ok(WxMessage {
            head,
            body,
            format,
            encrypted,
            raw: None,
        })
    }
}

/// The fields of a decrypted (or plain) push as a JSON object: the XML's elements
/// ([`xml::fields`]), or the JSON object; `None` when it is neither.
pub fn fields(text: &str) -> Option<Map<String, Value>> {
    match Format::sniff(text).ok()? {
        Format::Xml => xml::fields(text).ok(),
        Format::Json => serde_json::from_str(text).ok(),
    }
}

/// A scalar read from XML text or a JSON string / number.
enum Scalar {
    Str(String),
    None,
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        // quick-xml presents an element with attributes or children as a map; WeChat scalars
        // have neither, so take the text content (`$text`) if any.
        let mut text = Scalar::None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "$text" || key == "$value" {
                text = map.next_value_seed(ScalarSeed)?;
            } else {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
        Ok(text)
    }
}

struct ScalarSeed;

impl<'de> de::DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match d.deserialize_any(ScalarVisitor)? {
        Scalar::Str(s) => Some(s),
        Scalar::None => None,
    })
}

/// An optional string field, trimmed; empty is `None` (ids, types, URLs).
fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(scalar(d)?
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty()))
}

/// An optional string field kept exactly as sent (user text); empty is `None`.
fn opt_string_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(scalar(d)?.filter(|s| !s.is_empty()))
}

fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match opt_string(d)? {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("`{s}` is not an integer"))),
    }
}

fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match opt_string(d)? {
        None => Ok(None),
        Some(s) => match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(de::Error::custom(format!("`{s}` is not a number"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_and_json_parse_alike() {
        let xml = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oU1]]></FromUserName><CreateTime>1714036504</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[ 你好 😀 ]]></Content><MsgId>9223372036854775807</MsgId></xml>";
        let json = r#"{"ToUserName":"gh_1","FromUserName":"oU1","CreateTime":1714036504,"MsgType":"text","Content":" 你好 😀 ","MsgId":9223372036854775807}"#;
        for (text, format) in [(xml, Format::Xml), (json, Format::Json)] {
            let m = WxMessage::parse(text, false).unwrap();
            assert_eq!(m.format, format);
            assert_eq!(m.head.msg_id.as_deref(), Some("9223372036854775807"));
            assert_eq!(m.head.create_time, Some(1714036504));
            assert_eq!(m.head.from_user_name.as_deref(), Some("oU1"));
            match m.body {
                Body::Text(t) => assert_eq!(t.content.as_deref(), Some(" 你好 😀 ")),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn location_and_event_scalars() {
        let xml = "<xml><MsgType>location</MsgType><Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y><Scale>20</Scale><Label><![CDATA[位置信息]]></Label></xml>";
        match WxMessage::parse(xml, false).unwrap().body {
            Body::Location(l) => {
                assert_eq!(l.latitude, Some(23.134521));
                assert_eq!(l.longitude, Some(113.358803));
                assert_eq!(l.label.as_deref(), Some("位置信息"));
            }
            other => panic!("{other:?}"),
        }
        let bad = "<xml><MsgType>location</MsgType><Location_X>north</Location_X></xml>";
        assert!(matches!(
            WxMessage::parse(bad, false),
            Err(ConnectorError::Malformed(_))
        ));
        let ev = "<xml><MsgType>event</MsgType><Event>LOCATION</Event><Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision><EventKey/></xml>";
        match WxMessage::parse(ev, false).unwrap().body {
            Body::Event { name, body } => {
                assert_eq!(name, "LOCATION");
                assert_eq!(body.precision, Some(119.38504));
                assert_eq!(body.event_key, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_type_and_unknown_type() {
        assert!(WxMessage::parse("<xml><Content>x</Content></xml>", false).is_err());
        assert!(matches!(
            WxMessage::parse("<xml><MsgType>hologram</MsgType></xml>", false)
                .unwrap()
                .body,
            Body::Unknown { .. }
        ));
        assert!(WxMessage::parse("hello", false).is_err());
        assert!(WxMessage::parse("{\"MsgType\": [1]}", false).is_err());
    }
}
