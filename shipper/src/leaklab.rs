//! The leak lab: deliberate task leaks, so every leak detector is tested against a real leak.
//!
//! Each scenario reproduces one classic leak of the original incident, from its own spawn site in
//! this file, and parks its tasks on a real tokio primitive that never completes, so a task dump shows
//! the function and the await point where they wait. Nothing here runs unless `--leak-lab` names it.
//!
//! The leaked tasks are spawned with a bare `tokio::spawn` on purpose: they have no owner, no
//! cancellation and no join. That is the bug being reproduced. Their futures are wrapped in the
//! probe's [`traced`] only so that release-build dumps keep this file's frames. The drivers that
//! trigger the leaks (the poll ticker, the health-check loop) are ordinary owned tasks run by the
//! supervisor.
//!
//! The lab also carries the fixed version of each leak (`--leak-lab-fixed`), so the runbook and the
//! soak can show a fix without a rebuild: the same spawns from the same lines, but every task is
//! answered and ends. A poll's tasks are woken by the next poll, a health check's ping is answered
//! at the next check, a file follower's channel closes. `spawned` keeps rising at the site while
//! `live` stays flat, which is what `diagtool diff` and `diagtool soak` must then report.
//!
//! One scenario leaks memory instead of tasks: `memory-cache` inserts KiB into a map every period
//! and never evicts, from one allocating line ([`cache_insert`]) that a heap profile names
//! (`/debug/pprof/heap`, `diagtool watch --heap`). Its fix evicts all but the newest
//! [`FIXED_CACHE_ENTRIES`]: the same inserts from the same line, bounded memory.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diagtool_probe::traced;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::source::SourceEvents;

/// One of the leaks the lab can reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Every file added to a source spawns tasks that never finish.
    FileAddSpawn,
    /// Every sink health check spawns tasks that block on a ping that never returns, never joined.
    UnjoinedHealthCheck,
    /// COUNT tasks every PERIOD that park forever (the classic `+16/30s`).
    PollSpawn,
    /// COUNT KiB every PERIOD inserted into a cache that never evicts: memory, not tasks, leaks.
    MemoryCache,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Self::FileAddSpawn,
        Self::UnjoinedHealthCheck,
        Self::PollSpawn,
        Self::MemoryCache,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::FileAddSpawn => "file-add-spawn",
            Self::UnjoinedHealthCheck => "unjoined-health-check",
            Self::PollSpawn => "poll-spawn",
            Self::MemoryCache => "memory-cache",
        }
    }

    /// Tasks leaked per event and, for timed scenarios, the event period, when none is given.
    fn default_rate(self) -> (u32, Duration) {
        match self {
            Self::FileAddSpawn => (1, Duration::ZERO),
            Self::UnjoinedHealthCheck => (2, Duration::from_secs(10)),
            Self::PollSpawn => (16, Duration::from_secs(30)),
            Self::MemoryCache => (256, Duration::from_secs(1)),
        }
    }
}

/// A scenario with its rate: `poll-spawn`, `poll-spawn:16/30s`, `file-add-spawn:3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakSpec {
    /// Which leak.
    pub scenario: Scenario,
    /// Tasks leaked per event (per tick, per health check, per file added); for `memory-cache`,
    /// KiB inserted per tick.
    pub count: u32,
    /// Time between events for the timed scenarios; zero for `file-add-spawn`.
    pub period: Duration,
}

/// A `--leak-lab` value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid --leak-lab value {value:?}: {reason}; expected SCENARIO[:COUNT/PERIOD] with SCENARIO one of \
     file-add-spawn, unjoined-health-check, poll-spawn, memory-cache (e.g. poll-spawn:16/30s, \
     memory-cache:256/1s: KiB per period)"
)]
pub struct LeakSpecError {
    value: String,
    reason: String,
}

impl FromStr for LeakSpec {
    type Err = LeakSpecError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| LeakSpecError {
            value: value.to_owned(),
            reason,
        };
        let (name, rate) = match value.split_once(':') {
            Some((name, rate)) => (name, Some(rate)),
            None => (value, None),
        };
        let scenario = Scenario::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| err(format!("unknown scenario {name:?}")))?;
        let (default_count, default_period) = scenario.default_rate();
        let (count, period) = match rate {
            None => (default_count, default_period),
            Some(rate) => {
                let (count, period) = match rate.split_once('/') {
                    Some((count, period)) => (count, Some(period)),
                    None => (rate, None),
                };
                let count: u32 = count
                    .parse()
                    .map_err(|_| err(format!("COUNT {count:?} is not a whole number")))?;
                let period = match period {
                    None => default_period,
                    Some(p) => diagtool_model::duration::parse(p)
                        .map_err(|e| err(format!("PERIOD: {e}")))?,
                };
                (count, period)
            }
        };
        if count == 0 {
            return Err(err("COUNT must be at least 1".to_owned()));
        }
        if scenario != Scenario::FileAddSpawn && period.is_zero() {
            return Err(err("PERIOD must be longer than zero".to_owned()));
        }
        Ok(Self {
            scenario,
            count,
            period,
        })
    }
}

