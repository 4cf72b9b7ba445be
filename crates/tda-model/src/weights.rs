//! Parameters by HF name: [`Weights`] in, parameters out ([`Loader`]), and parameters (or their
//! gradients) back to [`Weights`] ([`ParamReader`], [`put_linear`], [`put_norm`]).
//!
//! Invariant: a tensor goes out under the name and in the HF layout it came in with, so
//! loading then reading is the identity (GPT-2 `Conv1D` weights stay `[d_in, d_out]`, `nn.Linear`
//! weights `[d_out, d_in]`).

use std::collections::BTreeMap;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;

use crate::nn::{Norm, TapLinear};

/// A dense f32 tensor in HF layout (row-major), as read from or written to safetensors.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// HF parameter name → tensor. A `BTreeMap` so that files are written in a stable order.
pub type Weights = BTreeMap<String, HostTensor>;

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

/// The transpose of a 2-D tensor of any element type (its bytes moved element by element).
fn transposed(t: TensorData) -> TensorData {
    let (r, c) = (t.shape[0], t.shape[1]);
    let size = t.dtype.size();
    let src = t.as_bytes();
    let mut out = vec![0u8; src.len()];
    for i in 0..r {
        for j in 0..c {
            let (from, to) = ((i * c + j) * size, (j * r + i) * size);
            out[to..to + size].copy_from_slice(&src[from..from + size]);
        }
    }
    TensorData::from_bytes_vec(out, [c, r], t.dtype)
}

/// HF names of the parts outside the blocks, per [`crate::config::Layout`].
pub struct Trunk {
    /// Token embeddings `[vocab, d]`.
    pub embed: &'static str,
    /// Learned position embeddings `[max_positions, d]` (GPT-2).
    pub pos_embed: Option<&'static str>,
    /// The final norm module.
    pub final_norm: &'static str,
    /// RMSNorm (weight only) rather than LayerNorm.
    pub rms: bool,
}

/// How a family stores linear weights: GPT-2's `Conv1D` as `[d_in, d_out]`, `nn.Linear` as
/// `[d_out, d_in]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearLayout {
    Conv1d,
    Linear,
}

/// Where a model's tensors come from, one at a time as f32: a [`Weights`] map in memory (each
/// tensor copied out), or a model folder read lazily from its safetensors files
/// (`hf::FolderWeights`: each tensor converted from the mapped file when it is taken, so loading
/// holds the model once, plus one tensor, never a second f32 copy of all of it).
pub trait WeightSource {
    /// The tensor `name` as f32, or `None` when there is none of that name.
    fn fetch(&self, name: &str) -> Result<Option<HostTensor>, String>;

    /// The tensor `name` as `dtype` (a float type), or `None`. The default converts
    /// [`WeightSource::fetch`]'s f32; a source that stores `dtype` returns it as stored, bit for
    /// bit, without an f32 copy (`hf::FolderWeights`).
    fn fetch_as(&self, name: &str, dtype: DType) -> Result<Option<TensorData>, String> {
        Ok(self
            .fetch(name)?
            .map(|t| TensorData::new(t.data, t.shape).convert_dtype(dtype)))
    }
}

impl WeightSource for Weights {
    fn fetch(&self, name: &str) -> Result<Option<HostTensor>, String> {
        Ok(self.get(name).cloned())
    }
}

/// Takes tensors out of a [`WeightSource`] and turns them into parameters of `dtype` (f32, or
/// bf16/f16 kept as stored: `--dtype`), checking shapes and finiteness. Errors name the tensor.
pub struct Loader<'a, B: Backend> {
    pub weights: &'a dyn WeightSource,
    pub device: &'a B::Device,
    pub dtype: DType,
}

