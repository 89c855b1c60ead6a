//! The frames a global dump of a plain `tokio::spawn` task loses, found again from the code.
//!
//! tokio roots every spawned task's trace at its `Root::poll` (an `#[inline(never)]` function of
//! tokio's) and keeps only the frames strictly between the tokio leaf and that root
//! (`runtime/task/trace/trace_impl.rs`, tokio 1.54.1). In a release build the compiler inlines the
//! task's own future (the service's async fns and the line of their `.await`) into that very
//! `Root::poll`, so those frames are in the one frame tokio drops: the trace shows only tokio's
//! leaf (`oneshot.rs`). The probe's `Traced` wrapper avoids this by being a frame of its own;
//! plain tasks have none.
//!
//! What is left is enough to find the lost frame in the executable: the trace's outermost frame
//! is a function that the task's `Root::poll` called directly. So the executable's code is
//! searched (x86_64: `call rel32` instructions) for direct calls to that function from inside a
//! `Root::poll`; each such call's return address, resolved with its inlined frames, is a place a
//! task can be parked: the service's async fn and the line of its `.await`. When one place calls
//! that function, it is the task's; when several do, the ones in the task's spawn-site file are
//! kept; when several still remain, the dump names them all as candidates rather than guess.
//!
//! Cost: one read of the executable's mapped code (through `/proc/self/mem`, so an address that
//! is not mapped is an error, not a crash) and a byte scan per distinct callee, cached for the
//! life of the process (the code does not change). Measured on `examples/leaky-service` (4 MB of
//! code, release, a loaded machine): its first global dump took 0.2 s in all, symbol loading
//! included, and later ones about 2 ms until a new callee shows. It runs only for global dumps, on
//! the debug server's blocking thread, after the trace was taken.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// One symbol of a resolved address: its name, file and line (inlined frames innermost first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Symbol {
    pub(crate) name: String,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
}

/// One place in a `Root::poll` that calls the callee: the inlined frames at the call's return
/// address, innermost first (the last one is `Root::poll` itself).
pub(crate) type Place = Vec<Symbol>;

/// The demangled name (without hash) of tokio's task root.
const ROOT_POLL: &str =
    "<tokio::runtime::task::trace::Root<T> as core::future::future::Future>::poll";

/// Places found per callee address, for the life of the process.
static CACHE: LazyLock<Mutex<HashMap<usize, Arc<Vec<Place>>>>> = LazyLock::new(Mutex::default);

/// The places inside tokio task roots (`Root::poll`) that call the function at `callee`
/// directly. Empty where the search is not supported (not x86_64 Linux) or found nothing.
pub(crate) fn places(callee: usize) -> Arc<Vec<Place>> {
    if let Some(found) = CACHE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&callee)
    {
        return Arc::clone(found);
    }
    let found = Arc::new(search(callee));
    CACHE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(callee, Arc::clone(&found));
    found
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn search(callee: usize) -> Vec<Place> {
    let mut places = Vec::new();
    for (start, code) in code_of_object_holding(callee) {
        for ret in direct_calls(start, &code, callee) {
            let place = resolve(ret);
            if place.last().is_some_and(|root| root.name == ROOT_POLL) {
                places.push(place);
            }
        }
    }
    places
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn search(_callee: usize) -> Vec<Place> {
    Vec::new()
}

/// Return addresses of the `call rel32` (`E8`) instructions in `code` (mapped at `start`) whose
/// target is `callee`. A byte scan: a stray `E8` inside another instruction would also need its
/// next four bytes to point exactly at `callee`, and must then resolve into a `Root::poll`.
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code)
)]
fn direct_calls(start: usize, code: &[u8], callee: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for (at, window) in code.windows(5).enumerate() {
        if window[0] != 0xE8 {
            continue;
        }
        let rel = i32::from_le_bytes([window[1], window[2], window[3], window[4]]);
        let ret = start + at + 5;
        if ret.wrapping_add_signed(rel as isize) == callee {
            out.push(ret);
        }
    }
    out
}

/// The executable mappings (start, bytes) of the object file that holds `address`.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn code_of_object_holding(address: usize) -> Vec<(usize, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    // Each line: start-end perms offset dev inode [path].
    let mappings: Vec<(usize, usize, bool, &str)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let (range, perms) = (fields.next()?, fields.next()?);
            let path = fields.nth(3).unwrap_or("").trim();
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            Some((start, end, perms.contains('x'), path))
        })
        .collect();
    let Some(object) = mappings
        .iter()
        .find(|(start, end, exec, path)| {
            *exec && (*start..*end).contains(&address) && !path.is_empty()
        })
        .map(|m| m.3)
    else {
        return Vec::new();
    };
    let Ok(mem) = std::fs::File::open("/proc/self/mem") else {
        return Vec::new();
    };
    mappings
        .iter()
        .filter(|(_, _, exec, path)| *exec && *path == object)
        .filter_map(|&(start, end, _, _)| {
            let mut code = vec![0u8; end - start];
            mem.read_exact_at(&mut code, start as u64).ok()?;
            Some((start, code))
        })
        .collect()
}

/// The symbols (inlined frames innermost first) at return address `ret`.
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code)
)]
fn resolve(ret: usize) -> Place {
    let mut place = Vec::new();
    // `resolve` looks up `ret - 1`, inside the call instruction, as it does for a frame's ip.
    backtrace::resolve(ret as *mut std::ffi::c_void, |symbol| {
        let Some(name) = symbol.name() else {
            return;
        };
        let name = name.to_string();
        let name = super::dump_render::strip_hash(&name).to_owned();
        place.push(Symbol {
            name,
            file: symbol
                .filename()
                .map(|file| file.to_string_lossy().into_owned()),
            line: symbol.lineno(),
        });
    });
    place
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_calls_find_rel32_targets_only() {
        // At 0x1000: call +0 (to 0x1005), a stray E8 whose target is elsewhere, call back to 0x1000.
        let code = [
            0xE8, 0, 0, 0, 0, // call 0x1005
            0xE8, 1, 0, 0, 0, // call 0x100b
            0xE8, 0xF1, 0xFF, 0xFF, 0xFF, // call 0x1000 (ret 0x100f, rel -15)
        ];
        assert_eq!(direct_calls(0x1000, &code, 0x1005), vec![0x1005]);
        assert_eq!(direct_calls(0x1000, &code, 0x1000), vec![0x100f]);
        assert!(direct_calls(0x1000, &code, 0x2000).is_empty());
    }
}
