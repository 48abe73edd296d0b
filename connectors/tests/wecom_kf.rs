//! The WeCom kf connector: generated callback fixtures through the conformance kit, the pull
//! (`deliver` → `sync_msg`) and outbound calls against a fake WeCom API (wiremock).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/gen_fixtures/common.rs"]
mod common;
#[path = "../examples/gen_fixtures/wecom_kf.rs"]
mod gen_kf;
mod support;

use std::sync::{Arc, LazyLock};

use chrono::Utc;
use gen_kf::{AES_KEY, CORP_ID, CORP_SECRET, OPEN_KFID, SYNC_TOKEN, TOKEN};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::RecordingSink;
use switchyard_connectors::conformance::{
    CollectSink, Fixture, Outcome, OwnedRequest, arbitrary_bodies, check_all, check_decode_total,
    run, xmlish,
};
use switchyard_connectors::wechat::crypto::WxCrypto;
use switchyard_connectors::wecom_kf::{
    KIND, WecomKfConnector, fail_type_meaning, parse_sync_page, send_failures,
};
use switchyard_connectors::{Connector, ConnectorError, EnvelopeSink};
use switchyard_core::envelope::{ChannelRef, Content, Direction, Envelope, Media, Sender, new_id};
use switchyard_core::model::{Conversation, ConversationStatus};
use switchyard_core::store::Store;
use wiremock::matchers::{body_json, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CUSTOMER: &str = "wmAbCdEfGhIjKlMnOpQrStUvWxYz0123";

fn connector_with(api_base: Option<String>) -> (WecomKfConnector, Arc<dyn Store>) {
    let settings = support::settings(
        "kf-main",
        KIND,
        api_base,
        &[
            ("corp_id", CORP_ID),
            ("corp_secret", CORP_SECRET),
            ("token", TOKEN),
            ("encoding_aes_key", AES_KEY),
        ],
    );
    let (ctx, store) = support::context();
    (WecomKfConnector::new(&settings, &ctx).unwrap(), store)
}

fn connector() -> WecomKfConnector {
    connector_with(None).0
}

fn fixtures() -> Vec<Fixture> {
    support::fixtures("wecom_kf")
}

fn fixture(name: &str) -> OwnedRequest {
    support::fixture("wecom_kf", name)
}

#[test]
fn fixtures_are_what_the_generator_writes() {
    support::assert_fixtures_fresh("wecom_kf", gen_kf::fixtures());
}

#[test]
fn every_fixture_conforms_and_matches_its_snapshot() {
    let outcomes = check_all(&connector(), &fixtures());
    for (name, outcome) in outcomes {
        if !outcome.envelopes().is_empty() {
            insta::assert_json_snapshot!(format!("wecom_kf__{name}"), outcome.envelopes(), {
                "[].id" => "[id]",
                "[].received_at" => "[received_at]",
            });
        }
    }
}

#[test]
fn url_verification_answers_the_plain_echostr() {
    for name in ["url_verification", "url_verification_plus_decoded"] {
        match run(&connector(), &fixture(name)) {
            Outcome::Handshake(reply) => {
                assert_eq!(reply.status, 200);
                assert_eq!(reply.body.as_ref(), b"4731508893652781234");
                assert!(reply.content_type.starts_with("text/plain"));
            }
            other => panic!("{name}: {}", other.describe()),
        }
    }
    // A POST is never a handshake.
    assert!(
        connector()
            .handshake(&fixture("kf_msg_or_event").as_inbound())
            .unwrap()
            .is_none()
    );
}

static PROP: LazyLock<(WecomKfConnector, OwnedRequest)> =
    LazyLock::new(|| (connector(), fixture("kf_msg_or_event")));

/// Encrypts the body as the callback plaintext and signs it, so arbitrary bytes reach the XML
/// parser of the decrypted event.
fn reseal(req: &mut OwnedRequest) {
    let crypto = WxCrypto::new(TOKEN, AES_KEY, CORP_ID).unwrap();
    let ts = req.query.get("timestamp").cloned().unwrap_or_default();
    let nonce = req.query.get("nonce").cloned().unwrap_or_default();
    let sealed = crypto.seal_with_random(&req.body, &ts, &nonce, [3; 16]);
    req.body = format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>",
        sealed.encrypt
    )
    .into_bytes();
    req.query
        .insert("msg_signature".into(), sealed.msg_signature);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn decode_never_panics(body in arbitrary_bodies()) {
        let (c, template) = &*PROP;
        check_decode_total(c, template, &body, None);
        check_decode_total(c, template, &body, Some(&reseal));
    }

    #[test]
    fn decrypted_events_of_any_shape_never_panic(
        body in xmlish(&["xml", "ToUserName", "CreateTime", "MsgType", "Event", "Token", "OpenKfId"]),
    ) {
        let (c, template) = &*PROP;
        check_decode_total(c, template, body.as_bytes(), Some(&reseal));
    }

    #[test]
    fn sync_pages_of_any_shape_never_panic(page in switchyard_connectors::conformance::json_like(&[
        "errcode", "next_cursor", "has_more", "msg_list", "msgid", "open_kfid", "external_userid",
        "send_time", "origin", "msgtype", "text", "content", "image", "media_id", "location",
        "latitude", "longitude", "name", "link", "url", "miniprogram", "event", "event_type",
        "msg_send_fail", "fail_msgid", "fail_type",
    ])) {
        let (c, _) = &*PROP;
        if let Ok(p) = parse_sync_page(page.to_string().as_bytes()) {
            let envelopes = c.normalize_page(&p.msg_list, Utc::now()).unwrap();
            switchyard_connectors::conformance::check_schema(&envelopes);
            for failure in send_failures(&p.msg_list) {
                prop_assert!(!failure.fail_msgid.is_empty());
                prop_assert!(failure.code().starts_with("wecom_fail_type_"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pull and the API, against a fake WeCom

fn msg(msgid: &str, origin: i64, msgtype: &str, body: Value) -> Value {
    let mut m = json!({
        "msgid": msgid, "open_kfid": OPEN_KFID, "external_userid": CUSTOMER,
        "send_time": 1_795_510_790, "origin": origin, "msgtype": msgtype,
    });
    m.as_object_mut().unwrap().insert(msgtype.into(), body);
    m
}

fn page_one() -> Value {
    json!({
        "errcode": 0, "errmsg": "ok", "next_cursor": "cursor-1", "has_more": 1,
        "msg_list": [
            msg("m-text", 3, "text", json!({ "content": "你好，在吗？", "menu_id": "" })),
            msg("m-image", 3, "image", json!({ "media_id": "2iSLeVyqzk4eX0IB5kTi9Ljfa2rt9dwfq5WKRQ4Nvvgw" })),
            json!({
                "msgid": "m-enter", "send_time": 1_795_510_791, "origin": 4, "msgtype": "event",
                "event": { "event_type": "enter_session", "open_kfid": OPEN_KFID,
                           "external_userid": CUSTOMER, "scene": "123", "welcome_code": "aaa" }
            }),
            msg("m-servicer", 5, "text", json!({ "content": "人工客服在企业微信里的回复" })),
        ]
    })
}

fn page_two() -> Value {
    json!({
        "errcode": 0, "errmsg": "ok", "next_cursor": "cursor-2", "has_more": 0,
        "msg_list": [
            msg("m-voice", 3, "voice", json!({ "media_id": "voice-media" })),
            msg("m-video", 3, "video", json!({ "media_id": "video-media" })),
            msg("m-file", 3, "file", json!({ "media_id": "file-media" })),
            msg("m-location", 3, "location", json!({
                "latitude": 23.1060218811035, "longitude": 113.320503234863, "name": "广州国际媒体港(广州市海珠区)", "address": "广东省广州市海珠区滨江东路"
            })),
            msg("m-link", 3, "link", json!({ "title": "TITLE", "desc": "DESC", "url": "https://work.weixin.qq.com/", "pic_url": "https://x/p.png" })),
            msg("m-business-card", 3, "business_card", json!({ "userid": "zhangsan" })),
            msg("m-miniprogram", 3, "miniprogram", json!({ "title": "订单", "appid": "wx123123123", "pagepath": "pages/index", "thumb_media_id": "thumb" })),
            msg("m-channels", 3, "channels_shop_product", json!({ "product_id": "1" })),
        ]
    })
}

/// Stores the access token `tok-expired`, which `api_path` refuses once as expired (42001),
/// and mounts the token endpoint to hand out `tok-2` exactly once.
async fn expire_stored_token(server: &MockServer, store: &Arc<dyn Store>, api_path: &str) {
    store
        .set_key(
            &store_token_key(),
            "tok-expired",
            std::time::Duration::from_secs(600),
        )
        .await
        .unwrap();
    Mock::given(method("POST"))
        .and(path(api_path))
        .and(query_param("access_token", "tok-expired"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "errcode": 42001, "errmsg": "access_token expired"
        })))
        .expect(1)
        .mount(server)
        .await;
    mount_token(server, "tok-2", 1).await;
}

async fn mount_token(server: &MockServer, token: &str, times: u64) {
    Mock::given(method("GET"))
        .and(path("/cgi-bin/gettoken"))
        .and(query_param("corpid", CORP_ID))
        .and(query_param("corpsecret", CORP_SECRET))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200
        })))
        .expect(times)
        .mount(server)
        .await;
}

