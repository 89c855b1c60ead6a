//! Spawn counters by site, one set per thread: the spawn hook adds to its own thread's counter
//! with a plain load and store, and readers sum the sets.
//!
//! Why: a locked read-modify-write (`fetch_add`) on every spawn was the largest single cost of
//! the registry on a quiet runtime (issue 16 measured the hooks piece by piece). A counter that
//! only one thread ever writes needs no lock prefix and no cache line shared with other cores.
//!
//! A thread claims a set of a registry at its first spawn there, reusing a set another thread
//! gave up or else adding a new one, and gives it up when it exits or spawns on another registry.
//! The counts stay in the set, so the sums never lose a spawn. Only the owner writes a set; a set
//! changes hands through its `owned` flag (a release when given up, an acquire when claimed), so
//! its next owner continues from the last count. Sites past [`COUNTED_SITES`], and spawns while
//! the thread's locals are being destroyed, add to the site's shared counter with a `fetch_add`.
//!
//! Terminates are not counted at all: a site's terminated count is its spawns less its live
//! tasks, found by the readers' scan of the live-task table (`registry.rs`).

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::lock;

/// Sites whose spawns a thread counts in its own set (8 KiB per set); later sites share one
/// counter each.
pub(crate) const COUNTED_SITES: usize = 1024;

/// One thread's spawn counters for one registry, by site index.
#[derive(Debug)]
struct CounterSet {
    /// Whether a thread owns the set (only the owner writes its counters).
    owned: AtomicBool,
    /// `COUNTED_SITES` counters, in whole cache lines: no other allocation shares a line with
    /// them, so no other core's writes make the owner's adds miss.
    spawned: Box<[Line]>,
}

/// Counters per cache line.
const PER_LINE: usize = 8;

/// One cache line of counters.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line([AtomicU64; PER_LINE]);

impl CounterSet {
    /// The counter of site `index` (below `COUNTED_SITES`).
    fn counter(&self, index: usize) -> Option<&AtomicU64> {
        self.spawned.get(index / PER_LINE)?.0.get(index % PER_LINE)
    }
}

/// Every counter set of one registry, owned or given up.
#[derive(Debug, Default)]
pub(crate) struct CounterSets {
    sets: Mutex<Vec<Arc<CounterSet>>>,
}

impl CounterSets {
    /// A set for the calling thread: one given up before, else a new one.
    fn claim(&self) -> Arc<CounterSet> {
        let mut sets = lock(&self.sets);
        let free = sets.iter().find(|set| {
            set.owned
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        });
        if let Some(set) = free {
            return Arc::clone(set);
        }
        let set = Arc::new(CounterSet {
            owned: AtomicBool::new(true),
            spawned: (0..COUNTED_SITES / PER_LINE)
                .map(|_| Line::default())
                .collect(),
        });
        sets.push(Arc::clone(&set));
        set
    }

    /// Spawns counted in the threads' sets, by site index (the first `sites` indexes).
    pub(crate) fn sums(&self, sites: usize) -> Vec<u64> {
        let mut sums = vec![0u64; sites.min(COUNTED_SITES)];
        for set in lock(&self.sets).iter() {
            for (index, sum) in sums.iter_mut().enumerate() {
                *sum += set.counter(index).map_or(0, |c| c.load(Ordering::Relaxed));
            }
        }
        sums
    }
}

/// A thread's hold on its set: gives the set up when dropped (thread exit, another registry).
struct Claim(Arc<CounterSet>);

impl Drop for Claim {
    fn drop(&mut self) {
        // Nothing may write through the fast pointer once the set can have another owner.
        let _ = OWN.try_with(|own| own.set((0, std::ptr::null())));
        self.0.owned.store(false, Ordering::Release);
    }
}

thread_local! {
    /// The set this thread owns: (registry key, its first counter); key 0 when none. A plain
    /// `Cell` without a destructor, the cheapest thread-local to reach; `CLAIM` keeps the set
    /// alive while this points into it.
    static OWN: Cell<(u64, *const AtomicU64)> = const { Cell::new((0, std::ptr::null())) };
    static CLAIM: RefCell<Option<Claim>> = const { RefCell::new(None) };
}

