//! An agent writing first to a customer (`Operations::write_first`, behind
//! `POST /v1/customers/{id}/messages`), on the embedded store and on Redis: the conversation it
//! opens, its events in order, the message on its way to the channel, and each refusal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use switchyard_connectors::{ConnectorContext, Registry};
use switchyard_core::bus::{Bus, Deliveries};
use switchyard_core::config::ChannelSettings;
use switchyard_core::conformance::store::{inbound_envelope, key};
use switchyard_core::envelope::{ChannelRef, Content, Direction, Envelope};
use switchyard_core::model::ConversationStatus;
use switchyard_core::store::{ConversationStart, Note, NoteKind, StoreError};
use switchyard_router::error::RouteError;
use switchyard_router::inbound::Routed;
use switchyard_router::operations::Operations;
use switchyard_router::outbox::Outbox;

#[macro_use]
mod support;
use support::*;

const WA_ID: &str = "4915112345678";

fn settings(id: &str, kind: &str, pool: &str, options: &[(&str, &str)]) -> ChannelSettings {
    ChannelSettings {
        id: id.into(),
        kind: kind.into(),
        pool: pool.into(),
        api_base: Some("http://127.0.0.1:9".into()),
        options: options
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Commands whose registry holds the API channel `shop-app`, the WhatsApp channel `wa` (in
/// pool `support`) and the Douyin channel `dy`, with consumers of the `api` and `whatsapp`
/// outbound queues (nothing is sent to the platforms here: messages only go onto the bus).
async fn commands_with_channels(s: &Setup) -> (Operations, Outbox, Outbound) {
    let outbound = Outbound {
        api: consume_outbound(s, "api").await,
        whatsapp: consume_outbound(s, "whatsapp").await,
    };
    let channels = [
        settings(
            "shop-app",
            "api",
            "default",
            &[("secret", "0123456789abcdef0123")],
        ),
        settings(
            "wa",
            "whatsapp",
            "support",
            &[
                ("app_secret", "app-secret"),
                ("verify_token", "verify"),
                ("phone_number_id", "106540352242922"),
                ("access_token", "token"),
            ],
        ),
        settings(
            "dy",
            "douyin",
            "default",
            &[("client_key", "ck"), ("client_secret", "cs")],
        ),
    ];
    let registry =
        Registry::build(&channels, &ConnectorContext::new(Arc::clone(&s.store))).expect("registry");
    let bus: Arc<dyn Bus> = s.bus.clone();
    let outbox = Outbox::new(bus, Arc::clone(&s.store), s.metrics.clone());
    let ops = Operations::new(
        Arc::clone(&s.store),
        registry,
        outbox.clone(),
        s.metrics.clone(),
        10,
    )
    .with_channel_pools(
        channels
            .iter()
            .map(|c| (c.id.clone(), c.pool.clone()))
            .collect::<HashMap<_, _>>(),
    );
    (ops, outbox, outbound)
}

struct Outbound {
    api: Box<dyn Deliveries>,
    whatsapp: Box<dyn Deliveries>,
}

/// The next envelope on an outbound queue.
async fn next_outbound(queue: &mut Box<dyn Deliveries>) -> Envelope {
    let delivery = tokio::time::timeout(Duration::from_secs(2), queue.next())
        .await
        .expect("an outbound message in time")
        .expect("the queue is open");
    let envelope = serde_json::from_slice(&delivery.message.body).expect("an envelope");
    delivery.ack().await.expect("ack");
    envelope
}

/// Whether an outbound queue stays empty for a moment.
async fn nothing_on(queue: &mut Box<dyn Deliveries>) -> bool {
    tokio::time::timeout(Duration::from_millis(200), queue.next())
        .await
        .is_err()
}

/// The customer of app user `user`, known from a conversation closed since.
async fn known_app_user(s: &Setup, ops: &Operations, user: &str) -> String {
    let earlier = conversation_of(s, user).await;
    ops.close(&earlier, None).await.expect("close");
    customer_of(s, &earlier).await
}

/// The customer of WhatsApp user [`WA_ID`], known from a conversation closed since.
async fn known_on_whatsapp(s: &Setup, ops: &Operations) -> String {
    let channel = ChannelRef {
        kind: "whatsapp".into(),
        id: "wa".into(),
    };
    let mut envelope = inbound_envelope(
        "",
        &channel,
        WA_ID,
        vec![key("", "whatsapp_wa_id", "", WA_ID)],
        "Wo bleibt mein Paket?",
        switchyard_core::time::now(),
    );
    envelope.customer_id = None;
    let Routed::Recorded(earlier) = s.router.route(envelope).await.expect("route") else {
        panic!("not recorded");
    };
    ops.close(&earlier, None).await.expect("close");
    customer_of(s, &earlier).await
}

fn text(t: &str) -> Content {
    Content::Text { text: t.into() }
}

fn template() -> Content {
    Content::Template {
        name: "order_update".into(),
        language: "en_US".into(),
        parameters: vec!["Jonas".into(), "#1234".into()],
        components: None,
    }
}

fn refusal_code(e: &RouteError) -> Option<&'static str> {
    match e {
        RouteError::Refused { code, .. } => Some(code),
        RouteError::Store(StoreError::Conflict { code, .. }) => Some(code),
        _ => None,
    }
}

/// The agent writes first on the API channel: the conversation opens assigned to the agent,
/// `conversation.created` then `conversation.assigned` are published (and nothing else), the
/// message goes onto the channel's outbound queue, and the customer's next message lands in it.
async fn writing_first_opens_an_assigned_conversation_and_announces_it(mut s: Setup) {
    let (ops, _, mut outbound) = commands_with_channels(&s).await;
    let customer = known_app_user(&s, &ops, "u-1").await;
    drain(&mut s.events).await;
    let opened = || {
        s.metrics
            .conversations_opened
            .with_label_values(&["default", ""])
            .get()
    };
    let opened_before = opened();

    let started = ops
        .write_first(&customer, "a1", "shop-app", text("Your order has shipped"))
        .await
        .expect("write first");
    assert_eq!(opened(), opened_before + 1, "counted as opened in its pool");
    let c = &started.conversation;
    assert_eq!(c.status, ConversationStatus::Assigned);
    assert_eq!(c.agent_id.as_deref(), Some("a1"));
    assert_eq!(c.customer_id, customer);
    assert_eq!(c.pool, "default");
    assert_eq!(c.channel.id, "shop-app");
    assert_eq!(c.recipient.external_id, "u-1");
    assert_eq!(c.last_inbound_at, None);
    let e = &started.envelope;
    assert_eq!(e.direction, Direction::Outbound);
    assert_eq!(e.conversation_id.as_deref(), Some(c.id.as_str()));
    assert_eq!(e.customer_id.as_deref(), Some(customer.as_str()));
    assert_eq!(e.agent_id.as_deref(), Some("a1"));
    assert_eq!(e.reply_to, None);
    assert_eq!(e.sender, c.recipient);

    let published = drain_conversations(&mut s.events).await;
    let kinds: Vec<(&str, &str)> = published
        .iter()
        .map(|(k, conv, _)| (k.as_str(), conv.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("conversation.created", c.id.as_str()),
            ("conversation.assigned", c.id.as_str()),
        ]
    );
    assert_eq!(next_outbound(&mut outbound.api).await, *e);
    let left = s
        .store
        .unannounced(switchyard_core::time::now() + chrono::TimeDelta::days(1))
        .await
        .unwrap();
    assert!(left.is_empty(), "announced, so no note is left: {left:?}");
    let held: Vec<String> = s
        .store
        .agent_conversations("a1")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        held,
        std::slice::from_ref(&c.id),
        "the agent's conversation list"
    );

    // The customer answers: same conversation, still with a1.
    assert_eq!(conversation_of(&s, "u-1").await, c.id);
    let after = s.store.conversation(&c.id).await.unwrap().unwrap();
    assert_eq!(after.status, ConversationStatus::Assigned);
    assert_eq!(after.message_count, 2);
}

/// WhatsApp: a conversation the agent starts has no 24 h window open, so free text is refused
/// and a template goes out, in the channel's pool, addressed to the wa_id.
async fn on_whatsapp_only_a_template_starts_a_conversation(mut s: Setup) {
    let (ops, _, mut outbound) = commands_with_channels(&s).await;
    let customer = known_on_whatsapp(&s, &ops).await;
    drain(&mut s.events).await;
    let refused = ops
        .write_first(&customer, "a1", "wa", text("Hallo Jonas"))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, RouteError::Refused { code: "reply_window_closed", message }
            if message.contains("template")),
        "{refused:?}"
    );
    assert!(
        s.store
            .open_conversation(&customer)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        drain(&mut s.events).await.is_empty(),
        "a refusal announces nothing"
    );
    assert!(nothing_on(&mut outbound.whatsapp).await);

    let started = ops
        .write_first(&customer, "a1", "wa", template())
        .await
        .expect("a template");
    assert_eq!(started.conversation.pool, "support", "the channel's pool");
    assert_eq!(started.envelope.sender.external_id, WA_ID);
    assert_eq!(started.envelope.content, template());
    assert_eq!(
        next_outbound(&mut outbound.whatsapp).await,
        started.envelope
    );
    assert_eq!(
        types(&drain(&mut s.events).await),
        ["conversation.created", "conversation.assigned"]
    );
}

