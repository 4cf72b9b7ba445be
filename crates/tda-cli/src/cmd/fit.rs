//! `tda fit`: EK-FAC (or identity / diagonal / K-FAC) factors of a model on a corpus.

use std::path::PathBuf;

use clap::Args;
use tda_curvature::Strategy;
use tda_model::device::DeviceKind;
use tda_trace::fit::{self, FitProgress};
use tda_trace::{model_fingerprint, Fisher, FitOptions, ModuleSelection};

use crate::output::{bar, print_json};
use crate::with_backend;

#[derive(Args)]
#[command(
    after_help = "Fits the block-diagonal Gauss-Newton approximation used by `tda trace`: per tracked linear layer A = E[a aᵀ], S = E[g gᵀ] (per token, summed in f64 across batches), their eigendecompositions (faer, f64) and, for ekfac, the eigenvalue correction Λ (per sequence). Labels are sampled from the model (true Fisher, seeded) unless --fisher empirical. Factors are written once, atomically, to FACTORS_DIR/factors.safetensors with the model fingerprint; damping is applied at use.

Examples:
  tda fit --model runs/demo/model --corpus runs/demo/corpus.jsonl --out runs/demo/factors
  tda fit --model M --corpus C.jsonl --out F --strategy kfac --modules mlp --fisher empirical
  tda fit --model gpt2 --corpus C --out F --modules all --max-block 4096 --max-windows 20000   # lm_head too (50k wide: block-diagonal)
  tda fit --model qwen2 --corpus C --out F --max-len 2048 --stride 1536 --memory-budget 8GiB   # blocks (default), overlapping windows, bounded memory
  tda fit --model FT --corpus sft.jsonl --completion-only --out FT_F   # {prompt, completion} pairs, loss on completions (multi-stage fine-tuning factors)
  tda fit --model qwen2-bf16 --corpus C --out F --dtype bf16 --device cuda   # the model as stored (bf16); A, S, Λ in f32/f64

Sharded (one task per shard, e.g. a Slurm array job; see deploy/README.md). --shard I/N takes documents d with d mod N = I and writes the pass's sums to the FILE --out; `tda merge` adds the shards' sums exactly (in shard order) and refuses a missing, duplicate or mismatched shard. ekfac needs two passes:
  tda fit --model M --corpus C --shard $I/$N --out parts/cov-$I.part            # covariance pass
  tda merge parts/cov-*.part --out eigenbases                                   # A, S → eigenbases
  tda fit --model M --corpus C --shard $I/$N --eigenbases eigenbases --out parts/lambda-$I.part
  tda merge parts/lambda-*.part --out factors                                   # = tda fit --out factors
