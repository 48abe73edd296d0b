//! The Douyin connector: generated webhook fixtures through the conformance kit, snapshots,
//! decode properties, and replies against a fake Douyin API (wiremock).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/gen_fixtures/common.rs"]
mod common;
#[path = "../examples/gen_fixtures/douyin.rs"]
mod gen_douyin;
mod support;

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use gen_douyin::{ACCOUNT, CLIENT_KEY, CLIENT_SECRET, CONVERSATION, CUSTOMER};
use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard_connectors::conformance::{
    CollectSink, OwnedRequest, arbitrary_bodies, check_all, check_decode_total, json_like, run,
};
use switchyard_connectors::douyin::{DouyinConnector, KIND, webhook_signature};
use switchyard_connectors::{Connector, ConnectorError};
use switchyard_core::envelope::{Content, Direction, Envelope, Media, new_id};
use switchyard_core::store::Store;
use wiremock::matchers::{body_json, body_string, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn connector_with(
    api_base: Option<String>,
    extra: &[(&str, &str)],
) -> (DouyinConnector, Arc<dyn Store>) {
    let mut options = vec![("client_key", CLIENT_KEY), ("client_secret", CLIENT_SECRET)];
    options.extend_from_slice(extra);
    let settings = support::settings("dy-main", KIND, api_base, &options);
    let (ctx, store) = support::context();
    (DouyinConnector::new(&settings, &ctx).unwrap(), store)
}

fn connector() -> DouyinConnector {
    connector_with(None, &[]).0
}

fn fixtures() -> Vec<switchyard_connectors::conformance::Fixture> {
    support::fixtures("douyin")
}

fn fixture(name: &str) -> OwnedRequest {
    support::fixture("douyin", name)
}

#[test]
fn fixtures_are_what_the_generator_writes() {
    support::assert_fixtures_fresh("douyin", gen_douyin::fixtures());
}

#[test]
fn every_fixture_conforms_and_matches_its_snapshot() {
    let outcomes = check_all(&connector(), &fixtures());
    for (name, outcome) in outcomes {
        if !outcome.envelopes().is_empty() {
            insta::assert_json_snapshot!(format!("douyin__{name}"), outcome.envelopes(), {
                "[].id" => "[id]",
                "[].received_at" => "[received_at]",
            });
        }
    }
}

#[test]
fn signature_is_the_documented_formula() {
    // developer.open-douyin.com Webhooks 概述: sha1(client_secret + body), lower-case hex.
    let req = fixture("text");
    let sig = req.headers["x-douyin-signature"].to_str().unwrap();
    assert_eq!(sig, webhook_signature(CLIENT_SECRET, &req.body));
    // Upper-case hex is accepted too (the comparison is case-insensitive).
    let mut upper = req.clone();
    upper.set_header("x-douyin-signature", &sig.to_ascii_uppercase());
    assert_eq!(run(&connector(), &upper).envelopes().len(), 1);
}

#[test]
fn webhook_secret_overrides_client_secret() {
    let (c, _) = connector_with(None, &[("webhook_secret", "dedicated-webhook-secret")]);
    let mut req = fixture("text");
    assert!(matches!(
        c.verify(&req.as_inbound()),
        Err(ConnectorError::Unauthorized(_))
    ));
    let sig = webhook_signature("dedicated-webhook-secret", &req.body);
    req.set_header("x-douyin-signature", &sig);
    c.verify(&req.as_inbound()).unwrap();
}

#[test]
fn content_as_string_and_object_normalize_alike() {
    let c = connector();
    let a = run(&c, &fixture("text")).envelopes()[0].clone();
    let b = run(&c, &fixture("text_content_string")).envelopes()[0].clone();
    assert_eq!(a.sender, b.sender);
    assert_eq!(
        a.sender.identities[0].as_str(),
        format!("douyin_open_id:{CLIENT_KEY}:{CUSTOMER}")
    );
    assert_eq!(a.sender.display_name.as_deref(), Some("李雷"));
    assert_eq!(a.dedupe_key, format!("douyin:{CLIENT_KEY}:@srv-text-0001"));
    assert_eq!(b.dedupe_key, format!("douyin:{CLIENT_KEY}:@srv-text-0002"));
}

#[test]
fn a_retry_with_a_new_msg_id_header_keeps_the_dedupe_key() {
    let c = connector();
    let first = fixture("text");
    let mut retry = first.clone();
    retry.set_header("msg-id", "another-delivery");
    retry.received_at += TimeDelta::seconds(5);
    let (a, b) = (run(&c, &first), run(&c, &retry));
    assert_eq!(a.envelopes()[0].dedupe_key, b.envelopes()[0].dedupe_key);
    // Without server_message_id the Msg-Id header is the key.
    let no_id = run(&c, &fixture("no_server_message_id"));
    assert_eq!(
        no_id.envelopes()[0].dedupe_key,
        format!("douyin:{CLIENT_KEY}:msg-id:msg-no_server_message_id")
    );
}

#[test]
fn an_account_filter_ignores_other_accounts() {
    let (c, _) = connector_with(None, &[("account_open_id", "someone-else")]);
    match run(&c, &fixture("text")) {
        switchyard_connectors::conformance::Outcome::Error(ConnectorError::Unsupported(_)) => {}
        other => panic!("{}", other.describe()),
    }
}

fn event_strategy() -> impl Strategy<Value = Vec<u8>> {
    const KEYS: &[&str] = &[
        "conversation_short_id",
        "server_message_id",
        "conversation_type",
        "message_type",
        "text",
        "create_time",
        "user_infos",
        "open_id",
        "nick_name",
        "resource_url",
        "item_id",
        "card_id",
        "card_data",
        "challenge",
        "scene_type",
        "objectId",
    ];
    let events = prop::sample::select(vec![
        "im_receive_msg",
        "im_enter_direct_msg",
        "im_send_msg",
        "verify_webhook",
        "authorize",
        "",
    ]);
    let types = prop::sample::select(vec![
        "text",
        "image",
        "emoji",
        "video",
        "user_local_image",
        "user_local_video",
        "retain_consult_card",
        "other",
        "",
    ]);
    (events, types, json_like(KEYS), any::<bool>(), any::<bool>()).prop_map(
        |(event, kind, mut content, as_string, with_ids)| {
            if let Some(obj) = content.as_object_mut() {
                obj.insert("message_type".into(), json!(kind));
                if with_ids {
                    obj.insert("server_message_id".into(), json!("@srv-prop"));
                    obj.insert("conversation_short_id".into(), json!("@conv"));
                }
            }
            let content = if as_string {
                Value::String(content.to_string())
            } else {
                content
            };
            json!({
                "event": event,
                "client_key": CLIENT_KEY,
                "from_user_id": CUSTOMER,
                "to_user_id": ACCOUNT,
                "content": content,
            })
            .to_string()
            .into_bytes()
        },
    )
}

fn resign(req: &mut OwnedRequest) {
    let sig = webhook_signature(CLIENT_SECRET, &req.body);
    req.set_header("x-douyin-signature", &sig);
}

static PROP: std::sync::LazyLock<(DouyinConnector, OwnedRequest)> =
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
    fn signed_events_of_any_shape_never_panic(body in event_strategy()) {
        let (c, template) = &*PROP;
        check_decode_total(c, template, &body, Some(&resign));
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound against a fake Douyin API

/// A customer text DM created `age` ago, signed.
fn fresh_dm(server_message_id: &str, age: TimeDelta) -> OwnedRequest {
    let created = (Utc::now() - age).timestamp_millis();
    let body = format!(
        r#"{{"event":"im_receive_msg","client_key":"{CLIENT_KEY}","from_user_id":"{CUSTOMER}","to_user_id":"{ACCOUNT}","content":{{"conversation_short_id":"{CONVERSATION}","server_message_id":"{server_message_id}","conversation_type":1,"message_type":"text","text":"在吗","create_time":{created}}}}}"#
    );
    let mut req = fixture("text");
    req.body = body.into_bytes();
    req.received_at = Utc::now();
    resign(&mut req);
    req
}

/// Ingests `req` the way the ingress does (deliver included); returns the routed envelope.
async fn ingest(c: &DouyinConnector, req: &OwnedRequest) -> Envelope {
    let envelopes = match run(c, req) {
        switchyard_connectors::conformance::Outcome::Envelopes(e) => e,
        other => panic!("{}", other.describe()),
    };
    assert!(
        envelopes[0].raw.is_some(),
        "normalize hands the reply context to deliver"
    );
    let sink = CollectSink::new();
    let accepted = c.deliver(envelopes, &sink).await.unwrap();
    assert_eq!(accepted.len(), 1);
    let published = sink.published();
    assert_eq!(
        published[0].raw, None,
        "the reply context never reaches the bus"
    );
    published[0].clone()
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

fn refresh_ok(token: &str, refresh: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "data": {
            "access_token": token, "expires_in": 1_296_000, "refresh_token": refresh,
            "refresh_expires_in": 2_592_000, "open_id": ACCOUNT, "scope": "im.direct_message",
            "error_code": 0, "description": ""
        },
        "message": "success"
    }))
}

