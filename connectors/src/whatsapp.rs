//! WhatsApp Cloud API (Meta) (kind `whatsapp`): the business phone number's `messages`
//! webhooks in, replies through the Graph API's `/{phone_number_id}/messages` out.
//!
//! * **Handshake** (Graph API webhooks, "Getting started"): saving the callback URL in the app
//!   dashboard sends `GET ?hub.mode=subscribe&hub.verify_token=<ours>&hub.challenge=<n>`; the
//!   answer is 200 with the raw `hub.challenge` as the body. A wrong token is refused (401).
//! * **Signature**: header `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw
//!   body)>`, over the exact bytes (Meta escapes non-ASCII as `\uXXXX`, so re-serialised JSON
//!   would not match). The legacy `X-Hub-Signature` (SHA-1) header is ignored.
//! * **Payload**: `{"object":"whatsapp_business_account","entry":[{"id":WABA,"changes":[{
//!   "field":"messages","value":{"metadata":{"phone_number_id",…},"contacts":[{"profile":
//!   {"name"},"wa_id"}],"messages":[…],"statuses":[…]}}]}]}` — batched: every entry × change ×
//!   message becomes one envelope. Only messages to the configured `phone_number_id` are
//!   routed; `statuses` (sent/delivered/read/failed of our own sends) are not.
//! * **Dedupe**: the message id (`wamid.…`), stable across Meta's retries:
//!   `whatsapp:{phone_number_id}:{wamid}`.
//! * **Reply**: `POST {api_base}/{phone_number_id}/messages`, `Authorization: Bearer
//!   <access_token>`, `{"messaging_product":"whatsapp","recipient_type":"individual","to":wa_id,
//!   "type":"text","text":{"body":…}}`, plus, with `quote_replies = true`,
//!   `"context":{"message_id":wamid}` quoting the customer message it answers. Free-form
//!   messages are allowed only within 24 h of the customer's last message (else error 131047:
//!   a template is needed). Images, videos and documents carry their caption (`caption`, up
//!   to 1024 characters) both ways; audio has none, so an audio reply's caption follows as a
//!   text message.
//! * **Templates** (Cloud API "Send message templates"): `template` content is sent as
//!   `{"type":"template","template":{"name","language":{"code"},"components"?}}`: its
//!   `parameters` become one `body` component of text parameters, or its `components` are
//!   passed through verbatim. Templates are the one thing the 24-hour window lets through
//!   ([`ChannelRules::window_exempt`]); Meta's template errors (132xxx) are rejections that
//!   keep their codes.
//!
//! * **Media a customer sent** ([`Connector::fetch_media`], Cloud API "Media" reference,
//!   developers.facebook.com/docs/whatsapp/cloud-api/reference/media): `GET {api_base}/
//!   {media id}` with the bearer token answers `{"url", "mime_type", "file_size"}`; the `url`
//!   (valid 5 minutes) is then fetched with the same bearer token. Media ids live 30 days; an
//!   unknown one answers error 100 (subcode 33).
//!
//! * **Delivery failures** (`messages` webhook reference, "Status messages"): the send API's
//!   `{"messages":[{"id":wamid}]}` means Meta accepted a reply, not that it arrived. When it
//!   cannot deliver it, a later notification carries `statuses[{"id":wamid,"status":"failed",
//!   "timestamp","recipient_id","errors":[{"code","title","message","error_data":{"details"}}]}]`.
//!   Every accepted send is remembered ([`crate::sent`]: `whatsapp:{channel}:sent:{wamid}`, 30
//!   days, Meta's default message time-to-live); `normalize` turns each `failed` status into a
//!   notice ([`FAILED_STATUS_EVENT`]) that [`Connector::deliver`] reports through
//!   [`EnvelopeSink::delivery_failed`] (`message.failed`, code `whatsapp_{errors[0].code}`, or
//!   `whatsapp_failed` without one) and never publishes. Other statuses are counted and
//!   ignored; an unreadable one is left out and logged, never costing the batch's messages.
//!
//! The reply's `context` needs the customer's `wamid`, which the router does not carry: the
//! outbound envelope's `reply_to` is the inbound *envelope* id. With `quote_replies`,
//! [`Connector::deliver`] keeps `envelope id → wamid` in the shared store for the 24 h a reply
//! is possible (one store write per inbound message, which is why it is off by default).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::{ChannelRef, Content, Envelope, Media, Sender};
use switchyard_core::identity::IdentityKey;
use switchyard_core::store::Store;

use crate::api::retry_after;
use crate::caption::{MediaSent, Part, send_media_then_caption, within_limit};
use crate::media::{self, MAX_FETCH_BYTES, MediaDownload};
use crate::rules::{Captions, ChannelRules};
use crate::sent::SentMessages;
use crate::signature::{constant_time_eq, hmac_sha256_hex};
use crate::token_cache::{base_url, encode_component};
use crate::{
    Accepted, Connector, ConnectorContext, ConnectorError, EnvelopeSink, HttpReply, InboundRequest,
    RawPolicy, SendReceipt, keep_valid,
};

/// Connector kind.
pub const KIND: &str = "whatsapp";
/// Configuration keys besides the common ones.
pub const KEYS: &[&str] = &[
    "app_secret",
    "verify_token",
    "phone_number_id",
    "access_token",
    "quote_replies",
];
/// The Graph API, with the version this connector was written against.
pub const DEFAULT_API_BASE: &str = "https://graph.facebook.com/v21.0";
/// Header carrying the webhook signature.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// The `object` of WhatsApp Business Account notifications.
pub const OBJECT: &str = "whatsapp_business_account";
/// The customer-service window: free-form messages only this long after the customer's last
/// message.
pub const REPLY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Longest text body the send API takes, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest caption of an image, video or document, in characters.
pub const MAX_CAPTION_CHARS: usize = 1024;
/// Longest `hub.challenge` echoed back (Meta sends a short number).
const MAX_CHALLENGE_LEN: usize = 256;
/// How long a sent message is remembered (wamid → envelope) for a later `failed` status. Meta
/// tries to deliver a message for its time-to-live (30 days by default), but the failures agents
/// can act on come at once or within hours (undeliverable, re-engagement, spam limits); a whole
/// envelope kept per reply for 30 days would cost a busy channel gigabytes of Redis. As WeCom kf.
pub const SENT_TTL: Duration = Duration::from_secs(3 * 86400);
/// The name of the `event` notice `normalize` makes of a `failed` status: [`Connector::deliver`]
/// reports it as a delivery failure and never publishes it.
pub const FAILED_STATUS_EVENT: &str = "whatsapp_status_failed";

