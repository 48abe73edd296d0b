//! The original payload an inbound envelope keeps in `raw`, masked (channel options `keep_raw`
//! and `raw_mask`).
//!
//! Off by default. A channel with `keep_raw = true` gives every envelope its `normalize` makes
//! the JSON object of the platform event it came from: for batch platforms (WhatsApp, LINE)
//! that one event, not the whole webhook; for XML platforms the decrypted XML's fields (never
//! the ciphertext); for `api` the request's body; for `web` the visitor's frame. Before it is
//! attached, every object key named in [`MASKED_KEYS`] or in the channel's `raw_mask` (compared
//! case-insensitively, at any depth, inside arrays too) has its value replaced by [`MASK`],
//! whatever its type.
//!
//! A connector holds a [`RawPolicy`] built from its settings. Where `normalize` still has the
//! event, it calls [`RawPolicy::attach`] with a closure that makes the object; where only
//! `decode` sees it (the request body, the decrypted plaintext), `decode` keeps it in the native
//! payload with [`RawPolicy::capture`] / [`RawPolicy::decode_json`] and `normalize` attaches
//! that. Both call their closure only when the channel keeps raw, so a channel that does not
//! pays nothing on the hot path.
//!
//! Entries a connector parks in `raw` for its own `deliver` ([`crate::take_raw_entry`]) stay
//! beside the kept payload, unmasked, and are taken out before publishing.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::Envelope;

use crate::ConnectorError;

/// What a masked value becomes.
pub const MASK: &str = "[masked]";

/// Keys masked in every kept payload (lower case; matched case-insensitively), besides the
/// channel's `raw_mask`.
///
/// * Secrets and proofs that can appear in payloads: `signature`, `msg_signature`, `token`
///   (WeCom kf's sync token), `access_token`, `refresh_token`, `encrypt` (WeChat ciphertext),
///   `secret`, `password`, `user_hash` (the web channel's identify proof, which would let anyone
///   identify as that user).
/// * Direct contact data of a person: `phone`, `phone_number`, `phonenumber` (camelCase
///   `phoneNumber`), `mobile`, `email`, `vcard` (a shared contact card, which holds phones and
///   emails), and `wa_id`. In the per-message objects kept for WhatsApp, `wa_id` only appears in
///   a contact the customer shares (`contacts[].phones[].wa_id`): it is a third person's phone
///   number. The customer's own number is the message's `from`, which is not masked, because it
///   is the sender's identity and in the envelope anyway (`sender.external_id`,
///   `whatsapp_wa_id::…`).
///
/// The identity keys in `sender.identities` are not masked: they are the envelope itself,
/// which routing needs.
pub const MASKED_KEYS: &[&str] = &[
    "signature",
    "msg_signature",
    "token",
    "access_token",
    "refresh_token",
    "encrypt",
    "secret",
    "password",
    "user_hash",
    "phone",
    "phone_number",
    "phonenumber",
    "mobile",
    "email",
    "vcard",
    "wa_id",
];

/// Whether a channel keeps the original payload of its envelopes, and which keys it masks.
/// The default keeps nothing.
#[derive(Debug, Clone, Default)]
pub struct RawPolicy {
    /// `None`: nothing is kept. `Some`: the channel's `raw_mask`, lower-cased.
    keep: Option<Arc<[String]>>,
}

impl RawPolicy {
    /// The policy of a `[[channels]]` entry: `keep_raw` and `raw_mask`.
    pub fn from_settings(settings: &ChannelSettings) -> Result<Self, ConnectorError> {
        let extra = settings.raw_mask()?;
        Ok(if settings.keep_raw()? {
            Self::keeping(&extra)
        } else {
            Self::default()
        })
    }

    /// A policy that keeps raw and masks `extra` besides [`MASKED_KEYS`].
    pub fn keeping<S: AsRef<str>>(extra: &[S]) -> Self {
        RawPolicy {
            keep: Some(extra.iter().map(|k| k.as_ref().to_lowercase()).collect()),
        }
    }

