//! The JSON documents the probe serves and the CLI reads and writes: the contract.
//!
//! Every document carries a `schema` string (`diagtool.<kind>/v<N>`). Readers accept the version
//! they know and refuse any other with [`SchemaError`], so a newer target never gets misread.
//! These are plain serde types: no tokio, no rendering. Beside them, what both sides of the
//! wire share: the growth [`analysis`], the [`pprof`] codec and Loki's push format ([`loki`]).
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod analysis;
pub mod duration;
pub mod heap;
pub mod loki;
pub mod pprof;
pub mod text;

mod diff;
mod dump;
mod snapshot;
mod soak;
mod watch;

pub use diff::{DIFF_SCHEMA, DiffTotal, SiteDiff, SnapshotDiff};
pub use dump::{DUMP_SCHEMA, Dump, DumpGroup, DumpTask, NotTraced, group_tasks, sort_groups};
pub use snapshot::{
    ProcessStats, RuntimeStats, SNAPSHOT_SCHEMA, SiteStats, Snapshot, TaskDetail, TaskTotals,
};
pub use soak::{SOAK_SCHEMA, SoakLeak, SoakReport};
pub use watch::{
    Overall, Restart, Step, UnreachableInstance, Verdict, WATCH_SCHEMA, WatchKind, WatchReport,
    WatchSite, WatchTotal,
};

/// A document whose `schema` is missing or not the one this build reads.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The text is not JSON of the expected shape.
    #[error("not a {expected} document: {source}")]
    Malformed {
        /// The schema that was expected.
        expected: &'static str,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// The document names another schema (another kind, or a version this build does not know).
    #[error(
        "unsupported schema {found:?}: this diagtool reads {expected:?}; upgrade diagtool or check the file"
    )]
    Unsupported {
        /// The schema that was expected.
        expected: &'static str,
        /// The schema the document names.
        found: String,
    },
}

/// Parses a document after checking its `schema` field, so a future version is refused by name
/// instead of failing on some renamed field.
pub(crate) fn parse_versioned<T: serde::de::DeserializeOwned>(
    text: &str,
    expected: &'static str,
) -> Result<T, SchemaError> {
    #[derive(serde::Deserialize)]
    struct Head {
        schema: Option<String>,
    }
    let head: Head =
        serde_json::from_str(text).map_err(|source| SchemaError::Malformed { expected, source })?;
    match head.schema {
        Some(found) if found == expected => {
            serde_json::from_str(text).map_err(|source| SchemaError::Malformed { expected, source })
        }
        found => Err(SchemaError::Unsupported {
            expected,
            found: found.unwrap_or_else(|| "<none>".to_owned()),
        }),
    }
}
