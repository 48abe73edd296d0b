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
    ops.transfer(&waiting, None, TransferTarget::pool("vip"), None)
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

/// Erasing a customer with an assigned conversation closes it (reason `erased`), which frees the
/// agent for the next queued conversation, then erases the profile and its conversations and
/// announces `customer.erased` with their ids.
async fn erasing_a_customer_closes_frees_and_announces(mut s: Setup) {
    set_capacity(&s.store, 1).await;
    let (ops, _) = commands(&s);
    let first = conversation_of(&s, "u-a").await;
    ops.close(&first, Some("a1")).await.expect("close");
    let held = conversation_of(&s, "u-a").await;
    let waiting = conversation_of(&s, "u-b").await;
    assert_eq!(
        status_of(&s, &held).await,
        (ConversationStatus::Assigned, Some("a1".to_owned()))
    );
    let customer = customer_of(&s, &held).await;
    drain(&mut s.events).await;

    let erasure = ops.erase_customer(&customer).await.expect("erase");
    let mut both = vec![first.clone(), held.clone()];
    both.sort();
    assert_eq!(
        (erasure.customer_id.as_str(), &erasure.conversations),
        (customer.as_str(), &both)
    );
    for c in [&first, &held] {
        assert!(s.store.conversation(c).await.unwrap().is_none(), "{c} kept");
    }
    assert!(s.store.customer(&customer).await.unwrap().is_none());
    assert_eq!(
        status_of(&s, &waiting).await,
        (ConversationStatus::Assigned, Some("a1".to_owned())),
        "the freed agent takes the waiting conversation"
    );
    let published = drain_events(&mut s.events).await;
    let keys: Vec<&str> = published.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "conversation.closed",
            "conversation.assigned",
            "customer.erased"
        ]
    );
    let closed = &published[0].1.data["conversation"];
    assert_eq!(
        (closed["id"].as_str(), closed["close_reason"].as_str()),
        (Some(held.as_str()), Some("erased"))
    );
    let erased = &published[2].1;
    assert_eq!(erased.subject.as_deref(), Some(customer.as_str()));
    assert_eq!(
        erased.data,
        serde_json::json!({
            "customer_id": customer,
            "reason": "request",
            "merged_from": [],
            "conversations": both,
        })
    );
    assert_eq!(
        s.metrics
            .customers_erased
            .with_label_values(&["request"])
            .get(),
        1
    );
    // Announced: nothing is left for the outbox's republisher.
    let everything = switchyard_core::time::now() + chrono::TimeDelta::days(1);
    assert!(s.store.unannounced(everything).await.unwrap().is_empty());
    let again = ops.erase_customer(&customer).await;
    assert!(again.is_err(), "erased twice: {again:?}");
}

