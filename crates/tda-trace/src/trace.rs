//! `tda trace`: queries → measurement taps → preconditioned low-rank queries → one pass over the
//! candidate windows with all queries at once → streaming top-K. Also self-influence and
//! relabeling influence.
//!
//! Score of candidate `z` for query `q`: `−∇f_q(θ)ᵀ (G + λI)⁻¹ ∇L(z, θ)` over the tracked layers,
//! with `L` the summed next-token loss of the window and `f` the measurement; **positive = up-weighting
//! `z` in training raises `f`** (for `logprob`, makes the completion more likely). The per-token
//! score of position `t` is `g_tᵀ P_q a_t` (the taps at position `t`: its input activations and
//! the gradient of the loss w.r.t. its layer outputs); they sum to the window's score. Per-layer
//! scores sum to the total.

use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use tda_curvature::{
    candidate_stats, normalize, precondition, query_gradients, score_candidates, Damping, Factors,
    LayerSpec, Normalization, NormalizeOptions, Order, QueryBatch, Rank, TopK,
};
use tda_model::{frozen, token_logprobs, TokenBatch, Tokenizer, Transformer};

use crate::candidates::{for_each_batch, Candidate, DocSource, WindowOptions};
use crate::error::{Result, TraceError};
use crate::host::{host_taps, Labels, Scalar, Target};
use crate::output::{LayerScore, QueryResult, ResultRow, TokenScore, TraceOutput};

/// The measurement `f` whose change is attributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Measurement {
    /// `log p(completion | prompt)` (sum over completion tokens).
    #[default]
    LogProb,
    /// `−log p(completion | prompt)`.
    Loss,
    /// `Σ_t [logit_y − logsumexp_{v≠y} logit_v]` over completion tokens.
    Margin,
}

impl std::str::FromStr for Measurement {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "logprob" => Ok(Self::LogProb),
            "loss" => Ok(Self::Loss),
            "margin" => Ok(Self::Margin),
            _ => Err(format!(
                "unknown measurement {s:?} (logprob, loss or margin)"
            )),
        }
    }
}

/// Per-sequence measurement `[b]` over target positions weighted by `w [b, t − 1]`.
pub fn measurement_value<AD: AutodiffBackend>(
    kind: Measurement,
    logits: Tensor<AD, 3>,
    ids: Tensor<AD, 2, Int>,
    w: Tensor<AD, 2>,
) -> Tensor<AD, 1> {
    let [b, t, _] = logits.dims();
    let per_pos = match kind {
        Measurement::LogProb => token_logprobs(logits, ids),
        Measurement::Loss => token_logprobs(logits, ids).neg(),
        Measurement::Margin => {
            let x = logits.narrow(1, 0, t - 1);
            let targets = ids.narrow(1, 1, t - 1).reshape([b, t - 1, 1]);
            let lse = x.clone().exp_logsumexp();
            let ly = x.gather(2, targets);
            // logsumexp over v ≠ y = lse + log(1 − p_y); clamped so that p_y → 1 stays finite.
            let one_minus = (ly.clone() - lse.clone())
                .exp()
                .neg()
                .add_scalar(1.0)
                .clamp_min(1e-12);
            (ly - lse - one_minus.log()).reshape([b, t - 1])
        }
    };
    (per_pos * w).sum_dim(1).reshape([b])
}

trait Lse {
    fn exp_logsumexp(self) -> Self;
}
impl<B: Backend> Lse for Tensor<B, 3> {
    /// logsumexp over the last dim, kept `[b, t, 1]`.
    fn exp_logsumexp(self) -> Self {
        let m = self.clone().max_dim(2).detach();
        (self - m.clone()).exp().sum_dim(2).log() + m
    }
}

/// One query: `f` is measured on the completion tokens given the prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Query {
    #[serde(default)]
    pub id: String,
    pub prompt: String,
    pub completion: String,
}

/// Options of [`trace`].
#[derive(Clone, Debug)]
pub struct TraceOptions {
    pub measurement: Measurement,
    pub damping: Damping,
    pub rank: Rank,
    /// Results kept per query (`None` = all candidates).
    pub top_k: Option<usize>,
    pub normalize: NormalizeOptions,
    /// Keep the most negative scores (opponents) instead of the most positive.
    pub opponents: bool,
    pub per_token: bool,
    pub per_layer: bool,
    pub windows: WindowOptions,
}

