//! Cases where K-FAC / EK-FAC / diagonal are exact by theory, checked against the dense damped GN.
//!
//! Derivations (one linear layer, one token per sequence, `G = E_n[J_nᵀ H_n J_n]`, param order
//! `[d_out, d_a]` row-major so `vec(g aᵀ) = g ⊗ a`):
//! 1. Linear regression, squared loss (`H_y = I`, constant): `G = I_{d_out} ⊗ A`. The fitted
//!    pseudo-gradients `g = sqrt(d_out)·e_k` (one pseudo-sequence per output) give `S = I` and
//!    `A = E[a aᵀ]`, so K-FAC `Λ = λ_S ⊗ λ_A` is exact, and EK-FAC's `Λ[i,j] = E[(q_Siᵀ g)² (q_Ajᵀ a)²]`
//!    `= λ_A,j` (since `Σ_k Q_S[k,i]² = 1`) is exact too.
//! 2. Binary logistic regression (`d_out = 1`, `H_n = σ_n(1−σ_n)`) with every input along one of `d`
//!    orthonormal directions `r_i` (a = c·r_i) and no bias: `G = Σ_i E[σ(1−σ)c² | i] P(i) r_i r_iᵀ`
//!    and `A = Σ_i E[c² | i] P(i) r_i r_iᵀ` share the eigenbasis (distinct eigenvalues), so EK-FAC
//!    (`Λ_j = E[σ(1−σ)(r_jᵀ a)²]`) is exact, while K-FAC (`E[σ(1−σ)] · λ_A`) is not because the
//!    curvature weight differs per direction. With `r_i = e_i`, `G` is diagonal and the `diagonal`
//!    strategy is exact as well.
//! 3. Squared loss where each input lives in one half of the coordinates: `A` is exactly
//!    block-diagonal, so block-diagonal K-FAC/EK-FAC (2 blocks) are exact, like the full ones.
//!
//! Tolerance: the library stores factors in f32 and runs the candidate GEMMs in f32, while the
//! reference is f64 on the same (f32-rounded) inputs; with condition numbers ≲ 1e2 (damping
//! 1e-2 × mean eigenvalue), errors are ~1e-6 relative, so 1e-4 is asserted. Non-exact strategies
//! are asserted to be off by > 1e-2, so the checks can fail.

mod common;
use common::*;
use tda_curvature::*;

/// Dense per-sequence gradients `Σ_t g_t a_tᵀ` (bias column appended) from taps, in f64.
fn dense_grads(spec: &LayerSpec, t: &Taps) -> Vec<Vec<f64>> {
    let (d_in, d_out, d_a) = (spec.d_in, spec.d_out, spec.d_a());
    (0..t.batch)
        .map(|b| {
            let mut gm = vec![0.0; d_out * d_a];
            for tt in 0..t.seq_len {
                let r = b * t.seq_len + tt;
                if !t.mask[r] {
                    continue;
                }
                for i in 0..d_out {
                    for j in 0..d_a {
                        let a = if j < d_in {
                            t.a[r * d_in + j] as f64
                        } else {
                            1.0
                        };
                        gm[i * d_a + j] += t.g[r * d_out + i] as f64 * a;
                    }
                }
            }
            gm
        })
        .collect()
}

/// Exact `−∇f_qᵀ (G + λI)⁻¹ ∇L_b` `[Q][B]`.
fn exact_scores(spec: &LayerSpec, g: &[f64], lambda: f64, q: &Taps, c: &Taps) -> Vec<Vec<f64>> {
    let p = spec.n_params();
    let mut gd = g.to_vec();
    (0..p).for_each(|i| gd[i * p + i] += lambda);
    let cg = dense_grads(spec, c);
    dense_grads(spec, q)
        .iter()
        .map(|gq| {
            let sol = chol_solve(&gd, p, gq);
            cg.iter().map(|gb| -dot(&sol, gb)).collect()
        })
        .collect()
}

