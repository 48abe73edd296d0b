//! Captions of media replies. Platforms that put them on the media message check their limit
//! with [`within_limit`] (Telegram, WhatsApp). On platforms whose media messages carry none
//! (WeChat, WeCom kf, Douyin, WhatsApp audio), [`send_media_then_caption`] sends the media as
//! one platform message, then the caption as a text message; LINE, which takes several messages
//! in one push, uses [`split_caption`] to send both in one request.
//!
//! The two are two API calls, so they are not atomic. When the media call succeeds and the
//! caption's fails, the error of the caption's call is returned, its class kept and its message
//! saying that the media went out: a `Rejected` caption is not tried again (the agent is told),
//! while a retried send (`Transient`, `RateLimited`) sends only the caption: the media's
//! success is remembered in the store ([`MediaSent`], `P:kv:media-sent:{envelope id}`, one day)
//! before the caption is sent. The gateway's own sent mark (`P:kv:sent:{envelope id}`) covers
//! the whole envelope, so it cannot tell the two apart.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::envelope::Content;
use switchyard_core::store::Store;

use crate::{ConnectorError, SendReceipt};

/// Which platform message of an outbound envelope a send call delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The whole content (nothing to split off).
    Whole,
    /// The media, without its caption.
    Media,
    /// The caption, as a text message after the media.
    Caption,
}

/// Splits captioned media into the media without its caption and the caption as text; `None`
/// when `content` has no caption (or a blank one).
pub fn split_caption(content: &Content) -> Option<(Content, Content)> {
    let mut media = content.clone();
    let text = media.take_caption()?;
    Some((media, Content::Text { text }))
}

/// How long a sent media part is remembered: far longer than the retries of one reply take.
const MEDIA_SENT_TTL: Duration = Duration::from_secs(24 * 3600);

/// The memory of an outbound envelope's media part having gone out, kept in the store so that
/// any gateway retrying the envelope sends only its caption.
pub struct MediaSent {
    store: Arc<dyn Store>,
    key: String,
}

impl MediaSent {
    /// The memory of envelope `envelope_id`'s media part.
    pub fn of(store: Arc<dyn Store>, envelope_id: &str) -> Self {
        MediaSent {
            store,
            key: format!("media-sent:{envelope_id}"),
        }
    }

    /// The receipt of the media part, if an earlier attempt sent it. A store that does not
    /// answer is a transient failure: sending the media again could show it twice.
    async fn receipt(&self) -> Result<Option<SendReceipt>, ConnectorError> {
        let kept = self.store.get_key(&self.key).await.map_err(|e| {
            ConnectorError::Transient(format!("cannot tell whether the media was sent: {e}"))
        })?;
        Ok(kept.map(|id| SendReceipt {
            channel_message_id: Some(id).filter(|id| !id.is_empty()),
        }))
    }

    /// Remembers that the media part went out, with its receipt.
    async fn remember(&self, receipt: &SendReceipt) {
        let id = receipt.channel_message_id.as_deref().unwrap_or_default();
        if let Err(e) = self.store.set_key(&self.key, id, MEDIA_SENT_TTL).await {
            tracing::warn!(key = %self.key, error = %e, "media sent, but not remembered; a retry of its caption would send it again");
        }
    }
}

/// Delivers `content` with `send`, one platform message per call: captioned media as the media
/// then the caption as text (in this order, the second only once the first succeeded), anything
/// else in one call. The receipt is the first message's. The media's success is kept in
/// `sent`, and a media part an earlier attempt sent is not sent again.
///
/// `send` takes its content by value: a closure over borrowed content would make the futures
/// of `async_trait` methods calling this lose `Send`.
pub async fn send_media_then_caption<F, Fut>(
    content: &Content,
    sent: &MediaSent,
    mut send: F,
) -> Result<SendReceipt, ConnectorError>
where
    F: FnMut(Content, Part) -> Fut,
    Fut: Future<Output = Result<SendReceipt, ConnectorError>>,
{
    let Some((media, caption)) = split_caption(content) else {
        return send(content.clone(), Part::Whole).await;
    };
    let receipt = match sent.receipt().await? {
        Some(receipt) => receipt,
        None => {
            let receipt = send(media, Part::Media).await?;
            sent.remember(&receipt).await;
            receipt
        }
    };
    send(caption, Part::Caption)
        .await
        .map_err(caption_not_sent)?;
    Ok(receipt)
}

/// `caption`, if it has at most `max_chars` characters; else the `caption_too_long` refusal
/// that names `platform`'s limit.
pub fn within_limit<'a>(
    caption: &'a str,
    max_chars: usize,
    platform: &str,
) -> Result<&'a str, ConnectorError> {
    let chars = caption.chars().count();
    if chars > max_chars {
        return Err(ConnectorError::rejected(
            "caption_too_long",
            format!("caption has {chars} characters; {platform} allows {max_chars}"),
        ));
    }
    Ok(caption)
}

