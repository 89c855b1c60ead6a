//! A live-task table: a fixed array of slots indexed by task id, one per lane (per thread,
//! `registry_lanes.rs`): only the lane's owner stores tasks in it, any thread frees them.
//!
//! tokio hands out task ids from one process-wide counter, so ids are unique for the life of the
//! process and consecutive spawns get consecutive ids. That makes a direct-mapped table the
//! cheapest live-task set there is: id `n` belongs to bucket `(n / WAYS) % BUCKETS`, a bucket is
//! one cache line of [`WAYS`] slots, and a slot is two words, the id and a packed `meta` (the
//! site's index and the spawn time). A spawn takes a free slot of its bucket with plain stores;
//! a terminate frees it with a plain store: no locked instruction, no hashing, no allocation.
//!
//! Why plain stores are enough: only the table's owner takes slots, so two spawns never race
//! for one; and only a task's own terminate frees its slot (ids never repeat, so a published
//! slot holding `id` is written by nobody else until that store), while the owner takes only a
//! free slot. A locked instruction waits for every miss before it, among them tokio's own on
//! the task's lines: on a 2-worker runtime a compare-and-swap at spawn cost about 1% of a
//! spawn+join, and one at terminate 8% (issue 16). Naming a task sets a bit in its meta
//! ([`Slots::mark_named`]) instead of moving it.
//!
//! A bucket whose ways are all held (by long-lived tasks whose ids share it) makes the spawn
//! fall back to the registry's locked overflow map; so do named tasks (a name does not fit in a
//! word). With a few hundred long-lived tasks nearly every short-lived task stays in the table;
//! a leak of tens of thousands of tasks fills it and the rest degrade to the overflow map's cost.
//!
//! Readers scan every slot as a sequence lock: id, meta, id again; a slot whose id changed in
//! between is skipped (the task ended, or a new one is being written). Ids never repeat, so a
//! reader can never take one task's meta for another's.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering, fence};

/// Slots per bucket: 4 x 16 bytes fill one 64-byte cache line.
pub(crate) const WAYS: usize = 4;
/// Buckets in the table (a power of two): 8192 slots, 128 KiB per registry.
pub(crate) const BUCKETS: usize = 2048;

/// Set in a slot's id word while a spawn writes its meta: readers skip the slot.
const WRITING: u64 = 1 << 63;

/// Bits of `meta` that hold the spawn time, in units of 2^20 ticks of the registry's clock
/// (`registry_clock.rs`, counted from the registry's start: TSC cycles, 2^20 of them 0.2-0.5 ms,
/// or nanoseconds, about 1.05 ms): 40 bits reach a decade or more. The site index takes the 23
/// bits above, and the top bit is [`NAMED`].
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const TICK_SHIFT: u32 = 20;
/// Set in `meta` when the task was named after its spawn: its name waits in the registry's
/// overflow map, and its terminate removes it from there.
pub(crate) const NAMED: u64 = 1 << 63;
/// Site indexes at or past this do not fit in `meta`: such tasks go to the overflow map.
pub(crate) const MAX_SITE_INDEX: u32 = 1 << (63 - TIME_BITS);

/// Packs a site index and a spawn time (clock ticks) into a slot's meta word.
pub(crate) fn pack(site_index: u32, born: u64) -> u64 {
    (u64::from(site_index) << TIME_BITS) | ((born >> TICK_SHIFT) & TIME_MASK)
}

/// The site index and the spawn time (clock ticks, rounded down to 2^20) of a meta word.
pub(crate) fn unpack(meta: u64) -> (u32, u64) {
    (
        ((meta & !NAMED) >> TIME_BITS) as u32,
        (meta & TIME_MASK) << TICK_SHIFT,
    )
}

#[derive(Debug, Default)]
struct Slot {
    /// The task's raw id; 0 when free; `id | WRITING` while claimed and not yet published.
    id: AtomicU64,
    meta: AtomicU64,
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Bucket {
    slots: [Slot; WAYS],
}

/// The table; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Slots {
    buckets: Box<[Bucket]>,
}

impl Slots {
    pub(crate) fn new() -> Self {
        Slots {
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
        }
    }

    fn bucket(&self, raw: u64) -> &Bucket {
        &self.buckets[(raw / WAYS as u64) as usize % BUCKETS]
    }

    /// Stores a live task; false when its bucket is full (the caller then uses the overflow map).
    /// Only the table's owner may call this (see the module's introduction).
    pub(crate) fn insert(&self, raw: NonZeroU64, meta: u64) -> bool {
        let raw = raw.get();
        let bucket = self.bucket(raw);
        let first = raw as usize % WAYS;
        for step in 0..WAYS {
            let slot = &bucket.slots[(first + step) % WAYS];
            if slot.id.load(Ordering::Acquire) == 0 {
                slot.id.store(raw | WRITING, Ordering::Relaxed);
                // Orders the claim before the meta store for readers (the sequence-lock fence).
                fence(Ordering::Release);
                slot.meta.store(meta, Ordering::Relaxed);
                slot.id.store(raw, Ordering::Release);
                return true;
            }
        }
        false
    }

    /// Frees the slot of a live task; its meta when it was here, `None` when it was not. Only
    /// the task's own terminate may call this (see the module's introduction).
    pub(crate) fn remove(&self, raw: NonZeroU64) -> Option<u64> {
        let slot = self.find(raw)?;
        let meta = slot.meta.load(Ordering::Relaxed);
        slot.id.store(0, Ordering::Release);
        Some(meta)
    }

