//! `diagtool-probe`, the probe a tokio service embeds to become diagnosable.
//!
//! A [`Probe`] keeps live tasks by spawn site (runtime hooks feeding a [`TaskRegistry`]), takes task
//! dumps and CPU profiles, and serves them under `/debug/` ([`router()`]). It is cheap enough to stay
//! on in production (a few percent per spawn+join); tokio-console ([`console`]) is the expensive,
//! opt-in extra.
//!
//! Adopting it takes three lines: the dependency, `--cfg tokio_unstable` in
//! `.cargo/config.toml`, and [`start`] in place of `#[tokio::main]` (`docs/embedding.md`):
//! ```no_run
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let probed = diagtool_probe::start("my-service")?;
//!     probed.block_on(async {
//!         // ... the service: plain tokio::spawn is seen
//!     });
//!     Ok(())
//! }
//! ```
//! The same by parts, one line on the runtime builder and one started server:
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut runtime = tokio::runtime::Builder::new_multi_thread();
//! let probe = diagtool_probe::init("shipper", &mut runtime)?;
//! let runtime = runtime.enable_all().build()?;
//! // `/debug` gets its own thread and runtime: it still answers when the service's workers are stuck.
//! let server = diagtool_probe::DebugServer::bind(probe, runtime.handle().clone())?;
//! runtime.block_on(async {
//!     // ... the service runs until it is told to stop
//! });
//! server.stop(std::time::Duration::from_secs(5))?;
//! # Ok(())
//! # }
//! ```
//! Why its own thread: a task dump, or a snapshot, is most wanted when the service is in trouble,
//! and a `/debug` served on the service's own runtime shares its fate. When every worker is blocked
//! (or caught in tokio's dump barrier), a server on that runtime cannot accept a connection, and
//! the dump's timeout, which runs on that runtime's timer, never fires. [`DebugServer`] keeps only
//! the runtime's [`Handle`](tokio::runtime::Handle): it traces the service's runtime under its own
//! timer, so a stuck service still gets its 503 in time and its snapshots.
//!
//! A host with its own HTTP server takes the parts instead ([`Probe::into_parts`]) and mounts the
//! router itself. Spawn long-lived tasks through [`spawn_named`] so they carry a name and keep
//! their own frames in release-build dumps.
//!
//! What a host wires, beyond serving `/debug/*`:
//! - `/metrics`: call [`Probe::record_metrics`] (names prefixed with the service's name, see
//!   [`Probe::metrics_prefix`]) or [`record_metrics`]`("shipper", probe.registry(), &handle)` right
//!   before rendering the Prometheus exporter's text, for `shipper_tasks_live{site}`,
//!   `shipper_tasks_spawned_total{site}` and `shipper_tokio_*`;
//! - a task-growth check for `/health`: [`TaskRegistry::sites`] (or [`Probe::snapshot`]) gives
//!   live tasks per site at any moment, cheaply;
//! - tasks it spawns on purpose (a supervisor, a leak lab): [`spawn_named`] (or [`traced`] around
//!   its own spawn), so each call line is its own site and release-build dumps keep its frames;
//!   helpers that spawn for a caller must be `#[track_caller]` down to the spawn.
//!
//! Heap profiles (`/debug/pprof/heap`, [`heap`]) need the cargo feature `heap-profiling`: the probe
//! then declares jemalloc as the process's `#[global_allocator]` itself, with its sampler on from
//! the first allocation, so enabling the feature is the whole adoption (a host that declares its own
//! allocator gets a link error and leaves the feature off). Without it the heap endpoints answer
//! 501 saying how to enable it.
//!
//! Invariant: `/debug/*` never binds a non-loopback address without a bearer token
//! ([`check_bind`]).
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

// Without the flag tokio compiles its runtime hooks and task dumps out, and this crate would fail
// with dozens of "not found" errors that do not say why; this one says what to do. Not under
// rustdoc, which `build.rustflags` does not reach (doctests and docs.rs document it without).
#[cfg(all(not(tokio_unstable), not(doc)))]
compile_error!(
    "diagtool-probe needs tokio's unstable APIs (runtime task hooks, task dumps): build with \
     RUSTFLAGS=\"--cfg tokio_unstable\", or add to .cargo/config.toml at your workspace root:\n\
     \n\
     [build]\n\
     rustflags = [\"--cfg\", \"tokio_unstable\"]\n\
     \n\
     (see docs/embedding.md in the diagtool repository)"
);

