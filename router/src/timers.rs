//! Timers of a pool, swept by every router:
//!
//! - **Bot timeout** (`bot_timeout_secs`): a conversation the pool's bot holds with no message
//!   either way for that long is transferred to the pool's queue, as if the bot had handed it
//!   off itself, and people take it from there. The transfer checks that the bot still holds it.
//! - **Idle close** (`close_idle_secs`): a queued or assigned conversation of the pool with no
//!   change for that long (`updated_at`: a message either way, an assignment, a transfer) is
//!   closed with the reason `idle`, which frees its agent's room. The candidates are the pool's
//!   queued and assigned conversations ([`Store::pool_conversations`]: its queue and what agents
//!   hold in it), so a sweep reads what the pool has open; the close itself checks, in the same
//!   store step, that nothing changed meanwhile.
//!
//! - **Offer expiry** (`offer_timeout_secs`): an offer its agent neither accepted nor declined in
//!   time is taken back ([`Operations::expire_offers`]): the conversation goes back to the
//!   front of its queue and the agent is set away. Every router looks every second; the store
//!   takes back only the offer it saw, so the routers that come second change nothing.
//!
//! - **Queue overflow** (`[pools.overflow]`): a conversation queued in the pool for
//!   `after_secs` moves on, to another pool's queue or back into this one with new skills or
//!   priority ([`Operations::overflow`]), announced as a transfer with the reason `overflow`.
//!   The candidates are the pool's queue; the store moves a conversation only while it still
//!   waits there since before the cutoff, so routers that come second change nothing.
//!
//! - **Answer timeout** (`answer_timeout_secs`): an assigned conversation whose customer waits for
//!   an answer longer than that (since their first message after the agent's last reply, or
//!   since the assignment when that came later) is taken back from its agent
//!   ([`Operations::take_back`] with [`Withdrawal::Unanswered`]): it goes back to the front of
//!   its queue, to another agent, and the agent is set away. The candidates are the pool's
//!   assigned conversations; the store takes one back only while its customer still waits since
//!   before the cutoff, so routers that come second change nothing.
//!
//! A claim per conversation (`timer:bot:{id}`, `timer:idle:{id}`) lets one router act on it.

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::config::{PoolSettings, Settings, bot_agent_id};
use switchyard_core::envelope::new_id;
use switchyard_core::metrics::Metrics;
use switchyard_core::model::{Conversation, ConversationStatus, Skills};
use switchyard_core::store::{
    CONVERSATION_CHANGED, QueueTarget, Store, StoreError, TransferTarget, Withdrawal,
};
use tokio_util::sync::CancellationToken;

use crate::error::RouteError;
use crate::operations::Operations;

/// Conversations one sweep of one pool goes through.
const BATCH: usize = 50;
/// How long a router's claim on a conversation's hand-off holds (a failed hand-off is tried
/// again after it).
const CLAIM: Duration = Duration::from_secs(60);

/// A pool whose bot times out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotTimeout {
    /// The pool.
    pub pool: String,
    /// Its bot's agent id.
    pub bot: String,
    /// Silence after which the bot's conversations are handed off.
    pub after: Duration,
}

impl BotTimeout {
    /// Every pool of `settings` with a bot and a `bot_timeout_secs`.
    pub fn of(settings: &Settings) -> Vec<BotTimeout> {
        settings
            .pools
            .iter()
            .filter(|p| p.bot_timeout_secs > 0)
            .filter_map(|p| {
                Some(BotTimeout {
                    pool: p.id.clone(),
                    bot: bot_agent_id(p.bot.as_deref()?),
                    after: Duration::from_secs(p.bot_timeout_secs),
                })
            })
            .collect()
    }
}

/// A pool with a timeout on its open conversations: an idle close or an answer timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTimeout {
    /// The pool.
    pub pool: String,
    /// The time after which the sweep acts.
    pub after: Duration,
}

impl PoolTimeout {
    /// Every pool of `settings` with a `close_idle_secs`: time without a change after which its
    /// conversations close.
    pub fn idle_closes(settings: &Settings) -> Vec<PoolTimeout> {
        Self::of(settings, |p| p.close_idle_secs)
    }

    fn of(settings: &Settings, secs: impl Fn(&PoolSettings) -> u64) -> Vec<PoolTimeout> {
        settings
            .pools
            .iter()
            .filter(|p| secs(p) > 0)
            .map(|p| PoolTimeout {
                pool: p.id.clone(),
                after: Duration::from_secs(secs(p)),
            })
            .collect()
    }
}

/// A pool with an answer timeout: a customer of one of its agents who waits longer than `after`
/// for an answer is given to another agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerTimeout {
    /// The pool.
    pub pool: String,
    /// How long a customer may wait (`answer_timeout_secs`).
    pub after: Duration,
    /// Whether the agent is set away too (`answer_timeout_sets_away`).
    pub sets_away: bool,
}

