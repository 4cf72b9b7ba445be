//! The Llama layout (`model_type: "llama"`, and Qwen2 as the variant it is: Llama with q/k/v
//! biases): RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, `nn.Linear` weights stored
//! `[d_out, d_in]`, names under `model.`. Mistral ([`crate::mistral`]) reuses this layout.

use burn::prelude::*;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{Arch, Family, Layout, ModelConfig};
use crate::hf_config::{self, RopeParameters, TokenIds};
use crate::nn::{self, KvCache, Norm, Recorder, Step, TapLinear};
use crate::weights::{
    put_linear, put_norm, Init, LinearLayout, Loader, ParamReader, Trunk, Weights,
};

pub const LLAMA: Family = Family {
    model_type: "llama",
    hf_class: "LlamaForCausalLM",
    layout: Layout::Llama,
    from_hf: |obj| hf_config::parse::<LlamaConfig>(obj)?.into_runtime(Arch::Llama),
    to_hf: |c| to_hf(c, &LLAMA),
};

pub const QWEN2: Family = Family {
    model_type: "qwen2",
    hf_class: "Qwen2ForCausalLM",
    layout: Layout::Llama,
    from_hf: |obj| hf_config::parse::<LlamaConfig>(obj)?.into_runtime(Arch::Qwen2),
    to_hf: |c| to_hf(c, &QWEN2),
};

/// HF `LlamaConfig` / `Qwen2Config` as `config.json` spells them (4.x and 5.x); Mistral's config
/// is this plus `sliding_window` ([`crate::mistral::MistralConfig`]).
#[derive(Debug, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads` (no GQA).
    pub num_key_value_heads: Option<usize>,
    /// Defaults to `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: Option<f64>,
    pub hidden_act: Option<String>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RopeParameters>,
    pub rope_parameters: Option<RopeParameters>,
    pub tie_word_embeddings: Option<bool>,
    /// Llama: bias on q/k/v/o (Qwen2 always has q/k/v biases).
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    /// Qwen2: sliding-window attention on some layers (not supported).
    pub use_sliding_window: Option<bool>,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
}

impl LlamaConfig {
    /// The runtime config of `arch` (a Llama-layout family; not yet validated).
    pub fn into_runtime(self, arch: Arch) -> Result<ModelConfig, String> {
        let act = self.hidden_act.as_deref().unwrap_or("silu");
        if act != "silu" {
            return Err(format!(
                "unsupported hidden_act \"{act}\" (supported: silu)"
            ));
        }
        let rope_theta =
            hf_config::rope_theta(self.rope_theta, &self.rope_scaling, &self.rope_parameters)?;
        if self.use_sliding_window == Some(true) {
            return Err("sliding-window attention is not supported yet".into());
        }
        let attention_bias = self.attention_bias.unwrap_or(false);
        let n_heads = self.num_attention_heads;
        Ok(ModelConfig {
            arch,
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
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
            o_bias: attention_bias,
            mlp_bias: self.mlp_bias.unwrap_or(false),
            bos_token_id: hf_config::first_id(&self.bos_token_id),
            eos_token_id: hf_config::first_id(&self.eos_token_id),
            sliding_window: None,
        })
    }
}

/// The `config.json` fields every Llama-layout family writes.
pub fn to_hf(c: &ModelConfig, family: &Family) -> Value {
    let mut v = json!({
        "architectures": [family.hf_class],
        "model_type": family.model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "intermediate_size": c.intermediate,
        "max_position_embeddings": c.max_positions,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": c.tie_embeddings,
        "attention_dropout": 0.0,
    });
    if c.arch == Arch::Llama {
        v["attention_bias"] = json!(c.qkv_bias);
        v["mlp_bias"] = json!(c.mlp_bias);
    }
    v
}

/// The trunk's HF names in the Llama layout.
pub const TRUNK: Trunk = Trunk {
    embed: "model.embed_tokens.weight",
    pos_embed: None,
    final_norm: "model.norm",
    rms: true,
};

/// One block `model.layers.{i}`: `[b, t, d] -> [b, t, d]`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// `input_layernorm`
    pub norm_attn: Norm<B>,
    /// `self_attn.q_proj`, `[d, n_heads·head_dim]`.
    pub q_proj: TapLinear<B>,
    /// `self_attn.k_proj`, `[d, n_kv_heads·head_dim]`.
    pub k_proj: TapLinear<B>,
    /// `self_attn.v_proj`, `[d, n_kv_heads·head_dim]`.
    pub v_proj: TapLinear<B>,
    /// `self_attn.o_proj`, `[n_heads·head_dim, d]`.
    pub o_proj: TapLinear<B>,
    /// `post_attention_layernorm`
    pub norm_mlp: Norm<B>,
    /// `mlp.gate_proj`, `[d, intermediate]`.
    pub gate_proj: TapLinear<B>,
    /// `mlp.up_proj`, `[d, intermediate]`.
    pub up_proj: TapLinear<B>,
    /// `mlp.down_proj`, `[intermediate, d]`.
    pub down_proj: TapLinear<B>,
}

fn prefix(i: usize) -> String {
    format!("model.layers.{i}")
}

