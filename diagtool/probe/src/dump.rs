//! Task dumps: where every task is parked, joined to its spawn site.
//!
//! First, do no harm: a dump must never stall the service it diagnoses. tokio's multi-thread
//! `Handle::dump()` stops every worker at a barrier, and with tokio 1.54.1 a timed-out wait leaves
//! that barrier miscounted: the runtime wedges, shipping stops and SIGTERM is ignored (tokio PR
//! #8370). So there are two modes:
//!
//! - [`DumpMode::SelfTraced`] (the default, `?mode=self`): tasks spawned through the probe's
//!   wrapper ([`super::spawn_named`], [`super::traced`]) trace themselves during their next poll,
//!   each on its own worker ([`super::selftrace`]); no worker waits for another, and a task that
//!   does not answer within the timeout (busy in a long poll, a blocked worker) is reported as
//!   such, with its site, name and age. Tasks spawned by plain `tokio::spawn` (axum's, a
//!   dependency's) have no wrapper: they are listed from the registry with a trace line saying
//!   why they were not traced. The dump answers with what it has, never 503 for a slow task.
//! - [`DumpMode::Global`] (`?mode=global`): `Handle::dump()` ([`super::dump_global`]), which traces
//!   every task but stops the world. Off unless the service enabled it
//!   ([`Dumper::global_dump`]); after one timed-out global dump the dumper refuses further ones
//!   ([`DumpError::GlobalFused`]) rather than risk the miscounted barrier again.
//!
//! Either way: one dump at a time per dumper, at least [`Dumper::min_interval`] apart
//! ([`DumpError::Running`]; a request sooner than the interval waits out the rest of it); raw traces are grouped by their addresses and
//! only one per group is symbolised, on a blocking thread of the runtime serving the request
//! (under [`super::DebugServer`], the debug thread's own pool, never the service's).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::Id;

use super::TaskRegistry;
use super::dump_global;
use super::dump_render::{TraceKeyer, with_future};
use super::registry::LiveTask;
use super::selftrace::{self, Answer};
use super::snapshot::{round_ms, task_id_u64, unix_ms};
use crate::model::{DUMP_SCHEMA, Dump, DumpGroup, DumpTask, NotTraced};

pub use super::dump_global::{BUSY_CHECKS, BUSY_RECHECK, MAX_TRACE_QUEUE_DEPTH, deepest_queue};
pub use super::dump_render::{NO_TOKIO_LEAF, ROOT_NOT_FOUND, frames, render_text, to_pprof};

/// The site shown for a task the registry never saw spawn.
pub const UNKNOWN_SITE: &str = "<unknown>";
/// Default least time between the end of one dump and the start of the next.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How often a self-traced dump looks whether every task answered.
const ANSWER_CHECK: Duration = Duration::from_millis(1);

/// The `not_traced` reason of a task spawned without the probe's wrapper.
pub const UNWRAPPED: &str = "unwrapped";
/// The `not_traced` reason of a wrapped task that did not answer in time.
pub const NO_ANSWER: &str = "no_answer";

/// How a dump is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DumpMode {
    /// Wrapped tasks trace themselves; never stops the runtime (`self`).
    #[default]
    SelfTraced,
    /// tokio's stop-the-world `Handle::dump()`, opt-in (`global`).
    Global,
}