impl AnswerTimeout {
    /// Every pool of `settings` with an `answer_timeout_secs`.
    pub fn of(settings: &Settings) -> Vec<AnswerTimeout> {
        settings
            .pools
            .iter()
            .filter(|p| p.answer_timeout_secs > 0)
            .map(|p| AnswerTimeout {
                pool: p.id.clone(),
                after: Duration::from_secs(p.answer_timeout_secs),
                sets_away: p.answer_timeout_sets_away,
            })
            .collect()
    }
}

/// A pool whose queue overflows: what waits in it too long moves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOverflow {
    /// The pool.
    pub pool: String,
    /// Time in the queue after which a conversation moves on.
    pub after: Duration,
    /// The pool it moves to (this one for a change of skills or priority only).
    pub to: String,
    /// The skills it asks from then on; `None` keeps them.
    pub skills: Option<Skills>,
    /// Its priority from then on; `None` keeps it.
    pub priority: Option<u8>,
}

impl QueueOverflow {
    /// Every pool of `settings` with a `[pools.overflow]`.
    pub fn of(settings: &Settings) -> Vec<QueueOverflow> {
        settings
            .pools
            .iter()
            .filter_map(|p| {
                let overflow = p.overflow.as_ref()?;
                Some(QueueOverflow {
                    pool: p.id.clone(),
                    after: Duration::from_secs(overflow.after_secs),
                    to: overflow.pool.clone().unwrap_or_else(|| p.id.clone()),
                    skills: overflow.skills.clone().map(Skills::new),
                    priority: overflow.priority,
                })
            })
            .collect()
    }

    /// Whether moving `conversation` would change anything: another pool, other skills or
    /// another priority. (A move that changes nothing would only restart its wait, again and
    /// again.)
    pub fn changes(&self, conversation: &Conversation) -> bool {
        self.to != conversation.pool
            || self
                .skills
                .as_ref()
                .is_some_and(|skills| *skills != conversation.skills)
            || self
                .priority
                .is_some_and(|priority| priority != conversation.priority)
    }

    /// Where it moves a conversation.
    fn target(&self) -> QueueTarget {
        QueueTarget {
            pool: self.to.clone(),
            skills: self.skills.clone(),
            priority: self.priority,
            offer_secs: 0,
        }
    }
}

/// How often routers look for expired offers.
pub const OFFER_SWEEP: Duration = Duration::from_secs(1);

/// Every `every` until `stop`: takes back the offers that expired.
pub async fn take_back_expired_offers(ops: Operations, every: Duration, stop: CancellationToken) {
    while tick(every, &stop).await {
        match ops.expire_offers().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(offers = n, "took back expired offers"),
            Err(e) => {
                tracing::warn!(error = %e, "could not take back expired offers; trying again later");
            }
        }
    }
}

/// How often to look: a quarter of the shortest timeout, between 1 and 30 seconds.
pub fn sweep_interval(timeouts: impl IntoIterator<Item = Duration>) -> Duration {
    timeouts
        .into_iter()
        .map(|after| after / 4)
        .min()
        .unwrap_or(Duration::from_secs(30))
        .clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Waits `every`; `false` once `stop` is cancelled (at once, without waiting out `every`). The
/// pace of every periodic sweep.
pub(crate) async fn tick(every: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(every) => true,
    }
}

/// The instant `after` ago, when the clock can count that far back.
fn cutoff(after: Duration) -> Option<chrono::DateTime<chrono::Utc>> {
    let after = chrono::TimeDelta::from_std(after).ok()?;
    switchyard_core::time::now().checked_sub_signed(after)
}

/// Claims the timer `key` for this router (`me`, made once per sweep task: another router's
/// claims hold the conversation until they lapse); `false` when another router holds it or the
/// store cannot say.
async fn claim(store: &dyn Store, key: &str, me: &str) -> bool {
    match store.claim_key(key, me, CLAIM).await {
        Ok(None) => true,
        Ok(Some(holder)) => holder == me,
        Err(e) => {
            tracing::warn!(error = %e, key, "could not claim a timer; trying again later");
            false
        }
    }
}

/// The conversations of `pool` whose status is in `statuses`, as [`Store::pool_conversations`]
/// lists them (the same read as `GET /v1/pools/{id}/conversations`): its queue, and what agents
/// hold in it. `None`, after a warning, when the store cannot say: the sweep (`looking_for` its
/// candidates) tries again at its next tick.
async fn in_pool(
    store: &dyn Store,
    pool: &str,
    statuses: &[ConversationStatus],
    looking_for: &str,
) -> Option<Vec<Conversation>> {
    match store.pool_conversations(pool, statuses, usize::MAX).await {
        Ok(conversations) => Some(conversations),
        Err(e) => {
            tracing::warn!(pool, error = %e, "could not look for {looking_for}; trying again later");
            None
        }
    }
}