fn notice(c: &WecomKfConnector) -> Vec<Envelope> {
    match run(c, &fixture("kf_msg_or_event")) {
        Outcome::Envelopes(e) => e,
        other => panic!("{}", other.describe()),
    }
}

#[tokio::test]
async fn a_notification_pulls_every_page_and_routes_only_customer_messages() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    mount_token(&server, "tok-1", 1).await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/kf/sync_msg"))
        .and(query_param("access_token", "tok-1"))
        .and(body_json(
            json!({ "limit": 1000, "open_kfid": OPEN_KFID, "token": SYNC_TOKEN }),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(page_one()))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/kf/sync_msg"))
        .and(body_json(json!({
            "limit": 1000, "open_kfid": OPEN_KFID, "token": SYNC_TOKEN, "cursor": "cursor-1"
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(page_two()))
        .expect(1)
        .mount(&server)
        .await;
    let sink = CollectSink::new();
    let accepted = c.deliver(notice(&c), &sink).await.unwrap();
    let published = sink.published();
    assert_eq!(accepted.len(), published.len());
    let types: Vec<&str> = published.iter().map(|e| e.content.type_name()).collect();
    assert_eq!(
        types,
        [
            "text",
            "image",
            "audio",
            "video",
            "file",
            "location",
            "link",
            "card",
            "card",
            "unsupported"
        ]
    );
    assert!(published.iter().all(|e| e.sender.external_id == CUSTOMER));
    assert_eq!(
        published[0].sender.identities[0].as_str(),
        format!("wecom_external:{CORP_ID}:{CUSTOMER}")
    );
    insta::assert_json_snapshot!("wecom_kf__pulled", published, {
        "[].id" => "[id]",
        "[].received_at" => "[received_at]",
    });
    let cursor = format!("wecom_kf:{CORP_ID}:{OPEN_KFID}:cursor");
    assert_eq!(
        store.get_key(&cursor).await.unwrap().as_deref(),
        Some("cursor-2")
    );
    let route = format!("wecom_kf:kf-main:route:{CUSTOMER}");
    assert_eq!(
        store.get_key(&route).await.unwrap().as_deref(),
        Some(OPEN_KFID)
    );
}

#[tokio::test]
async fn the_cursor_moves_only_after_the_bus_took_the_page() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    mount_token(&server, "tok-1", 1).await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/kf/sync_msg"))
        .and(body_json(
            json!({ "limit": 1000, "open_kfid": OPEN_KFID, "token": SYNC_TOKEN }),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(page_one()))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/kf/sync_msg"))
        .and(body_json(json!({
            "limit": 1000, "open_kfid": OPEN_KFID, "token": SYNC_TOKEN, "cursor": "cursor-1"
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "errcode": 0, "errmsg": "ok", "next_cursor": "cursor-1b", "has_more": 0, "msg_list": []
        })))
        .expect(1)
        .mount(&server)
        .await;
    let sink = CollectSink::new();
    sink.fail_after(0);
    let err = c.deliver(notice(&c), &sink).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");
    let cursor = format!("wecom_kf:{CORP_ID}:{OPEN_KFID}:cursor");
    assert_eq!(
        store.get_key(&cursor).await.unwrap(),
        None,
        "nothing lost: re-pulled next time"
    );
    // WeCom retries the callback; the same page is pulled again and published once.
    sink.recover();
    c.deliver(notice(&c), &sink).await.unwrap();
    assert_eq!(sink.published().len(), 2);
    assert_eq!(
        store.get_key(&cursor).await.unwrap().as_deref(),
        Some("cursor-1b")
    );
    // The pull lock was released.
    let lock = format!("wecom_kf:{CORP_ID}:{OPEN_KFID}:pull_lock");
    assert_eq!(store.get_key(&lock).await.unwrap(), None);
}

#[tokio::test]
async fn a_busy_replica_makes_wecom_call_again() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    let lock = format!("wecom_kf:{CORP_ID}:{OPEN_KFID}:pull_lock");
    store
        .set_key(&lock, "other", std::time::Duration::from_secs(30))
        .await
        .unwrap();
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let err = c
        .deliver(notice(&c), &CollectSink::new())
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");
}

fn outbound(content: Content) -> Envelope {
    Envelope {
        id: new_id(),
        tenant: "default".into(),
        direction: Direction::Outbound,
        channel: ChannelRef {
            kind: KIND.into(),
            id: "kf-main".into(),
        },
        sender: Sender {
            external_id: CUSTOMER.into(),
            scope: CORP_ID.into(),
            display_name: None,
            identities: vec![],
        },
        customer_id: Some("c1".into()),
        conversation_id: Some("conv1".into()),
        sent_at: Utc::now(),
        received_at: Utc::now(),
        dedupe_key: "outbound:1".into(),
        content,
        reply_to: None,
        agent_id: Some("agent-1".into()),
        raw: None,
    }
}

async fn route_customer(store: &Arc<dyn Store>) {
    store
        .set_key(
            &format!("wecom_kf:kf-main:route:{CUSTOMER}"),
            OPEN_KFID,
            std::time::Duration::from_secs(600),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn send_msg_carries_our_id_and_the_cached_token() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    route_customer(&store).await;
    mount_token(&server, "tok-1", 1).await;
    let text = outbound(Content::Text {
        text: "您好，请问有什么可以帮您？".into(),
    });
    let image = outbound(Content::Image {
        media: Media {
            media_id: Some("MEDIA_ID".into()),
            ..Media::default()
        },
        caption: None,
    });
    for (envelope, msgtype, payload) in [
        (
            &text,
            "text",
            json!({ "content": "您好，请问有什么可以帮您？" }),
        ),
        (&image, "image", json!({ "media_id": "MEDIA_ID" })),
    ] {
        let mut body = json!({
            "touser": CUSTOMER, "open_kfid": OPEN_KFID, "msgid": envelope.id, "msgtype": msgtype,
        });
        body.as_object_mut()
            .unwrap()
            .insert(msgtype.into(), payload);
        Mock::given(method("POST"))
            .and(path("/cgi-bin/kf/send_msg"))
            .and(query_param("access_token", "tok-1"))
            .and(body_json(body))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "errcode": 0, "errmsg": "ok", "msgid": envelope.id
            })))
            .expect(1)
            .mount(&server)
            .await;
    }
    assert_eq!(
        c.send(&text).await.unwrap().channel_message_id.as_deref(),
        Some(text.id.as_str())
    );
    c.send(&image).await.unwrap();
}

