//! The API channel (kind `api`): app backends post signed JSON messages and receive agent
//! replies, signed the same way, at their `callback_url` (DESIGN.md "The API channel").

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::{ChannelRef, Content, Envelope, Sender};
use switchyard_core::identity::IdentityKey;

use crate::signature::{
    SIGNATURE_HEADER, TIMESTAMP_HEADER, switchyard_signature, verify_switchyard_signature,
};
use crate::{
    Accepted, Connector, ConnectorContext, ConnectorError, HttpReply, InboundRequest, RawPolicy,
    SendReceipt,
};

/// Connector kind.
pub const KIND: &str = "api";
/// Configuration keys besides the common ones.
pub const KEYS: &[&str] = &["secret", "callback_url"];
/// Most identities one message may carry.
const MAX_IDENTITIES: usize = 32;

/// The body of `POST /v1/channels/{id}/messages`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiMessage {
    /// The backend's id for this message; a repeat is a duplicate.
    pub message_id: String,
    /// Who wrote it.
    pub user: ApiUser,
    /// What it says.
    pub content: Content,
    /// When it was sent (defaults to the time received).
    #[serde(default)]
    pub sent_at: Option<DateTime<Utc>>,
    /// The body as a JSON object, kept by `decode` only when the channel keeps raw
    /// ([`RawPolicy`]); never read from the body.
    #[serde(skip)]
    pub raw: Option<Map<String, Value>>,
}

/// The user of an [`ApiMessage`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiUser {
    /// The backend's user id.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Further identities the backend vouches for (strong).
    #[serde(default)]
    pub identities: Vec<IdentityKey>,
}

/// The API channel connector.
pub struct ApiConnector {
    channel: ChannelRef,
    secret: String,
    callback_url: Option<String>,
    http: reqwest::Client,
    raw: RawPolicy,
}

impl ApiConnector {
    /// Builds the connector from its `[[channels]]` entry.
    pub fn new(settings: &ChannelSettings, ctx: &ConnectorContext) -> Result<Self, ConnectorError> {
        let secret = settings.required_secret("secret")?;
        if secret.len() < 16 {
            return Err(ConnectorError::Config(format!(
                "channels.{}.secret must be at least 16 bytes",
                settings.id
            )));
        }
        let callback_url = settings.secret("callback_url")?;
        Ok(ApiConnector {
            channel: ChannelRef {
                kind: KIND.to_owned(),
                id: settings.id.clone(),
            },
            secret,
            callback_url,
            http: ctx.http.clone(),
            raw: RawPolicy::from_settings(settings)?,
        })
    }

    /// The identity key of a user of this channel: `app_user:{channel id}:{user id}`.
    pub fn user_key(&self, user_id: &str) -> Result<IdentityKey, ConnectorError> {
        IdentityKey::new("app_user", &self.channel.id, user_id)
            .map_err(|e| ConnectorError::Malformed(e.to_string()))
    }
}

#[async_trait]
impl Connector for ApiConnector {
    type Inbound = ApiMessage;

    fn channel(&self) -> &ChannelRef {
        &self.channel
    }

    fn verify(&self, req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
        verify_switchyard_signature(
            self.secret.as_bytes(),
            req.header(TIMESTAMP_HEADER),
            req.header(SIGNATURE_HEADER),
            req.body,
            req.received_at,
        )
    }

    fn decode(&self, req: &InboundRequest<'_>) -> Result<ApiMessage, ConnectorError> {
        let content_type = req.header("content-type").unwrap_or_default();
        if !content_type.starts_with("application/json") {
            return Err(ConnectorError::Malformed(format!(
                "Content-Type must be application/json, not `{content_type}`"
            )));
        }
        let (mut message, raw): (ApiMessage, _) = self
            .raw
            .decode_json(req.body)
            .map_err(|e| ConnectorError::Malformed(format!("invalid message JSON: {e}")))?;
        message.raw = raw;
        Ok(message)
    }

