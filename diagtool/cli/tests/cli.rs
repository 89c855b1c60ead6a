//! End-to-end tests of the `diagtool` binary against a fake target on 127.0.0.1: exit codes,
//! the watch verdict and document, recordings and reports, diff, dump, flamegraph and the help text.

mod support;

use std::path::Path;
use std::time::Duration;

use diagtool::model::{Overall, SnapshotDiff, Verdict, WatchReport};
use support::*;

const LIMIT: Duration = Duration::from_secs(30);

fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or("")
}

#[test]
fn watch_names_the_leaking_site_exits_1_and_records_a_reportable_incident() {
    let target = FakeTarget::start(Script::Leaking);
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("rec");
    let rec_arg = rec.to_str().expect("utf-8 path");
    let out = diagtool(
        &[
            "--target",
            &target.url,
            "watch",
            "--interval",
            "200ms",
            "--duration",
            "3s",
            "--json",
            "--fail-on-leak",
            "--record",
            rec_arg,
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let report = WatchReport::from_json(last_line(&stdout(&out)))
        .expect("the last line is the watch document");
    assert_eq!(report.verdict, Overall::Leak);
    assert_eq!(report.target, target.url);
    assert!(report.samples >= 14, "{report:?}");
    assert!(report.span_s >= 2.5, "{report:?}");
    let verdict = |site: &str| {
        report
            .sites
            .iter()
            .find(|s| s.site == site)
            .map(|s| s.verdict)
    };
    assert_eq!(verdict(LEAK_SITE), Some(Verdict::Leak), "{report:#?}");
    assert_ne!(verdict(BURST_SITE), Some(Verdict::Leak), "{report:#?}");
    assert_eq!(verdict(POOL_SITE), Some(Verdict::Stable), "{report:#?}");
    let leak = report
        .sites
        .iter()
        .find(|s| s.site == LEAK_SITE)
        .expect("leak row");
    assert!((leak.growth_per_min - 120.0).abs() < 40.0, "{leak:?}");
    assert_eq!(report.sites[0].site, LEAK_SITE, "sorted by growth");
    // The tables went to stderr and name the leak.
    assert!(
        stderr(&out).contains(&format!("leak at {LEAK_SITE}")),
        "{}",
        stderr(&out)
    );

    // The recording: every snapshot, the summary, and the dump fetched when the leak showed.
    let snapshots = std::fs::read_dir(&rec)
        .expect("recording dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot-"))
        .count();
    assert_eq!(snapshots as u64, report.samples);
    let summary = WatchReport::from_json(&read(&rec.join("summary.json"))).expect("summary parses");
    assert_eq!(summary.verdict, Overall::Leak);
    assert!(read(&rec.join("summary.txt")).contains(LEAK_SITE));
    assert!(
        rec.join("dump.json").exists(),
        "a dump is fetched into the recording on a leak"
    );
    assert_eq!(summary.threshold_per_min, Some(1.0));
    let again = diagtool(
        &[
            "--target",
            &target.url,
            "watch",
            "--duration",
            "1s",
            "--record",
            rec_arg,
        ],
        LIMIT,
    );
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing recording is not overwritten"
    );
    assert!(
        stderr(&again).contains("already holds a recording"),
        "{}",
        stderr(&again)
    );

    // The report built from it.
    let out = diagtool(&["report", rec_arg], LIMIT);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let md = read(&rec.join("report.md"));
    for needle in [
        "# Task growth report: fake-shipper",
        "**Verdict: LEAK**",
        "![Live tasks per spawn site](report-live.svg)",
        "## Timeline",
        "| time (UTC) | since start | total live | delta |",
        "## Growth per spawn site",
        &format!("### `{LEAK_SITE}`"),
        "**Who spawned them:**",
        "task names leak-poll",
        "**Since when:**",
        "**Where they wait:**",
        "tokio::sync::notify::Notified::poll",
    ] {
        assert!(md.contains(needle), "report lacks {needle:?}:\n{md}");
    }
    let svg = read(&rec.join("report-live.svg"));
    let elements =
        xml_elements(&svg).unwrap_or_else(|e| panic!("SVG is not well-formed: {e}\n{svg}"));
    assert_eq!(elements.first().map(String::as_str), Some("svg"));
    assert_eq!(
        svg.matches("<polyline stroke=").count(),
        3,
        "one line per site"
    );
    assert!(svg.contains(LEAK_SITE));
}

