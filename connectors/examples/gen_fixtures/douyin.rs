//! Douyin webhook fixtures: bodies as Douyin sends them (key order of the official examples),
//! signed here with `hex(SHA1(client_secret ‖ body))`.

#![allow(dead_code)]

use sha1::{Digest, Sha1};
use switchyard_connectors::conformance::{Fixture, Signed};

use crate::common::{RECEIVED_AT, envelopes, error, fixture, json_string};

/// The test app.
pub const CLIENT_KEY: &str = "awtestclientkey01";
/// Its secret (signs webhooks).
pub const CLIENT_SECRET: &str = "douyin-test-client-secret-0001";
/// The enterprise account that authorized the app.
pub const ACCOUNT: &str = "acct-7ae0-4399-914a-5eb1df5861ba";
/// A customer.
pub const CUSTOMER: &str = "cust-d7a6-4018-84be-c29bfc000001";
/// The customer's conversation with the account.
pub const CONVERSATION: &str = "@9Vxc1/yDU8sqaS+gN4koEc7912foPPyA";

fn sign(body: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(CLIENT_SECRET.as_bytes());
    sha.update(body);
    hex::encode(sha.finalize())
}

fn signed() -> Signed {
    Signed {
        body: true,
        body_range: None,
        headers: vec!["x-douyin-signature".into()],
        query: Vec::new(),
    }
}

/// A signed webhook POST.
fn post(
    name: &str,
    description: &str,
    body: &str,
    expect: switchyard_connectors::conformance::Expect,
) -> Fixture {
    let sig = sign(body.as_bytes());
    let msg_id = format!("msg-{name}");
    fixture(
        name,
        description,
        "POST",
        &[
            ("content-type", "application/json"),
            ("msg-id", &msg_id),
            ("x-douyin-signature", &sig),
        ],
        &[],
        body.as_bytes(),
        expect,
        signed(),
    )
}

/// An IM event body with `content` as an object (the IM pages' shape).
fn im_event(event: &str, from: &str, to: &str, content: &str) -> String {
    format!(
        r#"{{"event":"{event}","client_key":"{CLIENT_KEY}","from_user_id":"{from}","to_user_id":"{to}","content":{content},"log_id":"20261124090000010203"}}"#
    )
}

fn message(kind: &str, id: &str, extra: &str) -> String {
    let created = RECEIVED_AT * 1000 - 1500;
    format!(
        r#"{{"conversation_short_id":"{CONVERSATION}","server_message_id":"{id}","conversation_type":1,"message_type":"{kind}","create_time":{created},"user_infos":[{{"open_id":"{CUSTOMER}","nick_name":"李雷","avatar":"https://p3.douyinpic.com/a.jpeg"}}]{extra}}}"#
    )
}

