//! TLS to Loki: one rustls stack on the ring provider, the system's CA roots by default, a private
//! CA, client certificates, a pinned server name, and what a handshake failure means.
//!
//! [`LokiTls::client_config`] builds the whole rustls configuration. The config check calls it
//! too, so an unreadable file, a bad PEM or a key that does not fit its certificate stops the
//! shipper at `--check-config` time with the key named, not at the first push.
//!
//! [`tls_failure`] finds the rustls error inside a transport error and names its cause (expired,
//! unknown CA, name mismatch...) so the sink can log it once, count it and show it on `/health`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// The `[sink.tls]` settings, resolved (paths absolute).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LokiTls {
    /// PEM file of the CA certificates to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate chain (with [`key_file`](Self::key_file)).
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must be valid for, instead of the url's host.
    pub server_name: Option<String>,
    /// Accept any server certificate (testing only: a warning is logged at start).
    pub insecure_skip_verify: bool,
}

/// A TLS setting that cannot be used; names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsConfigError {
    /// The config key, such as `sink.tls.ca_file`.
    pub key: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

fn error(key: &'static str, message: impl Into<String>) -> TlsConfigError {
    TlsConfigError {
        key,
        message: message.into(),
    }
}

/// The only crypto provider: ring (no aws-lc, no OpenSSL).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl LokiTls {
    /// The rustls client configuration these settings describe. Reads every file named (and the
    /// system's roots when no `ca_file` is set).
    pub fn client_config(&self) -> Result<ClientConfig, TlsConfigError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("sink.tls", format!("no usable TLS version: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.insecure_skip_verify {
            if self.ca_file.is_some() || self.server_name.is_some() {
                return Err(error(
                    "sink.tls.insecure_skip_verify",
                    "cannot be combined with ca_file or server_name, which it would ignore: \
                     remove one or the other",
                ));
            }
            Arc::new(AcceptAnyCertificate(provider.clone()))
        } else {
            let roots = match &self.ca_file {
                Some(path) => ca_roots(path)?,
                None => system_roots()?,
            };
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| error("sink.tls.ca_file", format!("unusable CA roots: {e}")))?;
            match &self.server_name {
                Some(name) => {
                    let name = ServerName::try_from(name.clone()).map_err(|_| {
                        error(
                            "sink.tls.server_name",
                            format!("'{name}' is not a DNS name or an IP address"),
                        )
                    })?;
                    Arc::new(PinnedName { webpki, name })
                }
                None => webpki,
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&self.cert_file, &self.key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(cert_chain(cert)?, private_key(key)?)
                .map_err(|e| {
                    error(
                        "sink.tls.key_file",
                        format!(
                            "'{}' does not fit the certificate in '{}': {e}",
                            key.display(),
                            cert.display()
                        ),
                    )
                })?,
            (Some(_), None) => {
                return Err(error(
                    "sink.tls.key_file",
                    "required with cert_file: the client certificate's private key (PEM)",
                ));
            }
            (None, Some(_)) => {
                return Err(error(
                    "sink.tls.cert_file",
                    "required with key_file: the client certificate chain (PEM)",
                ));
            }
        };
        // The client speaks HTTP/1.1 only (reqwest is built without http2).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|e| error(key, format!("cannot read '{}': {e}", path.display())))
}

fn ca_roots(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let key = "sink.tls.ca_file";
    let pem = read(key, path)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| error(key, format!("'{}' is not valid PEM: {e}", path.display())))?;
        roots.add(cert).map_err(|e| {
            error(
                key,
                format!("'{}' holds an unusable CA certificate: {e}", path.display()),
            )
        })?;
    }
    if roots.is_empty() {
        return Err(error(
            key,
            format!(
                "'{}' holds no certificate: give a PEM file with BEGIN CERTIFICATE blocks",
                path.display()
            ),
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // Stores carry the odd certificate rustls cannot parse; skipping those is what browsers do.
    let (_added, _skipped) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(error(
            "sink.tls.ca_file",
            format!(
                "no CA certificate found in the system's store{why}: install the ca-certificates \
                 package, or set ca_file to the CA that signed Loki's certificate"
            ),
        ));
    }
    Ok(roots)
}

fn cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let key = "sink.tls.cert_file";
    let pem = read(key, path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(key, format!("'{}' is not valid PEM: {e}", path.display())))?;
    if chain.is_empty() {
        return Err(error(
            key,
            format!("'{}' holds no certificate", path.display()),
        ));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let key = "sink.tls.key_file";
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        error(
            key,
            format!(
                "'{}' holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
                path.display()
            ),
        )
    })
}