#[tokio::test]
async fn a_caption_follows_its_media_as_a_text_with_a_msgid_of_its_own() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    route_customer(&store).await;
    mount_token(&server, "tok-1", 1).await;
    let file = outbound(Content::File {
        media: Media {
            media_id: Some("MEDIA_ID".into()),
            ..Media::default()
        },
        name: Some("报价单.pdf".into()),
        caption: Some("这是您要的报价单".into()),
    });
    let caption_msgid = format!("{}_cap", file.id);
    assert!(caption_msgid.len() <= 32);
    for (msgid, msgtype, payload) in [
        (file.id.clone(), "file", json!({ "media_id": "MEDIA_ID" })),
        (
            caption_msgid.clone(),
            "text",
            json!({ "content": "这是您要的报价单" }),
        ),
    ] {
        let mut body = json!({
            "touser": CUSTOMER, "open_kfid": OPEN_KFID, "msgid": msgid, "msgtype": msgtype,
        });
        body.as_object_mut()
            .unwrap()
            .insert(msgtype.into(), payload);
        Mock::given(method("POST"))
            .and(path("/cgi-bin/kf/send_msg"))
            .and(query_param("access_token", "tok-1"))
            .and(body_json(body))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "errcode": 0, "errmsg": "ok", "msgid": msgid
            })))
            .expect(1)
            .mount(&server)
            .await;
    }
    let receipt = c.send(&file).await.unwrap();
    assert_eq!(
        receipt.channel_message_id.as_deref(),
        Some(file.id.as_str())
    );
    let msgids: Vec<Value> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/cgi-bin/kf/send_msg")
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["msgid"].clone())
        .collect();
    assert_eq!(
        msgids,
        [json!(file.id), json!(caption_msgid)],
        "the file first"
    );
    // Both are remembered as the envelope, so a late failure of either names it.
    for msgid in [&file.id, &caption_msgid] {
        let kept = store
            .get_key(&format!("wecom_kf:sent:{CORP_ID}:{msgid}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(serde_json::from_str::<Envelope>(&kept).unwrap().id, file.id);
    }
}

#[tokio::test]
async fn send_failures_are_classified_and_tokens_refreshed() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    route_customer(&store).await;
    expire_stored_token(&server, &store, "/cgi-bin/kf/send_msg").await;
    let answers = [
        (
            json!({ "errcode": 95018, "errmsg": "send msg session status invalid" }),
            200u16,
        ),
        (
            json!({ "errcode": 45009, "errmsg": "api freq out of limit" }),
            200,
        ),
        (json!({ "errcode": -1, "errmsg": "system busy" }), 200),
        (json!({}), 503),
        (json!({ "errcode": 0, "errmsg": "ok", "msgid": "x" }), 200),
    ];
    let results: Vec<Result<(), ConnectorError>> = {
        let mut out = Vec::new();
        for (answer, status) in answers {
            let guard = Mock::given(method("POST"))
                .and(path("/cgi-bin/kf/send_msg"))
                .and(query_param("access_token", "tok-2"))
                .respond_with(ResponseTemplate::new(status).set_body_json(answer))
                .expect(1)
                .mount_as_scoped(&server)
                .await;
            out.push(
                c.send(&outbound(Content::Text { text: "hi".into() }))
                    .await
                    .map(|_| ()),
            );
            drop(guard);
        }
        out
    };
    assert!(matches!(&results[0], Err(ConnectorError::Rejected { code, .. }) if code == "95018"));
    assert!(matches!(
        &results[1],
        Err(ConnectorError::RateLimited { .. })
    ));
    assert!(matches!(&results[2], Err(ConnectorError::Transient(_))));
    assert!(matches!(&results[3], Err(ConnectorError::Transient(_))));
    assert!(results[4].is_ok());
    // Refused before any request: too long, no media id, unsupported type, unknown customer.
    let long = outbound(Content::Text {
        text: "字".repeat(683),
    });
    assert!(
        matches!(c.send(&long).await, Err(ConnectorError::Rejected { code, .. }) if code == "text_too_long")
    );
    let no_media = outbound(Content::Image {
        media: Media::default(),
        caption: None,
    });
    assert!(
        matches!(c.send(&no_media).await, Err(ConnectorError::Rejected { code, .. }) if code == "no_media")
    );
    let mut stranger = outbound(Content::Text { text: "hi".into() });
    stranger.sender.external_id = "wmUnknown".into();
    assert!(
        matches!(c.send(&stranger).await, Err(ConnectorError::Rejected { code, .. }) if code == "no_open_kfid")
    );
}

