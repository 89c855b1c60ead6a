//! Checkpoints: per-file positions that advance only over acknowledged lines, persisted atomically.
//!
//! The [`Ledger`] is shared by the reader and the checkpointer task. The reader opens an entry for
//! every file it follows and registers each chunk it sends as `(id, end_offset, lines)`. Sinks
//! acknowledge entries by chunk id; when every line of a file's oldest chunks is acknowledged, the
//! file's position moves to the end of the last such chunk. Chunks finish out of order (concurrent
//! requests) but a position only moves over a done *prefix*, so a crash re-reads at most the chunks
//! still in flight and never skips one.
//!
//! On disk: `checkpoints.json` in `data_dir`, a serde enum tagged with its version, written to a temp
//! file, fsynced, renamed over the old one and the directory fsynced. Loading falls back to the temp
//! file if the main one is missing or unreadable (a crash between write and rename).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::AckRef;
use crate::source::fingerprint::{FileId, Fingerprint};

/// The checkpoint file's name inside `data_dir`.
pub const FILE_NAME: &str = "checkpoints.json";
const TMP_NAME: &str = "checkpoints.json.tmp";
/// How long positions of files no longer followed are kept (in case they reappear).
const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// One file's saved position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Device and inode.
    #[serde(flatten)]
    pub id: FileId,
    /// Fingerprint of the file's first bytes when the position was saved.
    pub head: Fingerprint,
    /// Offset just past the last acknowledged line.
    pub offset: u64,
    /// The path it was last seen at (informational).
    pub path: String,
    /// When this position was last written, ms since the Unix epoch.
    pub updated_ms: u64,
}

/// The checkpoint file, versioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum CheckpointFile {
    /// Version 1.
    #[serde(rename = "1")]
    V1 {
        /// Every known file's position.
        checkpoints: Vec<Checkpoint>,
    },
}

/// A checkpoint file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("checkpoint file '{path}': {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The content is not a checkpoint file this version understands.
    #[error(
        "checkpoint file '{path}' is corrupt ({message}): move it aside to start over from `read_from`"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn read_file(path: &Path) -> Result<Option<Vec<Checkpoint>>, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let file: CheckpointFile =
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    match file {
        CheckpointFile::V1 { checkpoints } => Ok(Some(checkpoints)),
    }
}

/// Loads the checkpoints in `dir`: the main file, else the temp file left by an interrupted write,
/// else none. A corrupt main file with a good temp file recovers from the temp file.
pub fn load(dir: &Path) -> Result<Vec<Checkpoint>, CheckpointError> {
    let main = dir.join(FILE_NAME);
    match read_file(&main) {
        Ok(Some(c)) => Ok(c),
        Ok(None) => Ok(read_file(&dir.join(TMP_NAME))
            .ok()
            .flatten()
            .unwrap_or_default()),
        Err(e) => match read_file(&dir.join(TMP_NAME)) {
            Ok(Some(c)) => {
                tracing::warn!(error = %e, "checkpoint file unreadable, recovered from the temp file");
                Ok(c)
            }
            _ => Err(e),
        },
    }
}

/// Writes `checkpoints` to `dir` atomically: temp file, fsync, rename, fsync of the directory.
pub fn store(dir: &Path, checkpoints: Vec<Checkpoint>) -> Result<(), CheckpointError> {
    let tmp = dir.join(TMP_NAME);
    let io = |source| CheckpointError::Io {
        path: tmp.clone(),
        source,
    };
    let body = serde_json::to_vec_pretty(&CheckpointFile::V1 { checkpoints })
        .map_err(|e| io(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, dir.join(FILE_NAME)).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Makes the rename itself durable; failure here only risks the previous version.
        let _ = d.sync_all();
    }
    Ok(())
}

#[derive(Debug)]
struct FileLedger {
    id: FileId,
    head: Fingerprint,
    path: String,
    acked: u64,
    /// `(chunk id, end offset, lines not yet acknowledged)`, oldest first.
    pending: VecDeque<(u64, u64, u64)>,
    closed: bool,
}

/// Positions of followed files and the chunks in flight for each; shared by reader and
/// checkpointer behind a mutex held only for short bookkeeping.
#[derive(Debug, Default)]
pub struct Ledger {
    files: HashMap<u64, FileLedger>,
    chunk_owner: HashMap<u64, u64>,
    /// Positions loaded from disk (or of closed files) not currently followed.
    carried: HashMap<FileId, Checkpoint>,
    next_key: u64,
    next_chunk: u64,
    dirty: bool,
}

