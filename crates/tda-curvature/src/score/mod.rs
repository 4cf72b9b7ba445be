//! Query-batched scoring of candidate sequences, self-influence, gradient norms, relabeling.
//!
//! For candidate token `t` (taps `a_t`, `g_t` of the *training loss*), query `q` and layer `ℓ`:
//!
//! ```text
//!   s_t(q, ℓ) = g_tᵀ P_{q,ℓ} a_t = Σ_r (g_t · L_{q,r}) (a_t · R_{q,r})
//! ```
//!
//! computed for all queries at once as two GEMMs per layer over the concatenated query factors
//! (`g [B·T, d_out] · L_cat [d_out, Σ_q r_q]` and `a [B·T, d_in] · R_cat [d_in, Σ_q r_q]` + bias row),
//! then a reduction over each query's `r` columns.
//! Sequence score `= Σ_t Σ_ℓ s_t(q, ℓ) = ⟨P_q, G_b⟩ = −∇fᵀ (G + λI)⁻¹ ∇L(z_b)` (positive = up-weighting
//! the candidate raises `f`).
//!
//! When per-token scores are not asked for, a layer may instead be scored by forming each
//! sequence's gradient `G_b = Σ_t g_t a_tᵀ` once and contracting it with the dense `P_q`
//! (`[B, d_out·d_a] · [d_out·d_a, Q]`): `T·d_out·d_a + Q·d_out·d_a` multiply-adds per sequence
//! instead of `T·(d_out + d_a)·Σ_q r_q`, so T× fewer for full-rank queries when Q ≥ 2. The cheaper
//! path is chosen per layer ([`Path`]), as Kronfluence chooses its einsum order by cost.

use crate::error::{CurvatureError, Result};
use crate::factors::Factors;
use crate::linalg::{gemm, gemm_par, Op};
use crate::precondition::Damping;
use crate::taps::{validate_batches, LayerBatch, LayerSpec};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;

mod queries;
pub use queries::{Path, QueryBatch, DENSE_QUERIES_TOTAL_BYTES, DENSE_QUERY_BUDGET_BYTES};

/// Scores of one candidate batch: `B` sequences × `T` tokens × `Q` queries × `L` layers.
/// Masked tokens score 0. Invariants: `Σ_t per_token = total` (when `per_token` is filled: it is
/// empty when per-token scores were not asked for), `Σ_ℓ per_layer = total`.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateScores {
    pub batch: usize,
    pub seq_len: usize,
    pub n_queries: usize,
    pub n_layers: usize,
    /// `[B, Q]`.
    pub total: Vec<f64>,
    /// `[B, T, Q]`, or empty (see [`score_candidates_with`]).
    pub per_token: Vec<f64>,
    /// `[B, L, Q]`.
    pub per_layer: Vec<f64>,
}

/// A batch's scores summed layer by layer, as a scorer computes them: per layer `[B, L, Q]` and,
/// when asked for, per token `[B, T, Q]` (rows `b·T + t`). [`LayerSums::into_scores`] adds the
/// layers up into [`CandidateScores::total`] (empty until then).
pub struct LayerSums(CandidateScores);

impl LayerSums {
    /// Zero sums; `per_token` is kept only when `want_tokens`.
    pub fn new(
        batch: usize,
        seq_len: usize,
        n_queries: usize,
        n_layers: usize,
        want_tokens: bool,
    ) -> Self {
        let rows = batch * seq_len;
        Self(CandidateScores {
            batch,
            seq_len,
            n_queries,
            n_layers,
            total: vec![],
            per_token: vec![0.0; if want_tokens { rows * n_queries } else { 0 }],
            per_layer: vec![0.0; batch * n_layers * n_queries],
        })
    }

    /// Adds layer `l`'s per-sequence scores `s [B, Q]`.
    pub fn add_sequences(&mut self, l: usize, s: &[f64]) {
        let c = &mut self.0;
        let (nq, nl) = (c.n_queries, c.n_layers);
        for b in 0..c.batch {
            for q in 0..nq {
                c.per_layer[(b * nl + l) * nq + q] += s[b * nq + q];
            }
        }
    }

