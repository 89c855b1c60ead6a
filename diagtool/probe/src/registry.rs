//! The task registry: live tasks grouped by spawn site, fed by tokio's runtime hooks.
//!
//! [`TaskRegistry::install`] puts two hooks on a `tokio::runtime::Builder`: `on_task_spawn` records
//! the task's id, spawn site (`TaskMeta::spawned_at()`), spawn time and optional name;
//! `on_task_terminate` forgets it. The registry is meant to stay on in production, so the hooks
//! cost a few nanoseconds and take no lock in the common case (issue 16 measured each piece):
//! - sites are interned once per registry and cached per thread (`registry_sites.rs`): the spawn
//!   hook finds its site's record from the `&'static Location` without a shared lock;
//! - each thread has a lane (`registry_lanes.rs`): a table of live tasks indexed by task id
//!   (`registry_slots.rs`) that only its spawns fill, and counters of the tasks that ended on
//!   it. A spawn writes its task's site index and spawn time into a free slot of its own table
//!   with plain stores and counts nothing; a terminate frees the slot with a plain store and
//!   counts the end in its own thread's counters: no locked instruction, no line shared with
//!   another core on the spawn's side (the one a spawning task waits for).
//!   Tasks named at spawn, and tasks whose bucket is held by long-lived tasks, go to an overflow
//!   map sharded by id ([`SHARDS`] mutexes); a terminate looks there only when it is not empty;
//! - spawn times come from the CPU's time-stamp counter where the kernel keeps time with it, else
//!   the coarse monotonic clock (`registry_clock.rs`; ages are reported in seconds, to the
//!   millisecond).
//!
//! Readers pay instead: a site's spawned count is its ended tasks plus its live tasks, counted by
//! a scan of the lanes' tables (8192 slots each, ~100 us) and the overflow map; every live task
//! keeps its id, site and spawn time, so [`TaskRegistry::live_tasks`] (the dumps' join from task
//! id to site, name and age, `LeakGuard`, `?debug=2`) and the exact oldest and median age per
//! site ([`TaskRegistry::site_ages`]) come from the same scan.
//!
//! Invariants: one site record per site string (so sums, sorting, metric labels and dump joins
//! never see a site twice); a terminate removes only a task seen spawning (tokio also fires it for
//! `spawn_blocking` tasks and for its own workers at shutdown, which never fired spawn); a task
//! never moves between the slots and the overflow map ([`TaskRegistry::set_name`] keeps a slot
//! task's name beside it), so a task alive throughout a read is never missed; a terminate frees
//! the slot before it counts the end, and readers read the counts before the slots, so no task is
//! counted both ended and live. A site's spawned count may fall short of the truth while hooks
//! run (a task between its slot's release and its count), never exceeds it, and never goes back.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::num::NonZeroU64;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::Id;

#[path = "registry_clock.rs"]
mod clock;
#[path = "registry_lanes.rs"]
mod lanes;
#[path = "registry_sites.rs"]
mod sites;
#[path = "registry_slots.rs"]
mod slots;

use clock::SpawnClock;
use lanes::{Lanes, count_ended, own_lane};
pub use sites::{MAX_NAMES_PER_SITE, format_site, short_path};
use sites::{Site, SiteTable};
use slots::{MAX_SITE_INDEX, NAMED, pack, unpack};

/// The number of shards of the overflow map (named tasks, and tasks whose slot bucket was full).
pub const SHARDS: usize = 64;

/// Task ids and pointers are already well spread integers: the Fx hash (one multiply) suits them.
type FastMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// A live task as the overflow map keeps it, or the name of a task kept in a slot.
#[derive(Debug)]
struct Entry {
    site: &'static Site,
    /// Spawn time, in ticks of the registry's clock.
    born: u64,
    name: Option<Cow<'static, str>>,
    /// Only a name: the task itself is in a slot, marked [`NAMED`](slots::NAMED), and counted
    /// there ([`TaskRegistry::set_name`]). Not counted in `overflowed`.
    in_slot: bool,
}

