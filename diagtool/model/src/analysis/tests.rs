//! Synthetic series: each test builds the snapshots a target would serve for one scenario (steps,
//! slow leaks, noise, bursts, plateaus, restarts, sites that come and go) and checks the verdict.

use super::*;
use crate::{SNAPSHOT_SCHEMA, SiteStats, Step, TaskTotals};

const LEAK: &str = "shipper/src/leaklab.rs:88:17";
const POOL: &str = "shipper/src/pool.rs:10:5";
const BURST: &str = "shipper/src/sink/loki.rs:200:9";

/// One site at one instant: (site, live, oldest age in seconds).
type At = (&'static str, u64, f64);

/// Snapshots at `times` (seconds since the watch began; the probe started `uptime0` seconds before).
fn snaps(times: &[f64], uptime0: f64, at: impl Fn(f64) -> Vec<At>) -> Vec<Snapshot> {
    times
        .iter()
        .map(|&t| {
            let mut sites: Vec<SiteStats> = at(t)
                .into_iter()
                .filter(|s| s.1 > 0)
                .map(|(site, live, oldest)| SiteStats {
                    site: site.into(),
                    live,
                    spawned_total: live,
                    oldest_age_s: oldest,
                    median_age_s: oldest / 2.0,
                    ..Default::default()
                })
                .collect();
            sites.sort_by_key(|s| std::cmp::Reverse(s.live));
            Snapshot {
                schema: SNAPSHOT_SCHEMA.into(),
                service: "synthetic".into(),
                taken_at_ms: 1_764_270_000_000 + (t * 1000.0).round() as u64,
                uptime_s: uptime0 + t,
                process: Default::default(),
                runtime: Default::default(),
                tasks: TaskTotals {
                    live: sites.iter().map(|s| s.live).sum(),
                    ..Default::default()
                },
                sites,
                tasks_detail: None,
            }
        })
        .collect()
}

/// `0, every, 2*every, ...` up to and including `until`.
fn every(every: f64, until: f64) -> Vec<f64> {
    let n = (until / every).round() as usize;
    (0..=n).map(|i| i as f64 * every).collect()
}

/// A deterministic pseudo-random sequence (xorshift), so noise tests are reproducible.
struct Noise(u64);
impl Noise {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// The classic leak: `size` tasks every `period` seconds that never end. `phase` shifts the steps
/// against the samples; the first batch was spawned `phase` seconds before the watch began.
fn classic(size: u64, period: f64, phase: f64) -> impl Fn(f64) -> Vec<At> {
    move |t| {
        let since = t + phase;
        let batches = 1 + (since / period).floor() as u64;
        vec![(LEAK, size * batches, since)]
    }
}

fn verdict_of(analysis: &Analysis, site: &str) -> Verdict {
    site_row(analysis, site).verdict
}

fn site_row<'a>(analysis: &'a Analysis, site: &str) -> &'a WatchSite {
    &analysis
        .sites
        .iter()
        .find(|s| s.row.site == site)
        .unwrap_or_else(|| panic!("{site} missing"))
        .row
}

fn why(analysis: &Analysis, site: &str) -> String {
    analysis
        .sites
        .iter()
        .find(|s| s.row.site == site)
        .map(|s| s.why.clone())
        .unwrap_or_default()
}

#[test]
fn classic_leak_is_a_leak_within_60s_at_any_phase_and_interval() {
    for interval in [1.0, 2.0, 5.0, 10.0, 30.0] {
        for phase in [0.0, 0.5, 7.0, 15.0, 29.5] {
            let a = analyze(
                &snaps(&every(interval, 60.0), 100.0, classic(16, 30.0, phase)),
                &Options::default(),
            );
            assert_eq!(
                verdict_of(&a, LEAK),
                Verdict::Leak,
                "interval {interval}s phase {phase}s: {}",
                why(&a, LEAK)
            );
            assert_eq!(a.verdict(), Overall::Leak);
            let row = site_row(&a, LEAK);
            assert!(
                (row.growth_per_min - 32.0).abs() < 12.0,
                "interval {interval} phase {phase}: {row:?}"
            );
        }
    }
}

