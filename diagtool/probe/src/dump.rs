//! Task dumps: where every task is parked, joined to its spawn site.
//!
//! [`Dumper::dump`] asks tokio for `Handle::dump()` under a timeout (a blocked worker can stall a
//! dump forever), one dump at a time, then turns each task's trace into frames and joins task ids
//! to the registry (dump ids are `TaskMeta::id()`s). Symbolising costs about 14 us per frame set,
//! so tasks are grouped by their raw, unresolved trace first and only one trace per group is
//! resolved, on a blocking thread.
//!
//! Busy guard: with tokio 1.54.1, `Handle::dump()` can freeze a multi-thread runtime for good
//! when a worker's run queue is long (one worker spins in `steal_all`, another waits at the trace
//! barrier; likely tokio issue #7478). A request served off that runtime ([`super::DebugServer`])
//! still gets its 503, but the service stays frozen; and a request served on it never answers.
//! So before dumping, [`Dumper::dump`] reads every worker's local queue
//! depth and the injection queue from `Handle::metrics()`; while the deepest is above
//! [`MAX_TRACE_QUEUE_DEPTH`] it rechecks every [`BUSY_RECHECK`], at most [`BUSY_CHECKS`] times,
//! and then refuses with [`DumpError::Busy`] (503, counted as `dump_busy`) rather than risk it.
//!
//! The same dump feeds three renderings: the JSON document ([`crate::model::Dump`]), Go-style
//! text ([`render_text`], `debug=1` grouped and `debug=2` per task) and a pprof task profile
//! ([`to_pprof`], a sample per distinct trace valued by its task count).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::Id;

use super::TaskRegistry;
use super::registry::{LiveTask, short_path};
use super::snapshot::{round_ms, task_id_u64, unix_ms};
use crate::model::{DUMP_SCHEMA, Dump, DumpGroup, DumpTask};
use crate::pprof::{Frame, ProfileBuilder};

/// The site shown for a task the registry never saw spawn.
pub const UNKNOWN_SITE: &str = "<unknown>";

/// Deepest run queue (any worker's local queue, or the injection queue) at which a dump is still
/// attempted; the freeze was seen from about 200 queued tasks on one worker.
pub const MAX_TRACE_QUEUE_DEPTH: usize = 128;
/// How often the busy guard looks at the queues before refusing.
pub const BUSY_CHECKS: u32 = 5;
/// The wait between two looks of the busy guard (so it waits at most 4 x 20 ms).
pub const BUSY_RECHECK: Duration = Duration::from_millis(20);

/// The deepest run queue of the runtime behind `handle` now: each worker's local queue and the
/// injection queue.
pub fn deepest_queue(handle: &Handle) -> usize {
    let metrics = handle.metrics();
    (0..metrics.num_workers())
        .map(|worker| metrics.worker_local_queue_depth(worker))
        .chain(std::iter::once(metrics.global_queue_depth()))
        .max()
        .unwrap_or(0)
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The runtime did not answer in time (a worker is blocked, or another dump held the slot).
    #[error(
        "the runtime could not be traced within {0:?}; a worker may be blocked: retry with a larger timeout_ms"
    )]
    Timeout(Duration),
    /// The run queues stayed too long to trace safely (see the module docs).
    #[error(
        "runtime too busy to trace safely ({depth} tasks queued on one run queue, limit {limit}); retry"
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
}

/// A trace asked of tokio and not yet answered: `Handle::dump()`'s future, owned.
type PendingTrace = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<tokio::runtime::Dump, DumpError>> + Send>,
>;

/// Takes task dumps of one runtime, one at a time.
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
    /// Held for the whole trace; keeps a trace that outlived its request's timeout (see
    /// [`Dumper::dump`]).
    slot: Arc<tokio::sync::Mutex<Option<PendingTrace>>>,
}

impl std::fmt::Debug for Dumper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dumper").finish_non_exhaustive()
    }
}

