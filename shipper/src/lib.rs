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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SinkKind};
use crate::health::Health;
use crate::leaklab::{LabEvents, LeakLab, LeakSpec};
use crate::supervisor::Supervisor;
use crate::tasks::{TaskGrowth, TaskGrowthSettings};

/// Chunks the reader may have queued ahead of the dispatcher (each at most ~256 KiB of lines).
const CHUNK_QUEUE: usize = 2;
/// Batches queued ahead of the sink, the one being filled included (it fills a reserved slot).
const BATCH_QUEUE: usize = 1;
/// After the deadline, how long components get to write their last positions.
const HARD_STOP_GRACE: Duration = Duration::from_secs(2);
/// How long the debug server's thread gets to stop (within [`HARD_STOP_GRACE`]): its requests
/// end early on stop, so it takes milliseconds unless its thread is itself stuck.
const DEBUG_STOP_GRACE: Duration = Duration::from_millis(1500);

/// What makes the shipper observable, all optional: the Prometheus recorder's handle (`/metrics`),
/// the probe installed on the runtime (the debug port, task metrics and task health) and the
/// tokio-console server (its tracing layer must already be installed).
#[derive(Debug, Default)]
pub struct Diagnostics {
    /// Renders `/metrics` (`None`: 503).
    pub metrics: Option<PrometheusHandle>,
    /// Serves `/debug/*` on `server.debug_addr` and feeds `shipper_tasks_*` and `/health`'s tasks.
    pub probe: Option<diagtool::probe::Probe>,
    /// Served until shutdown.
    pub console: Option<diagtool::probe::console::ConsoleServer>,
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
/// component fails (error).
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
    let Diagnostics {
        metrics,
        probe,
        console,
    } = diagnostics;
    let lab = LeakLab::new(leak_specs(&config)?).fixed(config.leak_lab_fixed);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir '{}'", config.data_dir.display()))?;
    let loaded = checkpoint::load(&config.data_dir)?;
    tracing::info!(positions = loaded.len(), dir = %config.data_dir.display(), "positions loaded");
    let ledger = checkpoint::Ledger::new(loaded).shared();

