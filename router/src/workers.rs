//! Bus consumers: one per inbound shard (messages of one identity in order), one per outbound
//! channel kind (replies to the channels). Each settles a delivery only after its effects are
//! stored and its events confirmed; failures retry in place, then go back to the bus, and after
//! the delivery limit to the dead-letter queue with their reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use switchyard_connectors::{ConnectorError, Registry};
use switchyard_core::bus::{Bus, Deliveries, Delivery};
use switchyard_core::envelope::Envelope;
use switchyard_core::metrics::Metrics;
use switchyard_core::store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::RouteError;
use crate::in_order::InOrderByKey;
use crate::inbound::{InboundRouter, Routed};
use crate::outbox::Outbox;
use crate::peers::{HAND_BACK_COOLDOWN, MARK_TTL, Peers};

/// The next delivery, or `None` once `stop` is cancelled or the stream ends.
pub(crate) async fn next_until(
    deliveries: &mut Box<dyn Deliveries>,
    stop: &CancellationToken,
) -> Option<Delivery> {
    tokio::select! {
        _ = stop.cancelled() => None,
        d = deliveries.next() => d,
    }
}

/// Backoff between in-process attempts: 50 ms, 200 ms, 800 ms, ...
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(
        50u64
            .saturating_mul(4u64.saturating_pow(attempt))
            .min(5_000),
    )
}

/// One inbound shard's consumer: the queue, how it routes, and its place among the routers.
#[derive(Clone)]
pub struct ShardWorker {
    /// The bus the shard queue is on.
    pub bus: Arc<dyn Bus>,
    /// The shard's number.
    pub shard: u16,
    /// The shard's queue.
    pub queue: String,
    /// Unsettled deliveries at a time.
    pub prefetch: u16,
    /// In-place attempts after which a failing message is logged.
    pub attempts: u32,
    /// Routes each message.
    pub router: InboundRouter,
    /// Where outcomes are counted.
    pub metrics: Metrics,
    /// Which router owns the shard, and the hand-back between routers.
    pub peers: Peers,
}

/// How one subscription to a shard ended.
enum Ended {
    /// Stopped, or the bus closed.
    Stopped,
    /// Handed back to the shard's owner: everything taken is settled.
    HandedBack,
}

/// Consumes one inbound shard queue until `stop` or the bus closes.
///
/// Messages of different identities (shard keys) are routed concurrently, up to the prefetch;
/// messages of one identity strictly one after the other, in queue order. A transient failure
/// (store or bus unavailable) is retried in place with backoff, so an outage delays messages but
/// never dead-letters them; a message that can never be routed is dead-lettered with its reason.
/// On stop, the consumer takes nothing new and finishes what it holds. Then it is dropped, or,
/// when `exit` is set by then (the process exits after stopping), it
/// [leaves](Deliveries::leave) so that the queue takes back what it had not started before a
/// standby router gets anything.
///
/// When another router owns the shard and is up, the consumer hands the shard back and
/// registers again as a standby (see [`crate::peers`]). `registered` (for the router's own
/// shards) is counted down once the first registration is made.
pub async fn run_shard(
    worker: ShardWorker,
    mut registered: Option<watch::Sender<usize>>,
    stop: CancellationToken,
    exit: Arc<AtomicBool>,
) -> Result<(), RouteError> {
    let mut handed_back_at: Option<Instant> = None;
    loop {
        let mut deliveries = worker.bus.consume(&worker.queue, worker.prefetch).await?;
        if let Some(registered) = registered.take() {
            registered.send_modify(|left| *left = left.saturating_sub(1));
        }
        let hand_back_from = handed_back_at.map(|at| at + HAND_BACK_COOLDOWN);
        if let Ended::HandedBack = worker.drain(&mut deliveries, hand_back_from, &stop).await {
            worker.unmark().await;
            worker
                .metrics
                .shard_handovers
                .with_label_values(&["handed_back"])
                .inc();
            tracing::info!(
                shard = worker.shard,
                owner = worker.peers.owner(worker.shard),
                "handed the shard back to its owner"
            );
            handed_back_at = Some(Instant::now());
            if !stop.is_cancelled() {
                continue;
            }
        }
        if exit.load(Ordering::Acquire) {
            deliveries.leave().await;
        }
        return Ok(());
    }
}

