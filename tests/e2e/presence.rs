//! Agent presence across a gateway crash, as separate processes on RabbitMQ and Redis: an agent
//! whose gateway is killed with SIGKILL (so nobody sets it offline) stops being assigned once
//! its presence TTL has passed, and gets the waiting conversation when it reconnects.

use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::support::{Ws, api_message};

/// Presence TTL of this test's gateways, in seconds.
const TTL_SECS: u64 = 1;

/// Connects an agent socket and says hello; returns the socket and every frame up to and
/// including `welcome` (an assignment made by the hello itself may arrive before it).
async fn hello(cluster: &Cluster, agent_id: &str) -> (Ws, Vec<Value>) {
    let url = format!(
        "{}/v1/agents/ws",
        cluster.gateway_url.replacen("http://", "ws://", 1)
    );
    let mut ws = Ws::connect(&url).await;
    ws.send(json!({"type": "hello", "agent_id": agent_id, "pools": ["default"], "capacity": 5}))
        .await;
    let mut frames = Vec::new();
    loop {
        let frame = ws.recv().await;
        let welcome = frame["type"] == "welcome";
        frames.push(frame);
        if welcome {
            return (ws, frames);
        }
    }
}

/// Waits until the pool's queue lists a conversation of `user` and returns its id.
async fn queued_conversation_of(cluster: &Cluster, user: &str) -> String {
    for _ in 0..200 {
        let (status, body) = cluster.get("/v1/pools/default/queue").await;
        assert_eq!(status, 200, "queue: {body}");
        if let Some(c) = body["conversations"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| c["recipient"]["external_id"].as_str() == Some(user))
        }) {
            return c["id"].as_str().unwrap_or_default().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no conversation of user {user} was queued within 10 s");
}

async fn agent(cluster: &Cluster, id: &str) -> Value {
    let (status, body) = cluster.get(&format!("/v1/agents/{id}")).await;
    assert_eq!(status, 200, "agent {id}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_of_a_killed_gateway_stops_being_assigned_after_its_presence_ttl() {
    let extra = format!("[router]\npresence_ttl_secs = {TTL_SECS}\n");
    let Some(mut cluster) = Cluster::start_with("presence", 1, None, &extra).await else {
        return;
    };

    // A live agent on the first gateway takes the first customer.
    let (mut ws, _) = hello(&cluster, "ann").await;
    cluster
        .post_until_accepted("shop", &api_message("p-1", "u1", "first", &[]))
        .await;
    let assigned = ws.recv_type("assigned").await;
    assert_eq!(
        assigned["conversation"]["recipient"]["external_id"], "u1",
        "the live agent should get the first customer: {assigned}"
    );

    // The gateway dies without closing the socket: nobody sets the agent offline, and its
    // heartbeats stop.
    cluster.replace_gateway().await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(TTL_SECS * 1000 + 800)).await;

    // The next customer waits in the queue instead of going to an agent nobody watches.
    cluster
        .post_until_accepted("shop", &api_message("p-2", "u2", "second", &[]))
        .await;
    let waiting = queued_conversation_of(&cluster, "u2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, conversation) = cluster.get(&format!("/v1/conversations/{waiting}")).await;
    assert_eq!(
        conversation["status"], "queued",
        "a conversation went to an agent whose gateway died: {conversation}"
    );
    let ann = agent(&cluster, "ann").await;
    assert_eq!(ann["status"], "offline", "lapsed agent: {ann}");
    assert_eq!(
        ann["conversations"].as_array().map(Vec::len),
        Some(1),
        "the lapsed agent keeps the conversation it held: {ann}"
    );

    // Back on the new gateway, the agent gets the waiting customer: in an `assigned` frame
    // (which may come before the `welcome`), and in the store.
    let (mut ws, frames) = hello(&cluster, "ann").await;
    let told = |f: &Value| f["type"] == "assigned" && f["conversation"]["id"] == waiting.as_str();
    if !frames.iter().any(told) {
        let assigned = ws.recv_type("assigned").await;
        assert!(told(&assigned), "unexpected assignment: {assigned}");
    }
    let (_, conversation) = cluster.get(&format!("/v1/conversations/{waiting}")).await;
    assert_eq!(conversation["status"], "assigned", "{conversation}");
    assert_eq!(conversation["agent_id"], "ann", "{conversation}");
    ws.close().await;
    cluster.teardown().await;
}
