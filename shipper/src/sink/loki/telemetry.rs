//! The Loki sink's metrics, through the `metrics` facade (the binary installs the Prometheus
//! recorder; without one these are no-ops). Names are part of the contract.

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

/// Entries Loki accepted.
pub(crate) const SENT_ENTRIES: &str = "shipper_sent_entries_total";
/// Line bytes Loki accepted (uncompressed, as read).
pub(crate) const SENT_BYTES: &str = "shipper_sent_bytes_total";
/// Retried push attempts.
pub(crate) const RETRIES: &str = "shipper_batch_retries_total";
/// Entries dropped for good, by reason.
pub(crate) const DROPPED: &str = "shipper_dropped_entries_total";
/// Push requests by answer.
pub(crate) const REQUESTS: &str = "shipper_loki_requests_total";
/// Push request latency.
pub(crate) const DURATION: &str = "shipper_loki_request_duration_seconds";
/// The adaptive concurrency limit.
pub(crate) const CONCURRENCY: &str = "shipper_loki_concurrency_limit";

/// Pushes refused with 401/403 (retried after re-reading the secret files), by status.
pub(crate) const AUTH_FAILURES: &str = "shipper_loki_auth_failures_total";
/// Pushes that failed in the TLS handshake (retried), by cause.
pub(crate) const TLS_ERRORS: &str = "shipper_loki_tls_errors_total";

/// The `reason` of entries Loki refused with a permanent error.
pub(crate) const REASON_REJECTED: &str = "loki_rejected";

/// The `reason` of entries in a batch that could not be encoded (a bug; never expected).
pub(crate) const REASON_UNENCODABLE: &str = "encode_error";

/// Describes every metric of the sink (idempotent).
pub(crate) fn describe() {
    describe_counter!(SENT_ENTRIES, "Log entries delivered to (accepted by) Loki.");
    describe_counter!(
        SENT_BYTES,
        Unit::Bytes,
        "Bytes of log lines delivered to Loki, uncompressed (compare with shipper_read_bytes_total)."
    );
    describe_counter!(
        RETRIES,
        "Push attempts that failed in a retryable way (429, 5xx, timeout, connection error) and \
         were retried; a steady rise means Loki is down or overloaded."
    );
    describe_counter!(
        DROPPED,
        "Log entries dropped for good, by reason; loki_rejected counts entries in batches Loki \
         refused with a permanent error (400 and other 4xx, 501)."
    );
    describe_counter!(
        REQUESTS,
        "Push requests to Loki by answer: the HTTP status, or timeout, connect or error."
    );
    describe_counter!(
        AUTH_FAILURES,
        "Push attempts Loki (or its gateway) refused with 401 or 403, by status; each is retried \
         after re-reading the secret files, nothing is dropped. A steady rise means the \
         credentials are wrong: the sink shows degraded on /health meanwhile."
    );
    describe_counter!(
        TLS_ERRORS,
        "Push attempts that failed in the TLS handshake, by cause (expired, not_yet_valid, \
         unknown_ca, name_mismatch, bad_certificate, client_certificate_refused, not_tls, \
         handshake); each is retried, nothing is dropped."
    );
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "Push request latency, from sending to the answer (or the failure)."
    );
    describe_gauge!(
        CONCURRENCY,
        "How many push requests may be in flight, as set by adaptive concurrency (AIMD)."
    );
}

pub(crate) fn request(status_label: String, duration: Duration) {
    counter!(REQUESTS, "status" => status_label).increment(1);
    histogram!(DURATION).record(duration.as_secs_f64());
}

pub(crate) fn sent(entries: usize, line_bytes: usize) {
    counter!(SENT_ENTRIES).increment(entries as u64);
    counter!(SENT_BYTES).increment(line_bytes as u64);
}

pub(crate) fn retried() {
    counter!(RETRIES).increment(1);
}

pub(crate) fn dropped(entries: usize, reason: &'static str) {
    counter!(DROPPED, "reason" => reason).increment(entries as u64);
}

pub(crate) fn concurrency(limit: usize) {
    gauge!(CONCURRENCY).set(limit as f64);
}

pub(crate) fn auth_failure(status: u16) {
    counter!(AUTH_FAILURES, "status" => status.to_string()).increment(1);
}

pub(crate) fn tls_error(cause: &'static str) {
    counter!(TLS_ERRORS, "cause" => cause).increment(1);
}
