//! The body of `PATCH /v1/customers/{id}` and the rules it must keep: what a helpdesk or CRM
//! may change of a customer (tags, attributes), checked before the store is asked. These are
//! the limits of one request; the store keeps those of a profile
//! ([`Store::update_customer`](switchyard_core::store::Store::update_customer)).

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value};
use switchyard_core::model::{MAX_TAG_CHARS, is_valid_tag};
use switchyard_core::store::CustomerUpdate;

use super::ApiError;

/// Most tags in `add_tags`, and in `remove_tags`, of one request.
pub const MAX_TAGS_PER_REQUEST: usize = 50;
/// Most entries in `attributes` of one request.
pub const MAX_ATTRIBUTES_PER_REQUEST: usize = 50;
/// Longest attribute name, in characters.
pub const MAX_ATTRIBUTE_NAME_CHARS: usize = 64;
/// Longest attribute value, in bytes of compact JSON.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 4096;

/// The error code of a body that breaks these rules (422).
pub const INVALID_CUSTOMER_UPDATE: &str = "invalid_customer_update";

/// Body of `PATCH /v1/customers/{id}`: every field optional, at least one not empty.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerPatch {
    /// Tags to add (at the end, each once).
    #[serde(default)]
    add_tags: Vec<String>,
    /// Tags to remove.
    #[serde(default)]
    remove_tags: Vec<String>,
    /// A JSON Merge Patch of the attributes: a value sets one, `null` removes it.
    #[serde(default)]
    attributes: Map<String, Value>,
}

/// Why a [`CustomerPatch`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPatch {
    /// No field asks for a change.
    #[error("nothing to change: give `add_tags`, `remove_tags` or `attributes`")]
    Empty,
    /// A tag list is too long.
    #[error("`{list}` has {count} tags; at most {MAX_TAGS_PER_REQUEST} per request")]
    TooManyTags {
        /// `add_tags` or `remove_tags`.
        list: &'static str,
        /// How many it has.
        count: usize,
    },
    /// A tag breaks [`is_valid_tag`].
    #[error(
        "`{list}[{index}]`: a tag is 1 to {MAX_TAG_CHARS} characters without control characters"
    )]
    BadTag {
        /// `add_tags` or `remove_tags`.
        list: &'static str,
        /// Its position in the list.
        index: usize,
    },
    /// A tag is in both lists, so what is wanted is unclear.
    #[error("tag {0:?} is in both `add_tags` and `remove_tags`")]
    AddedAndRemoved(String),
    /// `attributes` has too many entries.
    #[error("`attributes` has {0} entries; at most {MAX_ATTRIBUTES_PER_REQUEST} per request")]
    TooManyAttributes(usize),
    /// An attribute name is empty, too long, or has control characters.
    #[error(
        "`attributes`: the name {0:?} is not 1 to {MAX_ATTRIBUTE_NAME_CHARS} characters without \
         control characters"
    )]
    BadAttributeName(String),
    /// An attribute value is too large.
    #[error(
        "`attributes.{name}`: the value is {bytes} bytes of JSON; at most \
         {MAX_ATTRIBUTE_VALUE_BYTES}"
    )]
    AttributeTooLarge {
        /// The attribute.
        name: String,
        /// Its value's size, in bytes of compact JSON.
        bytes: usize,
    },
}

impl From<InvalidPatch> for ApiError {
    fn from(e: InvalidPatch) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            INVALID_CUSTOMER_UPDATE,
            e.to_string(),
        )
    }
}

impl CustomerPatch {
    /// The store's update, if the body keeps every rule.
    pub fn into_update(self) -> Result<CustomerUpdate, InvalidPatch> {
        let update = CustomerUpdate {
            add_tags: self.add_tags,
            remove_tags: self.remove_tags,
            attributes: self.attributes,
        };
        if update.is_empty() {
            return Err(InvalidPatch::Empty);
        }
        for (list, tags) in [
            ("add_tags", &update.add_tags),
            ("remove_tags", &update.remove_tags),
        ] {
            if tags.len() > MAX_TAGS_PER_REQUEST {
                return Err(InvalidPatch::TooManyTags {
                    list,
                    count: tags.len(),
                });
            }
            if let Some(index) = tags.iter().position(|tag| !is_valid_tag(tag)) {
                return Err(InvalidPatch::BadTag { list, index });
            }
        }
        if let Some(both) = update
            .add_tags
            .iter()
            .find(|tag| update.remove_tags.contains(tag))
        {
            return Err(InvalidPatch::AddedAndRemoved(both.clone()));
        }
        if update.attributes.len() > MAX_ATTRIBUTES_PER_REQUEST {
            return Err(InvalidPatch::TooManyAttributes(update.attributes.len()));
        }
        for (name, value) in &update.attributes {
            if !is_valid_attribute_name(name) {
                return Err(InvalidPatch::BadAttributeName(name.clone()));
            }
            let bytes = json_len(value);
            if bytes > MAX_ATTRIBUTE_VALUE_BYTES {
                return Err(InvalidPatch::AttributeTooLarge {
                    name: name.clone(),
                    bytes,
                });
            }
        }
        Ok(update)
    }
}

