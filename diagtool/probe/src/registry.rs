//! The task registry: live tasks grouped by spawn site, fed by tokio's runtime hooks.
//!
//! [`TaskRegistry::install`] puts two hooks on a `tokio::runtime::Builder`: `on_task_spawn` records
//! the task's id, spawn site (`TaskMeta::spawned_at()`), spawn time and optional name;
//! `on_task_terminate` forgets it. The registry is meant to stay on in production, so the hooks
//! are cheap:
//! - a site is interned once per registry (a `Site` with atomic counters, allocated once and never
//!   freed: site records are bounded by the spawn call sites in the binary), keyed by its formatted
//!   `path:line:col`: one source location can have several `Location` statics (generic
//!   instantiations, codegen units), and they all map to one record at first sight; each worker thread
//!   keeps a private cache from the `&'static Location` to its `&'static Site`, so the spawn path
//!   takes no shared lock and no reference count to find it, and a live entry points straight at
//!   its site so the terminate path needs no lookup at all;
//! - live tasks sit in [`SHARDS`] small maps sharded by task id, each behind its own mutex, so two
//!   workers rarely meet on one lock; entries hold no allocation unless the task has a name;
//! - spawn times come from the coarse monotonic clock (a few ns, millisecond resolution: ages are
//!   reported in seconds).
//!
//! Invariants: one site record per site string (so sums, sorting, metric labels and dump joins
//! never see a site twice); a terminate counts only for an id seen spawning (tokio also fires it for
//! `spawn_blocking` tasks and for its own workers at shutdown, which never fired spawn), so per
//! site `spawned - terminated` is exactly the number of live entries of that site.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::Id;

/// The number of shards of the live-task map.
pub const SHARDS: usize = 64;

/// Task ids and pointers are already well spread integers: the Fx hash (one multiply) suits them.
type FastMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// One spawn site's counters.
#[derive(Debug)]
struct Site {
    /// The formatted site (`path:line:col`, see [`format_site`]): the record's identity.
    text: Box<str>,
    spawned: AtomicU64,
    terminated: AtomicU64,
    /// Distinct names seen here, at most [`MAX_NAMES_PER_SITE`]; touched only by named spawns.
    names: Mutex<Vec<Cow<'static, str>>>,
}

/// How many distinct task names a site remembers (names are meant to be few per site).
pub const MAX_NAMES_PER_SITE: usize = 16;

impl Site {
    fn remember(&self, name: Cow<'static, str>) {
        let mut names = lock(&self.names);
        if names.len() < MAX_NAMES_PER_SITE && !names.contains(&name) {
            names.push(name);
        }
    }
}

/// A live task as the shard map keeps it.
#[derive(Debug)]
struct Entry {
    site: &'static Site,
    born_ns: u64,
    name: Option<Cow<'static, str>>,
}

#[derive(Debug)]
struct Inner {
    /// Distinguishes registries in the per-thread site caches.
    key: u64,
    started_ns: u64,
    /// Site records, allocated once per (registry, spawn site) and never freed, so entries and
    /// per-thread caches hold plain `&'static` references: no reference count on the hot path.
    /// They are bounded by the number of spawn call sites in the binary (about 100 bytes each).
    sites: Mutex<SiteTable>,
    shards: Box<[Mutex<FastMap<Id, Entry>>]>,
}

/// The interned sites: every `Location` address seen, and one record per site string.
#[derive(Debug, Default)]
struct SiteTable {
    by_location: FastMap<usize, &'static Site>,
    by_text: HashMap<Box<str>, &'static Site>,
}

