//! The units that flow from sources to sinks, and the acknowledgement that flows back.
//!
//! Sources produce [`Entry`]s. The dispatcher groups them into [`Batch`]es per stream. A sink owns a
//! batch until it is delivered (or permanently rejected) and then calls [`Batch::acknowledge`], which
//! hands the batch's [`AckRef`]s back to the checkpointer. Positions advance only from those
//! acknowledgements, so a crash re-sends at most what was in flight and never skips a line.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;

/// The labels of one Loki stream, sorted by name. Shared by every entry of the stream.
pub type Labels = Arc<BTreeMap<String, String>>;

/// Which part of which source a line came from, for the checkpointer.
///
/// `chunk` identifies one read of one file (a run of lines); the checkpointer knows how many lines
/// the chunk holds and the file offset just past it, and advances the file's position when every
/// line of every chunk before it has been acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckRef {
    /// The checkpointer's id for the chunk this line belongs to.
    pub chunk: u64,
}

/// One log line on its way to a sink.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The stream this entry belongs to.
    pub labels: Labels,
    /// Timestamp in nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    /// The line, without its trailing newline, valid UTF-8 (invalid bytes replaced).
    pub line: String,
    /// What to acknowledge once this entry is delivered.
    pub ack: AckRef,
}

/// Timestamped lines of one stream, oldest first, kept in one text buffer.
///
/// Why one buffer: a `String` per line cost ~1.3x the text (allocator rounding, a 32-byte slot per
/// line) and a million allocations and frees per million lines, spread over the malloc arenas of
/// whichever threads touched them. Here a line costs its text plus 16 bytes, and a chunk or a batch
/// is two allocations. Invariant: `text` is valid UTF-8 (invalid input was repaired on the way in)
/// and `ends` holds each line's timestamp and the end of its text, ascending; a line starts where
/// the one before it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    text: String,
    ends: Vec<(i64, usize)>,
}

impl Lines {
    /// No lines.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for about `lines` lines of `bytes` bytes of text in all, reserved ahead.
    pub fn with_capacity(lines: usize, bytes: usize) -> Self {
        Self {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(lines),
        }
    }

    /// Reserves room for `bytes` more bytes of text.
    pub fn reserve_text(&mut self, bytes: usize) {
        self.text.reserve(bytes);
    }

    /// Makes room for `bytes` more bytes of text, growing by doubling but not past `limit` bytes
    /// in all (unless `bytes` alone needs more). A batch knows its limit: plain doubling from the
    /// first line's size would overshoot it by up to 2x (a 1 MiB batch of 150-byte lines ended
    /// with 1.2 MiB of capacity).
    pub fn reserve_text_within(&mut self, bytes: usize, limit: usize) {
        let need = self.text.len() + bytes;
        if need <= self.text.capacity() {
            return;
        }
        let target = (self.text.capacity() * 2).min(limit).max(need);
        self.text.reserve_exact(target - self.text.len());
    }

    /// Bytes of text the buffer can hold without growing.
    pub fn text_capacity(&self) -> usize {
        self.text.capacity()
    }

    /// Appends a line (without its newline).
    pub fn push(&mut self, ts_ns: i64, line: &str) {
        self.text.push_str(line);
        self.ends.push((ts_ns, self.text.len()));
    }

    /// Appends a line given as bytes: valid UTF-8 is copied as is, invalid sequences become
    /// U+FFFD (the line is never dropped).
    pub fn push_lossy(&mut self, ts_ns: i64, line: &[u8]) {
        self.push(ts_ns, &String::from_utf8_lossy(line));
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no line.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of text of every line together (what `batch_max_bytes` bounds).
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    /// The lines as `(ts_ns, line)`, oldest first.
    pub fn iter(&self) -> LinesIter<'_> {
        LinesIter {
            lines: self,
            next: 0,
            start: 0,
        }
    }
}

/// A small stock of emptied [`Lines`] buffers, so the big text buffers of chunks and batches are
/// allocated once and reused rather than freed and allocated again for every chunk and batch.
///
/// Why: each buffer is freed by another thread than the one that allocated it (the dispatcher
/// frees the reader's chunks, the encoding thread frees the dispatcher's batches), and glibc keeps
/// freed memory in the arena of the thread that allocated it, with holes from the buffers' growth;
/// the two runtime workers each ended up holding ~4 MiB for ~3 MiB of live text. A buffer taken
/// from the stock already has its capacity and does not grow again. Bounded: at most `keep`
/// buffers, none larger than `max_bytes` (a buffer grown by one huge line is freed, not kept).
#[derive(Debug)]
pub struct LinesPool {
    stock: std::sync::Mutex<Vec<Lines>>,
    keep: usize,
    max_bytes: usize,
}

