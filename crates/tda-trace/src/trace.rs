//! `tda trace`: queries → measurement taps → preconditioned low-rank queries → one pass over the
//! candidate windows with all queries at once → streaming top-K of documents (or windows).
//!
//! Score of candidate `z` for query `q`: `−∇f_q(θ)ᵀ (G + λI)⁻¹ ∇L(z, θ)` over the tracked layers,
//! with `L` the summed next-token loss of the window and `f` the measurement; **positive = up-weighting
//! `z` in training raises `f`** (for `logprob`, makes the completion more likely). The per-token
//! score of position `t` is `g_tᵀ P_q a_t` (the taps at position `t`: its input activations and
//! the gradient of the loss w.r.t. its layer outputs); they sum to the window's score. Per-layer
//! scores sum to the total. A document's score is the sum of its windows' scores (the influence
//! of up-weighting the whole document).
//!
//! Multi-stage ([`trace_multistage`]): the query gradient is taken at the fine-tuned `θ_ft`, goes
//! through `α(G_ft + αI)⁻¹` (`tda_curvature::multistage`) and then through the pretraining
//! preconditioner; the candidate pass runs at `θ_pt` exactly as in single-stage tracing.

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use tda_curvature::{
    candidate_stats, normalize, precondition, score_layers, transfer_through_fine_tuning,
    CandidateScores, Damping, Factors, Normalization, NormalizeOptions, PreconditionedQuery,
    QueryBatch, Rank,
};
use tda_model::{frozen, Tokenizer, Transformer};

use crate::budget::{MemoryBudget, TapPlan};
use crate::candidates::{for_each_batch, DocSource, WindowOptions};
use crate::device::{score_on_device, ComputeOn, DeviceQueries, Precision};
use crate::error::{Result, TraceError};
use crate::host::{device_taps, host_taps, Labels, Scalar};
use crate::keep::{to_row, DocSums, Keeper, Kept};
use crate::measure::Measurement;
use crate::output::{Granularity, LayerKept, QueryResult, RowSink, TraceOutput, TraceReport};
use crate::query::{aggregate_gradients, measure_queries, Aggregate, Query};
use crate::stages::{FineTuneDamping, FineTuned, StagesInfo};

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
    /// Documents (default) or windows. With a normalisation, a document sums its windows'
    /// normalised scores.
    pub granularity: Granularity,
    /// Score the queries as one target set (one query's cost); `None` = each query on its own.
    pub aggregate: Option<Aggregate>,
    /// With `aggregate`: also keep each query's own ranking (after the target's).
    pub per_query: bool,
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
            granularity: Granularity::Document,
            aggregate: None,
            per_query: false,
        }
    }
}

/// Scores every candidate of `source` against all `queries` in one pass (single stage: query and
/// candidates at the same `θ`, preconditioner `factors`).
pub fn trace<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    queries: &[Query],
    source: &DocSource,
    opts: &TraceOptions,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<TraceOutput> {
    run(
        model,
        model,
        tokenizer,
        factors,
        opts.damping,
        None,
        queries,
        source,
        opts,
        None,
        progress,
    )
}

