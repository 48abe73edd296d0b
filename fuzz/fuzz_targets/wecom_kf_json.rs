//! WeCom kf `sync_msg` answers: parse the page and normalize its messages.
#![no_main]

mod common;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use switchyard_connectors::ConnectorContext;
use switchyard_connectors::wecom_kf::{KIND, WecomKfConnector, parse_sync_page};

static CONNECTOR: LazyLock<Option<WecomKfConnector>> = LazyLock::new(|| {
    let s = common::settings(
        KIND,
        &[
            ("corp_id", "wwfuzz"),
            ("corp_secret", "secret"),
            ("token", "token"),
            (
                "encoding_aes_key",
                "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            ),
        ],
    );
    WecomKfConnector::new(&s, &ConnectorContext::default()).ok()
});

fuzz_target!(|data: &[u8]| {
    if let (Ok(page), Some(c)) = (parse_sync_page(data), CONNECTOR.as_ref())
        && let Ok(envelopes) = c.normalize_page(&page.msg_list, chrono::Utc::now())
    {
        for e in envelopes {
            assert!(serde_json::to_vec(&e).is_ok());
        }
    }
});
