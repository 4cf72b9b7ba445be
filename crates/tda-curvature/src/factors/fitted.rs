//! What a fit produces: the strategy and fitting options, eigenbases, and the factors of each
//! layer and of the whole model.

use crate::error::{CurvatureError, Result};
use crate::linalg::{gemm_par, Op};
use crate::taps::LayerSpec;
use faer::traits::ComplexField;
use std::fmt;
use std::str::FromStr;

/// Curvature approximation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Identity,
    Diagonal,
    Kfac,
    Ekfac,
}

impl Strategy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Identity => "identity",
            Strategy::Diagonal => "diagonal",
            Strategy::Kfac => "kfac",
            Strategy::Ekfac => "ekfac",
        }
    }
    /// Whether a covariance pass (A, S, eigendecomposition) is needed.
    pub fn needs_covariance(&self) -> bool {
        matches!(self, Strategy::Kfac | Strategy::Ekfac)
    }
    /// Whether a per-sequence Λ pass is needed.
    pub fn needs_lambda(&self) -> bool {
        matches!(self, Strategy::Diagonal | Strategy::Ekfac)
    }
    /// Whether the strategy works in the Kronecker eigenbasis `Q_S ⊗ Q_A`.
    pub fn uses_eigenbasis(&self) -> bool {
        self.needs_covariance()
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = CurvatureError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "identity" => Ok(Strategy::Identity),
            "diagonal" => Ok(Strategy::Diagonal),
            "kfac" => Ok(Strategy::Kfac),
            "ekfac" => Ok(Strategy::Ekfac),
            _ => Err(CurvatureError::Usage(format!(
                "unknown strategy {s:?} (expected identity, diagonal, kfac or ekfac)"
            ))),
        }
    }
}

/// Fitting options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FitConfig {
    pub strategy: Strategy,
    /// Block-diagonal A/S: maximum block width (`None` = full covariances).
    pub max_block: Option<usize>,
}

impl FitConfig {
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            max_block: None,
        }
    }
    pub fn with_max_block(mut self, w: usize) -> Self {
        self.max_block = Some(w);
        self
    }
}

/// Eigendecomposition of a (block-diagonal) covariance of width `dim`.
///
/// `blocks[k] = (offset, size)`; `vecs[k]` is `[size, size]` row-major with column `c` the `c`-th
/// eigenvector of block `k`; `vals [dim]` are the eigenvalues (ascending within each block, clamped
/// at 0), aligned with the rotated coordinates.
#[derive(Clone, Debug, PartialEq)]
pub struct Eigenbasis {
    pub dim: usize,
    pub blocks: Vec<(usize, usize)>,
    pub vecs: Vec<Vec<f32>>,
    pub vals: Vec<f32>,
}

impl Eigenbasis {
    /// `x [n, dim]` → `x Q` (`transpose = false`) or `x Qᵀ` (`transpose = true`), Q block-diagonal.
    pub(crate) fn rotate<T: ComplexField + Copy>(
        x: &[T],
        n: usize,
        dim: usize,
        blocks: &[(usize, usize)],
        q: &[Vec<T>],
        transpose: bool,
    ) -> Vec<T> {
        Self::rotate_par(
            x,
            n,
            dim,
            blocks,
            q,
            transpose,
            faer::get_global_parallelism(),
        )
    }

    /// [`Eigenbasis::rotate`] with the given GEMM parallelism.
    fn rotate_par<T: ComplexField + Copy>(
        x: &[T],
        n: usize,
        dim: usize,
        blocks: &[(usize, usize)],
        q: &[Vec<T>],
        transpose: bool,
        par: faer::Par,
    ) -> Vec<T> {
        debug_assert_eq!(x.len(), n * dim);
        let mut out = vec![T::zero_impl(); n * dim];
        if blocks.len() == 1 {
            let qo = if transpose {
                Op::t(&q[0], dim, dim)
            } else {
                Op::n(&q[0], dim, dim)
            };
            gemm_par(&mut out, Op::n(x, n, dim), qo, false, par);
            return out;
        }
        for (k, &(off, s)) in blocks.iter().enumerate() {
            let mut xb = Vec::with_capacity(n * s);
            for r in 0..n {
                xb.extend_from_slice(&x[r * dim + off..r * dim + off + s]);
            }
            let mut yb = vec![T::zero_impl(); n * s];
            let qo = if transpose {
                Op::t(&q[k], s, s)
            } else {
                Op::n(&q[k], s, s)
            };
            gemm_par(&mut yb, Op::n(&xb, n, s), qo, false, par);
            for r in 0..n {
                out[r * dim + off..r * dim + off + s].copy_from_slice(&yb[r * s..(r + 1) * s]);
            }
        }
        out
    }

    /// The block-diagonal `Q [dim, dim]` row-major (column `c` the `c`-th eigenvector).
    pub(crate) fn dense(&self) -> Vec<f32> {
        let mut q = vec![0.0f32; self.dim * self.dim];
        for (&(off, s), v) in self.blocks.iter().zip(&self.vecs) {
            for i in 0..s {
                q[(off + i) * self.dim + off..(off + i) * self.dim + off + s]
                    .copy_from_slice(&v[i * s..(i + 1) * s]);
            }
        }
        q
    }
    /// `x [n, dim]` (f32) → `x Q`.
    pub(crate) fn rotate_f32(&self, x: &[f32], n: usize) -> Vec<f32> {
        Self::rotate(x, n, self.dim, &self.blocks, &self.vecs, false)
    }

