//! Generates the WeChat connector fixtures (`connectors/tests/fixtures/wechat_oa/{plain,safe}`
//! and `connectors/tests/fixtures/wechat_miniprogram/{plain,safe}`): every signature and
//! ciphertext is computed here, never pasted. Two public vectors are reproduced rather than
//! computed, and checked against our implementation: the mini-program message-push handshake
//! and JSON push examples of developers.weixin.qq.com, and wechatpy's `test_crypto.py`
//! encrypted message.
//!
//! ```sh
//! cargo run -p switchyard-connectors --example gen_wechat_fixtures
//! ```
//!
//! Output is deterministic (the 16 "random" bytes of each ciphertext are derived from the
//! fixture name), so `tests/wechat_fixtures.rs` can check the committed files are current.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use sha1::{Digest, Sha1};
use switchyard_connectors::conformance::{Expect, Fixture, Signed, write_fixtures};
use switchyard_connectors::wechat::crypto::{WxCrypto, signature};

/// The Official Account used by the OA fixtures (wechatpy's test account, so its published
/// ciphertext decrypts with it).
pub const OA_APP_ID: &str = "wx49f0ab532d5d035a";
/// OA token.
pub const OA_TOKEN: &str = "123456";
/// OA EncodingAESKey (its 43rd character has non-zero trailing bits).
pub const OA_AES_KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
/// OA original id.
pub const OA_GH: &str = "gh_3f1a2b3c4d5e";

/// The mini-program used by the mini-program fixtures (token of the official examples).
pub const MP_APP_ID: &str = "wx7d3c2b1a0f9e8d7c";
/// Mini-program token.
pub const MP_TOKEN: &str = "AAAAA";
/// Mini-program EncodingAESKey.
pub const MP_AES_KEY: &str = "Zm9vYmFyYmF6cXV4MDEyMzQ1Njc4OWFiY2RlZmdoaWp";
/// Mini-program original id.
pub const MP_GH: &str = "gh_97417a04a28d";

/// A key nobody configured (wrong-key fixtures).
const OTHER_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// Base timestamp of generated fixtures: 2025-11-24T16:00:00Z.
const T0: i64 = 1_764_000_000;

/// A user OpenID.
pub const OPENID: &str = "oAbC-dEf_123456789xyz";

struct Account {
    app_id: &'static str,
    token: &'static str,
    key: &'static str,
    gh: &'static str,
}

const OA: Account = Account {
    app_id: OA_APP_ID,
    token: OA_TOKEN,
    key: OA_AES_KEY,
    gh: OA_GH,
};

const MP: Account = Account {
    app_id: MP_APP_ID,
    token: MP_TOKEN,
    key: MP_AES_KEY,
    gh: MP_GH,
};

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Xml,
    Json,
}

