//! `tda eval fact-tracing` and `tda eval tail-patch`: the planted fact world, its cached model,
//! and the two evaluations on it.

use super::*;

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
    /// What the influence methods measure on each query's completion (as `tda trace
    /// --measurement`: logprob, margin or loss).
    #[arg(long, default_value = "logprob")]
    pub measurement: Measurement,
    /// Measure the fact's own tokens only: each completion without its final "." (the period
    /// is predicted the same way for every fact).
    #[arg(long)]
    pub fact_tokens_only: bool,
    /// Tracked layers of the influence methods (as `tda fit --modules`: all, blocks, mlp, or
    /// name patterns).
    #[arg(long, default_value = "all")]
    pub modules: tda_trace::ModuleSelection,
    /// Damping of the influence methods (as `tda trace --damping`).
    #[arg(long, default_value = "heuristic", value_parser = crate::cmd::trace::parse_damping)]
    pub damping: Damping,
    #[command(flatten)]
    pub report: ReportArgs,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
}

/// The fact world of `a` written to `a.work` (refusing a folder made for other settings).
fn write_world(a: &FactArgs) -> anyhow::Result<(PathBuf, tda_eval::facts::FactWorld)> {
    let mut world = tda_eval::facts::fact_world(a.people as usize, a.seed);
    let corpus = world.write_to(&a.work)?;
    if a.fact_tokens_only {
        for q in &mut world.queries {
            let c = &mut q.query.completion;
            *c = c.strip_suffix('.').unwrap_or(c).to_string();
        }
    }
    Ok((corpus, world))
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
                measurement: self.measurement,
                ..TraceOptions::default()
            },
            fit: tda_trace::FitOptions {
                modules: self.modules.clone(),
                ..Default::default()
            },
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
            "modules": format!("{:?}", self.modules),
            "measurement": format!("{:?}", self.measurement).to_lowercase(),
            "fact_tokens_only": self.fact_tokens_only,
        })
    }
}

pub(super) fn run_facts(a: &FactArgs) -> anyhow::Result<()> {
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

pub(super) fn run_tail_patch(t: &TailPatchArgs) -> anyhow::Result<()> {
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
