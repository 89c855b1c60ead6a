//! Receiver tests over real loopback sockets, with a minimal HTTP/1.1 client so each test controls
//! the exact bytes and headers sent (and can give up on a request mid-way).

use std::io::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::loki::wire::{
    EntryAdapter, JsonPushRef, JsonStreamRef, PushRequest, StreamAdapter, Timestamp,
    encode_protobuf_snappy,
};

const T: Duration = Duration::from_secs(10);

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Sends one request with `Connection: close` and reads the whole answer.
async fn send(r: &Receiver, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut conn = open(r, headers, body).await;
    let mut raw = Vec::new();
    tokio::time::timeout(T, conn.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    Reply {
        status: head[9..12].parse().unwrap(),
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

async fn open(r: &Receiver, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(r.addr()).await.unwrap();
    let mut req = format!(
        "POST {PUSH_PATH} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        r.addr(),
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    conn
}

fn json_body(lines: &[&str]) -> Vec<u8> {
    let labels = BTreeMap::from([("job".to_owned(), "t".to_owned())]);
    let entries: Vec<(i64, String)> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (i as i64 + 1, (*l).to_owned()))
        .collect();
    let streams = [JsonStreamRef {
        labels: &labels,
        entries: &entries,
    }];
    serde_json::to_vec(&JsonPushRef { streams: &streams }).unwrap()
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

async fn push_json(r: &Receiver, lines: &[&str]) -> Reply {
    send(r, &[JSON], &json_body(lines)).await
}

#[tokio::test]
async fn stores_json_gzip_and_protobuf_snappy_with_tenant() {
    let r = Receiver::start().await.unwrap();
    assert_eq!(push_json(&r, &["a", "b"]).await.status, 204);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&json_body(&["c"])).unwrap();
    let reply = send(
        &r,
        &[
            JSON,
            ("Content-Encoding", "gzip"),
            ("X-Scope-OrgID", "team-a"),
        ],
        &gz.finish().unwrap(),
    )
    .await;
    assert_eq!(reply.status, 204);

    let proto = encode_protobuf_snappy(&PushRequest {
        streams: vec![StreamAdapter {
            labels: r#"{job="p", host="h"}"#.into(),
            entries: vec![EntryAdapter {
                timestamp: Some(Timestamp::from_ns(42)),
                line: "d \"q\" \t é".into(),
                structured_metadata: vec![],
            }],
            hash: 0,
        }],
    });
    let reply = send(&r, &[("Content-Type", "application/x-protobuf")], &proto).await;
    assert_eq!(reply.status, 204);

    assert!(r.wait_for_count(4, T).await);
    assert_eq!(r.lines(), ["a", "b", "c", "d \"q\" \t é"]);
    let entries = r.entries();
    assert_eq!(entries[2].tenant.as_deref(), Some("team-a"));
    assert_eq!(entries[0].tenant, None);
    assert_eq!(entries[3].ts_ns, 42);
    assert_eq!(entries[3].labels["host"], "h");
    assert_eq!(r.rejected_bodies(), 0);
    assert_eq!(r.line_bytes(), 3 + "d \"q\" \t é".len() as u64);

    let log = r.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(log[1].content_encoding.as_deref(), Some("gzip"));
    assert_eq!(log[1].tenant.as_deref(), Some("team-a"));
    assert_eq!(
        log[2].content_type.as_deref(),
        Some("application/x-protobuf")
    );
    assert!(log.iter().all(|l| l.status == 204 && l.error.is_none()));
    r.shutdown().await;
}

#[tokio::test]
async fn invalid_bodies_get_400_and_are_counted() {
    let r = Receiver::start().await.unwrap();
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<u8>, &'a str);
    let cases: Vec<Case> = vec![
        (vec![JSON], b"{not json".to_vec(), "invalid json"),
        (
            vec![JSON],
            br#"{"streams":[{"stream":{},"values":[["1","x"]]}]}"#.to_vec(),
            "at least one label",
        ),
        (
            vec![JSON],
            br#"{"streams":[{"stream":{"a":"b"},"values":[["x1","x"]]}]}"#.to_vec(),
            "invalid timestamp",
        ),
        (
            vec![("Content-Type", "text/plain")],
            json_body(&["x"]),
            "unsupported content type",
        ),
        (
            vec![JSON, ("Content-Encoding", "gzip")],
            json_body(&["x"]),
            "invalid gzip",
        ),
        (
            vec![("Content-Type", "application/x-protobuf")],
            b"garbage".to_vec(),
            "snappy",
        ),
    ];
    for (i, (headers, body, want)) in cases.iter().enumerate() {
        let reply = send(&r, headers, body).await;
        assert_eq!(reply.status, 400, "case {i}");
        assert!(reply.body.contains(want), "case {i}: {}", reply.body);
        assert_eq!(r.rejected_bodies(), i as u64 + 1);
    }
    assert_eq!(r.count(), 0);
    assert!(
        r.requests()
            .iter()
            .all(|l| l.status == 400 && l.error.is_some())
    );
    r.shutdown().await;
}

#[tokio::test]
async fn fail_next_answers_n_requests_then_recovers() {
    let r = Receiver::start().await.unwrap();
    r.retry_after(Some(3));
    r.fail_next(2, 429);
    let first = push_json(&r, &["x"]).await;
    assert_eq!(first.status, 429);
    assert!(first.head.contains("retry-after: 3"), "{}", first.head);
    assert_eq!(push_json(&r, &["x"]).await.status, 429);
    assert_eq!(push_json(&r, &["y"]).await.status, 204);
    assert_eq!(r.lines(), ["y"]);

    // Retry-After only accompanies 429 and 503.
    r.fail_next(1, 500);
    let reply = push_json(&r, &["z"]).await;
    assert_eq!(reply.status, 500);
    assert!(!reply.head.contains("retry-after"));
    assert_eq!(r.rejected_bodies(), 0, "faults are not invalid bodies");
    r.shutdown().await;
}

#[tokio::test]
async fn fail_for_lasts_its_duration() {
    let r = Receiver::start().await.unwrap();
    let started = Instant::now();
    r.fail_for(Duration::from_millis(300), 503);
    let mut failed = 0;
    loop {
        let status = push_json(&r, &["x"]).await.status;
        if status == 204 {
            break;
        }
        assert_eq!(status, 503);
        failed += 1;
        // Bound the loop: the fault must end on its own.
        assert!(started.elapsed() < T, "fault never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed >= 1);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.count(), 1);
    r.shutdown().await;
}

#[tokio::test]
async fn hang_next_holds_until_the_client_gives_up() {
    let r = Receiver::start().await.unwrap();
    r.hang_next(1);
    let mut conn = open(&r, &[JSON], &json_body(&["held"])).await;
    assert!(r.wait_until(T, || r.hung_requests() == 1).await);
    let mut buf = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await;
    assert!(got.is_err(), "a hung request must not be answered");
    drop(conn); // the client gives up
    assert!(
        r.wait_until(T, || r.requests().len() == 1).await,
        "a request whose client gave up is recorded"
    );
    assert_eq!(r.requests()[0].status, STATUS_CLIENT_GAVE_UP);

    assert_eq!(push_json(&r, &["next"]).await.status, 204);
    assert_eq!(r.lines(), ["next"]);
    r.shutdown().await;
}

#[tokio::test]
async fn hang_for_answers_503_when_the_hang_ends() {
    let r = Receiver::start().await.unwrap();
    r.hang_for(Duration::from_millis(300));
    let started = Instant::now();
    let reply = push_json(&r, &["x"]).await;
    assert_eq!(reply.status, 503);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.hung_requests(), 1);
    assert_eq!(push_json(&r, &["x"]).await.status, 204);
    r.shutdown().await;
}

#[tokio::test]
async fn shutdown_releases_a_hung_request() {
    let r = Receiver::start().await.unwrap();
    r.hang_next(1);
    let mut conn = open(&r, &[JSON], &json_body(&["x"])).await;
    assert!(r.wait_until(T, || r.hung_requests() == 1).await);
    let started = Instant::now();
    r.shutdown().await;
    assert!(
        started.elapsed() < SHUTDOWN_GRACE,
        "shutdown waited for the grace period"
    );
    let mut raw = Vec::new();
    tokio::time::timeout(T, conn.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 503"));
}

#[tokio::test]
async fn reject_lines_containing_refuses_only_matching_bodies() {
    let r = Receiver::start().await.unwrap();
    r.reject_lines_containing("poison");
    let reply = push_json(&r, &["fine", "a poison pill"]).await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("\"poison\""), "{}", reply.body);
    assert_eq!(push_json(&r, &["fine"]).await.status, 204);
    assert_eq!(r.rule_rejections(), 1);
    assert_eq!(r.rejected_bodies(), 0);
    r.clear_faults();
    assert_eq!(push_json(&r, &["poison"]).await.status, 204);
    assert_eq!(r.lines(), ["fine", "poison"]);
    r.shutdown().await;
}

#[tokio::test]
async fn counting_mode_counts_without_storing() {
    let r = Receiver::builder()
        .store_entries(false)
        .start()
        .await
        .unwrap();
    assert_eq!(push_json(&r, &["a", "b", "c"]).await.status, 204);
    assert!(r.wait_for_count(3, T).await);
    assert!(r.entries().is_empty());
    assert_eq!(r.line_bytes(), 3);
    r.shutdown().await;
}

#[tokio::test]
async fn wait_for_count_wakes_on_arrival_and_times_out() {
    let r = Receiver::start().await.unwrap();
    assert!(!r.wait_for_count(1, Duration::from_millis(50)).await);
    let (reached, reply) = tokio::join!(r.wait_for_count(2, T), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        push_json(&r, &["a", "b"]).await
    });
    assert_eq!(reply.status, 204);
    assert!(reached);
    r.shutdown().await;
}

#[tokio::test]
async fn other_paths_and_methods_are_not_push() {
    let r = Receiver::start().await.unwrap();
    let mut conn = TcpStream::connect(r.addr()).await.unwrap();
    conn.write_all(b"GET /loki/api/v1/push HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 405"));
    assert_eq!(r.request_count(), 0);
    r.shutdown().await;
}

#[tokio::test]
async fn latency_delays_answers_and_in_flight_is_tracked() {
    let r = Receiver::start().await.unwrap();
    r.latency(Some(Duration::from_millis(200)));
    let started = Instant::now();
    let (a, b) = tokio::join!(push_json(&r, &["a"]), push_json(&r, &["b"]));
    assert_eq!((a.status, b.status), (204, 204));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert_eq!(r.max_in_flight(), 2);
    r.shutdown().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_keep_alive_connections() {
    let r = Receiver::start().await.unwrap();
    let body = json_body(&["a"]);
    let mut conn = TcpStream::connect(r.addr()).await.unwrap();
    let head = format!(
        "POST {PUSH_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(T, conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 204"));
    // The connection stays open and idle, as a client's pool keeps it.
    let started = Instant::now();
    r.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(conn);
}
