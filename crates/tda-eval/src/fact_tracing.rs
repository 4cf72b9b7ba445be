//! Fact tracing: for each planted fact's query, the rank of the first document that states it,
//! per method; MRR and recall@10 / @50, overall and stratified by query kind (same template /
//! paraphrase) and by how many documents state the fact. Also the two-stage ranking of
//! `tda trace --index`: the BM25 top-N re-ranked by an influence method, the rest after.
//!
//! Invariant: ranks are over the whole corpus, 1-based, ties broken by corpus order (as the
//! trace's heaps break them).

use std::collections::HashMap;

use serde::Serialize;

use crate::facts::{FactQuery, QueryKind};
use crate::methods::{Method, MethodError};
use crate::metrics::{mrr, recall_at_k};

/// Document order by decreasing score, ties by index.
pub fn ranking(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// The BM25 top `n` (by `lexical`) ordered by `influence`, then every other document by `lexical`.
pub fn two_stage(lexical: &[f64], influence: &[f64], n: usize) -> Vec<usize> {
    let lex = ranking(lexical);
    let n = n.min(lex.len());
    let mut head = lex[..n].to_vec();
    head.sort_by(|&a, &b| influence[b].total_cmp(&influence[a]).then(a.cmp(&b)));
    head.extend_from_slice(&lex[n..]);
    head
}

/// 1-based rank of the first truth document in `order` (`truth` as corpus indices).
pub fn first_rank(order: &[usize], truth: &[usize]) -> Option<usize> {
    order.iter().position(|i| truth.contains(i)).map(|p| p + 1)
}

/// One method's numbers on one stratum of the queries.
#[derive(Clone, Debug, Serialize)]
pub struct FactRow {
    pub method: String,
    /// `all`, `same-template`, `paraphrase`, or `stated-by-K`.
    pub stratum: String,
    pub queries: usize,
    pub mrr: f64,
    pub recall_at_10: f64,
    pub recall_at_50: f64,
}

/// Rows of one method from its per-query ranks.
pub fn rows(method: &str, queries: &[FactQuery], ranks: &[Option<usize>]) -> Vec<FactRow> {
    let mut strata: Vec<(String, Vec<Option<usize>>)> = vec![("all".into(), ranks.to_vec())];
    for kind in [QueryKind::SameTemplate, QueryKind::Paraphrase] {
        let r = queries
            .iter()
            .zip(ranks)
            .filter(|(q, _)| q.kind == kind)
            .map(|(_, r)| *r)
            .collect();
        let name = match kind {
            QueryKind::SameTemplate => "same-template",
            QueryKind::Paraphrase => "paraphrase",
        };
        strata.push((name.into(), r));
    }
    let mut by_k: HashMap<usize, Vec<Option<usize>>> = HashMap::new();
    for (q, r) in queries.iter().zip(ranks) {
        by_k.entry(q.truth.len()).or_default().push(*r);
    }
    let mut ks: Vec<_> = by_k.into_iter().collect();
    ks.sort_by_key(|(k, _)| *k);
    strata.extend(ks.into_iter().map(|(k, r)| (format!("stated-by-{k}"), r)));
    strata
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(stratum, r)| FactRow {
            method: method.to_string(),
            stratum,
            queries: r.len(),
            mrr: mrr(&r),
            recall_at_10: recall_at_k(&r, 10),
            recall_at_50: recall_at_k(&r, 50),
        })
        .collect()
}

/// Everything `tda eval fact-tracing` reports.
#[derive(Clone, Debug, Serialize)]
pub struct FactReport {
    pub documents: usize,
    pub queries: usize,
    pub model: String,
    pub corpus: String,
    /// Mean log p(completion | prompt) of the queries on the model, per kind.
    pub mean_logprob_same_template: f64,
    pub mean_logprob_paraphrase: f64,
    pub rows: Vec<FactRow>,
    /// Per method, the rank of the first stating document of each query (`None`: not retrieved).
    pub ranks: Vec<(String, Vec<Option<usize>>)>,
    pub seconds: HashMap<String, f64>,
}

/// A trained fact world loaded for evaluation: the model, the corpus documents, each query's
/// stating documents as corpus indices, and `f` of each query on the model.
pub struct Loaded<AD: burn::tensor::backend::AutodiffBackend> {
    pub model: tda_model::HfModel<AD>,
    pub fingerprint: String,
    pub docs: Vec<tda_corpus::Document>,
    pub truth: Vec<Vec<usize>>,
    pub queries: Vec<tda_trace::Query>,
    pub values: Vec<f64>,
}

