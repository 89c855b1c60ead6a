//! `diagtool watch --target A --target B ...` (or `--targets-file`): one growth table for a fleet.
//!
//! Every interval each target is sampled, at most [`CONCURRENCY`] at a time, each analysed alone
//! with the same rules as a single watch; the table merges their rows with an `instance` column
//! (the target's `host:port`), largest growth first, and a line per leaking site says on how many
//! instances it leaks. A target that does not answer is a row with its error and the watch goes
//! on; only when no target ever answered does it end with exit 3. `--record DIR` keeps one folder
//! per instance (a single watch's recording each) and the fleet's `summary.json`.
//! `diagtool watch --prometheus` (in `prom.rs`) renders through the same table and document.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;

use super::commands::{right_align, table};
use super::fmt::{rate, secs};
use super::pacing::Pacing;
use super::watch::{Recorder, Screen, View, options, sample};
use super::{CliError, Client, WatchArgs};
use crate::analysis::{Analysis, analyze};
use crate::model::{
    Overall, Snapshot, UnreachableInstance, Verdict, WATCH_SCHEMA, WatchKind, WatchReport,
    WatchSite, WatchTotal,
};

/// Targets sampled at once: enough that a slow or dead target does not hold the others' sample
/// back, few enough that a fleet file of hundreds opens no more than this many connections.
pub(super) const CONCURRENCY: usize = 16;

/// One instance of a fleet, as the table and the document show it.
#[derive(Debug)]
pub(super) struct InstanceView {
    /// `host:port`, or Prometheus's `instance` label.
    pub(super) name: String,
    /// The analysis of its samples; `None` when it never answered.
    pub(super) analysis: Option<Analysis>,
    /// The last error, when the last attempt failed.
    pub(super) error: Option<String>,
    /// Failed attempts.
    pub(super) errors: u64,
}

/// One target being followed.
struct Instance {
    name: String,
    client: Client,
    snaps: Vec<Snapshot>,
    errors: u64,
    error: Option<String>,
    recorder: Option<Recorder>,
}

/// The targets from `--target` (repeated) and `--targets-file`, in order, without repeats.
pub(super) fn targets(
    given: &[String],
    file: Option<&std::path::Path>,
) -> Result<Vec<String>, CliError> {
    let mut all: Vec<String> = given.to_vec();
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).map_err(|e| {
            CliError::Input(format!(
                "cannot read --targets-file {}: {e}",
                file.display()
            ))
        })?;
        // `--targets-file` replaces the default target, not adds to it.
        if given == [super::DEFAULT_TARGET] {
            all.clear();
        }
        all.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    let mut seen = std::collections::HashSet::new();
    all.retain(|t| seen.insert(t.trim_end_matches('/').to_owned()));
    if all.is_empty() {
        return Err(CliError::Input(
            "--targets-file lists no target: write one URL a line".to_owned(),
        ));
    }
    Ok(all)
}

