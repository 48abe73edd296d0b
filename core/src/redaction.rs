//! Personal data taken out of what customers write, at ingestion, before a message reaches the
//! bus (`[redaction]` and the channel key `redact`).
//!
//! A [`Redactor`] holds rules: built-in [`Detector`]s (payment cards, e-mail addresses, phone
//! numbers, Chinese resident identity numbers, IBANs) and the operator's own patterns (regular
//! expressions). It replaces every match in an envelope's free text (text, captions, speech
//! recognition, file names, location labels, link titles and descriptions, card titles) and in
//! every string of a kept `raw` payload with the configured replacement, e.g.
//! `[redacted:payment_card]`. Identity keys, URLs, media references and event data are left as
//! they are: routing needs them, and they are not what a person typed.
//!
//! The detectors look for candidates with a regular expression, then check them the way the
//! data is defined (the Luhn check digit of a card, the ISO 7064 check of a resident identity
//! number and of an IBAN), so that order numbers and timestamps are not taken for cards. Digits
//! next to the candidate make it no match, whatever script surrounds it, so `手机13800138000`
//! is found and `2138001380001` is not.

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;

use crate::config::{ConfigError, Settings};
use crate::envelope::{Content, Envelope};

/// Replacement used when `[redaction] replacement` is not set.
pub const DEFAULT_REPLACEMENT: &str = "[redacted:{name}]";

/// A built-in detector of personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    /// Payment card numbers: 13 to 19 digits, in groups separated by single spaces or hyphens,
    /// with a valid Luhn check digit.
    PaymentCard,
    /// E-mail addresses.
    Email,
    /// Phone numbers in international form (`+` and 8 to 15 digits, spaces, dots, hyphens and
    /// parentheses between them), and Chinese mobile numbers (11 digits from `13` to `19`,
    /// optionally grouped 3-4-4).
    Phone,
    /// Chinese resident identity card numbers: 18 characters, a plausible birth date, and a
    /// valid ISO 7064 MOD 11-2 check character.
    CnResidentId,
    /// International bank account numbers, in capitals, with or without single spaces, and a
    /// valid ISO 7064 MOD 97-10 check.
    Iban,
}

impl Detector {
    /// Every built-in detector.
    pub const ALL: [Detector; 5] = [
        Detector::PaymentCard,
        Detector::Email,
        Detector::Phone,
        Detector::CnResidentId,
        Detector::Iban,
    ];

    /// Its name in the configuration and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Detector::PaymentCard => "payment_card",
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::CnResidentId => "cn_resident_id",
            Detector::Iban => "iban",
        }
    }

    /// The detector called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The regular expressions that find its candidates, which [`Detector::accept`] checks.
    fn candidate_patterns(self) -> &'static [&'static str] {
        match self {
            Detector::PaymentCard => &[r"[0-9](?:[ \-]?[0-9]){12,18}"],
            Detector::Email => &[
                r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}",
            ],
            Detector::Phone => &[
                r"\+[0-9][0-9 ().\-]{6,24}[0-9]",
                r"1[3-9][0-9](?:[ \-]?[0-9]{4}){2}",
            ],
            Detector::CnResidentId => &[r"[0-9]{17}[0-9Xx]"],
            Detector::Iban => &[r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}"],
        }
    }

    /// Whether the detector needs an ASCII digit in the text to find anything (a cheap test
    /// that skips most of the text of most messages).
    fn needs_digit(self) -> bool {
        !matches!(self, Detector::Email)
    }

    /// The end of the longest accepted match within the candidate `start..end` of `text`, if
    /// any: the candidate may run on into what follows the data (a card number followed by a
    /// security code), so shorter ends at group boundaries are tried too.
    fn accept(self, text: &str, start: usize, end: usize) -> Option<usize> {
        if self != Detector::Email && preceded_by_ascii_alnum(text, start) {
            return None;
        }
        let bytes = text.as_bytes();
        let mut ends: Vec<usize> = (start + 1..=end)
            .filter(|&e| {
                bytes[e - 1].is_ascii_alphanumeric()
                    && (e == end || !bytes[e].is_ascii_alphanumeric())
            })
            .collect();
        if self == Detector::Email {
            ends.retain(|&e| e == end);
        }
        ends.into_iter()
            .rev()
            .find(|&e| !followed_by_ascii_alnum(text, e) && self.valid(&text[start..e]))
    }

    /// Whether `candidate` (a whole match, separators included) is data of this kind.
    fn valid(self, candidate: &str) -> bool {
        let digits: Vec<u8> = candidate
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect();
        match self {
            Detector::PaymentCard => {
                (13..=19).contains(&digits.len())
                    && digits.iter().any(|&d| d != digits[0])
                    && luhn_valid(&digits)
            }
            Detector::Email => true,
            Detector::Phone => {
                if candidate.starts_with('+') {
                    (8..=15).contains(&digits.len()) && balanced_parentheses(candidate)
                } else {
                    digits.len() == 11
                }
            }
            Detector::CnResidentId => cn_resident_id_valid(candidate.as_bytes()),
            Detector::Iban => iban_valid(candidate),
        }
    }
}

