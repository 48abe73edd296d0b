//! The WhatsApp Cloud API connector: generated webhook fixtures through the conformance kit,
//! snapshots, decode properties, and sends against a fake Graph API (wiremock).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/gen_fixtures/common.rs"]
mod common;
#[path = "../examples/gen_fixtures/whatsapp.rs"]
mod gen_whatsapp;
mod support;

use std::sync::Arc;
use std::time::Duration;

use gen_whatsapp::{
    APP_SECRET, CUSTOMER, CUSTOMER_NAME, FAILED_WAMID, PHONE_NUMBER_ID, VERIFY_TOKEN,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::RecordingSink;
use switchyard_connectors::conformance::{
    CollectSink, Outcome, OwnedRequest, arbitrary_bodies, check_all, check_decode_total, json_like,
    run,
};
use switchyard_connectors::registry::KINDS;
use switchyard_connectors::whatsapp::{
    FAILED_STATUS_EVENT, KIND, WhatsAppConnector, failed_status, webhook_signature,
};
use switchyard_connectors::{Accepted, Connector, ConnectorError};
use switchyard_core::envelope::{Content, Direction, Envelope, Media, new_id};
use switchyard_core::store::Store;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const ACCESS_TOKEN: &str = "EAAG-test-system-user-token";

/// A connector that quotes replies (`quote_replies = true`, as most outbound tests check).
fn connector_at(api_base: Option<String>) -> (WhatsAppConnector, Arc<dyn Store>) {
    connector_quoting(api_base, "true")
}

fn connector_quoting(api_base: Option<String>, quote: &str) -> (WhatsAppConnector, Arc<dyn Store>) {
    let settings = settings(api_base, quote);
    let (ctx, store) = support::context();
    (WhatsAppConnector::new(&settings, &ctx).unwrap(), store)
}

fn settings(api_base: Option<String>, quote: &str) -> switchyard_core::config::ChannelSettings {
    support::settings(
        "wa-main",
        KIND,
        api_base,
        &[
            ("app_secret", APP_SECRET),
            ("verify_token", VERIFY_TOKEN),
            ("phone_number_id", PHONE_NUMBER_ID),
            ("access_token", ACCESS_TOKEN),
            ("quote_replies", quote),
        ],
    )
}

fn connector() -> WhatsAppConnector {
    connector_at(None).0
}

fn fixtures() -> Vec<switchyard_connectors::conformance::Fixture> {
    support::fixtures("whatsapp")
}

fn fixture(name: &str) -> OwnedRequest {
    support::fixture("whatsapp", name)
}

#[test]
fn fixtures_are_what_the_generator_writes() {
    support::assert_fixtures_fresh("whatsapp", gen_whatsapp::fixtures());
}

#[test]
fn every_fixture_conforms_and_matches_its_snapshot() {
    let outcomes = check_all(&connector(), &fixtures());
    for (name, outcome) in outcomes {
        if !outcome.envelopes().is_empty() {
            insta::assert_json_snapshot!(format!("whatsapp__{name}"), outcome.envelopes(), {
                "[].id" => "[id]",
                "[].received_at" => "[received_at]",
            });
        }
    }
}

#[test]
fn the_kind_is_registered_with_its_keys() {
    let keys = KINDS
        .iter()
        .find(|(kind, _)| *kind == KIND)
        .map(|(_, keys)| *keys)
        .unwrap();
    assert_eq!(
        keys,
        [
            "app_secret",
            "verify_token",
            "phone_number_id",
            "access_token",
            "quote_replies"
        ]
    );
}

#[test]
fn missing_or_odd_configuration_is_refused() {
    let (ctx, _) = support::context();
    let build = |options: &[(&str, &str)]| {
        WhatsAppConnector::new(&support::settings("wa", KIND, None, options), &ctx)
    };
    let all = [
        ("app_secret", APP_SECRET),
        ("verify_token", VERIFY_TOKEN),
        ("phone_number_id", PHONE_NUMBER_ID),
        ("access_token", ACCESS_TOKEN),
    ];
    assert!(build(&all).is_ok());
    for skip in 0..all.len() {
        let options: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, kv)| *kv)
            .collect();
        let err = build(&options).unwrap_err();
        assert!(
            matches!(&err, ConnectorError::Config(m) if m.contains(all[skip].0)),
            "{err}"
        );
    }
    let mut phone = all;
    phone[2] = ("phone_number_id", "+1 555 078 3881");
    assert!(matches!(build(&phone), Err(ConnectorError::Config(_))));
}

#[test]
fn signature_is_the_documented_formula() {
    // Meta: X-Hub-Signature-256 = "sha256=" + hex(HMAC-SHA256(app secret, raw body)).
    let req = fixture("text");
    let sig = req.headers["x-hub-signature-256"].to_str().unwrap();
    assert_eq!(sig, webhook_signature(APP_SECRET, &req.body));
    assert_eq!(sig, gen_whatsapp::sign_with(APP_SECRET, &req.body));
    // Upper-case hex is accepted too (the comparison is case-insensitive).
    let mut upper = req.clone();
    upper.set_header("x-hub-signature-256", &sig.to_ascii_uppercase());
    assert_eq!(run(&connector(), &upper).envelopes().len(), 1);
    // The hex alone, without `sha256=`, is not the header's format.
    let mut bare = req.clone();
    bare.set_header("x-hub-signature-256", sig.trim_start_matches("sha256="));
    assert!(matches!(
        run(&connector(), &bare),
        Outcome::Error(ConnectorError::Unauthorized(_))
    ));
}

