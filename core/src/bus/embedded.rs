//! In-process bus with RabbitMQ's semantics: confirms, mandatory routing, bounded queues with
//! back-pressure, prefetch, ack/nack with in-place redelivery, delivery limits and dead-lettering.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::topology::{ExchangeKind, Overflow, QueueSpec, Topology, topic_matches};
use super::{
    Acker, Bus, BusError, Deliveries, Delivery, HEADER_DEATH_REASON, HEADER_ORIGINAL_QUEUE,
    Message, QueueReader,
};

/// The in-process bus used by the embedded default.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Broker>,
}

struct Broker {
    state: Mutex<BrokerState>,
    publish_timeout: Duration,
    closed: AtomicBool,
    closed_notify: Notify,
    subscriber_seq: AtomicU64,
}

#[derive(Default)]
struct BrokerState {
    exchanges: HashMap<String, ExchangeState>,
    queues: HashMap<String, Arc<Queue>>,
}

struct ExchangeState {
    kind: ExchangeKind,
    bindings: Vec<(String, Arc<Queue>)>,
}

struct Queue {
    spec: QueueSpec,
    state: Mutex<QueueState>,
    readable: Notify,
    writable: Notify,
    dead_letter: Option<(String, Arc<Broker>)>,
}

#[derive(Default)]
struct QueueState {
    /// Ready messages, in `seq` order.
    ready: VecDeque<Stored>,
    unacked: usize,
    /// Sequence number of the next message stored.
    next_seq: u64,
}

impl QueueState {
    /// Appends a newly stored message with the next sequence number.
    fn push_new(&mut self, mut stored: Stored) {
        stored.seq = self.next_seq;
        self.next_seq += 1;
        self.ready.push_back(stored);
    }
}

#[derive(Clone)]
struct Stored {
    message: Message,
    routing_key: String,
    redeliveries: u32,
    /// Position in its queue: a requeued message goes back to its place by it.
    seq: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of plain data; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EmbeddedBus {
    /// A new, empty bus whose publishes wait at most `publish_timeout` for room in a full queue.
    pub fn new(publish_timeout: Duration) -> Self {
        EmbeddedBus {
            inner: Arc::new(Broker {
                state: Mutex::new(BrokerState::default()),
                publish_timeout,
                closed: AtomicBool::new(false),
                closed_notify: Notify::new(),
                subscriber_seq: AtomicU64::new(0),
            }),
        }
    }

    /// Messages currently held by `queue` (ready + unacked); for tests and metrics.
    pub fn queue_depth(&self, queue: &str) -> Option<usize> {
        let state = lock(&self.inner.state);
        let q = state.queues.get(queue)?;
        let qs = lock(&q.state);
        Some(qs.ready.len() + qs.unacked)
    }

    /// Removes and returns every message in `queue` that is ready (not being delivered).
    pub fn drain(&self, queue: &str) -> Vec<Message> {
        let state = lock(&self.inner.state);
        let Some(q) = state.queues.get(queue) else {
            return Vec::new();
        };
        let drained: Vec<Message> = lock(&q.state).ready.drain(..).map(|s| s.message).collect();
        q.writable.notify_waiters();
        drained
    }
}

impl Broker {
    fn declare_queue(self: &Arc<Self>, state: &mut BrokerState, spec: &QueueSpec) -> Arc<Queue> {
        let queue = state
            .queues
            .entry(spec.name.clone())
            .or_insert_with(|| {
                Arc::new(Queue {
                    spec: spec.clone(),
                    state: Mutex::new(QueueState::default()),
                    readable: Notify::new(),
                    writable: Notify::new(),
                    dead_letter: spec
                        .dead_letter_exchange
                        .clone()
                        .map(|dlx| (dlx, Arc::clone(self))),
                })
            })
            .clone();
        for (exchange, key) in &spec.bindings {
            if let Some(ex) = state.exchanges.get_mut(exchange)
                && !ex
                    .bindings
                    .iter()
                    .any(|(k, q)| k == key && Arc::ptr_eq(q, &queue))
            {
                ex.bindings.push((key.clone(), Arc::clone(&queue)));
            }
        }
        for (exchange, key) in &spec.stale_bindings {
            if let Some(ex) = state.exchanges.get_mut(exchange) {
                ex.bindings
                    .retain(|(k, q)| !(k == key && Arc::ptr_eq(q, &queue)));
            }
        }
        queue
    }

