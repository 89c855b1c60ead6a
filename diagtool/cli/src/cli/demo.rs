//! `diagtool demo`: the newcomer's first minute.
//!
//! Starts the shipper that sits beside diagtool in a temporary directory, with a little log traffic
//! and the leak lab reproducing the classic leak (16 tasks every interval, where the incident had
//! 16 every 30 s), watches it with the same code as `diagtool watch`, shows where the leaked tasks
//! wait (a task dump), and says what to run next. Everything it starts is stopped before it
//! returns: the log writer is cancelled and joined, the shipper is stopped (SIGTERM, then SIGKILL)
//! and reaped, also when Ctrl-C ends the watch or interrupts the start; the temporary directory
//! goes last.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::{CliError, Client, Dur, WatchArgs, watch};
use crate::soak::child::{ShipperChild, free_addr};

/// Tasks the leak lab leaks per interval: the incident's step.
const LEAK_STEP: u32 = 16;
/// How long the shipper may take to serve its debug port.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long the shipper may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// `diagtool demo` settings.
#[derive(Debug, Clone)]
pub(super) struct DemoArgs {
    /// Time between samples, and the leak's period.
    pub(super) interval: Duration,
    /// How long to watch.
    pub(super) duration: Duration,
    /// The shipper binary (default: beside diagtool).
    pub(super) shipper: Option<PathBuf>,
}

/// Runs the demo: exit 0 when the watch named the leak, 1 when it did not.
pub(super) fn demo(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let shipper = crate::soak::resolve_shipper(args.shipper.as_deref()).map_err(CliError::Input)?;
    let dir = tempfile::Builder::new()
        .prefix("diagtool-demo-")
        .tempdir()
        .context("cannot create a temporary directory for the demo")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run(args, &shipper, dir.path()))
}

async fn run(args: &DemoArgs, shipper: &Path, dir: &Path) -> anyhow::Result<ExitCode> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let main = free_addr().context("cannot find a free loopback port")?;
    let debug = free_addr().context("cannot find a free loopback port")?;
    let config = dir.join("shipper.toml");
    std::fs::write(&config, config_text(dir, main, debug))
        .with_context(|| format!("cannot write {}", config.display()))?;
    let period_ms = args.interval.as_millis().max(1);
    let leak = format!("poll-spawn:{LEAK_STEP}/{period_ms}ms");
    let log = dir.join("shipper.log");
    let child_args = vec![
        "--config".to_owned(),
        config.to_string_lossy().into_owned(),
        "--leak-lab".to_owned(),
        leak.clone(),
    ];
    say(&format!(
        "diagtool demo: starting {} with --leak-lab {leak}\n  \
         (the classic leak: {LEAK_STEP} tasks parked forever every {}, as in the incident's \
         +16/30s, sped up)\n  debug port http://{debug}, work dir {}",
        shipper.display(),
        super::fmt::secs(args.interval.as_secs_f64()),
        dir.display()
    ))?;
    let mut child = ShipperChild::spawn(shipper, &child_args, dir, &log)
        .with_context(|| format!("cannot start {}", shipper.display()))?;

    // Some real traffic for the shipper to tail while it leaks.
    let stop_writer = CancellationToken::new();
    let writer = tokio::spawn(write_logs(logs.join("app.log"), stop_writer.clone()));

    let client = Client::new(&format!("http://{debug}"), None)?;
    // Ctrl-C while starting stops everything; once the watch runs, Ctrl-C ends the watch with its
    // summary (it listens itself), and the shipper is stopped below either way.
    let started = tokio::select! {
        started = wait_started(&client, &mut child) => Some(started),
        _ = tokio::signal::ctrl_c() => None,
    };
    let outcome = match started {
        None => None,
        Some(Err(e)) => Some(Err(e.context(format!(
            "the shipper did not start; its log ends with:\n{}",
            child.log_tail(20)
        )))),
        Some(Ok(())) => Some(watch_and_dump(args, &client).await),
    };

    stop_writer.cancel();
    let _ = writer.await;
    let stopped = child.stop(STOP_GRACE).await;
    say(&format!(
        "\ndiagtool demo: shipper stopped ({}); temporary files removed",
        match &stopped {
            Ok(crate::soak::child::Stopped::Exited(status)) => status.to_string(),
            Ok(crate::soak::child::Stopped::Killed) => "killed after the grace period".to_owned(),
            Err(e) => format!("while stopping: {e}"),
        }
    ))?;
    match outcome {
        None => {
            say("interrupted")?;
            Ok(ExitCode::from(130))
        }
        Some(Err(e)) => Err(e),
        Some(Ok(named)) => {
            say(NEXT_STEPS)?;
            if named {
                Ok(ExitCode::SUCCESS)
            } else {
                say(
                    "diagtool demo: the watch did not call the leak-lab site a leak; try a longer --duration",
                )?;
                Ok(ExitCode::from(1))
            }
        }
    }
}

