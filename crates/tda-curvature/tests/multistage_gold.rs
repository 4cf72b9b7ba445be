//! Convex two-stage gold test of multi-stage influence.
//!
//! Binary logistic regression (one linear layer, bias included) is pretrained on `D_pt` with an L2
//! term `(λ/2)‖θ‖²` and fine-tuned on a differently distributed `D_ft` with the proximal term
//! `(α/2)‖θ − θ_pt‖²`, both solved by Newton's method to a gradient norm below 1e-13. Up-weighting
//! a pretraining point `z` by `±ε` and re-solving **both** stages gives the finite difference of the
//! measurement `f = log p(y_q | x_q; θ_ft)`. The crate's pipeline (query taps →
//! [`transfer_through_fine_tuning`] → [`precondition`] with the pretraining factors → candidate
//! contraction of pretraining taps at `θ_pt`) must match it. The factors hold the *exact*
//! Hessians (`d_out = 1`: S is 1 × 1, the eigenbasis of A is that of H, Λ its eigenvalues), so
//! the only approximations are the f32 storage of the factors and of the candidate taps and the
//! O(ε²) finite-difference error: Pearson ≥ 0.999 and relative error ≤ 1e-3 are expected. The
//! single-stage variants (fine-tuning Hessian only, pretraining Hessian only, none, and plain
//! single-stage influence at `θ_ft`) must be measurably worse.

use tda_curvature::{
    precondition, query_gradients, score_candidates, transfer_through_fine_tuning, Damping,
    Eigenbasis, Factors, LayerBatch, LayerFactors, LayerSpec, QueryBatch, QueryGradient, Rank,
    Strategy,
};

const D: usize = 5;
const DA: usize = D + 1;
const L2: f64 = 0.05;
const ALPHA: f64 = 0.2;

