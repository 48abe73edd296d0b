//! The LINE connector: generated webhook fixtures through the conformance kit, snapshots,
//! decode properties, and pushes against a fake LINE Messaging API (wiremock).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/gen_fixtures/common.rs"]
mod common;
#[path = "../examples/gen_fixtures/line.rs"]
mod gen_line;
mod support;

use std::time::Duration;

use gen_line::{CHANNEL_ACCESS_TOKEN, CHANNEL_SECRET, CUSTOMER, DESTINATION, OTHER_CUSTOMER};
use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard_connectors::conformance::{
    Outcome, OwnedRequest, arbitrary_bodies, check_all, check_decode_total, json_like, run,
};
use switchyard_connectors::line::{KIND, LineConnector, retry_key, webhook_signature};
use switchyard_connectors::{Connector, ConnectorContext, ConnectorError, Registry};
use switchyard_core::envelope::{ChannelRef, Content, Direction, Envelope, Media, Sender, new_id};
use switchyard_core::identity::IdentityKey;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn connector_at(api_base: Option<String>) -> LineConnector {
    let settings = support::settings(
        "line-main",
        KIND,
        api_base,
        &[
            ("channel_secret", CHANNEL_SECRET),
            ("channel_access_token", CHANNEL_ACCESS_TOKEN),
        ],
    );
    let (ctx, _) = support::context();
    LineConnector::new(&settings, &ctx).unwrap()
}

fn connector() -> LineConnector {
    connector_at(None)
}

fn fixtures() -> Vec<switchyard_connectors::conformance::Fixture> {
    support::fixtures("line")
}

fn fixture(name: &str) -> OwnedRequest {
    support::fixture("line", name)
}

fn envelopes_of(name: &str) -> Vec<Envelope> {
    match run(&connector(), &fixture(name)) {
        Outcome::Envelopes(e) => e,
        other => panic!("{name}: {}", other.describe()),
    }
}

#[test]
fn fixtures_are_what_the_generator_writes() {
    support::assert_fixtures_fresh("line", gen_line::fixtures());
}

#[test]
fn every_fixture_conforms_and_matches_its_snapshot() {
    let outcomes = check_all(&connector(), &fixtures());
    for (name, outcome) in outcomes {
        if !outcome.envelopes().is_empty() {
            insta::assert_json_snapshot!(format!("line__{name}"), outcome.envelopes(), {
                "[].id" => "[id]",
                "[].received_at" => "[received_at]",
            });
        }
    }
}

