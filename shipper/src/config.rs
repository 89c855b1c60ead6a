//! Configuration: the TOML file format and the validated runtime settings it resolves into.
//!
//! The `*File` structs mirror the TOML exactly (`deny_unknown_fields`, every field optional so a
//! missing key takes its default); [`Config::parse`] resolves them into [`Config`], checking every
//! value and naming the offending key and file in the error. Nothing at runtime reads the file
//! structs. The built-in default ([`DEFAULT_CONFIG`]) is itself parsed by the same path, so it can
//! never drift from what the parser accepts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::sink::loki::LokiSettings;

/// The built-in configuration, used when no `--config` is given; `--print-default-config` prints it.
pub const DEFAULT_CONFIG: &str = r#"# shipper configuration (the built-in default).
data_dir = "./data"                  # positions (checkpoints) live here
shutdown_timeout = "10s"             # SIGTERM/SIGINT: time to flush and save positions
checkpoint_interval = "1s"           # how often acknowledged positions are written

[server]
main_addr = "127.0.0.1:8401"
debug_addr = "127.0.0.1:6060"
# debug_token = "..."                # required when debug_addr is not loopback
console = false
console_addr = "127.0.0.1:6669"     # loopback only: tokio-console has no authentication

[[sources]]
type = "file"
include = ["./logs/**/*.log"]
exclude = []
read_from = "beginning"              # or "end": where to start in a file never seen before
labels = { job = "app" }             # every entry also gets filename = <full path>
max_line_bytes = 262144              # longer lines are truncated and counted
poll_interval = "1s"                 # discovery rescans (filesystem events wake it sooner)

# [[sources]]
# type = "docker"                    # json-file logs: <path>/<id>/<id>-json.log
# path = "/var/lib/docker/containers"

[sink]
type = "file"                        # or "loki" (url = ...) or "stdout"
path = "./data/out.jsonl"
batch_max_bytes = 1048576
batch_max_wait = "1s"

[health]
task_growth_warn_per_min = 10.0
fail_on_task_leak = false
heartbeat_timeout = "10s"            # a component silent this long makes /health answer 503
task_warmup = "5s"                   # task growth is judged after this, from the count then
task_window = "60s"                  # task growth is fitted over the samples of this window
"#;

/// Default for `max_line_bytes`: 256 KiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 256 * 1024;

/// A configuration error; its message names the file and the key and says what is expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file '{path}': {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has a key or type the format does not allow.
    #[error("config file '{path}': {message}")]
    Syntax {
        /// The file.
        path: String,
        /// toml's message, which shows the line and the key.
        message: String,
    },
    /// A value is well-formed TOML but not acceptable.
    #[error("config file '{path}': key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The dotted key, such as `sink.batch_max_wait` or `sources[0].include`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    shutdown_timeout: Option<String>,
    checkpoint_interval: Option<String>,
    server: Option<ServerFile>,
    #[serde(default)]
    sources: Vec<SourceFile>,
    sink: Option<SinkFile>,
    health: Option<HealthFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    main_addr: Option<String>,
    debug_addr: Option<String>,
    debug_token: Option<String>,
    console: Option<bool>,
    console_addr: Option<String>,
    global_dump: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum SourceFile {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkFile {
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthFile {
    task_growth_warn_per_min: Option<f64>,
    fail_on_task_leak: Option<bool>,
    heartbeat_timeout: Option<String>,
    task_warmup: Option<String>,
    task_window: Option<String>,
}

/// The validated configuration the shipper runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where positions are kept.
    pub data_dir: PathBuf,
    /// How long a graceful shutdown may take before in-flight work is abandoned (unacknowledged).
    pub shutdown_timeout: Duration,
    /// How often acknowledged positions are written to disk.
    pub checkpoint_interval: Duration,
    /// Listening addresses and debug options.
    pub server: ServerConfig,
    /// The sources, in file order.
    pub sources: Vec<SourceConfig>,
    /// The sink and its batching.
    pub sink: SinkConfig,
    /// Health thresholds.
    pub health: HealthConfig,
    /// Leak-lab scenarios named on the command line (wired by the probe work; off when empty).
    pub leak_lab: Vec<String>,
    /// Run the leak lab's fixed versions (`--leak-lab-fixed`): same spawns, every task ends.
    pub leak_lab_fixed: bool,
}

/// The servers' settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `/health`, `/ready`, `/metrics`.
    pub main_addr: SocketAddr,
    /// `/debug/*` (served by the probe work).
    pub debug_addr: SocketAddr,
    /// Bearer token for the debug port.
    pub debug_token: Option<String>,
    /// Whether tokio-console is enabled.
    pub console: bool,
    /// Where tokio-console listens.
    pub console_addr: SocketAddr,
    /// Allow tokio's stop-the-world task dump (`?mode=global`); off: it can wedge the runtime.
    pub global_dump: bool,
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

/// Health thresholds.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Task growth above this (per minute) reports `degraded` (the task-growth part).
    pub task_growth_warn_per_min: f64,
    /// Whether a task leak makes `/health` answer 503.
    pub fail_on_task_leak: bool,
    /// A component whose heartbeat is older than this is `critical`.
    pub heartbeat_timeout: Duration,
    /// Task growth is judged after this warm-up, against the live count at its end.
    pub task_warmup: Duration,
    /// Task growth is fitted over the samples of this window.
    pub task_window: Duration,
}

