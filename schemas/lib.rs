//! JSON Schemas of Switchyard's wire contract, generated from the Rust types in
//! `switchyard-core` with schemars.
//!
//! | file | describes |
//! |---|---|
//! | `message.v1.json` | [`Envelope`]: one message on the bus, either direction |
//! | `event.v1.json` | [`CloudEvent`] on `switchyard.events`, with `data` tied to each type |
//! | `visitor-ws.v1.json` | frames on `/v1/channels/{id}/ws`: [`VisitorRequest`] or [`VisitorEvent`] |
//! | `agent-ws.v1.json` | frames on `/v1/agents/ws`: [`AgentRequest`] or [`AgentEvent`] |
//!
//! The committed files under `schemas/` are written by
//! `cargo run -p switchyard-schemas --bin write-schemas`; the tests fail when they drift from
//! what [`all`] produces.

use std::path::{Path, PathBuf};

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use switchyard_core::event::CLOUDEVENTS_TYPE_PREFIX;
use switchyard_core::model::{Agent, Conversation, Customer};
use switchyard_core::protocol::{AgentEvent, AgentRequest, VisitorEvent, VisitorRequest};
use switchyard_core::{CloudEvent, Envelope, EventType, IdentityKey};

/// Where the schemas are published; every `$id` is this plus the file name.
pub const BASE_URI: &str = "https://switchyard.dev/schemas/";

/// File name of the envelope schema.
pub const MESSAGE_V1: &str = "message.v1.json";
/// File name of the event schema.
pub const EVENT_V1: &str = "event.v1.json";
/// File name of the visitor WebSocket schema.
pub const VISITOR_WS_V1: &str = "visitor-ws.v1.json";
/// File name of the agent WebSocket schema.
pub const AGENT_WS_V1: &str = "agent-ws.v1.json";

/// The meta-schema every file declares.
pub const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// The `$id` of a schema file.
pub fn schema_id(file: &str) -> String {
    format!("{BASE_URI}{file}")
}

/// The settings every schema is generated with: JSON Schema 2020-12, describing what
/// Switchyard *accepts* (the deserialize contract: fields with a default may be omitted).
fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12().into_generator()
}

/// Sets `$schema`, `$id`, `description` (and `title`, when given) on a generated schema.
fn with_header(file: &str, title: Option<&str>, description: &str, mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("$schema".into(), json!(DRAFT_2020_12));
        obj.insert("$id".into(), json!(schema_id(file)));
        if let Some(title) = title {
            obj.insert("title".into(), json!(title));
        }
        obj.insert("description".into(), json!(description));
    }
    schema
}

/// `message.v1.json`: the envelope.
pub fn message_v1() -> Value {
    let schema = generator().into_root_schema_for::<Envelope>().to_value();
    with_header(
        MESSAGE_V1,
        None,
        "One message as it travels on the bus (switchyard.inbound / switchyard.outbound) and \
         to an API channel's callback_url, in either direction. Identity keys are \
         `kind:scope:value`; content is tagged by `type`.",
        schema,
    )
}

/// Shapes of the CloudEvents `data` attribute, one per [`EventType`].
///
/// The router emits exactly these; `event.v1.json` ties each `io.switchyard.<type>` to one of
/// them, so a consumer can validate `data` against its type. Fields typed `Option` are always
/// present (as `null` when empty).
pub mod event_data {
    use super::*;

