//! `[sink]`: where batches go (Loki, a file, stdout) and how they are batched.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::resolve::Resolver;
use crate::sink::loki::LokiSettings;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SinkFile {
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    tenant: Option<String>,
    encoding: Option<String>,
    path: Option<PathBuf>,
    batch_max_bytes: Option<usize>,
    batch_max_wait: Option<String>,
    request_timeout: Option<String>,
    max_concurrency: Option<usize>,
    backoff_max: Option<String>,
}

/// Loki push encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// JSON, gzip-compressed.
    Json,
    /// Protobuf, snappy-compressed.
    Protobuf,
}

/// Where batches go.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// Grafana Loki's push API.
    Loki {
        /// Base URL; `/loki/api/v1/push` is appended.
        url: String,
        /// Sent as `X-Scope-OrgID` when set.
        tenant: Option<String>,
        /// Body encoding.
        encoding: Encoding,
        /// Per-request timeout.
        request_timeout: Duration,
        /// Upper bound of concurrent requests.
        max_concurrency: usize,
        /// Cap of the retry backoff interval.
        backoff_max: Duration,
    },
    /// JSON lines appended to a file.
    File {
        /// The file.
        path: PathBuf,
    },
    /// JSON lines on standard output.
    Stdout,
}

/// The sink and its batching.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The kind and its settings.
    pub kind: SinkKind,
    /// A batch is sent once its lines reach this many bytes.
    pub batch_max_bytes: usize,
    /// A batch is sent at the latest this long after its first line.
    pub batch_max_wait: Duration,
}

/// Default for `batch_max_bytes`: 1 MiB.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 1024 * 1024;
/// Default for `batch_max_wait`.
pub const DEFAULT_BATCH_MAX_WAIT: Duration = Duration::from_secs(1);

pub(super) fn resolve(r: &Resolver<'_>, file: Option<SinkFile>) -> Result<SinkConfig, ConfigError> {
    let Some(sink) = file else {
        return Err(r.invalid("sink", "no sink configured: add a [sink] table"));
    };
    let batch_max_bytes = sink.batch_max_bytes.unwrap_or(DEFAULT_BATCH_MAX_BYTES);
    if batch_max_bytes == 0 {
        return Err(r.invalid("sink.batch_max_bytes", "must be greater than zero"));
    }
    let batch_max_wait = r.positive_duration(
        "sink.batch_max_wait",
        sink.batch_max_wait.as_deref(),
        DEFAULT_BATCH_MAX_WAIT,
    )?;
    let kind = match sink.kind.as_str() {
        "loki" => loki(r, sink)?,
        "file" => {
            let Some(path) = sink.path else {
                return Err(r.invalid(
                    "sink.path",
                    "required for type = \"file\", like \"./data/out.jsonl\"",
                ));
            };
            SinkKind::File {
                path: r.absolute(&path),
            }
        }
        "stdout" => SinkKind::Stdout,
        other => {
            return Err(r.invalid(
                "sink.type",
                format!("unknown sink type '{other}': use \"loki\", \"file\" or \"stdout\""),
            ));
        }
    };
    Ok(SinkConfig {
        kind,
        batch_max_bytes,
        batch_max_wait,
    })
}

fn loki(r: &Resolver<'_>, sink: SinkFile) -> Result<SinkKind, ConfigError> {
    let Some(url) = sink.url.filter(|u| !u.trim().is_empty()) else {
        return Err(r.invalid(
            "sink.url",
            "required for type = \"loki\", like \"http://127.0.0.1:3100\"",
        ));
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(r.invalid(
            "sink.url",
            format!("'{url}' is not an http:// or https:// URL"),
        ));
    }
    let encoding = match sink.encoding.as_deref() {
        None | Some("json") => Encoding::Json,
        Some("protobuf") => Encoding::Protobuf,
        Some(o) => {
            return Err(r.invalid(
                "sink.encoding",
                format!("unknown encoding '{o}': use \"json\" or \"protobuf\""),
            ));
        }
    };
    let max_concurrency = sink
        .max_concurrency
        .unwrap_or(LokiSettings::DEFAULT_MAX_CONCURRENCY);
    if max_concurrency == 0 {
        return Err(r.invalid("sink.max_concurrency", "must be at least 1"));
    }
    Ok(SinkKind::Loki {
        url: url.trim_end_matches('/').to_string(),
        tenant: sink.tenant.filter(|t| !t.is_empty()),
        encoding,
        request_timeout: r.positive_duration(
            "sink.request_timeout",
            sink.request_timeout.as_deref(),
            LokiSettings::DEFAULT_REQUEST_TIMEOUT,
        )?,
        max_concurrency,
        backoff_max: r.positive_duration(
            "sink.backoff_max",
            sink.backoff_max.as_deref(),
            LokiSettings::DEFAULT_BACKOFF_MAX,
        )?,
    })
}