#[test]
fn classic_leak_shows_its_step_pattern() {
    let a = analyze(
        &snaps(&every(1.0, 90.0), 5.0, classic(16, 30.0, 3.0)),
        &Options::default(),
    );
    let row = site_row(&a, LEAK);
    assert_eq!(
        row.step,
        Some(Step {
            size: 16,
            every_s: 30.0
        })
    );
    assert_eq!(
        row.step.as_ref().map(ToString::to_string).as_deref(),
        Some("+16/30s")
    );
    assert!((row.growth_per_min - 32.0).abs() < 3.0, "{row:?}");
    assert!(row.r2 > 0.85, "{row:?}");
}

#[test]
fn scaled_leak_two_per_second_is_a_leak_in_three_seconds_of_200ms_samples() {
    // Sampling jitter of up to 30 ms, as a real watch sees it.
    let mut noise = Noise(7);
    let times: Vec<f64> = every(0.2, 3.0)
        .into_iter()
        .map(|t| t + noise.next(30) as f64 / 1000.0)
        .collect();
    let a = analyze(
        &snaps(&times, 0.5, classic(2, 1.0, 0.3)),
        &Options::default(),
    );
    assert_eq!(verdict_of(&a, LEAK), Verdict::Leak, "{}", why(&a, LEAK));
    let row = site_row(&a, LEAK);
    assert_eq!(
        row.step,
        Some(Step {
            size: 2,
            every_s: 1.0
        }),
        "{row:?}"
    );
    assert!((row.growth_per_min - 120.0).abs() < 25.0, "{row:?}");
}

#[test]
fn slow_leak_above_the_threshold_is_found_given_time() {
    // One task every 10 s: 6 per minute, seen over 5 minutes of 5 s samples.
    let a = analyze(
        &snaps(&every(5.0, 300.0), 1.0, classic(1, 10.0, 0.0)),
        &Options::default(),
    );
    assert_eq!(verdict_of(&a, LEAK), Verdict::Leak, "{}", why(&a, LEAK));
    assert_eq!(
        site_row(&a, LEAK).step,
        Some(Step {
            size: 1,
            every_s: 10.0
        })
    );
}

#[test]
fn growth_below_the_threshold_is_stable_and_the_threshold_is_honoured() {
    // One task every 2 minutes: 0.5 per minute.
    let series = snaps(&every(10.0, 600.0), 1.0, classic(1, 120.0, 0.0));
    let a = analyze(&series, &Options::default());
    assert_eq!(verdict_of(&a, LEAK), Verdict::Stable, "{}", why(&a, LEAK));
    let low = Options {
        threshold_per_min: 0.25,
        ..Options::default()
    };
    assert_eq!(verdict_of(&analyze(&series, &low), LEAK), Verdict::Leak);
}

#[test]
fn bursts_that_come_and_go_are_never_a_leak() {
    // Every 10 s a burst of 20..50 short-lived tasks for 2 s, then back to 0.
    let mut noise = Noise(99);
    let heights: Vec<u64> = (0..40).map(|_| 20 + noise.next(31)).collect();
    let burst = move |t: f64| {
        let k = (t / 10.0) as usize;
        let live = if t % 10.0 < 2.0 { heights[k] } else { 0 };
        vec![(BURST, live, if live > 0 { t % 10.0 } else { 0.0 })]
    };
    for until in [20.0, 45.0, 60.0, 120.0, 300.0] {
        let a = analyze(&snaps(&every(1.0, until), 1.0, &burst), &Options::default());
        if let Some(s) = a.sites.iter().find(|s| s.row.site == BURST) {
            assert_ne!(s.row.verdict, Verdict::Leak, "until {until}: {}", s.why);
            assert_eq!(s.row.step, None, "bursts are no regular step");
        }
        assert_eq!(a.verdict(), Overall::Ok);
    }
}

#[test]
fn bursts_on_a_steady_floor_ending_mid_burst_are_not_a_leak() {
    // A floor of 5 long-lived tasks; the window ends while a burst is still climbing.
    let at = |t: f64| {
        let extra = if t >= 55.0 {
            ((t - 55.0) * 8.0) as u64
        } else if t % 10.0 < 3.0 {
            30
        } else {
            0
        };
        vec![(BURST, 5 + extra, 500.0 + t)]
    };
    let a = analyze(&snaps(&every(1.0, 60.0), 500.0, at), &Options::default());
    assert_ne!(verdict_of(&a, BURST), Verdict::Leak, "{}", why(&a, BURST));
}

