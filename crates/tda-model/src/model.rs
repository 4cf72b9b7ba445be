//! The transformer: GPT-2 and the Llama family (Llama, Qwen2) in one module tree whose linear layers
//! carry their HF names.
//!
//! Weights enter and leave through [`Weights`], a map from HF parameter names to f32 tensors in HF
//! layout; [`Transformer::from_weights`] and [`Transformer::to_weights`] are exact inverses.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::config::{Arch, ModelConfig};
use crate::nn::{self, NoRecord, Norm, Recorder, TapLinear};

/// A dense f32 tensor in HF layout (row-major), as read from or written to safetensors.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// HF parameter name → tensor. A `BTreeMap` so that files are written in a stable order.
pub type Weights = BTreeMap<String, HostTensor>;

/// Name and shape of one linear layer (HF module name; `d_in`/`d_out` exclude the bias).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearInfo {
    pub name: String,
    pub d_in: usize,
    pub d_out: usize,
    pub has_bias: bool,
}

/// One transformer block. GPT-2 uses the fused `c_attn`; the Llama family uses `q/k/v_proj` and `gate_proj`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub norm_attn: Norm<B>,
    pub norm_mlp: Norm<B>,
    /// GPT-2 `attn.c_attn` (`[d, 3d]`).
    pub c_attn: Option<TapLinear<B>>,
    pub q_proj: Option<TapLinear<B>>,
    pub k_proj: Option<TapLinear<B>>,
    pub v_proj: Option<TapLinear<B>>,
    /// GPT-2 `attn.c_proj`, Llama `o_proj`.
    pub o_proj: TapLinear<B>,
    /// Llama `gate_proj`.
    pub gate_proj: Option<TapLinear<B>>,
    /// GPT-2 `mlp.c_fc`, Llama `up_proj`.
    pub up_proj: TapLinear<B>,
    /// GPT-2 `mlp.c_proj`, Llama `down_proj`.
    pub down_proj: TapLinear<B>,
}

/// Keys and values of past positions, per block: `[b, h_kv, t_past, head_dim]`.
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// Number of positions already in the cache.
    pub len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: (0..n_layers).map(|_| None).collect(),
            len: 0,
        }
    }
}

/// A causal language model.
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    /// Token embeddings `[vocab, d]`.
    pub embed: Param<Tensor<B, 2>>,
    /// GPT-2 position embeddings `[max_positions, d]`.
    pub pos_embed: Option<Param<Tensor<B, 2>>>,
    pub blocks: Vec<Block<B>>,
    pub norm_final: Norm<B>,
    /// Untied output projection; `None` when tied to `embed`.
    pub lm_head: Option<TapLinear<B>>,
    #[module(skip)]
    pub config: ModelConfig,
}

/// Prefix of the HF names of the trunk (`transformer.` for GPT-2, `model.` for Llama).
fn trunk(arch: Arch) -> &'static str {
    match arch {
        Arch::Gpt2 => "transformer",
        _ => "model",
    }
}

/// Takes tensors out of a [`Weights`] map and turns them into parameters, checking shapes.
struct Loader<'a, B: Backend> {
    weights: &'a Weights,
    device: &'a B::Device,
}

