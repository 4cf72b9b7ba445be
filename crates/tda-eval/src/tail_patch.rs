//! Tail-patch (TrackStar's causal check): for a query and a method, one training step from the
//! final model on the method's top-k documents, then the change of `log p(completion | prompt)`.
//! A method whose top documents raise the target more found more of what taught it.
//!
//! The step: the recipe's optimiser (AdamW from a fresh state, so the first step moves each
//! parameter by about `lr · sign(g)`), at the recipe's final learning rate (`lr · min_lr_ratio`),
//! gradient clipping as trained, on one batch of the k documents as document examples
//! (`eot` + tokens + `eot`, cut at `seq_len`), the mean next-token loss over their tokens.
//! The control: k documents drawn uniformly at random (seeded per query).
//!
//! Invariant: every patch starts from the same final model (nothing accumulates across queries).

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::Serialize;
use tda_model::{TokenBatch, Tokenizer, Transformer};
use tda_train::{document_sequences, TrainParams, Trainer};

use crate::methods::MethodError;

/// The mean change of `f` over queries when patching with one method's top-k.
#[derive(Clone, Debug, Serialize)]
pub struct PatchRow {
    pub method: String,
    pub k: usize,
    pub queries: usize,
    /// Mean of `f(θ + step) − f(θ)` over queries (nats).
    pub mean_delta: f64,
    /// Bootstrap 95 % interval of the mean over queries.
    pub ci95: [f64; 2],
    /// Share of queries whose target went up.
    pub raised: f64,
    /// Paired with BM25's patches on the same queries: mean of `Δ_method − Δ_bm25` and its
    /// bootstrap 95 % interval (absent without a `bm25` ranking).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minus_bm25: Option<[f64; 3]>,
}

/// Mean of `d` and the bootstrap 95 % interval of the mean (1000 resamples, seeded).
fn mean_ci(d: &[f64], seed: u64) -> [f64; 3] {
    let n = d.len();
    let mean = d.iter().sum::<f64>() / n.max(1) as f64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..1000)
        .map(|_| {
            (0..n)
                .map(|_| d[rand::Rng::random_range(&mut rng, 0..n)])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    [mean, means[25], means[974]]
}

/// The one-step settings derived from the model's training record.
pub fn patch_params(train: &TrainParams) -> TrainParams {
    TrainParams {
        lr: train.lr * train.min_lr_ratio,
        warmup_steps: 0,
        min_lr_ratio: 1.0,
        steps: 1,
        checkpoint_every: 0,
        proximal: 0.0,
        ..train.clone()
    }
}

/// `f(θ') − f(θ)` for each query `q`, where `θ'` is one step of `params` on the documents
/// `picks[q]` (indices into `doc_ids`, token ids of each training document without specials).
#[allow(clippy::too_many_arguments)]
pub fn deltas<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    doc_ids: &[Vec<u32>],
    queries: &[tda_trace::Query],
    base: &[f64],
    picks: &[Vec<usize>],
    params: &TrainParams,
) -> Result<Vec<f64>, MethodError> {
    let eot = model.config.eos_token_id.unwrap_or(0);
    let mut out = Vec::with_capacity(queries.len());
    for (q, pick) in picks.iter().enumerate() {
        let docs: Vec<Vec<u32>> = pick.iter().map(|&i| doc_ids[i].clone()).collect();
        // The first piece of each document (its start, as the model saw it).
        let (seqs, owner) = document_sequences(&docs, eot, params.seq_len);
        let mut firsts = Vec::with_capacity(docs.len());
        for (s, o) in seqs.into_iter().zip(owner) {
            if firsts.len() == o {
                firsts.push(s);
            }
        }
        let batch = TokenBatch::new(&firsts, 0).map_err(tda_trace::TraceError::from)?;
        let mut trainer = Trainer::new(model.clone(), params)
            .map_err(|e| MethodError::Usage(format!("tail-patch step: {e}")))?;
        trainer
            .step(&batch)
            .map_err(|e| MethodError::Usage(format!("tail-patch step: {e}")))?;
        let patched = trainer.into_model().valid();
        let after = crate::lds::measure(&patched, tokenizer, std::slice::from_ref(&queries[q]))?;
        out.push(after[0] - base[q]);
    }
    Ok(out)
}

