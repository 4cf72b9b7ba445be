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

/// The tiny GPT-2 shape of the planted-fact benches (2 layers, hidden 64, 128 positions).
pub fn tiny_gpt2(vocab_size: usize, eot: u32) -> tda_model::ModelConfig {
    tda_eval::tiny_gpt2(vocab_size, eot)
}

/// Settings of the planted-fact benches: 64-token sequences, batches of 16, warm-up 10 %.
pub fn planted_params(steps: usize, lr: f64, proximal: f64, seed: u64) -> tda_train::TrainParams {
    tda_train::TrainParams {
        seq_len: 64,
        batch_size: 16,
        steps,
        lr,
        warmup_steps: steps / 10,
        min_lr_ratio: 0.1,
        weight_decay: 0.0,
        grad_clip: 1.0,
        seed,
        checkpoint_every: 0,
        proximal,
    }
}

/// Trains `model` on `seqs` in order (cycling), `p.steps` steps; returns it and the last loss.
pub fn train_in_order<B: burn::tensor::backend::AutodiffBackend>(
    model: tda_model::Transformer<B>,
    seqs: &[Vec<u32>],
    p: &tda_train::TrainParams,
) -> (tda_model::Transformer<B>, f64) {
    let mut trainer = tda_train::Trainer::new(model, p).expect("valid settings");
    let mut loss = 0.0;
    for s in 0..p.steps {
        let b: Vec<Vec<u32>> = (0..p.batch_size)
            .map(|i| seqs[(s * p.batch_size + i) % seqs.len()].clone())
            .collect();
        loss = trainer
            .step(&TokenBatch::new(&b, 0).expect("batch"))
            .expect("step")
            .0;
    }
    (trainer.into_model(), loss)
}

/// Documents `(id, text)` in memory as a candidate source.
pub fn docs_source(items: &[(String, String)]) -> tda_trace::DocSource {
    tda_trace::DocSource::docs(
        items
            .iter()
            .enumerate()
            .map(|(i, (id, text))| tda_corpus::Document {
                title: None,
                id: id.clone(),
                text: text.clone(),
                source: tda_corpus::SourceRef {
                    path: "mem".into(),
                    format: tda_corpus::Format::Jsonl,
                    row: i as u64,
                    byte_offset: 0,
                    byte_len: 0,
                },
            })
            .collect(),
    )
}

/// Trains on prompt/completion pairs `(ids, loss_from)`, one pair per sequence (right-padded with
/// `pad`), the loss on the completion only, cycling in order; returns the model and the last loss.
pub fn train_pairs_in_order<B: burn::tensor::backend::AutodiffBackend>(
    model: tda_model::Transformer<B>,
    pairs: &[(Vec<u32>, usize)],
    pad: u32,
    p: &tda_train::TrainParams,
) -> (tda_model::Transformer<B>, f64) {
    let mut trainer = tda_train::Trainer::new(model, p).expect("valid settings");
    let mut loss = 0.0;
    for s in 0..p.steps {
        let picked: Vec<&(Vec<u32>, usize)> = (0..p.batch_size)
            .map(|i| &pairs[(s * p.batch_size + i) % pairs.len()])
            .collect();
        let seqs: Vec<Vec<u32>> = picked.iter().map(|x| x.0.clone()).collect();
        let from: Vec<usize> = picked.iter().map(|x| x.1).collect();
        let batch = TokenBatch::new(&seqs, pad)
            .and_then(|b| b.with_loss_from(&from))
            .expect("batch");
        loss = trainer.step(&batch).expect("step").0;
    }
    (trainer.into_model(), loss)
}