impl<B: Backend> Loader<'_, B> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<&HostTensor, String> {
        let t = self
            .weights
            .get(name)
            .ok_or_else(|| format!("tensor \"{name}\" is missing"))?;
        if t.shape != shape {
            return Err(format!(
                "tensor \"{name}\" has shape {:?}, the config implies {:?}",
                t.shape, shape
            ));
        }
        if let Some(bad) = t.data.iter().position(|x| !x.is_finite()) {
            return Err(format!(
                "tensor \"{name}\" holds a non-finite value at index {bad}"
            ));
        }
        Ok(t)
    }
    fn tensor1(&self, name: &str, n: usize) -> Result<Param<Tensor<B, 1>>, String> {
        let t = self.get(name, &[n])?;
        Ok(Param::from_tensor(Tensor::from_data(
            TensorData::new(t.data.clone(), [n]),
            self.device,
        )))
    }
    fn tensor2(&self, name: &str, r: usize, c: usize) -> Result<Param<Tensor<B, 2>>, String> {
        let t = self.get(name, &[r, c])?;
        Ok(Param::from_tensor(Tensor::from_data(
            TensorData::new(t.data.clone(), [r, c]),
            self.device,
        )))
    }
    /// A linear layer `module` (HF module name). `conv1d`: HF stores `[d_in, d_out]` (GPT-2), else `[d_out, d_in]`.
    fn linear(
        &self,
        module: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        conv1d: bool,
    ) -> Result<TapLinear<B>, String> {
        let wname = format!("{module}.weight");
        let weight = if conv1d {
            self.tensor2(&wname, d_in, d_out)?
        } else {
            // nn.Linear stores [d_out, d_in]; transpose on the host so the parameter is a leaf.
            let w = self.get(&wname, &[d_out, d_in])?.transposed();
            Param::from_tensor(Tensor::from_data(
                TensorData::new(w.data, [d_in, d_out]),
                self.device,
            ))
        };
        let bias = if bias {
            Some(self.tensor1(&format!("{module}.bias"), d_out)?)
        } else {
            None
        };
        Ok(TapLinear {
            weight,
            bias,
            name: module.to_string(),
        })
    }
    fn norm(&self, module: &str, d: usize, eps: f64, rms: bool) -> Result<Norm<B>, String> {
        Ok(Norm {
            weight: self.tensor1(&format!("{module}.weight"), d)?,
            bias: if rms {
                None
            } else {
                Some(self.tensor1(&format!("{module}.bias"), d)?)
            },
            eps,
            rms,
        })
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    let shape = t.dims().to_vec();
    let data = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 tensor data");
    HostTensor { shape, data }
}

impl HostTensor {
    /// The transpose of a 2-D tensor.
    pub fn transposed(&self) -> HostTensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut data = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        HostTensor {
            shape: vec![c, r],
            data,
        }
    }
}

/// Reads one parameter tensor (its value, or its gradient) into host memory.
pub trait ParamReader<B: Backend> {
    fn read1(&self, p: &Param<Tensor<B, 1>>) -> Option<HostTensor>;
    fn read2(&self, p: &Param<Tensor<B, 2>>) -> Option<HostTensor>;
}

/// Reads parameter values.
struct Values;
impl<B: Backend> ParamReader<B> for Values {
    fn read1(&self, p: &Param<Tensor<B, 1>>) -> Option<HostTensor> {
        Some(host(p.val()))
    }
    fn read2(&self, p: &Param<Tensor<B, 2>>) -> Option<HostTensor> {
        Some(host(p.val()))
    }
}

/// Reads parameter gradients from burn's `Gradients` (absent gradients are skipped).
pub struct GradReader<'a, B: burn::tensor::backend::AutodiffBackend>(pub &'a B::Gradients);
impl<B: burn::tensor::backend::AutodiffBackend> ParamReader<B> for GradReader<'_, B> {
    fn read1(&self, p: &Param<Tensor<B, 1>>) -> Option<HostTensor> {
        p.val().grad(self.0).map(host)
    }
    fn read2(&self, p: &Param<Tensor<B, 2>>) -> Option<HostTensor> {
        p.val().grad(self.0).map(host)
    }
}

fn put_linear<B: Backend>(
    out: &mut Weights,
    lin: &TapLinear<B>,
    conv1d: bool,
    r: &dyn ParamReader<B>,
) {
    if let Some(w) = r.read2(&lin.weight) {
        out.insert(
            format!("{}.weight", lin.name),
            if conv1d { w } else { w.transposed() },
        );
    }
    if let Some(b) = lin.bias.as_ref().and_then(|b| r.read1(b)) {
        out.insert(format!("{}.bias", lin.name), b);
    }
}