/// The value of `X-Hub-Signature-256` for `body`: `sha256=` + hex HMAC-SHA256 under the app
/// secret.
pub fn webhook_signature(app_secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hmac_sha256_hex(app_secret.as_bytes(), &[body]))
}

/// A verified, parsed `whatsapp_business_account` notification.
#[derive(Debug, Clone, PartialEq)]
pub struct WhatsAppInbound {
    /// The notification's `object`.
    pub object: String,
    /// Every `changes[].value` of field `messages`, in order (all entries).
    pub changes: Vec<MessagesChange>,
    /// How many changes of other fields the notification carried (not routed).
    pub other_fields: usize,
}

/// One `messages` change: a business phone number's messages and statuses.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesChange {
    /// `metadata.phone_number_id`: the business number the messages were sent to.
    pub phone_number_id: String,
    /// `wa_id` → `profile.name` of the contacts the change lists.
    pub names: HashMap<String, String>,
    /// The customers' messages, as sent.
    pub messages: Vec<Map<String, Value>>,
    /// The delivery reports of our own sends.
    pub statuses: Statuses,
}

/// The `statuses` of one change: delivery reports (sent, delivered, read, failed, …) of the
/// messages we sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statuses {
    /// How many the change carried.
    pub count: usize,
    /// The readable `failed` ones, in order.
    pub failed: Vec<FailedStatus>,
    /// How many could not be read (not an object, no `status`, a `failed` one without `id`, or
    /// a `statuses` that is not an array): left out, never costing the change's messages.
    pub unreadable: usize,
}

/// A `failed` status: WhatsApp could not deliver a message it had accepted from us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedStatus {
    /// `id`: the wamid the send API answered for our message.
    pub wamid: String,
    /// `recipient_id`: the customer's wa_id, when given.
    pub recipient_id: Option<String>,
    /// `timestamp` (Unix seconds, sent as a string), when given.
    pub timestamp: Option<i64>,
    /// `errors[0]`, when given.
    pub error: Option<StatusError>,
}

/// The error object of a `failed` status (Meta's error codes: 131026 undeliverable, 131047
/// re-engagement, 131049 not delivered to keep the ecosystem healthy, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusError {
    /// `code`.
    pub code: Option<i64>,
    /// `title`.
    pub title: Option<String>,
    /// `message`.
    pub message: Option<String>,
    /// `error_data.details`.
    pub details: Option<String>,
}

impl FailedStatus {
    /// The `message.failed` code: `whatsapp_{errors[0].code}`, or `whatsapp_failed` when Meta
    /// gave no error code.
    pub fn code(&self) -> String {
        match self.error.as_ref().and_then(|e| e.code) {
            Some(code) => format!("whatsapp_{code}"),
            None => "whatsapp_failed".to_owned(),
        }
    }

    /// The `message.failed` reason, for people: Meta's error code and what it said.
    pub fn reason(&self) -> String {
        let code = self.error.as_ref().and_then(|e| e.code);
        let said = self.error.as_ref().and_then(StatusError::description);
        let why = match (code, said) {
            (Some(code), Some(said)) => format!("error {code}: {said}"),
            (Some(code), None) => format!("error {code}"),
            (None, Some(said)) => said,
            (None, None) => "Meta gave no error".to_owned(),
        };
        format!("WhatsApp did not deliver the reply ({why})")
    }
}

impl StatusError {
    /// What Meta said: the `message` (else the `title`), then the `details` unless they only
    /// repeat it.
    pub fn description(&self) -> Option<String> {
        let repeats = |a: &str, b: &str| {
            a.trim_end_matches('.')
                .eq_ignore_ascii_case(b.trim_end_matches('.'))
        };
        match (
            self.message.as_deref().or(self.title.as_deref()),
            self.details.as_deref(),
        ) {
            (Some(said), Some(details)) if !repeats(said, details) => {
                Some(format!("{said}: {details}"))
            }
            (Some(said), _) => Some(said.to_owned()),
            (None, details) => details.map(str::to_owned),
        }
    }
}

/// Reads one `statuses[]` item: the failure when it is a `failed` status, `None` for the others
/// (sent, delivered, read, …); an error when it is not an object, has no `status`, or is a
/// failure without `id`.
pub fn failed_status(status: &Value) -> Result<Option<FailedStatus>, ConnectorError> {
    if !status.is_object() {
        return Err(malformed("`statuses[]` must hold objects"));
    }
    let kind = text(status, "status").ok_or_else(|| malformed("a status without `status`"))?;
    if kind != "failed" {
        return Ok(None);
    }
    let wamid = text(status, "id").ok_or_else(|| malformed("a failed status without `id`"))?;
    let error = status
        .get("errors")
        .and_then(Value::as_array)
        .and_then(|errors| errors.first())
        .filter(|e| e.is_object())
        .map(|e| StatusError {
            code: text(e, "code").and_then(|c| c.trim().parse().ok()),
            title: text(e, "title"),
            message: text(e, "message"),
            details: e.get("error_data").and_then(|d| text(d, "details")),
        });
    Ok(Some(FailedStatus {
        wamid,
        recipient_id: text(status, "recipient_id"),
        timestamp: text(status, "timestamp").and_then(|t| t.trim().parse().ok()),
        error,
    }))
}