/// Multi-stage scores of pretraining candidates (`pretrained` = `θ_pt`, `pt_factors` = `G_pt`,
/// damped by `opts.damping`) for queries of the fine-tuned model: one candidate pass at `θ_pt`.
#[allow(clippy::too_many_arguments)]
pub fn trace_multistage<AD: AutodiffBackend>(
    pretrained: &Transformer<AD>,
    pt_factors: Option<&Factors>,
    fine_tuned: &FineTuned<'_, AD>,
    tokenizer: &Tokenizer,
    queries: &[Query],
    source: &DocSource,
    opts: &TraceOptions,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<TraceOutput> {
    let h = fine_tuned.hessians;
    let identity;
    let (pre, damping) = match (h.uses_pretrain(), pt_factors) {
        (true, Some(f)) => (f, opts.damping),
        (true, None) => {
            return Err(TraceError::Usage(
                "multi-stage with the pretraining Hessian needs the pretraining factors".into(),
            ))
        }
        (false, Some(f)) => {
            identity = Factors::identity(f.specs(), &f.fingerprint);
            (&identity, Damping::Absolute(0.0))
        }
        (false, None) => {
            // No factors at all (`--hessians none`): the default tracked layers of the model
            // (as `tda fit`'s: the blocks).
            let specs = match fine_tuned.factors {
                Some((f, _)) => f.specs(),
                None => {
                    crate::ModuleSelection::default().specs(&pretrained.linear_layers(), None)?
                }
            };
            identity = Factors::identity(specs, "identity");
            (&identity, Damping::Absolute(0.0))
        }
    };
    let transfer = match (h.uses_fine_tune(), fine_tuned.factors) {
        (true, Some((f, d))) => {
            f.check_specs(&pre.specs())?;
            Some((f, d))
        }
        (true, None) => {
            return Err(TraceError::Usage(
                "multi-stage with the fine-tuning Hessian needs the fine-tuning factors".into(),
            ))
        }
        (false, _) => None,
    };
    let mut out = run(
        pretrained,
        fine_tuned.model,
        tokenizer,
        pre,
        damping,
        transfer,
        queries,
        source,
        opts,
        None,
        progress,
    )?;
    let alphas = transfer.map(|(f, d)| d.per_layer(f));
    out.stages = Some(StagesInfo {
        hessians: h,
        fine_tune_damping: transfer.map(|(f, d)| match d {
            FineTuneDamping::Proximal(a) => {
                format!("proximal {a} × T̄ {:.1}", f.targets_per_sequence())
            }
            FineTuneDamping::Damping(d) => format!("{d:?}"),
        }),
        alpha_mean: alphas.map(|a| a.iter().sum::<f64>() / a.len().max(1) as f64),
    });
    if !h.uses_pretrain() {
        out.strategy = "identity".into();
        out.damping = "none".into();
    }
    Ok(out)
}

/// Queries measured (optionally aggregated, optionally carried through the fine-tuning transfer)
/// and preconditioned: what a candidate pass scores against. Made by [`prepare_queries`] (or
/// inside [`trace`]), or read back from a file of saved queries ([`crate::saved_queries`]) to
/// trace the same targets over new corpus shards without measuring them again.
#[derive(Clone, Debug)]
pub struct PreparedQueries {
    /// One per scored query (a target set first when aggregated).
    pub queries: Vec<Query>,
    /// The measurement `f` of each at the query model.
    pub values: Vec<f32>,
    pub preconditioned: Vec<PreconditionedQuery>,
    pub measurement: Measurement,
    pub damping: Damping,
    pub rank: Rank,
    /// Seconds spent measuring and preconditioning (0 when read back from a file).
    pub seconds: f64,
}

/// Measures and preconditions `queries` for single-stage tracing with `factors` (what [`trace`]
/// does before its candidate pass).
pub fn prepare_queries<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    queries: &[Query],
    opts: &TraceOptions,
) -> Result<PreparedQueries> {
    prepare(model, tokenizer, factors, opts.damping, None, queries, opts)
}

/// [`trace`] with queries already prepared (by [`prepare_queries`], or read back from a file):
/// the candidate pass only. `prepared` must come from `factors` (the caller checks it; the file
/// loader does).
pub fn trace_prepared<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    prepared: &PreparedQueries,
    source: &DocSource,
    opts: &TraceOptions,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<TraceOutput> {
    score_pass(
        model, tokenizer, factors, prepared, source, opts, None, progress,
    )
}

