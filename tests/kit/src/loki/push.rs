//! The receiver's request path: the router, and the push handler that checks credentials,
//! applies the faults in force, decodes and validates the body (as Loki does), and stores or
//! counts what it accepted.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::faults::Fault;
use super::receiver::*;
use super::wire::{MAX_DECODED_BYTES, Stream, decode_push};

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(PUSH_PATH, post(push))
        .route("/ready", get(|| async { "ready\n" }))
        // Bodies are bounded by what decode_push would inflate anyway; axum's 2 MB default is
        // smaller than a real batch.
        .layer(DefaultBodyLimit::max(MAX_DECODED_BYTES))
        .with_state(shared)
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Counts a request as open for as long as its handler runs, including when the client gives up.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn push(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let _open = InFlight::enter(&shared);
    shared.requests_seen.fetch_add(1, Ordering::AcqRel);
    let mut record = RequestRecord {
        status: 204,
        content_type: header(&headers, "content-type"),
        content_encoding: header(&headers, "content-encoding"),
        tenant: header(&headers, "x-scope-orgid"),
        entries: 0,
        body_bytes: body.len(),
        error: None,
        headers: headers
            .iter()
            .filter(|(name, _)| *name != http::header::AUTHORIZATION)
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
    };
    // Credentials first, as a gateway does: a refused push's body is not even looked at.
    let required = lock(&shared.auth).clone();
    if let Some(required) = required
        && !required.accepts(&headers)
    {
        shared.auth_failures.fetch_add(1, Ordering::AcqRel);
        let mut response = finish(
            &shared,
            record,
            StatusCode::UNAUTHORIZED,
            "missing or wrong credentials".into(),
            None,
        );
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(required.challenge()),
        );
        return response;
    }
    let decoded = decode_push(
        record.content_type.as_deref(),
        record.content_encoding.as_deref(),
        &body,
    );
    let streams = match decoded {
        Ok(streams) => streams,
        Err(e) => {
            shared.rejected_bodies.fetch_add(1, Ordering::Relaxed);
            let msg = e.to_string();
            tracing::warn!(error = %msg, "loki receiver rejected a body");
            return finish(&shared, record, StatusCode::BAD_REQUEST, msg, None);
        }
    };
    record.entries = streams.iter().map(|s| s.entries.len()).sum();

    let latency = lock(&shared.faults).latency;
    if let Some(latency) = latency {
        tokio::select! {
            _ = shared.cancel.cancelled() => {}
            _ = tokio::time::sleep(latency) => {}
        }
    }

    let fault = lock(&shared.faults).take(Instant::now());
    match fault {
        Some(Fault::Fail(status, retry_after)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let retry_after = retry_after.filter(|_| {
                status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
            });
            return finish(
                &shared,
                record,
                status,
                format!("injected fault: {status}"),
                retry_after,
            );
        }
        Some(Fault::Hang(until)) => {
            shared.hung.fetch_add(1, Ordering::Relaxed);
            shared.notify.notify_waiters();
            // If the client gives up, the server drops this future while it waits; the guard
            // then records the request as 499 (nginx's "client closed request").
            let mut held = Held {
                shared: &shared,
                record: Some(record),
            };
            match until {
                Some(until) => tokio::select! {
                    _ = shared.cancel.cancelled() => {}
                    _ = tokio::time::sleep_until(until) => {}
                },
                None => shared.cancel.cancelled().await,
            }
            let record = held.record.take().unwrap_or_default();
            let status = StatusCode::SERVICE_UNAVAILABLE;
            return finish(&shared, record, status, "injected hang ended".into(), None);
        }
        None => {}
    }

    let rejected_by = {
        let faults = lock(&shared.faults);
        faults
            .reject_containing
            .iter()
            .find(|text| {
                streams
                    .iter()
                    .flat_map(|s| &s.entries)
                    .any(|e| e.line.contains(text.as_str()))
            })
            .cloned()
    };
    if let Some(text) = rejected_by {
        shared.rule_rejections.fetch_add(1, Ordering::Relaxed);
        let msg = format!("line contains rejected text {text:?}");
        return finish(&shared, record, StatusCode::BAD_REQUEST, msg, None);
    }

    store(&shared, streams, record.tenant.as_deref());
    finish(&shared, record, StatusCode::NO_CONTENT, String::new(), None)
}

/// A request held by a hang fault; recorded as [`STATUS_CLIENT_GAVE_UP`] if dropped while held.
struct Held<'a> {
    shared: &'a Shared,
    record: Option<RequestRecord>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            let status =
                StatusCode::from_u16(STATUS_CLIENT_GAVE_UP).unwrap_or(StatusCode::REQUEST_TIMEOUT);
            let _ = finish(
                self.shared,
                record,
                status,
                "client gave up during an injected hang".into(),
                None,
            );
        }
    }
}

fn store(shared: &Shared, streams: Vec<Stream>, tenant: Option<&str>) {
    let mut count = 0u64;
    let mut bytes = 0u64;
    for s in &streams {
        count += s.entries.len() as u64;
        bytes += s.entries.iter().map(|e| e.line.len() as u64).sum::<u64>();
    }
    if shared.store_entries {
        let mut entries = lock(&shared.entries);
        for s in streams {
            let labels = Arc::new(s.labels);
            entries.extend(s.entries.into_iter().map(|e| ReceivedEntry {
                labels: labels.clone(),
                ts_ns: e.ts_ns,
                line: e.line,
                structured_metadata: e.structured_metadata,
                tenant: tenant.map(str::to_owned),
            }));
        }
    }
    shared.line_bytes.fetch_add(bytes, Ordering::Relaxed);
    // Released after the entries are stored, so a waiter that sees the count sees the entries.
    shared.count.fetch_add(count, Ordering::AcqRel);
}

fn finish(
    shared: &Shared,
    mut record: RequestRecord,
    status: StatusCode,
    error: String,
    retry_after: Option<u64>,
) -> Response {
    record.status = status.as_u16();
    record.error = (!error.is_empty()).then(|| error.clone());
    {
        let mut requests = lock(&shared.requests);
        if requests.len() >= MAX_REQUEST_RECORDS {
            requests.pop_front();
        }
        requests.push_back(record);
    }
    shared.notify.notify_waiters();
    let mut response = (status, error).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
