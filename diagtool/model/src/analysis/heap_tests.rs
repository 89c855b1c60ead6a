//! Synthetic heap series with the profiler's own noise: objects are sampled at random, one per
//! period of bytes on average, and each sampled object counts as its size scaled up by the chance
//! of sampling it (as jemalloc's estimate does). Every scenario runs over many seeds.

use super::*;
use crate::{Overall, Verdict};

const PERIOD: u64 = 1 << 19;
const LEAK: &str = "shipper/src/leaklab.rs:140";
const POOL: &str = "shipper/src/pipeline/batch.rs:77";
const CHURN: &str = "shipper/src/sink/loki.rs:210";

/// xorshift, so every run is reproducible.
struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Whether an allocation of `size` bytes is sampled, and the bytes it then counts for.
fn sampled(rng: &mut Rng, size: u64) -> Option<u64> {
    let p = 1.0 - (-(size as f64) / PERIOD as f64).exp();
    (rng.unit() < p).then(|| (size as f64 / p) as u64)
}

fn site(name: &str, bytes: u64, objects: u64) -> HeapSite {
    HeapSite {
        site: name.to_owned(),
        function: format!("fn_of_{name}"),
        inuse_bytes: bytes as i64,
        inuse_objects: objects as i64,
        stack: vec![format!("main at {name}")],
    }
}

fn sample(t_s: f64, sites: Vec<HeapSite>) -> HeapSample {
    HeapSample {
        schema: HEAP_SAMPLE_SCHEMA.to_owned(),
        taken_at_ms: 1_764_270_000_000 + (t_s * 1000.0) as u64,
        period_bytes: PERIOD,
        sites: sites.into_iter().filter(|s| s.inuse_bytes > 0).collect(),
    }
}

/// The leak lab's cache: 256 KiB inserted every second, keeping the `keep` newest entries
/// (`None`: never evicted), sampled every `every` seconds for `until` seconds, after it ran for
/// `before` seconds already.
fn cache(seed: u64, keep: Option<usize>, every: f64, until: f64, before: f64) -> Vec<HeapSample> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut entries: Vec<Option<u64>> = Vec::new();
    let mut out = Vec::new();
    let mut t = -before;
    let mut next_sample = 0.0;
    while next_sample <= until + 1e-9 {
        while t <= next_sample {
            entries.push(sampled(&mut rng, 256 * 1024));
            if let Some(keep) = keep
                && entries.len() > keep
            {
                entries.remove(0);
            }
            t += 1.0;
        }
        let kept: Vec<u64> = entries.iter().flatten().copied().collect();
        out.push(sample(
            next_sample,
            vec![site(LEAK, kept.iter().sum(), kept.len() as u64)],
        ));
        next_sample += every;
    }
    out
}

fn verdict_of(samples: &[HeapSample], name: &str) -> Option<Verdict> {
    let judged = analyze_heap(samples, 0.0, &HeapNoise::default());
    judged
        .analysis
        .sites
        .iter()
        .find(|s| s.row.site == name)
        .map(|s| s.row.verdict)
}

/// Of `runs` simulated watches of a cache keeping `keep` entries (`None`: all), how many read
/// `leak`; the cache ran `before` seconds before the first sample (negative: it starts later).
fn leaks(runs: u64, keep: Option<usize>, every: f64, until: f64, before: f64) -> usize {
    (1..=runs)
        .filter(|&seed| {
            verdict_of(&cache(seed, keep, every, until, before), LEAK) == Some(Verdict::Leak)
        })
        .count()
}

// The tests below pin the error rates of the noise floor on the issue's own check
// (`watch --heap --interval 2s --duration 30s` on the leak lab's cache and its bounded twin).
// Over 4000 draws of the sampling: the cache reads `leak` in 99.3% of the watches; the twin, in
// 0.1% when it ran a while before the watch or starts with it, 0.4% when the watch starts 2 s
// before its first entry (a run of draws that climbs and never falls back, which no rule can tell
// from a small leak); both improve with longer watches.

#[test]
fn the_leak_labs_cache_is_a_leak_in_a_30s_watch_almost_whatever_the_sampling_drew() {
    let found = leaks(2000, None, 2.0, 30.0, 5.0);
    assert!(found >= 1980, "{found} of 2000 watches found the leak");
    let from_start = leaks(2000, None, 2.0, 30.0, 0.0);
    assert!(from_start >= 1980, "{from_start} of 2000 from its start");
    assert_eq!(leaks(500, None, 5.0, 60.0, 5.0), 500);
}

#[test]
fn the_bounded_twin_of_the_cache_almost_never_reads_leak() {
    let found = leaks(2000, Some(8), 2.0, 30.0, 5.0);
    assert!(
        found <= 4,
        "{found} of 2000 watches of the bounded cache read leak"
    );
    assert_eq!(leaks(500, Some(8), 5.0, 60.0, 5.0), 0);
    assert_eq!(leaks(200, Some(8), 2.0, 120.0, 5.0), 0);
}

