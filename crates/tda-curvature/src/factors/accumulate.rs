//! The covariance and Λ accumulation of one batch of host taps into a layer's f64 sums
//! (the kernels behind [`super::FactorFitter::add_layers`]).

use std::borrow::Cow;

use super::fitted::Eigenbasis;
use crate::linalg::{gemm_par, simd, Op};
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

/// Rows per f32 Gram product in the covariance pass (bounds the staging buffer; each product is
/// one f32 GEMM added to the f64 running sum).
const COV_CHUNK_ROWS: usize = 1024;
/// Sequences whose squared per-sequence gradients are summed in f32 before the f64 Λ sum.
const LAMBDA_SUBGROUP: usize = 4;
/// The most memory the f32 buffers of one Λ group (partial sums and products) may take.
const LAMBDA_GROUP_BYTES: usize = 256 << 20;

/// A_blk += X[:, blk]ᵀ X[:, blk] for each diagonal block, over real rows: the lower triangle only
/// (see [`mirror_lower`]), each chunk of ≤ `COV_CHUNK_ROWS` rows as one f32 GEMM added to the f64
/// running sum (Kronfluence accumulates in f32 throughout; an f32 sum of ≤ 1024 products keeps
/// ~1e-6 relative, measured against the f64 sum in `tests::f32_chunks_match_f64_sums`).
pub(super) fn accumulate_covariance(spec: &LayerSpec, acc: &mut LayerAcc, lb: &LayerBatch<'_>) {
    let rows: Vec<usize> = (0..lb.rows()).filter(|&r| lb.mask[r]).collect();
    for chunk in rows.chunks(COV_CHUNK_ROWS) {
        let (a, g) = lb.gather_rows(spec, chunk);
        let n = chunk.len();
        add_gram_blocks(&mut acc.cov_a, &acc.a_blocks, &a, n, spec.d_a());
        add_gram_blocks(&mut acc.cov_s, &acc.s_blocks, &g, n, spec.d_out);
    }
}

/// Row strides (in f32) that are a multiple of this, from [`PADDED_FROM`] on, are padded by
/// [`STRIDE_PAD`] before a Gram product: when faer packs `Xᵀ`, such rows alias in the cache
/// (measured on 1024 rows: width 1024 at 149 GFLOP/s unpadded, 210 padded; 2048 at 135 and 217;
/// 512 at 159 and 167). The copy costs `n · dim` moves against `n · dim²` multiply-adds.
const ALIASING_STRIDE: usize = 512;
const PADDED_FROM: usize = 1024;
const STRIDE_PAD: usize = 16;

