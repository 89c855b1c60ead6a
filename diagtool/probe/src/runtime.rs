//! Runtime figures: tokio's `RuntimeMetrics` for snapshots, and the `metrics` facade for a host's
//! Prometheus endpoint.
//!
//! [`record_metrics`] is meant to be called by the host right before it renders `/metrics`: it
//! sets gauges and absolute counters from the registry and the runtime at that moment, so no
//! background task is needed and the figures are never older than the scrape.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use tokio::runtime::Handle;

use super::registry::TaskRegistry;
use crate::model::RuntimeStats;

/// Sites that get the age series (`_tasks_oldest_age_seconds`, `_tasks_median_age_seconds`).
///
/// Spawn sites are call sites in the binary's code (`path:line:col`), never data, so their number
/// is fixed by the build: tens in a typical service (the shipper has about 30). Past this cap, the
/// sites after the first `AGE_SITES_CAP` in name order get no age series (their `_tasks_live` and
/// counters stay), and `<prefix>_tasks_age_sites_omitted` says how many; `diagtool watch
/// --prometheus` then judges those sites without the age rule.
pub(crate) const AGE_SITES_CAP: usize = 500;

/// The snapshot's runtime figures from `handle`.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let stats = diagtool_probe::runtime_stats(&tokio::runtime::Handle::current());
/// assert_eq!(stats.workers, 1);
/// # }
/// ```
pub fn runtime_stats(handle: &Handle) -> RuntimeStats {
    let metrics = handle.metrics();
    RuntimeStats {
        workers: metrics.num_workers() as u64,
        alive_tasks: metrics.num_alive_tasks() as u64,
        global_queue_depth: metrics.global_queue_depth() as u64,
        long_polls: long_polls(handle),
    }
}

/// What counts as a long poll: a poll this long holds its worker, and every task queued behind
/// it, past what a service should ever see.
pub const LONG_POLL: Duration = Duration::from_millis(10);

/// The poll-time histogram [`crate::ProbeBuilder::install`] enables: 0.5 ms buckets up to
/// [`LONG_POLL`], and one open bucket for every poll of [`LONG_POLL`] or more.
pub fn poll_time_histogram() -> tokio::runtime::HistogramConfiguration {
    let width = Duration::from_micros(500);
    let below = (LONG_POLL.as_micros() / width.as_micros()) as usize;
    tokio::runtime::HistogramConfiguration::linear(width, below + 1)
}

/// Polls of [`LONG_POLL`] or more since the runtime started, over every worker; `None` when the
/// runtime records no poll-time histogram.
pub fn long_polls(handle: &Handle) -> Option<u64> {
    let metrics = handle.metrics();
    if !metrics.poll_time_histogram_enabled() {
        return None;
    }
    let long_buckets: Vec<usize> = (0..metrics.poll_time_histogram_num_buckets())
        .filter(|&b| metrics.poll_time_histogram_bucket_range(b).start >= LONG_POLL)
        .collect();
    let mut count = 0;
    for worker in 0..metrics.num_workers() {
        for &bucket in &long_buckets {
            count += metrics.poll_time_histogram_bucket_count(worker, bucket);
        }
    }
    Some(count)
}