#[test]
fn the_signature_covers_the_raw_escaped_bytes() {
    // Meta escapes non-ASCII; the same JSON re-serialised (unescaped) is not what it signed.
    let req = fixture("text");
    let body = String::from_utf8(req.body.clone()).unwrap();
    assert!(body.contains(r"\ud83d\udce6"));
    let reserialised = serde_json::to_vec(&serde_json::from_str::<Value>(&body).unwrap()).unwrap();
    let mut changed = req.clone();
    changed.body = reserialised;
    assert!(matches!(
        run(&connector(), &changed),
        Outcome::Error(ConnectorError::Unauthorized(_))
    ));
}

#[test]
fn a_text_message_becomes_one_envelope_with_the_customer() {
    let envelopes = run(&connector(), &fixture("text")).envelopes().to_vec();
    let e = &envelopes[0];
    assert_eq!(e.sender.external_id, CUSTOMER);
    assert_eq!(e.sender.scope, "");
    assert_eq!(e.sender.display_name.as_deref(), Some(CUSTOMER_NAME));
    assert_eq!(
        e.sender.identities[0].as_str(),
        format!("whatsapp_wa_id::{CUSTOMER}")
    );
    assert_eq!(
        e.dedupe_key,
        format!(
            "whatsapp:{PHONE_NUMBER_ID}:wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAwMQA="
        )
    );
    assert_eq!(e.sent_at.timestamp(), common::RECEIVED_AT - 2);
    assert_eq!(
        e.content,
        Content::Text {
            text: "Hallo! Wo bleibt meine Bestellung #42? 📦 Grüße".into()
        }
    );
    assert_eq!(e.raw, None);
}

#[test]
fn captions_of_images_videos_and_documents_are_kept() {
    let content = |name: &str, i: usize| {
        run(&connector(), &fixture(name)).envelopes()[i]
            .content
            .clone()
    };
    assert!(matches!(
        content("image", 0),
        Content::Image { caption: Some(c), .. } if c == "So kam das Paket an"
    ));
    assert!(matches!(
        content("document", 0),
        Content::File { caption: Some(c), name: Some(n), .. }
            if c == "Rechnung" && n == "rechnung-2026-11.pdf"
    ));
    assert!(matches!(
        content("batch_audio_video_sticker", 1),
        Content::Video { caption: Some(c), .. } if c == "Beim Auspacken"
    ));
    assert!(matches!(
        content("batch_audio_video_sticker", 0),
        Content::Audio { caption: None, .. }
    ));
}

#[test]
fn the_handshake_answers_the_challenge_as_plain_text() {
    let c = connector();
    let req = fixture("handshake");
    let reply = c.handshake(&req.as_inbound()).unwrap().unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.content_type.starts_with("text/plain"));
    assert_eq!(reply.body.as_ref(), b"1158201444");
    // A GET that is not a verification is not a handshake (the ingress answers 405).
    let mut plain = req.clone();
    plain.query.clear();
    assert_eq!(c.handshake(&plain.as_inbound()).unwrap(), None);
    // POSTs are never handshakes.
    assert_eq!(c.handshake(&fixture("text").as_inbound()).unwrap(), None);
    // Another mode is not accepted.
    let mut other_mode = req.clone();
    other_mode
        .query
        .insert("hub.mode".into(), "unsubscribe".into());
    assert!(c.handshake(&other_mode.as_inbound()).is_err());
}

fn message_strategy() -> impl Strategy<Value = Vec<u8>> {
    const KEYS: &[&str] = &[
        "object",
        "entry",
        "changes",
        "field",
        "value",
        "metadata",
        "phone_number_id",
        "contacts",
        "profile",
        "name",
        "wa_id",
        "messages",
        "statuses",
        "from",
        "id",
        "timestamp",
        "type",
        "text",
        "body",
        "image",
        "mime_type",
        "caption",
        "document",
        "filename",
        "location",
        "latitude",
        "longitude",
        "interactive",
        "button_reply",
        "list_reply",
        "title",
        "reaction",
        "emoji",
        "message_id",
        "formatted_name",
    ];
    let types = prop::sample::select(vec![
        "text",
        "image",
        "audio",
        "video",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "button",
        "reaction",
        "order",
        "system",
        "unsupported",
        "",
    ]);
    let numbers = prop::sample::select(vec![PHONE_NUMBER_ID, "1", ""]);
    (
        types,
        numbers,
        json_like(KEYS),
        json_like(KEYS),
        any::<bool>(),
    )
        .prop_map(|(kind, number, mut message, part, with_ids)| {
            if let Some(obj) = message.as_object_mut() {
                obj.insert("type".into(), json!(kind));
                obj.insert(kind.into(), part);
                if with_ids {
                    obj.insert("from".into(), json!(CUSTOMER));
                    obj.insert("id".into(), json!("wamid.prop"));
                }
            }
            json!({
                "object": "whatsapp_business_account",
                "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                    "metadata": {"phone_number_id": number},
                    "contacts": [{"profile": {"name": "x"}, "wa_id": CUSTOMER}],
                    "messages": [message],
                }}]}],
            })
            .to_string()
            .into_bytes()
        })
}

