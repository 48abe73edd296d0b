//! The web channel (kind `web`): visitors chat over a WebSocket at `/v1/channels/{id}/ws`.
//!
//! A visitor gets an anonymous id (weak identity `web_visitor:{channel}:{id}`) carried in a
//! signed visitor token, so nobody can resume someone else's session. A site may identify the
//! visitor with `user_hash` = hex HMAC-SHA256(channel secret, user id) (the pattern of
//! Chatwoot's identity validation); that links the strong key `web_user:{channel}:{user id}`
//! and merges the profiles.
//!
//! Replies work across several gateways behind a load balancer. [`WebConnector::send`] (run by
//! whichever gateway consumed the reply from `switchyard.outbound.web`) first appends the reply
//! to the visitor's mailbox in the shared [`Store`], then hands it to the visitor's sockets on
//! this process, and announces it on the bus ([`WEB_EXCHANGE`], routing key
//! [`web_reply_key`]). Every gateway holding a socket of this channel subscribes to those
//! announcements ([`WebConnector::run_push`], lazily, once the first visitor connects) and pushes
//! the reply to the visitor's sockets there. A socket that has written a reply acknowledges it
//! in the mailbox; a visitor who (re)connects to any gateway first gets what is still in their
//! mailbox, oldest first. Delivery is at least once: a socket skips ids it already wrote, and
//! the visitor page ignores ids it already shows.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchyard_core::bus::topology::{WEB_EXCHANGE, web_reply_key};
use switchyard_core::bus::{Bus, Message};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::{ChannelRef, Content, Envelope, Sender};
use switchyard_core::identity::IdentityKey;
use switchyard_core::protocol::{VisitorEvent, VisitorRequest};
use switchyard_core::store::Store;
use tokio::sync::{mpsc, watch};

use crate::signature::{constant_time_eq, hmac_sha256_hex};
use crate::{
    Accepted, Connector, ConnectorContext, ConnectorError, HttpReply, InboundRequest, RawPolicy,
    SendReceipt,
};

/// Connector kind.
pub const KIND: &str = "web";
/// Configuration keys besides the common ones.
pub const KEYS: &[&str] = &["secret", QUEUE_POSITION_SECS];
/// The key of how often, in seconds, visitors whose conversation waits in a queue are told
/// their place in it (0: never).
pub const QUEUE_POSITION_SECS: &str = "queue_position_secs";
/// [`QUEUE_POSITION_SECS`] when it is not configured.
pub const DEFAULT_QUEUE_POSITION_SECS: u64 = 3;
/// The largest [`QUEUE_POSITION_SECS`] accepted: a position older than this tells little.
pub const MAX_QUEUE_POSITION_SECS: u64 = 300;
/// Header carrying the visitor token on HTTP requests to the web channel.
pub const VISITOR_TOKEN_HEADER: &str = "x-switchyard-visitor-token";
/// Name of the `Content::Event` that identifies a visitor; the router links it explicitly.
pub const IDENTIFY_EVENT: &str = "identify";
/// Replies kept per visitor until a socket of theirs wrote them (the oldest give way first).
pub const MAILBOX_LIMIT: usize = 100;
/// How long a visitor's mailbox is kept after the latest reply put in it.
pub const MAILBOX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Reply notifications a gateway's subscriber takes at a time.
const PUSH_PREFETCH: u16 = 256;

/// One visitor request with the visitor it came from (after the token was verified).
#[derive(Debug, Clone)]
pub struct WebInbound {
    /// The verified visitor id.
    pub visitor_id: String,
    /// What the visitor sent.
    pub request: VisitorRequest,
}

/// What a gateway announces on [`WEB_EXCHANGE`] after storing a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ReplyNotice {
    /// The announcing connector instance (it delivered to its own sockets already).
    origin: String,
    /// The visitor the reply is for.
    visitor_id: String,
    /// The frame to push.
    event: VisitorEvent,
}

/// The web channel connector.
pub struct WebConnector {
    channel: ChannelRef,
    secret: Vec<u8>,
    identify_enabled: bool,
    sessions: Arc<VisitorSessions>,
    store: Arc<dyn Store>,
    /// Tells this instance's own announcements apart from other gateways'.
    instance: String,
    /// Where replies are announced to the other gateways (none: this process only).
    bus: OnceLock<Arc<dyn Bus>>,
    /// Whether [`WebConnector::run_push`] receives announcements.
    push_live: watch::Sender<bool>,
    /// Whether envelopes keep the visitor's frame in `raw`.
    raw: RawPolicy,
    /// How often visitors are told their place in the queue; `None`: never.
    queue_position_every: Option<Duration>,
}

