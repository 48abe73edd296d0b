//! Erasing a customer through `DELETE /v1/customers/{id}`, on the real server: only an `admin`
//! key may; the open conversation is closed first (its agent is told, reason `erased`), then
//! the profile, its identities and its conversations are gone, and the person writing again is
//! a new customer.

use serde_json::json;

use crate::support::{SECRET, Server, Ws, api_message};

const ADMIN: &str = "k-admin-0123456789";
const AGENT: &str = "k-agent-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_erases_a_customer_and_the_person_comes_back_as_new() {
    let server = Server::start(&format!(
        "[[auth.api_keys]]\nname = \"ops\"\nkey = \"{ADMIN}\"\nscopes = [\"admin\"]\n\
         [[auth.api_keys]]\nname = \"desk\"\nkey = \"{AGENT}\"\nscopes = [\"agent\"]\n\
         [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\n"
    ))
    .await;
    let mut agent = Ws::connect(&format!(
        "ws://{}/v1/agents/ws?api_key={AGENT}",
        server.addr
    ))
    .await;
    agent
        .send(json!({"type": "hello", "agent_id": "a1", "name": "Ann", "capacity": 2}))
        .await;
    agent.recv_type("welcome").await;

    let phone = "phone::+8613800000042";
    let sent = server
        .post_signed(
            "shop",
            &api_message("m-1", "42", "please forget me", &[phone]),
        )
        .await;
    assert_eq!(sent.status(), 202);
    let assigned = agent.recv_type("assigned").await;
    let conversation = assigned["conversation"]["id"].as_str().unwrap().to_owned();
    let customer = assigned["conversation"]["customer_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let path = format!("/v1/customers/{customer}");
    let (status, body) = server.call_as("DELETE", &path, AGENT, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "an agent key may not erase: {body}"
    );
    let (status, erased) = server.call_as("DELETE", &path, ADMIN, None).await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        erased,
        json!({
            "customer_id": customer,
            "reason": "request",
            "merged_from": [],
            "conversations": [conversation],
        })
    );
    let unassigned = agent.recv_type("unassigned").await;
    assert_eq!(
        (
            unassigned["conversation_id"].as_str(),
            unassigned["reason"].as_str()
        ),
        (Some(conversation.as_str()), Some("erased")),
        "{unassigned}"
    );

    for gone in [
        path.clone(),
        format!("/v1/customers?identity={}", phone.replace('+', "%2B")),
        format!("/v1/conversations/{conversation}"),
    ] {
        let (status, body) = server.call_as("GET", &gone, ADMIN, None).await;
        assert_eq!(status, 404, "{gone} after the erasure: {body}");
    }
    let (status, body) = server.call_as("DELETE", &path, ADMIN, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(
        server
            .metric("switchyard_customers_erased_total{reason=\"request\"}")
            .await,
        1.0
    );

    // The same person writes again: a new profile and a new conversation.
    let again = server
        .post_signed("shop", &api_message("m-2", "42", "hello again", &[phone]))
        .await;
    assert_eq!(again.status(), 202);
    let reassigned = agent.recv_type("assigned").await;
    let new_customer = reassigned["conversation"]["customer_id"].as_str().unwrap();
    assert_ne!(new_customer, customer);
    assert_ne!(reassigned["conversation"]["id"], conversation.as_str());
    agent.close().await;
    server.stop().await;
}
