//! The verdict: from what a run observed to named checks, and the `diagtool.soak/v1` document.
//!
//! Pure functions over plain inputs ([`Evidence`]), so each check is tested on synthetic figures.
//! The checks, in order: `completed` (not cut short by Ctrl-C), `delivery` (every written line arrived intact, within the profile's
//! missing ratio), `duplicates`, `receiver` (no body Loki would refuse), `task_growth` (the growth
//! analysis of `diagtool watch`, over the samples after the warm-up: no site `leak` or `growing`),
//! `rss_growth` and `fd_growth` (robust slopes after the warm-up, within the limits; for fds, a
//! rise of a single descriptor is not growth), `health` (no
//! `/health` answer was 503), `sampling` (few failed samples), `shipper_exit` (the shipper ran
//! the whole time and stopped cleanly on SIGTERM), and `heap_growth` (no allocation site leaks;
//! see [`super::heap`]). The run passes when every check does.

use crate::analysis::{self, Options, theil_sen};
use crate::model::{SOAK_SCHEMA, Snapshot, SoakLeak, SoakReport, Verdict};

use super::delivery::DeliveryReport;
use super::profile::Limits;

/// `/health` answers over the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthTally {
    /// 200 with status `ok`.
    pub ok: u64,
    /// 200 with status `degraded`.
    pub degraded: u64,
    /// 503 (a component stopped, or a leak with `fail_on_task_leak`).
    pub critical: u64,
    /// Anything else: unreachable, timed out, unreadable.
    pub errors: u64,
}

/// How the shipper ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipperEnd {
    /// Exited with this code after SIGTERM, within its shutdown timeout.
    Stopped(i32),
    /// Did not stop within its shutdown timeout and was killed.
    Killed,
    /// Ended by itself during the run (code, or signal as a negative number).
    Died(i32),
}

/// Everything a run observed.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The profile's name.
    pub profile: String,
    /// Seconds the generator wrote for.
    pub duration_s: f64,
    /// Delivery figures.
    pub delivery: DeliveryReport,
    /// Seconds the drain took, or `None` when lines were still missing at the drain timeout.
    pub drained_in_s: Option<f64>,
    /// Bodies the strict receiver refused.
    pub rejected_bodies: u64,
    /// The snapshots of `/debug/tasks`, in order.
    pub snapshots: Vec<Snapshot>,
    /// Failed snapshot requests.
    pub snapshot_errors: u64,
    /// `/health` answers.
    pub health: HealthTally,
    /// `/debug/pprof/heap` answers.
    pub heap: super::heap::HeapTally,
    /// How the shipper ended.
    pub shipper: ShipperEnd,
    /// Seconds into the run when a signal cut it short, if one did.
    pub interrupted_at_s: Option<f64>,
    /// The signal that did (`Ctrl-C`, `SIGTERM`).
    pub interrupted_by: String,
}

/// One named check and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// Short name (the JUnit test case).
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// What was measured, against what limit, in one sentence.
    pub detail: String,
}

/// The checks and the document.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// Every check, in a fixed order.
    pub checks: Vec<CheckResult>,
    /// The growth analysis over the samples after the warm-up.
    pub analysis: analysis::Analysis,
    /// The `diagtool.soak/v1` document.
    pub report: SoakReport,
}

