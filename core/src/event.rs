//! The event stream (`schemas/event.v1.json`): CloudEvents 1.0, structured JSON mode.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every event type Switchyard emits; the AMQP routing key on `switchyard.events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    /// A conversation was opened for a customer.
    #[serde(rename = "conversation.created")]
    ConversationCreated,
    /// A conversation entered a pool's queue.
    #[serde(rename = "conversation.queued")]
    ConversationQueued,
    /// A conversation was assigned to an agent.
    #[serde(rename = "conversation.assigned")]
    ConversationAssigned,
    /// An agent accepted the conversation offered to it (a pool with `offer_timeout_secs`): it
    /// stays with the agent for good.
    #[serde(rename = "conversation.accepted")]
    ConversationAccepted,
    /// A conversation was closed.
    #[serde(rename = "conversation.closed")]
    ConversationClosed,
    /// A conversation moved to another pool or agent.
    #[serde(rename = "conversation.transferred")]
    ConversationTransferred,
    /// A customer message was routed into a conversation.
    #[serde(rename = "message.received")]
    MessageReceived,
    /// A reply was delivered to the channel.
    #[serde(rename = "message.sent")]
    MessageSent,
    /// A reply could not be delivered.
    #[serde(rename = "message.failed")]
    MessageFailed,
    /// A customer profile was created.
    #[serde(rename = "customer.created")]
    CustomerCreated,
    /// Two customer profiles were merged into one.
    #[serde(rename = "customer.merged")]
    CustomerMerged,
    /// A customer profile and its conversations were erased (on request, or by retention);
    /// consumers erase their copies.
    #[serde(rename = "customer.erased")]
    CustomerErased,
    /// A customer's tags or attributes were changed (`PATCH /v1/customers/{id}`).
    #[serde(rename = "customer.updated")]
    CustomerUpdated,
    /// An agent's presence, capacity or pools changed.
    #[serde(rename = "agent.updated")]
    AgentUpdated,
}

impl EventType {
    /// All event types.
    pub const ALL: [EventType; 14] = [
        EventType::ConversationCreated,
        EventType::ConversationQueued,
        EventType::ConversationAssigned,
        EventType::ConversationAccepted,
        EventType::ConversationClosed,
        EventType::ConversationTransferred,
        EventType::MessageReceived,
        EventType::MessageSent,
        EventType::MessageFailed,
        EventType::CustomerCreated,
        EventType::CustomerMerged,
        EventType::CustomerErased,
        EventType::CustomerUpdated,
        EventType::AgentUpdated,
    ];

    /// The dotted name, e.g. `conversation.assigned`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ConversationCreated => "conversation.created",
            EventType::ConversationQueued => "conversation.queued",
            EventType::ConversationAssigned => "conversation.assigned",
            EventType::ConversationAccepted => "conversation.accepted",
            EventType::ConversationClosed => "conversation.closed",
            EventType::ConversationTransferred => "conversation.transferred",
            EventType::MessageReceived => "message.received",
            EventType::MessageSent => "message.sent",
            EventType::MessageFailed => "message.failed",
            EventType::CustomerCreated => "customer.created",
            EventType::CustomerMerged => "customer.merged",
            EventType::CustomerErased => "customer.erased",
            EventType::CustomerUpdated => "customer.updated",
            EventType::AgentUpdated => "agent.updated",
        }
    }

    /// The CloudEvents `type` attribute, e.g. `io.switchyard.conversation.assigned`.
    pub fn cloudevents_type(self) -> String {
        self.cloudevents_type_str().to_owned()
    }

    /// The CloudEvents `type` attribute, without allocating: [`CLOUDEVENTS_TYPE_PREFIX`] and
    /// [`EventType::as_str`].
    pub fn cloudevents_type_str(self) -> &'static str {
        match self {
            EventType::ConversationCreated => "io.switchyard.conversation.created",
            EventType::ConversationQueued => "io.switchyard.conversation.queued",
            EventType::ConversationAssigned => "io.switchyard.conversation.assigned",
            EventType::ConversationAccepted => "io.switchyard.conversation.accepted",
            EventType::ConversationClosed => "io.switchyard.conversation.closed",
            EventType::ConversationTransferred => "io.switchyard.conversation.transferred",
            EventType::MessageReceived => "io.switchyard.message.received",
            EventType::MessageSent => "io.switchyard.message.sent",
            EventType::MessageFailed => "io.switchyard.message.failed",
            EventType::CustomerCreated => "io.switchyard.customer.created",
            EventType::CustomerMerged => "io.switchyard.customer.merged",
            EventType::CustomerErased => "io.switchyard.customer.erased",
            EventType::CustomerUpdated => "io.switchyard.customer.updated",
            EventType::AgentUpdated => "io.switchyard.agent.updated",
        }
    }
}

