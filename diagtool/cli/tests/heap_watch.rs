//! End-to-end tests of `diagtool watch --heap`, `diagtool heap` and the heap report, against the
//! fake target's scripted heap profiles served over HTTP on 127.0.0.1.

mod support;

use std::time::Duration;

use diagtool::model::{Overall, Verdict, WatchKind, WatchReport};
use support::heap::*;
use support::{FakeTarget, Script, diagtool, read, stderr, stdout, xml_elements};

const LIMIT: Duration = Duration::from_secs(30);

fn watch_heap(url: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--target",
        url,
        "watch",
        "--heap",
        "--interval",
        "200ms",
        "--duration",
        "3s",
        "--json",
    ];
    args.extend_from_slice(extra);
    diagtool(&args, LIMIT)
}

fn document(out: &std::process::Output) -> WatchReport {
    let text = stdout(out);
    WatchReport::from_json(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("the last line is the watch document ({e}): {text}"))
}

fn verdict(report: &WatchReport, site: &str) -> Option<Verdict> {
    report
        .sites
        .iter()
        .find(|s| s.site == site)
        .map(|s| s.verdict)
}

#[test]
fn watch_heap_names_the_growing_allocation_site_exits_1_and_records_a_report() {
    let target = FakeTarget::start(Script::HeapLeaking);
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("rec");
    let rec_arg = rec.to_str().expect("utf-8 path");
    let out = watch_heap(
        &target.url,
        &["--fail-on-leak", "--verbose", "--record", rec_arg],
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let report = document(&out);
    assert_eq!(report.kind, WatchKind::Heap);
    assert_eq!(report.verdict, Overall::Leak);
    assert!(report.samples >= 14, "{report:?}");
    assert_eq!(
        verdict(&report, LEAK_SITE),
        Some(Verdict::Leak),
        "{report:#?}"
    );
    for quiet in [POOL_SITE, BURST_SITE, NOISE_SITE, DEP_SITE] {
        assert_ne!(
            verdict(&report, quiet),
            Some(Verdict::Leak),
            "{quiet}: {report:#?}"
        );
    }
    assert_eq!(
        verdict(&report, POOL_SITE),
        Some(Verdict::Stable),
        "{report:#?}"
    );
    let leak = &report.sites[0];
    assert_eq!(leak.site, LEAK_SITE, "sorted by growth");
    assert_eq!(leak.function.as_deref(), Some(LEAK_FUNCTION));
    assert_eq!(leak.inuse_bytes, Some(leak.live));
    assert!(leak.live >= 14 * PERIOD as u64, "{leak:?}");
    assert_eq!(
        leak.stack.first().map(String::as_str),
        Some("shipper::main at shipper/src/main.rs:20"),
        "outermost first"
    );
    assert!(
        leak.stack
            .iter()
            .any(|f| f == &format!("{LEAK_FUNCTION} at {LEAK_SITE}")),
        "the stack runs through the site: {:?}",
        leak.stack
    );
    // About 5 periods a second: 150 MiB a minute.
    let per_min = 5.0 * 60.0 * PERIOD as f64;
    assert!(
        (leak.growth_per_min - per_min).abs() < per_min * 0.3,
        "{leak:?}"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!("leak at {LEAK_SITE} in {LEAK_FUNCTION}: ")),
        "{err}"
    );
    assert!(err.contains("MiB in use; floor rose"), "{err}");
    assert!(
        err.contains("allocation site") && err.contains("growth/min"),
        "{err}"
    );
    assert!(err.contains("sampled every 512.0 KiB allocated"), "{err}");
    assert!(
        err.contains(
            "allocated through (outermost first):\n    shipper::main at shipper/src/main.rs:20"
        ),
        "--verbose shows stacks: {err}"
    );
    assert!(!err.contains("_rjem_malloc ("), "{err}");

    // The recording and its report.
    let samples = std::fs::read_dir(&rec)
        .expect("recording")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("heap-0"))
        .count();
    assert_eq!(samples as u64, report.samples);
    let summary = WatchReport::from_json(&read(&rec.join("summary.json"))).expect("summary");
    assert_eq!(
        (summary.kind, summary.verdict),
        (WatchKind::Heap, Overall::Leak)
    );
    assert!(read(&rec.join("summary.txt")).contains(LEAK_SITE));
    let last = std::fs::read(rec.join("heap-last.pb.gz")).expect("the last profile is kept");
    assert!(diagtool::pprof::decode(&last).is_ok());
    let out = diagtool(&["report", rec_arg], LIMIT);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let md = read(&rec.join("report.md"));
    for needle in [
        &format!("# Heap growth report: {}", target.url),
        "**Verdict: LEAK** at 1 allocation site:",
        "## Growth per allocation site",
        &format!("### `{LEAK_SITE}`"),
        &format!("- **What allocates:** `{LEAK_FUNCTION}`"),
        "shipper::main at shipper/src/main.rs:20",
        "![Heap in use per allocation site](report-heap.svg)",
    ] {
        assert!(md.contains(needle), "{needle:?} in {md}");
    }
    let svg = read(&rec.join("report-heap.svg"));
    xml_elements(&svg).expect("the chart is well-formed XML");
}

