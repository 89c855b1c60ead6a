//! One lane per thread: the live-task table its spawns fill and the counters of the tasks that
//! ended on it, each written by that thread alone.
//!
//! Why: the spawn hook runs on the critical path of every spawn (the spawning task waits for
//! it; a terminate runs where a worker has slack, issue 16 measured both), so it takes no locked
//! instruction and touches no line another core writes, but what it must: a thread's spawns go
//! to its own table ([`Slots`]), claimed with plain stores since no other thread claims there.
//! A terminate, on whatever thread the task ends, frees the slot with a plain store (only the
//! task's own terminate does) and counts the end in its own thread's counters: the spawn counts
//! nothing, a site's spawns are its ended tasks plus its live ones (`registry.rs`).
//!
//! A thread claims a lane of a registry at its first spawn or counted end there, reusing a lane
//! another thread gave up (when it exited or moved to another registry) or else adding one, up
//! to [`MAX_LANES`]. Ownership passes through the lane's `owned` flag (a release when given up,
//! an acquire when claimed), so the next owner continues the counts and claims only the slots
//! the tasks of the old owner have freed. Lanes are never removed: a table keeps its tasks, and
//! their terminates find them there.
//!
//! A terminate knows only its task's id, so it looks first in the lane where this thread's last
//! terminate found its task (a thread mostly ends tasks from the same few spawners), then in
//! every other lane with a table: one cache line each. A hint written by the spawn would save the
//! looks, but a line the spawn writes and another core reads stalls the spawn (measured: 2% of
//! a spawn+join on 2 workers). An id no lane holds (a `spawn_blocking` task, which fires no
//! spawn hook, or a task in the registry's overflow map) costs one look per lane with a table.

use std::cell::{Cell, RefCell};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::lock;
use super::slots::Slots;

/// Lanes per registry: threads past this many (that spawn or count at once) use the registry's
/// shared structures. A lane's index fits in a byte.
pub(crate) const MAX_LANES: usize = 255;

/// Counters per chunk: a lane allocates the chunks of the site indexes it counts (8 KiB each).
const CHUNK_SITES: usize = 1024;
/// Chunks per lane: sites past `CHUNKS * CHUNK_SITES` (65,536) count in a shared counter.
const CHUNKS: usize = 64;

/// Counters per cache line.
const PER_LINE: usize = 8;

/// One cache line of counters: no other allocation shares a line with them, so no other core's
/// writes make the owner's adds miss.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line([AtomicU64; PER_LINE]);

/// `CHUNK_SITES` counters.
type Chunk = Box<[Line]>;

/// One thread's share of a registry; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Lane {
    /// Whether a thread owns the lane (only the owner claims slots and writes counters).
    owned: AtomicBool,
    /// Tasks that ended on this lane's thread, by site index, in chunks made on first use.
    ended: Box<[OnceLock<Chunk>]>,
    /// The live tasks spawned on this lane's thread; made at its first spawn (a thread that
    /// only ends tasks needs none).
    slots: OnceLock<Slots>,
}

impl Lane {
    fn new() -> Self {
        Lane {
            owned: AtomicBool::new(true),
            ended: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            slots: OnceLock::new(),
        }
    }

    /// The lane's table, made if need be: for the owner only.
    pub(crate) fn own_slots(&self) -> &Slots {
        self.slots.get_or_init(Slots::new)
    }

    /// The lane's table, if it has one.
    pub(crate) fn slots(&self) -> Option<&Slots> {
        self.slots.get()
    }

    /// The ended counter of site `index`, made if need be (owner only); `None` past the chunks.
    fn own_counter(&self, index: usize) -> Option<&AtomicU64> {
        let chunk = self.ended.get(index / CHUNK_SITES)?.get_or_init(|| {
            (0..CHUNK_SITES / PER_LINE)
                .map(|_| Line::default())
                .collect()
        });
        let within = index % CHUNK_SITES;
        chunk.get(within / PER_LINE)?.0.get(within % PER_LINE)
    }

    /// The ended count of site `index` (0 for a chunk never made).
    fn ended(&self, index: usize) -> u64 {
        let within = index % CHUNK_SITES;
        self.ended
            .get(index / CHUNK_SITES)
            .and_then(OnceLock::get)
            .and_then(|chunk| chunk.get(within / PER_LINE))
            .and_then(|line| line.0.get(within % PER_LINE))
            .map_or(0, |counter| counter.load(Ordering::Acquire))
    }
}

