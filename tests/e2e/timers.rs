//! Pool timers through the real server: a pool's `close_idle_secs` closes its queued and
//! assigned conversations after that long without a change, reason `idle`, freeing the agent's
//! room for the next one in the queue; its `answer_timeout_secs` takes a conversation back from
//! an agent who leaves the customer unanswered that long, and sets the agent away unless the
//! pool says `answer_timeout_sets_away = false`.

use std::time::Duration;

use serde_json::json;

use crate::support::{SECRET, Server, Ws, api_message, eventually};

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
    let series = r#"switchyard_idle_closes_total{pool="default"}"#;
    assert_eq!(server.metric_once(series, 2.0).await, 2.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_customer_goes_to_another_agent() {
    let server = Server::start(&format!(
        "[[pools]]\nid = \"default\"\nanswer_timeout_secs = 1\n\
         [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\n"
    ))
    .await;
    // ann, on the agent WebSocket, is the longest idle and gets the customer first.
    let mut ann = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    ann.send(json!({"type": "hello", "agent_id": "ann", "pools": ["default"], "capacity": 2}))
        .await;
    ann.recv_type("welcome").await;
    server.agent_online("bob", 2).await;
    let response = server
        .post_signed("shop", &api_message("m-1", "1", "hello?", &[]))
        .await;
    assert_eq!(response.status(), 202);
    let assigned = ann.recv_type("assigned").await;
    let id = assigned["conversation"]["id"].as_str().unwrap().to_owned();
    assert!(
        assigned["conversation"]["awaiting_reply_since"].is_string(),
        "{assigned}"
    );

    // ann does not answer: the conversation leaves her, she is set away, and bob has it.
    let gone = ann.recv_type("unassigned").await;
    assert_eq!(
        (gone["conversation_id"].as_str(), gone["reason"].as_str()),
        (Some(id.as_str()), Some("unanswered"))
    );
    let agent = ann.recv_type("agent").await;
    assert_eq!(agent["agent"]["status"], "away");
    let bobs = server.held_by("bob", 1).await;
    assert_eq!(bobs[0]["id"], id.as_str());
    assert_eq!(
        server
            .metric(r#"switchyard_unanswered_total{pool="default"}"#)
            .await,
        1.0
    );

    // bob answers: the customer no longer waits, and the conversation stays with him.
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{id}/messages"),
            json!({"agent_id": "bob", "content": {"type": "text", "text": "Hi, I am here"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (_, conversation) = server.get_json(&format!("/v1/conversations/{id}")).await;
    assert_eq!(
        conversation["awaiting_reply_since"],
        json!(null),
        "{conversation}"
    );
    // Several sweeps later (one a second), it is still bob's.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, conversation) = server.get_json(&format!("/v1/conversations/{id}")).await;
    assert_eq!(
        (
            conversation["status"].as_str(),
            conversation["agent_id"].as_str()
        ),
        (Some("assigned"), Some("bob")),
        "{conversation}"
    );
    assert_eq!(
        server
            .metric(r#"switchyard_unanswered_total{pool="default"}"#)
            .await,
        1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_can_take_back_unanswered_customers_without_setting_the_agent_away() {
    let server = Server::start(&format!(
        "[[pools]]\nid = \"default\"\nanswer_timeout_secs = 1\nanswer_timeout_sets_away = false\n\
         [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\n"
    ))
    .await;
    // ann, the longest idle, gets the customer first.
    server.agent_online("ann", 2).await;
    server.agent_online("bob", 2).await;
    let response = server
        .post_signed("shop", &api_message("m-1", "1", "hello?", &[]))
        .await;
    assert_eq!(response.status(), 202);
    let id = server.held_by("ann", 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // ann does not answer: bob has the conversation, and ann is still online.
    let bobs = server.held_by("bob", 1).await;
    assert_eq!(bobs[0]["id"], id.as_str());
    server.held_by("ann", 0).await;
    let (status, ann) = server.get_json("/v1/agents/ann").await;
    assert_eq!(
        (status, ann["status"].as_str()),
        (200, Some("online")),
        "{ann}"
    );
    assert_eq!(
        server
            .metric(r#"switchyard_unanswered_total{pool="default"}"#)
            .await,
        1.0
    );
    server.stop().await;
}
