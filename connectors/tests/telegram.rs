//! The Telegram connector: generated webhook fixtures through the conformance kit, snapshots,
//! decode properties, configuration checks, and replies against a fake Bot API (wiremock).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/gen_fixtures/common.rs"]
mod common;
#[path = "../examples/gen_fixtures/telegram.rs"]
mod gen_telegram;
mod support;

use std::sync::Arc;
use std::time::Duration;

use gen_telegram::{BOT_ID, BOT_TOKEN, LARGE_USER_ID, SECRET_TOKEN, USER_ID};
use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard_connectors::conformance::{
    CollectSink, Outcome, OwnedRequest, arbitrary_bodies, check_all, check_decode_total, json_like,
    run,
};
use switchyard_connectors::telegram::{KIND, TelegramConnector};
use switchyard_connectors::{Connector, ConnectorContext, ConnectorError, Registry};
use switchyard_core::envelope::{Content, Direction, Envelope, Media, new_id};
use switchyard_core::store::Store;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The secret part of the bot token (after `:`), which must never appear in errors either.
const TOKEN_SECRET: &str = "AAHt3st-T0ken_for_Switchyard0000000";

/// A connector that quotes replies (`quote_replies = true`, as most outbound tests check).
fn connector_with(api_base: Option<String>) -> (TelegramConnector, Arc<dyn Store>) {
    connector_quoting(api_base, "true")
}

fn connector_quoting(api_base: Option<String>, quote: &str) -> (TelegramConnector, Arc<dyn Store>) {
    let settings = support::settings(
        "tg-main",
        KIND,
        api_base,
        &[
            ("bot_token", BOT_TOKEN),
            ("secret_token", SECRET_TOKEN),
            ("quote_replies", quote),
        ],
    );
    let (ctx, store) = support::context();
    (TelegramConnector::new(&settings, &ctx).unwrap(), store)
}

fn connector() -> TelegramConnector {
    connector_with(None).0
}

fn fixtures() -> Vec<switchyard_connectors::conformance::Fixture> {
    support::fixtures("telegram")
}

fn fixture(name: &str) -> OwnedRequest {
    support::fixture("telegram", name)
}

fn envelopes_of(c: &TelegramConnector, name: &str) -> Vec<Envelope> {
    match run(c, &fixture(name)) {
        Outcome::Envelopes(e) => e,
        other => panic!("{name}: {}", other.describe()),
    }
}

#[test]
fn fixtures_are_what_the_generator_writes() {
    support::assert_fixtures_fresh("telegram", gen_telegram::fixtures());
}

#[test]
fn every_fixture_conforms_and_matches_its_snapshot() {
    let outcomes = check_all(&connector(), &fixtures());
    for (name, outcome) in outcomes {
        if !outcome.envelopes().is_empty() {
            insta::assert_json_snapshot!(format!("telegram__{name}"), outcome.envelopes(), {
                "[].id" => "[id]",
                "[].received_at" => "[received_at]",
            });
        }
    }
}