mod builder;
pub mod console;
pub mod cpu;
pub mod dump;
mod dump_global;
mod dump_render;
mod dump_root;
mod embed;
pub mod heap;
#[cfg(feature = "heap-profiling")]
mod heap_jemalloc;
mod heap_metrics;
mod heap_router;
#[cfg_attr(not(feature = "heap-profiling"), allow(dead_code))]
mod heap_symbols;
#[cfg_attr(not(feature = "heap-profiling"), allow(dead_code))]
mod heap_v2;
pub mod process;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod selftrace;
pub mod server;
pub mod snapshot;
pub mod spawn;
pub mod testing;

/// The documents the probe serves (`diagtool-model`), for hosts that read them in-process.
pub use diagtool_model as model;
use diagtool_model::pprof;

use std::net::SocketAddr;
use std::time::Duration;

pub use builder::ProbeBuilder;
pub use dump::{DumpError, DumpMode, Dumper};
pub use embed::{Probed, start};
pub use process::process_stats;
pub use registry::{LiveTask, SiteCounts, TaskRegistry, Totals, format_site, short_path};
pub use router::{check_bind, router, serve};
pub use runtime::{record_metrics, runtime_stats};
pub use server::DebugServer;
pub use spawn::{Traced, spawn_named, spawn_named_in, spawn_named_on, traced};

/// Default debug address: loopback only.
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6060);
/// Default time a task dump may take before the request gets 503.
pub const DEFAULT_DUMP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest dump timeout a request may ask for (`timeout_ms`).
pub const MAX_DUMP_TIMEOUT: Duration = Duration::from_secs(60);
/// Default CPU sampling frequency, in Hz.
pub const DEFAULT_CPU_FREQUENCY_HZ: i32 = cpu::DEFAULT_FREQUENCY_HZ;

/// Environment variable read by [`ProbeBuilder::with_default_env`] for the debug address.
pub const ENV_ADDR: &str = "DIAGTOOL_PROBE_ADDR";
/// Environment variable for the bearer token.
pub const ENV_TOKEN: &str = "DIAGTOOL_PROBE_TOKEN";
/// Environment variable for the default dump timeout, in milliseconds.
pub const ENV_DUMP_TIMEOUT_MS: &str = "DIAGTOOL_PROBE_DUMP_TIMEOUT_MS";
/// Environment variable enabling tokio's global (stop-the-world) dump: `1`/`true` or `0`/`false`.
pub const ENV_GLOBAL_DUMP: &str = "DIAGTOOL_PROBE_GLOBAL_DUMP";
/// Environment variable for the heap sampling interval in bytes (see [`heap::ENV_HEAP_SAMPLE_BYTES`]).
pub const ENV_HEAP_SAMPLE_BYTES: &str = heap::ENV_HEAP_SAMPLE_BYTES;
/// Default least time between two task dumps.
pub const DEFAULT_MIN_DUMP_INTERVAL: Duration = dump::DEFAULT_MIN_INTERVAL;

/// A probe misconfigured or unable to serve.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A non-loopback address without a token would expose dumps and profiles to the network.
    #[error(
        "refusing to serve /debug on non-loopback address {0} without a token: set a debug token, or bind 127.0.0.1"
    )]
    InsecureBind(SocketAddr),
    /// An environment variable holds a bad value.
    #[error("{var}={value:?} is invalid: {reason}")]
    BadEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        reason: &'static str,
    },
    /// A setting holds a bad value.
    #[error("{0}")]
    BadSetting(String),
    /// Binding or serving failed.
    #[error("the debug server on {addr} failed: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The debug server's own thread or runtime could not be started ([`DebugServer`]).
    #[error(
        "cannot start the debug server's {what} for {addr}: {source}; the process may be out of threads or memory (see ulimit -u)"
    )]
    Start {
        /// The address it was to serve.
        addr: SocketAddr,
        /// What failed to start: `thread` or `runtime`.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The debug server's thread was still running when [`DebugServer::stop`] stopped waiting;
    /// it is left to end on its own.
    #[error(
        "the debug server on {addr} was still running {waited:?} after it was told to stop; its thread is left to end on its own"
    )]
    StopTimeout {
        /// The address it served.
        addr: SocketAddr,
        /// How long the stop waited.
        waited: Duration,
    },
    /// The service's tokio runtime could not be built ([`ProbeBuilder::start`]).
    #[error(
        "cannot build the service's tokio runtime: {source}; the process may be out of threads or memory (see ulimit -u)"
    )]
    Runtime {
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The debug server's thread panicked (a bug: please report it with the log).
    #[error("the debug server on {addr} panicked; /debug was not served since")]
    Panicked {
        /// The address it served.
        addr: SocketAddr,
    },
}

