//! Configuration: the TOML file format and the validated runtime settings it resolves into.
//!
//! The `*File` structs mirror the TOML exactly (`deny_unknown_fields`, every field optional so a
//! missing key takes its default); [`Config::parse`] resolves them into [`Config`], checking every
//! value and naming the offending key and file in the error. Nothing at runtime reads the file
//! structs. The built-in default ([`DEFAULT_CONFIG`]) is itself parsed by the same path, so it can
//! never drift from what the parser accepts. Each section (`[server]`, `[[sources]]`, `[sink]`,
//! `[health]`) has its own file holding its file struct, its resolved type and its defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod health;
mod resolve;
mod server;
mod sink;
mod sources;

pub use health::HealthConfig;
pub use server::ServerConfig;
pub use sink::{DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_WAIT, Encoding, SinkConfig, SinkKind};
pub use sources::{
    DEFAULT_KUBERNETES_PATH, DEFAULT_MULTILINE_MAX_LINES, DEFAULT_MULTILINE_MAX_WAIT,
    DEFAULT_POLL_INTERVAL, KUBERNETES_LABELS, MAX_LABELS_PER_STREAM, Multiline, ReadFrom,
    SourceConfig, SourceKind,
};

use resolve::Resolver;

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

# multiline = { start = '^\d{4}-\d{2}-\d{2}T', max_lines = 500, max_wait = "2s" }   # any source

# [[sources]]
# type = "docker"                    # json-file logs: <path>/<id>/<id>-json.log
# path = "/var/lib/docker/containers"

# [[sources]]
# type = "kubernetes"                # CRI pod logs: <path>/<namespace>_<pod>_<uid>/<container>/<n>.log
# path = "/var/log/pods"             # entries get namespace, pod, container and stream labels

[sink]
type = "file"                        # or "loki" (url = ...) or "stdout"
path = "./data/out.jsonl"
batch_max_bytes = 1048576
batch_max_wait = "1s"
# Loki over https with credentials (docs/configuration.md), instead of path:
# type = "loki"
# url = "https://logs.example.net"
# bearer_token_file = "/run/secrets/loki-token"   # or bearer_token, or [sink.basic_auth]
# [sink.tls]                         # default: the system's CA roots
# ca_file = "/etc/ssl/private-ca.pem"  # also cert_file, key_file, server_name, insecure_skip_verify
# [sink.basic_auth]
# username = "123456"
# password_file = "/run/secrets/loki-password"    # or password
# [sink.headers]
# X-Gateway = "team-a"

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
    server: Option<server::ServerFile>,
    #[serde(default)]
    sources: Vec<sources::SourceFile>,
    sink: Option<sink::SinkFile>,
    health: Option<health::HealthFile>,
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

/// Default for `shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `checkpoint_interval`.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

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
            message: sink::redact_secrets(text, e.to_string().trim_end()),
        })?;
        let cwd = std::env::current_dir().map_err(|source| ConfigError::Read {
            path: ".".into(),
            source,
        })?;
        let r = Resolver { path: origin, cwd };
        Ok(Config {
            server: server::resolve(&r, file.server)?,
            sources: sources::resolve(&r, file.sources)?,
            sink: sink::resolve(&r, file.sink)?,
            health: health::resolve(&r, file.health)?,
            data_dir: r.absolute(&file.data_dir.unwrap_or_else(|| PathBuf::from("./data"))),
            shutdown_timeout: r.positive_duration(
                "shutdown_timeout",
                file.shutdown_timeout.as_deref(),
                DEFAULT_SHUTDOWN_TIMEOUT,
            )?,
            checkpoint_interval: r.positive_duration(
                "checkpoint_interval",
                file.checkpoint_interval.as_deref(),
                DEFAULT_CHECKPOINT_INTERVAL,
            )?,
            leak_lab: Vec::new(),
            leak_lab_fixed: false,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
