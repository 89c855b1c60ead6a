//! The Grafana Loki sink: push API, JSON+gzip or protobuf+snappy, retries, adaptive concurrency.
//!
//! [`run`] is one actor. It takes a [`Batch`] from a bounded channel only when its encoding thread
//! (`encoder`) is free, encodes each once, and keeps up to the adaptive limit ([`arc`]) of them
//! in flight as futures in `FuturesUnordered`s it owns (never detached tasks); a batch not yet
//! taken waits in the channel, where it counts against the pipeline's bound. A batch is
//! acknowledged exactly once: when Loki accepted it, or when Loki refused it for good (counted as
//! `shipper_dropped_entries_total{reason="loki_rejected"}`).
//! Retryable failures are retried for as long as it takes, with capped exponential backoff and
//! jitter, honouring `Retry-After`. A batch retrying keeps its slot, so an outage stops intake and
//! the bounded channel pushes back on the readers: memory stays bounded and nothing is dropped.
//!
//! Shutdown: when the channel closes, `run` drains what is in flight and returns. When `stop` is
//! cancelled it returns at once, leaving in-flight batches unacknowledged: their lines are read
//! again after the restart (at-least-once), never lost.
//!
//! Ordering: batches of one stream may be in flight together and land out of order; Loki accepts
//! that within its window, and acknowledgements are per chunk, so correctness does not depend on it.
//!
//! Security: `https://` goes through rustls on ring ([`tls`]); credentials ([`auth`]) and extra
//! headers are sent with every push and never printed. Refused credentials (401/403) and TLS
//! failures are retried like an outage, logged once per change and shown on `/health`
//! ([`condition`]); a secret in a file is re-read before each retry after a 401/403.

mod arc;
mod auth;
mod condition;
mod encode;
mod encoder;
mod send;
mod telemetry;
mod tls;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use http::HeaderValue;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::arc::{AdaptiveConcurrency, Feedback};
use self::auth::Credentials;
pub use self::auth::{LokiAuth, Secret, SecretError, SecretSource};
use self::condition::Condition;
pub use self::condition::StatusReport;
use self::encode::Body;
use self::encoder::EncoderThread;
use self::send::{Outcome, RateLimitedLog, Target, Trouble};
pub use self::tls::{LokiTls, TlsConfigError};
use crate::event::Batch;

/// The push path appended to [`LokiSettings::url`], the body formats: Loki's wire, defined once.
pub use diagtool_model::loki::{Encoding as LokiEncoding, PUSH_PATH, UnknownEncoding};

/// Batches encoded at once, on the sink's one encoding thread ([`encoder`]). Each encoding holds
/// the compressor's state and its output. Gzip at the fastest level keeps up with the reader on
/// one thread; this costs parallelism, not CPU.
///
/// The sink takes a batch from its channel only when an encoder is free: a batch taken earlier
/// would wait here with all its lines (about 1.1x `batch_max_bytes` each) instead of in the
/// bounded channel, which with 8 requests in flight held up to 7 such batches (~9 MiB) beside
/// the channel's own.
const ENCODERS: usize = 1;

/// How often `run` calls its heartbeat, busy or idle (an outage is not a hang: it still beats).
const BEAT_EVERY: Duration = Duration::from_secs(1);

/// Where and how to push.
#[derive(Debug, Clone)]
pub struct LokiSettings {
    /// Base URL of Loki, such as `http://127.0.0.1:3100`; [`PUSH_PATH`] is appended.
    pub url: String,
    /// Sent as `X-Scope-OrgID` when set.
    pub tenant: Option<String>,
    /// Body format.
    pub encoding: LokiEncoding,
    /// Bound on one push request, answer included; past it the request is retried.
    pub request_timeout: Duration,
    /// Upper bound of the adaptive concurrency limit (at least 1).
    pub max_concurrency: usize,
    /// Longest wait between two attempts of one batch.
    pub backoff_max: Duration,
    /// Credentials: none, basic or bearer.
    pub auth: LokiAuth,
    /// TLS settings for `https://` (ignored for `http://`, where they must be left default).
    pub tls: LokiTls,
    /// Extra headers sent with every push (gateways); values are marked sensitive.
    pub headers: http::HeaderMap,
}

