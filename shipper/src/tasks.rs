//! The task-growth tracker: the `tasks` section of `/health`.
//!
//! An owned task samples the probe's registry every [`TaskGrowthSettings::sample_every`] and hands
//! each snapshot to [`TaskGrowth::observe`], which is pure (it reads time only from the snapshots'
//! `taken_at_ms`), so the judging is tested on synthetic series. The first samples are a warm-up
//! (start-up spawns its components and connection pools); the sample that ends it is the baseline.
//! Growth is judged by [`diagtool_model::analysis`] (the same fit and rules as `diagtool watch`) over the
//! samples of the last `window`, never before the baseline.
//!
//! Invariant: growth alone makes `/health` `degraded` (200), never `critical` (503), unless the
//! operator set `health.fail_on_task_leak`. Restarting a leaking process hides the leak; reporting
//! it with the site that grows lets someone fix it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use diagtool_model::analysis::{Options, analyze};
use diagtool_model::{Snapshot, Verdict};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::health::{Status, TasksProvider, TasksReport};

/// Sites listed in `top_sites`, at most.
pub const TOP_SITES: usize = 5;

/// How the tracker samples and judges.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskGrowthSettings {
    /// Growth (tasks per minute, robust fit) from which a site makes the status `degraded`
    /// (`health.task_growth_warn_per_min`, default 10).
    pub warn_per_min: f64,
    /// Whether a growing site makes `/health` answer 503 (`health.fail_on_task_leak`, default off).
    pub fail_on_leak: bool,
    /// Samples before the baseline (`health.task_warmup`, default 5 s).
    pub warmup: Duration,
    /// Samples judged: those of the last `window` (`health.task_window`, default 60 s).
    pub window: Duration,
    /// Time between samples (1 s).
    pub sample_every: Duration,
    /// Samples after the warm-up before growth is judged (5): with fewer, one connection task
    /// alive at the wrong moment reads as a fast slope.
    pub min_samples: usize,
}

impl Default for TaskGrowthSettings {
    /// 10 tasks/min, no 503, a 5 s warm-up, a 60 s window, a sample a second, 5 samples before
    /// judging: a leak of 4 tasks a second shows about 10 s after start.
    fn default() -> Self {
        TaskGrowthSettings {
            warn_per_min: 10.0,
            fail_on_leak: false,
            warmup: Duration::from_secs(5),
            window: Duration::from_secs(60),
            sample_every: Duration::from_secs(1),
            min_samples: 5,
        }
    }
}

/// One entry of `top_sites`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopSite {
    /// `path:line:col` of the spawn call.
    pub site: String,
    /// Tasks from the site alive at the last sample.
    pub live: u64,
    /// Least-squares growth over the window, tasks per minute.
    pub growth_per_min: f64,
    /// The analysis' verdict for the site (`leak`, `growing`, `stable`, `shrinking`).
    pub verdict: Verdict,
}

/// The `tasks` section of `/health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TasksSection {
    /// Live tasks at the end of the warm-up (until then: the current count).
    pub baseline: u64,
    /// Live tasks at the last sample.
    pub current: u64,
    /// Growth of all live tasks over the window, tasks per minute (least squares).
    pub growth_per_min: f64,
    /// `ok`, or `degraded` when a site grows faster than the warning threshold (`critical`
    /// instead when `fail_on_task_leak` is set).
    pub status: Status,
    /// The fastest growing sites, fastest first (only sites that grow).
    pub top_sites: Vec<TopSite>,
    /// Whether the tracker is still in its warm-up or has too few samples since (no verdict yet).
    pub warming_up: bool,
    /// Samples judged.
    pub samples: usize,
    /// The threshold used, tasks per minute.
    pub warn_per_min: f64,
}

#[derive(Debug)]
struct State {
    first_ms: Option<u64>,
    baseline: Option<u64>,
    samples: VecDeque<Snapshot>,
    section: TasksSection,
}

/// The tracker; cheap to clone. Install it with [`crate::health::Health::set_tasks_provider`].
#[derive(Debug, Clone)]
pub struct TaskGrowth {
    settings: Arc<TaskGrowthSettings>,
    state: Arc<Mutex<State>>,
}

impl TaskGrowth {
    /// A tracker with no sample yet (status `ok`, warming up).
    pub fn new(settings: TaskGrowthSettings) -> Self {
        let section = TasksSection {
            baseline: 0,
            current: 0,
            growth_per_min: 0.0,
            status: Status::Ok,
            top_sites: Vec::new(),
            warming_up: true,
            samples: 0,
            warn_per_min: settings.warn_per_min,
        };
        TaskGrowth {
            settings: Arc::new(settings),
            state: Arc::new(Mutex::new(State {
                first_ms: None,
                baseline: None,
                samples: VecDeque::new(),
                section,
            })),
        }
    }

