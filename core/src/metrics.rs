//! Prometheus metrics: one registry per process (no globals, so tests are isolated), fixed
//! low-cardinality labels (channel, outcome, pool) and never customer or message ids.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Outcome label of `switchyard_inbound_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundOutcome {
    /// Published to the bus.
    Accepted,
    /// A retry of a message already accepted.
    Duplicate,
    /// Signature or replay check failed.
    BadSignature,
    /// The body could not be read.
    Malformed,
    /// The body was larger than allowed.
    TooLarge,
    /// Valid but of a type that is not routed.
    Ignored,
    /// The bus could not take it; the channel will retry.
    Transient,
}

impl InboundOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            InboundOutcome::Accepted => "accepted",
            InboundOutcome::Duplicate => "duplicate",
            InboundOutcome::BadSignature => "bad_signature",
            InboundOutcome::Malformed => "malformed",
            InboundOutcome::TooLarge => "too_large",
            InboundOutcome::Ignored => "ignored",
            InboundOutcome::Transient => "transient",
        }
    }
}

/// Every metric Switchyard exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Inbound messages by channel id and outcome.
    pub inbound: IntCounterVec,
    /// Outbound messages by channel id and outcome (`sent`, `rejected`, `rate_limited`,
    /// `transient`, `dead_lettered`).
    pub outbound: IntCounterVec,
    /// Tries to send an event to a webhook, by webhook id and outcome: `delivered`; `transient`
    /// or `rate_limited` (tried again); `rejected` (refused, dead-lettered).
    pub webhooks: IntCounterVec,
    /// Messages the router handled, by outcome (`routed`, `duplicate`, `retried`, `dead_lettered`).
    pub routed: IntCounterVec,
    /// Conversations opened, by pool and by the routing rule that chose it (empty when the
    /// channel's pool applied).
    pub conversations_opened: IntCounterVec,
    /// Conversations handed off from a silent bot to its pool's queue, by pool
    /// (`bot_timeout_secs`).
    pub bot_timeouts: IntCounterVec,
    /// Conversations transferred, by who asked (`bot`, `agent`, `api`: no agent named), where
    /// they went (`pool`, `agent`, `bot`), the pool they are in afterwards, and whether a
    /// hand-over context went with them (`handover` `true`/`false`).
    pub transfers: IntCounterVec,
    /// Parts of inbound messages replaced by redaction before the bus, by channel id and rule
    /// (a detector's or a pattern's name).
    pub redactions: IntCounterVec,
    /// Queued or assigned conversations closed after the pool's `close_idle_secs`, by pool.
    pub idle_closes: IntCounterVec,
    /// Automatic replies outside a pool's business hours, by pool and outcome (`sent`;
    /// `refused` by the channel's rules; `failed`: not recorded or not published).
    pub auto_replies: IntCounterVec,
    /// Answers to offers of conversations to agents, by pool and outcome (`accepted`,
    /// `declined`, `expired`).
    pub offers: IntCounterVec,
    /// Conversations moved on after waiting a pool's `[pools.overflow] after_secs` in its
    /// queue, by that pool and the pool they moved to.
    pub queue_overflows: IntCounterVec,
    /// Conversations taken back from an agent who left the customer unanswered for the pool's
    /// `answer_timeout_secs`, by pool.
    pub unanswered: IntCounterVec,
    /// Dead letters an operator replayed or discarded, by the queue they came from (`unknown`
    /// when they do not say) and action (`replayed`, `discarded`).
    pub dead_letters: IntCounterVec,
    /// Messages waiting in the dead-letter queue (`switchyard.dead`), sampled every 5 s.
    pub dead_letters_waiting: IntGauge,
    /// Closed conversations the retention sweep went through (deleted, or kept because a merge
    /// closed them).
    pub conversations_swept: IntCounter,
    /// Customers erased, by reason (`request`, `retention`).
    pub customers_erased: IntCounterVec,
    /// Seconds from ingress to the conversation's assignment, by pool.
    pub ingress_to_assignment: HistogramVec,
    /// Seconds from HTTP request to bus confirm, by channel kind.
    pub ingress_publish: HistogramVec,
    /// Rejected REST/agent requests by error code.
    pub api_errors: IntCounterVec,
    /// Conversations waiting per pool (sampled every few seconds).
    pub queue_depth: IntGaugeVec,
    /// Seconds the conversation waiting longest at the front of a pool's queues has waited
    /// (sampled with the depth; 0 when nothing waits).
    pub queue_oldest_wait: GaugeVec,
    /// Whether each pool with business hours is open (1) or closed (0), set when `/metrics` is
    /// scraped.
    pub pool_open: IntGaugeVec,
    /// Open agent and visitor WebSocket sessions, by kind.
    pub websocket_sessions: IntGaugeVec,
    /// Reads of the store for visitor WebSocket sessions that failed and that the sessions went
    /// on without, by what was read: at a session's start, `history` (the welcome's history)
    /// and `mailbox` (the waiting replies); for queue positions, `queue` (a pool's queue) and
    /// `conversation` (a visitor's open conversation).
    pub visitor_read_failures: IntCounterVec,
    /// `queue` frames written to visitor WebSocket sessions (a position, or `null` once the
    /// conversation no longer waits).
    pub visitor_queue_frames: IntCounter,
    /// Batches of the outbox, by outcome (`deferred`: the bus refused it, kept in the store;
    /// `republished`; `lost`: neither published nor kept; `dropped`: undecodable, or refused
    /// by the bus for good).
    pub outbox: IntCounterVec,
    /// Batches in the store's outbox when this process last looked (every 5 s).
    pub outbox_waiting: IntGauge,
    /// Media fetched through the media proxy (`GET /v1/media/...`), by channel kind and outcome
    /// (`ok`, `not_found`, `too_large`, `unsupported`, `rejected`, `rate_limited`,
    /// `transient`, `config`; `aborted`: a body that failed after it had started).
    pub media_fetches: IntCounterVec,
    /// Inbound shard hand-overs between routers, by step (`handed_back`: this router gave a
    /// shard back to its owner; `waited`: this router's consumer waited for another router to
    /// finish handing a shard back before routing).
    pub shard_handovers: IntCounterVec,
}