/// Every Douyin fixture.
pub fn fixtures() -> Vec<Fixture> {
    let received = |kind: &str, id: &str, extra: &str| {
        im_event(
            "im_receive_msg",
            CUSTOMER,
            ACCOUNT,
            &message(kind, id, extra),
        )
    };
    let mut out = vec![
        post(
            "verify_webhook",
            "URL verification when the webhook is saved: answered with the challenge",
            &format!(
                r#"{{"event":"verify_webhook","client_key":"{CLIENT_KEY}","content":{{"challenge":12345}}}}"#
            ),
            crate::common::handshake(200, r#"{"challenge":12345}"#),
        ),
        post(
            "text",
            "A customer's text DM (content as an object)",
            &received(
                "text",
                "@srv-text-0001",
                r#","text":"你好，我想问一下订单 #42 的物流 👋""#,
            ),
            envelopes(&["text"]),
        ),
        post(
            "text_content_string",
            "The same kind of DM with content as a JSON string (other pages' shape)",
            &format!(
                r#"{{"event":"im_receive_msg","client_key":"{CLIENT_KEY}","from_user_id":"{CUSTOMER}","to_user_id":"{ACCOUNT}","content":{},"log_id":"20261124090000010204"}}"#,
                json_string(&message("text", "@srv-text-0002", r#","text":"还在吗？""#))
            ),
            envelopes(&["text"]),
        ),
        post(
            "image",
            "An image DM (no URL, as documented for images)",
            &received(
                "image",
                "@srv-image-0001",
                r#","resource_type":"image","resource_width":1080,"resource_height":1920"#,
            ),
            envelopes(&["image"]),
        ),
        post(
            "user_local_image",
            "A photo from the customer's phone, with a resource URL",
            &received(
                "user_local_image",
                "@srv-image-0002",
                r#","resource_type":"image","resource_url":"https://p9.douyinpic.com/im/1.jpeg","resource_width":640,"resource_height":480"#,
            ),
            envelopes(&["image"]),
        ),
        post(
            "emoji",
            "An animated sticker",
            &received(
                "emoji",
                "@srv-emoji-0001",
                r#","resource_type":"emoji","resource_url":"https://p9.douyinpic.com/emoji/1.gif""#,
            ),
            envelopes(&["sticker"]),
        ),
        post(
            "video",
            "A shared Douyin video (item_id)",
            &received(
                "video",
                "@srv-video-0001",
                r#","item_id":"@9VwKzuuES8gmaXS5ZohqQM78pjTraPlpdmclj8hftQ""#,
            ),
            envelopes(&["video"]),
        ),
        post(
            "user_local_video",
            "A video from the customer's phone",
            &received(
                "user_local_video",
                "@srv-video-0002",
                r#","resource_type":"video","resource_url":"https://v9.douyinvod.com/im/2.mp4""#,
            ),
            envelopes(&["video"]),
        ),
        post(
            "retain_consult_card",
            "The customer filled in a lead card",
            &received(
                "retain_consult_card",
                "@srv-card-0001",
                r#","card_id":"card-1","card_status":1,"card_data":[{"label":"姓名","value":"李雷"},{"label":"手机号","value":"138****0000"}]"#,
            ),
            envelopes(&["card"]),
        ),
        post(
            "other_type",
            "A message type the connector does not map: kept as unsupported content",
            &received("other", "@srv-other-0001", ""),
            envelopes(&["unsupported"]),
        ),
        post(
            "enter_direct_msg",
            "The customer opened the DM page from a video (content as a JSON string, per the docs)",
            &format!(
                r#"{{"event":"im_enter_direct_msg","client_key":"{CLIENT_KEY}","from_user_id":"{CUSTOMER}","to_user_id":"{ACCOUNT}","content":{}}}"#,
                json_string(&format!(
                    r#"{{"conversation_short_id":"{CONVERSATION}","server_message_id":"@srv-enter-0001","conversation_type":1,"objectId":"7212345678901234567","scene_type":3,"create_time":{},"user_infos":[{{"open_id":"{CUSTOMER}","nick_name":"李雷","avatar":""}}]}}"#,
                    RECEIVED_AT * 1000 - 800
                ))
            ),
            envelopes(&["event"]),
        ),
        post(
            "send_msg_echo",
            "im_send_msg: our own API reply echoed back (source = our client_key): not routed",
            &im_event(
                "im_send_msg",
                ACCOUNT,
                CUSTOMER,
                &format!(
                    r#"{{"conversation_short_id":"{CONVERSATION}","server_message_id":"@srv-sent-0001","conversation_type":1,"message_type":"text","text":"您好，这里是客服","source":"{CLIENT_KEY}","create_time":{}}}"#,
                    RECEIVED_AT * 1000
                ),
            ),
            error("unsupported"),
        ),
        post(
            "unknown_event",
            "An event the connector does not route (authorize)",
            &format!(
                r#"{{"event":"authorize","client_key":"{CLIENT_KEY}","from_user_id":"{ACCOUNT}","content":{{"scopes":["im.direct_message"]}}}}"#
            ),
            error("unsupported"),
        ),
        post(
            "group_message",
            "A group-chat DM event: not routed",
            &im_event(
                "im_group_receive_msg",
                CUSTOMER,
                ACCOUNT,
                &message("text", "@srv-group-0001", r#","text":"群消息""#)
                    .replace(r#""conversation_type":1"#, r#""conversation_type":2"#),
            ),
            error("unsupported"),
        ),
        post(
            "no_server_message_id",
            "A DM without server_message_id: deduplicated by the Msg-Id header",
            &im_event(
                "im_receive_msg",
                CUSTOMER,
                ACCOUNT,
                &format!(
                    r#"{{"conversation_short_id":"{CONVERSATION}","conversation_type":1,"message_type":"text","text":"hi","create_time":{}}}"#,
                    RECEIVED_AT * 1000
                ),
            ),
            envelopes(&["text"]),
        ),
        post(
            "empty_text",
            "A text DM without text: malformed",
            &received("text", "@srv-text-empty", r#","text":"""#),
            error("malformed"),
        ),
        post(
            "malformed_json",
            "Correctly signed, but not JSON",
            r#"{"event":"im_receive_msg","content":"#,
            error("malformed"),
        ),
        post(
            "content_not_json",
            "Correctly signed, content is a string that is not JSON",
            &format!(
                r#"{{"event":"im_receive_msg","client_key":"{CLIENT_KEY}","from_user_id":"{CUSTOMER}","to_user_id":"{ACCOUNT}","content":"not json"}}"#
            ),
            error("malformed"),
        ),
    ];
    // Correctly signed bytes that are not UTF-8 inside a JSON string.
    let mut bad_utf8 = received("text", "@srv-text-utf8", r#","text":"XX""#).into_bytes();
    if let Some(pos) = bad_utf8.windows(4).position(|w| w == b"\"XX\"") {
        bad_utf8[pos + 1] = 0xff;
        bad_utf8[pos + 2] = 0xfe;
    }
    let sig = sign(&bad_utf8);
    out.push(fixture(
        "invalid_utf8",
        "Correctly signed, but the JSON holds bytes that are not UTF-8",
        "POST",
        &[
            ("content-type", "application/json"),
            ("x-douyin-signature", &sig),
        ],
        &[],
        &bad_utf8,
        error("malformed"),
        signed(),
    ));
    let text = received("text", "@srv-text-0003", r#","text":"伪造""#);
    let other_sig = {
        let mut sha = Sha1::new();
        sha.update(b"some-other-secret");
        sha.update(text.as_bytes());
        hex::encode(sha.finalize())
    };
    out.push(fixture(
        "bad_signature",
        "Signed with another secret",
        "POST",
        &[
            ("content-type", "application/json"),
            ("x-douyin-signature", &other_sig),
        ],
        &[],
        text.as_bytes(),
        error("bad_signature"),
        Signed::default(),
    ));
    out.push(fixture(
        "missing_signature",
        "No X-Douyin-Signature header",
        "POST",
        &[("content-type", "application/json")],
        &[],
        text.as_bytes(),
        error("bad_signature"),
        Signed::default(),
    ));
    let original = received("text", "@srv-text-0004", r#","text":"退款 10 元""#);
    let tampered = original.replace("退款 10 元", "退款 99 元");
    let sig = sign(original.as_bytes());
    out.push(fixture(
        "tampered_body",
        "The signature of the original body over a changed body",
        "POST",
        &[
            ("content-type", "application/json"),
            ("x-douyin-signature", &sig),
        ],
        &[],
        tampered.as_bytes(),
        error("bad_signature"),
        Signed::default(),
    ));
    let challenge = format!(
        r#"{{"event":"verify_webhook","client_key":"{CLIENT_KEY}","content":{{"challenge":777}}}}"#
    );
    out.push(fixture(
        "verify_webhook_bad_signature",
        "A URL verification that is not signed with our secret",
        "POST",
        &[
            ("content-type", "application/json"),
            ("x-douyin-signature", &"0".repeat(40)),
        ],
        &[],
        challenge.as_bytes(),
        error("bad_signature"),
        Signed::default(),
    ));
    out
}
