//! The adoption example end to end: `examples/leaky-service` (the probe embedded as
//! `docs/embedding.md` says, plain `tokio::spawn`, its own leak), built in release:
//! - its `/metrics` carries the per-site series under its own prefix (`leaky_service_`);
//! - `diagtool watch --interval 2s --duration 30s --fail-on-leak` names the example's spawn line
//!   and exits 1;
//! - `diagtool dump --mode global` names the service's async fn and the line of its `.await`
//!   (in release, frames tokio's own trace leaves out);
//! - SIGTERM stops it with exit 0.
//!
//! Skipped (with a note) unless `LEAKY_SERVICE_RELEASE_BIN` names a release build of the example:
//! `cargo build --release -p leaky-service && LEAKY_SERVICE_RELEASE_BIN=target/release/leaky-service
//! cargo test -p e2e --test leaky_service` (`.ci/run` does).
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use clap::Parser as _;
use testkit::shipper::{http_get, wait_until};

const SOURCE: &str = include_str!("../examples/leaky-service/src/main.rs");
const FILE: &str = "examples/leaky-service/src/main.rs";

/// The 1-based line of the example's source holding `marker`.
fn line_of(marker: &str) -> usize {
    SOURCE.lines().position(|l| l.contains(marker)).unwrap() + 1
}

/// The example's process, killed if the test ends early.
struct Service {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Service {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The address after `NAME listening addr=` in its stderr.
    fn addr(&self, name: &str) -> Option<String> {
        self.stderr()
            .lines()
            .find(|l| l.contains(&format!("{name} listening addr=")))
            .and_then(|l| l.split("addr=").nth(1))
            .map(|a| a.trim().to_owned())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn diagtool(args: &[&str]) -> ExitCode {
    let cli =
        diagtool::cli::Cli::try_parse_from(std::iter::once("diagtool").chain(args.iter().copied()))
            .unwrap();
    diagtool::cli::run(cli).unwrap()
}

#[test]
fn watch_names_the_spawn_line_and_a_global_dump_the_await_line() {
    let Ok(bin) = std::env::var("LEAKY_SERVICE_RELEASE_BIN") else {
        eprintln!(
            "skipped: set LEAKY_SERVICE_RELEASE_BIN to a release build of the example \
             (cargo build --release -p leaky-service; \
             LEAKY_SERVICE_RELEASE_BIN=target/release/leaky-service)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr.log");
    let child = Command::new(&bin)
        .args(["--addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0"])
        .args(["--leak-every", "200ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut service = Service { child, stderr };
    wait_until(Duration::from_secs(20), "both ports to listen", || {
        if let Ok(Some(status)) = service.child.try_wait() {
            panic!(
                "the example exited early with {status}: {}",
                service.stderr()
            );
        }
        service.addr("main port").is_some() && service.addr("debug port").is_some()
    });
    let main_addr = service.addr("main port").unwrap();
    let target = format!("http://{}", service.addr("debug port").unwrap());
    let spawn_site = format!("{FILE}:{}:9", line_of("// LEAK: spawn site"));
    let await_place = format!("{FILE}:{}", line_of("// LEAK: await point"));

    // /metrics: the example's own prefix on the probe's per-site series.
    let series = format!("leaky_service_tasks_live{{site=\"{spawn_site}\"}}");
    wait_until(Duration::from_secs(10), &series, || {
        let (code, body) = http_get(&main_addr, "/metrics");
        assert_eq!(code, 200, "{body}");
        body.contains(&series) && body.contains("leaky_service_tokio_workers")
    });

    // watch: the leak's spawn line, exit 1.
    let record = dir.path().join("watch");
    let code = diagtool(&[
        "--target",
        &target,
        "watch",
        "--interval",
        "2s",
        "--duration",
        "30s",
        "--json",
        "--fail-on-leak",
        "--record",
        record.to_str().unwrap(),
    ]);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(code, ExitCode::from(1), "{doc:#}");
    let leaks: Vec<&str> = doc["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["verdict"] == "leak")
        .map(|s| s["site"].as_str().unwrap())
        .collect();
    assert_eq!(leaks, vec![spawn_site.as_str()], "{doc:#}");

    // dump, global mode: the service's fn and the line of its await, above tokio's leaf.
    let out = dir.path().join("dump.txt");
    let code = diagtool(&[
        "--target",
        &target,
        "dump",
        "--mode",
        "global",
        "--format",
        "text",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, ExitCode::SUCCESS);
    let text = std::fs::read_to_string(&out).unwrap();
    let group = text
        .split("\n\n")
        .find(|g| g.contains(&spawn_site))
        .unwrap_or_else(|| panic!("no group spawned at {spawn_site}:\n{text}"));
    assert!(group.contains("oneshot"), "tokio's leaf:\n{group}");
    assert!(
        group.contains("leaky_service::wait_for_price"),
        "the service's fn:\n{group}"
    );
    assert!(
        group.contains(&await_place),
        "the await line {await_place}:\n{group}"
    );

    let pid = service.child.id() as libc::pid_t;
    // SAFETY: `pid` is our own child, not yet waited for, so the id is not reused.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut status = None;
    wait_until(
        Duration::from_secs(10),
        "the example to exit on SIGTERM",
        || {
            status = service.child.try_wait().unwrap();
            status.is_some()
        },
    );
    assert!(status.unwrap().success(), "{}", service.stderr());
}
