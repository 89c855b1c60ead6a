//! `diagtool watch --prometheus URL`: judge a fleet from the history Prometheus already holds.
//!
//! Two `query_range` calls over `--lookback` at `--step` read `<prefix>_tasks_live{site}`, and
//! `<prefix>_tasks_oldest_age_seconds{site}` with `_median_age_seconds` (ANDed with
//! `--selector`) from any engine that speaks Prometheus's HTTP API (Prometheus, Thanos, Mimir,
//! VictoriaMetrics). The samples of each `instance` become the synthetic snapshots a single watch
//! would have taken, one per step, and the same analysis judges them
//! ([`crate::analysis::analyze`]): there is one judge, not two.
//!
//! Decoding rules (each has a unit test below):
//! - a step where an instance has no sample at all (not scraped, or stopped: its series went
//!   stale) gives no snapshot, so a gap or a stopped instance only shortens its history;
//! - a site absent at a step where its instance has other samples had no live task then (0);
//! - the restart of an instance shows as every age falling below the time since the previous
//!   step; its synthetic uptime then restarts, and the analysis judges only the samples since,
//!   as a single watch does when the target's uptime goes backwards;
//! - `NaN` and infinite values are dropped (Prometheus's staleness markers never reach the API).
//!
//! Exit codes: 0, 1 (a leak, with `--fail-on-leak`), 2 (Prometheus refused the query, such as a
//! bad selector: its message is shown), 3 (the query API did not answer).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Deserialize;

use super::fleet::{InstanceView, finish, render, report};
use super::watch::{View, options};
use super::{CliError, Client, WatchArgs};
use crate::analysis::analyze;
use crate::model::{SNAPSHOT_SCHEMA, SiteStats, Snapshot, TaskTotals};

/// Longest wait for one `query_range` answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Points `query_range` is asked for at most per series when `--step` is not given.
const DEFAULT_POINTS: u32 = 240;

/// `diagtool watch --prometheus URL`.
pub(super) async fn watch(token: Option<String>, args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let options = options(args)?;
    let url = args.prometheus.as_deref().unwrap_or_default();
    let mut client = Client::for_flag("--prometheus", url, token)?;
    if let Some(basic) = &args.basic_auth {
        client = client.with_basic_auth(basic)?;
    }
    let selector = selector(args.selector.as_deref())?;
    let lookback = args.lookback.0;
    let step = args.step.map_or_else(
        || (lookback / DEFAULT_POINTS).max(Duration::from_secs(1)),
        |s| s.0,
    );
    let live_q = format!("{}_tasks_live{selector}", args.metric_prefix);
    // Oldest and median ages in one query, told apart by `__name__`.
    let inner = selector
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim();
    let age_q = format!(
        "{{__name__=~\"{}_tasks_(oldest|median)_age_seconds\"{}{inner}}}",
        args.metric_prefix,
        if inner.is_empty() { "" } else { "," }
    );
    let label = format!("{} {live_q}", client.target());
    let view = View::new(args.json, args.top, &label);
    let until = args.duration.map(|d| tokio::time::Instant::now() + d.0);
    loop {
        let end = now_s();
        let start = end - lookback.as_secs_f64();
        let live = query_range(&client, &live_q, start, end, step).await?;
        let ages = query_range(&client, &age_q, start, end, step).await?;
        let mut views = judge(&live, &ages, &options);
        note_stale(&mut views, &live, end, step);
        let last = until.is_none_or(|u| tokio::time::Instant::now() + step >= u);
        let text = render(&views, &label, args.top, last, view.screen());
        view.show(&text)?;
        if last {
            let doc = report(client.target(), &views, options.threshold_per_min);
            if let Some(dir) = &args.record {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create --record {}", dir.display()))?;
                let json = serde_json::to_string_pretty(&doc).context("cannot encode")?;
                let path = dir.join("summary.json");
                std::fs::write(&path, format!("{json}\n"))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                std::fs::write(dir.join("summary.txt"), &text)
                    .with_context(|| format!("cannot write into {}", dir.display()))?;
            }
            return finish(&doc, args);
        }
        // Following live: judge the sliding window again each step.
        tokio::select! {
            () = tokio::time::sleep(step) => {}
            r = tokio::signal::ctrl_c() => if r.is_ok() {
                return finish(&report(client.target(), &views, options.threshold_per_min), args);
            },
        }
    }
}

/// `--selector` as a label matcher set to append to the metric name.
fn selector(given: Option<&str>) -> Result<String, CliError> {
    let Some(text) = given.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(String::new());
    };
    if !(text.starts_with('{') && text.ends_with('}')) {
        return Err(CliError::Input(format!(
            "bad --selector {text:?}: give label matchers in braces, such as '{{job=\"shipper\"}}'"
        )));
    }
    Ok(text.to_owned())
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One series of a range query: its labels and its (unix seconds, value) points.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Series {
    pub(super) labels: BTreeMap<String, String>,
    pub(super) points: Vec<(f64, f64)>,
}