fn refresh_form(refresh: &str) -> String {
    format!("client_key={CLIENT_KEY}&grant_type=refresh_token&refresh_token={refresh}")
}

fn send_ok(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "data": { "msg_id": id, "error_code": 0, "description": "" },
        "extra": { "logid": "2026", "now": 1 }
    }))
}

#[tokio::test]
async fn reply_quotes_the_customer_message_with_a_cached_token() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()), &[("refresh_token", "rt-1")]);
    Mock::given(method("POST"))
        .and(path("/oauth/refresh_token/"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(refresh_form("rt-1")))
        .respond_with(refresh_ok("act.1", "rt-2"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .and(query_param("open_id", ACCOUNT))
        .and(header("access-token", "act.1"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "msg_id": "@srv-now-1",
            "conversation_id": CONVERSATION,
            "to_user_id": CUSTOMER,
            "content": { "msg_type": 1, "text": { "text": "您好，马上为您查询" } }
        })))
        .respond_with(send_ok("@sent-1"))
        .expect(2)
        .mount(&server)
        .await;
    let inbound = ingest(&c, &fresh_dm("@srv-now-1", TimeDelta::seconds(3))).await;
    let reply = reply_to(
        &inbound,
        Content::Text {
            text: "您好，马上为您查询".into(),
        },
    );
    let receipt = c.send(&reply).await.unwrap();
    assert_eq!(receipt.channel_message_id.as_deref(), Some("@sent-1"));
    // The token is cached in the store: no second refresh.
    c.send(&reply).await.unwrap();
    let key = format!("douyin:{CLIENT_KEY}:{ACCOUNT}:access_token");
    assert_eq!(store.get_key(&key).await.unwrap().as_deref(), Some("act.1"));
    let rotated = format!("douyin:{CLIENT_KEY}:{ACCOUNT}:refresh_token");
    assert_eq!(
        store.get_key(&rotated).await.unwrap().as_deref(),
        Some("rt-2")
    );
}

