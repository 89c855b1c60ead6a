//! jemalloc as the process's allocator, with its sampling heap profiler on (feature
//! `heap-profiling`).
//!
//! Declared here, in the probe, rather than by a macro each binary calls: turning the feature on
//! is then the whole adoption, every binary and test that links the probe with it gets the same
//! allocator, and a host that declares its own `#[global_allocator]` learns it at link time
//! ("the global allocator is defined twice") instead of serving a silent 501.
//!
//! Profiling must be switched on before the first allocation, so the settings travel in
//! jemalloc's `malloc_conf` symbol (read at its initialisation, before `main`): `prof:true`,
//! sampling every 2^19 bytes, one arena. `_RJEM_MALLOC_CONF` in the environment is read after it and wins
//! (`prof:false` turns profiling off; `lg_prof_sample:N` changes the interval).

use std::ffi::{CString, c_char};

use super::heap::HeapError;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string pointer jemalloc reads once at start-up.
#[repr(transparent)]
pub(crate) struct Conf(*const c_char);

// SAFETY: it points to a static, immutable, NUL-terminated string.
unsafe impl Sync for Conf {}

/// jemalloc's compiled-in options (the prefixed build's name for `malloc_conf`). Strong, so it
/// wins over jemalloc's weak empty default. `narenas:1`: one arena instead of four per core,
/// since every arena keeps its own free pages: measured on the shipper (docs/benchmarks.md,
/// "Heap profiling cost"), it takes about 1.5 MiB off peak RSS at no CPU cost per line. A
/// service with many busy cores can raise it (`_RJEM_MALLOC_CONF=narenas:8`).
#[used]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub(crate) static MALLOC_CONF: Conf =
    Conf(c"prof:true,prof_active:true,lg_prof_sample:19,narenas:1".as_ptr());

/// The environment variable jemalloc reads its options from (prefixed build).
pub(crate) const JEMALLOC_ENV: &str = "_RJEM_MALLOC_CONF";

/// The sampling interval in bytes, when profiling is on and active.
pub(crate) fn active_sample_bytes() -> Result<u64, HeapError> {
    // Keeps the options symbol referenced, so no linker drops it from the archive.
    std::hint::black_box(&MALLOC_CONF);
    let read_bool = |name: &[u8]| {
        // SAFETY: the names are NUL-terminated jemalloc option names of type bool.
        unsafe { tikv_jemalloc_ctl::raw::read::<bool>(name) }
    };
    let env = std::env::var(JEMALLOC_ENV).unwrap_or_default();
    match read_bool(b"opt.prof\0") {
        Ok(true) => {}
        Ok(false) => {
            return Err(HeapError::Inactive(format!(
                "jemalloc's profiler is off in this process (opt.prof=false, {JEMALLOC_ENV}={env:?}): \
                 restart it without prof:false in {JEMALLOC_ENV} (prof:true is built in)"
            )));
        }
        Err(err) => return Err(HeapError::Inactive(format!("cannot read opt.prof: {err}"))),
    }
    match read_bool(b"prof.active\0") {
        Ok(true) => {}
        _ => {
            return Err(HeapError::Inactive(format!(
                "jemalloc's heap sampling is paused (prof.active=false, {JEMALLOC_ENV}={env:?}): \
                 restart without prof_active:false in {JEMALLOC_ENV}"
            )));
        }
    }
    // SAFETY: `prof.lg_sample` is a size_t.
    let lg = unsafe { tikv_jemalloc_ctl::raw::read::<usize>(b"prof.lg_sample\0") }
        .map_err(|err| HeapError::Dump(format!("cannot read prof.lg_sample: {err}")))?;
    Ok(1u64 << lg.min(63))
}

/// Restarts sampling at an interval of `2^lg` bytes (`prof.reset`): what was sampled so far is
/// dropped, so call it at start-up.
pub(crate) fn reset_sample_interval(lg: u32) -> Result<(), HeapError> {
    active_sample_bytes()?;
    // SAFETY: `prof.reset` takes a size_t, the new lg_sample.
    unsafe { tikv_jemalloc_ctl::raw::write::<usize>(b"prof.reset\0", lg as usize) }
        .map_err(|err| HeapError::Dump(format!("jemalloc refused prof.reset to 2^{lg}: {err}")))
}

/// Dumps the profile to a temporary file and returns its text (at most `limit` bytes read).
pub(crate) fn dump_text(limit: u64) -> Result<String, HeapError> {
    use std::io::Read as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "diagtool-heap-{}-{}.heap",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let c_path = CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| HeapError::Dump(format!("temporary path {path:?} holds a NUL byte")))?;
    // Removes the file however this ends.
    struct Remove<'a>(&'a std::path::Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _remove = Remove(&path);
    // SAFETY: `prof.dump` takes a `const char *` file name, valid for the call.
    unsafe { tikv_jemalloc_ctl::raw::write::<*const c_char>(b"prof.dump\0", c_path.as_ptr()) }
        .map_err(|err| {
            HeapError::Dump(format!(
                "jemalloc could not dump its profile to {}: {err}; check that the temporary \
                 directory (TMPDIR) is writable",
                path.display()
            ))
        })?;
    let file = std::fs::File::open(&path)
        .map_err(|err| HeapError::Dump(format!("cannot read {}: {err}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(|err| HeapError::Dump(format!("cannot read {}: {err}", path.display())))?;
    // ASCII but for thread names, which may hold anything.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
