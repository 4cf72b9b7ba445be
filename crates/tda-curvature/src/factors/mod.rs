//! Curvature factors per layer: covariances `A = E[a aᵀ]`, `S = E[g gᵀ]` (per real token, f64),
//! their eigendecompositions (f64, faer, layers in parallel), and the eigenvalue-corrected
//! diagonal `Λ` (EK-FAC) accumulated per sequence.
//!
//! Strategies (what `Λ` is and in which basis the damped GN block is diagonal):
//! - `identity`: `G ≈ I` (Λ ≡ 1, no pass over data).
//! - `diagonal`: `Λ = E_b[G_b ∘ G_b]` in the parameter basis (one Λ pass).
//! - `kfac`: basis `Q_S ⊗ Q_A`, `Λ = T̄ · λ_S ⊗ λ_A` with `T̄` = real tokens / sequences of the
//!   covariance pass. `T̄` turns the per-token Kronecker estimate into the per-sequence scale of
//!   `E_b[vec G_b vec G_bᵀ]` (tokens treated as independent), so `kfac` and `ekfac` share a scale;
//!   with one token per sequence it is exactly `λ_S ⊗ λ_A` (one covariance pass).
//! - `ekfac`: basis `Q_S ⊗ Q_A`, `Λ[i,j] = E_b[(Q_Sᵀ G_b Q_A)[i,j]²]`, computed from the rotated
//!   taps `G̃_b = (g Q_S)ᵀ (a Q_A)` (covariance pass, eigendecomposition, Λ pass).
//!
//! Block-diagonal option (Grosse et al. 2023, App. A): with `max_block = Some(w)`, each side whose
//! width exceeds `w` is split into `ceil(d / w)` contiguous near-equal blocks; only the diagonal
//! blocks of `A`/`S` are accumulated and eigendecomposed, so `Q` is block-diagonal (memory
//! `Σ s_k²` instead of `d²`). All downstream math accepts block-diagonal `Q`.
//!
//! Sequence-level `Λ` is "per sequence": the expectation is over sequences with at least one real
//! token (counted from the first layer's mask; all layers of a batch are expected to share the mask).
//!
//! Layout: `fitted` (what a fit produces: [`Strategy`], [`FitConfig`], [`Eigenbasis`],
//! [`LayerFactors`], [`Factors`]), `fitter` (how: [`FactorFitter`] and its [`Pass`]es) and
//! `accumulate` (its per-batch kernels on host taps); `fitter` depends on the other two, never the
//! other way.

mod accumulate;
mod fitted;
mod fitter;

pub(crate) use fitted::kron_lambda;
pub use fitted::{Eigenbasis, Factors, FitConfig, LayerFactors, Strategy};
pub use fitter::{FactorFitter, Pass, PassSums};