fn preceded_by_ascii_alnum(text: &str, at: usize) -> bool {
    text[..at]
        .chars()
        .next_back()
        .is_some_and(|c| c.is_ascii_alphanumeric())
}

fn followed_by_ascii_alnum(text: &str, at: usize) -> bool {
    text[at..]
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
}

/// The Luhn check over `digits` (values 0–9, the check digit last).
fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn balanced_parentheses(candidate: &str) -> bool {
    let mut open = 0u32;
    for c in candidate.chars() {
        match c {
            '(' if open == 0 => open = 1,
            ')' if open == 1 => open = 0,
            '(' | ')' => return false,
            _ => {}
        }
    }
    open == 0
}

/// GB 11643: 17 digits (6 of region, 8 of birth date, 3 of sequence) and a MOD 11-2 check
/// character (`X` for 10).
fn cn_resident_id_valid(id: &[u8]) -> bool {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECKS: &[u8; 11] = b"10X98765432";
    if id.len() != 18 || !id[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let number = |range: std::ops::Range<usize>| {
        id[range]
            .iter()
            .fold(0u32, |n, &b| n * 10 + u32::from(b - b'0'))
    };
    let (year, month, day) = (number(6..10), number(10..12), number(12..14));
    if !(1900..=2099).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return false;
    }
    let sum: u32 = id[..17]
        .iter()
        .zip(WEIGHTS)
        .map(|(&b, w)| u32::from(b - b'0') * w)
        .sum();
    let expected = CHECKS[(sum % 11) as usize];
    id[17].to_ascii_uppercase() == expected
}

/// ISO 13616: the country code and check digits moved to the end, letters as 10–35, the
/// number modulo 97 is 1.
fn iban_valid(candidate: &str) -> bool {
    let compact: Vec<u8> = candidate.bytes().filter(|&b| b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder = 0u32;
    for &b in tail.iter().chain(head) {
        remainder = match b {
            b'0'..=b'9' => (remainder * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => (remainder * 100 + u32::from(b - b'A' + 10)) % 97,
            _ => return false,
        };
    }
    remainder == 1
}

/// How a rule finds what it replaces.
#[derive(Debug)]
enum Matcher {
    /// A built-in detector with its compiled candidate patterns.
    Detector(Detector, Vec<Regex>),
    /// An operator's pattern: every match is replaced.
    Pattern(Regex),
}

/// One named rule: a built-in detector or an operator's pattern.
#[derive(Debug)]
pub struct Rule {
    name: String,
    matcher: Matcher,
}

/// Why a rule could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The regular expression does not compile (or compiles too large).
    #[error("not a valid regular expression: {0}")]
    Regex(#[from] regex::Error),
    /// The pattern matches the empty string, which would insert the replacement everywhere.
    #[error("the pattern matches an empty text, so it would redact between every character")]
    MatchesEmpty,
}

impl Rule {
    /// The rule of a built-in detector.
    pub fn detector(detector: Detector) -> Result<Rule, RuleError> {
        let patterns = detector
            .candidate_patterns()
            .iter()
            .map(|p| Regex::new(p))
            .collect::<Result<_, _>>()?;
        Ok(Rule {
            name: detector.name().to_owned(),
            matcher: Matcher::Detector(detector, patterns),
        })
    }

    /// An operator's pattern called `name` (at most 1 MiB compiled).
    pub fn pattern(name: &str, pattern: &str) -> Result<Rule, RuleError> {
        let regex = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()?;
        if regex.is_match("") {
            return Err(RuleError::MatchesEmpty);
        }
        Ok(Rule {
            name: name.to_owned(),
            matcher: Matcher::Pattern(regex),
        })
    }

    /// Its name: the detector's, or the pattern's.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds the spans of `text` this rule redacts to `spans`, tagged with `index`.
    fn find(&self, text: &str, has_digit: bool, index: usize, spans: &mut Vec<Span>) {
        match &self.matcher {
            Matcher::Pattern(regex) => spans.extend(regex.find_iter(text).map(|m| Span {
                start: m.start(),
                end: m.end(),
                rule: index,
            })),
            Matcher::Detector(detector, patterns) => {
                if detector.needs_digit() && !has_digit {
                    return;
                }
                if *detector == Detector::Email && !text.contains('@') {
                    return;
                }
                for regex in patterns {
                    for m in regex.find_iter(text) {
                        if let Some(end) = detector.accept(text, m.start(), m.end()) {
                            spans.push(Span {
                                start: m.start(),
                                end,
                                rule: index,
                            });
                        }
                    }
                }
            }
        }
    }
}

/// A part of a text to replace, found by rule number `rule`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    rule: usize,
}

/// What one redaction replaced: how many matches of each rule.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Redactions {
    counts: Vec<(String, u64)>,
}

