//! One generation explained token by token (`tda explain`): for each answer token, where it came
//! from and which layers carry it.
//!
//! Pipeline ([`explain`]):
//! 1. With documents in the prompt: context attribution (`tda-context`, any method) — CTI's
//!    KL(P_noctx ‖ P_ctx) per answer token, and for the context-sensitive tokens the documents
//!    that drove them. Without documents: the answer alone, teacher-forced after the prompt.
//! 2. [`route`]: each token is **context** (context-sensitive, with a document that drives it),
//!    **question** (a word copied from the question), **memory** (the model says it without the
//!    documents: p(y_t | prompt without documents) ≥ `memory_min_prob`), or **neither**.
//! 3. Memory: consecutive memory tokens of a sentence form a span; each span is one query
//!    (log p(span | prompt, answer before it)) of ONE influence trace (`tda-trace`, EK-FAC,
//!    optionally through the BM25 prefilter) over the training corpus, with per-layer scores.
//! 4. [`layers`]: per block, the share of the token that each layer carries — for memory spans the
//!    per-layer split of the top training documents' influence; for context tokens the
//!    gradient × output of each block's attention and MLP residual writes (summed over
//!    positions: the derivative of log p(y_t) when that write is scaled by 1 + ε).
//! 5. [`report`]: JSON and one self-contained HTML page (tokens coloured by route; a click on a
//!    token shows its documents and layers, by CSS `:target`, no script).
//!
//! Invariants: shares of one token's layers sum to 1 (absolute values); a memory token's
//! training documents are its span's; tokens are the answer's tokens, byte spans in the answer.

pub mod layers;
pub mod report;
pub mod route;

use std::path::Path;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use tda_context::prompt::{render_prompt, tokenize_prompt};
use tda_context::{attribute, ChatTemplate, Document, Request};
use tda_corpus::ReadOptions;
use tda_curvature::Factors;
use tda_model::Transformer;
use tda_trace::{candidate_source, CandidateKind, Prefilter, Query, TraceOptions};
use tokenizers::Tokenizer;

pub use report::{Explanation, MemorySpan, TrainingDoc};
pub use route::{DocScore, Route, TokenExplanation};

/// An error of `tda explain`, one line.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Context(#[from] tda_context::ContextError),
    #[error(transparent)]
    Trace(#[from] tda_trace::TraceError),
    #[error(transparent)]
    Model(#[from] tda_model::ModelError),
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, ExplainError>;

/// The training side: factors fitted on the model, the corpus they trace into (documents, or
/// prompt/completion pairs scored with the loss on the completion, as they were trained), an
/// optional prefilter index of that corpus, and the trace settings (`per_layer` is always on).
pub struct Memory<'a> {
    pub factors: &'a Factors,
    pub corpus: &'a Path,
    pub read: &'a ReadOptions,
    pub kind: CandidateKind,
    pub prefilter: Option<&'a Prefilter>,
    pub trace: TraceOptions,
}

/// Settings of [`explain`].
#[derive(Clone, Debug)]
pub struct ExplainOptions {
    /// Context attribution (template, CTI threshold, method, generation).
    pub cite: tda_context::Options,
    /// A non-context token is memory-driven when p(y_t | prompt without documents) is at least this.
    pub memory_min_prob: f32,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        Self {
            cite: tda_context::Options::default(),
            memory_min_prob: 0.5,
        }
    }
}

