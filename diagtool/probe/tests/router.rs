//! The `/debug/*` router: every endpoint through `tower::ServiceExt::oneshot` on a real runtime
//! with real tasks, plus one test over real HTTP on 127.0.0.1.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use diagtool_probe::model::{Dump, Snapshot};
use diagtool_probe::{DebugServer, Probe, ProbeError, router, spawn_named, spawn_named_on};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const TOKEN: &str = "s3cret-token";

fn probe_runtime(token: Option<&str>) -> (tokio::runtime::Runtime, Probe) {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let probe = Probe::builder("router-test")
        .token(token.map(str::to_owned))
        .install(&mut builder)
        .expect("probe");
    let rt = builder
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    (rt, probe)
}

async fn get(app: &Router, uri: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut request = Request::builder().uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .expect("body");
    (status, headers, body.to_vec())
}

fn error_of(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).expect("json error body");
    value["error"].as_str().expect("error field").to_owned()
}

#[inline(never)]
async fn wait_for_release(rx: tokio::sync::watch::Receiver<bool>) {
    let mut rx = rx;
    let _ = rx.wait_for(|released| *released).await;
}

#[test]
fn token_is_required_when_configured() {
    let (rt, probe) = probe_runtime(Some(TOKEN));
    let app = router(probe);
    rt.block_on(async {
        for uri in ["/debug/", "/debug/tasks", "/debug/pprof/tasks?debug=1"] {
            let (status, headers, body) = get(&app, uri, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
            assert!(error_of(&body).contains("bearer token"));
            let (status, _, _) = get(&app, uri, Some("wrong")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
            let (status, _, _) = get(&app, uri, Some(TOKEN)).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
        }
    });
}

#[test]
fn index_links_every_endpoint() {
    let (rt, probe) = probe_runtime(None);
    let app = router(probe);
    rt.block_on(async {
        let (status, headers, body) = get(&app, "/debug/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .expect("ct")
                .starts_with("text/html")
        );
        let html = String::from_utf8(body).expect("utf8");
        for link in [
            "/debug/tasks",
            "/debug/tasks/dump",
            "/debug/pprof/tasks?debug=0",
            "/debug/pprof/tasks?debug=1",
            "/debug/pprof/tasks?debug=2",
            "/debug/pprof/profile",
            "/debug/pprof/flamegraph",
        ] {
            assert!(
                html.contains(&format!("href=\"{link}")),
                "{link} missing: {html}"
            );
        }
    });
}

#[test]
fn snapshot_endpoint_in_json_text_and_detail() {
    let (rt, probe) = probe_runtime(None);
    let app = router(probe);
    rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let handles: Vec<_> = (0..5)
            .map(|_| spawn_named("waiter", wait_for_release(rx.clone())))
            .collect();
        let line = line!() - 2;
        let site = format!("diagtool/probe/tests/router.rs:{line}:");

        let (status, _, body) = get(&app, "/debug/tasks", None).await;
        assert_eq!(status, StatusCode::OK);
        let snap =
            Snapshot::from_json(std::str::from_utf8(&body).expect("utf8")).expect("snapshot");
        assert_eq!(snap.service, "router-test");
        assert!(snap.sites[0].site.starts_with(&site), "{:?}", snap.sites);
        assert_eq!(snap.sites[0].live, 5);
        assert_eq!(snap.sites[0].names, vec!["waiter".to_owned()]);
        assert_eq!(
            snap.tasks.live,
            snap.sites.iter().map(|s| s.live).sum::<u64>()
        );
        assert!(snap.tasks_detail.is_none());
        assert!(snap.process.rss_bytes > 0 && snap.runtime.workers == 2);

        let (_, _, body) = get(&app, "/debug/tasks?debug=2", None).await;
        let snap =
            Snapshot::from_json(std::str::from_utf8(&body).expect("utf8")).expect("snapshot");
        let detail = snap.tasks_detail.expect("detail");
        let ids: Vec<u64> = handles
            .iter()
            .map(|h| h.id().to_string().parse().expect("id"))
            .collect();
        for id in &ids {
            let task = detail.iter().find(|t| t.id == *id).expect("task in detail");
            assert!(task.site.starts_with(&site));
            assert_eq!(task.name.as_deref(), Some("waiter"));
        }

        let (status, headers, body) = get(&app, "/debug/tasks?format=text", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .expect("ct")
                .starts_with("text/plain")
        );
        let text = String::from_utf8(body).expect("utf8");
        assert!(text.contains(&site) && text.contains("[waiter]"), "{text}");

        for bad in ["/debug/tasks?format=xml", "/debug/tasks?debug=7"] {
            let (status, _, body) = get(&app, bad, None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(error_of(&body).contains("is invalid"), "{bad}");
        }
        tx.send(true).expect("release");
        for handle in handles {
            handle.await.expect("join");
        }
    });
}

#[test]
fn dumps_join_tasks_to_sites_in_every_format() {
    let (rt, probe) = probe_runtime(None);
    let app = router(probe);
    rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let handles: Vec<_> = (0..4)
            .map(|_| spawn_named("dumped", wait_for_release(rx.clone())))
            .collect();
        let line = line!() - 2;
        let site = format!("diagtool/probe/tests/router.rs:{line}:");
        let ids: Vec<u64> = handles
            .iter()
            .map(|h| h.id().to_string().parse().expect("id"))
            .collect();
        // Each task must have reached its await: wait (bounded) until the dump shows all four.
        let deadline = Instant::now() + Duration::from_secs(10);
        let dump = loop {
            let (status, _, body) = get(&app, "/debug/tasks/dump?timeout_ms=5000", None).await;
            assert_eq!(status, StatusCode::OK);
            let dump = Dump::from_json(std::str::from_utf8(&body).expect("utf8")).expect("dump");
            let group = dump.groups.iter().find(|g| g.site.starts_with(&site));
            // A task not parked yet is listed untraced; wait until all four traced themselves.
            if group.is_some_and(|g| {
                g.count == 4 && g.trace.iter().any(|f| f.contains("wait_for_release"))
            }) {
                break dump;
            }
            assert!(
                Instant::now() < deadline,
                "tasks never all parked: {dump:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for id in &ids {
            let task = dump
                .tasks
                .iter()
                .find(|t| t.id == *id)
                .expect("task dumped");
            assert!(task.site.starts_with(&site));
            assert_eq!(task.name.as_deref(), Some("dumped"));
            assert!(
                task.trace.iter().any(|f| f.contains("wait_for_release")),
                "{:?}",
                task.trace
            );
        }
        assert!(dump.groups.windows(2).all(|w| w[0].count >= w[1].count));

        let (status, headers, body) = get(&app, "/debug/pprof/tasks?debug=0", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
        let profile = diagtool_model::pprof::decode(&body).expect("pprof");
        assert_eq!(
            diagtool_model::pprof::sample_type_name(&profile, 0).as_deref(),
            Some("tasks/count")
        );
        let folded = diagtool_model::pprof::to_folded(&profile);
        let line = folded
            .lines()
            .find(|l| l.starts_with(&format!("spawned at {site}")))
            .unwrap_or_else(|| panic!("no stack for {site}: {folded}"));
        assert!(
            line.ends_with(" 4") && line.contains("wait_for_release"),
            "{line}"
        );

        let (status, _, body) = get(&app, "/debug/pprof/tasks?debug=1", None).await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body).expect("utf8");
        assert!(text.contains(&format!("\n4 @ {site}")), "{text}");

        let (_, _, body) = get(&app, "/debug/pprof/tasks?debug=2", None).await;
        let text = String::from_utf8(body).expect("utf8");
        for id in &ids {
            assert!(text.contains(&format!("\ntask {id} \"dumped\"")), "{text}");
        }
        let (status, _, _) = get(&app, "/debug/tasks/dump?timeout_ms=0", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        tx.send(true).expect("release");
        for handle in handles {
            handle.await.expect("join");
        }
    });
}

/// A blocking HTTP/1.1 GET from a plain thread (the host runtime may be stuck): the status code,
/// the body and how long it took. Bounded by a read timeout.
fn blocking_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, Duration) {
    use std::io::{Read, Write};
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("an answer in time");
    let status = response
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body, started.elapsed())
}