/// The one-liner: a probe for `service` with every default, overridden by the environment
/// ([`ProbeBuilder::with_default_env`]), its hooks installed on `runtime`.
///
/// # Examples
/// ```
/// let mut runtime = tokio::runtime::Builder::new_multi_thread();
/// let probe = diagtool_probe::init("demo", &mut runtime).unwrap();
/// let runtime = runtime.worker_threads(1).enable_all().build().unwrap();
/// runtime.block_on(async {
///     let task = diagtool_probe::spawn_named("worker", std::future::pending::<()>());
///     assert_eq!(probe.snapshot(false).tasks.live, 1);
///     task.abort();
/// });
/// ```
pub fn init(
    service: impl Into<String>,
    runtime: &mut tokio::runtime::Builder,
) -> Result<Probe, ProbeError> {
    ProbeBuilder::new(service)
        .with_default_env()?
        .install(runtime)
}

/// The probe: a cheap-clone handle on the registry, the dumper and the settings.
#[derive(Debug, Clone)]
pub struct Probe {
    registry: TaskRegistry,
    dumper: Dumper,
    service: std::sync::Arc<str>,
    addr: SocketAddr,
    token: Option<std::sync::Arc<str>>,
    dump_timeout: Duration,
    cpu_frequency_hz: i32,
    /// Fired when the host stops serving: long requests (CPU profiles) end early.
    stop: tokio_util::sync::CancellationToken,
    /// The runtime reported on and dumped; `None`: the runtime the request runs on.
    host: Option<tokio::runtime::Handle>,
}

/// What a host embeds when it serves the router itself (see [`Probe::into_parts`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct ProbeParts {
    /// The router serving `/debug/*`, with the token check already layered.
    pub router: axum::Router,
    /// The registry, for `/metrics` ([`record_metrics`]) and health checks.
    pub registry: TaskRegistry,
    /// The configured debug address.
    pub addr: SocketAddr,
    /// The probe itself.
    pub probe: Probe,
}

impl Probe {
    /// A builder with every default (see [`ProbeBuilder`]).
    pub fn builder(service: impl Into<String>) -> ProbeBuilder {
        ProbeBuilder::new(service)
    }

