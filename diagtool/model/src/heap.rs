//! Heap profiles read by allocation site: the memory side of "live tasks by spawn site".
//!
//! The probe serves in-use memory as a pprof profile (`/debug/pprof/heap`) whose samples carry
//! [`INUSE_OBJECTS`] and [`INUSE_SPACE`] values and whose stacks run from the allocator up to
//! `main`. An operator wants to know *which line of the service* holds the memory, not that
//! `alloc::raw_vec` did the allocating, so a stack is attributed to its **allocation site**: the
//! innermost frame in the service's own code (see [`is_own_frame`]). Its whole stack stays
//! attached as detail. Both the probe's per-site metric and `diagtool watch --heap` group with
//! [`sites`], so the two never disagree on what a site is.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::pprof::Profile;

/// The sample type of in-use bytes in a heap profile (Go's name, which `go tool pprof` knows).
pub const INUSE_SPACE: &str = "inuse_space";
/// The sample type of in-use objects in a heap profile.
pub const INUSE_OBJECTS: &str = "inuse_objects";

/// The in-use memory attributed to one allocation site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapSite {
    /// `file:line` of the innermost own frame (files as the profile names them, shortened by the
    /// probe), or of the innermost frame outside the allocator when no frame is the service's.
    pub site: String,
    /// The function at the site.
    pub function: String,
    /// Bytes in use from this site (the profile's estimate, already scaled up from the samples).
    pub inuse_bytes: i64,
    /// Objects in use from this site.
    pub inuse_objects: i64,
    /// The heaviest stack through the site, **outermost first**, each `function at file:line`.
    pub stack: Vec<String>,
}

/// A profile that is not a heap profile.
#[derive(Debug, thiserror::Error)]
pub enum HeapError {
    /// A sample type the grouping needs is absent.
    #[error(
        "the profile has no {wanted:?} samples (it has: {found}); expected a heap profile from /debug/pprof/heap"
    )]
    MissingSampleType {
        /// The sample type looked for.
        wanted: &'static str,
        /// The sample types present, comma separated.
        found: String,
    },
}

/// One resolved frame of a stack.
#[derive(Debug, Clone)]
struct FrameRef<'a> {
    function: &'a str,
    file: Option<&'a str>,
    line: i64,
}

impl FrameRef<'_> {
    fn position(&self) -> String {
        match self.file {
            Some(file) if self.line > 0 => format!("{file}:{}", self.line),
            Some(file) => file.to_owned(),
            None => self.function.to_owned(),
        }
    }

    fn text(&self) -> String {
        match self.file {
            Some(_) => format!("{} at {}", self.function, self.position()),
            None => self.function.to_owned(),
        }
    }
}

/// The in-use memory of `profile` grouped by allocation site, largest first (ties by site).
///
/// # Errors
/// [`HeapError::MissingSampleType`] when the profile carries no [`INUSE_SPACE`] or
/// [`INUSE_OBJECTS`] values (a CPU profile, say).
///
/// # Examples
/// ```
/// use diagtool_model::heap::{INUSE_OBJECTS, INUSE_SPACE, sites};
/// use diagtool_model::pprof::{Frame, ProfileBuilder};
///
/// let mut builder = ProfileBuilder::new(&[(INUSE_OBJECTS, "count"), (INUSE_SPACE, "bytes")]);
/// builder.add(
///     &[
///         Frame::at("app::main", "app/src/main.rs", 3),
///         Frame::at("app::cache::fill", "app/src/cache.rs", 42),
///         Frame::at("alloc::raw_vec::finish_grow", "alloc/src/raw_vec.rs", 500),
///     ],
///     &[4, 4096],
/// );
/// let sites = sites(&builder.build()).unwrap();
/// assert_eq!(sites[0].site, "app/src/cache.rs:42");
/// assert_eq!(sites[0].inuse_bytes, 4096);
/// ```
pub fn sites(profile: &Profile) -> Result<Vec<HeapSite>, HeapError> {
    let space = value_index(profile, INUSE_SPACE)?;
    let objects = value_index(profile, INUSE_OBJECTS)?;
    let string = |index: i64| -> &str {
        usize::try_from(index)
            .ok()
            .and_then(|index| profile.string_table.get(index))
            .map_or("", String::as_str)
    };
    let functions: HashMap<u64, (&str, Option<&str>)> = profile
        .function
        .iter()
        .map(|function| {
            let file = Some(string(function.filename)).filter(|file| !file.is_empty());
            (function.id, (string(function.name), file))
        })
        .collect();
    let locations: HashMap<u64, &crate::pprof::Location> = profile
        .location
        .iter()
        .map(|location| (location.id, location))
        .collect();

    struct Acc {
        function: String,
        bytes: i64,
        objects: i64,
        heaviest: (i64, Vec<String>),
    }
    let mut by_site: HashMap<String, Acc> = HashMap::new();
    for sample in &profile.sample {
        let bytes = sample.value.get(space).copied().unwrap_or(0);
        let count = sample.value.get(objects).copied().unwrap_or(0);
        if bytes == 0 && count == 0 {
            continue;
        }
        // Innermost first: pprof lists a sample's locations leaf first, and a location's
        // lines innermost (inlined) first.
        let frames: Vec<FrameRef<'_>> = sample
            .location_id
            .iter()
            .filter_map(|id| locations.get(id))
            .flat_map(|location| location.line.iter())
            .map(|line| {
                let (function, file) = functions
                    .get(&line.function_id)
                    .copied()
                    .unwrap_or(("", None));
                FrameRef {
                    function,
                    file,
                    line: line.line,
                }
            })
            .collect();
        let chosen = frames
            .iter()
            .find(|frame| is_own_frame(frame.function, frame.file))
            .or_else(|| frames.iter().find(|frame| !is_allocator_frame(frame)))
            .or(frames.first());
        let (site, function) = match chosen {
            Some(frame) => (frame.position(), frame.function.to_owned()),
            None => ("(unknown)".to_owned(), "(unknown)".to_owned()),
        };
        let acc = by_site.entry(site).or_insert_with(|| Acc {
            function,
            bytes: 0,
            objects: 0,
            heaviest: (i64::MIN, Vec::new()),
        });
        acc.bytes += bytes;
        acc.objects += count;
        if bytes > acc.heaviest.0 {
            acc.heaviest = (bytes, frames.iter().rev().map(FrameRef::text).collect());
        }
    }
    let mut sites: Vec<HeapSite> = by_site
        .into_iter()
        .map(|(site, acc)| HeapSite {
            site,
            function: acc.function,
            inuse_bytes: acc.bytes,
            inuse_objects: acc.objects,
            stack: acc.heaviest.1,
        })
        .collect();
    sites.sort_by(|a, b| {
        b.inuse_bytes
            .cmp(&a.inuse_bytes)
            .then_with(|| a.site.cmp(&b.site))
    });
    Ok(sites)
}

