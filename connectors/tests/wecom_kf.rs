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
use switchyard_connectors::conformance::{
    CollectSink, Fixture, Outcome, OwnedRequest, arbitrary_bodies, check_all, check_decode_total,
    load_fixtures, run, xmlish,
};
use switchyard_connectors::wechat::crypto::WxCrypto;
use switchyard_connectors::wecom_kf::{KIND, WecomKfConnector, parse_sync_page};
use switchyard_connectors::{Connector, ConnectorError};
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
    load_fixtures(support::fixture_dir("wecom_kf"))
}

fn fixture(name: &str) -> OwnedRequest {
    fixtures()
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
        .request()
}

#[test]
fn fixtures_are_what_the_generator_writes() {
    assert_eq!(
        fixtures(),
        support::sorted(gen_kf::fixtures()),
        "run `cargo run -p switchyard-connectors --example gen_fixtures wecom_kf`"
    );
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
    ])) {
        let (c, _) = &*PROP;
        if let Ok(p) = parse_sync_page(page.to_string().as_bytes()) {
            let envelopes = c.normalize_page(&p.msg_list, Utc::now()).unwrap();
            switchyard_connectors::conformance::check_schema(&envelopes);
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
async fn send_failures_are_classified_and_tokens_refreshed() {
    let server = MockServer::start().await;
    let (c, store) = connector_with(Some(server.uri()));
    route_customer(&store).await;
    store
        .set_key(
            &store_token_key(),
            "tok-expired",
            std::time::Duration::from_secs(600),
        )
        .await
        .unwrap();
    Mock::given(method("POST"))
        .and(path("/cgi-bin/kf/send_msg"))
        .and(query_param("access_token", "tok-expired"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "errcode": 42001, "errmsg": "access_token expired"
        })))
        .expect(1)
        .mount(&server)
        .await;
    mount_token(&server, "tok-2", 1).await;
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
    });
    assert!(
        matches!(c.send(&no_media).await, Err(ConnectorError::Rejected { code, .. }) if code == "media_id_required")
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
    Conversation {
        id: "conv1".into(),
        tenant: "default".into(),
        customer_id: "c1".into(),
        status,
        pool: "default".into(),
        agent_id: None,
        channel: ChannelRef {
            kind: KIND.into(),
            id: "kf-main".into(),
        },
        recipient: outbound(Content::Text {
            text: String::new(),
        })
        .sender,
        last_inbound_id: None,
        last_inbound_at: Some(now),
        replies_since_inbound: 0,
        created_at: now,
        updated_at: now,
        queued_at: None,
        assigned_at: None,
        closed_at: None,
        close_reason: None,
        message_count: 1,
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
