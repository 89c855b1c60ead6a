//! Loki's push wire format, defined once: the protobuf messages of Loki's `push.proto`, the JSON
//! form, the label-string syntax, and [`decode_push`], which validates a request body the way Loki's
//! distributor does.
//!
//! The shipper's sink encodes with these same types, so what it sends and what the test receiver
//! accepts cannot drift apart. Invariants kept by [`decode_push`]: every decoded stream has at least
//! one label, every label name matches `[a-zA-Z_][a-zA-Z0-9_]*` and appears once, every entry has a
//! timestamp, and every string is valid UTF-8. Anything else is an error worth a 400.

use std::collections::BTreeMap;
use std::io::Read;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

use super::labels::finish_labels;
pub use super::labels::{
    LabelsError, format_labels, is_valid_label_name, parse_labels, write_labels,
};

/// The largest body [`decode_push`] inflates to, compressed or not (Loki's own default limit is
/// about 100 MiB); larger bodies are refused rather than buffered.
pub const MAX_DECODED_BYTES: usize = 128 << 20;

/// Loki's `logproto.PushRequest`: the protobuf body (snappy block-compressed on the wire).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    /// The streams of the request.
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// One stream of a [`PushRequest`]: its labels as a label string and its entries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// The labels in label-string syntax, such as `{job="app", host="a"}` (see [`format_labels`]).
    #[prost(string, tag = "1")]
    pub labels: String,
    /// The entries, oldest first.
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    /// A hash of the labels, filled in by Loki internally; clients leave it 0.
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// One log line of a [`StreamAdapter`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    /// When the line was written. Loki rejects an entry without one.
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    /// The line itself.
    #[prost(string, tag = "2")]
    pub line: String,
    /// Per-entry metadata that is not indexed as labels.
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

/// A name/value pair of structured metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    /// The name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// The wire layout of `google.protobuf.Timestamp`: seconds since the epoch and a non-negative
/// nanosecond part.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Timestamp {
    /// Whole seconds since the Unix epoch (negative before it).
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second, `0..1_000_000_000`.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// Splits nanoseconds since the epoch into seconds and a non-negative nanosecond part.
    ///
    /// # Examples
    /// ```
    /// use diagtool_model::loki::wire::Timestamp;
    /// let ts = Timestamp::from_ns(-1);
    /// assert_eq!((ts.seconds, ts.nanos), (-1, 999_999_999));
    /// assert_eq!(ts.to_ns(), Some(-1));
    /// ```
    pub fn from_ns(ns: i64) -> Self {
        Self {
            seconds: ns.div_euclid(1_000_000_000),
            // In range by construction: the remainder is in 0..1e9.
            nanos: ns.rem_euclid(1_000_000_000) as i32,
        }
    }

    /// Nanoseconds since the epoch, or `None` when out of range or `nanos` is not in `0..1e9`.
    pub fn to_ns(self) -> Option<i64> {
        if !(0..1_000_000_000).contains(&self.nanos) {
            return None;
        }
        self.seconds
            .checked_mul(1_000_000_000)?
            .checked_add(i64::from(self.nanos))
    }
}

/// A decoded, validated stream: what the receiver stores and tests compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// The stream's labels (at least one, names valid and unique).
    pub labels: BTreeMap<String, String>,
    /// The entries, in the order of the request.
    pub entries: Vec<Entry>,
}

/// A decoded, validated entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    /// The line, byte for byte.
    pub line: String,
    /// Structured metadata, in request order (empty for most clients).
    pub structured_metadata: Vec<(String, String)>,
}

