//! The `/debug/*` HTTP endpoints (CONTRACT.md "Debug port"), as an axum `Router` any host mounts.
//!
//! - `GET /debug/`: an HTML index, like Go's `/debug/pprof/` page;
//! - `GET /debug/tasks[?debug=2][&format=text]`: a snapshot;
//! - `GET /debug/tasks/dump[?timeout_ms=N]`: a task dump (503 when the runtime cannot be traced
//!   in time);
//! - `GET /debug/pprof/tasks?debug=0|1|2[&timeout_ms=N]`: the dump as a pprof task profile or text;
//! - `GET /debug/pprof/profile?seconds=N` and `/debug/pprof/flamegraph?seconds=N`: a CPU profile
//!   (default 30 s, at most 60), 409 while another one runs;
//! - `GET /debug/pprof/heap[?debug=1]` and `/debug/pprof/heap/flamegraph`: memory in use
//!   (`heap_router.rs`; 501 without the `heap-profiling` feature).
//!
//! Errors are JSON (`{"error": "..."}`) with the status that says what happened: 400 for a bad
//! parameter, 401 for a missing or wrong token, 409 for an overlapping profile, 503 for a dump
//! timeout (or a dump cut short by the server stopping). Each failure is logged once and counted
//! in `diagtool_probe_request_errors_total{kind}`.
//!
//! Where it runs: the handlers assume nothing about the runtime they run on. Snapshots and dumps
//! look at [`Probe::host`] (the service's runtime, set by [`super::DebugServer`], which serves
//! this router on a thread and runtime of its own); their timers and blocking work (symbolising,
//! CPU sampling) use the runtime serving the request. [`serve`] and [`serve_on`] serve it on the
//! caller's runtime instead, which then cannot answer while all of its workers are blocked.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::cpu::{self, CpuError};
use super::dump::{self, DumpError, DumpMode};
use super::{MAX_DUMP_TIMEOUT, Probe, ProbeError};

/// Refuses a non-loopback `addr` without a token: dumps and profiles reveal the service's code
/// and can cost it CPU, so they are not for the open network.
///
/// # Examples
/// ```
/// use diagtool_probe::check_bind;
/// assert!(check_bind("127.0.0.1:6060".parse().unwrap(), None).is_ok());
/// assert!(check_bind("0.0.0.0:6060".parse().unwrap(), None).is_err());
/// assert!(check_bind("0.0.0.0:6060".parse().unwrap(), Some("s3cret")).is_ok());
/// ```
pub fn check_bind(addr: SocketAddr, token: Option<&str>) -> Result<(), ProbeError> {
    let has_token = token.is_some_and(|t| !t.is_empty());
    if addr.ip().is_loopback() || has_token {
        Ok(())
    } else {
        Err(ProbeError::InsecureBind(addr))
    }
}

