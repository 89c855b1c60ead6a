//! End to end: command line, config errors and the main port's endpoints.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Env, run_bin, wait_until};

#[test]
fn print_default_config_is_valid_and_check_config_says_ok() {
    let (code, out, _) = run_bin(&["--print-default-config"]);
    assert_eq!(code, 0);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("default.toml");
    std::fs::write(&p, &out).unwrap();
    let (code, out, err) = run_bin(&["--check-config", "--config", p.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, "ok\n"), "{err}");
    assert!(out.contains("ok"));
}

#[test]
fn config_errors_exit_2_and_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("unknown = 1\n", "unknown"),
        (
            "[[sources]]\ntype = \"file\"\ninclude = [\"/x/*.log\"]\n[sink]\ntype = \"file\"\npath = \"/tmp/o\"\nbatch_max_wait = \"fast\"\n",
            "sink.batch_max_wait",
        ),
        (
            "[[sources]]\ntype = \"file\"\ninclude = []\n[sink]\ntype = \"stdout\"\n",
            "sources[0].include",
        ),
        (
            "[[sources]]\ntype = \"file\"\ninclude = [\"/x/*.log\"]\n[sink]\ntype = \"loki\"\n",
            "sink.url",
        ),
        (
            "[[sources]]\ntype = \"nfs\"\n[sink]\ntype = \"stdout\"\n",
            "nfs",
        ),
        (
            "[[sources]]\ntype = \"file\"\ninclude = [\"/x/*.log\"]\n[sink]\ntype = \"stdout\"\n[server]\nmain_addr = \"nowhere\"\n",
            "server.main_addr",
        ),
        ("data_dir = [\n", "TOML parse error"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let (code, _, err) = run_bin(&["--check-config", "--config", p.to_str().unwrap()]);
        assert_eq!(code, 2, "case {i}: {err}");
        assert!(err.contains(key), "case {i}: {err:?} should name {key}");
        assert!(
            err.contains(&format!("bad{i}.toml")),
            "case {i}: {err:?} should name the file"
        );
        // Running (not just checking) fails the same way.
        let (code, _, _) = run_bin(&["--config", p.to_str().unwrap()]);
        assert_eq!(code, 2, "case {i}");
    }
    let (code, _, err) = run_bin(&["--config", "/nonexistent/shipper.toml", "--check-config"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/shipper.toml"), "{err}");
    let (code, _, err) = run_bin(&["--main-addr", "bogus", "--check-config"]);
    assert_eq!(code, 2);
    assert!(err.contains("main-addr"), "{err}");
}

#[test]
fn health_ready_and_metrics_answer_with_the_contract_series() {
    let env = Env::new();
    env.append("a.log", b"hello\n");
    let shipper = env.start();
    wait_until(Duration::from_secs(30), "the line", || {
        env.delivered().len() == 1
    });
    let (code, body) = shipper.get("/health");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    for c in ["reader", "dispatcher", "sink", "checkpointer"] {
        assert_eq!(v["components"][c]["status"], "ok", "{c}: {body}");
        assert!(v["components"][c]["last_heartbeat_s"].as_f64().unwrap() < 5.0);
    }
    assert_eq!(shipper.get("/ready").0, 200);
    wait_until(Duration::from_secs(10), "runtime gauges", || {
        shipper.get("/metrics").1.contains("shipper_tokio_")
    });
    let (code, m) = shipper.get("/metrics");
    assert_eq!(code, 200);
    for series in [
        "shipper_read_lines_total",
        "shipper_read_bytes_total",
        "shipper_sent_entries_total",
        "shipper_sent_bytes_total",
        "shipper_dropped_entries_total{reason=",
        "shipper_batch_retries_total",
        "shipper_files_active",
        "shipper_tokio_",
        "shipper_sink_write_seconds_bucket{le=",
    ] {
        assert!(m.contains(series), "{series} missing from /metrics");
    }
    assert!(
        m.contains("# TYPE shipper_sink_write_seconds histogram"),
        "latency is a histogram"
    );
    assert_eq!(shipper.metric("shipper_sent_entries_total"), Some(1.0));
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn a_busy_main_port_is_a_runtime_error_naming_the_key() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut env = Env::new();
    env.top_extra = String::new();
    let text = env
        .config_text()
        .replace("127.0.0.1:0", &busy.local_addr().unwrap().to_string());
    let p = env.path("busy.toml");
    std::fs::write(&p, text).unwrap();
    env.tables = String::new();
    let (code, _, err) = run_bin(&["--config", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("server.main_addr"), "{err}");
}

#[test]
fn help_lists_every_contract_flag_with_its_default() {
    let (code, out, _) = run_bin(&["--help"]);
    assert_eq!(code, 0);
    // Help wraps to the terminal width; compare with whitespace collapsed.
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for flag in [
        "--config <FILE>",
        "--main-addr <ADDR>",
        "--debug-addr <ADDR>",
        "--console",
        "--console-addr <ADDR>",
        "--leak-lab <SCENARIO>",
        "--check-config",
        "--print-default-config",
        "[default: 127.0.0.1:8401]",
        "[default: 127.0.0.1:6060]",
    ] {
        assert!(out.contains(flag), "{flag} missing from --help:\n{out}");
    }
}