#[tokio::test]
async fn an_image_caption_follows_as_a_text_reply() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()), &[("refresh_token", "rt-1")]);
    Mock::given(method("POST"))
        .and(path("/oauth/refresh_token/"))
        .respond_with(refresh_ok("act.1", "rt-2"))
        .mount(&server)
        .await;
    let body = |content: Value| {
        json!({
            "msg_id": "@srv-now-2",
            "conversation_id": CONVERSATION,
            "to_user_id": CUSTOMER,
            "content": content,
        })
    };
    Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .and(body_json(body(
            json!({ "msg_type": 2, "image": { "media_id": "@img-known" } }),
        )))
        .respond_with(send_ok("@sent-image"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .and(body_json(body(
            json!({ "msg_type": 1, "text": { "text": "这是尺码表" } }),
        )))
        .respond_with(send_ok("@sent-caption"))
        .expect(1)
        .mount(&server)
        .await;
    let inbound = ingest(&c, &fresh_dm("@srv-now-2", TimeDelta::seconds(3))).await;
    let reply = reply_to(
        &inbound,
        Content::Image {
            media: Media {
                media_id: Some("@img-known".into()),
                ..Media::default()
            },
            caption: Some("这是尺码表".into()),
        },
    );
    let receipt = c.send(&reply).await.unwrap();
    assert_eq!(receipt.channel_message_id.as_deref(), Some("@sent-image"));
    let kinds: Vec<Value> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/im/send/msg/")
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["content"]["msg_type"].clone())
        .collect();
    assert_eq!(kinds, [json!(2), json!(1)], "the image first");
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_send_retried() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()), &[("refresh_token", "rt-1")]);
    store
        .set_key(
            &format!("douyin:{CLIENT_KEY}:{ACCOUNT}:access_token"),
            "act.old",
            std::time::Duration::from_secs(600),
        )
        .await
        .unwrap();
    Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .and(header("access-token", "act.old"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": { "error_code": 2190008, "description": "access_token过期" }
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/refresh_token/"))
        .and(body_string(refresh_form("rt-1")))
        .respond_with(refresh_ok("act.new", "rt-1"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .and(header("access-token", "act.new"))
        .respond_with(send_ok("@sent-2"))
        .expect(1)
        .mount(&server)
        .await;
    let inbound = ingest(&c, &fresh_dm("@srv-now-2", TimeDelta::seconds(1))).await;
    let receipt = c
        .send(&reply_to(&inbound, Content::Text { text: "hi".into() }))
        .await
        .unwrap();
    assert_eq!(receipt.channel_message_id.as_deref(), Some("@sent-2"));
}

#[tokio::test]
async fn failures_are_classified() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()), &[("access_token", "act.static")]);
    let inbound = ingest(&c, &fresh_dm("@srv-now-3", TimeDelta::seconds(1))).await;
    let send = |text: &str| {
        let reply = reply_to(&inbound, Content::Text { text: text.into() });
        let c = &c;
        async move { c.send(&reply).await }
    };

    let guard = Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .respond_with(ResponseTemplate::new(502))
        .mount_as_scoped(&server)
        .await;
    assert!(matches!(send("a").await, Err(ConnectorError::Transient(_))));
    drop(guard);

    let guard = Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "7"))
        .mount_as_scoped(&server)
        .await;
    assert!(matches!(
        send("b").await,
        Err(ConnectorError::RateLimited { retry_after: Some(d) }) if d.as_secs() == 7
    ));
    drop(guard);

    let guard = Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "err_no": 28003017, "err_msg": "请求过于频繁", "log_id": "x"
        })))
        .mount_as_scoped(&server)
        .await;
    assert!(matches!(
        send("c").await,
        Err(ConnectorError::RateLimited { .. })
    ));
    drop(guard);

    let guard = Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": { "error_code": 2190015, "description": "消息已超过可回复时间" }
        })))
        .mount_as_scoped(&server)
        .await;
    assert!(matches!(
        send("d").await,
        Err(ConnectorError::Rejected { code, .. }) if code == "2190015"
    ));
    drop(guard);

    // Content the connector cannot send is refused before any request.
    let card = reply_to(
        &inbound,
        Content::Video {
            media: Media::default(),
            thumbnail: None,
            caption: None,
        },
    );
    assert!(
        matches!(c.send(&card).await, Err(ConnectorError::Rejected { code, .. }) if code == "content_unsupported")
    );
}

