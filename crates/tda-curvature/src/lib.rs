//! Training-data attribution math on plain arrays, independent of any model.
//!
//! Influence of a training (candidate) sequence `z` on a measurement `f` (e.g. the log-probability of
//! a completion), with the damped Gauss-Newton matrix `G` (block-diagonal over layers, EK-FAC):
//!
//! ```text
//!   I(z → f) = −∇f(θ)ᵀ (G + λI)⁻¹ ∇L(z, θ)
//! ```
//!
//! **Sign convention (used everywhere in this crate):** a *positive* score means that up-weighting
//! the candidate in the training objective *raises* `f`. The query taps must be gradients of the
//! measurement `f` (to be raised); the candidate taps gradients of the training loss `L` (minimised).
//! The minus sign is folded into the preconditioned query (see [`precondition`]).
//!
//! Inputs are per linear layer "taps": for a batch of `B` sequences of `T` tokens, the layer input
//! activations `a` `[B·T, d_in]`, the gradient of a scalar w.r.t. the layer output `g` `[B·T, d_out]`
//! (row-major `f32`) and a padding mask `[B·T]` (`true` = real token). With a bias, a constant-1
//! column is appended to `a` on real tokens (so `d_a = d_in + 1`). The per-sequence weight gradient
//! is `G_b = Σ_t g_t a_tᵀ` `[d_out, d_a]`; this crate never forms it for candidates.
//!
//! Pipeline: [`factors::FactorFitter`] (covariance pass, eigendecomposition, Λ pass) →
//! [`factors::Factors`] (saved/loaded by [`storage`]) → [`precondition::query_gradients`] +
//! [`precondition::precondition`] → [`score::QueryBatch`] → [`score::score_candidates`] →
//! [`normalize`] → [`topk::TopK`]. Multi-stage (pretraining → fine-tuning) influence folds the
//! fine-tuning preconditioner into the query first ([`multistage`]).

pub mod error;
pub mod factors;
pub mod linalg;
mod low_rank;
pub mod multistage;
pub mod normalize;
pub mod precondition;
pub mod project;
pub mod score;
pub mod storage;
mod taps;
pub mod topk;

pub use error::{CurvatureError, Result};
pub use factors::{
    Eigenbasis, FactorFitter, Factors, FitConfig, LayerFactors, Pass, PassSums, Strategy,
};
pub use multistage::{proximal_in_fit_units, transfer_through_fine_tuning};
pub use normalize::{normalize, Normalization, NormalizeOptions};
pub use precondition::{
    precondition, query_gradients, Damping, PreconditionedQuery, QueryGradient, QueryLayerGrad,
    Rank,
};
pub use project::{l2_normalize, GradientProjection, LayerProjection};
pub use score::{
    candidate_stats, grad_sq_norms, relabel_influence, score_candidates, score_candidates_with,
    score_layers, self_influence, CandidateScores, CandidateStats, QueryBatch,
};
pub use taps::{all_finite, LayerBatch, LayerSpec};
pub use topk::{Order, TopK};
