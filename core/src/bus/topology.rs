//! Switchyard's bus topology (DESIGN.md "Bus topology") and the shard function.

use std::time::Duration;

/// Inbound exchange: direct, routing key = shard number.
pub const INBOUND_EXCHANGE: &str = "switchyard.inbound";
/// Outbound exchange: direct, routing key = channel kind.
pub const OUTBOUND_EXCHANGE: &str = "switchyard.outbound";
/// Event exchange: topic, routing key = event type.
pub const EVENTS_EXCHANGE: &str = "switchyard.events";
/// Stream queue bound to the event exchange, for helpdesks that replay from any offset.
pub const EVENTS_STREAM_QUEUE: &str = "switchyard.events.stream";
/// Web channel exchange: topic, routing key = [`web_reply_key`]. A gateway that stored a reply
/// to a web visitor announces it here, and every gateway holding a socket of that visitor pushes
/// it. Internal to Switchyard (not part of the public event stream).
pub const WEB_EXCHANGE: &str = "switchyard.web";
/// Bot exchange: topic, routing key = [`bot_event_key`]. The router publishes here a copy of
/// each event a bot is sent (of the conversations it holds), so a bot's queue receives only
/// those, not every conversation's. Internal to Switchyard (not part of the public event stream).
pub const BOTS_EXCHANGE: &str = "switchyard.bots";
/// Dead-letter exchange.
pub const DEAD_LETTER_EXCHANGE: &str = "switchyard.dlx";
/// Queue that holds dead-lettered messages.
pub const DEAD_LETTER_QUEUE: &str = "switchyard.dead";

/// Name of inbound shard queue `n`.
pub fn inbound_queue(shard: u16) -> String {
    format!("{INBOUND_EXCHANGE}.{shard}")
}

/// Name of the queue of webhook `id`.
pub fn webhook_queue(id: &str) -> String {
    format!("switchyard.webhooks.{id}")
}

/// Name of the queue of bot `id` (the events it is sent, before its filter).
pub fn bot_queue(id: &str) -> String {
    format!("switchyard.bots.{id}")
}

/// Routing key on [`BOTS_EXCHANGE`] of an event of type `event_type` (`message.received`) for
/// bot `bot_id` (bot ids have no dots).
pub fn bot_event_key(bot_id: &str, event_type: &str) -> String {
    format!("{bot_id}.{event_type}")
}

/// Name of the outbound queue for a channel kind.
pub fn outbound_queue(channel_kind: &str) -> String {
    format!("{OUTBOUND_EXCHANGE}.{channel_kind}")
}

/// Routing key of the reply notifications of web channel `channel_id` on [`WEB_EXCHANGE`].
pub fn web_reply_key(channel_id: &str) -> String {
    format!("reply.{channel_id}")
}

/// The shard (0..shards) of a shard key: FNV-1a 64, stable across processes, versions and
/// languages, so a connector written in another language can compute it too.
pub fn shard_of(shard_key: &str, shards: u16) -> u16 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = shard_key
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    (hash % u64::from(shards.max(1))) as u16
}

/// How an exchange routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routing key must equal the binding key.
    Direct,
    /// AMQP topic matching (`*` one word, `#` zero or more words, `.`-separated).
    Topic,
}

/// What a full queue does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse the publish (the publisher waits and then times out): nothing is lost.
    RejectPublish,
    /// Drop the oldest message (for best-effort fan-out subscribers).
    DropHead,
}

/// An exchange to declare.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Exchange name.
    pub name: String,
    /// Routing behaviour.
    pub kind: ExchangeKind,
}

