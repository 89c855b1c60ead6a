//! Benchmark: the cost of the task registry per spawn+join of a trivial task, against a plain
//! runtime and against console-subscriber (`scripts/bench-overhead`).
//!
//! Without `--child`, this is the driver: it runs one child process of itself per (mode, round),
//! rotating the order of the modes each round so drift on a shared machine hits every mode alike,
//! and prints the medians as the contract's JSON on its last line. A child process per run keeps
//! the modes apart: console-subscriber has to be the process's global subscriber, the way
//! tokio-console users install it, and cannot be taken off again.
//!
//! Each child builds a 2-worker runtime, spawns and joins `--tasks` trivial tasks in batches from
//! a task running on a worker (so spawns take the worker's local queue, as they do in a service),
//! after a warm-up batch, and prints `ns_per_task X`. It then times tasks that park once (a
//! yield) and the polls of one task that yields 2M times; in `traced` mode (the registry plus
//! the probe's `Traced` wrapper, as `spawn_named` spawns) these show the wrapper's cost: its
//! board entry for a task that parks, and its per-poll check.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const DEFAULT_TASKS: u64 = 1_000_000;
/// console-subscriber costs some 35x and keeps every task for an hour: fewer tasks keep a run short
/// and its memory in check; the figure compared is per task.
const DEFAULT_CONSOLE_TASKS: u64 = 100_000;
const DEFAULT_ROUNDS: usize = 9;
const DEFAULT_CONSOLE_ROUNDS: usize = 3;
const DEFAULT_BATCH: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Registry,
    /// The registry, and every task wrapped in the probe's `Traced` (what `spawn_named` does).
    Traced,
    Console,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Registry => "registry",
            Mode::Traced => "traced",
            Mode::Console => "console",
        }
    }

    fn parse(text: &str) -> Result<Mode> {
        Ok(match text {
            "plain" => Mode::Plain,
            "registry" => Mode::Registry,
            "traced" => Mode::Traced,
            "console" => Mode::Console,
            other => bail!("mode {other:?} is unknown: use plain, registry, traced or console"),
        })
    }
}