fn lib_scores(
    spec: &LayerSpec,
    cfg: FitConfig,
    fit_taps: &Taps,
    lambda: f64,
    q: &Taps,
    c: &Taps,
) -> Vec<Vec<f64>> {
    let specs = vec![spec.clone()];
    let mut f = FactorFitter::new(specs.clone(), cfg).unwrap();
    while f.pass().is_some() {
        f.add(&[fit_taps.view()]).unwrap();
        f.end_pass().unwrap();
    }
    let factors = f.finish("exact").unwrap();
    let qg = query_gradients(&specs, &[q.view()]).unwrap();
    let pq = precondition(&factors, Damping::Absolute(lambda), &qg, Rank::Full).unwrap();
    let qb = QueryBatch::new(&specs, &pq).unwrap();
    let sc = score_candidates(&qb, &[c.view()]).unwrap();
    (0..sc.n_queries)
        .map(|qi| (0..sc.batch).map(|b| sc.total(b, qi)).collect())
        .collect()
}

fn err(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    rel_max_err(&a.concat(), &b.concat())
}

/// One-token taps from rows of (a, g).
fn taps(rows: &[(Vec<f32>, Vec<f32>)], d_in: usize, d_out: usize) -> Taps {
    let mut t = Taps::new(rows.len(), 1, d_in, d_out);
    for (r, (a, g)) in rows.iter().enumerate() {
        t.a[r * d_in..(r + 1) * d_in].copy_from_slice(a);
        t.g[r * d_out..(r + 1) * d_out].copy_from_slice(g);
        t.mask[r] = true;
    }
    t
}

fn gn_from_rows(spec: &LayerSpec, rows: &[(Vec<f32>, Vec<f32>)], n_examples: usize) -> Vec<f64> {
    // G = (1/N) Σ_rows u uᵀ with u = g ⊗ a_ext (rows already carry the per-row weights).
    let p = spec.n_params();
    let t = taps(rows, spec.d_in, spec.d_out);
    let mut g = vec![0.0; p * p];
    for u in dense_grads(spec, &t) {
        for i in 0..p {
            for j in 0..p {
                g[i * p + j] += u[i] * u[j] / n_examples as f64;
            }
        }
    }
    g
}

fn mean_eig(g: &[f64], p: usize) -> f64 {
    (0..p).map(|i| g[i * p + i]).sum::<f64>() / p as f64
}

#[test]
fn squared_loss_kfac_and_ekfac_are_exact() {
    let mut rng = Rng::new(11);
    for d_out in [1usize, 3] {
        let (n, d_in) = (60, 4);
        let spec = LayerSpec::new("reg", d_in, d_out, true);
        let mix: Vec<f64> = (0..d_in * d_in).map(|_| rng.normal()).collect();
        let xs: Vec<Vec<f32>> = (0..n)
            .map(|_| {
                let z: Vec<f64> = (0..d_in).map(|_| rng.normal()).collect();
                (0..d_in)
                    .map(|i| (z[i] + 0.8 * dot(&mix[i * d_in..(i + 1) * d_in], &z) + 0.5) as f32)
                    .collect()
            })
            .collect();
        // Pseudo-gradients: sqrt(d_out) e_k per output k.
        let fit_rows: Vec<(Vec<f32>, Vec<f32>)> = xs
            .iter()
            .flat_map(|x| {
                (0..d_out).map(move |k| {
                    let mut g = vec![0.0f32; d_out];
                    g[k] = (d_out as f32).sqrt();
                    (x.clone(), g)
                })
            })
            .collect();
        let g = gn_from_rows(&spec, &fit_rows, n * d_out);
        let lambda = 1e-2 * mean_eig(&g, spec.n_params());
        let cand = taps(
            &xs.iter()
                .map(|x| (x.clone(), (0..d_out).map(|_| rng.normal() as f32).collect()))
                .collect::<Vec<_>>(),
            d_in,
            d_out,
        );
        let q = taps(
            &(0..4)
                .map(|_| {
                    (
                        (0..d_in).map(|_| rng.normal() as f32).collect(),
                        (0..d_out).map(|k| (k == 0) as u8 as f32).collect(),
                    )
                })
                .collect::<Vec<_>>(),
            d_in,
            d_out,
        );
        let exact = exact_scores(&spec, &g, lambda, &q, &cand);
        let fit = taps(&fit_rows, d_in, d_out);
        let e_k = err(
            &lib_scores(
                &spec,
                FitConfig::new(Strategy::Kfac),
                &fit,
                lambda,
                &q,
                &cand,
            ),
            &exact,
        );
        let e_e = err(
            &lib_scores(
                &spec,
                FitConfig::new(Strategy::Ekfac),
                &fit,
                lambda,
                &q,
                &cand,
            ),
            &exact,
        );
        let e_d = err(
            &lib_scores(
                &spec,
                FitConfig::new(Strategy::Diagonal),
                &fit,
                lambda,
                &q,
                &cand,
            ),
            &exact,
        );
        println!(
            "squared loss d_out={d_out}: rel err kfac {e_k:.2e} ekfac {e_e:.2e} diagonal {e_d:.2e}"
        );
        assert!(e_k < 1e-4 && e_e < 1e-4, "kfac {e_k} ekfac {e_e}");
        assert!(
            e_d > 1e-2,
            "diagonal should not be exact with correlated features: {e_d}"
        );
    }
}

