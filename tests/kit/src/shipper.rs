//! The shipper's end-to-end harness: a temp dir with `logs/` and `data/`, the real `shipper`
//! binary started with a generated config on an ephemeral loopback port, bounded waits, and
//! readers for what it delivered. Every process a test starts is killed when its [`Shipper`] is
//! dropped. The shipper's own tests and the cross-crate tests in `tests/` share it.
//!
//! Test code: it panics on any failure, with a message naming what it waited for.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc, missing_docs)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A binary of this workspace, found beside the running test: cargo puts test executables in
/// `target/<profile>/deps/` and the workspace's binaries in `target/<profile>/`. `cargo test
/// --workspace` builds them before any test runs; a lone `cargo test -p e2e` does not, so a
/// missing one says how to build it.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test runs from target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p {name}), or run cargo test --workspace",
        bin.display()
    );
    bin
}

/// The debug build of the shipper the tests run.
pub fn shipper_bin() -> PathBuf {
    workspace_bin("shipper")
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A test's directory and config.
#[derive(Debug)]
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Extra TOML appended to the `[[sources]]` table of the plain file source.
    pub source_extra: String,
    /// Extra top-level TOML (before any table).
    pub top_extra: String,
    /// The `[sink]` table's extra keys.
    pub sink_extra: String,
    /// A whole `[sink]` table replacing the file sink.
    pub sink_table: Option<String>,
    /// Additional tables (e.g. a docker source).
    pub tables: String,
    /// Extra keys of the `[server]` table.
    pub server_extra: String,
    /// Extra command-line arguments (e.g. `--leak-lab poll-spawn:4/1s`).
    pub args: Vec<String>,
    /// Extra environment variables of the process (e.g. `SHIPPER_TEST_PANIC`).
    pub env: Vec<(String, String)>,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        Self {
            dir,
            source_extra: String::new(),
            top_extra: String::new(),
            sink_extra: String::new(),
            sink_table: None,
            tables: String::new(),
            server_extra: String::new(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn logs(&self) -> PathBuf {
        self.path("logs")
    }

    pub fn out(&self) -> PathBuf {
        self.path("data/out.jsonl")
    }

    pub fn config_text(&self) -> String {
        let d = self.dir.path().display();
        let sink = self.sink_table.clone().unwrap_or_else(|| {
            format!(
                "[sink]\ntype = \"file\"\npath = \"{d}/data/out.jsonl\"\nbatch_max_wait = \"100ms\"\n{}\n",
                self.sink_extra
            )
        });
        format!(
            "data_dir = \"{d}/data\"\ncheckpoint_interval = \"100ms\"\n{top}\n\
             [server]\nmain_addr = \"127.0.0.1:0\"\ndebug_addr = \"127.0.0.1:0\"\n{server}\n\
             [[sources]]\ntype = \"file\"\ninclude = [\"{d}/logs/**/*.log\"]\nlabels = {{ job = \"test\" }}\npoll_interval = \"200ms\"\n{src}\n\
             {tables}\n{sink}\n",
            top = self.top_extra,
            server = self.server_extra,
            src = self.source_extra,
            tables = self.tables,
        )
    }

    pub fn write_config(&self) -> PathBuf {
        let p = self.path("shipper.toml");
        std::fs::write(&p, self.config_text()).unwrap();
        p
    }

    /// Starts the shipper and waits until its main port listens.
    pub fn start(&self) -> Shipper {
        self.start_bin(shipper_bin())
    }

    /// Starts the given shipper binary (e.g. a release build) like [`Env::start`].
    pub fn start_bin(&self, bin: impl AsRef<std::ffi::OsStr>) -> Shipper {
        let config = self.write_config();
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let log = self.path(&format!("stderr-{n}.log"));
        let stdout = self.path(&format!("stdout-{n}.log"));
        let child = Command::new(bin.as_ref())
            .arg("--config")
            .arg(&config)
            .args(&self.args)
            .env("SHIPPER_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut s = Shipper {
            child,
            log,
            stdout,
            addr: String::new(),
            debug_addr: String::new(),
        };
        let mut addr = None;
        wait_until(Duration::from_secs(20), "the main port to listen", || {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("shipper exited early with {st}: {}", s.stderr());
            }
            addr = s
                .stderr()
                .lines()
                .find(|l| l.contains("main port listening"))
                .and_then(|l| l.split("addr=").nth(1))
                .map(|a| a.trim().to_string());
            // The debug port binds right after the main port.
            addr.is_some() && s.stderr().contains("debug port listening")
        });
        s.addr = addr.unwrap();
        s.debug_addr = s
            .stderr()
            .lines()
            .find(|l| l.contains("debug port listening"))
            .and_then(|l| l.split("addr=").nth(1))
            .map(|a| a.trim().to_string())
            .unwrap_or_default();
        s
    }

    /// Appends raw bytes to a file under `logs/`.
    pub fn append(&self, rel: &str, bytes: &[u8]) {
        let p = self.logs().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    /// The delivered entries, in output order.
    pub fn delivered(&self) -> Vec<Delivered> {
        read_out(&self.out())
    }
}

/// One line of the file sink's output.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub ts: String,
    pub labels: HashMap<String, String>,
    pub line: String,
}

pub fn read_out(path: &Path) -> Vec<Delivered> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        // The last line may be in the middle of being written.
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| Delivered {
            ts: v["ts"].as_str().unwrap().to_string(),
            labels: serde_json::from_value(v["labels"].clone()).unwrap(),
            line: v["line"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// Counts how often each line was delivered.
pub fn counts(d: &[Delivered]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for e in d {
        *m.entry(e.line.clone()).or_insert(0) += 1;
    }
    m
}

/// A running shipper.
#[derive(Debug)]
pub struct Shipper {
    pub child: Child,
    pub log: PathBuf,
    /// Where its standard output goes.
    pub stdout: PathBuf,
    pub addr: String,
    /// The debug port (`/debug/*`).
    pub debug_addr: String,
}

impl Shipper {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the main port: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path)
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(self, limit: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM, limit)
    }

    /// Sends `sig` and waits (bounded) for the exit status.
    pub fn signal(mut self, sig: libc::c_int, limit: Duration) -> ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on the child we spawned.
        unsafe {
            libc::kill(pid, sig);
        }
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < limit,
                "no exit {limit:?} after SIGTERM: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The value of a metric series (exact name with labels) in `/metrics`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find(|l| l.split_whitespace().next() == Some(series))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The raw answer (head and body) to a minimal HTTP/1.1 GET over loopback, read with `timeout`,
/// with a bearer `token` if given.
pub fn raw_get(addr: &str, path: &str, token: Option<&str>, timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    buf
}

/// The response head of a GET, lower-cased.
pub fn http_head(addr: &str, path: &str) -> String {
    let buf = raw_get(addr, path, None, Duration::from_secs(30));
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    String::from_utf8_lossy(&buf[..end]).to_lowercase()
}

/// A minimal HTTP/1.1 GET over loopback with a bounded timeout.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let buf = raw_get(addr, path, None, Duration::from_secs(10));
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Runs the binary with `args` and returns (exit code, stdout, stderr).
pub fn run_bin(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(shipper_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A GET over loopback (bounded timeout) with an optional bearer token: (status, body bytes).
/// Decodes a chunked body.
pub fn http_get_bytes(addr: &str, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let buf = raw_get(addr, path, token, Duration::from_secs(70));
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = buf[end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..line_end]).trim(), 16)
                .unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    (status, body)
}

impl Shipper {
    /// `GET path` on the debug port, as text: (status, body).
    pub fn debug_get(&self, path: &str) -> (u16, String) {
        let (code, body) = http_get_bytes(&self.debug_addr, path, None);
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    /// `/debug/tasks` as JSON.
    pub fn tasks(&self) -> serde_json::Value {
        let (code, body) = self.debug_get("/debug/tasks");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// Live tasks per site in a snapshot, summed over entries with the same site string.
pub fn live_by_site(snapshot: &serde_json::Value) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for s in snapshot["sites"].as_array().unwrap() {
        *m.entry(s["site"].as_str().unwrap().to_string())
            .or_insert(0) += s["live"].as_u64().unwrap();
    }
    m
}

/// The sites whose live count grew from `a` to `b`, with the growth.
pub fn grown(a: &serde_json::Value, b: &serde_json::Value) -> Vec<(String, u64)> {
    let (a, b) = (live_by_site(a), live_by_site(b));
    let mut out: Vec<(String, u64)> = b
        .iter()
        .filter_map(|(site, live)| {
            let before = a.get(site).copied().unwrap_or(0);
            (*live > before).then(|| (site.clone(), live - before))
        })
        .collect();
    out.sort();
    out
}
