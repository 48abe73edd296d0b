//! What a visitor sees again when they (re)connect: the `history` of the visitor WebSocket's
//! `welcome` frame. The latest messages of the open conversation of the visitor's customer that
//! belong on this web channel instance: what was written on it and the replies sent to it.

use switchyard_core::envelope::{ChannelRef, Envelope};
use switchyard_core::identity::IdentityKey;
use switchyard_core::model::Conversation;
use switchyard_core::protocol::{HistoryMessage, VISITOR_HISTORY_LIMIT};
use switchyard_core::store::{Store, StoreError};

/// The latest messages of a conversation looked through for a visitor's history. Messages of
/// the customer's other channels are skipped and do not count towards
/// [`VISITOR_HISTORY_LIMIT`], but the search goes no further back than this.
const HISTORY_SCAN: usize = 4 * VISITOR_HISTORY_LIMIT;

/// The history of the visitor whose identity key is `visitor` on the web channel `channel`:
/// at most [`VISITOR_HISTORY_LIMIT`] messages, oldest first, of their customer's open
/// conversation, written on `channel` or sent to it. Empty for a visitor without a profile or
/// without an open conversation.
pub async fn visitor_history(
    store: &dyn Store,
    channel: &ChannelRef,
    visitor: &IdentityKey,
) -> Result<Vec<HistoryMessage>, StoreError> {
    let Some(conversation) = visitor_open_conversation(store, visitor).await? else {
        return Ok(Vec::new());
    };
    let messages = store.messages(&conversation.id, HISTORY_SCAN).await?;
    Ok(visible_on(channel, &messages, VISITOR_HISTORY_LIMIT))
}

/// The open conversation of the customer whose identity key is `visitor`; `None` for a
/// visitor without a profile or without an open conversation. What a visitor sees again
/// (the history) and is told the queue place of.
pub async fn visitor_open_conversation(
    store: &dyn Store,
    visitor: &IdentityKey,
) -> Result<Option<Conversation>, StoreError> {
    let Some(customer) = store.customer_by_identity(visitor).await? else {
        return Ok(None);
    };
    store.open_conversation(&customer.id).await
}

/// The latest `limit` of `messages` (oldest first) that travelled on `channel`, either way,
/// oldest first.
fn visible_on(channel: &ChannelRef, messages: &[Envelope], limit: usize) -> Vec<HistoryMessage> {
    let mut visible: Vec<HistoryMessage> = messages
        .iter()
        .rev()
        .filter(|m| m.channel == *channel)
        .take(limit)
        .map(HistoryMessage::of_envelope)
        .collect();
    visible.reverse();
    visible
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use switchyard_core::envelope::{Content, Direction, Sender};

    use super::*;

    fn channel(id: &str) -> ChannelRef {
        ChannelRef {
            kind: "web".into(),
            id: id.into(),
        }
    }

    /// Message `text` on `channel`, `direction`, at second `at`; its id is its text.
    fn message(channel: ChannelRef, direction: Direction, text: &str, at: i64) -> Envelope {
        let sent_at = Utc.timestamp_opt(1_800_000_000 + at, 0).unwrap();
        let mut envelope = Envelope::inbound(
            channel,
            Sender {
                external_id: "v1".into(),
                scope: "web".into(),
                display_name: None,
                identities: Vec::new(),
            },
            Content::Text { text: text.into() },
            format!("dedupe-{text}"),
            sent_at,
            sent_at,
        );
        envelope.id = text.into();
        envelope.direction = direction;
        if direction == Direction::Outbound {
            envelope.agent_id = Some("a1".into());
        }
        envelope
    }

    #[test]
    fn history_keeps_both_directions_on_the_channel_oldest_first() {
        let web = channel("web");
        let messages = [
            message(web.clone(), Direction::Inbound, "hello", 1),
            message(channel("other-web"), Direction::Inbound, "elsewhere", 2),
            message(web.clone(), Direction::Outbound, "hi there", 3),
            message(
                channel("other-web"),
                Direction::Outbound,
                "reply elsewhere",
                4,
            ),
            message(web.clone(), Direction::Inbound, "thanks", 5),
        ];
        let history = visible_on(&web, &messages, 10);
        let ids: Vec<&str> = history.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["hello", "hi there", "thanks"]);
        assert_eq!(history[1].direction, Direction::Outbound);
        assert_eq!(history[1].agent_id.as_deref(), Some("a1"));
        assert_eq!(history[0].agent_id, None);
        assert_eq!(history[2].sent_at, messages[4].sent_at);
        assert_eq!(
            history[2].content,
            Content::Text {
                text: "thanks".into()
            }
        );
    }

    #[test]
    fn history_is_the_latest_messages_within_the_limit() {
        let web = channel("web");
        let messages: Vec<Envelope> = (0..5)
            .map(|i| message(web.clone(), Direction::Inbound, &format!("m{i}"), i))
            .collect();
        let ids: Vec<String> = visible_on(&web, &messages, 2)
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["m3", "m4"]);
        assert!(visible_on(&channel("nowhere"), &messages, 2).is_empty());
    }
}