/// Where one subscription is in handing its shard back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandBack {
    /// Not handing back.
    No,
    /// Marked; acknowledgements are held until the broker stops sending.
    Quieting,
    /// Cancelled; routing what the broker had sent.
    Draining,
}

/// Holds acknowledgements back while a hand-back waits for the broker to stop sending. A
/// consumer that acknowledges nothing gets at most its prefetch, so once deliveries stop coming,
/// none is on its way: a delivery on its way when the consumer is cancelled would go back to
/// the queue behind what the next router already has.
#[derive(Default)]
struct AckGate {
    /// The routed deliveries held back, while holding.
    held: std::sync::Mutex<Option<Vec<Delivery>>>,
}

impl AckGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<Delivery>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts holding acknowledgements back.
    fn hold(&self) {
        self.lock().get_or_insert_with(Vec::new);
    }

    /// Keeps a routed `delivery` while holding; otherwise gives it back to be acknowledged.
    fn keep(&self, delivery: Delivery) -> Option<Delivery> {
        match self.lock().as_mut() {
            Some(held) => {
                held.push(delivery);
                None
            }
            None => Some(delivery),
        }
    }

    /// Stops holding, and returns what was held, to be acknowledged.
    fn release(&self) -> Vec<Delivery> {
        self.lock().take().unwrap_or_default()
    }
}

/// Acknowledges a routed delivery (envelope `id`).
async fn ack(delivery: Delivery, id: &str) {
    if let Err(e) = delivery.ack().await {
        tracing::warn!(error = %e, %id, "ack failed; the message will be redelivered and deduplicated");
    }
}

/// Acknowledges routed deliveries.
async fn ack_all(deliveries: Vec<Delivery>) {
    for delivery in deliveries {
        let id = delivery.message.message_id.clone();
        ack(delivery, &id).await;
    }
}

/// How long a hand-back waits without a delivery before it cancels the consumer.
const QUIET_BEFORE_CANCEL: Duration = Duration::from_millis(100);