/// Explains one answer (given or generated) of `model` to `question` with `docs` in the prompt
/// (possibly none). Without `memory`, memory tokens are routed but not traced.
#[allow(clippy::too_many_arguments)]
pub fn explain<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    chat: Option<&ChatTemplate>,
    question: &str,
    docs: &[Document],
    answer: Option<&str>,
    opts: &ExplainOptions,
    memory: Option<Memory<'_>>,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<Explanation> {
    let t0 = Instant::now();
    if !(0.0..=1.0).contains(&opts.memory_min_prob) {
        return Err(ExplainError::Usage(format!(
            "the memory threshold must be a probability in [0, 1], got {}",
            opts.memory_min_prob
        )));
    }
    let tpl = &opts.cite.template;
    let (context, tokens) = if docs.is_empty() {
        (
            None,
            route::answer_without_documents(model, tokenizer, chat, question, answer, &opts.cite)?,
        )
    } else {
        let req = Request {
            question,
            docs,
            answer,
        };
        let a = attribute(model, tokenizer, chat, &req, &opts.cite)?;
        let toks = route::tokens_from_attribution(&a);
        (Some(a), toks)
    };
    let (answer_text, generated) = match &context {
        Some(a) => (a.answer.clone(), a.generated),
        None => (tokens.answer.clone(), tokens.generated),
    };
    let mut toks = route::route(&tokens, question, opts.memory_min_prob);
    let t_context = t0.elapsed().as_secs_f64();

    // The prompt as the model saw it, for the memory queries.
    let (prompt_text, spans_docs) = render_prompt(tpl, question, docs, chat)?;
    let spans = route::memory_spans(&toks);
    let mut memory_spans: Vec<MemorySpan> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let before: String = tokens.texts[..s[0]].concat();
            let text: String = s.iter().map(|&t| tokens.texts[t].as_str()).collect();
            MemorySpan {
                index: i,
                tokens: s.clone(),
                query: Query {
                    id: format!("span{i}"),
                    prompt: format!("{prompt_text}{before}"),
                    completion: text.clone(),
                },
                text,
                value: None,
                training: Vec::new(),
                layers: Vec::new(),
            }
        })
        .collect();
    for sp in &memory_spans {
        for &t in &sp.tokens {
            toks[t].span = Some(sp.index);
        }
    }
    let t1 = Instant::now();
    let mut traced = false;
    if let (Some(mem), false) = (&memory, memory_spans.is_empty()) {
        let queries: Vec<Query> = memory_spans.iter().map(|s| s.query.clone()).collect();
        let (source, _) =
            candidate_source(mem.corpus, mem.read, mem.kind, mem.prefilter, &queries)?;
        let mut topts = mem.trace.clone();
        topts.per_layer = true;
        topts.aggregate = None;
        let out = tda_trace::trace(
            model,
            tokenizer,
            mem.factors,
            &queries,
            &source,
            &topts,
            progress,
        )?;
        for (sp, q) in memory_spans.iter_mut().zip(&out.queries) {
            sp.value = Some(q.value);
            sp.training = q.results.iter().map(TrainingDoc::from_row).collect();
            sp.layers = layers::influence_shares(&q.results);
        }
        traced = true;
    }
    let t_memory = t1.elapsed().as_secs_f64();
    for sp in &memory_spans {
        for &t in &sp.tokens {
            toks[t].layers = sp.layers.clone();
        }
    }

    // Layers of the context tokens: residual writes at the predicting position.
    let t2 = Instant::now();
    let ctx_tokens: Vec<usize> = toks
        .iter()
        .filter(|t| t.route == Route::Context)
        .map(|t| t.index)
        .collect();
    if !ctx_tokens.is_empty() {
        let inference = model.valid();
        let pt = tokenize_prompt(
            tokenizer,
            &inference.config,
            prompt_text.clone(),
            spans_docs,
            chat.is_some(),
        )?;
        let shares = layers::residual_write_shares(
            model,
            &pt.ids,
            &tokens.ids,
            &ctx_tokens,
            opts.cite.max_batch_rows,
        )?;
        for (t, s) in ctx_tokens.iter().zip(shares) {
            toks[*t].layers = s;
        }
    }
    let t_layers = t2.elapsed().as_secs_f64();
    Ok(Explanation {
        question: question.to_string(),
        answer: answer_text,
        generated,
        documents: docs.to_vec(),
        tokens: toks,
        memory_spans,
        traced,
        context,
        memory_min_prob: opts.memory_min_prob,
        timings: report::Timings {
            context_s: t_context,
            memory_s: t_memory,
            layers_s: t_layers,
            total_s: t0.elapsed().as_secs_f64(),
        },
    })
}
