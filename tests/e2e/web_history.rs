//! A returning visitor sees their conversation again: the visitor WebSocket's `welcome` carries
//! the history of the visitor's open conversation (their messages and the replies, oldest first,
//! with the ids of the `ack` and `message` frames), only their own, and none once it is closed.

use serde_json::{Value, json};

use crate::support::{Callback, Server, Ws};

/// The `history` of a welcome as `(id, direction, text)`; an absent history is empty.
fn history_of(welcome: &Value) -> Vec<(String, String, String)> {
    assert_eq!(welcome["type"], "welcome", "not a welcome: {welcome}");
    match &welcome["history"] {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_owned(),
                    m["direction"].as_str().unwrap().to_owned(),
                    m["content"]["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect(),
        other => panic!("history is not a list: {other}"),
    }
}

/// `(id, direction, text)` of one expected history item.
fn item(id: &Value, direction: &str, text: &str) -> (String, String, String) {
    (
        id.as_str().unwrap().to_owned(),
        direction.to_owned(),
        text.to_owned(),
    )
}

/// A new visitor on channel `web`: its socket and token, after checking its history is empty.
async fn new_visitor(server: &Server) -> (Ws, String) {
    let mut ws = Ws::connect(&format!("ws://{}/v1/channels/web/ws", server.addr)).await;
    let welcome = ws.recv_type("welcome").await;
    assert_eq!(history_of(&welcome), [], "a new visitor has no history");
    let token = welcome["visitor_token"].as_str().unwrap().to_owned();
    (ws, token)
}

/// The visitor with `token` comes back: its socket and welcome.
async fn come_back(server: &Server, token: &str) -> (Ws, Value) {
    let mut ws = Ws::connect(&format!(
        "ws://{}/v1/channels/web/ws?visitor_token={token}",
        server.addr
    ))
    .await;
    let welcome = ws.recv_type("welcome").await;
    (ws, welcome)
}

/// Sends text `text` as `client_id`; returns the ack's envelope id.
async fn say(ws: &mut Ws, client_id: &str, text: &str) -> Value {
    ws.send(json!({"type": "message", "client_id": client_id,
                   "content": {"type": "text", "text": text}}))
        .await;
    let ack = ws.recv_type("ack").await;
    assert_eq!(ack["client_id"], client_id);
    ack["id"].clone()
}

/// The agent replies `text` in `conversation`; returns the reply's envelope id.
async fn reply(agent: &mut Ws, conversation: &str, client_id: &str, text: &str) -> Value {
    agent
        .send(
            json!({"type": "reply", "client_id": client_id, "conversation_id": conversation,
                     "content": {"type": "text", "text": text}}),
        )
        .await;
    let ack = agent.recv_type("ack").await;
    assert_eq!(ack["client_id"], client_id);
    ack["id"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_visitor_gets_the_history_of_their_open_conversation_and_only_theirs() {
    let callback = Callback::start().await;
    let server = Server::with_channels(&callback.url).await;
    let mut agent = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    agent
        .send(json!({"type": "hello", "agent_id": "hist-1", "capacity": 3}))
        .await;
    agent.recv_type("welcome").await;

    // The visitor writes, the agent answers (the visitor reads the reply and confirms it).
    let (mut visitor, token) = new_visitor(&server).await;
    let question = say(&mut visitor, "c-1", "Where is my parcel? 📦").await;
    let assigned = agent.recv_type("assigned").await;
    let conversation = assigned["conversation"]["id"].as_str().unwrap().to_owned();
    let answer = reply(&mut agent, &conversation, "r-1", "On its way — 明天到").await;
    let live = visitor.recv_type("message").await;
    assert_eq!(live["id"], answer);
    visitor.send(json!({"type": "ping"})).await;
    visitor.recv_type("pong").await;
    visitor.close().await;

    // Back with the token: both messages, oldest first, with the ids of the ack and the frame.
    let (mut back, welcome) = come_back(&server, &token).await;
    assert_eq!(
        history_of(&welcome),
        [
            item(&question, "inbound", "Where is my parcel? 📦"),
            item(&answer, "outbound", "On its way — 明天到"),
        ]
    );
    let history = welcome["history"].as_array().unwrap();
    assert_eq!(history[1]["agent_id"], "hist-1");
    assert_eq!(history[1]["sent_at"], live["sent_at"]);
    assert!(history[0].get("agent_id").is_none(), "{}", history[0]);
    assert!(history[0]["sent_at"].is_string());
    // The reply was confirmed: it is not written again as a `message` frame.
    back.send(json!({"type": "ping"})).await;
    let next = back.recv().await;
    assert_eq!(next["type"], "pong", "nothing but the history: {next}");

    // Another visitor on the same channel, with a conversation of their own, sees only theirs.
    let (mut other, other_token) = new_visitor(&server).await;
    let theirs = say(&mut other, "c-1", "I am someone else").await;
    assert_ne!(theirs, question);
    agent.recv_type("assigned").await;
    other.close().await;
    let (other_back, other_welcome) = come_back(&server, &other_token).await;
    assert_eq!(
        history_of(&other_welcome),
        [item(&theirs, "inbound", "I am someone else")]
    );
    other_back.close().await;

    // A reply sent while the visitor is away is in the history and is also written as a
    // `message` frame (clients that ignore the history still get it): the page shows the id once.
    back.close().await;
    let away = reply(&mut agent, &conversation, "r-2", "Anything else?").await;
    let (mut again, welcome) = come_back(&server, &token).await;
    let history = history_of(&welcome);
    assert_eq!(history.len(), 3, "{welcome}");
    assert_eq!(history[2], item(&away, "outbound", "Anything else?"));
    assert_eq!(again.recv_type("message").await["id"], away);
    again.close().await;

    // Once the conversation is closed, a new connection starts with an empty history.
    agent
        .send(json!({"type": "close", "conversation_id": conversation}))
        .await;
    let unassigned = agent.recv_type("unassigned").await;
    assert_eq!(unassigned["conversation_id"], conversation.as_str());
    let (closed, welcome) = come_back(&server, &token).await;
    assert_eq!(
        history_of(&welcome),
        [],
        "history is of the open conversation"
    );
    closed.close().await;
    server.stop().await;
}
