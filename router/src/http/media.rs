//! `GET /v1/media/{channel_id}/{media_id}`: the media proxy. Media a customer sent arrives as a
//! channel media id, which only the platform API turns into bytes, with the channel's
//! credentials ([`switchyard_connectors::Connector::fetch_media`]); this streams them to the
//! agent without keeping them, whole or one byte range of them ([`super::byte_range`]).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use switchyard_connectors::{ConnectorError, MediaDownload};

use super::byte_range::{self, Requested};
use super::{ApiError, HttpState};

/// The type answered when the platform names none.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
/// Agents' browsers may keep what they fetched for an hour, for themselves only.
const CACHE_CONTROL: &str = "private, max-age=3600";

/// The `outcome` label of `switchyard_media_fetches_total` for a failed fetch.
fn outcome(e: &ConnectorError) -> &'static str {
    match e {
        ConnectorError::Unsupported(_) => "unsupported",
        ConnectorError::Rejected { code, .. } if code == "media_not_found" => "not_found",
        ConnectorError::Rejected { code, .. } if code == "media_too_large" => "too_large",
        other => other.outcome(),
    }
}

/// The answer to a failed fetch: 404 `media_unsupported` for a channel kind without platform
/// media, 404 `media_not_found` for unknown or expired media, 422 with the channel's code
/// (`media_too_large`, `access_token_invalid`, ...) for other refusals, and the usual answer
/// of the class otherwise (429, 503, 500).
fn error(channel_id: &str, e: ConnectorError) -> ApiError {
    match e {
        ConnectorError::Unsupported(message) => ApiError::new(
            StatusCode::NOT_FOUND,
            "media_unsupported",
            format!("channel `{channel_id}` has no media to fetch: {message}"),
        ),
        ConnectorError::Rejected { code, message } if code == "media_not_found" => {
            ApiError::new(StatusCode::NOT_FOUND, code, message)
        }
        ConnectorError::Rejected { code, message } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
        }
        other => other.into(),
    }
}

/// Whether browsers may show this type in place (pictures, sound, video); anything else is
/// offered as a download.
fn inline(content_type: &str) -> bool {
    ["image/", "audio/", "video/"]
        .iter()
        .any(|prefix| content_type.to_ascii_lowercase().starts_with(prefix))
}

/// `GET /v1/media/{channel_id}/{media_id}`.
pub async fn get_media(
    State(state): State<HttpState>,
    Path((channel_id, media_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let channel =
        state.registry.get(&channel_id).cloned().ok_or_else(|| {
            ApiError::not_found(format!("no channel `{channel_id}` is configured"))
        })?;
    let kind = channel.channel().kind.clone();
    let count = |outcome: &str| {
        state
            .metrics
            .media_fetches
            .with_label_values(&[kind.as_str(), outcome])
            .inc();
    };
    match channel.fetch_media(&media_id).await {
        Ok(download) => {
            count("ok");
            let requested = byte_range::requested(&headers, download.content_length);
            Ok(respond(&state, &kind, &channel_id, download, requested))
        }
        Err(e) => {
            count(outcome(&e));
            tracing::debug!(channel = %channel_id, error = %e, "media fetch failed");
            Err(error(&channel_id, e))
        }
    }
}

/// Streams `download`, or the part of it `requested`, as the answer; a range outside it is
/// refused with 416 `range_not_satisfiable`.
fn respond(
    state: &HttpState,
    kind: &str,
    channel_id: &str,
    download: MediaDownload,
    requested: Requested,
) -> Response {
    let content_type = download
        .content_type
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
        .unwrap_or(HeaderValue::from_static(DEFAULT_CONTENT_TYPE));
    let disposition = if inline(content_type.to_str().unwrap_or_default()) {
        "inline"
    } else {
        "attachment"
    };
    // A body that fails midway (too large, connection lost) ends the answer abruptly: the
    // status is already sent. Counted, so that it shows.
    let aborted = state
        .metrics
        .media_fetches
        .with_label_values(&[kind, "aborted"]);
    let channel_id = channel_id.to_owned();
    let body = download.body.inspect(move |chunk| {
        if let Err(e) = chunk {
            aborted.inc();
            tracing::warn!(channel = %channel_id, error = %e, "media stream aborted");
        }
    });
    let (mut response, length) = match requested {
        Requested::Whole => (
            Response::new(Body::from_stream(body)),
            download.content_length,
        ),
        Requested::Part { range, total } => {
            let length = range.end() - range.start() + 1;
            let content_range = byte_range::content_range(&range, total);
            let mut response = Response::new(Body::from_stream(byte_range::slice(body, range)));
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(value) = HeaderValue::from_str(&content_range) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            (response, Some(length))
        }
        Requested::Unsatisfiable { total } => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the media has {total} bytes; the range asked for is outside them"),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{total}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return response;
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    if download.content_length.is_some() {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static(disposition),
    );
    // Customer files are served from the console's origin: never let one run as a page there.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_answer_by_what_went_wrong() {
        let not_found = error("c", ConnectorError::rejected("media_not_found", "gone"));
        assert_eq!(
            (not_found.status, not_found.code.as_str()),
            (StatusCode::NOT_FOUND, "media_not_found")
        );
        let unsupported = error("c", ConnectorError::Unsupported("web".into()));
        assert_eq!(
            (unsupported.status, unsupported.code.as_str()),
            (StatusCode::NOT_FOUND, "media_unsupported")
        );
        let large = error("c", ConnectorError::rejected("media_too_large", "big"));
        assert_eq!(
            (large.status, large.code.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "media_too_large")
        );
        let down = error("c", ConnectorError::Transient("5xx".into()));
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            outcome(&ConnectorError::rejected("media_not_found", "")),
            "not_found"
        );
        assert_eq!(
            outcome(&ConnectorError::Transient(String::new())),
            "transient"
        );
        assert!(inline("image/jpeg") && inline("Video/MP4") && !inline("text/html"));
    }
}
