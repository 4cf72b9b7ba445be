//! The whole attribution of one answer: prompts → (generation) → CTI → CCI → citations.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use tda_model::infer::{generate, GenerateOptions};
use tda_model::Transformer;
use tokenizers::Tokenizer;

use crate::ablation::{self, Ablator, Method};
use crate::cci::{contrastive_gradients, rows_for_budget, Gradient, Passes, Target};
use crate::cite::{citations, doc_sums, filter_scores, sentence_of, split_sentences, CciFilter};
use crate::cti::{select_tokens, token_stats, Threshold};
use crate::docs::Document;
use crate::error::{ContextError, Result};
use crate::prompt::{build_prompts, ChatTemplate, PromptTemplate};
use crate::report::{
    Attribution, DocHighlight, DocReport, SentenceReport, Settings, Timings, TokenReport,
};

/// Settings of [`attribute`]. Defaults are MIRAGE's, except the fixes listed in the crate docs.
#[derive(Clone, Debug)]
pub struct Options {
    pub template: PromptTemplate,
    /// Generation when no answer is given (greedy by default; the stop token is the model's EOS).
    pub generation: GenerateOptions,
    pub threshold: Threshold,
    pub filter: CciFilter,
    /// MIRAGE (gradients), ContextCite (random ablations + LASSO) or leave-one-out.
    pub method: Method,
    /// MIRAGE's reduction of the embedding gradient.
    pub gradient: Gradient,
    /// Count title tokens for their document (headers and template never count).
    pub count_titles: bool,
    pub max_citations: usize,
    /// A cited document needs at least this share of the sentence's positive document mass.
    pub min_share: f32,
    /// A sentence without selected token gets its highest-KL token selected (not in MIRAGE).
    pub sentence_fallback: bool,
    /// At most this many targets per backward (MIRAGE) or prompts per forward (ablations).
    pub max_batch_rows: usize,
    /// Memory budget for the logits of one backward batch.
    pub batch_budget_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            template: PromptTemplate::default(),
            generation: GenerateOptions {
                max_new_tokens: 128,
                ..GenerateOptions::default()
            },
            threshold: Threshold::default(),
            filter: CciFilter::default(),
            method: Method::default(),
            gradient: Gradient::default(),
            count_titles: false,
            max_citations: 3,
            min_share: 0.0,
            sentence_fallback: false,
            max_batch_rows: 16,
            batch_budget_bytes: 1 << 30,
        }
    }
}

/// What to attribute: a question, its retrieved documents, and optionally a given answer
/// (otherwise the model generates one).
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub question: &'a str,
    pub docs: &'a [Document],
    pub answer: Option<&'a str>,
}

/// Byte spans of each of `ids` in their decoded text, by incremental decoding.
fn decode_spans(tokenizer: &Tokenizer, ids: &[u32]) -> Result<(String, Vec<(usize, usize)>)> {
    let dec = |n: usize| {
        tokenizer
            .decode(&ids[..n], false)
            .map_err(|e| ContextError::usage(format!("cannot decode the answer: {e}")))
    };
    let text = dec(ids.len())?;
    let mut spans = Vec::with_capacity(ids.len());
    let mut prev = 0;
    for n in 1..=ids.len() {
        let end = dec(n)?.len().clamp(prev, text.len());
        spans.push((prev, end));
        prev = end;
    }
    Ok((text, spans))
}

/// An answer as token ids, with the byte span of each id in `raw` (the answer text, which may
/// start with the template's separator).
#[derive(Clone, Debug)]
pub struct AnswerTokens {
    pub ids: Vec<u32>,
    pub raw: String,
    pub spans: Vec<(usize, usize)>,
    pub generated: bool,
}

/// The answer as shown: `raw` without surrounding whitespace, the token spans shifted into it,
/// its sentences and the sentence of each token.
#[derive(Clone, Debug)]
pub struct DisplayedAnswer {
    pub text: String,
    pub spans: Vec<(usize, usize)>,
    pub sentences: Vec<std::ops::Range<usize>>,
    pub sentence_of_token: Vec<Option<usize>>,
}