/// Random orthogonal matrix (columns) by Gram-Schmidt.
fn orthogonal(rng: &mut Rng, d: usize) -> Vec<Vec<f64>> {
    let mut cols: Vec<Vec<f64>> = vec![];
    while cols.len() < d {
        let mut v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        for c in &cols {
            let p = dot(&v, c);
            v.iter_mut().zip(c).for_each(|(x, y)| *x -= p * y);
        }
        let nrm = dot(&v, &v).sqrt();
        cols.push(v.iter().map(|x| x / nrm).collect());
    }
    cols
}

#[test]
fn logistic_orthogonal_inputs_ekfac_exact_kfac_not() {
    let mut rng = Rng::new(5);
    let (n, d) = (400, 6);
    for rotated in [true, false] {
        let spec = LayerSpec::new("logit", d, 1, false);
        let r = if rotated {
            orthogonal(&mut rng, d)
        } else {
            (0..d)
                .map(|i| (0..d).map(|j| (i == j) as u8 as f64).collect())
                .collect()
        };
        let w: Vec<f64> = (0..d).map(|_| 1.5 * rng.normal()).collect();
        let mut fit_rows = vec![];
        let mut cand_rows = vec![];
        for _ in 0..n {
            let i = rng.categorical(&[0.3, 0.25, 0.2, 0.12, 0.08, 0.05]);
            let c = (1.0 + 0.5 * i as f64) * rng.normal();
            let a: Vec<f32> = r[i].iter().map(|x| (c * x) as f32).collect();
            let z: f64 = a.iter().zip(&w).map(|(&x, y)| x as f64 * y).sum();
            let s = 1.0 / (1.0 + (-z).exp());
            fit_rows.push((a.clone(), vec![(s * (1.0 - s)).sqrt() as f32]));
            let y = (rng.uniform() < 0.5) as u8 as f64;
            cand_rows.push((a, vec![(s - y) as f32]));
        }
        let g = gn_from_rows(&spec, &fit_rows, n);
        let lambda = 1e-2 * mean_eig(&g, d);
        let q = taps(
            &(0..5)
                .map(|_| ((0..d).map(|_| rng.normal() as f32).collect(), vec![1.0f32]))
                .collect::<Vec<_>>(),
            d,
            1,
        );
        let cand = taps(&cand_rows, d, 1);
        let fit = taps(&fit_rows, d, 1);
        let exact = exact_scores(&spec, &g, lambda, &q, &cand);
        let e_e = err(
            &lib_scores(
                &spec,
                FitConfig::new(Strategy::Ekfac),
                &fit,
                lambda,
                &q,
                &cand,
            ),
            &exact,
        );
        let e_k = err(
            &lib_scores(
                &spec,
                FitConfig::new(Strategy::Kfac),
                &fit,
                lambda,
                &q,
                &cand,
            ),
            &exact,
        );
        let e_d = err(
            &lib_scores(
                &spec,
                FitConfig::new(Strategy::Diagonal),
                &fit,
                lambda,
                &q,
                &cand,
            ),
            &exact,
        );
        println!("logistic, orthogonal inputs (rotated={rotated}): rel err ekfac {e_e:.2e} kfac {e_k:.2e} diagonal {e_d:.2e}");
        assert!(e_e < 1e-4, "ekfac should be exact: {e_e}");
        assert!(e_k > 1e-2, "kfac should not be exact: {e_k}");
        if rotated {
            assert!(
                e_d > 1e-2,
                "diagonal should not be exact in a rotated basis: {e_d}"
            );
        } else {
            assert!(
                e_d < 1e-4,
                "diagonal should be exact for axis-aligned inputs: {e_d}"
            );
        }
    }
}

