//! The small commands: `snapshot`, `diff` and `profile`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use comfy_table::{CellAlignment, Table, presets};

use super::fmt::{bytes, secs, utc};
use super::{CliError, Client, SnapshotFormat};
use crate::model::{Snapshot, SnapshotDiff};

/// `diagtool snapshot`.
pub(super) async fn snapshot(
    client: &Client,
    output: Option<&Path>,
    format: SnapshotFormat,
) -> anyhow::Result<ExitCode> {
    let (snap, text) = client.snapshot().await?;
    let rendered = match format {
        SnapshotFormat::Json => {
            let mut text = text;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text
        }
        SnapshotFormat::Text => crate::model::text::snapshot(&snap),
    };
    write_output(output, rendered.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `diagtool diff BASE.json NEW.json`.
pub(super) fn diff(base: &Path, new: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let base_snap = read_snapshot(base)?;
    let new_snap = read_snapshot(new)?;
    let diff = crate::analysis::diff(&base_snap, &new_snap);
    let rendered = if json {
        format!(
            "{}\n",
            serde_json::to_string(&diff).context("cannot encode the diff")?
        )
    } else {
        diff_text(&diff)
    };
    write_output(None, rendered.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn diff_text(diff: &SnapshotDiff) -> String {
    let mut out = format!(
        "base {} -> new {} ({}{}): {} -> {} live tasks ({:+})\n",
        utc(diff.base_taken_at_ms),
        utc(diff.new_taken_at_ms),
        if diff.span_s < 0.0 { "-" } else { "+" },
        secs(diff.span_s.abs()),
        diff.total.base,
        diff.total.new,
        diff.total.delta,
    );
    if diff.restarted {
        out.push_str(
            "note: the target restarted in between; spawned/ended count since the restart\n",
        );
    }
    let mut table = table(&[
        "spawn site",
        "base",
        "new",
        "delta",
        "spawned",
        "ended",
        "oldest age",
    ]);
    for s in &diff.sites {
        table.add_row(vec![
            s.site.clone(),
            s.base_live.to_string(),
            s.new_live.to_string(),
            format!("{:+}", s.delta),
            format!("{:+}", s.spawned),
            format!("{:+}", s.terminated),
            secs(s.oldest_age_s),
        ]);
    }
    right_align(&mut table, &[1, 2, 3, 4, 5, 6]);
    out.push_str(&table.to_string());
    out.push('\n');
    out
}

/// Reads a snapshot file; a missing, malformed or future-schema file is an input error naming it.
pub(super) fn read_snapshot(path: &Path) -> anyhow::Result<Snapshot> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Input(format!("cannot read {}: {e}", path.display())))?;
    Snapshot::from_json(&text)
        .map_err(|e| CliError::Input(format!("{}: {e}", path.display())).into())
}

/// `diagtool profile`.
pub(super) async fn profile(
    client: &Client,
    seconds: u64,
    output: &Path,
    flamegraph: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    if seconds == 0 || seconds > 60 {
        return Err(
            CliError::Input(format!("--seconds {seconds} is out of range: give 1 to 60")).into(),
        );
    }
    eprintln!("diagtool: profiling {} for {seconds}s", client.target());
    let profile = client.profile(seconds).await?;
    write_output(Some(output), &profile)?;
    eprintln!(
        "diagtool: wrote {} ({})",
        output.display(),
        bytes(profile.len() as u64)
    );
    if let Some(svg) = flamegraph {
        super::dump::profile_flamegraph(&profile, svg)?;
        eprintln!("diagtool: wrote {}", svg.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes to `path`, or to standard output when `None`.
pub(super) fn write_output(path: Option<&Path>, data: &[u8]) -> anyhow::Result<()> {
    match path {
        Some(path) => {
            std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(data)
                .and_then(|()| stdout.flush())
                .context("cannot write to standard output")
        }
    }
}

/// A table with our look: condensed UTF-8 borders, the given header.
pub(super) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    table
}

/// Right-aligns the numeric columns.
pub(super) fn right_align(table: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(column) = table.column_mut(i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}
