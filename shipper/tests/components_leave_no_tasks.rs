//! Every component, started and stopped through the shipper's public API, leaves no task behind.
//!
//! Each test runs on `diagtool_probe::testing::test_runtime()` (a task registry hooked into the runtime)
//! and wraps the component's whole life in a `LeakGuard`: whatever it spawned must be gone when
//! it has stopped (the guard waits up to a second for stragglers). The last test proves the guard
//! bites: a component that ignores its stop signal is reported with its spawn site in this file.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use diagtool_probe::testing::{LeakGuard, test_runtime};
use shipper::checkpoint::{self, Ledger};
use shipper::config::Config;
use shipper::event::{AckRef, Batch, Chunk, StreamBatch};
use shipper::health::Health;
use shipper::pipeline::{self, BatchLimits};
use shipper::sink;
use shipper::source::{self, MetricEvents};
use shipper::supervisor::Supervisor;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Bound on every wait in these tests; they finish in well under a second when healthy.
const LIMIT: Duration = Duration::from_secs(20);

/// Waits (at most [`LIMIT`]) for a component's task to end, and checks it ended with `Ok`.
async fn ends_cleanly(task: tokio::task::JoinHandle<anyhow::Result<()>>) {
    tokio::time::timeout(LIMIT, task)
        .await
        .expect("the component ends in time")
        .expect("the component does not panic")
        .expect("the component ends without error");
}

fn beat() -> impl Fn() + Send + Sync + 'static {
    || {}
}

fn one_line_batch(line: &str, chunk: u64, ack_tx: shipper::event::AckSender) -> Batch {
    let labels = Arc::new(BTreeMap::from([("job".to_owned(), "leak".to_owned())]));
    let stream = StreamBatch {
        labels,
        entries: [(1_700_000_000_000_000_000, line)].into(),
    };
    Batch::new(vec![stream], vec![AckRef { chunk }], ack_tx)
}

/// Waits, bounded, until `cond` holds.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {LIMIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A config following `dir/logs/*.log` into a file sink, every port ephemeral on loopback.
fn file_config(dir: &std::path::Path) -> Config {
    let d = dir.display();
    let text = format!(
        "data_dir = \"{d}/data\"\ncheckpoint_interval = \"100ms\"\nshutdown_timeout = \"5s\"\n\
         [server]\nmain_addr = \"127.0.0.1:0\"\ndebug_addr = \"127.0.0.1:0\"\n\
         [[sources]]\ntype = \"file\"\ninclude = [\"{d}/logs/*.log\"]\nread_from = \"beginning\"\n\
         labels = {{ job = \"leak\" }}\npoll_interval = \"100ms\"\n\
         [sink]\ntype = \"file\"\npath = \"{d}/data/out.jsonl\"\nbatch_max_wait = \"50ms\"\n"
    );
    Config::parse(&text, "components_leave_no_tasks.rs").unwrap()
}

#[test]
fn the_supervisor_and_its_components_leave_no_tasks() {
    let (rt, registry) = test_runtime().unwrap();
    rt.block_on(async {
        let guard = LeakGuard::new(&registry);
        let sup = Supervisor::new(Health::new(Duration::from_secs(10)));
        for name in ["one", "two", "three"] {
            let stop = sup.shutdown();
            let beat = sup.heartbeat(name);
            sup.spawn(name, async move {
                stop.cancelled().await;
                beat();
                Ok(())
            });
        }
        sup.spawn("quick", async { Ok(()) });
        sup.shutdown().cancel();
        assert!(sup.wait(LIMIT).await, "the supervisor's tasks did not stop");
        assert_eq!(sup.failure(), None);
        guard.assert_clean().await;
    });
}

#[test]
fn the_dispatcher_leaves_no_tasks() {
    let (rt, registry) = test_runtime().unwrap();
    rt.block_on(async {
        let guard = LeakGuard::new(&registry);
        let (chunk_tx, chunk_rx) = mpsc::channel(4);
        let (batch_tx, mut batch_rx) = mpsc::channel(4);
        let (ack_tx, _acks) = mpsc::unbounded_channel();
        let limits = BatchLimits {
            max_bytes: 1 << 20,
            max_wait: Duration::from_millis(20),
        };
        let dispatcher = tokio::spawn(pipeline::run(
            chunk_rx,
            batch_tx,
            ack_tx,
            limits,
            CancellationToken::new(),
            beat(),
        ));
        let labels = Arc::new(BTreeMap::from([("job".to_owned(), "leak".to_owned())]));
        let chunk = Chunk {
            id: 7,
            streams: vec![(labels, [(1, "a"), (2, "b")].into())],
        };
        chunk_tx.send(chunk).await.unwrap();
        let batch = tokio::time::timeout(LIMIT, batch_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.entries, 2);
        drop(chunk_tx); // the reader is gone: the dispatcher flushes and ends
        ends_cleanly(dispatcher).await;
        assert!(batch_rx.recv().await.is_none(), "the sink's channel closes");
        guard.assert_clean().await;
    });
}

