//! WeChat Official Account connector (kind `wechat_oa`): message push in plain or safe (AES)
//! mode, every standard message type and the user events, replies through the
//! customer-service message API. See `docs/connectors/wechat_oa.md`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::{ChannelRef, Envelope, Sender};
use switchyard_core::identity::IdentityKey;

use super::client::{Flavor, WxApiClient};
use super::inbound::{self, WxInbound, content_of};
use super::message::WxMessage;
use crate::{
    Accepted, Captions, ChannelRules, Connector, ConnectorContext, ConnectorError, HttpReply,
    InboundRequest, MediaDownload, SendReceipt,
};

/// Connector kind.
pub const KIND: &str = "wechat_oa";
/// Configuration keys besides the common ones.
pub const KEYS: &[&str] = inbound::KEYS;

/// Message types routed from an Official Account.
const TYPES: &[&str] = &[
    "text",
    "image",
    "voice",
    "video",
    "shortvideo",
    "location",
    "link",
    "event",
];
/// Events routed (lower-cased; WeChat sends `subscribe` but `CLICK`, `SCAN`, ...).
const EVENTS: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "scan",
    "click",
    "view",
    "location",
];

/// The WeChat Official Account connector.
#[derive(Debug)]
pub struct WeChatOaConnector {
    channel: ChannelRef,
    inbound: WxInbound,
    client: WxApiClient,
}

impl WeChatOaConnector {
    /// Builds the connector from its `[[channels]]` entry.
    pub fn new(settings: &ChannelSettings, ctx: &ConnectorContext) -> Result<Self, ConnectorError> {
        let inbound = WxInbound::from_settings(KIND, settings)?;
        let app_secret = settings.required_secret("app_secret")?;
        let client = WxApiClient::new(
            ctx.http.clone(),
            ctx.store.clone(),
            settings.api_base.as_deref(),
            inbound.app_id(),
            &app_secret,
        );
        Ok(WeChatOaConnector {
            channel: ChannelRef {
                kind: KIND.to_owned(),
                id: settings.id.clone(),
            },
            inbound,
            client,
        })
    }

    /// The API client (token cache, media upload).
    pub fn client(&self) -> &WxApiClient {
        &self.client
    }
}

/// The rules shared by both WeChat kinds.
pub(crate) fn wechat_rules(notes: &'static str) -> ChannelRules {
    ChannelRules {
        reply_window: Some(Duration::from_secs(48 * 3600)),
        window_exempt: Vec::new(),
        max_replies_per_inbound: Some(5),
        content_types: vec!["text", "image", "link", "card"],
        max_text_chars: Some(2048),
        downgrades: vec![
            ("card", "link"),
            ("link", "text"),
            ("sticker", "image"),
            ("location", "text"),
        ],
        captions: Captions::AsText,
        notes,
    }
}

#[async_trait]
impl Connector for WeChatOaConnector {
    type Inbound = WxMessage;

    fn channel(&self) -> &ChannelRef {
        &self.channel
    }

    fn handshake(&self, req: &InboundRequest<'_>) -> Result<Option<HttpReply>, ConnectorError> {
        self.inbound.handshake(req)
    }

    fn verify(&self, req: &InboundRequest<'_>) -> Result<(), ConnectorError> {
        self.inbound.verify(req)
    }

    fn decode(&self, req: &InboundRequest<'_>) -> Result<WxMessage, ConnectorError> {
        self.inbound.decode(req)
    }

    fn normalize(
        &self,
        msg: WxMessage,
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, ConnectorError> {
        let content = content_of(&msg.body, TYPES, EVENTS)?;
        Ok(vec![self.inbound.envelope(
            &self.channel,
            &msg,
            content,
            received_at,
        )?])
    }

    fn accepted(&self, _accepted: &[Accepted]) -> HttpReply {
        // `success` tells WeChat not to retry and shows the user nothing; replies go out
        // through the customer-service API.
        HttpReply::text(200, "success")
    }

    fn rules(&self) -> ChannelRules {
        wechat_rules(
            "WeChat OA customer-service messages: up to 5 replies within 48 h of the user's last \
             message (menu click / follow / QR scan: 3 within 1 min, not modelled); errors 45015 \
             (window closed) and 45047 (quota used) are rejections; an image's caption follows as a \
             text message (a second reply of the 5)",
        )
    }

    /// The user `wechat_openid:{app_id}:{openid}` of this Official Account's AppID: a
    /// customer-service message goes `touser` the OpenID. (Only within 48 h of the user's last
    /// message, which a conversation the agent starts never is: the rules refuse it.)
    fn recipient_of(&self, identities: &[IdentityKey]) -> Option<Sender> {
        let app_id = self.inbound.app_id();
        crate::recipient_by_key(identities, "wechat_openid", Some(app_id), |_| {
            app_id.to_owned()
        })
    }

    fn starts_conversations(&self) -> bool {
        true
    }

    async fn send(&self, message: &Envelope) -> Result<SendReceipt, ConnectorError> {
        self.client
            .send_envelope(Flavor::OfficialAccount, message)
            .await
    }

    async fn fetch_media(&self, media_id: &str) -> Result<MediaDownload, ConnectorError> {
        self.client.fetch_media(media_id).await
    }
}