#[test]
fn a_bounded_cache_filling_up_inside_the_window_is_not_a_leak() {
    // The twin watched from its first entry: 2 MiB filled in 8 s, then evicting as it inserts
    // (one CI run in five read this `leak` when half the gain could be given back).
    let from_start = leaks(4000, Some(8), 2.0, 30.0, 0.0);
    assert!(from_start <= 8, "{from_start} of 4000 from its start");
    let before_start = leaks(4000, Some(8), 2.0, 30.0, -2.0);
    assert!(before_start <= 24, "{before_start} of 4000 from 2 s before");
    assert_eq!(leaks(1000, Some(8), 5.0, 60.0, -2.0), 0);
    // 16 MiB filled in 64 s, then held for 56 s of a 120 s watch.
    let big = leaks(1000, Some(64), 2.0, 120.0, 0.0);
    assert!(
        big <= 40,
        "{big} of 1000 watches of a 16 MiB cache read leak"
    );
}

#[test]
fn churning_small_buffers_never_read_leak() {
    // About 1 MiB of 4 KiB buffers live at any time, replaced between samples: the sampled
    // in-use is a fresh draw of whole periods each time.
    for seed in 1..=500 {
        let mut rng = Rng(seed * 7919 + 3);
        let samples: Vec<HeapSample> = (0..=15)
            .map(|i| {
                let kept: Vec<u64> = (0..256).filter_map(|_| sampled(&mut rng, 4096)).collect();
                sample(
                    2.0 * i as f64,
                    vec![site(CHURN, kept.iter().sum(), kept.len() as u64)],
                )
            })
            .collect();
        assert_ne!(
            verdict_of(&samples, CHURN),
            Some(Verdict::Leak),
            "seed {seed}"
        );
    }
}

#[test]
fn a_pool_that_warms_up_then_holds_is_not_a_leak() {
    // 1 MiB more every 2 s for the first 10 s, then flat at 5 MiB for 20 s.
    let samples: Vec<HeapSample> = (0..=15)
        .map(|i| {
            let bytes = (1 << 20) * (i.min(5) as u64);
            sample(2.0 * i as f64, vec![site(POOL, bytes, i.min(5) as u64)])
        })
        .collect();
    let judged = analyze_heap(&samples, 0.0, &HeapNoise::default());
    assert_eq!(judged.analysis.verdict(), Overall::Ok);
    assert_eq!(verdict_of(&samples, POOL), Some(Verdict::Stable));
}

#[test]
fn growth_under_a_period_per_minute_or_a_tiny_rise_is_never_a_leak() {
    // One period every 2 minutes, steadily: real, but under the noise floor.
    let slow: Vec<HeapSample> = (0..=20)
        .map(|i| {
            let bytes = PERIOD * (4 + i / 4);
            sample(30.0 * i as f64, vec![site(POOL, bytes, 1)])
        })
        .collect();
    assert_eq!(verdict_of(&slow, POOL), Some(Verdict::Stable));
    // Fast, but the floor rises by 3 periods only.
    let tiny: Vec<HeapSample> = (0..=15)
        .map(|i| sample(i as f64, vec![site(POOL, PERIOD * (i / 5), 1)]))
        .collect();
    assert_ne!(verdict_of(&tiny, POOL), Some(Verdict::Leak));
}

#[test]
fn the_report_is_of_kind_heap_with_each_sites_details() {
    let mut samples = cache(1, None, 2.0, 30.0, 5.0);
    for s in &mut samples {
        s.sites.push(site(POOL, 3 * PERIOD, 3));
    }
    let judged = analyze_heap(&samples, 0.0, &HeapNoise::default());
    let report = judged.to_report("http://127.0.0.1:6060", 1);
    assert_eq!(report.kind, WatchKind::Heap);
    assert_eq!(report.verdict, Overall::Leak);
    assert_eq!(report.errors, 1);
    let leak = &report.sites[0];
    assert_eq!(leak.site, LEAK);
    assert_eq!(leak.inuse_bytes, Some(leak.live));
    assert_eq!(
        leak.function.as_deref(),
        Some("fn_of_shipper/src/leaklab.rs:140")
    );
    assert_eq!(leak.stack.len(), 1);
    assert_eq!(report.total.last, samples[15].inuse_bytes());
    let why = &judged.analysis.sites[0].why;
    assert!(why.contains("MiB in use; floor rose"), "{why}");
    assert!(!why.contains("no age figures"), "{why}");
    // The threshold is at least the noise floor: one period per minute.
    assert_eq!(report.threshold_per_min, Some(PERIOD as f64));
}

#[test]
fn samples_come_from_profiles_and_round_trip_as_json() {
    use crate::heap::{INUSE_OBJECTS, INUSE_SPACE};
    use crate::pprof::{Frame, ProfileBuilder};
    let mut builder = ProfileBuilder::new(&[(INUSE_OBJECTS, "count"), (INUSE_SPACE, "bytes")]);
    builder.add(
        &[
            Frame::at("shipper::main", "shipper/src/main.rs", 5),
            Frame::at("shipper::leaklab::grow", "shipper/src/leaklab.rs", 140),
            Frame::at("alloc::vec::Vec::with_capacity", "alloc/src/vec/mod.rs", 9),
        ],
        &[2, 1 << 20],
    );
    let sample = HeapSample::from_profile(&builder.build(), 5).expect("a heap profile");
    assert_eq!(sample.period_bytes, DEFAULT_PERIOD_BYTES, "no period given");
    assert_eq!(sample.sites[0].site, LEAK);
    let text = serde_json::to_string(&sample).expect("encodes");
    assert_eq!(HeapSample::from_json(&text).expect("parses"), sample);
    let cpu = ProfileBuilder::new(&[("samples", "count")]).build();
    assert!(HeapSample::from_profile(&cpu, 5).is_err());
}
