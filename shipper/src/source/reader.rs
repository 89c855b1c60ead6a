//! The reader: one actor that discovers, follows and reads every file of every source.
//!
//! Invariants: there is exactly one reader task, never a task per file or per poll; it owns every
//! [`Watcher`]. Each pass it re-checks every file for truncation, reads up to [`BUDGET`] bytes from
//! it, registers the resulting chunk with the checkpoint ledger and only then sends it to the
//! dispatcher over a bounded channel, so a slow sink slows reading and memory stays bounded.
//! Discovery walks the glob bases every `poll_interval` and whenever `notify` reports a file created,
//! removed or renamed; filesystem events also wake an idle reader at once (the poll is the fallback
//! when events are unavailable). A file whose path leads elsewhere or nowhere is *finishing*: it is
//! read to its end through its open descriptor, then closed (kubelet's rotation, `0.log` renamed
//! and a new `0.log` created, is this case). Open multiline entries fall due by time: the idle
//! sleep ends at the earliest [`Watcher::deadline`], so no timer runs per file. Failures stay
//! local to their file: logged once, counted, retried on the next pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, SharedLedger};
use crate::config::{ReadFrom, SourceConfig, SourceKind};
use crate::event::{Chunk, Labels};
use crate::source::SourceEvents;
use crate::source::cri::{CriDecoder, pod_of};
use crate::source::docker::DockerDecoder;
use crate::source::fingerprint::{FileId, Fingerprint};
use crate::source::watcher::{Decoder, Format, READ_BLOCK, ReadOutput, Watcher};

/// Bytes read from one file per pass before moving to the next file.
pub const BUDGET: usize = 128 * 1024;
/// A finishing file idle at its end this long is closed.
const FINISH_GRACE: Duration = Duration::from_millis(1000);
/// Longest idle sleep when no filesystem event arrives.
const MAX_IDLE: Duration = Duration::from_millis(250);

struct Source {
    cfg: SourceConfig,
    include: GlobSet,
    exclude: GlobSet,
    bases: Vec<Base>,
}

/// A directory discovery walks, and how deep: patterns without `**` match files a fixed number
/// of directories below their base, and the walk goes no deeper (`/var/log/*.log` reads
/// `/var/log` only, not every directory under it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Base {
    dir: PathBuf,
    /// Directories entered below `dir` at most; `None` for a pattern with `**`.
    depth: Option<usize>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("include", &self.cfg.include)
            .finish()
    }
}

fn globset(patterns: &[String]) -> anyhow::Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(GlobBuilder::new(p).literal_separator(true).build()?);
    }
    Ok(b.build()?)
}

/// The directory a pattern's matches all live under (its components before the first glob one),
/// and how many directories below it a match can lie.
fn glob_base(pattern: &str) -> Base {
    let mut dir = PathBuf::new();
    let mut components = Path::new(pattern).components();
    for c in components.by_ref() {
        let s = c.as_os_str().to_string_lossy();
        if s.contains(['*', '?', '[', '{']) {
            let rest: Vec<String> = std::iter::once(s.into_owned())
                .chain(components.map(|c| c.as_os_str().to_string_lossy().into_owned()))
                .collect();
            let depth = (!rest.iter().any(|c| c.contains("**"))).then(|| rest.len() - 1);
            return Base { dir, depth };
        }
        dir.push(c);
    }
    // A literal path: its parent is what gets walked, and only that directory.
    Base {
        dir: dir.parent().map(Path::to_path_buf).unwrap_or(dir),
        depth: Some(0),
    }
}

/// The bases of `patterns`, one per directory, each as deep as its deepest pattern needs.
fn glob_bases(patterns: &[String]) -> Vec<Base> {
    let mut bases: Vec<Base> = Vec::new();
    for base in patterns.iter().map(|p| glob_base(p)) {
        match bases.iter_mut().find(|b| b.dir == base.dir) {
            Some(known) => {
                known.depth = match (known.depth, base.depth) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                }
            }
            None => bases.push(base),
        }
    }
    bases.sort();
    bases
}

/// Collects the files under `dir`, entering directories at most `max_depth` levels down (and
/// never more than 32, against link loops).
fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize, max_depth: Option<usize>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let enter = depth < 32 && max_depth.is_none_or(|max| depth < max);
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        if ft.is_dir() {
            if enter {
                walk(&p, out, depth + 1, max_depth);
            }
        } else {
            // Regular files and symlinks (followed when opened).
            out.push(p);
        }
    }
}

/// Reports a failure the first time it happens for a path, until the path works again.
#[derive(Debug, Default)]
struct Failures(HashMap<PathBuf, String>);

