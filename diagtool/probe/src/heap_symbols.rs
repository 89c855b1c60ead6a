//! Symbolises the return addresses of jemalloc's backtraces in-process, with the same symboliser
//! as CPU profiles (`backtrace`, DWARF line tables, inlined frames expanded), and cuts off the
//! allocator's own frames so each stack ends at the call that allocated.

use std::collections::HashMap;
use std::sync::Mutex;

use super::heap::HeapStack;
use super::heap_v2::RawStack;
use crate::pprof::Frame;

/// Resolved addresses kept between profiles: a service's allocation sites are few, and the
/// first resolution of an address is the expensive part. Cleared when it grows past this.
const CACHE_CAP: usize = 100_000;

static CACHE: Mutex<Option<HashMap<u64, Vec<Frame>>>> = Mutex::new(None);

/// Function-name prefixes of jemalloc and of Rust's allocator shims: frames above the allocating
/// call, cut off the leaf end of every stack.
const MACHINERY: &[&str] = &[
    "_rjem_",
    "je_",
    "prof_",
    "imalloc",
    "ialloc",
    "irealloc",
    "tikv_jemalloc",
    "<tikv_jemallocator",
    "__rustc::",
    "__rust_alloc",
    "__rust_realloc",
    "__rust_alloc_zeroed",
    "__rdl_",
    "__rg_",
    "_Unwind_Backtrace",
    "??",
];

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

fn is_machinery(frame: &Frame) -> bool {
    MACHINERY
        .iter()
        .any(|prefix| frame.function.starts_with(prefix))
        || frame.function.starts_with("0x")
}

/// Symbolises `stacks` into root-first stacks, the allocator's frames cut off the leaf end.
pub(crate) fn symbolize(stacks: &[RawStack]) -> Vec<HeapStack> {
    let mut guard = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    if cache.len() > CACHE_CAP {
        cache.clear();
    }
    stacks
        .iter()
        .map(|stack| {
            // Innermost first, as the dump lists them.
            let mut frames: Vec<Frame> = Vec::new();
            for &address in &stack.addresses {
                let resolved = cache.entry(address).or_insert_with(|| resolve(address));
                frames.extend(resolved.iter().cloned());
            }
            let cut = frames
                .iter()
                .position(|frame| !is_machinery(frame))
                .unwrap_or(0);
            let mut frames = frames.split_off(cut);
            frames.reverse();
            HeapStack {
                frames,
                objects: stack.objects,
                bytes: stack.bytes,
            }
        })
        .collect()
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
}
