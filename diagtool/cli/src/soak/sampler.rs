//! Samples the shipper while it runs: `/debug/tasks` on the debug port (a snapshot) and `/health`
//! on the main port, both under a timeout, both on loopback.
//!
//! A failed sample is an outcome, not an error: it is counted (and the judge bounds the count), and
//! its reason is kept for the report.

use std::net::SocketAddr;
use std::time::Duration;

use crate::cli::CliError;
use crate::cli::client::Client;
use crate::model::Snapshot;

use super::heap::{HeapAnswer, HeapTally};
use super::judge::HealthTally;

/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/health` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthAnswer {
    /// 200 with this `status` (`ok`, `degraded`).
    Up(String),
    /// 503.
    Critical,
    /// No usable answer, and why.
    Failed(String),
}

/// The shipper's two ports, each through the CLI's own [`Client`] (one HTTP client for the whole
/// toolkit: timeouts, body limits and error messages are the same as `diagtool`'s).
#[derive(Debug, Clone)]
pub struct Sampler {
    main: Client,
    debug: Client,
}

/// Everything sampled so far.
#[derive(Debug, Default)]
pub struct Samples {
    /// Snapshots, in order.
    pub snapshots: Vec<Snapshot>,
    /// Failed snapshot requests.
    pub snapshot_errors: u64,
    /// `/health` answers.
    pub health: HealthTally,
    /// The last `/health` status seen.
    pub last_health: Option<String>,
    /// The last reason a sample failed.
    pub last_error: Option<String>,
    /// Heap profiles.
    pub heap: HeapTally,
}

impl Samples {
    /// Records one round of samples.
    pub fn record(&mut self, snapshot: Result<Snapshot, String>, health: HealthAnswer) {
        match snapshot {
            Ok(s) => self.snapshots.push(s),
            Err(e) => {
                self.snapshot_errors += 1;
                self.last_error = Some(e);
            }
        }
        match health {
            HealthAnswer::Up(status) => {
                if status == "ok" {
                    self.health.ok += 1;
                } else {
                    self.health.degraded += 1;
                }
                self.last_health = Some(status);
            }
            HealthAnswer::Critical => {
                self.health.critical += 1;
                self.last_health = Some("critical (503)".into());
            }
            HealthAnswer::Failed(e) => {
                self.health.errors += 1;
                self.last_error = Some(e);
            }
        }
    }
}

impl Sampler {
    /// A sampler for a shipper listening on `main` and `debug`.
    pub fn new(main: SocketAddr, debug: SocketAddr) -> Result<Self, CliError> {
        Ok(Sampler {
            main: Client::new(&format!("http://{main}"), None)?,
            debug: Client::new(&format!("http://{debug}"), None)?,
        })
    }

    /// Whether `/ready` answers 200.
    pub async fn ready(&self) -> bool {
        matches!(self.main.get_answer("ready", REQUEST_TIMEOUT).await, Ok((_, status, _)) if status == 200)
    }

    /// `GET /debug/tasks`, parsed.
    pub async fn snapshot(&self) -> Result<Snapshot, String> {
        match self.debug.snapshot().await {
            Ok((snapshot, _)) => Ok(snapshot),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `GET /health`.
    pub async fn health(&self) -> HealthAnswer {
        #[derive(serde::Deserialize)]
        struct Health {
            status: String,
        }
        let (url, status, body) = match self.main.get_answer("health", REQUEST_TIMEOUT).await {
            Ok(answer) => answer,
            Err(e) => return HealthAnswer::Failed(e.to_string()),
        };
        match status.as_u16() {
            200 => match serde_json::from_slice::<Health>(&body) {
                Ok(h) => HealthAnswer::Up(h.status),
                Err(e) => HealthAnswer::Failed(format!("GET {url}: unreadable answer: {e}")),
            },
            503 => HealthAnswer::Critical,
            other => HealthAnswer::Failed(format!("GET {url}: status {other}")),
        }
    }

    /// `GET /debug/pprof/heap`, grouped by allocation site.
    pub async fn heap(&self) -> HeapAnswer {
        let raw = match self.debug.heap().await {
            Ok(raw) => raw,
            Err(CliError::Unsupported { reason, .. }) => return HeapAnswer::Unsupported(reason),
            Err(e) => return HeapAnswer::Failed(e.to_string()),
        };
        let taken_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        match crate::pprof::decode(&raw) {
            Ok(profile) => {
                match crate::analysis::heap::HeapSample::from_profile(&profile, taken_at_ms) {
                    Ok(sample) => HeapAnswer::Sample(sample),
                    Err(e) => HeapAnswer::Failed(format!("/debug/pprof/heap: {e}")),
                }
            }
            Err(e) => HeapAnswer::Failed(format!("/debug/pprof/heap: {e}")),
        }
    }

    /// One round: both requests at once.
    pub async fn sample(&self) -> (Result<Snapshot, String>, HealthAnswer) {
        tokio::join!(self.snapshot(), self.health())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use tokio_util::sync::CancellationToken;

    const SNAPSHOT: &str = r#"{"schema":"diagtool.snapshot/v1","service":"shipper","taken_at_ms":1,"uptime_s":1.0,"process":{"pid":1,"rss_bytes":0,"open_fds":3,"threads":1},"runtime":{"workers":2,"alive_tasks":0,"global_queue_depth":0},"tasks":{"live":0,"spawned_total":0,"terminated_total":0},"sites":[]}"#;

    /// Serves `app` on an ephemeral loopback port until the token is cancelled.
    async fn serve(
        app: Router,
        stop: CancellationToken,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        (addr, task)
    }

    #[tokio::test]
    async fn samples_snapshots_and_health_and_counts_failures() {
        let stop = CancellationToken::new();
        let healthy = Router::new()
            .route("/debug/tasks", get(|| async { SNAPSHOT }))
            .route("/health", get(|| async { r#"{"status":"degraded"}"# }))
            .route("/ready", get(|| async { "ready" }));
        let (good, good_task) = serve(healthy, stop.clone()).await;
        let broken = Router::new()
            .route(
                "/debug/tasks",
                get(|| async { r#"{"schema":"diagtool.snapshot/v9"}"# }),
            )
            .route(
                "/health",
                get(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "{}") }),
            );
        let (bad, bad_task) = serve(broken, stop.clone()).await;

        let sampler = Sampler::new(good, good).unwrap();
        assert!(sampler.ready().await);
        let mut samples = Samples::default();
        let (snap, health) = sampler.sample().await;
        samples.record(snap, health);
        assert_eq!(samples.snapshots.len(), 1);
        assert_eq!(samples.health.degraded, 1);

        let sampler = Sampler::new(bad, bad).unwrap();
        assert!(!sampler.ready().await);
        let (snap, health) = sampler.sample().await;
        assert!(
            snap.as_ref().unwrap_err().contains("snapshot/v9"),
            "{snap:?}"
        );
        assert_eq!(health, HealthAnswer::Critical);
        samples.record(snap, health);
        assert_eq!((samples.snapshot_errors, samples.health.critical), (1, 1));

        stop.cancel();
        good_task.await.unwrap();
        bad_task.await.unwrap();
        // Nothing listens any more: a failure, not an error.
        let (snap, health) = Sampler::new(good, good).unwrap().sample().await;
        let err = snap.unwrap_err();
        assert!(
            err.to_lowercase().contains("refused"),
            "the cause is shown: {err}"
        );
        assert!(matches!(health, HealthAnswer::Failed(_)));
    }
}