/// Tasks blocking every worker of a runtime in a synchronous wait (a `std` channel), until
/// released, or for 30 s at most so a failing test still ends.
struct Blockers {
    releases: Vec<std::sync::mpsc::Sender<()>>,
    ended: std::sync::mpsc::Receiver<()>,
}

impl Blockers {
    /// Spawns `workers` blockers named `blocker` and returns once each holds a worker: a task
    /// runs on one worker at a time, so once all have started, no worker is free.
    fn occupy(rt: &tokio::runtime::Runtime, workers: usize) -> Self {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (ended_tx, ended) = std::sync::mpsc::channel();
        let mut releases = Vec::new();
        for _ in 0..workers {
            let (release, released) = std::sync::mpsc::channel::<()>();
            releases.push(release);
            let (started_tx, ended_tx) = (started_tx.clone(), ended_tx.clone());
            let _detached = spawn_named_on(rt.handle(), "blocker", async move {
                let _ = started_tx.send(());
                let _ = released.recv_timeout(Duration::from_secs(30));
                let _ = ended_tx.send(());
            });
        }
        for _ in 0..workers {
            started
                .recv_timeout(Duration::from_secs(10))
                .expect("blocker started");
        }
        Blockers { releases, ended }
    }

    /// Releases every blocker and waits (bounded) until each has returned.
    fn release(self) {
        for release in &self.releases {
            release.send(()).expect("release");
        }
        for _ in 0..self.releases.len() {
            self.ended
                .recv_timeout(Duration::from_secs(10))
                .expect("blocker ended");
        }
    }
}