impl WebConnector {
    /// Builds the connector from its `[[channels]]` entry. Without a `secret`, visitor tokens
    /// are signed with a key made at start (they last until restart and are valid only on this
    /// process) and identify is refused. Mailboxes live in `ctx.store`.
    pub fn new(settings: &ChannelSettings, ctx: &ConnectorContext) -> Result<Self, ConnectorError> {
        let configured = settings.secret("secret")?;
        let (secret, identify_enabled) = match configured {
            Some(s) if s.len() >= 16 => (s.into_bytes(), true),
            Some(_) => {
                return Err(ConnectorError::Config(format!(
                    "channels.{}.secret must be at least 16 bytes",
                    settings.id
                )));
            }
            None => (rand::random::<[u8; 32]>().to_vec(), false),
        };
        let queue_position_secs = settings.seconds(
            QUEUE_POSITION_SECS,
            DEFAULT_QUEUE_POSITION_SECS,
            MAX_QUEUE_POSITION_SECS,
        )?;
        Ok(WebConnector {
            channel: ChannelRef {
                kind: KIND.to_owned(),
                id: settings.id.clone(),
            },
            secret,
            identify_enabled,
            sessions: Arc::new(VisitorSessions::default()),
            store: Arc::clone(&ctx.store),
            instance: ulid::Ulid::new().to_string(),
            bus: OnceLock::new(),
            push_live: watch::Sender::new(false),
            raw: RawPolicy::from_settings(settings)?,
            queue_position_every: (queue_position_secs > 0)
                .then(|| Duration::from_secs(queue_position_secs)),
        })
    }

    /// How often visitors whose conversation waits in a pool's queue are told their place in it
    /// (`queue_position_secs`); `None` when they are not.
    pub fn queue_position_every(&self) -> Option<Duration> {
        self.queue_position_every
    }

    /// Connected visitors of this channel.
    pub fn sessions(&self) -> &Arc<VisitorSessions> {
        &self.sessions
    }

    /// Whether visitor tokens are signed with a key made at start, because no `secret` is
    /// configured: such tokens are valid only on this process, so several gateways need a
    /// `secret`.
    pub fn signs_with_process_key(&self) -> bool {
        !self.identify_enabled
    }

    /// Announces replies on `bus` from now on, so gateways other than the sender push them to
    /// their visitor sockets (they run [`WebConnector::run_push`]). Called once, at start; a
    /// later call is ignored.
    pub fn attach_bus(&self, bus: Arc<dyn Bus>) {
        if self.bus.set(bus).is_err() {
            tracing::debug!(channel = %self.channel.id, "web channel already has a bus");
        }
    }