/// The retention sweep erases a customer whose conversations are all closed and who wrote
/// before the cut-off, announces it, and keeps a customer with an open conversation.
async fn the_retention_sweep_erases_quiet_customers(mut s: Setup) {
    let (ops, _) = commands(&s);
    let quiet = conversation_of(&s, "u-quiet").await;
    ops.close(&quiet, Some("a1")).await.expect("close");
    let open = conversation_of(&s, "u-open").await;
    let (quiet_customer, open_customer) =
        (customer_of(&s, &quiet).await, customer_of(&s, &open).await);
    drain(&mut s.events).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let sweep = tokio::spawn(switchyard_router::retention::sweep_quiet_customers(
        ops.clone(),
        std::time::Duration::ZERO,
        std::time::Duration::from_millis(10),
        stop.clone(),
    ));
    for _ in 0..500 {
        if s.store.customer(&quiet_customer).await.unwrap().is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.cancel();
    sweep.await.unwrap();
    assert!(
        s.store.customer(&quiet_customer).await.unwrap().is_none(),
        "kept"
    );
    assert!(s.store.conversation(&quiet).await.unwrap().is_none());
    assert!(
        s.store.customer(&open_customer).await.unwrap().is_some(),
        "open one erased"
    );
    let published = drain_events(&mut s.events).await;
    let erased: Vec<&serde_json::Value> = published
        .iter()
        .filter(|(k, _)| k == "customer.erased")
        .map(|(_, e)| &e.data)
        .collect();
    assert_eq!(erased.len(), 1, "{published:?}");
    assert_eq!(erased[0]["customer_id"], quiet_customer.as_str());
    assert_eq!(erased[0]["reason"], "retention");
    assert_eq!(
        s.metrics
            .customers_erased
            .with_label_values(&["retention"])
            .get(),
        1
    );
}

/// `{"add_tags": add, "remove_tags": remove, "attributes": attributes}`.
fn tag_update(
    add: &[&str],
    remove: &[&str],
    attributes: serde_json::Value,
) -> switchyard_core::store::CustomerUpdate {
    let owned = |tags: &[&str]| tags.iter().map(|t| (*t).to_owned()).collect();
    switchyard_core::store::CustomerUpdate {
        add_tags: owned(add),
        remove_tags: owned(remove),
        attributes: attributes.as_object().cloned().unwrap_or_default(),
    }
}

/// Updating a customer's tags and attributes answers the profile after the change, announces
/// it as `customer.updated` (id derived from the customer and the time of the change) and leaves
/// nothing for the outbox; an unknown customer and a profile past its limits are refused.
async fn updating_a_customer_announces_the_profile(mut s: Setup) {
    use switchyard_core::event::{CloudEvent, EventType};
    use switchyard_core::store::{MAX_CUSTOMER_TAGS, StoreError};
    use switchyard_router::error::RouteError;

    let (ops, _) = commands(&s);
    let conversation = conversation_of(&s, "u-t").await;
    let customer = customer_of(&s, &conversation).await;
    drain(&mut s.events).await;

    let updated = ops
        .update_customer(
            &customer,
            &tag_update(
                &["vip", "gold"],
                &[],
                serde_json::json!({"plan": "gold", "seats": 12}),
            ),
        )
        .await
        .expect("update");
    assert_eq!(updated.tags, ["vip", "gold"]);
    assert_eq!(updated.attributes["plan"], "gold");
    assert_eq!(
        s.store.customer(&customer).await.unwrap(),
        Some(updated.clone())
    );
    let published = drain_events(&mut s.events).await;
    assert_eq!(published.len(), 1, "{published:?}");
    let (key, event) = &published[0];
    assert_eq!(key, "customer.updated");
    assert_eq!(event.subject.as_deref(), Some(customer.as_str()));
    assert_eq!(event.data, serde_json::json!({ "customer": updated }));
    assert_eq!(
        event.id,
        CloudEvent::state_id(EventType::CustomerUpdated, &customer, event.time),
        "the id is derived from the customer and the time of the change"
    );
    let everything = switchyard_core::time::now() + chrono::TimeDelta::days(1);
    assert!(s.store.unannounced(everything).await.unwrap().is_empty());

    let unknown = ops
        .update_customer(
            "01KAVQ00000000000000000000",
            &tag_update(&["x"], &[], serde_json::json!({})),
        )
        .await;
    assert!(
        matches!(unknown, Err(RouteError::Store(StoreError::NotFound { .. }))),
        "{unknown:?}"
    );
    let too_many: Vec<String> = (0..MAX_CUSTOMER_TAGS).map(|i| format!("t{i}")).collect();
    let refused = ops
        .update_customer(
            &customer,
            &switchyard_core::store::CustomerUpdate {
                add_tags: too_many,
                ..Default::default()
            },
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(RouteError::Store(StoreError::Conflict {
                code: "too_many_tags",
                ..
            }))
        ),
        "{refused:?}"
    );
    assert!(
        drain(&mut s.events).await.is_empty(),
        "a refused update announces nothing"
    );
}

/// A pool `vip` and the rule `vip-customers` sending customers tagged `vip` to it.
fn vip_routes() -> switchyard_router::routes::RoutingTable {
    let path = std::env::temp_dir().join(format!(
        "switchyard-vip-routes-{}.toml",
        switchyard_core::envelope::new_id()
    ));
    std::fs::write(
        &path,
        "[[pools]]\nid = \"vip\"\n\
         [[routes]]\nid = \"vip-customers\"\npool = \"vip\"\ncustomer_tags = [\"vip\"]\n",
    )
    .unwrap();
    let settings = switchyard_core::config::Settings::load_with_env(Some(&path), []);
    let _ = std::fs::remove_file(&path);
    switchyard_router::routes::RoutingTable::from_settings(&settings.unwrap()).unwrap()
}

