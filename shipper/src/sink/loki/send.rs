//! One push attempt and what its answer means: delivered, refused for good, or worth a retry
//! (and after how long).
//!
//! Loki's rules: 2xx is delivered; 429 and 5xx other than 501 are retried, as are connection
//! errors and timeouts; any other 4xx and 501 are permanent (retrying cannot succeed). Anything
//! else unexpected (a 3xx left after redirects) is retried rather than dropped: losing no line
//! matters more than giving up early.
//!
//! Two failures are retried although they look permanent, because the operator can fix them
//! without a restart and no line must be lost meanwhile: 401/403 (the credentials were refused;
//! a rotated secret file is re-read before the retry) and TLS handshake or certificate errors.
//! Both carry a [`Trouble`] so the sink can log them once, count them and report itself degraded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};
use tokio::time::Instant;

use super::auth::Credentials;
use super::encode::Body;
use super::tls::{TlsFailure, tls_failure};

/// How much of an error answer is kept as the reason.
const MAX_REASON_BYTES: usize = 512;
/// The first retry waits about this long; each further one doubles it, up to `backoff_max`.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Where and how to push.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) client: reqwest::Client,
    pub(crate) url: reqwest::Url,
    pub(crate) tenant: Option<HeaderValue>,
    /// The `Authorization` header, re-read from its files after a 401/403.
    pub(crate) credentials: Arc<Credentials>,
}

/// A retried failure the operator has to fix: the sink is degraded while it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trouble {
    /// Loki (or its gateway) refused the credentials: 401 or 403.
    Auth { status: StatusCode },
    /// The TLS handshake failed (certificate, CA, name, client certificate).
    Tls(TlsFailure),
}

/// What one attempt came to.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Loki took the body.
    Delivered { status: StatusCode },
    /// Loki refused the body for good; retrying cannot help.
    Rejected { status: StatusCode, reason: String },
    /// Worth another try.
    Retry {
        /// The status label for metrics and logs: a status code, `timeout`, `connect` or `error`.
        label: String,
        /// Why, for the log.
        reason: String,
        /// The server's `Retry-After`, on 429 and 503.
        retry_after: Option<Duration>,
        /// Set when the failure needs the operator (credentials, TLS), not just patience.
        trouble: Option<Trouble>,
    },
}

impl Outcome {
    /// The `status` label of `shipper_loki_requests_total`.
    pub(crate) fn status_label(&self) -> String {
        match self {
            Outcome::Delivered { status } | Outcome::Rejected { status, .. } => {
                status.as_u16().to_string()
            }
            Outcome::Retry { label, .. } => label.clone(),
        }
    }
}

/// Sends `body` once. The client's timeout bounds the whole exchange, answer body included.
pub(crate) async fn attempt(target: &Target, body: &Body) -> Outcome {
    let mut request = target
        .client
        .post(target.url.clone())
        .header(CONTENT_TYPE, body.content_type)
        .body(body.bytes.clone());
    if let Some(encoding) = body.content_encoding {
        request = request.header(CONTENT_ENCODING, encoding);
    }
    if let Some(tenant) = &target.tenant {
        request = request.header("X-Scope-OrgID", tenant.clone());
    }
    if let Some(auth) = target.credentials.header() {
        request = request.header(AUTHORIZATION, auth);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return transport_error(&e),
    };
    let status = response.status();
    if status.is_success() {
        return Outcome::Delivered { status };
    }
    let retry_after =
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            parse_retry_after(response.headers().get(RETRY_AFTER))
        } else {
            None
        };
    let reason = match response.bytes().await {
        Ok(text) => {
            let text = &text[..text.len().min(MAX_REASON_BYTES)];
            String::from_utf8_lossy(text).trim().to_owned()
        }
        Err(e) => format!("(answer body unreadable: {e})"),
    };
    if is_permanent(status) {
        Outcome::Rejected { status, reason }
    } else {
        Outcome::Retry {
            label: status.as_u16().to_string(),
            reason,
            retry_after,
            trouble: is_auth_refusal(status).then_some(Trouble::Auth { status }),
        }
    }
}

fn transport_error(e: &reqwest::Error) -> Outcome {
    if let Some(failure) = tls_failure(e) {
        return Outcome::Retry {
            label: "tls".to_owned(),
            reason: failure.cause.clone(),
            retry_after: None,
            trouble: Some(Trouble::Tls(failure)),
        };
    }
    let label = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "error"
    };
    // The source chain says what actually failed (refused, reset, ...).
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    Outcome::Retry {
        label: label.to_owned(),
        reason,
        retry_after: None,
        trouble: None,
    }
}

