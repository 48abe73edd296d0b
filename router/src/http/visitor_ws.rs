//! The visitor WebSocket, `GET /v1/channels/{channel_id}/ws` (`schemas/visitor-ws.v1.json`).
//!
//! A session registers its socket with the web channel, waits until this gateway receives reply
//! notifications, then writes the welcome (with the visitor's history, see [`visitor_history`]),
//! the replies waiting in the visitor's mailbox (oldest first) and what comes live. A waiting
//! reply may be in the history too: it is written anyway, for clients that ignore the history,
//! and the page shows each id once. Each reply is written once per socket, followed by a WebSocket
//! ping; it is acknowledged in the mailbox only when the pong comes back (browsers answer pings
//! by themselves, after the bytes before the ping reached them). A reply written to a socket that
//! was already dead (a tab closing as the reply is written) is therefore not lost: it stays in
//! the mailbox and is written again at the visitor's next connection, where the page skips ids it
//! shows already.
//!
//! The socket also writes `queue` frames, the place of the visitor's conversation in its pool's
//! queue: [`super::queue_position`] hands them to the socket's sender, like live replies but
//! without a ping (a place is not kept anywhere). Each accepted message or identify tells it that
//! the visitor's conversation may have changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, StreamExt};
use switchyard_connectors::web::{RecentIds, WebConnector, WebInbound};
use switchyard_connectors::{Connector, ConnectorError};
use switchyard_core::protocol::{HistoryMessage, VisitorEvent, VisitorRequest};
use tokio::sync::mpsc;

use super::visitor_history::visitor_history;
use super::{ApiError, HttpState};

/// Largest visitor frame accepted.
const MAX_FRAME: usize = 64 * 1024;
/// How long a new visitor socket waits for this gateway's reply notifications to be live
/// before reading the mailbox anyway.
const PUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Reply ids a socket remembers having written, to skip a second copy.
const WRITTEN_IDS: usize = 1024;

/// Replies written to one socket whose ping has not been answered yet, by ping number.
#[derive(Debug, Default)]
struct Unconfirmed {
    next_ping: u64,
    replies: Vec<(u64, String)>,
}

impl Unconfirmed {
    /// Notes reply `id`, written just now; returns the number of the ping that confirms it.
    fn written(&mut self, id: String) -> u64 {
        let ping = self.next_ping;
        self.next_ping += 1;
        self.replies.push((ping, id));
        ping
    }

    /// The replies the pong of ping `answered` confirms (all written before it), taken out.
    fn confirmed(&mut self, answered: u64) -> Vec<String> {
        let (done, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.replies)
            .into_iter()
            .partition(|(ping, _)| *ping <= answered);
        self.replies = open;
        done.into_iter().map(|(_, id)| id).collect()
    }
}

/// The ping number a pong answers (its payload), if it is one of ours.
fn ping_number(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.try_into().ok()?))
}