/// Binds `addr` (after [`check_bind`]) and serves [`router`] on the current runtime until
/// `shutdown` fires, then finishes the requests in flight. To keep `/debug` answering when that
/// runtime's workers are stuck, use [`super::DebugServer`] instead.
pub async fn serve(
    probe: Probe,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(), ProbeError> {
    check_bind(addr, probe.token())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ProbeError::Io { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(%bound, "serving /debug");
    serve_on(probe, listener, shutdown).await
}

/// [`serve`] on a listener the host already bound (for example on port 0 in tests). The
/// loopback-or-token rule is checked against the listener's address.
pub async fn serve_on(
    probe: Probe,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ProbeError> {
    let addr = listener.local_addr().map_err(|source| ProbeError::Io {
        addr: probe.addr(),
        source,
    })?;
    check_bind(addr, probe.token())?;
    // Long requests (CPU profiles) end early when the server stops, instead of holding it up.
    let probe = probe.with_stop(shutdown.clone());
    axum::serve(listener, router(probe))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|source| ProbeError::Io { addr, source })
}

/// The `/debug/*` router, with the bearer-token check when the probe has a token.
pub fn router(probe: Probe) -> Router {
    Router::new()
        .route("/debug", get(index))
        .route("/debug/", get(index))
        .route("/debug/tasks", get(tasks))
        .route("/debug/tasks/dump", get(tasks_dump))
        .route("/debug/pprof/tasks", get(pprof_tasks))
        .route("/debug/pprof/profile", get(cpu_profile))
        .route("/debug/pprof/flamegraph", get(cpu_flamegraph))
        .route("/debug/pprof/heap", get(super::heap_router::heap_profile))
        .route(
            "/debug/pprof/heap/flamegraph",
            get(super::heap_router::heap_flamegraph),
        )
        .route_layer(middleware::from_fn_with_state(probe.clone(), require_token))
        .with_state(probe)
}

/// A failed request: a status and a message, rendered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header (rate-limited dumps).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_param(message: String) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_param", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Logged and counted once here, whatever the handler.
        tracing::warn!(status = %self.status, kind = self.kind, error = %self.message, "debug request failed");
        metrics::counter!("diagtool_probe_request_errors_total", "kind" => self.kind).increment(1);
        let body = serde_json::json!({ "error": self.message });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<DumpError> for ApiError {
    fn from(err: DumpError) -> Self {
        let (status, kind) = match err {
            DumpError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "dump_timeout"),
            DumpError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "dump_busy"),
            DumpError::Resolve(_) => (StatusCode::SERVICE_UNAVAILABLE, "dump_resolve"),
            DumpError::GlobalDisabled => (StatusCode::FORBIDDEN, "dump_global_off"),
            DumpError::GlobalFused(_) => (StatusCode::SERVICE_UNAVAILABLE, "dump_global_fused"),
            DumpError::Running => (StatusCode::TOO_MANY_REQUESTS, "dump_running"),
        };
        let mut api = ApiError::new(status, kind, err.to_string());
        if matches!(err, DumpError::Running) {
            api.retry_after = Some(1);
        }
        api
    }
}

impl From<CpuError> for ApiError {
    fn from(err: CpuError) -> Self {
        let (status, kind) = match err {
            CpuError::Busy => (StatusCode::CONFLICT, "profile_busy"),
            CpuError::BadSeconds(_) => (StatusCode::BAD_REQUEST, "bad_param"),
            CpuError::Profiler(_) | CpuError::Flamegraph(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "profiler")
            }
        };
        ApiError::new(status, kind, err.to_string())
    }
}

async fn require_token(State(probe): State<Probe>, request: Request, next: Next) -> Response {
    let Some(expected) = probe.token() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token: send Authorization: Bearer TOKEN",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// Compares without stopping at the first difference, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Query parameters, all as text so a bad value gets our own message.
#[derive(Debug, Default, Deserialize)]
struct Params {
    debug: Option<String>,
    format: Option<String>,
    timeout_ms: Option<String>,
    seconds: Option<String>,
    mode: Option<String>,
}

fn parse_mode(value: Option<&str>) -> Result<DumpMode, ApiError> {
    match value {
        None => Ok(DumpMode::SelfTraced),
        Some(v) => DumpMode::parse(v).ok_or_else(|| {
            ApiError::bad_param(format!(
                "mode={v:?} is invalid: use self (the default, safe) or global (stops the runtime; opt-in)"
            ))
        }),
    }
}

fn parse_debug(value: Option<&str>, default: u8) -> Result<u8, ApiError> {
    match value {
        None => Ok(default),
        Some(v) => match v.parse::<u8>() {
            Ok(n) if n <= 2 => Ok(n),
            _ => Err(ApiError::bad_param(format!(
                "debug={v:?} is invalid: use 0, 1 or 2"
            ))),
        },
    }
}

fn parse_timeout(probe: &Probe, value: Option<&str>) -> Result<Duration, ApiError> {
    match value {
        None => Ok(probe.dump_timeout()),
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if ms >= 1 && Duration::from_millis(ms) <= MAX_DUMP_TIMEOUT => {
                Ok(Duration::from_millis(ms))
            }
            _ => Err(ApiError::bad_param(format!(
                "timeout_ms={v:?} is invalid: use 1 to {}",
                MAX_DUMP_TIMEOUT.as_millis()
            ))),
        },
    }
}