/// Whether `envelope` is a notice of [`WhatsAppConnector::failure_notice`], to report rather
/// than publish.
fn is_failure_notice(envelope: &Envelope) -> bool {
    matches!(&envelope.content, Content::Event { name, .. } if name == FAILED_STATUS_EVENT)
}

/// The `statuses` of a change's `value`; never an error (see [`Statuses::unreadable`]).
fn read_statuses(value: &Value) -> Statuses {
    let items = match value.get("statuses") {
        None | Some(Value::Null) => return Statuses::default(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Statuses {
                unreadable: 1,
                ..Statuses::default()
            };
        }
    };
    let mut statuses = Statuses {
        count: items.len(),
        ..Statuses::default()
    };
    for item in items {
        match failed_status(item) {
            Ok(Some(failed)) => statuses.failed.push(failed),
            Ok(None) => {}
            Err(_) => statuses.unreadable += 1,
        }
    }
    statuses
}

fn malformed(why: impl Into<String>) -> ConnectorError {
    ConnectorError::Malformed(why.into())
}

/// A list field that may be absent or null; anything else must be an array.
fn list<'a>(value: &'a Value, key: &str, at: &str) -> Result<&'a [Value], ConnectorError> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(malformed(format!("`{at}.{key}` must be an array"))),
    }
}

