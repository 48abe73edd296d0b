//! Media an agent gives by URL, turned into a channel's temporary media id: the part every
//! "upload first, then send by id" platform shares (WeChat `cgi-bin/media/upload`, WeCom
//! `cgi-bin/media/upload`, Douyin `tool/imagex/client_upload/`).
//!
//! * [`download`]: fetches an `http(s)` URL with a byte cap (checked against
//!   `Content-Length` and while streaming), keeping the served `Content-Type`.
//! * [`sniff_mime`]: recognises common media formats from their leading bytes.
//! * [`Multipart`]: a `multipart/form-data` body with one file part (cheap to clone, so a
//!   call retried after a token refresh sends the same bytes).
//! * [`MediaCache`]: URL → media id in the shared [`Store`], with a TTL shorter than the
//!   platform keeps the media, so every replica reuses one upload.
//! * [`MediaResolver::resolve`]: the whole flow for one [`Media`]: its own media id, else a
//!   cached upload of its URL, else download → type check → the platform's upload (a closure
//!   each connector supplies with its own URL, fields, answer parsing and error codes) →
//!   cache.
//!
//! Errors are classified like any connector error: a bad, unreachable (4xx), oversized or
//! wrongly typed URL is [`ConnectorError::Rejected`] (retrying cannot help); network
//! failures, 5xx and 429 from the media host are [`ConnectorError::Transient`].
//!
//! The other direction, media a customer sent, which only the platform API can turn into
//! bytes ([`crate::Connector::fetch_media`], the media proxy), shares:
//!
//! * [`fetch`]: sends a media GET with a download-sized timeout and classifies a refusal.
//! * [`MediaDownload`]: the answer's body as a stream of bytes, capped while streaming
//!   ([`MAX_FETCH_BYTES`]), never buffered whole.
//! * [`json_or_file`]: tells a WeChat-family JSON answer (`errcode`, `video_url`) from the file.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::Value;
use sha1::{Digest, Sha1};
use switchyard_core::envelope::Media;
use switchyard_core::store::Store;

use crate::ConnectorError;

/// What a downloaded URL held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// The body.
    pub bytes: Bytes,
    /// The served `Content-Type` (lower-case, without parameters), if any.
    pub served_mime: Option<String>,
}

/// Downloads an agent-supplied media URL (`http`/`https` only, at most `max_bytes`).
///
/// Rejected (`media_url_invalid`, `media_download_failed` for a 4xx, `media_too_large`);
/// Transient for network errors, 5xx and 429.
pub async fn download(
    http: &reqwest::Client,
    url: &str,
    max_bytes: usize,
) -> Result<Downloaded, ConnectorError> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(ConnectorError::rejected(
            "media_url_invalid",
            "media url must be http(s)",
        ));
    }
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| ConnectorError::Transient(format!("media download failed: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(if status.is_server_error() || status.as_u16() == 429 {
            ConnectorError::Transient(format!("media download: HTTP {status}"))
        } else {
            ConnectorError::rejected(
                "media_download_failed",
                format!("media url answered HTTP {status}"),
            )
        });
    }
    let download = MediaDownload::from_response(response, max_bytes as u64)?;
    let served_mime = download.mime();
    Ok(Downloaded {
        bytes: download.bytes().await?,
        served_mime,
    })
}

/// The MIME type of common media formats, from their leading bytes ("magic numbers").
pub fn sniff_mime(bytes: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(b"\xFF\xD8\xFF") {
        Some("image/jpeg")
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if starts(b"BM") && bytes.len() >= 14 {
        Some("image/bmp")
    } else if starts(b"#!AMR\n") {
        Some("audio/amr")
    } else if starts(b"ID3") {
        Some("audio/mpeg")
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        Some("video/mp4")
    } else if starts(b"%PDF-") {
        Some("application/pdf")
    } else {
        None
    }
}

/// The usual file extension of a MIME type (`bin` when unknown).
pub fn extension(mime: &str) -> &'static str {
    match mime {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/bmp" => "bmp",
        "audio/amr" => "amr",
        "audio/mpeg" => "mp3",
        "video/mp4" => "mp4",
        "application/pdf" => "pdf",
        "text/plain" => "txt",
        _ => "bin",
    }
}

