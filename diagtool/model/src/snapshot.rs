//! `diagtool.snapshot/v1`: live tasks grouped by spawn site, with process and runtime figures.

use serde::{Deserialize, Serialize};

use super::SchemaError;

/// The schema string of a [`Snapshot`].
pub const SNAPSHOT_SCHEMA: &str = "diagtool.snapshot/v1";

/// One look at a service's tasks, served at `GET /debug/tasks`.
///
/// Invariants: `sites` is sorted by `live`, largest first, and the sum of `sites[].live` equals
/// `tasks.live`.
///
/// # Examples
/// ```
/// use diagtool_model::Snapshot;
/// let text = r#"{"schema":"diagtool.snapshot/v1","service":"shipper","taken_at_ms":1,"uptime_s":1.0,
///   "process":{"pid":1,"rss_bytes":0,"open_fds":3,"threads":1},
///   "runtime":{"workers":2,"alive_tasks":0,"global_queue_depth":0},
///   "tasks":{"live":0,"spawned_total":0,"terminated_total":0},"sites":[]}"#;
/// let snap = Snapshot::from_json(text).unwrap();
/// assert_eq!(snap.service, "shipper");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Always [`SNAPSHOT_SCHEMA`].
    pub schema: String,
    /// The service's name, as its probe was configured.
    pub service: String,
    /// When the snapshot was taken, in milliseconds since the Unix epoch, by the target's clock.
    pub taken_at_ms: u64,
    /// Seconds since the probe started; going backwards means the target restarted.
    pub uptime_s: f64,
    /// Figures of the whole process, read from `/proc`.
    pub process: ProcessStats,
    /// Figures of the tokio runtime.
    pub runtime: RuntimeStats,
    /// Task totals over all sites.
    pub tasks: TaskTotals,
    /// Per spawn site, largest `live` first.
    pub sites: Vec<SiteStats>,
    /// One entry per live task; present only when asked for (`?debug=2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_detail: Option<Vec<TaskDetail>>,
}

impl Snapshot {
    /// Parses a snapshot, refusing any other schema by name.
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        super::parse_versioned(text, SNAPSHOT_SCHEMA)
    }
}

/// Process figures from `/proc/self`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStats {
    /// The process id.
    pub pid: u32,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// OS threads.
    pub threads: u64,
}

/// Runtime figures from tokio's `RuntimeMetrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeStats {
    /// Worker threads.
    pub workers: u64,
    /// Tasks alive in the runtime, as tokio counts them (includes tasks the registry did not see).
    pub alive_tasks: u64,
    /// Tasks waiting in the global (injection) queue.
    pub global_queue_depth: u64,
    /// Polls that took 10 ms or more since the runtime started (each held its worker, and every
    /// task queued behind it, that long). Absent when the runtime has no poll-time histogram.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_polls: Option<u64>,
}

/// Task totals over every spawn site.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskTotals {
    /// Tasks alive now.
    pub live: u64,
    /// Tasks spawned since the probe started.
    pub spawned_total: u64,
    /// Tasks that ended since the probe started.
    pub terminated_total: u64,
}

/// The tasks of one spawn site.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteStats {
    /// `path:line:col` of the spawn call; a dependency's path is shortened to `crate-version/src/...`.
    pub site: String,
    /// Tasks from this site alive now.
    pub live: u64,
    /// Tasks spawned from this site since the probe started.
    pub spawned_total: u64,
    /// Tasks from this site that ended.
    pub terminated_total: u64,
    /// Age of the oldest live task, in seconds (0 when none is live).
    pub oldest_age_s: f64,
    /// Median age of the live tasks, in seconds (0 when none is live).
    pub median_age_s: f64,
    /// Distinct task names seen at this site (from the supervisor), sorted.
    #[serde(default)]
    pub names: Vec<String>,
}

/// One live task, in a `?debug=2` snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    /// tokio's task id (the same id a task dump shows).
    pub id: u64,
    /// The spawn site, as in [`SiteStats::site`].
    pub site: String,
    /// The task's name, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seconds since the task was spawned.
    pub age_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = r#"{"schema":"diagtool.snapshot/v1","service":"shipper","taken_at_ms":1764270000000,"uptime_s":12.5,"process":{"pid":1234,"rss_bytes":12345678,"open_fds":23,"threads":5},"runtime":{"workers":2,"alive_tasks":40,"global_queue_depth":0},"tasks":{"live":40,"spawned_total":1000,"terminated_total":960},"sites":[{"site":"shipper/src/leaklab.rs:88:17","live":16,"spawned_total":16,"terminated_total":0,"oldest_age_s":29.9,"median_age_s":15.0,"names":["leak-poll"]}],"tasks_detail":[{"id":77,"site":"shipper/src/leaklab.rs:88:17","name":"leak-poll","age_s":3.2}]}"#;

    #[test]
    fn golden_snapshot_round_trips_byte_for_byte() {
        let snap = Snapshot::from_json(GOLDEN).expect("golden parses");
        assert_eq!(snap.sites[0].live, 16);
        assert_eq!(serde_json::to_string(&snap).expect("serialises"), GOLDEN);
    }

    #[test]
    fn future_schema_is_refused_by_name() {
        let text = GOLDEN.replace("snapshot/v1", "snapshot/v2");
        let err = Snapshot::from_json(&text).expect_err("v2 must be refused");
        assert!(err.to_string().contains("diagtool.snapshot/v2"), "{err}");
    }

    #[test]
    fn other_document_kind_is_refused() {
        let err = Snapshot::from_json(r#"{"schema":"diagtool.dump/v1","tasks":[]}"#)
            .expect_err("a dump is not a snapshot");
        assert!(matches!(err, SchemaError::Unsupported { .. }));
        let err = Snapshot::from_json("<html>").expect_err("html is not a snapshot");
        assert!(matches!(err, SchemaError::Malformed { .. }));
    }
}
