//! Telegram webhook fixtures: updates as the Bot API sends them, with the
//! `X-Telegram-Bot-Api-Secret-Token` header `setWebhook` was given.

#![allow(dead_code)]

use switchyard_connectors::conformance::{Expect, Fixture, Signed};

use crate::common::{RECEIVED_AT, envelopes, error, fixture};

/// The test bot's token (`<bot id>:<secret>`, as BotFather hands it out).
pub const BOT_TOKEN: &str = "7012345678:AAHt3st-T0ken_for_Switchyard0000000";
/// The bot id: the part of the token before `:`.
pub const BOT_ID: &str = "7012345678";
/// The webhook's secret token.
pub const SECRET_TOKEN: &str = "switchyard-telegram-fixture_secret-01";
/// A customer.
pub const USER_ID: i64 = 5_012_345_678;
/// A user id above 2^53 (a double would round it to ...992).
pub const LARGE_USER_ID: i64 = 9_007_199_254_740_993;

/// What the signature-like header covers: the secret token header only (no body signature).
fn signed() -> Signed {
    Signed {
        body: false,
        body_range: None,
        headers: vec!["x-telegram-bot-api-secret-token".into()],
        query: Vec::new(),
    }
}

/// A webhook POST carrying the secret token.
fn post(name: &str, description: &str, body: &str, expect: Expect) -> Fixture {
    fixture(
        name,
        description,
        "POST",
        &[
            ("content-type", "application/json"),
            ("x-telegram-bot-api-secret-token", SECRET_TOKEN),
        ],
        &[],
        body.as_bytes(),
        expect,
        signed(),
    )
}

fn customer(id: i64) -> String {
    format!(
        r#"{{"id":{id},"is_bot":false,"first_name":"Ada","last_name":"Lovelace","username":"ada_l","language_code":"en"}}"#
    )
}

fn private_chat(id: i64) -> String {
    format!(
        r#"{{"id":{id},"first_name":"Ada","last_name":"Lovelace","username":"ada_l","type":"private"}}"#
    )
}

/// A `message` update from the customer in the private chat; `fields` is the content.
fn message_update(update_id: i64, message_id: i64, fields: &str) -> String {
    let date = RECEIVED_AT - 2;
    format!(
        r#"{{"update_id":{update_id},"message":{{"message_id":{message_id},"from":{},"chat":{},"date":{date},{fields}}}}}"#,
        customer(USER_ID),
        private_chat(USER_ID),
    )
}