/// Counts one spawn at site `index` of the registry `key`; `shared` is the site's own counter,
/// for spawns no thread set can take.
#[inline]
pub(crate) fn count_spawn(key: u64, sets: &CounterSets, index: u32, shared: &AtomicU64) {
    let index = index as usize;
    if index < COUNTED_SITES {
        for _ in 0..2 {
            let (owner_key, first) = OWN.try_with(Cell::get).unwrap_or((0, std::ptr::null()));
            if owner_key == key && !first.is_null() {
                // SAFETY: `first` points at the `COUNTED_SITES` contiguous counters of the set
                // this thread claimed in the registry `key` (`claim`); `CLAIM` holds it alive,
                // and `Claim::drop` clears `OWN` before the set is given up. `index` is in bounds.
                let counter = unsafe { &*first.add(index) };
                // Only this thread writes this counter: no locked instruction needed.
                counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                return;
            }
            if !claim(key, sets) {
                break;
            }
        }
    }
    shared.fetch_add(1, Ordering::Relaxed);
}

/// Makes this thread the owner of a set of the registry `key` (giving up the one it had);
/// false while the thread's locals are being destroyed.
#[cold]
fn claim(key: u64, sets: &CounterSets) -> bool {
    CLAIM
        .try_with(|claim| {
            let Ok(mut claim) = claim.try_borrow_mut() else {
                return false;
            };
            // Give the old set up first: its `Drop` clears `OWN`.
            drop(claim.take());
            let set = sets.claim();
            // The lines are contiguous and `Line` is exactly its counters (64 bytes, no padding),
            // so the counters form one array of `COUNTED_SITES`.
            let first = set.spawned.as_ptr().cast::<AtomicU64>();
            *claim = Some(Claim(set));
            OWN.try_with(|own| own.set((key, first))).is_ok()
        })
        .unwrap_or(false)
}

const _: () = assert!(std::mem::size_of::<Line>() == PER_LINE * 8);
const _: () = assert!(COUNTED_SITES.is_multiple_of(PER_LINE));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_counts_in_its_own_set_and_the_sums_add_up() {
        let sets = CounterSets::default();
        let shared = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for n in 0..1000u32 {
                        count_spawn(7, &sets, n % 3, &shared);
                    }
                });
            }
        });
        assert!(
            lock(&sets.sets).len() <= 4,
            "one set per thread at once at most"
        );
        assert_eq!(sets.sums(3), vec![4 * 334, 4 * 333, 4 * 333]);
        assert_eq!(shared.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_set_given_up_at_thread_exit_is_reused_with_its_counts() {
        let sets = CounterSets::default();
        let shared = AtomicU64::new(0);
        for _ in 0..3 {
            // `join` waits for the thread's locals to be destroyed, so its set is given up.
            std::thread::scope(|scope| {
                let _ = scope.spawn(|| count_spawn(9, &sets, 5, &shared)).join();
            });
        }
        assert_eq!(
            lock(&sets.sets).len(),
            1,
            "the exited thread's set was reused"
        );
        assert_eq!(sets.sums(6)[5], 3);
    }

    #[test]
    fn switching_registries_gives_the_set_up_and_late_sites_share_a_counter() {
        let (a, b) = (CounterSets::default(), CounterSets::default());
        let shared = AtomicU64::new(0);
        count_spawn(1, &a, 0, &shared);
        count_spawn(2, &b, 0, &shared);
        count_spawn(1, &a, 0, &shared);
        assert_eq!(lock(&a.sets).len(), 1, "the set given up was claimed again");
        assert_eq!((a.sums(1)[0], b.sums(1)[0]), (2, 1));
        count_spawn(1, &a, COUNTED_SITES as u32, &shared);
        assert_eq!(shared.load(Ordering::Relaxed), 1);
        assert_eq!(a.sums(COUNTED_SITES + 1).len(), COUNTED_SITES);
    }
}