/// Parses a duration such as `500ms`, `5s`, `2m` or `1h`.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// assert_eq!(shipper::config::parse_duration("2m"), Ok(Duration::from_secs(120)));
/// assert!(shipper::config::parse_duration("2 minutes").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "invalid duration '{text}': write a whole number with a unit ms, s, m or h, like '500ms' or '5s'"
        )
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    Ok(d)
}

struct Resolver<'a> {
    path: &'a str,
    cwd: PathBuf,
}

impl Resolver<'_> {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        key: &str,
        v: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| self.invalid(key, m)),
        }
    }

    fn positive_duration(
        &self,
        key: &str,
        v: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(key, v, default)?;
        if d.is_zero() {
            return Err(self.invalid(key, "must be greater than zero"));
        }
        Ok(d)
    }

    fn addr(&self, key: &str, v: Option<&str>, default: &str) -> Result<SocketAddr, ConfigError> {
        let s = v.unwrap_or(default);
        s.parse().map_err(|_| {
            self.invalid(
                key,
                format!("invalid address '{s}': write IP:PORT, like '127.0.0.1:8401'"),
            )
        })
    }

    fn absolute(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            let rel = p.strip_prefix(".").unwrap_or(p);
            self.cwd.join(rel)
        }
    }

    fn pattern(&self, key: &str, p: &str) -> Result<String, ConfigError> {
        if p.trim().is_empty() {
            return Err(self.invalid(key, "empty glob pattern"));
        }
        let abs = self.absolute(Path::new(p));
        let s = abs
            .to_str()
            .ok_or_else(|| self.invalid(key, format!("pattern '{p}' is not UTF-8")))?;
        globset::GlobBuilder::new(s)
            .literal_separator(true)
            .build()
            .map_err(|e| self.invalid(key, format!("invalid glob '{p}': {e}")))?;
        Ok(s.to_string())
    }

    fn read_from(&self, key: &str, v: Option<&str>) -> Result<ReadFrom, ConfigError> {
        match v {
            None | Some("beginning") => Ok(ReadFrom::Beginning),
            Some("end") => Ok(ReadFrom::End),
            Some(o) => Err(self.invalid(
                key,
                format!("unknown value '{o}': use \"beginning\" or \"end\""),
            )),
        }
    }

    fn labels(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        for name in labels.keys() {
            let ok = name
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
            if !ok || name.is_empty() || name.starts_with("__") {
                return Err(self.invalid(
                    format!("{key}.{name}"),
                    format!("invalid label name '{name}': use letters, digits and '_', not starting with a digit or '__'"),
                ));
            }
        }
        Ok(labels)
    }

    fn max_line(&self, key: &str, v: Option<usize>) -> Result<usize, ConfigError> {
        match v {
            None => Ok(DEFAULT_MAX_LINE_BYTES),
            Some(n) if n >= 16 => Ok(n),
            Some(n) => Err(self.invalid(key, format!("{n} is too small: use at least 16 bytes"))),
        }
    }
}

impl Config {
    /// The built-in default, resolved against the current directory.
    pub fn builtin() -> Result<Self, ConfigError> {
        Self::parse(DEFAULT_CONFIG, "<built-in default>")
    }

