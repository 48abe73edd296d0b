//! The web channel (kind `web`): visitors chat over a WebSocket at `/v1/channels/{id}/ws`.
//!
//! A visitor gets an anonymous id (weak identity `web_visitor:{channel}:{id}`) carried in a
//! signed visitor token, so nobody can resume someone else's session. A site may identify the
//! visitor with `user_hash` = hex HMAC-SHA256(channel secret, user id) (the pattern of
//! Chatwoot's identity validation); that links the strong key `web_user:{channel}:{user id}`
//! and merges the profiles.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::{ChannelRef, Content, Direction, Envelope, Sender, new_id};
use switchyard_core::identity::IdentityKey;
use switchyard_core::protocol::{VisitorEvent, VisitorRequest};
use tokio::sync::mpsc;

use crate::signature::{constant_time_eq, hmac_sha256_hex};
use crate::{
    Accepted, Connector, ConnectorContext, ConnectorError, HttpReply, InboundRequest, SendReceipt,
};

/// Connector kind.
pub const KIND: &str = "web";
/// Configuration keys besides the common ones.
pub const KEYS: &[&str] = &["secret"];
/// Header carrying the visitor token on HTTP requests to the web channel.
pub const VISITOR_TOKEN_HEADER: &str = "x-switchyard-visitor-token";
/// Name of the `Content::Event` that identifies a visitor; the router links it explicitly.
pub const IDENTIFY_EVENT: &str = "identify";
/// Replies kept for a visitor who is not connected, delivered when they return.
const MAILBOX_LIMIT: usize = 100;
/// Visitors with a mailbox at most (oldest mailboxes are dropped first).
const MAILBOX_VISITORS: usize = 100_000;

/// One visitor request with the visitor it came from (after the token was verified).
#[derive(Debug, Clone)]
pub struct WebInbound {
    /// The verified visitor id.
    pub visitor_id: String,
    /// What the visitor sent.
    pub request: VisitorRequest,
}

/// The web channel connector.
pub struct WebConnector {
    channel: ChannelRef,
    secret: Vec<u8>,
    identify_enabled: bool,
    sessions: Arc<VisitorSessions>,
}

impl WebConnector {
    /// Builds the connector from its `[[channels]]` entry. Without a `secret`, visitor tokens
    /// are signed with a key made at start (they last until restart) and identify is refused.
    pub fn new(
        settings: &ChannelSettings,
        _ctx: &ConnectorContext,
    ) -> Result<Self, ConnectorError> {
        let configured = settings
            .secret("secret")
            .map_err(|e| ConnectorError::Config(e.to_string()))?;
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
        Ok(WebConnector {
            channel: ChannelRef {
                kind: KIND.to_owned(),
                id: settings.id.clone(),
            },
            secret,
            identify_enabled,
            sessions: Arc::new(VisitorSessions::default()),
        })
    }

    /// Connected visitors of this channel.
    pub fn sessions(&self) -> &Arc<VisitorSessions> {
        &self.sessions
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
        Envelope {
            id: new_id(),
            tenant: switchyard_core::envelope::DEFAULT_TENANT.to_owned(),
            direction: Direction::Inbound,
            channel: self.channel.clone(),
            sender: Sender {
                external_id: visitor_id.to_owned(),
                scope: self.channel.id.clone(),
                display_name,
                identities,
            },
            customer_id: None,
            conversation_id: None,
            sent_at: now,
            received_at: now,
            dedupe_key: format!("{KIND}:{}:{visitor_id}:{client_id}", self.channel.id),
            content,
            reply_to: None,
            agent_id: None,
            raw: None,
        }
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
        let visitor_key = self.visitor_key(&inbound.visitor_id)?;
        match inbound.request {
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
        }
    }

    fn accepted(&self, accepted: &[Accepted]) -> HttpReply {
        crate::accepted_json(accepted)
    }

    async fn send(&self, message: &Envelope) -> Result<SendReceipt, ConnectorError> {
        let event = VisitorEvent::Message {
            id: message.id.clone(),
            content: message.content.clone(),
            sent_at: message.sent_at,
            agent_id: message.agent_id.clone(),
        };
        self.sessions.deliver(&message.sender.external_id, event);
        Ok(SendReceipt {
            channel_message_id: Some(message.id.clone()),
        })
    }
}

/// Connected visitor sockets of one web channel, and mailboxes for visitors who are away.
#[derive(Default)]
pub struct VisitorSessions {
    inner: Mutex<SessionsInner>,
}

