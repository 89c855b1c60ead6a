//! A real recording replayed by prefix through `diagtool report`: what an operator sees when they
//! report on a watch that is still running, one sample later each time.
//!
//! `fixtures/shipper-leak-16-per-30s/` is a `diagtool watch --record` directory (snapshots only)
//! of the real shipper, recorded with this project's release binaries:
//!
//! ```text
//! shipper --main-addr 127.0.0.1:18471 --debug-addr 127.0.0.1:16071 --leak-lab poll-spawn
//! diagtool --target http://127.0.0.1:16071 watch --interval 5s --duration 245s --record DIR
//! ```
//!
//! The leak lab's default is the original incident's +16 tasks every 30 s, the first batch one
//! period after start; the watch started half a second after the shipper. Before the fix this
//! recording read `ok` until 35 s, `LEAK` at 40-45 s (one step seen), `ok` at 50-55 s
//! ("plateau") and `LEAK` from 60 s.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use diagtool::model::Snapshot;
use support::*;

const LIMIT: Duration = Duration::from_secs(30);
const LEAKLAB_SITE: &str = "shipper/src/leaklab.rs:272:13";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/shipper-leak-16-per-30s")
}

fn snapshot_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture())
        .expect("the fixture recording")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// One prefix's report: seconds since the first sample, the overall verdict line, the leak-lab
/// site's verdict cell and its reason.
struct Prefix {
    t_s: f64,
    leak: bool,
    site_verdict: String,
    why: String,
}

fn report_on_prefix(files: &[PathBuf], n: usize, first_ms: u64) -> Prefix {
    let dir = tempfile::tempdir().expect("temp dir");
    for f in &files[..n] {
        let name = f.file_name().expect("a file name");
        std::fs::copy(f, dir.path().join(name)).expect("copy a snapshot");
    }
    let arg = dir.path().to_str().expect("utf-8 temp path");
    let out = diagtool(&["report", arg], LIMIT);
    assert_eq!(out.status.code(), Some(0), "prefix {n}: {}", stderr(&out));
    let md = read(&dir.path().join("report.md"));
    let last = Snapshot::from_json(&read(&files[n - 1])).expect("snapshot parses");
    let leak = md.contains("**Verdict: LEAK**");
    assert!(
        leak || md.contains("**Verdict: ok**"),
        "prefix {n}: no verdict line:\n{md}"
    );
    // `| `site` | live | delta | growth | R² | step | oldest | verdict | why |`
    let row = md
        .lines()
        .find(|l| l.starts_with(&format!("| `{LEAKLAB_SITE}`")));
    let cells: Vec<String> = row
        .map(|r| {
            r.trim_end_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .unwrap_or_default();
    Prefix {
        t_s: (last.taken_at_ms - first_ms) as f64 / 1000.0,
        leak,
        site_verdict: cells.get(7).cloned().unwrap_or_else(|| "absent".into()),
        why: cells.get(8).cloned().unwrap_or_default(),
    }
}

#[test]
fn recorded_16_per_30s_leak_replayed_by_prefix_never_flips_back_and_leaks_by_its_second_step() {
    let files = snapshot_files();
    assert!(
        files.len() >= 40,
        "the fixture holds {} snapshots",
        files.len()
    );
    let first = Snapshot::from_json(&read(&files[0])).expect("snapshot parses");
    let seq: Vec<Prefix> = (1..=files.len())
        .map(|n| report_on_prefix(&files, n, first.taken_at_ms))
        .collect();
    let shown: String = seq
        .iter()
        .map(|p| {
            format!(
                "\n  {:>6.1}s {} {:<10} {}",
                p.t_s,
                if p.leak { "LEAK" } else { "ok  " },
                p.site_verdict,
                p.why
            )
        })
        .collect();
    // Shown with `--nocapture`: the sequence an operator would have seen.
    println!("prefix verdicts:{shown}");
    let first_leak = seq
        .iter()
        .position(|p| p.leak)
        .unwrap_or_else(|| panic!("never a leak:{shown}"));
    assert!(
        seq[first_leak..]
            .iter()
            .all(|p| p.leak && p.site_verdict == "**leak**"),
        "leak, then not:{shown}"
    );
    assert!(
        seq[first_leak].t_s <= 65.0,
        "a leak only from {:.1}s:{shown}",
        seq[first_leak].t_s
    );
    // The site's live count: a leak needs two steps of it (the site appearing is the first).
    let steps_before = |n: usize| {
        let live = |f: &PathBuf| {
            Snapshot::from_json(&read(f))
                .expect("snapshot parses")
                .sites
                .iter()
                .find(|s| s.site == LEAKLAB_SITE)
                .map_or(0, |s| s.live)
        };
        files[..=n]
            .windows(2)
            .filter(|w| live(&w[0]) != live(&w[1]))
            .count()
    };
    assert!(
        steps_before(first_leak) >= 2,
        "a leak after one step:{shown}"
    );
}
