//! `diagtool watch --heap`: sample the target's heap profile every interval and judge the growth of
//! in-use bytes per allocation site.
//!
//! The loop is the task watch's (same flags, same retries, same in-place or appended frames, same
//! `--json`, `--fail-on-leak` and Ctrl-C handling); each sample is a heap profile grouped by
//! allocation site, judged by `diagtool_model::analysis::heap` (the task rules over bytes, with a
//! noise floor from the profile's sampling period). A target without heap profiling (501) ends the
//! watch at once with exit 3 and the target's own words on how to enable it; a profile that cannot
//! be read counts as a failed attempt like an unanswered one. `--record DIR` keeps each sample as
//! `heap-NNNNNN.json` (`diagtool.heap-sample/v1`), the last profile as served (`heap-last.pb.gz`)
//! and the summary, which `diagtool report DIR` turns into a report.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::commands::{right_align, table};
use super::fmt::secs;
use super::heap::{Fetched, byte_rate, fetch, keep_site_whole, signed_bytes, stack_text};
use super::pacing::Pacing;
use super::watch::{Screen, View, options, snapshot_file};
use super::{CliError, Client, WatchArgs};
use crate::analysis::heap::{HeapAnalysis, HeapNoise, HeapSample, analyze_heap};
use crate::model::text::bytes;
use crate::model::{Overall, Verdict};

/// Attempts per sample before it counts as missed.
const ATTEMPTS: u32 = 3;

