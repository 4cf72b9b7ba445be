//! Where each answer token comes from: the prompt's documents, the question, the training data
//! (memory), or neither — decided per word, so the pieces of one word share one route.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use tda_context::ablation::teacher_forced;
use tda_context::cci::Passes;
use tda_context::pipeline::{answer_tokens, DisplayedAnswer};
use tda_context::prompt::{render_prompt, tokenize_prompt};
use tda_context::{Attribution, ChatTemplate};
use tda_model::Transformer;
use tokenizers::Tokenizer;

use crate::layers::LayerShare;
use crate::Result;

/// The source of one answer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Context-sensitive (CTI) and driven by a document of the prompt.
    Context,
    /// Part of a word of the question, copied.
    Question,
    /// Said without the documents with probability ≥ the memory threshold: from the parameters.
    Memory,
    Neither,
}

/// A prompt document driving a context token (1-based `doc`, as `Document [i]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DocScore {
    pub doc: usize,
    pub id: String,
    pub score: f32,
}

/// One answer token. `start..end`: bytes of [`Explanation::answer`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenExplanation {
    pub index: usize,
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub sentence: Option<usize>,
    pub route: Route,
    /// KL(P_noctx ‖ P_ctx) in nats (`None` without documents).
    pub cti: Option<f32>,
    pub logprob: f32,
    pub logprob_without_documents: f32,
    /// Context tokens: the documents that drive them, best first (≤ 3, positive scores).
    pub documents: Vec<DocScore>,
    /// Memory tokens: their span in [`Explanation::memory_spans`].
    pub span: Option<usize>,
    pub layers: Vec<LayerShare>,
}

/// The answer's tokens and what context attribution measured on them. Vectors have length T.
#[derive(Clone, Debug, Default)]
pub struct AnswerView {
    pub answer: String,
    pub generated: bool,
    pub ids: Vec<u32>,
    /// Each token decoded alone (with its leading space): their concatenation is the answer as
    /// the model continued the prompt.
    pub texts: Vec<String>,
    /// Byte spans in `answer`.
    pub spans: Vec<(usize, usize)>,
    pub sentence: Vec<Option<usize>>,
    pub cti: Vec<Option<f32>>,
    pub selected: Vec<bool>,
    /// log p(y_t | prompt with the documents) (= without them when there are none).
    pub logprob: Vec<f32>,
    pub logprob_without_documents: Vec<f32>,
    /// For context-sensitive tokens: the score of each prompt document (input order).
    pub doc_scores: Vec<Option<Vec<f32>>>,
    pub doc_ids: Vec<String>,
}

/// The view of an answer that `tda-context` attributed.
pub fn tokens_from_attribution(a: &Attribution) -> AnswerView {
    let t = &a.tokens;
    AnswerView {
        answer: a.answer.clone(),
        generated: a.generated,
        ids: t.iter().map(|x| x.id).collect(),
        texts: t.iter().map(|x| x.text.clone()).collect(),
        spans: t.iter().map(|x| (x.start, x.end)).collect(),
        sentence: t.iter().map(|x| x.sentence).collect(),
        cti: t.iter().map(|x| Some(x.cti)).collect(),
        selected: t.iter().map(|x| x.selected).collect(),
        logprob: t.iter().map(|x| x.logprob_ctx).collect(),
        logprob_without_documents: t.iter().map(|x| x.logprob_noctx).collect(),
        doc_scores: t.iter().map(|x| x.doc_scores.clone()).collect(),
        doc_ids: a.documents.iter().map(|d| d.id.clone()).collect(),
    }
}

/// A prompt without documents: the answer (given, or generated) teacher-forced after it.
pub fn answer_without_documents<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    chat: Option<&ChatTemplate>,
    question: &str,
    answer: Option<&str>,
    opts: &tda_context::Options,
) -> Result<AnswerView> {
    let inference = model.valid();
    let (text, spans) = render_prompt(&opts.template, question, &[], chat)?;
    let prompt = tokenize_prompt(tokenizer, &inference.config, text, spans, chat.is_some())?;
    let mut passes = Passes::default();
    let tokens = answer_tokens(
        &inference,
        tokenizer,
        &prompt.ids,
        answer,
        opts,
        &mut passes,
    )?;
    let lp = teacher_forced(&inference, &[prompt.ids], &tokens.ids, 1)?.remove(0);
    let DisplayedAnswer {
        text,
        spans,
        sentence_of_token,
        ..
    } = tokens.displayed();
    let n = tokens.ids.len();
    Ok(AnswerView {
        texts: tokens
            .ids
            .iter()
            .map(|&i| tokenizer.decode(&[i], false).unwrap_or_default())
            .collect(),
        sentence: sentence_of_token,
        answer: text,
        generated: tokens.generated,
        ids: tokens.ids,
        spans,
        cti: vec![None; n],
        selected: vec![false; n],
        logprob: lp.clone(),
        logprob_without_documents: lp,
        doc_scores: vec![None; n],
        doc_ids: Vec::new(),
    })
}

