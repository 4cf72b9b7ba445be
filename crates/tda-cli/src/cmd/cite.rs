//! `tda cite`: which retrieved document supports each sentence of an answer (MIRAGE-style
//! context attribution, crate `tda-context`).

use std::path::PathBuf;

use clap::Args;
use tda_context::{
    attribute, read_documents, Attribution, CciFilter, ChatTemplate, Document, Gradient, Method,
    Options, Request, Threshold,
};
use tda_model::device::DeviceKind;

use crate::with_backend;

#[derive(Args)]
#[command(after_help = "Examples:
  tda cite --model tests/fixtures/rag --docs docs.jsonl --question \"Where was Mira Tolven born?\"
  tda cite --model M --docs docs.jsonl --question Q --answer \"Mira was born in Tarn.\" --html cite.html
  tda cite --model M --docs docs.parquet --question Q --cti-top-k 5 --cci-top-k 3 --json
  tda cite --model M --requests questions.jsonl --out reports.jsonl   # one load, many answers
  tda cite --model tests/fixtures/rag --docs d.jsonl --question Q \\
      --prompt-template 'Question: {question}\\n\\n{context}\\nAnswer:' --doc-template 'Document [{i}]: {text}\\n'

Documents: jsonl with {\"id\", \"title\" (optional), \"text\"} per line, or parquet with those columns.
Methods (--method; context-cite is the default: on the planted benchmark it has the best
citation F1 and faithfulness, see benches/results/cite.md):
  mirage        answer tokens whose next-token distribution changes most when the documents are
                removed (KL(P_noctx || P_ctx) >= mean + k*std) are traced by the gradient of a
                contrastive target to the document tokens, summed per answer sentence
                (2 forwards + 1 batched backward).
  context-cite  the answer is scored after --masks prompts that keep each document with
                probability 1/2; a LASSO per sentence (and per context-sensitive token) on the
                logit-probability gives each document's weight (masks + 2 forwards).
  loo           exact leave-one-out: a document's score is the drop of the sentence's
                log-probability when it alone is removed (n + 2 forwards).
At most --max-citations documents with a positive score are cited per sentence.")]
pub struct CiteArgs {
    /// HF model folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, required_unless_present = "requests")]
    pub question: Option<String>,
    /// Retrieved documents: .jsonl or .parquet.
    #[arg(long, required_unless_present = "requests")]
    pub docs: Option<PathBuf>,
    /// Attribute this answer instead of generating one (the generation flags are then refused).
    #[arg(long)]
    pub answer: Option<String>,
    /// Many questions in one run (the model is loaded once): a .jsonl file with one request per
    /// line, {"question", "docs": [{"id"?, "title"?, "text"}], "answer"?}. Writes one JSON report
    /// per line, in input order (stdout with --json, or --out).
    #[arg(long, conflicts_with_all = ["question", "docs", "answer", "html"])]
    pub requests: Option<PathBuf>,
    /// Print the JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file (atomically).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a self-contained HTML report to this file (atomically).
    #[arg(long)]
    pub html: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    #[command(flatten)]
    pub ctx: ContextArgs,
}

/// The context-attribution settings `tda cite` and `tda explain` share.
#[derive(Args)]
pub struct ContextArgs {
    /// CTI threshold: mean + k·std of the answer's KL scores.
    #[arg(long, default_value_t = 1.0)]
    pub cti_k: f32,
    /// CTI threshold: a fixed KL value in nats (instead of --cti-k).
    #[arg(long, conflicts_with_all = ["cti_k", "cti_top_k"])]
    pub cti_fixed: Option<f32>,
    /// CTI: the k most context-sensitive tokens (instead of --cti-k).
    #[arg(long, conflicts_with = "cti_k")]
    pub cti_top_k: Option<usize>,
    /// CCI filter: keep document tokens in the top P % of each token's score range.
    #[arg(long, default_value_t = 5.0)]
    pub cci_top_pct: f32,
    /// CCI filter: keep the k best document tokens instead.
    #[arg(long, conflicts_with = "cci_top_pct")]
    pub cci_top_k: Option<usize>,
    /// Attribution method: context-cite, mirage or loo (see `tda cite --help`).
    #[arg(long, default_value = "context-cite")]
    pub method: String,
    /// MIRAGE's gradient reduction: saliency (‖∂f/∂e‖) or input-x-gradient (‖e ⊙ ∂f/∂e‖).
    #[arg(long)]
    pub gradient: Option<String>,
    /// ContextCite: number of random document ablations [default: 64].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..))]
    pub masks: Option<u32>,
    /// ContextCite: seed of the ablation masks [default: 0].
    #[arg(long)]
    pub mask_seed: Option<u64>,
    /// ContextCite: LASSO penalty α [default: 0.01].
    #[arg(long, allow_hyphen_values = true)]
    pub lasso_alpha: Option<f32>,
    /// Count title tokens for their document (headers never count).
    #[arg(long)]
    pub count_titles: bool,
    #[arg(long, default_value_t = 3)]
    pub max_citations: usize,
    /// A cited document needs at least this share of the sentence's positive document mass
    /// [default: 0 for mirage (as the paper), 0.2 for context-cite and loo].
    #[arg(long)]
    pub min_share: Option<f32>,
    /// Give a sentence without context-sensitive token its highest-KL token.
    #[arg(long)]
    pub sentence_fallback: bool,
    /// Use the plain prompt template even if the model has a chat template.
    #[arg(long)]
    pub no_chat_template: bool,
    /// Instruction put before the question (default: MIRAGE's ELI5 instruction).
    #[arg(long)]
    pub instruction: Option<String>,
    /// Prompt template with {instruction}, {question}, {context}; `\n` is read as a newline.
    /// Default: "{instruction}\n\nQuestion: {question}\n\n{context}\nAnswer:" (MIRAGE).
    #[arg(long)]
    pub prompt_template: Option<String>,
    /// Document template with {i}, {id}, {title}, {text}; `\n` is read as a newline.
    /// Default: "Document [{i}](Title: {title}): {text}\n", without "(Title: …)" for untitled documents.
    #[arg(long)]
    pub doc_template: Option<String>,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature; 0 = greedy (then --top-p and --seed are refused).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub temperature: f32,
    /// Nucleus sampling mass (sampling only) [default: 1.0].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Sampling seed (sampling only) [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// At most this many answer tokens per input-gradient backward.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_rows: u32,
}

/// The library options these arguments ask for.
pub fn options(a: &ContextArgs) -> anyhow::Result<Options> {
    let threshold = match (a.cti_fixed, a.cti_top_k) {
        (Some(_), Some(_)) => anyhow::bail!("give at most one of --cti-fixed and --cti-top-k"),
        (Some(x), None) => Threshold::Fixed(x),
        (None, Some(k)) => Threshold::TopK(k),
        (None, None) => Threshold::MeanStd(a.cti_k),
    };
    let mut o = Options {
        threshold,
        ..Options::default()
    };
    o.filter = match a.cci_top_k {
        Some(k) => CciFilter::TopK(k),
        None if a.cci_top_pct > 0.0 && a.cci_top_pct <= 100.0 => {
            CciFilter::TopRangePct(a.cci_top_pct)
        }
        None => anyhow::bail!("--cci-top-pct must be in (0, 100]"),
    };
    o.method = match a.method.as_str() {
        "mirage" => Method::Mirage,
        "context-cite" | "contextcite" => {
            let alpha = a.lasso_alpha.unwrap_or(0.01);
            if !(alpha.is_finite() && alpha >= 0.0) {
                anyhow::bail!("--lasso-alpha must be a number ≥ 0, got {alpha}");
            }
            Method::ContextCite {
                masks: a.masks.map_or(64, |m| m as usize),
                seed: a.mask_seed.unwrap_or(0),
                alpha,
            }
        }
        "loo" | "leave-one-out" => Method::LeaveOneOut,
        m @ ("saliency" | "input-x-gradient") => anyhow::bail!(
            "--method {m} is a gradient reduction: use --method mirage --gradient {m}"
        ),
        m => anyhow::bail!("unknown --method \"{m}\" (mirage, context-cite, loo)"),
    };
    if !matches!(o.method, Method::ContextCite { .. }) {
        for (flag, given) in [
            ("--masks", a.masks.is_some()),
            ("--mask-seed", a.mask_seed.is_some()),
            ("--lasso-alpha", a.lasso_alpha.is_some()),
        ] {
            if given {
                anyhow::bail!(
                    "{flag} is a setting of --method context-cite, not of --method {}",
                    a.method
                );
            }
        }
    }
    if o.method != Method::Mirage && (a.cci_top_k.is_some() || a.count_titles) {
        anyhow::bail!(
            "--cci-top-k and --count-titles are settings of --method mirage, not of --method {}",
            a.method
        );
    }
    o.gradient = match (a.gradient.as_deref(), o.method) {
        (None, _) => Gradient::Saliency,
        (Some(_), m) if m != Method::Mirage => {
            anyhow::bail!(
                "--gradient is a setting of --method mirage, not of --method {}",
                a.method
            )
        }
        (Some("saliency"), _) => Gradient::Saliency,
        (Some("input-x-gradient" | "ixg"), _) => Gradient::InputXGradient,
        (Some(g), _) => anyhow::bail!("unknown --gradient \"{g}\" (saliency, input-x-gradient)"),
    };
    if a.max_citations == 0 {
        anyhow::bail!("--max-citations must be at least 1");
    }
    o.count_titles = a.count_titles;
    o.max_citations = a.max_citations;
    o.min_share = a.min_share.unwrap_or(o.method.default_min_share());
    if !(0.0..=1.0).contains(&o.min_share) {
        anyhow::bail!("--min-share must be in [0, 1], got {}", o.min_share);
    }
    o.sentence_fallback = a.sentence_fallback;
    o.max_batch_rows = a.batch_rows as usize;
    let unescape = |s: &str| s.replace("\\n", "\n");
    if let Some(i) = &a.instruction {
        o.template.instruction = unescape(i);
    }
    if let Some(p) = &a.prompt_template {
        o.template.prompt = unescape(p);
    }
    if let Some(d) = &a.doc_template {
        o.template.doc = unescape(d);
        o.template.doc_untitled = unescape(d);
    }
    o.generation.max_new_tokens = a.max_new_tokens.unwrap_or(128);
    let (temperature, top_p, seed) = super::infer::sampling(a.temperature, a.top_p, a.seed)?;
    o.generation.temperature = temperature;
    o.generation.top_p = top_p;
    o.generation.seed = seed;
    Ok(o)
}

pub fn run(a: &CiteArgs) -> anyhow::Result<()> {
    if a.answer.is_some() && a.ctx.generation_given() {
        anyhow::bail!("--answer is attributed as given: the generation flags (--max-new-tokens, --temperature, --top-p, --seed) are refused with it");
    }
    let opts = options(&a.ctx)?;
    for out in [&a.out, &a.html].into_iter().flatten() {
        crate::output::check_out(out, tda_io::Output::File)?;
    }
    if let Some(path) = &a.requests {
        return run_requests(a, path, &opts);
    }
    let (Some(question), Some(docs)) = (&a.question, &a.docs) else {
        anyhow::bail!("--question and --docs are required (or --requests FILE)");
    };
    let docs = read_documents(docs)?;
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder::<AD>(&a.model, &device)?;
        let chat = a.ctx.chat_template(&a.model)?;
        let req = Request {
            question,
            docs: &docs,
            answer: a.answer.as_deref(),
        };
        let report = attribute(&m.model, &m.tokenizer, chat.as_ref(), &req, &opts)?;
        if let Some(p) = &a.out {
            tda_io::write_file(p, report.to_json().as_bytes())?;
        }
        if let Some(p) = &a.html {
            tda_io::write_file(p, report.to_html().as_bytes())?;
        }
        if a.json {
            println!("{}", report.to_json());
        } else {
            print_text(&report, &docs);
        }
        Ok(())
    })
}

