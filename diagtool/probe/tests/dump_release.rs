//! A task dump names the user's async fn and the line it waits on, in debug AND in release builds
//! (`cargo test --release -p diagtool-probe --test dump_release`): the `Traced` wrapper
//! keeps the frames that inlining would otherwise fold into tokio's harness, and a global dump
//! finds them again for plain `tokio::spawn` tasks (`dump_root.rs`). A task parked where tokio's
//! trace sees nothing says so, and names its future.

use std::time::Duration;

use diagtool_probe::dump::NO_TOKIO_LEAF;
use diagtool_probe::{DumpMode, Dumper, TaskRegistry, spawn_named};

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

/// The line of the plain task's await below, checked in the global dump's trace.
const PLAIN_AWAIT_LINE: u32 = line!() + 4;

async fn wait_for_reply(rx: tokio::sync::oneshot::Receiver<u64>) {
    std::hint::black_box(0);
    let _ = rx.await;
}

/// Plain `tokio::spawn` (no wrapper): in release the task's own future is inlined into tokio's
/// task root, the one frame tokio's trace leaves out; the global dump finds it again.
#[test]
fn global_dump_of_plain_spawns_shows_their_fn_and_await_line() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let registry = TaskRegistry::install(&mut builder);
    let runtime = builder
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dumper = Dumper::new(registry).global_dump(true);
    runtime.block_on(async {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            senders.push(tx);
            handles.push(tokio::spawn(async move { wait_for_reply(rx).await }));
        }
        let site_line = line!() - 2;
        let pending = tokio::spawn(std::future::pending::<()>());
        let pending_line = line!() - 1;
        // A wrapped task in the same global dump: its own frames, nothing searched above them.
        let (wrapped_tx, wrapped_rx) = tokio::sync::oneshot::channel();
        let wrapped = spawn_named("wrapped", park_on_channel(wrapped_rx));
        let wrapped_line = line!() - 1;
        // Two plain tasks parked on the same tokio function from two places of this file: the
        // search cannot tell which is which, so (in release, where both are inlined into their
        // task roots) it names both as candidates rather than guess.
        let (twin_a_tx, twin_a) = tokio::sync::oneshot::channel::<u32>();
        let (twin_b_tx, twin_b) = tokio::sync::oneshot::channel::<u32>();
        let twin_a = tokio::spawn(async move { twin_a.await.ok() });
        let twin_a_line = line!() - 1;
        let twin_b = tokio::spawn(async move { twin_b.await.ok() });
        let twin_b_line = line!() - 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let dump = dumper
            .dump_mode(
                &tokio::runtime::Handle::current(),
                Duration::from_secs(10),
                DumpMode::Global,
            )
            .await
            .expect("dump");
        eprintln!("{}", diagtool_probe::dump::render_text(&dump, 1));
        let group = dump
            .groups
            .iter()
            .find(|g| g.site.ends_with(&format!("dump_release.rs:{site_line}:26")))
            .unwrap_or_else(|| panic!("no group at line {site_line}: {dump:#?}"));
        assert_eq!(group.count, 3);
        let joined = group.trace.join("\n");
        assert!(joined.contains("oneshot"), "tokio's leaf:\n{joined}");
        assert!(joined.contains("wait_for_reply"), "the fn:\n{joined}");
        assert!(
            joined.contains(&format!("dump_release.rs:{PLAIN_AWAIT_LINE}")),
            "the await line {PLAIN_AWAIT_LINE}:\n{joined}"
        );
        // The leaf stays last (innermost), the service's frames above it.
        assert!(
            group.trace.last().is_some_and(|f| f.contains("oneshot")),
            "{joined}"
        );

        let parked = dump
            .groups
            .iter()
            .find(|g| {
                g.site
                    .ends_with(&format!("dump_release.rs:{pending_line}:23"))
            })
            .unwrap_or_else(|| panic!("no group at line {pending_line}: {dump:#?}"));
        assert_eq!(parked.trace, vec![NO_TOKIO_LEAF.to_owned()]);

        let wrapped_group = dump
            .groups
            .iter()
            .find(|g| {
                g.site
                    .ends_with(&format!("dump_release.rs:{wrapped_line}:23"))
            })
            .unwrap_or_else(|| panic!("no group at line {wrapped_line}: {dump:#?}"));
        let joined = wrapped_group.trace.join("\n");
        assert!(
            joined.contains(&format!("dump_release.rs:{PARK_LINE}")),
            "{joined}"
        );
        assert!(!joined.contains("places in the code"), "{joined}");

        if !cfg!(debug_assertions) {
            for line in [twin_a_line, twin_b_line] {
                let twin = dump
                    .groups
                    .iter()
                    .find(|g| g.site.ends_with(&format!("dump_release.rs:{line}:22")))
                    .unwrap_or_else(|| panic!("no group at line {line}: {dump:#?}"));
                let joined = twin.trace.join("\n");
                assert!(joined.contains("2 places in the code"), "{joined}");
                for place in [twin_a_line, twin_b_line] {
                    assert!(
                        joined.contains(&format!("dump_release.rs:{place}")),
                        "{joined}"
                    );
                }
            }
        }
        drop((wrapped_tx, twin_a_tx, twin_b_tx));
        wrapped.await.expect("wrapped");
        twin_a.await.expect("twin a");
        twin_b.await.expect("twin b");
        pending.abort();
        drop(senders);
        for handle in handles {
            handle.await.expect("join");
        }
    });
}

async fn park_forever() {
    std::hint::black_box(0);
    std::future::pending::<()>().await;
}

/// A wrapped task on `std::future::pending`: no tokio leaf, so the self-traced dump says so and
/// names the task's future (its async fn).
#[test]
fn a_task_on_a_pending_future_says_so_and_names_its_fn() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let registry = TaskRegistry::install(&mut builder);
    let runtime = builder
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dumper = Dumper::new(registry).global_dump(true);
    runtime.block_on(async {
        let handle = spawn_named("forever", park_forever());
        let id: u64 = handle.id().to_string().parse().expect("id");
        tokio::time::sleep(Duration::from_millis(20)).await;
        for mode in [DumpMode::SelfTraced, DumpMode::Global] {
            let dump = dumper
                .dump_mode(
                    &tokio::runtime::Handle::current(),
                    Duration::from_secs(10),
                    mode,
                )
                .await
                .expect("dump");
            let task = dump
                .tasks
                .iter()
                .find(|t| t.id == id)
                .unwrap_or_else(|| panic!("{mode:?}: task {id} missing: {dump:#?}"));
            assert_eq!(task.not_traced, None, "{mode:?}");
            assert_eq!(
                task.trace.last().map(String::as_str),
                Some(NO_TOKIO_LEAF),
                "{mode:?}"
            );
            assert!(
                task.trace
                    .iter()
                    .any(|f| f.contains("dump_release::park_forever")),
                "{mode:?}: the task's fn: {:?}",
                task.trace
            );
            let text = diagtool_probe::dump::render_text(&dump, 2);
            assert!(text.contains("not waiting on a tokio resource"), "{text}");
        }
        handle.abort();
    });
}
