//! `tda fit`: corpus → windows → batches → taps of the training loss → [`FactorFitter`] passes →
//! factors (saved once, atomically, with the model fingerprint).

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use tda_curvature::{storage, FactorFitter, Factors, FitConfig, Pass, Strategy};
use tda_model::{frozen, Tokenizer, Transformer};

use crate::budget::{MemoryBudget, TapPlan};
use crate::candidates::{for_each_batch, DocSource, PassStats, WindowOptions};
use crate::device::{ComputeOn, DeviceBases};
use crate::error::{Result, TraceError};
use crate::host::{device_taps, host_taps, Labels, Scalar};
use crate::modules::ModuleSelection;

/// Labels of the pseudo-gradients used for A, S and Λ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fisher {
    /// Labels sampled from the model (true Fisher = Gauss-Newton for cross-entropy), seeded: window
    /// `i` of a pass uses its own RNG stream `(seed, pass, i)`, so results do not depend on the batch size.
    True { seed: u64 },
    /// The data's own next tokens.
    Empirical,
}

impl std::str::FromStr for Fisher {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "true" => Ok(Self::True { seed: 0 }),
            "empirical" => Ok(Self::Empirical),
            _ => Err(format!("unknown fisher {s:?} (true or empirical)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FitOptions {
    pub strategy: Strategy,
    pub modules: ModuleSelection,
    pub fisher: Fisher,
    /// Block-diagonal A/S with at most this width per block.
    pub max_block: Option<usize>,
    pub windows: WindowOptions,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            strategy: Strategy::Ekfac,
            modules: ModuleSelection::Blocks,
            fisher: Fisher::True { seed: 0 },
            max_block: None,
            windows: WindowOptions::default(),
        }
    }
}

/// Progress of a fit (for a progress bar).
#[derive(Clone, Copy, Debug)]
pub struct FitProgress {
    pub pass: Pass,
    pub bytes_done: u64,
    pub total_bytes: Option<u64>,
    pub windows: usize,
    pub tokens: usize,
}

/// What a fit did and where the time went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FitReport {
    pub strategy: String,
    pub fingerprint: String,
    /// The model's `--dtype` (absent for a merged sharded fit, whose parts do not record it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_dtype: String,
    pub layers: Vec<String>,
    /// What each pass read (the same every pass, checked).
    pub corpus: PassStats,
    pub windows: usize,
    pub tokens: u64,
    pub covariance_pass_s: f64,
    /// Eigendecompositions of A and S (faer, f64, layers in parallel), per matrix size.
    pub eigen_s: f64,
    pub eigen_sizes: Vec<usize>,
    pub lambda_pass_s: f64,
    /// Of the passes: model forward + backward, device → host copies, factor accumulation.
    pub model_s: f64,
    /// Forwards + backwards of the passes (one per batch unless the memory budget split batches:
    /// fewer windows per forward, or layer groups).
    #[serde(default)]
    pub model_passes: usize,
    pub copy_s: f64,
    pub accumulate_s: f64,
    pub total_s: f64,
    /// A merged sharded fit: the number of shards (the pass times are the shards' total).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
}

/// Fits factors of `model` on `source`. `fingerprint` is stored in the factors.
pub fn fit<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    source: &DocSource,
    opts: &FitOptions,
    fingerprint: &str,
    progress: &mut dyn FnMut(&FitProgress),
) -> Result<(Factors, FitReport)> {
    let t_all = Instant::now();
    if opts.windows.precision != crate::device::Precision::F32 {
        return Err(TraceError::Usage(
            "factors are fitted in f32 (bf16 covariances give broken eigenvectors): --precision applies to trace".into(),
        ));
    }
    let mut fitter = new_fitter(model, opts)?;
    let specs = fitter.specs().to_vec();
    let fz = frozen(model);
    let mut report = FitReport {
        strategy: opts.strategy.to_string(),
        fingerprint: fingerprint.to_string(),
        model_dtype: tda_model::ModelDtype::name_of(model.dtype()),
        layers: specs.iter().map(|s| s.name.clone()).collect(),
        ..Default::default()
    };
    let mut pass_no = 0u64;
    let mut loss_targets = None;
    while let Some(pass) = fitter.pass() {
        let t_pass = Instant::now();
        let (read, targets) = run_pass(
            &fz,
            tokenizer,
            source,
            opts,
            &mut fitter,
            &mut report,
            progress,
        )?;
        // Every pass must read the same corpus: a file changed under a running fit is an error.
        if pass_no > 0 && report.corpus != read {
            return Err(TraceError::Usage(format!(
                "the corpus changed during the fit: pass 1 read {}, pass {} read {read}",
                report.corpus,
                pass_no + 1
            )));
        }
        report.windows = read.windows;
        report.corpus = read;
        let pass_s = t_pass.elapsed().as_secs_f64();
        let t_end = Instant::now();
        fitter.end_pass()?;
        let end_s = t_end.elapsed().as_secs_f64();
        // Loss targets of the windows (every pass reads the same ones).
        loss_targets.get_or_insert(targets);
        match pass {
            Pass::Covariance => {
                report.covariance_pass_s = pass_s;
                report.eigen_s = end_s;
            }
            Pass::Lambda => report.lambda_pass_s = pass_s + end_s,
        }
        pass_no += 1;
    }
    report.eigen_sizes = eigen_sizes(&specs, opts);
    let mut factors = fitter.finish(fingerprint)?;
    factors.loss_targets = loss_targets;
    report.tokens = factors.tokens;
    report.total_s = t_all.elapsed().as_secs_f64();
    Ok((factors, report))
}

