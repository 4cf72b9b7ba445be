//! A bank of models retrained on random subsets of a corpus: the datamodels behind the linear
//! datamodeling score ([`crate::lds`]).
//!
//! Layout of a bank folder:
//! - `bank.json`: what the bank was made from (corpus fingerprint, recipe, subsets). A bank is
//!   reused only for the same inputs; other inputs are an error that names the folder.
//! - `full/`: the model trained on every document (attributions are computed on it).
//! - `subsets/subset-NNN.jsonl` and `models/subset-NNN/`: model `j` and its training documents.
//! - `full-checkpoints-K/` and `full-seed-S/`: the full run again with K checkpoints, and with
//!   another seed (for checkpoint and seed ensembles; made on demand).
//!
//! Two regimes ([`Regime`]):
//! - `Random`: each model is a `tda train` run (packed token stream) on its random subset, e.g.
//!   50 % of the documents: the LDS of TRAK and Kronfluence.
//! - `FixedOrder`: one training example per document, and each model leaves a few documents out
//!   (e.g. 1 %) of the full run's exact data order (Bae et al. 2024): the effect of removing
//!   those documents alone, without the noise of a different order.
//!
//! Invariants:
//! - The subsets are a deterministic function of (number of documents, [`BankSpec`]).
//! - Every model uses the recipe's seed and the full model's tokenizer, so models differ only by
//!   their data (same initialisation, same vocabulary).
//! - A model counts as done when its training record says every step was done; a killed run
//!   resumes with the first model not done (models are saved atomically).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use tda_corpus::{open_corpus, Document, Fnv, ReadOptions};
use tda_train::{Examples, TrainConfig, TrainJob, TrainingRecord};

/// How the models of a bank are trained (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Regime {
    /// `tda train` (packed) on random subsets.
    #[default]
    Random,
    /// Document examples, the full run's data order, a few documents left out.
    FixedOrder,
}

/// How many models, on which share of the documents, drawn from which seed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BankSpec {
    pub models: usize,
    /// Share of the documents each model is trained on, in (0, 1).
    pub fraction: f64,
    pub seed: u64,
    /// Absent in banks made before the regimes existed: `random`.
    #[serde(default)]
    pub regime: Regime,
}

impl Default for BankSpec {
    fn default() -> Self {
        Self {
            models: 32,
            fraction: 0.5,
            seed: 0,
            regime: Regime::Random,
        }
    }
}

impl BankSpec {
    /// The leave-1 %-out regime: 99 % kept, the full run's data order.
    pub fn drop_one_percent(models: usize, seed: u64) -> Self {
        Self {
            models,
            fraction: 0.99,
            seed,
            regime: Regime::FixedOrder,
        }
    }

    /// The examples of the full model in this regime.
    fn full_examples(&self) -> Examples {
        match self.regime {
            Regime::Random => Examples::Packed,
            Regime::FixedOrder => Examples::Documents { keep: None },
        }
    }
}

/// `spec.models` subsets of `0..n`, each of `round(fraction · n)` documents (at least 1, at most
/// `n − 1`), sorted. Deterministic in (`n`, `spec`).
pub fn draw_subsets(n: usize, spec: &BankSpec) -> Vec<Vec<usize>> {
    let k = ((spec.fraction * n as f64).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    (0..spec.models)
        .map(|j| {
            let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_mul(1_000_003) + j as u64);
            let mut all: Vec<usize> = (0..n).collect();
            all.shuffle(&mut rng);
            let mut s = all[..k].to_vec();
            s.sort_unstable();
            s
        })
        .collect()
}

/// What a bank folder was made from (`bank.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Manifest {
    /// FNV-1a of the documents' ids and texts, in corpus order.
    corpus: String,
    documents: usize,
    /// The training recipe as given (TOML text).
    recipe: String,
    spec: BankSpec,
    subsets: Vec<Vec<usize>>,
}

/// A bank whose models are all trained.
#[derive(Clone, Debug)]
pub struct Bank {
    pub dir: PathBuf,
    /// The corpus documents, in order (subset members index into this).
    pub docs: Vec<Document>,
    pub full: PathBuf,
    pub subsets: Vec<Vec<usize>>,
    pub models: Vec<PathBuf>,
    /// Models trained by this call (the others were already done).
    pub trained: usize,
    pub train_seconds: f64,
}

