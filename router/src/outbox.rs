//! The outbox: what a command publishes after its change is stored, which no bus redelivery
//! will repeat: the events of agent presence, closes, transfers, links, replies sent and lapsed
//! presence, and an agent's reply itself. When the bus refuses such a batch, it is kept in the
//! store and republished, in order and with the same message ids, once the bus takes it again.
//!
//! An agent's reply goes further: its bus message is written to the outbox in the same atomic
//! store step that records the reply ([`Outbox::stage`]), and removed once the bus confirms it.
//! A process that stops between the two leaves it there, and the republisher sends it once it is
//! older than a grace period (longer than any publish can take), so a recorded reply is never
//! lost; at worst it goes out twice with one id, and the outbound worker drops the second copy.
//!
//! The other changes commands make (an assignment, a close, a transfer, an offer accepted,
//! declined or expired, an agent update, a lapsed agent set offline) are noted in the store in
//! the same step that makes them ([`Note`]), and the notes cleared once their events are
//! published or kept ([`Outbox::publish_noted`]); the republisher announces, from the stored
//! state, the changes whose notes are older than the grace, with the event ids (and, for an
//! offer taken back, the reason) their command would have given them.
//!
//! Routing needs little of this: a message whose events were not confirmed is not acknowledged,
//! so the bus redelivers it and the retry announces everything again, except a merge, which the
//! retry finds done and cannot see: routing notes its merges too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_core::bus::topology::{BOTS_EXCHANGE, EVENTS_EXCHANGE};
use switchyard_core::bus::{Bus, BusError, Message};
use switchyard_core::envelope::new_id;
use switchyard_core::event::EventType;
use switchyard_core::metrics::Metrics;
use switchyard_core::model::ConversationStatus;
use switchyard_core::store::{MailboxHead, MailboxPush, Note, NoteKind, Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::events::EventBatch;

/// The store mailbox holding deferred batches, oldest first.
pub const OUTBOX_MAILBOX: &str = "bus-outbox";
/// The claim that lets one process at a time republish the outbox.
pub const REPUBLISH_LOCK: &str = "lock:bus-outbox";
/// The most batches the outbox keeps; older ones are dropped beyond it.
pub const OUTBOX_MAX_BATCHES: usize = 100_000;
/// How long a deferred batch is kept (an outage longer than this loses its events).
pub const OUTBOX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Batches republished per round, so that one round never holds the claim for long.
const REPUBLISH_ROUND: usize = 500;
/// How long the republishing claim holds.
const REPUBLISH_CLAIM: Duration = Duration::from_secs(60);
/// A round starts no batch after this long, so that it ends well within its claim: once the claim
/// expires, another process may start a round of its own.
const REPUBLISH_ROUND_TIME: Duration = Duration::from_secs(30);
/// How long a staged batch is left to its own publish before the republisher may send it (see
/// [`Outbox::with_staged_grace`]).
pub const STAGED_GRACE: Duration = Duration::from_secs(30);

/// Publishes what commands cause, deferring to the store's outbox a batch the bus does not
/// confirm.
#[derive(Clone)]
pub struct Outbox {
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    staged_grace: Duration,
}

/// A batch as kept in the outbox: messages for one exchange, in order.
#[derive(Debug, Serialize, Deserialize)]
struct Deferred {
    exchange: String,
    messages: Vec<DeferredMessage>,
    /// When a staged batch was staged (Unix milliseconds): its own publish may be under way until
    /// the republisher's grace has passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    staged_at_ms: Option<i64>,
}

/// A batch staged in the outbox with the store change it follows from (see [`Outbox::stage`]).
#[derive(Debug)]
pub struct Staged {
    id: String,
    exchange: String,
    messages: Vec<(String, Message)>,
    item: String,
}

impl Staged {
    /// The mailbox push that keeps the batch: hand it to the store operation that records the
    /// change, so that both are stored or neither.
    pub fn push(&self) -> MailboxPush<'_> {
        MailboxPush {
            key: OUTBOX_MAILBOX,
            id: &self.id,
            body: &self.item,
            max_len: OUTBOX_MAX_BATCHES,
            ttl: OUTBOX_TTL,
        }
    }
}

/// One message of a deferred batch.
#[derive(Debug, Serialize, Deserialize)]
struct DeferredMessage {
    /// Routing key (for events, the event type).
    key: String,
    /// Message id (for events, the CloudEvents `id`).
    id: String,
    /// The JSON body.
    body: String,
    headers: BTreeMap<String, String>,
}