impl<B: Backend> Loader<'_, B> {
    /// The tensor `name` in the loader's dtype, checked to have `shape` and finite values.
    fn get(&self, name: &str, shape: &[usize]) -> Result<TensorData, String> {
        let t = self
            .weights
            .fetch_as(name, self.dtype)?
            .ok_or_else(|| format!("tensor \"{name}\" is missing"))?;
        if t.shape.as_slice() != shape {
            return Err(format!(
                "tensor \"{name}\" has shape {:?}, the config implies {:?}",
                t.shape.as_slice(),
                shape
            ));
        }
        if let Some(bad) = t.iter::<f32>().position(|x| !x.is_finite()) {
            return Err(format!(
                "tensor \"{name}\" holds a non-finite value at index {bad}"
            ));
        }
        Ok(t)
    }
    fn param<const D: usize>(&self, data: TensorData) -> Param<Tensor<B, D>> {
        Param::from_tensor(Tensor::from_data(data, (self.device, self.dtype)))
    }
    pub fn tensor1(&self, name: &str, n: usize) -> Result<Param<Tensor<B, 1>>, String> {
        Ok(self.param(self.get(name, &[n])?))
    }
    pub fn tensor2(&self, name: &str, r: usize, c: usize) -> Result<Param<Tensor<B, 2>>, String> {
        Ok(self.param(self.get(name, &[r, c])?))
    }
    /// The linear layer `module` (HF module name: reads `{module}.weight` and, with `bias`,
    /// `{module}.bias`).
    pub fn linear(
        &self,
        module: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        layout: LinearLayout,
    ) -> Result<TapLinear<B>, String> {
        let wname = format!("{module}.weight");
        let weight = match layout {
            LinearLayout::Conv1d => self.tensor2(&wname, d_in, d_out)?,
            LinearLayout::Linear => {
                // Transpose on the host so that the parameter is a leaf.
                self.param(transposed(self.get(&wname, &[d_out, d_in])?))
            }
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
    /// LayerNorm (`{module}.weight` + `.bias`) or, with `rms`, RMSNorm (`.weight` only).
    pub fn norm(&self, module: &str, d: usize, eps: f64, rms: bool) -> Result<Norm<B>, String> {
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

/// A tensor's values on the host, f32.
pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    let shape = t.dims().to_vec();
    let data = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 tensor data");
    HostTensor { shape, data }
}

/// Reads one parameter tensor (its value, or its gradient) into host memory.
pub trait ParamReader<B: Backend> {
    fn read1(&self, p: &Param<Tensor<B, 1>>) -> Option<HostTensor>;
    fn read2(&self, p: &Param<Tensor<B, 2>>) -> Option<HostTensor>;
}

/// Reads parameter values.
pub struct Values;
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

/// Writes a linear layer's weight (in `layout`) and bias under its HF name.
pub fn put_linear<B: Backend>(
    out: &mut Weights,
    lin: &TapLinear<B>,
    layout: LinearLayout,
    r: &dyn ParamReader<B>,
) {
    if let Some(w) = r.read2(&lin.weight) {
        let w = match layout {
            LinearLayout::Conv1d => w,
            LinearLayout::Linear => w.transposed(),
        };
        out.insert(format!("{}.weight", lin.name), w);
    }
    if let Some(b) = lin.bias.as_ref().and_then(|b| r.read1(b)) {
        out.insert(format!("{}.bias", lin.name), b);
    }
}

/// Writes a norm's weight (and LayerNorm bias) as `{module}.weight` / `{module}.bias`.
pub fn put_norm<B: Backend>(
    out: &mut Weights,
    module: &str,
    norm: &Norm<B>,
    r: &dyn ParamReader<B>,
) {
    if let Some(w) = r.read1(&norm.weight) {
        out.insert(format!("{module}.weight"), w);
    }
    if let Some(b) = norm.bias.as_ref().and_then(|b| r.read1(b)) {
        out.insert(format!("{module}.bias"), b);
    }
}

/// Deterministic HF-style random tensors for [`crate::Transformer::init`]: N(0, std) by
/// Box–Muller from one seeded stream, and constants.
pub struct Init {
    rng: rand::rngs::StdRng,
}

impl Init {
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        Self {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }
    pub fn normal(&mut self, shape: Vec<usize>, std: f32) -> HostTensor {
        use rand::Rng;
        let n: usize = shape.iter().product();
        // Box–Muller: two uniforms → one standard normal.
        let data = (0..n)
            .map(|_| {
                let u1: f32 = self.rng.random::<f32>().max(f32::MIN_POSITIVE);
                let u2: f32 = self.rng.random::<f32>();
                std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect();
        HostTensor { shape, data }
    }
    pub fn fill(shape: Vec<usize>, v: f32) -> HostTensor {
        let n = shape.iter().product();
        HostTensor {
            shape,
            data: vec![v; n],
        }
    }
}
