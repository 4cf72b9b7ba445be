//! `tda merge`: the reduce step of a sharded job — fit partials (sums) → eigenbases or factors,
//! trace partials (parquet) → the unsharded ranking.

use std::path::PathBuf;

use clap::Args;
use tda_trace::sharded::{merge_fit, merge_trace, save_merged, MergedFit};

use crate::cmd::trace::{parse_top_k, TopKArg};
use crate::output::print_json;

#[derive(Args)]
#[command(
    after_help = "Merges the partial files of ALL the shards 0..N-1 of one sharded `tda fit --shard` or `tda trace --shard` (any order). A missing shard, a shard given twice, or a partial of another model, corpus, settings or eigenbases (stale) is refused with a one-line error; nothing is written then.

Fit partials: sums are added in shard order (f64) and the pass is ended as in an unsharded fit: the covariance partials of ekfac give the EIGENBASES folder the Λ pass needs (`tda fit --shard I/N --eigenbases DIR`); those of kfac, and the Λ partials, give the factors folder (the same files as `tda fit --out`).
Trace partials: the top --top-k of the union, ranked as one unsharded pass (ties: the earlier document first), printed like `tda trace` (or --json) and written to --out (parquet).

Examples:
  tda merge parts/cov-*.part --out runs/x/eigenbases
  tda merge parts/lambda-*.part --out runs/x/factors
  tda merge parts/trace-*.parquet --top-k 50 --out scores.parquet --json"
)]
pub struct MergeArgs {
    /// The partial files (fit: *.part; trace: *.parquet).
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    /// Fit: the output folder (required). Trace: a parquet file of the merged ranking.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Trace: results per query, or `all` (held in memory) [default: what each shard kept, i.e.
    /// the unsharded `tda trace --top-k` of the shards].
    #[arg(long, value_parser = parse_top_k)]
    pub top_k: Option<TopKArg>,
    /// Print the merged trace (or the fit report) as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &MergeArgs) -> anyhow::Result<()> {
    for p in &a.parts {
        if !p.is_file() {
            anyhow::bail!("{}: no such partial file", p.display());
        }
    }
    let is_fit = tda_curvature::storage::sums_header(&a.parts[0]).is_ok();
    if is_fit {
        if a.top_k.is_some() {
            anyhow::bail!(
                "--top-k is for trace partials; {} is a fit partial",
                a.parts[0].display()
            );
        }
        let out = a.out.as_ref().ok_or_else(|| {
            anyhow::anyhow!("--out is required: the folder of the merged factors or eigenbases")
        })?;
        crate::output::check_out(out, tda_io::Output::Folder)?;
        let merged = merge_fit(&a.parts)?;
        save_merged(&merged, out)?;
        match &merged {
            MergedFit::Eigenbases { record, .. } => {
                eprintln!("corpus {}", record.origin.stats);
                eprintln!(
                    "merged {} covariance shards → eigenbases {} (next: the Λ pass, `tda fit … --shard I/N --eigenbases {}`)",
                    a.parts.len(),
                    out.display(),
                    out.display()
                );
                if a.json {
                    print_json(record)?;
                }
            }
            MergedFit::Factors { report, .. } => {
                eprintln!("corpus {}", report.corpus);
                eprintln!(
                    "merged {} shards → {} factors on {} windows ({} tokens) → {}",
                    a.parts.len(),
                    report.strategy,
                    report.windows,
                    report.tokens,
                    out.join(tda_trace::FACTORS_FILE).display()
                );
                if a.json {
                    print_json(report)?;
                }
            }
        }
        return Ok(());
    }
    if let Some(out) = &a.out {
        crate::output::check_out(out, tda_io::Output::File)?;
    }
    let out = merge_trace(&a.parts, a.top_k.map(|k| k.0))?;
    crate::output::print_output(&out, a.out.as_deref(), a.json)
}
