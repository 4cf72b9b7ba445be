//! `tda eval curation`: planted corrupted documents found by self-influence.

use super::*;

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

pub(super) fn run_curation(a: &CurationArgs) -> anyhow::Result<()> {
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
