//! Benchmark: `/debug/tasks` and `/debug/tasks/dump` latency and size with 1k, 10k and 100k live
//! tasks (`scripts/bench-snapshot`).
//!
//! A 2-worker runtime carries the probe's registry; for each point it parks N tasks (each awaits a
//! cancellation token inside an async fn, as a leaked listener would), then sends requests to the
//! probe's own router (`tower::ServiceExt::oneshot`, no socket: the figure is the handler and its
//! serialisation, the bytes a client would receive) from a task on a worker, the way the debug
//! server runs them. Each figure is the median of several requests; the last stdout line is the
//! contract's JSON.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const DEFAULT_POINTS: [u64; 3] = [1_000, 10_000, 100_000];
const SNAPSHOT_REPEATS: usize = 9;
const DUMP_REPEATS: usize = 5;
const DUMP_REPEATS_LARGE: usize = 3;
const WAIT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_snapshot: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--dump-unsettled") {
        let n = std::env::args()
            .nth(2)
            .map(|n| n.parse())
            .transpose()
            .context("--dump-unsettled N: expected a task count such as 1000")?
            .unwrap_or(1000);
        return dump_unsettled(n);
    }
    let points: Vec<u64> = match std::env::args().nth(1) {
        None => DEFAULT_POINTS.to_vec(),
        Some(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .with_context(|| format!("point {n:?}: expected a task count such as 10000"))
            })
            .collect::<Result<_>>()?,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    // Back-to-back dumps are what is timed: no minimum interval between them.
    let probe = diagtool_probe::Probe::builder("bench")
        .addr("127.0.0.1:0".parse().context("address")?)
        .min_dump_interval(Duration::ZERO)
        .install(&mut builder)
        .context("installing the probe")?;
    let runtime = builder.build().context("building the runtime")?;
    let results = runtime.block_on(async move {
        tokio::spawn(async move {
            let mut results = Vec::new();
            for n in points {
                results.push(point(&probe, n).await?);
            }
            anyhow::Ok(results)
        })
        .await
    })??;
    println!("{}", serde_json::json!({ "points": results }));
    Ok(())
}

/// Reproduces tokio 1.54's dump hang (docs/benchmarks.md): spawns `n` tasks from a worker and asks
/// for a dump at once, while most of them still sit in that worker's run queue. A watchdog thread
/// ends the process (exit 3) when no answer came within 10 s: the runtime is then frozen, and the
/// dump's own 3 s timeout never fires.
fn dump_unsettled(n: u64) -> Result<()> {
    const WATCHDOG: Duration = Duration::from_secs(10);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    // The hang is in tokio's global dump, which the probe only takes when asked and enabled.
    let probe = diagtool_probe::Probe::builder("bench")
        .addr("127.0.0.1:0".parse().context("address")?)
        .global_dump(true)
        .install(&mut builder)
        .context("installing the probe")?;
    let runtime = builder.build().context("building the runtime")?;
    std::thread::spawn(move || {
        std::thread::sleep(WATCHDOG);
        println!(
            "dump of {n} unsettled tasks: no answer within {WATCHDOG:?}, the runtime is frozen"
        );
        std::process::exit(3);
    });
    let started = Instant::now();
    let answer = runtime.block_on(async move {
        tokio::spawn(async move {
            let cancel = CancellationToken::new();
            let polled = Arc::new(AtomicU64::new(0));
            for _ in 0..n {
                drop(tokio::spawn(parked(cancel.clone(), polled.clone())));
            }
            let answer = get(
                &diagtool_probe::router(probe),
                "/debug/tasks/dump?timeout_ms=3000&mode=global",
            )
            .await;
            cancel.cancel();
            answer.map(|(_, _, body)| body.len())
        })
        .await
    })?;
    println!(
        "dump of {n} unsettled tasks answered after {:?}: {:?}",
        started.elapsed(),
        answer.map_err(|e| e.to_string())
    );
    Ok(())
}

/// A parked task: the frames a dump shows are this fn and the token's future. It counts itself
/// in `parked` when first polled, so the driver knows every task has left the run queues.
async fn parked(cancel: CancellationToken, parked: Arc<AtomicU64>) {
    parked.fetch_add(1, Ordering::Relaxed);
    cancel.cancelled().await;
}