    /// Adds layer `l`'s per-token scores `s [B·T, Q]` (to the per-token sums too, when kept).
    pub fn add_tokens(&mut self, l: usize, s: &[f64]) {
        let c = &mut self.0;
        let (nq, nl) = (c.n_queries, c.n_layers);
        let keep = !c.per_token.is_empty();
        for r in 0..c.batch * c.seq_len {
            let b = r / c.seq_len;
            for q in 0..nq {
                let v = s[r * nq + q];
                if keep {
                    c.per_token[r * nq + q] += v;
                }
                c.per_layer[(b * nl + l) * nq + q] += v;
            }
        }
    }

    /// The batch's scores: `total` is the sum of the per-layer scores over the layers.
    pub fn into_scores(self) -> CandidateScores {
        let mut c = self.0;
        let (nq, nl) = (c.n_queries, c.n_layers);
        c.total = vec![0.0f64; c.batch * nq];
        for b in 0..c.batch {
            for l in 0..nl {
                for q in 0..nq {
                    c.total[b * nq + q] += c.per_layer[(b * nl + l) * nq + q];
                }
            }
        }
        c
    }
}

impl CandidateScores {
    /// Adds `part` (a layer group's scores of a batch) to the batch's scores so far in `sum`, or
    /// starts them.
    pub fn accumulate(sum: &mut Option<Self>, part: Self) -> Result<()> {
        match sum {
            None => *sum = Some(part),
            Some(s) => s.add(&part)?,
        }
        Ok(())
    }

    /// Adds the scores of another layer group of the same batch (same shape).
    pub fn add(&mut self, o: &CandidateScores) -> Result<()> {
        let same = (self.batch, self.seq_len, self.n_queries, self.n_layers)
            == (o.batch, o.seq_len, o.n_queries, o.n_layers)
            && self.per_token.len() == o.per_token.len();
        if !same {
            return Err(CurvatureError::Usage(
                "adding the scores of batches of different shapes".into(),
            ));
        }
        for (x, y) in [
            (&mut self.total, &o.total),
            (&mut self.per_token, &o.per_token),
            (&mut self.per_layer, &o.per_layer),
        ] {
            x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
        }
        Ok(())
    }
    pub fn total(&self, b: usize, q: usize) -> f64 {
        self.total[b * self.n_queries + q]
    }
    pub fn token(&self, b: usize, t: usize, q: usize) -> f64 {
        self.per_token[(b * self.seq_len + t) * self.n_queries + q]
    }
    pub fn layer(&self, b: usize, l: usize, q: usize) -> f64 {
        self.per_layer[(b * self.n_layers + l) * self.n_queries + q]
    }
}

