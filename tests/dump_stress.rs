//! First, do no harm: task dumps asked every 0.3 s of a release shipper under load, with a leak,
//! must never stall shipping nor delay its shutdown. Regression test for the freeze tokio's
//! global `Handle::dump()` caused (its barrier, miscounted by a timed-out wait: delivery stopped,
//! dumps answered 503, SIGTERM was ignored).
//!
//! Both scenarios run a release shipper at 2,000 lines/s to a Loki-compatible receiver with
//! `--leak-lab poll-spawn:16/2s`, dumped through `/debug/tasks/dump` and `/debug/pprof/tasks`
//! every 0.3 s for [`DURATION`]; the second also records CPU profiles back to back. Each checks:
//! every line delivered, every dump answered 200 with the leak lab's trace, no panic, and SIGTERM
//! ends the shipper within `shutdown_timeout` + 1 s.
//!
//! Skipped (with a note) unless `SHIPPER_RELEASE_BIN` names a release shipper binary
//! (`.ci/run` sets it): `cargo build --release -p shipper && SHIPPER_RELEASE_BIN=$CARGO_TARGET_DIR/release/shipper
//! cargo test -p e2e --test dump_stress -- --test-threads=1`.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::loki::Receiver;
use testkit::shipper::{Env, http_get_bytes, wait_until};

/// How long the shipper is dumped under load (the freeze showed after about 24 s).
const DURATION: Duration = Duration::from_secs(45);
/// Lines written per second.
const RATE: u64 = 2_000;
/// The shipper's `shutdown_timeout`; SIGTERM must end it within this plus one second.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The pace of the dumps: one of each endpoint per period.
const DUMP_PERIOD: Duration = Duration::from_millis(300);

fn release_bin() -> Option<String> {
    let bin = std::env::var("SHIPPER_RELEASE_BIN").ok();
    if bin.is_none() {
        eprintln!(
            "skipped: set SHIPPER_RELEASE_BIN to a release shipper binary \
             (cargo build --release -p shipper; SHIPPER_RELEASE_BIN=target/release/shipper)"
        );
    }
    bin
}

/// What the dumping thread saw.
#[derive(Debug, Default)]
struct Dumps {
    json_ok: u64,
    text_ok: u64,
    /// 429s (the rate limit): allowed, but counted.
    limited: u64,
    /// The first answer that was neither 200 nor 429, or a 200 without the leak's trace.
    failure: Option<String>,
    slowest: Duration,
}

/// Asks both dump endpoints every [`DUMP_PERIOD`] until `stop`.
fn dump_until(debug_addr: &str, stop: &AtomicBool) -> Dumps {
    let mut seen = Dumps::default();
    let ask = |path: &str, seen: &mut Dumps| -> Option<String> {
        let started = Instant::now();
        let (code, body) = http_get_bytes(debug_addr, path, None);
        seen.slowest = seen.slowest.max(started.elapsed());
        let body = String::from_utf8_lossy(&body).into_owned();
        match code {
            200 => Some(body),
            429 => {
                seen.limited += 1;
                None
            }
            _ => {
                seen.failure
                    .get_or_insert_with(|| format!("{path} answered {code}: {body}"));
                None
            }
        }
    };
    while !stop.load(Ordering::Relaxed) && seen.failure.is_none() {
        let tick = Instant::now();
        if let Some(body) = ask("/debug/tasks/dump?timeout_ms=2000", &mut seen) {
            let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
            let leak = dump["groups"].as_array().unwrap().iter().find(|g| {
                g["site"].as_str().unwrap_or("").contains("leaklab")
                    && g["trace"].to_string().contains("park_after_poll")
            });
            // Once the leak has parked tasks (the lab's tasks park at once), every dump must
            // trace them.
            let parked = dump["tasks"].as_array().unwrap().iter().any(|t| {
                t["site"].as_str().unwrap_or("").contains("leaklab")
                    && t["age_s"].as_f64().unwrap_or(0.0) >= 0.5
            });
            if leak.is_some() {
                seen.json_ok += 1;
            } else if parked {
                seen.failure = Some(format!("a dump without the leak's trace: {body}"));
            }
        }
        std::thread::sleep(DUMP_PERIOD / 2);
        if let Some(body) = ask("/debug/pprof/tasks?debug=1&timeout_ms=2000", &mut seen)
            && body.contains("leaklab")
            && body.contains("park_after_poll")
        {
            seen.text_ok += 1;
        }
        std::thread::sleep(DUMP_PERIOD.saturating_sub(tick.elapsed()));
    }
    seen
}

