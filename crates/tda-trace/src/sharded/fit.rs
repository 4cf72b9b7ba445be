//! Sharded fit: each task runs one pass over its shard and writes the pass's **sums** (f64, as
//! accumulated); a merge adds the sums of shards `0..n` in shard order, then does what the end of
//! the pass does in an unsharded fit (eigendecompositions, or the final factors).
//!
//! Stages per strategy (each `→` is a merge):
//! - `kfac`: covariance shards → factors.
//! - `ekfac`: covariance shards → **eigenbases** (a folder holding the K-FAC factors of the merged
//!   covariances and `stage.json`) → Λ shards (`--eigenbases`) → factors.
//! - `diagonal`: Λ shards → factors.
//!
//! Exactness: every sum is the unsharded sum taken in another order (f64), so A, S and Λ agree
//! with the unsharded fit to f64 rounding before they are stored as f32; with one shard the
//! result is bit-for-bit the unsharded fit. A merge's output does not depend on the order its
//! files are given in.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use tda_curvature::storage::{self, SumsHeader};
use tda_curvature::{FactorFitter, Factors, FitConfig, LayerSpec, Pass, Strategy};
use tda_model::{frozen, Tokenizer, Transformer};

use super::origin::{
    check_complete, merged_stats, source_fingerprint, source_settings, Origin, PartKind,
};
use crate::candidates::{window_len, DocSource};
use crate::error::{Result, TraceError};
use crate::fit::{eigen_sizes, fit_config, run_pass, FitOptions, FitProgress, FitReport};
use crate::Fisher;

/// The record of an eigenbases folder (the merged covariance pass of an `ekfac` fit).
pub const STAGE_FILE: &str = "stage.json";
const STAGE_FORMAT: &str = "tda-fit-eigenbases";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageRecord {
    pub format: String,
    /// The covariance pass, all shards together (stats and loss targets summed, `seconds` the
    /// shards' total).
    pub origin: Origin,
    /// Seconds of the merge (sums + eigendecompositions).
    pub merge_s: f64,
}

/// The eigenbases of a merged covariance pass, as a Λ-pass shard or merge reads them.
pub struct Stage {
    pub factors: Factors,
    pub record: StageRecord,
    /// Fingerprint of the two files (what the Λ partials record, so a stale one is refused).
    pub fingerprint: String,
}

impl Stage {
    /// Reads the eigenbases folder `dir`, checked against the model `fingerprint`.
    pub fn load(dir: &Path, fingerprint: &str) -> Result<Stage> {
        let json_path = dir.join(STAGE_FILE);
        let text = std::fs::read_to_string(&json_path).map_err(|_| {
            TraceError::Usage(format!(
                "{}: not an eigenbases folder (no {STAGE_FILE}; it is written by `tda merge` of the covariance partials)",
                dir.display()
            ))
        })?;
        let record: StageRecord = serde_json::from_str(&text)
            .ok()
            .filter(|r: &StageRecord| r.format == STAGE_FORMAT)
            .ok_or_else(|| {
                TraceError::Usage(format!(
                    "{}: not a valid eigenbases record",
                    json_path.display()
                ))
            })?;
        let factors_path = dir.join(crate::FACTORS_FILE);
        let (found, _) = storage::layers(&factors_path)?;
        if found != fingerprint || record.origin.model != fingerprint {
            return Err(TraceError::Mismatch(format!(
                "{}: these eigenbases were fitted on another model (fingerprint differs)",
                dir.display()
            )));
        }
        let factors = storage::load(&factors_path, Some(fingerprint))?;
        let a = tda_corpus::fingerprint_file(&factors_path)?;
        let b = tda_corpus::fingerprint_file(&json_path)?;
        Ok(Stage {
            factors,
            record,
            fingerprint: format!("{}:{:016x}:{}:{:016x}", a.size, a.hash, b.size, b.hash),
        })
    }

    fn bases(&self) -> Vec<(tda_curvature::Eigenbasis, tda_curvature::Eigenbasis)> {
        self.factors
            .layers
            .iter()
            .map(|l| {
                (
                    l.a_basis.clone().expect("K-FAC factors have eigenbases"),
                    l.s_basis.clone().expect("K-FAC factors have eigenbases"),
                )
            })
            .collect()
    }

    /// A fitter at the start of the Λ pass, from these eigenbases.
    fn lambda_fitter(&self, config: FitConfig) -> Result<FactorFitter> {
        Ok(FactorFitter::resume_lambda(
            self.factors.specs(),
            config,
            self.bases(),
            self.factors.tokens,
            self.factors.covariance_sequences,
        )?)
    }
}

