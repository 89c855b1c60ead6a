//! Spawning with a name and a trace-friendly wrapper.
//!
//! [`spawn_named`] is `tokio::spawn` plus two things: the task gets a name in the registry (shown
//! in snapshots and dumps), and its future is wrapped in [`Traced`], whose `poll` is never
//! inlined. In release builds the compiler otherwise inlines the user's async fns into tokio's
//! task harness and a task dump keeps only tokio's leaf frames; the out-of-line `poll` keeps a
//! real frame boundary, so the user's functions and their await points stay in the trace. The
//! wrapper also answers the default (self-traced) task dump: see [`super::selftrace`].
//!
//! Every function here is `#[track_caller]` down to tokio's spawn, so the spawn site recorded by
//! the registry is the caller's line, not a line in this file.
//!
//! The three spawn functions repeat their few lines on purpose: a shared helper would have to
//! take the spawn as a closure, and closures cannot be `#[track_caller]` on stable Rust, so every
//! task's spawn site would become a line of this file.
//!
//! The name also goes to tokio itself (`task::Builder::name`), which puts it on the task's
//! `runtime.spawn` span: tokio-console and any other tracing consumer then show the same name
//! the registry does.

use std::borrow::Cow;
use std::future::Future;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::registry;
pub use super::selftrace::Traced;

/// Wraps `future` in [`Traced`], for hosts that spawn through their own helpers
/// (a `JoinSet`, a supervisor): the task then answers self-traced dumps.
pub fn traced<F: Future>(future: F) -> Traced<F> {
    Traced::new(future)
}

/// Clears a pending name even when the spawn panics (no runtime), so no later spawn inherits it.
struct PendingName;

impl PendingName {
    fn set(name: Cow<'static, str>) -> Self {
        registry::set_pending_name(name);
        PendingName
    }
}

impl Drop for PendingName {
    fn drop(&mut self) {
        registry::clear_pending_name();
    }
}

/// Spawns `future` on the current runtime, named `name` in the task registry and wrapped in
/// [`Traced`]. The spawn site is the caller's line.
///
/// Panics like `tokio::spawn` when called outside a runtime.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let handle = diagtool_probe::spawn_named("answer", async { 42 });
/// assert_eq!(handle.await.unwrap(), 42);
/// # }
/// ```
#[track_caller]
pub fn spawn_named<F>(name: impl Into<Cow<'static, str>>, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let name = name.into();
    let builder = tokio::task::Builder::new().name(&name);
    let _pending = PendingName::set(name.clone());
    spawned(builder.spawn(traced(future)))
}

/// [`spawn_named`] on the runtime of `handle`.
#[track_caller]
pub fn spawn_named_on<F>(
    handle: &Handle,
    name: impl Into<Cow<'static, str>>,
    future: F,
) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let name = name.into();
    let builder = tokio::task::Builder::new().name(&name);
    let _pending = PendingName::set(name.clone());
    spawned(builder.spawn_on(traced(future), handle))
}

/// [`spawn_named`] through a `TaskTracker`, so the host can wait for the task at shutdown.
#[track_caller]
pub fn spawn_named_in<F>(
    tracker: &TaskTracker,
    name: impl Into<Cow<'static, str>>,
    future: F,
) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let name = name.into();
    let builder = tokio::task::Builder::new().name(&name);
    let _pending = PendingName::set(name.clone());
    spawned(builder.spawn(tracker.track_future(traced(future))))
}

/// Unwraps tokio's `Builder::spawn` result. It is an `io::Result` only for the sake of
/// `spawn_blocking`, whose thread can fail to start; a task spawn always returns `Ok` (and
/// panics outside a runtime, like `tokio::spawn`), so an error here is a broken tokio invariant.
#[track_caller]
fn spawned<T>(result: std::io::Result<JoinHandle<T>>) -> JoinHandle<T> {
    match result {
        Ok(handle) => handle,
        Err(err) => panic!("tokio refused to spawn a task: {err}"),
    }
}
