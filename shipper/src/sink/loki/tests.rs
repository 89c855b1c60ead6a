//! The sink against the strict receiver on loopback: delivery, acknowledgement, retries, faults,
//! shutdown, hostile lines and metrics. Each test runs on a current-thread runtime so a local
//! metrics recorder sees every update.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use testkit::loki::Receiver;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use super::*;
use crate::event::{AckRef, AckSender, StreamBatch};

const T: Duration = Duration::from_secs(10);

pub(super) fn settings(url: String, encoding: LokiEncoding) -> LokiSettings {
    LokiSettings {
        encoding,
        request_timeout: Duration::from_secs(5),
        max_concurrency: 4,
        backoff_max: Duration::from_millis(200),
        ..LokiSettings::new(url)
    }
}

pub(super) fn labels(pairs: &[(&str, &str)]) -> crate::event::Labels {
    Arc::new(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// A one-stream batch whose single ack is `chunk`.
pub(super) fn batch(ack_tx: &AckSender, chunk: u64, lines: &[&str]) -> Batch {
    let entries = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (1_700_000_000_000_000_000 + i as i64, (*l).to_owned()))
        .collect();
    Batch::new(
        vec![StreamBatch {
            labels: labels(&[("job", "test"), ("chunk", &chunk.to_string())]),
            entries,
        }],
        vec![AckRef { chunk }],
        ack_tx.clone(),
    )
}

struct Harness {
    receiver: Receiver,
    tx: Option<mpsc::Sender<Batch>>,
    ack_tx: AckSender,
    acks: UnboundedReceiver<Vec<AckRef>>,
    stop: CancellationToken,
    beats: Arc<AtomicU64>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Harness {
    async fn start(encoding: LokiEncoding) -> Self {
        Self::with(|url| settings(url, encoding)).await
    }

    async fn with(make: impl FnOnce(String) -> LokiSettings) -> Self {
        let receiver = Receiver::start().await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let (ack_tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let beats = Arc::new(AtomicU64::new(0));
        let counter = beats.clone();
        let task = tokio::spawn(run(make(receiver.url()), rx, stop.clone(), move || {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        Self {
            receiver,
            tx: Some(tx),
            ack_tx,
            acks,
            stop,
            beats,
            task,
        }
    }

    async fn send(&self, chunk: u64, lines: &[&str]) {
        let b = batch(&self.ack_tx, chunk, lines);
        self.tx.as_ref().unwrap().send(b).await.unwrap();
    }

    async fn next_ack(&mut self) -> Vec<AckRef> {
        tokio::time::timeout(T, self.acks.recv())
            .await
            .expect("an ack in time")
            .unwrap()
    }

    /// Closes the channel, waits for the sink to drain and return, and checks no body was invalid.
    async fn finish(mut self) -> (Receiver, UnboundedReceiver<Vec<AckRef>>) {
        self.tx.take();
        tokio::time::timeout(T, self.task)
            .await
            .expect("the sink drains in time")
            .unwrap()
            .unwrap();
        assert_eq!(
            self.receiver.rejected_bodies(),
            0,
            "the sink sent a body loki refuses"
        );
        (self.receiver, self.acks)
    }
}

pub(super) fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new().build_recorder()
}

/// The value of the sample line `series` (name with its labels) in the Prometheus text.
pub(super) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn json_gzip_delivers_and_acknowledges() {
    let rec = recorder();
    let _guard = metrics::set_default_local_recorder(&rec);
    let mut h = Harness::start(LokiEncoding::Json).await;
    h.send(1, &["a", "b"]).await;
    h.send(2, &["c"]).await;
    let mut acked = vec![h.next_ack().await, h.next_ack().await];
    acked.sort_by_key(|a| a[0].chunk);
    assert_eq!(
        acked,
        vec![vec![AckRef { chunk: 1 }], vec![AckRef { chunk: 2 }]]
    );
    let (r, _) = h.finish().await;
    let mut lines = r.lines();
    lines.sort();
    assert_eq!(lines, ["a", "b", "c"]);
    for req in r.requests() {
        assert_eq!(req.content_type.as_deref(), Some("application/json"));
        assert_eq!(req.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(req.tenant, None);
    }
    let e = r.entries();
    assert!(e.iter().all(|e| e.labels["job"] == "test"));
    assert!(e.iter().any(|e| e.ts_ns == 1_700_000_000_000_000_001));

    let text = rec.handle().render();
    assert_eq!(sample(&text, "shipper_sent_entries_total"), 3.0);
    assert_eq!(sample(&text, "shipper_sent_bytes_total"), 3.0);
    assert_eq!(
        sample(&text, "shipper_loki_requests_total{status=\"204\"}"),
        2.0
    );
    assert_eq!(
        sample(&text, "shipper_loki_request_duration_seconds_count"),
        2.0
    );
    assert!(
        text.contains("# HELP shipper_loki_concurrency_limit"),
        "{text}"
    );
}

#[tokio::test]
async fn protobuf_snappy_delivers_with_tenant() {
    let mut h = Harness::with(|url| LokiSettings {
        tenant: Some("team-a".into()),
        ..settings(url, LokiEncoding::Protobuf)
    })
    .await;
    h.send(7, &["x", "y"]).await;
    assert_eq!(h.next_ack().await, vec![AckRef { chunk: 7 }]);
    let (r, _) = h.finish().await;
    assert_eq!(r.lines(), ["x", "y"]);
    let req = &r.requests()[0];
    assert_eq!(req.content_type.as_deref(), Some("application/x-protobuf"));
    assert_eq!(req.content_encoding, None);
    assert_eq!(req.tenant.as_deref(), Some("team-a"));
    assert!(
        r.entries()
            .iter()
            .all(|e| e.tenant.as_deref() == Some("team-a"))
    );
    assert_eq!(r.entries()[0].labels["chunk"], "7");
}

#[tokio::test]
async fn hostile_lines_arrive_byte_identical_in_both_encodings() {
    let hostile = [
        "quote \" backslash \\ both \\\"",
        "tab\tinside",
        "newline\ninside and cr\r",
        "non-ascii é ü 日本語 🚀",
        "control \u{1} \u{1b}[31m \u{7f}",
        "{\"json\": [1, 2]}",
        "",
        "   leading and trailing spaces   ",
    ];
    for encoding in [LokiEncoding::Json, LokiEncoding::Protobuf] {
        let mut h = Harness::with(|url| settings(url, encoding)).await;
        let b = Batch::new(
            vec![StreamBatch {
                labels: labels(&[("job", "x"), ("path", "C:\\logs\\\"q\"\n.log")]),
                entries: hostile
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i as i64, (*l).to_owned()))
                    .collect(),
            }],
            vec![AckRef { chunk: 1 }],
            h.ack_tx.clone(),
        );
        h.tx.as_ref().unwrap().send(b).await.unwrap();
        h.next_ack().await;
        let (r, _) = h.finish().await;
        assert_eq!(r.lines(), hostile, "{encoding:?}");
        assert_eq!(r.entries()[0].labels["path"], "C:\\logs\\\"q\"\n.log");
    }
}

#[tokio::test]
async fn retries_429_and_acknowledges_once() {
    let rec = recorder();
    let _guard = metrics::set_default_local_recorder(&rec);
    let mut h = Harness::start(LokiEncoding::Json).await;
    h.receiver.fail_next(2, 429);
    h.send(1, &["a"]).await;
    assert_eq!(h.next_ack().await, vec![AckRef { chunk: 1 }]);
    let (r, mut acks) = h.finish().await;
    assert_eq!(r.lines(), ["a"]);
    let statuses: Vec<u16> = r.requests().iter().map(|q| q.status).collect();
    assert_eq!(statuses, [429, 429, 204]);
    assert!(acks.try_recv().is_err(), "acknowledged more than once");
    let text = rec.handle().render();
    assert_eq!(sample(&text, "shipper_batch_retries_total"), 2.0);
    assert_eq!(
        sample(&text, "shipper_loki_requests_total{status=\"429\"}"),
        2.0
    );
}

#[tokio::test]
async fn honours_retry_after() {
    let mut h = Harness::with(|url| LokiSettings {
        backoff_max: Duration::from_secs(5),
        ..settings(url, LokiEncoding::Json)
    })
    .await;
    h.receiver.retry_after(Some(1));
    h.receiver.fail_next(1, 503);
    let started = Instant::now();
    h.send(1, &["a"]).await;
    h.next_ack().await;
    // Without the header the first retry would come within BACKOFF_BASE (100ms).
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    let (r, _) = h.finish().await;
    assert_eq!(r.count(), 1);
}

#[tokio::test]
async fn rides_out_a_500_outage() {
    let mut h = Harness::start(LokiEncoding::Protobuf).await;
    h.receiver.fail_for(Duration::from_millis(600), 500);
    h.send(1, &["a"]).await;
    h.send(2, &["b"]).await;
    h.next_ack().await;
    h.next_ack().await;
    let (r, _) = h.finish().await;
    let mut lines = r.lines();
    lines.sort();
    assert_eq!(lines, ["a", "b"]);
    let failed = r.requests().iter().filter(|q| q.status == 500).count();
    assert!(failed >= 2, "the outage was not hit: {:?}", r.requests());
}

#[tokio::test]
async fn retries_a_request_that_hangs_past_the_timeout() {
    let rec = recorder();
    let _guard = metrics::set_default_local_recorder(&rec);
    let mut h = Harness::with(|url| LokiSettings {
        request_timeout: Duration::from_millis(300),
        ..settings(url, LokiEncoding::Json)
    })
    .await;
    h.receiver.hang_next(1);
    h.send(1, &["a"]).await;
    assert_eq!(h.next_ack().await, vec![AckRef { chunk: 1 }]);
    let (r, _) = h.finish().await;
    assert_eq!(r.hung_requests(), 1);
    assert_eq!(r.lines(), ["a"]);
    let text = rec.handle().render();
    assert_eq!(
        sample(&text, "shipper_loki_requests_total{status=\"timeout\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_400_is_dropped_counted_acknowledged_not_retried() {
    let rec = recorder();
    let _guard = metrics::set_default_local_recorder(&rec);
    let mut h = Harness::start(LokiEncoding::Json).await;
    h.receiver.reject_lines_containing("poison");
    h.send(1, &["ok", "poison", "ok too"]).await;
    assert_eq!(h.next_ack().await, vec![AckRef { chunk: 1 }]);
    h.send(2, &["fine"]).await;
    assert_eq!(h.next_ack().await, vec![AckRef { chunk: 2 }]);
    let (r, _) = h.finish().await;
    assert_eq!(r.request_count(), 2, "the refused batch was retried");
    assert_eq!(r.rule_rejections(), 1);
    assert_eq!(r.lines(), ["fine"]);
    let text = rec.handle().render();
    assert_eq!(
        sample(
            &text,
            "shipper_dropped_entries_total{reason=\"loki_rejected\"}"
        ),
        3.0
    );
    assert_eq!(sample(&text, "shipper_batch_retries_total"), 0.0);
    assert_eq!(sample(&text, "shipper_sent_entries_total"), 1.0);
}

#[tokio::test]
async fn a_501_is_permanent() {
    let mut h = Harness::start(LokiEncoding::Json).await;
    h.receiver.fail_next(1, 501);
    h.send(1, &["a"]).await;
    h.next_ack().await;
    let (r, _) = h.finish().await;
    assert_eq!(r.request_count(), 1);
    assert_eq!(r.count(), 0);
}

#[tokio::test]
async fn drains_in_flight_batches_when_the_channel_closes() {
    let h = Harness::start(LokiEncoding::Json).await;
    h.receiver.fail_next(3, 503);
    for chunk in 0..10 {
        h.send(chunk, &["line"]).await;
    }
    // Closed at once: whatever is queued or retrying must still be delivered before run returns.
    let (r, mut acks) = h.finish().await;
    assert_eq!(r.count(), 10);
    let mut chunks = Vec::new();
    while let Ok(a) = acks.try_recv() {
        chunks.extend(a.into_iter().map(|a| a.chunk));
    }
    chunks.sort_unstable();
    assert_eq!(chunks, (0..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn stop_returns_at_once_without_acknowledging() {
    let mut h = Harness::start(LokiEncoding::Json).await;
    h.receiver.hang_next(1);
    h.send(1, &["a"]).await;
    assert!(h.receiver.wait_for_requests(1, T).await);
    let started = Instant::now();
    h.stop.cancel();
    tokio::time::timeout(T, &mut h.task)
        .await
        .expect("run returns after stop")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        h.acks.try_recv().is_err(),
        "an undelivered batch was acknowledged"
    );
    assert_eq!(h.receiver.count(), 0);
}

#[tokio::test]
async fn beats_while_loki_is_down() {
    let h = Harness::with(|url| LokiSettings {
        backoff_max: Duration::from_millis(50),
        ..settings(url, LokiEncoding::Json)
    })
    .await;
    h.receiver.fail_for(Duration::from_secs(60), 503);
    h.send(1, &["a"]).await;
    let deadline = Instant::now() + T;
    while h.beats.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "no heartbeat during the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop.cancel();
    h.task.await.unwrap().unwrap();
}

#[test]
fn encoding_names_parse_and_unknown_ones_are_named() {
    assert_eq!("json".parse::<LokiEncoding>(), Ok(LokiEncoding::Json));
    assert_eq!(
        "protobuf".parse::<LokiEncoding>(),
        Ok(LokiEncoding::Protobuf)
    );
    let err = "snappy".parse::<LokiEncoding>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown loki encoding \"snappy\": use \"json\" or \"protobuf\""
    );
}

#[tokio::test]
async fn invalid_settings_are_errors_that_name_the_value() {
    let (_tx, rx) = mpsc::channel(1);
    let err = run(
        settings("not a url".into(), LokiEncoding::Json),
        rx,
        CancellationToken::new(),
        || {},
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("\"not a url\""), "{err:#}");

    let (_tx, rx) = mpsc::channel(1);
    let bad_tenant = LokiSettings {
        tenant: Some("a\nb".into()),
        ..settings("http://127.0.0.1:1".into(), LokiEncoding::Json)
    };
    let err = run(bad_tenant, rx, CancellationToken::new(), || {})
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("tenant"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_grows_under_load_and_stays_bounded() {
    let mut h = Harness::with(|url| LokiSettings {
        max_concurrency: 3,
        ..settings(url, LokiEncoding::Json)
    })
    .await;
    // A steady 20ms per request, like a real Loki: one request at a time cannot keep up.
    h.receiver.latency(Some(Duration::from_millis(20)));
    let line = "x".repeat(100);
    for chunk in 0..100 {
        h.send(chunk, &[line.as_str(); 50]).await;
    }
    let mut acked = 0;
    while acked < 100 {
        acked += h.next_ack().await.len();
    }
    let (r, _) = h.finish().await;
    assert_eq!(r.count(), 100 * 50);
    let most = r.max_in_flight();
    assert!((2..=3).contains(&most), "most requests in flight: {most}");
}

/// Throughput: 1,000,000 lines of ~150 bytes through the sink into a counting receiver.
/// `cargo test -p shipper --release --lib sink::loki::tests::throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run in release"]
async fn throughput_one_million_lines() {
    for encoding in [LokiEncoding::Json, LokiEncoding::Protobuf] {
        let receiver = Receiver::builder()
            .store_entries(false)
            .start()
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let s = LokiSettings {
            max_concurrency: 8,
            ..settings(receiver.url(), encoding)
        };
        let sink = tokio::spawn(run(s, rx, stop.clone(), || {}));
        const LINES: usize = 1_000_000;
        const PER_BATCH: usize = 6_500; // about 1 MiB of lines
        let stream = labels(&[("job", "bench"), ("filename", "/var/log/app.log")]);
        let started = std::time::Instant::now();
        let mut sent = 0;
        let mut chunk = 0;
        while sent < LINES {
            let n = PER_BATCH.min(LINES - sent);
            let entries = (sent..sent + n)
                .map(|i| (1_700_000_000_000_000_000 + i as i64, bench_line(i)))
                .collect();
            let b = Batch::new(
                vec![StreamBatch {
                    labels: stream.clone(),
                    entries,
                }],
                vec![AckRef { chunk }],
                ack_tx.clone(),
            );
            tx.send(b).await.unwrap();
            sent += n;
            chunk += 1;
        }
        drop(tx);
        sink.await.unwrap().unwrap();
        let wall = started.elapsed();
        assert!(receiver.wait_for_count(LINES as u64, T).await);
        let mut acked = 0;
        while let Ok(a) = acks.try_recv() {
            acked += a.len();
        }
        assert_eq!(acked as u64, chunk);
        assert_eq!(receiver.rejected_bodies(), 0);
        let bytes = receiver.line_bytes();
        println!(
            "throughput {encoding:?}: {LINES} lines ({:.0} B avg) in {:.2}s = {:.0} lines/s \
             (includes generating the lines and the receiver decoding them in-process)",
            bytes as f64 / LINES as f64,
            wall.as_secs_f64(),
            LINES as f64 / wall.as_secs_f64()
        );
        receiver.shutdown().await;
    }
}

/// A line of about 150 bytes, like an access log.
fn bench_line(i: usize) -> String {
    format!(
        "2026-11-27T20:00:00.{i:09}Z INFO request handled method=GET path=/api/v1/items/{i} \
         status=200 bytes=5123 duration_ms=12 trace={i:016x}"
    )
}

/// Encoding alone (the sink's own CPU per line), without HTTP or the receiver.
/// `cargo test -p shipper --release --lib sink::loki::tests::encode_speed -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; run in release"]
fn encode_speed() {
    const LINES: usize = 1_000_000;
    const PER_BATCH: usize = 6_500;
    let (ack_tx, _acks) = tokio::sync::mpsc::unbounded_channel();
    let stream = labels(&[("job", "bench"), ("filename", "/var/log/app.log")]);
    for encoding in [LokiEncoding::Json, LokiEncoding::Protobuf] {
        let mut batches: Vec<Batch> = (0..LINES.div_ceil(PER_BATCH))
            .map(|b| {
                let entries = (b * PER_BATCH..((b + 1) * PER_BATCH).min(LINES))
                    .map(|i| (i as i64, bench_line(i)))
                    .collect();
                Batch::new(
                    vec![StreamBatch {
                        labels: stream.clone(),
                        entries,
                    }],
                    vec![],
                    ack_tx.clone(),
                )
            })
            .collect();
        let line_bytes: usize = batches.iter().map(|b| b.line_bytes).sum();
        let started = std::time::Instant::now();
        let mut body_bytes = 0;
        for b in &mut batches {
            body_bytes += encode::encode(encoding, b).unwrap().bytes.len();
        }
        let took = started.elapsed().as_secs_f64();
        println!(
            "encode {encoding:?}: {LINES} lines ({:.0} B avg) in {took:.3}s = {:.0} lines/s, \
             body {:.1}% of line bytes",
            line_bytes as f64 / LINES as f64,
            LINES as f64 / took,
            100.0 * body_bytes as f64 / line_bytes as f64
        );
    }
}