impl fmt::Display for LeakSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scenario {
            Scenario::FileAddSpawn => write!(f, "{}:{}", self.scenario.name(), self.count),
            _ => write!(
                f,
                "{}:{}/{}ms",
                self.scenario.name(),
                self.count,
                self.period.as_millis()
            ),
        }
    }
}

/// The lab: which scenarios are on, and the hooks the shipper calls.
///
/// Cheap to clone. With no scenario enabled every hook is a no-op.
#[derive(Debug, Clone, Default)]
pub struct LeakLab {
    specs: Arc<Vec<LeakSpec>>,
    /// Run the fixed version of each scenario: same spawns, every task ends.
    fixed: bool,
    /// Keeps every never-answered "ping" sender alive, so the leaked health-check tasks wait forever
    /// instead of seeing a closed channel. Fixed: the previous check's pings, answered at the next.
    unanswered: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
    /// Fixed `poll-spawn` only: the previous tick's tasks, woken at the next tick.
    pending_polls: Arc<Mutex<Vec<Arc<Notify>>>>,
    /// `memory-cache`: entries by insertion number, never evicted (fixed: the newest
    /// [`FIXED_CACHE_ENTRIES`] only).
    cache: Arc<Mutex<BTreeMap<u64, Vec<u8>>>>,
}

/// Entries the fixed `memory-cache` keeps: the newest ones, the older evicted.
pub const FIXED_CACHE_ENTRIES: usize = 8;

impl LeakLab {
    /// A lab running the given scenarios (none: a lab that does nothing).
    pub fn new(specs: Vec<LeakSpec>) -> Self {
        Self {
            specs: Arc::new(specs),
            ..Self::default()
        }
    }

    /// The same lab running the fixed version of each scenario (`--leak-lab-fixed`).
    pub fn fixed(mut self, fixed: bool) -> Self {
        self.fixed = fixed;
        self
    }

    /// Whether the lab runs the fixed versions.
    pub fn is_fixed(&self) -> bool {
        self.fixed
    }

    /// Whether any scenario is enabled.
    pub fn is_enabled(&self) -> bool {
        !self.specs.is_empty()
    }

    /// The enabled scenarios.
    pub fn specs(&self) -> &[LeakSpec] {
        &self.specs
    }

    /// Whether a timed scenario is on, so [`LeakLab::run`] has something to drive.
    pub fn has_timed(&self) -> bool {
        self.specs
            .iter()
            .any(|s| s.scenario != Scenario::FileAddSpawn)
    }

    fn spec(&self, scenario: Scenario) -> Option<LeakSpec> {
        self.specs.iter().copied().find(|s| s.scenario == scenario)
    }

    /// Hook: a source added a file. With `file-add-spawn` on, leaks its COUNT tasks.
    pub fn file_added(&self) {
        let Some(spec) = self.spec(Scenario::FileAddSpawn) else {
            return;
        };
        for _ in 0..spec.count {
            // Each task waits for a line on a channel whose sender is moved into the task itself:
            // the channel stays open (the sender lives) and nothing is ever sent. The fix keeps the
            // sender out of the task, so the channel closes when its owner drops it.
            let (tx, rx) = mpsc::channel::<String>(1);
            let keep_open = (!self.fixed).then_some(tx);
            tokio::spawn(traced(follow_added_file(keep_open, rx)));
        }
    }

    /// Hook: a sink health check ran. With `unjoined-health-check` on, leaks its COUNT tasks, each
    /// waiting for a ping reply that never comes; nobody joins them.
    pub fn sink_health_checked(&self) {
        let Some(spec) = self.spec(Scenario::UnjoinedHealthCheck) else {
            return;
        };
        let mut unanswered = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
        if self.fixed {
            // The fix: the previous check's pings get their answer (a receiver already gone is fine).
            for reply in unanswered.drain(..) {
                let _ = reply.send(());
            }
        }
        for _ in 0..spec.count {
            let (reply_tx, reply_rx) = oneshot::channel();
            unanswered.push(reply_tx);
            tokio::spawn(traced(await_ping_reply(reply_rx)));
        }
    }

    /// One `poll-spawn` tick: leaks COUNT tasks parked on a `Notify` that is never notified.
    /// Fixed: the previous tick's tasks are notified first, so at most COUNT are ever parked.
    fn poll_tick(&self, count: u32) {
        let mut pending = self.pending_polls.lock().unwrap_or_else(|p| p.into_inner());
        answer_polls(&mut pending);
        for _ in 0..count {
            let notify = Arc::new(Notify::new());
            if self.fixed {
                pending.push(Arc::clone(&notify));
            }
            tokio::spawn(traced(park_after_poll(notify)));
        }
    }