/// The ledger, shareable.
pub type SharedLedger = Arc<Mutex<Ledger>>;

impl Ledger {
    /// A ledger seeded with positions loaded from disk.
    pub fn new(loaded: Vec<Checkpoint>) -> Self {
        Self {
            carried: loaded.into_iter().map(|c| (c.id, c)).collect(),
            next_chunk: 1,
            ..Self::default()
        }
    }

    /// Wraps it for sharing.
    pub fn shared(self) -> SharedLedger {
        Arc::new(Mutex::new(self))
    }

    /// The saved position of a file, if one is known (followed, closed, or loaded from disk).
    pub fn lookup(&self, id: FileId) -> Option<Checkpoint> {
        if let Some(f) = self.files.values().find(|f| f.id == id) {
            return Some(Checkpoint {
                id,
                head: f.head,
                offset: f.acked,
                path: f.path.clone(),
                updated_ms: now_ms(),
            });
        }
        self.carried.get(&id).cloned()
    }

    /// Starts following a file from `offset`; returns its ledger key. Any earlier entry for the same
    /// file (before a truncation) is dropped: its late acknowledgements are ignored.
    pub fn open(&mut self, id: FileId, head: Fingerprint, path: &str, offset: u64) -> u64 {
        self.carried.remove(&id);
        let stale: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, f)| f.id == id)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.forget(k);
        }
        self.next_key += 1;
        let key = self.next_key;
        self.files.insert(
            key,
            FileLedger {
                id,
                head,
                path: path.to_string(),
                acked: offset,
                pending: VecDeque::new(),
                closed: false,
            },
        );
        self.dirty = true;
        key
    }

    fn forget(&mut self, key: u64) {
        if let Some(f) = self.files.remove(&key) {
            for (chunk, _, _) in f.pending {
                self.chunk_owner.remove(&chunk);
            }
        }
    }

    /// Updates a file's fingerprint (it grew past the bytes the old one covered).
    pub fn set_head(&mut self, key: u64, head: Fingerprint) {
        if let Some(f) = self.files.get_mut(&key) {
            f.head = head;
            self.dirty = true;
        }
    }

    /// Registers a chunk of `lines` lines ending at `end_offset`; returns its id. A chunk of zero
    /// lines moves the position as soon as everything before it is done.
    pub fn register(&mut self, key: u64, end_offset: u64, lines: u64) -> u64 {
        let chunk = self.next_chunk;
        self.next_chunk += 1;
        if let Some(f) = self.files.get_mut(&key) {
            f.pending.push_back((chunk, end_offset, lines));
            if lines > 0 {
                self.chunk_owner.insert(chunk, key);
            } else {
                Self::advance(f);
                self.dirty = true;
            }
        }
        chunk
    }

    /// The file is no longer followed (finished after rotation or deletion). Its position is kept
    /// until its chunks are done, then carried for [`RETENTION`] in case it reappears.
    pub fn close(&mut self, key: u64) {
        if let Some(f) = self.files.get_mut(&key) {
            f.closed = true;
            self.dirty = true;
        }
        self.retire_closed();
    }

    fn retire_closed(&mut self) {
        let done: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, f)| f.closed && f.pending.is_empty())
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            if let Some(f) = self.files.remove(&k) {
                self.carried.insert(
                    f.id,
                    Checkpoint {
                        id: f.id,
                        head: f.head,
                        offset: f.acked,
                        path: f.path,
                        updated_ms: now_ms(),
                    },
                );
            }
        }
    }

    fn advance(f: &mut FileLedger) {
        while let Some(&(_, end, 0)) = f.pending.front() {
            f.acked = end;
            f.pending.pop_front();
        }
    }

    /// Applies acknowledgements (one [`AckRef`] per delivered entry). Unknown chunks (of files
    /// truncated since) are ignored.
    pub fn ack(&mut self, acks: &[AckRef]) {
        let mut i = 0;
        let mut touched_closed = false;
        while i < acks.len() {
            let chunk = acks[i].chunk;
            let mut n = 1u64;
            while i + (n as usize) < acks.len() && acks[i + n as usize].chunk == chunk {
                n += 1;
            }
            i += n as usize;
            let Some(key) = self.chunk_owner.get(&chunk).copied() else {
                continue;
            };
            let Some(f) = self.files.get_mut(&key) else {
                continue;
            };
            if let Ok(pos) = f.pending.binary_search_by_key(&chunk, |(c, _, _)| *c) {
                let left = &mut f.pending[pos].2;
                *left = left.saturating_sub(n);
                if *left == 0 {
                    self.chunk_owner.remove(&chunk);
                }
            }
            Self::advance(f);
            touched_closed |= f.closed;
            self.dirty = true;
        }
        if touched_closed {
            self.retire_closed();
        }
    }

    /// The acknowledged position of a followed file.
    pub fn acked(&self, key: u64) -> Option<u64> {
        self.files.get(&key).map(|f| f.acked)
    }

    /// Every position to persist, or `None` when nothing changed since the last call.
    pub fn take_snapshot(&mut self) -> Option<Vec<Checkpoint>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let now = now_ms();
        let keep_after = now.saturating_sub(RETENTION.as_millis() as u64);
        self.carried.retain(|_, c| c.updated_ms >= keep_after);
        let mut out: Vec<Checkpoint> = self.carried.values().cloned().collect();
        out.extend(self.files.values().map(|f| Checkpoint {
            id: f.id,
            head: f.head,
            offset: f.acked,
            path: f.path.clone(),
            updated_ms: now,
        }));
        out.sort_by_key(|c| c.id);
        Some(out)
    }
}

