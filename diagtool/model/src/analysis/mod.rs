//! Growth analysis: from a sequence of snapshots to a verdict per spawn site.
//!
//! Pure functions over [`crate::model`] types: no I/O, no clock, no tokio, so every rule is tested
//! on synthetic series. The time axis is the target's (`taken_at_ms`); a restart of the target starts
//! a new series ([`series`]). Per site, [`judge`] fits the growth per minute by least squares (shown,
//! with R²) and by Theil-Sen (decides, since bursts do not move it), finds the regular step, and
//! combines the [`rules`]: a site whose robust growth beats the threshold is `leak` when its floor
//! rises, and rose more than once (one step is a warm-up as much as a leak), it is still growing at
//! the end of the window and its oldest task is as old as the growth; `stable` when it reached a
//! plateau; else `growing`. Each verdict is a pure function of the samples, so `diagtool report`
//! on a recording agrees with what `watch` printed at its last sample, and a steady leak replayed
//! by prefix goes from `stable`/`growing` to `leak` once and stays there. [`heap`] applies the same
//! judge to in-use heap bytes per allocation site, under a noise floor from the profiler's
//! sampling.

mod diff;
mod fit;
pub mod heap;
pub mod rules;
pub mod series;

pub use diff::diff;
pub use fit::{LineFit, THEIL_SEN_MAX_POINTS, least_squares, theil_sen};
pub use rules::{
    AgeCorroboration, Check, RepeatedRise, RisingFloor, Rules, StepPattern, StillGrowing,
};
pub use series::{Point, SiteSeries, site_series, split_at_restarts};

use crate::{
    Overall, Restart, Snapshot, Verdict, WATCH_SCHEMA, WatchKind, WatchReport, WatchSite,
    WatchTotal,
};

/// The default growth threshold, in tasks per minute.
pub const DEFAULT_THRESHOLD_PER_MIN: f64 = 1.0;

/// What the analysis is tuned with.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Growth (tasks per minute, robust fit) below which a site is `stable`.
    pub threshold_per_min: f64,
    /// The verdict rules.
    pub rules: Rules,
}

impl Default for Options {
    /// [`DEFAULT_THRESHOLD_PER_MIN`] and the default [`Rules`].
    fn default() -> Self {
        Options {
            threshold_per_min: DEFAULT_THRESHOLD_PER_MIN,
            rules: Rules::default(),
        }
    }
}

/// One site's figures and verdict, with the reason for the verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteGrowth {
    /// The figures, as the watch document shows them.
    pub row: WatchSite,
    /// Why the verdict, in a few words with figures.
    pub why: String,
}

/// The analysis of a whole watch.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// Snapshots given, over all segments.
    pub samples: usize,
    /// Snapshots analysed: those since the last restart.
    pub analysed: usize,
    /// Seconds from the first to the last analysed snapshot.
    pub span_s: f64,
    /// Restarts found; the analysis starts after the last one.
    pub restarts: Vec<Restart>,
    /// Live tasks over all sites.
    pub total: WatchTotal,
    /// Per site, largest growth first.
    pub sites: Vec<SiteGrowth>,
    /// Each site's series over the analysed samples (same order as `sites`).
    pub series: Vec<SiteSeries>,
    /// The threshold the verdicts used, in tasks per minute.
    pub threshold_per_min: f64,
}

impl Analysis {
    /// `leak` when any site leaks, else `ok`.
    pub fn verdict(&self) -> Overall {
        if self.sites.iter().any(|s| s.row.verdict == Verdict::Leak) {
            Overall::Leak
        } else {
            Overall::Ok
        }
    }

    /// The `diagtool.watch/v1` document for this analysis.
    pub fn to_report(&self, target: &str, errors: u64) -> WatchReport {
        WatchReport {
            schema: WATCH_SCHEMA.to_owned(),
            kind: WatchKind::Tasks,
            target: target.to_owned(),
            samples: self.samples as u64,
            span_s: round2(self.span_s),
            verdict: self.verdict(),
            total: self.total.clone(),
            sites: self.sites.iter().map(|s| s.row.clone()).collect(),
            errors,
            restarts: self.restarts.clone(),
            threshold_per_min: Some(self.threshold_per_min),
            unreachable: Vec::new(),
        }
    }
}

