//! Benchmark: the cost of the task registry per spawn+join of a trivial task, against a plain
//! runtime and against console-subscriber (`scripts/bench-overhead`).
//!
//! Without `--child`, this is the driver: it runs one child process of itself per (mode, round).
//! Each round runs plain and registry back to back (which goes first alternates), then traced,
//! then (in the first rounds) console; a first warm-up round is discarded. The registry's cost
//! is the median over rounds of the per-round registry/plain ratio, for wall and for CPU time
//! (paired: both runs of a pair saw nearly the same machine). The driver reads the load average
//! before and after, and gives no verdict when the 1-minute load at the start exceeded
//! `--max-load`: on a busy machine the pairs disagree by more than the cost measured.
//! It prints the contract's JSON on its last line. A child process per run keeps
//! the modes apart: console-subscriber has to be the process's global subscriber, the way
//! tokio-console users install it, and cannot be taken off again.
//!
//! Each child builds a 2-worker runtime, spawns and joins `--tasks` trivial tasks in batches from
//! a task running on a worker (so spawns take the worker's local queue, as they do in a service),
//! after a warm-up batch, and prints `ns_per_task X`. It then times tasks that park once (a
//! yield) and the polls of one task that yields 2M times; in `traced` mode (the registry plus
//! the probe's `Traced` wrapper, as `spawn_named` spawns) these show the wrapper's cost: its
//! board entry for a task that parks, and its per-poll check.
//!
//! Every child runs on a layout of its own: the driver gives it an `argv[0]` of random length
//! (8 to 71 bytes), and it allocates and keeps a block of random size (0 to 4 KiB) before
//! anything else. A fixed layout moves a registry run by up to 8% of a 2-worker spawn+join,
//! for reasons outside the registry's code: one build paired 1.02 with an 8- or 14-byte
//! `argv[0]` and 1.07-1.08 with a 30-, 55- or 71-byte one (8 rounds each; plain runs barely
//! moved), so the binary's path alone decided the verdict. Medians over random layouts measure
//! the registry, not where things happened to land.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const DEFAULT_TASKS: u64 = 500_000;
/// console-subscriber costs some 35x and keeps every task for an hour: fewer tasks keep a run short
/// and its memory in check; the figure compared is per task.
const DEFAULT_CONSOLE_TASKS: u64 = 100_000;
/// Rounds: each child has its own random heap layout, and layouts spread a run by +-30%, so the
/// median needs this many pairs to settle within about 1%.
const DEFAULT_ROUNDS: usize = 31;
const DEFAULT_WARMUP_ROUNDS: usize = 1;
/// The 1-minute load average above which the run reports no verdict (this machine has 2 cores).
const DEFAULT_MAX_LOAD: f64 = 1.0;
/// The registry's budget: paired wall and CPU ratios at most this (issue 16).
const DEFAULT_TARGET_RATIO: f64 = 1.05;
const DEFAULT_CONSOLE_ROUNDS: usize = 3;
const DEFAULT_BATCH: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Registry,
    /// Empty spawn and terminate hooks: tokio's hook dispatch alone, the floor under any
    /// registry (run by hand: `--child hooks`; the driver never schedules it).
    Hooks,
    /// The registry, and every task wrapped in the probe's `Traced` (what `spawn_named` does).
    Traced,
    Console,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Registry => "registry",
            Mode::Hooks => "hooks",
            Mode::Traced => "traced",
            Mode::Console => "console",
        }
    }

    fn parse(text: &str) -> Result<Mode> {
        Ok(match text {
            "plain" => Mode::Plain,
            "registry" => Mode::Registry,
            "hooks" => Mode::Hooks,
            "traced" => Mode::Traced,
            "console" => Mode::Console,
            other => {
                bail!("mode {other:?} is unknown: use plain, registry, traced, console or hooks")
            }
        })
    }
}

