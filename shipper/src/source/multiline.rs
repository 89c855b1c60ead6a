//! Multiline: joins physical lines into entries, so a stack trace arrives as one entry.
//!
//! A line matching `start` opens a new entry; any other line is appended (after a `\n`) to the
//! entry before it. An entry is complete on the next start, once it holds `max_lines` lines, or
//! after `max_wait` without a new line ([`Joiner::flush_due`], driven by the reader's loop waking
//! at [`Joiner::deadline`]: no timer task per file). Invariants: the open entry holds at most
//! `max_bytes` (the rest is dropped and the entry marked truncated); and while an entry is open,
//! [`Joiner::held_start`] is the file offset of its first line, which the reader never lets a
//! checkpoint pass, so a crash in the middle of a trace re-reads it whole after restart: positions
//! advance only over complete entries.

use std::time::Instant;

use crate::config::Multiline;

/// A complete entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The timestamp of its first line.
    pub ts_ns: i64,
    /// Its lines, joined with `\n`.
    pub text: Vec<u8>,
    /// Whether bytes past `max_bytes` were dropped.
    pub truncated: bool,
}

#[derive(Debug)]
struct Open {
    entry: Joined,
    lines: usize,
    start: u64,
    last: Instant,
}

/// Joins one stream's lines into entries.
#[derive(Debug)]
pub struct Joiner {
    cfg: Multiline,
    max_bytes: usize,
    open: Option<Open>,
}

impl Joiner {
    /// A joiner following `cfg`, keeping at most `max_bytes` of an entry.
    pub fn new(cfg: Multiline, max_bytes: usize) -> Self {
        Self {
            cfg,
            max_bytes,
            open: None,
        }
    }

    /// Adds one line that starts at file offset `start` and was read at `now`; calls `emit` for
    /// every entry it completes (at most two: the one before a start line, and a new one that
    /// reached `max_lines` at once).
    pub fn push(
        &mut self,
        line: &[u8],
        ts_ns: i64,
        truncated: bool,
        start: u64,
        now: Instant,
        mut emit: impl FnMut(Joined),
    ) {
        let opens = match &self.open {
            None => true,
            Some(_) => self.cfg.start.is_match(line),
        };
        if opens {
            if let Some(done) = self.take() {
                emit(done);
            }
            let keep = line.len().min(self.max_bytes);
            self.open = Some(Open {
                entry: Joined {
                    ts_ns,
                    text: line[..keep].to_vec(),
                    truncated: truncated || keep < line.len(),
                },
                lines: 1,
                start,
                last: now,
            });
        } else if let Some(o) = &mut self.open {
            let text = &mut o.entry.text;
            let room = self.max_bytes.saturating_sub(text.len());
            let whole = 1 + line.len();
            if whole > room {
                o.entry.truncated = true;
            }
            if room > 0 {
                text.push(b'\n');
                text.extend_from_slice(&line[..(room - 1).min(line.len())]);
            }
            o.entry.truncated |= truncated;
            o.lines += 1;
            o.last = now;
        }
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.lines >= self.cfg.max_lines)
            && let Some(done) = self.take()
        {
            emit(done);
        }
    }

    /// The open entry, when `max_wait` has passed since its last line.
    pub fn flush_due(&mut self, now: Instant) -> Option<Joined> {
        match self.deadline() {
            Some(d) if now >= d => self.take(),
            _ => None,
        }
    }

    /// When the open entry is due, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.open.as_ref().map(|o| o.last + self.cfg.max_wait)
    }

    /// The file offset of the open entry's first line, if an entry is open.
    pub fn held_start(&self) -> Option<u64> {
        self.open.as_ref().map(|o| o.start)
    }

    /// Takes the open entry (it is due, or the file is finished).
    pub fn take(&mut self) -> Option<Joined> {
        self.open.take().map(|o| o.entry)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn joiner(start: &str, max_lines: usize, max_bytes: usize) -> Joiner {
        Joiner::new(
            Multiline {
                start: regex::bytes::Regex::new(start).unwrap(),
                max_lines,
                max_wait: Duration::from_secs(2),
            },
            max_bytes,
        )
    }

    /// Feeds `lines` (each starting where the one before ended) and returns the entries.
    fn feed(j: &mut Joiner, lines: &[&str], t: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            j.push(l.as_bytes(), i as i64, false, i as u64 * 100, t, |e| {
                out.push(String::from_utf8(e.text).unwrap())
            });
        }
        out
    }

    #[test]
    fn continuation_lines_join_the_entry_before_them_until_the_next_start() {
        let mut j = joiner(r"^\d{4}-", 500, 1 << 20);
        let t = Instant::now();
        let out = feed(
            &mut j,
            &[
                "  orphan continuation",
                "2024-05-01 first",
                "2024-05-01 boom",
                "\tat a.B(C.java:1)",
                "\tat d.E(F.java:2)",
                "2024-05-01 after",
            ],
            t,
        );
        assert_eq!(
            out,
            [
                "  orphan continuation",
                "2024-05-01 first",
                "2024-05-01 boom\n\tat a.B(C.java:1)\n\tat d.E(F.java:2)"
            ]
        );
        assert_eq!(
            j.held_start(),
            Some(500),
            "the open entry holds its first line's offset"
        );
        assert_eq!(j.take().unwrap().ts_ns, 5);
        assert_eq!(j.held_start(), None);
    }

    #[test]
    fn max_lines_completes_an_entry_and_the_rest_opens_another() {
        let mut j = joiner("^S", 3, 1 << 20);
        let out = feed(&mut j, &["S", "a", "b", "c", "d"], Instant::now());
        assert_eq!(out, ["S\na\nb"]);
        assert_eq!(j.take().unwrap().text, b"c\nd");
        let mut one = joiner("^S", 1, 1 << 20);
        assert_eq!(feed(&mut one, &["S", "x"], Instant::now()), ["S", "x"]);
    }

    #[test]
    fn max_wait_of_silence_makes_the_open_entry_due() {
        let mut j = joiner("^S", 500, 1 << 20);
        let t0 = Instant::now();
        assert!(j.deadline().is_none());
        j.push(b"S", 1, false, 0, t0, |_| panic!("nothing complete yet"));
        j.push(
            b"more",
            2,
            false,
            2,
            t0 + Duration::from_secs(1),
            |_| panic!(),
        );
        assert_eq!(
            j.deadline(),
            Some(t0 + Duration::from_secs(3)),
            "silence counts from the last line"
        );
        assert_eq!(j.flush_due(t0 + Duration::from_millis(2999)), None);
        let e = j.flush_due(t0 + Duration::from_secs(3)).unwrap();
        assert_eq!((e.text.as_slice(), e.ts_ns), (&b"S\nmore"[..], 1));
        assert!(j.deadline().is_none());
    }

    #[test]
    fn an_entry_is_bounded_by_max_bytes_and_marked_truncated() {
        let mut j = joiner("^S", 500, 8);
        let out = feed(&mut j, &["S123", "abcdef", "more", "S"], Instant::now());
        assert_eq!(out, ["S123\nabc"]);
        let mut j = joiner("^S", 500, 8);
        j.push(b"S", 0, false, 0, Instant::now(), |_| {});
        let e = j.take().unwrap();
        assert!(!e.truncated);
        j.push(b"S123456789", 0, false, 0, Instant::now(), |_| {});
        let e = j.take().unwrap();
        assert_eq!((e.text.as_slice(), e.truncated), (&b"S1234567"[..], true));
    }
}
