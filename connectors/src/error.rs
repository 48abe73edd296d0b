//! Classified connector errors: the class decides the answer to the channel, the bus action and
//! the metric outcome (DESIGN.md "How errors map").

use std::time::Duration;

/// A connector failure, by class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// Signature, token or replay check failed: 401.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The request could not be read: 400.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Valid, but of a type that is not routed: 200 so the channel stops retrying.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The channel API refused the message for good (reply window, quota, blocked user).
    #[error("rejected by the channel ({code}): {message}")]
    Rejected {
        /// The channel's error code.
        code: String,
        /// The channel's message.
        message: String,
    },
    /// The channel API asked us to slow down.
    #[error("rate limited by the channel (retry after {retry_after:?})")]
    RateLimited {
        /// How long to wait, if the channel said.
        retry_after: Option<Duration>,
    },
    /// A temporary failure (network, 5xx, bus down): retry later.
    #[error("temporary failure: {0}")]
    Transient(String),
    /// The channel's configuration is wrong.
    #[error("configuration: {0}")]
    Config(String),
}

impl From<switchyard_core::config::ConfigError> for ConnectorError {
    /// A channel's configuration is wrong (a missing or unreadable key): [`ConnectorError::Config`].
    fn from(e: switchyard_core::config::ConfigError) -> Self {
        ConnectorError::Config(e.to_string())
    }
}

impl From<switchyard_core::store::StoreError> for ConnectorError {
    /// State a connector keeps in the shared store (token caches, cursors, reply contexts,
    /// mailboxes) could not be read or written: [`ConnectorError::Transient`], tried again.
    fn from(e: switchyard_core::store::StoreError) -> Self {
        ConnectorError::Transient(format!("store: {e}"))
    }
}

impl ConnectorError {
    /// A send the channel refused for good, with its machine-readable `code`.
    pub fn rejected(code: impl Into<String>, message: impl Into<String>) -> Self {
        ConnectorError::Rejected {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The metric outcome label of this class.
    pub fn outcome(&self) -> &'static str {
        match self {
            ConnectorError::Unauthorized(_) => "bad_signature",
            ConnectorError::Malformed(_) => "malformed",
            ConnectorError::Unsupported(_) => "ignored",
            ConnectorError::Rejected { .. } => "rejected",
            ConnectorError::RateLimited { .. } => "rate_limited",
            ConnectorError::Transient(_) => "transient",
            ConnectorError::Config(_) => "config",
        }
    }

    /// The HTTP status answered to the channel for this class at ingress.
    pub fn ingress_status(&self) -> u16 {
        match self {
            ConnectorError::Unauthorized(_) => 401,
            ConnectorError::Malformed(_) => 400,
            ConnectorError::Unsupported(_) => 200,
            ConnectorError::Rejected { .. } => 422,
            ConnectorError::RateLimited { .. } => 429,
            ConnectorError::Transient(_) => 503,
            ConnectorError::Config(_) => 500,
        }
    }

    /// The machine-readable error code used in JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            ConnectorError::Unauthorized(_) => "bad_signature",
            ConnectorError::Malformed(_) => "malformed",
            ConnectorError::Unsupported(_) => "unsupported",
            ConnectorError::Rejected { .. } => "rejected",
            ConnectorError::RateLimited { .. } => "rate_limited",
            ConnectorError::Transient(_) => "unavailable",
            ConnectorError::Config(_) => "config",
        }
    }

    /// Whether an outbound send should be retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConnectorError::Transient(_) | ConnectorError::RateLimited { .. }
        )
    }
}
