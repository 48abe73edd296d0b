//! Skills-based routing and priorities through the real server: a routing rule's `skills` make
//! the conversation it opens wait for an agent with every one of them, without holding back the
//! conversations behind it; an agent gaining the skill takes it; a transfer can ask for skills.
//! A rule's `priority` puts its conversations ahead of older ones; a transfer can change it. A
//! pool that prefers the last agent gives a returning customer the agent who served them. A
//! pool's queue overflows: what waits too long moves to another pool, or drops its skills.

use serde_json::{Value, json};
use switchyard_core::bus::topology::EVENTS_EXCHANGE;
use switchyard_core::event::{CloudEvent, EventType};

use crate::support::{Callback, SECRET, Server, Ws, api_message, signed_cloud_event};

const CONFIG: &str = r#"
[[channels]]
id = "shop"
kind = "api"
secret = "SECRET"

[[routes]]
id = "chinese"
pool = "default"
text_matches = "\\p{Han}"
skills = ["zh"]

[[routes]]
id = "urgent"
pool = "default"
text_contains = ["urgent"]
priority = 9
"#;

/// Sends user `user`'s text message `id` on the `shop` channel, signed; it is accepted.
async fn send_text(server: &Server, id: &str, user: &str, text: &str) {
    let response = server
        .post_signed("shop", &api_message(id, user, text, &[]))
        .await;
    assert_eq!(response.status(), 202);
}