/// Records the per-site task series and the runtime's figures in the `metrics` facade, each name
/// starting with `prefix` (for example `shipper`):
///
/// - `<prefix>_tasks_live{site}` (gauge): tasks from the site alive now; a site whose value only
///   climbs leaks;
/// - `<prefix>_tasks_spawned_total{site}`, `<prefix>_tasks_terminated_total{site}` (counters);
/// - `<prefix>_tasks_oldest_age_seconds{site}`, `<prefix>_tasks_median_age_seconds{site}`
///   (gauges): the age of the site's oldest live task and the median age of its live tasks, 0 when
///   none is live. A leaking site's oldest age keeps pace with its uptime, so a fleet's judge
///   (`diagtool watch --prometheus`) can apply the age rule from metrics alone. These walk the live
///   tasks (one pass, shard by shard), like a snapshot does;
/// - `<prefix>_tasks_age_sites_omitted` (gauge): sites past the cap of 500 sites (in name order)
///   that got no age series; spawn sites are code locations, so a build has a fixed, small number;
/// - `<prefix>_tokio_workers`, `_tokio_alive_tasks`, `_tokio_global_queue_depth`,
///   `_tokio_blocking_threads`, `_tokio_idle_blocking_threads`, `_tokio_blocking_queue_depth`
///   (gauges);
/// - `<prefix>_tokio_spawned_tasks_total`, `_tokio_remote_schedules_total`,
///   `_tokio_budget_forced_yields_total`, and summed over workers `_tokio_polls_total`,
///   `_tokio_parks_total`, `_tokio_steals_total` (counters), and `_tokio_busy_seconds` (a gauge
///   that only grows: `rate()` it);
/// - `<prefix>_tokio_long_polls_total` (counter): polls of [`LONG_POLL`] or more, when the runtime
///   records poll times ([`crate::ProbeBuilder::install`] turns that on).
///
/// Call it right before rendering the exporter's text; it is cheap (one pass over the sites).
pub fn record_metrics(prefix: &str, registry: &TaskRegistry, handle: &Handle) {
    describe(prefix);
    // With heap profiling built in: `<prefix>_heap_inuse_bytes{site}` and `_total`, from figures
    // refreshed off this thread (see heap_metrics.rs).
    super::heap_metrics::record(prefix);
    let mut sites = registry.sites();
    // Sorted by name, so the capped set of age series is the same at every scrape.
    sites.sort_unstable_by(|a, b| a.site.cmp(&b.site));
    let ages: std::collections::HashMap<String, (f64, f64)> = registry
        .site_ages()
        .into_iter()
        .map(|a| (a.site, (a.oldest_s, a.median_s)))
        .collect();
    for (rank, site) in sites.iter().enumerate() {
        let label = [("site", site.site.clone())];
        gauge!(format!("{prefix}_tasks_live"), &label).set(site.live() as f64);
        counter!(format!("{prefix}_tasks_spawned_total"), &label).absolute(site.spawned);
        counter!(format!("{prefix}_tasks_terminated_total"), &label).absolute(site.terminated);
        if rank < AGE_SITES_CAP {
            // A site whose tasks all ended reads 0, not the age it had when it last had one.
            let (oldest, median) = ages.get(&site.site).copied().unwrap_or((0.0, 0.0));
            gauge!(format!("{prefix}_tasks_oldest_age_seconds"), &label).set(oldest);
            gauge!(format!("{prefix}_tasks_median_age_seconds"), &label).set(median);
        }
    }
    gauge!(format!("{prefix}_tasks_age_sites_omitted"))
        .set(sites.len().saturating_sub(AGE_SITES_CAP) as f64);

    let m = handle.metrics();
    let g = |name: &str, value: f64| gauge!(format!("{prefix}_tokio_{name}")).set(value);
    let c = |name: &str, value: u64| counter!(format!("{prefix}_tokio_{name}")).absolute(value);
    g("workers", m.num_workers() as f64);
    g("alive_tasks", m.num_alive_tasks() as f64);
    g("global_queue_depth", m.global_queue_depth() as f64);
    g("blocking_threads", m.num_blocking_threads() as f64);
    g(
        "idle_blocking_threads",
        m.num_idle_blocking_threads() as f64,
    );
    g("blocking_queue_depth", m.blocking_queue_depth() as f64);
    c("spawned_tasks_total", m.spawned_tasks_count());
    if let Some(long) = long_polls(handle) {
        c("long_polls_total", long);
    }
    c("remote_schedules_total", m.remote_schedule_count());
    c("budget_forced_yields_total", m.budget_forced_yield_count());
    let workers = 0..m.num_workers();
    c(
        "polls_total",
        workers.clone().map(|w| m.worker_poll_count(w)).sum(),
    );
    c(
        "parks_total",
        workers.clone().map(|w| m.worker_park_count(w)).sum(),
    );
    c(
        "steals_total",
        workers.clone().map(|w| m.worker_steal_count(w)).sum(),
    );
    let busy: f64 = workers
        .map(|w| m.worker_total_busy_duration(w).as_secs_f64())
        .sum();
    // A counter of whole milliseconds would lose precision; expose seconds as a gauge that only
    // grows (Prometheus `rate()` works the same on it).
    // No `_total` suffix: Prometheus' linter (`promtool check metrics`) keeps it for counters.
    g("busy_seconds", busy);
}