#[test]
fn the_checkpointer_leaves_no_tasks() {
    let (rt, registry) = test_runtime().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let guard = LeakGuard::new(&registry);
        let ledger = Ledger::new(Vec::new()).shared();
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let checkpointer = tokio::spawn(checkpoint::run(
            ledger,
            ack_rx,
            dir.path().to_path_buf(),
            Duration::from_millis(20),
            CancellationToken::new(),
            beat(),
        ));
        ack_tx.send(vec![AckRef { chunk: 1 }]).unwrap();
        drop(ack_tx); // every acknowledgement sender gone: a graceful end
        ends_cleanly(checkpointer).await;
        guard.assert_clean().await;
    });
}

#[test]
fn the_file_sink_leaves_no_tasks() {
    let (rt, registry) = test_runtime().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out/lines.jsonl");
    rt.block_on(async {
        let guard = LeakGuard::new(&registry);
        let (tx, rx) = mpsc::channel(4);
        let (ack_tx, mut acks) = mpsc::unbounded_channel();
        let sink = tokio::spawn(sink::file::run(
            out.clone(),
            rx,
            CancellationToken::new(),
            beat(),
        ));
        tx.send(one_line_batch("to the file", 3, ack_tx))
            .await
            .unwrap();
        let acked = tokio::time::timeout(LIMIT, acks.recv()).await.unwrap();
        assert_eq!(acked, Some(vec![AckRef { chunk: 3 }]));
        drop(tx);
        ends_cleanly(sink).await;
        guard.assert_clean().await;
    });
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains("to the file"), "{written}");
}

#[test]
fn the_loki_sink_leaves_no_tasks() {
    let (rt, registry) = test_runtime().unwrap();
    rt.block_on(async {
        let guard = LeakGuard::new(&registry);
        let loki = testkit::loki::Receiver::start().await.unwrap();
        let mut settings = sink::loki::LokiSettings::new(loki.url());
        settings.max_concurrency = 4;
        let (tx, rx) = mpsc::channel(4);
        let (ack_tx, mut acks) = mpsc::unbounded_channel();
        let sink = tokio::spawn(sink::loki::run(
            settings,
            rx,
            CancellationToken::new(),
            beat(),
        ));
        for chunk in 0..3 {
            tx.send(one_line_batch(
                &format!("to loki {chunk}"),
                chunk,
                ack_tx.clone(),
            ))
            .await
            .unwrap();
        }
        for _ in 0..3 {
            let acked = tokio::time::timeout(LIMIT, acks.recv()).await.unwrap();
            assert!(acked.is_some());
        }
        drop(tx); // drains what is in flight and ends; its http client (and pool) goes with it
        ends_cleanly(sink).await;
        assert_eq!(loki.count(), 3);
        loki.shutdown().await;
        guard.assert_clean().await;
    });
}

#[test]
fn the_reader_leaves_no_tasks() {
    let (rt, registry) = test_runtime().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    std::fs::write(dir.path().join("logs/app.log"), "first\nsecond\n").unwrap();
    let config = file_config(dir.path());
    rt.block_on(async {
        let guard = LeakGuard::new(&registry);
        let (tx, mut rx) = mpsc::channel(4);
        let stop = CancellationToken::new();
        let reader = tokio::spawn(source::reader::run(
            source::reader::ReaderParts {
                sources: config.sources.clone(),
                ledger: Ledger::new(Vec::new()).shared(),
                tx,
                events: Arc::new(MetricEvents),
                fs_events: true,
            },
            stop.clone(),
            beat(),
        ));
        let chunk = tokio::time::timeout(LIMIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(chunk.lines(), 2);
        stop.cancel();
        ends_cleanly(reader).await;
        guard.assert_clean().await;
    });
}

/// Runs the whole shipper (`run_with` and `diagnostics`) on a file source holding `line` until the
/// line reaches the file sink, calls `running` while it runs, then stops it by its signal; returns
/// once `run_with` returned, with every task checked by the guard.
fn run_whole_shipper(
    diagnostics: shipper::Diagnostics,
    registry: &diagtool_probe::TaskRegistry,
    rt: &tokio::runtime::Runtime,
    line: &str,
    running: impl AsyncFnOnce(),
) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    std::fs::write(dir.path().join("logs/app.log"), format!("{line}\n")).unwrap();
    let config = file_config(dir.path());
    let out = dir.path().join("data/out.jsonl");
    rt.block_on(async {
        let guard = LeakGuard::new(registry);
        let (signal_tx, signal_rx) = oneshot::channel::<()>();
        let shipper = tokio::spawn(shipper::run_with(config, diagnostics, async {
            let _ = signal_rx.await;
        }));
        wait_until("the line in the file sink", || {
            std::fs::read_to_string(&out).is_ok_and(|t| t.contains(line))
        })
        .await;
        running().await;
        signal_tx.send(()).unwrap();
        ends_cleanly(shipper).await;
        guard.assert_clean().await;
    });
}