fn store_token_key() -> String {
    use sha2::Digest;
    let app = hex::encode(sha2::Sha256::digest(CORP_SECRET.as_bytes()));
    format!("wecom:{CORP_ID}:{}:access_token", &app[..12])
}

fn conversation(status: ConversationStatus) -> Conversation {
    let now = Utc::now();
    let channel = ChannelRef {
        kind: KIND.into(),
        id: "kf-main".into(),
    };
    let recipient = outbound(Content::Text {
        text: String::new(),
    })
    .sender;
    Conversation {
        status,
        last_inbound_at: Some(now),
        queued_at: None,
        message_count: 1,
        ..Conversation::opened(
            "conv1".into(),
            ("default", "c1"),
            "default",
            channel,
            recipient,
            now,
        )
    }
}

async fn state_is(server: &MockServer, state: i64) -> wiremock::MockGuard {
    Mock::given(method("POST"))
        .and(path("/cgi-bin/kf/service_state/get"))
        .and(body_json(
            json!({ "open_kfid": OPEN_KFID, "external_userid": CUSTOMER }),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "errcode": 0, "errmsg": "ok", "service_state": state
        })))
        .mount_as_scoped(server)
        .await
}

async fn expect_trans(server: &MockServer, state: i64, times: u64) -> wiremock::MockGuard {
    Mock::given(method("POST"))
        .and(path("/cgi-bin/kf/service_state/trans"))
        .and(body_json(json!({
            "open_kfid": OPEN_KFID, "external_userid": CUSTOMER, "service_state": state
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "errcode": 0, "errmsg": "ok", "msg_code": "MSG_CODE"
        })))
        .expect(times)
        .mount_as_scoped(server)
        .await
}