    /// The declared queue `name`.
    fn queue(&self, name: &str) -> Result<Arc<Queue>, BusError> {
        lock(&self.state)
            .queues
            .get(name)
            .cloned()
            .ok_or_else(|| BusError::NotDeclared {
                what: "queue",
                name: name.to_owned(),
            })
    }

    /// The queues a message published to `exchange` with `routing_key` goes to.
    fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<Arc<Queue>>, BusError> {
        Ok(lock(&self.state).exchange(exchange)?.route(routing_key))
    }

    /// Stores `message` in every queue of `targets`, in order (moving it into the last).
    async fn deliver(
        &self,
        targets: &[Arc<Queue>],
        routing_key: &str,
        message: Message,
    ) -> Result<(), BusError> {
        let Some((last, others)) = targets.split_last() else {
            return Ok(());
        };
        let stored = Stored {
            message,
            routing_key: routing_key.to_owned(),
            redeliveries: 0,
            seq: 0,
        };
        for queue in others {
            queue.push(stored.clone(), self.publish_timeout).await?;
        }
        last.push(stored, self.publish_timeout).await
    }
}

impl BrokerState {
    /// The declared exchange `name`.
    fn exchange(&self, name: &str) -> Result<&ExchangeState, BusError> {
        self.exchanges
            .get(name)
            .ok_or_else(|| BusError::NotDeclared {
                what: "exchange",
                name: name.to_owned(),
            })
    }
}

impl ExchangeState {
    /// The queues bound to this exchange for `routing_key`, each once.
    fn route(&self, routing_key: &str) -> Vec<Arc<Queue>> {
        let mut targets: Vec<Arc<Queue>> = Vec::new();
        for (key, queue) in &self.bindings {
            let hit = match self.kind {
                ExchangeKind::Direct => key == routing_key,
                ExchangeKind::Topic => topic_matches(key, routing_key),
            };
            if hit && !targets.iter().any(|q| Arc::ptr_eq(q, queue)) {
                targets.push(Arc::clone(queue));
            }
        }
        targets
    }
}

impl Queue {
    /// Takes the first ready message, now unsettled, letting a competing consumer take the
    /// next one.
    fn take_ready(&self) -> Option<Stored> {
        let mut qs = lock(&self.state);
        let stored = qs.ready.pop_front()?;
        qs.unacked += 1;
        let more = !qs.ready.is_empty();
        drop(qs);
        if more {
            self.readable.notify_one();
        }
        Some(stored)
    }

