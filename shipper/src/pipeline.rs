//! The dispatcher: turns chunks from the reader into batches for the sink.
//!
//! Invariants: both channels are bounded, so a slow sink fills the batch channel, the dispatcher
//! stops taking chunks and the reader stops reading (backpressure, bounded memory). A batch holds
//! at most `batch_max_bytes` of lines (a single longer line travels alone) and leaves at the latest
//! `batch_max_wait` after its first line. Entries keep their read order within each stream. One
//! task does all of this; nothing is spawned per line or per batch.
//!
//! Memory: the dispatcher starts a batch only once it holds a slot in the sink's channel (an
//! `OwnedPermit`), so a full batch never waits in here for room: the lines in memory between
//! the reader and the sink are at most the channel's batches, including the one being filled,
//! plus the chunk queue.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::event::{AckRef, AckSender, BATCH_TEXT, Batch, CHUNK_TEXT, Chunk, Labels, StreamBatch};

/// How often a task blocked on a full channel still beats.
const BEAT_EVERY: Duration = Duration::from_millis(500);

/// Sends `item`, waiting for room while beating, so a task held by backpressure still shows
/// alive. Returns false when `stop` fired or the receiver is gone (the item is dropped
/// unacknowledged: its lines are re-read after a restart).
pub async fn send_beating<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    stop: &CancellationToken,
    beat: &(impl Fn() + Send + Sync),
) -> bool {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return false,
            permit = tx.reserve() => match permit {
                Ok(p) => {
                    p.send(item);
                    return true;
                }
                Err(_) => return false,
            },
            _ = tokio::time::sleep(BEAT_EVERY) => beat(),
        }
    }
}

/// A slot in `tx`'s channel, waiting for room while beating. `None` when `stop` fired or the
/// receiver is gone.
async fn reserve_beating<T>(
    tx: &mpsc::Sender<T>,
    stop: &CancellationToken,
    beat: &(impl Fn() + Send + Sync),
) -> Option<OwnedPermit<T>> {
    let reserve = tx.clone().reserve_owned();
    tokio::pin!(reserve);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            permit = &mut reserve => return permit.ok(),
            _ = tokio::time::sleep(BEAT_EVERY) => beat(),
        }
    }
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Lines bytes per batch.
    pub max_bytes: usize,
    /// Age of the oldest line in a batch before it is sent anyway.
    pub max_wait: Duration,
}

#[derive(Debug)]
struct Pending {
    streams: Vec<StreamBatch>,
    index: HashMap<Labels, usize>,
    acks: Vec<AckRef>,
    bytes: usize,
    since: Option<Instant>,
    /// The sink channel's slot this batch will take. Held whenever the batch is not empty.
    slot: Option<OwnedPermit<Batch>>,
}

impl Pending {
    fn new() -> Self {
        Self {
            streams: Vec::new(),
            index: HashMap::new(),
            acks: Vec::new(),
            bytes: 0,
            since: None,
            slot: None,
        }
    }

    /// Waits for a slot in the sink's channel unless one is held. False when the dispatcher must
    /// stop.
    async fn ensure_slot(
        &mut self,
        tx: &mpsc::Sender<Batch>,
        stop: &CancellationToken,
        beat: &(impl Fn() + Send + Sync),
    ) -> bool {
        if self.slot.is_none() {
            self.slot = reserve_beating(tx, stop, beat).await;
        }
        self.slot.is_some()
    }

    /// Sends the batch, if any, into its slot. False when the dispatcher must stop.
    async fn ship(
        &mut self,
        tx: &mpsc::Sender<Batch>,
        ack_tx: &AckSender,
        stop: &CancellationToken,
        beat: &(impl Fn() + Send + Sync),
    ) -> bool {
        if self.acks.is_empty() {
            return true;
        }
        let slot = self.slot.take();
        let p = std::mem::replace(self, Pending::new());
        let batch = Batch::new(p.streams, p.acks, ack_tx.clone());
        match slot {
            Some(slot) => {
                slot.send(batch);
                true
            }
            // Not reached while a non-empty batch always holds a slot; kept as the safe path.
            None => send_beating(tx, batch, stop, beat).await,
        }
    }
}

