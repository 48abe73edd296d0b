//! The message bus: exchanges routing to queues, publisher confirms, acknowledged deliveries.
//!
//! The [`Bus`] trait mirrors AMQP 0-9-1 closely enough that the RabbitMQ implementation is a thin
//! mapping, and the [`embedded`] implementation has the same semantics in-process: a publish
//! returns only once every matching queue holds the message (a confirm), an unroutable publish is
//! an error (`mandatory`), queues are bounded (publishers wait: back-pressure), deliveries are
//! acked or nacked, a nacked message is redelivered in place until its delivery limit and then
//! dead-lettered with its reason.

pub mod amqp;
pub mod embedded;
pub mod topology;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use topology::{Exchange, ExchangeKind, Overflow, QueueSpec, Topology};

/// Why a bus operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// No queue is bound for this routing key; the message was not stored anywhere.
    #[error("message to exchange `{exchange}` with routing key `{routing_key}` is unroutable")]
    Unroutable {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },
    /// The broker did not confirm in time (or a bounded queue stayed full).
    #[error("publish to `{exchange}` was not confirmed within {timeout:?}")]
    Timeout {
        /// Exchange published to.
        exchange: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The broker refused the message (negative confirm).
    #[error("broker refused the message on `{exchange}`: {reason}")]
    Nacked {
        /// Exchange published to.
        exchange: String,
        /// What the broker said.
        reason: String,
    },
    /// The named queue or exchange does not exist.
    #[error("{what} `{name}` is not declared")]
    NotDeclared {
        /// `queue` or `exchange`.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The bus is closed or the connection is down.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

impl BusError {
    /// Whether the same publish may succeed later (the broker is down, slow or full), as
    /// opposed to never (nothing is bound for it, or its exchange or queue does not exist).
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            BusError::Unroutable { .. } | BusError::NotDeclared { .. }
        )
    }
}

/// A message handed to [`Bus::publish`].
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Unique id; consumers deduplicate on it.
    pub message_id: String,
    /// The payload (JSON).
    pub body: Bytes,
    /// String headers (`x-switchyard-*`, dead-letter reasons, ...).
    pub headers: BTreeMap<String, String>,
}

impl Message {
    /// A message with an id and a body and no headers.
    pub fn new(message_id: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Message {
            message_id: message_id.into(),
            body: body.into(),
            headers: BTreeMap::new(),
        }
    }
}

/// Header naming why a message was dead-lettered.
pub const HEADER_DEATH_REASON: &str = "x-switchyard-death-reason";
/// Header naming the queue a dead-lettered message came from.
pub const HEADER_ORIGINAL_QUEUE: &str = "x-switchyard-original-queue";

/// A delivered message that must be acked or nacked.
pub struct Delivery {
    /// The message as published.
    pub message: Message,
    /// Routing key it was published with.
    pub routing_key: String,
    /// How many times it was delivered before (0 on first delivery).
    pub redeliveries: u32,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message_id", &self.message.message_id)
            .field("routing_key", &self.routing_key)
            .field("redeliveries", &self.redeliveries)
            .finish()
    }
}

impl Delivery {
    /// Builds a delivery; for bus implementations.
    pub fn new(
        message: Message,
        routing_key: String,
        redeliveries: u32,
        acker: Box<dyn Acker>,
    ) -> Self {
        Delivery {
            message,
            routing_key,
            redeliveries,
            acker,
        }
    }

    /// The message is fully handled: remove it from the queue.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// The message could not be handled now: redeliver it (until the queue's delivery limit,
    /// then dead-letter it with `reason`).
    pub async fn retry(self, reason: &str) -> Result<(), BusError> {
        self.acker.nack(true, reason).await
    }

    /// The message can never be handled: dead-letter it at once with `reason`.
    pub async fn reject(self, reason: &str) -> Result<(), BusError> {
        self.acker.nack(false, reason).await
    }

    /// This consumer is stopping and gives the message back to the queue for the next one: as
    /// [`Delivery::retry`], or, once the process is [exiting](Bus::exiting), left to go back when
    /// the process's connection ends, in order with everything else the consumer holds.
    pub async fn hand_back(self, reason: &str) -> Result<(), BusError> {
        self.acker.hand_back(reason).await
    }
}

/// Settles one delivery; implemented by each bus.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Positive acknowledgement.
    async fn ack(&self) -> Result<(), BusError>;
    /// Negative acknowledgement; `requeue = false` dead-letters at once.
    async fn nack(&self, requeue: bool, reason: &str) -> Result<(), BusError>;
    /// [`Delivery::hand_back`]; by default a requeueing nack.
    async fn hand_back(&self, reason: &str) -> Result<(), BusError> {
        self.nack(true, reason).await
    }
}