struct Rng(u64);
impl Rng {
    fn u(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn n(&mut self) -> f64 {
        let (a, b) = (self.u().max(1e-300), self.u());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }
}

/// Examples `(x with the bias 1 appended, y ∈ {0, 1})`.
type Data = Vec<([f64; DA], f64)>;

fn data(rng: &mut Rng, n: usize, scale: [f64; D], w: [f64; D], shift: f64) -> Data {
    (0..n)
        .map(|_| {
            let mut x = [1.0; DA];
            for j in 0..D {
                x[j] = scale[j] * rng.n() + shift;
            }
            let z: f64 = (0..D).map(|j| w[j] * x[j]).sum::<f64>() + 0.8 * rng.n();
            (x, if z > 0.0 { 1.0 } else { 0.0 })
        })
        .collect()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Weighted mean logistic loss's gradient and Hessian at θ: `Σ_i w_i ∇L_i`, `Σ_i w_i ∇²L_i`.
fn grad_hess(data: &Data, weights: &[f64], theta: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut g = vec![0.0; DA];
    let mut h = vec![0.0; DA * DA];
    for ((x, y), &w) in data.iter().zip(weights) {
        let p = sigmoid(dot(x, theta));
        for i in 0..DA {
            g[i] += w * (p - y) * x[i];
            for j in 0..DA {
                h[i * DA + j] += w * p * (1.0 - p) * x[i] * x[j];
            }
        }
    }
    (g, h)
}

/// Solves `h x = b` (symmetric positive definite) by Cholesky.
fn solve(h: &[f64], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s = h[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            l[i * n + j] = if i == j { s.sqrt() } else { s / l[j * n + j] };
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        y[i] = (b[i] - (0..i).map(|k| l[i * n + k] * y[k]).sum::<f64>()) / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        x[i] = (y[i] - (i + 1..n).map(|k| l[k * n + i] * x[k]).sum::<f64>()) / l[i * n + i];
    }
    x
}

/// argmin Σ w_i L_i(θ) + (c/2)‖θ − center‖² by Newton.
fn newton(data: &Data, weights: &[f64], c: f64, center: &[f64], start: &[f64]) -> Vec<f64> {
    let mut theta = start.to_vec();
    for _ in 0..100 {
        let (mut g, mut h) = grad_hess(data, weights, &theta);
        for i in 0..DA {
            g[i] += c * (theta[i] - center[i]);
            h[i * DA + i] += c;
        }
        if g.iter().map(|x| x * x).sum::<f64>().sqrt() < 1e-13 {
            return theta;
        }
        let step = solve(&h, &g);
        theta.iter_mut().zip(&step).for_each(|(t, s)| *t -= s);
    }
    panic!("Newton did not converge");
}

/// Both stages with pretraining point `z` up-weighted by `eps`: (θ_pt, θ_ft).
fn two_stage(pt: &Data, ft: &Data, z: Option<usize>, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let mut w = vec![1.0 / pt.len() as f64; pt.len()];
    if let Some(z) = z {
        w[z] += eps;
    }
    let zero = vec![0.0; DA];
    let theta_pt = newton(pt, &w, L2, &zero, &zero);
    let wf = vec![1.0 / ft.len() as f64; ft.len()];
    let theta_ft = newton(ft, &wf, ALPHA, &theta_pt, &theta_pt);
    (theta_pt, theta_ft)
}

/// `f = log p(y_q | x_q; θ)`.
fn measure(q: &([f64; DA], f64), theta: &[f64]) -> f64 {
    let p = sigmoid(dot(&q.0, theta));
    if q.1 > 0.5 {
        p.ln()
    } else {
        (1.0 - p).ln()
    }
}

/// EK-FAC factors holding the exact mean Hessian of `data` at θ (without any damping).
fn exact_factors(data: &Data, theta: &[f64], spec: &LayerSpec) -> Factors {
    let w = vec![1.0 / data.len() as f64; data.len()];
    let (_, h) = grad_hess(data, &w, theta);
    let (vals, vecs) = tda_curvature::linalg::sym_eigen(&h, DA).unwrap();
    let mut f = Factors::identity(vec![spec.clone()], "gold");
    f.strategy = Strategy::Ekfac;
    f.layers[0] = LayerFactors {
        spec: spec.clone(),
        a_basis: Some(Eigenbasis {
            dim: DA,
            blocks: vec![(0, DA)],
            vecs: vec![vecs.iter().map(|&x| x as f32).collect()],
            vals: vals.iter().map(|&x| x as f32).collect(),
        }),
        s_basis: Some(Eigenbasis {
            dim: 1,
            blocks: vec![(0, 1)],
            vecs: vec![vec![1.0]],
            vals: vec![1.0],
        }),
        lambda: Some(vals.iter().map(|&x| x as f32).collect()),
    };
    f
}

/// Taps of one example per "sequence" (T = 1): inputs without the bias column, and `g = ∂/∂z`.
fn taps(rows: &[([f64; DA], f64)], g: impl Fn(&([f64; DA], f64)) -> f64) -> (Vec<f32>, Vec<f32>) {
    let a = rows
        .iter()
        .flat_map(|(x, _)| x[..D].iter().map(|&v| v as f32))
        .collect();
    let gs = rows.iter().map(|r| g(r) as f32).collect();
    (a, gs)
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Scores of every pretraining point through the crate's pipeline.
#[allow(clippy::too_many_arguments)]
fn pipeline_scores(
    spec: &LayerSpec,
    query: &([f64; DA], f64),
    theta_query: &[f64],
    ft: Option<&Factors>,
    pt: Option<&Factors>,
    damping: f64,
    cands: &Data,
    theta_cand: &[f64],
) -> Vec<f64> {
    let specs = vec![spec.clone()];
    let (qa, qg) = taps(std::slice::from_ref(query), |(x, y)| {
        y - sigmoid(dot(x, theta_query))
    });
    let mask = [true];
    let lb = LayerBatch {
        a: &qa,
        g: &qg,
        mask: &mask,
        batch: 1,
        seq_len: 1,
    };
    let mut grads: Vec<QueryGradient> = query_gradients(&specs, &[lb]).unwrap();
    if let Some(ft) = ft {
        grads = transfer_through_fine_tuning(ft, &[ALPHA], &grads).unwrap();
    }
    let (pre, damp) = match pt {
        Some(pt) => (pt.clone(), Damping::Absolute(damping)),
        None => (
            Factors::identity(specs.clone(), "none"),
            Damping::Absolute(0.0),
        ),
    };
    let pq = precondition(&pre, damp, &grads, Rank::Full).unwrap();
    let qb = QueryBatch::new(&specs, &pq).unwrap();
    let (ca, cg) = taps(cands, |(x, y)| sigmoid(dot(x, theta_cand)) - y);
    let cmask = vec![true; cands.len()];
    let clb = LayerBatch {
        a: &ca,
        g: &cg,
        mask: &cmask,
        batch: cands.len(),
        seq_len: 1,
    };
    let sc = score_candidates(&qb, &[clb]).unwrap();
    (0..cands.len()).map(|b| sc.total(b, 0)).collect()
}

#[test]
fn multi_stage_influence_matches_re_solving_both_stages() {
    let mut rng = Rng(3);
    let pt = data(
        &mut rng,
        60,
        [1.0, 1.0, 0.7, 0.5, 0.3],
        [1.0, -1.0, 0.5, 0.0, 0.8],
        0.0,
    );
    // Fine-tuning data: other directions matter, other labelling rule, shifted inputs.
    let ft = data(
        &mut rng,
        30,
        [0.3, 0.5, 2.0, 1.5, 1.0],
        [0.0, 0.5, -1.0, 1.0, 0.4],
        0.3,
    );
    let queries = data(
        &mut rng,
        4,
        [0.3, 0.5, 2.0, 1.5, 1.0],
        [0.0, 0.5, -1.0, 1.0, 0.4],
        0.3,
    );
    let (theta_pt, theta_ft) = two_stage(&pt, &ft, None, 0.0);
    let spec = LayerSpec::new("lr", D, 1, true);
    let f_pt = exact_factors(&pt, &theta_pt, &spec);
    let f_ft = exact_factors(&ft, &theta_ft, &spec);
    let eps = 1e-4;
    let mut worst = f64::INFINITY;
    let mut worst_rel: f64 = 0.0;
    let mut variants = [0.0f64; 5];
    for q in &queries {
        let truth: Vec<f64> = (0..pt.len())
            .map(|z| {
                let (_, up) = two_stage(&pt, &ft, Some(z), eps);
                let (_, down) = two_stage(&pt, &ft, Some(z), -eps);
                (measure(q, &up) - measure(q, &down)) / (2.0 * eps)
            })
            .collect();
        let both = pipeline_scores(
            &spec,
            q,
            &theta_ft,
            Some(&f_ft),
            Some(&f_pt),
            L2,
            &pt,
            &theta_pt,
        );
        let scale = truth.iter().map(|x| x.abs()).fold(0.0, f64::max);
        for (s, t) in both.iter().zip(&truth) {
            worst_rel = worst_rel.max((s - t).abs() / scale);
        }
        let p = pearson(&both, &truth);
        worst = worst.min(p);
        let others = [
            pipeline_scores(&spec, q, &theta_ft, Some(&f_ft), None, L2, &pt, &theta_pt),
            pipeline_scores(&spec, q, &theta_ft, None, Some(&f_pt), L2, &pt, &theta_pt),
            pipeline_scores(&spec, q, &theta_ft, None, None, L2, &pt, &theta_pt),
            // Single-stage influence at θ_ft: query and candidate gradients both at θ_ft,
            // fine-tuning Hessian damped by α.
            pipeline_scores(
                &spec,
                q,
                &theta_ft,
                None,
                Some(&f_ft),
                ALPHA,
                &pt,
                &theta_ft,
            ),
        ];
        variants[0] += p / queries.len() as f64;
        for (v, o) in variants[1..].iter_mut().zip(&others) {
            *v += pearson(o, &truth) / queries.len() as f64;
        }
    }
    eprintln!(
        "two-stage gold test, {} pretraining points × {} queries: Pearson with the re-solved \
         finite difference: both Hessians {:.5} (worst query {worst:.5}, max error {worst_rel:.1e} \
         of the largest score), fine-tuning only {:.3}, pretraining only {:.3}, none {:.3}, \
         single-stage at θ_ft {:.3}",
        pt.len(),
        queries.len(),
        variants[0],
        variants[1],
        variants[2],
        variants[3],
        variants[4]
    );
    assert!(worst >= 0.999, "worst Pearson {worst}");
    assert!(worst_rel <= 1e-3, "max relative error {worst_rel}");
    for (name, v) in [
        "fine-tuning only",
        "pretraining only",
        "none",
        "single-stage at θ_ft",
    ]
    .iter()
    .zip(&variants[1..])
    {
        assert!(
            *v < variants[0] - 0.02,
            "{name} ({v:.4}) should be measurably worse than both Hessians ({:.4})",
            variants[0]
        );
    }
}