/// The last path segment of `url` when it looks like a file name (`report.pdf`).
pub fn url_file_name(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let after_scheme = path.split_once("://").map_or(path, |(_, rest)| rest);
    let (_, segments) = after_scheme.split_once('/')?;
    let last = segments.rsplit('/').next()?;
    (last.contains('.') && !last.starts_with('.')).then(|| last.to_owned())
}

/// Served types that say nothing about the content.
fn is_generic(mime: &str) -> bool {
    matches!(
        mime,
        "application/octet-stream" | "binary/octet-stream" | "application/unknown"
    )
}

/// A `multipart/form-data` body with one file part, after any plain fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multipart {
    content_type: String,
    body: Bytes,
}

/// Makes a filename safe inside a quoted `Content-Disposition` parameter.
fn quoted_filename(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\r' | '\n' | '\0' => '_',
            c => c,
        })
        .collect();
    if cleaned.trim().is_empty() {
        "file".to_owned()
    } else {
        cleaned
    }
}

impl Multipart {
    /// One file part named `field`, with `filename` and `Content-Type: mime`.
    pub fn file(field: &str, filename: &str, mime: &str, bytes: &[u8]) -> Self {
        Self::fields_and_file(&[], field, filename, mime, bytes)
    }

    /// The plain `fields` (name, value), then one file part as [`Multipart::file`] makes it.
    pub fn fields_and_file(
        fields: &[(&str, &str)],
        field: &str,
        filename: &str,
        mime: &str,
        bytes: &[u8],
    ) -> Self {
        let occurs = |haystack: &[u8], needle: &str| {
            haystack
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        };
        let boundary = loop {
            let candidate = format!("switchyard-{}", hex::encode(rand::random::<[u8; 12]>()));
            if !occurs(bytes, &candidate)
                && !fields.iter().any(|(_, v)| occurs(v.as_bytes(), &candidate))
            {
                break candidate;
            }
        };
        let mut body = Vec::with_capacity(bytes.len() + 256 * (fields.len() + 1));
        for (name, value) in fields {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n\
                     {value}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; \
                 filename=\"{}\"\r\nContent-Type: {mime}\r\n\r\n",
                quoted_filename(filename)
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        Multipart {
            content_type: format!("multipart/form-data; boundary={boundary}"),
            body: Bytes::from(body),
        }
    }

    /// The `Content-Type` header value (with the boundary).
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The encoded body.
    pub fn body(&self) -> Bytes {
        self.body.clone()
    }

    /// Sets this body and its `Content-Type` on `request`.
    pub fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request
            .header("content-type", self.content_type.as_str())
            .body(self.body.clone())
    }
}

/// URL → media id, shared by every replica through the store.
#[derive(Clone)]
pub struct MediaCache {
    store: Arc<dyn Store>,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for MediaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaCache")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl MediaCache {
    /// Ids kept under `{prefix}:{hex sha1(url)}` for `ttl` (shorter than the platform keeps
    /// the media).
    pub fn new(store: Arc<dyn Store>, prefix: impl Into<String>, ttl: Duration) -> Self {
        MediaCache {
            store,
            prefix: prefix.into(),
            ttl,
        }
    }

    /// The store key of `url`.
    pub fn key(&self, url: &str) -> String {
        format!(
            "{}:{}",
            self.prefix,
            hex::encode(Sha1::digest(url.as_bytes()))
        )
    }

    /// The cached id of `url` (a store failure is a miss: the media is uploaded again).
    pub async fn get(&self, url: &str) -> Option<String> {
        match self.store.get_key(&self.key(url)).await {
            Ok(id) => id.filter(|id| !id.is_empty()),
            Err(e) => {
                tracing::debug!(error = %e, "media cache read failed; uploading again");
                None
            }
        }
    }

