//! CPU profiles: sample the whole process at ~99 Hz for N seconds with the `pprof` crate, then
//! hand out a gzipped pprof protobuf (for `go tool pprof`) or an SVG flamegraph (inferno).
//!
//! The sampler is process-wide (a `SIGPROF` timer), so only one profile can run at a time in the
//! whole process, whatever the number of probes: a second request gets [`CpuError::Busy`] (HTTP
//! 409). Sampling runs on a blocking thread, so the runtime being profiled stays free.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::pprof::{Frame, ProfileBuilder};

/// Default sampling frequency, in Hz (off the round 100 so samples do not beat with periodic work).
pub const DEFAULT_FREQUENCY_HZ: i32 = 99;
/// Default profile length.
pub const DEFAULT_SECONDS: u64 = 30;
/// Longest profile accepted.
pub const MAX_SECONDS: u64 = 60;

/// Frames from these libraries are sampling machinery, not the profiled program.
const BLOCKLIST: &[&str] = &["libc", "libgcc", "pthread", "vdso"];

/// Set while a profile runs anywhere in this process.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Why a profile could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// Another profile is running (the sampler is process-wide).
    #[error("a CPU profile is already running; wait for it to finish and retry")]
    Busy,
    /// The requested length is out of range.
    #[error("seconds={0} is out of range: use 1 to {MAX_SECONDS}")]
    BadSeconds(u64),
    /// The sampler failed to start or to report.
    #[error("the CPU profiler failed: {0}")]
    Profiler(String),
    /// The flamegraph could not be drawn (for example: no sample was taken).
    #[error("the flamegraph could not be drawn: {0}")]
    Flamegraph(String),
}

/// A finished CPU profile: stacks root first with their sample counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuProfile {
    /// Distinct stacks, root first, with how many samples hit each.
    pub stacks: Vec<(Vec<Frame>, u64)>,
    /// Sampling frequency, in Hz.
    pub frequency_hz: i32,
    /// When sampling started, in nanoseconds since the Unix epoch.
    pub started_ns: i64,
    /// How long sampling lasted.
    pub duration: Duration,
}

impl CpuProfile {
    /// Total samples taken.
    pub fn samples(&self) -> u64 {
        self.stacks.iter().map(|(_, n)| n).sum()
    }

    /// The sampling period, in nanoseconds.
    pub fn period_ns(&self) -> i64 {
        1_000_000_000 / i64::from(self.frequency_hz.max(1))
    }

    /// The profile as a gzipped pprof protobuf with `samples/count` and `cpu/nanoseconds`, as
    /// `go tool pprof` reads it.
    pub fn to_pprof(&self) -> Vec<u8> {
        let period = self.period_ns();
        let mut builder = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")])
            .period("cpu", "nanoseconds", period)
            .main_binary(&crate::pprof::current_binary())
            .timing(
                self.started_ns,
                i64::try_from(self.duration.as_nanos()).unwrap_or(i64::MAX),
            );
        for (stack, count) in &self.stacks {
            let count = i64::try_from(*count).unwrap_or(i64::MAX);
            builder.add(stack, &[count, count.saturating_mul(period)]);
        }
        builder.encode_gzip()
    }

    /// The profile as inferno's folded lines (`root;...;leaf COUNT`).
    pub fn to_folded(&self) -> String {
        let profile = crate::pprof::decode(&self.to_pprof()).unwrap_or_default();
        crate::pprof::to_folded(&profile)
    }

    /// The profile as an SVG flamegraph.
    pub fn to_flamegraph(&self, title: &str) -> Result<Vec<u8>, CpuError> {
        flamegraph(&self.to_folded(), title)
    }
}

/// Draws folded lines as an SVG flamegraph; with no line at all, an SVG saying so (inferno
/// refuses empty input, and an idle process gives none).
pub fn flamegraph(folded: &str, title: &str) -> Result<Vec<u8>, CpuError> {
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_owned();
    options.count_name = "samples".to_owned();
    let mut svg = Vec::new();
    if folded.trim().is_empty() {
        let empty = "no-samples-taken 1\n";
        options.subtitle = Some("no CPU sample was taken: the process was idle".to_owned());
        inferno::flamegraph::from_lines(&mut options, empty.lines(), &mut svg)
    } else {
        inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut svg)
    }
    .map_err(|err| CpuError::Flamegraph(err.to_string()))?;
    Ok(svg)
}

/// Releases the process-wide slot when a profile ends, however it ends.
#[derive(Debug)]
struct Slot;