    /// Whether a task is published in the table.
    pub(crate) fn contains(&self, raw: NonZeroU64) -> bool {
        self.find(raw).is_some()
    }

    /// Sets [`NAMED`] in the meta of a published task; its meta before, `None` when it is not
    /// here. Should the task end meanwhile and another take its slot, the bit lands on that
    /// one, which costs its terminate one look into the overflow map, nothing more.
    pub(crate) fn mark_named(&self, raw: NonZeroU64) -> Option<u64> {
        Some(self.find(raw)?.meta.fetch_or(NAMED, Ordering::SeqCst))
    }

    fn find(&self, raw: NonZeroU64) -> Option<&Slot> {
        let raw = raw.get();
        self.bucket(raw)
            .slots
            .iter()
            .find(|slot| slot.id.load(Ordering::Acquire) == raw)
    }

    /// Calls `f(raw id, meta)` for every task published in the table at the time its slot is read.
    pub(crate) fn for_each(&self, mut f: impl FnMut(NonZeroU64, u64)) {
        for bucket in self.buckets.iter() {
            for slot in &bucket.slots {
                let id = slot.id.load(Ordering::Acquire);
                if id == 0 || id & WRITING != 0 {
                    continue;
                }
                let meta = slot.meta.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if slot.id.load(Ordering::Relaxed) != id {
                    continue;
                }
                if let Some(id) = NonZeroU64::new(id) {
                    f(id, meta);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A raw task id for tests.
    pub(crate) fn id(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).expect("non-zero")
    }

    #[test]
    fn meta_round_trips_site_and_time_to_a_tick() {
        let born = 123_456_789_012_345;
        let (site, back) = unpack(pack(77, born));
        assert_eq!(site, 77);
        assert!(born - back < 1 << TICK_SHIFT, "{born} -> {back}");
        assert_eq!(unpack(pack(MAX_SITE_INDEX - 1, 0)).0, MAX_SITE_INDEX - 1);
        assert_eq!(
            unpack(pack(77, born) | NAMED),
            (77, back),
            "the name bit is not the site"
        );
    }

    #[test]
    fn insert_remove_and_scan() {
        let slots = Slots::new();
        for n in 1..=100 {
            assert!(slots.insert(id(n), pack(n as u32, 0)));
        }
        assert_eq!(slots.remove(id(50)), Some(pack(50, 0)));
        assert_eq!(slots.remove(id(50)), None, "a second remove finds nothing");
        assert_eq!(slots.remove(id(1000)), None, "an id never stored");
        let mut seen = Vec::new();
        slots.for_each(|raw, meta| seen.push((raw.get(), unpack(meta).0)));
        seen.sort_unstable();
        assert_eq!(seen.len(), 99);
        assert!(
            seen.iter()
                .all(|&(raw, site)| raw != 50 && raw as u32 == site)
        );
    }

    #[test]
    fn a_full_bucket_refuses_and_a_freed_way_is_reused() {
        let slots = Slots::new();
        let stride = (WAYS * BUCKETS) as u64;
        // Ids one table apart share a bucket: WAYS of them fill it.
        for k in 0..WAYS as u64 {
            assert!(slots.insert(id(7 + k * stride), 0));
        }
        assert!(
            !slots.insert(id(7 + WAYS as u64 * stride), 0),
            "bucket full"
        );
        assert!(slots.remove(id(7 + stride)).is_some());
        assert!(slots.insert(id(7 + WAYS as u64 * stride), 0), "way reused");
    }

    #[test]
    fn removes_on_other_threads_free_slots_the_owner_takes_again() {
        let slots = Slots::new();
        let (sender, receiver) = std::sync::mpsc::channel::<NonZeroU64>();
        // One owner stores 3 tables' worth of ids (each way is taken three times); three other
        // threads free three in four of them as they come, as terminates on other workers do
        // (the survivors, one per 4 ids of a bucket, hold 3 of its 4 ways in the end).
        let receiver = std::sync::Mutex::new(receiver);
        let total = 3 * (WAYS * BUCKETS) as u64;
        let stored = std::thread::scope(|scope| {
            for _ in 0..3 {
                let (slots, receiver) = (&slots, &receiver);
                scope.spawn(move || {
                    loop {
                        let next = receiver.lock().expect("receiver").recv();
                        let Ok(raw) = next else { break };
                        assert!(slots.remove(raw).is_some(), "{raw} was stored");
                    }
                });
            }
            let mut stored = 0u64;
            for n in 1..=total {
                // Wait, bounded, for the removers when a bucket is still full.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while !slots.insert(id(n), pack(0, n)) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "bucket of {n} never freed"
                    );
                    std::thread::yield_now();
                }
                stored += 1;
                if n % 4 != 0 {
                    sender.send(id(n)).expect("removers");
                }
            }
            drop(sender);
            stored
        });
        assert_eq!(stored, total);
        let mut count = 0;
        slots.for_each(|raw, meta| {
            assert_eq!(raw.get() % 4, 0, "{raw} should have been removed");
            assert_eq!(unpack(meta).1 >> TICK_SHIFT, raw.get() >> TICK_SHIFT);
            count += 1;
        });
        assert_eq!(count, total / 4);
    }
}
