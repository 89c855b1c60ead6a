//! The log generator: sequence-numbered lines at the profile's rates, rotated as the profile says.
//!
//! Line `k` of the run (counting over all files) goes to file `k % files` with sequence number
//! `k / files`, so each file's lines are numbered 0, 1, 2... without gaps, and the number of lines
//! a file got follows from the total alone. The text of a line is a pure function of its file,
//! its number and the profile ([`line_text`]), so the delivery check compares every delivered line
//! byte for byte with what was written, not just its number. Every `special_every`-th line carries
//! quotes, backslashes, a tab and non-ASCII text, which a sink must escape correctly.
//!
//! [`Generator::step`] is synchronous and takes the time as an argument, so tests drive it without
//! a clock; [`GeneratorThread`] drives it from a named OS thread (file writes block) that stops when
//! told or when its handle is dropped, and is joined.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::profile::{Burst, GeneratorSpec, Rotation, RotationMode};

/// How often the driver thread writes what is due.
pub const TICK: Duration = Duration::from_millis(20);

const PAD: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const SPECIAL: &str = "\"quoted\" back\\slash \ttab caf\u{e9} \u{2713} ";

/// The text of line `seq` of file `file` (without the newline).
///
/// # Examples
/// ```
/// use diagtool::soak::generator::{line_text, parse_seq};
/// let line = line_text(3, 41, 60, 0);
/// assert!(line.starts_with("soak seq=3:41 "));
/// assert_eq!(line.len(), 60);
/// assert_eq!(parse_seq(&line), Some((3, 41)));
/// ```
pub fn line_text(file: u32, seq: u64, line_bytes: usize, special_every: u64) -> String {
    let mut line = String::with_capacity(line_bytes + SPECIAL.len());
    let _ = write!(line, "soak seq={file}:{seq} ");
    if special_every > 0 && seq % special_every == special_every - 1 {
        line.push_str(SPECIAL);
    }
    let start = (seq as usize + file as usize) % PAD.len();
    let mut i = start;
    while line.len() < line_bytes {
        line.push(PAD[i % PAD.len()] as char);
        i += 1;
    }
    line
}

/// The file and sequence number of a generated line; `None` for any other line.
pub fn parse_seq(line: &str) -> Option<(u32, u64)> {
    let rest = line.strip_prefix("soak seq=")?;
    let end = rest.find(' ').unwrap_or(rest.len());
    let (file, seq) = rest[..end].split_once(':')?;
    Some((file.parse().ok()?, seq.parse().ok()?))
}

/// Lines file `file` holds when `total` lines were written over `files` files in turn.
pub fn lines_in_file(total: u64, files: u32, file: u32) -> u64 {
    let (files, file) = (u64::from(files), u64::from(file));
    if total <= file {
        0
    } else {
        (total - file).div_ceil(files)
    }
}

/// The path of file `i` in `dir`.
pub fn file_path(dir: &Path, i: u32) -> PathBuf {
    dir.join(format!("app-{i}.log"))
}

/// Writes the lines due at a given time and performs the rotations due.
#[derive(Debug)]
pub struct Generator {
    dir: PathBuf,
    spec: GeneratorSpec,
    rotation: Rotation,
    bursts: Vec<Burst>,
    written: u64,
    bytes: u64,
    rotations: u64,
    next_rotation: Duration,
    buffers: Vec<Vec<u8>>,
}

impl Generator {
    /// A generator writing into `dir` (created if missing).
    pub fn new(
        dir: &Path,
        spec: GeneratorSpec,
        rotation: Rotation,
        bursts: Vec<Burst>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Generator {
            dir: dir.to_owned(),
            buffers: vec![Vec::new(); spec.files as usize],
            next_rotation: rotation.every,
            spec,
            rotation,
            bursts,
            written: 0,
            bytes: 0,
            rotations: 0,
        })
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lines written so far, over all files.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes written so far, newlines included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Rotations performed (each rotates every file).
    pub fn rotations(&self) -> u64 {
        self.rotations
    }

    /// The settings.
    pub fn spec(&self) -> &GeneratorSpec {
        &self.spec
    }

