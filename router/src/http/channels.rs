//! Channel endpoints: `GET|POST /v1/channels/{id}/webhook` and `POST /v1/channels/{id}/messages`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchyard_connectors::{ConnectorError, HttpReply, InboundRequest};
use switchyard_core::metrics::InboundOutcome;

use super::{ApiError, HttpState};

/// Reads a body, answering 413 (JSON) when it exceeds the limit; counts refusals.
pub fn read_body(
    state: &HttpState,
    channel_id: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body exceeds {} bytes", state.max_body_bytes),
        )
    };
    match body {
        Ok(b) if b.len() > state.max_body_bytes => {
            state
                .metrics
                .count_inbound(channel_id, InboundOutcome::TooLarge);
            Err(too_large())
        }
        Ok(b) => Ok(b),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            state
                .metrics
                .count_inbound(channel_id, InboundOutcome::TooLarge);
            Err(too_large())
        }
        Err(rejection) => {
            state
                .metrics
                .count_inbound(channel_id, InboundOutcome::Malformed);
            Err(ApiError::bad_request("malformed", rejection.body_text()))
        }
    }
}

fn reply(r: HttpReply) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    (status, [(header::CONTENT_TYPE, r.content_type)], r.body).into_response()
}

async fn handle(
    state: HttpState,
    channel_id: String,
    method: Method,
    headers: HeaderMap,
    query: HashMap<String, String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let channel =
        state.registry.get(&channel_id).cloned().ok_or_else(|| {
            ApiError::not_found(format!("no channel `{channel_id}` is configured"))
        })?;
    let body = read_body(&state, &channel_id, body)?;
    let req = InboundRequest {
        method: &method,
        headers: &headers,
        query: &query,
        body: &body,
        received_at: switchyard_core::time::now(),
    };
    // Handshakes (WeChat/WeCom URL verification on GET, Douyin's signed `verify_webhook` POST)
    // are answered by the connector directly.
    match channel.handshake(&req) {
        Ok(Some(answer)) => return Ok(reply(answer)),
        Ok(None) if method == Method::GET => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("channel `{channel_id}` has no GET handshake"),
            ));
        }
        Ok(None) => {}
        Err(e) => {
            state
                .metrics
                .count_inbound(&channel_id, crate::ingress::outcome_of(&e));
            return Err(e.into());
        }
    }
    match state.ingress.ingest(channel.as_ref(), &req).await {
        Ok(accepted) => Ok(reply(channel.accepted(&accepted))),
        Err(ConnectorError::Unsupported(why)) => {
            // 200 so the channel stops retrying something we will never route.
            tracing::debug!(channel = %channel_id, %why, "unsupported inbound ignored");
            Ok(reply(channel.accepted(&[])))
        }
        Err(e) => {
            if matches!(
                e,
                ConnectorError::Unauthorized(_) | ConnectorError::Malformed(_)
            ) {
                tracing::info!(channel = %channel_id, error = %e, "inbound request refused");
            } else {
                tracing::warn!(channel = %channel_id, error = %e, "inbound request not accepted");
            }
            Err(e.into())
        }
    }
}

/// `GET|POST /v1/channels/{channel_id}/webhook`.
pub async fn webhook(
    State(state): State<HttpState>,
    Path(channel_id): Path<String>,
    method: Method,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    handle(state, channel_id, method, headers, query, body).await
}

/// `POST /v1/channels/{channel_id}/messages` (the API channel).
pub async fn messages(
    State(state): State<HttpState>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    handle(state, channel_id, Method::POST, headers, query, body).await
}

/// `GET /v1/channels/{channel_id}/rules`: what the channel lets agents send, and when.
pub async fn rules(
    State(state): State<HttpState>,
    Path(channel_id): Path<String>,
) -> Result<Response, ApiError> {
    let channel = state
        .registry
        .get(&channel_id)
        .ok_or_else(|| ApiError::not_found(format!("no channel `{channel_id}` is configured")))?;
    let body = serde_json::json!({
        "channel": channel.channel(),
        "rules": channel.rules(),
    });
    Ok(axum::Json(body).into_response())
}
