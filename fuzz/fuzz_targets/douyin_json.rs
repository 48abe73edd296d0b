//! Douyin webhook JSON: `parse_event` (content as object or JSON string) and normalize.
#![no_main]

mod common;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use switchyard_connectors::ConnectorContext;
use switchyard_connectors::douyin::{DouyinConnector, KIND, parse_event};

static CONNECTOR: LazyLock<Option<DouyinConnector>> = LazyLock::new(|| {
    let s = common::settings(
        KIND,
        &[("client_key", "awfuzz"), ("client_secret", "secret")],
    );
    DouyinConnector::new(&s, &ConnectorContext::default()).ok()
});

fuzz_target!(|data: &[u8]| {
    let _ = parse_event(data);
    if let Some(c) = CONNECTOR.as_ref() {
        common::decode_and_normalize(c, "application/json", data);
    }
});