#[test]
fn identity_dedupe_key_and_sender_follow_the_contract() {
    let c = connector();
    let e = &envelopes_of(&c, "text")[0];
    assert_eq!(e.sender.external_id, USER_ID.to_string());
    assert_eq!(e.sender.scope, "");
    assert_eq!(
        e.sender.identities[0].as_str(),
        format!("telegram_user_id::{USER_ID}")
    );
    assert_eq!(e.sender.display_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(e.dedupe_key, format!("telegram:{BOT_ID}:870000001"));
    assert_eq!(e.sent_at.timestamp(), common::RECEIVED_AT - 2);
    let raw = serde_json::to_string(e).unwrap();
    assert!(
        !raw.contains(TOKEN_SECRET),
        "the token never reaches an envelope"
    );
}

#[test]
fn ids_above_two_to_the_53_are_exact_in_the_envelope() {
    let c = connector();
    let e = &envelopes_of(&c, "large_ids")[0];
    assert_eq!(e.sender.external_id, "9007199254740993");
    assert_eq!(e.sender.external_id, LARGE_USER_ID.to_string());
    assert_eq!(
        e.sender.identities[0].as_str(),
        "telegram_user_id::9007199254740993"
    );
    assert_eq!(e.dedupe_key, format!("telegram:{BOT_ID}:9007199254740995"));
    assert_eq!(
        e.raw.as_ref().unwrap()["_telegram_reply_context"],
        json!({"chat_id": 9_007_199_254_740_993i64, "message_id": 9_007_199_254_740_997i64})
    );
}

#[test]
fn a_photo_is_its_largest_size_with_its_caption_in_one_envelope() {
    let c = connector();
    let e = envelopes_of(&c, "photo");
    assert_eq!(e.len(), 1);
    match &e[0].content {
        Content::Image { media, caption } => {
            assert_eq!(media.media_id.as_deref(), Some("AgACAgIAAxkBAAIBlarge"));
            assert_eq!(media.size, Some(98765));
            assert_eq!(caption.as_deref(), Some("The parcel arrived damaged"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e[0].dedupe_key, format!("telegram:{BOT_ID}:870000002"));
}

#[test]
fn a_caption_on_an_unmapped_type_follows_as_text() {
    let c = connector();
    let e = envelopes_of(&c, "paid_media_caption");
    assert_eq!(e.len(), 2);
    assert!(matches!(
        &e[0].content,
        Content::Unsupported { original_type } if original_type == "paid_media"
    ));
    assert_eq!(
        e[1].content,
        Content::Text {
            text: "Unlock the photo of the damage".into()
        }
    );
    assert_eq!(e[0].dedupe_key, format!("telegram:{BOT_ID}:870000022"));
    assert_eq!(
        e[1].dedupe_key,
        format!("telegram:{BOT_ID}:870000022:caption")
    );
}

#[test]
fn files_keep_mime_size_and_name() {
    let c = connector();
    assert_eq!(
        envelopes_of(&c, "document")[0].content,
        Content::File {
            media: Media {
                url: None,
                media_id: Some("BQACAgIAAxkBAAIBdoc".into()),
                mime: Some("application/pdf".into()),
                size: Some(48213),
                duration_ms: None,
            },
            name: Some("invoice-42.pdf".into()),
            caption: Some("Invoice for order #42".into()),
        }
    );
    assert!(matches!(
        &envelopes_of(&c, "voice")[0].content,
        Content::Audio { media, caption: Some(caption), .. }
            if media.mime.as_deref() == Some("audio/ogg") && caption == "About the refund"
                && media.duration_ms == Some(4000)
    ));
    // Telegram gives playing times in seconds; the envelope keeps milliseconds.
    assert!(matches!(
        &envelopes_of(&c, "video")[0].content,
        Content::Video { media, .. } if media.duration_ms == Some(12_000)
    ));
    assert!(matches!(
        &envelopes_of(&c, "venue")[0].content,
        Content::Location { label: Some(l), .. } if l.starts_with("Eiffel Tower, Champ de Mars")
    ));
    assert!(matches!(
        &envelopes_of(&c, "unknown_type")[0].content,
        Content::Unsupported { original_type } if original_type == "dice"
    ));
}

#[test]
fn the_secret_header_is_compared_exactly() {
    let c = connector();
    let mut req = fixture("text");
    req.set_header(
        "x-telegram-bot-api-secret-token",
        &format!("{SECRET_TOKEN} "),
    );
    assert!(matches!(
        c.verify(&req.as_inbound()),
        Err(ConnectorError::Unauthorized(_))
    ));
    req.set_header(
        "x-telegram-bot-api-secret-token",
        &SECRET_TOKEN.to_ascii_uppercase(),
    );
    assert!(matches!(
        c.verify(&req.as_inbound()),
        Err(ConnectorError::Unauthorized(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Configuration

fn build(options: &[(&str, &str)]) -> Result<TelegramConnector, ConnectorError> {
    let settings = support::settings("tg", KIND, None, options);
    TelegramConnector::new(&settings, &ConnectorContext::default())
}

#[test]
fn configuration_is_validated_without_echoing_secrets() {
    for secret in ["", "has space", "ümlaut", &"a".repeat(257)] {
        let err = build(&[("bot_token", BOT_TOKEN), ("secret_token", secret)]).unwrap_err();
        assert!(matches!(err, ConnectorError::Config(ref m) if m.contains("secret_token")));
    }
    build(&[("bot_token", BOT_TOKEN), ("secret_token", &"a".repeat(256))]).unwrap();
    for token in ["no-colon-here", "abc:def", "123:", "123:sec ret"] {
        let err = build(&[("bot_token", token), ("secret_token", SECRET_TOKEN)]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("channels.tg.bot_token"), "{message}");
        assert!(!message.contains(token), "{message}");
    }
    assert!(matches!(
        build(&[("secret_token", SECRET_TOKEN)]),
        Err(ConnectorError::Config(_))
    ));
    assert!(matches!(
        build(&[("bot_token", BOT_TOKEN)]),
        Err(ConnectorError::Config(_))
    ));
}

#[test]
fn secrets_can_come_from_files() {
    let dir = std::env::temp_dir().join(format!("switchyard-telegram-{}", new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("bot_token");
    std::fs::write(&token_file, format!("{BOT_TOKEN}\n")).unwrap();
    let c = build(&[
        ("bot_token_file", token_file.to_str().unwrap()),
        ("secret_token", SECRET_TOKEN),
    ])
    .unwrap();
    assert_eq!(c.bot_id(), BOT_ID);
    let debug = format!("{c:?}");
    assert!(!debug.contains(TOKEN_SECRET), "{debug}");
    assert!(!debug.contains(SECRET_TOKEN), "{debug}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_registry_builds_telegram_channels_and_refuses_unknown_keys() {
    let ok = support::settings(
        "tg",
        KIND,
        None,
        &[
            ("bot_token", BOT_TOKEN),
            ("secret_token_file", "/nonexistent/never-read"),
        ],
    );
    // `_file` is resolved: a missing file is a configuration error naming the key.
    let err = Registry::build(&[ok], &ConnectorContext::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("channels.tg.secret_token"),
        "{err}"
    );
    let ok = support::settings(
        "tg",
        KIND,
        None,
        &[("bot_token", BOT_TOKEN), ("secret_token", SECRET_TOKEN)],
    );
    let registry = Registry::build(&[ok], &ConnectorContext::default()).unwrap();
    assert_eq!(registry.kinds(), vec!["telegram".to_owned()]);
    let rules = registry.get("tg").unwrap().rules();
    assert_eq!(rules.reply_window, None);
    assert_eq!(rules.max_text_chars, Some(4096));
    let unknown = support::settings(
        "tg",
        KIND,
        None,
        &[
            ("bot_token", BOT_TOKEN),
            ("secret_token", SECRET_TOKEN),
            ("chat_id", "1"),
        ],
    );
    let err = Registry::build(&[unknown], &ConnectorContext::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("chat_id"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Totality

fn update_strategy() -> impl Strategy<Value = Vec<u8>> {
    const KEYS: &[&str] = &[
        "message_id",
        "from",
        "chat",
        "id",
        "type",
        "is_bot",
        "first_name",
        "last_name",
        "username",
        "date",
        "text",
        "caption",
        "photo",
        "file_id",
        "file_size",
        "width",
        "height",
        "document",
        "file_name",
        "mime_type",
        "audio",
        "voice",
        "video",
        "video_note",
        "sticker",
        "animation",
        "thumbnail",
        "location",
        "latitude",
        "longitude",
        "venue",
        "title",
        "address",
        "contact",
        "phone_number",
        "user_id",
        "dice",
    ];
    let kinds = prop::sample::select(vec![
        "message",
        "edited_message",
        "callback_query",
        "channel_post",
        "other",
    ]);
    let chat_types = prop::sample::select(vec!["private", "group", "supergroup", "channel", ""]);
    (
        kinds,
        chat_types,
        json_like(KEYS),
        any::<i64>(),
        any::<i64>(),
        any::<bool>(),
    )
        .prop_map(
            |(kind, chat_type, mut message, update_id, user_id, well_formed)| {
                if well_formed && let Some(obj) = message.as_object_mut() {
                    obj.insert("message_id".into(), json!(1));
                    obj.insert("date".into(), json!(update_id));
                    obj.insert(
                        "from".into(),
                        json!({"id": user_id, "is_bot": false, "first_name": "P"}),
                    );
                    obj.insert("chat".into(), json!({"id": user_id, "type": chat_type}));
                }
                let mut update = serde_json::Map::new();
                update.insert("update_id".into(), json!(update_id));
                update.insert(kind.into(), message);
                Value::Object(update).to_string().into_bytes()
            },
        )
}

fn resign(req: &mut OwnedRequest) {
    req.set_header("x-telegram-bot-api-secret-token", SECRET_TOKEN);
}

static PROP: std::sync::LazyLock<(TelegramConnector, OwnedRequest)> =
    std::sync::LazyLock::new(|| (connector(), fixture("text")));

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn decode_never_panics(body in arbitrary_bodies()) {
        let (c, template) = &*PROP;
        check_decode_total(c, template, &body, None);
        check_decode_total(c, template, &body, Some(&resign));
    }

    #[test]
    fn updates_of_any_shape_never_panic(body in update_strategy()) {
        let (c, template) = &*PROP;
        check_decode_total(c, template, &body, Some(&resign));
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound against a fake Bot API

fn api_path(method: &str) -> String {
    format!("/bot{BOT_TOKEN}/{method}")
}

fn sent(message_id: i64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "ok": true,
        "result": {
            "message_id": message_id,
            "from": {"id": 7_012_345_678i64, "is_bot": true, "first_name": "Shop", "username": "shop_bot"},
            "chat": {"id": USER_ID, "first_name": "Ada", "type": "private"},
            "date": 1_795_510_900,
            "text": "ok"
        }
    }))
}

fn refused(code: u16, description: &str, parameters: Option<Value>) -> ResponseTemplate {
    let mut body = json!({"ok": false, "error_code": code, "description": description});
    if let Some(p) = parameters {
        body["parameters"] = p;
    }
    ResponseTemplate::new(code).set_body_json(body)
}

/// Ingests a fixture the way the ingress does (deliver included); returns what was published.
async fn ingest(c: &TelegramConnector, name: &str) -> Vec<Envelope> {
    let envelopes = envelopes_of(c, name);
    assert!(
        envelopes.iter().all(|e| e.raw.is_some()),
        "normalize hands the quoted message to deliver"
    );
    let sink = CollectSink::new();
    let accepted = c.deliver(envelopes.clone(), &sink).await.unwrap();
    assert_eq!(accepted.len(), envelopes.len());
    let published = sink.published();
    assert!(
        published.iter().all(|e| e.raw.is_none()),
        "the reply context never reaches the bus"
    );
    published
}

fn reply_to(inbound: &Envelope, content: Content) -> Envelope {
    Envelope {
        id: new_id(),
        direction: Direction::Outbound,
        reply_to: Some(inbound.id.clone()),
        content,
        dedupe_key: "outbound:x".into(),
        raw: None,
        ..inbound.clone()
    }
}

fn text(t: &str) -> Content {
    Content::Text { text: t.into() }
}

fn by_url(url: &str) -> Media {
    Media {
        url: Some(url.into()),
        ..Media::default()
    }
}

/// `err`, displayed and debugged, holds neither the token nor its secret part.
fn assert_no_token(err: &ConnectorError) {
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(BOT_TOKEN), "{shown}");
        assert!(!shown.contains(TOKEN_SECRET), "{shown}");
    }
}

#[tokio::test]
async fn a_text_reply_is_sent_with_a_quote_of_the_customer_message() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()));
    Mock::given(method("POST"))
        .and(path(api_path("sendMessage")))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "chat_id": USER_ID,
            "text": "Hi Ada, your parcel ships today 🚚",
            "reply_parameters": {"message_id": 101, "allow_sending_without_reply": true}
        })))
        .respond_with(sent(9001))
        .expect(1)
        .mount(&server)
        .await;
    let inbound = ingest(&c, "text").await;
    let receipt = c
        .send(&reply_to(
            &inbound[0],
            text("Hi Ada, your parcel ships today 🚚"),
        ))
        .await
        .unwrap();
    assert_eq!(receipt.channel_message_id.as_deref(), Some("9001"));
}

#[tokio::test]
async fn without_quote_replies_nothing_is_kept_and_the_reply_quotes_nothing() {
    let server = MockServer::start().await;
    let (c, store) = connector_quoting(Some(server.uri()), "false");
    Mock::given(method("POST"))
        .and(path(api_path("sendMessage")))
        .and(body_json(json!({"chat_id": USER_ID, "text": "plain"})))
        .respond_with(sent(9004))
        .expect(1)
        .mount(&server)
        .await;
    let inbound = ingest(&c, "text").await;
    assert_eq!(
        store
            .get_key(&format!("telegram:tg-main:reply:{}", inbound[0].id))
            .await
            .unwrap(),
        None
    );
    c.send(&reply_to(&inbound[0], text("plain"))).await.unwrap();
}

#[tokio::test]
async fn without_a_known_message_the_reply_is_not_quoted() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()));
    Mock::given(method("POST"))
        .and(path(api_path("sendMessage")))
        .and(body_json(json!({"chat_id": USER_ID, "text": "hello"})))
        .respond_with(sent(9002))
        .expect(2)
        .mount(&server)
        .await;
    // Never ingested here: nothing to quote.
    let inbound = envelopes_of(&c, "text").remove(0);
    c.send(&reply_to(&inbound, text("hello"))).await.unwrap();
    // No reply_to at all.
    let mut reply = reply_to(&inbound, text("hello"));
    reply.reply_to = None;
    c.send(&reply).await.unwrap();
}

#[tokio::test]
async fn a_64_bit_chat_id_is_sent_as_an_exact_integer() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()));
    Mock::given(method("POST"))
        .and(path(api_path("sendMessage")))
        .and(body_json(json!({
            "chat_id": LARGE_USER_ID,
            "text": "big",
            "reply_parameters": {"message_id": 9_007_199_254_740_997i64, "allow_sending_without_reply": true}
        })))
        .respond_with(sent(9003))
        .expect(1)
        .mount(&server)
        .await;
    let inbound = ingest(&c, "large_ids").await;
    c.send(&reply_to(&inbound[0], text("big"))).await.unwrap();
    let requests = server.received_requests().await.unwrap();
    let body = String::from_utf8_lossy(&requests[0].body);
    assert!(body.contains("\"chat_id\":9007199254740993"), "{body}");
}

