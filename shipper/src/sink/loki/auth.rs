//! Credentials for the push: basic auth or a bearer token, each inline or read from a file.
//!
//! Invariants: a secret is held in a [`Secret`], whose `Debug` and `Display` print `<redacted>`,
//! and the header built from it is marked sensitive, so no log line, error, `/health` document or
//! config dump can show it. Errors name the config key and the file, never the content.
//!
//! Rotation: a secret read from a file is read at start and again whenever Loki refuses the
//! credentials (401/403, see [`Credentials::reload`]), so replacing the file is enough: no restart,
//! and the batches refused meanwhile are retried, not dropped.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use base64::Engine as _;
use http::HeaderValue;
use serde::Deserialize;

/// A secret string. `Debug` and `Display` print `<redacted>`; [`Secret::expose`] is the only way
/// to the text.
///
/// # Examples
/// ```
/// use shipper::sink::loki::Secret;
/// let s = Secret::new("hunter2");
/// assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The secret text. Call it only where the value is sent, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the config.
    Inline(Secret),
    /// Read from a file (surrounding whitespace and the final newline trimmed), again whenever
    /// Loki refuses the credentials.
    File {
        /// The config key that named the file, for errors (`sink.bearer_token_file`).
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
}

/// A secret that could not be read; says which key and file, never the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SecretError {
    /// The config key.
    pub key: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

impl SecretSource {
    /// The secret, read now if it lives in a file.
    pub fn read(&self) -> Result<Secret, SecretError> {
        match self {
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::File { key, path } => {
                let text = std::fs::read_to_string(path).map_err(|e| SecretError {
                    key,
                    message: format!(
                        "cannot read '{}': {e}; point it at a readable file holding the secret",
                        path.display()
                    ),
                })?;
                let text = text.trim();
                if text.is_empty() {
                    return Err(SecretError {
                        key,
                        message: format!("'{}' is empty: write the secret into it", path.display()),
                    });
                }
                Ok(Secret::new(text))
            }
        }
    }

    fn is_file(&self) -> bool {
        matches!(self, SecretSource::File { .. })
    }
}

/// How the sink authenticates to Loki (or a gateway in front of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LokiAuth {
    /// No `Authorization` header.
    #[default]
    None,
    /// `Authorization: Basic base64(username:password)` (Grafana Cloud: the instance id and a token).
    Basic {
        /// The user name (not a secret: it shows in logs).
        username: String,
        /// The password.
        password: SecretSource,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(SecretSource),
}

impl LokiAuth {
    /// The `Authorization` header value, read now (files included); marked sensitive.
    pub fn header(&self) -> Result<Option<HeaderValue>, SecretError> {
        let (text, key) = match self {
            LokiAuth::None => return Ok(None),
            LokiAuth::Basic { username, password } => {
                let pass = password.read()?;
                let raw = format!("{username}:{}", pass.expose());
                (
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(raw)
                    ),
                    key_of(password, "sink.basic_auth.password"),
                )
            }
            LokiAuth::Bearer(token) => (
                format!("Bearer {}", token.read()?.expose()),
                key_of(token, "sink.bearer_token"),
            ),
        };
        let mut value = HeaderValue::from_str(&text).map_err(|_| SecretError {
            key,
            message: "the secret holds characters an HTTP header cannot carry (use visible ASCII)"
                .into(),
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// Whether a secret lives in a file (so re-reading it can pick up a rotation).
    pub fn reads_files(&self) -> bool {
        match self {
            LokiAuth::None => false,
            LokiAuth::Basic { password, .. } => password.is_file(),
            LokiAuth::Bearer(token) => token.is_file(),
        }
    }

    /// `basic`, `bearer` or `none`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            LokiAuth::None => "none",
            LokiAuth::Basic { .. } => "basic",
            LokiAuth::Bearer(_) => "bearer",
        }
    }
}

fn key_of(source: &SecretSource, inline_key: &'static str) -> &'static str {
    match source {
        SecretSource::Inline(_) => inline_key,
        SecretSource::File { key, .. } => key,
    }
}

/// What a [`Credentials::reload`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reload {
    /// Nothing to re-read (no secret file), or the files hold what was sent already.
    Unchanged,
    /// A file changed: the next attempts send the new value.
    Changed,
    /// A file could not be read; the old value stays.
    Failed(String),
}

