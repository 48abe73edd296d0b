//! Queue positions for web visitors: the visitor WebSocket's `queue` frame.
//!
//! One task per gateway process ([`QueuePositions::run`]) follows the visitor sockets of every
//! web channel whose `queue_position_secs` is not 0, and only while one of them is connected.
//! At each of a channel's ticks it reads the queue of every configured pool once
//! ([`Store::queue`], head first), and writes `{"type":"queue","position":N}` to each socket
//! whose visitor's open conversation waits in one, when N is not what the socket was shown;
//! `{"type":"queue","position":null}` when the conversation no longer waits after a position
//! was shown. Positions are ephemeral: a frame a full socket buffer refuses is tried again at
//! the next tick, and a socket that reconnects gets the current position at its first tick.
//!
//! A socket's conversation is looked up (the customer of the visitor's key, then their open
//! conversation, as for the welcome's history) lazily, at most once per tick:
//! - when the socket opens;
//! - when the visitor's message or identify was accepted
//!   ([`VisitorSessions::conversation_may_have_changed`]), and again at each of the next
//!   [`EAGER_LOOKUPS`] ticks while none is found (the router records the message shortly after
//!   the visitor's `ack`);
//! - at the tick after the conversation left the queue, to learn whether an agent has it;
//! - every [`RECHECK_TICKS`] ticks while the visitor has no open conversation, or one that
//!   neither waits nor is known to be assigned (a bot's).
//!
//! A waiting or assigned conversation costs no read: the queues tell when it waits again. The
//! pools are not read at all while no socket has a conversation, and a tick looks up at most
//! [`LOOKUPS_PER_TICK`] sockets (the others wait for the next ticks).
//!
//! [`VisitorSessions::conversation_may_have_changed`]:
//! switchyard_connectors::web::VisitorSessions::conversation_may_have_changed

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use switchyard_connectors::Connector;
use switchyard_connectors::web::{VisitorSocket, WebConnector};
use switchyard_core::identity::IdentityKey;
use switchyard_core::metrics::Metrics;
use switchyard_core::model::ConversationStatus;
use switchyard_core::protocol::VisitorEvent;
use switchyard_core::store::{Store, StoreError};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::queue_flow::QueueFlow;
use super::visitor_history::visitor_open_conversation;

/// Lookups a socket gets at its next ticks after the visitor wrote (or identified), while none
/// finds an open conversation.
const EAGER_LOOKUPS: u8 = 3;
/// Ticks between lookups of a socket whose visitor has no open conversation, or one that
/// neither waits nor is known to be assigned; also after a lookup failed.
const RECHECK_TICKS: u64 = 10;
/// The most sockets looked up in one tick, over every channel.
const LOOKUPS_PER_TICK: usize = 500;
/// Lookups in flight at once.
const LOOKUP_CONCURRENCY: usize = 16;

/// A store read the queue positions went on without.
#[derive(Debug, thiserror::Error)]
pub enum PositionReadError {
    /// A pool's queue could not be read: no socket is told anything at this tick.
    #[error("reading the queue of pool `{pool}`: {source}")]
    Queue {
        /// The pool.
        pool: String,
        /// What the store answered.
        #[source]
        source: StoreError,
    },
    /// A visitor's open conversation could not be looked up: tried again later.
    #[error("looking up the open conversation of `{visitor}`: {source}")]
    Conversation {
        /// The visitor's identity key.
        visitor: IdentityKey,
        /// What the store answered.
        #[source]
        source: StoreError,
    },
}

impl PositionReadError {
    /// The `read` label of `switchyard_visitor_read_failures_total`.
    fn read(&self) -> &'static str {
        match self {
            PositionReadError::Queue { .. } => "queue",
            PositionReadError::Conversation { .. } => "conversation",
        }
    }
}

/// A waiting conversation's place in its pool's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    /// From 1 (the head).
    position: u32,
    /// About how long it still waits ([`QueueFlow::estimated_wait`]), when that can be told.
    estimated_wait_secs: Option<u64>,
}