#[tokio::test]
async fn media_go_by_url_or_file_id_through_their_methods() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()));
    let cases = [
        (
            Content::Image {
                media: by_url("https://cdn.example.com/a.jpg"),
                caption: None,
            },
            "sendPhoto",
            json!({"chat_id": USER_ID, "photo": "https://cdn.example.com/a.jpg"}),
        ),
        (
            Content::Image {
                media: Media {
                    media_id: Some("AgACAgIAAxkBAAIBlarge".into()),
                    ..Media::default()
                },
                caption: None,
            },
            "sendPhoto",
            json!({"chat_id": USER_ID, "photo": "AgACAgIAAxkBAAIBlarge"}),
        ),
        (
            Content::File {
                media: by_url("https://cdn.example.com/invoice.pdf"),
                name: Some("invoice.pdf".into()),
                caption: Some("Your invoice 🧾".into()),
            },
            "sendDocument",
            json!({"chat_id": USER_ID, "document": "https://cdn.example.com/invoice.pdf",
                   "caption": "Your invoice 🧾"}),
        ),
        (
            Content::Audio {
                media: by_url("https://cdn.example.com/a.mp3"),
                recognition: None,
                caption: Some("Our jingle".into()),
            },
            "sendAudio",
            json!({"chat_id": USER_ID, "audio": "https://cdn.example.com/a.mp3",
                   "caption": "Our jingle"}),
        ),
        (
            // The Bot API takes whole seconds: 12.4 s is sent as 13.
            Content::Audio {
                media: Media {
                    duration_ms: Some(12_400),
                    ..by_url("https://cdn.example.com/b.mp3")
                },
                recognition: None,
                caption: None,
            },
            "sendAudio",
            json!({"chat_id": USER_ID, "audio": "https://cdn.example.com/b.mp3",
                   "duration": 13}),
        ),
        (
            Content::Video {
                media: by_url("https://cdn.example.com/v.mp4"),
                thumbnail: None,
                caption: Some(format!("How to open the box{}", "!".repeat(1005))),
            },
            "sendVideo",
            json!({"chat_id": USER_ID, "video": "https://cdn.example.com/v.mp4",
                   "caption": format!("How to open the box{}", "!".repeat(1005))}),
        ),
    ];
    let inbound = envelopes_of(&c, "text").remove(0);
    for (i, (content, api_method, body)) in cases.into_iter().enumerate() {
        let guard = Mock::given(method("POST"))
            .and(path(api_path(api_method)))
            .and(body_json(body))
            .respond_with(sent(100 + i as i64))
            .expect(1)
            .mount_as_scoped(&server)
            .await;
        let mut reply = reply_to(&inbound, content);
        reply.reply_to = None;
        let receipt = c.send(&reply).await.unwrap();
        assert_eq!(
            receipt.channel_message_id,
            Some((100 + i as i64).to_string())
        );
        drop(guard);
    }
}

