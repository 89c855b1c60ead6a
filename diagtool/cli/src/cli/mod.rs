//! The operator's CLI: flags, the commands, and how their output is rendered.
//!
//! `main.rs` only parses [`Cli`], calls [`run`] and maps its error to an exit code with
//! [`exit_code`] (0 ok, 1 a problem found, 2 usage or input error, 3 target unreachable). Each
//! command lives in its own file; HTTP goes through [`client`] (timeouts on every request, the bearer
//! token when given); analysis is [`crate::analysis`]; tables, text and charts are rendered here and
//! never leak into the model.

mod chart;
pub(crate) mod client;
mod commands;
mod demo;
mod dump;
mod fleet;
mod fleet_report;
mod fmt;
mod generate;
mod heap;
mod heap_fleet;
mod heap_report;
mod heap_watch;
mod pacing;
mod prom;
mod report;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use client::Client;
pub use fmt::Dur;

/// The default target: the probe's debug port on loopback.
pub const DEFAULT_TARGET: &str = "http://127.0.0.1:6060";

/// Leak diagnostics and profiling for tokio services: watch task growth per spawn site, dump where
/// tasks are parked, profile the CPU, and write an incident report.
#[derive(Debug, Parser)]
#[command(name = "diagtool", version, max_term_width = 100, after_help = EXAMPLES)]
pub struct Cli {
    /// Base URL of the target's debug port (http only). `watch` takes it more than once to follow
    /// a fleet; every other command takes one.
    #[arg(long, global = true, env = "DIAGTOOL_TARGET", hide_env_values = true, default_value = DEFAULT_TARGET, action = clap::ArgAction::Append)]
    pub target: Vec<String>,
    /// Bearer token for a target whose debug port requires one.
    #[arg(long, global = true, env = "DIAGTOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  diagtool watch --interval 10s --duration 5m     judge task growth per spawn site
  diagtool dump --format text | less              where every task is parked, grouped
  diagtool watch --heap --duration 5m             judge heap growth per allocation site
  diagtool heap --top 20 -o heap.pb.gz            in-use memory per allocation site, now
  diagtool snapshot -o before.json                keep a snapshot to diff later
  diagtool --target http://10.0.0.5:6060 --token \"$TOKEN\" snapshot --format text
Exit codes: 0 ok, 1 a problem found (leak, failed soak), 2 usage or input error, 3 target unreachable.";

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch one snapshot of the target's live tasks per spawn site.
    #[command(
        after_help = "Examples:\n  diagtool snapshot --format text\n  diagtool snapshot -o before.json"
    )]
    Snapshot {
        /// Write to FILE instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = SnapshotFormat::Json)]
        format: SnapshotFormat,
    },
    /// Sample the target every interval and judge the task growth of each spawn site.
    #[command(
        after_help = "Examples:\n  diagtool watch --interval 10s --duration 5m\n  diagtool watch --interval 5s --duration 2m --json --fail-on-leak > watch.json\n  diagtool watch --record incident/ --duration 10m && diagtool report incident/\n  diagtool watch --target http://10.0.0.5:6060 --target http://10.0.0.6:6060 --duration 2m\n  diagtool watch --targets-file nodes.txt --interval 15s --duration 5m --json > fleet.json\n  diagtool watch --prometheus http://prom:9090 --selector '{job=\"shipper\"}' --duration 0s\n  diagtool watch --heap --interval 10s --duration 5m --fail-on-leak --verbose"
    )]
    Watch(WatchArgs),
    /// Compare two snapshot files site by site (like `go tool pprof -diff_base`).
    #[command(
        after_help = "Examples:\n  diagtool snapshot -o before.json; sleep 300; diagtool snapshot -o after.json\n  diagtool diff before.json after.json\n  diagtool diff before.json after.json --json"
    )]
    Diff {
        /// The earlier snapshot.
        #[arg(value_name = "BASE.json")]
        base: PathBuf,
        /// The later snapshot.
        #[arg(value_name = "NEW.json")]
        new: PathBuf,
        /// Print the diagtool.diff/v1 document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a task dump: where every task is parked, grouped by spawn site and trace.
    #[command(
        after_help = "Examples:\n  diagtool dump --format text | less\n  diagtool dump -o dump.json && diagtool flamegraph dump.json -o tasks.svg\n  diagtool dump --format folded --timeout 30s > tasks.folded\n  diagtool dump --mode global --format text    # the target must opt in; stops its runtime"
    )]
    Dump {
        /// Write to FILE instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Output format (folded stacks feed `diagtool flamegraph` or inferno).
        #[arg(long, value_enum, default_value_t = DumpFormat::Json)]
        format: DumpFormat,
        /// How long the target may take to trace its tasks.
        #[arg(long, value_name = "DUR", default_value = "10s")]
        timeout: Dur,
        /// self: tasks trace themselves, safe in production (tasks spawned without the probe's
        /// wrapper are listed untraced); global: tokio's stop-the-world dump, which traces every
        /// task but can wedge the runtime; the target must opt in (DIAGTOOL_PROBE_GLOBAL_DUMP=1).
        #[arg(long, value_enum, default_value_t = DumpModeArg::SelfTraced)]
        mode: DumpModeArg,
    },
    /// Fetch one heap profile: in-use bytes and objects per allocation site (the innermost frame
    /// in the service's own code), largest first.
    #[command(
        after_help = "Examples:\n  diagtool heap --top 20\n  diagtool heap -o heap.pb.gz --flamegraph heap.svg && go tool pprof -top heap.pb.gz\n  diagtool heap --verbose --top 3          # with each site's stack"
    )]
    Heap {
        /// Also save the profile as served (gzipped pprof, readable by `go tool pprof`).
        #[arg(short, long, value_name = "FILE.pb.gz")]
        output: Option<PathBuf>,
        /// Also draw the in-use bytes as an SVG flamegraph.
        #[arg(long, value_name = "FILE.svg")]
        flamegraph: Option<PathBuf>,
        /// Rows in the table.
        #[arg(long, value_name = "N", default_value_t = 20)]
        top: usize,
        /// Print each shown site's stack (outermost first) under the table.
        #[arg(long)]
        verbose: bool,
    },
    /// Record a CPU profile of the target (gzipped pprof protobuf, readable by `go tool pprof`).
    #[command(
        after_help = "Examples:\n  diagtool profile --seconds 10 -o cpu.pb.gz --flamegraph cpu.svg\n  go tool pprof -top cpu.pb.gz"
    )]
    Profile {
        /// Seconds to profile for (the target allows at most 60).
        #[arg(long, value_name = "N", default_value_t = 30)]
        seconds: u64,
        /// Where to save the profile.
        #[arg(
            short,
            long,
            value_name = "FILE.pb.gz",
            default_value = "profile.pb.gz"
        )]
        output: PathBuf,
        /// Also draw the profile as an SVG flamegraph.
        #[arg(long, value_name = "FILE.svg")]
        flamegraph: Option<PathBuf>,
    },
    /// Draw an SVG flamegraph of where tasks are parked, from a dump JSON or folded stacks.
    #[command(
        after_help = "Examples:\n  diagtool flamegraph dump.json -o tasks.svg\n  diagtool flamegraph tasks.folded -o tasks.svg"
    )]
    Flamegraph {
        /// A diagtool.dump/v1 file, or folded stacks (`frame;frame count` per line).
        #[arg(value_name = "INPUT")]
        input: PathBuf,
        /// The SVG to write.
        #[arg(short, long, value_name = "OUT.svg")]
        output: PathBuf,
    },
    /// Write a Markdown incident report (timeline, growth table, SVG chart, dump excerpts) from a
    /// `watch --record DIR` recording.
    #[command(
        after_help = "Examples:\n  diagtool watch --record incident/ --duration 10m\n  diagtool report incident/                 # writes incident/report.md\n  diagtool report incident/ -o leak-report.md"
    )]
    Report {
        /// The recording directory.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// The Markdown file to write [default: DIR/report.md]; the chart goes beside it.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Run the shipper under a soak profile on loopback and judge delivery, task growth, RSS and
    /// open fds (exit 0 pass, 1 fail, 3 the shipper did not start).
    #[command(
        after_help = "Examples:\n  diagtool soak --profile profiles/steady.toml --duration 1m\n  diagtool soak --profile profiles/leak-poll-spawn.toml --junit soak.xml   # exits 1, names the site"
    )]
    Soak(SoakArgs),
    /// Start the shipper beside diagtool with the leak lab's classic leak, watch it, name the
    /// leaking spawn site, show where its tasks wait, and stop everything (about a minute).
    #[command(
        after_help = "Examples:\n  diagtool demo\n  diagtool demo --interval 10s --duration 2m --shipper target/release/shipper"
    )]
    Demo(DemoArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  diagtool completions bash > /etc/bash_completion.d/diagtool\n  diagtool completions zsh > \"${fpath[1]}/_diagtool\"\n  diagtool completions fish > ~/.config/fish/completions/diagtool.fish"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a directory.
    #[command(
        after_help = "Examples:\n  diagtool man | man -l -\n  diagtool man --dir /usr/local/share/man/man1"
    )]
    Man {
        /// Write diagtool.1 and diagtool-COMMAND.1 into DIR instead of printing diagtool.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `diagtool demo` flags.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Time between samples; the leak lab leaks 16 tasks each interval.
    #[arg(long, value_name = "DUR", default_value = "5s")]
    pub interval: Dur,
    /// How long to watch.
    #[arg(long, value_name = "DUR", default_value = "60s")]
    pub duration: Dur,
    /// The shipper binary [default: `shipper` beside diagtool].
    #[arg(long, value_name = "PATH")]
    pub shipper: Option<PathBuf>,
}

