//! The dead letters over REST, for administrators: `GET /v1/dead-letters` lists them,
//! `POST /v1/dead-letters/replay` puts chosen ones back into the queues they came from, and
//! `POST /v1/dead-letters/discard` removes them ([`crate::dead_letters`]).

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use switchyard_core::bus::BusError;

use super::listings::{limit, only};
use super::rest::json_body;
use super::{ApiError, HttpState};
use crate::dead_letters::{DeadLetterError, Handled, Listing, MAX_SCAN, Selection};

impl From<DeadLetterError> for ApiError {
    fn from(e: DeadLetterError) -> Self {
        match e {
            DeadLetterError::NothingChosen { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "nothing_chosen",
                e.to_string(),
            ),
            DeadLetterError::Read(BusError::NotDeclared { .. }) => ApiError::not_found(
                "there is no dead-letter queue: the bus has not declared its topology",
            ),
            DeadLetterError::Read(_) | DeadLetterError::Interrupted { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
        }
    }
}

/// `GET /v1/dead-letters?queue=&message_id=&reason_contains=&limit=`: the dead letters,
/// oldest first, `{"dead_letters": [...], "more": bool}`.
pub async fn list(
    State(state): State<HttpState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Listing>, ApiError> {
    only(&query, &["queue", "message_id", "reason_contains", "limit"])?;
    let selection = Selection {
        message_ids: query.get("message_id").map(|id| vec![id.clone()]),
        queue: query.get("queue").cloned(),
        reason_contains: query.get("reason_contains").cloned(),
        all: true,
    };
    Ok(Json(
        state.dead_letters.list(&selection, limit(&query)?).await?,
    ))
}

/// Body of `POST /v1/dead-letters/replay` and `/discard`: which ones (every criterion given
/// must match; `all` when none is), and at most how many.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choose {
    message_ids: Option<Vec<String>>,
    queue: Option<String>,
    reason_contains: Option<String>,
    #[serde(default)]
    all: bool,
    limit: Option<usize>,
}

/// How many dead letters a replay or discard over REST takes when the body gives no `limit`:
/// few enough to finish well within the request timeout (30 s) on a slow broker.
pub const DEFAULT_TAKE: usize = 1000;

impl Choose {
    fn parts(self) -> Result<(Selection, usize), ApiError> {
        let limit = match self.limit {
            None => DEFAULT_TAKE,
            Some(n) if (1..=MAX_SCAN).contains(&n) => n,
            Some(n) => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request",
                    format!("`limit` must be from 1 to {MAX_SCAN}, not {n}"),
                ));
            }
        };
        let selection = Selection {
            message_ids: self.message_ids,
            queue: self.queue,
            reason_contains: self.reason_contains,
            all: self.all,
        };
        Ok((selection, limit))
    }
}

/// `POST /v1/dead-letters/replay`: `{"message_ids": [...], "skipped": [...], "more": bool}`.
pub async fn replay(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Handled>, ApiError> {
    let (selection, limit) = json_body::<Choose>(&state, &headers, body)?.parts()?;
    Ok(Json(state.dead_letters.replay(&selection, limit).await?))
}

/// `POST /v1/dead-letters/discard`: as [`replay`], removing them instead.
pub async fn discard(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Handled>, ApiError> {
    let (selection, limit) = json_body::<Choose>(&state, &headers, body)?.parts()?;
    Ok(Json(state.dead_letters.discard(&selection, limit).await?))
}
