//! The shipper's graceful shutdown leaves no task behind: run in-process on a runtime whose probe
//! counts every task by spawn site, ship a line, stop, and the registry must come back to zero.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use diagtool_probe::Probe;

#[test]
fn graceful_shutdown_leaves_no_task_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    std::fs::write(dir.path().join("logs/a.log"), "one\ntwo\n").unwrap();
    let text = format!(
        "data_dir = \"{d}/data\"\ncheckpoint_interval = \"100ms\"\n\
         [server]\nmain_addr = \"127.0.0.1:0\"\ndebug_addr = \"127.0.0.1:0\"\n\
         [[sources]]\ntype = \"file\"\ninclude = [\"{d}/logs/*.log\"]\npoll_interval = \"100ms\"\n\
         [sink]\ntype = \"file\"\npath = \"{d}/data/out.jsonl\"\nbatch_max_wait = \"50ms\"\n"
    );
    let config = shipper::config::Config::parse(&text, "test.toml").unwrap();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    let probe = Probe::builder("shipper")
        .addr("127.0.0.1:0".parse().unwrap())
        .install(&mut builder)
        .unwrap();
    let registry = probe.registry().clone();
    let runtime = builder.build().unwrap();
    let out = dir.path().join("data/out.jsonl");
    runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let diagnostics = shipper::Diagnostics {
            probe: Some(probe),
            ..Default::default()
        };
        let run = tokio::spawn(shipper::run_with(config, diagnostics, async {
            let _ = stop_rx.await;
        }));
        let start = Instant::now();
        while std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
            < 2
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "lines not shipped"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sites = registry.site_names();
        for name in [
            "reader",
            "dispatcher",
            "sink",
            "checkpointer",
            "debug-server",
            "task-health",
        ] {
            assert!(
                sites.iter().any(|(_, names)| names.contains(name)),
                "{name} not running: {sites:?}"
            );
        }
        assert!(registry.totals().live >= 8);
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(15), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    });
    // Every task the shipper spawned ended; the runtime itself is still up.
    let start = Instant::now();
    while registry.totals().live != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "tasks left behind: {:?}",
            registry.live_tasks()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(runtime);
}
