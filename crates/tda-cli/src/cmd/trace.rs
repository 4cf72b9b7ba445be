//! `tda trace`: which training documents made the model say this (EK-FAC influence).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tda_curvature::{Damping, Normalization, NormalizeOptions, Rank};
use tda_model::device::DeviceKind;
use tda_trace::fit::load_checked;
use tda_trace::{model_fingerprint, Measurement, Query, RelabelRow, TraceOptions};

use crate::output::{bar, print_json};
use crate::with_backend;

pub fn parse_damping(s: &str) -> Result<Damping, String> {
    if s == "heuristic" {
        return Ok(Damping::default());
    }
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(Damping::Absolute(v)),
        _ => Err(format!(
            "damping {s:?}: `heuristic` or a non-negative number"
        )),
    }
}

pub fn parse_rank(s: &str) -> Result<Rank, String> {
    if s == "full" {
        return Ok(Rank::Full);
    }
    match s.parse::<usize>() {
        Ok(r) if r > 0 => Ok(Rank::Truncated(r)),
        _ => Err(format!("rank {s:?}: `full` or a positive integer")),
    }
}

/// `--top-k K` or `all` (a newtype: clap reads a bare `Option` field as "flag may be absent").
#[derive(Clone, Copy, Debug)]
pub struct TopKArg(pub Option<usize>);

pub fn parse_top_k(s: &str) -> Result<TopKArg, String> {
    if s == "all" {
        return Ok(TopKArg(None));
    }
    s.parse::<usize>()
        .map(|k| TopKArg(Some(k)))
        .map_err(|_| format!("top-k {s:?}: `all` or an integer"))
}

fn parse_norm(s: &str) -> Result<Normalization, String> {
    match s {
        "none" => Ok(Normalization::None),
        "train-grad-norm" => Ok(Normalization::TrainGradNorm),
        "relatif" => Ok(Normalization::RelatIF),
        "cosine" => Ok(Normalization::Cosine),
        _ => Err(format!(
            "normalization {s:?}: none, train-grad-norm, relatif or cosine"
        )),
    }
}

/// What `--relabel` does not use: the corpus, the ranking and its breakdowns, the parquet output.
const RELABEL_CONFLICTS: [&str; 17] = [
    "corpus",
    "index",
    "candidates",
    "top_k",
    "normalization",
    "per_token_count",
    "opponents",
    "per_token",
    "per_layer",
    "out",
    "max_windows",
    "max_len",
    "text_column",
    "id_column",
    "text_mode",
    "max_doc_mib",
    "strict",
];

#[derive(Args)]
#[command(
    after_help = "Score: I(z → f) = −∇f(θ)ᵀ (G + λI)⁻¹ ∇L(z, θ) summed over the tracked layers, with G the EK-FAC Gauss-Newton fitted by `tda fit`, L the summed next-token loss of the candidate window and f the measurement. SIGN: a POSITIVE score means that up-weighting the candidate in training RAISES f (for --measurement logprob: makes the completion more likely; for loss: raises the loss). Results are the most positive candidates (proponents) unless --opponents.

All queries are scored in one pass over the candidates (windows of --max-len tokens of every corpus document, or of the documents returned by the prefilter --index). Per-token scores (--per-token) sum to the window's score; per-layer scores (--per-layer) sum to it too.