    /// Stores a message, waiting for room when the queue is full and rejects publishes.
    async fn push(&self, stored: Stored, timeout: Duration) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let room = self.writable.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut qs = lock(&self.state);
                let held = qs.ready.len() + qs.unacked;
                if held < self.spec.capacity {
                    qs.push_new(stored);
                    drop(qs);
                    self.readable.notify_one();
                    return Ok(());
                }
                if self.spec.overflow == Overflow::DropHead {
                    qs.ready.pop_front();
                    qs.push_new(stored);
                    drop(qs);
                    self.readable.notify_one();
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(BusError::Timeout {
                    exchange: self.spec.name.clone(),
                    timeout,
                });
            }
        }
    }

    /// Puts an unsettled message back in its place, before every later message (keeping per-key
    /// order also when several unsettled ones come back), or dead-letters it.
    fn settle_nack(&self, mut stored: Stored, requeue: bool, reason: &str) {
        stored.redeliveries += 1;
        let mut qs = lock(&self.state);
        qs.unacked = qs.unacked.saturating_sub(1);
        if requeue && stored.redeliveries <= self.spec.delivery_limit {
            let place = qs
                .ready
                .iter()
                .position(|s| s.seq > stored.seq)
                .unwrap_or(qs.ready.len());
            qs.ready.insert(place, stored);
            drop(qs);
            self.readable.notify_one();
            return;
        }
        drop(qs);
        self.writable.notify_one();
        let why = if requeue {
            format!(
                "delivery limit {} exceeded: {reason}",
                self.spec.delivery_limit
            )
        } else {
            reason.to_owned()
        };
        tracing::warn!(queue = %self.spec.name, message_id = %stored.message.message_id, reason = %why, "dead-lettering message");
        if let Some((dlx, broker)) = &self.dead_letter {
            stored
                .message
                .headers
                .insert(HEADER_DEATH_REASON.to_owned(), why);
            stored
                .message
                .headers
                .insert(HEADER_ORIGINAL_QUEUE.to_owned(), self.spec.name.clone());
            stored.redeliveries = 0;
            if let Ok(targets) = broker.route(dlx, &stored.routing_key) {
                for q in targets {
                    // Dead-letter queues never refuse: push without waiting.
                    lock(&q.state).push_new(stored.clone());
                    q.readable.notify_one();
                }
            }
        }
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn declare(&self, topology: &Topology) -> Result<(), BusError> {
        let mut state = lock(&self.inner.state);
        for ex in &topology.exchanges {
            state
                .exchanges
                .entry(ex.name.clone())
                .or_insert_with(|| ExchangeState {
                    kind: ex.kind,
                    bindings: Vec::new(),
                });
        }
        for spec in &topology.queues {
            self.inner.declare_queue(&mut state, spec);
        }
        Ok(())
    }

    async fn declare_subscriber(
        &self,
        exchange: &str,
        patterns: &[&str],
    ) -> Result<String, BusError> {
        let seq = self.inner.subscriber_seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{exchange}.subscriber.{seq}");
        let spec = QueueSpec {
            name: name.clone(),
            capacity: 100_000,
            delivery_limit: 0,
            dead_letter_exchange: None,
            overflow: Overflow::DropHead,
            single_active_consumer: false,
            stream_max_age: None,
            bindings: patterns
                .iter()
                .map(|p| (exchange.to_owned(), (*p).to_owned()))
                .collect(),
            stale_bindings: Vec::new(),
        };
        let mut state = lock(&self.inner.state);
        if !state.exchanges.contains_key(exchange) {
            return Err(BusError::NotDeclared {
                what: "exchange",
                name: exchange.to_owned(),
            });
        }
        self.inner.declare_queue(&mut state, &spec);
        Ok(name)
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<(), BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Unavailable("bus is closed".into()));
        }
        let targets = self.inner.route(exchange, routing_key)?;
        if targets.is_empty() {
            return Err(BusError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            });
        }
        self.inner.deliver(&targets, routing_key, message).await
    }

    /// Routes the whole batch under one lock of the broker, then stores each event where it
    /// goes, in order; an event nobody is bound to is skipped.
    async fn publish_events(
        &self,
        exchange: &str,
        messages: Vec<(String, Message)>,
    ) -> Result<(), BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Unavailable("bus is closed".into()));
        }
        let routed = {
            let state = lock(&self.inner.state);
            let ex = state.exchange(exchange)?;
            messages
                .into_iter()
                .map(|(key, message)| (ex.route(&key), key, message))
                .collect::<Vec<_>>()
        };
        for (targets, routing_key, message) in routed {
            self.inner.deliver(&targets, &routing_key, message).await?;
        }
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn Deliveries>, BusError> {
        Ok(Box::new(EmbeddedConsumer {
            queue: self.inner.queue(queue)?,
            broker: Arc::clone(&self.inner),
            prefetch: Arc::new(Semaphore::new(usize::from(prefetch.max(1)))),
            cancelled: false,
        }))
    }

    async fn browse(&self, queue: &str) -> Result<Box<dyn QueueReader>, BusError> {
        Ok(Box::new(EmbeddedReader {
            queue: self.inner.queue(queue)?,
            broker: Arc::clone(&self.inner),
        }))
    }

    async fn ready_messages(&self, queue: &str) -> Result<u64, BusError> {
        let queue = self.inner.queue(queue)?;
        let ready = lock(&queue.state).ready.len();
        Ok(u64::try_from(ready).unwrap_or(u64::MAX))
    }

    async fn publish_to_queue(&self, queue: &str, message: Message) -> Result<(), BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Unavailable("bus is closed".into()));
        }
        let stored = Stored {
            message,
            routing_key: queue.to_owned(),
            redeliveries: 0,
            seq: 0,
        };
        self.inner
            .queue(queue)?
            .push(stored, self.inner.publish_timeout)
            .await
    }

    fn is_ready(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire)
    }

    async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.closed_notify.notify_waiters();
    }
}

