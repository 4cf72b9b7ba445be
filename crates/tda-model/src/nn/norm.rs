//! LayerNorm and RMSNorm over the last axis of `[b, t, d]`.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;

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
    /// `[b, t, d] -> [b, t, d]`, in f32 whatever the input's dtype, cast back to it as
    /// `transformers` does: RMSNorm before its weight (`weight * x.to(input_dtype)`), LayerNorm
    /// after weight and bias (torch's `layer_norm` computes all of it in f32). No cast for f32.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let x = super::cast(x, DType::F32);
        let f32 = |p: &Param<Tensor<B, 1>>| super::cast(p.val(), DType::F32).unsqueeze::<3>();
        match &self.bias {
            None => {
                let ms = x.clone().square().mean_dim(2);
                let x = super::cast(x * (ms + self.eps).sqrt().recip(), dtype);
                x * self.weight.val().unsqueeze::<3>()
            }
            Some(b) => {
                let mean = x.clone().mean_dim(2);
                let centered = x - mean;
                let var = centered.clone().square().mean_dim(2);
                let x = centered * (var + self.eps).sqrt().recip();
                super::cast(x * f32(&self.weight) + f32(b), dtype)
            }
        }
    }
}