/// The `Authorization` header the sink sends, shared by every request and replaced when a
/// re-read finds a rotated secret.
#[derive(Debug)]
pub(crate) struct Credentials {
    auth: LokiAuth,
    current: RwLock<Option<HeaderValue>>,
    /// The last reload error logged, so a missing file is logged once, not on every retry.
    last_error: Mutex<Option<String>>,
}

impl Credentials {
    /// Reads the secrets once; an unreadable file is an error at start.
    pub(crate) fn new(auth: LokiAuth) -> Result<Arc<Self>, SecretError> {
        let current = auth.header()?;
        Ok(Arc::new(Self {
            auth,
            current: RwLock::new(current),
            last_error: Mutex::new(None),
        }))
    }

    /// The header to send now.
    pub(crate) fn header(&self) -> Option<HeaderValue> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the secret files (off the runtime's workers), keeping the old value if one fails.
    /// Logs a change or a new error once.
    pub(crate) async fn reload(self: &Arc<Self>) -> Reload {
        if !self.auth.reads_files() {
            return Reload::Unchanged;
        }
        let this = Arc::clone(self);
        let read = tokio::task::spawn_blocking(move || this.auth.header()).await;
        let outcome = match read {
            Ok(Ok(new)) => {
                let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
                if *current == new {
                    Reload::Unchanged
                } else {
                    *current = new;
                    Reload::Changed
                }
            }
            Ok(Err(e)) => Reload::Failed(format!("{}: {}", e.key, e.message)),
            Err(e) => Reload::Failed(format!("re-reading the secret files: {e}")),
        };
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &outcome {
            Reload::Changed => {
                *last = None;
                tracing::info!(
                    auth = self.auth.kind(),
                    "re-read the loki credentials from their file: they changed; retrying with them"
                );
            }
            Reload::Failed(error) if last.as_deref() != Some(error.as_str()) => {
                tracing::warn!(%error, "could not re-read the loki credentials; keeping the old ones");
                *last = Some(error.clone());
            }
            Reload::Failed(_) | Reload::Unchanged => {}
        }
        outcome
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let auth = LokiAuth::Basic {
            username: "123456".into(),
            password: SecretSource::Inline(Secret::new("s3cr3t-value")),
        };
        let header = auth.header().unwrap().unwrap();
        let shown = format!("{auth:?} {header:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(
            !shown
                .contains(&base64::engine::general_purpose::STANDARD.encode("123456:s3cr3t-value"))
        );
        assert!(header.is_sensitive());
        assert_eq!(
            header.to_str().unwrap(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("123456:s3cr3t-value")
            )
        );
    }

    #[test]
    fn a_file_secret_is_trimmed_and_its_errors_name_key_and_file_not_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "tok-123\n").unwrap();
        let auth = LokiAuth::Bearer(SecretSource::File {
            key: "sink.bearer_token_file",
            path: path.clone(),
        });
        assert_eq!(auth.header().unwrap().unwrap(), "Bearer tok-123");
        std::fs::write(&path, "  \n").unwrap();
        let e = auth.header().unwrap_err();
        assert_eq!(e.key, "sink.bearer_token_file");
        assert!(e.message.contains("empty"), "{e}");
        std::fs::write(&path, "bad\u{7}token").unwrap();
        let e = auth.header().unwrap_err();
        assert!(!e.message.contains("bad"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = auth.header().unwrap_err();
        assert!(e.message.contains(&path.display().to_string()), "{e}");
    }

    #[tokio::test]
    async fn reload_picks_up_a_rotated_file_and_keeps_the_old_value_when_it_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "one").unwrap();
        let creds = Credentials::new(LokiAuth::Basic {
            username: "u".into(),
            password: SecretSource::File {
                key: "sink.basic_auth.password_file",
                path: path.clone(),
            },
        })
        .unwrap();
        let first = creds.header().unwrap();
        assert_eq!(creds.reload().await, Reload::Unchanged);
        std::fs::write(&path, "two\n").unwrap();
        assert_eq!(creds.reload().await, Reload::Changed);
        let second = creds.header().unwrap();
        assert_ne!(first, second);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(creds.reload().await, Reload::Failed(e) if e.contains("password_file")));
        assert_eq!(creds.header().unwrap(), second);
    }
}
