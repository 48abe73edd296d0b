//! Routing rules (`[[routes]]`) through the real server: the message that opens a conversation
//! picks its pool, the first matching rule wins, and an open conversation keeps its pool.

use serde_json::json;

use crate::support::{SECRET, Server, api_message, eventually};

const CONFIG: &str = r#"
[[pools]]
id = "billing"

[[pools]]
id = "vip"

[[channels]]
id = "shop"
kind = "api"
secret = "SECRET"

[[routes]]
id = "refunds"
pool = "billing"
text_contains = ["refund", "退款"]

[[routes]]
id = "known-phone"
pool = "vip"
channels = ["shop"]
identity_kinds = ["phone"]
"#;

/// Puts `agent` online in `pool` with room for everything the test sends.
async fn agent_in(server: &Server, agent: &str, pool: &str) {
    let (status, body) = server
        .send_json(
            "PUT",
            &format!("/v1/agents/{agent}"),
            json!({"name": agent, "pools": [pool], "capacity": 10, "status": "online"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opening_message_picks_the_pool_by_the_first_matching_rule() {
    let server = Server::start(&CONFIG.replace("SECRET", SECRET)).await;
    agent_in(&server, "ann", "default").await;
    agent_in(&server, "bob", "billing").await;
    agent_in(&server, "vic", "vip").await;

    // Both rules match: the first one listed wins.
    let sent = |id: &str, user: &str, text: &str, identities: &[&str]| {
        let body = api_message(id, user, text, identities);
        let server = &server;
        async move {
            let response = server.post_signed("shop", &body).await;
            assert_eq!(response.status(), 202);
        }
    };
    sent("m-1", "1", "I want a REFUND", &["phone::+8613800000001"]).await;
    let billing = server.held_by("bob", 1).await;
    assert_eq!(billing[0]["pool"], "billing");

    sent("m-2", "2", "hello", &["phone::+8613800000002"]).await;
    let vip = server.held_by("vic", 1).await;
    assert_eq!(vip[0]["pool"], "vip");

    // No rule matches: the channel's pool.
    sent("m-3", "3", "hello", &[]).await;
    let default = server.held_by("ann", 1).await;
    assert_eq!(default[0]["pool"], "default");

    // Later messages stay in the open conversation, whatever they say.
    sent("m-4", "3", "and a refund, please", &[]).await;
    sent("m-5", "1", "thanks", &[]).await;
    for (held, agent, pool) in [(&default, "ann", "default"), (&billing, "bob", "billing")] {
        let conversation = held[0]["id"].as_str().unwrap();
        let body = eventually(|| async {
            let (_, body) = server
                .get_json(&format!("/v1/conversations/{conversation}"))
                .await;
            (body["messages"].as_array().map(Vec::len) == Some(2)).then_some(body)
        })
        .await;
        assert_eq!(body["pool"], pool);
        assert_eq!(body["agent_id"], agent);
    }
    assert_eq!(server.held_by("ann", 1).await.len(), 1);
    assert_eq!(server.held_by("bob", 1).await.len(), 1);

    for (series, opened) in [
        (r#"{pool="billing",rule="refunds"}"#, 1.0),
        (r#"{pool="vip",rule="known-phone"}"#, 1.0),
        (r#"{pool="default",rule=""}"#, 1.0),
    ] {
        let series = format!("switchyard_conversations_opened_total{series}");
        assert_eq!(server.metric(&series).await, opened, "{series}");
    }
    server.stop().await;
}
