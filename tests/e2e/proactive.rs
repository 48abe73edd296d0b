//! An agent writes first to a known customer (`POST /v1/customers/{id}/messages`): on WhatsApp,
//! to a customer whose earlier conversation is closed, free text is refused (no 24 h window is
//! open) and an approved template reaches a fake Graph API exactly as WhatsApp expects it; on
//! the API channel the app backend receives the signed outbound envelope. Each time the agent's
//! console is told of the new conversation, it is on the agent's list, and the customer's
//! answer lands in it. The agent WebSocket's `write_first` does the same.

use serde_json::{Value, json};
use switchyard_connectors::signature::verify_switchyard_signature;
use switchyard_connectors::whatsapp::webhook_signature;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{Callback, SECRET, Server, Ws, api_message, eventually};

const APP_SECRET: &str = "whatsapp-app-secret-proactive";
const PHONE_NUMBER_ID: &str = "106540352242922";
const ACCESS_TOKEN: &str = "EAAG-proactive-token";
const CUSTOMER: &str = "4915112345678";

/// A WhatsApp `messages` notification of one text message from [`CUSTOMER`].
fn whatsapp_message(wamid: &str, text: &str) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"{PHONE_NUMBER_ID}"}},"contacts":[{{"profile":{{"name":"Jonas"}},"wa_id":"{CUSTOMER}"}}],"messages":[{{"from":"{CUSTOMER}","id":"{wamid}","timestamp":"1795510798","type":"text","text":{{"body":"{text}"}}}}]}},"field":"messages"}}]}}]}}"#
    )
}

