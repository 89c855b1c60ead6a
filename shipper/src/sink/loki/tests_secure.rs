//! The sink over TLS and with credentials, against the receiver in TLS and auth modes: refused
//! credentials and TLS failures are retried (never dropped), counted, reported through the status
//! callback once per change, and a rotated secret file is picked up without a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use testkit::loki::pki::{IssuedCert, TestCa};
use testkit::loki::{Receiver, ReceiverBuilder};
use tokio::task::JoinHandle;

use super::tests::{batch, recorder, sample, settings};
use super::*;
use crate::event::AckSender;

const T: Duration = Duration::from_secs(15);

/// What the status callback was told, in order.
type Reports = Arc<Mutex<Vec<Option<String>>>>;

struct Secure {
    receiver: Receiver,
    tx: Option<mpsc::Sender<Batch>>,
    ack_tx: AckSender,
    acks: tokio::sync::mpsc::UnboundedReceiver<Vec<crate::event::AckRef>>,
    reports: Reports,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Secure {
    async fn start(
        receiver: ReceiverBuilder,
        make: impl FnOnce(String, &std::path::Path) -> LokiSettings,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let receiver = receiver.start().await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let (ack_tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let reports: Reports = Arc::default();
        let seen = reports.clone();
        let task = tokio::spawn(run_with_status(
            make(receiver.url(), dir.path()),
            rx,
            CancellationToken::new(),
            || {},
            Box::new(move |s| seen.lock().unwrap().push(s)),
        ));
        Self {
            receiver,
            tx: Some(tx),
            ack_tx,
            acks,
            reports,
            task,
            _dir: dir,
        }
    }

    async fn send(&self, chunk: u64, lines: &[&str]) {
        let b = batch(&self.ack_tx, chunk, lines);
        self.tx.as_ref().unwrap().send(b).await.unwrap();
    }

    async fn next_ack(&mut self) -> Vec<crate::event::AckRef> {
        tokio::time::timeout(T, self.acks.recv())
            .await
            .expect("an ack in time")
            .unwrap()
    }

    fn reports(&self) -> Vec<Option<String>> {
        self.reports.lock().unwrap().clone()
    }

    async fn finish(mut self) -> Receiver {
        self.tx.take();
        tokio::time::timeout(T, self.task)
            .await
            .expect("the sink drains in time")
            .unwrap()
            .unwrap();
        assert_eq!(self.receiver.rejected_bodies(), 0);
        self.receiver
    }
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn tls_receiver(server: &IssuedCert) -> ReceiverBuilder {
    Receiver::builder().tls(server.cert_pem.clone(), server.key_pem.clone())
}

#[tokio::test]
async fn https_with_ca_file_basic_auth_and_headers_delivers() {
    let ca = TestCa::new("sink ca").unwrap();
    let server = ca.server_cert(&["127.0.0.1"]).unwrap();
    let ca_pem = ca.cert_pem().to_owned();
    let mut h = Secure::start(
        tls_receiver(&server).basic_auth("123456", "pw"),
        |url, dir| {
            let mut headers = http::HeaderMap::new();
            headers.insert("x-gateway", HeaderValue::from_static("team-a"));
            LokiSettings {
                auth: LokiAuth::Basic {
                    username: "123456".into(),
                    password: SecretSource::File {
                        key: "sink.basic_auth.password_file",
                        path: write(dir, "pw", "pw\n"),
                    },
                },
                tls: LokiTls {
                    ca_file: Some(write(dir, "ca.pem", &ca_pem)),
                    ..LokiTls::default()
                },
                headers,
                ..settings(url, LokiEncoding::Protobuf)
            }
        },
    )
    .await;
    h.send(1, &["over tls"]).await;
    h.next_ack().await;
    assert!(h.reports().is_empty(), "{:?}", h.reports());
    let r = h.finish().await;
    assert_eq!(r.lines(), ["over tls"]);
    assert_eq!(r.auth_failures(), 0);
    let req = &r.requests()[0];
    assert!(
        req.headers
            .iter()
            .any(|(k, v)| k == "x-gateway" && v == "team-a"),
        "{:?}",
        req.headers
    );
}

#[tokio::test]
async fn refused_credentials_are_retried_and_a_rotated_file_is_reread() {
    let rec = recorder();
    let _guard = metrics::set_default_local_recorder(&rec);
    let token = Arc::new(Mutex::new(PathBuf::new()));
    let token_path = token.clone();
    let mut h = Secure::start(Receiver::builder().bearer_token("new"), |url, dir| {
        let path = write(dir, "token", "old\n");
        *token_path.lock().unwrap() = path.clone();
        LokiSettings {
            tenant: Some("team-a".into()),
            auth: LokiAuth::Bearer(SecretSource::File {
                key: "sink.bearer_token_file",
                path,
            }),
            backoff_max: Duration::from_millis(50),
            ..settings(url, LokiEncoding::Json)
        }
    })
    .await;
    h.send(1, &["kept"]).await;
    assert!(h.receiver.wait_for_auth_failures(3, T).await);
    let reports = h.reports();
    assert_eq!(
        reports.len(),
        1,
        "reported once, not per retry: {reports:?}"
    );
    let reason = reports[0].clone().unwrap();
    assert!(
        reason.contains("401") && reason.contains("team-a"),
        "{reason}"
    );
    assert_eq!(h.receiver.count(), 0);

    let path = token.lock().unwrap().clone();
    std::fs::write(&path, "new\n").unwrap();
    assert_eq!(h.next_ack().await[0].chunk, 1);
    assert_eq!(h.reports().last(), Some(&None), "healthy again");
    let r = h.finish().await;
    assert_eq!(r.lines(), ["kept"]);
    let text = rec.handle().render();
    assert!(sample(&text, "shipper_loki_auth_failures_total{status=\"401\"}") >= 3.0);
    assert_eq!(
        sample(
            &text,
            "shipper_dropped_entries_total{reason=\"loki_rejected\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn a_403_is_retried_too_until_the_gateway_lets_it_through() {
    let mut h = Secure::start(Receiver::builder(), |url, _| LokiSettings {
        backoff_max: Duration::from_millis(50),
        ..settings(url, LokiEncoding::Json)
    })
    .await;
    h.receiver.fail_next(3, 403);
    h.send(1, &["a"]).await;
    h.next_ack().await;
    let reports = h.reports();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(reports[0].as_deref().unwrap().contains("403"));
    assert_eq!(reports[1], None);
    let r = h.finish().await;
    assert_eq!(r.lines(), ["a"]);
}

#[tokio::test]
async fn tls_failures_are_retried_with_their_cause_and_never_dropped() {
    let rec = recorder();
    let _guard = metrics::set_default_local_recorder(&rec);
    let ca = TestCa::new("right ca").unwrap();
    let wrong = TestCa::new("wrong ca").unwrap();
    let server = ca.server_cert(&["127.0.0.1"]).unwrap();
    let wrong_pem = wrong.cert_pem().to_owned();
    let h = Secure::start(tls_receiver(&server), |url, dir| LokiSettings {
        tls: LokiTls {
            ca_file: Some(write(dir, "wrong.pem", &wrong_pem)),
            ..LokiTls::default()
        },
        backoff_max: Duration::from_millis(50),
        ..settings(url, LokiEncoding::Json)
    })
    .await;
    h.send(1, &["a"]).await;
    assert!(h.receiver.wait_for_handshake_failures(3, T).await);
    let reports = h.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].as_deref().unwrap().contains("unknown CA"));
    // Cancelled, not drained: the batch stays unacknowledged, to be read again after restart.
    h.task.abort();
    assert_eq!(h.receiver.count(), 0);
    let text = rec.handle().render();
    assert!(sample(&text, "shipper_loki_tls_errors_total{cause=\"unknown_ca\"}") >= 3.0);
    assert_eq!(sample(&text, "shipper_sent_entries_total"), 0.0);
}

#[tokio::test]
async fn client_certificates_are_presented_and_a_missing_one_is_named() {
    let ca = TestCa::new("mtls ca").unwrap();
    let server = ca.server_cert(&["127.0.0.1"]).unwrap();
    let client = ca.client_cert("shipper").unwrap();
    let ca_pem = ca.cert_pem().to_owned();
    let ca_pem2 = ca_pem.clone();
    let mut h = Secure::start(tls_receiver(&server).client_ca(&ca_pem), |url, dir| {
        LokiSettings {
            tls: LokiTls {
                ca_file: Some(write(dir, "ca.pem", &ca_pem2)),
                cert_file: Some(write(dir, "client.pem", &client.cert_pem)),
                key_file: Some(write(dir, "client.key", &client.key_pem)),
                ..LokiTls::default()
            },
            ..settings(url, LokiEncoding::Json)
        }
    })
    .await;
    h.send(1, &["mutual"]).await;
    h.next_ack().await;
    let r = h.finish().await;
    assert_eq!(r.lines(), ["mutual"]);

    let ca_pem3 = ca_pem.clone();
    let h = Secure::start(tls_receiver(&server).client_ca(&ca_pem), |url, dir| {
        LokiSettings {
            tls: LokiTls {
                ca_file: Some(write(dir, "ca.pem", &ca_pem3)),
                ..LokiTls::default()
            },
            backoff_max: Duration::from_millis(50),
            ..settings(url, LokiEncoding::Json)
        }
    })
    .await;
    h.send(1, &["no cert"]).await;
    assert!(h.receiver.wait_for_handshake_failures(2, T).await);
    let deadline = Instant::now() + T;
    while h.reports().is_empty() {
        assert!(Instant::now() < deadline, "no report");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason = h.reports()[0].clone().unwrap();
    assert!(reason.contains("client certificate"), "{reason}");
    h.task.abort();
}

#[tokio::test]
async fn tls_settings_with_plain_http_are_refused_at_start() {
    let (_tx, rx) = mpsc::channel(1);
    let s = LokiSettings {
        tls: LokiTls {
            insecure_skip_verify: true,
            ..LokiTls::default()
        },
        ..settings("http://127.0.0.1:1".into(), LokiEncoding::Json)
    };
    let err = run(s, rx, CancellationToken::new(), || {})
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("sink.tls"), "{err:#}");
}

#[tokio::test]
async fn https_to_a_plain_http_server_is_named_as_such() {
    let h = Secure::start(Receiver::builder(), |url, _| LokiSettings {
        tls: LokiTls {
            insecure_skip_verify: true,
            ..LokiTls::default()
        },
        backoff_max: Duration::from_millis(50),
        ..settings(url.replacen("http://", "https://", 1), LokiEncoding::Json)
    })
    .await;
    h.send(1, &["a"]).await;
    let deadline = Instant::now() + T;
    while h.reports().is_empty() {
        assert!(Instant::now() < deadline, "no report");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason = h.reports()[0].clone().unwrap();
    assert!(reason.contains("does not speak TLS"), "{reason}");
    assert_eq!(h.receiver.count(), 0);
    h.task.abort();
}

#[tokio::test]
async fn an_expired_certificate_is_named_as_expired() {
    let rec = recorder();
    let _guard = metrics::set_default_local_recorder(&rec);
    let ca = TestCa::new("ca").unwrap();
    let server = ca.expired_server_cert(&["127.0.0.1"]).unwrap();
    let ca_pem = ca.cert_pem().to_owned();
    let h = Secure::start(tls_receiver(&server), |url, dir| LokiSettings {
        tls: LokiTls {
            ca_file: Some(write(dir, "ca.pem", &ca_pem)),
            ..LokiTls::default()
        },
        backoff_max: Duration::from_millis(50),
        ..settings(url, LokiEncoding::Json)
    })
    .await;
    h.send(1, &["a"]).await;
    assert!(h.receiver.wait_for_handshake_failures(2, T).await);
    let deadline = Instant::now() + T;
    while h.reports().is_empty() {
        assert!(Instant::now() < deadline, "no report");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason = h.reports()[0].clone().unwrap();
    assert!(reason.contains("expired"), "{reason}");
    h.task.abort();
    let text = rec.handle().render();
    assert!(sample(&text, "shipper_loki_tls_errors_total{cause=\"expired\"}") >= 1.0);
}
