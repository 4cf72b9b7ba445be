//! The fit's sums on the model's device. Per batch and tracked layer only its sums cross to the
//! host:
//! - covariance pass: the diagonal blocks of `Σ a aᵀ` and `Σ g gᵀ` over the batch's real tokens
//!   (`[s, s]` each);
//! - Λ pass: `Σ_b G̃_b²` (`[d_out, d_a]`) over the batch's sequences, `G̃_b = (g Q_S)ᵀ (a Q_A)`
//!   (`ekfac`, eigenbases uploaded once per pass) or `G_b = gᵀ a` (`diagonal`).
//!
//! Each sum is accumulated in f32 on the device over one batch and added to the fitter's f64
//! running sum on the host ([`FactorFitter::add_layer_sums`]), so f32 rounding grows with the
//! batch's rows, not with the corpus. Padding rows are ignored whatever they hold (selected out
//! or filled with 0 before any product).

use burn::prelude::*;
use tda_curvature::{Eigenbasis, FactorFitter, LayerSpec, Pass, PassSums};

use super::to_f64;
use crate::error::{Result, TraceError};
use crate::host::DeviceTaps;

/// The most memory the per-sequence gradients of one Λ chunk may take on the device.
const LAMBDA_CHUNK_BYTES: usize = 256 << 20;

/// The eigenbases of the tracked layers on the device, for an `ekfac` Λ pass: per layer, one
/// `[s, s]` tensor per diagonal block of Q_A and of Q_S.
pub struct DeviceBases<B: Backend> {
    layers: Vec<LayerBases<B>>,
}

/// One layer's `(Q_A blocks, Q_S blocks)`.
type LayerBases<B> = (Vec<Tensor<B, 2>>, Vec<Tensor<B, 2>>);

impl<B: Backend> DeviceBases<B> {
    /// Uploads the fitter's eigenbases (`None` when it has none: a `diagonal` fit).
    pub fn upload(fitter: &FactorFitter, device: &B::Device) -> Option<Self> {
        let up = |q: &Eigenbasis| -> Vec<Tensor<B, 2>> {
            q.vecs
                .iter()
                .zip(&q.blocks)
                .map(|(v, &(_, s))| Tensor::from_data(TensorData::new(v.clone(), [s, s]), device))
                .collect()
        };
        let layers = (0..fitter.specs().len())
            .map(|l| fitter.eigenbases(l).map(|(a, s)| (up(a), up(s))))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { layers })
    }
}

/// The sums of one batch's taps of the layers `first .. first + taps.a.len()` for the fitter's
/// current pass. `bases`: the uploaded eigenbases in an `ekfac` Λ pass, `None` otherwise.
pub fn batch_sums<B: Backend>(
    fitter: &FactorFitter,
    bases: Option<&DeviceBases<B>>,
    first: usize,
    taps: &DeviceTaps<B>,
) -> Result<PassSums> {
    let pass = fitter
        .pass()
        .ok_or_else(|| TraceError::Usage("all passes of the fit are done".into()))?;
    let end = first + taps.a.len();
    if end > fitter.specs().len() {
        return Err(TraceError::Usage(format!(
            "taps for layers {first}..{end} of {} tracked layers",
            fitter.specs().len()
        )));
    }
    let specs = &fitter.specs()[first..end];
    let (b, t) = (taps.batch, taps.seq_len);
    let device = match taps.a.first() {
        Some(a) => a.device(),
        None => return Err(TraceError::Usage("no tracked layers in the batch".into())),
    };
    let tokens = taps.mask.iter().filter(|&&m| m).count();
    let sequences = taps
        .mask
        .chunks(t)
        .filter(|row| row.iter().any(|&m| m))
        .count() as u64;
    let mut layers = Vec::with_capacity(specs.len());
    match pass {
        Pass::Covariance => {
            let mut sides = Vec::with_capacity(specs.len());
            if tokens == 0 {
                // No real row: zero sums (an empty product is not every backend's case).
                for l in 0..specs.len() {
                    let (a_blocks, s_blocks) = fitter.blocks(first + l);
                    let zero = |bl: &[(usize, usize)]| {
                        bl.iter()
                            .map(|&(_, s)| vec![0.0; s * s])
                            .collect::<Vec<Vec<f64>>>()
                    };
                    layers.push([zero(a_blocks), zero(s_blocks)].concat());
                }
                return Ok(PassSums {
                    pass,
                    tokens: 0,
                    sequences,
                    layers,
                });
            }
            let real: Vec<i64> = (0..b * t)
                .filter(|&r| taps.mask[r])
                .map(|r| r as i64)
                .collect();
            let real = Tensor::<B, 1, Int>::from_data(TensorData::new(real, [tokens]), &device);
            for (l, spec) in specs.iter().enumerate() {
                let (a_blocks, s_blocks) = fitter.blocks(first + l);
                let a = taps.a[l]
                    .clone()
                    .reshape([b * t, spec.d_in])
                    .select(0, real.clone());
                let a = if spec.has_bias {
                    Tensor::cat(vec![a, Tensor::ones([tokens, 1], &device)], 1)
                } else {
                    a
                };
                let g = taps.g[l]
                    .clone()
                    .reshape([b * t, spec.d_out])
                    .select(0, real.clone());
                sides.push((gram_blocks(a, a_blocks), gram_blocks(g, s_blocks)));
            }
            check_finite(specs, &sides)?;
            layers = sides
                .into_iter()
                .map(|(a, s)| a.into_iter().chain(s).collect())
                .collect();
        }
        Pass::Lambda => {
            let pad = Tensor::<B, 2, Bool>::from_data(
                TensorData::new(taps.mask.iter().map(|&m| !m).collect::<Vec<_>>(), [b, t]),
                &device,
            )
            .reshape([b, t, 1]);
            for (l, spec) in specs.iter().enumerate() {
                let basis = bases.map(|q| &q.layers[first + l]);
                let sum = lambda_sum(spec, basis, &taps.a[l], &taps.g[l], &pad);
                if !sum.iter().all(|v| v.is_finite()) {
                    return Err(TraceError::Usage(format!(
                        "layer {}: non-finite value in activations a or output gradients g",
                        spec.name
                    )));
                }
                layers.push(vec![sum]);
            }
        }
    }
    if !taps.value.is_finite() {
        return Err(TraceError::Usage(format!(
            "the differentiated scalar is {} (non-finite model output)",
            taps.value
        )));
    }
    Ok(PassSums {
        pass,
        tokens: if pass == Pass::Covariance {
            tokens as u64
        } else {
            0
        },
        sequences,
        layers,
    })
}

