//! WhatsApp Cloud API webhook fixtures: notifications as Meta sends them (compact JSON,
//! non-ASCII escaped as `\uXXXX`), signed here with `sha256=hex(HMAC-SHA256(app secret, body))`.

#![allow(dead_code)]

use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_connectors::conformance::{Expect, Fixture, Signed};

use crate::common::{RECEIVED_AT, envelopes, error, fixture, handshake};

/// The app's secret (signs webhooks).
pub const APP_SECRET: &str = "whatsapp-test-app-secret-0001";
/// The verify token typed into the dashboard.
pub const VERIFY_TOKEN: &str = "wa-verify-token-0001";
/// The business phone number's id (the channel's `phone_number_id`).
pub const PHONE_NUMBER_ID: &str = "106540352242922";
/// Its display number.
pub const DISPLAY_NUMBER: &str = "15550783881";
/// Another number of the same business account (not this channel's).
pub const OTHER_PHONE_NUMBER_ID: &str = "109876543210987";
/// The WhatsApp Business Account.
pub const WABA_ID: &str = "102290129340398";
/// A customer's wa_id.
pub const CUSTOMER: &str = "4915112345678";
/// The customer's profile name.
pub const CUSTOMER_NAME: &str = "Jonas";
/// The wamid of a reply of ours that WhatsApp reports `failed` (fixture `status_failed`).
pub const FAILED_WAMID: &str = "wamid.HBgNNDkxNTExMjM0NTY3OBUCABEYEjQ2RkFJTEVEMDAwMDAwMDAwMQA=";

/// `sha256=` + hex HMAC-SHA256 of `body` under `secret`.
pub fn sign_with(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of every length: this never returns early.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn sign(body: &[u8]) -> String {
    sign_with(APP_SECRET, body)
}

fn signed() -> Signed {
    Signed {
        body: true,
        body_range: None,
        headers: vec!["x-hub-signature-256".into()],
        query: Vec::new(),
    }
}

/// A signed webhook POST.
fn post(name: &str, description: &str, body: &str, expect: Expect) -> Fixture {
    let sig = sign(body.as_bytes());
    fixture(
        name,
        description,
        "POST",
        &[
            ("content-type", "application/json"),
            ("x-hub-signature-256", &sig),
        ],
        &[],
        body.as_bytes(),
        expect,
        signed(),
    )
}

/// A `messages` notification for `phone_number_id` with these `messages` / `statuses` items
/// (JSON text, comma-separated).
pub fn notification(phone_number_id: &str, messages: &str, statuses: &str) -> String {
    let mut value = format!(
        r#"{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"{DISPLAY_NUMBER}","phone_number_id":"{phone_number_id}"}}"#
    );
    if !messages.is_empty() {
        value.push_str(&format!(
            r#","contacts":[{{"profile":{{"name":"{CUSTOMER_NAME}"}},"wa_id":"{CUSTOMER}"}}],"messages":[{messages}]"#
        ));
    }
    if !statuses.is_empty() {
        value.push_str(&format!(r#","statuses":[{statuses}]"#));
    }
    value.push('}');
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"{WABA_ID}","changes":[{{"value":{value},"field":"messages"}}]}}]}}"#
    )
}

/// A `failed` status of our message `wamid`, with Meta's error object for code 131026
/// (message undeliverable), as the `messages` webhook reference shows it.
pub fn failed_status(wamid: &str) -> String {
    format!(
        r#"{{"id":"{wamid}","status":"failed","timestamp":"{}","recipient_id":"{CUSTOMER}","errors":[{{"code":131026,"title":"Message undeliverable","message":"Message undeliverable","error_data":{{"details":"Unable to deliver message. The recipient may not be a WhatsApp user or may use an old WhatsApp version."}},"href":"https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}}]}}"#,
        RECEIVED_AT - 1
    )
}

/// One customer message of `kind` with its type object `part` (JSON text).
pub fn message(id: &str, kind: &str, part: &str) -> String {
    let sent = RECEIVED_AT - 2;
    format!(
        r#"{{"from":"{CUSTOMER}","id":"{id}","timestamp":"{sent}","type":"{kind}","{kind}":{part}}}"#
    )
}

fn ours(messages: &str) -> String {
    notification(PHONE_NUMBER_ID, messages, "")
}

/// The dashboard's verification GET.
fn verification(name: &str, description: &str, token: &str, expect: Expect) -> Fixture {
    fixture(
        name,
        description,
        "GET",
        &[],
        &[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", token),
            ("hub.challenge", "1158201444"),
        ],
        b"",
        expect,
        Signed {
            body: false,
            body_range: None,
            headers: Vec::new(),
            query: vec!["hub.verify_token".into()],
        },
    )
}