fn lock(l: &SharedLedger) -> std::sync::MutexGuard<'_, Ledger> {
    // The ledger holds plain bookkeeping; a panic elsewhere cannot leave it half-updated in a way
    // worse than losing the process, so keep serving it.
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Locks a shared ledger.
pub fn with<R>(l: &SharedLedger, f: impl FnOnce(&mut Ledger) -> R) -> R {
    f(&mut lock(l))
}

/// The checkpointer task: applies acknowledgements as they come and writes positions every
/// `interval` when they changed. Ends when every acknowledgement sender is gone (graceful drain)
/// or `stop` fires (deadline); writes a final time either way.
pub async fn run(
    ledger: SharedLedger,
    mut acks: mpsc::UnboundedReceiver<Vec<AckRef>>,
    dir: PathBuf,
    interval: Duration,
    stop: CancellationToken,
    beat: impl Fn() + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let beat_every = Duration::from_millis(500).min(interval);
    let mut beat_tick = tokio::time::interval(beat_every);
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            got = acks.recv() => match got {
                Some(a) => {
                    let mut l = lock(&ledger);
                    l.ack(&a);
                    // Drain what is queued under one lock.
                    while let Ok(more) = acks.try_recv() {
                        l.ack(&more);
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                flush(&ledger, &dir, &mut failing).await;
            }
            _ = beat_tick.tick() => beat(),
        }
    }
    while let Ok(more) = acks.try_recv() {
        lock(&ledger).ack(&more);
    }
    lock(&ledger).dirty = true;
    flush(&ledger, &dir, &mut failing).await;
    if failing {
        anyhow::bail!(
            "could not save positions in '{}' (see the log)",
            dir.display()
        );
    }
    Ok(())
}

/// Writes the positions if they changed. The write and its fsyncs run on a blocking thread, so a
/// slow disk never stalls the runtime's worker; it is awaited (joined) here.
async fn flush(ledger: &SharedLedger, dir: &Path, failing: &mut bool) {
    let Some(snapshot) = lock(ledger).take_snapshot() else {
        return;
    };
    let target = dir.to_path_buf();
    let stored = tokio::task::spawn_blocking(move || store(&target, snapshot))
        .await
        .unwrap_or_else(|e| {
            Err(CheckpointError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::other(format!("the writing thread failed: {e}")),
            })
        });
    match stored {
        Ok(()) => {
            if *failing {
                tracing::info!(dir = %dir.display(), "saving positions works again");
            }
            *failing = false;
        }
        Err(e) => {
            metrics::counter!("shipper_checkpoint_errors_total").increment(1);
            if !*failing {
                tracing::error!(error = %e, "cannot save positions; retrying every interval");
            }
            *failing = true;
            lock(ledger).dirty = true;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "checkpoint_tests.rs"]
mod tests;