/// Every worker of the host is blocked in a synchronous wait: the debug server, on its own
/// thread, still answers a dump in time (200, with the tasks that could not answer listed as not
/// traced, with their site and name) and a snapshot with 200. Then the workers are freed and the
/// parked task traces itself.
#[test]
fn dump_of_a_blocked_runtime_answers_in_time_with_what_it_has() {
    const WORKERS: usize = 2;
    const TIMEOUT_MS: u64 = 300;
    let (rt, probe) = probe_runtime(None);
    let registry = probe.registry().clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = DebugServer::start(probe, listener, rt.handle().clone()).expect("start");
    let addr = server.addr();

    let blockers = Blockers::occupy(&rt, WORKERS);
    let (unpark, parked_rx) = tokio::sync::watch::channel(false);
    let parked = spawn_named_on(rt.handle(), "parked", wait_for_release(parked_rx));
    let spawned_before = registry.totals().spawned;

    let (status, body, took) =
        blocking_get(addr, &format!("/debug/tasks/dump?timeout_ms={TIMEOUT_MS}"));
    assert_eq!(status, 200, "{body}");
    // The timeout plus slack for a loaded machine; without its own runtime it never came at all.
    assert!(
        took < Duration::from_millis(TIMEOUT_MS) + Duration::from_secs(5),
        "the dump took {took:?}"
    );
    let dump = Dump::from_json(&body).expect("dump");
    for name in ["blocker", "parked"] {
        let task = dump
            .tasks
            .iter()
            .find(|task| task.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} is not in the dump: {dump:#?}"));
        assert!(task.not_traced.is_some(), "{task:?}");
        assert!(
            task.site.starts_with("diagtool/probe/tests/router.rs:"),
            "{task:?}"
        );
        assert!(task.trace[0].starts_with("(not traced: "), "{task:?}");
    }

    let (status, body, _) = blocking_get(addr, "/debug/tasks");
    assert_eq!(status, 200, "{body}");
    let snap = Snapshot::from_json(&body).expect("snapshot");
    let blocker_site = snap
        .sites
        .iter()
        .find(|site| site.names.contains(&"blocker".to_owned()))
        .unwrap_or_else(|| panic!("no blocker site: {snap:?}"));
    assert_eq!(blocker_site.live, WORKERS as u64);
    assert_eq!(snap.runtime.workers, WORKERS as u64, "the host's figures");
    let (status, body, _) = blocking_get(addr, "/debug/pprof/tasks?debug=1&timeout_ms=100");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("not traced: "), "{body}");

    blockers.release();
    // Freed, the parked task reaches its await and traces itself at the next dump.
    let deadline = Instant::now() + Duration::from_secs(10);
    let dump = loop {
        let (status, body, _) = blocking_get(addr, "/debug/tasks/dump?timeout_ms=3000");
        assert_eq!(status, 200, "{body}");
        let dump = Dump::from_json(&body).expect("dump");
        let traced = dump.tasks.iter().any(|task| {
            task.name.as_deref() == Some("parked")
                && task.trace.iter().any(|f| f.contains("wait_for_release"))
        });
        if traced {
            break dump;
        }
        assert!(Instant::now() < deadline, "never traced: {dump:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        dump.tasks.iter().all(|task| task.site != "<unknown>"),
        "{dump:#?}"
    );
    // The debug server's own tasks (connections, timers) never reached the host's registry.
    assert_eq!(registry.totals().spawned, spawned_before);

    server.stop(Duration::from_secs(10)).expect("server joined");
    unpark.send(true).expect("unpark");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), parked)
            .await
            .expect("parked task ends")
            .expect("join");
    });
    rt.shutdown_timeout(Duration::from_secs(2));
}

