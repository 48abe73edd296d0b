//! Redaction at ingestion through the real server: `[redaction]` detectors and a pattern take
//! a card number, an e-mail address, a phone number and a secret out of what a customer writes
//! (an `api` message and a web visitor's), before the bus, so the store, the events and the
//! kept `raw` hold only the redacted text; a channel with `redact = []` keeps its text, a retry
//! is not counted twice, and each replacement counts in `switchyard_redactions_total`.

use serde_json::{Value, json};

use crate::support::{
    Callback, OnRealServices, SECRET, Server, WEB_SECRET, Ws, signed_cloud_event,
};

const HOOK_SECRET: &str = "helpdesk-webhook-secret-0123";

/// What the customers write.
const SAID: &str = "card 4111 1111 1111 1111, mail li.lei@example.com, call 13800138000, \
                    code SEC-123456, order 2026113000";
/// What everyone downstream reads.
const REDACTED: &str = "card [redacted:payment_card], mail [redacted:email], \
                        call [redacted:phone], code [redacted:order_secret], order 2026113000";

fn config(helpdesk: &str) -> String {
    format!(
        "[redaction]\ndetectors = [\"payment_card\", \"email\", \"phone\"]\n\
         [[redaction.patterns]]\nname = \"order_secret\"\nregex = \"SEC-[0-9]{{6}}\"\n\
         [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\nkeep_raw = true\n\
         [[channels]]\nid = \"staff\"\nkind = \"api\"\nsecret = \"{SECRET}\"\nredact = []\n\
         [[channels]]\nid = \"web\"\nkind = \"web\"\nsecret = \"{WEB_SECRET}\"\n\
         [[webhooks]]\nid = \"helpdesk\"\nurl = \"{helpdesk}\"\nsecret = \"{HOOK_SECRET}\"\n\
         events = [\"message.received\"]\n"
    )
}

fn body(message_id: &str, user: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "message_id": message_id,
        "user": {"id": user, "name": "Li Lei", "identities": ["phone::+8613800138000"]},
        "content": {"type": "text", "text": SAID},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_is_redacted_before_the_bus() {
    let helpdesk = Callback::start().await;
    let server = Server::start(&config(&helpdesk.url)).await;
    scenario(&server, &helpdesk).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_is_redacted_before_the_bus_on_rabbitmq_and_redis() {
    let helpdesk = Callback::start().await;
    let Some(real) = OnRealServices::start("redaction", &config(&helpdesk.url)).await else {
        return;
    };
    scenario(&real.server, &helpdesk).await;
    real.stop().await;
}

async fn scenario(server: &Server, helpdesk: &Callback) {
    server.agent_online("ann", 10).await;
    for (channel, user) in [("shop", "42"), ("staff", "43")] {
        let response = server.post_signed(channel, &body("m-1", user)).await;
        assert_eq!(response.status(), 202, "{channel}");
    }
    let mut visitor = Ws::connect(&format!("ws://{}/v1/channels/web/ws", server.addr)).await;
    visitor.recv_type("welcome").await;
    visitor
        .send(json!({"type": "message", "client_id": "c-1",
                     "content": {"type": "text", "text": SAID}}))
        .await;
    assert_eq!(visitor.recv_type("ack").await["duplicate"], false);

    let events = helpdesk.wait_for(3).await;
    let mut channels = Vec::new();
    for event in &events {
        let message = signed_cloud_event(event, HOOK_SECRET)["data"]["message"].clone();
        let channel = message["channel"]["id"].as_str().unwrap().to_owned();
        let stored = stored_message(server, &message).await;
        let expected = if channel == "staff" { SAID } else { REDACTED };
        assert_eq!(message["content"]["text"], expected, "{channel}: the event");
        assert_eq!(stored["content"]["text"], expected, "{channel}: the store");
        if channel == "shop" {
            // The kept payload is redacted too, the identity list in it included; the
            // envelope's own identities stay as the backend vouched for them.
            assert_eq!(stored["raw"]["content"]["text"], REDACTED);
            assert_eq!(
                stored["raw"]["user"]["identities"],
                json!(["phone::[redacted:phone]"])
            );
            assert!(
                stored["sender"]["identities"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("phone::+8613800138000")),
                "{stored}"
            );
            assert_eq!(message["raw"], stored["raw"]);
        }
        channels.push(channel);
    }
    channels.sort();
    assert_eq!(channels, ["shop", "staff", "web"]);

    // A retry of the shop's message is a duplicate: redacted and counted once.
    let response = server.post_signed("shop", &body("m-1", "42")).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await.unwrap()["duplicate"], true);
    for (channel, rule, count) in [
        ("shop", "payment_card", 2.0), // the text and the raw's copy
        ("shop", "email", 2.0),
        ("shop", "phone", 3.0), // the raw's identity list too
        ("shop", "order_secret", 2.0),
        ("web", "payment_card", 1.0),
        ("web", "phone", 1.0),
        ("staff", "payment_card", 0.0),
    ] {
        assert_eq!(
            server
                .metric(&format!(
                    "switchyard_redactions_total{{channel=\"{channel}\",rule=\"{rule}\"}}"
                ))
                .await,
            count,
            "{channel} {rule}"
        );
    }
    visitor.close().await;
}

/// The stored copy of `message` (`GET /v1/conversations/{id}`).
async fn stored_message(server: &Server, message: &Value) -> Value {
    let conversation = message["conversation_id"].as_str().unwrap();
    let (status, body) = server
        .get_json(&format!("/v1/conversations/{conversation}"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == message["id"])
        .cloned()
        .unwrap_or_else(|| panic!("message {} is not stored: {body}", message["id"]))
}
