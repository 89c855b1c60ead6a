//! Turns a [`Batch`] into a push body, once: the body is kept for every retry of the batch.
//!
//! JSON is serialized straight from the batch's borrowed lines into one buffer (no copy of a line,
//! no per-entry allocation; timestamps are formatted on the stack), then gzipped in one pass.
//! Protobuf moves the lines out of the batch into the message (the batch only needs its acks after
//! this), then snappy-compresses it. The wire types are `diagtool::loki::wire`'s: one definition.

use std::io::Write as _;

use anyhow::Context as _;
use bytes::Bytes;
use diagtool::loki::wire::{
    EntryAdapter, JsonPushRef, JsonStreamRef, PushRequest, StreamAdapter, Timestamp,
    encode_protobuf_snappy, write_labels,
};
use flate2::Compression;
use flate2::write::GzEncoder;

use super::LokiEncoding;
use crate::event::Batch;

/// An encoded body and the headers that describe it.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    pub(crate) bytes: Bytes,
    pub(crate) content_type: &'static str,
    pub(crate) content_encoding: Option<&'static str>,
}

/// Encodes the batch's streams, leaving `batch.streams` empty.
///
/// CPU-bound (gzip dominates): the sink runs it on the blocking pool, so batches compress in
/// parallel and the sink's loop stays responsive.
///
/// Either way the batch's lines are freed once encoded: a batch waiting for Loki (for as long as an
/// outage lasts) holds only its compressed body and its acks, not a second copy of its text.
pub(crate) fn encode(encoding: LokiEncoding, batch: &mut Batch) -> anyhow::Result<Body> {
    let body = match encoding {
        LokiEncoding::Json => json_gzip(batch),
        LokiEncoding::Protobuf => Ok(protobuf_snappy(batch)),
    };
    batch.streams = Vec::new();
    body
}

fn json_gzip(batch: &Batch) -> anyhow::Result<Body> {
    let streams: Vec<JsonStreamRef<'_>> = batch
        .streams
        .iter()
        .map(|s| JsonStreamRef {
            labels: &s.labels,
            entries: &s.entries,
        })
        .collect();
    // Serialized whole first, then compressed in one call: feeding the compressor serde's many
    // small writes costs more than the extra buffer (sized so it rarely grows).
    let mut json = Vec::with_capacity(batch.line_bytes + batch.entries * 32 + 256);
    serde_json::to_writer(&mut json, &JsonPushRef { streams: &streams })
        .context("serializing a batch as json")?;
    // Log lines compress 5-10x even at the fastest level, which is what keeps up with the reader.
    let mut gz = GzEncoder::new(Vec::with_capacity(json.len() / 4 + 64), Compression::fast());
    gz.write_all(&json).context("gzipping a json batch")?;
    let compressed = gz.finish().context("gzipping a json batch")?;
    Ok(Body {
        bytes: Bytes::from(compressed),
        content_type: "application/json",
        content_encoding: Some("gzip"),
    })
}

fn protobuf_snappy(batch: &mut Batch) -> Body {
    let streams = std::mem::take(&mut batch.streams)
        .into_iter()
        .map(|s| {
            let mut labels = String::with_capacity(64);
            write_labels(
                &mut labels,
                s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
            StreamAdapter {
                labels,
                entries: s
                    .entries
                    .into_iter()
                    .map(|(ts_ns, line)| EntryAdapter {
                        timestamp: Some(Timestamp::from_ns(ts_ns)),
                        line,
                        structured_metadata: Vec::new(),
                    })
                    .collect(),
                hash: 0,
            }
        })
        .collect();
    Body {
        bytes: Bytes::from(encode_protobuf_snappy(&PushRequest { streams })),
        content_type: "application/x-protobuf",
        content_encoding: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use diagtool::loki::wire::decode_push;

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
                    entries: vec![(-1, "neg".into()), (i64::MAX, "max \t\"\\".into())],
                },
                StreamBatch {
                    labels: labels("b"),
                    entries: vec![(5, "日本語\n".into())],
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
                .map(|s| ((*s.labels).clone(), s.entries.clone()))
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