impl Redactions {
    /// Whether nothing was replaced.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Each rule that replaced something, with how many matches, in the order each was first
    /// found.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.counts.iter().map(|(name, n)| (name.as_str(), *n))
    }

    fn add(&mut self, name: &str, n: u64) {
        match self.counts.iter_mut().find(|(have, _)| have == name) {
            Some((_, count)) => *count += n,
            None => self.counts.push((name.to_owned(), n)),
        }
    }
}

/// A set of rules and the text that replaces their matches.
#[derive(Debug, Clone)]
pub struct Redactor {
    rules: Vec<Arc<Rule>>,
    replacement: Arc<str>,
}

impl Redactor {
    /// A redactor applying `rules`, replacing each match with `replacement`, in which `{name}`
    /// becomes the rule's name and `{last4}` the match's last four letters or digits.
    pub fn new(rules: Vec<Arc<Rule>>, replacement: &str) -> Redactor {
        Redactor {
            rules,
            replacement: replacement.into(),
        }
    }

    /// The names of its rules, in order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name())
    }

    /// `text` with every match replaced, and what was replaced; `None` when nothing matched.
    /// Where two matches overlap, the one that starts first wins (the longer when both start
    /// at once).
    pub fn redact_text(&self, text: &str) -> Option<(String, Redactions)> {
        let has_digit = text.bytes().any(|b| b.is_ascii_digit());
        let mut spans = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            rule.find(text, has_digit, index, &mut spans);
        }
        if spans.is_empty() {
            return None;
        }
        spans.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        let mut out = String::with_capacity(text.len());
        let mut redactions = Redactions::default();
        let mut copied = 0;
        for span in spans {
            if span.start < copied {
                continue;
            }
            out.push_str(&text[copied..span.start]);
            let name = self.rules[span.rule].name();
            out.push_str(&self.replacement_for(name, &text[span.start..span.end]));
            redactions.add(name, 1);
            copied = span.end;
        }
        out.push_str(&text[copied..]);
        Some((out, redactions))
    }

    fn replacement_for(&self, name: &str, matched: &str) -> String {
        let mut replacement = self.replacement.replace("{name}", name);
        if replacement.contains("{last4}") {
            let last: Vec<char> = matched
                .chars()
                .rev()
                .filter(|c| c.is_alphanumeric())
                .take(4)
                .collect();
            let last4: String = last.into_iter().rev().collect();
            replacement = replacement.replace("{last4}", &last4);
        }
        replacement
    }

    /// Redacts `text` in place, adding what it replaced to `redactions`.
    fn redact_in_place(&self, text: &mut String, redactions: &mut Redactions) {
        if let Some((redacted, found)) = self.redact_text(text) {
            *text = redacted;
            for (name, n) in found.iter() {
                redactions.add(name, n);
            }
        }
    }

    /// Redacts the free text of `envelope`'s content and every string of its `raw` payload;
    /// what it replaced, by rule.
    pub fn redact_envelope(&self, envelope: &mut Envelope) -> Redactions {
        let mut redactions = Redactions::default();
        for text in free_text(&mut envelope.content) {
            self.redact_in_place(text, &mut redactions);
        }
        if let Some(raw) = envelope.raw.as_mut() {
            self.redact_json(raw, &mut redactions);
        }
        redactions
    }

    fn redact_json(&self, value: &mut serde_json::Value, redactions: &mut Redactions) {
        match value {
            serde_json::Value::String(s) => self.redact_in_place(s, redactions),
            serde_json::Value::Array(items) => {
                for item in items {
                    self.redact_json(item, redactions);
                }
            }
            serde_json::Value::Object(map) => {
                for item in map.values_mut() {
                    self.redact_json(item, redactions);
                }
            }
            _ => {}
        }
    }
}