/// `?mode=global` is refused (403, saying how to enable it and why it is off) unless the service
/// opted in; a mode that does not exist is a 400.
#[test]
fn global_dumps_need_the_services_opt_in() {
    let (rt, probe) = probe_runtime(None);
    let app = router(probe);
    rt.block_on(async {
        for path in [
            "/debug/tasks/dump?mode=global",
            "/debug/pprof/tasks?debug=1&mode=global",
        ] {
            let (status, _, body) = get(&app, path, None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
            let error = error_of(&body);
            assert!(error.contains("DIAGTOOL_PROBE_GLOBAL_DUMP=1"), "{error}");
            assert!(error.contains("stops every worker"), "{error}");
        }
        let (status, _, body) = get(&app, "/debug/tasks/dump?mode=stop-the-world", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&body).contains("mode="), "{}", error_of(&body));
        let (status, _, body) = get(&app, "/debug/", None).await;
        assert_eq!(status, StatusCode::OK);
        let page = String::from_utf8(body).expect("utf8");
        assert!(page.contains("one task dump at a time"), "{page}");
        assert!(page.contains("did not opt in"), "{page}");
    });
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let probe = Probe::builder("test")
        .addr("127.0.0.1:0".parse().expect("addr"))
        .global_dump(true)
        .install(&mut builder)
        .expect("probe");
    let rt = builder.worker_threads(2).enable_all().build().expect("rt");
    let app = router(probe);
    rt.block_on(async {
        let (status, _, body) = get(&app, "/debug/tasks/dump?mode=global", None).await;
        assert_eq!(status, StatusCode::OK, "{}", error_of(&body));
        let dump = Dump::from_json(std::str::from_utf8(&body).expect("utf8")).expect("dump");
        assert_eq!(dump.mode.as_deref(), Some("global"));
    });
}

/// A dump waiting on a stuck runtime ends as soon as the server stops (503), instead of
/// holding the shutdown for up to its `timeout_ms`.
#[test]
fn a_dump_in_flight_ends_when_the_server_stops() {
    let (rt, probe) = probe_runtime(None);
    let blockers = Blockers::occupy(&rt, 2);
    let stop = CancellationToken::new();
    let app = router(probe.with_host(rt.handle().clone()).with_stop(stop.clone()));
    // The request runs here, off the blocked runtime.
    let own = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    own.block_on(async {
        let mut request = std::pin::pin!(get(&app, "/debug/tasks/dump?timeout_ms=60000", None));
        // One poll runs the request into the dump, which waits for the blocked workers.
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(request.as_mut(), cx))
        })
        .await;
        assert!(first.is_pending(), "a blocked runtime cannot be dumped");
        let started = Instant::now();
        stop.cancel();
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("the dump ends on stop");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(error_of(&body).contains("stopping"), "{body:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    });
    blockers.release();
    rt.shutdown_timeout(Duration::from_secs(2));
}