/// `sendDocument` fetches only GIF, PDF and ZIP by URL: another document is downloaded and
/// uploaded as a multipart `document`, with the other fields beside it.
#[tokio::test]
async fn a_document_telegram_cannot_fetch_by_url_is_uploaded() {
    const DOCX: &[u8] = b"PK\x03\x04 not really a docx";
    const DOCX_TYPE: &str =
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document";
    let server = MockServer::start().await;
    let (c, _) = connector_quoting(Some(server.uri()), "false");
    Mock::given(method("GET"))
        .and(path("/files/report.docx"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(DOCX.to_vec(), DOCX_TYPE))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(api_path("sendDocument")))
        .respond_with(sent(321))
        .expect(1)
        .mount(&server)
        .await;
    let inbound = envelopes_of(&c, "text").remove(0);
    let reply = reply_to(
        &inbound,
        Content::File {
            media: by_url(&format!("{}/files/report.docx?sig=1", server.uri())),
            name: Some("Q3 report.docx".into()),
            caption: Some("The report".into()),
        },
    );
    let receipt = c.send(&reply).await.unwrap();
    assert_eq!(receipt.channel_message_id.as_deref(), Some("321"));

    let requests = server.received_requests().await.unwrap();
    let upload = requests
        .iter()
        .find(|r| r.url.path() == api_path("sendDocument"))
        .expect("the upload");
    let content_type = upload
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    let boundary = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .expect("a multipart body");
    let body = upload.body.as_slice();
    let part = |text: String| {
        assert!(
            body.windows(text.len()).any(|w| w == text.as_bytes()),
            "the upload lacks {text:?}"
        );
    };
    part(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n{USER_ID}\r\n"
    ));
    part(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\nThe report\r\n"
    ));
    part(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"document\"; \
         filename=\"Q3 report.docx\"\r\nContent-Type: {DOCX_TYPE}\r\n\r\n"
    ));
    assert!(
        body.windows(DOCX.len()).any(|w| w == DOCX),
        "the file's bytes are uploaded"
    );
    assert!(
        !body.windows(7).any(|w| w == b"/files/"),
        "the URL itself is not sent"
    );
}

