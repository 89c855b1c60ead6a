//! The rules that turn a site's series into a verdict, each a small type with its thresholds in
//! its `Default`.
//!
//! Leaked tasks never end, so a leaking site's floor (the minimum live count over a stretch of
//! time) ratchets up, the growth is still going on at the end of the window, and its oldest task
//! ages with the wall clock. Bursts fall back to their floor; a pool that warms up stops climbing.
//! A single rise of the floor cannot be told from a warm-up (a pool that fills once), so a leak
//! needs the floor to rise again ([`RepeatedRise`]); and a flat stretch between two steps of a leak
//! is not a plateau as long as it is no longer than the growth's own rhythm ([`StillGrowing`]).
//! So a steady leak, replayed one more sample at a time, reads `stable`/`growing` until its second
//! step and `leak` from then on, never `leak` and then back.
//! [`Rules`] bundles one of each; [`crate::analysis::judge`] combines them.

use crate::Step;

use super::fit::median;
use super::series::Point;

/// Every rule, with its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// The floor must rise.
    pub floor: RisingFloor,
    /// The growth must still be going on at the end of the window.
    pub recent: StillGrowing,
    /// The oldest task must be about as old as the growth.
    pub age: AgeCorroboration,
    /// The floor must have risen more than once.
    pub rises: RepeatedRise,
    /// How a regular step is recognised.
    pub step: StepPattern,
    /// The fewest samples a `leak` verdict needs.
    pub min_samples_for_leak: usize,
}

impl Default for Rules {
    /// Each rule's defaults; a leak needs 3 samples at least.
    fn default() -> Self {
        Rules {
            floor: RisingFloor::default(),
            recent: StillGrowing::default(),
            age: AgeCorroboration::default(),
            rises: RepeatedRise::default(),
            step: StepPattern::default(),
            min_samples_for_leak: 3,
        }
    }
}

/// The outcome of one rule: whether it holds, and a short reason that quotes the figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Whether the rule holds.
    pub ok: bool,
    /// Why, in a few words with the figures (for the operator).
    pub reason: String,
}

/// Splits the window into `windows` stretches of equal sample count and takes each one's minimum.
/// The floor rises when those minima never fall, the last is above the first by at least
/// `min_rise`, and the rise beats the typical spread inside a stretch (so noise does not count).
#[derive(Debug, Clone, PartialEq)]
pub struct RisingFloor {
    /// Stretches the window is split into.
    pub windows: usize,
    /// Fewest tasks the floor must rise by.
    pub min_rise: u64,
}

impl Default for RisingFloor {
    fn default() -> Self {
        RisingFloor {
            windows: 4,
            min_rise: 1,
        }
    }
}

impl RisingFloor {
    /// The minima of each stretch, first to last.
    pub fn floors(&self, points: &[Point]) -> Vec<u64> {
        self.stretches(points)
            .map(|s| s.iter().map(|p| p.live).min().unwrap_or(0))
            .collect()
    }

    fn stretches<'a>(&self, points: &'a [Point]) -> impl Iterator<Item = &'a [Point]> {
        let n = points.len();
        let k = self.windows.clamp(1, n.max(1));
        (0..k)
            .map(move |i| &points[i * n / k..(i + 1) * n / k])
            .filter(|s| !s.is_empty())
    }

    /// Applies the rule.
    pub fn check(&self, points: &[Point]) -> Check {
        let floors = self.floors(points);
        let mut spreads: Vec<f64> = self
            .stretches(points)
            .map(|s| {
                let max = s.iter().map(|p| p.live).max().unwrap_or(0);
                let min = s.iter().map(|p| p.live).min().unwrap_or(0);
                (max - min) as f64
            })
            .collect();
        let spread = median(&mut spreads).unwrap_or(0.0);
        let (first, last) = (
            floors.first().copied().unwrap_or(0),
            floors.last().copied().unwrap_or(0),
        );
        let never_falls = floors.windows(2).all(|w| w[1] >= w[0]);
        let rise = last.saturating_sub(first);
        let ok = never_falls && rise >= self.min_rise && rise as f64 > spread;
        let shown: Vec<String> = floors.iter().map(u64::to_string).collect();
        let reason = if ok {
            format!("floor rose {}", shown.join("→"))
        } else if !never_falls {
            format!("floor fell back ({})", shown.join("→"))
        } else {
            format!(
                "floor {} does not rise above the noise (±{spread:.0})",
                shown.join("→")
            )
        };
        Check { ok, reason }
    }
}

/// The growth must still be going on: the last new high is no older than `quiet_fraction` of the
/// window, or than the growth's own rhythm: `step_periods` step periods when a regular step shows,
/// else the flat stretch before the first new high. A site that stopped climbing has reached a
/// plateau: `stable`, never `leak`.
///
/// Why the rhythm: between two steps of a step-shaped leak the series is flat for the period less
/// one sample interval, which in a short window is more than `quiet_fraction` of it. Sampled every
/// 5 s, a +16/30s leak whose first step shows at 30 s is flat from 30 s to 55 s; by the window
/// alone that reads as a plateau at 55 s and as growth again at 60 s. Without a step pattern (one
/// step seen), the stretch the site was flat before it rose is the best bound on its period there
/// is.
#[derive(Debug, Clone, PartialEq)]
pub struct StillGrowing {
    /// Longest quiet stretch at the end, as a share of the window.
    pub quiet_fraction: f64,
    /// Longest quiet stretch at the end, in step periods (when a step shows).
    pub step_periods: f64,
}

