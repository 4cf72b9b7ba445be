//! `tda self-influence`: training documents (or windows) with the largest ∇L(z)ᵀ (G + λI)⁻¹ ∇L(z)
//! (outliers, mislabelled or corrupted data), printed or written as a filter list.

use std::path::PathBuf;

use clap::Args;
use tda_curvature::Damping;
use tda_model::device::DeviceKind;
use tda_trace::fit::load_checked;
use tda_trace::{model_fingerprint, Granularity};

use super::trace::{parse_damping, parse_top_k, TopKArg};
use crate::output::{bar, print_json};
use crate::with_backend;

#[derive(Args)]
#[command(
    after_help = "Self-influence ∇L(z)ᵀ (G + λI)⁻¹ ∇L(z) of every window of the corpus (≥ 0; large = the model would change most if the window were up-weighted: outliers, mislabeled, corrupted or memorised data). A document is ranked by its most self-influential window (--granularity window ranks windows).

Filter list: --out flagged.jsonl --top-pct P writes the top P % of documents, most suspicious first, one JSON object per line: {rank, doc_id, window, span, text, score, windows, best_window_score}; drop them from a corpus by `doc_id`, e.g. `jq -r .doc_id flagged.jsonl`.

Examples:
  tda self-influence --model runs/demo/model --factors runs/demo/factors --corpus runs/demo/corpus.jsonl --top-k 20
  tda self-influence --model M --factors F --corpus C.jsonl --top-pct 10 --out flagged.jsonl
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
    /// Results to keep, or `all`.
    #[arg(long, default_value = "20", value_parser = parse_top_k, conflicts_with = "top_pct")]
    pub top_k: TopKArg,
    /// Keep the top P % of the documents (windows), 0 < P ≤ 100, rounded up.
    #[arg(long, value_parser = parse_pct)]
    pub top_pct: Option<f64>,
    /// document (ranked by its most self-influential window) or window.
    #[arg(long, default_value = "document")]
    pub granularity: Granularity,
    /// Write the kept rows as jsonl (the filter list).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub read: super::CorpusArgs,
    #[command(flatten)]
    pub pairs: super::PairArgs,
    #[command(flatten)]
    pub windows: super::WindowArgs,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long, default_value = "f32", help = super::DTYPE_HELP)]
    pub dtype: tda_model::ModelDtype,
    #[arg(long)]
    pub json: bool,
}

fn parse_pct(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("top-pct {s:?}: a percentage in (0, 100]")),
    }
}

pub fn run(a: &SelfInfluenceArgs) -> anyhow::Result<()> {
    if let Some(out) = &a.out {
        if out.extension().and_then(|e| e.to_str()) != Some("jsonl") {
            anyhow::bail!(
                "--out {}: the filter list is jsonl (name it *.jsonl)",
                out.display()
            );
        }
        crate::output::check_out(out, tda_io::Output::File)?;
    }
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder_as::<AD>(&a.model, &device, a.dtype)?;
        let fp = model_fingerprint(&a.model)?;
        let factors = load_checked(&a.factors, &fp, &m.model.linear_layers())?;
        let source = a.pairs.source(&a.corpus, &a.read)?;
        let pb = bar(
            source.total_bytes().unwrap_or(0),
            "self-influence [{bar:30}] {bytes}/{total_bytes} {elapsed}",
        );
        let top_k = if a.top_pct.is_some() { None } else { a.top_k.0 };
        let (mut rows, pass) = tda_trace::self_influence(
            &m.model,
            &m.tokenizer,
            &factors,
            &source,
            a.damping,
            top_k,
            &a.windows.options(),
            a.granularity,
            &mut |_, bytes| pb.set_position(bytes),
        )?;
        pb.finish_and_clear();
        eprintln!("corpus {pass}");
        if let Some(pct) = a.top_pct {
            let n = rows.len();
            let keep = ((pct / 100.0 * n as f64).ceil() as usize).clamp(1, n);
            rows.truncate(keep);
            eprintln!("kept the top {pct} %: {keep} of {n}");
        }
        if let Some(out) = &a.out {
            let mut text = String::new();
            for r in &rows {
                text.push_str(&serde_json::to_string(r)?);
                text.push('\n');
            }
            tda_io::write_file(out, text.as_bytes())?;
            eprintln!("wrote {} flagged rows to {}", rows.len(), out.display());
        }
        if a.json {
            return print_json(&rows);
        }
        for r in &rows {
            let place = match r.windows {
                Some(n) if n > 1 => format!("{} (best of {n} windows: #{})", r.doc_id, r.window),
                Some(_) => r.doc_id.clone(),
                None => format!("{}#{}", r.doc_id, r.window),
            };
            println!(
                "{:>4}. {:.4e}  {place}  {}",
                r.rank,
                r.score,
                r.text.chars().take(100).collect::<String>()
            );
        }
        Ok(())
    })
}
