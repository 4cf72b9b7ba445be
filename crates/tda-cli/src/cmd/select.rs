//! `tda select`: score a candidate pool against a target set and keep the best documents for
//! fine-tuning (top-N, top-%, or a token budget), records written as they were.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use serde::Serialize;
use tda_curvature::Damping;
use tda_model::device::DeviceKind;
use tda_trace::fit::load_checked;
use tda_trace::select::{
    pick, read_pool, read_targets, score_bm25, score_ekfac, score_grad_cosine, score_repsim,
    write_selection, Budget, Dedup, GradCosineOptions, Method, OutFormat,
};
use tda_trace::{model_fingerprint, TraceOptions};

use super::trace::parse_damping;
use crate::output::{bar, print_json};
use crate::with_backend;

fn parse_pct(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("top-pct {s:?}: a percentage in (0, 100]")),
    }
}

fn parse_threshold(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= 1.0 => Ok(t),
        _ => Err(format!("dedup-threshold {s:?}: a Jaccard in (0, 1]")),
    }
}

#[derive(Args)]
#[command(
    group(clap::ArgGroup::new("budget").required(true).args(["top_n", "top_pct", "token_budget"])),
    after_help = "Score of a pool document = the MEAN over targets of its per-target score (larger = more useful for the targets):
  ekfac        EK-FAC influence −∇f(θ)ᵀ (G + λI)⁻¹ ∇L(z, θ) of `tda trace` with f = log p(completion | prompt); a document longer than one window scores the SUM of its windows. Needs --factors (from `tda fit`).
  grad-cosine  LESS-style: cosine between the document's training-gradient direction −∇L(z) (windows summed) and each target's ∇ log p(completion | prompt), both projected per layer with a fixed-seed Kronecker Rademacher projection P_out G P_inᵀ over the block layers (no lm_head); --projection-dim is the total size (default 8192; the exact total, ⌊√(dim/layers)⌋² per layer, is printed).
  repsim       cosine between mean-pooled final hidden states (input of lm_head) of the document and of each target.
  bm25         BM25 of the document for the query \"prompt completion\" over a temporary index of the pool; not retrieved = 0.

Selection: documents ranked by score (ties keep pool order), then the best --top-n, the best --top-pct percent of the scored documents, or documents in rank order while their model-tokenizer token count stays within --token-budget. --dedup skips a document whose word 5-gram shingle Jaccard with an already-selected one is ≥ --dedup-threshold (or that equals one after whitespace/case normalisation); skipped duplicates do not count toward the budget.

Pool: one .jsonl, .txt (one document per line, or --text-mode file) or .parquet file. Targets: a .jsonl of {\"prompt\", \"completion\"} objects; any other extension is plain text with one target per non-empty line (the completion, with an empty prompt).
Output (--out, written atomically, rank order): jsonl pool → .jsonl, each selected line as it was plus \"tda_rank\" and \"tda_score\"; parquet pool → .parquet, the pool's schema plus tda_rank, tda_score columns; text pool → .jsonl {\"text\", \"tda_rank\", \"tda_score\"} or .parquet with those columns.

Examples:
  tda select --model runs/demo/model --factors runs/demo/factors --pool pool.jsonl --targets targets.jsonl --top-pct 5 --out selected.jsonl
  tda select --model M --method grad-cosine --projection-dim 8192 --pool pool.parquet --targets targets.txt --token-budget 2000000 --dedup --out selected.parquet
  tda select --model M --method bm25 --pool pool.txt --targets targets.txt --top-n 1000 --out selected.jsonl --json"
)]
pub struct SelectArgs {
    /// HF model folder (its tokenizer also counts the tokens of --token-budget).
    #[arg(long)]
    pub model: PathBuf,
    /// The candidate pool: one .jsonl, .txt or .parquet file.
    #[arg(long)]
    pub pool: PathBuf,
    /// Targets: .jsonl of {"prompt", "completion"}, else one target per non-empty line.
    #[arg(long)]
    pub targets: PathBuf,
    /// Output: .jsonl or .parquet (see below for which pool goes to which).
    #[arg(long)]
    pub out: PathBuf,
    /// Keep the N best documents.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_n: Option<u64>,
    /// Keep the best P percent of the scored documents (0 < P ≤ 100).
    #[arg(long, value_parser = parse_pct, allow_negative_numbers = true)]
    pub top_pct: Option<f64>,
    /// Keep documents in rank order while their token count (model tokenizer) stays ≤ K.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_budget: Option<u64>,
    /// ekfac (default), grad-cosine, repsim or bm25.
    #[arg(long, default_value = "ekfac")]
    pub method: Method,
    /// Folder written by `tda fit` (ekfac only).
    #[arg(long)]
    pub factors: Option<PathBuf>,
    /// ekfac: `heuristic` (default: 0.1 × mean Λ per layer) or an absolute λ.
    #[arg(long, value_parser = parse_damping, allow_hyphen_values = true)]
    pub damping: Option<Damping>,
    /// grad-cosine: total projected gradient dimensions (default 8192).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub projection_dim: Option<u64>,
    /// grad-cosine: seed of the projection (default 0).
    #[arg(long)]
    pub projection_seed: Option<u64>,
    /// Skip near-duplicates of already-selected documents.
    #[arg(long)]
    pub dedup: bool,
    /// Word 5-gram Jaccard at which a document counts as a near-duplicate.
    #[arg(long, default_value = "0.8", value_parser = parse_threshold, requires = "dedup")]
    pub dedup_threshold: f64,
    #[command(flatten)]
    pub read: super::CorpusArgs,
    #[command(flatten)]
    pub windows: super::WindowArgs,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long, default_value = "f32", help = super::DTYPE_HELP)]
    pub dtype: tda_model::ModelDtype,
    /// Report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct TopRow {
    rank: usize,
    id: String,
    score: f64,
    tokens: u64,
}