    /// Lines due by `t` since the start: the rate integrated over time, bursts included.
    pub fn due(&self, t: Duration) -> u64 {
        let t = t.as_secs_f64();
        let mut weighted = t;
        for b in &self.bursts {
            let start = b.window.at.as_secs_f64();
            let overlap = (t.min(b.window.end().as_secs_f64()) - start).max(0.0);
            weighted += (b.multiplier - 1.0) * overlap;
        }
        (self.spec.lines_per_sec * weighted + 1e-9).floor() as u64
    }

    /// Performs the rotations due by `t`, then writes every line due by `t`.
    pub fn step(&mut self, t: Duration) -> std::io::Result<()> {
        if self.rotation.mode != RotationMode::None && t >= self.next_rotation {
            self.rotate_all()?;
            self.next_rotation += self.rotation.every;
        }
        let due = self.due(t);
        if due <= self.written {
            return Ok(());
        }
        let files = u64::from(self.spec.files);
        for k in self.written..due {
            let file = (k % files) as u32;
            let seq = k / files;
            let text = line_text(file, seq, self.spec.line_bytes, self.spec.special_every);
            let buf = &mut self.buffers[file as usize];
            buf.extend_from_slice(text.as_bytes());
            buf.push(b'\n');
        }
        for (i, buf) in self.buffers.iter_mut().enumerate() {
            if buf.is_empty() {
                continue;
            }
            // Opened per write, in append mode: the generator holds no descriptors (1,000 files
            // would need 1,000), and after a rename the next write creates the file anew.
            let path = file_path(&self.dir, i as u32);
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            f.write_all(buf)?;
            self.bytes += buf.len() as u64;
            buf.clear();
        }
        self.written = due;
        Ok(())
    }

    fn rotate_all(&mut self) -> std::io::Result<()> {
        let copy = match self.rotation.mode {
            RotationMode::None => return Ok(()),
            RotationMode::Rename => false,
            RotationMode::CopyTruncate => true,
            RotationMode::Alternate => self.rotations % 2 == 1,
        };
        for i in 0..self.spec.files {
            let base = file_path(&self.dir, i);
            if !base.exists() {
                continue;
            }
            let generation = |g: u32| PathBuf::from(format!("{}.{g}", base.display()));
            // Oldest first, so each rename lands on a free name; the last one is overwritten.
            for g in (1..self.rotation.keep).rev() {
                let from = generation(g);
                if from.exists() {
                    std::fs::rename(&from, generation(g + 1))?;
                }
            }
            if copy {
                std::fs::copy(&base, generation(1))?;
                OpenOptions::new().write(true).open(&base)?.set_len(0)?;
            } else {
                std::fs::rename(&base, generation(1))?;
            }
        }
        self.rotations += 1;
        Ok(())
    }
}

/// Figures the driver thread publishes while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Lines written.
    pub written: AtomicU64,
    /// Rotations done.
    pub rotations: AtomicU64,
}

/// A [`Generator`] driven by its own OS thread from now until `duration`.
///
/// Dropping the handle stops the thread at its next tick (it is not joined then); [`finish`]
/// stops it and joins it.
///
/// [`finish`]: GeneratorThread::finish
#[derive(Debug)]
pub struct GeneratorThread {
    stop: Option<mpsc::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<Generator>>>,
    progress: Arc<Progress>,
}