/// Progress of [`build`]: `done` of `total` models ready (the full model counts as one).
#[derive(Clone, Copy, Debug)]
pub struct BankProgress {
    pub done: usize,
    pub total: usize,
    /// The model just finished was trained now (not found done).
    pub trained: bool,
}

/// Errors of a bank: one line naming the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    #[error(transparent)]
    Train(#[from] tda_train::TrainError),
}

type Result<T> = std::result::Result<T, BankError>;

fn file_err(path: &Path, msg: impl std::fmt::Display) -> BankError {
    BankError::File {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Reads every document of `corpus` (the order subsets refer to).
pub fn read_docs(corpus: &Path, read: &ReadOptions) -> Result<Vec<Document>> {
    let mut reader = open_corpus(corpus, read).map_err(|e| file_err(corpus, e))?;
    let mut docs = Vec::new();
    for d in reader.by_ref() {
        docs.push(d.map_err(|e| file_err(corpus, e))?);
    }
    if docs.len() < 2 {
        return Err(file_err(
            corpus,
            format!(
                "a bank needs at least 2 documents, the corpus has {}",
                docs.len()
            ),
        ));
    }
    Ok(docs)
}

/// FNV-1a of the documents' ids and texts, in order (hex).
pub fn corpus_fingerprint(docs: &[Document]) -> String {
    let mut h = Fnv::new();
    for d in docs {
        h.write(d.id.as_bytes());
        h.write(&[0]);
        h.write(d.text.as_bytes());
        h.write(&[0]);
    }
    format!("{:016x}", h.0)
}

/// A from-scratch training job of `config` on `corpus` into `out`.
fn scratch_job(
    corpus: &Path,
    read: &ReadOptions,
    config: TrainConfig,
    tokenizer: Option<PathBuf>,
    out: &Path,
) -> TrainJob {
    TrainJob {
        corpus: corpus.to_path_buf(),
        read_options: read.clone(),
        config,
        init: None,
        tokenizer,
        out: out.to_path_buf(),
    }
}

fn is_done(dir: &Path, steps: usize) -> Result<bool> {
    Ok(TrainingRecord::read(dir)?.is_some_and(|r| r.steps_done == steps))
}

fn write_subset(docs: &[Document], members: &[usize], path: &Path) -> Result<()> {
    let mut s = String::new();
    for &i in members {
        let d = &docs[i];
        s.push_str(&serde_json::json!({ "id": d.id, "text": d.text }).to_string());
        s.push('\n');
    }
    tda_io::write_file(path, s.as_bytes()).map_err(|e| file_err(path, e))
}

/// The recipe `recipe` (TOML text of a [`TrainConfig`]) checked for training from scratch.
fn parse_recipe(dir: &Path, recipe: &str) -> Result<TrainConfig> {
    let config: TrainConfig = toml::from_str(recipe)
        .map_err(|e| file_err(dir, format!("the training recipe does not parse: {e}")))?;
    config
        .train
        .validate()
        .map_err(|e| file_err(dir, format!("the training recipe: {e}")))?;
    if config.model.is_none() {
        return Err(file_err(
            dir,
            "the training recipe needs a [model] section (models here are trained from scratch)",
        ));
    }
    Ok(config)
}

/// One model trained by `recipe` on `corpus` into `dir/model`, cached: `dir/model.json` records
/// the corpus fingerprint and the recipe; other inputs are an error naming `dir`. Returns the
/// model folder, the documents, and whether it was trained now.
pub fn ensure_model(
    dir: &Path,
    corpus: &Path,
    read: &ReadOptions,
    recipe: &str,
    train: &mut dyn FnMut(&TrainJob, &Examples) -> Result<()>,
) -> Result<(PathBuf, Vec<Document>, bool)> {
    let mut config = parse_recipe(dir, recipe)?;
    config.train.checkpoint_every = 0;
    let docs = read_docs(corpus, read)?;
    let record = serde_json::json!({ "corpus": corpus_fingerprint(&docs), "recipe": recipe });
    let path = dir.join("model.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let old: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| file_err(&path, format!("not a model record: {e}")))?;
            if old != record {
                return Err(file_err(
                    dir,
                    "this folder's model was trained on another corpus or recipe; use another folder or delete it",
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The record is written before training starts, so a model without one was made
            // by something else: never take it for this corpus's.
            if dir.join("model").exists() {
                return Err(file_err(
                    dir,
                    "holds a model folder without its record (model.json), made by something else; use another folder or delete it",
                ));
            }
            std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
            tda_io::write_file(&path, record.to_string().as_bytes())
                .map_err(|e| file_err(&path, e))?;
        }
        Err(e) => return Err(file_err(&path, e)),
    }
    let out = dir.join("model");
    let done = is_done(&out, config.train.steps)?;
    if !done {
        let job = scratch_job(corpus, read, config, None, &out);
        train(&job, &Examples::Packed)?;
    }
    Ok((out, docs, !done))
}

/// Trains what is missing of the bank in `dir` for `corpus` (read with `read`) and the recipe
/// `recipe` (TOML text of a [`TrainConfig`] with a `[model]` section): the full model, then one
/// model per subset. `train` runs one training job (the caller's backend and progress display).
/// Errors: a folder made for other inputs, a recipe that does not parse, a failed training.
pub fn build(
    dir: &Path,
    corpus: &Path,
    read: &ReadOptions,
    recipe: &str,
    spec: &BankSpec,
    train: &mut dyn FnMut(&TrainJob, &Examples) -> Result<()>,
    progress: &mut dyn FnMut(BankProgress),
) -> Result<Bank> {
    let config = parse_recipe(dir, recipe)?;
    if !(spec.fraction > 0.0 && spec.fraction < 1.0) || spec.models < 2 {
        return Err(file_err(
            dir,
            format!(
                "a bank needs at least 2 models and a fraction in (0, 1), got {} models and {}",
                spec.models, spec.fraction
            ),
        ));
    }
    let docs = read_docs(corpus, read)?;
    let manifest = Manifest {
        corpus: corpus_fingerprint(&docs),
        documents: docs.len(),
        recipe: recipe.to_string(),
        spec: *spec,
        subsets: draw_subsets(docs.len(), spec),
    };
    let manifest_path = dir.join("bank.json");
    match std::fs::read(&manifest_path) {
        Ok(bytes) => {
            let old: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| file_err(&manifest_path, format!("not a bank manifest: {e}")))?;
            if old != manifest {
                let what = if old.corpus != manifest.corpus {
                    "another corpus"
                } else if old.recipe != manifest.recipe {
                    "another training recipe"
                } else {
                    "other bank settings (models, fraction, seed or regime)"
                };
                return Err(file_err(
                    dir,
                    format!("this bank was built for {what}; use another --bank folder or delete this one"),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // (write_file creates the folder.)
            let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
            tda_io::write_file(&manifest_path, &bytes).map_err(|e| file_err(&manifest_path, e))?;
        }
        Err(e) => return Err(file_err(&manifest_path, e)),
    }
    std::fs::create_dir_all(dir.join("subsets")).map_err(|e| file_err(dir, e))?;

    let steps = config.train.steps;
    let total = manifest.subsets.len() + 1;
    let full = dir.join("full");
    let mut trained = 0;
    let t0 = Instant::now();
    let full_done = is_done(&full, steps)?;
    if !full_done {
        let mut job_config = config.clone();
        job_config.train.checkpoint_every = 0;
        let job = scratch_job(corpus, read, job_config, None, &full);
        train(&job, &spec.full_examples())?;
        trained += 1;
    }
    progress(BankProgress {
        done: 1,
        total,
        trained: !full_done,
    });
    let tokenizer = full.join("tokenizer.json");
    let mut models = Vec::with_capacity(manifest.subsets.len());
    for (j, members) in manifest.subsets.iter().enumerate() {
        let out = dir.join("models").join(format!("subset-{j:03}"));
        let done = is_done(&out, steps)?;
        if !done {
            let docs_path = dir.join("subsets").join(format!("subset-{j:03}.jsonl"));
            write_subset(&docs, members, &docs_path)?;
            let mut job_config = config.clone();
            job_config.train.checkpoint_every = 0;
            let mut job = scratch_job(
                &docs_path,
                &ReadOptions::default(),
                job_config,
                Some(tokenizer.clone()),
                &out,
            );
            let examples = match spec.regime {
                Regime::Random => Examples::Packed,
                Regime::FixedOrder => {
                    // The full corpus in its order; the left-out documents masked.
                    job.corpus = corpus.to_path_buf();
                    job.read_options = read.clone();
                    let mut keep = vec![false; docs.len()];
                    for &i in members {
                        keep[i] = true;
                    }
                    Examples::Documents { keep: Some(keep) }
                }
            };
            train(&job, &examples)?;
            trained += 1;
        }
        models.push(out);
        progress(BankProgress {
            done: j + 2,
            total,
            trained: !done,
        });
    }
    Ok(Bank {
        dir: dir.to_path_buf(),
        docs,
        full,
        subsets: manifest.subsets,
        models,
        trained,
        train_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The full model's training run again with `count` evenly spaced checkpoints (in
/// `dir/full-checkpoints/`), for checkpoint ensembles: the same recipe, seed and data order as
/// `full/`, so its last state is the full model. Returns the checkpoint folders, earliest first,
/// the final model last. Trained only if not done.
pub fn ensure_checkpoints(
    bank: &Bank,
    corpus: &Path,
    read: &ReadOptions,
    recipe: &str,
    count: usize,
    train: &mut dyn FnMut(&TrainJob, &Examples) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    let mut config = parse_recipe(&bank.dir, recipe)?;
    let steps = config.train.steps;
    let every = (steps / count.max(1)).max(1);
    config.train.checkpoint_every = every;
    let out = bank.dir.join(format!("full-checkpoints-{count}"));
    if !is_done(&out, steps)? {
        let spec: BankSpec = read_manifest(&bank.dir)?.spec;
        let job = scratch_job(corpus, read, config, None, &out);
        train(&job, &spec.full_examples())?;
    }
    let mut dirs: Vec<PathBuf> = (1..)
        .map(|i| i * every)
        .take_while(|&s| s < steps)
        .map(|s| out.join("checkpoints").join(format!("step-{s:06}")))
        .collect();
    dirs.push(out);
    Ok(dirs)
}

/// The full model and `count − 1` more runs of the recipe on the whole corpus with the seeds
/// after the recipe's (in `dir/full-seed-S/`, the full model's tokenizer), for seed ensembles
/// (TRAK-style: independently trained models averaged). Returns the full model first. Trained
/// only if not done.
pub fn ensure_seed_models(
    bank: &Bank,
    corpus: &Path,
    read: &ReadOptions,
    recipe: &str,
    count: usize,
    train: &mut dyn FnMut(&TrainJob, &Examples) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    let config = parse_recipe(&bank.dir, recipe)?;
    let spec: BankSpec = read_manifest(&bank.dir)?.spec;
    let mut dirs = vec![bank.full.clone()];
    for s in 1..count as u64 {
        let mut c = config.clone();
        c.train.seed = config.train.seed + s;
        c.train.checkpoint_every = 0;
        let out = bank.dir.join(format!("full-seed-{}", c.train.seed));
        if !is_done(&out, c.train.steps)? {
            let tokenizer = bank.full.join("tokenizer.json");
            let job = scratch_job(corpus, read, c, Some(tokenizer), &out);
            train(&job, &spec.full_examples())?;
        }
        dirs.push(out);
    }
    Ok(dirs)
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("bank.json");
    let bytes = std::fs::read(&path).map_err(|e| file_err(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| file_err(&path, format!("not a bank manifest: {e}")))
}

/// Runs `job` on the autodiff backend `AD` (for [`build`]'s `train`), with `on_step` per step.
pub fn train_on<AD: AutodiffBackend>(
    job: &TrainJob,
    examples: &Examples,
    device: &AD::Device,
    on_step: &mut dyn FnMut(&tda_train::StepInfo),
) -> Result<()> {
    tda_train::job::run_with::<AD>(job, examples, device, on_step)?;
    Ok(())
}

/// [`ensure_model`] trained on the autodiff backend `AD`, with `on_step` per training step.
pub fn ensure_model_on<AD: AutodiffBackend>(
    dir: &Path,
    corpus: &Path,
    read: &ReadOptions,
    recipe: &str,
    device: &AD::Device,
    on_step: &mut dyn FnMut(&tda_train::StepInfo),
) -> Result<(PathBuf, Vec<Document>, bool)> {
    let mut train = |job: &TrainJob, ex: &Examples| train_on::<AD>(job, ex, device, on_step);
    ensure_model(dir, corpus, read, recipe, &mut train)
}
