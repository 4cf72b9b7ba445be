//! The four scorers of `tda select`. Each returns one score per pool document (`None` when the
//! document made no window), already averaged over the targets.
//!
//! The model scorers stream the pool as windows through [`for_each_batch`]; the windows of one
//! document are consecutive in that stream (and keep its `doc_id`), so per-document sums are
//! accumulated one document at a time in `O(dim)` memory.

use std::collections::HashMap;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use tda_corpus::{CorpusIndex, Document, IndexOptions, Progress, QueryOptions, Ranking};
use tda_curvature::{l2_normalize, Factors, GradientProjection, LayerSpec};
use tda_model::nn::Recorder;
use tda_model::{frozen, TokenBatch, Tokenizer, Transformer};

use super::pool::Pool;
use super::Method;
use crate::candidates::{for_each_batch, Candidate, DocSource, PassStats, WindowOptions};
use crate::error::{Result, TraceError};
use crate::host::{host_taps, Labels, Scalar, Target};
use crate::measure::Measurement;
use crate::modules::ModuleSelection;
use crate::output::Granularity;
use crate::query::{encode_query, Aggregate, Query};
use crate::trace::{trace, TraceOptions};

/// Scores of every pool document (in pool order) for one method.
#[derive(Clone, Debug, Serialize)]
pub struct Scores {
    pub method: Method,
    /// `scores[i]`: mean over targets of the score of pool document `i`; `None` = no window.
    pub scores: Vec<Option<f64>>,
    /// Documents without a score.
    pub unscored: usize,
    /// The window pass (model methods).
    pub pass: Option<PassStats>,
    /// grad-cosine: total projected dimensions `Σ_layers k_out·k_in`, and the layers projected.
    pub projection_dim: Option<usize>,
    pub projected_layers: Option<usize>,
    pub targets: usize,
    pub seconds: f64,
}

impl Scores {
    fn new(method: Method, scores: Vec<Option<f64>>, targets: usize, t0: Instant) -> Self {
        Self {
            method,
            unscored: scores.iter().filter(|s| s.is_none()).count(),
            scores,
            pass: None,
            projection_dim: None,
            projected_layers: None,
            targets,
            seconds: t0.elapsed().as_secs_f64(),
        }
    }
}

/// The pool as a document source whose ids are the pool positions (`"0"`, `"1"`, …), so that
/// every window maps back to exactly one pool record even when the records' own ids repeat.
fn pool_source(docs: &[Document]) -> DocSource {
    DocSource::docs(
        docs.iter()
            .enumerate()
            .map(|(i, d)| Document {
                id: i.to_string(),
                ..d.clone()
            })
            .collect(),
    )
}

fn pool_index(id: &str, n: usize) -> Result<usize> {
    id.parse::<usize>()
        .ok()
        .filter(|&i| i < n)
        .ok_or_else(|| TraceError::Mismatch(format!("window of unknown pool document {id:?}")))
}

fn no_targets(targets: &[Query]) -> Result<()> {
    if targets.is_empty() {
        return Err(TraceError::Usage("no targets".into()));
    }
    Ok(())
}

/// EK-FAC influence (see [`crate::trace`]): per document the sum of its windows' scores, then the
/// mean over targets — computed as one pass with the targets aggregated into one query
/// ([`Aggregate::Mean`]: `∇f = (1/m) Σ_j ∇f_j`, scores linear in `∇f`) at document granularity.
/// `opts.top_k`, `per_token`, `per_layer`, `granularity`, `aggregate` are overridden.
pub fn score_ekfac<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    targets: &[Query],
    docs: &[Document],
    opts: &TraceOptions,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<Scores> {
    no_targets(targets)?;
    let t0 = Instant::now();
    let opts = TraceOptions {
        top_k: None,
        per_token: false,
        per_layer: false,
        opponents: false,
        granularity: Granularity::Document,
        aggregate: Some(Aggregate::Mean),
        per_query: false,
        ..opts.clone()
    };
    let out = trace(
        model,
        tokenizer,
        factors,
        targets,
        &pool_source(docs),
        &opts,
        progress,
    )?;
    // One ranking (the aggregated target), one row per document; summing rows per document and
    // averaging over rankings keeps the result right for window rows or per-query rankings too.
    let mut sums: Vec<Option<f64>> = vec![None; docs.len()];
    for q in &out.queries {
        for r in &q.results {
            let i = pool_index(&r.doc_id, docs.len())?;
            *sums[i].get_or_insert(0.0) += r.score;
        }
    }
    let m = out.queries.len().max(1) as f64;
    let scores = sums.into_iter().map(|s| s.map(|s| s / m)).collect();
    let mut s = Scores::new(Method::Ekfac, scores, targets.len(), t0);
    s.pass = Some(out.report.corpus);
    Ok(s)
}

