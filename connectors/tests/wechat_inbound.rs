//! WeChat OA and mini-program inbound: the generated fixtures through the conformance kit,
//! envelope snapshots, and the cases fixtures cannot express (oversized bodies, duplicates,
//! retries re-signed by WeChat, arbitrary bodies).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../examples/gen_wechat_fixtures.rs"]
mod generator;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;
use switchyard_connectors::conformance::{
    self, Expect, Fixture, Outcome, OwnedRequest, arbitrary_bodies, check_all, check_decode_total,
    load_fixtures,
};
use switchyard_connectors::wechat::crypto::{WxCrypto, signature};
use switchyard_connectors::wechat::{WeChatMiniProgramConnector, WeChatOaConnector};
use switchyard_connectors::{Connector, ConnectorContext, ConnectorError, Registry};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::Content;
use switchyard_core::store::Store;
use switchyard_core::store::embedded::EmbeddedStore;

fn fixtures_dir(kind: &str, mode: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
        .join(mode)
}

fn settings(kind: &str, app_id: &str, token: &str, key: Option<&str>) -> ChannelSettings {
    let mut value = json!({
        "id": format!("{kind}-test"),
        "kind": kind,
        "app_id": app_id,
        "app_secret": "test-secret",
        "token": token,
    });
    if let Some(key) = key {
        value["encoding_aes_key"] = json!(key);
    }
    serde_json::from_value(value).unwrap()
}

fn oa(safe: bool) -> WeChatOaConnector {
    let key = safe.then_some(generator::OA_AES_KEY);
    let s = settings("wechat_oa", generator::OA_APP_ID, generator::OA_TOKEN, key);
    WeChatOaConnector::new(&s, &ConnectorContext::default()).unwrap()
}

fn mp(safe: bool) -> WeChatMiniProgramConnector {
    let key = safe.then_some(generator::MP_AES_KEY);
    let s = settings(
        "wechat_miniprogram",
        generator::MP_APP_ID,
        generator::MP_TOKEN,
        key,
    );
    WeChatMiniProgramConnector::new(&s, &ConnectorContext::default()).unwrap()
}

fn assert_current(generated: &[Fixture], dir: &Path) {
    let committed = load_fixtures(dir);
    let mut generated = generated.to_vec();
    generated.sort_by(|a, b| a.name.cmp(&b.name));
    let names = |f: &[Fixture]| f.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&generated),
        "fixtures in {} are stale: run `cargo run -p switchyard-connectors --example \
         gen_wechat_fixtures`",
        dir.display()
    );
    for (c, g) in committed.iter().zip(&generated) {
        assert_eq!(
            c,
            g,
            "fixture {} in {} is stale: regenerate it",
            c.name,
            dir.display()
        );
    }
}

#[test]
fn committed_fixtures_are_what_the_generator_makes() {
    let (oa_plain, oa_safe) = generator::oa_fixtures();
    assert_current(&oa_plain, &fixtures_dir("wechat_oa", "plain"));
    assert_current(&oa_safe, &fixtures_dir("wechat_oa", "safe"));
    let (mp_plain, mp_safe) = generator::miniprogram_fixtures();
    assert_current(&mp_plain, &fixtures_dir("wechat_miniprogram", "plain"));
    assert_current(&mp_safe, &fixtures_dir("wechat_miniprogram", "safe"));
}

fn snapshot_all<C: Connector>(connector: &C, kind: &str, mode: &str) {
    let fixtures = load_fixtures(fixtures_dir(kind, mode));
    let outcomes = check_all(connector, &fixtures);
    let snapshots = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
        .join("snapshots");
    for fixture in &fixtures {
        let Expect::Envelopes { .. } = fixture.expect else {
            continue;
        };
        let envelopes = outcomes[&fixture.name].envelopes();
        insta::with_settings!({
            snapshot_path => snapshots.clone(),
            prepend_module_to_snapshot => false,
            description => fixture.description.clone(),
            omit_expression => true,
        }, {
            insta::assert_json_snapshot!(format!("{mode}__{}", fixture.name), envelopes, {
                "[].id" => "[id]",
                "[].received_at" => "[received_at]",
            });
        });
    }
}

#[test]
fn oa_plain_fixtures() {
    snapshot_all(&oa(false), "wechat_oa", "plain");
}

#[test]
fn oa_safe_fixtures() {
    snapshot_all(&oa(true), "wechat_oa", "safe");
}

#[test]
fn miniprogram_plain_fixtures() {
    snapshot_all(&mp(false), "wechat_miniprogram", "plain");
}

#[test]
fn miniprogram_safe_fixtures() {
    snapshot_all(&mp(true), "wechat_miniprogram", "safe");
}

