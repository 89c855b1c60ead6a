//! Loki push bodies written from data the caller keeps: the one encoder of the push layout.
//!
//! A caller exposes its streams through [`PushStream`] (labels and `(ts_ns, line)` entries, all
//! borrowed), and gets Loki's JSON ([`JsonPush`], serialized straight into any writer, such as a
//! gzip encoder) or Loki's protobuf ([`write_protobuf`], written field by field). No line is
//! copied and nothing is allocated per entry: the shipper encodes megabyte batches this way, and
//! the decoder in [`super::wire`] reads both layouts back in the tests.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use serde::ser::{
    Serialize, SerializeMap as _, SerializeSeq as _, SerializeTuple as _, Serializer,
};

use super::wire::{Timestamp, decimal, write_labels};

/// A stream to push, borrowed from wherever its caller keeps it.
pub trait PushStream {
    /// The stream's labels, as `(name, value)` pairs sorted by name.
    fn labels(&self) -> impl Iterator<Item = (&str, &str)>;
    /// How many entries [`entries`](Self::entries) yields.
    fn entry_count(&self) -> usize;
    /// The entries, `(nanoseconds since the epoch, line)`, oldest first.
    fn entries(&self) -> impl Iterator<Item = (i64, &str)>;
}

/// Borrowed streams serialized as Loki's JSON push body:
/// `{"streams":[{"stream":{..labels..},"values":[["<ns>","line"],..]},..]}`.
///
/// # Examples
/// ```
/// use diagtool_model::loki::encode::{JsonPush, PushStream};
/// struct One;
/// impl PushStream for One {
///     fn labels(&self) -> impl Iterator<Item = (&str, &str)> { [("job", "app")].into_iter() }
///     fn entry_count(&self) -> usize { 1 }
///     fn entries(&self) -> impl Iterator<Item = (i64, &str)> { [(1, "hi")].into_iter() }
/// }
/// let json = serde_json::to_string(&JsonPush(&[One])).unwrap();
/// assert_eq!(json, r#"{"streams":[{"stream":{"job":"app"},"values":[["1","hi"]]}]}"#);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct JsonPush<'a, S>(pub &'a [S]);

impl<S: PushStream> Serialize for JsonPush<'_, S> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("streams", &JsonStreams(self.0))?;
        map.end()
    }
}

struct JsonStreams<'a, S>(&'a [S]);

impl<S: PushStream> Serialize for JsonStreams<'_, S> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for stream in self.0 {
            seq.serialize_element(&JsonStream(stream))?;
        }
        seq.end()
    }
}

struct JsonStream<'a, S>(&'a S);

impl<S: PushStream> Serialize for JsonStream<'_, S> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("stream", &JsonLabels(self.0))?;
        map.serialize_entry("values", &JsonValues(self.0))?;
        map.end()
    }
}

struct JsonLabels<'a, S>(&'a S);

impl<S: PushStream> Serialize for JsonLabels<'_, S> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        let mut map = s.serialize_map(None)?;
        for (name, value) in self.0.labels() {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

struct JsonValues<'a, S>(&'a S);

impl<S: PushStream> Serialize for JsonValues<'_, S> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        let mut seq = s.serialize_seq(Some(self.0.entry_count()))?;
        for (ts, line) in self.0.entries() {
            seq.serialize_element(&JsonValue(ts, line))?;
        }
        seq.end()
    }
}

/// `["<ns>","line"]`: the timestamp as a decimal string, formatted on the stack.
struct JsonValue<'a>(i64, &'a str);

impl Serialize for JsonValue<'_> {
    fn serialize<Z: Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        let mut digits = [0u8; 20];
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(decimal(self.0, &mut digits))?;
        t.serialize_element(self.1)?;
        t.end()
    }
}

// ---- protobuf: logproto.PushRequest, written from the borrowed streams ------------------------
// PushRequest { repeated StreamAdapter streams = 1; }
// StreamAdapter { string labels = 1; repeated EntryAdapter entries = 2; uint64 hash = 3; }
// EntryAdapter { google.protobuf.Timestamp timestamp = 1; string line = 2; }
// Timestamp { int64 seconds = 1; int32 nanos = 2; }
// Defaults (0, "") are omitted as proto3 does; the hash is left 0 (Loki computes it).

/// Appends `streams` to `out` as an uncompressed protobuf `PushRequest` (snappy-compress it
/// before sending with `Content-Type: application/x-protobuf`).
pub fn write_protobuf<S: PushStream>(streams: &[S], out: &mut Vec<u8>) {
    let mut labels = String::with_capacity(128);
    for stream in streams {
        labels.clear();
        write_labels(&mut labels, stream.labels());
        let entries: usize = stream
            .entries()
            .map(|(ts, line)| nested_len(2, entry_len(ts, line)))
            .sum();
        encode_key(1, WireType::LengthDelimited, out);
        encode_varint((string_len(1, &labels) + entries) as u64, out);
        put_string(1, &labels, out);
        for (ts, line) in stream.entries() {
            encode_key(2, WireType::LengthDelimited, out);
            encode_varint(entry_len(ts, line) as u64, out);
            let ts = Timestamp::from_ns(ts);
            encode_key(1, WireType::LengthDelimited, out);
            encode_varint(timestamp_len(ts) as u64, out);
            put_varint_field(1, ts.seconds as u64, out);
            put_varint_field(2, i64::from(ts.nanos) as u64, out);
            put_string(2, line, out);
        }
    }
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
    use super::*;
    use crate::loki::wire::{Stream, decode_push};

    struct Owned {
        labels: Vec<(&'static str, &'static str)>,
        entries: Vec<(i64, &'static str)>,
    }

    impl PushStream for Owned {
        fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
            self.labels.iter().copied()
        }
        fn entry_count(&self) -> usize {
            self.entries.len()
        }
        fn entries(&self) -> impl Iterator<Item = (i64, &str)> {
            self.entries.iter().copied()
        }
    }

    fn streams() -> Vec<Owned> {
        vec![
            Owned {
                labels: vec![("job", "app"), ("stream", "a \"quoted\" value")],
                entries: vec![
                    (1_700_000_000_123_456_789, "first"),
                    (5, "second"),
                    (7, "ünïcode"),
                ],
            },
            Owned {
                labels: vec![("job", "other")],
                entries: vec![(42, "x")],
            },
        ]
    }

    fn decoded(body: &[u8], content_type: &str, encoding: Option<&str>) -> Vec<Stream> {
        decode_push(Some(content_type), encoding, body).unwrap()
    }

    #[test]
    fn json_and_protobuf_decode_back_to_the_same_streams() {
        let streams = streams();
        let json = serde_json::to_vec(&JsonPush(&streams)).unwrap();
        let mut raw = Vec::new();
        write_protobuf(&streams, &mut raw);
        let proto = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        let from_json = decoded(&json, "application/json", None);
        let from_proto = decoded(&proto, "application/x-protobuf", None);
        assert_eq!(from_json, from_proto);
        assert_eq!(from_json.len(), 2);
        assert_eq!(from_json[0].entries.len(), 3);
        assert_eq!(from_json[0].entries[0].line, "first");
        assert_eq!(from_json[0].entries[2].line, "ünïcode");
        assert_eq!(
            from_json[1].labels.get("job").map(String::as_str),
            Some("other")
        );
    }
}
