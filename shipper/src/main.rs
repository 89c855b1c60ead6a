//! `shipper`: see `shipper --help`. Parses flags, loads the config, runs [`shipper::run`] and maps
//! failures to exit codes: 2 for a bad config or usage, 1 for a runtime failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use shipper::config::{Config, DEFAULT_CONFIG};

/// Tails log files and Docker json-file logs and pushes them to Grafana Loki, losing no line.
#[derive(Debug, Parser)]
#[command(name = "shipper", version)]
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
    /// Validate the config, print "ok" and exit 0 (exit 2 with the offending key otherwise).
    #[arg(long)]
    check_config: bool,
    /// Print the built-in default config (valid TOML) and exit.
    #[arg(long)]
    print_default_config: bool,
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
    // The file's own check ran before the flags were applied; --debug-addr needs it again.
    diagtool::probe::check_bind(
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
    shipper::leak_specs(&config).map_err(Failure::Config)?;
    Ok(config)
}

/// Installs the log output (`SHIPPER_LOG`, default `info`, to stderr) and, when asked, the
/// tokio-console layer beside it; returns the console's server to run.
fn init_tracing(config: &Config) -> Option<diagtool::probe::console::ConsoleServer> {
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
            let (layer, server) = diagtool::probe::console::layer(config.server.console_addr);
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
    let config = load(&cli)?;
    if cli.check_config {
        println!("ok");
        return Ok(());
    }
    // The probe's hooks go on the runtime before it is built: every task, from the first,
    // is counted by spawn site.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    let probe = diagtool::probe::Probe::builder("shipper")
        .addr(config.server.debug_addr)
        .token(config.server.debug_token.clone())
        .install(&mut builder)
        .map_err(|e| Failure::Config(e.into()))?;
    let console = init_tracing(&config);
    let runtime = builder
        .build()
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot start the tokio runtime: {e}")))?;
    runtime.block_on(async {
        let metrics = shipper::server::install_metrics().map_err(Failure::Runtime)?;
        let diagnostics = shipper::Diagnostics {
            metrics: Some(metrics),
            probe: Some(probe),
            console,
        };
        shipper::run_with(config, diagnostics, shutdown_signal())
            .await
            .map_err(Failure::Runtime)
    })
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
            ExitCode::from(1)
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
}
