//! The supervisor: owns every long-lived task (a name, a cancellation path, a join, a heartbeat).
//!
//! Two tokens order the shutdown: `shutdown` asks the reader to stop reading (everything behind it
//! then drains through channel closure), `hard_stop` fires at the shutdown deadline and makes every
//! component abandon what it holds (unacknowledged, so re-read next start). A component that fails
//! records the first failure and triggers `shutdown`, so the process ends instead of limping on.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::Health;

#[derive(Debug)]
struct Inner {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    health: Health,
    failure: Mutex<Option<String>>,
}

/// Owns the process's tasks; cheap to clone.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    /// A supervisor reporting to `health`.
    pub fn new(health: Health) -> Self {
        Self {
            inner: Arc::new(Inner {
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                hard_stop: CancellationToken::new(),
                health,
                failure: Mutex::new(None),
            }),
        }
    }

    /// Fires when the process should stop reading and drain.
    pub fn shutdown(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Fires at the shutdown deadline: abandon in-flight work.
    pub fn hard_stop(&self) -> CancellationToken {
        self.inner.hard_stop.clone()
    }

    /// The health state components beat into.
    pub fn health(&self) -> &Health {
        &self.inner.health
    }

    /// Registers `name` for heartbeats and returns its beat function.
    pub fn heartbeat(&self, name: &str) -> impl Fn() + Send + Sync + 'static + use<> {
        self.inner.health.heartbeat(name)
    }

    /// Spawns a named component. `#[track_caller]`: the runtime's spawn site is the caller's line
    /// (so `/debug/tasks` names `lib.rs:NN`, where the component is started, not this file).
    /// An error ends the component, is logged, kept as the process's failure and starts shutdown.
    #[track_caller]
    pub fn spawn<F>(&self, name: &'static str, fut: F) -> JoinHandle<()>
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let task = async move {
            let result = fut.await;
            match result {
                Ok(()) => {
                    tracing::debug!(component = name, "component stopped");
                    inner.health.ended(name, false);
                }
                Err(e) => {
                    tracing::error!(component = name, error = %format!("{e:#}"), "component failed");
                    inner.health.ended(name, true);
                    let mut f = inner.failure.lock().unwrap_or_else(PoisonError::into_inner);
                    f.get_or_insert_with(|| format!("{name}: {e:#}"));
                    inner.shutdown.cancel();
                }
            }
        };
        // Through the probe: the task is named in the registry, wrapped so release-build dumps keep
        // its frames, tracked for `wait`, and (every layer being `#[track_caller]`) its spawn site
        // is the line that called this method.
        diagtool_probe::spawn_named_in(&self.inner.tracker, name, task)
    }

    /// The first component failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until every spawned task ended, at most `limit`. Returns whether they all did.
    pub async fn wait(&self, limit: Duration) -> bool {
        self.inner.tracker.close();
        tokio::time::timeout(limit, self.inner.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_component_records_the_failure_and_starts_shutdown() {
        let s = Supervisor::new(Health::new(Duration::from_secs(10)));
        let stop = s.shutdown();
        let waiter = s.spawn("waiter", async move {
            stop.cancelled().await;
            Ok(())
        });
        s.spawn("broken", async { anyhow::bail!("disk on fire") });
        assert!(s.wait(Duration::from_secs(5)).await);
        waiter.await.unwrap();
        assert!(s.shutdown().is_cancelled());
        assert_eq!(s.failure().as_deref(), Some("broken: disk on fire"));
        assert_eq!(s.health().report().components["broken"].state, "failed");
    }

    #[test]
    fn components_are_named_at_the_line_that_spawned_them() {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        let registry = diagtool_probe::TaskRegistry::install(&mut builder);
        builder.build().unwrap().block_on(async {
            let s = Supervisor::new(Health::new(Duration::from_secs(10)));
            let stop = s.shutdown();
            let line = line!() + 1;
            s.spawn("named-here", async move {
                stop.cancelled().await;
                Ok(())
            });
            let names = registry.site_names();
            let (site, _) = names
                .iter()
                .find(|(_, n)| n.contains("named-here"))
                .unwrap_or_else(|| panic!("no site named: {names:?}"));
            assert!(
                site.starts_with("shipper/src/supervisor.rs:")
                    && site.contains(&format!(":{line}:")),
                "the caller's line {line}, not the supervisor's own: {site}"
            );
            s.shutdown().cancel();
            assert!(s.wait(Duration::from_secs(5)).await);
        });
        assert_eq!(registry.totals().live, 0);
    }

    #[tokio::test]
    async fn wait_times_out_on_a_task_that_ignores_shutdown() {
        let s = Supervisor::new(Health::new(Duration::from_secs(10)));
        let hard = s.hard_stop();
        s.spawn("stubborn", async move {
            hard.cancelled().await;
            Ok(())
        });
        s.shutdown().cancel();
        assert!(!s.wait(Duration::from_millis(50)).await);
        s.hard_stop().cancel();
        assert!(s.wait(Duration::from_secs(5)).await);
    }
}