    /// The section as of the last sample.
    pub fn section(&self) -> TasksSection {
        self.lock().section.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one sample into account and recomputes the section.
    pub fn observe(&self, snap: Snapshot) {
        let s = &self.settings;
        let mut st = self.lock();
        let now = snap.taken_at_ms;
        let live = snap.tasks.live;
        let first = *st.first_ms.get_or_insert(now);
        let warm = now.saturating_sub(first) >= s.warmup.as_millis() as u64;
        if !warm {
            st.section.baseline = live;
            st.section.current = live;
            return;
        }
        if st.baseline.is_none() {
            st.baseline = Some(live);
            st.samples.clear();
        }
        st.samples.push_back(snap);
        let oldest_kept = now.saturating_sub(s.window.as_millis() as u64);
        while st.samples.len() > 2
            && st
                .samples
                .front()
                .is_some_and(|f| f.taken_at_ms < oldest_kept)
        {
            st.samples.pop_front();
        }
        if st.samples.len() < s.min_samples {
            st.section.current = live;
            st.section.samples = st.samples.len();
            return;
        }
        let samples: Vec<Snapshot> = st.samples.iter().cloned().collect();
        let analysis = analyze(
            &samples,
            &Options {
                threshold_per_min: s.warn_per_min,
                ..Options::default()
            },
        );
        let growing = |v: Verdict| matches!(v, Verdict::Leak | Verdict::Growing);
        let alarm = analysis
            .sites
            .iter()
            .any(|g| growing(g.row.verdict) && g.row.robust_growth_per_min > 0.0);
        let status = match (alarm, s.fail_on_leak) {
            (false, _) => Status::Ok,
            (true, false) => Status::Degraded,
            (true, true) => Status::Critical,
        };
        let top_sites = analysis
            .sites
            .iter()
            .filter(|g| g.row.growth_per_min > 0.0 && g.row.delta > 0)
            .take(TOP_SITES)
            .map(|g| TopSite {
                site: g.row.site.clone(),
                live: g.row.live,
                growth_per_min: g.row.growth_per_min,
                verdict: g.row.verdict,
            })
            .collect();
        st.section = TasksSection {
            baseline: st.baseline.unwrap_or(live),
            current: live,
            growth_per_min: analysis.total.growth_per_min,
            status,
            top_sites,
            warming_up: false,
            samples: samples.len(),
            warn_per_min: s.warn_per_min,
        };
    }

    /// Samples `probe` every `sample_every` until `stop` fires. Run it under the supervisor.
    pub async fn run(
        self,
        probe: diagtool_probe::Probe,
        stop: CancellationToken,
        beat: impl Fn() + Send + Sync + 'static,
    ) -> anyhow::Result<()> {
        let mut ticker = tokio::time::interval(self.settings.sample_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = ticker.tick() => {}
            }
            beat();
            self.observe(probe.snapshot(false));
        }
    }
}