#[derive(Default)]
struct SessionsInner {
    next_session: u64,
    sockets: HashMap<String, Vec<(u64, mpsc::Sender<VisitorEvent>)>>,
    mailboxes: HashMap<String, VecDeque<VisitorEvent>>,
    mailbox_order: VecDeque<String>,
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
        if let Some(list) = inner.sockets.get_mut(&self.visitor_id) {
            list.retain(|(id, _)| *id != self.session);
            if list.is_empty() {
                inner.sockets.remove(&self.visitor_id);
            }
        }
    }
}

impl VisitorSessions {
    fn lock(&self) -> MutexGuard<'_, SessionsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a socket of `visitor_id`; returns its guard and the replies that waited for it.
    pub fn register(
        self: &Arc<Self>,
        visitor_id: &str,
        tx: mpsc::Sender<VisitorEvent>,
    ) -> (SessionGuard, Vec<VisitorEvent>) {
        let mut inner = self.lock();
        inner.next_session += 1;
        let session = inner.next_session;
        inner
            .sockets
            .entry(visitor_id.to_owned())
            .or_default()
            .push((session, tx));
        let waiting = inner
            .mailboxes
            .remove(visitor_id)
            .map(Vec::from)
            .unwrap_or_default();
        (
            SessionGuard {
                sessions: Arc::clone(self),
                visitor_id: visitor_id.to_owned(),
                session,
            },
            waiting,
        )
    }

    /// Sends an event to every socket of a visitor, or keeps it for when they come back.
    pub fn deliver(&self, visitor_id: &str, event: VisitorEvent) {
        let mut inner = self.lock();
        let mut delivered = false;
        if let Some(list) = inner.sockets.get(visitor_id) {
            for (_, tx) in list {
                delivered |= tx.try_send(event.clone()).is_ok();
            }
        }
        if !delivered {
            Self::to_mailbox(&mut inner, visitor_id, event);
        }
    }

    /// Keeps a reply for a visitor whose socket failed while sending it.
    pub fn keep_for_later(&self, visitor_id: &str, event: VisitorEvent) {
        if matches!(event, VisitorEvent::Message { .. }) {
            let mut inner = self.lock();
            Self::to_mailbox(&mut inner, visitor_id, event);
        }
    }

    fn to_mailbox(inner: &mut SessionsInner, visitor_id: &str, event: VisitorEvent) {
        if !inner.mailboxes.contains_key(visitor_id) {
            inner.mailbox_order.push_back(visitor_id.to_owned());
            if inner.mailbox_order.len() > MAILBOX_VISITORS
                && let Some(oldest) = inner.mailbox_order.pop_front()
            {
                inner.mailboxes.remove(&oldest);
            }
        }
        let mailbox = inner.mailboxes.entry(visitor_id.to_owned()).or_default();
        mailbox.push_back(event);
        if mailbox.len() > MAILBOX_LIMIT {
            mailbox.pop_front();
        }
    }

    /// Number of visitors with at least one open socket.
    pub fn connected(&self) -> usize {
        self.lock().sockets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(secret: Option<&str>) -> WebConnector {
        let mut options = std::collections::BTreeMap::new();
        if let Some(s) = secret {
            options.insert("secret".to_owned(), serde_json::Value::String(s.to_owned()));
        }
        let settings = ChannelSettings {
            id: "web".into(),
            kind: KIND.into(),
            pool: "default".into(),
            api_base: None,
            options,
        };
        WebConnector::new(&settings, &ConnectorContext::default()).unwrap()
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

    #[tokio::test]
    async fn replies_wait_in_a_mailbox_until_the_visitor_connects() {
        let web = connector(None);
        let sessions = Arc::clone(web.sessions());
        let at = Utc::now();
        let reply = |text: &str| VisitorEvent::Message {
            id: text.into(),
            content: Content::Text { text: text.into() },
            sent_at: at,
            agent_id: None,
        };
        sessions.deliver("v1", reply("early"));
        let (tx, mut rx) = mpsc::channel(8);
        let (guard, waiting) = sessions.register("v1", tx);
        assert_eq!(waiting, vec![reply("early")]);
        sessions.deliver("v1", reply("live"));
        assert_eq!(rx.recv().await, Some(reply("live")));
        drop(guard);
        assert_eq!(sessions.connected(), 0);
    }
}