impl ShardWorker {
    /// Routes what one subscription delivers until it ends: on stop, when the bus closes, or
    /// after a hand-back (not before `hand_back_from`) once everything taken is settled.
    async fn drain(
        &self,
        deliveries: &mut Box<dyn Deliveries>,
        hand_back_from: Option<Instant>,
        stop: &CancellationToken,
    ) -> Ended {
        let gate = AckGate::default();
        let mut running = FuturesUnordered::new();
        // A user's messages one after the other, different users' at once.
        let mut by_user = InOrderByKey::default();
        let mut taking = true;
        // The first delivery may come while another router still hands this shard back; so may
        // the first after the subscription was resumed (the connection dropped and recovered:
        // meanwhile another router may have been active on the shard and handed it back).
        let mut first = true;
        let mut hand_back = HandBack::No;
        let refresh = tokio::time::sleep(MARK_TTL / 3);
        let quiet = tokio::time::sleep(QUIET_BEFORE_CANCEL);
        tokio::pin!(refresh, quiet);
        loop {
            if !taking && running.is_empty() {
                break;
            }
            tokio::select! {
                // A hand-back under way takes the rest of its (finite) stream, so that nothing
                // it held goes back to the queue behind what the next router already has.
                _ = stop.cancelled(), if taking && hand_back == HandBack::No => taking = false,
                () = &mut refresh, if hand_back != HandBack::No => {
                    if let Err(e) = self.peers.mark_hand_back(self.shard).await {
                        tracing::warn!(shard = self.shard, error = %e, "could not refresh the hand-back mark");
                    }
                    refresh.as_mut().reset(tokio::time::Instant::now() + MARK_TTL / 3);
                }
                () = &mut quiet, if hand_back == HandBack::Quieting => {
                    hand_back = self.cancel_for_hand_back(deliveries, &gate).await;
                }
                next = deliveries.next(), if taking => {
                    let Some(delivery) = next else {
                        taking = false;
                        continue;
                    };
                    let first_of_subscription = std::mem::take(&mut first) | deliveries.take_resumed();
                    if first_of_subscription && self.peers.shared() && self.peers.wait_for_hand_back(self.shard, stop).await {
                        self.metrics.shard_handovers.with_label_values(&["waited"]).inc();
                    }
                    if hand_back == HandBack::No
                        && hand_back_from.is_none_or(|from| Instant::now() >= from)
                        && self.peers.should_hand_back(self.shard)
                    {
                        hand_back = self.begin_hand_back(&gate).await;
                        refresh.as_mut().reset(tokio::time::Instant::now() + MARK_TTL / 3);
                    }
                    if hand_back == HandBack::Quieting {
                        quiet.as_mut().reset(tokio::time::Instant::now() + QUIET_BEFORE_CANCEL);
                    }
                    let Some((delivery, envelope)) = decode(delivery, &self.metrics).await else {
                        continue;
                    };
                    let key = envelope.shard_key();
                    if let Some((delivery, envelope)) = by_user.admit(&key, (delivery, envelope)) {
                        running.push(self.route_one(key, delivery, envelope, &gate, stop));
                    }
                }
                Some((key, handed_back)) = running.next() => {
                    if handed_back {
                        // The user's later messages go back with it, so that none overtakes it.
                        for (delivery, _) in by_user.abandon(&key) {
                            if let Err(e) = delivery.hand_back("handed back after an earlier message of its user").await {
                                tracing::warn!(error = %e, "could not hand a message back");
                            }
                        }
                        continue;
                    }
                    if let Some((delivery, envelope)) = by_user.done(&key) {
                        running.push(self.route_one(key, delivery, envelope, &gate, stop));
                    }
                }
            }
        }
        // Anything still held back: the stream ended while quieting (the bus closed), so the
        // shard was not handed back.
        ack_all(gate.release()).await;
        match hand_back {
            HandBack::Draining => Ended::HandedBack,
            HandBack::Quieting => {
                self.unmark().await;
                Ended::Stopped
            }
            HandBack::No => Ended::Stopped,
        }
    }

    /// Marks the shard as being handed back and starts holding acknowledgements back.
    async fn begin_hand_back(&self, gate: &AckGate) -> HandBack {
        if let Err(e) = self.peers.mark_hand_back(self.shard).await {
            tracing::debug!(shard = self.shard, error = %e, "cannot mark a hand-back; keeping the shard for now");
            return HandBack::No;
        }
        gate.hold();
        HandBack::Quieting
    }

    /// Cancels the consumer once the broker has stopped sending (the next waiting router
    /// becomes active), then acknowledges what was held back.
    async fn cancel_for_hand_back(
        &self,
        deliveries: &mut Box<dyn Deliveries>,
        gate: &AckGate,
    ) -> HandBack {
        let cancelled = deliveries.cancel().await;
        ack_all(gate.release()).await;
        match cancelled {
            Ok(()) => {
                tracing::info!(shard = self.shard, "handing the shard back to its owner");
                HandBack::Draining
            }
            Err(e) => {
                tracing::warn!(shard = self.shard, error = %e, "cannot cancel the consumer; keeping the shard for now");
                self.unmark().await;
                HandBack::No
            }
        }
    }

    /// Removes this router's hand-back mark from the shard.
    async fn unmark(&self) {
        if let Err(e) = self.peers.unmark_hand_back(self.shard).await {
            tracing::warn!(shard = self.shard, error = %e, "could not remove the hand-back mark; it lapses by itself");
        }
    }