impl DumpMode {
    /// The mode's name in `?mode=` and in the dump's `mode` field.
    pub fn name(self) -> &'static str {
        match self {
            DumpMode::SelfTraced => "self",
            DumpMode::Global => "global",
        }
    }

    /// Parses `self` or `global`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "self" => Some(DumpMode::SelfTraced),
            "global" => Some(DumpMode::Global),
            _ => None,
        }
    }
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// A global dump: the runtime did not answer in time (a worker is blocked, or another dump
    /// held the slot). Fuses global dumps for this dumper.
    #[error(
        "the runtime could not be traced within {0:?}; a worker may be blocked. Global dumps are now off for this process (a timed-out one can leave tokio's dump barrier miscounted): use the default dump (no mode=global)"
    )]
    Timeout(Duration),
    /// A global dump: the run queues stayed too long to trace safely (see [`dump_global`]).
    #[error(
        "runtime too busy to trace safely ({depth} tasks queued on one run queue, limit {limit}); retry, or use the default dump (no mode=global)"
    )]
    Busy {
        /// The deepest queue at the last look.
        depth: usize,
        /// [`MAX_TRACE_QUEUE_DEPTH`].
        limit: usize,
    },
    /// The blocking thread resolving symbols failed.
    #[error("resolving the traces failed: {0}")]
    Resolve(String),
    /// `?mode=global` without the service's opt-in.
    #[error(
        "mode=global is off: tokio's global task dump stops every worker of the service at a barrier, and one that times out can leave the runtime wedged (tokio PR #8370), so the service must opt in: ProbeBuilder::global_dump(true), env DIAGTOOL_PROBE_GLOBAL_DUMP=1, or the shipper's server.global_dump = true. The default dump (no mode) is safe and traces every task spawned through the probe"
    )]
    GlobalDisabled,
    /// A global dump timed out earlier in this process: global dumps stay off.
    #[error(
        "global dumps are off for the rest of this process: one timed out after {0:?}, which can leave tokio's dump barrier miscounted (tokio PR #8370); use the default dump (no mode=global), or restart the service to re-arm"
    )]
    GlobalFused(Duration),
    /// Another dump is running (one at a time).
    #[error("another task dump is running (one at a time); retry in a moment")]
    Running,
}

/// One dump at a time, at least `min_interval` apart, shared by a dumper's clones. A request
/// that comes sooner waits out the rest of the interval (at most `min_interval`) rather than
/// fail: a client polling in a loop is slowed down, not refused.
#[derive(Debug, Default)]
struct Gate {
    running: AtomicBool,
    last_end: Mutex<Option<Instant>>,
}

/// Held while a dump runs; its drop (the dump ended, or its request was dropped) opens the gate.
struct Entered<'a>(&'a Gate);

impl Gate {
    async fn enter(&self, min_interval: Duration) -> Result<Entered<'_>, DumpError> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(DumpError::Running);
        }
        let entered = Entered(self);
        let last_end = *self.last_end.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(end) = last_end {
            let elapsed = end.elapsed();
            if elapsed < min_interval {
                tokio::time::sleep(min_interval - elapsed).await;
            }
        }
        Ok(entered)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        *self
            .0
            .last_end
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.0.running.store(false, Ordering::Release);
    }
}

/// Takes task dumps, one at a time; clones share the gate, the fuse and the pending global trace.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let registry = diagtool_probe::TaskRegistry::new();
/// let dumper = diagtool_probe::Dumper::new(registry);
/// let dump = dumper.dump(&tokio::runtime::Handle::current(), Duration::from_secs(5)).await.unwrap();
/// assert_eq!(dump.schema, "diagtool.dump/v1");
/// # }
/// ```
#[derive(Clone)]
pub struct Dumper {
    registry: TaskRegistry,
    global: bool,
    min_interval: Duration,
    gate: Arc<Gate>,
    /// Set by the first global dump that timed out, to its timeout.
    fuse: Arc<OnceLock<Duration>>,
    pending: dump_global::Pending,
}

impl std::fmt::Debug for Dumper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dumper")
            .field("global", &self.global)
            .field("min_interval", &self.min_interval)
            .field("fused", &self.fuse.get())
            .finish_non_exhaustive()
    }
}

impl Dumper {
    /// A dumper joining traces to `registry`: global dumps off, [`DEFAULT_MIN_INTERVAL`] apart.
    pub fn new(registry: TaskRegistry) -> Self {
        Dumper {
            registry,
            global: false,
            min_interval: DEFAULT_MIN_INTERVAL,
            gate: Arc::default(),
            fuse: Arc::default(),
            pending: Arc::default(),
        }
    }

