//! GPT-2 (`model_type: "gpt2"`): learned position embeddings, pre-LayerNorm blocks with a fused
//! `c_attn` (q|k|v along the output axis) and a GELU-tanh MLP, `Conv1D` weights stored
//! `[d_in, d_out]`, names under `transformer.`.

use burn::prelude::*;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::{Arch, Family, Layout, ModelConfig};
use crate::hf_config::{self, TokenIds};
use crate::nn::{self, KvCache, Norm, Recorder, Step, TapLinear};
use crate::weights::{
    put_linear, put_norm, Init, LinearLayout, Loader, ParamReader, Trunk, Weights,
};

pub const FAMILY: Family = Family {
    model_type: "gpt2",
    hf_class: "GPT2LMHeadModel",
    layout: Layout::Gpt2,
    from_hf,
    to_hf,
};

/// HF `GPT2Config` as `config.json` spells it (`hidden_size` etc. are accepted as aliases when
/// the GPT-2 names are absent).
#[derive(Debug, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_embd: Option<usize>,
    pub hidden_size: Option<usize>,
    pub n_layer: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub n_head: Option<usize>,
    pub num_attention_heads: Option<usize>,
    /// MLP width; `null` means 4·n_embd.
    pub n_inner: Option<usize>,
    pub n_positions: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub layer_norm_epsilon: Option<f64>,
    pub activation_function: Option<String>,
    pub tie_word_embeddings: Option<bool>,
    pub bos_token_id: Option<TokenIds>,
    pub eos_token_id: Option<TokenIds>,
}

fn need(v: Option<usize>, alt: Option<usize>, name: &str) -> Result<usize, String> {
    v.or(alt).ok_or_else(|| format!("missing field `{name}`"))
}

impl Gpt2Config {
    /// The runtime config (not yet validated).
    pub fn into_runtime(self) -> Result<ModelConfig, String> {
        let act = self.activation_function.as_deref().unwrap_or("gelu_new");
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
            return Err(format!(
                "unsupported activation_function \"{act}\" (supported: gelu_new)"
            ));
        }
        let hidden = need(self.n_embd, self.hidden_size, "n_embd")?;
        let n_heads = need(self.n_head, self.num_attention_heads, "n_head")?;
        Ok(ModelConfig {
            arch: Arch::Gpt2,
            vocab_size: self.vocab_size,
            hidden,
            n_layers: need(self.n_layer, self.num_hidden_layers, "n_layer")?,
            n_heads,
            n_kv_heads: n_heads,
            head_dim: hidden.checked_div(n_heads).unwrap_or(0),
            intermediate: self.n_inner.unwrap_or(hidden.saturating_mul(4)),
            max_positions: need(
                self.n_positions,
                self.max_position_embeddings,
                "n_positions",
            )?,
            norm_eps: self.layer_norm_epsilon.unwrap_or(1e-5),
            rope_theta: 0.0,
            tie_embeddings: self.tie_word_embeddings.unwrap_or(true),
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            bos_token_id: hf_config::first_id(&self.bos_token_id),
            eos_token_id: hf_config::first_id(&self.eos_token_id),
            sliding_window: None,
        })
    }
}

fn from_hf(obj: &Map<String, Value>) -> Result<ModelConfig, String> {
    hf_config::parse::<Gpt2Config>(obj)?.into_runtime()
}

fn to_hf(c: &ModelConfig) -> Value {
    json!({
        "architectures": [FAMILY.hf_class],
        "model_type": FAMILY.model_type,
        "vocab_size": c.vocab_size,
        "n_embd": c.hidden,
        "n_layer": c.n_layers,
        "n_head": c.n_heads,
        "n_inner": c.intermediate,
        "n_positions": c.max_positions,
        "n_ctx": c.max_positions,
        "layer_norm_epsilon": c.norm_eps,
        "activation_function": "gelu_new",
        "tie_word_embeddings": c.tie_embeddings,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": true,
    })
}

pub const TRUNK: Trunk = Trunk {
    embed: "transformer.wte.weight",
    pos_embed: Some("transformer.wpe.weight"),
    final_norm: "transformer.ln_f",
    rms: false,
};

/// One GPT-2 block `transformer.h.{i}`: `[b, t, d] -> [b, t, d]`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// `ln_1`
    pub norm_attn: Norm<B>,
    /// `attn.c_attn`, `[d, 3d]`.
    pub c_attn: TapLinear<B>,
    /// `attn.c_proj`, `[d, d]`.
    pub c_proj: TapLinear<B>,
    /// `ln_2`
    pub norm_mlp: Norm<B>,
    /// `mlp.c_fc`, `[d, intermediate]`.
    pub c_fc: TapLinear<B>,
    /// `mlp.c_proj`, `[intermediate, d]`.
    pub mlp_proj: TapLinear<B>,
}

fn prefix(i: usize) -> String {
    format!("transformer.h.{i}")
}