#[tokio::test]
async fn replies_outside_the_24_hour_window_are_refused_without_a_request() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()), &[("access_token", "act.static")]);
    Mock::given(method("POST"))
        .respond_with(send_ok("x"))
        .expect(0)
        .mount(&server)
        .await;
    let old = ingest(&c, &fresh_dm("@srv-old", TimeDelta::hours(25))).await;
    let err = c
        .send(&reply_to(
            &old,
            Content::Text {
                text: "too late".into(),
            },
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectorError::Rejected { ref code, .. } if code == "reply_window_closed"),
        "{err}"
    );
}

#[tokio::test]
async fn the_latest_customer_message_is_used_without_reply_to() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()), &[("access_token", "act.static")]);
    Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .and(header("access-token", "act.static"))
        .and(body_json(json!({
            "msg_id": "@srv-latest",
            "conversation_id": CONVERSATION,
            "to_user_id": CUSTOMER,
            "content": { "msg_type": 1, "text": { "text": "ok" } }
        })))
        .respond_with(send_ok("@sent-3"))
        .expect(1)
        .mount(&server)
        .await;
    ingest(&c, &fresh_dm("@srv-earlier", TimeDelta::seconds(30))).await;
    let latest = ingest(&c, &fresh_dm("@srv-latest", TimeDelta::seconds(2))).await;
    let mut reply = reply_to(&latest, Content::Text { text: "ok".into() });
    reply.reply_to = None;
    c.send(&reply).await.unwrap();
}

