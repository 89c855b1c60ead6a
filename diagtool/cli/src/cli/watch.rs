//! `diagtool watch`: sample the target every interval, analyse, and show the growth table.
//!
//! On a terminal the table is redrawn in place under a header line (target, samples, span, total
//! live, overall verdict); piped, each frame is appended. With `--json` the frames go to standard
//! error and standard output carries only the final `diagtool.watch/v1` document. A failed sample is
//! retried a few times within the interval and every failure is counted in `errors`; only a target
//! that never answered ends the watch with exit 3. Ctrl-C ends the watch like `--duration` does:
//! with the final summary. `--record DIR` keeps every snapshot, the summary and, the first time a
//! leak shows, one task dump, which `diagtool report DIR` turns into a report.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{ColumnConstraint, ContentArrangement, Width};

use super::commands::{right_align, table};
use super::fmt::{rate, secs};
use super::pacing::Pacing;
use super::{CliError, Client, WatchArgs};
use crate::analysis::{Analysis, Options, analyze};
use crate::model::{Overall, Snapshot, Verdict};

/// Attempts per sample before it counts as missed.
const ATTEMPTS: u32 = 3;
/// Timeout of the dump fetched into a recording.
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Dump fetches tried at most, over the watch, for a recording.
const DUMP_TRIES: u32 = 3;

