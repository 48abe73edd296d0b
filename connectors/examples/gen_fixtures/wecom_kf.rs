//! WeCom kf callback fixtures: encrypted and signed here with the WXBizMsgCrypt scheme
//! (`wechat::crypto`, receive id = CorpID), with fixed "random" prefixes so they reproduce.

#![allow(dead_code)]

use switchyard_connectors::conformance::{Expect, Fixture, Signed};
use switchyard_connectors::wechat::crypto::WxCrypto;

use crate::common::{RECEIVED_AT, envelopes, error, fixture, handshake};

/// The test corp.
pub const CORP_ID: &str = "ww5f3c2a1b0e9d8c7b";
/// Its app secret (for gettoken).
pub const CORP_SECRET: &str = "kf-test-corp-secret-0001";
/// Callback token.
pub const TOKEN: &str = "kfTestToken2026";
/// Callback EncodingAESKey (43 characters).
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// The kf account.
pub const OPEN_KFID: &str = "wkAbCdEf0123456789";
/// The sync token in the notification.
pub const SYNC_TOKEN: &str = "ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR";

fn crypto(receive_id: &str) -> WxCrypto {
    match WxCrypto::new(TOKEN, AES_KEY, receive_id) {
        Ok(c) => c,
        Err(e) => panic!("test key: {e}"),
    }
}

fn timestamp() -> String {
    (RECEIVED_AT - 1).to_string()
}

/// The kf notification as WeCom encrypts it.
pub fn notice_xml(event: &str, msg_type: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType><Event><![CDATA[{event}]]></Event><Token><![CDATA[{SYNC_TOKEN}]]></Token><OpenKfId><![CDATA[{OPEN_KFID}]]></OpenKfId></xml>",
        RECEIVED_AT - 1
    )
}

/// A callback POST carrying `plain` sealed for `receive_id`; the signature is over `signed_encrypt`
/// when given (to forge mismatches), else over the body's own `Encrypt`.
fn callback(
    name: &str,
    description: &str,
    plain: &[u8],
    receive_id: &str,
    seed: u8,
    expect: Expect,
    tamper: Option<u8>,
) -> Fixture {
    let c = crypto(receive_id);
    let ts = timestamp();
    let nonce = format!("{}", 1_320_562_132u32 + u32::from(seed));
    let sealed = c.seal_with_random(plain, &ts, &nonce, [seed; 16]);
    let encrypt = match tamper {
        // Another ciphertext under the original signature.
        Some(other) => c.encrypt_with_random(plain, [other; 16]),
        None => sealed.encrypt.clone(),
    };
    let prefix = format!("<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[");
    let body =
        format!("{prefix}{encrypt}]]></Encrypt><AgentID><![CDATA[1000002]]></AgentID></xml>");
    let signed = if tamper.is_none() && matches!(expect, Expect::Envelopes { .. }) {
        Signed {
            body: true,
            body_range: Some((prefix.len(), prefix.len() + encrypt.len())),
            headers: Vec::new(),
            query: vec!["msg_signature".into(), "timestamp".into(), "nonce".into()],
        }
    } else {
        Signed::default()
    };
    fixture(
        name,
        description,
        "POST",
        &[("content-type", "text/xml")],
        &[
            ("msg_signature", &sealed.msg_signature),
            ("timestamp", &ts),
            ("nonce", &nonce),
        ],
        body.as_bytes(),
        expect,
        signed,
    )
}

fn url_verification(name: &str, description: &str, token: &str, plus_as_space: bool) -> Fixture {
    let c = crypto(CORP_ID);
    let ts = timestamp();
    let nonce = "1372623149".to_owned();
    let plain = "4731508893652781234";
    // The first fixed prefix whose ciphertext holds a `+` (form decoding turns it into a space).
    let sealed = (0u8..=255)
        .map(|seed| c.seal_with_random(plain.as_bytes(), &ts, &nonce, [seed; 16]))
        .find(|s| s.encrypt.contains('+'))
        .unwrap_or_else(|| c.seal_with_random(plain.as_bytes(), &ts, &nonce, [0; 16]));
    let signature = if token == TOKEN {
        sealed.msg_signature.clone()
    } else {
        switchyard_connectors::wechat::crypto::signature(&[token, &ts, &nonce, &sealed.encrypt])
    };
    let echostr = if plus_as_space {
        sealed.encrypt.replace('+', " ")
    } else {
        sealed.encrypt.clone()
    };
    let (expect, signed) = if token == TOKEN {
        (
            handshake(200, plain),
            Signed {
                body: false,
                body_range: None,
                headers: Vec::new(),
                query: vec![
                    "msg_signature".into(),
                    "timestamp".into(),
                    "nonce".into(),
                    "echostr".into(),
                ],
            },
        )
    } else {
        (error("bad_signature"), Signed::default())
    };
    fixture(
        name,
        description,
        "GET",
        &[],
        &[
            ("msg_signature", &signature),
            ("timestamp", &ts),
            ("nonce", &nonce),
            ("echostr", &echostr),
        ],
        b"",
        expect,
        signed,
    )
}

