//! The clock the spawn hook reads: the CPU's time-stamp counter where the kernel itself keeps
//! time with it, else the coarse monotonic clock. Readers turn its ticks into nanoseconds.
//!
//! Why: reading the coarse clock through the vDSO was the largest piece left in the spawn hook
//! (a call through glibc, a sequence-locked read of the kernel's time page: about 2% of a
//! spawn+join on 2 workers, issue 16), while `rdtsc` is one instruction the CPU overlaps with
//! the hook's other work. The counter is used only when the kernel's clocksource is `tsc`: the
//! kernel then found it invariant and in step across CPUs, and its vDSO reads it the same way.
//! Ticks are counted from the registry's start, so a 40-bit slot field of 2^20-tick units
//! lasts years at any frequency; readers convert them with the ratio of elapsed nanoseconds
//! (coarse monotonic clock) to elapsed ticks since the start, exact to the coarse clock's
//! resolution over the registry's life.

use super::coarse_now_ns;

/// Which counter the hooks read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `rdtsc`: CPU cycles at the invariant TSC frequency.
    Tsc,
    /// The coarse monotonic clock: nanoseconds.
    Coarse,
}

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct SpawnClock {
    source: Source,
    /// The counter at the start.
    start_ticks: u64,
    /// The coarse monotonic clock at the start, ns.
    start_ns: u64,
}

/// A reader's view of the clock: now, and how long a tick is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    /// Nanoseconds since the clock's start.
    pub(crate) now_ns: u64,
    ns_per_tick: f64,
}

impl Reading {
    /// Nanoseconds since the clock's start at `ticks` (a value of [`SpawnClock::now`]).
    pub(crate) fn ns(&self, ticks: u64) -> u64 {
        (ticks as f64 * self.ns_per_tick) as u64
    }

    /// Seconds from `ticks` to now (0 for a tick past now).
    pub(crate) fn age_s(&self, ticks: u64) -> f64 {
        self.now_ns.saturating_sub(self.ns(ticks)) as f64 / 1e9
    }
}

impl SpawnClock {
    /// The TSC where the kernel keeps time with it, else the coarse clock.
    pub(crate) fn new() -> Self {
        if tsc_is_the_kernels_clock() {
            Self::start(Source::Tsc)
        } else {
            Self::coarse()
        }
    }

    /// The coarse clock, whatever the machine: its ticks are the clock's own nanoseconds (since
    /// boot), so a spawn time can also be set in the past.
    pub(crate) fn coarse() -> Self {
        SpawnClock {
            source: Source::Coarse,
            start_ticks: 0,
            start_ns: 0,
        }
    }

    fn start(source: Source) -> Self {
        SpawnClock {
            source,
            start_ticks: read_tsc(),
            start_ns: coarse_now_ns(),
        }
    }

    /// Ticks since the start (since boot for the coarse clock): what the spawn hook stores.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        let ticks = match self.source {
            Source::Tsc => read_tsc(),
            Source::Coarse => coarse_now_ns(),
        };
        ticks.saturating_sub(self.start_ticks)
    }

    /// Now and the tick length, for one read.
    pub(crate) fn reading(&self) -> Reading {
        let ticks = self.now();
        let now_ns = coarse_now_ns().saturating_sub(self.start_ns);
        let ns_per_tick = match self.source {
            Source::Coarse => 1.0,
            // Before the coarse clock has moved, the ratio is unknown: every age is then ~0.
            Source::Tsc if now_ns == 0 || ticks == 0 => 0.0,
            Source::Tsc => now_ns as f64 / ticks as f64,
        };
        Reading {
            now_ns,
            ns_per_tick,
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn read_tsc() -> u64 {
    // SAFETY: `rdtsc` exists on every x86_64 CPU and has no side effects; it is only used as
    // the clock where the kernel keeps time with it (`tsc_is_the_kernels_clock`).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn read_tsc() -> u64 {
    coarse_now_ns()
}

/// Whether the kernel's current clocksource is the TSC (x86_64 Linux only).
fn tsc_is_the_kernels_clock() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .is_ok_and(|source| source.trim() == "tsc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_convert_to_the_coarse_clocks_nanoseconds() {
        for clock in [SpawnClock::new(), SpawnClock::coarse()] {
            let born = clock.now();
            let started = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_millis(120));
            let reading = clock.reading();
            let slept = started.elapsed().as_secs_f64();
            let age = reading.age_s(born);
            // The coarse clock moves in scheduler ticks (up to 10 ms), and a spawn time is
            // rounded down to 2^20 ticks (about 1 ms).
            assert!(
                (age - slept).abs() < 0.025,
                "{clock:?}: age {age}, slept {slept}"
            );
            assert!(
                reading.age_s(clock.now() + 1_000_000_000) == 0.0,
                "no negative age"
            );
        }
    }

    #[test]
    fn the_counter_is_the_tsc_only_where_the_kernel_uses_it() {
        let source = std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .unwrap_or_default();
        let expected = if cfg!(target_arch = "x86_64") && source.trim() == "tsc" {
            Source::Tsc
        } else {
            Source::Coarse
        };
        assert_eq!(SpawnClock::new().source, expected);
    }
}