#[tokio::test]
async fn what_telegram_cannot_take_is_refused_before_any_request() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()));
    Mock::given(method("POST"))
        .respond_with(sent(1))
        .expect(0)
        .mount(&server)
        .await;
    let inbound = envelopes_of(&c, "text").remove(0);
    let cases = [
        (text(&"x".repeat(4097)), "text_too_long"),
        (text("   "), "empty_text"),
        (
            Content::Location {
                latitude: 1.0,
                longitude: 2.0,
                label: None,
            },
            "content_unsupported",
        ),
        (
            Content::Image {
                media: Media::default(),
                caption: None,
            },
            "no_media",
        ),
        (
            Content::Image {
                media: by_url("ftp://example.com/a.jpg"),
                caption: None,
            },
            "media_url_invalid",
        ),
        (
            Content::Image {
                media: by_url("https://cdn.example.com/a.jpg"),
                caption: Some("字".repeat(1025)),
            },
            "caption_too_long",
        ),
    ];
    for (content, code) in cases {
        let err = c.send(&reply_to(&inbound, content)).await.unwrap_err();
        assert!(
            matches!(&err, ConnectorError::Rejected { code: got, .. } if got == code),
            "{code}: {err:?}"
        );
    }
    // 4096 characters (not bytes) are fine: checked by the text limit, not sent here.
    let mut bad_recipient = reply_to(&inbound, text("hi"));
    bad_recipient.sender.external_id = "not-a-number".into();
    assert!(matches!(
        c.send(&bad_recipient).await,
        Err(ConnectorError::Rejected { code, .. }) if code == "recipient_invalid"
    ));
}

