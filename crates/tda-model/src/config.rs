//! The runtime model configuration: plain data that every layer of the crate reads.
//!
//! [`ModelConfig`] is what the forward pass reads; it is family-neutral. Each family file
//! ([`crate::gpt2`], [`crate::llama`] with Qwen2, [`crate::mistral`]) owns a
//! `#[derive(Deserialize)]` struct with its `config.json` field names, the conversion into a
//! [`ModelConfig`] and back to `config.json`, published as a [`Family`]. The methods that depend
//! on the family (`from_file`, `from_hf_json`, `to_hf_json`, `validate`, `n_params`,
//! [`Arch::parse`], [`Arch::layout`]) live in [`crate::family`], the registry, so that this file
//! depends on no family.

use serde_json::Value;

/// The architecture family, from `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Gpt2,
    Llama,
    Qwen2,
    Mistral,
}

/// How a family's model is wired and named: a family reuses a layout when its weights have the
/// same names and its blocks the same shape (Qwen2 and Mistral use Llama's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Learned positions, LayerNorm, GELU-tanh MLP, fused `c_attn`, `Conv1D` weights, `transformer.*`.
    Gpt2,
    /// RoPE, RMSNorm, SwiGLU MLP, grouped-query q/k/v/o projections, `nn.Linear`, `model.*`.
    Llama,
}

/// One family: its `model_type`, layout and the two `config.json` conversions.
pub struct Family {
    pub model_type: &'static str,
    /// `architectures[0]` in a written `config.json`.
    pub hf_class: &'static str,
    pub layout: Layout,
    /// The family's `config.json` object → runtime config (not yet validated).
    pub from_hf: fn(&serde_json::Map<String, Value>) -> std::result::Result<ModelConfig, String>,
    /// Runtime config → `config.json`, starting with `architectures` and `model_type`
    /// ([`ModelConfig::to_hf_json`] adds dtype and token ids).
    pub to_hf: fn(&ModelConfig) -> Value,
}

impl Arch {
    /// Every family once.
    pub const ALL: [Arch; 4] = [Arch::Gpt2, Arch::Llama, Arch::Qwen2, Arch::Mistral];
}

/// Everything the forward pass needs. Invariants (checked by [`ModelConfig::validate`]):
/// `hidden = n_heads * head_dim` for GPT-2, `n_heads % n_kv_heads == 0`, `head_dim` even for RoPE.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Width of the MLP's inner layer.
    pub intermediate: usize,
    /// Longest sequence the model accepts (GPT-2's `n_positions`).
    pub max_positions: usize,
    pub norm_eps: f64,
    /// RoPE base (Llama layout only).
    pub rope_theta: f64,
    /// Output projection shares the token-embedding matrix.
    pub tie_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2: true).
    pub qkv_bias: bool,
    /// Bias on o_proj (Llama `attention_bias` also sets it).
    pub o_bias: bool,
    /// Bias on the MLP projections (Llama `mlp_bias`).
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Attention sees only the `w` most recent positions, itself included (Mistral's
    /// `sliding_window`); `None`: all previous positions.
    #[serde(default)]
    pub sliding_window: Option<usize>,
}

impl ModelConfig {
    /// A GPT-2-style config (MLP 4× wide, tied embeddings, biases everywhere), token 0 as BOS/EOS.
    /// `gpt2(768, 12, 12, 50257, 1024)` is GPT-2 small.
    pub fn gpt2(
        hidden: usize,
        n_layers: usize,
        n_heads: usize,
        vocab_size: usize,
        max_positions: usize,
    ) -> Self {
        ModelConfig {
            arch: Arch::Gpt2,
            vocab_size,
            hidden,
            n_layers,
            n_heads,
            n_kv_heads: n_heads,
            head_dim: hidden / n_heads.max(1),
            intermediate: 4 * hidden,
            max_positions,
            norm_eps: 1e-5,
            rope_theta: 0.0,
            tie_embeddings: true,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            bos_token_id: Some(0),
            eos_token_id: Some(0),
            sliding_window: None,
        }
    }
}
