//! The queries of a trace packed for the contraction ([`QueryBatch`]), and the per-layer choice
//! between the per-token and the per-sequence path ([`Path`]) within the dense-query budgets.

use crate::error::{CurvatureError, Result};
use crate::precondition::PreconditionedQuery;
use crate::taps::LayerSpec;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The most memory the per-sequence path of one layer may take: its dense queries and the
/// batch's per-sequence gradients (`(Q + B) · d_out · d_a` f32). A layer above it is always scored
/// per token (e.g. the unembedding of a 150k vocabulary).
pub const DENSE_QUERY_BUDGET_BYTES: usize = 256 << 20;

/// The most memory the dense queries of all layers together may take (`Q · d_out · d_a` f32 per
/// layer, kept for the whole trace once formed). Layers are granted it in the order they are
/// first scored per sequence; a layer it no longer holds is scored per token for the rest of the
/// trace. (Per layer alone, 24 blocks × 7 layers of a Qwen2-0.5B could hold 40 GiB.)
pub const DENSE_QUERIES_TOTAL_BYTES: usize = 1 << 30;

/// How one layer of a candidate batch is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Two GEMMs against the low-rank factors, one score per token.
    PerToken,
    /// Per-sequence gradients contracted with the dense queries (no per-token scores).
    PerSequence,
}

impl Path {
    /// The cheaper path in multiply-adds for `batch` sequences of `rows` real-or-padded tokens.
    pub fn choose(spec: &LayerSpec, rows: usize, batch: usize, width: usize, nq: usize) -> Path {
        let (d_out, d_a) = (spec.d_out, spec.d_a());
        let per_token = rows * (d_out + d_a) * width;
        let per_seq = rows * d_out * d_a + batch * d_out * d_a * nq;
        let dense_bytes = (nq + batch) * d_out * d_a * 4;
        if per_seq < per_token && dense_bytes <= DENSE_QUERY_BUDGET_BYTES {
            Path::PerSequence
        } else {
            Path::PerToken
        }
    }
}

/// Per-layer concatenation of the queries' factors.
pub(super) struct PackedLayer {
    /// `[d_out, width]` row-major.
    pub(super) left: Vec<f32>,
    /// `[d_a, width]` row-major (last row = bias row when the layer has a bias).
    pub(super) right: Vec<f32>,
    pub(super) width: usize,
    /// Column ranges per query: `offsets[q]..offsets[q + 1]`.
    pub(super) offsets: Vec<usize>,
    /// `[Q, d_out · d_a]`: each query's `P = L Rᵀ`, formed the first time the layer is scored
    /// per sequence on the host.
    dense: OnceLock<Vec<f32>>,
    /// Whether [`DENSE_QUERIES_TOTAL_BYTES`] holds this layer's dense queries (decided once).
    granted: OnceLock<bool>,
}

impl PackedLayer {
    fn form_dense(&self, spec: &LayerSpec) -> Vec<f32> {
        let (d_out, d_a, w) = (spec.d_out, spec.d_a(), self.width);
        let n = d_out * d_a;
        let mut out = vec![0.0f32; (self.offsets.len() - 1) * n];
        out.par_chunks_mut(n).enumerate().for_each(|(q, p)| {
            let (s, e) = (self.offsets[q], self.offsets[q + 1]);
            let l = MatRef::from_row_major_slice(&self.left, d_out, w).subcols(s, e - s);
            let r = MatRef::from_row_major_slice(&self.right, d_a, w).subcols(s, e - s);
            let dst = MatMut::from_row_major_slice_mut(p, d_out, d_a);
            matmul(
                dst,
                Accum::Replace,
                l,
                r.transpose(),
                1.0f32,
                faer::Par::Seq,
            );
        });
        out
    }
}

/// All queries, packed for the one-pass kernel.
pub struct QueryBatch {
    pub(super) specs: Vec<LayerSpec>,
    pub(super) n_queries: usize,
    pub(super) layers: Vec<PackedLayer>,
    sq_norms: Vec<f64>,
    /// What is left of [`DENSE_QUERIES_TOTAL_BYTES`].
    dense_left: AtomicUsize,
}

