//! The original payload kept in `raw`: an `api` channel with `keep_raw = true` and
//! `raw_mask = ["note"]` keeps the request body, masked, through the bus into the store (the
//! conversation's messages) and the `message.received` event; a channel without `keep_raw`
//! keeps nothing.

use serde_json::{Value, json};

use crate::support::{Callback, SECRET, Server, signed_cloud_event};

const HOOK_SECRET: &str = "helpdesk-webhook-secret-0123";

/// A body whose content carries a `note` and a phone number, from user `user` vouched for
/// `identities`.
fn body(message_id: &str, user: &str, identities: &[&str]) -> Value {
    json!({
        "message_id": message_id,
        "user": {"id": user, "name": "Li Lei", "identities": identities},
        "content": {
            "type": "card",
            "title": "Order 42",
            "attributes": {"note": "leave it with the neighbour", "phone": "+8613800000000",
                           "order": "42"}
        },
        "sent_at": "2026-11-24T09:00:00Z"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_raw_reaches_the_store_and_the_events_masked_and_is_absent_when_off() {
    let helpdesk = Callback::start().await;
    let server = Server::start(&format!(
        "[[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\nkeep_raw = true\n\
         raw_mask = [\"note\"]\n\
         [[channels]]\nid = \"plain\"\nkind = \"api\"\nsecret = \"{SECRET}\"\n\
         [[webhooks]]\nid = \"helpdesk\"\nurl = \"{}\"\nsecret = \"{HOOK_SECRET}\"\n\
         events = [\"message.received\"]\n",
        helpdesk.url
    ))
    .await;
    server.agent_online("a1", 5).await;

    let kept = body("m-1", "42", &["phone::+8613800000000"]);
    let response = server
        .post_signed("shop", &serde_json::to_vec(&kept).unwrap())
        .await;
    assert_eq!(response.status(), 202);
    let response = server
        .post_signed(
            "plain",
            &serde_json::to_vec(&body("m-1", "43", &[])).unwrap(),
        )
        .await;
    assert_eq!(response.status(), 202);

    // What the channel sent, masked: `note` by the channel's raw_mask, `phone` built in. The
    // vouched identities are the envelope's own and stay as sent.
    let mut expected = kept.clone();
    expected["content"]["attributes"]["note"] = json!("[masked]");
    expected["content"]["attributes"]["phone"] = json!("[masked]");

    let events = helpdesk.wait_for(2).await;
    let messages: Vec<Value> = events
        .iter()
        .map(|r| signed_cloud_event(r, HOOK_SECRET)["data"]["message"].clone())
        .collect();
    for message in &messages {
        let channel = message["channel"]["id"].as_str().unwrap();
        let conversation = message["conversation_id"].as_str().unwrap();
        let (status, stored) = server
            .get_json(&format!("/v1/conversations/{conversation}"))
            .await;
        assert_eq!(status, 200);
        let stored = stored["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == message["id"])
            .unwrap();
        match channel {
            "shop" => {
                assert_eq!(message["raw"], expected, "the message.received event");
                assert_eq!(stored["raw"], expected, "the conversation's message");
                assert_eq!(
                    stored["raw"]["user"]["identities"][0],
                    "phone::+8613800000000"
                );
                // Masking is for `raw` only: the content is the message itself.
                assert_eq!(
                    stored["content"]["attributes"]["note"],
                    "leave it with the neighbour"
                );
            }
            "plain" => {
                assert!(message.get("raw").is_none(), "off by default: {message}");
                assert!(stored.get("raw").is_none(), "off by default: {stored}");
            }
            other => panic!("a message of channel {other}"),
        }
    }
    let mut channels: Vec<&str> = messages
        .iter()
        .map(|m| m["channel"]["id"].as_str().unwrap())
        .collect();
    channels.sort();
    assert_eq!(channels, ["plain", "shop"]);
    server.stop().await;
}