impl LokiSettings {
    /// Default [`request_timeout`](Self::request_timeout): 10s.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default [`max_concurrency`](Self::max_concurrency): 8 requests (the documented config
    /// default; each one in flight holds a compressed batch).
    pub const DEFAULT_MAX_CONCURRENCY: usize = 8;
    /// Default [`backoff_max`](Self::backoff_max): 30s.
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);

    /// Settings for `url` with no tenant, JSON, and the `DEFAULT_*` values.
    ///
    /// # Examples
    /// ```
    /// use shipper::sink::loki::{LokiEncoding, LokiSettings};
    /// let s = LokiSettings::new("http://127.0.0.1:3100");
    /// assert_eq!(s.encoding, LokiEncoding::Json);
    /// assert_eq!(s.max_concurrency, LokiSettings::DEFAULT_MAX_CONCURRENCY);
    /// ```
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tenant: None,
            encoding: LokiEncoding::default(),
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            max_concurrency: Self::DEFAULT_MAX_CONCURRENCY,
            backoff_max: Self::DEFAULT_BACKOFF_MAX,
            auth: LokiAuth::None,
            tls: LokiTls::default(),
            headers: http::HeaderMap::new(),
        }
    }

    /// Checks the settings and resolves the push URL and tenant header.
    fn target(&self) -> anyhow::Result<Target> {
        let base = self.url.trim_end_matches('/');
        let url = reqwest::Url::parse(&format!("{base}{PUSH_PATH}")).with_context(|| {
            format!(
                "invalid loki url {:?}: use a base url such as http://127.0.0.1:3100",
                self.url
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!(
                "invalid loki url {:?}: the scheme must be http or https",
                self.url
            );
        }
        let tenant = match self.tenant.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => Some(HeaderValue::from_str(t).with_context(|| {
                format!("invalid loki tenant {t:?}: use visible ascii characters only")
            })?),
            None => None,
        };
        if self.request_timeout.is_zero() {
            bail!("invalid loki request timeout 0s: use a positive duration such as 10s");
        }
        let credentials = Credentials::new(self.auth.clone())
            .map_err(|e| anyhow::anyhow!("{}: {}", e.key, e.message))?;
        let builder = reqwest::Client::builder()
            .timeout(self.request_timeout)
            .connect_timeout(self.request_timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(self.max_concurrency.max(1))
            .default_headers(self.headers.clone());
        let builder = if url.scheme() == "https" {
            builder.use_preconfigured_tls(self.tls.client_config()?)
        } else {
            if self.tls != LokiTls::default() {
                bail!(
                    "sink.tls is set but the loki url {:?} is http://: use https://",
                    self.url
                );
            }
            // Plain HTTP: no need to read the system's CA store.
            builder.tls_built_in_root_certs(false)
        };
        let client = builder.build().context("building the loki http client")?;
        Ok(Target {
            client,
            url,
            tenant,
            credentials,
        })
    }
}

/// A batch on its way: the batch (for its acknowledgement) and its body, encoded once.
#[derive(Debug)]
struct Job {
    batch: Batch,
    body: Body,
    /// Attempts made so far.
    attempts: u32,
}

/// What an encoding ends with.
#[derive(Debug)]
enum Encoded {
    /// The body is built: the job is ready for its first attempt.
    Ready(Job),
    /// The batch could not be encoded (a bug, never input: any valid `Batch` encodes).
    Unencodable(Batch, String),
    /// The encoding thread is gone; the batch is re-read after restart.
    Abandoned,
}

/// A batch being encoded.
type Encoding = Pin<Box<dyn Future<Output = Encoded> + Send>>;

/// A batch sending or waiting to retry; ends with the attempt's job, outcome and duration.
type InFlight = Pin<Box<dyn Future<Output = (Job, Outcome, Duration)> + Send>>;

/// Encodes a batch on the sink's encoding thread ([`encoder`]), so the loop stays free. If `run`
/// drops this future mid-encoding, the encoding finishes on its own (one batch, milliseconds) and
/// is discarded.
fn encode_batch(encoder: &EncoderThread, encoding: LokiEncoding, batch: Batch) -> Encoding {
    let encoded = encoder.encode(encoding, batch);
    Box::pin(async move {
        match encoded.await {
            Ok(Ok((batch, Ok(body)))) => Encoded::Ready(Job {
                batch,
                body,
                attempts: 0,
            }),
            Ok(Ok((batch, Err(e)))) => Encoded::Unencodable(batch, format!("{e:#}")),
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Encoded::Abandoned,
        }
    })
}

fn first_attempt(target: &Target, job: Job) -> InFlight {
    let target = target.clone();
    Box::pin(async move { attempt(&target, job).await })
}

/// Retries `job` after `delay`; with `reload`, the secret files are re-read first (after a
/// 401/403, so a rotated secret is picked up without a restart).
fn retry_later(target: &Target, job: Job, delay: Duration, reload: bool) -> InFlight {
    let target = target.clone();
    Box::pin(async move {
        tokio::time::sleep(delay).await;
        if reload {
            target.credentials.reload().await;
        }
        attempt(&target, job).await
    })
}

async fn attempt(target: &Target, job: Job) -> (Job, Outcome, Duration) {
    let started = Instant::now();
    let outcome = send::attempt(target, &job.body).await;
    (job, outcome, started.elapsed())
}

/// Runs the sink until `batches` is closed and drained, or `stop` is cancelled. See the
/// [module docs](self). Errors only on invalid settings.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> anyhow::Result<()> {
/// use std::{collections::BTreeMap, sync::Arc, time::Duration};
/// use shipper::event::{AckRef, Batch, StreamBatch};
/// use shipper::sink::loki::{run, LokiEncoding, LokiSettings};
/// use tokio_util::sync::CancellationToken;
///
/// let loki = testkit::loki::Receiver::start().await?;
/// let settings = LokiSettings {
///     encoding: LokiEncoding::Json,
///     request_timeout: Duration::from_secs(10),
///     max_concurrency: 8,
///     backoff_max: Duration::from_secs(30),
///     ..LokiSettings::new(loki.url())
/// };
/// let (tx, rx) = tokio::sync::mpsc::channel(4);
/// let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
/// let sink = tokio::spawn(run(settings, rx, CancellationToken::new(), || {}));
///
/// let labels = Arc::new(BTreeMap::from([("job".to_owned(), "app".to_owned())]));
/// let stream = StreamBatch { labels, entries: [(1_700_000_000_000_000_000, "hello")].into() };
/// tx.send(Batch::new(vec![stream], vec![AckRef { chunk: 1 }], ack_tx)).await?;
/// assert_eq!(acks.recv().await, Some(vec![AckRef { chunk: 1 }]));
///
/// drop(tx); // closing the channel drains the sink
/// sink.await??;
/// assert_eq!(loki.lines(), ["hello"]);
/// # Ok(()) }
/// ```
pub async fn run(
    settings: LokiSettings,
    batches: mpsc::Receiver<Batch>,
    stop: CancellationToken,
    beat: impl Fn() + Send + Sync + 'static,
) -> anyhow::Result<()> {
    run_with_status(settings, batches, stop, beat, Box::new(|_| {})).await
}

/// [`run`], reporting the sink's condition through `status`: `Some(reason)` while refused
/// credentials or TLS failures hold it up (the shipper shows it degraded on `/health`), `None`
/// once Loki accepts pushes again.
pub async fn run_with_status(
    settings: LokiSettings,
    mut batches: mpsc::Receiver<Batch>,
    stop: CancellationToken,
    beat: impl Fn() + Send + Sync + 'static,
    status: StatusReport,
) -> anyhow::Result<()> {
    let target = settings.target()?;
    let mut condition = Condition::new(settings.tenant.as_deref(), status);
    if settings.tls.insecure_skip_verify && target.url.scheme() == "https" {
        tracing::warn!(
            "sink.tls.insecure_skip_verify is set: loki's certificate is not checked, so anyone \
             on the path can read and change the pushes (and see the credentials); for tests only"
        );
    }
    if settings.auth != LokiAuth::None && target.url.scheme() == "http" {
        tracing::warn!(
            auth = settings.auth.kind(),
            "the loki credentials go over plain http://: use https:// unless the path is local"
        );
    }
    let encoder = EncoderThread::start().context("starting the loki encoding thread")?;
    telemetry::describe();
    let mut arc = AdaptiveConcurrency::new(settings.max_concurrency, Instant::now());
    telemetry::concurrency(arc.limit());
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    let mut encoding: FuturesUnordered<Encoding> = FuturesUnordered::new();
    let mut log = RateLimitedLog::default();
    let mut beat_every = tokio::time::interval(BEAT_EVERY);
    beat_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    tracing::info!(
        url = %target.url,
        encoding = ?settings.encoding,
        auth = settings.auth.kind(),
        "loki sink started"
    );

    while open || !in_flight.is_empty() || !encoding.is_empty() {
        // A batch is taken only when an encoder is free and a request slot will be (see ENCODERS).
        let room = encoding.len() < ENCODERS && in_flight.len() + encoding.len() < arc.limit();
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                if !in_flight.is_empty() || !encoding.is_empty() {
                    tracing::info!(
                        batches = in_flight.len() + encoding.len(),
                        "loki sink stopped with batches in flight; they are re-read after restart"
                    );
                }
                return Ok(());
            }
            _ = beat_every.tick() => beat(),
            Some((job, outcome, took)) = in_flight.next(), if !in_flight.is_empty() => {
                let before = arc.limit();
                if let Some((job, delay, reload)) = finish_attempt(
                    job, outcome, took, &settings, &mut arc, &mut log, &mut condition,
                ) {
                    in_flight.push(retry_later(&target, job, delay, reload));
                }
                if arc.limit() != before {
                    telemetry::concurrency(arc.limit());
                }
            }
            Some(encoded) = encoding.next(), if !encoding.is_empty() => match encoded {
                Encoded::Ready(job) => {
                    in_flight.push(first_attempt(&target, job));
                    arc.on_send(in_flight.len());
                }
                Encoded::Unencodable(batch, error) => {
                    tracing::error!(%error, entries = batch.entries,
                        "could not encode a batch for loki; dropped and counted (a bug: report it)");
                    telemetry::dropped(batch.entries, telemetry::REASON_UNENCODABLE);
                    batch.acknowledge();
                }
                Encoded::Abandoned => {}
            },
            next = batches.recv(), if open && room => match next {
                Some(batch) => encoding.push(encode_batch(&encoder, settings.encoding, batch)),
                None => open = false,
            },
        }
    }
    tracing::info!("loki sink drained and stopped");
    Ok(())
}

