//! Time source shared by every component, so tests and replays agree on "now"; and fast RFC 3339
//! formatting of timestamps, byte-for-byte what chrono writes.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

/// The current time in UTC.
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// The last instant RFC 3339 writes without a sign and a fifth year digit,
/// `9999-12-31T23:59:59.999Z`, in milliseconds since the Unix epoch.
pub const MAX_RFC3339_MILLIS: i64 = 253_402_300_799_999;

/// The instant `secs` seconds after the Unix epoch, for a time a platform sends: `None` before
/// the epoch or past the year 9999, which an envelope's RFC 3339 timestamps cannot carry.
pub fn from_unix_secs(secs: i64) -> Option<DateTime<Utc>> {
    from_unix_millis(secs.checked_mul(1000)?)
}

/// The instant `millis` milliseconds after the Unix epoch, within the same bounds as
/// [`from_unix_secs`].
pub fn from_unix_millis(millis: i64) -> Option<DateTime<Utc>> {
    if (0..=MAX_RFC3339_MILLIS).contains(&millis) {
        DateTime::from_timestamp_millis(millis)
    } else {
        None
    }
}

/// How many digits of the second's fraction a timestamp is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fraction {
    /// None, 3, 6 or 9, the fewest that hold the fraction exactly: what chrono's serde
    /// `Serialize` for `DateTime<Utc>` writes (`to_rfc3339_opts(SecondsFormat::AutoSi, true)`).
    Auto,
    /// Always 9 (`to_rfc3339_opts(SecondsFormat::Nanos, true)`).
    Nanos,
}

impl Fraction {
    /// chrono's name for this choice.
    fn seconds_format(self) -> SecondsFormat {
        match self {
            Fraction::Auto => SecondsFormat::AutoSi,
            Fraction::Nanos => SecondsFormat::Nanos,
        }
    }
}

/// Length of the longest timestamp [`Rfc3339`] holds: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const MAX_LEN: usize = 30;

/// A UTC timestamp as RFC 3339 text (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`), formatted into a
/// buffer on the stack: exactly the text of chrono's `to_rfc3339_opts(format, true)`, without
/// an allocation or `core::fmt`.
#[derive(Clone, Copy)]
pub struct Rfc3339 {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl Rfc3339 {
    /// Formats `at`, or `None` when its year is outside 0000–9999 (chrono writes those with a
    /// sign and more digits; [`with_rfc3339`] falls back to chrono for them).
    pub fn new(at: &DateTime<Utc>, fraction: Fraction) -> Option<Self> {
        let naive = at.naive_utc();
        let (date, time) = (naive.date(), naive.time());
        let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
        let seconds = time.num_seconds_from_midnight();
        // A leap second is held as nanoseconds past 1e9; chrono writes it as second 60.
        let (mut second, mut nano) = (seconds % 60, time.nanosecond());
        if nano >= 1_000_000_000 {
            second += 1;
            nano -= 1_000_000_000;
        }
        let mut buf = *b"0000-00-00T00:00:00.000000000Z";
        put_pair(&mut buf, 0, year / 100);
        put_pair(&mut buf, 2, year);
        put_pair(&mut buf, 5, date.month());
        put_pair(&mut buf, 8, date.day());
        put_pair(&mut buf, 11, seconds / 3600);
        put_pair(&mut buf, 14, seconds / 60 % 60);
        put_pair(&mut buf, 17, second);
        let digits = match fraction {
            Fraction::Nanos => 9,
            Fraction::Auto if nano == 0 => 0,
            Fraction::Auto if nano % 1_000_000 == 0 => 3,
            Fraction::Auto if nano % 1_000 == 0 => 6,
            Fraction::Auto => 9,
        };
        let len = if digits == 0 {
            19
        } else {
            put_pair(&mut buf, 20, nano / 10_000_000);
            put_pair(&mut buf, 22, nano / 100_000);
            put_pair(&mut buf, 24, nano / 1_000);
            put_pair(&mut buf, 26, nano / 10);
            // `nano % 10 < 10`, so the cast is lossless.
            buf[28] = b'0' + (nano % 10) as u8;
            20 + digits
        };
        buf[len] = b'Z';
        Some(Rfc3339 { buf, len: len + 1 })
    }

