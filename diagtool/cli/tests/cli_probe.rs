//! `diagtool watch` against the real embedded probe: a tokio runtime with the probe's hooks, its
//! `/debug` router on 127.0.0.1:0, and a site that parks 2 tasks every second (the classic leak,
//! scaled). Needs the `probe` feature (on in workspace builds, where the shipper enables it).

mod support;

use std::time::Duration;

use diagtool::model::{Overall, Verdict, WatchReport};
use diagtool_probe::router::serve_on;
use diagtool_probe::{Probe, spawn_named};
use support::{diagtool, stderr, stdout};
use tokio_util::sync::CancellationToken;

/// A service embedding the probe; stops its tasks and joins them on drop.
struct Service {
    url: String,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Service {
    fn start(leak: bool) -> Self {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2).enable_all();
        let probe = Probe::builder("probe-e2e")
            .install(&mut builder)
            .expect("probe installs");
        let runtime = builder.build().expect("runtime");
        let cancel = CancellationToken::new();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = {
            let cancel = cancel.clone();
            runtime.spawn(async move {
                serve_on(probe, listener, cancel)
                    .await
                    .expect("probe serves");
            })
        };
        let work = {
            let cancel = cancel.clone();
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut n = 0u64;
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    n += 1;
                    // Short-lived work: every tick, a task that ends at once.
                    let _done = tokio::spawn(async {});
                    if leak && n.is_multiple_of(5) {
                        // The leak: one task every 500 ms parked forever, never joined.
                        let _parked = spawn_named("leak-poll", std::future::pending::<()>());
                    }
                }
            })
        };
        Service {
            url,
            cancel,
            tasks: vec![server, work],
            runtime: Some(runtime),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(runtime) = self.runtime.take() {
            for task in self.tasks.drain(..) {
                let _ = runtime
                    .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
            }
            // The parked tasks are dropped with the runtime.
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn watch(url: &str) -> (Option<i32>, WatchReport, String) {
    let out = diagtool(
        &[
            "--target",
            url,
            "watch",
            "--interval",
            "200ms",
            "--duration",
            "3s",
            "--json",
            "--fail-on-leak",
        ],
        Duration::from_secs(30),
    );
    let text = stdout(&out);
    let report = WatchReport::from_json(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("no watch document ({e}); stderr: {}", stderr(&out)));
    (out.status.code(), report, stderr(&out))
}

#[test]
fn watch_against_the_real_probe_names_the_leaking_spawn_line() {
    let service = Service::start(true);
    let (code, report, err) = watch(&service.url);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(report.verdict, Overall::Leak, "{report:#?}");
    let leaks: Vec<_> = report
        .sites
        .iter()
        .filter(|s| s.verdict == Verdict::Leak)
        .collect();
    assert_eq!(leaks.len(), 1, "{report:#?}");
    assert!(
        leaks[0].site.contains("cli_probe.rs:"),
        "the test's spawn line is named: {}",
        leaks[0].site
    );
    assert!(
        (leaks[0].growth_per_min - 120.0).abs() < 40.0,
        "{:?}",
        leaks[0]
    );
}

#[test]
fn watch_against_the_real_probe_without_a_leak_exits_0() {
    let service = Service::start(false);
    let (code, report, err) = watch(&service.url);
    assert_eq!(code, Some(0), "{err}\n{report:#?}");
    assert_eq!(report.verdict, Overall::Ok);
}