/// `k` distinct documents of `0..n` for each of `queries` queries, uniformly (the control).
pub fn random_picks(n: usize, k: usize, queries: usize, seed: u64) -> Vec<Vec<usize>> {
    (0..queries)
        .map(|q| {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(7919) + q as u64);
            let mut all: Vec<usize> = (0..n).collect();
            all.shuffle(&mut rng);
            all.truncate(k.min(n));
            all
        })
        .collect()
}

/// The row of one method from its per-query deltas (and BM25's on the same queries).
pub fn row(method: &str, k: usize, d: &[f64], bm25: Option<&[f64]>, seed: u64) -> PatchRow {
    let n = d.len();
    let [mean, lo, hi] = mean_ci(d, seed);
    PatchRow {
        method: method.to_string(),
        k,
        queries: n,
        mean_delta: mean,
        ci95: [lo, hi],
        raised: d.iter().filter(|&&x| x > 0.0).count() as f64 / n.max(1) as f64,
        minus_bm25: bm25.map(|b| {
            let diff: Vec<f64> = d.iter().zip(b).map(|(x, y)| x - y).collect();
            mean_ci(&diff, seed)
        }),
    }
}

/// Everything `tda eval tail-patch` reports.
#[derive(Clone, Debug, Serialize)]
pub struct PatchReport {
    pub documents: usize,
    pub queries: usize,
    pub model: String,
    pub k: usize,
    pub lr: f64,
    /// One row per ranking (as fact tracing's) and the `random` control.
    pub rows: Vec<PatchRow>,
}

/// Tail-patches every ranking of [`crate::fact_tracing::rankings`] and the random control on
/// the fact world of `model_dir`, with the model's recorded recipe.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<AD: AutodiffBackend>(
    model_dir: &std::path::Path,
    corpus: &std::path::Path,
    queries: &[crate::facts::FactQuery],
    methods: &[crate::methods::Method],
    settings: crate::methods::InfluenceSettings,
    prefilter: usize,
    k: usize,
    seed: u64,
    work: &std::path::Path,
    device: &AD::Device,
    progress: &mut dyn FnMut(&str),
) -> Result<PatchReport, MethodError> {
    use crate::fact_tracing::{dense_scores, load, rankings};
    let record = tda_train::TrainingRecord::read(model_dir)
        .map_err(|e| MethodError::Usage(e.to_string()))?
        .ok_or_else(|| {
            MethodError::Usage(format!(
                "{}: no training record (tail-patch needs the recipe the model was trained with)",
                model_dir.display()
            ))
        })?;
    let params = patch_params(&record.train);
    let w = load::<AD>(model_dir, corpus, queries, device)?;
    let (dense, _) = dense_scores(&w, corpus, methods, settings, work, progress)?;
    let doc_ids: Vec<Vec<u32>> = w
        .docs
        .iter()
        .map(|d| {
            w.model
                .tokenizer
                .encode(d.text.as_str(), false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| MethodError::Usage(format!("{}: cannot tokenize: {e}", d.id)))
        })
        .collect::<Result<_, _>>()?;
    let mut all: Vec<(String, Vec<Vec<usize>>)> = rankings(&dense, prefilter)
        .into_iter()
        .map(|(name, orders)| {
            (
                name,
                orders
                    .into_iter()
                    .map(|o| o[..k.min(o.len())].to_vec())
                    .collect(),
            )
        })
        .collect();
    all.push((
        "random".into(),
        random_picks(w.docs.len(), k, queries.len(), seed),
    ));
    let mut all_deltas = Vec::with_capacity(all.len());
    for (name, picks) in &all {
        progress(&format!("tail-patch {name}"));
        all_deltas.push(deltas(
            &w.model.model,
            &w.model.tokenizer,
            &doc_ids,
            &w.queries,
            &w.values,
            picks,
            &params,
        )?);
    }
    let bm25 = all
        .iter()
        .position(|(n, _)| n == "bm25")
        .map(|i| all_deltas[i].clone());
    let rows = all
        .iter()
        .zip(&all_deltas)
        .map(|((name, _), d)| row(name, k, d, bm25.as_deref(), seed))
        .collect();
    Ok(PatchReport {
        documents: w.docs.len(),
        queries: queries.len(),
        model: w.fingerprint.clone(),
        k,
        lr: params.lr,
        rows,
    })
}