    /// Pushes replies announced by any gateway to this process's visitor sockets, until `stop`
    /// completes or the bus closes. Subscribes (a private queue on [`WEB_EXCHANGE`] bound to
    /// this channel's [`web_reply_key`]) only once the first visitor connects, so a gateway
    /// that serves no visitors receives nothing. Without an attached bus it just waits for
    /// `stop`.
    pub async fn run_push(
        self: Arc<Self>,
        stop: impl Future<Output = ()> + Send,
    ) -> Result<(), ConnectorError> {
        let mut stop = std::pin::pin!(stop);
        let Some(bus) = self.bus.get().cloned() else {
            stop.await;
            return Ok(());
        };
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = self.sessions.until_connected() => {}
        }
        let key = web_reply_key(&self.channel.id);
        let queue = bus
            .declare_subscriber(WEB_EXCHANGE, &[key.as_str()])
            .await
            .map_err(|e| ConnectorError::Transient(format!("subscribing to replies: {e}")))?;
        let mut deliveries = bus
            .consume(&queue, PUSH_PREFETCH)
            .await
            .map_err(|e| ConnectorError::Transient(format!("consuming replies: {e}")))?;
        self.push_live.send_replace(true);
        loop {
            let delivery = tokio::select! {
                _ = &mut stop => break,
                d = deliveries.next() => d,
            };
            let Some(delivery) = delivery else { break };
            match serde_json::from_slice::<ReplyNotice>(&delivery.message.body) {
                // Our own: `send` handed it to this process's sockets already.
                Ok(notice) if notice.origin == self.instance => {}
                Ok(notice) => {
                    self.sessions.deliver(&notice.visitor_id, notice.event);
                }
                Err(e) => tracing::warn!(
                    channel = %self.channel.id,
                    error = %e,
                    "undecodable web reply notification ignored"
                ),
            }
            if let Err(e) = delivery.ack().await {
                tracing::debug!(error = %e, "could not ack a web reply notification");
            }
        }
        self.push_live.send_replace(false);
        Ok(())
    }

    /// Returns once this process receives reply announcements, or at once when no bus is
    /// attached; a visitor socket waits for it before reading its mailbox, so no reply falls
    /// between the two.
    pub async fn push_ready(&self) {
        if self.bus.get().is_none() {
            return;
        }
        let mut live = self.push_live.subscribe();
        let _ = live.wait_for(|live| *live).await;
    }

    /// The replies waiting in the visitor's mailbox, oldest first.
    pub async fn undelivered(&self, visitor_id: &str) -> Result<Vec<VisitorEvent>, ConnectorError> {
        let items = self
            .store
            .mailbox_read(&self.mailbox_key(visitor_id))
            .await?;
        let mut events = Vec::with_capacity(items.len());
        let mut undecodable = Vec::new();
        for item in items {
            match serde_json::from_str::<VisitorEvent>(&item.body) {
                Ok(event) => events.push(event),
                Err(e) => {
                    tracing::warn!(
                        channel = %self.channel.id,
                        id = %item.id,
                        error = %e,
                        "undecodable reply in a visitor mailbox dropped"
                    );
                    undecodable.push(item.id);
                }
            }
        }
        if !undecodable.is_empty() {
            self.delivered(visitor_id, &undecodable).await?;
        }
        Ok(events)
    }

    /// Removes replies a socket of the visitor has written from their mailbox.
    pub async fn delivered(&self, visitor_id: &str, ids: &[String]) -> Result<(), ConnectorError> {
        self.store
            .mailbox_ack(&self.mailbox_key(visitor_id), ids)
            .await
            .map_err(ConnectorError::from)
    }

    /// The store mailbox of a visitor of this channel.
    fn mailbox_key(&self, visitor_id: &str) -> String {
        format!("{KIND}:{}:{visitor_id}", self.channel.id)
    }

    /// A new anonymous visitor id with its token.
    pub fn new_visitor(&self) -> (String, String) {
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let token = self.visitor_token(&id);
        (id, token)
    }

    /// The signed token of a visitor id: `{id}.{mac}`.
    pub fn visitor_token(&self, visitor_id: &str) -> String {
        let mac = hmac_sha256_hex(&self.secret, &[b"visitor:", visitor_id.as_bytes()]);
        format!("{visitor_id}.{}", &mac[..32])
    }

    /// The visitor id of a valid token.
    pub fn verify_visitor_token(&self, token: &str) -> Result<String, ConnectorError> {
        let (id, _) = token
            .split_once('.')
            .ok_or_else(|| ConnectorError::Unauthorized("malformed visitor token".into()))?;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConnectorError::Unauthorized(
                "malformed visitor token".into(),
            ));
        }
        if !constant_time_eq(token, &self.visitor_token(id)) {
            return Err(ConnectorError::Unauthorized(
                "visitor token signature does not match".into(),
            ));
        }
        Ok(id.to_owned())
    }

    /// The weak identity key of a visitor.
    pub fn visitor_key(&self, visitor_id: &str) -> Result<IdentityKey, ConnectorError> {
        IdentityKey::new("web_visitor", &self.channel.id, visitor_id)
            .map_err(|e| ConnectorError::Malformed(e.to_string()))
    }

    fn envelope(
        &self,
        visitor_id: &str,
        client_id: &str,
        identities: Vec<IdentityKey>,
        display_name: Option<String>,
        content: Content,
        now: DateTime<Utc>,
    ) -> Envelope {
        Envelope::inbound(
            self.channel.clone(),
            Sender {
                external_id: visitor_id.to_owned(),
                scope: self.channel.id.clone(),
                display_name,
                identities,
            },
            content,
            format!("{KIND}:{}:{visitor_id}:{client_id}", self.channel.id),
            now,
            now,
        )
    }
}

fn check_client_id(client_id: &str) -> Result<(), ConnectorError> {
    if client_id.is_empty() || client_id.len() > 128 {
        return Err(ConnectorError::Malformed(
            "client_id must be 1 to 128 bytes".into(),
        ));
    }
    Ok(())
}

#[async_trait]
impl Connector for WebConnector {
    type Inbound = WebInbound;

    fn channel(&self) -> &ChannelRef {
        &self.channel
    }

    /// HTTP requests to the web channel carry the visitor token in a header.
    fn verify(&self, req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
        let token = req.header(VISITOR_TOKEN_HEADER).ok_or_else(|| {
            ConnectorError::Unauthorized(format!("missing `{VISITOR_TOKEN_HEADER}` header"))
        })?;
        self.verify_visitor_token(token).map(|_| ())
    }

