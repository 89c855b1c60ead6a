//! `[sink]`: where batches go (Loki, a file, stdout) and how they are batched, and for Loki how
//! to reach it: `[sink.tls]`, `[sink.basic_auth]` or a bearer token, `[sink.headers]`.
//!
//! Everything a push will need is checked here, files included (CA and client certificates,
//! secret files), so `--check-config` catches what the first push would. Secrets are read into
//! [`Secret`]s at once, so neither a `Debug` of these structs nor an error can show one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use super::ConfigError;
use super::resolve::Resolver;
use crate::sink::loki::{LokiAuth, LokiSettings, LokiTls, Secret, SecretSource};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SinkFile {
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    tenant: Option<String>,
    encoding: Option<String>,
    path: Option<PathBuf>,
    batch_max_bytes: Option<usize>,
    batch_max_wait: Option<String>,
    request_timeout: Option<String>,
    max_concurrency: Option<usize>,
    backoff_max: Option<String>,
    bearer_token: Option<Secret>,
    bearer_token_file: Option<PathBuf>,
    tls: Option<TlsFile>,
    basic_auth: Option<BasicAuthFile>,
    headers: Option<BTreeMap<String, Secret>>,
}

/// `[sink.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    server_name: Option<String>,
    insecure_skip_verify: Option<bool>,
}

/// `[sink.basic_auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuthFile {
    username: Option<String>,
    password: Option<Secret>,
    password_file: Option<PathBuf>,
}

/// Headers the sink sets itself: `[sink.headers]` may not override them.
const RESERVED_HEADERS: [(&str, &str); 7] = [
    ("content-type", "the sink sets it from sink.encoding"),
    ("content-encoding", "the sink sets it from sink.encoding"),
    ("content-length", "the sink sets it"),
    ("host", "it comes from sink.url"),
    ("transfer-encoding", "the sink sets it"),
    (
        "authorization",
        "use sink.basic_auth or sink.bearer_token(_file)",
    ),
    ("x-scope-orgid", "use sink.tenant"),
];

/// Loki push encodings (Loki's wire, defined once in `diagtool_model::loki`).
pub use diagtool_model::loki::Encoding;

/// Where batches go.
// Built once at start and matched once: the Loki variant's size costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// Grafana Loki's push API.
    Loki {
        /// Base URL; `/loki/api/v1/push` is appended.
        url: String,
        /// Sent as `X-Scope-OrgID` when set.
        tenant: Option<String>,
        /// Body encoding.
        encoding: Encoding,
        /// Per-request timeout.
        request_timeout: Duration,
        /// Upper bound of concurrent requests.
        max_concurrency: usize,
        /// Cap of the retry backoff interval.
        backoff_max: Duration,
        /// Credentials (secrets never print).
        auth: LokiAuth,
        /// TLS settings for `https://`.
        tls: LokiTls,
        /// Extra headers, values marked sensitive.
        headers: HeaderMap,
    },
    /// JSON lines appended to a file.
    File {
        /// The file.
        path: PathBuf,
    },
    /// JSON lines on standard output.
    Stdout,
}

/// The sink and its batching.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The kind and its settings.
    pub kind: SinkKind,
    /// A batch is sent once its lines reach this many bytes.
    pub batch_max_bytes: usize,
    /// A batch is sent at the latest this long after its first line.
    pub batch_max_wait: Duration,
}

/// Default for `batch_max_bytes`: 1 MiB.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 1024 * 1024;
/// Default for `batch_max_wait`.
pub const DEFAULT_BATCH_MAX_WAIT: Duration = Duration::from_secs(1);

pub(super) fn resolve(r: &Resolver<'_>, file: Option<SinkFile>) -> Result<SinkConfig, ConfigError> {
    let Some(sink) = file else {
        return Err(r.invalid("sink", "no sink configured: add a [sink] table"));
    };
    let batch_max_bytes = sink.batch_max_bytes.unwrap_or(DEFAULT_BATCH_MAX_BYTES);
    if batch_max_bytes == 0 {
        return Err(r.invalid("sink.batch_max_bytes", "must be greater than zero"));
    }
    let batch_max_wait = r.positive_duration(
        "sink.batch_max_wait",
        sink.batch_max_wait.as_deref(),
        DEFAULT_BATCH_MAX_WAIT,
    )?;
    if sink.kind != "loki" {
        let loki_only = [
            ("sink.bearer_token", sink.bearer_token.is_some()),
            ("sink.bearer_token_file", sink.bearer_token_file.is_some()),
            ("sink.tls", sink.tls.is_some()),
            ("sink.basic_auth", sink.basic_auth.is_some()),
            ("sink.headers", sink.headers.is_some()),
        ];
        if let Some((key, _)) = loki_only.iter().find(|(_, set)| *set) {
            return Err(r.invalid(
                *key,
                format!("only for type = \"loki\", not \"{}\"", sink.kind),
            ));
        }
    }
    let kind = match sink.kind.as_str() {
        "loki" => loki(r, sink)?,
        "file" => {
            let Some(path) = sink.path else {
                return Err(r.invalid(
                    "sink.path",
                    "required for type = \"file\", like \"./data/out.jsonl\"",
                ));
            };
            SinkKind::File {
                path: r.absolute(&path),
            }
        }
        "stdout" => SinkKind::Stdout,
        other => {
            return Err(r.invalid(
                "sink.type",
                format!("unknown sink type '{other}': use \"loki\", \"file\" or \"stdout\""),
            ));
        }
    };
    Ok(SinkConfig {
        kind,
        batch_max_bytes,
        batch_max_wait,
    })
}

