//! `tda trace`: which training documents made the model say this (EK-FAC influence).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tda_curvature::{Damping, Normalization, NormalizeOptions, Rank};
use tda_model::device::DeviceKind;
use tda_trace::fit::load_checked;
use tda_trace::{
    model_fingerprint, Aggregate, FineTuneDamping, FineTuned, Granularity, Hessians, Measurement,
    Query, RelabelRow, TraceOptions,
};

pub use super::parse::{parse_damping, parse_rank, parse_top_k, TopKArg};
use super::parse::{parse_ensemble_state, parse_ft_damping, parse_norm, FtDampingArg};
use crate::output::{bar, print_json};
use crate::with_backend;

/// What `--relabel` does not use: the corpus, the ranking and its breakdowns, the parquet output.
const RELABEL_CONFLICTS: [&str; 24] = [
    "pretrain_model",
    "pretrain_factors",
    "hessians",
    "ft_damping",
    "granularity",
    "aggregate",
    "corpus",
    "index",
    "candidates",
    "completion_only",
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

All queries are scored in one pass over the candidates (windows of --max-len tokens of every corpus document, or of the documents returned by the prefilter --index). Results are documents: a document's score is the SUM of its windows' scores (the influence of up-weighting the whole document), shown with its best window; --granularity window ranks windows instead. Per-token scores (--per-token, of the best window) sum to the window's score; per-layer scores (--per-layer) sum to the result's score.

Target sets: --aggregate mean|sum scores all the queries as ONE target at the cost of one query (the target's scores are exactly the mean/sum of the per-query scores with --query-rank full; a rank-r query compresses the aggregate); --per-query adds each query's own ranking. --queries takes a .jsonl of {\"prompt\", \"completion\"} or a plain text file of targets, one per line (completion with an empty prompt).

Multi-stage (pretraining → fine-tuning): --model is the fine-tuned model θ_ft and --factors its factors (fitted on the fine-tuning data); --pretrain-model θ_pt and --pretrain-factors the pretraining ones; the corpus holds pretraining candidates. Score = −∇f(θ_ft)ᵀ α(G_ft + αI)⁻¹ (G_pt + λI)⁻¹ ∇L(z, θ_pt), one candidate pass at θ_pt. α (--ft-damping): by default the `proximal` coefficient recorded by `tda train` in the fine-tuned folder (×T̄ tokens per window, to the factors' units), else `heuristic` (0.1 × mean Λ_ft per layer); λ is --damping. --hessians fine-tune|pretrain|none drops one or both preconditioners (ablations).

Examples:
  tda trace --model runs/demo/model --factors runs/demo/factors --corpus runs/demo/corpus.jsonl --prompt \"Mira Tolven was born in\" --completion \" Kestrel Bay\"
  tda trace --model M --factors F --corpus C.jsonl --queries q.jsonl --top-k 20 --per-token --per-layer --json
  tda trace --model M --factors F --corpus sft.jsonl --completion-only --index I --prompt P --completion X   # fine-tuning pairs (loss on completions), prefiltered by `tda index --corpus sft.jsonl --text-column completion --index I`
  tda trace --model M --factors F --corpus C.jsonl --index indexes/C --candidates 10000 --queries q.jsonl --out scores.parquet
  tda trace --model M --factors F --corpus C.jsonl --queries targets.txt --aggregate mean --top-k 50
  tda trace --model FT --factors FT_F --pretrain-model PT --pretrain-factors PT_F --corpus pretrain.jsonl --queries qa.jsonl
  tda trace --model M --factors F --queries q.jsonl --relabel rows.jsonl --json   # rows: {\"prompt\",\"original\",\"replacement\"}
  tda trace --model M --factors F --corpus shard-000.jsonl --queries targets.jsonl --save-queries targets.q   # then, for each new shard:
  tda trace --model M --factors F --corpus shard-001.jsonl --queries-from targets.q
  tda trace --model qwen2 --factors F --corpus long.jsonl --queries q.jsonl --max-len 2048 --stride 1536 --memory-budget 8GiB   # overlapping windows, bounded memory
  tda trace --model qwen2-bf16 --factors F --corpus C.jsonl --queries q.jsonl --dtype bf16 --device cuda   # the model in bf16; taps, queries and scores in f32

Sharded (one task per shard, e.g. a Slurm array job; see deploy/README.md): --shard I/N scores documents d with d mod N = I and writes a partial parquet (--out; the shard's top-K, or every candidate with --top-k all, in row groups); `tda merge` gives exactly the unsharded ranking and refuses a missing, duplicate or mismatched shard:
  tda trace --model M --factors F --corpus C --queries q.jsonl --top-k 50 --shard $I/$N --out parts/trace-$I.parquet
  tda merge parts/trace-*.parquet --top-k 50 --out scores.parquet --json"
)]
pub struct TraceArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Folder written by `tda fit` for --model (multi-stage: the fine-tuning factors).
    #[arg(long)]
    pub factors: Option<PathBuf>,
    /// Multi-stage: the pretrained model θ_pt (same architecture and tokenizer as --model); the
    /// candidates are scored here.
    #[arg(long, help_heading = "Multi-stage")]
    pub pretrain_model: Option<PathBuf>,
    /// Multi-stage: factors fitted at θ_pt on pretraining data.
    #[arg(long, requires = "pretrain_model", help_heading = "Multi-stage")]
    pub pretrain_factors: Option<PathBuf>,
    /// Multi-stage preconditioners: both, fine-tune, pretrain or none.
    #[arg(
        long,
        default_value = "both",
        requires = "pretrain_model",
        help_heading = "Multi-stage"
    )]
    pub hessians: Hessians,
    /// Multi-stage α: `proximal` (from the fine-tuned folder's training record), `heuristic`, or
    /// an absolute value in the factors' units. Default: proximal if recorded, else heuristic.
    #[arg(long, requires = "pretrain_model", value_parser = parse_ft_damping, allow_hyphen_values = true, help_heading = "Multi-stage")]
    pub ft_damping: Option<FtDampingArg>,
    /// Corpus (jsonl, txt, parquet); the candidates.
    #[arg(long, required_unless_present = "relabel")]
    pub corpus: Option<PathBuf>,
    #[command(flatten)]
    pub read: super::CorpusArgs,
    #[command(flatten)]
    pub pairs: super::PairArgs,
    /// One query: the prompt ...
    #[arg(long, requires = "completion", conflicts_with = "queries")]
    pub prompt: Option<String>,
    /// ... and the completion whose measurement is attributed.
    #[arg(long, requires = "prompt")]
    pub completion: Option<String>,
    /// Queries as jsonl ({"prompt": ..., "completion": ..., "id": optional}), or a text file of
    /// targets, one per line.
    #[arg(long, required_unless_present_any = ["prompt", "queries_from"])]
    pub queries: Option<PathBuf>,
    /// Write the prepared queries (measured, preconditioned, rank-r) to this file, to trace the
    /// same targets over other corpora later with --queries-from.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["relabel", "pretrain_model", "ensemble", "shard", "queries_from"])]
    pub save_queries: Option<PathBuf>,
    /// Score queries saved by --save-queries (with this --model and --factors) instead of
    /// measuring them again: their measurement, damping and rank come from the file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prompt", "queries", "measurement", "damping", "query_rank", "aggregate", "relabel", "pretrain_model", "ensemble", "shard"])]
    pub queries_from: Option<PathBuf>,
    /// Prefilter index (`tda index`): only the top --candidates documents per query are scored.
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// Documents retrieved per query by the prefilter.
    #[arg(long, default_value_t = 10_000, requires = "index")]
    pub candidates: usize,
    /// logprob (log p(completion | prompt)), loss or margin.
    #[arg(long, default_value = "logprob")]
    pub measurement: Measurement,
    /// `heuristic` (0.1 × mean Λ per layer), `heuristic:S` (S × mean Λ) or an absolute λ.
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
    /// document (sum over its windows, with the best window) or window.
    #[arg(long, default_value = "document")]
    pub granularity: Granularity,
    /// Score all queries as one target set: mean or sum.
    #[arg(long)]
    pub aggregate: Option<Aggregate>,
    /// With --aggregate: also rank for each query on its own.
    #[arg(long, requires = "aggregate")]
    pub per_query: bool,
    /// Relabeling influence of the rows of this jsonl instead of scoring the corpus (prints one
    /// score per row and query: no ranking, no corpus, no parquet).
    #[arg(long, conflicts_with_all = RELABEL_CONFLICTS)]
    pub relabel: Option<PathBuf>,
    #[command(flatten)]
    pub windows: super::WindowArgs,
    /// What one batch's taps, logits and autodiff graph may take in memory (e.g. 8GiB); a batch
    /// over it is tapped fewer windows at a time, then layer group by layer group (one forward +
    /// backward each; the scores do not change) [default: a quarter of this machine's memory].
    #[arg(long, conflicts_with = "relabel")]
    pub memory_budget: Option<tda_trace::MemoryBudget>,
    /// Ensemble over training states (TracIn-CP-style): another checkpoint of the same run and
    /// its factors, CHECKPOINT_DIR=FACTORS_DIR (repeat for more). Every state traces the same
    /// candidates; each state's scores of a query are divided by their standard deviation over
    /// the candidates, and the states (--model first) are averaged.
    #[arg(long, value_name = "CHECKPOINT=FACTORS", value_parser = parse_ensemble_state, conflicts_with_all = ["relabel", "pretrain_model", "shard", "per_token", "per_layer"], help_heading = "Ensembles")]
    pub ensemble: Vec<(PathBuf, PathBuf)>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long, default_value = "f32", help = super::DTYPE_HELP)]
    pub dtype: tda_model::ModelDtype,
    /// Where the candidates are scored: device (tensor operations where the model runs; only
    /// the scores are copied) or host (taps copied, faer GEMMs) [default: device with --device
    /// cuda, host with --device cpu, where the host's kernels are the faster].
    #[arg(long, conflicts_with = "relabel")]
    pub compute_on: Option<tda_trace::device::ComputeOn>,
    /// Precision of the candidate contraction on the device: f32, or bf16 (mixed: bf16 GEMM
    /// operands, f32 reductions; the factors and the preconditioned queries stay f32). Needs
    /// --compute-on device (the default with --device cuda).
    #[arg(long, default_value = "f32", conflicts_with = "relabel")]
    pub precision: tda_trace::device::Precision,
    /// JSON to stdout.
    #[arg(long)]
    pub json: bool,
    /// Parquet output file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Score one shard I/N (0-based) of the candidates and write a partial parquet to --out, for
    /// `tda merge` (single-stage tracing).
    #[arg(long, requires = "out", conflicts_with_all = ["json", "relabel", "pretrain_model"], help_heading = "Sharding")]
    pub shard: Option<tda_trace::Shard>,
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
        (_, _, Some(f)) => tda_trace::read_queries(f, "queries")?,
        // Read with the model and factors below.
        _ if a.queries_from.is_some() => vec![],
        _ => anyhow::bail!("give --prompt and --completion, or --queries FILE.jsonl"),
    };
    if queries.is_empty() && a.queries_from.is_none() {
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
        windows: tda_trace::WindowOptions {
            shard: a.shard.unwrap_or_default(),
            memory_budget: a.memory_budget,
            compute: crate::cmd::compute_on(a.compute_on, a.device),
            precision: a.precision,
            ..a.windows.options()
        },
        granularity: a.granularity,
        aggregate: a.aggregate,
        per_query: a.per_query,
    };
    if a.pretrain_model.is_some() {
        return run_multistage(a, &queries, &opts);
    }
    let factors_dir = a
        .factors
        .as_ref()
        .context("--factors is required (the folder written by `tda fit`)")?;
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder_as::<AD>(&a.model, &device, a.dtype)?;
        let fp = model_fingerprint(&a.model)?;
        let factors = load_checked(factors_dir, &fp, &m.model.linear_layers())?;
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
        // Single stage: the queries measured and preconditioned here, or read back from a file.
        let prepared =
            match &a.queries_from {
                Some(p) => Some(tda_trace::saved_queries::load(p, &fp, &factors)?),
                None if a.shard.is_none() && a.ensemble.is_empty() => Some(
                    tda_trace::prepare_queries(&m.model, &m.tokenizer, &factors, &queries, &opts)?,
                ),
                None => None,
            };
        if let (Some(path), Some(p)) = (&a.save_queries, &prepared) {
            tda_trace::saved_queries::save(path, p, &fp, &factors)?;
            eprintln!(
                "saved {} prepared queries to {} (trace other corpora with --queries-from)",
                p.queries.len(),
                path.display()
            );
        }
        // Prepared queries are all the candidate pass needs of the factors, unless RelatIF
        // normalises by each candidate's own preconditioned norm.
        let specs_only =
            prepared.is_some() && a.shard.is_none() && a.normalization != Normalization::RelatIF;
        let factors = if specs_only {
            factors.into_specs_only()
        } else {
            factors
        };
        // The prefilter searches the queries' texts: the given ones (an aggregated target's
        // label is not a text), or those of the saved file.
        let queries = match (&a.queries_from, &prepared) {
            (Some(_), Some(p)) => p.queries.clone(),
            _ => queries,
        };
        let (source, pb) = candidates(a, &queries)?;
        if let (Some(shard), Some(out)) = (a.shard, &a.out) {
            let fpath = if factors_dir.is_dir() {
                factors_dir.join(tda_trace::FACTORS_FILE)
            } else {
                factors_dir.clone()
            };
            let ffp = tda_corpus::fingerprint_file(&fpath)?;
            let head = tda_trace::sharded::trace_shard(
                &m.model,
                &m.tokenizer,
                &factors,
                &format!("{} {:016x}", ffp.size, ffp.hash),
                &fp,
                &queries,
                &source,
                &opts,
                out,
                &mut |n, bytes| {
                    pb.set_position(bytes);
                    pb.set_message(format!("{n} windows"));
                },
            )?;
            pb.finish_and_clear();
            eprintln!("shard {shard}: corpus {}", head.report.corpus);
            eprintln!(
                "scored {} candidates of shard {shard} in {:.1}s → {} (merge all shards with `tda merge`)",
                head.report.candidates,
                head.report.total_s,
                out.display()
            );
            return Ok(());
        }
        // An ensemble keeps every candidate of each state, then ranks their combination.
        let state_opts = TraceOptions {
            top_k: if a.ensemble.is_empty() {
                opts.top_k
            } else {
                None
            },
            ..opts.clone()
        };
        let mut on_pass = |n: usize, bytes: u64| {
            pb.set_position(bytes);
            pb.set_message(format!("{n} windows"));
        };
        let out = match &prepared {
            Some(p) => tda_trace::trace_prepared(
                &m.model,
                &m.tokenizer,
                &factors,
                p,
                &source,
                &state_opts,
                &mut on_pass,
            )?,
            None => tda_trace::trace(
                &m.model,
                &m.tokenizer,
                &factors,
                &queries,
                &source,
                &state_opts,
                &mut on_pass,
            )?,
        };
        if a.ensemble.is_empty() {
            pb.finish_and_clear();
            return report(a, &out);
        }
        let (mut outs, mut fps) = (vec![out], vec![fp]);
        for (ckpt, fdir) in &a.ensemble {
            let c = tda_model::load_folder_as::<AD>(ckpt, &device, a.dtype)?;
            let cfp = model_fingerprint(ckpt)?;
            let cf = load_checked(fdir, &cfp, &c.model.linear_layers())?;
            outs.push(tda_trace::trace(
                &c.model,
                &c.tokenizer,
                &cf,
                &queries,
                &source,
                &state_opts,
                &mut on_pass,
            )?);
            fps.push(cfp);
        }
        pb.finish_and_clear();
        let out = tda_trace::ensemble::combine(outs, fps, opts.top_k, opts.opponents)?;
        report(a, &out)
    })
}

