//! Mistral (`model_type: "mistral"`): the Llama layout (no biases) with sliding-window attention —
//! each position attends to itself and the `sliding_window − 1` positions before it, as
//! `transformers` masks it; `sliding_window: null` is full causal attention. Only the config is
//! family-specific; the module tree is [`crate::llama::Block`].

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{Arch, Family, Layout, ModelConfig};
use crate::hf_config;
use crate::llama;

pub const FAMILY: Family = Family {
    model_type: "mistral",
    hf_class: "MistralForCausalLM",
    layout: Layout::Llama,
    from_hf: |obj| hf_config::parse::<MistralConfig>(obj)?.into_runtime(),
    to_hf,
};

/// HF `MistralConfig` as `config.json` spells it (4.x and 5.x): Llama's fields plus the window.
#[derive(Debug, Deserialize)]
pub struct MistralConfig {
    #[serde(flatten)]
    pub llama: llama::LlamaConfig,
    /// Attention window in positions; `null` = full attention. transformers' default when the
    /// field is absent is 4096, so absent is read as 4096.
    #[serde(default = "default_window")]
    pub sliding_window: Option<usize>,
}

fn default_window() -> Option<usize> {
    Some(4096)
}

impl MistralConfig {
    /// The runtime config (not yet validated; biases, which Mistral has none of, are rejected by
    /// validation).
    pub fn into_runtime(self) -> Result<ModelConfig, String> {
        let mut c = self.llama.into_runtime(Arch::Mistral)?;
        c.sliding_window = self.sliding_window;
        Ok(c)
    }
}

fn to_hf(c: &ModelConfig) -> Value {
    let mut v = llama::to_hf(c, &FAMILY);
    v["sliding_window"] = json!(c.sliding_window);
    v
}