impl Place {
    /// The frame telling a socket `place` (`None`: no longer waiting).
    fn frame(place: Option<Place>) -> VisitorEvent {
        VisitorEvent::Queue {
            position: place.map(|p| p.position),
            estimated_wait_secs: place.and_then(|p| p.estimated_wait_secs),
        }
    }
}

/// The place of every waiting conversation in its pool's queue.
#[derive(Debug, Default)]
struct QueuePlaces(HashMap<String, Place>);

impl QueuePlaces {
    /// The places in `queues`, each a pool's waiting conversation ids, head first; no wait
    /// estimated.
    #[cfg(test)]
    fn of(queues: impl IntoIterator<Item = Vec<String>>) -> Self {
        let mut places = QueuePlaces::default();
        for queue in queues {
            places.insert_queue(&queue, None);
        }
        places
    }

    /// Adds the places of one pool's `queue` (head first), with the waits `flow` estimates.
    fn insert_queue(&mut self, queue: &[String], flow: Option<&QueueFlow>) {
        for (index, id) in queue.iter().enumerate() {
            let position = u32::try_from(index + 1).unwrap_or(u32::MAX);
            let estimated_wait_secs = flow
                .and_then(|flow| flow.estimated_wait(position))
                .map(|wait| wait.as_secs());
            let place = Place {
                position,
                estimated_wait_secs,
            };
            self.0.insert(id.clone(), place);
        }
    }

    /// The queues of `pools`, each read once at `now`; each read is also taken in by the
    /// pool's flow (`flows`, one per pool, in the same order).
    async fn read(
        store: &dyn Store,
        pools: &[String],
        flows: &mut [QueueFlow],
        now: Instant,
    ) -> Result<Self, PositionReadError> {
        let mut places = QueuePlaces::default();
        for (pool, flow) in pools.iter().zip(flows) {
            let queue = store
                .queue(pool)
                .await
                .map_err(|source| PositionReadError::Queue {
                    pool: pool.clone(),
                    source,
                })?;
            flow.observe(&queue, now);
            places.insert_queue(&queue, Some(flow));
        }
        Ok(places)
    }

    /// The place of `conversation`, if it waits.
    fn place(&self, conversation: &str) -> Option<Place> {
        self.0.get(conversation).copied()
    }
}

/// A visitor's open conversation, as a lookup found it.
#[derive(Debug, Clone, PartialEq)]
struct OpenConversation {
    id: String,
    /// Whether an agent had it then.
    assigned: bool,
}

/// The open conversation of the customer holding `visitor`, if there is one.
async fn open_conversation_of(
    store: &dyn Store,
    visitor: &IdentityKey,
) -> Result<Option<OpenConversation>, StoreError> {
    let conversation = visitor_open_conversation(store, visitor).await?;
    Ok(conversation.map(|c| OpenConversation {
        assigned: c.status == ConversationStatus::Assigned,
        id: c.id,
    }))
}

/// What the task knows of one visitor socket, and what it showed it. Ticks are the channel's.
#[derive(Debug)]
struct SocketWatch {
    /// The visitor's identity key, to look their conversation up.
    visitor: IdentityKey,
    tx: mpsc::Sender<VisitorEvent>,
    /// The visitor's [`VisitorSocket::changes`] when last seen.
    changes: u64,
    /// The visitor's open conversation, as last looked up.
    conversation: Option<String>,
    /// Whether an agent had it when looked up, and it has not been seen waiting since.
    assigned: bool,
    /// The tick at or after which to look the conversation up; `None`: not planned.
    next_lookup: Option<u64>,
    /// Lookups left at the next ticks while none finds a conversation.
    eager_lookups: u8,
    /// The place the socket shows: the last one written, `None` before any or after `null`.
    shown: Option<Place>,
}