/// Aligned to a cache line, as the site records and lane counters are: the hooks read these
/// fields on every spawn, and a heap neighbour written by another core (a task, a runtime
/// structure) on the same line would make each read a miss. Without it the registry's cost on two
/// workers moved by 5-10% with the benchmark's command line alone (which shifts the heap layout).
#[derive(Debug)]
#[repr(align(64))]
struct Inner {
    /// Distinguishes registries in the per-thread site caches.
    key: u64,
    started_ns: u64,
    /// What the spawn hook reads for a task's spawn time.
    clock: SpawnClock,
    /// Site records, allocated once per (registry, spawn site) and never freed, so the hooks and
    /// per-thread caches hold plain `&'static` references: no reference count on the hot path.
    /// They are bounded by the number of spawn call sites in the binary (about 600 bytes each).
    sites: Mutex<SiteTable>,
    /// Most live tasks, and the ended counts: one lane per thread.
    lanes: Lanes,
    /// The other live tasks, sharded by id.
    shards: Box<[Mutex<FastMap<Id, Entry>>]>,
    /// Tasks in `shards` (not the names of slot tasks), raised before one is added: at 0 a
    /// terminate missing from the slots (a `spawn_blocking` task, a worker at shutdown) takes no
    /// lock.
    overflowed: AtomicUsize,
}

/// tokio's task id as the integer it wraps (tokio exposes it only through `Display`).
fn raw_id(id: Id) -> NonZeroU64 {
    // SAFETY: `Id` is a struct whose one field is a `NonZeroU64` (tokio 1.x); `transmute` checks
    // at compile time that the sizes match, so that field spans the whole value and the bytes
    // are the integer's. A test compares the result with `Display` for real ids.
    unsafe { std::mem::transmute::<Id, NonZeroU64>(id) }
}

/// The inverse of [`raw_id`], for ids that `raw_id` produced.
fn id_from_raw(raw: NonZeroU64) -> Id {
    // SAFETY: as in `raw_id`; every value passed here came out of `raw_id`, so it is a real
    // task's id (non-zero, as `Id` requires).
    unsafe { std::mem::transmute::<NonZeroU64, Id>(raw) }
}

/// The registry as a hook captures it, on a cache line of its own. tokio keeps a clone of the
/// terminate hook's `Arc` in every task, so the reference counts at the start of that allocation
/// change at every spawn and at every task's end, on every worker; a hook that read its registry
/// from the same line would wait for the line to come back from another core each time (measured
/// on 2 workers: 1.5% of the CPU of a spawn+join, as much as the rest of the hook).
#[repr(align(64))]
struct Hooked(Arc<Inner>);

impl Hooked {
    #[inline]
    fn inner(&self) -> &Inner {
        &self.0
    }
}

/// A cheap-clone handle on the live tasks of the runtimes it was installed on.
///
/// # Examples
/// ```
/// let mut builder = tokio::runtime::Builder::new_multi_thread();
/// let registry = diagtool_probe::TaskRegistry::install(&mut builder);
/// let runtime = builder.worker_threads(1).build().unwrap();
/// runtime.block_on(async {
///     tokio::spawn(std::future::pending::<()>());
/// });
/// assert_eq!(registry.totals().live, 1);
/// ```
#[derive(Debug, Clone)]
pub struct TaskRegistry {
    inner: Arc<Inner>,
}

/// The counters of one spawn site at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteCounts {
    /// `path:line:col`, shortened (see [`short_path`]).
    pub site: String,
    /// Tasks spawned here since the registry started.
    pub spawned: u64,
    /// Tasks from here that ended.
    pub terminated: u64,
}

impl SiteCounts {
    /// Tasks from this site alive now.
    pub fn live(&self) -> u64 {
        self.spawned.saturating_sub(self.terminated)
    }
}

/// One live task at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveTask {
    /// tokio's task id.
    pub id: Id,
    /// The spawn site, shortened.
    pub site: String,
    /// The task's name, when spawned through [`spawn_named`](super::spawn_named).
    pub name: Option<String>,
    /// Seconds since the task was spawned.
    pub age_s: f64,
}

/// The ages of one site's live tasks at one moment (see [`TaskRegistry::site_ages`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteAges {
    /// `path:line:col`, shortened.
    pub site: String,
    /// Live entries seen for this site.
    pub live: u64,
    /// Seconds since the oldest live task of this site was spawned.
    pub oldest_s: f64,
    /// Median of the live tasks' ages, in seconds (mean of the two middle ones for an even count).
    pub median_s: f64,
    /// Names set on live tasks of this site, unsorted, possibly repeated.
    pub live_names: Vec<String>,
}