fn add_gram_blocks(
    cov: &mut [Vec<f64>],
    blocks: &[(usize, usize)],
    x: &[f32],
    n: usize,
    dim: usize,
) {
    use faer::linalg::matmul::triangular::{matmul, BlockStructure};
    let padded: Vec<f32>;
    let xm = if dim >= PADDED_FROM && dim.is_multiple_of(ALIASING_STRIDE) {
        let ld = dim + STRIDE_PAD;
        let mut buf = vec![0.0f32; n * ld];
        for (dst, src) in buf.chunks_mut(ld).zip(x.chunks(dim)) {
            dst[..dim].copy_from_slice(src);
        }
        padded = buf;
        MatRef::from_row_major_slice_with_stride(&padded, n, dim, ld)
    } else {
        MatRef::from_row_major_slice(x, n, dim)
    };
    let mut part = vec![];
    for (k, &(off, s)) in blocks.iter().enumerate() {
        let xb = xm.subcols(off, s);
        part.resize(s * s, 0.0f32);
        // Layers run in parallel around this; faer splits the product's output between threads,
        // never its sums, so the factors do not depend on the number of threads.
        matmul(
            MatMut::from_row_major_slice_mut(&mut part, s, s),
            BlockStructure::TriangularLower,
            Accum::Replace,
            xb.transpose(),
            BlockStructure::Rectangular,
            xb,
            BlockStructure::Rectangular,
            1.0f32,
            faer::get_global_parallelism(),
        );
        let c = &mut cov[k];
        simd(|| {
            for i in 0..s {
                let (ci, pi) = (&mut c[i * s..i * s + i + 1], &part[i * s..i * s + i + 1]);
                ci.iter_mut().zip(pi).for_each(|(c, &p)| *c += p as f64);
            }
        });
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
/// The batch's real rows are rotated at once (two GEMMs); then fixed subgroups of
/// [`LAMBDA_SUBGROUP`] sequences run in parallel, each summing its squared `[d_out, d_a]`
/// gradients in f32 (≤ 4 positive terms: ~1e-7 relative), in groups whose partial sums stay within
/// [`LAMBDA_GROUP_BYTES`]; the partials are added to the f64 Λ in sequence order, so the sums do not
/// depend on the number of threads.
pub(super) fn accumulate_lambda(
    spec: &LayerSpec,
    acc: &mut LayerAcc,
    lb: &LayerBatch<'_>,
    ekfac: bool,
) {
    let (d_out, d_a) = (spec.d_out, spec.d_a());
    // Real rows in order, and each sequence's range of them.
    let mut rows = vec![];
    let mut seqs = vec![];
    for b in 0..lb.batch {
        let start = rows.len();
        rows.extend(lb.real_rows(b));
        if rows.len() > start {
            seqs.push(start..rows.len());
        }
    }
    let n = rows.len();
    let (a, g) = lb.gather_rows(spec, &rows);
    let (a, g) = if ekfac {
        let (a_basis, s_basis) = (acc.a_basis.as_ref(), acc.s_basis.as_ref());
        (
            Cow::Owned(a_basis.unwrap().rotate_f32(&a, n)),
            Cow::Owned(s_basis.unwrap().rotate_f32(&g, n)),
        )
    } else {
        (a, g)
    };
    let subgroups: Vec<&[std::ops::Range<usize>]> = seqs.chunks(LAMBDA_SUBGROUP).collect();
    // Each subgroup in flight holds two `[d_out, d_a]` f32 buffers (its partial sum and one product).
    let group = (LAMBDA_GROUP_BYTES / (2 * d_out * d_a * 4)).max(1);
    for chunk in subgroups.chunks(group) {
        let parts: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|sub| {
                let mut sq = vec![0.0f32; d_out * d_a];
                let mut gt = vec![0.0f32; d_out * d_a];
                for r in sub.iter() {
                    let k = r.len();
                    let (gs, as_) = (
                        &g[r.start * d_out..r.end * d_out],
                        &a[r.start * d_a..r.end * d_a],
                    );
                    gemm_par(
                        &mut gt,
                        Op::t(gs, k, d_out),
                        Op::n(as_, k, d_a),
                        false,
                        faer::Par::Seq,
                    );
                    simd(|| sq.iter_mut().zip(&gt).for_each(|(s, &x)| *s += x * x));
                }
                sq
            })
            .collect();
        simd(|| {
            for part in &parts {
                acc.lambda
                    .iter_mut()
                    .zip(part)
                    .for_each(|(l, &x)| *l += x as f64);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                // Mean 0.5: sums of same-signed products are where f32 rounding accumulates.
                (*seed >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect()
    }

    /// The f32 chunks of both passes against f64 sums of the same f32 taps, over two covariance
    /// chunks (1,500 real rows) and sequences of unequal lengths. Tolerance 1e-5 relative to the
    /// largest entry: f32 sums of ≤ 1024 positive products err by ~√1024·6e-8 ≈ 2e-6.
    #[test]
    fn f32_chunks_match_f64_sums() {
        let spec = LayerSpec::new("l", 37, 53, true);
        let (batch, seq_len) = (3, 600);
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let a = noise(&mut seed, batch * seq_len * spec.d_in);
        let g = noise(&mut seed, batch * seq_len * spec.d_out);
        let mask: Vec<bool> = (0..batch * seq_len).map(|r| r % seq_len < 500).collect();
        let lb = LayerBatch {
            a: &a,
            g: &g,
            mask: &mask,
            batch,
            seq_len,
        };
        let (d_a, d_out) = (spec.d_a(), spec.d_out);
        let mut acc = LayerAcc {
            a_blocks: vec![(0, d_a)],
            s_blocks: vec![(0, d_out)],
            cov_a: vec![vec![0.0; d_a * d_a]],
            cov_s: vec![vec![0.0; d_out * d_out]],
            a_basis: None,
            s_basis: None,
            lambda: vec![0.0; d_out * d_a],
        };
        accumulate_covariance(&spec, &mut acc, &lb);
        accumulate_lambda(&spec, &mut acc, &lb, false);
        let row_a = |r: usize| -> Vec<f64> {
            let mut v: Vec<f64> = a[r * spec.d_in..(r + 1) * spec.d_in]
                .iter()
                .map(|&x| x as f64)
                .collect();
            v.push(1.0);
            v
        };
        let row_g = |r: usize| -> Vec<f64> {
            g[r * d_out..(r + 1) * d_out]
                .iter()
                .map(|&x| x as f64)
                .collect()
        };
        let real: Vec<usize> = (0..batch * seq_len).filter(|&r| mask[r]).collect();
        let (mut want_a, mut want_s) = (vec![0.0; d_a * d_a], vec![0.0; d_out * d_out]);
        let mut want_l = vec![0.0; d_out * d_a];
        for &r in &real {
            let (x, y) = (row_a(r), row_g(r));
            for i in 0..d_a {
                for j in 0..d_a {
                    want_a[i * d_a + j] += x[i] * x[j];
                }
            }
            for i in 0..d_out {
                for j in 0..d_out {
                    want_s[i * d_out + j] += y[i] * y[j];
                }
            }
        }
        for b in 0..batch {
            let mut gb = vec![0.0; d_out * d_a];
            for r in lb.real_rows(b) {
                let (x, y) = (row_a(r), row_g(r));
                for i in 0..d_out {
                    for j in 0..d_a {
                        gb[i * d_a + j] += y[i] * x[j];
                    }
                }
            }
            want_l.iter_mut().zip(&gb).for_each(|(l, x)| *l += x * x);
        }
        mirror_lower(&mut acc.cov_a, &acc.a_blocks);
        mirror_lower(&mut acc.cov_s, &acc.s_blocks);
        for (name, got, want) in [
            ("A", &acc.cov_a[0], &want_a),
            ("S", &acc.cov_s[0], &want_s),
            ("Λ", &acc.lambda, &want_l),
        ] {
            let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let err = got
                .iter()
                .zip(want)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                err / scale < 1e-5,
                "{name}: max error {:.2e} of {scale:.3e}",
                err / scale
            );
        }
    }
}