/// `diagtool watch --heap`.
pub(super) async fn watch(client: &Client, args: &WatchArgs) -> anyhow::Result<ExitCode> {
    // The same check of --threshold as a task watch; here it is in bytes per minute.
    options(args)?;
    let noise = HeapNoise::default();
    let mut recorder = args
        .record
        .as_deref()
        .map(HeapRecorder::create)
        .transpose()?;
    let view = View::new(args.json, args.top, client.target());
    let interval = args.interval.0;
    let mut pacing = Pacing::new(interval, args.duration.map(|d| d.0));
    let pause = pacing.pause;

    let mut samples: Vec<HeapSample> = Vec::new();
    let mut last_raw: Option<Vec<u8>> = None;
    let mut errors = 0u64;
    let mut last_error: Option<CliError> = None;
    while let Some(ticks) = pacing.next().await {
        let (result, failures) = match pacing.unless_interrupted(sample(client, pause)).await {
            Some(outcome) => outcome,
            None => break,
        };
        errors += u64::from(failures);
        match result {
            Ok(fetched) => {
                if let Some(rec) = recorder.as_mut() {
                    rec.save_sample(&fetched.sample)?;
                }
                last_raw = Some(fetched.raw);
                samples.push(fetched.sample);
            }
            // Asking again cannot help a target built without heap profiling.
            Err(err @ CliError::Unsupported { .. }) => return Err(err.into()),
            Err(err) if samples.is_empty() => return Err(err.into()),
            Err(err) => {
                view.note(&format!(
                    "sample {ticks} failed after {ATTEMPTS} attempts: {err}"
                ))?;
                last_error = Some(err);
            }
        }
        let judged = analyze_heap(&samples, args.threshold, &noise);
        let text = render(&judged, client.target(), errors, args, false, view.screen());
        view.show(&text)?;
    }

    if samples.is_empty() {
        return Err(last_error
            .unwrap_or_else(|| CliError::Unreachable {
                target: client.target().to_owned(),
                reason: "stopped before the first sample".to_owned(),
            })
            .into());
    }
    let judged = analyze_heap(&samples, args.threshold, &noise);
    let summary = render(&judged, client.target(), errors, args, true, Screen::Piped);
    view.show(&render(
        &judged,
        client.target(),
        errors,
        args,
        true,
        view.screen(),
    ))?;
    let report = judged.to_report(client.target(), errors);
    if let Some(rec) = recorder.as_ref() {
        rec.save_summary(&report, &summary, last_raw.as_deref())?;
    }
    if args.json {
        let json = serde_json::to_string(&report).context("cannot encode the watch document")?;
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

/// Fetches a heap profile, retrying up to [`ATTEMPTS`] times with `pause` in between; a target
/// without heap profiling is not retried. Returns the last outcome and the failed attempts.
pub(super) async fn sample(client: &Client, pause: Duration) -> (Result<Fetched, CliError>, u32) {
    let mut failures = 0;
    loop {
        match fetch(client).await {
            Ok(fetched) => return (Ok(fetched), failures),
            Err(err) => {
                failures += 1;
                if failures >= ATTEMPTS || matches!(err, CliError::Unsupported { .. }) {
                    return (Err(err), failures);
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// The header line, the growth table of the top sites, the stacks with `--verbose`, and a line
/// per leaking site saying why.
pub(super) fn render(
    judged: &HeapAnalysis,
    target: &str,
    errors: u64,
    args: &WatchArgs,
    last: bool,
    screen: Screen,
) -> String {
    let analysis = &judged.analysis;
    let verdict = match analysis.verdict() {
        Overall::Leak => "LEAK",
        Overall::Ok => "ok",
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "{}{target}: {} heap profiles over {}, {} in use ({}, {}), verdict {verdict}",
        if last { "final: " } else { "" },
        analysis.samples,
        secs(analysis.span_s),
        bytes(analysis.total.last),
        signed_bytes(analysis.total.last as i64 - analysis.total.first as i64),
        byte_rate(analysis.total.growth_per_min),
    );
    if errors > 0 {
        let _ = write!(out, ", {errors} failed attempts");
    }
    let _ = writeln!(
        out,
        "\nsampled every {} allocated: growth under {} is noise",
        bytes(judged.period_bytes),
        byte_rate(analysis.threshold_per_min)
    );
    let mut t = table(&[
        "allocation site",
        "function",
        "in use",
        "delta since first",
        "growth/min",
        "verdict",
    ]);
    screen.fit(&mut t);
    let shown: Vec<_> = analysis.sites.iter().take(args.top).collect();
    keep_site_whole(&mut t, shown.iter().map(|s| s.row.site.as_str()));
    for s in &shown {
        let r = &s.row;
        t.add_row(vec![
            r.site.clone(),
            judged
                .detail(&r.site)
                .map_or_else(String::new, |d| d.function.clone()),
            bytes(r.live),
            signed_bytes(r.delta),
            byte_rate(r.growth_per_min),
            r.verdict.to_string(),
        ]);
    }
    right_align(&mut t, &[2, 3, 4]);
    out.push_str(&t.to_string());
    out.push('\n');
    if analysis.sites.len() > args.top {
        let _ = writeln!(
            out,
            "... and {} more sites",
            analysis.sites.len() - args.top
        );
    }
    if args.verbose {
        for s in &shown {
            if let Some(detail) = judged.detail(&s.row.site) {
                stack_text(&mut out, detail);
            }
        }
    }
    for s in analysis
        .sites
        .iter()
        .filter(|s| s.row.verdict == Verdict::Leak)
    {
        let function = judged
            .detail(&s.row.site)
            .map_or_else(String::new, |d| format!(" in {}", d.function));
        let _ = writeln!(out, "leak at {}{function}: {}", s.row.site, s.why);
    }
    out
}

/// The file name of the `index`th (1-based) heap sample of a recording.
pub(super) fn heap_file(index: u64) -> String {
    format!("heap-{index:06}.json")
}

/// The last profile of a recording, as the target served it.
pub(super) const LAST_PROFILE: &str = "heap-last.pb.gz";

/// The `--record DIR` files of a heap watch.
#[derive(Debug)]
struct HeapRecorder {
    dir: PathBuf,
    next: u64,
}

impl HeapRecorder {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError::Input(format!("cannot create --record {}: {e}", dir.display()))
        })?;
        if dir.join(heap_file(1)).exists() || dir.join(snapshot_file(1)).exists() {
            return Err(CliError::Input(format!(
                "--record {} already holds a recording: give a new directory",
                dir.display()
            ))
            .into());
        }
        Ok(HeapRecorder {
            dir: dir.to_owned(),
            next: 1,
        })
    }

    fn write(&self, name: &str, data: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join(name);
        std::fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))
    }

    fn save_sample(&mut self, sample: &HeapSample) -> anyhow::Result<()> {
        let json = serde_json::to_string(sample).context("cannot encode the heap sample")?;
        self.write(&heap_file(self.next), format!("{json}\n").as_bytes())?;
        self.next += 1;
        Ok(())
    }

    fn save_summary(
        &self,
        report: &crate::model::WatchReport,
        table: &str,
        last: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        let json =
            serde_json::to_string_pretty(report).context("cannot encode the watch document")?;
        self.write("summary.json", format!("{json}\n").as_bytes())?;
        self.write("summary.txt", table.as_bytes())?;
        if let Some(raw) = last {
            self.write(LAST_PROFILE, raw)?;
        }
        Ok(())
    }
}