fn put_norm<B: Backend>(out: &mut Weights, module: &str, norm: &Norm<B>, r: &dyn ParamReader<B>) {
    if let Some(w) = r.read1(&norm.weight) {
        out.insert(format!("{module}.weight"), w);
    }
    if let Some(b) = norm.bias.as_ref().and_then(|b| r.read1(b)) {
        out.insert(format!("{module}.bias"), b);
    }
}

impl<B: Backend> Transformer<B> {
    /// Builds the model from HF-named weights. Errors name the missing or misshapen tensor.
    /// Extra tensors (e.g. GPT-2's `attn.bias` buffers) are ignored.
    pub fn from_weights(
        config: &ModelConfig,
        weights: &Weights,
        device: &B::Device,
    ) -> Result<Self, String> {
        let c = config;
        let ld = Loader::<B> { weights, device };
        let d = c.hidden;
        let p = trunk(c.arch);
        let rms = c.arch != Arch::Gpt2;
        let conv1d = c.arch == Arch::Gpt2;
        let mut blocks = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let block = match c.arch {
                Arch::Gpt2 => {
                    let b = format!("{p}.h.{i}");
                    Block {
                        norm_attn: ld.norm(&format!("{b}.ln_1"), d, c.norm_eps, false)?,
                        norm_mlp: ld.norm(&format!("{b}.ln_2"), d, c.norm_eps, false)?,
                        c_attn: Some(ld.linear(
                            &format!("{b}.attn.c_attn"),
                            d,
                            3 * d,
                            true,
                            conv1d,
                        )?),
                        q_proj: None,
                        k_proj: None,
                        v_proj: None,
                        o_proj: ld.linear(&format!("{b}.attn.c_proj"), d, d, true, conv1d)?,
                        gate_proj: None,
                        up_proj: ld.linear(
                            &format!("{b}.mlp.c_fc"),
                            d,
                            c.intermediate,
                            true,
                            conv1d,
                        )?,
                        down_proj: ld.linear(
                            &format!("{b}.mlp.c_proj"),
                            c.intermediate,
                            d,
                            true,
                            conv1d,
                        )?,
                    }
                }
                Arch::Llama | Arch::Qwen2 => {
                    let b = format!("{p}.layers.{i}");
                    let q = c.n_heads * c.head_dim;
                    let kv = c.n_kv_heads * c.head_dim;
                    let lin = |name: &str, din, dout, bias| {
                        ld.linear(&format!("{b}.{name}"), din, dout, bias, false)
                    };
                    Block {
                        norm_attn: ld.norm(&format!("{b}.input_layernorm"), d, c.norm_eps, rms)?,
                        norm_mlp: ld.norm(
                            &format!("{b}.post_attention_layernorm"),
                            d,
                            c.norm_eps,
                            rms,
                        )?,
                        c_attn: None,
                        q_proj: Some(lin("self_attn.q_proj", d, q, c.qkv_bias)?),
                        k_proj: Some(lin("self_attn.k_proj", d, kv, c.qkv_bias)?),
                        v_proj: Some(lin("self_attn.v_proj", d, kv, c.qkv_bias)?),
                        o_proj: lin("self_attn.o_proj", q, d, c.o_bias)?,
                        gate_proj: Some(lin("mlp.gate_proj", d, c.intermediate, c.mlp_bias)?),
                        up_proj: lin("mlp.up_proj", d, c.intermediate, c.mlp_bias)?,
                        down_proj: lin("mlp.down_proj", c.intermediate, d, c.mlp_bias)?,
                    }
                }
            };
            blocks.push(block);
        }
        let (embed_name, final_name) = match c.arch {
            Arch::Gpt2 => (format!("{p}.wte.weight"), format!("{p}.ln_f")),
            _ => (format!("{p}.embed_tokens.weight"), format!("{p}.norm")),
        };
        let embed = ld.tensor2(&embed_name, c.vocab_size, d)?;
        let pos_embed = if c.arch == Arch::Gpt2 {
            Some(ld.tensor2(&format!("{p}.wpe.weight"), c.max_positions, d)?)
        } else {
            None
        };
        let lm_head = if c.tie_embeddings {
            None
        } else {
            Some(ld.linear("lm_head", d, c.vocab_size, false, false)?)
        };
        Ok(Self {
            embed,
            pos_embed,
            blocks,
            norm_final: ld.norm(&final_name, d, c.norm_eps, rms)?,
            lm_head,
            config: c.clone(),
        })
    }

    /// The weights in HF names and layouts (inverse of [`Transformer::from_weights`]).
    /// Tied models store no `lm_head.weight`, as `transformers` does.
    pub fn to_weights(&self) -> Weights {
        self.read_params(&Values)
    }

    /// Every parameter read by `r` (values or gradients), under its HF name and in HF layout.
    pub fn read_params(&self, r: &dyn ParamReader<B>) -> Weights {
        let c = &self.config;
        let p = trunk(c.arch);
        let conv1d = c.arch == Arch::Gpt2;
        let mut out = Weights::new();
        let (embed_name, final_name) = match c.arch {
            Arch::Gpt2 => (format!("{p}.wte.weight"), format!("{p}.ln_f")),
            _ => (format!("{p}.embed_tokens.weight"), format!("{p}.norm")),
        };
        if let Some(e) = r.read2(&self.embed) {
            out.insert(embed_name, e);
        }
        if let Some(pe) = self.pos_embed.as_ref().and_then(|pe| r.read2(pe)) {
            out.insert(format!("{p}.wpe.weight"), pe);
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let (n1, n2) = match c.arch {
                Arch::Gpt2 => (format!("{p}.h.{i}.ln_1"), format!("{p}.h.{i}.ln_2")),
                _ => (
                    format!("{p}.layers.{i}.input_layernorm"),
                    format!("{p}.layers.{i}.post_attention_layernorm"),
                ),
            };
            put_norm(&mut out, &n1, &b.norm_attn, r);
            put_norm(&mut out, &n2, &b.norm_mlp, r);
            for lin in b.linears() {
                put_linear(&mut out, lin, conv1d, r);
            }
        }
        put_norm(&mut out, &final_name, &self.norm_final, r);
        if let Some(h) = &self.lm_head {
            put_linear(&mut out, h, false, r);
        }
        out
    }

    /// A freshly initialised model (HF's scheme: N(0, 0.02) weights, zero biases, unit norms;
    /// GPT-2 scales the residual output projections by 1/√(2·n_layers)), deterministic in `seed`.
    pub fn init(config: &ModelConfig, seed: u64, device: &B::Device) -> Self {
        let weights = init_weights(config, seed);
        Self::from_weights(config, &weights, device).expect("init_weights matches the config")
    }

    /// All linear layers in forward order, with their HF names. The output projection is listed
    /// last as `lm_head` (also when tied to the embeddings).
    pub fn linear_layers(&self) -> Vec<LinearInfo> {
        let mut out: Vec<LinearInfo> = self
            .blocks
            .iter()
            .flat_map(|b| b.linears())
            .map(|l| LinearInfo {
                name: l.name.clone(),
                d_in: l.d_in(),
                d_out: l.d_out(),
                has_bias: l.bias.is_some(),
            })
            .collect();
        out.push(LinearInfo {
            name: "lm_head".into(),
            d_in: self.config.hidden,
            d_out: self.config.vocab_size,
            has_bias: false,
        });
        out
    }

    /// Logits `[b, t, vocab]` for token ids `[b, t]`; see [`Transformer::forward_with`].
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_with(ids, None, &mut NoRecord)
    }

    /// Logits `[b, t, vocab]` for token ids `[b, t]` at positions `cache.len ..` (0 without a cache).
    /// Sequences are right-padded: with the causal mask, real tokens never attend to padding.
    pub fn forward_with<R: Recorder<B>>(
        &self,
        ids: Tensor<B, 2, Int>,
        mut cache: Option<&mut KvCache<B>>,
        rec: &mut R,
    ) -> Tensor<B, 3> {
        let c = &self.config;
        let [b, t] = ids.dims();
        let device = ids.device();
        let offset = cache.as_ref().map_or(0, |k| k.len);
        let d = c.hidden;
        let tokens = self
            .embed
            .val()
            .select(0, ids.reshape([b * t]))
            .reshape([b, t, d]);
        let mut x = rec.embeddings(tokens);
        if let Some(pe) = &self.pos_embed {
            let pos = Tensor::<B, 1, Int>::arange(offset as i64..(offset + t) as i64, &device);
            x = x + pe.val().select(0, pos).unsqueeze::<3>();
        }
        let rope = (c.arch != Arch::Gpt2)
            .then(|| nn::rope_tables::<B>(c.rope_theta, c.head_dim, offset, t, &device));
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|k| &mut k.layers[i]);
            x = block.forward(x, c, rope.as_ref(), offset, layer_cache, rec);
        }
        if let Some(k) = cache {
            k.len += t;
        }
        let h = self.norm_final.forward(x);
        match &self.lm_head {
            Some(head) => head.forward(h, rec),
            None => {
                let logits = h
                    .clone()
                    .reshape([b * t, d])
                    .matmul(self.embed.val().transpose())
                    .reshape([b, t, c.vocab_size]);
                rec.linear("lm_head", &h, logits)
            }
        }
    }
}

