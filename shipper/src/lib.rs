//! The log shipper: tails files and Docker json-file logs and pushes them to Grafana Loki.
//!
//! Data path: [`source::reader`] (one actor for every file) -> bounded channel -> [`pipeline`]
//! (batches per stream) -> bounded channel -> a sink ([`sink`]) -> acknowledgements ->
//! [`checkpoint`] (positions advance only over acknowledged lines). [`supervisor`] owns every task;
//! [`health`] and [`server`] expose them. [`run`] wires it all and performs the ordered shutdown.
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod checkpoint;
pub mod config;
pub mod event;
pub mod health;
pub mod leaklab;
pub mod pipeline;
pub mod server;
pub mod sink;
pub mod source;
pub mod supervisor;
pub mod tasks;
mod wiring;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Health;
use crate::leaklab::{LeakLab, LeakSpec};
use crate::supervisor::Supervisor;

/// After the deadline, how long components get to write their last positions.
const HARD_STOP_GRACE: Duration = Duration::from_secs(2);

/// What makes the shipper observable, all optional: the Prometheus recorder's handle (`/metrics`),
/// the probe installed on the runtime (the debug port, task metrics and task health) and the
/// tokio-console server (its tracing layer must already be installed).
#[derive(Debug, Default)]
pub struct Diagnostics {
    /// Renders `/metrics` (`None`: 503).
    pub metrics: Option<PrometheusHandle>,
    /// Serves `/debug/*` on `server.debug_addr` and feeds `shipper_tasks_*` and `/health`'s tasks.
    pub probe: Option<diagtool_probe::Probe>,
    /// Served until shutdown.
    pub console: Option<diagtool_probe::console::ConsoleServer>,
}

/// Parses `config.leak_lab` (`--leak-lab` values).
pub fn leak_specs(config: &Config) -> anyhow::Result<Vec<LeakSpec>> {
    config
        .leak_lab
        .iter()
        .map(|v| v.parse::<LeakSpec>().map_err(anyhow::Error::from))
        .collect()
}

/// Runs the shipper until `signal` completes (graceful shutdown) or a component fails (error).
/// [`run_with`] without a probe or console.
pub async fn run(
    config: Config,
    metrics: Option<PrometheusHandle>,
    signal: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let diagnostics = Diagnostics {
        metrics,
        ..Diagnostics::default()
    };
    run_with(config, diagnostics, signal).await
}

/// Runs the shipper with its diagnostics until `signal` completes (graceful shutdown) or a
/// component fails (error). A component that panicked ends the run the same way, and the error
/// is then a [`supervisor::Panicked`] (`err.downcast_ref::<Panicked>()`).
///
/// Shutdown order: not ready; the reader stops; the dispatcher flushes what was read; the sink
/// delivers it; the checkpointer saves the acknowledged positions. If that takes longer than
/// `shutdown_timeout`, in-flight batches are abandoned unacknowledged (re-read next start) and the
/// positions acknowledged so far are saved.
pub async fn run_with(
    config: Config,
    diagnostics: Diagnostics,
    signal: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let lab = LeakLab::new(leak_specs(&config)?).fixed(config.leak_lab_fixed);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir '{}'", config.data_dir.display()))?;
    let loaded = checkpoint::load(&config.data_dir)?;
    tracing::info!(positions = loaded.len(), dir = %config.data_dir.display(), "positions loaded");
    let ledger = checkpoint::Ledger::new(loaded).shared();

    let health = Health::new(config.health.heartbeat_timeout);
    let sup = Supervisor::new(health.clone());
    // Both ports are bound before any task starts, so a taken port leaves nothing running.
    let ports = wiring::bind_ports(&config, diagnostics.probe.as_ref()).await?;
    let server_stop = CancellationToken::new();
    wiring::spawn_servers(&sup, &config, &health, diagnostics, ports, &server_stop);
    wiring::spawn_leak_lab(&sup, &lab);
    let pipeline = wiring::spawn_pipeline(&sup, &config, ledger, lab);
    health.set_ready(true);

    let shutdown = sup.shutdown();
    tokio::select! {
        _ = signal => tracing::info!("shutting down: flushing what was read"),
        _ = shutdown.cancelled() => tracing::warn!("a component failed: shutting down"),
    }
    health.set_stopping();
    shutdown.cancel();
    pipeline.drain(config.shutdown_timeout).await;
    server_stop.cancel();
    if !sup.wait(HARD_STOP_GRACE).await {
        tracing::error!("some components did not stop in time");
    }
    // A panic is a bug, not the environment's doing: returned as its own type so the binary can
    // exit with its own code. The positions acknowledged before it were saved all the same.
    if let Some(p) = sup.panicked() {
        tracing::error!("stopped after a panic; acknowledged positions saved");
        return Err(p.into());
    }
    if let Some(f) = sup.failure() {
        anyhow::bail!(f);
    }
    tracing::info!("stopped; positions saved");
    Ok(())
}
