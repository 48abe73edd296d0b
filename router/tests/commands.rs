//! Agent and helpdesk commands (`Operations`) on the embedded store and on Redis: what each
//! changes besides its own record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use switchyard_core::model::ConversationStatus;

#[macro_use]
mod support;
use support::*;

async fn status_of(s: &Setup, conversation: &str) -> (ConversationStatus, Option<String>) {
    let c = s.store.conversation(conversation).await.unwrap().unwrap();
    (c.status, c.agent_id)
}

/// A merge that closes the conversation an agent held frees the agent, and the queue moves at
/// once: the next queued conversation is assigned and announced.
async fn a_merge_that_frees_an_agent_assigns_the_next_queued_conversation(mut s: Setup) {
    set_capacity(&s.store, 1).await;
    let (ops, _) = commands(&s);
    // u-a (the older profile) is done with a first conversation; u-b then takes the agent; u-a
    // writes again and waits.
    let first = conversation_of(&s, "u-a").await;
    ops.close(&first, Some("a1")).await.expect("close");
    let held = conversation_of(&s, "u-b").await;
    let waiting = conversation_of(&s, "u-a").await;
    assert_eq!(status_of(&s, &waiting).await.0, ConversationStatus::Queued);
    let (older, younger) = (
        customer_of(&s, &waiting).await,
        customer_of(&s, &held).await,
    );
    drain(&mut s.events).await;

    // The merge closes u-b's conversation (its messages move into u-a's), which frees a1.
    ops.merge_customers(&older, &younger).await.expect("merge");
    assert_eq!(status_of(&s, &held).await.0, ConversationStatus::Closed);
    assert_eq!(
        status_of(&s, &waiting).await,
        (ConversationStatus::Assigned, Some("a1".to_owned())),
        "the freed agent takes the waiting conversation"
    );
    let published = drain_conversations(&mut s.events).await;
    let types: Vec<(&str, &str)> = published
        .iter()
        .map(|(key, conversation, _)| (key.as_str(), conversation.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            ("customer.merged", ""),
            ("conversation.closed", held.as_str()),
            ("conversation.assigned", waiting.as_str()),
        ]
    );
}

/// The room a merge frees goes to whatever waits in any configured pool of the agent's, not only
/// in the pool of the conversation the merge closed.
async fn a_merge_that_frees_an_agent_lets_every_configured_pool_move(s: Setup) {
    use switchyard_core::model::AgentStatus;
    use switchyard_core::store::{AgentUpdate, TransferTarget};

    s.store
        .upsert_agent(
            AgentUpdate {
                id: "a1".into(),
                pools: Some(vec!["default".into(), "vip".into()]),
                capacity: Some(2),
                status: Some(AgentStatus::Online),
                ..AgentUpdate::default()
            },
            switchyard_core::time::now(),
        )
        .await
        .expect("a1");
    forget_notes(&s.store).await;
    let ops = commands(&s)
        .0
        .with_pools(vec!["default".into(), "vip".into()]);
    let first = conversation_of(&s, "u-a").await;
    ops.close(&first, Some("a1")).await.expect("close");
    let held = conversation_of(&s, "u-b").await;
    let kept = conversation_of(&s, "u-a").await;
    let waiting = conversation_of(&s, "u-c").await;
    ops.transfer(&waiting, None, TransferTarget::Pool("vip".into()))
        .await
        .expect("transfer");
    assert_eq!(status_of(&s, &waiting).await.0, ConversationStatus::Queued);
    let (older, younger) = (customer_of(&s, &kept).await, customer_of(&s, &held).await);

    ops.merge_customers(&older, &younger).await.expect("merge");
    assert_eq!(status_of(&s, &held).await.0, ConversationStatus::Closed);
    assert_eq!(
        status_of(&s, &waiting).await,
        (ConversationStatus::Assigned, Some("a1".to_owned())),
        "the freed room went to the conversation waiting in `vip`"
    );
}

on_both_stores!(
    a_merge_that_frees_an_agent_assigns_the_next_queued_conversation,
    a_merge_that_frees_an_agent_lets_every_configured_pool_move,
);
