//! Taps on the host: one forward + one activation-gradient backward of a frozen model, then the
//! per-layer `a`/`g` copied to `f32` vectors for `tda-curvature`.
//!
//! Differentiated scalars:
//! - [`Labels::Data`]: the summed next-token loss on the sequence's own tokens (empirical; the
//!   candidate gradient ∇L(z)).
//! - [`Labels::Sampled`]: the summed loss on labels drawn from the model's own predictive
//!   distribution (true Fisher / Gauss-Newton for cross-entropy), seeded per sequence.
//! - [`Target`]: a measurement `f` over selected target positions (queries).

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use tda_curvature::{LayerBatch, LayerSpec};
use tda_model::{tap, token_logprobs, TokenBatch, Transformer};

use crate::error::{Result, TraceError};

/// Per-layer taps of one batch, in host memory, in the order of the specs.
pub struct HostTaps {
    pub a: Vec<Vec<f32>>,
    pub g: Vec<Vec<f32>>,
    pub mask: Vec<bool>,
    pub batch: usize,
    pub seq_len: usize,
    /// Value of the differentiated scalar.
    pub value: f32,
    /// Per-sequence values of the measurement (only for [`Scalar::Measure`]).
    pub values: Vec<f32>,
    /// Seconds in forward + backward, and in the device → host copy.
    pub t_model: f64,
    pub t_copy: f64,
}

impl HostTaps {
    pub fn layer_batches(&self) -> Vec<LayerBatch<'_>> {
        self.a
            .iter()
            .zip(&self.g)
            .map(|(a, g)| LayerBatch {
                a,
                g,
                mask: &self.mask,
                batch: self.batch,
                seq_len: self.seq_len,
            })
            .collect()
    }
}

/// Labels of the training loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Labels<'a> {
    /// The sequence's own next tokens.
    Data,
    /// Drawn from the model; sequence `i` of the batch uses the RNG seeded by `(seed, keys[i])`
    /// (`keys`: one per sequence, e.g. [`window_key`] of its document and window, so a window
    /// draws the same labels whatever its batch or shard).
    Sampled { seed: u64, keys: &'a [u64] },
}

/// The RNG key of window `window` of document ordinal `doc` (independent of batching and sharding).
pub fn window_key(doc: u64, window: usize) -> u64 {
    doc.wrapping_mul(0xA24B_AED4_963E_E407) ^ (window as u64).wrapping_mul(0x9FB2_1C65_1E98_DF25)
}

/// A measurement `f` on chosen target positions: `weights [batch, seq_len − 1]` (1 on target
/// `t + 1` to include, 0 elsewhere).
#[derive(Clone, Debug)]
pub struct Target {
    pub kind: crate::measure::Measurement,
    pub weights: Vec<f32>,
}

fn to_host<BI: Backend>(t: Tensor<BI, 3>) -> Vec<f32> {
    // `into_vec` takes the buffer over where it can (no copy).
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 tensor data")
}

