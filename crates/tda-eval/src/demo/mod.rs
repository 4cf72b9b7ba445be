//! `tda demo`: the whole job on a planted world, in one report.
//!
//! On the fact world of [`crate::facts`] and a model trained on it (the caller trains it, with
//! its progress display): greedy completions of every fact prompt; EK-FAC factors (cached in the
//! folder); one factual and one wrong generation traced back to the training documents with
//! per-token and per-layer scores, each document's BM25 rank beside its influence rank; and a
//! RAG answer of a reader model cited sentence by sentence ([`tda_context::attribute`]), beside
//! word overlap. [`report::to_html`] renders it as one self-contained page.
//!
//! Invariants: deterministic in the world and the models; every number shown comes from the
//! trace, the index or the attribution run here (nothing is fixed in advance); the choice of the
//! two generations follows a stated rule ([`Traced::why`]).

mod cite;
pub mod report;

pub use cite::{CitationView, RAG_TRIED};

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use tda_curvature::Factors;
use tda_model::infer::{self, GenerateOptions};
use tda_trace::output::{LayerScore, TokenScore};
use tda_trace::{fit, DocSource, FitOptions, Query, TraceOptions};

use crate::facts::{FactQuery, FactWorld, QueryKind};
use crate::methods::{InfluenceSettings, Method, MethodError, Scorer};

/// How the model was obtained (the caller trains it).
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub dir: PathBuf,
    pub recipe: String,
    pub steps: usize,
    /// Filled in by [`run`].
    pub parameters: usize,
    pub trained_now: bool,
    /// First and last training loss, when trained now.
    pub loss: Option<[f32; 2]>,
    pub train_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorldInfo {
    pub people: usize,
    pub documents: usize,
    pub queries: usize,
    pub seed: u64,
}

/// Greedy completions that equal the planted object, per query kind: `[right, of]`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Accuracy {
    pub same_template: [usize; 2],
    pub paraphrase: [usize; 2],
}

/// A document's relation to the traced fact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// States the fact (the ground truth).
    States,
    /// Names the person and the object without stating the fact.
    PersonAndObject,
    /// Names the person, not the object.
    SamePerson,
    /// Names the object, not the person.
    SameObject,
    Other,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::States => "states the fact",
            Role::PersonAndObject => "person + object",
            Role::SamePerson => "same person",
            Role::SameObject => "same object",
            Role::Other => "other",
        }
    }
}

/// One training document shown for a traced generation.
#[derive(Clone, Debug, Serialize)]
pub struct ShownDoc {
    pub doc_id: String,
    pub text: String,
    pub role: Role,
    /// Whether the document names the object of a wrong generation.
    pub names_generated: bool,
    /// 1-based ranks over the whole corpus.
    pub influence_rank: usize,
    pub bm25_rank: usize,
    pub score: f64,
    /// Text before the first scored token (the first token has no prediction).
    pub lead: String,
    /// The score of predicting each following token of the document's best window.
    pub tokens: Vec<TokenScore>,
    pub layers: Vec<LayerScore>,
}

/// A stating document's ranks.
#[derive(Clone, Debug, Serialize)]
pub struct StatingRank {
    pub doc_id: String,
    pub influence_rank: usize,
    pub bm25_rank: usize,
}