/// Every Telegram fixture.
pub fn fixtures() -> Vec<Fixture> {
    let date = RECEIVED_AT - 2;
    let mut out = vec![
        post(
            "text",
            "A customer's text message in the private chat with the bot",
            &message_update(
                870_000_001,
                101,
                r#""text":"Hello! Where is my order #42? 📦","entities":[]"#,
            ),
            envelopes(&["text"]),
        ),
        post(
            "large_ids",
            "update_id, user id and chat id above 2^53: kept exact (no floating point)",
            &format!(
                r#"{{"update_id":9007199254740995,"message":{{"message_id":9007199254740997,"from":{{"id":{LARGE_USER_ID},"is_bot":false,"first_name":"Big","username":"big_id"}},"chat":{{"id":{LARGE_USER_ID},"first_name":"Big","username":"big_id","type":"private"}},"date":{date},"text":"ids beyond doubles"}}}}"#
            ),
            envelopes(&["text"]),
        ),
        post(
            "photo",
            "A photo in three sizes with a caption: the largest size's file_id, and the caption",
            &message_update(
                870_000_002,
                102,
                r#""photo":[{"file_id":"AgACAgIAAxkBAAIBsmall","file_unique_id":"AQADs","file_size":1480,"width":90,"height":60},{"file_id":"AgACAgIAAxkBAAIBlarge","file_unique_id":"AQADl","file_size":98765,"width":1280,"height":853},{"file_id":"AgACAgIAAxkBAAIBmedium","file_unique_id":"AQADm","file_size":20510,"width":320,"height":213}],"caption":"The parcel arrived damaged""#,
            ),
            envelopes(&["image"]),
        ),
        post(
            "document",
            "A PDF file with name, MIME type, size and a caption",
            &message_update(
                870_000_003,
                103,
                r#""document":{"file_name":"invoice-42.pdf","mime_type":"application/pdf","file_id":"BQACAgIAAxkBAAIBdoc","file_unique_id":"AgADdoc","file_size":48213},"caption":"Invoice for order #42""#,
            ),
            envelopes(&["file"]),
        ),
        post(
            "audio",
            "A music file",
            &message_update(
                870_000_004,
                104,
                r#""audio":{"duration":183,"file_name":"song.mp3","mime_type":"audio/mpeg","title":"Song","performer":"Band","file_id":"CQACAgIAAxkBAAIBaudio","file_unique_id":"AgADaudio","file_size":2938475}"#,
            ),
            envelopes(&["audio"]),
        ),
        post(
            "voice",
            "A voice message (OGG/Opus) with a caption",
            &message_update(
                870_000_005,
                105,
                r#""voice":{"duration":4,"mime_type":"audio/ogg","file_id":"AwACAgIAAxkBAAIBvoice","file_unique_id":"AgADvoice","file_size":12345},"caption":"About the refund""#,
            ),
            envelopes(&["audio"]),
        ),
        post(
            "video",
            "A video with a thumbnail",
            &message_update(
                870_000_006,
                106,
                r#""video":{"duration":12,"width":1280,"height":720,"file_name":"unboxing.mp4","mime_type":"video/mp4","thumbnail":{"file_id":"AAMCAgADGQthumb","file_unique_id":"AQADthumb","file_size":9000,"width":320,"height":180},"file_id":"BAACAgIAAxkBAAIBvideo","file_unique_id":"AgADvideo","file_size":3456789}"#,
            ),
            envelopes(&["video"]),
        ),
        post(
            "video_note",
            "A round video message",
            &message_update(
                870_000_007,
                107,
                r#""video_note":{"duration":6,"length":240,"file_id":"DQACAgIAAxkBAAIBnote","file_unique_id":"AgADnote","file_size":401234}"#,
            ),
            envelopes(&["video"]),
        ),
        post(
            "sticker",
            "A sticker",
            &message_update(
                870_000_008,
                108,
                r#""sticker":{"width":512,"height":512,"emoji":"👍","set_name":"HotCherry","is_animated":false,"is_video":false,"type":"regular","file_id":"CAACAgIAAxkBAAIBsticker","file_unique_id":"AgADsticker","file_size":23456}"#,
            ),
            envelopes(&["sticker"]),
        ),
        post(
            "animation",
            "A GIF (Telegram sets animation and, for compatibility, document): a video",
            &message_update(
                870_000_009,
                109,
                r#""animation":{"file_name":"dance.mp4","mime_type":"video/mp4","duration":3,"width":320,"height":240,"file_id":"CgACAgIAAxkBAAIBgif","file_unique_id":"AgADgif","file_size":123456},"document":{"file_name":"dance.mp4","mime_type":"video/mp4","file_id":"CgACAgIAAxkBAAIBgif","file_unique_id":"AgADgif","file_size":123456}"#,
            ),
            envelopes(&["video"]),
        ),
        post(
            "location",
            "A shared location",
            &message_update(
                870_000_010,
                110,
                r#""location":{"latitude":51.507351,"longitude":-0.127758}"#,
            ),
            envelopes(&["location"]),
        ),
        post(
            "venue",
            "A shared venue (Telegram sets venue and location): a location with its name and address",
            &message_update(
                870_000_011,
                111,
                r#""location":{"latitude":48.858370,"longitude":2.294481},"venue":{"location":{"latitude":48.858370,"longitude":2.294481},"title":"Eiffel Tower","address":"Champ de Mars, 5 Av. Anatole France, Paris"}"#,
            ),
            envelopes(&["location"]),
        ),
        post(
            "contact",
            "A shared contact: a card with the phone number",
            &message_update(
                870_000_012,
                112,
                r#""contact":{"phone_number":"+447700900123","first_name":"Charles","last_name":"Babbage","user_id":5098765432}"#,
            ),
            envelopes(&["card"]),
        ),
        post(
            "unknown_type",
            "A message type the connector does not map (a dice roll): unsupported content",
            &message_update(870_000_013, 113, r#""dice":{"emoji":"🎲","value":4}"#),
            envelopes(&["unsupported"]),
        ),
        post(
            "paid_media_caption",
            "Paid media (not mapped) with a caption: unsupported content, then the caption as text",
            &message_update(
                870_000_022,
                123,
                r#""paid_media":{"star_count":5,"paid_media":[{"type":"preview","width":640,"height":480}]},"caption":"Unlock the photo of the damage""#,
            ),
            envelopes(&["unsupported", "text"]),
        ),
        post(
            "group_message",
            "A message in a group the bot is in: not routed",
            &format!(
                r#"{{"update_id":870000014,"message":{{"message_id":114,"from":{},"chat":{{"id":-1001234567890,"title":"Shop fans","type":"supergroup"}},"date":{date},"text":"hi all"}}}}"#,
                customer(USER_ID)
            ),
            error("unsupported"),
        ),
        post(
            "from_bot",
            "A message from another bot: not routed",
            &format!(
                r#"{{"update_id":870000015,"message":{{"message_id":115,"from":{{"id":6000000001,"is_bot":true,"first_name":"OtherBot","username":"other_bot"}},"chat":{{"id":6000000001,"first_name":"OtherBot","type":"private"}},"date":{date},"text":"beep"}}}}"#
            ),
            error("unsupported"),
        ),
        post(
            "edited_message",
            "The customer edited an earlier message: not routed",
            &format!(
                r#"{{"update_id":870000016,"edited_message":{{"message_id":101,"from":{},"chat":{},"date":{},"edit_date":{date},"text":"Hello! Where is my order #43?"}}}}"#,
                customer(USER_ID),
                private_chat(USER_ID),
                date - 60
            ),
            error("unsupported"),
        ),
        post(
            "channel_post",
            "A post in a channel the bot administers: not routed",
            &format!(
                r#"{{"update_id":870000017,"channel_post":{{"message_id":5,"sender_chat":{{"id":-1009876543210,"title":"News","type":"channel"}},"chat":{{"id":-1009876543210,"title":"News","type":"channel"}},"date":{date},"text":"news"}}}}"#
            ),
            error("unsupported"),
        ),
        post(
            "callback_query",
            "An inline keyboard button press: not routed",
            &format!(
                r#"{{"update_id":870000018,"callback_query":{{"id":"4382bfdwdsb323b2d9","from":{},"chat_instance":"-8000000000000000000","data":"order:42"}}}}"#,
                customer(USER_ID)
            ),
            error("unsupported"),
        ),
        post(
            "malformed_json",
            "With the right secret, but not JSON",
            r#"{"update_id":870000019,"message":{"message_id":"#,
            error("malformed"),
        ),
        post(
            "no_update_id",
            "With the right secret, a JSON object without update_id",
            &format!(
                r#"{{"message":{{"message_id":120,"from":{},"chat":{},"date":{date},"text":"?"}}}}"#,
                customer(USER_ID),
                private_chat(USER_ID)
            ),
            error("malformed"),
        ),
    ];
    // The right secret, but bytes that are not UTF-8 inside a JSON string.
    let mut bad_utf8 = message_update(870_000_020, 121, r#""text":"XX""#).into_bytes();
    if let Some(pos) = bad_utf8.windows(4).position(|w| w == b"\"XX\"") {
        bad_utf8[pos + 1] = 0xff;
        bad_utf8[pos + 2] = 0xfe;
    }
    out.push(fixture(
        "invalid_utf8",
        "With the right secret, but the JSON holds bytes that are not UTF-8",
        "POST",
        &[
            ("content-type", "application/json"),
            ("x-telegram-bot-api-secret-token", SECRET_TOKEN),
        ],
        &[],
        &bad_utf8,
        error("malformed"),
        signed(),
    ));
    let forged = message_update(870_000_021, 122, r#""text":"Refund me 100 EUR""#);
    out.push(fixture(
        "bad_secret",
        "A secret token that is not ours",
        "POST",
        &[
            ("content-type", "application/json"),
            (
                "x-telegram-bot-api-secret-token",
                "switchyard-telegram-fixture_secret-02",
            ),
        ],
        &[],
        forged.as_bytes(),
        error("bad_signature"),
        Signed::default(),
    ));
    out.push(fixture(
        "missing_secret",
        "No X-Telegram-Bot-Api-Secret-Token header",
        "POST",
        &[("content-type", "application/json")],
        &[],
        forged.as_bytes(),
        error("bad_signature"),
        Signed::default(),
    ));
    out
}