/// Analyses a sequence of snapshots of one target, in the order they were taken.
///
/// # Examples
/// ```
/// use diagtool_model::analysis::{analyze, Options};
/// use diagtool_model::{Overall, Snapshot, SiteStats, SNAPSHOT_SCHEMA};
/// // 16 more tasks parked every 30 s, never ending.
/// let snaps: Vec<Snapshot> = (0..3u64)
///     .map(|i| {
///         let live = 16 * (i + 1);
///         let site = SiteStats {
///             site: "src/leak.rs:8:5".into(), live, spawned_total: live,
///             oldest_age_s: 30.0 * i as f64 + 1.0, ..Default::default()
///         };
///         Snapshot {
///             schema: SNAPSHOT_SCHEMA.into(), service: "demo".into(),
///             taken_at_ms: 30_000 * i, uptime_s: 30.0 * i as f64 + 1.0,
///             process: Default::default(), runtime: Default::default(),
///             tasks: diagtool_model::TaskTotals { live, ..Default::default() },
///             sites: vec![site], tasks_detail: None,
///         }
///     })
///     .collect();
/// let analysis = analyze(&snaps, &Options::default());
/// assert_eq!(analysis.verdict(), Overall::Leak);
/// assert_eq!(analysis.sites[0].row.step.as_ref().unwrap().to_string(), "+16/30s");
/// ```
pub fn analyze(snapshots: &[Snapshot], options: &Options) -> Analysis {
    let (restarts, start) = split_at_restarts(snapshots);
    let segment = &snapshots[start..];
    let t = series::times(segment);
    let span_s = t.last().copied().unwrap_or(0.0);
    let totals: Vec<f64> = segment.iter().map(|s| s.tasks.live as f64).collect();
    let minutes: Vec<f64> = t.iter().map(|t| t / 60.0).collect();
    let total = WatchTotal {
        first: segment.first().map_or(0, |s| s.tasks.live),
        last: segment.last().map_or(0, |s| s.tasks.live),
        growth_per_min: round2(least_squares(&minutes, &totals).slope),
    };
    let mut judged: Vec<(SiteGrowth, SiteSeries)> = site_series(segment)
        .into_iter()
        .map(|series| (judge(&series, options), series))
        .collect();
    judged.sort_by(|(a, _), (b, _)| {
        b.row
            .growth_per_min
            .total_cmp(&a.row.growth_per_min)
            .then(b.row.live.cmp(&a.row.live))
            .then(a.row.site.cmp(&b.row.site))
    });
    let (sites, series) = judged.into_iter().unzip();
    Analysis {
        samples: snapshots.len(),
        analysed: segment.len(),
        span_s,
        restarts,
        total,
        sites,
        series,
        threshold_per_min: options.threshold_per_min,
    }
}

/// Judges one site's series.
pub fn judge(series: &SiteSeries, options: &Options) -> SiteGrowth {
    let points = &series.points;
    let x: Vec<f64> = points.iter().map(|p| p.t_s / 60.0).collect();
    let y: Vec<f64> = points.iter().map(|p| p.live as f64).collect();
    let fit = least_squares(&x, &y);
    let robust = theil_sen(&x, &y);
    let rules = &options.rules;
    let step = rules.step.detect(points);
    let threshold = options.threshold_per_min;
    let (first, last) = match (points.first(), points.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => {
            return SiteGrowth {
                row: row(series, fit, robust, None, Verdict::Stable),
                why: "no samples".into(),
            };
        }
    };
    let (verdict, why) = if points.len() < 2 {
        (
            Verdict::Stable,
            "one sample: no growth to judge yet".to_owned(),
        )
    } else if robust >= threshold {
        let recent = rules.recent.check(points, step.as_ref());
        let floor = rules.floor.check(points);
        let age = rules.age.check(points);
        let rises = rules.rises.check(points);
        if !recent.ok {
            (Verdict::Stable, recent.reason)
        } else if floor.ok && rises.ok && age.ok && points.len() >= rules.min_samples_for_leak {
            (
                Verdict::Leak,
                format!("{}; {}; {}", floor.reason, recent.reason, age.reason),
            )
        } else if !floor.ok {
            (Verdict::Growing, floor.reason)
        } else if !rises.ok {
            (Verdict::Growing, rises.reason)
        } else if !age.ok {
            (Verdict::Growing, age.reason)
        } else {
            (Verdict::Growing, format!("only {} samples", points.len()))
        }
    } else if robust <= -threshold {
        (
            Verdict::Shrinking,
            format!("{} → {}", first.live, last.live),
        )
    } else {
        (
            Verdict::Stable,
            format!("growth {robust:.1}/min under the threshold {threshold}/min"),
        )
    };
    SiteGrowth {
        row: row(series, fit, robust, step, verdict),
        why,
    }
}

fn row(
    series: &SiteSeries,
    fit: LineFit,
    robust: f64,
    step: Option<crate::Step>,
    verdict: Verdict,
) -> WatchSite {
    let first = series.points.first().map_or(0, |p| p.live);
    let last = series.points.last();
    let live = last.map_or(0, |p| p.live);
    WatchSite {
        site: series.site.clone(),
        live,
        delta: live as i64 - first as i64,
        growth_per_min: round2(fit.slope),
        r2: round2(fit.r2),
        step,
        oldest_age_s: round2(last.map_or(0.0, |p| p.oldest_age_s)),
        verdict,
        robust_growth_per_min: round2(robust),
        instance: None,
        inuse_bytes: None,
        inuse_objects: None,
        function: None,
        stack: Vec::new(),
    }
}

/// Rounds to two decimals, so documents show `32.0`, not `31.999999999999996`.
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests;