#[test]
fn an_unreadable_message_is_left_out_and_the_rest_of_the_batch_routed() {
    let mut req = fixture("batch_audio_video_sticker");
    let mut body: Value = serde_json::from_slice(&req.body).unwrap();
    let messages = body["entry"][0]["changes"][0]["value"]["messages"]
        .as_array_mut()
        .unwrap();
    let total = messages.len();
    messages[1].as_object_mut().unwrap().remove("from");
    req.body = serde_json::to_vec(&body).unwrap();
    resign(&mut req);
    let c = connector();
    match run(&c, &req) {
        Outcome::Envelopes(e) => assert_eq!(e.len(), total - 1, "the readable messages"),
        other => panic!("{}", other.describe()),
    }
}

fn resign(req: &mut OwnedRequest) {
    let sig = webhook_signature(APP_SECRET, &req.body);
    req.set_header("x-hub-signature-256", &sig);
}

static PROP: std::sync::LazyLock<(WhatsAppConnector, OwnedRequest)> =
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
    fn signed_notifications_of_any_shape_never_panic(body in message_strategy()) {
        let (c, template) = &*PROP;
        check_decode_total(c, template, &body, Some(&resign));
    }

    #[test]
    fn verification_queries_never_panic(mode in ".{0,12}", token in ".{0,24}", challenge in ".{0,300}") {
        let (c, _) = &*PROP;
        let mut req = fixture("handshake");
        req.query.insert("hub.mode".into(), mode);
        req.query.insert("hub.verify_token".into(), token);
        req.query.insert("hub.challenge".into(), challenge);
        let _ = c.handshake(&req.as_inbound());
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound against a fake Graph API

/// Ingests a fixture the way the ingress does (deliver included); returns the routed envelopes.
async fn ingest(c: &WhatsAppConnector, name: &str) -> Vec<Envelope> {
    let envelopes = match run(c, &fixture(name)) {
        Outcome::Envelopes(e) => e,
        other => panic!("{}", other.describe()),
    };
    let sink = CollectSink::new();
    c.deliver(envelopes, &sink).await.unwrap();
    sink.published()
}

fn reply(inbound: &Envelope, content: Content) -> Envelope {
    Envelope {
        id: new_id(),
        direction: Direction::Outbound,
        reply_to: Some(inbound.id.clone()),
        content,
        dedupe_key: "outbound:x".into(),
        agent_id: Some("agent-1".into()),
        raw: None,
        ..inbound.clone()
    }
}

fn sent(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": CUSTOMER, "wa_id": CUSTOMER}],
        "messages": [{"id": id}]
    }))
}

fn graph_error(status: u16, code: i64, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": message},
            "fbtrace_id": "AbCdEf"
        }
    }))
}

fn messages_path() -> String {
    format!("/{PHONE_NUMBER_ID}/messages")
}

#[tokio::test]
async fn a_text_reply_quotes_the_customer_message() {
    let server = MockServer::start().await;
    let (c, store) = connector_at(Some(server.uri()));
    let inbound = ingest(&c, "text").await;
    let wamid = "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAwMQA=";
    assert_eq!(
        store
            .get_key(&format!("whatsapp:wa-main:wamid:{}", inbound[0].id))
            .await
            .unwrap()
            .as_deref(),
        Some(wamid)
    );
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(header(
            "authorization",
            format!("Bearer {ACCESS_TOKEN}").as_str(),
        ))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": CUSTOMER,
            "type": "text",
            "text": {"body": "Hallo Jonas, Ihr Paket ist unterwegs."},
            "context": {"message_id": wamid}
        })))
        .respond_with(sent("wamid.OUT-1"))
        .expect(1)
        .mount(&server)
        .await;
    let receipt = c
        .send(&reply(
            &inbound[0],
            Content::Text {
                text: "Hallo Jonas, Ihr Paket ist unterwegs.".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(receipt.channel_message_id.as_deref(), Some("wamid.OUT-1"));
}

#[tokio::test]
async fn without_quote_replies_nothing_is_kept_and_the_reply_quotes_nothing() {
    let server = MockServer::start().await;
    let (c, store) = connector_quoting(Some(server.uri()), "false");
    let inbound = ingest(&c, "text").await;
    assert_eq!(
        store
            .get_key(&format!("whatsapp:wa-main:wamid:{}", inbound[0].id))
            .await
            .unwrap(),
        None
    );
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(body_json(json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": CUSTOMER,
            "type": "text",
            "text": {"body": "plain"}
        })))
        .respond_with(sent("wamid.OUT-3"))
        .expect(1)
        .mount(&server)
        .await;
    c.send(&reply(
        &inbound[0],
        Content::Text {
            text: "plain".into(),
        },
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn without_a_known_inbound_message_the_reply_has_no_context() {
    let server = MockServer::start().await;
    let (c, _) = connector_at(Some(server.uri()));
    let inbound = run(&c, &fixture("text")).envelopes().to_vec(); // never delivered
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(body_json(json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": CUSTOMER,
            "type": "text",
            "text": {"body": "ok"}
        })))
        .respond_with(sent("wamid.OUT-2"))
        .expect(2)
        .mount(&server)
        .await;
    c.send(&reply(&inbound[0], Content::Text { text: "ok".into() }))
        .await
        .unwrap();
    let mut no_reply_to = reply(&inbound[0], Content::Text { text: "ok".into() });
    no_reply_to.reply_to = None;
    c.send(&no_reply_to).await.unwrap();
}

#[tokio::test]
async fn media_and_locations_are_sent_by_link_or_id() {
    let server = MockServer::start().await;
    let (c, _) = connector_at(Some(server.uri()));
    let mut inbound = run(&c, &fixture("text")).envelopes()[0].clone();
    inbound.reply_to = None;
    let cases = [
        (
            Content::Image {
                media: Media {
                    url: Some("https://cdn.example.com/label.png".into()),
                    ..Media::default()
                },
                caption: Some("Ihr Rücksendeetikett 📦".into()),
            },
            json!({"type": "image", "image": {"link": "https://cdn.example.com/label.png",
                "caption": "Ihr Rücksendeetikett 📦"}}),
        ),
        (
            Content::File {
                media: Media {
                    url: Some("https://cdn.example.com/r.pdf".into()),
                    mime: Some("application/pdf".into()),
                    ..Media::default()
                },
                name: Some("Rechnung.pdf".into()),
                caption: Some("Ihre Rechnung".into()),
            },
            json!({"type": "document", "document": {
                "link": "https://cdn.example.com/r.pdf", "filename": "Rechnung.pdf",
                "caption": "Ihre Rechnung"}}),
        ),
        (
            Content::Audio {
                media: Media {
                    media_id: Some("3456789012345678".into()),
                    ..Media::default()
                },
                recognition: None,
                caption: None,
            },
            json!({"type": "audio", "audio": {"id": "3456789012345678"}}),
        ),
        (
            Content::Video {
                media: Media {
                    url: Some("https://cdn.example.com/howto.mp4".into()),
                    ..Media::default()
                },
                thumbnail: None,
                caption: Some("So geht's".into()),
            },
            json!({"type": "video", "video": {"link": "https://cdn.example.com/howto.mp4",
                "caption": "So geht's"}}),
        ),
        (
            Content::Location {
                latitude: 52.52,
                longitude: 13.405,
                label: Some("Filiale Mitte".into()),
            },
            json!({"type": "location", "location": {
                "latitude": 52.52, "longitude": 13.405, "name": "Filiale Mitte"}}),
        ),
    ];
    for (i, (content, expected)) in cases.into_iter().enumerate() {
        let mut body = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": CUSTOMER,
        });
        for (k, v) in expected.as_object().unwrap() {
            body[k] = v.clone();
        }
        let guard = Mock::given(method("POST"))
            .and(path(messages_path()))
            .and(body_json(body))
            .respond_with(sent(&format!("wamid.MEDIA-{i}")))
            .expect(1)
            .mount_as_scoped(&server)
            .await;
        let receipt = c.send(&reply(&inbound, content)).await.unwrap();
        assert_eq!(receipt.channel_message_id, Some(format!("wamid.MEDIA-{i}")));
        drop(guard);
    }
}

