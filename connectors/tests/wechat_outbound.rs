//! WeChat outbound against a fake WeChat API (wiremock): exact URLs, access_token query and
//! JSON bodies; the shared token cache; refresh-and-retry-once on token errors; errcode
//! classification; media upload for URLs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use switchyard_connectors::wechat::{WeChatMiniProgramConnector, WeChatOaConnector};
use switchyard_connectors::{Connector, ConnectorContext, ConnectorError};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::{ChannelRef, Content, Direction, Envelope, Media, Sender};
use switchyard_core::store::Store;
use switchyard_core::store::embedded::EmbeddedStore;
use wiremock::matchers::{body_json, method, path, query_param};
use wiremock::{Mock, MockBuilder, MockServer, Request, ResponseTemplate};

const APP_ID: &str = "wxapp0000000001";
const SECRET: &str = "app-secret-1";
const OPENID: &str = "oUser-1";

fn settings(kind: &str, base: &str) -> ChannelSettings {
    serde_json::from_value(json!({
        "id": format!("{kind}-out"),
        "kind": kind,
        "api_base": base,
        "app_id": APP_ID,
        "app_secret": SECRET,
        "token": "tok",
    }))
    .unwrap()
}

fn ctx(store: &Arc<dyn Store>) -> ConnectorContext {
    ConnectorContext::new(Arc::clone(store))
}

fn new_store() -> Arc<dyn Store> {
    Arc::new(EmbeddedStore::new())
}

fn oa(server: &MockServer, store: &Arc<dyn Store>) -> WeChatOaConnector {
    WeChatOaConnector::new(&settings("wechat_oa", &server.uri()), &ctx(store)).unwrap()
}

fn mp(server: &MockServer, store: &Arc<dyn Store>) -> WeChatMiniProgramConnector {
    WeChatMiniProgramConnector::new(&settings("wechat_miniprogram", &server.uri()), &ctx(store))
        .unwrap()
}

fn outbound(content: Content) -> Envelope {
    let now = Utc::now();
    Envelope {
        id: switchyard_core::envelope::new_id(),
        tenant: "default".into(),
        direction: Direction::Outbound,
        channel: ChannelRef {
            kind: "wechat_oa".into(),
            id: "wechat_oa-out".into(),
        },
        sender: Sender {
            external_id: OPENID.into(),
            scope: APP_ID.into(),
            display_name: None,
            identities: vec![],
        },
        customer_id: Some("cust".into()),
        conversation_id: Some("conv".into()),
        sent_at: now,
        received_at: now,
        dedupe_key: "out".into(),
        content,
        reply_to: None,
        agent_id: Some("agent-1".into()),
        raw: None,
    }
}

fn text(t: &str) -> Envelope {
    outbound(Content::Text { text: t.into() })
}

fn token_request(force: bool) -> Value {
    json!({"grant_type": "client_credential", "appid": APP_ID, "secret": SECRET, "force_refresh": force})
}

fn token_answer(token: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"access_token": token, "expires_in": 7200}))
}

fn ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"errcode": 0, "errmsg": "ok"}))
}

fn errcode(code: i64, msg: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"errcode": code, "errmsg": msg}))
}

fn send_mock(token: &str, body: Value) -> MockBuilder {
    Mock::given(method("POST"))
        .and(path("/cgi-bin/message/custom/send"))
        .and(query_param("access_token", token))
        .and(body_json(body))
}

fn text_body(t: &str) -> Value {
    json!({"touser": OPENID, "msgtype": "text", "text": {"content": t}})
}

async fn count(server: &MockServer, p: &str) -> usize {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == p)
        .count()
}

#[tokio::test]
async fn token_is_fetched_once_and_shared_by_replicas() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .and(body_json(token_request(false)))
        .respond_with(token_answer("TOKEN-1"))
        .expect(1)
        .mount(&server)
        .await;
    send_mock("TOKEN-1", text_body("你好 👋"))
        .respond_with(ok())
        .expect(3)
        .mount(&server)
        .await;
    let store = new_store();
    let a = oa(&server, &store);
    a.send(&text("你好 👋")).await.unwrap();
    a.send(&text("你好 👋")).await.unwrap();
    // Another replica over the same store reuses the cached token.
    let b = oa(&server, &store);
    b.send(&text("你好 👋")).await.unwrap();
    assert_eq!(
        store
            .get_key("wechat:access_token:wxapp0000000001")
            .await
            .unwrap()
            .as_deref(),
        Some("TOKEN-1")
    );
}

