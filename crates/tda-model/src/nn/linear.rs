//! [`TapLinear`], the one linear layer of every family, and the [`Recorder`] that observes it.

use burn::module::Param;
use burn::prelude::*;

/// Observes (and may rewrite) intermediate tensors of a forward pass.
///
/// The default methods pass everything through, so plain inference uses [`NoRecord`]. The gradient
/// taps (see [`crate::taps`]) implement it to keep the input of each tracked linear layer and to
/// obtain dL/d(output) (an identity operation that captures the gradient, or a zero probe).
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
        let mut y = super::matmul_2d(x.clone().reshape([b * t, d_in]), self.weight.val())
            .reshape([b, t, d_out]);
        if let Some(bias) = &self.bias {
            y = y + bias.val().unsqueeze::<3>();
        }
        rec.linear(&self.name, &x, y)
    }
}