#[tokio::test]
async fn an_audio_caption_follows_as_a_text_that_does_not_quote_again() {
    let server = MockServer::start().await;
    let (c, _) = connector_at(Some(server.uri()));
    let inbound = ingest(&c, "text").await;
    let wamid = "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBDMDAwMDAwMDAwMDAwMDAwMQA=";
    let head =
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": CUSTOMER});
    let with = |extra: Value| {
        let mut body = head.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(body_json(with(
            json!({"type": "audio", "audio": {"id": "3456789012345678"},
            "context": {"message_id": wamid}}),
        )))
        .respond_with(sent("wamid.AUDIO"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(body_json(with(
            json!({"type": "text", "text": {"body": "Hören Sie mal"}}),
        )))
        .respond_with(sent("wamid.CAPTION"))
        .expect(1)
        .mount(&server)
        .await;
    let audio = Content::Audio {
        media: Media {
            media_id: Some("3456789012345678".into()),
            ..Media::default()
        },
        recognition: None,
        caption: Some("Hören Sie mal".into()),
    };
    let receipt = c.send(&reply(&inbound[0], audio)).await.unwrap();
    assert_eq!(receipt.channel_message_id.as_deref(), Some("wamid.AUDIO"));
    let requests = server.received_requests().await.unwrap();
    let types: Vec<String> = requests
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["type"].to_string())
        .collect();
    assert_eq!(types, ["\"audio\"", "\"text\""], "the audio first");
}

#[tokio::test]
async fn content_the_channel_cannot_carry_is_refused_before_any_request() {
    let server = MockServer::start().await;
    let (c, _) = connector_at(Some(server.uri()));
    Mock::given(method("POST"))
        .respond_with(sent("x"))
        .expect(0)
        .mount(&server)
        .await;
    let inbound = run(&c, &fixture("text")).envelopes()[0].clone();
    for (content, code) in [
        (
            Content::Event {
                name: "x".into(),
                data: Default::default(),
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
            Content::Text {
                text: "x".repeat(4097),
            },
            "text_too_long",
        ),
        (
            Content::Video {
                media: Media {
                    media_id: Some("4567890123456789".into()),
                    ..Media::default()
                },
                thumbnail: None,
                caption: Some("x".repeat(1025)),
            },
            "caption_too_long",
        ),
    ] {
        let err = c.send(&reply(&inbound, content)).await.unwrap_err();
        assert!(
            matches!(&err, ConnectorError::Rejected { code: c, .. } if c == code),
            "{err}"
        );
    }
    // 4096 characters (not bytes) are fine: the limit counts characters.
    let rules = c.rules();
    assert_eq!(rules.max_text_chars, Some(4096));
    assert_eq!(rules.reply_window, Some(Duration::from_secs(24 * 3600)));
}

#[tokio::test]
async fn failures_are_classified() {
    let server = MockServer::start().await;
    let (c, _) = connector_at(Some(server.uri()));
    let inbound = run(&c, &fixture("text")).envelopes()[0].clone();
    let send = |text: &str| {
        let message = reply(&inbound, Content::Text { text: text.into() });
        let c = &c;
        async move { c.send(&message).await }
    };
    let with = |response: ResponseTemplate| {
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(response)
    };

    let guard = with(ResponseTemplate::new(502))
        .mount_as_scoped(&server)
        .await;
    assert!(matches!(send("a").await, Err(ConnectorError::Transient(_))));
    drop(guard);

    let guard = with(graph_error(500, 131000, "Something went wrong"))
        .mount_as_scoped(&server)
        .await;
    assert!(matches!(send("a").await, Err(ConnectorError::Transient(_))));
    drop(guard);

    let guard = with(ResponseTemplate::new(429).insert_header("retry-after", "7"))
        .mount_as_scoped(&server)
        .await;
    assert!(matches!(
        send("b").await,
        Err(ConnectorError::RateLimited { retry_after: Some(d) }) if d.as_secs() == 7
    ));
    drop(guard);

    for code in [4, 80007, 130429, 131048, 131056] {
        let guard = with(graph_error(400, code, "(#130429) Rate limit hit"))
            .mount_as_scoped(&server)
            .await;
        assert!(
            matches!(
                send("c").await,
                Err(ConnectorError::RateLimited { retry_after: None })
            ),
            "code {code}"
        );
        drop(guard);
    }

    let guard = with(graph_error(
        400,
        131047,
        "Re-engagement message: more than 24 hours have passed since the customer last replied",
    ))
    .mount_as_scoped(&server)
    .await;
    let err = send("d").await.unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Rejected { code, message }
            if code == "reply_window_closed" && message.contains("131047")),
        "{err}"
    );
    drop(guard);

    let guard = with(graph_error(
        401,
        190,
        "Error validating access token: Session has expired",
    ))
    .mount_as_scoped(&server)
    .await;
    let err = send("e").await.unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Rejected { code, .. } if code == "access_token_invalid"),
        "{err}"
    );
    assert!(!err.to_string().contains(ACCESS_TOKEN), "{err}");
    drop(guard);

    let guard = with(graph_error(400, 131026, "Message undeliverable"))
        .mount_as_scoped(&server)
        .await;
    assert!(matches!(
        send("f").await,
        Err(ConnectorError::Rejected { code, .. }) if code == "131026"
    ));
    drop(guard);

    let guard = with(ResponseTemplate::new(403).set_body_string("forbidden"))
        .mount_as_scoped(&server)
        .await;
    assert!(matches!(
        send("g").await,
        Err(ConnectorError::Rejected { code, .. }) if code == "http_403"
    ));
    drop(guard);
}

