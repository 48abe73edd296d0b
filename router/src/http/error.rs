//! The JSON error body and the mapping from internal errors to HTTP answers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchyard_connectors::ConnectorError;
use switchyard_core::bus::BusError;
use switchyard_core::store::StoreError;

use crate::error::RouteError;

/// An HTTP error answer: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// An error answer.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code, "message": self.message } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        // Handlers count their own errors; this marker lets the metrics layer see the code.
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

/// The error code of a response, for metrics.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub String);

impl From<ConnectorError> for ApiError {
    fn from(e: ConnectorError) -> Self {
        let status = StatusCode::from_u16(e.ingress_status()).unwrap_or(StatusCode::BAD_REQUEST);
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            StoreError::Conflict { code, .. } => {
                ApiError::new(StatusCode::CONFLICT, *code, e.to_string())
            }
            StoreError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
        }
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::Store(e) => e.into(),
            RouteError::Bus(e) => e.into(),
            RouteError::Invalid(m) => ApiError::bad_request("invalid", m),
            RouteError::Refused { code, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
        }
    }
}

/// The answer when a handler panicked: a JSON 500, and the server keeps serving.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; the request was not processed",
    )
    .into_response()
}

/// Counts every error answer in `switchyard_api_errors_total{code}`.
pub async fn count_errors(
    axum::extract::State(state): axum::extract::State<super::HttpState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        state
            .metrics
            .api_errors
            .with_label_values(&[code.as_str()])
            .inc();
    }
    response
}