/// A field of a push: CDATA text, a bare value (numbers), or raw XML (negative fixtures).
enum V<'a> {
    S(&'a str),
    N(i64),
    U(u64),
    F(&'a str),
}

fn cdata(s: &str) -> String {
    // A literal `]]>` is split over two CDATA sections, as WeChat's XML writers do.
    format!("<![CDATA[{}]]>", s.replace("]]>", "]]]]><![CDATA[>"))
}

fn render(format: Format, fields: &[(&str, V<'_>)]) -> String {
    match format {
        Format::Xml => {
            let mut out = String::from("<xml>");
            for (name, value) in fields {
                let text = match value {
                    V::S(s) => cdata(s),
                    V::N(n) => n.to_string(),
                    V::U(n) => n.to_string(),
                    V::F(f) => (*f).to_owned(),
                };
                out.push_str(&format!("<{name}>{text}</{name}>"));
            }
            out.push_str("</xml>");
            out
        }
        Format::Json => {
            let mut map = serde_json::Map::new();
            for (name, value) in fields {
                let v = match value {
                    V::S(s) => serde_json::Value::String((*s).to_owned()),
                    V::N(n) => serde_json::Value::from(*n),
                    V::U(n) => serde_json::Value::from(*n),
                    V::F(f) => serde_json::from_str(f).unwrap_or(serde_json::Value::Null),
                };
                map.insert((*name).to_owned(), v);
            }
            serde_json::Value::Object(map).to_string()
        }
    }
}

fn at(ts: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(ts, 0).unwrap_or_default()
}

fn nonce_for(name: &str) -> String {
    let digest = Sha1::digest(name.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]).to_string()
}

fn random_for(name: &str) -> [u8; 16] {
    let digest = Sha1::digest(format!("random:{name}").as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

fn content_type(format: Format) -> &'static str {
    match format {
        Format::Xml => "text/xml",
        Format::Json => "application/json",
    }
}

fn envelopes(types: &[&str]) -> Expect {
    Expect::Envelopes {
        content_types: types.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn error(class: &str) -> Expect {
    Expect::Error {
        class: class.to_owned(),
    }
}

fn signed_query(keys: &[&str]) -> Signed {
    Signed {
        body: false,
        body_range: None,
        headers: Vec::new(),
        query: keys.iter().map(|k| (*k).to_owned()).collect(),
    }
}

struct Gen {
    next_ts: i64,
}

impl Gen {
    fn ts(&mut self) -> i64 {
        self.next_ts += 7;
        self.next_ts
    }

    /// A plain-mode POST (`signature` over token, timestamp, nonce; the body is not signed).
    fn plain(
        &mut self,
        acct: &Account,
        name: &str,
        description: &str,
        format: Format,
        body: String,
        expect: Expect,
    ) -> Fixture {
        let ts = self.ts();
        let timestamp = ts.to_string();
        let nonce = nonce_for(name);
        let query = BTreeMap::from([
            (
                "signature".to_owned(),
                signature(&[acct.token, &timestamp, &nonce]),
            ),
            ("timestamp".to_owned(), timestamp),
            ("nonce".to_owned(), nonce),
            ("openid".to_owned(), OPENID.to_owned()),
        ]);
        Fixture {
            name: name.to_owned(),
            description: description.to_owned(),
            method: "POST".into(),
            headers: BTreeMap::from([("content-type".to_owned(), content_type(format).to_owned())]),
            query,
            body: Some(body),
            body_base64: None,
            received_at: at(ts + 1),
            expect,
            signed: signed_query(&["signature", "timestamp", "nonce"]),
        }
    }

    /// A safe-mode POST: `inner` encrypted under `key` for `receive_id`, wrapped in the outer
    /// XML/JSON, with `signature` and `msg_signature`.
    #[allow(clippy::too_many_arguments)]
    fn safe_with(
        &mut self,
        acct: &Account,
        name: &str,
        description: &str,
        format: Format,
        inner: &str,
        key: &str,
        receive_id: &str,
        plaintext_copy: Option<&[(&str, V<'_>)]>,
        expect: Expect,
    ) -> Fixture {
        let ts = self.ts();
        let timestamp = ts.to_string();
        let nonce = nonce_for(name);
        let crypto = match WxCrypto::new(acct.token, key, receive_id) {
            Ok(c) => c,
            Err(e) => panic!("fixture key: {e}"),
        };
        let sealed =
            crypto.seal_with_random(inner.as_bytes(), &timestamp, &nonce, random_for(name));
        let mut outer: Vec<(&str, V<'_>)> = vec![("ToUserName", V::S(acct.gh))];
        if let Some(copy) = plaintext_copy {
            for (k, v) in copy {
                outer.push((
                    k,
                    match v {
                        V::S(s) => V::S(s),
                        V::N(n) => V::N(*n),
                        V::U(n) => V::U(*n),
                        V::F(f) => V::F(f),
                    },
                ));
            }
        }
        outer.push(("Encrypt", V::S(&sealed.encrypt)));
        let body = render(format, &outer);
        let start = body.find(&sealed.encrypt).unwrap_or(0);
        let query = BTreeMap::from([
            (
                "signature".to_owned(),
                signature(&[acct.token, &timestamp, &nonce]),
            ),
            ("timestamp".to_owned(), timestamp),
            ("nonce".to_owned(), nonce),
            ("openid".to_owned(), OPENID.to_owned()),
            ("encrypt_type".to_owned(), "aes".to_owned()),
            ("msg_signature".to_owned(), sealed.msg_signature.clone()),
        ]);
        Fixture {
            name: name.to_owned(),
            description: description.to_owned(),
            method: "POST".into(),
            headers: BTreeMap::from([("content-type".to_owned(), content_type(format).to_owned())]),
            query,
            body: Some(body),
            body_base64: None,
            received_at: at(ts + 1),
            expect,
            signed: Signed {
                body: true,
                body_range: Some((start, start + sealed.encrypt.len())),
                headers: Vec::new(),
                query: [
                    "signature",
                    "timestamp",
                    "nonce",
                    "encrypt_type",
                    "msg_signature",
                ]
                .map(str::to_owned)
                .to_vec(),
            },
        }
    }

    fn safe(
        &mut self,
        acct: &Account,
        name: &str,
        description: &str,
        format: Format,
        inner: &str,
        expect: Expect,
    ) -> Fixture {
        self.safe_with(
            acct,
            name,
            description,
            format,
            inner,
            acct.key,
            acct.app_id,
            None,
            expect,
        )
    }

    fn handshake(&mut self, acct: &Account, name: &str, description: &str, ok: bool) -> Fixture {
        let ts = self.ts();
        let timestamp = ts.to_string();
        let nonce = nonce_for(name);
        let token = if ok { acct.token } else { "not-the-token" };
        let echostr = format!("{}", 4_375_120_948_345_356_249u64 + ts as u64);
        Fixture {
            name: name.to_owned(),
            description: description.to_owned(),
            method: "GET".into(),
            headers: BTreeMap::new(),
            query: BTreeMap::from([
                (
                    "signature".to_owned(),
                    signature(&[token, &timestamp, &nonce]),
                ),
                ("timestamp".to_owned(), timestamp),
                ("nonce".to_owned(), nonce),
                ("echostr".to_owned(), echostr.clone()),
            ]),
            body: None,
            body_base64: None,
            received_at: at(ts + 1),
            expect: if ok {
                Expect::Handshake {
                    status: 200,
                    body: echostr,
                }
            } else {
                error("bad_signature")
            },
            signed: signed_query(&["signature", "timestamp", "nonce"]),
        }
    }
}

fn head<'a>(acct: &'a Account, ts: i64, msg_type: &'a str) -> Vec<(&'a str, V<'a>)> {
    vec![
        ("ToUserName", V::S(acct.gh)),
        ("FromUserName", V::S(OPENID)),
        ("CreateTime", V::N(ts)),
        ("MsgType", V::S(msg_type)),
    ]
}

fn with<'a>(
    mut fields: Vec<(&'a str, V<'a>)>,
    more: Vec<(&'a str, V<'a>)>,
) -> Vec<(&'a str, V<'a>)> {
    fields.extend(more);
    fields
}

/// A text a user might type: Chinese, emoji (incl. ZWJ and skin tone), a literal `]]>`,
/// markup-looking text, surrounding spaces and a newline.
pub const TRICKY_TEXT: &str = "  你好，世界！👩‍💻👍🏽 a]]>b <b>&amp;</b> <!DOCTYPE x>\n第二行  ";

const XXE: &str = r#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[oX]]></FromUserName><CreateTime>1764000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>&xxe;</Content><MsgId>1</MsgId></xml>"#;

const LAUGHS: &str = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><xml><MsgType>text</MsgType><FromUserName>oX</FromUserName><CreateTime>1764000000</CreateTime><Content>&lol3;</Content><MsgId>1</MsgId></xml>"#;

/// The Official Account fixtures: (plain channel, safe channel).
pub fn oa_fixtures() -> (Vec<Fixture>, Vec<Fixture>) {
    let mut g = Gen { next_ts: T0 };
    let a = &OA;
    let x = Format::Xml;
    let mut plain = vec![
        g.handshake(
            a,
            "handshake",
            "URL verification: echostr answered verbatim",
            true,
        ),
        g.handshake(
            a,
            "handshake_bad_signature",
            "URL verification signed with another token",
            false,
        ),
    ];
    let msg = |g: &mut Gen,
               name: &str,
               desc: &str,
               msg_type: &str,
               more: Vec<(&str, V<'_>)>,
               expect: Expect| {
        let ts = g.next_ts + 7;
        let body = render(x, &with(head(a, ts, msg_type), more));
        g.plain(a, name, desc, x, body, expect)
    };
    let id = |n: u64| V::U(24_000_000_000_000_000 + n);
    let list = [
        (
            "text",
            "text with Chinese, emoji, a literal ]]> split over CDATA sections and spaces",
            "text",
            vec![("Content", V::S(TRICKY_TEXT)), ("MsgId", id(1))],
            envelopes(&["text"]),
        ),
        (
            "text_unionid",
            "text carrying a UnionId: adds the strong wechat_unionid key",
            "text",
            vec![
                ("Content", V::S("查一下订单")),
                ("MsgId", id(2)),
                ("UnionId", V::S("oUnion-42xyz")),
            ],
            envelopes(&["text"]),
        ),
        (
            "text_max_msgid",
            "a MsgId above 2^53 stays exact",
            "text",
            vec![("Content", V::S("hi")), ("MsgId", V::U(u64::MAX))],
            envelopes(&["text"]),
        ),
        (
            "image",
            "image with PicUrl and MediaId",
            "image",
            vec![
                ("PicUrl", V::S("http://mmbiz.qpic.cn/mmbiz_jpg/abc/0")),
                ("MediaId", V::S("media-img-1")),
                ("MsgId", id(3)),
            ],
            envelopes(&["image"]),
        ),
        (
            "voice",
            "voice with speech recognition",
            "voice",
            vec![
                ("MediaId", V::S("media-voice-1")),
                ("Format", V::S("amr")),
                ("Recognition", V::S("我要退货")),
                ("MsgId", id(4)),
            ],
            envelopes(&["audio"]),
        ),
        (
            "voice_no_recognition",
            "voice without recognition",
            "voice",
            vec![
                ("MediaId", V::S("media-voice-2")),
                ("Format", V::S("speex")),
                ("MsgId", id(5)),
            ],
            envelopes(&["audio"]),
        ),
        (
            "video",
            "video with thumbnail",
            "video",
            vec![
                ("MediaId", V::S("media-video-1")),
                ("ThumbMediaId", V::S("thumb-1")),
                ("MsgId", id(6)),
            ],
            envelopes(&["video"]),
        ),
        (
            "shortvideo",
            "short video",
            "shortvideo",
            vec![
                ("MediaId", V::S("media-sv-1")),
                ("ThumbMediaId", V::S("thumb-2")),
                ("MsgId", id(7)),
            ],
            envelopes(&["video"]),
        ),
        (
            "location",
            "location with label",
            "location",
            vec![
                ("Location_X", V::F("23.134521")),
                ("Location_Y", V::F("113.358803")),
                ("Scale", V::N(20)),
                ("Label", V::S("广州市海珠区")),
                ("MsgId", id(8)),
            ],
            envelopes(&["location"]),
        ),
        (
            "link",
            "shared link",
            "link",
            vec![
                ("Title", V::S("公众号文章")),
                ("Description", V::S("描述")),
                ("Url", V::S("https://mp.weixin.qq.com/s/abc")),
                ("MsgId", id(9)),
            ],
            envelopes(&["link"]),
        ),
        (
            "event_subscribe",
            "follow through a parametric QR code",
            "event",
            vec![
                ("Event", V::S("subscribe")),
                ("EventKey", V::S("qrscene_123123")),
                ("Ticket", V::S("TICKET-1")),
            ],
            envelopes(&["event"]),
        ),
        (
            "event_subscribe_plain",
            "follow from search (no EventKey)",
            "event",
            vec![("Event", V::S("subscribe"))],
            envelopes(&["event"]),
        ),
        (
            "event_unsubscribe",
            "unfollow",
            "event",
            vec![("Event", V::S("unsubscribe")), ("EventKey", V::S(""))],
            envelopes(&["event"]),
        ),
        (
            "event_scan",
            "follower scans a parametric QR code",
            "event",
            vec![
                ("Event", V::S("SCAN")),
                ("EventKey", V::S("123123")),
                ("Ticket", V::S("TICKET-2")),
            ],
            envelopes(&["event"]),
        ),
        (
            "event_click",
            "menu click",
            "event",
            vec![
                ("Event", V::S("CLICK")),
                ("EventKey", V::S("V1001_CONTACT_US")),
            ],
            envelopes(&["event"]),
        ),
        (
            "event_view",
            "menu link",
            "event",
            vec![
                ("Event", V::S("VIEW")),
                ("EventKey", V::S("https://shop.example.com/")),
                ("MenuId", V::S("208379533")),
            ],
            envelopes(&["event"]),
        ),
        (
            "event_location",
            "reported location",
            "event",
            vec![
                ("Event", V::S("LOCATION")),
                ("Latitude", V::F("23.137466")),
                ("Longitude", V::F("113.352425")),
                ("Precision", V::F("119.385040")),
            ],
            envelopes(&["event"]),
        ),
        (
            "unknown_type",
            "a MsgType we do not know: 200 success, not routed",
            "hologram",
            vec![("MsgId", id(10))],
            error("unsupported"),
        ),
        (
            "unknown_event",
            "a system event (template send finished): 200 success, not routed",
            "event",
            vec![
                ("Event", V::S("TEMPLATESENDJOBFINISH")),
                ("MsgID", V::N(200163836)),
                ("Status", V::S("success")),
            ],
            error("unsupported"),
        ),
        (
            "missing_msgtype",
            "no MsgType under a valid signature",
            "",
            vec![("Content", V::S("x"))],
            error("malformed"),
        ),
        (
            "location_not_a_number",
            "Location_X is not a number",
            "location",
            vec![
                ("Location_X", V::S("north")),
                ("Location_Y", V::F("1.0")),
                ("MsgId", id(11)),
            ],
            error("malformed"),
        ),
    ];
    for (name, desc, msg_type, more, expect) in list {
        let f = if msg_type.is_empty() {
            let ts = g.next_ts + 7;
            let body = render(
                x,
                &with(
                    vec![
                        ("ToUserName", V::S(a.gh)),
                        ("FromUserName", V::S(OPENID)),
                        ("CreateTime", V::N(ts)),
                    ],
                    more,
                ),
            );
            g.plain(a, name, desc, x, body, expect)
        } else {
            msg(&mut g, name, desc, msg_type, more, expect)
        };
        plain.push(f);
    }
    let base = g.next_ts + 7;
    let text = render(
        x,
        &with(
            head(a, base, "text"),
            vec![("Content", V::S("hello")), ("MsgId", id(20))],
        ),
    );
    let mut bad = g.plain(
        a,
        "bad_signature",
        "signature computed with another token",
        x,
        text.clone(),
        error("bad_signature"),
    );
    let ts = &bad.query["timestamp"];
    let nonce = &bad.query["nonce"];
    bad.query
        .insert("signature".into(), signature(&["wrong-token", ts, nonce]));
    plain.push(bad);
    let mut stale = g.plain(
        a,
        "stale_timestamp",
        "validly signed but 10 minutes old (replay)",
        x,
        text.clone(),
        error("bad_signature"),
    );
    stale.received_at += chrono::TimeDelta::minutes(10);
    plain.push(stale);
    plain.push(g.plain(
        a,
        "malformed_xml",
        "broken XML under a valid signature",
        x,
        "<xml><ToUserName><![CDATA[gh]]></ToUserName><MsgType>text</Msg".into(),
        error("malformed"),
    ));
    plain.push(g.plain(
        a,
        "json_garbage",
        "not XML under a valid signature",
        x,
        "{\"MsgType\": [}".into(),
        error("malformed"),
    ));
    plain.push(g.plain(
        a,
        "xxe",
        "external entity (XXE) under a valid signature",
        x,
        XXE.into(),
        error("malformed"),
    ));
    plain.push(g.plain(
        a,
        "billion_laughs",
        "entity expansion bomb under a valid signature",
        x,
        LAUGHS.into(),
        error("malformed"),
    ));
    let mut utf8 = g.plain(
        a,
        "invalid_utf8",
        "body is not UTF-8",
        x,
        String::new(),
        error("malformed"),
    );
    utf8.set_body(b"<xml><MsgType>text</MsgType><Content>\xff\xfe\xc3</Content></xml>");
    plain.push(utf8);
    let mut aes_on_plain = g.plain(
        a,
        "safe_push_to_plain_channel",
        "encrypt_type=aes but the channel has no key",
        x,
        render(x, &[("ToUserName", V::S(a.gh)), ("Encrypt", V::S("AAAA"))]),
        error("bad_signature"),
    );
    aes_on_plain
        .query
        .insert("encrypt_type".into(), "aes".into());
    aes_on_plain
        .query
        .insert("msg_signature".into(), "0".repeat(40));
    plain.push(aes_on_plain);

    // ----- safe mode
    let mut safe = vec![g.handshake(
        a,
        "handshake",
        "URL verification in safe mode: echostr is still sent and answered in clear",
        true,
    )];
    let inner = |ts: i64, more: Vec<(&str, V<'_>)>, t: &str| render(x, &with(head(a, ts, t), more));
    let ts = g.next_ts + 7;
    safe.push(g.safe(
        a,
        "text",
        "encrypted text (Chinese, emoji, split CDATA)",
        x,
        &inner(
            ts,
            vec![("Content", V::S(TRICKY_TEXT)), ("MsgId", id(30))],
            "text",
        ),
        envelopes(&["text"]),
    ));
    let ts = g.next_ts + 7;
    safe.push(g.safe(
        a,
        "image",
        "encrypted image",
        x,
        &inner(
            ts,
            vec![
                ("PicUrl", V::S("http://mmbiz.qpic.cn/x/0")),
                ("MediaId", V::S("m-31")),
                ("MsgId", id(31)),
            ],
            "image",
        ),
        envelopes(&["image"]),
    ));
    let ts = g.next_ts + 7;
    safe.push(g.safe(
        a,
        "event_subscribe",
        "encrypted follow event",
        x,
        &inner(
            ts,
            vec![
                ("Event", V::S("subscribe")),
                ("EventKey", V::S("qrscene_7")),
            ],
            "event",
        ),
        envelopes(&["event"]),
    ));
    for len in [1usize, 12, 13, 27, 44, 45] {
        // Message lengths whose PKCS#7 pad is 17..=32 bytes and 1..=16 bytes.
        let ts = g.next_ts + 7;
        let content = "x".repeat(len);
        let name = format!("text_len_{len}");
        safe.push(g.safe(
            a,
            &name,
            "encrypted text of a length chosen for its padding",
            x,
            &inner(
                ts,
                vec![("Content", V::S(&content)), ("MsgId", id(40 + len as u64))],
                "text",
            ),
            envelopes(&["text"]),
        ));
    }
    let ts = g.next_ts + 7;
    let real = inner(
        ts,
        vec![("Content", V::S("真的")), ("MsgId", id(32))],
        "text",
    );
    let fake_copy: Vec<(&str, V<'_>)> = vec![
        ("FromUserName", V::S("oAttacker")),
        ("MsgType", V::S("text")),
        ("Content", V::S("fake plaintext copy")),
    ];
    safe.push(g.safe_with(
        a,
        "compatible_mode",
        "compatible mode: plaintext copy next to Encrypt; only the verified ciphertext is used",
        x,
        &real,
        a.key,
        a.app_id,
        Some(&fake_copy),
        envelopes(&["text"]),
    ));
    safe.push(wechatpy_vector());
    let ts = g.next_ts + 7;
    let mut tampered = g.safe(
        a,
        "tampered_encrypt",
        "Encrypt altered after signing",
        x,
        &inner(
            ts,
            vec![("Content", V::S("pay 1")), ("MsgId", id(33))],
            "text",
        ),
        error("bad_signature"),
    );
    if let Some(body) = tampered.body.as_mut() {
        let range = tampered.signed.body_range.unwrap_or((0, 0));
        let mut bytes = body.clone().into_bytes();
        bytes[range.0 + 5] = if bytes[range.0 + 5] == b'A' {
            b'B'
        } else {
            b'A'
        };
        *body = String::from_utf8(bytes).unwrap_or_default();
    }
    safe.push(tampered);
    let ts = g.next_ts + 7;
    let mut bad_msg_sig = g.safe(
        a,
        "bad_msg_signature",
        "msg_signature computed with another token",
        x,
        &inner(ts, vec![("Content", V::S("hi")), ("MsgId", id(34))], "text"),
        error("bad_signature"),
    );
    let encrypt = bad_msg_sig
        .body
        .as_deref()
        .map(extract_encrypt)
        .unwrap_or_default();
    let (t, n) = (
        bad_msg_sig.query["timestamp"].clone(),
        bad_msg_sig.query["nonce"].clone(),
    );
    bad_msg_sig.query.insert(
        "msg_signature".into(),
        signature(&["wrong-token", &t, &n, &encrypt]),
    );
    safe.push(bad_msg_sig);
    let ts = g.next_ts + 7;
    let mut no_msg_sig = g.safe(
        a,
        "missing_msg_signature",
        "safe mode without msg_signature",
        x,
        &inner(ts, vec![("Content", V::S("hi")), ("MsgId", id(35))], "text"),
        error("bad_signature"),
    );
    no_msg_sig.query.remove("msg_signature");
    no_msg_sig.signed.query.retain(|k| k != "msg_signature");
    safe.push(no_msg_sig);
    let ts = g.next_ts + 7;
    safe.push(g.safe_with(
        a,
        "wrong_aes_key",
        "encrypted under another EncodingAESKey, signed correctly",
        x,
        &inner(ts, vec![("Content", V::S("hi")), ("MsgId", id(36))], "text"),
        OTHER_AES_KEY,
        a.app_id,
        None,
        error("malformed"),
    ));
    let ts = g.next_ts + 7;
    safe.push(g.safe_with(
        a,
        "wrong_app_id",
        "encrypted for another AppID, signed correctly",
        x,
        &inner(ts, vec![("Content", V::S("hi")), ("MsgId", id(37))], "text"),
        a.key,
        "wx0000000000000000",
        None,
        error("malformed"),
    ));
    safe.push(g.safe(
        a,
        "malformed_inner",
        "decrypts to broken XML",
        x,
        "<xml><MsgType>text</MsgType><Content>",
        error("malformed"),
    ));
    safe.push(g.safe(
        a,
        "xxe_inner",
        "decrypts to an XXE payload",
        x,
        XXE,
        error("malformed"),
    ));
    let ts = g.next_ts + 7;
    safe.push(g.safe(
        a,
        "unknown_type_inner",
        "decrypts to an unknown MsgType",
        x,
        &inner(ts, vec![("MsgId", id(38))], "hologram"),
        error("unsupported"),
    ));
    let ts = g.next_ts + 7;
    let mut plain_on_safe = g.plain(
        a,
        "plain_push_to_safe_channel",
        "a plain push while the channel is in safe mode (the body would be unauthenticated)",
        x,
        inner(ts, vec![("Content", V::S("hi")), ("MsgId", id(39))], "text"),
        error("bad_signature"),
    );
    plain_on_safe.signed = signed_query(&[]);
    safe.push(plain_on_safe);
    let mut no_encrypt = g.plain(
        a,
        "no_encrypt_field",
        "encrypt_type=aes but the body has no Encrypt",
        x,
        render(x, &[("ToUserName", V::S(a.gh))]),
        error("malformed"),
    );
    no_encrypt.query.insert("encrypt_type".into(), "aes".into());
    no_encrypt
        .query
        .insert("msg_signature".into(), "0".repeat(40));
    no_encrypt.signed = signed_query(&[]);
    safe.push(no_encrypt);
    (plain, safe)
}

/// wechatpy `tests/test_crypto.py::test_decrypt_message`: a real ciphertext under token
/// `123456`, key `kWxPEV2…aR`, receive id `wx49f0ab532d5d035a`.
fn wechatpy_vector() -> Fixture {
    const ENCRYPT: &str = "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=";
    const MSG_SIGNATURE: &str = "74d92dfeb87ba7c714f89d98870ae5eb62dff26d";
    let (timestamp, nonce) = ("1411525903", "461056294");
    assert_eq!(
        signature(&[OA_TOKEN, timestamp, nonce, ENCRYPT]),
        MSG_SIGNATURE
    );
    let body = format!(
        "<xml><ToUserName><![CDATA[wx49f0ab532d5d035a]]></ToUserName>\n<Encrypt><![CDATA[{ENCRYPT}]]></Encrypt>\n<AgentID><![CDATA[1]]></AgentID>\n</xml>"
    );
    let start = body.find(ENCRYPT).unwrap_or(0);
    Fixture {
        name: "wechatpy_vector".into(),
        description: "wechatpy test_crypto.py ciphertext (independent implementation): decrypts to text `test` from `messense`".into(),
        method: "POST".into(),
        headers: BTreeMap::from([("content-type".to_owned(), "text/xml".to_owned())]),
        query: BTreeMap::from([
            ("signature".to_owned(), signature(&[OA_TOKEN, timestamp, nonce])),
            ("timestamp".to_owned(), timestamp.to_owned()),
            ("nonce".to_owned(), nonce.to_owned()),
            ("encrypt_type".to_owned(), "aes".to_owned()),
            ("msg_signature".to_owned(), MSG_SIGNATURE.to_owned()),
        ]),
        body: Some(body),
        body_base64: None,
        received_at: at(1_411_525_905),
        expect: envelopes(&["text"]),
        signed: Signed {
            body: true,
            body_range: Some((start, start + ENCRYPT.len())),
            headers: Vec::new(),
            query: ["signature", "timestamp", "nonce", "encrypt_type", "msg_signature"].map(str::to_owned).to_vec(),
        },
    }
}

fn extract_encrypt(body: &str) -> String {
    let start = body.find("<Encrypt><![CDATA[").map(|i| i + 18);
    let end = body.find("]]></Encrypt>");
    match (start, end) {
        (Some(s), Some(e)) if s <= e => body[s..e].to_owned(),
        _ => String::new(),
    }
}

/// One generated push: name, description, format, MsgType, fields, expected outcome.
type Case<'a> = (
    &'a str,
    &'a str,
    Format,
    &'a str,
    Vec<(&'a str, V<'a>)>,
    Expect,
);

/// The mini-program fixtures: (plain channel, safe channel).
pub fn miniprogram_fixtures() -> (Vec<Fixture>, Vec<Fixture>) {
    let mut g = Gen {
        next_ts: T0 + 100_000,
    };
    let a = &MP;
    let (x, j) = (Format::Xml, Format::Json);
    // developers.weixin.qq.com/miniprogram/dev/framework/server-ability/message-push.html
    let official_handshake = Fixture {
        name: "handshake_official_example".into(),
        description: "the official message-push example: Token AAAAA, signature f464b24f…".into(),
        method: "GET".into(),
        headers: BTreeMap::new(),
        query: BTreeMap::from([
            (
                "signature".to_owned(),
                "f464b24fc39322e44b38aa78f5edd27bd1441696".to_owned(),
            ),
            ("echostr".to_owned(), "4375120948345356249".to_owned()),
            ("timestamp".to_owned(), "1714036504".to_owned()),
            ("nonce".to_owned(), "1514711492".to_owned()),
        ]),
        body: None,
        body_base64: None,
        received_at: at(1_714_036_505),
        expect: Expect::Handshake {
            status: 200,
            body: "4375120948345356249".into(),
        },
        signed: signed_query(&["signature", "timestamp", "nonce"]),
    };
    assert_eq!(
        signature(&[MP_TOKEN, "1714036504", "1514711492"]),
        "f464b24fc39322e44b38aa78f5edd27bd1441696"
    );
    // developers.weixin.qq.com/doc/oplatform/developers/dev/push/encryption.html, plain mode.
    let official_push = Fixture {
        name: "official_json_push_example".into(),
        description: "the official plain-mode JSON push example (Event debug_demo): signature verifies, the event is not routed".into(),
        method: "POST".into(),
        headers: BTreeMap::from([("content-type".to_owned(), "application/json".to_owned())]),
        query: BTreeMap::from([
            ("signature".to_owned(), "899cf89e464efb63f54ddac96b0a0a235f53aa78".to_owned()),
            ("timestamp".to_owned(), "1714037059".to_owned()),
            ("nonce".to_owned(), "486452656".to_owned()),
        ]),
        body: Some("{\n    \"ToUserName\": \"gh_97417a04a28d\",\n    \"FromUserName\": \"o9AgO5Kd5ggOC-bXrbNODIiE3bGY\",\n    \"CreateTime\": 1714037059,\n    \"MsgType\": \"event\",\n    \"Event\": \"debug_demo\",\n    \"debug_str\": \"hello world\"\n}".into()),
        body_base64: None,
        received_at: at(1_714_037_060),
        expect: error("unsupported"),
        signed: signed_query(&["signature", "timestamp", "nonce"]),
    };
    assert_eq!(
        signature(&[MP_TOKEN, "1714037059", "486452656"]),
        "899cf89e464efb63f54ddac96b0a0a235f53aa78"
    );
    let mut plain = vec![
        official_handshake,
        official_push,
        g.handshake(a, "handshake", "URL verification", true),
        g.handshake(
            a,
            "handshake_bad_signature",
            "URL verification signed with another token",
            false,
        ),
    ];
    let id = |n: u64| V::U(9_007_199_254_740_993 + n); // above 2^53: must not go through f64
    let card = |title: &'static str| -> Vec<(&'static str, V<'static>)> {
        vec![
            ("Title", V::S(title)),
            ("AppId", V::S(MP_APP_ID)),
            ("PagePath", V::S("pages/goods/detail?id=42")),
            ("ThumbUrl", V::S("https://mmbiz.qpic.cn/thumb/1")),
            ("ThumbMediaId", V::S("thumb-media-1")),
        ]
    };
    let cases: Vec<Case<'_>> = vec![
        (
            "text_xml",
            "text, XML data format",
            x,
            "text",
            vec![("Content", V::S(TRICKY_TEXT)), ("MsgId", id(1))],
            envelopes(&["text"]),
        ),
        (
            "text_json",
            "text, JSON data format, MsgId above 2^53",
            j,
            "text",
            vec![("Content", V::S(TRICKY_TEXT)), ("MsgId", id(2))],
            envelopes(&["text"]),
        ),
        (
            "image_json",
            "image, JSON",
            j,
            "image",
            vec![
                ("PicUrl", V::S("https://mmbiz.qpic.cn/img/1")),
                ("MediaId", V::S("media-1")),
                ("MsgId", id(3)),
            ],
            envelopes(&["image"]),
        ),
        (
            "image_xml",
            "image, XML",
            x,
            "image",
            vec![
                ("PicUrl", V::S("https://mmbiz.qpic.cn/img/2")),
                ("MediaId", V::S("media-2")),
                ("MsgId", id(4)),
            ],
            envelopes(&["image"]),
        ),
        (
            "miniprogrampage_json",
            "mini-program page card, JSON",
            j,
            "miniprogrampage",
            with(card("商品详情"), vec![("MsgId", id(5))]),
            envelopes(&["card"]),
        ),
        (
            "miniprogrampage_xml",
            "mini-program page card, XML",
            x,
            "miniprogrampage",
            with(card("订单 #42"), vec![("MsgId", id(6))]),
            envelopes(&["card"]),
        ),
        (
            "event_enter_session_json",
            "user enters the customer-service session",
            j,
            "event",
            vec![
                ("Event", V::S("user_enter_tempsession")),
                ("SessionFrom", V::S("goods:42")),
            ],
            envelopes(&["event"]),
        ),
        (
            "event_enter_session_xml",
            "user enters the session (SessionFrom wxapp)",
            x,
            "event",
            vec![
                ("Event", V::S("user_enter_tempsession")),
                ("SessionFrom", V::S("wxapp")),
            ],
            envelopes(&["event"]),
        ),
        (
            "voice_not_routed",
            "a type mini-program customer service does not route",
            j,
            "voice",
            vec![("MediaId", V::S("v")), ("MsgId", id(7))],
            error("unsupported"),
        ),
        (
            "unknown_event",
            "another mini-program push on the same URL (not routed)",
            j,
            "event",
            vec![
                ("Event", V::S("wxa_media_check")),
                ("trace_id", V::S("t-1")),
            ],
            error("unsupported"),
        ),
    ];
    for (name, desc, format, msg_type, more, expect) in cases {
        let ts = g.next_ts + 7;
        let body = render(format, &with(head(a, ts, msg_type), more));
        plain.push(g.plain(a, name, desc, format, body, expect));
    }
    let ts = g.next_ts + 7;
    let body = render(
        j,
        &with(
            head(a, ts, "text"),
            vec![("Content", V::S("hi")), ("MsgId", id(8))],
        ),
    );
    let mut bad = g.plain(
        a,
        "bad_signature",
        "signature computed with another token",
        j,
        body,
        error("bad_signature"),
    );
    let (t, n) = (bad.query["timestamp"].clone(), bad.query["nonce"].clone());
    bad.query
        .insert("signature".into(), signature(&["wrong", &t, &n]));
    plain.push(bad);
    plain.push(g.plain(
        a,
        "malformed_json",
        "broken JSON under a valid signature",
        j,
        "{\"MsgType\":\"text\",".into(),
        error("malformed"),
    ));
    plain.push(g.plain(
        a,
        "json_wrong_types",
        "MsgType is an array",
        j,
        "{\"MsgType\":[\"text\"],\"FromUserName\":\"o\"}".into(),
        error("malformed"),
    ));
    plain.push(g.plain(
        a,
        "xxe",
        "XXE payload under a valid signature",
        x,
        XXE.into(),
        error("malformed"),
    ));
    let mut utf8 = g.plain(
        a,
        "invalid_utf8",
        "body is not UTF-8",
        j,
        String::new(),
        error("malformed"),
    );
    utf8.set_body(b"{\"MsgType\":\"text\",\"Content\":\"\xc3\x28\"}");
    plain.push(utf8);

    let mut safe = vec![g.handshake(
        a,
        "handshake",
        "URL verification in safe mode (echostr in clear)",
        true,
    )];
    let safe_cases: Vec<Case<'_>> = vec![
        (
            "text_json",
            "encrypted JSON push (Encrypt in JSON)",
            j,
            "text",
            vec![("Content", V::S(TRICKY_TEXT)), ("MsgId", id(20))],
            envelopes(&["text"]),
        ),
        (
            "text_xml",
            "encrypted XML push",
            x,
            "text",
            vec![("Content", V::S("你好")), ("MsgId", id(21))],
            envelopes(&["text"]),
        ),
        (
            "miniprogrampage_json",
            "encrypted card",
            j,
            "miniprogrampage",
            with(card("商品"), vec![("MsgId", id(22))]),
            envelopes(&["card"]),
        ),
        (
            "event_enter_session_json",
            "encrypted enter-session event",
            j,
            "event",
            vec![
                ("Event", V::S("user_enter_tempsession")),
                ("SessionFrom", V::S("order:9")),
            ],
            envelopes(&["event"]),
        ),
    ];
    for (name, desc, format, msg_type, more, expect) in safe_cases {
        let ts = g.next_ts + 7;
        let inner = render(format, &with(head(a, ts, msg_type), more));
        safe.push(g.safe(a, name, desc, format, &inner, expect));
    }
    let ts = g.next_ts + 7;
    let inner = render(
        j,
        &with(
            head(a, ts, "text"),
            vec![("Content", V::S("hi")), ("MsgId", id(23))],
        ),
    );
    let mut tampered = g.safe(
        a,
        "tampered_encrypt_json",
        "JSON Encrypt altered after signing",
        j,
        &inner,
        error("bad_signature"),
    );
    if let (Some(body), Some((s, _))) = (tampered.body.as_mut(), tampered.signed.body_range) {
        let mut bytes = body.clone().into_bytes();
        bytes[s + 3] = if bytes[s + 3] == b'A' { b'B' } else { b'A' };
        *body = String::from_utf8(bytes).unwrap_or_default();
    }
    safe.push(tampered);
    let ts = g.next_ts + 7;
    let inner = render(
        j,
        &with(
            head(a, ts, "text"),
            vec![("Content", V::S("hi")), ("MsgId", id(24))],
        ),
    );
    safe.push(g.safe_with(
        a,
        "wrong_aes_key_json",
        "encrypted under another key, signed correctly",
        j,
        &inner,
        OTHER_AES_KEY,
        a.app_id,
        None,
        error("malformed"),
    ));
    safe.push(g.safe(
        a,
        "malformed_inner_json",
        "decrypts to broken JSON",
        j,
        "{\"MsgType\":",
        error("malformed"),
    ));
    (plain, safe)
}

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (oa_plain, oa_safe) = oa_fixtures();
    write_fixtures(root.join("wechat_oa/plain"), &oa_plain)?;
    write_fixtures(root.join("wechat_oa/safe"), &oa_safe)?;
    let (mp_plain, mp_safe) = miniprogram_fixtures();
    write_fixtures(root.join("wechat_miniprogram/plain"), &mp_plain)?;
    write_fixtures(root.join("wechat_miniprogram/safe"), &mp_safe)?;
    println!(
        "wrote {} OA and {} mini-program fixtures under {}",
        oa_plain.len() + oa_safe.len(),
        mp_plain.len() + mp_safe.len(),
        root.display()
    );
    Ok(())
}
