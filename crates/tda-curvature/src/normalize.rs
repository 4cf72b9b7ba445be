//! Score normalisations.
//!
//! With raw score `s(q, b) = ⟨P_q, ∇L_b⟩ = −∇f_qᵀ (G + λI)⁻¹ ∇L(z_b)`:
//! - `None`: `s`.
//! - `TrainGradNorm`: `s / ‖∇L_b‖²` (seed §1.2.1; `‖∇L_b‖² = Σ_ℓ ‖G_b‖²_F` over tracked layers).
//! - `RelatIF`: `s / sqrt(∇L_bᵀ (G + λI)⁻¹ ∇L_b)` (Barshan et al. 2020; self-influence with the same
//!   factors and damping).
//! - `Cosine`: `⟨P_q, ∇L_b⟩ / (‖P_q‖ ‖∇L_b‖)`, the cosine in the space of tracked parameters
//!   (Euclidean, all tracked layers concatenated) between the stored (rank-r) preconditioned query
//!   `P_q = −(G + λI)⁻¹ ∇f_q` and the raw training gradient `∇L_b`; in `[−1, 1]`, same sign as `s`.
//!
//! Optionally the result is further divided by the candidate's number of real tokens.
//! The same divisor is applied to total, per-token and per-layer scores, so their sums still agree.
//! A zero divisor (zero gradient) gives a score of 0.

use crate::error::{CurvatureError, Result};
use crate::score::{CandidateScores, QueryBatch};

/// The statistics `normalize` divides by; defined (and computed) in [`crate::score`], also
/// reachable here at its former path.
pub use crate::score::CandidateStats;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Normalization {
    #[default]
    None,
    TrainGradNorm,
    RelatIF,
    Cosine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NormalizeOptions {
    pub method: Normalization,
    /// Also divide by the candidate's number of real tokens.
    pub per_token_count: bool,
}

/// Divides the scores in place.
pub fn normalize(
    scores: &mut CandidateScores,
    queries: &QueryBatch,
    stats: &CandidateStats,
    opts: NormalizeOptions,
) -> Result<()> {
    let (bsz, nq, t, nl) = (
        scores.batch,
        scores.n_queries,
        scores.seq_len,
        scores.n_layers,
    );
    if stats.grad_sq_norm.len() != bsz || stats.tokens.len() != bsz || queries.n_queries() != nq {
        return Err(CurvatureError::Usage(
            "normalize: stats/queries do not match the scores".into(),
        ));
    }
    let self_inf = match (opts.method, &stats.self_influence) {
        (Normalization::RelatIF, None) => {
            return Err(CurvatureError::Usage(
                "RelatIF needs self-influence in CandidateStats".into(),
            ))
        }
        (_, s) => s,
    };
    for b in 0..bsz {
        for q in 0..nq {
            let mut div = match opts.method {
                Normalization::None => 1.0,
                Normalization::TrainGradNorm => stats.grad_sq_norm[b],
                Normalization::RelatIF => self_inf.as_ref().unwrap()[b].max(0.0).sqrt(),
                Normalization::Cosine => (queries.sq_norms()[q] * stats.grad_sq_norm[b])
                    .max(0.0)
                    .sqrt(),
            };
            if opts.per_token_count {
                div *= stats.tokens[b] as f64;
            }
            let f = if div > 0.0 && div.is_finite() {
                1.0 / div
            } else {
                0.0
            };
            scores.total[b * nq + q] *= f;
            if !scores.per_token.is_empty() {
                for tt in 0..t {
                    scores.per_token[(b * t + tt) * nq + q] *= f;
                }
            }
            for l in 0..nl {
                scores.per_layer[(b * nl + l) * nq + q] *= f;
            }
        }
    }
    Ok(())
}
