//! Helpers shared by the connector test binaries.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use switchyard_connectors::conformance::CollectSink;
use switchyard_connectors::{Accepted, ConnectorContext, ConnectorError, EnvelopeSink};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::Envelope;
use switchyard_core::store::Store;
use switchyard_core::store::embedded::EmbeddedStore;

/// Channel settings with string options.
pub fn settings(
    id: &str,
    kind: &str,
    api_base: Option<String>,
    options: &[(&str, &str)],
) -> ChannelSettings {
    ChannelSettings {
        id: id.to_owned(),
        kind: kind.to_owned(),
        pool: "default".to_owned(),
        api_base,
        options: options
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// A context over a fresh in-process store (returned too, to look inside).
pub fn context() -> (ConnectorContext, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
    (ConnectorContext::new(Arc::clone(&store)), store)
}

/// The fixture directory of a channel.
pub fn fixture_dir(channel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(channel)
}

/// A channel's fixtures, as stored (sorted by name).
pub fn fixtures(channel: &str) -> Vec<switchyard_connectors::conformance::Fixture> {
    switchyard_connectors::conformance::load_fixtures(fixture_dir(channel))
}

/// The request of a channel's fixture `name`.
pub fn fixture(channel: &str, name: &str) -> switchyard_connectors::conformance::OwnedRequest {
    fixtures(channel)
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no {channel} fixture {name}"))
        .request()
}

/// Asserts that the stored fixtures of `channel` are what its generator writes now.
pub fn assert_fixtures_fresh(
    channel: &str,
    generated: Vec<switchyard_connectors::conformance::Fixture>,
) {
    assert_eq!(
        fixtures(channel),
        sorted(generated),
        "run `cargo run -p switchyard-connectors --example gen_fixtures {channel}`"
    );
}

/// Fixtures sorted by name, as `load_fixtures` returns them.
pub fn sorted(
    mut fixtures: Vec<switchyard_connectors::conformance::Fixture>,
) -> Vec<switchyard_connectors::conformance::Fixture> {
    fixtures.sort_by(|a, b| a.name.cmp(&b.name));
    fixtures
}

/// `settings` with `keep_raw = true` and `raw_mask = mask`.
pub fn keeping_raw(mut settings: ChannelSettings, mask: &[&str]) -> ChannelSettings {
    settings
        .options
        .insert("keep_raw".to_owned(), serde_json::Value::Bool(true));
    settings
        .options
        .insert("raw_mask".to_owned(), serde_json::json!(mask));
    settings
}

/// `value` masked the way a channel with `raw_mask = mask` masks what it keeps.
pub fn masked(mut value: serde_json::Value, mask: &[&str]) -> serde_json::Value {
    switchyard_connectors::RawPolicy::keeping(mask).mask(&mut value);
    value
}

/// The body of a request, as JSON.
pub fn json_body(req: &switchyard_connectors::conformance::OwnedRequest) -> serde_json::Value {
    serde_json::from_slice(&req.body).expect("a JSON body")
}

/// A sink that publishes like the ingress ([`CollectSink`]) and records the delivery failures
/// reported to it (`message.failed`); it can be told to fail those reports as if the bus were
/// down.
#[derive(Default)]
pub struct RecordingSink {
    inner: CollectSink,
    failures: Mutex<Vec<(Envelope, String, String)>>,
    reports_fail: AtomicBool,
}

impl RecordingSink {
    /// The reported failures, in order: (the envelope, code, reason).
    pub fn failures(&self) -> Vec<(Envelope, String, String)> {
        self.failures.lock().unwrap().clone()
    }

    /// Everything published (first copies only), in order.
    pub fn published(&self) -> Vec<Envelope> {
        self.inner.published()
    }

    /// Makes failure reports fail (`Transient`, the bus is down) or succeed again.
    pub fn fail_reports(&self, fail: bool) {
        self.reports_fail.store(fail, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl EnvelopeSink for RecordingSink {
    async fn publish(&self, envelopes: Vec<Envelope>) -> Result<Vec<Accepted>, ConnectorError> {
        self.inner.publish(envelopes).await
    }

    async fn delivery_failed(
        &self,
        message: &Envelope,
        code: &str,
        reason: &str,
    ) -> Result<(), ConnectorError> {
        if self.reports_fail.load(Ordering::SeqCst) {
            return Err(ConnectorError::Transient("bus unavailable (test)".into()));
        }
        self.failures
            .lock()
            .unwrap()
            .push((message.clone(), code.to_owned(), reason.to_owned()));
        Ok(())
    }
}