/// Whether a timer's change of conversation `id` (`what` it did, for the logs) was made. The
/// conflict [`CONVERSATION_CHANGED`] is expected (a message, a command or another router came
/// first) and logged at debug level; other errors are warned of, and the next sweep tries again.
fn made(result: Result<Conversation, RouteError>, id: &str, what: &str) -> bool {
    match result {
        Ok(_) => true,
        Err(RouteError::Store(StoreError::Conflict {
            code: CONVERSATION_CHANGED,
            ..
        })) => {
            tracing::debug!(conversation = %id, "not {what}: it changed meanwhile");
            false
        }
        Err(e) => {
            tracing::warn!(conversation = %id, error = %e, "could not have it {what}; trying again later");
            false
        }
    }
}

/// Every `every` until `stop`: closes the idle conversations of the pools in `idles`.
pub async fn close_idle_conversations(
    store: Arc<dyn Store>,
    ops: Operations,
    metrics: Metrics,
    idles: Vec<PoolTimeout>,
    every: Duration,
    stop: CancellationToken,
) {
    let me = new_id();
    let open = [ConversationStatus::Queued, ConversationStatus::Assigned];
    while tick(every, &stop).await {
        for idle in &idles {
            let Some(before) = cutoff(idle.after) else {
                continue;
            };
            let Some(candidates) = in_pool(&*store, &idle.pool, &open, "idle conversations").await
            else {
                continue;
            };
            let unchanged = candidates.into_iter().filter(|c| c.updated_at < before);
            for Conversation { id, .. } in unchanged {
                if !claim(&*store, &format!("timer:idle:{id}"), &me).await {
                    continue;
                }
                if made(ops.close_idle(&id, before).await, &id, "closed as idle") {
                    metrics
                        .idle_closes
                        .with_label_values(&[idle.pool.as_str()])
                        .inc();
                    tracing::info!(conversation = %id, pool = %idle.pool, "closed an idle conversation");
                }
            }
        }
    }
}

/// Every `every` until `stop`: hands off the conversations of silent bots.
pub async fn hand_off_silent_bots(
    store: Arc<dyn Store>,
    ops: Operations,
    metrics: Metrics,
    timeouts: Vec<BotTimeout>,
    every: Duration,
    stop: CancellationToken,
) {
    let me = new_id();
    while tick(every, &stop).await {
        for timeout in &timeouts {
            let Some(before) = cutoff(timeout.after) else {
                continue;
            };
            let silent = match store
                .idle_bot_conversations(&timeout.pool, before, BATCH)
                .await
            {
                Ok(silent) => silent,
                Err(e) => {
                    tracing::warn!(pool = %timeout.pool, error = %e, "could not look for silent bots; trying again later");
                    continue;
                }
            };
            for conversation in silent {
                if !claim(&*store, &format!("timer:bot:{}", conversation.id), &me).await {
                    continue;
                }
                let handed = ops
                    .transfer(
                        &conversation.id,
                        Some(&timeout.bot),
                        TransferTarget::pool(timeout.pool.clone()),
                        None,
                    )
                    .await;
                if made(handed, &conversation.id, "handed off from its silent bot") {
                    metrics
                        .bot_timeouts
                        .with_label_values(&[timeout.pool.as_str()])
                        .inc();
                    tracing::info!(conversation = %conversation.id, pool = %timeout.pool, bot = %timeout.bot,
                        "the bot stayed silent; handed the conversation off to the pool");
                }
            }
        }
    }
}

/// Every `every` until `stop`: moves on what waited too long in the queues of `overflows`.
pub async fn overflow_queues(
    store: Arc<dyn Store>,
    ops: Operations,
    metrics: Metrics,
    overflows: Vec<QueueOverflow>,
    every: Duration,
    stop: CancellationToken,
) {
    while tick(every, &stop).await {
        for overflow in &overflows {
            let Some(before) = cutoff(overflow.after) else {
                continue;
            };
            let Some(queued) = in_pool(
                &*store,
                &overflow.pool,
                &[ConversationStatus::Queued],
                "conversations waiting too long",
            )
            .await
            else {
                continue;
            };
            let waited_too_long = queued.into_iter().filter(|c| {
                c.pool == overflow.pool
                    && c.queued_at.is_some_and(|at| at < before)
                    && overflow.changes(c)
            });
            for Conversation { id, .. } in waited_too_long {
                let moved = ops
                    .overflow(&id, &overflow.pool, before, overflow.target())
                    .await;
                if made(moved, &id, "moved on") {
                    metrics
                        .queue_overflows
                        .with_label_values(&[overflow.pool.as_str(), overflow.to.as_str()])
                        .inc();
                    tracing::info!(conversation = %id, pool = %overflow.pool, to = %overflow.to,
                        "the conversation waited too long in the queue; moved it on");
                }
            }
        }
    }
}