/// Every lane of one registry, owned or given up; lock-free to read by index.
#[derive(Debug)]
pub(crate) struct Lanes {
    lanes: Box<[OnceLock<Arc<Lane>>]>,
    /// Lanes made so far (they fill `lanes` from the start).
    made: AtomicUsize,
    /// Serialises claims.
    claiming: Mutex<()>,
}

impl Default for Lanes {
    fn default() -> Self {
        Lanes {
            lanes: (0..MAX_LANES).map(|_| OnceLock::new()).collect(),
            made: AtomicUsize::new(0),
            claiming: Mutex::new(()),
        }
    }
}

impl Lanes {
    /// A lane for the calling thread: one given up before, else a new one; `None` when all
    /// [`MAX_LANES`] are owned.
    fn claim(&self) -> Option<(u8, Arc<Lane>)> {
        let _claiming = lock(&self.claiming);
        for (index, lane) in self.iter() {
            if lane
                .owned
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some((index, Arc::clone(lane)));
            }
        }
        let index = self.made.load(Ordering::Relaxed);
        let lane = Arc::new(Lane::new());
        self.lanes.get(index)?.set(Arc::clone(&lane)).ok()?;
        self.made.store(index + 1, Ordering::Release);
        Some((u8::try_from(index).ok()?, lane))
    }

    /// Every lane made so far, with its index.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u8, &Arc<Lane>)> {
        let made = self.made.load(Ordering::Acquire);
        self.lanes[..made.min(MAX_LANES)]
            .iter()
            .enumerate()
            .filter_map(|(index, lane)| Some((u8::try_from(index).ok()?, lane.get()?)))
    }

    /// The table of lane `index`, if that lane exists and has one.
    fn slots_of(&self, index: u8) -> Option<&Slots> {
        self.lanes.get(usize::from(index))?.get()?.slots()
    }

    /// Frees the slot of task `raw` (see [`Slots::remove`]) in whichever lane holds it; its meta,
    /// or `None` when no lane holds it. `key` is the registry's (for this thread's last find).
    pub(crate) fn remove(&self, key: u64, raw: NonZeroU64) -> Option<u64> {
        self.find(key, |slots| slots.remove(raw))
    }

    /// Marks task `raw` named (see [`Slots::mark_named`]), wherever it is.
    pub(crate) fn mark_named(&self, key: u64, raw: NonZeroU64) -> Option<u64> {
        self.find(key, |slots| slots.mark_named(raw))
    }

    /// Whether a lane holds task `raw`.
    pub(crate) fn contains(&self, key: u64, raw: NonZeroU64) -> bool {
        self.find(key, |slots| slots.contains(raw).then_some(0))
            .is_some()
    }

    /// `f` on the table of the lane of this thread's last find, then on every other lane's,
    /// until it returns `Some`.
    fn find(&self, key: u64, mut f: impl FnMut(&Slots) -> Option<u64>) -> Option<u64> {
        let last = LAST_FOUND
            .try_with(Cell::get)
            .ok()
            .and_then(|(last_key, index)| (last_key == key).then_some(index));
        if let Some(found) = last.and_then(|index| self.slots_of(index)).and_then(&mut f) {
            return Some(found);
        }
        let (index, found) = self
            .iter()
            .filter(|(index, _)| Some(*index) != last)
            .find_map(|(index, lane)| Some((index, lane.slots().and_then(&mut f)?)))?;
        let _ = LAST_FOUND.try_with(|last| last.set((key, index)));
        Some(found)
    }

    /// Calls `f(raw id, meta)` for every task in every lane's table (see [`Slots::for_each`]).
    pub(crate) fn for_each_task(&self, mut f: impl FnMut(NonZeroU64, u64)) {
        for (_, lane) in self.iter() {
            if let Some(slots) = lane.slots() {
                slots.for_each(&mut f);
            }
        }
    }

    /// Ended tasks counted in the lanes, by site index (the first `sites` indexes), read with
    /// acquire loads: a reader that sees a count sees its slot freed.
    pub(crate) fn ended_sums(&self, sites: usize) -> Vec<u64> {
        let mut sums = vec![0u64; sites];
        for (_, lane) in self.iter() {
            for (index, sum) in sums.iter_mut().enumerate() {
                *sum += lane.ended(index);
            }
        }
        sums
    }
}

/// A thread's hold on its lane: gives the lane up when dropped (thread exit, another registry).
struct Claim(Arc<Lane>);

