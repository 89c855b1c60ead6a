//! Verdicts replayed by prefix: what `diagtool watch` prints sample after sample, and what
//! `diagtool report` says of a recording cut at any sample. A steady leak must go to `leak` once,
//! by its second step, and stay there; a single step must never be called a leak.

use super::*;

/// The site's verdict at every prefix of `series` (from the first sample on), with the time of the
/// prefix's last sample and the reason.
fn by_prefix(series: &[Snapshot], site: &str) -> Vec<(f64, Verdict, String)> {
    let origin = series.first().map_or(0, |s| s.taken_at_ms);
    (1..=series.len())
        .map(|n| {
            let a = analyze(&series[..n], &Options::default());
            let t = (series[n - 1].taken_at_ms - origin) as f64 / 1000.0;
            let verdict = a
                .sites
                .iter()
                .find(|s| s.row.site == site)
                .map_or(Verdict::Stable, |s| s.row.verdict);
            assert_eq!(
                a.verdict() == Overall::Leak,
                verdict == Verdict::Leak,
                "only {site} can leak here"
            );
            (t, verdict, why(&a, site))
        })
        .collect()
}

fn shown(seq: &[(f64, Verdict, String)]) -> String {
    seq.iter()
        .map(|(t, v, why)| format!("\n  {t:>5.1}s {v:<9} {why}"))
        .collect()
}

/// Asserts the sequence never goes from `leak` to anything else, and is `leak` from `by_s` on.
fn assert_monotone_leak(seq: &[(f64, Verdict, String)], by_s: f64, what: &str) {
    let first_leak = seq.iter().position(|(_, v, _)| *v == Verdict::Leak);
    let Some(first_leak) = first_leak else {
        panic!("{what}: never a leak:{}", shown(seq));
    };
    if let Some((t, v, _)) = seq[first_leak..]
        .iter()
        .find(|(_, v, _)| *v != Verdict::Leak)
    {
        panic!("{what}: leak, then {v} at {t:.1}s:{}", shown(seq));
    }
    assert!(
        seq[first_leak].0 <= by_s,
        "{what}: leak only from {:.1}s, not by {by_s}s:{}",
        seq[first_leak].0,
        shown(seq)
    );
}

/// Sample times every `interval` up to `until`, each late by up to 300 ms (a real watch's jitter).
fn jittered(interval: f64, until: f64, seed: u64) -> Vec<f64> {
    let mut noise = Noise(seed);
    every(interval, until)
        .into_iter()
        .map(|t| t + noise.next(300) as f64 / 1000.0)
        .collect()
}

/// Steps of the live count seen up to and including sample `n`.
fn steps_seen(series: &[Snapshot], n: usize) -> usize {
    series[..n]
        .windows(2)
        .filter(|w| {
            let live = |s: &Snapshot| s.sites.iter().map(|x| x.live).sum::<u64>();
            live(&w[1]) != live(&w[0])
        })
        .count()
}

#[test]
fn steady_step_leak_replayed_by_prefix_never_flips_and_is_a_leak_by_its_second_step() {
    // +16 every 30 s, sampled every 5 s, at every phase of the steps against the samples.
    for tenth in (0..300).step_by(5) {
        let phase = f64::from(tenth) / 10.0;
        let series = snaps(
            &jittered(5.0, 300.0, 11 + u64::from(tenth as u16)),
            200.0,
            classic(16, 30.0, phase),
        );
        let seq = by_prefix(&series, LEAK);
        let what = format!("+16/30s at phase {phase}s");
        assert_monotone_leak(&seq, 65.5, &what);
        for (n, (t, v, why)) in seq.iter().enumerate() {
            if steps_seen(&series, n + 1) < 2 {
                assert_ne!(*v, Verdict::Leak, "{what}: one step at {t:.1}s: {why}");
            }
        }
    }
}

