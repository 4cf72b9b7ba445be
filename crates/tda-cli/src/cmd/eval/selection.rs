//! `tda eval selection`: fine-tuning on what `tda select` picks vs on random documents.

use super::*;

#[derive(Args)]
#[command(
    after_help = "Per seed: a base model pretrained on 400 generated biographies (it has never seen the question/answer format); a pool of 400 documents (340 biographies, 30 fact cards, 30 question/answer documents: the target skill, written to --work DIR/pool-SEED.jsonl); 16 target examples to score the pool against. Each `tda select` method (ekfac, grad-cosine, repsim, bm25) picks --pct % of the pool, beside a random --pct % and the whole pool; each subset fine-tunes the base model for 40 steps; reported: the mean NLL per completion token on 44 held-out question/answer examples (95 % CI over seeds), the paired difference to random, and the share of QA documents picked. CPU only.\n\nExamples:\n  tda eval selection --work runs/selection\n  tda eval selection --work runs/selection --seeds 5 --pct 5 --json --out selection.json"
)]
pub struct SelectionArgs {
    /// Folder for the pools (created).
    #[arg(long)]
    pub work: PathBuf,
    /// Seeds 0..N (each: its own data, tokenizer and base model).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub seeds: u64,
    /// Pretraining steps of each base model (batches of 16 × 64 tokens).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub base_steps: u64,
    /// grad-cosine's projected dimensions (as `tda select --projection-dim`).
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..))]
    pub projection_dim: u64,
    /// Share of the pool each method selects, in percent (0, 100).
    #[arg(long, default_value_t = 5.0)]
    pub pct: f64,
    #[command(flatten)]
    pub report: ReportArgs,
}

pub(super) fn run_selection(a: &SelectionArgs) -> anyhow::Result<()> {
    use tda_eval::selection_eval::{evaluate, SelectionSpec};
    a.report.check()?;
    if !(a.pct > 0.0 && a.pct < 100.0) {
        anyhow::bail!("--pct {}: must be in (0, 100)", a.pct);
    }
    crate::output::check_out(&a.work, tda_io::Output::Folder)?;
    let spec = SelectionSpec {
        seeds: a.seeds,
        base_steps: a.base_steps as usize,
        projection_dim: a.projection_dim as usize,
        pct: a.pct,
    };
    let report = evaluate(&spec, &a.work, &mut |m| eprintln!("{m}"))?;
    let out = Output {
        eval: "selection",
        settings: serde_json::to_value(spec)?,
        report: &report,
    };
    if a.report.emit(&out)? {
        return Ok(());
    }
    println!(
        "selection vs random: pool {} documents ({} QA = the target skill), {} selected per method; {} targets for scoring, {} for evaluation; grad-cosine {} dims; {} seed(s)",
        report.pool, report.qa_in_pool, report.selected, report.targets, report.evaluation, report.grad_cosine_dims, a.seeds
    );
    println!(
        "{:<22} {:>22} {:>24} {:>8}",
        "arm", "target NLL (95% CI)", "Δ vs random, paired", "QA frac"
    );
    for r in &report.rows {
        println!(
            "{:<22} {:>12.4} ± {:<7.4} {:>+14.4} ± {:<7.4} {:>8}",
            r.arm,
            r.target_nll[0],
            r.target_nll[1],
            r.minus_random[0],
            r.minus_random[1],
            r.qa_fraction.map_or("-".to_string(), |q| format!("{q:.2}"))
        );
    }
    Ok(())
}
