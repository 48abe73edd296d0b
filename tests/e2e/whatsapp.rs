//! WhatsApp Cloud API through the real HTTP ingress: the dashboard's verification GET is
//! answered with the challenge, a signed message reaches an agent (Meta's retry and a
//! statuses-only callback are acknowledged but not routed), the agent's reply reaches a fake
//! Graph API exactly as WhatsApp expects it, and when a later signed webhook reports that reply
//! `failed`, `message.failed` reaches a helpdesk webhook and the agent who wrote it. An approved
//! template sent over REST reaches the fake Graph API as a template send.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_connectors::whatsapp::webhook_signature;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{Callback, Received, Server, Ws, eventually, signed_cloud_event};

const APP_SECRET: &str = "whatsapp-app-secret-e2e";
const VERIFY_TOKEN: &str = "wa-verify-e2e";
const PHONE_NUMBER_ID: &str = "106540352242922";
const ACCESS_TOKEN: &str = "EAAG-e2e-system-user-token";
const CUSTOMER: &str = "4915112345678";
const WAMID: &str = "wamid.HBgNNDkxNTExMjM0NTY3OBUCABIYFjNFQjBFMkUwMDAwMDAwMDAwMDAwMQA=";
/// The wamid the fake Graph API answers for the agent's reply.
const REPLY_WAMID: &str = "wamid.OUT-e2e-1";
const HOOK_SECRET: &str = "helpdesk-webhook-secret-wa-e2e";

