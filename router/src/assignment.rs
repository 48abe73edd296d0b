//! Runs assignment for pools and announces what it assigned.

use switchyard_core::event::EventType;
use switchyard_core::metrics::Metrics;
use switchyard_core::store::{Assignment, Store};

use crate::error::RouteError;
use crate::events::EventBatch;

/// Assigns queued conversations of each pool to agents with room, adds
/// `conversation.assigned` for each to `events` (the caller publishes them), and records
/// ingress-to-assignment latency.
pub async fn assign_pools(
    store: &dyn Store,
    metrics: &Metrics,
    pools: &[String],
    events: &mut EventBatch,
) -> Result<Vec<Assignment>, RouteError> {
    let mut all = Vec::new();
    for pool in pools {
        let now = switchyard_core::time::now();
        let assignments = store.assign_queued(pool, now).await?;
        for a in &assignments {
            let waited = (now - a.conversation.created_at)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64();
            metrics
                .ingress_to_assignment
                .with_label_values(&[pool.as_str()])
                .observe(waited);
            events.conversation(EventType::ConversationAssigned, &a.conversation);
        }
        all.extend(assignments);
    }
    Ok(all)
}

/// Samples each pool's queue length into `switchyard_pool_queue_depth` every `every`, until
/// `stop` (sampled, not updated per message, so routing never pays for reading a long queue).
pub async fn sample_queue_depth(
    store: std::sync::Arc<dyn Store>,
    metrics: Metrics,
    pools: Vec<String>,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), RouteError> {
    loop {
        for pool in &pools {
            if let Ok(queue) = store.queue(pool).await {
                metrics
                    .queue_depth
                    .with_label_values(&[pool.as_str()])
                    .set(queue.len() as i64);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}
