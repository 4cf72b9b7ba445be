//! Building blocks: tap-able linear layers, LayerNorm/RMSNorm, RoPE, GELU-tanh, causal attention.
//!
//! Shapes: hidden states are `[batch, tokens, d]`; attention tensors are `[batch, heads, tokens, head_dim]`.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation;

/// Observes (and may rewrite) intermediate tensors of a forward pass.
///
/// The default methods pass everything through, so plain inference uses [`NoRecord`]. The gradient
/// taps (see [`crate::taps`]) implement it to keep the input of each tracked linear layer and to add
/// a zero "probe" to its output whose gradient is dL/d(output).
pub trait Recorder<B: Backend> {
    /// Called with the input `[b, t, d_in]` and output `[b, t, d_out]` of the linear layer `name`
    /// (HF module name); returns the output to use downstream.
    fn linear(&mut self, _name: &str, _input: &Tensor<B, 3>, output: Tensor<B, 3>) -> Tensor<B, 3> {
        output
    }
    /// Called with the token embeddings `[b, t, d]` (before GPT-2's position embeddings are added).
    fn embeddings(&mut self, e: Tensor<B, 3>) -> Tensor<B, 3> {
        e
    }
}

/// A recorder that records nothing.
pub struct NoRecord;
impl<B: Backend> Recorder<B> for NoRecord {}

/// A linear layer `y = x W + b` with `W` stored `[d_in, d_out]` (burn's layout; HF `nn.Linear` stores
/// the transpose, HF GPT-2 `Conv1D` stores it as is). It knows its HF module name.
#[derive(Module, Debug)]
pub struct TapLinear<B: Backend> {
    /// `[d_in, d_out]`
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// HF module name, e.g. `model.layers.0.mlp.down_proj`.
    #[module(skip)]
    pub name: String,
}

impl<B: Backend> TapLinear<B> {
    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }
    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `[b, t, d_in] -> [b, t, d_out]`, shown to the recorder.
    pub fn forward<R: Recorder<B>>(&self, x: Tensor<B, 3>, rec: &mut R) -> Tensor<B, 3> {
        let [b, t, d_in] = x.dims();
        let d_out = self.d_out();
        let mut y = x
            .clone()
            .reshape([b * t, d_in])
            .matmul(self.weight.val())
            .reshape([b, t, d_out]);
        if let Some(bias) = &self.bias {
            y = y + bias.val().unsqueeze::<3>();
        }
        rec.linear(&self.name, &x, y)
    }
}

/// LayerNorm (GPT-2: weight and bias) or RMSNorm (Llama family: weight only).
#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    /// `[d]`
    pub weight: Param<Tensor<B, 1>>,
    /// `[d]`, LayerNorm only.
    pub bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub eps: f64,
    #[module(skip)]
    pub rms: bool,
}

impl<B: Backend> Norm<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = if self.rms {
            let ms = x.clone().square().mean_dim(2);
            x * (ms + self.eps).sqrt().recip()
        } else {
            let mean = x.clone().mean_dim(2);
            let centered = x - mean;
            let var = centered.clone().square().mean_dim(2);
            centered * (var + self.eps).sqrt().recip()
        };
        let x = x * self.weight.val().unsqueeze::<3>();
        match &self.bias {
            Some(b) => x + b.val().unsqueeze::<3>(),
            None => x,
        }
    }
}

/// GELU, tanh approximation (HF `gelu_new`): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu_tanh<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
    x * (inner.tanh() + 1.0) * 0.5
}

/// SwiGLU: silu(gate) ⊙ up.
pub fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    activation::silu(gate) * up
}

/// RoPE tables (HF Llama convention, halves rotated): `cos`, `sin` of shape `[1, 1, t, head_dim]`
/// for positions `offset .. offset + t`.
pub fn rope_tables<B: Backend>(
    theta: f64,
    head_dim: usize,
    offset: usize,
    t: usize,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(t * head_dim);
    let mut sin = Vec::with_capacity(t * head_dim);
    for p in offset..offset + t {
        // emb = cat(freqs, freqs): both halves of a head use the same frequencies.
        for i in (0..half).chain(0..half) {
            // HF computes inv_freq = 1 / theta^(2i/d) and the angles in f32.
            let inv_freq = (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32;
            let angle = p as f32 * inv_freq;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let shape = [1, 1, t, head_dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// Applies RoPE to `[b, h, t, head_dim]`: x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁].
pub fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Additive causal mask `[1, 1, tq, tk]`: query `i` (absolute position `offset + i`) sees keys `≤ offset + i`.
pub fn causal_mask<B: Backend>(
    tq: usize,
    tk: usize,
    offset: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let mut m = vec![0f32; tq * tk];
    for i in 0..tq {
        for j in (offset + i + 1)..tk {
            m[i * tk + j] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_data(TensorData::new(m, [1, 1, tq, tk]), device)
}

/// Scaled dot-product attention with a causal mask. `q` is `[b, h, tq, hd]`, `k`/`v` are
/// `[b, h_kv, tk, hd]` with `h % h_kv == 0` (grouped-query attention). Returns `[b, tq, h·hd]`.
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    offset: usize,
) -> Tensor<B, 3> {
    let [b, h, tq, hd] = q.dims();
    let [_, h_kv, tk, _] = k.dims();
    let (k, v) = if h_kv == h {
        (k, v)
    } else {
        let rep = h / h_kv;
        let expand = |x: Tensor<B, 4>| {
            x.unsqueeze_dim::<5>(2)
                .expand([b, h_kv, rep, tk, hd])
                .reshape([b, h, tk, hd])
        };
        (expand(k), expand(v))
    };
    let scale = 1.0 / (hd as f64).sqrt();
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let scores = if tq > 1 || offset + tq < tk {
        let mask = causal_mask::<B>(tq, tk, offset, &scores.device());
        scores + mask
    } else {
        scores
    };
    let probs = activation::softmax(scores, 3);
    probs.matmul(v).swap_dims(1, 2).reshape([b, tq, h * hd])
}
