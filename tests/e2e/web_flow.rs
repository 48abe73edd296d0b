//! Web visitor over the visitor WebSocket -> agent -> reply back to the visitor.

use serde_json::json;
use switchyard_connectors::signature::hmac_sha256_hex;

use crate::support::{Callback, Server, WEB_SECRET, Ws, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_visitor_chats_with_an_agent_and_resumes_with_the_token() {
    let callback = Callback::start().await;
    let server = Server::with_channels(&callback.url).await;
    let mut agent = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    agent
        .send(json!({"type": "hello", "agent_id": "w1", "capacity": 3}))
        .await;
    agent.recv_type("welcome").await;

    let mut visitor = Ws::connect(&format!("ws://{}/v1/channels/web/ws", server.addr)).await;
    let welcome = visitor.recv_type("welcome").await;
    let visitor_id = welcome["visitor_id"].as_str().unwrap().to_owned();
    let token = welcome["visitor_token"].as_str().unwrap().to_owned();
    assert_eq!(welcome["channel_id"], "web");

    visitor
        .send(json!({"type": "message", "client_id": "c-1",
                     "content": {"type": "text", "text": "Is anyone there? 🙂"}}))
        .await;
    let ack = visitor.recv_type("ack").await;
    assert_eq!(ack["client_id"], "c-1");
    assert_eq!(ack["duplicate"], false);

    let assigned = agent.recv_type("assigned").await;
    let conversation_id = assigned["conversation"]["id"].as_str().unwrap().to_owned();
    assert_eq!(assigned["conversation"]["channel"]["kind"], "web");
    assert_eq!(
        assigned["conversation"]["customer"]["identities"][0]["key"],
        format!("web_visitor:web:{visitor_id}")
    );
    assert_eq!(
        assigned["conversation"]["customer"]["identities"][0]["strength"],
        "weak"
    );

    // The same client_id again is acknowledged as a duplicate and not routed twice.
    visitor
        .send(json!({"type": "message", "client_id": "c-1",
                     "content": {"type": "text", "text": "Is anyone there? 🙂"}}))
        .await;
    let dup = visitor.recv_type("ack").await;
    assert_eq!(dup["duplicate"], true);
    assert_eq!(dup["id"], ack["id"]);

    agent
        .send(
            json!({"type": "reply", "client_id": "r1", "conversation_id": conversation_id,
                     "content": {"type": "text", "text": "Hello! How can I help?"}}),
        )
        .await;
    agent.recv_type("ack").await;
    let reply = visitor.recv_type("message").await;
    assert_eq!(reply["content"]["text"], "Hello! How can I help?");
    assert_eq!(reply["agent_id"], "w1");

    // Reading on answers the ping behind the reply, which confirms it (the server answers this
    // `ping` after it): it will not be written again.
    visitor.send(json!({"type": "ping"})).await;
    visitor.recv_type("pong").await;
    // The visitor leaves; a reply sent meanwhile waits and arrives when they come back with
    // their token, as the same visitor.
    visitor.close().await;
    agent
        .send(
            json!({"type": "reply", "client_id": "r2", "conversation_id": conversation_id,
                     "content": {"type": "text", "text": "Still there?"}}),
        )
        .await;
    agent.recv_type("ack").await;
    eventually(|| async {
        let (_, m) = server
            .get_json(&format!("/v1/conversations/{conversation_id}"))
            .await;
        (m["messages"].as_array()?.len() == 3).then_some(())
    })
    .await;
    // Give the outbound worker a moment to hand the reply to the (now empty) session list.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut back = Ws::connect(&format!(
        "ws://{}/v1/channels/web/ws?visitor_token={token}",
        server.addr
    ))
    .await;
    let again = back.recv_type("welcome").await;
    assert_eq!(again["visitor_id"], visitor_id.as_str());
    let waiting = back.recv_type("message").await;
    assert_eq!(waiting["content"]["text"], "Still there?");

    // A forged token does not resume someone else's session.
    let mut forged = Ws::connect(&format!(
        "ws://{}/v1/channels/web/ws?visitor_token={visitor_id}.{}",
        server.addr,
        "0".repeat(32)
    ))
    .await;
    let other = forged.recv_type("welcome").await;
    assert_ne!(other["visitor_id"], visitor_id.as_str());

    // Malformed frames get an error and the socket keeps working.
    back.send_raw("{not json").await;
    let err = back.recv_type("error").await;
    assert_eq!(err["code"], "malformed");
    back.send(json!({"type": "ping"})).await;
    back.recv_type("pong").await;
    server.stop().await;
}

