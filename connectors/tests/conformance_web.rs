//! The conformance kit over the web channel's generated fixtures (HTTP requests carrying a
//! visitor token; the body is not signed, the token is).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/gen_fixtures/common.rs"]
mod common;
#[path = "../examples/gen_fixtures/web.rs"]
mod gen_web;
mod support;

use proptest::prelude::*;
use switchyard_connectors::conformance::{arbitrary_bodies, check_all, check_decode_total};
use switchyard_connectors::web::{KIND, WebConnector};

fn connector() -> WebConnector {
    WebConnector::new(&settings(), &support::context().0).unwrap()
}

fn settings() -> switchyard_core::config::ChannelSettings {
    support::settings(
        gen_web::CHANNEL_ID,
        KIND,
        None,
        &[("secret", gen_web::SECRET)],
    )
}

#[test]
fn raw_is_the_visitors_masked_frame_when_kept_and_absent_otherwise() {
    let keeping = WebConnector::new(
        &support::keeping_raw(settings(), &[]),
        &support::context().0,
    )
    .unwrap();
    for fixture in ["message", "identify"] {
        let req = support::fixture("web", fixture);
        let kept = switchyard_connectors::conformance::run(&keeping, &req);
        let expected = support::masked(support::json_body(&req), &[]);
        assert_eq!(
            kept.envelopes()[0].raw.as_ref(),
            Some(&expected),
            "{fixture}"
        );
        let plain = switchyard_connectors::conformance::run(&connector(), &req);
        assert_eq!(plain.envelopes()[0].raw, None, "{fixture}: off by default");
    }
    // The identify proof is a credential: never kept in clear.
    let req = support::fixture("web", "identify");
    let kept = switchyard_connectors::conformance::run(&keeping, &req);
    let raw = kept.envelopes()[0].raw.clone().unwrap();
    assert_eq!(raw["user_hash"], "[masked]");
    assert_eq!(raw["user_id"], "user-42");
}

#[test]
fn fixtures_are_what_the_generator_writes() {
    assert_eq!(
        support::fixtures("web"),
        support::sorted(gen_web::fixtures()),
        "run `cargo run -p switchyard-connectors --example gen_fixtures web`"
    );
}

#[test]
fn every_fixture_conforms() {
    let outcomes = check_all(&connector(), &support::fixtures("web"));
    for (name, outcome) in outcomes {
        if !outcome.envelopes().is_empty() {
            insta::assert_json_snapshot!(format!("web__{name}"), outcome.envelopes(), {
                "[].id" => "[id]",
                "[].received_at" => "[received_at]",
            });
        }
    }
}

static PROP: std::sync::LazyLock<(
    WebConnector,
    switchyard_connectors::conformance::OwnedRequest,
)> = std::sync::LazyLock::new(|| {
    let template = support::fixtures("web")
        .into_iter()
        .find(|f| f.name == "message")
        .unwrap()
        .request();
    (connector(), template)
});

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn decode_never_panics(body in arbitrary_bodies()) {
        let (c, template) = &*PROP;
        // The token stays valid, so every body reaches decode and normalize.
        check_decode_total(c, template, &body, None);
    }
}
