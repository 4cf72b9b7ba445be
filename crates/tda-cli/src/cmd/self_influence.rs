//! `tda self-influence`: training windows with the largest ∇L(z)ᵀ (G + λI)⁻¹ ∇L(z) (outliers).

use std::path::PathBuf;

use clap::Args;
use tda_curvature::Damping;
use tda_model::device::DeviceKind;
use tda_trace::fit::load_checked;
use tda_trace::{model_fingerprint, DocSource};

use super::trace::{parse_damping, parse_top_k, TopKArg};
use crate::output::{bar, print_json};
use crate::with_backend;

#[derive(Args)]
#[command(
    after_help = "Self-influence ∇L(z)ᵀ (G + λI)⁻¹ ∇L(z) of every window of the corpus (≥ 0; large = the model would change most if the window were up-weighted: outliers, mislabeled or memorised data).

Examples:
  tda self-influence --model runs/demo/model --factors runs/demo/factors --corpus runs/demo/corpus.jsonl --top-k 20
  tda self-influence --model M --factors F --corpus C.jsonl --top-k all --json > self.json"
)]
pub struct SelfInfluenceArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub factors: PathBuf,
    #[arg(long)]
    pub corpus: PathBuf,
    #[arg(long, default_value = "heuristic", value_parser = parse_damping, allow_hyphen_values = true)]
    pub damping: Damping,
    /// Windows to print, or `all`.
    #[arg(long, default_value = "20", value_parser = parse_top_k)]
    pub top_k: TopKArg,
    #[command(flatten)]
    pub read: super::CorpusArgs,
    #[command(flatten)]
    pub windows: super::WindowArgs,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &SelfInfluenceArgs) -> anyhow::Result<()> {
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder::<AD>(&a.model, &device)?;
        let fp = model_fingerprint(&a.model)?;
        let factors = load_checked(&a.factors, &fp, &m.model.linear_layers())?;
        let source = DocSource::corpus_with(&a.corpus, a.read.read_options());
        let pb = bar(
            source.total_bytes().unwrap_or(0),
            "self-influence [{bar:30}] {bytes}/{total_bytes} {elapsed}",
        );
        let (rows, pass) = tda_trace::self_influence(
            &m.model,
            &m.tokenizer,
            &factors,
            &source,
            a.damping,
            a.top_k.0,
            &a.windows.options(),
            &mut |_, bytes| pb.set_position(bytes),
        )?;
        pb.finish_and_clear();
        eprintln!("corpus {pass}");
        if a.json {
            return print_json(&rows);
        }
        for r in &rows {
            println!(
                "{:>4}. {:.4e}  {}#{}  {}",
                r.rank,
                r.score,
                r.doc_id,
                r.window,
                r.text.chars().take(100).collect::<String>()
            );
        }
        Ok(())
    })
}
