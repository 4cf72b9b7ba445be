//! `tda demo` (the main job on the embedded default: a planted fact world traced end to end,
//! one HTML report) and `tda synth-corpus`.

use std::path::{Path, PathBuf};

use clap::Args;
use tda_corpus::ReadOptions;
use tda_eval::biographies;
use tda_model::device::DeviceKind;
use tda_train::TrainConfig;

use crate::with_backend;

/// The tiny model config, embedded so the demo runs from any directory.
const TINY_TOML: &str = include_str!("../../../../configs/tiny.toml");

/// The RAG reader shipped in the binary (`tests/fixtures/rag`, 627 KB): the demo's citation view.
const READER: [(&str, &[u8]); 5] = [
    (
        "config.json",
        include_bytes!("../../../../tests/fixtures/rag/config.json"),
    ),
    (
        "generation_config.json",
        include_bytes!("../../../../tests/fixtures/rag/generation_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../../../tests/fixtures/rag/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../../../tests/fixtures/rag/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../../../tests/fixtures/rag/tokenizer_config.json"),
    ),
];

#[derive(Args)]
#[command(
    after_help = "What it does, in --out (default runs/demo): writes a world of planted facts (corpus.jsonl, queries.jsonl), trains configs/tiny.toml on it (cached: a re-run reuses the model), completes every fact prompt, fits EK-FAC factors (cached), traces a factual and a wrong generation back to the training documents (per token and per layer, the BM25 rank beside the influence rank; the index in index/), cites a RAG answer of the embedded reader, and writes one self-contained page, report.html.\n\nExamples:\n  tda demo                                # first run a few minutes on 2 cores, re-runs seconds; open runs/demo/report.html\n  tda demo --out /tmp/demo --people 12 --steps 60 --json"
)]
pub struct DemoArgs {
    /// Working folder: the world, the model, the factors, the index and report.html (created;
    /// reused when it holds the same world and recipe).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// People in the world (one planted fact each, 6–8 documents each).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(3..))]
    pub people: u32,
    /// Override the training steps of configs/tiny.toml.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: Option<u32>,
    /// Seed of the world (the recipe's own seed trains the model).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// RAG reader for the citation view (an HF folder); default: the reader embedded in the
    /// binary, written to OUT/reader.
    #[arg(long)]
    pub reader: Option<PathBuf>,
    /// Print the demo's data as JSON on stdout (report.html is written as well).
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  tda synth-corpus --out corpus.jsonl --docs 1000 --seed 0\n  tda synth-corpus --out corpus.jsonl --docs 200 --queries queries.jsonl --n-queries 32   # fact queries for tda trace / tda eval"
)]
pub struct SynthArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 400)]
    pub docs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write fact queries (jsonl of {id, prompt, completion}; id = the stating document).
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Number of fact queries: one per document, from the first, cycling through the four facts.
    #[arg(long, default_value_t = 32, requires = "queries")]
    pub n_queries: usize,
}

pub fn synth(a: &SynthArgs) -> anyhow::Result<()> {
    crate::output::check_out(&a.out, tda_io::Output::File)?;
    if let Some(q) = &a.queries {
        crate::output::check_out(q, tda_io::Output::File)?;
        if a.n_queries == 0 || a.n_queries > a.docs {
            anyhow::bail!(
                "--n-queries {}: must be between 1 and --docs ({})",
                a.n_queries,
                a.docs
            );
        }
    }
    let docs = biographies(a.docs, a.seed);
    tda_eval::write_jsonl(&docs, &a.out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.out.display()))?;
    eprintln!("wrote {} documents to {}", docs.len(), a.out.display());
    if let Some(path) = &a.queries {
        let queries = tda_eval::biographies::fact_queries(&docs, a.n_queries);
        let mut s = String::new();
        for q in &queries {
            s.push_str(&serde_json::to_string(q)?);
            s.push('\n');
        }
        tda_io::write_file(path, s.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        eprintln!("wrote {} fact queries to {}", queries.len(), path.display());
    }
    Ok(())
}

/// The recipe: configs/tiny.toml with `--steps`.
fn recipe(a: &DemoArgs) -> anyhow::Result<String> {
    let mut v: toml::Value = toml::from_str(TINY_TOML)?;
    if let Some(steps) = a.steps {
        v["train"]["steps"] = toml::Value::Integer(steps.into());
    }
    Ok(toml::to_string(&v)?)
}