impl Dumper {
    /// A dumper joining traces to `registry`.
    pub fn new(registry: TaskRegistry) -> Self {
        Dumper {
            registry,
            slot: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// Dumps every task of the runtime behind `handle`, which need not be the runtime this runs
    /// on: the timeout runs on the caller's runtime, so a caller on a runtime of its own (as
    /// [`super::DebugServer`] is) gets [`DumpError::Timeout`] in time even when every worker of
    /// `handle`'s runtime is blocked. Waiting for a dump already running counts against
    /// `timeout`, and so does the dump itself; symbolising comes after and is not bounded (it
    /// only reads this binary's debug info).
    ///
    /// A trace that times out is not dropped: tokio finishes it on a thread of its own whatever
    /// happens to the request, and a second `Handle::dump()` beside it would spin on that thread
    /// until the first ends. So it is kept, and the next request first waits (under its own
    /// timeout) for it to end, discards its stale result and only then asks for a fresh trace:
    /// however often a stuck runtime is asked, it has at most one trace pending.
    pub async fn dump(&self, handle: &Handle, timeout: Duration) -> Result<Dump, DumpError> {
        let traced = tokio::time::timeout(timeout, async {
            let mut slot = self.slot.lock().await;
            if let Some(abandoned) = slot.as_mut() {
                let _stale = abandoned.await;
                *slot = None;
            }
            wait_until_quiet(handle).await?;
            let traced = slot.insert(start_trace(handle.clone())).await;
            *slot = None;
            traced
        })
        .await
        .map_err(|_| DumpError::Timeout(timeout))??;
        let live: HashMap<Id, LiveTask> = self
            .registry
            .live_tasks()
            .into_iter()
            .map(|task| (task.id, task))
            .collect();
        let taken_at_ms = unix_ms();
        // Symbolising runs on the blocking pool of the runtime serving the request. Under
        // `DebugServer` that is the debug runtime's own pool: the service's pool stays free for
        // its own work (the shipper sizes it for its Loki encodings), and the debug thread keeps
        // answering snapshots while a large dump resolves.
        tokio::task::spawn_blocking(move || build(&traced, &live, taken_at_ms))
            .await
            .map_err(|err| DumpError::Resolve(err.to_string()))
    }
}

/// Asks tokio for a trace of the runtime behind `handle`. A multi-thread runtime is traced from
/// anywhere (tokio does it on a thread of its own). A current-thread runtime can only be traced
/// from inside itself, so from another runtime the trace runs as a task spawned on it (that
/// task is counted by the registry and shows in its own dump).
fn start_trace(handle: Handle) -> PendingTrace {
    let on_it = Handle::try_current().is_ok_and(|current| current.id() == handle.id());
    match handle.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread if !on_it => {
            let task = handle.spawn(async { Handle::current().dump().await });
            Box::pin(async move {
                task.await
                    .map_err(|err| DumpError::Resolve(format!("the tracing task failed: {err}")))
            })
        }
        _ => Box::pin(async move { Ok(handle.dump().await) }),
    }
}

/// The busy guard: returns once the deepest run queue is at most [`MAX_TRACE_QUEUE_DEPTH`], or
/// refuses after [`BUSY_CHECKS`] looks.
async fn wait_until_quiet(handle: &Handle) -> Result<(), DumpError> {
    let mut depth = deepest_queue(handle);
    for _ in 1..BUSY_CHECKS {
        if depth <= MAX_TRACE_QUEUE_DEPTH {
            return Ok(());
        }
        tokio::time::sleep(BUSY_RECHECK).await;
        depth = deepest_queue(handle);
    }
    if depth <= MAX_TRACE_QUEUE_DEPTH {
        return Ok(());
    }
    Err(DumpError::Busy {
        depth,
        limit: MAX_TRACE_QUEUE_DEPTH,
    })
}

/// Groups raw traces, resolves one per group and joins tasks to the registry.
fn build(traced: &tokio::runtime::Dump, live: &HashMap<Id, LiveTask>, taken_at_ms: u64) -> Dump {
    // The Debug text of an unresolved trace is its list of instruction addresses (tokio offers no
    // other view of them): streamed into a 128-bit hash, it keys "same trace" without symbols and
    // without building a string per task.
    let mut by_raw: HashMap<(u64, u64), usize> = HashMap::new();
    let mut resolved: Vec<Vec<String>> = Vec::new();
    let mut tasks = Vec::new();
    for task in traced.tasks().iter() {
        let raw = trace_key(task.trace());
        let index = *by_raw.entry(raw).or_insert_with(|| {
            resolved.push(frames(task.trace()));
            resolved.len() - 1
        });
        let known = live.get(&task.id());
        tasks.push(DumpTask {
            id: task_id_u64(task.id()),
            site: known.map_or_else(|| UNKNOWN_SITE.to_owned(), |t| t.site.clone()),
            name: known.and_then(|t| t.name.clone()),
            age_s: known.map_or(0.0, |t| round_ms(t.age_s)),
            trace: resolved[index].clone(),
        });
    }
    tasks.sort_by_key(|task| task.id);
    Dump {
        schema: DUMP_SCHEMA.to_owned(),
        taken_at_ms,
        groups: group(&tasks),
        tasks,
    }
}

/// A `fmt::Write` sink hashing what is written into two independent 64-bit hashes.
struct KeyWriter(
    std::collections::hash_map::DefaultHasher,
    std::collections::hash_map::DefaultHasher,
);

impl Write for KeyWriter {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        std::hash::Hasher::write(&mut self.0, text.as_bytes());
        std::hash::Hasher::write(&mut self.1, text.as_bytes());
        Ok(())
    }
}

