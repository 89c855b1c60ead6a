//! The three-line adoption: a runtime with the probe's hooks and its debug server, in one call.
//!
//! Most services start with `#[tokio::main]`, which takes no runtime hooks, so the probe cannot
//! see their tasks. [`start`] (or [`ProbeBuilder::start`] for settings of its own) replaces that
//! macro: it builds the multi-thread runtime with the hooks installed, binds `/debug/*` on its
//! own thread ([`DebugServer`]) and hands back a [`Probed`] that runs the service's main future.
//! Plain `tokio::spawn` then shows in snapshots, in `watch` and in `/metrics`; see
//! `docs/embedding.md` for the whole walk-through.
//!
//! The parts stay available for a host with needs of its own: [`crate::init`] on its own runtime
//! builder, [`DebugServer::bind`], or [`crate::Probe::into_parts`] to mount the router itself.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use super::{DebugServer, Probe, ProbeBuilder, ProbeError};

/// The one-liner that replaces `#[tokio::main]`: a probe for `service` with every default,
/// overridden by the environment ([`ProbeBuilder::with_default_env`]), on a multi-thread runtime,
/// with `/debug/*` served on 127.0.0.1:6060 (env `DIAGTOOL_PROBE_ADDR`).
///
/// # Examples
/// ```no_run
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let probed = diagtool_probe::start("my-service")?;
///     probed.block_on(async {
///         tokio::spawn(async { /* the service's tasks, plain tokio::spawn */ });
///     });
///     Ok(())
/// }
/// ```
pub fn start(service: impl Into<String>) -> Result<Probed, ProbeError> {
    ProbeBuilder::new(service).with_default_env()?.start()
}

impl ProbeBuilder {
    /// Builds a multi-thread runtime (every tokio default, all drivers enabled) with the probe's
    /// hooks, and starts its debug server on the configured address.
    ///
    /// # Examples
    /// ```
    /// let probed = diagtool_probe::Probe::builder("demo")
    ///     .addr("127.0.0.1:0".parse().unwrap())
    ///     .start()
    ///     .unwrap();
    /// probed.block_on(async {
    ///     // A plain tokio::spawn counts: the hooks are on the runtime.
    ///     let task = tokio::spawn(std::future::pending::<()>());
    ///     assert_eq!(probed.probe().snapshot(false).tasks.live, 1);
    ///     task.abort();
    /// });
    /// probed.shutdown(std::time::Duration::from_secs(5)).unwrap();
    /// ```
    pub fn start(self) -> Result<Probed, ProbeError> {
        self.start_on(tokio::runtime::Builder::new_multi_thread())
    }

    /// [`ProbeBuilder::start`] on a runtime builder of the host's (worker count, thread names,
    /// a current-thread runtime); `enable_all` is added.
    pub fn start_on(self, mut builder: tokio::runtime::Builder) -> Result<Probed, ProbeError> {
        let probe = self.install(&mut builder)?;
        let runtime = builder
            .enable_all()
            .build()
            .map_err(|source| ProbeError::Runtime { source })?;
        let server = DebugServer::bind(probe.clone(), runtime.handle().clone())?;
        Ok(Probed {
            probe: probe.with_host(runtime.handle().clone()),
            server: Some(server),
            runtime: Some(runtime),
        })
    }
}

/// A service's runtime with the probe's hooks and its debug server (see [`start`]).
///
/// Dropping it stops the debug server (without waiting for its thread) and then the runtime, as
/// dropping a `Runtime` does; [`Probed::shutdown`] does both within a bounded wait.
#[derive(Debug)]
pub struct Probed {
    probe: Probe,
    server: Option<DebugServer>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Probed {
    /// Runs `future` to completion on the runtime (the service's main), like `#[tokio::main]`.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime().block_on(future)
    }

    /// The runtime, to spawn on or to take a handle of.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        match &self.runtime {
            Some(runtime) => runtime,
            // Taken only by `shutdown`, which consumes `self`.
            None => unreachable!("the runtime is present until shutdown"),
        }
    }

    /// The probe: its registry for health checks, [`Probe::record_metrics`] for `/metrics`.
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// The address `/debug/*` is served on (the bound port when the configured one was 0).
    pub fn debug_addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .map_or_else(|| self.probe.addr(), DebugServer::addr)
    }

    /// Stops the debug server (waiting at most `wait` for its thread), then the runtime (its
    /// tasks dropped, blocking work given up to `wait`).
    pub fn shutdown(mut self, wait: Duration) -> Result<(), ProbeError> {
        let stopped = match self.server.take() {
            Some(server) => server.stop(wait),
            None => Ok(()),
        };
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(wait);
        }
        stopped
    }
}

impl Drop for Probed {
    fn drop(&mut self) {
        // The server first: its thread only holds a handle, and ends on its own once told to.
        drop(self.server.take());
    }
}