    /// Reads and resolves a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses TOML text; `origin` names the file in errors. Relative paths resolve against the
    /// current directory.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let cwd = std::env::current_dir().map_err(|source| ConfigError::Read {
            path: ".".into(),
            source,
        })?;
        let r = Resolver { path: origin, cwd };
        let server = file.server.unwrap_or_default();
        let server = ServerConfig {
            main_addr: r.addr(
                "server.main_addr",
                server.main_addr.as_deref(),
                "127.0.0.1:8401",
            )?,
            debug_addr: r.addr(
                "server.debug_addr",
                server.debug_addr.as_deref(),
                "127.0.0.1:6060",
            )?,
            debug_token: server.debug_token.filter(|t| !t.is_empty()),
            console: server.console.unwrap_or(false),
            console_addr: r.addr(
                "server.console_addr",
                server.console_addr.as_deref(),
                "127.0.0.1:6669",
            )?,
            global_dump: server.global_dump.unwrap_or(false),
        };
        if !server.console_addr.ip().is_loopback() {
            // tokio-console's protocol has no authentication, so no token can make this safe.
            return Err(r.invalid(
                "server.console_addr",
                format!(
                    "{} is not loopback, and tokio-console has no authentication; bind 127.0.0.1 \
                     and reach it through an SSH tunnel (docs/console.md)",
                    server.console_addr
                ),
            ));
        }
        if !server.debug_addr.ip().is_loopback() && server.debug_token.is_none() {
            return Err(r.invalid(
                "server.debug_token",
                format!(
                    "required when debug_addr ({}) is not loopback",
                    server.debug_addr
                ),
            ));
        }

        if file.sources.is_empty() {
            return Err(r.invalid(
                "sources",
                "no source configured: add at least one [[sources]] table",
            ));
        }
        let mut sources = Vec::with_capacity(file.sources.len());
        for (i, s) in file.sources.into_iter().enumerate() {
            let k = format!("sources[{i}]");
            let src = match s {
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
                    SourceConfig {
                        kind: SourceKind::File,
                        include: include
                            .iter()
                            .map(|p| r.pattern(&format!("{k}.include"), p))
                            .collect::<Result<_, _>>()?,
                        exclude: exclude
                            .iter()
                            .map(|p| r.pattern(&format!("{k}.exclude"), p))
                            .collect::<Result<_, _>>()?,
                        read_from: r.read_from(&format!("{k}.read_from"), read_from.as_deref())?,
                        labels: r.labels(&format!("{k}.labels"), labels)?,
                        max_line_bytes: r
                            .max_line(&format!("{k}.max_line_bytes"), max_line_bytes)?,
                        poll_interval: r.positive_duration(
                            &format!("{k}.poll_interval"),
                            poll_interval.as_deref(),
                            Duration::from_secs(1),
                        )?,
                    }
                }
                SourceFile::Docker {
                    path,
                    read_from,
                    labels,
                    max_line_bytes,
                    poll_interval,
                } => {
                    let base = r.absolute(&path);
                    let Some(base_s) = base.to_str() else {
                        return Err(r.invalid(
                            format!("{k}.path"),
                            format!("path '{}' is not UTF-8", path.display()),
                        ));
                    };
                    if globset::escape(base_s) != base_s {
                        return Err(r.invalid(
                            format!("{k}.path"),
                            format!("path '{base_s}' contains glob characters"),
                        ));
                    }
                    let labels = r.labels(&format!("{k}.labels"), labels)?;
                    for reserved in ["container_id", "stream"] {
                        if labels.contains_key(reserved) {
                            return Err(r.invalid(
                                format!("{k}.labels.{reserved}"),
                                "set by the docker source itself",
                            ));
                        }
                    }
                    SourceConfig {
                        kind: SourceKind::Docker,
                        include: vec![format!("{base_s}/*/*-json.log")],
                        exclude: Vec::new(),
                        read_from: r.read_from(&format!("{k}.read_from"), read_from.as_deref())?,
                        labels,
                        max_line_bytes: r
                            .max_line(&format!("{k}.max_line_bytes"), max_line_bytes)?,
                        poll_interval: r.positive_duration(
                            &format!("{k}.poll_interval"),
                            poll_interval.as_deref(),
                            Duration::from_secs(1),
                        )?,
                    }
                }
            };
            sources.push(src);
        }

        let Some(sink) = file.sink else {
            return Err(r.invalid("sink", "no sink configured: add a [sink] table"));
        };
        let kind = match sink.kind.as_str() {
            "loki" => {
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
                SinkKind::Loki {
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
                }
            }
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
        let batch_max_bytes = sink.batch_max_bytes.unwrap_or(1024 * 1024);
        if batch_max_bytes == 0 {
            return Err(r.invalid("sink.batch_max_bytes", "must be greater than zero"));
        }
        let sink = SinkConfig {
            kind,
            batch_max_bytes,
            batch_max_wait: r.positive_duration(
                "sink.batch_max_wait",
                sink.batch_max_wait.as_deref(),
                Duration::from_secs(1),
            )?,
        };

        let health = file.health.unwrap_or_default();
        let warn = health.task_growth_warn_per_min.unwrap_or(10.0);
        if !(warn.is_finite() && warn >= 0.0) {
            return Err(r.invalid(
                "health.task_growth_warn_per_min",
                format!("{warn} is not a non-negative number"),
            ));
        }
        let health = HealthConfig {
            task_growth_warn_per_min: warn,
            fail_on_task_leak: health.fail_on_task_leak.unwrap_or(false),
            heartbeat_timeout: r.positive_duration(
                "health.heartbeat_timeout",
                health.heartbeat_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            task_warmup: r.positive_duration(
                "health.task_warmup",
                health.task_warmup.as_deref(),
                Duration::from_secs(5),
            )?,
            task_window: r.positive_duration(
                "health.task_window",
                health.task_window.as_deref(),
                Duration::from_secs(60),
            )?,
        };

        let data_dir = r.absolute(&file.data_dir.unwrap_or_else(|| PathBuf::from("./data")));
        Ok(Config {
            data_dir,
            shutdown_timeout: r.positive_duration(
                "shutdown_timeout",
                file.shutdown_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            checkpoint_interval: r.positive_duration(
                "checkpoint_interval",
                file.checkpoint_interval.as_deref(),
                Duration::from_secs(1),
            )?,
            server,
            sources,
            sink,
            health,
            leak_lab: Vec::new(),
            leak_lab_fixed: false,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, "test.toml").unwrap_err().to_string()
    }

    const MIN: &str =
        "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\n[sink]\ntype = \"stdout\"\n";

    #[test]
    fn builtin_default_parses_and_tails_logs_into_a_file_sink() {
        let c = Config::builtin().unwrap();
        assert_eq!(c.sources.len(), 1);
        assert!(
            c.sources[0].include[0].ends_with("/logs/**/*.log"),
            "{:?}",
            c.sources[0].include
        );
        assert!(
            matches!(&c.sink.kind, SinkKind::File { path } if path.ends_with("data/out.jsonl"))
        );
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.sources[0].max_line_bytes, 256 * 1024);
    }

    #[test]
    fn server_global_dump_is_off_unless_set() {
        assert!(!Config::parse(MIN, "t").unwrap().server.global_dump);
        let on = format!("[server]\nglobal_dump = true\n{MIN}");
        assert!(Config::parse(&on, "t").unwrap().server.global_dump);
        assert!(err(&format!("[server]\nglobal_dump = \"yes\"\n{MIN}")).contains("global_dump"));
    }

    #[test]
    fn durations_take_the_four_units_and_reject_others() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "5", "ms", "1.5s", "-1s", "5d", "5 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let e = err(&format!("{MIN}batch_max_wait = \"soon\"\n"));
        assert!(
            e.contains("test.toml") && e.contains("sink.batch_max_wait") && e.contains("soon"),
            "{e}"
        );
        let e = err(&format!("bogus_key = 1\n{MIN}"));
        assert!(e.contains("test.toml") && e.contains("bogus_key"), "{e}");
        let e = err(
            "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\n[sink]\ntype = \"kafka\"\n",
        );
        assert!(e.contains("sink.type") && e.contains("kafka"), "{e}");
        let e = err(
            "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\nread_from = \"middle\"\n[sink]\ntype = \"stdout\"\n",
        );
        assert!(e.contains("sources[0].read_from"), "{e}");
        let e = err(
            "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\n[sink]\ntype = \"loki\"\n",
        );
        assert!(e.contains("sink.url"), "{e}");
        let e = err(&format!("{MIN}batch_max_bytes = \"big\"\n"));
        assert!(e.contains("batch_max_bytes"), "{e}");
        let e = err(
            "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\nlables = {}\n[sink]\ntype = \"stdout\"\n",
        );
        assert!(e.contains("lables"), "{e}");
        let e = err(
            "[[sources]]\ntype = \"file\"\ninclude = [\"/l/[.log\"]\n[sink]\ntype = \"stdout\"\n",
        );
        assert!(e.contains("sources[0].include"), "{e}");
        let e = err(&format!("[server]\nmain_addr = \"localhost\"\n{MIN}"));
        assert!(e.contains("server.main_addr"), "{e}");
    }

    #[test]
    fn docker_source_globs_container_logs_and_reserves_its_labels() {
        let c = Config::parse(
            "[[sources]]\ntype = \"docker\"\npath = \"/var/lib/docker/containers\"\n[sink]\ntype = \"stdout\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            c.sources[0].include,
            vec!["/var/lib/docker/containers/*/*-json.log"]
        );
        let e = err(
            "[[sources]]\ntype = \"docker\"\npath = \"/d\"\nlabels = { stream = \"x\" }\n[sink]\ntype = \"stdout\"\n",
        );
        assert!(e.contains("sources[0].labels.stream"), "{e}");
    }

    #[test]
    fn loki_sink_resolves_with_defaults() {
        let c = Config::parse(
            "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\n[sink]\ntype = \"loki\"\nurl = \"http://127.0.0.1:3100/\"\ntenant = \"\"\nencoding = \"protobuf\"\n",
            "t",
        )
        .unwrap();
        match c.sink.kind {
            SinkKind::Loki {
                url,
                tenant,
                encoding,
                ..
            } => {
                assert_eq!(url, "http://127.0.0.1:3100");
                assert_eq!(tenant, None);
                assert_eq!(encoding, Encoding::Protobuf);
            }
            other => panic!("{other:?}"),
        }
    }
}