/// A `[[routes]]` rule with `customer_tags = ["vip"]`: a customer tagged `vip` through
/// `Operations::update_customer` opens the next conversation in the VIP pool; an untagged one
/// stays in the channel's pool, and an open conversation keeps its pool.
async fn a_tagged_customer_opens_the_next_conversation_in_the_tagged_pool(s: Setup) {
    let s = s.with_routes(vip_routes());
    let (ops, _) = commands(&s);

    let pool_of = async |conversation: &str| {
        s.store
            .conversation(conversation)
            .await
            .unwrap()
            .unwrap()
            .pool
    };
    let first = conversation_of(&s, "u-vip").await;
    let plain = conversation_of(&s, "u-plain").await;
    assert_eq!(pool_of(&first).await, "default", "not tagged yet");
    let customer = customer_of(&s, &first).await;
    ops.update_customer(&customer, &tag_update(&["vip"], &[], serde_json::json!({})))
        .await
        .expect("tag");
    // Open already: it keeps its pool.
    assert_eq!(conversation_of(&s, "u-vip").await, first);
    assert_eq!(pool_of(&first).await, "default");

    ops.close(&first, None).await.expect("close");
    ops.close(&plain, None).await.expect("close");
    let next = conversation_of(&s, "u-vip").await;
    assert_ne!(next, first);
    assert_eq!(
        pool_of(&next).await,
        "vip",
        "the tagged customer's next one"
    );
    let untagged = conversation_of(&s, "u-plain").await;
    assert_eq!(
        pool_of(&untagged).await,
        "default",
        "an untagged customer's"
    );
    assert_eq!(
        s.metrics
            .conversations_opened
            .with_label_values(&["vip", "vip-customers"])
            .get(),
        1
    );
}

/// A message that merges two profiles opens its conversation by the tags of both: the merged
/// profile's tags are their union, whichever of the sender's identities is looked up first.
async fn a_message_that_merges_profiles_is_routed_by_the_tags_of_both(s: Setup) {
    use switchyard_core::identity::IdentityKey;
    use switchyard_router::inbound::Routed;

    let s = s.with_routes(vip_routes());
    let (ops, _) = commands(&s);

    // The VIP is known by a phone number; the other profile is an app user without tags.
    let phone: IdentityKey = "phone::+8613800000042".parse().unwrap();
    let mut by_phone = message_of("m-vip", "hello");
    by_phone.sender.identities = vec![phone.clone()];
    let Routed::Recorded(vip_conversation) = s.router.route(by_phone).await.unwrap() else {
        panic!("not recorded");
    };
    let vip = customer_of(&s, &vip_conversation).await;
    ops.update_customer(&vip, &tag_update(&["vip"], &[], serde_json::json!({})))
        .await
        .expect("tag");
    ops.close(&vip_conversation, None).await.expect("close");
    let app = conversation_of(&s, "m-app").await;
    ops.close(&app, None).await.expect("close");

    // The app user's next message carries the phone: the two profiles merge, and the
    // conversation it opens goes to the VIP pool although the app user's own profile (whose
    // key comes first) has no tags.
    let mut merging = message_of("m-app", "it is me");
    merging.sender.identities.push(phone);
    let Routed::Recorded(next) = s.router.route(merging).await.unwrap() else {
        panic!("not recorded");
    };
    let conversation = s.store.conversation(&next).await.unwrap().unwrap();
    assert_eq!(conversation.pool, "vip");
    let customer = s
        .store
        .customer(&conversation.customer_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(customer.tags, vec!["vip".to_owned()], "the merged profile");
    assert_eq!(customer.merged_from.len(), 1, "{customer:?}");
}

on_both_stores!(
    a_message_that_merges_profiles_is_routed_by_the_tags_of_both,
    a_merge_that_frees_an_agent_assigns_the_next_queued_conversation,
    a_merge_that_frees_an_agent_lets_every_configured_pool_move,
    erasing_a_customer_closes_frees_and_announces,
    the_retention_sweep_erases_quiet_customers,
    updating_a_customer_announces_the_profile,
    a_tagged_customer_opens_the_next_conversation_in_the_tagged_pool,
);
