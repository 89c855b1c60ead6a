//! `[server]`: listening addresses and the debug port's options.

use std::net::SocketAddr;

use serde::Deserialize;

use super::ConfigError;
use super::resolve::Resolver;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerFile {
    main_addr: Option<String>,
    debug_addr: Option<String>,
    debug_token: Option<String>,
    console: Option<bool>,
    console_addr: Option<String>,
    global_dump: Option<bool>,
}

/// The servers' settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `/health`, `/ready`, `/metrics`.
    pub main_addr: SocketAddr,
    /// `/debug/*` (served by the probe work).
    pub debug_addr: SocketAddr,
    /// Bearer token for the debug port.
    pub debug_token: Option<String>,
    /// Whether tokio-console is enabled.
    pub console: bool,
    /// Where tokio-console listens.
    pub console_addr: SocketAddr,
    /// Allow tokio's stop-the-world task dump (`?mode=global`); off: it can wedge the runtime.
    pub global_dump: bool,
}

pub(super) fn resolve(
    r: &Resolver<'_>,
    file: Option<ServerFile>,
) -> Result<ServerConfig, ConfigError> {
    let server = file.unwrap_or_default();
    let server = ServerConfig {
        main_addr: r.addr(
            "server.main_addr",
            server.main_addr.as_deref(),
            "127.0.0.1:8401",
        )?,
        debug_addr: r.addr(
            "server.debug_addr",
            server.debug_addr.as_deref(),
            "127.0.0.1:6060",
        )?,
        debug_token: server.debug_token.filter(|t| !t.is_empty()),
        console: server.console.unwrap_or(false),
        console_addr: r.addr(
            "server.console_addr",
            server.console_addr.as_deref(),
            "127.0.0.1:6669",
        )?,
        global_dump: server.global_dump.unwrap_or(false),
    };
    if !server.console_addr.ip().is_loopback() {
        // tokio-console's protocol has no authentication, so no token can make this safe.
        return Err(r.invalid(
            "server.console_addr",
            format!(
                "{} is not loopback, and tokio-console has no authentication; bind 127.0.0.1 \
                 and reach it through an SSH tunnel (docs/console.md)",
                server.console_addr
            ),
        ));
    }
    if !server.debug_addr.ip().is_loopback() && server.debug_token.is_none() {
        return Err(r.invalid(
            "server.debug_token",
            format!(
                "required when debug_addr ({}) is not loopback",
                server.debug_addr
            ),
        ));
    }
    Ok(server)
}
