//! The candidate contraction on the model's device: every query scored against one batch of
//! candidate taps, the same two paths as the host's `tda_curvature::score` (chosen per layer by
//! the same cost model and dense-query budget, [`QueryBatch::per_sequence`]):
//! - per token: `s_t(q) = Σ_{c ∈ q} (g_t L)_c (a_t R)_c`, two GEMMs and a GEMM with the column →
//!   query indicator; `[B·T, Q]` crosses to the host;
//! - per sequence: `G_b = g_bᵀ a_b` contracted with the dense `P_q`, in column chunks of
//!   [`CHUNK`] weights whose f32 products cross to the host (`[chunks, B, Q]`) and are summed
//!   there in f64, as the host path sums its chunks.
//!
//! Padding rows are filled with 0 before any product, so they score 0 whatever they held. With
//! [`Precision::Bf16`] the GEMMs take bf16 operands; their results are cast back to f32 before
//! the per-query reduction.

use std::cell::OnceCell;

use burn::prelude::*;
use tda_curvature::score::{CandidateScores, LayerSums, QueryBatch};

use super::{in_f32, in_precision, to_f64, Precision};
use crate::error::{Result, TraceError};
use crate::host::DeviceTaps;

/// Weights per chunk of the per-sequence contraction (as the host path).
const CHUNK: usize = 4096;

/// The queries of a trace uploaded once: per layer `L_cat [d_out, w]`, `R_cat [d_a, w]` and the
/// column → query indicator `[w, Q]`; the dense queries `[chunks, CHUNK, Q]` are uploaded the
/// first time a layer is scored per sequence.
pub struct DeviceQueries<B: Backend> {
    layers: Vec<QueryLayer<B>>,
}

struct QueryLayer<B: Backend> {
    left: Tensor<B, 2>,
    right: Tensor<B, 2>,
    columns: Tensor<B, 2>,
    dense: OnceCell<Tensor<B, 3>>,
}

impl<B: Backend> DeviceQueries<B> {
    pub fn upload(queries: &QueryBatch, device: &B::Device) -> Self {
        let nq = queries.n_queries();
        let layers = queries
            .specs()
            .iter()
            .enumerate()
            .map(|(l, spec)| {
                let (left, right, w, offsets) = queries.packed(l);
                let mut columns = vec![0f32; w * nq];
                for q in 0..nq {
                    for c in offsets[q]..offsets[q + 1] {
                        columns[c * nq + q] = 1.0;
                    }
                }
                let up = |v: &[f32], r: usize, c: usize| {
                    Tensor::from_data(TensorData::new(v.to_vec(), [r, c]), device)
                };
                QueryLayer {
                    left: up(left, spec.d_out, w),
                    right: up(right, spec.d_a(), w),
                    columns: up(&columns, w, nq),
                    dense: OnceCell::new(),
                }
            })
            .collect();
        Self { layers }
    }
}

/// Scores of the layers `first .. first + taps.a.len()` of one candidate batch (taps of the
/// training loss), as `tda_curvature::score::score_layers` computes them on the host: the other
/// layers' `per_layer` entries are 0, `per_token` is filled only when asked for.
pub fn score_on_device<B: Backend>(
    queries: &QueryBatch,
    dq: &DeviceQueries<B>,
    first: usize,
    taps: &DeviceTaps<B>,
    per_token: bool,
    precision: Precision,
) -> Result<CandidateScores> {
    let specs = queries.specs();
    let end = first + taps.a.len();
    if taps.a.is_empty() || end > specs.len() {
        return Err(TraceError::Usage(format!(
            "taps for layers {first}..{end} of {} tracked layers",
            specs.len()
        )));
    }
    let (b, t, nq, nl) = (taps.batch, taps.seq_len, queries.n_queries(), specs.len());
    let rows = b * t;
    let device = taps.a[0].device();
    let pad = Tensor::<B, 2, Bool>::from_data(
        TensorData::new(taps.mask.iter().map(|&m| !m).collect::<Vec<_>>(), [b, t]),
        &device,
    )
    .reshape([rows, 1]);
    let mut sums = LayerSums::new(b, t, nq, nl, per_token);
    for (l, spec) in specs.iter().enumerate().take(end).skip(first) {
        let ql = &dq.layers[l];
        let (d_out, d_a) = (spec.d_out, spec.d_a());
        let mut a = taps.a[l - first].clone().reshape([rows, spec.d_in]);
        if spec.has_bias {
            a = Tensor::cat(vec![a, Tensor::ones([rows, 1], &device)], 1);
        }
        let a = a.mask_fill(pad.clone().expand([rows, d_a]), 0.0);
        let g = taps.g[l - first]
            .clone()
            .reshape([rows, d_out])
            .mask_fill(pad.clone().expand([rows, d_out]), 0.0);
        if !per_token && queries.per_sequence(l, rows, b) {
            let n = d_out * d_a;
            let nc = n.div_ceil(CHUNK);
            let dense = ql.dense.get_or_init(|| {
                let mut p = queries.form_dense(l); // [Q, n]
                let mut t = vec![0f32; nc * CHUNK * nq]; // [n padded, Q]
                for q in 0..nq {
                    for (k, x) in p.drain(..n).enumerate() {
                        t[k * nq + q] = x;
                    }
                }
                Tensor::from_data(TensorData::new(t, [nc, CHUNK, nq]), &device)
            });
            let mut grads = in_f32(
                in_precision(g.reshape([b, t, d_out]).swap_dims(1, 2), precision)
                    .matmul(in_precision(a.reshape([b, t, d_a]), precision)),
            )
            .reshape([b, n]);
            if nc * CHUNK > n {
                grads = Tensor::cat(vec![grads, Tensor::zeros([b, nc * CHUNK - n], &device)], 1);
            }
            let parts = in_f32(
                in_precision(grads.reshape([b, nc, CHUNK]).swap_dims(0, 1), precision)
                    .matmul(in_precision(dense.clone(), precision)),
            ); // [nc, b, Q]
            let parts = to_f64(parts);
            for part in parts.chunks(b * nq) {
                sums.add_sequences(l, part);
            }
            continue;
        }
        let x = in_f32(in_precision(g, precision).matmul(in_precision(ql.left.clone(), precision)));
        let y =
            in_f32(in_precision(a, precision).matmul(in_precision(ql.right.clone(), precision)));
        let s = (x * y).matmul(ql.columns.clone());
        sums.add_tokens(l, &to_f64(s)); // [rows, Q]
    }
    let scores = sums.into_scores();
    if let Some(l) = (first..end)
        .find(|&l| (0..b).any(|bi| (0..nq).any(|q| !scores.layer(bi, l, q).is_finite())))
    {
        return Err(TraceError::Usage(format!(
            "layer {}: non-finite value in the candidates' activations a or output gradients g",
            specs[l].name
        )));
    }
    if !taps.value.is_finite() {
        return Err(TraceError::Usage(format!(
            "the differentiated scalar is {} (non-finite model output)",
            taps.value
        )));
    }
    Ok(scores)
}
