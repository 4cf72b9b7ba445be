//! Damping, query gradients and the preconditioned (low-rank) query.
//!
//! For a query (measurement) gradient `G_q [d_out, d_a]` per layer, the preconditioned query is
//!
//! ```text
//!   P_q = −(G + λI)⁻¹ G_q = −Q_S [(Q_Sᵀ G_q Q_A) ⊘ (Λ + λ)] Q_Aᵀ      (kfac, ekfac)
//!   P_q = −G_q ⊘ (Λ + λ)                                               (diagonal)
//!   P_q = −G_q / (1 + λ)                                               (identity)
//! ```
//!
//! The minus sign is folded in here so that the score `⟨P_q, G_b⟩` of a candidate with training
//! gradient `G_b` is `d f / d ε` (positive = up-weighting the candidate raises `f`).
//! `P_q` is then compressed to rank `r`: `P_q ≈ L Rᵀ`, `L = U Σ [d_out, r]`, `R = V [d_a, r]`.
//!
//! Damping, the inverse in the eigenbasis and the rank-`r` compression are three steps of the
//! single formula above and share the private `Basis64` helper; the SVDs of the compression are
//! in `low_rank.rs`.

use crate::error::{CurvatureError, Result};
use crate::factors::{Eigenbasis, Factors, LayerFactors, Strategy};
use crate::linalg::{gemm, Op};
use crate::low_rank::{compress, low_rank_sq_norm, svd_factors, to_f32};
pub use crate::low_rank::{LowRankLayer, Rank};
use crate::taps::{validate_batches, LayerBatch, LayerSpec};
use rayon::prelude::*;

/// Damping λ added to Λ at use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Damping {
    /// `λ = scale · mean(Λ)` per layer (Grosse et al. 2023 use `scale = 0.1`, the default).
    Heuristic(f64),
    /// The same absolute `λ` for every layer.
    Absolute(f64),
}

impl Default for Damping {
    fn default() -> Self {
        Damping::Heuristic(0.1)
    }
}

impl Damping {
    /// λ for one layer.
    pub fn value(&self, layer: &LayerFactors) -> f64 {
        match *self {
            Damping::Heuristic(s) => s * layer.lambda_mean(),
            Damping::Absolute(l) => l,
        }
    }
}

/// One layer of a query gradient, kept factored: `G_q = gᵀ a` with `g [n, d_out]` and
/// `a [n, d_a]` (bias column included) over the query's `n` real tokens, f64. A query touches
/// few tokens, so this is far smaller than the dense `[d_out, d_a]` matrix and lets the
/// eigenbasis rotation cost O(n·d²) instead of O(d³).
#[derive(Clone, Debug, PartialEq)]
pub struct QueryLayerGrad {
    pub n: usize,
    pub g: Vec<f64>,
    pub a: Vec<f64>,
}

impl QueryLayerGrad {
    /// The dense `G_q = gᵀ a` `[d_out, d_a]` row-major.
    pub fn dense(&self, d_out: usize, d_a: usize) -> Vec<f64> {
        let mut gq = vec![0.0; d_out * d_a];
        if self.n > 0 {
            gemm(
                &mut gq,
                Op::t(&self.g, self.n, d_out),
                Op::n(&self.a, self.n, d_a),
                false,
            );
        }
        gq
    }
}

/// Gradient of one query's measurement, one factored [`QueryLayerGrad`] per layer.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryGradient {
    pub layers: Vec<QueryLayerGrad>,
}

