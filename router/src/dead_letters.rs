//! The dead letters (`switchyard.dead`): what could not be handled, with the queue it came from
//! and why. An operator lists them, and replays the ones whose cause is fixed into the queue
//! each came from, or discards them; through REST (`/v1/dead-letters`) or
//! `switchyard dead-letters`.
//!
//! Every operation reads the queue one message at a time ([`Bus::browse`]) and holds what it
//! read until it is done, so it sees each message once and never more than [`MAX_SCAN`]; what
//! it does not replay or discard goes back.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use switchyard_core::bus::topology::DEAD_LETTER_QUEUE;
use switchyard_core::bus::{
    Bus, BusError, Delivery, HEADER_DEATH_REASON, HEADER_ORIGINAL_QUEUE, Message, QueueReader,
};
use switchyard_core::metrics::Metrics;

/// The most dead letters one operation reads (and holds) before it stops.
pub const MAX_SCAN: usize = 10_000;

/// Why an operation on the dead letters failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// A replay or discard named no dead letters and did not ask for all of them.
    #[error(
        "choose the dead letters to {action}: give `message_ids`, `queue` or `reason_contains`, or set `all`"
    )]
    NothingChosen {
        /// `replay` or `discard`.
        action: &'static str,
    },
    /// The dead-letter queue could not be read.
    #[error("reading the dead letters: {0}")]
    Read(#[source] BusError),
    /// The bus failed part-way; what was done before stays done.
    #[error("{done} dead letter(s) were {action} before the bus failed: {source}")]
    Interrupted {
        /// `replayed` or `discarded`.
        action: &'static str,
        /// How many were, before the failure.
        done: usize,
        /// The failure.
        #[source]
        source: BusError,
    },
}

/// Which dead letters an operation takes: those matching every criterion given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only these message ids.
    pub message_ids: Option<Vec<String>>,
    /// Only those that came from this queue (`switchyard.inbound.3`, `switchyard.outbound.api`).
    pub queue: Option<String>,
    /// Only those whose reason contains this text.
    pub reason_contains: Option<String>,
    /// Every dead letter, when no other criterion is given (replay and discard ask for it
    /// explicitly).
    pub all: bool,
}

impl Selection {
    /// Whether no criterion narrows the selection.
    fn is_unfiltered(&self) -> bool {
        self.message_ids.is_none() && self.queue.is_none() && self.reason_contains.is_none()
    }

    fn matches(&self, letter: &DeadLetter) -> bool {
        self.message_ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&letter.message_id))
            && self
                .queue
                .as_ref()
                .is_none_or(|q| letter.queue.as_ref() == Some(q))
            && self.reason_contains.as_ref().is_none_or(|text| {
                letter
                    .reason
                    .as_ref()
                    .is_some_and(|r| r.contains(text.as_str()))
            })
    }
}

/// One dead letter, as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// The message's id (an envelope's or an event's id).
    pub message_id: String,
    /// The queue it came from, where a replay puts it back; `null` when unknown (a message
    /// published to the dead-letter exchange by someone else).
    pub queue: Option<String>,
    /// Why it was dead-lettered.
    pub reason: Option<String>,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its other headers.
    pub headers: BTreeMap<String, String>,
    /// The payload: JSON as it is, anything else as a string.
    pub body: serde_json::Value,
}

impl DeadLetter {
    fn of(delivery: &Delivery) -> Self {
        let message = &delivery.message;
        let headers = message
            .headers
            .iter()
            .filter(|(k, _)| !is_death_header(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let body = serde_json::from_slice(&message.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&message.body).into_owned())
        });
        DeadLetter {
            message_id: message.message_id.clone(),
            queue: message.headers.get(HEADER_ORIGINAL_QUEUE).cloned(),
            reason: message.headers.get(HEADER_DEATH_REASON).cloned(),
            routing_key: delivery.routing_key.clone(),
            headers,
            body,
        }
    }
}