#[tokio::test]
async fn an_unreachable_api_is_transient_and_the_token_is_never_in_the_error() {
    // Nothing listens on port 9 of localhost.
    let (c, _) = connector_at(Some("http://127.0.0.1:9".into()));
    let inbound = run(&c, &fixture("text")).envelopes()[0].clone();
    let err = c
        .send(&reply(&inbound, Content::Text { text: "hi".into() }))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");
    assert!(!err.to_string().contains(ACCESS_TOKEN));
    assert!(!format!("{c:?}").contains(ACCESS_TOKEN));
    assert!(!format!("{c:?}").contains(APP_SECRET));
}

#[tokio::test]
async fn every_message_of_a_batch_is_routed_and_kept_for_replies() {
    let server = MockServer::start().await;
    let (c, store) = connector_at(Some(server.uri()));
    let published = ingest(&c, "batch_audio_video_sticker").await;
    assert_eq!(published.len(), 3);
    for e in &published {
        let wamid = e
            .dedupe_key
            .strip_prefix(&format!("whatsapp:{PHONE_NUMBER_ID}:"))
            .unwrap();
        assert_eq!(
            store
                .get_key(&format!("whatsapp:wa-main:wamid:{}", e.id))
                .await
                .unwrap()
                .as_deref(),
            Some(wamid)
        );
    }
    // Statuses route nothing and deliver publishes nothing.
    assert!(ingest(&c, "statuses_only").await.is_empty());
    let requests: Vec<Request> = server.received_requests().await.unwrap_or_default();
    assert!(requests.is_empty(), "ingesting calls no API");
}

#[test]
fn raw_is_each_messages_own_masked_object() {
    let settings = support::keeping_raw(settings(None, "false"), &[]);
    let keeping = WhatsAppConnector::new(&settings, &support::context().0).unwrap();
    for name in ["batch_audio_video_sticker", "contacts", "text"] {
        let req = fixture(name);
        let body = support::json_body(&req);
        let messages = body["entry"][0]["changes"][0]["value"]["messages"]
            .as_array()
            .unwrap()
            .clone();
        let envelopes = run(&keeping, &req).envelopes().to_vec();
        assert_eq!(envelopes.len(), messages.len(), "{name}");
        for (envelope, message) in envelopes.iter().zip(messages) {
            assert_eq!(
                envelope.raw.as_ref(),
                Some(&support::masked(message, &[])),
                "{name}: the message's own object, not the notification"
            );
        }
        for envelope in run(&connector(), &req).envelopes() {
            assert_eq!(envelope.raw, None, "{name}: off by default");
        }
    }
    // A shared contact's phone number and WhatsApp id are masked; the sender's own `from`
    // (the envelope's identity) is not.
    let raw = run(&keeping, &fixture("contacts")).envelopes()[0]
        .raw
        .clone()
        .unwrap();
    let phone = &raw["contacts"][0]["phones"][0];
    assert_eq!(
        (&phone["phone"], &phone["wa_id"]),
        (&json!("[masked]"), &json!("[masked]"))
    );
    assert_eq!(raw["from"], "4915112345678");
}

