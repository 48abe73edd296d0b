//! LINE webhook fixtures: bodies shaped like the Messaging API reference's webhook examples
//! (`destination` + `events`), signed here with base64(HMAC-SHA256(channel secret, body)).

#![allow(dead_code)]

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_connectors::conformance::{Expect, Fixture, Signed};

use crate::common::{RECEIVED_AT, envelopes, error, fixture};

/// The test channel's secret (signs webhooks).
pub const CHANNEL_SECRET: &str = "8c5a1e0f3b7d4c2a9e6f1b0d7c3a5e91";
/// The test channel's access token (authorizes pushes).
pub const CHANNEL_ACCESS_TOKEN: &str = "line-test-channel-access-token-0001";
/// The bot's user id (`destination`).
pub const DESTINATION: &str = "Uf0e1d2c3b4a5968778695a4b3c2d1e0f";
/// A customer.
pub const CUSTOMER: &str = "U1234567890abcdef1234567890abcdef";
/// Another customer.
pub const OTHER_CUSTOMER: &str = "U2a3b4c5d6e7f80910a1b2c3d4e5f6071";
/// A group chat the bot is in.
pub const GROUP: &str = "Ca56f94637c2b3d4e5f60718293a4b5c6";

/// base64(HMAC-SHA256(secret, body)), computed independently of the connector.
pub fn sign_with(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn signed() -> Signed {
    Signed {
        body: true,
        body_range: None,
        headers: vec!["x-line-signature".into()],
        query: Vec::new(),
    }
}

fn request(
    name: &str,
    description: &str,
    body: &[u8],
    sig: Option<&str>,
    expect: Expect,
    signed_parts: Signed,
) -> Fixture {
    let mut headers = vec![
        ("content-type", "application/json; charset=utf-8"),
        ("user-agent", "LineBotWebhook/2.0"),
    ];
    if let Some(sig) = sig {
        headers.push(("x-line-signature", sig));
    }
    fixture(
        name,
        description,
        "POST",
        &headers,
        &[],
        body,
        expect,
        signed_parts,
    )
}

/// A correctly signed webhook POST.
fn post(name: &str, description: &str, body: &str, expect: Expect) -> Fixture {
    let sig = sign_with(CHANNEL_SECRET, body.as_bytes());
    request(
        name,
        description,
        body.as_bytes(),
        Some(&sig),
        expect,
        signed(),
    )
}

/// A webhook body holding `events` (already JSON).
pub fn webhook(events: &[String]) -> String {
    format!(
        r#"{{"destination":"{DESTINATION}","events":[{}]}}"#,
        events.join(",")
    )
}

/// The `source` of a one-to-one chat with `user`.
pub fn user_source(user: &str) -> String {
    format!(r#"{{"type":"user","userId":"{user}"}}"#)
}

/// One event in the reference's key order; `tail` is the event-specific part (`"message":{…}`,
/// `"postback":{…}`, or empty).
pub fn event(
    kind: &str,
    mode: &str,
    source: &str,
    event_id: Option<&str>,
    age_ms: i64,
    tail: &str,
) -> String {
    let timestamp = RECEIVED_AT * 1000 - age_ms;
    let id = event_id
        .map(|id| format!(r#""webhookEventId":"{id}","#))
        .unwrap_or_default();
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!(",{tail}")
    };
    format!(
        r#"{{"replyToken":"b60d432864f44d079f6d8efe86cf404b","type":"{kind}","mode":"{mode}","timestamp":{timestamp},"source":{source},{id}"deliveryContext":{{"isRedelivery":false}}{tail}}}"#
    )
}

/// An active-mode message event from `user` with this `message` object.
pub fn user_message(user: &str, event_id: &str, age_ms: i64, message: &str) -> String {
    event(
        "message",
        "active",
        &user_source(user),
        Some(event_id),
        age_ms,
        &format!(r#""message":{message}"#),
    )
}

const TEXT_MESSAGE: &str = r#"{"id":"533466181562843137","type":"text","quoteToken":"q3Plxr4AgKd_text-0001","text":"@Sally 你好 (love) Where is order #42?","emojis":[{"index":10,"length":6,"productId":"5ac1bfd5040ab15980c9b435","emojiId":"001"}],"mention":{"mentionees":[{"index":0,"length":6,"type":"user","userId":"U0123456789abcdef0123456789abcdef","isSelf":false}]}}"#;

/// Every LINE fixture.
pub fn fixtures() -> Vec<Fixture> {
    let text_event = user_message(CUSTOMER, "01JDQ8X3K5M7N9P1R3T5V7X9A1", 1500, TEXT_MESSAGE);
    let mut out = vec![
        post(
            "verify_empty_events",
            "The console's Verify button: a signed webhook with no events (200, nothing routed)",
            &format!(r#"{{"destination":"{DESTINATION}","events":[]}}"#),
            envelopes(&[]),
        ),
        post(
            "text",
            "A text message with a LINE emoji (its alternative text) and a mention, kept as plain text",
            &webhook(std::slice::from_ref(&text_event)),
            envelopes(&["text"]),
        ),
        post(
            "text_redelivered",
            "LINE's redelivery of the text event (isRedelivery): the same dedupe key",
            &webhook(&[text_event.replace(r#""isRedelivery":false"#, r#""isRedelivery":true"#)]),
            envelopes(&["text"]),
        ),
        post(
            "image",
            "An image held by LINE: media id = message id",
            &webhook(&[user_message(
                CUSTOMER,
                "01JDQ8X3K5M7N9P1R3T5V7X9A2",
                1200,
                r#"{"id":"533466181562843138","type":"image","quoteToken":"q3Plxr4AgKd_image-0001","contentProvider":{"type":"line"},"imageSet":{"id":"E005D41A7288F41B65593ED38FF6E9834B046AB36A37921A56BC236F13A91855","index":1,"total":1}}"#,
            )]),
            envelopes(&["image"]),
        ),
        post(
            "image_external",
            "An image from an external content provider: its URL instead of a media id",
            &webhook(&[user_message(
                CUSTOMER,
                "01JDQ8X3K5M7N9P1R3T5V7X9A3",
                1100,
                r#"{"id":"533466181562843139","type":"image","quoteToken":"q3Plxr4AgKd_image-0002","contentProvider":{"type":"external","originalContentUrl":"https://cdn.example.com/photos/original.jpg","previewImageUrl":"https://cdn.example.com/photos/preview.jpg"}}"#,
            )]),
            envelopes(&["image"]),
        ),
        post(
            "video",
            "A video held by LINE",
            &webhook(&[user_message(
                CUSTOMER,
                "01JDQ8X3K5M7N9P1R3T5V7X9A4",
                1000,
                r#"{"id":"533466181562843140","type":"video","quoteToken":"q3Plxr4AgKd_video-0001","duration":60000,"contentProvider":{"type":"line"}}"#,
            )]),
            envelopes(&["video"]),
        ),
        post(
            "video_external",
            "A video from an external content provider: its URL, and the preview as thumbnail",
            &webhook(&[user_message(
                CUSTOMER,
                "01JDQ8X3K5M7N9P1R3T5V7X9A9",
                950,
                r#"{"id":"533466181562843145","type":"video","quoteToken":"q3Plxr4AgKd_video-0002","duration":30000,"contentProvider":{"type":"external","originalContentUrl":"https://cdn.example.com/videos/unboxing.mp4","previewImageUrl":"https://cdn.example.com/videos/unboxing.jpg"}}"#,
            )]),
            envelopes(&["video"]),
        ),
        post(
            "audio",
            "A voice message held by LINE",
            &webhook(&[user_message(
                CUSTOMER,
                "01JDQ8X3K5M7N9P1R3T5V7X9A5",
                900,
                r#"{"id":"533466181562843141","type":"audio","duration":12000,"contentProvider":{"type":"line"}}"#,
            )]),
            envelopes(&["audio"]),
        ),
        post(
            "file",
            "A file: name and size",
            &webhook(&[user_message(
                CUSTOMER,
                "01JDQ8X3K5M7N9P1R3T5V7X9A6",
                800,
                r#"{"id":"533466181562843142","type":"file","fileName":"invoice-42.pdf","fileSize":23456}"#,
            )]),
            envelopes(&["file"]),
        ),
        post(
            "sticker",
            "A sticker: media id = packageId:stickerId",
            &webhook(&[user_message(
                CUSTOMER,
                "01JDQ8X3K5M7N9P1R3T5V7X9A7",
                700,
                r#"{"id":"533466181562843143","type":"sticker","quoteToken":"q3Plxr4AgKd_sticker-0001","stickerId":"52002734","packageId":"11537","stickerResourceType":"ANIMATION","keywords":["Happy","Yay"]}"#,
            )]),
            envelopes(&["sticker"]),
        ),
        post(
            "location",
            "A shared location with a title and an address",
            &webhook(&[user_message(
                CUSTOMER,
                "01JDQ8X3K5M7N9P1R3T5V7X9A8",
                600,
                r#"{"id":"533466181562843144","type":"location","title":"Tokyo Tower","address":"4 Chome-2-8 Shibakoen, Minato City, Tokyo","latitude":35.65910807942215,"longitude":139.70372892916203}"#,
            )]),
            envelopes(&["location"]),
        ),
        post(
            "two_events",
            "One webhook, two customers' messages: one envelope each, in order",
            &webhook(&[
                user_message(
                    CUSTOMER,
                    "01JDQ8X3K5M7N9P1R3T5V7X9B1",
                    2500,
                    r#"{"id":"533466181562843150","type":"text","quoteToken":"q3Plxr4AgKd_two-0001","text":"first"}"#,
                ),
                user_message(
                    OTHER_CUSTOMER,
                    "01JDQ8X3K5M7N9P1R3T5V7X9B2",
                    2400,
                    r#"{"id":"533466181562843151","type":"sticker","stickerId":"1988","packageId":"446","stickerResourceType":"STATIC"}"#,
                ),
            ]),
            envelopes(&["text", "sticker"]),
        ),
        post(
            "follow_and_message",
            "A follow event then a message in one webhook: only the message is routed",
            &webhook(&[
                event(
                    "follow",
                    "active",
                    &user_source(CUSTOMER),
                    Some("01JDQ8X3K5M7N9P1R3T5V7X9C1"),
                    3000,
                    r#""follow":{"isUnblocked":false}"#,
                ),
                user_message(
                    CUSTOMER,
                    "01JDQ8X3K5M7N9P1R3T5V7X9C2",
                    2000,
                    r#"{"id":"533466181562843160","type":"text","quoteToken":"q3Plxr4AgKd_follow-0001","text":"hi"}"#,
                ),
            ]),
            envelopes(&["text"]),
        ),
        post(
            "no_webhook_event_id",
            "A message event without webhookEventId: deduplicated by the message id",
            &webhook(&[event(
                "message",
                "active",
                &user_source(CUSTOMER),
                None,
                500,
                r#""message":{"id":"533466181562843170","type":"text","text":"no event id"}"#,
            )]),
            envelopes(&["text"]),
        ),
        post(
            "unknown_message_type",
            "A message type the connector does not map: kept as unsupported content",
            &webhook(&[user_message(
                CUSTOMER,
                "01JDQ8X3K5M7N9P1R3T5V7X9D1",
                400,
                r#"{"id":"533466181562843180","type":"hologram","quoteToken":"q3Plxr4AgKd_unknown-0001"}"#,
            )]),
            envelopes(&["unsupported"]),
        ),
        post(
            "group_message",
            "A text message in a group chat: not routed (one-to-one chats only)",
            &webhook(&[event(
                "message",
                "active",
                &format!(r#"{{"type":"group","groupId":"{GROUP}","userId":"{CUSTOMER}"}}"#),
                Some("01JDQ8X3K5M7N9P1R3T5V7X9E1"),
                300,
                r#""message":{"id":"533466181562843190","type":"text","quoteToken":"q3Plxr4AgKd_group-0001","text":"group hello"}"#,
            )]),
            error("unsupported"),
        ),
        post(
            "follow",
            "A user added the account as a friend: not routed",
            &webhook(&[event(
                "follow",
                "active",
                &user_source(CUSTOMER),
                Some("01JDQ8X3K5M7N9P1R3T5V7X9E2"),
                300,
                r#""follow":{"isUnblocked":true}"#,
            )]),
            error("unsupported"),
        ),
        post(
            "postback",
            "A postback (button tap): not routed",
            &webhook(&[event(
                "postback",
                "active",
                &user_source(CUSTOMER),
                Some("01JDQ8X3K5M7N9P1R3T5V7X9E3"),
                300,
                r#""postback":{"data":"action=buy&itemid=111"}"#,
            )]),
            error("unsupported"),
        ),
        post(
            "standby_message",
            "A message while the chat is in standby mode (another module handles it): not routed",
            &webhook(&[event(
                "message",
                "standby",
                &user_source(CUSTOMER),
                Some("01JDQ8X3K5M7N9P1R3T5V7X9E4"),
                300,
                r#""message":{"id":"533466181562843191","type":"text","text":"standby"}"#,
            )]),
            error("unsupported"),
        ),
        post(
            "malformed_json",
            "Correctly signed, but not JSON",
            &format!(r#"{{"destination":"{DESTINATION}","events":[{{"type":"message""#),
            error("malformed"),
        ),
        post(
            "missing_events",
            "Correctly signed JSON without an events array",
            &format!(r#"{{"destination":"{DESTINATION}"}}"#),
            error("malformed"),
        ),
        post(
            "message_without_id",
            "A user's message event whose message has no id: malformed",
            &webhook(&[user_message(
                CUSTOMER,
                "01JDQ8X3K5M7N9P1R3T5V7X9F1",
                200,
                r#"{"type":"text","text":"who am I"}"#,
            )]),
            error("malformed"),
        ),
    ];
    // Correctly signed bytes that are not UTF-8 inside a JSON string.
    let mut bad_utf8 = webhook(&[user_message(
        CUSTOMER,
        "01JDQ8X3K5M7N9P1R3T5V7X9F2",
        200,
        r#"{"id":"533466181562843192","type":"text","text":"XX"}"#,
    )])
    .into_bytes();
    if let Some(pos) = bad_utf8.windows(4).position(|w| w == b"\"XX\"") {
        bad_utf8[pos + 1] = 0xff;
        bad_utf8[pos + 2] = 0xfe;
    }
    let sig = sign_with(CHANNEL_SECRET, &bad_utf8);
    out.push(request(
        "invalid_utf8",
        "Correctly signed, but the JSON holds bytes that are not UTF-8",
        &bad_utf8,
        Some(&sig),
        error("malformed"),
        signed(),
    ));
    let original = webhook(&[user_message(
        CUSTOMER,
        "01JDQ8X3K5M7N9P1R3T5V7X9G1",
        100,
        r#"{"id":"533466181562843193","type":"text","text":"refund 10 yen"}"#,
    )]);
    out.push(request(
        "bad_signature",
        "Signed with another channel's secret",
        original.as_bytes(),
        Some(&sign_with("another-channel-secret", original.as_bytes())),
        error("bad_signature"),
        Signed::default(),
    ));
    out.push(request(
        "missing_signature",
        "No X-Line-Signature header",
        original.as_bytes(),
        None,
        error("bad_signature"),
        Signed::default(),
    ));
    let tampered = original.replace("refund 10 yen", "refund 99 yen");
    out.push(request(
        "tampered_body",
        "The signature of the original body over a changed body",
        tampered.as_bytes(),
        Some(&sign_with(CHANNEL_SECRET, original.as_bytes())),
        error("bad_signature"),
        Signed::default(),
    ));
    out
}