/// Totals over all sites.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Tasks alive now.
    pub live: u64,
    /// Tasks spawned since the registry started.
    pub spawned: u64,
    /// Tasks that ended since the registry started.
    pub terminated: u64,
}

thread_local! {
    /// A name waiting for the next spawn on this thread (set by `spawn_named`).
    static PENDING_NAME: RefCell<Option<Cow<'static, str>>> = const { RefCell::new(None) };
    /// Whether `PENDING_NAME` may hold a name: a plain `Cell` without a destructor is cheaper to
    /// reach than the `RefCell`, and almost every spawn has no name.
    static NAME_PENDING: Cell<bool> = const { Cell::new(false) };
}

/// Takes the name set for this spawn, if any.
fn take_pending_name() -> Option<Cow<'static, str>> {
    if !NAME_PENDING.try_with(Cell::get).unwrap_or(true) {
        return None;
    }
    let _ = NAME_PENDING.try_with(|flag| flag.set(false));
    PENDING_NAME
        .try_with(|slot| slot.try_borrow_mut().ok().and_then(|mut slot| slot.take()))
        .ok()
        .flatten()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard lock leaves plain data behind; keep counting.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Nanoseconds on the coarse monotonic clock (resolution of a scheduler tick, a few ns to read).
pub(crate) fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE exists on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Names the next task spawned on this thread, if it is spawned on a runtime with a registry.
pub(crate) fn set_pending_name(name: Cow<'static, str>) {
    let _ = PENDING_NAME.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = Some(name);
        }
    });
    let _ = NAME_PENDING.try_with(|flag| flag.set(true));
}

/// Drops a name that no spawn consumed (the runtime had no registry).
pub(crate) fn clear_pending_name() {
    let _ = take_pending_name();
}

impl Default for TaskRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskRegistry {
    /// An empty registry, not yet fed by any runtime (see [`TaskRegistry::hook`]).
    pub fn new() -> Self {
        Self::with_clock(SpawnClock::new())
    }

