//! One followed file: its open handle, identity, read position and line state.
//!
//! A watcher keeps its file descriptor, so it survives rotation by rename: the reader marks it
//! *finishing* and it keeps reading the old inode to its end before it is closed. Truncation
//! (copytruncate) is detected when the size falls below the read position, or when the head
//! fingerprint no longer matches after an idle spell; the watcher then starts over at offset 0
//! under a new ledger entry. Reads are plain blocking `read(2)` calls on local files in 256 KiB
//! blocks, bounded per call by a budget so one busy file cannot starve the others.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::event::{CHUNK_TEXT, Labels, Lines};
use crate::source::SourceEvents;
use crate::source::docker::{DockerDecoder, Stream};
use crate::source::fingerprint::{FileId, Fingerprint};
use crate::source::lines::LineSplitter;

/// Size of one `read(2)`.
pub(crate) const READ_BLOCK: usize = 128 * 1024;

/// How a watcher's bytes become entries.
#[derive(Debug)]
pub(crate) enum Decoder {
    /// One entry per line, timestamped at read time.
    Plain { labels: Labels },
    /// Docker json-file records; labels per stream.
    Docker {
        decoder: DockerDecoder,
        stdout: Labels,
        stderr: Labels,
        /// Offset just past the last record after which no stream held a partial line.
        safe_offset: u64,
    },
}

/// What one read pass produced.
#[derive(Debug, Default)]
pub(crate) struct ReadOutput {
    /// Lines per stream.
    pub(crate) streams: Vec<(Labels, Lines)>,
    /// Offset just past the last complete line (what the checkpoint may advance to).
    pub(crate) end_offset: u64,
    /// Bytes read in this pass.
    pub(crate) bytes: u64,
    /// Whether the pass stopped at the end of the file (rather than at its budget).
    pub(crate) eof: bool,
}

#[derive(Debug)]
pub(crate) struct Watcher {
    pub(crate) path: PathBuf,
    pub(crate) path_str: String,
    file: File,
    pub(crate) id: FileId,
    pub(crate) head: Fingerprint,
    pub(crate) key: u64,
    /// Bytes consumed from the file.
    pub(crate) pos: u64,
    splitter: LineSplitter,
    decoder: Decoder,
    /// Set when the path no longer leads to this file: read to the end, then close.
    pub(crate) finishing: Option<Instant>,
    /// Whether the last pass ended at EOF (the next growth re-checks the fingerprint).
    idle: bool,
    last_ts: i64,
    /// Lines salvaged from before a truncation, shipped with the next chunk.
    leftover: Vec<Vec<u8>>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Watcher {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        path: PathBuf,
        file: File,
        id: FileId,
        head: Fingerprint,
        key: u64,
        pos: u64,
        max_line: usize,
        decoder: Decoder,
    ) -> io::Result<Self> {
        let mut file = file;
        file.seek(SeekFrom::Start(pos))?;
        let decoder = match decoder {
            Decoder::Docker {
                decoder,
                stdout,
                stderr,
                ..
            } => Decoder::Docker {
                decoder,
                stdout,
                stderr,
                safe_offset: pos,
            },
            d => d,
        };
        Ok(Self {
            path_str: path.display().to_string(),
            path,
            file,
            id,
            head,
            key,
            pos,
            splitter: LineSplitter::new(max_line),
            decoder,
            finishing: None,
            idle: false,
            last_ts: 0,
            leftover: Vec::new(),
        })
    }

    /// Checks for truncation. Returns `Some(new_head)` when the file must be read again from 0
    /// (the caller opens a new ledger entry and calls [`Watcher::restart`]).
    pub(crate) fn truncated(&mut self) -> io::Result<Option<Fingerprint>> {
        let size = self.file.metadata()?.len();
        let replaced = if size < self.pos {
            true
        } else if self.idle && size > self.pos && self.head.len > 0 {
            !self.head.matches(&self.file, size)?
        } else {
            false
        };
        if replaced {
            return Ok(Some(Fingerprint::of_file(&self.file, size)?));
        }
        Ok(None)
    }