#[tokio::test]
async fn bot_api_errors_are_classified_and_never_show_the_token() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()));
    let inbound = envelopes_of(&c, "text").remove(0);
    let cases: Vec<(ResponseTemplate, &str, Option<&str>)> = vec![
        (
            refused(
                429,
                "Too Many Requests: retry after 17",
                Some(json!({"retry_after": 17})),
            ),
            "rate_limited",
            None,
        ),
        (
            refused(403, "Forbidden: bot was blocked by the user", None),
            "rejected",
            Some("bot_blocked"),
        ),
        (
            refused(403, "Forbidden: user is deactivated", None),
            "rejected",
            Some("user_deactivated"),
        ),
        (
            refused(400, "Bad Request: chat not found", None),
            "rejected",
            Some("bad_request"),
        ),
        (
            refused(401, "Unauthorized", None),
            "rejected",
            Some("bot_token_invalid"),
        ),
        (
            refused(404, "Not Found", None),
            "rejected",
            Some("bot_token_invalid"),
        ),
        (
            refused(500, "Internal Server Error", None),
            "transient",
            None,
        ),
        (
            ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"),
            "transient",
            None,
        ),
        (
            ResponseTemplate::new(200).set_body_string("not json"),
            "transient",
            None,
        ),
    ];
    for (answer, class, code) in cases {
        let guard = Mock::given(method("POST"))
            .and(path(api_path("sendMessage")))
            .respond_with(answer)
            .expect(1)
            .mount_as_scoped(&server)
            .await;
        let err = c
            .send(&reply_to(&inbound, text("are you there?")))
            .await
            .unwrap_err();
        assert_eq!(err.outcome(), class, "{err:?}");
        if let Some(code) = code {
            assert!(
                matches!(&err, ConnectorError::Rejected { code: got, .. } if got == code),
                "{err:?}"
            );
            assert!(!err.is_retryable());
        }
        if class == "rate_limited" {
            assert_eq!(
                err,
                ConnectorError::RateLimited {
                    retry_after: Some(Duration::from_secs(17))
                }
            );
        }
        assert_no_token(&err);
        drop(guard);
    }
    // Telegram's description is passed on, with any echo of the token redacted.
    let guard = Mock::given(method("POST"))
        .and(path(api_path("sendMessage")))
        .respond_with(refused(
            400,
            &format!("Bad Request: something about {BOT_TOKEN}"),
            None,
        ))
        .mount_as_scoped(&server)
        .await;
    let err = c.send(&reply_to(&inbound, text("echo"))).await.unwrap_err();
    assert!(
        err.to_string().contains("Bad Request: something about"),
        "{err}"
    );
    assert_no_token(&err);
    drop(guard);
}

