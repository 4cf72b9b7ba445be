//! The linear datamodeling score of attribution methods over a [`crate::bank`] of retrained
//! models, with a bootstrap confidence interval over the subsets.
//!
//! For query `q` and subset `S_j`: prediction `Σ_{i ∈ S_j} τ(q, i)` from the scores on the full
//! model, outcome `f_q(θ_j)` measured on model `j`; LDS(q) = Spearman over `j`; the reported LDS
//! is the mean over queries with a defined correlation ([`crate::metrics::lds`]).
//! The 95 % interval resamples the subsets with replacement (`resamples` times, seeded) and
//! recomputes the mean LDS: it is the uncertainty due to having `M` retrained models.

use burn::module::AutodiffModule;
use burn::prelude::Backend;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use tda_model::infer::sequence_logprobs;
use tda_trace::Query;

use crate::metrics::lds;

/// `f_q(θ) = log p(completion | prompt)` of each query under `model`, as `tda trace`'s
/// `logprob` measurement tokenizes it (BOS + prompt, then the completion tokenized alone).
pub fn measure<B: Backend>(
    model: &tda_model::Transformer<B>,
    tokenizer: &tda_model::Tokenizer,
    queries: &[Query],
) -> Result<Vec<f64>, tda_trace::TraceError> {
    let mut seqs = Vec::with_capacity(queries.len());
    let mut starts = Vec::with_capacity(queries.len());
    for q in queries {
        let (ids, n) =
            tda_trace::query::encode_query(tokenizer, &model.config, &q.prompt, &q.completion)?;
        seqs.push(ids);
        starts.push(n);
    }
    let mut out = Vec::with_capacity(queries.len());
    for (chunk, st) in seqs.chunks(16).zip(starts.chunks(16)) {
        let lps = sequence_logprobs(model, chunk)?;
        for (lp, &n) in lps.iter().zip(st) {
            // lp[t] = log p(token t + 1 | ≤ t): the completion tokens are n.. → lp[n − 1..].
            out.push(lp[n - 1..].iter().map(|&x| x as f64).sum());
        }
    }
    Ok(out)
}

/// The LDS of one method: mean, its bootstrap 95 % interval, and the per-query values.
#[derive(Clone, Debug, Serialize)]
pub struct LdsScore {
    pub lds: f64,
    pub ci95: [f64; 2],
    /// `NaN` (serialised as null) where the correlation is undefined.
    pub per_query: Vec<Option<f64>>,
}

/// LDS of `scores[q][i]` against `outputs[q][j]` of the models trained on `subsets[j]`.
pub fn lds_with_ci(
    scores: &[Vec<f64>],
    subsets: &[Vec<usize>],
    outputs: &[Vec<f64>],
    resamples: usize,
    seed: u64,
) -> LdsScore {
    let (mean, per_query) = lds(scores, subsets, outputs);
    let mut rng = StdRng::seed_from_u64(seed);
    let m = subsets.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let pick: Vec<usize> = (0..m).map(|_| rng.random_range(0..m)).collect();
            let subs: Vec<Vec<usize>> = pick.iter().map(|&j| subsets[j].clone()).collect();
            let outs: Vec<Vec<f64>> = outputs
                .iter()
                .map(|o| pick.iter().map(|&j| o[j]).collect())
                .collect();
            lds(scores, &subs, &outs).0
        })
        .filter(|v| v.is_finite())
        .collect();
    means.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if means.is_empty() {
            f64::NAN
        } else {
            means[((p * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)]
        }
    };
    LdsScore {
        lds: mean,
        ci95: [q(0.025), q(0.975)],
        per_query: per_query
            .into_iter()
            .map(|v| v.is_finite().then_some(v))
            .collect(),
    }
}

impl LdsRow {
    /// `ekfac`, `ekfac+ckpt4` for a checkpoint ensemble, `ekfac+seeds4` for a seed ensemble.
    pub fn name(&self) -> String {
        match (self.ensemble, self.seeds) {
            (Some(k), _) => format!("{}+ckpt{k}", self.method.name()),
            (None, Some(k)) => format!("{}+seeds{k}", self.method.name()),
            (None, None) => self.method.name(),
        }
    }
}

/// One method's LDS in an evaluation, with the time its scores took.
#[derive(Clone, Debug, Serialize)]
pub struct LdsRow {
    pub method: crate::methods::Method,
    /// Checkpoint ensembles: the number of training states averaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<usize>,
    /// Seed ensembles: the number of independently trained full models averaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeds: Option<usize>,
    #[serde(flatten)]
    pub score: LdsScore,
    pub seconds: f64,
}

/// Everything `tda eval lds` reports.
#[derive(Clone, Debug, Serialize)]
pub struct LdsReport {
    pub models: usize,
    pub fraction: f64,
    pub documents: usize,
    pub queries: usize,
    /// Fingerprint of the full model (the one attributions are computed on).
    pub model: String,
    /// FNV-1a of the corpus documents (the bank's).
    pub corpus: String,
    /// `f_q` of each query on the full model and its spread over the bank (mean, std).
    pub full_values: Vec<f64>,
    pub bank_mean: Vec<f64>,
    pub bank_std: Vec<f64>,
    pub rows: Vec<LdsRow>,
    pub measure_seconds: f64,
}