impl AnswerTokens {
    pub fn displayed(&self) -> DisplayedAnswer {
        let raw = &self.raw;
        let lead = raw.len() - raw.trim_start().len();
        let text = raw.trim().to_string();
        let spans: Vec<(usize, usize)> = self
            .spans
            .iter()
            .map(|&(s, e)| {
                (
                    s.saturating_sub(lead).min(text.len()),
                    e.saturating_sub(lead).min(text.len()),
                )
            })
            .collect();
        let sentences = split_sentences(&text);
        let sentence_of_token = spans
            .iter()
            .map(|&sp| sentence_of(&text, sp, &sentences))
            .collect();
        DisplayedAnswer {
            text,
            spans,
            sentences,
            sentence_of_token,
        }
    }
}

/// The given answer tokenized after the template's separator, or the model's generation after
/// `prompt` (stopping at the EOS, which is not kept). Errors on an empty answer.
pub fn answer_tokens<B: burn::tensor::backend::Backend>(
    inference: &Transformer<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    answer: Option<&str>,
    opts: &Options,
    passes: &mut Passes,
) -> Result<AnswerTokens> {
    let cfg = &inference.config;
    // The answer: its ids and the byte span of each id in `raw` (which may start with a separator).
    let (ids, raw, spans, generated) = match answer {
        Some(a) => {
            if a.trim().is_empty() {
                return Err(ContextError::usage("the given answer is empty"));
            }
            let s = format!("{}{}", opts.template.answer_separator, a);
            let enc = tokenizer
                .encode(s.as_str(), false)
                .map_err(|e| ContextError::usage(format!("cannot tokenize the answer: {e}")))?;
            (enc.get_ids().to_vec(), s, enc.get_offsets().to_vec(), false)
        }
        None => {
            let mut gen = opts.generation.clone();
            if gen.stop_token.is_none() {
                gen.stop_token = cfg.eos_token_id;
            }
            let mut ids = generate(inference, prompt, &gen)?;
            passes.generated_tokens = ids.len();
            if gen.stop_token.is_some() && ids.last() == gen.stop_token.as_ref() {
                ids.pop();
            }
            let (text, spans) = decode_spans(tokenizer, &ids)?;
            (ids, text, spans, true)
        }
    };
    if ids.is_empty() || raw.trim().is_empty() {
        return Err(ContextError::usage(if generated {
            "the model generated an empty answer: nothing to attribute"
        } else {
            "the given answer has no tokens"
        }));
    }
    Ok(AnswerTokens {
        ids,
        raw,
        spans,
        generated,
    })
}

/// The model's answer (greedy unless `opts.generation` samples) to `question` with `docs` in
/// the prompt, without attribution; surrounding whitespace trimmed.
pub fn generate_answer<B: burn::tensor::backend::Backend>(
    inference: &Transformer<B>,
    tokenizer: &Tokenizer,
    question: &str,
    docs: &[Document],
    opts: &Options,
) -> Result<String> {
    let (text, spans) = crate::prompt::render_prompt(&opts.template, question, docs, None)?;
    let prompt = crate::prompt::tokenize_prompt(tokenizer, &inference.config, text, spans, false)?;
    let a = answer_tokens(
        inference,
        tokenizer,
        &prompt.ids,
        None,
        opts,
        &mut Passes::default(),
    )?;
    Ok(a.raw.trim().to_string())
}