#[tokio::test]
async fn concurrent_sends_fetch_one_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .respond_with(token_answer("TOKEN-1").set_delay(Duration::from_millis(300)))
        .expect(1)
        .mount(&server)
        .await;
    send_mock("TOKEN-1", text_body("x"))
        .respond_with(ok())
        .expect(6)
        .mount(&server)
        .await;
    let store = new_store();
    let replicas: Vec<Arc<WeChatOaConnector>> =
        (0..3).map(|_| Arc::new(oa(&server, &store))).collect();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let c = Arc::clone(&replicas[i % 3]);
        tasks.push(tokio::spawn(async move { c.send(&text("x")).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn refreshes_on_40001_and_retries_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .respond_with(token_answer("TOKEN-1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .and(body_json(token_request(false)))
        .respond_with(token_answer("TOKEN-2"))
        .with_priority(2)
        .mount(&server)
        .await;
    send_mock("TOKEN-1", text_body("hi"))
        .respond_with(errcode(
            40001,
            "invalid credential, access_token is invalid or not latest",
        ))
        .expect(1)
        .mount(&server)
        .await;
    send_mock("TOKEN-2", text_body("hi"))
        .respond_with(ok())
        .expect(2)
        .mount(&server)
        .await;
    let store = new_store();
    let c = oa(&server, &store);
    c.send(&text("hi")).await.unwrap();
    assert_eq!(count(&server, "/cgi-bin/stable_token").await, 2);
    // The refreshed token is what the cache holds now: no further token call.
    c.send(&text("hi")).await.unwrap();
    assert_eq!(count(&server, "/cgi-bin/stable_token").await, 2);
}

#[tokio::test]
async fn forces_a_new_token_when_the_platform_returns_the_refused_one() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .and(body_json(token_request(false)))
        .respond_with(token_answer("TOKEN-1"))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .and(body_json(token_request(true)))
        .respond_with(token_answer("TOKEN-2"))
        .expect(1)
        .mount(&server)
        .await;
    send_mock("TOKEN-1", text_body("hi"))
        .respond_with(errcode(42001, "access_token expired"))
        .expect(1)
        .mount(&server)
        .await;
    send_mock("TOKEN-2", text_body("hi"))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    oa(&server, &new_store()).send(&text("hi")).await.unwrap();
}

#[tokio::test]
async fn a_token_refused_twice_is_transient_and_not_retried_again() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .respond_with(token_answer("TOKEN-1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .respond_with(token_answer("TOKEN-2"))
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/message/custom/send"))
        .respond_with(errcode(40014, "invalid access_token"))
        .expect(2)
        .mount(&server)
        .await;
    let err = oa(&server, &new_store())
        .send(&text("hi"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn window_and_quota_errors_are_rejected_without_retry() {
    for (code, msg) in [
        (
            45015,
            "response out of time limit or subscription is canceled",
        ),
        (45047, "out of response count limit"),
        (40003, "invalid openid"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/cgi-bin/stable_token"))
            .respond_with(token_answer("TOKEN-1"))
            .expect(1)
            .mount(&server)
            .await;
        send_mock("TOKEN-1", text_body("late"))
            .respond_with(errcode(code, msg))
            .expect(1)
            .mount(&server)
            .await;
        let err = oa(&server, &new_store())
            .send(&text("late"))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ConnectorError::Rejected {
                code: code.to_string(),
                message: msg.into()
            }
        );
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn busy_5xx_and_quota_are_retryable() {
    type Check = fn(&ConnectorError) -> bool;
    let cases: Vec<(ResponseTemplate, Check)> = vec![
        (
            ResponseTemplate::new(502).set_body_string("bad gateway"),
            |e| matches!(e, ConnectorError::Transient(_)),
        ),
        (errcode(-1, "system error"), |e| {
            matches!(e, ConnectorError::Transient(_))
        }),
        (errcode(45009, "reach max api daily quota limit"), |e| {
            matches!(e, ConnectorError::RateLimited { .. })
        }),
        (
            ResponseTemplate::new(429).insert_header("retry-after", "7"),
            |e| {
                *e == ConnectorError::RateLimited {
                    retry_after: Some(Duration::from_secs(7)),
                }
            },
        ),
        (
            ResponseTemplate::new(200).set_body_string("<html>not json</html>"),
            |e| matches!(e, ConnectorError::Transient(_)),
        ),
    ];
    for (answer, expected) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/cgi-bin/stable_token"))
            .respond_with(token_answer("TOKEN-1"))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/cgi-bin/message/custom/send"))
            .respond_with(answer)
            .expect(1)
            .mount(&server)
            .await;
        let err = oa(&server, &new_store())
            .send(&text("x"))
            .await
            .unwrap_err();
        assert!(expected(&err), "{err:?}");
        assert!(err.is_retryable());
    }
}

#[tokio::test]
async fn unreachable_api_is_transient_and_bad_credentials_are_config() {
    let settings = settings("wechat_oa", "http://127.0.0.1:1");
    let c = WeChatOaConnector::new(&settings, &ctx(&new_store())).unwrap();
    assert!(matches!(
        c.send(&text("x")).await,
        Err(ConnectorError::Transient(_))
    ));
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .respond_with(errcode(40125, "invalid appsecret"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/message/custom/send"))
        .respond_with(ok())
        .expect(0)
        .mount(&server)
        .await;
    let err = oa(&server, &new_store())
        .send(&text("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Config(_)), "{err:?}");
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDRfake-image-bytes";

#[tokio::test]
async fn image_url_is_uploaded_as_temporary_media_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .respond_with(token_answer("TOKEN-1"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/cat.png"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "image/png")
                .set_body_bytes(PNG),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/media/upload"))
        .and(query_param("access_token", "TOKEN-1"))
        .and(query_param("type", "image"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"type": "image", "media_id": "MEDIA-1", "created_at": 1_764_000_000}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    send_mock(
        "TOKEN-1",
        json!({"touser": OPENID, "msgtype": "image", "image": {"media_id": "MEDIA-1"}}),
    )
    .respond_with(ok())
    .expect(2)
    .mount(&server)
    .await;
    let c = mp(&server, &new_store());
    let image = outbound(Content::Image {
        media: Media {
            url: Some(format!("{}/files/cat.png", server.uri())),
            ..Media::default()
        },
        caption: None,
    });
    c.send(&image).await.unwrap();
    c.send(&image).await.unwrap();
    let uploads: Vec<Request> = server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path() == "/cgi-bin/media/upload")
        .collect();
    let upload = &uploads[0];
    let content_type = upload
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(content_type.starts_with("multipart/form-data; boundary="));
    let body = &upload.body;
    let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(find(b"name=\"media\"; filename=\"image.png\""));
    assert!(find(b"Content-Type: image/png"));
    assert!(find(PNG));
}

#[tokio::test]
async fn media_given_by_id_is_sent_without_upload_and_bad_urls_are_rejected() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .respond_with(token_answer("TOKEN-1"))
        .mount(&server)
        .await;
    send_mock(
        "TOKEN-1",
        json!({"touser": OPENID, "msgtype": "image", "image": {"media_id": "KNOWN"}}),
    )
    .respond_with(ok())
    .expect(1)
    .mount(&server)
    .await;
    Mock::given(method("GET"))
        .and(path("/files/missing.png"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/files/huge.png"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![0u8; 10 * 1024 * 1024 + 1]))
        .mount(&server)
        .await;
    let c = oa(&server, &new_store());
    let by_id = outbound(Content::Image {
        media: Media {
            media_id: Some("KNOWN".into()),
            ..Media::default()
        },
        caption: None,
    });
    c.send(&by_id).await.unwrap();
    for (url, code) in [
        (
            format!("{}/files/missing.png", server.uri()),
            "media_download_failed",
        ),
        (
            format!("{}/files/huge.png", server.uri()),
            "media_too_large",
        ),
        ("file:///etc/passwd".to_owned(), "media_url_invalid"),
    ] {
        let image = outbound(Content::Image {
            media: Media {
                url: Some(url),
                ..Media::default()
            },
            caption: None,
        });
        match c.send(&image).await {
            Err(ConnectorError::Rejected { code: got, .. }) => assert_eq!(got, code),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(count(&server, "/cgi-bin/media/upload").await, 0);
}

#[tokio::test]
async fn an_image_caption_follows_as_a_text_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .respond_with(token_answer("TOKEN-1"))
        .mount(&server)
        .await;
    send_mock(
        "TOKEN-1",
        json!({"touser": OPENID, "msgtype": "image", "image": {"media_id": "KNOWN"}}),
    )
    .respond_with(ok())
    .expect(2)
    .mount(&server)
    .await;
    send_mock("TOKEN-1", text_body("这是退货标签，请打印 📦"))
        .respond_with(ok())
        .expect(1)
        .mount(&server)
        .await;
    let image = |caption: &str| {
        outbound(Content::Image {
            media: Media {
                media_id: Some("KNOWN".into()),
                ..Media::default()
            },
            caption: Some(caption.into()),
        })
    };
    oa(&server, &new_store())
        .send(&image("这是退货标签，请打印 📦"))
        .await
        .unwrap();
    let sent: Vec<Value> = server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path() == "/cgi-bin/message/custom/send")
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["msgtype"].clone())
        .collect();
    assert_eq!(sent, [json!("image"), json!("text")], "the image first");

    // The caption refused (here: the reply quota used by the image): the image went out, and
    // the error says so.
    server.reset().await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .respond_with(token_answer("TOKEN-1"))
        .mount(&server)
        .await;
    send_mock(
        "TOKEN-1",
        json!({"touser": OPENID, "msgtype": "image", "image": {"media_id": "KNOWN"}}),
    )
    .respond_with(ok())
    .expect(1)
    .mount(&server)
    .await;
    send_mock("TOKEN-1", text_body("再见"))
        .respond_with(errcode(45047, "out of response count limit"))
        .expect(1)
        .mount(&server)
        .await;
    match mp(&server, &new_store()).send(&image("再见")).await {
        Err(ConnectorError::Rejected { code, message }) => {
            assert_eq!(code, "45047");
            assert!(message.contains("media was sent"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

fn card(attributes: Value, thumbnail: Option<Media>, url: Option<&str>) -> Envelope {
    outbound(Content::Card {
        title: "订单 #42".into(),
        url: url.map(str::to_owned),
        thumbnail,
        attributes: attributes.as_object().cloned().unwrap_or_default(),
    })
}

#[tokio::test]
async fn links_and_cards_map_per_product() {
    let server = MockServer::start().await;
    let store = new_store();
    let (oa, mp) = (oa(&server, &store), mp(&server, &store));
    let thumb = Some(Media {
        media_id: Some("THUMB-1".into()),
        ..Media::default()
    });
    let link = outbound(Content::Link {
        url: "https://shop.example.com/o/42".into(),
        title: Some("Your order".into()),
        description: Some("Shipped".into()),
    });
    assert_eq!(
        oa.client()
            .outbound_body(
                switchyard_connectors::wechat::client::Flavor::OfficialAccount,
                &link
            )
            .await
            .unwrap(),
        json!({"touser": OPENID, "msgtype": "news", "news": {"articles": [
            {"title": "Your order", "description": "Shipped", "url": "https://shop.example.com/o/42"}
        ]}})
    );
    assert_eq!(
        mp.client()
            .outbound_body(
                switchyard_connectors::wechat::client::Flavor::MiniProgram,
                &link
            )
            .await
            .unwrap(),
        json!({"touser": OPENID, "msgtype": "link", "link":
            {"title": "Your order", "description": "Shipped", "url": "https://shop.example.com/o/42"}})
    );
    use switchyard_connectors::wechat::client::Flavor::{MiniProgram, OfficialAccount};
    let full = card(
        json!({"appid": "wxmini", "pagepath": "pages/order?id=42"}),
        thumb.clone(),
        None,
    );
    assert_eq!(
        oa.client()
            .outbound_body(OfficialAccount, &full)
            .await
            .unwrap(),
        json!({"touser": OPENID, "msgtype": "miniprogrampage", "miniprogrampage": {
            "title": "订单 #42", "appid": "wxmini", "pagepath": "pages/order?id=42",
            "thumb_media_id": "THUMB-1"}})
    );
    let no_appid = card(
        json!({"pagepath": "pages/order?id=42"}),
        thumb.clone(),
        None,
    );
    assert_eq!(
        mp.client()
            .outbound_body(MiniProgram, &no_appid)
            .await
            .unwrap(),
        json!({"touser": OPENID, "msgtype": "miniprogrampage", "miniprogrampage": {
            "title": "订单 #42", "pagepath": "pages/order?id=42", "thumb_media_id": "THUMB-1"}})
    );
    // An OA mini-program card needs the appid; with a url it becomes a news link instead.
    let with_url = card(json!({"pagepath": "p"}), thumb, Some("https://x.test/o"));
    assert_eq!(
        oa.client()
            .outbound_body(OfficialAccount, &with_url)
            .await
            .unwrap()["msgtype"],
        "news"
    );
    match oa.client().outbound_body(OfficialAccount, &no_appid).await {
        Err(ConnectorError::Rejected { code, .. }) => assert_eq!(code, "card_incomplete"),
        other => panic!("{other:?}"),
    }
    let video = outbound(Content::Video {
        media: Media::default(),
        thumbnail: None,
        caption: None,
    });
    match oa.send(&video).await {
        Err(ConnectorError::Rejected { code, .. }) => assert_eq!(code, "content_unsupported"),
        other => panic!("{other:?}"),
    }
    assert!(
        server
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test]
async fn rules_match_the_platform() {
    let server = MockServer::start().await;
    let store = new_store();
    for rules in [oa(&server, &store).rules(), mp(&server, &store).rules()] {
        assert_eq!(rules.reply_window, Some(Duration::from_secs(48 * 3600)));
        assert_eq!(rules.max_replies_per_inbound, Some(5));
        assert_eq!(rules.content_types, ["text", "image", "link", "card"]);
        let sticker = Content::Sticker {
            media: Media::default(),
        };
        assert!(matches!(
            rules.downgrade(sticker),
            Ok(Content::Image { .. })
        ));
        let location = Content::Location {
            latitude: 1.0,
            longitude: 2.0,
            label: Some("店".into()),
        };
        assert_eq!(
            rules.downgrade(location).unwrap(),
            Content::Text {
                text: "店 (1, 2)".into()
            }
        );
    }
}