impl<B: Backend> Block<B> {
    pub fn load(ld: &Loader<B>, c: &ModelConfig, i: usize) -> Result<Self, String> {
        let (b, d) = (prefix(i), c.hidden);
        let lin = |name: &str, din, dout| {
            ld.linear(
                &format!("{b}.{name}"),
                din,
                dout,
                true,
                LinearLayout::Conv1d,
            )
        };
        Ok(Block {
            norm_attn: ld.norm(&format!("{b}.ln_1"), d, c.norm_eps, false)?,
            norm_mlp: ld.norm(&format!("{b}.ln_2"), d, c.norm_eps, false)?,
            c_attn: lin("attn.c_attn", d, 3 * d)?,
            c_proj: lin("attn.c_proj", d, d)?,
            c_fc: lin("mlp.c_fc", d, c.intermediate)?,
            mlp_proj: lin("mlp.c_proj", c.intermediate, d)?,
        })
    }

    /// The linear layers in forward order.
    pub fn linears(&self) -> Vec<&TapLinear<B>> {
        vec![&self.c_attn, &self.c_proj, &self.c_fc, &self.mlp_proj]
    }

    pub fn write(&self, out: &mut Weights, i: usize, r: &dyn ParamReader<B>) {
        let b = prefix(i);
        put_norm(out, &format!("{b}.ln_1"), &self.norm_attn, r);
        put_norm(out, &format!("{b}.ln_2"), &self.norm_mlp, r);
        for lin in self.linears() {
            put_linear(out, lin, LinearLayout::Conv1d, r);
        }
    }

    pub fn forward<R: Recorder<B>>(
        &self,
        x: Tensor<B, 3>,
        c: &ModelConfig,
        step: &Step<B>,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
        rec: &mut R,
    ) -> Tensor<B, 3> {
        let d = x.dims()[2];
        let heads = |y: Tensor<B, 3>| nn::split_heads(y, c.n_heads);
        let qkv = self.c_attn.forward(self.norm_attn.forward(x.clone()), rec);
        let q = heads(qkv.clone().narrow(2, 0, d));
        let k = heads(qkv.clone().narrow(2, d, d));
        let v = heads(qkv.narrow(2, 2 * d, d));
        let (k, v) = match cache {
            Some(slot) => KvCache::append(slot, k, v),
            None => (k, v),
        };
        let attn = nn::causal_attention(q, k, v, step.offset, None);
        let x = x + self.c_proj.forward(attn, rec);
        let h = self.norm_mlp.forward(x.clone());
        let inner = nn::gelu_tanh(self.c_fc.forward(h, rec));
        x + self.mlp_proj.forward(inner, rec)
    }
}

/// HF-style random trunk weights (embeddings, blocks, final norm; no `lm_head`). GPT-2 scales
/// the residual output projections by 1/√(2·n_layers) and positions by ½.
pub fn init_weights(c: &ModelConfig, init: &mut Init, std: f32) -> Weights {
    let resid_std = std / (2.0 * c.n_layers as f32).sqrt();
    let d = c.hidden;
    let mut w = Weights::new();
    w.insert(TRUNK.embed.into(), init.normal(vec![c.vocab_size, d], std));
    w.insert(
        "transformer.wpe.weight".into(),
        init.normal(vec![c.max_positions, d], std / 2.0),
    );
    for i in 0..c.n_layers {
        let b = prefix(i);
        for ln in ["ln_1", "ln_2"] {
            w.insert(format!("{b}.{ln}.weight"), Init::fill(vec![d], 1.0));
            w.insert(format!("{b}.{ln}.bias"), Init::fill(vec![d], 0.0));
        }
        let lins = [
            ("attn.c_attn", d, 3 * d, std),
            ("attn.c_proj", d, d, resid_std),
            ("mlp.c_fc", d, c.intermediate, std),
            ("mlp.c_proj", c.intermediate, d, resid_std),
        ];
        for (name, din, dout, s) in lins {
            w.insert(
                format!("{b}.{name}.weight"),
                init.normal(vec![din, dout], s),
            );
            w.insert(format!("{b}.{name}.bias"), Init::fill(vec![dout], 0.0));
        }
    }
    w.insert(
        format!("{}.weight", TRUNK.final_norm),
        Init::fill(vec![d], 1.0),
    );
    w.insert(
        format!("{}.bias", TRUNK.final_norm),
        Init::fill(vec![d], 0.0),
    );
    w
}

/// Parameters of one block, and of the embeddings (tokens + positions); in `u128`, which no
/// `config.json` overflows.
pub fn params_per_layer_and_embeddings(c: &ModelConfig) -> (u128, u128) {
    let (d, i) = (c.hidden as u128, c.intermediate as u128);
    let per_layer = d * 3 * d + 3 * d + d * d + d + 2 * d * i + i + d + 4 * d;
    (
        per_layer,
        (c.vocab_size as u128 + c.max_positions as u128) * d,
    )
}
