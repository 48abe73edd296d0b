//! Events of an agent or helpdesk command (here: closing a conversation, which also assigns the
//! next queued one) that the bus refuses are kept in the store's outbox, and republished later,
//! in order and with the same ids; the command itself succeeds, since its change is stored. An
//! agent's reply is kept there from the moment it is recorded until the bus confirms it, so not
//! even a process that stops in between loses it. Each case runs on the embedded store and on
//! Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard_core::bus::Bus;
use switchyard_core::bus::topology::outbound_queue;
use switchyard_core::conformance::bus::OUTBOUND_KIND;
use switchyard_core::conformance::store::wechat_channel;
use switchyard_core::envelope::{Content, Envelope};
use switchyard_core::model::{AgentStatus, ConversationStatus};
use switchyard_core::store::{AgentUpdate, NoteKind, QueueTarget, TransferTarget, Withdrawal};
use switchyard_router::inbound::Routed;
use switchyard_router::outbox::{OUTBOX_MAILBOX, REPUBLISH_LOCK, STAGED_GRACE};

#[macro_use]
mod support;
use support::*;

/// Ids of the messages kept in the outbox, batch by batch.
async fn kept(s: &Setup) -> Vec<Vec<String>> {
    s.store
        .mailbox_read(OUTBOX_MAILBOX)
        .await
        .expect("outbox")
        .iter()
        .map(|item| {
            let batch: serde_json::Value = serde_json::from_str(&item.body).expect("batch json");
            batch["messages"]
                .as_array()
                .expect("a batch holds a list of messages")
                .iter()
                .map(|e| e["id"].as_str().expect("event id").to_owned())
                .collect()
        })
        .collect()
}

/// The changes noted and not cleared, whatever their age: (kind, subject, agent left).
async fn unannounced(s: &Setup) -> Vec<(NoteKind, String, Option<String>)> {
    s.store
        .unannounced(switchyard_core::time::now() + chrono::TimeDelta::days(1))
        .await
        .expect("unannounced")
        .into_iter()
        .map(|n| (n.kind, n.subject, n.from_agent))
        .collect()
}

/// The (routing key, id) of every event batch whose publish hung, batch by batch.
fn hung(s: &Setup) -> Vec<Vec<(String, String)>> {
    s.bus.hung.lock().expect("hung").clone()
}

/// The events of every batch whose publish hung, in order: what the commands built.
fn hung_events(s: &Setup) -> Vec<switchyard_core::event::CloudEvent> {
    s.bus
        .hung_events
        .lock()
        .expect("hung events")
        .iter()
        .flatten()
        .map(|e| serde_json::from_value(e.clone()).expect("a hung event"))
        .collect()
}

fn outbox_count(s: &Setup, outcome: &str) -> u64 {
    s.metrics.outbox.with_label_values(&[outcome]).get()
}

/// Waits (at most 5 s) until `stored` finds what a command stored, then stops the command's task,
/// whose publish hangs, as if its process stopped there. Returns what `stored` found.
async fn stop_once_stored<T: std::fmt::Debug, R>(
    task: tokio::task::JoinHandle<T>,
    what: &str,
    mut stored: impl AsyncFnMut() -> Option<R>,
) -> R {
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(found) = stored().await {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} not stored within 5 s"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task.is_finished(), "the hanging publish finished");
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    found
}

on_both_stores!(
    refused_events_of_a_command_are_kept_and_republished_in_order_with_their_ids,
    a_reply_the_bus_refuses_is_kept_and_sent_later,
    a_reply_whose_process_stops_before_the_confirm_is_sent_after_the_grace,
    a_close_whose_command_stops_before_announcing_it_is_announced_after_the_grace,
    transfers_and_agent_updates_whose_command_stops_are_announced_after_the_grace,
    a_merge_whose_command_stops_before_announcing_it_is_announced_after_the_grace,
    a_merge_whose_router_stops_before_announcing_it_is_announced_after_the_grace,
    a_customer_update_whose_command_stops_before_announcing_it_is_announced_after_the_grace,
    answers_to_offers_whose_command_stops_are_announced_as_their_command_would_after_the_grace,
    an_overflow_whose_command_stops_is_announced_with_its_reason_after_the_grace,
    what_the_bus_refuses_for_good_is_not_kept_and_cannot_hold_up_the_outbox,
    one_process_at_a_time_republishes,
);