/// Every WhatsApp fixture.
pub fn fixtures() -> Vec<Fixture> {
    let status = |id: &str, status: &str| {
        format!(
            r#"{{"id":"{id}","status":"{status}","timestamp":"{}","recipient_id":"{CUSTOMER}","conversation":{{"id":"conv-0001","origin":{{"type":"service"}}}},"pricing":{{"billable":true,"pricing_model":"CBP","category":"service"}}}}"#,
            RECEIVED_AT - 1
        )
    };
    let mut out = vec![
        verification(
            "handshake",
            "The dashboard verifies the callback URL: answered with hub.challenge as text",
            VERIFY_TOKEN,
            handshake(200, "1158201444"),
        ),
        verification(
            "handshake_bad_token",
            "A verification GET with another verify token",
            "not-our-token",
            error("bad_signature"),
        ),
        post(
            "text",
            "A customer's text (non-ASCII escaped as Meta sends it)",
            &ours(&message(
                "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAwMQA=",
                "text",
                r#"{"body":"Hallo! Wo bleibt meine Bestellung #42? \ud83d\udce6 Gr\u00fc\u00dfe"}"#,
            )),
            envelopes(&["text"]),
        ),
        post(
            "image",
            "A photo with a caption (media id, MIME type and the caption; no URL until fetched)",
            &ours(&message(
                "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAwMgA=",
                "image",
                r#"{"caption":"So kam das Paket an","mime_type":"image/jpeg","sha256":"y0V6dlZ0cGFxbGx0ZGVzdGhhc2gxMjM0NTY3ODkwYWI=","id":"1234567890123456"}"#,
            )),
            envelopes(&["image"]),
        ),
        post(
            "document",
            "A PDF with its file name and a caption",
            &ours(&message(
                "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAwMwA=",
                "document",
                r#"{"caption":"Rechnung","filename":"rechnung-2026-11.pdf","mime_type":"application/pdf","sha256":"c2hhMjU2LW9mLXRoZS1wZGYtZm9yLXRlc3RzLTAwMDE=","id":"2345678901234567"}"#,
            )),
            envelopes(&["file"]),
        ),
        post(
            "location",
            "A shared place",
            &ours(&message(
                "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAwNAA=",
                "location",
                r#"{"latitude":52.520008,"longitude":13.404954,"name":"Packstation 123","address":"Alexanderplatz 1, 10178 Berlin"}"#,
            )),
            envelopes(&["location"]),
        ),
        post(
            "interactive_button_reply",
            "The customer tapped a reply button we offered",
            &ours(&format!(
                r#"{{"context":{{"from":"{DISPLAY_NUMBER}","id":"wamid.HBgNNDkxNTExMjM0NTY3OBUCABEYEjBBQkNERUYwMTIzNDU2Nzg5AA=="}},"from":"{CUSTOMER}","id":"wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAwNQA=","timestamp":"{}","type":"interactive","interactive":{{"type":"button_reply","button_reply":{{"id":"track-order","title":"Sendung verfolgen"}}}}}}"#,
                RECEIVED_AT - 2
            )),
            envelopes(&["text"]),
        ),
        post(
            "interactive_list_reply",
            "The customer picked a row of a list we offered",
            &ours(&message(
                "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAwNgA=",
                "interactive",
                r#"{"type":"list_reply","list_reply":{"id":"ship-express","title":"Express","description":"1-2 Werktage"}}"#,
            )),
            envelopes(&["text"]),
        ),
        post(
            "reaction",
            "The customer reacted to one of our messages",
            &ours(&message(
                "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAwNwA=",
                "reaction",
                r#"{"message_id":"wamid.HBgNNDkxNTExMjM0NTY3OBUCABEYEjBBQkNERUYwMTIzNDU2Nzg5AA==","emoji":"\ud83d\udc4d"}"#,
            )),
            envelopes(&["event"]),
        ),
        post(
            "contacts",
            "A shared contact card",
            &ours(&format!(
                r#"{{"from":"{CUSTOMER}","id":"wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAwOAA=","timestamp":"{}","type":"contacts","contacts":[{{"name":{{"formatted_name":"Anna Schmidt","first_name":"Anna","last_name":"Schmidt"}},"phones":[{{"phone":"+49 151 23456789","wa_id":"4915123456789","type":"CELL"}}]}}]}}"#,
                RECEIVED_AT - 2
            )),
            envelopes(&["card"]),
        ),
        post(
            "batch_audio_video_sticker",
            "Three messages in one notification: a voice note, a video with a caption and a sticker",
            &ours(&[
                message(
                    "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAwOQA=",
                    "audio",
                    r#"{"mime_type":"audio/ogg; codecs=opus","sha256":"YXVkaW8tc2hhMjU2LWZvci10ZXN0cy0wMDAwMDAwMDE=","id":"3456789012345678","voice":true}"#,
                ),
                message(
                    "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAxMAA=",
                    "video",
                    r#"{"caption":"Beim Auspacken","mime_type":"video/mp4","sha256":"dmlkZW8tc2hhMjU2LWZvci10ZXN0cy0wMDAwMDAwMDE=","id":"4567890123456789"}"#,
                ),
                message(
                    "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAxMQA=",
                    "sticker",
                    r#"{"mime_type":"image/webp","sha256":"c3RpY2tlci1zaGEyNTYtZm9yLXRlc3RzLTAwMDAwMDE=","id":"5678901234567890","animated":false}"#,
                ),
            ]
            .join(",")),
            envelopes(&["audio", "video", "sticker"]),
        ),
        post(
            "unknown_type",
            "A message type the connector does not map: kept as unsupported content",
            &ours(&message(
                "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAxMgA=",
                "order",
                r#"{"catalog_id":"9876543210","product_items":[{"product_retailer_id":"sku-1","quantity":"1","item_price":"9.99","currency":"EUR"}]}"#,
            )),
            envelopes(&["unsupported"]),
        ),
        post(
            "statuses_only",
            "Delivery reports of our own sends: valid, nothing routed",
            &notification(
                PHONE_NUMBER_ID,
                "",
                &[
                    status("wamid.HBgNNDkxNTExMjM0NTY3OBUCABEYEjBBQkNERUYwMTIzNDU2Nzg5AA==", "sent"),
                    status("wamid.HBgNNDkxNTExMjM0NTY3OBUCABEYEjBBQkNERUYwMTIzNDU2Nzg5AA==", "delivered"),
                ]
                .join(","),
            ),
            envelopes(&[]),
        ),
        post(
            "status_failed",
            "WhatsApp could not deliver a reply it had accepted: a notice that deliver reports \
             as message.failed, never routed (the `sent` status before it is ignored)",
            &notification(
                PHONE_NUMBER_ID,
                "",
                &[status(FAILED_WAMID, "sent"), failed_status(FAILED_WAMID)].join(","),
            ),
            envelopes(&["event"]),
        ),
        post(
            "other_phone_number",
            "A message to another number of the same business account: not routed here",
            &notification(
                OTHER_PHONE_NUMBER_ID,
                &message(
                    "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAxMwA=",
                    "text",
                    r#"{"body":"Hallo?"}"#,
                ),
                "",
            ),
            error("unsupported"),
        ),
        post(
            "other_field",
            "A change of another webhook field (account_update): not routed",
            &format!(
                r#"{{"object":"whatsapp_business_account","entry":[{{"id":"{WABA_ID}","changes":[{{"value":{{"phone_number":"{DISPLAY_NUMBER}","event":"VERIFIED_ACCOUNT"}},"field":"account_update"}}]}}]}}"#
            ),
            error("unsupported"),
        ),
        post(
            "empty_text",
            "A text message without text: malformed",
            &ours(&message(
                "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAxNAA=",
                "text",
                r#"{"body":""}"#,
            )),
            error("malformed"),
        ),
        post(
            "malformed_json",
            "Correctly signed, but not JSON",
            r#"{"object":"whatsapp_business_account","entry":[{"#,
            error("malformed"),
        ),
    ];
    // Correctly signed bytes that are not UTF-8 inside a JSON string.
    let mut bad_utf8 = ours(&message(
        "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAxNQA=",
        "text",
        r#"{"body":"XX"}"#,
    ))
    .into_bytes();
    if let Some(pos) = bad_utf8.windows(4).position(|w| w == b"\"XX\"") {
        bad_utf8[pos + 1] = 0xff;
        bad_utf8[pos + 2] = 0xfe;
    }
    let sig = sign(&bad_utf8);
    out.push(fixture(
        "invalid_utf8",
        "Correctly signed, but the JSON holds bytes that are not UTF-8",
        "POST",
        &[
            ("content-type", "application/json"),
            ("x-hub-signature-256", &sig),
        ],
        &[],
        &bad_utf8,
        error("malformed"),
        signed(),
    ));
    let text = ours(&message(
        "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAxNgA=",
        "text",
        r#"{"body":"Erstatten Sie 10 EUR"}"#,
    ));
    let other_sig = sign_with("some-other-app-secret", text.as_bytes());
    out.push(fixture(
        "bad_signature",
        "Signed with another app secret",
        "POST",
        &[
            ("content-type", "application/json"),
            ("x-hub-signature-256", &other_sig),
        ],
        &[],
        text.as_bytes(),
        error("bad_signature"),
        Signed::default(),
    ));
    out.push(fixture(
        "missing_signature",
        "No X-Hub-Signature-256 header",
        "POST",
        &[("content-type", "application/json")],
        &[],
        text.as_bytes(),
        error("bad_signature"),
        Signed::default(),
    ));
    let tampered = text.replace("10 EUR", "99 EUR");
    let sig = sign(text.as_bytes());
    out.push(fixture(
        "tampered_body",
        "The signature of the original body over a changed body",
        "POST",
        &[
            ("content-type", "application/json"),
            ("x-hub-signature-256", &sig),
        ],
        &[],
        tampered.as_bytes(),
        error("bad_signature"),
        Signed::default(),
    ));
    out
}
