//! `diagtool soak`: run the shipper under a profile's workload on loopback and judge it.
//!
//! One run owns everything it starts, in a fresh temporary directory: a strict Loki-compatible
//! [`Receiver`] (in this process), the shipper as a child process ([`child`]) reading the files a
//! log generator ([`generator`]) writes, and a sampler ([`sampler`]) of the shipper's `/debug/tasks`
//! and `/health`. The phases:
//!
//! 1. start: receiver, shipper (free ports, retried if a port was taken meanwhile), wait for
//!    `/ready` and for a first snapshot; failing that the run ends with exit 3;
//! 2. write for the profile's duration, applying fault windows to the receiver and sampling every
//!    interval, with a progress line on stderr;
//! 3. drain: writing stopped, wait until every written line arrived or the drain timeout;
//! 4. stop the shipper (SIGTERM, then SIGKILL after its shutdown timeout), account for every line
//!    the receiver got ([`delivery`]), and [`judge`](judge::judge) the evidence;
//! 5. print the summary table, write the JUnit file, and print the `diagtool.soak/v1` document as
//!    the last line of stdout.
//!
//! Ctrl-C or SIGTERM during any phase stops the shipper and ends the run as failed, with the
//! document printed; an early return or a panic drops the child handle, which kills the shipper's
//! process group; and if diagtool itself is killed outright, the kernel kills the shipper. Exit codes: 0 passed,
//! 1 failed, 2 bad profile or usage, 3 the shipper could not start.

pub mod child;
pub mod delivery;
pub mod generator;
pub mod heap;
pub mod judge;
pub mod junit;
mod launch;
pub mod profile;
pub mod sampler;
pub mod summary;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use crate::loki::Receiver;
use crate::model::{SOAK_SCHEMA, SoakReport};

use child::Stopped;
use delivery::{Written, account};
use generator::{Generator, GeneratorThread};
use judge::{CheckResult, Evidence, Judgement, ShipperEnd};
use launch::{raise_fd_limit, start_shipper};
use profile::{FaultKind, Profile};
use sampler::Samples;
use summary::{Progress, ProgressWriter};

/// Exit code: every check passed.
pub const EXIT_PASSED: u8 = 0;
/// Exit code: a check failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the profile or the arguments are not usable.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the shipper could not be started (or never became ready).
pub const EXIT_NO_SHIPPER: u8 = 3;

/// Extra time on top of the shipper's own shutdown timeout before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The arguments of `diagtool soak`.
#[derive(Debug, Clone, Default)]
pub struct SoakArgs {
    /// The profile file (TOML).
    pub profile: PathBuf,
    /// Run this long instead of the profile's duration; the profile's times scale with it.
    pub duration: Option<Duration>,
    /// Write a JUnit XML report here.
    pub junit: Option<PathBuf>,
    /// The shipper binary [default: `shipper` beside the running diagtool].
    pub shipper: Option<PathBuf>,
}

/// Runs a soak on a runtime of its own; see [`run_async`]. Call it outside any tokio runtime.
pub fn run(args: SoakArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("soak")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run_async(args))
}

/// Runs a soak and prints its summary and document; returns the exit code (see the module docs).
///
/// Errors are reserved for the machine failing under the soak (no temporary directory, no
/// loopback socket, a log file that cannot be written); a bad profile or a shipper that does not
/// start are answered with their exit codes after a message on stderr.
pub async fn run_async(args: SoakArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::from(execute(&args).await?.code))
}

/// How a soak ended: its exit code and, unless the profile was unusable, its document.
#[derive(Debug, Clone)]
pub struct Finished {
    /// [`EXIT_PASSED`], [`EXIT_FAILED`], [`EXIT_USAGE`] or [`EXIT_NO_SHIPPER`].
    pub code: u8,
    /// The document printed as the last line of stdout (`None` for a usage error).
    pub report: Option<SoakReport>,
}

