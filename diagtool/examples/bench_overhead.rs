//! The task registry's cost per spawn+join, against a plain runtime, in one run.
//!
//! ```text
//! cargo run --release -p diagtool --features probe --example bench_overhead -- [TASKS] [REPEATS]
//! ```
//! Spawns and joins TASKS trivial tasks (default 1,000,000) in batches of 1,000 from a task on a
//! 2-worker runtime, plain and with the registry's hooks, alternating which goes first in each of
//! REPEATS rounds (default 7), and prints one JSON line with the median nanoseconds per task:
//! `{"tasks":N,"repeats":R,"plain_ns":X,"registry_ns":X,"registry_ratio":X,"plain_cpu_ns":X,
//! "registry_cpu_ns":X,"registry_cpu_ratio":X,"hooks_ns":X}`. `*_ns` are wall time per task,
//! `*_cpu_ns` the process's CPU time per task (steadier on a shared machine), and `hooks_ns` the
//! two hooks alone (record a spawn, then its terminate) in one thread's CPU time.

#[cfg(feature = "probe")]
fn main() {
    use std::time::Instant;

    use diagtool::probe::TaskRegistry;

    const BATCH: usize = 1_000;

    fn runtime(registry: Option<&TaskRegistry>) -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(registry) = registry {
            registry.hook(&mut builder);
        }
        builder
            .worker_threads(2)
            .build()
            .unwrap_or_else(|err| panic!("cannot build a runtime: {err}"))
    }

    /// CPU time of the whole process (`process`) or of this thread, in nanoseconds: unlike wall
    /// time, it does not count the time other programs on a busy machine took.
    fn cpu_ns(process: bool) -> f64 {
        let clock = if process {
            libc::CLOCK_PROCESS_CPUTIME_ID
        } else {
            libc::CLOCK_THREAD_CPUTIME_ID
        };
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
    }

    /// Wall and CPU nanoseconds per task for spawning and joining `tasks` trivial tasks.
    fn run(rt: &tokio::runtime::Runtime, tasks: usize) -> (f64, f64) {
        let cpu_started = cpu_ns(true);
        let started = Instant::now();
        let driver = rt.spawn(async move {
            let mut handles = Vec::with_capacity(BATCH);
            for _ in 0..tasks / BATCH {
                for _ in 0..BATCH {
                    handles.push(tokio::spawn(async { std::hint::black_box(1u64) }));
                }
                for handle in handles.drain(..) {
                    let _ = handle.await;
                }
            }
        });
        rt.block_on(driver)
            .unwrap_or_else(|err| panic!("driver failed: {err}"));
        (
            started.elapsed().as_nanos() as f64 / tasks as f64,
            (cpu_ns(true) - cpu_started) / tasks as f64,
        )
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

    let mut args = std::env::args().skip(1);
    let tasks: usize = args
        .next()
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("TASKS must be a number, got {a:?}"))
        })
        .unwrap_or(1_000_000)
        .max(BATCH);
    let repeats: usize = args
        .next()
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("REPEATS must be a number, got {a:?}"))
        })
        .unwrap_or(7)
        .max(1);

    let registry = TaskRegistry::new();
    let plain = runtime(None);
    let hooked = runtime(Some(&registry));
    // Warm both (allocator, worker threads, the registry's site cache).
    run(&plain, tasks / 10);
    run(&hooked, tasks / 10);

    let (mut plain_ns, mut plain_cpu) = (Vec::new(), Vec::new());
    let (mut registry_ns, mut registry_cpu) = (Vec::new(), Vec::new());
    for round in 0..repeats {
        for hooked_turn in [round % 2 == 1, round % 2 == 0] {
            if hooked_turn {
                let (wall, cpu) = run(&hooked, tasks);
                registry_ns.push(wall);
                registry_cpu.push(cpu);
            } else {
                let (wall, cpu) = run(&plain, tasks);
                plain_ns.push(wall);
                plain_cpu.push(cpu);
            }
        }
    }
    let totals = registry.totals();
    // One driver task per run, plus the tasks it spawns.
    let expected = ((tasks / BATCH * BATCH + 1) * repeats + tasks / 10 / BATCH * BATCH + 1) as u64;
    assert_eq!(totals.spawned, expected, "the registry missed spawns");
    // The hooks alone, on one thread: record a spawn and its terminate, per task.
    let ids: Vec<tokio::task::Id> = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|err| panic!("cannot build a runtime: {err}"));
        rt.block_on(async { (0..BATCH).map(|_| tokio::spawn(async {}).id()).collect() })
    };
    let site = std::panic::Location::caller();
    let bare = TaskRegistry::new();
    let mut hook_ns = Vec::new();
    for _ in 0..repeats {
        let started = cpu_ns(false);
        for _ in 0..tasks / BATCH {
            for id in &ids {
                bare.record_spawn(*id, site);
            }
            for id in &ids {
                bare.record_terminate(*id);
            }
        }
        hook_ns.push((cpu_ns(false) - started) / (tasks / BATCH * BATCH) as f64);
    }
    let hook_med = median(&mut hook_ns);

    let plain_med = median(&mut plain_ns);
    let registry_med = median(&mut registry_ns);
    let plain_cpu_med = median(&mut plain_cpu);
    let registry_cpu_med = median(&mut registry_cpu);
    eprintln!("plain ns/task: {plain_ns:.1?}\nregistry ns/task: {registry_ns:.1?}");
    println!(
        "{{\"tasks\":{tasks},\"repeats\":{repeats},\"plain_ns\":{plain_med:.1},\"registry_ns\":{registry_med:.1},\"registry_ratio\":{:.4},\"plain_cpu_ns\":{plain_cpu_med:.1},\"registry_cpu_ns\":{registry_cpu_med:.1},\"registry_cpu_ratio\":{:.4},\"hooks_ns\":{hook_med:.1}}}",
        registry_med / plain_med,
        registry_cpu_med / plain_cpu_med
    );
}

#[cfg(not(feature = "probe"))]
fn main() {
    eprintln!("bench_overhead needs the probe feature: --features probe");
    std::process::exit(2);
}