/// Everything that must be equal across the shards of a fit.
fn settings(
    model: &tda_model::ModelConfig,
    opts: &FitOptions,
    specs: &[LayerSpec],
    source: &DocSource,
) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "strategy": opts.strategy.to_string(),
        "max_block": opts.max_block,
        "layers": specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "fisher": match opts.fisher {
            Fisher::True { seed } => format!("true seed {seed}"),
            Fisher::Empirical => "empirical".into(),
        },
        "max_len": window_len(&opts.windows, model)?,
        "source": source_settings(source),
    }))
}

/// Runs this shard's pass (`opts.windows.shard`) and writes its sums to the file `out`
/// (atomically: a task killed before the end leaves no file). The pass is the strategy's first,
/// or with `eigenbases` (an `ekfac` eigenbases folder) the Λ pass. Returns the partial's origin.
#[allow(clippy::too_many_arguments)]
pub fn fit_shard<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    source: &DocSource,
    opts: &FitOptions,
    fingerprint: &str,
    eigenbases: Option<&Path>,
    out: &Path,
    progress: &mut dyn FnMut(&FitProgress),
) -> Result<Origin> {
    let t0 = Instant::now();
    let specs = opts.modules.specs(&model.linear_layers(), opts.max_block)?;
    let mut settings = settings(&model.config, opts, &specs, source)?;
    let corpus = source_fingerprint(source)?;
    let (mut fitter, kind) = match eigenbases {
        None => {
            let f = FactorFitter::new(specs.clone(), fit_config(opts))?;
            match f.pass() {
                Some(Pass::Covariance) => (f, PartKind::FitCovariance),
                Some(Pass::Lambda) => (f, PartKind::FitLambda),
                None => {
                    return Err(TraceError::Usage(format!(
                        "--strategy {} needs no pass over the data: nothing to shard",
                        opts.strategy
                    )))
                }
            }
        }
        Some(dir) => {
            if opts.strategy != Strategy::Ekfac {
                return Err(TraceError::Usage(format!(
                    "--eigenbases: only ekfac has a Λ pass after its eigenbases (--strategy is {}): drop --eigenbases",
                    opts.strategy
                )));
            }
            let stage = Stage::load(dir, fingerprint)?;
            let rec = &stage.record.origin;
            if rec.settings != settings {
                return Err(TraceError::Mismatch(format!(
                    "{}: the covariance pass used other settings than this Λ pass (strategy, --modules, --max-block, --fisher/--seed, --max-len and the corpus options must be the same)",
                    dir.display()
                )));
            }
            if rec.corpus != corpus {
                return Err(TraceError::Mismatch(format!(
                    "{}: the covariance pass read another corpus (fingerprint differs)",
                    dir.display()
                )));
            }
            settings["eigenbases"] = stage.fingerprint.clone().into();
            (stage.lambda_fitter(fit_config(opts))?, PartKind::FitLambda)
        }
    };
    let mut report = FitReport::default();
    let (stats, targets) = run_pass(
        &frozen(model),
        tokenizer,
        source,
        opts,
        &mut fitter,
        &mut report,
        progress,
    )?;
    let sums = fitter.sums()?;
    let origin = Origin {
        kind,
        model: fingerprint.to_string(),
        corpus,
        shard: opts.windows.shard,
        settings,
        stats,
        loss_targets: targets,
        seconds: t0.elapsed().as_secs_f64(),
        eigenbases: eigenbases.map(|d| std::path::absolute(d).unwrap_or_else(|_| d.to_path_buf())),
    };
    let header = SumsHeader {
        config: fit_config(opts),
        specs,
        origin: serde_json::to_string(&origin).expect("an origin serialises"),
    };
    storage::save_sums(&sums, &header, out)?;
    Ok(origin)
}

/// What a merge of fit partials makes.
pub enum MergedFit {
    /// The eigenbases of an `ekfac` fit (the Λ pass comes next).
    Eigenbases {
        factors: Factors,
        record: StageRecord,
    },
    /// The final factors, as an unsharded `tda fit` writes them.
    Factors { factors: Factors, report: FitReport },
}

/// Each partial's path and origin, its sums header, and the positions in shard order.
type Headers = (Vec<(PathBuf, Origin)>, Vec<SumsHeader>, Vec<usize>);

/// The origin and sums header of each partial file, checked to be one complete set of shards.
fn read_headers(paths: &[PathBuf]) -> Result<Headers> {
    let mut parts = vec![];
    let mut headers = vec![];
    for p in paths {
        let (h, _) = storage::sums_header(p)?;
        let origin: Origin = serde_json::from_str(&h.origin).map_err(|e| {
            TraceError::Usage(format!(
                "{}: not a partial fit (bad origin: {e})",
                p.display()
            ))
        })?;
        parts.push((p.clone(), origin));
        headers.push(h);
    }
    let order = check_complete(&parts)?;
    for (h, (p, _)) in headers.iter().zip(&parts) {
        if h.config != headers[0].config || h.specs != headers[0].specs {
            return Err(TraceError::Mismatch(format!(
                "{}: its layers or fitting options differ from {}'s",
                p.display(),
                parts[0].0.display()
            )));
        }
    }
    Ok((parts, headers, order))
}

