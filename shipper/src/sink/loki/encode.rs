//! Turns a [`Batch`] into a push body, once: the body is kept for every retry of the batch.
//!
//! Both encodings are the wire's own (`diagtool_model::loki::encode`), reading the batch's lines
//! straight from its text buffers through [`PushStream`] (no copy of a line, no allocation per
//! entry). JSON is serialized straight into the gzip compressor; protobuf is written field by
//! field and snappy-compressed.
//! Either way the batch's lines are freed once encoded: a batch waiting for Loki (for as long as
//! an outage lasts) holds only its compressed body and its acks, not a second copy of its text.

use anyhow::Context as _;
use bytes::Bytes;
use diagtool_model::loki::encode::{JsonPush, PushStream, write_protobuf};
use flate2::Compression;
use flate2::write::GzEncoder;

use super::LokiEncoding;
use crate::event::{Batch, StreamBatch};

/// An encoded body and the headers that describe it.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    pub(crate) bytes: Bytes,
    pub(crate) content_type: &'static str,
    pub(crate) content_encoding: Option<&'static str>,
}

/// Encodes the batch's streams, leaving `batch.streams` empty.
///
/// CPU-bound (compression dominates): the sink runs it on its encoding thread, so the sink's loop
/// stays responsive.
pub(crate) fn encode(encoding: LokiEncoding, batch: &mut Batch) -> anyhow::Result<Body> {
    let body = match encoding {
        LokiEncoding::Json => json_gzip(batch),
        LokiEncoding::Protobuf => protobuf_snappy(batch),
    };
    batch.release_lines();
    body
}

fn json_gzip(batch: &Batch) -> anyhow::Result<Body> {
    // Serialized straight into the compressor through a small buffer: the JSON text of a 1 MiB
    // batch (~1.3 MiB) never exists whole. The buffer hands the compressor large writes, which is
    // what keeps this as fast as compressing one whole buffer (serde's many small writes are not).
    // Log lines compress 5-10x even at the fastest level, which is what keeps up with the reader.
    let gz = GzEncoder::new(
        Vec::with_capacity(batch.line_bytes / 4 + 64),
        Compression::fast(),
    );
    let mut out = std::io::BufWriter::with_capacity(JSON_BUFFER, gz);
    serde_json::to_writer(&mut out, &JsonPush(&batch.streams))
        .context("serializing a batch as json")?;
    let gz = out
        .into_inner()
        .map_err(|e| e.into_error())
        .context("gzipping a json batch")?;
    let mut compressed = gz.finish().context("gzipping a json batch")?;
    // The body is kept for as long as the batch is in flight (8 at once by default): without its
    // spare capacity, up to half of it after the output doubled.
    compressed.shrink_to_fit();
    Ok(Body {
        bytes: Bytes::from(compressed),
        content_type: "application/json",
        content_encoding: Some("gzip"),
    })
}

/// JSON text handed to the compressor at a time.
const JSON_BUFFER: usize = 64 * 1024;

/// A batch's stream, as the wire's encoder reads it: labels and lines straight from its buffers.
impl PushStream for StreamBatch {
    fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn entry_count(&self) -> usize {
        self.entries.len()
    }

    fn entries(&self) -> impl Iterator<Item = (i64, &str)> {
        self.entries.iter()
    }
}

fn protobuf_snappy(batch: &Batch) -> anyhow::Result<Body> {
    let mut raw = Vec::with_capacity(batch.line_bytes + batch.entries * 24 + 256);
    write_protobuf(&batch.streams, &mut raw);
    let mut compressed = snap::raw::Encoder::new()
        .compress_vec(&raw)
        .context("snappy-compressing a protobuf batch")?;
    // Sized for the worst case by snappy; kept in flight, so trimmed to what it holds.
    compressed.shrink_to_fit();
    Ok(Body {
        bytes: Bytes::from(compressed),
        content_type: "application/x-protobuf",
        content_encoding: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use diagtool_model::loki::wire::decode_push;

    use super::*;
    use crate::event::StreamBatch;

    fn two_stream_batch() -> Batch {
        let (ack_tx, _acks) = tokio::sync::mpsc::unbounded_channel();
        let labels = |job: &str| {
            Arc::new(BTreeMap::from([
                ("job".to_owned(), job.to_owned()),
                ("filename".to_owned(), "/var/log/a \"b\".log".to_owned()),
            ]))
        };
        Batch::new(
            vec![
                StreamBatch {
                    labels: labels("a"),
                    entries: [(-1, "neg"), (i64::MAX, "max \t\"\\"), (0, "")].into(),
                },
                StreamBatch {
                    labels: labels("b"),
                    entries: [(5, "日本語\n"), (1_700_000_000_000_000_000, "")].into(),
                },
            ],
            vec![],
            ack_tx,
        )
    }

    #[test]
    fn both_encodings_decode_to_the_batch() {
        for encoding in [LokiEncoding::Json, LokiEncoding::Protobuf] {
            let mut batch = two_stream_batch();
            let want: Vec<_> = batch
                .streams
                .iter()
                .map(|s| {
                    let entries: Vec<(i64, String)> =
                        s.entries.iter().map(|(t, l)| (t, l.to_owned())).collect();
                    ((*s.labels).clone(), entries)
                })
                .collect();
            let body = encode(encoding, &mut batch).unwrap();
            let streams =
                decode_push(Some(body.content_type), body.content_encoding, &body.bytes).unwrap();
            let got: Vec<_> = streams
                .into_iter()
                .map(|s| {
                    let entries = s.entries.into_iter().map(|e| (e.ts_ns, e.line)).collect();
                    (s.labels, entries)
                })
                .collect();
            assert_eq!(got, want, "{encoding:?}");
        }
    }

    #[test]
    fn an_encoded_batch_keeps_its_counts_and_acks_but_not_its_lines() {
        for encoding in [LokiEncoding::Json, LokiEncoding::Protobuf] {
            let mut batch = two_stream_batch();
            let (entries, line_bytes) = (batch.entries, batch.line_bytes);
            encode(encoding, &mut batch).unwrap();
            assert!(batch.streams.is_empty(), "{encoding:?}: lines still held");
            assert_eq!((batch.entries, batch.line_bytes), (entries, line_bytes));
        }
    }

    #[test]
    fn json_is_gzipped_and_protobuf_is_snappy() {
        let json = encode(LokiEncoding::Json, &mut two_stream_batch()).unwrap();
        assert_eq!(
            (json.content_type, json.content_encoding),
            ("application/json", Some("gzip"))
        );
        assert_eq!(&json.bytes[..2], &[0x1f, 0x8b], "gzip magic");
        let proto = encode(LokiEncoding::Protobuf, &mut two_stream_batch()).unwrap();
        assert_eq!(
            (proto.content_type, proto.content_encoding),
            ("application/x-protobuf", None)
        );
        assert!(snap::raw::decompress_len(&proto.bytes).is_ok());
    }
}