/// A string field; numbers are accepted as their decimal text.
fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses a webhook body into its `messages` changes.
pub fn parse_notification(body: &[u8]) -> Result<WhatsAppInbound, ConnectorError> {
    let root: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("invalid WhatsApp notification JSON: {e}")))?;
    if !root.is_object() {
        return Err(malformed("the notification must be a JSON object"));
    }
    let object = match root.get("object") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(malformed("notification without `object`")),
    };
    let mut changes = Vec::new();
    let mut other_fields = 0;
    for entry in list(&root, "entry", "notification")? {
        if !entry.is_object() {
            return Err(malformed("`entry[]` must hold objects"));
        }
        for change in list(entry, "changes", "entry[]")? {
            if change.get("field").and_then(Value::as_str) != Some("messages") {
                other_fields += 1;
                continue;
            }
            let value = match change.get("value") {
                Some(v @ Value::Object(_)) => v,
                _ => return Err(malformed("a `messages` change without a `value` object")),
            };
            let phone_number_id = value
                .get("metadata")
                .and_then(|m| text(m, "phone_number_id"))
                .ok_or_else(|| malformed("a `messages` change without metadata.phone_number_id"))?;
            let mut names = HashMap::new();
            for contact in list(value, "contacts", "value")? {
                if let (Some(wa_id), Some(name)) = (
                    text(contact, "wa_id"),
                    contact.get("profile").and_then(|p| text(p, "name")),
                ) {
                    names.insert(wa_id, name);
                }
            }
            let messages = list(value, "messages", "value")?
                .iter()
                .map(|m| match m {
                    Value::Object(map) => Ok(map.clone()),
                    _ => Err(malformed("`messages[]` must hold objects")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            changes.push(MessagesChange {
                phone_number_id,
                names,
                messages,
                statuses: read_statuses(value),
            });
        }
    }
    Ok(WhatsAppInbound {
        object,
        changes,
        other_fields,
    })
}

/// The WhatsApp Cloud API connector.
pub struct WhatsAppConnector {
    channel: ChannelRef,
    app_secret: String,
    verify_token: String,
    phone_number_id: String,
    access_token: String,
    api_base: String,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    /// Every message the send API accepted, by wamid, for a later `failed` status.
    sent: SentMessages,
    /// `quote_replies`: a reply quotes (`context`) the customer's message it answers.
    quote_replies: bool,
    raw: RawPolicy,
}

impl std::fmt::Debug for WhatsAppConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsAppConnector")
            .field("channel", &self.channel)
            .field("phone_number_id", &self.phone_number_id)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl WhatsAppConnector {
    /// Builds the connector from its `[[channels]]` entry.
    pub fn new(settings: &ChannelSettings, ctx: &ConnectorContext) -> Result<Self, ConnectorError> {
        let required = |key: &str| -> Result<String, ConnectorError> {
            let value = settings.required_secret(key)?;
            if value.trim().is_empty() {
                return Err(ConnectorError::Config(format!(
                    "channels.{}.{key} must not be empty",
                    settings.id
                )));
            }
            Ok(value)
        };
        let phone_number_id = required("phone_number_id")?;
        if !phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConnectorError::Config(format!(
                "channels.{}.phone_number_id must be the numeric Phone number ID from the \
                 WhatsApp API Setup page (not the phone number)",
                settings.id
            )));
        }
        Ok(WhatsAppConnector {
            channel: ChannelRef {
                kind: KIND.to_owned(),
                id: settings.id.clone(),
            },
            sent: SentMessages::new(
                Arc::clone(&ctx.store),
                format!("{KIND}:{}:sent", settings.id),
                SENT_TTL,
            ),
            app_secret: required("app_secret")?,
            verify_token: required("verify_token")?,
            phone_number_id,
            access_token: required("access_token")?,
            api_base: base_url(settings.api_base.as_deref(), DEFAULT_API_BASE),
            http: ctx.http.clone(),
            store: Arc::clone(&ctx.store),
            quote_replies: settings.flag("quote_replies")?,
            raw: RawPolicy::from_settings(settings)?,
        })
    }

    /// The identity key of a customer: `whatsapp_wa_id::{wa_id}` (wa ids are global).
    pub fn customer_key(wa_id: &str) -> Result<IdentityKey, ConnectorError> {
        IdentityKey::new("whatsapp_wa_id", "", wa_id).map_err(|e| malformed(e.to_string()))
    }

    /// The send endpoint: `{api_base}/{phone_number_id}/messages`.
    pub fn messages_url(&self) -> String {
        format!(
            "{}/{}/messages",
            self.api_base,
            encode_component(&self.phone_number_id)
        )
    }

    fn dedupe_prefix(&self) -> String {
        format!("{KIND}:{}:", self.phone_number_id)
    }

    fn wamid_key(&self, envelope_id: &str) -> String {
        format!("{KIND}:{}:wamid:{envelope_id}", self.channel.id)
    }

    fn check_signature(&self, req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
        let received = req.header(SIGNATURE_HEADER).ok_or_else(|| {
            ConnectorError::Unauthorized(format!("missing `{SIGNATURE_HEADER}` header"))
        })?;
        let expected = webhook_signature(&self.app_secret, req.body);
        if constant_time_eq(&received.trim().to_ascii_lowercase(), &expected) {
            Ok(())
        } else {
            Err(ConnectorError::Unauthorized(
                "X-Hub-Signature-256 does not match the body".into(),
            ))
        }
    }

    fn envelope(
        &self,
        message: &Map<String, Value>,
        names: &HashMap<String, String>,
        received_at: DateTime<Utc>,
    ) -> Result<Envelope, ConnectorError> {
        let message_value = Value::Object(message.clone());
        let wa_id =
            text(&message_value, "from").ok_or_else(|| malformed("a message without `from`"))?;
        let wamid =
            text(&message_value, "id").ok_or_else(|| malformed("a message without `id`"))?;
        let sent_at = text(&message_value, "timestamp")
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(switchyard_core::time::from_unix_secs)
            .unwrap_or(received_at);
        let mut envelope = Envelope::inbound(
            self.channel.clone(),
            Sender {
                identities: vec![Self::customer_key(&wa_id)?],
                display_name: names.get(&wa_id).cloned(),
                external_id: wa_id,
                scope: String::new(),
            },
            message_content(&message_value)?,
            format!("{}{wamid}", self.dedupe_prefix()),
            sent_at,
            received_at,
        );
        // This message's own object, not the whole notification.
        self.raw.attach(
            std::slice::from_mut(&mut envelope),
            || match message_value {
                Value::Object(message) => Some(message),
                _ => None,
            },
        );
        Ok(envelope)
    }

    /// The notice of a `failed` status ([`FAILED_STATUS_EVENT`]: its `wamid`, `code` and
    /// `reason`), which [`Connector::deliver`] reports and never publishes.
    fn failure_notice(&self, failed: &FailedStatus, received_at: DateTime<Utc>) -> Envelope {
        let mut data = Map::new();
        data.insert("wamid".into(), Value::String(failed.wamid.clone()));
        data.insert("code".into(), Value::String(failed.code()));
        data.insert("reason".into(), Value::String(failed.reason()));
        Envelope::inbound(
            self.channel.clone(),
            Sender {
                external_id: failed.recipient_id.clone().unwrap_or_default(),
                scope: String::new(),
                display_name: None,
                identities: Vec::new(),
            },
            Content::Event {
                name: FAILED_STATUS_EVENT.to_owned(),
                data,
            },
            format!("{}failed:{}", self.dedupe_prefix(), failed.wamid),
            failed
                .timestamp
                .and_then(switchyard_core::time::from_unix_secs)
                .unwrap_or(received_at),
            received_at,
        )
    }

    /// Reports the failure a notice of [`Self::failure_notice`] carries, if we sent the message
    /// it names (see [`SentMessages::report`]).
    async fn report_failure(
        &self,
        notice: &Envelope,
        sink: &dyn EnvelopeSink,
    ) -> Result<(), ConnectorError> {
        let Content::Event { data, .. } = &notice.content else {
            return Ok(());
        };
        let field = |key: &str| data.get(key).and_then(Value::as_str);
        let (Some(wamid), Some(code), Some(reason)) =
            (field("wamid"), field("code"), field("reason"))
        else {
            tracing::warn!(channel = %self.channel.id, "failure notice without its fields skipped");
            return Ok(());
        };
        self.sent.report(wamid, code, reason, sink).await
    }

    /// Sends `content` to the recipient of `message`, quoting the customer's message `quoted`.
    async fn post(
        &self,
        message: &Envelope,
        content: &Content,
        quoted: Option<&str>,
    ) -> Result<SendReceipt, ConnectorError> {
        let mut body = self.content_body(message, content)?;
        if let (Some(wamid), Some(map)) = (quoted, body.as_object_mut()) {
            map.insert("context".into(), json!({ "message_id": wamid }));
        }
        let response = self
            .http
            .post(self.messages_url())
            .bearer_auth(&self.access_token)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                ConnectorError::Transient(format!("WhatsApp send failed: {}", e.without_url()))
            })?;
        let value = read_answer(response, classify).await?;
        let wamid = value
            .pointer("/messages/0/id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        // Meta may still report the message `failed`: that status names only the wamid.
        if let Some(wamid) = &wamid {
            self.sent.remember(wamid, message).await;
        }
        Ok(SendReceipt {
            channel_message_id: wamid,
        })
    }

    /// The `wamid` of the inbound message `envelope_id` (kept by `deliver`), if still known.
    pub async fn wamid_of(&self, envelope_id: &str) -> Result<Option<String>, ConnectorError> {
        self.store
            .get_key(&self.wamid_key(envelope_id))
            .await
            .map_err(ConnectorError::from)
    }

    /// `GET {api_base}/{media_id}`: where the media is (`url`, valid minutes), its type and
    /// size. Error 100 (or 404) is `media_not_found`; others as for a send.
    async fn media_info(&self, media_id: &str) -> Result<Value, ConnectorError> {
        let response = self
            .http
            .get(format!("{}/{}", self.api_base, encode_component(media_id)))
            .bearer_auth(&self.access_token)
            .send()
            .await
            .map_err(|e| {
                ConnectorError::Transient(format!(
                    "WhatsApp media lookup failed: {}",
                    e.without_url()
                ))
            })?;
        read_answer(response, |error, wait| {
            if error.code == Some(100) || error.status == 404 {
                media::not_found("WhatsApp media", error.describe())
            } else {
                classify(error, wait)
            }
        })
        .await
    }

    /// The JSON body of a send (without `context`); an audio's caption is not part of it
    /// (the Cloud API has none: [`Connector::send`] sends it as a text message of its own).
    pub fn send_body(&self, message: &Envelope) -> Result<Value, ConnectorError> {
        self.content_body(message, &message.content)
    }

    /// The JSON body that sends `content` to the recipient of `message` (without `context`).
    fn content_body(&self, message: &Envelope, content: &Content) -> Result<Value, ConnectorError> {
        let to = &message.sender.external_id;
        if to.is_empty() {
            return Err(ConnectorError::Rejected {
                code: "no_recipient".into(),
                message: "the outbound message names no WhatsApp wa_id".into(),
            });
        }
        let (kind, payload) = match content {
            Content::Text { text } => {
                let chars = text.chars().count();
                if chars == 0 {
                    return Err(ConnectorError::Rejected {
                        code: "empty_text".into(),
                        message: "WhatsApp does not send empty text".into(),
                    });
                }
                if chars > MAX_TEXT_CHARS {
                    return Err(ConnectorError::Rejected {
                        code: "text_too_long".into(),
                        message: format!(
                            "text has {chars} characters; WhatsApp allows {MAX_TEXT_CHARS}"
                        ),
                    });
                }
                ("text", json!({ "body": text }))
            }
            Content::Image { media, .. } => ("image", captioned(media, content)?),
            Content::Audio { media, .. } => ("audio", media_object(media)?),
            Content::Video { media, .. } => ("video", captioned(media, content)?),
            Content::Sticker { media } => ("sticker", media_object(media)?),
            Content::File { media, name, .. } => {
                let mut object = captioned(media, content)?;
                if let (Some(name), Some(map)) = (name, object.as_object_mut()) {
                    map.insert("filename".into(), Value::String(name.clone()));
                }
                ("document", object)
            }
            Content::Location {
                latitude,
                longitude,
                label,
            } => {
                let mut object = json!({ "latitude": latitude, "longitude": longitude });
                if let (Some(label), Some(map)) = (label, object.as_object_mut()) {
                    map.insert("name".into(), Value::String(label.clone()));
                }
                ("location", object)
            }
            Content::Template {
                name,
                language,
                parameters,
                components,
            } => {
                if let Some(problem) = content.template_problem() {
                    return Err(ConnectorError::Rejected {
                        code: "invalid_template".into(),
                        message: problem.into(),
                    });
                }
                let object = template_object(name, language, parameters, components.as_deref());
                ("template", object)
            }
            other => {
                return Err(ConnectorError::Rejected {
                    code: "content_unsupported".into(),
                    message: format!(
                        "the WhatsApp connector does not send {} content",
                        other.type_name()
                    ),
                });
            }
        };
        let mut body = Map::new();
        body.insert("messaging_product".into(), json!("whatsapp"));
        body.insert("recipient_type".into(), json!("individual"));
        body.insert("to".into(), json!(to));
        body.insert("type".into(), json!(kind));
        body.insert(kind.into(), payload);
        Ok(Value::Object(body))
    }
}