#[test]
fn the_whole_shipper_leaves_no_tasks() {
    let (rt, registry) = test_runtime().unwrap();
    run_whole_shipper(
        shipper::Diagnostics::default(),
        &registry,
        &rt,
        "through the shipper",
        async || {},
    );
}

/// Threads of this process named `name` (`/proc/self/task/*/comm`).
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// With its probe, the shipper also serves `/debug` from a thread of its own (the only test here
/// that starts one): the thread is gone when `run_with` returns, and so is every task.
#[test]
fn the_whole_shipper_with_its_debug_server_leaves_no_tasks_nor_thread() {
    let debug_thread = diagtool_probe::server::THREAD_NAME;
    let (rt, registry) = test_runtime().unwrap();
    let probe = diagtool_probe::Probe::builder("shipper")
        .addr("127.0.0.1:0".parse().unwrap())
        .with_registry(registry.clone())
        .unwrap();
    let diagnostics = shipper::Diagnostics {
        probe: Some(probe),
        ..Default::default()
    };
    run_whole_shipper(
        diagnostics,
        &registry,
        &rt,
        "with a debug port",
        async || {
            wait_until("the debug thread", || threads_named(debug_thread) == 1).await;
        },
    );
    assert_eq!(
        threads_named(debug_thread),
        0,
        "the debug thread outlived run_with"
    );
}

/// A taken debug port fails the start with the key to fix, and nothing started is left behind.
#[test]
fn a_taken_debug_port_fails_naming_its_key_and_leaves_nothing() {
    let (rt, registry) = test_runtime().unwrap();
    let probe = diagtool_probe::Probe::builder("shipper")
        .addr("127.0.0.1:0".parse().unwrap())
        .with_registry(registry.clone())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = file_config(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.server.debug_addr = taken.local_addr().unwrap();
    rt.block_on(async {
        let guard = LeakGuard::new(&registry);
        let diagnostics = shipper::Diagnostics {
            probe: Some(probe),
            ..Default::default()
        };
        let err = tokio::time::timeout(
            LIMIT,
            shipper::run_with(config.clone(), diagnostics, std::future::pending()),
        )
        .await
        .unwrap()
        .expect_err("the port is taken");
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!(
                "cannot listen on {} (server.debug_addr)",
                config.server.debug_addr
            )),
            "{text}"
        );
        guard.assert_clean().await;
    });
}

#[test]
fn a_component_that_ignores_its_stop_is_reported_with_its_site() {
    let (rt, registry) = test_runtime().unwrap();
    rt.block_on(async {
        let guard = LeakGuard::new(&registry);
        let sup = Supervisor::new(Health::new(Duration::from_secs(10)));
        let hard = sup.hard_stop();
        // Waits for the hard stop only: a graceful shutdown leaves it running, a leak.
        let site = format!("{}:{}", file!(), line!() + 1);
        sup.spawn("stubborn", async move {
            hard.cancelled().await;
            Ok(())
        });
        sup.shutdown().cancel();
        assert!(!sup.wait(Duration::from_millis(50)).await);

        let leak = guard
            .clone()
            .timeout(Duration::from_millis(200))
            .check()
            .await
            .expect_err("a task still running must be reported");
        let report = leak.to_string();
        assert_eq!(leak.sites.len(), 1, "{report}");
        assert_eq!(leak.sites[0].count, 1, "{report}");
        assert!(
            leak.sites[0].site.contains(&format!("{site}:")),
            "site {:?} is not {site}: {report}",
            leak.sites[0].site
        );
        assert_eq!(leak.sites[0].names, ["stubborn"], "{report}");
        assert!(report.contains(&site), "{report}");

        // Released, it ends, and the same guard comes out clean.
        sup.hard_stop().cancel();
        assert!(sup.wait(LIMIT).await);
        guard.assert_clean().await;
    });
}

#[test]
#[should_panic(expected = "components_leave_no_tasks.rs")]
fn assert_clean_fails_the_test_naming_the_leaking_line() {
    let (rt, registry) = test_runtime().unwrap();
    rt.block_on(async {
        let guard = LeakGuard::new(&registry).timeout(Duration::from_millis(100));
        let (_keep, parked) = oneshot::channel::<()>();
        // Deliberately leaked: parked until the runtime is dropped after the panic.
        let _leak = tokio::spawn(async move {
            let _ = parked.await;
        });
        guard.assert_clean().await;
    });
}
