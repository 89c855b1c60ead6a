//! Turns a [`Batch`] into a push body, once: the body is kept for every retry of the batch.
//!
//! Both encodings read the batch's lines straight from its text buffers (no copy of a line, no
//! allocation per entry; timestamps are formatted on the stack). JSON is serialized straight into
//! the gzip compressor; protobuf is written field by field (Loki's `logproto` push
//! layout, checked against `diagtool_model::loki::wire`'s decoder in the tests) and snappy-compressed.
//! Either way the batch's lines are freed once encoded: a batch waiting for Loki (for as long as
//! an outage lasts) holds only its compressed body and its acks, not a second copy of its text.

use anyhow::Context as _;
use bytes::Bytes;
use diagtool_model::loki::wire::{Timestamp, decimal, write_labels};
use flate2::Compression;
use flate2::write::GzEncoder;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use serde::ser::{
    Serialize, SerializeMap as _, SerializeSeq as _, SerializeTuple as _, Serializer,
};

use super::LokiEncoding;
use crate::event::{Batch, Lines, StreamBatch};

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

/// `{"streams":[{"stream":{..labels..},"values":[["<ns>","line"],..]},..]}`, Loki's JSON push.
struct JsonPush<'a>(&'a [StreamBatch]);

impl Serialize for JsonPush<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("streams", &JsonStreams(self.0))?;
        map.end()
    }
}

struct JsonStreams<'a>(&'a [StreamBatch]);

impl Serialize for JsonStreams<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for stream in self.0 {
            seq.serialize_element(&JsonStream(stream))?;
        }
        seq.end()
    }
}

struct JsonStream<'a>(&'a StreamBatch);

impl Serialize for JsonStream<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("stream", &*self.0.labels)?;
        map.serialize_entry("values", &JsonValues(&self.0.entries))?;
        map.end()
    }
}

struct JsonValues<'a>(&'a Lines);

impl Serialize for JsonValues<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (ts, line) in self.0 {
            seq.serialize_element(&JsonValue(ts, line))?;
        }
        seq.end()
    }
}

/// `["<ns>","line"]`: the timestamp as a decimal string, formatted on the stack.
struct JsonValue<'a>(i64, &'a str);

impl Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut digits = [0u8; 20];
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(decimal(self.0, &mut digits))?;
        t.serialize_element(self.1)?;
        t.end()
    }
}

// ---- protobuf: logproto.PushRequest, written by hand from the borrowed lines ----------------
// PushRequest { repeated StreamAdapter streams = 1; }
// StreamAdapter { string labels = 1; repeated EntryAdapter entries = 2; uint64 hash = 3; }
// EntryAdapter { google.protobuf.Timestamp timestamp = 1; string line = 2; }
// Timestamp { int64 seconds = 1; int32 nanos = 2; }
// Defaults (0, "") are omitted as proto3 does; the hash is left 0 (Loki computes it).

fn protobuf_snappy(batch: &Batch) -> anyhow::Result<Body> {
    let mut raw = Vec::with_capacity(batch.line_bytes + batch.entries * 24 + 256);
    let mut labels = String::with_capacity(128);
    for stream in &batch.streams {
        labels.clear();
        write_labels(
            &mut labels,
            stream.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let entries: usize = stream
            .entries
            .iter()
            .map(|(ts, line)| nested_len(2, entry_len(ts, line)))
            .sum();
        encode_key(1, WireType::LengthDelimited, &mut raw);
        encode_varint((string_len(1, &labels) + entries) as u64, &mut raw);
        put_string(1, &labels, &mut raw);
        for (ts, line) in &stream.entries {
            encode_key(2, WireType::LengthDelimited, &mut raw);
            encode_varint(entry_len(ts, line) as u64, &mut raw);
            let ts = Timestamp::from_ns(ts);
            encode_key(1, WireType::LengthDelimited, &mut raw);
            encode_varint(timestamp_len(ts) as u64, &mut raw);
            put_varint_field(1, ts.seconds as u64, &mut raw);
            put_varint_field(2, i64::from(ts.nanos) as u64, &mut raw);
            put_string(2, line, &mut raw);
        }
    }
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

/// Bytes of a length-delimited field `tag` whose content is `len` bytes.
fn nested_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        nested_len(tag, s.len())
    }
}

fn varint_field_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn timestamp_len(ts: Timestamp) -> usize {
    varint_field_len(1, ts.seconds as u64) + varint_field_len(2, i64::from(ts.nanos) as u64)
}

fn entry_len(ts_ns: i64, line: &str) -> usize {
    // The timestamp is always present (Loki refuses an entry without one), even when all zero.
    nested_len(1, timestamp_len(Timestamp::from_ns(ts_ns))) + string_len(2, line)
}

fn put_string(tag: u32, s: &str, out: &mut Vec<u8>) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(s.len() as u64, out);
        out.extend_from_slice(s.as_bytes());
    }
}

fn put_varint_field(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
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