(kfac: the first merge writes the factors; diagonal: its only pass is the Λ pass.)"
)]
pub struct FitArgs {
    /// HF model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Corpus file or folder (jsonl, txt, parquet).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Output folder for the factors (with --shard: the partial FILE of this shard).
    #[arg(long)]
    pub out: PathBuf,
    /// Run one shard I/N (0-based) of the pass and write its sums to --out, for `tda merge`.
    #[arg(long, help_heading = "Sharding")]
    pub shard: Option<tda_trace::Shard>,
    /// ekfac, sharded: run the Λ pass with these eigenbases (the folder `tda merge` wrote from the
    /// covariance partials).
    #[arg(long, requires = "shard", help_heading = "Sharding")]
    pub eigenbases: Option<PathBuf>,
    /// identity, diagonal, kfac or ekfac.
    #[arg(long, default_value = "ekfac")]
    pub strategy: Strategy,
    /// Tracked layers: blocks (every linear layer of the transformer blocks), all (lm_head too; tied
    /// to the embeddings, its output-projection use only, as Kronfluence), mlp, or comma-separated
    /// name patterns (`*` wildcard).
    #[arg(long, default_value = "blocks")]
    pub modules: ModuleSelection,
    /// true (labels sampled from the model) or empirical (the data's tokens).
    #[arg(long, default_value = "true")]
    pub fisher: Fisher,
    /// Seed of the sampled labels (true Fisher only) [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Block-diagonal A and S with blocks of at most this width (for very wide layers).
    #[arg(long)]
    pub max_block: Option<usize>,
    #[command(flatten)]
    pub read: super::CorpusArgs,
    #[command(flatten)]
    pub pairs: super::PairArgs,
    #[command(flatten)]
    pub windows: super::WindowArgs,
    /// What one batch's taps, logits and autodiff graph may take in memory (e.g. 8GiB); a batch
    /// over it is tapped fewer windows at a time, then layer group by layer group (one forward +
    /// backward each; the factors do not change) [default: a quarter of this machine's memory].
    #[arg(long)]
    pub memory_budget: Option<tda_trace::MemoryBudget>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long, default_value = "f32", help = super::DTYPE_HELP)]
    pub dtype: tda_model::ModelDtype,
    /// Where A, S and Λ are summed: device (tensor operations where the model runs; only the
    /// per-layer sums are copied) or host (taps copied, faer GEMMs) [default: device with
    /// --device cuda, host with --device cpu, where the host's kernels are the faster].
    #[arg(long)]
    pub compute_on: Option<tda_trace::device::ComputeOn>,
    /// Print the fit report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &FitArgs) -> anyhow::Result<()> {
    let out_kind = match a.shard {
        Some(_) => tda_io::Output::File,
        None => tda_io::Output::Folder,
    };
    crate::output::check_out(&a.out, out_kind)?;
    if a.max_block.is_some() && !matches!(a.strategy, Strategy::Kfac | Strategy::Ekfac) {
        anyhow::bail!(
            "--max-block splits the A and S factors of kfac and ekfac; {} has none",
            a.strategy
        );
    }
    if let (Fisher::Empirical, Some(_)) = (a.fisher, a.seed) {
        anyhow::bail!(
            "--seed has no effect with --fisher empirical (labels are the data's tokens)"
        );
    }
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder_as::<AD>(&a.model, &device, a.dtype)?;
        let fp = model_fingerprint(&a.model)?;
        let opts = FitOptions {
            strategy: a.strategy,
            modules: a.modules.clone(),
            fisher: match a.fisher {
                Fisher::True { .. } => Fisher::True {
                    seed: a.seed.unwrap_or(0),
                },
                f => f,
            },
            max_block: a.max_block,
            windows: tda_trace::WindowOptions {
                shard: a.shard.unwrap_or_default(),
                memory_budget: a.memory_budget,
                compute: crate::cmd::compute_on(a.compute_on, a.device),
                ..a.windows.options()
            },
        };
        let source = a.pairs.source(&a.corpus, &a.read)?;
        if let Some(shard) = a.shard {
            let pb = bar(
                source.total_bytes().unwrap_or(0),
                "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
            );
            let origin = tda_trace::sharded::fit_shard(
                &m.model,
                &m.tokenizer,
                &source,
                &opts,
                &fp,
                a.eigenbases.as_deref(),
                &a.out,
                &mut |p: &FitProgress| {
                    pb.set_message(format!("{:?}", p.pass).to_lowercase());
                    pb.set_position(p.bytes_done.min(p.total_bytes.unwrap_or(u64::MAX)));
                },
            )?;
            pb.finish_and_clear();
            eprintln!("shard {shard}: corpus {}", origin.stats);
            if a.json {
                print_json(&origin)?;
            } else {
                eprintln!(
                    "{} of shard {shard} in {:.1}s → {} (merge all shards with `tda merge`)",
                    origin.kind,
                    origin.seconds,
                    a.out.display()
                );
            }
            return Ok(());
        }
        let pb = bar(
            source.total_bytes().unwrap_or(0),
            "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
        );
        let mut last_pass = None;
        let (factors, report) = fit::fit(
            &m.model,
            &m.tokenizer,
            &source,
            &opts,
            &fp,
            &mut |p: &FitProgress| {
                if last_pass != Some(p.pass) {
                    pb.reset();
                    last_pass = Some(p.pass);
                }
                pb.set_message(format!("{:?}", p.pass).to_lowercase());
                pb.set_position(p.bytes_done.min(p.total_bytes.unwrap_or(u64::MAX)));
            },
        )?;
        pb.finish_and_clear();
        fit::save(&factors, &report, &a.out)?;
        eprintln!("corpus {}", report.corpus);
        if a.json {
            print_json(&report)?;
        } else {
            eprintln!(
                "fitted {} on {} windows ({} tokens), {} layers: covariance pass {:.1}s, eigendecompositions {:.1}s (sizes {:?}), Λ pass {:.1}s → {}",
                report.strategy,
                report.windows,
                report.tokens,
                report.layers.len(),
                report.covariance_pass_s,
                report.eigen_s,
                report.eigen_sizes,
                report.lambda_pass_s,
                a.out.join(tda_trace::FACTORS_FILE).display()
            );
        }
        Ok(())
    })
}