#[test]
fn watch_of_a_clean_target_exits_0_with_no_leak() {
    let target = FakeTarget::start(Script::Clean);
    let out = diagtool(
        &[
            "--target",
            &target.url,
            "watch",
            "--interval",
            "200ms",
            "--duration",
            "2s",
            "--json",
            "--fail-on-leak",
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let report = WatchReport::from_json(last_line(&stdout(&out))).expect("watch document");
    assert_eq!(report.verdict, Overall::Ok);
    assert!(
        report.sites.iter().all(|s| s.verdict != Verdict::Leak),
        "{report:#?}"
    );
    assert_eq!(report.errors, 0);
}

#[test]
fn watch_without_json_appends_tables_when_piped() {
    let target = FakeTarget::start(Script::Clean);
    let out = diagtool(
        &[
            "--target",
            &target.url,
            "watch",
            "--interval",
            "200ms",
            "--duration",
            "400ms",
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.contains('\x1b'),
        "no terminal control codes when piped"
    );
    // Three frames appended (0, 200, 400 ms) and the final summary.
    assert_eq!(
        text.matches(&format!("{}: ", target.url)).count(),
        4,
        "{text}"
    );
    assert!(text.contains("final: "), "{text}");
    for column in [
        "spawn site",
        "live",
        "delta since first",
        "growth/min",
        "step pattern",
        "oldest age",
        "verdict",
    ] {
        assert!(text.contains(column), "missing column {column}: {text}");
    }
}

#[test]
fn watch_retries_failed_samples_and_counts_them() {
    let target = FakeTarget::start(Script::Flaky);
    let out = diagtool(
        &[
            "--target",
            &target.url,
            "watch",
            "--interval",
            "200ms",
            "--duration",
            "1s",
            "--json",
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let report = WatchReport::from_json(last_line(&stdout(&out))).expect("watch document");
    assert!(report.errors >= 1, "{report:?}");
    assert_eq!(
        report.samples, 6,
        "each failed sample was retried: {report:?}"
    );
}

#[test]
fn unreachable_target_exits_3_with_one_line() {
    let dead = dead_target();
    for args in [
        vec!["--target", dead.as_str(), "snapshot"],
        vec![
            "--target",
            dead.as_str(),
            "watch",
            "--interval",
            "100ms",
            "--duration",
            "1s",
        ],
        vec!["--target", dead.as_str(), "dump"],
    ] {
        let out = diagtool(&args, LIMIT);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.starts_with("diagtool: ") && err.contains("unreachable"),
            "{err}"
        );
    }
}

#[test]
fn html_answer_exits_2_with_one_clear_line() {
    let target = FakeTarget::start(Script::Html);
    let out = diagtool(&["--target", &target.url, "snapshot"], LIMIT);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("HTML page") && err.contains("--target"),
        "{err}"
    );
}

#[test]
fn bad_target_url_exits_2() {
    for target in ["localhost:6060", "https://127.0.0.1:6060", "::"] {
        let out = diagtool(&["--target", target, "snapshot"], LIMIT);
        assert_eq!(out.status.code(), Some(2), "{target}: {}", stderr(&out));
        assert!(stderr(&out).contains("bad --target"), "{}", stderr(&out));
    }
    let out = diagtool_env(&["snapshot"], &[("DIAGTOOL_TARGET", "nonsense")], LIMIT);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the env var is read: {}",
        stderr(&out)
    );
}

#[test]
fn a_path_the_target_does_not_serve_exits_2_naming_it() {
    let target = FakeTarget::start(Script::Clean);
    let prefixed = format!("{}/not-the-debug-port", target.url);
    let out = diagtool(&["--target", &prefixed, "snapshot"], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/not-the-debug-port/debug/tasks") && err.contains("404"),
        "{err}"
    );
}

#[test]
fn bearer_token_is_sent_when_given() {
    let target = FakeTarget::start(Script::Token("s3cret"));
    let out = diagtool(&["--target", &target.url, "snapshot"], LIMIT);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--token"), "{}", stderr(&out));
    let out = diagtool(
        &[
            "--target",
            &target.url,
            "--token",
            "s3cret",
            "snapshot",
            "--format",
            "text",
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(POOL_SITE));
    let out = diagtool_env(
        &["--target", &target.url, "snapshot"],
        &[("DIAGTOOL_TOKEN", "s3cret")],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn snapshot_saves_the_document_to_a_file() {
    let target = FakeTarget::start(Script::Leaking);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("snap.json");
    let out = diagtool(
        &[
            "--target",
            &target.url,
            "snapshot",
            "-o",
            file.to_str().expect("utf-8"),
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let snap = diagtool::model::Snapshot::from_json(&read(&file)).expect("a snapshot");
    assert!(snap.sites.iter().any(|s| s.site == LEAK_SITE));
}

fn write_snapshot(dir: &Path, name: &str, leaking: bool, elapsed: f64) -> String {
    let path = dir.join(name);
    let snap = scripted_snapshot(leaking, 1_764_270_000_000, elapsed);
    std::fs::write(&path, serde_json::to_string(&snap).expect("encode")).expect("write");
    path.to_str().expect("utf-8").to_owned()
}

#[test]
fn diff_shows_per_site_deltas_as_text_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = write_snapshot(dir.path(), "base.json", false, 0.5);
    let new = write_snapshot(dir.path(), "new.json", true, 30.5);
    let out = diagtool(&["diff", &base, &new], LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let leak_line = text
        .lines()
        .find(|l| l.contains(LEAK_SITE))
        .expect("leak row");
    assert!(leak_line.contains("+62"), "{leak_line}");
    let out = diagtool(&["diff", &base, &new, "--json"], LIMIT);
    let diff = SnapshotDiff::from_json(stdout(&out).trim()).expect("diff document");
    assert_eq!(diff.sites[0].site, LEAK_SITE);
    assert_eq!(
        (
            diff.sites[0].base_live,
            diff.sites[0].new_live,
            diff.sites[0].delta
        ),
        (0, 62, 62)
    );
    assert_eq!(diff.span_s, 30.0);
}

#[test]
fn malformed_or_future_schema_files_exit_2_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write_snapshot(dir.path(), "good.json", false, 1.0);
    let future = dir.path().join("future.json");
    std::fs::write(
        &future,
        read(Path::new(&good)).replace("snapshot/v1", "snapshot/v2"),
    )
    .expect("write");
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        "{\"schema\": \"diagtool.snapshot/v1\", \"sites\": [",
    )
    .expect("write");
    let missing = dir.path().join("missing.json");
    for (bad, needle) in [
        (&future, "diagtool.snapshot/v2"),
        (&broken, "broken.json"),
        (&missing, "cannot read"),
    ] {
        let out = diagtool(&["diff", &good, bad.to_str().expect("utf-8")], LIMIT);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
    let out = diagtool(
        &[
            "report",
            dir.path().join("nowhere").to_str().expect("utf-8"),
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn dump_folded_and_flamegraph_show_where_tasks_park() {
    let target = FakeTarget::start(Script::Leaking);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = diagtool(
        &["--target", &target.url, "dump", "--format", "folded"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let folded = stdout(&out);
    let leak_line = folded
        .lines()
        .find(|l| l.starts_with(LEAK_SITE))
        .expect("leak stack");
    assert_eq!(
        leak_line.rsplit_once(' ').map(|(stack, _)| stack),
        Some(format!("{LEAK_SITE};{}", LEAK_FRAMES.join(";")).as_str())
    );
    assert!(folded.lines().any(|l| l == format!("{POOL_SITE};shipper::source::file::read_loop;tokio::fs::read 1")));

    let out = diagtool(
        &["--target", &target.url, "dump", "--format", "text"],
        LIMIT,
    );
    assert!(
        stdout(&out).contains(&format!("spawned at {LEAK_SITE}")),
        "{}",
        stdout(&out)
    );

    let json = dir.path().join("dump.json");
    let out = diagtool(
        &[
            "--target",
            &target.url,
            "dump",
            "-o",
            json.to_str().expect("utf-8"),
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let folded_file = dir.path().join("stacks.folded");
    std::fs::write(&folded_file, &folded).expect("write");
    for input in [&json, &folded_file] {
        let svg_path = dir.path().join("out.svg");
        let out = diagtool(
            &[
                "flamegraph",
                input.to_str().expect("utf-8"),
                "-o",
                svg_path.to_str().expect("utf-8"),
            ],
            LIMIT,
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let svg = read(&svg_path);
        assert!(
            svg.contains("<svg") && svg.contains("Where tasks are parked"),
            "{input:?}"
        );
        assert!(
            svg.contains("Notified::poll"),
            "the leaf frame is drawn ({input:?})"
        );
        xml_elements(&svg)
            .unwrap_or_else(|e| panic!("flamegraph of {input:?} not well-formed: {e}"));
    }
    let junk = dir.path().join("junk.txt");
    std::fs::write(&junk, "hello world\n").expect("write");
    let out = diagtool(
        &[
            "flamegraph",
            junk.to_str().expect("utf-8"),
            "-o",
            "/dev/null",
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("line 1"), "{}", stderr(&out));
}

#[test]
fn profile_saves_the_pprof_and_draws_its_flamegraph() {
    let target = FakeTarget::start(Script::Clean);
    let dir = tempfile::tempdir().expect("tempdir");
    let pb = dir.path().join("cpu.pb.gz");
    let svg = dir.path().join("cpu.svg");
    let out = diagtool(
        &[
            "--target",
            &target.url,
            "profile",
            "--seconds",
            "1",
            "-o",
            pb.to_str().expect("utf-8"),
            "--flamegraph",
            svg.to_str().expect("utf-8"),
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let profile =
        diagtool::pprof::decode(&std::fs::read(&pb).expect("profile saved")).expect("pprof");
    assert_eq!(profile.sample.len(), 2);
    let drawn = read(&svg);
    assert!(
        drawn.contains("encode_batch") && drawn.contains("CPU profile"),
        "flamegraph drawn"
    );
    xml_elements(&drawn).unwrap_or_else(|e| panic!("flamegraph SVG not well-formed: {e}"));
    let out = diagtool(
        &["--target", &target.url, "profile", "--seconds", "61"],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn ctrl_c_ends_the_watch_cleanly_with_the_summary() {
    let target = FakeTarget::start(Script::Leaking);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_diagtool"))
        .args([
            "--target",
            &target.url,
            "watch",
            "--interval",
            "200ms",
            "--json",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn diagtool");
    let deadline = std::time::Instant::now() + LIMIT;
    while target.requests() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let interrupt = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(interrupt.success());
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("watch did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report =
        WatchReport::from_json(last_line(&stdout(&out))).expect("summary printed on Ctrl-C");
    assert!(report.samples >= 4, "{report:?}");
    assert!(stderr(&out).contains("final: "), "{}", stderr(&out));
}

/// Compares `actual` with `tests/snapshots/NAME`; `UPDATE_SNAPSHOTS=1` rewrites the file.
fn assert_snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("update snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual, expected,
        "{name} changed; rerun with UPDATE_SNAPSHOTS=1 if that is intended"
    );
}

#[test]
fn help_text_is_stable() {
    for (args, name) in [
        (vec!["--help"], "help.txt"),
        (vec!["watch", "--help"], "watch-help.txt"),
    ] {
        let out = diagtool_env(&args, &[("COLUMNS", "100")], LIMIT);
        assert_eq!(out.status.code(), Some(0));
        assert_snapshot(name, &stdout(&out));
    }
}
