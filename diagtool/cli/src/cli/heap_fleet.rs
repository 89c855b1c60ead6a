//! `diagtool watch --heap --target A --target B ...` (or `--targets-file`): one heap growth table
//! for a fleet.
//!
//! The fleet watch's shape (see `fleet.rs`) over heap profiles: every interval each target's
//! `/debug/pprof/heap` is fetched, at most [`CONCURRENCY`] at a time, each target judged alone by
//! `diagtool_model::analysis::heap`; the table merges their rows with an `instance` column, largest
//! growth first. A target that does not answer, or cannot serve heap profiles (501), is a row with
//! its error and the watch goes on; only when no target ever answered does it end with exit 3.
//! `--record` is for single-target heap watches.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;

use super::commands::{right_align, table};
use super::fleet::{CONCURRENCY, finish, targets};
use super::fmt::secs;
use super::heap::{byte_rate, signed_bytes};
use super::heap_watch::sample;
use super::pacing::Pacing;
use super::watch::{View, options};
use super::{CliError, Client, WatchArgs};
use crate::analysis::heap::{HeapAnalysis, HeapNoise, HeapSample, analyze_heap};
use crate::model::text::bytes;
use crate::model::{
    Overall, UnreachableInstance, Verdict, WATCH_SCHEMA, WatchKind, WatchReport, WatchSite,
    WatchTotal,
};

/// One target being followed.
struct Instance {
    name: String,
    client: Client,
    samples: Vec<HeapSample>,
    errors: u64,
    error: Option<String>,
}

/// `diagtool watch --heap` over several targets.
pub(super) async fn watch(
    given: &[String],
    token: Option<String>,
    args: &WatchArgs,
) -> anyhow::Result<ExitCode> {
    options(args)?;
    if args.record.is_some() {
        return Err(CliError::Input(
            "--record with --heap follows one target: record each target in a watch of its own"
                .to_owned(),
        )
        .into());
    }
    let urls = targets(given, args.targets_file.as_deref())?;
    let mut fleet = Vec::with_capacity(urls.len());
    for url in &urls {
        let client = Client::new(url, token.clone())?;
        fleet.push(Instance {
            name: client.instance(),
            client,
            samples: Vec::new(),
            errors: 0,
            error: None,
        });
    }
    let noise = HeapNoise::default();
    let label = format!("fleet of {} targets", fleet.len());
    let view = View::new(args.json, args.top, &label);
    let interval = args.interval.0;
    let mut pacing = Pacing::new(interval, args.duration.map(|d| d.0));
    let pause = pacing.pause;
    while pacing.next().await.is_some() {
        match pacing
            .unless_interrupted(sample_all(&mut fleet, pause))
            .await
        {
            Some(result) => result?,
            None => break,
        }
        let judged = analyse(&fleet, args.threshold, &noise);
        view.show(&render(&fleet, &judged, &label, args.top, false))?;
    }
    let judged = analyse(&fleet, args.threshold, &noise);
    if judged.iter().all(Option::is_none) {
        let reasons: Vec<String> = fleet
            .iter()
            .map(|i| format!("{}: {}", i.name, i.error.as_deref().unwrap_or("no sample")))
            .collect();
        return Err(CliError::Unreachable {
            target: label,
            reason: format!("no target answered ({})", reasons.join("; ")),
        }
        .into());
    }
    view.show(&render(&fleet, &judged, &label, args.top, true))?;
    finish(&report(&urls.join(" "), &fleet, &judged), args)
}