/// Every refusal: unknown customer, unknown channel, a channel that cannot start conversations,
/// no identity on the channel, an open conversation (named), an agent at capacity, an unknown
/// agent, empty text and a malformed template. None opens anything or sends anything.
async fn each_refusal_changes_nothing(mut s: Setup) {
    let (ops, _, mut outbound) = commands_with_channels(&s).await;
    let customer = known_app_user(&s, &ops, "u-1").await;
    drain(&mut s.events).await;
    let refuse = async |customer: &str, agent: &str, channel: &str, content: Content| {
        ops.write_first(customer, agent, channel, content)
            .await
            .unwrap_err()
    };

    let unknown = refuse("nobody", "a1", "shop-app", text("hi")).await;
    assert!(
        matches!(
            &unknown,
            RouteError::Store(StoreError::NotFound {
                kind: "customer",
                ..
            })
        ),
        "{unknown:?}"
    );
    for (channel, content, code) in [
        ("nowhere", text("hi"), "unknown_channel"),
        ("dy", text("hi"), "channel_cannot_start_conversations"),
        ("wa", template(), "no_identity_on_channel"),
        ("shop-app", text("  "), "empty_reply"),
        (
            "shop-app",
            Content::Template {
                name: String::new(),
                language: "en_US".into(),
                parameters: Vec::new(),
                components: None,
            },
            "invalid_template",
        ),
    ] {
        let e = refuse(&customer, "a1", channel, content).await;
        assert_eq!(refusal_code(&e), Some(code), "{channel}: {e:?}");
    }
    let no_agent = refuse(&customer, "ghost", "shop-app", text("hi")).await;
    assert!(
        matches!(
            &no_agent,
            RouteError::Store(StoreError::NotFound { kind: "agent", .. })
        ),
        "{no_agent:?}"
    );
    set_capacity(&s.store, 1).await;
    let busy = conversation_of(&s, "u-2").await;
    let full = refuse(&customer, "a1", "shop-app", text("hi")).await;
    assert_eq!(refusal_code(&full), Some("agent_at_capacity"), "{full:?}");
    assert!(
        s.store
            .open_conversation(&customer)
            .await
            .unwrap()
            .is_none()
    );
    drain(&mut s.events).await;
    assert!(nothing_on(&mut outbound.api).await, "nothing sent");

    // u-2 has an open conversation: the agent is told to reply in it.
    let customer2 = customer_of(&s, &busy).await;
    let open = refuse(&customer2, "a1", "shop-app", text("hi")).await;
    assert_eq!(refusal_code(&open), Some("conversation_open"), "{open:?}");
    assert!(open.to_string().contains(&busy), "names it: {open}");
    assert_eq!(
        s.store.agent_conversations("a1").await.unwrap().len(),
        1,
        "nothing assigned by the refusals"
    );
    assert!(drain(&mut s.events).await.is_empty(), "nothing announced");
}

