//! One followed file: its open handle, identity, read position and line state.
//!
//! A watcher keeps its file descriptor, so it survives rotation by rename: the reader marks it
//! *finishing* and it keeps reading the old inode to its end before it is closed. Truncation
//! (copytruncate) is detected when the size falls below the read position, or when the head
//! fingerprint no longer matches after an idle spell; the watcher then starts over at offset 0
//! under a new ledger entry. Reads are plain blocking `read(2)` calls on local files in 256 KiB
//! blocks, bounded per call by a budget so one busy file cannot starve the others.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::Multiline;
use crate::event::{CHUNK_TEXT, Labels, Lines};
use crate::source::SourceEvents;
use crate::source::cri::CriDecoder;
use crate::source::docker::DockerDecoder;
use crate::source::fingerprint::{FileId, Fingerprint};
use crate::source::lines::LineSplitter;
use crate::source::merge::Merged;
use crate::source::multiline::{Joined, Joiner};

/// Size of one `read(2)`.
pub(crate) const READ_BLOCK: usize = 128 * 1024;

/// How a watcher's bytes become entries.
#[derive(Debug)]
pub(crate) enum Decoder {
    /// One entry per line, timestamped at read time.
    Plain { labels: Labels },
    /// Container runtime records (Docker json-file or CRI): partial lines merged, timestamps
    /// from the records, labels per stream (`[stdout, stderr]`).
    Records { format: Format, labels: [Labels; 2] },
}

/// A container runtime's record format.
#[derive(Debug)]
pub(crate) enum Format {
    Docker(DockerDecoder),
    Cri(CriDecoder),
}

impl Format {
    fn decode(&mut self, record: &[u8], start: u64) -> Result<Option<Merged>, String> {
        match self {
            Format::Docker(d) => d.decode(record, start).map_err(|e| e.to_string()),
            Format::Cri(d) => d.decode(record, start).map_err(|e| e.to_string()),
        }
    }
    fn held_start(&self) -> Option<u64> {
        match self {
            Format::Docker(d) => d.held_start(),
            Format::Cri(d) => d.held_start(),
        }
    }
    fn take_partials(&mut self) -> Vec<Merged> {
        match self {
            Format::Docker(d) => d.take_partials(),
            Format::Cri(d) => d.take_partials(),
        }
    }
    fn invalid(&self, events: &dyn SourceEvents, path: &str, error: &str) {
        match self {
            Format::Docker(_) => events.docker_invalid(path, error),
            Format::Cri(_) => events.cri_invalid(path, error),
        }
    }
}

/// One line of a stream, after partial records were merged (before multiline joining).
struct Logical<'a> {
    /// 0: plain or stdout, 1: stderr.
    stream: usize,
    ts_ns: i64,
    line: Cow<'a, [u8]>,
    truncated: bool,
    /// File offset of its first byte (of its first record, when merged).
    start: u64,
}

/// What one read pass produced.
#[derive(Debug, Default)]
pub(crate) struct ReadOutput {
    /// Lines per stream.
    pub(crate) streams: Vec<(Labels, Lines)>,
    /// Offset before which every byte belongs to an entry in this or an earlier output (what the
    /// checkpoint may advance to): the end of the last complete line, or the start of the
    /// earliest line or entry still held (a partial record, an open multiline entry).
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
    /// Offset just past the last complete physical line (where the next one starts).
    line_start: u64,
    splitter: LineSplitter,
    decoder: Decoder,
    /// One joiner per stream when the source is multiline (`[plain]` or `[stdout, stderr]`).
    joiners: Vec<Joiner>,
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

/// A read-time timestamp, strictly increasing per file: Loki drops an entry identical in
/// stream, time and line.
fn bump(last_ts: &mut i64, now: i64) -> i64 {
    let ts = now.max(*last_ts + 1);
    *last_ts = ts;
    ts
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
        multiline: Option<&Multiline>,
    ) -> io::Result<Self> {
        let mut file = file;
        file.seek(SeekFrom::Start(pos))?;
        let streams = match decoder {
            Decoder::Plain { .. } => 1,
            Decoder::Records { .. } => 2,
        };
        let joiners = multiline
            .map(|m| {
                (0..streams)
                    .map(|_| Joiner::new(m.clone(), max_line))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            path_str: path.display().to_string(),
            path,
            file,
            id,
            head,
            key,
            pos,
            line_start: pos,
            splitter: LineSplitter::new(max_line),
            decoder,
            joiners,
            finishing: None,
            idle: false,
            last_ts: 0,
            leftover: Vec::new(),
        })
    }

