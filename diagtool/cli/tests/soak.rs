//! `diagtool soak` end to end, against a stand-in shipper: the run's phases, verdicts, exit codes,
//! JUnit file and, in every case, that no process is left behind.
//!
//! The stand-in is this test binary itself, started through a small shell script as the soak's
//! `--shipper`: the ignored test [`fake_shipper`] runs as a real child process, reads the config
//! the soak wrote, tails the generator's files, pushes every line to the soak's Loki receiver, and
//! serves `/ready`, `/health` and `/debug/tasks` (a snapshot with its real pid, RSS and fds, and
//! a `leaklab` site growing when `--leak-lab poll-spawn:COUNT/PERIOD` is given). A mode variable
//! makes it misbehave on purpose: lose lines, crash, serve no debug port, ignore SIGTERM.
//! The real shipper runs the same way from `scripts/soak` and the CI soaks.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diagtool::soak::child::process_exists;
use diagtool::soak::{SoakArgs, execute};

const ARGS_ENV: &str = "DIAGTOOL_SOAK_FAKE_ARGS";
const MODE_ENV: &str = "DIAGTOOL_SOAK_FAKE_MODE";
const PIDFILE_ENV: &str = "DIAGTOOL_SOAK_FAKE_PIDFILE";

/// A short profile: 5 s of writing, 20 samples; growth limits loose enough for a test process
/// whose RSS moves by a few MiB (the RSS and fd checks are tested on synthetic series).
fn profile(extra_shipper: &str, extra_limits: &str) -> String {
    format!(
        r#"
name = "fake"
description = "a short run against the stand-in shipper"
duration = "5s"
sample_interval = "250ms"
[shipper]
batch_max_wait = "200ms"
shutdown_timeout = "3s"
{extra_shipper}
[generator]
files = 3
lines_per_sec = 150
line_bytes = 80
special_every = 7
[[faults]]
at = "1s"
for = "700ms"
kind = "503"
[limits]
warmup = "1s"
rss_growth_mib_per_min = 200.0
fds_growth_per_min = 200.0
startup_timeout = "10s"
drain_timeout = "10s"
{extra_limits}
"#
    )
}

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    /// A test directory with the profile and a `shipper` script that starts the stand-in.
    fn new(mode: &str, profile_text: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("profile.toml"), profile_text).unwrap();
        let exe = std::env::current_exe().unwrap();
        let script = format!(
            "#!/bin/sh\n{ARGS_ENV}=\"$*\" {MODE_ENV}='{mode}' {PIDFILE_ENV}='{}' exec '{}' \
             fake_shipper --exact --ignored --nocapture --test-threads 1\n",
            dir.path().join("shipper.pid").display(),
            exe.display()
        );
        let path = dir.path().join("shipper");
        std::fs::write(&path, script).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).unwrap();
        Run { dir }
    }

    fn args(&self) -> SoakArgs {
        SoakArgs {
            profile: self.dir.path().join("profile.toml"),
            duration: None,
            junit: Some(self.dir.path().join("junit.xml")),
            shipper: Some(self.dir.path().join("shipper")),
        }
    }

    fn junit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("junit.xml")).unwrap()
    }

    /// The stand-in's pid, and that it is gone.
    fn assert_shipper_gone(&self) {
        let pid: u32 = std::fs::read_to_string(self.dir.path().join("shipper.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!process_exists(pid), "the shipper {pid} was left running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sound_shipper_passes_with_every_line_delivered() {
    let run = Run::new("good", &profile("", ""));
    let done = execute(&run.args()).await.unwrap();
    let report = done.report.unwrap();
    assert_eq!(done.code, 0, "{:#?}", report.failures);
    assert!(report.passed && report.failures.is_empty());
    assert_eq!(report.lines_written, 750);
    assert_eq!(report.lines_delivered, 750);
    assert_eq!(report.duplicates, 0);
    assert!(report.leaks.is_empty());
    let junit = run.junit();
    assert!(junit.contains(r#"tests="11" failures="0""#), "{junit}");
    assert_eq!(junit.matches("<testcase ").count(), 11);
    assert!(junit.contains(r#"name="heap_growth""#), "{junit}");
    run.assert_shipper_gone();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_leak_fails_the_heap_check_naming_the_allocation_site() {
    let run = Run::new(
        "good",
        &profile(
            r#"leak_lab = ["memory-cache:512/200ms"]"#,
            "require_heap = true",
        ),
    );
    let done = execute(&run.args()).await.unwrap();
    let report = done.report.unwrap();
    assert_eq!(done.code, 1, "{report:#?}");
    assert_eq!(report.leaks.len(), 1, "{report:#?}");
    assert_eq!(report.leaks[0].site, "fake/src/leaklab.rs:140");
    assert_eq!(report.failures.len(), 1, "{:#?}", report.failures);
    assert!(
        report.failures[0].starts_with(
            "heap_growth: heap grows: fake/src/leaklab.rs:140 in fake::leaklab::memory_cache_insert"
        ),
        "{:#?}",
        report.failures
    );
    run.assert_shipper_gone();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_fails_the_soak_and_names_the_leaklab_site() {
    let run = Run::new("good", &profile(r#"leak_lab = ["poll-spawn:4/500ms"]"#, ""));
    let done = execute(&run.args()).await.unwrap();
    let report = done.report.unwrap();
    assert_eq!(done.code, 1);
    assert!(!report.passed);
    assert_eq!(report.leaks.len(), 1, "{:#?}", report);
    assert!(
        report.leaks[0].site.contains("leaklab"),
        "{:?}",
        report.leaks
    );
    assert!(report.leaks[0].growth_per_min > 100.0, "{:?}", report.leaks);
    assert_eq!(report.failures.len(), 1, "{:#?}", report.failures);
    assert!(report.failures[0].starts_with("task_growth: "));
    assert_eq!(
        report.lines_delivered, report.lines_written,
        "delivery still passes"
    );
    let junit = run.junit();
    assert!(
        junit.contains(r#"failures="1""#) && junit.contains("leaklab"),
        "{junit}"
    );
    run.assert_shipper_gone();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lines_fail_delivery_naming_them() {
    let run = Run::new(
        "lossy",
        &profile("", "").replace(r#"drain_timeout = "10s""#, r#"drain_timeout = "2s""#),
    );
    let done = execute(&run.args()).await.unwrap();
    let report = done.report.unwrap();
    assert_eq!(done.code, 1);
    assert!(report.lines_delivered < report.lines_written);
    let delivery = report
        .failures
        .iter()
        .find(|f| f.starts_with("delivery: "))
        .unwrap_or_else(|| panic!("{:#?}", report.failures));
    assert!(
        delivery.contains("missing") && delivery.contains("not drained"),
        "{delivery}"
    );
    run.assert_shipper_gone();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipper_that_ignores_sigterm_is_killed_and_fails_the_run() {
    let run = Run::new("ignore-term", &profile("", ""));
    let done = execute(&run.args()).await.unwrap();
    let report = done.report.unwrap();
    assert_eq!(done.code, 1);
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.starts_with("shipper_exit: ") && f.contains("killed")),
        "{:#?}",
        report.failures
    );
    run.assert_shipper_gone();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipper_that_cannot_start_exits_3_with_its_log() {
    let run = Run::new("crash", &profile("", ""));
    let done = execute(&run.args()).await.unwrap();
    let report = done.report.unwrap();
    assert_eq!(done.code, 3);
    assert!(!report.passed);
    assert!(report.failures[0].starts_with("shipper_start: "));
    assert!(
        report.failures[0].contains("config is broken on purpose"),
        "{:?}",
        report.failures
    );
    run.assert_shipper_gone();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipper_without_debug_tasks_exits_3() {
    let run = Run::new(
        "no-debug",
        &profile("", "").replace(r#"startup_timeout = "10s""#, r#"startup_timeout = "2s""#),
    );
    let started = Instant::now();
    let done = execute(&run.args()).await.unwrap();
    assert_eq!(done.code, 3);
    let report = done.report.unwrap();
    assert!(
        report.failures[0].contains("/debug/tasks"),
        "{:?}",
        report.failures
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    run.assert_shipper_gone();
}

#[tokio::test]
async fn bad_profiles_and_missing_shippers_are_refused() {
    let run = Run::new(
        "good",
        "duration = \"5s\"\n[generator]\nfiles = 0\nlines_per_sec = 1\n",
    );
    let done = execute(&run.args()).await.unwrap();
    assert_eq!((done.code, done.report.is_none()), (2, true));
    let run = Run::new("good", &profile("", ""));
    let args = SoakArgs {
        shipper: Some(run.dir.path().join("no-such-shipper")),
        ..run.args()
    };
    let done = execute(&args).await.unwrap();
    assert_eq!(done.code, 3);
    assert!(done.report.unwrap().failures[0].contains("no-such-shipper"));
}

/// `diagtool soak` as a process, its stderr read until the run is writing.
struct Cli {
    child: std::process::Child,
    stdout: std::process::ChildStdout,
    /// Keeps reading stderr, so diagtool never writes into a closed or full pipe.
    stderr: std::thread::JoinHandle<String>,
}

impl Cli {
    fn start(run: &Run) -> Cli {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_diagtool"))
            .arg("soak")
            .arg("--profile")
            .arg(run.dir.path().join("profile.toml"))
            .arg("--shipper")
            .arg(run.dir.path().join("shipper"))
            // Its work directory goes inside the test's, so even a diagtool killed outright
            // (which cannot remove it) leaves nothing behind.
            .env("TMPDIR", run.dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (writing_tx, writing) = std::sync::mpsc::channel();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains(" writing ") {
                    let _ = writing_tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        if writing.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "diagtool soak was not writing within 30 s: {}",
                stderr.join().unwrap()
            );
        }
        Cli {
            child,
            stdout,
            stderr,
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits (bounded) for it to exit; its exit code and stdout.
    fn finish(mut self) -> (Option<i32>, String) {
        use std::io::Read as _;
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "diagtool soak did not exit");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        self.stdout.read_to_string(&mut out).unwrap();
        let err = self.stderr.join().unwrap();
        (status.code(), format!("{out}\n--- stderr:\n{err}"))
    }
}

fn wait_gone(pid_file: &Path) {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_exists(pid) {
        assert!(
            Instant::now() < deadline,
            "the shipper {pid} was left running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_stops_the_shipper_and_still_prints_the_document() {
    let run = Run::new("good", &profile("", "").replace("\"5s\"", "\"60s\""));
    let cli = Cli::start(&run);
    cli.signal(libc::SIGINT);
    let (code, out) = cli.finish();
    assert_eq!(code, Some(1), "{out}");
    let stdout = out.split("\n--- stderr:\n").next().unwrap();
    let last = stdout.lines().last().unwrap();
    let report = diagtool::model::SoakReport::from_json(last).unwrap();
    assert!(!report.passed);
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.starts_with("completed: interrupted by Ctrl-C")),
        "{:#?}",
        report.failures
    );
    run.assert_shipper_gone();
}

#[test]
fn sigterm_to_diagtool_ends_the_run_in_order() {
    let run = Run::new("good", &profile("", "").replace("\"5s\"", "\"60s\""));
    let cli = Cli::start(&run);
    cli.signal(libc::SIGTERM);
    let (code, out) = cli.finish();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("completed: interrupted by SIGTERM"), "{out}");
    run.assert_shipper_gone();
}

#[test]
fn killing_diagtool_outright_takes_the_shipper_down_too() {
    let run = Run::new("good", &profile("", "").replace("\"5s\"", "\"60s\""));
    let cli = Cli::start(&run);
    cli.signal(libc::SIGKILL);
    let (code, _) = cli.finish();
    assert_eq!(code, None, "killed by a signal");
    // No cleanup code ran: the kernel's parent-death signal ended the shipper.
    wait_gone(&run.dir.path().join("shipper.pid"));
    let work_dirs = std::fs::read_dir(run.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("diagtool-soak-")
        })
        .count();
    assert_eq!(
        work_dirs, 1,
        "the work directory was made inside the test's"
    );
}

/// Regression (issue 14): `scripts/soak` passed `--shipper target/release/shipper`, relative to the
/// directory it ran in, and the soak started the shipper from its own work directory, where that
/// path names nothing ("cannot start the shipper ...: No such file or directory"). CI hid it with
/// an absolute `CARGO_TARGET_DIR`. Here diagtool runs in the test's directory with relative
/// `--profile` and `--shipper` paths, and its work directory is elsewhere.
#[test]
fn a_relative_shipper_path_is_taken_from_the_directory_diagtool_runs_in() {
    let run = Run::new("good", &profile("", ""));
    let out_path = run.dir.path().join("soak.out");
    std::fs::create_dir_all(run.dir.path().join("work")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_diagtool"))
        .current_dir(run.dir.path())
        .args([
            "soak",
            "--profile",
            "profile.toml",
            "--shipper",
            "./shipper",
        ])
        .env("TMPDIR", run.dir.path().join("work"))
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(run.dir.path().join("soak.err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("diagtool soak did not exit within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&out_path).unwrap();
    let err = std::fs::read_to_string(run.dir.path().join("soak.err")).unwrap();
    assert_eq!(status.code(), Some(0), "{out}\n--- stderr:\n{err}");
    let report = diagtool::model::SoakReport::from_json(out.lines().last().unwrap()).unwrap();
    assert!(report.passed, "{:#?}", report.failures);
    assert_eq!(report.lines_delivered, report.lines_written);
    run.assert_shipper_gone();
}

// ---------------------------------------------------------------------------------------------
// The stand-in shipper.

/// Runs only as the soak's child (started by the script in [`Run::new`]); a no-op otherwise.
#[test]
#[ignore = "the stand-in shipper: started by the soak tests as a child process"]
fn fake_shipper() {
    let Ok(args) = std::env::var(ARGS_ENV) else {
        return;
    };
    let mode = std::env::var(MODE_ENV).unwrap_or_default();
    if let Ok(pidfile) = std::env::var(PIDFILE_ENV) {
        std::fs::write(pidfile, std::process::id().to_string()).unwrap();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(fake::run(&args, &mode));
    std::process::exit(code);
}

mod fake {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use diagtool::model::{ProcessStats, SNAPSHOT_SCHEMA, SiteStats, Snapshot, TaskTotals};

    struct Config {
        main: SocketAddr,
        debug: SocketAddr,
        logs: PathBuf,
        push_url: String,
    }

    fn config(args: &str) -> Config {
        let path = args
            .split_whitespace()
            .skip_while(|a| *a != "--config")
            .nth(1)
            .unwrap();
        let table: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let include = table["sources"].as_array().unwrap()[0]["include"]
            .as_array()
            .unwrap()[0]
            .as_str()
            .unwrap()
            .to_owned();
        Config {
            main: table["server"]["main_addr"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
            debug: table["server"]["debug_addr"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
            logs: Path::new(&include).parent().unwrap().to_owned(),
            push_url: format!(
                "{}/loki/api/v1/push",
                table["sink"]["url"].as_str().unwrap()
            ),
        }
    }

    /// `poll-spawn:COUNT/PERIODms` from the arguments.
    fn leak(args: &str) -> Option<(u64, f64)> {
        leak_spec(args, "poll-spawn:")
    }

    /// `PREFIX COUNT/PERIODms` from the arguments.
    fn leak_spec(args: &str, prefix: &str) -> Option<(u64, f64)> {
        let spec = args
            .split_whitespace()
            .skip_while(|a| *a != "--leak-lab")
            .nth(1)?;
        let (count, period) = spec.strip_prefix(prefix)?.split_once('/')?;
        let ms: f64 = period.strip_suffix("ms")?.parse().ok()?;
        Some((count.parse().ok()?, ms / 1000.0))
    }

    fn process() -> ProcessStats {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let count = |dir: &str| {
            std::fs::read_dir(dir)
                .map(|d| d.count() as u64)
                .unwrap_or(0)
        };
        ProcessStats {
            pid: std::process::id(),
            rss_bytes: pages * 4096,
            open_fds: count("/proc/self/fd"),
            threads: count("/proc/self/task"),
        }
    }

    /// The heap profile: a pool of 2 MiB, and with `memory-cache:KIB/PERIODms` a cache that
    /// keeps KIB more every period (every piece sampled, as a large allocation nearly always is).
    fn heap(started: Instant, cache: Option<(u64, f64)>) -> Vec<u8> {
        use diagtool::model::heap::{INUSE_OBJECTS, INUSE_SPACE};
        use diagtool::pprof::{Frame, ProfileBuilder};
        let mut builder = ProfileBuilder::new(&[(INUSE_OBJECTS, "count"), (INUSE_SPACE, "bytes")])
            .period("space", "bytes", 1 << 19);
        let main = Frame::at("fake::main", "fake/src/main.rs", 3);
        builder.add(
            &[
                main.clone(),
                Frame::at("fake::tail::buffers", "fake/src/tail.rs", 12),
            ],
            &[4, 2 << 20],
        );
        if let Some((kib, period)) = cache {
            let pieces = (started.elapsed().as_secs_f64() / period).floor() as i64;
            builder.add(
                &[
                    main,
                    Frame::at(
                        "fake::leaklab::memory_cache_insert",
                        "fake/src/leaklab.rs",
                        140,
                    ),
                ],
                &[pieces, pieces * kib as i64 * 1024],
            );
        }
        builder.encode_gzip()
    }

    fn snapshot(started: Instant, leak: Option<(u64, f64)>) -> Snapshot {
        let uptime = started.elapsed().as_secs_f64();
        let mut sites = vec![SiteStats {
            site: "fake/src/tail.rs:10:5".into(),
            live: 2,
            spawned_total: 2,
            oldest_age_s: uptime,
            median_age_s: uptime,
            ..Default::default()
        }];
        if let Some((count, period)) = leak {
            let steps = (uptime / period).floor();
            let live = count * steps as u64;
            sites.push(SiteStats {
                site: "fake/src/leaklab.rs:88:17".into(),
                live,
                spawned_total: live,
                oldest_age_s: if live > 0 { uptime - period } else { 0.0 },
                median_age_s: if live > 0 {
                    (uptime - period) / 2.0
                } else {
                    0.0
                },
                names: vec!["leak-poll".into()],
                ..Default::default()
            });
        }
        sites.sort_by_key(|s| std::cmp::Reverse(s.live));
        let live = sites.iter().map(|s| s.live).sum();
        Snapshot {
            schema: SNAPSHOT_SCHEMA.into(),
            service: "fake-shipper".into(),
            taken_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
            uptime_s: uptime,
            process: process(),
            runtime: Default::default(),
            tasks: TaskTotals {
                live,
                spawned_total: live,
                terminated_total: 0,
            },
            sites,
            tasks_detail: None,
        }
    }

    /// Reads what was appended to each `*.log` since the last call (no rotation handling: the
    /// tests that use the stand-in do not rotate).
    fn tail(logs: &Path, offsets: &mut HashMap<PathBuf, u64>) -> Vec<(String, String)> {
        let mut lines = Vec::new();
        let Ok(entries) = std::fs::read_dir(logs) else {
            return lines;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let offset = offsets.entry(path.clone()).or_insert(0);
            let mut f = std::fs::File::open(&path).unwrap();
            f.seek(SeekFrom::Start(*offset)).unwrap();
            let mut text = String::new();
            f.read_to_string(&mut text).unwrap();
            let complete = text.rfind('\n').map_or(0, |i| i + 1);
            *offset += complete as u64;
            let name = path.display().to_string();
            lines.extend(
                text[..complete]
                    .lines()
                    .map(|l| (name.clone(), l.to_owned())),
            );
        }
        lines
    }

    async fn push(client: &reqwest::Client, url: &str, lines: &[(String, String)]) {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let values: Vec<serde_json::Value> = lines
            .iter()
            .enumerate()
            .map(|(i, (_, l))| serde_json::json!([(ns + i as u128).to_string(), l]))
            .collect();
        let body = serde_json::json!({"streams": [{"stream": {"job": "soak"}, "values": values}]});
        // Until accepted: a fault window answers 503 for a while.
        loop {
            let sent = client.post(url).json(&body).send().await;
            if matches!(&sent, Ok(r) if r.status() == 204) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(super) async fn run(args: &str, mode: &str) -> i32 {
        if mode == "crash" {
            eprintln!("fake shipper: config is broken on purpose");
            return 2;
        }
        let cfg = config(args);
        let leak = leak(args);
        let cache = leak_spec(args, "memory-cache:");
        let started = Instant::now();
        let main = Router::new()
            .route("/ready", get(|| async { "ready" }))
            .route("/health", get(|| async { r#"{"status":"ok"}"# }));
        let debug = Router::new()
            .route(
                "/debug/tasks",
                get(move || async move { axum::Json(snapshot(started, leak)) }),
            )
            .route(
                "/debug/pprof/heap",
                get(move || async move { heap(started, cache) }),
            );
        // Like the real shipper: a port taken meanwhile (by a test running in parallel) is one
        // short line and an exit, which the soak recognises and retries with other ports. A panic's
        // backtrace would push the cause out of the log tail the soak reads.
        let (Ok(main_listener), Ok(debug_listener)) = (
            tokio::net::TcpListener::bind(cfg.main).await,
            tokio::net::TcpListener::bind(cfg.debug).await,
        ) else {
            eprintln!("fake shipper: cannot bind its ports: Address already in use");
            return 1;
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let servers = {
            let (s1, s2) = (stop.clone(), stop.clone());
            let serve_main = axum::serve(main_listener, main)
                .with_graceful_shutdown(async move { s1.cancelled().await });
            let silent = mode == "no-debug";
            let serve_debug = async move {
                if silent {
                    // Bound but silent about /debug/tasks: every request gets a 404.
                    axum::serve(debug_listener, Router::new())
                        .with_graceful_shutdown(async move { s2.cancelled().await })
                        .await
                } else {
                    axum::serve(debug_listener, debug)
                        .with_graceful_shutdown(async move { s2.cancelled().await })
                        .await
                }
            };
            tokio::spawn(async move {
                let _ = tokio::join!(serve_main, serve_debug);
            })
        };
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let client = reqwest::Client::new();
        let mut offsets = HashMap::new();
        let mut n = 0u64;
        loop {
            let mut lines = tail(&cfg.logs, &mut offsets);
            if mode == "lossy" {
                lines.retain(|_| {
                    n += 1;
                    !n.is_multiple_of(50)
                });
            }
            if !lines.is_empty() {
                push(&client, &cfg.push_url, &lines).await;
            }
            tokio::select! {
                _ = term.recv() => {
                    if mode == "ignore-term" {
                        continue;
                    }
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        let lines = tail(&cfg.logs, &mut offsets);
        if !lines.is_empty() {
            push(&client, &cfg.push_url, &lines).await;
        }
        stop.cancel();
        let _ = servers.await;
        0
    }
}
