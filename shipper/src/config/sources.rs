//! `[[sources]]`: what to read. Every kind shares the options after its own (`read_from`,
//! `labels`, `max_line_bytes`, `poll_interval`, `multiline`), resolved once in [`Common::resolve`].
//!
//! Labels: each kind sets a few of its own (`filename`; `container_id`, `stream`; `namespace`,
//! `pod`, `container`, `stream`), refused in `labels`, and every label is checked here against
//! Loki's rules so a bad one exits 2 naming its key instead of failing every push at runtime.

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
        multiline: Option<MultilineFile>,
    },
    Docker {
        path: PathBuf,
        read_from: Option<String>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        max_line_bytes: Option<usize>,
        poll_interval: Option<String>,
        multiline: Option<MultilineFile>,
    },
    Kubernetes {
        path: Option<PathBuf>,
        read_from: Option<String>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        max_line_bytes: Option<usize>,
        poll_interval: Option<String>,
        multiline: Option<MultilineFile>,
    },
}

/// `multiline = { start = "<regex>", max_lines = N, max_wait = "2s" }`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MultilineFile {
    start: String,
    max_lines: Option<usize>,
    max_wait: Option<String>,
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
    /// Kubernetes pod logs in the CRI format
    /// (`<path>/<namespace>_<pod>_<uid>/<container>/<n>.log`), with `P`/`F` partial merging.
    Kubernetes,
}

/// How a source joins physical lines into entries (`multiline = {..}`).
#[derive(Debug, Clone)]
pub struct Multiline {
    /// A line matching this starts a new entry; any other line is appended to the entry before it.
    pub start: regex::bytes::Regex,
    /// An entry is flushed once it holds this many lines.
    pub max_lines: usize,
    /// An entry is flushed after this long without a new line.
    pub max_wait: Duration,
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
    /// Joins lines into entries (stack traces); `None`: one entry per line.
    pub multiline: Option<Multiline>,
}

/// Default for `poll_interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default for `multiline.max_lines`.
pub const DEFAULT_MULTILINE_MAX_LINES: usize = 500;
/// Default for `multiline.max_wait`.
pub const DEFAULT_MULTILINE_MAX_WAIT: Duration = Duration::from_secs(2);
/// Default `path` of a `kubernetes` source: where kubelet keeps pod logs.
pub const DEFAULT_KUBERNETES_PATH: &str = "/var/log/pods";
/// Loki's default `max_label_names_per_series`: a push whose stream has more labels is refused.
pub const MAX_LABELS_PER_STREAM: usize = 15;

/// The options every source kind takes, as written.
struct Common {
    read_from: Option<String>,
    labels: BTreeMap<String, String>,
    max_line_bytes: Option<usize>,
    poll_interval: Option<String>,
    multiline: Option<MultilineFile>,
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
        // The kind's own labels count too (`filename` for files).
        let own = reserved.len().max(1);
        if labels.len() + own > MAX_LABELS_PER_STREAM {
            return Err(r.invalid(
                format!("{k}.labels"),
                format!(
                    "{} labels plus the source's own {own} make more than Loki's {MAX_LABELS_PER_STREAM} per stream (max_label_names_per_series): remove some",
                    labels.len()
                ),
            ));
        }
        let multiline = match self.multiline {
            None => None,
            Some(m) => Some(multiline(r, &format!("{k}.multiline"), m)?),
        };
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
            multiline,
        })
    }
}

fn multiline(r: &Resolver<'_>, k: &str, m: MultilineFile) -> Result<Multiline, ConfigError> {
    if m.start.is_empty() {
        return Err(r.invalid(
            format!("{k}.start"),
            "empty: give a regex matching the first line of an entry, like '^\\d{4}-\\d{2}-\\d{2}'",
        ));
    }
    // Bounded compiled size: a pattern is matched against every line.
    let start = regex::bytes::RegexBuilder::new(&m.start)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            // regex's message spans lines (a caret under the pattern); keep it on one.
            let e = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            r.invalid(
                format!("{k}.start"),
                format!("invalid regex '{}': {e}", m.start),
            )
        })?;
    let max_lines = match m.max_lines {
        None => DEFAULT_MULTILINE_MAX_LINES,
        Some(n) if n >= 1 => n,
        Some(_) => return Err(r.invalid(format!("{k}.max_lines"), "must be at least 1")),
    };
    Ok(Multiline {
        start,
        max_lines,
        max_wait: r.positive_duration(
            &format!("{k}.max_wait"),
            m.max_wait.as_deref(),
            DEFAULT_MULTILINE_MAX_WAIT,
        )?,
    })
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
            multiline,
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
                multiline,
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
            multiline,
        } => {
            let base = r.glob_base(&format!("{k}.path"), &path)?;
            let common = Common {
                read_from,
                labels,
                max_line_bytes,
                poll_interval,
                multiline,
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
        SourceFile::Kubernetes {
            path,
            read_from,
            labels,
            max_line_bytes,
            poll_interval,
            multiline,
        } => {
            let path = path.unwrap_or_else(|| PathBuf::from(DEFAULT_KUBERNETES_PATH));
            let base = r.glob_base(&format!("{k}.path"), &path)?;
            let common = Common {
                read_from,
                labels,
                max_line_bytes,
                poll_interval,
                multiline,
            };
            // `*.log` leaves kubelet's rotated names (`0.log.<timestamp>`, `.gz`) out; the reader
            // also keeps only `<digits>.log` (see `SourceKind::follows`).
            common.resolve(
                r,
                k,
                SourceKind::Kubernetes,
                vec![format!("{base}/*_*_*/*/*.log")],
                Vec::new(),
                &KUBERNETES_LABELS,
            )
        }
    }
}

/// The labels a `kubernetes` source sets on every entry.
pub const KUBERNETES_LABELS: [&str; 4] = ["namespace", "pod", "container", "stream"];

impl SourceKind {
    /// Whether a file that matched the source's globs is one of this kind's logs: for
    /// `kubernetes`, only `<digits>.log` (the container's restart count), never a rotated name.
    pub fn follows(&self, path: &std::path::Path) -> bool {
        match self {
            SourceKind::Kubernetes => path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".log"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
            SourceKind::File | SourceKind::Docker => true,
        }
    }
}