#[test]
fn watch_heap_passes_a_pool_that_warms_up_a_burst_and_noise() {
    let target = FakeTarget::start(Script::HeapClean);
    let out = watch_heap(&target.url, &["--fail-on-leak"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let report = document(&out);
    assert_eq!(
        (report.kind, report.verdict),
        (WatchKind::Heap, Overall::Ok)
    );
    assert_eq!(
        verdict(&report, POOL_SITE),
        Some(Verdict::Stable),
        "{report:#?}"
    );
    assert!(verdict(&report, DEP_SITE).is_some(), "{report:#?}");
    assert_eq!(report.errors, 0);
}

#[test]
fn unreadable_profiles_are_counted_and_the_watch_goes_on() {
    let target = FakeTarget::start(Script::HeapFlaky);
    let out = watch_heap(&target.url, &["--fail-on-leak"]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let report = document(&out);
    assert!(report.errors >= 3, "{report:?}");
    assert_eq!(
        verdict(&report, LEAK_SITE),
        Some(Verdict::Leak),
        "{report:#?}"
    );
}

#[test]
fn a_target_that_never_serves_a_profile_is_an_input_error_naming_it() {
    let target = FakeTarget::start(Script::HeapGarbage);
    for args in [
        vec![
            "--target",
            &target.url,
            "watch",
            "--heap",
            "--interval",
            "100ms",
            "--duration",
            "1s",
        ],
        vec!["--target", &target.url, "heap"],
    ] {
        let out = diagtool(&args, LIMIT);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{}/debug/pprof/heap", target.url)),
            "{err}"
        );
        assert!(err.contains("cannot be read"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_target_without_heap_profiling_exits_3_with_its_instructions() {
    let target = FakeTarget::start(Script::HeapUnsupported);
    for args in [
        vec![
            "--target",
            &target.url,
            "watch",
            "--heap",
            "--interval",
            "100ms",
            "--duration",
            "10s",
        ],
        vec!["--target", &target.url, "heap"],
    ] {
        let out = diagtool(&args, Duration::from_secs(5));
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("target {} cannot serve heap profiles", target.url)),
            "{err}"
        );
        assert!(err.contains("answered 501"), "{err}");
        assert!(err.contains(NOT_BUILT_IN), "{err}");
    }
    assert_eq!(target.requests(), 2, "a 501 is not retried");
}

#[test]
fn heap_prints_the_sites_and_saves_the_profile_and_a_flamegraph() {
    let target = FakeTarget::start(Script::HeapBusyOnce);
    let dir = tempfile::tempdir().expect("tempdir");
    let pb = dir.path().join("heap.pb.gz");
    let svg = dir.path().join("heap.svg");
    let out = diagtool(
        &[
            "--target",
            &target.url,
            "heap",
            "-o",
            pb.to_str().expect("utf-8"),
            "--flamegraph",
            svg.to_str().expect("utf-8"),
            "--top",
            "3",
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(target.requests(), 2, "the 429 was waited out once");
    let text = stdout(&out);
    assert!(text.starts_with(&format!("{}: ", target.url)), "{text}");
    assert!(text.contains("in use in"), "{text}");
    assert!(text.contains(BURST_SITE), "{text}");
    assert!(text.contains("shipper::source::file::read_chunk"), "{text}");
    assert!(text.contains(" more sites"), "--top 3: {text}");
    let profile = diagtool::pprof::decode(&std::fs::read(&pb).expect("saved")).expect("pprof");
    let sites = diagtool::model::heap::sites(&profile).expect("a heap profile");
    let largest = format!("│ {} ", sites[0].site);
    let first_row = text.lines().nth(4).unwrap_or_default();
    assert!(first_row.starts_with(&largest), "largest first: {text}");
    assert!(
        first_row.contains(&diagtool::model::text::bytes(sites[0].inuse_bytes as u64)),
        "{text}"
    );
    let drawn = read(&svg);
    xml_elements(&drawn).expect("well-formed SVG");
    assert!(
        drawn.contains("read_chunk"),
        "the flamegraph shows the functions"
    );
}

#[test]
fn watch_heap_follows_a_fleet_naming_the_instance_that_leaks() {
    let leaking = FakeTarget::start(Script::HeapLeaking);
    let clean = FakeTarget::start(Script::HeapClean);
    let old = FakeTarget::start(Script::HeapUnsupported);
    let out = diagtool(
        &[
            "--target",
            &leaking.url,
            "--target",
            &clean.url,
            "--target",
            &old.url,
            "watch",
            "--heap",
            "--interval",
            "200ms",
            "--duration",
            "3s",
            "--json",
            "--fail-on-leak",
        ],
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = document(&out);
    assert_eq!(
        (report.kind, report.verdict),
        (WatchKind::Heap, Overall::Leak)
    );
    let instance = |url: &str| url.trim_start_matches("http://").to_owned();
    let leaks: Vec<_> = report
        .sites
        .iter()
        .filter(|s| s.verdict == Verdict::Leak)
        .collect();
    assert_eq!(leaks.len(), 1, "{report:#?}");
    assert_eq!(leaks[0].site, LEAK_SITE);
    assert_eq!(leaks[0].instance, Some(instance(&leaking.url)));
    assert!(
        report
            .sites
            .iter()
            .any(|s| s.instance == Some(instance(&clean.url))),
        "{report:#?}"
    );
    assert_eq!(report.unreachable.len(), 1, "{report:#?}");
    assert_eq!(report.unreachable[0].instance, instance(&old.url));
    assert!(
        report.unreachable[0].error.contains("answered 501"),
        "{report:#?}"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "leak at {LEAK_SITE} on {}",
            instance(&leaking.url)
        )),
        "{err}"
    );
    let recorded = diagtool(
        &[
            "--target",
            &leaking.url,
            "--target",
            &clean.url,
            "watch",
            "--heap",
            "--record",
            "x",
        ],
        LIMIT,
    );
    assert_eq!(recorded.status.code(), Some(2), "{}", stderr(&recorded));
    assert!(stderr(&recorded).contains("--record with --heap follows one target"));
}

#[test]
fn a_probe_without_the_heap_route_exits_3_saying_so() {
    let target = FakeTarget::start(Script::Clean);
    // Under a path prefix every route of the fake target is missing: a 404.
    let url = format!("{}/old-probe", target.url);
    let out = diagtool(&["--target", &url, "heap"], LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("does not exist (404)"), "{err}");
    assert!(err.contains("predates heap profiles"), "{err}");
}