/// Merges the fit partials `paths` (all the shards of one pass, in any order).
pub fn merge_fit(paths: &[PathBuf]) -> Result<MergedFit> {
    let t0 = Instant::now();
    let (parts, headers, order) = read_headers(paths)?;
    let first = &parts[order[0]].1;
    let (specs, config) = (headers[0].specs.clone(), headers[0].config);
    let stats = merged_stats(&parts, &order);
    if stats.windows == 0 {
        return Err(TraceError::Usage(format!(
            "no windows in any of the {} shards: {stats}",
            order.len()
        )));
    }
    let shard_s: f64 = parts.iter().map(|(_, o)| o.seconds).sum();
    let loss_targets: u64 = parts.iter().map(|(_, o)| o.loss_targets).sum();
    let stage = match &first.eigenbases {
        Some(dir) => {
            let stage = Stage::load(dir, &first.model)?;
            if first.settings.get("eigenbases").and_then(|v| v.as_str()) != Some(&stage.fingerprint)
            {
                return Err(TraceError::Mismatch(format!(
                    "{}: these Λ partials were made from other eigenbases than {} holds now (stale partials: rerun the Λ shards)",
                    parts[order[0]].0.display(),
                    dir.display()
                )));
            }
            if stage.record.origin.stats != stats {
                return Err(TraceError::Mismatch(format!(
                    "the corpus changed between the passes: the covariance pass read {}, the Λ pass read {stats}",
                    stage.record.origin.stats
                )));
            }
            Some(stage)
        }
        None => None,
    };
    let mut fitter = match (&stage, first.kind) {
        (Some(s), _) => s.lambda_fitter(config)?,
        // The eigenbases of an ekfac fit are exactly the factors of a K-FAC fit.
        (None, PartKind::FitCovariance) if config.strategy == Strategy::Ekfac => FactorFitter::new(
            specs.clone(),
            FitConfig {
                strategy: Strategy::Kfac,
                ..config
            },
        )?,
        (None, _) => FactorFitter::new(specs.clone(), config)?,
    };
    for &i in &order {
        let (_, sums) = storage::load_sums(&parts[i].0)?;
        fitter.add_sums(&sums)?;
    }
    fitter.end_pass()?;
    let mut factors = fitter.finish(&first.model)?;
    let merge_s = t0.elapsed().as_secs_f64();
    let mut origin = first.clone();
    origin.stats = stats.clone();
    origin.loss_targets = loss_targets;
    origin.seconds = shard_s;
    if first.kind == PartKind::FitCovariance && config.strategy == Strategy::Ekfac {
        factors.loss_targets = Some(loss_targets);
        return Ok(MergedFit::Eigenbases {
            factors,
            record: StageRecord {
                format: STAGE_FORMAT.into(),
                origin,
                merge_s,
            },
        });
    }
    factors.loss_targets = Some(match &stage {
        Some(s) => s.record.origin.loss_targets,
        None => loss_targets,
    });
    let opts = FitOptions {
        strategy: config.strategy,
        max_block: config.max_block,
        ..Default::default()
    };
    let (covariance_pass_s, eigen_s, lambda_pass_s) = match (&stage, first.kind) {
        (Some(s), _) => (s.record.origin.seconds, s.record.merge_s, shard_s + merge_s),
        (None, PartKind::FitCovariance) => (shard_s, merge_s, 0.0),
        (None, _) => (0.0, 0.0, shard_s + merge_s),
    };
    let report = FitReport {
        strategy: config.strategy.to_string(),
        fingerprint: first.model.clone(),
        layers: specs.iter().map(|s| s.name.clone()).collect(),
        windows: stats.windows,
        corpus: stats,
        tokens: factors.tokens,
        covariance_pass_s,
        eigen_s,
        eigen_sizes: eigen_sizes(&specs, &opts),
        lambda_pass_s,
        total_s: covariance_pass_s + eigen_s + lambda_pass_s,
        shards: Some(order.len()),
        ..Default::default()
    };
    Ok(MergedFit::Factors { factors, report })
}

/// Writes a merge's result into the folder `out` (atomically): the factors and `fit.json` as
/// `tda fit` writes them, or the eigenbases (`factors.safetensors` + `stage.json`).
pub fn save_merged(merged: &MergedFit, out: &Path) -> Result<()> {
    match merged {
        MergedFit::Factors { factors, report } => crate::fit::save(factors, report, out),
        MergedFit::Eigenbases { factors, record } => {
            let json = serde_json::to_string_pretty(record).expect("a stage record serialises");
            tda_io::write_dir(out, |tmp| -> Result<()> {
                storage::save(factors, &tmp.join(crate::FACTORS_FILE))?;
                tda_io::write_file(&tmp.join(STAGE_FILE), json.as_bytes())?;
                Ok(())
            })
        }
    }
}
