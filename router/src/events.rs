//! Publishes CloudEvents on `switchyard.events` (routing key = event type), with the data shapes
//! documented in `schemas/event.v1.json`.
//!
//! Events are built into an [`EventBatch`] and published together: in order, on one channel,
//! with one round of confirms. State events (a customer created, a conversation queued,
//! assigned, closed) get ids derived from what happened ([`CloudEvent::state_id`]) and message
//! events carry the envelope id, so an event re-emitted after a retry has the id of the first
//! emission and consumers deduplicate it.

use std::ops::Range;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use switchyard_core::bus::topology::{BOTS_EXCHANGE, EVENTS_EXCHANGE, bot_event_key};
use switchyard_core::bus::{Bus, BusError, Message};
use switchyard_core::config::{BOT_EVENTS, bot_of_agent};
use switchyard_core::envelope::Envelope;
use switchyard_core::event::{CloudEvent, EventType};
use switchyard_core::identity::IdentityKey;
use switchyard_core::model::{Agent, Conversation, ConversationStatus, Customer};
use switchyard_core::store::{Erasure, MergeClosed};
use switchyard_core::time::{Fraction, with_rfc3339};

/// Events to publish together, in order, each already encoded.
#[derive(Debug, Default)]
#[must_use = "an event batch does nothing until it is published"]
pub struct EventBatch {
    events: Vec<Encoded>,
    /// Events a bot is sent ([`BOT_EVENTS`] of the conversations it holds), as (index in
    /// `events`, bot id): each is also published to [`BOTS_EXCHANGE`] for that bot alone.
    bot_copies: Vec<(usize, String)>,
    /// The conversation the latest `conversation.created` event of the batch carried, and
    /// where its JSON is: a `conversation.created|queued|assigned` event about it in the same
    /// state (a new conversation is both created and queued) copies the bytes instead of
    /// encoding the record again.
    last_conversation: Option<EncodedConversation>,
}

/// A conversation encoded in an event of the batch.
#[derive(Debug)]
struct EncodedConversation {
    /// The record as it was encoded.
    record: Conversation,
    /// Index of the event in the batch.
    event: usize,
    /// Where the record's JSON is in that event's body.
    json: Range<usize>,
}

/// One event of a batch: routing key (the event type), id, and JSON body (or why it could not
/// be encoded).
#[derive(Debug)]
struct Encoded {
    event_type: EventType,
    id: String,
    body: Result<Vec<u8>, String>,
}

/// The identity of an event being built: its type, tenant, subject, id and time.
struct Head<'a> {
    event_type: EventType,
    tenant: &'a str,
    subject: &'a str,
    id: String,
    time: DateTime<Utc>,
}

impl<'a> Head<'a> {
    /// A state event: id derived from (type, subject, `at`), time `at`.
    fn state(event_type: EventType, tenant: &'a str, subject: &'a str, at: DateTime<Utc>) -> Self {
        Head {
            event_type,
            tenant,
            subject,
            id: CloudEvent::state_id(event_type, subject, at),
            time: at,
        }
    }

    /// A message event: id = envelope id, subject = its conversation.
    fn message(event_type: EventType, m: &'a Envelope) -> Self {
        Head {
            event_type,
            tenant: &m.tenant,
            subject: m.conversation_id.as_deref().unwrap_or_default(),
            id: m.id.clone(),
            time: switchyard_core::time::now(),
        }
    }
}

#[derive(Serialize)]
struct ConversationData<'a> {
    conversation: &'a Conversation,
}

#[derive(Serialize)]
struct ClosedData<'a> {
    conversation: &'a Conversation,
    agent_id: Option<&'a str>,
}

#[derive(Serialize)]
struct TransferredData<'a> {
    conversation: &'a Conversation,
    from_agent_id: Option<&'a str>,
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct ReceivedData<'a> {
    message: &'a Envelope,
    agent_id: Option<&'a str>,
}

#[derive(Serialize)]
struct SentData<'a> {
    message: &'a Envelope,
    channel_message_id: Option<&'a str>,
}

#[derive(Serialize)]
struct FailedData<'a> {
    message: &'a Envelope,
    code: &'a str,
    reason: &'a str,
}

#[derive(Serialize)]
struct CustomerData<'a> {
    customer: &'a Customer,
}

#[derive(Serialize)]
struct MergedData<'a> {
    customer: &'a Customer,
    from: &'a str,
    into: &'a str,
    via: &'a [IdentityKey],
}

#[derive(Serialize)]
struct ErasedData<'a> {
    customer_id: &'a str,
    reason: &'a str,
    merged_from: &'a [String],
    conversations: &'a [String],
}

#[derive(Serialize)]
struct AgentData<'a> {
    agent: &'a Agent,
}

