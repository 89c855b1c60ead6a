//! The heap metrics: `<prefix>_heap_inuse_bytes{site}` for the top [`TOP_SITES`] allocation
//! sites and `<prefix>_heap_inuse_total_bytes`, from a heap profile taken at most every
//! [`REFRESH`]. (Not `_heap_inuse_bytes_total`: Prometheus keeps the `_total` suffix for
//! counters, and `promtool check metrics` fails a gauge that carries it.)
//!
//! [`crate::record_metrics`] runs where the host renders `/metrics`, often on the service's own
//! runtime, and a profile (jemalloc's dump, symbolising) takes milliseconds to seconds. So a
//! scrape only reads the last figures; when they are older than [`REFRESH`] it starts one
//! short-lived thread ([`THREAD_NAME`]) that takes a new profile and ends. A scrape never waits
//! for it: the first scrape after start shows no heap series yet.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::{Unit, describe_gauge, gauge};

/// Sites exported, by in-use bytes (a bounded number of series).
pub(crate) const TOP_SITES: usize = 20;
/// Least time between two profiles taken for metrics.
pub(crate) const REFRESH: Duration = Duration::from_secs(10);
/// Name of the thread that refreshes the figures.
pub(crate) const THREAD_NAME: &str = "diag-heap-metrics";

#[derive(Debug, Default)]
struct State {
    /// When the last refresh started.
    started: Option<Instant>,
    refreshing: bool,
    /// The last figures: top sites and the total.
    figures: Option<(Vec<(String, i64)>, i64)>,
}

static STATE: Mutex<State> = Mutex::new(State {
    started: None,
    refreshing: false,
    figures: None,
});

/// Sites given a series once: a site that drops out of the top is set to 0, not left stale.
static EMITTED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

/// Records the heap series under `prefix` from the last figures, and starts a refresh when they
/// are older than [`REFRESH`]. Does nothing when heap profiling is not built in or inactive.
pub(crate) fn record(prefix: &str) {
    if !crate::heap::is_built_in() || crate::heap::sample_bytes().is_err() {
        return;
    }
    let figures = {
        let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
        let stale = state.started.is_none_or(|at| at.elapsed() >= REFRESH);
        if stale && !state.refreshing {
            state.refreshing = true;
            state.started = Some(Instant::now());
            let spawned = std::thread::Builder::new()
                .name(THREAD_NAME.to_owned())
                .spawn(refresh);
            if let Err(err) = spawned {
                state.refreshing = false;
                tracing::warn!(error = %err, "cannot start the heap metrics thread");
            }
        }
        state.figures.clone()
    };
    let Some((sites, total)) = figures else {
        return;
    };
    describe(prefix);
    let name = format!("{prefix}_heap_inuse_bytes");
    let mut emitted = EMITTED.lock().unwrap_or_else(|p| p.into_inner());
    let current: BTreeSet<(String, String)> = sites
        .iter()
        .map(|(site, _)| (prefix.to_owned(), site.clone()))
        .collect();
    for (gone_prefix, site) in emitted.difference(&current) {
        if gone_prefix == prefix {
            gauge!(name.clone(), "site" => site.clone()).set(0.0);
        }
    }
    for (site, bytes) in &sites {
        gauge!(name.clone(), "site" => site.clone()).set(*bytes as f64);
    }
    emitted.extend(current);
    gauge!(format!("{prefix}_heap_inuse_total_bytes")).set(total as f64);
}

/// Takes a profile (skipped when one is being taken for a request) and keeps its figures.
fn refresh() {
    let figures = match crate::heap::take_blocking() {
        Ok(profile) => {
            let total = profile.inuse_bytes();
            let sites = profile
                .sites()
                .into_iter()
                .take(TOP_SITES)
                .map(|site| (site.site, site.inuse_bytes))
                .collect();
            Some((sites, total))
        }
        Err(crate::heap::HeapError::Busy) => None,
        Err(err) => {
            tracing::warn!(error = %err, "heap metrics not refreshed");
            None
        }
    };
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    state.refreshing = false;
    if figures.is_some() {
        state.figures = figures;
    } else {
        // Retry at the next scrape rather than a whole period later.
        state.started = None;
    }
}

fn describe(prefix: &str) {
    describe_gauge!(
        format!("{prefix}_heap_inuse_bytes"),
        Unit::Bytes,
        "memory in use by allocation site (file:line of the service's own code), top 20, \
         estimated from jemalloc's samples, refreshed at most every 10 s; a site that only climbs leaks"
    );
    describe_gauge!(
        format!("{prefix}_heap_inuse_total_bytes"),
        Unit::Bytes,
        "memory in use over every sampled allocation (estimated), refreshed at most every 10 s"
    );
}