    /// `conversation.created`, `conversation.queued`, `conversation.assigned`,
    /// `conversation.accepted`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ConversationData {
        /// The conversation after the change.
        pub conversation: Conversation,
    }

    /// `conversation.closed`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ConversationClosedData {
        /// The conversation, closed.
        pub conversation: Conversation,
        /// The agent who held it when it closed, if any.
        pub agent_id: Option<String>,
    }

    /// `conversation.transferred`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ConversationTransferredData {
        /// The conversation after the transfer (its new pool and agent).
        pub conversation: Conversation,
        /// The agent who held it before, if any (a bot as `bot:{id}`).
        pub from_agent_id: Option<String>,
        /// Why it moved, when nobody asked for the move: `declined` (its agent declined its
        /// offer), `offer_expired` (its agent let the offer expire), `unanswered` (its agent
        /// left the customer waiting for an answer the pool's `answer_timeout_secs`) or
        /// `overflow` (it waited its pool's `[pools.overflow] after_secs` in the queue); `null`
        /// for a transfer.
        #[serde(default)]
        pub reason: Option<String>,
    }

    /// `message.received`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct MessageReceivedData {
        /// The customer's message, with `customer_id` and `conversation_id` set.
        pub message: Envelope,
        /// The agent holding the conversation, if any.
        pub agent_id: Option<String>,
    }

    /// `message.sent`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct MessageSentData {
        /// The reply, as delivered.
        pub message: Envelope,
        /// The channel's id for the delivered message, when it gives one.
        pub channel_message_id: Option<String>,
    }

    /// `message.failed`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct MessageFailedData {
        /// The reply that could not be delivered.
        pub message: Envelope,
        /// What went wrong, for people.
        pub reason: String,
        /// Machine-readable error code (`rejected`, `rate_limited`, the channel's own code, ...).
        pub code: String,
    }

    /// `customer.created` and `customer.updated`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct CustomerData {
        /// The profile: the new one (`customer.created`), or as it is after the change of its
        /// tags or attributes (`customer.updated`).
        pub customer: Customer,
    }

    /// `customer.merged`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct CustomerMergedData {
        /// The surviving profile, after the merge.
        pub customer: Customer,
        /// Id of the profile merged away.
        pub from: String,
        /// Id of the surviving profile (`customer.id`).
        pub into: String,
        /// The identity keys the two profiles shared, which caused the merge.
        pub via: Vec<IdentityKey>,
    }

    /// `customer.erased`: ids only, for consumers to erase their own copies.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct CustomerErasedData {
        /// The erased profile.
        pub customer_id: String,
        /// Why: `request` (`DELETE /v1/customers/{id}`) or `retention`
        /// (`store.customer_retention_days`).
        pub reason: String,
        /// Profiles merged into it earlier, erased with it.
        pub merged_from: Vec<String>,
        /// Its conversations, deleted with their messages.
        pub conversations: Vec<String>,
    }

    /// `agent.updated`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AgentData {
        /// The agent after the change.
        pub agent: Agent,
    }

    /// Name (in `event.v1.json`'s `$defs`) of the data shape of an event type.
    pub fn def_name(t: EventType) -> &'static str {
        match t {
            EventType::ConversationCreated
            | EventType::ConversationQueued
            | EventType::ConversationAssigned
            | EventType::ConversationAccepted => "ConversationData",
            EventType::ConversationClosed => "ConversationClosedData",
            EventType::ConversationTransferred => "ConversationTransferredData",
            EventType::MessageReceived => "MessageReceivedData",
            EventType::MessageSent => "MessageSentData",
            EventType::MessageFailed => "MessageFailedData",
            EventType::CustomerCreated | EventType::CustomerUpdated => "CustomerData",
            EventType::CustomerMerged => "CustomerMergedData",
            EventType::CustomerErased => "CustomerErasedData",
            EventType::AgentUpdated => "AgentData",
        }
    }

    /// Generates the definitions of every data shape (and what they use) into `generator`.
    ///
    /// Every field of a data shape is required: the router always writes them all, the
    /// `Option` ones as `null` (schemars would leave those optional, as serde would accept
    /// them missing).
    pub(crate) fn register(generator: &mut SchemaGenerator) {
        generator.subschema_for::<ConversationData>();
        generator.subschema_for::<ConversationClosedData>();
        generator.subschema_for::<ConversationTransferredData>();
        generator.subschema_for::<MessageReceivedData>();
        generator.subschema_for::<MessageSentData>();
        generator.subschema_for::<MessageFailedData>();
        generator.subschema_for::<CustomerData>();
        generator.subschema_for::<CustomerMergedData>();
        generator.subschema_for::<CustomerErasedData>();
        generator.subschema_for::<AgentData>();
        let defs = generator.definitions_mut();
        for t in EventType::ALL {
            if let Some(Value::Object(def)) = defs.get_mut(def_name(t)) {
                let mut required: Vec<Value> = def
                    .get("required")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut missing: Vec<&String> = def
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|props| props.keys().collect())
                    .unwrap_or_default();
                missing.retain(|k| !required.iter().any(|r| r == k.as_str()));
                missing.sort();
                required.extend(missing.into_iter().map(|k| json!(k)));
                def.insert("required".into(), Value::Array(required));
            }
        }
    }
}

/// `event.v1.json`: a CloudEvent, with `data` tied to its `type`.
///
/// Generated from [`CloudEvent`], then tightened by hand: `specversion` is `1.0`,
/// `datacontenttype` is `application/json`, `type` starts with `io.switchyard.`, `source` is
/// `/switchyard/{tenant}/{component}`, and for every known type `subject` is required and `data`
/// must match that type's shape (see [`event_data`]). Types this version does not know (under
/// `io.switchyard.`) pass with any `data`, so consumers can skip events newer than they are.
pub fn event_v1() -> Value {
    let mut generator = generator();
    event_data::register(&mut generator);
    let mut schema = generator.into_root_schema_for::<CloudEvent>().to_value();

    let known: Vec<Value> = EventType::ALL
        .iter()
        .map(|t| json!(t.cloudevents_type()))
        .collect();
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        patch(props, "specversion", json!({ "const": "1.0" }));
        patch(
            props,
            "datacontenttype",
            json!({ "const": "application/json" }),
        );
        patch(
            props,
            "type",
            json!({
                "pattern": format!("^{}", CLOUDEVENTS_TYPE_PREFIX.replace('.', r"\.")),
                "examples": known,
            }),
        );
        patch(
            props,
            "source",
            json!({ "pattern": "^/switchyard/[^/]+/[^/]+$", "examples": ["/switchyard/default/router"] }),
        );
        patch(
            props,
            "data",
            json!({
                "description": "The event's data; its shape depends on `type` (see `allOf`).",
                "type": "object",
            }),
        );
    }
    let rules: Vec<Value> = EventType::ALL
        .iter()
        .map(|&t| {
            json!({
                "if": {
                    "properties": { "type": { "const": t.cloudevents_type() } },
                    "required": ["type"]
                },
                "then": {
                    "properties": {
                        "data": { "$ref": format!("#/$defs/{}", event_data::def_name(t)) },
                        "subject": { "type": "string" }
                    },
                    "required": ["subject"]
                }
            })
        })
        .collect();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert("allOf".into(), Value::Array(rules));
    }
    with_header(
        EVENT_V1,
        None,
        "One event on the switchyard.events exchange (routing key = the event type without the \
         `io.switchyard.` prefix), as a CloudEvents 1.0 structured-mode JSON object. `subject` \
         is the conversation, customer or agent id; `data` has one shape per type.",
        schema,
    )
}

