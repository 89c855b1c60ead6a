//! `diagtool report DIR`: a Markdown incident report from a `watch --record DIR` recording.
//!
//! The report holds what an operator would otherwise build by hand: the verdict, a chart of live
//! tasks per top site over time (SVG, written beside the report and linked), a timeline table of the
//! samples (time, total live, delta, the top sites), the per-site growth table, and for each leaking
//! site who spawned its tasks, how fast and since when they pile up, and where they wait (from the
//! task dump the watch fetched when the leak showed).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::CliError;
use super::chart::{Line, live_tasks_svg};
use super::dump::{group_ages, groups};
use super::fmt::{rate, secs, utc, utc_time};
use super::watch::snapshot_file;
use crate::analysis::{Analysis, Options, SiteGrowth, analyze, split_at_restarts};
use crate::model::{Dump, Overall, Snapshot, Verdict, WatchReport};

/// Sites drawn in the chart and shown in the timeline.
const TOP_SITES: usize = 5;
/// Rows of the timeline table at most (evenly spread, first and last always in).
const TIMELINE_ROWS: usize = 30;
/// Rows of the growth table at most.
const GROWTH_ROWS: usize = 20;
/// Frames of a trace shown per dump group (the leaf end is kept).
const TRACE_FRAMES: usize = 14;

/// A loaded recording.
struct Recording {
    snapshots: Vec<Snapshot>,
    summary: Option<WatchReport>,
    dump: Option<Dump>,
}

/// `diagtool report DIR [-o FILE]`.
pub(super) fn report(dir: &Path, output: Option<&Path>) -> anyhow::Result<ExitCode> {
    if super::heap_report::is_heap_recording(dir) {
        return super::heap_report::report(dir, output);
    }
    if !dir.join(snapshot_file(1)).exists() {
        let instances = super::fleet_report::instance_dirs(dir);
        if !instances.is_empty() {
            return super::fleet_report::report(dir, &instances, output);
        }
    }
    let recording = load(dir)?;
    let out = output.map_or_else(|| dir.join("report.md"), Path::to_path_buf);
    let svg_path = chart_path(&out);
    // Judge with the threshold the watch used, so the report agrees with what it printed.
    let threshold = recording.summary.as_ref().and_then(|s| s.threshold_per_min);
    let options = Options {
        threshold_per_min: threshold.unwrap_or(crate::analysis::DEFAULT_THRESHOLD_PER_MIN),
        ..Options::default()
    };
    let analysis = analyze(&recording.snapshots, &options);
    let svg_name = svg_path
        .file_name()
        .map_or_else(|| "chart.svg".into(), |n| n.to_string_lossy().into_owned());
    let markdown = markdown(&recording, &analysis, &svg_name);
    std::fs::write(&svg_path, chart(&recording, &analysis))
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    std::fs::write(&out, markdown).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "diagtool: wrote {} and {}",
        out.display(),
        svg_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `report.md` -> `report-live.svg`, in the same directory.
fn chart_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "report".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}-live.svg"))
}

fn load(dir: &Path) -> anyhow::Result<Recording> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        CliError::Input(format!("cannot read the recording {}: {e}", dir.display()))
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snapshot-") && n.ends_with(".json"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(CliError::Input(format!(
            "{} holds no {}-style snapshots: record some with `diagtool watch --record {}`",
            dir.display(),
            snapshot_file(1),
            dir.display()
        ))
        .into());
    }
    let snapshots = files
        .iter()
        .map(|path| super::commands::read_snapshot(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let optional = |name: &str| -> anyhow::Result<Option<String>> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CliError::Input(format!("cannot read {}: {e}", path.display())).into()),
        }
    };
    let summary = optional("summary.json")?
        .map(|t| WatchReport::from_json(&t))
        .transpose()
        .map_err(|e| CliError::Input(format!("{}: {e}", dir.join("summary.json").display())))?;
    let dump = optional("dump.json")?
        .map(|t| Dump::from_json(&t))
        .transpose()
        .map_err(|e| CliError::Input(format!("{}: {e}", dir.join("dump.json").display())))?;
    Ok(Recording {
        snapshots,
        summary,
        dump,
    })
}