impl TasksProvider for TaskGrowth {
    fn tasks(&self) -> TasksReport {
        let section = self.section();
        TasksReport {
            status: section.status,
            body: serde_json::to_value(&section).unwrap_or_else(
                |e| serde_json::json!({"status": "ok", "error": format!("cannot encode: {e}")}),
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use diagtool_model::{SNAPSHOT_SCHEMA, SiteStats, TaskTotals};

    /// A snapshot at `t_s` with `(site, live, oldest_age_s)` per site.
    fn snap(t_s: f64, sites: &[(&str, u64, f64)]) -> Snapshot {
        let live = sites.iter().map(|s| s.1).sum();
        Snapshot {
            schema: SNAPSHOT_SCHEMA.into(),
            service: "shipper".into(),
            taken_at_ms: 1_000_000 + (t_s * 1000.0) as u64,
            uptime_s: t_s + 1.0,
            process: Default::default(),
            runtime: Default::default(),
            tasks: TaskTotals {
                live,
                spawned_total: live,
                terminated_total: 0,
            },
            sites: sites
                .iter()
                .map(|(site, live, age)| SiteStats {
                    site: (*site).into(),
                    live: *live,
                    spawned_total: *live,
                    oldest_age_s: *age,
                    median_age_s: age / 2.0,
                    ..Default::default()
                })
                .collect(),
            tasks_detail: None,
        }
    }

    const LEAK: &str = "shipper/src/leaklab.rs:231:13";
    const STEADY: &str = "shipper/src/lib.rs:80:9";

    /// Feeds `seconds` of one sample a second: a steady site of 8 tasks and, with `leak_per_s`,
    /// a site leaking that many tasks per second.
    fn feed(tracker: &TaskGrowth, seconds: u32, leak_per_s: u64) {
        feed_from(tracker, 0, seconds, leak_per_s);
    }

    /// [`feed`] from second `from` to second `to`.
    fn feed_from(tracker: &TaskGrowth, from: u32, to: u32, leak_per_s: u64) {
        for t in from..=to {
            let t = f64::from(t);
            let mut sites = vec![(STEADY, 8, t)];
            if leak_per_s > 0 {
                sites.push((LEAK, leak_per_s * t as u64, t));
            }
            tracker.observe(snap(t, &sites));
        }
    }

    #[test]
    fn a_steady_process_is_ok_after_the_warm_up() {
        let tracker = TaskGrowth::new(TaskGrowthSettings::default());
        feed(&tracker, 30, 0);
        let s = tracker.section();
        assert_eq!(s.status, Status::Ok);
        assert!(!s.warming_up);
        assert_eq!((s.baseline, s.current), (8, 8));
        assert!(s.top_sites.is_empty(), "{:?}", s.top_sites);
    }

    #[test]
    fn a_leak_of_four_a_second_is_degraded_within_fifteen_seconds() {
        let tracker = TaskGrowth::new(TaskGrowthSettings::default());
        feed(&tracker, 12, 4);
        let s = tracker.section();
        assert_eq!(s.status, Status::Degraded, "{s:?}");
        assert_eq!(s.top_sites[0].site, LEAK);
        assert!((s.top_sites[0].growth_per_min - 240.0).abs() < 1.0, "{s:?}");
        assert_eq!(
            s.baseline,
            8 + 4 * 5,
            "the baseline is taken at the end of the warm-up"
        );
        assert_eq!(s.current, 8 + 4 * 12);
        assert_eq!(s.top_sites.len(), 1, "the steady site is not listed");
        let report = tracker.tasks();
        assert_eq!(report.status, Status::Degraded);
        assert_eq!(report.body["top_sites"][0]["site"], LEAK);
        assert_eq!(report.body["status"], "degraded");
    }

    #[test]
    fn fail_on_leak_turns_growth_critical() {
        let tracker = TaskGrowth::new(TaskGrowthSettings {
            fail_on_leak: true,
            ..TaskGrowthSettings::default()
        });
        feed(&tracker, 12, 4);
        assert_eq!(tracker.tasks().status, Status::Critical);
    }

    #[test]
    fn nothing_is_judged_during_the_warm_up() {
        let tracker = TaskGrowth::new(TaskGrowthSettings::default());
        feed(&tracker, 4, 50);
        let s = tracker.section();
        assert!(s.warming_up);
        assert_eq!(s.status, Status::Ok);
        assert_eq!(s.current, 8 + 200);
    }

    #[test]
    fn too_few_samples_after_the_warm_up_are_not_judged() {
        let tracker = TaskGrowth::new(TaskGrowthSettings::default());
        // Warm-up ends at 5 s; samples at 5, 6, 7 and 8 s are four, one short of five.
        feed(&tracker, 8, 4);
        let s = tracker.section();
        assert!(s.warming_up, "{s:?}");
        assert_eq!(s.status, Status::Ok);
        feed_from(&tracker, 9, 9, 4);
        assert_eq!(tracker.section().status, Status::Degraded);
    }

    #[test]
    fn growth_under_the_threshold_is_ok() {
        let tracker = TaskGrowth::new(TaskGrowthSettings {
            warn_per_min: 120.0,
            ..TaskGrowthSettings::default()
        });
        // 1 task a second: 60/min, under 120/min.
        feed(&tracker, 30, 1);
        assert_eq!(tracker.section().status, Status::Ok);
    }

    #[test]
    fn a_burst_that_came_and_went_is_ok_and_the_window_forgets_it() {
        let tracker = TaskGrowth::new(TaskGrowthSettings {
            window: Duration::from_secs(20),
            ..TaskGrowthSettings::default()
        });
        for t in 0..=60u32 {
            let burst = if (10..=16).contains(&t) { 40 } else { 0 };
            tracker.observe(snap(
                f64::from(t),
                &[(STEADY, 8, f64::from(t)), ("b.rs:1:1", burst, 1.0)],
            ));
        }
        let s = tracker.section();
        assert_eq!(s.status, Status::Ok, "{s:?}");
        assert!(s.samples <= 21, "only the window is judged: {}", s.samples);
    }
}