fn value_index(profile: &Profile, wanted: &'static str) -> Result<usize, HeapError> {
    let name = |index: i64| {
        usize::try_from(index)
            .ok()
            .and_then(|index| profile.string_table.get(index))
            .map_or("", String::as_str)
    };
    profile
        .sample_type
        .iter()
        .position(|value_type| name(value_type.r#type) == wanted)
        .ok_or_else(|| HeapError::MissingSampleType {
            wanted,
            found: profile
                .sample_type
                .iter()
                .map(|value_type| name(value_type.r#type))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Function-name prefixes of the allocation machinery itself: never an allocation site.
const ALLOCATOR_PREFIXES: &[&str] = &[
    "alloc::",
    "<alloc::",
    "core::",
    "<core::",
    "std::alloc",
    "__rust_",
    // What `#[global_allocator]` expands to (`__rustc::__rust_alloc`), at the static's line.
    "__rustc::",
    "__rdl_",
    "__rg_",
    "_rjem_",
    "je_",
    "tikv_jemalloc",
    "hashbrown::raw",
    "<hashbrown::raw",
    "malloc",
    "calloc",
    "realloc",
];

fn is_allocator_frame(frame: &FrameRef<'_>) -> bool {
    frame.function.is_empty()
        || ALLOCATOR_PREFIXES
            .iter()
            .any(|prefix| frame.function.starts_with(prefix))
        || frame.file.is_some_and(is_std_path)
}

/// Whether a frame is in the service's own code: it has a source file, and that file is neither
/// Rust's standard library nor a dependency (as the probe shortens them: `std/src/...`,
/// `tokio-1.54.1/src/...`, or unshortened `/rustc/...` and `.cargo/registry` paths), and the
/// function is not part of the allocator.
///
/// # Examples
/// ```
/// use diagtool_model::heap::is_own_frame;
///
/// assert!(is_own_frame("shipper::leaklab::grow", Some("shipper/src/leaklab.rs")));
/// assert!(!is_own_frame("tokio::io::read", Some("tokio-1.54.1/src/io/read.rs")));
/// assert!(!is_own_frame("alloc::vec::Vec<T>::push", Some("alloc/src/vec/mod.rs")));
/// assert!(!is_own_frame("je_malloc", None));
/// ```
pub fn is_own_frame(function: &str, file: Option<&str>) -> bool {
    let Some(file) = file else {
        return false;
    };
    !file.is_empty()
        && !is_std_path(file)
        && !is_dependency_path(file)
        && !ALLOCATOR_PREFIXES
            .iter()
            .any(|prefix| function.starts_with(prefix))
}

/// The crates of Rust's own library, as `short_path` shortens `/rustc/<hash>/library/<crate>/src`.
const STD_CRATES: &[&str] = &["std", "core", "alloc", "proc_macro", "test", "panic_unwind"];

fn is_std_path(file: &str) -> bool {
    // glibc's debug info names its files relative to its build tree (`./csu/...`, `./nptl/...`).
    if file.starts_with("/rustc/") || file.contains("/rustlib/") || file.starts_with("./") {
        return true;
    }
    let mut parts = file.split('/');
    matches!(
        (parts.next(), parts.next()),
        (Some(krate), Some("src")) if STD_CRATES.contains(&krate)
    )
}

/// A path inside a registry or git dependency: unshortened, or shortened to `<crate>-<version>/`.
fn is_dependency_path(file: &str) -> bool {
    if file.contains("/.cargo/registry/") || file.contains("/.cargo/git/") {
        return true;
    }
    let first = file.split('/').next().unwrap_or("");
    // `name-1.2.3`: a dash followed by a digit, with a dot later (a version).
    first.char_indices().any(|(at, c)| {
        c == '-'
            && first[at + 1..].starts_with(|next: char| next.is_ascii_digit())
            && first[at + 1..].contains('.')
    })
}

#[cfg(test)]
#[path = "heap_tests.rs"]
mod tests;