/// Scores every method on the bank's full model and computes its LDS against the measurements
/// of the bank's models. `resamples` bootstrap draws for the interval (seeded by `seed`).
/// With `checkpoints` (folders of the full run's checkpoints, the final model last), every
/// influence method `M` also gets the row `M+ckptK`: the mean over the K states of `M`'s scores,
/// each state's scores of a query divided by their standard deviation over documents (so that
/// every state weighs the same; a TracIn-CP-style ensemble with each state's own factors).
/// With `seed_models` (the full model and runs with other seeds), the same over those models:
/// rows `M+seedsK` (TRAK-style).
#[allow(clippy::too_many_arguments)]
pub fn evaluate<AD: burn::tensor::backend::AutodiffBackend>(
    bank: &crate::bank::Bank,
    corpus: &std::path::Path,
    read: &tda_corpus::ReadOptions,
    queries: &[Query],
    methods: &[crate::methods::Method],
    settings: crate::methods::InfluenceSettings,
    checkpoints: &[std::path::PathBuf],
    seed_models: &[std::path::PathBuf],
    resamples: usize,
    seed: u64,
    device: &AD::Device,
    progress: &mut dyn FnMut(&str),
) -> Result<LdsReport, crate::methods::MethodError> {
    use crate::methods::Scorer;
    let full =
        tda_model::load_folder::<AD>(&bank.full, device).map_err(tda_trace::TraceError::from)?;
    let fingerprint = tda_trace::model_fingerprint(&bank.full)?;
    let t0 = std::time::Instant::now();
    let full_values = measure(&full.model.valid(), &full.tokenizer, queries)?;
    let mut outputs = vec![Vec::with_capacity(bank.models.len()); queries.len()];
    for (j, dir) in bank.models.iter().enumerate() {
        progress(&format!("measure model {}/{}", j + 1, bank.models.len()));
        let m = tda_model::load_folder::<AD::InnerBackend>(dir, device)
            .map_err(tda_trace::TraceError::from)?;
        for (q, v) in measure(&m.model, &m.tokenizer, queries)?
            .into_iter()
            .enumerate()
        {
            outputs[q].push(v);
        }
    }
    let measure_seconds = t0.elapsed().as_secs_f64();
    let stats = |o: &Vec<f64>| {
        let n = o.len() as f64;
        let mean = o.iter().sum::<f64>() / n;
        let var = o.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        (mean, var.sqrt())
    };
    let (bank_mean, bank_std) = outputs.iter().map(stats).unzip();
    let mut scorer = Scorer::new(
        &full.model,
        &full.tokenizer,
        fingerprint.clone(),
        corpus,
        read,
        &bank.docs,
        settings.clone(),
        &bank.dir,
    );
    let mut rows = Vec::with_capacity(methods.len());
    for &method in methods {
        progress(&format!("score {}", method.name()));
        let scores = scorer.scores(method, queries)?;
        rows.push(LdsRow {
            method,
            ensemble: None,
            seeds: None,
            score: lds_with_ci(&scores, &bank.subsets, &outputs, resamples, seed),
            seconds: scorer.seconds[&method.name()],
        });
    }
    let influence: Vec<crate::methods::Method> = methods
        .iter()
        .copied()
        .filter(|m| matches!(m, crate::methods::Method::Influence { .. }))
        .collect();
    for (states, seeds) in [(checkpoints, false), (seed_models, true)] {
        if states.is_empty() || influence.is_empty() {
            continue;
        }
        let t1 = std::time::Instant::now();
        let sums = ensemble_scores::<AD>(
            states, &influence, bank, corpus, read, queries, &settings, device, progress,
        )?;
        let per = t1.elapsed().as_secs_f64() / influence.len() as f64;
        for (k, method) in influence.iter().enumerate() {
            rows.push(LdsRow {
                method: *method,
                ensemble: (!seeds).then_some(states.len()),
                seeds: seeds.then_some(states.len()),
                score: lds_with_ci(&sums[k], &bank.subsets, &outputs, resamples, seed),
                seconds: per,
            });
        }
    }
    Ok(LdsReport {
        models: bank.models.len(),
        fraction: bank.subsets[0].len() as f64 / bank.docs.len() as f64,
        documents: bank.docs.len(),
        queries: queries.len(),
        model: fingerprint,
        corpus: crate::bank::corpus_fingerprint(&bank.docs),
        full_values,
        bank_mean,
        bank_std,
        rows,
        measure_seconds,
    })
}

/// `sums[method][query][doc]`: over `states` (model folders), each state's dense scores of the
/// method (its own factors), divided per query by [`tda_trace::ensemble::scale`] (their standard
/// deviation over documents), summed.
#[allow(clippy::too_many_arguments)]
fn ensemble_scores<AD: burn::tensor::backend::AutodiffBackend>(
    states: &[std::path::PathBuf],
    influence: &[crate::methods::Method],
    bank: &crate::bank::Bank,
    corpus: &std::path::Path,
    read: &tda_corpus::ReadOptions,
    queries: &[Query],
    settings: &crate::methods::InfluenceSettings,
    device: &AD::Device,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Vec<Vec<f64>>>, crate::methods::MethodError> {
    let mut sums = vec![vec![vec![0.0; bank.docs.len()]; queries.len()]; influence.len()];
    for (c, dir) in states.iter().enumerate() {
        progress(&format!(
            "state {}/{}: {}",
            c + 1,
            states.len(),
            dir.display()
        ));
        let m = tda_model::load_folder::<AD>(dir, device).map_err(tda_trace::TraceError::from)?;
        let fp = tda_trace::model_fingerprint(dir)?;
        let mut s = crate::methods::Scorer::new(
            &m.model,
            &m.tokenizer,
            fp,
            corpus,
            read,
            &bank.docs,
            settings.clone(),
            &bank.dir,
        );
        for (k, &method) in influence.iter().enumerate() {
            for (acc, row) in sums[k].iter_mut().zip(s.scores(method, queries)?) {
                let sd = tda_trace::ensemble::scale(&row);
                for (a, x) in acc.iter_mut().zip(&row) {
                    *a += x / sd;
                }
            }
        }
    }
    Ok(sums)
}
