//! Bad input gets the DESIGN.md status, a JSON error body and a metric, and never costs a
//! valid message: the server keeps serving.

use serde_json::{Value, json};

use crate::support::{Callback, SECRET, Server, api_message};

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_metrics_and_valid_ones_still_pass() {
    let callback = Callback::start().await;
    let server = Server::with_channels(&callback.url).await;
    let now = chrono::Utc::now().timestamp();
    let series = |outcome: &str| {
        format!("switchyard_inbound_messages_total{{channel=\"shop\",outcome=\"{outcome}\"}}")
    };

    // Malformed JSON under a valid signature.
    let r = server.post_signed("shop", b"{\"message_id\": ").await;
    assert_eq!(error_code(r).await, (400, "malformed".into()));

    // Unknown content type.
    let body = serde_json::to_vec(&json!({"message_id": "x", "user": {"id": "1"},
        "content": {"type": "hologram", "url": "x"}}))
    .unwrap();
    let r = server.post_signed("shop", &body).await;
    assert_eq!(error_code(r).await, (400, "malformed".into()));

    // Invalid identity key inside valid JSON.
    let body = api_message("y", "1", "hi", &["NOT A KEY"]);
    let r = server.post_signed("shop", &body).await;
    assert_eq!(error_code(r).await, (400, "malformed".into()));

    // Wrong content type.
    let body = api_message("z", "1", "hi", &[]);
    let ts = now.to_string();
    let sig = switchyard_connectors::signature::switchyard_signature(SECRET.as_bytes(), now, &body);
    let r = server
        .http
        .post(server.url("/v1/channels/shop/messages"))
        .header("content-type", "text/plain")
        .header("x-switchyard-timestamp", &ts)
        .header("x-switchyard-signature", &sig)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (400, "malformed".into()));

    // Bad signature, stale and future timestamps (well outside the ±300 s window, so a slow
    // machine cannot move them inside it; the exact edges are unit-tested), tampered body.
    let r = server
        .post_signed_at("shop", &body, now, "a-different-secret-entirely")
        .await;
    assert_eq!(error_code(r).await, (401, "bad_signature".into()));
    let r = server
        .post_signed_at("shop", &body, now - 400, SECRET)
        .await;
    assert_eq!(error_code(r).await, (401, "bad_signature".into()));
    let r = server
        .post_signed_at("shop", &body, now + 400, SECRET)
        .await;
    assert_eq!(error_code(r).await, (401, "bad_signature".into()));
    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    let r = server
        .http
        .post(server.url("/v1/channels/shop/messages"))
        .header("content-type", "application/json")
        .header("x-switchyard-timestamp", &ts)
        .header("x-switchyard-signature", &sig)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (401, "bad_signature".into()));

    // A 2 MB body. The server answers 413 without reading the rest of the body and closes the
    // connection, so it is sent on a connection of its own: a pooled one could be handed to the
    // next request while the server is closing it.
    let big = vec![b'a'; 2 * 1024 * 1024];
    let ts = chrono::Utc::now().timestamp();
    let r = reqwest::Client::new()
        .post(server.url("/v1/channels/shop/messages"))
        .header("content-type", "application/json")
        .header("x-switchyard-timestamp", ts.to_string())
        .header(
            "x-switchyard-signature",
            switchyard_connectors::signature::switchyard_signature(SECRET.as_bytes(), ts, &big),
        )
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (413, "too_large".into()));

    // Unknown channel.
    let r = server.post_signed("nope", &body).await;
    assert_eq!(error_code(r).await, (404, "not_found".into()));

    assert_eq!(server.metric(&series("malformed")).await, 4.0);
    assert_eq!(server.metric(&series("bad_signature")).await, 4.0);
    assert_eq!(server.metric(&series("too_large")).await, 1.0);
    assert!(
        server
            .metric("switchyard_api_errors_total{code=\"bad_signature\"}")
            .await
            >= 4.0
    );

    // And a valid message still goes through.
    let r = server.post_signed("shop", &body).await;
    assert_eq!(r.status(), 202);
    assert_eq!(server.metric(&series("accepted")).await, 1.0);

    // REST bad input.
    let r = server
        .http
        .put(server.url("/v1/agents/a1"))
        .header("content-type", "application/json")
        .body("{\"capacity\": \"lots\"}")
        .send()
        .await
        .unwrap();
    let (status, code) = error_code(r).await;
    assert_eq!((status, code.as_str()), (400, "malformed"));
    let r = server
        .http
        .put(server.url("/v1/agents/a1"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, (415, "unsupported_media_type".into()));
    let (status, body) = server.get_json("/v1/conversations/does-not-exist").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = server.get_json("/healthz").await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_rest_but_not_channel_endpoints() {
    let callback = Callback::start().await;
    let server = Server::start(&format!(
        "[[auth.api_keys]]\nname = \"ops\"\nkey = \"k-admin-0123456789\"\nscopes = [\"admin\"]\n\
         [[auth.api_keys]]\nname = \"dash\"\nkey = \"k-read-0123456789\"\nscopes = [\"read\"]\n\
         [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\ncallback_url = \"{}\"\n",
        callback.url
    ))
    .await;
    let (status, body) = server.get_json("/v1/agents").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let put = |key: &'static str| {
        server
            .http
            .put(server.url("/v1/agents/a1"))
            .bearer_auth(key)
            .json(&json!({"status": "online"}))
            .send()
    };
    assert_eq!(put("k-read-0123456789").await.unwrap().status(), 403);
    assert_eq!(put("wrong").await.unwrap().status(), 401);
    assert_eq!(put("k-admin-0123456789").await.unwrap().status(), 200);
    let r = server
        .http
        .get(server.url("/v1/agents"))
        .bearer_auth("k-read-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Channel endpoints use the channel's signature, not API keys.
    let r = server
        .post_signed("shop", &api_message("m", "1", "hi", &[]))
        .await;
    assert_eq!(r.status(), 202);
    server.stop().await;
}