/// Upgrades to a visitor session; `?visitor_token=` resumes a visitor.
pub async fn upgrade(
    State(state): State<HttpState>,
    Path(channel_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let web = state
        .registry
        .web(&channel_id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no web channel `{channel_id}`")))?;
    let (visitor_id, token) = match query.get("visitor_token") {
        Some(token) => match web.verify_visitor_token(token) {
            Ok(id) => (id, token.clone()),
            // A stale token (secret rotated; no secret and a restart, or another gateway) starts a
            // new visitor.
            Err(_) => web.new_visitor(),
        },
        None => web.new_visitor(),
    };
    let tracker = state.sockets.clone();
    Ok(ws
        .max_message_size(MAX_FRAME)
        .on_upgrade(move |socket| {
            tracker.track_future(session(socket, state, web, visitor_id, token))
        })
        .into_response())
}

async fn session(
    socket: WebSocket,
    state: HttpState,
    web: Arc<WebConnector>,
    visitor_id: String,
    token: String,
) {
    let gauge = state
        .metrics
        .websocket_sessions
        .with_label_values(&["visitor"]);
    gauge.inc();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<VisitorEvent>(256);
    // Register first, then read the mailbox: a reply stored from now on reaches this socket live
    // (from this process or announced by another gateway), one stored before is in the mailbox.
    let guard = web.sessions().register(&visitor_id, tx.clone());
    let ready = tokio::select! {
        _ = state.shutdown.cancelled() => true,
        r = tokio::time::timeout(PUSH_WAIT, web.push_ready()) => r.is_ok(),
    };
    if !ready {
        tracing::warn!(
            channel = %web.channel().id,
            "reply notifications are not live yet; replies from other gateways may wait for the \
             visitor's next connection"
        );
    }
    let mailbox = async {
        match web.undelivered(&visitor_id).await {
            Ok(waiting) => waiting,
            Err(e) => {
                tracing::warn!(channel = %web.channel().id, error = %e, "could not read a visitor mailbox");
                count_read_failure(&state, "mailbox");
                Vec::new()
            }
        }
    };
    let (waiting, history) = tokio::join!(mailbox, history_or_empty(&state, &web, &visitor_id));
    let welcome = VisitorEvent::Welcome {
        visitor_id: visitor_id.clone(),
        visitor_token: token,
        channel_id: web.channel().id.clone(),
        history,
    };
    let unconfirmed = Mutex::new(Unconfirmed::default());
    let writer = async {
        let mut written = RecentIds::new(WRITTEN_IDS);
        // The welcome, then the waiting replies oldest first, then what comes live.
        for event in std::iter::once(welcome).chain(waiting) {
            if write(&mut sink, &mut written, &unconfirmed, event)
                .await
                .is_err()
            {
                // The socket is gone; unwritten replies stay in the mailbox for next time.
                rx.close();
                return;
            }
        }
        while let Some(event) = rx.recv().await {
            if write(&mut sink, &mut written, &unconfirmed, event)
                .await
                .is_err()
            {
                rx.close();
                return;
            }
        }
        let _ = sink.send(WsMessage::Close(None)).await;
    };
    let reader = async {
        loop {
            let frame = tokio::select! {
                _ = state.shutdown.cancelled() => break,
                f = stream.next() => f,
            };
            let text = match frame {
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(WsMessage::Pong(payload))) => {
                    if let Some(answered) = ping_number(&payload) {
                        let confirmed = unconfirmed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .confirmed(answered);
                        acknowledge(&web, &visitor_id, confirmed).await;
                    }
                    continue;
                }
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            };
            let answer = handle_frame(&state, &web, &visitor_id, text.as_str()).await;
            let accepted = matches!(
                answer,
                VisitorEvent::Ack {
                    duplicate: false,
                    ..
                }
            );
            if tx.send(answer).await.is_err() {
                break;
            }
            if accepted {
                // A message may have opened a conversation, an identify merged it into another:
                // the queue positions look it up again (after the `ack`, so a place the lookup
                // finds comes after it).
                web.sessions().conversation_may_have_changed(&visitor_id);
            }
        }
        // Unregister first so no new reply is handed to this socket, then let the writer finish.
        drop(guard);
        drop(tx);
    };
    // The reader ends the session; the writer then flushes and closes.
    tokio::join!(reader, writer);
    gauge.dec();
}

/// The visitor's history for the welcome; empty, after a warning, when it cannot be read (the
/// session goes on without it).
async fn history_or_empty(
    state: &HttpState,
    web: &WebConnector,
    visitor_id: &str,
) -> Vec<HistoryMessage> {
    let read = async {
        let key = web.visitor_key(visitor_id)?;
        Ok::<_, ConnectorError>(visitor_history(&**state.ops.store(), web.channel(), &key).await?)
    };
    read.await.unwrap_or_else(|e| {
        tracing::warn!(channel = %web.channel().id, error = %e, "could not read a visitor's history");
        count_read_failure(state, "history");
        Vec::new()
    })
}

/// Counts a store read a new session went on without (`history`, `mailbox`).
fn count_read_failure(state: &HttpState, read: &str) {
    state
        .metrics
        .visitor_read_failures
        .with_label_values(&[read])
        .inc();
}

/// Acknowledges `replies` in the visitor's mailbox: the visitor's side has them.
async fn acknowledge(web: &WebConnector, visitor_id: &str, replies: Vec<String>) {
    if replies.is_empty() {
        return;
    }
    if let Err(e) = web.delivered(visitor_id, &replies).await {
        // They stay in the mailbox: the visitor may see them again next time (the page skips
        // ids it shows already).
        tracing::debug!(error = %e, "could not acknowledge delivered replies");
    }
}

/// Writes one frame. A reply is written once per socket, whichever way it came, then a ping
/// whose pong confirms it (see the module's documentation). `Err` when the socket is gone.
async fn write<S>(
    sink: &mut S,
    written: &mut RecentIds,
    unconfirmed: &Mutex<Unconfirmed>,
    event: VisitorEvent,
) -> Result<(), ()>
where
    S: Sink<WsMessage> + Unpin,
{
    let reply_id = match &event {
        VisitorEvent::Message { id, .. } => Some(id.clone()),
        _ => None,
    };
    if reply_id.as_deref().is_some_and(|id| written.contains(id)) {
        return Ok(());
    }
    let Ok(text) = serde_json::to_string(&event) else {
        return Ok(());
    };
    sink.send(WsMessage::Text(text.into()))
        .await
        .map_err(drop)?;
    if let Some(id) = reply_id {
        written.insert(&id);
        let ping = unconfirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .written(id);
        sink.send(WsMessage::Ping(ping.to_be_bytes().to_vec().into()))
            .await
            .map_err(drop)?;
    }
    Ok(())
}

async fn handle_frame(
    state: &HttpState,
    web: &Arc<WebConnector>,
    visitor_id: &str,
    text: &str,
) -> VisitorEvent {
    let request: VisitorRequest = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.count_inbound(
                &web.channel().id,
                switchyard_core::metrics::InboundOutcome::Malformed,
            );
            return VisitorEvent::Error {
                client_id: None,
                code: "malformed".into(),
                message: format!("invalid frame: {e}"),
            };
        }
    };
    let client_id = match &request {
        VisitorRequest::Message { client_id, .. } | VisitorRequest::Identify { client_id, .. } => {
            client_id.clone()
        }
        VisitorRequest::Ping => return VisitorEvent::Pong,
    };
    let inbound = WebInbound {
        visitor_id: visitor_id.to_owned(),
        request,
    };
    let result = match web.normalize(inbound, switchyard_core::time::now()) {
        Ok(envelopes) => state.ingress.publish_all(&**web, envelopes).await,
        Err(e) => {
            state
                .metrics
                .count_inbound(&web.channel().id, crate::ingress::outcome_of(&e));
            Err(e)
        }
    };
    match result {
        Ok(accepted) => match accepted.into_iter().next() {
            Some(a) => VisitorEvent::Ack {
                client_id,
                id: a.id,
                duplicate: a.duplicate,
            },
            None => VisitorEvent::Error {
                client_id: Some(client_id),
                code: "ignored".into(),
                message: "nothing to route".into(),
            },
        },
        Err(e) => VisitorEvent::Error {
            client_id: Some(client_id),
            code: error_code(&e).into(),
            message: e.to_string(),
        },
    }
}

fn error_code(e: &ConnectorError) -> &'static str {
    e.code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pong_confirms_the_replies_written_before_its_ping_and_no_later_ones() {
        let mut unconfirmed = Unconfirmed::default();
        let first = unconfirmed.written("r1".into());
        let second = unconfirmed.written("r2".into());
        let third = unconfirmed.written("r3".into());
        assert_eq!((first, second, third), (0, 1, 2));
        // Pongs may be lost or coalesced: the latest answered ping confirms all before it.
        assert_eq!(unconfirmed.confirmed(second), ["r1", "r2"]);
        assert!(unconfirmed.confirmed(second).is_empty(), "confirmed once");
        assert_eq!(unconfirmed.confirmed(third), ["r3"]);
        assert_eq!(ping_number(&7u64.to_be_bytes()), Some(7));
        assert_eq!(
            ping_number(b"not ours"),
            Some(u64::from_be_bytes(*b"not ours"))
        );
        assert_eq!(ping_number(b"short"), None);
    }
}