    fn decode(&self, req: &InboundRequest<'_>) -> Result<WebInbound, ConnectorError> {
        let token = req.header(VISITOR_TOKEN_HEADER).unwrap_or_default();
        let visitor_id = self.verify_visitor_token(token)?;
        let request = serde_json::from_slice(req.body)
            .map_err(|e| ConnectorError::Malformed(format!("invalid visitor request: {e}")))?;
        Ok(WebInbound {
            visitor_id,
            request,
        })
    }

    fn normalize(
        &self,
        inbound: WebInbound,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, ConnectorError> {
        // The frame, as the visitor sent it (every field is in the request type).
        let frame = self
            .raw
            .capture(|| match serde_json::to_value(&inbound.request) {
                Ok(serde_json::Value::Object(frame)) => Some(frame),
                _ => None,
            });
        let visitor_key = self.visitor_key(&inbound.visitor_id)?;
        let envelopes: Result<Vec<Envelope>, ConnectorError> = match inbound.request {
            VisitorRequest::Message { client_id, content } => {
                check_client_id(&client_id)?;
                if let Content::Text { text } = &content
                    && (text.trim().is_empty() || text.len() > 16 * 1024)
                {
                    return Err(ConnectorError::Malformed(
                        "text must be 1 byte to 16 KiB and not blank".into(),
                    ));
                }
                Ok(vec![self.envelope(
                    &inbound.visitor_id,
                    &client_id,
                    vec![visitor_key],
                    None,
                    content,
                    received_at,
                )])
            }
            VisitorRequest::Identify {
                client_id,
                user_id,
                user_hash,
                name,
                identities,
            } => {
                check_client_id(&client_id)?;
                if !self.identify_enabled {
                    return Err(ConnectorError::Unauthorized(format!(
                        "identify needs channels.{}.secret to be configured",
                        self.channel.id
                    )));
                }
                let expected = hmac_sha256_hex(&self.secret, &[user_id.as_bytes()]);
                if !constant_time_eq(&user_hash.to_ascii_lowercase(), &expected) {
                    return Err(ConnectorError::Unauthorized(
                        "user_hash does not match user_id".into(),
                    ));
                }
                let user_key = IdentityKey::new("web_user", &self.channel.id, &user_id)
                    .map_err(|e| ConnectorError::Malformed(e.to_string()))?;
                let mut keys = vec![visitor_key, user_key];
                for key in identities {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                let mut data = serde_json::Map::new();
                data.insert("user_id".into(), serde_json::Value::String(user_id));
                Ok(vec![self.envelope(
                    &inbound.visitor_id,
                    &client_id,
                    keys,
                    name,
                    Content::Event {
                        name: IDENTIFY_EVENT.to_owned(),
                        data,
                    },
                    received_at,
                )])
            }
            VisitorRequest::Ping => Ok(Vec::new()),
        };
        let mut envelopes = envelopes?;
        self.raw.attach(&mut envelopes, || frame);
        Ok(envelopes)
    }

    fn accepted(&self, accepted: &[Accepted]) -> HttpReply {
        crate::accepted_json(accepted)
    }

    /// The visitor `web_visitor:{channel id}:{visitor id}`: a message to them waits in their
    /// mailbox until a tab of theirs connects.
    fn recipient_of(&self, identities: &[IdentityKey]) -> Option<Sender> {
        crate::recipient_by_key(identities, "web_visitor", Some(&self.channel.id), |_| {
            self.channel.id.clone()
        })
    }

    fn starts_conversations(&self) -> bool {
        true
    }

    /// Keeps the reply in the visitor's mailbox in the store (once per envelope id, so a
    /// redelivered reply is not kept twice), hands it to the visitor's sockets on this process
    /// and announces it to the other gateways. A `Transient` error (store or bus down) makes the
    /// outbound worker retry the whole send.
    async fn send(&self, message: &Envelope) -> Result<SendReceipt, ConnectorError> {
        let visitor_id = message.sender.external_id.as_str();
        let event = VisitorEvent::Message {
            id: message.id.clone(),
            content: Box::new(message.content.clone()),
            sent_at: message.sent_at,
            agent_id: message.agent_id.clone(),
        };
        let body = serde_json::to_string(&event)
            .map_err(|e| ConnectorError::Malformed(format!("cannot encode the reply: {e}")))?;
        self.store
            .mailbox_push(
                &self.mailbox_key(visitor_id),
                &message.id,
                &body,
                MAILBOX_LIMIT,
                MAILBOX_TTL,
            )
            .await?;
        self.sessions.deliver(visitor_id, event.clone());
        if let Some(bus) = self.bus.get() {
            let notice = ReplyNotice {
                origin: self.instance.clone(),
                visitor_id: visitor_id.to_owned(),
                event,
            };
            let body = serde_json::to_vec(&notice).map_err(|e| {
                ConnectorError::Malformed(format!("cannot encode the notification: {e}"))
            })?;
            bus.publish_events(
                WEB_EXCHANGE,
                vec![(
                    web_reply_key(&self.channel.id),
                    Message::new(message.id.clone(), body),
                )],
            )
            .await
            .map_err(|e| {
                ConnectorError::Transient(format!(
                    "reply kept for the visitor, but other gateways were not told: {e}"
                ))
            })?;
        }
        Ok(SendReceipt {
            channel_message_id: Some(message.id.clone()),
        })
    }
}

/// Connected visitor sockets of one web channel on this process.
pub struct VisitorSessions {
    inner: Mutex<SessionsInner>,
    /// How many visitors have at least one open socket; wakes [`WebConnector::run_push`] and
    /// the queue positions when the first connects.
    connected: watch::Sender<usize>,
}

impl Default for VisitorSessions {
    fn default() -> Self {
        VisitorSessions {
            inner: Mutex::default(),
            connected: watch::Sender::new(0),
        }
    }
}

#[derive(Default)]
struct SessionsInner {
    next_session: u64,
    visitors: HashMap<String, ConnectedVisitor>,
}

/// The open sockets of one visitor.
#[derive(Default)]
struct ConnectedVisitor {
    sockets: Vec<(u64, mpsc::Sender<VisitorEvent>)>,
    /// Bumped by [`VisitorSessions::conversation_may_have_changed`].
    changes: u64,
}

/// One open visitor socket, as [`VisitorSessions::sockets`] lists it.
#[derive(Debug, Clone)]
pub struct VisitorSocket {
    /// The socket's number, unique on this channel in this process.
    pub session: u64,
    /// The visitor it belongs to.
    pub visitor_id: String,
    /// A count [`VisitorSessions::conversation_may_have_changed`] moves on: when it moved, the
    /// visitor's conversation is worth looking up again. It starts over at 0 when the visitor
    /// has no socket left.
    pub changes: u64,
    /// Frames for the socket.
    pub tx: mpsc::Sender<VisitorEvent>,
}

/// Unregisters a visitor socket when dropped.
pub struct SessionGuard {
    sessions: Arc<VisitorSessions>,
    visitor_id: String,
    session: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut inner = self.sessions.lock();
        if let Some(visitor) = inner.visitors.get_mut(&self.visitor_id) {
            visitor.sockets.retain(|(id, _)| *id != self.session);
            if visitor.sockets.is_empty() {
                inner.visitors.remove(&self.visitor_id);
            }
        }
        // Told under the lock, so that concurrent changes are told in the order they happened.
        self.sessions.connected.send_replace(inner.visitors.len());
    }
}

impl VisitorSessions {
    fn lock(&self) -> MutexGuard<'_, SessionsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a socket of `visitor_id`: it gets the visitor's replies from now on, until the
    /// guard is dropped. Replies stored before are read with [`WebConnector::undelivered`].
    pub fn register(
        self: &Arc<Self>,
        visitor_id: &str,
        tx: mpsc::Sender<VisitorEvent>,
    ) -> SessionGuard {
        let mut inner = self.lock();
        inner.next_session += 1;
        let session = inner.next_session;
        inner
            .visitors
            .entry(visitor_id.to_owned())
            .or_default()
            .sockets
            .push((session, tx));
        self.connected.send_replace(inner.visitors.len());
        drop(inner);
        SessionGuard {
            sessions: Arc::clone(self),
            visitor_id: visitor_id.to_owned(),
            session,
        }
    }

