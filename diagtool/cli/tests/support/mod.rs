//! Shared helpers for the CLI's end-to-end tests: a fake target (an axum server on 127.0.0.1:0
//! serving scripted snapshots by its own clock), a bounded runner for the built binary, and a small
//! XML well-formedness check for the SVGs the CLI writes.

#![allow(dead_code)]

pub mod heap;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use diagtool::model::{
    DUMP_SCHEMA, Dump, DumpGroup, DumpTask, SNAPSHOT_SCHEMA, SiteStats, Snapshot, TaskTotals,
};
use tokio_util::sync::CancellationToken;

pub const LEAK_SITE: &str = "shipper/src/leaklab.rs:88:17";
pub const BURST_SITE: &str = "shipper/src/sink/loki.rs:210:13";
pub const POOL_SITE: &str = "shipper/src/source/file.rs:42:9";
pub const LEAK_FRAMES: [&str; 3] = [
    "shipper::leaklab::poll_spawn::{{closure}}",
    "shipper::leaklab::park",
    "tokio::sync::notify::Notified::poll",
];

/// What the fake target serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// A site leaking 2 tasks per second, a bursty site and a stable pool.
    Leaking,
    /// The bursty site and the stable pool only.
    Clean,
    /// The clean script, but every third request answers 503.
    Flaky,
    /// An HTML page where the snapshot should be.
    Html,
    /// The clean script behind a bearer token.
    Token(&'static str),
    /// Heap profiles (`/debug/pprof/heap`): a site that keeps 5 sampling periods more every
    /// second, a pool that warms up and holds, a start-up burst that is freed, noise and a
    /// dependency's buffer (see [`heap::profile`]).
    HeapLeaking,
    /// The heap script without the leaking site.
    HeapClean,
    /// The leaking heap script, but every third request answers bytes that are no profile.
    HeapFlaky,
    /// Every heap request answers bytes that are no profile.
    HeapGarbage,
    /// The clean heap script, but the first request answers 429 (busy).
    HeapBusyOnce,
    /// A target built without heap profiling: 501 with the probe's message.
    HeapUnsupported,
}

struct Shared {
    script: Script,
    started: Instant,
    started_ms: u64,
    requests: AtomicU64,
}

/// An axum server on 127.0.0.1:0, on its own runtime; stopped and joined on drop.
pub struct FakeTarget {
    pub url: String,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeTarget {
    pub fn start(script: Script) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("test runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let shared = Arc::new(Shared {
            script,
            started: Instant::now(),
            started_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_millis() as u64,
            requests: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/debug/tasks", get(tasks))
            .route("/debug/tasks/dump", get(dump))
            .route("/debug/pprof/profile", get(profile))
            .route("/debug/pprof/heap", get(heap_route))
            .with_state(Arc::clone(&shared));
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let server = runtime.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .expect("fake target serves");
        });
        FakeTarget {
            url,
            shared,
            cancel,
            server: Some(server),
            runtime: Some(runtime),
        }
    }

    /// Requests served to `/debug/tasks` so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FakeTarget {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let (Some(runtime), Some(server)) = (self.runtime.take(), self.server.take()) {
            let _ = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), server).await });
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// The snapshot the scripts serve `elapsed` seconds after the target started.
pub fn scripted_snapshot(leaking: bool, started_ms: u64, elapsed: f64) -> Snapshot {
    let site = |site: &str, live: u64, oldest: f64, names: &[&str]| SiteStats {
        site: site.to_owned(),
        live,
        spawned_total: live,
        terminated_total: 0,
        oldest_age_s: oldest,
        median_age_s: oldest / 2.0,
        names: names.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut sites = vec![
        site(POOL_SITE, 4, 100.0 + elapsed, &["file-reader"]),
        // Bursts: 30 short-lived tasks for 0.3 s of every second, else 2.
        site(
            BURST_SITE,
            if elapsed % 1.0 < 0.3 { 30 } else { 2 },
            0.2,
            &["push"],
        ),
    ];
    if leaking {
        sites.push(site(
            LEAK_SITE,
            2 * (1 + elapsed.floor() as u64),
            elapsed + 0.5,
            &["leak-poll"],
        ));
    }
    sites.sort_by_key(|s| std::cmp::Reverse(s.live));
    let live = sites.iter().map(|s| s.live).sum();
    Snapshot {
        schema: SNAPSHOT_SCHEMA.to_owned(),
        service: "fake-shipper".to_owned(),
        taken_at_ms: started_ms + (elapsed * 1000.0) as u64,
        uptime_s: 10.0 + elapsed,
        process: Default::default(),
        runtime: Default::default(),
        tasks: TaskTotals {
            live,
            spawned_total: live,
            terminated_total: 0,
        },
        sites,
        tasks_detail: None,
    }
}

fn authorised(shared: &Shared, headers: &HeaderMap) -> bool {
    match shared.script {
        Script::Token(token) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {token}")),
        _ => true,
    }
}

async fn tasks(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let n = shared.requests.fetch_add(1, Ordering::SeqCst);
    if !authorised(&shared, &headers) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
    }
    match shared.script {
        Script::Html => {
            return (
                [(header::CONTENT_TYPE, "text/html")],
                "<!DOCTYPE html><html><body>Grafana</body></html>",
            )
                .into_response();
        }
        Script::Flaky if n % 3 == 2 => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"error": "busy"})),
            )
                .into_response();
        }
        _ => {}
    }
    let elapsed = shared.started.elapsed().as_secs_f64();
    axum::Json(scripted_snapshot(
        shared.script == Script::Leaking,
        shared.started_ms,
        elapsed,
    ))
    .into_response()
}