async fn refused_events_of_a_command_are_kept_and_republished_in_order_with_their_ids(
    mut s: Setup,
) {
    set_capacity(&s.store, 1).await;
    let (ops, outbox) = commands(&s);
    let first = conversation_of(&s, "u-a").await;
    let waiting = conversation_of(&s, "u-b").await;
    drain(&mut s.events).await;

    // The bus is gone while the agent closes: the close is stored (it freed the agent, who got
    // the waiting conversation), and its events wait in the outbox.
    s.bus.failing.store(1, Ordering::SeqCst);
    let closed = ops.close(&first, Some("a1")).await.expect("close succeeds");
    assert_eq!(closed.status, ConversationStatus::Closed);
    let next = s.store.conversation(&waiting).await.unwrap().unwrap();
    assert_eq!(
        next.agent_id.as_deref(),
        Some("a1"),
        "the close did not assign"
    );
    assert!(drain(&mut s.events).await.is_empty(), "events escaped");
    let kept_ids = kept(&s).await;
    assert_eq!(kept_ids.len(), 1, "one batch kept: {kept_ids:?}");
    assert_eq!(outbox_count(&s, "deferred"), 1);
    assert!(
        unannounced(&s).await.is_empty(),
        "the kept batch announces the assignment, yet it is still noted"
    );

    // A second command while the bus is still gone: its batch is kept after the first.
    s.bus.failing.store(1, Ordering::SeqCst);
    ops.close(&waiting, Some("a1")).await.expect("second close");
    let kept_ids = kept(&s).await;
    assert_eq!(kept_ids.len(), 2, "two batches kept: {kept_ids:?}");

    // The bus refuses the first republish too: nothing is lost or reordered.
    s.bus.failing.store(1, Ordering::SeqCst);
    assert!(outbox.republish().await.is_err());
    assert_eq!(kept(&s).await, kept_ids);
    assert_eq!(s.metrics.outbox_waiting.get(), 2, "the waiting gauge");

    // The bus is back: both batches go out, oldest first, with the ids they were kept with.
    assert_eq!(outbox.republish().await.expect("republish"), 2);
    let published = drain(&mut s.events).await;
    assert_eq!(
        types(&published),
        [
            "conversation.closed",
            "conversation.assigned",
            "conversation.closed"
        ]
    );
    let ids: Vec<String> = published.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, kept_ids.concat(), "republished with other ids");
    assert!(kept(&s).await.is_empty(), "republished batches stay kept");
    assert_eq!(outbox_count(&s, "republished"), 2);
    assert_eq!(s.metrics.outbox_waiting.get(), 0, "the waiting gauge");

    // Nothing is left to publish twice.
    assert_eq!(outbox.republish().await.expect("republish"), 0);
    assert!(drain(&mut s.events).await.is_empty());
}

async fn a_reply_the_bus_refuses_is_kept_and_sent_later(mut s: Setup) {
    let (ops, outbox) = commands(&s);
    let conversation = conversation_of(&s, "u-r").await;
    drain(&mut s.events).await;
    let mut outbound = s
        .bus
        .consume(&outbound_queue(OUTBOUND_KIND), 10)
        .await
        .expect("outbound consumer");

    // The reply is recorded, and the bus is gone: it waits in the outbox, and the agent is told
    // it was taken (asking them to send it again would record it twice).
    s.bus.failing_publishes.store(1, Ordering::SeqCst);
    let reply = ops
        .reply(
            &conversation,
            Some("a1"),
            Content::Text {
                text: "on my way".into(),
            },
        )
        .await
        .expect("the reply is taken");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), outbound.next())
            .await
            .is_err(),
        "the refused reply reached the outbound queue"
    );
    assert_eq!(kept(&s).await, [[reply.id.clone()]]);
    assert_eq!(outbox_count(&s, "deferred"), 1);

    // It was kept when it was recorded, so the republisher leaves it to its own publish for the
    // grace period.
    assert_eq!(outbox.republish().await.expect("republish"), 0);
    assert_eq!(kept(&s).await, [[reply.id.clone()]]);

    // Past the grace: the same envelope reaches the channel's outbound queue, once.
    let outbox = outbox.with_staged_grace(Duration::ZERO);
    assert_eq!(outbox.republish().await.expect("republish"), 1);
    let delivery = tokio::time::timeout(Duration::from_secs(2), outbound.next())
        .await
        .expect("the reply within 2 s")
        .expect("delivery");
    assert_eq!(delivery.message.message_id, reply.id);
    let sent: Envelope = serde_json::from_slice(&delivery.message.body).expect("envelope");
    assert_eq!(sent, reply);
    delivery.ack().await.expect("ack");
    assert!(kept(&s).await.is_empty());
    let history = s.store.messages(&conversation, 10).await.expect("history");
    assert_eq!(
        history.iter().filter(|m| m.id == reply.id).count(),
        1,
        "the reply is recorded once"
    );

    // With the bus there, a reply goes straight out and leaves nothing in the outbox.
    let second = ops
        .reply(
            &conversation,
            Some("a1"),
            Content::Text {
                text: "here".into(),
            },
        )
        .await
        .expect("second reply");
    let delivery = tokio::time::timeout(Duration::from_secs(2), outbound.next())
        .await
        .expect("the second reply within 2 s")
        .expect("delivery");
    assert_eq!(delivery.message.message_id, second.id);
    delivery.ack().await.expect("ack");
    assert!(kept(&s).await.is_empty(), "a confirmed reply stays kept");
    assert_eq!(outbox.republish().await.expect("republish"), 0);
}

