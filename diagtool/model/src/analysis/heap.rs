//! Growth of in-use heap memory by allocation site: the task judge, applied to bytes.
//!
//! Each heap profile (`/debug/pprof/heap`) is grouped by allocation site with
//! [`crate::heap::sites`] into a [`HeapSample`]; a sequence of samples becomes one series per site
//! (bytes in use), and each series is judged by the same [`judge`](super::judge) and the same
//! [`Rules`](super::Rules) as live tasks: a rising floor, rising more than once, still growing at
//! the end; a plateau is not a leak.
//!
//! What differs is the noise. The profiler samples about one allocation per `period` bytes
//! allocated (512 KiB by default) and scales each sampled object up to an estimate, so a site's
//! in-use bytes move by multiples of about one period as sampled objects come and go, even when
//! its true use is flat. [`HeapNoise`] sets a floor under the verdicts from that period: growth
//! slower than about one period per minute is `stable`, and a floor that rose by less than a few
//! periods over the window (a site whose total is tiny) is never `leak`. A buffer pool that warms
//! up and then holds its size reaches a plateau and reads `stable`, as a task pool does.
//!
//! There is no age in a heap profile, so the age rule has nothing to check (it holds); restarts
//! of the target are not detected (the in-use bytes fall, so no site reads `leak` across one).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::series::{Point, SiteSeries};
use super::{Analysis, Options, SiteGrowth, judge, least_squares, round2};
use crate::heap::{HeapError, HeapSite, sites};
use crate::pprof::Profile;
use crate::text::bytes;
use crate::{SchemaError, Verdict, WatchKind, WatchReport, WatchTotal};

/// The schema string of a [`HeapSample`].
pub const HEAP_SAMPLE_SCHEMA: &str = "diagtool.heap-sample/v1";

/// The sampling period assumed when a profile does not state one: jemalloc's default as the probe
/// sets it, one sample per 2^19 bytes (512 KiB) allocated.
pub const DEFAULT_PERIOD_BYTES: u64 = 1 << 19;

/// One heap profile, grouped by allocation site: what `diagtool watch --heap` keeps per sample
/// (`heap-NNNNNN.json` in a recording).
///
/// # Examples
/// ```
/// use diagtool_model::analysis::heap::HeapSample;
/// use diagtool_model::heap::{INUSE_OBJECTS, INUSE_SPACE};
/// use diagtool_model::pprof::{Frame, ProfileBuilder};
///
/// let mut builder = ProfileBuilder::new(&[(INUSE_OBJECTS, "count"), (INUSE_SPACE, "bytes")])
///     .period("space", "bytes", 524_288);
/// builder.add(&[Frame::at("app::fill", "app/src/cache.rs", 42)], &[2, 1_048_576]);
/// let sample = HeapSample::from_profile(&builder.build(), 1_000).unwrap();
/// assert_eq!((sample.period_bytes, sample.inuse_bytes()), (524_288, 1_048_576));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeapSample {
    /// Always [`HEAP_SAMPLE_SCHEMA`].
    pub schema: String,
    /// When the profile was fetched, in milliseconds since the Unix epoch (by the watcher's
    /// clock: a heap profile carries no clock of the target's that every probe fills in).
    pub taken_at_ms: u64,
    /// The profile's sampling period in bytes (its `period`), or [`DEFAULT_PERIOD_BYTES`].
    pub period_bytes: u64,
    /// In-use memory per allocation site, largest first.
    pub sites: Vec<HeapSite>,
}

impl HeapSample {
    /// Groups `profile` by allocation site.
    ///
    /// # Errors
    /// [`HeapError`] when the profile is not a heap profile.
    pub fn from_profile(profile: &Profile, taken_at_ms: u64) -> Result<Self, HeapError> {
        let period_bytes = u64::try_from(profile.period)
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(DEFAULT_PERIOD_BYTES);
        Ok(HeapSample {
            schema: HEAP_SAMPLE_SCHEMA.to_owned(),
            taken_at_ms,
            period_bytes,
            sites: sites(profile)?,
        })
    }

    /// Parses a sample document, refusing any other schema by name.
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        crate::parse_versioned(text, HEAP_SAMPLE_SCHEMA)
    }

    /// Bytes in use over all sites.
    pub fn inuse_bytes(&self) -> u64 {
        self.sites
            .iter()
            .map(|s| u64::try_from(s.inuse_bytes).unwrap_or(0))
            .sum()
    }
}