    /// One `memory-cache` tick: KIB KiB more in the cache (fixed: the oldest entries past
    /// [`FIXED_CACHE_ENTRIES`] evicted).
    fn memory_tick(&self, kib: u32) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let bound = self.fixed.then_some(FIXED_CACHE_ENTRIES);
        cache_insert(&mut cache, kib, bound);
    }

    /// Bytes held by the `memory-cache` scenario's map now.
    pub fn memory_cache_bytes(&self) -> usize {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.values().map(Vec::len).sum()
    }

    /// Fixed mode at stop: every task still waiting gets its answer, so none outlives the lab.
    /// (The leak keeps nothing to answer: its tasks stay parked, as a leak does.)
    fn answer_all(&self) {
        answer_polls(&mut self.pending_polls.lock().unwrap_or_else(|p| p.into_inner()));
        if self.fixed {
            let mut unanswered = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
            for reply in unanswered.drain(..) {
                let _ = reply.send(());
            }
        }
    }

    /// Drives the timed scenarios until `stop` fires: the `poll-spawn` ticker and the
    /// `unjoined-health-check` loop. Returns at once when neither is enabled. The driver itself is
    /// an ordinary task: run it under the supervisor.
    pub async fn run(self, stop: CancellationToken) {
        let poll = self.spec(Scenario::PollSpawn);
        let health = self.spec(Scenario::UnjoinedHealthCheck);
        let memory = self.spec(Scenario::MemoryCache);
        if poll.is_none() && health.is_none() && memory.is_none() {
            return;
        }
        let mut poll_timer = poll.map(|s| interval_after(s.period));
        let mut health_timer = health.map(|s| interval_after(s.period));
        let mut memory_timer = memory.map(|s| interval_after(s.period));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return self.answer_all(),
                _ = tick(&mut poll_timer) => {
                    if let Some(spec) = poll { self.poll_tick(spec.count) }
                }
                _ = tick(&mut health_timer) => self.sink_health_checked(),
                _ = tick(&mut memory_timer) => {
                    if let Some(spec) = memory { self.memory_tick(spec.count) }
                }
            }
        }
    }
}

/// Source events that also tell the lab about every file added (the `file-add-spawn` hook),
/// then pass everything on to `inner`.
#[derive(Debug)]
pub struct LabEvents<E> {
    lab: LeakLab,
    inner: E,
}

impl<E: SourceEvents> LabEvents<E> {
    /// `inner`'s events, with `lab`'s hook on `file_added`.
    pub fn new(lab: LeakLab, inner: E) -> Self {
        LabEvents { lab, inner }
    }
}

impl<E: SourceEvents> SourceEvents for LabEvents<E> {
    fn file_added(&self, path: &str, offset: u64) {
        self.inner.file_added(path, offset);
        self.lab.file_added();
    }
    fn file_removed(&self, path: &str) {
        self.inner.file_removed(path);
    }
    fn files_active(&self, n: usize) {
        self.inner.files_active(n);
    }
    fn lines_read(&self, lines: u64, bytes: u64) {
        self.inner.lines_read(lines, bytes);
    }
    fn lines_truncated(&self, path: &str, n: u64) {
        self.inner.lines_truncated(path, n);
    }
    fn file_truncated(&self, path: &str) {
        self.inner.file_truncated(path);
    }
    fn read_error(&self, path: &str, error: &std::io::Error) {
        self.inner.read_error(path, error);
    }
    fn docker_invalid(&self, path: &str, error: &str) {
        self.inner.docker_invalid(path, error);
    }
    fn cri_invalid(&self, path: &str, error: &str) {
        self.inner.cri_invalid(path, error);
    }
}

/// A ticker whose first tick comes one period from now, not at once (a leak grows from zero).
fn interval_after(period: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Wakes parked polls. `notify_one` stores a permit for a task not yet polled, so none is missed.
fn answer_polls(pending: &mut Vec<Arc<Notify>>) {
    for notify in pending.drain(..) {
        notify.notify_one();
    }
}

/// The `file-add-spawn` leak: a follower per added file waiting for lines nobody sends.
#[inline(never)]
async fn follow_added_file(
    keep_open: Option<mpsc::Sender<String>>,
    mut lines: mpsc::Receiver<String>,
) {
    while let Some(line) = lines.recv().await {
        drop(line);
    }
    drop(keep_open);
}

/// The `unjoined-health-check` leak: a ping whose reply never arrives.
#[inline(never)]
async fn await_ping_reply(reply: oneshot::Receiver<()>) {
    let _ = reply.await;
}

/// The `memory-cache` leak: a cache that is only ever inserted into. Each entry is a fresh
/// buffer of `kib` KiB filled with non-zero bytes (so its pages are resident, as a real cache's
/// are); this line is the allocation site a heap profile names. With `bound` (the fix), the
/// oldest entries past it are evicted.
#[inline(never)]
fn cache_insert(cache: &mut BTreeMap<u64, Vec<u8>>, kib: u32, bound: Option<usize>) {
    let key = cache.last_key_value().map_or(0, |(last, _)| last + 1);
    let entry = vec![0xA5u8; kib as usize * 1024];
    cache.insert(key, entry);
    if let Some(bound) = bound {
        while cache.len() > bound {
            cache.pop_first();
        }
    }
}

/// The `poll-spawn` leak: a task parked on a notification that is never sent (the leak) or sent
/// at the next poll (the fix).
#[inline(never)]
async fn park_after_poll(answer: Arc<Notify>) {
    answer.notified().await;
}

#[cfg(test)]
#[path = "leaklab_tests.rs"]
mod tests;
