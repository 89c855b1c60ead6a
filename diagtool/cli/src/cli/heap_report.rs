//! `diagtool report DIR` for a `watch --heap --record DIR` recording: the heap's incident report.
//!
//! The same shape as the task report: the verdict, a chart of in-use memory per top allocation
//! site (SVG beside the report), a timeline, the growth table (with each site's function), and for
//! each leaking site its function and the stack its memory was allocated through. The samples are
//! judged again with the threshold the watch used, so the report agrees with what it printed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::CliError;
use super::chart::{Line, line_svg};
use super::fmt::{secs, utc, utc_time};
use super::heap::{byte_rate, signed_bytes};
use super::heap_watch::{LAST_PROFILE, heap_file};
use crate::analysis::heap::{HeapAnalysis, HeapNoise, HeapSample, analyze_heap};
use crate::model::text::bytes;
use crate::model::{Overall, Verdict, WatchReport};

/// Sites drawn in the chart and shown in the timeline.
const TOP_SITES: usize = 5;
/// Rows of the timeline at most (evenly spread, first and last always in).
const TIMELINE_ROWS: usize = 30;
/// Rows of the growth table at most.
const GROWTH_ROWS: usize = 20;
/// Frames of a stack shown per leaking site (the allocation end is kept).
const STACK_FRAMES: usize = 24;

const MIB: f64 = 1024.0 * 1024.0;

/// Whether `dir` holds a heap recording.
pub(super) fn is_heap_recording(dir: &Path) -> bool {
    dir.join(heap_file(1)).exists()
}

/// `diagtool report DIR [-o FILE]` on a heap recording.
pub(super) fn report(dir: &Path, output: Option<&Path>) -> anyhow::Result<ExitCode> {
    let (samples, summary) = load(dir)?;
    let threshold = summary
        .as_ref()
        .and_then(|s| s.threshold_per_min)
        .unwrap_or(0.0);
    let judged = analyze_heap(&samples, threshold, &HeapNoise::default());
    let out = output.map_or_else(|| dir.join("report.md"), Path::to_path_buf);
    let svg_path = chart_path(&out);
    let svg_name = svg_path
        .file_name()
        .map_or_else(|| "heap.svg".into(), |n| n.to_string_lossy().into_owned());
    let has_profile = dir.join(LAST_PROFILE).exists();
    let md = markdown(&samples, summary.as_ref(), &judged, &svg_name, has_profile);
    std::fs::write(&svg_path, chart(&judged))
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    std::fs::write(&out, md).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "diagtool: wrote {} and {}",
        out.display(),
        svg_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `report.md` -> `report-heap.svg`, in the same directory.
fn chart_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "report".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}-heap.svg"))
}

fn load(dir: &Path) -> anyhow::Result<(Vec<HeapSample>, Option<WatchReport>)> {
    let mut samples = Vec::new();
    for index in 1.. {
        let path = dir.join(heap_file(index));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => {
                return Err(CliError::Input(format!("cannot read {}: {e}", path.display())).into());
            }
        };
        samples.push(
            HeapSample::from_json(&text)
                .map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?,
        );
    }
    let path = dir.join("summary.json");
    let summary = match std::fs::read_to_string(&path) {
        Ok(text) => Some(
            WatchReport::from_json(&text)
                .map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(CliError::Input(format!("cannot read {}: {e}", path.display())).into());
        }
    };
    Ok((samples, summary))
}