    /// Whether envelopes keep their original payload.
    pub fn keeps(&self) -> bool {
        self.keep.is_some()
    }

    /// What `read` makes, when the channel keeps raw; `read` is not called otherwise. For
    /// `decode`, which keeps it in the native payload for `normalize` to attach (unmasked
    /// until then).
    pub fn capture(
        &self,
        read: impl FnOnce() -> Option<Map<String, Value>>,
    ) -> Option<Map<String, Value>> {
        if self.keeps() { read() } else { None }
    }

    /// Decodes a JSON body as `T` with one parse, and, when the channel keeps raw, also returns
    /// the object the body holds (nothing if it is not one): the body is read into a [`Value`]
    /// once and `T` is built from that, instead of parsing the bytes twice.
    pub fn decode_json<T: DeserializeOwned>(
        &self,
        body: &[u8],
    ) -> serde_json::Result<(T, Option<Map<String, Value>>)> {
        if !self.keeps() {
            return Ok((serde_json::from_slice(body)?, None));
        }
        let value: Value = serde_json::from_slice(body)?;
        let typed = T::deserialize(&value)?;
        Ok((
            typed,
            match value {
                Value::Object(map) => Some(map),
                _ => None,
            },
        ))
    }

    /// Gives every envelope of `envelopes` (made from one platform event) the object `event`
    /// makes, masked. Does nothing, without calling `event`, when the channel keeps no raw.
    /// Entries the connector already put in `raw` for itself stay beside it.
    pub fn attach(
        &self,
        envelopes: &mut [Envelope],
        event: impl FnOnce() -> Option<Map<String, Value>>,
    ) {
        if !self.keeps() || envelopes.is_empty() {
            return;
        }
        let Some(mut kept) = event() else {
            return;
        };
        self.mask_object(&mut kept);
        if let Some((last, others)) = envelopes.split_last_mut() {
            for envelope in others {
                keep_in(envelope, kept.clone());
            }
            keep_in(last, kept);
        }
    }

    /// Masks `value` in place: the value of every object key this policy masks, at any depth,
    /// becomes [`MASK`].
    pub fn mask(&self, value: &mut Value) {
        match value {
            Value::Object(map) => self.mask_object(map),
            Value::Array(items) => items.iter_mut().for_each(|item| self.mask(item)),
            _ => {}
        }
    }

    fn mask_object(&self, map: &mut Map<String, Value>) {
        for (key, value) in map.iter_mut() {
            if self.masks(key) {
                *value = Value::String(MASK.to_owned());
            } else {
                self.mask(value);
            }
        }
    }

    /// Whether `key` is masked (compared case-insensitively).
    fn masks(&self, key: &str) -> bool {
        let extra = self.keep.as_deref().unwrap_or_default();
        MASKED_KEYS
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
            .any(|name| same_lowercase(key, name))
    }
}

/// Whether `key`, lower-cased, is `lower`.
fn same_lowercase(key: &str, lower: &str) -> bool {
    if key.is_ascii() {
        key.len() == lower.len() && key.eq_ignore_ascii_case(lower)
    } else {
        key.chars().flat_map(char::to_lowercase).eq(lower.chars())
    }
}

