//! End to end: the shipper binary with its probe, on loopback. The leak lab's leaks show at their own
//! spawn site on every debug endpoint, in `/metrics` and in `/health`; the debug port's token and
//! bind rules hold.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Read as _;
use std::time::{Duration, Instant};

use support::{Env, grown, http_get_bytes, live_by_site, run_bin, wait_until};

/// Starts a shipper with `--leak-lab` values (an entry starting with `--` is passed as a flag)
/// and extra `[health]` keys.
fn start_with(leaks: &[&str], health: &str) -> (Env, support::Shipper) {
    let mut env = Env::new();
    for leak in leaks {
        if leak.starts_with("--") {
            env.args.push((*leak).into());
            continue;
        }
        env.args.push("--leak-lab".into());
        env.args.push((*leak).into());
    }
    if !health.is_empty() {
        env.tables = format!("[health]\n{health}\n");
    }
    let shipper = env.start();
    assert!(!shipper.debug_addr.is_empty(), "{}", shipper.stderr());
    (env, shipper)
}

/// Asserts that between two snapshots exactly one site grew, that it lies in the leak lab, and
/// that it grew by at least `at_least`; returns it.
fn only_the_lab_grew(a: &serde_json::Value, b: &serde_json::Value, at_least: u64) -> String {
    let g = grown(a, b);
    assert_eq!(g.len(), 1, "exactly one site grows: {g:?}");
    let (site, by) = g.into_iter().next().unwrap();
    assert!(site.contains("leaklab"), "{site}");
    assert!(by >= at_least, "{site} grew by {by} only");
    site
}

#[test]
fn each_leak_lab_scenario_grows_at_its_own_site_and_only_there() {
    let mut sites = Vec::new();
    // Timed scenarios: two snapshots a few ticks apart.
    for leak in ["poll-spawn:3/300ms", "unjoined-health-check:2/300ms"] {
        let (_env, shipper) = start_with(&[leak], "");
        // Let start-up settle (the first tick comes one period after start).
        std::thread::sleep(Duration::from_millis(500));
        let a = shipper.tasks();
        let mut b = shipper.tasks();
        wait_until(Duration::from_secs(10), "three ticks", || {
            b = shipper.tasks();
            grown(&a, &b).iter().any(|(_, by)| *by >= 6)
        });
        sites.push(only_the_lab_grew(&a, &b, 6));
        assert!(shipper.terminate(Duration::from_secs(15)).success());
    }
    // file-add-spawn: new files are the trigger.
    let (env, shipper) = start_with(&["file-add-spawn:2"], "");
    let a = shipper.tasks();
    for i in 0..3 {
        env.append(&format!("new-{i}.log"), b"one line\n");
    }
    wait_until(Duration::from_secs(20), "the three files read", || {
        env.delivered().len() == 3
    });
    let b = shipper.tasks();
    sites.push(only_the_lab_grew(&a, &b, 6));
    assert_eq!(live_by_site(&b)[&sites[2]], 6, "2 tasks per file added");
    assert!(shipper.terminate(Duration::from_secs(15)).success());

    sites.sort();
    sites.dedup();
    assert_eq!(sites.len(), 3, "three distinct sites: {sites:?}");
}