/// Why a push body was refused. Each is a client error (HTTP 400), as in Loki.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The `Content-Type` is neither JSON nor protobuf.
    #[error(
        "unsupported content type {0:?}: send application/json or application/x-protobuf (snappy)"
    )]
    UnsupportedContentType(String),
    /// The `Content-Encoding` is not one Loki inflates.
    #[error("unsupported content encoding {0:?}: send gzip, deflate, snappy or none")]
    UnsupportedContentEncoding(String),
    /// The gzip or deflate stream is corrupt.
    #[error("invalid {encoding} body: {reason}")]
    Compression {
        /// `gzip` or `deflate`.
        encoding: &'static str,
        /// What the decompressor said.
        reason: String,
    },
    /// The protobuf body is not valid snappy block format.
    #[error("invalid snappy body: {0}; protobuf bodies must be snappy block-compressed")]
    Snappy(String),
    /// The body inflates past [`MAX_DECODED_BYTES`].
    #[error("body inflates past {limit} bytes: send smaller batches")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A JSON body is not UTF-8.
    #[error("json body is not valid utf-8 at byte {0}")]
    InvalidUtf8(usize),
    /// The JSON is malformed or not of the push shape.
    #[error("invalid json push body: {0}")]
    Json(String),
    /// The protobuf is malformed (this includes strings that are not UTF-8).
    #[error("invalid protobuf push body: {0}")]
    Protobuf(String),
    /// A stream's labels are unparsable or invalid.
    #[error("invalid labels {labels:?}: {reason}")]
    Labels {
        /// The labels as received.
        labels: String,
        /// What is wrong with them.
        reason: LabelsError,
    },
    /// A timestamp string is not an integer count of nanoseconds.
    #[error("invalid timestamp {0:?}: expected nanoseconds since the epoch as a decimal string")]
    Timestamp(String),
    /// A protobuf entry has no timestamp.
    #[error("entry without a timestamp in stream {0:?}")]
    MissingTimestamp(String),
}

/// Decodes and validates a push body as Loki does, from the request's `Content-Type` and
/// `Content-Encoding` headers (`None` when absent).
///
/// JSON (`application/json`) may be gzip- or deflate-encoded; protobuf (`application/x-protobuf`,
/// also assumed when there is no content type) is snappy block-compressed.
///
/// # Examples
/// ```
/// use diagtool_model::loki::wire::decode_push;
/// let body = br#"{"streams":[{"stream":{"job":"app"},"values":[["1700000000000000000","hi"]]}]}"#;
/// let streams = decode_push(Some("application/json"), None, body).unwrap();
/// assert_eq!(streams[0].entries[0].line, "hi");
/// assert!(decode_push(Some("text/plain"), None, body).is_err());
/// ```
pub fn decode_push(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
) -> Result<Vec<Stream>, PushError> {
    let inflated;
    let body = match content_encoding.map(str::trim).unwrap_or("") {
        "" | "identity" | "snappy" => body,
        "gzip" => {
            inflated = inflate(flate2::read::GzDecoder::new(body), "gzip")?;
            &inflated[..]
        }
        "deflate" => {
            inflated = inflate(flate2::read::DeflateDecoder::new(body), "deflate")?;
            &inflated[..]
        }
        other => return Err(PushError::UnsupportedContentEncoding(other.to_owned())),
    };
    let media = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match media.as_str() {
        "application/json" => decode_json(body),
        "" | "application/x-protobuf" => decode_protobuf(body),
        _ => Err(PushError::UnsupportedContentType(
            content_type.unwrap_or("").to_owned(),
        )),
    }
}

fn inflate(reader: impl Read, encoding: &'static str) -> Result<Vec<u8>, PushError> {
    let mut out = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it".
    reader
        .take(MAX_DECODED_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| PushError::Compression {
            encoding,
            reason: e.to_string(),
        })?;
    if out.len() > MAX_DECODED_BYTES {
        return Err(PushError::TooLarge {
            limit: MAX_DECODED_BYTES,
        });
    }
    Ok(out)
}

fn decode_json(body: &[u8]) -> Result<Vec<Stream>, PushError> {
    let text = std::str::from_utf8(body).map_err(|e| PushError::InvalidUtf8(e.valid_up_to()))?;
    let push: JsonPush = serde_json::from_str(text).map_err(|e| PushError::Json(e.to_string()))?;
    push.streams
        .into_iter()
        .map(|s| {
            let labels = validate_label_map(s.stream)?;
            let entries = s
                .values
                .into_iter()
                .map(|v| {
                    let ts_ns =
                        v.ts.parse::<i64>()
                            .map_err(|_| PushError::Timestamp(v.ts.clone()))?;
                    Ok(Entry {
                        ts_ns,
                        line: v.line,
                        structured_metadata: v.structured_metadata,
                    })
                })
                .collect::<Result<_, PushError>>()?;
            Ok(Stream { labels, entries })
        })
        .collect()
}

