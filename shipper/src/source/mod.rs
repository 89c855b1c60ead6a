//! Sources: files, Docker json-file logs and Kubernetes (CRI) pod logs, all read by one reader
//! actor ([`reader`]). Each record format has its decoder ([`docker`], [`cri`]) sharing the
//! partial-line [`merge`]; any source may join lines into entries ([`multiline`]).
//!
//! What sources observe (files added and removed, lines read, truncated lines, unreadable files) is
//! reported through [`SourceEvents`]; [`MetricEvents`] turns it into the contract's metrics and logs
//! each failure once, tests use their own implementation.

pub mod cri;
pub mod docker;
pub mod fingerprint;
pub mod lines;
pub mod merge;
pub mod multiline;
pub mod reader;
mod watcher;

/// What sources report. Every method is cheap and never blocks.
pub trait SourceEvents: Send + Sync + std::fmt::Debug {
    /// A file is now followed.
    fn file_added(&self, path: &str, offset: u64);
    /// A file is no longer followed (rotated away or deleted, read to its end).
    fn file_removed(&self, path: &str);
    /// The number of followed files changed.
    fn files_active(&self, n: usize);
    /// A read pass produced `lines` lines from `bytes` bytes.
    fn lines_read(&self, lines: u64, bytes: u64);
    /// `n` lines were longer than `max_line_bytes` and were shipped truncated.
    fn lines_truncated(&self, path: &str, n: u64);
    /// A file was truncated in place (copytruncate) and is read again from its start.
    fn file_truncated(&self, path: &str);
    /// A file could not be opened or read (reported once until it works again).
    fn read_error(&self, path: &str, error: &std::io::Error);
    /// A Docker record could not be decoded; it was shipped raw.
    fn docker_invalid(&self, path: &str, error: &str);
    /// A CRI (Kubernetes) record could not be decoded; it was shipped raw.
    fn cri_invalid(&self, path: &str, error: &str);
}

/// The production [`SourceEvents`]: metrics through the `metrics` facade and logs.
#[derive(Debug, Default)]
pub struct MetricEvents;

impl SourceEvents for MetricEvents {
    fn file_added(&self, path: &str, offset: u64) {
        tracing::info!(path, offset, "following file");
    }
    fn file_removed(&self, path: &str) {
        tracing::info!(path, "file finished and closed");
    }
    fn files_active(&self, n: usize) {
        metrics::gauge!("shipper_files_active").set(n as f64);
    }
    fn lines_read(&self, lines: u64, bytes: u64) {
        metrics::counter!("shipper_read_lines_total").increment(lines);
        metrics::counter!("shipper_read_bytes_total").increment(bytes);
    }
    fn lines_truncated(&self, path: &str, n: u64) {
        metrics::counter!("shipper_dropped_entries_total", "reason" => "line_too_long")
            .increment(n);
        tracing::debug!(
            path,
            n,
            "lines longer than max_line_bytes shipped truncated"
        );
    }
    fn file_truncated(&self, path: &str) {
        metrics::counter!("shipper_files_truncated_total").increment(1);
        tracing::info!(
            path,
            "file truncated in place; reading it again from the start"
        );
    }
    fn read_error(&self, path: &str, error: &std::io::Error) {
        metrics::counter!("shipper_read_errors_total").increment(1);
        tracing::warn!(path, %error, "cannot read file; will retry");
    }
    fn docker_invalid(&self, path: &str, error: &str) {
        metrics::counter!("shipper_docker_invalid_records_total").increment(1);
        tracing::warn!(path, error, "invalid docker record shipped as raw text");
    }
    fn cri_invalid(&self, path: &str, error: &str) {
        metrics::counter!("shipper_cri_invalid_records_total").increment(1);
        tracing::warn!(path, error, "invalid CRI record shipped as raw text");
    }
}
