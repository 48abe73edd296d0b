//! A web visitor waiting for an agent is told their place in the queue (`queue` frames), on the
//! embedded bus and store and on RabbitMQ + Redis.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{OnRealServices, Server, WEB_SECRET, Ws};

/// A web channel whose queue positions are refreshed every second, and the default pool.
fn config(queue_position_secs: u64) -> String {
    format!(
        "[[channels]]\nid = \"web\"\nkind = \"web\"\nsecret = \"{WEB_SECRET}\"\n\
         queue_position_secs = {queue_position_secs}\n"
    )
}

const FRAMES: &str = "switchyard_visitor_queue_frames_total";

/// A new visitor who wrote once: their socket and token.
async fn visitor_who_wrote(server: &Server, text: &str) -> (Ws, String) {
    let mut ws = Ws::connect(&format!("ws://{}/v1/channels/web/ws", server.addr)).await;
    let welcome = ws.recv_type("welcome").await;
    let token = welcome["visitor_token"].as_str().unwrap().to_owned();
    ws.send(json!({"type": "message", "client_id": "c-1",
                   "content": {"type": "text", "text": text}}))
        .await;
    assert_eq!(ws.recv_type("ack").await["duplicate"], false);
    (ws, token)
}

/// The next frame, which must be a `queue` frame (nothing else is expected meanwhile).
async fn next_queue_frame(ws: &mut Ws) -> Value {
    let frame = ws.recv().await;
    assert_eq!(
        frame["type"], "queue",
        "expected a queue frame, got {frame}"
    );
    frame
}

/// The next frame after a `ping` is its `pong`: no frame came meanwhile.
async fn nothing_more(ws: &mut Ws) {
    ws.send(json!({"type": "ping"})).await;
    let next = ws.recv().await;
    assert_eq!(next["type"], "pong", "unexpected frame {next}");
}

/// Two visitors wait with no agent online and are told their places; a visitor who comes back
/// is told theirs again; an agent with room for one takes the first, who is told they no longer
/// wait while the second moves up; closing that conversation lets the agent take the second.
async fn visitors_learn_their_place(server: &Server) {
    let (mut first, _) = visitor_who_wrote(server, "Is anyone there?").await;
    assert_eq!(
        next_queue_frame(&mut first).await,
        json!({"type": "queue", "position": 1})
    );
    let (mut second, token) = visitor_who_wrote(server, "Me too").await;
    assert_eq!(
        next_queue_frame(&mut second).await,
        json!({"type": "queue", "position": 2})
    );

    // Places are told when they change, not at every look (one a second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    nothing_more(&mut first).await;
    nothing_more(&mut second).await;

    // The second visitor reloads the page: the new socket is told the place at once.
    second.close().await;
    let mut second = Ws::connect(&format!(
        "ws://{}/v1/channels/web/ws?visitor_token={token}",
        server.addr
    ))
    .await;
    assert_eq!(second.recv().await["type"], "welcome");
    assert_eq!(next_queue_frame(&mut second).await["position"], 2);

    // An agent comes online with room for one: the first visitor's conversation is assigned.
    server.agent_online("w1", 1).await;
    assert_eq!(
        next_queue_frame(&mut first).await,
        json!({"type": "queue", "position": null})
    );
    assert_eq!(
        next_queue_frame(&mut second).await,
        json!({"type": "queue", "position": 1})
    );

    // The agent closes it and takes the second.
    let held = server.held_by("w1", 1).await;
    let conversation = held[0]["id"].as_str().unwrap();
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{conversation}/close"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_queue_frame(&mut second).await["position"], Value::Null);
    // Nothing more to the first visitor: they were told once that they no longer wait.
    nothing_more(&mut first).await;
    // 1 and null to the first; 2, 2 (the reload), 1 and null to the second.
    assert_eq!(server.metric(FRAMES).await, 6.0);
    first.close().await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_visitors_are_told_their_place_in_the_queue() {
    let server = Server::start(&config(1)).await;
    visitors_learn_their_place(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_waiting_visitors_are_told_their_place_in_the_queue() {
    let Some(real) = OnRealServices::start("web-queue", &config(1)).await else {
        return;
    };
    visitors_learn_their_place(&real.server).await;
    real.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_queue_frames_when_the_channel_turns_them_off() {
    let server = Server::start(&config(0)).await;
    let (mut visitor, _) = visitor_who_wrote(&server, "Hello?").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nothing_more(&mut visitor).await;
    assert_eq!(server.metric(FRAMES).await, 0.0);
    visitor.close().await;
    server.stop().await;
}