/// Loads `model_dir` and `corpus` and resolves the truth of `queries`.
/// Errors: a stating document missing from the corpus, an unreadable model or corpus.
pub fn load<AD: burn::tensor::backend::AutodiffBackend>(
    model_dir: &std::path::Path,
    corpus: &std::path::Path,
    queries: &[FactQuery],
    device: &AD::Device,
) -> Result<Loaded<AD>, MethodError> {
    use burn::module::AutodiffModule;
    let model =
        tda_model::load_folder::<AD>(model_dir, device).map_err(tda_trace::TraceError::from)?;
    let fingerprint = tda_trace::model_fingerprint(model_dir)?;
    let docs = crate::bank::read_docs(corpus, &tda_corpus::ReadOptions::default())
        .map_err(|e| MethodError::Usage(e.to_string()))?;
    let index: HashMap<&str, usize> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();
    let truth = queries
        .iter()
        .map(|q| {
            q.truth
                .iter()
                .map(|id| {
                    index.get(id.as_str()).copied().ok_or_else(|| {
                        MethodError::Usage(format!(
                            "{}: the stating document {id} of query {} is not in the corpus",
                            corpus.display(),
                            q.query.id
                        ))
                    })
                })
                .collect::<Result<Vec<usize>, _>>()
        })
        .collect::<Result<_, _>>()?;
    let plain: Vec<tda_trace::Query> = queries.iter().map(|q| q.query.clone()).collect();
    let values = crate::lds::measure(&model.model.valid(), &model.tokenizer, &plain)?;
    Ok(Loaded {
        model,
        fingerprint,
        docs,
        truth,
        queries: plain,
        values,
    })
}

/// Dense scores of every method (see [`crate::methods`]) and the seconds each took.
#[allow(clippy::type_complexity)]
pub fn dense_scores<AD: burn::tensor::backend::AutodiffBackend>(
    w: &Loaded<AD>,
    corpus: &std::path::Path,
    methods: &[Method],
    settings: crate::methods::InfluenceSettings,
    work: &std::path::Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<(Method, Vec<Vec<f64>>)>, HashMap<String, f64>), MethodError> {
    let mut scorer = crate::methods::Scorer::new(
        &w.model.model,
        &w.model.tokenizer,
        w.fingerprint.clone(),
        corpus,
        &tda_corpus::ReadOptions::default(),
        &w.docs,
        settings,
        work,
    );
    let mut dense = Vec::with_capacity(methods.len());
    for &method in methods {
        progress(&format!("score {}", method.name()));
        dense.push((method, scorer.scores(method, &w.queries)?));
    }
    Ok((dense, scorer.seconds))
}

/// Every ranking to evaluate: each method's own, and `bm25@N→M` (the BM25 top `prefilter`
/// re-ranked by `M`) for every influence method `M` when `bm25` is among the methods.
pub fn rankings(
    dense: &[(Method, Vec<Vec<f64>>)],
    prefilter: usize,
) -> Vec<(String, Vec<Vec<usize>>)> {
    let mut out: Vec<(String, Vec<Vec<usize>>)> = dense
        .iter()
        .map(|(m, scores)| (m.name(), scores.iter().map(|s| ranking(s)).collect()))
        .collect();
    if let Some((_, lex)) = dense.iter().find(|(m, _)| *m == Method::Bm25) {
        for (method, scores) in dense {
            if let Method::Influence { .. } = method {
                let orders = lex
                    .iter()
                    .zip(scores)
                    .map(|(l, s)| two_stage(l, s, prefilter))
                    .collect();
                out.push((format!("bm25@{prefilter}→{}", method.name()), orders));
            }
        }
    }
    out
}

/// Scores every method on the model's corpus and ranks each query's stating documents
/// ([`rankings`]).
#[allow(clippy::too_many_arguments)]
pub fn evaluate<AD: burn::tensor::backend::AutodiffBackend>(
    model_dir: &std::path::Path,
    corpus: &std::path::Path,
    queries: &[FactQuery],
    methods: &[Method],
    settings: crate::methods::InfluenceSettings,
    prefilter: usize,
    work: &std::path::Path,
    device: &AD::Device,
    progress: &mut dyn FnMut(&str),
) -> Result<FactReport, MethodError> {
    let w = load::<AD>(model_dir, corpus, queries, device)?;
    let (dense, seconds) = dense_scores(&w, corpus, methods, settings, work, progress)?;
    let mut report_rows = Vec::new();
    let mut all_ranks = Vec::new();
    for (name, orders) in rankings(&dense, prefilter) {
        let ranks: Vec<Option<usize>> = orders
            .iter()
            .zip(&w.truth)
            .map(|(o, t)| first_rank(o, t))
            .collect();
        report_rows.extend(rows(&name, queries, &ranks));
        all_ranks.push((name, ranks));
    }
    let mean_of = |kind| {
        let v: Vec<f64> = queries
            .iter()
            .zip(&w.values)
            .filter(|(q, _)| q.kind == kind)
            .map(|(_, v)| *v)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    Ok(FactReport {
        documents: w.docs.len(),
        queries: queries.len(),
        model: w.fingerprint.clone(),
        corpus: crate::bank::corpus_fingerprint(&w.docs),
        mean_logprob_same_template: mean_of(QueryKind::SameTemplate),
        mean_logprob_paraphrase: mean_of(QueryKind::Paraphrase),
        rows: report_rows,
        ranks: all_ranks,
        seconds,
    })
}
