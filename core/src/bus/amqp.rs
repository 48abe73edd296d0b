//! RabbitMQ implementation of [`Bus`] over AMQP 0-9-1 (lapin).
//!
//! - Work queues are quorum queues with an explicit delivery limit, at-least-once
//!   dead-lettering to `switchyard.dlx` and `reject-publish` overflow; inbound shards also have a
//!   single active consumer, so one identity's messages are handled in order by one router.
//! - Publishes are `mandatory` and persistent on channels in confirm mode; a publish returns
//!   only after the broker's ack, an unroutable (returned) message is an error, and every
//!   publish+confirm has a timeout. Many publishes are in flight at once on a small pool of
//!   channels (confirms are pipelined, never awaited one by one on a single channel).
//! - Consumers get their own channel with a prefetch; `reject(reason)` republishes to the
//!   dead-letter exchange with the reason and original queue in headers, then acks, so the
//!   reason survives; exceeding the delivery limit is dead-lettered the same way.
//! - The connection auto-recovers (lapin); consumers whose stream ends report it, so the
//!   process supervisor can restart (a router exits non-zero and Kubernetes restarts it).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::maybe_done;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::tls::ClientTls;

use super::topology::{DEAD_LETTER_EXCHANGE, ExchangeKind, Overflow, QueueSpec, Topology};
use super::{
    Acker, Bus, BusError, Deliveries, Delivery, HEADER_DEATH_REASON, HEADER_ORIGINAL_QUEUE,
    Message, QueueReader,
};

/// Channels used for publishing; publishes are spread over them.
const PUBLISH_CHANNELS: usize = 4;

/// The RabbitMQ bus.
#[derive(Clone)]
pub struct AmqpBus {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    publishers: Vec<Channel>,
    next_publisher: AtomicUsize,
    publish_timeout: Duration,
    /// Delivery limit and dead-letter exchange of declared queues, to dead-letter with a reason.
    limits: Mutex<HashMap<String, (u32, Option<String>)>>,
    /// Prefix of every exchange and queue name (tests isolate themselves with it).
    prefix: String,
    /// The process exits after this ([`Bus::exiting`], or a consumer
    /// [left](Deliveries::leave)): consumers and the connection end with the process, not with
    /// a clean close.
    exiting: AtomicBool,
}

