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
use switchyard_core::redaction::Redaction;
use switchyard_core::store::Store;

use crate::events::EventPublisher;

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
    redaction: Arc<Redaction>,
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
            redaction: Arc::default(),
        }
    }

    /// The same ingress, taking personal data out of each channel's envelopes as `redaction`
    /// says before they are published.
    pub fn with_redaction(mut self, redaction: Redaction) -> Self {
        self.redaction = Arc::new(redaction);
        self
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

    /// Takes personal data out of `envelope` as its channel's rules say, counting each
    /// replacement.
    fn redact(&self, envelope: &mut Envelope) {
        let Some(redactor) = self.redaction.for_channel(&envelope.channel.id) else {
            return;
        };
        for (rule, n) in redactor.redact_envelope(envelope).iter() {
            self.metrics
                .redactions
                .with_label_values(&[envelope.channel.id.as_str(), rule])
                .inc_by(n);
        }
    }

    /// Claims the envelope's dedupe key, redacts it as its channel says, publishes it, and
    /// confirms the claim; a retry of the same message answers with the first copy's id.
    pub async fn publish(&self, mut envelope: Envelope) -> Result<Accepted, ConnectorError> {
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
        self.redact(&mut envelope);
        let body = match serde_json::to_vec(&envelope) {
            Ok(b) => b,
            Err(e) => {
                let _ = self.store.release_key(&key, &pending).await;
                return Err(ConnectorError::Malformed(format!(
                    "cannot encode envelope: {e}"
                )));
            }
        };
        let shard = shard_of(&envelope.shard_key(), self.shards).to_string();
        let message = Message::new(envelope.id.clone(), body);
        if let Err(e) = self.bus.publish(INBOUND_EXCHANGE, &shard, message).await {
            if let Err(release) = self.store.release_key(&key, &pending).await {
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

    /// Publishes `message.failed` for a reply the channel reported undelivered after it had
    /// accepted it (the agent hub turns it into a `delivery_failed` frame for its agent).
    async fn delivery_failed(
        &self,
        message: &Envelope,
        code: &str,
        reason: &str,
    ) -> Result<(), ConnectorError> {
        EventPublisher::new(Arc::clone(&self.ingress.bus))
            .emit(|b| {
                b.message_failed(message, code, reason);
            })
            .await
            .map_err(bus_unavailable)?;
        tracing::info!(
            channel = %self.channel.channel().id,
            id = %message.id,
            %code,
            %reason,
            "the channel reported a reply undelivered"
        );
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use async_trait::async_trait;
    use axum::http::{HeaderMap, Method};
    use chrono::{DateTime, Utc};
    use switchyard_connectors::{Connector, HttpReply, SendReceipt};
    use switchyard_core::bus::Topology;
    use switchyard_core::bus::embedded::EmbeddedBus;
    use switchyard_core::bus::topology::EVENTS_EXCHANGE;
    use switchyard_core::envelope::{ChannelRef, Content, Direction, Sender};
    use switchyard_core::event::{CloudEvent, EventType};
    use switchyard_core::store::embedded::EmbeddedStore;

    use super::*;

    /// A channel whose every request reports `failed` as undelivered, as WeCom kf does for a
    /// `msg_send_fail` it pulled.
    struct Reporting {
        channel: ChannelRef,
        failed: Envelope,
    }

    #[async_trait]
    impl Connector for Reporting {
        type Inbound = ();

        fn channel(&self) -> &ChannelRef {
            &self.channel
        }

        fn verify(&self, _req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
            Ok(())
        }

        fn decode(&self, _req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
            Ok(())
        }

        fn normalize(
            &self,
            _inbound: (),
            _received_at: DateTime<Utc>,
        ) -> Result<Vec<Envelope>, ConnectorError> {
            Ok(Vec::new())
        }

        async fn deliver(
            &self,
            _envelopes: Vec<Envelope>,
            sink: &dyn EnvelopeSink,
        ) -> Result<Vec<Accepted>, ConnectorError> {
            sink.delivery_failed(&self.failed, "wecom_fail_type_4", "the session expired")
                .await?;
            Ok(Vec::new())
        }

        fn accepted(&self, _accepted: &[Accepted]) -> HttpReply {
            HttpReply::text(200, "")
        }

        async fn send(&self, _message: &Envelope) -> Result<SendReceipt, ConnectorError> {
            Ok(SendReceipt::default())
        }
    }

    fn reply(channel: &ChannelRef) -> Envelope {
        let now = Utc::now();
        Envelope {
            id: switchyard_core::envelope::new_id(),
            tenant: "default".into(),
            direction: Direction::Outbound,
            channel: channel.clone(),
            sender: Sender {
                external_id: "wm-customer".into(),
                scope: "corp".into(),
                display_name: None,
                identities: Vec::new(),
            },
            customer_id: Some("c1".into()),
            conversation_id: Some("conv1".into()),
            sent_at: now,
            received_at: now,
            dedupe_key: "outbound:1".into(),
            content: Content::Text {
                text: "您好".into(),
            },
            reply_to: None,
            agent_id: Some("agent-1".into()),
            raw: None,
        }
    }

    /// An embedded bus with the standard topology declared.
    async fn declared_bus() -> Arc<EmbeddedBus> {
        let bus = Arc::new(EmbeddedBus::new(Duration::from_secs(2)));
        bus.declare(&Topology::standard(
            &switchyard_core::conformance::bus::options(100),
        ))
        .await
        .unwrap();
        bus
    }

    #[tokio::test]
    async fn a_reported_delivery_failure_is_published_as_message_failed() {
        let bus = declared_bus().await;
        let queue = bus
            .declare_subscriber(EVENTS_EXCHANGE, &["#"])
            .await
            .unwrap();
        let mut events = bus.consume(&queue, 10).await.unwrap();
        let ingress = Ingress::new(
            bus.clone(),
            Arc::new(EmbeddedStore::new()),
            Metrics::new().unwrap(),
            1,
            Duration::from_secs(600),
        );
        let channel = ChannelRef {
            kind: "wecom_kf".into(),
            id: "kf-main".into(),
        };
        let failed = reply(&channel);
        let connector = Reporting {
            channel,
            failed: failed.clone(),
        };
        let (headers, query) = (HeaderMap::new(), HashMap::new());
        let req = InboundRequest {
            method: &Method::POST,
            headers: &headers,
            query: &query,
            body: b"",
            received_at: Utc::now(),
        };
        let accepted = ingress.ingest(&connector, &req).await.unwrap();
        assert!(accepted.is_empty());

        let delivery = tokio::time::timeout(Duration::from_secs(2), events.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(delivery.routing_key, "message.failed");
        let event: CloudEvent = serde_json::from_slice(&delivery.message.body).unwrap();
        assert_eq!(event.known_type(), Some(EventType::MessageFailed));
        assert_eq!(
            event.id,
            crate::events::message_failed_id(&failed),
            "the event id is derived from the envelope id"
        );
        assert_ne!(
            event.id, failed.id,
            "message.sent already carries the envelope id"
        );
        assert_eq!(event.subject.as_deref(), Some("conv1"));
        assert_eq!(event.data["code"], "wecom_fail_type_4");
        assert_eq!(event.data["reason"], "the session expired");
        let message: Envelope = serde_json::from_value(event.data["message"].clone()).unwrap();
        assert_eq!(message, failed);
        delivery.ack().await.unwrap();
        // Exactly one event.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), events.next())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn what_the_bus_carries_is_redacted_as_the_channel_says() {
        let bus = declared_bus().await;
        let mut settings = switchyard_core::config::Settings::embedded_with_api_channel(
            "shop",
            "a-secret-of-32-characters-at-least",
        )
        .unwrap();
        settings.redaction.detectors = vec!["email".into()];
        let metrics = Metrics::new().unwrap();
        let ingress = Ingress::new(
            bus.clone(),
            Arc::new(EmbeddedStore::new()),
            metrics.clone(),
            1,
            Duration::from_secs(600),
        )
        .with_redaction(Redaction::from_settings(&settings).unwrap());
        let mut inbound = bus
            .consume(&switchyard_core::bus::topology::inbound_queue(0), 10)
            .await
            .unwrap();
        for (channel, dedupe_key) in [("shop", "m-1"), ("other", "m-2")] {
            let mut envelope = reply(&ChannelRef {
                kind: "api".into(),
                id: channel.into(),
            });
            envelope.direction = Direction::Inbound;
            envelope.dedupe_key = dedupe_key.into();
            envelope.content = Content::Text {
                text: "mail li.lei@example.com".into(),
            };
            ingress.publish(envelope).await.unwrap();
            let delivery = tokio::time::timeout(Duration::from_secs(2), inbound.next())
                .await
                .unwrap()
                .unwrap();
            let carried: Envelope = serde_json::from_slice(&delivery.message.body).unwrap();
            let expected = match channel {
                "shop" => "mail [redacted:email]",
                _ => "mail li.lei@example.com",
            };
            assert_eq!(
                carried.content,
                Content::Text {
                    text: expected.into()
                },
                "{channel}: a channel the configuration does not name redacts nothing"
            );
            delivery.ack().await.unwrap();
        }
        assert_eq!(
            metrics
                .redactions
                .with_label_values(&["shop", "email"])
                .get(),
            1
        );
    }
}