#[tokio::test]
async fn the_retry_after_header_is_used_when_the_body_gives_none() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()));
    Mock::given(method("POST"))
        .and(path(api_path("sendMessage")))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "5"))
        .mount(&server)
        .await;
    let inbound = envelopes_of(&c, "text").remove(0);
    let err = c.send(&reply_to(&inbound, text("x"))).await.unwrap_err();
    assert_eq!(
        err,
        ConnectorError::RateLimited {
            retry_after: Some(Duration::from_secs(5))
        }
    );
}

#[tokio::test]
async fn a_network_failure_is_transient_and_does_not_show_the_token() {
    // Nothing listens on the discard port: the connection is refused.
    let (c, _) = connector_with(Some("http://127.0.0.1:9".into()));
    let inbound = envelopes_of(&c, "text").remove(0);
    let err = c.send(&reply_to(&inbound, text("x"))).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert_no_token(&err);
}

#[tokio::test]
async fn deliver_keeps_the_quote_for_each_envelope_of_an_update() {
    let (c, store) = connector_with(None);
    let published = ingest(&c, "paid_media_caption").await;
    assert_eq!(published.len(), 2);
    for e in &published {
        let kept = store
            .get_key(&format!("telegram:tg-main:reply:{}", e.id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&kept).unwrap(),
            json!({"chat_id": USER_ID, "message_id": 123})
        );
    }
}

