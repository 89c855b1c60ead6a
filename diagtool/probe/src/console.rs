//! tokio-console, opt-in: a `console-subscriber` layer the host composes with its own tracing
//! layers, and the gRPC server it feeds, bound to loopback by default.
//!
//! It is off by default because it is expensive (it records every task's spans and polls; about
//! 35x the registry's cost on short tasks). The layer is only half of it: the host must also run
//! the returned [`ConsoleServer`], and build its runtime with `--cfg tokio_unstable` and tokio's
//! `tracing` feature, which this workspace does.
//!
//! # Examples
//! ```no_run
//! use tracing_subscriber::prelude::*;
//!
//! # #[tokio::main]
//! # async fn main() {
//! let (layer, server) = diagtool_probe::console::layer(diagtool_probe::console::DEFAULT_ADDR);
//! tracing_subscriber::registry()
//!     .with(layer)
//!     .with(tracing_subscriber::fmt::layer().with_filter(tracing_subscriber::EnvFilter::new("info")))
//!     .init();
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let task = tokio::spawn(server.run(cancel.clone()));
//! // ... run the service; at shutdown:
//! cancel.cancel();
//! task.await.unwrap().unwrap();
//! # }
//! ```

use std::net::SocketAddr;

use console_subscriber::{ConsoleLayer, Server};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::registry::LookupSpan;

/// The console's default address: loopback, tokio-console's usual port.
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6669);

/// The console's gRPC server; run it with [`ConsoleServer::run`].
pub struct ConsoleServer {
    server: Server,
    addr: SocketAddr,
}

impl std::fmt::Debug for ConsoleServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The console server failed.
#[derive(Debug, thiserror::Error)]
#[error("the tokio-console server on {addr} failed: {message}; is the port free?")]
pub struct ConsoleError {
    addr: SocketAddr,
    message: String,
}

impl ConsoleServer {
    /// The address the server binds.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves tokio-console clients until `cancel` fires (then returns `Ok`) or the server fails.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), ConsoleError> {
        let addr = self.addr;
        tokio::select! {
            () = cancel.cancelled() => Ok(()),
            served = self.server.serve() => served.map_err(|err| ConsoleError {
                addr,
                message: err.to_string(),
            }),
        }
    }
}

/// The console layer, filtered to the runtime's own spans and events (so it composes with any
/// other layer without seeing the host's logs), and the server to run, on `addr`.
pub fn layer<S>(addr: SocketAddr) -> (impl Layer<S> + Send + Sync + 'static, ConsoleServer)
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let (layer, server) = ConsoleLayer::builder().server_addr(addr).build();
    // Only tokio's instrumentation: the same filter console-subscriber applies in its `spawn()`.
    let filter = FilterFn::new(|meta: &tracing::Metadata<'_>| {
        if meta.is_event() {
            meta.target().starts_with("runtime") || meta.target().starts_with("tokio")
        } else {
            meta.name().starts_with("runtime.") || meta.target().starts_with("tokio")
        }
    });
    (layer.with_filter(filter), ConsoleServer { server, addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn server_serves_on_loopback_and_stops_on_cancel() {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (_layer, server) = layer::<tracing_subscriber::Registry>(addr);
        assert_eq!(server.addr(), addr);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.run(cancel.clone()));
        // Wait (bounded) until the port accepts connections.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "console never listened"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        cancel.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .expect("stops in time")
            .expect("join")
            .expect("clean stop");
    }
}