impl Default for TraceOptions {
    fn default() -> Self {
        Self {
            measurement: Measurement::LogProb,
            damping: Damping::default(),
            rank: Rank::default(),
            top_k: Some(10),
            normalize: NormalizeOptions::default(),
            opponents: false,
            per_token: false,
            per_layer: false,
            windows: WindowOptions::default(),
        }
    }
}

/// Where the time went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TraceReport {
    pub queries: usize,
    pub candidates: usize,
    pub candidate_tokens: usize,
    /// Query taps + preconditioning + rank-r compression.
    pub queries_s: f64,
    /// Candidates: forward + activation-gradient backward, device → host copies, the query-batched
    /// contraction, normalisation statistics, top-K bookkeeping.
    pub model_s: f64,
    pub copy_s: f64,
    pub contraction_s: f64,
    pub stats_s: f64,
    pub topk_s: f64,
    pub total_s: f64,
    pub candidate_tokens_per_s: f64,
}

/// Token ids of a query: BOS + prompt, then the completion (tokenized separately), and the
/// number of prompt tokens.
pub fn encode_query(
    tokenizer: &Tokenizer,
    cfg: &tda_model::ModelConfig,
    prompt: &str,
    completion: &str,
) -> Result<(Vec<u32>, usize)> {
    let (mut ids, _) = tda_model::infer::encode_for_scoring(tokenizer, cfg, prompt)?;
    let n_prompt = ids.len();
    let enc = tokenizer
        .encode(completion, false)
        .map_err(|e| TraceError::Usage(format!("cannot tokenize the completion: {e}")))?;
    if enc.get_ids().is_empty() {
        return Err(TraceError::Usage(format!(
            "the completion {completion:?} has no tokens"
        )));
    }
    ids.extend_from_slice(enc.get_ids());
    Ok((ids, n_prompt))
}

/// Queries, preconditioned and packed for the one-pass kernel.
pub struct PreparedQueries {
    pub batch: QueryBatch,
    /// Value of `f` per query.
    pub values: Vec<f32>,
    pub seconds: f64,
}

