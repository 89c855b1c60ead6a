//! End to end, issue 12: a fleet of three real shippers, one of them leaking
//! (`--leak-lab poll-spawn:4/2s`), one killed midway.
//!
//! - `diagtool watch --target A --target B --target C --json --fail-on-leak` exits 1, naming the
//!   leak-lab site on exactly the leaking instance; every row carries its `instance`; the killed
//!   instance's failures are counted and the others go on.
//! - With no target reachable the fleet watch exits 3.
//! - A real Prometheus (Debian's `prometheus`, started here on loopback, 1 s scrapes of the
//!   shippers' main port `/metrics`) holds the same fleet's history; `diagtool watch --prometheus
//!   URL --duration 0s --json --fail-on-leak` judges it at once: exit 1, the same instance and
//!   site and nothing else; a bad selector is exit 2 with Prometheus's message. Skipped, saying
//!   so, when `/usr/bin/prometheus` (or `$PROMETHEUS_BIN`) is absent; `.ci/run` installs it.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser as _;
use testkit::shipper::{Env, wait_until};

/// Runs `diagtool ARGS` in-process: the exit code, or the binary's code for an error (2 or 3).
/// Standard output is the test's, so documents are read from `--record DIR/summary.json`.
fn diagtool(args: &[&str]) -> Result<ExitCode, u8> {
    let mut argv = vec!["diagtool"];
    argv.extend_from_slice(args);
    let cli = diagtool::cli::Cli::try_parse_from(argv).unwrap();
    diagtool::cli::run(cli).map_err(|e| diagtool::cli::exit_code(&e))
}

