//! `tda eval`: are the attributions right? Quality measured against retrained models, planted
//! truth and causal checks; one module per evaluation, the shared reporting here.

mod cite;
mod curation;
mod facts;
mod lds;
mod selection;

pub use cite::CiteEvalArgs;
pub use curation::CurationArgs;
pub use facts::{FactArgs, TailPatchArgs};
pub use lds::LdsArgs;
pub use selection::SelectionArgs;

use std::path::PathBuf;

use clap::{Args, Subcommand};
use tda_curvature::Damping;
use tda_eval::bank::{self, BankSpec};

use tda_eval::methods::{InfluenceSettings, Method};
use tda_model::device::DeviceKind;
use tda_trace::{Measurement, TraceOptions};

use crate::cmd::CorpusArgs;
use crate::output::{bar, on_step, print_json, step_bar};
use crate::with_backend;

/// The tiny model recipe (`configs/tiny.toml`), the bank's default.
const TINY_TOML: &str = include_str!("../../../../../configs/tiny.toml");

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
    /// Fine-tuning on the documents each `tda select` method picks vs on as many random ones:
    /// the loss on a held-out target skill.
    Selection(SelectionArgs),
}

pub fn run(c: &EvalCommand) -> anyhow::Result<()> {
    match c {
        EvalCommand::Lds(a) => lds::run_lds(a),
        EvalCommand::FactTracing(a) => facts::run_facts(a),
        EvalCommand::TailPatch(a) => facts::run_tail_patch(a),
        EvalCommand::Cite(a) => cite::run_cite(a),
        EvalCommand::Curation(a) => curation::run_curation(a),
        EvalCommand::Selection(a) => selection::run_selection(a),
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