    fn normalize(
        &self,
        msg: ApiMessage,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, ConnectorError> {
        if msg.message_id.is_empty() || msg.message_id.len() > 256 {
            return Err(ConnectorError::Malformed(
                "message_id must be 1 to 256 bytes".into(),
            ));
        }
        if msg.user.id.is_empty() || msg.user.id.len() > 256 {
            return Err(ConnectorError::Malformed(
                "user.id must be 1 to 256 bytes".into(),
            ));
        }
        if msg.user.identities.len() > MAX_IDENTITIES {
            return Err(ConnectorError::Malformed(format!(
                "at most {MAX_IDENTITIES} identities per message"
            )));
        }
        let mut identities = vec![self.user_key(&msg.user.id)?];
        for key in msg.user.identities {
            if !identities.contains(&key) {
                identities.push(key);
            }
        }
        let mut envelopes = vec![Envelope::inbound(
            self.channel.clone(),
            Sender {
                external_id: msg.user.id,
                scope: self.channel.id.clone(),
                display_name: msg.user.name,
                identities,
            },
            msg.content,
            format!("{KIND}:{}:{}", self.channel.id, msg.message_id),
            msg.sent_at.unwrap_or(received_at),
            received_at,
        )];
        self.raw.attach(&mut envelopes, || msg.raw);
        Ok(envelopes)
    }

    fn accepted(&self, accepted: &[Accepted]) -> HttpReply {
        crate::accepted_json(accepted)
    }

    /// The app user `app_user:{channel id}:{user id}`: the callback names them by user id.
    fn recipient_of(&self, identities: &[IdentityKey]) -> Option<Sender> {
        crate::recipient_by_key(identities, "app_user", Some(&self.channel.id), |_| {
            self.channel.id.clone()
        })
    }

    fn starts_conversations(&self) -> bool {
        true
    }

    async fn send(&self, message: &Envelope) -> Result<SendReceipt, ConnectorError> {
        let Some(url) = &self.callback_url else {
            return Err(ConnectorError::Rejected {
                code: "no_callback_url".into(),
                message: format!("channel `{}` has no callback_url", self.channel.id),
            });
        };
        let body = serde_json::to_vec(message)
            .map_err(|e| ConnectorError::Transient(format!("cannot encode envelope: {e}")))?;
        post_signed(
            &self.http,
            url,
            self.secret.as_bytes(),
            "application/json",
            body.into(),
        )
        .await
        .map_err(|e| match e {
            ConnectorError::Transient(why) => {
                ConnectorError::Transient(format!("callback request failed: {why}"))
            }
            other => other,
        })?;
        Ok(SendReceipt {
            channel_message_id: Some(message.id.clone()),
        })
    }
}

/// POSTs `body` to `url`, signed with `secret` as Switchyard signs (`X-Switchyard-Timestamp`,
/// `X-Switchyard-Signature`), the way API-channel callbacks and webhooks are sent. A non-2xx
/// answer is classified by [`classify_http_failure`]; a request that fails is transient.
pub async fn post_signed(
    http: &reqwest::Client,
    url: &str,
    secret: &[u8],
    content_type: &str,
    body: Bytes,
) -> Result<(), ConnectorError> {
    let ts = Utc::now().timestamp();
    let signature = switchyard_signature(secret, ts, &body);
    let response = http
        .post(url)
        .header("content-type", content_type)
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .map_err(|e| ConnectorError::Transient(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = retry_after(&response);
    let text = response.text().await.unwrap_or_default();
    Err(classify_http_failure(status.as_u16(), retry_after, &text))
}

/// The start of a platform's error text, as error messages quote it (200 characters).
pub fn snippet(text: &str) -> String {
    text.chars().take(200).collect()
}

/// The start of the body of a refused answer (see [`snippet`]); empty when it cannot be read.
pub async fn body_snippet(response: reqwest::Response) -> String {
    snippet(&response.text().await.unwrap_or_default())
}

/// The `Retry-After` header of `response`, in seconds.
pub fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Classifies a non-2xx answer of a channel API: 429 rate limited, other 4xx rejected for good,
/// everything else temporary.
pub fn classify_http_failure(
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
) -> ConnectorError {
    let snippet = snippet(body);
    match status {
        429 => ConnectorError::RateLimited { retry_after },
        400..=499 => ConnectorError::Rejected {
            code: format!("http_{status}"),
            message: snippet,
        },
        _ => ConnectorError::Transient(format!("HTTP {status}: {snippet}")),
    }
}
