//! Model throughput on the CPU backend, measured in one run so the ratios are meaningful on a
//! shared machine:
//! - training tokens/s (forward + backward + global-norm clipping + AdamW step),
//! - inference forward tokens/s,
//! - forward + activation-gradient backward with taps on every block linear layer (frozen model),
//!   with and without copying the taps to host memory.
//!
//! The influence engine's goal (issue 3, P1) is measured against the training figure.
//!
//! `cargo bench -p tda-benches --bench model_throughput` (set `TDA_BENCH_QUICK=1` for the tiny model only).

use std::time::Instant;

use burn::module::AutodiffModule;
use tda_model::device::{Cpu, CpuAutodiff};
use tda_model::{frozen, summed_nll, tap, ModelConfig, TokenBatch, Transformer};
use tda_train::Trainer;

struct Case {
    name: &'static str,
    config: ModelConfig,
    batch: usize,
    seq_len: usize,
    steps: usize,
}

fn batch(case: &Case, seed: u64) -> TokenBatch {
    tda_benches::random_batch(case.config.vocab_size, case.batch, case.seq_len, seed)
}

/// Runs `f` once to warm up, then `n` times; returns tokens/s.
fn measure(tokens_per_call: usize, n: usize, mut f: impl FnMut(usize)) -> f64 {
    f(0);
    let t0 = Instant::now();
    for i in 1..=n {
        f(i);
    }
    (tokens_per_call * n) as f64 / t0.elapsed().as_secs_f64()
}

fn run(case: &Case) {
    let device = Default::default();
    let tokens = case.batch * case.seq_len;
    let params = tda_benches::bench_train_params(case.seq_len, case.batch);
    let model = Transformer::<CpuAutodiff>::init(&case.config, 0, &device);
    let mut trainer = Trainer::new(model, &params).unwrap();
    let train_tps = measure(tokens, case.steps, |i| {
        trainer.step(&batch(case, i as u64)).unwrap();
    });
    let model = trainer.into_model();

    let inference: Transformer<Cpu> = model.valid();
    let fwd_tps = measure(tokens, case.steps, |i| {
        let b = batch(case, i as u64);
        let logits = inference.forward(b.to_tensor::<Cpu>(&device));
        let _ = logits.narrow(1, 0, 1).into_data();
    });

    let fz = frozen(&model);
    let blocks = |name: &str| name != "lm_head";
    let n_layers = model.linear_layers().len() - 1;
    let tap_tps = measure(tokens, case.steps, |i| {
        let b = batch(case, i as u64);
        let taps = tap(
            &fz,
            b.to_tensor::<CpuAutodiff>(&device),
            &blocks,
            false,
            |l| summed_nll(l, &b),
        );
        assert_eq!(taps.layers.len(), n_layers);
    });
    let tap_host_tps = measure(tokens, case.steps, |i| {
        let b = batch(case, i as u64);
        let taps = tap(
            &fz,
            b.to_tensor::<CpuAutodiff>(&device),
            &blocks,
            false,
            |l| summed_nll(l, &b),
        );
        let floats: usize = taps
            .layers
            .into_iter()
            .map(|t| {
                t.a.into_data().to_vec::<f32>().unwrap().len()
                    + t.g.into_data().to_vec::<f32>().unwrap().len()
            })
            .sum();
        assert!(floats > 0);
    });
    println!(
        "{:<22} {:>9.1}M params  B={:<2} T={:<4} | train {:>8.0} tok/s | forward {:>8.0} tok/s | fwd+bwd taps {:>8.0} tok/s ({:.2}× train) | taps→host {:>8.0} tok/s ({:.2}× train)",
        case.name,
        case.config.n_params() as f64 / 1e6,
        case.batch,
        case.seq_len,
        train_tps,
        fwd_tps,
        tap_tps,
        tap_tps / train_tps,
        tap_host_tps,
        tap_host_tps / train_tps,
    );
}

fn main() {
    let threads = rayon::current_num_threads();
    println!("model throughput, CPU backend burn-flex, {threads} threads (ratios within this run)");
    let mut cases = vec![Case {
        name: "configs/tiny.toml",
        config: ModelConfig::gpt2(128, 2, 4, 1024, 128),
        batch: 16,
        seq_len: 64,
        steps: 20,
    }];
    if std::env::var_os("TDA_BENCH_QUICK").is_none() {
        cases.push(Case {
            name: "GPT-2-small shape",
            config: ModelConfig::gpt2(768, 12, 12, 50257, 1024),
            batch: 1,
            seq_len: 512,
            steps: 3,
        });
    }
    for c in &cases {
        run(c);
    }
}
