//! Throughput: 1,000,000 lines of about 150 bytes read from a file and delivered, measured with the
//! binary this test was built with. Ignored by default (it measures, it does not check
//! correctness); run it in release:
//!
//! ```sh
//! cargo test --release -p shipper --test throughput -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::{Env, wait_until};
use testkit::loki::Receiver;

const LINES: usize = 1_000_000;

fn write_lines(env: &Env) -> u64 {
    let path = env.logs().join("bench.log");
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    for i in 0..LINES {
        writeln!(
            f,
            "2026-11-27T21:00:00.000Z level=info msg=\"request served\" method=GET path=/api/v1/items/{i:08} status=200 duration_ms=12 user=u{:05}",
            i % 100_000
        )
        .unwrap();
    }
    f.flush().unwrap();
    std::fs::metadata(&path).unwrap().len()
}

fn cpu_seconds(pid: u32) -> f64 {
    // utime + stime from /proc/PID/stat, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn report(name: &str, bytes: u64, start: Instant, pid: u32) {
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid);
    eprintln!(
        "{name}: {LINES} lines ({:.1} MiB) in {wall:.2} s wall, {cpu:.2} s cpu: {:.0} lines/s, {:.0} lines per cpu-second",
        bytes as f64 / 1048576.0,
        LINES as f64 / wall,
        LINES as f64 / cpu.max(0.01)
    );
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn throughput_file_sink() {
    let env = Env::new();
    let bytes = write_lines(&env);
    let start = Instant::now();
    let shipper = env.start();
    wait_until(Duration::from_secs(300), "every line delivered", || {
        shipper.metric("shipper_sent_entries_total") == Some(LINES as f64)
    });
    report("file sink", bytes, start, shipper.child.id());
    assert!(shipper.terminate(Duration::from_secs(30)).success());
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn throughput_loki_receiver() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rx = rt
        .block_on(Receiver::builder().store_entries(false).start())
        .unwrap();
    let mut env = Env::new();
    env.sink_table = Some(format!(
        "[sink]\ntype = \"loki\"\nurl = \"{}\"\nencoding = \"protobuf\"\nbatch_max_wait = \"200ms\"\n",
        rx.url()
    ));
    let bytes = write_lines(&env);
    let start = Instant::now();
    let shipper = env.start();
    wait_until(Duration::from_secs(300), "every line received", || {
        rx.count() >= LINES as u64
    });
    report(
        "loki receiver (protobuf+snappy)",
        bytes,
        start,
        shipper.child.id(),
    );
    assert_eq!(rx.rejected_bodies(), 0);
    assert!(shipper.terminate(Duration::from_secs(30)).success());
    rt.block_on(rx.shutdown());
}