fn loki(r: &Resolver<'_>, sink: SinkFile) -> Result<SinkKind, ConfigError> {
    let Some(url) = sink.url.filter(|u| !u.trim().is_empty()) else {
        return Err(r.invalid(
            "sink.url",
            "required for type = \"loki\", like \"http://127.0.0.1:3100\"",
        ));
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(r.invalid(
            "sink.url",
            format!("'{url}' is not an http:// or https:// URL"),
        ));
    }
    let encoding = match sink.encoding.as_deref() {
        None => Encoding::default(),
        Some(name) => name
            .parse()
            .map_err(|e: diagtool_model::loki::UnknownEncoding| {
                r.invalid("sink.encoding", e.to_string())
            })?,
    };
    let max_concurrency = sink
        .max_concurrency
        .unwrap_or(LokiSettings::DEFAULT_MAX_CONCURRENCY);
    if max_concurrency == 0 {
        return Err(r.invalid("sink.max_concurrency", "must be at least 1"));
    }
    let https = url.starts_with("https://");
    let auth = auth(
        r,
        sink.bearer_token,
        sink.bearer_token_file,
        sink.basic_auth,
    )?;
    let tls = tls(r, sink.tls, https)?;
    let headers = headers(r, sink.headers.unwrap_or_default())?;
    Ok(SinkKind::Loki {
        auth,
        tls,
        headers,
        url: url.trim_end_matches('/').to_string(),
        tenant: sink.tenant.filter(|t| !t.is_empty()),
        encoding,
        request_timeout: r.positive_duration(
            "sink.request_timeout",
            sink.request_timeout.as_deref(),
            LokiSettings::DEFAULT_REQUEST_TIMEOUT,
        )?,
        max_concurrency,
        backoff_max: r.positive_duration(
            "sink.backoff_max",
            sink.backoff_max.as_deref(),
            LokiSettings::DEFAULT_BACKOFF_MAX,
        )?,
    })
}

fn secret_source(
    r: &Resolver<'_>,
    inline: Option<Secret>,
    file: Option<PathBuf>,
    inline_key: &'static str,
    file_key: &'static str,
) -> Result<Option<SecretSource>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(r.invalid(
            file_key,
            format!("set {inline_key} or {file_key}, not both"),
        )),
        (Some(s), None) if s.expose().is_empty() => {
            Err(r.invalid(inline_key, "is empty: give the secret, or remove the key"))
        }
        (Some(s), None) => Ok(Some(SecretSource::Inline(s))),
        (None, Some(path)) => Ok(Some(SecretSource::File {
            key: file_key,
            path: r.absolute(&path),
        })),
        (None, None) => Ok(None),
    }
}

fn auth(
    r: &Resolver<'_>,
    bearer_token: Option<Secret>,
    bearer_token_file: Option<PathBuf>,
    basic: Option<BasicAuthFile>,
) -> Result<LokiAuth, ConfigError> {
    let bearer = secret_source(
        r,
        bearer_token,
        bearer_token_file,
        "sink.bearer_token",
        "sink.bearer_token_file",
    )?;
    let auth = match (bearer, basic) {
        (Some(_), Some(_)) => {
            return Err(r.invalid(
                "sink.basic_auth",
                "set either [sink.basic_auth] or a bearer token (sink.bearer_token or \
                 sink.bearer_token_file), not both",
            ));
        }
        (Some(token), None) => LokiAuth::Bearer(token),
        (None, Some(basic)) => {
            let username = basic.username.filter(|u| !u.is_empty()).ok_or_else(|| {
                r.invalid(
                    "sink.basic_auth.username",
                    "required: the user name (for Grafana Cloud, the instance id)",
                )
            })?;
            if username.contains(':') {
                return Err(r.invalid(
                    "sink.basic_auth.username",
                    "contains ':', which basic auth cannot carry in a user name",
                ));
            }
            let password = secret_source(
                r,
                basic.password,
                basic.password_file,
                "sink.basic_auth.password",
                "sink.basic_auth.password_file",
            )?
            .ok_or_else(|| {
                r.invalid(
                    "sink.basic_auth.password",
                    "required: set password or password_file",
                )
            })?;
            LokiAuth::Basic { username, password }
        }
        (None, None) => LokiAuth::None,
    };
    // Read the secret files now, so a missing or empty file fails the config check.
    auth.header().map_err(|e| r.invalid(e.key, e.message))?;
    Ok(auth)
}