/// Merges `extra`'s keys into the property `name`'s schema.
fn patch(props: &mut Map<String, Value>, name: &str, extra: Value) {
    if let (Some(Value::Object(prop)), Value::Object(extra)) = (props.get_mut(name), extra) {
        prop.extend(extra);
    }
}

/// A schema for a socket: `oneOf` the frames from the client and the frames to it, each in
/// `$defs` under its Rust type name.
fn socket_schema<In: JsonSchema, Out: JsonSchema>(
    file: &str,
    title: &str,
    description: &str,
) -> Value {
    let mut generator = generator();
    let from_client = generator.subschema_for::<In>().to_value();
    let to_client = generator.subschema_for::<Out>().to_value();
    let defs = generator.take_definitions(true);
    with_header(
        file,
        Some(title),
        description,
        json!({
            "oneOf": [from_client, to_client],
            "$defs": defs,
        }),
    )
}

/// `visitor-ws.v1.json`: frames on the visitor socket.
pub fn visitor_ws_v1() -> Value {
    socket_schema::<VisitorRequest, VisitorEvent>(
        VISITOR_WS_V1,
        "Switchyard visitor WebSocket v1",
        "One JSON text frame on GET /v1/channels/{channel_id}/ws, tagged by `type`: \
         `$defs/VisitorRequest` from the visitor, `$defs/VisitorEvent` to the visitor.",
    )
}

/// `agent-ws.v1.json`: frames on the agent socket.
pub fn agent_ws_v1() -> Value {
    socket_schema::<AgentRequest, AgentEvent>(
        AGENT_WS_V1,
        "Switchyard agent WebSocket v1",
        "One JSON text frame on GET /v1/agents/ws, tagged by `type`: `$defs/AgentRequest` \
         from the agent, `$defs/AgentEvent` to the agent.",
    )
}

/// Every schema file, by file name.
pub fn all() -> Vec<(&'static str, Value)> {
    vec![
        (MESSAGE_V1, message_v1()),
        (EVENT_V1, event_v1()),
        (VISITOR_WS_V1, visitor_ws_v1()),
        (AGENT_WS_V1, agent_ws_v1()),
    ]
}

/// The committed form of a schema: pretty-printed with two-space indents and a trailing
/// newline, object keys in a fixed order (`$schema`, `$id`, `title`, `description`, `type`,
/// `const` first, `$defs` last, the rest alphabetical) whatever serde_json's map type is.
pub fn render(schema: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, schema, 0);
    out.push('\n');
    out
}

fn key_rank(key: &str) -> usize {
    const FIRST: [&str; 6] = ["$schema", "$id", "title", "description", "type", "const"];
    match FIRST.iter().position(|k| *k == key) {
        Some(i) => i,
        None if key == "$defs" => FIRST.len() + 1,
        None => FIRST.len(),
    }
}

fn write_value(out: &mut String, value: &Value, depth: usize) {
    let indent = |out: &mut String, depth: usize| out.extend(std::iter::repeat_n("  ", depth));
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                indent(out, depth + 1);
                write_value(out, item, depth + 1);
            }
            out.push('\n');
            indent(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| (key_rank(a.0), a.0).cmp(&(key_rank(b.0), b.0)));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                indent(out, depth + 1);
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                write_value(out, item, depth + 1);
            }
            out.push('\n');
            indent(out, depth);
            out.push('}');
        }
        scalar_or_empty => out.push_str(&scalar_or_empty.to_string()),
    }
}

/// The folder the committed schema files live in (`schemas/` in the repository).
pub fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes every schema into `dir`; returns the files that changed.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    for (file, schema) in all() {
        let path = dir.join(file);
        let text = render(&schema);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&path, text)?;
            changed.push(path);
        }
    }
    Ok(changed)
}

/// Files in `dir` that differ from what the generator produces now (missing ones included).
pub fn stale(dir: &Path) -> Vec<PathBuf> {
    all()
        .into_iter()
        .filter(|(file, schema)| {
            std::fs::read_to_string(dir.join(file)).ok().as_deref() != Some(render(schema).as_str())
        })
        .map(|(file, _)| dir.join(file))
        .collect()
}