/// Accounts for a finished attempt; returns the job, the delay and whether to re-read the secret
/// files first when it must be tried again.
fn finish_attempt(
    mut job: Job,
    outcome: Outcome,
    took: Duration,
    settings: &LokiSettings,
    arc: &mut AdaptiveConcurrency,
    log: &mut RateLimitedLog,
    condition: &mut Condition,
) -> Option<(Job, Duration, bool)> {
    let now = Instant::now();
    job.attempts += 1;
    telemetry::request(outcome.status_label(), took);
    match outcome {
        Outcome::Delivered { .. } => {
            arc.on_response(now, took, Feedback::Ok);
            condition.on_delivered();
            telemetry::sent(job.batch.entries, job.batch.line_bytes);
            if job.attempts > 1 {
                tracing::info!(
                    attempts = job.attempts,
                    "loki accepted a batch after retries"
                );
            }
            job.batch.acknowledge();
            None
        }
        Outcome::Rejected { status, reason } => {
            // The server answered promptly: that is no sign of overload.
            arc.on_response(now, took, Feedback::Ok);
            telemetry::dropped(job.batch.entries, telemetry::REASON_REJECTED);
            if log.should_log(&reason, now) {
                tracing::warn!(
                    status = status.as_u16(),
                    %reason,
                    entries = job.batch.entries,
                    "loki refused a batch for good; dropped and counted (this reason is logged \
                     at most once a minute)"
                );
            }
            job.batch.acknowledge();
            None
        }
        Outcome::Retry {
            label,
            reason,
            retry_after,
            trouble,
        } => {
            telemetry::retried();
            let delay = send::retry_delay(job.attempts, retry_after, settings.backoff_max);
            if let Some(trouble) = trouble {
                // Logged and reported by the condition, once per change: no per-retry lines.
                condition.on_trouble(&trouble, &reason);
                let refused = matches!(trouble, Trouble::Auth { .. });
                // A prompt refusal is no sign of overload; a failed handshake may be.
                let feedback = if refused {
                    Feedback::Ok
                } else {
                    Feedback::Backpressure
                };
                arc.on_response(now, took, feedback);
                return Some((job, delay, refused));
            }
            arc.on_response(now, took, Feedback::Backpressure);
            if log.should_log(&format!("retry {label}"), now) {
                tracing::warn!(
                    status = %label,
                    %reason,
                    attempts = job.attempts,
                    retry_in = ?delay,
                    "loki push failed; retrying until it succeeds"
                );
            }
            Some((job, delay, false))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests_secure;
