//! A strict Loki-compatible push receiver on loopback, for tests, soaks and benchmarks.
//!
//! It serves `POST /loki/api/v1/push`, validates every body with [`decode_push`] (a body Loki would
//! refuse gets a 400 and is counted in [`Receiver::rejected_bodies`]), stores what it accepted (or
//! only counts it, for benchmarks), and can misbehave on command: fail the next requests or for a
//! while, hold requests without answering, or refuse lines containing a text.
//!
//! Security, as options: TLS ([`ReceiverBuilder::tls`], rustls on ring, optionally requiring
//! client certificates) and credentials ([`ReceiverBuilder::basic_auth`],
//! [`ReceiverBuilder::bearer_token`], changeable while it runs to simulate a rotation): a push
//! without them gets 401 and is counted in [`Receiver::auth_failures`], before its body is read.
//!
//! Ownership: the server runs in one task owned by the [`Receiver`] (a cancellation token and its
//! join handle). [`Receiver::shutdown`] stops it and waits; dropping the receiver cancels it. A
//! request held by a hang fault is released by the fault's end or by shutdown, never left behind.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::faults::Faults;
use super::push::router;
use super::secure::{Required, TlsListener, TlsOptions};

pub use diagtool_model::loki::PUSH_PATH;

/// How long [`Receiver::shutdown`] waits for open requests before it aborts the server task.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How many request records are kept (the oldest are dropped past it; a benchmark sends many).
pub(super) const MAX_REQUEST_RECORDS: usize = 100_000;

/// One accepted entry, as stored by the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEntry {
    /// The stream's labels.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Nanoseconds since the epoch.
    pub ts_ns: i64,
    /// The line, byte for byte as received.
    pub line: String,
    /// Structured metadata, if the client sent any.
    pub structured_metadata: Vec<(String, String)>,
    /// The `X-Scope-OrgID` of the request that carried it.
    pub tenant: Option<String>,
}

/// What the receiver saw and answered for one push request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestRecord {
    /// The status answered.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Content-Encoding` header.
    pub content_encoding: Option<String>,
    /// The `X-Scope-OrgID` header.
    pub tenant: Option<String>,
    /// Entries in the body (0 when it did not decode).
    pub entries: usize,
    /// Size of the body as sent (compressed).
    pub body_bytes: usize,
    /// Why the request was not accepted: the decode error, the rule, or the injected fault.
    pub error: Option<String>,
    /// Every header but `Authorization` (names lower-case), for checks of extra headers.
    pub headers: Vec<(String, String)>,
}

/// The status recorded for a held request whose client gave up (nginx's "client closed request").
pub const STATUS_CLIENT_GAVE_UP: u16 = 499;

/// Options for a [`Receiver`]; [`Receiver::start`] uses the defaults.
#[derive(Debug, Clone)]
pub struct ReceiverBuilder {
    addr: SocketAddr,
    store_entries: bool,
    pub(super) tls: Option<TlsOptions>,
    pub(super) auth: Option<Required>,
}

impl Default for ReceiverBuilder {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            store_entries: true,
            tls: None,
            auth: None,
        }
    }
}

impl ReceiverBuilder {
    /// The address to listen on. Default `127.0.0.1:0` (an ephemeral loopback port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Whether accepted entries are stored (default `true`). With `false` the receiver only counts
    /// them, so a benchmark of millions of lines does not measure the receiver's memory.
    pub fn store_entries(mut self, store: bool) -> Self {
        self.store_entries = store;
        self
    }

    /// Binds the listener and starts serving.
    pub async fn start(self) -> std::io::Result<Receiver> {
        let acceptor = self.tls.as_ref().map(TlsOptions::acceptor).transpose()?;
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            store_entries: self.store_entries,
            cancel: cancel.clone(),
            auth: Mutex::new(self.auth),
            ..Shared::default()
        });
        let app = router(shared.clone());
        let stop = cancel.clone();
        let tls = acceptor.is_some();
        let listening = shared.clone();
        let task = tokio::spawn(async move {
            let stopped = async move { stop.cancelled().await };
            let served = match acceptor {
                None => {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await
                }
                Some(acceptor) => {
                    let listener = TlsListener {
                        tcp: listener,
                        acceptor,
                        shared: listening,
                        handshakes: Default::default(),
                    };
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::warn!(error = %e, "loki receiver stopped with an error");
            }
        });
        Ok(Receiver {
            addr,
            tls,
            shared,
            cancel,
            task: Some(task),
        })
    }
}