/// The error of a caption's call, saying that its media was sent.
fn caption_not_sent(error: ConnectorError) -> ConnectorError {
    let note = |message: String| format!("the media was sent, but not its caption: {message}");
    match error {
        ConnectorError::Rejected { code, message } => ConnectorError::Rejected {
            code,
            message: note(message),
        },
        ConnectorError::Transient(message) => {
            ConnectorError::Transient(format!("{}; a retry sends only the caption", note(message)))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use switchyard_core::envelope::Media;
    use switchyard_core::store::embedded::EmbeddedStore;

    use super::*;

    /// The memory of an envelope's media in a store of its own.
    fn fresh() -> MediaSent {
        MediaSent::of(Arc::new(EmbeddedStore::new()), "env-1")
    }

    fn image(caption: Option<&str>) -> Content {
        Content::Image {
            media: Media {
                url: Some("https://cdn.test/a.jpg".into()),
                ..Media::default()
            },
            caption: caption.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn captioned_media_is_two_calls_in_order_and_the_first_receipt_wins() {
        let mut calls = Vec::new();
        let receipt = send_media_then_caption(&image(Some("Look")), &fresh(), |content, part| {
            calls.push((content, part));
            let id = format!("m{}", calls.len());
            async move {
                Ok(SendReceipt {
                    channel_message_id: Some(id),
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(receipt.channel_message_id.as_deref(), Some("m1"));
        assert_eq!(
            calls,
            [
                (image(None), Part::Media),
                (
                    Content::Text {
                        text: "Look".into()
                    },
                    Part::Caption
                ),
            ]
        );
    }

    #[tokio::test]
    async fn uncaptioned_or_blank_captioned_content_is_one_call() {
        for content in [
            image(None),
            image(Some("  ")),
            Content::Text { text: "x".into() },
        ] {
            let mut parts = Vec::new();
            send_media_then_caption(&content, &fresh(), |_, part| {
                parts.push(part);
                async { Ok(SendReceipt::default()) }
            })
            .await
            .unwrap();
            assert_eq!(parts, [Part::Whole]);
        }
    }

    #[tokio::test]
    async fn a_failed_media_sends_no_caption_and_a_failed_caption_says_the_media_went() {
        let mut parts = Vec::new();
        let err = send_media_then_caption(&image(Some("Look")), &fresh(), |_, part| {
            parts.push(part);
            async { Err(ConnectorError::Transient("down".into())) }
        })
        .await
        .unwrap_err();
        assert_eq!(parts, [Part::Media]);
        assert!(matches!(err, ConnectorError::Transient(m) if m == "down"));
        let err = send_media_then_caption(&image(Some("Look")), &fresh(), |_, part| async move {
            match part {
                Part::Caption => Err(ConnectorError::rejected("45047", "quota")),
                _ => Ok(SendReceipt::default()),
            }
        })
        .await
        .unwrap_err();
        assert!(matches!(
            err,
            ConnectorError::Rejected { code, message }
                if code == "45047" && message.contains("media was sent, but not its caption")
        ));
    }

    #[tokio::test]
    async fn a_retry_after_a_failed_caption_sends_only_the_caption() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
        let sent = MediaSent::of(Arc::clone(&store), "env-2");
        let content = image(Some("Look"));
        let mut parts = Vec::new();
        let err = send_media_then_caption(&content, &sent, |_, part| {
            parts.push(part);
            async move {
                match part {
                    Part::Caption => Err(ConnectorError::Transient("down".into())),
                    _ => Ok(SendReceipt {
                        channel_message_id: Some("media-1".into()),
                    }),
                }
            }
        })
        .await
        .unwrap_err();
        assert!(matches!(&err, ConnectorError::Transient(m) if m.contains("only the caption")));
        let receipt = send_media_then_caption(&content, &sent, |_, part| {
            parts.push(part);
            async { Ok(SendReceipt::default()) }
        })
        .await
        .unwrap();
        assert_eq!(
            parts,
            [Part::Media, Part::Caption, Part::Caption],
            "the retry sent the media again"
        );
        assert_eq!(
            receipt.channel_message_id.as_deref(),
            Some("media-1"),
            "the receipt is the media's, from the first attempt"
        );
        // Another envelope's media is its own.
        let mut other = Vec::new();
        send_media_then_caption(&content, &MediaSent::of(store, "env-3"), |_, part| {
            other.push(part);
            async { Ok(SendReceipt::default()) }
        })
        .await
        .unwrap();
        assert_eq!(other, [Part::Media, Part::Caption]);
    }
}