// ---------------------------------------------------------------------------------------------
// Delivery failures: the Graph API accepted a reply, a later webhook reports it `failed`

/// Verifies, decodes and normalizes `req`, then delivers it to `sink`, as the ingress does.
async fn deliver_to(
    c: &WhatsAppConnector,
    req: &OwnedRequest,
    sink: &RecordingSink,
) -> Result<Vec<Accepted>, ConnectorError> {
    let envelopes = match run(c, req) {
        Outcome::Envelopes(e) => e,
        other => panic!("{}", other.describe()),
    };
    c.deliver(envelopes, sink).await
}

/// The `status_failed` fixture with `value.statuses` replaced by `statuses` (and re-signed).
fn with_statuses(statuses: Value) -> OwnedRequest {
    let mut req = fixture("status_failed");
    let mut body = support::json_body(&req);
    body["entry"][0]["changes"][0]["value"]["statuses"] = statuses;
    req.body = serde_json::to_vec(&body).unwrap();
    resign(&mut req);
    req
}

/// A status item of the fixture's failed wamid.
fn status_of(wamid: &str, status: &str) -> Value {
    json!({"id": wamid, "status": status, "timestamp": "1795510799", "recipient_id": CUSTOMER})
}

/// The failed status of the `status_failed` fixture, as JSON.
fn failed_item(wamid: &str) -> Value {
    serde_json::from_str(&gen_whatsapp::failed_status(wamid)).unwrap()
}

/// A reply to the customer's text, sent through the fake Graph API (which checks the exact
/// request) and accepted as `wamid`.
async fn accepted_reply(server: &MockServer, c: &WhatsAppConnector, wamid: &str) -> Envelope {
    let inbound = run(c, &fixture("text")).envelopes()[0].clone();
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(header(
            "authorization",
            format!("Bearer {ACCESS_TOKEN}").as_str(),
        ))
        .and(body_json(json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": CUSTOMER,
            "type": "text",
            "text": {"body": "Ihr Paket kommt morgen."}
        })))
        .respond_with(sent(wamid))
        .expect(1)
        .mount(server)
        .await;
    let reply = reply(
        &inbound,
        Content::Text {
            text: "Ihr Paket kommt morgen.".into(),
        },
    );
    let receipt = c.send(&reply).await.unwrap();
    assert_eq!(receipt.channel_message_id.as_deref(), Some(wamid));
    reply
}

#[tokio::test]
async fn a_failed_status_of_an_accepted_reply_reports_that_reply() {
    let server = MockServer::start().await;
    let (c, store) = connector_quoting(Some(server.uri()), "false");
    let reply = accepted_reply(&server, &c, FAILED_WAMID).await;
    let kept = store
        .get_key(&format!("whatsapp:wa-main:sent:{FAILED_WAMID}"))
        .await
        .unwrap()
        .expect("the accepted reply is remembered under its wamid");
    assert_eq!(serde_json::from_str::<Envelope>(&kept).unwrap(), reply);

    let sink = RecordingSink::default();
    let accepted = deliver_to(&c, &fixture("status_failed"), &sink)
        .await
        .unwrap();
    let failures = sink.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (message, code, reason) = &failures[0];
    assert_eq!(message, &reply, "the envelope we sent, as sent");
    assert_eq!(message.agent_id.as_deref(), Some("agent-1"));
    assert_eq!(code, "whatsapp_131026");
    assert_eq!(
        reason,
        "WhatsApp did not deliver the reply (error 131026: Message undeliverable: Unable to \
         deliver message. The recipient may not be a WhatsApp user or may use an old WhatsApp \
         version.)"
    );
    // The notice is reported, never routed; Meta gets its 200.
    assert!(sink.published().is_empty());
    assert!(accepted.is_empty());
    assert_eq!(c.accepted(&accepted).status, 200);
}

#[tokio::test]
async fn a_failed_status_of_a_message_not_sent_from_here_reports_nothing() {
    let server = MockServer::start().await;
    let (c, _) = connector_quoting(Some(server.uri()), "false");
    accepted_reply(&server, &c, "wamid.ANOTHER-REPLY").await;
    let sink = RecordingSink::default();
    deliver_to(&c, &fixture("status_failed"), &sink)
        .await
        .unwrap();
    assert!(sink.failures().is_empty());
    assert!(sink.published().is_empty());
}

#[tokio::test]
async fn sent_delivered_and_read_statuses_report_nothing() {
    let server = MockServer::start().await;
    let (c, _) = connector_quoting(Some(server.uri()), "false");
    accepted_reply(&server, &c, FAILED_WAMID).await;
    let req = with_statuses(json!(
        ["sent", "delivered", "read"].map(|status| status_of(FAILED_WAMID, status))
    ));
    assert!(run(&c, &req).envelopes().is_empty(), "nothing to report");
    let sink = RecordingSink::default();
    deliver_to(&c, &req, &sink).await.unwrap();
    assert!(sink.failures().is_empty());
    assert!(sink.published().is_empty());
}

#[tokio::test]
async fn a_failure_report_the_bus_did_not_take_is_made_again_on_metas_retry() {
    let server = MockServer::start().await;
    let (c, _) = connector_quoting(Some(server.uri()), "false");
    let reply = accepted_reply(&server, &c, FAILED_WAMID).await;
    let sink = RecordingSink::default();
    sink.fail_reports(true);
    let err = deliver_to(&c, &fixture("status_failed"), &sink)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");
    assert_eq!(err.ingress_status(), 503, "Meta retries");
    sink.fail_reports(false);
    deliver_to(&c, &fixture("status_failed"), &sink)
        .await
        .unwrap();
    let failures = sink.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0.id, reply.id);
}

