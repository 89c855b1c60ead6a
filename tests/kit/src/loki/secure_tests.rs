//! The receiver over TLS and with credentials: real handshakes on loopback with certificates from
//! the test CA, raw HTTP/1.1 inside, so each test controls exactly what is presented.

use std::collections::BTreeMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use super::*;
use crate::loki::pki::{IssuedCert, TestCa};
use crate::loki::receiver::PUSH_PATH;
use crate::loki::wire::{JsonPushRef, JsonStreamRef};

const T: Duration = Duration::from_secs(10);

fn body() -> Vec<u8> {
    let labels = BTreeMap::from([("job".to_owned(), "t".to_owned())]);
    let entries = vec![(1i64, "hello".to_owned())];
    let streams = [JsonStreamRef {
        labels: &labels,
        entries: &entries,
    }];
    serde_json::to_vec(&JsonPushRef { streams: &streams }).unwrap()
}

fn client(trust: &str, identity: Option<&IssuedCert>) -> TlsConnector {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(trust.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    TlsConnector::from(Arc::new(config))
}

/// One push over TLS: the status, or the I/O error (handshake and certificate failures).
async fn push(
    r: &Receiver,
    tls: &TlsConnector,
    auth: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let tcp = TcpStream::connect(r.addr()).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = tokio::time::timeout(T, tls.connect(name, tcp)).await??;
    let body = body();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {PUSH_PATH} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{auth}\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(&body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(T, conn.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {text:?}")))?;
    Ok((status, text.to_ascii_lowercase()))
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn serves_tls_to_clients_that_trust_its_ca_and_counts_failed_handshakes() {
    let ca = TestCa::new("receiver test ca").unwrap();
    let server = ca.server_cert(&["localhost", "127.0.0.1"]).unwrap();
    let r = Receiver::builder()
        .tls(server.cert_pem, server.key_pem)
        .start()
        .await
        .unwrap();
    assert!(r.url().starts_with("https://127.0.0.1:"));
    let (status, _) = push(&r, &client(ca.cert_pem(), None), None).await.unwrap();
    assert_eq!(status, 204);
    assert_eq!(r.lines(), ["hello"]);

    let stranger = TestCa::new("another ca").unwrap();
    let refused = push(&r, &client(stranger.cert_pem(), None), None).await;
    assert!(refused.is_err(), "a client trusting another CA got through");
    assert!(r.wait_for_handshake_failures(1, T).await);
    assert!(r.last_handshake_error().is_some());
    assert_eq!(r.count(), 1);
    r.shutdown().await;
}

#[tokio::test]
async fn requires_client_certificates_from_its_client_ca_when_asked() {
    let ca = TestCa::new("mtls ca").unwrap();
    let server = ca.server_cert(&["localhost"]).unwrap();
    let r = Receiver::builder()
        .tls(server.cert_pem, server.key_pem)
        .client_ca(ca.cert_pem())
        .start()
        .await
        .unwrap();
    let id = ca.client_cert("shipper").unwrap();
    let (status, _) = push(&r, &client(ca.cert_pem(), Some(&id)), None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    // Without a certificate the server refuses (TLS 1.3: the client learns it on its first read).
    assert!(push(&r, &client(ca.cert_pem(), None), None).await.is_err());
    assert!(r.wait_for_handshake_failures(1, T).await);
    assert_eq!(r.count(), 1);
    r.shutdown().await;
}

#[tokio::test]
async fn refuses_missing_or_wrong_credentials_with_401_and_follows_a_rotation() {
    let ca = TestCa::new("auth ca").unwrap();
    let server = ca.server_cert(&["localhost"]).unwrap();
    let r = Receiver::builder()
        .tls(server.cert_pem, server.key_pem)
        .basic_auth("123456", "first")
        .start()
        .await
        .unwrap();
    let tls = client(ca.cert_pem(), None);
    let (status, head) = push(&r, &tls, None).await.unwrap();
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: basic"), "{head}");
    assert_eq!(
        push(&r, &tls, Some(&basic("123456", "badpass")))
            .await
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        push(&r, &tls, Some(&basic("123456", "first")))
            .await
            .unwrap()
            .0,
        204
    );
    assert_eq!(r.auth_failures(), 2);

    r.set_basic_auth("123456", "second");
    assert_eq!(
        push(&r, &tls, Some(&basic("123456", "first")))
            .await
            .unwrap()
            .0,
        401
    );
    assert_eq!(
        push(&r, &tls, Some(&basic("123456", "second")))
            .await
            .unwrap()
            .0,
        204
    );

    r.set_bearer_token("tok");
    assert_eq!(push(&r, &tls, Some("Bearer nope")).await.unwrap().0, 401);
    assert_eq!(push(&r, &tls, Some("Bearer tok")).await.unwrap().0, 204);
    assert_eq!(r.count(), 3);
    assert_eq!(r.auth_failures(), 4);
    // The refusals are recorded without the credentials that were presented.
    let log = format!("{:?}", r.requests());
    assert!(!log.contains("badpass") && !log.contains("nope"), "{log}");
    r.shutdown().await;
}

#[tokio::test]
async fn checks_credentials_over_plain_http_too() {
    let r = Receiver::builder()
        .bearer_token("t0k")
        .start()
        .await
        .unwrap();
    let mut conn = TcpStream::connect(r.addr()).await.unwrap();
    let body = body();
    let head = format!(
        "POST {PUSH_PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body).await.unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert_eq!(r.auth_failures(), 1);
    r.shutdown().await;
}