/// Latency buckets from 100 µs to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("switchyard".into()), None)?;
        let inbound = IntCounterVec::new(
            Opts::new(
                "inbound_messages_total",
                "Inbound messages by channel and outcome",
            ),
            &["channel", "outcome"],
        )?;
        let outbound = IntCounterVec::new(
            Opts::new(
                "outbound_messages_total",
                "Outbound messages by channel and outcome",
            ),
            &["channel", "outcome"],
        )?;
        let webhooks = IntCounterVec::new(
            Opts::new(
                "webhook_deliveries_total",
                "Events sent to webhooks, by webhook and outcome",
            ),
            &["webhook", "outcome"],
        )?;
        let conversations_opened = IntCounterVec::new(
            Opts::new(
                "conversations_opened_total",
                "Conversations opened, by pool and routing rule",
            ),
            &["pool", "rule"],
        )?;
        let bot_timeouts = IntCounterVec::new(
            Opts::new(
                "bot_timeouts_total",
                "Conversations handed off from a silent bot to its pool's queue, by pool",
            ),
            &["pool"],
        )?;
        let transfers = IntCounterVec::new(
            Opts::new(
                "transfers_total",
                "Conversations transferred, by who asked (bot, agent, api), where they went (pool, \
                 agent, bot), their pool afterwards and whether a hand-over context went with them",
            ),
            &["from", "handover", "pool", "to"],
        )?;
        let redactions = IntCounterVec::new(
            Opts::new(
                "redactions_total",
                "Parts of inbound messages replaced by redaction before the bus, by channel and \
                 rule",
            ),
            &["channel", "rule"],
        )?;
        let idle_closes = IntCounterVec::new(
            Opts::new(
                "idle_closes_total",
                "Conversations closed after their pool's close_idle_secs without a change, by pool",
            ),
            &["pool"],
        )?;
        let auto_replies = IntCounterVec::new(
            Opts::new(
                "auto_replies_total",
                "Automatic replies outside a pool's business hours, by pool and outcome",
            ),
            &["pool", "outcome"],
        )?;
        let offers = IntCounterVec::new(
            Opts::new(
                "offers_total",
                "Answers to offers of conversations to agents, by pool and outcome",
            ),
            &["pool", "outcome"],
        )?;
        let unanswered = IntCounterVec::new(
            Opts::new(
                "unanswered_total",
                "Conversations taken back from an agent who left the customer unanswered for \
                 the pool's answer timeout, by pool",
            ),
            &["pool"],
        )?;
        let queue_overflows = IntCounterVec::new(
            Opts::new(
                "queue_overflows_total",
                "Conversations moved on after waiting their pool's overflow time in its queue, \
                 by pool and target pool",
            ),
            &["pool", "to"],
        )?;
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "dead_letters_handled_total",
                "Dead letters an operator replayed or discarded, by original queue and action",
            ),
            &["queue", "action"],
        )?;
        let dead_letters_waiting = IntGauge::with_opts(Opts::new(
            "dead_letters_waiting",
            "Messages waiting in the dead-letter queue, sampled every 5 s",
        ))?;
        let conversations_swept = IntCounter::with_opts(Opts::new(
            "retention_conversations_swept_total",
            "Closed conversations the retention sweep went through",
        ))?;
        let customers_erased = IntCounterVec::new(
            Opts::new(
                "customers_erased_total",
                "Customers erased with their conversations, by reason (request, retention)",
            ),
            &["reason"],
        )?;
        let routed = IntCounterVec::new(
            Opts::new(
                "router_messages_total",
                "Bus messages handled by the router",
            ),
            &["outcome"],
        )?;
        let ingress_to_assignment = HistogramVec::new(
            HistogramOpts::new(
                "ingress_to_assignment_seconds",
                "Time from receiving a conversation's first message to assigning it",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["pool"],
        )?;
        let ingress_publish = HistogramVec::new(
            HistogramOpts::new(
                "ingress_publish_seconds",
                "Time from receiving a channel request to the bus confirm",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["channel_kind"],
        )?;
        let api_errors = IntCounterVec::new(
            Opts::new("api_errors_total", "Requests refused, by error code"),
            &["code"],
        )?;
        let pool_open = IntGaugeVec::new(
            Opts::new(
                "pool_open",
                "Whether a pool with business hours is open (1) or closed (0), by pool",
            ),
            &["pool"],
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "pool_queue_depth",
                "Conversations waiting in a pool's queue",
            ),
            &["pool"],
        )?;
        let queue_oldest_wait = GaugeVec::new(
            Opts::new(
                "pool_queue_oldest_wait_seconds",
                "Seconds the conversation waiting longest at the front of a pool's queues has waited",
            ),
            &["pool"],
        )?;
        let websocket_sessions = IntGaugeVec::new(
            Opts::new("websocket_sessions", "Open WebSocket sessions"),
            &["kind"],
        )?;
        let visitor_read_failures = IntCounterVec::new(
            Opts::new(
                "visitor_read_failures_total",
                "Failed store reads that visitor WebSocket sessions went on without, by read",
            ),
            &["read"],
        )?;
        let visitor_queue_frames = IntCounter::new(
            "visitor_queue_frames_total",
            "Queue position frames written to visitor WebSocket sessions",
        )?;
        let outbox = IntCounterVec::new(
            Opts::new(
                "outbox_batches_total",
                "Batches of events and replies deferred to the store's outbox, by outcome",
            ),
            &["outcome"],
        )?;
        let outbox_waiting = IntGauge::new(
            "outbox_waiting_batches",
            "Batches in the store's outbox when this process last looked",
        )?;
        let shard_handovers = IntCounterVec::new(
            Opts::new(
                "router_shard_handovers_total",
                "Inbound shard hand-overs between routers, by step",
            ),
            &["step"],
        )?;
        let media_fetches = IntCounterVec::new(
            Opts::new(
                "media_fetches_total",
                "Media fetched from channel platforms for agents, by channel kind and outcome",
            ),
            &["kind", "outcome"],
        )?;
        registry.register(Box::new(inbound.clone()))?;
        registry.register(Box::new(outbound.clone()))?;
        registry.register(Box::new(webhooks.clone()))?;
        registry.register(Box::new(routed.clone()))?;
        registry.register(Box::new(conversations_opened.clone()))?;
        registry.register(Box::new(bot_timeouts.clone()))?;
        registry.register(Box::new(transfers.clone()))?;
        registry.register(Box::new(redactions.clone()))?;
        registry.register(Box::new(idle_closes.clone()))?;
        registry.register(Box::new(auto_replies.clone()))?;
        registry.register(Box::new(offers.clone()))?;
        registry.register(Box::new(queue_overflows.clone()))?;
        registry.register(Box::new(unanswered.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(dead_letters_waiting.clone()))?;
        registry.register(Box::new(conversations_swept.clone()))?;
        registry.register(Box::new(customers_erased.clone()))?;
        registry.register(Box::new(ingress_to_assignment.clone()))?;
        registry.register(Box::new(ingress_publish.clone()))?;
        registry.register(Box::new(api_errors.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(queue_oldest_wait.clone()))?;
        registry.register(Box::new(pool_open.clone()))?;
        registry.register(Box::new(websocket_sessions.clone()))?;
        registry.register(Box::new(visitor_read_failures.clone()))?;
        registry.register(Box::new(visitor_queue_frames.clone()))?;
        registry.register(Box::new(outbox.clone()))?;
        registry.register(Box::new(outbox_waiting.clone()))?;
        registry.register(Box::new(shard_handovers.clone()))?;
        registry.register(Box::new(media_fetches.clone()))?;
        Ok(Metrics {
            registry,
            inbound,
            outbound,
            webhooks,
            routed,
            conversations_opened,
            bot_timeouts,
            transfers,
            redactions,
            idle_closes,
            auto_replies,
            offers,
            queue_overflows,
            unanswered,
            dead_letters,
            dead_letters_waiting,
            conversations_swept,
            customers_erased,
            ingress_to_assignment,
            ingress_publish,
            api_errors,
            queue_depth,
            queue_oldest_wait,
            pool_open,
            websocket_sessions,
            visitor_read_failures,
            visitor_queue_frames,
            outbox,
            outbox_waiting,
            media_fetches,
            shard_handovers,
        })
    }

    /// Counts one inbound message.
    pub fn count_inbound(&self, channel: &str, outcome: InboundOutcome) {
        self.inbound
            .with_label_values(&[channel, outcome.as_str()])
            .inc();
    }

    /// The current value of an inbound counter (for tests and the bench).
    pub fn inbound_count(&self, channel: &str, outcome: InboundOutcome) -> u64 {
        self.inbound
            .with_label_values(&[channel, outcome.as_str()])
            .get()
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
