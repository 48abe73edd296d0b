//! Safe parsing of WeChat XML payloads with quick-xml.
//!
//! WeChat XML is tiny and flat: `<xml><ToUserName><![CDATA[..]]></ToUserName>...</xml>`. We
//! never expand entities: a structural pre-pass refuses any `<!DOCTYPE` (and with it every
//! `<!ENTITY` declaration: XXE, billion laughs), any entity reference other than the five
//! predefined ones and character references, a root that is not `<xml>`, and nesting deeper
//! than [`MAX_DEPTH`]. Text inside CDATA is data, never markup, so a user typing `<!DOCTYPE`
//! into a chat is not refused. Only then is the document deserialized (serde), which keeps
//! CDATA exactly (adjacent CDATA sections, as used to carry a literal `]]>`, are joined).

use quick_xml::Reader;
use quick_xml::events::Event;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::ConnectorError;

/// The largest request body a WeChat connector reads (WeChat messages are a few KiB; the
/// compatible mode triples them).
pub const MAX_BODY: usize = 512 * 1024;

/// Deepest element nesting accepted (WeChat payloads are 2-3 levels deep).
pub const MAX_DEPTH: usize = 16;

/// The body as UTF-8 text, refusing oversized and non-UTF-8 bodies.
pub fn body_text(body: &[u8]) -> Result<&str, ConnectorError> {
    if body.len() > MAX_BODY {
        return Err(ConnectorError::Malformed(format!(
            "body of {} bytes exceeds the {MAX_BODY}-byte limit",
            body.len()
        )));
    }
    std::str::from_utf8(body)
        .map_err(|e| ConnectorError::Malformed(format!("body is not valid UTF-8: {e}")))
}

/// Checks that `xml` is a well-formed WeChat document without DTDs or custom entities.
pub fn check(xml: &str) -> Result<(), ConnectorError> {
    let malformed = |why: String| ConnectorError::Malformed(format!("invalid XML: {why}"));
    let mut reader = Reader::from_str(xml);
    let mut depth = 0usize;
    let mut roots = 0usize;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| malformed(format!("at byte {}: {e}", reader.error_position())))?;
        match event {
            Event::DocType(_) => {
                return Err(malformed(
                    "DOCTYPE / ENTITY declarations are not allowed".into(),
                ));
            }
            Event::GeneralRef(r) => {
                let name: &str = &r;
                if !r.is_char_ref() && !matches!(name, "lt" | "gt" | "amp" | "apos" | "quot") {
                    return Err(malformed(format!("entity `&{name};` is not allowed")));
                }
            }
            Event::Start(start) => {
                if depth == 0 {
                    roots += 1;
                    if start.name().as_ref() != "xml" || roots > 1 {
                        return Err(malformed("the document must be one <xml> element".into()));
                    }
                }
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(malformed(format!("nesting deeper than {MAX_DEPTH}")));
                }
            }
            Event::Empty(empty) if depth == 0 => {
                roots += 1;
                if empty.name().as_ref() != "xml" || roots > 1 {
                    return Err(malformed("the document must be one <xml> element".into()));
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(text) if depth == 0 && !text.trim().is_empty() => {
                return Err(malformed("text outside the <xml> element".into()));
            }
            Event::CData(_) if depth == 0 => {
                return Err(malformed("CDATA outside the <xml> element".into()));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if roots != 1 || depth != 0 {
        return Err(malformed(
            "the document must be one complete <xml> element".into(),
        ));
    }
    Ok(())
}

/// The fields of a WeChat XML document as a JSON object (what a kept `raw` holds): each child
/// element of `<xml>` by name, with its text as a string (CDATA and references resolved), or,
/// when it has child elements, an object of them read the same way; a name that repeats
/// becomes a list. Attributes are left out (WeChat sends none). Checked first (see [`check`]).
pub fn fields(xml: &str) -> Result<Map<String, Value>, ConnectorError> {
    /// An element being read: its name, child elements and text.
    struct Open {
        name: String,
        children: Map<String, Value>,
        text: String,
    }
    fn add(children: &mut Map<String, Value>, name: String, value: Value) {
        match children.get_mut(&name) {
            None => {
                children.insert(name, value);
            }
            Some(Value::Array(repeated)) => repeated.push(value),
            Some(first) => {
                let first = first.take();
                children.insert(name, Value::Array(vec![first, value]));
            }
        }
    }
    check(xml)?;
    let malformed = |why: String| ConnectorError::Malformed(format!("invalid XML: {why}"));
    let mut reader = Reader::from_str(xml);
    let mut open: Vec<Open> = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| malformed(format!("at byte {}: {e}", reader.error_position())))?;
        match event {
            Event::Start(start) => open.push(Open {
                name: start.name().as_ref().to_owned(),
                children: Map::new(),
                text: String::new(),
            }),
            Event::Empty(empty) => {
                if let Some(parent) = open.last_mut() {
                    let name = empty.name().as_ref().to_owned();
                    add(&mut parent.children, name, Value::String(String::new()));
                }
            }
            Event::Text(text) => {
                if let Some(element) = open.last_mut() {
                    element.text.push_str(&text.xml10_content());
                }
            }
            Event::CData(cdata) => {
                if let Some(element) = open.last_mut() {
                    element.text.push_str(&cdata.xml10_content());
                }
            }
            Event::GeneralRef(reference) => {
                if let Some(element) = open.last_mut() {
                    let name: &str = &reference;
                    match reference.resolve_char_ref() {
                        Ok(Some(c)) => element.text.push(c),
                        _ => element.text.push_str(
                            quick_xml::escape::resolve_predefined_entity(name).unwrap_or(""),
                        ),
                    }
                }
            }
            Event::End(_) => {
                let Some(element) = open.pop() else {
                    return Err(malformed("unbalanced end tag".into()));
                };
                let Some(parent) = open.last_mut() else {
                    return Ok(element.children);
                };
                let value = if element.children.is_empty() {
                    Value::String(element.text)
                } else {
                    Value::Object(element.children)
                };
                add(&mut parent.children, element.name, value);
            }
            Event::Eof => return Ok(Map::new()),
            _ => {}
        }
    }
}