#[tokio::test]
async fn session_state_follows_the_conversation_idempotently() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    route_customer(&store).await;
    mount_token(&server, "tok-1", 1).await;
    use ConversationStatus::*;
    // New session (0) and our conversation is open: keep it API-answerable (1).
    {
        let _s = state_is(&server, 0).await;
        let _t = expect_trans(&server, 1, 1).await;
        c.conversation_changed(&conversation(Queued)).await.unwrap();
    }
    // Already 1: nothing to do, however often we are told.
    {
        let _s = state_is(&server, 1).await;
        let _t = expect_trans(&server, 1, 0).await;
        c.conversation_changed(&conversation(Assigned))
            .await
            .unwrap();
        c.conversation_changed(&conversation(Bot)).await.unwrap();
    }
    // Closed: end the WeCom session (4).
    {
        let _s = state_is(&server, 1).await;
        let _t = expect_trans(&server, 4, 1).await;
        c.conversation_changed(&conversation(Closed)).await.unwrap();
    }
    // Already ended: nothing to do.
    {
        let _s = state_is(&server, 4).await;
        let _t = expect_trans(&server, 4, 0).await;
        c.conversation_changed(&conversation(Closed)).await.unwrap();
    }
    // A WeCom servicer holds it: say so, change nothing.
    {
        let _s = state_is(&server, 3).await;
        let _t = expect_trans(&server, 1, 0).await;
        let err = c
            .conversation_changed(&conversation(Assigned))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnectorError::Rejected { ref code, .. } if code == "service_state_3")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Media given by URL: download, `cgi-bin/media/upload`, then `send_msg` by media_id

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR-kf-test-image-bytes";
const PDF: &[u8] = b"%PDF-1.4\n% kf test document\n";

/// The exact multipart body we must send for one file part, given the boundary used.
fn expected_form(boundary: &str, field: &str, filename: &str, mime: &str, bytes: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; \
         filename=\"{filename}\"\r\nContent-Type: {mime}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// The requests the fake API received on `p`.
async fn requests_to(server: &MockServer, p: &str) -> Vec<wiremock::Request> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path() == p)
        .collect()
}

/// Checks one upload request: query, multipart content type, and the exact body.
fn assert_upload(
    req: &wiremock::Request,
    token: &str,
    kind: &str,
    filename: &str,
    mime: &str,
    bytes: &[u8],
) {
    let query: std::collections::HashMap<_, _> = req.url.query_pairs().into_owned().collect();
    assert_eq!(query.get("access_token").map(String::as_str), Some(token));
    assert_eq!(query.get("type").map(String::as_str), Some(kind));
    let content_type = req.headers.get("content-type").unwrap().to_str().unwrap();
    let boundary = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .unwrap_or_else(|| panic!("not multipart: {content_type}"));
    assert_eq!(
        String::from_utf8_lossy(&req.body),
        String::from_utf8_lossy(&expected_form(boundary, "media", filename, mime, bytes))
    );
}

fn send_body(envelope: &Envelope, msgtype: &str, media_id: &str) -> Value {
    let mut body = json!({
        "touser": CUSTOMER, "open_kfid": OPEN_KFID, "msgid": envelope.id, "msgtype": msgtype,
    });
    body.as_object_mut()
        .unwrap()
        .insert(msgtype.into(), json!({ "media_id": media_id }));
    body
}

fn by_url(url: String) -> Media {
    Media {
        url: Some(url),
        ..Media::default()
    }
}

fn send_ok(envelope: &Envelope) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "errcode": 0, "errmsg": "ok", "msgid": envelope.id
    }))
}