/// A queue to declare, with its bindings.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// Maximum messages held (ready + unacked).
    pub capacity: usize,
    /// Deliveries after the first before a nacked message is dead-lettered.
    pub delivery_limit: u32,
    /// Dead-letter exchange, if any.
    pub dead_letter_exchange: Option<String>,
    /// Behaviour when full.
    pub overflow: Overflow,
    /// Only one consumer at a time receives (the others stand by): per-key order across
    /// router replicas.
    pub single_active_consumer: bool,
    /// An append-only stream (RabbitMQ stream queue) that consumers read from any offset and
    /// that keeps messages for `stream_max_age` regardless of acks.
    pub stream_max_age: Option<String>,
    /// `(exchange, binding key)` pairs.
    pub bindings: Vec<(String, String)>,
    /// `(exchange, binding key)` pairs an earlier version bound and this one removes when they
    /// are there (a broker keeps bindings across restarts).
    pub stale_bindings: Vec<(String, String)>,
}

/// The whole topology one process needs.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Exchanges.
    pub exchanges: Vec<Exchange>,
    /// Queues with bindings.
    pub queues: Vec<QueueSpec>,
}

/// Tunables of the standard topology.
#[derive(Debug, Clone)]
pub struct TopologyOptions {
    /// Number of inbound shard queues.
    pub shards: u16,
    /// Capacity of each queue.
    pub queue_capacity: usize,
    /// Delivery limit of work queues.
    pub delivery_limit: u32,
    /// Channel kinds that get an outbound queue.
    pub outbound_kinds: Vec<String>,
    /// How long a publish may wait for its confirm.
    pub publish_timeout: Duration,
    /// Keep every event in the stream queue `switchyard.events.stream` for this long
    /// (RabbitMQ duration, e.g. `7D`); `None`: no stream.
    pub events_stream_max_age: Option<String>,
    /// Webhooks, each with a queue of the events it is sent.
    pub webhooks: Vec<WebhookRoute>,
}

/// The events one webhook (or bot) is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRoute {
    /// Its queue ([`webhook_queue`], [`bot_queue`]).
    pub queue: String,
    /// The exchange its queue is bound to: [`EVENTS_EXCHANGE`] for a webhook, [`BOTS_EXCHANGE`]
    /// for a bot.
    pub exchange: String,
    /// Topic patterns on `exchange`: event types for a webhook, [`bot_event_key`]s for a bot.
    pub patterns: Vec<String>,
    /// Bindings of its queue that earlier versions made and this one removes.
    pub stale_bindings: Vec<(String, String)>,
}

impl WebhookRoute {
    /// The queue of webhook `id`, bound to the event types `patterns`.
    pub fn webhook(id: &str, patterns: &[String]) -> Self {
        WebhookRoute {
            queue: webhook_queue(id),
            exchange: EVENTS_EXCHANGE.to_owned(),
            patterns: patterns.to_vec(),
            stale_bindings: Vec::new(),
        }
    }

    /// The queue of bot `id`, bound to its copies of `event_types` on [`BOTS_EXCHANGE`]. Earlier
    /// versions bound bot queues to those types on [`EVENTS_EXCHANGE`] (every conversation's
    /// events, which the sender filtered): those bindings are removed.
    pub fn bot(id: &str, event_types: &[&str]) -> Self {
        WebhookRoute {
            queue: bot_queue(id),
            exchange: BOTS_EXCHANGE.to_owned(),
            patterns: event_types.iter().map(|t| bot_event_key(id, t)).collect(),
            stale_bindings: event_types
                .iter()
                .map(|t| (EVENTS_EXCHANGE.to_owned(), (*t).to_owned()))
                .collect(),
        }
    }
}

