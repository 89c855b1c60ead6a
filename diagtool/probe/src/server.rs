//! [`DebugServer`]: `/debug/*` served on an OS thread of its own (`diag-debug`), by a small
//! current-thread runtime of its own.
//!
//! Why not on the service's runtime: the debug port matters most when the service is in trouble.
//! If every worker of the service's runtime is blocked (a synchronous wait inside a task, or
//! tokio's task-dump barrier, see [`super::dump`]), a server on that runtime accepts nothing, and a
//! dump's timeout, which runs on that runtime's timer, never fires: the request hangs with the
//! service, and snapshots with it. Here the server keeps only the service's
//! [`Handle`](tokio::runtime::Handle) (through [`Probe::with_host`]): snapshots read its figures,
//! dumps trace it, and every wait (the dump timeout, the busy guard's rechecks) runs on the debug
//! runtime's timer, so a stuck service still answers 503 in time and serves its snapshots.
//!
//! Invariants:
//! - the debug runtime is built without the probe's task hooks, so its own tasks (one per
//!   connection, its blocking work) never show in the service's registry, snapshots or dumps;
//! - nothing here runs on the service's runtime: connections, timers and the blocking work of a
//!   request (symbolising a dump, sampling a CPU profile) all stay on the debug runtime;
//! - the loopback-or-token rule ([`check_bind`]) is checked on the bound address before the
//!   thread starts;
//! - a stop ends every request early (dumps, CPU profiles), gives open connections
//!   [`CONNECTION_GRACE`] and the debug runtime's blocking work a short grace, so the thread ends
//!   within about a second; [`DebugServer::stop`] (or [`DebugServer::shutdown`]) cancels and
//!   joins it within a bounded wait; dropping the server only cancels it, and the thread ends on
//!   its own.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::router::{check_bind, serve_on};
use super::{Probe, ProbeError};

/// Name of the server's thread (as `top -H` and `/proc/PID/task/*/comm` show it).
pub const THREAD_NAME: &str = "diag-debug";
/// Name of the debug runtime's blocking threads (symbolising dumps, sampling CPU profiles).
pub const BLOCKING_THREAD_NAME: &str = "diag-debug-blk";
/// Blocking threads of the debug runtime: one CPU profile (one at a time in the whole process)
/// and one dump being symbolised can run side by side; more work queues.
pub const BLOCKING_THREADS: usize = 2;
/// After a stop, how long open connections get to finish before they are closed.
pub const CONNECTION_GRACE: Duration = Duration::from_millis(500);
/// After the server stopped, how long the debug runtime's blocking work (a dump being
/// symbolised) gets before the thread ends without it.
const RUNTIME_GRACE: Duration = Duration::from_millis(500);