/// The pass: queries measured at `query_model` (optionally aggregated, optionally through the
/// fine-tuning transfer), preconditioned with `factors` + `damping`, candidates at `model`.
/// With a `sink`, every result row goes there as it is made (unranked, nothing kept: the
/// output's queries have no results; `opts.top_k` is not used).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    query_model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    damping: Damping,
    transfer: Option<(&Factors, FineTuneDamping)>,
    queries: &[Query],
    source: &DocSource,
    opts: &TraceOptions,
    sink: Option<&mut dyn RowSink>,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<TraceOutput> {
    let t_all = Instant::now();
    let prepared = prepare(
        query_model,
        tokenizer,
        factors,
        damping,
        transfer,
        queries,
        opts,
    )?;
    let mut out = score_pass(
        model, tokenizer, factors, &prepared, source, opts, sink, progress,
    )?;
    out.report.total_s = t_all.elapsed().as_secs_f64();
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn prepare<AD: AutodiffBackend>(
    query_model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    damping: Damping,
    transfer: Option<(&Factors, FineTuneDamping)>,
    queries: &[Query],
    opts: &TraceOptions,
) -> Result<PreparedQueries> {
    let specs = factors.specs();
    let t_q = Instant::now();
    let qfz = frozen(query_model);
    let (mut grads, mut values) = measure_queries(
        &qfz,
        tokenizer,
        &specs,
        queries,
        opts.measurement,
        opts.windows.batch_size,
    )?;
    drop(qfz);
    let mut out_queries: Vec<Query> = queries.to_vec();
    if let Some(how) = opts.aggregate {
        let target = aggregate_gradients(&grads, how);
        let v = values.iter().map(|&x| x as f64).sum::<f64>();
        let v = match how {
            Aggregate::Mean => v / values.len() as f64,
            Aggregate::Sum => v,
        } as f32;
        let label = Query {
            id: "target".into(),
            prompt: String::new(),
            completion: format!(
                "{} of {} queries",
                match how {
                    Aggregate::Mean => "mean",
                    Aggregate::Sum => "sum",
                },
                queries.len()
            ),
        };
        if opts.per_query {
            grads.insert(0, target);
            values.insert(0, v);
            out_queries.insert(0, label);
        } else {
            grads = vec![target];
            values = vec![v];
            out_queries = vec![label];
        }
    }
    if let Some((ft, d)) = transfer {
        grads = transfer_through_fine_tuning(ft, &d.per_layer(ft), &grads)?;
    }
    let preconditioned = precondition(factors, damping, &grads, opts.rank)?;
    Ok(PreparedQueries {
        queries: out_queries,
        values,
        preconditioned,
        measurement: opts.measurement,
        damping,
        rank: opts.rank,
        seconds: t_q.elapsed().as_secs_f64(),
    })
}

/// The candidate pass of [`run`] against `prepared`.
#[allow(clippy::too_many_arguments)]
fn score_pass<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    prepared: &PreparedQueries,
    source: &DocSource,
    opts: &TraceOptions,
    sink: Option<&mut dyn RowSink>,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<TraceOutput> {
    let t_all = Instant::now();
    let fz = frozen(model);
    let specs = factors.specs();
    let damping = prepared.damping;
    let pq = &prepared.preconditioned;
    // Only a shard needs it (the merge checks that all shards scored the same queries).
    let queries_fingerprint = if opts.windows.shard.is_all() {
        0
    } else {
        fingerprint_queries(pq)
    };
    let prepared_batch = QueryBatch::new(&specs, pq)?;
    let on_device = opts.windows.compute == ComputeOn::Device;
    if !on_device && opts.windows.precision != Precision::F32 {
        return Err(TraceError::Usage(
            "--precision bf16 is a precision of the device path: add --compute-on device".into(),
        ));
    }
    if on_device && opts.normalize != NormalizeOptions::default() {
        return Err(TraceError::Usage(
            "--normalize needs the candidates' statistics on the host: use --compute-on host"
                .into(),
        ));
    }
    let device_queries =
        on_device.then(|| DeviceQueries::upload(&prepared_batch, &fz.embed.device()));
    let queries = &prepared.queries[..];
    let values = &prepared.values;
    let nq = queries.len();
    let mut report = TraceReport {
        model_dtype: tda_model::ModelDtype::name_of(fz.dtype()),
        queries: nq,
        queries_s: prepared.seconds,
        query_rank_kept: rank_kept(&specs, pq),
        ..Default::default()
    };
    let mut sink_error = None;
    let mut to_sink;
    let mut keeper = match sink {
        None => Keeper::new(nq, opts.top_k, opts.opponents),
        Some(sink) => {
            to_sink = |q: usize, s: f64, k: &Kept| {
                if sink_error.is_none() {
                    if let Err(e) = sink.push(q, to_row(0, s, k, tokenizer, &specs)) {
                        sink_error = Some(e);
                    }
                }
            };
            Keeper::streaming(nq, &mut to_sink)
        }
    };
    let mut docs =
        (opts.granularity == Granularity::Document).then(|| DocSums::new(nq, opts.opponents));
    let pad = model.config.eos_token_id.unwrap_or(0);
    let budget = opts
        .windows
        .memory_budget
        .unwrap_or_else(MemoryBudget::auto);
    let t_cands = Instant::now();
    let pass = for_each_batch(
        source,
        tokenizer,
        &model.config,
        &opts.windows,
        |all, bytes| {
            let seq_len = all.iter().map(|c| c.ids.len()).max().unwrap_or(0);
            let plan = TapPlan::new(&specs, &model.config, all.len(), seq_len, false, budget)?;
            let normalized = opts.normalize != NormalizeOptions::default();
            if normalized && plan.groups.len() > 1 {
                return Err(TraceError::Usage(format!(
                    "--normalize needs every layer's taps of a window at once, and one window of {seq_len} tokens is over --memory-budget {budget}: raise it, lower --max-len, or drop --normalize"
                )));
            }
            report.model_passes += plan.passes(all.len());
            for rows in plan.chunks(all.len()) {
                let cands = &all[rows];
                let batch = crate::candidates::candidate_batch(cands, pad)?;
                let mut sc: Option<CandidateScores> = None;
                for group in &plan.groups {
                    if let Some(dq) = &device_queries {
                        let taps = device_taps(
                            &fz,
                            &specs[group.clone()],
                            &batch,
                            Scalar::Loss(Labels::Data),
                        )?;
                        report.model_s += taps.t_model;
                        let t0 = Instant::now();
                        let part = score_on_device(
                            &prepared_batch,
                            dq,
                            group.start,
                            &taps,
                            opts.per_token,
                            opts.windows.precision,
                        )?;
                        CandidateScores::accumulate(&mut sc, part)?;
                        report.contraction_s += t0.elapsed().as_secs_f64();
                        continue;
                    }
                    let taps = host_taps(
                        &fz,
                        &specs[group.clone()],
                        &batch,
                        Scalar::Loss(Labels::Data),
                    )?;
                    report.model_s += taps.t_model;
                    report.copy_s += taps.t_copy;
                    let lbs = taps.layer_batches();
                    let t0 = Instant::now();
                    let part = score_layers(&prepared_batch, group.start, &lbs, opts.per_token)?;
                    CandidateScores::accumulate(&mut sc, part)?;
                    report.contraction_s += t0.elapsed().as_secs_f64();
                    let t1 = Instant::now();
                    if normalized {
                        let f = (opts.normalize.method == Normalization::RelatIF)
                            .then_some((factors, damping));
                        let stats = candidate_stats(&specs, f, &lbs)?;
                        normalize(
                            sc.as_mut().expect("scored"),
                            &prepared_batch,
                            &stats,
                            opts.normalize,
                        )?;
                    }
                    report.stats_s += t1.elapsed().as_secs_f64();
                }
                let sc = sc.expect("a plan has at least one layer group");
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
                        let k = Kept {
                            cand: c.clone(),
                            per_token,
                            per_layer,
                            doc: None,
                        };
                        match &mut docs {
                            Some(d) => d.push(&mut keeper, q, sc.total(b, q), k),
                            None => keeper.push(q, sc.total(b, q), k),
                        }
                    }
                }
                report.topk_s += t2.elapsed().as_secs_f64();
                report.candidates += cands.len();
                report.candidate_tokens += cands.iter().map(|c| c.ids.len()).sum::<usize>();
            }
            progress(report.candidates, bytes);
            Ok(())
        },
    )?;
    if let Some(d) = &mut docs {
        d.flush(&mut keeper);
    }
    debug_assert_eq!(pass.windows, report.candidates);
    report.corpus = pass;
    let cand_s = t_cands.elapsed().as_secs_f64();
    report.candidate_tokens_per_s = report.candidate_tokens as f64 / cand_s.max(1e-9);
    let results = keeper.finish()?;
    if let Some(e) = sink_error {
        return Err(e);
    }
    let results_by_query = queries
        .iter()
        .zip(results)
        .zip(values)
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
    // The queries' preparation counts (0 s when they were read back from a file).
    report.total_s = t_all.elapsed().as_secs_f64() + prepared.seconds;
    Ok(TraceOutput {
        measurement: prepared.measurement,
        strategy: factors.strategy.to_string(),
        damping: format!("{damping:?}"),
        rank: match prepared.rank {
            Rank::Full => "full".into(),
            Rank::Truncated(r) => r.to_string(),
        },
        normalization: format!("{:?}", opts.normalize.method),
        per_token_count: opts.normalize.per_token_count,
        granularity: opts.granularity,
        aggregate: opts.aggregate,
        stages: None,
        ensemble: None,
        queries: results_by_query,
        report,
        queries_fingerprint,
    })
}

/// Per layer, the least and the mean share of `‖P_q‖²` the stored rank-r queries keep.
fn rank_kept(specs: &[tda_curvature::LayerSpec], pq: &[PreconditionedQuery]) -> Vec<LayerKept> {
    specs
        .iter()
        .enumerate()
        .map(|(l, s)| {
            let k: Vec<f64> = pq.iter().filter_map(|q| q.kept.get(l).copied()).collect();
            LayerKept {
                layer: s.name.clone(),
                min: k.iter().copied().fold(f64::INFINITY, f64::min),
                mean: k.iter().sum::<f64>() / k.len().max(1) as f64,
            }
        })
        .collect()
}

/// A 64-bit hash of the preconditioned queries' f32 bits, one word at a time (multiply and
/// xor-shift, so every bit reaches every other; equal queries ⇔ equal fingerprints, barring a
/// collision).
fn fingerprint_queries(pq: &[tda_curvature::PreconditionedQuery]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |x: u64| {
        h = (h ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
    };
    for q in pq {
        for l in &q.layers {
            eat(l.rank as u64);
            l.left
                .iter()
                .chain(&l.right)
                .for_each(|x| eat(x.to_bits() as u64));
        }
    }
    h
}