    /// Routes one message and settles it (or, while `gate` holds, keeps it to acknowledge
    /// later); returns its shard key, and whether the message was handed back unrouted (a
    /// transient failure while stopping).
    async fn route_one(
        &self,
        key: String,
        delivery: Delivery,
        envelope: Envelope,
        gate: &AckGate,
        stop: &CancellationToken,
    ) -> (String, bool) {
        let (router, metrics) = (&self.router, &self.metrics);
        let mut attempt: u32 = 0;
        loop {
            match router.route(envelope.clone()).await {
                Ok(routed) => {
                    let outcome = match routed {
                        Routed::Recorded(_) | Routed::Linked(_) => "routed",
                        Routed::Duplicate(_) => "duplicate",
                    };
                    metrics.routed.with_label_values(&[outcome]).inc();
                    if let Some(delivery) = gate.keep(delivery) {
                        ack(delivery, &envelope.id).await;
                    }
                    return (key, false);
                }
                Err(e) if e.is_transient() && !stop.is_cancelled() => {
                    if attempt + 1 == self.attempts {
                        tracing::warn!(error = %e, id = %envelope.id, "routing keeps failing; retrying in place until the store and bus answer");
                    }
                    metrics.routed.with_label_values(&["retried"]).inc();
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(e) if e.is_transient() => {
                    // Stopping: hand it back to the bus for the next router.
                    if let Err(e) = delivery.hand_back(&e.to_string()).await {
                        tracing::warn!(error = %e, "could not hand a message back");
                    }
                    return (key, true);
                }
                Err(e) => {
                    metrics.routed.with_label_values(&["dead_lettered"]).inc();
                    tracing::error!(error = %e, id = %envelope.id, "message cannot be routed; dead-lettering");
                    if let Err(e) = delivery.reject(&e.to_string()).await {
                        tracing::error!(error = %e, "could not dead-letter a message");
                    }
                    return (key, false);
                }
            }
        }
    }
}

/// Decodes a delivery's envelope; an undecodable one is dead-lettered at once.
async fn decode(delivery: Delivery, metrics: &Metrics) -> Option<(Delivery, Envelope)> {
    match serde_json::from_slice::<Envelope>(&delivery.message.body) {
        Ok(envelope) => Some((delivery, envelope)),
        Err(e) => {
            metrics.routed.with_label_values(&["dead_lettered"]).inc();
            let reason = format!("undecodable envelope: {e}");
            tracing::error!(message_id = %delivery.message.message_id, %reason, "dead-lettering");
            if let Err(e) = delivery.reject(&reason).await {
                tracing::error!(error = %e, "could not dead-letter a message");
            }
            None
        }
    }
}

/// What an outbound consumer delivers with.
#[derive(Clone)]
pub struct Outbound {
    /// Sends tried in place before a reply goes back to the queue.
    pub attempts: u32,
    /// Redeliveries before a reply that keeps failing is dead-lettered.
    pub delivery_limit: u32,
    /// The channels replies go out through.
    pub registry: Registry,
    /// Where `message.sent` and `message.failed` go.
    pub outbox: Outbox,
    /// Remembers which replies were sent.
    pub store: Arc<dyn Store>,
    /// How long a sent reply's id is remembered: a second copy of it within this time (a
    /// redelivery, a republished batch) is not sent again.
    pub sent_ttl: Duration,
    /// Where outcomes are counted.
    pub metrics: Metrics,
}

/// Consumes the outbound queue of one channel kind and delivers through the connectors.
pub async fn run_outbound(
    bus: Arc<dyn Bus>,
    queue: String,
    outbound: Outbound,
    stop: CancellationToken,
) -> Result<(), RouteError> {
    let mut deliveries = bus.consume(&queue, 1).await?;
    while let Some(delivery) = next_until(&mut deliveries, &stop).await {
        deliver_outbound(delivery, &outbound).await;
    }
    Ok(())
}

/// The store key that marks reply `id` as sent; its value is the channel's message id, or
/// [`SENT_WITHOUT_ID`].
fn sent_key(id: &str) -> String {
    format!("sent:{id}")
}

/// The mark of a sent reply for which the channel gave no message id.
const SENT_WITHOUT_ID: &str = "sent";

/// Prefix of the value a gateway holds in a reply's sent mark while it sends the reply: a copy
/// of the reply arriving meanwhile (at another gateway) waits for the outcome instead of sending
/// it too.
const SENDING_PREFIX: &str = "sending:";

/// How often a copy waiting for another gateway's send looks again.
const SENDING_POLL: Duration = Duration::from_millis(100);

/// How long a claim to send a reply holds, given the sends tried in place: a send times out
/// after 10 s (twice that for a channel that fetches a token first), a wait between tries is
/// at most 30 s. A claim whose holder stopped expires after this; a send that takes longer may
/// go out twice (a waiting copy takes over).
fn sending_claim(attempts: u32) -> Duration {
    Duration::from_secs(50) * attempts.max(1)
}

/// Whether a reply is ours to send, after [`claim_sending`].
enum SendClaim {
    /// Ours: the claim's value, released if the send fails and overwritten by the sent mark.
    Ours(String),
    /// Sent already (by another gateway, or before a redelivery): the mark.
    SentAlready(String),
    /// The store did not answer: send without a claim (a second copy may be sent too).
    Unknown,
}

/// Claims the sending of reply `id` in its sent mark. While another gateway holds the claim
/// (it is sending a copy of the reply right now), waits for its outcome: the mark (sent already)
/// or the claim gone (its send failed, or it stopped and the claim expired).
async fn claim_sending(store: &dyn Store, id: &str, ttl: Duration) -> SendClaim {
    let key = sent_key(id);
    let claim = format!("{SENDING_PREFIX}{}", switchyard_core::envelope::new_id());
    loop {
        match store.claim_key(&key, &claim, ttl).await {
            Ok(None) => return SendClaim::Ours(claim),
            Ok(Some(held)) if held.starts_with(SENDING_PREFIX) => {
                tracing::debug!(id, "another gateway is sending this reply; waiting for it");
                tokio::time::sleep(SENDING_POLL).await;
            }
            Ok(Some(mark)) => return SendClaim::SentAlready(mark),
            Err(e) => {
                tracing::warn!(error = %e, id, "cannot tell whether this reply was sent; sending it");
                return SendClaim::Unknown;
            }
        }
    }
}

/// Publishes `message.sent` for a reply the channel took (id = the envelope id, so announcing it
/// again for a second copy gives consumers the same event).
async fn announce_sent(outbox: &Outbox, envelope: &Envelope, channel_message_id: Option<&str>) {
    if let Err(e) = outbox
        .emit(|b| {
            b.message_sent(envelope, channel_message_id);
        })
        .await
    {
        tracing::warn!(error = %e, id = %envelope.id, "reply sent, but message.sent not published");
    }
}

async fn deliver_outbound(delivery: Delivery, outbound: &Outbound) {
    let Outbound {
        attempts,
        delivery_limit,
        registry,
        outbox,
        store,
        sent_ttl,
        metrics,
    } = outbound;
    let (attempts, delivery_limit) = (*attempts, *delivery_limit);
    let envelope: Envelope = match serde_json::from_slice(&delivery.message.body) {
        Ok(e) => e,
        Err(e) => {
            let reason = format!("undecodable outbound envelope: {e}");
            if let Err(e) = delivery.reject(&reason).await {
                tracing::error!(error = %e, "could not dead-letter a message");
            }
            return;
        }
    };
    let channel_id = envelope.channel.id.clone();
    let count = |outcome: &str| {
        metrics
            .outbound
            .with_label_values(&[channel_id.as_str(), outcome])
            .inc();
    };
    let Some(channel) = registry.get(&channel_id) else {
        count("rejected");
        let reason = format!("channel `{channel_id}` is not configured here");
        if let Err(e) = outbox
            .emit(|b| {
                b.message_failed(&envelope, "unknown_channel", &reason);
            })
            .await
        {
            tracing::warn!(error = %e, "could not publish message.failed");
        }
        let _ = delivery.reject(&reason).await;
        return;
    };
    let claim = match claim_sending(&**store, &envelope.id, sending_claim(attempts)).await {
        SendClaim::SentAlready(marker) => {
            // Sent already: this copy is a redelivery, or a batch republished after its
            // confirm was lost. A redelivery may follow a stop between the mark and
            // `message.sent`, so that is announced again (same id: consumers drop the copy).
            count("duplicate");
            tracing::info!(id = %envelope.id, "reply sent already; dropping this copy");
            let channel_message_id = (marker != SENT_WITHOUT_ID).then_some(marker.as_str());
            announce_sent(outbox, &envelope, channel_message_id).await;
            let _ = delivery.ack().await;
            return;
        }
        SendClaim::Ours(claim) => Some(claim),
        SendClaim::Unknown => None,
    };
    // A send that failed gives its claim up, so that a later copy (this one, redelivered) can
    // send.
    let give_up_claim = async || {
        if let Some(claim) = &claim
            && let Err(e) = store.release_key(&sent_key(&envelope.id), claim).await
        {
            tracing::warn!(error = %e, id = %envelope.id, "could not give up the claim to send a reply; a copy waits until it expires");
        }
    };
    let mut attempt = 0;
    loop {
        match channel.send(&envelope).await {
            Ok(receipt) => {
                count("sent");
                let marker = receipt
                    .channel_message_id
                    .as_deref()
                    .unwrap_or(SENT_WITHOUT_ID);
                if let Err(e) = store
                    .set_key(&sent_key(&envelope.id), marker, *sent_ttl)
                    .await
                {
                    tracing::warn!(error = %e, id = %envelope.id, "reply sent, but not marked as sent; a second copy would be sent again");
                }
                announce_sent(outbox, &envelope, receipt.channel_message_id.as_deref()).await;
                let _ = delivery.ack().await;
                return;
            }
            Err(e) if e.is_retryable() && attempt + 1 < attempts => {
                let wait = match &e {
                    ConnectorError::RateLimited {
                        retry_after: Some(d),
                    } => (*d).min(Duration::from_secs(30)),
                    _ => backoff(attempt),
                };
                tracing::warn!(error = %e, id = %envelope.id, attempt, "send failed; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) if e.is_retryable() && delivery.redeliveries < delivery_limit => {
                count(e.outcome());
                give_up_claim().await;
                let _ = delivery.retry(&e.to_string()).await;
                return;
            }
            Err(e) => {
                let outcome = if e.is_retryable() {
                    "dead_lettered"
                } else {
                    e.outcome()
                };
                count(outcome);
                let code = match &e {
                    ConnectorError::Rejected { code, .. } => code.clone(),
                    other => other.code().to_owned(),
                };
                tracing::warn!(error = %e, id = %envelope.id, "reply not delivered");
                give_up_claim().await;
                if let Err(err) = outbox
                    .emit(|b| {
                        b.message_failed(&envelope, &code, &e.to_string());
                    })
                    .await
                {
                    tracing::warn!(error = %err, "could not publish message.failed");
                }
                let _ = delivery.reject(&e.to_string()).await;
                return;
            }
        }
    }
}

/// Tells each channel about status changes of its conversations
/// ([`switchyard_connectors::Channel::conversation_changed`]), from the event stream. Run only
/// where a configured channel [follows conversations](switchyard_connectors::Channel::follows_conversations).
pub async fn run_channel_sync(
    bus: Arc<dyn Bus>,
    registry: Registry,
    stop: CancellationToken,
) -> Result<(), RouteError> {
    let queue = bus
        .declare_subscriber(
            switchyard_core::bus::topology::EVENTS_EXCHANGE,
            &["conversation.*"],
        )
        .await?;
    let mut deliveries = bus.consume(&queue, 64).await?;
    while let Some(delivery) = next_until(&mut deliveries, &stop).await {
        let conversation =
            serde_json::from_slice::<switchyard_core::event::CloudEvent>(&delivery.message.body)
                .ok()
                // An accepted offer changes no status: the channel has nothing to follow.
                .filter(|e| {
                    e.known_type() != Some(switchyard_core::event::EventType::ConversationAccepted)
                })
                .and_then(|e| {
                    serde_json::from_value::<switchyard_core::model::Conversation>(
                        e.data.get("conversation").cloned().unwrap_or_default(),
                    )
                    .ok()
                });
        if let Some(conversation) = conversation
            && let Some(channel) = registry.get(&conversation.channel.id)
            && let Err(e) = channel.conversation_changed(&conversation).await
        {
            tracing::warn!(error = %e, conversation = %conversation.id, "channel could not follow a conversation change");
        }
        let _ = delivery.ack().await;
    }
    Ok(())
}
