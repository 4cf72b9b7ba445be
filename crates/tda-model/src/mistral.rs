//! Mistral (`model_type: "mistral"`): the Llama layout (no biases) with sliding-window attention —
//! each position attends to itself and the `sliding_window − 1` positions before it, as
//! `transformers` masks it; `sliding_window: null` is full causal attention. Only the config is
//! family-specific; the module tree is [`crate::llama::Block`].

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{Arch, Family, Layout, ModelConfig};
use crate::hf_config::{self, RopeParameters, TokenIds};
use crate::llama;

pub const FAMILY: Family = Family {
    model_type: "mistral",
    hf_class: "MistralForCausalLM",
    layout: Layout::Llama,
    from_hf: |obj| hf_config::parse::<MistralConfig>(obj)?.into_runtime(),
    to_hf,
};

/// HF `MistralConfig` as `config.json` spells it (4.x and 5.x).
#[derive(Debug, Deserialize)]
pub struct MistralConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    /// `null` or absent: `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: Option<f64>,
    pub hidden_act: Option<String>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RopeParameters>,
    pub rope_parameters: Option<RopeParameters>,
    pub tie_word_embeddings: Option<bool>,
    /// Attention window in positions; `null` = full attention. transformers' default when the
    /// field is absent is 4096, so absent is read as 4096.
    #[serde(default = "default_window")]
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
}

fn default_window() -> Option<usize> {
    Some(4096)
}

impl MistralConfig {
    /// The runtime config (not yet validated).
    pub fn into_runtime(self) -> Result<ModelConfig, String> {
        let act = self.hidden_act.as_deref().unwrap_or("silu");
        if act != "silu" {
            return Err(format!(
                "unsupported hidden_act \"{act}\" (supported: silu)"
            ));
        }
        let rope_theta =
            hf_config::rope_theta(self.rope_theta, &self.rope_scaling, &self.rope_parameters)?;
        let n_heads = self.num_attention_heads;
        Ok(ModelConfig {
            arch: Arch::Mistral,
            sliding_window: self.sliding_window,
            vocab_size: self.vocab_size,
            hidden: self.hidden_size,
            n_layers: self.num_hidden_layers,
            n_heads,
            n_kv_heads: self.num_key_value_heads.unwrap_or(n_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size.checked_div(n_heads).unwrap_or(0)),
            intermediate: self.intermediate_size,
            max_positions: self.max_position_embeddings,
            norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            tie_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            bos_token_id: hf_config::first_id(&self.bos_token_id),
            eos_token_id: hf_config::first_id(&self.eos_token_id),
        })
    }
}

fn to_hf(c: &ModelConfig) -> Value {
    let mut v = llama::to_hf(c, &FAMILY);
    v["sliding_window"] = json!(c.sliding_window);
    v
}
