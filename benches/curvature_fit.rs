//! Curvature benchmarks (tda-curvature): covariance pass, eigendecompositions, Λ pass, query
//! preconditioning and the query-batched scoring kernel, on synthetic taps with GPT-2-small shapes.
//!
//! Run: `cargo bench -p tda-benches --bench curvature_fit` (add `-- --quick` for a shorter run).
//! Figures are wall-clock on this machine, single run after one warm-up where noted.

use std::time::Instant;
use tda_curvature::linalg::{gemm, sym_eigen, Op};
use tda_curvature::{
    precondition, query_gradients, score_candidates, Damping, FactorFitter, Factors, FitConfig,
    LayerBatch, LayerSpec, QueryBatch, Rank, Strategy,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

struct Owned {
    a: Vec<f32>,
    g: Vec<f32>,
    mask: Vec<bool>,
    batch: usize,
    seq_len: usize,
}
impl Owned {
    fn new(rng: &mut Rng, spec: &LayerSpec, batch: usize, seq_len: usize) -> Self {
        let n = batch * seq_len;
        Owned {
            a: (0..n * spec.d_in).map(|_| rng.next()).collect(),
            g: (0..n * spec.d_out).map(|_| rng.next() * 1e-2).collect(),
            mask: vec![true; n],
            batch,
            seq_len,
        }
    }
    fn view(&self) -> LayerBatch<'_> {
        LayerBatch {
            a: &self.a,
            g: &self.g,
            mask: &self.mask,
            batch: self.batch,
            seq_len: self.seq_len,
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let threads = rayon::current_num_threads();
    println!(
        "tda-curvature benchmark ({threads} rayon threads{})",
        if quick { ", quick" } else { "" }
    );
    let mut rng = Rng(42);
    let (batch, seq) = (4usize, 512usize);
    let tokens = batch * seq;

    // 1. Covariance pass (f64 A and S) and 3. Λ pass, per GPT-2 layer shape.
    println!("\n| stage | layer (d_in→d_out) | tokens | seconds | tokens/s |");
    println!("|---|---|---:|---:|---:|");
    let shapes: &[(usize, usize)] = if quick {
        &[(768, 768)]
    } else {
        &[(768, 768), (768, 3072), (3072, 768)]
    };
    let mut fitted: Option<Factors> = None;
    for &(d_in, d_out) in shapes {
        let spec = LayerSpec::new(format!("l{d_in}x{d_out}"), d_in, d_out, true);
        let data = Owned::new(&mut rng, &spec, batch, seq);
        let mut fit =
            FactorFitter::new(vec![spec.clone()], FitConfig::new(Strategy::Ekfac)).unwrap();
        let t = Instant::now();
        fit.add(&[data.view()]).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "| covariance (f64 A,S) | {d_in}→{d_out} | {tokens} | {s:.3} | {:.0} |",
            tokens as f64 / s
        );
        let t = Instant::now();
        fit.end_pass().unwrap();
        let s = t.elapsed().as_secs_f64();
        println!("| eigendecomposition A and S | {d_in}→{d_out} | – | {s:.3} | – |");
        let t = Instant::now();
        fit.add(&[data.view()]).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "| Λ pass (rotate + per-seq G̃²) | {d_in}→{d_out} | {tokens} | {s:.3} | {:.0} |",
            tokens as f64 / s
        );
        fit.end_pass().unwrap();
        if d_in == 768 && d_out == 3072 || (quick && fitted.is_none()) {
            fitted = Some(fit.finish("bench").unwrap());
        }
    }

    // 2. Eigendecompositions (faer, f64) per matrix size.
    println!("\n| eigendecomposition (f64, faer) n | seconds |");
    println!("|---:|---:|");
    let sizes: &[usize] = if quick {
        &[256, 512, 1024]
    } else {
        &[256, 512, 1024, 2048, 3072]
    };
    for &n in sizes {
        let k = n + 64;
        let x: Vec<f64> = (0..k * n)
            .map(|i| rng.next() as f64 * (1.0 + (i % n) as f64 / n as f64))
            .collect();
        let mut c = vec![0.0f64; n * n];
        gemm(&mut c, Op::t(&x, k, n), Op::n(&x, k, n), false);
        let t = Instant::now();
        let (vals, _) = sym_eigen(&c, n).unwrap();
        let s = t.elapsed().as_secs_f64();
        assert!(vals.iter().all(|v| v.is_finite()));
        println!("| {n} | {s:.3} |");
    }

    // 4. Query preconditioning (EK-FAC, rank 32) and the scoring kernel.
    let q = 32usize;
    let rank = 32usize;
    if let Some(f) = &fitted {
        let spec = f.layers[0].spec.clone();
        let qd = Owned::new(&mut rng, &spec, 4, 64);
        let qg = query_gradients(std::slice::from_ref(&spec), &[qd.view()]).unwrap();
        let t = Instant::now();
        let pq = precondition(f, Damping::default(), &qg, Rank::Truncated(rank)).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "\nprecondition + randomized rank-{rank} SVD, layer {}→{}: {:.3} s per query",
            spec.d_in,
            spec.d_out,
            s / pq.len() as f64
        );
    }

    println!("\n| scoring kernel: {q} queries × rank {rank} | layers | candidate tokens | seconds | candidate tokens/s |");
    println!("|---|---|---:|---:|---:|");
    let layer_sets: Vec<(&str, Vec<LayerSpec>)> = vec![
        (
            "mlp pair 768→3072, 3072→768",
            vec![
                LayerSpec::new("c_fc", 768, 3072, true),
                LayerSpec::new("c_proj", 3072, 768, true),
            ],
        ),
        (
            "GPT-2 small block (attn qkv+proj, mlp fc+proj)",
            vec![
                LayerSpec::new("c_attn", 768, 2304, true),
                LayerSpec::new("attn.c_proj", 768, 768, true),
                LayerSpec::new("c_fc", 768, 3072, true),
                LayerSpec::new("mlp.c_proj", 3072, 768, true),
            ],
        ),
    ];
    for (label, specs) in layer_sets {
        // Random low-rank queries (the kernel cost does not depend on the strategy).
        let id = Factors::identity(specs.clone(), "bench");
        let qd: Vec<Owned> = specs
            .iter()
            .map(|s| Owned::new(&mut rng, s, q, 2))
            .collect();
        let qv: Vec<LayerBatch<'_>> = qd.iter().map(|o| o.view()).collect();
        let qg = query_gradients(&specs, &qv).unwrap();
        let pq = precondition(&id, Damping::default(), &qg, Rank::Truncated(rank)).unwrap();
        // rank ≤ 2 from 2-token queries: pad to `rank` columns for a representative cost.
        let pq: Vec<_> = pq
            .into_iter()
            .map(|mut p| {
                for (l, s) in p.layers.iter_mut().zip(&specs) {
                    let r0 = l.rank;
                    let pad = |v: &Vec<f32>, rows: usize| -> Vec<f32> {
                        (0..rows)
                            .flat_map(|i| {
                                (0..rank).map(move |c| if c < r0 { v[i * r0 + c] } else { 1e-3 })
                            })
                            .collect()
                    };
                    l.left = pad(&l.left, s.d_out);
                    l.right = pad(&l.right, s.d_a());
                    l.rank = rank;
                }
                p
            })
            .collect();
        let qb = QueryBatch::new(&specs, &pq).unwrap();
        let cd: Vec<Owned> = specs
            .iter()
            .map(|s| Owned::new(&mut rng, s, batch, seq))
            .collect();
        let cv: Vec<LayerBatch<'_>> = cd.iter().map(|o| o.view()).collect();
        score_candidates(&qb, &cv).unwrap(); // warm-up
        let reps = if quick { 1 } else { 3 };
        let t = Instant::now();
        for _ in 0..reps {
            let sc = score_candidates(&qb, &cv).unwrap();
            assert!(sc.total.iter().all(|v| v.is_finite()));
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "| {label} | {} | {tokens} | {s:.3} | {:.0} |",
            specs.len(),
            tokens as f64 / s
        );
    }
}