async fn post_whatsapp(server: &Server, body: &str) {
    let status = server
        .http
        .post(server.url("/v1/channels/wa/webhook"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            webhook_signature(APP_SECRET, body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

/// The agent console is given a conversation the customer opened; the agent closes it.
async fn assigned_then_closed(server: &Server, agent: &mut Ws) -> String {
    let assigned = agent.recv_type("assigned").await;
    let id = assigned["conversation"]["id"].as_str().unwrap().to_owned();
    let (status, body) = server
        .send_json(
            "POST",
            &format!("/v1/conversations/{id}/close"),
            json!({"agent_id": "a1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    agent.recv_type("unassigned").await;
    id
}

async fn customer_with(server: &Server, identity: &str) -> String {
    let (status, customer) = server
        .get_json(&format!("/v1/customers?identity={identity}"))
        .await;
    assert_eq!(status, 200, "{customer}");
    customer["id"].as_str().unwrap().to_owned()
}

async fn held_by_a1(server: &Server) -> Vec<String> {
    let (status, held) = server.get_json("/v1/agents/a1/conversations").await;
    assert_eq!(status, 200, "{held}");
    held["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_writes_first_on_whatsapp_with_a_template_and_on_the_api_channel() {
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
                "name": "order_shipped",
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
            "messages": [{"id": "wamid.PROACTIVE-1"}]
        })))
        .expect(1)
        .mount(&graph)
        .await;
    let callback = Callback::start().await;
    let server = Server::start(&format!(
        "[[channels]]\nid = \"wa\"\nkind = \"whatsapp\"\napp_secret = \"{APP_SECRET}\"\n\
         verify_token = \"verify\"\nphone_number_id = \"{PHONE_NUMBER_ID}\"\n\
         access_token = \"{ACCESS_TOKEN}\"\napi_base = \"{}\"\n\
         [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\n\
         callback_url = \"{}\"\n",
        graph.uri(),
        callback.url
    ))
    .await;
    let mut agent = Ws::connect(&format!("ws://{}/v1/agents/ws", server.addr)).await;
    agent
        .send(json!({"type": "hello", "agent_id": "a1", "capacity": 3}))
        .await;
    agent.recv_type("welcome").await;

    // The WhatsApp customer is known from an earlier conversation, closed since.
    post_whatsapp(
        &server,
        &whatsapp_message("wamid.IN-1", "Wo bleibt mein Paket?"),
    )
    .await;
    let earlier = assigned_then_closed(&server, &mut agent).await;
    let jonas = customer_with(&server, &format!("whatsapp_wa_id::{CUSTOMER}")).await;
    let write = |customer: &str, channel: &str, content: Value| {
        let path = format!("/v1/customers/{customer}/messages");
        let body = json!({"agent_id": "a1", "channel_id": channel, "content": content});
        let server = &server;
        async move { server.send_json("POST", &path, body).await }
    };

    // Free text cannot start a WhatsApp conversation: no 24 h window is open.
    let (status, body) = write(
        &jonas,
        "wa",
        json!({"type": "text", "text": "Ihr Paket ist unterwegs"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "reply_window_closed");
    assert!(
        held_by_a1(&server).await.is_empty(),
        "the refusal opened nothing"
    );

    // An approved template does.
    let (status, started) = write(
        &jonas,
        "wa",
        json!({"type": "template", "name": "order_shipped", "language": "de",
               "parameters": ["Jonas", "#1234"]}),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let message_id = started["id"].as_str().unwrap().to_owned();
    let wa_conversation = started["conversation_id"].as_str().unwrap().to_owned();
    assert_ne!(wa_conversation, earlier);
    // The agent's console is told of it, with the template as its first message.
    let assigned = agent.recv_type("assigned").await;
    let conversation = &assigned["conversation"];
    assert_eq!(conversation["id"], wa_conversation.as_str());
    assert_eq!(conversation["status"], "assigned");
    assert_eq!(conversation["agent_id"], "a1");
    assert_eq!(conversation["last_inbound_at"], Value::Null);
    assert_eq!(conversation["messages"][0]["id"], message_id.as_str());
    assert_eq!(conversation["messages"][0]["direction"], "outbound");
    assert_eq!(conversation["messages"][0]["content"]["type"], "template");
    assert_eq!(
        held_by_a1(&server).await,
        std::slice::from_ref(&wa_conversation)
    );
    // The fake Graph API got exactly the template send (checked by the mock's matchers).
    eventually(|| {
        let graph = &graph;
        async move {
            let n = graph.received_requests().await.unwrap_or_default().len();
            (n > 0).then_some(())
        }
    })
    .await;

    // Open now: another first message is refused and names the conversation to reply in.
    let (status, body) = write(
        &jonas,
        "wa",
        json!({"type": "template", "name": "order_shipped", "language": "de",
               "parameters": ["Jonas", "#1234"]}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conversation_open");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&wa_conversation),
        "{body}"
    );

    // The customer answers: the message lands in the conversation the agent started.
    post_whatsapp(&server, &whatsapp_message("wamid.IN-2", "Danke!")).await;
    let live = agent.recv_type("message").await;
    assert_eq!(live["conversation_id"], wa_conversation.as_str());
    assert_eq!(live["message"]["content"]["text"], "Danke!");
    let (_, conv) = server
        .get_json(&format!("/v1/conversations/{wa_conversation}"))
        .await;
    assert_eq!(conv["status"], "assigned");
    assert_eq!(conv["messages"].as_array().unwrap().len(), 2);

    // The API channel: an app user known from a closed conversation gets a signed callback.
    let response = server
        .post_signed("shop", &api_message("m-1", "42", "hi", &[]))
        .await;
    assert_eq!(response.status(), 202);
    assigned_then_closed(&server, &mut agent).await;
    let user = customer_with(&server, "app_user:shop:42").await;
    let (status, body) = write(&user, "wa", json!({"type": "text", "text": "hi"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "no_identity_on_channel");
    let (status, body) = write(&user, "nowhere", json!({"type": "text", "text": "hi"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_channel");
    let (status, body) = write(
        "01NOSUCHCUSTOMER",
        "shop",
        json!({"type": "text", "text": "hi"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");

    let (status, started) = write(
        &user,
        "shop",
        json!({"type": "text", "text": "Your order has shipped"}),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let api_conversation = started["conversation_id"].as_str().unwrap().to_owned();
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
    assert_eq!(outbound["id"], started["id"]);
    assert_eq!(outbound["direction"], "outbound");
    assert_eq!(outbound["channel"], json!({"kind": "api", "id": "shop"}));
    assert_eq!(outbound["sender"]["external_id"], "42");
    assert_eq!(outbound["customer_id"], user.as_str());
    assert_eq!(outbound["conversation_id"], api_conversation.as_str());
    assert_eq!(outbound["agent_id"], "a1");
    assert_eq!(outbound["content"]["text"], "Your order has shipped");
    let assigned = agent.recv_type("assigned").await;
    assert_eq!(assigned["conversation"]["id"], api_conversation.as_str());
    let mut held = held_by_a1(&server).await;
    held.sort();
    let mut want = vec![wa_conversation.clone(), api_conversation.clone()];
    want.sort();
    assert_eq!(held, want, "the agent's list has both");

    // The app user answers in it.
    let response = server
        .post_signed("shop", &api_message("m-2", "42", "thanks", &[]))
        .await;
    assert_eq!(response.status(), 202);
    let live = agent.recv_type("message").await;
    assert_eq!(live["conversation_id"], api_conversation.as_str());

    // Over the agent WebSocket: once the conversation is closed, the agent writes first again.
    agent
        .send(json!({"type": "close", "conversation_id": api_conversation}))
        .await;
    agent.recv_type("unassigned").await;
    agent
        .send(
            json!({"type": "write_first", "client_id": "w-0", "customer_id": user,
                     "channel_id": "wa", "content": {"type": "text", "text": "hi"}}),
        )
        .await;
    let error = agent.recv_type("error").await;
    assert_eq!(error["client_id"], "w-0");
    assert_eq!(error["code"], "no_identity_on_channel");
    agent
        .send(
            json!({"type": "write_first", "client_id": "w-1", "customer_id": user,
                     "channel_id": "shop", "content": {"type": "text", "text": "One more thing"}}),
        )
        .await;
    // The assignment is announced before the command is acknowledged, and the two frames come
    // from different tasks: take them in either order.
    let (mut ack, mut assigned) = (Value::Null, Value::Null);
    while ack.is_null() || assigned.is_null() {
        let frame = agent.recv().await;
        match frame["type"].as_str() {
            Some("ack") => ack = frame,
            Some("assigned") => assigned = frame,
            _ => {}
        }
    }
    assert_eq!(ack["client_id"], "w-1");
    let third = assigned["conversation"]["id"].as_str().unwrap().to_owned();
    assert_ne!(third, api_conversation);
    assert_eq!(assigned["conversation"]["messages"][0]["id"], ack["id"]);
    let received = callback.wait_for(2).await;
    let outbound: Value = serde_json::from_slice(&received[1].body).unwrap();
    assert_eq!(outbound["id"], ack["id"]);
    assert_eq!(outbound["conversation_id"], third.as_str());

    agent.close().await;
    server.stop().await;
    graph.verify().await;
}
