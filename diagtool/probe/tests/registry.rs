//! The task registry against real runtimes: counts per site under concurrent spawns and aborts,
//! terminates of unknown ids, ages, snapshot invariants, and spawn sites naming the caller's line.

use std::time::{Duration, Instant};

use diagtool_probe::{TaskRegistry, snapshot, spawn_named, spawn_named_in, spawn_named_on};

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

/// Waits (bounded) until `check` holds: terminate hooks run on worker threads, shortly after the
/// task's join handle resolves.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn site_starting(registry: &TaskRegistry, suffix: &str) -> diagtool_probe::SiteCounts {
    registry
        .sites()
        .into_iter()
        .find(|s| s.site.starts_with(suffix))
        .unwrap_or_else(|| panic!("no site starting {suffix:?} in {:#?}", registry.sites()))
}

#[test]
fn counts_per_site_under_concurrent_spawns_and_aborts() {
    let (rt, registry) = runtime(4);
    const SPAWNERS: usize = 8;
    const PER_SPAWNER: usize = 250;
    let gate = tokio_util::sync::CancellationToken::new();
    let (parked, parked_line, spawner_line) = rt.block_on(async {
        let mut spawners = Vec::new();
        let parked_line = line!() + 9;
        let spawner_line = line!() + 2;
        for _ in 0..SPAWNERS {
            spawners.push(tokio::spawn({
                let gate = gate.clone();
                async move {
                    let mut handles = Vec::new();
                    for i in 0..PER_SPAWNER {
                        let gate = gate.clone();
                        let handle = tokio::spawn(async move { gate.cancelled().await });
                        // Abort every other task, while other spawners keep spawning.
                        if i % 2 == 0 {
                            handle.abort();
                            let _ = handle.await;
                        } else {
                            handles.push(handle);
                        }
                    }
                    handles
                }
            }));
        }
        let mut parked = Vec::new();
        for spawner in spawners {
            parked.extend(spawner.await.expect("spawner"));
        }
        (parked, parked_line, spawner_line)
    });
    assert_eq!(parked.len(), SPAWNERS * PER_SPAWNER / 2);

    let live_expected = (SPAWNERS * PER_SPAWNER / 2) as u64;
    let parked_site = format!("diagtool/probe/tests/registry.rs:{parked_line}:");
    let spawner_site = format!("diagtool/probe/tests/registry.rs:{spawner_line}:");
    wait_until("aborted tasks counted", || {
        let site = site_starting(&registry, &parked_site);
        site.spawned == (SPAWNERS * PER_SPAWNER) as u64 && site.live() == live_expected
    });
    wait_until("spawners ended", || {
        site_starting(&registry, &spawner_site).live() == 0
    });
    assert_eq!(
        site_starting(&registry, &spawner_site).spawned,
        SPAWNERS as u64
    );

    // The snapshot agrees with the counters and keeps its invariants.
    let snap = snapshot::take(&registry, "test", Some(rt.handle()), true);
    assert!(
        snap.sites[0].site.starts_with(&parked_site),
        "{:?}",
        snap.sites
    );
    assert_eq!(snap.sites[0].live, live_expected);
    assert_eq!(
        snap.tasks.live,
        snap.sites.iter().map(|s| s.live).sum::<u64>()
    );
    assert!(
        snap.sites.windows(2).all(|w| w[0].live >= w[1].live),
        "sorted"
    );
    let detail = snap.tasks_detail.as_ref().expect("debug=2 detail");
    assert_eq!(
        detail
            .iter()
            .filter(|t| t.site.starts_with(&parked_site))
            .count() as u64,
        live_expected
    );
    assert_eq!(snap.runtime.workers, 4);
    assert!(snap.runtime.alive_tasks >= live_expected);

    // Opening the gate ends every parked task; the site drains to zero.
    gate.cancel();
    rt.block_on(async {
        for handle in parked {
            handle.await.expect("parked task");
        }
    });
    wait_until("parked tasks ended", || {
        site_starting(&registry, &parked_site).live() == 0
    });
    let site = site_starting(&registry, &parked_site);
    assert_eq!(site.terminated, (SPAWNERS * PER_SPAWNER) as u64);
}

