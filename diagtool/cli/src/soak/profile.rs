//! Soak profiles: the TOML file format, its validation, and scaling to a requested duration.
//!
//! A profile is written for a nominal `duration`. Every *workload* time in it (sample interval,
//! rotation period, burst and fault windows, the warm-up, leak-lab periods) is multiplied by
//! `requested / nominal`, so a 60 s CI run and a 15-minute run by hand see the same shape: the same
//! number of samples, rotations, bursts and outages. Rates (lines per second) and *machine* times
//! (startup, drain and shutdown timeouts, the shipper's batch wait) are not scaled.
//!
//! [`ProfileFile`] mirrors the TOML (`deny_unknown_fields`); [`Profile::parse`] resolves it into
//! [`Profile`], naming the offending key in every error.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::model::duration;
use crate::model::loki::{Encoding, UnknownEncoding};

/// A profile that cannot be used; the message names the file, the key and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read profile '{path}': {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Malformed TOML or an unknown key.
    #[error("profile '{path}': {message}")]
    Syntax {
        /// The file.
        path: String,
        /// toml's message (it shows the line and the key).
        message: String,
    },
    /// A well-formed value that is not acceptable.
    #[error("profile '{path}': key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The dotted key.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: Option<String>,
    description: Option<String>,
    duration: String,
    sample_interval: Option<String>,
    #[serde(default)]
    shipper: ShipperFile,
    generator: GeneratorFile,
    #[serde(default)]
    rotation: RotationFile,
    #[serde(default)]
    bursts: Vec<WindowFile>,
    #[serde(default)]
    faults: Vec<WindowFile>,
    #[serde(default)]
    limits: LimitsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShipperFile {
    #[serde(default)]
    leak_lab: Vec<String>,
    #[serde(default)]
    leak_lab_fixed: bool,
    encoding: Option<String>,
    batch_max_wait: Option<String>,
    batch_max_bytes: Option<u64>,
    shutdown_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GeneratorFile {
    files: u32,
    lines_per_sec: f64,
    line_bytes: Option<usize>,
    special_every: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotationFile {
    mode: Option<String>,
    every: Option<String>,
    keep: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    at: String,
    #[serde(rename = "for")]
    length: String,
    kind: Option<String>,
    multiplier: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    tasks_growth_per_min: Option<f64>,
    rss_growth_mib_per_min: Option<f64>,
    fds_growth_per_min: Option<f64>,
    max_missing_ratio: Option<f64>,
    max_duplicate_ratio: Option<f64>,
    max_sample_errors: Option<u64>,
    warmup: Option<String>,
    startup_timeout: Option<String>,
    drain_timeout: Option<String>,
    require_heap: Option<bool>,
}

/// How the generator rotates its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationMode {
    /// Never.
    None,
    /// `app.log` is renamed to `app.log.1` and a new `app.log` is created (logrotate's default).
    Rename,
    /// `app.log` is copied to `app.log.1`, then truncated in place (logrotate's `copytruncate`).
    CopyTruncate,
    /// Rename and copytruncate, in turn.
    Alternate,
}

/// The generator's rotation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    /// How.
    pub mode: RotationMode,
    /// Time between rotations (every file rotates at once); scaled.
    pub every: Duration,
    /// Rotated generations kept (`app.log.1` .. `app.log.KEEP`); older ones are deleted.
    pub keep: u32,
}

/// What a fault window makes the receiver do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer every push with this status (429 or 5xx).
    Status(u16),
    /// Hold every push without answering until the window ends (then 503).
    Hang,
}

/// A window of time, relative to the start of writing; scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Start.
    pub at: Duration,
    /// Length.
    pub length: Duration,
}

impl Window {
    /// The end of the window.
    pub fn end(&self) -> Duration {
        self.at + self.length
    }
}

/// A stretch during which the write rate is multiplied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    /// When.
    pub window: Window,
    /// The rate multiplier (> 1).
    pub multiplier: f64,
}

/// A stretch during which the receiver misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// When.
    pub window: Window,
    /// How.
    pub kind: FaultKind,
}

/// The log generator's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorSpec {
    /// Files written (`logs/app-<i>.log`).
    pub files: u32,
    /// Lines per second over all files (outside bursts), spread over the files in turn.
    pub lines_per_sec: f64,
    /// Length of an ordinary line in bytes (before the newline).
    pub line_bytes: usize,
    /// Every Nth line carries quotes, backslashes, a tab and non-ASCII text (0: none).
    pub special_every: u64,
}

