//! Plain-text renderings of the documents, defined once: the probe serves them
//! (`/debug/tasks?format=text`) and the CLI prints them (`diagtool snapshot --format text`).
//! Columns are aligned with spaces only, so the text reads the same in a terminal, a log or a
//! ticket.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use crate::Snapshot;
use crate::duration::short_secs;

/// `2026-11-27 20:53:20Z` from milliseconds since the Unix epoch.
///
/// # Examples
/// ```
/// assert_eq!(diagtool_model::text::utc(1_764_270_000_000), "2025-11-27 19:00:00Z");
/// ```
pub fn utc(ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replacen('T', " ", 1)
}

/// `512 B`, `11.8 MiB`: byte counts in binary units with one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A snapshot as readable text: process and runtime figures, one row per site (largest first, as
/// in the document), then the per-task detail when the snapshot carries it.
pub fn snapshot(snap: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} at {} (up {}): pid {}, rss {}, {} fds, {} threads; {} workers, {} alive in the \
         runtime, global queue {}",
        snap.service,
        utc(snap.taken_at_ms),
        short_secs(snap.uptime_s),
        snap.process.pid,
        bytes(snap.process.rss_bytes),
        snap.process.open_fds,
        snap.process.threads,
        snap.runtime.workers,
        snap.runtime.alive_tasks,
        snap.runtime.global_queue_depth,
    );
    let _ = writeln!(
        out,
        "tasks: {} live, {} spawned, {} ended\n",
        snap.tasks.live, snap.tasks.spawned_total, snap.tasks.terminated_total,
    );
    let _ = writeln!(
        out,
        "{:>8} {:>10} {:>10} {:>10} {:>10}  spawn site [names]",
        "live", "spawned", "ended", "oldest age", "median age"
    );
    for site in &snap.sites {
        let names = if site.names.is_empty() {
            String::new()
        } else {
            format!(" [{}]", site.names.join(", "))
        };
        let _ = writeln!(
            out,
            "{:>8} {:>10} {:>10} {:>10} {:>10}  {}{}",
            site.live,
            site.spawned_total,
            site.terminated_total,
            short_secs(site.oldest_age_s),
            short_secs(site.median_age_s),
            site.site,
            names
        );
    }
    if let Some(detail) = &snap.tasks_detail {
        let _ = writeln!(out, "\n{:>10} {:>10}  spawn site, name", "task id", "age");
        for task in detail {
            let _ = writeln!(
                out,
                "{:>10} {:>10}  {}, {}",
                task.id,
                short_secs(task.age_s),
                task.site,
                task.name.as_deref().unwrap_or("-")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_text_shows_process_figures_and_one_row_per_site() {
        let text = r#"{"schema":"diagtool.snapshot/v1","service":"shipper","taken_at_ms":1764270000000,"uptime_s":12.5,"process":{"pid":1234,"rss_bytes":12345678,"open_fds":23,"threads":5},"runtime":{"workers":2,"alive_tasks":40,"global_queue_depth":0},"tasks":{"live":40,"spawned_total":1000,"terminated_total":960},"sites":[{"site":"shipper/src/leaklab.rs:88:17","live":16,"spawned_total":16,"terminated_total":0,"oldest_age_s":29.9,"median_age_s":15.0,"names":["leak-poll"]}],"tasks_detail":[{"id":77,"site":"shipper/src/leaklab.rs:88:17","name":"leak-poll","age_s":3.2}]}"#;
        let snap = Snapshot::from_json(text).expect("golden snapshot");
        let out = snapshot(&snap);
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
            .find(|l| l.contains("leaklab.rs:88:17 [leak-poll]"))
            .expect("site row");
        for cell in ["16", "29.9s", "15s"] {
            assert!(row.contains(cell), "{cell} missing in {row}");
        }
        assert!(
            out.contains("77       3.2s  shipper/src/leaklab.rs:88:17, leak-poll"),
            "{out}"
        );
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(12_345_678), "11.8 MiB");
    }
}