/// Reads a queue one message at a time ([`Bus::browse`]).
#[async_trait]
pub trait QueueReader: Send {
    /// The next message ready in the queue, unsettled (see [`Bus::browse`]); `None` once the
    /// queue holds nothing ready. An error when the bus could not read it (a broken connection,
    /// a closed bus): an empty queue and a failed read are told apart.
    async fn next(&mut self) -> Result<Option<Delivery>, BusError>;
}

/// A stream of deliveries from one queue.
#[async_trait]
pub trait Deliveries: Send {
    /// The next delivery; `None` once the bus is closed.
    async fn next(&mut self) -> Option<Delivery>;

    /// Stops consuming because the process is about to exit, after every delivery taken from
    /// this stream was settled. Dropping a consumer hands the deliveries it holds but never gave
    /// out back to the queue at once; a consumer that leaves keeps them until the process's
    /// connection ends, as a crash would. On RabbitMQ 3.x this keeps the order of a
    /// single-active-consumer queue: when its consumer closes cleanly, the standby becomes active
    /// before the queue takes the held messages back, and so gets the messages behind them
    /// first; when the connection just ends, the held messages go back first. The default drops
    /// the consumer.
    async fn leave(self: Box<Self>) {}

    /// Stops taking new messages while the process keeps running: the broker sends this
    /// consumer nothing more, and [`Deliveries::next`] yields what it had already sent, then
    /// `None`. What it yields must still be settled. On a single-active-consumer queue the next
    /// waiting consumer becomes active at once, before those are settled (a router hands a
    /// shard back this way).
    async fn cancel(&mut self) -> Result<(), BusError>;

    /// Whether the subscription was re-established since this was last asked (on RabbitMQ: the
    /// connection dropped and was recovered). Meanwhile the broker may have made another
    /// consumer of a single-active-consumer queue active, and then this one again, so the next
    /// delivery may come from a queue that another consumer has not finished with, as a new
    /// subscription's first may. The default, for a bus whose subscriptions never break, is
    /// `false`.
    fn take_resumed(&mut self) -> bool {
        false
    }
}

/// A message bus (in-process or RabbitMQ).
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Declares exchanges, queues and bindings; idempotent.
    async fn declare(&self, topology: &Topology) -> Result<(), BusError>;

    /// Declares a private, auto-deleted queue bound to `exchange` with each of `patterns` (for
    /// fan-out subscribers such as the agent-session hub) and returns its name.
    async fn declare_subscriber(
        &self,
        exchange: &str,
        patterns: &[&str],
    ) -> Result<String, BusError>;

    /// Publishes and returns once the message is stored in every matching queue (confirmed).
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<(), BusError>;

    /// Publishes a batch of fan-out notifications (events) to `exchange`, in order, and returns
    /// once every one is confirmed. Unlike [`Bus::publish`], a message no queue is bound to is
    /// not an error: nobody subscribed to it. Implementations pipeline the batch (one round of
    /// confirms instead of one per message); the default publishes one after the other.
    async fn publish_events(
        &self,
        exchange: &str,
        messages: Vec<(String, Message)>,
    ) -> Result<(), BusError> {
        for (routing_key, message) in messages {
            match self.publish(exchange, &routing_key, message).await {
                Ok(()) | Err(BusError::Unroutable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Starts consuming a queue, with at most `prefetch` unsettled deliveries at a time.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Deliveries>, BusError>;

    /// Reads `queue` one message at a time without subscribing to it (AMQP `basic.get`), for
    /// tools that inspect a queue such as the dead letters: the reader's
    /// [`next`](QueueReader::next) yields `None` as soon as the queue holds nothing ready. A
    /// message it yields is unsettled, so no reader or consumer sees it again until it is. An
    /// unsettled delivery that is dropped goes back to the queue (RabbitMQ counts that as a
    /// redelivery, the embedded bus does not); settle or drop every one before the reader.
    /// RabbitMQ refuses to read a single-active-consumer queue (an inbound shard) this way.
    async fn browse(&self, queue: &str) -> Result<Box<dyn QueueReader>, BusError>;

    /// How many messages `queue` holds ready for delivery (not those being delivered), as
    /// RabbitMQ's passive `queue.declare` counts them; [`BusError::NotDeclared`] when no such
    /// queue exists. For gauges such as the dead letters'.
    async fn ready_messages(&self, queue: &str) -> Result<u64, BusError>;

    /// Publishes straight into `queue` (AMQP's default exchange), bypassing every binding, and
    /// returns once it is confirmed; [`BusError::NotDeclared`] when no such queue exists. How a
    /// dead letter goes back to the queue it came from.
    async fn publish_to_queue(&self, queue: &str, message: Message) -> Result<(), BusError>;

    /// Whether the bus can currently accept publishes (for `/readyz`).
    fn is_ready(&self) -> bool;

    /// Stops delivering; consumers see the end of their streams.
    async fn close(&self);

    /// The process exits once it has stopped: consumers dropped from now on, and
    /// [`Bus::close`], leave their broker state to end with the process, as
    /// [`Deliveries::leave`] explains. The default does nothing.
    fn exiting(&self) {}
}