/// Whether the broker answered `NOT_FOUND` (no such queue or exchange).
fn is_not_found(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

impl AmqpBus {
    /// Connects to `url` (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`). Every exchange and queue
    /// name is prefixed with `prefix` (empty in production).
    pub async fn connect(
        url: &str,
        connection_name: &str,
        prefix: &str,
        publish_timeout: Duration,
    ) -> Result<Self, BusError> {
        Self::connect_with_tls(
            url,
            connection_name,
            prefix,
            publish_timeout,
            &ClientTls::default(),
        )
        .await
    }

    /// [`AmqpBus::connect`], where an `amqps://` URL trusts `tls.ca_pem` beside the system's
    /// roots and presents `tls.identity` to a broker that verifies its clients.
    pub async fn connect_with_tls(
        url: &str,
        connection_name: &str,
        prefix: &str,
        publish_timeout: Duration,
        tls: &ClientTls,
    ) -> Result<Self, BusError> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(connection_name))
            .enable_auto_recover();
        let tls_config = OwnedTLSConfig {
            cert_chain: tls
                .ca_pem
                .as_ref()
                .map(|pem| String::from_utf8_lossy(pem).into_owned()),
            identity: tls.identity.as_ref().map(|id| OwnedIdentity::PKCS8 {
                pem: id.cert_pem.clone(),
                key: id.key_pem.clone(),
            }),
        };
        let runtime = lapin::runtime::default_runtime().map_err(unavailable)?;
        let connect = Connection::connect_with_config(url, props, tls_config, runtime);
        let connection = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .map_err(|_| {
                // lapin does not report a broker certificate that fails verification; the
                // handshake just never completes.
                let hint = if url.starts_with("amqps://") {
                    "; with amqps://, check that the broker's certificate is signed by a CA the \
                     system trusts or by bus.tls_ca_file, for the URL's host name"
                } else {
                    ""
                };
                unavailable(format!(
                    "connecting to RabbitMQ timed out ({url_redacted}){hint}",
                    url_redacted = redact(url)
                ))
            })?
            .map_err(|e| {
                unavailable(format!(
                    "cannot connect to RabbitMQ at {}: {e}",
                    redact(url)
                ))
            })?;
        let mut publishers = Vec::with_capacity(PUBLISH_CHANNELS);
        for _ in 0..PUBLISH_CHANNELS {
            let ch = connection.create_channel().await.map_err(unavailable)?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(unavailable)?;
            publishers.push(ch);
        }
        Ok(AmqpBus {
            inner: Arc::new(Inner {
                connection,
                publishers,
                next_publisher: AtomicUsize::new(0),
                publish_timeout,
                limits: Mutex::new(HashMap::new()),
                prefix: prefix.to_owned(),
                exiting: AtomicBool::new(false),
            }),
        })
    }

    fn name(&self, name: &str) -> String {
        if name.is_empty() {
            // The default exchange.
            return String::new();
        }
        format!("{}{name}", self.inner.prefix)
    }

    fn unprefixed<'a>(&self, name: &'a str) -> &'a str {
        name.strip_prefix(self.inner.prefix.as_str())
            .unwrap_or(name)
    }

    /// A new channel on which `queue` was declared passively, and the messages it holds ready;
    /// [`BusError::NotDeclared`] (and only that channel closed) when there is no such queue.
    async fn passive_declare(&self, queue: &str) -> Result<(Channel, u32), BusError> {
        let channel = self
            .inner
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        match channel
            .queue_declare(
                ShortString::from(self.name(queue)),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
        {
            Ok(declared) => Ok((channel, declared.message_count())),
            Err(e) if is_not_found(&e) => Err(BusError::NotDeclared {
                what: "queue",
                name: queue.to_owned(),
            }),
            Err(e) => Err(unavailable(format!("declaring `{queue}` passively: {e}"))),
        }
    }

    fn publisher(&self) -> &Channel {
        let i = self.inner.next_publisher.fetch_add(1, Ordering::Relaxed);
        &self.inner.publishers[i % self.inner.publishers.len()]
    }

    fn queue_args(&self, spec: &QueueSpec, quorum: bool, single_active: bool) -> FieldTable {
        let mut args = FieldTable::default();
        if quorum {
            args.insert("x-queue-type".into(), long("quorum"));
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(spec.delivery_limit)),
            );
        }
        if single_active {
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        if let Some(dlx) = &spec.dead_letter_exchange {
            args.insert("x-dead-letter-exchange".into(), long(&self.name(dlx)));
            // At-least-once dead-lettering needs `reject-publish`; a queue that drops its
            // oldest message when full dead-letters at most once.
            if quorum && spec.overflow == Overflow::RejectPublish {
                args.insert("x-dead-letter-strategy".into(), long("at-least-once"));
            }
        }
        if spec.capacity < usize::MAX {
            args.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(i64::try_from(spec.capacity).unwrap_or(i64::MAX)),
            );
            let overflow = match spec.overflow {
                Overflow::RejectPublish => "reject-publish",
                Overflow::DropHead => "drop-head",
            };
            args.insert("x-overflow".into(), long(overflow));
        }
        args
    }

    /// Publishes `messages` in order on `channel`, all of them before the first confirm is
    /// awaited (one round trip for the batch), and returns their confirmations; the publish
    /// timeout covers the whole batch.
    async fn publish_confirmed(
        &self,
        channel: &Channel,
        exchange: &str,
        messages: &[(&str, &Message)],
        mandatory: bool,
    ) -> Result<Vec<Confirmation>, BusError> {
        let full_exchange = self.name(exchange);
        let timeout = self.inner.publish_timeout;
        tokio::time::timeout(timeout, async {
            // A publish queues its frames on its first poll, then waits for lapin's I/O thread to
            // write them. Polling every publish once, in order, before waiting for any queues the
            // whole batch in order, so it costs one hand-off to the I/O thread and one write
            // instead of one per message.
            let mut publishes: Vec<_> = messages
                .iter()
                .map(|(routing_key, message)| {
                    Box::pin(maybe_done(channel.basic_publish(
                        ShortString::from(full_exchange.as_str()),
                        ShortString::from(*routing_key),
                        BasicPublishOptions {
                            mandatory,
                            ..BasicPublishOptions::default()
                        },
                        &message.body,
                        properties(message),
                    )))
                })
                .collect();
            std::future::poll_fn(|cx| {
                for publish in &mut publishes {
                    let _ = publish.as_mut().poll(cx);
                }
                std::task::Poll::Ready(())
            })
            .await;
            let mut confirms = Vec::with_capacity(publishes.len());
            for mut publish in publishes {
                publish.as_mut().await;
                let written = publish
                    .as_mut()
                    .take_output()
                    .ok_or_else(|| unavailable("a publish finished without a result"))?;
                confirms.push(written.map_err(unavailable)?);
            }
            let mut confirmed = Vec::with_capacity(confirms.len());
            for confirm in confirms {
                confirmed.push(confirm.await.map_err(unavailable)?);
            }
            Ok(confirmed)
        })
        .await
        .map_err(|_| BusError::Timeout {
            exchange: exchange.to_owned(),
            timeout,
        })?
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), BusError> {
        let confirmed = self
            .publish_confirmed(channel, exchange, &[(routing_key, message)], true)
            .await?;
        for confirmation in confirmed {
            if confirmation.is_nack() {
                return Err(BusError::Nacked {
                    exchange: exchange.to_owned(),
                    reason: "the broker refused the message (queue full or unavailable)".into(),
                });
            }
            if confirmation.take_message().is_some() {
                return Err(BusError::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Persistent properties carrying the message's id and headers.
fn properties(message: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in &message.headers {
        headers.insert(ShortString::from(k.as_str()), long(v));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message.message_id.as_str()))
        .with_content_type(ShortString::from("application/json"))
        .with_headers(headers)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[async_trait]
impl Bus for AmqpBus {
    async fn declare(&self, topology: &Topology) -> Result<(), BusError> {
        let ch = self
            .inner
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        for ex in &topology.exchanges {
            let kind = match ex.kind {
                ExchangeKind::Direct => lapin::ExchangeKind::Direct,
                ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            };
            ch.exchange_declare(
                ShortString::from(self.name(&ex.name)),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(format!("declaring exchange `{}`: {e}", ex.name)))?;
        }
        for spec in &topology.queues {
            let args = match &spec.stream_max_age {
                Some(max_age) => {
                    let mut args = FieldTable::default();
                    args.insert("x-queue-type".into(), long("stream"));
                    args.insert("x-max-age".into(), long(max_age));
                    args
                }
                None => self.queue_args(spec, true, spec.single_active_consumer),
            };
            ch.queue_declare(
                ShortString::from(self.name(&spec.name)),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .map_err(|e| {
                unavailable(format!(
                    "declaring queue `{}` (an existing queue with other arguments must be \
                     deleted or migrated by policy): {e}",
                    spec.name
                ))
            })?;
            for (exchange, key) in &spec.bindings {
                ch.queue_bind(
                    ShortString::from(self.name(&spec.name)),
                    ShortString::from(self.name(exchange)),
                    ShortString::from(key.as_str()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| unavailable(format!("binding `{}`: {e}", spec.name)))?;
            }
            // Unbinding a binding that is not there succeeds.
            for (exchange, key) in &spec.stale_bindings {
                ch.queue_unbind(
                    ShortString::from(self.name(&spec.name)),
                    ShortString::from(self.name(exchange)),
                    ShortString::from(key.as_str()),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| unavailable(format!("unbinding `{}`: {e}", spec.name)))?;
            }
            if let Ok(mut limits) = self.inner.limits.lock() {
                limits.insert(
                    spec.name.clone(),
                    (spec.delivery_limit, spec.dead_letter_exchange.clone()),
                );
            }
        }
        let _ = ch.close(200, ShortString::from("declared")).await;
        Ok(())
    }

    async fn declare_subscriber(
        &self,
        exchange: &str,
        patterns: &[&str],
    ) -> Result<String, BusError> {
        let ch = self
            .inner
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        let spec = QueueSpec {
            name: String::new(),
            capacity: 100_000,
            delivery_limit: 0,
            dead_letter_exchange: None,
            overflow: Overflow::DropHead,
            single_active_consumer: false,
            stream_max_age: None,
            bindings: Vec::new(),
            stale_bindings: Vec::new(),
        };
        let name = self.name(&format!(
            "{exchange}.subscriber.{}",
            ulid::Ulid::new().to_string().to_lowercase()
        ));
        // Not exclusive or auto-delete: it must survive a dropped connection so the consumer can
        // resume after recovery. The broker deletes it after a minute without consumers.
        let mut args = self.queue_args(&spec, false, false);
        args.insert("x-expires".into(), AMQPValue::LongLongInt(60_000));
        ch.queue_declare(
            ShortString::from(name.as_str()),
            QueueDeclareOptions::default(),
            args,
        )
        .await
        .map_err(unavailable)?;
        for pattern in patterns {
            ch.queue_bind(
                ShortString::from(name.as_str()),
                ShortString::from(self.name(exchange)),
                ShortString::from(*pattern),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        }
        let _ = ch.close(200, ShortString::from("declared")).await;
        Ok(self.unprefixed(&name).to_owned())
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<(), BusError> {
        // A full queue (reject-publish) nacks: wait for room with a short backoff until the
        // publish timeout, like the embedded bus, instead of failing at once.
        let deadline = tokio::time::Instant::now() + self.inner.publish_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            let channel = self.publisher().clone();
            match self
                .publish_on(&channel, exchange, routing_key, &message)
                .await
            {
                Err(BusError::Nacked { .. }) if tokio::time::Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(BusError::Nacked { .. }) => {
                    return Err(BusError::Timeout {
                        exchange: exchange.to_owned(),
                        timeout: self.inner.publish_timeout,
                    });
                }
                other => return other,
            }
        }
    }

    async fn publish_events(
        &self,
        exchange: &str,
        messages: Vec<(String, Message)>,
    ) -> Result<(), BusError> {
        // One channel keeps the batch in order; every publish goes out before the first confirm
        // is awaited, so the batch costs one round trip. Not `mandatory`: an event nobody
        // subscribed to is simply dropped by the exchange.
        let channel = self.publisher().clone();
        let batch: Vec<(&str, &Message)> = messages.iter().map(|(k, m)| (k.as_str(), m)).collect();
        let confirmed = self
            .publish_confirmed(&channel, exchange, &batch, false)
            .await?;
        if confirmed.iter().any(|c| c.is_nack()) {
            return Err(BusError::Nacked {
                exchange: exchange.to_owned(),
                reason: "the broker refused an event (a queue is unavailable)".into(),
            });
        }
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Deliveries>, BusError> {
        let ch = self
            .inner
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        ch.basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let consumer = ch
            .basic_consume(
                ShortString::from(self.name(queue)),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(format!("consuming `{queue}`: {e}")))?;
        Ok(Box::new(AmqpDeliveries {
            source: Source::new(self, queue),
            prefetch: prefetch.max(1),
            consumer,
            channel: ch,
            cancelled: false,
            resumed: false,
            last_tag: 0,
        }))
    }

    async fn browse(&self, queue: &str) -> Result<Box<dyn QueueReader>, BusError> {
        let (channel, _) = self.passive_declare(queue).await?;
        Ok(Box::new(AmqpReader {
            source: Source::new(self, queue),
            channel,
        }))
    }

    async fn ready_messages(&self, queue: &str) -> Result<u64, BusError> {
        let (channel, ready) = self.passive_declare(queue).await?;
        let _ = channel.close(200, ShortString::from("counted")).await;
        Ok(u64::from(ready))
    }

    async fn publish_to_queue(&self, queue: &str, message: Message) -> Result<(), BusError> {
        // The default exchange routes a message to the queue its routing key names, and has no
        // name to prefix; a message it cannot route comes back (`mandatory`).
        match self.publish("", &self.name(queue), message).await {
            Err(BusError::Unroutable { .. }) => Err(BusError::NotDeclared {
                what: "queue",
                name: queue.to_owned(),
            }),
            other => other,
        }
    }

    fn is_ready(&self) -> bool {
        self.inner.connection.status().connected()
    }

    fn exiting(&self) {
        self.inner.exiting.store(true, Ordering::Release);
    }

    async fn close(&self) {
        if self.inner.exiting.load(Ordering::Acquire) {
            // A clean close would cancel the consumers before the broker takes their messages
            // back; the connection ends with the process instead.
            tracing::debug!("leaving the AMQP connection to end with the process");
            return;
        }
        let _ = self
            .inner
            .connection
            .close(200, ShortString::from("switchyard shutting down"))
            .await;
    }
}

/// The queue deliveries come from, and how they are dead-lettered.
struct Source {
    bus: AmqpBus,
    queue: String,
    limit: u32,
    dead_letter_exchange: Option<String>,
}

impl Source {
    fn new(bus: &AmqpBus, queue: &str) -> Self {
        let (limit, dead_letter_exchange) = bus
            .inner
            .limits
            .lock()
            .ok()
            .and_then(|l| l.get(queue).cloned())
            .unwrap_or((u32::MAX, None));
        Source {
            bus: bus.clone(),
            queue: queue.to_owned(),
            limit,
            dead_letter_exchange,
        }
    }

    /// A delivery of lapin's as one of the bus's. A message RabbitMQ dead-lettered by itself
    /// gets the two headers Switchyard's dead letters carry, from RabbitMQ's own
    /// `x-first-death-queue` and `x-first-death-reason`.
    fn delivery(&self, delivery: lapin::message::Delivery) -> Delivery {
        let mut headers = BTreeMap::new();
        let mut delivery_count = None;
        if let Some(table) = delivery.properties.headers() {
            for (k, v) in table.inner() {
                if k.as_str() == "x-delivery-count" {
                    delivery_count = header_count(v);
                } else if let Some(s) = header_string(v) {
                    headers.insert(k.as_str().to_owned(), s);
                }
            }
        }
        if !headers.contains_key(HEADER_ORIGINAL_QUEUE)
            && let Some(queue) = headers.get(FIRST_DEATH_QUEUE)
        {
            let queue = self.bus.unprefixed(queue).to_owned();
            let reason = headers.get(FIRST_DEATH_REASON).map_or_else(
                || "dead-lettered by RabbitMQ".to_owned(),
                |r| format!("dead-lettered by RabbitMQ: {r}"),
            );
            headers.insert(HEADER_ORIGINAL_QUEUE.to_owned(), queue);
            headers.insert(HEADER_DEATH_REASON.to_owned(), reason);
        }
        let redeliveries = delivery_count.unwrap_or(if delivery.redelivered { 1 } else { 0 });
        let message = Message {
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            body: Bytes::from(delivery.data),
            headers,
        };
        let routing_key = delivery.routing_key.as_str().to_owned();
        let acker = AmqpAcker {
            bus: self.bus.clone(),
            queue: self.queue.clone(),
            limit: self.limit,
            dead_letter_exchange: self.dead_letter_exchange.clone(),
            redeliveries,
            message: message.clone(),
            routing_key: routing_key.clone(),
            acker: delivery.acker,
            settled: std::sync::atomic::AtomicBool::new(false),
        };
        Delivery::new(message, routing_key, redeliveries, Box::new(acker))
    }
}

/// RabbitMQ's header naming the queue a message it dead-lettered first came from.
const FIRST_DEATH_QUEUE: &str = "x-first-death-queue";
/// RabbitMQ's header naming why it first dead-lettered a message (`rejected`, `expired`,
/// `maxlen`, `delivery_limit`).
const FIRST_DEATH_REASON: &str = "x-first-death-reason";

/// Reads a queue with `basic.get` on a channel of its own ([`Bus::browse`]); closing the
/// channel when dropped puts back whatever is still unsettled.
struct AmqpReader {
    source: Source,
    channel: Channel,
}

#[async_trait]
impl QueueReader for AmqpReader {
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        let got = self
            .channel
            .basic_get(
                ShortString::from(self.source.bus.name(&self.source.queue)),
                BasicGetOptions { no_ack: false },
            )
            .await
            .map_err(|e| unavailable(format!("reading queue `{}`: {e}", self.source.queue)))?;
        Ok(got.map(|message| self.source.delivery(message.delivery)))
    }
}

impl Drop for AmqpReader {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = channel
                    .close(200, ShortString::from("reader dropped"))
                    .await;
            });
        }
    }
}

struct AmqpDeliveries {
    source: Source,
    prefetch: u16,
    consumer: lapin::Consumer,
    channel: Channel,
    /// Whether the consumer was cancelled ([`Deliveries::cancel`]).
    cancelled: bool,
    /// Whether the consumer was recovered since [`Deliveries::take_resumed`] last asked.
    resumed: bool,
    /// The delivery tag of the latest delivery. Tags grow on a channel and start again at 1 on
    /// the channel lapin reopens when it recovers the connection; that is how a recovery shows
    /// (lapin resubscribes its consumers without a word in their streams).
    last_tag: u64,
}

/// How long the channel of a cancelled consumer stays open after the consumer is dropped.
/// Closing it at once sometimes returned messages that had just been acked to the queue
/// (RabbitMQ 3.10, quorum queues; measured in session 10, see docs/operations.md "Routers"):
/// the acks had been sent and the broker's channel had answered a `basic.qos` after them, so the
/// queue had apparently not applied them yet when the channel went down.
const CANCELLED_CHANNEL_LINGER: Duration = Duration::from_secs(2);

impl Drop for AmqpDeliveries {
    /// Closing the consumer's channel cancels it on the broker and requeues what it held, so a
    /// replacement consumer (or the standby of a single-active-consumer queue) takes over.
    /// When the process is exiting, the consumer and its channel are left open instead (see
    /// [`Deliveries::leave`]): lapin cancels and closes them when their last handle drops, so
    /// one handle of each is leaked until the process ends.
    fn drop(&mut self) {
        if self.source.bus.inner.exiting.load(Ordering::Acquire) {
            std::mem::forget(self.consumer.clone());
            std::mem::forget(self.channel.clone());
            return;
        }
        let channel = self.channel.clone();
        // The consumer stays subscribed until its channel is closed: lapin cancels a consumer
        // when its last handle drops, and a cancel before the close would let the standby of a
        // single-active-consumer queue take over while this channel still held its unsettled
        // deliveries, so the standby got the message after them first. The close returns them
        // and removes the consumer in one step.
        let consumer = self.consumer.clone();
        // A cancelled consumer handed its queue on and settled what it had; its channel holds
        // nothing, and closes once the broker has applied its last acks.
        let linger = self.cancelled.then_some(CANCELLED_CHANNEL_LINGER);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Some(linger) = linger {
                    tokio::time::sleep(linger).await;
                }
                let _ = channel
                    .close(200, ShortString::from("consumer dropped"))
                    .await;
                drop(consumer);
            });
        }
    }
}

