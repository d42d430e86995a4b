//! When a secret stops being accepted: a UTC instant written
//! `2027-01-04T09:00:00Z` in the accounts file, and the ages
//! `evchat user add --expires` takes (`90s`, `15m`, `12h`, `30d`, `8w`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The instant a secret expires, in whole seconds since the Unix epoch
/// (UTC). A secret is refused from this second on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expiry(u64);

/// The longest expiry field (`YYYY-MM-DDTHH:MM:SSZ` is 20).
pub const MAX_EXPIRY_LEN: usize = 20;

/// The latest year accepted, so that every expiry fits a `SystemTime`.
const MAX_YEAR: u64 = 9999;

/// Why an expiry or an age does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadExpiry {
    #[error("the expiry is not a UTC time written 2027-01-04T09:00:00Z")]
    Format,
    #[error(
        "the expiry is not a real date and time (month, day, hour, minute or second out of range)"
    )]
    OutOfRange,
    #[error("the age is not a number followed by s, m, h, d or w (e.g. 30d)")]
    Age,
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    // Years counted from March, so that the leap day ends a year.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    // 719468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count from 1970-01-01: (year, month, day).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Expiry {
    /// The expiry at these seconds since the Unix epoch.
    pub fn from_unix(secs: u64) -> Expiry {
        Expiry(secs)
    }

    /// Seconds since the Unix epoch.
    pub fn unix(self) -> u64 {
        self.0
    }

    /// `age` after `now`, rounded down to the second.
    pub fn after(now: SystemTime, age: Duration) -> Expiry {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        Expiry(now.saturating_add(age).as_secs())
    }

    /// Whether a secret with this expiry is refused at `now`.
    pub fn has_passed(self, now: SystemTime) -> bool {
        now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() >= self.0
    }

    /// The instant, for the caller's clock arithmetic.
    pub fn as_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0)
    }

    /// Parses exactly `YYYY-MM-DDTHH:MM:SSZ` (UTC, years 1970-9999).
    pub fn parse(s: &str) -> Result<Expiry, BadExpiry> {
        let b = s.as_bytes();
        let shape_ok = b.len() == MAX_EXPIRY_LEN
            && b.iter().enumerate().all(|(i, &c)| match i {
                4 | 7 => c == b'-',
                10 => c == b'T',
                13 | 16 => c == b':',
                19 => c == b'Z',
                _ => c.is_ascii_digit(),
            });
        if !shape_ok {
            return Err(BadExpiry::Format);
        }
        let num = |from: usize, to: usize| -> u64 {
            b[from..to]
                .iter()
                .fold(0, |n, &d| n * 10 + u64::from(d - b'0'))
        };
        let (year, month, day) = (num(0, 4), num(5, 7), num(8, 10));
        let (hour, minute, second) = (num(11, 13), num(14, 16), num(17, 19));
        if !(1970..=MAX_YEAR).contains(&year)
            || !(1..=12).contains(&month)
            || !(1..=days_in_month(year, month)).contains(&day)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return Err(BadExpiry::OutOfRange);
        }
        let days = days_from_civil(year, month, day);
        Ok(Expiry(days * 86_400 + hour * 3600 + minute * 60 + second))
    }
}

impl fmt::Display for Expiry {
    /// `2027-01-04T09:00:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = civil_from_days(self.0 / 86_400);
        let secs = self.0 % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

/// Parses an age: digits, then `s`, `m`, `h`, `d` or `w` (`30d`). At
/// most 100 years, so that the expiry stays within [`Expiry::parse`]'s
/// years.
pub fn parse_age(s: &str) -> Result<Duration, BadExpiry> {
    let split = s.len().checked_sub(1).ok_or(BadExpiry::Age)?;
    let (digits, unit) = s.split_at_checked(split).ok_or(BadExpiry::Age)?;
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadExpiry::Age);
    }
    let n: u64 = digits.parse().map_err(|_| BadExpiry::Age)?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(BadExpiry::Age),
    };
    let secs = n * unit_secs;
    if n == 0 || secs > 100 * 366 * 86_400 {
        return Err(BadExpiry::Age);
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_round_trips_through_its_text() {
        for (text, unix) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2000-02-29T12:34:56Z", 951_827_696),
            ("2027-01-04T09:00:00Z", 1_799_053_200),
            ("9999-12-31T23:59:59Z", 253_402_300_799),
        ] {
            let e = Expiry::parse(text).unwrap();
            assert_eq!(e.unix(), unix, "{text}");
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        for days in (0..146_097 * 2).step_by(7) {
            let e = Expiry::from_unix(days * 86_400 + 3_661);
            assert_eq!(Expiry::parse(&e.to_string()), Ok(e));
        }
    }

    #[test]
    fn bad_expiries() {
        assert_eq!(Expiry::parse("2027-01-04"), Err(BadExpiry::Format));
        assert_eq!(
            Expiry::parse("2027-01-04 09:00:00Z"),
            Err(BadExpiry::Format)
        );
        assert_eq!(
            Expiry::parse("2027-01-04T09:00:00+01"),
            Err(BadExpiry::Format)
        );
        assert_eq!(Expiry::parse("1800000000"), Err(BadExpiry::Format));
        assert_eq!(
            Expiry::parse("2027-02-29T00:00:00Z"),
            Err(BadExpiry::OutOfRange)
        );
        assert_eq!(
            Expiry::parse("2027-13-01T00:00:00Z"),
            Err(BadExpiry::OutOfRange)
        );
        assert_eq!(
            Expiry::parse("2027-01-01T24:00:00Z"),
            Err(BadExpiry::OutOfRange)
        );
        assert_eq!(
            Expiry::parse("1969-12-31T23:59:59Z"),
            Err(BadExpiry::OutOfRange)
        );
    }

    #[test]
    fn an_expiry_has_passed_from_its_own_second_on() {
        let e = Expiry::from_unix(100);
        assert!(!e.has_passed(UNIX_EPOCH + Duration::from_millis(99_999)));
        assert!(e.has_passed(UNIX_EPOCH + Duration::from_secs(100)));
    }

    #[test]
    fn ages() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in [
            "",
            "d",
            "30",
            "0d",
            "-1d",
            "1.5h",
            "30 d",
            "30D",
            "99999999d",
        ] {
            assert_eq!(parse_age(bad), Err(BadExpiry::Age), "{bad:?}");
        }
        let now = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(Expiry::after(now, Duration::from_secs(60)).unix(), 61);
    }
}