#[test]
fn block_diagonal_is_exact_for_block_diagonal_inputs() {
    let mut rng = Rng::new(9);
    let (n, d) = (80, 8);
    let spec = LayerSpec::new("blocky", d, 1, false);
    let mix: Vec<f64> = (0..16).map(|_| rng.normal()).collect();
    let xs: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            let z: Vec<f64> = (0..4).map(|_| rng.normal()).collect();
            let half: Vec<f64> = (0..4)
                .map(|k| z[k] + dot(&mix[k * 4..k * 4 + 4], &z))
                .collect();
            let mut a = vec![0.0f32; d];
            let off = if i % 3 == 0 { 0 } else { 4 };
            for k in 0..4 {
                a[off + k] = half[k] as f32;
            }
            a
        })
        .collect();
    let fit_rows: Vec<_> = xs.iter().map(|a| (a.clone(), vec![1.0f32])).collect();
    let g = gn_from_rows(&spec, &fit_rows, n);
    let lambda = 1e-2 * mean_eig(&g, d);
    let cand = taps(
        &xs.iter()
            .map(|a| (a.clone(), vec![rng.normal() as f32]))
            .collect::<Vec<_>>(),
        d,
        1,
    );
    let q = taps(
        &(0..3)
            .map(|_| ((0..d).map(|_| rng.normal() as f32).collect(), vec![1.0f32]))
            .collect::<Vec<_>>(),
        d,
        1,
    );
    let fit = taps(&fit_rows, d, 1);
    let exact = exact_scores(&spec, &g, lambda, &q, &cand);
    for st in [Strategy::Kfac, Strategy::Ekfac] {
        let full = lib_scores(&spec, FitConfig::new(st), &fit, lambda, &q, &cand);
        let blocked = lib_scores(
            &spec,
            FitConfig::new(st).with_max_block(4),
            &fit,
            lambda,
            &q,
            &cand,
        );
        let (e_f, e_b) = (err(&full, &exact), err(&blocked, &exact));
        println!("block-diagonal inputs, {st}: rel err full {e_f:.2e}, 2 blocks {e_b:.2e}");
        assert!(e_f < 1e-4 && e_b < 1e-4, "{st}: full {e_f} blocked {e_b}");
        // Misaligned blocks (width 3: [0..3),[3..6),[6..8)) cut the true structure: not exact.
        let bad = lib_scores(
            &spec,
            FitConfig::new(st).with_max_block(3),
            &fit,
            lambda,
            &q,
            &cand,
        );
        assert!(
            err(&bad, &exact) > 1e-2,
            "{st}: misaligned blocks should not be exact"
        );
    }
}
