//! Training and fine-tuning of `tda-model` transformers.
//!
//! - [`config`]: the TOML training config (`configs/*.toml`).
//! - [`tokenizer`]: byte-level BPE trained on the corpus.
//! - [`train`]: packing, AdamW with warm-up + cosine, global-norm clipping, proximal term,
//!   atomic checkpoints as HF folders.
//! - [`synthetic`]: the small generated corpus the demo and the tests train on.

pub mod config;
pub mod job;
pub mod synthetic;
pub mod tokenizer;
pub mod train;

use std::path::PathBuf;

pub use config::{ModelShape, TrainConfig, TrainParams};
pub use job::{read_texts, TrainJob};
pub use tokenizer::{train_bpe, END_OF_TEXT};
pub use train::{pack, train, StepInfo, TrainReport, Trainer};

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