/// A running Loki-compatible receiver. See the [module docs](self).
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// use testkit::loki::Receiver;
/// let receiver = Receiver::start().await?;
/// assert!(receiver.url().starts_with("http://127.0.0.1:"));
/// assert_eq!(receiver.count(), 0);
/// receiver.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    tls: bool,
    pub(super) shared: Arc<Shared>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Starts a storing receiver on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<Self> {
        ReceiverBuilder::default().start().await
    }

    /// Options: address, counting-only mode.
    pub fn builder() -> ReceiverBuilder {
        ReceiverBuilder::default()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, such as `http://127.0.0.1:34567`, or `https://` when serving TLS (the push
    /// path is [`PUSH_PATH`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The accepted entries, in arrival order (empty in counting-only mode).
    pub fn entries(&self) -> Vec<ReceivedEntry> {
        lock(&self.shared.entries).clone()
    }

    /// The lines of the accepted entries, in arrival order (empty in counting-only mode).
    pub fn lines(&self) -> Vec<String> {
        lock(&self.shared.entries)
            .iter()
            .map(|e| e.line.clone())
            .collect()
    }

    /// How many entries were accepted (counted in both modes).
    pub fn count(&self) -> u64 {
        self.shared.count.load(Ordering::Acquire)
    }

    /// Bytes of the accepted lines.
    pub fn line_bytes(&self) -> u64 {
        self.shared.line_bytes.load(Ordering::Relaxed)
    }

    /// Bodies refused because Loki would refuse them (bad JSON, labels, timestamps, encoding...).
    /// A correct client keeps this at 0.
    pub fn rejected_bodies(&self) -> u64 {
        self.shared.rejected_bodies.load(Ordering::Relaxed)
    }

    /// Valid bodies refused by [`reject_lines_containing`](Self::reject_lines_containing).
    pub fn rule_rejections(&self) -> u64 {
        self.shared.rule_rejections.load(Ordering::Relaxed)
    }

    /// Push requests received so far (any outcome, including ones still held by a hang).
    pub fn request_count(&self) -> u64 {
        self.shared.requests_seen.load(Ordering::Acquire)
    }

    /// The most push requests that were open at the same time (a client's effective concurrency).
    pub fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::Relaxed)
    }

    /// Requests that a hang fault held.
    pub fn hung_requests(&self) -> u64 {
        self.shared.hung.load(Ordering::Relaxed)
    }

    /// The log of answered requests (status, headers, entries, error), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).iter().cloned().collect()
    }

    /// Waits until at least `n` entries were accepted, or `timeout` passes; returns whether they were.
    /// Wakes on each accepted request, never polls.
    pub async fn wait_for_count(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.count() >= n).await
    }

    /// Waits until at least `n` push requests arrived (any outcome), or `timeout` passes.
    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.request_count() >= n).await
    }

    pub(super) async fn wait_until(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a wake between the check and the await is not lost.
            notified.as_mut().enable();
            if done() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done();
            }
        }
    }

    /// Answers the next `n` valid requests with `status` (429 and 503 carry the
    /// [`retry_after`](Self::retry_after) header if set).
    pub fn fail_next(&self, n: u32, status: u16) {
        self.faults().fail_next = Some((n, status));
    }

    /// Answers every valid request with `status` for `duration` from now.
    pub fn fail_for(&self, duration: Duration, status: u16) {
        self.faults().fail_until = Some((Instant::now() + duration, status));
    }

    /// Holds the next `n` valid requests without answering until the client gives up or the
    /// receiver shuts down.
    pub fn hang_next(&self, n: u32) {
        self.faults().hang_next = n;
    }

    /// Holds every valid request for `duration` from now; a request still open when the hang ends
    /// gets a 503 (the hang stood for an outage).
    pub fn hang_for(&self, duration: Duration) {
        self.faults().hang_until = Some(Instant::now() + duration);
    }

    /// Refuses with 400 any valid body with a line containing `text` (as Loki refuses a line that
    /// is too long or too old): the client must drop it, not retry it.
    pub fn reject_lines_containing(&self, text: impl Into<String>) {
        self.faults().reject_containing.push(text.into());
    }

    /// Sends `Retry-After: <seconds>` with injected 429 and 503 answers (`None`: no header).
    pub fn retry_after(&self, seconds: Option<u64>) {
        self.faults().retry_after = seconds;
    }

    /// Answers every valid request only after `latency` (`None`: at once), like a loaded Loki; the
    /// other faults apply after it.
    pub fn latency(&self, latency: Option<Duration>) {
        self.faults().latency = latency;
    }

    /// Ends every fault and rule.
    pub fn clear_faults(&self) {
        *self.faults() = Faults::default();
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.shared.faults)
    }

    /// Stops serving and waits for the server task (aborting it after a grace period).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Poisoning cannot leave these plain collections inconsistent, so a poisoned lock is used as is.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) store_entries: bool,
    pub(super) cancel: CancellationToken,
    pub(super) entries: Mutex<Vec<ReceivedEntry>>,
    pub(super) count: AtomicU64,
    pub(super) line_bytes: AtomicU64,
    pub(super) rejected_bodies: AtomicU64,
    pub(super) rule_rejections: AtomicU64,
    pub(super) requests_seen: AtomicU64,
    pub(super) hung: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) max_in_flight: AtomicU64,
    pub(super) requests: Mutex<VecDeque<RequestRecord>>,
    pub(super) faults: Mutex<Faults>,
    pub(super) notify: Notify,
    pub(super) auth: Mutex<Option<Required>>,
    pub(super) auth_failures: AtomicU64,
    pub(super) handshake_failures: AtomicU64,
    pub(super) last_handshake_error: Mutex<Option<String>>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "receiver_tests.rs"]
mod tests;
