//! The event outbox: events of changes that are stored already and that no bus redelivery will
//! repeat (agent presence, closes, transfers, links, replies sent, lapsed presence). When the bus
//! refuses such a batch, it is kept in the store and republished, in order and with the same
//! event ids, once the bus takes it again.
//!
//! Routing does not need this: a message whose events were not confirmed is not acknowledged, so
//! the bus redelivers it and the retry announces everything again.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_core::bus::{BusError, Message};
use switchyard_core::envelope::new_id;
use switchyard_core::metrics::Metrics;
use switchyard_core::store::{MailboxItem, Store};
use tokio_util::sync::CancellationToken;

use crate::events::{EventBatch, EventPublisher, event_message};

/// The store mailbox holding deferred event batches, oldest first.
pub const OUTBOX_MAILBOX: &str = "events-outbox";
/// The claim that lets one process at a time republish the outbox.
const REPUBLISH_LOCK: &str = "lock:events-outbox";
/// The most batches the outbox keeps; older ones are dropped beyond it.
pub const OUTBOX_MAX_BATCHES: usize = 100_000;
/// How long a deferred batch is kept (an outage longer than this loses its events).
pub const OUTBOX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Batches republished per round, so that one round never holds the lock for long.
const REPUBLISH_ROUND: usize = 500;

/// Publishes event batches, deferring to the store's outbox a batch the bus does not confirm.
#[derive(Clone)]
pub struct EventOutbox {
    events: EventPublisher,
    store: Arc<dyn Store>,
    metrics: Metrics,
}

/// One deferred event, as kept in the outbox.
#[derive(Debug, Serialize, Deserialize)]
struct DeferredEvent {
    /// Routing key: the event type.
    key: String,
    /// The event id (CloudEvents `id`).
    id: String,
    /// The event's JSON.
    event: String,
}

impl EventOutbox {
    /// An outbox that publishes with `events` and defers to `store`.
    pub fn new(events: EventPublisher, store: Arc<dyn Store>, metrics: Metrics) -> Self {
        EventOutbox {
            events,
            store,
            metrics,
        }
    }

    /// The publisher batches go out through.
    pub fn publisher(&self) -> &EventPublisher {
        &self.events
    }

    /// Publishes `batch`. If the bus does not confirm it, the batch is kept in the outbox and
    /// this returns `Ok`: the change it announces is stored, and its events will follow. Fails
    /// only when the batch could be neither published nor kept.
    pub async fn publish(&self, batch: EventBatch) -> Result<(), BusError> {
        if batch.is_empty() {
            return Ok(());
        }
        let messages = batch.into_messages()?;
        let Err(refused) = self.events.publish_messages(messages.clone()).await else {
            return Ok(());
        };
        let deferred: Vec<DeferredEvent> = messages
            .into_iter()
            .map(|(key, message)| DeferredEvent {
                key,
                id: message.message_id,
                event: String::from_utf8_lossy(&message.body).into_owned(),
            })
            .collect();
        let body = serde_json::to_string(&deferred).map_err(|e| BusError::Nacked {
            exchange: "events outbox".into(),
            reason: format!("cannot encode a deferred batch: {e}"),
        })?;
        match self
            .store
            .mailbox_push(
                OUTBOX_MAILBOX,
                &new_id(),
                &body,
                OUTBOX_MAX_BATCHES,
                OUTBOX_TTL,
            )
            .await
        {
            Ok(_) => {
                self.count("deferred", 1);
                tracing::warn!(error = %refused, events = deferred.len(), "events deferred to the outbox; they are republished once the bus takes them");
                Ok(())
            }
            Err(e) => {
                self.count("lost", 1);
                tracing::error!(error = %e, publish_error = %refused, "events could be neither published nor deferred");
                Err(refused)
            }
        }
    }

    /// Builds a batch with `build` and publishes it (see [`EventOutbox::publish`]).
    pub async fn emit(&self, build: impl FnOnce(&mut EventBatch)) -> Result<(), BusError> {
        let mut batch = EventBatch::new();
        build(&mut batch);
        self.publish(batch).await
    }

    /// Republishes the outbox's batches, oldest first, stopping at the first the bus refuses.
    /// One process at a time does this (a store claim); returns how many batches went out.
    pub async fn republish(&self) -> Result<usize, BusError> {
        let lock_id = new_id();
        let store_down = |e: switchyard_core::store::StoreError| {
            BusError::Unavailable(format!("store unavailable for the events outbox: {e}"))
        };
        let holder = self
            .store
            .claim_key(REPUBLISH_LOCK, &lock_id, Duration::from_secs(60))
            .await
            .map_err(store_down)?;
        if holder.is_some() {
            return Ok(0);
        }
        let result = self.republish_round().await;
        if let Err(e) = self.store.delete_key(REPUBLISH_LOCK).await {
            tracing::warn!(error = %e, "could not release the outbox lock; it expires by itself");
        }
        result
    }

    async fn republish_round(&self) -> Result<usize, BusError> {
        let items =
            self.store.mailbox_read(OUTBOX_MAILBOX).await.map_err(|e| {
                BusError::Unavailable(format!("cannot read the events outbox: {e}"))
            })?;
        let mut published = 0;
        for item in items.into_iter().take(REPUBLISH_ROUND) {
            match decode(&item) {
                Ok(messages) => self.events.publish_messages(messages).await?,
                Err(e) => {
                    self.count("dropped", 1);
                    tracing::error!(id = %item.id, error = %e, "dropping an undecodable outbox batch");
                }
            }
            self.store
                .mailbox_ack(OUTBOX_MAILBOX, std::slice::from_ref(&item.id))
                .await
                .map_err(|e| {
                    BusError::Unavailable(format!("cannot acknowledge an outbox batch: {e}"))
                })?;
            published += 1;
            self.count("republished", 1);
        }
        Ok(published)
    }

    fn count(&self, outcome: &str, n: u64) {
        self.metrics
            .events_outbox
            .with_label_values(&[outcome])
            .inc_by(n);
    }
}

/// The bus messages of a deferred batch.
fn decode(item: &MailboxItem) -> Result<Vec<(String, Message)>, serde_json::Error> {
    let events: Vec<DeferredEvent> = serde_json::from_str(&item.body)?;
    Ok(events
        .into_iter()
        .map(|e| (e.key, event_message(e.id, e.event.into_bytes())))
        .collect())
}

/// Every `every` until `stop`: republishes what the outbox holds.
pub async fn run_republisher(
    outbox: EventOutbox,
    every: Duration,
    stop: CancellationToken,
) -> Result<(), crate::error::RouteError> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        match outbox.republish().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(batches = n, "republished deferred events"),
            Err(e) => tracing::warn!(error = %e, "deferred events wait for the bus"),
        }
    }
}
