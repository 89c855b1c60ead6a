//! The heap endpoints of the `/debug` router (mounted by [`super::router::router`]):
//!
//! - `GET /debug/pprof/heap`: memory in use as a gzipped pprof protobuf (`go tool pprof`);
//!   `?debug=1`: a text table by allocation site, largest first, with stacks;
//! - `GET /debug/pprof/heap/flamegraph`: the same as an SVG flamegraph of bytes in use.
//!
//! Failures answer `text/plain` (so `curl` shows the sentence on how to fix it): 501 when heap
//! profiling is not built in or jemalloc's profiler is inactive, 429 with `Retry-After` while
//! another heap profile is being taken, 400 for a bad parameter, 503 when the server stops.

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Probe;
use super::heap::{self, HeapError, HeapProfile};

/// A heap request that failed: status and sentence, as text.
#[derive(Debug)]
pub(crate) struct HeapApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl From<HeapError> for HeapApiError {
    fn from(err: HeapError) -> Self {
        let (status, kind) = match err {
            HeapError::NotBuilt => (StatusCode::NOT_IMPLEMENTED, "heap_not_built"),
            HeapError::Inactive(_) => (StatusCode::NOT_IMPLEMENTED, "heap_inactive"),
            HeapError::Busy => (StatusCode::TOO_MANY_REQUESTS, "heap_busy"),
            HeapError::BadSampleBytes(_) => (StatusCode::BAD_REQUEST, "bad_param"),
            HeapError::Dump(_) => (StatusCode::INTERNAL_SERVER_ERROR, "heap_dump"),
        };
        HeapApiError {
            status,
            kind,
            message: err.to_string(),
        }
    }
}

impl IntoResponse for HeapApiError {
    fn into_response(self) -> Response {
        tracing::warn!(status = %self.status, kind = self.kind, error = %self.message, "debug request failed");
        metrics::counter!("diagtool_probe_request_errors_total", "kind" => self.kind).increment(1);
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.message),
        )
            .into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        response
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct HeapParams {
    debug: Option<String>,
}

/// Takes a profile on the serving runtime's blocking pool; ends early when the server stops.
async fn take(probe: &Probe) -> Result<HeapProfile, HeapApiError> {
    let stop = probe.stop_token();
    tokio::select! {
        taken = heap::profile() => Ok(taken?),
        () = stop.cancelled() => Err(HeapApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "stopping",
            message: "the debug server is stopping: retry once the service is back".to_owned(),
        }),
    }
}

pub(crate) async fn heap_profile(
    State(probe): State<Probe>,
    Query(params): Query<HeapParams>,
) -> Result<Response, HeapApiError> {
    let text = match params.debug.as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(other) => {
            return Err(HeapApiError {
                status: StatusCode::BAD_REQUEST,
                kind: "bad_param",
                message: format!("debug={other:?} is invalid: use 0 (pprof protobuf) or 1 (text)"),
            });
        }
    };
    let profile = take(&probe).await?;
    Ok(if text {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            profile.to_text(),
        )
            .into_response()
    } else {
        (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"heap.pb.gz\"",
                ),
            ],
            profile.to_pprof(),
        )
            .into_response()
    })
}

pub(crate) async fn heap_flamegraph(State(probe): State<Probe>) -> Result<Response, HeapApiError> {
    let profile = take(&probe).await?;
    let title = format!("{} heap in use", probe.service());
    let svg = profile.to_flamegraph(&title)?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}