#[tokio::test]
async fn an_image_url_is_uploaded_once_and_sent_by_media_id() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    route_customer(&store).await;
    mount_token(&server, "tok-1", 1).await;
    Mock::given(method("GET"))
        .and(path("/cdn/cat.png"))
        .respond_with(
            ResponseTemplate::new(200)
                // Servers often say nothing useful: the bytes decide.
                .insert_header("content-type", "application/octet-stream")
                .set_body_bytes(PNG),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/media/upload"))
        .and(query_param("access_token", "tok-1"))
        .and(query_param("type", "image"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "errcode": 0, "errmsg": "", "type": "image",
            "media_id": "1G6nrLmr5EC3MMb_-zK1dDdzmd0p7cNliYu9V5w7o8K0", "created_at": "1380000000"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let url = format!("{}/cdn/cat.png", server.uri());
    let first = outbound(Content::Image {
        media: by_url(url.clone()),
        caption: None,
    });
    let second = outbound(Content::Image {
        media: by_url(url.clone()),
        caption: None,
    });
    for envelope in [&first, &second] {
        Mock::given(method("POST"))
            .and(path("/cgi-bin/kf/send_msg"))
            .and(query_param("access_token", "tok-1"))
            .and(body_json(send_body(
                envelope,
                "image",
                "1G6nrLmr5EC3MMb_-zK1dDdzmd0p7cNliYu9V5w7o8K0",
            )))
            .respond_with(send_ok(envelope))
            .expect(1)
            .mount(&server)
            .await;
    }
    c.send(&first).await.unwrap();
    // The second send of the same URL reuses the cached media id: no download, no upload.
    c.send(&second).await.unwrap();
    let uploads = requests_to(&server, "/cgi-bin/media/upload").await;
    assert_eq!(uploads.len(), 1);
    assert_upload(&uploads[0], "tok-1", "image", "image.png", "image/png", PNG);
}

#[tokio::test]
async fn a_file_url_keeps_its_name_and_type() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    route_customer(&store).await;
    mount_token(&server, "tok-1", 1).await;
    Mock::given(method("GET"))
        .and(path("/docs/q3.pdf"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(PDF))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/cgi-bin/media/upload"))
        .and(query_param("type", "file"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "errcode": 0, "errmsg": "ok", "type": "file", "media_id": "FILE-1",
            "created_at": "1380000000"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let file = outbound(Content::File {
        media: by_url(format!("{}/docs/q3.pdf", server.uri())),
        name: Some("报价单 Q3.pdf".into()),
        caption: None,
    });
    Mock::given(method("POST"))
        .and(path("/cgi-bin/kf/send_msg"))
        .and(body_json(send_body(&file, "file", "FILE-1")))
        .respond_with(send_ok(&file))
        .expect(1)
        .mount(&server)
        .await;
    c.send(&file).await.unwrap();
    let uploads = requests_to(&server, "/cgi-bin/media/upload").await;
    assert_upload(
        &uploads[0],
        "tok-1",
        "file",
        "报价单 Q3.pdf",
        "application/pdf",
        PDF,
    );
}

#[tokio::test]
async fn oversized_or_wrongly_typed_downloads_are_refused_before_any_upload() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    route_customer(&store).await;
    Mock::given(method("GET"))
        .and(path("/cdn/huge.png"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(vec![0u8; 10 * 1024 * 1024 + 1]))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/cdn/anim.gif"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(&b"GIF89a-animated"[..]))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/cdn/gone.png"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    for (file, code) in [
        ("huge.png", "media_too_large"),
        ("anim.gif", "media_type_unsupported"),
        ("gone.png", "media_download_failed"),
    ] {
        let image = outbound(Content::Image {
            media: by_url(format!("{}/cdn/{file}", server.uri())),
            caption: None,
        });
        let err = c.send(&image).await.unwrap_err();
        assert!(
            matches!(&err, ConnectorError::Rejected { code: got, .. } if got == code),
            "{file}: {err:?}"
        );
        assert!(!err.is_retryable(), "{file}");
    }
    // Nothing reached WeCom: no token, no upload, no send.
    let sent: Vec<String> = server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| r.url.path().to_owned())
        .filter(|p| p.starts_with("/cgi-bin"))
        .collect();
    assert!(sent.is_empty(), "{sent:?}");
}

#[tokio::test]
async fn upload_errcodes_are_classified_and_a_refused_token_is_refreshed() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    route_customer(&store).await;
    Mock::given(method("GET"))
        .and(path("/cdn/cat.png"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(PNG))
        .mount(&server)
        .await;
    let url = format!("{}/cdn/cat.png", server.uri());
    let image = || {
        outbound(Content::Image {
            media: by_url(url.clone()),
            caption: None,
        })
    };
    // An expired token: refreshed once, the same multipart body sent again.
    expire_stored_token(&server, &store, "/cgi-bin/media/upload").await;
    let answers = [
        (
            json!({ "errcode": 40005, "errmsg": "invalid file type" }),
            200u16,
        ),
        (
            json!({ "errcode": 45009, "errmsg": "api freq out of limit" }),
            200,
        ),
        (json!({ "errcode": -1, "errmsg": "system busy" }), 200),
        (json!({}), 502),
    ];
    let mut results = Vec::new();
    for (answer, status) in answers {
        let guard = Mock::given(method("POST"))
            .and(path("/cgi-bin/media/upload"))
            .and(query_param("access_token", "tok-2"))
            .respond_with(ResponseTemplate::new(status).set_body_json(answer))
            .expect(1)
            .mount_as_scoped(&server)
            .await;
        results.push(c.send(&image()).await);
        drop(guard);
    }
    assert!(
        matches!(&results[0], Err(ConnectorError::Rejected { code, .. }) if code == "40005"),
        "{:?}",
        results[0]
    );
    assert!(matches!(
        &results[1],
        Err(ConnectorError::RateLimited { .. })
    ));
    assert!(matches!(&results[2], Err(ConnectorError::Transient(_))));
    assert!(matches!(&results[3], Err(ConnectorError::Transient(_))));
    let uploads = requests_to(&server, "/cgi-bin/media/upload").await;
    assert_eq!(uploads.len(), 5);
    assert_eq!(
        uploads[0].body, uploads[1].body,
        "the retry after the token refresh sends the same form"
    );
    assert_upload(&uploads[1], "tok-2", "image", "image.png", "image/png", PNG);
    // Failed uploads are not cached, and nothing was sent.
    assert!(
        requests_to(&server, "/cgi-bin/kf/send_msg")
            .await
            .is_empty()
    );

    // A cached media id WeCom no longer knows (40007) is forgotten: the next send uploads
    // again.
    let guard = Mock::given(method("POST"))
        .and(path("/cgi-bin/media/upload"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "errcode": 0, "errmsg": "ok", "type": "image", "media_id": "M-OLD", "created_at": "1"
        })))
        .expect(1)
        .mount_as_scoped(&server)
        .await;
    let stale = Mock::given(method("POST"))
        .and(path("/cgi-bin/kf/send_msg"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "errcode": 40007, "errmsg": "invalid media_id"
        })))
        .expect(1)
        .mount_as_scoped(&server)
        .await;
    assert!(matches!(
        c.send(&image()).await,
        Err(ConnectorError::Rejected { code, .. }) if code == "40007"
    ));
    drop((guard, stale));
    Mock::given(method("POST"))
        .and(path("/cgi-bin/media/upload"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "errcode": 0, "errmsg": "ok", "type": "image", "media_id": "M-NEW", "created_at": "2"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let again = image();
    Mock::given(method("POST"))
        .and(path("/cgi-bin/kf/send_msg"))
        .and(body_json(send_body(&again, "image", "M-NEW")))
        .respond_with(send_ok(&again))
        .expect(1)
        .mount(&server)
        .await;
    c.send(&again).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Delivery failures: `send_msg` accepted a reply, a later pull carries `msg_send_fail`

/// A `msg_send_fail` item as `sync_msg` lists it (`origin` 4; the ids are in `event`).
fn send_fail(msgid: &str, fail_msgid: &str, fail_type: Value) -> Value {
    json!({
        "msgid": msgid, "send_time": 1_795_510_800, "origin": 4, "msgtype": "event",
        "event": {
            "event_type": "msg_send_fail", "open_kfid": OPEN_KFID, "external_userid": CUSTOMER,
            "fail_msgid": fail_msgid, "fail_type": fail_type
        }
    })
}

async fn mount_page(server: &MockServer, page: Value) {
    Mock::given(method("POST"))
        .and(path("/cgi-bin/kf/sync_msg"))
        .and(body_json(
            json!({ "limit": 1000, "open_kfid": OPEN_KFID, "token": SYNC_TOKEN }),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(page))
        .mount(server)
        .await;
}

/// Sends `reply` through the fake `send_msg`, which answers our id as `msgid`.
/// A reply sent through `send_msg` to a routed customer, and the next `sync_msg` page reporting
/// its `msg_send_fail` (the server stays up so the mocks live on).
async fn sent_reply_that_failed() -> (MockServer, WecomKfConnector, Arc<dyn Store>, Envelope) {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    route_customer(&store).await;
    mount_token(&server, "tok-1", 1).await;
    let reply = outbound(Content::Text {
        text: "明天上午十点前发货".into(),
    });
    send_reply(&server, &c, &reply).await;
    mount_page(&server, failure_page(&reply)).await;
    (server, c, store, reply)
}

async fn send_reply(server: &MockServer, c: &WecomKfConnector, reply: &Envelope) {
    Mock::given(method("POST"))
        .and(path("/cgi-bin/kf/send_msg"))
        .and(body_json(json!({
            "touser": CUSTOMER, "open_kfid": OPEN_KFID, "msgid": reply.id, "msgtype": "text",
            "text": { "content": "明天上午十点前发货" }
        })))
        .respond_with(send_ok(reply))
        .expect(1)
        .mount(server)
        .await;
    let receipt = c.send(reply).await.unwrap();
    assert_eq!(
        receipt.channel_message_id.as_deref(),
        Some(reply.id.as_str())
    );
}

fn failure_page(reply: &Envelope) -> Value {
    json!({
        "errcode": 0, "errmsg": "ok", "next_cursor": "cursor-f", "has_more": 0,
        "msg_list": [
            msg("m-before", 3, "text", json!({ "content": "在吗？" })),
            send_fail("m-fail", &reply.id, json!(4)),
            send_fail("m-fail-other", "not-sent-by-us", json!(10)),
            msg("m-after", 3, "text", json!({ "content": "怎么没回复？" })),
        ]
    })
}

#[tokio::test]
async fn a_msg_send_fail_reports_the_failed_reply_once_and_the_page_is_still_routed() {
    let (_server, c, store, reply) = sent_reply_that_failed().await;

    let sink = RecordingSink::default();
    let accepted = c.deliver(notice(&c), &sink).await.unwrap();

    let failures = sink.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (message, code, reason) = &failures[0];
    assert_eq!(message, &reply, "the envelope we sent, as sent");
    assert_eq!(message.conversation_id.as_deref(), Some("conv1"));
    assert_eq!(message.agent_id.as_deref(), Some("agent-1"));
    assert_eq!(code, "wecom_fail_type_4");
    assert!(reason.contains("fail_type 4"), "{reason}");
    assert!(reason.contains("48 h"), "{reason}");
    // The customer's messages of the same page are published, the events are not.
    let published = sink.published();
    assert_eq!(accepted.len(), 2);
    let texts: Vec<&Content> = published.iter().map(|e| &e.content).collect();
    assert_eq!(
        texts,
        [
            &Content::Text {
                text: "在吗？".into()
            },
            &Content::Text {
                text: "怎么没回复？".into()
            }
        ]
    );
    let cursor = format!("wecom_kf:{CORP_ID}:{OPEN_KFID}:cursor");
    assert_eq!(
        store.get_key(&cursor).await.unwrap().as_deref(),
        Some("cursor-f")
    );
}

#[tokio::test]
async fn a_msg_send_fail_for_an_unknown_msgid_is_skipped_without_error() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    mount_token(&server, "tok-1", 1).await;
    mount_page(
        &server,
        json!({
            "errcode": 0, "errmsg": "ok", "next_cursor": "cursor-u", "has_more": 0,
            "msg_list": [
                send_fail("m-fail-1", "expired-or-not-ours", json!(4)),
                msg("m-text", 3, "text", json!({ "content": "你好" })),
            ]
        }),
    )
    .await;
    let sink = RecordingSink::default();
    let accepted = c.deliver(notice(&c), &sink).await.unwrap();
    assert!(sink.failures().is_empty());
    assert_eq!(accepted.len(), 1);
    assert_eq!(sink.published().len(), 1);
    let cursor = format!("wecom_kf:{CORP_ID}:{OPEN_KFID}:cursor");
    assert_eq!(
        store.get_key(&cursor).await.unwrap().as_deref(),
        Some("cursor-u")
    );
}

#[tokio::test]
async fn a_failure_report_the_bus_did_not_take_is_made_again_on_the_next_pull() {
    let (_server, c, store, reply) = sent_reply_that_failed().await;

    let sink = RecordingSink::default();
    sink.fail_reports(true);
    let err = c.deliver(notice(&c), &sink).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");
    let cursor = format!("wecom_kf:{CORP_ID}:{OPEN_KFID}:cursor");
    assert_eq!(store.get_key(&cursor).await.unwrap(), None, "re-pulled");

    // WeCom calls again: the page is pulled again, its messages deduplicated, the failure
    // reported this time.
    sink.fail_reports(false);
    c.deliver(notice(&c), &sink).await.unwrap();
    let failures = sink.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0.id, reply.id);
    assert_eq!(sink.published().len(), 2, "no duplicates");
    assert_eq!(
        store.get_key(&cursor).await.unwrap().as_deref(),
        Some("cursor-f")
    );
}

#[tokio::test]
async fn a_sink_that_cannot_report_failures_does_not_stop_the_pull() {
    let (_server, c, store, reply) = sent_reply_that_failed().await;
    // `CollectSink` keeps the trait's default: `Unsupported`, logged, and the pull goes on.
    let sink = CollectSink::new();
    let err = sink
        .delivery_failed(&reply, "wecom_fail_type_4", "test")
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Unsupported(_)), "{err}");
    c.deliver(notice(&c), &sink).await.unwrap();
    assert_eq!(sink.published().len(), 2);
    let cursor = format!("wecom_kf:{CORP_ID}:{OPEN_KFID}:cursor");
    assert_eq!(
        store.get_key(&cursor).await.unwrap().as_deref(),
        Some("cursor-f")
    );
}

