//! `diagtool.watch/v1`: what `diagtool watch` concluded about a target's task growth, or with
//! `--heap` about its in-use heap memory.
//!
//! One document per watch, printed at the end with `--json` and kept as `summary.json` in a
//! `--record` directory. `sites` is sorted by `growth_per_min`, largest first; `verdict` is `leak`
//! when any site's verdict is `leak`, else `ok`. `kind` says what the figures count: `tasks` (live
//! tasks per spawn site) or `heap` (in-use bytes per allocation site); a document written before
//! `kind` existed is a task watch.

use serde::{Deserialize, Serialize};

use super::SchemaError;

/// The schema string of a [`WatchReport`].
pub const WATCH_SCHEMA: &str = "diagtool.watch/v1";

/// The summary of one watch.
///
/// # Examples
/// ```
/// use diagtool_model::{Overall, WatchReport};
/// let text = r#"{"schema":"diagtool.watch/v1","target":"http://127.0.0.1:6060","samples":3,
///   "span_s":60.0,"verdict":"ok","total":{"first":4,"last":4,"growth_per_min":0.0},"sites":[]}"#;
/// let report = WatchReport::from_json(text).unwrap();
/// assert_eq!(report.verdict, Overall::Ok);
/// assert_eq!(report.errors, 0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchReport {
    /// Always [`WATCH_SCHEMA`].
    pub schema: String,
    /// What was watched: tasks per spawn site, or heap bytes per allocation site. Absent in
    /// documents older than heap watches, which are task watches.
    #[serde(default)]
    pub kind: WatchKind,
    /// The target's base URL.
    pub target: String,
    /// Snapshots taken successfully.
    pub samples: u64,
    /// Seconds between the first and the last analysed sample, by the target's clock.
    pub span_s: f64,
    /// `leak` when any site leaks, else `ok`.
    pub verdict: Overall,
    /// Live tasks over all sites.
    pub total: WatchTotal,
    /// Per spawn site, largest growth first.
    pub sites: Vec<WatchSite>,
    /// Samples that failed (unreachable, timed out, bad answer) and were retried.
    #[serde(default)]
    pub errors: u64,
    /// Restarts of the target seen during the watch (uptime going backwards); the analysis covers
    /// only the samples since the last one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<Restart>,
    /// The growth threshold the verdicts used, in tasks per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_per_min: Option<f64>,
    /// In a fleet watch, the instances that never answered (a row each in the table); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<UnreachableInstance>,
}

/// An instance of a fleet watch that never answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnreachableInstance {
    /// `host:port` of the target.
    pub instance: String,
    /// The last error.
    pub error: String,
}

impl WatchReport {
    /// Parses a watch document, refusing any other schema by name.
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        super::parse_versioned(text, WATCH_SCHEMA)
    }
}

/// What a watch counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchKind {
    /// Live tasks per spawn site (`/debug/tasks`): `live`, `delta` and `growth_per_min` count
    /// tasks.
    #[default]
    Tasks,
    /// In-use heap memory per allocation site (`/debug/pprof/heap`): `live`, `delta` and
    /// `growth_per_min` count bytes, and each site carries `inuse_bytes`, `inuse_objects`,
    /// `function` and `stack`.
    Heap,
}

impl WatchKind {
    /// The lowercase name used in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchKind::Tasks => "tasks",
            WatchKind::Heap => "heap",
        }
    }
}

/// The overall verdict of a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overall {
    /// No site leaks.
    Ok,
    /// At least one site leaks.
    Leak,
}

/// The verdict on one spawn site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The floor of live tasks keeps rising: tasks are spawned and never end.
    Leak,
    /// Live tasks grow faster than the threshold, without (yet) the signs of a leak.
    Growing,
    /// No growth beyond the threshold, or growth that reached a plateau.
    Stable,
    /// Live tasks fall faster than the threshold.
    Shrinking,
}

impl Verdict {
    /// The lowercase name used in tables and documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Leak => "leak",
            Verdict::Growing => "growing",
            Verdict::Stable => "stable",
            Verdict::Shrinking => "shrinking",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Live tasks over all sites: first and last analysed sample, and the fitted growth.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchTotal {
    /// Live tasks at the first analysed sample.
    pub first: u64,
    /// Live tasks at the last sample.
    pub last: u64,
    /// Least-squares growth of the total, in tasks per minute.
    pub growth_per_min: f64,
}

/// The growth of one spawn site over the watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchSite {
    /// `path:line:col` of the spawn call.
    pub site: String,
    /// Live tasks at the last sample.
    pub live: u64,
    /// Live tasks at the last sample minus those at the first analysed sample.
    pub delta: i64,
    /// Least-squares growth, in tasks per minute.
    pub growth_per_min: f64,
    /// How well a straight line explains the series (0..1; 0 for a flat series).
    pub r2: f64,
    /// The regular step, such as 16 tasks every 30 s; `null` where none shows.
    pub step: Option<Step>,
    /// Age of the oldest live task at the last sample, in seconds.
    pub oldest_age_s: f64,
    /// The verdict on this site.
    pub verdict: Verdict,
    /// Theil-Sen growth (median of pairwise slopes, insensitive to bursts), in tasks per minute.
    #[serde(default)]
    pub robust_growth_per_min: f64,
    /// In a fleet watch, the instance this row is about: the target URL's `host:port`, or
    /// Prometheus's `instance` label. Absent in a single-target watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// In a heap watch, the bytes in use from this site at the last sample (the same figure as
    /// `live`, named for what it is). Absent in a task watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inuse_bytes: Option<u64>,
    /// In a heap watch, the objects in use from this site at the last sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inuse_objects: Option<u64>,
    /// In a heap watch, the function at the allocation site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// In a heap watch, the heaviest stack through the site, outermost first, each
    /// `function at file:line`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
}