/// Puts `kept` in the envelope's `raw`, with the connector's own entries (an object) beside it.
fn keep_in(envelope: &mut Envelope, mut kept: Map<String, Value>) {
    match envelope.raw.take() {
        Some(Value::Object(own)) => kept.extend(own),
        // Never the case (a connector's own entries are an object): leave them alone.
        Some(other) => {
            envelope.raw = Some(other);
            return;
        }
        None => {}
    }
    envelope.raw = Some(Value::Object(kept));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::take_raw_entry;

    fn envelope() -> Envelope {
        serde_json::from_str(include_str!(
            "../../schemas/examples/message.inbound.text.json"
        ))
        .unwrap()
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn masks_nested_keys_in_arrays_case_insensitively_whatever_the_value() {
        let policy = RawPolicy::keeping(&["Note", "ÄRGER"]);
        let mut value = json!({
            "Token": 42,
            "user": {"PHONE": "+8613800000000", "name": "Li Lei", "Email": null},
            "contacts": [
                {"phones": [{"phone": "+1 555", "wa_id": "1555", "type": "CELL"}]},
                [{"password": {"nested": true}}]
            ],
            "note": ["a", "b"],
            "ärger": 1.5,
            "signature_hint": "not masked: only whole names are",
            "text": "token phone email"
        });
        policy.mask(&mut value);
        assert_eq!(
            value,
            json!({
                "Token": MASK,
                "user": {"PHONE": MASK, "name": "Li Lei", "Email": MASK},
                "contacts": [
                    {"phones": [{"phone": MASK, "wa_id": MASK, "type": "CELL"}]},
                    [{"password": MASK}]
                ],
                "note": MASK,
                "ärger": MASK,
                "signature_hint": "not masked: only whole names are",
                "text": "token phone email"
            })
        );
    }

    #[test]
    fn every_built_in_key_is_lower_case_and_masked() {
        let policy = RawPolicy::keeping::<&str>(&[]);
        for key in MASKED_KEYS {
            assert_eq!(*key, key.to_lowercase());
            let mut value = json!({ key.to_uppercase(): "x" });
            policy.mask(&mut value);
            assert_eq!(value[key.to_uppercase()], MASK, "{key}");
        }
    }

    #[test]
    fn off_keeps_nothing_and_never_reads_the_event() {
        let policy = RawPolicy::default();
        assert!(!policy.keeps());
        let mut envelopes = vec![envelope()];
        policy.attach(&mut envelopes, || panic!("read although raw is off"));
        assert_eq!(envelopes[0].raw, None);
        assert_eq!(policy.capture(|| panic!("read although raw is off")), None);
        let (typed, kept) = policy.decode_json::<Value>(br#"{"a": 1}"#).unwrap();
        assert_eq!((typed, kept), (json!({"a": 1}), None));
    }

    #[test]
    fn every_envelope_of_the_event_gets_it_masked() {
        let policy = RawPolicy::keeping(&["note"]);
        let mut envelopes = vec![envelope(), envelope()];
        policy.attach(&mut envelopes, || {
            Some(object(json!({"text": "hi", "note": "x", "mobile": 138})))
        });
        for e in &envelopes {
            assert_eq!(
                e.raw,
                Some(json!({"text": "hi", "note": MASK, "mobile": MASK}))
            );
        }
        let (typed, kept) = policy
            .decode_json::<std::collections::BTreeMap<String, Vec<u8>>>(br#"{"a": [1]}"#)
            .unwrap();
        assert_eq!(typed["a"], [1], "one parse gives both the type");
        assert_eq!(kept, Some(object(json!({"a": [1]}))), "and the kept object");
        let (_, kept) = policy.decode_json::<Vec<u8>>(b"[1]").unwrap();
        assert_eq!(kept, None, "only objects are kept");
        assert!(
            policy.decode_json::<Vec<u8>>(br#"{"a": 1}"#).is_err(),
            "a body that is not the type is refused"
        );
    }

    #[test]
    fn a_connectors_own_entry_stays_beside_the_payload_until_taken() {
        let policy = RawPolicy::keeping::<&str>(&[]);
        let mut e = envelope();
        e.raw = Some(json!({"_own": {"token": "kept as is"}}));
        policy.attach(std::slice::from_mut(&mut e), || {
            Some(object(json!({"text": "hi", "token": "t"})))
        });
        assert_eq!(
            take_raw_entry(&mut e, "_own"),
            Some(json!({"token": "kept as is"}))
        );
        assert_eq!(e.raw, Some(json!({"text": "hi", "token": MASK})));

        // Without raw kept, taking the entry leaves nothing.
        let mut e = envelope();
        e.raw = Some(json!({"_own": 1}));
        RawPolicy::default().attach(std::slice::from_mut(&mut e), || None);
        assert_eq!(take_raw_entry(&mut e, "_own"), Some(json!(1)));
        assert_eq!(e.raw, None);
    }
}