    let health = Health::new(config.health.heartbeat_timeout);
    let sup = Supervisor::new(health.clone());
    let listener = tokio::net::TcpListener::bind(config.server.main_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (server.main_addr)",
                config.server.main_addr
            )
        })?;
    tracing::info!(addr = %listener.local_addr()?, "main port listening");
    let server_stop = CancellationToken::new();
    let state = server::ServerState {
        health: health.clone(),
        metrics: metrics.clone(),
        probe: probe.clone(),
    };
    // Both ports are bound before any task starts, so a taken port leaves nothing running.
    let debug_server = match &probe {
        Some(probe) => {
            let addr = config.server.debug_addr;
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (server.debug_addr)"))?;
            // `/debug` runs on a thread and runtime of its own, holding only this runtime's
            // handle: when this runtime's workers are stuck, dumps still answer 503 in time and
            // snapshots still answer. The `debug-server` task below owns it, and stops and joins
            // it with the other servers.
            let debug_server = diagtool::probe::DebugServer::start(
                probe.clone(),
                listener,
                tokio::runtime::Handle::current(),
            )
            .with_context(|| format!("cannot serve /debug on {addr} (server.debug_addr)"))?;
            tracing::info!(addr = %debug_server.addr(), "debug port listening");
            Some(debug_server)
        }
        None => None,
    };
    sup.spawn(
        "server",
        server::serve(listener, state, server_stop.clone()),
    );
    if let (Some(probe), Some(debug_server)) = (&probe, debug_server) {
        let stop = server_stop.clone();
        sup.spawn("debug-server", async move {
            tokio::select! {
                () = stop.cancelled() => {}
                // It never ends by itself but on an error, which the shutdown below returns.
                () = debug_server.ended() => {}
            }
            match debug_server.shutdown(DEBUG_STOP_GRACE).await {
                // Positions are safe either way: a debug thread slow to stop is no failure.
                Err(err @ diagtool::probe::ProbeError::StopTimeout { .. }) => {
                    tracing::error!(error = %err, "the debug server did not stop in time");
                    Ok(())
                }
                ended => ended.map_err(anyhow::Error::from),
            }
        });
        let growth = TaskGrowth::new(TaskGrowthSettings {
            warn_per_min: config.health.task_growth_warn_per_min,
            fail_on_leak: config.health.fail_on_task_leak,
            warmup: config.health.task_warmup,
            window: config.health.task_window,
            ..TaskGrowthSettings::default()
        });
        health.set_tasks_provider(Arc::new(growth.clone()));
        sup.spawn(
            "task-health",
            growth.run(
                probe.clone(),
                server_stop.clone(),
                sup.heartbeat("task-health"),
            ),
        );
    } else if metrics.is_some() {
        // Without a probe the runtime figures come from tokio-metrics' reporter instead.
        sup.spawn(
            "runtime-metrics",
            server::runtime_metrics(server_stop.clone()),
        );
    }
    if let Some(console) = console {
        tracing::info!(addr = %console.addr(), "tokio-console listening");
        let stop = server_stop.clone();
        sup.spawn("console", async move {
            console.run(stop).await.map_err(anyhow::Error::from)
        });
    }
    if lab.is_enabled() {
        let names: Vec<String> = lab.specs().iter().map(ToString::to_string).collect();
        if lab.is_fixed() {
            tracing::info!(scenarios = ?names, "leak lab on, fixed versions: the same spawns, every task ends");
        } else {
            tracing::warn!(scenarios = ?names, "leak lab on: this process leaks tasks on purpose");
        }
    }
    if lab.has_timed() {
        let (lab, stop) = (lab.clone(), sup.shutdown());
        sup.spawn("leak-lab", async move {
            lab.run(stop).await;
            Ok(())
        });
    }

    let (chunk_tx, chunk_rx) = mpsc::channel(CHUNK_QUEUE);
    let (batch_tx, batch_rx) = mpsc::channel(BATCH_QUEUE);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let hard = sup.hard_stop();

    let checkpointer = sup.spawn(
        "checkpointer",
        checkpoint::run(
            ledger.clone(),
            ack_rx,
            config.data_dir.clone(),
            config.checkpoint_interval,
            hard.clone(),
            sup.heartbeat("checkpointer"),
        ),
    );
    let sink = match &config.sink.kind {
        SinkKind::File { path } => sup.spawn(
            "sink",
            sink::file::run(path.clone(), batch_rx, hard.clone(), sup.heartbeat("sink")),
        ),
        SinkKind::Stdout => sup.spawn(
            "sink",
            sink::stdout::run(batch_rx, hard.clone(), sup.heartbeat("sink")),
        ),
        SinkKind::Loki {
            url,
            tenant,
            encoding,
            request_timeout,
            max_concurrency,
            backoff_max,
            auth,
            tls,
            headers,
        } => {
            let settings = sink::loki::LokiSettings {
                url: url.clone(),
                tenant: tenant.clone(),
                encoding: match encoding {
                    config::Encoding::Json => sink::loki::LokiEncoding::Json,
                    config::Encoding::Protobuf => sink::loki::LokiEncoding::Protobuf,
                },
                request_timeout: *request_timeout,
                max_concurrency: *max_concurrency,
                backoff_max: *backoff_max,
                auth: auth.clone(),
                tls: tls.clone(),
                headers: headers.clone(),
            };
            sup.spawn(
                "sink",
                sink::loki::run_with_status(
                    settings,
                    batch_rx,
                    hard.clone(),
                    sup.heartbeat("sink"),
                    Box::new(sup.health().condition("sink")),
                ),
            )
        }
    };
    let limits = pipeline::BatchLimits {
        max_bytes: config.sink.batch_max_bytes,
        max_wait: config.sink.batch_max_wait,
    };
    let dispatcher = sup.spawn(
        "dispatcher",
        pipeline::run(
            chunk_rx,
            batch_tx,
            ack_tx,
            limits,
            hard.clone(),
            sup.heartbeat("dispatcher"),
        ),
    );
    let reader = sup.spawn(
        "reader",
        source::reader::run(
            source::reader::ReaderParts {
                sources: config.sources.clone(),
                ledger,
                tx: chunk_tx,
                events: Arc::new(LabEvents::new(lab, source::MetricEvents)),
                fs_events: true,
            },
            sup.shutdown(),
            sup.heartbeat("reader"),
        ),
    );
    health.set_ready(true);

    let shutdown = sup.shutdown();
    tokio::select! {
        _ = signal => tracing::info!("shutting down: flushing what was read"),
        _ = shutdown.cancelled() => tracing::warn!("a component failed: shutting down"),
    }
    health.set_stopping();
    shutdown.cancel();
    let drained = tokio::time::timeout(config.shutdown_timeout, async {
        let _ = reader.await;
        let _ = dispatcher.await;
        let _ = sink.await;
        let _ = checkpointer.await;
    })
    .await
    .is_ok();
    if !drained {
        tracing::warn!(
            timeout = ?config.shutdown_timeout,
            "shutdown timeout reached: abandoning in-flight batches (they are re-sent next start)"
        );
        hard.cancel();
    }
    server_stop.cancel();
    if !sup.wait(HARD_STOP_GRACE).await {
        tracing::error!("some components did not stop in time");
    }
    if let Some(f) = sup.failure() {
        anyhow::bail!(f);
    }
    tracing::info!("stopped; positions saved");
    Ok(())
}