#[test]
fn terminates_of_unknown_ids_are_ignored() {
    let (rt, registry) = runtime(2);
    rt.block_on(async {
        // spawn_blocking fires terminate but never spawn.
        for _ in 0..20 {
            tokio::task::spawn_blocking(|| 1).await.expect("blocking");
        }
    });
    // An id from another runtime, never seen here.
    let other = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let foreign = other.block_on(async { tokio::spawn(async {}).id() });
    registry.record_terminate(foreign);
    rt.block_on(async {
        let handle = tokio::spawn(async {});
        handle.await.expect("join");
    });
    wait_until("the one real task ended", || {
        registry.totals().terminated == 1
    });
    let totals = registry.totals();
    assert_eq!((totals.spawned, totals.terminated, totals.live), (1, 1, 0));
    // Shutting the runtime down fires terminate for its own workers: still ignored.
    drop(rt);
    assert_eq!(registry.totals().terminated, 1);
}

#[test]
fn ages_give_oldest_and_median() {
    let (rt, registry) = runtime(2);
    let cancel = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let line = rt.block_on(async {
        let line = line!() + 2;
        let spawn = |c: tokio_util::sync::CancellationToken| {
            spawn_named_in(&tracker, "ager", async move { c.cancelled().await })
        };
        spawn(cancel.clone());
        tokio::time::sleep(Duration::from_millis(400)).await;
        spawn(cancel.clone());
        spawn(cancel.clone());
        line
    });
    let snap = snapshot::take(&registry, "test", None, true);
    let site = snap
        .sites
        .iter()
        .find(|s| {
            s.site
                .starts_with(&format!("diagtool/probe/tests/registry.rs:{line}:"))
        })
        .unwrap_or_else(|| panic!("site at line {line}: {snap:#?}"));
    assert_eq!(site.live, 3);
    assert!(site.oldest_age_s >= 0.35, "{site:?}");
    assert!(site.median_age_s < 0.2, "{site:?}");
    assert_eq!(site.names, vec!["ager".to_owned()]);
    let detail = snap.tasks_detail.expect("detail");
    assert!(
        detail[0].age_s >= detail[detail.len() - 1].age_s,
        "oldest first"
    );
    cancel.cancel();
    tracker.close();
    rt.block_on(tracker.wait());
}

#[test]
fn spawn_helpers_record_the_callers_line_and_name() {
    let (rt, registry) = runtime(2);
    let handle = rt.handle().clone();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let lines = rt.block_on(async {
        let mut rx1 = rx.clone();
        let a = spawn_named("first", async move { rx1.changed().await.ok() });
        let line_a = line!() - 1;
        let mut rx2 = rx.clone();
        let b = spawn_named_on(&handle, "second", async move { rx2.changed().await.ok() });
        let line_b = line!() - 1;
        (a, b, line_a, line_b)
    });
    let (a, b, line_a, line_b) = lines;
    let tasks = registry.live_tasks();
    for (handle, line, name) in [(&a, line_a, "first"), (&b, line_b, "second")] {
        let task = tasks
            .iter()
            .find(|t| t.id == handle.id())
            .expect("task registered");
        assert!(
            task.site
                .starts_with(&format!("diagtool/probe/tests/registry.rs:{line}:")),
            "site {} is not the caller's line {line}",
            task.site
        );
        assert_eq!(task.name.as_deref(), Some(name));
    }
    // A plain spawn right after a named one does not inherit the name.
    let plain = rt.spawn(std::future::pending::<()>());
    let task = registry
        .live_tasks()
        .into_iter()
        .find(|t| t.id == plain.id())
        .expect("registered");
    assert_eq!(task.name, None);
    plain.abort();
    tx.send(true).expect("send");
    rt.block_on(async {
        a.await.expect("a");
        b.await.expect("b");
    });
}