impl Drop for Claim {
    fn drop(&mut self) {
        // Nothing may write through the fast pointer once the lane can have another owner.
        let _ = OWN.try_with(|own| own.set((0, std::ptr::null(), 0)));
        self.0.owned.store(false, Ordering::Release);
    }
}

thread_local! {
    /// The lane this thread owns: (registry key, lane, its index); key 0 when none. A plain
    /// `Cell` without a destructor, the cheapest thread-local to reach; `CLAIM` keeps the lane
    /// alive while this points at it.
    static OWN: Cell<(u64, *const Lane, u8)> = const { Cell::new((0, std::ptr::null(), 0)) };
    static CLAIM: RefCell<Option<Claim>> = const { RefCell::new(None) };
    /// (registry key, lane) where this thread's last terminate found its task.
    static LAST_FOUND: Cell<(u64, u8)> = const { Cell::new((0, 0)) };
}

/// This thread's lane in the registry `key` (whose lanes are `lanes`), claiming one at first
/// use; `None` when every lane was owned at that first use (the thread then uses the registry's
/// shared structures for good, rather than retrying under the claim lock at every hook) or the
/// thread's locals are being destroyed.
#[inline]
pub(crate) fn own_lane(key: u64, lanes: &Lanes) -> Option<(u8, &Lane)> {
    for _ in 0..2 {
        let (owner_key, lane, index) = OWN.try_with(Cell::get).unwrap_or((0, std::ptr::null(), 0));
        if owner_key == key {
            if lane.is_null() {
                return None;
            }
            // SAFETY: `lane` points into an `Arc<Lane>` that `lanes` holds for as long as it
            // lives (lanes are never removed), and it was claimed from the registry `key`,
            // whose lanes `lanes` are (keys are never reused). `CLAIM` holds it too.
            return Some((index, unsafe { &*lane }));
        }
        if !claim(key, lanes) {
            return None;
        }
    }
    None
}

/// Counts a task of site `index` that ended on this thread; false when the thread has no lane
/// or the site is past the lanes' counters (the caller counts it in the site's shared counter).
#[inline]
pub(crate) fn count_ended(key: u64, lanes: &Lanes, index: u32) -> bool {
    let Some((_, lane)) = own_lane(key, lanes) else {
        return false;
    };
    let Some(counter) = lane.own_counter(index as usize) else {
        return false;
    };
    // Only this thread writes this counter: no locked instruction needed. Release: a reader
    // that sees the count sees the task's slot freed (the store before).
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Release);
    true
}

/// Makes this thread the owner of a lane of the registry `key` (giving up the one it had);
/// false when none is free or the thread's locals are being destroyed.
#[cold]
fn claim(key: u64, lanes: &Lanes) -> bool {
    CLAIM
        .try_with(|claim| {
            let Ok(mut claim) = claim.try_borrow_mut() else {
                return false;
            };
            // Give the old lane up first: its `Drop` clears `OWN`.
            drop(claim.take());
            let Some((index, lane)) = lanes.claim() else {
                // Every lane is owned: remember it (see `own_lane`).
                let _ = OWN.try_with(|own| own.set((key, std::ptr::null(), 0)));
                return false;
            };
            let pointer: *const Lane = Arc::as_ptr(&lane);
            *claim = Some(Claim(lane));
            OWN.try_with(|own| own.set((key, pointer, index))).is_ok()
        })
        .unwrap_or(false)
}