async fn a_reply_whose_process_stops_before_the_confirm_is_sent_after_the_grace(mut s: Setup) {
    let (ops, outbox) = commands(&s);
    let conversation = conversation_of(&s, "u-s").await;
    let mut outbound = s
        .bus
        .consume(&outbound_queue(OUTBOUND_KIND), 10)
        .await
        .expect("outbound consumer");

    // The reply is recorded, and its publish never finishes: the process stops there.
    s.bus.hanging_publishes.store(1, Ordering::SeqCst);
    let sending = tokio::spawn({
        let ops = ops.clone();
        let conversation = conversation.clone();
        async move {
            ops.reply(
                &conversation,
                Some("a1"),
                Content::Text {
                    text: "one moment".into(),
                },
            )
            .await
        }
    });
    let recorded = stop_once_stored(sending, "the reply", async || {
        let history = s.store.messages(&conversation, 10).await.expect("history");
        history.into_iter().find(|m| m.agent_id.is_some())
    })
    .await;
    assert_eq!(kept(&s).await, [[recorded.id.clone()]]);

    // A command's events the bus refuses meanwhile are kept behind it.
    s.bus.failing.store(1, Ordering::SeqCst);
    ops.close(&conversation, Some("a1")).await.expect("close");
    assert_eq!(kept(&s).await.len(), 2);
    drain(&mut s.events).await;

    // Within the grace, the republisher leaves the reply alone (its publish might still be under
    // way) and holds up only what follows it on the outbound exchange: the events go out.
    assert_eq!(outbox.republish().await.expect("republish"), 1);
    assert_eq!(types(&drain(&mut s.events).await), ["conversation.closed"]);
    assert_eq!(kept(&s).await, [[recorded.id.clone()]]);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), outbound.next())
            .await
            .is_err(),
        "republished within the grace"
    );

    // Past the grace (another process, say), it goes out: the envelope that was recorded, once.
    let later = outbox.with_staged_grace(Duration::ZERO);
    assert_eq!(later.republish().await.expect("republish"), 1);
    let delivery = tokio::time::timeout(Duration::from_secs(2), outbound.next())
        .await
        .expect("the reply within 2 s")
        .expect("delivery");
    assert_eq!(delivery.message.message_id, recorded.id);
    let sent: Envelope = serde_json::from_slice(&delivery.message.body).expect("envelope");
    assert_eq!(sent.content, recorded.content);
    assert_eq!(sent.conversation_id.as_deref(), Some(conversation.as_str()));
    delivery.ack().await.expect("ack");
    assert!(kept(&s).await.is_empty());
    assert_eq!(later.republish().await.expect("republish"), 0);
    assert_eq!(outbox_count(&s, "republished"), 2);
    assert!(
        STAGED_GRACE >= Duration::from_secs(15),
        "a grace shorter than a publish timeout"
    );
}

async fn what_the_bus_refuses_for_good_is_not_kept_and_cannot_hold_up_the_outbox(mut s: Setup) {
    let (ops, outbox) = commands(&s);
    // A conversation on a channel kind that has no outbound queue here: its reply is unroutable,
    // which no retry will change, so it fails at once instead of waiting in the outbox.
    let mut envelope = message_of("u-w", "hello");
    envelope.channel = wechat_channel();
    let Routed::Recorded(unroutable) = s.router.route(envelope).await.expect("route") else {
        panic!("not recorded");
    };
    let refused = ops
        .reply(&unroutable, Some("a1"), Content::Text { text: "hi".into() })
        .await
        .expect_err("an unroutable reply must fail");
    assert!(!refused.is_transient(), "{refused:?}");
    assert!(kept(&s).await.is_empty());

    // A batch kept before its queue went away sits ahead of a good one: it is dropped, counted,
    // and the good one still goes out.
    s.store
        .mailbox_push(
            OUTBOX_MAILBOX,
            "0-unroutable",
            r#"{"exchange":"switchyard.outbound","messages":[{"key":"gone","id":"m-gone","body":"{}","headers":{}}]}"#,
            100,
            Duration::from_secs(60),
        )
        .await
        .expect("push");
    let conversation = conversation_of(&s, "u-x").await;
    drain(&mut s.events).await;
    s.bus.failing.store(1, Ordering::SeqCst);
    ops.close(&conversation, Some("a1")).await.expect("close");
    assert_eq!(kept(&s).await.len(), 2);
    assert_eq!(outbox.republish().await.expect("republish"), 2);
    assert_eq!(types(&drain(&mut s.events).await), ["conversation.closed"]);
    assert!(kept(&s).await.is_empty());
    assert_eq!(outbox_count(&s, "dropped"), 1);
    assert_eq!(outbox_count(&s, "republished"), 1);
}

async fn one_process_at_a_time_republishes(mut s: Setup) {
    let (ops, outbox) = commands(&s);
    let conversation = conversation_of(&s, "u-c").await;
    drain(&mut s.events).await;
    s.bus.failing.store(1, Ordering::SeqCst);
    ops.close(&conversation, Some("a1")).await.expect("close");
    assert_eq!(kept(&s).await.len(), 1);

    // Another process holds the republishing claim: this one leaves the outbox alone.
    assert!(
        s.store
            .claim_key(REPUBLISH_LOCK, "another-process", Duration::from_secs(60))
            .await
            .expect("claim")
            .is_none()
    );
    assert_eq!(outbox.republish().await.expect("republish"), 0);
    assert_eq!(kept(&s).await.len(), 1);
    assert!(drain(&mut s.events).await.is_empty());

    // Once it is released, this one republishes.
    s.store.delete_key(REPUBLISH_LOCK).await.expect("release");
    assert_eq!(outbox.republish().await.expect("republish"), 1);
    assert_eq!(types(&drain(&mut s.events).await), ["conversation.closed"]);
}