Examples:
  tda trace --model runs/demo/model --factors runs/demo/factors --corpus runs/demo/corpus.jsonl --prompt \"Mira Tolven was born in\" --completion \" Kestrel Bay\"
  tda trace --model M --factors F --corpus C.jsonl --queries q.jsonl --top-k 20 --per-token --per-layer --json
  tda trace --model M --factors F --corpus C.jsonl --index indexes/C --candidates 10000 --queries q.jsonl --out scores.parquet
  tda trace --model M --factors F --queries q.jsonl --relabel rows.jsonl --json   # rows: {\"prompt\",\"original\",\"replacement\"}"
)]
pub struct TraceArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Folder written by `tda fit`.
    #[arg(long)]
    pub factors: PathBuf,
    /// Corpus (jsonl, txt, parquet); the candidates.
    #[arg(long, required_unless_present = "relabel")]
    pub corpus: Option<PathBuf>,
    #[command(flatten)]
    pub read: super::CorpusArgs,
    /// One query: the prompt ...
    #[arg(long, requires = "completion", conflicts_with = "queries")]
    pub prompt: Option<String>,
    /// ... and the completion whose measurement is attributed.
    #[arg(long, requires = "prompt")]
    pub completion: Option<String>,
    /// Queries as jsonl: {"prompt": ..., "completion": ..., "id": optional}.
    #[arg(long, required_unless_present = "prompt")]
    pub queries: Option<PathBuf>,
    /// Prefilter index (`tda index`): only the top --candidates documents per query are scored.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Documents retrieved per query by the prefilter.
    #[arg(long, default_value_t = 10_000, requires = "index")]
    pub candidates: usize,
    /// logprob (log p(completion | prompt)), loss or margin.
    #[arg(long, default_value = "logprob")]
    pub measurement: Measurement,
    /// `heuristic` (0.1 × mean Λ per layer) or an absolute λ.
    #[arg(long, default_value = "heuristic", value_parser = parse_damping, allow_hyphen_values = true)]
    pub damping: Damping,
    /// Rank of each preconditioned query per layer, or `full`.
    #[arg(long, default_value = "32", value_parser = parse_rank)]
    pub query_rank: Rank,
    /// Results per query, or `all`.
    #[arg(long, default_value = "10", value_parser = parse_top_k)]
    pub top_k: TopKArg,
    /// none, train-grad-norm (÷ ‖∇L(z)‖²), relatif (÷ sqrt(self-influence)) or cosine.
    #[arg(long, default_value = "none", value_parser = parse_norm)]
    pub normalization: Normalization,
    /// Also divide by the candidate's number of tokens.
    #[arg(long)]
    pub per_token_count: bool,
    /// Keep the most negative scores instead.
    #[arg(long)]
    pub opponents: bool,
    /// Per-token scores of each result.
    #[arg(long)]
    pub per_token: bool,
    /// Per-layer scores of each result.
    #[arg(long)]
    pub per_layer: bool,
    /// Relabeling influence of the rows of this jsonl instead of scoring the corpus (prints one
    /// score per row and query: no ranking, no corpus, no parquet).
    #[arg(long, conflicts_with_all = RELABEL_CONFLICTS)]
    pub relabel: Option<PathBuf>,
    #[command(flatten)]
    pub windows: super::WindowArgs,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// JSON to stdout.
    #[arg(long)]
    pub json: bool,
    /// Parquet output file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: &TraceArgs) -> anyhow::Result<()> {
    if let Some(out) = &a.out {
        crate::output::check_out(out, tda_io::Output::File)?;
    }
    let queries: Vec<Query> = match (&a.prompt, &a.completion, &a.queries) {
        (Some(p), Some(c), _) => vec![Query {
            id: "q0".into(),
            prompt: p.clone(),
            completion: c.clone(),
        }],
        (_, _, Some(f)) => tda_trace::read_rows(f, "queries")?,
        _ => anyhow::bail!("give --prompt and --completion, or --queries FILE.jsonl"),
    };
    if queries.is_empty() {
        anyhow::bail!("no queries");
    }
    let opts = TraceOptions {
        measurement: a.measurement,
        damping: a.damping,
        rank: a.query_rank,
        top_k: a.top_k.0,
        normalize: NormalizeOptions {
            method: a.normalization,
            per_token_count: a.per_token_count,
        },
        opponents: a.opponents,
        per_token: a.per_token,
        per_layer: a.per_layer,
        windows: a.windows.options(),
    };
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder::<AD>(&a.model, &device)?;
        let fp = model_fingerprint(&a.model)?;
        let factors = load_checked(&a.factors, &fp, &m.model.linear_layers())?;
        if let Some(rows_path) = &a.relabel {
            let rows: Vec<RelabelRow> = tda_trace::read_rows(rows_path, "relabel rows")?;
            let s = tda_trace::relabel(&m.model, &m.tokenizer, &factors, &queries, &rows, &opts)?;
            let out: Vec<serde_json::Value> = rows
                .iter()
                .zip(&s)
                .enumerate()
                .map(|(i, (r, sc))| {
                    serde_json::json!({
                        "id": if r.id.is_empty() { format!("r{i}") } else { r.id.clone() },
                        "prompt": r.prompt, "original": r.original, "replacement": r.replacement,
                        "scores": queries.iter().zip(sc).map(|(q, s)| serde_json::json!({"query": q.id, "score": s})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            if a.json {
                return print_json(&out);
            }
            for (r, sc) in rows.iter().zip(&s) {
                println!(
                    "{:?} → {:?}: {}",
                    r.original,
                    r.replacement,
                    sc.iter()
                        .map(|x| format!("{x:+.4e}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            return Ok(());
        }
        let corpus = a.corpus.clone().context("--corpus is required")?;
        let prefilter = a
            .index
            .as_ref()
            .map(|dir| tda_trace::Prefilter::bm25(dir, a.candidates));
        let read = a.read.read_options();
        let (source, retrieved) =
            tda_trace::candidate_source(&corpus, &read, prefilter.as_ref(), &queries)?;
        if let (Some(p), Some(r)) = (&prefilter, &retrieved) {
            eprintln!(
                "prefilter: {} candidate documents from {}",
                r.documents,
                p.index.display()
            );
        }
        let pb = bar(
            source.total_bytes().unwrap_or(0),
            "scoring [{bar:30}] {bytes}/{total_bytes} {elapsed} {msg}",
        );
        let out = tda_trace::trace(
            &m.model,
            &m.tokenizer,
            &factors,
            &queries,
            &source,
            &opts,
            &mut |n, bytes| {
                pb.set_position(bytes);
                pb.set_message(format!("{n} windows"));
            },
        )?;
        pb.finish_and_clear();
        eprintln!("corpus {}", out.report.corpus);
        if let Some(p) = &a.out {
            tda_trace::write_parquet(&out, p)?;
            eprintln!("wrote {}", p.display());
        }
        if a.json {
            return print_json(&out);
        }
        for q in &out.queries {
            println!(
                "query {}: {:?} → {:?} ({:?} = {:.4})",
                q.id, q.prompt, q.completion, out.measurement, q.value
            );
            for r in &q.results {
                println!(
                    "  {:>3}. {:+.4e}  {}#{}  {}",
                    r.rank,
                    r.score,
                    r.doc_id,
                    r.window,
                    r.text.chars().take(100).collect::<String>()
                );
                if let Some(l) = &r.per_layer {
                    for s in l {
                        println!("         {:+.3e}  {}", s.score, s.layer);
                    }
                }
                if let Some(t) = &r.per_token {
                    let best = t
                        .iter()
                        .max_by(|x, y| x.score.abs().total_cmp(&y.score.abs()));
                    if let Some(b) = best {
                        println!("         strongest token {:?} ({:+.3e})", b.token, b.score);
                    }
                }
            }
        }
        eprintln!(
            "{} candidates ({} tokens) × {} queries in {:.1}s: {:.0} candidate tokens/s (forward+backward {:.1}s, copies {:.1}s, contractions {:.1}s)",
            out.report.candidates, out.report.candidate_tokens, out.report.queries, out.report.total_s,
            out.report.candidate_tokens_per_s, out.report.model_s, out.report.copy_s, out.report.contraction_s
        );
        Ok(())
    })
}