fn tls(r: &Resolver<'_>, file: Option<TlsFile>, https: bool) -> Result<LokiTls, ConfigError> {
    let tls = match file {
        None => LokiTls::default(),
        Some(t) => {
            if !https {
                return Err(r.invalid(
                    "sink.tls",
                    "set, but sink.url is http://: TLS settings apply to https:// only",
                ));
            }
            LokiTls {
                ca_file: t.ca_file.map(|p| r.absolute(&p)),
                cert_file: t.cert_file.map(|p| r.absolute(&p)),
                key_file: t.key_file.map(|p| r.absolute(&p)),
                server_name: t.server_name,
                insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
            }
        }
    };
    if https {
        // Builds the very configuration the sink will use: every file is read and checked.
        tls.client_config()
            .map_err(|e| r.invalid(e.key, e.message))?;
    }
    Ok(tls)
}

fn headers(r: &Resolver<'_>, headers: BTreeMap<String, Secret>) -> Result<HeaderMap, ConfigError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let key = format!("sink.headers.{name}");
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            r.invalid(
                key.as_str(),
                format!("'{name}' is not a valid header name (letters, digits and '-')"),
            )
        })?;
        if let Some((_, why)) = RESERVED_HEADERS
            .iter()
            .find(|(reserved, _)| *reserved == header.as_str())
        {
            return Err(r.invalid(
                key.as_str(),
                format!("conflicts with a header the sink sets: {why}"),
            ));
        }
        // The value may be a key of the gateway's: never quoted in the error.
        let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
            r.invalid(
                key.as_str(),
                "the value is not a valid header value (visible ASCII, no newlines)",
            )
        })?;
        value.set_sensitive(true);
        map.insert(header, value);
    }
    Ok(map)
}

/// Keys whose value is a secret, wherever they appear (`debug_token` too: it guards the debug port).
const SECRET_KEYS: [&str; 3] = ["password", "bearer_token", "debug_token"];

