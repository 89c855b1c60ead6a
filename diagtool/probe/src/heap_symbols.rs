//! Symbolises the return addresses of jemalloc's backtraces in-process, with the same symboliser
//! as CPU profiles (`backtrace`, DWARF line tables, inlined frames expanded), and cuts off the
//! allocator's own frames and Rust's allocation library (`alloc`, `core`) from the leaf end, so
//! each stack ends in the function that asked for memory.

use std::collections::HashMap;
use std::sync::Mutex;

use super::heap::HeapStack;
use super::heap_v2::RawStack;
use crate::pprof::Frame;

/// Resolved addresses kept between profiles: a service's allocation sites are few, and the
/// first resolution of an address is the expensive part. Cleared when it grows past this.
const CACHE_CAP: usize = 100_000;

static CACHE: Mutex<Option<HashMap<u64, Vec<Frame>>>> = Mutex::new(None);

/// Function-name prefixes of the allocator's entry points (Rust's shims and jemalloc's API):
/// everything from the outermost of them to the leaf is the allocator's own work, cut off.
const ALLOCATOR_ENTRY: &[&str] = &[
    "__rustc::",
    "__rust_alloc",
    "__rust_realloc",
    "__rdl_",
    "__rg_",
    "<tikv_jemallocator",
    "tikv_jemallocator",
    "_rjem_",
];

/// Frames of jemalloc's internals, cut off the leaf end when no entry point was resolved.
const ALLOCATOR_INTERNAL: &[&str] = &[
    "je_", "prof_", "imalloc", "ialloc", "irealloc", "irallocx", "ixalloc", "_Unwind_", "??",
];

/// Rust's allocation library: `Vec`, `Box`, `String` and friends growing or allocating. Cut off
/// the leaf end too, so the stack ends in the function that asked for memory: `go tool pprof
/// -top` then puts the bytes on that function (as Go's heap profiles do on the caller of the
/// allocator), not on `alloc::alloc::alloc`.
fn is_allocation_library(frame: &Frame) -> bool {
    let name = frame.function.as_str();
    ["alloc::", "<alloc::", "core::", "<core::"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        || frame
            .file
            .as_deref()
            .is_some_and(|file| file.starts_with("alloc/src/") || file.starts_with("core/src/"))
}

/// The frames at `address`, innermost (inlined callee) first.
fn resolve(address: u64) -> Vec<Frame> {
    let mut frames = Vec::new();
    backtrace::resolve(address as usize as *mut std::ffi::c_void, |symbol| {
        let name = symbol
            .name()
            .map_or_else(|| "??".to_owned(), |name| format!("{name:#}"));
        frames.push(match (symbol.filename(), symbol.lineno()) {
            (Some(file), Some(line)) => Frame::at(name, frame_path(&file.to_string_lossy()), line),
            _ => Frame::named(name),
        });
    });
    if frames.is_empty() {
        frames.push(Frame::named(format!("{address:#x}")));
    }
    frames
}

/// Debug info names files by absolute path: workspace files become relative to the workspace
/// this crate was built in (else to the current directory), as in task dumps, so a site reads
/// `shipper/src/leaklab.rs`; dependencies and std are shortened by [`crate::short_path`].
fn frame_path(path: &str) -> String {
    let short = super::registry::short_path(path);
    if !short.starts_with('/') {
        return short.into_owned();
    }
    // This crate lives at `diagtool/probe/` in its workspace.
    let build_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2);
    let cwd = std::env::current_dir().ok();
    for root in [build_root, cwd.as_deref()].into_iter().flatten() {
        if let Ok(rest) = std::path::Path::new(path).strip_prefix(root) {
            return rest.to_string_lossy().into_owned();
        }
    }
    short.into_owned()
}

fn starts_with_any(frame: &Frame, prefixes: &[&str]) -> bool {
    prefixes
        .iter()
        .any(|prefix| frame.function.starts_with(prefix))
        || frame.function.starts_with("0x")
}

