//! The bot stage through the real server: a pool with a bot opens its conversations held by
//! the bot (status `bot`), whose endpoint gets their events signed and in order; the bot
//! answers through REST as `bot:{id}`, hands off to a pool of people, is told it did, and then
//! hears no more; handed back to it and closed, the bot is told of the close. A silent bot
//! timed out is told the conversation left it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Callback, OnRealServices, Received, SECRET, Server, api_message, eventually, signed_cloud_event,
};

const BOT_SECRET: &str = "faq-bot-secret-0123456789";
const STREAM_SECRET: &str = "stream-webhook-secret-0123";

/// `config` with a webhook to `stream` that is sent every `conversation.transferred`.
fn config_with_stream(bot: &str, callback: &str, stream: &str) -> String {
    format!(
        "{}[[webhooks]]\nid = \"stream\"\nurl = \"{stream}\"\nsecret = \"{STREAM_SECRET}\"\n\
         events = [\"conversation.transferred\"]\n",
        config(bot, callback)
    )
}

fn config(bot: &str, callback: &str) -> String {
    format!(
        "[[bots]]\nid = \"faq\"\nurl = \"{bot}\"\nsecret = \"{BOT_SECRET}\"\n\
         [[pools]]\nid = \"default\"\nbot = \"faq\"\n\
         [[pools]]\nid = \"humans\"\n\
         [[pools]]\nid = \"vip\"\nbot = \"faq\"\n\
         [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\n\
         callback_url = \"{callback}\"\n"
    )
}

/// A request the bot got, checked (signed with the bot's secret); its CloudEvent.
fn event_of(request: &Received) -> Value {
    signed_cloud_event(request, BOT_SECRET)
}

