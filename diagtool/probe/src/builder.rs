//! [`ProbeBuilder`]: every setting of a [`Probe`], from code or from the environment, with a
//! named default each; `install` puts the registry's hooks on a runtime builder.

use std::net::SocketAddr;
use std::time::Duration;

use crate::{
    DEFAULT_ADDR, DEFAULT_CPU_FREQUENCY_HZ, DEFAULT_DUMP_TIMEOUT, DEFAULT_MIN_DUMP_INTERVAL,
    Dumper, ENV_ADDR, ENV_DUMP_TIMEOUT_MS, ENV_GLOBAL_DUMP, ENV_HEAP_SAMPLE_BYTES, ENV_TOKEN,
    MAX_DUMP_TIMEOUT, Probe, ProbeError, TaskRegistry, check_bind, heap, runtime,
};

/// Configures a [`Probe`]; every setting has a named default.
///
/// # Examples
/// ```
/// use diagtool_probe::Probe;
/// let mut runtime = tokio::runtime::Builder::new_current_thread();
/// let probe = Probe::builder("demo")
///     .addr("127.0.0.1:0".parse().unwrap())
///     .install(&mut runtime)
///     .unwrap();
/// assert_eq!(probe.service(), "demo");
/// ```
#[derive(Debug, Clone)]
pub struct ProbeBuilder {
    pub(crate) service: String,
    pub(crate) addr: SocketAddr,
    pub(crate) token: Option<String>,
    pub(crate) dump_timeout: Duration,
    pub(crate) cpu_frequency_hz: i32,
    pub(crate) global_dump: bool,
    pub(crate) min_dump_interval: Duration,
    pub(crate) heap_sample_bytes: Option<u64>,
}

impl ProbeBuilder {
    /// A builder for the service `service` (shown in snapshots), with every default.
    pub fn new(service: impl Into<String>) -> Self {
        ProbeBuilder {
            service: service.into(),
            addr: DEFAULT_ADDR,
            token: None,
            dump_timeout: DEFAULT_DUMP_TIMEOUT,
            cpu_frequency_hz: DEFAULT_CPU_FREQUENCY_HZ,
            global_dump: false,
            min_dump_interval: DEFAULT_MIN_DUMP_INTERVAL,
            heap_sample_bytes: None,
        }
    }

    /// The debug address [`Probe::serve`] binds. Default [`DEFAULT_ADDR`] (127.0.0.1:6060);
    /// env [`ENV_ADDR`]. A non-loopback address needs a token.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// The bearer token every `/debug` request must carry (`Authorization: Bearer TOKEN`).
    /// Default none (no check, loopback only); env [`ENV_TOKEN`]. An empty token means none.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// How long a dump may take when the request names no `timeout_ms`. Default
    /// [`DEFAULT_DUMP_TIMEOUT`] (5 s), at most [`MAX_DUMP_TIMEOUT`]; env [`ENV_DUMP_TIMEOUT_MS`].
    pub fn dump_timeout(mut self, timeout: Duration) -> Self {
        self.dump_timeout = timeout;
        self
    }

    /// CPU sampling frequency. Default [`DEFAULT_CPU_FREQUENCY_HZ`] (99 Hz), 1 to 1000.
    pub fn cpu_frequency_hz(mut self, hz: i32) -> Self {
        self.cpu_frequency_hz = hz;
        self
    }

    /// Allows tokio's global task dump (`?mode=global`), which stops every worker of the
    /// service's runtime at a barrier: with tokio 1.54.1 one that times out can leave the runtime
    /// wedged (shipping stops, SIGTERM ignored; tokio PR #8370), so after one timeout the probe
    /// refuses further global dumps. Default off; env [`ENV_GLOBAL_DUMP`]. The default dump
    /// (tasks tracing themselves) needs no opt-in.
    pub fn global_dump(mut self, enabled: bool) -> Self {
        self.global_dump = enabled;
        self
    }

    /// The least time between the end of one task dump and the start of the next (a request
    /// sooner waits for the rest of the interval; one arriving while a dump runs gets 429).
    /// Default [`DEFAULT_MIN_DUMP_INTERVAL`] (100 ms), at most 1 minute.
    pub fn min_dump_interval(mut self, interval: Duration) -> Self {
        self.min_dump_interval = interval;
        self
    }

    /// The heap sampler's interval: one sample per `bytes` allocated on average, a power of two
    /// from 1 KiB to 1 GiB. Default [`heap::DEFAULT_SAMPLE_BYTES`] (512 KiB, built into jemalloc's
    /// options); env [`ENV_HEAP_SAMPLE_BYTES`]. Applied at install by restarting jemalloc's
    /// sampler, so what was sampled before is dropped. Ignored when the probe is built without
    /// the `heap-profiling` feature or jemalloc's profiler is off.
    pub fn heap_sample_bytes(mut self, bytes: u64) -> Self {
        self.heap_sample_bytes = Some(bytes);
        self
    }

    /// Overrides [`ProbeBuilder::global_dump`] from [`ENV_GLOBAL_DUMP`] only, for hosts that take
    /// their other settings from a file of their own.
    pub fn with_global_dump_env(self) -> Result<Self, ProbeError> {
        self.global_dump_from(|var| std::env::var(var).ok())
    }