/// Fetches every instance's heap profile once, at most [`CONCURRENCY`] at a time. The tasks are
/// owned by the `JoinSet` (dropped, it aborts them) and all joined before this returns.
async fn sample_all(fleet: &mut [Instance], pause: Duration) -> anyhow::Result<()> {
    let mut set = JoinSet::new();
    let mut next = 0;
    while next < fleet.len() || !set.is_empty() {
        while next < fleet.len() && set.len() < CONCURRENCY {
            let client = fleet[next].client.clone();
            let index = next;
            set.spawn(async move { (index, sample(&client, pause).await) });
            next += 1;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        let (index, (result, failures)) = joined.context("a sampling task failed")?;
        let instance = &mut fleet[index];
        instance.errors += u64::from(failures);
        match result {
            Ok(fetched) => {
                instance.samples.push(fetched.sample);
                instance.error = None;
            }
            Err(err) => instance.error = Some(format!("the last sample failed: {err}")),
        }
    }
    Ok(())
}

fn analyse(fleet: &[Instance], threshold: f64, noise: &HeapNoise) -> Vec<Option<HeapAnalysis>> {
    fleet
        .iter()
        .map(|i| (!i.samples.is_empty()).then(|| analyze_heap(&i.samples, threshold, noise)))
        .collect()
}

/// Every instance's rows (as the document shows them, with their instance), largest growth
/// first, each with the reason for its verdict.
fn rows(fleet: &[Instance], judged: &[Option<HeapAnalysis>]) -> Vec<(WatchSite, String)> {
    let mut rows: Vec<(WatchSite, String)> = fleet
        .iter()
        .zip(judged)
        .filter_map(|(i, j)| j.as_ref().map(|j| (i, j)))
        .flat_map(|(i, j)| {
            let report = j.to_report(i.client.target(), i.errors);
            report
                .sites
                .into_iter()
                .zip(j.analysis.sites.iter().map(|s| s.why.clone()))
                .map(|(mut row, why)| {
                    row.instance = Some(i.name.clone());
                    (row, why)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort_by(|a, b| {
        b.0.growth_per_min
            .total_cmp(&a.0.growth_per_min)
            .then_with(|| a.0.instance.cmp(&b.0.instance))
            .then_with(|| a.0.site.cmp(&b.0.site))
    });
    rows
}

fn render(
    fleet: &[Instance],
    judged: &[Option<HeapAnalysis>],
    label: &str,
    top: usize,
    last: bool,
) -> String {
    let rows = rows(fleet, judged);
    let leaking = rows.iter().any(|(r, _)| r.verdict == Verdict::Leak);
    let answered: Vec<&HeapAnalysis> = judged.iter().flatten().collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}{label}: {} answering, {} in use, up to {} heap profiles over {}, verdict {}",
        if last { "final: " } else { "" },
        answered.len(),
        bytes(answered.iter().map(|j| j.analysis.total.last).sum()),
        answered
            .iter()
            .map(|j| j.analysis.samples)
            .max()
            .unwrap_or(0),
        secs(
            answered
                .iter()
                .map(|j| j.analysis.span_s)
                .fold(0.0, f64::max)
        ),
        if leaking { "LEAK" } else { "ok" }
    );
    let mut t = table(&[
        "instance",
        "allocation site",
        "function",
        "in use",
        "delta since first",
        "growth/min",
        "verdict",
    ]);
    t.force_no_tty();
    for (r, _) in rows.iter().take(top) {
        t.add_row(vec![
            r.instance.clone().unwrap_or_default(),
            r.site.clone(),
            r.function.clone().unwrap_or_default(),
            bytes(r.live),
            signed_bytes(r.delta),
            byte_rate(r.growth_per_min),
            r.verdict.to_string(),
        ]);
    }
    for (i, j) in fleet.iter().zip(judged) {
        if j.is_none() {
            let error = i.error.as_deref().unwrap_or("no sample yet");
            t.add_row(vec![i.name.clone(), format!("({error})")]);
        }
    }
    right_align(&mut t, &[3, 4, 5]);
    out.push_str(&t.to_string());
    out.push('\n');
    if rows.len() > top {
        let _ = writeln!(out, "... and {} more rows", rows.len() - top);
    }
    for (r, why) in rows.iter().filter(|(r, _)| r.verdict == Verdict::Leak) {
        let _ = writeln!(
            out,
            "leak at {} on {}: {why}",
            r.site,
            r.instance.as_deref().unwrap_or("?")
        );
    }
    out
}

/// The fleet's `diagtool.watch/v1` document of kind `heap`.
fn report(target: &str, fleet: &[Instance], judged: &[Option<HeapAnalysis>]) -> WatchReport {
    let sites: Vec<WatchSite> = rows(fleet, judged).into_iter().map(|(r, _)| r).collect();
    let answered: Vec<&HeapAnalysis> = judged.iter().flatten().collect();
    WatchReport {
        schema: WATCH_SCHEMA.to_owned(),
        kind: WatchKind::Heap,
        target: target.to_owned(),
        samples: answered
            .iter()
            .map(|j| j.analysis.samples as u64)
            .max()
            .unwrap_or(0),
        span_s: answered
            .iter()
            .map(|j| j.analysis.span_s)
            .fold(0.0, f64::max),
        verdict: if sites.iter().any(|s| s.verdict == Verdict::Leak) {
            Overall::Leak
        } else {
            Overall::Ok
        },
        total: WatchTotal {
            first: answered.iter().map(|j| j.analysis.total.first).sum(),
            last: answered.iter().map(|j| j.analysis.total.last).sum(),
            growth_per_min: answered
                .iter()
                .map(|j| j.analysis.total.growth_per_min)
                .sum(),
        },
        sites,
        errors: fleet.iter().map(|i| i.errors).sum(),
        restarts: Vec::new(),
        threshold_per_min: answered
            .iter()
            .map(|j| j.analysis.threshold_per_min)
            .reduce(f64::max),
        unreachable: fleet
            .iter()
            .zip(judged)
            .filter(|(_, j)| j.is_none())
            .map(|(i, _)| UnreachableInstance {
                instance: i.name.clone(),
                error: i.error.clone().unwrap_or_else(|| "no sample".to_owned()),
            })
            .collect(),
    }
}