/// Whether `name` can name an attribute: 1 to [`MAX_ATTRIBUTE_NAME_CHARS`] characters, none of
/// them a control character.
fn is_valid_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_ATTRIBUTE_NAME_CHARS
        && !name.chars().any(char::is_control)
}

/// The length of `value` as compact JSON.
fn json_len(value: &Value) -> usize {
    /// Counts what is written, keeping nothing.
    struct Counter(usize);

    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let mut counter = Counter(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patch(body: Value) -> Result<CustomerUpdate, InvalidPatch> {
        serde_json::from_value::<CustomerPatch>(body)
            .expect("a body of the right shape")
            .into_update()
    }

    #[test]
    fn a_valid_patch_becomes_the_update() {
        let update = patch(json!({
            "add_tags": ["vip", "金卡"],
            "remove_tags": ["trial"],
            "attributes": {"plan": "gold", "old": null, "nested": {"a": [1, 2]}},
        }))
        .unwrap();
        assert_eq!(update.add_tags, ["vip", "金卡"]);
        assert_eq!(update.remove_tags, ["trial"]);
        assert_eq!(update.attributes["old"], Value::Null);
        assert_eq!(
            patch(json!({"attributes": {"x": null}}))
                .unwrap()
                .attributes
                .len(),
            1
        );
        let longest = "t".repeat(MAX_TAG_CHARS);
        let full: Vec<String> = (0..MAX_TAGS_PER_REQUEST).map(|i| format!("t{i}")).collect();
        assert!(patch(json!({"add_tags": [longest], "remove_tags": full})).is_ok());
    }

    #[test]
    fn every_rule_is_checked() {
        let too_many: Vec<String> = (0..=MAX_TAGS_PER_REQUEST)
            .map(|i| format!("t{i}"))
            .collect();
        let many_attributes: Map<String, Value> = (0..=MAX_ATTRIBUTES_PER_REQUEST)
            .map(|i| (format!("a{i}"), json!(i)))
            .collect();
        let cases = [
            (json!({}), InvalidPatch::Empty),
            (
                json!({"add_tags": [], "remove_tags": [], "attributes": {}}),
                InvalidPatch::Empty,
            ),
            (
                json!({"remove_tags": too_many}),
                InvalidPatch::TooManyTags {
                    list: "remove_tags",
                    count: MAX_TAGS_PER_REQUEST + 1,
                },
            ),
            (
                json!({"add_tags": ["ok", ""]}),
                InvalidPatch::BadTag {
                    list: "add_tags",
                    index: 1,
                },
            ),
            (
                json!({"add_tags": ["t".repeat(MAX_TAG_CHARS + 1)]}),
                InvalidPatch::BadTag {
                    list: "add_tags",
                    index: 0,
                },
            ),
            (
                json!({"remove_tags": ["line\nbreak"]}),
                InvalidPatch::BadTag {
                    list: "remove_tags",
                    index: 0,
                },
            ),
            (
                json!({"add_tags": ["vip"], "remove_tags": ["vip"]}),
                InvalidPatch::AddedAndRemoved("vip".into()),
            ),
            (
                json!({"attributes": many_attributes}),
                InvalidPatch::TooManyAttributes(MAX_ATTRIBUTES_PER_REQUEST + 1),
            ),
            (
                json!({"attributes": {"": 1}}),
                InvalidPatch::BadAttributeName(String::new()),
            ),
            (
                json!({"attributes": {"n".repeat(MAX_ATTRIBUTE_NAME_CHARS + 1): 1}}),
                InvalidPatch::BadAttributeName("n".repeat(MAX_ATTRIBUTE_NAME_CHARS + 1)),
            ),
            (
                json!({"attributes": {"bio": "x".repeat(MAX_ATTRIBUTE_VALUE_BYTES)}}),
                InvalidPatch::AttributeTooLarge {
                    name: "bio".into(),
                    bytes: MAX_ATTRIBUTE_VALUE_BYTES + 2,
                },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(patch(body.clone()), Err(want), "{body}");
        }
        // Exactly at the size limit: the two quotes count.
        let fits = "x".repeat(MAX_ATTRIBUTE_VALUE_BYTES - 2);
        assert!(patch(json!({"attributes": {"bio": fits}})).is_ok());
    }

    #[test]
    fn an_invalid_patch_answers_422_with_its_reason() {
        let e = ApiError::from(InvalidPatch::Empty);
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.code, INVALID_CUSTOMER_UPDATE);
        assert!(e.message.contains("nothing to change"), "{}", e.message);
    }
}