/// Checks `xml` (see [`check`]) and deserializes it.
pub fn from_str<T: DeserializeOwned>(xml: &str) -> Result<T, ConnectorError> {
    check(xml)?;
    quick_xml::de::from_str(xml)
        .map_err(|e| ConnectorError::Malformed(format!("invalid WeChat XML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Msg {
        content: String,
        #[serde(default)]
        msg_type: Option<String>,
    }

    #[test]
    fn cdata_with_split_terminator_chinese_and_emoji() {
        let xml = "<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[ 你好 ]]]]><![CDATA[> 👋🏽\n<b>&amp; ]]></Content></xml>";
        let m: Msg = from_str(xml).unwrap();
        assert_eq!(m.content, " 你好 ]]> 👋🏽\n<b>&amp; ");
        assert_eq!(m.msg_type.as_deref(), Some("text"));
    }

    #[test]
    fn doctype_in_cdata_is_data() {
        let xml = "<xml><Content><![CDATA[<!DOCTYPE x [<!ENTITY a \"b\">]>&a;]]></Content></xml>";
        let m: Msg = from_str(xml).unwrap();
        assert_eq!(m.content, "<!DOCTYPE x [<!ENTITY a \"b\">]>&a;");
    }

    #[test]
    fn predefined_and_char_refs_are_fine() {
        let m: Msg =
            from_str("<xml><Content>a &lt;&amp;&gt; &#x1F600; &#20320;</Content></xml>").unwrap();
        assert_eq!(m.content, "a <&> 😀 你");
    }

    #[test]
    fn xxe_and_billion_laughs_are_refused() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><Content>&xxe;</Content></xml>"#;
        let laughs = r#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]><xml><Content>&lol2;</Content></xml>"#;
        let undeclared = "<xml><Content>&xxe;</Content></xml>";
        for bad in [xxe, laughs, undeclared] {
            assert!(
                matches!(from_str::<Msg>(bad), Err(ConnectorError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn structure_is_checked() {
        for bad in [
            "",
            "not xml",
            "<xml><Content>x</Content>",
            "<xml><Content>x</Contents></xml>",
            "<root><Content>x</Content></root>",
            "<xml/><xml/>",
            "<xml><Content>x</Content></xml>trailing",
            &format!("<xml>{}{}</xml>", "<a>".repeat(40), "</a>".repeat(40)),
        ] {
            assert!(
                matches!(from_str::<Msg>(bad), Err(ConnectorError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn fields_are_a_json_object_of_the_elements() {
        let xml = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName>\n  <CreateTime>1714036504</CreateTime>\
                   <Content><![CDATA[a ]]]]><![CDATA[> b]]> &lt;&#x1F600;</Content><EventKey/>\
                   <SendPicsInfo><Count>2</Count><PicList><item><PicMd5Sum>x</PicMd5Sum></item>\
                   <item><PicMd5Sum>y</PicMd5Sum></item></PicList></SendPicsInfo></xml>";
        let fields = fields(xml).unwrap();
        assert_eq!(
            serde_json::Value::Object(fields),
            serde_json::json!({
                "ToUserName": "gh_1",
                "CreateTime": "1714036504",
                "Content": "a ]]> b <😀",
                "EventKey": "",
                "SendPicsInfo": {
                    "Count": "2",
                    "PicList": {"item": [{"PicMd5Sum": "x"}, {"PicMd5Sum": "y"}]}
                }
            })
        );
        assert_eq!(super::fields("<xml/>").unwrap(), Map::new());
        assert!(super::fields("<xml><!DOCTYPE x></xml>").is_err());
    }

    #[test]
    fn body_limits() {
        assert!(body_text(&vec![b' '; MAX_BODY + 1]).is_err());
        assert!(body_text(b"\xff\xfe<xml/>").is_err());
        assert_eq!(body_text(b"<xml/>").unwrap(), "<xml/>");
    }
}
