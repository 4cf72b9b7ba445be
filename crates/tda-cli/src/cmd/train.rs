//! `tda train`.

use std::path::PathBuf;

use clap::Args;
use tda_model::device::DeviceKind;
use tda_train::{job, TrainConfig, TrainJob};

use crate::output::print_json;
use crate::with_backend;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  tda train --config configs/tiny.toml --corpus corpus.jsonl --out runs/tiny\n  tda train --config configs/finetune.toml --init runs/tiny --corpus ft.jsonl --out runs/ft --proximal 0.01"
)]
pub struct TrainArgs {
    /// Training config (TOML with [model] and [train]); see configs/.
    #[arg(long)]
    pub config: PathBuf,
    /// Corpus: .jsonl (field `text`), .txt (one document per line), .parquet, or a folder of them.
    #[arg(long)]
    pub corpus: PathBuf,
    #[command(flatten)]
    pub read: super::CorpusArgs,
    /// Output HF model folder (checkpoints go to OUT/checkpoints/).
    #[arg(long)]
    pub out: PathBuf,
    /// Fine-tune this HF model folder instead of training from scratch.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Use this tokenizer.json instead of training a BPE tokenizer on the corpus.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Override train.steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override train.seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Proximal term α/2·‖θ − θ_start‖² (fine-tuning).
    #[arg(long, value_name = "ALPHA")]
    pub proximal: Option<f64>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &TrainArgs) -> anyhow::Result<()> {
    crate::output::check_out(&a.out, tda_io::Output::Folder)?;
    let mut config = TrainConfig::from_file(&a.config)?;
    if let Some(s) = a.steps {
        config.train.steps = s;
    }
    if let Some(s) = a.seed {
        config.train.seed = s;
    }
    if let Some(p) = a.proximal {
        config.train.proximal = p;
    }
    let job = TrainJob {
        corpus: a.corpus.clone(),
        read_options: a.read.read_options(),
        config,
        init: a.init.clone(),
        tokenizer: a.tokenizer.clone(),
        out: a.out.clone(),
    };
    let report = train_job(&job, a.device)?;
    if let Some(c) = &report.corpus {
        eprintln!("corpus {}: {}", a.corpus.display(), c.summary());
    }
    if a.json {
        print_json(&report)
    } else {
        eprintln!(
            "trained {} steps: loss {:.3} → {:.3}, {:.0} tokens/s; model saved to {}",
            report.steps,
            report.first_loss,
            report.final_loss,
            report.tokens_per_s,
            a.out.display()
        );
        Ok(())
    }
}

/// Runs a training job with a progress bar showing loss and tokens/s.
pub fn train_job(job: &TrainJob, device: DeviceKind) -> anyhow::Result<tda_train::TrainReport> {
    let pb = crate::output::step_bar();
    let mut on_step = |s: &tda_train::StepInfo| crate::output::on_step(&pb, s);
    let report = with_backend!(device, |B, AD, dev| {
        job::run::<AD>(job, &dev, &mut on_step)?
    });
    pb.finish_and_clear();
    Ok(report)
}
