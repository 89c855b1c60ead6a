//! End to end over TLS and with credentials: the real binary against the strict receiver served
//! over rustls with certificates from a CA generated in the test, checking basic or bearer
//! credentials. Wrong CA, name mismatch and refused credentials must be retried, logged once,
//! shown on `/health`, and lose no line; no secret may show in any output.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use support::{Env, Shipper, run_bin, wait_until};
use testkit::loki::Receiver;
use testkit::loki::pki::TestCa;

const LIMIT: Duration = Duration::from_secs(90);
const PASSWORD: &str = "pw-Zq81-never-printed";
const TOKEN_ONE: &str = "tok-first-Hx7-never-printed";
const TOKEN_TWO: &str = "tok-second-Pr2-never-printed";

/// The receiver on a runtime of its own (the test thread drives the binary).
struct Loki {
    rt: tokio::runtime::Runtime,
    rx: Option<Receiver>,
}

impl Loki {
    fn start(build: impl FnOnce() -> testkit::loki::ReceiverBuilder) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let rx = rt.block_on(build().start()).unwrap();
        Self { rt, rx: Some(rx) }
    }
    fn r(&self) -> &Receiver {
        self.rx.as_ref().unwrap()
    }
}

impl Drop for Loki {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            self.rt.block_on(rx.shutdown());
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn sink(url: &str, extra: &str) -> String {
    format!(
        "[sink]\ntype = \"loki\"\nurl = \"{url}\"\ntenant = \"team-a\"\nbatch_max_wait = \"100ms\"\n\
         batch_max_bytes = 65536\nbackoff_max = \"300ms\"\n{extra}\n"
    )
}

fn every_line_once(lines: &[String], expected: &[String]) {
    let mut c: HashMap<&str, usize> = HashMap::new();
    for l in lines {
        *c.entry(l.as_str()).or_default() += 1;
    }
    let missing = expected
        .iter()
        .filter(|e| c.get(e.as_str()) != Some(&1))
        .count();
    assert_eq!(missing, 0, "{missing} lines missing or duplicated");
    assert_eq!(lines.len(), expected.len());
}

/// Asserts that no output of the run shows `secret` (nor its basic-auth base64 form).
fn assert_no_secret(shipper: &Shipper, env: &Env, secrets: &[&str]) {
    let mut outputs = vec![
        ("stderr", shipper.stderr()),
        (
            "stdout",
            std::fs::read_to_string(&shipper.stdout).unwrap_or_default(),
        ),
        ("/health", shipper.get("/health").1),
        ("/metrics", shipper.get("/metrics").1),
    ];
    let config = env.path("shipper.toml");
    let (_, out, err) = run_bin(&["--check-config", "--config", config.to_str().unwrap()]);
    outputs.push(("--check-config", out + &err));
    let (_, out, err) = run_bin(&["--print-default-config"]);
    outputs.push(("--print-default-config", out + &err));
    for secret in secrets {
        for (what, text) in &outputs {
            assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
        }
    }
}

#[test]
fn https_with_ca_file_and_basic_auth_delivers_100k_lines_and_prints_no_secret() {
    let ca = TestCa::new("loki test ca").unwrap();
    let server = ca.server_cert(&["localhost", "127.0.0.1"]).unwrap();
    let loki = Loki::start(|| {
        Receiver::builder()
            .store_entries(false)
            .tls(server.cert_pem.clone(), server.key_pem.clone())
            .basic_auth("123456", PASSWORD)
    });
    let mut env = Env::new();
    let ca_file = write(env.dir.path(), "ca.pem", ca.cert_pem());
    let password_file = write(env.dir.path(), "password", &format!("{PASSWORD}\n"));
    env.sink_table = Some(sink(
        &loki.r().url(),
        &format!(
            "[sink.tls]\nca_file = \"{ca_file}\"\n[sink.basic_auth]\nusername = \"123456\"\n\
             password_file = \"{password_file}\"\n[sink.headers]\nX-Gateway = \"team-a\"\n"
        ),
    ));
    let total = 100_000u64;
    let mut text = String::with_capacity(total as usize * 40);
    for i in 0..total {
        text.push_str(&format!("tls line {i:07} {}\n", "x".repeat(20)));
    }
    env.append("app.log", text.as_bytes());
    let shipper = env.start();
    wait_until(LIMIT, "every line over https", || loki.r().count() >= total);
    assert_eq!(loki.r().count(), total, "0 lost, none twice");
    assert_eq!(loki.r().rejected_bodies(), 0, "0 rejected");
    assert_eq!(loki.r().auth_failures(), 0);
    assert_eq!(loki.r().handshake_failures(), 0);
    assert_eq!(
        shipper.metric("shipper_sent_entries_total"),
        Some(total as f64)
    );
    let (code, health) = shipper.get("/health");
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    let b64 = base64_basic("123456", PASSWORD);
    assert_no_secret(&shipper, &env, &[PASSWORD, &b64]);
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

/// The base64 part of a basic `Authorization` header, written out here so the test does not
/// share the code under test.
fn base64_basic(user: &str, password: &str) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_wrong_ca_then_a_name_mismatch_are_retried_logged_once_and_nothing_is_lost_after_the_fix() {
    let ca = TestCa::new("loki test ca").unwrap();
    // The certificate names another host than the url's 127.0.0.1.
    let server = ca.server_cert(&["loki.test"]).unwrap();
    let loki =
        Loki::start(|| Receiver::builder().tls(server.cert_pem.clone(), server.key_pem.clone()));
    let mut env = Env::new();
    let stranger = TestCa::new("some other ca").unwrap();
    let wrong_ca = write(env.dir.path(), "wrong-ca.pem", stranger.cert_pem());
    let right_ca = write(env.dir.path(), "ca.pem", ca.cert_pem());
    let expected: Vec<String> = (0..3000).map(|i| format!("held {i:05}")).collect();
    env.append("app.log", (expected.join("\n") + "\n").as_bytes());

    // 1. Unknown CA.
    env.sink_table = Some(sink(
        &loki.r().url(),
        &format!("[sink.tls]\nca_file = \"{wrong_ca}\"\n"),
    ));
    let shipper = env.start();
    let series = "shipper_loki_tls_errors_total{cause=\"unknown_ca\"}";
    wait_until(LIMIT, "unknown-CA errors counted", || {
        shipper.metric(series).unwrap_or(0.0) >= 3.0
    });
    let (code, health) = shipper.get("/health");
    assert_eq!(code, 200, "degraded, not dead: {health}");
    assert!(
        health.contains("\"degraded\"") && health.contains("unknown CA"),
        "{health}"
    );
    let log = shipper.stderr();
    assert_eq!(
        log.matches("TLS to loki fails").count(),
        1,
        "logged once, not per retry:\n{log}"
    );
    assert!(log.contains("ca_file"), "{log}");
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    assert_eq!(loki.r().count(), 0);

    // 2. The right CA, but the certificate is not for 127.0.0.1.
    env.sink_table = Some(sink(
        &loki.r().url(),
        &format!("[sink.tls]\nca_file = \"{right_ca}\"\n"),
    ));
    let shipper = env.start();
    let series = "shipper_loki_tls_errors_total{cause=\"name_mismatch\"}";
    wait_until(LIMIT, "name-mismatch errors counted", || {
        shipper.metric(series).unwrap_or(0.0) >= 3.0
    });
    let log = shipper.stderr();
    assert_eq!(log.matches("TLS to loki fails").count(), 1, "{log}");
    assert!(log.contains("server_name"), "{log}");
    assert!(shipper.terminate(Duration::from_secs(15)).success());
    assert_eq!(loki.r().count(), 0);

    // 3. Fixed: the name the certificate carries.
    env.sink_table = Some(sink(
        &loki.r().url(),
        &format!("[sink.tls]\nca_file = \"{right_ca}\"\nserver_name = \"loki.test\"\n"),
    ));
    let shipper = env.start();
    wait_until(LIMIT, "every line after the fix", || {
        loki.r().count() >= expected.len() as u64
    });
    every_line_once(&loki.r().lines(), &expected);
    assert_eq!(loki.r().rejected_bodies(), 0);
    assert!(loki.r().handshake_failures() >= 6);
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn a_401_window_from_a_rotated_token_file_loses_no_line_and_needs_no_restart() {
    let loki = Loki::start(|| Receiver::builder().bearer_token(TOKEN_ONE));
    let mut env = Env::new();
    let token_file = write(env.dir.path(), "token", TOKEN_ONE);
    env.sink_table = Some(sink(
        &loki.r().url(),
        &format!("bearer_token_file = \"{token_file}\"\n"),
    ));
    let shipper = env.start();
    let first: Vec<String> = (0..2000).map(|i| format!("before {i:05}")).collect();
    env.append("app.log", (first.join("\n") + "\n").as_bytes());
    wait_until(LIMIT, "the first lines", || loki.r().count() >= 2000);

    // Loki rotates first: the shipper is refused until its file has the new token.
    loki.r().set_bearer_token(TOKEN_TWO);
    let second: Vec<String> = (0..2000).map(|i| format!("during {i:05}")).collect();
    env.append("app.log", (second.join("\n") + "\n").as_bytes());
    wait_until(LIMIT, "401s counted", || {
        shipper
            .metric("shipper_loki_auth_failures_total{status=\"401\"}")
            .unwrap_or(0.0)
            >= 3.0
    });
    let (code, health) = shipper.get("/health");
    assert_eq!(code, 200, "{health}");
    assert!(
        health.contains("\"degraded\"") && health.contains("401") && health.contains("team-a"),
        "{health}"
    );
    assert_eq!(
        shipper
            .metric("shipper_dropped_entries_total{reason=\"loki_rejected\"}")
            .unwrap_or(0.0),
        0.0,
        "401 is retried, never dropped"
    );
    std::fs::write(env.dir.path().join("token"), format!("{TOKEN_TWO}\n")).unwrap();
    wait_until(LIMIT, "every line after the rotation", || {
        loki.r().count() >= 4000
    });
    let mut expected = first;
    expected.extend(second);
    every_line_once(&loki.r().lines(), &expected);
    wait_until(LIMIT, "/health back to ok", || {
        shipper.get("/health").1.contains("\"status\":\"ok\"")
    });
    let log = shipper.stderr();
    assert_eq!(
        log.matches("loki refused the credentials").count(),
        1,
        "logged once per change:\n{log}"
    );
    assert!(
        log.contains("status=401") && log.contains("team-a"),
        "{log}"
    );
    assert!(log.contains("loki accepts pushes again"), "{log}");
    assert_no_secret(&shipper, &env, &[TOKEN_ONE, TOKEN_TWO]);
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}

#[test]
fn check_config_names_bad_tls_and_auth_keys_exits_2_and_never_quotes_a_secret() {
    let env = Env::new();
    let dir = env.dir.path();
    let junk = write(dir, "junk.pem", "this is not PEM\n");
    let ca = TestCa::new("cfg ca").unwrap();
    let ca_file = write(dir, "ca.pem", ca.cert_pem());
    let client = ca.client_cert("shipper").unwrap();
    let other = ca.client_cert("other").unwrap();
    let cert_file = write(dir, "client.pem", &client.cert_pem);
    let wrong_key = write(dir, "other.key", &other.key_pem);
    let cases: Vec<(String, &str)> = vec![
        (
            format!("url = \"https://h\"\n[sink.tls]\nca_file = \"{junk}\"\n"),
            "sink.tls.ca_file",
        ),
        (
            format!(
                "url = \"https://h\"\n[sink.tls]\nca_file = \"{dir}/missing.pem\"\n",
                dir = dir.display()
            ),
            "sink.tls.ca_file",
        ),
        (
            format!(
                "url = \"https://h\"\n[sink.tls]\nca_file = \"{ca_file}\"\ncert_file = \"{cert_file}\"\nkey_file = \"{wrong_key}\"\n"
            ),
            "sink.tls.key_file",
        ),
        (
            format!("url = \"http://h\"\n[sink.tls]\nca_file = \"{ca_file}\"\n"),
            "sink.tls",
        ),
        (
            format!(
                "url = \"http://h\"\nbearer_token = \"{PASSWORD}\"\n[sink.basic_auth]\nusername = \"u\"\npassword = \"{PASSWORD}\"\n"
            ),
            "sink.basic_auth",
        ),
        (
            format!(
                "url = \"http://h\"\n[sink.basic_auth]\nusername = \"u\"\npassword_file = \"{dir}/nope\"\n",
                dir = dir.display()
            ),
            "sink.basic_auth.password_file",
        ),
        (
            format!("url = \"http://h\"\n[sink.headers]\nAuthorization = \"Bearer {PASSWORD}\"\n"),
            "sink.headers.Authorization",
        ),
        (
            format!("url = \"http://h\"\n[sink.headers]\nX-Key = \"{PASSWORD}\\n\"\n"),
            "sink.headers.X-Key",
        ),
        (
            "url = \"https://h\"\n[sink.tls]\nbogus = 1\n".to_owned(),
            "bogus",
        ),
    ];
    for (extra, key) in cases {
        let p = dir.join("bad.toml");
        std::fs::write(
            &p,
            format!(
                "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\n[sink]\ntype = \"loki\"\n{extra}"
            ),
        )
        .unwrap();
        let (code, out, err) = run_bin(&["--check-config", "--config", p.to_str().unwrap()]);
        assert_eq!(code, 2, "{extra}\n{err}");
        assert!(err.contains(key), "{extra}: expected {key} in\n{err}");
        assert!(
            !err.contains(PASSWORD) && !out.contains(PASSWORD),
            "a secret shows:\n{err}"
        );
    }
}

#[test]
fn insecure_skip_verify_delivers_to_an_unknown_ca_and_warns_at_start() {
    let ca = TestCa::new("nobody trusts me").unwrap();
    let server = ca.server_cert(&["elsewhere.test"]).unwrap();
    let loki =
        Loki::start(|| Receiver::builder().tls(server.cert_pem.clone(), server.key_pem.clone()));
    let mut env = Env::new();
    env.sink_table = Some(sink(
        &loki.r().url(),
        "[sink.tls]\ninsecure_skip_verify = true\n",
    ));
    let shipper = env.start();
    env.append("app.log", b"unverified but encrypted\n");
    wait_until(LIMIT, "the line", || loki.r().count() >= 1);
    assert_eq!(loki.r().lines(), ["unverified but encrypted"]);
    let log = shipper.stderr();
    assert_eq!(
        log.matches("insecure_skip_verify is set").count(),
        1,
        "{log}"
    );
    assert!(shipper.terminate(Duration::from_secs(15)).success());
}