/// `diagtool soak` flags.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// The profile (TOML), such as profiles/steady.toml.
    #[arg(long, value_name = "FILE")]
    pub profile: PathBuf,
    /// Run this long; the profile's times scale with it [default: the profile's duration].
    #[arg(long, value_name = "DUR")]
    pub duration: Option<Dur>,
    /// Write a JUnit XML report (one test case per check) to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// The shipper binary [default: `shipper` beside diagtool].
    #[arg(long, value_name = "PATH")]
    pub shipper: Option<PathBuf>,
}

/// `diagtool watch` flags.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Time between samples.
    #[arg(long, value_name = "DUR", default_value = "30s")]
    pub interval: Dur,
    /// Stop after DUR [default: until Ctrl-C]; `0s` takes one sample (with --prometheus: judges
    /// the history and exits).
    #[arg(long, value_name = "DUR", value_parser = Dur::or_zero)]
    pub duration: Option<Dur>,
    /// Growth in tasks per minute below which a site is stable (with --heap: bytes per minute,
    /// never below the noise floor of one sampling period, 512 KiB by default, per minute).
    #[arg(long, value_name = "PER_MIN", default_value_t = crate::analysis::DEFAULT_THRESHOLD_PER_MIN)]
    pub threshold: f64,
    /// Judge the growth of in-use heap memory per allocation site (`/debug/pprof/heap`) instead
    /// of live tasks per spawn site (not with --prometheus).
    #[arg(long, conflicts_with = "prometheus")]
    pub heap: bool,
    /// With --heap: print each shown site's stack under the table.
    #[arg(long, requires = "heap")]
    pub verbose: bool,
    /// Keep every snapshot, the final summary and (on a leak) a task dump in DIR (a fleet: a
    /// folder per instance and the fleet's summary.json; --heap: every heap sample and the last
    /// profile).
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// Print the diagtool.watch/v1 document at the end (tables then go to standard error).
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when a site leaks.
    #[arg(long)]
    pub fail_on_leak: bool,
    /// Rows in the growth table.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Follow every target listed in FILE (one URL a line; blank lines and `#` comments skipped),
    /// with the `--target`s given.
    #[arg(long, value_name = "FILE", conflicts_with = "prometheus")]
    pub targets_file: Option<PathBuf>,
    /// Judge the fleet from a Prometheus-compatible query API (Prometheus, Thanos, Mimir,
    /// VictoriaMetrics) instead of debug ports: `query_range` over `--lookback`.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// The series selector ANDed to the metric, such as '{job="shipper"}' [default: every series].
    #[arg(long, value_name = "SELECTOR", requires = "prometheus")]
    pub selector: Option<String>,
    /// History judged at once.
    #[arg(
        long,
        value_name = "DUR",
        default_value = "30m",
        requires = "prometheus"
    )]
    pub lookback: Dur,
    /// The prefix of the service's metrics (`<prefix>_tasks_live{site}`).
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "shipper",
        requires = "prometheus"
    )]
    pub metric_prefix: String,
    /// Resolution of `query_range` [default: lookback / 240, at least 1s].
    #[arg(long, value_name = "DUR", requires = "prometheus")]
    pub step: Option<Dur>,
    /// Basic auth for the query API; without it, `--token` is sent as a bearer token.
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "DIAGTOOL_PROMETHEUS_BASIC_AUTH",
        hide_env_values = true,
        requires = "prometheus"
    )]
    pub basic_auth: Option<String>,
}

