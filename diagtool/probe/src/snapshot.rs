//! Registry -> `diagtool.snapshot/v1`, and its text rendering for `?format=text`.
//!
//! Invariants of what [`take`] returns: `sites` is sorted by `live`, largest first (ties by site
//! name), and `tasks.live` is the sum of `sites[].live`: both come from the same read of the
//! per-site counters. Ages and names come from the live-task maps read just after, so a task
//! that ends in between may still lend its age to a site; counts are never affected.

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::runtime::Handle;

use super::process::process_stats;
use super::registry::{SiteAges, TaskRegistry};
use super::runtime::runtime_stats;
use crate::model::{SNAPSHOT_SCHEMA, SiteStats, Snapshot, TaskDetail, TaskTotals};

/// Milliseconds since the Unix epoch by this machine's clock.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Takes a snapshot of `registry` for `service`. `handle` supplies the runtime figures (zeros
/// without one); `detail` adds `tasks_detail` (`?debug=2`), oldest first.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let registry = diagtool_probe::TaskRegistry::new();
/// let snap = diagtool_probe::snapshot::take(&registry, "demo", None, false);
/// assert_eq!(snap.tasks.live, 0);
/// # }
/// ```
pub fn take(
    registry: &TaskRegistry,
    service: &str,
    handle: Option<&Handle>,
    detail: bool,
) -> Snapshot {
    let counts = registry.sites();
    // Ages per site straight from the shards: no record (nor site string) per live task.
    let mut ages: HashMap<String, SiteAges> = registry
        .site_ages()
        .into_iter()
        .map(|ages| (ages.site.clone(), ages))
        .collect();
    // Names the sites kept (they outlive their tasks) plus names set on live tasks.
    let mut names: HashMap<String, BTreeSet<String>> = registry.site_names().into_iter().collect();
    for site_ages in ages.values_mut() {
        for name in site_ages.live_names.drain(..) {
            names
                .entry(site_ages.site.clone())
                .or_default()
                .insert(name);
        }
    }

    let mut sites: Vec<SiteStats> = counts
        .iter()
        .map(|count| {
            let (oldest, median) = ages
                .get(count.site.as_str())
                .map_or((0.0, 0.0), |a| (a.oldest_s, a.median_s));
            SiteStats {
                site: count.site.clone(),
                live: count.live(),
                spawned_total: count.spawned,
                terminated_total: count.terminated,
                oldest_age_s: round_ms(oldest),
                median_age_s: round_ms(median),
                names: names
                    .get(count.site.as_str())
                    .map(|set| set.iter().cloned().collect())
                    .unwrap_or_default(),
            }
        })
        .collect();
    sites.sort_by(|a, b| b.live.cmp(&a.live).then_with(|| a.site.cmp(&b.site)));

    let tasks = TaskTotals {
        live: sites.iter().map(|s| s.live).sum(),
        spawned_total: sites.iter().map(|s| s.spawned_total).sum(),
        terminated_total: sites.iter().map(|s| s.terminated_total).sum(),
    };

    let tasks_detail = detail.then(|| {
        let mut detail: Vec<TaskDetail> = registry
            .live_tasks()
            .iter()
            .map(|task| TaskDetail {
                id: task_id_u64(task.id),
                site: task.site.clone(),
                name: task.name.clone(),
                age_s: round_ms(task.age_s),
            })
            .collect();
        detail.sort_by(|a, b| b.age_s.total_cmp(&a.age_s).then(a.id.cmp(&b.id)));
        detail
    });

    Snapshot {
        schema: SNAPSHOT_SCHEMA.to_owned(),
        service: service.to_owned(),
        taken_at_ms: unix_ms(),
        uptime_s: round_ms(registry.uptime_s()),
        process: process_stats(),
        runtime: handle.map(runtime_stats).unwrap_or_default(),
        tasks,
        sites,
        tasks_detail,
    }
}

/// tokio's task id as a number (tokio exposes it only through `Display`).
pub(crate) fn task_id_u64(id: tokio::task::Id) -> u64 {
    id.to_string().parse().unwrap_or(0)
}

/// Seconds rounded to milliseconds: finer digits are clock noise and bloat the JSON.
pub(crate) fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}
