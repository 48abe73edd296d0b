//! The automatic reply outside a pool's business hours: a message that opens a conversation
//! while the pool is closed (at its `received_at`) gets the pool's reply on the outbound queue,
//! recorded in the conversation, once per conversation, also when the opening message is
//! retried; inside the hours, or for a later message, nothing is sent. Once also when a router
//! stopped halfway (a claim left by an older version, a reply recorded and never published) or
//! lost the store's answer after recording the reply: its envelope id is derived from the
//! conversation, so every attempt is the same message. Each case runs on both stores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use switchyard_core::bus::Deliveries;
use switchyard_core::envelope::{Content, Direction, Envelope};
use switchyard_core::hours::HoursSettings;
use switchyard_router::auto_reply::{AutoReplies, reply_id};
use switchyard_router::inbound::{InboundRouter, Routed};
use switchyard_router::outbox::OUTBOX_MAILBOX;

#[macro_use]
mod support;
use support::*;

const REPLY: &str = "We are closed now; we answer from 9:00 to 18:00 (UTC).";

/// Monday 2026-11-30, 03:00 UTC: outside `mon = 09:00-18:00`.
const NIGHT: &str = "2026-11-30T03:00:00Z";
/// Monday 2026-11-30, 10:00 UTC: inside.
const DAY: &str = "2026-11-30T10:00:00Z";

/// The router of `s` with automatic replies, its `default` pool open on Mondays 09:00-18:00 UTC.
fn with_hours(s: &Setup) -> InboundRouter {
    let hours = HoursSettings {
        timezone: Some("UTC".into()),
        mon: Some("09:00-18:00".into()),
        outside_hours_reply: Some(REPLY.into()),
        ..HoursSettings::default()
    }
    .schedule("pools[0].hours")
    .expect("hours");
    let (ops, _) = commands(s);
    s.router.clone().with_auto_replies(AutoReplies::new(
        vec![("default".into(), hours)],
        ops,
        s.metrics.clone(),
    ))
}

/// `s` with automatic replies ([`with_hours`]), and a consumer of the `api` outbound queue.
async fn setup_with_hours(mut s: Setup) -> (Setup, Box<dyn Deliveries>) {
    let outbound = consume_outbound(&s, "api").await;
    s.router = with_hours(&s);
    (s, outbound)
}

/// A message of `user` received at `at`.
fn message_at(user: &str, text: &str, at: &str) -> Envelope {
    let mut m = message_of(user, text);
    let at: DateTime<Utc> = at.parse().expect("time");
    m.received_at = at;
    m.sent_at = at;
    m
}

/// Every outbound envelope published so far.
async fn drain_outbound(outbound: &mut Box<dyn Deliveries>) -> Vec<Envelope> {
    let mut out = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), outbound.next()).await
    {
        out.push(serde_json::from_slice(&d.message.body).expect("an envelope"));
        d.ack().await.expect("ack");
    }
    out
}

fn sent(s: &Setup, outcome: &str) -> u64 {
    s.metrics
        .auto_replies
        .with_label_values(&["default", outcome])
        .get()
}

async fn a_conversation_opened_outside_the_hours_gets_the_reply_once(s: Setup) {
    let (s, mut outbound) = setup_with_hours(s).await;
    let Routed::Recorded(conversation) = s
        .router
        .route(message_at("night-owl", "hello?", NIGHT))
        .await
        .expect("route")
    else {
        panic!("not recorded");
    };
    let replies = drain_outbound(&mut outbound).await;
    assert_eq!(replies.len(), 1, "one automatic reply: {replies:?}");
    let reply = &replies[0];
    assert_eq!(reply.content, Content::Text { text: REPLY.into() });
    assert_eq!(reply.direction, Direction::Outbound);
    assert_eq!(reply.agent_id, None, "an automatic reply has no agent");
    assert_eq!(
        reply.conversation_id.as_deref(),
        Some(conversation.as_str())
    );
    assert_eq!(reply.channel.id, "shop-app");
    assert_eq!(sent(&s, "sent"), 1);

    // The conversation holds it, and is still routed as usual: assigned to the online agent.
    let messages = s.store.messages(&conversation, 10).await.expect("messages");
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].id, reply.id);
    assert_eq!(
        reply.id,
        reply_id(&s.store.conversation(&conversation).await.unwrap().unwrap()),
        "the reply's id is derived from its conversation"
    );
    let stored = s
        .store
        .conversation(&conversation)
        .await
        .expect("conversation")
        .expect("exists");
    assert_eq!(stored.agent_id.as_deref(), Some("a1"));
    assert_eq!(stored.replies_since_inbound, 1, "it counts as one reply");

    // A second message of the same conversation gets none.
    s.router
        .route(message_at("night-owl", "anyone?", NIGHT))
        .await
        .expect("second message");
    assert!(drain_outbound(&mut outbound).await.is_empty());
    assert_eq!(sent(&s, "sent"), 1);
}

