//! `tda demo` (the main job on the embedded default) and `tda synth-corpus`.

use std::path::PathBuf;

use clap::Args;
use tda_corpus::ReadOptions;
use tda_model::device::DeviceKind;
use tda_model::infer::{self, GenerateOptions};
use tda_train::{synthetic, TrainConfig, TrainJob};

use crate::with_backend;

/// The tiny model config, embedded so the demo runs from any directory.
const TINY_TOML: &str = include_str!("../../../../configs/tiny.toml");

#[derive(Args)]
#[command(
    after_help = "Example:\n  tda demo                    # corpus + tiny model under runs/demo, then generation and log-probs\n  tda demo --steps 50 --out /tmp/demo"
)]
pub struct DemoArgs {
    /// Working folder for the corpus and the model.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Number of generated biographies.
    #[arg(long, default_value_t = 400)]
    pub docs: usize,
    /// Override the training steps of configs/tiny.toml.
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
}

#[derive(Args)]
#[command(after_help = "Example:\n  tda synth-corpus --out corpus.jsonl --docs 1000 --seed 0")]
pub struct SynthArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 400)]
    pub docs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn synth(a: &SynthArgs) -> anyhow::Result<()> {
    let docs = synthetic::biographies(a.docs, a.seed);
    synthetic::write_jsonl(&docs, &a.out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.out.display()))?;
    eprintln!("wrote {} documents to {}", docs.len(), a.out.display());
    Ok(())
}

pub fn run(a: &DemoArgs) -> anyhow::Result<()> {
    let corpus = a.out.join("corpus.jsonl");
    let model_dir = a.out.join("model");
    let docs = synthetic::biographies(a.docs, a.seed);
    synthetic::write_jsonl(&docs, &corpus)
        .map_err(|e| anyhow::anyhow!("{}: {e}", corpus.display()))?;
    eprintln!(
        "1/3 corpus: {} biographies → {}",
        docs.len(),
        corpus.display()
    );

    let mut config: TrainConfig = toml::from_str(TINY_TOML)?;
    if let Some(s) = a.steps {
        config.train.steps = s;
    }
    config.train.seed = a.seed;
    let job = TrainJob {
        corpus: corpus.clone(),
        read_options: ReadOptions::default(),
        config,
        init: None,
        tokenizer: None,
        out: model_dir.clone(),
    };
    let report = super::train::train_job(&job, a.device)?;
    eprintln!(
        "2/3 trained configs/tiny.toml for {} steps: loss {:.3} → {:.3}, {:.0} tokens/s → {}",
        report.steps,
        report.first_loss,
        report.final_loss,
        report.tokens_per_s,
        model_dir.display()
    );

    let person = &docs[0].person;
    let prompt = format!("{} was born in", person.name);
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder::<B>(&model_dir, &device)?;
        let (ids, _) = infer::encode_for_scoring(&m.tokenizer, &m.model.config, &prompt)?;
        let opts = GenerateOptions {
            max_new_tokens: 12,
            stop_token: m.model.config.eos_token_id,
            ..Default::default()
        };
        let new = infer::generate(&m.model, &ids, &opts)?;
        let completion = m.tokenizer.decode(&new, true).map_err(anyhow::Error::msg)?;
        eprintln!("3/3 generation and log-probs");
        println!("prompt:     {prompt}");
        println!("completion: {}", completion.trim_end());
        println!(
            "truth:      {} was born in {} in {}.",
            person.name, person.city, person.year
        );
        let fact = format!(
            "{} was born in {} in {}.",
            person.name, person.city, person.year
        );
        let tokens = infer::score_text(&m.model, &m.tokenizer, &fact)?;
        println!("log-probs of the true sentence:");
        for t in &tokens {
            if let Some(lp) = t.logprob {
                println!("  {:>9.4}  {:?}", lp, t.token);
            }
        }
        let total: f32 = tokens.iter().filter_map(|t| t.logprob).sum();
        println!("  total {total:.3} over {} tokens", tokens.len() - 1);
    });
    Ok(())
}