/// Measurement taps of all queries (batched), query gradients, preconditioning, compression.
#[allow(clippy::too_many_arguments)]
pub fn prepare_queries<AD: AutodiffBackend>(
    frozen: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    queries: &[Query],
    measurement: Measurement,
    damping: Damping,
    rank: Rank,
    batch_size: usize,
) -> Result<PreparedQueries> {
    if queries.is_empty() {
        return Err(TraceError::Usage("no queries".into()));
    }
    let t0 = Instant::now();
    let specs = factors.specs();
    let pad = frozen.config.eos_token_id.unwrap_or(0);
    let mut grads = Vec::with_capacity(queries.len());
    let mut values = Vec::with_capacity(queries.len());
    for chunk in queries.chunks(batch_size.max(1)) {
        let mut seqs = Vec::with_capacity(chunk.len());
        let mut prompts = Vec::with_capacity(chunk.len());
        for q in chunk {
            let (ids, n) = encode_query(tokenizer, &frozen.config, &q.prompt, &q.completion)?;
            seqs.push(ids);
            prompts.push(n);
        }
        let batch = TokenBatch::new(&seqs, pad)?;
        let t1 = batch.seq_len - 1;
        let mut weights = vec![0f32; batch.batch * t1];
        for (b, (s, &np)) in seqs.iter().zip(&prompts).enumerate() {
            for t in 0..t1 {
                if t + 1 >= np && t + 1 < s.len() {
                    weights[b * t1 + t] = 1.0;
                }
            }
        }
        let target = Target {
            kind: measurement,
            weights,
        };
        let taps = host_taps(frozen, &specs, &batch, Scalar::Measure(&target))?;
        grads.extend(query_gradients(&specs, &taps.layer_batches())?);
        values.extend_from_slice(&taps.values);
    }
    let pq = precondition(factors, damping, &grads, rank)?;
    let batch = QueryBatch::new(&specs, &pq)?;
    Ok(PreparedQueries {
        batch,
        values,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

struct Kept {
    cand: Arc<Candidate>,
    per_token: Option<Vec<f64>>,
    per_layer: Option<Vec<f64>>,
}

impl Clone for Kept {
    fn clone(&self) -> Self {
        Self {
            cand: self.cand.clone(),
            per_token: self.per_token.clone(),
            per_layer: self.per_layer.clone(),
        }
    }
}

/// Top-K (bounded heaps) or all results per query.
enum Keeper {
    Top(TopK<Kept>),
    All(Vec<Vec<(f64, Kept)>>, bool),
}

impl Keeper {
    fn push(&mut self, q: usize, s: f64, k: Kept) {
        match self {
            Keeper::Top(t) => t.push(q, s, k),
            Keeper::All(v, _) => {
                if !s.is_nan() {
                    v[q].push((s, k))
                }
            }
        }
    }
    fn into_sorted(self) -> Vec<Vec<(f64, Kept)>> {
        match self {
            Keeper::Top(t) => t.into_sorted(),
            Keeper::All(mut v, opponents) => {
                for l in &mut v {
                    // Stable: ties keep arrival order, as TopK does.
                    l.sort_by(|a, b| {
                        if opponents {
                            a.0.total_cmp(&b.0)
                        } else {
                            b.0.total_cmp(&a.0)
                        }
                    });
                }
                v
            }
        }
    }
}

fn token_strings(tokenizer: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&i| tokenizer.decode(&[i], false).unwrap_or_default())
        .collect()
}

/// Scores every candidate window of `source` against all `queries` in one pass.
pub fn trace<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    queries: &[Query],
    source: &DocSource,
    opts: &TraceOptions,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<TraceOutput> {
    let t_all = Instant::now();
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
    let nq = queries.len();
    let mut report = TraceReport {
        queries: nq,
        queries_s: prepared.seconds,
        ..Default::default()
    };
    let order = if opts.opponents {
        Order::Smallest
    } else {
        Order::Largest
    };
    let mut keeper = match opts.top_k {
        Some(k) => Keeper::Top(TopK::new(nq, k, order)),
        None => Keeper::All((0..nq).map(|_| Vec::new()).collect(), opts.opponents),
    };
    let pad = model.config.eos_token_id.unwrap_or(0);
    let t_cands = Instant::now();
    let n = for_each_batch(
        source,
        tokenizer,
        &model.config,
        &opts.windows,
        |cands, bytes| {
            let seqs: Vec<Vec<u32>> = cands.iter().map(|c| c.ids.clone()).collect();
            let batch = TokenBatch::new(&seqs, pad)?;
            let taps = host_taps(&fz, &specs, &batch, Scalar::Loss(Labels::Data))?;
            report.model_s += taps.t_model;
            report.copy_s += taps.t_copy;
            let lbs = taps.layer_batches();
            let t0 = Instant::now();
            let mut sc = score_candidates(&prepared.batch, &lbs)?;
            report.contraction_s += t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            if opts.normalize != NormalizeOptions::default() {
                let f = (opts.normalize.method == Normalization::RelatIF)
                    .then_some((factors, opts.damping));
                let stats = candidate_stats(&specs, f, &lbs)?;
                normalize(&mut sc, &prepared.batch, &stats, opts.normalize)?;
            }
            report.stats_s += t1.elapsed().as_secs_f64();
            let t2 = Instant::now();
            for (b, c) in cands.iter().enumerate() {
                let c = Arc::new(c.clone());
                for q in 0..nq {
                    let per_token = opts
                        .per_token
                        .then(|| (0..c.ids.len()).map(|t| sc.token(b, t, q)).collect());
                    let per_layer = opts
                        .per_layer
                        .then(|| (0..specs.len()).map(|l| sc.layer(b, l, q)).collect());
                    keeper.push(
                        q,
                        sc.total(b, q),
                        Kept {
                            cand: c.clone(),
                            per_token,
                            per_layer,
                        },
                    );
                }
            }
            report.topk_s += t2.elapsed().as_secs_f64();
            report.candidates += cands.len();
            report.candidate_tokens += seqs.iter().map(Vec::len).sum::<usize>();
            progress(report.candidates, bytes);
            Ok(())
        },
    )?;
    debug_assert_eq!(n, report.candidates);
    let cand_s = t_cands.elapsed().as_secs_f64();
    report.candidate_tokens_per_s = report.candidate_tokens as f64 / cand_s.max(1e-9);
    let results = keeper.into_sorted();
    let out_queries = queries
        .iter()
        .zip(results)
        .zip(&prepared.values)
        .enumerate()
        .map(|(qi, ((q, res), &f))| QueryResult {
            id: if q.id.is_empty() {
                format!("q{qi}")
            } else {
                q.id.clone()
            },
            prompt: q.prompt.clone(),
            completion: q.completion.clone(),
            value: f,
            results: res
                .into_iter()
                .enumerate()
                .map(|(r, (score, k))| to_row(r, score, &k, tokenizer, &specs))
                .collect(),
        })
        .collect();
    report.total_s = t_all.elapsed().as_secs_f64();
    Ok(TraceOutput {
        measurement: opts.measurement,
        strategy: factors.strategy.to_string(),
        damping: format!("{:?}", opts.damping),
        rank: match opts.rank {
            Rank::Full => "full".into(),
            Rank::Truncated(r) => r.to_string(),
        },
        normalization: format!("{:?}", opts.normalize.method),
        per_token_count: opts.normalize.per_token_count,
        queries: out_queries,
        report,
    })
}

fn to_row(
    rank: usize,
    score: f64,
    k: &Kept,
    tokenizer: &Tokenizer,
    specs: &[LayerSpec],
) -> ResultRow {
    ResultRow {
        rank: rank + 1,
        doc_id: k.cand.doc_id.clone(),
        window: k.cand.window,
        span: k.cand.span,
        text: k.cand.text.clone(),
        score,
        per_token: k.per_token.as_ref().map(|v| {
            token_strings(tokenizer, &k.cand.ids)
                .into_iter()
                .zip(v)
                .map(|(token, &score)| TokenScore { token, score })
                .collect()
        }),
        per_layer: k.per_layer.as_ref().map(|v| {
            specs
                .iter()
                .zip(v)
                .map(|(s, &score)| LayerScore {
                    layer: s.name.clone(),
                    score,
                })
                .collect()
        }),
    }
}

/// Self-influence `∇L(z)ᵀ (G + λI)⁻¹ ∇L(z)` of every candidate window; returns the `top_k`
/// largest (outliers / hard examples first), or all when `top_k` is `None`.
#[allow(clippy::too_many_arguments)]
pub fn self_influence<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    source: &DocSource,
    damping: Damping,
    top_k: Option<usize>,
    windows: &WindowOptions,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<Vec<ResultRow>> {
    let fz = frozen(model);
    let specs = factors.specs();
    let pad = model.config.eos_token_id.unwrap_or(0);
    let mut keeper = match top_k {
        Some(k) => Keeper::Top(TopK::new(1, k, Order::Largest)),
        None => Keeper::All(vec![Vec::new()], false),
    };
    let mut done = 0;
    for_each_batch(source, tokenizer, &model.config, windows, |cands, bytes| {
        let seqs: Vec<Vec<u32>> = cands.iter().map(|c| c.ids.clone()).collect();
        let batch = TokenBatch::new(&seqs, pad)?;
        let taps = host_taps(&fz, &specs, &batch, Scalar::Loss(Labels::Data))?;
        let si = tda_curvature::self_influence(factors, damping, &taps.layer_batches())?;
        for (c, s) in cands.iter().zip(si) {
            keeper.push(
                0,
                s,
                Kept {
                    cand: Arc::new(c.clone()),
                    per_token: None,
                    per_layer: None,
                },
            );
        }
        done += cands.len();
        progress(done, bytes);
        Ok(())
    })?;
    Ok(keeper
        .into_sorted()
        .pop()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(r, (s, k))| to_row(r, s, &k, tokenizer, &specs))
        .collect())
}

/// A training example whose continuation is replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RelabelRow {
    #[serde(default)]
    pub id: String,
    pub prompt: String,
    pub original: String,
    pub replacement: String,
}

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