async fn a_retried_opening_message_still_gets_one_reply(s: Setup) {
    let (s, mut outbound) = setup_with_hours(s).await;
    let opening = message_at("retried", "hello?", NIGHT);
    // The first attempt is stored but its events are lost: routing fails before any reply.
    s.bus.failing.store(1, Ordering::SeqCst);
    assert!(s.router.route(opening.clone()).await.is_err());
    assert!(drain_outbound(&mut outbound).await.is_empty());

    // The retry finds the conversation opened by this message and replies.
    assert!(matches!(
        s.router.route(opening.clone()).await.expect("retry"),
        Routed::Duplicate(_)
    ));
    assert_eq!(drain_outbound(&mut outbound).await.len(), 1);

    // Redeliveries after that reply do not reply again.
    s.router.route(opening.clone()).await.expect("redelivery");
    s.router.route(opening).await.expect("another redelivery");
    assert!(drain_outbound(&mut outbound).await.is_empty());
    assert_eq!(sent(&s, "sent"), 1);
}

async fn a_conversation_opened_inside_the_hours_gets_no_reply(s: Setup) {
    let (s, mut outbound) = setup_with_hours(s).await;
    let Routed::Recorded(conversation) = s
        .router
        .route(message_at("early-bird", "hello", DAY))
        .await
        .expect("route")
    else {
        panic!("not recorded");
    };
    assert!(drain_outbound(&mut outbound).await.is_empty());
    let messages = s.store.messages(&conversation, 10).await.expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(sent(&s, "sent"), 0);
}

/// The store key under which an earlier version claimed a conversation's reply.
fn old_claim_key(conversation: &str) -> String {
    format!("auto-reply:{conversation}")
}

/// The messages of `conversation` and the batches kept in the outbox.
async fn recorded(s: &Setup, conversation: &str) -> (Vec<Envelope>, usize) {
    let messages = s.store.messages(conversation, 10).await.expect("messages");
    let kept = s.store.mailbox_read(OUTBOX_MAILBOX).await.expect("outbox");
    (messages, kept.len())
}

/// Gap 1: a router stopped after claiming the reply (as an earlier version did) and before
/// recording it; the opening message is redelivered to another router, which sends it.
async fn a_router_that_stopped_before_recording_the_reply_leaves_it_to_the_retry(s: Setup) {
    let mut outbound = consume_outbound(&s, "api").await;
    let opening = message_at("stopped", "hello?", NIGHT);
    // The first router routes the message, claims the reply and stops.
    let Routed::Recorded(conversation) = s.router.route(opening.clone()).await.expect("route")
    else {
        panic!("not recorded");
    };
    assert_eq!(
        s.store
            .claim_key(
                &old_claim_key(&conversation),
                &opening.id,
                Duration::from_secs(600)
            )
            .await
            .expect("claim"),
        None
    );
    assert!(drain_outbound(&mut outbound).await.is_empty());

    // The redelivery reaches a router with the automatic replies: the reply goes out, once.
    let router = with_hours(&s);
    assert!(matches!(
        router.route(opening.clone()).await.expect("redelivery"),
        Routed::Duplicate(_)
    ));
    let replies = drain_outbound(&mut outbound).await;
    assert_eq!(replies.len(), 1, "one reply: {replies:?}");
    assert_eq!(replies[0].content, Content::Text { text: REPLY.into() });
    router.route(opening).await.expect("another redelivery");
    assert!(drain_outbound(&mut outbound).await.is_empty());
    let (messages, kept) = recorded(&s, &conversation).await;
    assert_eq!(messages.len(), 2, "the message and one reply: {messages:?}");
    assert_eq!(messages[1].id, replies[0].id);
    assert_eq!(kept, 0, "nothing left in the outbox");
    assert_eq!(sent(&s, "sent"), 1);
}