/// The answer with inline citations, each sentence's cited documents, and a summary on stderr.
fn print_text(report: &Attribution, docs: &[Document]) {
    println!("{}", report.answer_with_citations);
    println!();
    for s in &report.sentences {
        let cites: Vec<String> = s
            .citations
            .iter()
            .map(|&c| format!("[{c}] {}", docs[c - 1].id))
            .collect();
        println!(
            "sentence {}: {}",
            s.index + 1,
            if cites.is_empty() {
                "no citation".to_string()
            } else {
                cites.join(", ")
            }
        );
    }
    let p = &report.passes;
    eprintln!(
        "{}: {} context-sensitive of {} answer tokens (threshold {:.3} nats); {} forwards + {} backwards ({} rows); {:.2} s",
        report.settings.method.name(),
        report.tokens.iter().filter(|t| t.selected).count(),
        report.tokens.len(),
        report.settings.threshold_value,
        p.forwards,
        p.backwards,
        p.gradient_rows,
        report.timings.total_s
    );
}

/// One line of a `--requests` file. Unknown fields are ignored, so the planted sets' lines
/// (`tda-eval --example rag_jsonl`) are requests as they are.
#[derive(serde::Deserialize)]
struct RequestLine {
    question: String,
    docs: Vec<DocLine>,
    #[serde(default)]
    answer: Option<String>,
}

