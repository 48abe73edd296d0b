//! The memory of the messages a channel accepted, by the channel's own message id.
//!
//! Some platforms accept a reply and say only later, in what the connector receives or pulls,
//! that they could not deliver it (WeCom kf's `msg_send_fail`, WhatsApp's `failed` status).
//! That report names the platform's message id, not our envelope. So after every accepted send
//! the connector remembers the envelope, as JSON in the shared store, under
//! `{prefix}:{channel message id}`; when the failure arrives it reads the envelope back and
//! reports it through [`EnvelopeSink::delivery_failed`], which tells the agent who wrote it.

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::envelope::Envelope;
use switchyard_core::store::Store;

use crate::{ConnectorError, EnvelopeSink};

/// Outbound envelopes a channel's API accepted, kept for `ttl` under the channel's message id
/// in the store every replica shares.
#[derive(Clone)]
pub struct SentMessages {
    store: Arc<dyn Store>,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for SentMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentMessages")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SentMessages {
    /// Messages kept under `{prefix}:{channel message id}` for `ttl`: as long as the platform
    /// may still report a failure. The prefix names the channel instance, so that two channels
    /// never read each other's messages.
    pub fn new(store: Arc<dyn Store>, prefix: impl Into<String>, ttl: Duration) -> Self {
        SentMessages {
            store,
            prefix: prefix.into(),
            ttl,
        }
    }

    /// The store key of a channel message id.
    pub fn key(&self, channel_message_id: &str) -> String {
        format!("{}:{channel_message_id}", self.prefix)
    }

    /// Remembers `message`, which the channel accepted as `channel_message_id`. Best effort: a
    /// store failure is logged and the send still counts (failing it now would only make the
    /// dispatcher send the message twice); a later failure of it then goes unreported.
    pub async fn remember(&self, channel_message_id: &str, message: &Envelope) {
        let json = match serde_json::to_string(message) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(%channel_message_id, error = %e,
                    "cannot encode a sent message to remember it");
                return;
            }
        };
        if let Err(e) = self
            .store
            .set_key(&self.key(channel_message_id), &json, self.ttl)
            .await
        {
            tracing::warn!(
                %channel_message_id,
                error = %e,
                "sent message not remembered; a later delivery failure of it will not be reported"
            );
        }
    }

    /// Reports that the channel did not deliver `channel_message_id` after all: the remembered
    /// envelope goes to [`EnvelopeSink::delivery_failed`] with `code` and `reason`.
    ///
    /// An id not remembered (sent by another system, or longer ago than the TTL) is skipped, as
    /// is a remembered value that no longer reads as an envelope. A store that cannot be read,
    /// or a sink whose report did not reach the bus, is `Transient`: the caller answers so that
    /// the platform tells us again. Any other sink error (a sink that reports nothing) is
    /// logged.
    pub async fn report(
        &self,
        channel_message_id: &str,
        code: &str,
        reason: &str,
        sink: &dyn EnvelopeSink,
    ) -> Result<(), ConnectorError> {
        let Some(json) = self.store.get_key(&self.key(channel_message_id)).await? else {
            tracing::debug!(%channel_message_id, %code,
                "delivery failure of a message not sent from here (or forgotten) skipped");
            return Ok(());
        };
        let message: Envelope = match serde_json::from_str(&json) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(%channel_message_id, %code, error = %e,
                    "remembered sent message unreadable; its delivery failure is not reported");
                return Ok(());
            }
        };
        match sink.delivery_failed(&message, code, reason).await {
            Ok(()) => Ok(()),
            Err(e @ ConnectorError::Transient(_)) => Err(e),
            Err(e) => {
                tracing::warn!(id = %message.id, %code, error = %e,
                    "a delivery failure could not be reported");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use switchyard_core::store::embedded::EmbeddedStore;

    use super::*;
    use crate::Accepted;

    /// Records the failures reported to it; answers `error` instead when one is set.
    #[derive(Default)]
    struct RecordingSink {
        reported: Mutex<Vec<(String, String, String)>>,
        error: Mutex<Option<ConnectorError>>,
    }

    impl RecordingSink {
        fn failing_with(error: ConnectorError) -> Self {
            RecordingSink {
                error: Mutex::new(Some(error)),
                ..RecordingSink::default()
            }
        }

        fn reported(&self) -> Vec<(String, String, String)> {
            self.reported.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl EnvelopeSink for RecordingSink {
        async fn publish(&self, _: Vec<Envelope>) -> Result<Vec<Accepted>, ConnectorError> {
            unreachable!("reporting a failure publishes no envelope")
        }

        async fn delivery_failed(
            &self,
            message: &Envelope,
            code: &str,
            reason: &str,
        ) -> Result<(), ConnectorError> {
            if let Some(e) = self.error.lock().unwrap().clone() {
                return Err(e);
            }
            self.reported.lock().unwrap().push((
                message.id.clone(),
                code.to_owned(),
                reason.to_owned(),
            ));
            Ok(())
        }
    }

    fn reply() -> Envelope {
        serde_json::from_str(include_str!(
            "../../schemas/examples/message.outbound.text.json"
        ))
        .unwrap()
    }

    fn sent() -> (SentMessages, Arc<dyn Store>) {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
        let sent = SentMessages::new(
            Arc::clone(&store),
            "test:sent:chan",
            Duration::from_secs(60),
        );
        (sent, store)
    }

    #[tokio::test]
    async fn a_remembered_message_is_reported_as_it_was_sent() {
        let (sent, store) = sent();
        let reply = reply();
        sent.remember("platform-1", &reply).await;
        let kept = store.get_key("test:sent:chan:platform-1").await.unwrap();
        assert_eq!(
            serde_json::from_str::<Envelope>(&kept.unwrap()).unwrap(),
            reply,
            "the whole envelope, under `{{prefix}}:{{id}}`"
        );

        let sink = RecordingSink::default();
        sent.report("platform-1", "x_undelivered", "gone", &sink)
            .await
            .unwrap();
        assert_eq!(
            sink.reported(),
            [(reply.id.clone(), "x_undelivered".into(), "gone".into())]
        );
    }

    #[tokio::test]
    async fn an_unknown_or_unreadable_message_is_skipped() {
        let (sent, store) = sent();
        sent.remember("platform-1", &reply()).await;
        store
            .set_key(
                "test:sent:chan:garbled",
                "{not an envelope",
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let sink = RecordingSink::default();
        sent.report("someone-elses", "x", "y", &sink).await.unwrap();
        sent.report("garbled", "x", "y", &sink).await.unwrap();
        assert!(sink.reported().is_empty());
    }

    #[tokio::test]
    async fn a_report_the_bus_did_not_take_is_an_error_and_others_are_only_logged() {
        let (sent, _) = sent();
        sent.remember("platform-1", &reply()).await;
        let down = RecordingSink::failing_with(ConnectorError::Transient("bus down".into()));
        assert!(matches!(
            sent.report("platform-1", "x", "y", &down).await,
            Err(ConnectorError::Transient(_))
        ));
        let mute = RecordingSink::failing_with(ConnectorError::Unsupported("no events".into()));
        sent.report("platform-1", "x", "y", &mute).await.unwrap();
    }
}
