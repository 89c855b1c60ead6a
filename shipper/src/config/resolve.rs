//! The checks every section shares: durations (the toolkit's one grammar,
//! `diagtool_model::duration`), addresses, paths, globs, labels. A [`Resolver`]
//! knows the file being read, so each check's error names the file and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use diagtool_model::duration;

use super::{ConfigError, DEFAULT_MAX_LINE_BYTES, ReadFrom};

/// Loki's default `max_label_name_length`.
pub(super) const MAX_LABEL_NAME_BYTES: usize = 1024;
/// Loki's default `max_label_value_length`.
pub(super) const MAX_LABEL_VALUE_BYTES: usize = 2048;

/// Resolves values of one config file: relative paths against `cwd`, errors naming `path`.
pub(super) struct Resolver<'a> {
    pub(super) path: &'a str,
    pub(super) cwd: PathBuf,
}

impl Resolver<'_> {
    pub(super) fn invalid(
        &self,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }

    pub(super) fn duration(
        &self,
        key: &str,
        v: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => duration::parse(s).map_err(|e| self.invalid(key, e.to_string())),
        }
    }

    pub(super) fn positive_duration(
        &self,
        key: &str,
        v: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(key, v, default)?;
        if d.is_zero() {
            return Err(self.invalid(key, "must be greater than zero"));
        }
        Ok(d)
    }

    pub(super) fn addr(
        &self,
        key: &str,
        v: Option<&str>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let s = v.unwrap_or(default);
        s.parse().map_err(|_| {
            self.invalid(
                key,
                format!("invalid address '{s}': write IP:PORT, like '127.0.0.1:8401'"),
            )
        })
    }

    pub(super) fn absolute(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            let rel = p.strip_prefix(".").unwrap_or(p);
            self.cwd.join(rel)
        }
    }

    /// An absolute, UTF-8 directory with no glob characters, for sources that glob below it.
    pub(super) fn glob_base(&self, key: &str, path: &Path) -> Result<String, ConfigError> {
        let base = self.absolute(path);
        let Some(base_s) = base.to_str() else {
            return Err(self.invalid(key, format!("path '{}' is not UTF-8", path.display())));
        };
        if globset::escape(base_s) != base_s {
            return Err(self.invalid(key, format!("path '{base_s}' contains glob characters")));
        }
        Ok(base_s.to_string())
    }

    pub(super) fn pattern(&self, key: &str, p: &str) -> Result<String, ConfigError> {
        if p.trim().is_empty() {
            return Err(self.invalid(key, "empty glob pattern"));
        }
        let abs = self.absolute(Path::new(p));
        let s = abs
            .to_str()
            .ok_or_else(|| self.invalid(key, format!("pattern '{p}' is not UTF-8")))?;
        globset::GlobBuilder::new(s)
            .literal_separator(true)
            .build()
            .map_err(|e| self.invalid(key, format!("invalid glob '{p}': {e}")))?;
        Ok(s.to_string())
    }

    pub(super) fn read_from(&self, key: &str, v: Option<&str>) -> Result<ReadFrom, ConfigError> {
        match v {
            None | Some("beginning") => Ok(ReadFrom::Beginning),
            Some("end") => Ok(ReadFrom::End),
            Some(o) => Err(self.invalid(
                key,
                format!("unknown value '{o}': use \"beginning\" or \"end\""),
            )),
        }
    }

    pub(super) fn labels(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        // Loki's rules (and its default limits): a name is `[a-zA-Z_][a-zA-Z0-9_]*`, `__` is
        // reserved for internal labels, names are at most 1024 bytes and values 2048; an empty
        // value means "no such label" to Loki, so it would silently vanish.
        for (name, value) in &labels {
            let ok = name
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
            let k = format!("{key}.{name}");
            if !ok || name.is_empty() || name.starts_with("__") {
                return Err(self.invalid(
                    k,
                    format!("invalid label name '{name}': use letters, digits and '_', not starting with a digit or '__'"),
                ));
            }
            if name.len() > MAX_LABEL_NAME_BYTES {
                return Err(self.invalid(
                    k,
                    format!(
                        "label name longer than Loki's {MAX_LABEL_NAME_BYTES} bytes: shorten it"
                    ),
                ));
            }
            if value.is_empty() {
                return Err(self.invalid(
                    k,
                    "empty value: Loki drops a label without a value; give it one or remove it",
                ));
            }
            if value.len() > MAX_LABEL_VALUE_BYTES {
                return Err(self.invalid(
                    k,
                    format!("value longer than Loki's {MAX_LABEL_VALUE_BYTES} bytes: shorten it"),
                ));
            }
        }
        Ok(labels)
    }

    pub(super) fn max_line(&self, key: &str, v: Option<usize>) -> Result<usize, ConfigError> {
        match v {
            None => Ok(DEFAULT_MAX_LINE_BYTES),
            Some(n) if n >= 16 => Ok(n),
            Some(n) => Err(self.invalid(key, format!("{n} is too small: use at least 16 bytes"))),
        }
    }
}
