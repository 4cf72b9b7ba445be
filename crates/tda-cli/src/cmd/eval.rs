//! `tda eval`: are the attributions right? Quality measured against retrained models.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tda_curvature::Damping;
use tda_eval::bank::{self, BankSpec};
use tda_eval::lds;
use tda_eval::methods::{InfluenceSettings, Method};
use tda_model::device::DeviceKind;
use tda_trace::TraceOptions;

use super::CorpusArgs;
use crate::output::{bar, print_json};
use crate::with_backend;

/// The tiny model recipe (`configs/tiny.toml`), the bank's default.
const TINY_TOML: &str = include_str!("../../../../configs/tiny.toml");

/// The JSON of every eval command: which evaluation, the settings it ran with (model and corpus
/// fingerprints are in the report), and the report.
#[derive(serde::Serialize)]
struct Output<'a, R: serde::Serialize> {
    eval: &'static str,
    settings: serde_json::Value,
    #[serde(flatten)]
    report: &'a R,
}

/// How every eval command reports: a table, or JSON; optionally the JSON to a file as well.
#[derive(Args)]
pub struct ReportArgs {
    /// Print the report as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl ReportArgs {
    /// Fails before any work when `--out` cannot be written.
    fn check(&self) -> anyhow::Result<()> {
        if let Some(out) = &self.out {
            crate::output::check_out(out, tda_io::Output::File)?;
        }
        Ok(())
    }

    /// Writes `value` to `--out`; prints it with `--json` and returns true (the caller then
    /// prints no table).
    fn emit(&self, value: &impl serde::Serialize) -> anyhow::Result<bool> {
        write_json(&self.out, value)?;
        if self.json {
            print_json(value)?;
        }
        Ok(self.json)
    }
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Linear datamodeling score of each method over models retrained on random subsets.
    Lds(LdsArgs),
    /// MRR and recall@k of the documents that state planted facts, per method (paraphrased
    /// queries, hard negatives, BM25 prefilter + influence).
    FactTracing(FactArgs),
    /// One training step on each method's top-k documents: how much each raises the target
    /// (TrackStar's tail-patch), beside k random documents.
    TailPatch(TailPatchArgs),
    /// Citation P/R/F1 (all sentences, sentences where word overlap misleads), faithfulness and
    /// cost of each `tda cite` method on the planted RAG set, beside word overlap.
    Cite(CiteEvalArgs),
    /// Recall of planted corrupted documents at the top of the self-influence ranking, beside
    /// the gradient norm and the token loss.
    Curation(CurationArgs),
}

#[derive(Args)]
#[command(
    after_help = "Per seed, a world of --people biographies plus 10 % corrupted documents (half with their words shuffled, half copies with the birthplace swapped, contradicting the original) is written to --work DIR/seed-S, a model is trained on it by the recipe (--config, default configs/tiny.toml; cached), EK-FAC is fitted, and every document is ranked by self-influence (EK-FAC and identity) and by its mean token loss. Reported: recall of the corrupted documents in the top 10 % (chance 0.10).\n\nExamples:\n  tda eval curation --work runs/curation\n  tda eval curation --work runs/curation --people 90 --seeds 2 --json"
)]
pub struct CurationArgs {
    /// Folder for the worlds and models (created; reused when it matches).
    #[arg(long)]
    pub work: PathBuf,
    /// Training recipe; default: the embedded configs/tiny.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Biographies per world (10 % more documents are corrupted ones).
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(10..))]
    pub people: u32,
    /// Worlds (seeds 0..N), each with its own model.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub seeds: u32,
    #[command(flatten)]
    pub report: ReportArgs,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
}