impl EventBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// How many events the batch holds.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Encodes one event (as [`CloudEvent`] would serialize it) and appends it.
    fn push(&mut self, head: Head<'_>, data: impl Serialize) -> &mut Self {
        let body = encode(&head, EVENT_CAPACITY, |out| {
            serde_json::to_writer(&mut *out, &data)
        });
        self.push_encoded(head, body)
    }

    /// Appends an encoded event (or why it could not be encoded).
    /// When `agent_id` is a bot's, the event about to be pushed is also that bot's.
    fn copy_to_bot(&mut self, agent_id: Option<&str>) {
        if let Some(bot) = agent_id.and_then(bot_of_agent) {
            self.bot_copies.push((self.events.len(), bot.to_owned()));
        }
    }

    fn push_encoded(&mut self, head: Head<'_>, body: serde_json::Result<Vec<u8>>) -> &mut Self {
        let body = body.map_err(|e| {
            format!(
                "cannot encode {}: {e}",
                head.event_type.cloudevents_type_str()
            )
        });
        if self.events.capacity() == 0 {
            // Room for the batch of a conversation-opening message (five events) at once.
            self.events.reserve(8);
        }
        self.events.push(Encoded {
            event_type: head.event_type,
            id: head.id,
            body,
        });
        self
    }

    /// The JSON of `c` if an event of this batch already encoded it in this very state.
    fn encoded_conversation(&self, c: &Conversation) -> Option<&[u8]> {
        let last = self.last_conversation.as_ref()?;
        if last.record != *c {
            return None;
        }
        let body = self.events.get(last.event)?.body.as_ref().ok()?;
        body.get(last.json.clone())
    }

    /// `conversation.created|queued|assigned`, its id derived from the conversation's matching
    /// timestamp (created, queued, assigned), so a re-emission has the same id.
    pub fn conversation(&mut self, t: EventType, c: &Conversation) -> &mut Self {
        let at = match t {
            EventType::ConversationQueued => c.queued_at.unwrap_or(c.created_at),
            EventType::ConversationAssigned => c.assigned_at.unwrap_or(c.updated_at),
            EventType::ConversationCreated => c.created_at,
            _ => c.updated_at,
        };
        let head = Head::state(t, &c.tenant, &c.id, at);
        if BOT_EVENTS.contains(&t.as_str()) {
            self.copy_to_bot(c.agent_id.as_deref());
        }
        // `{"conversation":<c>}`, as serde would write the struct, with <c> copied from an
        // earlier event of the batch when it encoded `c` as it is now.
        let encoded = self.encoded_conversation(c);
        let reused = encoded.is_some();
        let capacity = encoded.map_or(EVENT_CAPACITY, |json| json.len() + HEAD_CAPACITY);
        let mut json = 0..0;
        let body = encode(&head, capacity, |out| {
            out.extend_from_slice(b"{\"conversation\":");
            json.start = out.len();
            match encoded {
                Some(bytes) => out.extend_from_slice(bytes),
                None => serde_json::to_writer(&mut *out, c)?,
            }
            json.end = out.len();
            out.push(b'}');
            Ok(())
        });
        // A new conversation's `conversation.created` is followed by its `conversation.queued`
        // with the same record: remember it, so that one copies the JSON. (Keeping a copy of
        // the record costs about half of encoding it, so it is kept only where it pays.)
        if t == EventType::ConversationCreated && !reused && body.is_ok() {
            let event = self.events.len();
            match &mut self.last_conversation {
                Some(last) => {
                    last.record.clone_from(c);
                    last.event = event;
                    last.json = json;
                }
                None => {
                    self.last_conversation = Some(EncodedConversation {
                        record: c.clone(),
                        event,
                        json,
                    });
                }
            }
        }
        self.push_encoded(head, body)
    }

    /// `conversation.accepted`: `c` as it is after its agent accepted its offer at `at`. Its id is
    /// derived from the conversation and `at` (the conversation's `updated_at` only until its
    /// next change), so the acceptance announced again (by the outbox, after a process stopped
    /// before clearing its note) has the same id.
    pub fn conversation_accepted(&mut self, c: &Conversation, at: DateTime<Utc>) -> &mut Self {
        self.push(
            Head::state(EventType::ConversationAccepted, &c.tenant, &c.id, at),
            ConversationData { conversation: c },
        )
    }

    /// `conversation.closed`, naming the agent (or bot) who held it: a bot is sent a copy.
    pub fn conversation_closed(&mut self, c: &Conversation, agent_id: Option<&str>) -> &mut Self {
        self.copy_to_bot(agent_id);
        let at = c.closed_at.unwrap_or(c.updated_at);
        self.push(
            Head::state(EventType::ConversationClosed, &c.tenant, &c.id, at),
            ClosedData {
                conversation: c,
                agent_id,
            },
        )
    }

    /// `conversation.closed` of each conversation a merge closed, naming the agent or bot it
    /// released.
    pub fn closed_by_merges(&mut self, closed: &[MergeClosed]) -> &mut Self {
        for c in closed {
            self.conversation_closed(&c.conversation, c.released_holder.as_deref());
        }
        self
    }

    /// `conversation.transferred` at `at` (the transfer's time, which the conversation's
    /// `updated_at` holds until its next change), naming the agent it left.
    pub fn conversation_transferred(
        &mut self,
        c: &Conversation,
        from_agent_id: Option<&str>,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> &mut Self {
        // Handed to a bot: the bot learns it holds the conversation. Taken from a bot (its own
        // hand-off, its pool's timeout, or a person's transfer): the bot learns it no longer
        // does.
        if c.status == ConversationStatus::Bot {
            self.copy_to_bot(c.agent_id.as_deref());
        }
        self.copy_to_bot(from_agent_id);
        self.push(
            Head::state(EventType::ConversationTransferred, &c.tenant, &c.id, at),
            TransferredData {
                conversation: c,
                from_agent_id,
                reason,
            },
        )
    }

    /// `message.received` (id = envelope id).
    pub fn message_received(&mut self, m: &Envelope, agent_id: Option<&str>) -> &mut Self {
        self.copy_to_bot(agent_id);
        self.push(
            Head::message(EventType::MessageReceived, m),
            ReceivedData {
                message: m,
                agent_id,
            },
        )
    }

    /// `message.sent` (id = envelope id).
    pub fn message_sent(&mut self, m: &Envelope, channel_message_id: Option<&str>) -> &mut Self {
        self.push(
            Head::message(EventType::MessageSent, m),
            SentData {
                message: m,
                channel_message_id,
            },
        )
    }

    /// `message.failed`. Its id is derived from the envelope id (not the envelope id itself:
    /// a failure the channel reports late follows a `message.sent` that already carries it).
    pub fn message_failed(&mut self, m: &Envelope, code: &str, reason: &str) -> &mut Self {
        let mut head = Head::message(EventType::MessageFailed, m);
        head.id = message_failed_id(m);
        self.push(
            head,
            FailedData {
                message: m,
                code,
                reason,
            },
        )
    }

    /// `customer.created` (id derived from the profile's creation).
    pub fn customer_created(&mut self, c: &Customer) -> &mut Self {
        self.push(
            Head::state(EventType::CustomerCreated, &c.tenant, &c.id, c.first_seen),
            CustomerData { customer: c },
        )
    }

    /// `customer.merged` of the merge at `at`. Its id is derived from the profile merged away
    /// (`from`, which is merged only once) and `at`, so the same merge announced again (by the
    /// outbox, after a process stopped before clearing its note) has the same id.
    pub fn customer_merged(
        &mut self,
        c: &Customer,
        from: &str,
        via: &[IdentityKey],
        at: DateTime<Utc>,
    ) -> &mut Self {
        let mut head = Head::state(EventType::CustomerMerged, &c.tenant, &c.id, at);
        head.id = CloudEvent::state_id(EventType::CustomerMerged, from, at);
        self.push(
            head,
            MergedData {
                customer: c,
                from,
                into: &c.id,
                via,
            },
        )
    }

    /// `customer.erased` of the erasure at `at` (id derived from the customer and `at`, so the
    /// erasure announced again by the outbox has the same id). Its data carries ids only.
    pub fn customer_erased(&mut self, e: &Erasure, at: DateTime<Utc>) -> &mut Self {
        self.push(
            Head::state(EventType::CustomerErased, &e.tenant, &e.customer_id, at),
            ErasedData {
                customer_id: &e.customer_id,
                reason: &e.reason,
                merged_from: &e.merged_from,
                conversations: &e.conversations,
            },
        )
    }

    /// `customer.updated`: `c` as it is after the change of its tags or attributes at `at`. Its
    /// id is derived from the customer and `at`, so the change announced again (by the outbox,
    /// after a process stopped before clearing its note) has the same id.
    pub fn customer_updated(&mut self, c: &Customer, at: DateTime<Utc>) -> &mut Self {
        self.push(
            Head::state(EventType::CustomerUpdated, &c.tenant, &c.id, at),
            CustomerData { customer: c },
        )
    }

    /// `agent.updated` (id derived from the agent's `updated_at`, so the same state announced
    /// again has the same id).
    pub fn agent_updated(&mut self, a: &Agent) -> &mut Self {
        self.push(
            Head::state(
                EventType::AgentUpdated,
                switchyard_core::envelope::DEFAULT_TENANT,
                &a.id,
                a.updated_at,
            ),
            AgentData { agent: a },
        )
    }
}

