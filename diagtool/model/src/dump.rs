//! `diagtool.dump/v1`: where each task is parked, joined to its spawn site.

use serde::{Deserialize, Serialize};

use super::SchemaError;

/// The schema string of a [`Dump`].
pub const DUMP_SCHEMA: &str = "diagtool.dump/v1";

/// A task dump, served at `GET /debug/tasks/dump`.
///
/// `groups` gathers tasks with the same site and the same trace, largest group first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dump {
    /// Always [`DUMP_SCHEMA`].
    pub schema: String,
    /// When the dump was taken, in milliseconds since the Unix epoch, by the target's clock.
    pub taken_at_ms: u64,
    /// One entry per traced task.
    pub tasks: Vec<DumpTask>,
    /// Tasks grouped by identical site and trace, largest first.
    pub groups: Vec<DumpGroup>,
    /// How the dump was taken: `self` (tasks traced themselves; the default, never stops the
    /// runtime) or `global` (tokio's stop-the-world dump, opt-in). Absent in older dumps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// How many listed tasks were not traced, by reason (`self` dumps only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_traced: Option<NotTraced>,
}

/// Counts of the tasks a dump lists without a trace, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotTraced {
    /// Spawned without the probe's wrapper (plain `tokio::spawn`), or not parked yet.
    pub unwrapped: u64,
    /// Wrapped, but no answer within the dump's timeout (a long poll, a blocked worker).
    pub no_answer: u64,
}

impl Dump {
    /// Parses a dump, refusing any other schema by name.
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        super::parse_versioned(text, DUMP_SCHEMA)
    }

    /// The dump's groups; when it carries none (a trimmed or hand-made document), grouped here
    /// from its tasks.
    pub fn groups_or_grouped(&self) -> Vec<DumpGroup> {
        if self.groups.is_empty() {
            group_tasks(&self.tasks)
        } else {
            self.groups.clone()
        }
    }
}

/// Groups tasks by identical site and trace, largest group first (ties by site, then trace): the
/// one grouping the probe serves and the CLI falls back to.
///
/// # Examples
/// ```
/// use diagtool_model::{DumpTask, group_tasks};
/// let task = |id, site: &str| DumpTask { id, site: site.into(), name: None, age_s: 1.0,
///     trace: vec!["wait at a.rs:1".into()], not_traced: None };
/// let groups = group_tasks(&[task(1, "a.rs:9:1"), task(2, "b.rs:9:1"), task(3, "b.rs:9:1")]);
/// assert_eq!((groups[0].count, groups[0].site.as_str()), (2, "b.rs:9:1"));
/// ```
pub fn group_tasks(tasks: &[DumpTask]) -> Vec<DumpGroup> {
    let mut counts: std::collections::HashMap<(&str, &[String]), u64> =
        std::collections::HashMap::new();
    for task in tasks {
        *counts
            .entry((task.site.as_str(), task.trace.as_slice()))
            .or_insert(0) += 1;
    }
    let mut groups: Vec<DumpGroup> = counts
        .into_iter()
        .map(|((site, trace), count)| DumpGroup {
            count,
            site: site.to_owned(),
            trace: trace.to_vec(),
        })
        .collect();
    sort_groups(&mut groups);
    groups
}

/// Largest group first (ties by site, then trace).
pub fn sort_groups(groups: &mut [DumpGroup]) {
    groups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.site.cmp(&b.site))
            .then_with(|| a.trace.cmp(&b.trace))
    });
}

/// One traced task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpTask {
    /// tokio's task id.
    pub id: u64,
    /// The spawn site, or `"<unknown>"` for a task the registry never saw spawn.
    pub site: String,
    /// The task's name, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seconds since the task was spawned (0 when unknown).
    pub age_s: f64,
    /// The await trace of the task's last poll, outermost frame first, leaf last. For a task
    /// not traced, one line saying why.
    pub trace: Vec<String>,
    /// Why the task was not traced (`unwrapped` or `no_answer`); absent when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_traced: Option<String>,
}

/// Tasks sharing a site and a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpGroup {
    /// How many tasks share this site and trace.
    pub count: u64,
    /// The spawn site.
    pub site: String,
    /// The shared trace, outermost frame first.
    pub trace: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = r#"{"schema":"diagtool.dump/v1","taken_at_ms":1764270000000,"tasks":[{"id":77,"site":"shipper/src/leaklab.rs:88:17","name":"leak-poll","age_s":3.2,"trace":["shipper::leaklab::park","tokio::sync::oneshot::Receiver::poll"]}],"groups":[{"count":1,"site":"shipper/src/leaklab.rs:88:17","trace":["shipper::leaklab::park","tokio::sync::oneshot::Receiver::poll"]}]}"#;

    #[test]
    fn golden_dump_round_trips_byte_for_byte() {
        let dump = Dump::from_json(GOLDEN).expect("golden parses");
        assert_eq!(dump.groups[0].count, 1);
        assert_eq!(serde_json::to_string(&dump).expect("serialises"), GOLDEN);
    }
}