async fn dump(State(shared): State<Arc<Shared>>) -> Response {
    let elapsed = shared.started.elapsed().as_secs_f64();
    axum::Json(leak_dump(
        shared.started_ms + (elapsed * 1000.0) as u64,
        2 * (1 + elapsed.floor() as u64),
    ))
    .into_response()
}

async fn heap_route(State(shared): State<Arc<Shared>>) -> Response {
    let n = shared.requests.fetch_add(1, Ordering::SeqCst);
    heap::answer(shared.script, n, shared.started.elapsed().as_secs_f64())
}

/// The CPU profile: two stacks, 3 and 1 samples.
async fn profile() -> Response {
    use diagtool::pprof::{Frame, ProfileBuilder};
    let mut builder = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")]);
    builder.add(
        &[
            Frame::named("shipper::main"),
            Frame::named("shipper::pipeline::encode_batch"),
        ],
        &[3, 30_000_000],
    );
    builder.add(
        &[
            Frame::named("shipper::main"),
            Frame::named("shipper::source::read_lines"),
        ],
        &[1, 10_000_000],
    );
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        builder.encode_gzip(),
    )
        .into_response()
}

/// A dump with `leaked` tasks of the leak site parked on one trace, and one pool task.
pub fn leak_dump(taken_at_ms: u64, leaked: u64) -> Dump {
    let trace: Vec<String> = LEAK_FRAMES.iter().map(|s| (*s).to_owned()).collect();
    let pool_trace = vec![
        "shipper::source::file::read_loop".to_owned(),
        "tokio::fs::read".to_owned(),
    ];
    let mut tasks: Vec<DumpTask> = (0..leaked)
        .map(|i| DumpTask {
            id: 100 + i,
            site: LEAK_SITE.to_owned(),
            name: Some("leak-poll".to_owned()),
            age_s: (leaked - i) as f64 / 2.0,
            trace: trace.clone(),
            not_traced: None,
        })
        .collect();
    tasks.push(DumpTask {
        id: 7,
        site: POOL_SITE.to_owned(),
        name: None,
        age_s: 100.0,
        trace: pool_trace.clone(),
        not_traced: None,
    });
    Dump {
        schema: DUMP_SCHEMA.to_owned(),
        taken_at_ms,
        tasks,
        groups: vec![
            DumpGroup {
                count: leaked,
                site: LEAK_SITE.to_owned(),
                trace,
            },
            DumpGroup {
                count: 1,
                site: POOL_SITE.to_owned(),
                trace: pool_trace,
            },
        ],
        mode: None,
        not_traced: None,
    }
}

/// Runs the built `diagtool` with `args`, killing it after `limit`.
pub fn diagtool(args: &[&str], limit: Duration) -> Output {
    diagtool_env(args, &[], limit)
}

/// Like [`diagtool`], with extra environment variables (DIAGTOOL_* are cleared first).
pub fn diagtool_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diagtool"));
    cmd.args(args)
        .env_remove("DIAGTOOL_TARGET")
        .env_remove("DIAGTOOL_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn diagtool");
    // Drain both pipes while the child runs: a watch that prints more than a pipe holds (64 KiB)
    // would otherwise block on its writes and never exit.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_reader = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err_reader = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait diagtool") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "diagtool {args:?} ran past {limit:?}; stderr: {}",
            String::from_utf8_lossy(&stderr)
        ),
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An address on 127.0.0.1 where nothing listens (bound, then released).
pub fn dead_target() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

/// Checks that `text` is well-formed XML: one root element, every tag closed in order, quoted
/// attributes. Returns the element names in document order.
pub fn xml_elements(text: &str) -> Result<Vec<String>, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut roots = 0;
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let before = &rest[..open];
        if stack.is_empty() && !before.trim().is_empty() {
            return Err(format!("text outside the root: {before:?}"));
        }
        rest = &rest[open..];
        if let Some(body) = rest.strip_prefix("<?") {
            let end = body.find("?>").ok_or("unclosed <?")?;
            rest = &body[end + 2..];
        } else if let Some(body) = rest.strip_prefix("<!--") {
            let end = body.find("-->").ok_or("unclosed comment")?;
            rest = &body[end + 3..];
        } else if let Some(body) = rest.strip_prefix("<![CDATA[") {
            let end = body.find("]]>").ok_or("unclosed CDATA")?;
            rest = &body[end + 3..];
        } else if let Some(body) = rest.strip_prefix("<!") {
            let end = body.find('>').ok_or("unclosed <!")?;
            rest = &body[end + 1..];
        } else if let Some(body) = rest.strip_prefix("</") {
            let end = body.find('>').ok_or("unclosed end tag")?;
            let name = body[..end].trim();
            match stack.pop() {
                Some(open) if open == name => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
            rest = &body[end + 1..];
        } else {
            let body = &rest[1..];
            let mut in_quote: Option<char> = None;
            let mut end = None;
            for (i, c) in body.char_indices() {
                match (in_quote, c) {
                    (Some(q), c) if c == q => in_quote = None,
                    (None, '"' | '\'') => in_quote = Some(c),
                    (None, '<') => return Err("'<' inside a tag".to_owned()),
                    (None, '>') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or("unclosed tag")?;
            let tag = &body[..end];
            let self_closing = tag.ends_with('/');
            let name = tag
                .trim_end_matches('/')
                .split_whitespace()
                .next()
                .ok_or("empty tag")?
                .to_owned();
            if !name
                .chars()
                .all(|c| c.is_alphanumeric() || c == ':' || c == '-' || c == '_')
            {
                return Err(format!("bad element name {name:?}"));
            }
            if stack.is_empty() {
                roots += 1;
            }
            names.push(name.clone());
            if !self_closing {
                stack.push(name);
            }
            rest = &body[end + 1..];
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed elements {stack:?}"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(names)
}

/// Reads a file the test expects to exist.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
