//! Liveness and readiness: component heartbeats, the `/health` document and the `/ready` flag.
//!
//! Every long-lived component beats (at least every 500 ms, also while held by backpressure). A
//! component whose last beat is older than `heartbeat_timeout`, or that failed, is `critical` and
//! `/health` answers 503. The task-growth part of `/health` (the `tasks` section) is provided from
//! outside through [`TasksProvider`]: this module only merges it, so the probe work plugs in
//! without touching the heartbeat logic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Overall or per-component status, as the contract spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy.
    Ok,
    /// Working but something needs a look (task growth).
    Degraded,
    /// A component stopped beating or failed: `/health` answers 503.
    Critical,
}

/// The `tasks` section and its verdict, supplied by the task-growth tracker.
#[derive(Debug, Clone)]
pub struct TasksReport {
    /// Contributes to the overall status (`Critical` only when the operator asked to fail on leaks).
    pub status: Status,
    /// The section as served (`baseline`, `current`, `growth_per_min`, `status`, `top_sites`).
    pub body: serde_json::Value,
}

/// A source of the `tasks` section of `/health`.
pub trait TasksProvider: Send + Sync + std::fmt::Debug {
    /// The current section.
    fn tasks(&self) -> TasksReport;
}

const RUNNING: u8 = 0;
const STOPPED: u8 = 1;
const FAILED: u8 = 2;

#[derive(Debug)]
struct Component {
    last_ms: AtomicU64,
    state: AtomicU8,
    /// Why it failed, when it did.
    error: Mutex<Option<String>>,
    /// Why a running component is degraded (it works, but something needs a look).
    degraded: Mutex<Option<String>>,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    timeout: Duration,
    components: Mutex<BTreeMap<String, Arc<Component>>>,
    ready: AtomicBool,
    stopping: AtomicBool,
    tasks: Mutex<Option<Arc<dyn TasksProvider>>>,
}

/// Shared health state: cheap to clone.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

/// One component in `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentReport {
    /// `ok`, `degraded` (with a [`reason`](Self::reason)) or `critical`.
    pub status: Status,
    /// Why the component is degraded (such as refused credentials), when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Seconds since the last beat.
    pub last_heartbeat_s: f64,
    /// `running`, `stopped` or `failed`.
    pub state: &'static str,
    /// Why it failed (an error, or `panicked: MESSAGE`); absent unless it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `/health` document.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// The worst of the components' and the tasks' status.
    pub status: Status,
    /// Per component.
    pub components: BTreeMap<String, ComponentReport>,
    /// The task-growth section, when a provider is installed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<serde_json::Value>,
}

