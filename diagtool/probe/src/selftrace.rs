//! Tasks that trace themselves: the default task dump, which never stops the service's runtime.
//!
//! tokio's multi-thread `Handle::dump()` stops every worker at a barrier, and a timed-out wait
//! leaves that barrier miscounted: the runtime wedges for good (see [`super::dump`]). Here no
//! worker ever waits for another. Each task spawned through the probe's [`Traced`] wrapper keeps a
//! [`Slot`] on a process-wide board once it has parked (returned `Pending`) inside a task: its
//! waker, the epoch of the last trace asked of it, and its answer. A dump
//! ([`super::Dumper::dump`]) sets a new epoch on each slot and wakes its task; during that task's
//! next poll, on its own worker, the wrapper polls the future inside
//! `tokio::runtime::dump::Trace::capture` under its own `Trace::root`, deposits the raw trace and
//! returns what the poll returned. The dumper, on its own thread, waits (bounded) for the answers,
//! and whatever did not answer in time (a task busy in a long poll, a blocked worker) is reported
//! as such rather than waited for.
//!
//! What a capture poll does (tokio 1.54.1, `runtime/task/trace/mod.rs`): in tracing mode every
//! tokio leaf future (sleep, channels, `Notify`, I/O readiness, `JoinHandle`, ...) returns
//! `Pending` before doing any work and defers a wake of the waker it was given, so nothing is
//! consumed and the task is polled again normally. A leaf that is not tokio's runs for real: the
//! poll is a real poll, so a future that completes during it returns `Ready` with its output, which
//! the wrapper passes on. The wrapper also wakes its task itself after a capture that returned
//! `Pending`, so the task is repolled normally even where no scheduler took the deferred wakes.
//!
//! Hot path (no dump asked): one relaxed atomic load per poll for a parked task; on `Pending`, a
//! comparison of the waker's data and vtable pointers (what `Waker::will_wake` compares), and a
//! store of a clone only when it changed. Registration (an `Arc` and one shard lock) happens at a
//! task's first `Pending` only, so a task that completes in its first poll never touches the board.
//!
//! Nesting: a `Traced` polled inside another `Traced`'s capture (two wrappers in one task) does
//! not capture again (tokio's nested captures give partial traces); it answers "nested" and the
//! outer trace covers it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::runtime::dump::Trace;
use tokio::task::Id;

/// Shards of the board, each behind its own mutex (touched at a task's first park and its end).
const SHARDS: usize = 64;

/// What a task answered to one request.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The raw (unresolved) trace of the capture poll.
    Traced(Trace),
    /// Polled inside another wrapper's capture, which covers it.
    Nested,
}

/// One task's entry on the board.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The task's id (process-unique, as in the registry).
    id: Id,
    /// The wrapped future's type name (`std::any::type_name`): the one frame a dump can show of
    /// a task parked where tokio's trace sees nothing (a pending or foreign future).
    future: &'static str,
    /// The epoch of the latest request (0: none yet).
    asked: AtomicU64,
    /// The epoch of the latest answer.
    answered: AtomicU64,
    /// Set when the wrapper is dropped (the task ended or was aborted).
    ended: AtomicBool,
    /// The task's waker, as of its last `Pending`.
    waker: Mutex<Option<Waker>>,
    /// The latest answer, with its epoch.
    answer: Mutex<Option<(u64, Answer)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere while holding the lock leaves nothing half-done that matters.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Slot {
    /// The task's id.
    pub(crate) fn id(&self) -> Id {
        self.id
    }

    /// True once the task answered request `epoch` (or ended, which needs no answer).
    pub(crate) fn done(&self, epoch: u64) -> bool {
        self.answered.load(Ordering::Acquire) >= epoch || self.ended.load(Ordering::Acquire)
    }

    /// The wrapped future's type name, such as `service::park::{{closure}}`.
    pub(crate) fn future(&self) -> &'static str {
        self.future
    }

    /// True once the task ended.
    pub(crate) fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Asks the task for a trace at `epoch` and wakes it. The waker is cloned under the lock
    /// and woken outside it: a wake never runs with a board lock held.
    pub(crate) fn ask(&self, epoch: u64) {
        self.asked.fetch_max(epoch, Ordering::AcqRel);
        let waker = lock(&self.waker).clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Takes the answer to `epoch`, if the task gave one.
    pub(crate) fn take_answer(&self, epoch: u64) -> Option<Answer> {
        let mut answer = lock(&self.answer);
        match answer.take() {
            Some((given, answered)) if given == epoch => Some(answered),
            other => {
                *answer = other;
                None
            }
        }
    }

    fn deposit(&self, epoch: u64, answer: Answer) {
        *lock(&self.answer) = Some((epoch, answer));
        self.answered.fetch_max(epoch, Ordering::AcqRel);
    }
}

type Shard = Mutex<HashMap<usize, Arc<Slot>, BuildHasherDefault<std::hash::DefaultHasher>>>;

/// Every parked wrapped task of the process, sharded by task id.
struct Board {
    shards: Box<[Shard]>,
    epoch: AtomicU64,
}

static BOARD: LazyLock<Board> = LazyLock::new(|| Board {
    shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
    epoch: AtomicU64::new(0),
});

fn shard_of(id: Id) -> &'static Shard {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    id.hash(&mut hasher);
    &BOARD.shards[(hasher.finish() as usize) % SHARDS]
}

