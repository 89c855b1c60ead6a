//! `[[sources]]`: what to read. Every kind shares the options after its own (`read_from`,
//! `labels`, `max_line_bytes`, `poll_interval`), resolved once in [`Common::resolve`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::resolve::Resolver;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum SourceFile {
    File {
        include: Vec<String>,
        #[serde(default)]
        exclude: Vec<String>,
        read_from: Option<String>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        max_line_bytes: Option<usize>,
        poll_interval: Option<String>,
    },
    Docker {
        path: PathBuf,
        read_from: Option<String>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        max_line_bytes: Option<usize>,
        poll_interval: Option<String>,
    },
}

/// Where a source starts in a file it has never seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// From the first byte.
    Beginning,
    /// From the current end (only for files found at startup; files that appear later are read
    /// from their beginning so nothing written after startup is missed).
    End,
}

/// How a source's files are decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// Plain text, one entry per line.
    File,
    /// Docker json-file records, with partial-line merging.
    Docker,
}

/// One source, resolved: absolute glob patterns and its labels.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Plain files or Docker logs.
    pub kind: SourceKind,
    /// Absolute glob patterns of files to follow.
    pub include: Vec<String>,
    /// Absolute glob patterns of files to skip.
    pub exclude: Vec<String>,
    /// Start position for files never seen.
    pub read_from: ReadFrom,
    /// Static labels added to every entry.
    pub labels: BTreeMap<String, String>,
    /// Longer lines are truncated to this many bytes.
    pub max_line_bytes: usize,
    /// Discovery rescans at least this often.
    pub poll_interval: Duration,
}

/// Default for `poll_interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The options every source kind takes, as written.
struct Common {
    read_from: Option<String>,
    labels: BTreeMap<String, String>,
    max_line_bytes: Option<usize>,
    poll_interval: Option<String>,
}

impl Common {
    /// Resolves the shared options into a [`SourceConfig`] of `kind` over `include`/`exclude`;
    /// `reserved` labels are set by the source itself and refused in `labels`.
    fn resolve(
        self,
        r: &Resolver<'_>,
        k: &str,
        kind: SourceKind,
        include: Vec<String>,
        exclude: Vec<String>,
        reserved: &[&str],
    ) -> Result<SourceConfig, ConfigError> {
        let labels = r.labels(&format!("{k}.labels"), self.labels)?;
        for name in reserved {
            if labels.contains_key(*name) {
                return Err(r.invalid(
                    format!("{k}.labels.{name}"),
                    "set by the source itself: remove it",
                ));
            }
        }
        Ok(SourceConfig {
            kind,
            include,
            exclude,
            read_from: r.read_from(&format!("{k}.read_from"), self.read_from.as_deref())?,
            labels,
            max_line_bytes: r.max_line(&format!("{k}.max_line_bytes"), self.max_line_bytes)?,
            poll_interval: r.positive_duration(
                &format!("{k}.poll_interval"),
                self.poll_interval.as_deref(),
                DEFAULT_POLL_INTERVAL,
            )?,
        })
    }
}

pub(super) fn resolve(
    r: &Resolver<'_>,
    files: Vec<SourceFile>,
) -> Result<Vec<SourceConfig>, ConfigError> {
    if files.is_empty() {
        return Err(r.invalid(
            "sources",
            "no source configured: add at least one [[sources]] table",
        ));
    }
    files
        .into_iter()
        .enumerate()
        .map(|(i, s)| resolve_one(r, &format!("sources[{i}]"), s))
        .collect()
}

fn resolve_one(r: &Resolver<'_>, k: &str, file: SourceFile) -> Result<SourceConfig, ConfigError> {
    match file {
        SourceFile::File {
            include,
            exclude,
            read_from,
            labels,
            max_line_bytes,
            poll_interval,
        } => {
            if include.is_empty() {
                return Err(r.invalid(
                    format!("{k}.include"),
                    "empty: list at least one glob pattern",
                ));
            }
            let patterns = |key: &str, list: &[String]| {
                list.iter()
                    .map(|p| r.pattern(&format!("{k}.{key}"), p))
                    .collect::<Result<Vec<_>, _>>()
            };
            let common = Common {
                read_from,
                labels,
                max_line_bytes,
                poll_interval,
            };
            common.resolve(
                r,
                k,
                SourceKind::File,
                patterns("include", &include)?,
                patterns("exclude", &exclude)?,
                &[],
            )
        }
        SourceFile::Docker {
            path,
            read_from,
            labels,
            max_line_bytes,
            poll_interval,
        } => {
            let base = r.glob_base(&format!("{k}.path"), &path)?;
            let common = Common {
                read_from,
                labels,
                max_line_bytes,
                poll_interval,
            };
            common.resolve(
                r,
                k,
                SourceKind::Docker,
                vec![format!("{base}/*/*-json.log")],
                Vec::new(),
                &["container_id", "stream"],
            )
        }
    }
}