#[test]
fn send_failures_are_read_from_any_reasonable_shape() {
    let msgs = [
        send_fail("a", "sent-1", json!(6)),
        send_fail("b", "sent-2", json!("10")),
        send_fail("c", "sent-3", Value::Null),
        send_fail("d", "sent-4", json!(99)),
        // Not a failure, or not usable.
        send_fail("e", "", json!(4)),
        json!({ "msgid": "f", "origin": 4, "msgtype": "event",
                "event": { "event_type": "enter_session", "fail_msgid": "x" } }),
        json!({ "msgid": "g", "origin": 4, "msgtype": "event" }),
        msg("h", 3, "text", json!({ "content": "hi" })),
    ];
    let failures = send_failures(&msgs);
    let got: Vec<(&str, Option<i64>, String)> = failures
        .iter()
        .map(|f| (f.fail_msgid.as_str(), f.fail_type, f.code()))
        .collect();
    assert_eq!(
        got,
        [
            ("sent-1", Some(6), "wecom_fail_type_6".to_owned()),
            ("sent-2", Some(10), "wecom_fail_type_10".to_owned()),
            ("sent-3", None, "wecom_fail_type_unknown".to_owned()),
            ("sent-4", Some(99), "wecom_fail_type_99".to_owned()),
        ]
    );
    assert_eq!(failures[0].external_userid.as_deref(), Some(CUSTOMER));
    assert!(failures[0].reason().contains("5 messages"));
    assert!(failures[1].reason().contains("refuses"));
    assert!(failures[2].reason().contains("without fail_type"));
    assert!(failures[3].reason().contains("does not document"));
    assert_eq!(
        fail_type_meaning(3),
        None,
        "3 is not a documented fail type"
    );
}

