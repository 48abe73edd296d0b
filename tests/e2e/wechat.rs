//! WeChat end to end through the real HTTP ingress: a signed, AES-encrypted Official Account
//! message reaches an agent, the agent's reply becomes the exact customer-service send call on
//! a fake WeChat API, and the same person writing from the mini-program (same UnionID) lands in
//! the same profile and the same conversation.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Query, State};
use serde_json::{Value, json};
use switchyard_connectors::wechat::crypto::{WxCrypto, signature};

use crate::support::{Server, Ws, eventually};

const TOKEN: &str = "wechat-e2e-token";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const OA_APP: &str = "wx00000000000000a1";
const MP_APP: &str = "wx00000000000000b2";

/// A fake `api.weixin.qq.com` that records every call.
#[derive(Clone, Default)]
struct FakeWeChat {
    calls: Arc<Mutex<Vec<(String, Value, Value)>>>,
}

async fn token(State(fake): State<FakeWeChat>, Json(body): Json<Value>) -> Json<Value> {
    fake.calls
        .lock()
        .unwrap()
        .push(("stable_token".into(), json!({}), body.clone()));
    let app = body["appid"].as_str().unwrap_or_default().to_owned();
    Json(json!({"access_token": format!("TOKEN-{app}"), "expires_in": 7200}))
}

async fn send(
    State(fake): State<FakeWeChat>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    fake.calls
        .lock()
        .unwrap()
        .push(("custom/send".into(), json!(query), body));
    Json(json!({"errcode": 0, "errmsg": "ok"}))
}

async fn start_fake() -> (String, FakeWeChat) {
    let fake = FakeWeChat::default();
    let app = axum::Router::new()
        .route("/cgi-bin/stable_token", axum::routing::post(token))
        .route("/cgi-bin/message/custom/send", axum::routing::post(send))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), fake)
}

