//! Shared pieces of the fixture generators.

#![allow(dead_code)]

use chrono::{DateTime, Utc};
use switchyard_connectors::conformance::{Expect, Fixture, Signed};

/// Every fixture "arrives" at this instant, so outputs are reproducible.
pub const RECEIVED_AT: i64 = 1_795_510_800; // 2026-11-24T09:00:00Z

/// [`RECEIVED_AT`] as a time.
pub fn received_at() -> DateTime<Utc> {
    DateTime::from_timestamp(RECEIVED_AT, 0).unwrap_or_default()
}

/// A fixture.
#[allow(clippy::too_many_arguments)]
pub fn fixture(
    name: &str,
    description: &str,
    method: &str,
    headers: &[(&str, &str)],
    query: &[(&str, &str)],
    body: &[u8],
    expect: Expect,
    signed: Signed,
) -> Fixture {
    let mut f = Fixture {
        name: name.to_owned(),
        description: description.to_owned(),
        method: method.to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
            .collect(),
        query: query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: None,
        body_base64: None,
        received_at: received_at(),
        expect,
        signed,
    };
    f.set_body(body);
    f
}

/// Expect envelopes with these content types.
pub fn envelopes(types: &[&str]) -> Expect {
    Expect::Envelopes {
        content_types: types.iter().map(|t| (*t).to_owned()).collect(),
    }
}

/// Expect an error of this class.
pub fn error(class: &str) -> Expect {
    Expect::Error {
        class: class.to_owned(),
    }
}

/// JSON string literal of `s` (for JSON-in-a-string bodies).
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Expect a handshake answer.
pub fn handshake(status: u16, body: &str) -> Expect {
    Expect::Handshake {
        status,
        body: body.to_owned(),
    }
}