fn describe(prefix: &str) {
    describe_gauge!(
        format!("{prefix}_tasks_live"),
        Unit::Count,
        "tasks alive now, by spawn site (path:line:col); a site that only climbs leaks"
    );
    describe_gauge!(
        format!("{prefix}_tasks_oldest_age_seconds"),
        Unit::Seconds,
        "age of the oldest live task, by spawn site (0 when none is live); a leak's keeps climbing"
    );
    describe_gauge!(
        format!("{prefix}_tasks_median_age_seconds"),
        Unit::Seconds,
        "median age of the live tasks, by spawn site (0 when none is live)"
    );
    describe_gauge!(
        format!("{prefix}_tasks_age_sites_omitted"),
        Unit::Count,
        "spawn sites past the cap of age series (500) that got no _tasks_*_age_seconds series"
    );
    describe_counter!(
        format!("{prefix}_tasks_spawned_total"),
        Unit::Count,
        "tasks spawned since start, by spawn site"
    );
    describe_counter!(
        format!("{prefix}_tasks_terminated_total"),
        Unit::Count,
        "tasks ended since start, by spawn site"
    );
    describe_gauge!(
        format!("{prefix}_tokio_alive_tasks"),
        Unit::Count,
        "tasks alive in the tokio runtime, including those the registry does not see"
    );
    describe_gauge!(
        format!("{prefix}_tokio_global_queue_depth"),
        Unit::Count,
        "tasks waiting in the runtime's global queue; a steady climb means workers cannot keep up"
    );
    describe_gauge!(
        format!("{prefix}_tokio_busy_seconds"),
        Unit::Seconds,
        "time workers spent polling tasks, summed over workers; only grows, so rate() it"
    );
    // Every exported series has help text: `promtool check metrics` flags those without.
    for (name, help) in [
        ("workers", "worker threads of the runtime"),
        ("blocking_threads", "threads of the blocking pool"),
        ("idle_blocking_threads", "idle threads of the blocking pool"),
        (
            "blocking_queue_depth",
            "tasks waiting for a blocking-pool thread",
        ),
    ] {
        describe_gauge!(format!("{prefix}_tokio_{name}"), Unit::Count, help);
    }
    for (name, help) in [
        (
            "spawned_tasks_total",
            "tasks spawned on the runtime since start",
        ),
        (
            "remote_schedules_total",
            "tasks scheduled from outside the runtime",
        ),
        (
            "budget_forced_yields_total",
            "polls forced to yield by the coop budget",
        ),
        ("polls_total", "task polls, summed over workers"),
        (
            "long_polls_total",
            "polls of 10 ms or more, summed over workers: each held its worker that long (0 is the goal)",
        ),
        ("parks_total", "times workers parked, summed over workers"),
        (
            "steals_total",
            "tasks stolen between workers, summed over workers",
        ),
    ] {
        describe_counter!(format!("{prefix}_tokio_{name}"), Unit::Count, help);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder,
        SharedString,
    };

    use super::*;

    /// Remembers the last value of every series, keyed `name{label=value,...}`.
    #[derive(Default)]
    struct Capture(Arc<Mutex<HashMap<String, f64>>>);

    struct Series(String, Arc<Mutex<HashMap<String, f64>>>);

    impl CounterFn for Series {
        fn increment(&self, value: u64) {
            *self
                .1
                .lock()
                .expect("lock")
                .entry(self.0.clone())
                .or_default() += value as f64;
        }
        fn absolute(&self, value: u64) {
            self.1
                .lock()
                .expect("lock")
                .insert(self.0.clone(), value as f64);
        }
    }

    impl GaugeFn for Series {
        fn increment(&self, value: f64) {
            *self
                .1
                .lock()
                .expect("lock")
                .entry(self.0.clone())
                .or_default() += value;
        }
        fn decrement(&self, value: f64) {
            *self
                .1
                .lock()
                .expect("lock")
                .entry(self.0.clone())
                .or_default() -= value;
        }
        fn set(&self, value: f64) {
            self.1.lock().expect("lock").insert(self.0.clone(), value);
        }
    }

    fn series_name(key: &Key) -> String {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl Recorder for Capture {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(Series(series_name(key), Arc::clone(&self.0))))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(Arc::new(Series(series_name(key), Arc::clone(&self.0))))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn per_site_series_and_runtime_gauges_carry_the_prefix() {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        let registry = TaskRegistry::install(&mut builder);
        let rt = builder.worker_threads(2).build().expect("runtime");
        let cancel = tokio_util::sync::CancellationToken::new();
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let cancel = cancel.clone();
                rt.spawn(async move { cancel.cancelled().await })
            })
            .collect();
        let site = super::super::format_site(std::panic::Location::caller());
        let site_prefix = site.rsplitn(3, ':').nth(2).expect("file").to_owned();

        let capture = Capture::default();
        metrics::with_local_recorder(&capture, || record_metrics("svc", &registry, rt.handle()));
        let values = capture.0.lock().expect("lock").clone();
        let live = values
            .iter()
            .find(|(k, _)| k.starts_with(&format!("svc_tasks_live{{site={site_prefix}:")))
            .unwrap_or_else(|| panic!("no live series: {values:#?}"));
        assert_eq!(*live.1, 3.0);
        let spawned = values
            .iter()
            .find(|(k, _)| k.starts_with("svc_tasks_spawned_total{site="))
            .expect("spawned series");
        assert_eq!(*spawned.1, 3.0);
        let oldest = values
            .iter()
            .find(|(k, _)| {
                k.starts_with(&format!(
                    "svc_tasks_oldest_age_seconds{{site={site_prefix}:"
                ))
            })
            .unwrap_or_else(|| panic!("no oldest-age series: {values:#?}"));
        assert!(*oldest.1 >= 0.0 && *oldest.1 < 60.0, "{oldest:?}");
        assert!(
            values
                .keys()
                .any(|k| k.starts_with("svc_tasks_median_age_seconds{site="))
        );
        assert_eq!(values["svc_tasks_age_sites_omitted{}"], 0.0);
        assert_eq!(values["svc_tokio_workers{}"], 2.0);
        assert!(values["svc_tokio_alive_tasks{}"] >= 3.0);
        assert!(values.contains_key("svc_tokio_global_queue_depth{}"));
        assert!(values.contains_key("svc_tokio_polls_total{}"));
        assert!(values.keys().all(|k| k.starts_with("svc_")), "{values:#?}");

        cancel.cancel();
        rt.block_on(async {
            for handle in handles {
                handle.await.expect("join");
            }
        });
        // tokio wakes a JoinHandle before it runs the terminate hook, so a join can return while
        // its task is still in the registry: wait (bounded) for the hooks.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while registry.totals().live > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(registry.totals().live, 0, "the terminate hooks never ran");
        // Every task of the site ended: its ages read 0, not the last age seen.
        metrics::with_local_recorder(&capture, || record_metrics("svc", &registry, rt.handle()));
        let values = capture.0.lock().expect("lock").clone();
        let oldest = values
            .iter()
            .find(|(k, _)| {
                k.starts_with(&format!(
                    "svc_tasks_oldest_age_seconds{{site={site_prefix}:"
                ))
            })
            .expect("oldest-age series");
        assert_eq!(*oldest.1, 0.0);
    }

    #[test]
    fn long_polls_are_counted_when_the_probe_installed_the_histogram() {
        let mut plain = tokio::runtime::Builder::new_multi_thread();
        let plain = plain.worker_threads(1).build().expect("runtime");
        assert_eq!(long_polls(plain.handle()), None, "no histogram, no figure");

        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(1).enable_time();
        crate::Probe::builder("t")
            .install(&mut builder)
            .expect("probe");
        let runtime = builder.build().expect("runtime");
        assert_eq!(long_polls(runtime.handle()), Some(0));
        runtime.block_on(async {
            // One short poll and one that holds its worker past LONG_POLL.
            tokio::spawn(async {}).await.expect("join");
            tokio::spawn(async { std::thread::sleep(LONG_POLL + Duration::from_millis(5)) })
                .await
                .expect("join");
        });
        // At least the sleeping poll (a loaded machine may stretch another past 10 ms too). A
        // worker hands its poll counts to the runtime in batches (when it parks, or every few
        // polls), so the figure may show a moment after the join: wait for it, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while long_polls(runtime.handle()) == Some(0) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let counted = long_polls(runtime.handle());
        assert!(matches!(counted, Some(n) if n >= 1), "{counted:?}");
        assert_eq!(runtime_stats(runtime.handle()).long_polls, counted);
    }
}