/// The events the republisher announced, as (routing key, id), checked to be those the
/// command's hung batches held (`expected`, picked from them by batch and position).
fn assert_announced_as_hung(
    s: &Setup,
    announced: &[(String, switchyard_core::event::CloudEvent)],
    expected: &[(usize, usize)],
) {
    let hung = hung(s);
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|&(batch, at)| hung[batch][at].clone())
        .collect();
    let got: Vec<(String, String)> = announced
        .iter()
        .map(|(key, e)| (key.clone(), e.id.clone()))
        .collect();
    assert_eq!(
        got, want,
        "announced events (with ids) vs. the command's own"
    );
}

async fn a_close_whose_command_stops_before_announcing_it_is_announced_after_the_grace(
    mut s: Setup,
) {
    set_capacity(&s.store, 1).await;
    let (ops, outbox) = commands(&s);
    let first = conversation_of(&s, "u-f").await;
    let waiting = conversation_of(&s, "u-g").await;
    drain(&mut s.events).await;

    // The agent closes the first conversation, which assigns the waiting one; the events'
    // publish never finishes: the process stops there.
    s.bus.hanging.store(1, Ordering::SeqCst);
    let closing = tokio::spawn({
        let ops = ops.clone();
        let first = first.clone();
        async move { ops.close(&first, Some("a1")).await }
    });
    stop_once_stored(closing, "the assignment", async || {
        let next = s.store.conversation(&waiting).await.unwrap().unwrap();
        (next.agent_id.as_deref() == Some("a1")).then_some(())
    })
    .await;
    assert_eq!(
        unannounced(&s).await,
        [
            (NoteKind::Closed, first.clone(), Some("a1".to_owned())),
            (NoteKind::Assigned, waiting.clone(), None),
        ]
    );

    // Within the grace the republisher leaves them: the command may still be announcing them.
    assert_eq!(outbox.republish().await.expect("republish"), 0);
    assert!(
        drain(&mut s.events).await.is_empty(),
        "announced within the grace"
    );

    // Past the grace (another process, say), they are announced from the stored state, once,
    // with the ids the command gave them.
    let later = outbox.with_staged_grace(Duration::ZERO);
    assert_eq!(later.republish().await.expect("republish"), 2);
    let announced = drain_events(&mut s.events).await;
    assert_announced_as_hung(&s, &announced, &[(0, 0), (0, 1)]);
    assert_eq!(announced[0].1.data["conversation"]["id"], first.as_str());
    assert_eq!(announced[0].1.data["agent_id"], "a1");
    assert_eq!(announced[1].1.data["conversation"]["id"], waiting.as_str());
    assert_eq!(announced[1].1.data["conversation"]["agent_id"], "a1");
    assert!(unannounced(&s).await.is_empty());
    assert_eq!(outbox_count(&s, "announced"), 2);
    assert_eq!(later.republish().await.expect("republish"), 0);
    assert!(drain(&mut s.events).await.is_empty(), "announced twice");

    // A command that announces its changes leaves no note behind.
    let third = conversation_of(&s, "u-h").await;
    ops.close(&waiting, Some("a1")).await.expect("close");
    let published = drain_events(&mut s.events).await;
    assert!(
        published
            .iter()
            .any(|(key, e)| key == "conversation.assigned"
                && e.data["conversation"]["id"] == third.as_str()),
        "the close did not announce its assignment: {published:?}"
    );
    assert!(
        unannounced(&s).await.is_empty(),
        "an announced change is still noted"
    );
}

