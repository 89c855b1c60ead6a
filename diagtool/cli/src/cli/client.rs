//! HTTP to the target's debug port: one `reqwest` client (plain http, no TLS), a timeout on every
//! request, the bearer token when given, and one classification of failures so every command
//! reports them alike: no answer (refused, timed out, 5xx) is [`CliError::Unreachable`] (exit 3); an
//! answer that is not what we asked for (401, 404, an HTML page, another schema) is
//! [`CliError::Input`] (exit 2), in one line that says what to check.

use std::time::Duration;

use reqwest::{StatusCode, Url};

use super::CliError;
use crate::model::{Dump, Snapshot};

/// Longest wait for a TCP connection to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for a snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a heap profile (the probe groups and symbolises it first).
const HEAP_TIMEOUT: Duration = Duration::from_secs(30);
/// Times a heap request is repeated after the target answered 429 (one profile at a time).
const HEAP_BUSY_RETRIES: u32 = 3;
/// Largest body we read into memory (a snapshot with `?debug=2` of 100k tasks stays well below).
const MAX_BODY: usize = 256 * 1024 * 1024;

/// A client for one target.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    basic: Option<(String, String)>,
}

impl Client {
    /// Checks the target URL and builds the client.
    pub fn new(target: &str, token: Option<String>) -> Result<Self, CliError> {
        Self::for_flag("--target", target, token)
    }

