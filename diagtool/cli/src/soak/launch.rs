//! Starting the shipper for a soak run: its config (written with the `toml` serializer), its
//! arguments, free loopback ports, and the wait until it is ready. A port taken between choosing
//! and binding it is recognised by the shipper's own message naming that address (`cannot listen
//! on ADDR (server.main_addr)`), not by the OS's error text, which varies with the locale; the
//! start is then retried on fresh ports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::child::{self, ShipperChild};
use super::profile::Profile;
use super::sampler::Sampler;
use super::{Interrupts, STOP_GRACE};
use crate::model::duration;

/// Times the shipper is started again when a port was taken between choosing and binding it.
const START_ATTEMPTS: u32 = 3;

/// Addresses and paths one shipper run uses.
#[derive(Debug, Clone)]
struct Layout {
    dir: PathBuf,
    logs: PathBuf,
    main: std::net::SocketAddr,
    debug: std::net::SocketAddr,
    loki_url: String,
}

/// The shipper's config for a run: one file source over the generator's files, the Loki sink
/// pointed at the receiver, the servers on the chosen loopback ports. Written through the `toml`
/// serializer, so any path or URL is quoted correctly.
fn shipper_config(profile: &Profile, layout: &Layout) -> String {
    use toml::{Table, Value};
    fn table<const N: usize>(pairs: [(&str, Value); N]) -> Table {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
    let text = |s: &str| Value::String(s.to_owned());
    let s = &profile.shipper;
    let include = layout.logs.join("*.log");
    let source = table([
        ("type", text("file")),
        (
            "include",
            Value::Array(vec![text(&include.to_string_lossy())]),
        ),
        ("read_from", text("beginning")),
        ("labels", Value::Table(table([("job", text("soak"))]))),
    ]);
    let config = table([
        ("data_dir", text(&layout.dir.join("data").to_string_lossy())),
        (
            "shutdown_timeout",
            text(&duration::exact(s.shutdown_timeout)),
        ),
        (
            "server",
            Value::Table(table([
                ("main_addr", text(&layout.main.to_string())),
                ("debug_addr", text(&layout.debug.to_string())),
            ])),
        ),
        ("sources", Value::Array(vec![Value::Table(source)])),
        (
            "sink",
            Value::Table(table([
                ("type", text("loki")),
                ("url", text(&layout.loki_url)),
                ("encoding", text(s.encoding.name())),
                (
                    "batch_max_bytes",
                    Value::Integer(i64::try_from(s.batch_max_bytes).unwrap_or(i64::MAX)),
                ),
                ("batch_max_wait", text(&duration::exact(s.batch_max_wait))),
            ])),
        ),
    ]);
    format!(
        "# written by diagtool soak for profile {}\n{config}",
        profile.name
    )
}

/// The shipper's arguments.
fn shipper_args(profile: &Profile, config: &Path) -> Vec<String> {
    let mut args = vec!["--config".to_owned(), config.to_string_lossy().into_owned()];
    for leak in &profile.shipper.leak_lab {
        args.push("--leak-lab".to_owned());
        args.push(leak.clone());
    }
    if profile.shipper.leak_lab_fixed {
        args.push("--leak-lab-fixed".to_owned());
    }
    args
}

/// Raises this process's soft open-file limit to its hard limit, so the shipper (which inherits
/// it) can hold a profile's thousand files. Failure only leaves the limit as it was.
pub(super) fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own; no other memory is involved.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Starts the shipper and waits until it is ready and serves `/debug/tasks`.
pub(super) async fn start_shipper(
    profile: &Profile,
    program: &Path,
    dir: &Path,
    loki_url: &str,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Result<(ShipperChild, Sampler), String>> {
    let config_path = dir.join("shipper.toml");
    let log = dir.join("shipper.log");
    let timeout = profile.limits.startup_timeout;
    for attempt in 1..=START_ATTEMPTS {
        let layout = Layout {
            dir: dir.to_owned(),
            logs: dir.join("logs"),
            main: child::free_addr().context("cannot bind a loopback port")?,
            debug: child::free_addr().context("cannot bind a loopback port")?,
            loki_url: loki_url.to_owned(),
        };
        std::fs::write(&config_path, shipper_config(profile, &layout))
            .with_context(|| format!("cannot write '{}'", config_path.display()))?;
        let mut child =
            match ShipperChild::spawn(program, &shipper_args(profile, &config_path), dir, &log) {
                Ok(c) => c,
                Err(e) => {
                    return Ok(Err(format!(
                        "cannot start the shipper '{}': {e}",
                        program.display()
                    )));
                }
            };
        let sampler =
            Sampler::new(layout.main, layout.debug).context("cannot build an HTTP client")?;
        let deadline = Instant::now() + timeout;
        // Ready: /ready answers 200 and /debug/tasks answers a snapshot.
        let mut last_error: String;
        let ready = loop {
            if let Some(status) = child.try_exited().context("cannot watch the shipper")? {
                break Err(status);
            }
            if sampler.ready().await {
                match sampler.snapshot().await {
                    Ok(_) => break Ok(()),
                    Err(e) => last_error = e,
                }
            } else {
                last_error = format!("GET http://{}/ready: not 200 yet", layout.main);
            }
            if Instant::now() >= deadline {
                let tail = child.log_tail(20);
                let _ = child.stop(STOP_GRACE).await;
                return Ok(Err(format!(
                    "the shipper was not ready (with /debug/tasks served on {}) within {}: \
                     {last_error}; its log ends with:\n{tail}",
                    layout.debug,
                    duration::exact(timeout)
                )));
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                name = interrupts.recv() => {
                    let _ = child.stop(STOP_GRACE).await;
                    return Ok(Err(format!("interrupted by {name} while the shipper was starting")));
                }
            }
        };
        match ready {
            Ok(()) => return Ok(Ok((child, sampler))),
            Err(status) => {
                let tail = child.log_tail(20);
                let port_taken = [layout.main, layout.debug]
                    .iter()
                    .any(|addr| tail.contains(&format!("cannot listen on {addr}")));
                if port_taken && attempt < START_ATTEMPTS {
                    continue;
                }
                return Ok(Err(format!(
                    "the shipper exited ({status}) before it was ready; its log ends with:\n{tail}"
                )));
            }
        }
    }
    Ok(Err("the shipper could not bind its ports".to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PROFILE: &str = "duration = \"30s\"\n[shipper]\nleak_lab = [\"poll-spawn:4/5s\"]\n\
                           [generator]\nfiles = 2\nlines_per_sec = 10\n";

    #[test]
    fn config_is_valid_toml_pointing_at_the_run() {
        let profile = Profile::parse(PROFILE, "p.toml", "p", None).unwrap();
        let layout = Layout {
            dir: PathBuf::from("/tmp/soak \"x\"\\y"),
            logs: PathBuf::from("/tmp/soak \"x\"\\y/logs"),
            main: "127.0.0.1:1234".parse().unwrap(),
            debug: "127.0.0.1:1235".parse().unwrap(),
            loki_url: "http://127.0.0.1:9".into(),
        };
        let text = shipper_config(&profile, &layout);
        let value: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(value["data_dir"].as_str(), Some("/tmp/soak \"x\"\\y/data"));
        assert_eq!(
            value["server"]["debug_addr"].as_str(),
            Some("127.0.0.1:1235")
        );
        let source = &value["sources"].as_array().unwrap()[0];
        assert_eq!(
            source["include"].as_array().unwrap()[0].as_str(),
            Some("/tmp/soak \"x\"\\y/logs/*.log")
        );
        assert_eq!(value["sink"]["type"].as_str(), Some("loki"));
        assert_eq!(value["sink"]["url"].as_str(), Some("http://127.0.0.1:9"));
        assert_eq!(value["sink"]["batch_max_wait"].as_str(), Some("500ms"));
        let args = shipper_args(&profile, Path::new("/c.toml"));
        assert_eq!(
            args,
            ["--config", "/c.toml", "--leak-lab", "poll-spawn:4/5000ms"]
        );
        let fixed = PROFILE.replace("[generator]", "leak_lab_fixed = true\n[generator]");
        let fixed = Profile::parse(&fixed, "p.toml", "p", None).unwrap();
        assert_eq!(
            shipper_args(&fixed, Path::new("/c.toml"))
                .last()
                .map(String::as_str),
            Some("--leak-lab-fixed")
        );
    }
}
