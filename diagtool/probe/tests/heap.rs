//! The heap endpoints through the router on a real runtime: listed on `/debug/`, behind the token,
//! and, in this build without the `heap-profiling` feature, answering 501 with how to enable it
//! (over real HTTP on 127.0.0.1 too). With the feature (`--features heap-profiling`), a real
//! profile that names the memory this test holds.

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use diagtool_probe::{DebugServer, Probe, router};
use tower::ServiceExt;

fn probe_runtime(token: Option<&str>) -> (tokio::runtime::Runtime, Probe) {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let probe = Probe::builder("heap-test")
        .addr("127.0.0.1:0".parse().expect("addr"))
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

#[test]
fn index_lists_the_heap_endpoints_and_the_token_guards_them() {
    let (rt, probe) = probe_runtime(Some("t0ken"));
    let app = router(probe);
    rt.block_on(async {
        let (status, _, body) = get(&app, "/debug/", Some("t0ken")).await;
        assert_eq!(status, StatusCode::OK);
        let html = String::from_utf8(body).expect("utf8");
        for link in [
            "/debug/pprof/heap\"",
            "/debug/pprof/heap?debug=1",
            "/debug/pprof/heap/flamegraph",
        ] {
            assert!(html.contains(&format!("href=\"{link}")), "{link}: {html}");
        }
        for uri in ["/debug/pprof/heap", "/debug/pprof/heap/flamegraph"] {
            let (status, _, _) = get(&app, uri, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        }
        let (status, headers, body) = get(&app, "/debug/pprof/heap?debug=7", Some("t0ken")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .expect("ct")
                .starts_with("text/plain")
        );
        assert!(String::from_utf8_lossy(&body).contains("debug=\"7\""));
    });
}

#[cfg(not(feature = "heap-profiling"))]
#[test]
fn without_the_feature_heap_endpoints_answer_501_saying_how_to_enable_it() {
    let (rt, probe) = probe_runtime(None);
    let server = DebugServer::bind(probe, rt.handle().clone()).expect("server");
    let addr = server.addr();
    rt.block_on(async {
        for path in [
            "/debug/pprof/heap",
            "/debug/pprof/heap?debug=1",
            "/debug/pprof/heap/flamegraph",
        ] {
            let (status, content_type, body) = http_get(addr, path).await;
            assert_eq!(status, 501, "{path}: {body}");
            assert!(
                content_type.starts_with("text/plain"),
                "{path}: {content_type}"
            );
            assert!(
                body.starts_with("heap profiling is not built in:")
                    && body.contains("`heap-profiling` of diagtool-probe"),
                "{path}: {body}"
            );
        }
    });
    server
        .stop(std::time::Duration::from_secs(5))
        .expect("stops");
}

#[cfg(feature = "heap-profiling")]
#[test]
fn with_the_feature_the_profile_names_memory_held_here() {
    #[inline(never)]
    fn hold() -> Vec<Vec<u8>> {
        (0..64).map(|_| vec![9u8; 256 << 10]).collect()
    }
    let held = hold();
    let (rt, probe) = probe_runtime(None);
    let server = DebugServer::bind(probe, rt.handle().clone()).expect("server");
    let addr = server.addr();
    rt.block_on(async {
        let (status, content_type, body) = http_get(addr, "/debug/pprof/heap?debug=1").await;
        assert_eq!(status, 200, "{body}");
        assert!(content_type.starts_with("text/plain"));
        assert!(body.contains("diagtool/probe/tests/heap.rs:"), "{body}");
        let (status, content_type, body) = http_get(addr, "/debug/pprof/heap/flamegraph").await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "image/svg+xml");
        assert!(body.contains("<svg"));
    });
    server
        .stop(std::time::Duration::from_secs(5))
        .expect("stops");
    drop(held);
}

/// A plain HTTP/1.1 GET over a real socket: status, content type, body as text.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut raw),
    )
    .await
    .expect("answers within 30 s")
    .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}
