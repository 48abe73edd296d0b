//! API channel fixtures, signed here with `sha256=hex(HMAC-SHA256(secret, ts + "." + body))`.

#![allow(dead_code)]

use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_connectors::conformance::{Expect, Fixture, Signed};

use crate::common::{RECEIVED_AT, envelopes, error, fixture};

/// Channel id.
pub const CHANNEL_ID: &str = "shop-app";
/// Channel secret.
pub const SECRET: &str = "api-test-secret-0123456789";

fn sign(secret: &str, ts: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(e) => panic!("hmac: {e}"),
    };
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn post(
    name: &str,
    description: &str,
    body: &str,
    ts: i64,
    secret: &str,
    content_type: &str,
    expect: Expect,
) -> Fixture {
    let ok = matches!(expect, Expect::Envelopes { .. });
    let signature = sign(secret, ts, body.as_bytes());
    fixture(
        name,
        description,
        "POST",
        &[
            ("content-type", content_type),
            ("x-switchyard-timestamp", &ts.to_string()),
            ("x-switchyard-signature", &signature),
        ],
        &[],
        body.as_bytes(),
        expect,
        if ok {
            Signed {
                body: true,
                body_range: None,
                headers: vec![
                    "x-switchyard-timestamp".into(),
                    "x-switchyard-signature".into(),
                ],
                query: Vec::new(),
            }
        } else {
            Signed::default()
        },
    )
}

/// Every API channel fixture.
pub fn fixtures() -> Vec<Fixture> {
    let json = "application/json";
    let ts = RECEIVED_AT - 2;
    let text = r#"{"message_id":"m-1","user":{"id":"42","name":"Li Lei","identities":["phone::+8613800000000"]},"content":{"type":"text","text":"你好"},"sent_at":"2026-11-24T08:59:58Z"}"#;
    vec![
        post(
            "text",
            "A text message with a vouched phone identity",
            text,
            ts,
            SECRET,
            json,
            envelopes(&["text"]),
        ),
        post(
            "image",
            "An image by URL, no sent_at",
            r#"{"message_id":"m-2","user":{"id":"42"},"content":{"type":"image","media":{"url":"https://cdn.shop.test/p/1.jpg","mime":"image/jpeg","size":52311}}}"#,
            ts,
            SECRET,
            "application/json; charset=utf-8",
            envelopes(&["image"]),
        ),
        post(
            "image_caption",
            "An image by URL with a caption (part of the content, as in message.v1)",
            r#"{"message_id":"m-2c","user":{"id":"42"},"content":{"type":"image","media":{"url":"https://cdn.shop.test/p/2.jpg","mime":"image/jpeg"},"caption":"盒子坏了 📦"}}"#,
            ts,
            SECRET,
            json,
            envelopes(&["image"]),
        ),
        post(
            "location",
            "A location",
            r#"{"message_id":"m-3","user":{"id":"42"},"content":{"type":"location","latitude":31.2304,"longitude":121.4737,"label":"人民广场"}}"#,
            ts,
            SECRET,
            json,
            envelopes(&["location"]),
        ),
        post(
            "card",
            "An order card with attributes",
            r#"{"message_id":"m-4","user":{"id":"42"},"content":{"type":"card","title":"Order #42","url":"https://shop.test/o/42","attributes":{"order_id":"42","total":"99.00"}}}"#,
            ts,
            SECRET,
            json,
            envelopes(&["card"]),
        ),
        post(
            "bad_signature",
            "Signed with another secret",
            text,
            ts,
            "another-secret-0123456789",
            json,
            error("bad_signature"),
        ),
        post(
            "stale_timestamp",
            "Correctly signed 301 s before it arrived: a replay",
            text,
            RECEIVED_AT - 301,
            SECRET,
            json,
            error("bad_signature"),
        ),
        post(
            "malformed_json",
            "Correctly signed, not JSON",
            r#"{"message_id":"#,
            ts,
            SECRET,
            json,
            error("malformed"),
        ),
        post(
            "unknown_field",
            "Correctly signed, with a field the contract does not have",
            r#"{"message_id":"m-5","user":{"id":"42"},"content":{"type":"text","text":"x"},"priority":"high"}"#,
            ts,
            SECRET,
            json,
            error("malformed"),
        ),
        post(
            "wrong_content_type",
            "Correctly signed, sent as a form",
            text,
            ts,
            SECRET,
            "application/x-www-form-urlencoded",
            error("malformed"),
        ),
        post(
            "empty_message_id",
            "Correctly signed, empty message_id",
            r#"{"message_id":"","user":{"id":"42"},"content":{"type":"text","text":"x"}}"#,
            ts,
            SECRET,
            json,
            error("malformed"),
        ),
    ]
}