impl LinesPool {
    /// A pool keeping at most `keep` buffers of at most `max_bytes` of text capacity each.
    pub const fn new(keep: usize, max_bytes: usize) -> Self {
        Self {
            stock: std::sync::Mutex::new(Vec::new()),
            keep,
            max_bytes,
        }
    }

    /// An empty buffer, with capacity when one was given back.
    pub fn take(&self) -> Lines {
        self.stock
            .lock()
            .ok()
            .and_then(|mut stock| stock.pop())
            .unwrap_or_default()
    }

    /// Gives a buffer back (emptied here); it is freed instead when the stock is full or the
    /// buffer too large.
    pub fn give(&self, mut lines: Lines) {
        if lines.text.capacity() > self.max_bytes || lines.text.capacity() == 0 {
            return;
        }
        lines.text.clear();
        lines.ends.clear();
        if let Ok(mut stock) = self.stock.lock()
            && stock.len() < self.keep
        {
            stock.push(lines);
        }
    }
}

/// Text buffers of chunks, between the reader and the dispatcher (a chunk is one read block).
pub static CHUNK_TEXT: LinesPool = LinesPool::new(4, 1 << 20);
/// Text buffers of batches, between the dispatcher and the sink (a batch is at most
/// `batch_max_bytes`; the default 1 MiB, up to 4 MiB kept).
pub static BATCH_TEXT: LinesPool = LinesPool::new(3, 4 << 20);

/// Iterator over [`Lines`]: `(ts_ns, line)` pairs, oldest first.
#[derive(Debug, Clone)]
pub struct LinesIter<'a> {
    lines: &'a Lines,
    next: usize,
    start: usize,
}

