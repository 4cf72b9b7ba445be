//! The training loop: packed sequences, AdamW, warm-up + cosine, global-norm clipping, proximal term.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use tda_model::{hf, summed_nll, TokenBatch, Tokenizer, Transformer};

use crate::config::TrainParams;
use crate::TrainError;

/// Cuts the token stream of `docs` (each followed by `eot`) into sequences of exactly `seq_len`
/// tokens; the incomplete tail is dropped. Deterministic.
pub fn pack(docs: &[Vec<u32>], eot: u32, seq_len: usize) -> Vec<Vec<u32>> {
    let stream: Vec<u32> = docs
        .iter()
        .flat_map(|d| d.iter().copied().chain(std::iter::once(eot)))
        .collect();
    stream.chunks_exact(seq_len).map(<[u32]>::to_vec).collect()
}

/// One training example per document instead of a packed stream: `eot`, the document's tokens,
/// `eot`, cut into consecutive pieces of at most `seq_len` tokens (pieces of fewer than two
/// tokens are dropped: they have no target). Returns the sequences and, for each, the index of
/// its document. With examples aligned to documents, removing a document removes exactly its
/// sequences ([`train_subset`]). Deterministic.
pub fn document_sequences(
    docs: &[Vec<u32>],
    eot: u32,
    seq_len: usize,
) -> (Vec<Vec<u32>>, Vec<usize>) {
    let mut seqs = Vec::new();
    let mut owner = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let ids: Vec<u32> = std::iter::once(eot)
            .chain(d.iter().copied())
            .chain(std::iter::once(eot))
            .collect();
        for piece in ids.chunks(seq_len.max(2)) {
            if piece.len() >= 2 {
                seqs.push(piece.to_vec());
                owner.push(i);
            }
        }
    }
    (seqs, owner)
}

/// What the caller sees after each step (for a progress bar).
#[derive(Clone, Debug)]
pub struct StepInfo {
    pub step: usize,
    pub steps: usize,
    /// Mean next-token loss of this step's batch (without the proximal term).
    pub loss: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
}

/// Summary of a training run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainReport {
    pub steps: usize,
    pub sequences: usize,
    pub tokens_seen: usize,
    pub first_loss: f64,
    pub final_loss: f64,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub checkpoints: Vec<PathBuf>,
    /// What was read of the corpus (filled in by [`crate::job::run`]).
    pub corpus: Option<tda_corpus::ReadStats>,
}

/// The parameters at the start of fine-tuning, flattened, by id (for the proximal term).
type StartParams<B> = HashMap<ParamId, Tensor<<B as AutodiffBackend>::InnerBackend, 1>>;

/// Sum of squared gradient entries over all parameters, plus the proximal gradient α(θ − θ₀)
/// added in place when `start` is given.
struct GradPass<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    start: Option<(&'a StartParams<B>, f64)>,
    sq_norm: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradPass<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(mut g) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        if let Some((start, alpha)) = self.start {
            if let Some(theta0) = start.get(&param.id) {
                let theta = param.val().inner();
                let diff = theta.clone() - theta0.clone().reshape(theta.dims());
                g = g + diff * alpha;
            }
        }
        self.sq_norm += g.clone().square().sum().into_scalar().elem::<f64>();
        self.grads.register::<B::InnerBackend, D>(param.id, g);
    }
}

/// Multiplies every gradient by `scale`.
struct ScaleGrads<'a> {
    grads: &'a mut GradientsParams,
    scale: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g * self.scale);
        }
    }
}

/// Copies of all parameters (flattened), keyed by id: θ_start of the proximal term.
struct Snapshot<B: AutodiffBackend> {
    out: HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Snapshot<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val().inner();
        let n = t.shape().num_elements();
        self.out.insert(param.id, t.reshape([n]));
    }
}

/// One optimiser step at a time: forward, mean next-token loss, backward, proximal gradient,
/// global-norm clipping, AdamW with the scheduled learning rate.
pub struct Trainer<B: AutodiffBackend> {
    /// Always `Some` between calls; taken during the optimiser step so parameters are updated in place.
    model: Option<Transformer<B>>,
    optim: burn::optim::adaptor::OptimizerAdaptor<burn::optim::AdamW, Transformer<B>, B>,
    start: Option<HashMap<ParamId, Tensor<B::InnerBackend, 1>>>,
    params: TrainParams,
    /// Steps taken so far.
    pub step: usize,
}