/// `--leak-lab-fixed`: the leak's own site keeps spawning, but its live count stays at one tick's
/// worth: what `diagtool diff` shows after a fix (spawned rises, ended keeps pace).
#[test]
fn the_fixed_leak_lab_spawns_from_the_same_site_but_ends_its_tasks() {
    let (_env, shipper) = start_with(&["poll-spawn:3/200ms", "--leak-lab-fixed"], "");
    let site_row = |snapshot: &serde_json::Value| {
        snapshot["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["site"].as_str().unwrap().contains("leaklab.rs"))
            .cloned()
    };
    let mut row = None;
    wait_until(Duration::from_secs(15), "twelve ticks' spawns", || {
        row = site_row(&shipper.tasks());
        row.as_ref()
            .is_some_and(|r| r["spawned_total"].as_u64().unwrap() >= 36)
    });
    let row = row.unwrap();
    let live = row["live"].as_u64().unwrap();
    assert!(
        live <= 6,
        "at most the last tick's 3 (and the next, racing the snapshot) stay live: {row}"
    );
    assert!(
        row["terminated_total"].as_u64().unwrap() >= 30,
        "the earlier ticks' tasks ended: {row}"
    );
    assert!(
        shipper.stderr().contains("fixed versions"),
        "{}",
        shipper.stderr()
    );
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

/// A deploy that overwrites the binary under a running shipper: dumps and profiles resolve
/// symbols from the file on disk, so they must say that file is no longer the one running.
#[test]
fn answers_whose_symbols_come_from_a_replaced_binary_carry_a_warning() {
    let env = Env::new();
    let copy = env.path("shipper-copy");
    std::fs::copy(support::BIN, &copy).unwrap();
    let shipper = env.start_bin(copy.to_str().unwrap());
    let debug = shipper.debug_addr.clone();
    assert!(!support::http_head(&debug, "/debug/tasks/dump").contains("\r\nwarning:"));
    std::fs::remove_file(&copy).unwrap();
    for path in [
        "/debug/tasks/dump",
        "/debug/pprof/tasks?debug=1",
        "/debug/pprof/tasks?debug=0",
    ] {
        let head = support::http_head(&debug, path);
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(
            head.contains("\r\nwarning: 199 diagtool \"the executable ")
                && head.contains("was replaced or removed on disk"),
            "{path}: {head}"
        );
    }
    // A snapshot needs no symbols: no warning there.
    assert!(!support::http_head(&debug, "/debug/tasks").contains("\r\nwarning:"));
    let (_, index) = shipper.debug_get("/debug/");
    assert!(
        index.contains("Warning:</strong> the executable"),
        "{index}"
    );
    assert_eq!(
        shipper
            .stderr()
            .matches("was replaced or removed on disk")
            .count(),
        1,
        "logged once: {}",
        shipper.stderr()
    );
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

/// The "done when", as an operator would check it with curl.
#[test]
fn a_poll_spawn_leak_shows_on_every_debug_endpoint_in_metrics_and_in_health() {
    let (_env, shipper) = start_with(&["poll-spawn:4/1s"], "");
    std::thread::sleep(Duration::from_millis(1500));
    let a = shipper.tasks();
    std::thread::sleep(Duration::from_secs(3));
    let b = shipper.tasks();
    let site = only_the_lab_grew(&a, &b, 8);
    let secs =
        (b["taken_at_ms"].as_u64().unwrap() - a["taken_at_ms"].as_u64().unwrap()) as f64 / 1000.0;
    let per_s = (live_by_site(&b)[&site] - live_by_site(&a)[&site]) as f64 / secs;
    assert!((2.5..=5.5).contains(&per_s), "{per_s} tasks/s");

    // The dump groups the leaked tasks, with a trace naming the lab's function.
    let (code, body) = shipper.debug_get("/debug/tasks/dump");
    assert_eq!(code, 200, "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["schema"], "diagtool.dump/v1");
    let group = dump["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["site"] == site.as_str())
        .unwrap_or_else(|| panic!("no group for {site}: {body}"));
    assert!(group["count"].as_u64().unwrap() >= 8, "{group}");
    let trace: Vec<&str> = group["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(!trace.is_empty());
    assert!(
        trace.iter().any(|f| f.contains("park_after_poll")),
        "{trace:#?}"
    );

    // Go-style task profile: text names the site; debug=0 is gzip.
    let (code, text) = shipper.debug_get("/debug/pprof/tasks?debug=1");
    assert_eq!(code, 200);
    assert!(text.contains(&site), "{text}");
    let (code, pb) = http_get_bytes(&shipper.debug_addr, "/debug/pprof/tasks?debug=0", None);
    assert_eq!((code, &pb[..2]), (200, &[0x1f, 0x8b][..]));

    // CPU profile (gzipped pprof) and flamegraph (SVG).
    let (code, pb) = http_get_bytes(&shipper.debug_addr, "/debug/pprof/profile?seconds=1", None);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&pb));
    assert_eq!(&pb[..2], &[0x1f, 0x8b], "gzip magic");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&pb[..])
        .read_to_end(&mut raw)
        .unwrap();
    assert!(!raw.is_empty());
    let (code, svg) = shipper.debug_get("/debug/pprof/flamegraph?seconds=1");
    assert_eq!(code, 200, "{svg}");
    assert!(svg.contains("<svg"), "{svg}");

    // /health: 200, degraded, the lab's site first among the growing sites (default warm-up).
    let mut health = serde_json::Value::Null;
    wait_until(Duration::from_secs(20), "/health degraded", || {
        let (code, body) = shipper.get("/health");
        assert_eq!(code, 200, "growth alone never fails the check: {body}");
        health = serde_json::from_str(&body).unwrap();
        health["status"] == "degraded"
    });
    let tasks = &health["tasks"];
    assert_eq!(tasks["status"], "degraded", "{health}");
    assert_eq!(tasks["top_sites"][0]["site"], site.as_str(), "{health}");
    assert!(tasks["current"].as_u64().unwrap() > tasks["baseline"].as_u64().unwrap());
    assert!(
        tasks["growth_per_min"].as_f64().unwrap() > 100.0,
        "{health}"
    );
    for c in ["reader", "sink", "dispatcher", "checkpointer"] {
        assert_eq!(health["components"][c]["status"], "ok", "{health}");
    }

    // /metrics: the task series per site and the runtime gauges, one HELP/TYPE per family.
    let (code, m) = shipper.get("/metrics");
    assert_eq!(code, 200);
    let live_line = format!("shipper_tasks_live{{site=\"{site}\"}}");
    assert!(m.contains(&live_line), "{live_line} missing:\n{m}");
    assert!(m.contains(&format!("shipper_tasks_spawned_total{{site=\"{site}\"}}")));
    assert!(m.contains("shipper_tokio_alive_tasks"));
    assert_valid_exposition(&m);

    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

/// One `# TYPE` and at most one `# HELP` per family, declared before its samples, and every sample
/// belongs to a declared family.
fn assert_valid_exposition(text: &str) {
    let mut typed = std::collections::HashMap::new();
    let mut helped = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap().to_string();
            let kind = parts.next().unwrap().to_string();
            assert!(
                typed.insert(name.clone(), kind).is_none(),
                "two TYPE for {name}"
            );
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            assert!(helped.insert(name.clone()), "two HELP for {name}");
        } else if !line.trim().is_empty() && !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|base| typed.get(*base).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(typed.contains_key(family), "sample before its TYPE: {line}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad value: {line}");
        }
    }
}

#[test]
fn fail_on_task_leak_turns_a_leak_into_503() {
    let (_env, shipper) = start_with(
        &["poll-spawn:4/500ms"],
        "fail_on_task_leak = true\ntask_warmup = \"1s\"",
    );
    let mut last = String::new();
    wait_until(Duration::from_secs(20), "/health 503", || {
        let (code, body) = shipper.get("/health");
        last = body;
        code == 503
    });
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["tasks"]["status"], "critical", "{v}");
    assert!(
        v["tasks"]["top_sites"][0]["site"]
            .as_str()
            .unwrap()
            .contains("leaklab")
    );
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn a_clean_shipper_under_steady_load_reports_tasks_ok() {
    let (env, shipper) = start_with(&[], "task_warmup = \"1s\"\ntask_window = \"10s\"");
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(6) {
        env.append("steady.log", format!("line {n}\n").as_bytes());
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_until(Duration::from_secs(20), "every line", || {
        env.delivered().len() == n
    });
    let mut v = serde_json::Value::Null;
    wait_until(Duration::from_secs(15), "task growth judged", || {
        let (code, body) = shipper.get("/health");
        assert_eq!(code, 200, "{body}");
        v = serde_json::from_str(&body).unwrap();
        v["tasks"]["warming_up"] == false
    });
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["tasks"]["status"], "ok", "{v}");
    assert!(v["tasks"]["samples"].as_u64().unwrap() >= 5, "{v}");
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn the_debug_token_is_required_when_set() {
    let mut env = Env::new();
    env.server_extra = "debug_token = \"s3cret\"".into();
    let shipper = env.start();
    let (code, _) = http_get_bytes(&shipper.debug_addr, "/debug/tasks", None);
    assert_eq!(code, 401);
    let (code, _) = http_get_bytes(&shipper.debug_addr, "/debug/tasks", Some("wrong"));
    assert_eq!(code, 401);
    let (code, body) = http_get_bytes(&shipper.debug_addr, "/debug/tasks", Some("s3cret"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    // The main port needs no token.
    assert_eq!(shipper.get("/health").0, 200);
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn a_non_loopback_debug_port_without_a_token_is_a_config_error() {
    let env = Env::new();
    let p = env.write_config();
    // From the flag.
    let (code, _, err) = run_bin(&["--config", p.to_str().unwrap(), "--debug-addr", "0.0.0.0:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("server.debug_token"), "{err}");
    // From the file.
    let text = env
        .config_text()
        .replace("debug_addr = \"127.0.0.1:0\"", "debug_addr = \"0.0.0.0:0\"");
    let p = env.path("open.toml");
    std::fs::write(&p, text).unwrap();
    let (code, _, err) = run_bin(&["--check-config", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("server.debug_token"), "{err}");
}

#[test]
fn a_non_loopback_console_is_a_config_error_even_with_a_token() {
    let mut env = Env::new();
    env.server_extra = "debug_token = \"s3cret\"".into();
    let p = env.write_config();
    let (code, _, err) = run_bin(&[
        "--config",
        p.to_str().unwrap(),
        "--console",
        "--console-addr",
        "0.0.0.0:6669",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("server.console_addr") && err.contains("0.0.0.0:6669"),
        "{err}"
    );
    env.server_extra
        .push_str("\nconsole_addr = \"10.1.2.3:6669\"");
    let p = env.write_config();
    let (code, _, err) = run_bin(&["--check-config", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("server.console_addr") && err.contains("SSH tunnel"),
        "{err}"
    );
}

#[test]
fn a_bad_leak_lab_value_is_a_usage_error() {
    let env = Env::new();
    let p = env.write_config();
    let (code, _, err) = run_bin(&["--config", p.to_str().unwrap(), "--leak-lab", "poll-spam"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("poll-spam") && err.contains("unknown scenario"),
        "{err}"
    );
}

#[test]
fn console_serves_beside_the_shippers_own_log_output() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut env = Env::new();
    env.args = vec![
        "--console".into(),
        "--console-addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    // start() waits for the shipper's own "main port listening" line: the fmt output still works.
    let shipper = env.start();
    wait_until(Duration::from_secs(10), "the console port", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(shipper.stderr().contains("tokio-console listening"));
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}
