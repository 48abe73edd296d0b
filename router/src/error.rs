//! Router errors, classified by whether retrying can help.

use switchyard_core::bus::BusError;
use switchyard_core::store::StoreError;

/// Why routing or a command failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The message can never be processed (undecodable, invalid).
    #[error("invalid message: {0}")]
    Invalid(String),
    /// A channel rule refuses the request.
    #[error("{message}")]
    Refused {
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl RouteError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RouteError::Store(StoreError::Unavailable(_)) => true,
            RouteError::Store(_) => false,
            RouteError::Bus(e) => e.is_transient(),
            RouteError::Invalid(_) | RouteError::Refused { .. } => false,
        }
    }
}