    /// Starts over at offset 0 under ledger entry `key`, keeping an unfinished line as a leftover.
    pub(crate) fn restart(&mut self, key: u64, head: Fingerprint) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        if let Some((line, _)) = self.splitter.reset() {
            self.leftover.push(line);
        }
        if let Decoder::Docker {
            decoder,
            safe_offset,
            ..
        } = &mut self.decoder
        {
            for (_, line, _) in decoder.take_partials() {
                self.leftover.push(line);
            }
            *safe_offset = 0;
        }
        self.key = key;
        self.head = head;
        self.pos = 0;
        self.idle = false;
        Ok(())
    }

    /// A fresh fingerprint when the current one covers less than it could and the file grew.
    pub(crate) fn grown_head(&self) -> Option<Fingerprint> {
        if self.head.is_partial() && self.pos > self.head.len {
            Fingerprint::of_file(&self.file, self.pos).ok()
        } else {
            None
        }
    }

    /// Whether the file was deleted (no link left) while open.
    pub(crate) fn deleted(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true)
    }

    fn next_ts(&mut self, now: i64) -> i64 {
        // Strictly increasing per file: Loki drops an entry identical in stream, time and line.
        let ts = now.max(self.last_ts + 1);
        self.last_ts = ts;
        ts
    }

    /// Reads up to `budget` bytes and splits them into lines.
    pub(crate) fn read(
        &mut self,
        buf: &mut [u8],
        budget: usize,
        events: &dyn SourceEvents,
    ) -> io::Result<ReadOutput> {
        let mut out = ReadOutput::default();
        let now = now_ns();
        // Leftover lines (salvaged from before a truncation) lead the chunk; a Docker file ships
        // them on stdout.
        let mut plain = CHUNK_TEXT.take();
        for line in std::mem::take(&mut self.leftover) {
            let ts = self.next_ts(now);
            plain.push_lossy(ts, &line);
        }
        let mut so = if matches!(self.decoder, Decoder::Docker { .. }) {
            std::mem::take(&mut plain)
        } else {
            Lines::new()
        };
        let mut se = Lines::new();
        loop {
            if out.bytes as usize >= budget {
                break;
            }
            let n = match self.file.read(buf) {
                Ok(0) => {
                    out.eof = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let base = self.pos;
            self.pos += n as u64;
            out.bytes += n as u64;
            let data = &buf[..n];
            match &mut self.decoder {
                Decoder::Plain { .. } => {
                    // One allocation for the chunk's text: the lines are at most what was read
                    // plus the unfinished line carried over. Grown to about that and no more (a
                    // pooled buffer of one block must not double for a few bytes of carry-over).
                    let need = n + self.splitter.pending_bytes() as usize;
                    plain.reserve_text_within(need, plain.text_len() + need + 4096);
                    let mut truncated = 0u64;
                    let last_ts = &mut self.last_ts;
                    self.splitter.feed(data, base, |line, cut, _| {
                        truncated += u64::from(cut);
                        let ts = now.max(*last_ts + 1);
                        *last_ts = ts;
                        plain.push_lossy(ts, line);
                    });
                    if truncated > 0 {
                        events.lines_truncated(&self.path_str, truncated);
                    }
                }
                Decoder::Docker {
                    decoder,
                    safe_offset,
                    ..
                } => {
                    let path = &self.path_str;
                    self.splitter.feed(data, base, |record, cut, end| {
                        if cut {
                            // A record longer than max_line_bytes cannot be parsed; count it.
                            events.docker_invalid(path, "record longer than max_line_bytes");
                            events.lines_truncated(path, 1);
                            so.push_lossy(now, record);
                        } else {
                            match decoder.decode(record) {
                                Ok(Some((stream, ts, line, t))) => {
                                    if t {
                                        events.lines_truncated(path, 1);
                                    }
                                    let v = if stream == Stream::Stdout {
                                        &mut so
                                    } else {
                                        &mut se
                                    };
                                    v.push_lossy(ts, &line);
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    // Ship the raw record rather than lose it.
                                    events.docker_invalid(path, &e.to_string());
                                    so.push_lossy(now, record);
                                }
                            }
                        }
                        if decoder.is_idle() {
                            *safe_offset = end;
                        }
                    });
                }
            }
        }
        self.idle = out.eof;
        match &self.decoder {
            Decoder::Plain { labels } => {
                out.end_offset = self.pos - self.splitter.pending_bytes();
                if !plain.is_empty() {
                    out.streams.push((Arc::clone(labels), plain));
                }
            }
            Decoder::Docker {
                stdout,
                stderr,
                safe_offset,
                ..
            } => {
                out.end_offset = *safe_offset;
                if !so.is_empty() {
                    out.streams.push((Arc::clone(stdout), so));
                }
                if !se.is_empty() {
                    out.streams.push((Arc::clone(stderr), se));
                }
            }
        }
        Ok(out)
    }

    /// The file is finished: its unfinished lines become entries (the bytes are all there is).
    pub(crate) fn finish(&mut self) -> ReadOutput {
        let now = now_ns();
        let mut out = ReadOutput {
            end_offset: self.pos,
            eof: true,
            ..ReadOutput::default()
        };
        let mut lines: Vec<Vec<u8>> = std::mem::take(&mut self.leftover);
        if let Some((line, _)) = self.splitter.take_partial() {
            lines.push(line);
        }
        let labels = match &mut self.decoder {
            Decoder::Plain { labels } => Arc::clone(labels),
            Decoder::Docker {
                decoder, stdout, ..
            } => {
                lines.extend(decoder.take_partials().into_iter().map(|(_, l, _)| l));
                Arc::clone(stdout)
            }
        };
        if !lines.is_empty() {
            let mut v = Lines::new();
            for l in &lines {
                let ts = self.next_ts(now);
                v.push_lossy(ts, l);
            }
            out.streams.push((labels, v));
        }
        out
    }
}