#[tokio::test]
async fn unreadable_statuses_are_left_out_and_cost_the_batch_nothing() {
    let server = MockServer::start().await;
    let (c, _) = connector_quoting(Some(server.uri()), "false");
    let reply = accepted_reply(&server, &c, FAILED_WAMID).await;
    // A customer's message with, in the same change, statuses of every unreadable kind and
    // the failure of our reply.
    let mut req = fixture("text");
    let mut body = support::json_body(&req);
    body["entry"][0]["changes"][0]["value"]["statuses"] = json!([
        42,
        {"status": "failed", "errors": [{"code": 131026}]},
        {"id": FAILED_WAMID},
        failed_item(FAILED_WAMID),
    ]);
    req.body = serde_json::to_vec(&body).unwrap();
    resign(&mut req);
    let sink = RecordingSink::default();
    deliver_to(&c, &req, &sink).await.unwrap();
    let published = sink.published();
    assert_eq!(published.len(), 1, "the customer's message is routed");
    assert!(matches!(&published[0].content, Content::Text { .. }));
    let failures = sink.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0.id, reply.id);

    // `statuses` that is not even an array costs the message nothing either.
    body["entry"][0]["changes"][0]["value"]["statuses"] = json!("garbled");
    req.body = serde_json::to_vec(&body).unwrap();
    resign(&mut req);
    assert_eq!(run(&c, &req).envelopes().len(), 1);
    // Only unreadable statuses: valid, nothing to do, 200.
    let only_unreadable = with_statuses(json!([7, {"status": "failed"}]));
    assert!(run(&c, &only_unreadable).envelopes().is_empty());
}

#[test]
fn a_failed_status_is_read_from_any_reasonable_shape() {
    let read = |status: Value| failed_status(&status).unwrap().unwrap();
    let full = read(failed_item(FAILED_WAMID));
    assert_eq!(full.wamid, FAILED_WAMID);
    assert_eq!(full.recipient_id.as_deref(), Some(CUSTOMER));
    assert_eq!(full.timestamp, Some(common::RECEIVED_AT - 1));
    assert_eq!(full.code(), "whatsapp_131026");

    // No error object: `whatsapp_failed`.
    let bare = read(status_of("wamid.X", "failed"));
    assert_eq!(bare.code(), "whatsapp_failed");
    assert_eq!(
        bare.reason(),
        "WhatsApp did not deliver the reply (Meta gave no error)"
    );
    let empty_errors = read(json!({"id": "wamid.X", "status": "failed", "errors": []}));
    assert_eq!(empty_errors.code(), "whatsapp_failed");

    // A code sent as a string, a title without a message, details that only repeat it.
    let title_only = read(json!({"id": "wamid.X", "status": "failed", "errors": [{
        "code": "131047", "title": "Re-engagement message.",
        "error_data": {"details": "re-engagement message"}}]}));
    assert_eq!(title_only.code(), "whatsapp_131047");
    assert_eq!(
        title_only.reason(),
        "WhatsApp did not deliver the reply (error 131047: Re-engagement message.)"
    );
    let no_code = read(json!({"id": "wamid.X", "status": "failed", "errors": [{
        "message": "Something went wrong"}]}));
    assert_eq!(no_code.code(), "whatsapp_failed");
    assert_eq!(
        no_code.reason(),
        "WhatsApp did not deliver the reply (Something went wrong)"
    );

    // Other statuses are no failure; unreadable ones are errors, never panics.
    assert_eq!(
        failed_status(&status_of("wamid.X", "delivered")).unwrap(),
        None
    );
    assert!(failed_status(&json!("failed")).is_err());
    assert!(failed_status(&json!({"status": "failed"})).is_err());
    assert!(failed_status(&json!({"id": "wamid.X"})).is_err());
}