#[test]
fn signature_is_the_documented_formula() {
    // developers.line.biz verify-webhook-signature: base64(HMAC-SHA256(channel secret, body)).
    // Computed independently: Python `base64.b64encode(hmac.new(secret, body, sha256).digest())`.
    let req = fixture("verify_empty_events");
    assert_eq!(
        req.body,
        format!(r#"{{"destination":"{DESTINATION}","events":[]}}"#).as_bytes()
    );
    let sig = req.headers["x-line-signature"].to_str().unwrap();
    assert_eq!(sig, "lcOhdmvxNoyEa/oCOGOVG8E9f/5Sve5RVqQ+Et8Baec=");
    assert_eq!(sig, webhook_signature(CHANNEL_SECRET, &req.body));
    // Every fixture's signature is the generator's independent computation.
    let text = fixture("text");
    assert_eq!(
        text.headers["x-line-signature"].to_str().unwrap(),
        webhook_signature(CHANNEL_SECRET, &text.body)
    );
    // The hex form, or the signature of another secret, is refused.
    let mut hex = req.clone();
    hex.set_header(
        "x-line-signature",
        "95c3a1766bf1368c846bfa023863951bc13d7ffe52bdee5156a43e12df0169e7",
    );
    assert!(matches!(
        connector().verify(&hex.as_inbound()),
        Err(ConnectorError::Unauthorized(_))
    ));
}

#[test]
fn the_verify_request_routes_nothing_and_is_answered_200() {
    let c = connector();
    assert!(envelopes_of("verify_empty_events").is_empty());
    let reply = c.accepted(&[]);
    assert_eq!(reply.status, 200);
}

#[test]
fn a_text_message_keeps_emoji_and_mention_text_and_the_documented_keys() {
    let [e] = envelopes_of("text").try_into().unwrap();
    assert_eq!(
        e.content,
        Content::Text {
            text: "@Sally 你好 (love) Where is order #42?".into()
        }
    );
    assert_eq!(e.sender.external_id, CUSTOMER);
    assert_eq!(e.sender.scope, DESTINATION);
    assert_eq!(
        e.sender.identities,
        vec![IdentityKey::new("line_user_id", DESTINATION, CUSTOMER).unwrap()]
    );
    assert_eq!(
        e.dedupe_key,
        format!("line:{DESTINATION}:01JDQ8X3K5M7N9P1R3T5V7X9A1")
    );
    // `timestamp` is in milliseconds.
    assert_eq!(
        e.sent_at.timestamp_millis(),
        common::RECEIVED_AT * 1000 - 1500
    );
    assert_eq!(
        e.channel,
        ChannelRef {
            kind: "line".into(),
            id: "line-main".into()
        }
    );
    assert!(e.raw.is_none());
}

#[test]
fn a_redelivery_has_the_same_dedupe_key() {
    let first = envelopes_of("text");
    let again = envelopes_of("text_redelivered");
    assert_eq!(first[0].dedupe_key, again[0].dedupe_key);
    assert_ne!(first[0].id, again[0].id);
}

#[test]
fn without_webhook_event_id_the_message_id_is_the_key() {
    let e = &envelopes_of("no_webhook_event_id")[0];
    assert_eq!(
        e.dedupe_key,
        format!("line:{DESTINATION}:533466181562843170")
    );
}

#[test]
fn several_events_give_one_envelope_each_in_order() {
    let envelopes = envelopes_of("two_events");
    let senders: Vec<&str> = envelopes
        .iter()
        .map(|e| e.sender.external_id.as_str())
        .collect();
    assert_eq!(senders, [CUSTOMER, OTHER_CUSTOMER]);
    assert_eq!(
        envelopes[1].content,
        Content::Sticker {
            media: Media {
                media_id: Some("446:1988".into()),
                ..Media::default()
            }
        }
    );
    assert_ne!(envelopes[0].dedupe_key, envelopes[1].dedupe_key);
    // A follow event next to a message is skipped; the message is routed.
    assert_eq!(envelopes_of("follow_and_message").len(), 1);
}

#[test]
fn media_by_message_id_or_by_external_url() {
    let held = &envelopes_of("image")[0];
    assert_eq!(
        held.content,
        Content::Image {
            media: Media {
                media_id: Some("533466181562843138".into()),
                ..Media::default()
            },
            caption: None,
        }
    );
    let external = &envelopes_of("image_external")[0];
    assert_eq!(
        external.content,
        Content::Image {
            media: Media {
                url: Some("https://cdn.example.com/photos/original.jpg".into()),
                ..Media::default()
            },
            caption: None,
        }
    );
    // LINE gives the playing time of audio and video in milliseconds.
    match &envelopes_of("audio")[0].content {
        Content::Audio { media, .. } => {
            assert_eq!(media.media_id.as_deref(), Some("533466181562843141"));
            assert_eq!(media.duration_ms, Some(12_000));
        }
        other => panic!("{other:?}"),
    }
    match &envelopes_of("file")[0].content {
        Content::File { media, name, .. } => {
            assert_eq!(name.as_deref(), Some("invoice-42.pdf"));
            assert_eq!(media.size, Some(23456));
        }
        other => panic!("{other:?}"),
    }
    match &envelopes_of("location")[0].content {
        Content::Location {
            latitude, label, ..
        } => {
            assert!((latitude - 35.659_108_079_422_15).abs() < 1e-12);
            assert_eq!(
                label.as_deref(),
                Some("Tokyo Tower, 4 Chome-2-8 Shibakoen, Minato City, Tokyo")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn group_follow_postback_and_standby_are_not_routed() {
    for name in ["group_message", "follow", "postback", "standby_message"] {
        match run(&connector(), &fixture(name)) {
            Outcome::Error(ConnectorError::Unsupported(_)) => {}
            other => panic!("{name}: {}", other.describe()),
        }
    }
}

#[test]
fn configuration_is_checked_and_secrets_come_from_files_too() {
    let dir = std::env::temp_dir().join(format!("switchyard-line-{}", new_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, format!("{CHANNEL_SECRET}\n")).unwrap();
    let settings = support::settings(
        "line-file",
        KIND,
        None,
        &[
            ("channel_secret_file", secret_file.to_str().unwrap()),
            ("channel_access_token", CHANNEL_ACCESS_TOKEN),
        ],
    );
    let registry = Registry::build(&[settings], &ConnectorContext::default()).unwrap();
    let channel = registry.get("line-file").unwrap().as_ref();
    assert_eq!(
        switchyard_connectors::Channel::channel(channel).kind,
        "line"
    );
    // The secret read from the file verifies the fixtures.
    let req = fixture("text");
    let routed = switchyard_connectors::Channel::ingest(channel, &req.as_inbound()).unwrap();
    assert_eq!(routed.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();

    let missing = support::settings("l", KIND, None, &[("channel_secret", CHANNEL_SECRET)]);
    let err = Registry::build(&[missing], &ConnectorContext::default())
        .err()
        .unwrap();
    assert!(
        matches!(&err, ConnectorError::Config(m) if m.contains("channels.l.channel_access_token")),
        "{err}"
    );
    let unknown = support::settings(
        "l",
        KIND,
        None,
        &[
            ("channel_secret", CHANNEL_SECRET),
            ("channel_access_token", CHANNEL_ACCESS_TOKEN),
            ("reply_token", "x"),
        ],
    );
    assert!(Registry::build(&[unknown], &ConnectorContext::default()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Totality

fn event_strategy() -> impl Strategy<Value = Vec<u8>> {
    const KEYS: &[&str] = &[
        "type",
        "id",
        "text",
        "mode",
        "timestamp",
        "source",
        "userId",
        "groupId",
        "webhookEventId",
        "deliveryContext",
        "isRedelivery",
        "message",
        "contentProvider",
        "originalContentUrl",
        "previewImageUrl",
        "fileName",
        "fileSize",
        "latitude",
        "longitude",
        "title",
        "address",
        "packageId",
        "stickerId",
    ];
    let event_types = prop::sample::select(vec!["message", "follow", "postback", "unsend", ""]);
    let message_types = prop::sample::select(vec![
        "text", "image", "video", "audio", "file", "location", "sticker", "other", "",
    ]);
    let source_types = prop::sample::select(vec!["user", "group", "room", ""]);
    let event = (
        event_types,
        message_types,
        source_types,
        json_like(KEYS),
        any::<bool>(),
        any::<i64>(),
    )
        .prop_map(|(kind, message_type, source, mut message, with_ids, ts)| {
            if let Some(obj) = message.as_object_mut() {
                obj.insert("type".into(), json!(message_type));
                if with_ids {
                    obj.insert("id".into(), json!("533466181562843199"));
                }
            }
            json!({
                "type": kind,
                "mode": "active",
                "timestamp": ts,
                "source": {"type": source, "userId": CUSTOMER},
                "webhookEventId": if with_ids { json!("01JDQ8X3K5M7N9P1R3T5V7X9Z9") } else { Value::Null },
                "message": message,
            })
        });
    (
        proptest::collection::vec(prop_oneof![event, json_like(KEYS)], 0..4),
        any::<bool>(),
    )
        .prop_map(|(events, string_destination)| {
            json!({
                "destination": if string_destination { json!(DESTINATION) } else { json!(7) },
                "events": events,
            })
            .to_string()
            .into_bytes()
        })
}

#[test]
fn an_unreadable_event_is_left_out_and_the_rest_of_the_batch_routed() {
    let mut req = fixture("two_events");
    let mut body: Value = serde_json::from_slice(&req.body).unwrap();
    body["events"][1]["message"]
        .as_object_mut()
        .unwrap()
        .remove("id");
    req.body = serde_json::to_vec(&body).unwrap();
    resign(&mut req);
    let c = connector();
    match run(&c, &req) {
        Outcome::Envelopes(e) => {
            assert_eq!(e.len(), 1, "the readable event is routed");
            assert_eq!(
                e[0].dedupe_key,
                format!(
                    "line:{DESTINATION}:{}",
                    body["events"][0]["webhookEventId"].as_str().unwrap()
                )
            );
        }
        other => panic!("{}", other.describe()),
    }
    // With no readable event left, the request is malformed.
    body["events"][0]["message"]
        .as_object_mut()
        .unwrap()
        .remove("id");
    req.body = serde_json::to_vec(&body).unwrap();
    resign(&mut req);
    assert!(
        matches!(run(&c, &req), Outcome::Error(ConnectorError::Malformed(_))),
        "a batch of unreadable events"
    );
}

fn resign(req: &mut OwnedRequest) {
    let sig = webhook_signature(CHANNEL_SECRET, &req.body);
    req.set_header("x-line-signature", &sig);
}

static PROP: std::sync::LazyLock<(LineConnector, OwnedRequest)> =
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
    fn signed_webhooks_of_any_shape_never_panic(body in event_strategy()) {
        let (c, template) = &*PROP;
        check_decode_total(c, template, &body, Some(&resign));
    }
}

// ---------------------------------------------------------------------------------------------
// Pushes against a fake LINE Messaging API

fn outbound(content: Content) -> Envelope {
    Envelope {
        id: new_id(),
        tenant: "default".into(),
        direction: Direction::Outbound,
        channel: ChannelRef {
            kind: KIND.into(),
            id: "line-main".into(),
        },
        sender: Sender {
            external_id: CUSTOMER.into(),
            scope: DESTINATION.into(),
            display_name: None,
            identities: vec![IdentityKey::new("line_user_id", DESTINATION, CUSTOMER).unwrap()],
        },
        customer_id: Some("cust-1".into()),
        conversation_id: Some("conv-1".into()),
        sent_at: chrono::Utc::now(),
        received_at: chrono::Utc::now(),
        dedupe_key: "outbound:line".into(),
        content,
        reply_to: None,
        agent_id: Some("agent-1".into()),
        raw: None,
    }
}

fn text(t: &str) -> Content {
    Content::Text { text: t.into() }
}

fn sent(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "sentMessages": [{ "id": id, "quoteToken": "IStG5h1Tz7b..." }]
    }))
}

fn push() -> wiremock::MockBuilder {
    Mock::given(method("POST")).and(path("/v2/bot/message/push"))
}

async fn pushes(server: &MockServer) -> Vec<wiremock::Request> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path() == "/v2/bot/message/push")
        .collect()
}

fn retry_key_of(request: &wiremock::Request) -> String {
    request.headers["x-line-retry-key"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_retry_key_is_the_envelope_ulid_as_a_version_4_uuid() {
    // Computed independently (Python: the ULID's 128 bits, version and variant bits set).
    assert_eq!(
        retry_key("01JDQ3Z6X9V4T2B8N5M7K1H0GF"),
        "01936e3f-9ba9-4934-a5a2-a5a1e618820f"
    );
}

#[tokio::test]
async fn a_text_push_is_exactly_what_line_documents() {
    let server = MockServer::start().await;
    let c = connector_at(Some(server.uri()));
    let message = outbound(text("您好，已发货 🚚"));
    push()
        .and(header(
            "authorization",
            format!("Bearer {CHANNEL_ACCESS_TOKEN}").as_str(),
        ))
        .and(header("content-type", "application/json"))
        .and(header("x-line-retry-key", retry_key(&message.id).as_str()))
        .and(body_json(json!({
            "to": CUSTOMER,
            "messages": [{ "type": "text", "text": "您好，已发货 🚚" }]
        })))
        .respond_with(sent("461230966842064897"))
        .expect(1)
        .mount(&server)
        .await;
    let receipt = c.send(&message).await.unwrap();
    assert_eq!(
        receipt.channel_message_id.as_deref(),
        Some("461230966842064897")
    );
    let requests = pushes(&server).await;
    let key = retry_key_of(&requests[0]);
    assert_eq!(key.len(), 36);
    assert!(key.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
}

#[tokio::test]
async fn a_retry_carries_the_same_key_and_a_409_means_already_accepted() {
    let server = MockServer::start().await;
    let c = connector_at(Some(server.uri()));
    let message = outbound(text("retry me"));
    let guard = push()
        .respond_with(
            ResponseTemplate::new(500).set_body_json(json!({"message": "Internal error"})),
        )
        .expect(1)
        .mount_as_scoped(&server)
        .await;
    let err = c.send(&message).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");
    drop(guard);
    // LINE had accepted the first push after all: the retry gets 409.
    push()
        .respond_with(ResponseTemplate::new(409).set_body_json(json!({
            "message": "The retry key is already accepted",
            "sentMessages": [{ "id": "461230966842064898", "quoteToken": "x" }]
        })))
        .mount(&server)
        .await;
    let receipt = c.send(&message).await.unwrap();
    assert_eq!(
        receipt.channel_message_id.as_deref(),
        Some("461230966842064898")
    );
    let both = pushes(&server).await;
    assert_eq!(both.len(), 2);
    assert_eq!(retry_key_of(&both[0]), retry_key(&message.id));
    assert_eq!(
        retry_key_of(&both[0]),
        retry_key_of(&both[1]),
        "the retry carries the first attempt's key"
    );
    // A 409 without a body is a success too.
    server.reset().await;
    push()
        .respond_with(ResponseTemplate::new(409))
        .mount(&server)
        .await;
    assert_eq!(c.send(&message).await.unwrap().channel_message_id, None);
    // Another envelope gets another key.
    c.send(&outbound(text("another"))).await.unwrap();

    let requests = pushes(&server).await;
    assert_eq!(requests.len(), 2);
    assert_eq!(retry_key_of(&requests[0]), retry_key(&message.id));
    assert_ne!(retry_key_of(&requests[1]), retry_key(&message.id));
}

#[tokio::test]
async fn images_and_videos_go_by_https_url() {
    let server = MockServer::start().await;
    let c = connector_at(Some(server.uri()));
    push()
        .and(body_json(json!({
            "to": CUSTOMER,
            "messages": [{
                "type": "image",
                "originalContentUrl": "https://cdn.example.com/a.jpg",
                "previewImageUrl": "https://cdn.example.com/a.jpg"
            }]
        })))
        .respond_with(sent("1"))
        .expect(1)
        .mount(&server)
        .await;
    push()
        .and(body_json(json!({
            "to": CUSTOMER,
            "messages": [{
                "type": "video",
                "originalContentUrl": "https://cdn.example.com/v.mp4",
                "previewImageUrl": "https://cdn.example.com/v.jpg"
            }]
        })))
        .respond_with(sent("2"))
        .expect(1)
        .mount(&server)
        .await;
    let url = |u: &str| Media {
        url: Some(u.into()),
        ..Media::default()
    };
    let image = c
        .send(&outbound(Content::Image {
            media: url("https://cdn.example.com/a.jpg"),
            caption: None,
        }))
        .await
        .unwrap();
    assert_eq!(image.channel_message_id.as_deref(), Some("1"));
    let video = c
        .send(&outbound(Content::Video {
            media: url("https://cdn.example.com/v.mp4"),
            thumbnail: Some(url("https://cdn.example.com/v.jpg")),
            caption: None,
        }))
        .await
        .unwrap();
    assert_eq!(video.channel_message_id.as_deref(), Some("2"));
}

#[tokio::test]
async fn audio_goes_by_https_url_with_its_duration() {
    let server = MockServer::start().await;
    let c = connector_at(Some(server.uri()));
    push()
        .and(body_json(json!({
            "to": CUSTOMER,
            "messages": [{
                "type": "audio",
                "originalContentUrl": "https://cdn.example.com/a.m4a",
                "duration": 61_500
            }]
        })))
        .respond_with(sent("3"))
        .expect(1)
        .mount(&server)
        .await;
    let audio = c
        .send(&outbound(Content::Audio {
            media: Media {
                url: Some("https://cdn.example.com/a.m4a".into()),
                duration_ms: Some(61_500),
                ..Media::default()
            },
            recognition: None,
            caption: None,
        }))
        .await
        .unwrap();
    assert_eq!(audio.channel_message_id.as_deref(), Some("3"));
}

#[tokio::test]
async fn a_caption_is_a_text_message_after_its_media_in_the_same_push() {
    let server = MockServer::start().await;
    let c = connector_at(Some(server.uri()));
    push()
        .and(body_json(json!({
            "to": CUSTOMER,
            "messages": [
                {
                    "type": "image",
                    "originalContentUrl": "https://cdn.example.com/a.jpg",
                    "previewImageUrl": "https://cdn.example.com/a.jpg"
                },
                {"type": "text", "text": "こちらが返品ラベルです 📦"}
            ]
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sentMessages": [{"id": "m-image"}, {"id": "m-caption"}]
        })))
        .expect(1)
        .mount(&server)
        .await;
    let message = outbound(Content::Image {
        media: Media {
            url: Some("https://cdn.example.com/a.jpg".into()),
            ..Media::default()
        },
        caption: Some("こちらが返品ラベルです 📦".into()),
    });
    let receipt = c.send(&message).await.unwrap();
    assert_eq!(receipt.channel_message_id.as_deref(), Some("m-image"));
    let requests = pushes(&server).await;
    assert_eq!(requests.len(), 1, "one request: both go or neither");
    assert_eq!(retry_key_of(&requests[0]), retry_key(&message.id));
    // A caption LINE cannot carry as text is refused before any request.
    let too_long = outbound(Content::Image {
        media: Media {
            url: Some("https://cdn.example.com/a.jpg".into()),
            ..Media::default()
        },
        caption: Some("字".repeat(5001)),
    });
    assert!(matches!(
        c.send(&too_long).await,
        Err(ConnectorError::Rejected { code, .. }) if code == "text_too_long"
    ));
    assert_eq!(pushes(&server).await.len(), 1);
}

#[tokio::test]
async fn content_line_cannot_carry_is_refused_before_any_request() {
    let server = MockServer::start().await;
    let c = connector_at(Some(server.uri()));
    push()
        .respond_with(sent("x"))
        .expect(0)
        .mount(&server)
        .await;
    let url = |u: &str| Media {
        url: Some(u.into()),
        ..Media::default()
    };
    let cases = [
        (
            Content::Image {
                media: url("http://cdn.example.com/a.jpg"),
                caption: None,
            },
            "media_url_not_https",
        ),
        (
            Content::Image {
                media: Media {
                    media_id: Some("533466181562843138".into()),
                    ..Media::default()
                },
                caption: None,
            },
            "media_url_required",
        ),
        (
            Content::Video {
                media: url("https://cdn.example.com/v.mp4"),
                thumbnail: None,
                caption: None,
            },
            "video_preview_required",
        ),
        (
            Content::Audio {
                media: url("https://cdn.example.com/a.m4a"),
                recognition: None,
                caption: None,
            },
            "audio_duration_required",
        ),
        (
            Content::Card {
                title: "card".into(),
                url: None,
                thumbnail: None,
                attributes: serde_json::Map::new(),
            },
            "content_unsupported",
        ),
        // 2 501 emoji: 2 501 characters but 5 002 UTF-16 code units (LINE's count).
        (text(&"🚚".repeat(2501)), "text_too_long"),
        (text(""), "text_empty"),
    ];
    for (content, code) in cases {
        let err = c.send(&outbound(content)).await.unwrap_err();
        assert!(
            matches!(&err, ConnectorError::Rejected { code: got, .. } if got == code),
            "{code}: {err:?}"
        );
        assert!(!err.is_retryable());
    }
    // 5 000 code units exactly is fine.
    assert!(switchyard_connectors::line::push_message(&text(&"字".repeat(5000))).is_ok());
}

#[tokio::test]
async fn failures_are_classified() {
    let server = MockServer::start().await;
    let c = connector_at(Some(server.uri()));
    let answers = [
        (
            ResponseTemplate::new(429)
                .insert_header("retry-after", "7")
                .set_body_json(json!({"message": "Too Many Requests"})),
            "rate_limited",
            None,
        ),
        (
            ResponseTemplate::new(429)
                .set_body_json(json!({"message": "You have reached your monthly limit."})),
            "rejected",
            Some("monthly_limit_reached"),
        ),
        (
            ResponseTemplate::new(400).set_body_json(json!({
                "message": "The request body has 1 error(s)",
                "details": [{"message": "must be specified", "property": "to"}]
            })),
            "rejected",
            Some("bad_request"),
        ),
        (
            ResponseTemplate::new(401).set_body_json(json!({
                "message": "Authentication failed due to the following reason: invalid token."
            })),
            "rejected",
            Some("access_token_invalid"),
        ),
        (
            ResponseTemplate::new(403).set_body_json(json!({
                "message": "Access to this API is not available for your account"
            })),
            "rejected",
            Some("forbidden"),
        ),
        (ResponseTemplate::new(502), "transient", None),
        (
            ResponseTemplate::new(503).set_body_string("unavailable"),
            "transient",
            None,
        ),
    ];
    for (answer, class, code) in answers {
        let guard = push()
            .respond_with(answer)
            .expect(1)
            .mount_as_scoped(&server)
            .await;
        let err = c.send(&outbound(text("hi"))).await.unwrap_err();
        assert_eq!(err.outcome(), class, "{err:?}");
        if let Some(code) = code {
            assert!(
                matches!(&err, ConnectorError::Rejected { code: got, .. } if got == code),
                "{err:?}"
            );
        }
        assert!(
            !err.to_string().contains(CHANNEL_ACCESS_TOKEN),
            "the token never appears in errors"
        );
        drop(guard);
    }
    let guard = push()
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "7"))
        .mount_as_scoped(&server)
        .await;
    assert!(matches!(
        c.send(&outbound(text("hi"))).await,
        Err(ConnectorError::RateLimited { retry_after: Some(d) }) if d == Duration::from_secs(7)
    ));
    drop(guard);
    let err = c.send(&outbound(text("hi"))).await.unwrap_err();
    assert!(
        matches!(err, ConnectorError::Rejected { ref code, .. } if code == "http_404"),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_api_is_transient_and_the_token_stays_secret() {
    let c = connector_at(Some("http://127.0.0.1:9".into()));
    let err = c.send(&outbound(text("hi"))).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");
    assert!(!err.to_string().contains(CHANNEL_ACCESS_TOKEN));
    let debug = format!("{c:?}");
    assert!(!debug.contains(CHANNEL_ACCESS_TOKEN), "{debug}");
    assert!(!debug.contains(CHANNEL_SECRET), "{debug}");
}

#[test]
fn rules_state_no_window_the_text_limit_and_the_types() {
    let rules = connector().rules();
    assert_eq!(rules.reply_window, None);
    assert_eq!(rules.max_replies_per_inbound, None);
    assert_eq!(rules.max_text_chars, Some(5000));
    assert_eq!(rules.content_types, vec!["text", "image", "audio", "video"]);
}

#[test]
fn raw_is_each_events_own_masked_object() {
    let settings = support::keeping_raw(
        support::settings(
            "line-main",
            KIND,
            None,
            &[
                ("channel_secret", CHANNEL_SECRET),
                ("channel_access_token", CHANNEL_ACCESS_TOKEN),
            ],
        ),
        &["replyToken", "quoteToken"],
    );
    let keeping = LineConnector::new(&settings, &support::context().0).unwrap();
    let req = fixture("two_events");
    let events = support::json_body(&req)["events"]
        .as_array()
        .unwrap()
        .clone();
    let envelopes = match run(&keeping, &req) {
        Outcome::Envelopes(e) => e,
        other => panic!("{}", other.describe()),
    };
    assert_eq!(envelopes.len(), 2);
    for (envelope, event) in envelopes.iter().zip(events) {
        let expected = support::masked(event, &["replytoken", "quotetoken"]);
        assert_eq!(expected["replyToken"], "[masked]");
        assert_eq!(
            envelope.raw.as_ref(),
            Some(&expected),
            "the event, not the webhook"
        );
    }
    assert!(envelopes_of("two_events").iter().all(|e| e.raw.is_none()));
}