/// Capacity an event's body starts with: most events (a conversation or message with its
/// attributes) fit, so their encoding does not reallocate.
const EVENT_CAPACITY: usize = 1024;

/// Room for an event's attributes (everything but `data`) with ids and tenant of usual length.
const HEAD_CAPACITY: usize = 320;

/// Encodes an event as [`CloudEvent`] (and `CloudEventRef`) serialize it, into one buffer of
/// `capacity`: its attributes, then `data` as `write_data` writes it.
fn encode(
    head: &Head<'_>,
    capacity: usize,
    write_data: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(br#"{"specversion":"1.0","id":"#);
    serde_json::to_writer(&mut out, &head.id)?;
    out.extend_from_slice(br#","source":"#);
    write_source(&mut out, head.tenant)?;
    out.extend_from_slice(br#","type":"#);
    serde_json::to_writer(&mut out, head.event_type.cloudevents_type_str())?;
    out.extend_from_slice(br#","subject":"#);
    serde_json::to_writer(&mut out, head.subject)?;
    out.extend_from_slice(br#","time":""#);
    with_rfc3339(&head.time, Fraction::Auto, |time| {
        out.extend_from_slice(time)
    });
    out.extend_from_slice(br#"","datacontenttype":"application/json","tenant":"#);
    serde_json::to_writer(&mut out, head.tenant)?;
    out.extend_from_slice(br#","data":"#);
    write_data(&mut out)?;
    out.push(b'}');
    Ok(out)
}

/// Writes the `source` attribute, `/switchyard/{tenant}/router`, as a JSON string.
fn write_source(out: &mut Vec<u8>, tenant: &str) -> serde_json::Result<()> {
    // serde_json escapes only `"`, `\` and control characters.
    if tenant.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        return serde_json::to_writer(out, &format!("/switchyard/{tenant}/router"));
    }
    out.extend_from_slice(b"\"/switchyard/");
    out.extend_from_slice(tenant.as_bytes());
    out.extend_from_slice(b"/router\"");
    Ok(())
}

/// The id of `message.failed` for an outbound envelope: stable across re-emissions, distinct
/// from the envelope id that `message.sent` carries.
pub fn message_failed_id(m: &Envelope) -> String {
    CloudEvent::state_id(EventType::MessageFailed, &m.id, m.sent_at)
}

impl EventBatch {
    /// The batch as bus messages for [`EVENTS_EXCHANGE`], in order: (routing key = event type,
    /// message with the event id and CloudEvents content type). Fails if an event could not be
    /// encoded. Leaves out the bots' copies ([`EventBatch::into_publishes`]): only routing an
    /// inbound message makes any, and it publishes through [`EventPublisher`].
    pub fn into_messages(self) -> Result<Vec<(String, Message)>, BusError> {
        Ok(self.into_publishes()?.0)
    }

    /// The batch as bus messages for [`EVENTS_EXCHANGE`] (as [`EventBatch::into_messages`]), and
    /// the bots' copies for [`BOTS_EXCHANGE`] (routing key [`bot_event_key`]), in order.
    pub fn into_publishes(self) -> Result<EventPublishes, BusError> {
        let mut copies = Vec::with_capacity(self.bot_copies.len());
        let mut messages = Vec::with_capacity(self.events.len());
        let mut bot_copies = self.bot_copies.into_iter().peekable();
        for (index, event) in self.events.into_iter().enumerate() {
            let body = event.body.map_err(|reason| BusError::Nacked {
                exchange: EVENTS_EXCHANGE.into(),
                reason,
            })?;
            let mut message = Message::new(event.id, body);
            message
                .headers
                .insert("content-type".into(), "application/cloudevents+json".into());
            while let Some((_, bot)) = bot_copies.next_if(|(at, _)| *at == index) {
                let key = bot_event_key(&bot, event.event_type.as_str());
                copies.push((key, message.clone()));
            }
            messages.push((event.event_type.as_str().to_owned(), message));
        }
        Ok((messages, copies))
    }
}

/// Bus messages of an [`EventBatch`]: for [`EVENTS_EXCHANGE`], and the bots' copies for
/// [`BOTS_EXCHANGE`], each as (routing key, message).
pub type EventPublishes = (Vec<(String, Message)>, Vec<(String, Message)>);

/// Publishes events; a publish returns once the bus confirmed every event of it.
#[derive(Clone)]
pub struct EventPublisher {
    bus: Arc<dyn Bus>,
}

impl EventPublisher {
    /// A publisher on `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        EventPublisher { bus }
    }

    /// Publishes a batch, in order, with one round of confirms. An event nobody is bound to
    /// receive is not an error.
    pub async fn publish(&self, batch: EventBatch) -> Result<(), BusError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (events, bot_copies) = batch.into_publishes()?;
        self.bus.publish_events(EVENTS_EXCHANGE, events).await?;
        // After the stream: a bot is sent nothing a helpdesk could miss. A failure here fails the
        // whole publish, and its retry sends every event again with the same ids.
        if !bot_copies.is_empty() {
            self.bus.publish_events(BOTS_EXCHANGE, bot_copies).await?;
        }
        Ok(())
    }

    /// Builds a batch with `build` and publishes it.
    pub async fn emit(&self, build: impl FnOnce(&mut EventBatch)) -> Result<(), BusError> {
        let mut batch = EventBatch::new();
        build(&mut batch);
        self.publish(batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema's example of `event_type`, parsed.
    fn example(event_type: &str) -> CloudEvent {
        let path = format!(
            "{}/../schemas/examples/event.{event_type}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn field<T: serde::de::DeserializeOwned>(event: &CloudEvent, name: &str) -> T {
        serde_json::from_value(event.data[name].clone()).unwrap()
    }

    /// Rebuilds each schema example from its records and checks the encoding: everything but
    /// the id and time equals the example, and state events have their derived id and time.
    #[test]
    fn encoded_events_match_the_schema_examples() {
        for name in [
            "conversation.created",
            "conversation.queued",
            "conversation.assigned",
            "conversation.accepted",
            "conversation.closed",
            "conversation.transferred",
            "message.received",
            "message.sent",
            "message.failed",
            "customer.created",
            "customer.merged",
            "customer.erased",
            "customer.updated",
            "agent.updated",
        ] {
            let want = example(name);
            let t = want.known_type().unwrap();
            let mut batch = EventBatch::new();
            let str_of = |k: &str| want.data[k].as_str().map(str::to_owned);
            match t {
                EventType::ConversationCreated
                | EventType::ConversationQueued
                | EventType::ConversationAssigned => {
                    batch.conversation(t, &field(&want, "conversation"));
                }
                EventType::ConversationAccepted => {
                    let c: Conversation = field(&want, "conversation");
                    batch.conversation_accepted(&c, c.updated_at);
                }
                EventType::ConversationClosed => {
                    batch.conversation_closed(
                        &field(&want, "conversation"),
                        str_of("agent_id").as_deref(),
                    );
                }
                EventType::ConversationTransferred => {
                    let c: Conversation = field(&want, "conversation");
                    batch.conversation_transferred(
                        &c,
                        str_of("from_agent_id").as_deref(),
                        str_of("reason").as_deref(),
                        c.updated_at,
                    );
                }
                EventType::MessageReceived => {
                    batch.message_received(&field(&want, "message"), str_of("agent_id").as_deref());
                }
                EventType::MessageSent => {
                    batch.message_sent(
                        &field(&want, "message"),
                        str_of("channel_message_id").as_deref(),
                    );
                }
                EventType::MessageFailed => {
                    batch.message_failed(
                        &field(&want, "message"),
                        &str_of("code").unwrap(),
                        &str_of("reason").unwrap(),
                    );
                }
                EventType::CustomerCreated => {
                    batch.customer_created(&field(&want, "customer"));
                }
                EventType::CustomerMerged => {
                    batch.customer_merged(
                        &field(&want, "customer"),
                        &str_of("from").unwrap(),
                        &field::<Vec<IdentityKey>>(&want, "via"),
                        want.time,
                    );
                }
                EventType::CustomerErased => {
                    let erasure = Erasure {
                        customer_id: str_of("customer_id").unwrap(),
                        tenant: want.tenant.clone(),
                        reason: str_of("reason").unwrap(),
                        merged_from: field(&want, "merged_from"),
                        conversations: field(&want, "conversations"),
                    };
                    batch.customer_erased(&erasure, want.time);
                }
                EventType::CustomerUpdated => {
                    batch.customer_updated(&field(&want, "customer"), want.time);
                }
                EventType::AgentUpdated => {
                    batch.agent_updated(&field(&want, "agent"));
                }
            }
            let encoded = batch.events.pop().unwrap();
            assert_eq!(encoded.event_type, t);
            let got: CloudEvent = serde_json::from_slice(&encoded.body.unwrap()).unwrap();
            assert_eq!(got.id, encoded.id, "{name}: id");
            assert_eq!(
                serde_json::to_value(&got.data).unwrap(),
                serde_json::to_value(&want.data).unwrap(),
                "{name}: data"
            );
            assert_eq!(
                (&got.specversion, &got.source, &got.event_type),
                (&want.specversion, &want.source, &want.event_type),
                "{name}: attributes"
            );
            assert_eq!(
                (&got.subject, &got.datacontenttype, &got.tenant),
                (&want.subject, &want.datacontenttype, &want.tenant),
                "{name}: attributes"
            );
            if name == "message.failed" {
                let message: Envelope = field(&want, "message");
                assert_eq!(got.id, message_failed_id(&message), "{name}: id");
                assert_ne!(
                    got.id, message.id,
                    "{name}: must not reuse message.sent's id"
                );
            } else if name.starts_with("message.") {
                assert_eq!(Some(got.id.as_str()), want.data["message"]["id"].as_str());
            }
            if name.starts_with("conversation.") || name == "customer.created" {
                let again: CloudEvent = serde_json::from_slice(&encoded_again(&want, t)).unwrap();
                assert_eq!(again.id, got.id, "{name}: a state event's id is stable");
                assert_eq!(
                    again.time, got.time,
                    "{name}: a state event's time is stable"
                );
                let subject = got.subject.clone().unwrap_or_default();
                assert_eq!(
                    got.id,
                    CloudEvent::state_id(t, &subject, got.time),
                    "{name}: a state event's id is derived from its subject and time"
                );
            }
            if name == "conversation.assigned" {
                let c: Conversation = field(&want, "conversation");
                assert_eq!(Some(got.time), c.assigned_at, "{name}: time of the change");
            }
            if name == "conversation.accepted" {
                let c: Conversation = field(&want, "conversation");
                assert_eq!(got.time, c.updated_at, "{name}: time of the change");
                assert_eq!(
                    (c.offered_at, c.offer_expires_at),
                    (None, None),
                    "{name}: no longer an offer"
                );
            }
            if name == "customer.updated" {
                assert_eq!(
                    (&got.id, got.time),
                    (&want.id, want.time),
                    "{name}: the id derived from the customer and the time of the change"
                );
            }
        }
    }

    /// Encodes the example's state event once more.
    fn encoded_again(want: &CloudEvent, t: EventType) -> Vec<u8> {
        let mut batch = EventBatch::new();
        match t {
            EventType::CustomerCreated => batch.customer_created(&field(want, "customer")),
            EventType::ConversationClosed => {
                batch.conversation_closed(&field(want, "conversation"), None)
            }
            EventType::ConversationTransferred => {
                let c: Conversation = field(want, "conversation");
                batch.conversation_transferred(&c, None, None, c.updated_at)
            }
            EventType::ConversationAccepted => {
                let c: Conversation = field(want, "conversation");
                batch.conversation_accepted(&c, c.updated_at)
            }
            _ => batch.conversation(t, &field(want, "conversation")),
        };
        batch.events.pop().unwrap().body.unwrap()
    }

    /// The `data` of `conversation.created|queued|assigned`, which `EventBatch::conversation`
    /// writes itself.
    #[derive(Serialize)]
    struct ConversationData<'a> {
        conversation: &'a Conversation,
    }

    /// How events were encoded before `encode` wrote them itself: serde_json over a struct with
    /// `CloudEvent`'s fields (in its order, checked by `reference_mirrors_cloud_event`), with
    /// allocated `source` and `type` and chrono's own `Serialize` for `time`.
    #[derive(Serialize)]
    struct Reference<'a, D> {
        specversion: &'a str,
        id: &'a str,
        source: String,
        #[serde(rename = "type")]
        event_type: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        subject: Option<&'a str>,
        time: DateTime<Utc>,
        datacontenttype: &'a str,
        tenant: &'a str,
        data: D,
    }

    impl<'a, D: Serialize> Reference<'a, D> {
        fn new(
            t: EventType,
            tenant: &'a str,
            subject: &'a str,
            event: &'a CloudEvent,
            data: D,
        ) -> Self {
            Reference {
                specversion: "1.0",
                id: &event.id,
                source: format!("/switchyard/{tenant}/router"),
                event_type: t.cloudevents_type(),
                subject: Some(subject),
                time: event.time,
                datacontenttype: "application/json",
                tenant,
                data,
            }
        }

        fn to_vec(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap()
        }
    }

    #[test]
    fn reference_mirrors_cloud_event() {
        let mut event = CloudEvent::new(EventType::ConversationAssigned, "t\"1", "c1", json_null());
        event.time = "2026-11-24T09:00:00.412345Z".parse().unwrap();
        let reference = Reference::new(EventType::ConversationAssigned, "t\"1", "c1", &event, ());
        let owned = serde_json::to_vec(&event).unwrap();
        assert_eq!(
            String::from_utf8(reference.to_vec()).unwrap(),
            String::from_utf8(owned).unwrap()
        );
        let borrowed = serde_json::to_vec(&switchyard_core::event::CloudEventRef {
            specversion: "1.0",
            id: &event.id,
            source: &event.source,
            event_type: &event.event_type,
            subject: event.subject.as_deref(),
            time: event.time,
            datacontenttype: "application/json",
            tenant: &event.tenant,
            data: (),
        })
        .unwrap();
        assert_eq!(reference.to_vec(), borrowed);
    }

    fn json_null() -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The last event of `batch`, its body parsed, and its body.
    fn last(batch: &EventBatch) -> (CloudEvent, Vec<u8>) {
        let encoded = batch.events.last().unwrap();
        let body = encoded.body.clone().unwrap();
        let event: CloudEvent = serde_json::from_slice(&body).unwrap();
        assert_eq!(event.id, encoded.id);
        assert_eq!(event.known_type(), Some(encoded.event_type));
        (event, body)
    }

    /// Asserts that the last event of `batch` is encoded byte for byte as the reference
    /// encoding of an event of type `t` about `subject` with `data` (and the event's id and
    /// time) is.
    fn assert_encoded_as_reference(
        batch: &EventBatch,
        t: EventType,
        tenant: &str,
        subject: &str,
        data: impl Serialize,
    ) {
        let (event, body) = last(batch);
        assert_eq!(event.known_type(), Some(t));
        // The reference takes the event's time from the encoding: check that it is right.
        match t {
            EventType::ConversationCreated
            | EventType::ConversationQueued
            | EventType::ConversationAssigned
            | EventType::ConversationAccepted
            | EventType::ConversationClosed
            | EventType::ConversationTransferred
            | EventType::CustomerCreated
            | EventType::CustomerUpdated
            | EventType::AgentUpdated => assert_eq!(
                CloudEvent::state_id(t, subject, event.time),
                event.id,
                "{t:?}: the time of a state event is the one its id is derived from"
            ),
            // Derived from the profile merged away, not from the subject (the survivor).
            EventType::CustomerMerged => assert_eq!(
                CloudEvent::state_id(
                    t,
                    event.data["from"].as_str().unwrap_or_default(),
                    event.time
                ),
                event.id,
                "{t:?}: the time of a merge is the one its id is derived from"
            ),
            _ => assert!(
                (switchyard_core::time::now() - event.time).abs() < chrono::TimeDelta::minutes(1),
                "{t:?}: {} is now",
                event.time
            ),
        }
        let want = Reference::new(t, tenant, subject, &event, data).to_vec();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            String::from_utf8(want).unwrap(),
            "{t:?}"
        );
    }

    /// Timestamps with every fraction length: whole seconds, millis, micros, nanos.
    fn instants() -> [DateTime<Utc>; 4] {
        [
            "2026-11-24T09:00:00Z",
            "2026-02-28T13:47:01.412Z",
            "2026-12-31T23:59:02.412345Z",
            "2027-01-01T00:01:03.412345678Z",
        ]
        .map(|s| s.parse().unwrap())
    }

    /// Every kind of event the batch makes, from records with timestamps of every precision
    /// and with tenants that need escaping or not, is encoded byte for byte as the reference
    /// encoding (serde_json over `CloudEvent`'s fields) encodes it.
    #[test]
    fn every_event_is_encoded_byte_for_byte_as_serde_would() {
        let [t0, t1, t2, t3] = instants();
        for tenant in ["default", "acme-中国", "we\"ird\\\n\u{1}"] {
            let mut customer: Customer = field(&example("customer.created"), "customer");
            customer.tenant = tenant.to_owned();
            customer.first_seen = t3;
            customer.last_seen = t2;
            customer.identities[0].linked_at = t1;
            let mut conversation: Conversation =
                field(&example("conversation.created"), "conversation");
            conversation.tenant = tenant.to_owned();
            conversation.created_at = t0;
            conversation.updated_at = t1;
            conversation.last_inbound_at = Some(t2);
            conversation.queued_at = Some(t3);
            let mut message: Envelope = field(&example("message.received"), "message");
            message.tenant = tenant.to_owned();
            message.sent_at = t0;
            message.received_at = t3;
            let mut agent: Agent = field(&example("agent.updated"), "agent");
            agent.idle_since = t2;
            agent.updated_at = t3;
            let via: Vec<IdentityKey> = field(&example("customer.merged"), "via");

            let mut batch = EventBatch::new();
            let (c, cid) = (&conversation, conversation.id.as_str());
            for t in [
                EventType::ConversationCreated,
                EventType::ConversationQueued,
                EventType::ConversationAssigned,
            ] {
                batch.conversation(t, c);
                assert_encoded_as_reference(
                    &batch,
                    t,
                    tenant,
                    cid,
                    ConversationData { conversation: c },
                );
            }
            batch.conversation_accepted(c, t2);
            assert_encoded_as_reference(
                &batch,
                EventType::ConversationAccepted,
                tenant,
                cid,
                ConversationData { conversation: c },
            );
            batch.conversation_closed(c, Some("agent-7"));
            assert_encoded_as_reference(
                &batch,
                EventType::ConversationClosed,
                tenant,
                cid,
                ClosedData {
                    conversation: c,
                    agent_id: Some("agent-7"),
                },
            );
            batch.conversation_transferred(c, None, None, c.updated_at);
            assert_encoded_as_reference(
                &batch,
                EventType::ConversationTransferred,
                tenant,
                cid,
                TransferredData {
                    conversation: c,
                    from_agent_id: None,
                    reason: None,
                },
            );
            let mid = message.conversation_id.as_deref().unwrap();
            batch.message_received(&message, Some("agent-7"));
            assert_encoded_as_reference(
                &batch,
                EventType::MessageReceived,
                tenant,
                mid,
                ReceivedData {
                    message: &message,
                    agent_id: Some("agent-7"),
                },
            );
            batch.message_sent(&message, None);
            assert_encoded_as_reference(
                &batch,
                EventType::MessageSent,
                tenant,
                mid,
                SentData {
                    message: &message,
                    channel_message_id: None,
                },
            );
            batch.message_failed(&message, "rate_limited", "too \"many\"");
            assert_encoded_as_reference(
                &batch,
                EventType::MessageFailed,
                tenant,
                mid,
                FailedData {
                    message: &message,
                    code: "rate_limited",
                    reason: "too \"many\"",
                },
            );
            batch.customer_created(&customer);
            assert_encoded_as_reference(
                &batch,
                EventType::CustomerCreated,
                tenant,
                &customer.id,
                CustomerData {
                    customer: &customer,
                },
            );
            batch.customer_merged(
                &customer,
                "01KAVQ00000000000000000000",
                &via,
                customer.last_seen,
            );
            assert_encoded_as_reference(
                &batch,
                EventType::CustomerMerged,
                tenant,
                &customer.id,
                MergedData {
                    customer: &customer,
                    from: "01KAVQ00000000000000000000",
                    into: &customer.id,
                    via: &via,
                },
            );
            batch.customer_updated(&customer, t0);
            assert_encoded_as_reference(
                &batch,
                EventType::CustomerUpdated,
                tenant,
                &customer.id,
                CustomerData {
                    customer: &customer,
                },
            );
            batch.agent_updated(&agent);
            assert_encoded_as_reference(
                &batch,
                EventType::AgentUpdated,
                switchyard_core::envelope::DEFAULT_TENANT,
                &agent.id,
                AgentData { agent: &agent },
            );
        }
    }

    /// A conversation's JSON is copied from its `conversation.created` event only while the
    /// record is unchanged: another conversation, or a change to it, is encoded afresh.
    #[test]
    fn conversation_json_is_reused_only_for_the_same_state() {
        let [t0, t1, t2, t3] = instants();
        let mut a: Conversation = field(&example("conversation.created"), "conversation");
        a.created_at = t0;
        a.updated_at = t0;
        a.queued_at = Some(t1);
        let mut b = a.clone();
        b.id = "01KAVQ5D3C5E7G9J1M3P5R7T9X".to_owned();
        let mut batch = EventBatch::new();
        let check = |batch: &mut EventBatch, t: EventType, c: &Conversation| {
            batch.conversation(t, c);
            assert_encoded_as_reference(
                batch,
                t,
                &c.tenant,
                &c.id,
                ConversationData { conversation: c },
            );
        };
        let reusable =
            |batch: &EventBatch, c: &Conversation| batch.encoded_conversation(c).is_some();
        check(&mut batch, EventType::ConversationCreated, &a);
        assert!(reusable(&batch, &a) && !reusable(&batch, &b));
        check(&mut batch, EventType::ConversationQueued, &a);
        check(&mut batch, EventType::ConversationQueued, &b);
        check(&mut batch, EventType::ConversationAssigned, &a);
        a.status = switchyard_core::model::ConversationStatus::Assigned;
        a.agent_id = Some("agent-7".to_owned());
        a.assigned_at = Some(t2);
        a.updated_at = t2;
        assert!(!reusable(&batch, &a));
        check(&mut batch, EventType::ConversationAssigned, &a);
        // Only a created event is remembered.
        assert!(!reusable(&batch, &a));
        check(&mut batch, EventType::ConversationCreated, &b);
        assert!(reusable(&batch, &b) && !reusable(&batch, &a));
        b.last_inbound_at = Some(t3);
        assert!(!reusable(&batch, &b));
        check(&mut batch, EventType::ConversationQueued, &b);
        b.last_inbound_at = None;
        check(&mut batch, EventType::ConversationQueued, &b);
        batch.conversation_closed(&b, None);
        check(&mut batch, EventType::ConversationAssigned, &b);
        assert_eq!(batch.events.len(), 10);
    }

    /// The events a bot is sent (`conversation.created`, `message.received` of a conversation
    /// a bot holds, `conversation.transferred` to it) are also copied, keyed for that bot alone;
    /// others are not.
    #[test]
    fn a_bots_events_are_copied_for_it_alone() {
        let mut held: Conversation = field(&example("conversation.created"), "conversation");
        held.status = switchyard_core::model::ConversationStatus::Bot;
        held.agent_id = Some("bot:faq".to_owned());
        let mut other = held.clone();
        other.id = "01KAVQ5D3C5E7G9J1M3P5R7T9X".to_owned();
        other.agent_id = Some("agent-7".to_owned());
        let message: Envelope = field(&example("message.received"), "message");
        let mut batch = EventBatch::new();
        batch
            .conversation(EventType::ConversationCreated, &held)
            .conversation(EventType::ConversationQueued, &held)
            .message_received(&message, Some("bot:faq"))
            .conversation(EventType::ConversationCreated, &other)
            .message_received(&message, Some("agent-7"))
            .message_received(&message, Some("bot:"))
            .message_received(&message, None)
            // Handed to the bot, and taken from it: copied both times.
            .conversation_transferred(&held, Some("agent-7"), None, held.updated_at)
            .conversation_transferred(&other, Some("bot:faq"), None, other.updated_at)
            .conversation_transferred(&other, Some("agent-8"), None, other.updated_at)
            // Closed while the bot held it: copied; while a person did: not.
            .conversation_closed(&held, Some("bot:faq"))
            .conversation_closed(&other, Some("agent-7"));
        let (events, copies) = batch.into_publishes().unwrap();
        assert_eq!(events.len(), 12, "every event on the stream");
        let keys: Vec<&str> = copies.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "faq.conversation.created",
                "faq.message.received",
                "faq.conversation.transferred",
                "faq.conversation.transferred",
                "faq.conversation.closed"
            ]
        );
        assert_eq!(copies[3].1.body, events[8].1.body, "taken from the bot");
        assert_eq!(copies[4].1.body, events[10].1.body);
        assert_eq!(copies[2].1.body, events[7].1.body);
        // The copies are the events themselves: same id, same bytes.
        assert_eq!(copies[0].1.message_id, events[0].1.message_id);
        assert_eq!(copies[0].1.body, events[0].1.body);
        assert_eq!(copies[1].1.body, events[2].1.body);
    }

    /// Rough cost of the batch a conversation-opening message makes (customer.created,
    /// conversation.created, conversation.queued, message.received, conversation.assigned).
    /// Run with `cargo test --release -p switchyard-router --lib -- --ignored --nocapture
    /// encode_batch_benchmark`.
    #[test]
    #[ignore = "benchmark; run it in release mode"]
    fn encode_batch_benchmark() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&Utc)
        };
        let t0 = at("2026-11-24T09:00:00.412345678Z");
        let mut customer: Customer = field(&example("customer.created"), "customer");
        customer.first_seen = t0;
        customer.last_seen = t0;
        let mut opened: Conversation = field(&example("conversation.created"), "conversation");
        opened.created_at = t0;
        opened.updated_at = t0;
        opened.last_inbound_at = Some(t0);
        opened.queued_at = Some(t0);
        let mut assigned: Conversation = field(&example("conversation.assigned"), "conversation");
        assigned.created_at = t0;
        assigned.queued_at = Some(t0);
        assigned.last_inbound_at = Some(t0);
        assigned.assigned_at = Some(at("2026-11-24T09:00:00.512345678Z"));
        assigned.updated_at = at("2026-11-24T09:00:00.512345678Z");
        let mut message: Envelope = field(&example("message.received"), "message");
        message.received_at = t0;
        let run = |n: u32| {
            let start = std::time::Instant::now();
            let mut bytes = 0;
            for _ in 0..n {
                let mut batch = EventBatch::new();
                batch
                    .customer_created(std::hint::black_box(&customer))
                    .conversation(EventType::ConversationCreated, &opened)
                    .conversation(EventType::ConversationQueued, &opened)
                    .message_received(&message, None)
                    .conversation(EventType::ConversationAssigned, &assigned);
                bytes = batch
                    .events
                    .iter()
                    .map(|e| e.body.as_ref().map_or(0, Vec::len))
                    .sum::<usize>();
                std::hint::black_box(&batch);
            }
            (start.elapsed().as_nanos() as f64 / f64::from(n), bytes)
        };
        // Batches per timed run; fewer to count instructions under callgrind.
        let batches = std::env::var("ENCODE_BENCH_BATCHES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(50_000);
        run(batches / 2);
        let mut best = f64::MAX;
        let mut bytes = 0;
        for _ in 0..7 {
            let (ns, b) = run(batches);
            best = best.min(ns);
            bytes = b;
        }
        println!("encode_batch_benchmark: {best:.0} ns per 5-event batch ({bytes} bytes)");
    }
}
