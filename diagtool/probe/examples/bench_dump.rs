//! Snapshot and dump latency with many live tasks parked at one site.
//!
//! ```text
//! cargo run --release -p diagtool-probe --example bench_dump -- [TASKS...]
//! ```
//! For each TASKS (default 1000 10000 100000) parks that many tasks on a channel, then times one
//! snapshot (`?debug=2` detail included), one task dump (the default mode: the tasks trace
//! themselves) and, with `--global`, one global dump (tokio's `Handle::dump()`, for comparison;
//! it can freeze the runtime, see below), and prints one
//! JSON line: `{"points":[{"tasks":N,"snapshot_ms":X,"snapshot_bytes":N,"dump_ms":X,
//! "dump_groups":N,"dump_traced":N}]}` (plus `"global_dump_ms"` with `--global`).

fn main() {
    use std::time::{Duration, Instant};

    use diagtool_probe::{Dumper, TaskRegistry, snapshot, spawn_named};

    async fn park(mut rx: tokio::sync::watch::Receiver<bool>) {
        let _ = rx.wait_for(|go| *go).await;
    }

    let with_global = std::env::args().any(|a| a == "--global");
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| a != "--global")
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("TASKS must be numbers, got {a:?}"))
        })
        .collect();
    let counts = if counts.is_empty() {
        vec![1_000, 10_000, 100_000]
    } else {
        counts
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let registry = TaskRegistry::install(&mut builder);
    let rt = builder
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("cannot build a runtime: {err}"));
    // Both modes, back to back: no minimum interval between them.
    let dumper = Dumper::new(registry.clone())
        .global_dump(true)
        .min_interval(Duration::ZERO);
    let mut points = Vec::new();
    for n in counts {
        let point = rt.block_on(async {
            let (tx, rx) = tokio::sync::watch::channel(false);
            let handles: Vec<_> = (0..n).map(|_| spawn_named("parked", park(rx.clone()))).collect();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let started = Instant::now();
            let snap = snapshot::take(&registry, "bench", Some(&tokio::runtime::Handle::current()), true);
            let bytes = serde_json::to_vec(&snap).map(|b| b.len()).unwrap_or(0);
            let snapshot_ms = started.elapsed().as_secs_f64() * 1e3;
            // The first dump of a process also loads the binary's debug info for symbolising
            // (cached from then on): timed apart as `dump_first_ms`.
            let started = Instant::now();
            let _ = dumper
                .dump(&tokio::runtime::Handle::current(), Duration::from_secs(60))
                .await;
            let first_ms = started.elapsed().as_secs_f64() * 1e3;
            let started = Instant::now();
            let dump = dumper
                .dump(&tokio::runtime::Handle::current(), Duration::from_secs(60))
                .await
                .unwrap_or_else(|err| panic!("dump failed: {err}"));
            let dump_ms = started.elapsed().as_secs_f64() * 1e3;
            let traced = dump.tasks.iter().filter(|t| t.not_traced.is_none()).count();
            // tokio's global dump can freeze this runtime for good (its workers spin in
            // `steal_all` when a run queue is long, as it is right after a self-traced dump of
            // many tasks; see docs/benchmarks.md), and its timeout runs on the frozen workers:
            // only with `--global`.
            let global = if with_global {
                let started = Instant::now();
                let global = dumper
                    .dump_mode(
                        &tokio::runtime::Handle::current(),
                        Duration::from_secs(60),
                        diagtool_probe::DumpMode::Global,
                    )
                    .await;
                let global_ms = started.elapsed().as_secs_f64() * 1e3;
                match global {
                    Ok(_) => format!(",\"global_dump_ms\":{global_ms:.1}"),
                    Err(err) => format!(
                        ",\"global_dump_ms\":{}",
                        serde_json::to_string(&err.to_string()).unwrap_or_default()
                    ),
                }
            } else {
                String::new()
            };
            let _ = tx.send(true);
            for handle in handles {
                let _ = handle.await;
            }
            format!(
                "{{\"tasks\":{n},\"snapshot_ms\":{snapshot_ms:.1},\"snapshot_bytes\":{bytes},\"dump_ms\":{dump_ms:.1},\"dump_first_ms\":{first_ms:.1},\"dump_groups\":{},\"dump_traced\":{traced}{global}}}",
                dump.groups.len()
            )
        });
        eprintln!("{point}");
        points.push(point);
    }
    println!("{{\"points\":[{}]}}", points.join(","));
}
