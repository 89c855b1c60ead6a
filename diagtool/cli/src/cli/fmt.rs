//! Small formatting helpers shared by the commands: durations (`500ms`, `30s`, `2m`, `1h`), UTC
//! timestamps from the target's `taken_at_ms`, ages and byte counts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration flag written like `500ms`, `5s`, `2m`, `1h` (a bare number is seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: f64 = number.parse().map_err(|_| {
            format!("{text:?} is not a duration: write it like 500ms, 30s, 2m or 1h")
        })?;
        let scale = match unit {
            "ms" => 0.001,
            "" | "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit {unit:?}: use ms, s, m or h"
                ));
            }
        };
        let secs = value * scale;
        if !secs.is_finite() || secs <= 0.0 || secs > 366.0 * 86400.0 {
            return Err(format!(
                "{text:?} is out of range: give a positive duration up to a year"
            ));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&secs(self.0.as_secs_f64()))
    }
}

/// A short duration: `450ms`, `12s`, `12.5s`, `3m05s`, `2h10m`.
pub(crate) fn secs(s: f64) -> String {
    if s == 0.0 {
        "0s".to_owned()
    } else if s < 1.0 {
        format!("{:.0}ms", s * 1000.0)
    } else if s < 60.0 {
        let tenths = (s * 10.0).round() / 10.0;
        if tenths.fract() == 0.0 {
            format!("{tenths:.0}s")
        } else {
            format!("{tenths:.1}s")
        }
    } else if s < 3600.0 {
        let whole = s.round() as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        let whole = s.round() as u64;
        format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60)
    }
}

/// `2026-11-27 20:53:20Z` from milliseconds since the Unix epoch.
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// `20:53:20` (UTC) from milliseconds since the Unix epoch.
pub(crate) fn utc_time(ms: u64) -> String {
    let rem = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian calendar), computed
/// through 400-year eras of 146 097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `12.3 MiB` style byte counts.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `+32.0` / `-4.5` / `0.0`: a signed rate with one decimal.
pub(crate) fn rate(v: f64) -> String {
    if v.abs() < 0.05 {
        "0.0".to_owned()
    } else {
        format!("{v:+.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_contract_unit() {
        let d = |s: &str| s.parse::<Dur>().map(|d| d.0);
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("7"), Ok(Duration::from_secs(7)));
        assert!(d("0s").is_err());
        assert!(
            d("5 parsecs")
                .expect_err("bad unit")
                .contains("unknown unit")
        );
        assert!(d("soon").expect_err("no number").contains("not a duration"));
        assert!(d("").is_err());
    }

    #[test]
    fn durations_display_as_they_are_written() {
        assert_eq!(Dur(Duration::from_secs(30)).to_string(), "30s");
        assert_eq!(Dur(Duration::from_millis(200)).to_string(), "200ms");
        assert_eq!(secs(125.0), "2m05s");
        assert_eq!(secs(7380.0), "2h03m");
        assert_eq!(secs(12.25), "12.3s");
        assert_eq!(secs(0.0), "0s");
    }

    #[test]
    fn utc_timestamps_from_epoch_milliseconds() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_764_270_000_000), "2025-11-27 19:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc_time(1_764_270_061_000), "19:01:01");
    }

    #[test]
    fn bytes_and_rates_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(12_345_678), "11.8 MiB");
        assert_eq!(rate(32.0), "+32.0");
        assert_eq!(rate(-0.01), "0.0");
    }
}