/// The noise floor under heap verdicts, in sampling periods (see the module's introduction).
///
/// Tuned on the profiler's own noise (`heap_tests.rs` simulates it): a bounded cache whose
/// sampled size wanders can climb for a whole short window by chance, so on top of the task rules
/// a heap leak needs its floor to rise by a few periods, at `min_rises` samples at least (each
/// sampled object a leak keeps is one rise), and to keep what it took: sampled objects of a leak
/// are never freed, so a site that gave back more than `max_give_back` of its net gain between
/// samples is churning, `growing` at most.
///
/// The give-back rule is what tells a bounded cache from a leak. A cache that fills and then
/// evicts as it inserts (a pool warming up, the leak lab's fixed twin) keeps drawing new sampled
/// objects and dropping old ones, so its estimate climbs by chance as often as a small leak's; it
/// also falls now and then, which a leak's never does. Watched from the cache's first second
/// (its fill-up inside the window), allowing half the gain back read `leak` in 1.5% of simulated
/// 30 s watches; 15% reads it in 0.1%, and a 16 MiB cache that fills for 64 s of a 120 s watch
/// went from 49% to 2%. The price: a site whose leak shares its line with churn (a leaked entry
/// and a freed scratch buffer from one call) reads `growing` until its churn is under 15% of
/// its net gain.
#[derive(Debug, Clone, PartialEq)]
pub struct HeapNoise {
    /// Growth below this many periods per minute is `stable`, whatever `--threshold` says.
    pub growth_periods_per_min: f64,
    /// A site's floor must rise by this many periods over the window before it can read `leak`.
    pub min_rise_periods: u64,
    /// Fewest samples at which the floor rose.
    pub min_rises: usize,
    /// Largest share of its net gain a leaking site may give back (the sum of its falls between
    /// samples over `last - first`).
    pub max_give_back: f64,
}

impl Default for HeapNoise {
    /// One period per minute; a rise of 4 periods (2 MiB at the default period) over 5 samples
    /// at least; 15% of the gain given back at most.
    fn default() -> Self {
        HeapNoise {
            growth_periods_per_min: 1.0,
            min_rise_periods: 4,
            min_rises: 5,
            max_give_back: 0.15,
        }
    }
}

impl HeapNoise {
    /// The analysis options for a period of `period_bytes`: the growth threshold is the larger of
    /// `threshold_per_min` (bytes per minute) and the noise floor, and the rising-floor rule needs
    /// a rise of [`HeapNoise::min_rise_periods`] periods.
    pub fn options(&self, threshold_per_min: f64, period_bytes: u64) -> Options {
        let mut options = Options::default();
        let noise = self.growth_periods_per_min * period_bytes as f64;
        options.threshold_per_min = threshold_per_min.max(noise);
        options.rules.floor.min_rise = self.min_rise_periods.saturating_mul(period_bytes).max(1);
        options.rules.rises.min_rises = self.min_rises;
        options
    }

    /// Whether a series kept what it gained (see [`HeapNoise::max_give_back`]), and why not.
    pub fn kept(&self, points: &[Point]) -> Result<(), String> {
        let (Some(first), Some(last)) = (points.first(), points.last()) else {
            return Ok(());
        };
        let given_back: u64 = points
            .windows(2)
            .map(|w| w[0].live.saturating_sub(w[1].live))
            .sum();
        let net = last.live.saturating_sub(first.live);
        if given_back as f64 <= self.max_give_back * net as f64 {
            Ok(())
        } else {
            Err(format!(
                "gave back {} between samples for a net gain of {}: churn, not (yet) a leak",
                bytes(given_back),
                bytes(net)
            ))
        }
    }
}

/// The judged heap watch: the analysis (bytes where tasks would be) and each site's details from
/// the last sample it appeared in.
#[derive(Debug, Clone, PartialEq)]
pub struct HeapAnalysis {
    /// Per site, largest growth first; `live` is bytes in use.
    pub analysis: Analysis,
    /// The sampling period the noise floor used (the last sample's).
    pub period_bytes: u64,
    /// Each site's function, objects and heaviest stack, from the last sample that had it.
    pub details: BTreeMap<String, HeapSite>,
}

impl HeapAnalysis {
    /// The `diagtool.watch/v1` document of kind `heap`.
    pub fn to_report(&self, target: &str, errors: u64) -> WatchReport {
        let mut report = self.analysis.to_report(target, errors);
        report.kind = WatchKind::Heap;
        for row in &mut report.sites {
            row.inuse_bytes = Some(row.live);
            if let Some(detail) = self.details.get(&row.site) {
                row.function = Some(detail.function.clone());
                row.stack = detail.stack.clone();
                row.inuse_objects = Some(if row.live == 0 {
                    0
                } else {
                    u64::try_from(detail.inuse_objects).unwrap_or(0)
                });
            }
        }
        report
    }

    /// The details of `site`, if any sample had it.
    pub fn detail(&self, site: &str) -> Option<&HeapSite> {
        self.details.get(site)
    }
}