/// One generation traced back to the training documents.
#[derive(Clone, Debug, Serialize)]
pub struct Traced {
    pub query_id: String,
    pub subject: String,
    pub relation: &'static str,
    pub kind: QueryKind,
    pub prompt: String,
    /// What the model generated (greedy, up to the first ".").
    pub generated: String,
    /// The traced completion: the generation, or the planted one when the model generated
    /// nothing. The measurement is log p(measured | prompt).
    pub measured: String,
    /// The planted completion.
    pub truth: String,
    pub correct: bool,
    /// log p(measured | prompt).
    pub logprob: f32,
    /// How this generation was chosen.
    pub why: String,
    pub stating: Vec<StatingRank>,
    /// The top documents by influence.
    pub top: Vec<ShownDoc>,
    /// Per tracked layer: the sum of the top documents' scores.
    pub layers: Vec<LayerScore>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Timings {
    pub generate_s: f64,
    pub fit_s: f64,
    pub trace_s: f64,
    pub bm25_s: f64,
    pub cite_s: f64,
    pub total_s: f64,
}

/// Everything the demo shows.
#[derive(Clone, Debug, Serialize)]
pub struct Demo {
    pub world: WorldInfo,
    pub model: ModelInfo,
    pub accuracy: Accuracy,
    pub factors_cached: bool,
    pub factor_layers: usize,
    pub traced: Vec<Traced>,
    pub citation: Option<CitationView>,
    pub timings: Timings,
}

/// Documents shown per traced generation.
pub const TOP: usize = 5;

/// The completion of `prompt`: greedy, cut after the first "." (the world's completions are
/// " object.").
fn complete<B: burn::tensor::backend::Backend>(
    m: &tda_model::Transformer<B>,
    tokenizer: &tda_model::Tokenizer,
    prompt: &str,
) -> Result<String, MethodError> {
    let trace_err = |e: tda_model::ModelError| MethodError::Trace(e.into());
    let (ids, _) = infer::encode_for_scoring(tokenizer, &m.config, prompt).map_err(trace_err)?;
    let opts = GenerateOptions {
        max_new_tokens: 8,
        stop_token: m.config.eos_token_id,
        ..Default::default()
    };
    let new = infer::generate(m, &ids, &opts).map_err(trace_err)?;
    let text = tokenizer
        .decode(&new, true)
        .map_err(|e| MethodError::Usage(format!("cannot decode a generation: {e}")))?;
    Ok(match text.find('.') {
        Some(i) => text[..=i].to_string(),
        None => text.trim_end().to_string(),
    })
}

/// Whether `text` contains `phrase` (one or more words) with no letter or digit right before or
/// after it.
fn has_word(text: &str, phrase: &str) -> bool {
    !phrase.is_empty()
        && text.match_indices(phrase).any(|(i, _)| {
            let before = text[..i].chars().next_back();
            let after = text[i + phrase.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
}

fn object_of(completion: &str) -> &str {
    completion.trim().trim_end_matches('.').trim()
}

/// Picks the factual and the wrong generation (indices into `queries`) and says why.
fn choose(queries: &[FactQuery], generated: &[String], values: &[f64]) -> Vec<(usize, String)> {
    let right = |i: &usize| generated[*i] == queries[*i].query.completion;
    let first = |kind: QueryKind, ok: bool| {
        (0..queries.len()).find(|i| queries[*i].kind == kind && right(i) == ok)
    };
    let mut out = Vec::new();
    if let Some(i) = first(QueryKind::SameTemplate, true) {
        out.push((
            i,
            "the first prompt in a stating document's template that the model completes right"
                .to_string(),
        ));
    } else if let Some(i) = first(QueryKind::Paraphrase, true) {
        out.push((i, "no prompt in a stating document's template is completed right; the first paraphrased one that is".to_string()));
    } else if let Some(i) = (0..queries.len()).max_by(|&a, &b| values[a].total_cmp(&values[b])) {
        out.push((
            i,
            "no prompt is completed right: the one whose true completion is most likely"
                .to_string(),
        ));
    }
    let taken = out.first().map(|(i, _)| *i);
    let wrong = (0..queries.len())
        .filter(|i| Some(*i) != taken && !right(i))
        .find(|i| generated[*i].ends_with('.') && !object_of(&generated[*i]).is_empty())
        .or_else(|| (0..queries.len()).find(|i| Some(*i) != taken && !right(i)));
    if let Some(i) = wrong {
        out.push((i, "the first prompt the model completes wrong".to_string()));
    }
    out
}

/// Factors of `model` on `corpus` in `dir`: loaded when fitted on this model, else fitted and
/// saved. Returns them and whether they were cached.
fn ensure_factors<AD: AutodiffBackend>(
    m: &tda_model::HfModel<AD>,
    fingerprint: &str,
    source: &DocSource,
    dir: &Path,
) -> Result<(Factors, bool), MethodError> {
    if dir.join(tda_trace::FACTORS_FILE).exists() {
        match fit::load_checked(dir, fingerprint, &m.model.linear_layers()) {
            Ok(f) => return Ok((f, true)),
            Err(tda_trace::TraceError::Mismatch(_)) => {} // another model: refit
            Err(e) => return Err(e.into()),
        }
    }
    let (factors, report) = fit::fit(
        &m.model,
        &m.tokenizer,
        source,
        &FitOptions::default(),
        fingerprint,
        &mut |_| {},
    )?;
    fit::save(&factors, &report, dir)?;
    Ok((factors, false))
}

/// Runs the demo in `out` on the world written there ([`FactWorld::write_to`]) with the trained
/// model `model.dir` and the RAG reader in `reader` (`None`: no citation section).
/// Errors: unreadable models or corpus, a failed trace or attribution.
pub fn run<AD: AutodiffBackend>(
    out: &Path,
    world: &FactWorld,
    seed: u64,
    model: ModelInfo,
    reader: Option<&Path>,
    device: &AD::Device,
    progress: &mut dyn FnMut(&str),
) -> Result<Demo, MethodError> {
    let t_all = Instant::now();
    let corpus = &out.join(crate::facts::CORPUS_FILE);
    let mut timings = Timings::default();
    let loaded = crate::fact_tracing::load::<AD>(&model.dir, corpus, &world.queries, device)?;
    let m = &loaded.model;
    let inference = m.model.valid();
    let mut model = model;
    model.parameters = burn::module::Module::num_params(&m.model);

    let t0 = Instant::now();
    let generated = world
        .queries
        .iter()
        .map(|q| complete(&inference, &m.tokenizer, &q.query.prompt))
        .collect::<Result<Vec<_>, _>>()?;
    timings.generate_s = t0.elapsed().as_secs_f64();
    let mut accuracy = Accuracy::default();
    for (q, g) in world.queries.iter().zip(&generated) {
        let a = match q.kind {
            QueryKind::SameTemplate => &mut accuracy.same_template,
            QueryKind::Paraphrase => &mut accuracy.paraphrase,
        };
        a[0] += usize::from(*g == q.query.completion);
        a[1] += 1;
    }
    progress(&format!(
        "generations: {}/{} same-template and {}/{} paraphrased fact prompts completed right",
        accuracy.same_template[0],
        accuracy.same_template[1],
        accuracy.paraphrase[0],
        accuracy.paraphrase[1]
    ));

    let t0 = Instant::now();
    let source = DocSource::corpus(corpus);
    let (factors, factors_cached) =
        ensure_factors(m, &loaded.fingerprint, &source, &out.join("factors"))?;
    timings.fit_s = t0.elapsed().as_secs_f64();
    progress(&format!(
        "EK-FAC factors of {} layers ({}, {:.1}s)",
        factors.layers.len(),
        if factors_cached {
            "cached"
        } else {
            "fitted now"
        },
        timings.fit_s
    ));

    let chosen = choose(&world.queries, &generated, &loaded.values);
    let queries: Vec<Query> = chosen
        .iter()
        .map(|(i, _)| Query {
            completion: if generated[*i].trim().is_empty() {
                world.queries[*i].query.completion.clone()
            } else {
                generated[*i].clone()
            },
            ..world.queries[*i].query.clone()
        })
        .collect();
    let t0 = Instant::now();
    let opts = TraceOptions {
        top_k: None,
        per_token: true,
        per_layer: true,
        ..TraceOptions::default()
    };
    let traced = tda_trace::trace(
        &m.model,
        &m.tokenizer,
        &factors,
        &queries,
        &source,
        &opts,
        &mut |_, _| {},
    )?;
    timings.trace_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut scorer = Scorer::new(
        &m.model,
        &m.tokenizer,
        loaded.fingerprint.clone(),
        corpus,
        &tda_corpus::ReadOptions::default(),
        &loaded.docs,
        InfluenceSettings::default(),
        out,
    );
    let bm25 = scorer.scores(Method::Bm25, &queries)?;
    timings.bm25_s = t0.elapsed().as_secs_f64();
    progress(&format!(
        "traced {} generations over {} documents ({:.1}s; BM25 {:.2}s)",
        queries.len(),
        loaded.docs.len(),
        timings.trace_s,
        timings.bm25_s
    ));

    let mut shown = Vec::new();
    for ((qi, why), (q, res)) in chosen.iter().zip(queries.iter().zip(&traced.queries)) {
        let fq = &world.queries[*qi];
        let order = crate::fact_tracing::ranking(&bm25[shown.len()]);
        let mut bm25_rank = vec![0usize; loaded.docs.len()];
        for (r, &d) in order.iter().enumerate() {
            bm25_rank[d] = r + 1;
        }
        let correct = generated[*qi] == fq.query.completion;
        let object = object_of(&fq.query.completion);
        let gen_object = object_of(&q.completion);
        let role = |text: &str, id: &str| {
            let (p, o) = (text.contains(fq.subject.as_str()), has_word(text, object));
            if fq.truth.iter().any(|t| t == id) {
                Role::States
            } else if p && o {
                Role::PersonAndObject
            } else if p {
                Role::SamePerson
            } else if o {
                Role::SameObject
            } else {
                Role::Other
            }
        };
        let top: Vec<ShownDoc> = res
            .results
            .iter()
            .take(TOP)
            .map(|r| {
                let tokens = r.per_token.clone().unwrap_or_default();
                let tail: String = tokens.iter().map(|t| t.token.as_str()).collect();
                ShownDoc {
                    doc_id: r.doc_id.clone(),
                    role: role(&r.text, &r.doc_id),
                    names_generated: !correct && has_word(&r.text, gen_object),
                    influence_rank: r.rank,
                    bm25_rank: bm25_rank[r.doc as usize],
                    score: r.score,
                    lead: r.text.strip_suffix(tail.as_str()).unwrap_or("").to_string(),
                    text: r.text.clone(),
                    tokens,
                    layers: r.per_layer.clone().unwrap_or_default(),
                }
            })
            .collect();
        let mut layers: Vec<LayerScore> = Vec::new();
        for d in &top {
            for (k, l) in d.layers.iter().enumerate() {
                match layers.get_mut(k) {
                    Some(acc) => acc.score += l.score,
                    None => layers.push(l.clone()),
                }
            }
        }
        let stating = fq
            .truth
            .iter()
            .map(|id| {
                let d = loaded.docs.iter().position(|d| &d.id == id);
                let inf = res.results.iter().find(|r| &r.doc_id == id);
                StatingRank {
                    doc_id: id.clone(),
                    influence_rank: inf.map_or(0, |r| r.rank),
                    bm25_rank: d.map_or(0, |d| bm25_rank[d]),
                }
            })
            .collect();
        shown.push(Traced {
            query_id: fq.query.id.clone(),
            subject: fq.subject.clone(),
            relation: fq.relation,
            kind: fq.kind,
            prompt: q.prompt.clone(),
            generated: generated[*qi].clone(),
            measured: q.completion.clone(),
            truth: fq.query.completion.clone(),
            correct,
            logprob: res.value,
            why: why.clone(),
            stating,
            top,
            layers,
        });
    }

    let citation = match reader {
        Some(dir) => {
            let t0 = Instant::now();
            let c = cite::cite::<AD>(dir, device)?;
            timings.cite_s = t0.elapsed().as_secs_f64();
            progress(&format!(
                "cited a RAG answer: the reader answers {}/{} held-out questions exactly ({:.1}s)",
                c.exact, c.tried, timings.cite_s
            ));
            Some(c)
        }
        None => None,
    };
    timings.total_s = t_all.elapsed().as_secs_f64();
    Ok(Demo {
        world: WorldInfo {
            people: world.queries.len() / 2,
            documents: loaded.docs.len(),
            queries: world.queries.len(),
            seed,
        },
        model,
        accuracy,
        factors_cached,
        factor_layers: factors.layers.len(),
        traced: shown,
        citation,
        timings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_match_whole_words_only() {
        assert!(has_word("X was born in Kestrel Bay.", "Kestrel Bay"));
        assert!(has_word("owl", "owl"));
        assert!(!has_word("X has a pet owlet.", "owl"));
        assert!(!has_word("Kestrel Bayside", "Kestrel Bay"));
        assert!(!has_word("anything", ""));
    }
}