impl SocketWatch {
    /// A socket that just opened: looked up at once.
    fn new(visitor: IdentityKey, tx: mpsc::Sender<VisitorEvent>, changes: u64) -> Self {
        SocketWatch {
            visitor,
            tx,
            changes,
            conversation: None,
            assigned: false,
            next_lookup: Some(0),
            eager_lookups: 0,
            shown: None,
        }
    }

    /// Notes the visitor's `changes` at `tick`: when they moved, looks up at once, and eagerly
    /// at the next ticks if nothing is found.
    fn note_changes(&mut self, changes: u64, tick: u64) {
        if changes != self.changes {
            self.changes = changes;
            self.eager_lookups = EAGER_LOOKUPS;
            self.plan_lookup(tick);
        }
    }

    /// Whether the conversation is to be looked up at `tick`.
    fn lookup_due(&self, tick: u64) -> bool {
        self.next_lookup.is_some_and(|at| at <= tick)
    }

    /// Takes in what the lookup at `tick` found.
    fn looked_up(&mut self, found: Option<OpenConversation>, tick: u64) {
        self.next_lookup = None;
        match found {
            Some(open) => {
                self.conversation = Some(open.id);
                self.assigned = open.assigned;
                self.eager_lookups = 0;
            }
            None => {
                self.conversation = None;
                self.assigned = false;
                self.retry(tick);
            }
        }
    }

    /// The lookup at `tick` failed: what was known stays, and it is tried again.
    fn lookup_failed(&mut self, tick: u64) {
        self.next_lookup = None;
        self.retry(tick);
    }

    /// Plans the next lookup after one at `tick` that found nothing: at the next tick while
    /// eager lookups are left, else after [`RECHECK_TICKS`].
    fn retry(&mut self, tick: u64) {
        let wait = if self.eager_lookups > 0 {
            self.eager_lookups -= 1;
            1
        } else {
            RECHECK_TICKS
        };
        self.plan_lookup(tick + wait);
    }

    /// Looks up at `at`, or earlier if planned so.
    fn plan_lookup(&mut self, at: u64) {
        self.next_lookup = Some(self.next_lookup.map_or(at, |planned| planned.min(at)));
    }

    /// What to tell the socket at `tick`, the queues standing as `places`: `Some(place)` when
    /// it differs from what the socket shows (`Some(None)`: no longer waiting). Plans the
    /// lookups the conversation's whereabouts call for. Call [`SocketWatch::shown`] once the
    /// frame is written.
    fn step(&mut self, places: &QueuePlaces, tick: u64) -> Option<Option<Place>> {
        let place = self.conversation.as_deref().and_then(|id| places.place(id));
        if place.is_some() {
            self.assigned = false;
        } else if self.shown.is_some() {
            // It left the queue: learn at the next tick whether an agent has it.
            self.plan_lookup(tick + 1);
        } else if !self.assigned && self.next_lookup.is_none() {
            self.plan_lookup(tick + RECHECK_TICKS);
        }
        (place != self.shown).then_some(place)
    }

    /// Notes that the socket was written `place`.
    fn shown(&mut self, place: Option<Place>) {
        self.shown = place;
    }
}

/// The sockets of one web channel the task follows.
struct WatchedChannel {
    web: Arc<WebConnector>,
    /// Base ticks per tick of this channel.
    stride: u64,
    /// By session number.
    sockets: HashMap<u64, SocketWatch>,
}

impl WatchedChannel {
    /// Follows the channel's open `sockets` at its `tick`: forgets the closed ones, starts on
    /// the new ones, notes the visitors' changes.
    fn follow(&mut self, sockets: Vec<VisitorSocket>, tick: u64) {
        let open: HashSet<u64> = sockets.iter().map(|s| s.session).collect();
        self.sockets.retain(|session, _| open.contains(session));
        for socket in sockets {
            match self.sockets.entry(socket.session) {
                Entry::Occupied(mut watched) => {
                    watched.get_mut().note_changes(socket.changes, tick)
                }
                Entry::Vacant(new) => match self.web.visitor_key(&socket.visitor_id) {
                    Ok(key) => {
                        new.insert(SocketWatch::new(key, socket.tx, socket.changes));
                    }
                    Err(e) => tracing::debug!(
                        channel = %self.web.channel().id,
                        error = %e,
                        "a visitor socket without an identity key gets no queue position"
                    ),
                },
            }
        }
    }
}