/// `{"link": url}` (preferred) or `{"id": media id}`.
fn media_object(media: &Media) -> Result<Value, ConnectorError> {
    match (&media.url, &media.media_id) {
        (Some(url), _) if !url.is_empty() => Ok(json!({ "link": url })),
        (_, Some(id)) if !id.is_empty() => Ok(json!({ "id": id })),
        _ => Err(ConnectorError::Rejected {
            code: "no_media".into(),
            message: "the media has neither a URL nor a WhatsApp media id".into(),
        }),
    }
}

/// [`media_object`] with the caption of `content`, if it has one.
fn captioned(media: &Media, content: &Content) -> Result<Value, ConnectorError> {
    let mut object = media_object(media)?;
    if let (Some(caption), Some(map)) = (content.caption(), object.as_object_mut()) {
        let caption = within_limit(caption, MAX_CAPTION_CHARS, "WhatsApp")?;
        map.insert("caption".into(), Value::String(caption.to_owned()));
    }
    Ok(object)
}

/// The `template` object of a send: `{"name", "language": {"code"}, "components"?}`. The
/// `components` are the ones given, verbatim, or else one `body` component with the
/// `parameters` as text parameters; none without either.
fn template_object(
    name: &str,
    language: &str,
    parameters: &[String],
    components: Option<&[Map<String, Value>]>,
) -> Value {
    let components = match components {
        Some(components) => Some(Value::Array(
            components.iter().cloned().map(Value::Object).collect(),
        )),
        None if parameters.is_empty() => None,
        None => Some(json!([{
            "type": "body",
            "parameters": parameters
                .iter()
                .map(|text| json!({ "type": "text", "text": text }))
                .collect::<Vec<_>>(),
        }])),
    };
    let mut object = Map::new();
    object.insert("name".into(), json!(name));
    object.insert("language".into(), json!({ "code": language }));
    if let Some(components) = components {
        object.insert("components".into(), components);
    }
    Value::Object(object)
}

/// A media object of an inbound message (`id`, `mime_type`).
fn inbound_media(object: &Value) -> Media {
    Media {
        url: None,
        media_id: text(object, "id"),
        mime: text(object, "mime_type"),
        size: object.get("file_size").and_then(Value::as_u64),
        duration_ms: None,
    }
}

