//! Business hours (`[pools.hours]`) through the real server: a customer whose message opens a
//! conversation in a pool that is closed gets the pool's automatic reply, signed, at the `api`
//! channel's callback, once; a pool open around the clock sends nothing. The two schedules are
//! closed all week and open all week, so the test does not depend on the current time.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Callback, SECRET, Server, api_message};

const REPLY: &str = "We are closed now; we answer from 9:00 to 18:00 (Beijing time).";

fn config(callback: &str) -> String {
    let all_day: String = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .map(|day| format!("{day} = \"00:00-24:00\"\n"))
        .collect();
    format!(
        r#"
[[pools]]
id = "closed"
[pools.hours]
timezone = "Asia/Shanghai"
outside_hours_reply = "{REPLY}"

[[pools]]
id = "open"
[pools.hours]
timezone = "Europe/Berlin"
{all_day}outside_hours_reply = "never sent"

[[channels]]
id = "night"
kind = "api"
pool = "closed"
secret = "{SECRET}"
callback_url = "{callback}"

[[channels]]
id = "day"
kind = "api"
pool = "open"
secret = "{SECRET}"
callback_url = "{callback}"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pool_replies_automatically_once_and_an_open_one_does_not() {
    let callback = Callback::start().await;
    let server = Server::start(&config(&callback.url)).await;

    let response = server
        .post_signed("day", &api_message("d-1", "7", "hello", &[]))
        .await;
    assert_eq!(response.status(), 202);
    let response = server
        .post_signed("night", &api_message("n-1", "8", "hello?", &[]))
        .await;
    assert_eq!(response.status(), 202);
    let response = server
        .post_signed("night", &api_message("n-2", "8", "anyone there?", &[]))
        .await;
    assert_eq!(response.status(), 202);

    let got = callback.wait_for(1).await;
    let request = &got[0];
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    switchyard_connectors::signature::verify_switchyard_signature(
        SECRET.as_bytes(),
        header("x-switchyard-timestamp").as_deref(),
        header("x-switchyard-signature").as_deref(),
        &request.body,
        chrono::Utc::now(),
    )
    .expect("the automatic reply is signed");
    let reply: Value = serde_json::from_slice(&request.body).expect("an envelope");
    assert_eq!(reply["direction"], "outbound");
    assert_eq!(reply["channel"]["id"], "night");
    assert_eq!(
        reply["content"],
        serde_json::json!({"type": "text", "text": REPLY})
    );
    assert!(
        reply.get("agent_id").is_none_or(Value::is_null),
        "an automatic reply has no agent: {reply}"
    );

    // The conversation holds it, after the customer's opening message.
    let conversation = reply["conversation_id"]
        .as_str()
        .expect("a conversation id");
    let (status, view) = server
        .get_json(&format!("/v1/conversations/{conversation}"))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["pool"], "closed");
    let texts: Vec<&str> = view["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["content"]["text"].as_str())
        .collect();
    assert_eq!(texts[..2], ["hello?", REPLY], "{view}");

    // Nothing more: not for the second message, not for the open pool.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(callback.received.lock().unwrap().len(), 1);
    assert_eq!(
        server
            .metric("switchyard_auto_replies_total{outcome=\"sent\",pool=\"closed\"}")
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("switchyard_auto_replies_total{outcome=\"sent\",pool=\"open\"}")
            .await,
        0.0
    );

    // Each pool's hours, and whether it is open now.
    let (status, closed) = server.get_json("/v1/pools/closed/hours").await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["open_now"], false);
    assert_eq!(closed["hours"]["timezone"], "Asia/Shanghai");
    assert_eq!(closed["hours"]["days"]["mon"], serde_json::json!([]));
    assert_eq!(closed["hours"]["outside_hours_reply"], REPLY);
    let (status, open) = server.get_json("/v1/pools/open/hours").await;
    assert_eq!(status, 200, "{open}");
    assert_eq!(open["open_now"], true);
    assert_eq!(
        open["hours"]["days"]["sun"],
        serde_json::json!(["00:00-24:00"])
    );
    let (status, default) = server.get_json("/v1/pools/default/hours").await;
    assert_eq!(status, 200, "{default}");
    assert_eq!(default["open_now"], true);
    assert!(default["hours"].is_null(), "{default}");
    let (status, _) = server.get_json("/v1/pools/nowhere/hours").await;
    assert_eq!(status, 404);
    // And as a gauge, for pools with hours only.
    assert_eq!(
        server.metric("switchyard_pool_open{pool=\"closed\"}").await,
        0.0
    );
    assert_eq!(
        server.metric("switchyard_pool_open{pool=\"open\"}").await,
        1.0
    );
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("switchyard_pool_open{pool=\"default\"}"));
    server.stop().await;
}
