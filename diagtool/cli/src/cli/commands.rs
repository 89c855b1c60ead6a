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
        SnapshotFormat::Text => snapshot_text(&snap),
    };
    write_output(output, rendered.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// A snapshot as readable text: process and runtime figures, then one row per site.
pub(super) fn snapshot_text(snap: &Snapshot) -> String {
    let mut out = format!(
        "{} at {} (up {}): pid {}, rss {}, {} fds, {} threads; {} workers, {} alive in the runtime, \
         global queue {}\ntasks: {} live, {} spawned, {} ended\n",
        snap.service,
        utc(snap.taken_at_ms),
        secs(snap.uptime_s),
        snap.process.pid,
        bytes(snap.process.rss_bytes),
        snap.process.open_fds,
        snap.process.threads,
        snap.runtime.workers,
        snap.runtime.alive_tasks,
        snap.runtime.global_queue_depth,
        snap.tasks.live,
        snap.tasks.spawned_total,
        snap.tasks.terminated_total,
    );
    let mut table = table(&[
        "spawn site",
        "live",
        "spawned",
        "ended",
        "oldest age",
        "median age",
        "names",
    ]);
    for s in &snap.sites {
        table.add_row(vec![
            s.site.clone(),
            s.live.to_string(),
            s.spawned_total.to_string(),
            s.terminated_total.to_string(),
            secs(s.oldest_age_s),
            secs(s.median_age_s),
            s.names.join(", "),
        ]);
    }
    right_align(&mut table, &[1, 2, 3, 4, 5]);
    out.push_str(&table.to_string());
    out.push('\n');
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_text_shows_process_figures_and_one_row_per_site() {
        let text = r#"{"schema":"diagtool.snapshot/v1","service":"shipper","taken_at_ms":1764270000000,"uptime_s":12.5,"process":{"pid":1234,"rss_bytes":12345678,"open_fds":23,"threads":5},"runtime":{"workers":2,"alive_tasks":40,"global_queue_depth":0},"tasks":{"live":40,"spawned_total":1000,"terminated_total":960},"sites":[{"site":"shipper/src/leaklab.rs:88:17","live":16,"spawned_total":16,"terminated_total":0,"oldest_age_s":29.9,"median_age_s":15.0,"names":["leak-poll"]}]}"#;
        let snap = Snapshot::from_json(text).expect("golden snapshot");
        let out = snapshot_text(&snap);
        assert!(
            out.starts_with(
                "shipper at 2025-11-27 19:00:00Z (up 12.5s): pid 1234, rss 11.8 MiB, 23 fds"
            ),
            "{out}"
        );
        assert!(
            out.contains("tasks: 40 live, 1000 spawned, 960 ended"),
            "{out}"
        );
        let row = out
            .lines()
            .find(|l| l.contains("leaklab.rs:88:17"))
            .expect("site row");
        for cell in ["16", "29.9s", "15s", "leak-poll"] {
            assert!(row.contains(cell), "{cell} missing in {row}");
        }
    }
}
