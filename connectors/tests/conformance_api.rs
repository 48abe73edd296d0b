//! The conformance kit over the API channel's generated fixtures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/gen_fixtures/common.rs"]
mod common;
#[path = "../examples/gen_fixtures/api.rs"]
mod gen_api;
mod support;

use proptest::prelude::*;
use switchyard_connectors::api::{ApiConnector, KIND};
use switchyard_connectors::conformance::{
    Expect, OwnedRequest, arbitrary_bodies, check_all, check_decode_total,
};
use switchyard_connectors::signature::switchyard_signature;

fn connector() -> ApiConnector {
    ApiConnector::new(&settings(), &support::context().0).unwrap()
}

fn settings() -> switchyard_core::config::ChannelSettings {
    support::settings(
        gen_api::CHANNEL_ID,
        KIND,
        None,
        &[
            ("secret", gen_api::SECRET),
            ("callback_url", "http://127.0.0.1:9/cb"),
        ],
    )
}

#[test]
fn raw_is_the_masked_body_when_kept_and_absent_otherwise() {
    let keeping = ApiConnector::new(
        &support::keeping_raw(settings(), &["NAME"]),
        &support::context().0,
    )
    .unwrap();
    for fixture in ["text", "card", "image", "location"] {
        let req = support::fixture("api", fixture);
        let kept = switchyard_connectors::conformance::run(&keeping, &req);
        let raw = kept.envelopes()[0].raw.clone();
        // `user.name` is masked by `raw_mask` (case-insensitively); the vouched identities are
        // the envelope's own and stay.
        let expected = support::masked(support::json_body(&req), &["name"]);
        assert_eq!(raw.as_ref(), Some(&expected), "{fixture}");
        if fixture == "text" {
            assert_eq!(expected["user"]["name"], "[masked]");
        }
        let plain = switchyard_connectors::conformance::run(&connector(), &req);
        assert_eq!(plain.envelopes()[0].raw, None, "{fixture}: off by default");
    }
}

#[test]
fn fixtures_are_what_the_generator_writes() {
    assert_eq!(
        support::fixtures("api"),
        support::sorted(gen_api::fixtures()),
        "run `cargo run -p switchyard-connectors --example gen_fixtures api`"
    );
}

#[test]
fn every_fixture_conforms() {
    let outcomes = check_all(&connector(), &support::fixtures("api"));
    for (name, outcome) in outcomes {
        if !outcome.envelopes().is_empty() {
            insta::assert_json_snapshot!(format!("api__{name}"), outcome.envelopes(), {
                "[].id" => "[id]",
                "[].received_at" => "[received_at]",
            });
        }
    }
}

#[test]
fn a_retried_message_keeps_its_dedupe_key() {
    let fixtures = support::fixtures("api");
    let text = fixtures.iter().find(|f| f.name == "text").unwrap();
    assert!(matches!(text.expect, Expect::Envelopes { .. }));
    let c = connector();
    let a = switchyard_connectors::conformance::run(&c, &text.request());
    let b = switchyard_connectors::conformance::run(&c, &text.request());
    assert_eq!(a.envelopes()[0].dedupe_key, "api:shop-app:m-1");
    assert_eq!(a.envelopes()[0].dedupe_key, b.envelopes()[0].dedupe_key);
    assert_ne!(a.envelopes()[0].id, b.envelopes()[0].id);
}

fn resign(req: &mut OwnedRequest) {
    let ts = req.received_at.timestamp();
    let sig = switchyard_signature(gen_api::SECRET.as_bytes(), ts, &req.body);
    req.set_header("x-switchyard-timestamp", &ts.to_string());
    req.set_header("x-switchyard-signature", &sig);
}

static PROP: std::sync::LazyLock<(
    ApiConnector,
    switchyard_connectors::conformance::OwnedRequest,
)> = std::sync::LazyLock::new(|| {
    let template = support::fixtures("api")
        .into_iter()
        .find(|f| f.name == "text")
        .unwrap()
        .request();
    (connector(), template)
});

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn decode_never_panics(body in arbitrary_bodies()) {
        let (c, template) = &*PROP;
        check_decode_total(c, template, &body, None);
        check_decode_total(c, template, &body, Some(&resign));
    }
}

/// A connector that forgets to check its signature.
struct Lax(ApiConnector);

#[async_trait::async_trait]
impl switchyard_connectors::Connector for Lax {
    type Inbound = switchyard_connectors::api::ApiMessage;
    fn channel(&self) -> &switchyard_core::envelope::ChannelRef {
        self.0.channel()
    }
    fn verify(
        &self,
        _req: &switchyard_connectors::InboundRequest<'_>,
    ) -> Result<(), switchyard_connectors::ConnectorError> {
        Ok(())
    }
    fn decode(
        &self,
        req: &switchyard_connectors::InboundRequest<'_>,
    ) -> Result<Self::Inbound, switchyard_connectors::ConnectorError> {
        self.0.decode(req)
    }
    fn normalize(
        &self,
        inbound: Self::Inbound,
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<switchyard_core::envelope::Envelope>, switchyard_connectors::ConnectorError>
    {
        self.0.normalize(inbound, received_at)
    }
    fn accepted(
        &self,
        accepted: &[switchyard_connectors::Accepted],
    ) -> switchyard_connectors::HttpReply {
        self.0.accepted(accepted)
    }
    async fn send(
        &self,
        message: &switchyard_core::envelope::Envelope,
    ) -> Result<switchyard_connectors::SendReceipt, switchyard_connectors::ConnectorError> {
        self.0.send(message).await
    }
}

#[test]
fn the_kit_catches_a_connector_that_skips_its_signature() {
    let fixtures = support::fixtures("api");
    let text = fixtures.iter().find(|f| f.name == "text").unwrap();
    let lax = Lax(connector());
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        switchyard_connectors::conformance::check_tamper(&lax, text)
    }));
    assert!(
        caught.is_err(),
        "check_tamper must fail a connector that does not verify"
    );
    // The honest connector passes the same check.
    switchyard_connectors::conformance::check_tamper(&connector(), text);
}