/// Maps one message's `type` onto content.
fn message_content(message: &Value) -> Result<Content, ConnectorError> {
    let kind = text(message, "type").unwrap_or_default();
    let part = message.get(kind.as_str()).filter(|p| p.is_object());
    let empty = Value::Object(Map::new());
    let part_or_empty = part.unwrap_or(&empty);
    let content = match kind.as_str() {
        "text" => Content::Text {
            text: part
                .and_then(|p| p.get("body"))
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| malformed("a text message without text.body"))?
                .to_owned(),
        },
        "image" => Content::Image {
            media: inbound_media(part_or_empty),
            caption: text(part_or_empty, "caption"),
        },
        "sticker" => Content::Sticker {
            media: inbound_media(part_or_empty),
        },
        "audio" => Content::Audio {
            media: inbound_media(part_or_empty),
            recognition: None,
            caption: None,
        },
        "video" => Content::Video {
            media: inbound_media(part_or_empty),
            thumbnail: None,
            caption: text(part_or_empty, "caption"),
        },
        "document" => Content::File {
            media: inbound_media(part_or_empty),
            name: text(part_or_empty, "filename"),
            caption: text(part_or_empty, "caption"),
        },
        "location" => {
            let coordinate = |key: &str| {
                part.and_then(|p| p.get(key))
                    .and_then(|v| {
                        v.as_f64()
                            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    })
                    .filter(|f| f.is_finite())
            };
            let (Some(latitude), Some(longitude)) =
                (coordinate("latitude"), coordinate("longitude"))
            else {
                return Err(malformed("a location message without coordinates"));
            };
            let label: Vec<String> = ["name", "address"]
                .iter()
                .filter_map(|k| text(part_or_empty, k))
                .collect();
            Content::Location {
                latitude,
                longitude,
                label: (!label.is_empty()).then(|| label.join(", ")),
            }
        }
        "interactive" => interactive_reply(part_or_empty),
        // A quick-reply button of a template message: the customer "says" its text.
        "button" => match text(part_or_empty, "text") {
            Some(text) => Content::Text { text },
            None => Content::Unsupported {
                original_type: "button".into(),
            },
        },
        "reaction" => {
            let mut data = Map::new();
            for key in ["message_id", "emoji"] {
                if let Some(v) = text(part_or_empty, key) {
                    data.insert(key.to_owned(), Value::String(v));
                }
            }
            Content::Event {
                name: "reaction".into(),
                data,
            }
        }
        "contacts" => contacts_card(message),
        "" => Content::Unsupported {
            original_type: "unknown".into(),
        },
        other => Content::Unsupported {
            original_type: other.to_owned(),
        },
    };
    Ok(content)
}

/// `interactive.button_reply` / `list_reply`: the customer picked an option we offered; the
/// chat shows its title as their message.
fn interactive_reply(interactive: &Value) -> Content {
    let kind = text(interactive, "type").unwrap_or_default();
    match interactive
        .get(kind.as_str())
        .and_then(|reply| text(reply, "title"))
    {
        Some(title) if kind == "button_reply" || kind == "list_reply" => {
            Content::Text { text: title }
        }
        _ => Content::Unsupported {
            original_type: if kind.is_empty() {
                "interactive".into()
            } else {
                format!("interactive.{kind}")
            },
        },
    }
}

/// Shared contacts: a card titled with the first contact's name, the contacts as attributes.
fn contacts_card(message: &Value) -> Content {
    let contacts = message
        .get("contacts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let title = contacts
        .iter()
        .find_map(|c| c.get("name").and_then(|n| text(n, "formatted_name")))
        .unwrap_or_else(|| "contact".into());
    let mut attributes = Map::new();
    attributes.insert("contacts".into(), Value::Array(contacts));
    Content::Card {
        title,
        url: None,
        thumbnail: None,
        attributes,
    }
}

/// Meta's error object: `(HTTP status, error.code, error.error_subcode, error.message)`.
struct GraphError {
    status: u16,
    code: Option<i64>,
    subcode: Option<i64>,
    message: String,
}

impl GraphError {
    fn parse(status: u16, body: &str) -> Self {
        let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let error = value.get("error");
        let int = |key: &str| error.and_then(|e| e.get(key)).and_then(Value::as_i64);
        let details = error
            .and_then(|e| e.pointer("/error_data/details"))
            .and_then(Value::as_str);
        let message = error
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .map(|m| match details {
                Some(d) if !d.is_empty() => format!("{m}: {d}"),
                _ => m.to_owned(),
            })
            .unwrap_or_else(|| body.chars().take(200).collect());
        GraphError {
            status,
            code: int("code"),
            subcode: int("error_subcode"),
            message,
        }
    }

    fn describe(&self) -> String {
        match (self.code, self.subcode) {
            (Some(c), Some(s)) => format!(
                "Graph API error {c}/{s} (HTTP {}): {}",
                self.status, self.message
            ),
            (Some(c), None) => format!(
                "Graph API error {c} (HTTP {}): {}",
                self.status, self.message
            ),
            _ => format!("Graph API HTTP {}: {}", self.status, self.message),
        }
    }
}

/// Reads a Graph API answer: its JSON (`null` when it is not JSON) if the status is 2xx and it
/// holds no `error`, else what `refused` makes of the error and the `Retry-After` header.
async fn read_answer(
    response: reqwest::Response,
    refused: impl FnOnce(GraphError, Option<Duration>) -> ConnectorError,
) -> Result<Value, ConnectorError> {
    let status = response.status().as_u16();
    let wait = retry_after(&response);
    let text = response
        .text()
        .await
        .map_err(|e| ConnectorError::Transient(format!("reading the Graph API answer: {e}")))?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if (200..300).contains(&status) && value.get("error").is_none() {
        Ok(value)
    } else {
        Err(refused(GraphError::parse(status, &text), wait))
    }
}

/// Error codes meaning "slow down": 4 (app call rate), 80007 (WABA rate), 130429 (throughput),
/// 131048 (spam rate limit), 131056 (too many messages to the same customer).
pub fn is_rate_limit(code: i64) -> bool {
    matches!(code, 4 | 80007 | 130429 | 131048 | 131056)
}

/// What Meta's template error `code` means (Cloud API "Error codes" reference, template
/// errors), or `None` for other codes.
pub fn template_error(code: i64) -> Option<&'static str> {
    Some(match code {
        132000 => "the number of parameters does not match the template's placeholders",
        132001 => "the template does not exist in that language, or is not approved",
        132005 => "the text with its parameters filled in is too long",
        132007 => "the template's content violates a WhatsApp policy",
        132012 => "a parameter's format does not match the template",
        132015 => "the template is paused for its low quality",
        132016 => "the template is disabled",
        _ => return None,
    })
}