/// The candidate documents (the corpus, or the prefilter's) and a progress bar over them.
fn candidates(
    a: &TraceArgs,
    queries: &[Query],
) -> anyhow::Result<(tda_trace::DocSource, indicatif::ProgressBar)> {
    let corpus = a.corpus.clone().context("--corpus is required")?;
    let prefilter = a
        .index
        .as_ref()
        .map(|dir| tda_trace::Prefilter::bm25(dir, a.candidates));
    let read = a.read.read_options();
    let (source, retrieved) =
        tda_trace::candidate_source(&corpus, &read, a.pairs.kind(), prefilter.as_ref(), queries)?;
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
    Ok((source, pb))
}

/// Multi-stage: queries at --model (θ_ft), candidates at --pretrain-model (θ_pt).
fn run_multistage(a: &TraceArgs, queries: &[Query], opts: &TraceOptions) -> anyhow::Result<()> {
    let pt_dir = a.pretrain_model.as_ref().expect("multi-stage");
    let h = a.hessians;
    if h.uses_fine_tune() && a.factors.is_none() {
        anyhow::bail!(
            "--hessians {} needs --factors (fitted on the fine-tuning data at --model)",
            hess_name(h)
        );
    }
    if !h.uses_fine_tune() && a.factors.is_some() {
        anyhow::bail!(
            "--factors is not used with --hessians {} (drop it)",
            hess_name(h)
        );
    }
    if !h.uses_fine_tune() && a.ft_damping.is_some() {
        anyhow::bail!(
            "--ft-damping is not used with --hessians {} (drop it)",
            hess_name(h)
        );
    }
    if h.uses_pretrain() && a.pretrain_factors.is_none() {
        anyhow::bail!("--hessians {} needs --pretrain-factors (fitted on pretraining data at --pretrain-model)", hess_name(h));
    }
    if !h.uses_pretrain() && a.pretrain_factors.is_some() {
        anyhow::bail!(
            "--pretrain-factors is not used with --hessians {} (drop it)",
            hess_name(h)
        );
    }
    let ft_damping = if h.uses_fine_tune() {
        let record = tda_train::TrainingRecord::read(&a.model)?;
        let recorded = record
            .as_ref()
            .map(|r| r.train.proximal)
            .filter(|&p| p > 0.0);
        Some(match (a.ft_damping, recorded) {
            (Some(FtDampingArg::Damping(d)), _) => FineTuneDamping::Damping(d),
            (Some(FtDampingArg::Proximal), Some(p)) | (None, Some(p)) => FineTuneDamping::Proximal(p),
            (Some(FtDampingArg::Proximal), None) => anyhow::bail!(
                "--ft-damping proximal: {} records no proximal coefficient ({}); give --ft-damping heuristic or a number",
                a.model.display(),
                if record.is_some() { "it was fine-tuned with proximal = 0" } else { "no tda_training.json" }
            ),
            (None, None) => FineTuneDamping::Damping(Damping::default()),
        })
    } else {
        None
    };
    if a.corpus.is_none() {
        anyhow::bail!("--corpus is required (the pretraining candidates)");
    }
    with_backend!(a.device, |B, AD, device| {
        let ft = tda_model::load_folder_as::<AD>(&a.model, &device, a.dtype)?;
        let pt = tda_model::load_folder_as::<AD>(pt_dir, &device, a.dtype)?;
        tda_trace::check_same_family(
            (&a.model, &ft.model.config, &ft.tokenizer),
            (pt_dir, &pt.model.config, &pt.tokenizer),
        )?;
        let layers = pt.model.linear_layers();
        let ft_factors = match &a.factors {
            Some(dir) => Some(load_checked(
                dir,
                &model_fingerprint(&a.model)?,
                &ft.model.linear_layers(),
            )?),
            None => None,
        };
        let pt_factors = match &a.pretrain_factors {
            Some(dir) => Some(load_checked(dir, &model_fingerprint(pt_dir)?, &layers)?),
            None => None,
        };
        if let (Some(f), Some(p)) = (&ft_factors, &pt_factors) {
            p.check_specs(&f.specs()).map_err(|e| {
                anyhow::anyhow!("--factors and --pretrain-factors track different layers: {e}")
            })?;
        }
        let fine_tuned = FineTuned {
            model: &ft.model,
            factors: ft_factors.as_ref().zip(ft_damping),
            hessians: h,
        };
        let (source, pb) = candidates(a, queries)?;
        let out = tda_trace::trace_multistage(
            &pt.model,
            pt_factors.as_ref(),
            &fine_tuned,
            &pt.tokenizer,
            queries,
            &source,
            opts,
            &mut |n, bytes| {
                pb.set_position(bytes);
                pb.set_message(format!("{n} windows"));
            },
        )?;
        pb.finish_and_clear();
        if let Some(st) = &out.stages {
            eprintln!(
                "multi-stage: hessians {}, α {}",
                hess_name(st.hessians),
                st.fine_tune_damping.as_deref().unwrap_or("unused")
            );
        }
        report(a, &out)
    })
}

fn hess_name(h: Hessians) -> &'static str {
    match h {
        Hessians::Both => "both",
        Hessians::FineTune => "fine-tune",
        Hessians::Pretrain => "pretrain",
        Hessians::None => "none",
    }
}

/// Writes --out, prints --json or the ranking, and the timing line.
fn report(a: &TraceArgs, out: &tda_trace::TraceOutput) -> anyhow::Result<()> {
    crate::output::print_output(out, a.out.as_deref(), a.json)
}