    /// Eigenvectors upcast to f64 (for the f64 preconditioning path).
    pub(crate) fn vecs_f64(&self) -> Vec<Vec<f64>> {
        self.vecs
            .iter()
            .map(|v| v.iter().map(|&x| x as f64).collect())
            .collect()
    }
}

/// Factors of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerFactors {
    pub spec: LayerSpec,
    /// Eigenbasis of `A` (`kfac`, `ekfac`), width `d_a`.
    pub a_basis: Option<Eigenbasis>,
    /// Eigenbasis of `S` (`kfac`, `ekfac`), width `d_out`.
    pub s_basis: Option<Eigenbasis>,
    /// Undamped `Λ [d_out, d_a]` row-major in the strategy's basis; `None` means Λ ≡ 1 (`identity`).
    pub lambda: Option<Vec<f32>>,
}

impl LayerFactors {
    /// Mean of Λ (1 for `identity`), used by the heuristic damping.
    pub fn lambda_mean(&self) -> f64 {
        match &self.lambda {
            None => 1.0,
            Some(l) if l.is_empty() => 1.0,
            Some(l) => l.iter().map(|&x| x as f64).sum::<f64>() / l.len() as f64,
        }
    }
}

/// Fitted factors of all tracked layers (damping is applied at use, never stored).
#[derive(Clone, Debug, PartialEq)]
pub struct Factors {
    /// Caller-provided model fingerprint (checked at load).
    pub fingerprint: String,
    pub strategy: Strategy,
    pub max_block: Option<usize>,
    /// Real tokens seen by the covariance pass (0 if none was run).
    pub tokens: u64,
    /// Sequences (≥ 1 real token) seen by the covariance pass (0 if none was run).
    pub covariance_sequences: u64,
    /// Sequences seen by the Λ pass (0 if none was run).
    pub lambda_sequences: u64,
    /// Loss targets (tokens whose next-token loss counts) of the covariance pass, when the caller
    /// knows them (set by `tda-trace`'s fit; `None` in factors saved before it was recorded).
    pub loss_targets: Option<u64>,
    pub layers: Vec<LayerFactors>,
}

impl Factors {
    /// These factors without their eigenbases and Λ (layer specs, strategy and counts kept):
    /// all scoring needs once the queries are preconditioned, without holding the factors' size
    /// (1.6 GB for GPT-2-small's blocks) through the candidate pass.
    pub fn into_specs_only(self) -> Self {
        Self {
            layers: self
                .layers
                .into_iter()
                .map(|l| LayerFactors {
                    spec: l.spec,
                    a_basis: None,
                    s_basis: None,
                    lambda: None,
                })
                .collect(),
            ..self
        }
    }

    /// Layer specs in order.
    pub fn specs(&self) -> Vec<LayerSpec> {
        self.layers.iter().map(|l| l.spec.clone()).collect()
    }

    /// An identity of this fit (16 hex digits): a hash of the fingerprint, strategy, counts, layer
    /// shapes, every eigenvalue and every Λ entry, so two fits of one model (another corpus,
    /// seed or strategy) differ, and a fit saved and loaded again keeps it. One pass over Λ.
    pub fn id(&self) -> String {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut eat = |x: u64| {
            h = (h ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            h ^= h >> 29;
        };
        for b in self
            .fingerprint
            .bytes()
            .chain(self.strategy.to_string().bytes())
        {
            eat(b as u64);
        }
        eat(self.tokens);
        eat(self.covariance_sequences);
        eat(self.lambda_sequences);
        for l in &self.layers {
            eat((l.spec.d_in as u64) << 32 | l.spec.d_out as u64);
            for b in [&l.a_basis, &l.s_basis].into_iter().flatten() {
                b.vals.iter().for_each(|v| eat(v.to_bits() as u64));
            }
            if let Some(lam) = &l.lambda {
                lam.iter().for_each(|v| eat(v.to_bits() as u64));
            }
        }
        format!("{h:016x}")
    }

    /// Checks that `specs` equals the fitted layers (names, shapes, bias, order).
    pub fn check_specs(&self, specs: &[LayerSpec]) -> Result<()> {
        if specs.len() != self.layers.len() {
            return Err(CurvatureError::Usage(format!(
                "factors cover {} layers, taps have {}",
                self.layers.len(),
                specs.len()
            )));
        }
        for (s, l) in specs.iter().zip(&self.layers) {
            if *s != l.spec {
                return Err(crate::error::shape_err(
                    &s.name,
                    format!("spec {s:?} differs from fitted {:?}", l.spec),
                ));
            }
        }
        Ok(())
    }

    /// Identity factors (no data needed).
    pub fn identity(specs: Vec<LayerSpec>, fingerprint: &str) -> Self {
        Self {
            fingerprint: fingerprint.to_string(),
            strategy: Strategy::Identity,
            max_block: None,
            tokens: 0,
            covariance_sequences: 0,
            lambda_sequences: 0,
            loss_targets: None,
            layers: specs
                .into_iter()
                .map(|spec| LayerFactors {
                    spec,
                    a_basis: None,
                    s_basis: None,
                    lambda: None,
                })
                .collect(),
        }
    }
}

/// `Λ = scale · λ_S ⊗ λ_A` as `[d_out, d_a]` row-major (f64 product rounded to f32 once).
pub(crate) fn kron_lambda(s_vals: &[f32], a_vals: &[f32], scale: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(s_vals.len() * a_vals.len());
    for &s in s_vals {
        for &a in a_vals {
            out.push((scale * s as f64 * a as f64) as f32);
        }
    }
    out
}
