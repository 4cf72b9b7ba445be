//! Influence with the exact damped Gauss-Newton matrix vs identity / diagonal / K-FAC / EK-FAC on a
//! tiny 2-layer MLP (linear–tanh–linear, softmax cross-entropy), sequences of 2–4 independent tokens.
//!
//! Exact reference: `G = (1/N) Σ_b Σ_t J_btᵀ H_bt J_bt` over all 57 parameters (both layers, incl.
//! cross-layer blocks), `H = diag(p) − ppᵀ`, built from per-token Jacobians as
//! `H = Σ_k p_k (e_k − p)(e_k − p)ᵀ`, and `I_exact(q, b) = −∇f_qᵀ (G + λI)⁻¹ ∇L_b` with
//! `f_q = log p(y_q | x_q)` and `L_b = Σ_t CE`. Tokens do not interact in this model, so the GN of a
//! sequence is the sum over its tokens.
//!
//! Factor fitting with the *expected* (not sampled) pseudo-gradients: each real token (b, t) becomes
//! K one-token pseudo-sequences with `g = sqrt((M/N) p_k) · J_ptᵀ (e_k − p)` (M = number of
//! pseudo-sequences). Then `E_pseudo[G̃²] = (1/N) Σ_b E_y[G̃_b²]` exactly (cross-token terms vanish
//! in expectation because `E_y[e_y − p] = 0`), i.e. Λ is the EK-FAC Λ with the sampling noise removed.
//! This makes the comparison deterministic.
#![allow(clippy::needless_range_loop)] // index loops mirror the formulas of the reference

mod common;
use common::*;
use tda_curvature::*;

const D0: usize = 5;
const H: usize = 6;
const K: usize = 3;
const P1: usize = H * (D0 + 1);
const P: usize = P1 + K * (H + 1);

struct Mlp {
    w1: Vec<f64>, // [H, D0+1]
    w2: Vec<f64>, // [K, H+1]
}

struct Fwd {
    h: Vec<f64>,
    p: Vec<f64>,
}

impl Mlp {
    fn forward(&self, x: &[f64]) -> Fwd {
        let h: Vec<f64> = (0..H)
            .map(|i| {
                (dot(&self.w1[i * (D0 + 1)..i * (D0 + 1) + D0], x) + self.w1[i * (D0 + 1) + D0])
                    .tanh()
            })
            .collect();
        let z: Vec<f64> = (0..K)
            .map(|k| dot(&self.w2[k * (H + 1)..k * (H + 1) + H], &h) + self.w2[k * (H + 1) + H])
            .collect();
        Fwd { p: softmax(&z), h }
    }
    /// Output gradients of both layers for `v = ∂scalar/∂logits`: (g1 [H], g2 [K]).
    fn taps(&self, f: &Fwd, v: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let g1 = (0..H)
            .map(|i| {
                (1.0 - f.h[i] * f.h[i])
                    * (0..K).map(|k| self.w2[k * (H + 1) + i] * v[k]).sum::<f64>()
            })
            .collect();
        (g1, v.to_vec())
    }
    /// Flattened parameter gradient (layer 1 `[H, D0+1]` then layer 2 `[K, H+1]`, row-major).
    fn flat(&self, x: &[f64], f: &Fwd, v: &[f64]) -> Vec<f64> {
        let (g1, g2) = self.taps(f, v);
        let mut out = Vec::with_capacity(P);
        for i in 0..H {
            out.extend(x.iter().map(|xj| g1[i] * xj));
            out.push(g1[i]);
        }
        for k in 0..K {
            out.extend(f.h.iter().map(|hj| g2[k] * hj));
            out.push(g2[k]);
        }
        out
    }
}

fn onehot_minus(y: usize, p: &[f64], sign: f64) -> Vec<f64> {
    (0..K)
        .map(|k| sign * ((k == y) as u8 as f64 - p[k]))
        .collect()
}

struct Data {
    x: Vec<Vec<Vec<f64>>>, // [N][T_b][D0]
    y: Vec<Vec<usize>>,
    qx: Vec<Vec<f64>>,
    qy: Vec<usize>,
}

