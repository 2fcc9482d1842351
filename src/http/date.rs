//! HTTP dates (RFC 9110 §5.6.7): the three forms a recipient must accept, and nothing else.
//!
//! `Expires`, `Date`, `Last-Modified` and `If-Modified-Since` decide how long one origin's
//! answer is served to everyone, so they are read exactly as the RFC writes them:
//!
//! - IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT` (the one form senders must use);
//! - the obsolete RFC 850 form, `Sunday, 06-Nov-94 08:49:37 GMT`, whose two-digit year is the
//!   most recent year with those digits that is not more than 50 years in the future;
//! - the obsolete asctime form, `Sun Nov  6 08:49:37 1994`.
//!
//! Single spaces only, two-digit days, hours, minutes and seconds, a valid calendar date, `GMT`
//! and no other zone. The one relaxation is the one RFC 9111 §4.2 asks of caches: names
//! (weekday, month, `GMT`) match case-insensitively. The weekday is not checked against the
//! date (the RFC gives it no meaning beyond syntax). Anything else is invalid; for `Expires`
//! that means "already expired" (RFC 9111 §5.3), so a malformed date can never make a response
//! fresh. The `httpdate` and `time` crates accept more (runs of spaces, for one).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const LONG_DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Parses an HTTP-date; `None` for anything RFC 9110 §5.6.7 does not allow.
pub(crate) fn parse(value: &[u8]) -> Option<SystemTime> {
    parse_at(value, SystemTime::now())
}

/// [`parse`], with `now` deciding the century of an RFC 850 two-digit year.
fn parse_at(value: &[u8], now: SystemTime) -> Option<SystemTime> {
    let s = std::str::from_utf8(value).ok()?;
    if !s.is_ascii() {
        return None;
    }
    let civil = if let Some(rest) = strip_name(s, &DAYS).and_then(|r| r.strip_prefix(", ")) {
        imf_fixdate(rest)?
    } else if let Some(rest) = strip_name(s, &LONG_DAYS).and_then(|r| r.strip_prefix(", ")) {
        rfc850(rest, now)?
    } else {
        asctime(strip_name(s, &DAYS)?.strip_prefix(' ')?)?
    };
    civil.to_system_time()
}

/// Formats a time as an IMF-fixdate, the form every recipient reads.
pub(crate) fn format(time: SystemTime) -> String {
    httpdate::fmt_http_date(time)
}

/// A broken-down UTC time, validated as it is built.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    seconds_of_day: u64,
}

impl Civil {
    fn new(year: i64, month: u32, day: u32, time: u64) -> Option<Self> {
        let days_in_month = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
            2 => 28,
            _ => return None,
        };
        (1..=days_in_month).contains(&day).then_some(Self {
            year,
            month,
            day,
            seconds_of_day: time,
        })
    }

    fn to_system_time(&self) -> Option<SystemTime> {
        let days = days_from_civil(self.year, self.month, self.day);
        let secs = days
            .checked_mul(86_400)?
            .checked_add(i64::try_from(self.seconds_of_day).ok()?)?;
        // Dates before 1970 are in the past all the same: the epoch serves for them.
        let secs = u64::try_from(secs).unwrap_or(0);
        UNIX_EPOCH.checked_add(Duration::from_secs(secs))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// `s` after one of `names` (case-insensitively, RFC 9111 §4.2).
fn strip_name<'a>(s: &'a str, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|name| {
        let head = s.get(..name.len())?;
        head.eq_ignore_ascii_case(name).then(|| &s[name.len()..])
    })
}

/// The month number of a three-letter month name.
fn month(s: &str) -> Option<u32> {
    let index = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(s))?;
    u32::try_from(index + 1).ok()
}

/// Exactly `n` ASCII digits, as a number.
fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `HH:MM:SS` (a leap second allowed, as RFC 9110 does), in seconds.
fn time_of_day(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (hour, minute, second) = (
        digits(&s[..2], 2)?,
        digits(&s[3..5], 2)?,
        digits(&s[6..], 2)?,
    );
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(u64::from(hour * 3600 + minute * 60 + second))
}

/// `GMT`, matched case-insensitively; no other zone is valid.
fn gmt(s: &str) -> bool {
    s.eq_ignore_ascii_case("GMT")
}

/// `DD Mon YYYY HH:MM:SS GMT` (after `Day, `).
fn imf_fixdate(s: &str) -> Option<Civil> {
    let mut parts = s.split(' ');
    let day = digits(parts.next()?, 2)?;
    let month = month(parts.next()?)?;
    let year = digits(parts.next()?, 4)?;
    let time = time_of_day(parts.next()?)?;
    (gmt(parts.next()?) && parts.next().is_none()).then_some(())?;
    Civil::new(i64::from(year), month, day, time)
}

