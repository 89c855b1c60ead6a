//! End to end against the strict Loki-compatible receiver on loopback: outages, hangs, hostile
//! lines, both encodings. The receiver runs on its own runtime; the test drives the real binary.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::{Env, wait_until};
use testkit::loki::Receiver;

const LIMIT: Duration = Duration::from_secs(60);

struct Loki {
    rt: tokio::runtime::Runtime,
    rx: Option<Receiver>,
}

impl Loki {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let rx = rt.block_on(Receiver::start()).unwrap();
        Self { rt, rx: Some(rx) }
    }
    fn r(&self) -> &Receiver {
        self.rx.as_ref().unwrap()
    }
    fn sink(&self, encoding: &str, extra: &str) -> String {
        format!(
            "[sink]\ntype = \"loki\"\nurl = \"{}\"\nencoding = \"{encoding}\"\ntenant = \"team-a\"\nbatch_max_wait = \"100ms\"\nbatch_max_bytes = 65536\nbackoff_max = \"500ms\"\n{extra}\n",
            self.r().url()
        )
    }
}

impl Drop for Loki {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            self.rt.block_on(rx.shutdown());
        }
    }
}

fn every_line_once(lines: &[String], expected: &[String]) {
    let mut c = std::collections::HashMap::new();
    for l in lines {
        *c.entry(l.as_str()).or_insert(0usize) += 1;
    }
    for e in expected {
        assert_eq!(c.get(e.as_str()), Some(&1), "{e:?}");
    }
    assert_eq!(lines.len(), expected.len());
}

