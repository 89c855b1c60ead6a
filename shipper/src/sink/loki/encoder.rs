//! The sink's encoding thread: one named OS thread that turns batches into bodies, one at a time.
//!
//! Why not the blocking pool: tokio hands each `spawn_blocking` to whichever pool thread is idle,
//! and glibc gives every thread its own malloc arena, which keeps what an encoding allocated (the
//! compressor's state, the output growing to the body's size) after it is freed. Encodings spread
//! over three pool threads left three such arenas of 1.2-1.8 MiB each; one thread leaves one.
//!
//! Ownership: the thread lives as long as its [`EncoderThread`]. Dropping it closes the job
//! channel; the thread finishes the encoding at hand (milliseconds), sees the channel closed and
//! ends, and the drop joins it. A panic while encoding is caught on the thread and re-raised in
//! the caller's task, as a panic in `spawn_blocking` was.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::LokiEncoding;
use super::encode::{self, Body};
use crate::event::Batch;

/// What one encoding gives back: the batch (for its acks) and its body, or the panic's payload.
pub(crate) type Encoded = Result<(Batch, anyhow::Result<Body>), Box<dyn Any + Send>>;

type Job = (LokiEncoding, Batch, oneshot::Sender<Encoded>);

/// Owner of the encoding thread; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct EncoderThread {
    jobs: Option<std_mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl EncoderThread {
    /// Starts the thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("loki-encoder".into())
            .spawn(move || {
                while let Ok((encoding, batch, done)) = rx.recv() {
                    let encoded = std::panic::catch_unwind(AssertUnwindSafe(move || {
                        let mut batch = batch;
                        let body = encode::encode(encoding, &mut batch);
                        (batch, body)
                    }));
                    // The caller may be gone (hard stop): the result is then dropped here.
                    let _ = done.send(encoded);
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues `batch` for encoding. The receiver yields its result; it fails only if the thread
    /// is gone (it ended after a panic it could not report), and then the batch is lost to this
    /// run and re-read after a restart, like any unacknowledged batch.
    pub(crate) fn encode(
        &self,
        encoding: LokiEncoding,
        batch: Batch,
    ) -> oneshot::Receiver<Encoded> {
        let (done, result) = oneshot::channel();
        if let Some(jobs) = &self.jobs {
            // A send error drops the job, and with it `done`: the receiver reports it.
            let _ = jobs.send((encoding, batch, done));
        }
        result
    }
}

impl Drop for EncoderThread {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            // Bounded by the encoding at hand: the loop ends once the channel is closed.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::event::{AckRef, StreamBatch};

    fn batch(ack_tx: &crate::event::AckSender) -> Batch {
        let labels = Arc::new(BTreeMap::from([("job".to_owned(), "t".to_owned())]));
        Batch::new(
            vec![StreamBatch {
                labels,
                entries: [(1, "a"), (2, "b")].into(),
            }],
            vec![AckRef { chunk: 3 }],
            ack_tx.clone(),
        )
    }

    #[tokio::test]
    async fn encodes_in_order_and_the_drop_finishes_queued_work_then_joins() {
        let (ack_tx, _acks) = tokio::sync::mpsc::unbounded_channel();
        let encoder = EncoderThread::start().unwrap();
        let first = encoder.encode(LokiEncoding::Json, batch(&ack_tx));
        let second = encoder.encode(LokiEncoding::Protobuf, batch(&ack_tx));
        // Dropping closes the queue, lets the thread finish both jobs, and joins it (this
        // returns only once the thread has ended).
        drop(encoder);
        for (encoded, content_type) in [
            (first, "application/json"),
            (second, "application/x-protobuf"),
        ] {
            let (batch, body) = encoded.await.unwrap().unwrap();
            let body = body.unwrap();
            assert_eq!(body.content_type, content_type);
            assert!(batch.streams.is_empty(), "lines freed once encoded");
            assert_eq!(batch.entries, 2);
            let streams = diagtool_model::loki::wire::decode_push(
                Some(body.content_type),
                body.content_encoding,
                &body.bytes,
            )
            .unwrap();
            let lines: Vec<_> = streams[0].entries.iter().map(|e| e.line.as_str()).collect();
            assert_eq!(lines, ["a", "b"]);
        }
    }
}
