//! The supervisor: owns every long-lived task (a name, a cancellation path, a join, a heartbeat).
//!
//! Two tokens order the shutdown: `shutdown` asks the reader to stop reading (everything behind it
//! then drains through channel closure), `hard_stop` fires at the shutdown deadline and makes every
//! component abandon what it holds (unacknowledged, so re-read next start). A component that fails
//! records the first failure and triggers `shutdown`, so the process ends instead of limping on.
//!
//! A panic is a failure too: it is caught where the component's task starts, logged with the
//! component's name and the panic's message, the component is marked failed in `/health` (503),
//! and shutdown starts, so the components still running drain and the checkpointer's final save
//! runs. [`crate::run_with`] then returns [`Panicked`], which the binary maps to exit code 101 (the
//! code Rust itself uses for a panic). Left alone, a panicking task would end silently: nothing
//! marks it ended and the process runs on without it until its heartbeat goes stale.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
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
    panicked: Mutex<Option<Panicked>>,
}

impl Inner {
    /// Records a component's failure (the first one is the process's), marks it failed in
    /// health and starts shutdown.
    fn failed(&self, name: &'static str, reason: String) {
        self.health.failed(name, &reason);
        let mut f = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        f.get_or_insert_with(|| format!("{name}: {reason}"));
        drop(f);
        self.shutdown.cancel();
    }
}

/// A supervised component panicked: a bug in the shipper. [`crate::run_with`] returns it (inside
/// its `anyhow::Error`) after the ordered shutdown, so the binary can tell it from an error the
/// environment caused and exit with 101.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("component '{component}' panicked: {message}")]
pub struct Panicked {
    /// The component's name (as in `/health`).
    pub component: &'static str,
    /// The panic's message (its `&str` or `String` payload).
    pub message: String,
}

/// The message of a panic payload: `panic!` gives a `&str` or a `String`.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
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
                panicked: Mutex::new(None),
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
    /// An error or a panic ends the component, is logged, kept as the process's failure and
    /// starts shutdown.
    #[track_caller]
    pub fn spawn<F>(&self, name: &'static str, fut: F) -> JoinHandle<()>
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        #[cfg(debug_assertions)]
        let fut = test_panic::arm(name, fut);
        let inner = Arc::clone(&self.inner);
        let task = async move {
            // Unwind safety: after a panic the component's future is dropped, never polled again.
            // What it shared lives behind channels (closed by the drop, which is how the others
            // learn it is gone) and mutexes that every user takes through `PoisonError::into_inner`
            // (the ledger only records acknowledged positions, so a half-done update is at worst
            // a position not yet advanced: lines re-read, never lost).
            let result = AssertUnwindSafe(fut).catch_unwind().await;
            match result {
                Ok(Ok(())) => {
                    tracing::debug!(component = name, "component stopped");
                    inner.health.ended(name, false);
                }
                Ok(Err(e)) => {
                    let reason = format!("{e:#}");
                    tracing::error!(component = name, error = %reason, "component failed");
                    inner.failed(name, reason);
                }
                Err(payload) => {
                    let message = panic_message(&*payload);
                    tracing::error!(
                        component = name,
                        panic = %message,
                        "component panicked: shutting down, saving acknowledged positions"
                    );
                    inner
                        .panicked
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert_with(|| Panicked {
                            component: name,
                            message: message.clone(),
                        });
                    inner.failed(name, format!("panicked: {message}"));
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

    /// The first component panic, if any.
    pub fn panicked(&self) -> Option<Panicked> {
        self.inner
            .panicked
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

/// A panic on demand, for the tests that run the real binary: debug builds only, so a release
/// shipper cannot panic this way whatever its environment holds.
///
/// `SHIPPER_TEST_PANIC=COMPONENT:FILE` makes the component named COMPONENT panic, inside its own
/// task, once FILE exists (checked every 50 ms): the test decides when, after the lines it wants
/// acknowledged are through. The panic unwinds through the component's future and drops it, as a
/// panic in the component's own code would.
#[cfg(debug_assertions)]
mod test_panic {
    use std::future::Future;
    use std::path::PathBuf;
    use std::pin::Pin;
    use std::time::Duration;

    /// The variable's name.
    pub(super) const VAR: &str = "SHIPPER_TEST_PANIC";

    type Component = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

    /// `fut`, set to panic when [`VAR`] names `name`.
    pub(super) fn arm<F>(name: &'static str, fut: F) -> Component
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let Some(trigger) = std::env::var(VAR)
            .ok()
            .and_then(|v| {
                v.split_once(':')
                    .map(|(c, f)| (c == name, PathBuf::from(f)))
            })
            .and_then(|(ours, file)| ours.then_some(file))
        else {
            return Box::pin(fut);
        };
        tracing::warn!(component = name, trigger = %trigger.display(), "{VAR}: this component will panic when the trigger file exists");
        Box::pin(async move {
            let armed = async {
                while !trigger.exists() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::select! {
                result = fut => result,
                () = armed => panic!("{VAR}: {name} panics on purpose ({} exists)", trigger.display()),
            }
        })
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

    #[tokio::test]
    async fn a_panicking_component_is_failed_named_and_starts_shutdown() {
        let s = Supervisor::new(Health::new(Duration::from_secs(10)));
        let stop = s.shutdown();
        let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&drained);
        s.spawn("checkpointer", async move {
            stop.cancelled().await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        let reader = s.spawn("reader", async {
            tokio::task::yield_now().await;
            panic!("index out of bounds: {}", 7)
        });
        assert!(s.wait(Duration::from_secs(5)).await);
        reader
            .await
            .expect("the panic is caught, not passed to the join handle");
        assert!(s.shutdown().is_cancelled());
        assert!(
            drained.load(std::sync::atomic::Ordering::SeqCst),
            "the others drain"
        );
        assert_eq!(
            s.panicked(),
            Some(Panicked {
                component: "reader",
                message: "index out of bounds: 7".into()
            })
        );
        assert_eq!(
            s.failure().as_deref(),
            Some("reader: panicked: index out of bounds: 7")
        );
        let report = s.health().report();
        assert_eq!(report.status, crate::health::Status::Critical);
        assert_eq!(report.components["reader"].state, "failed");
        assert_eq!(
            report.components["reader"].error.as_deref(),
            Some("panicked: index out of bounds: 7")
        );
        assert_eq!(report.components["checkpointer"].state, "stopped");
    }

    #[test]
    fn panic_messages_of_either_payload_type_are_read() {
        assert_eq!(panic_message(&"static"), "static");
        assert_eq!(panic_message(&String::from("owned")), "owned");
        assert_eq!(panic_message(&42u8), "a panic without a message");
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