    /// Like [`Client::new`], for a URL given with `flag` (such as `--prometheus`), whose name the
    /// errors quote.
    pub fn for_flag(flag: &str, target: &str, token: Option<String>) -> Result<Self, CliError> {
        let mut base = Url::parse(target).map_err(|e| {
            CliError::Input(format!(
                "bad {flag} {target:?}: {e}; write it like {}",
                super::DEFAULT_TARGET
            ))
        })?;
        if base.scheme() != "http" {
            return Err(CliError::Input(format!(
                "bad {flag} {target:?}: only http:// URLs are supported (the debug port is plain \
                 http; reach a remote one through an SSH tunnel)"
            )));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(CliError::Input(format!(
                "bad {flag} {target:?}: it names no host"
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut http = reqwest::Client::builder();
        if base.host_str().is_some_and(|h| {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
                || h == "[::1]"
        }) {
            // A proxy from the environment can never reach this machine's loopback.
            http = http.no_proxy();
        }
        let http = http
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("diagtool/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Input(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            token: token.filter(|t| !t.is_empty()),
            basic: None,
        })
    }

    /// Sends HTTP basic auth (`user:password`) instead of the bearer token.
    pub fn with_basic_auth(mut self, credentials: &str) -> Result<Self, CliError> {
        let Some((user, password)) = credentials.split_once(':') else {
            return Err(CliError::Input(
                "bad --basic-auth: write it as USER:PASSWORD".to_owned(),
            ));
        };
        self.basic = Some((user.to_owned(), password.to_owned()));
        Ok(self)
    }

    /// `host:port` of the target: how a fleet's table names the instance.
    pub fn instance(&self) -> String {
        let host = self.base.host_str().unwrap_or("?");
        match self.base.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// `GET path?k=v&...` (values percent-encoded) under `timeout`: like [`Client::get_answer`].
    pub async fn get_query(
        &self,
        path: &str,
        params: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(Url, StatusCode, Vec<u8>), CliError> {
        let mut url = self.url(path)?;
        url.query_pairs_mut().extend_pairs(params);
        self.get_url(url, timeout).await
    }

    /// The target's base URL, as given.
    pub fn target(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `GET /debug/tasks`: the snapshot and the text it was parsed from.
    pub async fn snapshot(&self) -> Result<(Snapshot, String), CliError> {
        let (url, text) = self.get_text("debug/tasks", SNAPSHOT_TIMEOUT).await?;
        let snap = Snapshot::from_json(&text).map_err(|e| not_a(&url, "snapshot", &text, &e))?;
        Ok((snap, text))
    }

    /// `GET /debug/tasks/dump?timeout_ms=N`: the dump and its text.
    pub async fn dump(&self, timeout: Duration) -> Result<(Dump, String), CliError> {
        self.dump_mode(timeout, "self").await
    }

    /// `GET /debug/tasks/dump?timeout_ms=N&mode=MODE` (`self` or `global`).
    pub async fn dump_mode(
        &self,
        timeout: Duration,
        mode: &str,
    ) -> Result<(Dump, String), CliError> {
        let path = format!(
            "debug/tasks/dump?timeout_ms={}&mode={mode}",
            timeout.as_millis()
        );
        let (url, text) = self
            .get_text(&path, timeout + Duration::from_secs(5))
            .await?;
        let dump = Dump::from_json(&text).map_err(|e| not_a(&url, "dump", &text, &e))?;
        Ok((dump, text))
    }

    /// `GET /debug/pprof/profile?seconds=N`: the gzipped pprof protobuf.
    pub async fn profile(&self, seconds: u64) -> Result<Vec<u8>, CliError> {
        let path = format!("debug/pprof/profile?seconds={seconds}");
        let (_, body) = self.get(&path, Duration::from_secs(seconds + 15)).await?;
        if body.len() < 2 || body[..2] != [0x1f, 0x8b] {
            return Err(CliError::Input(format!(
                "{}: the answer is not a gzipped pprof profile ({} bytes): is --target a diagtool probe?",
                self.url(&path)
                    .map_or_else(|_| path.clone(), |u| u.to_string()),
                body.len()
            )));
        }
        Ok(body)
    }

    /// `GET /debug/pprof/heap`: the gzipped pprof heap profile. A target that answers 501 (built
    /// without heap profiling, or with the profiler inactive) or 404 (a probe from before heap
    /// profiles) is [`CliError::Unsupported`],
    /// quoting its answer, which says how to enable it; a 429 (another profile is being taken)
    /// is waited out a few times.
    pub async fn heap(&self) -> Result<Vec<u8>, CliError> {
        let path = "debug/pprof/heap";
        let mut busy = 0;
        loop {
            let (url, status, body) = self.get_answer(path, HEAP_TIMEOUT).await?;
            match status {
                StatusCode::NOT_IMPLEMENTED => {
                    return Err(CliError::Unsupported {
                        target: self.target().to_owned(),
                        what: "heap profiles",
                        reason: format!("{url} answered 501: {}", whole_message(&body)),
                    });
                }
                // A probe from before heap profiles has no such route.
                StatusCode::NOT_FOUND => {
                    return Err(CliError::Unsupported {
                        target: self.target().to_owned(),
                        what: "heap profiles",
                        reason: format!(
                            "{url} does not exist (404): the service's diagtool-probe predates \
                             heap profiles, or --target is not a diagtool debug port"
                        ),
                    });
                }
                StatusCode::TOO_MANY_REQUESTS if busy < HEAP_BUSY_RETRIES => {
                    busy += 1;
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(busy))).await;
                    continue;
                }
                _ => {}
            }
            let (url, body) = self.classify(url, status, body)?;
            if body.len() < 2 || body[..2] != [0x1f, 0x8b] {
                return Err(CliError::Input(format!(
                    "{url}: the answer is not a gzipped pprof heap profile ({} bytes, began {:?}): \
                     is --target a diagtool probe?",
                    body.len(),
                    String::from_utf8_lossy(&body[..body.len().min(40)])
                )));
            }
            return Ok(body);
        }
    }

    fn url(&self, path: &str) -> Result<Url, CliError> {
        self.base
            .join(path)
            .map_err(|e| CliError::Input(format!("cannot join {path:?} to {}: {e}", self.base)))
    }

    async fn get_text(&self, path: &str, timeout: Duration) -> Result<(Url, String), CliError> {
        let (url, body) = self.get(path, timeout).await?;
        let text = String::from_utf8(body).map_err(|_| {
            CliError::Input(format!("{url} answered with bytes that are not UTF-8 text"))
        })?;
        if looks_like_html(&text) {
            return Err(CliError::Input(format!(
                "{url} answered with an HTML page, not a diagtool document: is --target the service's \
                 debug port (default {})?",
                super::DEFAULT_TARGET
            )));
        }
        Ok((url, text))
    }

    /// `GET path` under `timeout`: the status and the body, whatever the status; only a transport
    /// failure (no connection, no answer in time, a body too large) is an error.
    pub async fn get_answer(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<(Url, StatusCode, Vec<u8>), CliError> {
        let url = self.url(path)?;
        self.get_url(url, timeout).await
    }

    async fn get_url(
        &self,
        url: Url,
        timeout: Duration,
    ) -> Result<(Url, StatusCode, Vec<u8>), CliError> {
        let unreachable = |reason: String| CliError::Unreachable {
            target: self.target().to_owned(),
            reason,
        };
        let mut request = self.http.get(url.clone()).timeout(timeout);
        if let Some((user, password)) = &self.basic {
            request = request.basic_auth(user, Some(password));
        } else if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable(describe(&e, timeout)))?;
        let status = response.status();
        if let Some(warning) = response
            .headers()
            .get(reqwest::header::WARNING)
            .and_then(|v| v.to_str().ok())
        {
            eprintln!("diagtool: the target warns: {}", target_warning(warning));
        }
        let body = read_body(response, timeout).await.map_err(unreachable)?;
        Ok((url, status, body))
    }

    async fn get(&self, path: &str, timeout: Duration) -> Result<(Url, Vec<u8>), CliError> {
        let (url, status, body) = self.get_answer(path, timeout).await?;
        self.classify(url, status, body)
    }

    /// A success's body, or the error an answer of `status` means (see the module's notes).
    fn classify(
        &self,
        url: Url,
        status: StatusCode,
        body: Vec<u8>,
    ) -> Result<(Url, Vec<u8>), CliError> {
        let unreachable = |reason: String| CliError::Unreachable {
            target: self.target().to_owned(),
            reason,
        };
        match status {
            s if s.is_success() => Ok((url, body)),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(CliError::Input(format!(
                "{url} refused the request ({status}): pass the debug token with --token or DIAGTOOL_TOKEN"
            ))),
            StatusCode::NOT_FOUND => Err(CliError::Input(format!(
                "{url} does not exist on the target (404): is --target a diagtool debug port?"
            ))),
            StatusCode::CONFLICT => Err(CliError::Input(format!(
                "{url}: the target is busy with another profile (409); try again when it ends"
            ))),
            s if s.is_server_error() => Err(unreachable(format!(
                "{url} answered {status}: {}",
                error_message(&body)
            ))),
            _ => Err(CliError::Input(format!(
                "{url} answered {status}: {}",
                error_message(&body)
            ))),
        }
    }
}

/// The text of an HTTP `Warning` header (`199 agent "text"`), or the whole value if it has
/// another form.
fn target_warning(value: &str) -> &str {
    value
        .split_once('"')
        .and_then(|(_, rest)| rest.strip_suffix('"'))
        .unwrap_or(value)
}

async fn read_body(mut response: reqwest::Response, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e, timeout))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("the answer is larger than {} MiB", MAX_BODY >> 20));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One line for a transport failure: what happened, without reqwest's nested chain.
fn describe(err: &reqwest::Error, timeout: Duration) -> String {
    if err.is_timeout() {
        format!(
            "no answer within {}",
            super::fmt::secs(timeout.as_secs_f64())
        )
    } else if err.is_connect() {
        let mut cause: Option<&dyn std::error::Error> = Some(err);
        let mut last = err.to_string();
        while let Some(c) = cause {
            last = c.to_string();
            cause = c.source();
        }
        format!("cannot connect ({last}); is the service running with its debug port there?")
    } else {
        format!("the request failed: {err}")
    }
}

/// The `error` field of a JSON error body, else the start of the body.
pub(super) fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(serde_json::Value::String(msg)) = map.get("error")
    {
        return msg.clone();
    }
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "(empty body)".to_owned()
    } else {
        line.chars().take(200).collect()
    }
}