async fn post(server: &Server, body: &str, signature: &str) -> u16 {
    server
        .http
        .post(server.url("/v1/channels/wa/webhook"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn post_signed(server: &Server, body: &str) -> u16 {
    post(
        server,
        body,
        &webhook_signature(APP_SECRET, body.as_bytes()),
    )
    .await
}

/// The CloudEvents a helpdesk webhook got of `kind` (`message.sent`, ...), signature checked.
fn events_of(requests: &[Received], kind: &str) -> Vec<Value> {
    requests
        .iter()
        .map(|r| signed_cloud_event(r, HOOK_SECRET))
        .filter(|e| e["type"] == format!("io.switchyard.{kind}"))
        .collect()
}

/// A `messages` notification as Meta sends it (compact, non-ASCII escaped).
fn notification(value: &str) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"{PHONE_NUMBER_ID}"}}{value}}},"field":"messages"}}]}}]}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_verification_message_and_reply_through_the_ingress() {
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/{PHONE_NUMBER_ID}/messages")))
        .and(header(
            "authorization",
            format!("Bearer {ACCESS_TOKEN}").as_str(),
        ))
        .and(body_json(json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": CUSTOMER,
            "type": "text",
            "text": {"body": "Hallo Jonas, Ihr Paket kommt morgen."}
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": CUSTOMER, "wa_id": CUSTOMER}],
            "messages": [{"id": REPLY_WAMID}]
        })))
        .expect(1)
        .mount(&graph)
        .await;
    let helpdesk = Callback::start().await;
    let server = Server::start(&format!(
        "[[channels]]\nid = \"wa\"\nkind = \"whatsapp\"\napp_secret = \"{APP_SECRET}\"\n\
         verify_token = \"{VERIFY_TOKEN}\"\nphone_number_id = \"{PHONE_NUMBER_ID}\"\n\
         access_token = \"{ACCESS_TOKEN}\"\napi_base = \"{}\"\n\
         [[webhooks]]\nid = \"helpdesk\"\nurl = \"{}\"\nsecret = \"{HOOK_SECRET}\"\n\
         events = [\"message.sent\", \"message.failed\"]\n",
        graph.uri(),
        helpdesk.url
    ))
    .await;
    let mut agent = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    agent
        .send(json!({"type": "hello", "agent_id": "wa-agent", "capacity": 2}))
        .await;
    agent.recv_type("welcome").await;

    // The dashboard's verification.
    let verify = |token: &str| {
        server.http.get(server.url(&format!(
            "/v1/channels/wa/webhook?hub.mode=subscribe&hub.verify_token={token}\
             &hub.challenge=1158201444"
        )))
    };
    let r = verify(VERIFY_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.text().await.unwrap(), "1158201444");
    assert_eq!(verify("wrong").send().await.unwrap().status(), 401);

    // A customer's message, then Meta's retry of it.
    let message = notification(&format!(
        r#","contacts":[{{"profile":{{"name":"Jonas"}},"wa_id":"{CUSTOMER}"}}],"messages":[{{"from":"{CUSTOMER}","id":"{WAMID}","timestamp":"1795510798","type":"text","text":{{"body":"Wo bleibt mein Paket? \ud83d\udce6"}}}}]"#
    ));
    assert_eq!(post_signed(&server, &message).await, 200);
    assert_eq!(
        post_signed(&server, &message).await,
        200,
        "Meta's retry is acknowledged"
    );
    // Delivery reports route nothing but are acknowledged.
    let statuses = notification(&format!(
        r#","statuses":[{{"id":"wamid.OUT-0","status":"read","timestamp":"1795510799","recipient_id":"{CUSTOMER}"}}]"#
    ));
    assert_eq!(post_signed(&server, &statuses).await, 200);
    // A forged request is refused.
    assert_eq!(
        post(&server, &message, &format!("sha256={}", "0".repeat(64))).await,
        401
    );

    let assigned = agent.recv_type("assigned").await;
    let conversation = &assigned["conversation"];
    assert_eq!(
        conversation["channel"],
        json!({"kind": "whatsapp", "id": "wa"})
    );
    assert_eq!(
        conversation["messages"][0]["content"]["text"],
        "Wo bleibt mein Paket? 📦"
    );
    assert_eq!(
        conversation["messages"][0]["sender"]["display_name"],
        "Jonas"
    );
    assert_eq!(
        conversation["customer"]["identities"][0]["key"],
        format!("whatsapp_wa_id::{CUSTOMER}")
    );
    let conversation_id = conversation["id"].as_str().unwrap().to_owned();

    // The agent replies; the fake Graph API receives exactly the expected send.
    agent
        .send(
            json!({"type": "reply", "client_id": "r-1", "conversation_id": conversation_id,
                     "content": {"type": "text", "text": "Hallo Jonas, Ihr Paket kommt morgen."}}),
        )
        .await;
    let ack = agent.recv_type("ack").await;
    assert_eq!(ack["client_id"], "r-1");
    let requests = eventually(|| {
        let graph = &graph;
        async move {
            let requests = graph.received_requests().await.unwrap_or_default();
            (!requests.is_empty()).then_some(requests)
        }
    })
    .await;
    let sent: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        sent.get("context"),
        None,
        "replies quote nothing by default"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, conv) = server
        .get_json(&format!("/v1/conversations/{conversation_id}"))
        .await;
    let inbound = conv["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["direction"] == "inbound")
        .count();
    assert_eq!(inbound, 1, "the retry and the statuses were not routed");
    assert_eq!(graph.received_requests().await.unwrap().len(), 1);

    // Meta accepted the reply (`message.sent`), then reports it undeliverable in a later
    // signed webhook: the helpdesk gets `message.failed` for the reply, the agent an error.
    let got = helpdesk
        .wait_until(|got| !events_of(got, "message.sent").is_empty())
        .await;
    let reply = events_of(&got, "message.sent")[0]["data"]["message"].clone();
    assert_eq!(reply["agent_id"], "wa-agent");
    let failed = notification(&format!(
        r#","statuses":[{{"id":"{REPLY_WAMID}","status":"failed","timestamp":"1795510900","recipient_id":"{CUSTOMER}","errors":[{{"code":131026,"title":"Message undeliverable","message":"Message undeliverable","error_data":{{"details":"Unable to deliver message."}}}}]}}]"#
    ));
    assert_eq!(post_signed(&server, &failed).await, 200);
    let got = helpdesk
        .wait_until(|got| !events_of(got, "message.failed").is_empty())
        .await;
    let event = &events_of(&got, "message.failed")[0];
    assert_eq!(event["data"]["code"], "whatsapp_131026");
    assert_eq!(event["data"]["message"]["id"], reply["id"]);
    assert!(
        event["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("Message undeliverable"),
        "{event}"
    );
    let error = agent.recv_type("error").await;
    assert_eq!(error["code"], "delivery_failed");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains(reply["id"].as_str().unwrap()),
        "{error}"
    );
    server.stop().await;
    graph.verify().await;
}