/// The failed reads of one tick: each counted, logged once.
#[derive(Default)]
struct FailedReads {
    count: usize,
    first: Option<PositionReadError>,
}

impl FailedReads {
    fn note(&mut self, metrics: &Metrics, error: PositionReadError) {
        metrics
            .visitor_read_failures
            .with_label_values(&[error.read()])
            .inc();
        self.count += 1;
        self.first.get_or_insert(error);
    }

    fn log(self) {
        if let Some(first) = self.first {
            tracing::warn!(
                failed = self.count,
                error = %first,
                "queue positions: store reads failed; visitors keep the position they were shown"
            );
        }
    }
}

/// The task that tells web visitors their place in the queue (see the module's documentation).
pub struct QueuePositions {
    channels: Vec<WatchedChannel>,
    /// Every configured pool.
    pools: Vec<String>,
    /// How fast each of `pools` moves, in the same order.
    flows: Vec<QueueFlow>,
    store: Arc<dyn Store>,
    metrics: Metrics,
    /// How often the task wakes: the greatest common divisor of the channels' periods.
    base: Duration,
}

impl QueuePositions {
    /// Follows those of `webs` that tell queue positions, reading the queues of `pools`;
    /// `None` when none of them does.
    pub fn new(
        webs: impl IntoIterator<Item = Arc<WebConnector>>,
        pools: Vec<String>,
        store: Arc<dyn Store>,
        metrics: Metrics,
    ) -> Option<Self> {
        let periods: Vec<(Arc<WebConnector>, u64)> = webs
            .into_iter()
            .filter_map(|web| {
                let secs = web.queue_position_every()?.as_secs();
                (secs > 0).then_some((web, secs))
            })
            .collect();
        let base = periods.iter().map(|(_, secs)| *secs).reduce(gcd)?;
        let channels = periods
            .into_iter()
            .map(|(web, secs)| WatchedChannel {
                web,
                stride: secs / base,
                sockets: HashMap::new(),
            })
            .collect();
        Some(QueuePositions {
            channels,
            flows: pools.iter().map(|_| QueueFlow::default()).collect(),
            pools,
            store,
            metrics,
            base: Duration::from_secs(base),
        })
    }

    /// Runs until `stop` is cancelled, idle while no visitor of these channels is connected.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.base);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut tick: u64 = 0;
        loop {
            if !self.any_connected() {
                for channel in &mut self.channels {
                    channel.sockets.clear();
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.until_any_connected() => {}
                }
                ticks.reset_immediately();
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            self.tick(tick).await;
            tick += 1;
        }
    }

    fn any_connected(&self) -> bool {
        self.channels
            .iter()
            .any(|c| c.web.sessions().connected() > 0)
    }

    async fn until_any_connected(&self) {
        if self.channels.is_empty() {
            return std::future::pending().await;
        }
        let waits = self
            .channels
            .iter()
            .map(|c| Box::pin(c.web.sessions().until_connected()));
        futures_util::future::select_all(waits).await;
    }