#[test]
fn noise_around_a_steady_pool_is_stable_for_every_seed() {
    for seed in 1..=40u64 {
        let mut noise = Noise(seed * 7919);
        let values: Vec<u64> = (0..=60).map(|_| 8 + noise.next(5)).collect();
        let at = |t: f64| vec![(POOL, values[t as usize], 3600.0 + t)];
        let a = analyze(&snaps(&every(1.0, 60.0), 3600.0, at), &Options::default());
        assert_ne!(
            verdict_of(&a, POOL),
            Verdict::Leak,
            "seed {seed}: {}",
            why(&a, POOL)
        );
        assert_eq!(a.verdict(), Overall::Ok);
    }
}

#[test]
fn pool_warming_up_to_a_plateau_is_stable_never_a_leak() {
    // +4 every 2 s until 16, then held: a pool filling up.
    let warm = |t: f64| vec![(POOL, (4 * (1 + (t / 2.0) as u64)).min(16), t + 0.1)];
    for until in [30.0, 45.0, 60.0, 120.0] {
        let a = analyze(&snaps(&every(1.0, until), 0.1, warm), &Options::default());
        assert_eq!(
            verdict_of(&a, POOL),
            Verdict::Stable,
            "until {until}: {}",
            why(&a, POOL)
        );
    }
}

#[test]
fn slow_warm_up_reads_growing_then_stable() {
    // +1 every 3 s up to 20 (60 s), then held for 2 minutes; the young tasks are recycled, so
    // the oldest stays young while warming: growing, not leak.
    let warm = |t: f64| {
        let live = ((t / 3.0) as u64).min(20);
        vec![(POOL, live, if live > 0 { (t % 3.0) + 1.0 } else { 0.0 })]
    };
    let early = analyze(&snaps(&every(1.0, 40.0), 0.0, warm), &Options::default());
    assert_eq!(
        verdict_of(&early, POOL),
        Verdict::Growing,
        "{}",
        why(&early, POOL)
    );
    let late = analyze(&snaps(&every(1.0, 180.0), 0.0, warm), &Options::default());
    assert_eq!(
        verdict_of(&late, POOL),
        Verdict::Stable,
        "{}",
        why(&late, POOL)
    );
}

#[test]
fn growth_of_young_tasks_is_growing_not_leak() {
    // Live count climbs, but every task is at most 2 s old: a backlog, not parked tasks.
    let at = |t: f64| vec![(BURST, (t * 2.0) as u64, 2.0)];
    let a = analyze(&snaps(&every(1.0, 60.0), 10.0, at), &Options::default());
    assert_eq!(
        verdict_of(&a, BURST),
        Verdict::Growing,
        "{}",
        why(&a, BURST)
    );
    assert!(
        why(&a, BURST).contains("oldest task only"),
        "{}",
        why(&a, BURST)
    );
}

#[test]
fn leak_with_bursts_on_top_is_still_a_leak_over_a_longer_window() {
    let at = |t: f64| {
        let leaked = 16 * (1 + (t / 30.0) as u64);
        let burst = if (t as u64).is_multiple_of(7) { 25 } else { 0 };
        vec![(LEAK, leaked + burst, t + 1.0)]
    };
    let a = analyze(&snaps(&every(1.0, 180.0), 1.0, at), &Options::default());
    assert_eq!(verdict_of(&a, LEAK), Verdict::Leak, "{}", why(&a, LEAK));
    assert_eq!(
        site_row(&a, LEAK).step,
        None,
        "bursts break the regular step"
    );
}

#[test]
fn restart_starts_a_new_series_and_is_reported() {
    let mut series = snaps(&every(1.0, 30.0), 100.0, classic(16, 10.0, 0.0));
    // The target restarts: uptime back to 0.5, the leak gone, a steady pool instead.
    let after = snaps(&every(1.0, 20.0), 0.5, |t| vec![(POOL, 4, t + 0.5)]);
    let offset = series.last().map_or(0, |s| s.taken_at_ms) + 2_000 - after[0].taken_at_ms;
    series.extend(after.into_iter().map(|mut s| {
        s.taken_at_ms += offset;
        s
    }));
    let a = analyze(&series, &Options::default());
    assert_eq!(a.restarts.len(), 1);
    assert_eq!(a.restarts[0].sample, 31);
    assert_eq!((a.samples, a.analysed), (52, 21));
    assert!((a.span_s - 20.0).abs() < 1e-9);
    assert_eq!(
        a.verdict(),
        Overall::Ok,
        "the leak before the restart is not in this series"
    );
    assert!(a.sites.iter().all(|s| s.row.site != LEAK));
    let report = a.to_report("http://127.0.0.1:6060", 0);
    assert_eq!(report.restarts.len(), 1);
}

