//! Data retention: closed conversations are deleted from the store `store.retention_days` after
//! they closed, with their messages ([`Store::expire_closed`]), and customers are erased
//! `store.customer_retention_days` after their last message once nothing of theirs is open
//! ([`Store::erase_quiet_customers`], announced as `customer.erased`). Routers sweep;
//! concurrent sweeps are safe, each record goes once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use switchyard_core::metrics::Metrics;
use switchyard_core::store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::operations::Operations;
use crate::timers::tick;

/// Records one store call goes through: one call stays short, even for conversations with many
/// messages.
const BATCH: usize = 50;

/// Every `every` until `stop`: deletes the conversations closed more than `keep` ago, batch
/// after batch until none is left, counting them in `metrics`.
pub async fn sweep_closed_conversations(
    store: Arc<dyn Store>,
    metrics: Metrics,
    keep: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    sweep(
        "delete expired conversations",
        keep,
        every,
        stop,
        |closed_before| {
            let (store, metrics) = (&store, &metrics);
            async move {
                let handled = store.expire_closed(closed_before, BATCH).await?;
                metrics.conversations_swept.inc_by(handled as u64);
                Ok::<_, StoreError>(handled)
            }
        },
    )
    .await;
}

/// Every `every` until `stop`: erases the customers quiet for more than `keep` (see
/// [`Operations::erase_quiet_customers`]), batch after batch until none is left.
pub async fn sweep_quiet_customers(
    ops: Operations,
    keep: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    sweep("erase quiet customers", keep, every, stop, |quiet_before| {
        ops.erase_quiet_customers(quiet_before, BATCH)
    })
    .await;
}

/// Every `every` until `stop`, calls `batch` with the cut-off `keep` before now until it
/// handles fewer than [`BATCH`] records (or fails, which is logged and tried again next time).
async fn sweep<F, Fut, E>(
    what: &str,
    keep: Duration,
    every: Duration,
    stop: CancellationToken,
    mut batch: F,
) where
    F: FnMut(DateTime<Utc>) -> Fut,
    Fut: Future<Output = Result<usize, E>>,
    E: std::fmt::Display,
{
    let Ok(keep) = chrono::TimeDelta::from_std(keep) else {
        tracing::warn!(
            ?keep,
            "retention beyond what the clock can count: never {what}"
        );
        stop.cancelled().await;
        return;
    };
    while tick(every, &stop).await {
        let cut_off = switchyard_core::time::now() - keep;
        loop {
            match batch(cut_off).await {
                Ok(handled) if handled < BATCH || stop.is_cancelled() => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not {what}; trying again later");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use switchyard_core::conformance::store::message_from;
    use switchyard_core::metrics::Metrics;
    use switchyard_core::store::Store;
    use switchyard_core::store::embedded::EmbeddedStore;
    use tokio_util::sync::CancellationToken;

    use super::sweep_closed_conversations;

    /// A conversation of a new customer `name`, closed `ago` before now.
    async fn closed(store: &Arc<dyn Store>, name: &str, ago: chrono::TimeDelta) -> String {
        let now = switchyard_core::time::now() - ago;
        let id = message_from(store, name, "default", now).await;
        store.close_conversation(&id, "agent", now).await.unwrap();
        id
    }

    #[tokio::test]
    async fn conversations_closed_longer_ago_than_kept_go() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
        let old = closed(&store, "old", chrono::TimeDelta::days(3)).await;
        let recent = closed(&store, "recent", chrono::TimeDelta::hours(1)).await;
        let metrics = Metrics::new().unwrap();
        let stop = CancellationToken::new();
        let sweep = tokio::spawn(sweep_closed_conversations(
            Arc::clone(&store),
            metrics.clone(),
            Duration::from_secs(24 * 3600),
            Duration::from_millis(10),
            stop.clone(),
        ));
        for _ in 0..500 {
            if store.conversation(&old).await.unwrap().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        sweep.await.unwrap();
        assert!(store.conversation(&old).await.unwrap().is_none(), "kept");
        assert!(store.conversation(&recent).await.unwrap().is_some(), "gone");
        assert_eq!(metrics.conversations_swept.get(), 1);
    }
}