/// Checks the server's certificate against a configured name instead of the url's host.
#[derive(Debug)]
struct PinnedName {
    webpki: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for PinnedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _url_host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake's signatures are still
/// checked (the connection is encrypted, just not authenticated).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS failure: a short label for the `cause` of `shipper_loki_tls_errors_total`, and the
/// sentence for the log and `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFailure {
    pub(crate) label: &'static str,
    pub(crate) cause: String,
}

/// The TLS failure inside a transport error, if there is one. rustls errors travel inside
/// `std::io::Error`s, whose `source()` skips the error they wrap, so each one is opened.
pub(crate) fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            // Looked at itself next: it may be the rustls error, or another io::Error around it.
            next = Some(inner);
            continue;
        }
        next = e.source();
    }
    None
}

fn describe(e: &rustls::Error) -> TlsFailure {
    use rustls::AlertDescription as Alert;
    let (label, cause) = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
                "expired",
                "Loki's certificate has expired: renew it on the server".to_owned(),
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                "not_yet_valid",
                "Loki's certificate is not valid yet (check the clocks)".to_owned(),
            ),
            CertificateError::UnknownIssuer => (
                "unknown_ca",
                "Loki's certificate is signed by an unknown CA: set sink.tls.ca_file to the CA \
                 that signed it"
                    .to_owned(),
            ),
            CertificateError::NotValidForName => (
                "name_mismatch",
                "Loki's certificate is not valid for the url's host: fix sink.url or set \
                 sink.tls.server_name"
                    .to_owned(),
            ),
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => (
                "name_mismatch",
                format!(
                    "Loki's certificate is not valid for '{}' (it names {}): fix sink.url \
                     or set sink.tls.server_name",
                    expected.to_str(),
                    presented.join(", ")
                ),
            ),
            other => (
                "bad_certificate",
                format!("Loki's certificate is refused: {other:?}"),
            ),
        },
        rustls::Error::AlertReceived(
            Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked,
        ) => (
            "client_certificate_refused",
            format!(
                "Loki refused the client certificate ({e}): check sink.tls.cert_file and key_file"
            ),
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
            "not_tls",
            format!("the server does not speak TLS as expected ({e}): is sink.url http://?"),
        ),
        other => ("handshake", format!("TLS handshake failed: {other}")),
    };
    TlsFailure { label, cause }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_found_through_io_errors_and_named() {
        // As hyper-rustls hands it over: an io::Error around tokio-rustls' io::Error around it.
        let inner = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, inner));
        let f = tls_failure(&io).unwrap();
        assert_eq!(f.label, "unknown_ca");
        assert!(f.cause.contains("ca_file"), "{}", f.cause);
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert_eq!(describe(&expired).label, "expired");
        let plain = std::io::Error::other("connection refused");
        assert_eq!(tls_failure(&plain), None);
    }

    #[test]
    fn file_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let tls = LokiTls {
            ca_file: Some(missing.clone()),
            ..LokiTls::default()
        };
        let e = tls.client_config().unwrap_err();
        assert_eq!(e.key, "sink.tls.ca_file");
        assert!(e.message.contains("nope.pem"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a pem at all\n").unwrap();
        let tls = LokiTls {
            ca_file: Some(junk),
            ..LokiTls::default()
        };
        assert_eq!(tls.client_config().unwrap_err().key, "sink.tls.ca_file");
        let tls = LokiTls {
            cert_file: Some(missing.clone()),
            insecure_skip_verify: true,
            ..LokiTls::default()
        };
        assert_eq!(tls.client_config().unwrap_err().key, "sink.tls.key_file");
        let tls = LokiTls {
            insecure_skip_verify: true,
            server_name: Some("x".into()),
            ..LokiTls::default()
        };
        assert_eq!(
            tls.client_config().unwrap_err().key,
            "sink.tls.insecure_skip_verify"
        );
    }
}