#[derive(serde::Deserialize)]
struct DocLine {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    text: String,
}

/// A request read from a file, with its 1-based line number for errors.
struct Owned {
    line: usize,
    question: String,
    docs: Vec<Document>,
    answer: Option<String>,
}

/// Reads a `--requests` file: every line is checked (blank lines skipped) before any work, so a
/// bad line fails the run naming `file:line` and nothing is written.
fn read_requests(path: &std::path::Path) -> anyhow::Result<Vec<Owned>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let r: RequestLine = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}: not a request ({e})", at()))?;
        if r.docs.is_empty() {
            anyhow::bail!("{}: no documents", at());
        }
        let mut docs = Vec::with_capacity(r.docs.len());
        for (k, d) in r.docs.into_iter().enumerate() {
            if d.text.trim().is_empty() {
                anyhow::bail!("{}: document {} has an empty text", at(), k + 1);
            }
            let id = d.id.unwrap_or_else(|| (k + 1).to_string());
            docs.push(Document::new(id, d.title.as_deref(), d.text));
        }
        out.push(Owned {
            line: i + 1,
            question: r.question,
            docs,
            answer: r.answer,
        });
    }
    if out.is_empty() {
        anyhow::bail!("{}: no requests", path.display());
    }
    Ok(out)
}