#[derive(Args)]
#[command(
    after_help = "The planted RAG set: questions whose answer sentences each state one fact found in exactly one retrieved document, about half with a \"tie\" distractor that holds every content word of the sentence. The reader must be one trained on this format (the repository's tests/fixtures/rag). Reference answers are teacher-forced. Each method runs with `tda cite`'s defaults (--min-share 0 for mirage, 0.2 for context-cite and loo). Faithfulness: the mean drop of a sentence's log-probability when its top-1 / top-3 documents are removed, vs. as many random ones.\n\nExamples:\n  tda eval cite --model tests/fixtures/rag\n  tda eval cite --model tests/fixtures/rag --examples 20 --methods context-cite,loo --json"
)]
pub struct CiteEvalArgs {
    /// The planted-RAG reader (HF folder).
    #[arg(long)]
    pub model: PathBuf,
    /// Examples of the planted set.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub examples: u32,
    /// Seed of the planted set (the reported figures use the default; 5 is the set the
    /// defaults were chosen on).
    #[arg(long, default_value_t = 20_241_112)]
    pub seed: u64,
    /// Methods, comma-separated: context-cite, mirage, loo (default: all three).
    #[arg(long, value_delimiter = ',', value_parser = ["context-cite", "mirage", "loo"])]
    pub methods: Vec<String>,
    #[command(flatten)]
    pub report: ReportArgs,
}

#[derive(Args)]
#[command(
    after_help = "Same world and model as `tda eval fact-tracing` (same --work folder, cached). For each query and each ranking: one AdamW step from a fresh optimiser state at the recipe's final learning rate (lr × min_lr_ratio, from the model's training record) on a batch of the top --top-k documents, then Δ log p(completion | prompt); every patch starts from the trained model. `random` patches with k uniformly drawn documents.\n\nExamples:\n  tda eval tail-patch --work runs/facts\n  tda eval tail-patch --work runs/facts --top-k 5 --methods ekfac,identity+cosine,bm25 --json"
)]
pub struct TailPatchArgs {
    #[command(flatten)]
    pub world: FactArgs,
    /// Documents per patch.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,
}

#[derive(Args)]
#[command(
    after_help = "The world (written to --work DIR as corpus.jsonl and queries.jsonl, with each query's stating documents): one planted fact per person (birthplace, job or pet) stated by 1, 2 or 3 documents in different templates; hard negatives with the same person (other facts), the same object (other people, in the paraphrase's template) or both; two queries per fact, in a template a stating document uses and in one none uses. The model is trained on it by the recipe (--config, default configs/tiny.toml) and cached in DIR. Ranks are over the whole corpus; bm25@N→M re-ranks the BM25 top N by method M (the two stages of `tda trace --index`).\n\nExamples:\n  tda eval fact-tracing --work runs/facts\n  tda eval fact-tracing --work runs/facts --methods ekfac,ekfac+cosine,identity+cosine,bm25 --prefilter 20 --json --out facts.json"
)]
pub struct FactArgs {
    /// Folder for the world, the model and the index (created; reused when it matches).
    #[arg(long)]
    pub work: PathBuf,
    /// Training recipe (TOML with [model] and [train]); default: the embedded configs/tiny.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// People in the world (one planted fact each; 6–8 documents each).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(3..))]
    pub people: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Methods, as `tda eval lds --methods`.
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<Method>,
    /// BM25 candidates re-ranked by each influence method (the two-stage rows).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub prefilter: u32,
    /// Damping of the influence methods (as `tda trace --damping`).
    #[arg(long, default_value = "heuristic", value_parser = super::trace::parse_damping)]
    pub damping: Damping,
    #[command(flatten)]
    pub report: ReportArgs,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
}