/// [`run_async`], returning the document as well as the exit code (for tests and embedders).
pub async fn execute(args: &SoakArgs) -> anyhow::Result<Finished> {
    let profile = match Profile::load(&args.profile, args.duration) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("diagtool soak: {e}");
            return Ok(Finished {
                code: EXIT_USAGE,
                report: None,
            });
        }
    };
    let started = Instant::now();
    let outcome = match resolve_shipper(args.shipper.as_deref()) {
        Ok(shipper) => soak(&profile, &shipper).await?,
        Err(message) => Outcome::NoStart(message),
    };
    let (judgement, code) = match outcome {
        Outcome::Judged(j) => {
            let code = if j.passed() { EXIT_PASSED } else { EXIT_FAILED };
            (*j, code)
        }
        Outcome::NoStart(message) => {
            eprintln!("diagtool soak: {message}");
            (not_started(&profile, message), EXIT_NO_SHIPPER)
        }
    };
    print!("{}", summary::table(&judgement));
    if let Some(path) = &args.junit {
        let xml = junit::render(&judgement, started.elapsed().as_secs_f64());
        std::fs::write(path, xml)
            .with_context(|| format!("cannot write the JUnit report to '{}'", path.display()))?;
    }
    let json = serde_json::to_string(&judgement.report).context("cannot encode the report")?;
    println!("{json}");
    Ok(Finished {
        code,
        report: Some(judgement.report),
    })
}

/// How a run ended.
enum Outcome {
    Judged(Box<Judgement>),
    NoStart(String),
}

/// The judgement of a run whose shipper never started: one failed check.
fn not_started(profile: &Profile, message: String) -> Judgement {
    let check = CheckResult {
        name: "shipper_start",
        passed: false,
        detail: message,
    };
    Judgement {
        analysis: crate::analysis::analyze(&[], &Default::default()),
        report: SoakReport {
            schema: SOAK_SCHEMA.to_owned(),
            profile: profile.name.clone(),
            passed: false,
            duration_s: 0.0,
            lines_written: 0,
            lines_delivered: 0,
            duplicates: 0,
            tasks_growth_per_min: 0.0,
            rss_growth_mib_per_min: 0.0,
            fds_growth_per_min: 0.0,
            leaks: Vec::new(),
            failures: vec![format!("{}: {}", check.name, check.detail)],
            long_polls: None,
        },
        checks: vec![check],
    }
}

/// `--shipper PATH`, or `shipper` beside the running executable (or beside its parent when it
/// runs from `target/*/deps`, as tests do). Always an absolute path: the shipper is started in
/// the run's work directory, where a relative path (`target/release/shipper`, as `scripts/soak`
/// used to pass) would name nothing, so a relative one is resolved here against the directory
/// diagtool was started in, as the user meant it.
pub(crate) fn resolve_shipper(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return if path.is_file() {
            std::path::absolute(path).map_err(|e| {
                format!(
                    "--shipper '{}': cannot make the path absolute ({e}); give an absolute path",
                    path.display()
                )
            })
        } else {
            Err(format!(
                "--shipper '{}' is not a file; give the path of the shipper binary",
                path.display()
            ))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot locate the running diagtool ({e}); pass --shipper PATH"))?;
    let mut dirs = Vec::new();
    if let Some(dir) = exe.parent() {
        dirs.push(dir.to_owned());
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(up) = dir.parent()
        {
            dirs.push(up.to_owned());
        }
    }
    dirs.iter()
        .map(|d| d.join("shipper"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no shipper binary beside diagtool in '{}'; build it (cargo build -p shipper, \
                 with the same --release as diagtool) or pass --shipper PATH",
                dirs.first()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            )
        })
}

/// Ctrl-C (SIGINT) and SIGTERM, listened for from the start of a run: either ends it in order
/// (the shipper stopped, the document printed) instead of killing diagtool mid-way.
pub(super) struct Interrupts {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl Interrupts {
    /// Installs the handlers now (not on first poll), so a signal during start-up is not lost.
    pub(super) fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind, name| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!(
                    "diagtool soak: cannot listen for {name} ({e}); it will not stop the run in order"
                );
                None
            }
        };
        Interrupts {
            int: listen(SignalKind::interrupt(), "Ctrl-C"),
            term: listen(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Waits for either signal; never returns when neither could be installed.
    pub(super) async fn recv(&mut self) -> &'static str {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    if s.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.int) => "Ctrl-C",
            _ = one(&mut self.term) => "SIGTERM",
        }
    }
}