    /// Allows [`DumpMode::Global`] (tokio's stop-the-world dump; see the module docs for its
    /// risk). Default off.
    pub fn global_dump(mut self, enabled: bool) -> Self {
        self.global = enabled;
        self
    }

    /// The least time between the end of one dump and the start of the next (a request sooner
    /// waits for the rest). Default [`DEFAULT_MIN_INTERVAL`].
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// Whether global dumps were enabled.
    pub fn global_enabled(&self) -> bool {
        self.global
    }

    /// The minimum interval between dumps.
    pub fn interval(&self) -> Duration {
        self.min_interval
    }

    /// The timeout of the global dump that fused global dumps off, if one did.
    pub fn global_fused(&self) -> Option<Duration> {
        self.fuse.get().copied()
    }

    /// A [`DumpMode::SelfTraced`] dump: never stops the runtime. `handle` is unused (the tasks
    /// answer wherever they run) and kept for [`Dumper::dump_mode`]'s sake.
    pub async fn dump(&self, handle: &Handle, timeout: Duration) -> Result<Dump, DumpError> {
        self.dump_mode(handle, timeout, DumpMode::SelfTraced).await
    }

    /// Dumps the tasks of the runtime behind `handle` in `mode`, waiting at most `timeout` for
    /// the traces (symbolising comes after and is not bounded: it only reads this binary's debug
    /// info). A self-traced dump answers with what it has when the timeout ends.
    pub async fn dump_mode(
        &self,
        handle: &Handle,
        timeout: Duration,
        mode: DumpMode,
    ) -> Result<Dump, DumpError> {
        if mode == DumpMode::Global {
            if !self.global {
                return Err(DumpError::GlobalDisabled);
            }
            if let Some(fused) = self.global_fused() {
                return Err(DumpError::GlobalFused(fused));
            }
        }
        let _entered = self.gate.enter(self.min_interval).await?;
        match mode {
            DumpMode::SelfTraced => self.dump_self(timeout).await,
            DumpMode::Global => self.dump_global(handle, timeout).await,
        }
    }

    async fn dump_global(&self, handle: &Handle, timeout: Duration) -> Result<Dump, DumpError> {
        let traced = match dump_global::trace(&self.pending, handle, timeout).await {
            Err(err @ DumpError::Timeout(_)) => {
                let _ = self.fuse.set(timeout);
                return Err(err);
            }
            other => other?,
        };
        let live = self.live();
        // Wrapped tasks' future types, for those parked where tokio's trace sees nothing.
        let futures: HashMap<Id, &'static str> = selftrace::slots(|id| live.contains_key(&id))
            .iter()
            .map(|slot| (slot.id(), slot.future()))
            .collect();
        let taken_at_ms = unix_ms();
        tokio::task::spawn_blocking(move || {
            dump_global::build(&traced, &live, &futures, taken_at_ms)
        })
        .await
        .map_err(|err| DumpError::Resolve(err.to_string()))
    }

    fn live(&self) -> HashMap<Id, LiveTask> {
        self.registry
            .live_tasks()
            .into_iter()
            .map(|task| (task.id, task))
            .collect()
    }