#[derive(Serialize)]
struct Report {
    method: Method,
    score: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    projection_dim: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    projected_layers: Option<usize>,
    pool: String,
    pool_documents: usize,
    pool_records_skipped: u64,
    targets: usize,
    scored: usize,
    unscored: usize,
    selected: usize,
    dropped_duplicates: usize,
    tokens: u64,
    out: String,
    scoring_s: f64,
    top: Vec<TopRow>,
}

/// Flags that only one method uses: given with another method they would be ignored.
fn check_flags(a: &SelectArgs) -> anyhow::Result<()> {
    let m = a.method;
    let only = |set: bool, flag: &str, method: Method| -> anyhow::Result<()> {
        if set && m != method {
            bail!("{flag} is only used by --method {method} (got --method {m}); remove it");
        }
        Ok(())
    };
    only(a.factors.is_some(), "--factors", Method::Ekfac)?;
    only(a.damping.is_some(), "--damping", Method::Ekfac)?;
    only(
        a.projection_dim.is_some(),
        "--projection-dim",
        Method::GradCosine,
    )?;
    only(
        a.projection_seed.is_some(),
        "--projection-seed",
        Method::GradCosine,
    )?;
    if m == Method::Ekfac && a.factors.is_none() {
        bail!("--method ekfac needs --factors (a folder written by `tda fit`), or choose --method grad-cosine, repsim or bm25");
    }
    if m == Method::Bm25 && (a.windows.max_windows.is_some() || a.windows.max_len != 0) {
        bail!("--max-windows / --max-len are not used by --method bm25 (it scores whole documents); remove them");
    }
    Ok(())
}