impl Health {
    /// A health state where components are critical after `timeout` without a beat.
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                start: Instant::now(),
                timeout,
                components: Mutex::new(BTreeMap::new()),
                ready: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                tasks: Mutex::new(None),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.start.elapsed().as_millis() as u64
    }

    fn component(&self, name: &str) -> Arc<Component> {
        let mut map = self
            .inner
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = self.now_ms();
        map.entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Component {
                    last_ms: AtomicU64::new(now),
                    state: AtomicU8::new(RUNNING),
                    error: Mutex::new(None),
                    degraded: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Registers a component and returns its beat function.
    pub fn heartbeat(&self, name: &str) -> impl Fn() + Send + Sync + 'static + use<> {
        let c = self.component(name);
        let h = self.clone();
        move || c.last_ms.store(h.now_ms(), Ordering::Relaxed)
    }

    /// Registers a component and returns its condition setter: `Some(reason)` marks it degraded
    /// (still running, `/health` answers 200 with the reason), `None` clears it.
    pub fn condition(&self, name: &str) -> impl Fn(Option<String>) + Send + Sync + 'static + use<> {
        let c = self.component(name);
        move |reason| *c.degraded.lock().unwrap_or_else(PoisonError::into_inner) = reason
    }

    /// Records that a component ended (`failed` when with an error).
    pub fn ended(&self, name: &str, failed: bool) {
        let c = self.component(name);
        c.state
            .store(if failed { FAILED } else { STOPPED }, Ordering::Relaxed);
    }

    /// Records that a component failed, and why (shown as its `error` in `/health`).
    pub fn failed(&self, name: &str, reason: &str) {
        let c = self.component(name);
        c.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| reason.to_owned());
        c.state.store(FAILED, Ordering::Relaxed);
    }

    /// Sets the readiness flag.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Marks the process as shutting down: not ready, and stopped components are expected.
    pub fn set_stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        self.set_ready(false);
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed) && !self.inner.stopping.load(Ordering::Relaxed)
    }

    /// Installs the task-growth provider (the seam for the probe work).
    pub fn set_tasks_provider(&self, p: Arc<dyn TasksProvider>) {
        *self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(p);
    }

    /// The current `/health` document.
    pub fn report(&self) -> HealthReport {
        let now = self.now_ms();
        let stopping = self.inner.stopping.load(Ordering::Relaxed);
        let mut status = Status::Ok;
        let mut components = BTreeMap::new();
        let map = self
            .inner
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (name, c) in map.iter() {
            let age = now.saturating_sub(c.last_ms.load(Ordering::Relaxed));
            let state = c.state.load(Ordering::Relaxed);
            let reason = c
                .degraded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let st = match state {
                FAILED => Status::Critical,
                STOPPED if !stopping => Status::Critical,
                STOPPED => Status::Ok,
                _ if age > self.inner.timeout.as_millis() as u64 => Status::Critical,
                _ if reason.is_some() => Status::Degraded,
                _ => Status::Ok,
            };
            status = status.max(st);
            components.insert(
                name.clone(),
                ComponentReport {
                    status: st,
                    reason: reason.filter(|_| st == Status::Degraded),
                    last_heartbeat_s: age as f64 / 1000.0,
                    state: match state {
                        FAILED => "failed",
                        STOPPED => "stopped",
                        _ => "running",
                    },
                    error: c
                        .error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone(),
                },
            );
        }
        drop(map);
        let provider = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let tasks = provider.map(|p| {
            let t = p.tasks();
            status = status.max(t.status);
            t.body
        });
        HealthReport {
            status,
            components,
            tasks,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_degraded_component_says_why_until_it_recovers() {
        let h = Health::new(Duration::from_secs(2));
        let beat = h.heartbeat("sink");
        let condition = h.condition("sink");
        beat();
        condition(Some("loki refuses the credentials".into()));
        let r = h.report();
        assert_eq!(r.status, Status::Degraded);
        assert_eq!(r.components["sink"].status, Status::Degraded);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["components"]["sink"]["reason"],
            "loki refuses the credentials"
        );
        condition(None);
        let r = h.report();
        assert_eq!(r.status, Status::Ok);
        assert!(serde_json::to_value(&r).unwrap()["components"]["sink"]["reason"].is_null());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_component_turns_health_critical() {
        let h = Health::new(Duration::from_secs(2));
        let beat_a = h.heartbeat("reader");
        let _beat_b = h.heartbeat("sink");
        assert_eq!(h.report().status, Status::Ok);
        tokio::time::advance(Duration::from_secs(3)).await;
        beat_a();
        let r = h.report();
        assert_eq!(r.status, Status::Critical);
        assert_eq!(r.components["reader"].status, Status::Ok);
        assert_eq!(r.components["sink"].status, Status::Critical);
        assert!(r.components["sink"].last_heartbeat_s >= 3.0);
    }

    #[test]
    fn failed_is_critical_and_stopped_is_fine_while_stopping() {
        let h = Health::new(Duration::from_secs(60));
        let _b = h.heartbeat("a");
        h.ended("a", false);
        assert_eq!(h.report().status, Status::Critical);
        h.set_stopping();
        assert_eq!(h.report().status, Status::Ok);
        h.ended("a", true);
        assert_eq!(h.report().status, Status::Critical);
    }

    #[test]
    fn a_failed_component_says_why_even_while_stopping() {
        let h = Health::new(Duration::from_secs(60));
        let _b = h.heartbeat("reader");
        let _c = h.heartbeat("sink");
        h.failed("reader", "panicked: index out of bounds");
        h.set_stopping();
        h.ended("sink", false);
        let r = h.report();
        assert_eq!(r.status, Status::Critical, "503 until the process is gone");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["components"]["reader"]["state"], "failed");
        assert_eq!(v["components"]["reader"]["status"], "critical");
        assert_eq!(
            v["components"]["reader"]["error"],
            "panicked: index out of bounds"
        );
        assert!(
            v["components"]["sink"].get("error").is_none(),
            "no error key unless it failed: {v}"
        );
    }

    #[derive(Debug)]
    struct Leaky;
    impl TasksProvider for Leaky {
        fn tasks(&self) -> TasksReport {
            TasksReport {
                status: Status::Degraded,
                body: serde_json::json!({"status": "degraded"}),
            }
        }
    }

    #[test]
    fn the_tasks_provider_is_merged() {
        let h = Health::new(Duration::from_secs(60));
        assert!(
            serde_json::to_value(h.report())
                .unwrap()
                .get("tasks")
                .is_none()
        );
        h.set_tasks_provider(Arc::new(Leaky));
        let r = h.report();
        assert_eq!(r.status, Status::Degraded);
        assert_eq!(
            serde_json::to_value(&r).unwrap()["tasks"]["status"],
            "degraded"
        );
        assert!(!h.is_ready());
        h.set_ready(true);
        assert!(h.is_ready());
    }
}