impl<'a> Iterator for LinesIter<'a> {
    type Item = (i64, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let (ts, end) = *self.lines.ends.get(self.next)?;
        let line = self.lines.text.get(self.start..end).unwrap_or_default();
        self.next += 1;
        self.start = end;
        Some((ts, line))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.lines.ends.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for LinesIter<'_> {}

impl<'a> IntoIterator for &'a Lines {
    type Item = (i64, &'a str);
    type IntoIter = LinesIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<S: AsRef<str>> FromIterator<(i64, S)> for Lines {
    fn from_iter<I: IntoIterator<Item = (i64, S)>>(iter: I) -> Self {
        let mut lines = Lines::new();
        for (ts, line) in iter {
            lines.push(ts, line.as_ref());
        }
        lines
    }
}

impl<S: AsRef<str>, const N: usize> From<[(i64, S); N]> for Lines {
    fn from(pairs: [(i64, S); N]) -> Self {
        pairs.into_iter().collect()
    }
}

/// The entries of one stream inside a batch, in the order they were read.
#[derive(Debug, Clone)]
pub struct StreamBatch {
    /// The stream's labels.
    pub labels: Labels,
    /// The timestamped lines, oldest first.
    pub entries: Lines,
}

/// A batch ready to send: one or more streams, bounded by `batch_max_bytes`.
///
/// A batch must be acknowledged exactly once, after delivery or permanent rejection; dropping it
/// unacknowledged means its lines are re-read after a restart (never lost).
#[derive(Debug)]
pub struct Batch {
    /// The streams in this batch.
    pub streams: Vec<StreamBatch>,
    /// Total bytes of the lines in the batch (the figure `batch_max_bytes` bounds).
    pub line_bytes: usize,
    /// Number of entries in the batch.
    pub entries: usize,
    acks: Vec<AckRef>,
    ack_tx: AckSender,
}

/// Where acknowledgements go: the checkpointer's inbox.
pub type AckSender = mpsc::UnboundedSender<Vec<AckRef>>;

impl Batch {
    /// Builds a batch from its streams and the acknowledgements of every entry in it.
    pub fn new(streams: Vec<StreamBatch>, acks: Vec<AckRef>, ack_tx: AckSender) -> Self {
        let line_bytes = streams.iter().map(|s| s.entries.text_len()).sum();
        let entries = streams.iter().map(|s| s.entries.len()).sum();
        Self {
            streams,
            line_bytes,
            entries,
            acks,
            ack_tx,
        }
    }

    /// Frees the batch's lines, keeping its counts and acks (once encoded, a batch waiting for
    /// Loki needs only those); their buffers go back to [`BATCH_TEXT`] for the next batches.
    pub fn release_lines(&mut self) {
        for stream in std::mem::take(&mut self.streams) {
            BATCH_TEXT.give(stream.entries);
        }
    }

    /// Reports the batch as done (delivered, or dropped for good and counted) so its positions may
    /// advance. Never blocks; if the checkpointer is gone (shutdown), the lines are re-sent next run.
    pub fn acknowledge(self) {
        let _ = self.ack_tx.send(self.acks);
    }
}

/// One read of one source: the complete lines it produced, grouped by stream, in read order.
///
/// The reader registers the chunk with the checkpointer (`id`, end offset, line count) before it
/// sends it, so every acknowledgement finds its chunk. Plain files produce one stream per chunk;
/// Docker logs up to two (`stdout`, `stderr`).
#[derive(Debug)]
pub struct Chunk {
    /// The checkpointer's id for this chunk; every entry from it is acknowledged with this id.
    pub id: u64,
    /// `(labels, lines)` per stream, each in read order.
    pub streams: Vec<(Labels, Lines)>,
}

impl Chunk {
    /// Number of lines in the chunk.
    pub fn lines(&self) -> usize {
        self.streams.iter().map(|(_, l)| l.len()).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_order_timestamps_and_text_including_empty_lines() {
        let mut lines = Lines::with_capacity(4, 16);
        lines.push(3, "ab");
        lines.push(1, "");
        lines.push_lossy(2, b"c\xffd");
        lines.push(-5, "\u{65e5}\u{672c}");
        assert_eq!(lines.len(), 4);
        assert_eq!(lines.text_len(), 2 + 5 + 6);
        let got: Vec<(i64, &str)> = lines.iter().collect();
        assert_eq!(
            got,
            [
                (3, "ab"),
                (1, ""),
                (2, "c\u{fffd}d"),
                (-5, "\u{65e5}\u{672c}")
            ]
        );
        assert_eq!(lines.iter().len(), 4);
        assert_eq!(
            Lines::from([(3, "ab")]).iter().collect::<Vec<_>>(),
            [(3, "ab")]
        );
        assert!(Lines::new().is_empty());
        assert_eq!(Lines::new().iter().next(), None);
    }

    #[test]
    fn a_pool_hands_back_emptied_buffers_with_their_capacity_and_stays_bounded() {
        let pool = LinesPool::new(2, 1024);
        let mut lines = pool.take();
        assert_eq!(lines.text_capacity(), 0, "an empty pool gives a new buffer");
        lines.reserve_text(500);
        lines.push(1, "old");
        pool.give(lines);
        let again = pool.take();
        assert!(
            again.is_empty() && again.text_len() == 0,
            "given back emptied"
        );
        assert!(again.text_capacity() >= 500, "with its capacity");
        assert_eq!(pool.take().text_capacity(), 0, "only what was given back");
        // Too large, or past the stock's bound: freed instead.
        pool.give(Lines::with_capacity(1, 4096));
        assert_eq!(pool.take().text_capacity(), 0);
        for _ in 0..5 {
            pool.give(Lines::with_capacity(1, 100));
        }
        assert_eq!(pool.stock.lock().unwrap().len(), 2);
    }

    #[test]
    fn bounded_growth_doubles_up_to_the_limit_and_no_further() {
        let mut lines = Lines::new();
        let line = "x".repeat(150);
        let mut caps = Vec::new();
        for i in 0..6990 {
            lines.reserve_text_within(line.len(), 1 << 20);
            lines.push(i, &line);
            if caps.last() != Some(&lines.text_capacity()) {
                caps.push(lines.text_capacity());
            }
        }
        // 150, 300, .. doubling, then exactly the limit instead of 1,228,800.
        assert_eq!(caps.last(), Some(&(1 << 20)), "{caps:?}");
        assert_eq!(caps[..3], [150, 300, 600]);
        // A line larger than what is left still fits.
        lines.reserve_text_within(200_000, 1 << 20);
        assert!(lines.text_capacity() >= lines.text_len() + 200_000);
    }
}
