//! The ingress pipeline shared by every channel endpoint: connector verification and
//! normalization, deduplication, and publishing with confirms. The answer to the channel is
//! decided here from the connector's error class (DESIGN.md "How errors map").

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_connectors::{Accepted, Channel, ConnectorError, EnvelopeSink, InboundRequest};
use switchyard_core::bus::topology::{INBOUND_EXCHANGE, shard_of};
use switchyard_core::bus::{Bus, BusError, Message};
use switchyard_core::envelope::Envelope;
use switchyard_core::metrics::{InboundOutcome, Metrics};
use switchyard_core::store::Store;

/// How long a dedupe claim stays "in progress" if the process dies before the bus confirms.
const PENDING_CLAIM: Duration = Duration::from_secs(30);
/// Prefix of a dedupe value whose publish is still in progress.
const PENDING_PREFIX: &str = "pending:";

/// Publishes envelopes onto the inbound shards, exactly once per dedupe key.
#[derive(Clone)]
pub struct Ingress {
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    shards: u16,
    dedupe_ttl: Duration,
}

impl Ingress {
    /// An ingress publishing on `bus` with `shards` inbound queues.
    pub fn new(
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        metrics: Metrics,
        shards: u16,
        dedupe_ttl: Duration,
    ) -> Self {
        Ingress {
            bus,
            store,
            metrics,
            shards,
            dedupe_ttl,
        }
    }

    /// Whether the bus takes publishes.
    pub fn is_ready(&self) -> bool {
        self.bus.is_ready()
    }

    /// Verifies, normalizes and publishes one channel request.
    pub async fn ingest(
        &self,
        channel: &dyn Channel,
        req: &InboundRequest<'_>,
    ) -> Result<Vec<Accepted>, ConnectorError> {
        let id = channel.channel().id.clone();
        let envelopes = match channel.ingest(req) {
            Ok(envelopes) => envelopes,
            Err(e) => {
                self.metrics.count_inbound(&id, outcome_of(&e));
                return Err(e);
            }
        };
        // The connector hands its envelopes to the bus itself (most publish them as they are;
        // WeCom pulls the messages a notice announces and publishes them page by page).
        let sink = IngressSink {
            ingress: self,
            channel,
        };
        match channel.deliver(envelopes, &sink).await {
            Ok(accepted) => Ok(accepted),
            Err(e) => {
                if !matches!(e, ConnectorError::Transient(_)) {
                    self.metrics.count_inbound(&id, outcome_of(&e));
                }
                Err(e)
            }
        }
    }

    /// Publishes envelopes a connector produced (also used by the visitor WebSocket).
    pub async fn publish_all(
        &self,
        channel: &dyn Channel,
        envelopes: Vec<Envelope>,
    ) -> Result<Vec<Accepted>, ConnectorError> {
        let started = Instant::now();
        let id = &channel.channel().id;
        let mut accepted = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            match self.publish(envelope).await {
                Ok(a) => {
                    let outcome = if a.duplicate {
                        InboundOutcome::Duplicate
                    } else {
                        InboundOutcome::Accepted
                    };
                    self.metrics.count_inbound(id, outcome);
                    accepted.push(a);
                }
                Err(e) => {
                    self.metrics.count_inbound(id, InboundOutcome::Transient);
                    return Err(e);
                }
            }
        }
        self.metrics
            .ingress_publish
            .with_label_values(&[channel.channel().kind.as_str()])
            .observe(started.elapsed().as_secs_f64());
        Ok(accepted)
    }

    /// Claims the envelope's dedupe key, publishes it, and confirms the claim; a retry of the
    /// same message answers with the first copy's id.
    pub async fn publish(&self, envelope: Envelope) -> Result<Accepted, ConnectorError> {
        let key = format!("dedupe:{}", envelope.dedupe_key);
        let pending = format!("{PENDING_PREFIX}{}", envelope.id);
        let existing = self
            .store
            .claim_key(&key, &pending, PENDING_CLAIM)
            .await
            .map_err(|e| ConnectorError::Transient(e.to_string()))?;
        if let Some(existing) = existing {
            if existing.starts_with(PENDING_PREFIX) {
                return Err(ConnectorError::Transient(
                    "this message is being accepted by another request; retry shortly".into(),
                ));
            }
            return Ok(Accepted {
                id: existing,
                duplicate: true,
            });
        }
        let body = match serde_json::to_vec(&envelope) {
            Ok(b) => b,
            Err(e) => {
                let _ = self.store.delete_key(&key).await;
                return Err(ConnectorError::Malformed(format!(
                    "cannot encode envelope: {e}"
                )));
            }
        };
        let shard = shard_of(&envelope.shard_key(), self.shards).to_string();
        let message = Message::new(envelope.id.clone(), body);
        if let Err(e) = self.bus.publish(INBOUND_EXCHANGE, &shard, message).await {
            if let Err(release) = self.store.delete_key(&key).await {
                tracing::warn!(error = %release, "could not release a dedupe claim; the retry waits for it to expire");
            }
            return Err(bus_unavailable(e));
        }
        if let Err(e) = self
            .store
            .set_key(&key, &envelope.id, self.dedupe_ttl)
            .await
        {
            // The message is on the bus; a retry within the pending window will be told to retry,
            // after it the router's idempotency still holds.
            tracing::warn!(error = %e, "could not confirm a dedupe claim");
        }
        Ok(Accepted {
            id: envelope.id,
            duplicate: false,
        })
    }
}

/// Lets a connector publish through the ingress (dedupe, confirm, metrics).
struct IngressSink<'a> {
    ingress: &'a Ingress,
    channel: &'a dyn Channel,
}

#[async_trait::async_trait]
impl EnvelopeSink for IngressSink<'_> {
    async fn publish(&self, envelopes: Vec<Envelope>) -> Result<Vec<Accepted>, ConnectorError> {
        self.ingress.publish_all(self.channel, envelopes).await
    }
}

fn bus_unavailable(e: BusError) -> ConnectorError {
    ConnectorError::Transient(format!("message bus unavailable: {e}"))
}

/// The inbound metric outcome of a connector error.
pub fn outcome_of(e: &ConnectorError) -> InboundOutcome {
    match e {
        ConnectorError::Unauthorized(_) => InboundOutcome::BadSignature,
        ConnectorError::Malformed(_) => InboundOutcome::Malformed,
        ConnectorError::Unsupported(_) => InboundOutcome::Ignored,
        _ => InboundOutcome::Transient,
    }
}
