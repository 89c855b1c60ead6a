//! `diagtool report DIR` on a fleet recording (`watch --target A --target B ... --record DIR`):
//! each instance's folder gets its own report (the single-target one), and `DIR/report.md` ties
//! them together: a table of the instances, then per leaking site the instances it leaks on and
//! one chart of its live tasks across them (`report-leak-N.svg`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::chart::{Line, live_tasks_svg};
use super::watch::snapshot_file;
use crate::analysis::{Analysis, Options, analyze};
use crate::model::{Verdict, WatchReport};

/// The instance folders of a fleet recording, sorted; empty when `dir` is not one.
pub(super) fn instance_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join(snapshot_file(1)).exists())
        .collect();
    dirs.sort();
    dirs
}

struct Instance {
    name: String,
    folder: String,
    analysis: Analysis,
}

/// Writes every instance's report, then the fleet's `report.md` (or `output`) and its charts.
pub(super) fn report(
    dir: &Path,
    dirs: &[PathBuf],
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let summary: Option<WatchReport> = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| WatchReport::from_json(&t).ok());
    let options = Options {
        threshold_per_min: summary
            .as_ref()
            .and_then(|s| s.threshold_per_min)
            .unwrap_or(crate::analysis::DEFAULT_THRESHOLD_PER_MIN),
        ..Options::default()
    };
    let mut instances = Vec::with_capacity(dirs.len());
    for sub in dirs {
        super::report::report(sub, None)?;
        let folder = sub
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let snapshots = super::report::load_snapshots(sub)?;
        instances.push(Instance {
            // Folders are named host_port: the instance is host:port.
            name: folder
                .rsplit_once('_')
                .map_or_else(|| folder.clone(), |(h, p)| format!("{h}:{p}")),
            folder,
            analysis: analyze(&snapshots, &options),
        });
    }
    let out = output.map_or_else(|| dir.join("report.md"), Path::to_path_buf);
    let out_dir = out
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);

    let mut md = String::new();
    let leaking = instances
        .iter()
        .filter(|i| i.analysis.verdict() == crate::model::Overall::Leak)
        .count();
    let _ = writeln!(md, "# Fleet task growth report\n");
    let _ = writeln!(
        md,
        "{} instances, {leaking} with a leaking spawn site{}.\n",
        instances.len(),
        summary
            .as_ref()
            .and_then(|s| (!s.unreachable.is_empty()).then(|| format!(
                "; never answered: {}",
                s.unreachable
                    .iter()
                    .map(|u| format!("`{}`", u.instance))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
            .unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "| instance | samples | span | live tasks | verdict | top site | growth/min |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | --- | --- | ---: |");
    for i in &instances {
        let a = &i.analysis;
        let top = a.sites.first();
        let _ = writeln!(
            md,
            "| [`{}`]({}/report.md) | {} | {} | {} | {} | {} | {} |",
            i.name,
            i.folder,
            a.samples,
            super::fmt::secs(a.span_s),
            a.total.last,
            if a.verdict() == crate::model::Overall::Leak {
                "**leak**"
            } else {
                "ok"
            },
            top.map_or_else(|| "-".to_owned(), |s| format!("`{}`", s.row.site)),
            top.map_or_else(
                || "-".to_owned(),
                |s| super::fmt::rate(s.row.growth_per_min)
            ),
        );
    }
    // Per leaking site: the instances it leaks on, and its live tasks on every instance.
    let mut by_site: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for i in &instances {
        for s in i
            .analysis
            .sites
            .iter()
            .filter(|s| s.row.verdict == Verdict::Leak)
        {
            by_site
                .entry(s.row.site.as_str())
                .or_default()
                .push(i.name.as_str());
        }
    }
    for (n, (site, on)) in by_site.iter().enumerate() {
        let svg = format!("report-leak-{}.svg", n + 1);
        let lines: Vec<Line> = instances
            .iter()
            .filter_map(|i| {
                let series = i.analysis.series.iter().find(|s| s.site == *site)?;
                Some(Line {
                    label: i.name.clone(),
                    points: series
                        .points
                        .iter()
                        .map(|p| (p.t_s, p.live as f64))
                        .collect(),
                })
            })
            .collect();
        let path = out_dir.join(&svg);
        std::fs::write(
            &path,
            live_tasks_svg(&format!("Live tasks of {site} per instance"), &lines),
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        let _ = writeln!(
            md,
            "\n## Leak at `{site}` on {} of {} instances\n\n{}\n\n![live tasks of the site per instance]({svg})",
            on.len(),
            instances.len(),
            on.iter()
                .map(|i| format!("- `{i}`"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    std::fs::write(&out, md).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("diagtool: wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}