#[derive(Deserialize)]
struct ApiAnswer<'a> {
    status: String,
    #[serde(default, borrow)]
    data: Option<ApiData<'a>>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
struct ApiData<'a> {
    #[serde(rename = "resultType")]
    result_type: String,
    #[serde(borrow)]
    result: Vec<ApiSeries<'a>>,
}

#[derive(Deserialize)]
struct ApiSeries<'a> {
    metric: BTreeMap<String, String>,
    /// `[unix seconds, "value"]`; the value strings (numbers, `NaN`, `+Inf`: never escaped) are
    /// borrowed from the answer, not allocated one by one.
    #[serde(default, borrow)]
    values: Vec<(f64, &'a str)>,
}

/// `GET /api/v1/query_range`: a transport failure or 5xx is unreachable (3); an answer that
/// refuses the query (400/422, `status: error`) is an input error (2) with Prometheus's message.
async fn query_range(
    client: &Client,
    query: &str,
    start: f64,
    end: f64,
    step: Duration,
) -> Result<Vec<Series>, CliError> {
    let (start, end, step) = (
        format!("{start:.3}"),
        format!("{end:.3}"),
        format!("{:.3}", step.as_secs_f64()),
    );
    let params = [
        ("query", query),
        ("start", start.as_str()),
        ("end", end.as_str()),
        ("step", step.as_str()),
    ];
    let (url, status, body) = client
        .get_query("api/v1/query_range", &params, QUERY_TIMEOUT)
        .await?;
    if status.is_server_error() {
        return Err(CliError::Unreachable {
            target: client.target().to_owned(),
            reason: format!(
                "{url} answered {status}: {}",
                super::client::error_message(&body)
            ),
        });
    }
    if matches!(status.as_u16(), 401 | 403) {
        return Err(CliError::Input(format!(
            "{url} refused the request ({status}): pass --token (bearer) or --basic-auth USER:PASSWORD"
        )));
    }
    let text = String::from_utf8_lossy(&body);
    decode_matrix(&text).map_err(|e| CliError::Input(format!("query {query:?} ({status}): {e}")))
}

/// Decodes a `query_range` answer (a matrix) into series; a refusal gives Prometheus's message.
pub(super) fn decode_matrix(text: &str) -> Result<Vec<Series>, String> {
    let answer: ApiAnswer = serde_json::from_str(text).map_err(|e| {
        let shown: String = text.trim().chars().take(80).collect();
        format!(
            "not a Prometheus API answer ({e}); it began {shown:?}: is --prometheus its base URL?"
        )
    })?;
    if answer.status != "success" {
        return Err(format!(
            "Prometheus refused it: {}{}",
            answer
                .error_type
                .map(|t| format!("{t}: "))
                .unwrap_or_default(),
            answer.error.unwrap_or_else(|| "(no message)".to_owned())
        ));
    }
    let data = answer.data.ok_or("the answer holds no data")?;
    if data.result_type != "matrix" {
        return Err(format!("expected a matrix, got a {}", data.result_type));
    }
    Ok(data
        .result
        .into_iter()
        .map(|s| Series {
            labels: s.metric,
            points: s
                .values
                .into_iter()
                .filter_map(|(t, v)| {
                    v.parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .map(|v| (t, v))
                })
                .collect(),
        })
        .collect())
}

/// Per instance, the live and age series by site and timestamp (milliseconds, exact: every
/// `query_range` point sits on the step grid).
#[derive(Default)]
struct InstanceData {
    live: BTreeMap<String, BTreeMap<i64, f64>>,
    ages: BTreeMap<String, BTreeMap<i64, f64>>,
    medians: BTreeMap<String, BTreeMap<i64, f64>>,
}

fn instance_of(labels: &BTreeMap<String, String>) -> String {
    labels
        .get("instance")
        .cloned()
        .unwrap_or_else(|| "(no instance label)".to_owned())
}

/// The synthetic snapshots of every instance, from its live and age series.
#[cfg(test)]
pub(super) fn snapshots(live: &[Series], ages: &[Series]) -> BTreeMap<String, Vec<Snapshot>> {
    group(live, ages)
        .into_iter()
        .filter_map(|(instance, data)| {
            let snaps = instance_snapshots(&instance, &data);
            (!snaps.is_empty()).then_some((instance, snaps))
        })
        .collect()
}