/// One query gradient per sequence of the batch (taps of the measurement `f`, one
/// [`LayerBatch`] per spec). A sequence without real tokens gives a zero gradient.
pub fn query_gradients(
    specs: &[LayerSpec],
    batches: &[LayerBatch<'_>],
) -> Result<Vec<QueryGradient>> {
    validate_batches(specs, batches)?;
    let n_seq = batches[0].batch;
    let per_layer: Vec<Vec<QueryLayerGrad>> = specs
        .par_iter()
        .zip(batches.par_iter())
        .map(|(spec, lb)| {
            (0..n_seq)
                .map(|b| {
                    let (a, g, rows) = lb.gather_seq(spec, b);
                    QueryLayerGrad {
                        n: rows.len(),
                        g: g.iter().map(|&x| x as f64).collect(),
                        a: a.iter().map(|&x| x as f64).collect(),
                    }
                })
                .collect()
        })
        .collect();
    Ok((0..n_seq)
        .map(|b| QueryGradient {
            layers: per_layer.iter().map(|l| l[b].clone()).collect(),
        })
        .collect())
}

/// `x [rows, cols]` → `xᵀ [cols, rows]`, in 32 × 32 tiles (both sides of a tile stay in cache).
fn transpose<T: Copy + Default>(x: &[T], rows: usize, cols: usize) -> Vec<T> {
    const TILE: usize = 32;
    let mut t = vec![T::default(); x.len()];
    for i0 in (0..rows).step_by(TILE) {
        for j0 in (0..cols).step_by(TILE) {
            for i in i0..(i0 + TILE).min(rows) {
                for j in j0..(j0 + TILE).min(cols) {
                    t[j * rows + i] = x[i * cols + j];
                }
            }
        }
    }
    t
}

/// f64 copies of the layer's eigenbases (`(Q_S, Q_A)`), if any.
pub(crate) struct Basis64<'a> {
    s: &'a Eigenbasis,
    a: &'a Eigenbasis,
    qs: Vec<Vec<f64>>,
    qa: Vec<Vec<f64>>,
}

