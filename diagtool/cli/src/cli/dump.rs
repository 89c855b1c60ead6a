//! `dump` and `flamegraph`: where tasks are parked.
//!
//! A dump groups tasks by spawn site and identical trace. As folded stacks each group is one line,
//! `site;outermost frame;...;leaf count`, with the spawn site as the root frame, so a flamegraph of
//! it shows who spawned the tasks at the bottom and where they wait at the top.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::commands::write_output;
use super::fmt::{secs, utc};
use super::{CliError, Client, DumpFormat, DumpModeArg};
use crate::model::{DUMP_SCHEMA, Dump, DumpGroup};

/// `diagtool dump`.
pub(super) async fn dump(
    client: &Client,
    output: Option<&Path>,
    format: DumpFormat,
    timeout: Duration,
    mode: DumpModeArg,
) -> anyhow::Result<ExitCode> {
    let (dump, mut text) = client.dump_mode(timeout, mode.query()).await?;
    let rendered = match format {
        DumpFormat::Json => {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text
        }
        DumpFormat::Text => dump_text(&dump),
        DumpFormat::Folded => folded(&dump),
    };
    write_output(output, rendered.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// The dump's groups; when the target sent none, grouped here from its tasks, largest first.
pub(super) fn groups(dump: &Dump) -> Vec<DumpGroup> {
    dump.groups_or_grouped()
}

/// Ages of the tasks of one group: (oldest, youngest), from the dump's per-task entries.
pub(super) fn group_ages(dump: &Dump, group: &DumpGroup) -> Option<(f64, f64)> {
    let ages = dump
        .tasks
        .iter()
        .filter(|t| t.site == group.site && t.trace == group.trace)
        .map(|t| t.age_s);
    ages.fold(None, |acc, age| match acc {
        None => Some((age, age)),
        Some((old, young)) => Some((f64::max(old, age), f64::min(young, age))),
    })
}

/// Groups as text, largest first: count, site, ages, then the trace (leaf last).
pub(super) fn dump_text(dump: &Dump) -> String {
    let groups = groups(dump);
    let mut out = format!(
        "task dump at {}: {} tasks in {} groups\n",
        utc(dump.taken_at_ms),
        dump.tasks
            .len()
            .max(groups.iter().map(|g| g.count as usize).sum()),
        groups.len()
    );
    if let Some(counts) = dump
        .not_traced
        .as_ref()
        .filter(|c| c.unwrapped + c.no_answer > 0)
    {
        out.push_str(&format!(
            "not traced: {} spawned without the probe's wrapper, {} gave no answer in time\n",
            counts.unwrapped, counts.no_answer
        ));
    }
    for g in &groups {
        out.push_str(&format!(
            "\n{} task{} spawned at {}",
            g.count,
            if g.count == 1 { "" } else { "s" },
            g.site
        ));
        if let Some((oldest, youngest)) = group_ages(dump, g) {
            out.push_str(&format!(" (ages {}..{})", secs(youngest), secs(oldest)));
        }
        out.push('\n');
        if g.trace.is_empty() {
            out.push_str("    (no trace)\n");
        }
        for frame in &g.trace {
            out.push_str("    ");
            out.push_str(frame);
            out.push('\n');
        }
    }
    out
}

/// Folded stacks, one line per group (identical lines merged), sorted.
pub(super) fn folded(dump: &Dump) -> String {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for g in groups(dump) {
        let stack: Vec<String> = std::iter::once(&g.site)
            .chain(g.trace.iter())
            .map(|f| folded_frame(f))
            .collect();
        *lines.entry(stack.join(";")).or_default() += g.count;
    }
    lines
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}\n"))
        .collect()
}

/// A frame made safe for the folded format: no `;` (the separator) and no line breaks.
fn folded_frame(frame: &str) -> String {
    let cleaned: String = frame
        .chars()
        .map(|c| match c {
            ';' => ',',
            '\n' | '\r' | '\t' => ' ',
            c => c,
        })
        .collect();
    if cleaned.trim().is_empty() {
        "?".to_owned()
    } else {
        cleaned.trim().to_owned()
    }
}

/// `diagtool flamegraph INPUT -o OUT.svg`.
pub(super) fn flamegraph(input: &Path, output: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(input)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", input.display())))?;
    let folded_text = if text.trim_start().starts_with('{') {
        let dump = Dump::from_json(&text)
            .map_err(|e| CliError::Input(format!("{}: {e}", input.display())))?;
        folded(&dump)
    } else {
        check_folded(&text).map_err(|e| CliError::Input(format!("{}: {e}", input.display())))?;
        text
    };
    if folded_text.trim().is_empty() {
        return Err(CliError::Input(format!("{}: no tasks to draw", input.display())).into());
    }
    let svg = draw(&folded_text, "Where tasks are parked", "tasks")?;
    write_output(Some(output), &svg)?;
    Ok(ExitCode::SUCCESS)
}

/// Checks that every non-empty line is `frames count`.
fn check_folded(text: &str) -> Result<(), String> {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let count = line.rsplit_once(' ').map(|(_, c)| c);
        if count.is_none_or(|c| c.parse::<u64>().is_err()) {
            return Err(format!(
                "line {} is neither part of a {DUMP_SCHEMA} document nor folded stacks \
                 (`frame;frame count`): {:?}",
                i + 1,
                line.chars().take(80).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// Draws folded stacks as an SVG flamegraph.
pub(super) fn draw(folded: &str, title: &str, count_name: &str) -> anyhow::Result<Vec<u8>> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_owned();
    options.count_name = count_name.to_owned();
    options.deterministic = true;
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut svg)
        .context("cannot draw the flamegraph")?;
    Ok(svg)
}

/// Draws a gzipped pprof CPU profile as an SVG flamegraph, weighted by its first sample value
/// (the sample count of a CPU profile).
pub(super) fn profile_flamegraph(profile: &[u8], svg: &Path) -> anyhow::Result<()> {
    let decoded = crate::pprof::decode(profile)
        .map_err(|e| CliError::Input(format!("the target's profile cannot be read: {e}")))?;
    let folded = crate::pprof::to_folded(&decoded);
    if folded.trim().is_empty() {
        return Err(CliError::Input(format!(
            "cannot draw {}: the profile holds no samples (was the target idle?)",
            svg.display()
        ))
        .into());
    }
    let unit = crate::pprof::sample_type_name(&decoded, 0).unwrap_or_else(|| "samples".to_owned());
    let drawn = draw(&folded, "CPU profile", &unit)?;
    write_output(Some(svg), &drawn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DumpTask;

    fn dump() -> Dump {
        let task = |id, site: &str, trace: &[&str], age_s| DumpTask {
            id,
            site: site.into(),
            name: None,
            age_s,
            trace: trace.iter().map(|s| (*s).to_owned()).collect(),
            not_traced: None,
        };
        let park = [
            "shipper::leaklab::park",
            "tokio::sync::notify::Notified::poll",
        ];
        let io = ["shipper::source::read;loop", "tokio::io::poll_read"];
        Dump {
            schema: DUMP_SCHEMA.into(),
            taken_at_ms: 1_764_270_000_000,
            tasks: vec![
                task(1, "leak.rs:8:5", &park, 30.0),
                task(2, "leak.rs:8:5", &park, 1.0),
                task(3, "src.rs:2:2", &io, 99.0),
            ],
            groups: vec![],
            mode: None,
            not_traced: None,
        }
    }

    #[test]
    fn the_text_says_how_many_tasks_were_not_traced() {
        let mut d = dump();
        assert!(!dump_text(&d).contains("not traced"));
        d.not_traced = Some(crate::model::NotTraced {
            unwrapped: 2,
            no_answer: 1,
        });
        let text = dump_text(&d);
        assert!(
            text.contains("not traced: 2 spawned without the probe's wrapper, 1 gave no answer"),
            "{text}"
        );
    }

    #[test]
    fn tasks_are_grouped_when_the_target_sent_no_groups() {
        let g = groups(&dump());
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].count, g[0].site.as_str()), (2, "leak.rs:8:5"));
        assert_eq!(group_ages(&dump(), &g[0]), Some((30.0, 1.0)));
    }

    #[test]
    fn folded_lines_root_at_the_site_and_escape_separators() {
        let text = folded(&dump());
        assert_eq!(
            text,
            "leak.rs:8:5;shipper::leaklab::park;tokio::sync::notify::Notified::poll 2\n\
             src.rs:2:2;shipper::source::read,loop;tokio::io::poll_read 1\n"
        );
        assert!(check_folded(&text).is_ok());
    }

    #[test]
    fn text_shows_counts_sites_ages_and_frames() {
        let text = dump_text(&dump());
        assert!(text.contains("3 tasks in 2 groups"), "{text}");
        assert!(
            text.contains("2 tasks spawned at leak.rs:8:5 (ages 1s..30s)"),
            "{text}"
        );
        assert!(
            text.contains("    tokio::sync::notify::Notified::poll\n"),
            "{text}"
        );
    }

    #[test]
    fn folded_check_names_the_bad_line() {
        let err = check_folded("a;b 3\nnot folded\n").expect_err("line 2 is bad");
        assert!(err.contains("line 2"), "{err}");
    }
}