/// [`serve_on`], whose connections get [`CONNECTION_GRACE`] after the stop to finish: requests
/// end early on a stop, but a client that does not read its answer could hold a connection open.
async fn serve_bounded(
    probe: Probe,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> Result<(), ProbeError> {
    let serving = serve_on(probe, listener, stop.clone());
    let grace = async {
        stop.cancelled().await;
        tokio::time::sleep(CONNECTION_GRACE).await;
    };
    tokio::select! {
        served = serving => served,
        () = grace => {
            tracing::warn!(grace = ?CONNECTION_GRACE, "debug connections still open after the stop: closing them");
            Ok(())
        }
    }
}

/// `/debug/*` served off the service's runtime: an OS thread named [`THREAD_NAME`] running a
/// current-thread runtime of its own (see the module docs for why).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// let mut builder = tokio::runtime::Builder::new_multi_thread();
/// let probe = diagtool_probe::Probe::builder("demo")
///     .addr("127.0.0.1:0".parse().unwrap())
///     .install(&mut builder)
///     .unwrap();
/// let runtime = builder.worker_threads(1).enable_all().build().unwrap();
/// let server = diagtool_probe::DebugServer::bind(probe, runtime.handle().clone()).unwrap();
/// assert!(server.addr().ip().is_loopback() && server.addr().port() != 0);
/// server.stop(Duration::from_secs(5)).unwrap();
/// ```
#[derive(Debug)]
pub struct DebugServer {
    addr: SocketAddr,
    stop: CancellationToken,
    /// Cancelled when the thread ends, however it ends (for [`DebugServer::shutdown`]).
    finished: CancellationToken,
    /// Disconnects when the thread ends, however it ends (for [`DebugServer::stop`]). In a mutex
    /// only so the server is `Sync` (a task may await [`DebugServer::ended`]); never contended.
    ended: std::sync::Mutex<mpsc::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ProbeError>>>,
}

/// Owned by the server's thread: its drop, on return or unwinding, says the thread ended.
struct EndSignal {
    finished: CancellationToken,
    _ended: mpsc::SyncSender<()>,
}

impl Drop for EndSignal {
    fn drop(&mut self) {
        self.finished.cancel();
    }
}

impl DebugServer {
    /// Binds the probe's configured address ([`Probe::addr`]) and starts serving, reporting on
    /// and dumping the runtime behind `host`.
    pub fn bind(probe: Probe, host: tokio::runtime::Handle) -> Result<Self, ProbeError> {
        let addr = probe.addr();
        check_bind(addr, probe.token())?;
        let listener =
            std::net::TcpListener::bind(addr).map_err(|source| ProbeError::Io { addr, source })?;
        Self::start(probe, listener, host)
    }

    /// Starts serving on `listener` (already bound, for example on port 0), reporting on and
    /// dumping the runtime behind `host`. Refuses a non-loopback listener when the probe has no
    /// token ([`check_bind`]); fails with [`ProbeError::Start`] when the thread or its runtime
    /// cannot be created. Returns once the listener is registered: connections are accepted from
    /// then on.
    pub fn start(
        probe: Probe,
        listener: std::net::TcpListener,
        host: tokio::runtime::Handle,
    ) -> Result<Self, ProbeError> {
        let configured = probe.addr();
        let addr = listener.local_addr().map_err(|source| ProbeError::Io {
            addr: configured,
            source,
        })?;
        check_bind(addr, probe.token())?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ProbeError::Io { addr, source })?;
        // No hooks on this builder: the debug runtime's tasks stay out of the service's registry.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(BLOCKING_THREAD_NAME)
            .max_blocking_threads(BLOCKING_THREADS)
            .build()
            .map_err(|source| ProbeError::Start {
                addr,
                what: "runtime",
                source,
            })?;
        // Error paths below shut the runtime down in the background: the caller may be on an
        // async runtime, where dropping one panics (its drop waits for its blocking threads).
        let listener = {
            // Registers the socket with the debug runtime's reactor, not the caller's.
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)
        };
        let listener = match listener {
            Ok(listener) => listener,
            Err(source) => {
                runtime.shutdown_background();
                return Err(ProbeError::Io { addr, source });
            }
        };
        let probe = probe.with_host(host);
        let stop = CancellationToken::new();
        let finished = CancellationToken::new();
        let (ended_tx, ended) = mpsc::sync_channel(0);
        let signal = EndSignal {
            finished: finished.clone(),
            _ended: ended_tx,
        };
        let serving = stop.clone();
        // The runtime is handed over once the thread exists, so a failed spawn leaves it here.
        let (hand_over, handed) =
            mpsc::sync_channel::<(tokio::runtime::Runtime, tokio::net::TcpListener)>(1);
        let spawned = std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || {
                let _signal = signal;
                let Ok((runtime, listener)) = handed.recv() else {
                    return Ok(());
                };
                let served = runtime.block_on(serve_bounded(probe, listener, serving));
                // Requests have ended; a dump still being symbolised gets a short grace.
                runtime.shutdown_timeout(RUNTIME_GRACE);
                if let Err(err) = &served {
                    tracing::error!(error = %err, "the debug server stopped on an error");
                }
                served
            });
        let thread = match spawned {
            Ok(thread) => thread,
            Err(source) => {
                runtime.shutdown_background();
                return Err(ProbeError::Start {
                    addr,
                    what: "thread",
                    source,
                });
            }
        };
        if let Err(mpsc::SendError((runtime, _))) = hand_over.send((runtime, listener)) {
            // The thread can only be gone if it panicked before receiving: report it as such.
            runtime.shutdown_background();
            return Err(ProbeError::Panicked { addr });
        }
        Ok(DebugServer {
            addr,
            stop,
            finished,
            ended: std::sync::Mutex::new(ended),
            thread: Some(thread),
        })
    }

    /// The address served (with the real port when bound on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the server's thread has ended (it ends only when stopped, or on an error).
    pub fn is_finished(&self) -> bool {
        self.finished.is_cancelled()
    }

    /// Resolves when the server's thread has ended: after a stop, or by itself on an error (which
    /// [`DebugServer::shutdown`] then returns). For a supervisor watching it.
    pub async fn ended(&self) {
        self.finished.cancelled().await;
    }

    /// Stops serving (dumps and CPU profiles in flight end early, open connections get
    /// [`CONNECTION_GRACE`]) and joins the thread, waiting at most `wait`. Blocks the calling
    /// thread: from async code use [`DebugServer::shutdown`]. Past `wait` the thread is left to
    /// end on its own and this returns [`ProbeError::StopTimeout`].
    pub fn stop(mut self, wait: Duration) -> Result<(), ProbeError> {
        self.stop.cancel();
        let ended = self
            .ended
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The sender never sends: the receive returns when the thread drops it, at its end.
        if let Err(mpsc::RecvTimeoutError::Timeout) = ended.recv_timeout(wait) {
            return Err(self.outlived(wait));
        }
        self.join()
    }

    /// [`DebugServer::stop`] for async code: waits for the thread to end without blocking the
    /// caller's runtime, at most `wait`, then joins it.
    pub async fn shutdown(mut self, wait: Duration) -> Result<(), ProbeError> {
        self.stop.cancel();
        if tokio::time::timeout(wait, self.finished.cancelled())
            .await
            .is_err()
        {
            return Err(self.outlived(wait));
        }
        self.join()
    }

    fn outlived(&self, waited: Duration) -> ProbeError {
        ProbeError::StopTimeout {
            addr: self.addr,
            waited,
        }
    }

    /// Joins a thread that has ended (or is returning): at most a few instructions of wait.
    fn join(&mut self) -> Result<(), ProbeError> {
        match self.thread.take().map(std::thread::JoinHandle::join) {
            None => Ok(()),
            Some(Ok(served)) => served,
            Some(Err(_)) => Err(ProbeError::Panicked { addr: self.addr }),
        }
    }
}

