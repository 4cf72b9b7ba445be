//! Influence-scoring throughput (issue 3, P1) and fit timings, CPU backend, in one run:
//!
//! P1 = scoring candidate tokens/s (32 queries, rank 32, all in one pass: forward + activation-
//!      gradient backward with taps, device → host copy, query-batched contraction, top-K)
//!      ÷ training tokens/s (`tda_train::Trainer::step`: forward + backward + AdamW) of the same model.
//!
//! Cases: configs/tiny.toml's shape (all linear layers incl. lm_head, EK-FAC fitted here, with the
//! covariance pass / eigendecompositions / Λ pass timed) and a GPT-2-small shape (block layers; its
//! factors are `diagonal` to keep the bench short — the scoring kernel's cost does not depend on the
//! strategy, the queries are rank-32 in every case; eigendecomposition times per matrix size are
//! measured separately with faer).
//!
//! `cargo bench -p tda-benches --bench trace_throughput` (`TDA_BENCH_QUICK=1`: tiny shape only).

use std::time::Instant;

use tda_curvature::{
    linalg::sym_eigen, precondition, query_gradients, score_candidates, Damping, FactorFitter,
    FitConfig, Order, QueryBatch, Rank, Strategy, TopK,
};
use tda_model::device::CpuAutodiff;
use tda_model::{frozen, ModelConfig, TokenBatch, Transformer};
use tda_trace::host::{host_taps, Labels, Scalar, Target};
use tda_trace::{Measurement, ModuleSelection};
use tda_train::Trainer;

type AD = CpuAutodiff;

struct Case {
    name: &'static str,
    config: ModelConfig,
    modules: ModuleSelection,
    strategy: Strategy,
    batch: usize,
    seq_len: usize,
    steps: usize,
    fit_batches: usize,
}

fn batch(cfg: &ModelConfig, b: usize, t: usize, seed: u64) -> TokenBatch {
    tda_benches::random_batch(cfg.vocab_size, b, t, seed)
}

fn run(c: &Case) {
    let device = Default::default();
    let tokens = c.batch * c.seq_len;
    let params = tda_benches::bench_train_params(c.seq_len, c.batch);
    let model = Transformer::<AD>::init(&c.config, 0, &device);
    let mut trainer = Trainer::new(model, &params).unwrap();
    trainer
        .step(&batch(&c.config, c.batch, c.seq_len, 0))
        .unwrap();
    let t0 = Instant::now();
    for i in 1..=c.steps {
        trainer
            .step(&batch(&c.config, c.batch, c.seq_len, i as u64))
            .unwrap();
    }
    let train_tps = (tokens * c.steps) as f64 / t0.elapsed().as_secs_f64();
    let model = trainer.into_model();
    let fz = frozen(&model);
    let specs = c.modules.specs(&model.linear_layers(), None).unwrap();

    // Fit (true Fisher, sampled labels).
    let t_fit = Instant::now();
    let mut fitter = FactorFitter::new(specs.clone(), FitConfig::new(c.strategy)).unwrap();
    let mut pass_times = vec![];
    let mut pass_no = 0u64;
    while let Some(p) = fitter.pass() {
        let tp = Instant::now();
        for i in 0..c.fit_batches {
            let b = batch(&c.config, c.batch, c.seq_len, 100 + i as u64);
            let keys: Vec<u64> = (0..c.batch).map(|k| (i * c.batch + k) as u64).collect();
            let labels = Labels::Sampled {
                seed: pass_no,
                keys: &keys,
            };
            let taps = host_taps(&fz, &specs, &b, Scalar::Loss(labels)).unwrap();
            fitter.add(&taps.layer_batches()).unwrap();
        }
        let pass_s = tp.elapsed().as_secs_f64();
        let te = Instant::now();
        fitter.end_pass().unwrap();
        pass_times.push((p, pass_s, te.elapsed().as_secs_f64()));
        pass_no += 1;
    }
    let factors = fitter.finish("bench").unwrap();
    let fit_s = t_fit.elapsed().as_secs_f64();

    // 32 queries (prompt 16 tokens, completion 8 tokens), rank 32.
    let nq = 32;
    let t_q = Instant::now();
    let qb = batch(&c.config, nq, 24, 999);
    let t1 = qb.seq_len - 1;
    let weights: Vec<f32> = (0..nq)
        .flat_map(|_| (0..t1).map(|t| if t + 1 >= 16 { 1.0 } else { 0.0 }))
        .collect();
    let target = Target {
        kind: Measurement::LogProb,
        weights,
    };
    let qtaps = host_taps(&fz, &specs, &qb, Scalar::Measure(&target)).unwrap();
    let qg = query_gradients(&specs, &qtaps.layer_batches()).unwrap();
    let t_pre = Instant::now();
    let pq = precondition(&factors, Damping::default(), &qg, Rank::Truncated(32)).unwrap();
    let pre_s = t_pre.elapsed().as_secs_f64();
    let queries = QueryBatch::new(&specs, &pq).unwrap();
    let q_s = t_q.elapsed().as_secs_f64();

    // Scoring: one pass over candidate batches.
    let mut topk = TopK::new(nq, 10, Order::Largest);
    let (mut model_s, mut copy_s, mut contr_s, mut topk_s) = (0.0, 0.0, 0.0, 0.0);
    let run_one = |i: usize, topk: &mut TopK<usize>, acc: &mut (f64, f64, f64, f64)| {
        let b = batch(&c.config, c.batch, c.seq_len, 5000 + i as u64);
        let taps = host_taps(&fz, &specs, &b, Scalar::Loss(Labels::Data)).unwrap();
        acc.0 += taps.t_model;
        acc.1 += taps.t_copy;
        let t = Instant::now();
        let sc = score_candidates(&queries, &taps.layer_batches()).unwrap();
        acc.2 += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let ids: Vec<usize> = (0..c.batch).map(|k| i * c.batch + k).collect();
        topk.push_totals(&sc, &ids);
        acc.3 += t.elapsed().as_secs_f64();
    };
    let mut warm = (0.0, 0.0, 0.0, 0.0);
    run_one(0, &mut topk, &mut warm);
    let mut acc = (0.0, 0.0, 0.0, 0.0);
    let t_s = Instant::now();
    for i in 1..=c.steps {
        run_one(i, &mut topk, &mut acc);
    }
    let wall = t_s.elapsed().as_secs_f64();
    (model_s, copy_s, contr_s, topk_s) = (
        model_s + acc.0,
        copy_s + acc.1,
        contr_s + acc.2,
        topk_s + acc.3,
    );
    let score_tps = (tokens * c.steps) as f64 / wall;
    println!(
        "{:<20} {} layers ({}), B={} T={} | train {:>7.0} tok/s | scoring 32 queries × rank 32 {:>7.0} tok/s | P1 = {:.2}",
        c.name,
        specs.len(),
        match c.modules { ModuleSelection::All => "all incl. lm_head", _ => "blocks" },
        c.batch,
        c.seq_len,
        train_tps,
        score_tps,
        score_tps / train_tps
    );
    println!(
        "    scoring time: forward+backward taps {:.0}%, host copy {:.0}%, contraction {:.0}%, top-K {:.0}%, other {:.0}%",
        100.0 * model_s / wall,
        100.0 * copy_s / wall,
        100.0 * contr_s / wall,
        100.0 * topk_s / wall,
        100.0 * (wall - model_s - copy_s - contr_s - topk_s) / wall
    );
    println!(
        "    queries: taps + gradients + precondition/SVD {:.2}s for 32 queries ({:.2}s precondition + rank-32 SVD)",
        q_s, pre_s
    );
    let mut line = format!(
        "    fit ({}, {} windows of {} tokens): ",
        c.strategy,
        c.fit_batches * c.batch,
        c.seq_len
    );
    for (p, s, e) in &pass_times {
        line += &format!("{p:?} pass {s:.2}s (end {e:.2}s) ");
    }
    println!("{line}| total {fit_s:.2}s");
}