/// `diagtool watch` over several targets.
pub(super) async fn watch(
    given: &[String],
    token: Option<String>,
    args: &WatchArgs,
) -> anyhow::Result<ExitCode> {
    let options = options(args)?;
    let urls = targets(given, args.targets_file.as_deref())?;
    let mut fleet = Vec::with_capacity(urls.len());
    for url in &urls {
        let client = Client::new(url, token.clone())?;
        let name = client.instance();
        let recorder = match &args.record {
            Some(dir) => Some(Recorder::create(&dir.join(name.replace(':', "_")))?),
            None => None,
        };
        fleet.push(Instance {
            name,
            client,
            snaps: Vec::new(),
            errors: 0,
            error: None,
            recorder,
        });
    }
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
        let views = analyse(&fleet, &options);
        view.show(&render(&views, &label, args.top, false, view.screen()))?;
    }

    let views = analyse(&fleet, &options);
    if views.iter().all(|v| v.analysis.is_none()) {
        let reasons: Vec<String> = views
            .iter()
            .map(|v| format!("{}: {}", v.name, v.error.as_deref().unwrap_or("no sample")))
            .collect();
        return Err(CliError::Unreachable {
            target: label,
            reason: format!("no target answered ({})", reasons.join("; ")),
        }
        .into());
    }
    let summary = render(&views, &label, args.top, true, view.screen());
    view.show(&summary)?;
    let report = report(&urls.join(" "), &views, options.threshold_per_min);
    if let Some(dir) = &args.record {
        for (instance, v) in fleet.iter().zip(&views) {
            if let (Some(rec), Some(analysis)) = (&instance.recorder, &v.analysis) {
                let single = analysis.to_report(instance.client.target(), instance.errors);
                let text = super::watch::render(
                    analysis,
                    instance.client.target(),
                    instance.errors,
                    args.top,
                    true,
                    Screen::Piped,
                );
                rec.save_summary(&single, &text)?;
            }
        }
        let path: PathBuf = dir.join("summary.json");
        let json = serde_json::to_string_pretty(&report).context("cannot encode the document")?;
        std::fs::write(&path, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    finish(&report, args)
}

/// Prints the document (`--json`) and maps the verdict to the exit code.
pub(super) fn finish(report: &WatchReport, args: &WatchArgs) -> anyhow::Result<ExitCode> {
    if args.json {
        let json = serde_json::to_string(report).context("cannot encode the watch document")?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{json}")
            .and_then(|()| stdout.flush())
            .context("cannot write to standard output")?;
    }
    if args.fail_on_leak && report.verdict == Overall::Leak {
        Ok(ExitCode::from(1))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// Samples every instance once, at most [`CONCURRENCY`] at a time. The tasks are owned by the
/// `JoinSet` (dropped, it aborts them: Ctrl-C cancels a tick) and all joined before this returns.
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
        let (index, outcome) = joined.context("a sampling task failed")?;
        let instance = &mut fleet[index];
        instance.errors += u64::from(outcome.failures);
        match outcome.result {
            Ok((snap, text)) => {
                if let Some(rec) = instance.recorder.as_mut() {
                    rec.save_snapshot(&text)?;
                }
                instance.snaps.push(snap);
                instance.error = None;
            }
            Err(err) => instance.error = Some(format!("the last sample failed: {err}")),
        }
    }
    Ok(())
}

fn analyse(fleet: &[Instance], options: &crate::analysis::Options) -> Vec<InstanceView> {
    fleet
        .iter()
        .map(|i| InstanceView {
            name: i.name.clone(),
            analysis: (!i.snaps.is_empty()).then(|| analyze(&i.snaps, options)),
            error: i.error.clone(),
            errors: i.errors,
        })
        .collect()
}

/// Every instance's rows, each carrying its instance, largest growth first.
fn rows(views: &[InstanceView]) -> Vec<(WatchSite, &str)> {
    let mut rows: Vec<(WatchSite, &str)> = views
        .iter()
        .filter_map(|v| v.analysis.as_ref().map(|a| (v, a)))
        .flat_map(|(v, a)| {
            a.sites.iter().map(move |s| {
                let mut row = s.row.clone();
                row.instance = Some(v.name.clone());
                (row, s.why.as_str())
            })
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

/// The fleet's `diagtool.watch/v1` document: every row with its `instance`.
pub(super) fn report(target: &str, views: &[InstanceView], threshold: f64) -> WatchReport {
    let analysed: Vec<&Analysis> = views.iter().filter_map(|v| v.analysis.as_ref()).collect();
    let sites: Vec<WatchSite> = rows(views).into_iter().map(|(row, _)| row).collect();
    let verdict = if sites.iter().any(|s| s.verdict == Verdict::Leak) {
        Overall::Leak
    } else {
        Overall::Ok
    };
    WatchReport {
        schema: WATCH_SCHEMA.to_owned(),
        kind: WatchKind::Tasks,
        target: target.to_owned(),
        samples: analysed.iter().map(|a| a.samples as u64).max().unwrap_or(0),
        span_s: analysed.iter().map(|a| a.span_s).fold(0.0, f64::max),
        verdict,
        total: WatchTotal {
            first: analysed.iter().map(|a| a.total.first).sum(),
            last: analysed.iter().map(|a| a.total.last).sum(),
            growth_per_min: analysed.iter().map(|a| a.total.growth_per_min).sum(),
        },
        sites,
        errors: views.iter().map(|v| v.errors).sum(),
        restarts: Vec::new(),
        threshold_per_min: Some(threshold),
        unreachable: views
            .iter()
            .filter(|v| v.analysis.is_none())
            .map(|v| UnreachableInstance {
                instance: v.name.clone(),
                error: v.error.clone().unwrap_or_else(|| "no sample".to_owned()),
            })
            .collect(),
    }
}

/// The header, the table (top `top` rows, then a row per unreachable instance) and a line per
/// leaking site naming its instances.
pub(super) fn render(
    views: &[InstanceView],
    label: &str,
    top: usize,
    last: bool,
    screen: Screen,
) -> String {
    let all = rows(views);
    let leak = all.iter().any(|(r, _)| r.verdict == Verdict::Leak);
    let down = views.iter().filter(|v| v.analysis.is_none()).count();
    let live: u64 = views
        .iter()
        .filter_map(|v| v.analysis.as_ref())
        .map(|a| a.total.last)
        .sum();
    let span = views
        .iter()
        .filter_map(|v| v.analysis.as_ref())
        .map(|a| a.span_s)
        .fold(0.0, f64::max);
    let mut out = String::new();
    let _ = write!(
        out,
        "{}{label}: {} instances ({down} unreachable), over {}, {live} live tasks, verdict {}",
        if last { "final: " } else { "" },
        views.len(),
        secs(span),
        if leak { "LEAK" } else { "ok" },
    );
    out.push('\n');
    let mut t = table(&[
        "instance",
        "spawn site",
        "live",
        "delta",
        "growth/min",
        "step pattern",
        "oldest age",
        "verdict",
    ]);
    screen.fit(&mut t);
    for (r, _) in all.iter().take(top) {
        t.add_row(vec![
            r.instance.clone().unwrap_or_default(),
            r.site.clone(),
            r.live.to_string(),
            format!("{:+}", r.delta),
            rate(r.growth_per_min),
            r.step
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            secs(r.oldest_age_s),
            r.verdict.to_string(),
        ]);
    }
    for v in views.iter().filter(|v| v.analysis.is_none()) {
        let error = v.error.as_deref().unwrap_or("no sample yet");
        let error = error
            .strip_prefix("the last sample failed: ")
            .unwrap_or(error);
        t.add_row(vec![
            v.name.clone(),
            format!("unreachable: {error}"),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "unreachable".into(),
        ]);
    }
    right_align(&mut t, &[2, 3, 4, 6]);
    out.push_str(&t.to_string());
    out.push('\n');
    if all.len() > top {
        let _ = writeln!(out, "... and {} more rows", all.len() - top);
    }
    for v in views.iter().filter(|v| v.analysis.is_some()) {
        if let Some(error) = &v.error {
            let _ = writeln!(out, "{}: {error}", v.name);
        }
    }
    // A line per leaking site: on how many of the instances that answered it leaks, and where.
    let answered = views.len() - down;
    let mut by_site: BTreeMap<&str, (Vec<&str>, &str)> = BTreeMap::new();
    for (r, why) in all.iter().filter(|(r, _)| r.verdict == Verdict::Leak) {
        let entry = by_site.entry(r.site.as_str()).or_insert((Vec::new(), why));
        entry.0.push(r.instance.as_deref().unwrap_or("?"));
    }
    for (site, (instances, why)) in by_site {
        let _ = writeln!(
            out,
            "leak at {site} on {} of {answered} instances ({}): {why}",
            instances.len(),
            instances.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Options;
    use crate::model::{SNAPSHOT_SCHEMA, SiteStats, TaskTotals};

    fn snap(at_s: u64, sites: &[(&str, u64)]) -> Snapshot {
        Snapshot {
            schema: SNAPSHOT_SCHEMA.into(),
            service: "svc".into(),
            taken_at_ms: at_s * 1000,
            uptime_s: 100.0 + at_s as f64,
            process: Default::default(),
            runtime: Default::default(),
            tasks: TaskTotals {
                live: sites.iter().map(|s| s.1).sum(),
                ..Default::default()
            },
            sites: sites
                .iter()
                .map(|&(site, live)| SiteStats {
                    site: site.into(),
                    live,
                    oldest_age_s: 100.0 + at_s as f64,
                    ..Default::default()
                })
                .collect(),
            tasks_detail: None,
        }
    }

    fn view(name: &str, leak: bool) -> InstanceView {
        let snaps: Vec<Snapshot> = (0..12u64)
            .map(|i| {
                let l = if leak { 4 * (i + 1) } else { 3 };
                snap(i * 2, &[("leak.rs:1:1", l), ("ok.rs:2:2", 5)])
            })
            .collect();
        InstanceView {
            name: name.into(),
            analysis: Some(analyze(&snaps, &Options::default())),
            error: None,
            errors: 0,
        }
    }

    #[test]
    fn rows_carry_their_instance_and_the_leak_line_counts_instances() {
        let views = vec![
            view("10.0.0.1:6060", false),
            view("10.0.0.2:6060", true),
            InstanceView {
                name: "10.0.0.3:6060".into(),
                analysis: None,
                error: Some("cannot connect".into()),
                errors: 3,
            },
        ];
        let text = render(&views, "fleet", 10, true, Screen::Piped);
        assert!(
            text.starts_with("final: fleet: 3 instances (1 unreachable)"),
            "{text}"
        );
        assert!(text.contains("verdict LEAK"), "{text}");
        assert!(
            text.contains("leak at leak.rs:1:1 on 1 of 2 instances (10.0.0.2:6060)"),
            "{text}"
        );
        assert!(text.contains("unreachable: cannot connect"), "{text}");
        let doc = report("a b c", &views, 1.0);
        assert_eq!(doc.verdict, Overall::Leak);
        assert!(doc.sites.iter().all(|s| s.instance.is_some()));
        assert_eq!(doc.sites[0].instance.as_deref(), Some("10.0.0.2:6060"));
        assert_eq!(doc.sites[0].verdict, Verdict::Leak);
        assert_eq!(doc.unreachable.len(), 1);
        assert_eq!(doc.errors, 3);
        let json = serde_json::to_value(&doc).expect("encodes");
        assert_eq!(json["sites"][0]["instance"], "10.0.0.2:6060");
    }

    #[test]
    fn targets_file_lines_are_read_and_repeats_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("targets");
        std::fs::write(&file, "# fleet\nhttp://a:1\n\nhttp://b:2/\nhttp://a:1\n").expect("write");
        let got = targets(&[super::super::DEFAULT_TARGET.to_owned()], Some(&file)).expect("ok");
        assert_eq!(got, vec!["http://a:1".to_owned(), "http://b:2/".to_owned()]);
        std::fs::write(&file, "# none\n").expect("write");
        assert!(targets(&[super::super::DEFAULT_TARGET.to_owned()], Some(&file)).is_err());
    }
}