/// Runs the dispatcher until the reader's channel closes (then flushes what is pending and closes
/// the sink's channel) or `stop` fires (hard stop: pending lines stay unacknowledged).
pub async fn run(
    mut rx: mpsc::Receiver<Chunk>,
    tx: mpsc::Sender<Batch>,
    ack_tx: AckSender,
    limits: BatchLimits,
    stop: CancellationToken,
    beat: impl Fn() + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let mut p = Pending::new();
    loop {
        // A batch starts only with a slot in the sink's channel (see the module docs).
        if !p.ensure_slot(&tx, &stop, &beat).await {
            return Ok(());
        }
        let deadline = p.since.map(|s| s + limits.max_wait);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                if !p.ship(&tx, &ack_tx, &stop, &beat).await {
                    return Ok(());
                }
            }
            got = rx.recv() => match got {
                Some(chunk) => {
                    if !add(&mut p, chunk, &tx, &ack_tx, limits, &stop, &beat).await {
                        return Ok(());
                    }
                }
                None => {
                    p.ship(&tx, &ack_tx, &stop, &beat).await;
                    return Ok(());
                }
            },
            _ = tokio::time::sleep(BEAT_EVERY) => {}
        }
        beat();
    }
}

async fn add(
    p: &mut Pending,
    chunk: Chunk,
    tx: &mpsc::Sender<Batch>,
    ack_tx: &AckSender,
    limits: BatchLimits,
    stop: &CancellationToken,
    beat: &(impl Fn() + Send + Sync),
) -> bool {
    let ack = AckRef { chunk: chunk.id };
    for (labels, lines) in &chunk.streams {
        for (ts, line) in lines {
            if p.bytes > 0
                && p.bytes + line.len() > limits.max_bytes
                && !(p.ship(tx, ack_tx, stop, beat).await && p.ensure_slot(tx, stop, beat).await)
            {
                return false;
            }
            if p.since.is_none() {
                p.since = Some(Instant::now());
            }
            let idx = match p.index.get(labels) {
                Some(i) => *i,
                None => {
                    p.streams.push(StreamBatch {
                        labels: labels.clone(),
                        entries: BATCH_TEXT.take(),
                    });
                    p.index.insert(labels.clone(), p.streams.len() - 1);
                    p.streams.len() - 1
                }
            };
            // Copied into the batch's one text buffer (the chunk is freed once it is batched),
            // which grows toward the batch limit but not past it.
            let room = limits.max_bytes.saturating_sub(p.bytes);
            let entries = &mut p.streams[idx].entries;
            entries.reserve_text_within(line.len(), entries.text_len() + room);
            entries.push(ts, line);
            p.bytes += line.len();
            p.acks.push(ack);
        }
    }
    // Every line is copied into the batch: the chunk's buffers go back to the reader.
    for (_, lines) in chunk.streams {
        CHUNK_TEXT.give(lines);
    }
    if p.bytes >= limits.max_bytes {
        return p.ship(tx, ack_tx, stop, beat).await;
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn labels(v: &str) -> Labels {
        Arc::new(BTreeMap::from([("job".to_string(), v.to_string())]))
    }

    fn chunk(id: u64, l: &Labels, lines: &[&str]) -> Chunk {
        Chunk {
            id,
            streams: vec![(
                l.clone(),
                lines
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i as i64, *s))
                    .collect(),
            )],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_size_and_keeps_order_per_stream() {
        let (ctx, crx) = mpsc::channel(4);
        let (btx, mut brx) = mpsc::channel(4);
        let (atx, mut arx) = mpsc::unbounded_channel();
        let limits = BatchLimits {
            max_bytes: 10,
            max_wait: Duration::from_secs(60),
        };
        let task = tokio::spawn(run(crx, btx, atx, limits, CancellationToken::new(), || {}));
        let (a, b) = (labels("a"), labels("b"));
        ctx.send(chunk(1, &a, &["aaaa", "bbbb"])).await.unwrap();
        ctx.send(chunk(2, &b, &["cccc", "dd"])).await.unwrap();
        let first = brx.recv().await.unwrap();
        assert_eq!(first.line_bytes, 8);
        assert_eq!(first.streams.len(), 1);
        assert_eq!(
            first.streams[0]
                .entries
                .iter()
                .map(|e| e.1)
                .collect::<Vec<_>>(),
            ["aaaa", "bbbb"]
        );
        let second = brx.recv().await.unwrap();
        assert_eq!((second.entries, second.line_bytes), (2, 6));
        first.acknowledge();
        assert_eq!(arx.recv().await.unwrap(), vec![AckRef { chunk: 1 }; 2]);
        // A line over the limit travels alone.
        ctx.send(chunk(3, &a, &["0123456789abc"])).await.unwrap();
        assert_eq!(brx.recv().await.unwrap().entries, 1);
        drop(ctx);
        task.await.unwrap().unwrap();
        assert!(
            brx.recv().await.is_none(),
            "the sink channel closes after the drain"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_leaves_after_max_wait_and_mixes_streams() {
        let (ctx, crx) = mpsc::channel(4);
        let (btx, mut brx) = mpsc::channel(4);
        let (atx, _arx) = mpsc::unbounded_channel();
        let limits = BatchLimits {
            max_bytes: 1 << 20,
            max_wait: Duration::from_secs(2),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(crx, btx, atx, limits, stop.clone(), || {}));
        let start = Instant::now();
        ctx.send(chunk(1, &labels("a"), &["x"])).await.unwrap();
        ctx.send(chunk(2, &labels("b"), &["y"])).await.unwrap();
        let b = brx.recv().await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(start.elapsed() < Duration::from_secs(3));
        assert_eq!((b.entries, b.streams.len()), (2, 2));
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_sink_channel_holds_the_dispatcher_and_hard_stop_ends_it() {
        let (ctx, crx) = mpsc::channel(1);
        let (btx, _brx) = mpsc::channel(1);
        let (atx, _arx) = mpsc::unbounded_channel();
        let limits = BatchLimits {
            max_bytes: 1,
            max_wait: Duration::from_secs(1),
        };
        let stop = CancellationToken::new();
        let beats = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let b2 = beats.clone();
        let task = tokio::spawn(run(crx, btx, atx, limits, stop.clone(), move || {
            b2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }));
        for i in 0..2 {
            ctx.send(chunk(i, &labels("a"), &["x"])).await.unwrap();
        }
        // The sink takes nothing: the chunk channel stays full and the dispatcher blocked, beating.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(ctx.try_send(chunk(9, &labels("a"), &["x"])).is_err());
        assert!(beats.load(std::sync::atomic::Ordering::Relaxed) >= 5);
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn no_batch_is_built_while_the_sink_channel_is_full() {
        let (ctx, crx) = mpsc::channel(1);
        let (btx, mut brx) = mpsc::channel(1);
        let (atx, _arx) = mpsc::unbounded_channel();
        let limits = BatchLimits {
            max_bytes: 1,
            max_wait: Duration::from_secs(1),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(crx, btx, atx, limits, stop.clone(), || {}));
        ctx.send(chunk(0, &labels("a"), &["x"])).await.unwrap();
        ctx.send(chunk(1, &labels("a"), &["y"])).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        // Batch 0 fills the sink's channel. Chunk 1 stays queued as a chunk: the dispatcher does
        // not take it to hold a second full batch beside the channel's.
        assert_eq!(brx.len(), 1);
        assert!(
            ctx.try_send(chunk(2, &labels("a"), &["z"])).is_err(),
            "the dispatcher took chunk 1 although the sink had no room for its batch"
        );
        // Room in the sink's channel lets the next batch through, in order.
        let first = brx.recv().await.unwrap();
        assert_eq!(first.streams[0].entries.iter().next(), Some((0, "x")));
        let second = brx.recv().await.unwrap();
        assert_eq!(second.streams[0].entries.iter().next(), Some((0, "y")));
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
