//! The transformer: token embeddings, a stack of family blocks, a final norm and the output
//! projection, with every linear layer carrying its HF module name.
//!
//! Weights enter and leave through [`Weights`], a map from HF parameter names to f32 tensors in HF
//! layout; [`Transformer::from_weights`] and [`Transformer::to_weights`] are exact inverses. The
//! blocks come from the family files ([`crate::gpt2`], [`crate::llama`]); this file only does
//! what every family shares.

use burn::module::Param;
use burn::prelude::*;

use crate::config::{Layout, ModelConfig};
use crate::nn::{self, NoRecord, Norm, Recorder, Step, TapLinear};
use crate::weights::{put_linear, put_norm, Init, LinearLayout, Loader, Trunk, Values};
use crate::{gpt2, llama};

pub use crate::device::ModelDtype;
pub use crate::nn::KvCache;
pub use crate::weights::{GradReader, HostTensor, ParamReader, WeightSource, Weights};

/// Name and shape of one linear layer (HF module name; `d_in`/`d_out` exclude the bias).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearInfo {
    pub name: String,
    pub d_in: usize,
    pub d_out: usize,
    pub has_bias: bool,
}

fn trunk(layout: Layout) -> &'static Trunk {
    match layout {
        Layout::Gpt2 => &gpt2::TRUNK,
        Layout::Llama => &llama::TRUNK,
    }
}

/// One transformer block `[b, t, d] -> [b, t, d]`, of the model's [`Layout`].
// Every block of a model has the same variant, so boxing the larger one would only add an
// indirection per block.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Block<B: Backend> {
    Gpt2(gpt2::Block<B>),
    Llama(llama::Block<B>),
}

/// Runs `$e` with `$b` bound to the block of whatever layout.
macro_rules! each_block {
    ($block:expr, $b:ident => $e:expr) => {
        match $block {
            Block::Gpt2($b) => $e,
            Block::Llama($b) => $e,
        }
    };
}

impl<B: Backend> Block<B> {
    fn load(ld: &Loader<B>, c: &ModelConfig, i: usize) -> Result<Self, String> {
        Ok(match c.arch.layout() {
            Layout::Gpt2 => Block::Gpt2(gpt2::Block::load(ld, c, i)?),
            Layout::Llama => Block::Llama(llama::Block::load(ld, c, i)?),
        })
    }

    /// The block's linear layers in forward order.
    pub fn linears(&self) -> Vec<&TapLinear<B>> {
        each_block!(self, b => b.linears())
    }

    fn write(&self, out: &mut Weights, i: usize, r: &dyn ParamReader<B>) {
        each_block!(self, b => b.write(out, i, r))
    }