impl QueryBatch {
    pub fn new(specs: &[LayerSpec], queries: &[PreconditionedQuery]) -> Result<Self> {
        if queries.is_empty() {
            return Err(CurvatureError::Usage("no queries".into()));
        }
        let mut layers = Vec::with_capacity(specs.len());
        for (l, spec) in specs.iter().enumerate() {
            let (d_out, d_a) = (spec.d_out, spec.d_a());
            let mut offsets = vec![0];
            for q in queries {
                let lr = q.layers.get(l).ok_or_else(|| {
                    CurvatureError::Usage(format!(
                        "query has {} layers, specs have {}",
                        q.layers.len(),
                        specs.len()
                    ))
                })?;
                if lr.left.len() != d_out * lr.rank || lr.right.len() != d_a * lr.rank {
                    return Err(crate::error::shape_err(
                        &spec.name,
                        "query factor sizes do not match the layer",
                    ));
                }
                offsets.push(offsets.last().unwrap() + lr.rank);
            }
            let width = *offsets.last().unwrap();
            let mut left = vec![0.0f32; d_out * width];
            let mut right = vec![0.0f32; d_a * width];
            for (qi, q) in queries.iter().enumerate() {
                let lr = &q.layers[l];
                let off = offsets[qi];
                for i in 0..d_out {
                    left[i * width + off..i * width + off + lr.rank]
                        .copy_from_slice(&lr.left[i * lr.rank..(i + 1) * lr.rank]);
                }
                for i in 0..d_a {
                    right[i * width + off..i * width + off + lr.rank]
                        .copy_from_slice(&lr.right[i * lr.rank..(i + 1) * lr.rank]);
                }
            }
            layers.push(PackedLayer {
                left,
                right,
                width,
                offsets,
                dense: OnceLock::new(),
                granted: OnceLock::new(),
            });
        }
        Ok(Self {
            specs: specs.to_vec(),
            n_queries: queries.len(),
            layers,
            sq_norms: queries.iter().map(|q| q.sq_norm).collect(),
            dense_left: AtomicUsize::new(DENSE_QUERIES_TOTAL_BYTES),
        })
    }

    pub fn n_queries(&self) -> usize {
        self.n_queries
    }

    /// `‖P_q‖²_F` per query.
    pub fn sq_norms(&self) -> &[f64] {
        &self.sq_norms
    }

    pub fn specs(&self) -> &[LayerSpec] {
        &self.specs
    }

    /// Layer `l`'s packed query factors: `L_cat [d_out, width]` and `R_cat [d_a, width]`
    /// row-major (the bias row last), `width = Σ_q r_q`, and query `q`'s columns
    /// `offsets[q] .. offsets[q + 1]`.
    pub fn packed(&self, l: usize) -> (&[f32], &[f32], usize, &[usize]) {
        let pk = &self.layers[l];
        (&pk.left, &pk.right, pk.width, &pk.offsets)
    }

    /// The same queries with `bytes` in place of [`DENSE_QUERIES_TOTAL_BYTES`] (before any
    /// layer is scored).
    pub fn with_dense_budget(self, bytes: usize) -> Self {
        Self {
            dense_left: AtomicUsize::new(bytes),
            ..self
        }
    }

    /// Whether layer `l` of a batch of `batch` sequences × `rows` tokens in all is scored per
    /// sequence: [`Path::choose`] prefers it and the dense queries fit what is left of
    /// [`DENSE_QUERIES_TOTAL_BYTES`] (the first time a layer asks, its share is taken for good;
    /// a layer refused once is scored per token from then on).
    pub fn per_sequence(&self, l: usize, rows: usize, batch: usize) -> bool {
        let (spec, pk) = (&self.specs[l], &self.layers[l]);
        Path::choose(spec, rows, batch, pk.width, self.n_queries) == Path::PerSequence
            && *pk.granted.get_or_init(|| {
                let bytes = self.n_queries * spec.d_out * spec.d_a() * 4;
                self.dense_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                        left.checked_sub(bytes)
                    })
                    .is_ok()
            })
    }

    /// Layer `l`'s dense queries `P_q = L_q R_qᵀ`, `[Q, d_out · d_a]`, kept once formed (the
    /// host path; call it only for a layer [`QueryBatch::per_sequence`] granted).
    pub fn dense(&self, l: usize) -> &[f32] {
        self.layers[l]
            .dense
            .get_or_init(|| self.layers[l].form_dense(&self.specs[l]))
    }

    /// [`QueryBatch::dense`], formed anew and not kept (for a caller that keeps its own copy,
    /// e.g. on the model's device).
    pub fn form_dense(&self, l: usize) -> Vec<f32> {
        self.layers[l].form_dense(&self.specs[l])
    }
}
