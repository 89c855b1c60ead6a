//! A task dump names the user's async fn and the line it waits on, in debug AND in release builds
//! (`cargo test --release -p diagtool-probe --test dump_release`): the `Traced` wrapper
//! keeps the frames that inlining would otherwise fold into tokio's harness.

use std::time::Duration;

use diagtool_probe::{Dumper, TaskRegistry, spawn_named};

/// The line of the await below, checked in the trace.
const PARK_LINE: u32 = line!() + 5;

#[inline(never)]
async fn park_on_channel(rx: tokio::sync::oneshot::Receiver<()>) {
    std::hint::black_box(0);
    let _ = rx.await;
}

#[test]
fn release_dump_shows_user_fn_and_await_point() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let registry = TaskRegistry::install(&mut builder);
    let runtime = builder
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dumper = Dumper::new(registry.clone());
    runtime.block_on(async {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            senders.push(tx);
            handles.push(spawn_named("parked", park_on_channel(rx)));
        }
        let site_line = line!() - 2;
        let ids: Vec<u64> = handles
            .iter()
            .map(|h| h.id().to_string().parse().expect("id"))
            .collect();
        // Let every task reach its await before dumping.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let dump = dumper
            .dump(&tokio::runtime::Handle::current(), Duration::from_secs(10))
            .await
            .expect("dump");
        eprintln!("{}", diagtool_probe::dump::render_text(&dump, 1));
        let ours: Vec<_> = dump.tasks.iter().filter(|t| ids.contains(&t.id)).collect();
        assert_eq!(ours.len(), 3, "{dump:#?}");
        let group = dump
            .groups
            .iter()
            .find(|g| g.site.ends_with(&format!("dump_release.rs:{site_line}:26")))
            .unwrap_or_else(|| panic!("no group at line {site_line}: {dump:#?}"));
        assert_eq!(group.count, 3);
        let joined = group.trace.join("\n");
        assert!(joined.contains("park_on_channel"), "{joined}");
        assert!(
            joined.contains(&format!("dump_release.rs:{PARK_LINE}")),
            "{joined}"
        );
        for task in &ours {
            assert_eq!(task.name.as_deref(), Some("parked"));
        }
        drop(senders);
        for handle in handles {
            handle.await.expect("join");
        }
    });
}
