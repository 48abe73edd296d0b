//! Identity keys: `kind:scope:value` strings naming one person on one system.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How much an identity key can be trusted to name one person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdentityStrength {
    /// Verified by a platform or a backend: merges profiles automatically.
    Strong,
    /// Anonymous (a web visitor cookie): merges only through an explicit identify or link.
    Weak,
}

/// An identity key `kind:scope:value`, e.g. `wechat_unionid::uXyZ` or `app_user:shop-app:42`.
///
/// `kind` is `[a-z0-9_]+`; `scope` may be empty; `value` is everything after the second colon
/// and may itself contain colons.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdentityKey(String);

impl JsonSchema for IdentityKey {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IdentityKey".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Identity key `kind:scope:value`, e.g. `wechat_unionid::uXyZ`.",
            "pattern": "^[a-z0-9_]+:[^:]*:.+$",
            "maxLength": 512
        })
    }
}

/// Why a string is not an identity key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("identity key `{key}` is invalid: {reason} (expected `kind:scope:value`)")]
pub struct InvalidIdentityKey {
    key: String,
    reason: &'static str,
}

/// Identity kinds that are anonymous and therefore weak.
const WEAK_KINDS: &[&str] = &["web_visitor"];

impl IdentityKey {
    /// Builds a key from its parts.
    pub fn new(kind: &str, scope: &str, value: &str) -> Result<Self, InvalidIdentityKey> {
        format!("{kind}:{scope}:{value}").parse()
    }

    /// The key's kind (`wechat_openid`, `phone`, ...).
    pub fn kind(&self) -> &str {
        self.0.split(':').next().unwrap_or_default()
    }

    /// The key's scope (may be empty).
    pub fn scope(&self) -> &str {
        self.0.split(':').nth(1).unwrap_or_default()
    }

    /// The key's value.
    pub fn value(&self) -> &str {
        self.0.splitn(3, ':').nth(2).unwrap_or_default()
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this kind of key merges profiles on its own.
    pub fn default_strength(&self) -> IdentityStrength {
        if WEAK_KINDS.contains(&self.kind()) {
            IdentityStrength::Weak
        } else {
            IdentityStrength::Strong
        }
    }
}

impl FromStr for IdentityKey {
    type Err = InvalidIdentityKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidIdentityKey {
            key: s.to_owned(),
            reason,
        };
        let mut parts = s.splitn(3, ':');
        let kind = parts.next().unwrap_or_default();
        let (Some(_scope), Some(value)) = (parts.next(), parts.next()) else {
            return Err(invalid("it has fewer than three `:`-separated parts"));
        };
        if kind.is_empty()
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid("the kind must be non-empty `[a-z0-9_]+`"));
        }
        if value.is_empty() {
            return Err(invalid("the value is empty"));
        }
        if s.len() > 512 {
            return Err(invalid("it is longer than 512 bytes"));
        }
        Ok(IdentityKey(s.to_owned()))
    }
}

impl TryFrom<String> for IdentityKey {
    type Error = InvalidIdentityKey;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<IdentityKey> for String {
    fn from(k: IdentityKey) -> String {
        k.0
    }
}

impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parts_and_keeps_colons_in_value() {
        let k: IdentityKey = "app_user:shop-app:a:b".parse().unwrap();
        assert_eq!(
            (k.kind(), k.scope(), k.value()),
            ("app_user", "shop-app", "a:b")
        );
        let k: IdentityKey = "wechat_unionid::uXyZ".parse().unwrap();
        assert_eq!((k.scope(), k.value()), ("", "uXyZ"));
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in [
            "", "phone", "phone:", "phone::", "Phone::1", ":x:y", "a b:c:d",
        ] {
            assert!(
                bad.parse::<IdentityKey>().is_err(),
                "{bad} should be invalid"
            );
        }
    }

    #[test]
    fn web_visitors_are_weak_everything_else_strong() {
        let weak: IdentityKey = "web_visitor:web:9f2c".parse().unwrap();
        let strong: IdentityKey = "phone::+8613800000000".parse().unwrap();
        assert_eq!(weak.default_strength(), IdentityStrength::Weak);
        assert_eq!(strong.default_strength(), IdentityStrength::Strong);
    }

    #[test]
    fn serde_rejects_invalid_keys() {
        assert!(serde_json::from_str::<IdentityKey>("\"nope\"").is_err());
        let k: IdentityKey = serde_json::from_str("\"phone::1\"").unwrap();
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"phone::1\"");
    }
}