    fn with_clock(clock: SpawnClock) -> Self {
        static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(FastMap::default()))
            .collect();
        TaskRegistry {
            inner: Arc::new(Inner {
                key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
                started_ns: coarse_now_ns(),
                clock,
                sites: Mutex::new(SiteTable::default()),
                lanes: Lanes::default(),
                shards,
                overflowed: AtomicUsize::new(0),
            }),
        }
    }

    /// Installs the hooks on `builder` and returns the registry they feed: the one-line setup.
    ///
    /// It replaces any `on_task_spawn`/`on_task_terminate` hook set on the builder before.
    pub fn install(builder: &mut tokio::runtime::Builder) -> TaskRegistry {
        let registry = TaskRegistry::new();
        registry.hook(builder);
        registry
    }

    /// Installs this registry's hooks on `builder` (several runtimes may feed one registry).
    pub fn hook<'b>(
        &self,
        builder: &'b mut tokio::runtime::Builder,
    ) -> &'b mut tokio::runtime::Builder {
        builder
            .on_task_spawn(self.spawn_hook())
            .on_task_terminate(self.terminate_hook())
    }

    /// The spawn hook. It captures the whole `Hooked` (its method takes it whole): a closure
    /// naming `hooked.0` would capture only the `Arc` (edition 2021 captures places) and lose the
    /// cache line of its own.
    fn spawn_hook(&self) -> impl Fn(&tokio::runtime::TaskMeta<'_>) + Send + Sync + 'static {
        let hooked = Hooked(Arc::clone(&self.inner));
        move |meta| hooked.inner().spawned(meta.id(), meta.spawned_at())
    }

    /// The terminate hook; captured whole, as [`TaskRegistry::spawn_hook`].
    fn terminate_hook(&self) -> impl Fn(&tokio::runtime::TaskMeta<'_>) + Send + Sync + 'static {
        let hooked = Hooked(Arc::clone(&self.inner));
        move |meta| hooked.inner().terminated(meta.id())
    }

    /// Records a spawn as the hook does (for tests and for runtimes built elsewhere).
    pub fn record_spawn(&self, id: Id, site: &'static Location<'static>) {
        self.inner.spawned(id, site);
    }

    /// Records a terminate as the hook does; an id never seen spawning is ignored.
    pub fn record_terminate(&self, id: Id) {
        self.inner.terminated(id);
    }

    /// Names a live task; does nothing when the task already ended or was never seen.
    pub fn set_name(&self, id: Id, name: impl Into<Cow<'static, str>>) {
        let name = name.into();
        let inner = &self.inner;
        let raw = raw_id(id);
        let site = {
            let mut shard = lock(inner.shard(id));
            if let Some(entry) = shard.get_mut(&id) {
                entry.name = Some(name.clone());
                entry.site
            } else {
                // A name does not fit in a slot: mark the slot and keep the name here. Only the
                // task's terminate frees its slot, so the task stays put.
                let Some(meta) = inner.lanes.mark_named(inner.key, raw) else {
                    return;
                };
                let (index, born) = unpack(meta);
                let Some(site) = inner.site_at(index) else {
                    return;
                };
                shard.insert(
                    id,
                    Entry {
                        site,
                        born,
                        name: Some(name.clone()),
                        in_slot: true,
                    },
                );
                // Ended meanwhile: its terminate may have missed the mark, so take the name
                // back (a miss the other way round is swept by readers, see `sweep`).
                if !inner.lanes.contains(inner.key, raw) {
                    shard.remove(&id);
                    return;
                }
                site
            }
        };
        site.remember(name);
    }

    /// The names each site remembers (see [`MAX_NAMES_PER_SITE`]), by shortened site.
    pub fn site_names(&self) -> Vec<(String, std::collections::BTreeSet<String>)> {
        let sites: Vec<&'static Site> = lock(&self.inner.sites).all();
        sites
            .iter()
            .filter_map(|site| {
                let names = lock(&site.names);
                (!names.is_empty()).then(|| {
                    (
                        site.text.to_string(),
                        names.iter().map(|n| n.to_string()).collect(),
                    )
                })
            })
            .collect()
    }

    /// The counters of every site seen so far, in no particular order: the ends counted, then
    /// a scan of the live tasks (see the module's invariants).
    pub fn sites(&self) -> Vec<SiteCounts> {
        let inner = &self.inner;
        let sites: Vec<&'static Site> = lock(&inner.sites).all();
        let own = inner.lanes.ended_sums(sites.len());
        let ended: Vec<u64> = sites
            .iter()
            .enumerate()
            .map(|(index, site)| {
                own.get(index).copied().unwrap_or(0) + site.shared_ended.load(Ordering::Acquire)
            })
            .collect();
        // The counts are read before any slot (see the module's invariants): without the fence a
        // weakly ordered CPU could read a slot before a counter, and count a task both live (its
        // slot read before its end) and ended.
        std::sync::atomic::fence(Ordering::Acquire);
        let mut live = vec![0u64; sites.len()];
        inner.lanes.for_each_task(|_, meta| {
            if let Some(count) = live.get_mut(unpack(meta).0 as usize) {
                *count += 1;
            }
        });
        for shard in inner.shards.iter() {
            let mut shard = lock(shard);
            inner.sweep(&mut shard);
            for entry in shard.values().filter(|entry| !entry.in_slot) {
                if let Some(count) = live.get_mut(entry.site.index as usize) {
                    *count += 1;
                }
            }
        }
        sites
            .iter()
            .zip(ended.into_iter().zip(live))
            .map(|(site, (ended, live))| {
                let (spawned, terminated) = site.counts(ended, live);
                SiteCounts {
                    site: site.text.to_string(),
                    spawned,
                    terminated,
                }
            })
            .collect()
    }

    /// Totals over every site.
    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for site in self.sites() {
            totals.live += site.live();
            totals.spawned += site.spawned;
            totals.terminated += site.terminated;
        }
        totals
    }

    /// Every live task with its site, name and age: a scan of the slots, then of the overflow
    /// map, one shard locked at a time, briefly.
    pub fn live_tasks(&self) -> Vec<LiveTask> {
        let clock = self.inner.clock.reading();
        let sites = lock(&self.inner.sites).all();
        let mut out = Vec::new();
        self.inner.lanes.for_each_task(|raw, meta| {
            let (index, born) = unpack(meta);
            if let Some(site) = sites.get(index as usize) {
                out.push(LiveTask {
                    id: id_from_raw(raw),
                    site: site.text.to_string(),
                    name: None,
                    age_s: clock.age_s(born),
                });
            }
        });
        // Where each slot task is in `out`, built at the first name of a slot task.
        let mut listed: Option<FastMap<Id, usize>> = None;
        for shard in self.inner.shards.iter() {
            let raw: Vec<(Id, &'static Site, u64, Option<String>, bool)> = {
                let mut shard = lock(shard);
                self.inner.sweep(&mut shard);
                shard
                    .iter()
                    .map(|(id, entry)| {
                        (
                            *id,
                            entry.site,
                            entry.born,
                            entry.name.as_deref().map(str::to_owned),
                            entry.in_slot,
                        )
                    })
                    .collect()
            };
            for (id, site, born, name, in_slot) in raw {
                if in_slot {
                    let listed = listed.get_or_insert_with(|| {
                        out.iter().enumerate().map(|(at, t)| (t.id, at)).collect()
                    });
                    if let Some(&at) = listed.get(&id) {
                        out[at].name = name;
                    }
                    continue;
                }
                let site = site.text.to_string();
                out.push(LiveTask {
                    id,
                    site,
                    name,
                    age_s: clock.age_s(born),
                });
            }
        }
        out
    }

    /// Per site with live tasks, the ages of its live tasks: what a snapshot needs without a
    /// record per task (one spawn time per task is gathered per site, no string per task).
    /// Exact to the clock's resolution (about a millisecond). Scans the slots, then the overflow
    /// map one shard at a time.
    pub fn site_ages(&self) -> Vec<SiteAges> {
        let clock = self.inner.clock.reading();
        let now = clock.now_ns;
        let sites = lock(&self.inner.sites).all();
        // Spawn times (ns since the registry's start) and live names, by site index.
        let mut by_site: Vec<(Vec<u64>, Vec<String>)> = vec![Default::default(); sites.len()];
        self.inner.lanes.for_each_task(|_, meta| {
            let (index, born) = unpack(meta);
            if let Some(slot) = by_site.get_mut(index as usize) {
                slot.0.push(clock.ns(born));
            }
        });
        for shard in self.inner.shards.iter() {
            let mut shard = lock(shard);
            self.inner.sweep(&mut shard);
            for entry in shard.values() {
                let index = entry.site.index as usize;
                if by_site.len() <= index {
                    // A site interned after the table was read: keep its tasks all the same.
                    by_site.resize_with(index + 1, Default::default);
                }
                let slot = &mut by_site[index];
                if !entry.in_slot {
                    // A slot task's spawn time came from its slot.
                    slot.0.push(clock.ns(entry.born));
                }
                if let Some(name) = &entry.name {
                    slot.1.push(name.to_string());
                }
            }
        }
        let sites = lock(&self.inner.sites).all();
        by_site
            .into_iter()
            .zip(sites)
            .filter(|((born, _), _)| !born.is_empty())
            .map(|((mut born, live_names), site)| {
                let age = |born_ns: f64| (now as f64 - born_ns).max(0.0) / 1e9;
                let oldest = born.iter().copied().min().unwrap_or(now);
                // Youngest-born first is oldest-age last: the median is the same either way.
                let mid = born.len() / 2;
                let even = born.len() % 2 == 0;
                let median_born = if born.is_empty() {
                    now as f64
                } else {
                    let (lower, upper, _) = born.select_nth_unstable(mid);
                    let upper = *upper as f64;
                    if even {
                        let below = lower.iter().copied().max().unwrap_or(0) as f64;
                        (below + upper) / 2.0
                    } else {
                        upper
                    }
                };
                SiteAges {
                    site: site.text.to_string(),
                    live: born.len() as u64,
                    oldest_s: age(oldest as f64),
                    median_s: age(median_born),
                    live_names,
                }
            })
            .collect()
    }

    /// Seconds since the registry was created.
    pub fn uptime_s(&self) -> f64 {
        coarse_now_ns().saturating_sub(self.inner.started_ns) as f64 / 1e9
    }
}