/// A transfer straight to an agent, a transfer to a pool, and an agent update, each stopped
/// during its publish: after the grace, each is announced once, with the events and ids the
/// command would have published (the second transfer's `conversation.queued` too; not the first
/// one's `conversation.assigned`, since the conversation is no longer assigned).
async fn transfers_and_agent_updates_whose_command_stops_are_announced_after_the_grace(
    mut s: Setup,
) {
    let (ops, outbox) = commands(&s);
    let online = |id: &str| AgentUpdate {
        id: id.to_owned(),
        pools: Some(vec!["default".into()]),
        capacity: Some(1),
        status: Some(AgentStatus::Online),
        ..AgentUpdate::default()
    };
    ops.put_agent(online("a2")).await.expect("a2");
    let conversation = conversation_of(&s, "u-t").await;
    drain(&mut s.events).await;
    assert!(unannounced(&s).await.is_empty());

    let stopped = |target: TransferTarget,
                   done: fn(&switchyard_core::model::Conversation) -> bool| {
        let ops = ops.clone();
        let store = Arc::clone(&s.store);
        let conversation = conversation.clone();
        let bus = Arc::clone(&s.bus);
        async move {
            bus.hanging.store(1, Ordering::SeqCst);
            let task = tokio::spawn({
                let conversation = conversation.clone();
                async move { ops.transfer(&conversation, None, target, None).await }
            });
            stop_once_stored(task, "the transfer", async || {
                let c = store.conversation(&conversation).await.unwrap().unwrap();
                done(&c).then_some(())
            })
            .await;
        }
    };
    stopped(TransferTarget::Agent("a2".into()), |c| {
        c.agent_id.as_deref() == Some("a2")
    })
    .await;
    // Nobody is in pool `elsewhere`: the conversation stays queued there.
    stopped(TransferTarget::pool("elsewhere"), |c| {
        c.status == ConversationStatus::Queued
    })
    .await;
    s.bus.hanging.store(1, Ordering::SeqCst);
    let task = tokio::spawn({
        let ops = ops.clone();
        async move { ops.put_agent(online("a3")).await }
    });
    stop_once_stored(task, "the agent", async || {
        s.store.agent("a3").await.unwrap().map(|_| ())
    })
    .await;
    assert_eq!(
        unannounced(&s).await,
        [
            (
                NoteKind::TransferredToAgent,
                conversation.clone(),
                Some("a1".to_owned())
            ),
            (
                NoteKind::TransferredToPool,
                conversation.clone(),
                Some("a2".to_owned())
            ),
            (NoteKind::AgentUpdated, "a3".to_owned(), None),
        ]
    );
    let batches = hung(&s);
    let hung_types: Vec<Vec<&str>> = batches
        .iter()
        .map(|b| b.iter().map(|(key, _)| key.as_str()).collect())
        .collect();
    assert_eq!(
        hung_types,
        [
            vec!["conversation.transferred", "conversation.assigned"],
            vec!["conversation.transferred", "conversation.queued"],
            vec!["agent.updated"],
        ]
    );

    let later = outbox.with_staged_grace(Duration::ZERO);
    assert_eq!(later.republish().await.expect("republish"), 3);
    let announced = drain_events(&mut s.events).await;
    assert_announced_as_hung(&s, &announced, &[(0, 0), (1, 0), (1, 1), (2, 0)]);
    assert_eq!(announced[0].1.data["from_agent_id"], "a1");
    assert_eq!(announced[1].1.data["from_agent_id"], "a2");
    assert_eq!(announced[2].1.data["conversation"]["pool"], "elsewhere");
    assert_eq!(announced[3].1.data["agent"]["id"], "a3");
    assert_eq!(announced[3].1.data["agent"]["status"], "online");
    assert!(unannounced(&s).await.is_empty());
    assert_eq!(later.republish().await.expect("republish"), 0);
    assert!(drain(&mut s.events).await.is_empty(), "announced twice");
}

/// A merge by an explicit link, stopped during its publish: after the grace, its
/// `customer.merged` and the `conversation.closed` of the conversation it closed are announced
/// once, in the command's order, each with the id the hung batch gave it.
async fn a_merge_whose_command_stops_before_announcing_it_is_announced_after_the_grace(
    mut s: Setup,
) {
    let (ops, outbox) = commands(&s);
    let kept = conversation_of(&s, "u-m1").await;
    let merged_away = conversation_of(&s, "u-m2").await;
    let (into, from) = (
        customer_of(&s, &kept).await,
        customer_of(&s, &merged_away).await,
    );
    drain(&mut s.events).await;

    s.bus.hanging.store(1, Ordering::SeqCst);
    let task = tokio::spawn({
        let (ops, into, from) = (ops.clone(), into.clone(), from.clone());
        async move { ops.merge_customers(&into, &from).await }
    });
    stop_once_stored(task, "the merge", async || {
        let c = s.store.conversation(&merged_away).await.unwrap().unwrap();
        (c.status == ConversationStatus::Closed).then_some(())
    })
    .await;
    // The close is noted with the agent it left, who then hears of it.
    assert_eq!(
        unannounced(&s).await,
        [
            (NoteKind::Closed, merged_away.clone(), Some("a1".to_owned())),
            (NoteKind::Merged, from.clone(), None),
        ],
        "noted by key"
    );

    let later = outbox.with_staged_grace(Duration::ZERO);
    assert_eq!(later.republish().await.expect("republish"), 2);
    let announced = drain_events(&mut s.events).await;
    let types: Vec<&str> = announced.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(types, ["customer.merged", "conversation.closed"]);
    let merged = &announced[0].1.data;
    assert_eq!(merged["from"], from.as_str());
    assert_eq!(merged["into"], into.as_str());
    assert_eq!(merged["customer"]["id"], into.as_str());
    assert_eq!(
        merged["via"],
        serde_json::json!(["app_user:shop-app:u-m2"]),
        "the keys that caused the merge"
    );
    // The merge and the close keep their ids.
    assert_announced_as_hung(&s, &announced, &[(0, 0), (0, 1)]);
    assert_eq!(
        announced[1].1.data["conversation"]["id"],
        merged_away.as_str()
    );
    assert_eq!(announced[1].1.data["agent_id"], "a1");
    assert!(unannounced(&s).await.is_empty());
    assert_eq!(later.republish().await.expect("republish"), 0);
    assert!(drain(&mut s.events).await.is_empty(), "announced twice");
}