#[derive(Debug)]
struct Options {
    child: Option<Mode>,
    /// Worker threads of a child's runtime (the driver runs 2, and 1 for the single-worker pair).
    workers: usize,
    tasks: u64,
    console_tasks: u64,
    rounds: usize,
    console_rounds: usize,
    batch: u64,
    warmup_rounds: usize,
    max_load: f64,
    target_ratio: f64,
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        child: None,
        workers: 2,
        tasks: DEFAULT_TASKS,
        console_tasks: DEFAULT_CONSOLE_TASKS,
        rounds: DEFAULT_ROUNDS,
        console_rounds: DEFAULT_CONSOLE_ROUNDS,
        batch: DEFAULT_BATCH,
        warmup_rounds: DEFAULT_WARMUP_ROUNDS,
        max_load: DEFAULT_MAX_LOAD,
        target_ratio: DEFAULT_TARGET_RATIO,
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
        let ratio = || -> Result<f64> {
            match value.parse::<f64>() {
                Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => bail!("{flag} {value:?}: expected a positive number such as 1.5"),
            }
        };
        match flag.as_str() {
            "--child" => options.child = Some(Mode::parse(&value)?),
            "--workers" => options.workers = number()? as usize,
            "--tasks" => options.tasks = number()?,
            "--console-tasks" => options.console_tasks = number()?,
            "--rounds" => options.rounds = number()? as usize,
            "--console-rounds" => options.console_rounds = number()? as usize,
            "--batch" => options.batch = number()?,
            "--warmup-rounds" => {
                options.warmup_rounds = value.parse().with_context(|| {
                    format!("{flag} {value:?}: expected a number of rounds (0 or more)")
                })?
            }
            "--max-load" => options.max_load = ratio()?,
            "--target-ratio" => options.target_ratio = ratio()?,
            other => bail!(
                "unknown flag {other:?}: use --tasks N --console-tasks N --rounds N \
                 --console-rounds N --batch N --warmup-rounds N --max-load X --target-ratio X"
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
    let _layout = random_heap_offset();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(options.workers).enable_all();
    let registry = match mode {
        Mode::Registry | Mode::Traced => Some(diagtool_probe::TaskRegistry::install(&mut builder)),
        Mode::Plain => None,
        Mode::Hooks => {
            builder.on_task_spawn(|_| {}).on_task_terminate(|_| {});
            None
        }
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
    // Only plain (the reference) and traced report the park and poll figures: the others skip
    // those phases, which keeps a round short.
    let extras = matches!(mode, Mode::Plain | Mode::Traced);
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
            if !extras {
                return (spawned.0, spawned.1, Duration::ZERO, Duration::ZERO);
            }
            let start = Instant::now();
            park_join(park_tasks, batch, wrapped).await;
            let parked = start.elapsed();
            let polled = polls(POLLS, wrapped).await;
            (spawned.0, spawned.1, parked, polled)
        })
        .await
    })?;
    drop(runtime);
    if let Some(registry) = &registry {
        check_registry(registry, tasks + batch)?;
    }
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

/// A random number, different in every call and every process.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A kept allocation of 0 to 4 KiB in 16-byte steps (malloc's alignment), chosen at random per
/// process, so that what tokio and the registry allocate next starts at a random page offset.
fn random_heap_offset() -> Vec<u8> {
    std::hint::black_box(vec![1u8; 16 * (random() % 256) as usize])
}

/// `argv[0]` for a child: `bench_` and 2 to 65 more bytes (its length shifts what the child's
/// argument parsing leaves in malloc's caches, and with it where the runtime's objects land).
fn random_program_name() -> String {
    format!("bench_{}", "o".repeat(2 + (random() % 64) as usize))
}

/// Fails unless the registry saw the `at_least` tasks the run spawned and joined, all ended: a
/// figure is worth nothing for a registry that lost or skipped tasks.
fn check_registry(registry: &diagtool_probe::TaskRegistry, at_least: u64) -> Result<()> {
    let totals = registry.totals();
    let busiest = registry
        .sites()
        .into_iter()
        .max_by_key(|site| site.spawned)
        .context("the registry saw no spawn site")?;
    if totals.spawned < at_least || busiest.spawned < at_least || busiest.live() != 0 {
        bail!(
            "the registry lost track: {totals:?}, busiest site {busiest:?}, expected at least \
             {at_least} tasks spawned there and none live"
        );
    }
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

/// glibc's heap trim threshold for the children, unless the caller's environment sets one.
///
/// A batch of 1000 finished tasks frees about 300 KiB at the top of the heap; with glibc's default
/// threshold (128 KiB) a plain runtime gives it back to the kernel after every batch and faults it
/// in again on the next: measured here, about 150 ns of a 450 ns spawn+join. Any allocation that
/// outlives a batch pins the heap's top and saves that cost, so the first registry (a hash map
/// entry per task) read as "faster than plain". Every mode runs with the trim out of the way, so
/// the figures compare the hooks, not the allocator's luck.
const MALLOC_TRIM_THRESHOLD: &str = "268435456";

fn malloc_trim_threshold() -> String {
    std::env::var("MALLOC_TRIM_THRESHOLD_").unwrap_or_else(|_| MALLOC_TRIM_THRESHOLD.to_owned())
}

fn run_child(mode: Mode, workers: usize, options: &Options) -> Result<Run> {
    let exe = std::env::current_exe().context("locating this benchmark's binary")?;
    let output = Command::new(exe)
        .arg0(random_program_name())
        .env("MALLOC_TRIM_THRESHOLD_", malloc_trim_threshold())
        .args(["--child", mode.name()])
        .args(["--workers", &workers.to_string()])
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
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The 1-, 5- and 15-minute load averages from `/proc/loadavg` (NaN where unreadable).
fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(f64::NAN));
    [(); 3].map(|_| fields.next().unwrap_or(f64::NAN))
}