/// The snapshots of a recording, in order.
pub(super) fn load_snapshots(dir: &Path) -> anyhow::Result<Vec<Snapshot>> {
    load(dir).map(|r| r.snapshots)
}

/// The analysed snapshots (those since the last restart).
fn segment(recording: &Recording) -> &[Snapshot] {
    let (_, start) = split_at_restarts(&recording.snapshots);
    &recording.snapshots[start..]
}

fn top_sites(analysis: &Analysis) -> Vec<&SiteGrowth> {
    analysis.sites.iter().take(TOP_SITES).collect()
}

fn chart(recording: &Recording, analysis: &Analysis) -> String {
    let service = segment(recording)
        .first()
        .map_or("target", |s| s.service.as_str());
    let lines: Vec<Line> = top_sites(analysis)
        .iter()
        .map(|site| {
            let series = analysis.series.iter().find(|s| s.site == site.row.site);
            Line {
                label: format!("{} ({})", site.row.site, site.row.verdict),
                points: series.map_or_else(Vec::new, |s| {
                    s.points.iter().map(|p| (p.t_s, p.live as f64)).collect()
                }),
            }
        })
        .collect();
    live_tasks_svg(&format!("Live tasks per spawn site: {service}"), &lines)
}

/// Short labels for table columns: each site's file name and position, with as many parent
/// directories as it takes to tell apart two different files of the same name (two `mod.rs`
/// columns become `serve/mod.rs:276:9` and `sink/mod.rs:40:5`). Sites in the same file keep the
/// bare file name: their positions differ.
fn short_sites(sites: &[&str]) -> Vec<String> {
    // `path/to/file.rs:LINE:COL` -> ("path/to/file.rs", ":LINE:COL"); a site without a position
    // is all path.
    let parts: Vec<(&str, &str)> = sites
        .iter()
        .map(|site| {
            let file_start = site.rfind('/').map_or(0, |i| i + 1);
            match site[file_start..].find(':') {
                Some(colon) => site.split_at(file_start + colon),
                None => (*site, ""),
            }
        })
        .collect();
    let suffix = |path: &str, depth: usize| -> String {
        let components: Vec<&str> = path.split('/').collect();
        components[components.len().saturating_sub(depth)..].join("/")
    };
    parts
        .iter()
        .map(|(path, position)| {
            let mut depth = 1;
            while parts
                .iter()
                .any(|(other, _)| other != path && suffix(other, depth) == suffix(path, depth))
                && depth < path.split('/').count()
            {
                depth += 1;
            }
            format!("{}{position}", suffix(path, depth))
        })
        .collect()
}

