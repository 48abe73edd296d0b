//! `GET /v1/pools/{id}/hours`: a pool's business hours (`[pools.hours]`) and whether it is open
//! now.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use switchyard_core::hours::{DAY_KEYS, Hours};

use super::{ApiError, HttpState};

/// `GET /v1/pools/{id}/hours`: `{"pool", "open_now", "hours"}`, where `hours` is `null` for a
/// pool without business hours (always open); 404 for a pool that is not configured.
pub async fn pool_hours(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let hours = state.pool_hours.get(&id);
    if hours.is_none() && !state.ops.pools().contains(&id) {
        return Err(ApiError::not_found(format!(
            "pool `{id}` is not configured"
        )));
    }
    let now = switchyard_core::time::now();
    let open_now = hours.is_none_or(|h| h.is_open(now));
    Ok(Json(json!({
        "pool": id,
        "open_now": open_now,
        "hours": hours.map(describe),
    }))
    .into_response())
}

/// The schedule as the configuration writes it, every day listed (`[]`: closed all day).
fn describe(hours: &Hours) -> Value {
    let mut days = Map::new();
    for (name, ranges) in DAY_KEYS.iter().zip(hours.days()) {
        let ranges: Vec<String> = ranges.iter().map(ToString::to_string).collect();
        days.insert((*name).to_owned(), json!(ranges));
    }
    let closed: Vec<String> = hours.closed_dates().map(|d| d.to_string()).collect();
    json!({
        "timezone": hours.timezone(),
        "days": days,
        "closed_dates": closed,
        "outside_hours_reply": hours.reply(),
    })
}
