//! Timers: a pool's bot that stays silent hands its conversations off. A conversation the bot
//! holds with no message either way for the pool's `bot_timeout_secs` is transferred to the
//! pool's queue, as if the bot had handed it off itself, and people take it from there.
//!
//! Every router sweeps. A claim per conversation (`timer:bot:{id}`) lets one router act on it,
//! and the transfer checks that the bot still holds it, so a conversation is handed off once.

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::config::{Settings, bot_agent_id};
use switchyard_core::envelope::new_id;
use switchyard_core::metrics::Metrics;
use switchyard_core::store::{Store, TransferTarget};
use tokio_util::sync::CancellationToken;

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

/// How often to look: a quarter of the shortest timeout, between 1 and 30 seconds.
pub fn sweep_interval(timeouts: &[BotTimeout]) -> Duration {
    timeouts
        .iter()
        .map(|t| t.after / 4)
        .min()
        .unwrap_or(Duration::from_secs(30))
        .clamp(Duration::from_secs(1), Duration::from_secs(30))
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
    // This router's claims; another router's hold the conversation until they lapse.
    let me = new_id();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for timeout in &timeouts {
            let Ok(after) = chrono::TimeDelta::from_std(timeout.after) else {
                continue;
            };
            let before = switchyard_core::time::now() - after;
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
                let claim = format!("timer:bot:{}", conversation.id);
                match store.claim_key(&claim, &me, CLAIM).await {
                    Ok(None) => {}
                    Ok(Some(holder)) if holder == me => {}
                    Ok(Some(_)) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not claim a bot hand-off; trying again later");
                        continue;
                    }
                }
                let handed = ops
                    .transfer(
                        &conversation.id,
                        Some(&timeout.bot),
                        TransferTarget::Pool(timeout.pool.clone()),
                    )
                    .await;
                match handed {
                    Ok(_) => {
                        metrics
                            .bot_timeouts
                            .with_label_values(&[timeout.pool.as_str()])
                            .inc();
                        tracing::info!(conversation = %conversation.id, pool = %timeout.pool, bot = %timeout.bot,
                            "the bot stayed silent; handed the conversation off to the pool");
                    }
                    Err(e) => {
                        tracing::warn!(conversation = %conversation.id, error = %e,
                            "could not hand a silent bot's conversation off; trying again later");
                    }
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

    #[test]
    fn the_interval_is_a_quarter_of_the_shortest_timeout_within_bounds() {
        assert_eq!(
            sweep_interval(&[timeout(40), timeout(400)]),
            Duration::from_secs(10)
        );
        assert_eq!(sweep_interval(&[timeout(2)]), Duration::from_secs(1));
        assert_eq!(sweep_interval(&[timeout(3600)]), Duration::from_secs(30));
    }
}