    /// Remembers `id` for `url` (a store failure only costs a later re-upload).
    pub async fn put(&self, url: &str, id: &str) {
        if let Err(e) = self.store.set_key(&self.key(url), id, self.ttl).await {
            tracing::debug!(error = %e, "could not cache a media id");
        }
    }

    /// Forgets `url` (the platform refused its id: the next send uploads again).
    pub async fn forget(&self, url: &str) {
        if let Err(e) = self.store.delete_key(&self.key(url)).await {
            tracing::debug!(error = %e, "could not drop a cached media id");
        }
    }
}

/// Which MIME types a platform takes for one kind of media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Any type starting with this (`image/`).
    Prefix(&'static str),
    /// Exactly these types.
    OneOf(&'static [&'static str]),
    /// Anything (plain files).
    Any,
}

impl Accept {
    /// Whether `mime` is accepted.
    pub fn allows(&self, mime: &str) -> bool {
        match self {
            Accept::Prefix(p) => mime.starts_with(p),
            Accept::OneOf(list) => list.contains(&mime),
            Accept::Any => true,
        }
    }
}

/// What a platform takes for one kind of temporary media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaSpec {
    /// The platform's name for the kind (`image`, `voice`, `video`, `file`); also the
    /// default file name stem.
    pub kind: &'static str,
    /// Accepted MIME types.
    pub accept: Accept,
    /// The type assumed when neither the bytes, the envelope nor the server tell.
    pub default_mime: &'static str,
    /// Largest accepted size, in bytes.
    pub max_bytes: usize,
    /// Smallest accepted size, in bytes.
    pub min_bytes: usize,
}

/// A downloaded file, ready for the platform's upload call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// The bytes.
    pub bytes: Bytes,
    /// The MIME type (accepted by the spec).
    pub mime: String,
    /// The file name to send (`{name hint}` or `{kind}.{ext}`).
    pub filename: String,
}

impl Upload {
    /// The multipart body of this file under the form field `field`.
    pub fn multipart(&self, field: &str) -> Multipart {
        Multipart::file(field, &self.filename, &self.mime, &self.bytes)
    }
}

/// The MIME type to upload `bytes` as: what the bytes are (when recognised), else what the
/// envelope says, else what the server said (unless generic), else the spec's default;
/// `Rejected media_type_unsupported` when that type is not one the platform takes.
pub fn choose_mime(
    spec: &MediaSpec,
    bytes: &[u8],
    declared: Option<&str>,
    served: Option<&str>,
) -> Result<String, ConnectorError> {
    let declared = declared
        .map(|m| m.split(';').next().unwrap_or(m).trim().to_ascii_lowercase())
        .filter(|m| !m.is_empty() && !is_generic(m));
    let served = served
        .map(str::to_ascii_lowercase)
        .filter(|m| !m.is_empty() && !is_generic(m));
    let mime = sniff_mime(bytes)
        .map(str::to_owned)
        .or(declared)
        .or(served)
        .unwrap_or_else(|| spec.default_mime.to_owned());
    if spec.accept.allows(&mime) {
        Ok(mime)
    } else {
        Err(ConnectorError::rejected(
            "media_type_unsupported",
            format!("the channel does not take {mime} as {}", spec.kind),
        ))
    }
}

/// Resolves [`Media`] to a platform media id, uploading URLs once per cache lifetime.
#[derive(Debug, Clone)]
pub struct MediaResolver {
    http: reqwest::Client,
    cache: MediaCache,
}

impl MediaResolver {
    /// A resolver downloading with `http` and caching in `cache`.
    pub fn new(http: reqwest::Client, cache: MediaCache) -> Self {
        MediaResolver { http, cache }
    }

    /// The cache.
    pub fn cache(&self) -> &MediaCache {
        &self.cache
    }

