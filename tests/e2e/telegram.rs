//! Telegram through the real HTTP ingress: an update with the webhook's secret token reaches an
//! agent, Telegram's retry of it is not routed twice, updates that are not routed are answered
//! 200, a wrong secret is refused, and the agent's reply becomes exactly the expected
//! `sendMessage` on a fake Bot API (wiremock).

use serde_json::json;
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{Server, Ws, eventually};

const BOT_TOKEN: &str = "7000000001:AAE2e-telegram_bot_token_000000000";
const SECRET: &str = "e2e-telegram-secret_token";
const USER_ID: i64 = 5_550_000_123;

async fn post(server: &Server, secret: Option<&str>, body: &str) -> u16 {
    let mut request = server
        .http
        .post(server.url("/v1/channels/tg/webhook"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(secret) = secret {
        request = request.header("x-telegram-bot-api-secret-token", secret);
    }
    request.send().await.unwrap().status().as_u16()
}

fn text_update(update_id: i64, message_id: i64, text: &str) -> String {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "from": {"id": USER_ID, "is_bot": false, "first_name": "Ada", "last_name": "Lovelace",
                     "username": "ada_l", "language_code": "en"},
            "chat": {"id": USER_ID, "first_name": "Ada", "last_name": "Lovelace",
                     "username": "ada_l", "type": "private"},
            "date": chrono::Utc::now().timestamp() - 1,
            "text": text
        }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_update_to_agent_and_reply_to_the_fake_bot_api() {
    let bot_api = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/bot{BOT_TOKEN}/sendMessage")))
        .and(body_json(json!({
            "chat_id": USER_ID,
            "text": "Hi Ada, it ships today 🚚"
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "ok": true,
            "result": {"message_id": 78, "date": 1, "chat": {"id": USER_ID, "type": "private"},
                       "text": "Hi Ada, it ships today 🚚"}
        })))
        .expect(1)
        .mount(&bot_api)
        .await;
    let server = Server::start(&format!(
        "[[channels]]\nid = \"tg\"\nkind = \"telegram\"\nbot_token = \"{BOT_TOKEN}\"\n\
         secret_token = \"{SECRET}\"\napi_base = \"{}\"\n",
        bot_api.uri()
    ))
    .await;
    let mut agent = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    agent
        .send(json!({"type": "hello", "agent_id": "tg-agent", "capacity": 2}))
        .await;
    agent.recv_type("welcome").await;

    let update = text_update(881_000_001, 77, "Where is my order? 📦");
    assert_eq!(post(&server, Some(SECRET), &update).await, 200);
    assert_eq!(
        post(&server, Some(SECRET), &update).await,
        200,
        "Telegram's retry is acknowledged"
    );

    let assigned = agent.recv_type("assigned").await;
    let conversation = &assigned["conversation"];
    let conversation_id = conversation["id"].as_str().unwrap().to_owned();
    assert_eq!(
        conversation["channel"],
        json!({"kind": "telegram", "id": "tg"})
    );
    assert_eq!(
        conversation["messages"][0]["content"]["text"],
        "Where is my order? 📦"
    );
    assert_eq!(
        conversation["customer"]["identities"][0]["key"],
        format!("telegram_user_id::{USER_ID}")
    );

    // Updates that are not routed are still answered 200 (so Telegram stops retrying).
    let edited = json!({
        "update_id": 881_000_002,
        "edited_message": {"message_id": 77, "from": {"id": USER_ID, "is_bot": false,
            "first_name": "Ada"}, "chat": {"id": USER_ID, "type": "private"}, "date": 1,
            "edit_date": 2, "text": "edited"}
    })
    .to_string();
    assert_eq!(post(&server, Some(SECRET), &edited).await, 200);
    let group = json!({
        "update_id": 881_000_003,
        "message": {"message_id": 5, "from": {"id": USER_ID, "is_bot": false,
            "first_name": "Ada"}, "chat": {"id": -1_001_234_567_890i64, "type": "supergroup",
            "title": "Fans"}, "date": 1, "text": "hi group"}
    })
    .to_string();
    assert_eq!(post(&server, Some(SECRET), &group).await, 200);
    // A wrong or missing secret token is refused.
    let forged = text_update(881_000_004, 80, "forged");
    assert_eq!(post(&server, Some("not-the-secret"), &forged).await, 401);
    assert_eq!(post(&server, None, &forged).await, 401);

    // The agent replies: exactly one sendMessage reaches the fake Bot API, quoting message 77.
    agent
        .send(
            json!({"type": "reply", "client_id": "r1", "conversation_id": conversation_id,
                     "content": {"type": "text", "text": "Hi Ada, it ships today 🚚"}}),
        )
        .await;
    agent.recv_type("ack").await;
    let sent = eventually(|| async {
        let requests = bot_api.received_requests().await.unwrap_or_default();
        (!requests.is_empty()).then_some(requests)
    })
    .await;
    assert_eq!(sent.len(), 1, "one send");
    assert_eq!(sent[0].url.path(), format!("/bot{BOT_TOKEN}/sendMessage"));

    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, conv) = server
        .get_json(&format!("/v1/conversations/{conversation_id}"))
        .await;
    assert_eq!(
        conv["messages"].as_array().unwrap().len(),
        2,
        "one inbound (the retry, the edit and the group message were not routed) + one reply"
    );
    assert_eq!(bot_api.received_requests().await.unwrap().len(), 1);
    server.stop().await;
}