#[derive(Args)]
#[command(
    after_help = "The bank (--bank DIR) holds the full model and one model per subset, each trained by the same recipe (--config, default configs/tiny.toml) from the same seed and tokenizer on a random --fraction of the documents. It is cached and resumable: a re-run trains only the models not done, and reuses the bank only for the same corpus, recipe and settings. Attributions are computed on the full model; LDS(q) is the Spearman correlation over subsets between the summed scores of each subset's documents and log p(completion | prompt) under the model trained on it; the 95 % interval resamples the subsets.\n\nExamples:\n  tda synth-corpus --out bios.jsonl --docs 200 --queries facts.jsonl --n-queries 32\n  tda eval lds --corpus bios.jsonl --queries facts.jsonl --bank runs/lds --config configs/lds.toml\n  tda eval lds --corpus bios.jsonl --queries facts.jsonl --bank runs/lds --config configs/lds.toml --methods ekfac,ekfac+cosine,bm25 --json --out lds.json"
)]
pub struct LdsArgs {
    /// The training corpus (every document is scored; subsets are drawn from it).
    #[arg(long)]
    pub corpus: PathBuf,
    #[command(flatten)]
    pub read: CorpusArgs,
    /// Queries: jsonl of {prompt, completion, id?} (as `tda trace --queries`).
    #[arg(long)]
    pub queries: PathBuf,
    /// Bank folder (created; reused when it matches).
    #[arg(long)]
    pub bank: PathBuf,
    /// Training recipe of every model of the bank (TOML with [model] and [train]); default: the
    /// embedded configs/tiny.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Models retrained on subsets.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..))]
    pub models: u32,
    /// How the bank's models are trained: `random` (`tda train` on random subsets, packed) or
    /// `fixed-order` (one example per document; each model leaves documents out of the full
    /// run's exact data order).
    #[arg(long, value_enum, default_value_t = RegimeArg::Random)]
    pub regime: RegimeArg,
    /// Share of the documents each model keeps (default 0.5 for `random`, 0.99 for
    /// `fixed-order`: 1 % left out).
    #[arg(long)]
    pub fraction: Option<f64>,
    /// Seed of the subsets and of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Methods, comma-separated: identity|diagonal|kfac|ekfac[+train-grad-norm|+relatif|+cosine],
    /// bm25, tfidf. Default: all preconditioners, EK-FAC with each normalisation, the gradient
    /// cosine, BM25 and TF-IDF.
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<Method>,
    /// Damping of the influence methods (as `tda trace --damping`).
    #[arg(long, default_value = "heuristic", value_parser = super::trace::parse_damping)]
    pub damping: Damping,
    /// Also score each influence method as an ensemble over this many states of the full
    /// model's training run (evenly spaced checkpoints, the final model last; rows `M+ckptK`).
    /// Trains the run once more with checkpoints (cached in the bank).
    #[arg(long, default_value_t = 0)]
    pub checkpoints: u32,
    /// Bootstrap resamples of the subsets for the 95 % interval.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub resamples: u32,
    #[command(flatten)]
    pub report: ReportArgs,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegimeArg {
    Random,
    FixedOrder,
}

pub fn run(c: &EvalCommand) -> anyhow::Result<()> {
    match c {
        EvalCommand::Lds(a) => run_lds(a),
        EvalCommand::FactTracing(a) => run_facts(a),
        EvalCommand::TailPatch(a) => run_tail_patch(a),
        EvalCommand::Cite(a) => run_cite(a),
        EvalCommand::Curation(a) => run_curation(a),
    }
}

fn read_recipe(config: &Option<PathBuf>) -> anyhow::Result<String> {
    match config {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("{}: cannot read the recipe: {e}", p.display())),
        None => Ok(TINY_TOML.to_string()),
    }
}

fn recipe_name(config: &Option<PathBuf>) -> String {
    config
        .as_ref()
        .map_or("configs/tiny.toml (embedded)".into(), |p| {
            p.display().to_string()
        })
}