/// The series grouped by instance, then by site and timestamp.
fn group(live: &[Series], ages: &[Series]) -> BTreeMap<String, InstanceData> {
    let mut by_instance: BTreeMap<String, InstanceData> = BTreeMap::new();
    for (series, is_live) in live
        .iter()
        .map(|s| (s, true))
        .chain(ages.iter().map(|s| (s, false)))
    {
        let Some(site) = series.labels.get("site") else {
            continue;
        };
        let data = by_instance.entry(instance_of(&series.labels)).or_default();
        let median = series
            .labels
            .get("__name__")
            .is_some_and(|n| n.ends_with("_median_age_seconds"));
        let map = match (is_live, median) {
            (true, _) => &mut data.live,
            (false, false) => &mut data.ages,
            (false, true) => &mut data.medians,
        };
        let points = map.entry(site.clone()).or_default();
        for &(t, v) in &series.points {
            // Two series for one (instance, site), such as from two jobs: add them up.
            *points.entry((t * 1000.0).round() as i64).or_default() += v;
        }
    }
    by_instance
}

fn instance_snapshots(instance: &str, data: &InstanceData) -> Vec<Snapshot> {
    let mut times: Vec<i64> = data.live.values().flat_map(|p| p.keys().copied()).collect();
    times.sort_unstable();
    times.dedup();
    let mut snaps: Vec<Snapshot> = Vec::with_capacity(times.len());
    let mut uptime = 0.0f64;
    let mut prev: Option<(i64, f64)> = None;
    for t in times {
        let age_at = |site: &str| data.ages.get(site).and_then(|p| p.get(&t)).copied();
        let median_at = |site: &str| data.medians.get(site).and_then(|p| p.get(&t)).copied();
        let sites: Vec<SiteStats> = data
            .live
            .iter()
            .map(|(site, points)| {
                let live = points.get(&t).copied().unwrap_or(0.0).max(0.0).round() as u64;
                SiteStats {
                    site: site.clone(),
                    live,
                    spawned_total: live,
                    oldest_age_s: if live > 0 {
                        age_at(site).unwrap_or(0.0)
                    } else {
                        0.0
                    },
                    median_age_s: if live > 0 {
                        median_at(site).unwrap_or(0.0)
                    } else {
                        0.0
                    },
                    ..Default::default()
                }
            })
            .collect();
        let max_age = data
            .ages
            .values()
            .filter_map(|p| p.get(&t))
            .copied()
            .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
        // The synthetic uptime grows with the clock, and starts again where every age is younger
        // than the time since the previous step while the oldest was older before: a restart.
        uptime = match (prev, max_age) {
            (None, Some(age)) => age,
            (None, None) => 0.0,
            (Some((pt, prev_max)), Some(age)) => {
                let dt = (t - pt) as f64 / 1000.0;
                if age < dt + 0.5 && prev_max > age {
                    age
                } else {
                    uptime + dt
                }
            }
            (Some((pt, _)), None) => uptime + (t - pt) as f64 / 1000.0,
        };
        prev = Some((t, max_age.unwrap_or(prev.map_or(0.0, |p| p.1))));
        snaps.push(Snapshot {
            schema: SNAPSHOT_SCHEMA.to_owned(),
            service: instance.to_owned(),
            taken_at_ms: u64::try_from(t).unwrap_or(0),
            uptime_s: uptime,
            process: Default::default(),
            runtime: Default::default(),
            tasks: TaskTotals {
                live: sites.iter().map(|s| s.live).sum(),
                ..Default::default()
            },
            sites,
            tasks_detail: None,
        });
    }
    snaps
}

/// Marks the instances whose samples stopped more than two steps before `end` (stopped, or no
/// longer scraped): their history is still judged, and the table says since when they are silent.
fn note_stale(views: &mut [InstanceView], live: &[Series], end: f64, step: Duration) {
    let mut last_seen: BTreeMap<String, f64> = BTreeMap::new();
    for series in live {
        if let Some(&(t, _)) = series.points.last() {
            let seen = last_seen.entry(instance_of(&series.labels)).or_insert(t);
            *seen = seen.max(t);
        }
    }
    for view in views {
        if let Some(&t) = last_seen.get(&view.name)
            && end - t > 2.0 * step.as_secs_f64()
        {
            view.error = Some(format!(
                "no sample in the last {} (stopped, or no longer scraped); judged on its history",
                super::fmt::secs(end - t)
            ));
        }
    }
}

/// Every instance judged alone, with the same rules as a single watch.
fn judge(
    live: &[Series],
    ages: &[Series],
    options: &crate::analysis::Options,
) -> Vec<InstanceView> {
    // One instance's snapshots at a time: memory stays at one instance's, not the fleet's.
    group(live, ages)
        .into_iter()
        .filter_map(|(name, data)| {
            let snaps = instance_snapshots(&name, &data);
            (!snaps.is_empty()).then(|| InstanceView {
                analysis: Some(analyze(&snaps, options)),
                name,
                error: None,
                errors: 0,
            })
        })
        .collect()
}

#[cfg(test)]
#[path = "prom_tests.rs"]
mod tests;