fn fixture(kind: &str, mode: &str, name: &str) -> Fixture {
    load_fixtures(fixtures_dir(kind, mode))
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no fixture {kind}/{mode}/{name}"))
}

#[test]
fn text_and_identities_are_exact() {
    let out = conformance::run(&oa(true), &fixture("wechat_oa", "safe", "text").request());
    let envelope = &out.envelopes()[0];
    assert_eq!(
        envelope.content,
        Content::Text {
            text: generator::TRICKY_TEXT.into()
        }
    );
    assert_eq!(
        envelope.sender.identities[0].as_str(),
        format!(
            "wechat_openid:{}:{}",
            generator::OA_APP_ID,
            generator::OPENID
        )
    );
    let out = conformance::run(
        &oa(false),
        &fixture("wechat_oa", "plain", "text_unionid").request(),
    );
    let keys: Vec<&str> = out.envelopes()[0]
        .sender
        .identities
        .iter()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            format!(
                "wechat_openid:{}:{}",
                generator::OA_APP_ID,
                generator::OPENID
            )
            .as_str(),
            "wechat_unionid::oUnion-42xyz"
        ]
    );
    let compat = conformance::run(
        &oa(true),
        &fixture("wechat_oa", "safe", "compatible_mode").request(),
    );
    assert_eq!(
        compat.envelopes()[0].content,
        Content::Text {
            text: "真的".into()
        },
        "only the verified ciphertext counts in compatible mode"
    );
}

/// Re-signs a plain request with a new timestamp/nonce, as WeChat's retries may.
fn resign_plain(req: &mut OwnedRequest, token: &str, ts: i64, nonce: &str) {
    let timestamp = ts.to_string();
    req.query
        .insert("signature".into(), signature(&[token, &timestamp, nonce]));
    req.query.insert("timestamp".into(), timestamp);
    req.query.insert("nonce".into(), nonce.into());
    req.received_at = chrono::DateTime::from_timestamp(ts, 0).unwrap();
}

#[tokio::test]
async fn duplicates_share_a_dedupe_key_and_are_dropped_once_claimed() {
    let connector = oa(false);
    let store = EmbeddedStore::new();
    for name in ["text", "event_click", "event_subscribe"] {
        let first = fixture("wechat_oa", "plain", name).request();
        let mut retry = first.clone();
        let ts = first.received_at.timestamp() + 5;
        resign_plain(&mut retry, generator::OA_TOKEN, ts, "retry-nonce");
        let a = conformance::run(&connector, &first);
        let b = conformance::run(&connector, &retry);
        let (a, b) = (&a.envelopes()[0], &b.envelopes()[0]);
        assert_eq!(a.dedupe_key, b.dedupe_key, "{name}");
        assert_ne!(a.id, b.id);
        // What the ingress does with the key: the first claim wins, the retry is a duplicate.
        let key = format!("dedupe:{}", a.dedupe_key);
        let ttl = std::time::Duration::from_secs(60);
        assert_eq!(store.claim_key(&key, &a.id, ttl).await.unwrap(), None);
        assert_eq!(
            store.claim_key(&key, &b.id, ttl).await.unwrap().as_deref(),
            Some(a.id.as_str()),
            "{name}: the retry must be dropped as a duplicate"
        );
    }
    let text = conformance::run(&connector, &fixture("wechat_oa", "plain", "text").request());
    assert_eq!(
        text.envelopes()[0].dedupe_key,
        format!("wechat_oa:{}:24000000000000001", generator::OA_APP_ID)
    );
    let click = conformance::run(
        &connector,
        &fixture("wechat_oa", "plain", "event_click").request(),
    );
    let key = &click.envelopes()[0].dedupe_key;
    assert!(
        key.starts_with(&format!(
            "wechat_oa:{}:{}:",
            generator::OA_APP_ID,
            generator::OPENID
        )) && key.ends_with(":CLICK"),
        "{key}"
    );
}

#[test]
fn two_events_in_one_second_are_not_duplicates() {
    let connector = oa(false);
    let click = fixture("wechat_oa", "plain", "event_click").request();
    let mut view = click.clone();
    let body = String::from_utf8(click.body.clone()).unwrap();
    view.body = body
        .replace("CLICK", "VIEW")
        .replace("V1001_CONTACT_US", "https://x.test/")
        .into_bytes();
    let a = conformance::run(&connector, &click);
    let b = conformance::run(&connector, &view);
    assert_ne!(a.envelopes()[0].dedupe_key, b.envelopes()[0].dedupe_key);
}

