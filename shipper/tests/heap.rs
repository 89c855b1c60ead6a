//! End to end: the shipper binary, built with `heap-profiling` (off by default: run with
//! `cargo test -p shipper --features heap-profiling --test heap`), serves heap profiles over real
//! HTTP that name the leak lab's allocating line; the fixed twin stays bounded; the heap series
//! appear in `/metrics`.
#![cfg(feature = "heap-profiling")]
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use diagtool_model::heap::{HeapSite, sites};
use support::{Env, http_get_bytes, http_head, wait_until};

/// The leak lab's sites in the shipper's heap profile now (fetched and decoded as a client does).
fn lab_sites(shipper: &support::Shipper) -> Vec<HeapSite> {
    let (code, body) = http_get_bytes(&shipper.debug_addr, "/debug/pprof/heap", None);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let profile = diagtool_model::pprof::decode(&body).unwrap();
    sites(&profile)
        .unwrap()
        .into_iter()
        .filter(|s| s.site.starts_with("shipper/src/leaklab.rs:"))
        .collect()
}

fn start(args: &[&str]) -> (Env, support::Shipper) {
    let mut env = Env::new();
    env.args.extend(args.iter().map(|a| (*a).to_owned()));
    let shipper = env.start();
    assert!(!shipper.debug_addr.is_empty(), "{}", shipper.stderr());
    (env, shipper)
}

#[test]
fn memory_cache_leak_is_named_at_its_line_in_the_heap_profile_and_metrics() {
    // 256 KiB every 200 ms: 1.25 MiB/s.
    let (_env, shipper) = start(&["--leak-lab", "memory-cache:256/200ms"]);
    let mut found = Vec::new();
    wait_until(Duration::from_secs(30), "8 MiB at leaklab.rs", || {
        found = lab_sites(&shipper);
        found.first().is_some_and(|s| s.inuse_bytes >= 8 << 20)
    });
    let site = &found[0];
    assert!(
        site.function.starts_with("shipper::leaklab::cache_insert"),
        "{site:?}"
    );
    assert_eq!(found.len(), 1, "one allocating line: {found:?}");

    let (code, text) = shipper.debug_get("/debug/pprof/heap?debug=1");
    assert_eq!(code, 200);
    assert!(text.starts_with("heap profile: "), "{text}");
    assert!(text.contains(&site.site), "{text}");
    let head = http_head(&shipper.debug_addr, "/debug/pprof/heap/flamegraph");
    assert!(head.contains("content-type: image/svg+xml"), "{head}");
    let head = http_head(&shipper.debug_addr, "/debug/pprof/heap");
    assert!(
        head.contains("content-type: application/octet-stream"),
        "{head}"
    );

    // The first scrape starts a refresh off the runtime; a later one shows its figures.
    let series = format!("shipper_heap_inuse_bytes{{site=\"{}\"}}", site.site);
    let started = Instant::now();
    wait_until(Duration::from_secs(30), "heap series in /metrics", || {
        shipper.metric(&series).is_some_and(|v| v > 0.0)
            && shipper
                .metric("shipper_heap_inuse_total_bytes")
                .is_some_and(|v| v > 0.0)
    });
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn fixed_memory_cache_inserts_as_fast_but_stays_bounded() {
    // 256 KiB every 100 ms: 2.5 MiB/s inserted, at most 8 entries (2 MiB) kept.
    let (_env, shipper) = start(&["--leak-lab", "memory-cache:256/100ms", "--leak-lab-fixed"]);
    // 6 s: 15 MiB inserted; the leak would hold all of it.
    let until = Instant::now() + Duration::from_secs(6);
    let mut largest = 0;
    while Instant::now() < until {
        let held: i64 = lab_sites(&shipper).iter().map(|s| s.inuse_bytes).sum();
        largest = largest.max(held);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        largest < 6 << 20,
        "the fixed cache holds at most 2 MiB, estimated {largest} bytes"
    );
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}
