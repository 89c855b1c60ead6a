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

/// The entries of one stream inside a batch, in the order they were read.
#[derive(Debug, Clone)]
pub struct StreamBatch {
    /// The stream's labels.
    pub labels: Labels,
    /// `(ts_ns, line)` pairs, oldest first.
    pub entries: Vec<(i64, String)>,
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
        let line_bytes = streams
            .iter()
            .flat_map(|s| s.entries.iter())
            .map(|(_, line)| line.len())
            .sum();
        let entries = streams.iter().map(|s| s.entries.len()).sum();
        Self {
            streams,
            line_bytes,
            entries,
            acks,
            ack_tx,
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
    /// `(labels, (ts_ns, line) pairs)` per stream, each in read order.
    pub streams: Vec<(Labels, Vec<(i64, String)>)>,
}

impl Chunk {
    /// Number of lines in the chunk.
    pub fn lines(&self) -> usize {
        self.streams.iter().map(|(_, l)| l.len()).sum()
    }
}
