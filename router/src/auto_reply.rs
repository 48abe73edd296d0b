//! The automatic reply outside a pool's business hours (`[pools.hours]`): when a customer's
//! message opens a conversation while its pool is closed, the customer is told so once, on the
//! conversation's channel, as an outbound text without an agent. The conversation is queued and
//! assigned as usual; the reply only sets expectations, and it never fails the routing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::envelope::{Content, Envelope};
use switchyard_core::hours::Hours;
use switchyard_core::metrics::Metrics;
use switchyard_core::model::{Conversation, ConversationStatus};

use crate::error::RouteError;
use crate::operations::Operations;

/// The store key claimed before a conversation's automatic reply is recorded, so that it is
/// recorded once whatever retries the opening message has.
pub fn claim_key(conversation_id: &str) -> String {
    format!("auto-reply:{conversation_id}")
}

/// Sends the automatic replies of the pools that have business hours.
#[derive(Clone)]
pub struct AutoReplies {
    hours: Arc<HashMap<String, Hours>>,
    ops: Operations,
    metrics: Metrics,
    claim_ttl: Duration,
}

impl AutoReplies {
    /// Replies by `ops` for the pools of `hours` (pool id, schedule); a conversation's claim is
    /// kept for `claim_ttl` (the dedupe time of its messages).
    pub fn new(
        hours: Vec<(String, Hours)>,
        ops: Operations,
        metrics: Metrics,
        claim_ttl: Duration,
    ) -> Self {
        AutoReplies {
            hours: Arc::new(hours.into_iter().collect()),
            ops,
            metrics,
            claim_ttl,
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
        let outcome = match self.send_once(opening, conversation, hours).await {
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

    /// Claims the conversation's reply and sends it: `Ok(false)` when it was claimed before (a
    /// retry of the opening message). A claim whose reply was not recorded is given up, so a
    /// later retry may send it; one the channel refuses is kept (it would be refused again).
    async fn send_once(
        &self,
        opening: &Envelope,
        conversation: &Conversation,
        hours: &Hours,
    ) -> Result<bool, RouteError> {
        let store = self.ops.store();
        let key = claim_key(&conversation.id);
        if store
            .claim_key(&key, &opening.id, self.claim_ttl)
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let content = Content::Text {
            text: hours.reply().to_owned(),
        };
        match self.ops.send_outbound(conversation, None, content).await {
            Ok(_) => Ok(true),
            Err(e @ RouteError::Refused { .. }) => Err(e),
            Err(e) => {
                if let Err(release) = store.release_key(&key, &opening.id).await {
                    tracing::warn!(error = %release, "could not give up the claim of an automatic reply");
                }
                Err(e)
            }
        }
    }
}