/// Watches, then shows where the leaked tasks wait. Returns whether the watch found the leak.
async fn watch_and_dump(args: &DemoArgs, client: &Client) -> anyhow::Result<bool> {
    say(&format!(
        "\ndiagtool watch --interval {} --duration {} (the growth table, refreshed each sample):\n",
        super::fmt::secs(args.interval.as_secs_f64()),
        super::fmt::secs(args.duration.as_secs_f64()),
    ))?;
    let watch_args = WatchArgs {
        interval: Dur(args.interval),
        duration: Some(Dur(args.duration)),
        threshold: crate::analysis::DEFAULT_THRESHOLD_PER_MIN,
        record: None,
        json: false,
        fail_on_leak: true,
        top: 6,
        ..WatchArgs::single()
    };
    let code = watch::watch(client, &watch_args).await?;
    let leaked = code == ExitCode::from(1);
    match client.dump(Duration::from_secs(10)).await {
        Ok((dump, _)) => {
            if let Some(group) = dump
                .groups
                .iter()
                .filter(|g| g.site.contains("leaklab"))
                .max_by_key(|g| g.count)
            {
                let mut text = format!(
                    "\ndiagtool dump: {} tasks spawned at {} wait here (innermost frames last):\n",
                    group.count, group.site
                );
                let skip = group.trace.len().saturating_sub(6);
                for frame in &group.trace[skip..] {
                    text.push_str(&format!("    {frame}\n"));
                }
                say(text.trim_end())?;
            }
        }
        Err(e) => say(&format!("\ndiagtool dump failed: {e}"))?,
    }
    Ok(leaked)
}

const NEXT_STEPS: &str = "
What to do next, against your own service's debug port (--target, default http://127.0.0.1:6060):
  diagtool watch --interval 30s --duration 5m --record rec/   name the leaking spawn site
  diagtool dump --format text                                  see where its tasks wait
  diagtool report rec/                                         write the incident report (Markdown + SVG)
  diagtool profile --seconds 30 --flamegraph cpu.svg           see where the CPU goes";

/// Waits until the debug port serves a snapshot; fails when the shipper exits or takes too long.
async fn wait_started(client: &Client, child: &mut ShipperChild) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_LIMIT;
    loop {
        if let Some(status) = child.try_exited()? {
            anyhow::bail!("the shipper exited at start with {status}");
        }
        if client.snapshot().await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("the shipper's debug port did not answer within {START_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends a line every 100 ms until cancelled.
async fn write_logs(path: PathBuf, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let line = format!("demo request {n} served in 3ms\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if written.is_err() {
            // The demo's directory is going away; nothing else to do.
            return;
        }
        n += 1;
    }
}

fn config_text(dir: &Path, main: std::net::SocketAddr, debug: std::net::SocketAddr) -> String {
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    format!(
        "# written by diagtool demo\n\
         data_dir = {data}\n\n\
         [server]\nmain_addr = \"{main}\"\ndebug_addr = \"{debug}\"\n\n\
         [[sources]]\ntype = \"file\"\ninclude = [{include}]\nlabels = {{ job = \"demo\" }}\n\n\
         [sink]\ntype = \"file\"\npath = {out}\n",
        data = q(&dir.join("data")),
        include = q(&dir.join("logs").join("*.log")),
        out = q(&dir.join("data").join("out.jsonl")),
    )
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn say(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_valid_toml_with_odd_paths() {
        let dir = Path::new("/tmp/a \"quoted\" dir\\x");
        let text = config_text(
            dir,
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
        );
        let v: toml::Value = toml::from_str(&text).expect("valid TOML");
        assert_eq!(
            v["data_dir"].as_str(),
            Some("/tmp/a \"quoted\" dir\\x/data")
        );
        assert_eq!(v["server"]["debug_addr"].as_str(), Some("127.0.0.1:2"));
    }
}
