//! Transformer language models in burn for training-data attribution.
//!
//! - [`config`]: HF `config.json` ⇄ [`ModelConfig`] (GPT-2, Llama, Qwen2).
//! - [`model`]: the [`Transformer`] module tree; every linear layer carries its HF module name.
//! - [`hf`]: HF folders in (f32/f16/bf16, sharded) and out (loadable by `transformers`).
//! - [`infer`]: log-probs and generation with a KV cache.
//! - [`taps`]: per-layer input activations and output gradients after one backward.
//! - [`device`]: CPU (burn-flex) and CUDA (feature `cuda`) backends.

pub mod batch;
pub mod config;
pub mod device;
pub mod error;
pub mod hf;
pub mod infer;
pub mod model;
pub mod nn;
pub mod taps;

pub use batch::{summed_nll, token_logprobs, TokenBatch};
pub use config::{Arch, ModelConfig};
pub use error::{ModelError, Result};
pub use hf::{load_folder, save_folder, HfModel};
pub use model::{HostTensor, LinearInfo, Transformer, Weights};
pub use taps::{frozen, tap, tap_with_gradients, LayerTap, Taps};

pub use tokenizers::Tokenizer;
