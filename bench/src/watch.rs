//! Ingress-to-assignment measurement (in-process mode): the load engine records when each
//! conversation-opening message was sent, keyed by user; a subscriber on `switchyard.events`
//! (`conversation.assigned`) finds the user in each assigned conversation's `recipient` and
//! records the time between the two.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Deserialize;
use switchyard_core::bus::Bus;
use switchyard_core::bus::topology::EVENTS_EXCHANGE;

use crate::load::{new_histogram, parse_user, record};

const SHARDS: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Send instants of conversation-opening messages, by user number (sharded to keep worker
/// contention low).
pub struct SendTimes {
    shards: Vec<Mutex<HashMap<u64, Instant>>>,
}

impl Default for SendTimes {
    fn default() -> Self {
        SendTimes {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl SendTimes {
    fn shard(&self, user: u64) -> &Mutex<HashMap<u64, Instant>> {
        &self.shards[(user % SHARDS as u64) as usize]
    }

    /// Records that `user`'s first message was sent at `at`.
    pub fn insert(&self, user: u64, at: Instant) {
        lock(self.shard(user)).insert(user, at);
    }

    /// Forgets `user` (its message opened no conversation).
    pub fn remove(&self, user: u64) -> Option<Instant> {
        lock(self.shard(user)).remove(&user)
    }
}

/// What the subscriber observed.
pub struct Watch {
    run_id: String,
    /// Send instants of the measured phase.
    pub measured: Arc<SendTimes>,
    /// Assignments of measured-phase conversations observed.
    pub assigned: AtomicU64,
    /// Assignments of warm-up conversations observed.
    pub warmup_assigned: AtomicU64,
    /// Assignments of other conversations (other runs, other clients).
    pub foreign: AtomicU64,
    /// Measured-phase assignments whose send instant was unknown (should stay 0).
    pub unmatched: AtomicU64,
    /// Events that could not be decoded.
    pub undecodable: AtomicU64,
    base: Instant,
    last_assigned_ns: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

#[derive(Deserialize)]
struct Event {
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    conversation: Conversation,
}

#[derive(Deserialize)]
struct Conversation {
    recipient: Recipient,
}

#[derive(Deserialize)]
struct Recipient {
    external_id: String,
}

impl Watch {
    /// A watch for the users of `run_id`.
    pub fn new(run_id: &str) -> anyhow::Result<Self> {
        Ok(Watch {
            run_id: run_id.to_owned(),
            measured: Arc::new(SendTimes::default()),
            assigned: AtomicU64::new(0),
            warmup_assigned: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            base: Instant::now(),
            last_assigned_ns: AtomicU64::new(0),
            latency: Mutex::new(new_histogram()?),
        })
    }

    /// Ingress-to-assignment latencies recorded so far (microseconds).
    pub fn latency(&self) -> Histogram<u64> {
        lock(&self.latency).clone()
    }

    /// When the latest measured-phase assignment was observed.
    pub fn last_assigned(&self) -> Option<Instant> {
        match self.last_assigned_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns)),
        }
    }

    fn observe(&self, body: &[u8]) {
        let now = Instant::now();
        let Ok(event) = serde_json::from_slice::<Event>(body) else {
            self.undecodable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let external_id = &event.data.conversation.recipient.external_id;
        match parse_user(&self.run_id, external_id) {
            Some(('m', user)) => match self.measured.remove(user) {
                Some(sent) => {
                    record(
                        &mut lock(&self.latency),
                        now.saturating_duration_since(sent),
                    );
                    let ns = now.saturating_duration_since(self.base).as_nanos() as u64;
                    self.last_assigned_ns.fetch_max(ns.max(1), Ordering::AcqRel);
                    self.assigned.fetch_add(1, Ordering::AcqRel);
                }
                None => {
                    self.unmatched.fetch_add(1, Ordering::Relaxed);
                }
            },
            Some(('w', _)) => {
                self.warmup_assigned.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.foreign.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Subscribes to `conversation.assigned` on `bus` and observes every event until the bus
    /// closes.
    pub async fn start(self: &Arc<Self>, bus: Arc<dyn Bus>) -> anyhow::Result<()> {
        let queue = bus
            .declare_subscriber(EVENTS_EXCHANGE, &["conversation.assigned"])
            .await
            .context("subscribing to conversation.assigned")?;
        let mut deliveries = bus
            .consume(&queue, 1024)
            .await
            .context("consuming conversation.assigned")?;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(delivery) = deliveries.next().await {
                me.observe(&delivery.message.body);
                // The embedded bus cannot fail an ack; a failure would only mean redelivery.
                let _ = delivery.ack().await;
            }
        });
        Ok(())
    }

    /// Waits until `expected` measured assignments were observed or `timeout` passed.
    pub async fn wait_for(&self, expected: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.assigned.load(Ordering::Acquire) >= expected {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `expected` warm-up assignments were observed or `timeout` passed.
    pub async fn wait_for_warmup(&self, expected: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.warmup_assigned.load(Ordering::Acquire) >= expected {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