impl<'a> Basis64<'a> {
    pub(crate) fn of(layer: &'a LayerFactors) -> Option<Self> {
        match (&layer.s_basis, &layer.a_basis) {
            (Some(s), Some(a)) => Some(Self {
                s,
                a,
                qs: s.vecs_f64(),
                qa: a.vecs_f64(),
            }),
            _ => None,
        }
    }
    /// `Q_Sᵀ M Q_A` for `M [d_out, d_a]`.
    pub(crate) fn to_eigen(&self, m: &[f64]) -> Vec<f64> {
        let (d_out, d_a) = (self.s.dim, self.a.dim);
        let mqa = Eigenbasis::rotate(m, d_out, d_a, &self.a.blocks, &self.qa, false);
        let t = transpose(&mqa, d_out, d_a); // (M Q_A)ᵀ [d_a, d_out]
        let r = Eigenbasis::rotate(&t, d_a, d_out, &self.s.blocks, &self.qs, false); // (M Q_A)ᵀ Q_S
        transpose(&r, d_a, d_out)
    }
    /// `Q_Sᵀ (gᵀ a) Q_A = (g Q_S)ᵀ (a Q_A)` for a factored gradient.
    pub(crate) fn to_eigen_factored(&self, grad: &QueryLayerGrad) -> Vec<f64> {
        let (d_out, d_a, n) = (self.s.dim, self.a.dim, grad.n);
        let mut m = vec![0.0; d_out * d_a];
        if n == 0 {
            return m;
        }
        let gs = Eigenbasis::rotate(&grad.g, n, d_out, &self.s.blocks, &self.qs, false);
        let aa = Eigenbasis::rotate(&grad.a, n, d_a, &self.a.blocks, &self.qa, false);
        gemm(&mut m, Op::t(&gs, n, d_out), Op::n(&aa, n, d_a), false);
        m
    }
    /// `Q_S L` for `L [d_out, r]` given in the S eigenbasis.
    pub(crate) fn left_from_eigen(&self, l: &[f64], r: usize) -> Vec<f64> {
        let lt = transpose(l, self.s.dim, r); // [r, d_out]
        let out = Eigenbasis::rotate(&lt, r, self.s.dim, &self.s.blocks, &self.qs, true); // Lᵀ Q_Sᵀ
        transpose(&out, r, self.s.dim)
    }
    /// `Q_A R` for `R [d_a, r]` given in the A eigenbasis.
    pub(crate) fn right_from_eigen(&self, x: &[f64], r: usize) -> Vec<f64> {
        let xt = transpose(x, self.a.dim, r);
        let out = Eigenbasis::rotate(&xt, r, self.a.dim, &self.a.blocks, &self.qa, true);
        transpose(&out, r, self.a.dim)
    }
    /// `P = Q_S M Q_Aᵀ` for `M [d_out, d_a]` in the eigenbasis, as exact factors of rank
    /// `r = min(d_out, d_a)` without an SVD: `L = Q_S`, `R = Q_A Mᵀ` when `d_out ≤ d_a`, else
    /// `L = Q_S M`, `R = Q_A` (one rotation; a full-rank query needs no singular vectors, and
    /// scoring costs the same for any rank-`r` factors). The rotation runs in f32 on the stored
    /// f32 eigenvectors, as the factors are stored in f32: `M` is rounded once, and each entry
    /// is an f32 sum of ≤ d products (~√d·6e-8 relative, below 3e-6 for d ≤ 2048).
    pub(crate) fn full_rank(&self, m: &[f64]) -> LowRankLayer {
        let (d_out, d_a) = (self.s.dim, self.a.dim);
        let m = to_f32(m);
        if d_out <= d_a {
            // R = Q_A Mᵀ = (M Q_Aᵀ)ᵀ.
            let mqa = Eigenbasis::rotate(&m, d_out, d_a, &self.a.blocks, &self.a.vecs, true);
            LowRankLayer {
                rank: d_out,
                left: self.s.dense(),
                right: transpose(&mqa, d_out, d_a),
            }
        } else {
            // L = Q_S M = (Mᵀ Q_Sᵀ)ᵀ.
            let mt = transpose(&m, d_out, d_a);
            let r = Eigenbasis::rotate(&mt, d_a, d_out, &self.s.blocks, &self.s.vecs, true);
            LowRankLayer {
                rank: d_a,
                left: transpose(&r, d_a, d_out),
                right: self.a.dense(),
            }
        }
    }
    /// `Q_S M Q_Aᵀ` for `M [d_out, d_a]` in the eigenbasis.
    pub(crate) fn to_params(&self, m: &[f64]) -> Vec<f64> {
        let (d_out, d_a) = (self.s.dim, self.a.dim);
        let mqa = Eigenbasis::rotate(m, d_out, d_a, &self.a.blocks, &self.qa, true);
        let t = transpose(&mqa, d_out, d_a);
        let r = Eigenbasis::rotate(&t, d_a, d_out, &self.s.blocks, &self.qs, true);
        transpose(&r, d_a, d_out)
    }
}

/// `(G + λI)⁻¹ M` for one layer, `M [d_out, d_a]` row-major (no sign flip). Exposed for tests and
/// for callers that need dense preconditioned gradients.
pub fn apply_inverse(
    layer: &LayerFactors,
    strategy: Strategy,
    damping: f64,
    m: &[f64],
) -> Vec<f64> {
    let div = |x: &mut [f64]| match &layer.lambda {
        None => x.iter_mut().for_each(|v| *v /= 1.0 + damping),
        Some(l) => x
            .iter_mut()
            .zip(l)
            .for_each(|(v, &l)| *v /= l as f64 + damping),
    };
    if strategy.uses_eigenbasis() {
        let basis = Basis64::of(layer).expect("kfac/ekfac factors carry eigenbases");
        let mut r = basis.to_eigen(m);
        div(&mut r);
        basis.to_params(&r)
    } else {
        let mut r = m.to_vec();
        div(&mut r);
        r
    }
}

/// A preconditioned query `P_q = −(G + λI)⁻¹ ∇f` (per layer, low rank).
#[derive(Clone, Debug, PartialEq)]
pub struct PreconditionedQuery {
    pub layers: Vec<LowRankLayer>,
    /// `‖P_q‖²_F` of the stored (compressed) query over all layers (used by cosine normalisation).
    pub sq_norm: f64,
    /// Per layer, the share of `‖P_q‖²_F` the stored rank-r query keeps (1 at full rank, to f32
    /// rounding; `(G + λI)⁻¹` of a zero gradient keeps 1).
    pub kept: Vec<f64>,
}