/// The shipper's settings for the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ShipperSpec {
    /// `--leak-lab` values, periods already scaled.
    pub leak_lab: Vec<String>,
    /// `--leak-lab-fixed`: the lab's fixed versions (same spawns, every task ends).
    pub leak_lab_fixed: bool,
    /// Loki push encoding.
    pub encoding: Encoding,
    /// The sink's batch wait (not scaled).
    pub batch_max_wait: Duration,
    /// The sink's batch size bound.
    pub batch_max_bytes: u64,
    /// How long the shipper may take to stop after SIGTERM (not scaled).
    pub shutdown_timeout: Duration,
}

/// The pass/fail limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// The growth analysis threshold, tasks per minute per site.
    pub tasks_growth_per_min: f64,
    /// RSS growth allowed after the warm-up, MiB per minute.
    pub rss_growth_mib_per_min: f64,
    /// Open-fd growth allowed after the warm-up, per minute.
    pub fds_growth_per_min: f64,
    /// Fraction of written lines allowed to be missing (0 unless copytruncate's race is exercised).
    pub max_missing_ratio: f64,
    /// Fraction of written lines allowed to arrive twice (at-least-once delivery).
    pub max_duplicate_ratio: f64,
    /// Samples of `/debug/tasks` or `/health` allowed to fail.
    pub max_sample_errors: u64,
    /// Samples taken before this are left out of the RSS and fd fits (scaled).
    pub warmup: Duration,
    /// How long the shipper may take to become ready (not scaled).
    pub startup_timeout: Duration,
    /// How long after writing stops every line must have arrived (not scaled).
    pub drain_timeout: Duration,
    /// Whether a shipper without heap profiles fails the `heap_growth` check (else it is skipped).
    pub require_heap: bool,
}

/// A validated profile, scaled to the run's duration.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The profile's name (the file stem unless set).
    pub name: String,
    /// What it exercises, for the summary.
    pub description: String,
    /// The nominal duration the file was written for.
    pub nominal: Duration,
    /// How long the generator writes (the nominal or the requested duration).
    pub duration: Duration,
    /// Time between samples of `/debug/tasks` and `/health`.
    pub sample_interval: Duration,
    /// The shipper's settings.
    pub shipper: ShipperSpec,
    /// The generator's settings.
    pub generator: GeneratorSpec,
    /// Rotation.
    pub rotation: Rotation,
    /// Rate bursts.
    pub bursts: Vec<Burst>,
    /// Receiver faults.
    pub faults: Vec<Fault>,
    /// Limits.
    pub limits: Limits,
}

struct Ctx<'a> {
    path: &'a str,
    scale: f64,
}

