//! API channel -> agent (REST and WebSocket) -> reply -> signed callback.

use serde_json::{Value, json};
use switchyard_connectors::signature::verify_switchyard_signature;

use crate::support::{Callback, SECRET, Server, Ws, api_message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_message_is_assigned_answered_and_the_reply_reaches_the_callback_signed() {
    let callback = Callback::start().await;
    let server = Server::with_channels(&callback.url).await;

    // The agent connects over the WebSocket and goes online.
    let mut agent = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    agent
        .send(json!({"type": "hello", "agent_id": "a1", "name": "Ann", "capacity": 2}))
        .await;
    let welcome = agent.recv_type("welcome").await;
    assert_eq!(welcome["agent"]["status"], "online");
    assert_eq!(welcome["conversations"], json!([]));

    // The app backend posts a signed message.
    let body = api_message("m-1", "42", "你好 👋", &["phone::+8613800000000"]);
    let response = server.post_signed("shop", &body).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["duplicate"], false);
    let envelope_id = accepted["id"].as_str().unwrap().to_owned();

    // The agent gets the assignment with the customer and the message.
    let assigned = agent.recv_type("assigned").await;
    let conversation = &assigned["conversation"];
    let conversation_id = conversation["id"].as_str().unwrap().to_owned();
    assert_eq!(conversation["status"], "assigned");
    assert_eq!(conversation["agent_id"], "a1");
    assert_eq!(
        conversation["channel"],
        json!({"kind": "api", "id": "shop"})
    );
    assert_eq!(conversation["messages"][0]["id"], envelope_id);
    assert_eq!(conversation["messages"][0]["content"]["text"], "你好 👋");
    let identities: Vec<&str> = conversation["customer"]["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(identities, ["app_user:shop:42", "phone::+8613800000000"]);

    // ... and over REST.
    let (status, held) = server.get_json("/v1/agents/a1/conversations").await;
    assert_eq!(status, 200);
    assert_eq!(held["conversations"][0]["id"], conversation_id.as_str());
    let (status, conv) = server
        .get_json(&format!("/v1/conversations/{conversation_id}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(conv["status"], "assigned");
    assert_eq!(conv["messages"].as_array().unwrap().len(), 1);

    // A second message of the same user lands in the same conversation, live to the agent.
    let response = server
        .post_signed("shop", &api_message("m-2", "42", "还在吗？", &[]))
        .await;
    assert_eq!(response.status(), 202);
    let live = agent.recv_type("message").await;
    assert_eq!(live["conversation_id"], conversation_id.as_str());
    assert_eq!(live["message"]["content"]["text"], "还在吗？");

    // The agent replies over the WebSocket.
    agent
        .send(
            json!({"type": "reply", "client_id": "r-1", "conversation_id": conversation_id,
                     "content": {"type": "text", "text": "您好，请问有什么可以帮您？"}}),
        )
        .await;
    let ack = agent.recv_type("ack").await;
    assert_eq!(ack["client_id"], "r-1");
    let reply_id = ack["id"].as_str().unwrap().to_owned();

    // The backend receives the outbound envelope, signed with the channel secret.
    let received = callback.wait_for(1).await;
    let request = &received[0];
    let header = |name: &str| request.headers.get(name).map(|v| v.to_str().unwrap());
    verify_switchyard_signature(
        SECRET.as_bytes(),
        header("x-switchyard-timestamp"),
        header("x-switchyard-signature"),
        &request.body,
        chrono::Utc::now(),
    )
    .expect("callback signature verifies");
    let outbound: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(outbound["id"], reply_id.as_str());
    assert_eq!(outbound["direction"], "outbound");
    assert_eq!(outbound["channel"], json!({"kind": "api", "id": "shop"}));
    assert_eq!(outbound["sender"]["external_id"], "42");
    assert_eq!(outbound["conversation_id"], conversation_id.as_str());
    assert_eq!(outbound["agent_id"], "a1");
    assert_eq!(outbound["content"]["text"], "您好，请问有什么可以帮您？");

    // A REST reply by someone who does not hold the conversation is refused.
    let (status, err) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{conversation_id}/messages"),
            json!({"agent_id": "intruder", "content": {"type": "text", "text": "hi"}}),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "not_assigned_to_agent");

    // REST reply by the holder works too.
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{conversation_id}/messages"),
            json!({"agent_id": "a1", "content": {"type": "text", "text": "second"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    callback.wait_for(2).await;

    // Closing frees the agent and tells it.
    agent
        .send(json!({"type": "close", "conversation_id": conversation_id}))
        .await;
    let gone = agent.recv_type("unassigned").await;
    assert_eq!(gone["conversation_id"], conversation_id.as_str());
    let (_, conv) = server
        .get_json(&format!("/v1/conversations/{conversation_id}"))
        .await;
    assert_eq!(conv["status"], "closed");
    let (_, held) = server.get_json("/v1/agents/a1/conversations").await;
    assert_eq!(held["conversations"], json!([]));

    agent.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_message_id_answers_duplicate_and_is_not_routed_twice() {
    let callback = Callback::start().await;
    let server = Server::with_channels(&callback.url).await;
    server.agent_online("a1", 5).await;
    let body = api_message("dup-1", "7", "hello", &[]);
    let first: Value = server
        .post_signed("shop", &body)
        .await
        .json()
        .await
        .unwrap();
    // The retry is byte-identical but signed again later, as a real retry would be.
    let second_response = server.post_signed("shop", &body).await;
    assert_eq!(second_response.status(), 202);
    let second: Value = second_response.json().await.unwrap();
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(
        second["id"], first["id"],
        "the duplicate names the first copy"
    );

    let conversation_id = crate::support::eventually(|| async {
        let (_, v) = server.get_json("/v1/agents/a1/conversations").await;
        v["conversations"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let (_, conv) = server
        .get_json(&format!("/v1/conversations/{conversation_id}"))
        .await;
    assert_eq!(conv["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        server
            .metric("switchyard_inbound_messages_total{channel=\"shop\",outcome=\"duplicate\"}")
            .await,
        1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_conversations_wait_in_order_and_go_out_as_capacity_frees() {
    let callback = Callback::start().await;
    let server = Server::with_channels(&callback.url).await;
    server.agent_online("a1", 1).await;
    for (posted, user) in ["u1", "u2", "u3"].into_iter().enumerate() {
        let r = server
            .post_signed("shop", &api_message(&format!("m-{user}"), user, "hi", &[]))
            .await;
        assert_eq!(r.status(), 202);
        // Different users are routed concurrently (other shards): wait until this one's
        // conversation exists, so they queue in this order.
        crate::support::eventually(|| async {
            let (_, held) = server.get_json("/v1/agents/a1/conversations").await;
            let (_, queue) = server.get_json("/v1/pools/default/queue").await;
            let open =
                held["conversations"].as_array()?.len() + queue["conversations"].as_array()?.len();
            (open == posted + 1).then_some(())
        })
        .await;
    }
    let queue = crate::support::eventually(|| async {
        let (_, q) = server.get_json("/v1/pools/default/queue").await;
        (q["conversations"].as_array()?.len() == 2).then_some(q)
    })
    .await;
    let waiting: Vec<&str> = queue["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["recipient"]["external_id"].as_str().unwrap())
        .collect();
    assert_eq!(waiting, ["u2", "u3"]);
    let (_, held) = server.get_json("/v1/agents/a1/conversations").await;
    let first = held["conversations"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(held["conversations"][0]["recipient"]["external_id"], "u1");

    // Closing the first hands the head of the queue to the agent at once.
    let (status, _) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{first}/close"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, held) = server.get_json("/v1/agents/a1/conversations").await;
    assert_eq!(held["conversations"][0]["recipient"]["external_id"], "u2");

    // Raising capacity takes the next one.
    server.agent_online("a1", 2).await;
    let (_, held) = server.get_json("/v1/agents/a1/conversations").await;
    assert_eq!(held["conversations"].as_array().unwrap().len(), 2);
    let (_, queue) = server.get_json("/v1/pools/default/queue").await;
    assert_eq!(queue["conversations"], json!([]));
    server.stop().await;
}

/// Opens a conversation for user `u1` held by agent `a1`; returns (agent socket, conversation id).
async fn assigned_conversation(server: &Server) -> (Ws, String) {
    let mut agent = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    agent
        .send(json!({"type": "hello", "agent_id": "a1", "capacity": 1}))
        .await;
    agent.recv_type("welcome").await;
    let r = server
        .post_signed("shop", &api_message("m-1", "u1", "hi", &[]))
        .await;
    assert_eq!(r.status(), 202);
    let assigned = agent.recv_type("assigned").await;
    let id = assigned["conversation"]["id"].as_str().unwrap().to_owned();
    (agent, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_callback_is_retried_boundedly_then_the_agent_is_told() {
    let callback = Callback::start().await;
    let server = Server::with_channels(&callback.url).await;
    let (mut agent, conversation_id) = assigned_conversation(&server).await;
    callback.answer(503);
    agent
        .send(
            json!({"type": "reply", "client_id": "r", "conversation_id": conversation_id,
                     "content": {"type": "text", "text": "hello?"}}),
        )
        .await;
    agent.recv_type("ack").await;
    let failed = agent.recv_type("error").await;
    assert_eq!(failed["code"], "delivery_failed");
    // 3 attempts per delivery, 1 delivery + 5 redeliveries (the default delivery limit).
    let sent = callback.received.lock().unwrap().len();
    assert_eq!(sent, 18, "bounded retries");
    assert_eq!(
        server
            .metric(
                "switchyard_outbound_messages_total{channel=\"shop\",outcome=\"dead_lettered\"}"
            )
            .await,
        1.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_refusal_is_not_retried_and_the_agent_is_told() {
    let callback = Callback::start().await;
    let server = Server::with_channels(&callback.url).await;
    let (mut agent, conversation_id) = assigned_conversation(&server).await;
    callback.answer(400);
    agent
        .send(
            json!({"type": "reply", "client_id": "r", "conversation_id": conversation_id,
                     "content": {"type": "text", "text": "hello?"}}),
        )
        .await;
    agent.recv_type("ack").await;
    let failed = agent.recv_type("error").await;
    assert_eq!(failed["code"], "delivery_failed");
    assert!(
        failed["message"].as_str().unwrap().contains("http_400"),
        "{failed}"
    );
    assert_eq!(
        callback.received.lock().unwrap().len(),
        1,
        "no retry of a refusal"
    );
    server.stop().await;
}

/// An app in `role`, with the API channel `shop` posting replies to `callback`, on `bus` and
/// `store`.
async fn shop_app(
    callback: &Callback,
    role: switchyard_router::Role,
    bus: &std::sync::Arc<dyn switchyard_core::bus::Bus>,
    store: std::sync::Arc<dyn switchyard_core::store::Store>,
) -> Server {
    let config = format!(
        "[[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\ncallback_url = \"{}\"\n",
        callback.url
    );
    let app = switchyard_router::App::start_with(
        crate::support::settings(&config),
        role,
        std::sync::Arc::clone(bus),
        store,
        switchyard_core::metrics::Metrics::new().unwrap(),
    )
    .await
    .unwrap();
    Server::of(app)
}

/// Agent `a1` online, and a message of user `user` (id `message_id`) assigned to it: the
/// conversation's id.
async fn conversation_with_a1(server: &Server, message_id: &str, user: &str) -> String {
    server.agent_online("a1", 2).await;
    let response = server
        .post_signed("shop", &api_message(message_id, user, "hello", &[]))
        .await;
    assert_eq!(response.status(), 202);
    crate::support::eventually(|| async {
        let (_, held) = server.get_json("/v1/agents/a1/conversations").await;
        held["conversations"][0]["id"].as_str().map(str::to_owned)
    })
    .await
}

/// Agent `a1` replies "once" in `conversation`: the reply's id.
async fn a1_replies(server: &Server, conversation: &str) -> String {
    let (status, reply) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{conversation}/messages"),
            json!({"agent_id": "a1", "content": {"type": "text", "text": "once"}}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    reply["id"].as_str().unwrap().to_owned()
}

/// A second copy of a reply that was sent already (a redelivery, or a batch the outbox
/// republished after its confirm was lost) is not sent to the channel again; its `message.sent`
/// is announced again, with the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_copy_of_a_sent_reply_is_not_sent_again() {
    use std::sync::Arc;
    use std::time::Duration;

    use switchyard_core::bus::embedded::EmbeddedBus;
    use switchyard_core::bus::topology::OUTBOUND_EXCHANGE;
    use switchyard_core::bus::{Bus, Message};
    use switchyard_core::store::embedded::EmbeddedStore;
    use switchyard_router::Role;

    use crate::support::eventually;

    let callback = Callback::start().await;
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(Duration::from_secs(5)));
    let server = shop_app(&callback, Role::All, &bus, Arc::new(EmbeddedStore::new())).await;
    let sent_events = bus
        .declare_subscriber(
            switchyard_core::bus::topology::EVENTS_EXCHANGE,
            &["message.sent"],
        )
        .await
        .unwrap();
    let mut sent_events = bus.consume(&sent_events, 10).await.unwrap();
    let conversation = conversation_with_a1(&server, "m-dup", "77").await;
    let reply_id = a1_replies(&server, &conversation).await;
    let sent = callback.wait_for(1).await;
    let envelope: Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(envelope["id"], reply_id.as_str());

    // The same envelope reaches the outbound queue once more.
    bus.publish(
        OUTBOUND_EXCHANGE,
        "api",
        Message::new(reply_id.clone(), sent[0].body.clone()),
    )
    .await
    .unwrap();
    let duplicates = "switchyard_outbound_messages_total{channel=\"shop\",outcome=\"duplicate\"}";
    eventually(|| async { (server.metric(duplicates).await == 1.0).then_some(()) }).await;
    assert_eq!(
        callback.received.lock().unwrap().len(),
        1,
        "the second copy was sent to the channel"
    );
    assert_eq!(
        server
            .metric("switchyard_outbound_messages_total{channel=\"shop\",outcome=\"sent\"}")
            .await,
        1.0
    );

    // `message.sent` is announced again for the copy (a redelivery may follow a stop before it
    // was published), with the same id and the same data.
    let mut announced = Vec::new();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), sent_events.next())
            .await
            .expect("message.sent within 5 s")
            .expect("delivery");
        let event: Value = serde_json::from_slice(&delivery.message.body).unwrap();
        delivery.ack().await.unwrap();
        announced.push(event);
    }
    assert_eq!(announced[0]["id"], reply_id.as_str());
    assert_eq!(announced[1]["id"], announced[0]["id"]);
    assert_eq!(announced[1]["data"], announced[0]["data"]);
    server.stop().await;
}

/// Two copies of one reply (a batch republished after its confirm was lost, say) reach two
/// gateways at the same moment: the second waits while the first is being sent, and is then
/// dropped as a duplicate. The channel gets the reply once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_of_a_reply_at_two_gateways_at_once_are_sent_once() {
    use std::sync::Arc;
    use std::time::Duration;

    use switchyard_core::bus::embedded::EmbeddedBus;
    use switchyard_core::bus::topology::OUTBOUND_EXCHANGE;
    use switchyard_core::bus::{Bus, Message};
    use switchyard_core::store::Store;
    use switchyard_core::store::embedded::EmbeddedStore;
    use switchyard_router::Role;

    use crate::support::eventually;

    let callback = Callback::start().await;
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(Duration::from_secs(5)));
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
    let first = shop_app(&callback, Role::All, &bus, Arc::clone(&store)).await;
    let second = shop_app(&callback, Role::Gateway, &bus, store).await;
    let conversation = conversation_with_a1(&first, "m-twice", "78").await;

    // The channel takes a while to answer; meanwhile a second copy of the reply arrives.
    callback.answer_after(Duration::from_millis(700));
    let reply_id = a1_replies(&first, &conversation).await;
    let being_sent = callback.wait_for(1).await;
    bus.publish(
        OUTBOUND_EXCHANGE,
        "api",
        Message::new(reply_id.clone(), being_sent[0].body.clone()),
    )
    .await
    .unwrap();

    // One gateway sent it; the other waited for that send and dropped its copy.
    let series = |outcome: &str| {
        format!("switchyard_outbound_messages_total{{channel=\"shop\",outcome=\"{outcome}\"}}")
    };
    let both = || async {
        let mut total = (0.0, 0.0);
        for server in [&first, &second] {
            total.0 += server.metric(&series("sent")).await;
            total.1 += server.metric(&series("duplicate")).await;
        }
        total
    };
    eventually(|| async { (both().await == (1.0, 1.0)).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        callback.received.lock().unwrap().len(),
        1,
        "the reply reached the channel twice"
    );
    assert_eq!(both().await, (1.0, 1.0));
    second.stop().await;
    first.stop().await;
}