fn validate_label_map(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>, PushError> {
    let err = |pairs: &[(String, String)], reason| PushError::Labels {
        labels: format_labels(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        reason,
    };
    let mut labels = BTreeMap::new();
    for (name, value) in &pairs {
        if !is_valid_label_name(name) {
            return Err(err(&pairs, LabelsError::InvalidName(name.clone())));
        }
        if labels.insert(name.clone(), value.clone()).is_some() {
            return Err(err(&pairs, LabelsError::Duplicate(name.clone())));
        }
    }
    finish_labels(labels).map_err(|reason| err(&pairs, reason))
}

fn decode_protobuf(body: &[u8]) -> Result<Vec<Stream>, PushError> {
    let len = snap::raw::decompress_len(body).map_err(|e| PushError::Snappy(e.to_string()))?;
    if len > MAX_DECODED_BYTES {
        return Err(PushError::TooLarge {
            limit: MAX_DECODED_BYTES,
        });
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| PushError::Snappy(e.to_string()))?;
    let push = <PushRequest as prost::Message>::decode(&raw[..])
        .map_err(|e| PushError::Protobuf(e.to_string()))?;
    push.streams
        .into_iter()
        .map(|s| {
            let labels = parse_labels(&s.labels).map_err(|reason| PushError::Labels {
                labels: s.labels.clone(),
                reason,
            })?;
            let entries = s
                .entries
                .into_iter()
                .map(|e| {
                    let ts = e
                        .timestamp
                        .ok_or_else(|| PushError::MissingTimestamp(s.labels.clone()))?;
                    let ts_ns = ts.to_ns().ok_or_else(|| {
                        PushError::Timestamp(format!("{}s+{}ns", ts.seconds, ts.nanos))
                    })?;
                    Ok(Entry {
                        ts_ns,
                        line: e.line,
                        structured_metadata: e
                            .structured_metadata
                            .into_iter()
                            .map(|p| (p.name, p.value))
                            .collect(),
                    })
                })
                .collect::<Result<_, PushError>>()?;
            Ok(Stream { labels, entries })
        })
        .collect()
}

/// Encodes a protobuf push request and snappy-compresses it (block format), ready to send with
/// `Content-Type: application/x-protobuf`.
pub fn encode_protobuf_snappy(request: &PushRequest) -> Vec<u8> {
    let raw = prost::Message::encode_to_vec(request);
    // Compression of an in-memory buffer fails only past snappy's 4 GiB input limit, far beyond
    // any batch; an empty body then fails loudly at the receiver instead of here.
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

// ---- JSON ---------------------------------------------------------------------------------------

/// The JSON push body, owned: `{"streams":[{"stream":{..},"values":[["<ns>","line"],..]}]}`.
///
/// Decoding keeps label pairs in body order (to report duplicates) and timestamps as text (to
/// quote a bad one); [`decode_push`] turns it into validated [`Stream`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonPush {
    /// The streams.
    pub streams: Vec<JsonStream>,
}

/// One stream of a [`JsonPush`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonStream {
    /// The label pairs, in body order.
    #[serde(
        serialize_with = "serialize_pairs",
        deserialize_with = "deserialize_pairs"
    )]
    pub stream: Vec<(String, String)>,
    /// The entries.
    pub values: Vec<JsonValue>,
}

/// One entry of a [`JsonStream`]: `["<ns>", "line"]` or `["<ns>", "line", {metadata}]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonValue {
    /// Nanoseconds since the epoch, as the decimal string Loki requires.
    pub ts: String,
    /// The line.
    pub line: String,
    /// Structured metadata (the optional third element).
    pub structured_metadata: Vec<(String, String)>,
}

