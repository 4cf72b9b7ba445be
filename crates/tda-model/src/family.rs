//! The family registry: [`of`] maps each [`Arch`] to its family file, and the methods of
//! [`Arch`] and [`ModelConfig`] that depend on the family (`config.json` in and out,
//! validation, parameter count) dispatch through it.
//!
//! Adding a family: a new file with a `FAMILY` constant, a variant of [`Arch`] (and its entry in
//! [`Arch::ALL`]) and its arm in [`of`]. A family with a new [`Layout`] also adds its block type
//! to [`crate::model::Block`].

use std::path::Path;

use serde_json::{json, Value};

use crate::config::{Arch, Family, Layout, ModelConfig};
use crate::error::{ModelError, Result};
use crate::{gpt2, llama, mistral};

/// The family of an architecture: the registry, one arm per family.
pub fn of(arch: Arch) -> &'static Family {
    match arch {
        Arch::Gpt2 => &gpt2::FAMILY,
        Arch::Llama => &llama::LLAMA,
        Arch::Qwen2 => &llama::QWEN2,
        Arch::Mistral => &mistral::FAMILY,
    }
}

impl Arch {
    /// The family named by an HF `model_type`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
    pub fn as_str(self) -> &'static str {
        of(self).model_type
    }
    pub fn layout(self) -> Layout {
        of(self).layout
    }
}

/// The most parameters a config may describe (2⁴⁰, about 10¹²).
pub const MAX_PARAMS: usize = 1 << 40;

impl ModelConfig {
    /// Reads `config.json` of an HF model folder (or the file itself).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::invalid(path, format!("not valid JSON: {e}")))?;
        Self::from_hf_json(&value).map_err(|msg| ModelError::invalid(path, msg))
    }

    /// Parses an HF config object. Errors are plain messages; the caller adds the path.
    pub fn from_hf_json(value: &Value) -> std::result::Result<Self, String> {
        let obj = value.as_object().ok_or("config is not a JSON object")?;
        let model_type = obj
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or("missing \"model_type\"")?;
        let arch = Arch::parse(model_type).ok_or_else(|| {
            let known: Vec<&str> = Arch::ALL.iter().map(|a| a.as_str()).collect();
            format!(
                "unknown model_type \"{model_type}\" (supported: {})",
                known.join(", ")
            )
        })?;
        let cfg = (of(arch).from_hf)(obj)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants of the struct doc.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden size", self.hidden),
            ("number of layers", self.n_layers),
            ("number of heads", self.n_heads),
            ("number of key-value heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate size", self.intermediate),
            ("max positions", self.max_positions),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        match self.arch.layout() {
            Layout::Gpt2 if self.n_heads * self.head_dim != self.hidden => {
                return Err(format!(
                    "n_embd ({}) is not divisible by n_head ({})",
                    self.hidden, self.n_heads
                ));
            }
            Layout::Llama if !self.head_dim.is_multiple_of(2) => {
                return Err(format!(
                    "head_dim ({}) must be even for RoPE",
                    self.head_dim
                ));
            }
            _ => {}
        }
        for (name, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if let Some(id) = id.filter(|&i| i as usize >= self.vocab_size) {
                return Err(format!(
                    "{name} {id} is not below vocab_size {}",
                    self.vocab_size
                ));
            }
        }
        // Bounding the total bounds every weight matrix, so no size product overflows later.
        if self.params_u128() > MAX_PARAMS as u128 {
            return Err(format!(
                "the config describes {} parameters, more than tda loads ({MAX_PARAMS})",
                self.params_u128()
            ));
        }
        if self.sliding_window == Some(0) {
            return Err("sliding_window must be positive (or null)".into());
        }
        if self.arch == Arch::Mistral && (self.qkv_bias || self.o_bias || self.mlp_bias) {
            return Err("mistral has no attention or MLP biases".into());
        }
        Ok(())
    }

    /// The HF `config.json` object that `transformers` loads as this model.
    pub fn to_hf_json(&self) -> Value {
        let mut v = (of(self.arch).to_hf)(self);
        v["torch_dtype"] = json!("float32");
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = json!(b);
        }
        if let Some(e) = self.eos_token_id {
            v["eos_token_id"] = json!(e);
        }
        v
    }

    /// Number of parameters (tied embeddings counted once). At most [`MAX_PARAMS`] for a
    /// validated config.
    pub fn n_params(&self) -> usize {
        usize::try_from(self.params_u128()).unwrap_or(usize::MAX)
    }

    fn params_u128(&self) -> u128 {
        let d = self.hidden as u128;
        let (per_layer, emb) = match self.arch.layout() {
            Layout::Gpt2 => gpt2::params_per_layer_and_embeddings(self),
            Layout::Llama => llama::params_per_layer_and_embeddings(self),
        };
        let head = if self.tie_embeddings {
            0
        } else {
            self.vocab_size as u128 * d
        };
        emb + head + self.n_layers as u128 * per_layer + 2 * d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<ModelConfig, String> {
        let text = format!(
            r#"{{"model_type": "mistral", "vocab_size": 10, "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "intermediate_size": 16, "max_position_embeddings": 32{extra}}}"#
        );
        ModelConfig::from_hf_json(&serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn mistral_window_is_read_and_written_back() {
        let c = config(r#", "sliding_window": 4, "head_dim": null"#).unwrap();
        assert_eq!(c.sliding_window, Some(4));
        assert_eq!((c.head_dim, c.n_kv_heads), (4, 1));
        assert_eq!(ModelConfig::from_hf_json(&c.to_hf_json()).unwrap(), c);
        let full = config(r#", "sliding_window": null"#).unwrap();
        assert_eq!(full.sliding_window, None);
        assert_eq!(ModelConfig::from_hf_json(&full.to_hf_json()).unwrap(), full);
        assert_eq!(config("").unwrap().sliding_window, Some(4096));
    }

    #[test]
    fn mistral_bad_fields_are_named() {
        let e = config(r#", "sliding_window": "long""#).unwrap_err();
        assert!(e.starts_with("field \"sliding_window\""), "{e}");
        let e = config(r#", "sliding_window": 0"#).unwrap_err();
        assert!(e.contains("sliding_window"), "{e}");
    }
}