fn chart(judged: &HeapAnalysis) -> String {
    let lines: Vec<Line> = judged
        .analysis
        .sites
        .iter()
        .take(TOP_SITES)
        .map(|site| {
            let series = judged
                .analysis
                .series
                .iter()
                .find(|s| s.site == site.row.site);
            Line {
                label: format!("{} ({})", site.row.site, site.row.verdict),
                points: series.map_or_else(Vec::new, |s| {
                    s.points
                        .iter()
                        .map(|p| (p.t_s, p.live as f64 / MIB))
                        .collect()
                }),
            }
        })
        .collect();
    line_svg("Heap in use per allocation site", "in use (MiB)", &lines)
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn markdown(
    samples: &[HeapSample],
    summary: Option<&WatchReport>,
    judged: &HeapAnalysis,
    svg_name: &str,
    has_profile: bool,
) -> String {
    let analysis = &judged.analysis;
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return "# Heap growth report\n\nNo samples.\n".to_owned();
    };
    let mut md = String::new();
    let target = summary.map_or("the target", |s| s.target.as_str());
    let _ = writeln!(md, "# Heap growth report: {target}\n");
    let _ = writeln!(
        md,
        "- **Recorded:** {} to {} ({}), {} heap profiles{}",
        utc(first.taken_at_ms),
        utc(last.taken_at_ms),
        secs(analysis.span_s),
        analysis.samples,
        summary
            .filter(|s| s.errors > 0)
            .map_or_else(String::new, |s| format!(", {} failed attempts", s.errors))
    );
    let _ = writeln!(
        md,
        "- **In use:** {} to {} ({}, {}); sampled every {} allocated, growth under {} is noise",
        bytes(analysis.total.first),
        bytes(analysis.total.last),
        signed_bytes(analysis.total.last as i64 - analysis.total.first as i64),
        byte_rate(analysis.total.growth_per_min),
        bytes(judged.period_bytes),
        byte_rate(analysis.threshold_per_min)
    );
    let leaks: Vec<_> = analysis
        .sites
        .iter()
        .filter(|s| s.row.verdict == Verdict::Leak)
        .collect();
    match analysis.verdict() {
        Overall::Leak => {
            let _ = writeln!(
                md,
                "- **Verdict: LEAK** at {} allocation site{}:",
                leaks.len(),
                if leaks.len() == 1 { "" } else { "s" }
            );
            for s in &leaks {
                let function = judged
                    .detail(&s.row.site)
                    .map_or_else(String::new, |d| format!(" in `{}`", d.function));
                let _ = writeln!(
                    md,
                    "  - `{}`{function} grows {}, {} in use",
                    s.row.site,
                    byte_rate(s.row.growth_per_min),
                    bytes(s.row.live)
                );
            }
        }
        Overall::Ok => {
            let _ = writeln!(md, "- **Verdict: ok**: no allocation site leaks.");
        }
    }
    if has_profile {
        let _ = writeln!(
            md,
            "- **Last profile:** `{LAST_PROFILE}` beside this report (`go tool pprof -top {LAST_PROFILE}`)"
        );
    }
    let _ = writeln!(
        md,
        "\n## In use over time\n\n![Heap in use per allocation site]({svg_name})\n"
    );

    let tops: Vec<&str> = analysis
        .sites
        .iter()
        .take(TOP_SITES)
        .map(|s| s.row.site.as_str())
        .collect();
    let _ = writeln!(md, "## Timeline\n");
    let mut header = "| time (UTC) | since start | total in use |".to_owned();
    let mut rule = "|---|---:|---:|".to_owned();
    for site in &tops {
        let _ = write!(header, " `{}` |", cell(site));
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for i in timeline_rows(samples.len()) {
        let sample = &samples[i];
        let _ = write!(
            md,
            "| {} | {} | {} |",
            utc_time(sample.taken_at_ms),
            secs(sample.taken_at_ms.saturating_sub(first.taken_at_ms) as f64 / 1000.0),
            bytes(sample.inuse_bytes())
        );
        for site in &tops {
            let inuse = sample
                .sites
                .iter()
                .find(|s| s.site == *site)
                .map_or(0, |s| u64::try_from(s.inuse_bytes).unwrap_or(0));
            let _ = write!(md, " {} |", bytes(inuse));
        }
        md.push('\n');
    }
    if samples.len() > TIMELINE_ROWS {
        let _ = writeln!(
            md,
            "\n{TIMELINE_ROWS} of {} samples shown, evenly spread.",
            samples.len()
        );
    }

    let _ = writeln!(
        md,
        "\n## Growth per allocation site\n\n| allocation site | function | in use | objects | delta since first | growth/min | R² | verdict | why |\n|---|---|---:|---:|---:|---:|---:|---|---|"
    );
    for s in analysis.sites.iter().take(GROWTH_ROWS) {
        let r = &s.row;
        let detail = judged.detail(&r.site);
        let _ = writeln!(
            md,
            "| `{}` | `{}` | {} | {} | {} | {} | {:.2} | {} | {} |",
            cell(&r.site),
            cell(detail.map_or("", |d| d.function.as_str())),
            bytes(r.live),
            detail.map_or(0, |d| d.inuse_objects),
            signed_bytes(r.delta),
            byte_rate(r.growth_per_min),
            r.r2,
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
        let _ = writeln!(md, "\n## Leaking allocation sites");
    }
    for s in &leaks {
        let _ = writeln!(md, "\n### `{}`\n", s.row.site);
        let Some(detail) = judged.detail(&s.row.site) else {
            continue;
        };
        let _ = writeln!(
            md,
            "- **What allocates:** `{}`; {} in {} objects at the last sample.",
            detail.function,
            bytes(s.row.live),
            detail.inuse_objects
        );
        let _ = writeln!(
            md,
            "- **How fast:** {} (R² {:.2}), {} over the recording; {}.",
            byte_rate(s.row.growth_per_min),
            s.row.r2,
            signed_bytes(s.row.delta),
            s.why
        );
        let _ = writeln!(
            md,
            "- **Allocated through** (the heaviest stack, outermost first):\n"
        );
        md.push_str("```text\n");
        let skip = detail.stack.len().saturating_sub(STACK_FRAMES);
        if skip > 0 {
            let _ = writeln!(md, "... {skip} outer frames");
        }
        for frame in detail.stack.iter().skip(skip) {
            let _ = writeln!(md, "{frame}");
        }
        if detail.stack.is_empty() {
            md.push_str("(no stack)\n");
        }
        md.push_str("```\n");
    }
    md
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
    use crate::analysis::heap::HEAP_SAMPLE_SCHEMA;
    use crate::model::heap::HeapSite;

    fn samples(n: u64) -> Vec<HeapSample> {
        (0..n)
            .map(|i| HeapSample {
                schema: HEAP_SAMPLE_SCHEMA.to_owned(),
                taken_at_ms: 1_764_270_000_000 + 2000 * i,
                period_bytes: 1 << 19,
                sites: vec![HeapSite {
                    site: "app/src/cache.rs:42".to_owned(),
                    function: "app::cache::fill".to_owned(),
                    inuse_bytes: (1 << 20) * (i as i64 + 1),
                    inuse_objects: i as i64 + 1,
                    stack: vec![
                        "app::main at app/src/main.rs:3".to_owned(),
                        "app::cache::fill at app/src/cache.rs:42".to_owned(),
                    ],
                }],
            })
            .collect()
    }

    #[test]
    fn a_leak_gets_its_function_and_stack_and_a_chart_in_mib() {
        let s = samples(40);
        let judged = analyze_heap(&s, 0.0, &HeapNoise::default());
        let md = markdown(&s, None, &judged, "r-heap.svg", true);
        for needle in [
            "# Heap growth report: the target",
            "**Verdict: LEAK** at 1 allocation site:",
            "`app/src/cache.rs:42` in `app::cache::fill` grows +30.0 MiB/min, 40.0 MiB in use",
            "![Heap in use per allocation site](r-heap.svg)",
            "30 of 40 samples shown",
            "### `app/src/cache.rs:42`",
            "app::cache::fill at app/src/cache.rs:42\n```",
            "go tool pprof -top heap-last.pb.gz",
        ] {
            assert!(md.contains(needle), "{needle:?} in {md}");
        }
        let svg = chart(&judged);
        assert!(svg.contains("in use (MiB)"), "{svg}");
        assert_eq!(svg.matches("<polyline stroke=").count(), 1);
        assert_eq!(chart_path(Path::new("/x/r.md")), Path::new("/x/r-heap.svg"));
    }
}