#[test]
fn leak_after_a_restart_is_found_in_the_new_series() {
    let mut series = snaps(&every(1.0, 20.0), 900.0, |t| vec![(POOL, 4, 900.0 + t)]);
    let after = snaps(&every(1.0, 40.0), 0.2, classic(2, 1.0, 0.0));
    let offset = series.last().map_or(0, |s| s.taken_at_ms) + 1_000 - after[0].taken_at_ms;
    series.extend(after.into_iter().map(|mut s| {
        s.taken_at_ms += offset;
        s
    }));
    let a = analyze(&series, &Options::default());
    assert_eq!(a.restarts.len(), 1);
    assert_eq!(verdict_of(&a, LEAK), Verdict::Leak, "{}", why(&a, LEAK));
}

#[test]
fn a_site_that_appears_late_and_leaks_is_a_leak() {
    let at = |t: f64| {
        let mut v = vec![(POOL, 4, 100.0 + t)];
        if t >= 20.0 {
            v.push((LEAK, 2 * (1 + (t - 20.0) as u64), t - 20.0));
        }
        v
    };
    let a = analyze(&snaps(&every(1.0, 60.0), 100.0, at), &Options::default());
    assert_eq!(verdict_of(&a, LEAK), Verdict::Leak, "{}", why(&a, LEAK));
    assert_eq!(verdict_of(&a, POOL), Verdict::Stable);
    assert_eq!(site_row(&a, LEAK).delta, 82);
}

#[test]
fn a_site_that_vanishes_is_shown_with_zero_live_and_shrinking() {
    let at = |t: f64| {
        let mut v = vec![(POOL, 4, 100.0 + t)];
        if t < 30.0 {
            v.push((BURST, 10, 100.0 + t));
        }
        v
    };
    let a = analyze(&snaps(&every(1.0, 60.0), 100.0, at), &Options::default());
    let row = site_row(&a, BURST);
    assert_eq!(
        (row.live, row.delta, row.verdict),
        (0, -10, Verdict::Shrinking)
    );
}

#[test]
fn a_draining_site_is_shrinking_with_a_negative_step() {
    let at = |t: f64| vec![(POOL, 64 - 8 * (t / 10.0) as u64, 300.0 + t)];
    let a = analyze(&snaps(&every(1.0, 60.0), 300.0, at), &Options::default());
    let row = site_row(&a, POOL);
    assert_eq!(row.verdict, Verdict::Shrinking);
    assert_eq!(
        row.step,
        Some(Step {
            size: -8,
            every_s: 10.0
        })
    );
    assert!(row.growth_per_min < -40.0, "{row:?}");
}

#[test]
fn irregular_growth_has_no_step_pattern() {
    let values = [0u64, 1, 6, 8, 17, 18, 30, 31, 45, 47, 70];
    let at = |t: f64| vec![(LEAK, values[t as usize], t)];
    let a = analyze(&snaps(&every(1.0, 10.0), 0.0, at), &Options::default());
    assert_eq!(site_row(&a, LEAK).step, None);
}

#[test]
fn sites_are_sorted_by_growth_and_totals_follow_all_sites() {
    let at = |t: f64| {
        vec![
            (POOL, 4, 100.0 + t),
            (LEAK, 16 * (1 + (t / 30.0) as u64), t + 1.0),
            (BURST, 2 * (1 + (t / 1.0) as u64), t + 1.0),
        ]
    };
    let a = analyze(&snaps(&every(1.0, 60.0), 100.0, at), &Options::default());
    let order: Vec<&str> = a.sites.iter().map(|s| s.row.site.as_str()).collect();
    assert_eq!(order, [BURST, LEAK, POOL]);
    assert_eq!(a.total.first, 4 + 16 + 2);
    assert_eq!(a.total.last, 4 + 48 + 122);
    assert!(
        (a.total.growth_per_min - (120.0 + 32.0)).abs() < 15.0,
        "{:?}",
        a.total
    );
    let report = a.to_report("t", 3);
    assert_eq!(
        (report.samples, report.errors, report.verdict),
        (61, 3, Overall::Leak)
    );
    assert_eq!(report.sites.len(), 3);
}