/// A regular step in a site's live count: `size` tasks every `every_s` seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Tasks added by each step (negative for a regular fall).
    pub size: i64,
    /// Seconds between steps.
    pub every_s: f64,
}

impl std::fmt::Display for Step {
    /// Formats as `+16/30s`, `+2/500ms`, `+3/2m`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:+}/{}", self.size, format_period(self.every_s))
    }
}

/// A short human period: `500ms`, `30s`, `2.5s`, `2m`, `1h`.
fn format_period(secs: f64) -> String {
    if secs < 1.0 {
        format!("{}ms", (secs * 1000.0).round())
    } else if secs < 120.0 {
        let rounded = (secs * 10.0).round() / 10.0;
        if rounded.fract() == 0.0 {
            format!("{rounded:.0}s")
        } else {
            format!("{rounded:.1}s")
        }
    } else if secs < 7200.0 {
        format!("{:.0}m", secs / 60.0)
    } else {
        format!("{:.0}h", secs / 3600.0)
    }
}

/// A restart of the target seen between two samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    /// Index (0-based) of the first sample after the restart.
    pub sample: u64,
    /// That sample's `taken_at_ms`.
    pub taken_at_ms: u64,
    /// Its `uptime_s`, smaller than the sample before.
    pub uptime_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = r#"{"schema":"diagtool.watch/v1","kind":"tasks","target":"http://127.0.0.1:6060","samples":12,"span_s":60.0,"verdict":"leak","total":{"first":40,"last":72,"growth_per_min":32.0},"sites":[{"site":"shipper/src/leaklab.rs:88:17","live":32,"delta":32,"growth_per_min":32.0,"r2":0.97,"step":{"size":16,"every_s":30.0},"oldest_age_s":60.1,"verdict":"leak","robust_growth_per_min":32.0}],"errors":1}"#;

    #[test]
    fn golden_watch_round_trips_byte_for_byte() {
        let report = WatchReport::from_json(GOLDEN).expect("golden parses");
        assert_eq!(report.verdict, Overall::Leak);
        assert_eq!(report.sites[0].verdict, Verdict::Leak);
        assert_eq!(serde_json::to_string(&report).expect("serialises"), GOLDEN);
    }

    #[test]
    fn a_document_without_kind_is_a_task_watch() {
        let old = GOLDEN.replace(r#""kind":"tasks","#, "");
        let report = WatchReport::from_json(&old).expect("a document without kind parses");
        assert_eq!(report.kind, WatchKind::Tasks);
        assert!(report.sites[0].inuse_bytes.is_none());
    }

    #[test]
    fn a_heap_watch_round_trips_with_its_site_details() {
        let text = r#"{"schema":"diagtool.watch/v1","kind":"heap","target":"http://127.0.0.1:6060","samples":16,"span_s":30.0,"verdict":"leak","total":{"first":1048576,"last":9437184,"growth_per_min":16777216.0},"sites":[{"site":"shipper/src/leaklab.rs:120","live":8388608,"delta":8388608,"growth_per_min":16777216.0,"r2":0.99,"step":null,"oldest_age_s":0.0,"verdict":"leak","robust_growth_per_min":16777216.0,"inuse_bytes":8388608,"inuse_objects":32,"function":"shipper::leaklab::memory_cache_insert","stack":["shipper::main at shipper/src/main.rs:10","shipper::leaklab::memory_cache_insert at shipper/src/leaklab.rs:120"]}],"errors":0}"#;
        let report = WatchReport::from_json(text).expect("heap document parses");
        assert_eq!(report.kind, WatchKind::Heap);
        assert_eq!(report.sites[0].inuse_objects, Some(32));
        assert_eq!(serde_json::to_string(&report).expect("serialises"), text);
    }

    #[test]
    fn contract_example_without_extensions_parses() {
        let text = r#"{"schema":"diagtool.watch/v1","target":"...","samples":12,"span_s":60.0,"verdict":"leak",
 "total":{"first":40,"last":72,"growth_per_min":32.0},
 "sites":[{"site":"...","live":32,"delta":32,"growth_per_min":32.0,"r2":0.97,
           "step":{"size":16,"every_s":30.0},"oldest_age_s":60.1,"verdict":"leak"}]}"#;
        let report = WatchReport::from_json(text).expect("contract example parses");
        assert_eq!(report.sites[0].step.as_ref().map(|s| s.size), Some(16));
    }

    #[test]
    fn step_formats_like_the_contract() {
        let step = |size, every_s| Step { size, every_s }.to_string();
        assert_eq!(step(16, 30.0), "+16/30s");
        assert_eq!(step(2, 1.0), "+2/1s");
        assert_eq!(step(2, 0.5), "+2/500ms");
        assert_eq!(step(-4, 2.5), "-4/2.5s");
        assert_eq!(step(3, 120.0), "+3/2m");
    }

    #[test]
    fn future_watch_schema_is_refused() {
        let err = WatchReport::from_json(&GOLDEN.replace("watch/v1", "watch/v9"))
            .expect_err("v9 refused");
        assert!(err.to_string().contains("diagtool.watch/v9"), "{err}");
    }
}
