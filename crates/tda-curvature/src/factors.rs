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

use crate::error::{non_finite, CurvatureError, Result};
use crate::linalg::{gemm, partition, sym_eigen, Op};
use crate::{validate_batches, LayerBatch, LayerSpec};
use faer::traits::ComplexField;
use rayon::prelude::*;
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
        debug_assert_eq!(x.len(), n * dim);
        let mut out = vec![T::zero_impl(); n * dim];
        if blocks.len() == 1 {
            let qo = if transpose {
                Op::t(&q[0], dim, dim)
            } else {
                Op::n(&q[0], dim, dim)
            };
            gemm(&mut out, Op::n(x, n, dim), qo, false);
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
            gemm(&mut yb, Op::n(&xb, n, s), qo, false);
            for r in 0..n {
                out[r * dim + off..r * dim + off + s].copy_from_slice(&yb[r * s..(r + 1) * s]);
            }
        }
        out
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
    pub layers: Vec<LayerFactors>,
}

impl Factors {
    /// Layer specs in order.
    pub fn specs(&self) -> Vec<LayerSpec> {
        self.layers.iter().map(|l| l.spec.clone()).collect()
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

/// Which pass the fitter expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Token-level covariances A and S.
    Covariance,
    /// Sequence-level Λ (after the eigendecomposition for `ekfac`).
    Lambda,
}

/// Per-layer accumulators.
struct LayerAcc {
    a_blocks: Vec<(usize, usize)>,
    s_blocks: Vec<(usize, usize)>,
    /// Diagonal blocks of Σ a aᵀ (f64, `[s, s]` each).
    cov_a: Vec<Vec<f64>>,
    cov_s: Vec<Vec<f64>>,
    a_basis: Option<Eigenbasis>,
    s_basis: Option<Eigenbasis>,
    /// Σ_b of squared (rotated) per-sequence gradients, `[d_out, d_a]` f64.
    lambda: Vec<f64>,
}

/// Streaming fitter: run [`FactorFitter::add`] over the corpus for each pass reported by
/// [`FactorFitter::pass`], calling [`FactorFitter::end_pass`] after each, then [`FactorFitter::finish`].
///
/// ```ignore
/// let mut fit = FactorFitter::new(specs, FitConfig::new(Strategy::Ekfac))?;
/// while fit.pass().is_some() {
///     for batch in corpus { fit.add(&taps_of(batch))?; }
///     fit.end_pass()?;
/// }
/// let factors = fit.finish("model-fingerprint")?;
/// ```
pub struct FactorFitter {
    specs: Vec<LayerSpec>,
    config: FitConfig,
    pass: Option<Pass>,
    acc: Vec<LayerAcc>,
    tokens: u64,
    cov_sequences: u64,
    lambda_sequences: u64,
}

/// Rows processed at once in the covariance pass (bounds the f64 staging buffer).
const COV_CHUNK_ROWS: usize = 1024;

impl FactorFitter {
    pub fn new(specs: Vec<LayerSpec>, config: FitConfig) -> Result<Self> {
        if specs.is_empty() {
            return Err(CurvatureError::Usage("no layers to fit".into()));
        }
        let mut names = std::collections::HashSet::new();
        for s in &specs {
            if s.d_out == 0 || s.d_a() == 0 {
                return Err(crate::error::shape_err(&s.name, "zero-sized layer"));
            }
            if !names.insert(s.name.clone()) {
                return Err(CurvatureError::Usage(format!(
                    "duplicate layer name {}",
                    s.name
                )));
            }
        }
        let st = config.strategy;
        let acc = specs
            .iter()
            .map(|s| {
                let a_blocks = partition(s.d_a(), config.max_block);
                let s_blocks = partition(s.d_out, config.max_block);
                LayerAcc {
                    cov_a: if st.needs_covariance() {
                        a_blocks.iter().map(|&(_, k)| vec![0.0; k * k]).collect()
                    } else {
                        vec![]
                    },
                    cov_s: if st.needs_covariance() {
                        s_blocks.iter().map(|&(_, k)| vec![0.0; k * k]).collect()
                    } else {
                        vec![]
                    },
                    a_blocks,
                    s_blocks,
                    a_basis: None,
                    s_basis: None,
                    lambda: vec![],
                }
            })
            .collect();
        let pass = if st.needs_covariance() {
            Some(Pass::Covariance)
        } else if st.needs_lambda() {
            Some(Pass::Lambda)
        } else {
            None
        };
        let mut f = Self {
            specs,
            config,
            pass,
            acc,
            tokens: 0,
            cov_sequences: 0,
            lambda_sequences: 0,
        };
        if pass == Some(Pass::Lambda) {
            f.alloc_lambda();
        }
        Ok(f)
    }