impl Default for StillGrowing {
    fn default() -> Self {
        StillGrowing {
            quiet_fraction: 0.4,
            step_periods: 1.5,
        }
    }
}

impl StillGrowing {
    /// Applies the rule; `step` is the site's regular step, if any.
    pub fn check(&self, points: &[Point], step: Option<&Step>) -> Check {
        let (Some(first), Some(last)) = (points.first(), points.last()) else {
            return Check {
                ok: false,
                reason: "no samples".to_owned(),
            };
        };
        let mut high = first.live;
        let mut first_high_t = None;
        let mut last_high_t = first.t_s;
        for p in &points[1..] {
            if p.live > high {
                high = p.live;
                last_high_t = p.t_s;
                first_high_t.get_or_insert(p.t_s);
            }
        }
        let span = last.t_s - first.t_s;
        let quiet = last.t_s - last_high_t;
        let rhythm = match step {
            Some(s) => s.every_s * self.step_periods,
            None => first_high_t.map_or(0.0, |t| t - first.t_s),
        };
        let allowed = (span * self.quiet_fraction).max(rhythm);
        let ok = last_high_t > first.t_s && quiet <= allowed;
        let reason = if ok {
            format!("last new high {quiet:.0}s ago")
        } else {
            format!("plateau at {high} for the last {quiet:.0}s")
        };
        Check { ok, reason }
    }
}

/// A leak raises its floor again and again; a pool that warms up raises it once (or in one quick
/// burst of rises) and stops. The floor here is the lowest count from a sample to the end of the
/// window (leaked tasks never end, so it only climbs, and bursts above it do not lift it); the
/// rule holds when it rose at `min_rises` samples at least, the first and the last of those rises
/// at least `min_spread` of the window apart. One step is `growing`, never `leak`: it cannot be
/// told from a warm-up until the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct RepeatedRise {
    /// Fewest samples at which the floor rose.
    pub min_rises: usize,
    /// Least time from the first rise to the last, as a share of the window.
    pub min_spread: f64,
}

impl Default for RepeatedRise {
    fn default() -> Self {
        RepeatedRise {
            min_rises: 2,
            min_spread: 0.25,
        }
    }
}

impl RepeatedRise {
    /// Where the floor rose: the time of each sample whose floor is above the previous sample's,
    /// with the rise.
    pub fn rises(&self, points: &[Point]) -> Vec<(f64, u64)> {
        let mut floors: Vec<u64> = points.iter().map(|p| p.live).collect();
        for i in (0..floors.len().saturating_sub(1)).rev() {
            floors[i] = floors[i].min(floors[i + 1]);
        }
        (1..points.len())
            .filter(|&i| floors[i] > floors[i - 1])
            .map(|i| (points[i].t_s, floors[i] - floors[i - 1]))
            .collect()
    }

    /// Applies the rule.
    pub fn check(&self, points: &[Point]) -> Check {
        let rises = self.rises(points);
        let span = match (points.first(), points.last()) {
            (Some(f), Some(l)) => l.t_s - f.t_s,
            _ => 0.0,
        };
        // The first few rises, for the operator; a climb of many samples is not listed whole.
        let shown = |rises: &[(f64, u64)]| {
            let mut parts: Vec<String> = rises
                .iter()
                .take(3)
                .map(|(t, d)| format!("+{d} at {t:.0}s"))
                .collect();
            if rises.len() > 3 {
                parts.push(format!("{} more", rises.len() - 3));
            }
            parts.join(", ")
        };
        match (rises.first(), rises.last()) {
            (Some(&(first, _)), Some(&(last, _))) if rises.len() >= self.min_rises.max(1) => {
                let spread = last - first;
                if spread >= self.min_spread * span {
                    Check {
                        ok: true,
                        reason: format!("floor rose {} times over {spread:.0}s", rises.len()),
                    }
                } else {
                    Check {
                        ok: false,
                        reason: format!(
                            "the floor rose only within {spread:.0}s of {span:.0}s ({}): a warm-up \
                             looks the same",
                            shown(&rises)
                        ),
                    }
                }
            }
            _ => Check {
                ok: false,
                reason: match rises.len() {
                    0 => "the floor never rose".to_owned(),
                    1 => format!(
                        "one step so far ({}): a warm-up looks the same until the floor rises again",
                        shown(&rises)
                    ),
                    n => format!(
                        "the floor rose {n} times ({}), {} needed",
                        shown(&rises),
                        self.min_rises
                    ),
                },
            },
        }
    }
}