/// Options of [`score_grad_cosine`].
#[derive(Clone, Debug)]
pub struct GradCosineOptions {
    /// Target total projected dimensions (the exact total is [`GradientProjection::dim`]).
    pub projection_dim: usize,
    /// Seed of the projection matrices.
    pub seed: u64,
    /// Layers whose gradients are projected (default: the transformer blocks, no `lm_head`).
    pub modules: ModuleSelection,
    pub windows: WindowOptions,
}

impl Default for GradCosineOptions {
    fn default() -> Self {
        Self {
            projection_dim: 8192,
            seed: 0,
            modules: ModuleSelection::Blocks,
            windows: WindowOptions::default(),
        }
    }
}

/// Per-target weights of a measurement on the completion tokens (as `tda trace` builds them):
/// `[batch, seq_len − 1]`, 1 where the predicted token `t + 1` is a completion token.
fn completion_weights(seqs: &[Vec<u32>], prompts: &[usize], seq_len: usize) -> Vec<f32> {
    let t1 = seq_len - 1;
    let mut w = vec![0f32; seqs.len() * t1];
    for (b, (s, &np)) in seqs.iter().zip(prompts).enumerate() {
        for t in 0..t1 {
            if t + 1 >= np && t + 1 < s.len() {
                w[b * t1 + t] = 1.0;
            }
        }
    }
    w
}

/// Mean of the unit-normalised vectors (`[dim]`); a zero vector contributes zero.
fn mean_unit(mut vs: Vec<Vec<f32>>, dim: usize) -> Vec<f64> {
    let mut m = vec![0f64; dim];
    let n = vs.len() as f64;
    for v in vs.iter_mut() {
        l2_normalize(v);
        for (a, &x) in m.iter_mut().zip(v.iter()) {
            *a += x as f64 / n;
        }
    }
    m
}

/// One vector per window of a batch (`[batch][dim]`).
type WindowVectors<'a> = dyn FnMut(&[Candidate]) -> Result<Vec<Vec<f64>>> + 'a;

/// Streams the windows of `docs` and calls `on_doc(pool_index, window_vectors_summed)` once per
/// document with the sum of `per_window(batch)` over its windows (windows of one document are
/// consecutive in the stream).
fn per_document_sums(
    docs: &[Document],
    tokenizer: &Tokenizer,
    cfg: &tda_model::ModelConfig,
    windows: &WindowOptions,
    per_window: &mut WindowVectors<'_>,
    on_doc: &mut dyn FnMut(usize, &[f64]),
    progress: &mut dyn FnMut(usize, u64),
) -> Result<PassStats> {
    let n = docs.len();
    let mut cur: Option<(usize, Vec<f64>)> = None;
    let mut done = 0;
    let pass = for_each_batch(
        &pool_source(docs),
        tokenizer,
        cfg,
        windows,
        |cands, bytes| {
            let vs = per_window(cands)?;
            for (c, v) in cands.iter().zip(vs) {
                let i = pool_index(&c.doc_id, n)?;
                match &mut cur {
                    Some((j, acc)) if *j == i => {
                        for (a, x) in acc.iter_mut().zip(&v) {
                            *a += x;
                        }
                    }
                    _ => {
                        if let Some((j, acc)) = cur.take() {
                            on_doc(j, &acc);
                        }
                        cur = Some((i, v));
                    }
                }
            }
            done += cands.len();
            progress(done, bytes);
            Ok(())
        },
    )?;
    if let Some((j, acc)) = cur.take() {
        on_doc(j, &acc);
    }
    Ok(pass)
}

fn cosine_with(acc: &[f64], mean_target: &[f64]) -> f64 {
    let norm = acc.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        return 0.0;
    }
    acc.iter().zip(mean_target).map(|(a, m)| a * m).sum::<f64>() / norm
}