#[tokio::test]
async fn a_reply_to_the_enter_event_uses_its_scene() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()), &[("access_token", "act.static")]);
    Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .and(wiremock::matchers::body_partial_json(json!({
            "msg_id": "@srv-enter-now", "scene": "im_enter_direct_msg"
        })))
        .respond_with(send_ok("@sent-4"))
        .expect(1)
        .mount(&server)
        .await;
    let created = Utc::now().timestamp_millis();
    let mut req = fixture("enter_direct_msg");
    req.body = format!(
        r#"{{"event":"im_enter_direct_msg","client_key":"{CLIENT_KEY}","from_user_id":"{CUSTOMER}","to_user_id":"{ACCOUNT}","content":"{{\"conversation_short_id\":\"{CONVERSATION}\",\"server_message_id\":\"@srv-enter-now\",\"conversation_type\":1,\"create_time\":{created}}}"}}"#
    )
    .into_bytes();
    resign(&mut req);
    let inbound = ingest(&c, &req).await;
    assert!(
        matches!(inbound.content, Content::Event { ref name, .. } if name == "im_enter_direct_msg")
    );
    c.send(&reply_to(
        &inbound,
        Content::Text {
            text: "欢迎".into(),
        },
    ))
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Images given by URL: download, the image upload tool, then the send by media_id

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR-douyin-test-image";

fn client_token_ok(token: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "data": { "access_token": token, "description": "", "error_code": 0, "expires_in": 7200 },
        "message": "success"
    }))
}

async fn mount_client_token(server: &MockServer, token: &str, times: u64) {
    Mock::given(method("POST"))
        .and(path("/oauth/stable_client_token/"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "client_key": CLIENT_KEY, "client_secret": CLIENT_SECRET,
            "grant_type": "client_credential"
        })))
        .respond_with(client_token_ok(token))
        .expect(times)
        .mount(server)
        .await;
}

async fn uploads(server: &MockServer) -> Vec<wiremock::Request> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path() == "/tool/imagex/client_upload/")
        .collect()
}

fn image_by_url(url: String) -> Content {
    Content::Image {
        media: Media {
            url: Some(url),
            ..Media::default()
        },
        caption: None,
    }
}