fn leak_rows(doc: &serde_json::Value) -> Vec<(String, String)> {
    doc["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["verdict"] == "leak")
        .map(|s| {
            (
                s["instance"].as_str().unwrap().to_owned(),
                s["site"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A Prometheus server on loopback, killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("PROMETHEUS_BIN")
        .map_or_else(|| PathBuf::from("/usr/bin/prometheus"), PathBuf::from);
    bin.exists().then_some(bin)
}

fn start_prometheus(bin: &PathBuf, dir: PathBuf, targets: &[&str]) -> Prometheus {
    std::fs::create_dir_all(&dir).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  - job_name: shipper\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let p = Prometheus { child, addr };
    wait_until(Duration::from_secs(30), "prometheus to be ready", || {
        std::net::TcpStream::connect(&p.addr).is_ok()
            && testkit::shipper::http_get(&p.addr, "/-/ready").0 == 200
    });
    p
}

#[test]
fn a_fleet_of_three_names_the_leaking_instance_by_target_and_from_prometheus() {
    let clean = Env::new();
    let mut leaking = Env::new();
    leaking.args = vec!["--leak-lab".into(), "poll-spawn:4/2s".into()];
    let doomed = Env::new();
    let a = clean.start();
    let b = leaking.start();
    let c = doomed.start();
    let started = Instant::now();
    let prometheus = prometheus_bin()
        .map(|bin| start_prometheus(&bin, clean.path("prometheus"), &[&a.addr, &b.addr, &c.addr]));
    if prometheus.is_none() {
        eprintln!(
            "SKIPPED the Prometheus half: no /usr/bin/prometheus (apt-get install prometheus, or set PROMETHEUS_BIN)"
        );
    }

    // Kill the third instance midway through the watch.
    let doomed_debug = c.debug_addr.clone();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(6));
        c.kill9();
    });
    let record = clean.path("fleet-watch");
    let (ta, tb, tc) = (
        format!("http://{}", a.debug_addr),
        format!("http://{}", b.debug_addr),
        format!("http://{doomed_debug}"),
    );
    let code = diagtool(&[
        "--target",
        &ta,
        "--target",
        &tb,
        "--target",
        &tc,
        "watch",
        "--interval",
        "1s",
        "--duration",
        "14s",
        "--json",
        "--fail-on-leak",
        "--record",
        record.to_str().unwrap(),
    ]);
    killer.join().unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(code, Ok(ExitCode::from(1)), "{doc:#}");
    assert_eq!(doc["verdict"], "leak", "{doc:#}");
    let leaks = leak_rows(&doc);
    assert_eq!(leaks.len(), 1, "{doc:#}");
    assert_eq!(leaks[0].0, b.debug_addr, "{doc:#}");
    assert!(leaks[0].1.contains("leaklab"), "{doc:#}");
    let sites = doc["sites"].as_array().unwrap();
    assert!(sites.iter().all(|s| s["instance"].is_string()), "{doc:#}");
    for instance in [&a.debug_addr, &b.debug_addr, &doomed_debug] {
        assert!(
            sites.iter().any(|s| s["instance"] == instance.as_str()),
            "no rows of {instance}: {doc:#}"
        );
    }
    assert!(
        doc["errors"].as_u64().unwrap() > 0,
        "the killed one failed: {doc:#}"
    );
    // One recording per instance.
    for instance in [&a.debug_addr, &b.debug_addr] {
        let dir = record.join(instance.replace(':', "_"));
        assert!(
            dir.join("snapshot-000001.json").exists(),
            "{}",
            dir.display()
        );
        assert!(dir.join("summary.json").exists(), "{}", dir.display());
    }

    // The fleet report: a report per instance, and one tying them together.
    assert_eq!(
        diagtool(&["report", record.to_str().unwrap()]),
        Ok(ExitCode::SUCCESS)
    );
    let fleet_md = std::fs::read_to_string(record.join("report.md")).unwrap();
    assert!(
        fleet_md.contains("# Fleet task growth report"),
        "{fleet_md}"
    );
    assert!(
        fleet_md.contains(&format!("on 1 of 3 instances\n\n- `{}`", b.debug_addr)),
        "{fleet_md}"
    );
    assert!(record.join("report-leak-1.svg").exists());
    assert!(
        record
            .join(b.debug_addr.replace(':', "_"))
            .join("report.md")
            .exists()
    );

    // No target reachable: exit 3.
    assert_eq!(
        diagtool(&[
            "--target",
            "http://127.0.0.1:1",
            "--target",
            "http://127.0.0.1:2",
            "watch",
            "--interval",
            "1s",
            "--duration",
            "0s",
        ]),
        Err(3)
    );

    let Some(prometheus) = prometheus else {
        return;
    };
    // At least ~25 s of history (the target watch above took 14 s of it).
    let history = Duration::from_secs(25);
    if let Some(rest) = history.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    let url = format!("http://{}", prometheus.addr);
    let record = clean.path("prom-watch");
    let judged = Instant::now();
    let code = prom_watch(&url, &["--selector", "{job=\"shipper\"}"], &record);
    let took = judged.elapsed();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(code, Ok(ExitCode::from(1)), "{doc:#}");
    let leaks = leak_rows(&doc);
    assert_eq!(leaks.len(), 1, "{doc:#}");
    assert_eq!(
        leaks[0].0, b.addr,
        "the leaking instance by its main port: {doc:#}"
    );
    assert!(leaks[0].1.contains("leaklab"), "{doc:#}");
    assert!(took < Duration::from_secs(2), "judged in {took:?}");
    let instances: std::collections::BTreeSet<&str> = doc["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["instance"].as_str().unwrap())
        .collect();
    assert!(instances.contains(a.addr.as_str()), "{doc:#}");

    // Following live (`--duration 2s`): the window is judged again each step, same verdict.
    let follow = clean.path("prom-follow");
    let mut args = vec![
        "watch",
        "--prometheus",
        url.as_str(),
        "--lookback",
        "2m",
        "--step",
        "1s",
    ];
    args.extend([
        "--duration",
        "2s",
        "--fail-on-leak",
        "--record",
        follow.to_str().unwrap(),
    ]);
    let followed = Instant::now();
    assert_eq!(diagtool(&args), Ok(ExitCode::from(1)));
    assert!(
        followed.elapsed() >= Duration::from_secs(1),
        "it followed for a step"
    );
    let text = std::fs::read_to_string(follow.join("summary.txt")).unwrap();
    assert!(text.starts_with("final: "), "{text}");

    // A bad selector: exit 2 (Prometheus's message is printed by the binary's error path).
    assert_eq!(
        prom_watch(&url, &["--selector", "{job=~\"(\"}"], &clean.path("bad")),
        Err(2)
    );
    // Nothing listening: exit 3.
    assert_eq!(
        prom_watch("http://127.0.0.1:1", &[], &clean.path("none")),
        Err(3)
    );
    drop((a, b));
}

/// `watch --prometheus URL --lookback 2m --step 1s --duration 0s --json --fail-on-leak`, with the
/// document kept in `out/summary.json` by `--record`.
fn prom_watch(url: &str, extra: &[&str], out: &std::path::Path) -> Result<ExitCode, u8> {
    let mut args = vec![
        "watch",
        "--prometheus",
        url,
        "--lookback",
        "2m",
        "--step",
        "1s",
        "--duration",
        "0s",
        "--json",
        "--fail-on-leak",
        "--record",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    diagtool(&args)
}