    /// The media id of `media`: its own `media_id`, else the cached id of its URL, else the
    /// id `upload` returns for the downloaded file (then cached). `name` is a file name hint
    /// (a file's display name). No id and no URL → `Rejected no_media`.
    pub async fn resolve<F, Fut>(
        &self,
        media: &Media,
        spec: &MediaSpec,
        name: Option<&str>,
        upload: F,
    ) -> Result<String, ConnectorError>
    where
        F: FnOnce(Upload) -> Fut,
        Fut: Future<Output = Result<String, ConnectorError>>,
    {
        if let Some(id) = media.media_id.as_deref().filter(|id| !id.is_empty()) {
            return Ok(id.to_owned());
        }
        let Some(url) = media.url.as_deref().filter(|u| !u.is_empty()) else {
            return Err(ConnectorError::rejected(
                "no_media",
                "media has neither a media_id nor a url",
            ));
        };
        let cache_key = format!("{}|{}", spec.kind, url);
        if let Some(id) = self.cache.get(&cache_key).await {
            return Ok(id);
        }
        let downloaded = download(&self.http, url, spec.max_bytes).await?;
        if downloaded.bytes.len() < spec.min_bytes {
            return Err(ConnectorError::rejected(
                "media_too_small",
                format!(
                    "media is {} bytes; the channel needs at least {}",
                    downloaded.bytes.len(),
                    spec.min_bytes
                ),
            ));
        }
        let mime = choose_mime(
            spec,
            &downloaded.bytes,
            media.mime.as_deref(),
            downloaded.served_mime.as_deref(),
        )?;
        // Plain files show their name to the customer: the hint, else the URL's last segment.
        let url_name = || match spec.accept {
            Accept::Any => url_file_name(url),
            _ => None,
        };
        let filename = match name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .or_else(url_name)
        {
            Some(n) => n,
            None => format!("{}.{}", spec.kind, extension(&mime)),
        };
        let id = upload(Upload {
            bytes: downloaded.bytes,
            mime,
            filename,
        })
        .await?;
        if id.is_empty() {
            return Err(ConnectorError::Transient(
                "the media upload answered an empty id".into(),
            ));
        }
        self.cache.put(&cache_key, &id).await;
        Ok(id)
    }

    /// Forgets the cached id of `media`'s URL for `spec` (after the platform refused it).
    pub async fn forget(&self, media: &Media, spec: &MediaSpec) {
        if media.media_id.as_deref().is_some_and(|id| !id.is_empty()) {
            return;
        }
        if let Some(url) = media.url.as_deref() {
            self.cache.forget(&format!("{}|{}", spec.kind, url)).await;
        }
    }
}

/// Largest file the media proxy passes on (WhatsApp documents reach 100 MB).
pub const MAX_FETCH_BYTES: u64 = 100 * 1024 * 1024;
/// Longest a whole media download may take (the shared client's short limit is for API calls).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Longest a platform may stay silent in the middle of a download before it is given up.
pub const FETCH_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer [`json_or_file`] reads to see whether it is JSON rather than the file.
const MAX_JSON_ANSWER: u64 = 64 * 1024;

/// A body of bytes, as it streams in.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ConnectorError>> + Send>>;

/// Media fetched from a platform: its type and length when known, and its bytes as a stream.
pub struct MediaDownload {
    /// The served `Content-Type` (as served, parameters included), if any.
    pub content_type: Option<String>,
    /// The length in bytes, when the platform says.
    pub content_length: Option<u64>,
    /// The bytes. A body longer than the cap it was opened with ends with `Rejected
    /// media_too_large`; a broken or stalled connection ends it with `Transient`.
    pub body: ByteStream,
}

impl std::fmt::Debug for MediaDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaDownload")
            .field("content_type", &self.content_type)
            .field("content_length", &self.content_length)
            .finish_non_exhaustive()
    }
}

/// `Rejected media_too_large`: the media is larger than `max_bytes`.
pub fn too_large(max_bytes: u64) -> ConnectorError {
    ConnectorError::rejected(
        "media_too_large",
        format!("media exceeds the limit of {max_bytes} bytes"),
    )
}

/// `Rejected media_not_found`: the platform does not know the media id (never did, or it
/// expired: WeChat-family temporary media live 3 days, WhatsApp media 30 days).
pub fn not_found(what: &str, detail: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::rejected(
        "media_not_found",
        format!("{what}: unknown or expired media ({detail})"),
    )
}