/// A merge made by routing a message (it carries a second customer's strong key), whose router
/// stops during the publish: the bus would redeliver the message, but its retry finds the
/// profiles merged already and cannot announce the merge. The notes do, after the grace.
async fn a_merge_whose_router_stops_before_announcing_it_is_announced_after_the_grace(
    mut s: Setup,
) {
    let (_, outbox) = commands(&s);
    conversation_of(&s, "u-r1").await;
    let merged_away = conversation_of(&s, "u-r2").await;
    drain(&mut s.events).await;

    let mut message = message_of("u-r2", "it's me");
    message
        .sender
        .identities
        .push(switchyard_core::conformance::store::key(
            "", "app_user", "shop-app", "u-r1",
        ));
    s.bus.hanging.store(1, Ordering::SeqCst);
    let router = s.router.clone();
    let task = tokio::spawn(async move { router.route(message).await });
    stop_once_stored(task, "the merge", async || {
        let c = s.store.conversation(&merged_away).await.unwrap().unwrap();
        (c.status == ConversationStatus::Closed).then_some(())
    })
    .await;
    let kinds: Vec<NoteKind> = unannounced(&s).await.into_iter().map(|n| n.0).collect();
    assert_eq!(kinds, [NoteKind::Closed, NoteKind::Merged]);

    let later = outbox.with_staged_grace(Duration::ZERO);
    assert_eq!(later.republish().await.expect("republish"), 2);
    let announced = drain_events(&mut s.events).await;
    let types: Vec<&str> = announced.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(types, ["customer.merged", "conversation.closed"]);
    // The merge and the close keep their ids.
    assert_announced_as_hung(&s, &announced, &[(0, 0), (0, 1)]);
    assert_eq!(
        announced[1].1.data["conversation"]["id"],
        merged_away.as_str()
    );
    assert!(unannounced(&s).await.is_empty());
}

