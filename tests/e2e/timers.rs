//! The idle timer through the real server: a pool's `close_idle_secs` closes its queued and
//! assigned conversations after that long without a change, reason `idle`, freeing the agent's
//! room for the next one in the queue.

use serde_json::json;

use crate::support::{SECRET, Server, api_message, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_conversations_close_and_free_their_agent() {
    let server = Server::start(&format!(
        "[[pools]]\nid = \"default\"\nclose_idle_secs = 1\n\
         [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\n"
    ))
    .await;
    let (status, body) = server
        .send_json(
            "PUT",
            "/v1/agents/ann",
            json!({"name": "Ann", "pools": ["default"], "capacity": 1, "status": "online"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for (message, user) in [("m-1", "1"), ("m-2", "2")] {
        let response = server
            .post_signed("shop", &api_message(message, user, "hello?", &[]))
            .await;
        assert_eq!(response.status(), 202);
    }
    // Ann has room for one: the first is hers, the second waits.
    let (first, second) = eventually(|| async {
        let (_, held) = server.get_json("/v1/agents/ann/conversations").await;
        let (_, queue) = server.get_json("/v1/pools/default/queue").await;
        let held = held["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let waiting = queue["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (held.len() == 1 && waiting.len() == 1).then(|| {
            (
                held[0]["id"].as_str().unwrap().to_owned(),
                waiting[0]["id"].as_str().unwrap().to_owned(),
            )
        })
    })
    .await;

    // Nobody writes: both close as idle (the waiting one too, queued or once it reached Ann).
    for id in [&first, &second] {
        let closed = eventually(|| async {
            let (_, c) = server.get_json(&format!("/v1/conversations/{id}")).await;
            (c["status"] == "closed").then_some(c)
        })
        .await;
        assert_eq!(closed["close_reason"], "idle", "{closed}");
    }
    let (_, held) = server.get_json("/v1/agents/ann/conversations").await;
    assert_eq!(held["conversations"], json!([]));
    assert_eq!(
        server
            .metric(r#"switchyard_idle_closes_total{pool="default"}"#)
            .await,
        2.0
    );
    server.stop().await;
}