/// One mode's figures over the counted rounds.
#[derive(Debug, Default)]
struct Series {
    wall: Vec<f64>,
    cpu: Vec<f64>,
    park: Vec<f64>,
    poll: Vec<f64>,
}

impl Series {
    fn push(&mut self, run: &Run) {
        self.wall.push(run.wall_ns);
        self.cpu.push(run.cpu_ns);
        self.park.push(run.park_ns);
        self.poll.push(run.poll_ns);
    }
}

/// Median, min and max of per-round ratios.
fn spread(ratios: &mut [f64]) -> (f64, f64, f64) {
    let mid = median(ratios);
    let min = ratios.first().copied().unwrap_or(f64::NAN);
    let max = ratios.last().copied().unwrap_or(f64::NAN);
    (mid, min, max)
}

fn driver(options: &Options) -> Result<()> {
    let started = Instant::now();
    let load_start = load_average();
    // An unreadable load (NaN) counts as loaded: no verdict without knowing the machine was idle.
    let loaded = load_start[0].is_nan() || load_start[0] > options.max_load;
    eprintln!(
        "load average at start: {:.2} {:.2} {:.2} (verdict only at a 1-minute load <= {})",
        load_start[0], load_start[1], load_start[2], options.max_load
    );
    let mut plain = Series::default();
    let mut registry = Series::default();
    let mut traced = Series::default();
    let mut console = Series::default();
    let (mut wall_ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    // One worker: no stealing nor parking between the pair, so the hooks' own cost shows alone.
    let (mut single, mut single_ratios) = ((Vec::new(), Vec::new()), Vec::new());
    let mut single_cpu_ratios = Vec::new();
    let total_rounds = options.warmup_rounds + options.rounds;
    for round in 0..total_rounds {
        let warmup = round < options.warmup_rounds;
        let counted = round.saturating_sub(options.warmup_rounds);
        let pair = |workers| {
            if counted % 2 == 0 {
                [(Mode::Plain, workers), (Mode::Registry, workers)]
            } else {
                [(Mode::Registry, workers), (Mode::Plain, workers)]
            }
        };
        let mut order = pair(2).to_vec();
        order.push((Mode::Traced, 2));
        order.extend(pair(1));
        if !warmup && counted < options.console_rounds {
            order.push((Mode::Console, 2));
        }
        let (mut plain_run, mut registry_run) = (None, None);
        let (mut plain1_run, mut registry1_run) = (None, None);
        for (mode, workers) in order {
            let run = run_child(mode, workers, options)?;
            eprintln!(
                "round {round}{}: {:<8} {workers} worker(s) {:>10.1} ns/task wall {:>10.1} ns/task cpu",
                if warmup { " (warm-up, discarded)" } else { "" },
                mode.name(),
                run.wall_ns,
                run.cpu_ns
            );
            if warmup {
                continue;
            }
            match (mode, workers) {
                (Mode::Plain, 1) => plain1_run = Some(run),
                (Mode::Registry, 1) => registry1_run = Some(run),
                (Mode::Plain, _) => {
                    plain.push(&run);
                    plain_run = Some(run);
                }
                (Mode::Registry, _) => {
                    registry.push(&run);
                    registry_run = Some(run);
                }
                (Mode::Traced, _) => traced.push(&run),
                (Mode::Console, _) => console.push(&run),
                (Mode::Hooks, _) => {}
            }
        }
        if let (Some(p), Some(r)) = (plain1_run, registry1_run) {
            single.0.push(p.wall_ns);
            single.1.push(r.wall_ns);
            single_ratios.push(r.wall_ns / p.wall_ns);
            single_cpu_ratios.push(r.cpu_ns / p.cpu_ns);
        }
        if let (Some(p), Some(r)) = (plain_run, registry_run) {
            wall_ratios.push(r.wall_ns / p.wall_ns);
            cpu_ratios.push(r.cpu_ns / p.cpu_ns);
            eprintln!(
                "round {round}: registry/plain {:.3} wall {:.3} cpu",
                r.wall_ns / p.wall_ns,
                r.cpu_ns / p.cpu_ns
            );
        }
    }
    let load_end = load_average();
    let (paired, paired_min, paired_max) = spread(&mut wall_ratios);
    let (cpu_paired, cpu_min, cpu_max) = spread(&mut cpu_ratios);
    let (single_paired, single_min, single_max) = spread(&mut single_ratios);
    let (single_cpu, single_cpu_min, single_cpu_max) = spread(&mut single_cpu_ratios);
    let plain_ns = median(&mut plain.wall);
    let registry_ns = median(&mut registry.wall);
    let console_ns = median(&mut console.wall);
    let traced_ns = median(&mut traced.wall);
    let (plain_park, traced_park) = (median(&mut plain.park), median(&mut traced.park));
    let (plain_poll, traced_poll) = (median(&mut plain.poll), median(&mut traced.poll));
    let plain_cpu = median(&mut plain.cpu);
    let registry_cpu = median(&mut registry.cpu);
    let console_cpu = median(&mut console.cpu);
    let met = paired <= options.target_ratio && cpu_paired <= options.target_ratio;
    let verdict = match (loaded, met) {
        (true, _) => None,
        (false, true) => Some("pass"),
        (false, false) => Some("fail"),
    };
    eprintln!(
        "registry/plain, median of {} paired rounds: {paired:.3} wall ({paired_min:.3}..{paired_max:.3}), \
         {cpu_paired:.3} cpu ({cpu_min:.3}..{cpu_max:.3}); target <= {}; took {:?}",
        wall_ratios.len(),
        options.target_ratio,
        Duration::from_secs(started.elapsed().as_secs())
    );
    eprintln!(
        "one worker, registry/plain: {single_paired:.3} wall ({single_min:.3}..{single_max:.3}), \
         {single_cpu:.3} cpu ({single_cpu_min:.3}..{single_cpu_max:.3})"
    );
    eprintln!(
        "load average at end: {:.2} {:.2} {:.2}",
        load_end[0], load_end[1], load_end[2]
    );
    if loaded {
        eprintln!(
            "bench_overhead: LOADED MACHINE: the 1-minute load was {:.2} at the start (> {}); \
             the figures are noise-bound and NO VERDICT is given. Re-run when the machine is idle.",
            load_start[0], options.max_load
        );
    } else {
        eprintln!("bench_overhead: verdict {}", verdict.unwrap_or("none"));
    }
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let round1 = |x: f64| (x * 10.0).round() / 10.0;
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let mut doc = serde_json::json!({
        "tasks": options.tasks,
        "plain_ns": round1(plain_ns),
        "registry_ns": round1(registry_ns),
        "console_ns": round1(console_ns),
        "registry_ratio": round3(registry_ns / plain_ns),
        "console_ratio": round3(console_ns / plain_ns),
        "console_tasks": options.console_tasks,
        "rounds": options.rounds,
        "warmup_rounds": options.warmup_rounds,
        "console_rounds": options.console_rounds.min(options.rounds),
        "registry_ratio_paired": round3(paired),
        "registry_ratio_paired_min": round3(paired_min),
        "registry_ratio_paired_max": round3(paired_max),
        "registry_cpu_ratio_paired": round3(cpu_paired),
        "registry_cpu_ratio_paired_min": round3(cpu_min),
        "registry_cpu_ratio_paired_max": round3(cpu_max),
    });
    // Two objects: one `json!` of every key passes the macro's recursion limit.
    let more = serde_json::json!({
        "plain_1w_ns": round1(median(&mut single.0)),
        "registry_1w_ns": round1(median(&mut single.1)),
        "registry_1w_ratio_paired": round3(single_paired),
        "registry_1w_ratio_paired_min": round3(single_min),
        "registry_1w_ratio_paired_max": round3(single_max),
        "registry_1w_cpu_ratio_paired": round3(single_cpu),
        "registry_1w_cpu_ratio_paired_min": round3(single_cpu_min),
        "registry_1w_cpu_ratio_paired_max": round3(single_cpu_max),
        "target_ratio": options.target_ratio,
        "malloc_trim_threshold": malloc_trim_threshold(),
        "verdict": verdict,
        "loaded": loaded,
        "max_load": options.max_load,
        "load_average_1m": [round2(load_start[0]), round2(load_end[0])],
        "load_average_start": load_start.map(round2),
        "load_average_end": load_end.map(round2),
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
    if let (Some(doc), serde_json::Value::Object(more)) = (doc.as_object_mut(), more) {
        doc.extend(more);
    }
    println!("{doc}");
    Ok(())
}