#[test]
fn one_sample_or_none_judges_nothing_as_a_leak() {
    let one = analyze(
        &snaps(&[0.0], 5.0, classic(16, 30.0, 0.0)),
        &Options::default(),
    );
    assert_eq!(verdict_of(&one, LEAK), Verdict::Stable);
    assert_eq!(one.span_s, 0.0);
    let none = analyze(&[], &Options::default());
    assert!(none.sites.is_empty());
    assert_eq!((none.verdict(), none.total.first), (Overall::Ok, 0));
}

#[test]
fn two_samples_are_too_few_for_a_leak() {
    let a = analyze(
        &snaps(&[0.0, 30.0], 5.0, classic(16, 30.0, 0.0)),
        &Options::default(),
    );
    assert_eq!(verdict_of(&a, LEAK), Verdict::Growing, "{}", why(&a, LEAK));
}

#[test]
fn floor_rule_reads_minima_of_stretches() {
    let pts: Vec<Point> = [3u64, 9, 4, 12, 5, 20, 6, 6]
        .iter()
        .enumerate()
        .map(|(i, &live)| Point {
            t_s: i as f64,
            live,
            oldest_age_s: 0.0,
            median_age_s: 0.0,
        })
        .collect();
    let rule = RisingFloor::default();
    assert_eq!(rule.floors(&pts), vec![3, 4, 5, 6]);
    // A rise of 3 within a spread of 6 per stretch is noise, not a rising floor.
    assert!(!rule.check(&pts).ok);
}

#[test]
fn a_climb_then_a_long_plateau_is_stable_by_the_plateau_rule() {
    // Climbs for 30 s (robust growth well above the threshold), then holds for 30 s.
    let at = |t: f64| vec![(POOL, (t as u64).min(30), t + 1.0)];
    let a = analyze(&snaps(&every(1.0, 60.0), 1.0, at), &Options::default());
    let s = a.sites.iter().find(|s| s.row.site == POOL).expect("pool");
    assert!(s.row.robust_growth_per_min > 1.0, "{s:?}");
    assert_eq!(s.row.verdict, Verdict::Stable, "{}", s.why);
    assert!(s.why.contains("plateau at 30"), "{}", s.why);
}

#[test]
fn still_growing_allows_a_quiet_end_of_one_and_a_half_step_periods() {
    // A first step right after the first sample, so the flat stretch before the first rise (which
    // bounds the period when no step pattern shows) is short and the window alone decides.
    let pts: Vec<Point> = (0..=100)
        .map(|i| Point {
            t_s: f64::from(i),
            live: match i {
                0 => 8,
                1..55 => 16,
                _ => 32,
            },
            oldest_age_s: 0.0,
            median_age_s: 0.0,
        })
        .collect();
    let rule = StillGrowing::default();
    assert!(
        !rule.check(&pts, None).ok,
        "45 s quiet of a 100 s window is a plateau"
    );
    let step = Step {
        size: 16,
        every_s: 30.0,
    };
    assert!(
        rule.check(&pts, Some(&step)).ok,
        "45 s quiet is within 1.5 periods of 30 s"
    );
}

#[test]
fn one_old_task_over_a_growing_backlog_of_young_ones_is_growing_not_leak() {
    // A long-lived parent (oldest age keeps rising) over a backlog of 2 s-old tasks that grows.
    let at = |t: f64| vec![(BURST, 1 + (t * 2.0) as u64, 600.0 + t)];
    let mut series = snaps(&every(1.0, 60.0), 600.0, at);
    for s in &mut series {
        s.sites[0].median_age_s = 2.0;
    }
    let a = analyze(&series, &Options::default());
    assert_eq!(
        verdict_of(&a, BURST),
        Verdict::Growing,
        "{}",
        why(&a, BURST)
    );
    assert!(
        why(&a, BURST).contains("median task only 2s old"),
        "{}",
        why(&a, BURST)
    );
}

mod replay;
