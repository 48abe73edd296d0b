//! Switchyard connectors: the [`Connector`] trait a channel implements, one module per channel,
//! shared signature helpers, and the registry that builds connectors from configuration.
//!
//! A connector is pure where it can be: [`Connector::verify`], [`Connector::decode`] and
//! [`Connector::normalize`] are functions of the request alone (fixture-testable, fuzzable);
//! only [`Connector::send`] does I/O. Errors are classified ([`ConnectorError`]) and the ingress
//! decides the HTTP answer and the metric from the class, never from the channel.

pub mod api;
pub mod caption;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod douyin;
pub mod error;
pub mod line;
pub mod media;
pub mod raw;
pub mod registry;
pub mod rules;
pub mod sent;
pub mod signature;
pub mod telegram;
pub mod token_cache;
pub mod web;
pub mod wechat;
pub mod wecom_kf;
pub mod whatsapp;

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method};
use switchyard_core::envelope::{ChannelRef, Envelope, Sender};
use switchyard_core::identity::IdentityKey;
use switchyard_core::model::Conversation;

pub use error::ConnectorError;
pub use media::MediaDownload;
pub use raw::RawPolicy;
pub use registry::{ConnectorContext, Registry};
pub use rules::{Captions, ChannelRules, RuleViolation};

/// An HTTP request to a channel endpoint, as the connector sees it: raw bytes, before parsing.
#[derive(Debug, Clone, Copy)]
pub struct InboundRequest<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Decoded query parameters.
    pub query: &'a HashMap<String, String>,
    /// The raw body, exactly as received (signatures are computed over it).
    pub body: &'a [u8],
    /// When the request arrived.
    pub received_at: DateTime<Utc>,
}

impl InboundRequest<'_> {
    /// A header as a string, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP answer a connector asks the ingress to give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Bytes,
}

impl HttpReply {
    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        HttpReply {
            status,
            content_type: "application/json",
            body: Bytes::from(value.to_string()),
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        HttpReply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(text.into()),
        }
    }
}

/// The usual `accepted` answer: 202 `{"id", "duplicate"}` for the first envelope.
pub fn accepted_json(accepted: &[Accepted]) -> HttpReply {
    let (id, duplicate) = accepted
        .first()
        .map(|a| (a.id.as_str(), a.duplicate))
        .unwrap_or_default();
    HttpReply::json(
        202,
        &serde_json::json!({ "id": id, "duplicate": duplicate }),
    )
}

/// The envelopes of a request that carries a batch of platform events (WhatsApp, LINE), one
/// result per event: an event that cannot be read is left out (and logged) rather than costing
/// the valid ones, since the same bytes would fail again on every retry. Only when no event is
/// valid does the first error answer the request.
pub fn keep_valid(
    channel: &ChannelRef,
    results: impl IntoIterator<Item = Result<Envelope, ConnectorError>>,
) -> Result<Vec<Envelope>, ConnectorError> {
    let mut envelopes = Vec::new();
    let mut first_error = None;
    let mut dropped = 0usize;
    for result in results {
        match result {
            Ok(envelope) => envelopes.push(envelope),
            Err(e) => {
                dropped += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if envelopes.is_empty() => Err(e),
        Some(e) => {
            tracing::warn!(channel = %channel.id, kind = %channel.kind, dropped, error = %e,
                "left unreadable events out of a batch and kept the rest");
            Ok(envelopes)
        }
        None => Ok(envelopes),
    }
}

/// Takes the connector's own entry `key` out of the envelope's `raw`: where `normalize` (pure)
/// leaves what `deliver` must keep in the store before publishing (a reply context). The rest
/// of an object `raw` stays (the original payload, when the channel keeps it: see [`raw`]);
/// `raw` becomes `None` when nothing else was in it.
pub fn take_raw_entry(envelope: &mut Envelope, key: &str) -> Option<serde_json::Value> {
    let mut raw = envelope.raw.take()?;
    let entry = raw.as_object_mut().and_then(|o| o.remove(key));
    if raw.as_object().is_some_and(|o| !o.is_empty()) {
        envelope.raw = Some(raw);
    }
    entry
}

/// The recipient of an outbound envelope to the holder of the first key among `identities` of
/// kind `kind` and scope `scope` (any scope when `None`): its value is the `external_id`,
/// `sender_scope` the scope, and the key the one identity. The building block of
/// [`Connector::recipient_of`].
pub fn recipient_by_key(
    identities: &[IdentityKey],
    kind: &str,
    scope: Option<&str>,
    sender_scope: impl FnOnce(&IdentityKey) -> String,
) -> Option<Sender> {
    let key = identities
        .iter()
        .find(|k| k.kind() == kind && scope.is_none_or(|s| k.scope() == s))?;
    Some(Sender {
        external_id: key.value().to_owned(),
        scope: sender_scope(key),
        display_name: None,
        identities: vec![key.clone()],
    })
}

/// What became of one envelope at ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The envelope id; for a duplicate, the id given to the first copy.
    pub id: String,
    /// Whether the channel had sent this message before.
    pub duplicate: bool,
}

/// What the channel said when a message was delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReceipt {
    /// The channel's id for the delivered message, if it gives one.
    pub channel_message_id: Option<String>,
}