/// A fitter for `opts` on the tracked layers of `model`, at its first pass.
fn new_fitter<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    opts: &FitOptions,
) -> Result<FactorFitter> {
    let specs = opts.modules.specs(&model.linear_layers(), opts.max_block)?;
    Ok(FactorFitter::new(specs, fit_config(opts))?)
}

pub(crate) fn fit_config(opts: &FitOptions) -> FitConfig {
    let config = FitConfig::new(opts.strategy);
    match opts.max_block {
        Some(w) => config.with_max_block(w),
        None => config,
    }
}

/// The sizes of the eigendecompositions a fit does (for the report).
pub(crate) fn eigen_sizes(specs: &[tda_curvature::LayerSpec], opts: &FitOptions) -> Vec<usize> {
    let mut sizes = vec![];
    if opts.strategy.needs_covariance() {
        for s in specs {
            for d in [s.d_a(), s.d_out] {
                let w = opts.max_block.map_or(d, |m| m.min(d));
                if !sizes.contains(&w) {
                    sizes.push(w);
                }
            }
        }
        sizes.sort_unstable();
    }
    sizes
}

/// Feeds the taps of every window of `source` (its shard `opts.windows.shard`) to the fitter's
/// current pass (not ended). Returns what the pass read and its loss targets. True-Fisher labels
/// of window `w` of document `d` are drawn from the stream `(seed, pass, d, w)`, so a window
/// gets the same labels whatever its batch or shard.
pub(crate) fn run_pass<AD: AutodiffBackend>(
    fz: &Transformer<AD>,
    tokenizer: &Tokenizer,
    source: &DocSource,
    opts: &FitOptions,
    fitter: &mut FactorFitter,
    report: &mut FitReport,
    progress: &mut dyn FnMut(&FitProgress),
) -> Result<(PassStats, u64)> {
    let pass = fitter.pass().expect("a pass in progress");
    // The Λ pass after a covariance pass draws its own labels.
    let pass_no = u64::from(pass == Pass::Lambda && opts.strategy.needs_covariance());
    let specs = fitter.specs().to_vec();
    let pad = fz.config.eos_token_id.unwrap_or(0);
    let total_bytes = source.total_bytes();
    let budget = opts
        .windows
        .memory_budget
        .unwrap_or_else(MemoryBudget::auto);
    let (mut windows, mut tokens, mut targets) = (0usize, 0usize, 0u64);
    // An `ekfac` Λ pass on the device rotates with the eigenbases uploaded once per pass.
    let bases = match (opts.windows.compute, pass, opts.strategy) {
        (ComputeOn::Device, Pass::Lambda, Strategy::Ekfac) => Some(
            DeviceBases::upload(fitter, &fz.embed.device()).ok_or_else(|| {
                TraceError::Usage("the Λ pass has no eigenbases to rotate with".into())
            })?,
        ),
        _ => None,
    };
    let read = for_each_batch(
        source,
        tokenizer,
        &fz.config,
        &opts.windows,
        |cands, bytes| {
            let seq_len = cands.iter().map(|c| c.ids.len()).max().unwrap_or(0);
            let sampled = matches!(opts.fisher, Fisher::True { .. });
            let plan = TapPlan::new(&specs, &fz.config, cands.len(), seq_len, sampled, budget)?;
            report.model_passes += plan.passes(cands.len());
            for rows in plan.chunks(cands.len()) {
                let cands = &cands[rows];
                let batch = crate::candidates::candidate_batch(cands, pad)?;
                let keys: Vec<u64> = cands
                    .iter()
                    .map(|c| crate::host::window_key(c.doc, c.window))
                    .collect();
                let labels = match opts.fisher {
                    Fisher::Empirical => Labels::Data,
                    Fisher::True { seed } => Labels::Sampled {
                        seed: seed ^ pass_no.wrapping_mul(0x5851_F42D_4C95_7F2D),
                        keys: &keys,
                    },
                };
                for group in &plan.groups {
                    let specs = &specs[group.clone()];
                    if opts.windows.compute == ComputeOn::Device {
                        let taps = device_taps(fz, specs, &batch, Scalar::Loss(labels))?;
                        report.model_s += taps.t_model;
                        let t0 = Instant::now();
                        let sums =
                            crate::device::batch_sums(fitter, bases.as_ref(), group.start, &taps)?;
                        fitter.add_layer_sums(group.start, &sums)?;
                        report.accumulate_s += t0.elapsed().as_secs_f64();
                        continue;
                    }
                    let taps = host_taps(fz, specs, &batch, Scalar::Loss(labels))?;
                    report.model_s += taps.t_model;
                    report.copy_s += taps.t_copy;
                    let t0 = Instant::now();
                    fitter.add_layers(group.start, &taps.layer_batches())?;
                    report.accumulate_s += t0.elapsed().as_secs_f64();
                }
            }
            windows += cands.len();
            targets += cands
                .iter()
                .map(|c| c.ids.len().saturating_sub(c.loss_from) as u64)
                .sum::<u64>();
            tokens += cands.iter().map(|c| c.ids.len()).sum::<usize>();
            progress(&FitProgress {
                pass,
                bytes_done: bytes,
                total_bytes,
                windows,
                tokens,
            });
            Ok(())
        },
    )?;
    Ok((read, targets))
}

