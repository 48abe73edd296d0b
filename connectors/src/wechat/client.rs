//! The WeChat server API as the OA and mini-program connectors use it: access tokens
//! (`cgi-bin/stable_token`, one shared cache per AppID in the store, single-flight refresh),
//! customer-service message send (`cgi-bin/message/custom/send`), temporary media upload
//! (`cgi-bin/media/upload`) and download (`cgi-bin/media/get`), and the classification of
//! WeChat `errcode`s.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_core::envelope::{Content, Envelope, Media};
use switchyard_core::store::Store;

use crate::caption::{MediaSent, send_media_then_caption};
use crate::media::{
    self, Accept, MAX_FETCH_BYTES, MediaAnswer, MediaCache, MediaDownload, MediaResolver,
    MediaSpec, Multipart,
};
use crate::token_cache::{TokenCache, base_url, encode_pairs, with_fresh_token};
use crate::{ConnectorError, SendReceipt};

/// The WeChat API base URL (`api_base` overrides it).
pub const DEFAULT_API_BASE: &str = "https://api.weixin.qq.com";
/// Largest media we download to re-upload (WeChat temporary images are limited to 10 MB).
pub const MAX_MEDIA_BYTES: usize = 10 * 1024 * 1024;
/// How long an uploaded media id is reused for the same URL (temporary media live 3 days).
const MEDIA_ID_TTL: Duration = Duration::from_secs(2 * 24 * 3600);
/// Temporary images: any image type (PNG/JPEG/GIF documented), at most 10 MB.
const IMAGE: MediaSpec = MediaSpec {
    kind: "image",
    accept: Accept::Prefix("image/"),
    default_mime: "image/jpeg",
    max_bytes: MAX_MEDIA_BYTES,
    min_bytes: 1,
};
/// `errcode`s meaning "this access token is not (or no longer) valid": refresh and retry once.
pub const TOKEN_ERRORS: &[i64] = &[40001, 40014, 42001];
/// `errcode`s of `media/get` (WeChat and WeCom alike) meaning the media id is unknown or
/// expired: 40007 (invalid media_id), 46001 (media data does not exist).
pub const MEDIA_GONE_ERRORS: &[i64] = &[40007, 46001];

/// Which WeChat product a connector talks to (they differ in outbound message types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Official Account: links go out as `news`, mini-program cards need `appid`.
    OfficialAccount,
    /// Mini-program customer service: links go out as `link`.
    MiniProgram,
}

/// A WeChat API client for one AppID.
#[derive(Clone)]
pub struct WxApiClient {
    http: reqwest::Client,
    media: MediaResolver,
    base: String,
    app_id: String,
    app_secret: String,
    tokens: TokenCache,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for WxApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WxApiClient")
            .field("base", &self.base)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl WxApiClient {
    /// A client for `app_id` against `api_base` (default [`DEFAULT_API_BASE`]).
    pub fn new(
        http: reqwest::Client,
        store: Arc<dyn Store>,
        api_base: Option<&str>,
        app_id: &str,
        app_secret: &str,
    ) -> Self {
        WxApiClient {
            tokens: TokenCache::new(Arc::clone(&store), format!("wechat:access_token:{app_id}")),
            media: MediaResolver::new(
                http.clone(),
                MediaCache::new(
                    Arc::clone(&store),
                    format!("wechat:media:{app_id}"),
                    MEDIA_ID_TTL,
                ),
            ),
            store,
            http,
            base: base_url(api_base, DEFAULT_API_BASE),
            app_id: app_id.to_owned(),
            app_secret: app_secret.to_owned(),
        }
    }

    /// The store key the access token is cached under.
    pub fn token_key(&self) -> &str {
        self.tokens.key()
    }

    /// A valid access token: the shared cached one, unless it is `stale` (just refused by the
    /// API); then one replica fetches a new one while the others wait for it.
    pub async fn access_token(&self, stale: Option<&str>) -> Result<String, ConnectorError> {
        self.tokens
            .get(stale, || async move {
                let (token, ttl) = self.fetch_token(false).await?;
                if stale == Some(token.as_str()) {
                    // The platform still hands out the token it refused: force a new one
                    // (limited by WeChat to 20 a day, 30 s apart).
                    return self.fetch_token(true).await;
                }
                Ok((token, ttl))
            })
            .await
    }

    /// `POST /cgi-bin/stable_token`: isolated from `cgi-bin/token`, so tokens other systems
    /// fetch for the same AppID do not invalidate ours and vice versa.
    async fn fetch_token(&self, force_refresh: bool) -> Result<(String, Duration), ConnectorError> {
        let body = json!({
            "grant_type": "client_credential",
            "appid": self.app_id,
            "secret": self.app_secret,
            "force_refresh": force_refresh,
        });
        let request = self
            .http
            .post(format!("{}/cgi-bin/stable_token", self.base))
            .json(&body);
        let value = execute(request).await?;
        let code = errcode(&value);
        if code != 0 {
            let msg = errmsg(&value);
            return Err(match code {
                -1 => ConnectorError::Transient(format!("WeChat token API busy (-1): {msg}")),
                45009 | 45011 => classify_errcode(code, &msg),
                _ => ConnectorError::Config(format!(
                    "WeChat refused app_id/app_secret of `{}` ({code}: {msg}); check the \
                     secret and the API IP allow-list",
                    self.app_id
                )),
            });
        }
        let token = value
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ConnectorError::Transient("token answer has no access_token".into()))?;
        let expires_in = value
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(7200);
        Ok((token.to_owned(), Duration::from_secs(expires_in)))
    }