    /// The text, as its (ASCII) bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written, so this cannot fail.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl std::fmt::Debug for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Rfc3339").field(&self.as_str()).finish()
    }
}

/// `00` to `99`.
const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut pairs = [[0; 2]; 100];
    let mut n = 0;
    while n < 100 {
        pairs[n] = [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
        n += 1;
    }
    pairs
};

/// Writes the last two decimal digits of `n` at `buf[at..at + 2]`.
#[inline]
fn put_pair(buf: &mut [u8; MAX_LEN], at: usize, n: u32) {
    let [tens, ones] = DIGIT_PAIRS[(n % 100) as usize];
    buf[at] = tens;
    buf[at + 1] = ones;
}

/// Calls `f` with the (ASCII) bytes of `at` as RFC 3339 text, exactly chrono's
/// `to_rfc3339_opts(format, true)`: formatted on the stack for years 0000–9999, by chrono
/// otherwise.
pub fn with_rfc3339<R>(at: &DateTime<Utc>, fraction: Fraction, f: impl FnOnce(&[u8]) -> R) -> R {
    match Rfc3339::new(at, fraction) {
        Some(text) => f(text.as_bytes()),
        None => f(at
            .to_rfc3339_opts(fraction.seconds_format(), true)
            .as_bytes()),
    }
}

