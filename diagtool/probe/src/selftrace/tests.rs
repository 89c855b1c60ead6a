//! The wrapper's board entry: when it registers, what it stores, nesting and its end.

use std::time::Duration;

use super::*;
use crate::{Dumper, TaskRegistry, spawn_named, traced};

fn on_board(id: Id) -> usize {
    slots(|slot| slot == id).len()
}

fn runtime() -> (tokio::runtime::Runtime, TaskRegistry) {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let registry = TaskRegistry::install(&mut builder);
    let runtime = builder
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    (runtime, registry)
}

#[test]
fn a_task_registers_at_its_first_park_and_leaves_at_its_end() {
    let (runtime, _registry) = runtime();
    runtime.block_on(async {
        // Done in its first poll: never on the board.
        let quick = spawn_named("quick", async { tokio::task::id() });
        let quick_id = quick.await.expect("quick");
        assert_eq!(on_board(quick_id), 0);

        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let parked = spawn_named("parked", async move {
            let _ = released.await;
        });
        let id = parked.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while on_board(id) == 0 {
            assert!(std::time::Instant::now() < deadline, "never registered");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(on_board(id), 1);
        release.send(()).expect("release");
        parked.await.expect("parked");
        assert_eq!(on_board(id), 0);

        // Aborted while parked: its wrapper is dropped, and so is its entry.
        let aborted = spawn_named("aborted", std::future::pending::<()>());
        let id = aborted.id();
        while on_board(id) == 0 {
            tokio::task::yield_now().await;
        }
        aborted.abort();
        assert!(aborted.await.expect_err("aborted").is_cancelled());
        assert_eq!(on_board(id), 0);
    });
}

#[test]
fn polled_outside_a_task_it_never_registers() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut wrapped = std::pin::pin!(traced(tokio::time::sleep(Duration::from_millis(5))));
        let first = std::future::poll_fn(|cx| Poll::Ready(wrapped.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        assert!(wrapped.state.slot.is_none() && wrapped.state.outside);
        wrapped.await;
    });
}

#[test]
fn the_waker_is_stored_again_only_when_it_changed() {
    let (runtime, _registry) = runtime();
    runtime.block_on(async {
        spawn_named("wakers", async {
            let mut wrapped = std::pin::pin!(traced(std::future::pending::<()>()));
            let (one, two) = (futures_waker(1), futures_waker(2));
            for waker in [&one, &one, &two] {
                let mut cx = Context::from_waker(waker);
                assert!(wrapped.as_mut().poll(&mut cx).is_pending());
                let slot = wrapped.state.slot.as_ref().expect("registered");
                let stored = lock(&slot.waker).clone().expect("a waker");
                assert!(stored.will_wake(waker));
                assert_eq!(wrapped.state.stored, fingerprint(waker));
            }
        })
        .await
        .expect("task");
    });
}

/// A waker that does nothing, told apart by `tag`.
fn futures_waker(tag: usize) -> Waker {
    use std::task::{RawWaker, RawWakerVTable};
    // A static, not a const: `will_wake` compares vtable addresses, and each use of a const may
    // get an address of its own.
    static VTABLE: RawWakerVTable =
        RawWakerVTable::new(|data| RawWaker::new(data, &VTABLE), |_| {}, |_| {}, |_| {});
    // SAFETY: the vtable's functions ignore the data pointer, which is never dereferenced.
    unsafe { Waker::from_raw(RawWaker::new(tag as *const (), &VTABLE)) }
}

#[inline(never)]
async fn inner_wait(rx: tokio::sync::oneshot::Receiver<()>) {
    let _ = rx.await;
}

#[test]
fn two_wrappers_in_one_task_give_one_whole_trace() {
    let (runtime, registry) = runtime();
    runtime.block_on(async {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let nested = spawn_named("nested", traced(inner_wait(released)));
        let id = nested.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while on_board(id) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "both wrappers register"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let dump = Dumper::new(registry.clone())
            .dump(&tokio::runtime::Handle::current(), Duration::from_secs(5))
            .await
            .expect("dump");
        let ours: Vec<_> = dump
            .tasks
            .iter()
            .filter(|t| t.id == crate::snapshot::task_id_u64(id))
            .collect();
        assert_eq!(ours.len(), 1, "{dump:#?}");
        let joined = ours[0].trace.join("\n");
        assert_eq!(ours[0].not_traced, None, "{joined}");
        assert!(joined.contains("inner_wait"), "{joined}");
        release.send(()).expect("release");
        nested.await.expect("nested");
    });
}