/// How many frames, innermost first, belong to the allocator and Rust's allocation library.
fn machinery_depth(frames: &[Frame]) -> usize {
    let past_allocator = match frames
        .iter()
        .rposition(|frame| starts_with_any(frame, ALLOCATOR_ENTRY))
    {
        Some(entry) => entry + 1,
        None => frames
            .iter()
            .position(|frame| !starts_with_any(frame, ALLOCATOR_INTERNAL))
            .unwrap_or(0),
    };
    past_allocator
        + frames[past_allocator..]
            .iter()
            .take_while(|frame| is_allocation_library(frame))
            .count()
}

/// Symbolises `stacks` into root-first stacks, the allocator's frames cut off the leaf end.
pub(crate) fn symbolize(stacks: &[RawStack]) -> Vec<HeapStack> {
    let mut guard = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    if cache.len() > CACHE_CAP {
        cache.clear();
    }
    let resolved = stacks
        .iter()
        .map(|stack| {
            // Innermost first, as the dump lists them.
            let mut frames: Vec<Frame> = Vec::new();
            for &address in &stack.addresses {
                let resolved = cache.entry(address).or_insert_with(|| resolve(address));
                frames.extend(resolved.iter().cloned());
            }
            // A stack of nothing but machinery keeps its outermost frame.
            let cut = machinery_depth(&frames).min(frames.len().saturating_sub(1));
            let mut frames = frames.split_off(cut);
            frames.reverse();
            HeapStack {
                frames,
                objects: stack.objects,
                bytes: stack.bytes,
            }
        })
        .collect();
    // The symboliser keeps the binary's parsed debug info (tens of MiB, hundreds in a debug
    // build) until told otherwise: without this, the first profile would raise the service's
    // memory for good, and every later profile would show it. Resolved addresses stay cached
    // above, so a steady service rarely needs the debug info again.
    backtrace::clear_symbol_cache();
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn allocating_here() -> Vec<u8> {
        vec![1; 4096]
    }

    #[test]
    fn own_addresses_resolve_to_this_file_and_machinery_is_cut() {
        // A "return address" one byte into the function: it resolves to its first line.
        let address = allocating_here as fn() -> Vec<u8> as usize as u64 + 1;
        let stacks = symbolize(&[RawStack {
            addresses: vec![0x1, address],
            objects: 2,
            bytes: 4096,
        }]);
        let stack = &stacks[0];
        assert_eq!((stack.objects, stack.bytes), (2, 4096));
        assert_eq!(
            stack.frames.len(),
            1,
            "the unresolvable leaf is cut: {stack:?}"
        );
        let leaf = &stack.frames[0];
        // Demangled without the hash suffix.
        assert!(
            leaf.function
                .ends_with("heap_symbols::tests::allocating_here"),
            "{leaf:?}"
        );
        assert_eq!(
            leaf.file.as_deref(),
            Some("diagtool/probe/src/heap_symbols.rs")
        );
    }

    #[test]
    fn allocator_and_allocation_library_frames_are_cut_only_at_the_leaf() {
        let frames = vec![
            Frame::named("irallocx_prof"),
            Frame::named("_rjem_je_malloc_default"),
            Frame::at(
                "__rustc::__rust_alloc",
                "diagtool/probe/src/heap_jemalloc.rs",
                19,
            ),
            Frame::at("alloc::alloc::alloc", "alloc/src/alloc.rs", 94),
            Frame::at(
                "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
                "alloc/src/vec/spec_from_elem.rs",
                53,
            ),
            Frame::at("app::cache::fill", "app/src/cache.rs", 42),
            Frame::at(
                "<core::pin::Pin<P> as core::future::Future>::poll",
                "core/src/future/future.rs",
                133,
            ),
            Frame::at(
                "tokio::runtime::task::core::Core<T,S>::poll",
                "tokio-1.54.1/src/runtime/task/core.rs",
                380,
            ),
        ];
        assert_eq!(machinery_depth(&frames), 5);
        // No entry point resolved: jemalloc's internals by name, then the allocation library.
        assert_eq!(machinery_depth(&frames[..2]), 2);
        assert_eq!(machinery_depth(&frames[3..]), 2);
        assert_eq!(machinery_depth(&frames[5..]), 0);
    }
}