    /// The task registry.
    pub fn registry(&self) -> &TaskRegistry {
        &self.registry
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The configured debug address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The prefix of the service's metric names: its name with every character that is not an
    /// ASCII letter, digit or `_` turned into `_` (`leaky-service` -> `leaky_service`), and a
    /// leading digit guarded by `_`.
    ///
    /// # Examples
    /// ```
    /// let mut runtime = tokio::runtime::Builder::new_current_thread();
    /// let probe = diagtool_probe::Probe::builder("leaky-service").install(&mut runtime).unwrap();
    /// assert_eq!(probe.metrics_prefix(), "leaky_service");
    /// ```
    pub fn metrics_prefix(&self) -> String {
        let mut prefix: String = self
            .service
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if prefix.is_empty() || prefix.starts_with(|c: char| c.is_ascii_digit()) {
            prefix.insert(0, '_');
        }
        prefix
    }

    /// [`record_metrics`] under [`Probe::metrics_prefix`] for the runtime of [`Probe::host`]:
    /// call it right before rendering `/metrics`. Does nothing without a runtime.
    pub fn record_metrics(&self) {
        if let Some(handle) = self.host() {
            record_metrics(&self.metrics_prefix(), &self.registry, &handle);
        }
    }

    /// The bearer token, when one is configured.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The default dump timeout.
    pub fn dump_timeout(&self) -> Duration {
        self.dump_timeout
    }

    /// The CPU sampling frequency.
    pub fn cpu_frequency_hz(&self) -> i32 {
        self.cpu_frequency_hz
    }

    /// The dumper.
    pub fn dumper(&self) -> &Dumper {
        &self.dumper
    }

    /// The same probe, whose long requests (CPU profiles) end early once `stop` fires. A host
    /// mounting [`ProbeParts::router`] itself passes its shutdown token here before
    /// [`Probe::into_parts`]; [`Probe::serve`] does it for its own.
    pub fn with_stop(mut self, stop: tokio_util::sync::CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    /// The token that ends long requests early.
    pub fn stop_token(&self) -> tokio_util::sync::CancellationToken {
        self.stop.clone()
    }

    /// The same probe, reporting on and dumping the runtime behind `host` wherever its requests
    /// run. [`DebugServer`] sets it, since its requests run on a runtime of their own; without it
    /// the probe looks at the runtime the request runs on.
    pub fn with_host(mut self, host: tokio::runtime::Handle) -> Self {
        self.host = Some(host);
        self
    }

    /// The runtime the probe reports on: the one set by [`Probe::with_host`], else the current
    /// runtime, else `None`.
    pub fn host(&self) -> Option<tokio::runtime::Handle> {
        self.host
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
    }

    /// A snapshot now (runtime figures from [`Probe::host`], when there is one).
    pub fn snapshot(&self, detail: bool) -> crate::model::Snapshot {
        let handle = self.host();
        snapshot::take(&self.registry, &self.service, handle.as_ref(), detail)
    }

    /// The router and the rest, for a host that serves `/debug/*` itself.
    pub fn into_parts(self) -> ProbeParts {
        ProbeParts {
            router: router(self.clone()),
            registry: self.registry.clone(),
            addr: self.addr,
            probe: self,
        }
    }

    /// Binds the configured address and serves `/debug/*` until `shutdown` fires.
    pub async fn serve(
        self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), ProbeError> {
        let addr = self.addr;
        serve(self, addr, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_bad_values_are_errors() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |var: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == var)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let builder = ProbeBuilder::new("s")
            .with_env(env(&[
                (ENV_ADDR, "127.0.0.1:7070"),
                (ENV_TOKEN, "t0k"),
                (ENV_DUMP_TIMEOUT_MS, "1500"),
            ]))
            .expect("valid env");
        assert_eq!(builder.addr, "127.0.0.1:7070".parse().expect("addr"));
        assert_eq!(builder.token.as_deref(), Some("t0k"));
        assert_eq!(builder.dump_timeout, Duration::from_millis(1500));

        let err = ProbeBuilder::new("s")
            .with_env(env(&[(ENV_ADDR, "localhost")]))
            .expect_err("bad addr");
        assert!(err.to_string().contains("\"localhost\""), "{err}");
        let err = ProbeBuilder::new("s")
            .with_env(env(&[(ENV_DUMP_TIMEOUT_MS, "5s")]))
            .expect_err("bad timeout");
        assert!(err.to_string().contains(ENV_DUMP_TIMEOUT_MS), "{err}");

        assert!(!ProbeBuilder::new("s").global_dump);
        let on = ProbeBuilder::new("s")
            .with_env(env(&[(ENV_GLOBAL_DUMP, "1")]))
            .expect("valid");
        assert!(on.global_dump);
        let off = ProbeBuilder::new("s")
            .global_dump(true)
            .with_env(env(&[(ENV_GLOBAL_DUMP, "false")]))
            .expect("valid");
        assert!(!off.global_dump);
        let err = ProbeBuilder::new("s")
            .with_env(env(&[(ENV_GLOBAL_DUMP, "yes please")]))
            .expect_err("bad flag");
        assert!(err.to_string().contains(ENV_GLOBAL_DUMP), "{err}");
    }

    #[test]
    fn non_loopback_without_token_is_refused_at_install() {
        let mut runtime = tokio::runtime::Builder::new_current_thread();
        let err = Probe::builder("s")
            .addr("0.0.0.0:6060".parse().expect("addr"))
            .install(&mut runtime)
            .expect_err("refused");
        assert!(matches!(err, ProbeError::InsecureBind(_)), "{err}");
        assert!(err.to_string().contains("0.0.0.0:6060"));
        Probe::builder("s")
            .addr("0.0.0.0:6060".parse().expect("addr"))
            .token(Some("secret".to_owned()))
            .install(&mut runtime)
            .expect("with a token it is allowed");
        let err = Probe::builder("s")
            .dump_timeout(Duration::ZERO)
            .install(&mut runtime)
            .expect_err("zero timeout");
        assert!(matches!(err, ProbeError::BadSetting(_)));
    }
}
