//! `[health]`: heartbeat and task-growth thresholds.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::resolve::Resolver;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthFile {
    task_growth_warn_per_min: Option<f64>,
    fail_on_task_leak: Option<bool>,
    heartbeat_timeout: Option<String>,
    task_warmup: Option<String>,
    task_window: Option<String>,
}

/// Health thresholds.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Task growth above this (per minute) reports `degraded` (the task-growth part).
    pub task_growth_warn_per_min: f64,
    /// Whether a task leak makes `/health` answer 503.
    pub fail_on_task_leak: bool,
    /// A component whose heartbeat is older than this is `critical`.
    pub heartbeat_timeout: Duration,
    /// Task growth is judged after this warm-up, against the live count at its end.
    pub task_warmup: Duration,
    /// Task growth is fitted over the samples of this window.
    pub task_window: Duration,
}

pub(super) fn resolve(
    r: &Resolver<'_>,
    file: Option<HealthFile>,
) -> Result<HealthConfig, ConfigError> {
    let health = file.unwrap_or_default();
    let warn = health.task_growth_warn_per_min.unwrap_or(10.0);
    if !(warn.is_finite() && warn >= 0.0) {
        return Err(r.invalid(
            "health.task_growth_warn_per_min",
            format!("{warn} is not a non-negative number"),
        ));
    }
    Ok(HealthConfig {
        task_growth_warn_per_min: warn,
        fail_on_task_leak: health.fail_on_task_leak.unwrap_or(false),
        heartbeat_timeout: r.positive_duration(
            "health.heartbeat_timeout",
            health.heartbeat_timeout.as_deref(),
            Duration::from_secs(10),
        )?,
        task_warmup: r.positive_duration(
            "health.task_warmup",
            health.task_warmup.as_deref(),
            Duration::from_secs(5),
        )?,
        task_window: r.positive_duration(
            "health.task_window",
            health.task_window.as_deref(),
            Duration::from_secs(60),
        )?,
    })
}