fn serialize_pairs<S: Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        map.serialize_entry(k, v)?;
    }
    map.end()
}

fn deserialize_pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    d.deserialize_map(PairsVisitor)
}

struct PairsVisitor;

impl<'de> Visitor<'de> for PairsVisitor {
    type Value = Vec<(String, String)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of string label values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some(pair) = map.next_entry::<String, String>()? {
            pairs.push(pair);
        }
        Ok(pairs)
    }
}

impl Serialize for JsonValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let with_meta = !self.structured_metadata.is_empty();
        let mut t = s.serialize_tuple(if with_meta { 3 } else { 2 })?;
        t.serialize_element(&self.ts)?;
        t.serialize_element(&self.line)?;
        if with_meta {
            t.serialize_element(&Pairs(&self.structured_metadata))?;
        }
        t.end()
    }
}

struct Pairs<'a>(&'a [(String, String)]);

impl Serialize for Pairs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_pairs(self.0, s)
    }
}

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = JsonValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(r#"an entry ["<nanoseconds as a string>", "line"] with optional metadata"#)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonValue, A::Error> {
        let ts: String = seq
            .next_element()?
            .ok_or_else(|| de::Error::custom("entry without a timestamp"))?;
        let line: String = seq
            .next_element()?
            .ok_or_else(|| de::Error::custom("entry without a line"))?;
        let structured_metadata = seq
            .next_element::<MetaPairs>()?
            .map(|m| m.0)
            .unwrap_or_default();
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom("entry with more than 3 elements"));
        }
        Ok(JsonValue {
            ts,
            line,
            structured_metadata,
        })
    }
}

struct MetaPairs(Vec<(String, String)>);

impl<'de> Deserialize<'de> for MetaPairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_pairs(d).map(MetaPairs)
    }
}

/// A borrowed stream to encode as JSON without copying lines: serialize a [`JsonPushRef`] straight
/// into a writer (a gzip encoder, say).
#[derive(Debug, Clone, Copy)]
pub struct JsonStreamRef<'a> {
    /// The stream's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// `(ts_ns, line)` pairs.
    pub entries: &'a [(i64, String)],
}

/// A borrowed JSON push body, serialized in the same shape as [`JsonPush`].
///
/// # Examples
/// ```
/// use std::collections::BTreeMap;
/// use diagtool_model::loki::wire::{JsonPushRef, JsonStreamRef};
/// let labels = BTreeMap::from([("job".to_owned(), "app".to_owned())]);
/// let entries = vec![(1_i64, "hi".to_owned())];
/// let streams = [JsonStreamRef { labels: &labels, entries: &entries }];
/// let json = serde_json::to_string(&JsonPushRef { streams: &streams }).unwrap();
/// assert_eq!(json, r#"{"streams":[{"stream":{"job":"app"},"values":[["1","hi"]]}]}"#);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct JsonPushRef<'a> {
    /// The streams.
    pub streams: &'a [JsonStreamRef<'a>],
}

impl Serialize for JsonPushRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::encode::JsonPush(self.streams).serialize(s)
    }
}

impl super::encode::PushStream for JsonStreamRef<'_> {
    fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn entry_count(&self) -> usize {
        self.entries.len()
    }

    fn entries(&self) -> impl Iterator<Item = (i64, &str)> {
        self.entries.iter().map(|(ts, line)| (*ts, line.as_str()))
    }
}

/// `n` in decimal, written at the end of `buf` (20 bytes hold any i64 with its sign), without
/// allocating: Loki's JSON carries every timestamp as a decimal string.
///
/// # Examples
/// ```
/// let mut buf = [0u8; 20];
/// assert_eq!(diagtool_model::loki::wire::decimal(-42, &mut buf), "-42");
/// assert_eq!(diagtool_model::loki::wire::decimal(i64::MIN, &mut buf), "-9223372036854775808");
/// ```
pub fn decimal(n: i64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    let mut v = n.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    // Only ASCII digits and '-' were written.
    std::str::from_utf8(&buf[at..]).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "wire_tests.rs"]
mod tests;
