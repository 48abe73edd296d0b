//! One person on two channels: shared strong identities merge into one profile and one
//! conversation, and replies follow the channel the customer last wrote from.

use serde_json::json;

use crate::support::{Callback, Server, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_phone_across_two_app_channels_gives_one_profile_and_one_conversation() {
    let shop = Callback::start().await;
    let bank = Callback::start().await;
    let server = Server::with_shop_and_bank(&shop.url, &bank.url).await;
    server.agent_online("a1", 5).await;
    let phone = "phone::+8613800000000";
    let r = server
        .post_signed(
            "shop",
            &crate::support::api_message("s-1", "42", "from shop", &[phone]),
        )
        .await;
    assert_eq!(r.status(), 202);
    // The two identities are on different shards, routed concurrently: "last" is only defined
    // once the first message is recorded.
    eventually(|| async {
        let (_, v) = server.get_json("/v1/agents/a1/conversations").await;
        let conv = v["conversations"].as_array()?.first()?.clone();
        (conv["messages"].as_array()?.len() == 1).then_some(())
    })
    .await;
    let r = server
        .post_signed(
            "bank",
            &crate::support::api_message("b-1", "u-9", "from bank", &[phone]),
        )
        .await;
    assert_eq!(r.status(), 202);

    let held = eventually(|| async {
        let (_, v) = server.get_json("/v1/agents/a1/conversations").await;
        let conv = v["conversations"].as_array()?.first()?.clone();
        (conv["messages"].as_array()?.len() == 2).then_some(v)
    })
    .await;
    assert_eq!(
        held["conversations"].as_array().unwrap().len(),
        1,
        "one conversation"
    );
    let conversation = &held["conversations"][0];
    assert_eq!(conversation["channel"]["id"], "bank", "last channel wins");
    let keys: Vec<&str> = conversation["customer"]["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&"app_user:shop:42") && keys.contains(&"app_user:bank:u-9"),
        "{keys:?}"
    );
    let (_, a) = server
        .get_json("/v1/customers?identity=app_user:shop:42")
        .await;
    let (_, b) = server
        .get_json("/v1/customers?identity=app_user:bank:u-9")
        .await;
    assert_eq!(a["id"], b["id"]);

    // The reply goes out on the channel the customer last wrote from.
    let id = conversation["id"].as_str().unwrap();
    let (status, _) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{id}/messages"),
            json!({"agent_id": "a1", "content": {"type": "text", "text": "hi"}}),
        )
        .await;
    assert_eq!(status, 202);
    let got = bank.wait_for(1).await;
    let out: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(out["sender"]["external_id"], "u-9");
    assert!(shop.received.lock().unwrap().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_link_merges_two_profiles_and_emits_one_survivor() {
    let callback = Callback::start().await;
    let server = Server::with_channels(&callback.url).await;
    let r = server
        .post_signed("shop", &crate::support::api_message("m1", "1", "hi", &[]))
        .await;
    assert_eq!(r.status(), 202);
    let first = eventually(|| async {
        let (s, c) = server
            .get_json("/v1/customers?identity=app_user:shop:1")
            .await;
        (s == 200).then_some(c)
    })
    .await;
    let r = server
        .post_signed("shop", &crate::support::api_message("m2", "2", "hi", &[]))
        .await;
    assert_eq!(r.status(), 202);
    let second = eventually(|| async {
        let (s, c) = server
            .get_json("/v1/customers?identity=app_user:shop:2")
            .await;
        (s == 200).then_some(c)
    })
    .await;
    assert_ne!(first["id"], second["id"]);
    let (status, merged) = server
        .send_json(
            "POST",
            &format!("/v1/customers/{}/identities", first["id"].as_str().unwrap()),
            json!({"identities": ["app_user:shop:2"]}),
        )
        .await;
    assert_eq!(status, 200, "{merged}");
    assert_eq!(merged["id"], first["id"], "the older profile survives");
    assert_eq!(merged["merged_from"], json!([second["id"]]));
    let (status, err) = server
        .send_json(
            "POST",
            &format!("/v1/customers/{}/identities", first["id"].as_str().unwrap()),
            json!({"identities": ["not-a-key"]}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "malformed");
    server.stop().await;
}

/// A merge that closes a conversation an agent holds tells the agent: its console gets
/// `unassigned` (reason `merged`) and `conversation.closed` names it, as any close does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_tells_the_agent_whose_conversation_it_closes() {
    use switchyard_core::bus::topology::EVENTS_EXCHANGE;

    use crate::support::{Ws, api_message};

    let shop = Callback::start().await;
    let bank = Callback::start().await;
    let server = Server::with_shop_and_bank(&shop.url, &bank.url).await;
    let queue = server
        .app
        .bus
        .declare_subscriber(EVENTS_EXCHANGE, &["conversation.closed"])
        .await
        .unwrap();
    let mut closes = server.app.bus.consume(&queue, 10).await.unwrap();
    let mut ann = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    ann.send(json!({"type": "hello", "agent_id": "ann", "pools": ["default"], "capacity": 5}))
        .await;
    ann.recv_type("welcome").await;

    // One person, two profiles so far, each with a conversation ann holds.
    let mut held = Vec::new();
    for (channel, user, id) in [("shop", "42", "s-1"), ("bank", "u-9", "b-1")] {
        let r = server
            .post_signed(channel, &api_message(id, user, "hello", &[]))
            .await;
        assert_eq!(r.status(), 202);
        let assigned = ann.recv_type("assigned").await;
        held.push(assigned["conversation"]["id"].as_str().unwrap().to_owned());
    }
    let (a, b) = (
        server.customer_of("app_user:shop:42").await,
        server.customer_of("app_user:bank:u-9").await,
    );

    // A helpdesk merges them: the older profile survives, and b's conversation closes.
    server.merge_customers(&a, &b).await;
    let gone = ann.recv_type("unassigned").await;
    assert_eq!(
        (gone["conversation_id"].as_str(), gone["reason"].as_str()),
        (Some(held[1].as_str()), Some("merged")),
        "{gone}"
    );
    let delivery = tokio::time::timeout(std::time::Duration::from_secs(10), closes.next())
        .await
        .expect("conversation.closed in time")
        .expect("the subscription is open");
    let event: serde_json::Value = serde_json::from_slice(&delivery.message.body).unwrap();
    assert_eq!(
        (
            event["data"]["conversation"]["id"].as_str(),
            event["data"]["agent_id"].as_str()
        ),
        (Some(held[1].as_str()), Some("ann")),
        "{event}"
    );
    let still = server.held_by("ann", 1).await;
    assert_eq!(still[0]["id"], held[0].as_str());
}
