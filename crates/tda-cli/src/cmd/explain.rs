//! `tda explain`: one generation, token by token — from the prompt's documents, the question, the
//! training data (traced with EK-FAC), or neither — and which layers carry it (crate `tda-explain`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tda_context::read_documents;
use tda_curvature::Damping;
use tda_explain::{explain, ExplainOptions, Memory, Route};
use tda_model::device::DeviceKind;
use tda_trace::fit::load_checked;
use tda_trace::{model_fingerprint, Prefilter, TraceOptions};

use super::cite::ContextArgs;
use super::trace::{parse_damping, parse_top_k, TopKArg};
use super::{CorpusArgs, PairArgs, WindowArgs};
use crate::with_backend;

#[derive(Args)]
#[command(after_help = "Examples:
  tda explain --model tests/fixtures/explain --docs docs.jsonl --question \"Where was Zek Bo born and what does Zek Bo work as?\" \\
      --factors F --corpus train.jsonl --index IDX --html explain.html
  tda explain --model M --question Q --answer \"Zek Bo was born in Tarn.\" --factors F --corpus train.jsonl --json
  tda explain --model M --docs docs.jsonl --question Q --method loo          # context and layers only, no trace
  tda explain --model M --docs docs.jsonl --question Q --factors F --corpus sft.jsonl --completion-only --index IDX
                                          # fine-tuning pairs, traced with the loss on their completions

Each answer token gets one route:
  context   context-sensitive (KL(P_noctx || P_ctx) above the CTI threshold, see `tda cite --help`)
            and driven by a prompt document (by --method: mirage, context-cite or loo);
  question  a word copied from the question;
  memory    said without the documents with p >= --memory-min-prob: consecutive memory tokens
            are traced together (log p(span | prompt, answer before it)) into --corpus with the
            EK-FAC --factors, through the BM25 prefilter when --index is given;
  neither   the rest.
Layers: for memory tokens the per-block split of the top training documents' influence; for
context tokens the gradient x output of each block's attention and MLP writes to the residual
stream (the derivative of log p(token) when that write is scaled by 1 + eps).")]
pub struct ExplainArgs {
    /// HF model folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The question (or instruction) of the prompt.
    #[arg(long)]
    pub question: String,
    /// Documents put in the prompt: .jsonl or .parquet (none: the prompt has no documents).
    #[arg(long)]
    pub docs: Option<PathBuf>,
    /// Explain this answer instead of generating one.
    #[arg(long)]
    pub answer: Option<String>,
    /// Factors of the model (`tda fit`): trace the memory tokens into --corpus.
    #[arg(long, requires = "corpus")]
    pub factors: Option<PathBuf>,
    /// The training corpus the memory tokens are traced into (needs --factors).
    #[arg(long, requires = "factors")]
    pub corpus: Option<PathBuf>,
    /// Prefilter index of --corpus (`tda index`): only the top --candidates documents per span are scored.
    #[arg(long, requires = "factors")]
    pub index: Option<PathBuf>,
    #[arg(long, default_value_t = 200, requires = "index", value_parser = clap::value_parser!(u32).range(1..))]
    pub candidates: u32,
    /// Training documents kept per memory span (a number or `all`).
    #[arg(long, default_value = "5", value_parser = parse_top_k, requires = "factors")]
    pub top_k: TopKArg,
    /// Damping λ: `heuristic` (0.1 × mean eigenvalue per layer) or a number.
    #[arg(long, default_value = "heuristic", value_parser = parse_damping, requires = "factors")]
    pub damping: Damping,
    /// Scores of the training documents: none, train-grad-norm (÷ ‖∇L(z)‖²), relatif (÷
    /// sqrt(self-influence)) or cosine (see `tda trace --help`).
    #[arg(long, default_value = "none", value_parser = super::parse::parse_norm, requires = "factors")]
    pub normalization: tda_curvature::Normalization,
    /// Memory route: p(token | prompt without documents) at least this.
    #[arg(long, default_value_t = 0.5)]
    pub memory_min_prob: f32,
    /// Print the JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file (atomically).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the self-contained HTML page to this file (atomically).
    #[arg(long)]
    pub html: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    #[command(flatten)]
    pub ctx: ContextArgs,
    #[command(flatten)]
    pub read: CorpusArgs,
    #[command(flatten)]
    pub pairs: PairArgs,
    #[command(flatten)]
    pub windows: WindowArgs,
}