/// Attributes one answer to the documents. `model` is on an autodiff backend; inference uses
/// its inner-backend copy. Errors: no documents, empty question/answer, a prompt or prompt +
/// answer longer than the model's context.
pub fn attribute<B: AutodiffBackend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    chat: Option<&ChatTemplate>,
    req: &Request<'_>,
    opts: &Options,
) -> Result<Attribution> {
    let t0 = Instant::now();
    let cfg = &model.config;
    let pair = build_prompts(tokenizer, cfg, &opts.template, req.question, req.docs, chat)?;
    let ctx = &pair.with_docs;
    if ctx.ids.len() >= cfg.max_positions {
        return Err(ContextError::usage(format!(
            "the prompt with the documents has {} tokens; the model's context is {} positions, so no answer token fits (use fewer or shorter documents)",
            ctx.ids.len(),
            cfg.max_positions
        )));
    }
    let inference = model.valid();
    let mut passes = Passes::default();
    let tokens = answer_tokens(
        &inference,
        tokenizer,
        &ctx.ids,
        req.answer,
        opts,
        &mut passes,
    )?;
    let (answer_ids, generated) = (tokens.ids.clone(), tokens.generated);
    let t_gen = t0.elapsed().as_secs_f64();

    // CTI: two forwards.
    let t1 = Instant::now();
    let stats = token_stats(&inference, &ctx.ids, &pair.without_docs.ids, &answer_ids)?;
    passes.forwards += 2;
    let (mut selected, threshold_value) = select_tokens(&stats.kl, opts.threshold);
    let t_cti = t1.elapsed().as_secs_f64();

    let DisplayedAnswer {
        text: answer,
        spans,
        sentences,
        sentence_of_token,
    } = tokens.displayed();
    let mut fallback = Vec::new();
    if opts.sentence_fallback {
        for s in 0..sentences.len() {
            let toks: Vec<usize> = (0..answer_ids.len())
                .filter(|&t| sentence_of_token[t] == Some(s))
                .collect();
            if !toks.is_empty() && !toks.iter().any(|t| selected.contains(t)) {
                let best = *toks
                    .iter()
                    .max_by(|&&a, &&b| stats.kl[a].total_cmp(&stats.kl[b]))
                    .expect("non-empty");
                selected.push(best);
                fallback.push(best);
            }
        }
        selected.sort_unstable();
    }

    // Documents: per selected token and per sentence, by the chosen method.
    let t2 = Instant::now();
    let n_docs = req.docs.len();
    let doc_of: Vec<Option<usize>> = ctx.parts.iter().map(|p| p.doc(opts.count_titles)).collect();
    let mut tokens: Vec<TokenReport> = answer_ids
        .iter()
        .enumerate()
        .map(|(t, &id)| {
            let (s, e) = spans[t];
            TokenReport {
                index: t,
                id,
                text: tokenizer.decode(&[id], false).unwrap_or_default(),
                start: s,
                end: e,
                sentence: sentence_of_token[t],
                cti: stats.kl[t],
                selected: selected.contains(&t),
                fallback: fallback.contains(&t),
                contrast_id: stats.contrast[t],
                contrast: tokenizer
                    .decode(&[stats.contrast[t]], false)
                    .unwrap_or_default(),
                logprob_ctx: stats.lp_ctx[t],
                logprob_noctx: stats.lp_noctx[t],
                target: stats.target(t, id),
                doc_scores: None,
                doc_scores_unfiltered: None,
                top_doc: None,
            }
        })
        .collect();
    let sentence_tokens: Vec<Vec<usize>> = (0..sentences.len())
        .map(|k| {
            (0..answer_ids.len())
                .filter(|&t| sentence_of_token[t] == Some(k))
                .collect()
        })
        .collect();
    let mut accumulated = vec![0.0f32; ctx.ids.len()];
    let mut rows = opts.max_batch_rows.max(1);
    let sentence_scores: Vec<Vec<f32>> = match opts.method {
        Method::Mirage => {
            // CCI: batched input-gradient backwards.
            let targets: Vec<Target> = selected
                .iter()
                .map(|&t| Target {
                    t,
                    y: answer_ids[t],
                    contrast: stats.contrast[t],
                })
                .collect();
            let max_len = ctx.ids.len() + selected.iter().copied().max().unwrap_or(0);
            rows = rows
                .min(rows_for_budget(
                    max_len,
                    cfg.vocab_size,
                    opts.batch_budget_bytes,
                ))
                .max(1);
            let grads = contrastive_gradients(
                model,
                &ctx.ids,
                &answer_ids,
                &targets,
                rows,
                false,
                &mut passes,
            )?;
            let candidate: Vec<bool> = doc_of.iter().map(Option::is_some).collect();
            for g in &grads {
                let scores = match opts.gradient {
                    Gradient::Saliency => &g.saliency,
                    Gradient::InputXGradient => &g.input_x_grad,
                };
                let kept = filter_scores(scores, &candidate, opts.filter);
                for (a, k) in accumulated.iter_mut().zip(&kept) {
                    *a += k;
                }
                let tok = &mut tokens[g.t];
                tok.doc_scores = Some(doc_sums(&kept, &doc_of, n_docs));
                tok.doc_scores_unfiltered = Some(doc_sums(scores, &doc_of, n_docs));
            }
            // A sentence's document scores: the sum over its selected tokens.
            sentence_tokens
                .iter()
                .map(|toks| {
                    let mut sum = vec![0.0f32; n_docs];
                    for ds in toks.iter().filter_map(|&t| tokens[t].doc_scores.as_ref()) {
                        for (a, b) in sum.iter_mut().zip(ds) {
                            *a += b;
                        }
                    }
                    sum
                })
                .collect()
        }
        method => {
            // Ablations: the answer teacher-forced after prompts holding subsets of the documents.
            let ablator = Ablator {
                tokenizer,
                template: &opts.template,
                chat,
                question: req.question,
                docs: req.docs,
            };
            rows = rows
                .min(rows_for_budget(
                    ctx.ids.len() + answer_ids.len(),
                    cfg.vocab_size,
                    opts.batch_budget_bytes,
                ))
                .max(1);
            let masks = ablation::masks_for(method, n_docs);
            let lp = ablator.answer_logprobs(&inference, &masks, &answer_ids, rows, &mut passes)?;
            // Targets: the sentences, then each selected token alone.
            let mut groups = sentence_tokens.clone();
            groups.extend(selected.iter().map(|&t| vec![t]));
            let mut all = ablation::scores(method, &masks, &lp, &stats.lp_ctx, &groups);
            let per_token = all.split_off(sentences.len());
            for (&t, ds) in selected.iter().zip(per_token) {
                tokens[t].doc_scores = Some(ds);
            }
            all
        }
    };
    for tok in tokens.iter_mut() {
        if let Some(ds) = &tok.doc_scores {
            tok.top_doc = citations(ds, 1, 0.0).first().map(|i| i + 1);
        }
    }
    let t_cci = t2.elapsed().as_secs_f64();
    let mut sentence_reports = Vec::with_capacity(sentences.len());
    for (k, r) in sentences.iter().enumerate() {
        let scores = sentence_scores[k].clone();
        let cites = citations(&scores, opts.max_citations, opts.min_share);
        sentence_reports.push(SentenceReport {
            index: k,
            text: answer[r.clone()].to_string(),
            start: r.start,
            end: r.end,
            tokens: tokens
                .iter()
                .filter(|t| t.sentence == Some(k))
                .map(|t| t.index)
                .collect(),
            citations: cites.iter().map(|i| i + 1).collect(),
            doc_scores: scores,
        });
    }
    let documents = req
        .docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let body = &ctx.docs[i].body;
            let highlights = (0..ctx.ids.len())
                .filter(|&j| doc_of[j] == Some(i) && accumulated[j] > 0.0)
                .map(|j| {
                    let (s, e) = ctx.offsets[j];
                    DocHighlight {
                        start: s.clamp(body.start, body.end) - body.start,
                        end: e.clamp(body.start, body.end) - body.start,
                        score: accumulated[j],
                    }
                })
                .filter(|h| h.end > h.start)
                .collect();
            DocReport {
                index: i + 1,
                id: d.id.clone(),
                title: d.title.clone(),
                text: d.text.clone(),
                cited: sentence_reports
                    .iter()
                    .any(|s| s.citations.contains(&(i + 1))),
                highlights,
            }
        })
        .collect();
    let answer_with_citations = crate::report::with_citations(&answer, &sentence_reports);
    Ok(Attribution {
        question: req.question.to_string(),
        answer,
        answer_with_citations,
        generated,
        prompt_tokens: ctx.ids.len(),
        contextless_prompt_tokens: pair.without_docs.ids.len(),
        documents,
        sentences: sentence_reports,
        tokens,
        settings: Settings {
            kl_direction: "KL(P_noctx || P_ctx), nats, full vocabulary".into(),
            threshold: opts.threshold,
            threshold_value,
            filter: opts.filter,
            method: opts.method,
            gradient: opts.gradient,
            contrast: "argmax of P_noctx".into(),
            count_titles: opts.count_titles,
            max_citations: opts.max_citations,
            min_share: opts.min_share,
            sentence_fallback: opts.sentence_fallback,
            chat_template: chat.is_some(),
            batch_rows: rows,
        },
        passes,
        timings: Timings {
            generate_s: t_gen,
            cti_s: t_cti,
            cci_s: t_cci,
            total_s: t0.elapsed().as_secs_f64(),
        },
    })
}
