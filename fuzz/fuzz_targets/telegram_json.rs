//! Telegram webhook JSON: `parse_update` (64-bit ids, update kinds, message types) and normalize.
#![no_main]

mod common;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use switchyard_connectors::ConnectorContext;
use switchyard_connectors::telegram::{KIND, TelegramConnector, parse_update};

static CONNECTOR: LazyLock<Option<TelegramConnector>> = LazyLock::new(|| {
    let s = common::settings(
        KIND,
        &[
            ("bot_token", "123456789:fuzz-bot-token_secret"),
            ("secret_token", "fuzz-secret"),
        ],
    );
    TelegramConnector::new(&s, &ConnectorContext::default()).ok()
});

fuzz_target!(|data: &[u8]| {
    let _ = parse_update(data);
    if let Some(c) = CONNECTOR.as_ref() {
        common::decode_and_normalize(c, "application/json", data);
    }
});
