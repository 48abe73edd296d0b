//! Signed outgoing webhooks: the event stream POSTed to helpdesks that do not speak AMQP.
//!
//! Each `[[webhooks]]` entry has a queue, `switchyard.webhooks.{id}`, bound to
//! `switchyard.events` with the event types it wants. One gateway at a time consumes it (single
//! active consumer). It sends up to `concurrency` events at once, but the events of one subject
//! (a conversation, a customer, an agent) one after the other, in the order they were
//! published. Every event is POSTed as the CloudEvent it is on the bus (structured JSON,
//! `application/cloudevents+json`), signed like an API-channel callback
//! (`X-Switchyard-Timestamp`, `X-Switchyard-Signature`).
//!
//! - **2xx:** delivered.
//! - **Unreachable, timeout, 5xx, 429:** tried again in place, after a wait that doubles from
//!   200 ms up to a minute (or the `Retry-After` of a 429, up to a minute), for as long as it
//!   takes: the later events of its subject wait behind it. An endpoint that is down for long
//!   fills the queue (`bus.queue_capacity`); then its oldest events are dead-lettered (reason
//!   `maxlen`) instead of stopping the event stream.
//! - **Other 4xx:** the endpoint refuses that event for good: it is dead-lettered with the
//!   answer as its reason, and the next event goes out.
//!
//! Delivery is at least once: a gateway that stops or dies between the POST and the ack leaves
//! the event to be sent again. The event's `id` tells a receiver that it has seen it.
//!
//! A `[[bots]]` entry is sent the same way from its own queue, `switchyard.bots.{id}`, which
//! receives the copies routers publish on `switchyard.bots` of the events of the conversations
//! the bot holds, is handed or loses (`config::BOT_EVENTS`). The sender still checks that each
//! event names the bot (`bot:{id}`) and acknowledges any other unsent: during a rolling upgrade
//! from a version that bound bot queues to the whole event stream, the queue may hold others.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use switchyard_connectors::ConnectorError;
use switchyard_connectors::api::post_signed;
use switchyard_core::bus::topology::{bot_queue, webhook_queue};
use switchyard_core::bus::{Bus, Delivery};
use switchyard_core::config::{BotSettings, ConfigError, WebhookSettings};
use switchyard_core::metrics::Metrics;
use tokio_util::sync::CancellationToken;

use crate::error::RouteError;
use crate::in_order::InOrderByKey;
use crate::workers::next_until;

/// Content type of a CloudEvent in structured mode (CloudEvents HTTP binding).
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json; charset=utf-8";

/// The first wait before an event is sent again.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// The longest wait between two tries.
const LONGEST_RETRY: Duration = Duration::from_secs(60);

/// One configured webhook (or bot), ready to send.
#[derive(Clone)]
pub struct Webhook {
    /// The webhook id, or the bot's agent id (`bot:{id}`): the `webhook` label of its metric.
    id: String,
    queue: String,
    /// A bot's agent id: only the events of the conversations it holds are sent.
    only_agent: Option<String>,
    url: String,
    secret: String,
    concurrency: u16,
    http: reqwest::Client,
    metrics: Metrics,
}

/// How one event's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The endpoint took it.
    Delivered,
    /// The endpoint refused it for good: dead-lettered.
    Refused,
    /// Stopping while it could not be sent: back to the queue for the next gateway.
    HandedBack,
}

impl Webhook {
    /// The webhook of `settings`, counting its deliveries in `metrics`.
    pub fn new(settings: &WebhookSettings, metrics: Metrics) -> Result<Webhook, ConfigError> {
        Ok(Webhook {
            id: settings.id.clone(),
            queue: webhook_queue(&settings.id),
            only_agent: None,
            url: settings.url.clone(),
            secret: settings.resolved_secret()?,
            concurrency: settings.concurrency.max(1),
            http: http_client(&format!("webhooks.{}", settings.id), settings.timeout_ms)?,
            metrics,
        })
    }

    /// The sender of bot `settings`: the events of the conversations it holds.
    pub fn for_bot(settings: &BotSettings, metrics: Metrics) -> Result<Webhook, ConfigError> {
        let agent = settings.agent_id();
        Ok(Webhook {
            id: agent.clone(),
            queue: bot_queue(&settings.id),
            only_agent: Some(agent),
            url: settings.url.clone(),
            secret: settings.resolved_secret()?,
            concurrency: settings.concurrency.max(1),
            http: http_client(&format!("bots.{}", settings.id), settings.timeout_ms)?,
            metrics,
        })
    }

    /// The webhook id, or the bot's agent id.
    pub fn name(&self) -> String {
        self.id.clone()
    }

    /// Sends the webhook's events until `stop` or the bus closes.
    pub async fn run(self, bus: Arc<dyn Bus>, stop: CancellationToken) -> Result<(), RouteError> {
        let mut deliveries = bus.consume(&self.queue, self.concurrency).await?;
        let mut running = FuturesUnordered::new();
        let mut by_subject = InOrderByKey::default();
        let mut taking = true;
        loop {
            if !taking && running.is_empty() {
                return Ok(());
            }
            tokio::select! {
                next = next_until(&mut deliveries, &stop), if taking => {
                    let Some(delivery) = next else {
                        taking = false;
                        continue;
                    };
                    if let Some(agent) = &self.only_agent
                        && !concerns(&delivery.message.body, agent)
                    {
                        // Another conversation's event: not this bot's to see.
                        if let Err(e) = delivery.ack().await {
                            tracing::warn!(webhook = %self.id, error = %e, "could not ack an event not sent");
                        }
                        continue;
                    }
                    let subject = subject_of(&delivery.message.body);
                    if let Some(delivery) = by_subject.admit(&subject, delivery) {
                        running.push(self.deliver(subject, delivery, &stop));
                    }
                }
                Some((subject, outcome)) = running.next() => {
                    if outcome == Outcome::HandedBack {
                        // The subject's later events go back too, so that none overtakes it.
                        for delivery in by_subject.abandon(&subject) {
                            self.hand_back(delivery).await;
                        }
                    } else if let Some(delivery) = by_subject.done(&subject) {
                        running.push(self.deliver(subject, delivery, &stop));
                    }
                }
            }
        }
    }