/// The fields of `content` a person wrote: what redaction looks at.
fn free_text(content: &mut Content) -> Vec<&mut String> {
    match content {
        Content::Text { text } => vec![text],
        Content::Image { caption, .. } | Content::Video { caption, .. } => {
            caption.iter_mut().collect()
        }
        Content::Audio {
            recognition,
            caption,
            ..
        } => recognition.iter_mut().chain(caption.iter_mut()).collect(),
        Content::File { name, caption, .. } => name.iter_mut().chain(caption.iter_mut()).collect(),
        Content::Location { label, .. } => label.iter_mut().collect(),
        Content::Link {
            title, description, ..
        } => title.iter_mut().chain(description.iter_mut()).collect(),
        Content::Card { title, .. } => vec![title],
        Content::Template { parameters, .. } => parameters.iter_mut().collect(),
        Content::Sticker { .. } | Content::Event { .. } | Content::Unsupported { .. } => Vec::new(),
    }
}

/// The redactor of each channel that redacts anything, built from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Redaction {
    by_channel: HashMap<String, Arc<Redactor>>,
}

impl Redaction {
    /// The redactors of `settings`' channels: each channel applies the rules its `redact` key
    /// names, or, without the key, `[redaction] detectors` and every `[[redaction.patterns]]`.
    /// Errors name the key.
    pub fn from_settings(settings: &Settings) -> Result<Redaction, ConfigError> {
        let section = &settings.redaction;
        let mut rules: HashMap<&str, Arc<Rule>> = HashMap::new();
        let mut defaults = Vec::new();
        for (i, name) in section.detectors.iter().enumerate() {
            let invalid = |message: String| ConfigError::Invalid {
                key: format!("redaction.detectors[{i}]"),
                message,
            };
            let detector = Detector::from_name(name).ok_or_else(|| {
                invalid(format!(
                    "`{name}` is no detector (detectors: {})",
                    detector_names()
                ))
            })?;
            if rules.contains_key(name.as_str()) {
                return Err(invalid(format!("`{name}` is listed twice")));
            }
            let rule = Rule::detector(detector).map_err(|e| invalid(e.to_string()))?;
            rules.insert(name, Arc::new(rule));
            defaults.push(name.as_str());
        }
        for (i, pattern) in section.patterns.iter().enumerate() {
            let invalid = |field: &str, message: String| ConfigError::Invalid {
                key: format!("redaction.patterns[{i}].{field}"),
                message,
            };
            if !crate::config::valid_id(&pattern.name) {
                return Err(invalid(
                    "name",
                    format!("`{}` must be non-empty [A-Za-z0-9_-]+", pattern.name),
                ));
            }
            if Detector::from_name(&pattern.name).is_some() || rules.contains_key(&*pattern.name) {
                return Err(invalid(
                    "name",
                    format!(
                        "`{}` is taken by a detector or another pattern",
                        pattern.name
                    ),
                ));
            }
            let rule = Rule::pattern(&pattern.name, &pattern.regex)
                .map_err(|e| invalid("regex", e.to_string()))?;
            rules.insert(&pattern.name, Arc::new(rule));
            defaults.push(pattern.name.as_str());
        }
        if section.replacement.is_empty() {
            return Err(ConfigError::Invalid {
                key: "redaction.replacement".into(),
                message: "must not be empty: a reader should see that something was taken out"
                    .into(),
            });
        }
        let mut by_channel = HashMap::new();
        for channel in &settings.channels {
            let names = match channel.redact()? {
                Some(names) => names,
                None => defaults.iter().map(|n| (*n).to_owned()).collect(),
            };
            let invalid = |message: String| ConfigError::Invalid {
                key: format!("channels.{}.redact", channel.id),
                message,
            };
            let mut chosen = Vec::with_capacity(names.len());
            for name in &names {
                if let Some(rule) = rules.get(name.as_str()) {
                    chosen.push(Arc::clone(rule));
                    continue;
                }
                // A detector only channels name: made once, shared by every channel naming it.
                let detector = Detector::from_name(name).ok_or_else(|| {
                    invalid(format!(
                        "`{name}` is neither a detector ({}) nor a `[[redaction.patterns]]` name",
                        detector_names()
                    ))
                })?;
                let rule = Arc::new(Rule::detector(detector).map_err(|e| invalid(e.to_string()))?);
                rules.insert(detector.name(), Arc::clone(&rule));
                chosen.push(rule);
            }
            if !chosen.is_empty() {
                by_channel.insert(
                    channel.id.clone(),
                    Arc::new(Redactor::new(chosen, &section.replacement)),
                );
            }
        }
        Ok(Redaction { by_channel })
    }

