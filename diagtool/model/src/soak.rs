//! `diagtool.soak/v1`: the verdict of one `diagtool soak` run, printed as the last line of stdout.
//!
//! `passed` is true exactly when `failures` is empty; each failure is one sentence with figures.
//! `leaks` lists the spawn sites the growth analysis judged `leak`, largest growth first.

use serde::{Deserialize, Serialize};

use super::SchemaError;

/// The schema string of a [`SoakReport`].
pub const SOAK_SCHEMA: &str = "diagtool.soak/v1";

/// The result of a soak run.
///
/// # Examples
/// ```
/// use diagtool_model::SoakReport;
/// let text = r#"{"schema":"diagtool.soak/v1","profile":"steady","passed":true,"duration_s":60.0,
///  "lines_written":10,"lines_delivered":10,"duplicates":0,"tasks_growth_per_min":0.0,
///  "rss_growth_mib_per_min":0.01,"fds_growth_per_min":0.0,"leaks":[],"failures":[]}"#;
/// let report = SoakReport::from_json(text).unwrap();
/// assert!(report.passed);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoakReport {
    /// Always [`SOAK_SCHEMA`].
    pub schema: String,
    /// The profile's name.
    pub profile: String,
    /// Whether every check passed.
    pub passed: bool,
    /// Seconds the generator wrote for (the profile's duration, scaled by `--duration`).
    pub duration_s: f64,
    /// Lines written by the generator.
    pub lines_written: u64,
    /// Distinct written lines the receiver got intact.
    pub lines_delivered: u64,
    /// Lines the receiver got more than once (extra copies).
    pub duplicates: u64,
    /// Least-squares growth of all live tasks, per minute.
    pub tasks_growth_per_min: f64,
    /// Robust growth of the shipper's RSS after the warm-up, MiB per minute.
    pub rss_growth_mib_per_min: f64,
    /// Robust growth of the shipper's open file descriptors after the warm-up, per minute.
    pub fds_growth_per_min: f64,
    /// Spawn sites judged to leak.
    pub leaks: Vec<SoakLeak>,
    /// One sentence per failed check; empty when `passed`.
    pub failures: Vec<String>,
    /// Polls of 10 ms or more in the shipper's runtime over the run (each held a worker that
    /// long); absent when the shipper records no poll-time histogram.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_polls: Option<u64>,
}

impl SoakReport {
    /// Parses a soak document, refusing any other schema by name.
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        super::parse_versioned(text, SOAK_SCHEMA)
    }
}

/// A spawn site judged to leak during a soak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoakLeak {
    /// `path:line:col` of the spawn call.
    pub site: String,
    /// Least-squares growth, tasks per minute.
    pub growth_per_min: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = r#"{"schema":"diagtool.soak/v1","profile":"steady","passed":true,"duration_s":60.0,"lines_written":120000,"lines_delivered":120000,"duplicates":0,"tasks_growth_per_min":0.0,"rss_growth_mib_per_min":0.01,"fds_growth_per_min":0.0,"leaks":[{"site":"...","growth_per_min":32.0}],"failures":["..."]}"#;

    #[test]
    fn contract_example_round_trips_byte_for_byte() {
        let report = SoakReport::from_json(GOLDEN).expect("contract example parses");
        assert_eq!(report.leaks[0].growth_per_min, 32.0);
        assert_eq!(serde_json::to_string(&report).expect("serialises"), GOLDEN);
    }

    #[test]
    fn other_schemas_are_refused() {
        let err = SoakReport::from_json(&GOLDEN.replace("soak/v1", "soak/v2")).expect_err("v2");
        assert!(err.to_string().contains("diagtool.soak/v2"), "{err}");
    }
}