/// The type of each event the bot got, without the `io.switchyard.` prefix.
fn types(requests: &[Received]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            event_of(r)["type"]
                .as_str()
                .unwrap()
                .trim_start_matches("io.switchyard.")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_holds_new_conversations_answers_and_hands_off_to_people() {
    let bot = Callback::start().await;
    let app_backend = Callback::start().await;
    let stream = Callback::start().await;
    let server = Server::start(&config_with_stream(&bot.url, &app_backend.url, &stream.url)).await;
    scenario(&server, &bot, &app_backend, &stream).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_holds_new_conversations_answers_and_hands_off_to_people_on_rabbitmq_and_redis() {
    let bot = Callback::start().await;
    let app_backend = Callback::start().await;
    let stream = Callback::start().await;
    let config = config_with_stream(&bot.url, &app_backend.url, &stream.url);
    let Some(real) = OnRealServices::start("bots", &config).await else {
        return;
    };
    scenario(&real.server, &bot, &app_backend, &stream).await;
    real.stop().await;
}

/// The bot's whole part: it is sent the conversation it holds, answers, hands off to Ann, and
/// hears no more of it.
async fn scenario(server: &Server, bot: &Callback, app_backend: &Callback, stream: &Callback) {
    let (status, body) = server
        .send_json(
            "PUT",
            "/v1/agents/ann",
            json!({"name": "Ann", "pools": ["default", "humans"], "capacity": 5, "status": "online"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let post = |id: &str, text: &str| {
        let body = api_message(id, "42", text, &[]);
        async move {
            let response = server.post_signed("shop", &body).await;
            assert_eq!(response.status(), 202);
        }
    };
    post("m-1", "What are your opening hours?").await;
    let got = bot.wait_for(2).await;
    assert_eq!(types(&got), ["conversation.created", "message.received"]);
    let created = event_of(&got[0]);
    let conversation = created["data"]["conversation"].clone();
    let id = conversation["id"].as_str().unwrap().to_owned();
    assert_eq!(conversation["status"], "bot");
    assert_eq!(conversation["agent_id"], "bot:faq");
    let received = event_of(&got[1]);
    assert_eq!(received["data"]["agent_id"], "bot:faq");
    assert_eq!(
        received["data"]["message"]["content"]["text"],
        "What are your opening hours?"
    );
    // Ann has room in the pool, but the bot holds the conversation.
    let (_, held) = server.get_json("/v1/agents/ann/conversations").await;
    assert_eq!(held["conversations"], json!([]));

    // The bot answers as its agent; the app backend gets the reply.
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{id}/messages"),
            json!({"agent_id": "bot:faq", "content": {"type": "text", "text": "9 to 5, Monday to Friday."}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let replies = app_backend.wait_for(1).await;
    let reply: Value = serde_json::from_slice(&replies[0].body).unwrap();
    assert_eq!(reply["agent_id"], "bot:faq");
    assert_eq!(reply["content"]["text"], "9 to 5, Monday to Friday.");

    // The customer asks for a person; the bot hears it and hands off.
    post("m-2", "Can I talk to a person?").await;
    let got = bot.wait_for(3).await;
    assert_eq!(
        event_of(&got[2])["data"]["message"]["content"]["text"],
        "Can I talk to a person?"
    );
    // A hand-over context that breaks a rule is refused, naming the key, and changes nothing.
    for (handover, code, key) in [
        (json!({}), "invalid", "`handover` gives nothing"),
        (
            json!({"summary": "x".repeat(4001)}),
            "invalid",
            "`handover.summary`",
        ),
        (
            json!({"slots": {"order": {"id": 1}}}),
            "malformed",
            "handover.slots.order",
        ),
        (
            json!({"language": "english!"}),
            "invalid",
            "`handover.language`",
        ),
        (json!({"mood": "sad"}), "malformed", "handover"),
    ] {
        let (status, body) = server
            .send_json(
                "POST",
                &format!("/v1/conversations/{id}/transfer"),
                json!({"pool": "humans", "by_agent_id": "bot:faq", "handover": handover}),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{handover}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(key), "{handover}: `{message}` names {key}");
    }
    let (_, still) = server.get_json(&format!("/v1/conversations/{id}")).await;
    assert_eq!(
        (&still["status"], &still["handover"]),
        (&json!("bot"), &Value::Null),
        "a refused hand-over changes nothing"
    );

    // The bot hands off with what it learned; whoever takes the conversation sees it.
    let context = json!({
        "summary": "Wants to speak to a person about opening hours on holidays.",
        "intent": "opening_hours",
        "sentiment": "neutral",
        "language": "en",
        "slots": {"store": "Shanghai-2", "holiday": true, "party_size": 4},
        "transcript_url": "https://bot.example.com/transcripts/m-2"
    });
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{id}/transfer"),
            json!({"pool": "humans", "by_agent_id": "bot:faq", "handover": context}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let handover = body["handover"].clone();
    assert_eq!(handover["by"], "bot:faq", "{body}");
    assert!(handover["at"].is_string(), "{body}");
    let mut given = handover.clone();
    let given = given.as_object_mut().unwrap();
    given.remove("by");
    given.remove("at");
    assert_eq!(Value::Object(given.clone()), context, "kept as given");
    let held = eventually(|| async {
        let (_, held) = server.get_json("/v1/agents/ann/conversations").await;
        let list = held["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(held[0]["id"], id.as_str());
    assert_eq!(held[0]["status"], "assigned");
    assert_eq!(held[0]["handover"], handover, "Ann sees the hand-over");
    // The bot is told the conversation left it: its own hand-off, as the one it left.
    let got = bot.wait_for(4).await;
    let handed_off = event_of(&got[3]);
    assert_eq!(handed_off["type"], "io.switchyard.conversation.transferred");
    assert_eq!(handed_off["data"]["from_agent_id"], "bot:faq");
    assert_eq!(handed_off["data"]["conversation"]["pool"], "humans");

    // From now on the conversation is Ann's: the bot is sent nothing more of it.
    post("m-3", "Hello Ann").await;
    eventually(|| async {
        let (_, c) = server.get_json(&format!("/v1/conversations/{id}")).await;
        (c["messages"].as_array().map(Vec::len) == Some(4)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        bot.received.lock().unwrap().len(),
        4,
        "the bot heard Ann's part"
    );

    // Ann hands the conversation back to the bot, saying what to do next: the bot is told it
    // holds it again (with the hand-over), hears the next message, and Ann is freed.
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{id}/transfer"),
            json!({"bot": "faq", "by_agent_id": "ann",
                   "handover": {"intent": "csat_survey", "summary": "Solved; ask how we did."}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["status"], &body["agent_id"], &body["pool"]),
        (&json!("bot"), &json!("bot:faq"), &json!("default")),
        "{body}"
    );
    let got = bot.wait_for(5).await;
    let back = event_of(&got[4]);
    assert_eq!(back["type"], "io.switchyard.conversation.transferred");
    assert_eq!(back["data"]["from_agent_id"], "ann");
    assert_eq!(back["data"]["conversation"]["agent_id"], "bot:faq");
    assert_eq!(
        back["data"]["conversation"]["handover"]["intent"],
        "csat_survey"
    );
    server.held_by("ann", 0).await;
    post("m-4", "It works now, thanks!").await;
    let got = bot.wait_for(6).await;
    assert_eq!(
        event_of(&got[5])["data"]["message"]["content"]["text"],
        "It works now, thanks!"
    );
    // A bot nobody configured, or the bot holding it already, is refused.
    for (target, expected) in [
        (json!({"bot": "nobody"}), (404, "not_found")),
        (json!({"bot": "faq"}), (409, "already_assigned")),
        (json!({"bot": "faq", "pool": "humans"}), (400, "invalid")),
    ] {
        let (status, body) = server
            .send_json("POST", &format!("/v1/conversations/{id}/transfer"), target)
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap_or_default()),
            expected,
            "{body}"
        );
    }

    // The event stream says who handed the conversation on each time: the bot, then Ann.
    let transfers = stream.wait_for(2).await;
    let from: Vec<Value> = transfers
        .iter()
        .map(|r| signed_cloud_event(r, STREAM_SECRET)["data"]["from_agent_id"].clone())
        .collect();
    assert_eq!(from, [json!("bot:faq"), json!("ann")]);

    // Every transfer is counted by who asked, where it went and whether it said why.
    for (series, count) in [
        (
            r#"switchyard_transfers_total{from="bot",handover="true",pool="humans",to="pool"}"#,
            1.0,
        ),
        (
            r#"switchyard_transfers_total{from="agent",handover="true",pool="default",to="bot"}"#,
            1.0,
        ),
    ] {
        assert_eq!(server.metric(series).await, count, "{series}");
    }

    // Closed while the bot holds it (here by an administrator): the bot is told, as the one
    // who held it, and hears nothing more of it.
    let (status, body) = server
        .send_json("POST", &format!("/v1/conversations/{id}/close"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let got = bot.wait_for(7).await;
    let closed = event_of(&got[6]);
    assert_eq!(closed["type"], "io.switchyard.conversation.closed");
    assert_eq!(closed["data"]["agent_id"], "bot:faq");
    assert_eq!(closed["data"]["conversation"]["id"], id.as_str());
    assert_eq!(closed["data"]["conversation"]["status"], "closed");

    // The customer writes again: a new conversation, the bot's. Handed to Ann and then back to
    // the bot in the other pool it serves, it goes to that pool; a pool that is not the bot's
    // is refused.
    post("m-5", "One more question").await;
    let again = eventually(|| async {
        let (_, c) = server
            .get_json("/v1/customers?identity=app_user:shop:42")
            .await;
        let id = c["id"].as_str()?.to_owned();
        let (_, list) = server
            .get_json(&format!("/v1/customers/{id}/conversations?status=open"))
            .await;
        list["conversations"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{again}/transfer"),
            json!({"agent_id": "ann"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{again}/transfer"),
            json!({"bot": "faq", "pool": "humans", "by_agent_id": "ann"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("its pools: default, vip"),
        "{body}"
    );
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{again}/transfer"),
            json!({"bot": "faq", "pool": "vip", "by_agent_id": "ann"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["status"], &body["agent_id"], &body["pool"]),
        (&json!("bot"), &json!("bot:faq"), &json!("vip")),
        "{body}"
    );

    // Bots are not agent records.
    let (status, body) = server
        .send_json(
            "PUT",
            "/v1/agents/bot:faq",
            json!({"name": "Impostor", "pools": ["default"], "capacity": 5, "status": "online"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("reserved_agent_id")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_bot_hands_off_after_the_pool_timeout() {
    let bot = Callback::start().await;
    let app_backend = Callback::start().await;
    let config = config(&bot.url, &app_backend.url).replace(
        "id = \"default\"\nbot = \"faq\"\n",
        "id = \"default\"\nbot = \"faq\"\nbot_timeout_secs = 1\n",
    );
    let server = Server::start(&config).await;
    let (status, body) = server
        .send_json(
            "PUT",
            "/v1/agents/ann",
            json!({"name": "Ann", "pools": ["default"], "capacity": 5, "status": "online"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let response = server
        .post_signed("shop", &api_message("m-1", "7", "Anyone there?", &[]))
        .await;
    assert_eq!(response.status(), 202);
    let got = bot.wait_for(1).await;
    let id = event_of(&got[0])["data"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, c) = server.get_json(&format!("/v1/conversations/{id}")).await;
    assert_eq!(c["status"], "bot", "held by the bot at first");

    // The bot says nothing: after the timeout (swept every second) Ann has it.
    let conversation = eventually(|| async {
        let (_, c) = server.get_json(&format!("/v1/conversations/{id}")).await;
        (c["status"] == "assigned").then_some(c)
    })
    .await;
    assert_eq!(conversation["agent_id"], "ann");
    assert_eq!(conversation["pool"], "default");
    // The bot is told the conversation left it, as if it had handed it off.
    let got = bot.wait_for(3).await;
    assert_eq!(
        types(&got),
        [
            "conversation.created",
            "message.received",
            "conversation.transferred"
        ]
    );
    let timed_out = event_of(&got[2]);
    assert_eq!(timed_out["data"]["from_agent_id"], "bot:faq");
    assert_eq!(timed_out["data"]["conversation"]["status"], "queued");
    assert_eq!(
        server
            .metric_once(r#"switchyard_bot_timeouts_total{pool="default"}"#, 1.0)
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric(
                r#"switchyard_transfers_total{from="bot",handover="false",pool="default",to="pool"}"#
            )
            .await,
        1.0,
        "a timeout is the bot's hand-off"
    );
    server.stop().await;
}