/// The CPU profiler is process-wide, so every profiling check lives in this one test.
#[test]
fn cpu_profiles_decode_draw_and_refuse_overlap() {
    let (rt, probe) = probe_runtime(None);
    let app = router(probe);
    rt.block_on(async {
        // A plain thread, not a blocking task: should an assertion fail, it cannot hold up the
        // runtime's shutdown, and it stops by itself after a bounded number of rounds.
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let spinner = std::thread::spawn({
            let busy = std::sync::Arc::clone(&busy);
            move || {
                let mut x = 0u64;
                let until = Instant::now() + Duration::from_secs(30);
                while busy.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                }
                x
            }
        });
        let first = tokio::spawn({
            let app = app.clone();
            async move { get(&app, "/debug/pprof/profile?seconds=2", None).await }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !diagtool_probe::cpu::is_running() {
            assert!(Instant::now() < deadline, "profile never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (status, _, body) = get(&app, "/debug/pprof/profile?seconds=1", None).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(error_of(&body).contains("already running"));

        let (status, headers, body) = first.await.expect("join");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
        assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip");
        let profile = diagtool_model::pprof::decode(&body).expect("pprof");
        assert_eq!(
            diagtool_model::pprof::sample_type_name(&profile, 1).as_deref(),
            Some("cpu/nanoseconds")
        );
        let samples: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
        // ~99 per CPU-second; on a loaded machine the spinner gets only part of a CPU.
        assert!(samples > 0, "a spinning thread for 2 s gave no sample");

        let (status, headers, body) = get(&app, "/debug/pprof/flamegraph?seconds=1", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "image/svg+xml");
        let svg = String::from_utf8(body).expect("utf8");
        assert!(svg.contains("<svg") && svg.contains("router-test CPU"));

        for bad in ["seconds=0", "seconds=61", "seconds=abc"] {
            let (status, _, _) = get(&app, &format!("/debug/pprof/profile?{bad}"), None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        }
        busy.store(false, std::sync::atomic::Ordering::Relaxed);
        spinner.join().expect("spinner");
    });
}

#[test]
fn non_loopback_bind_without_token_is_refused() {
    let (rt, probe) = probe_runtime(None);
    rt.block_on(async {
        let err = diagtool_probe::serve(
            probe,
            "0.0.0.0:0".parse().expect("addr"),
            CancellationToken::new(),
        )
        .await
        .expect_err("refused");
        assert!(matches!(err, ProbeError::InsecureBind(_)), "{err}");
        assert!(err.to_string().contains("without a token"), "{err}");
    });
}

/// One request over a real socket, raw HTTP/1.1, so the served bytes are what a client sees.
async fn http_get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

#[test]
fn serves_over_real_http_and_stops_on_cancel() {
    let (rt, probe) = probe_runtime(Some(TOKEN));
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let server = spawn_named(
            "debug-server",
            diagtool_probe::router::serve_on(probe, listener, cancel.clone()),
        );
        let test = async {
            let response = http_get(addr, "/debug/tasks", Some(TOKEN)).await;
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            let body = response.split("\r\n\r\n").nth(1).expect("body");
            let snap = Snapshot::from_json(body).expect("snapshot");
            assert!(
                snap.sites
                    .iter()
                    .any(|s| s.names.contains(&"debug-server".to_owned())),
                "{snap:?}"
            );
            let response = http_get(addr, "/debug/tasks", None).await;
            assert!(response.starts_with("HTTP/1.1 401"), "{response}");
        };
        tokio::time::timeout(Duration::from_secs(10), test)
            .await
            .expect("requests in time");
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops in time")
            .expect("join")
            .expect("clean stop");
    });
}