impl Failures {
    fn report(&mut self, path: &Path, e: &std::io::Error, events: &dyn SourceEvents) {
        let msg = e.to_string();
        if self.0.get(path) != Some(&msg) {
            events.read_error(&path.display().to_string(), e);
            self.0.insert(path.to_path_buf(), msg);
        }
    }
    fn clear(&mut self, path: &Path) {
        if self.0.remove(path).is_some() {
            tracing::info!(path = %path.display(), "file readable again");
        }
    }
}

/// The reader actor's state.
#[derive(Debug)]
struct Reader {
    sources: Vec<Source>,
    watchers: Vec<Watcher>,
    ledger: SharedLedger,
    events: Arc<dyn SourceEvents>,
    failures: Failures,
    tx: mpsc::Sender<Chunk>,
}

/// Everything the reader task needs.
#[derive(Debug)]
pub struct ReaderParts {
    /// The sources to follow.
    pub sources: Vec<SourceConfig>,
    /// Positions and in-flight chunks.
    pub ledger: SharedLedger,
    /// Chunks go to the dispatcher here.
    pub tx: mpsc::Sender<Chunk>,
    /// Telemetry.
    pub events: Arc<dyn SourceEvents>,
    /// Whether to use filesystem events (`notify`); without them discovery and reads rely on the
    /// poll alone (the fallback when events are unavailable, e.g. on network filesystems).
    pub fs_events: bool,
}

/// Runs the reader until `stop` fires or the dispatcher is gone.
pub async fn run(
    parts: ReaderParts,
    stop: CancellationToken,
    beat: impl Fn() + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let mut sources = Vec::new();
    for cfg in parts.sources {
        let include = globset(&cfg.include)?;
        let exclude = globset(&cfg.exclude)?;
        let bases = glob_bases(&cfg.include);
        sources.push(Source {
            cfg,
            include,
            exclude,
            bases,
        });
    }
    let poll = sources
        .iter()
        .map(|s| s.cfg.poll_interval)
        .min()
        .unwrap_or(Duration::from_secs(1));
    let mut r = Reader {
        sources,
        watchers: Vec::new(),
        ledger: parts.ledger,
        events: parts.events,
        failures: Failures::default(),
        tx: parts.tx,
    };

    // Filesystem events only wake the loop; the state is always re-derived from the filesystem.
    let wake = Arc::new(Notify::new());
    let structural = Arc::new(AtomicBool::new(true));
    let mut fs_watch = if !parts.fs_events {
        None
    } else {
        let (wake, structural) = (Arc::clone(&wake), Arc::clone(&structural));
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                use notify::EventKind as K;
                if matches!(
                    ev.kind,
                    K::Create(_) | K::Remove(_) | K::Modify(notify::event::ModifyKind::Name(_))
                ) {
                    structural.store(true, Ordering::Relaxed);
                }
            }
            wake.notify_one();
        })
        .map_err(|e| tracing::warn!(error = %e, "filesystem events unavailable; polling only"))
        .ok()
    };
    let mut watched: HashSet<PathBuf> = HashSet::new();

    let mut buf = vec![0u8; READ_BLOCK];
    let mut initial = true;
    let mut next_discovery = Instant::now();
    let mut idle = Duration::from_millis(1);
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        beat();
        if structural.swap(false, Ordering::Relaxed) || Instant::now() >= next_discovery {
            if let Some(w) = fs_watch.as_mut() {
                for s in &r.sources {
                    for Base { dir: b, depth } in &s.bases {
                        if !watched.contains(b) && b.is_dir() {
                            let mode = if *depth == Some(0) {
                                notify::RecursiveMode::NonRecursive
                            } else {
                                notify::RecursiveMode::Recursive
                            };
                            match notify::Watcher::watch(w, b, mode) {
                                Ok(()) => {
                                    watched.insert(b.clone());
                                }
                                Err(e) => {
                                    tracing::debug!(dir = %b.display(), error = %e, "cannot watch")
                                }
                            }
                        }
                    }
                }
            }
            r.discover(initial);
            initial = false;
            next_discovery = Instant::now() + poll;
        }
        let progressed = match r.pass(&mut buf, &stop, &beat).await {
            Some(p) => p,
            None => return Ok(()),
        };
        if progressed {
            idle = Duration::from_millis(1);
            tokio::task::yield_now().await;
        } else {
            // An open multiline entry falling due wakes the loop in time to complete it.
            let nap = match r.watchers.iter().filter_map(Watcher::deadline).min() {
                Some(due) => idle.min(due.saturating_duration_since(Instant::now())),
                None => idle,
            };
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = wake.notified() => {}
                _ = tokio::time::sleep(nap) => {}
            }
            idle = (idle * 2).min(MAX_IDLE);
        }
    }
}

