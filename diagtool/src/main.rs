//! `diagtool`: the operator's CLI. See `diagtool --help`.

fn main() -> std::process::ExitCode {
    eprintln!("diagtool: no commands yet");
    std::process::ExitCode::from(2)
}