/// Judges a sequence of heap samples of one target, in the order they were taken.
/// `threshold_per_min` is in bytes per minute; the noise floor of `noise` applies on top.
///
/// # Examples
/// ```
/// use diagtool_model::Overall;
/// use diagtool_model::analysis::heap::{HeapNoise, HeapSample, HEAP_SAMPLE_SCHEMA, analyze_heap};
/// use diagtool_model::heap::HeapSite;
///
/// // A cache that keeps 1 MiB more every 2 s and never evicts.
/// let samples: Vec<HeapSample> = (0..16u64)
///     .map(|i| HeapSample {
///         schema: HEAP_SAMPLE_SCHEMA.into(),
///         taken_at_ms: 2_000 * i,
///         period_bytes: 524_288,
///         sites: vec![HeapSite {
///             site: "app/src/cache.rs:42".into(),
///             function: "app::cache::fill".into(),
///             inuse_bytes: (1 << 20) * (i as i64 + 1),
///             inuse_objects: i as i64 + 1,
///             stack: vec![],
///         }],
///     })
///     .collect();
/// let judged = analyze_heap(&samples, 0.0, &HeapNoise::default());
/// assert_eq!(judged.analysis.verdict(), Overall::Leak);
/// ```
pub fn analyze_heap(
    samples: &[HeapSample],
    threshold_per_min: f64,
    noise: &HeapNoise,
) -> HeapAnalysis {
    let period_bytes = samples
        .last()
        .map_or(DEFAULT_PERIOD_BYTES, |s| s.period_bytes.max(1));
    let options = noise.options(threshold_per_min, period_bytes);
    let origin = samples.first().map_or(0, |s| s.taken_at_ms);
    let times: Vec<f64> = samples
        .iter()
        .map(|s| s.taken_at_ms.saturating_sub(origin) as f64 / 1000.0)
        .collect();
    let names: BTreeSet<&str> = samples
        .iter()
        .flat_map(|s| s.sites.iter().map(|site| site.site.as_str()))
        .collect();
    let mut details: BTreeMap<String, HeapSite> = BTreeMap::new();
    for sample in samples {
        for site in &sample.sites {
            details.insert(site.site.clone(), site.clone());
        }
    }
    let mut judged: Vec<(SiteGrowth, SiteSeries)> = names
        .into_iter()
        .map(|name| {
            let points = samples
                .iter()
                .zip(&times)
                .map(|(sample, &t_s)| Point {
                    t_s,
                    live: sample
                        .sites
                        .iter()
                        .find(|s| s.site == name)
                        .map_or(0, |s| u64::try_from(s.inuse_bytes).unwrap_or(0)),
                    oldest_age_s: 0.0,
                    median_age_s: 0.0,
                })
                .collect();
            let series = SiteSeries {
                site: name.to_owned(),
                points,
            };
            let mut growth = judge(&series, &options);
            if growth.row.verdict == Verdict::Leak
                && let Err(why) = noise.kept(&series.points)
            {
                growth.row.verdict = Verdict::Growing;
                growth.why = why;
            }
            growth.why = readable_why(&series, &growth.why);
            (growth, series)
        })
        .collect();
    judged.sort_by(|(a, _), (b, _)| {
        b.row
            .growth_per_min
            .total_cmp(&a.row.growth_per_min)
            .then(b.row.live.cmp(&a.row.live))
            .then(a.row.site.cmp(&b.row.site))
    });
    let totals: Vec<f64> = samples.iter().map(|s| s.inuse_bytes() as f64).collect();
    let minutes: Vec<f64> = times.iter().map(|t| t / 60.0).collect();
    let total = WatchTotal {
        first: samples.first().map_or(0, HeapSample::inuse_bytes),
        last: samples.last().map_or(0, HeapSample::inuse_bytes),
        growth_per_min: round2(least_squares(&minutes, &totals).slope),
    };
    let (sites, series) = judged.into_iter().unzip();
    HeapAnalysis {
        analysis: Analysis {
            samples: samples.len(),
            analysed: samples.len(),
            span_s: times.last().copied().unwrap_or(0.0),
            restarts: Vec::new(),
            total,
            sites,
            series,
            threshold_per_min: options.threshold_per_min,
        },
        period_bytes,
        details,
    }
}

/// The rules quote their figures as plain integers (tasks); in bytes those read badly, so the
/// reason starts with the site's first and last in-use bytes, and the age rule, which has nothing
/// to say about memory, is left out.
fn readable_why(series: &SiteSeries, why: &str) -> String {
    let (Some(first), Some(last)) = (series.points.first(), series.points.last()) else {
        return why.to_owned();
    };
    let kept: Vec<&str> = why
        .split("; ")
        .filter(|part| *part != "no age figures")
        .collect();
    format!(
        "{} → {} in use; {}",
        bytes(first.live),
        bytes(last.live),
        kept.join("; ")
    )
}

#[cfg(test)]
#[path = "heap_tests.rs"]
mod tests;
