//! Spawn sites of the registry: one record per `path:line:col`, with counters striped by thread.
//!
//! A site is interned once per registry (allocated once and never freed: records are bounded by
//! the spawn call sites in the binary), keyed by its formatted text: one source location can have
//! several `Location` statics (generic instantiations, codegen units), and they all map to one
//! record at first sight. Each thread keeps a private cache from the `&'static Location` to its
//! `&'static Site`, so the hooks take no shared lock and no reference count to find a site.
//!
//! A site's ended tasks are counted per thread (`registry_lanes.rs`); its spawned count is
//! derived by readers, and [`Site::reported_spawned`] keeps it from ever going back.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::Location;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{FastMap, lock};

/// How many distinct task names a site remembers (names are meant to be few per site).
pub const MAX_NAMES_PER_SITE: usize = 16;

/// One spawn site's counters. On cache lines of its own (see `Inner` in `registry.rs`).
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct Site {
    /// The formatted site (`path:line:col`, see [`format_site`]): the record's identity.
    pub(crate) text: Box<str>,
    /// Position in [`SiteTable::by_index`], packed into the live-task slots.
    pub(crate) index: u32,
    /// Ends no thread's lane took (see `registry_lanes.rs`).
    pub(crate) shared_ended: AtomicU64,
    /// The highest spawned count readers reported: a reader's figure may fall short of the
    /// truth, never exceed it, and must never go back.
    reported_spawned: AtomicU64,
    /// Distinct names seen here, at most [`MAX_NAMES_PER_SITE`]; touched only by named spawns.
    pub(crate) names: Mutex<Vec<Cow<'static, str>>>,
}

/// Entries of the per-thread first-level site cache (direct-mapped by location address).
const NEAR: usize = 16;

/// A first-level cache entry: (registry key, location address, site); key 0 is empty.
type NearEntry = Cell<(u64, usize, Option<&'static Site>)>;

thread_local! {
    /// First level of this thread's site cache: a const-initialised array without a destructor,
    /// the cheapest thread-local there is; a miss falls to `SITE_CACHE`.
    static NEAR_CACHE: [NearEntry; NEAR] = const { [const { Cell::new((0, 0, None)) }; NEAR] };
    /// Second level: this thread's view of one registry's sites (registry key, location address
    /// -> site).
    static SITE_CACHE: RefCell<(u64, FastMap<usize, &'static Site>)> =
        RefCell::new((0, FastMap::default()));
}

impl Site {
    fn new(text: Box<str>, index: u32) -> Self {
        Site {
            text,
            index,
            shared_ended: AtomicU64::new(0),
            reported_spawned: AtomicU64::new(0),
            names: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn remember(&self, name: Cow<'static, str>) {
        let mut names = lock(&self.names);
        if names.len() < MAX_NAMES_PER_SITE && !names.contains(&name) {
            names.push(name);
        }
    }

    /// (spawned, terminated) from the ended count (read first) and the live tasks a scan found
    /// after it: spawned is at most the truth (a task between its slot's release and its count
    /// is in neither), never less than reported before, never less than ended.
    pub(crate) fn counts(&self, ended: u64, live: u64) -> (u64, u64) {
        let derived = ended.saturating_add(live);
        let before = self.reported_spawned.fetch_max(derived, Ordering::Relaxed);
        (derived.max(before), ended)
    }
}

/// The interned sites: every `Location` address seen, one record per site string, and the
/// records by index (the live-task slots hold an index, not a pointer).
#[derive(Debug, Default)]
pub(crate) struct SiteTable {
    by_location: FastMap<usize, &'static Site>,
    by_text: HashMap<Box<str>, &'static Site>,
    pub(crate) by_index: Vec<&'static Site>,
}

impl SiteTable {
    pub(crate) fn all(&self) -> Vec<&'static Site> {
        self.by_index.clone()
    }

    /// The site record of the `Location` static at `address`, interned by its formatted text
    /// (the slow path, once per static per registry).
    pub(crate) fn intern(
        &mut self,
        address: usize,
        location: &'static Location<'static>,
    ) -> &'static Site {
        let SiteTable {
            by_location,
            by_text,
            by_index,
        } = self;
        by_location.entry(address).or_insert_with(|| {
            // First sight of this static: another static may already name the same place.
            let text: Box<str> = format_site(location).into();
            by_text.entry(text.clone()).or_insert_with(|| {
                let index = u32::try_from(by_index.len()).unwrap_or(u32::MAX);
                let site: &'static Site = Box::leak(Box::new(Site::new(text, index)));
                by_index.push(site);
                site
            })
        })
    }
}

/// The first-level slot of a location address (`Location`s are 8-aligned: skip those bits).
fn near_slot(address: usize) -> usize {
    (address >> 3) % NEAR
}

/// This thread's cached site for `location` in the registry `key`, if any.
pub(crate) fn cached(key: u64, location: &'static Location<'static>) -> Option<&'static Site> {
    let address = location as *const Location<'static> as usize;
    let near = NEAR_CACHE
        .try_with(|near| match near[near_slot(address)].get() {
            (k, a, site) if k == key && a == address => site,
            _ => None,
        })
        .ok()
        .flatten();
    if near.is_some() {
        return near;
    }
    // `try_with`: hooks also fire while a thread's locals are being destroyed.
    let site = SITE_CACHE
        .try_with(|cache| {
            let cache = cache.try_borrow().ok()?;
            if cache.0 == key {
                cache.1.get(&address).copied()
            } else {
                None
            }
        })
        .ok()
        .flatten();
    if let Some(site) = site {
        let _ =
            NEAR_CACHE.try_with(|near| near[near_slot(address)].set((key, address, Some(site))));
    }
    site
}

/// Caches `site` for `location` in the registry `key` on this thread.
pub(crate) fn cache(key: u64, location: &'static Location<'static>, site: &'static Site) {
    let address = location as *const Location<'static> as usize;
    let _ = NEAR_CACHE.try_with(|near| near[near_slot(address)].set((key, address, Some(site))));
    let _ = SITE_CACHE.try_with(|cache| {
        if let Ok(mut cache) = cache.try_borrow_mut() {
            if cache.0 != key {
                *cache = (key, FastMap::default());
            }
            cache.1.insert(address, site);
        }
    });
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