/// An approved template, sent over REST: the channel's rules say templates pass the closed
/// window, a malformed one is refused with 422, and the fake Graph API receives exactly the
/// template send. (The closed window itself, > 24 h after the customer's last message, cannot
/// be reached through the ingress, which records messages at the current time: the router test
/// `reply_window` covers it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatsapp_template_reply_over_rest() {
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/{PHONE_NUMBER_ID}/messages")))
        .and(header(
            "authorization",
            format!("Bearer {ACCESS_TOKEN}").as_str(),
        ))
        .and(body_json(json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": CUSTOMER,
            "type": "template",
            "template": {
                "name": "order_update",
                "language": {"code": "de"},
                "components": [{
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Jonas"},
                        {"type": "text", "text": "#1234"}
                    ]
                }]
            }
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": CUSTOMER, "wa_id": CUSTOMER}],
            "messages": [{"id": "wamid.TPL-e2e-1"}]
        })))
        .expect(1)
        .mount(&graph)
        .await;
    let server = Server::start(&format!(
        "[[channels]]\nid = \"wa\"\nkind = \"whatsapp\"\napp_secret = \"{APP_SECRET}\"\n\
         verify_token = \"{VERIFY_TOKEN}\"\nphone_number_id = \"{PHONE_NUMBER_ID}\"\n\
         access_token = \"{ACCESS_TOKEN}\"\napi_base = \"{}\"\n",
        graph.uri(),
    ))
    .await;
    let (status, rules) = server.get_json("/v1/channels/wa/rules").await;
    assert_eq!(status, 200, "{rules}");
    assert_eq!(rules["rules"]["window_exempt"], json!(["template"]));
    assert!(
        rules["rules"]["content_types"]
            .as_array()
            .unwrap()
            .contains(&json!("template"))
    );

    let mut agent = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    agent
        .send(json!({"type": "hello", "agent_id": "wa-agent", "capacity": 1}))
        .await;
    agent.recv_type("welcome").await;
    let message = notification(&format!(
        r#","contacts":[{{"profile":{{"name":"Jonas"}},"wa_id":"{CUSTOMER}"}}],"messages":[{{"from":"{CUSTOMER}","id":"{WAMID}","timestamp":"1795510798","type":"text","text":{{"body":"Hallo?"}}}}]"#
    ));
    assert_eq!(post_signed(&server, &message).await, 200);
    let assigned = agent.recv_type("assigned").await;
    let conversation_id = assigned["conversation"]["id"].as_str().unwrap().to_owned();
    let reply_path = format!("/v1/conversations/{conversation_id}/messages");

    let (status, body) = server
        .send_json(
            "POST",
            &reply_path,
            json!({"agent_id": "wa-agent", "content": {"type": "template",
                   "name": "order_update", "language": "de", "parameters": ["Jonas"],
                   "components": [{"type": "body", "parameters": []}]}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_template");

    let (status, body) = server
        .send_json(
            "POST",
            &reply_path,
            json!({"agent_id": "wa-agent", "content": {"type": "template",
                   "name": "order_update", "language": "de", "parameters": ["Jonas", "#1234"]}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let requests = eventually(|| {
        let graph = &graph;
        async move {
            let requests = graph.received_requests().await.unwrap_or_default();
            (!requests.is_empty()).then_some(requests)
        }
    })
    .await;
    assert_eq!(requests.len(), 1);
    let (_, conversation) = server
        .get_json(&format!("/v1/conversations/{conversation_id}"))
        .await;
    let recorded = conversation["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["direction"] == "outbound")
        .cloned()
        .unwrap();
    assert_eq!(recorded["content"]["type"], "template");
    assert_eq!(recorded["id"], body["id"]);
    server.stop().await;
    graph.verify().await;
}
