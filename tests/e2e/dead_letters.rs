//! The dead letters over REST: a reply the channel refused is listed with its queue and reason,
//! replayed into its queue once the channel takes it again, and discarded; only administrators
//! may see or touch them.

use serde_json::{Value, json};

use crate::support::{Callback, SECRET, Server, api_message, eventually};

const ADMIN: &str = "k-admin-0123456789abcdef";
const AGENT: &str = "k-agent-0123456789abcdef";
const OUTBOUND_API: &str = "switchyard.outbound.api";

/// Agent `a1` replies `text` in `conversation`; the reply's id.
async fn reply(server: &Server, conversation: &str, text: &str) -> String {
    let (status, body) = server
        .call_as(
            "POST",
            &format!("/v1/conversations/{conversation}/messages"),
            AGENT,
            Some(json!({"agent_id": "a1", "content": {"type": "text", "text": text}})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// The dead letters, once there are `n`.
async fn listed(server: &Server, n: usize) -> Value {
    eventually(|| async {
        let (status, body) = server.call_as("GET", "/v1/dead-letters", ADMIN, None).await;
        assert_eq!(status, 200, "{body}");
        (body["dead_letters"].as_array()?.len() == n).then_some(body)
    })
    .await
}

/// Waits until the sampled gauge of the dead letters says `n` (it is sampled every 5 s).
async fn waiting(server: &Server, n: f64) {
    eventually(|| async {
        (server.metric("switchyard_dead_letters_waiting").await == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reply_is_listed_replayed_once_the_channel_takes_it_and_discarded() {
    let callback = Callback::start().await;
    let server = Server::start(&format!(
        "[[auth.api_keys]]\nname = \"ops\"\nkey = \"{ADMIN}\"\nscopes = [\"admin\"]\n\
         [[auth.api_keys]]\nname = \"desk\"\nkey = \"{AGENT}\"\nscopes = [\"agent\"]\n\
         [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\ncallback_url = \"{}\"\n",
        callback.url
    ))
    .await;
    let (status, _) = server
        .call_as(
            "PUT",
            "/v1/agents/a1",
            AGENT,
            Some(json!({"pools": ["default"], "capacity": 2, "status": "online"})),
        )
        .await;
    assert_eq!(status, 200);
    let sent = server
        .post_signed("shop", &api_message("m-1", "u1", "hello", &[]))
        .await;
    assert_eq!(sent.status(), 202);
    let conversation = eventually(|| async {
        let (_, held) = server
            .call_as("GET", "/v1/agents/a1/conversations", AGENT, None)
            .await;
        held["conversations"][0]["id"].as_str().map(str::to_owned)
    })
    .await;

    // The app's backend refuses the reply for good: it becomes a dead letter.
    callback.answer(400);
    let refused = reply(&server, &conversation, "first try").await;
    let listing = listed(&server, 1).await;
    let letter = &listing["dead_letters"][0];
    assert_eq!(letter["message_id"], refused.as_str(), "{listing}");
    assert_eq!(letter["queue"], OUTBOUND_API);
    assert_eq!(letter["routing_key"], "api");
    assert!(
        letter["reason"].as_str().unwrap().contains("http_400"),
        "{letter}"
    );
    assert_eq!(
        letter["body"]["id"],
        refused.as_str(),
        "the envelope as JSON"
    );
    assert_eq!(letter["body"]["direction"], "outbound");
    assert_eq!(letter["body"]["content"]["text"], "first try");
    assert_eq!(listing["more"], false);
    waiting(&server, 1.0).await;

    // Filters, and what an agent may not do.
    for (path, n) in [
        (format!("/v1/dead-letters?queue={OUTBOUND_API}"), 1),
        ("/v1/dead-letters?queue=switchyard.inbound.0".to_owned(), 0),
        ("/v1/dead-letters?reason_contains=http_400".to_owned(), 1),
        ("/v1/dead-letters?reason_contains=http_500".to_owned(), 0),
        (format!("/v1/dead-letters?message_id={refused}"), 1),
        ("/v1/dead-letters?message_id=other".to_owned(), 0),
    ] {
        let (status, body) = server.call_as("GET", &path, ADMIN, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(
            body["dead_letters"].as_array().unwrap().len(),
            n,
            "{path}: {body}"
        );
    }
    let (status, body) = server
        .call_as("GET", "/v1/dead-letters?sort=new", ADMIN, None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_query"))
    );
    for (method, path) in [
        ("GET", "/v1/dead-letters"),
        ("POST", "/v1/dead-letters/replay"),
        ("POST", "/v1/dead-letters/discard"),
    ] {
        let (status, body) = server
            .call_as(method, path, AGENT, Some(json!({"all": true})))
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
    }
    let (status, body) = server
        .call_as("POST", "/v1/dead-letters/replay", ADMIN, Some(json!({})))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("nothing_chosen")),
        "a replay must choose: {body}"
    );
    let (status, body) = server
        .call_as(
            "POST",
            "/v1/dead-letters/replay",
            ADMIN,
            Some(json!({"all": true, "limit": 0})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        callback.received.lock().unwrap().len(),
        1,
        "nothing replayed yet"
    );

    // Fixed: the replay sends the same reply to the backend, and the dead letter is gone.
    callback.answer(200);
    let (status, replayed) = server
        .call_as(
            "POST",
            "/v1/dead-letters/replay",
            ADMIN,
            Some(json!({"message_ids": [refused]})),
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(
        replayed,
        json!({"message_ids": [refused], "skipped": [], "more": false})
    );
    let received = callback.wait_for(2).await;
    let delivered: Value = serde_json::from_slice(&received[1].body).unwrap();
    assert_eq!(
        delivered["id"],
        refused.as_str(),
        "the same reply, sent again"
    );
    assert_eq!(delivered["content"]["text"], "first try");
    listed(&server, 0).await;
    waiting(&server, 0.0).await;
    assert_eq!(
        server
            .metric(&format!(
                "switchyard_dead_letters_handled_total{{action=\"replayed\",queue=\"{OUTBOUND_API}\"}}"
            ))
            .await,
        1.0
    );

    // Two more refused; discarding one by id leaves the other, then `all` takes the rest.
    callback.answer(400);
    let second = reply(&server, &conversation, "second").await;
    let third = reply(&server, &conversation, "third").await;
    listed(&server, 2).await;
    let (status, discarded) = server
        .call_as(
            "POST",
            "/v1/dead-letters/discard",
            ADMIN,
            Some(json!({"message_ids": [second]})),
        )
        .await;
    assert_eq!(status, 200, "{discarded}");
    assert_eq!(discarded["message_ids"], json!([second]));
    let left = listed(&server, 1).await;
    assert_eq!(left["dead_letters"][0]["message_id"], third.as_str());
    let (status, discarded) = server
        .call_as(
            "POST",
            "/v1/dead-letters/discard",
            ADMIN,
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(status, 200, "{discarded}");
    assert_eq!(discarded["message_ids"], json!([third]));
    listed(&server, 0).await;
    assert_eq!(
        callback.received.lock().unwrap().len(),
        4,
        "discarded replies are not sent"
    );
    server.stop().await;
}