/// A leaking site's tasks age with the wall clock: at the last sample its oldest task is at least
/// `min_fraction` of the time since the site first had live tasks in the window, and its median
/// task at least `min_median_fraction` of it (one old task does not make a backlog of young ones a
/// leak). Tasks that come and go stay young. Without age figures (all zero) a part cannot tell and
/// holds.
#[derive(Debug, Clone, PartialEq)]
pub struct AgeCorroboration {
    /// Least oldest-age, as a share of the time the site has had live tasks.
    pub min_fraction: f64,
    /// Least median age, as a share of the time the site has had live tasks.
    pub min_median_fraction: f64,
}

impl Default for AgeCorroboration {
    fn default() -> Self {
        AgeCorroboration {
            min_fraction: 0.5,
            min_median_fraction: 0.2,
        }
    }
}

impl AgeCorroboration {
    /// Applies the rule.
    pub fn check(&self, points: &[Point]) -> Check {
        let Some(last) = points.last() else {
            return Check {
                ok: false,
                reason: "no samples".to_owned(),
            };
        };
        if points.iter().all(|p| p.oldest_age_s == 0.0) {
            return Check {
                ok: true,
                reason: "no age figures".to_owned(),
            };
        }
        let since = points
            .iter()
            .find(|p| p.live > 0)
            .map_or(last.t_s, |p| p.t_s);
        let alive_for = last.t_s - since;
        if last.oldest_age_s < alive_for * self.min_fraction {
            let reason = format!(
                "oldest task only {:.0}s old after {alive_for:.0}s of growth: tasks come and go",
                last.oldest_age_s
            );
            return Check { ok: false, reason };
        }
        let has_median = points.iter().any(|p| p.median_age_s > 0.0);
        if has_median && last.median_age_s < alive_for * self.min_median_fraction {
            let reason = format!(
                "median task only {:.0}s old after {alive_for:.0}s of growth: a backlog of young tasks",
                last.median_age_s
            );
            return Check { ok: false, reason };
        }
        Check {
            ok: true,
            reason: format!("oldest task {:.0}s old", last.oldest_age_s),
        }
    }
}

/// A regular step: the non-zero changes between samples share one sign and cluster around one
/// size, and the changes come at one period (within `tolerance`, and within one sample gap, since
/// a step is only seen at the next sample).
#[derive(Debug, Clone, PartialEq)]
pub struct StepPattern {
    /// Fewest changes that make a pattern.
    pub min_steps: usize,
    /// Relative tolerance on the size and the period.
    pub tolerance: f64,
    /// Share of changes (and of gaps between them) that must fit the size (and the period).
    pub min_share: f64,
}

impl Default for StepPattern {
    fn default() -> Self {
        StepPattern {
            min_steps: 2,
            tolerance: 0.25,
            min_share: 0.75,
        }
    }
}

impl StepPattern {
    /// The regular step of `points`, or `None` where none shows.
    pub fn detect(&self, points: &[Point]) -> Option<Step> {
        let changes: Vec<(f64, i64)> = points
            .windows(2)
            .filter_map(|w| {
                let d = w[1].live as i64 - w[0].live as i64;
                (d != 0).then_some((w[1].t_s, d))
            })
            .collect();
        if changes.len() < self.min_steps.max(2) {
            return None;
        }
        let rising = changes[0].1 > 0;
        if changes.iter().any(|&(_, d)| (d > 0) != rising) {
            return None;
        }
        let mut sizes: Vec<f64> = changes
            .iter()
            .map(|&(_, d)| d.unsigned_abs() as f64)
            .collect();
        let size = median(&mut sizes)?.round();
        let fits = |d: i64| (d.unsigned_abs() as f64 - size).abs() <= self.tolerance * size;
        let steps: Vec<f64> = changes
            .iter()
            .filter(|&&(_, d)| fits(d))
            .map(|&(t, _)| t)
            .collect();
        if steps.len() < self.min_steps.max(2)
            || (steps.len() as f64) < self.min_share * changes.len() as f64
        {
            return None;
        }
        let mut gaps: Vec<f64> = steps.windows(2).map(|w| w[1] - w[0]).collect();
        let period = median(&mut gaps.clone())?;
        let mut sample_gaps: Vec<f64> = points.windows(2).map(|w| w[1].t_s - w[0].t_s).collect();
        let sample_gap = median(&mut sample_gaps).unwrap_or(0.0);
        let slack = (self.tolerance * period).max(sample_gap * 1.01);
        let regular = gaps
            .iter_mut()
            .filter(|g| (**g - period).abs() <= slack)
            .count();
        if period <= 0.0 || (regular as f64) < self.min_share * gaps.len() as f64 {
            return None;
        }
        let size = if rising { size as i64 } else { -(size as i64) };
        Some(Step {
            size,
            every_s: round_period(period),
        })
    }
}

/// Rounds a measured period the way a person reads it: whole seconds from 10 s, tenths below,
/// hundredths under a second (steps are seen at sample times, so the last digits are jitter).
fn round_period(secs: f64) -> f64 {
    let unit = if secs >= 10.0 {
        1.0
    } else if secs >= 1.0 {
        0.1
    } else {
        0.01
    };
    (secs / unit).round() * unit
}