/// Puts `agent` online in the default pool with `skills` and room for five.
async fn agent_with(server: &Server, agent: &str, skills: &[&str]) {
    let (status, body) = server
        .send_json(
            "PUT",
            &format!("/v1/agents/{agent}"),
            json!({"pools": ["default"], "skills": skills, "capacity": 5, "status": "online"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_explains_why_it_waits_and_who_takes_it_next() {
    let server = Server::start(&CONFIG.replace("SECRET", SECRET)).await;
    agent_with(&server, "ann", &["en"]).await;
    let (status, body) = server
        .send_json(
            "PUT",
            "/v1/agents/bob",
            json!({"pools": ["default"], "skills": ["zh"], "capacity": 1, "status": "away"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // The Chinese message asks for `zh`: ann lacks it, bob has it but is away.
    send_text(&server, "m-1", "1", "你好，我的订单呢？").await;
    let queued = server.queued_in("default", 1).await;
    let id = queued[0]["id"].as_str().unwrap().to_owned();
    let (status, why) = server
        .get_json(&format!("/v1/conversations/{id}/routing"))
        .await;
    assert_eq!(status, 200, "{why}");
    assert_eq!(
        (
            &why["status"],
            &why["skills"],
            &why["queue"],
            &why["next_agent"]
        ),
        (
            &json!("queued"),
            &json!(["zh"]),
            &json!({"position": 1, "of": 1}),
            &Value::Null
        ),
        "{why}"
    );
    let fits: Vec<Value> = why["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            json!([
                a["agent_id"],
                a["can_take"],
                a["reasons"],
                a["missing_skills"]
            ])
        })
        .collect();
    assert_eq!(
        fits,
        [
            json!(["ann", false, ["missing_skills"], ["zh"]]),
            json!(["bob", false, ["away"], []]),
        ]
    );
    assert_eq!(
        why["summary"],
        "Waits in pool `default`'s queue, number 1 of 1. No agent of the pool can take it now: \
         1 away, 1 lacks `zh`.",
    );

    // bob comes back: the conversation is his, and the explanation says how he was chosen.
    let (status, body) = server
        .send_json("PUT", "/v1/agents/bob", json!({"status": "online"}))
        .await;
    assert_eq!(status, 200, "{body}");
    server.held_by("bob", 1).await;
    let (_, why) = server
        .get_json(&format!("/v1/conversations/{id}/routing"))
        .await;
    assert_eq!(
        (
            &why["status"],
            &why["agent_id"],
            &why["assigned_by"],
            &why["queue"]
        ),
        (
            &json!("assigned"),
            &json!("bob"),
            &json!("longest_idle"),
            &Value::Null
        ),
        "{why}"
    );
    assert_eq!(why["summary"], "Assigned to `bob` (longest_idle).");
    assert_eq!(why["agents"][1]["reasons"], json!(["holds_it"]), "{why}");

    let (status, body) = server
        .get_json("/v1/conversations/01NOSUCHCONVERSATION000000/routing")
        .await;
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_asking_for_a_skill_waits_for_an_agent_with_it_and_holds_back_nobody() {
    let server = Server::start(&CONFIG.replace("SECRET", SECRET)).await;
    agent_with(&server, "ann", &["en"]).await;

    // The Chinese message asks for `zh`, which ann lacks; the English one behind it is hers.
    send_text(&server, "m-1", "1", "你好，我的订单呢？").await;
    let queued = server.queued_in("default", 1).await;
    assert_eq!(queued[0]["skills"], json!(["zh"]));
    send_text(&server, "m-2", "2", "hello, where is my order?").await;
    let ann = server.held_by("ann", 1).await;
    assert_eq!(ann[0]["skills"], json!([]), "no rule, no skills");
    let (_, body) = server.get_json("/v1/pools/default/queue").await;
    assert_eq!(
        body["conversations"][0]["id"], queued[0]["id"],
        "still waiting"
    );

    // li speaks Chinese: the waiting conversation is hers the moment she is online.
    let mut li_ws = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    li_ws
        .send(
            json!({"type": "hello", "agent_id": "li", "pools": ["default"],
            "skills": ["zh", "en"], "capacity": 5}),
        )
        .await;
    let welcome = li_ws.recv_type("welcome").await;
    assert_eq!(welcome["agent"]["skills"], json!(["zh", "en"]));
    let assigned = li_ws.recv_type("assigned").await;
    assert_eq!(assigned["conversation"]["id"], queued[0]["id"]);
    assert_eq!(assigned["conversation"]["skills"], json!(["zh"]));

    // ann hands her conversation on, asking for Chinese from now on: li takes it.
    let english = ann[0]["id"].as_str().unwrap();
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{english}/transfer"),
            json!({"pool": "default", "skills": ["zh", "zh"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["skills"], json!(["zh"]));
    let assigned = li_ws.recv_type("assigned").await;
    assert_eq!(assigned["conversation"]["id"], english);
    server.held_by("ann", 0).await;

    // A hand-over context over the socket that breaks a rule is refused with an error frame.
    li_ws
        .send(
            json!({"type": "transfer", "conversation_id": english, "pool": "default",
            "handover": {"intent": "bad\nintent"}}),
        )
        .await;
    let refused = li_ws.recv_type("error").await;
    assert_eq!(refused["code"], "invalid", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("handover.intent")),
        "{refused}"
    );
    assert_eq!(
        server
            .metric(r#"switchyard_api_errors_total{code="invalid"}"#)
            .await,
        1.0,
        "the refused frame is counted"
    );

    // li hands it back over her socket, asking for no skill and saying why: ann, the longer
    // idle, takes it with li's hand-over.
    li_ws
        .send(
            json!({"type": "transfer", "conversation_id": english, "pool": "default",
            "skills": [], "handover": {"summary": "Speaks English after all.", "language": "en"}}),
        )
        .await;
    let ann = server.held_by("ann", 1).await;
    assert_eq!(
        (&ann[0]["id"], &ann[0]["skills"]),
        (&json!(english), &json!([]))
    );
    assert_eq!(
        (
            &ann[0]["handover"]["by"],
            &ann[0]["handover"]["summary"],
            &ann[0]["handover"]["language"]
        ),
        (
            &json!("li"),
            &json!("Speaks English after all."),
            &json!("en")
        )
    );

    // Bad skills are refused with a clear error.
    for (path, body) in [
        (
            format!("/v1/conversations/{english}/transfer"),
            json!({"agent_id": "ann", "skills": ["zh"]}),
        ),
        (
            format!("/v1/conversations/{english}/transfer"),
            json!({"pool": "default", "skills": [""]}),
        ),
        (
            "/v1/agents/ann".to_owned(),
            json!({"skills": ["en", "x".repeat(65)]}),
        ),
    ] {
        let method = if path.starts_with("/v1/agents") {
            "PUT"
        } else {
            "POST"
        };
        let (status, answer) = server.send_json(method, &path, body).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid", "{answer}");
    }
    let (_, ann) = server.get_json("/v1/agents/ann").await;
    assert_eq!(
        ann["skills"],
        json!(["en"]),
        "a refused update changes nothing"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_with_a_priority_puts_its_conversations_ahead_of_older_ones() {
    let server = Server::start(&CONFIG.replace("SECRET", SECRET)).await;
    for (id, user, text) in [
        ("m-1", "1", "hello"),
        ("m-2", "2", "URGENT: my card was stolen"),
        ("m-3", "3", "hi again"),
    ] {
        send_text(&server, id, user, text).await;
    }
    let waiting = server.queued_in("default", 3).await;
    let priorities: Vec<&Value> = waiting.iter().map(|c| &c["priority"]).collect();
    assert_eq!(priorities, [&json!(9), &json!(0), &json!(0)], "{waiting:?}");

    // The last one waiting is raised above the rest by a transfer.
    let last = waiting[2]["id"].as_str().unwrap();
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{last}/transfer"),
            json!({"pool": "default", "priority": 10}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["priority"], 10);

    // One agent with room for two: the two highest priorities are hers, the oldest waits.
    let (status, body) = server
        .send_json(
            "PUT",
            "/v1/agents/ann",
            json!({"pools": ["default"], "capacity": 2, "status": "online"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let held = server.held_by("ann", 2).await;
    let mut ids: Vec<&Value> = held.iter().map(|c| &c["id"]).collect();
    ids.sort_by_key(|id| id.to_string());
    let mut expected = vec![&waiting[0]["id"], &waiting[2]["id"]];
    expected.sort_by_key(|id| id.to_string());
    assert_eq!(ids, expected);
    let (_, body) = server.get_json("/v1/pools/default/queue").await;
    assert_eq!(body["conversations"][0]["id"], waiting[1]["id"]);

    let (status, answer) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{last}/transfer"),
            json!({"agent_id": "ann", "priority": 1}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_customer_gets_their_last_agent_in_a_pool_that_prefers_it() {
    let config = format!(
        "[[pools]]\nid = \"default\"\nprefer_last_agent = true\n{}",
        CONFIG.replace("SECRET", SECRET)
    );
    let server = Server::start(&config).await;
    agent_with(&server, "ann", &[]).await;
    agent_with(&server, "bob", &[]).await;
    let close = |id: String| {
        let server = &server;
        async move {
            let (status, body) = server
                .send_json("POST", &format!("/v1/conversations/{id}/close"), json!({}))
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };

    // ann has been idle longest: customer 1's first conversation is hers.
    send_text(&server, "m-1", "1", "hello").await;
    let first = server.held_by("ann", 1).await;
    close(first[0]["id"].as_str().unwrap().to_owned()).await;
    server.held_by("ann", 0).await;

    // bob is the longest idle now, but customer 1 comes back to ann; customer 2 goes to bob.
    send_text(&server, "m-2", "1", "hello").await;
    let again = server.held_by("ann", 1).await;
    assert_ne!(again[0]["id"], first[0]["id"], "a new conversation");
    send_text(&server, "m-3", "2", "hello").await;
    server.held_by("bob", 1).await;

    // bob writes first to customer 1, and so becomes their last agent: customer 1's next
    // conversation goes to him, though ann has been idle longer.
    let customer = again[0]["customer_id"].as_str().unwrap().to_owned();
    close(again[0]["id"].as_str().unwrap().to_owned()).await;
    let (status, started) = server
        .send_json(
            "POST",
            &format!("/v1/customers/{customer}/messages"),
            json!({"agent_id": "bob", "channel_id": "shop",
                   "content": {"type": "text", "text": "your parcel is on its way"}}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let held = server.held_by("bob", 2).await;
    let written = held
        .iter()
        .find(|c| c["customer_id"] == customer.as_str())
        .expect("the conversation bob started");
    close(written["id"].as_str().unwrap().to_owned()).await;
    send_text(&server, "m-4", "1", "thanks, where is it?").await;
    let held = server.held_by("bob", 2).await;
    assert!(
        held.iter().any(|c| c["customer_id"] == customer.as_str()),
        "customer 1 comes back to bob, who wrote first: {held:?}"
    );
    server.held_by("ann", 0).await;
    server.stop().await;
}

/// A pool with `offer_timeout_secs`: offers are accepted (over REST, which the agent's open
/// console learns of too), declined over the agent WebSocket (to another agent), or left to
/// expire (the agent is set away); each answer is announced on the event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_is_accepted_declined_to_another_agent_or_taken_back_when_it_expires() {
    let config = format!(
        "[[pools]]\nid = \"default\"\noffer_timeout_secs = 2\n{}",
        CONFIG.replace("SECRET", SECRET)
    );
    let server = Server::start(&config).await;
    // What a helpdesk sees of the answers on the event stream.
    let queue = server
        .app
        .bus
        .declare_subscriber(
            EVENTS_EXCHANGE,
            &["conversation.accepted", "conversation.transferred"],
        )
        .await
        .unwrap();
    let mut answers = server.app.bus.consume(&queue, 100).await.unwrap();
    agent_with(&server, "ann", &[]).await;
    let mut bob = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    bob.send(json!({"type": "hello", "agent_id": "bob", "pools": ["default"], "capacity": 2}))
        .await;
    bob.recv_type("welcome").await;
    let answer = |verb: &str, conversation: &str, agent: &str| {
        let path = format!("/v1/conversations/{conversation}/{verb}");
        let server = &server;
        let body = json!({ "agent_id": agent });
        async move { server.send_json("POST", &path, body).await }
    };

    // ann, idle longest, is offered the first conversation and accepts it, once.
    send_text(&server, "m-1", "1", "hello").await;
    let offered = server.held_by("ann", 1).await;
    let first = offered[0]["id"].as_str().unwrap().to_owned();
    assert!(offered[0]["offer_expires_at"].is_string(), "{offered:?}");
    let (status, body) = answer("accept", &first, "bob").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("no_pending_offer"))
    );
    let (status, body) = answer("accept", &first, "ann").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offer_expires_at"], Value::Null);
    let (status, _) = answer("accept", &first, "ann").await;
    assert_eq!(status, 409, "accepted once");

    // bob is offered the second and declines it over his socket: it goes to ann.
    send_text(&server, "m-2", "2", "hello").await;
    let assigned = bob.recv_type("assigned").await;
    let second = assigned["conversation"]["id"].as_str().unwrap().to_owned();
    assert!(assigned["conversation"]["offer_expires_at"].is_string());
    bob.send(json!({"type": "decline", "conversation_id": second}))
        .await;
    let gone = bob.recv_type("unassigned").await;
    assert_eq!(
        (&gone["conversation_id"], &gone["reason"]),
        (&json!(second), &json!("declined"))
    );
    let ann = server.held_by("ann", 2).await;
    assert!(ann.iter().any(|c| c["id"] == second), "{ann:?}");
    // ann's console, open now, learns of her acceptance over REST: the conversation comes
    // again as `assigned`, no longer an offer.
    let mut ann_ws = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    ann_ws
        .send(json!({"type": "hello", "agent_id": "ann", "pools": ["default"], "capacity": 5}))
        .await;
    ann_ws.recv_type("welcome").await;
    let (status, body) = answer("accept", &second, "ann").await;
    assert_eq!(status, 200, "{body}");
    loop {
        // (An `assigned` of the offer itself may come first, from before the socket.)
        let frame = ann_ws.recv_type("assigned").await;
        if frame["conversation"]["id"] == second && frame["conversation"]["offered_at"].is_null() {
            assert_eq!(frame["conversation"]["agent_id"], "ann");
            assert_eq!(frame["conversation"]["offer_expires_at"], Value::Null);
            break;
        }
    }

    // bob, idle longest now, is offered the third, lets it expire and is set away; it goes to
    // ann.
    send_text(&server, "m-3", "3", "hello").await;
    let assigned = bob.recv_type("assigned").await;
    let third = assigned["conversation"]["id"].clone();
    let gone = bob.recv_type("unassigned").await;
    assert_eq!(
        (&gone["conversation_id"], &gone["reason"]),
        (&third, &json!("offer_expired"))
    );
    let agent = bob.recv_type("agent").await;
    assert_eq!(agent["agent"]["status"], "away");
    let ann = server.held_by("ann", 3).await;
    assert!(ann.iter().any(|c| c["id"] == third), "{ann:?}");
    let (status, body) = answer("accept", third.as_str().unwrap(), "ann").await;
    assert_eq!(status, 200, "{body}");

    for (outcome, n) in [("accepted", 3.0), ("declined", 1.0), ("expired", 1.0)] {
        let series = format!(r#"switchyard_offers_total{{outcome="{outcome}",pool="default"}}"#);
        assert_eq!(server.metric(&series).await, n, "{series}");
    }

    // Each answer is on the event stream: the acceptances as `conversation.accepted` (the
    // conversation with ann, no longer an offer, under the id of the acceptance), the decline
    // and the expiry as `conversation.transferred` with their reason.
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(10), answers.next())
            .await
            .expect("the answers' events within 10 s")
            .expect("the event stream");
        let event: CloudEvent = serde_json::from_slice(&delivery.message.body).unwrap();
        delivery.ack().await.unwrap();
        seen.push(event);
    }
    let summary: Vec<(String, Value, Value)> = seen
        .iter()
        .map(|e| {
            let about = e.data["conversation"]["id"].clone();
            let detail = match e.known_type() {
                Some(EventType::ConversationAccepted) => e.data["conversation"]["agent_id"].clone(),
                _ => e.data["reason"].clone(),
            };
            (e.event_type.clone(), about, detail)
        })
        .collect();
    let (accepted, transferred) = (
        "io.switchyard.conversation.accepted".to_owned(),
        "io.switchyard.conversation.transferred".to_owned(),
    );
    assert_eq!(
        summary,
        [
            (accepted.clone(), json!(first), json!("ann")),
            (transferred.clone(), json!(second), json!("declined")),
            (accepted.clone(), json!(second), json!("ann")),
            (transferred, third.clone(), json!("offer_expired")),
            (accepted, third, json!("ann")),
        ]
    );
    for e in seen
        .iter()
        .filter(|e| e.known_type() == Some(EventType::ConversationAccepted))
    {
        let c = &e.data["conversation"];
        assert_eq!(
            (&c["status"], &c["offered_at"]),
            (&json!("assigned"), &Value::Null)
        );
        assert_eq!(
            e.subject.as_ref(),
            c["id"].as_str().map(str::to_owned).as_ref()
        );
        // Derived from what happened: the conversation and the time of the acceptance.
        let updated_at: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(c["updated_at"].clone()).unwrap();
        assert_eq!(updated_at, e.time);
        assert_eq!(
            e.id,
            CloudEvent::state_id(
                EventType::ConversationAccepted,
                &e.subject.clone().unwrap(),
                e.time
            )
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_waiting_too_long_overflows_to_another_pool_or_drops_its_skills() {
    const HOOK_SECRET: &str = "helpdesk-webhook-secret-0123";
    let helpdesk = Callback::start().await;
    let config = format!(
        "[[pools]]\nid = \"default\"\n[pools.overflow]\nafter_secs = 1\nskills = []\n\
         [[pools]]\nid = \"tier1\"\n[pools.overflow]\nafter_secs = 1\npool = \"tier2\"\n\
         priority = 3\n\
         [[pools]]\nid = \"tier2\"\n\
         [[routes]]\nid = \"refunds\"\npool = \"tier1\"\ntext_contains = [\"refund\"]\n\
         [[webhooks]]\nid = \"helpdesk\"\nurl = \"{}\"\nsecret = \"{HOOK_SECRET}\"\n\
         events = [\"conversation.transferred\"]\n{}",
        helpdesk.url,
        CONFIG.replace("SECRET", SECRET)
    );
    let server = Server::start(&config).await;

    // Nobody in tier1: the refund request waits there for a second, then moves to tier2's
    // queue with priority 3, and tier2's agent takes it.
    let (status, body) = server
        .send_json(
            "PUT",
            "/v1/agents/tia",
            json!({"pools": ["tier2"], "capacity": 5, "status": "online"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    send_text(&server, "m-1", "1", "I want a refund").await;
    let held = server.held_by("tia", 1).await;
    assert_eq!(
        (&held[0]["pool"], &held[0]["priority"]),
        (&json!("tier2"), &json!(3))
    );

    // A Chinese message asks for zh in the default pool; nobody has it. After a second it asks
    // for nothing, and the agent without skills takes it.
    agent_with(&server, "ann", &[]).await;
    send_text(&server, "m-2", "2", "你好").await;
    let held = server.held_by("ann", 1).await;
    assert_eq!(held[0]["skills"], json!([]));

    // Each move was announced as a transfer with the reason `overflow`, and counted.
    let got = helpdesk.wait_for(2).await;
    let moves: Vec<(Value, Value, Value)> = got
        .iter()
        .map(|r| {
            let event = signed_cloud_event(r, HOOK_SECRET);
            assert_eq!(event["type"], "io.switchyard.conversation.transferred");
            let data = &event["data"];
            (
                data["conversation"]["pool"].clone(),
                data["from_agent_id"].clone(),
                data["reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        vec![
            (json!("tier2"), Value::Null, json!("overflow")),
            (json!("default"), Value::Null, json!("overflow")),
        ]
    );
    for (pool, to) in [("tier1", "tier2"), ("default", "default")] {
        let series = format!(r#"switchyard_queue_overflows_total{{pool="{pool}",to="{to}"}}"#);
        assert_eq!(server.metric_once(&series, 1.0).await, 1.0, "{series}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_gauges_and_stats_show_how_many_wait_and_how_long_the_first_has_waited() {
    let server = Server::start(&CONFIG.replace("SECRET", SECRET)).await;
    send_text(&server, "m-1", "1", "hello").await;
    send_text(&server, "m-2", "2", "urgent, please").await;
    // Sampled every 5 s: both wait, the first since before the second.
    let depth = r#"switchyard_pool_queue_depth{pool="default"}"#;
    let waited = r#"switchyard_pool_queue_oldest_wait_seconds{pool="default"}"#;
    let mut first_wait = 0.0;
    for _ in 0..2 {
        first_wait = eventually_metric(&server, waited, |v| v > first_wait).await;
    }
    assert_eq!(server.metric(depth).await, 2.0);
    // The same over REST, with the pool's agents: one away, none with room.
    let (status, body) = server
        .send_json(
            "PUT",
            "/v1/agents/bob",
            json!({"pools": ["default"], "capacity": 5, "status": "away"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, stats) = server.get_json("/v1/pools/default/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["queued"], 2);
    assert!(stats["oldest_queued_at"].is_string(), "{stats}");
    assert!(
        stats["oldest_wait_secs"].as_f64().unwrap() >= first_wait,
        "{stats}"
    );
    assert_eq!(
        stats["agents"],
        json!({"online": 0, "away": 1, "offline": 0, "with_room": 0})
    );
    let (status, _) = server.get_json("/v1/pools/nowhere/stats").await;
    assert_eq!(status, 404);

    // An agent takes both: nothing waits.
    agent_with(&server, "ann", &[]).await;
    server.held_by("ann", 2).await;
    eventually_metric(&server, depth, |v| v == 0.0).await;
    assert_eq!(server.metric(waited).await, 0.0);
    let (_, stats) = server.get_json("/v1/pools/default/stats").await;
    assert_eq!(
        (
            &stats["queued"],
            &stats["oldest_queued_at"],
            &stats["oldest_wait_secs"]
        ),
        (&json!(0), &Value::Null, &Value::Null)
    );
    assert_eq!(
        stats["agents"],
        json!({"online": 1, "away": 1, "offline": 0, "with_room": 1})
    );
    server.stop().await;
}

/// Waits (up to 15 s: the gauges are sampled every 5 s) until `series` satisfies `ok`; returns
/// its value.
async fn eventually_metric(server: &Server, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let value = server.metric(series).await;
        if ok(value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} = {value} after 15 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_busy_pool_gives_the_next_conversation_to_the_agent_holding_the_fewest() {
    let config = format!(
        "[[pools]]\nid = \"default\"\nstrategy = \"least_busy\"\n{}",
        CONFIG.replace("SECRET", SECRET)
    );
    let server = Server::start(&config).await;
    agent_with(&server, "ann", &[]).await;
    send_text(&server, "m-1", "1", "hello").await;
    send_text(&server, "m-2", "2", "hello").await;
    server.held_by("ann", 2).await;
    // bob comes online after ann's last assignment: ann has been idle longer (a longest-idle
    // pool would give her the next one), bob holds fewer.
    agent_with(&server, "bob", &[]).await;
    send_text(&server, "m-3", "3", "hello").await;
    server.held_by("bob", 1).await;
    send_text(&server, "m-4", "4", "hello").await;
    server.held_by("bob", 2).await;
    server.held_by("ann", 2).await;
    server.stop().await;
}
