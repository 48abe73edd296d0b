//! Douyin through the real HTTP ingress: the signed `verify_webhook` POST is answered with the
//! challenge, a customer DM reaches an agent, a retry is not routed twice, and the account's own
//! echo is acknowledged but not routed.

use serde_json::json;
use switchyard_connectors::douyin::webhook_signature;

use crate::support::{Server, Ws};

const SECRET: &str = "douyin-client-secret-e2e";

async fn post(server: &Server, body: &str, msg_id: &str) -> (u16, serde_json::Value) {
    let r = server
        .http
        .post(server.url("/v1/channels/dy/webhook"))
        .header("content-type", "application/json")
        .header("msg-id", msg_id)
        .header(
            "x-douyin-signature",
            webhook_signature(SECRET, body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

fn dm(event: &str, server_message_id: &str, text: &str) -> String {
    json!({
        "event": event,
        "client_key": "awe2eclientkey",
        "from_user_id": "cust-open-id-1",
        "to_user_id": "acct-open-id",
        "content": {
            "conversation_short_id": "@conv-1",
            "server_message_id": server_message_id,
            "conversation_type": 1,
            "message_type": "text",
            "create_time": 1_795_510_798_500u64,
            "user_infos": [{"open_id": "cust-open-id-1", "nick_name": "李雷"}],
            "text": text
        },
        "log_id": "log-1"
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn douyin_challenge_message_retry_and_echo_through_the_ingress() {
    let server = Server::start(&format!(
        "[[channels]]\nid = \"dy\"\nkind = \"douyin\"\nclient_key = \"awe2eclientkey\"\nclient_secret = \"{SECRET}\"\n"
    ))
    .await;
    let mut agent = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    agent
        .send(json!({"type": "hello", "agent_id": "dy-agent", "capacity": 2}))
        .await;
    agent.recv_type("welcome").await;

    let challenge = json!({"event": "verify_webhook", "client_key": "awe2eclientkey",
                           "content": {"challenge": 12345}})
    .to_string();
    let (status, body) = post(&server, &challenge, "m-0").await;
    assert_eq!((status, body), (200, json!({"challenge": 12345})));

    let message = dm("im_receive_msg", "@srv-1", "在吗？想问下物流 🚚");
    let (status, _) = post(&server, &message, "m-1").await;
    assert_eq!(status, 200);
    let (status, _) = post(&server, &message, "m-1").await;
    assert_eq!(status, 200, "Douyin's retry is acknowledged");

    let assigned = agent.recv_type("assigned").await;
    let conversation = &assigned["conversation"];
    assert_eq!(
        conversation["channel"],
        json!({"kind": "douyin", "id": "dy"})
    );
    assert_eq!(
        conversation["messages"][0]["content"]["text"],
        "在吗？想问下物流 🚚"
    );
    assert_eq!(
        conversation["customer"]["identities"][0]["key"],
        "douyin_open_id:awe2eclientkey:cust-open-id-1"
    );

    // The account's own echo is not a customer message.
    let echo = dm("im_send_msg", "@srv-2", "我们的回复");
    let (status, _) = post(&server, &echo, "m-2").await;
    assert_eq!(status, 200);
    // A bad signature is refused.
    let r = server
        .http
        .post(server.url("/v1/channels/dy/webhook"))
        .header("content-type", "application/json")
        .header("x-douyin-signature", "0".repeat(40))
        .body(dm("im_receive_msg", "@srv-3", "forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let id = conversation["id"].as_str().unwrap();
    let (_, conv) = server.get_json(&format!("/v1/conversations/{id}")).await;
    assert_eq!(
        conv["messages"].as_array().unwrap().len(),
        1,
        "the retry and the echo were not routed"
    );
    server.stop().await;
}
