//! Captions of media replies. Platforms that put them on the media message check their limit
//! with [`within_limit`] (Telegram, WhatsApp). On platforms whose media messages carry none
//! (WeChat, WeCom kf, Douyin, WhatsApp audio), [`send_media_then_caption`] sends the media as
//! one platform message, then the caption as a text message; LINE, which takes several messages
//! in one push, uses [`split_caption`] to send both in one request.
//!
//! The two are two API calls, so they are not atomic. When the media call succeeds and the
//! caption's fails, the error of the caption's call is returned, its class kept and its message
//! saying that the media went out: a `Rejected` caption is not tried again (the agent is told),
//! while a retried send (`Transient`, `RateLimited`) sends the media again before the caption,
//! since the gateway's sent mark (`P:kv:sent:{envelope id}`) covers the whole envelope.

use std::future::Future;

use switchyard_core::envelope::Content;

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

/// Delivers `content` with `send`, one platform message per call: captioned media as the media
/// then the caption as text (in this order, the second only once the first succeeded), anything
/// else in one call. The receipt is the first message's.
///
/// `send` takes its content by value: a closure over borrowed content would make the futures
/// of `async_trait` methods calling this lose `Send`.
pub async fn send_media_then_caption<F, Fut>(
    content: &Content,
    mut send: F,
) -> Result<SendReceipt, ConnectorError>
where
    F: FnMut(Content, Part) -> Fut,
    Fut: Future<Output = Result<SendReceipt, ConnectorError>>,
{
    let Some((media, caption)) = split_caption(content) else {
        return send(content.clone(), Part::Whole).await;
    };
    let receipt = send(media, Part::Media).await?;
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
            ConnectorError::Transient(format!("{}; a retry sends the media again", note(message)))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use switchyard_core::envelope::Media;

    use super::*;

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
        let receipt = send_media_then_caption(&image(Some("Look")), |content, part| {
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
            send_media_then_caption(&content, |_, part| {
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
        let err = send_media_then_caption(&image(Some("Look")), |_, part| {
            parts.push(part);
            async { Err(ConnectorError::Transient("down".into())) }
        })
        .await
        .unwrap_err();
        assert_eq!(parts, [Part::Media]);
        assert!(matches!(err, ConnectorError::Transient(m) if m == "down"));
        let err = send_media_then_caption(&image(Some("Look")), |_, part| async move {
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
}