impl SiteTable {
    fn all(&self) -> Vec<&'static Site> {
        self.by_text.values().copied().collect()
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
    /// This thread's view of one registry's sites: (registry key, location address -> site).
    static SITE_CACHE: RefCell<(u64, FastMap<usize, &'static Site>)> =
        RefCell::new((0, FastMap::default()));
    /// A name waiting for the next spawn on this thread (set by `spawn_named`).
    static PENDING_NAME: RefCell<Option<Cow<'static, str>>> = const { RefCell::new(None) };
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
}

/// Drops a name that no spawn consumed (the runtime had no registry).
pub(crate) fn clear_pending_name() {
    let _ = PENDING_NAME.try_with(|slot| slot.try_borrow_mut().map(|mut slot| slot.take()));
}

impl Default for TaskRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskRegistry {
    /// An empty registry, not yet fed by any runtime (see [`TaskRegistry::hook`]).
    pub fn new() -> Self {
        static NEXT_KEY: AtomicU64 = AtomicU64::new(1);
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(FastMap::default()))
            .collect();
        TaskRegistry {
            inner: Arc::new(Inner {
                key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
                started_ns: coarse_now_ns(),
                sites: Mutex::new(SiteTable::default()),
                shards,
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
        let on_spawn = Arc::clone(&self.inner);
        let on_terminate = Arc::clone(&self.inner);
        builder
            .on_task_spawn(move |meta| on_spawn.spawned(meta.id(), meta.spawned_at()))
            .on_task_terminate(move |meta| on_terminate.terminated(meta.id()))
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
        let site = {
            let mut shard = lock(self.inner.shard(id));
            match shard.get_mut(&id) {
                Some(entry) => {
                    entry.name = Some(name.clone());
                    entry.site
                }
                None => return,
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

    /// The counters of every site seen so far, in no particular order.
    pub fn sites(&self) -> Vec<SiteCounts> {
        let sites: Vec<&'static Site> = lock(&self.inner.sites).all();
        sites
            .iter()
            .map(|site| {
                // Terminated first: a task spawned and ended between the two loads then shows as
                // one more live task for an instant, never as a negative count.
                let terminated = site.terminated.load(Ordering::Acquire);
                let spawned = site.spawned.load(Ordering::Acquire);
                SiteCounts {
                    site: site.text.to_string(),
                    spawned: spawned.max(terminated),
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

    /// Every live task with its site, name and age. Locks one shard at a time, briefly.
    pub fn live_tasks(&self) -> Vec<LiveTask> {
        let now = coarse_now_ns();
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            let raw: Vec<(Id, &'static Site, u64, Option<String>)> = lock(shard)
                .iter()
                .map(|(id, entry)| {
                    (
                        *id,
                        entry.site,
                        entry.born_ns,
                        entry.name.as_deref().map(str::to_owned),
                    )
                })
                .collect();
            for (id, site, born_ns, name) in raw {
                let site = site.text.to_string();
                out.push(LiveTask {
                    id,
                    site,
                    name,
                    age_s: now.saturating_sub(born_ns) as f64 / 1e9,
                });
            }
        }
        out
    }

    /// Per site with live tasks, the ages of its live tasks: what a snapshot needs without a
    /// record per task (one spawn time per task is gathered per site, no string per task).
    /// Locks one shard at a time, briefly.
    pub fn site_ages(&self) -> Vec<SiteAges> {
        let now = coarse_now_ns();
        let mut by_site: FastMap<usize, (&'static Site, Vec<u64>, Vec<String>)> =
            FastMap::default();
        for shard in self.inner.shards.iter() {
            let shard = lock(shard);
            for entry in shard.values() {
                let slot = by_site
                    .entry(entry.site as *const Site as usize)
                    .or_insert_with(|| (entry.site, Vec::new(), Vec::new()));
                slot.1.push(entry.born_ns);
                if let Some(name) = &entry.name {
                    slot.2.push(name.to_string());
                }
            }
        }
        by_site
            .into_values()
            .map(|(site, mut born, live_names)| {
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
        let index = (rustc_hash::FxBuildHasher.hash_one(id) as usize) % SHARDS;
        &self.shards[index]
    }

    /// The site of `location`: from this thread's cache, else interned (first sight) under the
    /// registry-wide lock and then cached on this thread.
    fn site(&self, location: &'static Location<'static>) -> &'static Site {
        let address = location as *const Location<'static> as usize;
        // `try_with`: hooks also fire while a thread's locals are being destroyed.
        let cached = SITE_CACHE
            .try_with(|cache| {
                let cache = cache.try_borrow().ok()?;
                if cache.0 == self.key {
                    cache.1.get(&address).copied()
                } else {
                    None
                }
            })
            .ok()
            .flatten();
        if let Some(site) = cached {
            return site;
        }
        let site = self.intern(address, location);
        let _ = SITE_CACHE.try_with(|cache| {
            if let Ok(mut cache) = cache.try_borrow_mut() {
                if cache.0 != self.key {
                    *cache = (self.key, FastMap::default());
                }
                cache.1.insert(address, site);
            }
        });
        site
    }

    /// The site record of the `Location` static at `address`, interned by its formatted text
    /// under the registry-wide lock (the slow path, once per static per registry).
    fn intern(&self, address: usize, location: &'static Location<'static>) -> &'static Site {
        {
            let mut table = lock(&self.sites);
            let SiteTable {
                by_location,
                by_text,
            } = &mut *table;
            by_location.entry(address).or_insert_with(|| {
                // First sight of this static: another static may already name the same place.
                let text: Box<str> = format_site(location).into();
                by_text.entry(text.clone()).or_insert_with(|| {
                    Box::leak(Box::new(Site {
                        text,
                        spawned: AtomicU64::new(0),
                        terminated: AtomicU64::new(0),
                        names: Mutex::new(Vec::new()),
                    }))
                })
            })
        }
    }

    fn spawned(&self, id: Id, location: &'static Location<'static>) {
        let name = PENDING_NAME
            .try_with(|slot| slot.try_borrow_mut().ok().and_then(|mut slot| slot.take()))
            .ok()
            .flatten();
        let site = self.site(location);
        site.spawned.fetch_add(1, Ordering::AcqRel);
        if let Some(name) = &name {
            site.remember(name.clone());
        }
        let entry = Entry {
            site,
            born_ns: coarse_now_ns(),
            name,
        };
        lock(self.shard(id)).insert(id, entry);
    }

    fn terminated(&self, id: Id) {
        let removed = lock(self.shard(id)).remove(&id);
        if let Some(entry) = removed {
            entry.site.terminated.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// `path:line:col` of a spawn site, the path shortened by [`short_path`].
pub fn format_site(location: &Location<'_>) -> String {
    format!(
        "{}:{}:{}",
        short_path(location.file()),
        location.line(),
        location.column()
    )
}

/// Shortens a source path for display: a crate from a registry or a git checkout becomes
/// `crate-version/src/...`, the standard library `std/src/...` (from `/rustc/<hash>/library/`),
/// and a workspace path (already relative) stays as it is.
///
/// # Examples
/// ```
/// use diagtool_probe::short_path;
/// assert_eq!(
///     short_path("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tokio-1.54.1/src/task/spawn.rs"),
///     "tokio-1.54.1/src/task/spawn.rs"
/// );
/// assert_eq!(short_path("shipper/src/leaklab.rs"), "shipper/src/leaklab.rs");
/// ```
pub fn short_path(path: &str) -> Cow<'_, str> {
    // Normalise Windows separators only when needed.
    let unified: Cow<'_, str> = if path.contains('\\') {
        Cow::Owned(path.replace('\\', "/"))
    } else {
        Cow::Borrowed(path)
    };
    let shortened = if let Some(pos) = unified.find("/.cargo/registry/src/") {
        // <index-dir>/<crate-version>/...
        let rest = &unified[pos + "/.cargo/registry/src/".len()..];
        rest.split_once('/').map(|(_, tail)| tail.to_owned())
    } else if let Some(pos) = unified.find("/.cargo/git/checkouts/") {
        // <repo-hash>/<rev>/...
        let rest = &unified[pos + "/.cargo/git/checkouts/".len()..];
        rest.splitn(3, '/').nth(2).map(str::to_owned)
    } else if unified.starts_with("/rustc/") {
        unified
            .find("/library/")
            .map(|pos| unified[pos + "/library/".len()..].to_owned())
    } else {
        None
    };
    match (shortened, unified) {
        (Some(short), _) => Cow::Owned(short),
        (None, Cow::Owned(owned)) => Cow::Owned(owned),
        (None, Cow::Borrowed(_)) => Cow::Borrowed(path),
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
