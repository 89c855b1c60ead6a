//! File identity: device + inode, confirmed by a fingerprint of the file's first bytes.
//!
//! Inodes are reused once a file is deleted, so `(dev, ino)` alone can mistake a new file for an old
//! one and skip its start. The head fingerprint (a hash of up to [`HEAD_MAX`] leading bytes, with the
//! length it covers) tells them apart, and also reveals a file truncated and rewritten in place. The
//! hash is FNV-1a, fixed forever because fingerprints are stored in checkpoints.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use serde::{Deserialize, Serialize};

/// How many leading bytes the fingerprint covers at most.
pub const HEAD_MAX: u64 = 256;

/// Device and inode of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileId {
    /// The identity of the file these metadata describe.
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A hash of a file's first `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fingerprint {
    /// How many bytes the hash covers (at most [`HEAD_MAX`]; less while the file is shorter).
    pub len: u64,
    /// FNV-1a 64 of those bytes.
    pub hash: u64,
}

impl Fingerprint {
    /// Fingerprints the first `min(size, HEAD_MAX)` bytes of `file`.
    pub fn of_file(file: &File, size: u64) -> io::Result<Self> {
        let len = size.min(HEAD_MAX);
        let bytes = read_head(file, len)?;
        Ok(Self::of_bytes(&bytes))
    }

    /// Fingerprints `bytes` (at most [`HEAD_MAX`] of them are used).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        let n = bytes.len().min(HEAD_MAX as usize);
        Self {
            len: n as u64,
            hash: fnv1a(&bytes[..n]),
        }
    }

    /// Whether `file` still starts with the bytes this fingerprint was taken from.
    ///
    /// A file now shorter than the fingerprint does not match (it was truncated).
    pub fn matches(&self, file: &File, size: u64) -> io::Result<bool> {
        if size < self.len {
            return Ok(false);
        }
        let bytes = read_head(file, self.len)?;
        Ok(bytes.len() as u64 == self.len && fnv1a(&bytes) == self.hash)
    }

    /// Whether the fingerprint covers less than it could (the file was shorter than [`HEAD_MAX`]).
    pub fn is_partial(&self) -> bool {
        self.len < HEAD_MAX
    }
}

fn read_head(file: &File, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// FNV-1a, 64 bits: stable across Rust versions, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fnv_is_pinned() {
        // Stored in checkpoints: these values must never change.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn identity_tells_a_rewritten_file_from_a_grown_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, b"first line\n").unwrap();
        let f = File::open(&p).unwrap();
        let fp = Fingerprint::of_file(&f, 11).unwrap();
        assert_eq!(fp.len, 11);
        assert!(fp.is_partial());
        // Growing keeps the head: still the same file.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"more\n")
            .unwrap();
        assert!(fp.matches(&f, 16).unwrap());
        // Rewritten in place with other content: not the same.
        std::fs::write(&p, b"other line!\nand more\n").unwrap();
        assert!(!fp.matches(&f, 21).unwrap());
        // Shorter than the fingerprint: truncated.
        std::fs::write(&p, b"x\n").unwrap();
        assert!(!fp.matches(&f, 2).unwrap());
        // Device and inode come from metadata; a second file differs.
        let q = dir.path().join("b.log");
        std::fs::write(&q, b"first line\n").unwrap();
        let a = FileId::of(&std::fs::metadata(&p).unwrap());
        let b = FileId::of(&std::fs::metadata(&q).unwrap());
        assert_ne!(a, b);
        assert_eq!(a.dev, b.dev);
        // Same bytes, same fingerprint: only the inode tells them apart.
        assert_eq!(
            Fingerprint::of_file(&File::open(&q).unwrap(), 11).unwrap(),
            fp
        );
    }

    #[test]
    fn fingerprint_covers_at_most_head_max() {
        let long = vec![b'x'; 1000];
        let fp = Fingerprint::of_bytes(&long);
        assert_eq!(fp.len, HEAD_MAX);
        assert!(!fp.is_partial());
        assert_eq!(fp, Fingerprint::of_bytes(&long[..HEAD_MAX as usize]));
    }
}