fn make_data(rng: &mut Rng, n: usize, t_max: usize, nq: usize) -> Data {
    let mix: Vec<f64> = (0..D0 * D0).map(|_| rng.normal() * 0.6).collect();
    let teacher = Mlp {
        w1: (0..P1).map(|_| rng.normal()).collect(),
        w2: (0..K * (H + 1)).map(|_| 1.5 * rng.normal()).collect(),
    };
    let sample_x = |rng: &mut Rng| -> Vec<f64> {
        let z: Vec<f64> = (0..D0).map(|_| rng.normal()).collect();
        (0..D0)
            .map(|i| z[i] + dot(&mix[i * D0..(i + 1) * D0], &z))
            .collect()
    };
    let (mut x, mut y) = (vec![], vec![]);
    for _ in 0..n {
        let len = 2 + rng.below(t_max - 1);
        let xs: Vec<Vec<f64>> = (0..len).map(|_| sample_x(rng)).collect();
        y.push(
            xs.iter()
                .map(|xi| rng.categorical(&teacher.forward(xi).p))
                .collect(),
        );
        x.push(xs);
    }
    let qx: Vec<Vec<f64>> = (0..nq).map(|_| sample_x(rng)).collect();
    let qy = qx
        .iter()
        .map(|xi| rng.categorical(&teacher.forward(xi).p))
        .collect();
    Data { x, y, qx, qy }
}

fn train(rng: &mut Rng, d: &Data, steps: usize) -> Mlp {
    let mut m = Mlp {
        w1: (0..P1).map(|_| 0.5 * rng.normal()).collect(),
        w2: (0..K * (H + 1)).map(|_| 0.5 * rng.normal()).collect(),
    };
    let n = d.x.len() as f64;
    for _ in 0..steps {
        let mut grad = vec![0.0; P];
        for (xs, ys) in d.x.iter().zip(&d.y) {
            for (x, &y) in xs.iter().zip(ys) {
                let f = m.forward(x);
                let g = m.flat(x, &f, &onehot_minus(y, &f.p, -1.0));
                grad.iter_mut().zip(&g).for_each(|(a, b)| *a += b / n);
            }
        }
        for i in 0..P {
            if i < P1 {
                m.w1[i] -= 0.3 * grad[i];
            } else {
                m.w2[i - P1] -= 0.3 * grad[i];
            }
        }
    }
    m
}

fn specs() -> Vec<LayerSpec> {
    vec![
        LayerSpec::new("mlp.fc1", D0, H, true),
        LayerSpec::new("mlp.fc2", H, K, true),
    ]
}

/// Taps `[fc1, fc2]` for a list of sequences of (x, v) pairs, padded to `t_len`.
fn build_taps(m: &Mlp, seqs: &[Vec<(Vec<f64>, Vec<f64>)>], t_len: usize) -> Vec<Taps> {
    let b = seqs.len();
    let (mut t1, mut t2) = (Taps::new(b, t_len, D0, H), Taps::new(b, t_len, H, K));
    for (bi, s) in seqs.iter().enumerate() {
        for (ti, (x, v)) in s.iter().enumerate() {
            let r = bi * t_len + ti;
            let f = m.forward(x);
            let (g1, g2) = m.taps(&f, v);
            t1.mask[r] = true;
            t2.mask[r] = true;
            for j in 0..D0 {
                t1.a[r * D0 + j] = x[j] as f32;
            }
            for i in 0..H {
                t1.g[r * H + i] = g1[i] as f32;
                t2.a[r * H + i] = f.h[i] as f32;
            }
            for k in 0..K {
                t2.g[r * K + k] = g2[k] as f32;
            }
        }
    }
    vec![t1, t2]
}

struct Setup {
    m: Mlp,
    d: Data,
    exact: Vec<Vec<f64>>,    // [Q][N]
    exact_bd: Vec<Vec<f64>>, // block-diagonal (per-layer) exact GN
    lambda: f64,
    fit_taps: Vec<Taps>,
    query_taps: Vec<Taps>,
    cand_taps: Vec<Taps>,
}

