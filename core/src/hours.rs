//! A pool's business hours (`[pools.hours]`): the weekly opening ranges in one IANA time zone,
//! whole closed dates, and the automatic reply a customer gets outside them. Everything is
//! computed in the zone's local time, so a range keeps its wall-clock times across a daylight
//! saving change.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

use crate::config::ConfigError;

/// Minutes in a day: `24:00`, the end of a range that lasts until midnight.
const DAY_MINUTES: u16 = 24 * 60;

/// The day keys, Monday first (as [`chrono::Weekday::num_days_from_monday`] counts).
pub const DAY_KEYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `[pools.hours]` as written in the configuration; [`HoursSettings::schedule`] checks it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoursSettings {
    /// IANA time zone name (`Asia/Shanghai`); required.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Monday's ranges, `"09:00-12:00,13:00-18:00"`; absent: closed all day.
    #[serde(default)]
    pub mon: Option<String>,
    /// Tuesday's ranges.
    #[serde(default)]
    pub tue: Option<String>,
    /// Wednesday's ranges.
    #[serde(default)]
    pub wed: Option<String>,
    /// Thursday's ranges.
    #[serde(default)]
    pub thu: Option<String>,
    /// Friday's ranges.
    #[serde(default)]
    pub fri: Option<String>,
    /// Saturday's ranges.
    #[serde(default)]
    pub sat: Option<String>,
    /// Sunday's ranges.
    #[serde(default)]
    pub sun: Option<String>,
    /// Whole days closed (`YYYY-MM-DD`, in `timezone`), such as holidays.
    #[serde(default)]
    pub closed_dates: Vec<String>,
    /// The text sent to a customer whose message opens a conversation while the pool is closed.
    #[serde(default)]
    pub outside_hours_reply: Option<String>,
}

/// One opening range of a day, in minutes since local midnight: `start` inclusive, `end`
/// exclusive (at most 1440, `24:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    /// First minute open.
    pub start: u16,
    /// First minute closed again.
    pub end: u16,
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

/// A checked weekly schedule: when a pool is open, and what it answers when it is not.
#[derive(Debug, Clone)]
pub struct Hours {
    zone: Tz,
    /// Ranges per weekday, Monday first, sorted and disjoint.
    days: [Vec<Range>; 7],
    closed_dates: BTreeSet<NaiveDate>,
    reply: String,
}

impl Hours {
    /// Whether the pool is open at `at`: `at`'s local date is not a closed date and its local
    /// time of day falls in one of that weekday's ranges.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.zone);
        if self.closed_dates.contains(&local.date_naive()) {
            return false;
        }
        let day = local.weekday().num_days_from_monday() as usize;
        // Hour and minute fit in u16; minutes since midnight never exceed 1439.
        let minute = (local.hour() * 60 + local.minute()) as u16;
        self.days
            .get(day)
            .is_some_and(|ranges| ranges.iter().any(|r| r.start <= minute && minute < r.end))
    }

    /// The automatic reply sent outside the hours.
    pub fn reply(&self) -> &str {
        &self.reply
    }

    /// The IANA name of the schedule's time zone.
    pub fn timezone(&self) -> &str {
        self.zone.name()
    }

    /// The ranges of each weekday, Monday first.
    pub fn days(&self) -> &[Vec<Range>; 7] {
        &self.days
    }

    /// The dates closed all day, in order.
    pub fn closed_dates(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        self.closed_dates.iter().copied()
    }
}

impl HoursSettings {
    /// Checks the settings found at `key` (such as `pools[0].hours`) and builds the schedule;
    /// errors name the offending key (`pools[0].hours.tue`).
    pub fn schedule(&self, key: &str) -> Result<Hours, ConfigError> {
        let invalid = |sub: &str, message: String| ConfigError::Invalid {
            key: format!("{key}.{sub}"),
            message,
        };
        let zone_name = self.timezone.as_deref().ok_or_else(|| {
            invalid(
                "timezone",
                "required with [pools.hours] (an IANA name such as `Asia/Shanghai`)".into(),
            )
        })?;
        let zone: Tz = zone_name.parse().map_err(|_| {
            invalid(
                "timezone",
                format!("`{zone_name}` is not an IANA time zone name (such as `Europe/Berlin`)"),
            )
        })?;
        let given = [
            &self.mon, &self.tue, &self.wed, &self.thu, &self.fri, &self.sat, &self.sun,
        ];
        let mut days: [Vec<Range>; 7] = Default::default();
        for ((slot, value), name) in days.iter_mut().zip(given).zip(DAY_KEYS) {
            if let Some(text) = value {
                *slot = parse_day(text).map_err(|m| invalid(name, m))?;
            }
        }
        let mut closed_dates = BTreeSet::new();
        for (i, date) in self.closed_dates.iter().enumerate() {
            closed_dates
                .insert(parse_date(date).map_err(|m| invalid(&format!("closed_dates[{i}]"), m))?);
        }
        let reply = match self.outside_hours_reply.as_deref() {
            Some(text) if !text.trim().is_empty() => text.to_owned(),
            Some(_) => return Err(invalid("outside_hours_reply", "must not be blank".into())),
            None => {
                return Err(invalid(
                    "outside_hours_reply",
                    "required with [pools.hours]: the text customers get outside the hours".into(),
                ));
            }
        };
        Ok(Hours {
            zone,
            days,
            closed_dates,
            reply,
        })
    }
}