/// A channel connector. Implement this; the blanket [`Channel`] impl makes it usable by the
/// ingress and the outbound dispatcher.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The channel's native inbound payload, after decoding.
    type Inbound: Send;

    /// The configured channel instance.
    fn channel(&self) -> &ChannelRef;

    /// Answers a URL-verification handshake (WeChat `echostr`, Douyin challenge), if this
    /// request is one; `Ok(None)` means "not a handshake, ingest it". The ingress asks on every
    /// request before [`Self::verify`], GET and POST alike (Douyin's `verify_webhook` is a
    /// signed POST), so an implementation checks the request's own signature itself.
    fn handshake(&self, _req: &InboundRequest<'_>) -> Result<Option<HttpReply>, ConnectorError> {
        Ok(None)
    }

    /// Authenticates the raw request (signature, timestamp window) before anything is parsed.
    fn verify(&self, req: &InboundRequest<'_>) -> Result<(), ConnectorError>;

    /// Decrypts and parses the body into the native payload. Pure.
    fn decode(&self, req: &InboundRequest<'_>) -> Result<Self::Inbound, ConnectorError>;

    /// Maps the native payload onto envelopes (empty: valid, nothing to route). Pure and
    /// deterministic except for envelope ids.
    fn normalize(
        &self,
        inbound: Self::Inbound,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, ConnectorError>;

    /// Hands the envelopes [`Self::normalize`] produced to `sink` (the ingress's
    /// publish-with-dedupe), with I/O allowed. The default publishes them unchanged.
    ///
    /// Connectors override it when a verified request is not yet the message: pull-model
    /// channels (WeCom kf) get a notification and fetch the messages it announces from the
    /// platform API, publishing page by page and advancing their cursor only once a page is on
    /// the bus; others keep state every replica needs later (Douyin's reply context). Called
    /// after [`Self::verify`]/[`Self::decode`]/[`Self::normalize`] succeeded and before the
    /// channel is answered, so an error here is answered by its class (Transient: 503, the
    /// channel retries).
    async fn deliver(
        &self,
        envelopes: Vec<Envelope>,
        sink: &dyn EnvelopeSink,
    ) -> Result<Vec<Accepted>, ConnectorError> {
        sink.publish(envelopes).await
    }

    /// The answer once the envelopes are safely on the bus.
    fn accepted(&self, accepted: &[Accepted]) -> HttpReply;

    /// What the channel lets us send, and when.
    fn rules(&self) -> ChannelRules {
        ChannelRules::unrestricted("no platform limits")
    }

    /// Delivers an outbound envelope through the channel's API.
    async fn send(&self, message: &Envelope) -> Result<SendReceipt, ConnectorError>;

    /// The recipient [`Self::send`] needs to reach, on this channel, the customer who holds
    /// `identities`, for a conversation an agent starts (no message of the customer's to
    /// answer): the `Sender` of an outbound envelope, built from one of the channel's own
    /// identity keys. `None` when no key addresses anyone here, and always for channels that
    /// cannot start a conversation (the default: their send needs state an inbound message
    /// left behind, such as a reply context).
    fn recipient_of(&self, identities: &[IdentityKey]) -> Option<Sender> {
        let _ = identities;
        None
    }

    /// Whether [`Self::recipient_of`] can ever give a recipient: the channel can start
    /// conversations.
    fn starts_conversations(&self) -> bool {
        false
    }

    /// Fetches media a customer sent, by the channel's media id (`Media.media_id` of an
    /// inbound envelope), with the channel's credentials: the media proxy behind
    /// `GET /v1/media/{channel_id}/{media_id}`. The body streams, capped at
    /// [`media::MAX_FETCH_BYTES`] or the platform's own download limit.
    ///
    /// Unknown or expired media is `Rejected media_not_found`, too large `Rejected
    /// media_too_large`, 5xx and timeouts `Transient`. The default answers `Unsupported`: the
    /// channel's media are plain URLs, or it holds none.
    async fn fetch_media(&self, media_id: &str) -> Result<MediaDownload, ConnectorError> {
        let _ = media_id;
        Err(ConnectorError::Unsupported(format!(
            "channel kind `{}` has no media to fetch",
            self.channel().kind
        )))
    }

    /// Whether this channel wants [`Connector::conversation_changed`] calls. Gateways follow
    /// conversation events only when a configured channel does, so channels that do not keep
    /// platform session state cost nothing per message.
    fn follows_conversations(&self) -> bool {
        false
    }

    /// Told when one of this channel's conversations changes status (queued, assigned,
    /// closed, ...), for platforms that keep their own session state in step (WeCom
    /// `service_state`). Called at least once per change, possibly more: be idempotent.
    async fn conversation_changed(
        &self,
        _conversation: &Conversation,
    ) -> Result<(), ConnectorError> {
        Ok(())
    }
}

/// Where [`Connector::deliver`] hands envelopes: the ingress publishes them on the bus with
/// deduplication and answers what became of each (in order).
#[async_trait]
pub trait EnvelopeSink: Send + Sync {
    /// Publishes `envelopes`, in order, each at most once per dedupe key.
    async fn publish(&self, envelopes: Vec<Envelope>) -> Result<Vec<Accepted>, ConnectorError>;

    /// Reports that `message`, an outbound envelope the channel's API had accepted, was not
    /// delivered after all: the platform said so later, in what the connector receives or pulls
    /// (WeCom kf's `msg_send_fail` event, WhatsApp's `failed` status; connectors remember what
    /// they sent with [`sent::SentMessages`]). The ingress publishes `message.failed` with
    /// `code` (machine-readable, e.g. `wecom_fail_type_4`, `whatsapp_131026`) and `reason` (for
    /// people), which also tells the agent who wrote the reply.
    ///
    /// At least once: the event's id is derived from the envelope id, so a report repeated
    /// after a retry is deduplicated downstream. A `Transient` error means the report is not on
    /// the bus; the caller should not acknowledge what carried it, so that it is made again.
    ///
    /// The default, for sinks with no event stream behind them (test and collecting sinks),
    /// reports nothing and answers `Unsupported`, so the caller knows the failure went nowhere.
    async fn delivery_failed(
        &self,
        message: &Envelope,
        code: &str,
        _reason: &str,
    ) -> Result<(), ConnectorError> {
        Err(ConnectorError::Unsupported(format!(
            "this sink does not report delivery failures (`{code}` for message {})",
            message.id
        )))
    }
}

/// Object-safe view of a [`Connector`], used by the ingress and the dispatcher.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// The configured channel instance.
    fn channel(&self) -> &ChannelRef;
    /// See [`Connector::handshake`].
    fn handshake(&self, req: &InboundRequest<'_>) -> Result<Option<HttpReply>, ConnectorError>;
    /// Verify, decode and normalize in one step.
    fn ingest(&self, req: &InboundRequest<'_>) -> Result<Vec<Envelope>, ConnectorError>;
    /// See [`Connector::deliver`].
    async fn deliver(
        &self,
        envelopes: Vec<Envelope>,
        sink: &dyn EnvelopeSink,
    ) -> Result<Vec<Accepted>, ConnectorError>;
    /// See [`Connector::accepted`].
    fn accepted(&self, accepted: &[Accepted]) -> HttpReply;
    /// See [`Connector::rules`].
    fn rules(&self) -> ChannelRules;
    /// See [`Connector::send`].
    async fn send(&self, message: &Envelope) -> Result<SendReceipt, ConnectorError>;
    /// See [`Connector::recipient_of`].
    fn recipient_of(&self, identities: &[IdentityKey]) -> Option<Sender>;
    /// See [`Connector::starts_conversations`].
    fn starts_conversations(&self) -> bool;
    /// See [`Connector::fetch_media`].
    async fn fetch_media(&self, media_id: &str) -> Result<MediaDownload, ConnectorError>;
    /// See [`Connector::follows_conversations`].
    fn follows_conversations(&self) -> bool;
    /// See [`Connector::conversation_changed`].
    async fn conversation_changed(&self, conversation: &Conversation)
    -> Result<(), ConnectorError>;
}

#[async_trait]
impl<C: Connector> Channel for C {
    fn channel(&self) -> &ChannelRef {
        Connector::channel(self)
    }

    fn handshake(&self, req: &InboundRequest<'_>) -> Result<Option<HttpReply>, ConnectorError> {
        Connector::handshake(self, req)
    }

    fn ingest(&self, req: &InboundRequest<'_>) -> Result<Vec<Envelope>, ConnectorError> {
        self.verify(req)?;
        let inbound = self.decode(req)?;
        self.normalize(inbound, req.received_at)
    }

    async fn deliver(
        &self,
        envelopes: Vec<Envelope>,
        sink: &dyn EnvelopeSink,
    ) -> Result<Vec<Accepted>, ConnectorError> {
        Connector::deliver(self, envelopes, sink).await
    }

    fn accepted(&self, accepted: &[Accepted]) -> HttpReply {
        Connector::accepted(self, accepted)
    }

    fn rules(&self) -> ChannelRules {
        Connector::rules(self)
    }

    async fn send(&self, message: &Envelope) -> Result<SendReceipt, ConnectorError> {
        Connector::send(self, message).await
    }

    fn recipient_of(&self, identities: &[IdentityKey]) -> Option<Sender> {
        Connector::recipient_of(self, identities)
    }

    fn starts_conversations(&self) -> bool {
        Connector::starts_conversations(self)
    }

    async fn fetch_media(&self, media_id: &str) -> Result<MediaDownload, ConnectorError> {
        Connector::fetch_media(self, media_id).await
    }

    fn follows_conversations(&self) -> bool {
        Connector::follows_conversations(self)
    }

    async fn conversation_changed(
        &self,
        conversation: &Conversation,
    ) -> Result<(), ConnectorError> {
        Connector::conversation_changed(self, conversation).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_valid_drops_unreadable_events_unless_nothing_is_left() {
        let channel = ChannelRef {
            kind: "line".into(),
            id: "line-main".into(),
        };
        let envelope = |id: &str| {
            let mut e: Envelope = serde_json::from_str(include_str!(
                "../../schemas/examples/message.inbound.text.json"
            ))
            .unwrap();
            e.id = id.into();
            e
        };
        let bad = || ConnectorError::Malformed("no id".into());
        let kept =
            keep_valid(&channel, [Ok(envelope("a")), Err(bad()), Ok(envelope("b"))]).unwrap();
        let ids: Vec<&str> = kept.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(matches!(
            keep_valid(
                &channel,
                [Err(bad()), Err(ConnectorError::Unauthorized("x".into()))]
            ),
            Err(ConnectorError::Malformed(_))
        ));
        assert!(keep_valid(&channel, []).unwrap().is_empty());
    }
}