fn setup() -> Setup {
    let mut rng = Rng::new(2024);
    let d = make_data(&mut rng, 80, 4, 8);
    let m = train(&mut rng, &d, 300);
    let n = d.x.len();
    // Exact GN (mean over sequences).
    let mut g = vec![0.0; P * P];
    let mut fit_seqs = vec![];
    let n_tok: usize = d.x.iter().map(|s| s.len()).sum();
    let m_pseudo = (n_tok * K) as f64;
    for xs in &d.x {
        for x in xs {
            let f = m.forward(x);
            for k in 0..K {
                let u = m.flat(x, &f, &onehot_minus(k, &f.p, 1.0));
                for i in 0..P {
                    for j in 0..P {
                        g[i * P + j] += f.p[k] * u[i] * u[j] / n as f64;
                    }
                }
                let c = (m_pseudo / n as f64 * f.p[k]).sqrt();
                let v: Vec<f64> = onehot_minus(k, &f.p, c);
                fit_seqs.push(vec![(x.clone(), v)]);
            }
        }
    }
    let lambda = 0.1 * (0..P).map(|i| g[i * P + i]).sum::<f64>() / P as f64;
    let mut gd = g.clone();
    (0..P).for_each(|i| gd[i * P + i] += lambda);
    let mut gbd = gd.clone();
    for i in 0..P {
        for j in 0..P {
            if (i < P1) != (j < P1) {
                gbd[i * P + j] = 0.0;
            }
        }
    }
    let cand_grads: Vec<Vec<f64>> =
        d.x.iter()
            .zip(&d.y)
            .map(|(xs, ys)| {
                let mut s = vec![0.0; P];
                for (x, &y) in xs.iter().zip(ys) {
                    let f = m.forward(x);
                    let gr = m.flat(x, &f, &onehot_minus(y, &f.p, -1.0)); // ∇ CE = J^T (p − e_y)
                    s.iter_mut().zip(&gr).for_each(|(a, b)| *a += b);
                }
                s
            })
            .collect();
    let (mut exact, mut exact_bd) = (vec![], vec![]);
    for (x, &y) in d.qx.iter().zip(&d.qy) {
        let f = m.forward(x);
        let gf = m.flat(x, &f, &onehot_minus(y, &f.p, 1.0)); // ∇ log p_y = J^T (e_y − p)
        let sol = chol_solve(&gd, P, &gf);
        let sol_bd = chol_solve(&gbd, P, &gf);
        exact.push(cand_grads.iter().map(|c| -dot(&sol, c)).collect());
        exact_bd.push(cand_grads.iter().map(|c| -dot(&sol_bd, c)).collect());
    }
    let fit_taps = build_taps(&m, &fit_seqs, 1);
    let qseqs: Vec<_> =
        d.qx.iter()
            .zip(&d.qy)
            .map(|(x, &y)| vec![(x.clone(), onehot_minus(y, &m.forward(x).p, 1.0))])
            .collect();
    let query_taps = build_taps(&m, &qseqs, 1);
    let cseqs: Vec<_> =
        d.x.iter()
            .zip(&d.y)
            .map(|(xs, ys)| {
                xs.iter()
                    .zip(ys)
                    .map(|(x, &y)| (x.clone(), onehot_minus(y, &m.forward(x).p, -1.0)))
                    .collect()
            })
            .collect();
    let cand_taps = build_taps(&m, &cseqs, 4);
    Setup {
        m,
        d,
        exact,
        exact_bd,
        lambda,
        fit_taps,
        query_taps,
        cand_taps,
    }
}

fn fit(s: &Setup, cfg: FitConfig) -> Factors {
    let mut f = FactorFitter::new(specs(), cfg).unwrap();
    while f.pass().is_some() {
        // Two batches, to exercise streaming accumulation.
        let half = s.fit_taps[0].batch / 2;
        for (lo, hi) in [(0, half), (half, s.fit_taps[0].batch)] {
            let parts: Vec<Taps> = s
                .fit_taps
                .iter()
                .map(|t| {
                    let (di, dout) = (t.a.len() / t.batch, t.g.len() / t.batch);
                    Taps {
                        a: t.a[lo * di..hi * di].to_vec(),
                        g: t.g[lo * dout..hi * dout].to_vec(),
                        mask: t.mask[lo..hi].to_vec(),
                        batch: hi - lo,
                        seq_len: 1,
                    }
                })
                .collect();
            f.add(&views(&parts)).unwrap();
        }
        f.end_pass().unwrap();
    }
    f.finish("mlp-test").unwrap()
}