    /// Sends an event to every socket of a visitor on this process; `true` if one took it. A
    /// socket whose buffer is full misses it (a reply stays in the mailbox until written).
    pub fn deliver(&self, visitor_id: &str, event: VisitorEvent) -> bool {
        let inner = self.lock();
        let mut delivered = false;
        let sockets = inner.visitors.get(visitor_id).map(|v| v.sockets.as_slice());
        for (_, tx) in sockets.into_iter().flatten() {
            delivered |= tx.try_send(event.clone()).is_ok();
        }
        delivered
    }

    /// Notes that the visitor did something that may open their conversation or make it
    /// another (a message, an identify that merges profiles): whoever follows it looks it up
    /// again ([`VisitorSocket::changes`]). Nothing happens for a visitor with no socket here.
    pub fn conversation_may_have_changed(&self, visitor_id: &str) {
        if let Some(visitor) = self.lock().visitors.get_mut(visitor_id) {
            visitor.changes += 1;
        }
    }

    /// Every open socket, in no particular order.
    pub fn sockets(&self) -> Vec<VisitorSocket> {
        let inner = self.lock();
        inner
            .visitors
            .iter()
            .flat_map(|(visitor_id, visitor)| {
                visitor.sockets.iter().map(|(session, tx)| VisitorSocket {
                    session: *session,
                    visitor_id: visitor_id.clone(),
                    changes: visitor.changes,
                    tx: tx.clone(),
                })
            })
            .collect()
    }