    /// One base tick: the channels due at it follow their sockets, look up the conversations
    /// due, and tell each socket its position when it changed.
    async fn tick(&mut self, tick: u64) {
        let due: Vec<usize> = (0..self.channels.len())
            .filter(|&i| tick.is_multiple_of(self.channels[i].stride))
            .collect();
        let mut lookups = Vec::new();
        for &i in &due {
            let channel = &mut self.channels[i];
            let channel_tick = tick / channel.stride;
            channel.follow(channel.web.sessions().sockets(), channel_tick);
            for (session, watch) in &channel.sockets {
                if watch.lookup_due(channel_tick) {
                    lookups.push((i, *session, watch.visitor.clone()));
                }
            }
        }
        lookups.truncate(LOOKUPS_PER_TICK);
        let store = &self.store;
        let found: Vec<_> = futures_util::stream::iter(lookups)
            .map(|(i, session, visitor)| async move {
                let found = open_conversation_of(&**store, &visitor)
                    .await
                    .map_err(|source| PositionReadError::Conversation { visitor, source });
                (i, session, found)
            })
            .buffer_unordered(LOOKUP_CONCURRENCY)
            .collect()
            .await;
        let mut failed = FailedReads::default();
        for (i, session, result) in found {
            let channel = &mut self.channels[i];
            let channel_tick = tick / channel.stride;
            let Some(watch) = channel.sockets.get_mut(&session) else {
                continue;
            };
            match result {
                Ok(open) => watch.looked_up(open, channel_tick),
                Err(e) => {
                    watch.lookup_failed(channel_tick);
                    failed.note(&self.metrics, e);
                }
            }
        }
        let following = due.iter().any(|&i| {
            self.channels[i]
                .sockets
                .values()
                .any(|watch| watch.conversation.is_some())
        });
        let places = if following {
            let now = Instant::now();
            match QueuePlaces::read(&*self.store, &self.pools, &mut self.flows, now).await {
                Ok(places) => places,
                Err(e) => {
                    failed.note(&self.metrics, e);
                    failed.log();
                    return;
                }
            }
        } else {
            QueuePlaces::default()
        };
        failed.log();
        for &i in &due {
            let channel = &mut self.channels[i];
            let channel_tick = tick / channel.stride;
            for watch in channel.sockets.values_mut() {
                let Some(place) = watch.step(&places, channel_tick) else {
                    continue;
                };
                // A full buffer refuses it: tried again at the next tick.
                if watch.tx.try_send(Place::frame(place)).is_ok() {
                    watch.shown(place);
                    self.metrics.visitor_queue_frames.inc();
                }
            }
        }
    }
}