/// Preconditions each query (queries × layers in parallel) and compresses it to `rank`.
pub fn precondition(
    factors: &Factors,
    damping: Damping,
    queries: &[QueryGradient],
    rank: Rank,
) -> Result<Vec<PreconditionedQuery>> {
    for q in queries {
        if q.layers.len() != factors.layers.len() {
            return Err(CurvatureError::Usage(format!(
                "query has {} layers, factors have {}",
                q.layers.len(),
                factors.layers.len()
            )));
        }
        for (g, l) in q.layers.iter().zip(&factors.layers) {
            let complete = (factors.strategy == Strategy::Identity || l.lambda.is_some())
                && (!factors.strategy.uses_eigenbasis()
                    || (l.a_basis.is_some() && l.s_basis.is_some()));
            if !complete {
                return Err(CurvatureError::Usage(format!(
                    "layer {}: {} factors without their Λ or eigenbases (specs only) cannot precondition",
                    l.spec.name, factors.strategy
                )));
            }
            if g.g.len() != g.n * l.spec.d_out || g.a.len() != g.n * l.spec.d_a() {
                return Err(crate::error::shape_err(
                    &l.spec.name,
                    format!(
                        "query gradient factors have {} and {} values for {} tokens, expected [{}, {}] and [{}, {}]",
                        g.g.len(),
                        g.a.len(),
                        g.n,
                        g.n,
                        l.spec.d_out,
                        g.n,
                        l.spec.d_a()
                    ),
                ));
            }
        }
    }
    let n_l = factors.layers.len();
    // The eigenbases are upcast to f64 once per layer, a group of layers at a time (at most
    // BASES_GROUP_BYTES of f64 bases alive, however many queries and layers there are); within
    // a group, the (query, layer) jobs run in parallel.
    let mut done: Vec<Option<Result<(LowRankLayer, f64)>>> =
        (0..queries.len() * n_l).map(|_| None).collect();
    for group in layer_groups(factors) {
        let bases: Vec<Option<Basis64<'_>>> = group
            .clone()
            .into_par_iter()
            .map(|l| Basis64::of(&factors.layers[l]))
            .collect();
        let jobs: Vec<(usize, usize)> = (0..queries.len())
            .flat_map(|q| group.clone().map(move |l| (q, l)))
            .collect();
        let out: Vec<Result<(LowRankLayer, f64)>> = jobs
            .par_iter()
            .map(|&(q, l)| {
                let basis = bases[l - group.start].as_ref();
                precondition_one(factors, damping, basis, &queries[q].layers[l], l, q, rank)
            })
            .collect();
        for (&(q, l), r) in jobs.iter().zip(out) {
            done[q * n_l + l] = Some(r);
        }
    }
    let mut it = done.into_iter();
    let mut out = Vec::with_capacity(queries.len());
    for _ in queries {
        let mut layers = Vec::with_capacity(n_l);
        let mut kept = Vec::with_capacity(n_l);
        let mut sq = 0.0;
        for l in 0..n_l {
            let (lr, full_sq) = it.next().flatten().expect("every job ran")?;
            let stored = low_rank_sq_norm(
                &lr,
                factors.layers[l].spec.d_out,
                factors.layers[l].spec.d_a(),
            );
            sq += stored;
            kept.push(if full_sq > 0.0 { stored / full_sq } else { 1.0 });
            layers.push(lr);
        }
        out.push(PreconditionedQuery {
            layers,
            sq_norm: sq,
            kept,
        });
    }
    Ok(out)
}

/// f64 bases alive at once while preconditioning (one group of layers).
const BASES_GROUP_BYTES: usize = 1 << 30;

