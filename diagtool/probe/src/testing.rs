//! A leak assertion for tests, in the spirit of Go's goleak: what a test spawned must be gone when
//! it ends.
//!
//! Build the test's runtime with [`test_runtime`] (a [`TaskRegistry`] hooked in), create a
//! [`LeakGuard`] at the start of the test, and call [`LeakGuard::check`] (or
//! [`LeakGuard::assert_clean`]) at its end. The guard remembers which tasks were alive when it was
//! made; at the end it waits, with a short backoff (1 s at most by default), for every task spawned
//! since to finish, since a component's stop often lets its last tasks end a moment later. Tasks
//! still alive then are leaks: the error lists each spawn site with its count, the oldest age and,
//! when the runtime can be traced (`Handle::dump`, Linux), where those tasks are parked.
//!
//! Sites can be ignored by prefix ([`LeakGuard::ignore_sites_with_prefix`]), for a dependency's
//! pool that legitimately outlives a test. Tasks the registry never saw spawn (`spawn_blocking`,
//! the runtime's own) are not counted.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use tokio::task::Id;

use crate::{Dumper, LiveTask, TaskRegistry};

/// How long [`LeakGuard::check`] waits for tasks to finish by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the trace of leaked tasks may take.
const DUMP_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames of a parked task shown per site (the innermost ones, where it waits).
const FRAMES_SHOWN: usize = 8;

/// A multi-thread runtime (2 workers, every driver) with a task registry installed: the runtime a
/// test with a [`LeakGuard`] runs on.
///
/// # Examples
/// ```
/// let (runtime, registry) = diagtool_probe::testing::test_runtime().unwrap();
/// runtime.block_on(async {
///     let guard = diagtool_probe::testing::LeakGuard::new(&registry);
///     tokio::spawn(async {}).await.unwrap();
///     guard.assert_clean().await;
/// });
/// ```
pub fn test_runtime() -> std::io::Result<(tokio::runtime::Runtime, TaskRegistry)> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let registry = TaskRegistry::install(&mut builder);
    let runtime = builder.worker_threads(2).enable_all().build()?;
    Ok((runtime, registry))
}

/// The tasks of one spawn site still alive at the end of a test.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakedSite {
    /// `path:line:col` of the spawn call.
    pub site: String,
    /// Tasks from it still alive.
    pub count: usize,
    /// Age of the oldest, in seconds.
    pub oldest_age_s: f64,
    /// Names given to them, if any.
    pub names: Vec<String>,
    /// Where one of them is parked, innermost frames last; empty when the runtime could not be
    /// traced.
    pub parked: Vec<String>,
}

/// Tasks that outlived their test.
#[derive(Debug, Clone, PartialEq)]
pub struct LeakError {
    /// Per site, most tasks first.
    pub sites: Vec<LeakedSite>,
    /// How long the guard waited for them.
    pub waited: Duration,
}

impl fmt::Display for LeakError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: usize = self.sites.iter().map(|s| s.count).sum();
        writeln!(
            f,
            "{total} task(s) spawned during the test still alive after waiting {:?}, from {} spawn site(s):",
            self.waited,
            self.sites.len()
        )?;
        for s in &self.sites {
            write!(
                f,
                "  {}: {} task(s), oldest {:.1}s",
                s.site, s.count, s.oldest_age_s
            )?;
            if !s.names.is_empty() {
                write!(f, ", named {}", s.names.join(", "))?;
            }
            writeln!(f)?;
            if !s.parked.is_empty() {
                writeln!(f, "    parked at:")?;
                for frame in &s.parked {
                    writeln!(f, "      {frame}")?;
                }
            }
        }
        Ok(())
    }
}

impl std::error::Error for LeakError {}

/// Remembers the tasks alive at its creation; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct LeakGuard {
    registry: TaskRegistry,
    baseline: HashSet<Id>,
    timeout: Duration,
    ignored: Vec<String>,
}

impl LeakGuard {
    /// A guard over `registry`, taking the tasks alive now as the baseline.
    pub fn new(registry: &TaskRegistry) -> Self {
        LeakGuard {
            baseline: registry.live_tasks().into_iter().map(|t| t.id).collect(),
            registry: registry.clone(),
            timeout: DEFAULT_TIMEOUT,
            ignored: Vec::new(),
        }
    }