async fn point(probe: &diagtool_probe::Probe, n: u64) -> Result<serde_json::Value> {
    let before = probe.registry().totals().live;
    let cancel = CancellationToken::new();
    let polled = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(n as usize);
    for _ in 0..n {
        // In the probe's wrapper, as a service's own tasks are: the default dump traces them.
        handles.push(tokio::spawn(diagtool_probe::traced(parked(
            cancel.clone(),
            polled.clone(),
        ))));
    }
    // Every task must be parked, not queued, before a dump: with more than about 200 tasks in a
    // worker's run queue, tokio 1.54's `Handle::dump` spins forever in `steal_all` (see
    // docs/benchmarks.md), freezing the runtime.
    wait_until(|| polled.load(Ordering::Relaxed) >= n).await?;
    wait_until(|| probe.registry().totals().live >= before + n).await?;
    let router = diagtool_probe::router(probe.clone());

    let mut snapshot_ms = Vec::new();
    let mut snapshot_cpu_ms = Vec::new();
    let mut snapshot_bytes = 0;
    for _ in 0..SNAPSHOT_REPEATS {
        let (ms, cpu_ms, body) = get(&router, "/debug/tasks").await?;
        snapshot_ms.push(ms);
        snapshot_cpu_ms.push(cpu_ms);
        snapshot_bytes = body.len();
        let snap: diagtool_probe::model::Snapshot =
            serde_json::from_slice(&body).context("parsing /debug/tasks")?;
        if snap.tasks.live < n {
            bail!(
                "/debug/tasks shows {} live tasks, expected >= {n}",
                snap.tasks.live
            );
        }
    }
    let repeats = if n >= 100_000 {
        DUMP_REPEATS_LARGE
    } else {
        DUMP_REPEATS
    };
    let mut dump_ms = Vec::new();
    let mut dump_cpu_ms = Vec::new();
    let mut dump_bytes = 0;
    for _ in 0..repeats {
        let (ms, cpu_ms, body) = get(&router, "/debug/tasks/dump?timeout_ms=60000").await?;
        dump_ms.push(ms);
        dump_cpu_ms.push(cpu_ms);
        dump_bytes = body.len();
        let dump: diagtool_probe::model::Dump =
            serde_json::from_slice(&body).context("parsing /debug/tasks/dump")?;
        if (dump.tasks.len() as u64) < n {
            bail!("the dump holds {} tasks, expected >= {n}", dump.tasks.len());
        }
    }
    let doc = serde_json::json!({
        "tasks": n,
        "snapshot_ms": round2(median(&mut snapshot_ms)),
        "snapshot_bytes": snapshot_bytes,
        "dump_ms": round2(median(&mut dump_ms)),
        "dump_bytes": dump_bytes,
        "snapshot_cpu_ms": round2(median(&mut snapshot_cpu_ms)),
        "dump_cpu_ms": round2(median(&mut dump_cpu_ms)),
    });
    eprintln!(
        "{n:>7} tasks: snapshot {:.2}..{:.2} ms, dump {:.1}..{:.1} ms: {doc}",
        snapshot_ms[0],
        snapshot_ms[snapshot_ms.len() - 1],
        dump_ms[0],
        dump_ms[dump_ms.len() - 1]
    );

    cancel.cancel();
    for handle in handles {
        handle.await.context("a parked task panicked")?;
    }
    wait_until(|| probe.registry().totals().live <= before).await?;
    Ok(doc)
}

/// One request through the router: (wall milliseconds until the whole body is there, CPU
/// milliseconds the process spent meanwhile, body). On a loaded machine the CPU figure is the
/// steadier one: it leaves out the time other processes held the cores.
async fn get(router: &axum::Router, uri: &str) -> Result<(f64, f64, bytes::Bytes)> {
    let request = http::Request::get(uri)
        .body(axum::body::Body::empty())
        .context("building the request")?;
    let cpu_start = process_cpu_ms();
    let start = Instant::now();
    let response = router.clone().oneshot(request).await?;
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .context("reading the body")?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let cpu_ms = process_cpu_ms() - cpu_start;
    if !status.is_success() {
        bail!(
            "{uri} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok((ms, cpu_ms, body))
}

/// User + system CPU time of this process so far, in milliseconds.
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

async fn wait_until(mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while !done() {
        if Instant::now() > deadline {
            bail!("the tasks did not reach the expected state within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
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

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