/// Scores all queries against one batch of candidate taps (gradients of the training loss), in a
/// single pass (two f32 GEMMs per layer + reduction, f64 accumulation of the reductions), with
/// per-token scores.
pub fn score_candidates(
    queries: &QueryBatch,
    batches: &[LayerBatch<'_>],
) -> Result<CandidateScores> {
    score_candidates_with(queries, batches, true)
}

/// [`score_candidates`]; without `per_token`, each layer takes the cheaper [`Path`] and
/// `per_token` is left empty. Totals and per-layer scores of the two paths agree to f32 rounding
/// (the per-sequence contraction is summed in f32 over chunks of 4 096 weights, in f64 across them).
pub fn score_candidates_with(
    queries: &QueryBatch,
    batches: &[LayerBatch<'_>],
    per_token: bool,
) -> Result<CandidateScores> {
    if batches.len() != queries.specs.len() {
        validate_batches(&queries.specs, batches)?;
    }
    score_layers(queries, 0, batches, per_token)
}

/// [`score_candidates_with`] on the layers `first .. first + batches.len()` only (a layer group
/// of a batch tapped within a memory budget): the other layers' `per_layer` entries are 0, and
/// `total` / `per_token` hold this group's part. The groups' scores [`CandidateScores::add`] up to
/// the all-layer scores.
pub fn score_layers(
    queries: &QueryBatch,
    first: usize,
    batches: &[LayerBatch<'_>],
    per_token: bool,
) -> Result<CandidateScores> {
    let end = first + batches.len();
    if batches.is_empty() || end > queries.specs.len() {
        return Err(CurvatureError::Usage(format!(
            "taps for layers {first}..{end} of {} tracked layers",
            queries.specs.len()
        )));
    }
    validate_batches(&queries.specs[first..end], batches)?;
    let (bsz, t_len, nq, nl) = (
        batches[0].batch,
        batches[0].seq_len,
        queries.n_queries,
        queries.specs.len(),
    );
    let rows = bsz * t_len;
    let want_tokens = per_token;
    let mut sums = LayerSums::new(bsz, t_len, nq, nl, want_tokens);
    // The per-sequence gradients of the widest layer scored per sequence (reused by every layer,
    // and by the next batches: see `SCRATCH`).
    let widest = (first..end)
        .filter(|&l| !want_tokens && queries.per_sequence(l, rows, bsz))
        .map(|l| queries.specs[l].n_params())
        .max();
    let mut scratch = SCRATCH.take();
    scratch.resize(scratch.len().max(bsz * widest.unwrap_or(0)), 0.0);
    for (l, spec) in queries.specs.iter().enumerate().take(end).skip(first) {
        let lb = &batches[l - first];
        let pk = &queries.layers[l];
        let w = pk.width;
        if !want_tokens && queries.per_sequence(l, rows, bsz) {
            let dense = queries.dense(l);
            sums.add_sequences(l, &per_sequence(dense, spec, lb, nq, &mut scratch));
            continue;
        }
        let mut x = vec![0.0f32; rows * w];
        let mut y = vec![0.0f32; rows * w];
        gemm(
            &mut x,
            Op::n(lb.g, rows, spec.d_out),
            Op::n(&pk.left, spec.d_out, w),
            false,
        );
        gemm(
            &mut y,
            Op::n(lb.a, rows, spec.d_in),
            Op::n(&pk.right[..spec.d_in * w], spec.d_in, w),
            false,
        );
        let bias = spec.has_bias.then(|| &pk.right[spec.d_in * w..]);
        // Reduction: one row (token) per task.
        let contrib: Vec<f64> = (0..rows)
            .into_par_iter()
            .flat_map_iter(|r| {
                let out: Vec<f64> = if !lb.mask[r] {
                    vec![0.0; nq]
                } else {
                    let (xr, yr) = (&x[r * w..(r + 1) * w], &y[r * w..(r + 1) * w]);
                    (0..nq)
                        .map(|q| {
                            let (s, e) = (pk.offsets[q], pk.offsets[q + 1]);
                            let mut acc = 0.0f64;
                            for c in s..e {
                                let yc = match bias {
                                    Some(bv) => yr[c] + bv[c],
                                    None => yr[c],
                                };
                                acc += xr[c] as f64 * yc as f64;
                            }
                            acc
                        })
                        .collect()
                };
                out.into_iter()
            })
            .collect();
        sums.add_tokens(l, &contrib);
    }
    SCRATCH.set(scratch);
    Ok(sums.into_scores())
}

thread_local! {
    /// The buffer of per-sequence gradients, kept from one batch to the next (it only grows).
    /// It is often larger than glibc's largest mmap threshold (32 MiB: 16 sequences of a
    /// 2000 × 257 layer), so a new one each batch would be fresh pages that the kernel zeroes on
    /// first write (7 % of the Kronfluence bench's trace).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `⟨P_q, G_b⟩` of one layer `[B, Q]`: `G_b = g_bᵀ a_b` over the real rows of each sequence
/// (f32 GEMMs, in parallel over sequences), contracted with `dense [Q, d_out·d_a]` in column
/// chunks whose f32 products are summed in f64. `scratch` (at least `B · d_out · d_a`) holds the
/// `G_b`; every entry used is overwritten, so one buffer serves every layer of a batch.
fn per_sequence(
    dense: &[f32],
    spec: &LayerSpec,
    lb: &LayerBatch<'_>,
    nq: usize,
    scratch: &mut [f32],
) -> Vec<f64> {
    const CHUNK: usize = 4096;
    let (d_out, d_a, bsz) = (spec.d_out, spec.d_a(), lb.batch);
    let n = d_out * d_a;
    let grads = &mut scratch[..bsz * n];
    grads.par_chunks_mut(n).enumerate().for_each(|(b, out)| {
        let (a, g, rows) = lb.gather_seq(spec, b);
        let k = rows.len();
        // k = 0 (no real row): `gemm_par` writes zeros.
        gemm_par(
            out,
            Op::t(&g, k, d_out),
            Op::n(&a, k, d_a),
            false,
            faer::Par::Seq,
        );
    });
    let gm = MatRef::from_row_major_slice(grads, bsz, n);
    let pm = MatRef::from_row_major_slice(dense, nq, n);
    let starts: Vec<usize> = (0..n).step_by(CHUNK).collect();
    let parts: Vec<Vec<f32>> = starts
        .par_iter()
        .map(|&c0| {
            let w = CHUNK.min(n - c0);
            let mut part = vec![0.0f32; bsz * nq];
            let dst = MatMut::from_row_major_slice_mut(&mut part, bsz, nq);
            let (gs, ps) = (gm.subcols(c0, w), pm.subcols(c0, w));
            matmul(
                dst,
                Accum::Replace,
                gs,
                ps.transpose(),
                1.0f32,
                faer::Par::Seq,
            );
            part
        })
        .collect();
    // Summed in chunk order, so the scores do not depend on the thread schedule.
    let mut out = vec![0.0f64; bsz * nq];
    for part in &parts {
        out.iter_mut().zip(part).for_each(|(a, &p)| *a += p as f64);
    }
    out
}

/// Relabeling influence: the change of `f` (per unit ε) when the continuation of each sequence is
/// replaced, i.e. up-weighting `(x, y')` and down-weighting `(x, y)`:
/// `score(replacement) − score(original)` = `−∇fᵀ (G+λI)⁻¹ (∇L(x, y') − ∇L(x, y))`. `[B, Q]`.
pub fn relabel_influence(
    queries: &QueryBatch,
    original: &[LayerBatch<'_>],
    replacement: &[LayerBatch<'_>],
) -> Result<Vec<f64>> {
    if original.first().map(|b| b.batch) != replacement.first().map(|b| b.batch) {
        return Err(CurvatureError::Usage(
            "relabel: original and replacement differ in batch size".into(),
        ));
    }
    let o = score_candidates(queries, original)?;
    let r = score_candidates(queries, replacement)?;
    Ok(r.total.iter().zip(&o.total).map(|(r, o)| r - o).collect())
}

/// Rotated (or plain) per-sequence gradient `[d_out, d_a]` of layer `l` for sequence `b` (f32 GEMMs).
fn seq_grad(factors: &Factors, l: usize, lb: &LayerBatch<'_>, b: usize) -> Vec<f32> {
    let layer = &factors.layers[l];
    let spec = &layer.spec;
    let (a, g, rows) = lb.gather_seq(spec, b);
    let n = rows.len();
    let mut out = vec![0.0f32; spec.n_params()];
    match (&layer.s_basis, &layer.a_basis) {
        (Some(sb), Some(ab)) if factors.strategy.uses_eigenbasis() => {
            let (ar, gr) = (ab.rotate_f32(&a, n), sb.rotate_f32(&g, n));
            gemm(
                &mut out,
                Op::t(&gr, n, spec.d_out),
                Op::n(&ar, n, spec.d_a()),
                false,
            );
        }
        _ => gemm(
            &mut out,
            Op::t(&g, n, spec.d_out),
            Op::n(&a, n, spec.d_a()),
            false,
        ),
    }
    out
}

/// Self-influence per sequence: `∇L(z)ᵀ (G + λI)⁻¹ ∇L(z) = Σ_ℓ Σ_ij (Q_Sᵀ G_b Q_A)²_ij / (Λ_ij + λ)` `[B]`.
pub fn self_influence(
    factors: &Factors,
    damping: Damping,
    batches: &[LayerBatch<'_>],
) -> Result<Vec<f64>> {
    validate_batches(&factors.specs(), batches)?;
    let bsz = batches[0].batch;
    let per_layer: Vec<Vec<f64>> = factors
        .layers
        .par_iter()
        .enumerate()
        .map(|(l, layer)| {
            let lam = damping.value(layer);
            (0..bsz)
                .map(|b| {
                    let gt = seq_grad(factors, l, &batches[l], b);
                    match &layer.lambda {
                        None => gt.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / (1.0 + lam),
                        Some(lv) => gt
                            .iter()
                            .zip(lv)
                            .map(|(&x, &v)| (x as f64).powi(2) / (v as f64 + lam))
                            .sum(),
                    }
                })
                .collect()
        })
        .collect();
    Ok((0..bsz)
        .map(|b| per_layer.iter().map(|v| v[b]).sum())
        .collect())
}

/// `Σ_ℓ ‖G_b‖²_F` per sequence without forming `G_b` when cheaper: `Σ_{t,t'} (g_t·g_t')(a_t·a_t')`
/// (Gram form, cost `n²(d_out + d_a)`) or directly (cost `n·d_out·d_a`), whichever is smaller.
pub fn grad_sq_norms(specs: &[LayerSpec], batches: &[LayerBatch<'_>]) -> Result<Vec<f64>> {
    validate_batches(specs, batches)?;
    let bsz = batches[0].batch;
    let per_layer: Vec<Vec<f64>> = specs
        .par_iter()
        .zip(batches.par_iter())
        .map(|(spec, lb)| {
            (0..bsz)
                .map(|b| {
                    let (a, g, rows) = lb.gather_seq(spec, b);
                    let n = rows.len();
                    let (d_out, d_a) = (spec.d_out, spec.d_a());
                    if n * (d_out + d_a) <= d_out * d_a {
                        let mut ka = vec![0.0f32; n * n];
                        let mut kg = vec![0.0f32; n * n];
                        gemm(&mut ka, Op::n(&a, n, d_a), Op::t(&a, n, d_a), false);
                        gemm(&mut kg, Op::n(&g, n, d_out), Op::t(&g, n, d_out), false);
                        ka.iter().zip(&kg).map(|(&x, &y)| x as f64 * y as f64).sum()
                    } else {
                        let mut gb = vec![0.0f32; d_out * d_a];
                        gemm(&mut gb, Op::t(&g, n, d_out), Op::n(&a, n, d_a), false);
                        gb.iter().map(|&x| (x as f64).powi(2)).sum()
                    }
                })
                .collect()
        })
        .collect();
    Ok((0..bsz)
        .map(|b| per_layer.iter().map(|v| v[b]).sum())
        .collect())
}

/// Per-candidate statistics (computed by [`candidate_stats`], divided by in `normalize`), all `[B]`.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateStats {
    /// `‖∇L_b‖²` over tracked layers.
    pub grad_sq_norm: Vec<f64>,
    /// `∇L_bᵀ (G + λI)⁻¹ ∇L_b` (needed by `RelatIF`).
    pub self_influence: Option<Vec<f64>>,
    /// Real tokens per candidate.
    pub tokens: Vec<usize>,
}

/// Per-candidate statistics needed by the normalisations: gradient norms, real-token counts, and
/// (when `factors` is given) self-influence with the given damping.
pub fn candidate_stats(
    specs: &[LayerSpec],
    factors: Option<(&Factors, Damping)>,
    batches: &[LayerBatch<'_>],
) -> Result<CandidateStats> {
    let grad_sq_norm = grad_sq_norms(specs, batches)?;
    let lb = &batches[0];
    let tokens = (0..lb.batch).map(|b| lb.real_rows(b).count()).collect();
    let self_influence = match factors {
        Some((f, d)) => {
            f.check_specs(specs)?;
            Some(self_influence(f, d, batches)?)
        }
        None => None,
    };
    Ok(CandidateStats {
        grad_sq_norm,
        self_influence,
        tokens,
    })
}