impl Judgement {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.report.passed
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Descriptors that must have been added over the judged window before a slope counts as growth:
/// one more pooled connection after a retry steepens a short window's slope but is no leak.
const MIN_FD_RISE: i64 = 2;

/// The robust slope (Theil-Sen, per minute) of a figure over snapshots.
fn slope_per_min(snaps: &[&Snapshot], figure: impl Fn(&Snapshot) -> f64) -> f64 {
    let Some(first) = snaps.first() else {
        return 0.0;
    };
    let x: Vec<f64> = snaps
        .iter()
        .map(|s| s.taken_at_ms.saturating_sub(first.taken_at_ms) as f64 / 60_000.0)
        .collect();
    let y: Vec<f64> = snaps.iter().map(|s| figure(s)).collect();
    if x.len() < 2 {
        return 0.0;
    }
    round2(theil_sen(&x, &y))
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The snapshots taken `warmup_s` or more after the first one (all of them when fewer than 3
/// would remain).
fn after_warmup(snapshots: &[Snapshot], warmup_s: f64) -> Vec<&Snapshot> {
    let Some(first) = snapshots.first() else {
        return Vec::new();
    };
    let cut = first.taken_at_ms + (warmup_s * 1000.0) as u64;
    let kept: Vec<&Snapshot> = snapshots.iter().filter(|s| s.taken_at_ms >= cut).collect();
    if kept.len() >= 3 {
        kept
    } else {
        snapshots.iter().collect()
    }
}

/// Judges a run against the profile's limits.
pub fn judge(limits: &Limits, evidence: &Evidence) -> Judgement {
    let mut checks = Vec::new();
    let mut check = |name: &'static str, passed: bool, detail: String| {
        checks.push(CheckResult {
            name,
            passed,
            detail,
        })
    };

    check(
        "completed",
        evidence.interrupted_at_s.is_none(),
        match evidence.interrupted_at_s {
            None => format!(
                "ran the whole profile ({:.0}s of writing)",
                evidence.duration_s
            ),
            Some(s) => format!("interrupted by {} after {s:.0}s", evidence.interrupted_by),
        },
    );
    let d = &evidence.delivery;
    let allowed_missing = (limits.max_missing_ratio * d.written as f64).floor() as u64;
    let examples = if d.examples.is_empty() {
        String::new()
    } else {
        format!(" (e.g. {})", d.examples.join("; "))
    };
    let drain = match evidence.drained_in_s {
        Some(s) => format!("drained in {s:.1}s"),
        None => "not drained by the drain timeout".to_owned(),
    };
    check(
        "delivery",
        d.missing <= allowed_missing && d.corrupted == 0 && d.foreign == 0,
        format!(
            "{} of {} lines delivered, {} missing (allowed {allowed_missing}), {} corrupted, {} \
             foreign; {drain}{examples}",
            d.delivered, d.written, d.missing, d.corrupted, d.foreign
        ),
    );
    let allowed_dups = (limits.max_duplicate_ratio * d.written as f64).floor() as u64;
    check(
        "duplicates",
        d.duplicates <= allowed_dups,
        format!("{} duplicate lines (allowed {allowed_dups})", d.duplicates),
    );
    check(
        "receiver",
        evidence.rejected_bodies == 0,
        format!(
            "{} push bodies refused as Loki would refuse them",
            evidence.rejected_bodies
        ),
    );

    let warmup_s = limits.warmup.as_secs_f64();
    let judged = after_warmup(&evidence.snapshots, warmup_s);
    let owned: Vec<Snapshot> = judged.iter().map(|s| (*s).clone()).collect();
    let options = Options {
        threshold_per_min: limits.tasks_growth_per_min,
        ..Options::default()
    };
    let analysis = analysis::analyze(&owned, &options);
    let growing: Vec<&analysis::SiteGrowth> = analysis
        .sites
        .iter()
        .filter(|s| matches!(s.row.verdict, Verdict::Leak | Verdict::Growing))
        .collect();
    let mut leaks: Vec<SoakLeak> = growing
        .iter()
        .map(|s| SoakLeak {
            site: s.row.site.clone(),
            growth_per_min: s.row.growth_per_min,
        })
        .collect();
    let enough = analysis.analysed >= 3;
    let detail = if !enough {
        format!(
            "only {} snapshots of /debug/tasks to judge; at least 3 are needed",
            analysis.analysed
        )
    } else if growing.is_empty() {
        format!(
            "no spawn site grows beyond {}/min over {} samples ({:.0}s); all tasks {} -> {}",
            limits.tasks_growth_per_min,
            analysis.analysed,
            analysis.span_s,
            analysis.total.first,
            analysis.total.last
        )
    } else {
        let sites: Vec<String> = growing
            .iter()
            .map(|s| {
                let step = s
                    .row
                    .step
                    .as_ref()
                    .map(|st| format!(" {st}"))
                    .unwrap_or_default();
                format!(
                    "{} {} at {:.1}/min{step}, live {} ({})",
                    s.row.site, s.row.verdict, s.row.growth_per_min, s.row.live, s.why
                )
            })
            .collect();
        format!("tasks grow: {}", sites.join("; "))
    };
    check("task_growth", enough && growing.is_empty(), detail);

    let rss = slope_per_min(&judged, |s| s.process.rss_bytes as f64 / MIB);
    check(
        "rss_growth",
        enough && rss <= limits.rss_growth_mib_per_min,
        format!(
            "RSS grows {rss:.2} MiB/min after the warm-up (limit {})",
            limits.rss_growth_mib_per_min
        ),
    );
    let fds = slope_per_min(&judged, |s| s.process.open_fds as f64);
    let fd_rise = match (judged.first(), judged.last()) {
        (Some(a), Some(b)) => b.process.open_fds as i64 - a.process.open_fds as i64,
        _ => 0,
    };
    check(
        "fd_growth",
        enough && (fds <= limits.fds_growth_per_min || fd_rise < MIN_FD_RISE),
        format!(
            "open fds grow {fds:.2}/min after the warm-up, {fd_rise:+} in all (limit {}/min)",
            limits.fds_growth_per_min
        ),
    );

    let h = &evidence.health;
    check(
        "health",
        h.critical == 0,
        format!(
            "/health answered ok {}, degraded {}, 503 {} times ({} unanswered)",
            h.ok, h.degraded, h.critical, h.errors
        ),
    );
    let sample_errors = evidence.snapshot_errors + h.errors;
    check(
        "sampling",
        sample_errors <= limits.max_sample_errors,
        format!(
            "{sample_errors} failed samples of /debug/tasks and /health (allowed {})",
            limits.max_sample_errors
        ),
    );
    let (ok, detail) = match &evidence.shipper {
        ShipperEnd::Stopped(0) => (true, "stopped cleanly on SIGTERM".to_owned()),
        ShipperEnd::Stopped(code) => (false, format!("exited {code} after SIGTERM")),
        ShipperEnd::Killed => (
            false,
            "did not stop within its shutdown timeout after SIGTERM; killed".to_owned(),
        ),
        ShipperEnd::Died(code) => (false, format!("ended by itself during the run ({code})")),
    };
    check("shipper_exit", ok, detail);
    let heap = super::heap::check(limits, &evidence.heap);
    check("heap_growth", heap.passed, heap.detail);
    leaks.extend(heap.leaks);

    let failures: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let report = SoakReport {
        schema: SOAK_SCHEMA.to_owned(),
        profile: evidence.profile.clone(),
        passed: failures.is_empty(),
        duration_s: round2(evidence.duration_s),
        lines_written: d.written,
        lines_delivered: d.delivered,
        duplicates: d.duplicates,
        tasks_growth_per_min: analysis.total.growth_per_min,
        rss_growth_mib_per_min: rss,
        fds_growth_per_min: fds,
        leaks,
        failures,
        long_polls: evidence.snapshots.last().and_then(|s| s.runtime.long_polls),
    };
    Judgement {
        checks,
        analysis,
        report,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{ProcessStats, SNAPSHOT_SCHEMA, SiteStats, TaskTotals};

    fn limits() -> Limits {
        Limits {
            tasks_growth_per_min: 1.0,
            rss_growth_mib_per_min: 2.0,
            fds_growth_per_min: 2.0,
            max_missing_ratio: 0.0,
            max_duplicate_ratio: 0.0,
            max_sample_errors: 2,
            require_heap: false,
            warmup: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }

    /// 21 samples 3 s apart; `leak` adds 4 tasks every 6 s at a leaklab site; RSS and fds grow by
    /// the given amounts per sample.
    fn snapshots(leak: bool, rss_step: u64, fd_step: u64) -> Vec<Snapshot> {
        (0..21u64)
            .map(|i| {
                let mut sites = vec![SiteStats {
                    site: "shipper/src/source/mod.rs:40:9".into(),
                    live: 5 + (i % 2),
                    spawned_total: 100 + i,
                    oldest_age_s: 1.0 + 3.0 * i as f64,
                    median_age_s: 1.0,
                    ..Default::default()
                }];
                if leak && i >= 1 {
                    let live = 4 * i.div_ceil(2);
                    sites.push(SiteStats {
                        site: "shipper/src/leaklab.rs:88:17".into(),
                        live,
                        spawned_total: live,
                        oldest_age_s: 3.0 * i as f64 - 2.0,
                        median_age_s: 1.5 * i as f64,
                        names: vec!["leak-poll".into()],
                        ..Default::default()
                    });
                }
                sites.sort_by_key(|s| std::cmp::Reverse(s.live));
                let live = sites.iter().map(|s| s.live).sum();
                Snapshot {
                    schema: SNAPSHOT_SCHEMA.into(),
                    service: "shipper".into(),
                    taken_at_ms: 1_000_000 + 3000 * i,
                    uptime_s: 2.0 + 3.0 * i as f64,
                    process: ProcessStats {
                        pid: 7,
                        rss_bytes: 20 * (1 << 20) + rss_step * i,
                        open_fds: 30 + fd_step * i,
                        threads: 4,
                    },
                    runtime: Default::default(),
                    tasks: TaskTotals {
                        live,
                        ..Default::default()
                    },
                    sites,
                    tasks_detail: None,
                }
            })
            .collect()
    }

    fn evidence(snapshots: Vec<Snapshot>) -> Evidence {
        Evidence {
            profile: "steady".into(),
            duration_s: 60.0,
            delivery: DeliveryReport {
                written: 1000,
                delivered: 1000,
                ..Default::default()
            },
            drained_in_s: Some(1.2),
            rejected_bodies: 0,
            snapshots,
            snapshot_errors: 0,
            health: HealthTally {
                ok: 21,
                ..Default::default()
            },
            heap: Default::default(),
            shipper: ShipperEnd::Stopped(0),
            interrupted_at_s: None,
            interrupted_by: String::new(),
        }
    }

    fn failed(j: &Judgement) -> Vec<&'static str> {
        j.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_clean_run_passes_every_check() {
        let j = judge(&limits(), &evidence(snapshots(false, 0, 0)));
        assert!(j.passed(), "{:#?}", j.checks);
        assert_eq!(j.checks.len(), 11);
        assert!(j.report.failures.is_empty() && j.report.leaks.is_empty());
        assert_eq!(j.report.lines_delivered, 1000);
        assert_eq!(j.report.schema, SOAK_SCHEMA);
    }

    #[test]
    fn the_long_polls_of_the_last_snapshot_are_reported() {
        let mut snaps = snapshots(false, 0, 0);
        assert_eq!(
            judge(&limits(), &evidence(snaps.clone())).report.long_polls,
            None
        );
        if let Some(last) = snaps.last_mut() {
            last.runtime.long_polls = Some(3);
        }
        let j = judge(&limits(), &evidence(snaps));
        assert_eq!(j.report.long_polls, Some(3));
        assert!(
            summary_has_long_polls(&j),
            "{}",
            super::super::summary::table(&j)
        );
    }

    fn summary_has_long_polls(j: &Judgement) -> bool {
        super::super::summary::table(j)
            .contains("polls of 10 ms or more in the shipper's runtime: 3")
    }

    #[test]
    fn a_leak_fails_and_names_the_leaklab_site() {
        let j = judge(&limits(), &evidence(snapshots(true, 0, 0)));
        assert_eq!(failed(&j), ["task_growth"]);
        assert_eq!(j.report.leaks.len(), 1);
        assert!(j.report.leaks[0].site.contains("leaklab"));
        assert!(
            j.report.leaks[0].growth_per_min > 30.0,
            "{:?}",
            j.report.leaks
        );
        assert!(j.report.failures[0].contains("shipper/src/leaklab.rs:88:17"));
        assert!(!j.report.passed);
    }

    #[test]
    fn missing_lines_fail_delivery_with_examples() {
        let mut e = evidence(snapshots(false, 0, 0));
        e.delivery.delivered = 997;
        e.delivery.missing = 3;
        e.delivery.examples = vec!["line 0:5 missing".into()];
        e.drained_in_s = None;
        let j = judge(&limits(), &e);
        assert_eq!(failed(&j), ["delivery"]);
        assert!(
            j.report.failures[0].contains("3 missing"),
            "{:?}",
            j.report.failures
        );
        assert!(j.report.failures[0].contains("line 0:5 missing"));
        assert!(j.report.failures[0].contains("not drained"));
        // A profile that tolerates 1% missing (copytruncate's race) passes the same run.
        let tolerant = Limits {
            max_missing_ratio: 0.01,
            ..limits()
        };
        assert!(judge(&tolerant, &e).passed());
    }

    #[test]
    fn corrupted_foreign_duplicates_and_rejected_bodies_fail() {
        let mut e = evidence(snapshots(false, 0, 0));
        e.delivery.corrupted = 1;
        e.delivery.duplicates = 4;
        e.rejected_bodies = 2;
        assert_eq!(
            failed(&judge(&limits(), &e)),
            ["delivery", "duplicates", "receiver"]
        );
        let mut e = evidence(snapshots(false, 0, 0));
        e.delivery.foreign = 1;
        assert_eq!(failed(&judge(&limits(), &e)), ["delivery"]);
    }

    #[test]
    fn rss_and_fd_growth_beyond_the_limits_fail() {
        // 1 MiB every 3 s is 20 MiB/min; 1 fd every 3 s is 20/min.
        let j = judge(&limits(), &evidence(snapshots(false, 1 << 20, 1)));
        assert_eq!(failed(&j), ["rss_growth", "fd_growth"]);
        assert!((j.report.rss_growth_mib_per_min - 20.0).abs() < 0.01);
        assert!((j.report.fds_growth_per_min - 20.0).abs() < 0.01);
    }

    #[test]
    fn one_more_descriptor_late_in_a_short_window_is_not_growth() {
        let mut snaps = snapshots(false, 0, 0);
        for s in snaps.iter_mut().skip(12) {
            s.process.open_fds += 1;
        }
        let tight = Limits {
            fds_growth_per_min: 0.5,
            ..limits()
        };
        let j = judge(&tight, &evidence(snaps.clone()));
        let slope = j.report.fds_growth_per_min;
        assert!(slope > 0.5, "the slope alone ({slope}) would fail");
        assert!(j.passed(), "{:#?}", j.checks);
        for s in snaps.iter_mut().skip(16) {
            s.process.open_fds += 1;
        }
        assert_eq!(failed(&judge(&tight, &evidence(snaps))), ["fd_growth"]);
    }

    #[test]
    fn growth_during_the_warmup_only_is_ignored() {
        let mut snaps = snapshots(false, 0, 0);
        // Memory and fds climb for the first 9 s, then stay.
        for (i, s) in snaps.iter_mut().enumerate() {
            let i = i.min(3) as u64;
            s.process.rss_bytes += i * 8 * (1 << 20);
            s.process.open_fds += i * 10;
        }
        let j = judge(&limits(), &evidence(snaps));
        assert!(j.passed(), "{:#?}", j.checks);
        assert_eq!(j.report.rss_growth_mib_per_min, 0.0);
    }

    #[test]
    fn health_sampling_and_shipper_end_are_checked() {
        let mut e = evidence(snapshots(false, 0, 0));
        e.health.critical = 1;
        e.health.errors = 2;
        e.snapshot_errors = 1;
        e.shipper = ShipperEnd::Killed;
        let j = judge(&limits(), &e);
        assert_eq!(failed(&j), ["health", "sampling", "shipper_exit"]);
        let mut e = evidence(snapshots(false, 0, 0));
        e.shipper = ShipperEnd::Died(1);
        let j = judge(&limits(), &e);
        assert!(
            j.report.failures[0].contains("ended by itself"),
            "{:?}",
            j.report.failures
        );
        let mut e = evidence(snapshots(false, 0, 0));
        e.interrupted_at_s = Some(12.0);
        e.interrupted_by = "Ctrl-C".into();
        let j = judge(&limits(), &e);
        assert_eq!(failed(&j), ["completed"]);
        assert!(j.report.failures[0].contains("Ctrl-C"));
    }

    #[test]
    fn too_few_samples_cannot_pass() {
        let j = judge(&limits(), &evidence(snapshots(false, 0, 0)[..2].to_vec()));
        assert!(failed(&j).contains(&"task_growth"));
        assert!(!j.passed());
    }
}
