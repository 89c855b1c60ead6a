//! Docker json-file records: `{"log":"...\n","stream":"stdout","time":"2024-05-01T12:00:00.123456789Z"}`.
//!
//! Docker splits lines longer than 16 KiB into several records; every record but the last has a
//! `log` without a trailing newline. The decoder merges them per stream (stdout and stderr
//! interleave) and emits a line when its last record arrives, timestamped with that record's
//! `time`. While a stream holds an unfinished line, [`DockerDecoder::held_start`] is the offset of
//! its first record: the reader keeps the checkpoint there, so a restart re-reads it whole.

use serde::Deserialize;

use crate::source::merge::{Merged, PartialMerger};

/// Which stream a Docker record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The `stream` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    log: std::borrow::Cow<'a, str>,
    stream: &'a str,
    time: &'a str,
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    /// Not JSON with `log`, `stream` and `time`.
    #[error("not a docker json-file record: {0}")]
    Json(String),
    /// `stream` is neither `stdout` nor `stderr`.
    #[error("unknown docker stream '{0}': expected \"stdout\" or \"stderr\"")]
    Stream(String),
    /// `time` is not RFC 3339.
    #[error("invalid docker time '{0}': expected RFC 3339 like 2024-05-01T12:00:00.123456789Z")]
    Time(String),
}

/// Decodes Docker records and merges partial ones, per stream.
#[derive(Debug)]
pub struct DockerDecoder {
    merger: PartialMerger,
}

impl DockerDecoder {
    /// A decoder keeping at most `max` bytes of a merged line.
    pub fn new(max: usize) -> Self {
        Self {
            merger: PartialMerger::new(max),
        }
    }

    /// The offset of the first record of an unfinished line, if a stream holds one.
    pub fn held_start(&self) -> Option<u64> {
        self.merger.held_start()
    }

    /// Decodes one record read at file offset `start`. Returns the merged line when the record
    /// completes one, `Ok(None)` when it is a partial record that was held.
    pub fn decode(&mut self, record: &[u8], start: u64) -> Result<Option<Merged>, DockerError> {
        let r: Record<'_> =
            serde_json::from_slice(record).map_err(|e| DockerError::Json(e.to_string()))?;
        let stream = match r.stream {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            other => return Err(DockerError::Stream(other.to_string())),
        };
        let ts = parse_rfc3339_ns(r.time).ok_or_else(|| DockerError::Time(r.time.to_string()))?;
        let log = r.log.as_bytes();
        let (body, complete) = match log.strip_suffix(b"\n") {
            Some(b) => (b, true),
            None => (log, false),
        };
        Ok(self.merger.push(stream, ts, body, complete, start))
    }

    /// Takes the unfinished lines (the file is finished), stdout first.
    pub fn take_partials(&mut self) -> Vec<Merged> {
        self.merger.take_partials()
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into nanoseconds since the Unix epoch.
pub fn parse_rfc3339_ns(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset_s = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_s;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_to_nanoseconds() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ns("2024-05-01T12:00:00.123456789Z"),
            Some(1_714_564_800_123_456_789)
        );
        assert_eq!(
            parse_rfc3339_ns("2024-05-01T12:00:00.5Z"),
            Some(1_714_564_800_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("2024-05-01T14:00:00+02:00"),
            Some(1_714_564_800_000_000_000)
        );
        for bad in [
            "",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
            "x024-05-01T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ns(bad), None, "{bad}");
        }
    }

    #[test]
    fn partial_records_merge_per_stream() {
        let mut d = DockerDecoder::new(1024);
        let t = "2024-05-01T12:00:00Z";
        let rec = |log: &str, stream: &str| {
            format!(
                r#"{{"log":{},"stream":"{stream}","time":"{t}"}}"#,
                serde_json::to_string(log).unwrap()
            )
        };
        assert_eq!(d.decode(rec("hel", "stdout").as_bytes(), 3).unwrap(), None);
        assert_eq!(d.held_start(), Some(3));
        let m = d
            .decode(rec("err\n", "stderr").as_bytes(), 50)
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.stream, m.line.as_slice(), m.truncated, m.start),
            (Stream::Stderr, &b"err"[..], false, 50)
        );
        let m = d
            .decode(rec("lo \"q\"\t\\\n", "stdout").as_bytes(), 100)
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.stream, m.line.as_slice(), m.start),
            (Stream::Stdout, &b"hello \"q\"\t\\"[..], 3)
        );
        assert_eq!(m.ts_ns, 1_714_564_800_000_000_000);
        assert_eq!(d.held_start(), None);
    }

    #[test]
    fn merged_lines_are_bounded_and_bad_records_are_errors() {
        let mut d = DockerDecoder::new(4);
        let t = "2024-05-01T12:00:00Z";
        assert_eq!(
            d.decode(
                format!(r#"{{"log":"abc","stream":"stdout","time":"{t}"}}"#).as_bytes(),
                0
            )
            .unwrap(),
            None
        );
        let m = d
            .decode(
                format!(r#"{{"log":"defg\n","stream":"stdout","time":"{t}"}}"#).as_bytes(),
                10,
            )
            .unwrap()
            .unwrap();
        assert_eq!((m.line.as_slice(), m.truncated), (&b"abcd"[..], true));
        assert!(matches!(
            d.decode(b"not json", 0),
            Err(DockerError::Json(_))
        ));
        assert!(matches!(
            d.decode(
                format!(r#"{{"log":"x\n","stream":"tty","time":"{t}"}}"#).as_bytes(),
                0
            ),
            Err(DockerError::Stream(_))
        ));
        assert!(matches!(
            d.decode(br#"{"log":"x\n","stream":"stdout","time":"yesterday"}"#, 0),
            Err(DockerError::Time(_))
        ));
    }
}
