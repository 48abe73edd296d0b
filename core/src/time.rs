//! Time source shared by every component, so tests and replays agree on "now".

use chrono::{DateTime, Utc};

/// The current time in UTC.
pub fn now() -> DateTime<Utc> {
    Utc::now()
}
