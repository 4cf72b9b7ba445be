//! `tda eval lds`: the linear datamodeling score over a bank of retrained models.

use super::*;

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
    /// Tracked layers of the influence methods (as `tda fit --modules`: all, blocks, mlp, or
    /// name patterns).
    #[arg(long, default_value = "all")]
    pub modules: tda_trace::ModuleSelection,
    /// Damping of the influence methods (as `tda trace --damping`).
    #[arg(long, default_value = "heuristic", value_parser = crate::cmd::trace::parse_damping)]
    pub damping: Damping,
    /// Also score each influence method as an ensemble over this many states of the full
    /// model's training run (evenly spaced checkpoints, the final model last; rows `M+ckptK`).
    /// Trains the run once more with checkpoints (cached in the bank).
    #[arg(long, default_value_t = 0)]
    pub checkpoints: u32,
    /// Also score each influence method as an ensemble over this many independently trained
    /// full models: the full model and runs of the recipe with the next seeds (TRAK-style;
    /// rows `M+seedsK`; cached in the bank).
    #[arg(long, default_value_t = 0)]
    pub seed_ensemble: u32,
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

pub(super) fn run_lds(a: &LdsArgs) -> anyhow::Result<()> {
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
            fit: tda_trace::FitOptions {
                modules: a.modules.clone(),
                ..Default::default()
            },
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
        let seed_models = if a.seed_ensemble > 1 {
            let pb = step_bar();
            let mut train = |job: &tda_train::TrainJob, ex: &tda_train::Examples| {
                bank::train_on::<AD>(job, ex, &device, &mut |s| on_step(&pb, s))
            };
            let m = bank::ensure_seed_models(
                &bank,
                &a.corpus,
                &read,
                &recipe,
                a.seed_ensemble as usize,
                &mut train,
            )?;
            pb.finish_and_clear();
            m
        } else {
            Vec::new()
        };
        tda_eval::lds::evaluate::<AD>(
            &bank,
            &a.corpus,
            &read,
            &queries,
            &methods,
            settings,
            &checkpoints,
            &seed_models,
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
            "modules": format!("{:?}", a.modules),
            "resamples": a.resamples,
            "checkpoints": a.checkpoints,
            "seed_ensemble": a.seed_ensemble,
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
