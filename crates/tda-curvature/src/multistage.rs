//! Multi-stage influence (pretraining → fine-tuning; Chen et al. 2020, Bao et al. 2025).
//!
//! Pretraining minimises `(1/N) Σ L(z_i, θ)`, fine-tuning minimises `L_ft(θ) + (α/2)‖θ − θ_pt‖²`
//! from `θ_pt`. Up-weighting a pretraining sequence `z` by `ε` moves `θ_pt` by
//! `−(H_pt + λ)⁻¹ ∇L(z, θ_pt)`, and stationarity of the fine-tuning objective gives
//! `dθ_ft/dθ_pt = α (H_ft + αI)⁻¹`, so the influence on a measurement `f` of the fine-tuned model is
//!
//! ```text
//!   I(z → f) = −∇f(θ_ft)ᵀ · α(H_ft + αI)⁻¹ · (H_pt + λI)⁻¹ ∇L(z, θ_pt)
//! ```
//!
//! Both Hessians are symmetric, so the fine-tuning factor is folded into the query:
//! `∇f̃ = α(G_ft + αI)⁻¹ ∇f(θ_ft)` ([`transfer_through_fine_tuning`]) and `∇f̃` then goes through the
//! ordinary single-stage [`crate::precondition`] with the pretraining factors. The candidate pass
//! is unchanged: one pass over the pretraining candidates at `θ_pt`. When `α → ∞` the transfer is
//! the identity and the score is the single-stage score at `θ_pt` with the query gradient taken
//! at `θ_ft`.
//!
//! Units: `G` of a fit is the Gauss-Newton of the *summed* loss of one window (Λ is a mean over
//! windows of squared window gradients), while `tda train` minimises the *mean* token loss, so a
//! proximal coefficient `α` of training corresponds to `α · T̄` in `G` units, `T̄` the mean number
//! of tokens per fitted window ([`proximal_in_fit_units`]).

use rayon::prelude::*;

use crate::error::{CurvatureError, Result};
use crate::factors::Factors;
use crate::precondition::{apply_inverse, QueryGradient, QueryLayerGrad};

impl Factors {
    /// Mean real tokens per window of the covariance pass (`T̄`; 1 when unknown).
    pub fn tokens_per_sequence(&self) -> f64 {
        if self.covariance_sequences > 0 && self.tokens > 0 {
            self.tokens as f64 / self.covariance_sequences as f64
        } else {
            1.0
        }
    }
}

/// The proximal coefficient `α` of a mean-token-loss training objective, in the units of the
/// fine-tuning factors' `G` (summed window loss): `α · T̄`.
pub fn proximal_in_fit_units(alpha: f64, ft: &Factors) -> f64 {
    alpha * ft.tokens_per_sequence()
}

impl QueryLayerGrad {
    /// The factored form of a dense `M [d_out, d_a]`: `gᵀ a = M` with `n = min(d_out, d_a)`
    /// (`g = I, a = M` when `d_out ≤ d_a`, else `g = Mᵀ, a = I`). Exact.
    pub fn from_dense(m: &[f64], d_out: usize, d_a: usize) -> Self {
        assert_eq!(m.len(), d_out * d_a, "from_dense: shape");
        if d_out <= d_a {
            let mut g = vec![0.0; d_out * d_out];
            (0..d_out).for_each(|i| g[i * d_out + i] = 1.0);
            QueryLayerGrad {
                n: d_out,
                g,
                a: m.to_vec(),
            }
        } else {
            let mut g = vec![0.0; d_a * d_out];
            for i in 0..d_out {
                for j in 0..d_a {
                    g[j * d_out + i] = m[i * d_a + j];
                }
            }
            let mut a = vec![0.0; d_a * d_a];
            (0..d_a).for_each(|i| a[i * d_a + i] = 1.0);
            QueryLayerGrad { n: d_a, g, a }
        }
    }
}

