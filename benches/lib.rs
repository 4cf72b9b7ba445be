//! Shared helpers for the benchmarks in this folder.

use tda_model::TokenBatch;

/// `b` sequences of `t` pseudo-random token ids below `vocab`, deterministic in `seed`.
pub fn random_batch(vocab: usize, b: usize, t: usize, seed: u64) -> TokenBatch {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let seqs: Vec<Vec<u32>> = (0..b)
        .map(|_| {
            (0..t)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((x >> 33) % vocab as u64) as u32
                })
                .collect()
        })
        .collect();
    TokenBatch::new(&seqs, 0).expect("non-empty batch")
}