/// `diagtool watch`.
pub(super) async fn watch(client: &Client, args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let options = options(args)?;
    let mut recorder = args.record.as_deref().map(Recorder::create).transpose()?;
    let mut view = View::new(args.json, args.top, client.target());
    let interval = args.interval.0;
    let mut pacing = Pacing::new(interval, args.duration.map(|d| d.0));
    let pause = pacing.pause;

    let mut snaps: Vec<Snapshot> = Vec::new();
    let mut errors = 0u64;
    let mut last_error: Option<CliError> = None;
    let mut dump_tries = 0u32;
    while let Some(ticks) = pacing.next().await {
        let outcome = match pacing.unless_interrupted(sample(client, pause)).await {
            Some(outcome) => outcome,
            None => break,
        };
        errors += u64::from(outcome.failures);
        match outcome.result {
            Ok((snap, text)) => {
                if let Some(rec) = recorder.as_mut() {
                    rec.save_snapshot(&text)?;
                }
                snaps.push(snap);
            }
            Err(err) if snaps.is_empty() => return Err(err.into()),
            Err(err) => {
                view.note(&format!(
                    "sample {ticks} failed after {ATTEMPTS} attempts: {err}"
                ))?;
                last_error = Some(err);
            }
        }
        let analysis = analyze(&snaps, &options);
        view.frame(&analysis, errors, false)?;
        if let Some(rec) = recorder.as_mut()
            && analysis.verdict() == Overall::Leak
            && !rec.has_dump
            && dump_tries < DUMP_TRIES
        {
            dump_tries += 1;
            let fetched = match pacing.unless_interrupted(client.dump(DUMP_TIMEOUT)).await {
                Some(fetched) => fetched,
                None => break,
            };
            match fetched {
                Ok((_, text)) => rec.save_dump(&text)?,
                Err(err) => view.note(&format!("task dump for the recording failed: {err}"))?,
            }
        }
    }

    if snaps.is_empty() {
        return Err(last_error
            .unwrap_or_else(|| CliError::Unreachable {
                target: client.target().to_owned(),
                reason: "stopped before the first sample".to_owned(),
            })
            .into());
    }
    let analysis = analyze(&snaps, &options);
    let summary = view.frame(&analysis, errors, true)?;
    let report = analysis.to_report(client.target(), errors);
    if let Some(rec) = recorder.as_ref() {
        rec.save_summary(&report, &summary)?;
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

/// The analysis options from the flags; a bad `--threshold` is an input error.
pub(super) fn options(args: &WatchArgs) -> Result<Options, CliError> {
    if !args.threshold.is_finite() || args.threshold < 0.0 {
        return Err(CliError::Input(format!(
            "--threshold {} is not a growth rate: give tasks per minute, 0 or more",
            args.threshold
        )));
    }
    Ok(Options {
        threshold_per_min: args.threshold,
        ..Options::default()
    })
}

/// What one sample produced: the snapshot (or the last error) and how many attempts failed.
pub(super) struct Outcome {
    pub(super) result: Result<(Snapshot, String), CliError>,
    pub(super) failures: u32,
}

/// Fetches a snapshot, retrying up to [`ATTEMPTS`] times with `pause` in between.
pub(super) async fn sample(client: &Client, pause: Duration) -> Outcome {
    let mut failures = 0;
    loop {
        match client.snapshot().await {
            Ok(found) => {
                return Outcome {
                    result: Ok(found),
                    failures,
                };
            }
            Err(err) => {
                failures += 1;
                if failures >= ATTEMPTS {
                    return Outcome {
                        result: Err(err),
                        failures,
                    };
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Where frames go and how: in place on a terminal, appended otherwise.
pub(super) struct View {
    to_stderr: bool,
    in_place: bool,
    top: usize,
    target: String,
}

impl View {
    pub(super) fn new(json: bool, top: usize, target: &str) -> Self {
        let in_place = if json {
            std::io::stderr().is_terminal()
        } else {
            std::io::stdout().is_terminal()
        };
        View {
            to_stderr: json,
            in_place,
            top,
            target: target.to_owned(),
        }
    }

    fn write(&self, text: &str) -> anyhow::Result<()> {
        let result = if self.to_stderr {
            let mut err = std::io::stderr().lock();
            err.write_all(text.as_bytes()).and_then(|()| err.flush())
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        };
        result.context("cannot write the growth table")
    }

    /// A one-line note between frames (a failed sample); kept visible under a redrawn table.
    pub(super) fn note(&self, text: &str) -> anyhow::Result<()> {
        if self.in_place {
            return Ok(());
        }
        self.write(&format!("note: {text}\n"))
    }

    /// Shows an already rendered frame: redrawn in place on a terminal, appended otherwise.
    pub(super) fn show(&self, text: &str) -> anyhow::Result<()> {
        if self.in_place {
            self.write(&format!("\x1b[H\x1b[2J{text}"))
        } else {
            self.write(&format!("{text}\n"))
        }
    }

    /// Where this view draws, so a table can fit it.
    pub(super) fn screen(&self) -> Screen {
        match (self.in_place, self.to_stderr) {
            (false, _) => Screen::Piped,
            (true, false) => Screen::Stdout,
            (true, true) => Screen::Stderr,
        }
    }

    /// Draws one frame and returns it without terminal control codes (for the recording).
    fn frame(&mut self, analysis: &Analysis, errors: u64, last: bool) -> anyhow::Result<String> {
        let screen = match (self.in_place, self.to_stderr) {
            (false, _) => Screen::Piped,
            (true, false) => Screen::Stdout,
            (true, true) => Screen::Stderr,
        };
        let text = render(analysis, &self.target, errors, self.top, last, screen);
        if self.in_place {
            // Home and clear, then the new frame: a live view that keeps no stale rows.
            self.write(&format!("\x1b[H\x1b[2J{text}"))?;
        } else {
            self.write(&format!("{text}\n"))?;
        }
        Ok(text)
    }
}

/// Where a frame is drawn, so the table fits the terminal it is shown on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Screen {
    /// Not a terminal: no wrapping, no control codes.
    Piped,
    /// The terminal on standard output.
    Stdout,
    /// The terminal on standard error (`--json`).
    Stderr,
}

impl Screen {
    /// Sets `table` up to fit this screen.
    pub(super) fn fit(self, table: &mut comfy_table::Table) {
        match self {
            Screen::Piped => {
                table.force_no_tty();
            }
            Screen::Stdout => {
                table.set_content_arrangement(ContentArrangement::Dynamic);
            }
            Screen::Stderr => {
                // The terminal size is looked up on standard output, which carries the JSON
                // here: fit to $COLUMNS when the shell exports it, else let the terminal wrap.
                table.use_stderr();
                if let Some(width) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
                    table
                        .set_width(width)
                        .set_content_arrangement(ContentArrangement::Dynamic);
                }
            }
        }
    }
}

/// The header line, the growth table (top `top` sites) and a line per leaking site saying why.
pub(super) fn render(
    analysis: &Analysis,
    target: &str,
    errors: u64,
    top: usize,
    last: bool,
    screen: Screen,
) -> String {
    let verdict = match analysis.verdict() {
        Overall::Leak => "LEAK",
        Overall::Ok => "ok",
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "{}{target}: {} samples over {}, {} live tasks ({:+}, {}/min), verdict {verdict}",
        if last { "final: " } else { "" },
        analysis.samples,
        secs(analysis.span_s),
        analysis.total.last,
        analysis.total.last as i64 - analysis.total.first as i64,
        rate(analysis.total.growth_per_min),
    );
    if errors > 0 {
        let _ = write!(out, ", {errors} failed attempts");
    }
    if let Some(restart) = analysis.restarts.last() {
        let _ = write!(
            out,
            "\nthe target restarted before sample {} (uptime {}); analysing the {} samples since",
            restart.sample + 1,
            secs(restart.uptime_s),
            analysis.analysed
        );
    }
    out.push('\n');
    let mut t = table(&[
        "spawn site",
        "live",
        "delta since first",
        "growth/min",
        "step pattern",
        "oldest age",
        "verdict",
    ]);
    screen.fit(&mut t);
    // The spawn site is what the operator reads: keep it whole before wrapping other columns.
    let longest = analysis
        .sites
        .iter()
        .take(top)
        .map(|s| s.row.site.chars().count())
        .max();
    if let (Some(longest), Some(column)) = (longest, t.column_mut(0)) {
        let keep = u16::try_from(longest.min(48) + 2).unwrap_or(50); // + padding
        column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(keep)));
    }
    for s in analysis.sites.iter().take(top) {
        let r = &s.row;
        t.add_row(vec![
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
    right_align(&mut t, &[1, 2, 3, 5]);
    out.push_str(&t.to_string());
    out.push('\n');
    if analysis.sites.len() > top {
        let _ = writeln!(out, "... and {} more sites", analysis.sites.len() - top);
    }
    for s in analysis
        .sites
        .iter()
        .filter(|s| s.row.verdict == Verdict::Leak)
    {
        let _ = writeln!(out, "leak at {}: {}", s.row.site, s.why);
    }
    out
}

/// The `--record DIR` files: `snapshot-NNNNNN.json` per sample, `dump.json`, `summary.json`,
/// `summary.txt`.
#[derive(Debug)]
pub(super) struct Recorder {
    dir: PathBuf,
    next: u64,
    has_dump: bool,
}

/// The file name of the `index`th (1-based) snapshot of a recording.
pub(super) fn snapshot_file(index: u64) -> String {
    format!("snapshot-{index:06}.json")
}

impl Recorder {
    pub(super) fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError::Input(format!("cannot create --record {}: {e}", dir.display()))
        })?;
        if dir.join(snapshot_file(1)).exists() {
            return Err(CliError::Input(format!(
                "--record {} already holds a recording: give a new directory",
                dir.display()
            ))
            .into());
        }
        Ok(Recorder {
            dir: dir.to_owned(),
            next: 1,
            has_dump: false,
        })
    }

    pub(super) fn write(&self, name: &str, data: &str) -> anyhow::Result<()> {
        let path = self.dir.join(name);
        std::fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))
    }

    pub(super) fn save_snapshot(&mut self, text: &str) -> anyhow::Result<()> {
        self.write(&snapshot_file(self.next), text)?;
        self.next += 1;
        Ok(())
    }

    fn save_dump(&mut self, text: &str) -> anyhow::Result<()> {
        self.write("dump.json", text)?;
        self.has_dump = true;
        Ok(())
    }

    pub(super) fn save_summary(
        &self,
        report: &crate::model::WatchReport,
        table: &str,
    ) -> anyhow::Result<()> {
        let json =
            serde_json::to_string_pretty(report).context("cannot encode the watch document")?;
        self.write("summary.json", &format!("{json}\n"))?;
        self.write("summary.txt", table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SNAPSHOT_SCHEMA, SiteStats, TaskTotals};

    fn snap(at_s: u64, uptime: f64, sites: &[(&str, u64)]) -> Snapshot {
        Snapshot {
            schema: SNAPSHOT_SCHEMA.into(),
            service: "svc".into(),
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
                .map(|&(site, live)| SiteStats {
                    site: site.into(),
                    live,
                    oldest_age_s: uptime,
                    ..Default::default()
                })
                .collect(),
            tasks_detail: None,
        }
    }

    #[test]
    fn frame_has_header_top_rows_overflow_restart_and_leak_lines() {
        let mut snaps = vec![snap(0, 900.0, &[("old.rs:1:1", 9)])];
        for i in 0..10u64 {
            snaps.push(snap(
                10 + i,
                1.0 + i as f64,
                &[
                    ("leak.rs:1:1", 2 * (i + 1)),
                    ("a.rs:1:1", 3),
                    ("b.rs:1:1", 1),
                ],
            ));
        }
        let analysis = analyze(&snaps, &Options::default());
        let text = render(
            &analysis,
            "http://127.0.0.1:6060",
            2,
            2,
            true,
            Screen::Piped,
        );
        let first = text.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            "final: http://127.0.0.1:6060: 11 samples over 9s, 24 live tasks (+18, +120.0/min), verdict LEAK, 2 failed attempts"
        );
        assert!(
            text.contains(
                "the target restarted before sample 2 (uptime 1s); analysing the 10 samples since"
            ),
            "{text}"
        );
        assert!(text.contains("... and 1 more sites"), "{text}");
        assert!(text.contains("leak at leak.rs:1:1: floor rose"), "{text}");
        assert!(text.contains("+2/1s"), "{text}");
        assert!(!text.contains("b.rs:1:1"), "only the top 2 rows: {text}");
    }
}
