//! `diagtool.diff/v1`: per-site differences between two snapshots, like `go tool pprof -diff_base`.
//!
//! `sites` is sorted by `delta`, largest growth first. When the target restarted between the two
//! snapshots, `restarted` is true and the counter deltas compare two different processes.

use serde::{Deserialize, Serialize};

use super::SchemaError;

/// The schema string of a [`SnapshotDiff`].
pub const DIFF_SCHEMA: &str = "diagtool.diff/v1";

/// What changed between a base snapshot and a newer one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotDiff {
    /// Always [`DIFF_SCHEMA`].
    pub schema: String,
    /// `taken_at_ms` of the base snapshot.
    pub base_taken_at_ms: u64,
    /// `taken_at_ms` of the new snapshot.
    pub new_taken_at_ms: u64,
    /// Seconds from base to new, by the target's clock (negative if the clock went back).
    pub span_s: f64,
    /// True when the new snapshot's uptime is below the base's: the target restarted in between.
    pub restarted: bool,
    /// Live tasks over all sites.
    pub total: DiffTotal,
    /// Per site present in either snapshot, largest growth first.
    pub sites: Vec<SiteDiff>,
}

impl SnapshotDiff {
    /// Parses a diff document, refusing any other schema by name.
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        super::parse_versioned(text, DIFF_SCHEMA)
    }
}

/// Live tasks over all sites, base and new.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiffTotal {
    /// Live tasks in the base snapshot.
    pub base: u64,
    /// Live tasks in the new snapshot.
    pub new: u64,
    /// `new - base`.
    pub delta: i64,
}

/// One site's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteDiff {
    /// The spawn site.
    pub site: String,
    /// Live tasks in the base snapshot (0 when absent there).
    pub base_live: u64,
    /// Live tasks in the new snapshot (0 when absent there).
    pub new_live: u64,
    /// `new_live - base_live`.
    pub delta: i64,
    /// Tasks spawned from this site between the two snapshots.
    pub spawned: i64,
    /// Tasks from this site that ended between the two snapshots.
    pub terminated: i64,
    /// Age of the site's oldest live task in the new snapshot, in seconds.
    pub oldest_age_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = r#"{"schema":"diagtool.diff/v1","base_taken_at_ms":1000,"new_taken_at_ms":31000,"span_s":30.0,"restarted":false,"total":{"base":4,"new":20,"delta":16},"sites":[{"site":"a.rs:1:1","base_live":0,"new_live":16,"delta":16,"spawned":16,"terminated":0,"oldest_age_s":29.5}]}"#;

    #[test]
    fn golden_diff_round_trips_byte_for_byte() {
        let diff = SnapshotDiff::from_json(GOLDEN).expect("golden parses");
        assert_eq!(diff.sites[0].delta, 16);
        assert_eq!(serde_json::to_string(&diff).expect("serialises"), GOLDEN);
    }
}