/// A customer update stopped during its publish: after the grace, its `customer.updated` is
/// announced once, from the profile, with the id the hung batch gave it.
async fn a_customer_update_whose_command_stops_before_announcing_it_is_announced_after_the_grace(
    mut s: Setup,
) {
    let (ops, outbox) = commands(&s);
    let conversation = conversation_of(&s, "u-u1").await;
    let customer = customer_of(&s, &conversation).await;
    drain(&mut s.events).await;

    s.bus.hanging.store(1, Ordering::SeqCst);
    let task = tokio::spawn({
        let (ops, customer) = (ops.clone(), customer.clone());
        async move {
            let update = switchyard_core::store::CustomerUpdate {
                add_tags: vec!["vip".into()],
                ..Default::default()
            };
            ops.update_customer(&customer, &update).await
        }
    });
    stop_once_stored(task, "the update", async || {
        let c = s.store.customer(&customer).await.unwrap().unwrap();
        (!c.tags.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        unannounced(&s).await,
        [(NoteKind::CustomerUpdated, customer.clone(), None)]
    );

    let later = outbox.with_staged_grace(Duration::ZERO);
    assert_eq!(later.republish().await.expect("republish"), 1);
    let announced = drain_events(&mut s.events).await;
    assert_announced_as_hung(&s, &announced, &[(0, 0)]);
    assert_eq!(announced[0].1.data["customer"]["id"], customer.as_str());
    assert_eq!(
        announced[0].1.data["customer"]["tags"],
        serde_json::json!(["vip"])
    );
    assert!(unannounced(&s).await.is_empty());
    assert_eq!(later.republish().await.expect("republish"), 0);
    assert!(drain(&mut s.events).await.is_empty(), "announced twice");
}

/// A router whose pool `default` makes offers (`offer_timeout_secs = 60`).
fn offer_routes() -> switchyard_router::routes::RoutingTable {
    let path = std::env::temp_dir().join(format!(
        "switchyard-offer-routes-{}.toml",
        switchyard_core::envelope::new_id()
    ));
    std::fs::write(
        &path,
        "[[pools]]\nid = \"default\"\noffer_timeout_secs = 60\n",
    )
    .unwrap();
    let settings = switchyard_core::config::Settings::load_with_env(Some(&path), []);
    let _ = std::fs::remove_file(&path);
    switchyard_router::routes::RoutingTable::from_settings(&settings.unwrap()).unwrap()
}

/// Three offers answered, each command stopped during its publish: one expired (its agent is
/// set away), one declined, one accepted. After the grace, each is announced once with exactly
/// the events the command would have published (ids, times and data): the expiry's and the
/// decline's `conversation.transferred` with their reason (`offer_expired`, `declined`), then
/// `conversation.queued` (and the agent set away), and the acceptance's
/// `conversation.accepted`.
async fn answers_to_offers_whose_command_stops_are_announced_as_their_command_would_after_the_grace(
    s: Setup,
) {
    let mut s = s.with_routes(offer_routes());
    let (ops, outbox) = commands(&s);
    let expiring = conversation_of(&s, "u-o1").await;
    let declined = conversation_of(&s, "u-o2").await;
    let accepted = conversation_of(&s, "u-o3").await;
    for id in [&expiring, &declined, &accepted] {
        let c = s.store.conversation(id).await.unwrap().unwrap();
        assert_eq!(c.agent_id.as_deref(), Some("a1"), "{c:?}");
        assert!(c.offered_at.is_some(), "not an offer: {c:?}");
    }
    drain(&mut s.events).await;
    assert!(unannounced(&s).await.is_empty());

    // Each answer stops during its publish, once its change is stored.
    let answer = |id: &String, why: Option<Withdrawal>| {
        let (ops, id) = (ops.clone(), id.clone());
        s.bus.hanging.store(1, Ordering::SeqCst);
        tokio::spawn(async move {
            match why {
                Some(why) => ops.take_back(&id, "a1", why).await,
                None => ops.accept_offer(&id, "a1").await,
            }
        })
    };
    let queued = async |id: &String| {
        let c = s.store.conversation(id).await.unwrap().unwrap();
        (c.status == ConversationStatus::Queued).then_some(())
    };
    // Expired first: a1 is set away, so nobody takes the conversations back from the queue.
    let offered_at = s
        .store
        .conversation(&expiring)
        .await
        .unwrap()
        .unwrap()
        .offered_at
        .unwrap();
    let task = answer(&expiring, Some(Withdrawal::Expired { offered_at }));
    stop_once_stored(task, "the expiry", async || queued(&expiring).await).await;
    let task = answer(&declined, Some(Withdrawal::Declined));
    stop_once_stored(task, "the decline", async || queued(&declined).await).await;
    let task = answer(&accepted, None);
    stop_once_stored(task, "the acceptance", async || {
        let c = s.store.conversation(&accepted).await.unwrap().unwrap();
        c.offered_at.is_none().then_some(())
    })
    .await;
    let a1 = Some("a1".to_owned());
    assert_eq!(
        unannounced(&s).await,
        [
            (NoteKind::AgentUpdated, "a1".to_owned(), None),
            (NoteKind::OfferExpired, expiring.clone(), a1.clone()),
            (NoteKind::Declined, declined.clone(), a1.clone()),
            (NoteKind::Accepted, accepted.clone(), a1.clone()),
        ]
    );
    let batches = hung(&s);
    let hung_types: Vec<Vec<&str>> = batches
        .iter()
        .map(|b| b.iter().map(|(key, _)| key.as_str()).collect())
        .collect();
    assert_eq!(
        hung_types,
        [
            vec![
                "conversation.transferred",
                "conversation.queued",
                "agent.updated"
            ],
            vec!["conversation.transferred", "conversation.queued"],
            vec!["conversation.accepted"],
        ]
    );

    // Past the grace, announced from the stored state: the very events the commands built.
    let later = outbox.with_staged_grace(Duration::ZERO);
    assert_eq!(later.republish().await.expect("republish"), 4);
    let announced = drain_events(&mut s.events).await;
    let want = hung_events(&s);
    let mut got: Vec<switchyard_core::event::CloudEvent> =
        announced.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(got.len(), want.len(), "{got:?}");
    // The agent as it is now: the decline since took a conversation from it.
    assert_eq!(
        (&got[2].id, &got[2].data["agent"]["status"]),
        (&want[2].id, &serde_json::json!("away"))
    );
    got[2].data = want[2].data.clone();
    assert_eq!(got, want, "announced vs. the commands' own events");
    assert_eq!(got[0].data["reason"], "offer_expired");
    assert_eq!(got[0].data["from_agent_id"], "a1");
    assert_eq!(got[3].data["reason"], "declined");
    assert_eq!(got[5].data["conversation"]["id"], accepted.as_str());
    assert_eq!(got[5].data["conversation"]["agent_id"], "a1");
    assert!(got[5].data["conversation"]["offered_at"].is_null());
    assert!(unannounced(&s).await.is_empty());
    assert_eq!(later.republish().await.expect("republish"), 0);
    assert!(drain(&mut s.events).await.is_empty(), "announced twice");
}

/// A queue overflow that publishes its events clears its note. One stopped during its publish,
/// once the store moved the conversation: after the grace, the outbox announces what the command
/// would have, `conversation.transferred` with the reason `overflow` then `conversation.queued`,
/// with the same ids.
async fn an_overflow_whose_command_stops_is_announced_with_its_reason_after_the_grace(
    mut s: Setup,
) {
    set_capacity(&s.store, 0).await;
    let (ops, outbox) = commands(&s);
    let moved = conversation_of(&s, "u-m").await;
    let waiting = conversation_of(&s, "u-w").await;
    drain(&mut s.events).await;
    let cutoff = switchyard_core::time::now() + chrono::TimeDelta::seconds(1);
    let to_vip = QueueTarget {
        pool: "vip".into(),
        skills: None,
        priority: None,
        offer_secs: 0,
    };
    ops.overflow(&moved, "default", cutoff, to_vip)
        .await
        .expect("overflow");
    assert_eq!(
        drain_events(&mut s.events)
            .await
            .iter()
            .map(|(_, e)| e.event_type.as_str())
            .collect::<Vec<_>>(),
        [
            "io.switchyard.conversation.transferred",
            "io.switchyard.conversation.queued"
        ]
    );
    assert!(
        unannounced(&s).await.is_empty(),
        "a published overflow left its note"
    );
    let queued_at = s
        .store
        .conversation(&waiting)
        .await
        .unwrap()
        .unwrap()
        .queued_at
        .expect("queued");
    forget_notes(&s.store).await;

    s.bus.hanging.store(1, Ordering::SeqCst);
    let task = {
        let (ops, id) = (ops.clone(), waiting.clone());
        let target = QueueTarget {
            pool: "default".into(),
            skills: None,
            priority: Some(5),
            offer_secs: 0,
        };
        let cutoff = queued_at + chrono::TimeDelta::seconds(1);
        tokio::spawn(async move { ops.overflow(&id, "default", cutoff, target).await })
    };
    stop_once_stored(task, "the overflow", async || {
        let c = s.store.conversation(&waiting).await.unwrap().unwrap();
        (c.priority == 5).then_some(())
    })
    .await;
    assert_eq!(
        unannounced(&s).await,
        [(NoteKind::Overflowed, waiting.clone(), None)]
    );

    let later = outbox.with_staged_grace(Duration::ZERO);
    assert_eq!(later.republish().await.expect("republish"), 1);
    let announced = drain_events(&mut s.events).await;
    let want = hung_events(&s);
    let got: Vec<switchyard_core::event::CloudEvent> =
        announced.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(got, want, "announced vs. the command's own events");
    assert_eq!(
        got.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        [
            "io.switchyard.conversation.transferred",
            "io.switchyard.conversation.queued"
        ]
    );
    assert_eq!(got[0].data["reason"], "overflow");
    assert!(got[0].data["from_agent_id"].is_null());
    assert_eq!(got[0].data["conversation"]["priority"], 5);
    assert!(unannounced(&s).await.is_empty());
}

/// A running gateway (no router): an agent coming online while the bus refuses events is
/// answered 200, and the gateway's own republisher (every 5 s) publishes its `agent.updated`
/// once the bus is back.
#[tokio::test]
async fn a_running_app_republishes_what_a_command_deferred() {
    use axum::body::Body;
    use axum::http::Request;
    use switchyard_core::bus::topology::EVENTS_EXCHANGE;
    use switchyard_core::config::Settings;
    use switchyard_router::{App, Role};
    use tower::ServiceExt;

    let s = setup().await;
    let bus: Arc<dyn Bus> = s.bus.clone();
    let settings = Settings::load_with_env(None, []).expect("default settings");
    let app = App::start_with(
        settings,
        Role::Gateway,
        Arc::clone(&bus),
        Arc::clone(&s.store),
        s.metrics.clone(),
    )
    .await
    .expect("app");
    let queue = bus
        .declare_subscriber(EVENTS_EXCHANGE, &["agent.updated"])
        .await
        .expect("subscriber");
    let mut agent_events = bus.consume(&queue, 10).await.expect("consume");

    s.bus.failing.store(1, Ordering::SeqCst);
    let request = Request::put("/v1/agents/late-agent")
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"name":"Late","pools":["default"],"capacity":2,"status":"online"}"#,
        ))
        .expect("request");
    let response = app.http_service().oneshot(request).await.expect("response");
    assert!(
        response.status().is_success(),
        "PUT answered {}",
        response.status()
    );
    assert_eq!(kept(&s).await.len(), 1, "the refused events were not kept");

    let delivery = tokio::time::timeout(Duration::from_secs(15), agent_events.next())
        .await
        .expect("agent.updated republished within 15 s")
        .expect("delivery");
    let event: serde_json::Value = serde_json::from_slice(&delivery.message.body).expect("json");
    assert_eq!(event["data"]["agent"]["id"], "late-agent");
    delivery.ack().await.expect("ack");
    assert!(kept(&s).await.is_empty());
    app.stop().await.expect("stop");
}