impl WatchArgs {
    /// The defaults of a single-target watch, as the flags give them.
    pub(crate) fn single() -> Self {
        WatchArgs {
            interval: Dur(std::time::Duration::from_secs(30)),
            duration: None,
            threshold: crate::analysis::DEFAULT_THRESHOLD_PER_MIN,
            heap: false,
            verbose: false,
            record: None,
            json: false,
            fail_on_leak: false,
            top: 10,
            targets_file: None,
            prometheus: None,
            selector: None,
            lookback: Dur(std::time::Duration::from_secs(1800)),
            metric_prefix: "shipper".to_owned(),
            step: None,
            basic_auth: None,
        }
    }

    /// True when this watch follows more than the one `--target`.
    fn is_fleet(&self, targets: &[String]) -> bool {
        targets.len() > 1 || self.targets_file.is_some() || self.prometheus.is_some()
    }
}

/// `snapshot --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnapshotFormat {
    /// The diagtool.snapshot/v1 document as the target served it.
    Json,
    /// Readable text: process figures and a table of sites.
    Text,
}

/// `dump --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DumpModeArg {
    /// Tasks trace themselves; never stops the target's runtime.
    #[value(name = "self")]
    SelfTraced,
    /// tokio's global dump: stops every worker at a barrier (opt-in on the target).
    Global,
}