#[test]
fn a_503_outage_delays_but_loses_nothing_and_hostile_lines_pass_strict_validation() {
    let loki = Loki::start();
    let mut env = Env::new();
    env.sink_table = Some(loki.sink("json", ""));
    let shipper = env.start();
    loki.r().fail_for(Duration::from_secs(2), 503);
    let mut expected: Vec<String> = (0..5000)
        .map(|i| format!("line {i} \"quoted\" back\\slash\ttab"))
        .collect();
    let mut text = expected.join("\n") + "\n";
    text.push_str("bad \u{fffd} utf8 follows: ");
    expected.push("bad \u{fffd} utf8 follows: \u{fffd}".into());
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(b"\xff\n");
    env.append("app.log", &bytes);
    wait_until(LIMIT, "every line received", || {
        loki.r().count() >= expected.len() as u64
    });
    every_line_once(&loki.r().lines(), &expected);
    assert_eq!(loki.r().rejected_bodies(), 0, "the receiver refused a body");
    let e = &loki.r().entries()[0];
    assert_eq!(e.tenant.as_deref(), Some("team-a"));
    assert_eq!(e.labels["job"], "test");
    assert!(
        shipper.metric("shipper_batch_retries_total").unwrap() >= 1.0,
        "the outage caused retries"
    );
    assert_eq!(
        shipper.metric("shipper_sent_entries_total"),
        Some(expected.len() as f64)
    );
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn a_hanging_loki_is_timed_out_and_retried_with_protobuf() {
    let loki = Loki::start();
    let mut env = Env::new();
    env.sink_table = Some(loki.sink("protobuf", "request_timeout = \"500ms\""));
    let shipper = env.start();
    loki.r().hang_for(Duration::from_secs(2));
    let expected: Vec<String> = (0..3000).map(|i| format!("hang {i}")).collect();
    env.append("app.log", (expected.join("\n") + "\n").as_bytes());
    wait_until(LIMIT, "every line received", || loki.r().count() >= 3000);
    assert!(loki.r().hung_requests() >= 1);
    every_line_once(&loki.r().lines(), &expected);
    assert_eq!(loki.r().rejected_bodies(), 0);
    let (code, body) = shipper.get("/health");
    assert_eq!(code, 200, "a slow Loki is not a dead component: {body}");
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn a_permanently_rejected_batch_is_dropped_counted_and_does_not_block_the_rest() {
    let loki = Loki::start();
    let mut env = Env::new();
    env.sink_table = Some(loki.sink("json", ""));
    let shipper = env.start();
    loki.r().reject_lines_containing("poison");
    env.append("app.log", b"poison pill\n");
    wait_until(LIMIT, "the rejection counted", || {
        shipper.metric("shipper_dropped_entries_total{reason=\"loki_rejected\"}") == Some(1.0)
    });
    env.append("app.log", b"healthy line\n");
    wait_until(LIMIT, "the next line", || loki.r().count() >= 1);
    assert_eq!(loki.r().lines(), vec!["healthy line"]);
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    // The rejected line is acknowledged too: its position advanced past it.
    let cp = std::fs::read_to_string(env.path("data/checkpoints.json")).unwrap();
    assert!(
        cp.contains(&format!(
            "\"offset\": {}",
            "poison pill\nhealthy line\n".len()
        )),
        "{cp}"
    );
}

#[test]
fn kill_9_during_an_outage_then_restart_delivers_everything() {
    let loki = Loki::start();
    let mut env = Env::new();
    env.sink_table = Some(loki.sink("json", ""));
    let expected: Vec<String> = (0..20_000).map(|i| format!("k9 {i:06}")).collect();
    env.append("app.log", (expected[..10_000].join("\n") + "\n").as_bytes());
    let shipper = env.start();
    wait_until(LIMIT, "first half received", || loki.r().count() >= 10_000);
    loki.r().fail_for(Duration::from_secs(3600), 503);
    env.append("app.log", (expected[10_000..].join("\n") + "\n").as_bytes());
    wait_until(LIMIT, "the outage hit", || {
        shipper.metric("shipper_batch_retries_total").unwrap_or(0.0) >= 1.0
    });
    shipper.kill9();
    loki.r().clear_faults();
    let shipper = env.start();
    wait_until(LIMIT, "every line", || {
        let l = loki.r().lines();
        let set: std::collections::HashSet<&String> = l.iter().collect();
        expected.iter().all(|e| set.contains(e))
    });
    assert_eq!(loki.r().rejected_bodies(), 0);
    let dups = loki.r().lines().len() - expected.len();
    eprintln!("duplicates after kill -9 during an outage: {dups}");
    assert!(dups <= 10_000, "only unacknowledged lines are re-sent");
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn sigterm_while_loki_hangs_exits_0_at_the_deadline_and_the_lines_come_next_run() {
    let loki = Loki::start();
    let mut env = Env::new();
    env.top_extra = "shutdown_timeout = \"1s\"\n".into();
    env.sink_table = Some(loki.sink("json", "request_timeout = \"30s\""));
    let shipper = env.start();
    loki.r().hang_for(Duration::from_secs(3600));
    let expected: Vec<String> = (0..100).map(|i| format!("stuck {i}")).collect();
    env.append("app.log", (expected.join("\n") + "\n").as_bytes());
    wait_until(LIMIT, "a request held", || loki.r().hung_requests() >= 1);
    let started = Instant::now();
    let status = shipper.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let cp = std::fs::read_to_string(env.path("data/checkpoints.json")).unwrap();
    assert!(
        cp.contains("\"offset\": 0"),
        "nothing was acknowledged, nothing may be skipped: {cp}"
    );
    loki.r().clear_faults();
    let shipper = env.start();
    wait_until(LIMIT, "every line after the restart", || {
        let set: std::collections::HashSet<String> = loki.r().lines().into_iter().collect();
        expected.iter().all(|e| set.contains(e))
    });
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024.0
}

#[test]
fn an_outage_stops_reading_and_memory_stays_bounded() {
    let loki = Loki::start();
    let mut env = Env::new();
    env.sink_table = Some(loki.sink("json", "max_concurrency = 4"));
    loki.r().fail_for(Duration::from_secs(3600), 503);
    let total = 400_000usize;
    let mut f = std::io::BufWriter::new(std::fs::File::create(env.logs().join("big.log")).unwrap());
    for i in 0..total {
        use std::io::Write;
        writeln!(f, "{i:08} {}", "m".repeat(140)).unwrap();
    }
    drop(f);
    let file_bytes = std::fs::metadata(env.logs().join("big.log")).unwrap().len() as f64;
    let shipper = env.start();
    wait_until(LIMIT, "retries", || {
        shipper.metric("shipper_batch_retries_total").unwrap_or(0.0) >= 3.0
    });
    // Backpressure: once the queues are full, reading stops.
    let mut last = -1.0;
    wait_until(LIMIT, "reading to stall", || {
        let now = shipper.metric("shipper_read_bytes_total").unwrap_or(0.0);
        let stalled = now == last;
        last = now;
        if !stalled {
            std::thread::sleep(Duration::from_millis(500));
        }
        stalled
    });
    assert!(
        last < file_bytes / 2.0,
        "read {last} of {file_bytes} bytes while Loki was down"
    );
    let rss = rss_mib(shipper.child.id());
    eprintln!(
        "during the outage: read {:.1} MiB of {:.1} MiB, rss {rss:.1} MiB",
        last / 1048576.0,
        file_bytes / 1048576.0
    );
    assert!(rss < 150.0, "rss {rss} MiB");
    let (code, _) = shipper.get("/health");
    assert_eq!(code, 200, "an outage is not a dead component");
    loki.r().clear_faults();
    wait_until(LIMIT, "every line after the outage", || {
        loki.r().count() >= total as u64
    });
    assert_eq!(loki.r().count(), total as u64);
    assert_eq!(loki.r().rejected_bodies(), 0);
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}
