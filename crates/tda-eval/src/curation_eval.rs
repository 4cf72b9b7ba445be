//! Curation by self-influence: does `tda self-influence` put planted corrupted documents at the
//! top of its ranking?
//!
//! World: generated biographies with 10 % corrupted documents planted: half **shuffled** (the
//! words of a biography in random order), half **wrong-fact swaps** (a copy of a biography whose
//! birthplace is replaced by another city; the original stays, so the two contradict). A model is
//! trained on the whole corpus by the recipe, EK-FAC is fitted on it, and every document is
//! ranked by self-influence. Reported: recall of the corrupted documents in the top 10 % of the
//! ranking, per kind, for EK-FAC, the identity (‖∇L‖²), the mean token loss, and chance (0.10).

use std::collections::HashSet;
use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tda_curvature::{Damping, Factors};
use tda_trace::{fit, self_influence, DocSource, FitOptions, Granularity, WindowOptions};

use crate::biographies;
use crate::methods::MethodError;

/// A corpus with planted corrupted documents.
#[derive(Clone, Debug)]
pub struct CorruptedWorld {
    /// `(id, text)` in corpus order.
    pub items: Vec<(String, String)>,
    pub shuffled: HashSet<String>,
    pub swapped: HashSet<String>,
}

/// `people` biographies and `ceil(people / 10)` corrupted documents (half shuffled, half
/// swapped), deterministic in `seed`.
pub fn corrupted_world(people: usize, seed: u64) -> CorruptedWorld {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + seed);
    let docs = biographies(people, 500 + seed);
    let mut items: Vec<(String, String)> = docs
        .iter()
        .map(|d| (d.id.clone(), d.text.clone()))
        .collect();
    let n_bad = people.div_ceil(10);
    let mut order: Vec<usize> = (0..people).collect();
    order.shuffle(&mut rng);
    let (sh, sw) = order[..n_bad].split_at(n_bad / 2 + n_bad % 2);
    let mut shuffled = HashSet::new();
    for &i in sh {
        let mut words: Vec<&str> = docs[i].text.split(' ').collect();
        words.shuffle(&mut rng);
        items[i].1 = words.join(" ");
        shuffled.insert(items[i].0.clone());
    }
    let mut swapped = HashSet::new();
    for &i in sw {
        let p = &docs[i].person;
        let other = loop {
            let c = &docs[rng.random_range(0..people)].person.city;
            if *c != p.city {
                break c.clone();
            }
        };
        let id = format!("{}-swap", docs[i].id);
        items.push((id.clone(), docs[i].text.replace(&p.city, &other)));
        swapped.insert(id);
    }
    CorruptedWorld {
        items,
        shuffled,
        swapped,
    }
}

impl CorruptedWorld {
    /// The corpus as jsonl (`{"id", "text"}` per line).
    pub fn corpus_jsonl(&self) -> String {
        let mut s = String::new();
        for (id, text) in &self.items {
            s.push_str(&serde_json::json!({ "id": id, "text": text }).to_string());
            s.push('\n');
        }
        s
    }
}

/// One ranking's recall in the top 10 %, averaged over seeds.
#[derive(Clone, Debug, Serialize)]
pub struct CurationRow {
    pub method: String,
    pub all: f64,
    pub shuffled: f64,
    pub swapped: f64,
    /// Per seed: recall of all corrupted documents.
    pub per_seed: Vec<f64>,
}

/// Recall of `bad` in the first `top` of `ranked`.
fn recall(ranked: &[String], top: usize, bad: &HashSet<String>) -> f64 {
    let head: HashSet<&String> = ranked[..top.min(ranked.len())].iter().collect();
    bad.iter().filter(|id| head.contains(id)).count() as f64 / bad.len().max(1) as f64
}

/// Rankings of one trained world: EK-FAC self-influence, identity self-influence, mean token
/// loss (each most suspicious first).
pub fn rankings<AD: AutodiffBackend>(
    model: &tda_model::Transformer<AD>,
    tokenizer: &tda_model::Tokenizer,
    corpus: &Path,
    fingerprint: &str,
) -> Result<[Vec<String>; 3], MethodError> {
    let source = DocSource::corpus(corpus);
    let windows = WindowOptions::default();
    let (factors, _) = fit::fit(
        model,
        tokenizer,
        &source,
        &FitOptions::default(),
        fingerprint,
        &mut |_| {},
    )?;
    let rank_by = |f: &Factors, d: Damping| -> Result<Vec<String>, MethodError> {
        let (rows, _) = self_influence(
            model,
            tokenizer,
            f,
            &source,
            d,
            None,
            &windows,
            Granularity::Document,
            &mut |_, _| {},
        )?;
        Ok(rows.into_iter().map(|r| r.doc_id).collect())
    };
    let identity = Factors::identity(factors.specs(), "identity");
    let inference = model.valid();
    let docs = crate::bank::read_docs(corpus, &tda_corpus::ReadOptions::default())
        .map_err(|e| MethodError::Usage(e.to_string()))?;
    let mut by_loss = Vec::with_capacity(docs.len());
    let max = inference.config.max_positions.max(2);
    for d in &docs {
        // Long documents in model-length pieces (the first token of each piece is not scored).
        let (ids, _) = tda_model::infer::encode_for_scoring(tokenizer, &inference.config, &d.text)
            .map_err(tda_trace::TraceError::from)?;
        let pieces: Vec<Vec<u32>> = ids
            .chunks(max)
            .filter(|c| c.len() >= 2)
            .map(<[u32]>::to_vec)
            .collect();
        let lps = tda_model::infer::sequence_logprobs(&inference, &pieces)
            .map_err(tda_trace::TraceError::from)?;
        let n = lps.iter().map(Vec::len).sum::<usize>().max(1);
        let nll = -lps.iter().flatten().sum::<f32>() as f64 / n as f64;
        by_loss.push((nll, d.id.clone()));
    }
    by_loss.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok([
        rank_by(&factors, Damping::default())?,
        rank_by(&identity, Damping::Absolute(0.0))?,
        by_loss.into_iter().map(|(_, id)| id).collect(),
    ])
}

/// The rows from each seed's world and rankings.
pub fn rows(worlds: &[(CorruptedWorld, [Vec<String>; 3])]) -> Vec<CurationRow> {
    let names = [
        "self-influence, EK-FAC",
        "self-influence, identity (‖∇L‖²)",
        "mean token loss",
    ];
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    names
        .iter()
        .enumerate()
        .map(|(m, name)| {
            let mut r = [Vec::new(), Vec::new(), Vec::new()];
            for (w, ranks) in worlds {
                let top = w.items.len().div_ceil(10);
                let all: HashSet<String> = w.shuffled.union(&w.swapped).cloned().collect();
                r[0].push(recall(&ranks[m], top, &all));
                r[1].push(recall(&ranks[m], top, &w.shuffled));
                r[2].push(recall(&ranks[m], top, &w.swapped));
            }
            CurationRow {
                method: name.to_string(),
                all: mean(&r[0]),
                shuffled: mean(&r[1]),
                swapped: mean(&r[2]),
                per_seed: r[0].clone(),
            }
        })
        .collect()
}