/// Classifies a failed send by Meta's error body (the code first, then the HTTP status).
fn classify(error: GraphError, retry_after: Option<Duration>) -> ConnectorError {
    let code = error.code;
    if error.status == 429 || code.is_some_and(is_rate_limit) {
        return ConnectorError::RateLimited { retry_after };
    }
    if let Some((code, what)) = code.and_then(|c| template_error(c).map(|what| (c, what))) {
        return ConnectorError::Rejected {
            code: code.to_string(),
            message: format!(
                "WhatsApp refused the template: {what}. {}",
                error.describe()
            ),
        };
    }
    match code {
        Some(131047) => {
            return ConnectorError::Rejected {
                code: "reply_window_closed".into(),
                message: format!(
                    "outside WhatsApp's 24-hour customer service window (re-engagement \
                     message): only an approved template can be sent now. {}",
                    error.describe()
                ),
            };
        }
        Some(190) => {
            return ConnectorError::Rejected {
                code: "access_token_invalid".into(),
                message: format!(
                    "the channel's access_token is invalid or expired; configure a new \
                     (system user) token. {}",
                    error.describe()
                ),
            };
        }
        // 131000 "something went wrong", 131016 "service unavailable", 2 "API service":
        // Meta's own temporary failures, whatever the status.
        Some(2 | 131000 | 131016) => return ConnectorError::Transient(error.describe()),
        _ => {}
    }
    match error.status {
        400..=499 => ConnectorError::Rejected {
            code: code.map_or_else(|| format!("http_{}", error.status), |c| c.to_string()),
            message: error.describe(),
        },
        _ => ConnectorError::Transient(error.describe()),
    }
}

#[async_trait]
impl Connector for WhatsAppConnector {
    type Inbound = WhatsAppInbound;

    fn channel(&self) -> &ChannelRef {
        &self.channel
    }

    fn handshake(&self, req: &InboundRequest<'_>) -> Result<Option<HttpReply>, ConnectorError> {
        if req.method != http::Method::GET {
            return Ok(None);
        }
        let Some(mode) = req.query.get("hub.mode") else {
            return Ok(None);
        };
        if mode != "subscribe" {
            return Err(malformed(format!(
                "hub.mode `{mode}` (expected `subscribe`)"
            )));
        }
        let token = req
            .query
            .get("hub.verify_token")
            .ok_or_else(|| ConnectorError::Unauthorized("missing hub.verify_token".into()))?;
        if !constant_time_eq(token, &self.verify_token) {
            return Err(ConnectorError::Unauthorized(
                "hub.verify_token does not match the channel's verify_token".into(),
            ));
        }
        let challenge = req
            .query
            .get("hub.challenge")
            .filter(|c| !c.is_empty() && c.len() <= MAX_CHALLENGE_LEN)
            .ok_or_else(|| malformed("missing or oversized hub.challenge"))?;
        Ok(Some(HttpReply::text(200, challenge.clone())))
    }

    fn verify(&self, req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
        self.check_signature(req)
    }

    fn decode(&self, req: &InboundRequest<'_>) -> Result<WhatsAppInbound, ConnectorError> {
        parse_notification(req.body)
    }