    /// Runs `attempt(access_token)`; when `refused` finds an access-token error in its answer
    /// (the errcode), refreshes the token at once and runs it once more. A fresh token refused
    /// as well (another system forced a refresh meanwhile) is a transient failure.
    async fn with_token<T, F, Fut>(
        &self,
        attempt: F,
        refused: impl Fn(&T) -> Option<String>,
    ) -> Result<T, ConnectorError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, ConnectorError>>,
    {
        let answer = with_fresh_token(
            |stale| async move { self.access_token(stale.as_deref()).await },
            attempt,
            |answer| refused(answer).is_some(),
        )
        .await?;
        match refused(&answer) {
            None => Ok(answer),
            Some(error) => Err(ConnectorError::Transient(format!(
                "WeChat refused a freshly fetched access token ({error})"
            ))),
        }
    }

    /// Runs an API call built by `build(access_token)`; on an access-token error, refreshes
    /// the token at once and retries once. Returns the JSON answer (errcode 0).
    async fn call<F>(&self, build: F) -> Result<Value, ConnectorError>
    where
        F: Fn(&str) -> reqwest::RequestBuilder,
    {
        let value = self
            .with_token(|token| execute(build(&token)), token_error)
            .await?;
        check(value)
    }

    /// `GET /cgi-bin/media/get?access_token=…&media_id=…`: temporary media a user sent (OA
    /// "Get temporary materials", developers.weixin.qq.com/doc/offiaccount/Asset_Management/
    /// Get_temporary_materials.html; mini-program `getTempMedia`). The file comes as is; a
    /// video answers `{"video_url"}`, which is followed; an error answers `{"errcode"}`.
    pub async fn fetch_media(&self, media_id: &str) -> Result<MediaDownload, ConnectorError> {
        const WHAT: &str = "WeChat media/get";
        let answer = self
            .with_token(
                |token| {
                    let url = self.url("/cgi-bin/media/get", &token, &[("media_id", media_id)]);
                    media::fetch_file_or_json(self.http.get(url), WHAT)
                },
                |answer: &MediaAnswer| match answer {
                    MediaAnswer::Json(value) => token_error(value),
                    MediaAnswer::File(_) => None,
                },
            )
            .await?;
        let value = match answer {
            MediaAnswer::File(file) => return Ok(file),
            MediaAnswer::Json(value) => value,
        };
        match (
            errcode(&value),
            value.get("video_url").and_then(Value::as_str),
        ) {
            (0, Some(video_url)) if !video_url.is_empty() => {
                let response = media::fetch(
                    self.http.get(video_url),
                    "WeChat video download",
                    |status, text| {
                        if matches!(status, 403 | 404 | 410) {
                            media::not_found("WeChat video download", format!("HTTP {status}"))
                        } else {
                            ConnectorError::rejected(format!("http_{status}"), text)
                        }
                    },
                )
                .await?;
                MediaDownload::from_response(response, MAX_FETCH_BYTES)
            }
            (0, _) => Err(ConnectorError::Transient(format!(
                "{WHAT} answered JSON without a file: {}",
                value.to_string().chars().take(200).collect::<String>()
            ))),
            (code, _) if MEDIA_GONE_ERRORS.contains(&code) => Err(media::not_found(
                WHAT,
                format!("{code}: {}", errmsg(&value)),
            )),
            (code, _) => Err(classify_errcode(code, &errmsg(&value))),
        }
    }

    fn url(&self, path: &str, token: &str, extra: &[(&str, &str)]) -> String {
        let mut pairs = vec![("access_token", token)];
        pairs.extend_from_slice(extra);
        format!("{}{path}?{}", self.base, encode_pairs(&pairs))
    }

    /// `POST /cgi-bin/message/custom/send` with `body`.
    pub async fn send_custom(&self, body: &Value) -> Result<(), ConnectorError> {
        self.call(|token| {
            self.http
                .post(self.url("/cgi-bin/message/custom/send", token, &[]))
                .json(body)
        })
        .await
        .map(|_| ())
    }