/// A reply counts as delivered only once the visitor's side answered the ping written after it.
/// A socket that took the reply and went away before answering (a tab closing as the reply is
/// written) gets it again at the visitor's next connection; one that answered does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_the_visitor_never_confirmed_is_written_again_at_the_next_connection() {
    let callback = Callback::start().await;
    let server = Server::with_channels(&callback.url).await;
    let mut agent = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    agent
        .send(json!({"type": "hello", "agent_id": "w2", "capacity": 3}))
        .await;
    agent.recv_type("welcome").await;
    let ws_url = format!("ws://{}/v1/channels/web/ws", server.addr);
    let mut visitor = Ws::connect(&ws_url).await;
    let token = visitor.recv_type("welcome").await["visitor_token"]
        .as_str()
        .unwrap()
        .to_owned();
    visitor
        .send(json!({"type": "message", "client_id": "c-1",
                     "content": {"type": "text", "text": "hello"}}))
        .await;
    visitor.recv_type("ack").await;
    let conversation_id = agent.recv_type("assigned").await["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    agent
        .send(
            json!({"type": "reply", "client_id": "r1", "conversation_id": conversation_id,
                     "content": {"type": "text", "text": "the first answer"}}),
        )
        .await;
    agent.recv_type("ack").await;
    // The reply's bytes arrive; the socket dies before it reads the ping behind them.
    let reply = visitor.recv_type("message").await;
    assert_eq!(reply["content"]["text"], "the first answer");
    drop(visitor);

    let resumed = format!("{ws_url}?visitor_token={token}");
    let mut back = Ws::connect(&resumed).await;
    back.recv_type("welcome").await;
    let again = back.recv_type("message").await;
    assert_eq!(again["id"], reply["id"], "written again: never confirmed");
    // Reading on answers the ping; the server acknowledges before it answers this `ping`.
    back.send(json!({"type": "ping"})).await;
    back.recv_type("pong").await;
    back.close().await;

    let mut third = Ws::connect(&resumed).await;
    third.recv_type("welcome").await;
    third.send(json!({"type": "ping"})).await;
    let next = third.recv().await;
    assert_eq!(
        next["type"], "pong",
        "confirmed, so not written again: {next}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_links_the_visitor_to_the_app_user_and_merges_profiles() {
    let callback = Callback::start().await;
    let server = Server::with_channels(&callback.url).await;

    // The same person first wrote from the app, which vouches for the id `web_user:web:42`.
    let body = crate::support::api_message("m-1", "42", "from the app", &["web_user:web:42"]);
    assert_eq!(server.post_signed("shop", &body).await.status(), 202);
    let app_customer = eventually(|| async {
        let (s, c) = server
            .get_json("/v1/customers?identity=app_user:shop:42")
            .await;
        (s == 200).then_some(c)
    })
    .await;

    let mut visitor = Ws::connect(&format!("ws://{}/v1/channels/web/ws", server.addr)).await;
    let welcome = visitor.recv_type("welcome").await;
    let visitor_key = format!(
        "web_visitor:web:{}",
        welcome["visitor_id"].as_str().unwrap()
    );
    visitor
        .send(json!({"type": "message", "client_id": "c-1", "content": {"type": "text", "text": "hi"}}))
        .await;
    visitor.recv_type("ack").await;
    let visitor_customer = eventually(|| async {
        let (s, c) = server
            .get_json(&format!("/v1/customers?identity={visitor_key}"))
            .await;
        (s == 200).then_some(c)
    })
    .await;
    assert_ne!(
        visitor_customer["id"], app_customer["id"],
        "weak keys never merge on their own"
    );

    // A wrong hash is refused.
    visitor
        .send(json!({"type": "identify", "client_id": "i-0", "user_id": "42", "user_hash": "00"}))
        .await;
    let err = visitor.recv_type("error").await;
    assert_eq!(err["code"], "bad_signature");

    let hash = hmac_sha256_hex(WEB_SECRET.as_bytes(), &[b"42"]);
    visitor
        .send(json!({"type": "identify", "client_id": "i-1", "user_id": "42", "user_hash": hash}))
        .await;
    visitor.recv_type("ack").await;
    let merged = eventually(|| async {
        let (_, c) = server
            .get_json(&format!("/v1/customers?identity={visitor_key}"))
            .await;
        (c["id"] == app_customer["id"]).then_some(c)
    })
    .await;
    let merged_from: Vec<&str> = merged["merged_from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(merged_from, [visitor_customer["id"].as_str().unwrap()]);
    // The old id still answers, with the surviving profile.
    let (status, old) = server
        .get_json(&format!(
            "/v1/customers/{}",
            visitor_customer["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(old["id"], app_customer["id"]);
    server.stop().await;
}