fn header_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header_count(v: &AMQPValue) -> Option<u32> {
    match v {
        AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(*n),
        AMQPValue::ShortInt(n) => u32::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
        _ => None,
    }
}

#[async_trait]
impl Deliveries for AmqpDeliveries {
    async fn next(&mut self) -> Option<Delivery> {
        let delivery = loop {
            match self.consumer.next().await? {
                Ok(d) => break d,
                Err(e) => {
                    // The connection dropped: lapin recovers it (and this consumer) by itself;
                    // wait for that, then carry on. Only an unrecoverable error ends the stream,
                    // and the process supervisor restarts the process.
                    tracing::warn!(queue = %self.source.queue, error = %e, "consumer interrupted; waiting for recovery");
                    if let Err(e) = self.channel.wait_for_recovery(e).await {
                        tracing::error!(queue = %self.source.queue, error = %e, "consumer cannot recover");
                        return None;
                    }
                    tracing::info!(queue = %self.source.queue, "consumer recovered");
                    self.resumed = true;
                }
            }
        };
        if delivery.delivery_tag <= self.last_tag {
            tracing::info!(queue = %self.source.queue, "consumer resumed on a recovered channel");
            self.resumed = true;
        }
        self.last_tag = delivery.delivery_tag;
        Some(self.source.delivery(delivery))
    }

