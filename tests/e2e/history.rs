//! A customer's history across channels (`GET /v1/customers/{id}/conversations`) and what a
//! pool has open (`GET /v1/pools/{id}/conversations`): one person writes on two channels over
//! time, conversations close and reopen, the two profiles merge, and the lists show every
//! conversation newest first, with their filters; the pool shows its open ones only.

use serde_json::{Value, json};

use crate::support::{Callback, Server, api_message, eventually};

/// The ids of a listing's `conversations`.
fn ids(listing: &Value) -> Vec<String> {
    listing["conversations"]
        .as_array()
        .unwrap_or_else(|| panic!("not a listing: {listing}"))
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Posts message `message_id` from `user` on `channel` (its text is its id).
async fn write(server: &Server, channel: &str, message_id: &str, user: &str) {
    let r = server
        .post_signed(channel, &api_message(message_id, user, message_id, &[]))
        .await;
    assert_eq!(r.status(), 202);
}

/// The id of the open conversation of `customer` holding message `message_id`, once routed.
async fn open_with(server: &Server, customer: &str, message_id: &str) -> String {
    eventually(|| async {
        let (s, v) = server
            .get_json(&format!(
                "/v1/customers/{customer}/conversations?status=open"
            ))
            .await;
        if s != 200 {
            return None;
        }
        let id = v["conversations"].as_array()?.first()?["id"]
            .as_str()?
            .to_owned();
        let (_, c) = server.get_json(&format!("/v1/conversations/{id}")).await;
        c["messages"]
            .as_array()?
            .iter()
            .any(|m| m["content"]["text"] == message_id)
            .then_some(id)
    })
    .await
}

async fn close(server: &Server, id: &str) {
    let (status, body) = server
        .send_json("POST", &format!("/v1/conversations/{id}/close"), json!({}))
        .await;
    assert_eq!(status, 200, "close {id}: {body}");
}

/// The error code of a 4xx answer, checking its status.
async fn refused(server: &Server, path: &str, status: u16) -> String {
    let (got, body) = server.get_json(path).await;
    assert_eq!(got, status, "{path}: {body}");
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_persons_conversations_across_channels_newest_first_and_a_pools_open_ones() {
    let shop = Callback::start().await;
    let bank = Callback::start().await;
    let server = Server::with_shop_and_bank(&shop.url, &bank.url).await;

    // The person writes on the shop app, then on the bank app (two profiles so far); each
    // conversation is closed before the next message.
    write(&server, "shop", "s-1", "42").await;
    let a = server.customer_of("app_user:shop:42").await;
    let c1 = open_with(&server, &a, "s-1").await;
    let c1 = c1.as_str();
    close(&server, c1).await;
    write(&server, "bank", "b-1", "u-9").await;
    let b = server.customer_of("app_user:bank:u-9").await;
    assert_ne!(a, b, "two profiles before the merge");
    let c2 = open_with(&server, &b, "b-1").await;
    let c2 = c2.as_str();
    close(&server, c2).await;
    // Back on both, with a conversation open on each profile.
    write(&server, "shop", "s-2", "42").await;
    let c3 = open_with(&server, &a, "s-2").await;
    let c3 = c3.as_str();
    write(&server, "bank", "b-2", "u-9").await;
    let c4 = open_with(&server, &b, "b-2").await;
    let c4 = c4.as_str();
    let (_, before_merge) = server
        .get_json(&format!("/v1/customers/{a}/conversations"))
        .await;
    assert_eq!(ids(&before_merge), [c3, c1], "a's own, before the merge");

    // A helpdesk merges them: the older profile survives; b's open conversation is closed into
    // a's.
    let merged = server.merge_customers(&a, &b).await;
    assert_eq!(merged["id"], a.as_str());
    let newest_first = [c4, c3, c2, c1];
    for id in [&a, &b] {
        let (status, listing) = server
            .get_json(&format!("/v1/customers/{id}/conversations"))
            .await;
        assert_eq!(status, 200, "{listing}");
        assert_eq!(
            ids(&listing),
            newest_first,
            "every conversation, through {id}"
        );
    }
    let (_, listing) = server
        .get_json(&format!("/v1/customers/{a}/conversations"))
        .await;
    let first = &listing["conversations"][0];
    assert_eq!(
        (first["status"].as_str(), first["close_reason"].as_str()),
        (Some("closed"), Some("merged")),
        "{first}"
    );
    assert!(
        first.get("messages").is_none(),
        "listed without messages: {first}"
    );
    let channels: Vec<&str> = listing["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["bank", "shop", "bank", "shop"]);

    let page = |query: &str| {
        let path = format!("/v1/customers/{a}/conversations?{query}");
        let server = &server;
        async move {
            let (status, listing) = server.get_json(&path).await;
            assert_eq!(status, 200, "{path}: {listing}");
            ids(&listing)
        }
    };
    assert_eq!(page("status=open").await, [c3]);
    assert_eq!(page("status=closed").await, [c4, c2, c1]);
    assert_eq!(page("limit=2").await, [c4, c3]);
    assert_eq!(page(&format!("before={c3}")).await, [c2, c1]);
    assert_eq!(page(&format!("before={c3}&limit=1")).await, [c2]);
    assert_eq!(page(&format!("before={c4}&status=closed")).await, [c2, c1]);
    assert!(page(&format!("before={c1}")).await.is_empty());

    // Someone else, in the same pool.
    write(&server, "shop", "o-1", "77").await;
    let other = server.customer_of("app_user:shop:77").await;
    let co = open_with(&server, &other, "o-1").await;
    let co = co.as_str();
    assert_eq!(page("").await, newest_first, "not the other customer's");

    // Bad queries.
    let base = format!("/v1/customers/{a}/conversations");
    for query in [
        "limit=0",
        "limit=201",
        "limit=ten",
        "status=gone",
        "before=",
        "colour=red",
    ] {
        assert_eq!(
            refused(&server, &format!("{base}?{query}"), 422).await,
            "invalid_query",
            "{query}"
        );
    }
    assert_eq!(
        refused(&server, &format!("{base}?before={co}"), 422).await,
        "unknown_cursor"
    );
    assert_eq!(
        refused(&server, "/v1/customers/nobody/conversations", 404).await,
        "not_found"
    );

    // The conversation closes, and the person comes back: a new one, listed first.
    close(&server, c3).await;
    write(&server, "bank", "b-3", "u-9").await;
    let c5 = open_with(&server, &a, "b-3").await;
    let c5 = c5.as_str();
    assert_eq!(page("").await, [c5, c4, c3, c2, c1]);
    assert_eq!(page("status=open").await, [c5]);
    assert_eq!(page("status=closed").await, [c4, c3, c2, c1]);

    // The pool lists what it has open, oldest first: the other customer's, then c5.
    let pool = |query: &str| {
        let path = format!("/v1/pools/default/conversations?{query}");
        let server = &server;
        async move {
            let (status, listing) = server.get_json(&path).await;
            assert_eq!(status, 200, "{path}: {listing}");
            ids(&listing)
        }
    };
    assert_eq!(pool("").await, [co, c5]);
    // An agent takes the oldest.
    let (status, agent) = server
        .send_json(
            "PUT",
            "/v1/agents/a1",
            json!({"name": "a1", "pools": ["default"], "capacity": 1, "status": "online"}),
        )
        .await;
    assert_eq!(status, 200, "{agent}");
    assert_eq!(agent["conversations"], json!([co]));
    assert_eq!(pool("status=assigned").await, [co]);
    assert_eq!(pool("status=queued").await, [c5]);
    assert!(pool("status=bot").await.is_empty());
    assert_eq!(pool("limit=1").await, [co]);
    // Transferred to another pool, it leaves this one's listing.
    let (status, moved) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{c5}/transfer"),
            json!({"pool": "vip"}),
        )
        .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(pool("").await, [co]);
    let (status, vip) = server.get_json("/v1/pools/vip/conversations").await;
    assert_eq!((status, ids(&vip)), (200, vec![c5.to_owned()]));
    close(&server, co).await;
    assert!(pool("").await.is_empty(), "closed ones are not listed");
    assert_eq!(
        refused(
            &server,
            "/v1/pools/default/conversations?status=closed",
            422
        )
        .await,
        "invalid_query"
    );
    assert_eq!(
        refused(&server, "/v1/pools/nowhere/conversations", 404).await,
        "not_found"
    );
    server.stop().await;
}