impl DumpModeArg {
    /// The `?mode=` value.
    pub fn query(self) -> &'static str {
        match self {
            DumpModeArg::SelfTraced => "self",
            DumpModeArg::Global => "global",
        }
    }
}

/// `dump --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DumpFormat {
    /// The diagtool.dump/v1 document as the target served it.
    Json,
    /// Groups of identical traces, largest first.
    Text,
    /// Folded stacks, one line per group: `site;frame;...;leaf count`.
    Folded,
}

/// An error the CLI classifies for its exit code; anything else is a usage or input error (2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The target did not answer (refused, timed out, or failing with 5xx): exit 3.
    #[error("target {target} is unreachable: {reason}")]
    Unreachable {
        /// The target URL.
        target: String,
        /// What went wrong.
        reason: String,
    },
    /// The target answered, but cannot serve what was asked (a heap profile from a service built
    /// without heap profiling: 501): exit 3, like a target that is down, since asking again
    /// cannot help.
    #[error("target {target} cannot serve {what}: {reason}")]
    Unsupported {
        /// The target URL.
        target: String,
        /// What was asked for, such as `heap profiles`.
        what: &'static str,
        /// The target's answer, which says how to enable it.
        reason: String,
    },
    /// The input (a flag, a file, the target's answer) is not usable: exit 2.
    #[error("{0}")]
    Input(String),
}

/// Runs the parsed command. `Ok` carries 0, or 1 when the check found a problem.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Diff { base, new, json } => commands::diff(&base, &new, json),
        Command::Flamegraph { input, output } => dump::flamegraph(&input, &output),
        Command::Report { dir, output } => report::report(&dir, output.as_deref()),
        Command::Completions { shell } => {
            generate::completions(shell, &mut std::io::stdout().lock()).map(|()| ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            generate::man(dir.as_deref(), &mut std::io::stdout().lock()).map(|()| ExitCode::SUCCESS)
        }
        Command::Soak(args) => crate::soak::run(crate::soak::SoakArgs {
            profile: args.profile,
            duration: args.duration.map(|d| d.0),
            junit: args.junit,
            shipper: args.shipper,
        }),
        Command::Demo(args) => demo::demo(&demo::DemoArgs {
            interval: args.interval.0,
            duration: args.duration.0,
            shipper: args.shipper,
        }),
        Command::Watch(args) if args.heap && args.is_fleet(&cli.target) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
            runtime.block_on(heap_fleet::watch(&cli.target, cli.token, &args))
        }
        Command::Watch(args) if args.is_fleet(&cli.target) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
            if args.prometheus.is_some() {
                runtime.block_on(prom::watch(cli.token, &args))
            } else {
                runtime.block_on(fleet::watch(&cli.target, cli.token, &args))
            }
        }
        command => {
            let [target] = cli.target.as_slice() else {
                return Err(CliError::Input(format!(
                    "{} --target flags given: only watch follows several; give one",
                    cli.target.len()
                ))
                .into());
            };
            let client = Client::new(target, cli.token)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
            runtime.block_on(remote(client, command))
        }
    }
}

async fn remote(client: Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Snapshot { output, format } => {
            commands::snapshot(&client, output.as_deref(), format).await
        }
        Command::Watch(args) if args.heap => heap_watch::watch(&client, &args).await,
        Command::Watch(args) => watch::watch(&client, &args).await,
        Command::Heap {
            output,
            flamegraph,
            top,
            verbose,
        } => {
            heap::heap(
                &client,
                output.as_deref(),
                flamegraph.as_deref(),
                top,
                verbose,
            )
            .await
        }
        Command::Dump {
            output,
            format,
            timeout,
            mode,
        } => dump::dump(&client, output.as_deref(), format, timeout.0, mode).await,
        Command::Profile {
            seconds,
            output,
            flamegraph,
        } => commands::profile(&client, seconds, &output, flamegraph.as_deref()).await,
        // Local commands are dispatched by `run` before a client exists; reaching here is a bug
        // worth an error, not a panic.
        Command::Diff { .. }
        | Command::Flamegraph { .. }
        | Command::Report { .. }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Soak(_)
        | Command::Demo(_) => Err(anyhow::anyhow!(
            "internal error: a local command was sent to the target"
        )),
    }
}

/// The exit code for an error returned by [`run`]: 3 when the target was unreachable or cannot
/// serve what was asked, else 2.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let unreachable = err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<CliError>(),
            Some(CliError::Unreachable { .. } | CliError::Unsupported { .. })
        )
    });
    if unreachable { 3 } else { 2 }
}

/// True when the error is a closed pipe on our output (`diagtool dump | head`): not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests;