impl GeneratorThread {
    /// Starts writing; the clock starts now.
    pub fn start(mut generator: Generator, duration: Duration) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let progress = Arc::new(Progress::default());
        let shared = progress.clone();
        let thread = std::thread::Builder::new()
            .name("soak-generator".into())
            .spawn(move || {
                let started = Instant::now();
                let result = loop {
                    let t = started.elapsed().min(duration);
                    if let Err(e) = generator.step(t) {
                        break Err(e);
                    }
                    shared.written.store(generator.written(), Ordering::Release);
                    shared
                        .rotations
                        .store(generator.rotations(), Ordering::Relaxed);
                    if t >= duration {
                        break Ok(());
                    }
                    match stopped.recv_timeout(TICK) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        // Told to stop, or the handle is gone.
                        _ => break Ok(()),
                    }
                };
                let _ = done_tx.send(());
                result.map(|()| generator)
            })?;
        Ok(GeneratorThread {
            stop: Some(stop),
            done: Some(done),
            thread: Some(thread),
            progress,
        })
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.progress.written.load(Ordering::Acquire)
    }

    /// Rotations so far.
    pub fn rotations(&self) -> u64 {
        self.progress.rotations.load(Ordering::Relaxed)
    }

    /// Waits until the generator wrote its last line (at `duration`).
    pub async fn wait(&mut self) {
        if let Some(done) = self.done.as_mut() {
            let _ = done.await;
            self.done = None;
        }
    }

    /// Stops writing now (if still writing) and joins the thread; returns the generator, or the
    /// write error that stopped it.
    pub async fn finish(mut self) -> std::io::Result<Generator> {
        self.stop.take();
        self.wait().await;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the generator thread panicked")),
            None => Err(std::io::Error::other("the generator was already finished")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::soak::profile::Window;

    fn spec(files: u32, rate: f64) -> GeneratorSpec {
        GeneratorSpec {
            files,
            lines_per_sec: rate,
            line_bytes: 60,
            special_every: 5,
        }
    }

    fn no_rotation() -> Rotation {
        Rotation {
            mode: RotationMode::None,
            every: Duration::from_secs(1),
            keep: 2,
        }
    }

    fn read_lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn lines_round_trip_and_specials_need_escaping() {
        for seq in 0..20 {
            let line = line_text(7, seq, 60, 5);
            assert_eq!(parse_seq(&line), Some((7, seq)));
            assert!(line.len() >= 60 && !line.contains('\n'));
            let special = seq % 5 == 4;
            assert_eq!(line.contains('"') && line.contains('\\'), special, "{line}");
        }
        assert_ne!(line_text(1, 2, 60, 0), line_text(2, 1, 60, 0));
        assert_eq!(parse_seq("soak seq=1:x pad"), None);
        assert_eq!(parse_seq("hello"), None);
        assert_eq!(parse_seq("soak seq=4:12"), Some((4, 12)));
    }

    #[test]
    fn lines_spread_over_files_in_turn() {
        assert_eq!(lines_in_file(10, 3, 0), 4);
        assert_eq!(lines_in_file(10, 3, 1), 3);
        assert_eq!(lines_in_file(10, 3, 2), 3);
        assert_eq!(lines_in_file(2, 3, 2), 0);
        let total: u64 = (0..7).map(|f| lines_in_file(100, 7, f)).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn writes_what_is_due_with_gapless_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Generator::new(dir.path(), spec(3, 30.0), no_rotation(), vec![]).unwrap();
        g.step(Duration::from_millis(500)).unwrap();
        assert_eq!(g.written(), 15);
        g.step(Duration::from_secs(2)).unwrap();
        assert_eq!(g.written(), 60);
        for f in 0..3 {
            let lines = read_lines(&file_path(dir.path(), f));
            assert_eq!(lines.len() as u64, lines_in_file(60, 3, f));
            for (n, line) in lines.iter().enumerate() {
                assert_eq!(line, &line_text(f, n as u64, 60, 5));
            }
        }
        assert_eq!(
            g.bytes(),
            (0..3u32)
                .map(|f| std::fs::metadata(file_path(dir.path(), f)).unwrap().len())
                .sum::<u64>()
        );
    }

    #[test]
    fn bursts_multiply_the_rate_inside_their_window() {
        let dir = tempfile::tempdir().unwrap();
        let burst = Burst {
            window: Window {
                at: Duration::from_secs(1),
                length: Duration::from_secs(1),
            },
            multiplier: 5.0,
        };
        let g = Generator::new(dir.path(), spec(1, 10.0), no_rotation(), vec![burst]).unwrap();
        assert_eq!(g.due(Duration::from_secs(1)), 10);
        assert_eq!(g.due(Duration::from_millis(1500)), 35);
        assert_eq!(g.due(Duration::from_secs(2)), 60);
        assert_eq!(g.due(Duration::from_secs(3)), 70);
    }

    fn rotation(mode: RotationMode) -> Rotation {
        Rotation {
            mode,
            every: Duration::from_secs(1),
            keep: 2,
        }
    }

    /// All lines of file 0 over its generations, oldest generation first.
    fn all_generations(dir: &Path) -> Vec<String> {
        let base = file_path(dir, 0);
        let mut lines = Vec::new();
        for g in (1..=2).rev() {
            lines.extend(read_lines(&PathBuf::from(format!(
                "{}.{g}",
                base.display()
            ))));
        }
        lines.extend(read_lines(&base));
        lines
    }

    #[test]
    fn rename_rotation_moves_generations_and_keeps_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Generator::new(
            dir.path(),
            spec(1, 10.0),
            rotation(RotationMode::Rename),
            vec![],
        )
        .unwrap();
        let base = file_path(dir.path(), 0);
        g.step(Duration::from_millis(900)).unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&base).unwrap());
        g.step(Duration::from_millis(1500)).unwrap();
        assert_eq!(g.rotations(), 1);
        let moved = std::fs::metadata(format!("{}.1", base.display())).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&moved),
            inode,
            "renamed, not copied"
        );
        g.step(Duration::from_millis(2500)).unwrap();
        let seqs: Vec<u64> = all_generations(dir.path())
            .iter()
            .map(|l| parse_seq(l).unwrap().1)
            .collect();
        assert_eq!(seqs, (0..25).collect::<Vec<_>>());
        // A third rotation drops the oldest generation (keep = 2).
        g.step(Duration::from_millis(3100)).unwrap();
        let first = read_lines(&PathBuf::from(format!("{}.2", base.display())));
        assert_eq!(parse_seq(&first[0]).unwrap().1, 9);
    }

    #[test]
    fn copytruncate_keeps_the_inode_and_empties_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Generator::new(
            dir.path(),
            spec(1, 10.0),
            rotation(RotationMode::CopyTruncate),
            vec![],
        )
        .unwrap();
        let base = file_path(dir.path(), 0);
        g.step(Duration::from_millis(900)).unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&base).unwrap());
        g.step(Duration::from_secs(1)).unwrap();
        assert_eq!(g.rotations(), 1);
        // The rotation ran before the tenth line was written: the copy has 9, the file has 1.
        assert_eq!(
            read_lines(&PathBuf::from(format!("{}.1", base.display()))).len(),
            9
        );
        let lines = read_lines(&base);
        assert_eq!(lines, vec![line_text(0, 9, 60, 5)]);
        let now = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&base).unwrap());
        assert_eq!(now, inode, "truncated in place");
    }

    #[test]
    fn alternate_rotation_renames_then_copies() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Generator::new(
            dir.path(),
            spec(1, 10.0),
            rotation(RotationMode::Alternate),
            vec![],
        )
        .unwrap();
        let base = file_path(dir.path(), 0);
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        g.step(Duration::from_millis(500)).unwrap();
        let first = ino(&base);
        g.step(Duration::from_millis(1500)).unwrap();
        let second = ino(&base);
        assert_ne!(first, second, "first rotation renames");
        g.step(Duration::from_millis(2500)).unwrap();
        assert_eq!(ino(&base), second, "second rotation copies and truncates");
        assert_eq!(g.rotations(), 2);
        let seqs: Vec<u64> = all_generations(dir.path())
            .iter()
            .map(|l| parse_seq(l).unwrap().1)
            .collect();
        assert_eq!(seqs, (0..25).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn thread_writes_until_the_duration_and_joins() {
        let dir = tempfile::tempdir().unwrap();
        let g = Generator::new(dir.path(), spec(2, 200.0), no_rotation(), vec![]).unwrap();
        let mut thread = GeneratorThread::start(g, Duration::from_millis(300)).unwrap();
        tokio::time::timeout(Duration::from_secs(10), thread.wait())
            .await
            .unwrap();
        assert_eq!(thread.written(), 60);
        let g = thread.finish().await.unwrap();
        assert_eq!(g.written(), 60);
    }

    #[tokio::test]
    async fn thread_stops_early_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let g = Generator::new(dir.path(), spec(1, 100.0), no_rotation(), vec![]).unwrap();
        let thread = GeneratorThread::start(g, Duration::from_secs(3600)).unwrap();
        let g = tokio::time::timeout(Duration::from_secs(10), thread.finish())
            .await
            .unwrap()
            .unwrap();
        assert!(g.written() < 100 * 60, "stopped long before the hour");
    }
}