/// Every `every` until `stop`: takes back the conversations whose customers the agents of the
/// pools in `timeouts` left unanswered too long.
pub async fn take_back_unanswered(
    store: Arc<dyn Store>,
    ops: Operations,
    _metrics: Metrics,
    timeouts: Vec<AnswerTimeout>,
    every: Duration,
    stop: CancellationToken,
) {
    while tick(every, &stop).await {
        for timeout in &timeouts {
            let Some(before) = cutoff(timeout.after) else {
                continue;
            };
            let Some(assigned) = in_pool(
                &*store,
                &timeout.pool,
                &[ConversationStatus::Assigned],
                "unanswered customers",
            )
            .await
            else {
                continue;
            };
            let unanswered = assigned
                .into_iter()
                .filter(|c| c.pool == timeout.pool && c.unanswered_since_before(before));
            for conversation in unanswered {
                let (id, Some(agent)) = (&conversation.id, conversation.agent_id.as_deref()) else {
                    continue;
                };
                let taken = ops
                    .take_back(
                        id,
                        agent,
                        Withdrawal::Unanswered {
                            before,
                            sets_away: timeout.sets_away,
                        },
                    )
                    .await;
                if made(taken, id, "taken back as unanswered") {
                    tracing::info!(conversation = %id, pool = %timeout.pool, agent,
                        "the agent left the customer unanswered too long; took the conversation back");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(secs: u64) -> BotTimeout {
        BotTimeout {
            pool: "p".into(),
            bot: "bot:b".into(),
            after: Duration::from_secs(secs),
        }
    }

    /// The conversation of the `conversation.queued` example: queued in `default`, asking for
    /// no skill, priority 0.
    fn queued_conversation() -> Conversation {
        let event: serde_json::Value = serde_json::from_str(include_str!(
            "../../schemas/examples/event.conversation.queued.json"
        ))
        .unwrap();
        serde_json::from_value(event["data"]["conversation"].clone()).unwrap()
    }

    fn overflow(to: &str, skills: Option<&[&str]>, priority: Option<u8>) -> QueueOverflow {
        QueueOverflow {
            pool: "default".into(),
            after: Duration::from_secs(60),
            to: to.into(),
            skills: skills.map(|s| Skills::new(s.iter().copied())),
            priority,
        }
    }

    #[test]
    fn an_overflow_that_would_change_nothing_is_not_made() {
        let c = queued_conversation();
        assert_eq!((c.pool.as_str(), c.priority), ("default", 0));
        assert!(c.skills.is_empty());
        assert!(overflow("tier2", None, None).changes(&c));
        assert!(overflow("default", Some(&["zh"]), None).changes(&c));
        assert!(overflow("default", None, Some(5)).changes(&c));
        assert!(!overflow("default", Some(&[]), None).changes(&c));
        assert!(!overflow("default", None, Some(0)).changes(&c));
        assert!(!overflow("default", Some(&[]), Some(0)).changes(&c));
    }

    #[test]
    fn overflows_are_read_from_the_pools() {
        let path = std::env::temp_dir().join(format!("switchyard-timers-{}.toml", new_id()));
        std::fs::write(
            &path,
            "[[pools]]\nid = \"tier1\"\n[pools.overflow]\nafter_secs = 90\npool = \"tier2\"\n\
             [[pools]]\nid = \"tier2\"\n\
             [[pools]]\nid = \"vip\"\n[pools.overflow]\nafter_secs = 30\nskills = []\npriority = 9\n",
        )
        .unwrap();
        let settings = Settings::load_with_env(Some(&path), []);
        let _ = std::fs::remove_file(&path);
        let settings = settings.unwrap();
        assert_eq!(
            QueueOverflow::of(&settings),
            vec![
                QueueOverflow {
                    pool: "tier1".into(),
                    after: Duration::from_secs(90),
                    to: "tier2".into(),
                    skills: None,
                    priority: None,
                },
                QueueOverflow {
                    pool: "vip".into(),
                    after: Duration::from_secs(30),
                    to: "vip".into(),
                    skills: Some(Skills::NONE),
                    priority: Some(9),
                },
            ]
        );
    }

    #[test]
    fn the_interval_is_a_quarter_of_the_shortest_timeout_within_bounds() {
        let every = |timeouts: &[BotTimeout]| sweep_interval(timeouts.iter().map(|t| t.after));
        assert_eq!(every(&[timeout(40), timeout(400)]), Duration::from_secs(10));
        assert_eq!(every(&[timeout(2)]), Duration::from_secs(1));
        assert_eq!(every(&[timeout(3600)]), Duration::from_secs(30));
        assert_eq!(every(&[]), Duration::from_secs(30));
    }
}