const _: () = assert!(std::mem::size_of::<Line>() == PER_LINE * 8);
const _: () = assert!(CHUNK_SITES.is_multiple_of(PER_LINE));
const _: () = assert!(MAX_LANES <= u8::MAX as usize);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::slots::pack;
    use crate::registry::slots::tests::id;

    #[test]
    fn each_thread_counts_in_its_own_lane_and_the_sums_add_up() {
        let lanes = Lanes::default();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for n in 0..1000u32 {
                        assert!(count_ended(7, &lanes, n % 3));
                    }
                });
            }
        });
        assert!(lanes.iter().count() <= 4, "one lane per thread at once");
        assert_eq!(lanes.ended_sums(3), vec![4 * 334, 4 * 333, 4 * 333]);
    }

    #[test]
    fn a_lane_given_up_at_thread_exit_is_reused_with_its_counts_and_tasks() {
        let lanes = Lanes::default();
        for n in 1..=3u64 {
            // `join` waits for the thread's locals to be destroyed, so its lane is given up.
            std::thread::scope(|scope| {
                let _ = scope
                    .spawn(|| {
                        assert!(count_ended(9, &lanes, 5));
                        let (index, lane) = own_lane(9, &lanes).expect("a lane");
                        assert!(lane.own_slots().insert(id(n), pack(5, 0)));
                        assert_eq!(index, 0);
                    })
                    .join();
            });
        }
        assert_eq!(
            lanes.iter().count(),
            1,
            "the exited thread's lane was reused"
        );
        assert_eq!(lanes.ended_sums(6)[5], 3);
        let mut tasks = Vec::new();
        lanes.for_each_task(|raw, _| tasks.push(raw.get()));
        tasks.sort_unstable();
        assert_eq!(tasks, vec![1, 2, 3], "tasks of a given-up lane stay listed");
    }

    #[test]
    fn a_terminate_finds_its_task_in_any_lane() {
        let lanes = Lanes::default();
        // Two threads spawn in their own lanes.
        let ready = std::sync::Barrier::new(2);
        let taken: Vec<u8> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2u64)
                .map(|t| {
                    let (lanes, ready) = (&lanes, &ready);
                    scope.spawn(move || {
                        let (index, lane) = own_lane(3, lanes).expect("a lane");
                        for n in 0..10u64 {
                            let raw = id(1 + t * 100 + n);
                            assert!(lane.own_slots().insert(raw, pack(t as u32, 0)));
                        }
                        // Both threads hold a lane at once.
                        ready.wait();
                        index
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("thread"))
                .collect()
        });
        assert_eq!(taken.len(), 2);
        assert_ne!(taken[0], taken[1], "one lane each");
        // Found wherever it is, the last find's lane first or not.
        assert_eq!(lanes.remove(3, id(1)), Some(pack(0, 0)));
        assert_eq!(lanes.remove(3, id(103)), Some(pack(1, 0)));
        assert_eq!(lanes.remove(3, id(2)), Some(pack(0, 0)));
        assert!(lanes.contains(3, id(104)));
        assert_eq!(lanes.mark_named(3, id(105)), Some(pack(1, 0)));
        assert_eq!(lanes.remove(3, id(2)), None, "removed once");
        assert_eq!(lanes.remove(3, id(5000)), None, "never stored");
        let mut left = 0;
        lanes.for_each_task(|_, _| left += 1);
        assert_eq!(left, 17);
    }

    #[test]
    fn a_thread_past_the_last_lane_uses_the_shared_path_without_retrying() {
        let lanes = Lanes::default();
        let release = std::sync::Barrier::new(MAX_LANES + 1);
        std::thread::scope(|scope| {
            for _ in 0..MAX_LANES {
                let (lanes, release) = (&lanes, &release);
                scope.spawn(move || {
                    assert!(count_ended(4, lanes, 0));
                    release.wait();
                });
            }
            // Every lane is owned until the barrier: this thread gets none, and keeps none.
            let owned = || {
                lanes
                    .iter()
                    .filter(|(_, lane)| lane.owned.load(Ordering::Acquire))
                    .count()
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while owned() < MAX_LANES {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the lane owners never started"
                );
                std::thread::yield_now();
            }
            assert!(!count_ended(4, &lanes, 0), "no lane left");
            assert!(own_lane(4, &lanes).is_none());
            release.wait();
        });
        assert_eq!(lanes.iter().count(), MAX_LANES);
        assert_eq!(lanes.ended_sums(1)[0], MAX_LANES as u64);
        // Still none for this thread, though lanes are free now: it stays on the shared path.
        assert!(own_lane(4, &lanes).is_none());
    }

    #[test]
    fn switching_registries_gives_the_lane_up_and_far_sites_get_chunks() {
        let (a, b) = (Lanes::default(), Lanes::default());
        assert!(count_ended(1, &a, 0));
        assert!(count_ended(2, &b, 0));
        assert!(count_ended(1, &a, 0));
        assert_eq!(a.iter().count(), 1, "the lane given up was claimed again");
        assert_eq!((a.ended_sums(1)[0], b.ended_sums(1)[0]), (2, 1));
        let far = (CHUNKS * CHUNK_SITES - 1) as u32;
        assert!(count_ended(1, &a, far));
        assert_eq!(a.ended_sums(far as usize + 1)[far as usize], 1);
        assert!(
            !count_ended(1, &a, far + 1),
            "past the chunks: the caller's shared counter"
        );
    }
}
