//! Cheap, stable fingerprints of corpus files, stored in an index to detect a stale or foreign corpus.
//!
//! A file's fingerprint is its size and a 64-bit FNV-1a hash of up to three 64 KiB samples (head,
//! middle, tail). Invariant: any change of size, or of bytes in a sampled region, changes it; an
//! in-place edit that keeps the size and misses the samples is not detected (documented trade-off:
//! checking a 1 TB corpus must not read 1 TB).

use crate::error::{CorpusError, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const SAMPLE: u64 = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFingerprint {
    pub size: u64,
    /// FNV-1a 64 of the size and the sampled bytes, as hex (JSON-safe).
    pub hash: u64,
}

/// 64-bit FNV-1a (stable across Rust versions, unlike `DefaultHasher`).
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Fingerprint one file.
pub fn fingerprint_file(path: &Path) -> Result<FileFingerprint> {
    let mut f = std::fs::File::open(path).map_err(|e| CorpusError::io(path, e))?;
    let size = f.metadata().map_err(|e| CorpusError::io(path, e))?.len();
    let mut h = Fnv::new();
    h.write(&size.to_le_bytes());
    let mut starts = vec![0u64];
    if size > SAMPLE {
        starts.push(size / 2 - SAMPLE / 2);
        starts.push(size - SAMPLE);
    }
    let mut buf = vec![0u8; SAMPLE.min(size) as usize];
    for s in starts {
        f.seek(SeekFrom::Start(s))
            .map_err(|e| CorpusError::io(path, e))?;
        f.read_exact(&mut buf)
            .map_err(|e| CorpusError::io(path, e))?;
        h.write(&buf);
    }
    Ok(FileFingerprint { size, hash: h.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, vec![b'a'; 300_000]).unwrap();
        let a = fingerprint_file(&p).unwrap();
        assert_eq!(a, fingerprint_file(&p).unwrap());
        let mut bytes = vec![b'a'; 300_000];
        bytes[299_999] = b'b'; // tail sample
        std::fs::write(&p, &bytes).unwrap();
        assert_ne!(a, fingerprint_file(&p).unwrap());
        std::fs::write(&p, b"").unwrap();
        assert_eq!(fingerprint_file(&p).unwrap().size, 0);
    }
}
