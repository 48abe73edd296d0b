//! The automatic reply outside a pool's business hours: a message that opens a conversation
//! while the pool is closed (at its `received_at`) gets the pool's reply on the outbound queue,
//! recorded in the conversation, once per conversation, also when the opening message is
//! retried; inside the hours, or for a later message, nothing is sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use switchyard_core::bus::Deliveries;
use switchyard_core::envelope::{Content, Direction, Envelope};
use switchyard_core::hours::HoursSettings;
use switchyard_router::auto_reply::AutoReplies;
use switchyard_router::inbound::Routed;

mod support;
use support::*;

const REPLY: &str = "We are closed now; we answer from 9:00 to 18:00 (UTC).";

/// Monday 2026-11-30, 03:00 UTC: outside `mon = 09:00-18:00`.
const NIGHT: &str = "2026-11-30T03:00:00Z";
/// Monday 2026-11-30, 10:00 UTC: inside.
const DAY: &str = "2026-11-30T10:00:00Z";

/// The setup, its `default` pool open on Mondays 09:00-18:00 UTC, and a consumer of the `api`
/// outbound queue.
async fn setup_with_hours() -> (Setup, Box<dyn Deliveries>) {
    let mut s = setup().await;
    let outbound = consume_outbound(&s, "api").await;
    let hours = HoursSettings {
        timezone: Some("UTC".into()),
        mon: Some("09:00-18:00".into()),
        outside_hours_reply: Some(REPLY.into()),
        ..HoursSettings::default()
    }
    .schedule("pools[0].hours")
    .expect("hours");
    let (ops, _) = commands(&s);
    s.router = s.router.clone().with_auto_replies(AutoReplies::new(
        vec![("default".into(), hours)],
        ops,
        s.metrics.clone(),
        Duration::from_secs(600),
    ));
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

#[tokio::test]
async fn a_conversation_opened_outside_the_hours_gets_the_reply_once() {
    let (s, mut outbound) = setup_with_hours().await;
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

#[tokio::test]
async fn a_retried_opening_message_still_gets_one_reply() {
    let (s, mut outbound) = setup_with_hours().await;
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

#[tokio::test]
async fn a_conversation_opened_inside_the_hours_gets_no_reply() {
    let (s, mut outbound) = setup_with_hours().await;
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