/// Headers that describe a message's death, not the message; a replay leaves them behind.
fn is_death_header(name: &str) -> bool {
    name == HEADER_DEATH_REASON
        || name == HEADER_ORIGINAL_QUEUE
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

/// The message as it was before it died.
fn revived(message: &Message) -> Message {
    let mut message = message.clone();
    message.headers.retain(|k, _| !is_death_header(k));
    message
}

/// What [`DeadLetters::list`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// The matching dead letters, oldest first.
    pub dead_letters: Vec<DeadLetter>,
    /// Whether more match than were listed (or the scan stopped at [`MAX_SCAN`]).
    pub more: bool,
}

/// A dead letter a replay or discard did not take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The message's id.
    pub message_id: String,
    /// Why it stays a dead letter.
    pub reason: String,
}

/// What a replay or a discard did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Handled {
    /// The ids of the dead letters replayed (or discarded), oldest first.
    pub message_ids: Vec<String>,
    /// Matching dead letters left where they are.
    pub skipped: Vec<Skipped>,
    /// Whether more match than this operation took (its `limit`, or [`MAX_SCAN`]).
    pub more: bool,
}

/// The dead letters of a bus.
#[derive(Clone)]
pub struct DeadLetters {
    bus: Arc<dyn Bus>,
    metrics: Metrics,
}

/// One pass over the queue: every message read is held until the pass is dropped.
struct Pass {
    reader: Box<dyn QueueReader>,
    held: Vec<Delivery>,
    read: usize,
}

impl Pass {
    /// The next dead letter, or `None` when none is left or [`MAX_SCAN`] were read
    /// ([`Pass::stopped_early`]); an error when the queue could not be read.
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        if self.read == MAX_SCAN {
            return Ok(None);
        }
        let delivery = self.reader.next().await?;
        self.read += usize::from(delivery.is_some());
        Ok(delivery)
    }

    fn stopped_early(&self) -> bool {
        self.read == MAX_SCAN
    }

    /// Puts back everything held, then ends the read.
    fn finish(self) {
        let Pass { reader, held, .. } = self;
        drop(held);
        drop(reader);
    }
}

impl DeadLetters {
    /// The dead letters of `bus`; replays and discards are counted in `metrics`.
    pub fn new(bus: Arc<dyn Bus>, metrics: Metrics) -> Self {
        DeadLetters { bus, metrics }
    }

    async fn pass(&self) -> Result<Pass, DeadLetterError> {
        let reader = self
            .bus
            .browse(DEAD_LETTER_QUEUE)
            .await
            .map_err(DeadLetterError::Read)?;
        Ok(Pass {
            reader,
            held: Vec::new(),
            read: 0,
        })
    }

    /// Up to `limit` dead letters matching `selection`, oldest first; nothing is taken.
    pub async fn list(
        &self,
        selection: &Selection,
        limit: usize,
    ) -> Result<Listing, DeadLetterError> {
        let mut pass = self.pass().await?;
        let mut dead_letters = Vec::new();
        let mut more = false;
        while let Some(delivery) = pass.next().await.map_err(DeadLetterError::Read)? {
            let letter = DeadLetter::of(&delivery);
            pass.held.push(delivery);
            if selection.matches(&letter) {
                if dead_letters.len() == limit {
                    more = true;
                    break;
                }
                dead_letters.push(letter);
            }
        }
        let more = more || pass.stopped_early();
        pass.finish();
        Ok(Listing { dead_letters, more })
    }

    /// Puts up to `limit` dead letters matching `selection` back into the queues they came
    /// from, without the headers of their death, and removes them from the dead letters once
    /// the bus confirmed each. One whose queue is unknown or no longer exists stays.
    pub async fn replay(
        &self,
        selection: &Selection,
        limit: usize,
    ) -> Result<Handled, DeadLetterError> {
        self.take(selection, limit, Action::Replay).await
    }

