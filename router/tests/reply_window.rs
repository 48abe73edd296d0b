//! Replies after WhatsApp's 24-hour customer service window, through `Operations::reply` with a
//! real WhatsApp channel in the registry: free text is refused (`reply_window_closed`), an
//! approved template goes out. The conversation's last inbound message is recorded 25 hours in
//! the past (the store takes "now" as an argument), which the end-to-end tests cannot do through
//! the HTTP ingress.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_connectors::{ConnectorContext, Registry};
use switchyard_core::bus::{Bus, Deliveries};
use switchyard_core::config::ChannelSettings;
use switchyard_core::conformance::store::{inbound_envelope, key};
use switchyard_core::envelope::{ChannelRef, Content, Direction, Envelope};
use switchyard_core::store::{InboundOutcome, InboundRouting, Placement, ResolveRequest};
use switchyard_router::error::RouteError;
use switchyard_router::operations::Operations;
use switchyard_router::outbox::Outbox;

mod support;
use support::*;

const CUSTOMER: &str = "4915112345678";

/// Commands whose registry holds the WhatsApp channel `wa` (never contacted: replies only go
/// onto the bus here), and a consumer of the `whatsapp` outbound queue they go to.
async fn whatsapp_commands(s: &Setup) -> (Operations, Box<dyn Deliveries>) {
    let outbound = consume_outbound(s, "whatsapp").await;
    let option = |v: &str| serde_json::Value::String(v.to_owned());
    let settings = ChannelSettings {
        id: "wa".into(),
        kind: "whatsapp".into(),
        pool: "default".into(),
        api_base: Some("http://127.0.0.1:9".into()),
        options: BTreeMap::from([
            ("app_secret".to_owned(), option("app-secret")),
            ("verify_token".to_owned(), option("verify")),
            ("phone_number_id".to_owned(), option("106540352242922")),
            ("access_token".to_owned(), option("token")),
        ]),
    };
    let registry = Registry::build(&[settings], &ConnectorContext::new(Arc::clone(&s.store)))
        .expect("registry");
    let bus: Arc<dyn Bus> = s.bus.clone();
    let outbox = Outbox::new(bus, Arc::clone(&s.store), s.metrics.clone());
    let ops = Operations::new(
        Arc::clone(&s.store),
        registry,
        outbox,
        s.metrics.clone(),
        10,
    );
    (ops, outbound)
}

/// The next envelope on the outbound queue.
async fn next_outbound(outbound: &mut Box<dyn Deliveries>) -> Envelope {
    let delivery = tokio::time::timeout(Duration::from_secs(2), outbound.next())
        .await
        .expect("an outbound message in time")
        .expect("the queue is open");
    let envelope = serde_json::from_slice(&delivery.message.body).expect("an envelope");
    delivery.ack().await.expect("ack");
    envelope
}

/// A WhatsApp conversation whose customer last wrote `hours_ago` hours ago.
async fn whatsapp_conversation(s: &Setup, hours_ago: i64) -> String {
    let then = switchyard_core::time::now() - chrono::TimeDelta::hours(hours_ago);
    let channel = ChannelRef {
        kind: "whatsapp".into(),
        id: "wa".into(),
    };
    let mut envelope = inbound_envelope(
        "",
        &channel,
        CUSTOMER,
        vec![key("", "whatsapp_wa_id", "", CUSTOMER)],
        "Wo bleibt mein Paket?",
        then,
    );
    envelope.customer_id = None;
    let outcome = s
        .store
        .route_inbound(InboundRouting {
            envelope: &envelope,
            resolve: ResolveRequest::of_sender(&envelope, false, then),
            claim: format!("routed:{}", envelope.dedupe_key),
            claim_ttl: Duration::from_secs(600),
            placement: Placement::queued("default"),
        })
        .await
        .expect("route");
    match outcome {
        InboundOutcome::Routed { record, .. } => record.conversation.id,
        other => panic!("not routed: {other:?}"),
    }
}

fn template() -> Content {
    Content::Template {
        name: "order_update".into(),
        language: "en_US".into(),
        parameters: vec!["Jonas".into(), "#1234".into()],
        components: None,
    }
}

#[tokio::test]
async fn after_the_window_text_is_refused_and_a_template_goes_out() {
    let s = setup().await;
    let (ops, mut outbound) = whatsapp_commands(&s).await;
    let conversation = whatsapp_conversation(&s, 25).await;

    let refused = ops
        .reply(
            &conversation,
            None,
            Content::Text {
                text: "Hallo Jonas?".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, RouteError::Refused { code: "reply_window_closed", message }
            if message.contains("24 h") && message.contains("only template content")),
        "{refused:?}"
    );

    let sent = ops
        .reply(&conversation, None, template())
        .await
        .expect("a template passes the closed window");
    assert_eq!(sent.direction, Direction::Outbound);
    assert_eq!(sent.channel.kind, "whatsapp");
    assert_eq!(sent.sender.external_id, CUSTOMER);
    assert_eq!(sent.content, template(), "sent as given, never downgraded");
    let queued = next_outbound(&mut outbound).await;
    assert_eq!(
        queued, sent,
        "on its way to the WhatsApp sender, and nothing before it"
    );
}

#[tokio::test]
async fn within_the_window_both_go_out() {
    let s = setup().await;
    let (ops, mut outbound) = whatsapp_commands(&s).await;
    let conversation = whatsapp_conversation(&s, 23).await;
    for content in [
        Content::Text {
            text: "Hallo".into(),
        },
        template(),
    ] {
        let sent = ops
            .reply(&conversation, None, content.clone())
            .await
            .expect("within 24 h");
        assert_eq!(sent.content, content);
        assert_eq!(next_outbound(&mut outbound).await, sent);
    }
}

#[tokio::test]
async fn a_template_with_parameters_and_components_is_refused() {
    let s = setup().await;
    let (ops, _outbound) = whatsapp_commands(&s).await;
    let conversation = whatsapp_conversation(&s, 1).await;
    let both = Content::Template {
        name: "order_update".into(),
        language: "en_US".into(),
        parameters: vec!["Jonas".into()],
        components: Some(vec![serde_json::Map::new()]),
    };
    let refused = ops.reply(&conversation, None, both).await.unwrap_err();
    assert!(
        matches!(
            &refused,
            RouteError::Refused {
                code: "invalid_template",
                ..
            }
        ),
        "{refused:?}"
    );
}
