//! Turns a [`Batch`] into a push body, once: the body is kept for every retry of the batch.
//!
//! JSON is serialized straight from the batch's borrowed lines into a reused buffer (no copy of a
//! line, no per-entry allocation; timestamps are formatted on the stack), then gzipped in one pass.
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

/// A buffer grown past this is released after use rather than kept for the next batch.
const KEEP_BUFFER_BYTES: usize = 8 << 20;

/// Encodes batches; owns the buffers reused from one batch to the next.
#[derive(Debug)]
pub(crate) struct Encoder {
    encoding: LokiEncoding,
    json: Vec<u8>,
}

/// An encoded body and the headers that describe it.
#[derive(Debug, Clone)]
pub(crate) struct Body {
    pub(crate) bytes: Bytes,
    pub(crate) content_type: &'static str,
    pub(crate) content_encoding: Option<&'static str>,
}

impl Encoder {
    pub(crate) fn new(encoding: LokiEncoding) -> Self {
        Self {
            encoding,
            json: Vec::new(),
        }
    }

    /// Encodes the batch's streams. For protobuf the lines are moved out of `batch.streams`.
    pub(crate) fn encode(&mut self, batch: &mut Batch) -> anyhow::Result<Body> {
        match self.encoding {
            LokiEncoding::Json => self.json_gzip(batch),
            LokiEncoding::Protobuf => Ok(protobuf_snappy(batch)),
        }
    }

    fn json_gzip(&mut self, batch: &Batch) -> anyhow::Result<Body> {
        let streams: Vec<JsonStreamRef<'_>> = batch
            .streams
            .iter()
            .map(|s| JsonStreamRef {
                labels: &s.labels,
                entries: &s.entries,
            })
            .collect();
        self.json.clear();
        serde_json::to_writer(&mut self.json, &JsonPushRef { streams: &streams })
            .context("serializing a batch as json")?;
        // Log lines compress 5-10x even at the fastest level, which is what keeps up with the reader.
        let mut gz = GzEncoder::new(
            Vec::with_capacity(self.json.len() / 4 + 64),
            Compression::fast(),
        );
        gz.write_all(&self.json)
            .and_then(|()| gz.finish())
            .map(|compressed| {
                if self.json.capacity() > KEEP_BUFFER_BYTES {
                    self.json = Vec::new();
                }
                Body {
                    bytes: Bytes::from(compressed),
                    content_type: "application/json",
                    content_encoding: Some("gzip"),
                }
            })
            .context("gzipping a json batch")
    }
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