/// The embedded reader written to `out/reader` (files rewritten only when they differ).
fn write_reader(out: &Path) -> anyhow::Result<PathBuf> {
    let dir = out.join("reader");
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot create the folder: {e}", dir.display()))?;
    for (name, bytes) in READER {
        let p = dir.join(name);
        if std::fs::read(&p).ok().as_deref() != Some(bytes) {
            tda_io::write_file(&p, bytes).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        }
    }
    Ok(dir)
}

pub fn run(a: &DemoArgs) -> anyhow::Result<()> {
    crate::output::check_out(&a.out, tda_io::Output::Folder)?;
    if let Some(r) = &a.reader {
        if !r.join("config.json").is_file() {
            anyhow::bail!(
                "--reader {}: not a model folder (no config.json)",
                r.display()
            );
        }
    }
    let recipe = recipe(a)?;
    let steps = toml::from_str::<TrainConfig>(&recipe)?.train.steps;
    let world = tda_eval::facts::fact_world(a.people as usize, a.seed);
    let corpus = world.write_to(&a.out)?;
    eprintln!(
        "1/6 world: {} people, {} documents, {} fact prompts → {}",
        a.people,
        world.docs.len(),
        world.queries.len(),
        corpus.display()
    );
    let pb = crate::output::step_bar();
    let mut loss: Option<[f32; 2]> = None;
    let t0 = std::time::Instant::now();
    let (model_dir, _, trained) = with_backend!(a.device, |B, AD, device| {
        tda_eval::bank::ensure_model_on::<AD>(
            &a.out,
            &corpus,
            &ReadOptions::default(),
            &recipe,
            &device,
            &mut |s| {
                crate::output::on_step(&pb, s);
                let l = loss.get_or_insert([s.loss as f32; 2]);
                l[1] = s.loss as f32;
            },
        )?
    });
    pb.finish_and_clear();
    let train_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "2/6 model: configs/tiny.toml, {steps} steps, {} → {}",
        match (trained, loss) {
            (true, Some([f, l])) => format!("trained now in {train_s:.0} s, loss {f:.3} → {l:.3}"),
            _ => "cached".into(),
        },
        model_dir.display()
    );
    let reader = match &a.reader {
        Some(r) => r.clone(),
        None => write_reader(&a.out)?,
    };
    let info = tda_eval::demo::ModelInfo {
        dir: model_dir,
        recipe: "configs/tiny.toml".into(),
        steps,
        parameters: 0,
        trained_now: trained,
        loss: if trained { loss } else { None },
        train_s,
    };
    let mut stage = 2;
    let demo = with_backend!(a.device, |B, AD, device| {
        tda_eval::demo::run::<AD>(
            &a.out,
            &world,
            a.seed,
            info,
            Some(&reader),
            &device,
            &mut |m| {
                stage += 1;
                eprintln!("{stage}/6 {m}");
            },
        )?
    });
    let html = a.out.join("report.html");
    tda_io::write_file(&html, tda_eval::demo::report::to_html(&demo).as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", html.display()))?;
    if a.json {
        crate::output::print_json(&demo)?;
    } else {
        print_demo(&demo);
    }
    eprintln!("report: {}", html.display());
    Ok(())
}

fn print_demo(d: &tda_eval::demo::Demo) {
    for t in &d.traced {
        println!(
            "{} {:?} → {:?} ({}; log p {:.3})",
            if t.correct { "factual:" } else { "wrong:  " },
            t.prompt,
            t.generated,
            if t.correct {
                "right".to_string()
            } else {
                format!("the planted fact is {:?}", t.truth)
            },
            t.logprob
        );
        println!(
            "  {:>9} {:>9} {:>11}  document",
            "influence", "BM25 rank", "score"
        );
        for s in &t.top {
            println!(
                "  {:>9} {:>9} {:>+11.3e}  [{}{}] {}",
                s.influence_rank,
                s.bm25_rank,
                s.score,
                s.role.label(),
                if s.names_generated {
                    ", names the generated object"
                } else {
                    ""
                },
                s.text
            );
        }
        for s in &t.stating {
            println!(
                "  stating document {}: influence rank {}, BM25 rank {}",
                s.doc_id, s.influence_rank, s.bm25_rank
            );
        }
    }
    if let Some(c) = &d.citation {
        println!("cited: {}", c.attribution.answer_with_citations);
    }
}