/// `tda cite --requests`: one model load, one report per request (JSON lines, input order).
fn run_requests(a: &CiteArgs, path: &std::path::Path, opts: &Options) -> anyhow::Result<()> {
    let requests = read_requests(path)?;
    if a.ctx.generation_given() {
        if let Some(r) = requests.iter().find(|r| r.answer.is_some()) {
            anyhow::bail!("{}:{}: the answer is attributed as given: the generation flags (--max-new-tokens, --temperature, --top-p, --seed) are refused with it", path.display(), r.line);
        }
    }
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder::<AD>(&a.model, &device)?;
        let chat = a.ctx.chat_template(&a.model)?;
        let pb = crate::output::bar(requests.len() as u64, "cite [{bar:30}] {pos}/{len} ({eta})");
        // The JSON lines for --out, written once all requests are done.
        let mut lines = String::new();
        for r in &requests {
            let req = Request {
                question: &r.question,
                docs: &r.docs,
                answer: r.answer.as_deref(),
            };
            let report = attribute(&m.model, &m.tokenizer, chat.as_ref(), &req, opts)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), r.line))?;
            let line = serde_json::to_string(&report)?;
            if a.json {
                println!("{line}");
            } else if a.out.is_none() {
                print_text(&report, &r.docs);
            }
            if a.out.is_some() {
                lines.push_str(&line);
                lines.push('\n');
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        if let Some(p) = &a.out {
            tda_io::write_file(p, lines.as_bytes())?;
        }
        Ok(())
    })
}

impl ContextArgs {
    /// Whether a generation flag was given (they are refused with a given answer).
    pub fn generation_given(&self) -> bool {
        self.max_new_tokens.is_some()
            || self.temperature != 0.0
            || self.top_p.is_some()
            || self.seed.is_some()
    }

    /// The model folder's chat template, unless --no-chat-template.
    pub fn chat_template(&self, model: &std::path::Path) -> anyhow::Result<Option<ChatTemplate>> {
        Ok(if self.no_chat_template {
            None
        } else {
            ChatTemplate::from_folder(model)?
        })
    }
}
