//! The API channel's message JSON: decode and normalize.
#![no_main]

mod common;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use switchyard_connectors::ConnectorContext;
use switchyard_connectors::api::{ApiConnector, KIND};

static CONNECTOR: LazyLock<Option<ApiConnector>> = LazyLock::new(|| {
    let s = common::settings(KIND, &[("secret", "fuzz-secret-0123456789")]);
    ApiConnector::new(&s, &ConnectorContext::default()).ok()
});

fuzz_target!(|data: &[u8]| {
    if let Some(c) = CONNECTOR.as_ref() {
        common::decode_and_normalize(c, "application/json", data);
    }
});