    /// Uploads `bytes` as temporary media of `kind` (`image`, `voice`, `video`, `thumb`);
    /// returns the media id.
    pub async fn upload_media(
        &self,
        kind: &str,
        bytes: &[u8],
        filename: &str,
        mime: &str,
    ) -> Result<String, ConnectorError> {
        let form = Multipart::file("media", filename, mime, bytes);
        let value = self
            .call(|token| {
                form.apply(self.http.post(self.url(
                    "/cgi-bin/media/upload",
                    token,
                    &[("type", kind)],
                )))
            })
            .await?;
        value
            .get("media_id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ConnectorError::Transient("media upload answered no media_id".into()))
    }

    /// The media id of `media`: its own, or (for a URL) the id of an upload of what the URL
    /// holds, reused for the same URL while the temporary media lives.
    pub async fn media_id(&self, media: &Media) -> Result<String, ConnectorError> {
        self.media
            .resolve(media, &IMAGE, None, |file| async move {
                self.upload_media(IMAGE.kind, &file.bytes, &file.filename, &file.mime)
                    .await
            })
            .await
    }

    /// Sends an outbound envelope as a customer-service message; an image's caption follows
    /// as a text message (customer-service images carry none).
    pub async fn send_envelope(
        &self,
        flavor: Flavor,
        message: &Envelope,
    ) -> Result<SendReceipt, ConnectorError> {
        let sent = MediaSent::of(Arc::clone(&self.store), &message.id);
        send_media_then_caption(&message.content, &sent, |content, _| async move {
            let body = self.content_body(flavor, message, &content).await?;
            self.send_custom(&body).await?;
            Ok(SendReceipt::default())
        })
        .await
    }

    /// The `custom/send` JSON body for an envelope (uploads media given by URL first). A
    /// caption is not part of it: [`Self::send_envelope`] sends it as a message of its own.
    pub async fn outbound_body(
        &self,
        flavor: Flavor,
        message: &Envelope,
    ) -> Result<Value, ConnectorError> {
        self.content_body(flavor, message, &message.content).await
    }

    /// The `custom/send` JSON body that sends `content` to the recipient of `message`.
    async fn content_body(
        &self,
        flavor: Flavor,
        message: &Envelope,
        content: &Content,
    ) -> Result<Value, ConnectorError> {
        let touser = message.sender.external_id.as_str();
        if touser.is_empty() {
            return Err(ConnectorError::Rejected {
                code: "no_recipient".into(),
                message: "outbound message has no OpenID".into(),
            });
        }
        let unsupported = |what: &str| ConnectorError::Rejected {
            code: "content_unsupported".into(),
            message: format!("WeChat customer-service messages cannot carry {what}"),
        };
        match content {
            Content::Text { text } => {
                if text.is_empty() {
                    return Err(unsupported("an empty text"));
                }
                Ok(json!({"touser": touser, "msgtype": "text", "text": {"content": text}}))
            }
            Content::Image { media, .. } | Content::Sticker { media } => {
                let media_id = self.media_id(media).await?;
                Ok(json!({"touser": touser, "msgtype": "image", "image": {"media_id": media_id}}))
            }
            Content::Link {
                url,
                title,
                description,
            } => Ok(link_body(
                flavor,
                touser,
                url,
                title.as_deref(),
                description.as_deref(),
                None,
            )),
            Content::Card {
                title,
                url,
                thumbnail,
                attributes,
            } => {
                let attr = |k: &str| {
                    attributes
                        .get(k)
                        .and_then(Value::as_str)
                        .filter(|v| !v.is_empty())
                };
                let appid = attr("appid");
                let pagepath = attr("pagepath");
                let page_ok = pagepath.is_some()
                    && (flavor == Flavor::MiniProgram || appid.is_some())
                    && thumbnail.is_some();
                if let (true, Some(pagepath), Some(thumb)) = (page_ok, pagepath, thumbnail) {
                    let thumb_media_id = self.media_id(thumb).await?;
                    let mut page = json!({
                        "title": title,
                        "pagepath": pagepath,
                        "thumb_media_id": thumb_media_id,
                    });
                    if let (Flavor::OfficialAccount, Some(appid), Some(obj)) =
                        (flavor, appid, page.as_object_mut())
                    {
                        obj.insert("appid".into(), Value::String(appid.to_owned()));
                    }
                    return Ok(json!({
                        "touser": touser, "msgtype": "miniprogrampage", "miniprogrampage": page
                    }));
                }
                match url {
                    Some(url) => Ok(link_body(
                        flavor,
                        touser,
                        url,
                        Some(title),
                        None,
                        thumbnail.as_ref().and_then(|t| t.url.as_deref()),
                    )),
                    None => Err(ConnectorError::Rejected {
                        code: "card_incomplete".into(),
                        message: match flavor {
                            Flavor::OfficialAccount => {
                                "a card needs attributes.appid, \
                                attributes.pagepath and a thumbnail (mini-program card), or a url"
                            }
                            Flavor::MiniProgram => {
                                "a card needs attributes.pagepath and a \
                                thumbnail (mini-program card), or a url"
                            }
                        }
                        .into(),
                    }),
                }
            }
            other => Err(unsupported(other.type_name())),
        }
    }
}

/// A link: `news` with one article on an OA, `link` on a mini-program.
fn link_body(
    flavor: Flavor,
    touser: &str,
    url: &str,
    title: Option<&str>,
    description: Option<&str>,
    picture: Option<&str>,
) -> Value {
    let title = title.filter(|t| !t.is_empty()).unwrap_or(url);
    let description = description.unwrap_or_default();
    match flavor {
        Flavor::OfficialAccount => {
            let mut article = json!({"title": title, "description": description, "url": url});
            if let (Some(pic), Some(obj)) = (picture, article.as_object_mut()) {
                obj.insert("picurl".into(), Value::String(pic.to_owned()));
            }
            json!({"touser": touser, "msgtype": "news", "news": {"articles": [article]}})
        }
        Flavor::MiniProgram => {
            let mut link = json!({"title": title, "description": description, "url": url});
            if let (Some(pic), Some(obj)) = (picture, link.as_object_mut()) {
                obj.insert("thumb_url".into(), Value::String(pic.to_owned()));
            }
            json!({"touser": touser, "msgtype": "link", "link": link})
        }
    }
}

/// Sends a request and reads the JSON answer; transport failures and non-2xx are classified.
async fn execute(request: reqwest::RequestBuilder) -> Result<Value, ConnectorError> {
    let response = request
        .send()
        .await
        .map_err(|e| ConnectorError::Transient(format!("WeChat API request failed: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        let retry_after = crate::api::retry_after(&response);
        let text = crate::api::body_snippet(response).await;
        // WeChat answers its own errors as 200 + errcode; other statuses come from proxies or
        // gateways in between: 429 slows down, anything else is retried (bounded).
        return Err(if status.as_u16() == 429 {
            ConnectorError::RateLimited { retry_after }
        } else {
            ConnectorError::Transient(format!("WeChat API answered HTTP {status}: {text}"))
        });
    }
    response
        .json::<Value>()
        .await
        .map_err(|e| ConnectorError::Transient(format!("WeChat API answered non-JSON: {e}")))
}

/// The `errcode` of a WeChat-family answer (0 when absent: success answers often omit it).
pub(crate) fn errcode(value: &Value) -> i64 {
    value.get("errcode").and_then(Value::as_i64).unwrap_or(0)
}

fn errmsg(value: &Value) -> String {
    value
        .get("errmsg")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

/// `errcode: errmsg` of an answer that refused the access token, if it did.
fn token_error(value: &Value) -> Option<String> {
    let code = errcode(value);
    TOKEN_ERRORS
        .contains(&code)
        .then(|| format!("{code}: {}", errmsg(value)))
}

fn check(value: Value) -> Result<Value, ConnectorError> {
    match errcode(&value) {
        0 => Ok(value),
        code => Err(classify_errcode(code, &errmsg(&value))),
    }
}

/// Classifies a WeChat `errcode` (non-zero) of a send or upload.
///
/// * 45015 (reply window closed / unsubscribed), 45047 (reply quota used), and every other
///   request-specific error (40003 bad OpenID, 48001 unauthorized API, 45002 too long, 40007
///   bad media id, ...) → [`ConnectorError::Rejected`] with the code: retrying cannot help.
/// * -1 (system busy) → [`ConnectorError::Transient`].
/// * 45009 (daily API quota) and 45011 (per-minute quota) → [`ConnectorError::RateLimited`].
/// * 40001 / 40014 / 42001 (access token) → [`ConnectorError::Transient`] (only seen here when
///   a fresh token was refused too).
pub fn classify_errcode(code: i64, message: &str) -> ConnectorError {
    match code {
        -1 => ConnectorError::Transient(format!("WeChat system busy (-1): {message}")),
        45009 => ConnectorError::RateLimited {
            retry_after: Some(Duration::from_secs(3600)),
        },
        45011 => ConnectorError::RateLimited {
            retry_after: Some(Duration::from_secs(60)),
        },
        c if TOKEN_ERRORS.contains(&c) => {
            ConnectorError::Transient(format!("WeChat access token refused ({c}): {message}"))
        }
        _ => ConnectorError::Rejected {
            code: code.to_string(),
            message: message.to_owned(),
        },
    }
}