/// The grouping key of an unresolved trace: a 128-bit hash of its addresses' Debug text.
fn trace_key(trace: &(impl std::fmt::Debug + ?Sized)) -> (u64, u64) {
    use std::hash::Hasher;
    let mut key = KeyWriter(Default::default(), Default::default());
    // Different starting states make the two halves independent hashes.
    key.1.write_u64(0x9e37_79b9_7f4a_7c15);
    let _ = write!(key, "{trace:?}");
    (key.0.finish(), key.1.finish())
}

/// Groups tasks by identical site and trace, largest group first (ties by site, then trace).
pub fn group(tasks: &[DumpTask]) -> Vec<DumpGroup> {
    let mut counts: HashMap<(&str, &[String]), u64> = HashMap::new();
    for task in tasks {
        *counts
            .entry((task.site.as_str(), task.trace.as_slice()))
            .or_insert(0) += 1;
    }
    let mut groups: Vec<DumpGroup> = counts
        .into_iter()
        .map(|((site, trace), count)| DumpGroup {
            count,
            site: site.to_owned(),
            trace: trace.to_vec(),
        })
        .collect();
    groups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.site.cmp(&b.site))
            .then_with(|| a.trace.cmp(&b.trace))
    });
    groups
}

/// Frames of tokio's tracing machinery, dropped from traces: they are the same in every trace
/// and say nothing about where the task waits.
const NOISE_PREFIXES: &[&str] = &[
    "backtrace::",
    "tokio::runtime::task::trace::",
    "<tokio::runtime::task::trace::",
    "tokio::runtime::context::",
    "std::thread::local::",
    "core::ops::function::",
    "tokio::loom::std::",
    "core::cell::",
];

/// One trace as frames, outermost first, each `function at file:line` (the file shortened).
/// tokio gives one backtrace per leaf future polled (several under `join!`); a later backtrace
/// adds only the frames past its common prefix with the one before, so shared callers show once.
pub fn frames(trace: &tokio::runtime::dump::Trace) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut previous: Vec<String> = Vec::new();
    for backtrace in trace.resolve_backtraces() {
        // Frames come innermost first; a frame holds its inlined symbols innermost first too.
        let mut stack: Vec<String> = Vec::new();
        for frame in backtrace.frames() {
            for symbol in frame.symbols() {
                let Some(name) = symbol.name_demangled() else {
                    continue;
                };
                let name = strip_hash(name);
                if NOISE_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
                    continue;
                }
                let text = match (symbol.filename(), symbol.lineno()) {
                    (Some(file), Some(line)) => {
                        format!("{name} at {}:{line}", frame_path(&file.to_string_lossy()))
                    }
                    _ => name.to_owned(),
                };
                stack.push(text);
            }
        }
        stack.reverse();
        let shared = stack
            .iter()
            .zip(&previous)
            .take_while(|(a, b)| a == b)
            .count();
        out.extend(stack[shared..].iter().cloned());
        previous = stack;
    }
    out
}