#[test]
fn the_recorded_shipper_leak_reads_leak_from_its_second_step_and_never_ok_again() {
    // The recording: the leak lab's first batch comes one period after start, so the site
    // appears at 30 s, then +16 every 30 s; sampled every 5 s from the start. It used to read leak
    // at 40-45 s (one step seen), ok at 50-55 s ("plateau"), leak from 60 s.
    let appears = |t: f64| {
        let batches = if t >= 30.0 {
            1 + ((t - 30.0) / 30.0).floor() as u64
        } else {
            0
        };
        vec![(LEAK, 16 * batches, (t - 30.0).max(0.0))]
    };
    let series = snaps(&every(5.0, 240.0), 0.2, appears);
    let seq = by_prefix(&series, LEAK);
    assert_monotone_leak(&seq, 60.0, "the recorded +16/30s leak");
    for (t, v, why) in &seq {
        if *t < 60.0 {
            assert_ne!(*v, Verdict::Leak, "one step seen at {t}s: {why}");
        }
        if (40.0..60.0).contains(t) {
            assert_eq!(
                *v,
                Verdict::Growing,
                "the first step is growth, not a plateau, until its period is known \
                 ({t}s):{}",
                shown(&seq)
            );
        }
    }
}

#[test]
fn a_warm_up_of_one_step_then_flat_is_never_a_leak_and_ends_stable() {
    for (start, step_at) in [(16u64, 30.0), (16, 5.0), (0, 30.0), (0, 12.0), (8, 55.0)] {
        let warm = move |t: f64| {
            let live = if t >= step_at { start + 16 } else { start };
            let oldest = if live > 0 { t + 1.0 } else { 0.0 };
            vec![(POOL, live, oldest)]
        };
        let series = snaps(&every(5.0, 600.0), 1.0, warm);
        let seq = by_prefix(&series, POOL);
        let what = format!("{start} then +16 at {step_at}s");
        assert!(
            seq.iter().all(|(_, v, _)| *v != Verdict::Leak),
            "{what}:{}",
            shown(&seq)
        );
        let (_, last, why) = seq.last().expect("samples");
        assert_eq!(*last, Verdict::Stable, "{what}: {why}");
    }
}

#[test]
fn a_quick_warm_up_of_two_rises_in_a_long_window_is_not_a_leak() {
    // A pool steady at 8 for two minutes, then +8 twice, 5 s apart, then steady again.
    let warm = |t: f64| {
        let live = 8 + if t >= 120.0 { 8 } else { 0 } + if t >= 125.0 { 8 } else { 0 };
        vec![(POOL, live, 300.0 + t)]
    };
    let series = snaps(&every(5.0, 400.0), 300.0, warm);
    let seq = by_prefix(&series, POOL);
    assert!(
        seq.iter().all(|(_, v, _)| *v != Verdict::Leak),
        "{}",
        shown(&seq)
    );
}

#[test]
fn repeated_rise_reads_the_floor_from_the_end_so_bursts_do_not_count() {
    let pts: Vec<Point> = [4u64, 30, 4, 20, 8, 8, 40, 8, 12, 12]
        .iter()
        .enumerate()
        .map(|(i, &live)| Point {
            t_s: 10.0 * i as f64,
            live,
            oldest_age_s: 0.0,
            median_age_s: 0.0,
        })
        .collect();
    let rule = RepeatedRise::default();
    assert_eq!(rule.rises(&pts), vec![(30.0, 4), (80.0, 4)]);
    assert!(rule.check(&pts).ok, "{:?}", rule.check(&pts));
    let once = &pts[..8];
    assert_eq!(rule.rises(once), vec![(30.0, 4)]);
    let check = rule.check(once);
    assert!(
        !check.ok && check.reason.contains("one step so far"),
        "{check:?}"
    );
}

#[test]
fn still_growing_without_a_step_allows_the_flat_stretch_seen_before_the_first_rise() {
    // Flat for 30 s, one step, flat for 25 s: not yet a plateau (the period may be 30 s).
    let pts = |until: u32| -> Vec<Point> {
        (0..=until)
            .step_by(5)
            .map(|t| Point {
                t_s: f64::from(t),
                live: if t >= 30 { 32 } else { 16 },
                oldest_age_s: 0.0,
                median_age_s: 0.0,
            })
            .collect()
    };
    let rule = StillGrowing::default();
    assert!(
        rule.check(&pts(55), None).ok,
        "{:?}",
        rule.check(&pts(55), None)
    );
    let late = rule.check(&pts(65), None);
    assert!(!late.ok && late.reason.contains("plateau"), "{late:?}");
}