/// After a long outage the outbox holds more than one round's batches (500): the republisher
/// goes on with the next round at once instead of waiting for its next tick. On the embedded
/// store, under tokio's paused clock, so the number of ticks waited is exact.
#[tokio::test(start_paused = true)]
async fn a_full_round_is_followed_at_once_by_the_next() {
    use switchyard_router::outbox::run_republisher;
    use tokio_util::sync::CancellationToken;

    const KEPT: usize = 1_100;
    let s = setup().await;
    let (_, outbox) = commands(&s);
    for i in 0..KEPT {
        let batch = serde_json::json!({
            "exchange": "switchyard.events",
            "messages": [{"key": "test.kept", "id": format!("e-{i}"), "body": "{}", "headers": {}}],
        });
        s.store
            .mailbox_push(
                OUTBOX_MAILBOX,
                &format!("{i:05}"),
                &batch.to_string(),
                KEPT,
                Duration::from_secs(600),
            )
            .await
            .expect("push");
    }
    let Setup {
        store,
        mut events,
        bus,
        metrics,
        router,
    } = s;
    let received = tokio::spawn(async move {
        let mut ids = Vec::new();
        while ids.len() < KEPT {
            let delivery = events.next().await.expect("delivery");
            ids.push(delivery.message.message_id.clone());
            delivery.ack().await.expect("ack");
        }
        ids
    });

    let every = Duration::from_secs(5);
    let stop = CancellationToken::new();
    let started = tokio::time::Instant::now();
    let republisher = tokio::spawn(run_republisher(outbox, every, stop.clone()));
    let ids = received.await.expect("receiver");
    let took = started.elapsed();
    stop.cancel();
    republisher.await.expect("task").expect("republisher");

    let expected: Vec<String> = (0..KEPT).map(|i| format!("e-{i}")).collect();
    assert_eq!(ids, expected, "republished out of order");
    assert!(
        took < 2 * every,
        "3 rounds took {took:?}: the republisher waited a tick between full rounds"
    );
    assert!(
        store.mailbox_read(OUTBOX_MAILBOX).await.unwrap().is_empty(),
        "batches left in the outbox"
    );
    assert_eq!(
        metrics.outbox.with_label_values(&["republished"]).get(),
        KEPT as u64
    );
    drop((bus, router));
}