struct EmbeddedConsumer {
    queue: Arc<Queue>,
    broker: Arc<Broker>,
    prefetch: Arc<Semaphore>,
    /// Set by [`Deliveries::cancel`]: nothing is sent ahead, so the stream simply ends.
    cancelled: bool,
}

#[async_trait]
impl Deliveries for EmbeddedConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        let closed = self.broker.closed_notify.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        if self.cancelled || self.broker.closed.load(Ordering::Acquire) {
            return None;
        }
        let permit = tokio::select! {
            p = Arc::clone(&self.prefetch).acquire_owned() => p.ok()?,
            _ = &mut closed => return None,
        };
        loop {
            let readable = self.queue.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            if let Some(stored) = self.queue.take_ready() {
                return Some(EmbeddedAcker::delivery(&self.queue, stored, Some(permit)));
            }
            tokio::select! {
                _ = &mut readable => {}
                _ = &mut closed => return None,
            }
        }
    }

    async fn cancel(&mut self) -> Result<(), BusError> {
        self.cancelled = true;
        Ok(())
    }
}

/// Reads a queue one message at a time ([`Bus::browse`]).
struct EmbeddedReader {
    queue: Arc<Queue>,
    broker: Arc<Broker>,
}

#[async_trait]
impl QueueReader for EmbeddedReader {
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        if self.broker.closed.load(Ordering::Acquire) {
            return Err(BusError::Unavailable("bus is closed".into()));
        }
        Ok(self
            .queue
            .take_ready()
            .map(|stored| EmbeddedAcker::delivery(&self.queue, stored, None)))
    }
}

/// Settles one delivery; holds the consumer's prefetch slot (none for a reader) until then.
struct EmbeddedAcker {
    queue: Arc<Queue>,
    pending: Mutex<Option<(Stored, Option<OwnedSemaphorePermit>)>>,
}

impl EmbeddedAcker {
    /// The delivery of `stored`, taken from `queue`.
    fn delivery(
        queue: &Arc<Queue>,
        stored: Stored,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Delivery {
        let (message, routing_key, redeliveries) = (
            stored.message.clone(),
            stored.routing_key.clone(),
            stored.redeliveries,
        );
        let acker = EmbeddedAcker {
            queue: Arc::clone(queue),
            pending: Mutex::new(Some((stored, permit))),
        };
        Delivery::new(message, routing_key, redeliveries, Box::new(acker))
    }
}

#[async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(&self) -> Result<(), BusError> {
        if lock(&self.pending).take().is_some() {
            let mut qs = lock(&self.queue.state);
            qs.unacked = qs.unacked.saturating_sub(1);
            drop(qs);
            self.queue.writable.notify_one();
        }
        Ok(())
    }

    async fn nack(&self, requeue: bool, reason: &str) -> Result<(), BusError> {
        if let Some((stored, _permit)) = lock(&self.pending).take() {
            self.queue.settle_nack(stored, requeue, reason);
        }
        Ok(())
    }
}

impl Drop for EmbeddedAcker {
    /// A delivery dropped without being settled (its consumer died) is redelivered, as a broker
    /// does when a channel closes with unacked messages.
    fn drop(&mut self) {
        if let Some((stored, _permit)) = lock(&self.pending).take() {
            let mut stored = stored;
            // Not the consumer's fault: do not count it against the delivery limit.
            stored.redeliveries = stored.redeliveries.saturating_sub(1);
            self.queue
                .settle_nack(stored, true, "consumer dropped the delivery");
        }
    }
}