    fn take_resumed(&mut self) -> bool {
        std::mem::take(&mut self.resumed)
    }

    async fn cancel(&mut self) -> Result<(), BusError> {
        // lapin ends the stream after the deliveries that came before the broker's cancel-ok.
        self.cancelled = true;
        self.channel
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await
            .map_err(|e| {
                unavailable(format!(
                    "cancelling the consumer of `{}`: {e}",
                    self.source.queue
                ))
            })
    }

    async fn leave(self: Box<Self>) {
        // The broker answers basic.qos after it has handled every ack sent before it on this
        // channel, so the acks of this consumer are settled before the connection ends.
        if let Err(e) = self
            .channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
        {
            tracing::debug!(queue = %self.source.queue, error = %e, "could not fence the acks of a leaving consumer");
        }
        // Dropped while exiting, the consumer and its channel stay open until the process ends.
        self.source.bus.inner.exiting.store(true, Ordering::Release);
    }
}

struct AmqpAcker {
    bus: AmqpBus,
    queue: String,
    limit: u32,
    dead_letter_exchange: Option<String>,
    redeliveries: u32,
    message: Message,
    routing_key: String,
    acker: lapin::Acker,
    settled: std::sync::atomic::AtomicBool,
}

impl Drop for AmqpAcker {
    /// A delivery dropped unsettled (its handler died) goes back to the queue at once, as with
    /// the embedded bus, instead of waiting for the channel to close; unless the process is
    /// exiting ([`Bus::exiting`]).
    fn drop(&mut self) {
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.bus.inner.exiting.load(Ordering::Acquire) {
            // The process is exiting: the broker takes the delivery back, in order, when the
            // connection ends (a requeue now would put it behind the consumer's later ones).
            return;
        }
        let acker = self.acker.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = acker.nack(requeue_options()).await {
                    tracing::debug!(error = %e, "could not requeue a dropped delivery");
                }
            });
        }
    }
}

