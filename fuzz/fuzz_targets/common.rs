//! Shared helpers of the fuzz targets.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use http::{HeaderMap, HeaderValue, Method};
use switchyard_connectors::{Connector, InboundRequest};
use switchyard_core::config::ChannelSettings;

/// Settings with string options.
pub fn settings(kind: &str, options: &[(&str, &str)]) -> ChannelSettings {
    ChannelSettings {
        id: "fuzz".into(),
        kind: kind.into(),
        pool: "default".into(),
        api_base: Some("http://127.0.0.1:9".into()),
        options: options
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Runs `decode` then `normalize` on `body` (no signature check: the decoders themselves are
/// under test), and checks every envelope serializes.
pub fn decode_and_normalize<C: Connector>(connector: &C, content_type: &str, body: &[u8]) {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    let query = HashMap::new();
    let req = InboundRequest {
        method: &Method::POST,
        headers: &headers,
        query: &query,
        body,
        received_at: chrono::DateTime::from_timestamp(1_795_510_800, 0).unwrap_or_default(),
    };
    if let Ok(native) = connector.decode(&req)
        && let Ok(envelopes) = connector.normalize(native, req.received_at)
    {
        for e in envelopes {
            assert!(serde_json::to_vec(&e).is_ok());
            assert!(!e.dedupe_key.is_empty());
        }
    }
}