/// Escapes text for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn markdown(recording: &Recording, analysis: &Analysis, svg_name: &str) -> String {
    let seg = segment(recording);
    let (Some(first), Some(last)) = (seg.first(), seg.last()) else {
        return "# Task growth report\n\nNo samples.\n".to_owned();
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Task growth report: {}\n", first.service);
    if let Some(summary) = &recording.summary {
        let _ = writeln!(md, "- **Target:** `{}`", summary.target);
    }
    let _ = writeln!(
        md,
        "- **Recorded:** {} to {} ({}), {} samples{}",
        utc(first.taken_at_ms),
        utc(last.taken_at_ms),
        secs(analysis.span_s),
        analysis.samples,
        recording
            .summary
            .as_ref()
            .filter(|s| s.errors > 0)
            .map_or_else(String::new, |s| format!(", {} failed attempts", s.errors))
    );
    let _ = writeln!(
        md,
        "- **Live tasks:** {} to {} ({:+}, {}/min)",
        analysis.total.first,
        analysis.total.last,
        analysis.total.last as i64 - analysis.total.first as i64,
        rate(analysis.total.growth_per_min)
    );
    let leaks: Vec<&SiteGrowth> = analysis
        .sites
        .iter()
        .filter(|s| s.row.verdict == Verdict::Leak)
        .collect();
    match analysis.verdict() {
        Overall::Leak => {
            let _ = writeln!(
                md,
                "- **Verdict: LEAK** at {} site{}:",
                leaks.len(),
                if leaks.len() == 1 { "" } else { "s" }
            );
            for s in &leaks {
                let _ = writeln!(
                    md,
                    "  - `{}` grows {}/min{}; oldest task {} old",
                    s.row.site,
                    rate(s.row.growth_per_min),
                    s.row
                        .step
                        .as_ref()
                        .map_or_else(String::new, |st| format!(" in steps of {st}")),
                    secs(s.row.oldest_age_s)
                );
            }
        }
        Overall::Ok => {
            let _ = writeln!(md, "- **Verdict: ok**: no site leaks.");
        }
    }
    for r in &analysis.restarts {
        let _ = writeln!(
            md,
            "- **Restart:** the target restarted before sample {} ({}, uptime {}); the analysis covers \
             the samples since the last restart.",
            r.sample + 1,
            utc(r.taken_at_ms),
            secs(r.uptime_s)
        );
    }

    let _ = writeln!(
        md,
        "\n## Live tasks over time\n\n![Live tasks per spawn site]({svg_name})\n"
    );

    let tops = top_sites(analysis);
    let _ = writeln!(md, "## Timeline\n");
    let mut header = "| time (UTC) | since start | total live | delta |".to_owned();
    let mut rule = "|---|---:|---:|---:|".to_owned();
    let sites: Vec<&str> = tops.iter().map(|s| s.row.site.as_str()).collect();
    for label in short_sites(&sites) {
        let _ = write!(header, " `{}` |", cell(&label));
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    let mut previous: Option<u64> = None;
    for i in timeline_rows(seg.len()) {
        let snap = &seg[i];
        let delta = previous.map_or_else(
            || "".to_owned(),
            |p| format!("{:+}", snap.tasks.live as i64 - p as i64),
        );
        let _ = write!(
            md,
            "| {} | {} | {} | {} |",
            utc_time(snap.taken_at_ms),
            secs((snap.taken_at_ms - first.taken_at_ms) as f64 / 1000.0),
            snap.tasks.live,
            delta
        );
        for s in &tops {
            let live = snap
                .sites
                .iter()
                .find(|x| x.site == s.row.site)
                .map_or(0, |x| x.live);
            let _ = write!(md, " {live} |");
        }
        md.push('\n');
        previous = Some(snap.tasks.live);
    }
    if seg.len() > TIMELINE_ROWS {
        let _ = writeln!(
            md,
            "\n{} of {} samples shown, evenly spread.",
            TIMELINE_ROWS,
            seg.len()
        );
    }

    let _ = writeln!(
        md,
        "\n## Growth per spawn site\n\n| spawn site | live | delta since first | growth/min | R² | step pattern | oldest age | verdict | why |\n|---|---:|---:|---:|---:|---|---:|---|---|"
    );
    for s in analysis.sites.iter().take(GROWTH_ROWS) {
        let r = &s.row;
        let _ = writeln!(
            md,
            "| `{}` | {} | {:+} | {} | {:.2} | {} | {} | {} | {} |",
            cell(&r.site),
            r.live,
            r.delta,
            rate(r.growth_per_min),
            r.r2,
            r.step
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            secs(r.oldest_age_s),
            if r.verdict == Verdict::Leak {
                "**leak**".to_owned()
            } else {
                r.verdict.to_string()
            },
            cell(&s.why)
        );
    }
    if analysis.sites.len() > GROWTH_ROWS {
        let _ = writeln!(
            md,
            "\n... and {} more sites.",
            analysis.sites.len() - GROWTH_ROWS
        );
    }

    if !leaks.is_empty() {
        let _ = writeln!(md, "\n## Leaking sites");
    }
    for s in &leaks {
        leak_section(&mut md, s, last, recording.dump.as_ref());
    }
    md
}

fn leak_section(md: &mut String, s: &SiteGrowth, last: &Snapshot, dump: Option<&Dump>) {
    let r = &s.row;
    let _ = writeln!(md, "\n### `{}`\n", r.site);
    let stats = last.sites.iter().find(|x| x.site == r.site);
    let names = stats
        .filter(|x| !x.names.is_empty())
        .map_or_else(String::new, |x| {
            format!(", task names {}", x.names.join(", "))
        });
    let _ = writeln!(
        md,
        "- **Who spawned them:** the spawn call at `{}`{names}; {} live, {} spawned, {} ended at the last sample.",
        r.site,
        r.live,
        stats.map_or(0, |x| x.spawned_total),
        stats.map_or(0, |x| x.terminated_total)
    );
    let _ = writeln!(
        md,
        "- **How fast:** {}/min (R² {:.2}){}, {:+} over the recording; {}.",
        rate(r.growth_per_min),
        r.r2,
        r.step
            .as_ref()
            .map_or_else(String::new, |st| format!(", in steps of {st}")),
        r.delta,
        s.why
    );
    let since_ms = last
        .taken_at_ms
        .saturating_sub((r.oldest_age_s * 1000.0) as u64);
    let _ = writeln!(
        md,
        "- **Since when:** the oldest is {} old at the last sample: the first was spawned around {}.",
        secs(r.oldest_age_s),
        utc(since_ms)
    );
    let Some(dump) = dump else {
        let _ = writeln!(
            md,
            "- **Where they wait:** no task dump was recorded (the target did not answer one)."
        );
        return;
    };
    let site_groups: Vec<_> = groups(dump)
        .into_iter()
        .filter(|g| g.site == r.site)
        .collect();
    if site_groups.is_empty() {
        let _ = writeln!(
            md,
            "- **Where they wait:** the task dump of {} holds no task of this site.",
            utc(dump.taken_at_ms)
        );
        return;
    }
    let total: u64 = site_groups.iter().map(|g| g.count).sum();
    let _ = writeln!(
        md,
        "- **Where they wait:** task dump of {}: {total} tasks of this site in {} distinct trace{}:\n",
        utc(dump.taken_at_ms),
        site_groups.len(),
        if site_groups.len() == 1 { "" } else { "s" }
    );
    for g in site_groups.iter().take(3) {
        md.push_str("```text\n");
        let ages = group_ages(dump, g).map_or_else(String::new, |(old, young)| {
            format!(", ages {}..{}", secs(young), secs(old))
        });
        let _ = writeln!(
            md,
            "{} task{}{ages}, parked at (leaf last):",
            g.count,
            if g.count == 1 { "" } else { "s" }
        );
        if g.trace.len() > TRACE_FRAMES {
            let _ = writeln!(md, "    ... {} outer frames", g.trace.len() - TRACE_FRAMES);
        }
        for frame in g
            .trace
            .iter()
            .skip(g.trace.len().saturating_sub(TRACE_FRAMES))
        {
            let _ = writeln!(md, "    {frame}");
        }
        if g.trace.is_empty() {
            md.push_str("    (no trace)\n");
        }
        md.push_str("```\n");
    }
    if site_groups.len() > 3 {
        let _ = writeln!(md, "\n... and {} more traces.", site_groups.len() - 3);
    }
}

/// Up to [`TIMELINE_ROWS`] indices out of `n`, evenly spread, first and last included.
fn timeline_rows(n: usize) -> Vec<usize> {
    if n <= TIMELINE_ROWS {
        return (0..n).collect();
    }
    let mut rows: Vec<usize> = (0..TIMELINE_ROWS)
        .map(|i| i * (n - 1) / (TIMELINE_ROWS - 1))
        .collect();
    rows.dedup();
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_keeps_first_and_last_and_at_most_the_cap() {
        assert_eq!(timeline_rows(3), vec![0, 1, 2]);
        let rows = timeline_rows(1000);
        assert_eq!(rows.len(), TIMELINE_ROWS);
        assert_eq!((rows[0], rows[rows.len() - 1]), (0, 999));
    }

    #[test]
    fn chart_goes_beside_the_report() {
        assert_eq!(
            chart_path(Path::new("/tmp/x/incident.md")),
            Path::new("/tmp/x/incident-live.svg")
        );
        assert_eq!(
            short_sites(&[
                "shipper/src/leaklab.rs:88:17",
                "shipper/src/leaklab.rs:90:5",
                "axum-0.8.9/src/serve/mod.rs:276:9",
                "shipper/src/sink/mod.rs:40:5",
                "a/src/mod.rs:1:1",
                "b/src/mod.rs:1:1",
                "<unknown>",
            ]),
            [
                "leaklab.rs:88:17",
                "leaklab.rs:90:5",
                "serve/mod.rs:276:9",
                "sink/mod.rs:40:5",
                "a/src/mod.rs:1:1",
                "b/src/mod.rs:1:1",
                "<unknown>",
            ]
        );
        assert_eq!(cell("a|b"), "a\\|b");
    }

    /// A leak of 2 tasks per second over `n` samples a second apart, starting at `uptime`.
    fn leaking(n: u64, uptime: f64, at_ms: u64) -> Vec<Snapshot> {
        (0..n)
            .map(|i| {
                let live = 2 * (i + 1);
                Snapshot {
                    schema: crate::model::SNAPSHOT_SCHEMA.into(),
                    service: "svc".into(),
                    taken_at_ms: at_ms + 1000 * i,
                    uptime_s: uptime + i as f64,
                    process: Default::default(),
                    runtime: Default::default(),
                    tasks: crate::model::TaskTotals {
                        live,
                        ..Default::default()
                    },
                    sites: vec![crate::model::SiteStats {
                        site: "src/leak.rs:9:5".into(),
                        live,
                        spawned_total: live,
                        oldest_age_s: i as f64 + 0.5,
                        ..Default::default()
                    }],
                    tasks_detail: None,
                }
            })
            .collect()
    }

    #[test]
    fn report_without_a_dump_says_so_and_notes_restarts() {
        let mut snapshots = leaking(5, 500.0, 1_764_270_000_000);
        snapshots.extend(leaking(40, 1.0, 1_764_270_010_000));
        let recording = Recording {
            snapshots,
            summary: None,
            dump: None,
        };
        let analysis = analyze(&recording.snapshots, &Options::default());
        let md = markdown(&recording, &analysis, "r-live.svg");
        assert!(
            md.contains("**Restart:** the target restarted before sample 6"),
            "{md}"
        );
        assert!(md.contains("45 samples"), "{md}");
        assert!(md.contains("### `src/leak.rs:9:5`"), "{md}");
        assert!(md.contains("no task dump was recorded"), "{md}");
        assert!(md.contains("30 of 40 samples shown"), "{md}");
        // The timeline starts at the restart: the first row is the new process's first sample.
        assert!(md.contains("| 19:00:10 | 0s | 2 |  | 2 |"), "{md}");
        let svg = chart(&recording, &analysis);
        assert_eq!(svg.matches("<polyline stroke=").count(), 1);
    }

    #[test]
    fn report_of_a_quiet_recording_has_no_leak_section() {
        let flat: Vec<Snapshot> = leaking(1, 5.0, 0)
            .into_iter()
            .cycle()
            .take(6)
            .enumerate()
            .map(|(i, mut s)| {
                s.taken_at_ms = 1000 * i as u64;
                s.uptime_s = 5.0 + i as f64;
                s
            })
            .collect();
        let recording = Recording {
            snapshots: flat,
            summary: None,
            dump: None,
        };
        let analysis = analyze(&recording.snapshots, &Options::default());
        let md = markdown(&recording, &analysis, "r-live.svg");
        assert!(md.contains("**Verdict: ok**"), "{md}");
        assert!(!md.contains("## Leaking sites"), "{md}");
    }
}