/// Prefix of every CloudEvents `type` Switchyard emits.
pub const CLOUDEVENTS_TYPE_PREFIX: &str = "io.switchyard.";

/// One event, as a CloudEvents 1.0 structured-mode JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "Switchyard event v1 (CloudEvents 1.0, structured JSON)")]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique per event (ULID).
    pub id: String,
    /// `/switchyard/{tenant}/{component}`.
    pub source: String,
    /// `io.switchyard.<event type>`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The conversation, customer or agent the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// Extension attribute: the tenant.
    pub tenant: String,
    /// The event's data; its shape depends on the type (see the schema's examples).
    pub data: serde_json::Value,
}

/// An event borrowing its parts, serialized exactly like [`CloudEvent`] (same fields, names and
/// order), to encode an event straight from its records without first building a
/// `serde_json::Value`. (The router's `EventBatch` writes these same bytes by hand, to reuse
/// encoded data and skip allocations.)
#[derive(Debug, Serialize)]
pub struct CloudEventRef<'a, D: Serialize> {
    /// Always `1.0`.
    pub specversion: &'a str,
    /// Unique per event (ULID).
    pub id: &'a str,
    /// `/switchyard/{tenant}/{component}`.
    pub source: &'a str,
    /// `io.switchyard.<event type>`.
    #[serde(rename = "type")]
    pub event_type: &'a str,
    /// The conversation, customer or agent the event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    /// When it happened.
    #[serde(serialize_with = "crate::time::rfc3339::serialize")]
    pub time: DateTime<Utc>,
    /// Always `application/json`.
    pub datacontenttype: &'a str,
    /// Extension attribute: the tenant.
    pub tenant: &'a str,
    /// The event's data.
    pub data: D,
}

impl CloudEvent {
    /// The id of an event recording that `subject` reached a state `at` (a conversation
    /// assigned, a customer created): a ULID whose time part is `at` and whose 80 random bits
    /// come from a SHA-256 of (type, subject, `at`). Stable across processes and versions, so
    /// re-emitting the event after a retry yields the same id and consumers deduplicate it;
    /// distinct for distinct state changes.
    pub fn state_id(event_type: EventType, subject: &str, at: DateTime<Utc>) -> String {
        use sha2::{Digest, Sha256};
        let head = Sha256::new()
            .chain_update(event_type.as_str())
            .chain_update([0u8])
            .chain_update(subject)
            .chain_update([0u8]);
        // The hashed time is `to_rfc3339_opts(SecondsFormat::Nanos, true)`, byte for byte.
        let digest = crate::time::with_rfc3339(&at, crate::time::Fraction::Nanos, |time| {
            head.chain_update(time).finalize()
        });
        let mut high = [0u8; 16];
        high.copy_from_slice(&digest[..16]);
        let random = u128::from_be_bytes(high) >> 48;
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
        ulid::Ulid::from_parts(millis, random).to_string()
    }

    /// A new event of `event_type` about `subject` with `data`.
    pub fn new(
        event_type: EventType,
        tenant: &str,
        subject: impl Into<String>,
        data: serde_json::Value,
    ) -> Self {
        CloudEvent {
            specversion: "1.0".to_owned(),
            id: crate::envelope::new_id(),
            source: format!("/switchyard/{tenant}/router"),
            event_type: event_type.cloudevents_type(),
            subject: Some(subject.into()),
            time: crate::time::now(),
            datacontenttype: "application/json".to_owned(),
            tenant: tenant.to_owned(),
            data,
        }
    }

    /// The event's type, if it is one Switchyard knows.
    pub fn known_type(&self) -> Option<EventType> {
        let name = self.event_type.strip_prefix(CLOUDEVENTS_TYPE_PREFIX)?;
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_event_ids_are_stable_valid_ulids_and_distinct() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-28T05:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = |t: EventType, subject: &str, at| CloudEvent::state_id(t, subject, at);
        let a = id(EventType::ConversationAssigned, "c1", at);
        assert_eq!(
            a,
            id(EventType::ConversationAssigned, "c1", at),
            "a re-emitted state event keeps its id"
        );
        let parsed: ulid::Ulid = a.parse().unwrap();
        assert_eq!(parsed.timestamp_ms(), 1_795_842_000_123);
        let others = [
            id(EventType::ConversationQueued, "c1", at),
            id(EventType::ConversationAssigned, "c2", at),
            id(
                EventType::ConversationAssigned,
                "c1",
                at + chrono::Duration::microseconds(1),
            ),
        ];
        for other in &others {
            assert_ne!(&a, other);
        }
    }

