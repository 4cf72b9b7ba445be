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

/// Training settings for throughput runs: constant learning rate (no warm-up, no schedule end in
/// sight), clipping on, no checkpoints — only the cost of a step matters.
pub fn bench_train_params(seq_len: usize, batch_size: usize) -> tda_train::TrainParams {
    tda_train::TrainParams {
        seq_len,
        batch_size,
        steps: 1_000_000,
        lr: 1e-4,
        warmup_steps: 0,
        min_lr_ratio: 0.1,
        weight_decay: 0.01,
        grad_clip: 1.0,
        seed: 0,
        checkpoint_every: 0,
        proximal: 0.0,
    }
}