    async fn hand_back(&self, delivery: Delivery) {
        if let Err(e) = delivery
            .hand_back("stopping while the webhook endpoint was failing")
            .await
        {
            tracing::warn!(webhook = %self.id, error = %e, "could not hand an event back");
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .webhooks
            .with_label_values(&[self.id.as_str(), outcome])
            .inc();
    }

    /// Sends one event of `subject` until the endpoint takes or refuses it, or until `stop`;
    /// returns the subject and how it ended.
    async fn deliver(
        &self,
        subject: String,
        delivery: Delivery,
        stop: &CancellationToken,
    ) -> (String, Outcome) {
        let outcome = self.send(delivery, stop).await;
        (subject, outcome)
    }

    async fn send(&self, delivery: Delivery, stop: &CancellationToken) -> Outcome {
        let mut wait = FIRST_RETRY;
        loop {
            let sent = post_signed(
                &self.http,
                &self.url,
                self.secret.as_bytes(),
                CLOUDEVENTS_JSON,
                delivery.message.body.clone(),
            )
            .await;
            let error = match sent {
                Ok(()) => {
                    self.count("delivered");
                    if let Err(e) = delivery.ack().await {
                        tracing::warn!(webhook = %self.id, error = %e, "event delivered but not acked; it will be sent again");
                    }
                    return Outcome::Delivered;
                }
                Err(e) if !e.is_retryable() => e,
                Err(e) => {
                    self.count(e.outcome());
                    let pause = match &e {
                        ConnectorError::RateLimited {
                            retry_after: Some(after),
                        } => (*after).min(LONGEST_RETRY),
                        _ => wait,
                    };
                    tracing::warn!(webhook = %self.id, error = %e, retry_in = ?pause, "webhook endpoint did not take an event; trying again");
                    tokio::select! {
                        _ = stop.cancelled() => {
                            self.hand_back(delivery).await;
                            return Outcome::HandedBack;
                        }
                        () = tokio::time::sleep(pause) => {}
                    }
                    wait = (wait * 2).min(LONGEST_RETRY);
                    continue;
                }
            };
            self.count(error.outcome());
            tracing::warn!(webhook = %self.id, error = %error, "webhook endpoint refused an event; dead-lettering it");
            if let Err(e) = delivery
                .reject(&format!("webhook `{}` refused it: {error}", self.id))
                .await
            {
                tracing::error!(webhook = %self.id, error = %e, "could not dead-letter an event");
            }
            return Outcome::Refused;
        }
    }
}

/// An HTTP client for an endpoint with `timeout_ms` per request; `key` names it in errors.
fn http_client(key: &str, timeout_ms: u64) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError::Invalid {
            key: key.to_owned(),
            message: format!("cannot build an HTTP client: {e}"),
        })
}

/// Whether an event concerns `agent`: it is `data.agent_id` (`message.received`, the holder of
/// a `conversation.closed`), `data.from_agent_id` (the one a `conversation.transferred` took
/// the conversation from) or `data.conversation.agent_id` (the holder, `conversation.*`).
fn concerns(body: &[u8], agent: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Event {
        data: Option<Data>,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        agent_id: Option<String>,
        from_agent_id: Option<String>,
        conversation: Option<Held>,
    }
    #[derive(serde::Deserialize)]
    struct Held {
        agent_id: Option<String>,
    }
    let Some(data) = serde_json::from_slice::<Event>(body)
        .ok()
        .and_then(|e| e.data)
    else {
        return false;
    };
    let holder = data.conversation.and_then(|c| c.agent_id);
    [data.agent_id, data.from_agent_id, holder]
        .iter()
        .any(|id| id.as_deref() == Some(agent))
}

/// The CloudEvent's `subject` (empty when it has none, or the body is not a CloudEvent).
fn subject_of(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Subject {
        subject: Option<String>,
    }
    serde_json::from_slice::<Subject>(body)
        .ok()
        .and_then(|e| e.subject)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{concerns, subject_of};

    #[test]
    fn an_event_concerns_the_agent_it_names_in_any_role() {
        let received = br#"{"type":"io.switchyard.message.received","data":{"message":{"id":"m"},"agent_id":"bot:faq"}}"#;
        assert!(concerns(received, "bot:faq"));
        assert!(!concerns(received, "bot:other"));
        let created = br#"{"data":{"conversation":{"id":"c","agent_id":"bot:faq"}}}"#;
        assert!(concerns(created, "bot:faq"));
        let taken =
            br#"{"data":{"conversation":{"id":"c","agent_id":"ann"},"from_agent_id":"bot:faq"}}"#;
        assert!(concerns(taken, "bot:faq"));
        assert!(concerns(taken, "ann"));
        let queued = br#"{"data":{"conversation":{"id":"c","agent_id":null}}}"#;
        assert!(!concerns(queued, "bot:faq"));
        assert!(!concerns(b"not json", "bot:faq"));
    }

    #[test]
    fn the_subject_is_read_from_the_event() {
        let event =
            br#"{"specversion":"1.0","id":"1","type":"t","subject":"c-1","data":{"x":[1]}}"#;
        assert_eq!(subject_of(event), "c-1");
        assert_eq!(subject_of(br#"{"specversion":"1.0"}"#), "");
        assert_eq!(subject_of(b"not json"), "");
    }
}