    /// Removes up to `limit` dead letters matching `selection` for good.
    pub async fn discard(
        &self,
        selection: &Selection,
        limit: usize,
    ) -> Result<Handled, DeadLetterError> {
        self.take(selection, limit, Action::Discard).await
    }

    /// Publishes the dead letter's message, without the headers of its death, into the queue it
    /// came from: `None` once confirmed, or why it cannot go back.
    async fn send_back(
        &self,
        letter: &DeadLetter,
        message: &Message,
    ) -> Result<Option<String>, BusError> {
        let Some(queue) = &letter.queue else {
            return Ok(Some("it does not say which queue it came from".into()));
        };
        match self.bus.publish_to_queue(queue, revived(message)).await {
            Ok(()) => Ok(None),
            Err(BusError::NotDeclared { .. }) => {
                Ok(Some(format!("its queue `{queue}` does not exist")))
            }
            Err(e) => Err(e),
        }
    }

    async fn take(
        &self,
        selection: &Selection,
        limit: usize,
        action: Action,
    ) -> Result<Handled, DeadLetterError> {
        if selection.is_unfiltered() && !selection.all {
            return Err(DeadLetterError::NothingChosen {
                action: action.verb(),
            });
        }
        let mut pass = self.pass().await?;
        let mut handled = Handled::default();
        loop {
            let delivery = match pass.next().await {
                Ok(Some(delivery)) => delivery,
                Ok(None) => break,
                Err(source) => {
                    pass.finish();
                    return Err(DeadLetterError::Interrupted {
                        action: action.done(),
                        done: handled.message_ids.len(),
                        source,
                    });
                }
            };
            let letter = DeadLetter::of(&delivery);
            if !selection.matches(&letter) {
                pass.held.push(delivery);
                continue;
            }
            if handled.message_ids.len() == limit {
                handled.more = true;
                pass.held.push(delivery);
                break;
            }
            if action == Action::Replay {
                match self.send_back(&letter, &delivery.message).await {
                    Ok(None) => {}
                    Ok(Some(reason)) => {
                        handled.skipped.push(Skipped {
                            message_id: letter.message_id,
                            reason,
                        });
                        pass.held.push(delivery);
                        continue;
                    }
                    Err(source) => {
                        pass.held.push(delivery);
                        pass.finish();
                        return Err(DeadLetterError::Interrupted {
                            action: action.done(),
                            done: handled.message_ids.len(),
                            source,
                        });
                    }
                }
            }
            if let Err(e) = delivery.ack().await {
                // Replayed, but still a dead letter: a second replay sends it again, which the
                // router and the outbound senders recognize by its id.
                tracing::warn!(id = %letter.message_id, error = %e, "a dead letter was {} but could not be removed", action.done());
            }
            let queue = letter.queue.as_deref().unwrap_or("unknown");
            self.metrics
                .dead_letters
                .with_label_values(&[queue, action.done()])
                .inc();
            tracing::info!(id = %letter.message_id, queue = %queue, "dead letter {}", action.done());
            handled.message_ids.push(letter.message_id);
        }
        handled.more = handled.more || pass.stopped_early();
        pass.finish();
        Ok(handled)
    }
}

/// Samples how many messages wait in the dead-letter queue into
/// `switchyard_dead_letters_waiting` every `every`, until `stop`.
pub async fn sample_dead_letters(
    bus: Arc<dyn Bus>,
    metrics: Metrics,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match bus.ready_messages(DEAD_LETTER_QUEUE).await {
            Ok(n) => metrics
                .dead_letters_waiting
                .set(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(e) => tracing::debug!(error = %e, "could not count the dead letters"),
        }
        if !crate::timers::tick(every, &stop).await {
            return;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Replay,
    Discard,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Replay => "replay",
            Action::Discard => "discard",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Action::Replay => "replayed",
            Action::Discard => "discarded",
        }
    }
}