/// A fault window, as shown on the progress line.
fn fault_name(kind: FaultKind) -> String {
    match kind {
        FaultKind::Status(s) => s.to_string(),
        FaultKind::Hang => "hang".to_owned(),
    }
}

/// What the sampling loop is waiting for.
enum Phase {
    Writing,
    Draining { written: u64, deadline: Instant },
}

/// One run, from start to judgement.
async fn soak(profile: &Profile, program: &Path) -> anyhow::Result<Outcome> {
    let work = tempfile::Builder::new()
        .prefix("diagtool-soak-")
        .tempdir()
        .context("cannot create a temporary directory for the soak")?;
    let dir = work.path();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("cannot create '{}'", logs.display()))?;
    raise_fd_limit();
    let receiver = Receiver::start()
        .await
        .context("cannot start the Loki receiver on 127.0.0.1")?;
    let mut interrupts = Interrupts::install();
    let started = start_shipper(profile, program, dir, &receiver.url(), &mut interrupts).await?;
    let (mut child, sampler) = match started {
        Ok(started) => started,
        Err(message) => {
            receiver.shutdown().await;
            return Ok(Outcome::NoStart(message));
        }
    };

    let g = &profile.generator;
    let generator = Generator::new(
        &logs,
        g.clone(),
        profile.rotation.clone(),
        profile.bursts.clone(),
    )
    .context("cannot create the generator's files")?;
    let mut writer = GeneratorThread::start(generator, profile.duration)
        .context("cannot start the generator")?;
    let start = Instant::now();
    let mut faults: VecDeque<_> = {
        let mut f = profile.faults.clone();
        f.sort_by_key(|f| f.window.at);
        f.into()
    };
    let mut fault_now: Option<(String, Instant)> = None;
    let mut samples = Samples::default();
    let mut progress = ProgressWriter::default();
    let mut tick = tokio::time::interval(profile.sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut interrupted_at_s = None;
    let mut interrupted_by = "";
    let mut died = None;
    let mut phase = Phase::Writing;
    let mut drained_in_s = None;
    let mut written_total = 0;

    loop {
        if let Phase::Draining { written, deadline } = phase {
            // Cheap test first: the receiver's count includes duplicates, so only when it
            // reaches what was written can every line be there.
            if receiver.count() >= written {
                let w = written_of(profile, written);
                let lines = receiver.lines();
                if account(w, lines.iter().map(String::as_str)).missing == 0 {
                    drained_in_s = Some(
                        (Instant::now() - (start + profile.duration))
                            .as_secs_f64()
                            .max(0.0),
                    );
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        let next_fault = faults.front().map(|f| start + f.window.at);
        tokio::select! {
            biased;
            name = interrupts.recv() => {
                interrupted_at_s = Some(start.elapsed().as_secs_f64());
                interrupted_by = name;
                break;
            }
            status = child.exited() => {
                let status = status.context("cannot watch the shipper")?;
                died = Some(status.code().unwrap_or(-1));
                break;
            }
            _ = writer.wait(), if matches!(phase, Phase::Writing) => {
                written_total = writer.written();
                phase = Phase::Draining {
                    written: written_total,
                    deadline: Instant::now() + profile.limits.drain_timeout,
                };
            }
            _ = tokio::time::sleep_until(next_fault.unwrap_or(start)), if next_fault.is_some() => {
                if let Some(f) = faults.pop_front() {
                    match f.kind {
                        FaultKind::Status(s) => receiver.fail_for(f.window.length, s),
                        FaultKind::Hang => receiver.hang_for(f.window.length),
                    }
                    fault_now = Some((fault_name(f.kind), Instant::now() + f.window.length));
                }
            }
            _ = receiver.wait_for_count(receiver.count() + 1, Duration::from_millis(500)),
                if matches!(phase, Phase::Draining { .. }) => {}
            _ = tick.tick() => {
                let (snapshot, health) = sampler.sample().await;
                samples.record(snapshot, health);
                if samples.heap.wanted() {
                    samples.heap.record(sampler.heap().await);
                }
                if fault_now.as_ref().is_some_and(|(_, end)| Instant::now() >= *end) {
                    fault_now = None;
                }
                let last = samples.snapshots.last();
                progress.show(&Progress {
                    profile: profile.name.clone(),
                    elapsed_s: start.elapsed().as_secs_f64(),
                    duration_s: profile.duration.as_secs_f64(),
                    phase: match phase { Phase::Writing => "writing", Phase::Draining { .. } => "draining" },
                    written: writer.written(),
                    received: receiver.count(),
                    tasks: last.map(|s| s.tasks.live),
                    rss_mib: last.map(|s| s.process.rss_bytes as f64 / (1024.0 * 1024.0)),
                    fds: last.map(|s| s.process.open_fds),
                    health: samples.last_health.clone(),
                    fault: fault_now.as_ref().map(|(name, _)| name.clone()),
                    sample_errors: samples.snapshot_errors + samples.health.errors,
                });
            }
        }
    }
    progress.finish();

    let generator = writer.finish().await.context("the log generator failed")?;
    let written = generator.written().max(written_total);
    // A last look after the drain, so the window ends where the run does.
    if died.is_none() && interrupted_at_s.is_none() {
        let (snapshot, health) = sampler.sample().await;
        samples.record(snapshot, health);
        if samples.heap.wanted() {
            samples.heap.record(sampler.heap().await);
        }
    }
    let shipper_log = dir.join("shipper.log");
    let shipper = match died {
        Some(code) => ShipperEnd::Died(code),
        None => match child
            .stop(profile.shipper.shutdown_timeout + STOP_GRACE)
            .await
            .context("cannot stop the shipper")?
        {
            Stopped::Exited(status) => ShipperEnd::Stopped(status.code().unwrap_or(-1)),
            Stopped::Killed => ShipperEnd::Killed,
        },
    };
    let lines = receiver.lines();
    let delivery = account(
        written_of(profile, written),
        lines.iter().map(String::as_str),
    );
    drop(lines);
    let rejected_bodies = receiver.rejected_bodies();
    receiver.shutdown().await;

    let evidence = Evidence {
        profile: profile.name.clone(),
        duration_s: profile.duration.as_secs_f64(),
        delivery,
        drained_in_s,
        rejected_bodies,
        snapshots: std::mem::take(&mut samples.snapshots),
        snapshot_errors: samples.snapshot_errors,
        health: samples.health.clone(),
        heap: std::mem::take(&mut samples.heap),
        shipper,
        interrupted_at_s,
        interrupted_by: interrupted_by.to_owned(),
    };
    let judgement = judge::judge(&profile.limits, &evidence);
    if !judgement.passed() {
        eprintln!(
            "diagtool soak: the shipper's log ends with:\n{}",
            child::log_tail(&shipper_log, 20)
        );
        if let Some(e) = &samples.last_error {
            eprintln!("diagtool soak: last failed sample: {e}");
        }
    }
    Ok(Outcome::Judged(Box::new(judgement)))
}

fn written_of(profile: &Profile, lines: u64) -> Written {
    Written {
        files: profile.generator.files,
        lines,
        line_bytes: profile.generator.line_bytes,
        special_every: profile.generator.special_every,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_shipper_path_is_made_absolute_against_the_current_directory() {
        // Unit tests run in the package's directory, which holds Cargo.toml.
        let resolved = resolve_shipper(Some(Path::new("Cargo.toml"))).unwrap();
        assert!(resolved.is_absolute(), "{}", resolved.display());
        assert_eq!(
            resolved,
            Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")
        );
    }

    #[test]
    fn a_missing_shipper_is_named() {
        let err = resolve_shipper(Some(Path::new("/nonexistent/shipper"))).unwrap_err();
        assert!(err.contains("/nonexistent/shipper"), "{err}");
    }
}
