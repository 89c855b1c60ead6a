//! Stops a build without `--cfg tokio_unstable` at one error that says what to do.
//!
//! Without the flag tokio compiles its runtime hooks and task dumps out, and the probe would fail
//! with about thirty "cannot find" errors that do not say why (`lib.rs` also carries a
//! `compile_error!`, but rustc reports those other errors after it). A build script's error stops
//! cargo before the crate is compiled, so this is the only one a user sees.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // Cargo sets CARGO_CFG_<NAME> for every cfg of the target, those of RUSTFLAGS included.
    if std::env::var_os("CARGO_CFG_TOKIO_UNSTABLE").is_none() {
        println!(
            "cargo::error=diagtool-probe needs tokio's unstable APIs (runtime task hooks, task \
             dumps): add `rustflags = [\"--cfg\", \"tokio_unstable\"]` under `[build]` in \
             .cargo/config.toml at your workspace root, or set RUSTFLAGS=\"--cfg tokio_unstable\" \
             (a RUSTFLAGS variable replaces the config file's rustflags). See docs/embedding.md."
        );
    }
}