/// The scalar to differentiate.
pub enum Scalar<'a> {
    Loss(Labels<'a>),
    Measure(&'a Target),
}

/// Per-layer taps of one batch on the model's device, in the order of the specs:
/// `a [batch, seq_len, d_in]`, `g [batch, seq_len, d_out]` (padding rows hold whatever the model
/// left there: consumers mask them).
pub struct DeviceTaps<B: Backend> {
    pub a: Vec<Tensor<B, 3>>,
    pub g: Vec<Tensor<B, 3>>,
    /// `[batch · seq_len]`, `true` = real token.
    pub mask: Vec<bool>,
    pub batch: usize,
    pub seq_len: usize,
    /// Value of the differentiated scalar (not checked for finiteness here).
    pub value: f32,
    /// Per-sequence values of the measurement (only for [`Scalar::Measure`]).
    pub values: Vec<f32>,
    /// Seconds in forward + backward.
    pub t_model: f64,
}

/// Forward + backward on `batch` of a *frozen* model, taps of the layers named in `specs`, copied
/// to the host. A non-finite scalar is an error naming the first layer in forward order whose
/// taps are not finite; non-finite taps under a finite scalar are refused by every consumer
/// (`tda-curvature` checks the real rows of what it is given), so they are not scanned twice here.
pub fn host_taps<AD: AutodiffBackend>(
    frozen: &Transformer<AD>,
    specs: &[LayerSpec],
    batch: &TokenBatch,
    scalar: Scalar<'_>,
) -> Result<HostTaps> {
    let taps = device_taps(frozen, specs, batch, scalar)?;
    let t1 = Instant::now();
    let a: Vec<Vec<f32>> = taps.a.into_iter().map(to_host).collect();
    let g: Vec<Vec<f32>> = taps.g.into_iter().map(to_host).collect();
    let t_copy = t1.elapsed().as_secs_f64();
    let mask = taps.mask;
    if !taps.value.is_finite() {
        return Err(TraceError::Usage(non_finite(
            specs, &a, &g, &mask, taps.value,
        )));
    }
    Ok(HostTaps {
        a,
        g,
        mask,
        batch: taps.batch,
        seq_len: taps.seq_len,
        value: taps.value,
        values: taps.values,
        t_model: taps.t_model,
        t_copy,
    })
}

/// The error for a non-finite scalar: the first layer in forward order whose activations (real
/// tokens) are not finite (where the forward broke), else the first with non-finite output
/// gradients, else the scalar itself.
fn non_finite(
    specs: &[LayerSpec],
    a: &[Vec<f32>],
    g: &[Vec<f32>],
    mask: &[bool],
    value: f32,
) -> String {
    let bad_rows = |x: &[f32], d: usize| {
        mask.iter()
            .enumerate()
            .any(|(r, &m)| m && !tda_curvature::all_finite(&x[r * d..(r + 1) * d]))
    };
    let layer = |x: &[Vec<f32>], d: fn(&LayerSpec) -> usize| {
        specs
            .iter()
            .zip(x)
            .find(|(s, x)| bad_rows(x, d(s)))
            .map(|(s, _)| &s.name)
    };
    if let Some(name) = layer(a, |s| s.d_in) {
        format!("layer {name}: non-finite value in activations a")
    } else if let Some(name) = layer(g, |s| s.d_out) {
        format!("layer {name}: non-finite value in output gradients g")
    } else {
        format!("the differentiated scalar is {value} (non-finite model output)")
    }
}

/// Forward + backward on `batch` of a *frozen* model, taps of the layers named in `specs`, left
/// on the model's device.
pub fn device_taps<AD: AutodiffBackend>(
    frozen: &Transformer<AD>,
    specs: &[LayerSpec],
    batch: &TokenBatch,
    scalar: Scalar<'_>,
) -> Result<DeviceTaps<AD::InnerBackend>> {
    if batch.seq_len < 2 {
        return Err(TraceError::Usage(
            "sequences need at least 2 tokens to have a next-token loss".into(),
        ));
    }
    if batch.seq_len > frozen.config.max_positions {
        return Err(TraceError::Usage(format!(
            "sequence of {} tokens exceeds the model's max_positions {}",
            batch.seq_len, frozen.config.max_positions
        )));
    }
    let device = frozen.embed.device();
    let ids = batch.to_tensor::<AD>(&device);
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let filter = |n: &str| names.contains(&n);
    let (bsz, t) = (batch.batch, batch.seq_len);
    let t0 = Instant::now();
    let ids2 = ids.clone();
    let mut values: Vec<f32> = Vec::new();
    let values_out = &mut values;
    let taps = tap(frozen, ids, &filter, false, |logits: Tensor<AD, 3>| {
        let tmask = batch.target_mask::<AD>(&device);
        match scalar {
            Scalar::Loss(Labels::Data) => (token_logprobs(logits, ids2) * tmask).sum().neg(),
            Scalar::Loss(Labels::Sampled { seed, keys }) => {
                // Targets of row i are positions 0 .. lengths[i] − 1 (the rest is padding).
                let real: Vec<usize> = batch.lengths.iter().map(|&n| n.saturating_sub(1)).collect();
                let u = crate::sample::uniforms(bsz, t - 1, seed, keys, &real);
                let u = Tensor::<AD::InnerBackend, 2>::from_data(
                    TensorData::new(u, [bsz, t - 1]),
                    &device,
                );
                let lab =
                    crate::sample::sample_on_device(logits.clone().narrow(1, 0, t - 1).inner(), u);
                let lab = Tensor::<AD, 2, Int>::from_inner(lab).reshape([bsz, t - 1, 1]);
                let lp = tda_model::nn::log_softmax_last(logits.narrow(1, 0, t - 1))
                    .gather(2, lab)
                    .reshape([bsz, t - 1]);
                (lp * tmask).sum().neg()
            }
            Scalar::Measure(target) => {
                let w = Tensor::<AD, 2>::from_data(
                    TensorData::new(target.weights.clone(), [bsz, t - 1]),
                    &device,
                );
                let per_seq = crate::measure::measurement_value(target.kind, logits, ids2, w);
                *values_out = per_seq
                    .clone()
                    .inner()
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .expect("f32 tensor data");
                per_seq.sum()
            }
        }
    });
    let t_model = t0.elapsed().as_secs_f64();
    if taps.layers.len() != specs.len() {
        return Err(TraceError::Mismatch(format!(
            "the model has {} of the {} tracked layers (first missing: {})",
            taps.layers.len(),
            specs.len(),
            specs
                .iter()
                .find(|s| !taps.layers.iter().any(|l| l.name == s.name))
                .map(|s| s.name.as_str())
                .unwrap_or("?")
        )));
    }
    let mut a = Vec::with_capacity(specs.len());
    let mut g = Vec::with_capacity(specs.len());
    // Taps come in forward order; specs are in forward order too, but match by name to be safe.
    let mut layers: Vec<Option<tda_model::LayerTap<AD::InnerBackend>>> =
        taps.layers.into_iter().map(Some).collect();
    for s in specs {
        let pos = layers
            .iter()
            .position(|l| l.as_ref().is_some_and(|l| l.name == s.name))
            .ok_or_else(|| TraceError::Mismatch(format!("layer {} was not tapped", s.name)))?;
        let l = layers[pos].take().unwrap();
        let [lb, lt, din] = l.a.dims();
        let dout = l.g.dims()[2];
        if din != s.d_in || dout != s.d_out || lb != bsz || lt != t {
            return Err(TraceError::Mismatch(format!(
                "layer {}: model has {}×{} (d_out×d_in), factors expect {}×{}",
                s.name, dout, din, s.d_out, s.d_in
            )));
        }
        a.push(l.a);
        g.push(l.g);
    }
    Ok(DeviceTaps {
        a,
        g,
        mask: batch.mask(),
        batch: bsz,
        seq_len: t,
        value: taps.value,
        values,
        t_model,
    })
}