impl<B: Backend> Block<B> {
    /// The block's linear layers in forward order.
    pub fn linears(&self) -> Vec<&TapLinear<B>> {
        let mut v = Vec::with_capacity(7);
        v.extend(self.c_attn.iter());
        v.extend(self.q_proj.iter());
        v.extend(self.k_proj.iter());
        v.extend(self.v_proj.iter());
        v.push(&self.o_proj);
        v.extend(self.gate_proj.iter());
        v.push(&self.up_proj);
        v.push(&self.down_proj);
        v
    }

    fn forward<R: Recorder<B>>(
        &self,
        x: Tensor<B, 3>,
        c: &ModelConfig,
        rope: Option<&(Tensor<B, 4>, Tensor<B, 4>)>,
        offset: usize,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
        rec: &mut R,
    ) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let hd = c.head_dim;
        let heads = |y: Tensor<B, 3>, h: usize| y.reshape([b, t, h, hd]).swap_dims(1, 2);
        let h = self.norm_attn.forward(x.clone());
        let (q, k, v) = if let Some(c_attn) = &self.c_attn {
            let qkv = c_attn.forward(h, rec);
            (
                heads(qkv.clone().narrow(2, 0, d), c.n_heads),
                heads(qkv.clone().narrow(2, d, d), c.n_heads),
                heads(qkv.narrow(2, 2 * d, d), c.n_heads),
            )
        } else {
            let q = heads(
                self.q_proj.as_ref().unwrap().forward(h.clone(), rec),
                c.n_heads,
            );
            let k = heads(
                self.k_proj.as_ref().unwrap().forward(h.clone(), rec),
                c.n_kv_heads,
            );
            let v = heads(self.v_proj.as_ref().unwrap().forward(h, rec), c.n_kv_heads);
            let (cos, sin) = rope.expect("rope tables for the Llama family");
            (nn::apply_rope(q, cos, sin), nn::apply_rope(k, cos, sin), v)
        };
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                (k, v)
            }
            None => (k, v),
        };
        let attn = nn::causal_attention(q, k, v, offset);
        let x = x + self.o_proj.forward(attn, rec);
        let h = self.norm_mlp.forward(x.clone());
        let inner = match &self.gate_proj {
            Some(gate) => nn::swiglu(gate.forward(h.clone(), rec), self.up_proj.forward(h, rec)),
            None => nn::gelu_tanh(self.up_proj.forward(h, rec)),
        };
        x + self.down_proj.forward(inner, rec)
    }
}

