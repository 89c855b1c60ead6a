//! The receiver's TLS and credential checks: a rustls server (ring provider, the same stack as
//! the shipper's client), optionally asking for client certificates, and basic or bearer
//! credentials answered with 401 when missing or wrong.
//!
//! Handshakes run concurrently inside the listener (a `FuturesUnordered` it owns, each bounded by
//! [`HANDSHAKE_TIMEOUT`]), so a client that stalls its handshake holds no one else up and no task
//! is detached. A failed handshake is counted and its error kept for the tests to read.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use http::HeaderMap;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

use super::receiver::{Receiver, ReceiverBuilder, Shared, lock};

/// How long a client gets to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The receiver's TLS identity: a certificate chain and its key (PEM), and optionally the CA whose
/// client certificates are required.
#[derive(Clone)]
pub(super) struct TlsOptions {
    pub(super) cert_chain_pem: String,
    pub(super) key_pem: String,
    pub(super) client_ca_pem: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("client_certificates", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
}

impl TlsOptions {
    /// The rustls server configuration, on the ring provider.
    pub(super) fn acceptor(&self) -> io::Result<TlsAcceptor> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("receiver certificate chain", e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| invalid("receiver private key", e))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("receiver TLS versions", e))?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots
                        .add(cert.map_err(|e| invalid("client CA", e))?)
                        .map_err(|e| invalid("client CA", e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| invalid("client CA", e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| invalid("receiver certificate", e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

type Handshake =
    Pin<Box<dyn Future<Output = (io::Result<TlsStream<TcpStream>>, SocketAddr)> + Send>>;

/// A TCP listener that hands axum only connections whose TLS handshake succeeded.
pub(super) struct TlsListener {
    pub(super) tcp: TcpListener,
    pub(super) acceptor: TlsAcceptor,
    pub(super) shared: Arc<Shared>,
    pub(super) handshakes: FuturesUnordered<Handshake>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.push(Box::pin(async move {
                            let done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                                .unwrap_or_else(|_| Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "the client did not finish the TLS handshake in time",
                                )));
                            (done, addr)
                        }));
                    }
                    // Out of descriptors and the like: wait a little, as axum's own listener does.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                },
                Some((done, addr)) = self.handshakes.next(), if !self.handshakes.is_empty() => {
                    match done {
                        Ok(stream) => return (stream, addr),
                        Err(e) => {
                            self.shared.handshake_failures.fetch_add(1, Ordering::AcqRel);
                            *lock(&self.shared.last_handshake_error) = Some(e.to_string());
                            self.shared.notify.notify_waiters();
                        }
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The credentials the receiver requires.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Required {
    /// `Authorization: Basic base64(user:password)`.
    Basic { user: String, password: String },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl std::fmt::Debug for Required {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Required::Basic { user, .. } => write!(f, "Basic({user}, <redacted>)"),
            Required::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Required {
    fn expected(&self) -> String {
        match self {
            Required::Basic { user, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            Required::Bearer(token) => format!("Bearer {token}"),
        }
    }

    /// The `WWW-Authenticate` challenge of a 401.
    pub(super) fn challenge(&self) -> &'static str {
        match self {
            Required::Basic { .. } => "Basic realm=\"loki\"",
            Required::Bearer(_) => "Bearer realm=\"loki\"",
        }
    }

    /// Whether the request carries these credentials (compared in constant time: a test
    /// receiver, but the habit is cheap).
    pub(super) fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers.get(http::header::AUTHORIZATION) else {
            return false;
        };
        let expected = self.expected();
        let given = given.as_bytes();
        given.len() == expected.len()
            && given
                .iter()
                .zip(expected.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// The security options of the builder.
impl ReceiverBuilder {
    /// Serves TLS (default: plain HTTP) with this certificate chain and private key (PEM).
    pub fn tls(mut self, cert_chain_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        let client_ca_pem = self.tls.take().and_then(|t| t.client_ca_pem);
        self.tls = Some(TlsOptions {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
            client_ca_pem,
        });
        self
    }

    /// With [`tls`](Self::tls): requires a client certificate signed by this CA (PEM). Default:
    /// none asked for.
    pub fn client_ca(mut self, ca_pem: impl Into<String>) -> Self {
        if let Some(tls) = &mut self.tls {
            tls.client_ca_pem = Some(ca_pem.into());
        }
        self
    }

    /// Requires `Authorization: Basic` with these credentials (default: no check).
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some(Required::Basic {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Requires `Authorization: Bearer <token>` (default: no check).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.auth = Some(Required::Bearer(token.into()));
        self
    }
}

/// What the security checks saw, and credential rotation.
impl Receiver {
    /// Pushes refused with 401 for missing or wrong credentials.
    pub fn auth_failures(&self) -> u64 {
        self.shared.auth_failures.load(Ordering::Acquire)
    }

    /// TLS handshakes that failed (bad certificate, unknown CA, timeout...).
    pub fn handshake_failures(&self) -> u64 {
        self.shared.handshake_failures.load(Ordering::Acquire)
    }

    /// The error of the last failed TLS handshake, as the server saw it.
    pub fn last_handshake_error(&self) -> Option<String> {
        lock(&self.shared.last_handshake_error).clone()
    }

    /// Waits until at least `n` TLS handshakes failed, or `timeout` passes.
    pub async fn wait_for_handshake_failures(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.handshake_failures() >= n)
            .await
    }

    /// Waits until at least `n` pushes were refused for their credentials, or `timeout` passes.
    pub async fn wait_for_auth_failures(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.auth_failures() >= n).await
    }

    /// From now on requires these basic credentials (a rotation: the old ones get 401).
    pub fn set_basic_auth(&self, user: impl Into<String>, password: impl Into<String>) {
        *lock(&self.shared.auth) = Some(Required::Basic {
            user: user.into(),
            password: password.into(),
        });
    }

    /// From now on requires this bearer token (a rotation: the old one gets 401).
    pub fn set_bearer_token(&self, token: impl Into<String>) {
        *lock(&self.shared.auth) = Some(Required::Bearer(token.into()));
    }
}

#[cfg(all(test, feature = "test-pki"))]
#[allow(clippy::unwrap_used)]
#[path = "secure_tests.rs"]
mod tests;