impl Outbox {
    /// An outbox that publishes on `bus` and defers to `store`.
    pub fn new(bus: Arc<dyn Bus>, store: Arc<dyn Store>, metrics: Metrics) -> Self {
        Outbox {
            bus,
            store,
            metrics,
            staged_grace: STAGED_GRACE,
        }
    }

    /// The same outbox, leaving staged batches to their own publish for `grace` after they were
    /// staged (default [`STAGED_GRACE`]) before republishing them. It must be longer than a
    /// publish can take.
    pub fn with_staged_grace(mut self, grace: Duration) -> Self {
        self.staged_grace = grace;
        self
    }

    /// Publishes an event batch (see [`Outbox::send`]), then the bots' copies of its events (a
    /// conversation handed to a bot), as [`crate::events::EventPublisher`] does.
    pub async fn publish(&self, batch: EventBatch) -> Result<(), BusError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (events, bot_copies) = batch.into_publishes()?;
        self.send(EVENTS_EXCHANGE, events).await?;
        if !bot_copies.is_empty() {
            self.send(BOTS_EXCHANGE, bot_copies).await?;
        }
        Ok(())
    }

    /// Publishes the events of a command's noted changes (see [`Outbox::publish`]), then clears
    /// the notes. If the store does not answer, the notes stay, and the republisher announces
    /// the changes again after the grace, with the same event ids.
    pub async fn publish_noted(&self, batch: EventBatch, notes: &[Note]) -> Result<(), BusError> {
        self.publish(batch).await?;
        announced(&*self.store, notes).await;
        Ok(())
    }

    /// Publishes `messages` on `exchange`, in order: on the events or the bots' exchange as an
    /// event batch (an event nobody is bound to receive is not an error), elsewhere each one
    /// mandatory. If the bus does not confirm them for a [transient](BusError::is_transient)
    /// reason, they are kept in the outbox and this returns `Ok`: the change they follow from is
    /// stored, and they will follow it. Fails when the bus refuses them for good (nothing is
    /// bound for them), or when they could be neither published nor kept.
    pub async fn send(
        &self,
        exchange: &str,
        messages: Vec<(String, Message)>,
    ) -> Result<(), BusError> {
        let refused = match publish(&*self.bus, exchange, messages.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => e,
        };
        let count = messages.len();
        let body = Deferred::encode(exchange, &messages, None)?;
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
                self.count("deferred");
                tracing::warn!(error = %refused, %exchange, messages = count, "deferred to the outbox; republished once the bus takes it");
                Ok(())
            }
            Err(e) => {
                self.count("lost");
                tracing::error!(error = %e, publish_error = %refused, %exchange, messages = count, "could be neither published nor deferred");
                Err(refused)
            }
        }
    }

    /// Prepares `messages` for `exchange` to be kept in the outbox by the store operation that
    /// records their cause (give it [`Staged::push`]); then [`Outbox::send_staged`] publishes them.
    pub fn stage(
        &self,
        exchange: &str,
        messages: Vec<(String, Message)>,
    ) -> Result<Staged, BusError> {
        let item = Deferred::encode(
            exchange,
            &messages,
            Some(switchyard_core::time::now().timestamp_millis()),
        )?;
        Ok(Staged {
            id: new_id(),
            exchange: exchange.to_owned(),
            messages,
            item,
        })
    }

    /// Publishes a batch the store keeps already (see [`Outbox::stage`]) and removes it from the
    /// outbox once the bus confirms it. When the bus does not confirm it for a
    /// [transient](BusError::is_transient) reason it stays there, and the republisher sends it
    /// after its grace; this returns `Ok`. Fails when the bus refuses it for good.
    pub async fn send_staged(&self, staged: Staged) -> Result<(), BusError> {
        let Staged {
            id,
            exchange,
            messages,
            ..
        } = staged;
        let count = messages.len();
        match publish(&*self.bus, &exchange, messages).await {
            Ok(()) => {
                self.forget(&id).await;
                Ok(())
            }
            Err(e) if e.is_transient() => {
                self.count("deferred");
                tracing::warn!(error = %e, %exchange, messages = count, "kept in the outbox; republished once the bus takes it");
                Ok(())
            }
            Err(e) => {
                self.forget(&id).await;
                Err(e)
            }
        }
    }

    /// Removes a staged batch that needs no republishing. If the store does not answer, the
    /// republisher sends it again later, with the same ids.
    async fn forget(&self, id: &str) {
        if let Err(e) = self
            .store
            .mailbox_ack(OUTBOX_MAILBOX, &[id.to_owned()])
            .await
        {
            tracing::warn!(error = %e, id, "could not remove a published batch from the outbox; it is sent again later, with the same ids");
        }
    }

    /// Builds an event batch with `build` and publishes it (see [`Outbox::send`]).
    pub async fn emit(&self, build: impl FnOnce(&mut EventBatch)) -> Result<(), BusError> {
        let mut batch = EventBatch::new();
        build(&mut batch);
        self.publish(batch).await
    }

    /// Republishes the outbox's batches, oldest first, stopping at the first the bus refuses for a
    /// transient reason; a staged batch still within its grace, and what follows it on its
    /// exchange, wait for a later round (other exchanges go on); a batch it refuses for good
    /// (nothing is bound for it any more) is dropped, so that it cannot hold up the rest. Then
    /// announces the noted changes nobody announced. One process at a time does this (a store
    /// claim); returns how many batches left the outbox, plus the notes announced.
    pub async fn republish(&self) -> Result<usize, BusError> {
        // Most rounds find the outbox empty and nothing unannounced: two reads, no claim.
        let waiting = self.head(0).await?.len;
        self.waiting(waiting);
        if waiting == 0 && self.unannounced().await?.is_empty() {
            return Ok(0);
        }
        let lock_id = new_id();
        let store_down = |e: switchyard_core::store::StoreError| {
            BusError::Unavailable(format!("store unavailable for the outbox: {e}"))
        };
        let holder = self
            .store
            .claim_key(REPUBLISH_LOCK, &lock_id, REPUBLISH_CLAIM)
            .await
            .map_err(store_down)?;
        if holder.is_some() {
            return Ok(0);
        }
        let result = match self.republish_round().await {
            Ok(moved) => self.announce_unannounced().await.map(|n| moved + n),
            Err(e) => Err(e),
        };
        if let Err(e) = self.store.release_key(REPUBLISH_LOCK, &lock_id).await {
            tracing::warn!(error = %e, "could not release the outbox lock; it expires by itself");
        }
        result
    }

    /// Changes commands noted more than the grace ago whose events nobody announced (the command
    /// stopped, or lost the store's reply).
    async fn unannounced(&self) -> Result<Vec<Note>, BusError> {
        self.store
            .unannounced(self.grace_cutoff())
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot read unannounced changes: {e}")))
    }

    /// Announces the changes [`Outbox::unannounced`] finds, from their stored state (so with the
    /// event ids their command would have given them), in the order they were made, then clears
    /// their notes. Returns how many notes it cleared.
    async fn announce_unannounced(&self) -> Result<usize, BusError> {
        let mut notes = self.unannounced().await?;
        if notes.is_empty() {
            return Ok(0);
        }
        // In the order the changes were made (and, at one instant, announced).
        notes.sort_by_key(|note| (note.at, note.kind));
        let mut batch = EventBatch::new();
        for note in &notes {
            self.render(note, &mut batch).await.map_err(|e| {
                BusError::Unavailable(format!("cannot read what a note is about: {e}"))
            })?;
        }
        let events = batch.len();
        self.publish(batch).await?;
        self.store
            .clear_notes(&notes)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot clear announced notes: {e}")))?;
        tracing::warn!(
            notes = notes.len(),
            events,
            "announced changes whose command did not (it stopped, or lost the store's reply)"
        );
        self.metrics
            .outbox
            .with_label_values(&["announced"])
            .inc_by(u64::try_from(notes.len()).unwrap_or(u64::MAX));
        Ok(notes.len())
    }

    /// Adds the events of a noted change to `batch`, from the state stored now: nothing for a
    /// change undone meanwhile (an assignment whose conversation was closed or queued again; a
    /// record that is gone). A conversation event keeps the id its command gave it: the id comes
    /// from the time of the change, which the stored conversation, or the note, keeps.
    async fn render(&self, note: &Note, batch: &mut EventBatch) -> Result<(), StoreError> {
        let conversation = async || self.store.conversation(&note.subject).await;
        let from = note.from_agent.as_deref();
        match note.kind {
            NoteKind::AgentUpdated => {
                if let Some(agent) = self.store.agent(&note.subject).await? {
                    batch.agent_updated(&agent);
                }
            }
            NoteKind::Merged => {
                // A merged-away id reads as the profile it was merged into.
                if let Some(survivor) = self.store.customer(&note.subject).await?
                    && survivor.id != note.subject
                {
                    batch.customer_merged(&survivor, &note.subject, &note.via, note.at);
                }
            }
            NoteKind::Erased => {
                // The records are gone: the note carries what the event says.
                if let Some(erasure) = &note.erasure {
                    batch.customer_erased(erasure, note.at);
                }
            }
            NoteKind::CustomerUpdated => {
                // The profile as it is now (erased since: nothing to announce).
                if let Some(customer) = self.store.customer(&note.subject).await? {
                    batch.customer_updated(&customer, note.at);
                }
            }
            NoteKind::Assigned => {
                if let Some(c) = conversation().await?
                    && c.status == ConversationStatus::Assigned
                {
                    batch.conversation(EventType::ConversationAssigned, &c);
                }
            }
            NoteKind::Started => {
                // Created, then (if it is still so) assigned; a later change has its own note.
                if let Some(c) = conversation().await? {
                    batch.conversation(EventType::ConversationCreated, &c);
                    if c.status == ConversationStatus::Assigned {
                        batch.conversation(EventType::ConversationAssigned, &c);
                    }
                }
            }
            NoteKind::Closed => {
                if let Some(c) = conversation().await?
                    && c.status == ConversationStatus::Closed
                {
                    batch.conversation_closed(&c, from);
                }
            }
            NoteKind::Accepted => {
                // Only while it is still with that agent, accepted: a later change (a transfer,
                // a close) has its own note.
                if let Some(c) = conversation().await?
                    && c.status == ConversationStatus::Assigned
                    && c.offered_at.is_none()
                    && from.is_some()
                    && c.agent_id.as_deref() == from
                {
                    batch.conversation_accepted(&c, note.at);
                }
            }
            NoteKind::TransferredToPool
            | NoteKind::TransferredToAgent
            | NoteKind::Declined
            | NoteKind::OfferExpired
            | NoteKind::Unanswered
            | NoteKind::Overflowed => {
                if let Some(c) = conversation().await? {
                    // A conversation taken back or an overflow says why, as its command did.
                    let reason = note.kind.transfer_reason();
                    batch.conversation_transferred(&c, from, reason, note.at);
                    // Then where it went, if it is still there.
                    let (status, event) = if note.kind == NoteKind::TransferredToAgent {
                        (
                            ConversationStatus::Assigned,
                            EventType::ConversationAssigned,
                        )
                    } else {
                        (ConversationStatus::Queued, EventType::ConversationQueued)
                    };
                    if c.status == status {
                        batch.conversation(event, &c);
                    }
                }
            }
        }
        Ok(())
    }

    /// The oldest `limit` batches the outbox holds, and how many it holds in all.
    async fn head(&self, limit: usize) -> Result<MailboxHead, BusError> {
        self.store
            .mailbox_head(OUTBOX_MAILBOX, limit)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot read the outbox: {e}")))
    }

    async fn republish_round(&self) -> Result<usize, BusError> {
        // Read again under the claim: another process may have emptied it meanwhile.
        let MailboxHead {
            items,
            len: waiting,
        } = self.head(REPUBLISH_ROUND).await?;
        self.waiting(waiting);
        let mut left = 0;
        let started = std::time::Instant::now();
        let staged_before = self.grace_cutoff().timestamp_millis();
        // Exchanges held up behind a staged batch still within its grace: its own publish may
        // still be under way, and what follows it on its exchange keeps its place behind it.
        // Other exchanges go on (an event batch does not wait for a reply).
        let mut held: Vec<String> = Vec::new();
        for item in items {
            if started.elapsed() > REPUBLISH_ROUND_TIME {
                break;
            }
            let sent = match serde_json::from_str::<Deferred>(&item.body) {
                Ok(batch) if held.contains(&batch.exchange) => continue,
                Ok(batch) if batch.staged_at_ms.is_some_and(|t| t > staged_before) => {
                    held.push(batch.exchange);
                    continue;
                }
                Ok(batch) => {
                    let exchange = batch.exchange.clone();
                    match publish(&*self.bus, &exchange, batch.into_messages()).await {
                        Ok(()) => true,
                        Err(e) if e.is_transient() => return Err(e),
                        Err(e) => {
                            tracing::error!(id = %item.id, error = %e, "dropping an outbox batch the bus refuses for good");
                            false
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(id = %item.id, error = %e, "dropping an undecodable outbox batch");
                    false
                }
            };
            self.store
                .mailbox_ack(OUTBOX_MAILBOX, std::slice::from_ref(&item.id))
                .await
                .map_err(|e| {
                    BusError::Unavailable(format!("cannot acknowledge an outbox batch: {e}"))
                })?;
            left += 1;
            self.waiting(waiting.saturating_sub(left));
            self.count(if sent { "republished" } else { "dropped" });
        }
        Ok(left)
    }

    /// What was staged or noted before this instant is past the grace: its own publish is over.
    fn grace_cutoff(&self) -> chrono::DateTime<chrono::Utc> {
        let grace =
            chrono::TimeDelta::from_std(self.staged_grace).unwrap_or(chrono::TimeDelta::MAX);
        switchyard_core::time::now()
            .checked_sub_signed(grace)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
    }

    fn waiting(&self, batches: usize) {
        self.metrics
            .outbox_waiting
            .set(i64::try_from(batches).unwrap_or(i64::MAX));
    }

    fn count(&self, outcome: &str) {
        self.metrics.outbox.with_label_values(&[outcome]).inc();
    }
}

impl Deferred {
    /// The outbox item keeping `messages` for `exchange`.
    fn encode(
        exchange: &str,
        messages: &[(String, Message)],
        staged_at_ms: Option<i64>,
    ) -> Result<String, BusError> {
        let deferred = Deferred {
            exchange: exchange.to_owned(),
            messages: messages
                .iter()
                .map(|(key, message)| DeferredMessage {
                    key: key.clone(),
                    id: message.message_id.clone(),
                    body: String::from_utf8_lossy(&message.body).into_owned(),
                    headers: message.headers.clone(),
                })
                .collect(),
            staged_at_ms,
        };
        serde_json::to_string(&deferred).map_err(|e| BusError::Nacked {
            exchange: exchange.to_owned(),
            reason: format!("cannot encode a deferred batch: {e}"),
        })
    }

    /// The bus messages of the batch, in order.
    fn into_messages(self) -> Vec<(String, Message)> {
        self.messages
            .into_iter()
            .map(|m| {
                let mut message = Message::new(m.id, m.body.into_bytes());
                message.headers = m.headers;
                (m.key, message)
            })
            .collect()
    }
}

/// Clears `notes` (see [`Note`]): their changes' events are published or kept in the outbox. If
/// the store does not answer, the republisher announces the changes again later, with the same
/// event ids.
pub async fn announced(store: &dyn Store, notes: &[Note]) {
    if notes.is_empty() {
        return;
    }
    if let Err(e) = store.clear_notes(notes).await {
        tracing::warn!(error = %e, notes = notes.len(), "events published, but their notes not cleared; they are announced again later");
    }
}

/// Publishes `messages` on `exchange`: as one event batch on the events or the bots' exchange,
/// one by one (mandatory) elsewhere.
async fn publish(
    bus: &dyn Bus,
    exchange: &str,
    messages: Vec<(String, Message)>,
) -> Result<(), BusError> {
    if exchange == EVENTS_EXCHANGE || exchange == BOTS_EXCHANGE {
        return bus.publish_events(exchange, messages).await;
    }
    for (key, message) in messages {
        bus.publish(exchange, &key, message).await?;
    }
    Ok(())
}

/// Every `every` until `stop`: republishes what the outbox holds; after a full round (a long
/// outage left more than one round's batches), the next round starts at once.
pub async fn run_republisher(
    outbox: Outbox,
    every: Duration,
    stop: CancellationToken,
) -> Result<(), crate::error::RouteError> {
    let mut pause = every;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = every;
        match outbox.republish().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(batches = n, "republished deferred events");
                // A full round: more may be waiting (after a long outage), so go on at once.
                if n >= REPUBLISH_ROUND {
                    pause = Duration::ZERO;
                }
            }
            Err(e) => tracing::warn!(error = %e, "deferred events wait for the bus"),
        }
    }
}
