//! LINE webhook JSON: `parse_webhook` (destination + events, read leniently) and normalize.
#![no_main]

mod common;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use switchyard_connectors::ConnectorContext;
use switchyard_connectors::line::{KIND, LineConnector, parse_webhook};

static CONNECTOR: LazyLock<Option<LineConnector>> = LazyLock::new(|| {
    let s = common::settings(
        KIND,
        &[
            ("channel_secret", "fuzz-channel-secret"),
            ("channel_access_token", "fuzz-channel-access-token"),
        ],
    );
    LineConnector::new(&s, &ConnectorContext::default()).ok()
});

fuzz_target!(|data: &[u8]| {
    let _ = parse_webhook(data);
    if let Some(c) = CONNECTOR.as_ref() {
        common::decode_and_normalize(c, "application/json", data);
    }
});
