//! Transformer language models in burn for training-data attribution: Hugging Face model folders
//! in and out, log-probs and generation, and per-layer gradient taps.
//!
//! **Inputs:** an HF folder (`config.json` + safetensors in f32/f16/bf16, single or sharded +
//! `tokenizer.json`) of a supported family — GPT-2, Llama, Qwen2, Mistral — or a [`ModelConfig`]
//! for a fresh model; token ids `[batch, tokens]`, right-padded ([`TokenBatch`]).
//! **Outputs:** logits `[batch, tokens, vocab]`, per-token log-probs, generated ids, [`Taps`]
//! (input activations and output gradients of chosen linear layers), parameter gradients by HF
//! name, and HF folders that `transformers` loads as the same model.
//!
//! Invariants a caller can rely on:
//! - Every parameter has its HF name and HF layout in [`Weights`]; loading then
//!   [`Transformer::to_weights`] is the identity, and a saved folder reproduces the log-probs.
//! - Linear layers ([`LinearInfo`], [`Taps`]) are listed in forward order and named as HF
//!   modules (`model.layers.0.mlp.down_proj`); the output projection is `lm_head`, tied or not.
//! - Real tokens never attend to padding (causal mask, right padding); Mistral attends to its
//!   `sliding_window` most recent positions, as `transformers` does.
//! - Every error is one line naming the file and what is wrong ([`ModelError`]); bad configs,
//!   missing or misshapen tensors and non-finite weights are rejected at load time.
//! - Files and folders are written atomically through `tda-io`: a reader never sees half a file.
//!
//! Layout:
//! - [`config`]: the runtime [`ModelConfig`] and [`Arch`]; [`family`]: the registry of families
//!   ([`family::of`]) and everything that dispatches on it; [`hf_config`]: what the
//!   `config.json` parsers share.
//! - Families, one file each (a `#[derive(Deserialize)]` config mirroring `config.json`, its
//!   conversion, and the block): [`gpt2`], [`llama`] (with Qwen2), [`mistral`] (Llama blocks).
//! - [`nn`]: shared pieces — [`nn::TapLinear`], norms, RoPE, attention, KV cache.
//! - [`model`]: the [`Transformer`] over the family blocks; [`weights`]: HF-named tensors.
//! - [`hf`]: folders in and out; [`infer`]: log-probs and generation; [`taps`]: gradient taps;
//!   [`batch`]: padded batches and losses; [`device`]: CPU (burn-flex) and CUDA (feature `cuda`).

pub mod batch;
pub mod config;
pub mod device;
pub mod error;
pub mod family;
pub mod gpt2;
pub mod hf;
pub mod hf_config;
pub mod infer;
pub mod llama;
pub mod mistral;
pub mod model;
pub mod nn;
pub mod taps;
mod tokenizer;
pub mod weights;

pub use batch::{summed_nll, token_logprobs, TokenBatch};
pub use config::{Arch, ModelConfig};
pub use error::{ModelError, Result};
pub use hf::{load_folder, load_folder_as, save_folder, save_folder_with, HfModel};
pub use model::{HostTensor, LinearInfo, ModelDtype, Transformer, WeightSource, Weights};
pub use taps::{frozen, tap, tap_positions, tap_with_gradients, LayerTap, Taps};

pub use tokenizers::Tokenizer;