fn key(slot: &Arc<Slot>) -> usize {
    Arc::as_ptr(slot) as usize
}

/// A fresh request epoch, larger than every earlier one.
pub(crate) fn next_epoch() -> u64 {
    BOARD.epoch.fetch_add(1, Ordering::AcqRel) + 1
}

/// The slots of the tasks `wanted` picks, at this moment.
pub(crate) fn slots(wanted: impl Fn(Id) -> bool) -> Vec<Arc<Slot>> {
    let mut out = Vec::new();
    for shard in BOARD.shards.iter() {
        let shard = lock(shard);
        out.extend(shard.values().filter(|s| wanted(s.id)).cloned());
    }
    out
}

/// A waker's identity: what `Waker::will_wake` compares (its data and vtable pointers).
fn fingerprint(waker: &Waker) -> (usize, usize) {
    (waker.data() as usize, waker.vtable() as *const _ as usize)
}

thread_local! {
    /// Set while a wrapper on this thread polls its future inside a capture.
    static CAPTURING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pin_project_lite::pin_project! {
    /// A future wrapper whose `poll` is never inlined, so task dumps of release builds keep the
    /// wrapped future's own frames, and which answers trace requests (see the module docs). Build
    /// one with [`traced`](super::traced).
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Traced<F> {
        // Declared first so it drops first: the board entry goes before the future does.
        state: BoardEntry,
        #[pin]
        future: F,
    }
}

/// A wrapped task's side of the board: its entry and what it last stored there.
#[derive(Debug, Default)]
struct BoardEntry {
    /// This task's board entry, from its first `Pending` inside a task.
    slot: Option<Arc<Slot>>,
    /// The fingerprint of the waker stored in `slot`.
    stored: (usize, usize),
    /// The last request epoch answered.
    seen: u64,
    /// Polled outside any task (no task id): never registers.
    outside: bool,
}

impl<F> Traced<F> {
    pub(crate) fn new(future: F) -> Self {
        Traced {
            state: BoardEntry::default(),
            future,
        }
    }
}

impl BoardEntry {
    /// After a `Pending`: registers the task (first time), or stores its waker when it changed.
    fn parked(&mut self, waker: &Waker, future: &'static str) {
        let print = fingerprint(waker);
        match &self.slot {
            Some(_) if self.stored == print => {}
            Some(slot) => {
                *lock(&slot.waker) = Some(waker.clone());
                self.stored = print;
            }
            None if self.outside => {}
            None => self.register(waker, print, future),
        }
    }

    #[cold]
    fn register(&mut self, waker: &Waker, print: (usize, usize), future: &'static str) {
        let Some(id) = tokio::task::try_id() else {
            self.outside = true;
            return;
        };
        let slot = Arc::new(Slot {
            id,
            future,
            asked: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            waker: Mutex::new(Some(waker.clone())),
            answer: Mutex::new(None),
        });
        // Requests made before this task parked are not for it.
        self.seen = BOARD.epoch.load(Ordering::Acquire);
        slot.asked.store(self.seen, Ordering::Release);
        lock(shard_of(id)).insert(key(&slot), Arc::clone(&slot));
        self.slot = Some(slot);
        self.stored = print;
    }
}

impl Drop for BoardEntry {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.ended.store(true, Ordering::Release);
            lock(shard_of(slot.id)).remove(&key(&slot));
        }
    }
}

impl<F: Future> Future for Traced<F> {
    type Output = F::Output;

    #[inline(never)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let state = this.state;
        let polled = match &state.slot {
            Some(slot) if slot.asked.load(Ordering::Relaxed) != state.seen => {
                state.seen = slot.asked.load(Ordering::Acquire);
                answer(slot, state.seen, this.future, cx)
            }
            _ => this.future.poll(cx),
        };
        if polled.is_pending() {
            state.parked(cx.waker(), std::any::type_name::<F>());
        }
        polled
    }
}

/// Clears [`CAPTURING`] however the capture poll ends (a panic included).
struct Capturing;

impl Capturing {
    fn start() -> Option<Self> {
        if CAPTURING.replace(true) {
            None
        } else {
            Some(Capturing)
        }
    }
}

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURING.set(false);
    }
}

/// Answers request `epoch`: polls `future` once inside a capture rooted here, deposits the raw
/// trace and returns the poll's result.
#[cold]
#[inline(never)]
fn answer<F: Future>(
    slot: &Slot,
    epoch: u64,
    mut future: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    let Some(capturing) = Capturing::start() else {
        slot.deposit(epoch, Answer::Nested);
        return future.poll(cx);
    };
    let root = Trace::root(std::future::poll_fn(|cx| {
        Poll::Ready(Trace::capture(|| future.as_mut().poll(cx)))
    }));
    let mut root = std::pin::pin!(root);
    let Poll::Ready((polled, trace)) = root.as_mut().poll(cx) else {
        unreachable!("the capture's poll_fn is always ready");
    };
    drop(capturing);
    slot.deposit(epoch, Answer::Traced(trace));
    if polled.is_pending() {
        // tokio's leaves deferred their own wakes; this one makes sure the task is polled again
        // normally wherever it runs (one extra poll per dump).
        cx.waker().wake_by_ref();
    }
    polled
}

#[cfg(test)]
mod tests;