    fn normalize(
        &self,
        inbound: WhatsAppInbound,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, ConnectorError> {
        if inbound.object != OBJECT {
            return Err(ConnectorError::Unsupported(format!(
                "notification object `{}` is not `{OBJECT}`",
                inbound.object
            )));
        }
        let mut for_others = 0usize;
        let mut statuses = 0usize;
        let mut unreadable_statuses = 0usize;
        let mut ours = Vec::new();
        let mut failed_statuses = Vec::new();
        for change in &inbound.changes {
            statuses += change.statuses.count;
            if change.phone_number_id != self.phone_number_id {
                for_others += change.messages.len();
                continue;
            }
            ours.extend(change.messages.iter().map(|m| (m, &change.names)));
            failed_statuses.extend(&change.statuses.failed);
            unreadable_statuses += change.statuses.unreadable;
        }
        if unreadable_statuses > 0 {
            tracing::warn!(channel = %self.channel.id, unreadable_statuses,
                "left unreadable delivery reports out of a notification");
        }
        let messages = ours
            .into_iter()
            .map(|(message, names)| self.envelope(message, names, received_at));
        let notices = failed_statuses
            .into_iter()
            .map(|status| Ok(self.failure_notice(status, received_at)));
        let envelopes = keep_valid(&self.channel, messages.chain(notices))?;
        if envelopes.is_empty() && statuses == 0 && (for_others > 0 || inbound.other_fields > 0) {
            return Err(ConnectorError::Unsupported(if for_others > 0 {
                format!(
                    "{for_others} message(s) for another phone_number_id; this channel serves \
                     `{}`",
                    self.phone_number_id
                )
            } else {
                "no `messages` change in the notification".into()
            }));
        }
        Ok(envelopes)
    }

    /// Publishes the customers' messages (keeping their wamids first, with `quote_replies`),
    /// then reports the failed statuses' notices, which are never published.
    async fn deliver(
        &self,
        envelopes: Vec<Envelope>,
        sink: &dyn EnvelopeSink,
    ) -> Result<Vec<Accepted>, ConnectorError> {
        let (notices, messages): (Vec<Envelope>, Vec<Envelope>) =
            envelopes.into_iter().partition(is_failure_notice);
        if self.quote_replies {
            let prefix = self.dedupe_prefix();
            for envelope in &messages {
                if let Some(wamid) = envelope.dedupe_key.strip_prefix(&prefix) {
                    self.store
                        .set_key(&self.wamid_key(&envelope.id), wamid, REPLY_WINDOW)
                        .await?;
                }
            }
        }
        let accepted = sink.publish(messages).await?;
        for notice in &notices {
            self.report_failure(notice, sink).await?;
        }
        Ok(accepted)
    }

    fn accepted(&self, _accepted: &[Accepted]) -> HttpReply {
        HttpReply::json(200, &json!({ "ok": true }))
    }

    fn rules(&self) -> ChannelRules {
        ChannelRules {
            reply_window: Some(REPLY_WINDOW),
            window_exempt: vec!["template"],
            max_replies_per_inbound: None,
            content_types: vec![
                "text", "image", "audio", "video", "file", "location", "sticker", "template",
            ],
            max_text_chars: Some(MAX_TEXT_CHARS),
            downgrades: vec![("card", "link"), ("link", "text")],
            captions: Captions::OnMedia {
                max_chars: Some(MAX_CAPTION_CHARS),
            },
            notes: "WhatsApp Cloud API: free-form messages only within 24 h of the customer's \
                    last message (customer service window); after that only an approved \
                    template (content `template`, which the window does not hold back; anything \
                    else is refused, error 131047). Text up to \
                    4096 characters; media by public URL (link) or WhatsApp media id; captions \
                    up to 1024 characters on images, videos and documents, while an audio's \
                    caption follows as a text message.",
        }
    }

    async fn fetch_media(&self, media_id: &str) -> Result<MediaDownload, ConnectorError> {
        let info = self.media_info(media_id).await?;
        let url = text(&info, "url")
            .ok_or_else(|| ConnectorError::Transient("the media lookup answered no url".into()))?;
        if text(&info, "file_size")
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n > MAX_FETCH_BYTES)
        {
            return Err(media::too_large(MAX_FETCH_BYTES));
        }
        let request = self.http.get(url).bearer_auth(&self.access_token);
        let response = media::fetch(
            request,
            "WhatsApp media download",
            |status, text| match status {
                401 => ConnectorError::rejected(
                    "access_token_invalid",
                    format!("the media host refused the channel's access_token: {text}"),
                ),
                403 | 404 | 410 => {
                    media::not_found("WhatsApp media download", format!("HTTP {status}"))
                }
                _ => ConnectorError::rejected(format!("http_{status}"), text),
            },
        )
        .await?;
        let mut download = MediaDownload::from_response(response, MAX_FETCH_BYTES)?;
        // The download host may serve a generic type: the lookup's `mime_type` is the media's.
        if download
            .mime()
            .is_none_or(|m| m == "application/octet-stream" || m == "binary/octet-stream")
            && let Some(mime) = text(&info, "mime_type")
        {
            download.content_type = Some(mime);
        }
        Ok(download)
    }

    /// The customer `whatsapp_wa_id::{wa_id}`: a send goes `to` the wa_id. (Outside the 24 h
    /// window, which a conversation the agent starts always is, only a template passes.)
    fn recipient_of(&self, identities: &[IdentityKey]) -> Option<Sender> {
        crate::recipient_by_key(identities, "whatsapp_wa_id", Some(""), |_| String::new())
    }

    fn starts_conversations(&self) -> bool {
        true
    }

    async fn send(&self, message: &Envelope) -> Result<SendReceipt, ConnectorError> {
        let is_template = matches!(message.content, Content::Template { .. });
        let quoted = match &message.reply_to {
            // A template (re-)opens a conversation rather than answering a message.
            Some(reply_to) if self.quote_replies && !is_template => self.wamid_of(reply_to).await?,
            _ => None,
        };
        let quoted = quoted.as_deref();
        match &message.content {
            // The Cloud API has no caption on audio: it follows as a text message, which does
            // not quote the customer's message again.
            audio @ Content::Audio { .. } => {
                let sent = MediaSent::of(Arc::clone(&self.store), &message.id);
                send_media_then_caption(audio, &sent, |content, part| async move {
                    let quoted = quoted.filter(|_| part != Part::Caption);
                    self.post(message, &content, quoted).await
                })
                .await
            }
            content => self.post(message, content, quoted).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex_with_prefix() {
        // RFC 4231 test case 2 under the `sha256=` prefix Meta uses.
        assert_eq!(
            webhook_signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn errors_are_classified_by_code_then_status() {
        let err =
            |status: u16, body: Value| classify(GraphError::parse(status, &body.to_string()), None);
        assert!(matches!(
            err(400, json!({"error": {"code": 131047, "message": "Re-engagement message"}})),
            ConnectorError::Rejected { code, .. } if code == "reply_window_closed"
        ));
        assert!(matches!(
            err(401, json!({"error": {"code": 190, "message": "expired"}})),
            ConnectorError::Rejected { code, .. } if code == "access_token_invalid"
        ));
        for code in [4, 80007, 130429, 131048, 131056] {
            assert!(matches!(
                err(400, json!({"error": {"code": code}})),
                ConnectorError::RateLimited { .. }
            ));
        }
        assert!(matches!(
            err(400, json!({"error": {"code": 131026}})),
            ConnectorError::Rejected { code, .. } if code == "131026"
        ));
        assert!(matches!(err(500, json!({})), ConnectorError::Transient(_)));
        assert!(matches!(
            err(404, Value::Null),
            ConnectorError::Rejected { code, .. } if code == "http_404"
        ));
    }

    #[test]
    fn nulls_and_missing_lists_are_empty() {
        let parsed = parse_notification(
            br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"1"},"contacts":null}}]}]}"#,
        )
        .unwrap();
        assert_eq!(parsed.changes.len(), 1);
        assert!(parsed.changes[0].messages.is_empty());
        assert!(parse_notification(br#"{"object":"x","entry":{}}"#).is_err());
        assert!(parse_notification(b"[]").is_err());
    }
}