/// Serializes a `DateTime<Utc>` exactly like chrono's own `Serialize` (RFC 3339, `Z`, fraction
/// digits as [`Fraction::Auto`]), but faster: for `#[serde(serialize_with = "...")]`.
/// Deserializing is left to chrono.
pub mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Serialize, Serializer};

    use super::{Fraction, Rfc3339};

    /// Serializes `at` as chrono does.
    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
        match Rfc3339::new(at, Fraction::Auto) {
            Some(text) => serializer.serialize_str(text.as_str()),
            None => at.serialize(serializer),
        }
    }

    /// The same for an `Option<DateTime<Utc>>` (`None` is serialized as none, e.g. JSON
    /// `null`, as serde does for any `Option`).
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Serialize, Serializer};

        /// Serializes `at` as chrono and serde do.
        pub fn serialize<S: Serializer>(
            at: &Option<DateTime<Utc>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match at {
                Some(at) => serializer.serialize_some(&Fast(at)),
                None => serializer.serialize_none(),
            }
        }

        /// A timestamp serialized by [`super::serialize`].
        struct Fast<'a>(&'a DateTime<Utc>);

        impl Serialize for Fast<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                super::serialize(self.0, serializer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone};
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn platform_times_outside_what_rfc_3339_writes_are_refused() {
        let last = from_unix_millis(MAX_RFC3339_MILLIS).unwrap();
        assert_eq!(
            last.to_rfc3339_opts(SecondsFormat::Millis, true),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(from_unix_millis(MAX_RFC3339_MILLIS + 1), None);
        assert_eq!(from_unix_millis(-1), None);
        assert_eq!(from_unix_secs(i64::MAX), None);
        assert_eq!(from_unix_secs(253_402_300_800), None);
        assert_eq!(
            from_unix_secs(1_764_000_000).map(|t| t.timestamp()),
            Some(1_764_000_000)
        );
    }

    /// What chrono writes for `at`: its serde encoding (a JSON string) and the Nanos format.
    fn chrono_texts(at: &DateTime<Utc>) -> (String, String) {
        let json = serde_json::to_string(at).unwrap();
        let auto = serde_json::from_str::<String>(&json).unwrap();
        assert_eq!(auto, at.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        (auto, at.to_rfc3339_opts(SecondsFormat::Nanos, true))
    }

    /// `at` formatted by [`with_rfc3339`].
    fn text(at: &DateTime<Utc>, fraction: Fraction) -> String {
        with_rfc3339(at, fraction, |bytes| {
            String::from_utf8(bytes.to_vec()).unwrap()
        })
    }

    /// Checks every fast path against chrono for `at`.
    fn check(at: DateTime<Utc>) {
        let (auto, nanos) = chrono_texts(&at);
        assert_eq!(text(&at, Fraction::Auto), auto);
        assert_eq!(text(&at, Fraction::Nanos), nanos);
        let mut json = Vec::new();
        rfc3339::serialize(&at, &mut serde_json::Serializer::new(&mut json)).unwrap();
        assert_eq!(json, serde_json::to_vec(&at).unwrap(), "{at:?}");
        let mut json = Vec::new();
        rfc3339::option::serialize(&Some(at), &mut serde_json::Serializer::new(&mut json)).unwrap();
        assert_eq!(json, serde_json::to_vec(&Some(at)).unwrap(), "{at:?}");
        if (0..=9999).contains(&at.year()) {
            let fast = Rfc3339::new(&at, Fraction::Auto).unwrap();
            assert_eq!(fast.as_str(), auto);
        } else {
            assert!(Rfc3339::new(&at, Fraction::Auto).is_none());
        }
    }

    fn ymd_hms_nano(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, n: u32) -> DateTime<Utc> {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_nano_opt(h, mi, s, n)
            .unwrap()
            .and_utc()
    }

    #[test]
    fn formats_fixed_instants_like_chrono() {
        for nano in [
            0,
            1,
            10,
            999,
            1_000,
            1_001,
            999_000,
            1_000_000,
            1_000_001,
            1_001_000,
            412_000_000,
            412_300_000,
            412_345_000,
            412_345_600,
            412_345_678,
            999_999_999,
        ] {
            for (y, mo, d, h, mi, s) in [
                (0, 1, 1, 0, 0, 0),
                (1, 2, 3, 4, 5, 6),
                (999, 12, 31, 23, 59, 59),
                (1969, 12, 31, 23, 59, 59),
                (1970, 1, 1, 0, 0, 0),
                (2000, 2, 29, 12, 30, 45),
                (2026, 11, 24, 9, 0, 0),
                (9999, 12, 31, 23, 59, 59),
            ] {
                check(ymd_hms_nano(y, mo, d, h, mi, s, nano));
            }
        }
        let at = ymd_hms_nano(2026, 11, 24, 9, 0, 0, 412_000_000);
        assert_eq!(text(&at, Fraction::Auto), "2026-11-24T09:00:00.412Z");
        assert_eq!(text(&at, Fraction::Nanos), "2026-11-24T09:00:00.412000000Z");
    }

    #[test]
    fn formats_leap_seconds_like_chrono() {
        for nano in [1_000_000_000, 1_000_000_001, 1_500_000_000, 1_999_999_999] {
            let at = ymd_hms_nano(2016, 12, 31, 23, 59, 59, nano);
            check(at);
            assert!(text(&at, Fraction::Auto).contains(":60"));
        }
    }

    #[test]
    fn falls_back_to_chrono_outside_years_0_to_9999() {
        for at in [
            ymd_hms_nano(-1, 12, 31, 23, 59, 59, 999_999_999),
            ymd_hms_nano(-10000, 1, 1, 0, 0, 0, 0),
            ymd_hms_nano(10000, 1, 1, 0, 0, 0, 0),
            ymd_hms_nano(12345, 6, 7, 8, 9, 10, 11_000),
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
        ] {
            check(at);
        }
    }

    #[test]
    fn serializes_none_like_serde() {
        let mut json = Vec::new();
        rfc3339::option::serialize(&None, &mut serde_json::Serializer::new(&mut json)).unwrap();
        assert_eq!(json, b"null");
    }

    /// The records that go into events write each timestamp exactly as chrono's own
    /// `Serialize` would.
    #[test]
    fn records_serialize_timestamps_like_chrono() {
        use crate::envelope::Envelope;
        use crate::model::{Agent, Conversation, Customer};

        let [t0, t1, t2, t3] = [
            "2026-11-24T09:00:00Z",
            "2026-11-24T09:00:01.412Z",
            "2026-11-24T09:00:02.412345Z",
            "2026-11-24T09:00:03.412345678Z",
        ]
        .map(|s| s.parse::<DateTime<Utc>>().unwrap());
        let chrono_json = |at: &DateTime<Utc>| serde_json::to_value(at).unwrap();
        let customer: Customer = serde_json::from_value(serde_json::json!({
            "id": "u1", "tenant": "default", "display_name": null,
            "identities": [{"key": "phone::+8613800000000", "strength": "strong", "linked_at": t1}],
            "merged_from": [], "tags": [], "attributes": {},
            "first_seen": t2, "last_seen": t3,
        }))
        .unwrap();
        let json = serde_json::to_value(&customer).unwrap();
        assert_eq!(json["identities"][0]["linked_at"], chrono_json(&t1));
        assert_eq!(json["first_seen"], chrono_json(&t2));
        assert_eq!(json["last_seen"], chrono_json(&t3));

        let conversation: Conversation = serde_json::from_value(serde_json::json!({
            "id": "c1", "tenant": "default", "customer_id": "u1", "status": "assigned",
            "pool": "default", "agent_id": "a1", "channel": {"kind": "api", "id": "api"},
            "recipient": {"external_id": "x", "scope": "", "identities": []},
            "last_inbound_id": null, "last_inbound_at": t3, "replies_since_inbound": 0,
            "created_at": t0, "updated_at": t1, "queued_at": t2, "assigned_at": t3,
            "closed_at": null, "close_reason": null, "message_count": 1,
        }))
        .unwrap();
        let json = serde_json::to_value(&conversation).unwrap();
        for (name, at) in [
            ("last_inbound_at", &conversation.last_inbound_at),
            ("queued_at", &conversation.queued_at),
            ("assigned_at", &conversation.assigned_at),
            ("closed_at", &conversation.closed_at),
        ] {
            assert_eq!(json[name], serde_json::to_value(at).unwrap(), "{name}");
        }
        assert_eq!(json["created_at"], chrono_json(&t0));
        assert_eq!(json["updated_at"], chrono_json(&t1));
        assert_eq!(json["closed_at"], serde_json::Value::Null);

        let agent: Agent = serde_json::from_value(serde_json::json!({
            "id": "a1", "name": "A", "pools": [], "skills": [], "capacity": 1,
            "status": "online", "conversations": [], "idle_since": t2, "updated_at": t3,
        }))
        .unwrap();
        let json = serde_json::to_value(&agent).unwrap();
        assert_eq!(json["idle_since"], chrono_json(&t2));
        assert_eq!(json["updated_at"], chrono_json(&t3));

        let envelope: Envelope = serde_json::from_value(serde_json::json!({
            "id": "01KAVQ5C3X8N2R4T6V8W0Y2Z4A", "direction": "inbound",
            "channel": {"kind": "api", "id": "api"},
            "sender": {"external_id": "x", "identities": []},
            "sent_at": t0, "received_at": t3, "dedupe_key": "k",
            "content": {"type": "text", "text": "hi"},
        }))
        .unwrap();
        let json = serde_json::to_value(&envelope).unwrap();
        assert_eq!(json["sent_at"], chrono_json(&t0));
        assert_eq!(json["received_at"], chrono_json(&t3));
    }

    /// Seconds since the epoch from year 0 to the end of year 9999.
    fn seconds_in_years_0_to_9999() -> std::ops::RangeInclusive<i64> {
        ymd_hms_nano(0, 1, 1, 0, 0, 0, 0).timestamp()
            ..=ymd_hms_nano(9999, 12, 31, 23, 59, 59, 0).timestamp()
    }

    /// Nanoseconds of a second, as often whole seconds, millis and micros as arbitrary.
    fn nanos() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0u32),
            (0u32..1000).prop_map(|ms| ms * 1_000_000),
            (0u32..1_000_000).prop_map(|us| us * 1_000),
            0u32..1_000_000_000,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn formats_random_instants_like_chrono(
            secs in seconds_in_years_0_to_9999(),
            nano in nanos(),
        ) {
            check(Utc.timestamp_opt(secs, nano).unwrap());
        }

        #[test]
        fn formats_random_recent_instants_like_chrono(
            secs in 0i64..4_102_444_800,
            nano in nanos(),
        ) {
            check(Utc.timestamp_opt(secs, nano).unwrap());
        }
    }
}
