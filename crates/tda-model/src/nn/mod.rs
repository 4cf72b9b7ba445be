//! Building blocks shared by every family: tap-able linear layers, LayerNorm/RMSNorm, RoPE,
//! causal (optionally sliding-window) attention with grouped-query heads, and the MLP activations.
//!
//! Shapes: hidden states are `[batch, tokens, d]`; attention tensors are
//! `[batch, heads, tokens, head_dim]`. Nothing here knows a family or an HF name except
//! [`TapLinear::name`], which the family code sets.

mod attention;
mod capture;
mod heads;
mod linear;
mod matmul;
mod norm;
mod rope;
mod softmax;

pub use attention::{causal_attention, causal_mask, KvCache};
pub use capture::{capture, take_grad, GradSlot};
pub use heads::{merge_heads, split_heads, swap_heads};
pub use linear::{NoRecord, Recorder, TapLinear};
pub use matmul::matmul_2d;
pub use norm::Norm;
pub use rope::Rope;
pub use softmax::{log_softmax_last, silu, softmax_last};

use burn::prelude::*;
use burn::tensor::DType;

/// What every block of one forward pass shares: the absolute position of the first token and,
/// for RoPE layouts, the rotary tables of these positions.
pub struct Step<B: Backend> {
    pub offset: usize,
    pub rope: Option<Rope<B>>,
}

/// `x` in `dtype`; no operation (and no autodiff node) when it already is.
pub fn cast<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(dtype)
    }
}

/// GELU, tanh approximation (HF `gelu_new`): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu_tanh<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
    x * (inner.tanh() + 1.0) * 0.5
}

/// SwiGLU: silu(gate) ⊙ up, both `[b, t, intermediate]`.
pub fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    silu(gate) * up
}