impl MediaDownload {
    /// Opens the body of `response` (a 2xx answer) as a stream of at most `max_bytes`:
    /// `Rejected media_too_large` at once when `Content-Length` says more, else as soon as the
    /// streamed bytes pass the cap.
    pub fn from_response(
        response: reqwest::Response,
        max_bytes: u64,
    ) -> Result<Self, ConnectorError> {
        let content_length = response.content_length();
        if content_length.is_some_and(|n| n > max_bytes) {
            return Err(too_large(max_bytes));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        let body = stream::try_unfold((response, 0u64), move |(response, seen)| {
            next_chunk(response, seen, max_bytes)
        });
        Ok(MediaDownload {
            content_type,
            content_length,
            body: Box::pin(body),
        })
    }

    /// The content type, lower-case and without parameters (`image/jpeg`), if any.
    pub fn mime(&self) -> Option<String> {
        self.content_type
            .as_deref()
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase())
            .filter(|m| !m.is_empty())
    }

    /// Reads the whole body (as long as the cap it was opened with allows).
    pub async fn bytes(mut self) -> Result<Bytes, ConnectorError> {
        let mut bytes = BytesMut::new();
        while let Some(chunk) = self.body.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        Ok(bytes.freeze())
    }
}

/// The next chunk of a capped download, and the state to read the one after it.
async fn next_chunk(
    mut response: reqwest::Response,
    seen: u64,
    max_bytes: u64,
) -> Result<Option<(Bytes, (reqwest::Response, u64))>, ConnectorError> {
    let chunk = tokio::time::timeout(FETCH_IDLE_TIMEOUT, response.chunk())
        .await
        .map_err(|_| {
            ConnectorError::Transient(format!(
                "media download stalled for {} s",
                FETCH_IDLE_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| {
            ConnectorError::Transient(format!("media download failed: {}", e.without_url()))
        })?;
    let Some(chunk) = chunk else {
        return Ok(None);
    };
    let seen = seen.saturating_add(chunk.len() as u64);
    if seen > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok(Some((chunk, (response, seen))))
}

/// Sends a media download `request` with [`FETCH_TIMEOUT`] and answers the 2xx response. A
/// network failure is `Transient` (its message never shows the URL, which may hold a token),
/// 429 `RateLimited`, 5xx `Transient`; any other status is what `refused(status, body)` says
/// (platforms differ: see [`not_found`]).
pub async fn fetch(
    request: reqwest::RequestBuilder,
    what: &str,
    refused: impl FnOnce(u16, &str) -> ConnectorError,
) -> Result<reqwest::Response, ConnectorError> {
    let response =
        request.timeout(FETCH_TIMEOUT).send().await.map_err(|e| {
            ConnectorError::Transient(format!("{what} failed: {}", e.without_url()))
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = crate::api::retry_after(&response);
    let text = crate::api::body_snippet(response).await;
    Err(match status.as_u16() {
        429 => ConnectorError::RateLimited { retry_after },
        s if s >= 500 => {
            ConnectorError::Transient(format!("{what} answered HTTP {status}: {text}"))
        }
        s => refused(s, &text),
    })
}

/// Sends a WeChat-family `media/get` request, which answers the file or, on an error (or for
/// a WeChat video), a JSON object. These platforms answer their own errors as 200 + JSON: any
/// other status comes from a proxy or gateway in between and is `Transient`.
pub async fn fetch_file_or_json(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<MediaAnswer, ConnectorError> {
    let response = fetch(request, what, |status, text| {
        ConnectorError::Transient(format!("{what} answered HTTP {status}: {text}"))
    })
    .await?;
    json_or_file(MediaDownload::from_response(response, MAX_FETCH_BYTES)?).await
}

/// What a WeChat-family `media/get` answered: JSON (an `errcode`, or a video's `video_url`)
/// or the file itself.
#[derive(Debug)]
pub enum MediaAnswer {
    /// A JSON object instead of a file.
    Json(Value),
    /// The file.
    File(MediaDownload),
}

/// Tells a JSON answer from the file: an `application/json` or `text/plain` answer of at
/// most 64 KiB that parses as a JSON object is JSON; anything else is the file, with the
/// bytes read to find out put back in front.
pub async fn json_or_file(mut download: MediaDownload) -> Result<MediaAnswer, ConnectorError> {
    let textual = download
        .mime()
        .is_some_and(|m| m.ends_with("json") || m == "text/plain");
    if !textual || download.content_length.is_some_and(|n| n > MAX_JSON_ANSWER) {
        return Ok(MediaAnswer::File(download));
    }
    let mut head = BytesMut::new();
    let mut ended = false;
    while (head.len() as u64) <= MAX_JSON_ANSWER {
        match download.body.next().await {
            Some(chunk) => head.extend_from_slice(&chunk?),
            None => {
                ended = true;
                break;
            }
        }
    }
    if ended && let Ok(value @ Value::Object(_)) = serde_json::from_slice::<Value>(&head) {
        return Ok(MediaAnswer::Json(value));
    }
    let rest = std::mem::replace(&mut download.body, Box::pin(stream::empty()));
    download.body = Box::pin(stream::once(async move { Ok(head.freeze()) }).chain(rest));
    Ok(MediaAnswer::File(download))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: MediaSpec = MediaSpec {
        kind: "image",
        accept: Accept::OneOf(&["image/jpeg", "image/png"]),
        default_mime: "image/jpeg",
        max_bytes: 100,
        min_bytes: 6,
    };

    #[test]
    fn sniffs_common_formats() {
        assert_eq!(sniff_mime(b"\xFF\xD8\xFF\xE0rest"), Some("image/jpeg"));
        assert_eq!(sniff_mime(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff_mime(b"GIF89a..."), Some("image/gif"));
        assert_eq!(sniff_mime(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_mime(b"#!AMR\n\0\0"), Some("audio/amr"));
        assert_eq!(sniff_mime(b"\0\0\0\x18ftypmp42"), Some("video/mp4"));
        assert_eq!(sniff_mime(b"<html>"), None);
        assert_eq!(sniff_mime(b""), None);
    }

    #[test]
    fn mime_prefers_the_bytes_and_refuses_what_the_platform_does_not_take() {
        let png = b"\x89PNG\r\n\x1a\nrest";
        assert_eq!(
            choose_mime(&IMAGE, png, Some("image/jpeg"), Some("text/html")).unwrap(),
            "image/png"
        );
        assert_eq!(
            choose_mime(&IMAGE, b"??????", None, Some("application/octet-stream")).unwrap(),
            "image/jpeg"
        );
        assert_eq!(
            choose_mime(&IMAGE, b"??????", Some("image/png; q=1"), None).unwrap(),
            "image/png"
        );
        assert!(matches!(
            choose_mime(&IMAGE, b"GIF89a....", None, None),
            Err(ConnectorError::Rejected { code, .. }) if code == "media_type_unsupported"
        ));
        assert!(matches!(
            choose_mime(&IMAGE, b"<html></html>", None, Some("text/html")),
            Err(ConnectorError::Rejected { code, .. }) if code == "media_type_unsupported"
        ));
    }

    #[test]
    fn file_names_from_urls() {
        assert_eq!(
            url_file_name("https://h/docs/report.pdf?x=1").as_deref(),
            Some("report.pdf")
        );
        assert_eq!(url_file_name("https://h/docs/").as_deref(), None);
        assert_eq!(url_file_name("https://h.example.com").as_deref(), None);
        assert_eq!(url_file_name("https://h/download").as_deref(), None);
    }

    #[test]
    fn multipart_has_one_file_part_with_safe_filename() {
        let m = Multipart::file("media", "a\"b\r\n.png", "image/png", b"BYTES");
        let boundary = m
            .content_type()
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap()
            .to_owned();
        let expected = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; \
             filename=\"a_b__.png\"\r\nContent-Type: image/png\r\n\r\nBYTES\r\n--{boundary}--\r\n"
        );
        assert_eq!(m.body().as_ref(), expected.as_bytes());
    }
}