#[test]
fn oversized_and_garbage_bodies_are_refused_gracefully() {
    let big = vec![b'<'; 2 * 1024 * 1024];
    let mut xml_big = b"<xml><Content><![CDATA[".to_vec();
    xml_big.resize(2 * 1024 * 1024, b'a');
    for (connector, fixture) in [
        (oa(false), fixture("wechat_oa", "plain", "text")),
        (oa(true), fixture("wechat_oa", "safe", "text")),
    ] {
        for body in [&big, &xml_big] {
            let mut req = fixture.request();
            req.body = body.clone();
            match conformance::run(&connector, &req) {
                Outcome::Error(ConnectorError::Malformed(why)) => {
                    assert!(why.contains("exceeds"), "{why}")
                }
                other => panic!("2 MiB body: {}", other.describe()),
            }
        }
    }
    let mp = mp(false);
    let template = fixture("wechat_miniprogram", "plain", "text_json").request();
    for garbage in [
        &b""[..],
        b"   ",
        b"\x00\x01\x02",
        b"null",
        b"[]",
        b"<",
        b"{}",
    ] {
        let mut req = template.clone();
        req.body = garbage.to_vec();
        assert!(
            matches!(
                conformance::run(&mp, &req),
                Outcome::Error(ConnectorError::Malformed(_))
            ),
            "{garbage:?}"
        );
    }
}

#[test]
fn handshake_edge_cases() {
    let connector = oa(false);
    let mut req = fixture("wechat_oa", "plain", "handshake").request();
    req.query.remove("echostr");
    assert_eq!(connector.handshake(&req.as_inbound()).unwrap(), None);
    let mut stale = fixture("wechat_oa", "plain", "handshake").request();
    stale.received_at += chrono::TimeDelta::hours(1);
    assert!(matches!(
        connector.handshake(&stale.as_inbound()),
        Err(ConnectorError::Unauthorized(_))
    ));
    // A WeCom-style encrypted echostr (msg_signature over it) is understood in safe mode.
    let safe = oa(true);
    let crypto = WxCrypto::new(
        generator::OA_TOKEN,
        generator::OA_AES_KEY,
        generator::OA_APP_ID,
    )
    .unwrap();
    let mut req = fixture("wechat_oa", "safe", "handshake").request();
    let (ts, nonce) = (req.query["timestamp"].clone(), req.query["nonce"].clone());
    let sealed = crypto.seal(b"echo-123", &ts, &nonce);
    req.query.insert("echostr".into(), sealed.encrypt);
    req.query
        .insert("msg_signature".into(), sealed.msg_signature);
    let reply = safe.handshake(&req.as_inbound()).unwrap().unwrap();
    assert_eq!(reply.body.as_ref(), b"echo-123");
    assert_eq!(safe.accepted(&[]).body.as_ref(), b"success");
}

#[test]
fn configuration_is_checked() {
    let ctx = ConnectorContext::default();
    let bad_key = settings("wechat_oa", "wx1", "t", Some("too-short"));
    assert!(matches!(
        WeChatOaConnector::new(&bad_key, &ctx),
        Err(ConnectorError::Config(_))
    ));
    let mut missing: serde_json::Value =
        json!({"id": "x", "kind": "wechat_miniprogram", "app_id": "wx1", "token": "t"});
    assert!(
        WeChatMiniProgramConnector::new(&serde_json::from_value(missing.clone()).unwrap(), &ctx)
            .is_err(),
        "app_secret is required"
    );
    missing["app_secret"] = json!("s");
    missing["unknown_key"] = json!("?");
    let err = Registry::build(&[serde_json::from_value(missing).unwrap()], &ctx)
        .err()
        .unwrap();
    assert!(err.to_string().contains("unknown_key"), "{err}");
    let ok = settings("wechat_oa", "wx1", "t", Some(generator::OA_AES_KEY));
    let registry = Registry::build(&[ok], &ctx).unwrap();
    assert_eq!(registry.kinds(), ["wechat_oa"]);
    let rules = registry.get("wechat_oa-test").unwrap().rules();
    assert_eq!(rules.max_replies_per_inbound, Some(5));
    assert_eq!(
        rules.reply_window,
        Some(std::time::Duration::from_secs(48 * 3600))
    );
}

fn plain_resigner(token: &'static str) -> impl Fn(&mut OwnedRequest) {
    move |req: &mut OwnedRequest| {
        let ts = req.received_at.timestamp();
        resign_plain(req, token, ts, "n");
    }
}