/// Debug info names files by absolute path; show workspace files relative (to the current
/// directory, else to the workspace this crate was built in) and dependencies as `crate-version/...`.
fn frame_path(path: &str) -> String {
    let short = short_path(path);
    if !short.starts_with('/') {
        return short.into_owned();
    }
    // This crate lives at `diagtool/probe/` in its workspace.
    let build_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2);
    let cwd = std::env::current_dir().ok();
    for root in [build_root, cwd.as_deref()].into_iter().flatten() {
        if let Ok(rest) = std::path::Path::new(path).strip_prefix(root) {
            return rest.to_string_lossy().into_owned();
        }
    }
    short.into_owned()
}

/// Drops the `::h0123456789abcdef` suffix of a legacy-mangled symbol.
fn strip_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => name,
    }
}

/// Splits `function at file:line` into a pprof frame.
fn pprof_frame(text: &str) -> Frame {
    if let Some((function, place)) = text.rsplit_once(" at ")
        && let Some((file, line)) = place.rsplit_once(':')
        && let Ok(line) = line.parse()
    {
        return Frame::at(function, file, line);
    }
    Frame::named(text)
}

/// The dump as a gzipped pprof task profile (`debug=0`): one sample per group, valued by its task
/// count (`tasks/count`), with the spawn site as the root frame so `go tool pprof` splits by site.
pub fn to_pprof(dump: &Dump) -> Vec<u8> {
    let mut builder = ProfileBuilder::new(&[("tasks", "count")])
        .main_binary(&crate::pprof::current_binary())
        .timing((dump.taken_at_ms as i64).saturating_mul(1_000_000), 0);
    for group in &dump.groups {
        let mut stack = vec![Frame::named(format!("spawned at {}", group.site))];
        stack.extend(group.trace.iter().map(|frame| pprof_frame(frame)));
        builder.add(&stack, &[group.count as i64]);
    }
    builder.encode_gzip()
}

/// The dump as Go-style text: `debug=1` (or less) groups identical traces, largest first, each
/// headed by its count and spawn site; `debug=2` (or more) prints one block per task.
pub fn render_text(dump: &Dump, debug: u8) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "task dump: {} tasks in {} groups, taken at {} ms",
        dump.tasks.len(),
        dump.groups.len(),
        dump.taken_at_ms
    );
    if debug >= 2 {
        for task in &dump.tasks {
            let name = task
                .name
                .as_deref()
                .map(|n| format!(" \"{n}\""))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "\ntask {}{name} [age {:.1}s]: spawned at {}",
                task.id, task.age_s, task.site
            );
            write_trace(&mut out, &task.trace);
        }
    } else {
        for group in &dump.groups {
            let _ = writeln!(out, "\n{} @ {}", group.count, group.site);
            write_trace(&mut out, &group.trace);
        }
    }
    out
}

