//! Runs assignment for pools and announces what it assigned.

use switchyard_core::event::EventType;
use switchyard_core::metrics::Metrics;
use switchyard_core::store::{Assignment, Note, NoteKind, Store};

use crate::error::RouteError;
use crate::events::EventBatch;
use crate::outbox::Outbox;
use crate::timers::tick;

/// Assigns queued conversations of each pool to agents with room, adds
/// `conversation.assigned` for each to `events` (the caller publishes them), and records
/// ingress-to-assignment latency. The store notes each assignment in the same step; their notes
/// are added to `notes`, for the caller to clear once `events` is published or kept in the outbox
/// ([`Outbox::publish_noted`](crate::outbox::Outbox::publish_noted)). If it never does (it
/// stopped, or lost the store's reply), the outbox's republisher announces them.
pub async fn assign_pools(
    store: &dyn Store,
    metrics: &Metrics,
    pools: &[String],
    events: &mut EventBatch,
    notes: &mut Vec<Note>,
) -> Result<(), RouteError> {
    for pool in pools {
        let now = switchyard_core::time::now();
        let assignments = store.assign_queued_noted(pool, now).await?;
        announce_assignments(metrics, pool, &assignments, events);
        notes.extend(
            assignments
                .iter()
                .map(|a| Note::new(NoteKind::Assigned, &a.conversation.id, now)),
        );
    }
    Ok(())
}

/// For assignments the store made in `pool`: adds each one's `conversation.assigned` to
/// `events`, and records the ingress-to-assignment latency of each new one (a
/// [replayed](Assignment::replayed) one was measured when it was made).
pub fn announce_assignments(
    metrics: &Metrics,
    pool: &str,
    assignments: &[Assignment],
    events: &mut EventBatch,
) {
    for a in assignments {
        if let (false, Some(assigned_at)) = (a.replayed, a.conversation.assigned_at) {
            let waited = (assigned_at - a.conversation.created_at)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64();
            metrics
                .ingress_to_assignment
                .with_label_values(&[pool])
                .observe(waited);
        }
        events.conversation(EventType::ConversationAssigned, &a.conversation);
    }
}

/// Samples each pool's queue ([`Store::queue_stats`]) into `switchyard_pool_queue_depth` and
/// `switchyard_pool_queue_oldest_wait_seconds` every `every`, until `stop` (sampled, not updated
/// per message, so routing never pays for it).
pub async fn sample_queue_depth(
    store: std::sync::Arc<dyn Store>,
    metrics: Metrics,
    pools: Vec<String>,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), RouteError> {
    loop {
        let now = switchyard_core::time::now();
        for pool in &pools {
            match store.queue_stats(pool).await {
                Ok(stats) => {
                    let waited = stats.oldest_wait_secs(now).unwrap_or(0.0);
                    metrics
                        .queue_depth
                        .with_label_values(&[pool.as_str()])
                        .set(i64::try_from(stats.depth).unwrap_or(i64::MAX));
                    metrics
                        .queue_oldest_wait
                        .with_label_values(&[pool.as_str()])
                        .set(waited);
                }
                Err(e) => tracing::debug!(pool = %pool, error = %e, "could not sample the queue"),
            }
        }
        if !tick(every, &stop).await {
            return Ok(());
        }
    }
}

/// Every `every` until `stop`: sets offline the presence-tracked agents whose heartbeats stopped
/// (their gateway died) and announces each with `agent.updated`, so helpdesks and agent
/// consoles see it without waiting for an assignment to meet them. Concurrent sweepers are
/// safe: each lapsed agent is expired by exactly one call.
pub async fn sweep_lapsed_agents(
    store: std::sync::Arc<dyn Store>,
    events: Outbox,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), RouteError> {
    while tick(every, &stop).await {
        let now = switchyard_core::time::now();
        let agents = match store.expire_lapsed_agents(now).await {
            Ok(agents) => agents,
            Err(e) => {
                tracing::warn!(error = %e, "could not sweep lapsed agent presence");
                continue;
            }
        };
        if agents.is_empty() {
            continue;
        }
        let mut batch = EventBatch::new();
        let mut notes = Vec::with_capacity(agents.len());
        for agent in &agents {
            tracing::info!(agent_id = %agent.id, "agent presence lapsed: set offline");
            batch.agent_updated(agent);
            notes.push(Note::new(NoteKind::AgentUpdated, &agent.id, now));
        }
        if let Err(e) = events.publish_noted(batch, &notes).await {
            tracing::warn!(error = %e, "lapsed agents set offline, but agent.updated not published");
        }
    }
    Ok(())
}