/// Consecutive layers whose f64 eigenbases together stay under [`BASES_GROUP_BYTES`] (a layer
/// larger than that is a group of its own).
fn layer_groups(factors: &Factors) -> Vec<std::ops::Range<usize>> {
    let bytes = |l: &LayerFactors| {
        [&l.a_basis, &l.s_basis]
            .iter()
            .filter_map(|b| b.as_ref())
            .map(|b| b.vecs.iter().map(Vec::len).sum::<usize>() * 8)
            .sum::<usize>()
    };
    let mut groups: Vec<std::ops::Range<usize>> = vec![];
    let mut used = 0;
    for (i, l) in factors.layers.iter().enumerate() {
        let b = bytes(l);
        match groups.last_mut() {
            Some(g) if used + b <= BASES_GROUP_BYTES => {
                g.end = i + 1;
                used += b;
            }
            _ => {
                groups.push(i..i + 1);
                used = b;
            }
        }
    }
    groups
}

/// Query `q`'s layer `l`: `P = −(G + λI)⁻¹ G_q` compressed to `rank`, and `‖P‖²_F` before the
/// compression.
fn precondition_one(
    factors: &Factors,
    damping: Damping,
    basis: Option<&Basis64<'_>>,
    grad: &QueryLayerGrad,
    l: usize,
    q: usize,
    rank: Rank,
) -> Result<(LowRankLayer, f64)> {
    let n_l = factors.layers.len();
    let layer = &factors.layers[l];
    let lam = damping.value(layer);
    if !(lam >= 0.0 && lam.is_finite()) {
        return Err(crate::error::non_finite(
            &layer.spec.name,
            format!("damping {lam}"),
        ));
    }
    let (d_out, d_a) = (layer.spec.d_out, layer.spec.d_a());
    let seed = (q * n_l + l) as u64;
    let numerical = |msg| CurvatureError::Numerical {
        layer: layer.spec.name.clone(),
        msg,
    };
    let check = |x: &[f64]| {
        if x.iter().all(|v| v.is_finite()) {
            Ok(x.iter().map(|v| v * v).sum::<f64>())
        } else {
            Err(crate::error::non_finite(
                &layer.spec.name,
                "preconditioned query",
            ))
        }
    };
    if factors.strategy.uses_eigenbasis() {
        // P = Q_S M Q_Aᵀ with M = −(Q_Sᵀ G Q_A) ⊘ (Λ + λ). Q_S and Q_A are orthogonal, so the
        // rank-r SVD of P is Q_S·(rank-r SVD of M)·Q_Aᵀ (and ‖P‖ = ‖M‖): compress M in the
        // eigenbasis and rotate only the [d, r] factors back (never forming the dense P).
        let basis = basis.expect("kfac/ekfac factors carry eigenbases");
        let mut m = basis.to_eigen_factored(grad);
        match &layer.lambda {
            None => m.iter_mut().for_each(|v| *v /= -(1.0 + lam)),
            Some(lambda) => m
                .iter_mut()
                .zip(lambda)
                .for_each(|(v, &x)| *v /= -(x as f64 + lam)),
        }
        let full_sq = check(&m)?;
        if match rank {
            Rank::Full => true,
            Rank::Truncated(r) => r >= d_out.min(d_a),
        } {
            return Ok((basis.full_rank(&m), full_sq));
        }
        let (left, right, r) = svd_factors(&m, d_out, d_a, rank, seed).map_err(numerical)?;
        let lr = LowRankLayer {
            rank: r,
            left: to_f32(&basis.left_from_eigen(&left, r)),
            right: to_f32(&basis.right_from_eigen(&right, r)),
        };
        Ok((lr, full_sq))
    } else {
        let mut p = apply_inverse(layer, factors.strategy, lam, &grad.dense(d_out, d_a));
        p.iter_mut().for_each(|x| *x = -*x);
        let full_sq = check(&p)?;
        Ok((
            compress(&p, d_out, d_a, rank, seed).map_err(numerical)?,
            full_sq,
        ))
    }
}