/// HF-style random weights for `config` (see [`Transformer::init`]).
pub fn init_weights(config: &ModelConfig, seed: u64) -> Weights {
    let c = config;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = |shape: Vec<usize>, std: f32| {
        let n: usize = shape.iter().product();
        // Box–Muller: two uniforms → one standard normal.
        let data = (0..n)
            .map(|_| {
                let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
                let u2: f32 = rng.random::<f32>();
                std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect();
        HostTensor { shape, data }
    };
    let fill = |shape: Vec<usize>, v: f32| {
        let n = shape.iter().product();
        HostTensor {
            shape,
            data: vec![v; n],
        }
    };
    let std = 0.02f32;
    let resid_std = std / (2.0 * c.n_layers as f32).sqrt();
    let d = c.hidden;
    let p = trunk(c.arch);
    let mut w = Weights::new();
    match c.arch {
        Arch::Gpt2 => {
            w.insert(
                format!("{p}.wte.weight"),
                normal(vec![c.vocab_size, d], std),
            );
            w.insert(
                format!("{p}.wpe.weight"),
                normal(vec![c.max_positions, d], std / 2.0),
            );
            for i in 0..c.n_layers {
                let b = format!("{p}.h.{i}");
                for ln in ["ln_1", "ln_2"] {
                    w.insert(format!("{b}.{ln}.weight"), fill(vec![d], 1.0));
                    w.insert(format!("{b}.{ln}.bias"), fill(vec![d], 0.0));
                }
                let lins = [
                    ("attn.c_attn", d, 3 * d, std),
                    ("attn.c_proj", d, d, resid_std),
                    ("mlp.c_fc", d, c.intermediate, std),
                    ("mlp.c_proj", c.intermediate, d, resid_std),
                ];
                for (name, din, dout, s) in lins {
                    w.insert(format!("{b}.{name}.weight"), normal(vec![din, dout], s));
                    w.insert(format!("{b}.{name}.bias"), fill(vec![dout], 0.0));
                }
            }
            w.insert(format!("{p}.ln_f.weight"), fill(vec![d], 1.0));
            w.insert(format!("{p}.ln_f.bias"), fill(vec![d], 0.0));
        }
        Arch::Llama | Arch::Qwen2 => {
            w.insert(
                format!("{p}.embed_tokens.weight"),
                normal(vec![c.vocab_size, d], std),
            );
            let q = c.n_heads * c.head_dim;
            let kv = c.n_kv_heads * c.head_dim;
            for i in 0..c.n_layers {
                let b = format!("{p}.layers.{i}");
                w.insert(format!("{b}.input_layernorm.weight"), fill(vec![d], 1.0));
                w.insert(
                    format!("{b}.post_attention_layernorm.weight"),
                    fill(vec![d], 1.0),
                );
                let lins = [
                    ("self_attn.q_proj", d, q, c.qkv_bias, std),
                    ("self_attn.k_proj", d, kv, c.qkv_bias, std),
                    ("self_attn.v_proj", d, kv, c.qkv_bias, std),
                    ("self_attn.o_proj", q, d, c.o_bias, resid_std),
                    ("mlp.gate_proj", d, c.intermediate, c.mlp_bias, std),
                    ("mlp.up_proj", d, c.intermediate, c.mlp_bias, std),
                    ("mlp.down_proj", c.intermediate, d, c.mlp_bias, resid_std),
                ];
                for (name, din, dout, bias, s) in lins {
                    w.insert(format!("{b}.{name}.weight"), normal(vec![dout, din], s));
                    if bias {
                        w.insert(format!("{b}.{name}.bias"), fill(vec![dout], 0.0));
                    }
                }
            }
            w.insert(format!("{p}.norm.weight"), fill(vec![d], 1.0));
        }
    }
    if !c.tie_embeddings {
        w.insert("lm_head.weight".into(), normal(vec![c.vocab_size, d], std));
    }
    w
}