/// Posts `inner` (XML or JSON) to a WeChat channel webhook in safe (AES) mode, signed.
async fn post_safe(
    server: &Server,
    channel: &str,
    app_id: &str,
    inner: &str,
    json_mode: bool,
) -> (u16, String) {
    let crypto = WxCrypto::new(TOKEN, AES_KEY, app_id).unwrap();
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let nonce = format!("n{}", rand::random::<u32>());
    let sealed = crypto.seal(inner.as_bytes(), &timestamp, &nonce);
    let (body, content_type) = if json_mode {
        (
            json!({"ToUserName": "gh_test", "Encrypt": sealed.encrypt}).to_string(),
            "application/json",
        )
    } else {
        (
            format!(
                "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>",
                sealed.encrypt
            ),
            "text/xml",
        )
    };
    let r = server
        .http
        .post(server.url(&format!(
            "/v1/channels/{channel}/webhook?signature={}&timestamp={timestamp}&nonce={nonce}\
             &encrypt_type=aes&msg_signature={}",
            signature(&[TOKEN, &timestamp, &nonce]),
            sealed.msg_signature
        )))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_oa_aes_message_to_agent_and_reply_to_the_fake_wechat_api() {
    let (api, fake) = start_fake().await;
    let server = Server::start(&format!(
        "[[channels]]\nid = \"oa\"\nkind = \"wechat_oa\"\napp_id = \"{OA_APP}\"\napp_secret = \"oa-secret\"\n\
         token = \"{TOKEN}\"\nencoding_aes_key = \"{AES_KEY}\"\napi_base = \"{api}\"\n\
         [[channels]]\nid = \"mp\"\nkind = \"wechat_miniprogram\"\napp_id = \"{MP_APP}\"\napp_secret = \"mp-secret\"\n\
         token = \"{TOKEN}\"\nencoding_aes_key = \"{AES_KEY}\"\napi_base = \"{api}\"\n"
    ))
    .await;
    let mut agent = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    agent
        .send(json!({"type": "hello", "agent_id": "wx-agent", "capacity": 2}))
        .await;
    agent.recv_type("welcome").await;

    let now = chrono::Utc::now().timestamp();
    let xml = format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><FromUserName><![CDATA[oOpenIdOA1]]></FromUserName>\
         <CreateTime>{now}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[你好，我的订单 ]]]]><![CDATA[> 到哪了？😀]]></Content><MsgId>24501234567890123</MsgId>\
         <UnionId><![CDATA[uUnion42]]></UnionId></xml>"
    );
    let (status, body) = post_safe(&server, "oa", OA_APP, &xml, false).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    // WeChat's retry of the same message is answered `success` and not routed twice.
    let (status, _) = post_safe(&server, "oa", OA_APP, &xml, false).await;
    assert_eq!(status, 200);

    let assigned = agent.recv_type("assigned").await;
    let conversation = &assigned["conversation"];
    let conversation_id = conversation["id"].as_str().unwrap().to_owned();
    assert_eq!(
        conversation["channel"],
        json!({"kind": "wechat_oa", "id": "oa"})
    );
    assert_eq!(
        conversation["messages"][0]["content"]["text"], "你好，我的订单 ]]> 到哪了？😀",
        "CDATA split and emoji survive exactly"
    );
    let keys: Vec<&str> = conversation["customer"]["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&format!("wechat_openid:{OA_APP}:oOpenIdOA1").as_str()),
        "{keys:?}"
    );
    assert!(keys.contains(&"wechat_unionid::uUnion42"), "{keys:?}");

    // The agent replies: the exact send call reaches the fake WeChat API with the token.
    agent
        .send(
            json!({"type": "reply", "client_id": "r1", "conversation_id": conversation_id,
                     "content": {"type": "text", "text": "您好，已发货"}}),
        )
        .await;
    agent.recv_type("ack").await;
    let calls = eventually(|| async {
        let calls = fake.calls.lock().unwrap().clone();
        calls
            .iter()
            .any(|(what, _, _)| what == "custom/send")
            .then_some(calls)
    })
    .await;
    let (_, query, body) = calls.iter().find(|(w, _, _)| w == "custom/send").unwrap();
    assert_eq!(query["access_token"], format!("TOKEN-{OA_APP}"));
    assert_eq!(
        body,
        &json!({"touser": "oOpenIdOA1", "msgtype": "text", "text": {"content": "您好，已发货"}})
    );
    let token_call = calls.iter().find(|(w, _, _)| w == "stable_token").unwrap();
    assert_eq!(token_call.2["appid"], OA_APP);

    // The same person writes from the mini-program (JSON safe mode): same UnionID, so the same
    // profile and the same conversation, now on the mini-program channel.
    let mp = json!({
        "ToUserName": "gh_mp", "FromUserName": "oOpenIdMP9", "CreateTime": now + 1,
        "MsgType": "text", "Content": "换个地方问一下", "MsgId": 24509999, "UnionId": "uUnion42"
    })
    .to_string();
    let (status, body) = post_safe(&server, "mp", MP_APP, &mp, true).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    let live = agent.recv_type("message").await;
    assert_eq!(
        live["conversation_id"],
        conversation_id.as_str(),
        "same conversation"
    );
    assert_eq!(live["message"]["channel"]["id"], "mp");
    let (_, by_oa) = server
        .get_json(&format!(
            "/v1/customers?identity=wechat_openid:{OA_APP}:oOpenIdOA1"
        ))
        .await;
    let (_, by_mp) = server
        .get_json(&format!(
            "/v1/customers?identity=wechat_openid:{MP_APP}:oOpenIdMP9"
        ))
        .await;
    assert_eq!(
        by_oa["id"], by_mp["id"],
        "one profile across OA and mini-program"
    );
    let (_, conv) = server
        .get_json(&format!("/v1/conversations/{conversation_id}"))
        .await;
    assert_eq!(
        conv["channel"]["id"], "mp",
        "replies now go to the mini-program"
    );
    assert_eq!(
        conv["messages"].as_array().unwrap().len(),
        3,
        "2 inbound + 1 reply, no duplicate"
    );

    // A tampered message is refused before decryption, and counted.
    let crypto = WxCrypto::new(TOKEN, AES_KEY, OA_APP).unwrap();
    let sealed = crypto.seal(xml.as_bytes(), &now.to_string(), "nonce");
    let r = server
        .http
        .post(server.url(&format!(
            "/v1/channels/oa/webhook?signature={}&timestamp={now}&nonce=nonce\
             &encrypt_type=aes&msg_signature={}",
            signature(&[TOKEN, &now.to_string(), "nonce"]),
            "0".repeat(40)
        )))
        .header("content-type", "text/xml")
        .body(format!(
            "<xml><Encrypt><![CDATA[{}]]></Encrypt></xml>",
            sealed.encrypt
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        server
            .metric("switchyard_inbound_messages_total{channel=\"oa\",outcome=\"bad_signature\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}
