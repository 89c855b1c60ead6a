//! Heap profiles: which lines of the service hold the memory in use now, from jemalloc's sampling
//! profiler (cargo feature `heap-profiling`, see `heap_jemalloc.rs`).
//!
//! jemalloc samples one allocation every 512 KiB allocated, on average, and keeps the backtrace of
//! each sampled allocation until it is freed. A profile asks jemalloc to write what it holds
//! (`prof.dump`, the `heap_v2` text), scales the samples up to an estimate of all memory in use,
//! symbolises the addresses in-process (inlined frames expanded, names demangled, files shortened
//! as in CPU profiles) and hands out a pprof profile with `inuse_objects` and `inuse_space`, as
//! `go tool pprof` reads Go's `/debug/pprof/heap`.
//!
//! Where it runs: [`profile`] does its work on a blocking thread of the runtime that awaits it
//! (the debug server's own runtime, never the service's), one profile at a time in the process
//! ([`HeapError::Busy`] otherwise), and reads at most [`MAX_DUMP_BYTES`] of at most [`MAX_STACKS`]
//! backtraces. Without the feature every call answers [`HeapError::NotBuilt`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::heap::{HeapSite, INUSE_OBJECTS, INUSE_SPACE};
use crate::pprof::{Frame, ProfileBuilder};

/// Default sampling interval: one sample per 2^19 bytes (512 KiB) allocated, on average.
pub const DEFAULT_SAMPLE_BYTES: u64 = 1 << 19;
/// Environment variable for the sampling interval in bytes, a power of two (read by
/// [`crate::ProbeBuilder::with_default_env`]).
pub const ENV_HEAP_SAMPLE_BYTES: &str = "DIAGTOOL_PROBE_HEAP_SAMPLE_BYTES";
/// Most backtraces a profile keeps (the rest are counted in [`HeapProfile::truncated`]).
pub const MAX_STACKS: usize = 20_000;
/// Most bytes of jemalloc's dump read.
pub const MAX_DUMP_BYTES: u64 = 64 << 20;

/// Set while a heap profile is taken anywhere in this process.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Why a heap profile could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum HeapError {
    /// The probe was built without the `heap-profiling` feature.
    #[error(
        "heap profiling is not built in: rebuild the service with the cargo feature \
         `heap-profiling` of diagtool-probe (for the shipper: `--features heap-profiling`), which makes \
         jemalloc the allocator with its heap sampler on"
    )]
    NotBuilt,
    /// Built in, but jemalloc's profiler is off or paused in this process.
    #[error("heap profiling is built in but inactive: {0}")]
    Inactive(String),
    /// Another heap profile is being taken.
    #[error("a heap profile is already being taken; retry in a second")]
    Busy,
    /// jemalloc's dump could not be written, read or parsed.
    #[error("the heap profile could not be taken: {0}")]
    Dump(String),
    /// A sampling interval that is not a power of two in range.
    #[error(
        "heap sample interval {0} bytes is invalid: use a power of two from 1024 (1 KiB) to \
         1073741824 (1 GiB), such as 524288"
    )]
    BadSampleBytes(u64),
}

/// One stack of a heap profile, with what it holds in use.
#[derive(Debug, Clone, PartialEq)]
pub struct HeapStack {
    /// Frames, **root first**, down to the allocating call (the allocator's own frames cut off).
    pub frames: Vec<Frame>,
    /// Estimated objects in use.
    pub objects: i64,
    /// Estimated bytes in use.
    pub bytes: i64,
}

/// A heap profile: memory in use now, by stack.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeapProfile {
    /// Stacks with memory in use.
    pub stacks: Vec<HeapStack>,
    /// The sampling interval, in bytes.
    pub sample_bytes: u64,
    /// When it was taken, in nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// Backtraces left out past [`MAX_STACKS`].
    pub truncated: usize,
}