fn safe_resigner(
    token: &'static str,
    key: &'static str,
    app_id: &'static str,
    json: bool,
) -> impl Fn(&mut OwnedRequest) {
    move |req: &mut OwnedRequest| {
        let crypto = WxCrypto::new(token, key, app_id).unwrap();
        let ts = req.received_at.timestamp().to_string();
        let sealed = crypto.seal(&req.body, &ts, "n");
        req.body = if json {
            json!({"ToUserName": "gh", "Encrypt": sealed.encrypt})
                .to_string()
                .into_bytes()
        } else {
            format!(
                "<xml><Encrypt><![CDATA[{}]]></Encrypt></xml>",
                sealed.encrypt
            )
            .into_bytes()
        };
        req.query
            .insert("signature".into(), signature(&[token, &ts, "n"]));
        req.query.insert("timestamp".into(), ts);
        req.query.insert("nonce".into(), "n".into());
        req.query
            .insert("msg_signature".into(), sealed.msg_signature);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn decode_is_total_on_arbitrary_bodies(body in arbitrary_bodies()) {
        let oa_plain = oa(false);
        let t = fixture("wechat_oa", "plain", "text").request();
        check_decode_total(&oa_plain, &t, &body, Some(&plain_resigner(generator::OA_TOKEN)));
        let oa_safe = oa(true);
        let t = fixture("wechat_oa", "safe", "text").request();
        let resign = safe_resigner(generator::OA_TOKEN, generator::OA_AES_KEY, generator::OA_APP_ID, false);
        check_decode_total(&oa_safe, &t, &body, Some(&resign));
        let mp_safe = mp(true);
        let t = fixture("wechat_miniprogram", "safe", "text_json").request();
        let resign = safe_resigner(generator::MP_TOKEN, generator::MP_AES_KEY, generator::MP_APP_ID, true);
        check_decode_total(&mp_safe, &t, &body, Some(&resign));
        check_decode_total(&mp_safe, &t, &body, None);
    }
}

#[test]
fn shared_store_context_builds() {
    // Two replicas built over one store share the token cache key.
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
    let ctx = ConnectorContext::new(store);
    let s = settings("wechat_oa", "wxA", "t", None);
    let a = WeChatOaConnector::new(&s, &ctx).unwrap();
    let b = WeChatOaConnector::new(&s, &ctx).unwrap();
    assert_eq!(a.client().token_key(), b.client().token_key());
    assert_eq!(a.client().token_key(), "wechat:access_token:wxA");
}

/// `settings` keeping raw.
fn keeping_raw(mut s: ChannelSettings) -> ChannelSettings {
    s.options.insert("keep_raw".into(), json!(true));
    s.options.insert("raw_mask".into(), json!(["FromUserName"]));
    s
}

#[test]
fn raw_is_the_decrypted_pushs_fields_masked_never_the_ciphertext() {
    let oa_keeping = WeChatOaConnector::new(
        &keeping_raw(settings(
            "wechat_oa",
            generator::OA_APP_ID,
            generator::OA_TOKEN,
            Some(generator::OA_AES_KEY),
        )),
        &ConnectorContext::default(),
    )
    .unwrap();
    let mp_keeping = WeChatMiniProgramConnector::new(
        &keeping_raw(settings(
            "wechat_miniprogram",
            generator::MP_APP_ID,
            generator::MP_TOKEN,
            None,
        )),
        &ConnectorContext::default(),
    )
    .unwrap();
    let raw_of = |out: Outcome| out.envelopes()[0].raw.clone().expect("raw kept");

    // Safe mode: the decrypted XML, as a JSON object of its elements.
    let raw = raw_of(conformance::run(
        &oa_keeping,
        &fixture("wechat_oa", "safe", "text").request(),
    ));
    assert_eq!(raw["Content"], generator::TRICKY_TEXT);
    assert_eq!(raw["MsgType"], "text");
    assert_eq!(
        raw["FromUserName"], "[masked]",
        "raw_mask, case-insensitively"
    );
    assert!(raw.get("Encrypt").is_none());
    // Compatible mode: the decrypted push, not the plaintext copy beside the ciphertext.
    let raw = raw_of(conformance::run(
        &oa_keeping,
        &fixture("wechat_oa", "safe", "compatible_mode").request(),
    ));
    assert_ne!(raw["Content"], "fake plaintext copy");
    assert!(raw.get("Encrypt").is_none());
    // Plain mode, XML and JSON.
    let raw = raw_of(conformance::run(
        &mp_keeping,
        &fixture("wechat_miniprogram", "plain", "text_xml").request(),
    ));
    assert_eq!(raw["Content"], generator::TRICKY_TEXT);
    assert_eq!(raw["CreateTime"], "1764100021");
    let req = fixture("wechat_miniprogram", "plain", "text_json").request();
    let mut expected: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    expected["FromUserName"] = json!("[masked]");
    assert_eq!(raw_of(conformance::run(&mp_keeping, &req)), expected);

    // Off by default.
    let out = conformance::run(&oa(true), &fixture("wechat_oa", "safe", "text").request());
    assert_eq!(out.envelopes()[0].raw, None);
}
