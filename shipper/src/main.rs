//! `shipper`: see `shipper --help`. Parses flags, loads the config, runs [`shipper::run`] and maps
//! failures to exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 for a bad config or usage, 1
//! for a runtime failure, [`EXIT_PANIC`] when a component panicked (a bug; the positions
//! acknowledged before it were saved).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use shipper::config::{Config, DEFAULT_CONFIG};

/// Threads of the runtime's blocking pool: file writes and name lookups. Loki bodies are encoded
/// on the sink's own thread, and the probe's profiles and dumps run on its debug server's own
/// runtime, so this could shrink once measured.
const BLOCKING_THREADS: usize = 3;

const EXAMPLES: &str = "\
Examples:
  shipper --print-default-config > shipper.toml      start from the built-in default
  shipper --check-config --config shipper.toml       prints ok, or the offending key (exit 2)
  shipper --config shipper.toml                      run; SIGTERM flushes and saves positions
  shipper --config shipper.toml --console            also serve tokio-console on 127.0.0.1:6669
  shipper --leak-lab poll-spawn:16/30s               reproduce a leak for diagtool watch
  shipper --leak-lab poll-spawn:16/30s --leak-lab-fixed   the same spawns, fixed: no leak
  shipper --completions bash > /etc/bash_completion.d/shipper
  shipper --man | man -l -";

/// Tails log files and Docker json-file logs and pushes them to Grafana Loki, losing no line.
#[derive(Debug, Parser)]
#[command(name = "shipper", version, after_help = EXAMPLES)]
struct Cli {
    /// Config file (TOML) [default: the built-in config, see --print-default-config].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Main port address (/health, /ready, /metrics), overrides server.main_addr [default: 127.0.0.1:8401].
    #[arg(long, value_name = "ADDR")]
    main_addr: Option<String>,
    /// Debug port address (/debug/*), overrides server.debug_addr [default: 127.0.0.1:6060].
    #[arg(long, value_name = "ADDR")]
    debug_addr: Option<String>,
    /// Enable tokio-console [default: off].
    #[arg(long)]
    console: bool,
    /// tokio-console address [default: 127.0.0.1:6669].
    #[arg(long, value_name = "ADDR")]
    console_addr: Option<String>,
    /// Leak-lab scenario SCENARIO[:COUNT/PERIOD], repeatable [default: none].
    #[arg(long, value_name = "SCENARIO")]
    leak_lab: Vec<String>,
    /// Run the leak lab's fixed code instead: the same spawns, but every task is answered and ends
    /// (shows a fix without a rebuild).
    #[arg(long, requires = "leak_lab")]
    leak_lab_fixed: bool,
    /// Validate the config, print "ok" and exit 0 (exit 2 with the offending key otherwise).
    #[arg(long)]
    check_config: bool,
    /// Print the built-in default config (valid TOML) and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Print a shell completion script for SHELL and exit.
    #[arg(long, value_enum, value_name = "SHELL")]
    completions: Option<clap_complete::Shell>,
    /// Print the man page (roff) and exit.
    #[arg(long)]
    man: bool,
}

enum Failure {
    Config(anyhow::Error),
    Runtime(anyhow::Error),
}

fn addr(key: &str, v: &str) -> Result<std::net::SocketAddr, Failure> {
    v.parse().map_err(|_| {
        Failure::Config(anyhow::anyhow!(
            "--{key} '{v}': write IP:PORT, like 127.0.0.1:8401"
        ))
    })
}

fn load(cli: &Cli) -> Result<Config, Failure> {
    let mut config = match &cli.config {
        Some(p) => Config::load(p),
        None => Config::builtin(),
    }
    .map_err(|e| Failure::Config(e.into()))?;
    if let Some(a) = &cli.main_addr {
        config.server.main_addr = addr("main-addr", a)?;
    }
    if let Some(a) = &cli.debug_addr {
        config.server.debug_addr = addr("debug-addr", a)?;
    }
    if let Some(a) = &cli.console_addr {
        config.server.console_addr = addr("console-addr", a)?;
    }
    config.server.console |= cli.console;
    config.leak_lab = cli.leak_lab.clone();
    config.leak_lab_fixed = cli.leak_lab_fixed;
    // The file's own check ran before the flags were applied; --debug-addr needs it again.
    diagtool_probe::check_bind(
        config.server.debug_addr,
        config.server.debug_token.as_deref(),
    )
    .map_err(|_| {
        Failure::Config(anyhow::anyhow!(
            "key `server.debug_token`: required when debug_addr ({}) is not loopback; \
                 set server.debug_token in the config file, or bind 127.0.0.1",
            config.server.debug_addr
        ))
    })?;
    if !config.server.console_addr.ip().is_loopback() {
        return Err(Failure::Config(anyhow::anyhow!(
            "key `server.console_addr`: {} is not loopback, and tokio-console has no \
             authentication; bind 127.0.0.1 and reach it through an SSH tunnel (docs/console.md)",
            config.server.console_addr
        )));
    }
    shipper::leak_specs(&config).map_err(Failure::Config)?;
    Ok(config)
}

