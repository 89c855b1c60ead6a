//! The main port: `/health`, `/ready` and `/metrics`.
//!
//! Metrics go through the `metrics` facade into `metrics-exporter-prometheus`'s recorder, rendered
//! on request (text format 0.0.4, valid for `promtool check metrics`); latencies are histograms
//! with explicit buckets. With a probe, each scrape first records the registry's per-site task
//! series and the runtime's figures ([`diagtool_probe::record_metrics`]), so they are never older
//! than the scrape and no background task is needed for them. The router takes its state
//! explicitly and is tested without a socket.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::{Health, Status};

/// Histogram buckets for latencies in seconds (1 ms .. 60 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// Heartbeats and readiness.
    pub health: Health,
    /// The Prometheus recorder's handle (`None`: `/metrics` answers 503).
    pub metrics: Option<PrometheusHandle>,
    /// The probe whose registry and runtime figures `/metrics` exports (`shipper_tasks_*`,
    /// `shipper_tokio_*`), recorded at each scrape.
    pub probe: Option<diagtool_probe::Probe>,
}

/// Installs the global Prometheus recorder and describes the shipper's series (so they show with
/// HELP and at zero before their first event). Call once per process.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .map_err(|e| anyhow::anyhow!("invalid histogram buckets: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("a metrics recorder is already installed: {e}"))?;
    describe_metrics();
    Ok(handle)
}

fn describe_metrics() {
    use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
    describe_counter!("shipper_read_lines_total", "Lines read from sources.");
    describe_counter!(
        "shipper_read_bytes_total",
        Unit::Bytes,
        "Bytes read from sources."
    );
    describe_counter!(
        "shipper_sent_entries_total",
        "Entries delivered and acknowledged by the sink."
    );
    describe_counter!(
        "shipper_sent_bytes_total",
        Unit::Bytes,
        "Bytes delivered by the sink (encoded, before compression)."
    );
    describe_counter!(
        "shipper_dropped_entries_total",
        "Entries dropped or altered, by reason: line_too_long (shipped truncated), loki_rejected (400)."
    );
    describe_counter!("shipper_batch_retries_total", "Batch deliveries retried.");
    describe_gauge!("shipper_files_active", "Files currently followed.");
    describe_histogram!(
        "shipper_sink_write_seconds",
        Unit::Seconds,
        "Time to write and sync one batch (file sink)."
    );
    describe_counter!(
        "shipper_read_errors_total",
        "File open or read failures (each retried)."
    );
    describe_counter!(
        "shipper_checkpoint_errors_total",
        "Failed writes of the checkpoint file."
    );
    // Present at zero from the start: dashboards and alerts need the series to exist.
    for name in [
        "shipper_read_lines_total",
        "shipper_read_bytes_total",
        "shipper_sent_entries_total",
        "shipper_sent_bytes_total",
        "shipper_batch_retries_total",
        "shipper_read_errors_total",
        "shipper_checkpoint_errors_total",
    ] {
        counter!(name).increment(0);
    }
    for reason in ["line_too_long", "loki_rejected"] {
        counter!("shipper_dropped_entries_total", "reason" => reason).increment(0);
    }
    gauge!("shipper_files_active").set(0.0);
}

/// Exports tokio runtime figures as `shipper_tokio_*` gauges every second until `stop` fires.
pub async fn runtime_metrics(stop: CancellationToken) -> anyhow::Result<()> {
    let reporter = tokio_metrics::RuntimeMetricsReporterBuilder::default()
        .with_interval(Duration::from_secs(1))
        .with_metrics_transformer(|name| {
            metrics::Key::from_name(name.replacen("tokio_", "shipper_tokio_", 1))
        })
        .describe()
        .build();
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = reporter.run() => {}
    }
    Ok(())
}

/// The main port's routes.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn health(State(s): State<ServerState>) -> Response {
    let report = s.health.report();
    let code = if report.status == Status::Critical {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, axum::Json(report)).into_response()
}

async fn ready(State(s): State<ServerState>) -> Response {
    if s.health.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn render_metrics(State(s): State<ServerState>) -> Response {
    match &s.metrics {
        Some(h) => {
            if let (Some(probe), Ok(rt)) = (&s.probe, tokio::runtime::Handle::try_current()) {
                diagtool_probe::record_metrics("shipper", probe.registry(), &rt);
            }
            h.run_upkeep();
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                h.render(),
            )
                .into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n",
        )
            .into_response(),
    }
}

/// Serves `router(state)` on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    state: ServerState,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(state).into_make_service();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    async fn get_path(state: ServerState, path: &str) -> (StatusCode, String) {
        let resp = router(state)
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (code, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_and_ready_reflect_the_state() {
        let health = Health::new(Duration::from_secs(60));
        let _beat = health.heartbeat("reader");
        let state = ServerState {
            health: health.clone(),
            metrics: None,
            probe: None,
        };
        let (code, body) = get_path(state.clone(), "/health").await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["components"]["reader"]["status"], "ok");
        assert_eq!(
            get_path(state.clone(), "/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready(true);
        assert_eq!(get_path(state.clone(), "/ready").await.0, StatusCode::OK);
        health.ended("reader", true);
        assert_eq!(
            get_path(state.clone(), "/health").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            get_path(state, "/metrics").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
