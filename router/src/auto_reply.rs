//! The automatic reply outside a pool's business hours (`[pools.hours]`): when a customer's
//! message opens a conversation while its pool is closed, the customer is told so once, on the
//! conversation's channel, as an outbound text without an agent. The conversation is queued and
//! assigned as usual; the reply only sets expectations, and it never fails the routing.
//!
//! Once per conversation, whatever happens to the router: the reply's envelope id is derived
//! from the conversation ([`reply_id`]), so every attempt (a retry or redelivery of the opening
//! message, on this router or another, after a crash or a lost store answer, at any time) sends
//! the same message. The store records an envelope id once and stages its bus message only
//! then ([`Store::record_outbound`](switchyard_core::store::Store::record_outbound)), so a
//! later attempt publishes nothing, and the outbound sender sends an id once
//! (`sent:{id}`). No claim is needed: an attempt that stopped halfway is simply made again.

use std::collections::HashMap;
use std::sync::Arc;

use switchyard_core::envelope::{Content, Envelope, derived_id};
use switchyard_core::hours::Hours;
use switchyard_core::metrics::Metrics;
use switchyard_core::model::{Conversation, ConversationStatus};

use crate::error::RouteError;
use crate::operations::Operations;

/// The envelope id of `conversation`'s automatic reply: derived from `auto-reply:{conversation
/// id}`, its time part the conversation's `created_at`, so every attempt to send the reply
/// gives it the same id.
pub fn reply_id(conversation: &Conversation) -> String {
    derived_id(
        &format!("auto-reply:{}", conversation.id),
        conversation.created_at,
    )
}

/// Sends the automatic replies of the pools that have business hours.
#[derive(Clone)]
pub struct AutoReplies {
    hours: Arc<HashMap<String, Hours>>,
    ops: Operations,
    metrics: Metrics,
}

impl AutoReplies {
    /// Replies by `ops` for the pools of `hours` (pool id, schedule).
    pub fn new(hours: Vec<(String, Hours)>, ops: Operations, metrics: Metrics) -> Self {
        AutoReplies {
            hours: Arc::new(hours.into_iter().collect()),
            ops,
            metrics,
        }
    }

    /// The schedule of `pool`, if it has hours.
    pub fn hours(&self, pool: &str) -> Option<&Hours> {
        self.hours.get(pool)
    }

    /// Called once `opening` (the message that opened `conversation`, or a retry of it) is
    /// routed and announced: when the conversation's pool is closed at the message's
    /// `received_at`, sends the pool's reply, once per conversation. Failures are logged and
    /// counted, never returned.
    pub async fn opened(&self, opening: &Envelope, conversation: &Conversation) {
        let Some(hours) = self.hours.get(&conversation.pool) else {
            return;
        };
        // A bot answers its conversations itself, at any hour.
        if conversation.status == ConversationStatus::Bot || hours.is_open(opening.received_at) {
            return;
        }
        let outcome = match self.send_once(conversation, hours).await {
            Ok(true) => "sent",
            Ok(false) => return,
            Err(RouteError::Refused { code, message }) => {
                tracing::info!(conversation = %conversation.id, code, %message, "the channel refuses the automatic reply outside business hours; skipped");
                "refused"
            }
            Err(e) => {
                tracing::warn!(conversation = %conversation.id, error = %e, "could not send the automatic reply outside business hours");
                "failed"
            }
        };
        self.metrics
            .auto_replies
            .with_label_values(&[conversation.pool.as_str(), outcome])
            .inc();
    }

    /// Sends the conversation's reply under its [`reply_id`]: `Ok(false)` when that id was
    /// recorded before (an earlier attempt sent it; nothing is sent again).
    async fn send_once(
        &self,
        conversation: &Conversation,
        hours: &Hours,
    ) -> Result<bool, RouteError> {
        let content = Content::Text {
            text: hours.reply().to_owned(),
        };
        let sent = self
            .ops
            .send_outbound(conversation, None, reply_id(conversation), content)
            .await?;
        Ok(!sent.duplicate)
    }
}