#[tokio::test]
async fn raw_keeps_the_masked_update_on_every_envelope_and_never_publishes_the_context() {
    let settings = support::keeping_raw(
        support::settings(
            "tg-main",
            KIND,
            None,
            &[
                ("bot_token", BOT_TOKEN),
                ("secret_token", SECRET_TOKEN),
                ("quote_replies", "true"),
            ],
        ),
        &["username"],
    );
    let (ctx, store) = support::context();
    let keeping = TelegramConnector::new(&settings, &ctx).unwrap();
    for name in ["photo", "contact", "text", "paid_media_caption"] {
        let req = fixture(name);
        let expected = support::masked(support::json_body(&req), &["username"]);
        let envelopes = envelopes_of(&keeping, name);
        // The caption of media the envelope cannot carry follows as a second envelope: both
        // carry the update.
        let split = name == "paid_media_caption";
        assert_eq!(envelopes.len(), if split { 2 } else { 1 }, "{name}");
        let sink = CollectSink::new();
        keeping.deliver(envelopes, &sink).await.unwrap();
        for envelope in sink.published() {
            assert_eq!(envelope.raw.as_ref(), Some(&expected), "{name}");
            let context = store
                .get_key(&format!("telegram:tg-main:reply:{}", envelope.id))
                .await
                .unwrap();
            assert!(context.is_some(), "{name}: the reply context is still kept");
        }
        let c = connector();
        let sink = CollectSink::new();
        c.deliver(envelopes_of(&c, name), &sink).await.unwrap();
        assert!(
            sink.published().iter().all(|e| e.raw.is_none()),
            "{name}: off by default"
        );
    }
    let raw = envelopes_of(&keeping, "contact")[0].raw.clone().unwrap();
    assert_eq!(raw["message"]["contact"]["phone_number"], "[masked]");
    assert_eq!(raw["message"]["from"]["username"], "[masked]");
    assert_eq!(raw["message"]["from"]["first_name"], "Ada");
}