impl Ctx<'_> {
    fn invalid(&self, key: &str, message: impl Into<String>) -> ProfileError {
        ProfileError::Invalid {
            path: self.path.to_owned(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn duration(&self, key: &str, text: &str) -> Result<Duration, ProfileError> {
        duration::parse(text).map_err(|e| self.invalid(key, e.to_string()))
    }

    fn scaled(&self, key: &str, text: &str) -> Result<Duration, ProfileError> {
        Ok(self.duration(key, text)?.mul_f64(self.scale))
    }

    fn opt(&self, key: &str, text: Option<&str>, default: &str) -> Result<Duration, ProfileError> {
        self.duration(key, text.unwrap_or(default))
    }

    fn opt_scaled(
        &self,
        key: &str,
        text: Option<&str>,
        default: &str,
    ) -> Result<Duration, ProfileError> {
        self.scaled(key, text.unwrap_or(default))
    }

    fn non_negative(&self, key: &str, v: Option<f64>, default: f64) -> Result<f64, ProfileError> {
        let v = v.unwrap_or(default);
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(self.invalid(key, format!("{v} must be a number >= 0")))
        }
    }
}

impl Profile {
    /// Reads and parses a profile file; `duration` (from `--duration`) scales its times.
    pub fn load(path: &Path, duration: Option<Duration>) -> Result<Self, ProfileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: shown.clone(),
            source,
        })?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "soak".to_owned());
        Self::parse(&text, &shown, &stem, duration)
    }

    /// Parses profile text. `path` is only for messages; `default_name` is used when the profile
    /// sets no `name`.
    pub fn parse(
        text: &str,
        path: &str,
        default_name: &str,
        duration: Option<Duration>,
    ) -> Result<Self, ProfileError> {
        let file: ProfileFile = toml::from_str(text).map_err(|e| ProfileError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let plain = Ctx { path, scale: 1.0 };
        let nominal = plain.duration("duration", &file.duration)?;
        if nominal < Duration::from_secs(1) {
            return Err(plain.invalid("duration", "must be at least 1s"));
        }
        let requested = duration.unwrap_or(nominal);
        if requested < Duration::from_secs(1) {
            return Err(plain.invalid("--duration", "must be at least 1s"));
        }
        let cx = Ctx {
            path,
            scale: requested.as_secs_f64() / nominal.as_secs_f64(),
        };

        let sample_interval =
            cx.opt_scaled("sample_interval", file.sample_interval.as_deref(), "5s")?;
        if sample_interval < Duration::from_millis(100) {
            return Err(cx.invalid(
                "sample_interval",
                "scaled to less than 100ms; use a longer --duration or interval",
            ));
        }
        if sample_interval * 3 > requested {
            return Err(cx.invalid(
                "sample_interval",
                format!(
                    "{} leaves fewer than 3 samples in {}; the growth analysis needs more",
                    duration::exact(sample_interval),
                    duration::exact(requested)
                ),
            ));
        }

        let generator = {
            let g = &file.generator;
            if g.files == 0 || g.files > 100_000 {
                return Err(cx.invalid("generator.files", "must be between 1 and 100000"));
            }
            if !(g.lines_per_sec.is_finite() && g.lines_per_sec > 0.0) {
                return Err(cx.invalid("generator.lines_per_sec", "must be a number > 0"));
            }
            let line_bytes = g.line_bytes.unwrap_or(150);
            if !(40..=65_536).contains(&line_bytes) {
                return Err(cx.invalid("generator.line_bytes", "must be between 40 and 65536"));
            }
            GeneratorSpec {
                files: g.files,
                lines_per_sec: g.lines_per_sec,
                line_bytes,
                special_every: g.special_every.unwrap_or(50),
            }
        };

        let rotation = {
            let r = &file.rotation;
            let mode = match r.mode.as_deref().unwrap_or("none") {
                "none" => RotationMode::None,
                "rename" => RotationMode::Rename,
                "copytruncate" => RotationMode::CopyTruncate,
                "alternate" => RotationMode::Alternate,
                other => {
                    return Err(cx.invalid(
                        "rotation.mode",
                        format!("{other:?}: use none, rename, copytruncate or alternate"),
                    ));
                }
            };
            let every = cx.opt_scaled("rotation.every", r.every.as_deref(), "30s")?;
            if mode != RotationMode::None && every < Duration::from_millis(100) {
                return Err(cx.invalid("rotation.every", "scaled to less than 100ms"));
            }
            Rotation {
                mode,
                every,
                keep: r.keep.unwrap_or(2).max(1),
            }
        };

        let window = |key: &str, w: &WindowFile| -> Result<Window, ProfileError> {
            let window = Window {
                at: cx.scaled(&format!("{key}.at"), &w.at)?,
                length: cx.scaled(&format!("{key}.for"), &w.length)?,
            };
            if window.end() > requested {
                return Err(cx.invalid(
                    key,
                    format!("ends after the profile's duration ({})", file.duration),
                ));
            }
            Ok(window)
        };
        let mut bursts = Vec::new();
        for (i, b) in file.bursts.iter().enumerate() {
            let key = format!("bursts[{i}]");
            if b.kind.is_some() {
                return Err(cx.invalid(&format!("{key}.kind"), "a burst has no kind"));
            }
            let multiplier = b.multiplier.unwrap_or(10.0);
            if !(multiplier.is_finite() && multiplier >= 1.0) {
                return Err(cx.invalid(&format!("{key}.multiplier"), "must be a number >= 1"));
            }
            bursts.push(Burst {
                window: window(&key, b)?,
                multiplier,
            });
        }
        let mut faults = Vec::new();
        for (i, f) in file.faults.iter().enumerate() {
            let key = format!("faults[{i}]");
            if f.multiplier.is_some() {
                return Err(cx.invalid(&format!("{key}.multiplier"), "a fault has no multiplier"));
            }
            let kind = match f.kind.as_deref() {
                Some("hang") => FaultKind::Hang,
                Some(code) => {
                    match code.parse::<u16>() {
                        Ok(s @ (429 | 500..=599)) => FaultKind::Status(s),
                        _ => {
                            return Err(cx.invalid(
                            &format!("{key}.kind"),
                            format!("{code:?}: use \"429\", a 5xx status such as \"503\", or \"hang\""),
                        ));
                        }
                    }
                }
                None => {
                    return Err(cx.invalid(
                        &format!("{key}.kind"),
                        "missing: \"429\", \"503\" or \"hang\"",
                    ));
                }
            };
            faults.push(Fault {
                window: window(&key, f)?,
                kind,
            });
        }

        let shipper = {
            let s = &file.shipper;
            let encoding: Encoding = match &s.encoding {
                None => Encoding::default(),
                Some(name) => name
                    .parse()
                    .map_err(|e: UnknownEncoding| cx.invalid("shipper.encoding", e.to_string()))?,
            };
            let mut leak_lab = Vec::new();
            for (i, spec) in s.leak_lab.iter().enumerate() {
                leak_lab.push(scale_leak_spec(
                    spec,
                    &cx,
                    &format!("shipper.leak_lab[{i}]"),
                )?);
            }
            if s.leak_lab_fixed && leak_lab.is_empty() {
                return Err(cx.invalid(
                    "shipper.leak_lab_fixed",
                    "true without any shipper.leak_lab scenario to fix: name one".to_owned(),
                ));
            }
            ShipperSpec {
                leak_lab,
                leak_lab_fixed: s.leak_lab_fixed,
                encoding,
                batch_max_wait: cx.opt(
                    "shipper.batch_max_wait",
                    s.batch_max_wait.as_deref(),
                    "500ms",
                )?,
                batch_max_bytes: s.batch_max_bytes.unwrap_or(1_048_576),
                shutdown_timeout: cx.opt(
                    "shipper.shutdown_timeout",
                    s.shutdown_timeout.as_deref(),
                    "10s",
                )?,
            }
        };

        let l = &file.limits;
        let limits = Limits {
            tasks_growth_per_min: cx.non_negative(
                "limits.tasks_growth_per_min",
                l.tasks_growth_per_min,
                crate::analysis::DEFAULT_THRESHOLD_PER_MIN,
            )?,
            rss_growth_mib_per_min: cx.non_negative(
                "limits.rss_growth_mib_per_min",
                l.rss_growth_mib_per_min,
                2.0,
            )?,
            fds_growth_per_min: cx.non_negative(
                "limits.fds_growth_per_min",
                l.fds_growth_per_min,
                2.0,
            )?,
            max_missing_ratio: cx.non_negative(
                "limits.max_missing_ratio",
                l.max_missing_ratio,
                0.0,
            )?,
            max_duplicate_ratio: cx.non_negative(
                "limits.max_duplicate_ratio",
                l.max_duplicate_ratio,
                0.0,
            )?,
            max_sample_errors: l.max_sample_errors.unwrap_or(2),
            warmup: cx.opt_scaled("limits.warmup", l.warmup.as_deref(), "10s")?,
            startup_timeout: cx.opt(
                "limits.startup_timeout",
                l.startup_timeout.as_deref(),
                "30s",
            )?,
            drain_timeout: cx.opt("limits.drain_timeout", l.drain_timeout.as_deref(), "60s")?,
            require_heap: l.require_heap.unwrap_or(false),
        };
        if limits.warmup >= requested {
            return Err(cx.invalid("limits.warmup", "must be shorter than the duration"));
        }

        Ok(Profile {
            name: file.name.unwrap_or_else(|| default_name.to_owned()),
            description: file.description.unwrap_or_default().trim().to_owned(),
            nominal,
            duration: requested,
            sample_interval,
            shipper,
            generator,
            rotation,
            bursts,
            faults,
            limits,
        })
    }
}

/// Scales the PERIOD of a `SCENARIO[:COUNT/PERIOD]` leak-lab value; other forms pass unchanged.
fn scale_leak_spec(spec: &str, cx: &Ctx<'_>, key: &str) -> Result<String, ProfileError> {
    let Some((head, period)) = spec.rsplit_once('/') else {
        return Ok(spec.to_owned());
    };
    let period = cx.scaled(key, period)?;
    let ms = period.as_millis().max(1);
    Ok(format!("{head}/{ms}ms"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "profile_tests.rs"]
mod tests;