pub fn run(a: &SelectArgs) -> anyhow::Result<()> {
    check_flags(a)?;
    let fmt = OutFormat::of(&a.out)?;
    let pool_format = tda_corpus::Format::from_path(&a.pool).ok_or_else(|| {
        anyhow::anyhow!(
            "--pool {}: expected a .jsonl, .txt or .parquet file",
            a.pool.display()
        )
    })?;
    fmt.check_pool(pool_format, &a.out)?;
    crate::output::check_out(&a.out, tda_io::Output::File)?;
    let budget = match (a.top_n, a.top_pct, a.token_budget) {
        (Some(n), _, _) => Budget::TopN(n as usize),
        (_, Some(p), _) => Budget::TopPct(p),
        (_, _, Some(k)) => Budget::Tokens(k),
        _ => bail!("give --top-n, --top-pct or --token-budget"),
    };
    budget.validate()?;
    let targets = read_targets(&a.targets)?;
    let pool = read_pool(&a.pool, &a.read.read_options())?;
    let windows = a.windows.options();
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder_as::<AD>(&a.model, &device, a.dtype)?;
        let pb = bar(
            pool.docs.iter().map(|d| d.text.len() as u64 + 1).sum(),
            "scoring [{bar:30}] {bytes}/{total_bytes} {elapsed} {msg}",
        );
        let mut progress = |n: usize, bytes: u64| {
            pb.set_position(bytes);
            pb.set_message(format!("{n} windows"));
        };
        let mut scores = match a.method {
            Method::Ekfac => {
                let fp = model_fingerprint(&a.model)?;
                let f = a.factors.as_ref().expect("checked above");
                let factors = load_checked(f, &fp, &m.model.linear_layers())?;
                let opts = TraceOptions {
                    damping: a.damping.unwrap_or_default(),
                    windows,
                    ..Default::default()
                };
                score_ekfac(
                    &m.model,
                    &m.tokenizer,
                    &factors,
                    &targets,
                    &pool.docs,
                    &opts,
                    &mut progress,
                )?
            }
            Method::GradCosine => {
                let opts = GradCosineOptions {
                    projection_dim: a.projection_dim.map_or(8192, |d| d as usize),
                    seed: a.projection_seed.unwrap_or(0),
                    windows,
                    ..Default::default()
                };
                score_grad_cosine(
                    &m.model,
                    &m.tokenizer,
                    &targets,
                    &pool.docs,
                    &opts,
                    &mut progress,
                )?
            }
            Method::RepSim => score_repsim(
                &m.model,
                &m.tokenizer,
                &targets,
                &pool.docs,
                &windows,
                &mut progress,
            )?,
            Method::Bm25 => score_bm25(&pool, &targets)?,
        };
        pb.finish_and_clear();
        if let Some(p) = &mut scores.pass {
            p.source = a.pool.display().to_string();
            eprintln!("pool {p}");
        }
        let tok = &m.tokenizer;
        let sel = pick(
            &scores.scores,
            budget,
            a.dedup.then_some(Dedup {
                threshold: a.dedup_threshold,
            }),
            &|i| pool.docs[i].text.clone(),
            &mut |i| {
                tok.encode(pool.docs[i].text.as_str(), false)
                    .map(|e| e.get_ids().len() as u64)
                    .map_err(|e| {
                        tda_trace::TraceError::Usage(format!(
                            "cannot tokenize pool document {}: {e}",
                            pool.docs[i].id
                        ))
                    })
            },
        )?;
        write_selection(&pool, &sel, &a.out)?;
        let proj = scores
            .projection_dim
            .map(|d| {
                format!(
                    " (projection {d} dims over {} layers)",
                    scores.projected_layers.unwrap_or(0)
                )
            })
            .unwrap_or_default();
        eprintln!(
            "select: method {}{proj}, {} pool documents ({} records skipped), {} scored, {} targets → {} selected ({} near-duplicates dropped, {} tokens) in {:.1}s → {}",
            scores.method,
            pool.docs.len(),
            pool.stats.skipped.total(),
            sel.ranked,
            targets.len(),
            sel.picked.len(),
            sel.dropped_duplicates,
            sel.tokens,
            scores.seconds,
            a.out.display()
        );
        let top: Vec<TopRow> = sel
            .picked
            .iter()
            .take(10)
            .map(|p| TopRow {
                rank: p.rank,
                id: pool.docs[p.doc].id.clone(),
                score: p.score,
                tokens: p.tokens,
            })
            .collect();
        if a.json {
            return print_json(&Report {
                method: scores.method,
                score: "mean over targets of the per-target score (ekfac: sum over the document's windows)",
                projection_dim: scores.projection_dim,
                projected_layers: scores.projected_layers,
                pool: a.pool.display().to_string(),
                pool_documents: pool.docs.len(),
                pool_records_skipped: pool.stats.skipped.total(),
                targets: targets.len(),
                scored: sel.ranked,
                unscored: scores.unscored,
                selected: sel.picked.len(),
                dropped_duplicates: sel.dropped_duplicates,
                tokens: sel.tokens,
                out: a.out.display().to_string(),
                scoring_s: scores.seconds,
                top,
            });
        }
        for (t, p) in top.iter().zip(&sel.picked) {
            println!(
                "{:>4}. {:+.4e}  {}  {}",
                t.rank,
                t.score,
                t.id,
                pool.docs[p.doc].text.chars().take(100).collect::<String>()
            );
        }
        Ok(())
    })
}