#[test]
fn raw_is_the_decrypted_notice_and_each_pulled_messages_own_item_masked() {
    let settings = support::keeping_raw(
        support::settings(
            "kf-main",
            KIND,
            None,
            &[
                ("corp_id", CORP_ID),
                ("corp_secret", CORP_SECRET),
                ("token", TOKEN),
                ("encoding_aes_key", AES_KEY),
            ],
        ),
        &["menu_id"],
    );
    let keeping = WecomKfConnector::new(&settings, &support::context().0).unwrap();
    // The notice keeps the decrypted XML's fields, never the ciphertext; its sync token is
    // masked.
    let raw = notice(&keeping)[0].raw.clone().unwrap();
    assert_eq!(raw["Event"], "kf_msg_or_event");
    assert_eq!(raw["OpenKfId"], OPEN_KFID);
    assert_eq!(raw["Token"], "[masked]");
    assert!(raw.get("Encrypt").is_none());
    assert_eq!(notice(&connector())[0].raw, None, "off by default");

    let page = page_one();
    let items = page["msg_list"].as_array().unwrap();
    let envelopes = keeping.normalize_page(items, chrono::Utc::now()).unwrap();
    assert_eq!(envelopes.len(), 2, "the customer's text and image");
    for (envelope, item) in envelopes.iter().zip(items) {
        assert_eq!(
            envelope.raw.as_ref(),
            Some(&support::masked(item.clone(), &["menu_id"]))
        );
    }
    assert_eq!(
        envelopes[0].raw.as_ref().unwrap()["text"]["menu_id"],
        "[masked]"
    );
    let plain = connector()
        .normalize_page(items, chrono::Utc::now())
        .unwrap();
    assert!(plain.iter().all(|e| e.raw.is_none()));
}