impl HeapProfile {
    /// Estimated bytes in use over every stack.
    pub fn inuse_bytes(&self) -> i64 {
        self.stacks.iter().map(|s| s.bytes).sum()
    }

    /// The profile in pprof form: sample types `inuse_objects/count` then `inuse_space/bytes`
    /// (the default shown), period `space/bytes` = the sampling interval.
    pub fn to_profile(&self) -> crate::pprof::Profile {
        self.builder().build()
    }

    /// [`HeapProfile::to_profile`] as a gzipped protobuf, as `go tool pprof` reads it.
    pub fn to_pprof(&self) -> Vec<u8> {
        self.builder().encode_gzip()
    }

    fn builder(&self) -> ProfileBuilder {
        let period = i64::try_from(self.sample_bytes).unwrap_or(i64::MAX);
        let mut builder = ProfileBuilder::new(&[(INUSE_OBJECTS, "count"), (INUSE_SPACE, "bytes")])
            .period("space", "bytes", period)
            .default_sample_type(INUSE_SPACE)
            .main_binary(&crate::pprof::current_binary())
            .timing(self.time_ns, 0);
        if self.truncated > 0 {
            builder = builder.comment(&format!(
                "{} backtraces left out past the cap of {MAX_STACKS}",
                self.truncated
            ));
        }
        for stack in &self.stacks {
            builder.add(&stack.frames, &[stack.objects, stack.bytes]);
        }
        builder
    }

    /// In-use memory by allocation site, largest first ([`crate::model::heap::sites`]).
    pub fn sites(&self) -> Vec<HeapSite> {
        crate::model::heap::sites(&self.to_profile()).unwrap_or_default()
    }

    /// The `?debug=1` text: a table by allocation site, largest first, each with its heaviest
    /// stack.
    pub fn to_text(&self) -> String {
        let sites = self.sites();
        let mut out = format!(
            "heap profile: {} in use, {} objects (estimated from samples every {}), {} stacks, {} allocation sites\n",
            human_bytes(self.inuse_bytes()),
            self.stacks.iter().map(|s| s.objects).sum::<i64>(),
            human_bytes(i64::try_from(self.sample_bytes).unwrap_or(i64::MAX)),
            self.stacks.len(),
            sites.len(),
        );
        if self.truncated > 0 {
            out.push_str(&format!(
                "({} backtraces left out past the cap of {MAX_STACKS})\n",
                self.truncated
            ));
        }
        out.push_str(
            "by allocation site (the innermost frame in the service's own code), largest first:\n",
        );
        for site in &sites {
            out.push_str(&format!(
                "\n{:>10} {:>8} objects  {}  {}\n",
                human_bytes(site.inuse_bytes),
                site.inuse_objects,
                site.site,
                site.function
            ));
            for frame in site.stack.iter().rev() {
                out.push_str(&format!("    {frame}\n"));
            }
        }
        out
    }

    /// The profile as an SVG flamegraph of bytes in use.
    pub fn to_flamegraph(&self, title: &str) -> Result<Vec<u8>, HeapError> {
        let mut folded = String::new();
        for stack in self.stacks.iter().filter(|s| s.bytes > 0) {
            let names: Vec<&str> = stack.frames.iter().map(|f| f.function.as_str()).collect();
            folded.push_str(&format!("{} {}\n", names.join(";"), stack.bytes));
        }
        let mut options = inferno::flamegraph::Options::default();
        options.title = title.to_owned();
        options.count_name = "bytes".to_owned();
        let mut svg = Vec::new();
        let lines = if folded.is_empty() {
            options.subtitle = Some("no sampled memory is in use".to_owned());
            "no-memory-sampled 1\n".to_owned()
        } else {
            folded
        };
        inferno::flamegraph::from_lines(&mut options, lines.lines(), &mut svg)
            .map_err(|err| HeapError::Dump(format!("the flamegraph could not be drawn: {err}")))?;
        Ok(svg)
    }
}