    /// When an open multiline entry of this file falls due (the reader wakes then).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.joiners.iter().filter_map(Joiner::deadline).min()
    }

    /// See [`ReadOutput::end_offset`].
    fn safe_offset(&self) -> u64 {
        let held = match &self.decoder {
            Decoder::Plain { .. } => None,
            Decoder::Records { format, .. } => format.held_start(),
        };
        self.joiners
            .iter()
            .filter_map(Joiner::held_start)
            .chain(held)
            .fold(self.line_start, u64::min)
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

    /// Starts over at offset 0 under ledger entry `key`, keeping what was held (an unfinished
    /// line, partial records, open multiline entries) as leftovers: those bytes are gone.
    pub(crate) fn restart(&mut self, key: u64, head: Fingerprint) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(0))?;
        for j in &mut self.joiners {
            if let Some(e) = j.take() {
                self.leftover.push(e.text);
            }
        }
        if let Decoder::Records { format, .. } = &mut self.decoder {
            for m in format.take_partials() {
                self.leftover.push(m.line);
            }
        }
        if let Some((line, _)) = self.splitter.reset() {
            self.leftover.push(line);
        }
        self.key = key;
        self.head = head;
        self.pos = 0;
        self.line_start = 0;
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

    /// Reads up to `budget` bytes and turns them into entries; open multiline entries that fell
    /// due are completed too.
    pub(crate) fn read(
        &mut self,
        buf: &mut [u8],
        budget: usize,
        events: &dyn SourceEvents,
    ) -> io::Result<ReadOutput> {
        let mut out = ReadOutput::default();
        let now = now_ns();
        let now_i = Instant::now();
        // Leftover lines (salvaged from before a truncation) lead the chunk, on the first stream
        // (a Docker or CRI file ships them on stdout).
        let mut lines = [CHUNK_TEXT.take(), Lines::new()];
        for line in std::mem::take(&mut self.leftover) {
            let ts = bump(&mut self.last_ts, now);
            lines[0].push_lossy(ts, &line);
        }
        let fast = matches!(self.decoder, Decoder::Plain { .. }) && self.joiners.is_empty();
        let mut truncated = 0u64;
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
            if fast {
                // The common case, kept lean: one entry per line. One allocation for the chunk's
                // text: the lines are at most what was read plus the unfinished line carried
                // over. Grown to about that and no more (a pooled buffer of one block must not
                // double for a few bytes of carry-over).
                let plain = &mut lines[0];
                let need = n + self.splitter.pending_bytes() as usize;
                plain.reserve_text_within(need, plain.text_len() + need + 4096);
                let last_ts = &mut self.last_ts;
                self.splitter.feed(data, base, |line, cut, _| {
                    truncated += u64::from(cut);
                    plain.push_lossy(bump(last_ts, now), line);
                });
            } else {
                truncated += self.feed(data, base, now, now_i, &mut lines, events);
            }
        }
        self.line_start = self.pos - self.splitter.pending_bytes();
        for (i, j) in self.joiners.iter_mut().enumerate() {
            if let Some(e) = j.flush_due(now_i) {
                truncated += u64::from(e.truncated);
                lines[i].push_lossy(e.ts_ns, &e.text);
            }
        }
        if truncated > 0 {
            events.lines_truncated(&self.path_str, truncated);
        }
        self.idle = out.eof;
        out.end_offset = self.safe_offset();
        self.output(lines, &mut out);
        Ok(out)
    }

    /// Moves each stream's lines into `out` under its labels.
    fn output(&self, lines: [Lines; 2], out: &mut ReadOutput) {
        let labels = match &self.decoder {
            Decoder::Plain { labels } => [labels, labels],
            Decoder::Records { labels, .. } => [&labels[0], &labels[1]],
        };
        for (l, v) in labels.into_iter().zip(lines) {
            if !v.is_empty() {
                out.streams.push((Arc::clone(l), v));
            }
        }
    }

    /// The general path: decodes records, merges partial ones, joins multiline entries. Returns
    /// the number of entries shipped truncated.
    fn feed(
        &mut self,
        data: &[u8],
        base: u64,
        now: i64,
        now_i: Instant,
        lines: &mut [Lines; 2],
        events: &dyn SourceEvents,
    ) -> u64 {
        let Self {
            splitter,
            decoder,
            joiners,
            last_ts,
            line_start,
            path_str,
            ..
        } = self;
        let path = path_str.as_str();
        let mut truncated = 0u64;
        splitter.feed(data, base, |record, cut, end| {
            let start = std::mem::replace(line_start, end);
            let raw = |truncated| Logical {
                stream: 0,
                ts_ns: now,
                line: Cow::Borrowed(record),
                truncated,
                start,
            };
            let logical = match decoder {
                Decoder::Plain { .. } => Some(Logical {
                    ts_ns: bump(last_ts, now),
                    ..raw(cut)
                }),
                Decoder::Records { format, .. } if cut => {
                    // A record longer than max_line_bytes cannot be parsed; ship what is kept.
                    format.invalid(events, path, "record longer than max_line_bytes");
                    Some(raw(true))
                }
                Decoder::Records { format, .. } => match format.decode(record, start) {
                    Ok(Some(m)) => Some(Logical {
                        stream: m.stream as usize,
                        ts_ns: m.ts_ns,
                        line: Cow::Owned(m.line),
                        truncated: m.truncated,
                        start: m.start,
                    }),
                    Ok(None) => None,
                    Err(e) => {
                        // Ship the raw record rather than lose it.
                        format.invalid(events, path, &e);
                        Some(raw(false))
                    }
                },
            };
            let Some(Logical {
                stream: i,
                ts_ns: ts,
                line,
                truncated: cut,
                start: first,
            }) = logical
            else {
                return;
            };
            match joiners.get_mut(i) {
                None => {
                    truncated += u64::from(cut);
                    lines[i].push_lossy(ts, &line);
                }
                Some(j) => j.push(&line, ts, cut, first, now_i, |e: Joined| {
                    truncated += u64::from(e.truncated);
                    lines[i].push_lossy(e.ts_ns, &e.text);
                }),
            }
        });
        truncated
    }

    /// The file is finished: what it holds (open entries, partial records, an unfinished line)
    /// becomes entries, since those bytes are all there is.
    pub(crate) fn finish(&mut self) -> ReadOutput {
        let now = now_ns();
        let mut out = ReadOutput {
            end_offset: self.pos,
            eof: true,
            ..ReadOutput::default()
        };
        let mut lines = [Lines::new(), Lines::new()];
        for line in std::mem::take(&mut self.leftover) {
            lines[0].push_lossy(bump(&mut self.last_ts, now), &line);
        }
        for (i, j) in self.joiners.iter_mut().enumerate() {
            if let Some(e) = j.take() {
                lines[i].push_lossy(e.ts_ns, &e.text);
            }
        }
        if let Decoder::Records { format, .. } = &mut self.decoder {
            for m in format.take_partials() {
                lines[m.stream as usize].push_lossy(m.ts_ns, &m.line);
            }
        }
        if let Some((line, _)) = self.splitter.take_partial() {
            lines[0].push_lossy(bump(&mut self.last_ts, now), &line);
        }
        self.line_start = self.pos;
        self.output(lines, &mut out);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::source::MetricEvents;

    fn watcher(path: &std::path::Path, decoder: Decoder, multiline: Option<&Multiline>) -> Watcher {
        let file = File::open(path).unwrap();
        let meta = file.metadata().unwrap();
        let head = Fingerprint::of_file(&file, meta.len()).unwrap();
        let id = FileId::of(&meta);
        Watcher::new(path.into(), file, id, head, 1, 0, 1024, decoder, multiline).unwrap()
    }

    fn labels(name: &str) -> Labels {
        Arc::new(BTreeMap::from([("s".to_string(), name.to_string())]))
    }

    fn append(path: &std::path::Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    /// Reads once: the entries as `(stream label, line)` and the offset the checkpoint may take.
    fn read(w: &mut Watcher) -> (Vec<(String, String)>, u64) {
        let mut buf = vec![0u8; READ_BLOCK];
        let out = w.read(&mut buf, 1 << 20, &MetricEvents).unwrap();
        let entries = out
            .streams
            .iter()
            .flat_map(|(l, lines)| lines.iter().map(|(_, t)| (l["s"].clone(), t.to_string())))
            .collect();
        (entries, out.end_offset)
    }

    fn multiline(start: &str, max_wait: Duration) -> Multiline {
        Multiline {
            start: regex::bytes::Regex::new(start).unwrap(),
            max_lines: 500,
            max_wait,
        }
    }

    #[test]
    fn the_position_stays_at_the_start_of_an_open_entry() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.log");
        append(&p, b"S1\nS2\n  a\n  b");
        let m = multiline("^S", Duration::from_secs(3600));
        let mut w = watcher(
            &p,
            Decoder::Plain {
                labels: labels("p"),
            },
            Some(&m),
        );
        let (entries, end) = read(&mut w);
        assert_eq!(entries, [("p".into(), "S1".into())]);
        assert_eq!(end, 3, "S2 opens an entry that is not complete yet");
        append(&p, b"\nS3\n");
        let (entries, end) = read(&mut w);
        assert_eq!(entries, [("p".into(), "S2\n  a\n  b".into())]);
        assert_eq!(
            end, 14,
            "the entry S3 opened holds the position at its start"
        );
        assert!(w.deadline().is_some());
        let last = w.finish();
        assert_eq!(last.end_offset, 17);
        assert_eq!(last.streams[0].1.iter().next().unwrap().1, "S3");
    }

    #[test]
    fn an_open_entry_falls_due_after_max_wait_and_releases_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.log");
        append(&p, b"S1\n  a\n");
        let m = multiline("^S", Duration::from_millis(1));
        let mut w = watcher(
            &p,
            Decoder::Plain {
                labels: labels("p"),
            },
            Some(&m),
        );
        let (entries, end) = read(&mut w);
        assert!(entries.is_empty());
        assert_eq!(end, 0);
        let due = w.deadline().unwrap();
        while Instant::now() < due {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (entries, end) = read(&mut w);
        assert_eq!(entries, [("p".into(), "S1\n  a".into())]);
        assert_eq!(end, 7);
        assert_eq!(w.deadline(), None);
    }

    #[test]
    fn a_held_cri_partial_holds_the_position_while_the_other_stream_ships() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        let t = "2024-05-01T12:00:00Z";
        let first = format!("{t} stdout P ab\n");
        let err = format!("{t} stderr F e\n");
        append(&p, format!("{first}{err}").as_bytes());
        let decoder = Decoder::Records {
            format: Format::Cri(CriDecoder::new(1024)),
            labels: [labels("out"), labels("err")],
        };
        let mut w = watcher(&p, decoder, None);
        let (entries, end) = read(&mut w);
        assert_eq!(entries, [("err".into(), "e".into())]);
        assert_eq!(end, 0, "the P record at 0 is held");
        let rest = format!("{t} stdout F cd\n");
        append(&p, rest.as_bytes());
        let (entries, end) = read(&mut w);
        assert_eq!(entries, [("out".into(), "abcd".into())]);
        assert_eq!(end as usize, first.len() + err.len() + rest.len());
    }
}