/// A TOML error message with every secret of `text` replaced by `<redacted>`. toml quotes the
/// offending line (and sometimes the value) in its messages, so a mistyped or unterminated secret
/// would otherwise show up in `--check-config` output. The values of [`SECRET_KEYS`] and of every
/// key in a `headers` table (or inline `headers = {...}`) count as secrets; a line that cannot be
/// split is redacted whole when it is in such a table.
pub(super) fn redact_secrets(text: &str, message: &str) -> String {
    let mut secrets: Vec<&str> = Vec::new();
    let mut in_headers = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_headers = trimmed.trim_matches(|c| c == '[' || c == ']').trim() == "sink.headers";
            continue;
        }
        let (key, value) = match trimmed.split_once('=') {
            Some((k, v)) => (k.trim().trim_matches('"'), v.trim()),
            None => ("", trimmed),
        };
        let secret = in_headers || key == "headers" || SECRET_KEYS.contains(&key);
        if !secret {
            continue;
        }
        // The value as written, and each value of an inline table, with and without quotes
        // (toml may show either).
        let inner = value
            .split([',', '{', '}'])
            .filter_map(|part| part.split_once('=').map(|(_, v)| v.trim()));
        for written in std::iter::once(value).chain(inner) {
            for candidate in [written, written.trim_matches(|c| c == '"' || c == '\'')] {
                if candidate.len() >= 3 {
                    secrets.push(candidate);
                }
            }
        }
    }
    // Longest first, so a value is not half-replaced by a shorter one it contains.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = message.to_owned();
    for secret in secrets {
        out = out.replace(secret, "<redacted>");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::Config;
    use super::*;

    const HEAD: &str = "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\n[sink]\n";

    fn parse(sink: &str) -> Result<Config, String> {
        Config::parse(&format!("{HEAD}{sink}"), "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn auth_and_headers_resolve_and_their_debug_shows_no_secret() {
        let c = parse(
            "type = \"loki\"\nurl = \"http://h:3100\"\n[sink.basic_auth]\nusername = \"123456\"\n\
             password = \"pw-secret-1\"\n[sink.headers]\nX-Gateway = \"gw-secret-2\"\n",
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("pw-secret-1") && !shown.contains("gw-secret-2"),
            "{shown}"
        );
        let SinkKind::Loki { auth, headers, .. } = c.sink.kind else {
            panic!("not loki");
        };
        assert!(matches!(&auth, LokiAuth::Basic { username, .. } if username == "123456"));
        assert!(headers["x-gateway"].is_sensitive());
        assert_eq!(headers["x-gateway"], "gw-secret-2");
    }

    #[test]
    fn secret_files_resolve_to_absolute_paths_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t\n").unwrap();
        let c = parse(&format!(
            "type = \"loki\"\nurl = \"http://h\"\nbearer_token_file = \"{}\"\n",
            token.display()
        ))
        .unwrap();
        let SinkKind::Loki { auth, .. } = c.sink.kind else {
            panic!("not loki");
        };
        assert_eq!(
            auth,
            LokiAuth::Bearer(SecretSource::File {
                key: "sink.bearer_token_file",
                path: token.clone()
            })
        );
        std::fs::remove_file(&token).unwrap();
        let e = parse(&format!(
            "type = \"loki\"\nurl = \"http://h\"\nbearer_token_file = \"{}\"\n",
            token.display()
        ))
        .unwrap_err();
        assert!(e.contains("sink.bearer_token_file"), "{e}");
    }

    #[test]
    fn conflicting_or_misplaced_keys_are_errors_naming_the_key() {
        for (sink, key) in [
            (
                "type = \"loki\"\nurl = \"http://h\"\nbearer_token = \"a\"\nbearer_token_file = \"/x\"\n",
                "sink.bearer_token_file",
            ),
            (
                "type = \"loki\"\nurl = \"http://h\"\n[sink.basic_auth]\nusername = \"u\"\n",
                "sink.basic_auth.password",
            ),
            (
                "type = \"loki\"\nurl = \"http://h\"\n[sink.basic_auth]\npassword = \"p\"\n",
                "sink.basic_auth.username",
            ),
            (
                "type = \"loki\"\nurl = \"http://h\"\nbearer_token = \"\"\n",
                "sink.bearer_token",
            ),
            (
                "type = \"loki\"\nurl = \"http://h\"\n[sink.headers]\ncontent-type = \"x\"\n",
                "sink.headers.content-type",
            ),
            (
                "type = \"loki\"\nurl = \"http://h\"\n[sink.headers]\nX-Scope-OrgID = \"x\"\n",
                "sink.headers.X-Scope-OrgID",
            ),
            (
                "type = \"loki\"\nurl = \"http://h\"\n[sink.headers]\n\"bad name\" = \"x\"\n",
                "sink.headers.bad name",
            ),
            (
                "type = \"stdout\"\nbearer_token = \"a\"\n",
                "sink.bearer_token",
            ),
            (
                "type = \"file\"\npath = \"/o\"\n[sink.tls]\nca_file = \"/x\"\n",
                "sink.tls",
            ),
            (
                "type = \"loki\"\nurl = \"https://h\"\n[sink.tls]\ninsecure_skip_verify = true\nserver_name = \"x\"\n",
                "sink.tls.insecure_skip_verify",
            ),
            (
                "type = \"loki\"\nurl = \"https://h\"\n[sink.tls]\ninsecure_skip_verify = true\ncert_file = \"/nope.pem\"\nkey_file = \"/nope.key\"\n",
                "sink.tls.cert_file",
            ),
        ] {
            let e = parse(sink).unwrap_err();
            assert!(e.contains(&format!("`{key}`")), "{sink}: {e}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod redact_tests {
    use super::super::Config;

    #[test]
    fn toml_errors_do_not_quote_secrets() {
        for (sink, secret) in [
            (
                "[sink.basic_auth]\nusername = \"u\"\npassword = \"SECRET-unterminated\n",
                "SECRET-unterminated",
            ),
            ("bearer_token = 123456789\n", "123456789"),
            ("[sink.headers]\nX-Key = 98765432\n", "98765432"),
            ("headers = { X-Key = 55555555 }\n", "55555555"),
        ] {
            let text = format!(
                "[[sources]]\ntype = \"file\"\ninclude = [\"/l/*.log\"]\n[sink]\ntype = \"loki\"\n\
                 url = \"http://h\"\n{sink}"
            );
            let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(!e.contains(secret), "{e}");
            assert!(e.contains("<redacted>"), "{e}");
        }
    }
}