    /// How long to wait for tasks to finish [default: [`DEFAULT_TIMEOUT`], 1 s].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Ignores tasks whose spawn site starts with `prefix` (such as `hyper-util-`); repeatable.
    pub fn ignore_sites_with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.ignored.push(prefix.into());
        self
    }

    /// The tasks alive now that were spawned since the guard and are not ignored.
    pub fn leaked_now(&self) -> Vec<LiveTask> {
        self.registry
            .live_tasks()
            .into_iter()
            .filter(|t| !self.baseline.contains(&t.id))
            .filter(|t| !self.ignored.iter().any(|p| t.site.starts_with(p.as_str())))
            .collect()
    }

    /// Waits (up to the timeout, backing off from 1 ms to 100 ms) until every task spawned since
    /// the guard finished; otherwise returns the leaks, traced when the current runtime allows.
    pub async fn check(self) -> Result<(), LeakError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(1);
        let leaked = loop {
            let leaked = self.leaked_now();
            if leaked.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= self.timeout {
                break leaked;
            }
            tokio::time::sleep(pause.min(self.timeout.saturating_sub(started.elapsed()))).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        };
        let waited = started.elapsed();
        let parked = self.parked(&leaked).await;
        let mut by_site: BTreeMap<&str, LeakedSite> = BTreeMap::new();
        for task in &leaked {
            let entry = by_site
                .entry(task.site.as_str())
                .or_insert_with(|| LeakedSite {
                    site: task.site.clone(),
                    count: 0,
                    oldest_age_s: 0.0,
                    names: Vec::new(),
                    parked: Vec::new(),
                });
            entry.count += 1;
            entry.oldest_age_s = entry.oldest_age_s.max(task.age_s);
            if let Some(name) = &task.name
                && !entry.names.contains(name)
            {
                entry.names.push(name.clone());
            }
            if entry.parked.is_empty()
                && let Some(trace) = parked.get(&crate::snapshot::task_id_u64(task.id))
            {
                let skip = trace.len().saturating_sub(FRAMES_SHOWN);
                entry.parked = trace[skip..].to_vec();
            }
        }
        let mut sites: Vec<LeakedSite> = by_site.into_values().collect();
        sites.sort_by(|a, b| b.count.cmp(&a.count).then(a.site.cmp(&b.site)));
        Err(LeakError { sites, waited })
    }

    /// [`check`](Self::check), panicking with the leak report: for the last line of a test.
    #[track_caller]
    pub fn assert_clean(self) -> impl std::future::Future<Output = ()> {
        let caller = std::panic::Location::caller();
        async move {
            if let Err(leak) = self.check().await {
                panic!("leak check at {caller} failed: {leak}");
            }
        }
    }

    /// The traces of the leaked tasks by id, from a dump of the current runtime (empty when there
    /// is none or it cannot be traced in time).
    async fn parked(&self, leaked: &[LiveTask]) -> std::collections::HashMap<u64, Vec<String>> {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Default::default();
        };
        let ids: HashSet<u64> = leaked
            .iter()
            .map(|t| crate::snapshot::task_id_u64(t.id))
            .collect();
        // Tests spawn with plain `tokio::spawn`, which only the global dump traces; its risk (a
        // stop-the-world barrier) is a test runtime's to take, not a service's.
        match Dumper::new(self.registry.clone())
            .global_dump(true)
            .dump_mode(&handle, DUMP_TIMEOUT, crate::DumpMode::Global)
            .await
        {
            Ok(dump) => dump
                .tasks
                .into_iter()
                .filter(|t| ids.contains(&t.id))
                .map(|t| (t.id, t.trace))
                .collect(),
            Err(_) => Default::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Parks forever on a tokio primitive (so a task dump can trace it): the leak the tests plant.
    async fn wait_for_a_reply_that_never_comes() {
        tokio::sync::Notify::new().notified().await;
    }

    #[test]
    fn tasks_that_finish_shortly_after_the_test_are_not_leaks() {
        let (runtime, registry) = test_runtime().unwrap();
        runtime.block_on(async {
            let guard = LeakGuard::new(&registry);
            for _ in 0..4 {
                // Still running when the check starts; done well within its backoff.
                tokio::spawn(tokio::time::sleep(Duration::from_millis(50)));
            }
            guard.check().await.unwrap();
        });
    }

    #[test]
    fn a_leaked_task_fails_the_check_naming_its_site_and_where_it_waits() {
        let (runtime, registry) = test_runtime().unwrap();
        runtime.block_on(async {
            let guard = LeakGuard::new(&registry).timeout(Duration::from_millis(200));
            let line = line!() + 2;
            for _ in 0..3 {
                tokio::spawn(wait_for_a_reply_that_never_comes());
            }
            let err = guard.check().await.unwrap_err();
            assert_eq!(err.sites.len(), 1, "{err}");
            let site = &err.sites[0];
            assert_eq!(site.count, 3);
            assert!(
                site.site
                    .starts_with(&format!("diagtool/probe/src/testing.rs:{line}:")),
                "{err}"
            );
            assert!(err.waited >= Duration::from_millis(200));
            let text = err.to_string();
            assert!(
                text.starts_with("3 task(s) spawned during the test"),
                "{text}"
            );
            assert!(text.contains(&format!("testing.rs:{line}:")), "{text}");
            // Task dumps exist where tokio supports them (Linux on x86, x86_64, aarch64).
            if cfg!(all(
                target_os = "linux",
                any(
                    target_arch = "x86_64",
                    target_arch = "aarch64",
                    target_arch = "x86"
                )
            )) {
                assert!(text.contains("parked at:"), "{text}");
                assert!(
                    site.parked
                        .iter()
                        .any(|f| f.contains("wait_for_a_reply_that_never_comes")),
                    "{text}"
                );
            }
        });
    }

    #[test]
    fn tasks_alive_before_the_guard_and_ignored_sites_do_not_count() {
        let (runtime, registry) = test_runtime().unwrap();
        runtime.block_on(async {
            tokio::spawn(wait_for_a_reply_that_never_comes());
            let guard = LeakGuard::new(&registry)
                .timeout(Duration::from_millis(100))
                .ignore_sites_with_prefix("diagtool/probe/src/testing.rs");
            tokio::spawn(wait_for_a_reply_that_never_comes());
            guard.check().await.unwrap();
            let strict = LeakGuard::new(&registry).timeout(Duration::from_millis(100));
            assert!(strict.leaked_now().is_empty(), "baseline taken now");
        });
    }

    #[test]
    #[should_panic(expected = "leak check at diagtool/probe/src/testing.rs")]
    fn assert_clean_panics_with_the_report() {
        let (runtime, registry) = test_runtime().unwrap();
        runtime.block_on(async {
            let guard = LeakGuard::new(&registry).timeout(Duration::from_millis(50));
            tokio::spawn(wait_for_a_reply_that_never_comes());
            guard.assert_clean().await;
        });
    }
}