/// The greatest common divisor of `a` and `b`.
fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(queues: &[&[&str]]) -> QueuePlaces {
        QueuePlaces::of(
            queues
                .iter()
                .map(|q| q.iter().map(|id| (*id).to_owned()).collect()),
        )
    }

    fn watch() -> (SocketWatch, mpsc::Receiver<VisitorEvent>) {
        let (tx, rx) = mpsc::channel(8);
        let key = IdentityKey::new("web_visitor", "web", "v1").unwrap();
        (SocketWatch::new(key, tx, 0), rx)
    }

    fn open(id: &str, assigned: bool) -> Option<OpenConversation> {
        Some(OpenConversation {
            id: id.into(),
            assigned,
        })
    }

    /// Steps `watch` at `tick` and, as the task does, notes what it would write; the position
    /// told, if any.
    fn step(watch: &mut SocketWatch, places: &QueuePlaces, tick: u64) -> Option<Option<u32>> {
        let told = watch.step(places, tick);
        if let Some(place) = told {
            watch.shown(place);
        }
        told.map(|place| place.map(|p| p.position))
    }

    #[test]
    fn places_count_from_the_head_of_each_pool() {
        let places = places(&[&["a", "b", "c"], &[], &["x"]]);
        let position = |id| places.place(id).map(|p| p.position);
        assert_eq!(position("a"), Some(1));
        assert_eq!(position("c"), Some(3));
        assert_eq!(position("x"), Some(1), "each pool counts on its own");
        assert_eq!(position("nowhere"), None);
    }

    #[test]
    fn a_waiting_visitor_is_told_each_change_of_place_once_then_that_it_no_longer_waits() {
        let (mut w, _rx) = watch();
        assert!(w.lookup_due(0), "looked up when the socket opens");
        w.looked_up(open("c1", false), 0);
        assert!(!w.lookup_due(1));

        assert_eq!(step(&mut w, &places(&[&["c0", "c1"]]), 0), Some(Some(2)));
        assert_eq!(
            step(&mut w, &places(&[&["c0", "c1", "c2"]]), 1),
            None,
            "same place"
        );
        assert_eq!(step(&mut w, &places(&[&["c1", "c2"]]), 2), Some(Some(1)));
        assert!(!w.lookup_due(3), "a waiting conversation costs no lookup");

        // An agent takes it: no longer waiting, and one lookup learns that an agent has it.
        assert_eq!(step(&mut w, &places(&[&["c2"]]), 3), Some(None));
        assert!(w.lookup_due(4));
        w.looked_up(open("c1", true), 4);
        assert_eq!(step(&mut w, &places(&[&["c2"]]), 4), None, "said once");
        for tick in 5..100 {
            assert_eq!(step(&mut w, &places(&[&[]]), tick), None);
            assert!(
                !w.lookup_due(tick),
                "an assigned conversation costs no lookup"
            );
        }
        // Transferred back to a pool: it waits again, without a lookup.
        assert_eq!(step(&mut w, &places(&[&[], &["c1"]]), 100), Some(Some(1)));
    }

    #[test]
    fn nothing_is_said_to_a_visitor_who_never_waited() {
        let (mut w, _rx) = watch();
        w.looked_up(open("c1", true), 0);
        assert_eq!(step(&mut w, &places(&[&["other"]]), 0), None);
        let (mut idle, _rx) = watch();
        idle.looked_up(None, 0);
        assert_eq!(step(&mut idle, &QueuePlaces::default(), 0), None);
    }

    #[test]
    fn a_visitor_without_a_conversation_is_looked_up_every_few_ticks_and_eagerly_after_writing() {
        let (mut w, _rx) = watch();
        w.looked_up(None, 0);
        let empty = QueuePlaces::default();
        let due: Vec<u64> = (1..=30)
            .filter(|&tick| {
                w.note_changes(0, tick);
                let due = w.lookup_due(tick);
                if due {
                    w.looked_up(None, tick);
                }
                step(&mut w, &empty, tick);
                due
            })
            .collect();
        assert_eq!(due, [RECHECK_TICKS, 2 * RECHECK_TICKS, 3 * RECHECK_TICKS]);

        // The visitor writes at tick 31: looked up at once, then at each of the next ticks
        // until the router has recorded the message.
        w.note_changes(1, 31);
        assert!(w.lookup_due(31));
        w.looked_up(None, 31);
        assert!(w.lookup_due(32));
        w.looked_up(None, 32);
        assert!(w.lookup_due(33));
        w.looked_up(open("c9", false), 33);
        assert_eq!(step(&mut w, &places(&[&["c9"]]), 33), Some(Some(1)));
        // The same count again changes nothing.
        w.note_changes(1, 34);
        assert!(!w.lookup_due(34));
    }

    #[test]
    fn eager_lookups_run_out_into_rechecks() {
        let (mut w, _rx) = watch();
        w.looked_up(None, 0);
        w.note_changes(1, 5);
        let mut due = Vec::new();
        for tick in 5..35 {
            if w.lookup_due(tick) {
                due.push(tick);
                w.looked_up(None, tick);
            }
        }
        let eager = u64::from(EAGER_LOOKUPS);
        assert_eq!(
            due,
            [5, 6, 7, 8, 8 + RECHECK_TICKS, 8 + 2 * RECHECK_TICKS],
            "1 + {eager} at once, then every {RECHECK_TICKS}"
        );
    }

    #[test]
    fn a_bot_conversation_is_rechecked_slowly_and_a_failed_lookup_retried() {
        let (mut w, _rx) = watch();
        w.looked_up(open("c1", false), 0);
        assert_eq!(step(&mut w, &QueuePlaces::default(), 0), None);
        assert!(!w.lookup_due(RECHECK_TICKS - 1));
        assert!(w.lookup_due(RECHECK_TICKS), "neither waiting nor assigned");
        w.lookup_failed(RECHECK_TICKS);
        assert_eq!(w.conversation.as_deref(), Some("c1"), "kept");
        assert!(w.lookup_due(2 * RECHECK_TICKS));
        // The bot hands off: the queue shows it without a lookup.
        assert_eq!(
            step(&mut w, &places(&[&["c0", "c1"]]), 2 * RECHECK_TICKS),
            Some(Some(2))
        );
    }

    #[test]
    fn a_conversation_closed_while_waiting_clears_the_position_and_is_looked_up() {
        let (mut w, _rx) = watch();
        w.looked_up(open("c1", false), 0);
        assert_eq!(step(&mut w, &places(&[&["c1"]]), 0), Some(Some(1)));
        assert_eq!(step(&mut w, &places(&[&[]]), 1), Some(None));
        assert!(w.lookup_due(2));
        w.looked_up(None, 2);
        assert_eq!(w.conversation, None);
        assert_eq!(step(&mut w, &places(&[&["c2"]]), 2), None);
        assert!(w.lookup_due(2 + RECHECK_TICKS));
    }

    #[test]
    fn an_unwritten_frame_is_tried_again() {
        let (mut w, _rx) = watch();
        w.looked_up(open("c1", false), 0);
        let waiting = places(&[&["c1"]]);
        let first = w.step(&waiting, 0);
        assert_eq!(first.flatten().map(|p| p.position), Some(1));
        // Not noted as shown (the socket's buffer was full): said again at the next tick.
        assert_eq!(w.step(&waiting, 1), first);
    }

    #[test]
    fn a_changed_estimate_is_told_with_the_same_place() {
        let queue = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect::<Vec<_>>();
        let t0 = Instant::now();
        let mut flow = QueueFlow::default();
        flow.observe(&queue(&["x1", "x2", "x3", "c1"]), t0);
        // 3 left in 60 s: 20 s a place, told as a minute.
        flow.observe(&queue(&["c1"]), t0 + Duration::from_secs(60));
        let places_now = |flow: &QueueFlow| {
            let mut places = QueuePlaces::default();
            places.insert_queue(&queue(&["c1"]), Some(flow));
            places
        };
        let (mut w, _rx) = watch();
        w.looked_up(open("c1", false), 0);
        let told = w.step(&places_now(&flow), 0).flatten();
        let place = |secs| Place {
            position: 1,
            estimated_wait_secs: Some(secs),
        };
        assert_eq!(told, Some(place(60)));
        assert_eq!(
            serde_json::to_value(Place::frame(told)).unwrap(),
            serde_json::json!({"type": "queue", "position": 1, "estimated_wait_secs": 60})
        );
        w.shown(told);
        assert_eq!(w.step(&places_now(&flow), 1), None, "unchanged");
        // Nobody leaves for 3 minutes: the same place, a longer wait (80 s a place).
        for secs in [120, 180, 240] {
            flow.observe(&queue(&["c1"]), t0 + Duration::from_secs(secs));
        }
        assert_eq!(w.step(&places_now(&flow), 2), Some(Some(place(120))));
        assert_eq!(
            serde_json::to_value(Place::frame(None)).unwrap(),
            serde_json::json!({"type": "queue", "position": null}),
            "no estimate once it no longer waits"
        );
    }

    mod over_a_store {
        use std::collections::BTreeMap;

        use switchyard_connectors::ConnectorContext;
        use switchyard_connectors::web::WebInbound;
        use switchyard_core::config::ChannelSettings;
        use switchyard_core::envelope::Content;
        use switchyard_core::model::AgentStatus;
        use switchyard_core::protocol::VisitorRequest;
        use switchyard_core::store::embedded::EmbeddedStore;
        use switchyard_core::store::{AgentUpdate, Placement, ResolveRequest};

        use super::*;

        fn web(store: &Arc<dyn Store>, every_secs: u64) -> Arc<WebConnector> {
            let mut options = BTreeMap::new();
            options.insert("queue_position_secs".to_owned(), every_secs.into());
            let settings = ChannelSettings {
                id: "web".into(),
                kind: "web".into(),
                pool: "default".into(),
                api_base: None,
                options,
            };
            let ctx = ConnectorContext::new(Arc::clone(store));
            Arc::new(WebConnector::new(&settings, &ctx).unwrap())
        }

        /// Records a message of `visitor` as routing does, opening a queued conversation.
        async fn visitor_writes(store: &Arc<dyn Store>, web: &WebConnector, visitor: &str) {
            let now = chrono::Utc::now();
            let inbound = WebInbound {
                visitor_id: visitor.into(),
                request: VisitorRequest::Message {
                    client_id: "c-1".into(),
                    content: Content::Text {
                        text: "hello".into(),
                    },
                },
            };
            let mut envelope = web.normalize(inbound, now).unwrap().remove(0);
            let resolved = store
                .resolve_customer(ResolveRequest::of_sender(&envelope, false, now))
                .await
                .unwrap();
            envelope.customer_id = Some(resolved.customer.id);
            store
                .record_inbound(&envelope, &Placement::queued("default"), now)
                .await
                .unwrap();
        }

        fn told(rx: &mut mpsc::Receiver<VisitorEvent>) -> Vec<Option<u32>> {
            std::iter::from_fn(|| rx.try_recv().ok())
                .map(|event| match event {
                    VisitorEvent::Queue { position, .. } => position,
                    other => panic!("not a queue frame: {other:?}"),
                })
                .collect()
        }

        #[tokio::test]
        async fn a_tick_tells_each_socket_whose_place_changed() {
            let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
            let web = web(&store, 1);
            let off = self::web(&store, 0);
            let metrics = Metrics::new().unwrap();
            let mut positions = QueuePositions::new(
                [Arc::clone(&web), off],
                vec!["default".into()],
                Arc::clone(&store),
                metrics.clone(),
            )
            .expect("one channel tells positions");
            assert_eq!(positions.channels.len(), 1, "not the channel that is off");

            let (tx_a, mut a) = mpsc::channel(8);
            let (tx_b, mut b) = mpsc::channel(8);
            let _a = web.sessions().register("va", tx_a);
            let _b = web.sessions().register("vb", tx_b);
            positions.tick(0).await;
            assert!(
                told(&mut a).is_empty() && told(&mut b).is_empty(),
                "nobody waits"
            );

            visitor_writes(&store, &web, "va").await;
            visitor_writes(&store, &web, "vb").await;
            web.sessions().conversation_may_have_changed("va");
            web.sessions().conversation_may_have_changed("vb");
            positions.tick(1).await;
            assert_eq!(told(&mut a), [Some(1)]);
            assert_eq!(told(&mut b), [Some(2)]);
            positions.tick(2).await;
            assert!(
                told(&mut a).is_empty() && told(&mut b).is_empty(),
                "no change"
            );

            let now = chrono::Utc::now();
            let agent = AgentUpdate {
                id: "w1".into(),
                pools: Some(vec!["default".into()]),
                capacity: Some(1),
                status: Some(AgentStatus::Online),
                ..AgentUpdate::default()
            };
            store.upsert_agent(agent, now).await.unwrap();
            store.assign_queued("default", now).await.unwrap();
            positions.tick(3).await;
            assert_eq!(told(&mut a), [None]);
            assert_eq!(told(&mut b), [Some(1)]);
            assert_eq!(metrics.visitor_queue_frames.get(), 4);
            assert_eq!(
                metrics
                    .visitor_read_failures
                    .with_label_values(&["queue"])
                    .get(),
                0
            );
        }
    }

    #[test]
    fn channels_tick_at_the_common_divisor_of_their_periods() {
        assert_eq!(gcd(3, 3), 3);
        assert_eq!(gcd(2, 3), 1);
        assert_eq!(gcd(4, 6), 2);
        assert_eq!(gcd(5, 0), 5);
    }
}