    fn forward<R: Recorder<B>>(
        &self,
        x: Tensor<B, 3>,
        c: &ModelConfig,
        step: &Step<B>,
        cache: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
        rec: &mut R,
    ) -> Tensor<B, 3> {
        each_block!(self, b => b.forward(x, c, step, cache, rec))
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

impl<B: Backend> Transformer<B> {
    /// Builds the model from HF-named weights. Errors name the missing or misshapen tensor.
    /// Extra tensors (e.g. GPT-2's `attn.bias` buffers) are ignored.
    pub fn from_weights(
        config: &ModelConfig,
        weights: &Weights,
        device: &B::Device,
    ) -> Result<Self, String> {
        Self::from_source(config, weights, device)
    }

    /// [`Transformer::from_weights`] from any [`WeightSource`] (e.g. a model folder read lazily,
    /// one tensor at a time).
    pub fn from_source(
        config: &ModelConfig,
        weights: &dyn WeightSource,
        device: &B::Device,
    ) -> Result<Self, String> {
        Self::from_source_as(config, weights, device, ModelDtype::F32)
    }

    /// [`Transformer::from_source`] with parameters of `dtype`.
    pub fn from_source_as(
        config: &ModelConfig,
        weights: &dyn WeightSource,
        device: &B::Device,
        dtype: ModelDtype,
    ) -> Result<Self, String> {
        let c = config;
        let ld = Loader::<B> {
            weights,
            device,
            dtype: dtype.burn(),
        };
        let tr = trunk(c.arch.layout());
        let blocks = (0..c.n_layers)
            .map(|i| Block::load(&ld, c, i))
            .collect::<Result<Vec<_>, _>>()?;
        let embed = ld.tensor2(tr.embed, c.vocab_size, c.hidden)?;
        let pos_embed = match tr.pos_embed {
            Some(name) => Some(ld.tensor2(name, c.max_positions, c.hidden)?),
            None => None,
        };
        let lm_head = if c.tie_embeddings {
            None
        } else {
            Some(ld.linear(
                "lm_head",
                c.hidden,
                c.vocab_size,
                false,
                LinearLayout::Linear,
            )?)
        };
        Ok(Self {
            embed,
            pos_embed,
            blocks,
            norm_final: ld.norm(tr.final_norm, c.hidden, c.norm_eps, tr.rms)?,
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
        let tr = trunk(self.config.arch.layout());
        let mut out = Weights::new();
        if let Some(e) = r.read2(&self.embed) {
            out.insert(tr.embed.to_string(), e);
        }
        if let (Some(name), Some(pe)) = (tr.pos_embed, &self.pos_embed) {
            if let Some(pe) = r.read2(pe) {
                out.insert(name.to_string(), pe);
            }
        }
        for (i, b) in self.blocks.iter().enumerate() {
            b.write(&mut out, i, r);
        }
        put_norm(&mut out, tr.final_norm, &self.norm_final, r);
        if let Some(h) = &self.lm_head {
            put_linear(&mut out, h, LinearLayout::Linear, r);
        }
        out
    }

    /// A freshly initialised model (HF's scheme: N(0, 0.02) weights, zero biases, unit norms;
    /// residual output projections scaled by 1/√(2·n_layers)), deterministic in `seed`.
    pub fn init(config: &ModelConfig, seed: u64, device: &B::Device) -> Self {
        let weights = init_weights(config, seed);
        Self::from_weights(config, &weights, device).expect("init_weights matches the config")
    }

    /// The type the parameters are held in (the embeddings', which every parameter shares).
    pub fn dtype(&self) -> burn::tensor::DType {
        self.embed.val().dtype()
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
        cache: Option<&mut KvCache<B>>,
        rec: &mut R,
    ) -> Tensor<B, 3> {
        let x = self.hidden_with(ids, cache, rec);
        self.head_with(x, rec)
    }

    /// The last block's output `[b, t, d]` (before the final norm) for token ids `[b, t]`; with
    /// [`Transformer::head_with`] it is [`Transformer::forward_with`]. Selecting positions of the
    /// hidden state before the head gives their logits without the `[b, t, vocab]` product.
    pub fn hidden_with<R: Recorder<B>>(
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
        let step = Step {
            offset,
            rope: (c.arch.layout() == Layout::Llama).then(|| {
                nn::Rope::new(
                    c.rope_theta,
                    c.head_dim,
                    (c.n_heads, c.n_kv_heads),
                    offset,
                    t,
                    (&device, x.dtype()),
                )
            }),
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|k| &mut k.layers[i]);
            x = block.forward(x, c, &step, layer_cache, rec);
        }
        if let Some(k) = cache {
            k.len += t;
        }
        x
    }

    /// Logits `[b, t, vocab]` of hidden states `[b, t, d]`: the final norm, then `lm_head` (or the
    /// tied embeddings), recorded as `lm_head`. Logits are f32 whatever the model's dtype, as
    /// `transformers` upcasts them before the loss.
    pub fn head_with<R: Recorder<B>>(&self, x: Tensor<B, 3>, rec: &mut R) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let h = self.norm_final.forward(x);
        let logits = match &self.lm_head {
            Some(head) => head.forward(h, rec),
            None => {
                let logits = h
                    .clone()
                    .reshape([b * t, d])
                    .matmul(self.embed.val().transpose())
                    .reshape([b, t, self.config.vocab_size]);
                rec.linear("lm_head", &h, logits)
            }
        };
        nn::cast(logits, burn::tensor::DType::F32)
    }
}

/// HF-style random weights for `config` (see [`Transformer::init`]).
pub fn init_weights(config: &ModelConfig, seed: u64) -> Weights {
    let c = config;
    let mut init = Init::new(seed);
    let std = 0.02f32;
    let mut w = match c.arch.layout() {
        Layout::Gpt2 => gpt2::init_weights(c, &mut init, std),
        Layout::Llama => llama::init_weights(c, &mut init, std),
    };
    if !c.tie_embeddings {
        w.insert(
            "lm_head.weight".into(),
            init.normal(vec![c.vocab_size, c.hidden], std),
        );
    }
    w
}