impl AmqpAcker {
    /// Publishes the message to the dead-letter exchange with its reason, then acks it; if the
    /// publish fails, requeues it.
    async fn dead_letter(&self, reason: &str) -> Result<(), BusError> {
        let mut message = self.message.clone();
        message
            .headers
            .insert(HEADER_DEATH_REASON.to_owned(), reason.to_owned());
        message
            .headers
            .insert(HEADER_ORIGINAL_QUEUE.to_owned(), self.queue.clone());
        let dlx = self
            .dead_letter_exchange
            .as_deref()
            .unwrap_or(DEAD_LETTER_EXCHANGE);
        if let Err(e) = self.bus.publish(dlx, &self.routing_key, message).await {
            // Back to the queue: it is tried again, and the queue's own delivery limit
            // dead-letters it in the end.
            if let Err(e) = self.acker.nack(requeue_options()).await {
                tracing::debug!(error = %e, "could not requeue a message after failing to dead-letter it");
            }
            return Err(e);
        }
        self.ack().await
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.settled.store(true, Ordering::Release);
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            // Already settled, or the channel was recovered: the broker redelivers it.
            Ok(false) => Err(unavailable(
                "delivery can no longer be acked (channel recovered)",
            )),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn hand_back(&self, reason: &str) -> Result<(), BusError> {
        if self.bus.inner.exiting.load(Ordering::Acquire) {
            // A requeue now would put the message behind the consumer's later ones; when the
            // connection ends, the broker takes everything back in delivery order.
            self.settled.store(true, Ordering::Release);
            return Ok(());
        }
        self.nack(true, reason).await
    }

    async fn nack(&self, requeue: bool, reason: &str) -> Result<(), BusError> {
        self.settled.store(true, Ordering::Release);
        if !requeue {
            return self.dead_letter(reason).await;
        }
        if self.redeliveries >= self.limit {
            let why = format!("delivery limit {} exceeded: {reason}", self.limit);
            return self.dead_letter(&why).await;
        }
        self.acker
            .nack(requeue_options())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

/// A `basic.nack` that puts the message back in its queue.
fn requeue_options() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
