//! LINE through the real HTTP ingress: the console's Verify request (no events) is answered 200,
//! a signed message reaches an agent, LINE's redelivery is not routed twice, a follow event and
//! a forged signature are handled, and the agent's reply becomes exactly the documented push on
//! a fake LINE Messaging API.

use serde_json::json;
use switchyard_connectors::line::{retry_key, webhook_signature};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{Server, Ws, eventually};

const SECRET: &str = "line-e2e-channel-secret";
const TOKEN: &str = "line-e2e-channel-access-token";
const BOT: &str = "Ue2e0000000000000000000000000b0a7";
const USER: &str = "Ue2e1111111111111111111111111111";

async fn post(server: &Server, body: &str, signature: &str) -> (u16, String) {
    let r = server
        .http
        .post(server.url("/v1/channels/ln/webhook"))
        .header("content-type", "application/json; charset=utf-8")
        .header("x-line-signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

async fn post_signed(server: &Server, body: &str) -> (u16, String) {
    post(server, body, &webhook_signature(SECRET, body.as_bytes())).await
}

fn webhook(events: serde_json::Value) -> String {
    json!({ "destination": BOT, "events": events }).to_string()
}

fn text_event(event_id: &str, message_id: &str, text: &str, redelivery: bool) -> serde_json::Value {
    json!({
        "replyToken": "0f3779fba3b349968c5d07db31eab56f",
        "type": "message",
        "mode": "active",
        "timestamp": chrono::Utc::now().timestamp_millis(),
        "source": { "type": "user", "userId": USER },
        "webhookEventId": event_id,
        "deliveryContext": { "isRedelivery": redelivery },
        "message": { "id": message_id, "type": "text", "quoteToken": "q-1", "text": text }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_message_to_agent_and_reply_as_a_push_to_the_fake_line_api() {
    let line_api = MockServer::start().await;
    let reply_text = "您好，您的订单已发出 📦";
    Mock::given(method("POST"))
        .and(path("/v2/bot/message/push"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "to": USER,
            "messages": [{ "type": "text", "text": reply_text }]
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "sentMessages": [{ "id": "461230966842064897", "quoteToken": "q-sent" }]
        })))
        .expect(1)
        .mount(&line_api)
        .await;
    let server = Server::start(&format!(
        "[[channels]]\nid = \"ln\"\nkind = \"line\"\nchannel_secret = \"{SECRET}\"\n\
         channel_access_token = \"{TOKEN}\"\napi_base = \"{}\"\n",
        line_api.uri()
    ))
    .await;
    let mut agent = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    agent
        .send(json!({"type": "hello", "agent_id": "line-agent", "capacity": 2}))
        .await;
    agent.recv_type("welcome").await;

    // The console's "Verify" button: a signed webhook without events.
    let (status, _) = post_signed(&server, &webhook(json!([]))).await;
    assert_eq!(status, 200);

    let message = webhook(json!([text_event(
        "01JDR0A1B2C3D4E5F6G7H8J9K0",
        "533466181562843137",
        "こんにちは、注文 #42 はどこですか？ (love)",
        false
    )]));
    let (status, _) = post_signed(&server, &message).await;
    assert_eq!(status, 200);
    // LINE's redelivery of the same event (same webhookEventId) is acknowledged, not routed.
    let redelivery = webhook(json!([text_event(
        "01JDR0A1B2C3D4E5F6G7H8J9K0",
        "533466181562843137",
        "こんにちは、注文 #42 はどこですか？ (love)",
        true
    )]));
    let (status, _) = post_signed(&server, &redelivery).await;
    assert_eq!(status, 200);

    let assigned = agent.recv_type("assigned").await;
    let conversation = &assigned["conversation"];
    let conversation_id = conversation["id"].as_str().unwrap().to_owned();
    assert_eq!(conversation["channel"], json!({"kind": "line", "id": "ln"}));
    assert_eq!(
        conversation["messages"][0]["content"]["text"],
        "こんにちは、注文 #42 はどこですか？ (love)"
    );
    assert_eq!(
        conversation["customer"]["identities"][0]["key"],
        format!("line_user_id:{BOT}:{USER}")
    );

    // A follow event is acknowledged (200) and not routed; a forged signature is refused.
    let follow = webhook(json!([{
        "replyToken": "r", "type": "follow", "mode": "active",
        "timestamp": chrono::Utc::now().timestamp_millis(),
        "source": { "type": "user", "userId": USER },
        "webhookEventId": "01JDR0A1B2C3D4E5F6G7H8J9K1",
        "deliveryContext": { "isRedelivery": false },
        "follow": { "isUnblocked": false }
    }]));
    let (status, _) = post_signed(&server, &follow).await;
    assert_eq!(status, 200);
    let forged = webhook(json!([text_event(
        "01JDR0A1B2C3D4E5F6G7H8J9K2",
        "533466181562843138",
        "forged",
        false
    )]));
    let (status, _) = post(
        &server,
        &forged,
        &webhook_signature("not-the-secret", forged.as_bytes()),
    )
    .await;
    assert_eq!(status, 401);

    // The agent replies: exactly one push reaches the fake LINE API.
    agent
        .send(
            json!({"type": "reply", "client_id": "r1", "conversation_id": conversation_id,
                     "content": {"type": "text", "text": reply_text}}),
        )
        .await;
    let ack = agent.recv_type("ack").await;
    let reply_id = ack["id"].as_str().unwrap().to_owned();
    let pushes = eventually(|| async {
        let pushes: Vec<wiremock::Request> = line_api
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path() == "/v2/bot/message/push")
            .collect();
        (!pushes.is_empty()).then_some(pushes)
    })
    .await;
    assert_eq!(pushes.len(), 1);
    assert_eq!(
        pushes[0].headers["x-line-retry-key"].to_str().unwrap(),
        retry_key(&reply_id),
        "the retry key is derived from the reply's envelope id"
    );

    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, conv) = server
        .get_json(&format!("/v1/conversations/{conversation_id}"))
        .await;
    assert_eq!(
        conv["messages"].as_array().unwrap().len(),
        2,
        "one inbound (the redelivery and the follow were not routed) and the reply"
    );
    assert!(
        server
            .metric("switchyard_inbound_messages_total{channel=\"ln\",outcome=\"bad_signature\"}")
            .await
            >= 1.0
    );
    server.stop().await;
}