/// Lower-cased words (alphanumeric runs) of `s`.
fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// For each token, the byte range of the answer word holding its first alphanumeric byte.
fn word_of(answer: &str, span: (usize, usize)) -> Option<(usize, usize)> {
    let (s, e) = (span.0.min(answer.len()), span.1.min(answer.len()));
    let b = answer.as_bytes();
    let first = (s..e).find(|&i| (b[i] as char).is_alphanumeric() || b[i] >= 0x80)?;
    let is_word = |i: usize| (b[i] as char).is_alphanumeric() || b[i] >= 0x80;
    let mut start = first;
    while start > 0 && is_word(start - 1) {
        start -= 1;
    }
    let mut end = first;
    while end < b.len() && is_word(end) {
        end += 1;
    }
    Some((start, end))
}

/// Routes every token (rules in the crate docs), then makes the pieces of one word agree: a word
/// with a context token is context (documents of its most context-sensitive token), otherwise
/// it takes its first token's route. Tokens without a letter or digit are `Neither` unless
/// context-driven.
pub fn route(v: &AnswerView, question: &str, memory_min_prob: f32) -> Vec<TokenExplanation> {
    let qwords: std::collections::HashSet<String> = words(question).into_iter().collect();
    let n = v.ids.len();
    let word: Vec<Option<(usize, usize)>> =
        v.spans.iter().map(|&sp| word_of(&v.answer, sp)).collect();
    let best_doc = |t: usize| -> Option<usize> {
        let ds = v.doc_scores[t].as_ref()?;
        let (i, s) = ds
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))?;
        (*s > 0.0).then_some(i)
    };
    let own: Vec<Route> = (0..n)
        .map(|t| {
            if v.selected[t] && best_doc(t).is_some() {
                Route::Context
            } else if let Some((s, e)) = word[t] {
                if qwords.contains(&v.answer[s..e].to_lowercase()) {
                    Route::Question
                } else if v.logprob_without_documents[t].exp() >= memory_min_prob {
                    Route::Memory
                } else {
                    Route::Neither
                }
            } else {
                Route::Neither
            }
        })
        .collect();
    let mut out: Vec<TokenExplanation> = (0..n)
        .map(|t| TokenExplanation {
            index: t,
            text: v.texts[t].clone(),
            start: v.spans[t].0,
            end: v.spans[t].1,
            sentence: v.sentence[t],
            route: own[t],
            cti: v.cti[t],
            logprob: v.logprob[t],
            logprob_without_documents: v.logprob_without_documents[t],
            documents: Vec::new(),
            span: None,
            layers: Vec::new(),
        })
        .collect();
    // The documents of context token `c`: best first, at most 3, positive scores.
    let documents_of = |c: usize| -> Vec<DocScore> {
        let ds = v.doc_scores[c]
            .as_ref()
            .expect("a context token has document scores");
        let mut order: Vec<usize> = (0..ds.len()).filter(|&i| ds[i] > 0.0).collect();
        order.sort_by(|&a, &b| ds[b].total_cmp(&ds[a]).then(a.cmp(&b)));
        order
            .into_iter()
            .take(3)
            .map(|i| DocScore {
                doc: i + 1,
                id: v.doc_ids.get(i).cloned().unwrap_or_default(),
                score: ds[i],
            })
            .collect()
    };
    // Word agreement; a context token outside any word (punctuation) keeps its own documents.
    let mut t = 0;
    while t < n {
        let Some(w) = word[t] else {
            if own[t] == Route::Context {
                out[t].documents = documents_of(t);
            }
            t += 1;
            continue;
        };
        let end = (t..n).find(|&u| word[u] != Some(w)).unwrap_or(n);
        let ctx = (t..end)
            .filter(|&u| own[u] == Route::Context)
            .max_by(|&a, &b| v.cti[a].unwrap_or(0.0).total_cmp(&v.cti[b].unwrap_or(0.0)));
        let (route, docs_from) = match ctx {
            Some(c) => (Route::Context, Some(c)),
            None => (own[t], None),
        };
        for tok in &mut out[t..end] {
            tok.route = route;
        }
        if let Some(c) = docs_from {
            let docs = documents_of(c);
            for tok in &mut out[t..end] {
                tok.documents = docs.clone();
            }
        }
        t = end;
    }
    out
}

/// Maximal runs of consecutive memory tokens within one sentence (token indices, ascending).
pub fn memory_spans(tokens: &[TokenExplanation]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for t in tokens.iter().filter(|t| t.route == Route::Memory) {
        match out.last_mut() {
            Some(run)
                if *run.last().expect("non-empty") + 1 == t.index
                    && tokens[run[0]].sentence == t.sentence =>
            {
                run.push(t.index)
            }
            _ => out.push(vec![t.index]),
        }
    }
    out
}
