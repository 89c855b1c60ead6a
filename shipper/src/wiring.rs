//! The stages of [`crate::run_with`]: bind the ports, start the servers and the probe's tasks,
//! start the leak lab, start the pipeline (checkpointer, sink, dispatcher, reader), and drain it
//! in order at shutdown. Each stage only spawns through the supervisor, which owns every task.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SinkKind};
use crate::health::Health;
use crate::leaklab::{LabEvents, LeakLab};
use crate::supervisor::Supervisor;
use crate::tasks::{TaskGrowth, TaskGrowthSettings};
use crate::{Diagnostics, checkpoint, pipeline, server, sink, source};

/// Chunks the reader may have queued ahead of the dispatcher (each at most ~256 KiB of lines).
const CHUNK_QUEUE: usize = 2;
/// Batches queued ahead of the sink, the one being filled included (it fills a reserved slot).
const BATCH_QUEUE: usize = 1;
/// How long the debug server's thread gets to stop (within the supervisor's hard-stop grace): its
/// requests end early on stop, so it takes milliseconds unless its thread is itself stuck.
const DEBUG_STOP_GRACE: Duration = Duration::from_millis(1500);

/// The bound listening sockets, before any task serves them.
pub(crate) struct Ports {
    main: tokio::net::TcpListener,
    debug: Option<diagtool_probe::DebugServer>,
}

/// Binds the main port and, with a probe, starts the debug server on its own thread (it holds
/// only this runtime's handle: when this runtime's workers are stuck, dumps still answer in time
/// and snapshots still answer).
pub(crate) async fn bind_ports(
    config: &Config,
    probe: Option<&diagtool_probe::Probe>,
) -> anyhow::Result<Ports> {
    let main_addr = config.server.main_addr;
    let main = tokio::net::TcpListener::bind(main_addr)
        .await
        .with_context(|| format!("cannot listen on {main_addr} (server.main_addr)"))?;
    tracing::info!(addr = %main.local_addr()?, "main port listening");
    let debug = match probe {
        Some(probe) => {
            let addr = config.server.debug_addr;
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (server.debug_addr)"))?;
            let server = diagtool_probe::DebugServer::start(
                probe.clone(),
                listener,
                tokio::runtime::Handle::current(),
            )
            .with_context(|| format!("cannot serve /debug on {addr} (server.debug_addr)"))?;
            tracing::info!(addr = %server.addr(), "debug port listening");
            Some(server)
        }
        None => None,
    };
    Ok(Ports { main, debug })
}

/// Starts the main server, the debug server's owner, task health, runtime metrics and the
/// console: every task that `server_stop` ends after the pipeline drained.
pub(crate) fn spawn_servers(
    sup: &Supervisor,
    config: &Config,
    health: &Health,
    diagnostics: Diagnostics,
    ports: Ports,
    server_stop: &CancellationToken,
) {
    let Diagnostics {
        metrics,
        probe,
        console,
    } = diagnostics;
    let state = server::ServerState {
        health: health.clone(),
        metrics: metrics.clone(),
        probe: probe.clone(),
    };
    sup.spawn(
        "server",
        server::serve(ports.main, state, server_stop.clone()),
    );
    if let (Some(probe), Some(debug_server)) = (probe, ports.debug) {
        let stop = server_stop.clone();
        sup.spawn("debug-server", async move {
            tokio::select! {
                () = stop.cancelled() => {}
                // It never ends by itself but on an error, which the shutdown below returns.
                () = debug_server.ended() => {}
            }
            match debug_server.shutdown(DEBUG_STOP_GRACE).await {
                // Positions are safe either way: a debug thread slow to stop is no failure.
                Err(err @ diagtool_probe::ProbeError::StopTimeout { .. }) => {
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
            growth.run(probe, server_stop.clone(), sup.heartbeat("task-health")),
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
}

/// Says what the leak lab does, loudly when it leaks, and starts its timed scenarios.
pub(crate) fn spawn_leak_lab(sup: &Supervisor, lab: &LeakLab) {
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
}

/// The running data path, in the order it drains.
pub(crate) struct Pipeline {
    reader: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    sink: JoinHandle<()>,
    checkpointer: JoinHandle<()>,
    hard: CancellationToken,
}

/// Starts the checkpointer, the sink, the dispatcher and the reader, wired by bounded channels
/// (acknowledgements excepted: one per batch, bounded by the batches in flight).
pub(crate) fn spawn_pipeline(
    sup: &Supervisor,
    config: &Config,
    ledger: checkpoint::SharedLedger,
    lab: LeakLab,
) -> Pipeline {
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
    let sink = spawn_sink(sup, config, batch_rx, &hard);
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
    Pipeline {
        reader,
        dispatcher,
        sink,
        checkpointer,
        hard,
    }
}

fn spawn_sink(
    sup: &Supervisor,
    config: &Config,
    batch_rx: mpsc::Receiver<crate::event::Batch>,
    hard: &CancellationToken,
) -> JoinHandle<()> {
    match &config.sink.kind {
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
                encoding: *encoding,
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
    }
}

impl Pipeline {
    /// Waits for the stages to end in order (reader, dispatcher, sink, checkpointer) within
    /// `timeout`; past it, in-flight batches are abandoned unacknowledged (re-read next start)
    /// and the positions acknowledged so far are saved.
    pub(crate) async fn drain(self, timeout: Duration) {
        let Pipeline {
            reader,
            dispatcher,
            sink,
            checkpointer,
            hard,
        } = self;
        let drained = tokio::time::timeout(timeout, async {
            let _ = reader.await;
            let _ = dispatcher.await;
            let _ = sink.await;
            let _ = checkpointer.await;
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!(
                timeout = ?timeout,
                "shutdown timeout reached: abandoning in-flight batches (they are re-sent next start)"
            );
            hard.cancel();
        }
    }
}