/// Installs the log output (`SHIPPER_LOG`, default `info`, to stderr) and, when asked, the
/// tokio-console layer beside it; returns the console's server to run.
fn init_tracing(config: &Config) -> Option<diagtool_probe::console::ConsoleServer> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHIPPER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    let (console, server) = match config.server.console {
        true => {
            let (layer, server) = diagtool_probe::console::layer(config.server.console_addr);
            (Some(layer), Some(server))
        }
        false => (None, None),
    };
    tracing_subscriber::registry()
        .with(console)
        .with(fmt)
        .init();
    server
}

fn run(cli: Cli) -> Result<(), Failure> {
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return Ok(());
    }
    if let Some(shell) = cli.completions {
        return generate(|out| {
            clap_complete::generate(shell, &mut Cli::command(), "shipper", out);
            Ok(())
        });
    }
    if cli.man {
        return generate(|out| clap_mangen::Man::new(Cli::command()).render(out));
    }
    let config = load(&cli)?;
    if cli.check_config {
        println!("ok");
        return Ok(());
    }
    // The probe's hooks go on the runtime before it is built: every task, from the first,
    // is counted by spawn site.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // The blocking pool writes files and resolves names: a few threads suffice, and each one that
    // ran keeps its own malloc arena.
    builder.max_blocking_threads(BLOCKING_THREADS);
    let probe = diagtool_probe::Probe::builder("shipper")
        .addr(config.server.debug_addr)
        .token(config.server.debug_token.clone())
        .global_dump(config.server.global_dump)
        .with_global_dump_env()
        .map_err(|e| Failure::Config(e.into()))?
        .install(&mut builder)
        .map_err(|e| Failure::Config(e.into()))?;
    let console = init_tracing(&config);
    let runtime = builder
        .build()
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot start the tokio runtime: {e}")))?;
    let result = runtime.block_on(async {
        let metrics = shipper::server::install_metrics().map_err(Failure::Runtime)?;
        let diagnostics = shipper::Diagnostics {
            metrics: Some(metrics),
            probe: Some(probe),
            console,
        };
        shipper::run_with(config, diagnostics, shutdown_signal())
            .await
            .map_err(Failure::Runtime)
    });
    // Positions are saved by now. Dropping the runtime would wait without limit for every worker
    // and blocking thread; a worker caught in tokio's task-dump barrier (a known tokio issue after
    // an interrupted dump) never returns, so bound the wait and let the process exit.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    result
}

/// Exit code when a component panicked: the code Rust gives an unhandled panic, so the usual
/// reading of it (a bug, with a backtrace on stderr) holds; 1 stays for failures the environment
/// caused (a sink path that cannot be written, a port taken).
const EXIT_PANIC: u8 = 101;

/// How long the runtime's threads get to finish after the shipper has stopped.
const RUNTIME_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes generated text (completions, man page) to stdout; a closed pipe is not a failure.
fn generate(
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| std::io::Write::flush(&mut out)) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::Runtime(
            anyhow::anyhow!("cannot write to standard output: {e}"),
        )),
        _ => Ok(()),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the shipper");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("shipper: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("shipper: {e:#}");
            if e.downcast_ref::<shipper::supervisor::Panicked>().is_some() {
                ExitCode::from(EXIT_PANIC)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_and_man_page_name_every_flag() {
        let mut cmd = Cli::command();
        let mut bash = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "shipper", &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(man.contains(".TH shipper 1"), "roff title header");
        for flag in [
            "config",
            "main-addr",
            "debug-addr",
            "console",
            "leak-lab",
            "check-config",
        ] {
            assert!(
                bash.contains(&format!("--{flag}")),
                "bash completion lacks --{flag}"
            );
            let roff = format!("\\-\\-{}", flag.replace('-', "\\-"));
            assert!(man.contains(&roff), "man page lacks {roff}");
        }
    }

    #[test]
    fn help_shows_examples() {
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("Examples:"), "{help}");
        assert!(help.contains("shipper --check-config --config shipper.toml"));
        assert!(Cli::try_parse_from(["shipper", "--completions", "tcsh"]).is_err());
        assert!(Cli::try_parse_from(["shipper", "--completions", "zsh"]).is_ok());
    }
}
