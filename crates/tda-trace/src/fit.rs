//! `tda fit`: corpus → windows → batches → taps of the training loss → [`FactorFitter`] passes →
//! factors (saved once, atomically, with the model fingerprint).

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use tda_curvature::{storage, FactorFitter, Factors, FitConfig, Pass, Strategy};
use tda_model::{frozen, Tokenizer, Transformer};

use crate::candidates::{for_each_batch, DocSource, PassStats, WindowOptions};
use crate::error::{Result, TraceError};
use crate::host::{host_taps, Labels, Scalar};
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
            modules: ModuleSelection::All,
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
    pub copy_s: f64,
    pub accumulate_s: f64,
    pub total_s: f64,
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
    let specs = opts.modules.specs(&model.linear_layers(), opts.max_block)?;
    let mut config = FitConfig::new(opts.strategy);
    if let Some(w) = opts.max_block {
        config = config.with_max_block(w);
    }
    let mut fitter = FactorFitter::new(specs.clone(), config)?;
    let fz = frozen(model);
    let pad = model.config.eos_token_id.unwrap_or(0);
    let total_bytes = source.total_bytes();
    let mut report = FitReport {
        strategy: opts.strategy.to_string(),
        fingerprint: fingerprint.to_string(),
        layers: specs.iter().map(|s| s.name.clone()).collect(),
        ..Default::default()
    };
    let mut pass_no = 0u64;
    while let Some(pass) = fitter.pass() {
        let t_pass = Instant::now();
        let mut index = 0u64;
        let mut tokens = 0usize;
        let read = for_each_batch(
            source,
            tokenizer,
            &model.config,
            &opts.windows,
            |cands, bytes| {
                let batch = crate::candidates::candidate_batch(cands, pad)?;
                let labels = match opts.fisher {
                    Fisher::Empirical => Labels::Data,
                    Fisher::True { seed } => Labels::Sampled {
                        seed: seed ^ pass_no.wrapping_mul(0x5851_F42D_4C95_7F2D),
                        first_index: index,
                    },
                };
                let taps = host_taps(&fz, &specs, &batch, Scalar::Loss(labels))?;
                report.model_s += taps.t_model;
                report.copy_s += taps.t_copy;
                let t0 = Instant::now();
                fitter.add(&taps.layer_batches())?;
                report.accumulate_s += t0.elapsed().as_secs_f64();
                index += cands.len() as u64;
                tokens += cands.iter().map(|c| c.ids.len()).sum::<usize>();
                progress(&FitProgress {
                    pass,
                    bytes_done: bytes,
                    total_bytes,
                    windows: index as usize,
                    tokens,
                });
                Ok(())
            },
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
        match pass {
            Pass::Covariance => {
                report.covariance_pass_s = pass_s;
                report.eigen_s = end_s;
            }
            Pass::Lambda => report.lambda_pass_s = pass_s + end_s,
        }
        pass_no += 1;
    }
    if opts.strategy.needs_covariance() {
        for s in &specs {
            for d in [s.d_a(), s.d_out] {
                let w = opts.max_block.map_or(d, |m| m.min(d));
                if !report.eigen_sizes.contains(&w) {
                    report.eigen_sizes.push(w);
                }
            }
        }
        report.eigen_sizes.sort_unstable();
    }
    let factors = fitter.finish(fingerprint)?;
    report.tokens = factors.tokens;
    report.total_s = t_all.elapsed().as_secs_f64();
    Ok((factors, report))
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
