//! The per-site difference between two snapshots (like `go tool pprof -diff_base`).

use std::collections::BTreeMap;

use crate::{DIFF_SCHEMA, DiffTotal, SiteDiff, SiteStats, Snapshot, SnapshotDiff};

/// Compares `new` against `base`, site by site; sites in only one of them count 0 in the other.
///
/// Counter deltas (`spawned`, `terminated`) are the new counters alone when the target restarted
/// in between, since the base counters belong to another process.
///
/// # Examples
/// ```
/// use diagtool_model::analysis::diff;
/// use diagtool_model::{SiteStats, Snapshot, SNAPSHOT_SCHEMA};
/// let snap = |at: u64, live: u64| Snapshot {
///     schema: SNAPSHOT_SCHEMA.into(), service: "s".into(), taken_at_ms: at, uptime_s: at as f64,
///     process: Default::default(), runtime: Default::default(),
///     tasks: diagtool_model::TaskTotals { live, ..Default::default() },
///     sites: vec![SiteStats { site: "a.rs:1:1".into(), live, ..Default::default() }],
///     tasks_detail: None,
/// };
/// let d = diff(&snap(1_000, 4), &snap(31_000, 20));
/// assert_eq!((d.total.delta, d.sites[0].delta, d.span_s), (16, 16, 30.0));
/// ```
pub fn diff(base: &Snapshot, new: &Snapshot) -> SnapshotDiff {
    let restarted = new.uptime_s < base.uptime_s;
    let mut sites: BTreeMap<&str, (Option<&SiteStats>, Option<&SiteStats>)> = BTreeMap::new();
    for s in &base.sites {
        sites.entry(&s.site).or_default().0 = Some(s);
    }
    for s in &new.sites {
        sites.entry(&s.site).or_default().1 = Some(s);
    }
    let mut rows: Vec<SiteDiff> = sites
        .into_iter()
        .map(|(site, (b, n))| {
            let counter = |f: fn(&SiteStats) -> u64| {
                let now = n.map_or(0, f) as i64;
                if restarted {
                    now
                } else {
                    now - b.map_or(0, f) as i64
                }
            };
            let base_live = b.map_or(0, |s| s.live);
            let new_live = n.map_or(0, |s| s.live);
            SiteDiff {
                site: site.to_owned(),
                base_live,
                new_live,
                delta: new_live as i64 - base_live as i64,
                spawned: counter(|s| s.spawned_total),
                terminated: counter(|s| s.terminated_total),
                oldest_age_s: n.map_or(0.0, |s| s.oldest_age_s),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.delta
            .cmp(&a.delta)
            .then(b.new_live.cmp(&a.new_live))
            .then(a.site.cmp(&b.site))
    });
    SnapshotDiff {
        schema: DIFF_SCHEMA.to_owned(),
        base_taken_at_ms: base.taken_at_ms,
        new_taken_at_ms: new.taken_at_ms,
        span_s: (new.taken_at_ms as f64 - base.taken_at_ms as f64) / 1000.0,
        restarted,
        total: DiffTotal {
            base: base.tasks.live,
            new: new.tasks.live,
            delta: new.tasks.live as i64 - base.tasks.live as i64,
        },
        sites: rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SNAPSHOT_SCHEMA, TaskTotals};

    fn snap(at_s: u64, uptime: f64, sites: &[(&str, u64, u64, u64)]) -> Snapshot {
        Snapshot {
            schema: SNAPSHOT_SCHEMA.into(),
            service: "t".into(),
            taken_at_ms: at_s * 1000,
            uptime_s: uptime,
            process: Default::default(),
            runtime: Default::default(),
            tasks: TaskTotals {
                live: sites.iter().map(|s| s.1).sum(),
                ..Default::default()
            },
            sites: sites
                .iter()
                .map(|&(site, live, spawned, terminated)| SiteStats {
                    site: site.into(),
                    live,
                    spawned_total: spawned,
                    terminated_total: terminated,
                    ..Default::default()
                })
                .collect(),
            tasks_detail: None,
        }
    }

    #[test]
    fn sites_in_one_side_only_count_zero_on_the_other_and_growth_sorts_first() {
        let base = snap(
            0,
            10.0,
            &[("gone.rs:1:1", 5, 5, 0), ("pool.rs:2:2", 4, 4, 0)],
        );
        let new = snap(
            60,
            70.0,
            &[("leak.rs:3:3", 32, 32, 0), ("pool.rs:2:2", 4, 10, 6)],
        );
        let d = diff(&base, &new);
        let order: Vec<&str> = d.sites.iter().map(|s| s.site.as_str()).collect();
        assert_eq!(order, ["leak.rs:3:3", "pool.rs:2:2", "gone.rs:1:1"]);
        assert_eq!(
            (d.sites[0].base_live, d.sites[0].delta, d.sites[0].spawned),
            (0, 32, 32)
        );
        assert_eq!(
            (d.sites[1].delta, d.sites[1].spawned, d.sites[1].terminated),
            (0, 6, 6)
        );
        assert_eq!((d.sites[2].new_live, d.sites[2].delta), (0, -5));
        assert_eq!(
            d.total,
            DiffTotal {
                base: 9,
                new: 36,
                delta: 27
            }
        );
        assert!(!d.restarted);
    }

    #[test]
    fn a_restart_between_the_snapshots_is_flagged_and_counters_are_not_subtracted() {
        let base = snap(0, 500.0, &[("a.rs:1:1", 3, 900, 897)]);
        let new = snap(60, 5.0, &[("a.rs:1:1", 2, 10, 8)]);
        let d = diff(&base, &new);
        assert!(d.restarted);
        assert_eq!((d.sites[0].spawned, d.sites[0].terminated), (10, 8));
    }
}