fn approx_scores(s: &Setup, factors: &Factors, damping: Damping) -> Vec<Vec<f64>> {
    let qg = query_gradients(&specs(), &views(&s.query_taps)).unwrap();
    let pq = precondition(factors, damping, &qg, Rank::Full).unwrap();
    let qb = QueryBatch::new(&specs(), &pq).unwrap();
    let sc = score_candidates(&qb, &views(&s.cand_taps)).unwrap();
    (0..qb.n_queries())
        .map(|q| (0..sc.batch).map(|b| sc.total(b, q)).collect())
        .collect()
}

fn mean_corr(a: &[Vec<f64>], b: &[Vec<f64>]) -> (f64, f64) {
    let n = a.len() as f64;
    (
        a.iter().zip(b).map(|(x, y)| pearson(x, y)).sum::<f64>() / n,
        a.iter().zip(b).map(|(x, y)| spearman(x, y)).sum::<f64>() / n,
    )
}

#[test]
fn approximations_vs_exact_gauss_newton() {
    let s = setup();
    let _ = (&s.m, &s.d);
    println!("\nexact damped GN influence (λ = 0.1·tr(G)/P = {:.3e}), 80 sequences × 8 queries, mean over queries", s.lambda);
    let (p, sp) = mean_corr(&s.exact_bd, &s.exact);
    println!(
        "{:<34} pearson {:>6.3}  spearman {:>6.3}",
        "exact block-diag GN (reference)", p, sp
    );
    let mut res = std::collections::HashMap::new();
    for (label, cfg) in [
        ("identity", FitConfig::new(Strategy::Identity)),
        ("diagonal", FitConfig::new(Strategy::Diagonal)),
        ("kfac", FitConfig::new(Strategy::Kfac)),
        ("ekfac", FitConfig::new(Strategy::Ekfac)),
        (
            "ekfac, blocks ≤ 3 wide",
            FitConfig::new(Strategy::Ekfac).with_max_block(3),
        ),
    ] {
        let f = fit(&s, cfg);
        let abs = approx_scores(&s, &f, Damping::Absolute(s.lambda));
        let heu = approx_scores(&s, &f, Damping::default());
        let (p, sp) = mean_corr(&abs, &s.exact);
        let (ph, sph) = mean_corr(&heu, &s.exact);
        let (pb, spb) = mean_corr(&abs, &s.exact_bd);
        println!(
            "{label:<34} pearson {p:>6.3}  spearman {sp:>6.3} | heuristic damping: pearson {ph:>6.3} spearman {sph:>6.3} | vs block-diag exact: pearson {pb:>6.3} spearman {spb:>6.3}"
        );
        res.insert(label, (p, sp, pb));
    }
    let (id, diag, kfac, ekfac) = (res["identity"], res["diagonal"], res["kfac"], res["ekfac"]);
    // Measured (deterministic data, seed 2024): exact block-diag GN vs full GN pearson 0.83 /
    // spearman 0.62 — the layer-block approximation is the dominant error here; EK-FAC 0.70 / 0.49
    // vs full GN and 0.87 / 0.72 vs the block-diagonal GN it approximates; K-FAC 0.69 / 0.49;
    // diagonal 0.61 / 0.41; identity 0.60 / 0.38. Bounds below leave ~0.05 of slack and keep the
    // expected ordering (EK-FAC's Λ is the best diagonal in the K-FAC basis, so it should not lose
    // to K-FAC by more than noise).
    assert!(
        ekfac.0 >= kfac.0 - 0.01 && ekfac.1 >= kfac.1 - 0.02,
        "ekfac {ekfac:?} vs kfac {kfac:?}"
    );
    assert!(ekfac.0 > 0.65 && ekfac.1 > 0.43, "ekfac vs exact {ekfac:?}");
    assert!(ekfac.2 > 0.82, "ekfac vs block-diagonal exact {ekfac:?}");
    assert!(
        ekfac.0 > id.0 + 0.05 && ekfac.0 > diag.0 + 0.03,
        "ekfac {ekfac:?} identity {id:?} diagonal {diag:?}"
    );
}
