//! The covariance and Λ accumulation of one batch of host taps into a layer's f64 sums
//! (the kernels behind [`super::FactorFitter::add_layers`]).

use super::fitted::Eigenbasis;
use crate::linalg::{gemm_par, Op};
use crate::taps::{LayerBatch, LayerSpec};
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;

/// Per-layer accumulators.
pub(super) struct LayerAcc {
    pub(super) a_blocks: Vec<(usize, usize)>,
    pub(super) s_blocks: Vec<(usize, usize)>,
    /// Diagonal blocks of Σ a aᵀ (f64, `[s, s]` each).
    pub(super) cov_a: Vec<Vec<f64>>,
    pub(super) cov_s: Vec<Vec<f64>>,
    pub(super) a_basis: Option<Eigenbasis>,
    pub(super) s_basis: Option<Eigenbasis>,
    /// Σ_b of squared (rotated) per-sequence gradients, `[d_out, d_a]` f64.
    pub(super) lambda: Vec<f64>,
}

/// Rows processed at once in the covariance pass (bounds the f64 staging buffer).
const COV_CHUNK_ROWS: usize = 1024;
/// Rows per f32 Gram product inside a chunk (the unit of parallel work).
const GRAM_SLICE_ROWS: usize = 256;
/// The most memory the per-sequence gradients of one Λ group may take.
const LAMBDA_GROUP_BYTES: usize = 256 << 20;

/// A_blk += X[:, blk]ᵀ X[:, blk] for each diagonal block, over real rows: the lower triangle only
/// (see [`mirror_lower`]), each slice of ≤ `GRAM_SLICE_ROWS` rows as an f32 GEMM added to the f64
/// running sum (Kronfluence accumulates in f32 throughout; the f32 sum of ≤ 256 products keeps
/// ~1e-6 relative).
pub(super) fn accumulate_covariance(spec: &LayerSpec, acc: &mut LayerAcc, lb: &LayerBatch<'_>) {
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
    use faer::linalg::matmul::triangular::{matmul, BlockStructure};
    let xm = MatRef::from_row_major_slice(x, n, dim);
    for (k, &(off, s)) in blocks.iter().enumerate() {
        let xb = xm.subcols(off, s);
        // Fixed slices of rows, each a sequential f32 GEMM, in parallel; added to the f64 sum in
        // slice order, so the factors do not depend on the number of threads.
        let starts: Vec<usize> = (0..n).step_by(GRAM_SLICE_ROWS).collect();
        let parts: Vec<Vec<f32>> = starts
            .par_iter()
            .map(|&r0| {
                let xs = xb.subrows(r0, GRAM_SLICE_ROWS.min(n - r0));
                let mut part = vec![0.0f32; s * s];
                matmul(
                    MatMut::from_row_major_slice_mut(&mut part, s, s),
                    BlockStructure::TriangularLower,
                    Accum::Replace,
                    xs.transpose(),
                    BlockStructure::Rectangular,
                    xs,
                    BlockStructure::Rectangular,
                    1.0f32,
                    faer::Par::Seq,
                );
                part
            })
            .collect();
        let c = &mut cov[k];
        for part in &parts {
            for i in 0..s {
                for j in 0..=i {
                    c[i * s + j] += part[i * s + j] as f64;
                }
            }
        }
    }
}

/// Copies the lower triangle of each square block onto its upper triangle (the covariance pass
/// accumulates only the lower one).
pub(super) fn mirror_lower(covs: &mut [Vec<f64>], blocks: &[(usize, usize)]) {
    for (c, &(_, s)) in covs.iter_mut().zip(blocks) {
        for i in 0..s {
            for j in 0..i {
                c[j * s + i] = c[i * s + j];
            }
        }
    }
}

/// Λ += Σ_b (G̃_b)² with G̃_b = (g Q_S)ᵀ (a Q_A) (`ekfac`) or G_b = gᵀ a (`diagonal`), per sequence.
/// Sequences run in parallel (each one's GEMMs on one thread) in groups whose `[d_out, d_a]`
/// buffers stay within [`LAMBDA_GROUP_BYTES`], and are squared into Λ in sequence order: the sums
/// do not depend on the number of threads.
pub(super) fn accumulate_lambda(
    spec: &LayerSpec,
    acc: &mut LayerAcc,
    lb: &LayerBatch<'_>,
    ekfac: bool,
) {
    let (d_out, d_a) = (spec.d_out, spec.d_a());
    let seqs: Vec<usize> = (0..lb.batch)
        .filter(|&b| lb.real_rows(b).next().is_some())
        .collect();
    let group = (LAMBDA_GROUP_BYTES / (d_out * d_a * 4)).max(1);
    let (a_basis, s_basis) = (acc.a_basis.as_ref(), acc.s_basis.as_ref());
    for chunk in seqs.chunks(group) {
        let gts: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|&b| {
                let (a, g, rows) = lb.gather_seq(spec, b);
                let n = rows.len();
                let (a, g) = if ekfac {
                    (
                        a_basis.unwrap().rotate_f32_seq(&a, n),
                        s_basis.unwrap().rotate_f32_seq(&g, n),
                    )
                } else {
                    (a, g)
                };
                let mut gt = vec![0.0f32; d_out * d_a];
                let (g, a) = (Op::t(&g, n, d_out), Op::n(&a, n, d_a));
                gemm_par(&mut gt, g, a, false, faer::Par::Seq);
                gt
            })
            .collect();
        for gt in &gts {
            for (l, &x) in acc.lambda.iter_mut().zip(gt) {
                let x = x as f64;
                *l += x * x;
            }
        }
    }
}
