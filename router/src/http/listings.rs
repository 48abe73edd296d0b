//! REST listings of conversations: a customer's history across channels
//! (`GET /v1/customers/{id}/conversations`) and what a pool has open
//! (`GET /v1/pools/{id}/conversations`). Both answer `{"conversations": [conversation, ...]}`
//! with the records as stored (no messages); a bad query parameter answers 422.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchyard_core::model::ConversationStatus;
use switchyard_core::store::{
    CustomerConversationsQuery, OPEN_STATUSES, StoreError, UNKNOWN_CURSOR,
};

use super::{ApiError, HttpState};

/// Conversations listed when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 200;
/// The longest `before` accepted (a conversation id is a 26-character ULID).
const MAX_CURSOR_LEN: usize = 128;

/// The code of a bad query parameter (422).
const INVALID_QUERY: &str = "invalid_query";

/// A 422 `invalid_query` answer.
pub(super) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, INVALID_QUERY, message)
}

/// Refuses parameters other than `allowed` (and `api_key`, which authentication may read).
pub(super) fn only(query: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = query
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "api_key" && !allowed.contains(k))
        .collect();
    unknown.sort_unstable();
    match unknown.first() {
        None => Ok(()),
        Some(name) => Err(invalid(format!(
            "unknown query parameter `{name}`; this endpoint takes {}",
            allowed
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub(super) fn limit(query: &HashMap<String, String>) -> Result<usize, ApiError> {
    let Some(raw) = query.get("limit") else {
        return Ok(DEFAULT_LIMIT);
    };
    match raw.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(invalid(format!(
            "`limit` must be a whole number from 1 to {MAX_LIMIT}, not `{raw}`"
        ))),
    }
}

/// One status by name.
fn one_status(name: &str) -> Option<ConversationStatus> {
    match name {
        "bot" => Some(ConversationStatus::Bot),
        "queued" => Some(ConversationStatus::Queued),
        "assigned" => Some(ConversationStatus::Assigned),
        "closed" => Some(ConversationStatus::Closed),
        _ => None,
    }
}

/// `status` of a customer's listing: `open` (bot, queued, assigned), `closed`, or one of
/// `bot`, `queued`, `assigned`; every status when absent.
fn customer_statuses(query: &HashMap<String, String>) -> Result<Vec<ConversationStatus>, ApiError> {
    match query.get("status").map(String::as_str) {
        None => Ok(Vec::new()),
        Some("open") => Ok(OPEN_STATUSES.to_vec()),
        Some(name) => one_status(name).map(|s| vec![s]).ok_or_else(|| {
            invalid(format!(
                "`status` must be `open`, `closed`, `bot`, `queued` or `assigned`, not `{name}`"
            ))
        }),
    }
}

/// `status` of a pool's listing: `bot`, `queued` or `assigned` (or `open`, the same as none).
fn pool_statuses(query: &HashMap<String, String>) -> Result<Vec<ConversationStatus>, ApiError> {
    match query.get("status").map(String::as_str) {
        None | Some("open") => Ok(Vec::new()),
        Some(name) => one_status(name)
            .filter(|s| *s != ConversationStatus::Closed)
            .map(|s| vec![s])
            .ok_or_else(|| {
                invalid(format!(
                    "`status` must be `bot`, `queued` or `assigned` (a pool lists its open \
                     conversations), not `{name}`"
                ))
            }),
    }
}

/// `GET /v1/customers/{id}/conversations?status=&limit=&before=`: every conversation of the
/// customer (a merged-away id: of the profile it was merged into) and of the profiles merged into
/// it, newest first; `before` (a conversation id from a previous page) lists those after it.
pub async fn customer_conversations(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&query, &["status", "limit", "before"])?;
    let before = match query.get("before") {
        None => None,
        Some(b) if !b.is_empty() && b.len() <= MAX_CURSOR_LEN => Some(b.clone()),
        Some(_) => {
            return Err(invalid(format!(
                "`before` must be a conversation id (1 to {MAX_CURSOR_LEN} bytes)"
            )));
        }
    };
    let request = CustomerConversationsQuery {
        statuses: customer_statuses(&query)?,
        before,
        limit: limit(&query)?,
    };
    let conversations = state
        .ops
        .store()
        .customer_conversations(&id, &request)
        .await
        .map_err(|e| match e {
            StoreError::NotFound {
                kind: "customer", ..
            } => ApiError::not_found(format!("customer `{id}` not found")),
            StoreError::Conflict {
                code: UNKNOWN_CURSOR,
                message,
            } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, UNKNOWN_CURSOR, message),
            other => other.into(),
        })?;
    Ok(Json(json!({ "conversations": conversations })).into_response())
}

/// `GET /v1/pools/{id}/conversations?status=&limit=`: the pool's open conversations (with its
/// bot, queued, assigned), oldest first. 404 for a pool that is not configured and has nothing
/// open (a transfer may have sent conversations to a pool missing from the configuration: those
/// are listed).
pub async fn pool_conversations(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only(&query, &["status", "limit"])?;
    let statuses = pool_statuses(&query)?;
    let limit = limit(&query)?;
    let store = state.ops.store();
    let conversations = store.pool_conversations(&id, &statuses, limit).await?;
    let configured = state.ops.pools();
    if conversations.is_empty()
        && !configured.is_empty()
        && !configured.contains(&id)
        && (statuses.is_empty() || store.pool_conversations(&id, &[], 1).await?.is_empty())
    {
        return Err(ApiError::not_found(format!("pool `{id}` not found")));
    }
    Ok(Json(json!({ "conversations": conversations })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn limit_defaults_and_bounds() {
        assert_eq!(limit(&q(&[])).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(limit(&q(&[("limit", "1")])).ok(), Some(1));
        assert_eq!(limit(&q(&[("limit", "200")])).ok(), Some(200));
        for bad in ["0", "201", "-1", "ten", "", "1.5"] {
            let e = limit(&q(&[("limit", bad)])).err();
            assert_eq!(
                e.map(|e| (e.status, e.code)),
                Some((StatusCode::UNPROCESSABLE_ENTITY, INVALID_QUERY.to_owned())),
                "limit={bad}"
            );
        }
    }

    #[test]
    fn statuses_of_each_listing() {
        use ConversationStatus::{Assigned, Closed, Queued};
        assert_eq!(customer_statuses(&q(&[])).ok(), Some(vec![]));
        assert_eq!(
            customer_statuses(&q(&[("status", "open")])).ok(),
            Some(OPEN_STATUSES.to_vec())
        );
        assert_eq!(
            customer_statuses(&q(&[("status", "closed")])).ok(),
            Some(vec![Closed])
        );
        assert!(customer_statuses(&q(&[("status", "gone")])).is_err());
        assert_eq!(pool_statuses(&q(&[("status", "open")])).ok(), Some(vec![]));
        assert_eq!(
            pool_statuses(&q(&[("status", "queued")])).ok(),
            Some(vec![Queued])
        );
        assert_eq!(
            pool_statuses(&q(&[("status", "assigned")])).ok(),
            Some(vec![Assigned])
        );
        assert!(pool_statuses(&q(&[("status", "closed")])).is_err());
    }

    #[test]
    fn unknown_parameters_are_refused() {
        assert!(only(&q(&[("limit", "3"), ("api_key", "k")]), &["limit"]).is_ok());
        let e = only(&q(&[("stauts", "open")]), &["status", "limit"]).err();
        assert_eq!(e.map(|e| e.code), Some(INVALID_QUERY.to_owned()));
    }
}
