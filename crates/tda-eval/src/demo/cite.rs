//! The demo's citation view: a RAG answer of the reader model cited sentence by sentence by
//! `tda cite`'s default method, beside word overlap and the planted truth.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use crate::methods::MethodError;

/// Held-out RAG questions the reader is asked (seed 99, as the `rag_errors` example).
pub const RAG_TRIED: usize = 16;

/// A RAG answer and its citations.
#[derive(Clone, Debug, Serialize)]
pub struct CitationView {
    /// Held-out questions the reader was asked, and how many it answered exactly.
    pub tried: usize,
    pub exact: usize,
    /// Which of them is shown (0-based) and why.
    pub index: usize,
    pub why: String,
    pub correct: bool,
    /// Per reference sentence: the 1-based document that states it, and whether a tie
    /// distractor (every content word, not the fact) is among the documents.
    pub gold: Vec<usize>,
    pub ties: Vec<bool>,
    /// Per answer sentence: what word overlap cites.
    pub lexical: Vec<Vec<usize>>,
    pub attribution: tda_context::Attribution,
}

/// Asks the reader the first [`RAG_TRIED`] held-out questions of [`crate::rag_set`] and cites
/// the first answer that is exact and has a tie distractor (else the first exact, else the
/// first), with `tda cite`'s default attribution (ContextCite, 64 random ablations + LASSO).
pub(super) fn cite<AD: AutodiffBackend>(
    dir: &Path,
    device: &AD::Device,
) -> Result<CitationView, MethodError> {
    let ctx = |e: tda_context::ContextError| MethodError::Usage(format!("{}: {e}", dir.display()));
    let r = tda_model::load_folder::<AD>(dir, device).map_err(tda_trace::TraceError::from)?;
    let eos = r.model.config.eos_token_id.ok_or_else(|| {
        MethodError::Usage(format!("{}: the reader has no eos_token_id", dir.display()))
    })?;
    let opts = crate::rag::answer_options(eos);
    let inference = r.model.valid();
    let set = crate::rag_set(RAG_TRIED, 99);
    let answers = set
        .iter()
        .map(|ex| {
            tda_context::pipeline::generate_answer(
                &inference,
                &r.tokenizer,
                &ex.question,
                &ex.docs,
                &opts,
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(ctx)?;
    let exact: Vec<bool> = set
        .iter()
        .zip(&answers)
        .map(|(ex, a)| *a == ex.answer)
        .collect();
    let (index, why) = if let Some(i) =
        (0..set.len()).find(|&i| exact[i] && set[i].ties.contains(&true))
    {
        (i, "the first held-out question the reader answers exactly whose documents hold a tie distractor (every word of a sentence, not its fact)")
    } else if let Some(i) = exact.iter().position(|&e| e) {
        (i, "the first held-out question the reader answers exactly")
    } else {
        (
            0,
            "the reader answers none exactly: the first question, as answered",
        )
    };
    let ex = &set[index];
    let answer = if answers[index].trim().is_empty() {
        ex.answer.clone()
    } else {
        answers[index].clone()
    };
    let req = tda_context::Request {
        question: &ex.question,
        docs: &ex.docs,
        answer: Some(&answer),
    };
    // `tda cite`'s default method and its settings.
    let method = tda_context::Method::context_cite();
    let opts = tda_context::Options {
        method,
        min_share: method.default_min_share(),
        ..opts
    };
    let attribution =
        tda_context::attribute(&r.model, &r.tokenizer, None, &req, &opts).map_err(ctx)?;
    let docs: Vec<&str> = ex.docs.iter().map(|d| d.text.as_str()).collect();
    let lexical = attribution
        .sentences
        .iter()
        .map(|s| crate::lexical::cite(&s.text, &docs, 3))
        .collect();
    Ok(CitationView {
        tried: set.len(),
        exact: exact.iter().filter(|&&e| e).count(),
        index,
        why: why.to_string(),
        correct: exact[index],
        gold: ex.gold.clone(),
        ties: ex.ties.clone(),
        lexical,
        attribution,
    })
}