impl Reader {
    fn discover(&mut self, initial: bool) {
        let mut found: Vec<(PathBuf, usize)> = Vec::new();
        let mut seen: HashSet<PathBuf> = HashSet::new();
        for (si, s) in self.sources.iter().enumerate() {
            let mut files = Vec::new();
            for b in &s.bases {
                walk(&b.dir, &mut files, 0, b.depth);
            }
            for p in files {
                if s.include.is_match(&p)
                    && !s.exclude.is_match(&p)
                    && s.cfg.kind.follows(&p)
                    && seen.insert(p.clone())
                {
                    found.push((p, si));
                }
            }
        }
        found.sort();
        let now = Instant::now();
        for (path, si) in found {
            let meta = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                Err(e) => {
                    self.failures.report(&path, &e, self.events.as_ref());
                    continue;
                }
            };
            let id = FileId::of(&meta);
            if let Some(w) = self
                .watchers
                .iter_mut()
                .find(|w| w.path == path && w.finishing.is_none())
            {
                if w.id == id {
                    continue;
                }
                // The path leads to another file now: rotation by rename (or delete and recreate).
                w.finishing = Some(now);
            }
            if self.watchers.iter().any(|w| w.id == id) {
                continue;
            }
            self.open(path, si, initial);
        }
        // Forget failures of paths that are gone, so the map stays bounded by what exists.
        self.failures.0.retain(|p, _| seen.contains(p));
        for w in &mut self.watchers {
            if w.finishing.is_none() && (!seen.contains(&w.path) || w.deleted()) {
                w.finishing = Some(now);
            }
        }
        self.events.files_active(self.watchers.len());
    }

    fn open(&mut self, path: PathBuf, si: usize, initial: bool) {
        let src = &self.sources[si].cfg;
        let opened = File::open(&path).and_then(|f| {
            let meta = f.metadata()?;
            let size = meta.len();
            let head = Fingerprint::of_file(&f, size)?;
            let id = FileId::of(&meta);
            let start = match checkpoint::with(&self.ledger, |l| l.lookup(id)) {
                Some(cp) if cp.offset <= size && cp.head.matches(&f, size)? => cp.offset,
                // Same inode, other content (reused inode, or truncated while we were away).
                Some(_) => 0,
                None if initial && src.read_from == ReadFrom::End => size,
                None => 0,
            };
            Ok((f, id, head, start))
        });
        let (file, id, head, start) = match opened {
            Ok(v) => v,
            Err(e) => {
                self.failures.report(&path, &e, self.events.as_ref());
                return;
            }
        };
        let path_str = path.display().to_string();
        let decoder = match src.kind {
            SourceKind::File => {
                let mut labels = src.labels.clone();
                labels.insert("filename".into(), path_str.clone());
                Decoder::Plain {
                    labels: Arc::new(labels),
                }
            }
            SourceKind::Docker => {
                let container = path
                    .parent()
                    .and_then(|p| p.components().next_back())
                    .and_then(|c| match c {
                        Component::Normal(s) => s.to_str(),
                        _ => None,
                    })
                    .unwrap_or("unknown")
                    .to_string();
                let mk = |stream: &str| -> Labels {
                    let mut l: BTreeMap<String, String> = src.labels.clone();
                    l.insert("container_id".into(), container.clone());
                    l.insert("stream".into(), stream.into());
                    Arc::new(l)
                };
                Decoder::Records {
                    format: Format::Docker(DockerDecoder::new(src.max_line_bytes)),
                    labels: [mk("stdout"), mk("stderr")],
                }
            }
            SourceKind::Kubernetes => {
                let (namespace, pod, container) = pod_of(&path);
                let mk = |stream: &str| -> Labels {
                    let mut l: BTreeMap<String, String> = src.labels.clone();
                    l.insert("namespace".into(), namespace.clone());
                    l.insert("pod".into(), pod.clone());
                    l.insert("container".into(), container.clone());
                    l.insert("stream".into(), stream.into());
                    Arc::new(l)
                };
                Decoder::Records {
                    format: Format::Cri(CriDecoder::new(src.max_line_bytes)),
                    labels: [mk("stdout"), mk("stderr")],
                }
            }
        };
        let key = checkpoint::with(&self.ledger, |l| l.open(id, head, &path_str, start));
        match Watcher::new(
            path.clone(),
            file,
            id,
            head,
            key,
            start,
            src.max_line_bytes,
            decoder,
            src.multiline.as_ref(),
        ) {
            Ok(w) => {
                self.failures.clear(&path);
                self.events.file_added(&path_str, start);
                self.watchers.push(w);
            }
            Err(e) => {
                checkpoint::with(&self.ledger, |l| l.close(key));
                self.failures.report(&path, &e, self.events.as_ref());
            }
        }
    }

    /// One pass over every file. Returns whether anything was read, or `None` when the reader
    /// must stop (stop fired or the dispatcher is gone).
    async fn pass(
        &mut self,
        buf: &mut [u8],
        stop: &CancellationToken,
        beat: &(impl Fn() + Send + Sync),
    ) -> Option<bool> {
        let mut progressed = false;
        let mut i = 0;
        while i < self.watchers.len() {
            let w = &mut self.watchers[i];
            match w.truncated() {
                Ok(Some(head)) => {
                    let key =
                        checkpoint::with(&self.ledger, |l| l.open(w.id, head, &w.path_str, 0));
                    if let Err(e) = w.restart(key, head) {
                        self.failures.report(&w.path, &e, self.events.as_ref());
                        i += 1;
                        continue;
                    }
                    self.events.file_truncated(&w.path_str);
                }
                Ok(None) => {}
                Err(e) => {
                    self.failures.report(&w.path, &e, self.events.as_ref());
                    i += 1;
                    continue;
                }
            }
            let out = match w.read(buf, BUDGET, self.events.as_ref()) {
                Ok(o) => o,
                Err(e) => {
                    let p = w.path.clone();
                    self.failures.report(&p, &e, self.events.as_ref());
                    i += 1;
                    continue;
                }
            };
            if let Some(h) = w.grown_head() {
                w.head = h;
                checkpoint::with(&self.ledger, |l| l.set_head(w.key, h));
            }
            if out.bytes > 0 {
                progressed = true;
                if let Some(since) = w.finishing.as_mut() {
                    *since = Instant::now();
                }
            }
            let done = out.eof && w.finishing.is_some_and(|t| t.elapsed() >= FINISH_GRACE);
            let key = w.key;
            if !self.ship(key, out, stop, beat).await {
                return None;
            }
            if done {
                let w = &mut self.watchers[i];
                let last = w.finish();
                let path = w.path_str.clone();
                if !self.ship(key, last, stop, beat).await {
                    return None;
                }
                checkpoint::with(&self.ledger, |l| l.close(key));
                self.events.file_removed(&path);
                self.watchers.swap_remove(i);
                self.events.files_active(self.watchers.len());
                continue;
            }
            i += 1;
        }
        Some(progressed)
    }

    /// Registers a read's chunk and sends it. Returns false when the reader must stop.
    async fn ship(
        &mut self,
        key: u64,
        out: ReadOutput,
        stop: &CancellationToken,
        beat: &(impl Fn() + Send + Sync),
    ) -> bool {
        if out.bytes == 0 && out.streams.is_empty() {
            return true;
        }
        let lines = out.streams.iter().map(|(_, l)| l.len() as u64).sum::<u64>();
        self.events.lines_read(lines, out.bytes);
        let id = checkpoint::with(&self.ledger, |l| l.register(key, out.end_offset, lines));
        if lines == 0 {
            return true;
        }
        let chunk = Chunk {
            id,
            streams: out.streams,
        };
        crate::pipeline::send_beating(&self.tx, chunk, stop, beat).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn base(dir: &str, depth: Option<usize>) -> Base {
        Base {
            dir: PathBuf::from(dir),
            depth,
        }
    }

    #[test]
    fn glob_base_is_the_literal_prefix_and_the_depth_the_pattern_needs() {
        assert_eq!(glob_base("/var/log/**/*.log"), base("/var/log", None));
        assert_eq!(glob_base("/var/log/app.log"), base("/var/log", Some(0)));
        assert_eq!(glob_base("/var/log/*.log"), base("/var/log", Some(0)));
        assert_eq!(glob_base("/d/*/*-json.log"), base("/d", Some(1)));
        assert_eq!(
            glob_bases(&["/d/*.log".into(), "/d/*/*/x.log".into(), "/e/**/y".into()]),
            vec![base("/d", Some(2)), base("/e", None)]
        );
    }

    #[test]
    fn discovery_walks_no_deeper_than_the_pattern_can_match() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in ["a.log", "sub/b.log", "sub/deeper/c.log"] {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"x\n").unwrap();
        }
        let files = |max_depth| {
            let mut out = Vec::new();
            walk(root, &mut out, 0, max_depth);
            let mut rel: Vec<String> = out
                .iter()
                .map(|p| p.strip_prefix(root).unwrap().display().to_string())
                .collect();
            rel.sort();
            rel
        };
        assert_eq!(files(Some(0)), ["a.log"]);
        assert_eq!(files(Some(1)), ["a.log", "sub/b.log"]);
        assert_eq!(files(None), ["a.log", "sub/b.log", "sub/deeper/c.log"]);
    }

    #[test]
    fn globs_do_not_cross_directories_with_a_single_star() {
        let g = globset(&["/l/*.log".to_string(), "/r/**/*.log".to_string()]).unwrap();
        assert!(g.is_match("/l/a.log"));
        assert!(!g.is_match("/l/sub/a.log"));
        assert!(g.is_match("/r/a.log"));
        assert!(g.is_match("/r/x/y/a.log"));
    }
}