impl Topology {
    /// The standard Switchyard topology.
    pub fn standard(opts: &TopologyOptions) -> Topology {
        let work_queue = |name: String, bindings: Vec<(String, String)>, single: bool| QueueSpec {
            name,
            capacity: opts.queue_capacity,
            delivery_limit: opts.delivery_limit,
            dead_letter_exchange: Some(DEAD_LETTER_EXCHANGE.to_owned()),
            overflow: Overflow::RejectPublish,
            single_active_consumer: single,
            stream_max_age: None,
            bindings,
            stale_bindings: Vec::new(),
        };
        let mut queues: Vec<QueueSpec> = (0..opts.shards)
            .map(|shard| {
                work_queue(
                    inbound_queue(shard),
                    vec![(INBOUND_EXCHANGE.to_owned(), shard.to_string())],
                    true,
                )
            })
            .collect();
        queues.extend(opts.outbound_kinds.iter().map(|kind| {
            work_queue(
                outbound_queue(kind),
                vec![(OUTBOUND_EXCHANGE.to_owned(), kind.clone())],
                false,
            )
        }));
        // A webhook's queue: its events in order (one consumer at a time). An endpoint that is
        // down for long must not stop the event stream, so a full queue drops its oldest event
        // (dead-lettered, reason `maxlen`) instead of refusing publishes.
        queues.extend(opts.webhooks.iter().map(|hook| {
            QueueSpec {
                overflow: Overflow::DropHead,
                stale_bindings: hook.stale_bindings.clone(),
                ..work_queue(
                    hook.queue.clone(),
                    hook.patterns
                        .iter()
                        .map(|p| (hook.exchange.clone(), p.clone()))
                        .collect(),
                    true,
                )
            }
        }));
        queues.push(QueueSpec {
            name: DEAD_LETTER_QUEUE.to_owned(),
            capacity: usize::MAX,
            delivery_limit: u32::MAX,
            dead_letter_exchange: None,
            overflow: Overflow::DropHead,
            single_active_consumer: false,
            stream_max_age: None,
            bindings: vec![(DEAD_LETTER_EXCHANGE.to_owned(), "#".to_owned())],
            stale_bindings: Vec::new(),
        });
        if let Some(max_age) = &opts.events_stream_max_age {
            queues.push(QueueSpec {
                name: EVENTS_STREAM_QUEUE.to_owned(),
                capacity: usize::MAX,
                delivery_limit: u32::MAX,
                dead_letter_exchange: None,
                overflow: Overflow::DropHead,
                single_active_consumer: false,
                stream_max_age: Some(max_age.clone()),
                bindings: vec![(EVENTS_EXCHANGE.to_owned(), "#".to_owned())],
                stale_bindings: Vec::new(),
            });
        }
        Topology {
            exchanges: vec![
                Exchange {
                    name: INBOUND_EXCHANGE.to_owned(),
                    kind: ExchangeKind::Direct,
                },
                Exchange {
                    name: OUTBOUND_EXCHANGE.to_owned(),
                    kind: ExchangeKind::Direct,
                },
                Exchange {
                    name: EVENTS_EXCHANGE.to_owned(),
                    kind: ExchangeKind::Topic,
                },
                Exchange {
                    name: WEB_EXCHANGE.to_owned(),
                    kind: ExchangeKind::Topic,
                },
                Exchange {
                    name: BOTS_EXCHANGE.to_owned(),
                    kind: ExchangeKind::Topic,
                },
                Exchange {
                    name: DEAD_LETTER_EXCHANGE.to_owned(),
                    kind: ExchangeKind::Topic,
                },
            ],
            queues,
        }
    }
}

/// AMQP topic match of `routing_key` against `pattern`.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = routing_key.split('.').collect();
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_stable_and_in_range() {
        // Pinned: connectors in other languages compute the same FNV-1a 64.
        assert_eq!(shard_of("", 16), (0xcbf2_9ce4_8422_2325u64 % 16) as u16);
        assert_eq!(
            shard_of("a", 1000),
            (0xaf63_dc4c_8601_ec8cu64 % 1000) as u16
        );
        for key in ["a", "web\u{1f}visitor", "长"] {
            assert!(shard_of(key, 16) < 16);
            assert_eq!(shard_of(key, 16), shard_of(key, 16));
        }
        assert_eq!(shard_of("x", 0), 0);
    }

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("#", "message.received"));
        assert!(topic_matches("conversation.*", "conversation.assigned"));
        assert!(!topic_matches("conversation.*", "conversation.a.b"));
        assert!(topic_matches("conversation.#", "conversation.a.b"));
        assert!(!topic_matches("message.sent", "message.received"));
    }
}
