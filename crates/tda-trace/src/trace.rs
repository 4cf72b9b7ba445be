//! `tda trace`: queries → measurement taps → preconditioned low-rank queries → one pass over the
//! candidate windows with all queries at once → streaming top-K.
//!
//! Score of candidate `z` for query `q`: `−∇f_q(θ)ᵀ (G + λI)⁻¹ ∇L(z, θ)` over the tracked layers,
//! with `L` the summed next-token loss of the window and `f` the measurement; **positive = up-weighting
//! `z` in training raises `f`** (for `logprob`, makes the completion more likely). The per-token
//! score of position `t` is `g_tᵀ P_q a_t` (the taps at position `t`: its input activations and
//! the gradient of the loss w.r.t. its layer outputs); they sum to the window's score. Per-layer
//! scores sum to the total.

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use tda_curvature::{
    candidate_stats, normalize, score_candidates, Damping, Factors, Normalization,
    NormalizeOptions, Rank,
};
use tda_model::{frozen, TokenBatch, Tokenizer, Transformer};

use crate::candidates::{for_each_batch, DocSource, WindowOptions};
use crate::error::Result;
use crate::host::{host_taps, Labels, Scalar};
use crate::keep::{to_row, Keeper, Kept};
use crate::measure::Measurement;
use crate::output::{QueryResult, TraceOutput, TraceReport};
use crate::query::{prepare_queries, Query};

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
    let mut keeper = Keeper::new(nq, opts.top_k, opts.opponents);
    let pad = model.config.eos_token_id.unwrap_or(0);
    let t_cands = Instant::now();
    let pass = for_each_batch(
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
    debug_assert_eq!(pass.windows, report.candidates);
    report.corpus = pass;
    let cand_s = t_cands.elapsed().as_secs_f64();
    report.candidate_tokens_per_s = report.candidate_tokens as f64 / cand_s.max(1e-9);
    let results = keeper.finish()?;
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