    /// The redactor of channel `id`, if it redacts anything.
    pub fn for_channel(&self, id: &str) -> Option<&Redactor> {
        if self.by_channel.is_empty() {
            return None;
        }
        self.by_channel.get(id).map(Arc::as_ref)
    }
}

fn detector_names() -> String {
    Detector::ALL
        .iter()
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn all() -> Redactor {
        Redactor::new(
            Detector::ALL
                .into_iter()
                .map(|d| Arc::new(Rule::detector(d).unwrap()))
                .collect(),
            DEFAULT_REPLACEMENT,
        )
    }

    fn redacted(text: &str) -> String {
        all()
            .redact_text(text)
            .map(|(t, _)| t)
            .unwrap_or_else(|| text.to_owned())
    }

    #[test]
    fn payment_cards_need_a_valid_check_digit() {
        assert_eq!(
            redacted("card 4111 1111 1111 1111 please"),
            "card [redacted:payment_card] please"
        );
        assert_eq!(redacted("4111-1111-1111-1111"), "[redacted:payment_card]");
        assert_eq!(
            redacted("卡号4111111111111111谢谢"),
            "卡号[redacted:payment_card]谢谢"
        );
        // One digit changed: the Luhn check fails.
        assert_eq!(
            redacted("card 4111 1111 1111 1112"),
            "card 4111 1111 1111 1112"
        );
        // An order number of the same length, and all zeros (which pass Luhn).
        assert_eq!(redacted("order 2026113012345678"), "order 2026113012345678");
        assert_eq!(redacted("0000 0000 0000 0000"), "0000 0000 0000 0000");
        // Digits glued to it make it part of something longer.
        assert_eq!(redacted("x4111111111111111"), "x4111111111111111");
        assert_eq!(redacted("94111111111111111"), "94111111111111111");
    }

    #[test]
    fn a_card_followed_by_more_digits_is_still_found() {
        assert_eq!(
            redacted("4111 1111 1111 1111 123"),
            "[redacted:payment_card] 123"
        );
    }

    #[test]
    fn emails_are_found_in_any_script() {
        assert_eq!(
            redacted("邮箱是li.lei+cs@example.com.cn，谢谢"),
            "邮箱是[redacted:email]，谢谢"
        );
        assert_eq!(redacted("mail me: a@b"), "mail me: a@b");
        assert_eq!(redacted("at @home"), "at @home");
    }

    #[test]
    fn phones_in_international_form_and_chinese_mobiles() {
        assert_eq!(
            redacted("call +86 138-0013-8000 now"),
            "call [redacted:phone] now"
        );
        assert_eq!(redacted("+1 (415) 555-2671"), "[redacted:phone]");
        assert_eq!(redacted("我的手机13800138000"), "我的手机[redacted:phone]");
        assert_eq!(
            redacted("mobile 138 0013 8000."),
            "mobile [redacted:phone]."
        );
        // Too few digits after `+`, a number starting 12, digits glued on.
        assert_eq!(redacted("+1 234"), "+1 234");
        assert_eq!(redacted("12800138000"), "12800138000");
        assert_eq!(redacted("213800138000"), "213800138000");
        assert_eq!(redacted("+1 (415 555-2671"), "+1 (415 555-2671");
    }

    #[test]
    fn an_international_number_stops_at_fifteen_digits() {
        assert_eq!(redacted("+86 138 0013 8000 2026"), "[redacted:phone] 2026");
    }

    #[test]
    fn chinese_resident_ids_need_a_date_and_a_check_character() {
        assert_eq!(
            redacted("身份证11010519491231002X。"),
            "身份证[redacted:cn_resident_id]。"
        );
        assert_eq!(redacted("11010519491231002x"), "[redacted:cn_resident_id]");
        assert_eq!(redacted("110105194912310021"), "110105194912310021");
        // A valid check character but month 13.
        assert!(!cn_resident_id_valid(b"110105194913310020"));
    }

    #[test]
    fn ibans_need_the_mod_97_check() {
        assert_eq!(
            redacted("IBAN DE89 3704 0044 0532 0130 00 OK"),
            "IBAN [redacted:iban] OK"
        );
        assert_eq!(redacted("GB82WEST12345698765432"), "[redacted:iban]");
        assert_eq!(redacted("GB82WEST12345698765433"), "GB82WEST12345698765433");
    }

    #[test]
    fn text_without_personal_data_is_left_alone() {
        for text in [
            "",
            "hello",
            "你好，我想问一下订单的情况",
            "order 42 shipped on 2026-11-30 at 09:00",
            "version 1.2.3, build 20261130",
        ] {
            assert!(all().redact_text(text).is_none(), "{text}");
        }
    }

    #[test]
    fn overlapping_matches_keep_the_first_and_counts_are_per_rule() {
        let (text, found) = all()
            .redact_text("a@b.cn, +86 13800138000, 4111111111111111, c@d.org")
            .unwrap();
        assert_eq!(
            text,
            "[redacted:email], [redacted:phone], [redacted:payment_card], [redacted:email]"
        );
        let counts: Vec<(&str, u64)> = found.iter().collect();
        assert_eq!(counts, [("email", 2), ("phone", 1), ("payment_card", 1)]);
    }

    #[test]
    fn patterns_and_the_replacement_template() {
        let redactor = Redactor::new(
            vec![
                Arc::new(Rule::pattern("order_secret", r"SEC-[0-9]{6}").unwrap()),
                Arc::new(Rule::detector(Detector::PaymentCard).unwrap()),
            ],
            "<{name} …{last4}>",
        );
        let (text, _) = redactor
            .redact_text("code SEC-123456, card 4111 1111 1111 1111")
            .unwrap();
        assert_eq!(text, "code <order_secret …3456>, card <payment_card …1111>");
        assert!(matches!(
            Rule::pattern("bad", "(unclosed"),
            Err(RuleError::Regex(_))
        ));
        assert!(matches!(
            Rule::pattern("empty", "x*"),
            Err(RuleError::MatchesEmpty)
        ));
    }

    #[test]
    fn an_envelope_is_redacted_in_its_free_text_and_raw_but_not_its_identities() {
        let mut envelope: Envelope = serde_json::from_value(serde_json::json!({
            "id": "01JDQ4Z6K8X9V2M3N4P5Q6R7S8",
            "direction": "inbound",
            "channel": {"kind": "api", "id": "shop"},
            "sender": {"external_id": "42", "scope": "shop",
                       "identities": ["app_user:shop:42", "phone::+8613800138000"]},
            "sent_at": "2026-11-30T09:00:00Z",
            "received_at": "2026-11-30T09:00:00Z",
            "dedupe_key": "api:shop:m-1",
            "content": {"type": "file", "media": {"url": "https://files.example/a@b.cn.pdf"},
                        "name": "statement 4111111111111111.pdf", "caption": "mail a@b.cn"},
            "raw": {"user": {"identities": ["phone::+8613800138000"]},
                    "note": ["a@b.cn", 42, {"deep": "4111 1111 1111 1111"}]}
        }))
        .unwrap();
        let found = all().redact_envelope(&mut envelope);
        let value = serde_json::to_value(&envelope).unwrap();
        assert_eq!(
            value["content"]["name"],
            "statement [redacted:payment_card].pdf"
        );
        assert_eq!(value["content"]["caption"], "mail [redacted:email]");
        assert_eq!(
            value["content"]["media"]["url"],
            "https://files.example/a@b.cn.pdf"
        );
        assert_eq!(value["sender"]["identities"][1], "phone::+8613800138000");
        assert_eq!(value["raw"]["note"][0], "[redacted:email]");
        assert_eq!(value["raw"]["note"][1], 42);
        assert_eq!(value["raw"]["note"][2]["deep"], "[redacted:payment_card]");
        // The identity inside raw is a string like any other there.
        assert_eq!(
            value["raw"]["user"]["identities"][0],
            "phone::[redacted:phone]"
        );
        let counts: Vec<(&str, u64)> = found.iter().collect();
        assert_eq!(counts, [("payment_card", 2), ("email", 2), ("phone", 1)]);
    }

    proptest::proptest! {
        /// Any text, of the characters the detectors look at and others (multi-byte ones
        /// among them): no panic, and a redaction reports what it replaced.
        #[test]
        fn redaction_never_panics(text in "[0-9 +()\\-.@a-zA-Z你好X]{0,80}") {
            if let Some((redacted, found)) = all().redact_text(&text) {
                proptest::prop_assert!(!found.is_empty());
                proptest::prop_assert!(redacted.contains("[redacted:"), "{redacted}");
            }
        }
    }
}
