//! Partial-line merging, shared by the Docker and CRI decoders.
//!
//! Container runtimes split a long line into several records (Docker at 16 KiB, CRI runtimes as
//! `P` records closed by an `F`), and stdout and stderr interleave, so the pieces are merged per
//! stream. Invariants: a merged line holds at most `max` bytes (the rest is dropped and the line
//! marked truncated), so memory per stream stays bounded; and while a stream holds pieces,
//! [`PartialMerger::held_start`] is the file offset of its first record, which the reader never
//! lets a checkpoint pass: a restart re-reads the line whole.

use crate::source::docker::Stream;

/// A completed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The stream it was written to.
    pub stream: Stream,
    /// Timestamp of its last record, ns since the Unix epoch.
    pub ts_ns: i64,
    /// The line's bytes, without a newline.
    pub line: Vec<u8>,
    /// Whether bytes past `max` were dropped.
    pub truncated: bool,
    /// File offset of its first record.
    pub start: u64,
}

#[derive(Debug, Default)]
struct Part {
    buf: Vec<u8>,
    skipped: bool,
    /// Offset of the first held record; `None` when nothing is held.
    start: Option<u64>,
    ts_ns: i64,
}

/// Merges the pieces of split lines, per stream.
#[derive(Debug)]
pub struct PartialMerger {
    max: usize,
    parts: [Part; 2],
}

impl PartialMerger {
    /// A merger keeping at most `max` bytes of a line.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            parts: [Part::default(), Part::default()],
        }
    }

    /// Adds one record's `body`, read at file offset `start`; `complete` when it ends its line.
    /// Returns the merged line once complete.
    pub fn push(
        &mut self,
        stream: Stream,
        ts_ns: i64,
        body: &[u8],
        complete: bool,
        start: u64,
    ) -> Option<Merged> {
        let max = self.max;
        let p = &mut self.parts[stream as usize];
        let first = *p.start.get_or_insert(start);
        p.ts_ns = ts_ns;
        let room = max.saturating_sub(p.buf.len());
        if body.len() > room {
            p.skipped = true;
        }
        p.buf.extend_from_slice(&body[..room.min(body.len())]);
        if !complete {
            return None;
        }
        p.start = None;
        Some(Merged {
            stream,
            ts_ns,
            line: std::mem::take(&mut p.buf),
            truncated: std::mem::replace(&mut p.skipped, false),
            start: first,
        })
    }

    /// The offset of the earliest record of an unfinished line, if any stream holds one.
    pub fn held_start(&self) -> Option<u64> {
        self.parts.iter().filter_map(|p| p.start).min()
    }

    /// Takes the unfinished lines (the file is finished, or was truncated), stdout first.
    pub fn take_partials(&mut self) -> Vec<Merged> {
        let mut out = Vec::new();
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let p = &mut self.parts[i];
            if let Some(start) = p.start.take() {
                out.push(Merged {
                    stream,
                    ts_ns: p.ts_ns,
                    line: std::mem::take(&mut p.buf),
                    truncated: std::mem::replace(&mut p.skipped, false),
                    start,
                });
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pieces_merge_per_stream_and_hold_the_first_offset() {
        let mut m = PartialMerger::new(8);
        assert_eq!(m.push(Stream::Stdout, 1, b"ab", false, 10), None);
        assert_eq!(m.push(Stream::Stderr, 2, b"x", false, 20), None);
        assert_eq!(m.held_start(), Some(10));
        let got = m.push(Stream::Stdout, 3, b"cdefghij", true, 30).unwrap();
        assert_eq!(
            (got.line.as_slice(), got.truncated, got.start, got.ts_ns),
            (&b"abcdefgh"[..], true, 10, 3)
        );
        assert_eq!(m.held_start(), Some(20));
        let left = m.take_partials();
        assert_eq!(left.len(), 1);
        assert_eq!(
            (left[0].stream, left[0].line.as_slice()),
            (Stream::Stderr, &b"x"[..])
        );
        assert_eq!(m.held_start(), None);
        let whole = m.push(Stream::Stdout, 4, b"ok", true, 40).unwrap();
        assert_eq!(
            (whole.line.as_slice(), whole.truncated, whole.start),
            (&b"ok"[..], false, 40)
        );
    }
}
