//! From a sequence of snapshots to one time series per spawn site.
//!
//! The time axis is each snapshot's `taken_at_ms` (the target's clock, not ours), relative to the
//! first sample of the segment. A restart of the target (its `uptime_s`, or its clock, going
//! backwards) ends a segment: counts from two processes are not one series, so the analysis looks at
//! the samples since the last restart and reports the restarts it skipped. Within a segment every
//! site has one point per sample; a site absent from a sample (not yet spawned, or all its tasks
//! ended) counts 0 there, which covers sites that appear late or vanish.

use std::collections::BTreeMap;

use crate::{Restart, Snapshot};

/// One sample of one site.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Seconds since the first sample of the segment, by the target's clock.
    pub t_s: f64,
    /// Live tasks from the site.
    pub live: u64,
    /// Age of the site's oldest live task, in seconds (0 when none or unknown).
    pub oldest_age_s: f64,
    /// Median age of the site's live tasks, in seconds (0 when none or unknown).
    pub median_age_s: f64,
}

/// A site's points, one per sample of the segment, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteSeries {
    /// The spawn site.
    pub site: String,
    /// One point per sample.
    pub points: Vec<Point>,
}

/// Finds the restarts in `snapshots` and returns them with the index where the last segment starts.
pub fn split_at_restarts(snapshots: &[Snapshot]) -> (Vec<Restart>, usize) {
    let mut restarts = Vec::new();
    let mut start = 0;
    for (i, pair) in snapshots.windows(2).enumerate() {
        let (before, after) = (&pair[0], &pair[1]);
        if after.uptime_s < before.uptime_s || after.taken_at_ms < before.taken_at_ms {
            restarts.push(Restart {
                sample: (i + 1) as u64,
                taken_at_ms: after.taken_at_ms,
                uptime_s: after.uptime_s,
            });
            start = i + 1;
        }
    }
    (restarts, start)
}

/// Seconds of each sample since the first, by the target's clock.
pub fn times(segment: &[Snapshot]) -> Vec<f64> {
    let origin = segment.first().map_or(0, |s| s.taken_at_ms);
    segment
        .iter()
        .map(|s| s.taken_at_ms.saturating_sub(origin) as f64 / 1000.0)
        .collect()
}

/// Builds one series per site seen anywhere in `segment` (a run of samples without restart).
pub fn site_series(segment: &[Snapshot]) -> Vec<SiteSeries> {
    let t = times(segment);
    let mut by_site: BTreeMap<&str, Vec<Point>> = BTreeMap::new();
    for snap in segment {
        for site in &snap.sites {
            by_site.entry(site.site.as_str()).or_default();
        }
    }
    for (i, snap) in segment.iter().enumerate() {
        let here: BTreeMap<&str, &crate::SiteStats> =
            snap.sites.iter().map(|s| (s.site.as_str(), s)).collect();
        for (site, points) in by_site.iter_mut() {
            let found = here.get(site);
            points.push(Point {
                t_s: t[i],
                live: found.map_or(0, |s| s.live),
                oldest_age_s: found.map_or(0.0, |s| s.oldest_age_s),
                median_age_s: found.map_or(0.0, |s| s.median_age_s),
            });
        }
    }
    by_site
        .into_iter()
        .map(|(site, points)| SiteSeries {
            site: site.to_owned(),
            points,
        })
        .collect()
}