/// LESS-style gradient cosine. Per window, the training-loss gradient of every selected layer is
/// projected with [`GradientProjection`] (`P_out (Σ_t g_t a_tᵀ) P_inᵀ`, layers concatenated);
/// a document's direction is `−Σ_windows` of those (the step that lowers its loss), L2-normalised.
/// Each target's direction is its projected `∇ log p(completion | prompt)`, L2-normalised. Score
/// = mean over targets of the cosine = `⟨ẑ, mean_j q̂_j⟩`.
pub fn score_grad_cosine<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    targets: &[Query],
    docs: &[Document],
    opts: &GradCosineOptions,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<Scores> {
    no_targets(targets)?;
    let t0 = Instant::now();
    let fz = frozen(model);
    // Projection never forms covariances: no width limit on the layers.
    let specs: Vec<LayerSpec> = opts
        .modules
        .specs(&model.linear_layers(), Some(usize::MAX))?;
    let proj = GradientProjection::new(&specs, opts.projection_dim, opts.seed)?;
    let dim = proj.dim();
    let pad = model.config.eos_token_id.unwrap_or(0);
    let bs = opts.windows.batch_size.max(1);
    let mut tvecs: Vec<Vec<f32>> = Vec::with_capacity(targets.len());
    for chunk in targets.chunks(bs) {
        let mut seqs = Vec::with_capacity(chunk.len());
        let mut prompts = Vec::with_capacity(chunk.len());
        for q in chunk {
            let (ids, n) = encode_query(tokenizer, &model.config, &q.prompt, &q.completion)?;
            seqs.push(ids);
            prompts.push(n);
        }
        let batch = TokenBatch::new(&seqs, pad)?;
        let target = Target {
            kind: Measurement::LogProb,
            weights: completion_weights(&seqs, &prompts, batch.seq_len),
        };
        let taps = host_taps(&fz, &specs, &batch, Scalar::Measure(&target))?;
        tvecs.extend(proj.project(&taps.layer_batches())?);
    }
    let mean_t = mean_unit(tvecs, dim);
    let mut scores: Vec<Option<f64>> = vec![None; docs.len()];
    let pass = per_document_sums(
        docs,
        tokenizer,
        &model.config,
        &opts.windows,
        &mut |cands| {
            let seqs: Vec<Vec<u32>> = cands.iter().map(|c| c.ids.clone()).collect();
            let batch = TokenBatch::new(&seqs, pad)?;
            let taps = host_taps(&fz, &specs, &batch, Scalar::Loss(Labels::Data))?;
            Ok(proj
                .project(&taps.layer_batches())?
                .into_iter()
                .map(|v| v.into_iter().map(|x| -(x as f64)).collect())
                .collect())
        },
        &mut |i, acc| scores[i] = Some(cosine_with(acc, &mean_t)),
        progress,
    )?;
    let mut s = Scores::new(Method::GradCosine, scores, targets.len(), t0);
    s.pass = Some(pass);
    s.projection_dim = Some(dim);
    s.projected_layers = Some(specs.len());
    Ok(s)
}

/// Records the input of `lm_head` (the final hidden state after the final norm) `[b, t, d]`.
struct FinalHidden<B: Backend> {
    h: Option<Tensor<B, 3>>,
}

impl<B: Backend> Recorder<B> for FinalHidden<B> {
    fn linear(&mut self, name: &str, input: &Tensor<B, 3>, output: Tensor<B, 3>) -> Tensor<B, 3> {
        if name == "lm_head" {
            self.h = Some(input.clone());
        }
        output
    }
}

/// Sum of the final hidden states over the real tokens of each sequence, with the token count
/// appended as the last entry: `[batch][d + 1]`.
fn hidden_sums<B: Backend>(model: &Transformer<B>, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f64>>> {
    let pad = model.config.eos_token_id.unwrap_or(0);
    let batch = TokenBatch::new(seqs, pad)?;
    let device = model.embed.device();
    let mut rec = FinalHidden { h: None };
    let _ = model.forward_with(batch.to_tensor::<B>(&device), None, &mut rec);
    let h = rec
        .h
        .ok_or_else(|| TraceError::Mismatch("the model has no lm_head input to pool".into()))?;
    let [b, t, d] = h.dims();
    let host = h
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| TraceError::Mismatch(format!("hidden states: {e:?}")))?;
    let mask = batch.mask();
    Ok((0..b)
        .map(|bi| {
            let mut s = vec![0f64; d + 1];
            for ti in 0..t {
                let r = bi * t + ti;
                if !mask[r] {
                    continue;
                }
                for (a, &x) in s.iter_mut().zip(&host[r * d..(r + 1) * d]) {
                    *a += x as f64;
                }
                s[d] += 1.0;
            }
            s
        })
        .collect())
}