/// `(name, d_in, d_out, bias)` of a block's linear layers, in forward order.
fn linear_shapes(c: &ModelConfig) -> [(&'static str, usize, usize, bool); 7] {
    let (d, q, kv, m) = (
        c.hidden,
        c.n_heads * c.head_dim,
        c.n_kv_heads * c.head_dim,
        c.intermediate,
    );
    [
        ("self_attn.q_proj", d, q, c.qkv_bias),
        ("self_attn.k_proj", d, kv, c.qkv_bias),
        ("self_attn.v_proj", d, kv, c.qkv_bias),
        ("self_attn.o_proj", q, d, c.o_bias),
        ("mlp.gate_proj", d, m, c.mlp_bias),
        ("mlp.up_proj", d, m, c.mlp_bias),
        ("mlp.down_proj", m, d, c.mlp_bias),
    ]
}

impl<B: Backend> Block<B> {
    pub fn load(ld: &Loader<B>, c: &ModelConfig, i: usize) -> Result<Self, String> {
        let (b, d) = (prefix(i), c.hidden);
        let mut lins = Vec::with_capacity(7);
        for (name, din, dout, bias) in linear_shapes(c) {
            lins.push(ld.linear(
                &format!("{b}.{name}"),
                din,
                dout,
                bias,
                LinearLayout::Linear,
            )?);
        }
        let [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]: [TapLinear<B>; 7] =
            lins.try_into().expect("seven linear layers");
        Ok(Block {
            norm_attn: ld.norm(&format!("{b}.input_layernorm"), d, c.norm_eps, true)?,
            norm_mlp: ld.norm(
                &format!("{b}.post_attention_layernorm"),
                d,
                c.norm_eps,
                true,
            )?,
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            gate_proj,
            up_proj,
            down_proj,
        })
    }

    /// The linear layers in forward order.
    pub fn linears(&self) -> Vec<&TapLinear<B>> {
        vec![
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }

    pub fn write(&self, out: &mut Weights, i: usize, r: &dyn ParamReader<B>) {
        let b = prefix(i);
        put_norm(out, &format!("{b}.input_layernorm"), &self.norm_attn, r);
        put_norm(
            out,
            &format!("{b}.post_attention_layernorm"),
            &self.norm_mlp,
            r,
        );
        for lin in self.linears() {
            put_linear(out, lin, LinearLayout::Linear, r);
        }
    }

    /// Attention sees the window [`ModelConfig::sliding_window`] (Mistral; `None` elsewhere).
    pub fn forward<R: Recorder<B>>(
        &self,
        x: Tensor<B, 3>,
        c: &ModelConfig,
        step: &Step<B>,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
        rec: &mut R,
    ) -> Tensor<B, 3> {
        let h = self.norm_attn.forward(x.clone());
        let rope = step
            .rope
            .as_ref()
            .expect("rope tables for the Llama layout");
        // RoPE before the heads are split off: contiguous rows (see `nn::Rope`).
        let q = nn::split_heads(
            rope.apply(self.q_proj.forward(h.clone(), rec), false),
            c.n_heads,
        );
        let k = nn::split_heads(
            rope.apply(self.k_proj.forward(h.clone(), rec), true),
            c.n_kv_heads,
        );
        let v = nn::split_heads(self.v_proj.forward(h, rec), c.n_kv_heads);
        let (k, v) = match cache {
            Some(slot) => KvCache::append(slot, k, v),
            None => (k, v),
        };
        let attn = nn::causal_attention(q, k, v, step.offset, c.sliding_window);
        let x = x + self.o_proj.forward(attn, rec);
        let h = self.norm_mlp.forward(x.clone());
        let inner = nn::swiglu(
            self.gate_proj.forward(h.clone(), rec),
            self.up_proj.forward(h, rec),
        );
        x + self.down_proj.forward(inner, rec)
    }
}

/// HF-style random trunk weights (embeddings, blocks, final norm; no `lm_head`); the residual
/// output projections (`o_proj`, `down_proj`) get std/√(2·n_layers).
pub fn init_weights(c: &ModelConfig, init: &mut Init, std: f32) -> Weights {
    let resid_std = std / (2.0 * c.n_layers as f32).sqrt();
    let d = c.hidden;
    let mut w = Weights::new();
    w.insert(TRUNK.embed.into(), init.normal(vec![c.vocab_size, d], std));
    for i in 0..c.n_layers {
        let b = prefix(i);
        w.insert(
            format!("{b}.input_layernorm.weight"),
            Init::fill(vec![d], 1.0),
        );
        w.insert(
            format!("{b}.post_attention_layernorm.weight"),
            Init::fill(vec![d], 1.0),
        );
        for (name, din, dout, bias) in linear_shapes(c) {
            let s = if name.ends_with("o_proj") || name.ends_with("down_proj") {
                resid_std
            } else {
                std
            };
            w.insert(
                format!("{b}.{name}.weight"),
                init.normal(vec![dout, din], s),
            );
            if bias {
                w.insert(format!("{b}.{name}.bias"), Init::fill(vec![dout], 0.0));
            }
        }
    }
    w.insert(
        format!("{}.weight", TRUNK.final_norm),
        Init::fill(vec![d], 1.0),
    );
    w
}

/// Parameters of one block, and of the token embeddings; in `u128`, which no `config.json`
/// overflows.
pub fn params_per_layer_and_embeddings(c: &ModelConfig) -> (u128, u128) {
    let d = c.hidden as u128;
    let head_dim = c.head_dim as u128;
    let (q, kv) = (
        c.n_heads as u128 * head_dim,
        c.n_kv_heads as u128 * head_dim,
    );
    let per_layer = d * (q + 2 * kv)
        + if c.qkv_bias { q + 2 * kv } else { 0 }
        + q * d
        + 3 * d * c.intermediate as u128
        + 2 * d;
    (per_layer, c.vocab_size as u128 * d)
}