/// A plain-text error body in one line (its lines joined), at most 400 characters: a 501 from
/// the probe says over a few lines what is missing and how to enable it.
fn whole_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if joined.is_empty() {
        "(empty body)".to_owned()
    } else {
        joined.chars().take(400).collect()
    }
}

fn looks_like_html(text: &str) -> bool {
    let head = text
        .trim_start()
        .get(..16)
        .unwrap_or(text.trim_start())
        .to_ascii_lowercase();
    head.starts_with("<!doctype") || head.starts_with("<html") || head.starts_with('<')
}

fn not_a(url: &Url, kind: &str, text: &str, err: &crate::model::SchemaError) -> CliError {
    let shown: String = text.trim().chars().take(60).collect();
    CliError::Input(format!(
        "{url} did not answer with a diagtool {kind} ({err}); it began {shown:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_headers_give_their_text() {
        assert_eq!(
            target_warning("199 diagtool \"binary gone\""),
            "binary gone"
        );
        assert_eq!(target_warning("odd"), "odd");
    }

    #[test]
    fn target_urls_are_checked() {
        assert!(Client::new("http://127.0.0.1:6060", None).is_ok());
        let with_prefix = Client::new("http://127.0.0.1:6060/svc", None).expect("ok");
        assert_eq!(
            with_prefix.url("debug/tasks").expect("joins").as_str(),
            "http://127.0.0.1:6060/svc/debug/tasks"
        );
        for bad in [
            "127.0.0.1:6060",
            "not a url",
            "https://127.0.0.1:6060",
            "ftp://x",
        ] {
            let err = Client::new(bad, None).expect_err(bad);
            assert!(matches!(err, CliError::Input(_)), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn html_is_recognised_and_error_bodies_are_summarised() {
        assert!(looks_like_html("  <!DOCTYPE html><html>"));
        assert!(looks_like_html("<html><body>"));
        assert!(!looks_like_html("{\"schema\":\"x\"}"));
        assert_eq!(
            error_message(br#"{"error":"dump timed out after 100ms"}"#),
            "dump timed out after 100ms"
        );
        assert_eq!(error_message(b"oops\nmore"), "oops");
        assert_eq!(error_message(b""), "(empty body)");
    }
}