fn mean_pooled(sum: &[f64]) -> Vec<f32> {
    let (d, n) = (sum.len() - 1, sum[sum.len() - 1].max(1.0));
    sum[..d].iter().map(|&x| (x / n) as f32).collect()
}

/// Representation similarity: cosine between the mean-pooled final hidden state (input of
/// `lm_head`) over every real token of the document's windows (BOS included) and that of each
/// target's BOS + prompt + completion; mean over targets. Forward passes only.
pub fn score_repsim<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    targets: &[Query],
    docs: &[Document],
    windows: &WindowOptions,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<Scores> {
    no_targets(targets)?;
    let t0 = Instant::now();
    let fz = frozen(model);
    let d = model.config.hidden;
    let mut tvecs = Vec::with_capacity(targets.len());
    for chunk in targets.chunks(windows.batch_size.max(1)) {
        let seqs = chunk
            .iter()
            .map(|q| Ok(encode_query(tokenizer, &model.config, &q.prompt, &q.completion)?.0))
            .collect::<Result<Vec<_>>>()?;
        tvecs.extend(hidden_sums(&fz, &seqs)?.iter().map(|s| mean_pooled(s)));
    }
    let mean_t = mean_unit(tvecs, d);
    let mut scores: Vec<Option<f64>> = vec![None; docs.len()];
    let pass = per_document_sums(
        docs,
        tokenizer,
        &model.config,
        windows,
        &mut |cands| {
            let seqs: Vec<Vec<u32>> = cands.iter().map(|c| c.ids.clone()).collect();
            hidden_sums(&fz, &seqs)
        },
        &mut |i, acc| {
            let v: Vec<f64> = mean_pooled(acc).into_iter().map(f64::from).collect();
            scores[i] = Some(cosine_with(&v, &mean_t));
        },
        progress,
    )?;
    let mut s = Scores::new(Method::RepSim, scores, targets.len(), t0);
    s.pass = Some(pass);
    Ok(s)
}

/// BM25 baseline: a temporary tantivy index of the pool (same read options, so the same
/// documents), one search per target with the query `prompt + " " + completion` (all its terms),
/// mean over targets; a document a query does not retrieve scores 0 for it. Every document has a
/// score.
pub fn score_bm25(pool: &Pool, targets: &[Query]) -> Result<Scores> {
    no_targets(targets)?;
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().map_err(TraceError::Write)?;
    let dir = tmp.path().join("pool-index");
    let opts = IndexOptions {
        read: pool.read.clone(),
        ..Default::default()
    };
    let (index, _) = CorpusIndex::build(&pool.path, &dir, &opts, Progress::Hidden)?;
    let by_row: HashMap<u64, usize> = pool
        .docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.source.row, i))
        .collect();
    let q_opts = QueryOptions {
        ranking: Ranking::Bm25,
        max_terms: None,
        ..Default::default()
    };
    let n = pool.docs.len();
    let mut sums = vec![0f64; n];
    for t in targets {
        let text = format!("{} {}", t.prompt, t.completion);
        for h in index.search_with(&text, n, &q_opts)?.hits {
            let i = *by_row.get(&h.source.row).ok_or_else(|| {
                TraceError::Mismatch(format!(
                    "the pool index returned row {} that the pool reader did not read",
                    h.source.row
                ))
            })?;
            sums[i] += h.score as f64;
        }
    }
    let m = targets.len() as f64;
    Ok(Scores::new(
        Method::Bm25,
        sums.into_iter().map(|s| Some(s / m)).collect(),
        targets.len(),
        t0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_weights_cover_the_completion_only() {
        // BOS p p | c c (prompt = 3 tokens), and a shorter sequence padded.
        let seqs = vec![vec![0, 1, 2, 3, 4], vec![0, 7, 8]];
        let w = completion_weights(&seqs, &[3, 1], 5);
        assert_eq!(w, [0., 0., 1., 1., 1., 1., 0., 0.]);
    }

    #[test]
    fn mean_unit_and_cosine() {
        let m = mean_unit(vec![vec![2.0, 0.0], vec![0.0, -3.0]], 2);
        assert!((m[0] - 0.5).abs() < 1e-12 && (m[1] + 0.5).abs() < 1e-12);
        // cos([1,0],[1,0]) = 1 and cos([1,0],[0,-1]) = 0 → mean 0.5.
        assert!((cosine_with(&[5.0, 0.0], &m) - 0.5).abs() < 1e-12);
        assert_eq!(cosine_with(&[0.0, 0.0], &m), 0.0);
    }
}
