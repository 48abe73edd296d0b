//! Web channel fixtures: HTTP requests carrying a visitor token
//! (`{visitor id}.{first 32 hex of HMAC-SHA256(secret, "visitor:" + id)}`), computed here.

#![allow(dead_code)]

use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_connectors::conformance::{Expect, Fixture, Signed};

use crate::common::{envelopes, error, fixture};

/// Channel id.
pub const CHANNEL_ID: &str = "web";
/// Channel secret.
pub const SECRET: &str = "web-test-secret-0123456789";
/// A visitor.
pub const VISITOR: &str = "01jabcdefghjkmnpqrstvwxyz0";

fn hmac_hex(parts: &[&[u8]]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()) {
        Ok(m) => m,
        Err(e) => panic!("hmac: {e}"),
    };
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The visitor token of `id`.
pub fn token(id: &str) -> String {
    format!("{id}.{}", &hmac_hex(&[b"visitor:", id.as_bytes()])[..32])
}

fn post(name: &str, description: &str, token: Option<&str>, body: &str, expect: Expect) -> Fixture {
    let ok = matches!(expect, Expect::Envelopes { .. });
    let mut headers = vec![("content-type", "application/json")];
    if let Some(t) = token {
        headers.push(("x-switchyard-visitor-token", t));
    }
    fixture(
        name,
        description,
        "POST",
        &headers,
        &[],
        body.as_bytes(),
        expect,
        if ok {
            Signed {
                body: false,
                body_range: None,
                headers: vec!["x-switchyard-visitor-token".into()],
                query: Vec::new(),
            }
        } else {
            Signed::default()
        },
    )
}

/// Every web channel fixture.
pub fn fixtures() -> Vec<Fixture> {
    let good = token(VISITOR);
    let user_hash = hmac_hex(&[b"user-42"]);
    let forged = format!("{VISITOR}.{}", "0".repeat(32));
    vec![
        post(
            "message",
            "A visitor's text message",
            Some(&good),
            r#"{"type":"message","client_id":"c-1","content":{"type":"text","text":"你好 👋"}}"#,
            envelopes(&["text"]),
        ),
        post(
            "image_caption",
            "A visitor's image by URL with a caption",
            Some(&good),
            r#"{"type":"message","client_id":"c-5","content":{"type":"image","media":{"url":"https://uploads.shop.test/v/9f2c/box.jpg","mime":"image/jpeg"},"caption":"箱子破了"}}"#,
            envelopes(&["image"]),
        ),
        post(
            "identify",
            "The site identifies the visitor with user_hash",
            Some(&good),
            &format!(
                r#"{{"type":"identify","client_id":"c-2","user_id":"user-42","user_hash":"{user_hash}","name":"Li Lei","identities":["phone::+8613800000000"]}}"#
            ),
            envelopes(&["event"]),
        ),
        post(
            "ping",
            "A keep-alive: valid, nothing routed",
            Some(&good),
            r#"{"type":"ping"}"#,
            envelopes(&[]),
        ),
        post(
            "identify_bad_hash",
            "An identify whose user_hash does not match",
            Some(&good),
            &format!(
                r#"{{"type":"identify","client_id":"c-3","user_id":"user-43","user_hash":"{user_hash}"}}"#
            ),
            error("bad_signature"),
        ),
        post(
            "forged_token",
            "A visitor token with a forged MAC",
            Some(&forged),
            r#"{"type":"ping"}"#,
            error("bad_signature"),
        ),
        post(
            "missing_token",
            "No visitor token",
            None,
            r#"{"type":"ping"}"#,
            error("bad_signature"),
        ),
        post(
            "malformed_json",
            "Not JSON",
            Some(&good),
            r#"{"type":"message""#,
            error("malformed"),
        ),
        post(
            "blank_text",
            "A blank text message",
            Some(&good),
            r#"{"type":"message","client_id":"c-4","content":{"type":"text","text":"   "}}"#,
            error("malformed"),
        ),
    ]
}