fn parse_seconds(value: Option<&str>) -> Result<u64, ApiError> {
    match value {
        None => Ok(cpu::DEFAULT_SECONDS),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=cpu::MAX_SECONDS).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_param(format!(
                "seconds={v:?} is invalid: use 1 to {}",
                cpu::MAX_SECONDS
            ))),
        },
    }
}

fn with_type(content_type: &'static str, body: impl IntoResponse) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index(State(probe): State<Probe>) -> Html<String> {
    let rows = [
        ("tasks", "live tasks by spawn site (JSON)"),
        ("tasks?format=text", "the same, as text"),
        ("tasks?debug=2", "with every live task"),
        (
            "tasks/dump",
            "task dump: where each task waits (JSON); safe in production",
        ),
        (
            "pprof/tasks?debug=1",
            "task dump grouped by trace, largest first",
        ),
        ("pprof/tasks?debug=2", "task dump, one block per task"),
        (
            "pprof/tasks?debug=0",
            "task dump as a pprof profile (go tool pprof)",
        ),
        (
            "pprof/profile?seconds=30",
            "CPU profile, pprof protobuf (go tool pprof)",
        ),
        (
            "pprof/flamegraph?seconds=30",
            "CPU profile as an SVG flamegraph",
        ),
        (
            "pprof/heap",
            "memory in use by stack, pprof protobuf (go tool pprof)",
        ),
        (
            "pprof/heap?debug=1",
            "memory in use by allocation site, largest first",
        ),
        (
            "pprof/heap/flamegraph",
            "memory in use as an SVG flamegraph",
        ),
    ];
    let totals = probe.registry().totals();
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><title>/debug/ {service}</title></head><body>\n\
         <h1>/debug/ &mdash; {service}</h1>\n<p>{live} live tasks ({spawned} spawned). \
         Profiles take <code>seconds</code> (default {def}, at most {max}).</p>\n",
        service = escape_html(probe.service()),
        live = totals.live,
        spawned = totals.spawned,
        def = cpu::DEFAULT_SECONDS,
        max = cpu::MAX_SECONDS,
    );
    if let Some(warning) = super::process::stale_binary_warning() {
        html.push_str(&format!(
            "<p style=\"color:#b00\"><strong>Warning:</strong> {}</p>\n",
            escape_html(&warning)
        ));
    }
    let dumper = probe.dumper();
    let global = match (dumper.global_enabled(), dumper.global_fused()) {
        (false, _) => "off (the service did not opt in: it stops every worker at a barrier)".to_owned(),
        (true, Some(after)) => format!("off for this process: one timed out after {after:?}"),
        (true, None) => "enabled (stops every worker at a barrier: a timed-out one can wedge the runtime, so it is fused after one timeout)".to_owned(),
    };
    html.push_str(&format!(
        "<p>Limits: one task dump at a time (429 otherwise), at least {interval:?} apart (a request \
         sooner waits for the rest of the interval); a dump \
         waits at most <code>timeout_ms</code> (default {timeout:?}, at most {max:?}) for tasks to \
         trace themselves and then answers with what it has. One CPU profile at a time (409 \
         otherwise). <code>?mode=global</code> dumps: {global}.</p>\n",
        interval = dumper.interval(),
        timeout = probe.dump_timeout(),
        max = MAX_DUMP_TIMEOUT,
        global = escape_html(&global),
    ));
    html.push_str("<table>\n");
    for (path, what) in rows {
        html.push_str(&format!(
            "<tr><td><a href=\"/debug/{path}\">{path}</a></td><td>{what}</td></tr>\n"
        ));
    }
    html.push_str("</table>\n</body></html>\n");
    Html(html)
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn tasks(
    State(probe): State<Probe>,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    let debug = parse_debug(params.debug.as_deref(), 0)?;
    let snap = probe.snapshot(debug >= 2);
    match params.format.as_deref() {
        None | Some("json") => Ok(axum::Json(snap).into_response()),
        Some("text") => Ok(with_type(
            "text/plain; charset=utf-8",
            crate::model::text::snapshot(&snap),
        )),
        Some(other) => Err(ApiError::bad_param(format!(
            "format={other:?} is invalid: use json or text"
        ))),
    }
}

