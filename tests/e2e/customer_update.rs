//! Tagging a customer and setting attributes through `PATCH /v1/customers/{id}`, on the real
//! server: the answer and `GET` show the profile after the change, `customer.updated` reaches a
//! webhook, bad bodies answer 422 (400 when unreadable) and are counted, a profile past its
//! limits 409, an unknown customer 404, a read-only key 403; and a `[[routes]]` rule on
//! `customer_tags` sends a tagged customer's next conversation to its pool.

use serde_json::{Value, json};

use crate::support::{Callback, SECRET, Server, api_message, eventually, signed_cloud_event};

const AGENT: &str = "k-agent-0123456789";
const READER: &str = "k-read-0123456789";
const HOOK_SECRET: &str = "crm-webhook-secret-0123456";

/// API keys, a `vip` pool with its rule on the tag `vip`, an `api` channel `shop`, and a
/// webhook posting `customer.updated` to `endpoint`.
fn config(endpoint: &str) -> String {
    format!(
        "[[auth.api_keys]]\nname = \"desk\"\nkey = \"{AGENT}\"\nscopes = [\"agent\"]\n\
         [[auth.api_keys]]\nname = \"viewer\"\nkey = \"{READER}\"\nscopes = [\"read\"]\n\
         [[pools]]\nid = \"vip\"\n\
         [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\n\
         [[routes]]\nid = \"vip-customers\"\npool = \"vip\"\ncustomer_tags = [\"vip\"]\n\
         [[webhooks]]\nid = \"crm\"\nurl = \"{endpoint}\"\nsecret = \"{HOOK_SECRET}\"\n\
         events = [\"customer.updated\"]\n"
    )
}

/// The conversations `agent` holds, once there are `n`.
async fn held_by(server: &Server, agent: &str, n: usize) -> Vec<Value> {
    eventually(|| async {
        let path = format!("/v1/agents/{agent}/conversations");
        let (_, body) = server.call_as("GET", &path, READER, None).await;
        let held = body["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (held.len() == n).then_some(held)
    })
    .await
}

/// Sends user `user`'s message `id`, signed.
async fn send(server: &Server, id: &str, user: &str) {
    let response = server
        .post_signed("shop", &api_message(id, user, "hello", &[]))
        .await;
    assert_eq!(response.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_tags_a_customer_and_the_next_conversation_goes_to_the_vip_pool() {
    let crm = Callback::start().await;
    let server = Server::start(&config(&crm.url)).await;
    for (agent, pool) in [("ann", "default"), ("vic", "vip")] {
        let (status, body) = server
            .call_as(
                "PUT",
                &format!("/v1/agents/{agent}"),
                AGENT,
                Some(json!({"name": agent, "pools": [pool], "capacity": 10, "status": "online"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    send(&server, "m-1", "42").await;
    let first = held_by(&server, "ann", 1).await;
    assert_eq!(first[0]["pool"], "default", "not tagged yet");
    let conversation = first[0]["id"].as_str().unwrap().to_owned();
    let customer = first[0]["customer_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/customers/{customer}");

    // A read-only key may not; an agent key may.
    let tag = json!({"add_tags": ["vip", "gold"], "attributes": {"plan": "gold", "seats": 12}});
    let (status, body) = server
        .call_as("PATCH", &path, READER, Some(tag.clone()))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, tagged) = server.call_as("PATCH", &path, AGENT, Some(tag)).await;
    assert_eq!(status, 200, "{tagged}");
    assert_eq!(tagged["id"], customer.as_str());
    assert_eq!(tagged["tags"], json!(["vip", "gold"]));
    assert_eq!(tagged["attributes"], json!({"plan": "gold", "seats": 12}));
    let untag = json!({"remove_tags": ["gold"], "attributes": {"seats": null}});
    let (status, updated) = server.call_as("PATCH", &path, AGENT, Some(untag)).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(
        (&updated["tags"], &updated["attributes"]),
        (&json!(["vip"]), &json!({"plan": "gold"}))
    );
    let (status, read) = server.call_as("GET", &path, READER, None).await;
    assert_eq!((status, &read), (200, &updated), "GET shows the change");

    // Each update reaches the webhook as `customer.updated`, with the profile.
    let got = crm.wait_for(2).await;
    let events: Vec<Value> = got
        .iter()
        .map(|r| signed_cloud_event(r, HOOK_SECRET))
        .collect();
    for event in &events {
        assert_eq!(event["type"], "io.switchyard.customer.updated");
        assert_eq!(event["subject"], customer.as_str());
    }
    assert_eq!(events[0]["data"]["customer"], tagged);
    assert_eq!(events[1]["data"]["customer"], updated);

    // Bad bodies, an unknown customer, a profile past its limits.
    for (body, status, code) in [
        (json!({}), 422, "invalid_customer_update"),
        (
            json!({"add_tags": ["ok", ""]}),
            422,
            "invalid_customer_update",
        ),
        (
            json!({"attributes": {"bio": "x".repeat(5000)}}),
            422,
            "invalid_customer_update",
        ),
        (
            json!({"add_tags": ["x"], "colour": "red"}),
            400,
            "malformed",
        ),
        (json!({"add_tags": "vip"}), 400, "malformed"),
    ] {
        let (got, answer) = server
            .call_as("PATCH", &path, AGENT, Some(body.clone()))
            .await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    let (status, body) = server
        .call_as(
            "PATCH",
            "/v1/customers/01KAVQ00000000000000000000",
            AGENT,
            Some(json!({"add_tags": ["vip"]})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let fifty = |stem: &str| (0..50).map(|i| format!("{stem}-{i}")).collect::<Vec<_>>();
    let (status, body) = server
        .call_as("PATCH", &path, AGENT, Some(json!({"add_tags": fifty("a")})))
        .await;
    assert_eq!(status, 200, "51 tags: {body}");
    let (status, body) = server
        .call_as("PATCH", &path, AGENT, Some(json!({"add_tags": fifty("b")})))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("too_many_tags")),
        "101 tags: {body}"
    );
    for (code, count) in [
        ("invalid_customer_update", 3.0),
        ("malformed", 2.0),
        ("too_many_tags", 1.0),
        ("forbidden", 1.0),
    ] {
        let series = format!("switchyard_api_errors_total{{code=\"{code}\"}}");
        assert_eq!(server.metric(&series).await, count, "{series}");
    }

    // The open conversation keeps its pool; the next one goes to `vip`. An untagged customer's
    // goes to the channel's pool.
    let (status, body) = server
        .call_as(
            "POST",
            &format!("/v1/conversations/{conversation}/close"),
            AGENT,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    send(&server, "m-2", "42").await;
    let vip = held_by(&server, "vic", 1).await;
    assert_eq!(vip[0]["pool"], "vip");
    assert_eq!(vip[0]["customer_id"], customer.as_str());
    send(&server, "m-3", "43").await;
    let plain = held_by(&server, "ann", 1).await;
    assert_eq!(plain[0]["pool"], "default");
    assert_ne!(plain[0]["customer_id"], customer.as_str());
    assert_eq!(
        server
            .metric(r#"switchyard_conversations_opened_total{pool="vip",rule="vip-customers"}"#)
            .await,
        1.0
    );
    server.stop().await;
}