impl<B: AutodiffBackend> Trainer<B> {
    pub fn new(model: Transformer<B>, params: &TrainParams) -> Result<Self, TrainError> {
        params.validate().map_err(TrainError::Config)?;
        if params.seq_len > model.config.max_positions {
            return Err(TrainError::Config(format!(
                "train.seq_len ({}) exceeds the model's max_positions ({})",
                params.seq_len, model.config.max_positions
            )));
        }
        let optim = AdamWConfig::new()
            .with_weight_decay(params.weight_decay as f32)
            .with_epsilon(1e-8)
            .with_beta_2(0.95)
            .init::<B, Transformer<B>>();
        let start = (params.proximal > 0.0).then(|| {
            let mut s = Snapshot::<B> {
                out: HashMap::new(),
            };
            model.visit(&mut s);
            s.out
        });
        Ok(Self {
            model: Some(model),
            optim,
            start,
            params: params.clone(),
            step: 0,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &Transformer<B> {
        self.model.as_ref().expect("model present between steps")
    }

    /// The trained model.
    pub fn into_model(self) -> Transformer<B> {
        self.model.expect("model present between steps")
    }

    /// Counts a step without an update (a batch whose every sequence was left out): the
    /// learning-rate schedule stays aligned with a run that took it.
    pub fn skip(&mut self) {
        self.step += 1;
    }

    /// One step on `batch`; returns (mean loss without the proximal term, learning rate).
    pub fn step(&mut self, batch: &TokenBatch) -> Result<(f64, f64), TrainError> {
        let model = self.model.take().expect("model present between steps");
        let device = model.embed.device();
        let n_targets = batch.n_targets().max(1) as f64;
        let logits = model.forward(batch.to_tensor::<B>(&device));
        let loss = summed_nll(logits, batch) / n_targets;
        let loss_value = loss.clone().into_scalar().elem::<f64>();
        if !loss_value.is_finite() {
            self.model = Some(model);
            return Err(TrainError::Diverged {
                step: self.step,
                loss: loss_value,
            });
        }
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut pass = GradPass::<B> {
            grads: &mut grads,
            start: self.start.as_ref().map(|s| (s, self.params.proximal)),
            sq_norm: 0.0,
        };
        model.visit(&mut pass);
        let norm = pass.sq_norm.sqrt();
        if self.params.grad_clip > 0.0 && norm > self.params.grad_clip {
            model.visit(&mut ScaleGrads {
                grads: &mut grads,
                scale: self.params.grad_clip / norm,
            });
        }
        let lr = self.params.lr_at(self.step);
        self.model = Some(self.optim.step(lr, model, grads));
        self.step += 1;
        Ok((loss_value, lr))
    }
}

/// Trains `model` on `sequences` (each at most `params.seq_len` tokens; shorter ones are
/// right-padded) and saves it as an HF folder in `out_dir` (also every `checkpoint_every` steps,
/// atomically). `on_step` is called after every step. Returns the trained model and a report.
pub fn train<B: AutodiffBackend>(
    model: Transformer<B>,
    tokenizer: &Tokenizer,
    sequences: &[Vec<u32>],
    params: &TrainParams,
    out_dir: &Path,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<(Transformer<B>, TrainReport), TrainError> {
    train_subset(model, tokenizer, sequences, None, params, out_dir, on_step)
}

/// [`train`] with the data order of the full run fixed: batches are drawn from all `sequences`
/// exactly as [`train`] draws them, then the sequences with `keep[i] == false` are removed from
/// their batch (the loss is the mean over the batch's remaining targets; a batch left empty
/// takes no update but counts as a step). So a run without some documents sees the others in the
/// same order, in the same steps, at the same learning rates (the "leave-some-out with a fixed
/// data order" of Bae et al. 2024). `keep == None` is [`train`].
pub fn train_subset<B: AutodiffBackend>(
    model: Transformer<B>,
    tokenizer: &Tokenizer,
    sequences: &[Vec<u32>],
    keep: Option<&[bool]>,
    params: &TrainParams,
    out_dir: &Path,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<(Transformer<B>, TrainReport), TrainError> {
    if let Some(k) = keep {
        if k.len() != sequences.len() {
            return Err(TrainError::Config(format!(
                "{} keep flags for {} sequences",
                k.len(),
                sequences.len()
            )));
        }
    }
    if sequences.is_empty() {
        return Err(TrainError::Config(format!(
            "the corpus is too small: it yields no sequence of {} tokens",
            params.seq_len
        )));
    }
    let mut trainer = Trainer::new(model, params)?;
    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut order: Vec<usize> = Vec::new();
    let mut report = TrainReport {
        steps: params.steps,
        sequences: sequences.len(),
        tokens_seen: 0,
        first_loss: f64::NAN,
        final_loss: f64::NAN,
        seconds: 0.0,
        tokens_per_s: 0.0,
        checkpoints: Vec::new(),
        corpus: None,
    };
    let t0 = Instant::now();
    for step in 0..params.steps {
        let mut batch_seqs = Vec::with_capacity(params.batch_size);
        while batch_seqs.len() < params.batch_size {
            if order.is_empty() {
                order = (0..sequences.len()).collect();
                order.shuffle(&mut rng);
            }
            let i = order.pop().unwrap();
            batch_seqs.push((i, &sequences[i]));
        }
        let kept: Vec<Vec<u32>> = batch_seqs
            .iter()
            .filter(|(i, _)| keep.is_none_or(|k| k[*i]))
            .map(|(_, s)| s.to_vec())
            .collect();
        if kept.is_empty() {
            trainer.skip();
            continue;
        }
        let batch = TokenBatch::new(&kept, 0).map_err(|e| TrainError::Config(e.to_string()))?;
        let (loss_value, lr) = trainer.step(&batch)?;
        report.tokens_seen += batch.lengths.iter().sum::<usize>();
        if step == 0 {
            report.first_loss = loss_value;
        }
        report.final_loss = loss_value;
        let secs = t0.elapsed().as_secs_f64();
        on_step(&StepInfo {
            step: step + 1,
            steps: params.steps,
            loss: loss_value,
            lr,
            tokens_per_s: report.tokens_seen as f64 / secs.max(1e-9),
        });
        let last = step + 1 == params.steps;
        if params.checkpoint_every > 0 && (step + 1) % params.checkpoint_every == 0 && !last {
            let dir = out_dir
                .join("checkpoints")
                .join(format!("step-{:06}", step + 1));
            let rec = TrainingRecord::new(params, step + 1).to_bytes();
            hf::save_folder_with(
                &trainer.model().valid(),
                tokenizer,
                &dir,
                &[(TRAINING_RECORD, &rec)],
            )?;
            report.checkpoints.push(dir);
        }
    }
    report.seconds = t0.elapsed().as_secs_f64();
    report.tokens_per_s = report.tokens_seen as f64 / report.seconds.max(1e-9);
    let rec = TrainingRecord::new(params, params.steps).to_bytes();
    hf::save_folder_with(
        &trainer.model().valid(),
        tokenizer,
        out_dir,
        &[(TRAINING_RECORD, &rec)],
    )?;
    Ok((trainer.into_model(), report))
}

/// File of the training record inside a model folder written by `tda train`.
pub const TRAINING_RECORD: &str = "tda_training.json";

/// How a model folder was trained: the `[train]` settings (its `proximal` coefficient is the `α`
/// of multi-stage influence) and the steps done. Written by [`train`] into every saved folder.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainingRecord {
    pub producer: String,
    pub steps_done: usize,
    pub train: TrainParams,
}

impl TrainingRecord {
    fn new(params: &TrainParams, steps_done: usize) -> Self {
        Self {
            producer: format!("tda {}", env!("CARGO_PKG_VERSION")),
            steps_done,
            train: params.clone(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("the record serialises")
    }

    /// The record of the folder `dir`: `None` when it has none (a folder not trained by `tda`),
    /// an error when the file exists but cannot be read or parsed.
    pub fn read(dir: &Path) -> Result<Option<Self>, TrainError> {
        let p = dir.join(TRAINING_RECORD);
        match std::fs::read(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TrainError::File {
                path: p,
                msg: e.to_string(),
            }),
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| TrainError::File {
                    path: p.clone(),
                    msg: format!("invalid training record: {e}"),
                }),
        }
    }
}
