//! Operations endpoints and pages: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/`,
//! `/agent`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::{ApiError, HttpState};

const VISITOR_PAGE: &str = include_str!("../../assets/visitor.html");
const AGENT_PAGE: &str = include_str!("../../assets/agent.html");
const OPENAPI: &str = include_str!("../../assets/openapi.json");

/// `GET /`: the visitor chat page.
pub async fn visitor_page() -> Html<&'static str> {
    Html(VISITOR_PAGE)
}

/// `GET /agent`: the agent console.
pub async fn agent_page() -> Html<&'static str> {
    Html(AGENT_PAGE)
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the bus and the store answer, and the process is not shutting down.
pub async fn readyz(State(state): State<HttpState>) -> Response {
    let bus = state.ingress.is_ready();
    let store = state.ops.store().ping().await.is_ok();
    let draining = state.shutdown.is_cancelled();
    let ready = bus && store && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "bus": bus,
        "store": store,
        "draining": draining,
    });
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format. The pools' open state is computed for the scrape.
pub async fn metrics(State(state): State<HttpState>) -> Response {
    let now = switchyard_core::time::now();
    for (pool, hours) in state.pool_hours.iter() {
        state
            .metrics
            .pool_open
            .with_label_values(&[pool.as_str()])
            .set(i64::from(hours.is_open(now)));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Anything else: a JSON 404.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for `{}`", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::OPENAPI;
    use crate::webhooks::CLOUDEVENTS_JSON;
    use switchyard_connectors::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};

    /// The OpenAPI document describes the outgoing webhook request as `webhooks.rs` sends it.
    #[test]
    fn the_openapi_document_describes_the_webhook_request() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let post = &doc["webhooks"]["event"]["post"];
        let headers: Vec<String> = post["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter(|p| p["in"] == "header")
            .map(|p| p["name"].as_str().unwrap_or_default().to_ascii_lowercase())
            .collect();
        assert_eq!(headers, [TIMESTAMP_HEADER, SIGNATURE_HEADER]);
        let media_type = CLOUDEVENTS_JSON.split(';').next().unwrap_or_default();
        assert!(
            post["requestBody"]["content"][media_type].is_object(),
            "the body's media type is {media_type}"
        );
    }

    /// Every `/v1` route the application serves (`http/mod.rs`) is a path of the OpenAPI
    /// document, with each method it answers, so a new endpoint cannot go undocumented.
    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let source = include_str!("mod.rs");
        let mut checked = 0;
        for route in source.split(".route(").skip(1) {
            let Some(path) = route
                .trim_start()
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            if !path.starts_with("/v1/") {
                continue;
            }
            // This route's call only: the next top-level call of the chain starts a line.
            let handlers = route.split("\n        .").next().unwrap_or_default();
            for method in ["get", "post", "put", "patch", "delete"] {
                if handlers.contains(&format!("{method}(")) {
                    assert!(
                        doc["paths"][path][method].is_object(),
                        "`{} {path}` is served but not in openapi.json",
                        method.to_ascii_uppercase()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 25, "only {checked} routes found in http/mod.rs");
    }
}
