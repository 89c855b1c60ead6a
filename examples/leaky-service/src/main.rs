//! `leaky-service`: a small tokio service that embeds the probe the way `docs/embedding.md` says,
//! and leaks on purpose, the way services do.
//!
//! Every `--leak-every` (default 300 ms) it "asks a backend" for a price: it spawns a task that
//! waits for the answer on a oneshot channel, and keeps the sender in a list of pending requests
//! that nobody ever answers or clears. Each ask is a plain `tokio::spawn` (no wrapper), so each
//! waiting task stays forever. A healthy job spawns alongside and ends, for contrast.
//!
//! - main port (`--addr`, default 127.0.0.1:8080): `/metrics` (Prometheus text, names prefixed
//!   `leaky_service_`) and `/` (a one-line status);
//! - debug port (`--debug-addr`, default 127.0.0.1:6060, env `DIAGTOOL_PROBE_ADDR`): the probe's
//!   `/debug/*`, with tokio's global dump allowed (`?mode=global`), which is how the leaked plain
//!   tasks get their await line in a dump.
//!
//! `diagtool watch --target http://127.0.0.1:6060 --interval 2s --duration 40s --fail-on-leak`
//! names the spawn line of the leak; `diagtool dump --mode global` names the line of its await.
//! SIGTERM or Ctrl-C stops it (exit 0); a bad flag exits 2 naming it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// What the flags set.
#[derive(Debug)]
struct Args {
    addr: SocketAddr,
    debug_addr: Option<SocketAddr>,
    leak_every: Duration,
}

const USAGE: &str =
    "usage: leaky-service [--addr ADDR] [--debug-addr ADDR] [--leak-every DURATION]";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        debug_addr: None,
        leak_every: Duration::from_millis(300),
    };
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--addr" | "--debug-addr" => {
                let text = value()?;
                let addr = text.parse().map_err(|_| {
                    format!(
                        "{flag} {text:?} is not an address: use IP:PORT, such as 127.0.0.1:8080"
                    )
                })?;
                if flag == "--addr" {
                    parsed.addr = addr;
                } else {
                    parsed.debug_addr = Some(addr);
                }
            }
            "--leak-every" => {
                let text = value()?;
                parsed.leak_every = humantime::parse_duration(&text)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        format!(
                            "--leak-every {text:?} is not a duration above zero: use 300ms, 1s, ..."
                        )
                    })?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown flag {other:?}\n{USAGE}")),
        }
    }
    Ok(parsed)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("leaky-service: {message}");
            return ExitCode::from(2);
        }
    };
    // The adoption (docs/embedding.md): a runtime with the probe's hooks and its debug server,
    // in place of #[tokio::main]. This service also allows tokio's global dump (?mode=global).
    let probe = diagtool_probe::Probe::builder("leaky-service")
        .global_dump(true)
        .with_default_env()
        .map(|builder| match args.debug_addr {
            Some(addr) => builder.addr(addr),
            None => builder,
        })
        .and_then(diagtool_probe::ProbeBuilder::start);
    let probed = match probe {
        Ok(probed) => probed,
        Err(err) => {
            eprintln!("leaky-service: {err}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "leaky-service: debug port listening addr={}",
        probed.debug_addr()
    );
    let code = probed.block_on(serve(args, probed.probe().clone()));
    if let Err(err) = probed.shutdown(Duration::from_secs(2)) {
        eprintln!("leaky-service: {err}");
    }
    code
}

async fn serve(args: Args, probe: diagtool_probe::Probe) -> ExitCode {
    let metrics = match install_metrics() {
        Ok(metrics) => metrics,
        Err(err) => {
            eprintln!("leaky-service: {err}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "leaky-service: cannot listen on --addr {}: {err}",
                args.addr
            );
            return ExitCode::from(2);
        }
    };
    let addr = listener.local_addr().unwrap_or(args.addr);
    eprintln!("leaky-service: main port listening addr={addr}");
    let pending: Pending = Arc::default();
    let ticker = tokio::spawn(ask_prices(Arc::clone(&pending), args.leak_every));
    let app = axum::Router::new()
        .route("/", get(status))
        .route("/metrics", get(render_metrics))
        .with_state(AppState {
            metrics,
            probe,
            pending,
        });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop_signal())
        .await;
    ticker.abort();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("leaky-service: serving {addr} failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Senders of the requests still waiting for an answer: the leak (nobody answers or clears them).
type Pending = Arc<Mutex<Vec<tokio::sync::oneshot::Sender<u64>>>>;

/// Asks for a price every `every`: one waiting task per ask (the leak), and a healthy job that ends.
async fn ask_prices(pending: Pending, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let (answer, reply) = tokio::sync::oneshot::channel();
        pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(answer);
        tokio::spawn(wait_for_price(reply)); // LEAK: spawn site
        tokio::spawn(async { tokio::time::sleep(Duration::from_millis(50)).await });
    }
}

/// Waits for the backend's answer, which never comes: the sender sits in `Pending` forever.
async fn wait_for_price(reply: tokio::sync::oneshot::Receiver<u64>) {
    let price = reply.await; // LEAK: await point
    std::hint::black_box(price.ok());
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    probe: diagtool_probe::Probe,
    pending: Pending,
}

async fn status(State(state): State<AppState>) -> String {
    let waiting = state
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    format!("leaky-service: {waiting} price requests waiting\n")
}

/// The per-site task series and tokio's figures, prefixed `leaky_service_`, recorded at each
/// scrape (`Probe::record_metrics`), then the exporter's text.
async fn render_metrics(State(state): State<AppState>) -> String {
    state.probe.record_metrics();
    state.metrics.run_upkeep();
    state.metrics.render()
}

fn install_metrics() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|err| format!("a metrics recorder is already installed: {err}"))?;
    Ok(handle)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn flags_parse_and_bad_values_name_the_flag() {
        let args = parse(&["--addr", "127.0.0.1:0", "--leak-every", "100ms"]).expect("valid");
        assert_eq!(args.addr.port(), 0);
        assert_eq!(args.leak_every, Duration::from_millis(100));
        assert!(
            parse(&["--leak-every", "0s"])
                .expect_err("zero")
                .contains("--leak-every")
        );
        assert!(
            parse(&["--addr", "localhost"])
                .expect_err("host")
                .contains("--addr")
        );
        assert!(
            parse(&["--bogus"])
                .expect_err("unknown")
                .contains("--bogus")
        );
    }
}