/// Writes `factors` and the fit report into the folder `dir` as one artifact: both files appear
/// together or not at all (built in a temporary folder, then renamed; other files already in `dir`
/// are kept). The factor file is never modified afterwards.
pub fn save(factors: &Factors, report: &FitReport, dir: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(report).expect("a fit report serialises");
    tda_io::write_dir(dir, |tmp| -> Result<()> {
        storage::save(factors, &tmp.join(crate::FACTORS_FILE))?;
        tda_io::write_file(&tmp.join(crate::FIT_REPORT_FILE), json.as_bytes())?;
        tda_io::carry_over(dir, tmp)?;
        Ok(())
    })
}

/// Loads the factors in `dir` (a folder written by [`save`], or the factor file itself) and checks
/// them against the model: fingerprint, then tracked layers and shapes.
pub fn load_checked(
    dir: &Path,
    fingerprint: &str,
    model_layers: &[tda_model::LinearInfo],
) -> Result<Factors> {
    let path = if dir.is_dir() {
        dir.join(crate::FACTORS_FILE)
    } else {
        dir.to_path_buf()
    };
    if !path.exists() {
        return Err(TraceError::Usage(format!(
            "{}: no factors here (run `tda fit` first)",
            path.display()
        )));
    }
    // Fingerprint and layers come from the header alone, so a file that does not fit the model
    // is refused before its tensors are read (a bad header cannot make us allocate).
    let (found, specs) = storage::layers(&path)?;
    if found != fingerprint {
        return Err(TraceError::Mismatch(format!(
            "{}: these factors were fitted on another model (fingerprint differs): refit with `tda fit --model` on this model",
            path.display()
        )));
    }
    for s in &specs {
        match model_layers.iter().find(|m| m.name == s.name) {
            None => {
                return Err(TraceError::Mismatch(format!(
                    "{}: layer {} of the factors is not in the model",
                    path.display(),
                    s.name
                )))
            }
            Some(m) if m.d_in != s.d_in || m.d_out != s.d_out || m.has_bias != s.has_bias => {
                return Err(TraceError::Mismatch(format!(
                    "{}: layer {}: factors are {}×{} (bias {}), model is {}×{} (bias {})",
                    path.display(),
                    s.name,
                    s.d_out,
                    s.d_in,
                    s.has_bias,
                    m.d_out,
                    m.d_in,
                    m.has_bias
                )))
            }
            _ => {}
        }
    }
    let f = storage::load(&path, Some(fingerprint))?;
    Ok(f)
}
