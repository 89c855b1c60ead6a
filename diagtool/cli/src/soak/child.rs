//! The shipper as an owned child process: started in its own process group, stopped with SIGTERM
//! then SIGKILL, and never left running.
//!
//! Layers of ownership, each covering what the one before cannot:
//! - [`ShipperChild::stop`] sends SIGTERM to the process group, waits up to a grace period for the
//!   shipper to exit (reaping it), then SIGKILLs the group and reaps it;
//! - dropping a [`ShipperChild`] (an early return, a panic unwinding, Ctrl-C ending the run)
//!   SIGKILLs the whole group, and tokio's `kill_on_drop` reaps the child in the background;
//! - on Linux the child asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`), which
//!   covers diagtool itself being killed. The kernel sends it when the *thread* that forked exits;
//!   spawning from a runtime worker thread, which lives as long as the runtime, keeps that sound.
//!
//! Its stdout and stderr go to a log file, whose tail is shown when it fails.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// A free loopback address: bind `127.0.0.1:0`, read the port the kernel chose, release it.
///
/// Another process may take the port before the shipper binds it; the caller retries then.
pub fn free_addr() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    listener.local_addr()
}

/// How a stopped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited by itself within the grace period after SIGTERM (or had exited before).
    Exited(ExitStatus),
    /// It was still running at the end of the grace period and was killed.
    Killed,
}

/// A running child process in its own process group. See the [module docs](self).
#[derive(Debug)]
pub struct ShipperChild {
    child: tokio::process::Child,
    pid: i32,
    log: PathBuf,
    reaped: bool,
}

impl ShipperChild {
    /// Starts `program` with `args` in `dir`, its output appended to `log`. A relative `program`
    /// with a directory part (`target/release/shipper`) is taken from this process's current
    /// directory, not from `dir`; a bare name is looked up in `PATH`.
    pub fn spawn(program: &Path, args: &[String], dir: &Path, log: &Path) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        // On Unix the child resolves a relative program path after changing to `dir`, where it
        // names nothing: the soak once failed that way from a fresh clone.
        let program = if program.is_relative() && program.components().count() > 1 {
            std::path::absolute(program)?
        } else {
            program.to_owned()
        };
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut cmd = std::process::Command::new(&program);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Its own group: a terminal's Ctrl-C reaches diagtool only, which then stops the
            // shipper in order; and one signal reaches whatever the shipper started.
            .process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: the closure runs in the forked child before exec and calls only prctl, which is
        // async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let child = cmd.spawn()?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| std::io::Error::other("the child has no pid"))?;
        Ok(ShipperChild {
            child,
            pid,
            log: log.to_owned(),
            reaped: false,
        })
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Its exit status if it already ended.
    pub fn try_exited(&mut self) -> std::io::Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        self.reaped |= status.is_some();
        Ok(status)
    }

    /// Waits until it ends by itself (cancel-safe).
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await?;
        self.reaped = true;
        Ok(status)
    }

    fn signal_group(&self, signal: i32) {
        // SAFETY: kill(2) with a negative pid signals our child's process group; no memory is
        // involved. ESRCH (the group is gone) is the expected outcome after a clean exit.
        unsafe {
            libc::kill(-self.pid, signal);
        }
    }

    /// SIGTERM, up to `grace` for it to exit, then SIGKILL; always reaps, and kills anything
    /// left in its process group.
    pub async fn stop(mut self, grace: Duration) -> std::io::Result<Stopped> {
        if let Some(status) = self.try_exited()? {
            self.signal_group(libc::SIGKILL);
            return Ok(Stopped::Exited(status));
        }
        self.signal_group(libc::SIGTERM);
        let outcome = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Stopped::Exited(status?),
            Err(_) => {
                self.signal_group(libc::SIGKILL);
                self.child.wait().await?;
                Stopped::Killed
            }
        };
        self.reaped = true;
        // Whatever the shipper started and left behind in its group.
        self.signal_group(libc::SIGKILL);
        Ok(outcome)
    }

    /// The last `lines` lines of its output.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for ShipperChild {
    fn drop(&mut self) {
        if !self.reaped {
            // kill_on_drop kills only the child itself; this reaches its whole group too.
            self.signal_group(libc::SIGKILL);
        }
    }
}

/// The last `lines` lines of a file (at most its last 64 KiB), or a note when unreadable.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Whether a process with this pid is running: it exists and is not a zombie (an exited process
/// its parent has not reaped yet, which holds no resources but its pid).
pub fn process_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) -> ShipperChild {
        ShipperChild::spawn(
            Path::new("/bin/sh"),
            &["-c".to_owned(), script.to_owned()],
            dir,
            &dir.join("child.log"),
        )
        .unwrap()
    }

    async fn gone_within(pid: u32, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if !process_exists(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        !process_exists(pid)
    }

    /// The pid a script wrote to `file` once it exists.
    async fn read_pid(file: &Path) -> u32 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(file)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            assert!(tokio::time::Instant::now() < deadline, "no pid in {file:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn free_addr_is_loopback_with_a_port() {
        let addr = free_addr().unwrap();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
    }

    #[tokio::test]
    async fn sigterm_stops_a_cooperative_child_and_its_output_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let child = sh(
            dir.path(),
            "trap 'echo bye; exit 0' TERM; echo hello; while true; do sleep 0.05; done",
        );
        let pid = child.pid();
        let log = dir.path().join("child.log");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !log_tail(&log, 5).contains("hello") {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stopped = child.stop(Duration::from_secs(10)).await.unwrap();
        match stopped {
            Stopped::Exited(status) => assert_eq!(status.code(), Some(0)),
            Stopped::Killed => panic!("a cooperative child was killed"),
        }
        assert!(log_tail(&log, 5).ends_with("bye"));
        assert!(!process_exists(pid));
    }

    #[tokio::test]
    async fn a_child_ignoring_sigterm_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let child = sh(
            dir.path(),
            &format!(
                "trap '' TERM; sh -c 'trap \"\" TERM; while true; do sleep 0.05; done' & echo $! > {}; wait",
                pidfile.display()
            ),
        );
        let pid = child.pid();
        let grandchild = read_pid(&pidfile).await;
        assert!(process_exists(grandchild));
        let stopped = child.stop(Duration::from_millis(300)).await.unwrap();
        assert_eq!(stopped, Stopped::Killed);
        assert!(!process_exists(pid));
        assert!(
            gone_within(grandchild, Duration::from_secs(10)).await,
            "grandchild left running"
        );
    }

    #[tokio::test]
    async fn dropping_the_handle_kills_the_child_and_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let child = sh(
            dir.path(),
            &format!("sleep 600 & echo $! > {}; wait", pidfile.display()),
        );
        let pid = child.pid();
        let grandchild = read_pid(&pidfile).await;
        drop(child);
        assert!(
            gone_within(pid, Duration::from_secs(10)).await,
            "child left running"
        );
        assert!(
            gone_within(grandchild, Duration::from_secs(10)).await,
            "grandchild left running"
        );
    }

    #[tokio::test]
    async fn a_child_that_died_is_reported_not_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = sh(
            dir.path(),
            "echo 'bind: Address already in use' >&2; exit 3",
        );
        let status = tokio::time::timeout(Duration::from_secs(10), child.exited())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(child.log_tail(3).contains("Address already in use"));
        let stopped = child.stop(Duration::from_secs(1)).await.unwrap();
        assert!(matches!(stopped, Stopped::Exited(s) if s.code() == Some(3)));
    }
}