impl Slot {
    fn take() -> Result<Slot, CpuError> {
        RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| Slot)
            .map_err(|_| CpuError::Busy)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// Whether a profile is running in this process.
pub fn is_running() -> bool {
    RUNNING.load(Ordering::Acquire)
}

/// Profiles the process for `seconds` (1 to [`MAX_SECONDS`]) at `frequency_hz`. The slot is taken
/// before anything else, so an overlapping call fails at once with [`CpuError::Busy`]; sampling
/// itself waits on a blocking thread. When `stop` fires (the host shuts down), sampling ends early
/// and the profile covers the time sampled so far, so a profile never holds up a shutdown.
///
/// # Examples
/// ```no_run
/// # #[tokio::main]
/// # async fn main() {
/// let stop = tokio_util::sync::CancellationToken::new();
/// let profile = diagtool_probe::cpu::profile(1, 99, stop).await.unwrap();
/// std::fs::write("cpu.pb.gz", profile.to_pprof()).unwrap();
/// # }
/// ```
pub async fn profile(
    seconds: u64,
    frequency_hz: i32,
    stop: tokio_util::sync::CancellationToken,
) -> Result<CpuProfile, CpuError> {
    if !(1..=MAX_SECONDS).contains(&seconds) {
        return Err(CpuError::BadSeconds(seconds));
    }
    let slot = Slot::take()?;
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        sample(Duration::from_secs(seconds), frequency_hz, &stop)
    })
    .await
    .map_err(|err| CpuError::Profiler(err.to_string()))?
}

fn sample(
    length: Duration,
    frequency_hz: i32,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<CpuProfile, CpuError> {
    let started_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let started = std::time::Instant::now();
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(frequency_hz)
        .blocklist(BLOCKLIST)
        .build()
        .map_err(|err| CpuError::Profiler(err.to_string()))?;
    // Short naps, so a stop request is seen within 50 ms.
    while started.elapsed() < length && !stop.is_cancelled() {
        std::thread::sleep(
            length
                .saturating_sub(started.elapsed())
                .min(Duration::from_millis(50)),
        );
    }
    let report = guard
        .report()
        .build()
        .map_err(|err| CpuError::Profiler(err.to_string()))?;
    let duration = started.elapsed();
    drop(guard);

    let mut stacks = Vec::with_capacity(report.data.len());
    for (frames, count) in &report.data {
        let Ok(count) = u64::try_from(*count) else {
            continue;
        };
        // pprof-rs keeps frames leaf first, and inlined symbols innermost first within a frame.
        let stack: Vec<Frame> = frames
            .frames
            .iter()
            .rev()
            .flat_map(|symbols| symbols.iter().rev())
            .map(|symbol| {
                let name = symbol.name();
                match (&symbol.filename, symbol.lineno) {
                    (Some(file), Some(line)) => Frame::at(
                        name,
                        super::registry::short_path(&file.to_string_lossy()),
                        line,
                    ),
                    _ => Frame::named(name),
                }
            })
            .collect();
        if count > 0 {
            stacks.push((stack, count));
        }
    }
    Ok(CpuProfile {
        stacks,
        frequency_hz,
        started_ns,
        duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_profile_still_draws() {
        let svg = flamegraph("", "cpu").expect("svg");
        let text = String::from_utf8(svg).expect("utf8");
        assert!(text.contains("<svg") && text.contains("idle"));
    }

    #[test]
    fn pprof_values_are_samples_and_nanoseconds() {
        let profile = CpuProfile {
            stacks: vec![(vec![Frame::named("main"), Frame::named("spin")], 7)],
            frequency_hz: 100,
            started_ns: 1,
            duration: Duration::from_secs(1),
        };
        let decoded = crate::pprof::decode(&profile.to_pprof()).expect("decodes");
        assert_eq!(decoded.sample[0].value, vec![7, 70_000_000]);
        assert_eq!(decoded.period, 10_000_000);
        assert_eq!(profile.to_folded(), "main;spin 7\n");
    }

    /// The only test of this binary that samples: the sampler is process-wide.
    #[test]
    fn stop_ends_a_long_profile_early_and_frees_the_slot() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let stop = tokio_util::sync::CancellationToken::new();
            let started = std::time::Instant::now();
            let running = tokio::spawn(profile(MAX_SECONDS, 99, stop.clone()));
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !is_running() {
                assert!(std::time::Instant::now() < deadline, "never started");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let err = profile(1, 99, stop.clone()).await.expect_err("busy");
            assert!(matches!(err, CpuError::Busy));
            stop.cancel();
            let profile = tokio::time::timeout(Duration::from_secs(10), running)
                .await
                .expect("ends soon after stop")
                .expect("join")
                .expect("profile");
            assert!(
                profile.duration < Duration::from_secs(10),
                "{:?}",
                profile.duration
            );
            assert!(started.elapsed() < Duration::from_secs(15));
            assert!(!is_running(), "the slot is free again");
        });
    }

    #[test]
    fn seconds_out_of_range_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        for bad in [0, MAX_SECONDS + 1] {
            let stop = tokio_util::sync::CancellationToken::new();
            let err = rt.block_on(profile(bad, 99, stop)).expect_err("refused");
            assert!(matches!(err, CpuError::BadSeconds(n) if n == bad));
        }
    }
}
