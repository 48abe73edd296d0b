//! `Connector::recipient_of`: which channel kinds can start a conversation, and the recipient
//! each builds from a customer's identity keys: exactly the `Sender` its `send` addresses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use switchyard_connectors::{ConnectorContext, Registry};
use switchyard_core::config::ChannelSettings;
use switchyard_core::envelope::Sender;
use switchyard_core::identity::IdentityKey;

const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn channel(id: &str, kind: &str, options: serde_json::Value) -> ChannelSettings {
    let mut value = json!({ "id": id, "kind": kind });
    for (k, v) in options.as_object().unwrap() {
        value[k] = v.clone();
    }
    serde_json::from_value(value).unwrap()
}

fn registry() -> Registry {
    let settings = [
        channel(
            "shop-app",
            "api",
            json!({ "secret": "0123456789abcdef0123" }),
        ),
        channel("web", "web", json!({})),
        channel(
            "wa-main",
            "whatsapp",
            json!({ "app_secret": "s", "verify_token": "v", "phone_number_id": "1065",
                    "access_token": "t" }),
        ),
        channel(
            "tg",
            "telegram",
            json!({ "bot_token": "123:abc", "secret_token": "secret-token" }),
        ),
        channel(
            "line-main",
            "line",
            json!({ "channel_secret": "s", "channel_access_token": "t" }),
        ),
        channel(
            "oa-main",
            "wechat_oa",
            json!({ "app_id": "wxoa", "app_secret": "s", "token": "t" }),
        ),
        channel(
            "mp-main",
            "wechat_miniprogram",
            json!({ "app_id": "wxmp", "app_secret": "s", "token": "t" }),
        ),
        channel(
            "dy",
            "douyin",
            json!({ "client_key": "ck", "client_secret": "cs" }),
        ),
        channel(
            "kf",
            "wecom_kf",
            json!({ "corp_id": "ww1", "corp_secret": "s", "token": "t",
                    "encoding_aes_key": AES_KEY }),
        ),
        channel(
            "kf-default",
            "wecom_kf",
            json!({ "corp_id": "ww1", "corp_secret": "s", "token": "t",
                    "encoding_aes_key": AES_KEY, "open_kfid": "wk-default" }),
        ),
    ];
    Registry::build(&settings, &ConnectorContext::default()).expect("registry")
}

fn k(s: &str) -> IdentityKey {
    s.parse().unwrap()
}

/// Every key a customer known on every channel could have, plus keys of other channels'.
fn everything() -> Vec<IdentityKey> {
    [
        "phone::+4915112345678",
        "app_user:other-app:7",
        "app_user:shop-app:42",
        "web_user:web:u-1",
        "web_visitor:web:9f2c",
        "whatsapp_wa_id::4915112345678",
        "telegram_user_id::not-a-number",
        "telegram_user_id::123456789",
        "line_user_id:Ubot1:U4af4980629",
        "wechat_openid:wxother:oOther",
        "wechat_openid:wxoa:oOa",
        "wechat_openid:wxmp:oMp",
        "wechat_unionid::uXyZ",
        "douyin_open_id:ck:dy-1",
        "wecom_external:ww1:wm-1",
    ]
    .iter()
    .map(|s| k(s))
    .collect()
}

fn sender(external_id: &str, scope: &str, key: &str) -> Sender {
    Sender {
        external_id: external_id.into(),
        scope: scope.into(),
        display_name: None,
        identities: vec![k(key)],
    }
}

#[test]
fn each_kind_that_can_start_a_conversation_addresses_the_customer_by_its_own_key() {
    let registry = registry();
    let all = everything();
    let recipient = |id: &str| registry.get(id).unwrap().recipient_of(&all);
    assert_eq!(
        recipient("shop-app"),
        Some(sender("42", "shop-app", "app_user:shop-app:42")),
        "api: this channel's app user, not another app's"
    );
    assert_eq!(
        recipient("web"),
        Some(sender("9f2c", "web", "web_visitor:web:9f2c")),
        "web: the visitor, whose mailbox the reply waits in"
    );
    assert_eq!(
        recipient("wa-main"),
        Some(sender("4915112345678", "", "whatsapp_wa_id::4915112345678")),
        "whatsapp: the wa_id, not the phone key"
    );
    assert_eq!(
        recipient("tg"),
        Some(sender("123456789", "", "telegram_user_id::123456789")),
        "telegram: a numeric user id (the private chat's id)"
    );
    assert_eq!(
        recipient("line-main"),
        Some(sender(
            "U4af4980629",
            "Ubot1",
            "line_user_id:Ubot1:U4af4980629"
        )),
        "line: the userId"
    );
    assert_eq!(
        recipient("oa-main"),
        Some(sender("oOa", "wxoa", "wechat_openid:wxoa:oOa")),
        "wechat_oa: the OpenID of this AppID"
    );
    assert_eq!(
        recipient("mp-main"),
        Some(sender("oMp", "wxmp", "wechat_openid:wxmp:oMp")),
        "wechat_miniprogram: the OpenID of this AppID"
    );
    assert_eq!(
        recipient("kf-default"),
        Some(sender("wm-1", "ww1", "wecom_external:ww1:wm-1")),
        "wecom_kf with a default kf account"
    );
    for id in [
        "shop-app",
        "web",
        "wa-main",
        "tg",
        "line-main",
        "oa-main",
        "mp-main",
        "kf-default",
    ] {
        assert!(registry.get(id).unwrap().starts_conversations(), "{id}");
    }
}

#[test]
fn douyin_and_wecom_kf_without_a_kf_account_cannot_start_conversations() {
    let registry = registry();
    let all = everything();
    for id in ["dy", "kf"] {
        let channel = registry.get(id).unwrap();
        assert!(!channel.starts_conversations(), "{id}");
        assert_eq!(channel.recipient_of(&all), None, "{id}");
    }
}

#[test]
fn without_a_key_of_the_channel_there_is_no_recipient() {
    let registry = registry();
    let strangers = vec![
        k("phone::+4915112345678"),
        k("app_user:other-app:7"),
        k("wechat_openid:wxother:oOther"),
        k("wechat_unionid::uXyZ"),
        k("telegram_user_id::not-a-number"),
        k("web_user:web:u-1"),
    ];
    for id in [
        "shop-app",
        "web",
        "wa-main",
        "tg",
        "line-main",
        "oa-main",
        "mp-main",
        "kf-default",
    ] {
        assert_eq!(
            registry.get(id).unwrap().recipient_of(&strangers),
            None,
            "{id}"
        );
    }
}

#[test]
fn a_line_customer_of_several_bots_has_no_recipient() {
    let registry = registry();
    let line = registry.get("line-main").unwrap();
    let two = vec![
        k("line_user_id:Ubot1:U4af4980629"),
        k("line_user_id:Ubot2:U4af4980629"),
    ];
    assert_eq!(
        line.recipient_of(&two),
        None,
        "which bot is this channel's?"
    );
}
