//! The WeChat XML reader (`wechat::xml`): structural check, then a full message parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_connectors::wechat::message::WxMessage;
use switchyard_connectors::wechat::xml;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = xml::body_text(data) {
        let _ = xml::check(text);
        let _ = WxMessage::parse(text, false);
        let _ = WxMessage::parse(text, true);
    }
});