/// Leaf first, like Go's goroutine dump.
fn write_trace(out: &mut String, trace: &[String]) {
    if trace.is_empty() {
        let _ = writeln!(
            out,
            "#\t(no trace: the task was not parked on a tokio resource)"
        );
    }
    for frame in trace.iter().rev() {
        let _ = writeln!(out, "#\t{frame}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64, site: &str, trace: &[&str]) -> DumpTask {
        DumpTask {
            id,
            site: site.to_owned(),
            name: None,
            age_s: 1.0,
            trace: trace.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn groups_are_by_site_and_trace_largest_first() {
        let tasks = vec![
            task(1, "a.rs:1:1", &["f", "g"]),
            task(2, "b.rs:1:1", &["f", "g"]),
            task(3, "b.rs:1:1", &["f", "g"]),
            task(4, "a.rs:1:1", &["f", "h"]),
        ];
        let groups = group(&tasks);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].count, 2);
        assert_eq!(groups[0].site, "b.rs:1:1");
        assert_eq!(groups.iter().map(|g| g.count).sum::<u64>(), 4);
    }

    /// A task that reschedules itself at every poll until `stop`: it keeps its run queue long.
    struct Spinner(Arc<std::sync::atomic::AtomicBool>);

    impl std::future::Future for Spinner {
        type Output = ();
        fn poll(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            if self.0.load(std::sync::atomic::Ordering::Relaxed) {
                return std::task::Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }

    #[test]
    fn a_long_run_queue_refuses_the_dump_and_a_quiet_one_dumps() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dumper = Dumper::new(TaskRegistry::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinners: Vec<_> = (0..1000)
            .map(|_| runtime.spawn(Spinner(Arc::clone(&stop))))
            .collect();
        let handle = runtime.handle().clone();
        // Without the guard this dump never returns (the runtime freezes, its timer too): wait
        // for the answer from a plain thread, with a bound of our own.
        let (answer, answered) = std::sync::mpsc::channel();
        let (watch_handle, watch_dumper) = (handle.clone(), dumper.clone());
        let dumping = std::thread::spawn(move || {
            let result =
                watch_handle.block_on(watch_dumper.dump(&watch_handle, Duration::from_secs(5)));
            let _ = answer.send(result);
        });
        let Ok(refused) = answered.recv_timeout(Duration::from_secs(20)) else {
            // The workers are frozen: dropping the runtime would wait for them forever.
            std::mem::forget(runtime);
            panic!("the dump froze the runtime instead of refusing");
        };
        dumping.join().expect("dump thread");
        match refused {
            Err(DumpError::Busy { depth, limit }) => {
                assert!(depth > limit, "{depth} <= {limit}");
                assert!(
                    DumpError::Busy { depth, limit }
                        .to_string()
                        .contains("runtime too busy to trace safely")
                );
            }
            other => panic!("expected busy, got {other:?}"),
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        runtime.block_on(async {
            for spinner in spinners {
                spinner.await.expect("spinner ends");
            }
            let dump = dumper
                .dump(&handle, Duration::from_secs(10))
                .await
                .expect("a quiet runtime dumps");
            assert_eq!(dump.schema, DUMP_SCHEMA);
        });
    }

    /// Threads of this process whose name (`comm`) is `name`.
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    #[test]
    fn a_blocked_runtime_times_out_from_another_runtime_with_one_trace_pending() {
        const CALLER: &str = "dump-t-caller";
        let host = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        // Every worker blocked in a synchronous wait, released by the test (or after 30 s).
        let (started_tx, started) = std::sync::mpsc::channel();
        let mut releases = Vec::new();
        for _ in 0..2 {
            let (release, released) = std::sync::mpsc::channel::<()>();
            releases.push(release);
            let started_tx = started_tx.clone();
            host.spawn(async move {
                let _ = started_tx.send(());
                let _ = released.recv_timeout(Duration::from_secs(30));
            });
        }
        for _ in 0..2 {
            started
                .recv_timeout(Duration::from_secs(10))
                .expect("blocker started");
        }
        let dumper = Dumper::new(TaskRegistry::new());
        let handle = host.handle().clone();
        // tokio traces on an unnamed thread, which inherits its creator's name: the caller's.
        let (to_caller, caller_rx) = std::sync::mpsc::channel::<Duration>();
        let (from_caller, answers) = std::sync::mpsc::channel();
        let caller = std::thread::Builder::new()
            .name(CALLER.to_owned())
            .spawn(move || {
                let own = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("caller runtime");
                while let Ok(timeout) = caller_rx.recv() {
                    let started = std::time::Instant::now();
                    let result = own.block_on(dumper.dump(&handle, timeout));
                    let _ = from_caller.send((result.map(|d| d.schema), started.elapsed()));
                }
            })
            .expect("caller thread");
        let ask = |timeout| {
            to_caller.send(timeout).expect("ask");
            answers
                .recv_timeout(Duration::from_secs(30))
                .expect("the caller answers, whatever the host does")
        };
        for _ in 0..2 {
            let (result, took) = ask(Duration::from_millis(200));
            assert!(matches!(result, Err(DumpError::Timeout(_))), "{result:?}");
            assert!(took < Duration::from_secs(10), "503 took {took:?}");
            // The caller and one trace thread: the second request did not start another.
            assert_eq!(threads_named(CALLER), 2);
        }
        for release in &releases {
            release.send(()).expect("release");
        }
        // Freed, the runtime is traced again (tokio's barrier may need a round or two).
        let mut answer = None;
        for _ in 0..10 {
            if let (Ok(schema), _) = ask(Duration::from_secs(3)) {
                answer = Some(schema);
                break;
            }
        }
        assert_eq!(answer.as_deref(), Some(DUMP_SCHEMA));
        drop(to_caller);
        caller.join().expect("caller");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while threads_named(CALLER) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "a trace thread stayed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // A worker tokio left in its dump barrier would hold a plain drop forever.
        host.shutdown_timeout(Duration::from_secs(2));
    }

    #[test]
    fn a_current_thread_runtime_is_dumped_from_another_runtime() {
        let host = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("host");
        let handle = host.handle().clone();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let parked = handle.spawn(async move {
            let _ = released.await;
        });
        let parked_id = task_id_u64(parked.id());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let driver = std::thread::spawn(move || {
            host.block_on(async {
                let _ = stopped.await;
            });
        });
        let own = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("caller runtime");
        let dump = own
            .block_on(Dumper::new(TaskRegistry::new()).dump(&handle, Duration::from_secs(10)))
            .expect("dumped from outside");
        assert!(
            dump.tasks.iter().any(|task| task.id == parked_id),
            "{dump:?}"
        );
        release.send(()).expect("release");
        stop.send(()).expect("stop");
        driver.join().expect("driver");
    }

    #[test]
    fn trace_keys_match_for_equal_text_only() {
        // Unresolved traces print as their addresses; any Debug value stands in for them.
        assert_eq!(trace_key(&[1, 2]), trace_key(&[1, 2]));
        assert_ne!(trace_key(&[1, 2]), trace_key(&[1, 3]));
        assert_ne!(trace_key(&[12]), trace_key(&[1, 2][..]));
    }

    #[test]
    fn hashes_and_frame_places_parse() {
        assert_eq!(strip_hash("app::park::h0123456789abcdef"), "app::park");
        assert_eq!(strip_hash("app::hello"), "app::hello");
        assert_eq!(
            pprof_frame("app::park::{{closure}} at app/src/lib.rs:12"),
            Frame::at("app::park::{{closure}}", "app/src/lib.rs", 12)
        );
        assert_eq!(pprof_frame("app::park"), Frame::named("app::park"));
    }

    #[test]
    fn pprof_task_profile_counts_tasks_per_trace() {
        let tasks = vec![
            task(1, "a.rs:1:1", &["f at a.rs:3", "g at a.rs:9"]),
            task(2, "a.rs:1:1", &["f at a.rs:3", "g at a.rs:9"]),
            task(3, "b.rs:2:2", &["h"]),
        ];
        let dump = Dump {
            schema: DUMP_SCHEMA.to_owned(),
            taken_at_ms: 5,
            groups: group(&tasks),
            tasks,
        };
        let profile = crate::pprof::decode(&to_pprof(&dump)).expect("decodes");
        // The main binary is named (so `go tool pprof` neither warns nor re-symbolizes), and every
        // location points at it.
        let binary = &profile.string_table[profile.mapping[0].filename as usize];
        assert_eq!(*binary, crate::pprof::current_binary());
        assert!(profile.mapping[0].has_functions);
        assert!(profile.location.iter().all(|l| l.mapping_id == 1));
        assert_eq!(
            crate::pprof::to_folded(&profile),
            "spawned at a.rs:1:1;f;g 2\nspawned at b.rs:2:2;h 1\n"
        );
        let text = render_text(&dump, 1);
        assert!(
            text.contains("\n2 @ a.rs:1:1\n#\tg at a.rs:9\n#\tf at a.rs:3\n"),
            "{text}"
        );
        let text = render_text(&dump, 2);
        assert_eq!(text.matches("\ntask ").count(), 3, "{text}");
    }
}