#[tokio::test]
async fn an_image_url_is_uploaded_with_the_client_token_once_and_sent_by_id() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()), &[("access_token", "act.static")]);
    mount_client_token(&server, "clt.1", 1).await;
    Mock::given(method("GET"))
        .and(path("/cdn/cat.png"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "image/png")
                .set_body_bytes(PNG),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/tool/imagex/client_upload/"))
        .and(header("access-token", "clt.1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "image_id": "tos-cn-i-0000/abc123", "width": 360, "height": 360, "md5": "x",
            "data": { "error_code": 0, "description": "" },
            "extra": { "error_code": 0, "description": "", "sub_error_code": 0, "logid": "1" }
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .and(query_param("open_id", ACCOUNT))
        .and(header("access-token", "act.static"))
        .and(body_json(json!({
            "msg_id": "@srv-img-1",
            "conversation_id": CONVERSATION,
            "to_user_id": CUSTOMER,
            "content": { "msg_type": 2, "image": { "media_id": "tos-cn-i-0000/abc123" } }
        })))
        .respond_with(send_ok("@sent-img"))
        .expect(2)
        .mount(&server)
        .await;
    let inbound = ingest(&c, &fresh_dm("@srv-img-1", TimeDelta::seconds(2))).await;
    let url = format!("{}/cdn/cat.png", server.uri());
    let receipt = c
        .send(&reply_to(&inbound, image_by_url(url.clone())))
        .await
        .unwrap();
    assert_eq!(receipt.channel_message_id.as_deref(), Some("@sent-img"));
    // The same URL again: the cached image id, no second download or upload.
    c.send(&reply_to(&inbound, image_by_url(url)))
        .await
        .unwrap();

    let uploads = uploads(&server).await;
    assert_eq!(uploads.len(), 1);
    let content_type = uploads[0]
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    let boundary = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .unwrap();
    let mut expected = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; \
         filename=\"image.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    expected.extend_from_slice(PNG);
    expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert_eq!(
        String::from_utf8_lossy(&uploads[0].body),
        String::from_utf8_lossy(&expected)
    );
}

#[tokio::test]
async fn oversized_and_unsupported_images_are_refused_before_any_upload() {
    let server = MockServer::start().await;
    let (c, _) = connector_with(Some(server.uri()), &[("access_token", "act.static")]);
    Mock::given(method("GET"))
        .and(path("/cdn/huge.jpg"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![0xFFu8; 10 * 1024 * 1024 + 1]))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/cdn/page.html"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/html; charset=utf-8")
                .set_body_string("<html>not an image</html>"),
        )
        .mount(&server)
        .await;
    let inbound = ingest(&c, &fresh_dm("@srv-img-2", TimeDelta::seconds(2))).await;
    for (file, code) in [
        ("huge.jpg", "media_too_large"),
        ("page.html", "media_type_unsupported"),
    ] {
        let err = c
            .send(&reply_to(
                &inbound,
                image_by_url(format!("{}/cdn/{file}", server.uri())),
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ConnectorError::Rejected { code: got, .. } if got == code),
            "{file}: {err:?}"
        );
        assert!(!err.is_retryable());
    }
    let api_calls: Vec<String> = server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| r.url.path().to_owned())
        .filter(|p| !p.starts_with("/cdn/"))
        .collect();
    assert!(api_calls.is_empty(), "{api_calls:?}");
}

