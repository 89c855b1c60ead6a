//! What a person sees: a progress line while the soak runs (stderr, in place on a terminal) and a
//! summary table at the end (stdout, before the JSON document).

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};

use comfy_table::{ContentArrangement, Table};

use super::judge::Judgement;

/// The figures of one progress line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Profile name.
    pub profile: String,
    /// Seconds since writing started.
    pub elapsed_s: f64,
    /// Seconds of writing in all.
    pub duration_s: f64,
    /// Phase: `writing`, `draining`.
    pub phase: &'static str,
    /// Lines written.
    pub written: u64,
    /// Entries the receiver accepted (duplicates included).
    pub received: u64,
    /// Live tasks at the last snapshot.
    pub tasks: Option<u64>,
    /// RSS at the last snapshot, MiB.
    pub rss_mib: Option<f64>,
    /// Open fds at the last snapshot.
    pub fds: Option<u64>,
    /// The last `/health` status.
    pub health: Option<String>,
    /// The fault in force, if any.
    pub fault: Option<String>,
    /// Failed samples so far.
    pub sample_errors: u64,
}

impl Progress {
    /// The line, without a newline.
    pub fn line(&self) -> String {
        let mut s = format!(
            "soak {} {} {:.0}/{:.0}s  written {}  received {}",
            self.profile, self.phase, self.elapsed_s, self.duration_s, self.written, self.received
        );
        if let Some(t) = self.tasks {
            let _ = write!(s, "  tasks {t}");
        }
        if let Some(r) = self.rss_mib {
            let _ = write!(s, "  rss {r:.1}MiB");
        }
        if let Some(f) = self.fds {
            let _ = write!(s, "  fds {f}");
        }
        if let Some(h) = &self.health {
            let _ = write!(s, "  health {h}");
        }
        if let Some(f) = &self.fault {
            let _ = write!(s, "  fault {f}");
        }
        if self.sample_errors > 0 {
            let _ = write!(s, "  sample errors {}", self.sample_errors);
        }
        s
    }
}

/// Writes progress lines to stderr: redrawn in place on a terminal, one per call otherwise.
#[derive(Debug)]
pub struct ProgressWriter {
    tty: bool,
    drawn: bool,
}

impl Default for ProgressWriter {
    fn default() -> Self {
        ProgressWriter {
            tty: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }
}

impl ProgressWriter {
    /// Shows a progress line.
    pub fn show(&mut self, progress: &Progress) {
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{}", progress.line())
        } else {
            writeln!(err, "{}", progress.line())
        };
        let _ = err.flush();
        self.drawn = true;
    }

    /// Ends the in-place line, so what follows starts on its own line.
    pub fn finish(&mut self) {
        if self.tty && self.drawn {
            let _ = writeln!(std::io::stderr());
        }
        self.drawn = false;
    }
}

/// The summary: one row per check, then the figures.
pub fn table(judgement: &Judgement) -> String {
    let mut checks = Table::new();
    checks
        .load_preset(comfy_table::presets::ASCII_MARKDOWN)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(120)
        .set_header(vec!["check", "result", "detail"]);
    for c in &judgement.checks {
        checks.add_row(vec![
            c.name.to_owned(),
            if c.passed { "pass" } else { "FAIL" }.to_owned(),
            // A detail may carry the shipper's log; its first line is the finding, the log went
            // to stderr.
            c.detail.lines().next().unwrap_or_default().to_owned(),
        ]);
    }
    let r = &judgement.report;
    let mut out = format!(
        "soak {}: {} ({:.0}s)\n\n{checks}\n",
        r.profile,
        if r.passed { "PASSED" } else { "FAILED" },
        r.duration_s
    );
    if let Some(long) = r.long_polls {
        let _ = writeln!(
            out,
            "polls of 10 ms or more in the shipper's runtime: {long} (each held a worker that long)"
        );
    }
    let growing: Vec<_> = judgement
        .analysis
        .sites
        .iter()
        .filter(|s| s.row.growth_per_min.abs() > 0.0 || s.row.delta != 0)
        .take(10)
        .collect();
    if !growing.is_empty() {
        let mut sites = Table::new();
        sites
            .load_preset(comfy_table::presets::ASCII_MARKDOWN)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_width(120)
            .set_header(vec![
                "spawn site",
                "live",
                "delta",
                "growth/min",
                "step",
                "oldest",
                "verdict",
            ]);
        for s in growing {
            let row = &s.row;
            sites.add_row(vec![
                row.site.clone(),
                row.live.to_string(),
                format!("{:+}", row.delta),
                format!("{:.1}", row.growth_per_min),
                row.step
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                format!("{:.0}s", row.oldest_age_s),
                row.verdict.to_string(),
            ]);
        }
        let _ = write!(out, "\n{sites}\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_each_check_with_the_first_line_of_its_detail() {
        use crate::model::{SOAK_SCHEMA, SoakReport};
        use crate::soak::judge::CheckResult;
        let judgement = Judgement {
            checks: vec![
                CheckResult {
                    name: "shipper_start",
                    passed: false,
                    detail: "the shipper exited (2)\nLOG LINE".into(),
                },
                CheckResult {
                    name: "delivery",
                    passed: true,
                    detail: "10 of 10".into(),
                },
            ],
            analysis: crate::analysis::analyze(&[], &Default::default()),
            report: SoakReport {
                schema: SOAK_SCHEMA.into(),
                profile: "steady".into(),
                passed: false,
                duration_s: 60.0,
                lines_written: 10,
                lines_delivered: 10,
                duplicates: 0,
                tasks_growth_per_min: 0.0,
                rss_growth_mib_per_min: 0.0,
                fds_growth_per_min: 0.0,
                leaks: vec![],
                failures: vec![],
                long_polls: None,
            },
        };
        let text = table(&judgement);
        assert!(text.starts_with("soak steady: FAILED (60s)"), "{text}");
        assert!(
            text.contains("| shipper_start | FAIL   | the shipper exited (2) |"),
            "{text}"
        );
        assert!(
            text.contains("| delivery      | pass   | 10 of 10"),
            "{text}"
        );
        assert!(!text.contains("LOG LINE"));
    }

    #[test]
    fn progress_line_shows_what_is_known() {
        let mut p = Progress {
            profile: "steady".into(),
            elapsed_s: 12.4,
            duration_s: 60.0,
            phase: "writing",
            written: 2480,
            received: 2400,
            ..Default::default()
        };
        assert_eq!(
            p.line(),
            "soak steady writing 12/60s  written 2480  received 2400"
        );
        p.tasks = Some(41);
        p.rss_mib = Some(23.45);
        p.fault = Some("503".into());
        p.sample_errors = 1;
        let line = p.line();
        assert!(
            line.contains("tasks 41  rss 23.4MiB") || line.contains("rss 23.5MiB"),
            "{line}"
        );
        assert!(line.ends_with("fault 503  sample errors 1"), "{line}");
    }
}
