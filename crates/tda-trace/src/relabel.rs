//! Relabeling influence: how a query's measurement would move if a training example's
//! continuation were replaced (seed 001's "what if this label were different").

use burn::tensor::backend::AutodiffBackend;
use tda_curvature::Factors;
use tda_model::{frozen, TokenBatch, Tokenizer, Transformer};

use crate::error::Result;
use crate::host::{host_taps, Labels, Scalar};
use crate::query::{encode_query, prepare_queries, Query, RelabelRow};
use crate::trace::TraceOptions;

/// Relabeling influence per (row, query): the change of `f_q` per unit ε when the training example
/// `prompt + original` is replaced by `prompt + replacement` (seed 001):
/// `−∇f_qᵀ (G + λI)⁻¹ (∇L(x, y') − ∇L(x, y))`. Returns `[rows][queries]`.
pub fn relabel<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    queries: &[Query],
    rows: &[RelabelRow],
    opts: &TraceOptions,
) -> Result<Vec<Vec<f64>>> {
    let fz = frozen(model);
    let specs = factors.specs();
    let prepared = prepare_queries(
        &fz,
        tokenizer,
        factors,
        queries,
        opts.measurement,
        opts.damping,
        opts.rank,
        opts.windows.batch_size,
    )?;
    let pad = model.config.eos_token_id.unwrap_or(0);
    let nq = queries.len();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(opts.windows.batch_size.max(1)) {
        let mut orig = Vec::new();
        let mut repl = Vec::new();
        for r in chunk {
            orig.push(encode_query(tokenizer, &model.config, &r.prompt, &r.original)?.0);
            repl.push(encode_query(tokenizer, &model.config, &r.prompt, &r.replacement)?.0);
        }
        let to = host_taps(
            &fz,
            &specs,
            &TokenBatch::new(&orig, pad)?,
            Scalar::Loss(Labels::Data),
        )?;
        let tr = host_taps(
            &fz,
            &specs,
            &TokenBatch::new(&repl, pad)?,
            Scalar::Loss(Labels::Data),
        )?;
        let s = tda_curvature::relabel_influence(
            &prepared.batch,
            &to.layer_batches(),
            &tr.layer_batches(),
        )?;
        for b in 0..chunk.len() {
            out.push(s[b * nq..(b + 1) * nq].to_vec());
        }
    }
    Ok(out)
}