/// 401 and 403: the credentials were refused. Retried (after re-reading secret files), never
/// dropped: fixing the secret must lose no line.
pub(crate) fn is_auth_refusal(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

/// 4xx other than 429, 401 and 403, and 501: the same body would be refused again.
pub(crate) fn is_permanent(status: StatusCode) -> bool {
    (status.is_client_error()
        && status != StatusCode::TOO_MANY_REQUESTS
        && !is_auth_refusal(status))
        || status == StatusCode::NOT_IMPLEMENTED
}

/// `Retry-After` in seconds. The HTTP-date form is not used by Loki or its proxies in practice and
/// is ignored (the regular backoff applies).
pub(crate) fn parse_retry_after(value: Option<&HeaderValue>) -> Option<Duration> {
    let secs: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// How long to wait before retry number `retry` (1 for the first): exponential from
/// [`BACKOFF_BASE`], capped at `max`, with "equal jitter" (a uniform pick in the upper half) so
/// many shippers recovering from one outage do not retry in lockstep.
pub(crate) fn backoff(retry: u32, max: Duration) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << retry.saturating_sub(1).min(20));
    let capped = exp.min(max);
    let half = capped / 2;
    half + half.mul_f64(fastrand::f64())
}

/// The wait before the next attempt: the server's `Retry-After` when it gave one, else [`backoff`];
/// either way at most `max`, so a wild header cannot stall the sink.
pub(crate) fn retry_delay(retry: u32, retry_after: Option<Duration>, max: Duration) -> Duration {
    retry_after.map_or_else(|| backoff(retry, max), |d| d.min(max))
}

/// Logs each distinct reason at most once per [`RateLimitedLog::EVERY`]: a stream of refused
/// batches (or an outage of many retries) gives a few lines, not one per request.
#[derive(Debug, Default)]
pub(crate) struct RateLimitedLog {
    last: HashMap<String, Instant>,
}

impl RateLimitedLog {
    /// Minimum time between two logs of the same reason.
    pub(crate) const EVERY: Duration = Duration::from_secs(60);
    /// Distinct reasons remembered; past it the memory is reset (bounded, even if every reason
    /// names a different stream).
    const MAX_KEYS: usize = 256;
    /// Reasons are compared on their first bytes (Loki appends stream and entry details).
    const KEY_BYTES: usize = 96;

    /// Whether a message for `reason` should be logged now; records it if so.
    pub(crate) fn should_log(&mut self, reason: &str, now: Instant) -> bool {
        let mut end = reason.len().min(Self::KEY_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let key = &reason[..end];
        if let Some(last) = self.last.get(key)
            && now.saturating_duration_since(*last) < Self::EVERY
        {
            return false;
        }
        if self.last.len() >= Self::MAX_KEYS {
            self.last.clear();
        }
        self.last.insert(key.to_owned(), now);
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn permanent_statuses_follow_loki() {
        for code in [400, 404, 413, 422, 501] {
            assert!(is_permanent(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        // 401/403 are retried: the operator rotates the secret and nothing is lost.
        for code in [401, 403, 429, 500, 502, 503, 504, 302] {
            assert!(!is_permanent(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stays_under_the_cap() {
        let max = Duration::from_secs(5);
        for retry in 1..40 {
            let full = BACKOFF_BASE
                .saturating_mul(1 << (retry - 1).min(20))
                .min(max);
            for _ in 0..50 {
                let d = backoff(retry, max);
                assert!(
                    d >= full / 2 && d <= full,
                    "retry {retry}: {d:?} vs {full:?}"
                );
            }
        }
        assert!(backoff(1, max) <= BACKOFF_BASE);
        assert_eq!(backoff(30, Duration::ZERO), Duration::ZERO);
        // Jitter actually varies.
        let picks: std::collections::HashSet<_> = (0..20).map(|_| backoff(5, max)).collect();
        assert!(picks.len() > 1);
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let max = Duration::from_secs(10);
        let three = Some(Duration::from_secs(3));
        assert_eq!(retry_delay(1, three, max), Duration::from_secs(3));
        assert_eq!(retry_delay(1, Some(Duration::from_secs(999)), max), max);
        assert!(retry_delay(1, None, max) <= BACKOFF_BASE);
    }

    #[test]
    fn retry_after_parses_seconds_only() {
        let parse = |s: &str| parse_retry_after(Some(&HeaderValue::from_str(s).unwrap()));
        assert_eq!(parse("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse("-1"), None);
        assert_eq!(parse_retry_after(None), None);
    }

    #[tokio::test(start_paused = true)]
    async fn log_is_rate_limited_per_reason() {
        let mut log = RateLimitedLog::default();
        let now = Instant::now();
        assert!(log.should_log("entry too old", now));
        assert!(!log.should_log("entry too old", now + Duration::from_secs(1)));
        assert!(log.should_log("line too long", now + Duration::from_secs(1)));
        assert!(log.should_log("entry too old", now + RateLimitedLog::EVERY));
        // Same prefix, different tail: one reason.
        let long_a = format!("{}{}", "x".repeat(200), "a");
        let long_b = format!("{}{}", "x".repeat(200), "b");
        assert!(log.should_log(&long_a, now));
        assert!(!log.should_log(&long_b, now));
        // Bounded memory.
        for i in 0..1000 {
            log.should_log(&format!("reason {i}"), now);
        }
        assert!(log.last.len() <= RateLimitedLog::MAX_KEYS);
    }
}