    /// Ids computed by `state_id` before it formatted the time itself (it hashed chrono's
    /// `to_rfc3339_opts(SecondsFormat::Nanos, true)`): they must never change.
    #[test]
    fn state_event_ids_match_fixed_vectors() {
        let cases = [
            (
                EventType::ConversationAssigned,
                "c1",
                "2026-11-28T05:00:00.123456000Z",
                "01M8G8CH7VZP7YQYWVCCB4G73K",
            ),
            (
                EventType::ConversationCreated,
                "01KAVQ5D3C5E7G9J1M3P5R7T9W",
                "2026-11-28T05:00:00Z",
                "01M8G8CH40QR8A0DW73K1BRXJN",
            ),
            (
                EventType::ConversationQueued,
                "01KAVQ5D3C5E7G9J1M3P5R7T9W",
                "2026-11-28T05:00:00.412Z",
                "01M8G8CHGWWZPEZ5QSJMDBVDGW",
            ),
            (
                EventType::CustomerCreated,
                "01KAVQ5D2B4F6H8K0N2Q4S6V8X",
                "2026-11-28T05:00:00.412345678Z",
                "01M8G8CHGW99C0PER8G67FCJ1Z",
            ),
            (
                EventType::MessageFailed,
                "01KAVQ5C3X8N2R4T6V8W0Y2Z4A",
                "1970-01-01T00:00:01.000000001Z",
                "00000000Z871FVKZZJ1JPX52ZH",
            ),
            (
                EventType::ConversationClosed,
                "",
                "1969-12-31T23:59:59.999999999Z",
                "000000000013J2K3S61RH649X8",
            ),
            (
                EventType::ConversationTransferred,
                "ü/ß",
                "0000-01-01T00:00:00.000000005Z",
                "00000000003NEAP1DTH0WY3720",
            ),
            (
                EventType::ConversationAssigned,
                "c9",
                "9999-12-31T23:59:59.999999999Z",
                "76EZ91ZPZZS6TR0TPGEKNVNSK5",
            ),
            (
                EventType::ConversationAssigned,
                "c9",
                "+10000-01-01T00:00:00Z",
                "76EZ91ZQ00DCYC2N3B0KWYMRG5",
            ),
            (
                EventType::ConversationAssigned,
                "c9",
                "-0001-12-31T23:59:59.000000010Z",
                "00000000002FCS0X3CX1ECZZXB",
            ),
            (
                EventType::AgentUpdated,
                "a1",
                "2016-12-31T23:59:60.5Z",
                "01B5BN6SFMGE0DYZJ8R43X5DAN",
            ),
        ];
        for (event_type, subject, at, want) in cases {
            let at = at.parse::<DateTime<Utc>>().unwrap();
            assert_eq!(
                CloudEvent::state_id(event_type, subject, at),
                want,
                "{event_type:?} {subject:?} {at:?}"
            );
        }
    }

    #[test]
    fn cloudevents_type_str_is_the_prefixed_name() {
        for t in EventType::ALL {
            assert_eq!(
                t.cloudevents_type_str(),
                format!("{CLOUDEVENTS_TYPE_PREFIX}{}", t.as_str())
            );
            assert_eq!(t.cloudevents_type(), t.cloudevents_type_str());
        }
    }

    /// The borrowed event serializes exactly as the owned one (which uses chrono's own
    /// timestamp encoding), for times of every fraction length.
    #[test]
    fn cloud_event_ref_serializes_like_cloud_event() {
        for time in [
            "2026-11-24T09:00:00Z",
            "2026-11-24T09:00:00.412Z",
            "2026-11-24T09:00:00.412345Z",
            "2026-11-24T09:00:00.412345678Z",
            "+10000-01-01T00:00:00.5Z",
        ] {
            let mut event = CloudEvent::new(
                EventType::CustomerCreated,
                "t\"1",
                "c1",
                serde_json::json!({"a": [1, "b"]}),
            );
            event.time = time.parse().unwrap();
            let borrowed = CloudEventRef {
                specversion: &event.specversion,
                id: &event.id,
                source: &event.source,
                event_type: &event.event_type,
                subject: event.subject.as_deref(),
                time: event.time,
                datacontenttype: &event.datacontenttype,
                tenant: &event.tenant,
                data: &event.data,
            };
            assert_eq!(
                serde_json::to_string(&borrowed).unwrap(),
                serde_json::to_string(&event).unwrap()
            );
        }
    }

    #[test]
    fn serde_names_match_as_str() {
        for t in EventType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
            let e = CloudEvent::new(t, "default", "c1", serde_json::json!({}));
            assert_eq!(e.known_type(), Some(t));
        }
    }
}
