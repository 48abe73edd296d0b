//! Runs the `switchyard_core::conformance` suites against the embedded bus and store, one
//! `#[tokio::test]` per case (the feature is enabled for this crate's tests by the self
//! dev-dependency in core/Cargo.toml).

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::bus::Bus;
use switchyard_core::bus::embedded::EmbeddedBus;
use switchyard_core::conformance::{bus, store};
use switchyard_core::store::Store;
use switchyard_core::store::embedded::EmbeddedStore;

const PUBLISH_TIMEOUT: Duration = bus::DEFAULT_PUBLISH_TIMEOUT;

async fn new_bus() -> Arc<dyn Bus> {
    Arc::new(EmbeddedBus::new(PUBLISH_TIMEOUT))
}

async fn new_store() -> Arc<dyn Store> {
    Arc::new(EmbeddedStore::new())
}

#[tokio::test]
async fn bus_publish_consume_roundtrip() {
    bus::publish_consume_roundtrip(&new_bus, "embedded.").await;
}

#[tokio::test]
async fn bus_unroutable_publish_is_refused() {
    bus::unroutable_publish_is_refused(&new_bus, "embedded.").await;
}

#[tokio::test]
async fn bus_direct_and_topic_routing() {
    bus::direct_and_topic_routing(&new_bus, "embedded.").await;
}

#[tokio::test]
async fn bus_per_key_order_with_retry() {
    bus::per_key_order_with_retry(&new_bus, "embedded.").await;
}

#[tokio::test]
async fn bus_delivery_limit_dead_letters() {
    bus::delivery_limit_dead_letters(&new_bus, "embedded.").await;
}

#[tokio::test]
async fn bus_reject_dead_letters_at_once() {
    bus::reject_dead_letters_at_once(&new_bus, "embedded.").await;
}

#[tokio::test]
async fn bus_dropped_delivery_is_redelivered() {
    bus::dropped_delivery_is_redelivered(&new_bus, "embedded.").await;
}

#[tokio::test]
async fn bus_prefetch_bounds_unsettled() {
    bus::prefetch_bounds_unsettled(&new_bus, "embedded.").await;
}

#[tokio::test]
async fn bus_close_ends_consumer_streams() {
    bus::close_ends_consumer_streams(&new_bus, "embedded.").await;
}

#[tokio::test]
async fn bus_back_pressure() {
    bus::back_pressure(&new_bus, "embedded.", PUBLISH_TIMEOUT).await;
}

#[tokio::test]
async fn bus_run_all_on_one_shared_bus() {
    // Every case under its own prefix on a single bus instance: the prefixes keep them apart.
    let shared: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(PUBLISH_TIMEOUT));
    let same = || {
        let shared = Arc::clone(&shared);
        async move { shared }
    };
    // Only `close_ends_consumer_streams` closes the bus, and `run_all` runs it last.
    bus::run_all(&same, "shared.", Some(PUBLISH_TIMEOUT)).await;
}

#[tokio::test]
async fn store_dedupe_claim_release_ttl() {
    store::dedupe_claim_release_ttl(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_strong_identities_merge() {
    store::strong_identities_merge(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_weak_identities_merge_only_explicitly() {
    store::weak_identities_merge_only_explicitly(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_one_open_conversation_across_channels() {
    store::one_open_conversation_across_channels(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_record_inbound_is_idempotent() {
    store::record_inbound_is_idempotent(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_record_outbound_is_idempotent() {
    store::record_outbound_is_idempotent(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_resolve_retry_reports_created() {
    store::resolve_retry_reports_created(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_lapsed_agents_are_swept() {
    store::lapsed_agents_are_swept(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_longest_idle_agent_first() {
    store::longest_idle_agent_first(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_capacity_never_exceeded() {
    store::capacity_never_exceeded(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_concurrent_assignment_never_doubles() {
    store::concurrent_assignment_never_doubles(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_queue_fifo_head_assigned_when_room_frees() {
    store::queue_fifo_head_assigned_when_room_frees(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_last_agent_preferred_when_it_can_take_the_conversation() {
    store::last_agent_preferred_when_it_can_take_the_conversation(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_offers_are_accepted_declined_or_expire() {
    store::offers_are_accepted_declined_or_expire(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_unanswered_customers_are_taken_back() {
    store::unanswered_customers_are_taken_back(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_least_busy_pool_gives_the_agent_holding_the_fewest() {
    store::least_busy_pool_gives_the_agent_holding_the_fewest(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_overflow_moves_only_what_still_waits() {
    store::overflow_moves_only_what_still_waits(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_priority_goes_first_and_ties_keep_arrival_order() {
    store::priority_goes_first_and_ties_keep_arrival_order(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_skills_route_past_heads_nobody_can_take() {
    store::skills_route_past_heads_nobody_can_take(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_record_outbound_conflicts() {
    store::record_outbound_conflicts(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_unannounced_notes() {
    store::unannounced_notes(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_transfer_to_pool_and_agent() {
    store::transfer_to_pool_and_agent(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_handovers_are_kept_with_the_conversation() {
    store::handovers_are_kept_with_the_conversation(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_conversations_go_back_to_a_bot() {
    store::conversations_go_back_to_a_bot(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_merge_with_open_conversations() {
    store::merge_with_open_conversations(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_concurrent_resolution_converges() {
    store::concurrent_resolution_converges(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_presence_heartbeat_ttl() {
    store::presence_heartbeat_ttl(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_presence_lapse_resume_and_updates() {
    store::presence_lapse_resume_and_updates(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_mailbox_push_read_ack() {
    store::mailbox_push_read_ack(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_route_inbound_opens_and_assigns() {
    store::route_inbound_opens_and_assigns(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_route_inbound_queues_without_agent() {
    store::route_inbound_queues_without_agent(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_route_inbound_opens_with_a_bot() {
    store::route_inbound_opens_with_a_bot(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_idle_bot_conversations_longest_silent_first() {
    store::idle_bot_conversations_longest_silent_first(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_close_idle_only_when_unchanged() {
    store::close_idle_only_when_unchanged(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_route_inbound_retry_changes_nothing() {
    store::route_inbound_retry_changes_nothing(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_route_inbound_retry_reports_other_assignments() {
    store::route_inbound_retry_reports_other_assignments(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_route_inbound_duplicate_claim_changes_nothing() {
    store::route_inbound_duplicate_claim_changes_nothing(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_route_inbound_profiles_converge() {
    store::route_inbound_profiles_converge(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_route_inbound_matches_stepwise() {
    store::route_inbound_matches_stepwise(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_erase_customer_deletes_everything() {
    store::erase_customer_deletes_everything(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_customer_conversations_newest_first() {
    store::customer_conversations_newest_first(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_pool_conversations_open_oldest_first() {
    store::pool_conversations_open_oldest_first(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_start_conversation_opens_assigned() {
    store::start_conversation_opens_assigned(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_update_customer_tags_and_attributes() {
    store::update_customer_tags_and_attributes(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_quiet_customers_are_erased() {
    store::quiet_customers_are_erased(&new_store, "embedded.").await;
}

#[tokio::test]
async fn store_run_all_on_one_shared_store() {
    // Every case under its own prefix on a single store: prefixed names keep them apart.
    let shared: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
    let same = || {
        let shared = Arc::clone(&shared);
        async move { shared }
    };
    store::run_all(&same, "shared.").await;
}