#[derive(Debug)]
struct Options {
    child: Option<Mode>,
    tasks: u64,
    console_tasks: u64,
    rounds: usize,
    console_rounds: usize,
    batch: u64,
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        child: None,
        tasks: DEFAULT_TASKS,
        console_tasks: DEFAULT_CONSOLE_TASKS,
        rounds: DEFAULT_ROUNDS,
        console_rounds: DEFAULT_CONSOLE_ROUNDS,
        batch: DEFAULT_BATCH,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("flag {flag} needs a value"))?;
        let number = || -> Result<u64> {
            let n: u64 = value
                .parse()
                .with_context(|| format!("{flag} {value:?}: expected a positive number"))?;
            if n == 0 {
                bail!("{flag} must be at least 1");
            }
            Ok(n)
        };
        match flag.as_str() {
            "--child" => options.child = Some(Mode::parse(&value)?),
            "--tasks" => options.tasks = number()?,
            "--console-tasks" => options.console_tasks = number()?,
            "--rounds" => options.rounds = number()? as usize,
            "--console-rounds" => options.console_rounds = number()? as usize,
            "--batch" => options.batch = number()?,
            other => bail!(
                "unknown flag {other:?}: use --tasks N --console-tasks N --rounds N --console-rounds N --batch N"
            ),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let run = parse_args().and_then(|options| match options.child {
        Some(mode) => child(mode, &options),
        None => driver(&options),
    });
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_overhead: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// One measured run in this process: prints `ns_per_task X`.
fn child(mode: Mode, options: &Options) -> Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    let _registry = match mode {
        Mode::Registry | Mode::Traced => Some(diagtool_probe::TaskRegistry::install(&mut builder)),
        Mode::Plain => None,
        Mode::Console => {
            // As tokio-console's README has users do it, on a free loopback port so parallel
            // runs do not collide on 6669.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("finding a free port for the console server")?
                .port();
            console_subscriber::ConsoleLayer::builder()
                .server_addr(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                .init();
            None
        }
    };
    let runtime = builder.build().context("building the runtime")?;
    let tasks = if mode == Mode::Console {
        options.console_tasks
    } else {
        options.tasks
    };
    let batch = options.batch.min(tasks);
    let wrapped = mode == Mode::Traced;
    let park_tasks = (tasks / 5).max(1);
    let (elapsed, cpu_ms, parked, polled) = runtime.block_on(async move {
        // The loop runs on a worker, like a service's own tasks.
        tokio::spawn(async move {
            spawn_join(batch, batch, wrapped).await;
            let cpu_start = process_cpu_ms();
            let start = Instant::now();
            spawn_join(tasks, batch, wrapped).await;
            let spawned = (start.elapsed(), process_cpu_ms() - cpu_start);
            // Tasks that park once: a wrapped one joins the trace board (and leaves it).
            let start = Instant::now();
            park_join(park_tasks, batch, wrapped).await;
            let parked = start.elapsed();
            let polled = polls(POLLS, wrapped).await;
            (spawned.0, spawned.1, parked, polled)
        })
        .await
    })?;
    drop(runtime);
    println!(
        "ns_per_task {:.1} cpu_ns_per_task {:.1}",
        elapsed.as_nanos() as f64 / tasks as f64,
        cpu_ms * 1e6 / tasks as f64
    );
    println!(
        "park_ns_per_task {:.1} ns_per_poll {:.2}",
        parked.as_nanos() as f64 / park_tasks as f64,
        polled.as_nanos() as f64 / POLLS as f64
    );
    Ok(())
}

/// User + system CPU time of this process so far (every thread), in milliseconds.
fn process_cpu_ms() -> f64 {
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_SELF always exists.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// Polls of one parked task measured for the per-poll cost.
const POLLS: u64 = 2_000_000;

async fn spawn_join(tasks: u64, batch: u64, wrapped: bool) {
    let mut handles = Vec::with_capacity(batch as usize);
    let mut left = tasks;
    while left > 0 {
        let n = left.min(batch);
        for i in 0..n {
            let task = async move { std::hint::black_box(i) };
            handles.push(if wrapped {
                tokio::spawn(diagtool_probe::traced(task))
            } else {
                tokio::spawn(task)
            });
        }
        for handle in handles.drain(..) {
            let _ = std::hint::black_box(handle.await);
        }
        left -= n;
    }
}

/// Spawns and joins `tasks` tasks that each park once (a yield) before they end.
async fn park_join(tasks: u64, batch: u64, wrapped: bool) {
    let mut handles = Vec::with_capacity(batch as usize);
    let mut left = tasks;
    while left > 0 {
        let n = left.min(batch);
        for i in 0..n {
            let task = async move {
                tokio::task::yield_now().await;
                std::hint::black_box(i)
            };
            handles.push(if wrapped {
                tokio::spawn(diagtool_probe::traced(task))
            } else {
                tokio::spawn(task)
            });
        }
        for handle in handles.drain(..) {
            let _ = std::hint::black_box(handle.await);
        }
        left -= n;
    }
}

/// How long `polls` polls of one task take: it yields `polls` times (each yield ends a poll).
async fn polls(polls: u64, wrapped: bool) -> Duration {
    let task = async move {
        let start = Instant::now();
        for _ in 0..polls {
            tokio::task::yield_now().await;
        }
        start.elapsed()
    };
    let handle = if wrapped {
        tokio::spawn(diagtool_probe::traced(task))
    } else {
        tokio::spawn(task)
    };
    handle.await.unwrap_or_default()
}

/// One child's figures: wall and CPU nanoseconds per spawn+join.
#[derive(Debug, Clone, Copy)]
struct Run {
    wall_ns: f64,
    cpu_ns: f64,
    /// Per spawn+park+join, and per poll of a parked task.
    park_ns: f64,
    poll_ns: f64,
}

fn run_child(mode: Mode, options: &Options) -> Result<Run> {
    let exe = std::env::current_exe().context("locating this benchmark's binary")?;
    let output = Command::new(exe)
        .args(["--child", mode.name()])
        .args(["--tasks", &options.tasks.to_string()])
        .args(["--console-tasks", &options.console_tasks.to_string()])
        .args(["--batch", &options.batch.to_string()])
        .env_remove("RUST_LOG")
        .output()
        .with_context(|| format!("running the {} child", mode.name()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "the {} child failed ({}): {}",
            mode.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (park_ns, poll_ns) = stdout
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("park_ns_per_task"), Some(park), Some("ns_per_poll"), Some(poll)) => {
                    Some((park.parse().ok()?, poll.parse().ok()?))
                }
                _ => None,
            }
        })
        .unwrap_or((0.0, 0.0));
    stdout
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("ns_per_task"), Some(wall), Some("cpu_ns_per_task"), Some(cpu)) => {
                    Some(Run {
                        wall_ns: wall.parse().ok()?,
                        cpu_ns: cpu.parse().ok()?,
                        park_ns,
                        poll_ns,
                    })
                }
                _ => None,
            }
        })
        .with_context(|| {
            format!(
                "the {} child printed no ns_per_task: {stdout:?}",
                mode.name()
            )
        })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn driver(options: &Options) -> Result<()> {
    let started = Instant::now();
    let mut plain = Vec::new();
    let mut registry = Vec::new();
    let mut console = Vec::new();
    let mut traced = Vec::new();
    let (mut plain_park, mut traced_park, mut plain_poll, mut traced_poll) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut plain_cpu, mut registry_cpu, mut console_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut ratios = Vec::new();
    for round in 0..options.rounds {
        let mut order = vec![Mode::Plain, Mode::Registry, Mode::Traced];
        if round < options.console_rounds {
            order.push(Mode::Console);
        }
        let len = order.len();
        order.rotate_left(round % len);
        let mut this_round = (None, None);
        for mode in order {
            let run = run_child(mode, options)?;
            let ns = run.wall_ns;
            eprintln!(
                "round {round}: {:<8} {ns:>10.1} ns/task wall {:>10.1} ns/task cpu",
                mode.name(),
                run.cpu_ns
            );
            match mode {
                Mode::Plain => {
                    plain.push(ns);
                    plain_cpu.push(run.cpu_ns);
                    this_round.0 = Some(ns);
                }
                Mode::Registry => {
                    registry.push(ns);
                    registry_cpu.push(run.cpu_ns);
                    this_round.1 = Some(ns);
                }
                Mode::Traced => {
                    traced.push(ns);
                    traced_park.push(run.park_ns);
                    traced_poll.push(run.poll_ns);
                }
                Mode::Console => {
                    console.push(ns);
                    console_cpu.push(run.cpu_ns);
                }
            }
            if mode == Mode::Plain {
                plain_park.push(run.park_ns);
                plain_poll.push(run.poll_ns);
            }
        }
        if let (Some(p), Some(r)) = this_round {
            ratios.push(r / p);
        }
    }
    let plain_ns = median(&mut plain);
    let registry_ns = median(&mut registry);
    let console_ns = median(&mut console);
    let traced_ns = median(&mut traced);
    let (plain_park, traced_park) = (median(&mut plain_park), median(&mut traced_park));
    let (plain_poll, traced_poll) = (median(&mut plain_poll), median(&mut traced_poll));
    let paired = median(&mut ratios);
    let plain_cpu = median(&mut plain_cpu);
    let registry_cpu = median(&mut registry_cpu);
    let console_cpu = median(&mut console_cpu);
    eprintln!(
        "median of per-round registry/plain ratios: {paired:.3}; spread plain {:.1}..{:.1} ns, \
         registry {:.1}..{:.1} ns; took {:?}",
        plain[0],
        plain[plain.len() - 1],
        registry[0],
        registry[registry.len() - 1],
        Duration::from_secs(started.elapsed().as_secs())
    );
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let round1 = |x: f64| (x * 10.0).round() / 10.0;
    let doc = serde_json::json!({
        "tasks": options.tasks,
        "plain_ns": round1(plain_ns),
        "registry_ns": round1(registry_ns),
        "console_ns": round1(console_ns),
        "registry_ratio": round3(registry_ns / plain_ns),
        "console_ratio": round3(console_ns / plain_ns),
        "console_tasks": options.console_tasks,
        "rounds": options.rounds,
        "console_rounds": options.console_rounds.min(options.rounds),
        "registry_ratio_paired": round3(paired),
        "plain_cpu_ns": round1(plain_cpu),
        "registry_cpu_ns": round1(registry_cpu),
        "console_cpu_ns": round1(console_cpu),
        "registry_cpu_ratio": round3(registry_cpu / plain_cpu),
        "console_cpu_ratio": round3(console_cpu / plain_cpu),
        "traced_ns": round1(traced_ns),
        "traced_ratio": round3(traced_ns / plain_ns),
        "plain_park_ns": round1(plain_park),
        "traced_park_ns": round1(traced_park),
        "traced_park_ratio": round3(traced_park / plain_park),
        "plain_poll_ns": round1(plain_poll),
        "traced_poll_ns": round1(traced_poll),
        "traced_poll_ratio": round3(traced_poll / plain_poll),
    });
    println!("{doc}");
    Ok(())
}