/// A day's ranges, `"09:00-12:00,13:00-18:00"`: sorted, each non-empty, none overlapping.
fn parse_day(text: &str) -> Result<Vec<Range>, String> {
    if text.trim().is_empty() {
        return Err("is empty; leave the day out to close it all day".into());
    }
    let mut ranges = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (start, end) = part
            .split_once('-')
            .ok_or_else(|| format!("`{part}` is not a range such as `09:00-18:00`"))?;
        let start = parse_time(start.trim(), false)?;
        let end = parse_time(end.trim(), true)?;
        if start >= end {
            return Err(format!("`{part}` must start before it ends"));
        }
        ranges.push(Range { start, end });
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        if let [a, b] = pair
            && b.start < a.end
        {
            return Err(format!("`{a}` and `{b}` overlap"));
        }
    }
    Ok(ranges)
}

/// `HH:MM` in minutes since midnight; `24:00` only as the end of a range.
fn parse_time(text: &str, end: bool) -> Result<u16, String> {
    let bad = || {
        format!(
            "`{text}` is not a time of day `HH:MM` (00:00 to 23:59{})",
            if end { ", or 24:00" } else { "" }
        )
    };
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(h) || !two_digits(m) {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let minutes = h * 60 + m;
    if m > 59 || minutes > DAY_MINUTES || (minutes == DAY_MINUTES && !end) {
        return Err(bad());
    }
    Ok(minutes)
}

/// A closed date, `YYYY-MM-DD`.
fn parse_date(text: &str) -> Result<NaiveDate, String> {
    let well_formed = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let bad = || format!("`{text}` is not a date `YYYY-MM-DD`");
    if !well_formed {
        return Err(bad());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn shanghai() -> Hours {
        HoursSettings {
            timezone: Some("Asia/Shanghai".into()),
            mon: Some("09:00-18:00".into()),
            tue: Some("09:00-12:00, 13:00-18:00".into()),
            sat: Some("00:00-24:00".into()),
            sun: Some("22:00-24:00".into()),
            closed_dates: vec!["2026-10-01".into()],
            outside_hours_reply: Some("closed".into()),
            ..HoursSettings::default()
        }
        .schedule("pools[0].hours")
        .unwrap()
    }

    // 2026-11-30 is a Monday; Shanghai is UTC+8 all year.
    #[test]
    fn inside_and_outside_a_range() {
        let h = shanghai();
        assert!(h.is_open(at("2026-11-30T12:00:00+08:00")));
        assert!(!h.is_open(at("2026-11-30T03:00:00+08:00")));
        assert!(!h.is_open(at("2026-11-30T20:00:00+08:00")));
        // 02:00 UTC is 10:00 in Shanghai.
        assert!(h.is_open(at("2026-11-30T02:00:00Z")));
        assert_eq!(h.reply(), "closed");
        assert_eq!(h.timezone(), "Asia/Shanghai");
    }

    #[test]
    fn a_range_starts_inclusive_and_ends_exclusive() {
        let h = shanghai();
        assert!(!h.is_open(at("2026-11-30T08:59:59+08:00")));
        assert!(h.is_open(at("2026-11-30T09:00:00+08:00")));
        assert!(h.is_open(at("2026-11-30T17:59:59+08:00")));
        assert!(!h.is_open(at("2026-11-30T18:00:00+08:00")));
    }

    #[test]
    fn a_split_day_is_closed_between_its_ranges() {
        let h = shanghai();
        assert!(h.is_open(at("2026-12-01T11:59:00+08:00")));
        assert!(!h.is_open(at("2026-12-01T12:00:00+08:00")));
        assert!(!h.is_open(at("2026-12-01T12:30:00+08:00")));
        assert!(h.is_open(at("2026-12-01T13:00:00+08:00")));
    }

    #[test]
    fn midnight_and_24_00() {
        let h = shanghai();
        // Saturday all day, from its first minute to its last.
        assert!(h.is_open(at("2026-12-05T00:00:00+08:00")));
        assert!(h.is_open(at("2026-12-05T23:59:59+08:00")));
        // Sunday 22:00-24:00 runs to midnight; Monday starts closed.
        assert!(h.is_open(at("2026-12-06T23:59:00+08:00")));
        assert!(!h.is_open(at("2026-12-07T00:00:00+08:00")));
        assert!(!h.is_open(at("2026-12-06T21:59:00+08:00")));
    }

    #[test]
    fn an_absent_day_is_closed_all_day() {
        let h = shanghai();
        // Wednesday 2026-12-02 has no ranges.
        for time in ["00:00", "09:00", "12:00", "23:59"] {
            assert!(
                !h.is_open(at(&format!("2026-12-02T{time}:00+08:00"))),
                "{time}"
            );
        }
    }

    #[test]
    fn a_closed_date_is_closed_in_the_zone_s_local_date() {
        let h = shanghai();
        // 2026-10-05 is a Monday, open by its weekday: listed as a closed date, it is closed.
        let mut s = HoursSettings {
            timezone: Some("Asia/Shanghai".into()),
            mon: Some("09:00-18:00".into()),
            closed_dates: vec!["2026-10-05".into()],
            outside_hours_reply: Some("closed".into()),
            ..HoursSettings::default()
        };
        let holiday = s.schedule("h").unwrap();
        assert!(!holiday.is_open(at("2026-10-05T10:00:00+08:00")));
        // The next Monday is open, and so is 2026-10-05 without the closed date.
        assert!(holiday.is_open(at("2026-10-12T10:00:00+08:00")));
        s.closed_dates.clear();
        assert!(
            s.schedule("h")
                .unwrap()
                .is_open(at("2026-10-05T10:00:00+08:00"))
        );
        assert!(!h.is_open(at("2026-10-01T10:00:00+08:00")));
    }

    #[test]
    fn daylight_saving_time_keeps_the_local_wall_clock() {
        // Berlin moves from UTC+1 to UTC+2 on Sunday 2026-03-29 at 02:00 local time.
        let h = HoursSettings {
            timezone: Some("Europe/Berlin".into()),
            sun: Some("09:00-18:00".into()),
            outside_hours_reply: Some("closed".into()),
            ..HoursSettings::default()
        }
        .schedule("h")
        .unwrap();
        // 07:30 UTC is 09:30 CEST (open); at a fixed UTC+1 it would be 08:30 (closed).
        assert!(h.is_open(at("2026-03-29T07:30:00Z")));
        assert!(!h.is_open(at("2026-03-29T06:59:00Z")));
        // 16:30 UTC is 18:30 CEST (closed); at UTC+1 it would be 17:30 (open).
        assert!(!h.is_open(at("2026-03-29T16:30:00Z")));
        assert!(h.is_open(at("2026-03-29T15:59:00Z")));
        // A week earlier, in winter time, 09:00 local is 08:00 UTC.
        assert!(!h.is_open(at("2026-03-22T07:30:00Z")));
        assert!(h.is_open(at("2026-03-22T08:00:00Z")));
    }

    fn error_of(s: HoursSettings) -> (String, String) {
        match s.schedule("pools[0].hours") {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    fn with_day(tue: &str) -> HoursSettings {
        HoursSettings {
            timezone: Some("UTC".into()),
            tue: Some(tue.into()),
            outside_hours_reply: Some("closed".into()),
            ..HoursSettings::default()
        }
    }

    #[test]
    fn bad_ranges_name_their_day() {
        for bad in [
            "",
            "9:00-18:00",
            "09:00",
            "09:00-18",
            "18:00-09:00",
            "09:00-09:00",
            "24:00-24:00",
            "09:00-24:01",
            "09:60-10:00",
            "25:00-26:00",
            "09:00-12:00,11:00-13:00",
            "09:00-12:00,,13:00-14:00",
            "aa:bb-cc:dd",
            "+9:00-10:00",
        ] {
            let (key, message) = error_of(with_day(bad));
            assert_eq!(key, "pools[0].hours.tue", "{bad:?}: {message}");
        }
        // Ranges that touch do not overlap; their order does not matter.
        let ok = with_day("13:00-18:00,09:00-13:00").schedule("h").unwrap();
        assert_eq!(ok.days()[1].len(), 2);
    }

    #[test]
    fn every_other_bad_value_names_its_key() {
        let base = with_day("09:00-18:00");
        let cases = [
            (
                HoursSettings {
                    timezone: None,
                    ..base.clone()
                },
                "pools[0].hours.timezone",
            ),
            (
                HoursSettings {
                    timezone: Some("Mars/Olympus".into()),
                    ..base.clone()
                },
                "pools[0].hours.timezone",
            ),
            (
                HoursSettings {
                    closed_dates: vec!["2026-10-01".into(), "2026-13-01".into()],
                    ..base.clone()
                },
                "pools[0].hours.closed_dates[1]",
            ),
            (
                HoursSettings {
                    closed_dates: vec!["2026-1-01".into()],
                    ..base.clone()
                },
                "pools[0].hours.closed_dates[0]",
            ),
            (
                HoursSettings {
                    outside_hours_reply: None,
                    ..base.clone()
                },
                "pools[0].hours.outside_hours_reply",
            ),
            (
                HoursSettings {
                    outside_hours_reply: Some("  ".into()),
                    ..base.clone()
                },
                "pools[0].hours.outside_hours_reply",
            ),
        ];
        for (settings, want) in cases {
            assert_eq!(error_of(settings).0, want);
        }
    }
}
