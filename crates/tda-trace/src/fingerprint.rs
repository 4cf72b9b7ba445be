//! Model fingerprint stored in factor files: a hash of the model folder's `config.json` and weight
//! bytes (`model.safetensors`, or the shard index and every shard it lists). The tokenizer is not
//! part of it (the factors are matrices over the model's parameters).
//!
//! The hash is a non-cryptographic 128-bit (two independent 64-bit lanes) multiply-rotate hash over
//! 8-byte words, with the length of every part mixed in; it detects any change of weights or config
//! (it is not meant to resist deliberate collisions).

use std::io::Read;
use std::path::Path;

use crate::error::{io, Result, TraceError};

struct Hasher {
    h: [u64; 2],
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;

impl Hasher {
    fn new() -> Self {
        Self {
            h: [0x243F_6A88_85A3_08D3, 0x1319_8A2E_0370_7344],
        }
    }
    fn word(&mut self, w: u64) {
        self.h[0] = (self.h[0] ^ w).wrapping_mul(P1).rotate_left(29);
        self.h[1] = (self.h[1] ^ w.rotate_left(17))
            .wrapping_mul(P2)
            .rotate_left(31);
    }
    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rem = chunks.remainder();
        if !rem.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rem.len()].copy_from_slice(rem);
            self.word(u64::from_le_bytes(buf) ^ (0xFF << 56));
        }
    }
    fn file(&mut self, path: &Path) -> Result<()> {
        let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
        let mut buf = vec![0u8; 8 << 20];
        let mut total = 0u64;
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let n = f.read(&mut buf).map_err(|e| io(path, e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            // Keep word alignment across reads.
            carry.extend_from_slice(&buf[..n]);
            let whole = carry.len() / 8 * 8;
            self.bytes(&carry[..whole]);
            carry.drain(..whole);
        }
        self.bytes(&carry);
        self.word(total);
        Ok(())
    }
    fn finish(&self) -> String {
        let mix = |mut x: u64| {
            x ^= x >> 33;
            x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
            x ^= x >> 33;
            x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
            x ^ (x >> 33)
        };
        format!("tda-fp1:{:016x}{:016x}", mix(self.h[0]), mix(self.h[1]))
    }
}

/// Fingerprint of an HF model folder (config + weights).
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    let mut h = Hasher::new();
    let config = dir.join("config.json");
    h.bytes(b"config.json");
    h.file(&config)?;
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() {
        h.bytes(b"model.safetensors");
        h.file(&single)?;
    } else if index.exists() {
        h.bytes(b"model.safetensors.index.json");
        h.file(&index)?;
        let text = std::fs::read_to_string(&index).map_err(|e| io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| TraceError::Usage(format!("{}: invalid JSON ({e})", index.display())))?;
        let mut shards: Vec<String> = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.values()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        for s in shards {
            h.bytes(s.as_bytes());
            h.file(&dir.join(&s))?;
        }
    } else {
        return Err(TraceError::Usage(format!(
            "{}: no model.safetensors or model.safetensors.index.json",
            dir.display()
        )));
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_byte_change_changes_the_fingerprint() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), b"{\"a\":1}").unwrap();
        let w: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(d.path().join("model.safetensors"), &w).unwrap();
        let f0 = model_fingerprint(d.path()).unwrap();
        assert_eq!(f0, model_fingerprint(d.path()).unwrap());
        for pos in [0usize, 8, 50_000, 100_002] {
            let mut w2 = w.clone();
            w2[pos] ^= 1;
            std::fs::write(d.path().join("model.safetensors"), &w2).unwrap();
            assert_ne!(f0, model_fingerprint(d.path()).unwrap(), "byte {pos}");
        }
        std::fs::write(d.path().join("model.safetensors"), &w).unwrap();
        std::fs::write(d.path().join("config.json"), b"{\"a\":2}").unwrap();
        assert_ne!(f0, model_fingerprint(d.path()).unwrap());
        // Appending a zero byte changes it too (lengths are mixed in).
        std::fs::write(d.path().join("config.json"), b"{\"a\":1}").unwrap();
        let mut w3 = w.clone();
        w3.push(0);
        std::fs::write(d.path().join("model.safetensors"), &w3).unwrap();
        assert_ne!(f0, model_fingerprint(d.path()).unwrap());
    }
}