/// `α_l (G_ft + α_l I)⁻¹ ∇f` per layer `l` for each query gradient (taken at `θ_ft`), returned as
/// query gradients ready for [`crate::precondition`] with the pretraining factors.
/// `alpha` holds one `α_l > 0` per layer of `ft` (same units as `G_ft`).
pub fn transfer_through_fine_tuning(
    ft: &Factors,
    alpha: &[f64],
    queries: &[QueryGradient],
) -> Result<Vec<QueryGradient>> {
    if alpha.len() != ft.layers.len() {
        return Err(CurvatureError::Usage(format!(
            "{} fine-tuning dampings for {} layers",
            alpha.len(),
            ft.layers.len()
        )));
    }
    if let Some((l, a)) = alpha
        .iter()
        .enumerate()
        .find(|(_, a)| !(a.is_finite() && **a > 0.0))
    {
        return Err(CurvatureError::Usage(format!(
            "{}: the fine-tuning damping α must be positive and finite, got {a}",
            ft.layers[l].spec.name
        )));
    }
    for q in queries {
        if q.layers.len() != ft.layers.len() {
            return Err(CurvatureError::Usage(format!(
                "query has {} layers, fine-tuning factors have {}",
                q.layers.len(),
                ft.layers.len()
            )));
        }
    }
    let n_l = ft.layers.len();
    let jobs: Vec<(usize, usize)> = (0..queries.len())
        .flat_map(|q| (0..n_l).map(move |l| (q, l)))
        .collect();
    let done: Vec<Result<QueryLayerGrad>> = jobs
        .par_iter()
        .map(|&(q, l)| {
            let layer = &ft.layers[l];
            let (d_out, d_a) = (layer.spec.d_out, layer.spec.d_a());
            let grad = &queries[q].layers[l];
            if grad.g.len() != grad.n * d_out || grad.a.len() != grad.n * d_a {
                return Err(crate::error::shape_err(
                    &layer.spec.name,
                    "query gradient does not match the fine-tuning factors",
                ));
            }
            let mut m = apply_inverse(layer, ft.strategy, alpha[l], &grad.dense(d_out, d_a));
            m.iter_mut().for_each(|x| *x *= alpha[l]);
            if !m.iter().all(|x| x.is_finite()) {
                return Err(crate::error::non_finite(
                    &layer.spec.name,
                    "query after the fine-tuning preconditioner",
                ));
            }
            Ok(QueryLayerGrad::from_dense(&m, d_out, d_a))
        })
        .collect();
    let mut it = done.into_iter();
    let mut out = Vec::with_capacity(queries.len());
    for _ in queries {
        let layers = (0..n_l)
            .map(|_| it.next().unwrap())
            .collect::<Result<_>>()?;
        out.push(QueryGradient { layers });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::SplitMix;
    use crate::taps::LayerSpec;

    fn rand(n: usize, seed: u64) -> Vec<f64> {
        let mut r = SplitMix::new(seed);
        (0..n).map(|_| r.normal()).collect()
    }

    #[test]
    fn from_dense_is_exact_for_both_orientations() {
        for (d_out, d_a) in [(3, 5), (5, 3), (4, 4)] {
            let m = rand(d_out * d_a, 7);
            let f = QueryLayerGrad::from_dense(&m, d_out, d_a);
            let back = f.dense(d_out, d_a);
            for (x, y) in m.iter().zip(&back) {
                assert!((x - y).abs() < 1e-14, "{d_out}×{d_a}: {x} vs {y}");
            }
            assert_eq!(f.n, d_out.min(d_a));
        }
    }

    #[test]
    fn identity_transfer_scales_by_alpha_over_one_plus_alpha() {
        // identity factors: α(1 + α)⁻¹ ∇f.
        let spec = LayerSpec::new("l", 3, 2, true);
        let ft = Factors::identity(vec![spec], "x");
        let g = QueryLayerGrad {
            n: 2,
            g: rand(4, 1),
            a: rand(8, 2),
        };
        let q = QueryGradient {
            layers: vec![g.clone()],
        };
        let out = transfer_through_fine_tuning(&ft, &[3.0], &[q]).unwrap();
        let want = g.dense(2, 4);
        let got = out[0].layers[0].dense(2, 4);
        for (w, x) in want.iter().zip(&got) {
            assert!((w * 0.75 - x).abs() < 1e-12);
        }
        let e = transfer_through_fine_tuning(
            &ft,
            &[0.0],
            &[QueryGradient {
                layers: vec![g.clone()],
            }],
        )
        .unwrap_err();
        assert!(e.to_string().contains("must be positive"), "{e}");
    }
}
