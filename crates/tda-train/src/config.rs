//! Training configuration, read from a TOML file in `configs/` (see `configs/tiny.toml`).

use std::path::Path;

use serde::Deserialize;
use tda_model::{Arch, ModelConfig};

use crate::TrainError;

/// Model shape for training from scratch. The vocabulary size is the tokenizer's.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    /// `gpt2`, `llama` or `qwen2`.
    pub arch: String,
    pub hidden: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Defaults to `n_heads` (no grouped-query attention).
    pub n_kv_heads: Option<usize>,
    pub intermediate: usize,
    pub max_positions: usize,
    /// Vocabulary size of the BPE tokenizer trained on the corpus.
    pub vocab_size: usize,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_embeddings: Option<bool>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

/// Optimisation settings (AdamW, linear warm-up then cosine decay to `min_lr_ratio · lr`).
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Tokens per training sequence.
    pub seq_len: usize,
    pub batch_size: usize,
    pub steps: usize,
    pub lr: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    #[serde(default)]
    pub seed: u64,
    /// Save a checkpoint every this many steps (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Proximal term α/2·‖θ − θ_start‖² added to the loss (fine-tuning, multi-stage influence).
    #[serde(default)]
    pub proximal: f64,
}

fn default_min_lr_ratio() -> f64 {
    0.1
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_grad_clip() -> f64 {
    1.0
}

/// A whole training config file: `[model]` (used when training from scratch) and `[train]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: Option<ModelShape>,
    pub train: TrainParams,
}

impl TrainConfig {
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::File {
            path: path.into(),
            msg: e.to_string(),
        })?;
        let cfg: TrainConfig = toml::from_str(&text).map_err(|e| TrainError::File {
            path: path.into(),
            msg: format!("invalid training config: {}", e.message()),
        })?;
        cfg.train.validate().map_err(|msg| TrainError::File {
            path: path.into(),
            msg,
        })?;
        Ok(cfg)
    }
}

impl TrainParams {
    pub fn validate(&self) -> Result<(), String> {
        if self.seq_len < 2 {
            return Err("train.seq_len must be at least 2".into());
        }
        if self.batch_size == 0 || self.steps == 0 {
            return Err("train.batch_size and train.steps must be positive".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err("train.lr must be a positive number".into());
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err("train.min_lr_ratio must be in [0, 1]".into());
        }
        if self.proximal < 0.0 || self.grad_clip < 0.0 {
            return Err("train.proximal and train.grad_clip must be ≥ 0".into());
        }
        Ok(())
    }

    /// Learning rate at `step` (0-based): linear warm-up, then cosine decay to `min_lr_ratio · lr`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }
}

impl ModelShape {
    /// The model config for a tokenizer whose special token has id `eot`.
    pub fn to_model_config(&self, eot: u32) -> Result<ModelConfig, String> {
        let arch = Arch::parse(&self.arch)
            .ok_or_else(|| format!("unknown model.arch \"{}\" (gpt2, llama, qwen2)", self.arch))?;
        let n_kv = self.n_kv_heads.unwrap_or(self.n_heads);
        let cfg = ModelConfig {
            arch,
            vocab_size: self.vocab_size,
            hidden: self.hidden,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: n_kv,
            head_dim: self.hidden.checked_div(self.n_heads).unwrap_or(0),
            intermediate: self.intermediate,
            max_positions: self.max_positions,
            norm_eps: if arch == Arch::Gpt2 { 1e-5 } else { 1e-6 },
            rope_theta: self.rope_theta,
            tie_embeddings: self.tie_embeddings.unwrap_or(arch != Arch::Llama),
            qkv_bias: arch != Arch::Llama,
            o_bias: arch == Arch::Gpt2,
            mlp_bias: arch == Arch::Gpt2,
            bos_token_id: Some(eot),
            eos_token_id: Some(eot),
            sliding_window: None,
        };
        cfg.validate()?;
        if !self.hidden.is_multiple_of(self.n_heads) {
            return Err(format!(
                "model.hidden ({}) is not divisible by model.n_heads ({})",
                self.hidden, self.n_heads
            ));
        }
        Ok(cfg)
    }
}
