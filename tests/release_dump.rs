//! A release build's task dump still shows the leak lab's own function and the await point where
//! its tasks wait (inlining would otherwise leave only tokio's frames; the probe's `Traced` wrapper
//! and the release profile's line tables keep them).
//!
//! Skipped (with a note) unless `SHIPPER_RELEASE_BIN` names a release shipper binary:
//! `cargo build --release -p shipper && SHIPPER_RELEASE_BIN=target/release/shipper cargo test -p
//! e2e --test release_dump`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use testkit::shipper::{Env, wait_until};

#[test]
fn a_release_dump_of_poll_spawn_shows_the_lab_function_and_its_await_point() {
    let Ok(bin) = std::env::var("SHIPPER_RELEASE_BIN") else {
        eprintln!(
            "skipped: set SHIPPER_RELEASE_BIN to a release shipper binary \
             (cargo build --release -p shipper; SHIPPER_RELEASE_BIN=target/release/shipper)"
        );
        return;
    };
    let mut env = Env::new();
    env.args = vec!["--leak-lab".into(), "poll-spawn:4/300ms".into()];
    let shipper = env.start_bin(&bin);
    let mut group = serde_json::Value::Null;
    wait_until(Duration::from_secs(20), "a leak-lab group of 8", || {
        let (code, body) = shipper.debug_get("/debug/tasks/dump");
        assert_eq!(code, 200, "{body}");
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
        let found = dump["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["site"].as_str().unwrap().contains("leaklab"))
            .cloned();
        group = found.unwrap_or_default();
        group["count"].as_u64().unwrap_or(0) >= 8
    });
    let trace: Vec<String> = group["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    let text = trace.join("\n");
    // The probe's wrapper names the lab's function; the next frame is its body at the awaiting line.
    assert!(
        trace.iter().any(|f| f.contains("park_after_poll")),
        "the lab's function:\n{text}"
    );
    let await_line = include_str!("../shipper/src/leaklab.rs")
        .lines()
        .position(|l| l.contains("answer.notified().await"))
        .unwrap()
        + 1;
    assert!(
        trace
            .iter()
            .any(|f| f.contains(&format!("shipper/src/leaklab.rs:{await_line}"))),
        "the await point, leaklab.rs:{await_line}:\n{text}"
    );
    assert!(
        trace.iter().any(|f| f.to_lowercase().contains("notif")),
        "the await point (Notify::notified):\n{text}"
    );
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}
