//! The file sink: appends every entry as one JSON line, `{"ts":"<unix ns>","labels":{..},"line":".."}`.
//!
//! A batch is acknowledged only after its lines are written and synced to disk, so positions never
//! run ahead of the output. Writes are plain blocking calls on a local file from this one task (one
//! write and one `fdatasync` per batch, never per line). The stdout sink shares the encoder.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::Batch;

/// Appends `batch` as JSON lines to `out`. Returns the bytes written.
pub fn encode(batch: &Batch, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    for s in &batch.streams {
        // Labels are the same for every entry of a stream: encode them once.
        let labels = serde_json::to_string(&*s.labels).unwrap_or_else(|_| "{}".into());
        for (ts, line) in &s.entries {
            out.extend_from_slice(b"{\"ts\":\"");
            out.extend_from_slice(ts.to_string().as_bytes());
            out.extend_from_slice(b"\",\"labels\":");
            out.extend_from_slice(labels.as_bytes());
            out.extend_from_slice(b",\"line\":");
            // Serializing a str into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, line);
            out.extend_from_slice(b"}\n");
        }
    }
    out.len() - start
}

pub(crate) fn record_sent(batch: &Batch, bytes: usize) {
    metrics::counter!("shipper_sent_entries_total").increment(batch.entries as u64);
    metrics::counter!("shipper_sent_bytes_total").increment(bytes as u64);
}

/// Runs the file sink until the batch channel closes (graceful drain) or `stop` fires.
pub async fn run(
    path: PathBuf,
    mut batches: mpsc::Receiver<Batch>,
    stop: CancellationToken,
    beat: impl Fn() + Send + Sync + 'static,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the file sink's directory '{}'",
                dir.display()
            )
        })?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| {
            format!(
                "cannot open the file sink '{}' for appending",
                path.display()
            )
        })?;
    let mut buf = Vec::with_capacity(2 << 20);
    loop {
        let Some(mut batch) = super::next_batch(&mut batches, &stop, &beat).await else {
            return Ok(());
        };
        buf.clear();
        let n = encode(&batch, &mut buf);
        let started = std::time::Instant::now();
        // The write and its fsync run on a blocking thread (an fsync can take tens of
        // milliseconds, and would stall every task of this worker meanwhile); awaited at once, so
        // the thread is joined here. A write error leaves the batch unacknowledged and ends the
        // sink: the supervisor shuts down and the lines are re-read on the next start.
        let written = tokio::task::spawn_blocking(move || {
            let result = file.write_all(&buf).and_then(|()| file.sync_data());
            (file, buf, result)
        })
        .await
        .context("the file sink's writing thread failed")?;
        (file, buf) = (written.0, written.1);
        written
            .2
            .with_context(|| format!("cannot write to the file sink '{}'", path.display()))?;
        metrics::histogram!("shipper_sink_write_seconds").record(started.elapsed().as_secs_f64());
        record_sent(&batch, n);
        // Written: the text buffers go back for the next batches.
        batch.release_lines();
        batch.acknowledge();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event::{AckRef, StreamBatch};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[tokio::test]
    async fn writes_json_lines_then_acknowledges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.jsonl");
        let (atx, mut arx) = mpsc::unbounded_channel();
        let labels = Arc::new(BTreeMap::from([("job".to_string(), "a\"pp".to_string())]));
        let batch = Batch::new(
            vec![StreamBatch {
                labels,
                entries: [(17, "q\"b\\t\tx"), (18, "ü")].into(),
            }],
            vec![AckRef { chunk: 4 }; 2],
            atx,
        );
        let (btx, brx) = mpsc::channel(1);
        btx.send(batch).await.unwrap();
        drop(btx);
        run(path.clone(), brx, CancellationToken::new(), || {})
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"ts\":\"17\",\"labels\":{\"job\":\"a\\\"pp\"},\"line\":\"q\\\"b\\\\t\\tx\"}\n{\"ts\":\"18\",\"labels\":{\"job\":\"a\\\"pp\"},\"line\":\"ü\"}\n"
        );
        assert_eq!(arx.recv().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_unwritable_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let (_btx, brx) = mpsc::channel(1);
        let e = run(
            blocker.join("out.jsonl"),
            brx,
            CancellationToken::new(),
            || {},
        )
        .await
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("out.jsonl") || format!("{e:#}").contains("file"),
            "{e:#}"
        );
    }
}