    /// Overrides [`ProbeBuilder::heap_sample_bytes`] from [`ENV_HEAP_SAMPLE_BYTES`] only, for
    /// hosts that take their other settings from a file of their own.
    pub fn with_heap_env(self) -> Result<Self, ProbeError> {
        self.heap_sample_bytes_from(&|var: &str| std::env::var(var).ok())
    }

    pub(crate) fn heap_sample_bytes_from(
        mut self,
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ProbeError> {
        if let Some(value) = get(ENV_HEAP_SAMPLE_BYTES) {
            let bytes = value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&b| heap::check_sample_bytes(b).is_ok())
                .ok_or_else(|| ProbeError::BadEnv {
                    var: ENV_HEAP_SAMPLE_BYTES,
                    value: value.clone(),
                    reason: "expected a power of two in bytes from 1024 to 1073741824, such as 524288",
                })?;
            self.heap_sample_bytes = Some(bytes);
        }
        Ok(self)
    }

    pub(crate) fn global_dump_from(
        mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ProbeError> {
        if let Some(value) = get(ENV_GLOBAL_DUMP) {
            self.global_dump = match value.trim() {
                "1" | "true" => true,
                "0" | "false" | "" => false,
                _ => {
                    return Err(ProbeError::BadEnv {
                        var: ENV_GLOBAL_DUMP,
                        value,
                        reason: "expected 1 or true (enable tokio's global dump, at its risk), 0 or false",
                    });
                }
            };
        }
        Ok(self)
    }

    /// Overrides settings from the environment ([`ENV_ADDR`], [`ENV_TOKEN`],
    /// [`ENV_DUMP_TIMEOUT_MS`], [`ENV_GLOBAL_DUMP`], [`ENV_HEAP_SAMPLE_BYTES`]); the only place the
    /// probe reads the environment.
    pub fn with_default_env(self) -> Result<Self, ProbeError> {
        self.with_env(|var| std::env::var(var).ok())
    }

    pub(crate) fn with_env(
        mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ProbeError> {
        if let Some(value) = get(ENV_ADDR) {
            self.addr = value.parse().map_err(|_| ProbeError::BadEnv {
                var: ENV_ADDR,
                value: value.clone(),
                reason: "expected HOST:PORT with an IP, such as 127.0.0.1:6060",
            })?;
        }
        if let Some(value) = get(ENV_TOKEN) {
            self = self.token(Some(value));
        }
        if let Some(value) = get(ENV_DUMP_TIMEOUT_MS) {
            let ms: u64 = value.parse().map_err(|_| ProbeError::BadEnv {
                var: ENV_DUMP_TIMEOUT_MS,
                value: value.clone(),
                reason: "expected milliseconds, such as 5000",
            })?;
            self.dump_timeout = Duration::from_millis(ms);
        }
        self = self.heap_sample_bytes_from(&get)?;
        self.global_dump_from(get)
    }

    /// Checks the settings, installs the task hooks on `runtime` and returns the probe.
    pub fn install(self, runtime: &mut tokio::runtime::Builder) -> Result<Probe, ProbeError> {
        let registry = TaskRegistry::new();
        registry.hook(runtime);
        // Long polls are what stalls a service; counting them costs a clock read per poll.
        runtime
            .enable_metrics_poll_time_histogram()
            .metrics_poll_time_histogram_configuration(runtime::poll_time_histogram());
        self.with_registry(registry)
    }

    /// Checks the settings and returns a probe over an existing registry (already hooked).
    pub fn with_registry(self, registry: TaskRegistry) -> Result<Probe, ProbeError> {
        check_bind(self.addr, self.token.as_deref())?;
        if self.dump_timeout.is_zero() || self.dump_timeout > MAX_DUMP_TIMEOUT {
            return Err(ProbeError::BadSetting(format!(
                "dump timeout {:?} is out of range: use 1 ms to {:?}",
                self.dump_timeout, MAX_DUMP_TIMEOUT
            )));
        }
        if !(1..=1000).contains(&self.cpu_frequency_hz) {
            return Err(ProbeError::BadSetting(format!(
                "cpu frequency {} Hz is out of range: use 1 to 1000",
                self.cpu_frequency_hz
            )));
        }
        if let Some(bytes) = self.heap_sample_bytes {
            match heap::set_sample_bytes(bytes) {
                Ok(()) => {}
                Err(err @ heap::HeapError::BadSampleBytes(_)) => {
                    return Err(ProbeError::BadSetting(err.to_string()));
                }
                // Not built in, or jemalloc's profiler off: /debug/pprof/heap says so.
                Err(err) => tracing::warn!(error = %err, "heap sample interval not applied"),
            }
        }
        if self.min_dump_interval > Duration::from_secs(60) {
            return Err(ProbeError::BadSetting(format!(
                "minimum dump interval {:?} is out of range: use 0 to 60 s",
                self.min_dump_interval
            )));
        }
        Ok(Probe {
            dumper: Dumper::new(registry.clone())
                .global_dump(self.global_dump)
                .min_interval(self.min_dump_interval),
            registry,
            service: self.service.into(),
            addr: self.addr,
            token: self.token.map(Into::into),
            dump_timeout: self.dump_timeout,
            cpu_frequency_hz: self.cpu_frequency_hz,
            stop: tokio_util::sync::CancellationToken::new(),
            host: None,
        })
    }
}