fn statuses_strategy() -> impl Strategy<Value = (Vec<u8>, usize)> {
    const KEYS: &[&str] = &[
        "id",
        "status",
        "timestamp",
        "recipient_id",
        "errors",
        "code",
        "title",
        "message",
        "error_data",
        "details",
        "conversation",
        "pricing",
    ];
    let kinds = prop::sample::select(vec!["failed", "sent", "delivered", "read", ""]);
    (
        prop::collection::vec((kinds, json_like(KEYS), any::<bool>()), 0..5),
        any::<bool>(),
    )
        .prop_map(|(items, with_message)| {
            let statuses: Vec<Value> = items
                .into_iter()
                .map(|(kind, mut item, with_id)| {
                    if let Some(obj) = item.as_object_mut() {
                        obj.insert("status".into(), json!(kind));
                        if with_id {
                            obj.insert("id".into(), json!("wamid.prop"));
                        }
                    }
                    item
                })
                .collect();
            let mut value = json!({
                "metadata": {"phone_number_id": PHONE_NUMBER_ID},
                "statuses": statuses,
            });
            if with_message {
                value["messages"] = json!([{"from": CUSTOMER, "id": "wamid.in", "type": "text",
                    "text": {"body": "hallo"}}]);
            }
            let body = json!({
                "object": "whatsapp_business_account",
                "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
            });
            (body.to_string().into_bytes(), usize::from(with_message))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn statuses_of_any_shape_never_cost_the_notification(
        (body, messages) in statuses_strategy()
    ) {
        let (c, template) = &*PROP;
        let mut req = template.clone();
        req.body = body;
        resign(&mut req);
        let envelopes = match run(c, &req) {
            Outcome::Envelopes(e) => e,
            other => panic!("{}", other.describe()),
        };
        let is_notice = |e: &&Envelope| {
            matches!(&e.content, Content::Event { name, .. } if name == FAILED_STATUS_EVENT)
        };
        let routed = envelopes.iter().filter(|e| !is_notice(e)).count();
        prop_assert_eq!(routed, messages);
    }
}

// ---------------------------------------------------------------------------------------------
// Templates

fn template(parameters: &[&str], components: Option<Value>) -> Content {
    Content::Template {
        name: "order_update".into(),
        language: "en_US".into(),
        parameters: parameters.iter().map(|p| (*p).to_owned()).collect(),
        components: components.map(|c| serde_json::from_value(c).unwrap()),
    }
}

/// Sends `content` as a reply to the customer's (delivered, so quotable) text and expects the
/// fake Graph API to receive exactly `template` as the body's `template` object, without
/// `context`: a template is not quoted.
async fn send_template(content: Content, template: Value, wamid: &str) {
    let server = MockServer::start().await;
    let (c, store) = connector_at(Some(server.uri()));
    let inbound = ingest(&c, "text").await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(header(
            "authorization",
            format!("Bearer {ACCESS_TOKEN}").as_str(),
        ))
        .and(body_json(json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": CUSTOMER,
            "type": "template",
            "template": template
        })))
        .respond_with(sent(wamid))
        .expect(1)
        .mount(&server)
        .await;
    let message = reply(&inbound[0], content);
    let receipt = c.send(&message).await.unwrap();
    assert_eq!(receipt.channel_message_id.as_deref(), Some(wamid));
    let kept = store
        .get_key(&format!("whatsapp:wa-main:sent:{wamid}"))
        .await
        .unwrap()
        .expect("a template is remembered for a later failed status like any send");
    assert_eq!(serde_json::from_str::<Envelope>(&kept).unwrap(), message);
}

#[tokio::test]
async fn a_template_with_parameters_fills_the_body_in_order() {
    send_template(
        template(&["Ada", "#1234"], None),
        json!({
            "name": "order_update",
            "language": {"code": "en_US"},
            "components": [{
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "Ada"},
                    {"type": "text", "text": "#1234"}
                ]
            }]
        }),
        "wamid.TPL-1",
    )
    .await;
}

#[tokio::test]
async fn a_template_with_components_sends_them_verbatim() {
    let components = json!([
        {"type": "header", "parameters": [
            {"type": "image", "image": {"link": "https://cdn.example.com/parcel.jpg"}}
        ]},
        {"type": "body", "parameters": [{"type": "text", "text": "Ada"}]},
        {"type": "button", "sub_type": "quick_reply", "index": "0", "parameters": [
            {"type": "payload", "payload": "TRACK-1234"}
        ]}
    ]);
    send_template(
        template(&[], Some(components.clone())),
        json!({
            "name": "order_update",
            "language": {"code": "en_US"},
            "components": components
        }),
        "wamid.TPL-2",
    )
    .await;
}

#[tokio::test]
async fn a_template_without_parameters_has_no_components() {
    send_template(
        template(&[], None),
        json!({"name": "order_update", "language": {"code": "en_US"}}),
        "wamid.TPL-3",
    )
    .await;
}

#[tokio::test]
async fn a_template_with_parameters_and_components_is_refused_before_any_request() {
    let server = MockServer::start().await;
    let (c, _) = connector_at(Some(server.uri()));
    Mock::given(method("POST"))
        .respond_with(sent("x"))
        .expect(0)
        .mount(&server)
        .await;
    let inbound = run(&c, &fixture("text")).envelopes()[0].clone();
    let both = template(&["Ada"], Some(json!([{"type": "body", "parameters": []}])));
    let nameless = Content::Template {
        name: " ".into(),
        language: "en_US".into(),
        parameters: Vec::new(),
        components: None,
    };
    for content in [both, nameless] {
        let err = c.send(&reply(&inbound, content)).await.unwrap_err();
        assert!(
            matches!(&err, ConnectorError::Rejected { code, .. } if code == "invalid_template"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn template_errors_are_rejections_with_metas_code() {
    let server = MockServer::start().await;
    let (c, _) = connector_at(Some(server.uri()));
    let inbound = run(&c, &fixture("text")).envelopes()[0].clone();
    for (code, title, says) in [
        (
            132000,
            "(#132000) Number of parameters does not match the expected number of params",
            "number of parameters",
        ),
        (
            132001,
            "(#132001) Template name does not exist in the translation",
            "does not exist",
        ),
    ] {
        let guard = Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(graph_error(400, code, title))
            .expect(1)
            .mount_as_scoped(&server)
            .await;
        let err = c
            .send(&reply(&inbound, template(&["Ada"], None)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ConnectorError::Rejected { code: c, message }
                if *c == code.to_string() && message.contains(says)
                    && message.contains(&code.to_string())),
            "{err}"
        );
        drop(guard);
    }
}

#[test]
fn templates_are_the_one_kind_the_window_lets_through() {
    let rules = connector().rules();
    assert!(rules.content_types.contains(&"template"));
    assert_eq!(rules.window_exempt, ["template"]);
    assert_eq!(
        serde_json::to_value(&rules).unwrap()["window_exempt"],
        json!(["template"])
    );
}
