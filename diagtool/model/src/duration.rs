//! Durations: one grammar for every config key, CLI flag, soak profile and leak-lab spec.
//!
//! The grammar is humantime's: a number (decimals allowed) followed by a unit (`ns`, `us`, `ms`,
//! `s`/`sec`, `m`/`min`, `h`, `d`, `w`, and their long forms), repeated as needed:
//! `500ms`, `5s`, `1.5s`, `2m`, `1h`, `1h30m`, `2min 5s`. A bare number is refused, so `--interval
//! 30` cannot silently mean seconds to one tool and milliseconds to another. [`short`] prints a
//! duration rounded for tables and messages, in a form the same grammar reads back (`450ms`,
//! `12.5s`, `3m05s`, `2h10m`).

use std::time::Duration;

/// A duration that does not follow the grammar; its message quotes the text and shows the form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration '{text}' ({reason}): write a number and a unit, like '500ms', '5s', '1.5m' or '1h'"
)]
pub struct DurationError {
    text: String,
    reason: String,
}

/// Parses a duration such as `500ms`, `5s`, `1.5s`, `2m` or `1h30m`.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use diagtool_model::duration;
/// assert_eq!(duration::parse("2m"), Ok(Duration::from_secs(120)));
/// assert_eq!(duration::parse("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(duration::parse("10").is_err());
/// ```
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(text.trim()).map_err(|e| DurationError {
        text: text.to_owned(),
        reason: e.to_string(),
    })
}

/// A short rendering of `d`: `0s`, `450ms`, `12s`, `12.5s`, `3m05s`, `2h10m` (rounded to the
/// tenth of a second under a minute, to the second under an hour, to the minute above).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use diagtool_model::duration;
/// assert_eq!(duration::short(Duration::from_secs(125)), "2m05s");
/// assert_eq!(duration::parse(&duration::short(Duration::from_secs(125))), Ok(Duration::from_secs(125)));
/// ```
pub fn short(d: Duration) -> String {
    short_secs(d.as_secs_f64())
}

/// [`short`] for a count of seconds (ages and spans are kept as `f64` seconds in the documents).
pub fn short_secs(s: f64) -> String {
    if s <= 0.0 || !s.is_finite() {
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

/// The exact, lossless form of `d` for files another program parses back (generated configs):
/// whole seconds as `30s`, anything else as milliseconds, `1500ms`.
pub fn exact(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_and_decimals_parse() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0.5m"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse(" 30s "), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn bare_numbers_unknown_units_and_junk_are_refused_with_the_form() {
        for bad in ["", "7", "5x", "soon", "-1s", "5 parsecs"] {
            let err = parse(bad).expect_err(bad).to_string();
            assert!(
                err.contains(&format!("'{bad}'")) && err.contains("like '500ms'"),
                "{err}"
            );
        }
    }

    #[test]
    fn short_forms_round_and_read_back() {
        assert_eq!(short_secs(0.0), "0s");
        assert_eq!(short_secs(0.2), "200ms");
        assert_eq!(short_secs(12.25), "12.3s");
        assert_eq!(short_secs(30.0), "30s");
        assert_eq!(short_secs(125.0), "2m05s");
        assert_eq!(short_secs(7380.0), "2h03m");
        for s in [0.2, 12.5, 30.0, 125.0, 7380.0] {
            let back = parse(&short_secs(s)).expect("short reads back");
            assert!((back.as_secs_f64() - s).abs() < 0.05, "{s} -> {back:?}");
        }
    }

    #[test]
    fn exact_forms_are_lossless() {
        assert_eq!(exact(Duration::from_millis(1500)), "1500ms");
        assert_eq!(exact(Duration::from_secs(30)), "30s");
        assert_eq!(
            parse(&exact(Duration::from_millis(1500))),
            Ok(Duration::from_millis(1500))
        );
    }
}
