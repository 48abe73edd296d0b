//! API-key authentication for REST and the agent socket. Channel endpoints authenticate with
//! the channel's own signature instead; pages and operations endpoints are open. With no key
//! configured everything is open, and the configuration only allows a loopback listener.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, HttpState};
use switchyard_connectors::signature::constant_time_eq as signature_eq;

/// Paths that need no API key.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/" | "/agent" | "/healthz" | "/readyz" | "/metrics" | "/openapi.json"
    ) || path.starts_with("/v1/channels/")
}

/// Rejects requests without a valid API key (when keys are configured) with 401, and keys
/// without the needed scope with 403.
pub async fn require_api_key(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    if state.api_keys.is_empty() || is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    // Browsers cannot set headers on a WebSocket: the agent socket may pass `?api_key=`.
    let from_query = request.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("api_key="))
            .map(str::to_owned)
    });
    let Some(presented) = bearer.or(from_query) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an API key is required: `Authorization: Bearer <key>`",
        )
        .into_response();
    };
    let Some((name, _, scopes)) = state
        .api_keys
        .iter()
        .find(|(_, key, _)| signature_eq(key, &presented))
    else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown API key")
            .into_response();
    };
    let needed: Option<&[&str]> = match *request.method() {
        // The dead letters hold any customer's messages, and replaying them changes routing.
        _ if request.uri().path().starts_with("/v1/dead-letters") => Some(&["admin"]),
        // Erasing a customer is for administrators, not agents.
        Method::DELETE => Some(&["admin"]),
        Method::GET if request.uri().path() != "/v1/agents/ws" => None,
        // Every other change (POST, PUT, PATCH: linking identities, tagging a customer, ...) and
        // the agent socket: agents and administrators.
        _ => Some(&["admin", "agent"]),
    };
    if let Some(needed) = needed
        && !scopes.iter().any(|s| needed.contains(&s.as_str()))
    {
        let wanted = needed
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(" or ");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("API key `{name}` lacks the {wanted} scope"),
        )
        .into_response();
    }
    next.run(request).await
}
