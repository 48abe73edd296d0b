//! Helpers shared by the connector test binaries.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard_connectors::ConnectorContext;
use switchyard_core::config::ChannelSettings;
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

/// Fixtures sorted by name, as `load_fixtures` returns them.
pub fn sorted(
    mut fixtures: Vec<switchyard_connectors::conformance::Fixture>,
) -> Vec<switchyard_connectors::conformance::Fixture> {
    fixtures.sort_by(|a, b| a.name.cmp(&b.name));
    fixtures
}
