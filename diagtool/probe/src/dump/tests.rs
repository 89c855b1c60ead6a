//! Self-traced dumps on real runtimes, the gate and the global mode's opt-in.

use std::sync::atomic::AtomicUsize;
use std::task::Poll;

use super::*;
use crate::spawn_named;

fn runtime(workers: usize) -> (tokio::runtime::Runtime, TaskRegistry) {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let registry = TaskRegistry::install(&mut builder);
    let runtime = builder
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    (runtime, registry)
}

fn task_of(dump: &Dump, id: tokio::task::Id) -> &DumpTask {
    let id = task_id_u64(id);
    dump.tasks
        .iter()
        .find(|task| task.id == id)
        .unwrap_or_else(|| panic!("task {id} not in the dump: {dump:#?}"))
}

/// Waits (bounded) until `count` tasks are live in `registry`.
async fn until_live(registry: &TaskRegistry, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while registry.totals().live < count {
        assert!(Instant::now() < deadline, "{count} tasks never went live");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[inline(never)]
async fn wait_for_messages(mut rx: tokio::sync::mpsc::Receiver<u32>) -> u32 {
    let mut sum = 0;
    while let Some(n) = rx.recv().await {
        sum += n;
    }
    sum
}

#[test]
fn wrapped_tasks_trace_themselves_lose_nothing_and_plain_ones_are_listed() {
    let (runtime, registry) = runtime(2);
    runtime.block_on(async {
        let dumper = Dumper::new(registry.clone()).min_interval(Duration::ZERO);
        let mut senders = Vec::new();
        let mut wrapped = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            senders.push(tx);
            wrapped.push(spawn_named("receiver", wait_for_messages(rx)));
        }
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let plain = tokio::spawn(async move {
            let _ = released.await;
        });
        until_live(&registry, 4).await;
        // Let every task reach its await (a task not polled yet is not on the board).
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Twice: a task traced once answers the next dump too.
        for round in 0..2 {
            // Messages sent before the dump must reach the receivers after it.
            for tx in &senders {
                tx.send(round + 1).await.expect("send");
            }
            let dump = dumper
                .dump(&Handle::current(), Duration::from_secs(10))
                .await
                .expect("dump");
            assert_eq!(dump.mode.as_deref(), Some("self"));
            for handle in &wrapped {
                let task = task_of(&dump, handle.id());
                assert_eq!(task.not_traced, None, "{task:#?}");
                assert_eq!(task.name.as_deref(), Some("receiver"));
                let joined = task.trace.join("\n");
                assert!(joined.contains("wait_for_messages"), "{joined}");
                assert!(joined.contains("dump/tests.rs:"), "{joined}");
            }
            let task = task_of(&dump, plain.id());
            assert_eq!(task.not_traced.as_deref(), Some(UNWRAPPED));
            assert!(
                task.trace[0].contains("without the probe's wrapper"),
                "{task:?}"
            );
            assert!(task.site.contains("dump/tests.rs:"), "{task:?}");
            let counts = dump.not_traced.clone().expect("counts");
            assert_eq!((counts.unwrapped, counts.no_answer), (1, 0), "{dump:#?}");
            let group = dump
                .groups
                .iter()
                .find(|g| g.trace.join("\n").contains("wait_for_messages"))
                .expect("the receivers' group");
            assert_eq!(group.count, 3);
        }
        drop(senders);
        for handle in wrapped {
            assert_eq!(handle.await.expect("join"), 3, "a message was lost");
        }
        release.send(()).expect("release");
        plain.await.expect("plain");
    });
}

/// Ready once `open` is set; never wakes its task by itself (so only a dump's wake repolls it).
struct Door(Arc<AtomicBool>);

impl std::future::Future for Door {
    type Output = u32;
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<u32> {
        if self.0.load(Ordering::Acquire) {
            Poll::Ready(42)
        } else {
            Poll::Pending
        }
    }
}

#[test]
fn a_task_that_completes_in_its_capture_poll_returns_its_output() {
    let (runtime, registry) = runtime(1);
    runtime.block_on(async {
        let open = Arc::new(AtomicBool::new(false));
        let door = spawn_named("door", Door(Arc::clone(&open)));
        until_live(&registry, 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        open.store(true, Ordering::Release);
        let dump = Dumper::new(registry.clone())
            .dump(&Handle::current(), Duration::from_secs(5))
            .await
            .expect("dump");
        // The task ended during the dump: it is not listed as waiting anywhere.
        assert!(
            dump.tasks.iter().all(|t| t.id != task_id_u64(door.id())),
            "{dump:#?}"
        );
        let output = tokio::time::timeout(Duration::from_secs(5), door)
            .await
            .expect("the dump's wake repolled it")
            .expect("join");
        assert_eq!(output, 42);
    });
}

#[test]
fn a_task_busy_in_a_long_poll_is_reported_not_waited_for() {
    let (runtime, registry) = runtime(2);
    runtime.block_on(async {
        let (go, went) = tokio::sync::oneshot::channel::<()>();
        let (busy_tx, busy_rx) = std::sync::mpsc::channel::<()>();
        let busy = spawn_named("busy", async move {
            let _ = went.await;
            // A synchronous wait inside a poll: this worker is held until the test lets go.
            let _ = busy_rx.recv_timeout(Duration::from_secs(20));
        });
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let parked = spawn_named("parked", wait_for_messages(rx));
        until_live(&registry, 2).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        go.send(()).expect("go");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let dump = Dumper::new(registry.clone())
            .dump(&Handle::current(), Duration::from_millis(300))
            .await
            .expect("a dump answers with what it has");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        let task = task_of(&dump, busy.id());
        assert_eq!(task.not_traced.as_deref(), Some(NO_ANSWER), "{task:#?}");
        assert!(task.trace[0].contains("no answer within 300ms"), "{task:?}");
        assert_eq!(task.name.as_deref(), Some("busy"));
        assert_eq!(task_of(&dump, parked.id()).not_traced, None, "{dump:#?}");
        assert_eq!(dump.not_traced.clone().expect("counts").no_answer, 1);
        // The service keeps working meanwhile.
        tx.send(5).await.expect("send");
        drop(tx);
        assert_eq!(parked.await.expect("join"), 5);
        busy_tx.send(()).expect("release");
        busy.await.expect("busy ends");
    });
}

#[test]
fn one_dump_at_a_time_and_a_minimum_interval() {
    let (runtime, registry) = runtime(1);
    runtime.block_on(async {
        let interval = Duration::from_millis(300);
        let dumper = Dumper::new(registry).min_interval(interval);
        let handle = Handle::current();
        dumper
            .dump(&handle, Duration::from_secs(5))
            .await
            .expect("first");
        let ended = Instant::now();
        dumper
            .dump(&handle, Duration::from_secs(5))
            .await
            .expect("second, delayed");
        assert!(ended.elapsed() >= interval, "{:?}", ended.elapsed());
        let gate = Gate::default();
        let held = gate.enter(Duration::ZERO).await.expect("free");
        assert!(matches!(
            gate.enter(Duration::ZERO).await,
            Err(DumpError::Running)
        ));
        drop(held);
        gate.enter(Duration::ZERO).await.expect("free again");
    });
}

#[test]
fn global_mode_needs_the_opt_in() {
    let (runtime, registry) = runtime(1);
    runtime.block_on(async {
        let handle = Handle::current();
        let off = Dumper::new(registry.clone());
        let err = off
            .dump_mode(&handle, Duration::from_secs(5), DumpMode::Global)
            .await
            .expect_err("off by default");
        assert!(matches!(err, DumpError::GlobalDisabled));
        let text = err.to_string();
        assert!(text.contains("DIAGTOOL_PROBE_GLOBAL_DUMP=1"), "{text}");
        assert!(text.contains("server.global_dump"), "{text}");
        let parked = tokio::spawn(std::future::pending::<()>());
        until_live(&registry, 1).await;
        let on = Dumper::new(registry.clone()).global_dump(true);
        let dump = on
            .dump_mode(&handle, Duration::from_secs(10), DumpMode::Global)
            .await
            .expect("enabled");
        assert_eq!(dump.mode.as_deref(), Some("global"));
        // Plain tasks are traced by the global dump.
        assert_eq!(task_of(&dump, parked.id()).not_traced, None);
        parked.abort();
    });
}

#[test]
fn a_dump_while_tasks_spawn_and_end_misses_nothing_and_hangs_on_nothing() {
    let (runtime, registry) = runtime(2);
    runtime.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let spawned = Arc::new(AtomicUsize::new(0));
        let churn = {
            let (stop, spawned) = (Arc::clone(&stop), Arc::clone(&spawned));
            spawn_named("churn", async move {
                while !stop.load(Ordering::Relaxed) {
                    let short = spawn_named("short", tokio::time::sleep(Duration::from_millis(1)));
                    spawned.fetch_add(1, Ordering::Relaxed);
                    let _ = short.await;
                }
            })
        };
        let dumper = Dumper::new(registry.clone()).min_interval(Duration::ZERO);
        // Dumps run while the churn spawns: wait, bounded, for it to start (on a loaded machine
        // twenty dumps can end before its first poll), then dump at least twenty times and until
        // it has spawned more.
        let deadline = Instant::now() + Duration::from_secs(10);
        while spawned.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the churn task never ran");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let before = spawned.load(Ordering::Relaxed);
        let mut dumps = 0;
        while dumps < 20 || spawned.load(Ordering::Relaxed) < before + 10 {
            assert!(Instant::now() < deadline, "the churn task stopped spawning");
            dumps += 1;
            let started = Instant::now();
            let dump = dumper
                .dump(&Handle::current(), Duration::from_secs(5))
                .await
                .expect("dump");
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "a dump waited on an ended task"
            );
            assert_eq!(dump.not_traced.expect("counts").no_answer, 0);
        }
        stop.store(true, Ordering::Relaxed);
        churn.await.expect("churn");
    });
}

fn task(id: u64, site: &str, trace: &[&str]) -> DumpTask {
    DumpTask {
        id,
        site: site.to_owned(),
        name: None,
        age_s: 1.0,
        trace: trace.iter().map(|s| (*s).to_owned()).collect(),
        not_traced: None,
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
