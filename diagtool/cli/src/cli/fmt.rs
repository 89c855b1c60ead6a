//! Small formatting helpers shared by the commands: duration flags and short durations (the
//! toolkit's one grammar, `diagtool_model::duration`), UTC timestamps from the target's
//! `taken_at_ms` (humantime's RFC 3339), ages and byte counts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::model::duration;

/// A duration flag in the toolkit's one grammar (`500ms`, `5s`, `1.5m`, `1h`; see
/// `diagtool_model::duration`), positive and at most a year.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let d = duration::parse(text).map_err(|e| e.to_string())?;
        if d.is_zero() || d > Duration::from_secs(366 * 86_400) {
            return Err(format!(
                "{text:?} is out of range: give a positive duration up to a year"
            ));
        }
        Ok(Dur(d))
    }
}

impl Dur {
    /// Like `parse`, also taking zero (`0s`): `watch --duration 0s` judges once and exits.
    pub fn or_zero(text: &str) -> Result<Self, String> {
        match duration::parse(text) {
            Ok(d) if d.is_zero() => Ok(Dur(d)),
            _ => text.parse(),
        }
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&duration::short(self.0))
    }
}

/// A short duration from seconds: `450ms`, `12s`, `12.5s`, `3m05s`, `2h10m`.
pub(crate) use duration::short_secs as secs;

pub(crate) use crate::model::text::{bytes, utc};

/// `20:53:20` (UTC) from milliseconds since the Unix epoch.
pub(crate) fn utc_time(ms: u64) -> String {
    utc(ms).get(11..19).unwrap_or_default().to_owned()
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
        assert!(d("7").expect_err("no unit").contains("'7'"));
        assert!(d("0s").expect_err("zero").contains("out of range"));
        assert!(
            d("5 parsecs")
                .expect_err("bad unit")
                .contains("unknown time unit")
        );
        assert!(
            d("soon")
                .expect_err("no number")
                .contains("invalid duration")
        );
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
        assert_eq!(rate(32.0), "+32.0");
        assert_eq!(rate(-0.01), "0.0");
    }
}
