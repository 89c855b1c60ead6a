//! End to end: `diagtool watch --interval 1s --duration 15s --json --fail-on-leak` against the real
//! shipper (issue 4's "done when"): exit 0 with no leak against a clean shipper under steady log load,
//! exit 1 naming the leak-lab site against `--leak-lab poll-spawn:2/1s`. The watch runs in-process
//! through `diagtool::cli::run` (the binary's own entry point), recording the same
//! `diagtool.watch/v1` document `--json` prints, so the test can read it.
#![allow(clippy::unwrap_used)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser as _;
use testkit::shipper::Env;

/// Runs the watch against `debug_addr`; returns the exit code and the watch document.
fn watch(debug_addr: &str, record: &std::path::Path) -> (ExitCode, serde_json::Value) {
    let target = format!("http://{debug_addr}");
    let cli = diagtool::cli::Cli::try_parse_from([
        "diagtool",
        "--target",
        target.as_str(),
        "watch",
        "--interval",
        "1s",
        "--duration",
        "15s",
        "--json",
        "--fail-on-leak",
        "--record",
        record.to_str().unwrap(),
    ])
    .unwrap();
    let code = diagtool::cli::run(cli).unwrap();
    let doc = std::fs::read_to_string(record.join("summary.json")).unwrap();
    (code, serde_json::from_str(&doc).unwrap())
}

#[test]
fn watch_passes_a_clean_shipper_and_names_the_leak_lab_site_of_a_leaking_one() {
    // Clean, under steady load: a writer appends lines for the whole watch.
    let env = Env::new();
    let shipper = env.start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, logs) = (stop.clone(), env.logs());
        std::thread::spawn(move || {
            let mut n = 0u64;
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && start.elapsed() < Duration::from_secs(60)
            {
                use std::io::Write as _;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(logs.join("steady.log"))
                    .unwrap();
                writeln!(f, "steady line {n}").unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        })
    };
    let (code, doc) = watch(&shipper.debug_addr, &env.path("clean-watch"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert_eq!(code, ExitCode::SUCCESS, "{doc:#}");
    assert_eq!(doc["verdict"], "ok", "{doc:#}");
    assert!(doc["samples"].as_u64().unwrap() >= 14, "{doc:#}");
    assert!(
        doc["sites"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["verdict"] != "leak"),
        "{doc:#}"
    );
    assert!(written > 500, "the load ran: {written} lines");
    testkit::shipper::wait_until(Duration::from_secs(20), "every line shipped", || {
        env.delivered().len() as u64 == written
    });
    assert!(shipper.terminate(Duration::from_secs(15)).success());

    // Leaking: 2 tasks a second.
    let mut env = Env::new();
    env.args = vec!["--leak-lab".into(), "poll-spawn:2/1s".into()];
    let shipper = env.start();
    let (code, doc) = watch(&shipper.debug_addr, &env.path("leak-watch"));
    assert_eq!(code, ExitCode::from(1), "{doc:#}");
    assert_eq!(doc["verdict"], "leak", "{doc:#}");
    let leaks: Vec<&str> = doc["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["verdict"] == "leak")
        .map(|s| s["site"].as_str().unwrap())
        .collect();
    assert_eq!(leaks.len(), 1, "{doc:#}");
    assert!(leaks[0].contains("leaklab"), "{doc:#}");
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn the_demo_names_the_leak_and_returns_success() {
    let shipper = testkit::shipper::shipper_bin();
    let cli = diagtool::cli::Cli::try_parse_from([
        "diagtool",
        "demo",
        "--interval",
        "1s",
        "--duration",
        "10s",
        "--shipper",
        shipper.to_str().unwrap(),
    ])
    .unwrap();
    let started = Instant::now();
    assert_eq!(diagtool::cli::run(cli).unwrap(), ExitCode::SUCCESS);
    assert!(started.elapsed() < Duration::from_secs(60));
}
