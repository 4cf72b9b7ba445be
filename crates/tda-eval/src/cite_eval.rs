//! Citation quality on the planted RAG set ([`crate::rag`]): each context-attribution method's
//! citation precision / recall / F1 against the planted documents, on all sentences and on those
//! with a "tie" distractor (where word overlap misleads), beside the lexical-overlap baseline;
//! faithfulness (the drop of the sentence's log-probability when its top-1 / top-3 documents are
//! removed, vs. as many random ones); passes and wall time per answer. Reference answers are
//! teacher-forced, so every method is scored on the same sentences.

use std::time::Instant;

use burn::module::AutodiffModule;
use serde::Serialize;
use tda_context::ablation::Ablator;
use tda_context::{attribute, Options, Request};
use tda_model::device::{Cpu, CpuAutodiff};
use tda_model::{HfModel, Transformer};

use crate::metrics::{citation_prf, Prf};
use crate::rag::{rag_set, template, RagExample};

/// One method's (or the baseline's) numbers.
#[derive(Clone, Debug, Serialize)]
pub struct CiteRow {
    pub method: String,
    pub all: Prf,
    /// Sentences with a tie distractor only.
    pub ties: Prf,
    /// Mean drop (nats) of a sentence's log-probability without its top-1 documents, without
    /// one random document, without its top-3, without three random ones (absent for lexical).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faithfulness: Option<[f64; 4]>,
    /// Per answer: forwards, backwards, milliseconds (absent for lexical).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<[f64; 3]>,
}

/// Everything `tda eval cite` reports.
#[derive(Clone, Debug, Serialize)]
pub struct CiteReport {
    pub examples: usize,
    pub sentences: usize,
    pub tie_sentences: usize,
    pub seed: u64,
    pub rows: Vec<CiteRow>,
}

/// Per sentence of `a`, summed: the drop of the sentence's log-probability when its top-1
/// document (by the method's scores) is removed, when a random one is, and the same for top-3
/// (order: top-1, random-1, top-3, random-3). `rng` is a xorshift state, advanced.
pub fn faithfulness(
    m: &HfModel<CpuAutodiff>,
    inference: &Transformer<Cpu>,
    ex: &RagExample,
    a: &tda_context::Attribution,
    rng: &mut u64,
) -> Result<[f64; 4], tda_context::ContextError> {
    let tpl = template();
    let ablator = Ablator {
        tokenizer: &m.tokenizer,
        template: &tpl,
        chat: None,
        question: &ex.question,
        docs: &ex.docs,
    };
    let n = ex.docs.len();
    let answer: Vec<u32> = a.tokens.iter().map(|t| t.id).collect();
    let full: Vec<f32> = a.tokens.iter().map(|t| t.logprob_ctx).collect();
    let mut masks = Vec::new();
    for s in &a.sentences {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&i, &j| s.doc_scores[j].total_cmp(&s.doc_scores[i]).then(i.cmp(&j)));
        for k in [1, 3] {
            masks.push(
                (0..n)
                    .map(|i| !order[..k].contains(&i))
                    .collect::<Vec<bool>>(),
            );
            let mut pool: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                *rng ^= *rng << 13 ^ (*rng >> 7) ^ 0x9E37_79B9_7F4A_7C15;
                pool.swap(i, (*rng % (i as u64 + 1)) as usize);
            }
            masks.push((0..n).map(|i| !pool[..k].contains(&i)).collect());
        }
    }
    let mut p = tda_context::cci::Passes::default();
    let lp = ablator.answer_logprobs(inference, &masks, &answer, 16, &mut p)?;
    let mut out = [0.0; 4];
    for (si, s) in a.sentences.iter().enumerate() {
        let v = |l: &[f32]| s.tokens.iter().map(|&t| l[t] as f64).sum::<f64>();
        for (j, o) in out.iter_mut().enumerate() {
            *o += v(&full) - v(&lp[si * 4 + j]);
        }
    }
    Ok(out)
}

/// Scores `methods` (name, options; the template is set to the RAG set's) and the lexical
/// baseline on `n` examples of `rag_set(n, seed)` with the reader `m`.
pub fn evaluate(
    m: &HfModel<CpuAutodiff>,
    n: usize,
    seed: u64,
    methods: &[(String, Options)],
    progress: &mut dyn FnMut(&str),
) -> Result<CiteReport, tda_context::ContextError> {
    let set = rag_set(n, seed);
    let gold: Vec<usize> = set.iter().flat_map(|ex| ex.gold.clone()).collect();
    let ties: Vec<bool> = set.iter().flat_map(|ex| ex.ties.clone()).collect();
    let on_ties = |c: &[Vec<usize>]| {
        let (c, g): (Vec<Vec<usize>>, Vec<usize>) = c
            .iter()
            .zip(&gold)
            .zip(&ties)
            .filter(|(_, &t)| t)
            .map(|((c, g), _)| (c.clone(), *g))
            .unzip();
        citation_prf(&c, &g)
    };
    let mut rows = Vec::new();
    let lex: Vec<Vec<usize>> = set
        .iter()
        .flat_map(|ex| {
            let docs: Vec<&str> = ex.docs.iter().map(|d| d.text.as_str()).collect();
            ex.sentences
                .iter()
                .map(|s| crate::lexical::cite(s, &docs, 3))
                .collect::<Vec<_>>()
        })
        .collect();
    let lex1: Vec<Vec<usize>> = lex
        .iter()
        .map(|c| c.iter().take(1).copied().collect())
        .collect();
    for (name, c) in [
        ("lexical overlap (ties cited)", &lex),
        ("lexical overlap, first of ties", &lex1),
    ] {
        rows.push(CiteRow {
            method: name.into(),
            all: citation_prf(c, &gold),
            ties: on_ties(c),
            faithfulness: None,
            cost: None,
        });
    }
    let inference = m.model.valid();
    for (name, opts) in methods {
        progress(&format!("cite {name}"));
        let opts = Options {
            template: template(),
            ..opts.clone()
        };
        let (mut cites, mut drops, mut cost, mut rng) =
            (Vec::new(), [0.0f64; 4], [0.0f64; 3], 0u64);
        for ex in &set {
            let req = Request {
                question: &ex.question,
                docs: &ex.docs,
                answer: Some(&ex.answer),
            };
            let t0 = Instant::now();
            let a = attribute(&m.model, &m.tokenizer, None, &req, &opts)?;
            cost[2] += t0.elapsed().as_secs_f64() * 1e3;
            cost[0] += a.passes.forwards as f64;
            cost[1] += a.passes.backwards as f64;
            if a.sentences.len() != ex.sentences.len() {
                return Err(tda_context::ContextError::Usage(format!(
                    "the answer {:?} splits into {} sentences, the set has {}",
                    ex.answer,
                    a.sentences.len(),
                    ex.sentences.len()
                )));
            }
            cites.extend(a.sentences.iter().map(|s| s.citations.clone()));
            for (d, x) in drops
                .iter_mut()
                .zip(faithfulness(m, &inference, ex, &a, &mut rng)?)
            {
                *d += x;
            }
        }
        let ns = gold.len().max(1) as f64;
        let nn = set.len().max(1) as f64;
        rows.push(CiteRow {
            method: name.clone(),
            all: citation_prf(&cites, &gold),
            ties: on_ties(&cites),
            faithfulness: Some(drops.map(|d| d / ns)),
            cost: Some(cost.map(|c| c / nn)),
        });
    }
    Ok(CiteReport {
        examples: set.len(),
        sentences: gold.len(),
        tie_sentences: ties.iter().filter(|&&t| t).count(),
        seed,
        rows,
    })
}