impl Drop for DebugServer {
    /// Without [`DebugServer::stop`]: cancels the server, whose thread ends on its own (not joined).
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
    }

    fn host(workers: usize) -> (tokio::runtime::Runtime, Probe) {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        let probe = Probe::builder("server-test")
            .addr("127.0.0.1:0".parse().expect("addr"))
            .install(&mut builder)
            .expect("probe");
        let runtime = builder
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("runtime");
        (runtime, probe)
    }

    #[test]
    fn serves_from_its_own_thread_and_stops_joined() {
        let (runtime, probe) = host(1);
        let registry = probe.registry().clone();
        let server = DebugServer::bind(probe, runtime.handle().clone()).expect("start");
        let addr = server.addr();
        let threads = |name: &str| {
            std::fs::read_dir("/proc/self/task")
                .expect("tasks")
                .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("comm")).ok())
                .filter(|comm| comm.trim_end() == name)
                .count()
        };
        // The new thread names itself as it starts: wait for it, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while threads(THREAD_NAME) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no {THREAD_NAME} thread"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let response = get(addr, "/debug/tasks");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = response.split("\r\n\r\n").nth(1).expect("body");
        let snap = crate::model::Snapshot::from_json(body).expect("snapshot");
        // The host's figures (one worker), not the debug runtime's; none of its tasks counted.
        assert_eq!(snap.runtime.workers, 1);
        assert_eq!(snap.tasks.live, 0, "{snap:?}");
        let response = get(addr, "/debug/tasks/dump?timeout_ms=5000");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert_eq!(registry.totals().spawned, 0);

        let listener = listening_socket(addr.port()).expect("the listening socket");
        assert!(socket_open(listener), "the check sees the open socket");
        server.stop(Duration::from_secs(5)).expect("clean stop");
        assert!(!socket_open(listener), "the listening socket is still open");
    }

    /// The inode of the socket listening on `port` (from `/proc/net/tcp`). Tests compare inodes,
    /// not ports: once closed, a port can be taken at once by another test running in parallel.
    fn listening_socket(port: u16) -> Option<u64> {
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            let listening = fields.get(3)? == &"0A";
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
    }

    /// Whether this process still holds the socket with that inode.
    fn socket_open(inode: u64) -> bool {
        let wanted = format!("socket:[{inode}]");
        std::fs::read_dir("/proc/self/fd")
            .expect("fds")
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .any(|target| target.to_string_lossy() == wanted)
    }

    #[test]
    fn a_non_loopback_listener_without_token_is_refused_before_any_thread() {
        let (runtime, probe) = host(1);
        let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
        let err =
            DebugServer::start(probe, listener, runtime.handle().clone()).expect_err("refused");
        assert!(matches!(err, ProbeError::InsecureBind(_)), "{err}");
    }

    #[test]
    fn a_taken_port_is_an_error_naming_it() {
        let (runtime, _) = host(1);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let probe = Probe::builder("server-test")
            .addr(addr)
            .with_registry(super::super::TaskRegistry::new())
            .expect("probe");
        let err = DebugServer::bind(probe, runtime.handle().clone()).expect_err("taken");
        assert!(matches!(err, ProbeError::Io { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn a_client_holding_its_connection_cannot_hold_up_the_stop() {
        let (runtime, probe) = host(1);
        let server = DebugServer::bind(probe, runtime.handle().clone()).expect("start");
        // Half a request, never finished: the connection stays open and busy.
        let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
        stream
            .write_all(b"GET /debug/tasks HTTP/1.1\r\nHo")
            .expect("write");
        let started = std::time::Instant::now();
        server.stop(Duration::from_secs(10)).expect("clean stop");
        let took = started.elapsed();
        assert!(
            took < CONNECTION_GRACE + RUNTIME_GRACE + Duration::from_secs(3),
            "stop took {took:?}"
        );
        drop(stream);
    }

    #[test]
    fn async_shutdown_joins_from_the_host_runtime() {
        let (runtime, probe) = host(1);
        let server = DebugServer::bind(probe, runtime.handle().clone()).expect("start");
        let listener = listening_socket(server.addr().port()).expect("the listening socket");
        runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                server.shutdown(Duration::from_secs(5)),
            )
            .await
            .expect("in time")
            .expect("clean stop");
        });
        assert!(!socket_open(listener), "the listening socket is still open");
    }
}
