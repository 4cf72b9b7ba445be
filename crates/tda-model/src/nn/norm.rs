//! LayerNorm and RMSNorm over the last axis of `[b, t, d]`.

use burn::module::Param;
use burn::prelude::*;

/// LayerNorm (GPT-2: weight and bias) or RMSNorm (Llama family: weight only).
/// Invariant: `bias.is_none() == rms`.
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
    /// `[b, t, d] -> [b, t, d]`.
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