/// `12.3 MiB`.
pub(crate) fn human_bytes(bytes: i64) -> String {
    let value = bytes as f64;
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut scaled = value;
    let mut unit = 0;
    while scaled.abs() >= 1024.0 && unit < units.len() - 1 {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{scaled:.1} {}", units[unit])
    }
}

/// Whether heap profiling is built into this probe.
pub const fn is_built_in() -> bool {
    cfg!(feature = "heap-profiling")
}

/// The sampling interval in bytes when heap profiling is built in and active; otherwise why not.
pub fn sample_bytes() -> Result<u64, HeapError> {
    #[cfg(feature = "heap-profiling")]
    {
        super::heap_jemalloc::active_sample_bytes()
    }
    #[cfg(not(feature = "heap-profiling"))]
    {
        Err(HeapError::NotBuilt)
    }
}

/// Checks a sampling interval: a power of two from 1 KiB to 1 GiB.
pub fn check_sample_bytes(bytes: u64) -> Result<u32, HeapError> {
    if bytes.is_power_of_two() && (1 << 10..=1 << 30).contains(&bytes) {
        Ok(bytes.trailing_zeros())
    } else {
        Err(HeapError::BadSampleBytes(bytes))
    }
}

/// Sets the sampling interval (a power of two), restarting sampling: what was sampled before is
/// dropped, so a host calls it at start-up ([`crate::ProbeBuilder::heap_sample_bytes`] does).
/// Nothing changes when the interval is already the one asked.
pub fn set_sample_bytes(bytes: u64) -> Result<(), HeapError> {
    let lg = check_sample_bytes(bytes)?;
    if sample_bytes()? == bytes {
        return Ok(());
    }
    #[cfg(feature = "heap-profiling")]
    {
        super::heap_jemalloc::reset_sample_interval(lg)
    }
    #[cfg(not(feature = "heap-profiling"))]
    {
        let _ = lg;
        Err(HeapError::NotBuilt)
    }
}

/// Releases the process-wide slot when a profile ends, however it ends.
#[derive(Debug)]
struct Slot;

impl Slot {
    fn take() -> Result<Slot, HeapError> {
        RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| Slot)
            .map_err(|_| HeapError::Busy)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// Takes a heap profile on a blocking thread of the current runtime (one at a time in the
/// process: an overlapping call fails at once with [`HeapError::Busy`]).
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// match diagtool_probe::heap::profile().await {
///     Ok(profile) => std::fs::write("heap.pb.gz", profile.to_pprof()).unwrap(),
///     Err(err) => eprintln!("{err}"), // for example: not built in
/// }
/// # }
/// ```
pub async fn profile() -> Result<HeapProfile, HeapError> {
    sample_bytes()?;
    let slot = Slot::take()?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        take()
    })
    .await
    .map_err(|err| HeapError::Dump(format!("the profiling thread failed: {err}")))?
}

/// Takes a profile on the calling (blocking) thread, when no other is being taken.
pub(crate) fn take_blocking() -> Result<HeapProfile, HeapError> {
    let _slot = Slot::take()?;
    take()
}

/// Takes a profile on the calling thread, holding the slot already.
fn take() -> Result<HeapProfile, HeapError> {
    #[cfg(feature = "heap-profiling")]
    {
        let time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let text = super::heap_jemalloc::dump_text(MAX_DUMP_BYTES)?;
        let dump = super::heap_v2::parse(&text, MAX_STACKS)
            .map_err(|err| HeapError::Dump(err.to_string()))?;
        drop(text);
        let stacks = super::heap_symbols::symbolize(&dump.stacks);
        Ok(HeapProfile {
            stacks,
            sample_bytes: dump.sample_bytes,
            time_ns,
            truncated: dump.truncated,
        })
    }
    #[cfg(not(feature = "heap-profiling"))]
    {
        let _ = (SystemTime::now(), UNIX_EPOCH);
        Err(HeapError::NotBuilt)
    }
}

#[cfg(test)]
#[path = "heap_tests.rs"]
mod tests;
