//! Model configuration, read from and written to Hugging Face `config.json`.
//!
//! One [`ModelConfig`] describes both families: GPT-2 (learned positions, LayerNorm, GELU-tanh,
//! fused `c_attn`) and the Llama family (RMSNorm, RoPE, SwiGLU, grouped-query attention), where
//! Qwen2 is Llama with q/k/v biases.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{ModelError, Result};

/// The architecture family, from `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Gpt2,
    Llama,
    Qwen2,
}

impl Arch {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gpt2" => Some(Arch::Gpt2),
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
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
    /// RoPE base (Llama family only).
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
}

fn get_usize(obj: &Map<String, Value>, keys: &[&str]) -> Option<usize> {
    keys.iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_u64).map(|v| v as usize))
}

fn get_f64(obj: &Map<String, Value>, keys: &[&str]) -> Option<f64> {
    keys.iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_f64))
}

fn get_bool(obj: &Map<String, Value>, key: &str) -> Option<bool> {
    obj.get(key).and_then(Value::as_bool)
}

fn first_token_id(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Number(n) => n.as_u64().map(|x| x as u32),
        Value::Array(a) => a.first().and_then(Value::as_u64).map(|x| x as u32),
        _ => None,
    }
}

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
            format!("unknown model_type \"{model_type}\" (supported: gpt2, llama, qwen2)")
        })?;
        let need =
            |keys: &[&str]| get_usize(obj, keys).ok_or_else(|| format!("missing \"{}\"", keys[0]));
        let bos = first_token_id(obj.get("bos_token_id"));
        let eos = first_token_id(obj.get("eos_token_id"));
        let cfg = match arch {
            Arch::Gpt2 => {
                let hidden = need(&["n_embd", "hidden_size"])?;
                let n_heads = need(&["n_head", "num_attention_heads"])?;
                let act = obj
                    .get("activation_function")
                    .and_then(Value::as_str)
                    .unwrap_or("gelu_new");
                if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
                    return Err(format!(
                        "unsupported activation_function \"{act}\" (supported: gelu_new)"
                    ));
                }
                ModelConfig {
                    arch,
                    vocab_size: need(&["vocab_size"])?,
                    hidden,
                    n_layers: need(&["n_layer", "num_hidden_layers"])?,
                    n_heads,
                    n_kv_heads: n_heads,
                    head_dim: if n_heads > 0 { hidden / n_heads } else { 0 },
                    intermediate: get_usize(obj, &["n_inner"]).unwrap_or(4 * hidden),
                    max_positions: need(&["n_positions", "max_position_embeddings"])?,
                    norm_eps: get_f64(obj, &["layer_norm_epsilon"]).unwrap_or(1e-5),
                    rope_theta: 0.0,
                    tie_embeddings: get_bool(obj, "tie_word_embeddings").unwrap_or(true),
                    qkv_bias: true,
                    o_bias: true,
                    mlp_bias: true,
                    bos_token_id: bos,
                    eos_token_id: eos,
                }
            }
            Arch::Llama | Arch::Qwen2 => {
                let hidden = need(&["hidden_size"])?;
                let n_heads = need(&["num_attention_heads"])?;
                let act = obj
                    .get("hidden_act")
                    .and_then(Value::as_str)
                    .unwrap_or("silu");
                if act != "silu" {
                    return Err(format!(
                        "unsupported hidden_act \"{act}\" (supported: silu)"
                    ));
                }
                // transformers 4.x: `rope_theta` + `rope_scaling`; 5.x: `rope_parameters`.
                let rope_params = obj.get("rope_parameters").and_then(Value::as_object);
                for scaling in [
                    obj.get("rope_scaling").and_then(Value::as_object),
                    rope_params,
                ]
                .into_iter()
                .flatten()
                {
                    let kind = scaling
                        .get("rope_type")
                        .or_else(|| scaling.get("type"))
                        .and_then(Value::as_str)
                        .unwrap_or("default");
                    if kind != "default" {
                        return Err(format!("rope scaling \"{kind}\" is not supported yet"));
                    }
                }
                if get_bool(obj, "use_sliding_window") == Some(true) {
                    return Err("sliding-window attention is not supported yet".into());
                }
                let attention_bias = get_bool(obj, "attention_bias").unwrap_or(false);
                ModelConfig {
                    arch,
                    vocab_size: need(&["vocab_size"])?,
                    hidden,
                    n_layers: need(&["num_hidden_layers"])?,
                    n_heads,
                    n_kv_heads: get_usize(obj, &["num_key_value_heads"]).unwrap_or(n_heads),
                    head_dim: get_usize(obj, &["head_dim"]).unwrap_or(if n_heads > 0 {
                        hidden / n_heads
                    } else {
                        0
                    }),
                    intermediate: need(&["intermediate_size"])?,
                    max_positions: need(&["max_position_embeddings"])?,
                    norm_eps: get_f64(obj, &["rms_norm_eps"]).unwrap_or(1e-6),
                    rope_theta: get_f64(obj, &["rope_theta"])
                        .or_else(|| rope_params.and_then(|p| get_f64(p, &["rope_theta"])))
                        .unwrap_or(10_000.0),
                    tie_embeddings: get_bool(obj, "tie_word_embeddings").unwrap_or(false),
                    qkv_bias: arch == Arch::Qwen2 || attention_bias,
                    o_bias: attention_bias,
                    mlp_bias: get_bool(obj, "mlp_bias").unwrap_or(false),
                    bos_token_id: bos,
                    eos_token_id: eos,
                }
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

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
        }
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
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.arch == Arch::Gpt2 && self.n_heads * self.head_dim != self.hidden {
            return Err(format!(
                "n_embd ({}) is not divisible by n_head ({})",
                self.hidden, self.n_heads
            ));
        }
        if self.arch != Arch::Gpt2 && self.head_dim % 2 != 0 {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        Ok(())
    }

    /// The HF `config.json` object that `transformers` loads as this model.
    pub fn to_hf_json(&self) -> Value {
        let mut v = match self.arch {
            Arch::Gpt2 => json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "vocab_size": self.vocab_size,
                "n_embd": self.hidden,
                "n_layer": self.n_layers,
                "n_head": self.n_heads,
                "n_inner": self.intermediate,
                "n_positions": self.max_positions,
                "n_ctx": self.max_positions,
                "layer_norm_epsilon": self.norm_eps,
                "activation_function": "gelu_new",
                "tie_word_embeddings": self.tie_embeddings,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "scale_attn_weights": true,
            }),
            Arch::Llama | Arch::Qwen2 => {
                let mut v = json!({
                    "architectures": [if self.arch == Arch::Llama { "LlamaForCausalLM" } else { "Qwen2ForCausalLM" }],
                    "model_type": self.arch.as_str(),
                    "vocab_size": self.vocab_size,
                    "hidden_size": self.hidden,
                    "num_hidden_layers": self.n_layers,
                    "num_attention_heads": self.n_heads,
                    "num_key_value_heads": self.n_kv_heads,
                    "head_dim": self.head_dim,
                    "intermediate_size": self.intermediate,
                    "max_position_embeddings": self.max_positions,
                    "rms_norm_eps": self.norm_eps,
                    "rope_theta": self.rope_theta,
                    "hidden_act": "silu",
                    "tie_word_embeddings": self.tie_embeddings,
                    "attention_dropout": 0.0,
                });
                if self.arch == Arch::Llama {
                    v["attention_bias"] = json!(self.qkv_bias);
                    v["mlp_bias"] = json!(self.mlp_bias);
                }
                v
            }
        };
        v["torch_dtype"] = json!("float32");
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = json!(b);
        }
        if let Some(e) = self.eos_token_id {
            v["eos_token_id"] = json!(e);
        }
        v
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn n_params(&self) -> usize {
        let d = self.hidden;
        let (q, kv) = (
            self.n_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
        );
        let per_layer = match self.arch {
            Arch::Gpt2 => {
                d * 3 * d
                    + 3 * d
                    + d * d
                    + d
                    + 2 * d * self.intermediate
                    + self.intermediate
                    + d
                    + 4 * d
            }
            _ => {
                d * (q + 2 * kv)
                    + if self.qkv_bias { q + 2 * kv } else { 0 }
                    + q * d
                    + 3 * d * self.intermediate
                    + 2 * d
            }
        };
        let emb = self.vocab_size * d
            + if self.arch == Arch::Gpt2 {
                self.max_positions * d
            } else {
                0
            };
        let head = if self.tie_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        emb + head + self.n_layers * per_layer + 2 * d
    }
}