/// Every WeCom kf fixture.
pub fn fixtures() -> Vec<Fixture> {
    let notice = notice_xml("kf_msg_or_event", "event");
    let mut out = vec![
        url_verification(
            "url_verification",
            "GET URL verification: answered with the decrypted echostr",
            TOKEN,
            false,
        ),
        url_verification(
            "url_verification_plus_decoded",
            "The same with `+` in echostr turned into spaces by form decoding",
            TOKEN,
            true,
        ),
        url_verification(
            "url_verification_bad_signature",
            "GET URL verification signed with another token",
            "someOtherToken",
            false,
        ),
        callback(
            "kf_msg_or_event",
            "A kf notification: becomes a notice envelope that `deliver` turns into a pull",
            notice.as_bytes(),
            CORP_ID,
            1,
            envelopes(&["event"]),
            None,
        ),
        callback(
            "other_event",
            "A WeCom event that is not a kf notification: not routed",
            notice_xml("change_external_contact", "event").as_bytes(),
            CORP_ID,
            2,
            error("unsupported"),
            None,
        ),
        callback(
            "app_text_message",
            "A self-built app's text message arriving at the kf URL: not routed",
            format!(
                "<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content><MsgId>1234567890123456</MsgId><AgentID>1000002</AgentID></xml>",
                RECEIVED_AT - 1
            )
            .as_bytes(),
            CORP_ID,
            3,
            error("unsupported"),
            None,
        ),
        callback(
            "wrong_receiver",
            "Correctly signed, but encrypted for another CorpID",
            notice.as_bytes(),
            "wwSomeOtherCorp00",
            4,
            error("bad_signature"),
            None,
        ),
        callback(
            "decrypted_not_xml",
            "Correctly signed and encrypted, but the plaintext is not the event XML",
            b"this is not xml",
            CORP_ID,
            5,
            error("malformed"),
            None,
        ),
        callback(
            "decrypted_invalid_utf8",
            "Correctly signed and encrypted, but the plaintext is not UTF-8",
            &[0xff, 0xfe, b'<', b'x', b'm', b'l', b'>', 0xc3, 0x28],
            CORP_ID,
            6,
            error("malformed"),
            None,
        ),
        callback(
            "tampered_encrypt",
            "Another ciphertext under the original msg_signature",
            notice.as_bytes(),
            CORP_ID,
            7,
            error("bad_signature"),
            Some(8),
        ),
    ];
    let mut bad_sig = out[3].clone();
    bad_sig.name = "bad_signature".into();
    bad_sig.description = "msg_signature computed with another token".into();
    let encrypt = {
        let body = bad_sig.body.clone().unwrap_or_default();
        let start = body.find("<Encrypt><![CDATA[").map_or(0, |i| i + 18);
        let end = body[start..].find("]]>").map_or(start, |i| start + i);
        body[start..end].to_owned()
    };
    let ts = bad_sig.query.get("timestamp").cloned().unwrap_or_default();
    let nonce = bad_sig.query.get("nonce").cloned().unwrap_or_default();
    bad_sig.query.insert(
        "msg_signature".into(),
        switchyard_connectors::wechat::crypto::signature(&["anotherToken", &ts, &nonce, &encrypt]),
    );
    bad_sig.expect = error("bad_signature");
    bad_sig.signed = Signed::default();
    let mut missing = out[3].clone();
    missing.name = "missing_query".into();
    missing.description = "A callback without msg_signature".into();
    missing.query.remove("msg_signature");
    missing.expect = error("bad_signature");
    missing.signed = Signed::default();
    let mut not_xml = out[3].clone();
    not_xml.name = "body_not_xml".into();
    not_xml.description = "A callback whose body is not the encrypted XML".into();
    not_xml.set_body(b"hello");
    not_xml.expect = error("bad_signature");
    not_xml.signed = Signed::default();
    out.extend([bad_sig, missing, not_xml]);
    out
}