fn eigen_timings(sizes: &[usize]) {
    let mut line = String::from("    faer f64 eigendecomposition (symmetric):");
    for &n in sizes {
        let mut x: u64 = 7;
        let a: Vec<f64> = (0..n * 64)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 11) as f64 / (1u64 << 53) as f64) - 0.5
            })
            .collect();
        // SPD m = aᵀa-like: m[i][j] = Σ_k a[k,i] a[k,j] + n δ.
        let mut m = vec![0.0; n * n];
        for k in 0..64 {
            let row = &a[k * n..(k + 1) * n];
            for i in 0..n {
                for j in 0..n {
                    m[i * n + j] += row[i] * row[j];
                }
            }
        }
        for i in 0..n {
            m[i * n + i] += 1.0;
        }
        let t = Instant::now();
        sym_eigen(&m, n).unwrap();
        line += &format!(" {n}: {:.2}s", t.elapsed().as_secs_f64());
    }
    println!("{line}");
}

fn main() {
    println!(
        "trace throughput, CPU backend burn-flex, {} threads (ratios within this run)",
        rayon::current_num_threads()
    );
    run(&Case {
        name: "configs/tiny.toml",
        config: ModelConfig::gpt2(128, 2, 4, 1024, 128),
        modules: ModuleSelection::All,
        strategy: Strategy::Ekfac,
        batch: 16,
        seq_len: 64,
        steps: 10,
        fit_batches: 8,
    });
    run(&Case {
        name: "configs/tiny.toml",
        config: ModelConfig::gpt2(128, 2, 4, 1024, 128),
        modules: ModuleSelection::Blocks,
        strategy: Strategy::Ekfac,
        batch: 16,
        seq_len: 64,
        steps: 10,
        fit_batches: 8,
    });
    if std::env::var_os("TDA_BENCH_QUICK").is_none() {
        run(&Case {
            name: "GPT-2-small shape",
            config: ModelConfig::gpt2(768, 12, 12, 50257, 1024),
            modules: ModuleSelection::Blocks,
            strategy: Strategy::Ekfac,
            batch: 1,
            seq_len: 512,
            steps: 3,
            fit_batches: 1,
        });
        eigen_timings(&[768, 2304, 3072]);
    }
}
