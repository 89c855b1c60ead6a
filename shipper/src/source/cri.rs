//! Kubernetes pod logs in the CRI format, as containerd and CRI-O write them for kubelet:
//! `<RFC3339Nano> <stdout|stderr> <P|F> <message>`, one record a line.
//!
//! A line longer than the runtime's buffer is split into `P` (partial) records closed by an `F`
//! (full) record; [`CriDecoder`] merges them per stream through [`PartialMerger`], so an entry is
//! the container's whole line, timestamped with the runtime's time of its last record. Labels
//! come from the path alone (`<namespace>_<pod>_<uid>/<container>/<n>.log`, see [`pod_of`]), so
//! no API server is needed.

use std::path::Path;

use crate::source::docker::{Stream, parse_rfc3339_ns};
use crate::source::merge::{Merged, PartialMerger};

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CriError {
    /// Fewer than the three leading fields.
    #[error("not a CRI log record: expected '<time> <stdout|stderr> <P|F> <message>'")]
    Shape,
    /// The stream is neither `stdout` nor `stderr`.
    #[error("unknown CRI stream '{0}': expected \"stdout\" or \"stderr\"")]
    Stream(String),
    /// The tag is neither `P` nor `F`.
    #[error("unknown CRI tag '{0}': expected \"P\" or \"F\"")]
    Tag(String),
    /// The time is not RFC 3339.
    #[error("invalid CRI time '{0}': expected RFC 3339 like 2024-05-01T12:00:00.123456789Z")]
    Time(String),
}

/// Decodes CRI records and merges partial ones, per stream.
#[derive(Debug)]
pub struct CriDecoder {
    merger: PartialMerger,
}

impl CriDecoder {
    /// A decoder keeping at most `max` bytes of a merged line.
    pub fn new(max: usize) -> Self {
        Self {
            merger: PartialMerger::new(max),
        }
    }

    /// Decodes one record (without its newline) read at file offset `start`. Returns the merged
    /// line when the record completes one, `None` when it is a `P` record that was held.
    pub fn decode(&mut self, record: &[u8], start: u64) -> Result<Option<Merged>, CriError> {
        let mut fields = record.splitn(4, |b| *b == b' ');
        let (Some(time), Some(stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(CriError::Shape);
        };
        let message = fields.next().unwrap_or_default();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let stream = match stream {
            b"stdout" => Stream::Stdout,
            b"stderr" => Stream::Stderr,
            other => return Err(CriError::Stream(text(other))),
        };
        // Tags are ':'-separated flags; the first says partial or full.
        let complete = match tag.split(|b| *b == b':').next().unwrap_or_default() {
            b"F" => true,
            b"P" => false,
            _ => return Err(CriError::Tag(text(tag))),
        };
        let ts = std::str::from_utf8(time)
            .ok()
            .and_then(parse_rfc3339_ns)
            .ok_or_else(|| CriError::Time(text(time)))?;
        Ok(self.merger.push(stream, ts, message, complete, start))
    }

    /// The offset of the first record of an unfinished line, if a stream holds one.
    pub fn held_start(&self) -> Option<u64> {
        self.merger.held_start()
    }

    /// Takes the unfinished lines (the file is finished), stdout first.
    pub fn take_partials(&mut self) -> Vec<Merged> {
        self.merger.take_partials()
    }
}

/// A pod log's place: `(namespace, pod, container)` from
/// `<namespace>_<pod>_<uid>/<container>/<n>.log`. Namespace and pod names cannot hold `_` (they
/// are DNS names), so the first two `_` split the directory. A path of another shape yields
/// `unknown` parts rather than no labels.
pub fn pod_of(path: &Path) -> (String, String, String) {
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or("unknown")
            .to_string()
    };
    let container_dir = path.parent();
    let container = name(container_dir);
    let pod_dir = name(container_dir.and_then(Path::parent));
    let mut parts = pod_dir.splitn(3, '_');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(pod), Some(_uid)) if !ns.is_empty() && !pod.is_empty() => {
            (ns.to_string(), pod.to_string(), container)
        }
        _ => ("unknown".to_string(), pod_dir, container),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn full_records_decode_with_their_time_and_stream() {
        let mut d = CriDecoder::new(1024);
        let m = d
            .decode(b"2024-05-01T12:00:00.123456789Z stderr F boom: a b  c", 7)
            .unwrap()
            .unwrap();
        assert_eq!(m.stream, Stream::Stderr);
        assert_eq!(m.ts_ns, 1_714_564_800_123_456_789);
        assert_eq!(m.line, b"boom: a b  c");
        assert_eq!(m.start, 7);
        // An empty message, with or without the separating space.
        for rec in [
            &b"2024-05-01T12:00:00Z stdout F "[..],
            b"2024-05-01T12:00:00Z stdout F",
        ] {
            assert_eq!(d.decode(rec, 0).unwrap().unwrap().line, b"");
        }
    }

    #[test]
    fn partial_records_merge_per_stream_until_their_full_record() {
        let mut d = CriDecoder::new(1024);
        assert_eq!(
            d.decode(b"2024-05-01T12:00:00Z stdout P hel", 0).unwrap(),
            None
        );
        let e = d
            .decode(b"2024-05-01T12:00:01Z stderr F err", 40)
            .unwrap()
            .unwrap();
        assert_eq!(e.line, b"err");
        assert_eq!(d.held_start(), Some(0));
        assert_eq!(
            d.decode(b"2024-05-01T12:00:02Z stdout P lo ", 80).unwrap(),
            None
        );
        let m = d
            .decode(b"2024-05-01T12:00:03Z stdout F world", 120)
            .unwrap()
            .unwrap();
        assert_eq!((m.line.as_slice(), m.start), (&b"hello world"[..], 0));
        assert_eq!(m.ts_ns, 1_714_564_803_000_000_000);
        assert_eq!(d.held_start(), None);
    }

    #[test]
    fn bad_records_are_errors_naming_the_field() {
        let mut d = CriDecoder::new(64);
        assert_eq!(d.decode(b"just text", 0), Err(CriError::Shape));
        assert!(matches!(
            d.decode(b"2024-05-01T12:00:00Z tty F x", 0),
            Err(CriError::Stream(s)) if s == "tty"
        ));
        assert!(matches!(
            d.decode(b"2024-05-01T12:00:00Z stdout X x", 0),
            Err(CriError::Tag(_))
        ));
        assert!(matches!(
            d.decode(b"yesterday stdout F x", 0),
            Err(CriError::Time(_))
        ));
        assert_eq!(d.held_start(), None, "a bad record holds nothing");
    }

    #[test]
    fn pod_labels_come_from_the_path() {
        let p = Path::new(
            "/var/log/pods/kube-system_coredns-5d78c9869d-abcde_0f1e2d3c-aaaa/coredns/3.log",
        );
        assert_eq!(
            pod_of(p),
            (
                "kube-system".into(),
                "coredns-5d78c9869d-abcde".into(),
                "coredns".into()
            )
        );
        let odd = Path::new("/logs/strange/app/0.log");
        assert_eq!(
            pod_of(odd),
            ("unknown".into(), "strange".into(), "app".into())
        );
    }
}