pub fn run(a: &ExplainArgs) -> anyhow::Result<()> {
    if a.answer.is_some() && a.ctx.generation_given() {
        anyhow::bail!("--answer is explained as given: the generation flags (--max-new-tokens, --temperature, --top-p, --seed) are refused with it");
    }
    let opts = ExplainOptions {
        cite: super::cite::options(&a.ctx)?,
        memory_min_prob: a.memory_min_prob,
    };
    for out in [&a.out, &a.html].into_iter().flatten() {
        crate::output::check_out(out, tda_io::Output::File)?;
    }
    let docs = match &a.docs {
        Some(p) => read_documents(p)?,
        None => Vec::new(),
    };
    let read = a.read.read_options();
    let prefilter = a
        .index
        .as_ref()
        .map(|dir| Prefilter::bm25(dir, a.candidates as usize));
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder::<AD>(&a.model, &device)?;
        let chat = a.ctx.chat_template(&a.model)?;
        let factors = match &a.factors {
            Some(dir) => Some(load_checked(
                dir,
                &model_fingerprint(&a.model)?,
                &m.model.linear_layers(),
            )?),
            None => None,
        };
        let memory = factors.as_ref().map(|f| Memory {
            factors: f,
            corpus: a
                .corpus
                .as_deref()
                .expect("clap requires --corpus with --factors"),
            read: &read,
            kind: a.pairs.kind(),
            prefilter: prefilter.as_ref(),
            trace: TraceOptions {
                damping: a.damping,
                top_k: a.top_k.0,
                windows: a.windows.options(),
                normalize: tda_curvature::NormalizeOptions {
                    method: a.normalization,
                    per_token_count: false,
                },
                ..TraceOptions::default()
            },
        });
        let pb = crate::output::bar(0, "tracing {elapsed} {msg}");
        let e = explain(
            &m.model,
            &m.tokenizer,
            chat.as_ref(),
            &a.question,
            &docs,
            a.answer.as_deref(),
            &opts,
            memory,
            &mut |n, _| pb.set_message(format!("{n} windows")),
        )
        .context("explain")?;
        pb.finish_and_clear();
        if let Some(p) = &a.out {
            tda_io::write_file(p, e.to_json().as_bytes())?;
        }
        if let Some(p) = &a.html {
            tda_io::write_file(p, e.to_html().as_bytes())?;
        }
        if a.json {
            println!("{}", e.to_json());
            return Ok(());
        }
        println!("{}", e.answer);
        for t in &e.tokens {
            let what = match t.route {
                Route::Context => format!(
                    "context {}",
                    t.documents
                        .iter()
                        .map(|d| format!("[{}] {}", d.doc, d.id))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Route::Memory => match t.span.and_then(|s| e.memory_spans.get(s)) {
                    Some(sp) if !sp.training.is_empty() => format!(
                        "memory: {}",
                        sp.training
                            .iter()
                            .take(3)
                            .map(|d| d.doc_id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ => "memory (not traced: give --factors and --corpus)".into(),
                },
                Route::Question => "question".into(),
                Route::Neither => "neither".into(),
            };
            let top = t
                .layers
                .iter()
                .max_by(|x, y| x.share.total_cmp(&y.share))
                .map_or(String::new(), |l| {
                    format!("  (mostly {}, {:.0} %)", l.layer, l.share * 100.0)
                });
            println!(
                "  {:>3} {:<16} {what}{top}",
                t.index,
                format!("{:?}", t.text)
            );
        }
        eprintln!("{:.2} s", e.timings.total_s);
        Ok(())
    })
}
