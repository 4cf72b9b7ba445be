//! Training and fine-tuning of `tda-model` transformers.
//!
//! Inputs: a TOML config (`configs/*.toml`), a corpus (read through `tda-corpus`), optionally an
//! HF folder to fine-tune. Output: an HF folder (`config.json`, `model.safetensors`,
//! `tokenizer.json`, …) plus `checkpoints/step-N/` folders of the same shape.
//!
//! - [`config`]: the TOML training config.
//! - [`tokenizer`]: byte-level BPE trained on the corpus.
//! - [`train`]: packing, AdamW with warm-up + cosine, global-norm clipping, proximal term,
//!   checkpoints.
//! - [`job`]: a whole `tda train` run (tokenizer, model init or load, training, save).
//!
//! Invariants: the same seed, config and corpus give bit-identical weights; every model folder
//! and checkpoint appears whole or not at all (written through `tda-model`'s `save_folder`, which
//! uses `tda-io`); a diverging loss stops training with an error instead of saving NaNs.

pub mod config;
pub mod job;
pub mod tokenizer;
pub mod train;

use std::path::PathBuf;

pub use config::{ModelShape, TrainConfig, TrainParams};
pub use job::{read_texts, Examples, TrainJob};
pub use tokenizer::{train_bpe, END_OF_TEXT};
pub use train::{
    document_sequences, pack, train, train_subset, StepInfo, TrainReport, Trainer, TrainingRecord,
    TRAINING_RECORD,
};

/// An error of training. One line, naming the file where there is one.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    #[error("{0}")]
    Config(String),
    #[error("tokenizer training failed: {0}")]
    Tokenizer(String),
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: usize, loss: f64 },
    #[error(transparent)]
    Model(#[from] tda_model::ModelError),
}
