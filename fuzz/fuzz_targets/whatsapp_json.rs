//! WhatsApp Cloud API webhook JSON: `parse_notification` and normalize.
#![no_main]

mod common;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use switchyard_connectors::ConnectorContext;
use switchyard_connectors::whatsapp::{KIND, WhatsAppConnector, parse_notification};

static CONNECTOR: LazyLock<Option<WhatsAppConnector>> = LazyLock::new(|| {
    let s = common::settings(
        KIND,
        &[
            ("app_secret", "secret"),
            ("verify_token", "token"),
            ("phone_number_id", "106540352242922"),
            ("access_token", "EAAG-fuzz"),
        ],
    );
    WhatsAppConnector::new(&s, &ConnectorContext::default()).ok()
});

fuzz_target!(|data: &[u8]| {
    let _ = parse_notification(data);
    if let Some(c) = CONNECTOR.as_ref() {
        common::decode_and_normalize(c, "application/json", data);
    }
});
