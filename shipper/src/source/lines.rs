//! The line splitter: turns arbitrary read blocks into complete lines, bounded in length.
//!
//! Invariants: a line is emitted only once its `\n` has been read, so the offset after the last
//! emitted line is always a line boundary (what checkpoints store). A line longer than `max` keeps
//! its first `max` bytes, the rest is skipped, and it is still emitted (marked truncated) when its
//! newline arrives; memory per file stays at most `max`. Bytes are passed through untouched (no
//! `\r` stripping); UTF-8 repair happens in [`Lines::push_lossy`](crate::event::Lines::push_lossy)
//! (or [`to_text`] for one owned line).

/// Splits bytes into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    partial: Vec<u8>,
    /// Bytes of the current line skipped because it is too long.
    skipped: u64,
}

impl LineSplitter {
    /// A splitter keeping at most `max` bytes of a line.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            partial: Vec::new(),
            skipped: 0,
        }
    }

    /// Bytes read but not yet part of an emitted line (the unfinished last line).
    pub fn pending_bytes(&self) -> u64 {
        self.partial.len() as u64 + self.skipped
    }

    /// Feeds `data` read at file offset `base`. Calls `emit(line, truncated, end)` for every
    /// completed line, where `end` is the file offset just past its `\n`.
    pub fn feed(&mut self, data: &[u8], base: u64, mut emit: impl FnMut(&[u8], bool, u64)) {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            let piece = &data[start..nl];
            let end = base + nl as u64 + 1;
            if self.partial.is_empty() && self.skipped == 0 {
                if piece.len() <= self.max {
                    emit(piece, false, end);
                } else {
                    emit(&piece[..self.max], true, end);
                }
            } else {
                self.append(piece);
                let truncated = self.skipped > 0;
                emit(&self.partial, truncated, end);
                self.partial.clear();
                self.skipped = 0;
            }
            start = nl + 1;
        }
        if start < data.len() {
            self.append(&data[start..]);
        }
    }

    fn append(&mut self, piece: &[u8]) {
        let room = self.max.saturating_sub(self.partial.len());
        let take = room.min(piece.len());
        self.partial.extend_from_slice(&piece[..take]);
        self.skipped += (piece.len() - take) as u64;
    }

    /// Takes the unfinished last line (for a file that is finished: rotated away or deleted).
    /// Returns `None` when there is none.
    pub fn take_partial(&mut self) -> Option<(Vec<u8>, bool)> {
        if self.partial.is_empty() && self.skipped == 0 {
            return None;
        }
        let truncated = self.skipped > 0;
        self.skipped = 0;
        Some((std::mem::take(&mut self.partial), truncated))
    }

    /// Forgets the unfinished line (after the file was truncated, its bytes are gone).
    pub fn reset(&mut self) -> Option<(Vec<u8>, bool)> {
        self.take_partial()
    }
}

/// The line as text: valid UTF-8 is copied as is, invalid sequences become U+FFFD (never dropped).
pub fn to_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn split(max: usize, blocks: &[&[u8]]) -> (Vec<(String, bool, u64)>, u64) {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut off = 0;
        for b in blocks {
            s.feed(b, off, |l, t, e| out.push((to_text(l), t, e)));
            off += b.len() as u64;
        }
        (out, s.pending_bytes())
    }

    #[test]
    fn splits_across_blocks_and_reports_end_offsets() {
        let (lines, pending) = split(100, &[b"ab\ncd", b"e\n\nfg"]);
        assert_eq!(
            lines,
            vec![
                ("ab".into(), false, 3),
                ("cde".into(), false, 7),
                ("".into(), false, 8)
            ]
        );
        assert_eq!(pending, 2);
    }

    #[test]
    fn long_lines_are_truncated_not_dropped_and_the_file_goes_on() {
        let (lines, pending) = split(4, &[b"0123456789\nok\n012", b"3456", b"789\nend"]);
        assert_eq!(
            lines,
            vec![
                ("0123".into(), true, 11),
                ("ok".into(), false, 14),
                ("0123".into(), true, 25)
            ]
        );
        assert_eq!(pending, 3);
    }

    #[test]
    fn exactly_max_is_not_truncated() {
        let (lines, _) = split(4, &[b"01", b"23\n0123\n"]);
        assert_eq!(
            lines,
            vec![("0123".into(), false, 5), ("0123".into(), false, 10)]
        );
    }

    #[test]
    fn bytes_are_kept_and_invalid_utf8_is_replaced() {
        let (lines, _) = split(100, &[b"a\"b\\c\td\r\n\xff\xfeok\n"]);
        assert_eq!(lines[0].0, "a\"b\\c\td\r");
        assert_eq!(lines[1].0, "\u{fffd}\u{fffd}ok");
    }

    #[test]
    fn take_partial_returns_the_unfinished_line_once() {
        let mut s = LineSplitter::new(3);
        s.feed(b"abcdef", 0, |_, _, _| panic!("no newline yet"));
        assert_eq!(s.pending_bytes(), 6);
        assert_eq!(s.take_partial(), Some((b"abc".to_vec(), true)));
        assert_eq!(s.take_partial(), None);
        assert_eq!(s.pending_bytes(), 0);
    }
}