/// Gap 2 and 3: the reply was recorded and sent, and a later attempt finds no claim (an earlier
/// version released it after losing the store's answer, or it expired): no second reply is
/// recorded, staged or published.
async fn a_reply_recorded_before_is_not_sent_again(s: Setup) {
    let (s, mut outbound) = setup_with_hours(s).await;
    let opening = message_at("lost-answer", "hello?", NIGHT);
    let Routed::Recorded(conversation) = s.router.route(opening.clone()).await.expect("route")
    else {
        panic!("not recorded");
    };
    assert_eq!(drain_outbound(&mut outbound).await.len(), 1);

    for _ in 0..2 {
        // Whatever claim there was is gone.
        s.store
            .delete_key(&old_claim_key(&conversation))
            .await
            .expect("release");
        assert!(matches!(
            s.router.route(opening.clone()).await.expect("retry"),
            Routed::Duplicate(_)
        ));
        assert!(
            drain_outbound(&mut outbound).await.is_empty(),
            "a second reply was published"
        );
    }
    let (messages, kept) = recorded(&s, &conversation).await;
    assert_eq!(messages.len(), 2, "the message and one reply: {messages:?}");
    assert_eq!(kept, 0, "nothing staged again");
    let stored = s
        .store
        .conversation(&conversation)
        .await
        .expect("conversation")
        .expect("exists");
    assert_eq!(stored.replies_since_inbound, 1, "one reply counted");
    assert_eq!(
        (sent(&s, "sent"), sent(&s, "failed")),
        (1, 0),
        "the retries count nothing"
    );
}

/// A router stopped after recording the reply, while its publish was under way: the retry
/// publishes nothing more, and the outbox sends the recorded reply, once.
async fn a_reply_recorded_but_not_published_goes_out_once_from_the_outbox(s: Setup) {
    let (s, mut outbound) = setup_with_hours(s).await;
    let (_, outbox) = commands(&s);
    let opening = message_at("hung", "hello?", NIGHT);
    s.bus.hanging_publishes.store(1, Ordering::SeqCst);
    let routing = tokio::spawn({
        let router = s.router.clone();
        let opening = opening.clone();
        async move { router.route(opening).await }
    });
    // The reply is recorded, and its publish never finishes: the router stops there.
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(customer) = s
                .store
                .customer_by_identity(&opening.sender.identities[0])
                .await
                .expect("customer")
                && let Some(conversation) = s
                    .store
                    .open_conversation(&customer.id)
                    .await
                    .expect("open conversation")
            {
                let messages = s
                    .store
                    .messages(&conversation.id, 10)
                    .await
                    .expect("messages");
                if let Some(reply) = messages
                    .into_iter()
                    .find(|m| m.direction == Direction::Outbound)
                {
                    return reply;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the reply recorded within 5 s");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!routing.is_finished(), "the hanging publish finished");
    routing.abort();
    let conversation = reply.conversation_id.clone().expect("conversation id");

    // The redelivery sends nothing: the reply is recorded, its bus message kept in the outbox.
    s.router.route(opening).await.expect("redelivery");
    assert!(drain_outbound(&mut outbound).await.is_empty());
    let (messages, kept) = recorded(&s, &conversation).await;
    assert_eq!(messages.len(), 2, "the message and one reply: {messages:?}");
    assert_eq!(kept, 1, "the reply kept in the outbox, once");

    // The republisher (past the grace) sends it: the recorded envelope, once.
    let later = outbox.with_staged_grace(Duration::ZERO);
    assert_eq!(later.republish().await.expect("republish"), 1);
    let replies = drain_outbound(&mut outbound).await;
    assert_eq!(replies.len(), 1, "one reply: {replies:?}");
    assert_eq!(replies[0].id, reply.id);
    assert_eq!(later.republish().await.expect("republish"), 0);
}

on_both_stores!(
    a_conversation_opened_outside_the_hours_gets_the_reply_once,
    a_retried_opening_message_still_gets_one_reply,
    a_conversation_opened_inside_the_hours_gets_no_reply,
    a_router_that_stopped_before_recording_the_reply_leaves_it_to_the_retry,
    a_reply_recorded_before_is_not_sent_again,
    a_reply_recorded_but_not_published_goes_out_once_from_the_outbox,
);