/// Writes `value` as pretty JSON to `path` (atomically), the `--out` of every eval command.
fn write_json(path: &Option<PathBuf>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        let bytes = serde_json::to_vec_pretty(value)?;
        tda_io::write_file(path, &bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The fact world of `a` written to `a.work` (refusing a folder made for other settings).
fn write_world(a: &FactArgs) -> anyhow::Result<(PathBuf, tda_eval::facts::FactWorld)> {
    let world = tda_eval::facts::fact_world(a.people as usize, a.seed);
    std::fs::create_dir_all(&a.work)
        .map_err(|e| anyhow::anyhow!("{}: cannot create the folder: {e}", a.work.display()))?;
    let corpus = a.work.join("corpus.jsonl");
    let jsonl = world.corpus_jsonl();
    let same = std::fs::read(&corpus).is_ok_and(|b| b == jsonl.as_bytes());
    if !same && a.work.join("model.json").exists() {
        anyhow::bail!(
            "{}: this folder holds the world and model of other --people / --seed; use another --work folder or delete it",
            a.work.display()
        );
    }
    if !same {
        tda_io::write_file(&corpus, jsonl.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: {e}", corpus.display()))?;
    }
    let mut q = String::new();
    for fq in &world.queries {
        q.push_str(&serde_json::to_string(fq)?);
        q.push('\n');
    }
    let queries_path = a.work.join("queries.jsonl");
    tda_io::write_file(&queries_path, q.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", queries_path.display()))?;
    Ok((corpus, world))
}

/// A bar for the training steps of a cached model (its length set by the first step).
fn step_bar() -> indicatif::ProgressBar {
    bar(0, "{spinner} train [{bar:30}] {pos}/{len} {msg} ({eta})")
}

fn on_step(pb: &indicatif::ProgressBar, s: &tda_train::StepInfo) {
    pb.set_length(s.steps as u64);
    pb.set_position(s.step as u64);
    pb.set_message(format!("loss {:.3}", s.loss));
}

/// The world's model, trained by the recipe if not cached in `a.work`.
fn world_model(
    a: &FactArgs,
    corpus: &std::path::Path,
    world: &tda_eval::facts::FactWorld,
) -> anyhow::Result<PathBuf> {
    let recipe = read_recipe(&a.config)?;
    let pb = step_bar();
    let (model, docs, trained) = with_backend!(a.device, |B, AD, device| {
        bank::ensure_model_on::<AD>(
            &a.work,
            corpus,
            &tda_corpus::ReadOptions::default(),
            &recipe,
            &device,
            &mut |s| on_step(&pb, s),
        )?
    });
    pb.finish_and_clear();
    print_world(world, corpus, &model, docs.len(), trained);
    Ok(model)
}

fn print_world(
    world: &tda_eval::facts::FactWorld,
    corpus: &std::path::Path,
    model: &std::path::Path,
    docs: usize,
    trained: bool,
) {
    eprintln!(
        "world: {docs} documents, {} queries → {}; model {} ({})",
        world.queries.len(),
        corpus.display(),
        model.display(),
        if trained { "trained now" } else { "cached" }
    );
}

impl FactArgs {
    fn methods(&self) -> Vec<Method> {
        if self.methods.is_empty() {
            Method::defaults()
        } else {
            self.methods.clone()
        }
    }

    fn settings(&self) -> InfluenceSettings {
        InfluenceSettings {
            trace: TraceOptions {
                damping: self.damping,
                ..TraceOptions::default()
            },
            ..InfluenceSettings::default()
        }
    }

    fn settings_json(&self) -> serde_json::Value {
        serde_json::json!({
            "work": self.work,
            "recipe": recipe_name(&self.config),
            "people": self.people,
            "seed": self.seed,
            "prefilter": self.prefilter,
            "damping": format!("{:?}", self.damping),
            "measurement": "logprob",
        })
    }
}

fn run_facts(a: &FactArgs) -> anyhow::Result<()> {
    a.report.check()?;
    let methods = a.methods();
    let (corpus, world) = write_world(a)?;
    let model = world_model(a, &corpus, &world)?;
    let report = with_backend!(a.device, |B, AD, device| {
        let settings = a.settings();
        tda_eval::fact_tracing::evaluate::<AD>(
            &model,
            &corpus,
            &world.queries,
            &methods,
            settings,
            a.prefilter as usize,
            &a.work,
            &device,
            &mut |m| eprintln!("{m}"),
        )?
    });
    let out = Output {
        eval: "fact-tracing",
        settings: a.settings_json(),
        report: &report,
    };
    if a.report.emit(&out)? {
        return Ok(());
    }
    println!(
        "fact tracing: {} queries over {} documents; mean log p(completion): same template {:.2}, paraphrase {:.2}",
        report.queries, report.documents, report.mean_logprob_same_template, report.mean_logprob_paraphrase
    );
    println!(
        "{:<28} {:<14} {:>4} {:>6} {:>6} {:>6}",
        "method", "stratum", "n", "MRR", "R@10", "R@50"
    );
    for r in &report.rows {
        println!(
            "{:<28} {:<14} {:>4} {:>6.3} {:>6.3} {:>6.3}",
            r.method, r.stratum, r.queries, r.mrr, r.recall_at_10, r.recall_at_50
        );
    }
    Ok(())
}

fn run_lds(a: &LdsArgs) -> anyhow::Result<()> {
    let (regime, fraction) = match a.regime {
        RegimeArg::Random => (bank::Regime::Random, a.fraction.unwrap_or(0.5)),
        RegimeArg::FixedOrder => (bank::Regime::FixedOrder, a.fraction.unwrap_or(0.99)),
    };
    if !(fraction > 0.0 && fraction < 1.0) {
        anyhow::bail!("--fraction {fraction}: must be in (0, 1)");
    }
    a.report.check()?;
    let recipe = read_recipe(&a.config)?;
    let queries = tda_trace::read_queries(&a.queries, "--queries")?;
    let methods = if a.methods.is_empty() {
        Method::defaults()
    } else {
        a.methods.clone()
    };
    let spec = BankSpec {
        models: a.models as usize,
        fraction,
        seed: a.seed,
        regime,
    };
    let read = a.read.read_options();
    let pb = bar(
        spec.models as u64 + 1,
        "{spinner} bank [{bar:30}] {pos}/{len} models {msg} ({eta})",
    );
    let report = with_backend!(a.device, |B, AD, device| {
        let mut train = |job: &tda_train::TrainJob, ex: &tda_train::Examples| {
            let steps = job.config.train.steps;
            bank::train_on::<AD>(job, ex, &device, &mut |s| {
                pb.set_message(format!("step {}/{steps} loss {:.3}", s.step, s.loss));
            })
        };
        let bank = bank::build(
            &a.bank,
            &a.corpus,
            &read,
            &recipe,
            &spec,
            &mut train,
            &mut |p| pb.set_position(p.done as u64),
        )?;
        pb.finish_and_clear();
        eprintln!(
            "bank {}: {} models on {:.0} % of {} documents, {:?} regime ({} trained now, {:.0} s)",
            a.bank.display(),
            bank.models.len(),
            100.0 * fraction,
            bank.docs.len(),
            a.regime,
            bank.trained,
            bank.train_seconds
        );
        let settings = InfluenceSettings {
            trace: TraceOptions {
                damping: a.damping,
                ..TraceOptions::default()
            },
            ..InfluenceSettings::default()
        };
        let checkpoints = if a.checkpoints > 0 {
            let pb = step_bar();
            let mut train = |job: &tda_train::TrainJob, ex: &tda_train::Examples| {
                bank::train_on::<AD>(job, ex, &device, &mut |s| on_step(&pb, s))
            };
            let c = bank::ensure_checkpoints(
                &bank,
                &a.corpus,
                &read,
                &recipe,
                a.checkpoints as usize,
                &mut train,
            )?;
            pb.finish_and_clear();
            c
        } else {
            Vec::new()
        };
        lds::evaluate::<AD>(
            &bank,
            &a.corpus,
            &read,
            &queries,
            &methods,
            settings,
            &checkpoints,
            a.resamples as usize,
            a.seed,
            &device,
            &mut |m| eprintln!("{m}"),
        )?
    });
    let out = Output {
        eval: "lds",
        settings: serde_json::json!({
            "corpus": a.corpus,
            "queries": a.queries,
            "bank": a.bank,
            "recipe": recipe_name(&a.config),
            "models": a.models,
            "fraction": fraction,
            "regime": spec.regime,
            "seed": a.seed,
            "damping": format!("{:?}", a.damping),
            "resamples": a.resamples,
            "checkpoints": a.checkpoints,
            "measurement": "logprob",
        }),
        report: &report,
    };
    if a.report.emit(&out)? {
        return Ok(());
    }
    println!(
        "LDS over {} models ({:.0} % subsets of {} documents, {:?} regime), {} queries; 95 % bootstrap interval over subsets",
        report.models,
        100.0 * report.fraction,
        report.documents,
        a.regime,
        report.queries
    );
    println!(
        "{:<24} {:>7}  {:>17}  {:>8}",
        "method", "LDS", "95 % CI", "time s"
    );
    for r in &report.rows {
        println!(
            "{:<24} {:>7.3}  [{:>6.3}, {:>6.3}]  {:>8.1}",
            r.name(),
            r.score.lds,
            r.score.ci95[0],
            r.score.ci95[1],
            r.seconds
        );
    }
    Ok(())
}

fn run_tail_patch(t: &TailPatchArgs) -> anyhow::Result<()> {
    let a = &t.world;
    a.report.check()?;
    let methods = a.methods();
    let (corpus, world) = write_world(a)?;
    let model = world_model(a, &corpus, &world)?;
    let report = with_backend!(a.device, |B, AD, device| {
        tda_eval::tail_patch::evaluate::<AD>(
            &model,
            &corpus,
            &world.queries,
            &methods,
            a.settings(),
            a.prefilter as usize,
            t.top_k as usize,
            a.seed,
            &a.work,
            &device,
            &mut |m| eprintln!("{m}"),
        )?
    });
    let mut settings = a.settings_json();
    settings["top_k"] = t.top_k.into();
    let out = Output {
        eval: "tail-patch",
        settings,
        report: &report,
    };
    if a.report.emit(&out)? {
        return Ok(());
    }
    println!(
        "tail-patch: {} queries, one step at lr {:.2e} on the top {} documents",
        report.queries, report.lr, report.k
    );
    println!(
        "{:<28} {:>10}  {:>21}  {:>7}  {:>30}",
        "ranking", "mean Δ", "95 % CI", "raised", "Δ − Δ(bm25) [95 % CI, paired]"
    );
    for r in &report.rows {
        let vs = r.minus_bm25.map_or(String::new(), |[m, lo, hi]| {
            format!("{m:+.4} [{lo:+.4}, {hi:+.4}]")
        });
        println!(
            "{:<28} {:>+10.4}  [{:>+9.4}, {:>+9.4}]  {:>6.0}%  {:>30}",
            r.method,
            r.mean_delta,
            r.ci95[0],
            r.ci95[1],
            100.0 * r.raised,
            vs
        );
    }
    Ok(())
}

fn run_cite(a: &CiteEvalArgs) -> anyhow::Result<()> {
    use tda_context::{Method as CiteMethod, Options};
    a.report.check()?;
    let names: Vec<String> = if a.methods.is_empty() {
        vec!["context-cite".into(), "mirage".into(), "loo".into()]
    } else {
        a.methods.clone()
    };
    let methods: Vec<(String, Options)> = names
        .iter()
        .map(|n| {
            let method = match n.as_str() {
                "context-cite" => CiteMethod::context_cite(),
                "loo" => CiteMethod::LeaveOneOut,
                _ => CiteMethod::Mirage,
            };
            let o = Options {
                method,
                min_share: method.default_min_share(),
                ..Options::default()
            };
            (n.clone(), o)
        })
        .collect();
    let m =
        tda_model::load_folder::<tda_model::device::CpuAutodiff>(&a.model, &Default::default())?;
    let fingerprint = tda_trace::model_fingerprint(&a.model)?;
    let report =
        tda_eval::cite_eval::evaluate(&m, a.examples as usize, a.seed, &methods, &mut |s| {
            eprintln!("{s}")
        })?;
    let out = Output {
        eval: "cite",
        settings: serde_json::json!({
            "model": a.model,
            "model_fingerprint": fingerprint,
            "examples": a.examples,
            "seed": a.seed,
        }),
        report: &report,
    };
    if a.report.emit(&out)? {
        return Ok(());
    }
    println!(
        "citations on {} planted RAG examples ({} sentences, {} with a tie distractor), reference answers teacher-forced",
        report.examples, report.sentences, report.tie_sentences
    );
    println!(
        "{:<32} {:>6} {:>6} {:>6} {:>8}  {:>25}  {:>18}",
        "method", "P", "R", "F1", "F1 ties", "faithful: top-1/rnd top-3/rnd", "fwd bwd ms/answer"
    );
    for r in &report.rows {
        let f = r.faithfulness.map_or(String::new(), |f| {
            format!("{:.2}/{:.2} {:.2}/{:.2}", f[0], f[1], f[2], f[3])
        });
        let c = r.cost.map_or(String::new(), |c| {
            format!("{:.1} {:.1} {:.0}", c[0], c[1], c[2])
        });
        println!(
            "{:<32} {:>6.3} {:>6.3} {:>6.3} {:>8.3}  {:>25}  {:>18}",
            r.method, r.all.precision, r.all.recall, r.all.f1, r.ties.f1, f, c
        );
    }
    Ok(())
}

fn run_curation(a: &CurationArgs) -> anyhow::Result<()> {
    use tda_eval::curation_eval::{corrupted_world, rankings, rows};
    a.report.check()?;
    let recipe = read_recipe(&a.config)?;
    let mut worlds = Vec::with_capacity(a.seeds as usize);
    with_backend!(a.device, |B, AD, device| {
        for seed in 0..a.seeds as u64 {
            let w = corrupted_world(a.people as usize, seed);
            let dir = a.work.join(format!("seed-{seed}"));
            let corpus = dir.join("corpus.jsonl");
            let jsonl = w.corpus_jsonl();
            let same = std::fs::read(&corpus).is_ok_and(|b| b == jsonl.as_bytes());
            if !same && dir.join("model.json").exists() {
                anyhow::bail!(
                    "{}: this folder holds the world and model of other --people; use another --work folder or delete it",
                    dir.display()
                );
            }
            if !same {
                tda_io::write_file(&corpus, jsonl.as_bytes())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", corpus.display()))?;
            }
            let pb = step_bar();
            let (model_dir, _, trained) = bank::ensure_model_on::<AD>(
                &dir,
                &corpus,
                &tda_corpus::ReadOptions::default(),
                &recipe,
                &device,
                &mut |s| on_step(&pb, s),
            )?;
            pb.finish_and_clear();
            eprintln!(
                "seed {seed}: {} documents ({} shuffled, {} swapped), model {} ({})",
                w.items.len(),
                w.shuffled.len(),
                w.swapped.len(),
                model_dir.display(),
                if trained { "trained now" } else { "cached" }
            );
            let m = tda_model::load_folder::<AD>(&model_dir, &device)?;
            let fp = tda_trace::model_fingerprint(&model_dir)?;
            let r = rankings(&m.model, &m.tokenizer, &corpus, &fp)?;
            worlds.push((w, r));
        }
        Ok::<(), anyhow::Error>(())
    })?;
    let rows = rows(&worlds);
    let out = serde_json::json!({
        "eval": "curation",
        "settings": {
            "work": a.work,
            "recipe": recipe_name(&a.config),
            "people": a.people,
            "seeds": a.seeds,
            "top": "10 %",
        },
        "documents": worlds.iter().map(|(w, _)| w.items.len()).collect::<Vec<_>>(),
        "chance": 0.1,
        "rows": rows,
    });
    if a.report.emit(&out)? {
        return Ok(());
    }
    println!(
        "curation: recall of the corrupted documents in the top 10 % of each ranking, {} world(s) of {} biographies + 10 % corrupted (chance 0.10)",
        a.seeds, a.people
    );
    println!(
        "{:<36} {:>6} {:>9} {:>9}",
        "ranking", "all", "shuffled", "swapped"
    );
    for r in &rows {
        println!(
            "{:<36} {:>6.2} {:>9.2} {:>9.2}",
            r.method, r.all, r.shuffled, r.swapped
        );
    }
    Ok(())
}