    /// The pass expected next (`None`: call [`FactorFitter::finish`]).
    pub fn pass(&self) -> Option<Pass> {
        self.pass
    }

    pub fn specs(&self) -> &[LayerSpec] {
        &self.specs
    }

    fn alloc_lambda(&mut self) {
        for (a, s) in self.acc.iter_mut().zip(&self.specs) {
            a.lambda = vec![0.0; s.n_params()];
        }
    }

    /// Feeds one batch of taps (one [`LayerBatch`] per spec, same order) to the current pass.
    pub fn add(&mut self, batches: &[LayerBatch<'_>]) -> Result<()> {
        validate_batches(&self.specs, batches)?;
        let first = &batches[0];
        let n_seq = (0..first.batch)
            .filter(|&b| first.real_rows(b).next().is_some())
            .count() as u64;
        match self.pass {
            None => Err(CurvatureError::Usage(
                "all passes are done; call finish()".into(),
            )),
            Some(Pass::Covariance) => {
                self.specs
                    .par_iter()
                    .zip(self.acc.par_iter_mut())
                    .zip(batches.par_iter())
                    .for_each(|((spec, acc), lb)| accumulate_covariance(spec, acc, lb));
                self.tokens += first.mask.iter().filter(|&&m| m).count() as u64;
                self.cov_sequences += n_seq;
                Ok(())
            }
            Some(Pass::Lambda) => {
                let ekfac = self.config.strategy == Strategy::Ekfac;
                self.specs
                    .par_iter()
                    .zip(self.acc.par_iter_mut())
                    .zip(batches.par_iter())
                    .for_each(|((spec, acc), lb)| accumulate_lambda(spec, acc, lb, ekfac));
                self.lambda_sequences += n_seq;
                Ok(())
            }
        }
    }

    /// Ends the current pass: after the covariance pass, eigendecomposes A and S (all layers and
    /// blocks in parallel) and moves to the Λ pass if the strategy needs one.
    pub fn end_pass(&mut self) -> Result<()> {
        match self.pass {
            None => Err(CurvatureError::Usage("no pass in progress".into())),
            Some(Pass::Covariance) => {
                if self.tokens == 0 {
                    return Err(CurvatureError::Usage(
                        "covariance pass saw no real tokens".into(),
                    ));
                }
                let count = self.tokens as f64;
                // Jobs: (layer, side A=0/S=1, block).
                let mut jobs = vec![];
                for (l, acc) in self.acc.iter().enumerate() {
                    for k in 0..acc.cov_a.len() {
                        jobs.push((l, 0usize, k));
                    }
                    for k in 0..acc.cov_s.len() {
                        jobs.push((l, 1usize, k));
                    }
                }
                let results: Vec<Result<(Vec<f64>, Vec<f64>)>> = jobs
                    .par_iter()
                    .map(|&(l, side, k)| {
                        let acc = &self.acc[l];
                        let name = &self.specs[l].name;
                        let (cov, blocks, what) = if side == 0 {
                            (&acc.cov_a[k], &acc.a_blocks, "A")
                        } else {
                            (&acc.cov_s[k], &acc.s_blocks, "S")
                        };
                        let s = blocks[k].1;
                        if !cov.iter().all(|x| x.is_finite()) {
                            return Err(non_finite(name, format!("covariance {what}")));
                        }
                        let m: Vec<f64> = cov.iter().map(|x| x / count).collect();
                        let (mut vals, vecs) =
                            sym_eigen(&m, s).map_err(|msg| CurvatureError::Numerical {
                                layer: name.clone(),
                                msg: format!("{what}: {msg}"),
                            })?;
                        if !vals.iter().all(|x| x.is_finite())
                            || !vecs.iter().all(|x| x.is_finite())
                        {
                            return Err(non_finite(name, format!("eigendecomposition of {what}")));
                        }
                        vals.iter_mut().for_each(|v| *v = v.max(0.0));
                        Ok((vals, vecs))
                    })
                    .collect();
                let mut results = results.into_iter();
                for acc in self.acc.iter_mut() {
                    let mut take = |blocks: &[(usize, usize)]| -> Result<Eigenbasis> {
                        let dim = blocks.iter().map(|b| b.1).sum();
                        let mut vals = Vec::with_capacity(dim);
                        let mut vecs = Vec::with_capacity(blocks.len());
                        for _ in blocks {
                            let (v, q) = results.next().expect("one result per job")?;
                            vals.extend(v.iter().map(|&x| x as f32));
                            vecs.push(q.iter().map(|&x| x as f32).collect());
                        }
                        Ok(Eigenbasis {
                            dim,
                            blocks: blocks.to_vec(),
                            vecs,
                            vals,
                        })
                    };
                    acc.a_basis = Some(take(&acc.a_blocks)?);
                    acc.s_basis = Some(take(&acc.s_blocks)?);
                    acc.cov_a = vec![];
                    acc.cov_s = vec![];
                }
                if self.config.strategy.needs_lambda() {
                    self.pass = Some(Pass::Lambda);
                    self.alloc_lambda();
                } else {
                    self.pass = None;
                }
                Ok(())
            }
            Some(Pass::Lambda) => {
                if self.lambda_sequences == 0 {
                    return Err(CurvatureError::Usage("lambda pass saw no sequences".into()));
                }
                self.pass = None;
                Ok(())
            }
        }
    }

    /// Builds the factors (only once all passes are done).
    pub fn finish(self, fingerprint: &str) -> Result<Factors> {
        if let Some(p) = self.pass {
            return Err(CurvatureError::Usage(format!(
                "finish() called during the {p:?} pass"
            )));
        }
        let st = self.config.strategy;
        let tbar = if self.cov_sequences > 0 {
            self.tokens as f64 / self.cov_sequences as f64
        } else {
            1.0
        };
        let mut layers = Vec::with_capacity(self.specs.len());
        for (spec, acc) in self.specs.into_iter().zip(self.acc) {
            let lambda = match st {
                Strategy::Identity => None,
                Strategy::Kfac => {
                    let (s, a) = (acc.s_basis.as_ref().unwrap(), acc.a_basis.as_ref().unwrap());
                    Some(kron_lambda(&s.vals, &a.vals, tbar))
                }
                Strategy::Diagonal | Strategy::Ekfac => {
                    let n = self.lambda_sequences as f64;
                    let l: Vec<f32> = acc.lambda.iter().map(|&x| (x / n) as f32).collect();
                    if !l.iter().all(|x| x.is_finite()) {
                        return Err(non_finite(&spec.name, "lambda"));
                    }
                    Some(l)
                }
            };
            layers.push(LayerFactors {
                spec,
                a_basis: acc.a_basis,
                s_basis: acc.s_basis,
                lambda,
            });
        }
        Ok(Factors {
            fingerprint: fingerprint.to_string(),
            strategy: st,
            max_block: self.config.max_block,
            tokens: self.tokens,
            covariance_sequences: self.cov_sequences,
            lambda_sequences: self.lambda_sequences,
            layers,
        })
    }
}

/// A_blk += X[:, blk]ᵀ X[:, blk] for each diagonal block, over real rows, in f64.
fn accumulate_covariance(spec: &LayerSpec, acc: &mut LayerAcc, lb: &LayerBatch<'_>) {
    let rows: Vec<usize> = (0..lb.rows()).filter(|&r| lb.mask[r]).collect();
    for chunk in rows.chunks(COV_CHUNK_ROWS) {
        let (a, g) = lb.gather_rows(spec, chunk);
        let n = chunk.len();
        add_gram_blocks(&mut acc.cov_a, &acc.a_blocks, &a, n, spec.d_a());
        add_gram_blocks(&mut acc.cov_s, &acc.s_blocks, &g, n, spec.d_out);
    }
}

fn add_gram_blocks(
    cov: &mut [Vec<f64>],
    blocks: &[(usize, usize)],
    x: &[f32],
    n: usize,
    dim: usize,
) {
    for (k, &(off, s)) in blocks.iter().enumerate() {
        let mut xb = Vec::with_capacity(n * s);
        for r in 0..n {
            xb.extend(
                x[r * dim + off..r * dim + off + s]
                    .iter()
                    .map(|&v| v as f64),
            );
        }
        gemm(&mut cov[k], Op::t(&xb, n, s), Op::n(&xb, n, s), true);
    }
}

/// Λ += Σ_b (G̃_b)² with G̃_b = (g Q_S)ᵀ (a Q_A) (`ekfac`) or G_b = gᵀ a (`diagonal`), per sequence.
fn accumulate_lambda(spec: &LayerSpec, acc: &mut LayerAcc, lb: &LayerBatch<'_>, ekfac: bool) {
    let (d_out, d_a) = (spec.d_out, spec.d_a());
    let mut gt = vec![0.0f32; d_out * d_a];
    for b in 0..lb.batch {
        let (a, g, rows) = lb.gather_seq(spec, b);
        let n = rows.len();
        if n == 0 {
            continue;
        }
        if ekfac {
            let ar = acc.a_basis.as_ref().unwrap().rotate_f32(&a, n);
            let gr = acc.s_basis.as_ref().unwrap().rotate_f32(&g, n);
            gemm(&mut gt, Op::t(&gr, n, d_out), Op::n(&ar, n, d_a), false);
        } else {
            gemm(&mut gt, Op::t(&g, n, d_out), Op::n(&a, n, d_a), false);
        }
        for (l, &x) in acc.lambda.iter_mut().zip(&gt) {
            let x = x as f64;
            *l += x * x;
        }
    }
}