/// A merged-away customer id opens the conversation of the profile it was merged into.
async fn a_merged_away_id_writes_to_the_survivor(s: Setup) {
    let (ops, _, mut outbound) = commands_with_channels(&s).await;
    let older = known_app_user(&s, &ops, "u-old").await;
    let younger = known_app_user(&s, &ops, "u-young").await;
    ops.merge_customers(&older, &younger).await.expect("merge");
    let started = ops
        .write_first(&younger, "a1", "shop-app", text("hello again"))
        .await
        .expect("write first");
    assert_eq!(started.conversation.customer_id, older);
    assert_eq!(
        next_outbound(&mut outbound.api)
            .await
            .customer_id
            .as_deref(),
        Some(older.as_str())
    );
}

/// A command that stops after the store opened the conversation, before its events are out:
/// the republisher announces `conversation.created` and `conversation.assigned` from the note.
async fn an_unannounced_start_is_announced_by_the_republisher(mut s: Setup) {
    let (ops, _, _) = commands_with_channels(&s).await;
    let customer = known_app_user(&s, &ops, "u-1").await;
    drain(&mut s.events).await;
    let now = switchyard_core::time::now();
    let conversation_id = switchyard_core::envelope::new_id();
    let recipient = switchyard_core::envelope::Sender {
        external_id: "u-1".into(),
        scope: "shop-app".into(),
        display_name: None,
        identities: vec![key("", "app_user", "shop-app", "u-1")],
    };
    let first = switchyard_core::conformance::store::first_outbound_envelope(
        &customer,
        &conversation_id,
        &ChannelRef {
            kind: "api".into(),
            id: "shop-app".into(),
        },
        &recipient,
        "a1",
        now,
    );
    let c = s
        .store
        .start_conversation(ConversationStart {
            envelope: &first,
            agent_id: "a1",
            pool: "default",
            remember_agent: false,
            stage: None,
            now,
        })
        .await
        .expect("start");
    assert_eq!(
        s.store
            .unannounced(now + chrono::TimeDelta::seconds(1))
            .await
            .unwrap(),
        [Note::new(NoteKind::Started, &c.id, now)]
    );
    let bus: Arc<dyn Bus> = s.bus.clone();
    let republisher =
        Outbox::new(bus, Arc::clone(&s.store), s.metrics.clone()).with_staged_grace(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(5)).await;
    republisher.republish().await.expect("republish");
    let published = drain_conversations(&mut s.events).await;
    let kinds: Vec<(&str, &str)> = published
        .iter()
        .map(|(k, conv, _)| (k.as_str(), conv.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("conversation.created", c.id.as_str()),
            ("conversation.assigned", c.id.as_str()),
        ]
    );
    assert!(
        s.store
            .unannounced(switchyard_core::time::now())
            .await
            .unwrap()
            .is_empty()
    );
}

on_both_stores!(
    writing_first_opens_an_assigned_conversation_and_announces_it,
    on_whatsapp_only_a_template_starts_a_conversation,
    each_refusal_changes_nothing,
    a_merged_away_id_writes_to_the_survivor,
    an_unannounced_start_is_announced_by_the_republisher,
);
