//! The opt-in global dump: tokio's `Handle::dump()`, which stops every worker of the runtime.
//!
//! Off unless the service enables it ([`super::ProbeBuilder::global_dump`]) and a request asks
//! for it (`?mode=global`). It traces every task, wrapped or not, but the multi-thread runtime's
//! workers meet at a barrier for it, and with tokio 1.54.1 a wait that times out leaves that
//! barrier miscounted: the runtime can wedge for good, shipping stops and SIGTERM is ignored
//! (tokio PR #8370, issues #7478 and #6035). So [`super::Dumper`] fuses it after one timeout.
//!
//! Busy guard: `Handle::dump()` was also seen to freeze a runtime whose run queue is long (one
//! worker spins in `steal_all`, another waits at the barrier). Before dumping, [`trace`] reads
//! every worker's local queue depth and the injection queue from `Handle::metrics()`; while the
//! deepest is above [`MAX_TRACE_QUEUE_DEPTH`] it rechecks every [`BUSY_RECHECK`], at most
//! [`BUSY_CHECKS`] times, and then refuses with [`DumpError::Busy`] rather than risk it. It lowers
//! the risk; it does not remove it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::Id;

use super::dump::{DumpError, UNKNOWN_SITE, group};
use super::dump_render::{TraceKeyer, frames_rooted, with_future};
use super::registry::LiveTask;
use super::snapshot::{round_ms, task_id_u64};
use crate::model::{DUMP_SCHEMA, Dump, DumpTask};

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

/// A trace asked of tokio and not yet answered: `Handle::dump()`'s future, owned.
type PendingTrace = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<tokio::runtime::Dump, DumpError>> + Send>,
>;

/// At most one global trace of a runtime pending, shared by a dumper's clones.
///
/// A trace that times out is not dropped: tokio finishes it on a thread of its own whatever
/// happens to the request, and a second `Handle::dump()` beside it would spin on that thread
/// until the first ends. So it is kept, and the next request first waits (under its own
/// timeout) for it to end, discards its stale result and only then asks for a fresh trace.
pub(crate) type Pending = Arc<tokio::sync::Mutex<Option<PendingTrace>>>;

/// Traces the runtime behind `handle` with `Handle::dump()`, under `timeout` (waiting for a
/// trace still pending counts against it). The timeout runs on the caller's runtime, so a caller
/// on a runtime of its own (as [`super::DebugServer`] is) gets [`DumpError::Timeout`] in time
/// even when every worker of `handle`'s runtime is blocked.
pub(crate) async fn trace(
    pending: &Pending,
    handle: &Handle,
    timeout: Duration,
) -> Result<tokio::runtime::Dump, DumpError> {
    tokio::time::timeout(timeout, async {
        let mut slot = pending.lock().await;
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
    .map_err(|_| DumpError::Timeout(timeout))?
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
pub(crate) fn build(
    traced: &tokio::runtime::Dump,
    live: &HashMap<Id, LiveTask>,
    futures: &HashMap<Id, &'static str>,
    taken_at_ms: u64,
) -> Dump {
    // Keyed by the unresolved trace's addresses (see `TraceKeyer`) and the spawn site, which
    // picks among the places a task's lost root frames may be (`frames_rooted`): one symbolised
    // per group.
    let mut by_raw: HashMap<((u64, u64), &str, usize), usize> = HashMap::new();
    let mut resolved: Vec<Vec<String>> = Vec::new();
    let mut tasks = Vec::new();
    let mut keyer = TraceKeyer::default();
    for task in traced.tasks().iter() {
        let raw = keyer.key(task.trace());
        let known = live.get(&task.id());
        let site = known.map_or(UNKNOWN_SITE, |t| t.site.as_str());
        // A wrapped task's future type names it where its trace is empty (see `with_future`).
        let future = futures.get(&task.id()).copied().unwrap_or("");
        let index = *by_raw
            .entry((raw, site, future.as_ptr() as usize))
            .or_insert_with(|| {
                resolved.push(with_future(frames_rooted(task.trace(), site), future));
                resolved.len() - 1
            });
        tasks.push(DumpTask {
            id: task_id_u64(task.id()),
            site: site.to_owned(),
            name: known.and_then(|t| t.name.clone()),
            age_s: known.map_or(0.0, |t| round_ms(t.age_s)),
            trace: resolved[index].clone(),
            not_traced: None,
        });
    }
    tasks.sort_by_key(|task| task.id);
    Dump {
        schema: DUMP_SCHEMA.to_owned(),
        taken_at_ms,
        groups: group(&tasks),
        tasks,
        mode: Some(super::dump::DumpMode::Global.name().to_owned()),
        not_traced: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TaskRegistry;
    use crate::dump::{DumpMode, Dumper};

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
        let dumper = Dumper::new(TaskRegistry::new())
            .global_dump(true)
            .min_interval(Duration::ZERO);
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
            let result = watch_handle.block_on(watch_dumper.dump_mode(
                &watch_handle,
                Duration::from_secs(5),
                DumpMode::Global,
            ));
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
                .dump_mode(&handle, Duration::from_secs(10), DumpMode::Global)
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
    fn a_blocked_runtime_times_out_once_then_global_dumps_are_fused() {
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
        let dumper = Dumper::new(TaskRegistry::new())
            .global_dump(true)
            .min_interval(Duration::ZERO);
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
                    let result = own.block_on(dumper.dump_mode(&handle, timeout, DumpMode::Global));
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
        let (result, took) = ask(Duration::from_millis(200));
        assert!(matches!(result, Err(DumpError::Timeout(_))), "{result:?}");
        assert!(took < Duration::from_secs(10), "503 took {took:?}");
        // The fuse: no second global dump in this process, answered at once, and no second
        // trace thread beside the one still pending.
        for _ in 0..2 {
            let (result, took) = ask(Duration::from_secs(5));
            assert!(
                matches!(result, Err(DumpError::GlobalFused(t)) if t == Duration::from_millis(200)),
                "{result:?}"
            );
            assert!(
                took < Duration::from_secs(1),
                "the fused answer took {took:?}"
            );
            assert_eq!(threads_named(CALLER), 2);
        }
        for release in &releases {
            release.send(()).expect("release");
        }
        let (result, _) = ask(Duration::from_secs(3));
        assert!(
            matches!(result, Err(DumpError::GlobalFused(_))),
            "{result:?}"
        );
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
            .block_on(
                Dumper::new(TaskRegistry::new())
                    .global_dump(true)
                    .dump_mode(&handle, Duration::from_secs(10), DumpMode::Global),
            )
            .expect("dumped from outside");
        assert!(
            dump.tasks.iter().any(|task| task.id == parked_id),
            "{dump:?}"
        );
        release.send(()).expect("release");
        stop.send(()).expect("stop");
        driver.join().expect("driver");
    }
}
