//! The sink's condition: healthy, or held up by a failure the operator must fix (refused
//! credentials, a TLS error). It logs once per change of state, never per retry, counts every
//! such failure, and reports the state to `/health` (degraded while it lasts, with the reason).

use super::send::Trouble;
use super::telemetry;

/// Reports the sink's state: `Some(reason)` while degraded, `None` when healthy again.
pub type StatusReport = Box<dyn Fn(Option<String>) + Send + Sync>;

/// The state machine; see the [module docs](self).
pub(crate) struct Condition {
    /// The trouble being reported, if any.
    current: Option<Trouble>,
    /// Failures since the trouble began.
    failures: u64,
    /// The tenant, named in the logs (not a secret).
    tenant: String,
    report: StatusReport,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("current", &self.current)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl Condition {
    pub(crate) fn new(tenant: Option<&str>, report: StatusReport) -> Self {
        Self {
            current: None,
            failures: 0,
            tenant: tenant.unwrap_or("").to_owned(),
            report,
        }
    }

    fn tenant(&self) -> &str {
        if self.tenant.is_empty() {
            "(none)"
        } else {
            &self.tenant
        }
    }

    /// A push went through: the trouble, if any, is over.
    pub(crate) fn on_delivered(&mut self) {
        if let Some(past) = self.current.take() {
            tracing::info!(
                after = %summary(&past),
                failures = self.failures,
                tenant = self.tenant(),
                "loki accepts pushes again; the refused batches were retried, none dropped"
            );
            self.failures = 0;
            (self.report)(None);
        }
    }

    /// A retried failure: counted, and logged and reported when it differs from the last one.
    pub(crate) fn on_trouble(&mut self, trouble: &Trouble, reason: &str) {
        match trouble {
            Trouble::Auth { status } => telemetry::auth_failure(status.as_u16()),
            Trouble::Tls(f) => telemetry::tls_error(f.label),
        }
        self.failures += 1;
        if self.current.as_ref() == Some(trouble) {
            return;
        }
        let message = match trouble {
            Trouble::Auth { status } => {
                tracing::warn!(
                    status = status.as_u16(),
                    tenant = self.tenant(),
                    answer = %reason,
                    "loki refused the credentials; re-reading secret files and retrying, nothing \
                     is dropped: check sink.basic_auth / sink.bearer_token (logged once until it \
                     changes)"
                );
                format!(
                    "loki refuses the credentials: {status} for tenant {}; retrying",
                    self.tenant()
                )
            }
            Trouble::Tls(f) => {
                tracing::warn!(
                    cause = f.label,
                    error = %f.cause,
                    "TLS to loki fails; retrying with backoff, nothing is dropped (logged once \
                     until the cause changes)"
                );
                format!("TLS to loki fails: {}; retrying", f.cause)
            }
        };
        self.current = Some(trouble.clone());
        (self.report)(Some(message));
    }
}

fn summary(t: &Trouble) -> String {
    match t {
        Trouble::Auth { status } => format!("credentials refused ({status})"),
        Trouble::Tls(f) => format!("TLS failure ({})", f.label),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::StatusCode;

    use super::super::tls::TlsFailure;
    use super::*;

    #[test]
    fn reports_once_per_change_and_clears_on_delivery() {
        let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let sink = seen.clone();
        let mut c = Condition::new(
            Some("team-a"),
            Box::new(move |s| sink.lock().unwrap().push(s)),
        );
        c.on_delivered();
        let auth = Trouble::Auth {
            status: StatusCode::UNAUTHORIZED,
        };
        c.on_trouble(&auth, "no");
        c.on_trouble(&auth, "no");
        let tls = Trouble::Tls(TlsFailure {
            label: "expired",
            cause: "expired".into(),
        });
        c.on_trouble(&tls, "x");
        c.on_delivered();
        c.on_delivered();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen[0].as_deref().unwrap().contains("401"));
        assert!(seen[0].as_deref().unwrap().contains("team-a"));
        assert!(seen[1].as_deref().unwrap().contains("TLS"));
        assert_eq!(seen[2], None);
    }
}