/// Dumps the probe's host runtime (set by [`super::DebugServer`]), else the one serving the request.
async fn take_dump(
    probe: &Probe,
    timeout: Duration,
    mode: DumpMode,
) -> Result<crate::model::Dump, ApiError> {
    let Some(handle) = probe.host() else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no_runtime",
            "no tokio runtime to dump: serve the router on one, or set the probe's host runtime",
        ));
    };
    // A dump may wait up to a minute for a stuck runtime: end it when the server stops, as a CPU
    // profile does, so a shutdown is never held up by it.
    let stop = probe.stop_token();
    tokio::select! {
        dumped = probe.dumper().dump_mode(&handle, timeout, mode) => Ok(dumped?),
        () = stop.cancelled() => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the debug server is stopping: retry once the service is back",
        )),
    }
}

async fn tasks_dump(
    State(probe): State<Probe>,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    let timeout = parse_timeout(&probe, params.timeout_ms.as_deref())?;
    let mode = parse_mode(params.mode.as_deref())?;
    Ok(warn_if_stale(
        axum::Json(take_dump(&probe, timeout, mode).await?).into_response(),
    ))
}

/// Adds an HTTP `Warning` header to a response whose symbols came from the executable on disk
/// when that file is no longer the one running (see [`super::process::stale_binary_warning`]),
/// and logs it once per process. `diagtool` prints the header to stderr.
fn warn_if_stale(mut response: Response) -> Response {
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let Some(warning) = super::process::stale_binary_warning() else {
        return response;
    };
    if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!("{warning}");
    }
    metrics::counter!("diagtool_probe_stale_binary_answers_total").increment(1);
    // RFC 7234's form: code 199 (miscellaneous), agent, quoted text.
    let text = format!("199 diagtool \"{}\"", warning.replace('"', "'"));
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().insert(header::WARNING, value);
    }
    response
}

async fn pprof_tasks(
    State(probe): State<Probe>,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    let debug = parse_debug(params.debug.as_deref(), 0)?;
    let timeout = parse_timeout(&probe, params.timeout_ms.as_deref())?;
    let mode = parse_mode(params.mode.as_deref())?;
    let dump = take_dump(&probe, timeout, mode).await?;
    if debug == 0 {
        Ok(warn_if_stale(pprof_response(
            dump::to_pprof(&dump),
            "tasks",
        )))
    } else {
        Ok(warn_if_stale(with_type(
            "text/plain; charset=utf-8",
            dump::render_text(&dump, debug),
        )))
    }
}

fn pprof_response(body: Vec<u8>, name: &'static str) -> Response {
    let disposition = match name {
        "tasks" => "attachment; filename=\"tasks.pb.gz\"",
        _ => "attachment; filename=\"profile.pb.gz\"",
    };
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

async fn cpu_profile(
    State(probe): State<Probe>,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    let seconds = parse_seconds(params.seconds.as_deref())?;
    let profile = cpu::profile(seconds, probe.cpu_frequency_hz(), probe.stop_token()).await?;
    Ok(warn_if_stale(pprof_response(profile.to_pprof(), "profile")))
}

async fn cpu_flamegraph(
    State(probe): State<Probe>,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    let seconds = parse_seconds(params.seconds.as_deref())?;
    let profile = cpu::profile(seconds, probe.cpu_frequency_hz(), probe.stop_token()).await?;
    let title = format!("{} CPU, {} s", probe.service(), seconds);
    let svg = profile.to_flamegraph(&title)?;
    Ok(warn_if_stale(with_type("image/svg+xml", svg)))
}