    /// Number of visitors with at least one open socket.
    pub fn connected(&self) -> usize {
        *self.connected.borrow()
    }

    /// Returns once at least one visitor has a socket open (at once if one has).
    pub async fn until_connected(&self) {
        let mut connected = self.connected.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = connected.wait_for(|n| *n > 0).await;
    }
}

/// The most recent ids a visitor socket wrote, so a reply that reaches it twice (from the
/// mailbox and live, or announced twice) is written once.
#[derive(Debug)]
pub struct RecentIds {
    capacity: usize,
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl RecentIds {
    /// Remembers at most `capacity` ids (at least 1), forgetting the oldest first.
    pub fn new(capacity: usize) -> Self {
        RecentIds {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            ids: HashSet::new(),
        }
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Remembers `id`; `false` if it was remembered already.
    pub fn insert(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::envelope::Direction;
    use tokio::sync::Notify;

    fn connector(secret: Option<&str>) -> WebConnector {
        let options = secret.map(|s| ("secret", serde_json::Value::String(s.to_owned())));
        connector_with(options).unwrap()
    }

    /// A `web` channel with these keys besides the common ones.
    fn connector_with(
        options: impl IntoIterator<Item = (&'static str, serde_json::Value)>,
    ) -> Result<WebConnector, ConnectorError> {
        let settings = ChannelSettings {
            id: "web".into(),
            kind: KIND.into(),
            pool: "default".into(),
            api_base: None,
            options: options
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        };
        WebConnector::new(&settings, &ConnectorContext::default())
    }

    #[test]
    fn visitor_tokens_verify_and_resist_forgery() {
        let web = connector(None);
        let (id, token) = web.new_visitor();
        assert_eq!(web.verify_visitor_token(&token).unwrap(), id);
        let forged = format!("{}.{}", "someoneelse", &token[token.len() - 32..]);
        assert!(web.verify_visitor_token(&forged).is_err());
        assert!(web.verify_visitor_token("garbage").is_err());
        let other = connector(None);
        assert!(
            other.verify_visitor_token(&token).is_err(),
            "keys differ per process"
        );
    }

    #[test]
    fn identify_requires_a_matching_user_hash() {
        let web = connector(Some("0123456789abcdef-web-secret"));
        let (vid, _) = web.new_visitor();
        let identify = |hash: String| {
            web.normalize(
                WebInbound {
                    visitor_id: vid.clone(),
                    request: VisitorRequest::Identify {
                        client_id: "c1".into(),
                        user_id: "42".into(),
                        user_hash: hash,
                        name: Some("Li Lei".into()),
                        identities: vec![],
                    },
                },
                Utc::now(),
            )
        };
        let good = hmac_sha256_hex(b"0123456789abcdef-web-secret", &[b"42"]);
        let env = identify(good).unwrap().remove(0);
        let keys: Vec<&str> = env.sender.identities.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [format!("web_visitor:web:{vid}").as_str(), "web_user:web:42"]
        );
        assert!(matches!(env.content, Content::Event { ref name, .. } if name == IDENTIFY_EVENT));
        assert!(matches!(
            identify("00".repeat(32)),
            Err(ConnectorError::Unauthorized(_))
        ));
        assert!(
            connector(None)
                .normalize(
                    WebInbound {
                        visitor_id: vid.clone(),
                        request: VisitorRequest::Identify {
                            client_id: "c1".into(),
                            user_id: "42".into(),
                            user_hash: String::new(),
                            name: None,
                            identities: vec![],
                        },
                    },
                    Utc::now(),
                )
                .is_err()
        );
    }

    #[test]
    fn message_dedupe_key_is_stable_per_client_id() {
        let web = connector(None);
        let msg = |cid: &str| {
            web.normalize(
                WebInbound {
                    visitor_id: "v1".into(),
                    request: VisitorRequest::Message {
                        client_id: cid.into(),
                        content: Content::Text {
                            text: "你好 👋".into(),
                        },
                    },
                },
                Utc::now(),
            )
            .unwrap()
            .remove(0)
        };
        let (a, b, c) = (msg("c-1"), msg("c-1"), msg("c-2"));
        assert_eq!(a.dedupe_key, b.dedupe_key);
        assert_ne!(a.id, b.id);
        assert_ne!(a.dedupe_key, c.dedupe_key);
    }

    fn reply(id: &str, text: &str) -> Envelope {
        let mut env = connector(None).envelope(
            "v1",
            "c1",
            vec![],
            None,
            Content::Text { text: text.into() },
            Utc::now(),
        );
        env.id = id.to_owned();
        env.direction = Direction::Outbound;
        env.agent_id = Some("a1".into());
        env
    }

    fn frame_id(event: &VisitorEvent) -> &str {
        match event {
            VisitorEvent::Message { id, .. } => id,
            other => panic!("not a reply: {other:?}"),
        }
    }

    /// Ids of the replies waiting in `visitor`'s mailbox, oldest first.
    async fn undelivered_ids(connector: &WebConnector, visitor: &str) -> Vec<String> {
        connector
            .undelivered(visitor)
            .await
            .unwrap()
            .iter()
            .map(|e| frame_id(e).to_owned())
            .collect()
    }

    /// Two gateways' connectors of one channel over one store (and one bus, when given).
    fn pair(bus: Option<Arc<dyn Bus>>) -> (Arc<WebConnector>, Arc<WebConnector>) {
        let store: Arc<dyn Store> =
            Arc::new(switchyard_core::store::embedded::EmbeddedStore::new());
        let make = || {
            let mut options = std::collections::BTreeMap::new();
            options.insert(
                "secret".to_owned(),
                serde_json::Value::String("0123456789abcdef-web-secret".into()),
            );
            let settings = ChannelSettings {
                id: "web".into(),
                kind: KIND.into(),
                pool: "default".into(),
                api_base: None,
                options,
            };
            let web =
                WebConnector::new(&settings, &ConnectorContext::new(Arc::clone(&store))).unwrap();
            if let Some(bus) = &bus {
                web.attach_bus(Arc::clone(bus));
            }
            Arc::new(web)
        };
        (make(), make())
    }

    #[tokio::test]
    async fn replies_wait_in_the_shared_mailbox_until_a_socket_wrote_them() {
        let (a, b) = pair(None);
        assert!(!a.signs_with_process_key());
        assert_eq!(
            b.verify_visitor_token(&a.visitor_token("v1")).unwrap(),
            "v1",
            "gateways with one secret accept each other's tokens"
        );
        a.send(&reply("r1", "early")).await.unwrap();
        a.send(&reply("r2", "later")).await.unwrap();
        // A redelivered reply is kept once.
        a.send(&reply("r1", "early")).await.unwrap();
        let ids = undelivered_ids(&b, "v1").await;
        assert_eq!(
            ids,
            ["r1", "r2"],
            "the other gateway sees the mailbox, in order"
        );
        assert!(b.undelivered("v2").await.unwrap().is_empty());

        // A socket on this process gets a reply at once; it stays in the mailbox until written.
        let (tx, mut rx) = mpsc::channel(8);
        let guard = a.sessions().register("v1", tx);
        a.send(&reply("r3", "live")).await.unwrap();
        assert_eq!(rx.recv().await.as_ref().map(frame_id), Some("r3"));
        b.delivered("v1", &["r1".into(), "r3".into()])
            .await
            .unwrap();
        let left = undelivered_ids(&a, "v1").await;
        assert_eq!(left, ["r2"]);
        drop(guard);
        assert_eq!(a.sessions().connected(), 0);
    }

    #[tokio::test]
    async fn a_reply_sent_by_one_gateway_reaches_the_visitor_on_another() {
        use switchyard_core::bus::embedded::EmbeddedBus;
        use switchyard_core::bus::{Exchange, ExchangeKind, Topology};
        let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(Duration::from_secs(2)));
        bus.declare(&Topology {
            exchanges: vec![Exchange {
                name: WEB_EXCHANGE.into(),
                kind: ExchangeKind::Topic,
            }],
            queues: vec![],
        })
        .await
        .unwrap();
        let (a, b) = pair(Some(Arc::clone(&bus)));
        let stop = stop_signal();
        let pa = tokio::spawn(Arc::clone(&a).run_push(stop.clone().wait()));
        let pb = tokio::spawn(Arc::clone(&b).run_push(stop.clone().wait()));
        // Nobody connected: nobody subscribed, and the reply is simply kept.
        a.send(&reply("r0", "before")).await.unwrap();

        let (tx_b, mut rx_b) = mpsc::channel(8);
        let _on_b = b.sessions().register("v1", tx_b);
        tokio::time::timeout(Duration::from_secs(5), b.push_ready())
            .await
            .unwrap();
        let (tx_a, mut rx_a) = mpsc::channel(8);
        let _on_a = a.sessions().register("v1", tx_a);
        tokio::time::timeout(Duration::from_secs(5), a.push_ready())
            .await
            .unwrap();
        a.send(&reply("r1", "hello")).await.unwrap();
        let got_b = tokio::time::timeout(Duration::from_secs(5), rx_b.recv())
            .await
            .unwrap();
        assert_eq!(
            got_b.as_ref().map(frame_id),
            Some("r1"),
            "pushed across gateways"
        );
        assert_eq!(rx_a.recv().await.as_ref().map(frame_id), Some("r1"));
        // A's own announcement does not reach its socket a second time.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            rx_a.try_recv().is_err(),
            "the sender's socket got the reply twice"
        );
        assert!(rx_b.try_recv().is_err());
        // Both replies wait in the mailbox until a socket writes them.
        let ids = undelivered_ids(&b, "v1").await;
        assert_eq!(ids, ["r0", "r1"]);
        stop.fire();
        pa.await.unwrap().unwrap();
        pb.await.unwrap().unwrap();
    }

    /// A stop signal for `run_push` in tests (the connectors crate has no cancellation token).
    #[derive(Clone)]
    struct Stop(Arc<Notify>, Arc<std::sync::atomic::AtomicBool>);

    fn stop_signal() -> Stop {
        Stop(Arc::new(Notify::new()), Arc::default())
    }

    impl Stop {
        fn fire(&self) {
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
            self.0.notify_waiters();
        }

        async fn wait(self) {
            loop {
                let notified = self.0.notified();
                if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        }
    }

    #[test]
    fn queue_positions_are_every_3_seconds_unless_configured() {
        assert_eq!(
            connector(None).queue_position_every(),
            Some(Duration::from_secs(DEFAULT_QUEUE_POSITION_SECS))
        );
        let every = |value| {
            connector_with([(QUEUE_POSITION_SECS, value)]).map(|web| web.queue_position_every())
        };
        assert_eq!(every(1.into()).unwrap(), Some(Duration::from_secs(1)));
        assert_eq!(every(0.into()).unwrap(), None, "0 turns them off");
        let err = every((MAX_QUEUE_POSITION_SECS + 1).into()).unwrap_err();
        assert!(
            err.to_string().contains("channels.web.queue_position_secs"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn sessions_list_their_sockets_and_count_changes_per_visitor() {
        let sessions = Arc::new(VisitorSessions::default());
        let waiting = tokio::spawn({
            let sessions = Arc::clone(&sessions);
            async move { sessions.until_connected().await }
        });
        let (tx, _rx) = mpsc::channel(1);
        let first = sessions.register("v1", tx.clone());
        let second = sessions.register("v1", tx.clone());
        let other = sessions.register("v2", tx);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sessions.connected(), 2, "two visitors");

        sessions.conversation_may_have_changed("v1");
        sessions.conversation_may_have_changed("nobody");
        let mut listed: Vec<(u64, String, u64)> = sessions
            .sockets()
            .into_iter()
            .map(|s| (s.session, s.visitor_id, s.changes))
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            [
                (1, "v1".into(), 1),
                (2, "v1".into(), 1),
                (3, "v2".into(), 0)
            ],
            "every socket of the visitor sees the change"
        );

        drop(first);
        drop(second);
        assert_eq!(sessions.connected(), 1);
        let (tx, _rx) = mpsc::channel(1);
        let _back = sessions.register("v1", tx);
        let changes: Vec<u64> = sessions
            .sockets()
            .iter()
            .filter(|s| s.visitor_id == "v1")
            .map(|s| s.changes)
            .collect();
        assert_eq!(
            changes,
            [0],
            "starts over once the visitor had no socket left"
        );
        drop(other);
    }

    #[test]
    fn recent_ids_remember_a_bounded_window() {
        let mut ids = RecentIds::new(2);
        assert!(ids.insert("a"));
        assert!(!ids.insert("a"));
        assert!(ids.insert("b"));
        assert!(ids.insert("c"));
        assert!(!ids.contains("a"), "the oldest is forgotten");
        assert!(ids.contains("b") && ids.contains("c"));
    }
}