#[tokio::test]
async fn image_upload_errors_are_classified_and_a_refused_client_token_is_refreshed() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()), &[("access_token", "act.static")]);
    store
        .set_key(
            &format!("douyin:{CLIENT_KEY}:client_token"),
            "clt.old",
            std::time::Duration::from_secs(600),
        )
        .await
        .unwrap();
    Mock::given(method("GET"))
        .and(path("/cdn/cat.png"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(PNG))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/tool/imagex/client_upload/"))
        .and(header("access-token", "clt.old"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": { "error_code": 2190008, "description": "access_token过期" }
        })))
        .expect(1)
        .mount(&server)
        .await;
    mount_client_token(&server, "clt.new", 1).await;
    let inbound = ingest(&c, &fresh_dm("@srv-img-3", TimeDelta::seconds(2))).await;
    let url = format!("{}/cdn/cat.png", server.uri());
    let answers = [
        (
            ResponseTemplate::new(200).set_body_json(json!({
                "data": { "error_code": 0, "description": "" },
                "extra": { "error_code": 28001005, "description": "any other refusal",
                           "sub_error_code": 0 }
            })),
            "rejected",
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!({
                "err_no": 28003017, "err_msg": "请求过于频繁", "log_id": "x"
            })),
            "rate_limited",
        ),
        (ResponseTemplate::new(503), "transient"),
        (
            ResponseTemplate::new(200).set_body_json(json!({
                "data": { "error_code": 0, "description": "" }
            })),
            "transient",
        ),
    ];
    for (answer, class) in answers {
        let guard = Mock::given(method("POST"))
            .and(path("/tool/imagex/client_upload/"))
            .and(header("access-token", "clt.new"))
            .respond_with(answer)
            .expect(1)
            .mount_as_scoped(&server)
            .await;
        let err = c
            .send(&reply_to(&inbound, image_by_url(url.clone())))
            .await
            .unwrap_err();
        assert_eq!(err.outcome(), class, "{err:?}");
        if class == "rejected" {
            assert!(matches!(&err, ConnectorError::Rejected { code, .. } if code == "28001005"));
        }
        drop(guard);
    }
    // The image id may also come inside `data`.
    Mock::given(method("POST"))
        .and(path("/tool/imagex/client_upload/"))
        .and(header("access-token", "clt.new"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": { "image_id": "img-in-data", "error_code": 0, "description": "" },
            "extra": { "error_code": 0 }
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/im/send/msg/"))
        .and(wiremock::matchers::body_partial_json(json!({
            "content": { "msg_type": 2, "image": { "media_id": "img-in-data" } }
        })))
        .respond_with(send_ok("@sent-5"))
        .expect(1)
        .mount(&server)
        .await;
    c.send(&reply_to(&inbound, image_by_url(url)))
        .await
        .unwrap();
    let all = uploads(&server).await;
    assert_eq!(all.len(), 6);
    assert_eq!(
        all[0].body, all[1].body,
        "the retry after the token refresh sends the same form"
    );
}

#[tokio::test]
async fn raw_keeps_the_masked_event_beside_the_reply_context_which_is_never_published() {
    let settings = support::keeping_raw(
        support::settings(
            "dy-main",
            KIND,
            None,
            &[("client_key", CLIENT_KEY), ("client_secret", CLIENT_SECRET)],
        ),
        &["nick_name"],
    );
    let (ctx, _store) = support::context();
    let keeping = DouyinConnector::new(&settings, &ctx).unwrap();
    for name in ["text", "text_content_string"] {
        let req = fixture(name);
        let mut expected = support::json_body(&req);
        // A `content` sent as a JSON string is kept parsed, so masking reaches into it.
        if let Some(text) = expected["content"].as_str() {
            expected["content"] = serde_json::from_str(text).unwrap();
        }
        let expected = support::masked(expected, &["nick_name"]);
        assert_eq!(
            expected["content"]["user_infos"][0]["nick_name"],
            "[masked]"
        );
        let envelopes = run(&keeping, &req).envelopes().to_vec();
        let raw = envelopes[0].raw.clone().unwrap();
        assert!(
            raw.get("_douyin_reply_context").is_some(),
            "{name}: the reply context rides beside the payload to deliver"
        );
        let sink = CollectSink::new();
        keeping.deliver(envelopes, &sink).await.unwrap();
        let published = sink.published();
        assert_eq!(published[0].raw.as_ref(), Some(&expected), "{name}");
        // Off (the default): nothing reaches the bus.
        let c = connector();
        let sink = CollectSink::new();
        c.deliver(run(&c, &req).envelopes().to_vec(), &sink)
            .await
            .unwrap();
        assert_eq!(sink.published()[0].raw, None, "{name}");
    }
}