/// `DD-Mon-YY HH:MM:SS GMT` (after `Weekday, `).
fn rfc850(s: &str, now: SystemTime) -> Option<Civil> {
    let mut parts = s.split(' ');
    let date = parts.next()?;
    let time = time_of_day(parts.next()?)?;
    (gmt(parts.next()?) && parts.next().is_none()).then_some(())?;
    let mut date = date.split('-');
    let day = digits(date.next()?, 2)?;
    let month = month(date.next()?)?;
    let two_digits = i64::from(digits(date.next()?, 2)?);
    date.next().is_none().then_some(())?;
    // RFC 9110 §5.6.7: a year that appears more than 50 years in the future is the most
    // recent past year with the same last two digits. Of the candidates in the centuries
    // around now, the latest not more than 50 years ahead is taken.
    let horizon = now.checked_add(Duration::from_secs(50 * 31_556_952))?;
    let approx_year = 1970 + now.duration_since(UNIX_EPOCH).ok()?.as_secs() / 31_556_952;
    let century = i64::try_from(approx_year - approx_year % 100).ok()?;
    let year = [century + 100, century, century - 100]
        .into_iter()
        .map(|c| c + two_digits)
        .find(|&year| {
            Civil::new(year, month, day, time)
                .and_then(|c| c.to_system_time())
                .is_some_and(|t| t <= horizon)
        })?;
    Civil::new(year, month, day, time)
}

/// `Mon  D HH:MM:SS YYYY` or `Mon DD HH:MM:SS YYYY` (after `Day `).
fn asctime(s: &str) -> Option<Civil> {
    let month = month(s.get(..3)?)?;
    let rest = s[3..].strip_prefix(' ')?;
    let (day, rest) = match rest.strip_prefix(' ') {
        Some(rest) => (digits(rest.get(..1)?, 1)?, &rest[1..]),
        None => (digits(rest.get(..2)?, 2)?, &rest[2..]),
    };
    let mut parts = rest.strip_prefix(' ')?.split(' ');
    let time = time_of_day(parts.next()?)?;
    let year = digits(parts.next()?, 4)?;
    parts.next().is_none().then_some(())?;
    Civil::new(i64::from(year), month, day, time)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2024-06-01, for the RFC 850 century rule.
    const NOW: u64 = 1_717_200_000;

    fn parsed(s: &str) -> Option<u64> {
        parse_at(s.as_bytes(), at(NOW)).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs())
    }

    #[test]
    fn the_three_forms_of_rfc_9110_name_one_instant() {
        let instant = Some(784_111_777);
        assert_eq!(parsed("Sun, 06 Nov 1994 08:49:37 GMT"), instant);
        assert_eq!(parsed("Sunday, 06-Nov-94 08:49:37 GMT"), instant);
        assert_eq!(parsed("Sun Nov  6 08:49:37 1994"), instant);
        assert_eq!(
            parsed("Sun Nov 16 08:49:37 1994"),
            Some(784_111_777 + 10 * 86_400)
        );
    }

    #[test]
    fn names_match_case_insensitively_as_rfc_9111_asks_of_caches() {
        assert_eq!(
            parsed("THU, 18 AUG 2050 02:01:18 gMT"),
            parsed("Thu, 18 Aug 2050 02:01:18 GMT")
        );
        assert!(parsed("Thu, 18 Aug 2050 02:01:18 GMT").is_some());
    }

    #[test]
    fn rfc_850_years_more_than_50_years_ahead_are_last_century() {
        assert_eq!(
            parsed("Thursday, 18-Aug-50 02:01:18 GMT"),
            Some(2_544_400_878)
        );
        // 2075 would be more than 50 years after 2024: it is 1975.
        assert_eq!(parsed("Monday, 18-Aug-75 02:01:18 GMT"), Some(177_559_278));
    }

    #[test]
    fn anything_else_is_invalid() {
        for invalid in [
            "",
            "0",
            "-1",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu,  18 Aug 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 GMT ",
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 8 Aug 2050 02:01:18 GMT",
            "Thu, 31 Feb 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 24:01:18 GMT",
            "Thu, 18 Aug 2050 02:60:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 +0000",
            "Thursday, 18-Aug-2050 02:01:18 GMT",
            "Thursday, 18 Aug 50 02:01:18 GMT",
            "Thu, 18-Aug-50 02:01:18 GMT",
            "Thu Aug 8 02:01:18 2050",
            "Thu Aug  8 02:01:18 2050 GMT",
            "Thu Aug 08  02:01:18 2050",
            "Xyz, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 Agu 2050 02:01:18 GMT",
            "Thu, 1a Aug 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 GMT\u{e9}",
        ] {
            assert_eq!(parsed(invalid), None, "{invalid:?}");
        }
    }

    #[test]
    fn leap_days_and_seconds() {
        assert!(parsed("Thu, 29 Feb 2024 00:00:00 GMT").is_some());
        assert!(parsed("Thu, 29 Feb 2023 00:00:00 GMT").is_none());
        assert!(parsed("Tue, 29 Feb 2000 00:00:00 GMT").is_some());
        assert!(parsed("Mon, 29 Feb 2100 00:00:00 GMT").is_none());
        assert!(parsed("Sat, 31 Dec 2016 23:59:60 GMT").is_some());
    }

    #[test]
    fn formatting_round_trips() {
        let t = at(784_111_777);
        assert_eq!(format(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse(format(t).as_bytes()), Some(t));
    }
}