impl Inner {
    fn shard(&self, id: Id) -> &Mutex<FastMap<Id, Entry>> {
        use std::hash::BuildHasher as _;
        let index = (rustc_hash::FxBuildHasher.hash_one(id) as usize) % SHARDS;
        &self.shards[index]
    }

    /// The site of `location`: from this thread's cache, else interned (first sight) under the
    /// registry-wide lock and then cached on this thread.
    fn site(&self, location: &'static Location<'static>) -> &'static Site {
        if let Some(site) = sites::cached(self.key, location) {
            return site;
        }
        let site = self.intern(location as *const Location<'static> as usize, location);
        sites::cache(self.key, location, site);
        site
    }

    /// The site record of the `Location` static at `address` (the slow path).
    fn intern(&self, address: usize, location: &'static Location<'static>) -> &'static Site {
        lock(&self.sites).intern(address, location)
    }

    /// The site record with `index` (a slot's), under the registry-wide lock: not for the hooks.
    fn site_at(&self, index: u32) -> Option<&'static Site> {
        lock(&self.sites).by_index.get(index as usize).copied()
    }

    /// Adds a task to the overflow map.
    fn overflow(&self, id: Id, entry: Entry) {
        let mut shard = lock(self.shard(id));
        self.overflowed.fetch_add(1, Ordering::SeqCst);
        if shard.insert(id, entry).is_some_and(|old| !old.in_slot) {
            // The same id recorded twice (only `record_spawn` can): one entry, counted once.
            self.overflowed.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn spawned(&self, id: Id, location: &'static Location<'static>) {
        let name = take_pending_name();
        let site = self.site(location);
        let born = self.clock.now();
        if name.is_none()
            && site.index < MAX_SITE_INDEX
            && let Some((_, lane)) = own_lane(self.key, &self.lanes)
        {
            let raw = raw_id(id);
            if lane.own_slots().insert(raw, pack(site.index, born)) {
                return;
            }
        }
        if let Some(name) = &name {
            site.remember(name.clone());
        }
        self.overflow(
            id,
            Entry {
                site,
                born,
                name,
                in_slot: false,
            },
        );
    }

    /// Forgets a task: its slot (and the name `set_name` kept for it), else its overflow entry;
    /// then counts its end on this thread.
    fn terminated(&self, id: Id) {
        let raw = raw_id(id);
        if let Some(meta) = self.lanes.remove(self.key, raw) {
            if meta & NAMED != 0 {
                lock(self.shard(id)).remove(&id);
            }
            self.count_ended(unpack(meta).0, None);
            return;
        }
        // SeqCst pairs with `overflow`: an entry added before this task's end is counted here.
        if self.overflowed.load(Ordering::SeqCst) == 0 {
            return;
        }
        let site = {
            let mut shard = lock(self.shard(id));
            let Some(site) = shard
                .get(&id)
                .filter(|entry| !entry.in_slot)
                .map(|entry| entry.site)
            else {
                return;
            };
            shard.remove(&id);
            self.overflowed.fetch_sub(1, Ordering::SeqCst);
            site
        };
        self.count_ended(site.index, Some(site));
    }

    /// Counts an end at site `index` in this thread's lane, else in the site's shared counter.
    #[inline]
    fn count_ended(&self, index: u32, site: Option<&'static Site>) {
        if !count_ended(self.key, &self.lanes, index) {
            self.count_ended_shared(index, site);
        }
    }

    #[cold]
    fn count_ended_shared(&self, index: u32, site: Option<&'static Site>) {
        if let Some(site) = site.or_else(|| self.site_at(index)) {
            site.shared_ended.fetch_add(1, Ordering::Release);
        }
    }

    /// Drops the names kept for slot tasks that ended without their terminate seeing the mark
    /// (`set_name` marked the slot just as the task ended): readers call it on each shard they
    /// lock, so such names last until the next read at most.
    fn sweep(&self, shard: &mut FastMap<Id, Entry>) {
        shard.retain(|id, entry| {
            let raw = raw_id(*id);
            !entry.in_slot || self.lanes.contains(self.key, raw)
        });
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
