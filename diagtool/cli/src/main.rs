//! `diagtool`: the operator's CLI. See `diagtool --help`.
//!
//! Thin on purpose: parse the flags, run, map the error to the contract's exit code (2 usage or
//! input, 3 target unreachable) and print it as one line. A closed pipe (`diagtool dump | head`) is
//! not a failure.

use std::process::ExitCode;

use clap::Parser;
use diagtool::cli::{self, Cli};

fn main() -> ExitCode {
    let args = Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) if cli::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("diagtool: {err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