    async fn dump_self(&self, timeout: Duration) -> Result<Dump, DumpError> {
        let live = self.live();
        let slots = selftrace::slots(|id| live.contains_key(&id));
        let epoch = selftrace::next_epoch();
        for slot in &slots {
            slot.ask(epoch);
        }
        // Waits on this (the debug) runtime's timer; nobody on the service's runtime waits.
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !slots.iter().all(|slot| slot.done(epoch)) {
            tokio::time::sleep(ANSWER_CHECK).await;
        }
        let taken_at_ms = unix_ms();
        let mut answers: HashMap<Id, (Option<Answer>, &'static str)> =
            HashMap::with_capacity(slots.len());
        let mut live = live;
        for slot in &slots {
            if slot.ended() {
                // It ended during the dump (perhaps in its capture poll): it waits nowhere.
                live.remove(&slot.id());
                continue;
            }
            let answer = slot.take_answer(epoch);
            // Two wrappers in one task: the outer one's trace covers the inner one.
            let entry = answers.entry(slot.id()).or_insert((None, slot.future()));
            if !matches!(entry.0, Some(Answer::Traced(_))) && answer.is_some() {
                *entry = (answer, slot.future());
            }
        }
        tokio::task::spawn_blocking(move || build_self(answers, &live, taken_at_ms, timeout))
            .await
            .map_err(|err| DumpError::Resolve(err.to_string()))
    }
}

/// Joins the answers of a self-traced dump to the registry: every live task once, traced or
/// with the reason it was not.
fn build_self(
    answers: HashMap<Id, (Option<Answer>, &'static str)>,
    live: &HashMap<Id, LiveTask>,
    taken_at_ms: u64,
    timeout: Duration,
) -> Dump {
    // Every distinct trace once, the two "not traced" lines first; tasks point into it.
    let mut traces: Vec<Vec<String>> = vec![
        vec![
            "(not traced: spawned without the probe's wrapper (plain tokio::spawn), or not parked \
             yet; spawn it with diagtool_probe::spawn_named or traced(), or ask ?mode=global, \
             which stops the runtime)"
                .to_owned(),
        ],
        vec![format!(
            "(not traced: no answer within {timeout:?}: the task is busy in a long poll, its \
             worker is blocked, or it was not scheduled in time)"
        )],
    ];
    const UNWRAPPED_LINE: usize = 0;
    const NO_ANSWER_LINE: usize = 1;
    // Keyed by the raw trace and the future's type (by address: the same type names the same
    // static string), which names a task whose trace is empty.
    let mut by_raw: HashMap<((u64, u64), usize), usize> = HashMap::new();
    let mut keyer = TraceKeyer::default();
    let mut counts = NotTraced::default();
    let mut rows: Vec<(u64, &LiveTask, usize)> = Vec::with_capacity(live.len());
    for (id, task) in live {
        let index = match answers.get(id) {
            Some((Some(Answer::Traced(trace)), future)) => {
                let key = (keyer.key(trace), future.as_ptr() as usize);
                *by_raw.entry(key).or_insert_with(|| {
                    traces.push(with_future(frames(trace), future));
                    traces.len() - 1
                })
            }
            Some(_) => {
                counts.no_answer += 1;
                NO_ANSWER_LINE
            }
            None => {
                counts.unwrapped += 1;
                UNWRAPPED_LINE
            }
        };
        rows.push((task_id_u64(*id), task, index));
    }
    rows.sort_unstable_by_key(|row| row.0);
    // Groups by (site, trace index): no hashing of frame text.
    let mut sizes: HashMap<(&str, usize), u64> = HashMap::new();
    for (_, task, index) in &rows {
        *sizes.entry((task.site.as_str(), *index)).or_insert(0) += 1;
    }
    let mut groups: Vec<DumpGroup> = sizes
        .into_iter()
        .map(|((site, index), count)| DumpGroup {
            count,
            site: site.to_owned(),
            trace: traces[index].clone(),
        })
        .collect();
    sort_groups(&mut groups);
    let tasks = rows
        .into_iter()
        .map(|(id, task, index)| DumpTask {
            id,
            site: task.site.clone(),
            name: task.name.clone(),
            age_s: round_ms(task.age_s),
            trace: traces[index].clone(),
            not_traced: match index {
                UNWRAPPED_LINE => Some(UNWRAPPED.to_owned()),
                NO_ANSWER_LINE => Some(NO_ANSWER.to_owned()),
                _ => None,
            },
        })
        .collect();
    Dump {
        schema: DUMP_SCHEMA.to_owned(),
        taken_at_ms,
        tasks,
        groups,
        mode: Some(DumpMode::SelfTraced.name().to_owned()),
        not_traced: Some(counts),
    }
}

/// Groups tasks by identical site and trace, largest group first (the model's one grouping).
pub use crate::model::group_tasks as group;
use crate::model::sort_groups;

#[cfg(test)]
mod tests;