/// Records CPU profiles back to back until `stop`; returns how many answered 200.
fn profile_until(debug_addr: &str, stop: &AtomicBool) -> Result<u64, String> {
    let mut ok = 0;
    while !stop.load(Ordering::Relaxed) {
        let (code, body) = http_get_bytes(debug_addr, "/debug/pprof/profile?seconds=5", None);
        if code != 200 {
            return Err(format!(
                "a CPU profile answered {code}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        ok += 1;
    }
    Ok(ok)
}

/// Writes [`RATE`] distinct lines per second to `logs/app.log` until `stop`; returns the count.
fn write_until(env: &Env, stop: &AtomicBool, written: &AtomicU64) {
    let path = env.logs().join("app.log");
    let mut file = std::fs::File::create(&path).unwrap();
    let started = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * RATE as f64) as u64;
        let mut chunk = String::new();
        while n < due {
            chunk.push_str(&format!(
                "2026-11-30T12:00:00.000Z level=info msg=\"request served\" seq={n:08} path=/api/items\n"
            ));
            n += 1;
        }
        file.write_all(chunk.as_bytes()).unwrap();
        written.store(n, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stress(with_profiles: bool) {
    let Some(bin) = release_bin() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rx = rt.block_on(Receiver::builder().start()).unwrap();
    let mut env = Env::new();
    env.top_extra = format!("shutdown_timeout = \"{}s\"\n", SHUTDOWN_TIMEOUT.as_secs());
    env.sink_table = Some(format!(
        "[sink]\ntype = \"loki\"\nurl = \"{}\"\nbatch_max_wait = \"200ms\"\n",
        rx.url()
    ));
    env.args = vec!["--leak-lab".into(), "poll-spawn:16/2s".into()];
    let shipper = env.start_bin(&bin);
    let debug_addr = shipper.debug_addr.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let (dumps, profiles) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_until(&env, &stop, &written));
        let dumper = scope.spawn(|| dump_until(&debug_addr, &stop));
        let profiler = with_profiles.then(|| scope.spawn(|| profile_until(&debug_addr, &stop)));
        let started = Instant::now();
        while started.elapsed() < DURATION && !dumper.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        (dumper.join().unwrap(), profiler.map(|p| p.join().unwrap()))
    });
    eprintln!("dumps: {dumps:?}; profiles: {profiles:?}");
    assert_eq!(dumps.failure, None, "{}", shipper.stderr());
    // About 150 of each in 45 s; the rate limit may refuse a few.
    let rounds = DURATION.as_millis() as u64 / DUMP_PERIOD.as_millis() as u64;
    assert!(dumps.json_ok >= rounds / 2, "{dumps:?}");
    assert!(dumps.text_ok >= rounds / 2, "{dumps:?}");
    if let Some(profiles) = profiles {
        assert!(profiles.unwrap() >= 5, "CPU profiles beside the dumps");
    }

    // Every line delivered (the receiver keeps duplicates apart: at-least-once may resend).
    let written = written.load(Ordering::Relaxed);
    assert!(
        written >= RATE * DURATION.as_secs() * 9 / 10,
        "wrote {written}"
    );
    wait_until(
        Duration::from_secs(60),
        "every written line delivered",
        || {
            rx.count() >= written && {
                let distinct: HashSet<String> = rx.lines().into_iter().collect();
                distinct.len() as u64 == written
            }
        },
    );

    let log_path = shipper.log.clone();
    let stopping = Instant::now();
    let status = shipper.signal(libc::SIGTERM, SHUTDOWN_TIMEOUT + Duration::from_secs(10));
    let took = stopping.elapsed();
    eprintln!(
        "{written} lines written, {} received ({} distinct); SIGTERM to exit: {took:?}",
        rx.count(),
        rx.lines().into_iter().collect::<HashSet<_>>().len()
    );
    assert!(status.success(), "exit status {status}");
    assert!(
        took <= SHUTDOWN_TIMEOUT + Duration::from_secs(1),
        "SIGTERM took {took:?}"
    );
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
    rt.block_on(rx.shutdown());
}

#[test]
fn dumps_every_300ms_under_load_never_stall_shipping_nor_shutdown() {
    stress(false);
}

#[test]
fn dumps_beside_cpu_profiles_never_stall_shipping_nor_shutdown() {
    stress(true);
}