/// `X[:, blk]ᵀ X[:, blk]` for each diagonal block, `x [n, dim]`, as f64 row-major `[s, s]`.
fn gram_blocks<B: Backend>(x: Tensor<B, 2>, blocks: &[(usize, usize)]) -> Vec<Vec<f64>> {
    blocks
        .iter()
        .map(|&(off, s)| {
            let xb = x.clone().narrow(1, off, s);
            to_f64(xb.clone().transpose().matmul(xb))
        })
        .collect()
}

/// `Σ_b G̃_b²` of one layer, `[d_out, d_a]` f64: padding rows filled with 0 (the bias column too),
/// rotated by the block-diagonal eigenbases when given, per-sequence gradients formed in chunks
/// of at most [`LAMBDA_CHUNK_BYTES`].
fn lambda_sum<B: Backend>(
    spec: &LayerSpec,
    basis: Option<&LayerBases<B>>,
    a: &Tensor<B, 3>,
    g: &Tensor<B, 3>,
    pad: &Tensor<B, 3, Bool>,
) -> Vec<f64> {
    let [b, t, _] = a.dims();
    let (d_out, d_a) = (spec.d_out, spec.d_a());
    let mut a = a.clone();
    if spec.has_bias {
        a = Tensor::cat(vec![a, Tensor::ones([b, t, 1], &pad.device())], 2);
    }
    let a = a.mask_fill(pad.clone().expand([b, t, d_a]), 0.0);
    let g = g.clone().mask_fill(pad.clone().expand([b, t, d_out]), 0.0);
    let (a, g) = match basis {
        Some((qa, qs)) => (rotate(a, qa), rotate(g, qs)),
        None => (a, g),
    };
    let chunk = (LAMBDA_CHUNK_BYTES / (d_out * d_a * 4)).clamp(1, b);
    let mut sum: Option<Tensor<B, 3>> = None;
    for start in (0..b).step_by(chunk) {
        let n = chunk.min(b - start);
        let gt = g
            .clone()
            .narrow(0, start, n)
            .swap_dims(1, 2)
            .matmul(a.clone().narrow(0, start, n)); // [n, d_out, d_a]
        let sq = (gt.clone() * gt).sum_dim(0);
        sum = Some(match sum {
            Some(s) => s + sq,
            None => sq,
        });
    }
    to_f64(sum.expect("a batch has a sequence").reshape([d_out, d_a]))
}

/// `x [b, t, dim]` → `x Q` with Q block-diagonal (one `[s, s]` tensor per block, in order).
fn rotate<B: Backend>(x: Tensor<B, 3>, q: &[Tensor<B, 2>]) -> Tensor<B, 3> {
    let [b, t, dim] = x.dims();
    let x = x.reshape([b * t, dim]);
    let mut off = 0;
    let parts: Vec<Tensor<B, 2>> = q
        .iter()
        .map(|qb| {
            let s = qb.dims()[0];
            let y = x.clone().narrow(1, off, s).matmul(qb.clone());
            off += s;
            y
        })
        .collect();
    let y = if parts.len() == 1 {
        parts.into_iter().next().expect("one block")
    } else {
        Tensor::cat(parts, 1)
    };
    y.reshape([b, t, dim])
}

/// A non-finite covariance names its layer and side in the host path's order: the first layer
/// whose activations are not finite, else the first whose output gradients are not.
type Sides = (Vec<Vec<f64>>, Vec<Vec<f64>>);
fn check_finite(specs: &[LayerSpec], sides: &[Sides]) -> Result<()> {
    let finite = |x: &[Vec<f64>]| x.iter().all(|p| p.iter().all(|v| v.is_finite()));
    let named = |what: &str, bad: &dyn Fn(&Sides) -> bool| {
        specs
            .iter()
            .zip(sides)
            .find(|(_, p)| bad(p))
            .map(|(s, _)| format!("layer {}: non-finite value in {what}", s.name))
    };
    match named("activations a", &|p| !finite(&p.0))
        .or_else(|| named("output gradients g", &|p| !finite(&p.1)))
    {
        Some(msg) => Err(TraceError::Usage(msg)),
        None => Ok(()),
    }
}
