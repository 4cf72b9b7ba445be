//! Moving attention heads between the token-major layout the projections produce,
//! `[b, t, h, hd]`, and the head-major layout attention multiplies, `[b, h, t, hd]`.
//!
//! burn expresses the move as `swap_dims(1, 2)`, a strided view; the copy happens later, in the
//! next `reshape`: when heads are merged in the forward, and for the gradients of `q`, `k` and
//! `v` in the backward. On the CPU backend that copy walks the view one value at a time through a
//! generic strided iterator (≈ 5 % of a small Llama's forward + backward). Here, on the CPU
//! backend (with or without autodiff), [`swap_heads`] copies runs of `hd` contiguous values into
//! a contiguous result, and its backward is the same copy the other way. Other backends get
//! burn's `swap_dims(1, 2)`. `tests::*` check values and gradients against burn's.

use std::any::Any;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorPrimitive;
use burn::tensor::{bf16, f16, DType, Element};
use rayon::prelude::*;

use super::softmax::{unwrap, wrap};
use crate::device::Cpu;

/// `[b, t, h·hd]` → `[b, h, t, hd]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, t, d] = x.dims();
    swap_heads(x.reshape([b, t, heads, d / heads]))
}

/// `[b, h, t, hd]` → `[b, t, h·hd]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, t, hd] = x.dims();
    swap_heads(x).reshape([b, t, h * hd])
}

/// `[b, p, q, d]` → `[b, q, p, d]` (see the module docs).
pub fn swap_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let prim: Box<dyn Any> = Box::new(x.into_primitive().tensor());
    let prim = match prim.downcast::<FloatTensor<Autodiff<Cpu>>>() {
        Ok(t) => {
            let out = SwapBackward
                .prepare::<NoCheckpointing>([t.node.clone()])
                .compute_bound()
                .stateless(swap_cpu(t.primitive));
            return wrap(out);
        }
        Err(p) => p,
    };
    let prim = match prim.downcast::<FloatTensor<Cpu>>() {
        Ok(t) => return wrap(swap_cpu(*t)),
        Err(p) => p,
    };
    Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(unwrap::<B>(prim))).swap_dims(1, 2)
}

/// The backward of a swap is the same swap of the gradient.
#[derive(Debug)]
struct SwapBackward;

impl Backward<Cpu, 1> for SwapBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<Cpu, _>(ops.parents, ops.node, grads, swap_cpu);
    }
}

/// The swap as one contiguous copy for the float types models use; a strided view otherwise.
fn swap_cpu(x: FlexTensor) -> FlexTensor {
    match x.dtype() {
        DType::F32 => copy_swapped::<f32>(&x),
        DType::BF16 => copy_swapped::<bf16>(&x),
        DType::F16 => copy_swapped::<f16>(&x),
        _ => {
            let t = Tensor::<Cpu, 4>::from_primitive(TensorPrimitive::Float(x));
            t.swap_dims(1, 2).into_primitive().tensor()
        }
    }
}

/// `out[b, j, i, :] = x[b, i, j, :]` for `x [b, p, q, d]` with any non-negative strides: runs of
/// `d` values are copied whole when the last axis is contiguous. Output rows `(b, j)` (`p·d`
/// values each) are filled in parallel, in tasks of ≥ 16k values.
fn copy_swapped<E: Element + bytemuck::Pod + Default>(x: &FlexTensor) -> FlexTensor {
    let layout = x.layout();
    let dims: Vec<usize> = layout.shape().to_vec();
    let [nb, p, q, d] = [dims[0], dims[1], dims[2], dims[3]];
    let x = if layout.has_positive_strides() {
        x.clone()
    } else {
        x.to_contiguous()
    };
    let layout = x.layout();
    let st: Vec<usize> = layout.strides().iter().map(|&s| s as usize).collect();
    let start = layout.start_offset();
    let src: &[E] = x.storage::<E>();
    let mut out = vec![E::default(); nb * p * q * d];
    let row = p * d;
    // No task when `row` is 0 (an empty tensor).
    if let Some(rows) = 16_384usize.checked_div(row) {
        let rows_per_task = rows.max(1);
        out.par_chunks_mut(row * rows_per_task)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (k, dst_row) in chunk.chunks_mut(row).enumerate() {
                    let r = task * rows_per_task + k; // = b·q + j
                    let (b, j) = (r / q, r % q);
                    for (i, dst) in dst_row.chunks_mut(d).enumerate() {
                        let base = start + b * st[0] + i * st[1] + j * st[2];
                        if st[3] == 1 {
                            dst.copy_from_slice(&src[base..base + d]);
                        } else {
                            for (e, v) in dst.iter_mut().enumerate() {
                                *v = src[base + e * st[3]];
                            }
                        }
                    }
                }
            });
    }
    FlexTensor::from_data(TensorData::new(out, [nb, q, p, d]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CpuAutodiff;

    fn input(dims: [usize; 4]) -> Vec<f32> {
        (0..dims.iter().product::<usize>())
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.1)
            .collect()
    }

    /// Value, and the input gradient of Σ w ⊙ f(x) for a fixed weighting w of the output.
    fn value_and_grad(
        f: impl Fn(Tensor<CpuAutodiff, 4>) -> Tensor<CpuAutodiff, 4>,
        x: Tensor<CpuAutodiff, 4>,
    ) -> (Vec<f32>, Vec<f32>) {
        let x = x.require_grad();
        let y = f(x.clone());
        let n = y.dims().iter().product::<usize>();
        let w: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
        let w = Tensor::<CpuAutodiff, 4>::from_data(TensorData::new(w, y.dims()), &y.device());
        let val = y.clone().into_data().to_vec::<f32>().unwrap();
        let g = x.grad(&(y * w).sum().backward()).unwrap();
        (val, g.into_data().to_vec::<f32>().unwrap())
    }

    #[test]
    fn swap_equals_burns_swap_dims_value_and_gradient() {
        let dims = [2, 3, 5, 4];
        let dev = Default::default();
        let x = || Tensor::<CpuAutodiff, 4>::from_data(TensorData::new(input(dims), dims), &dev);
        let ours = value_and_grad(swap_heads, x());
        let burns = value_and_grad(|t| t.swap_dims(1, 2), x());
        assert_eq!(ours, burns);
        // A strided input (a view swapped by burn first), as the gradient of `kᵀ` arrives.
        let ours = value_and_grad(|t| swap_heads(t.swap_dims(2, 3)), x());
        let burns = value_and_grad(|t| t.swap_dims(2, 3).swap_dims(1, 2), x());
        assert_eq!(ours, burns);
    }

    #[test]
    fn split_and_merge_are_inverse_and_match_reshape_swap() {
        let dev = Default::default();
        let (b, t, h, hd) = (2, 3, 4, 5);
        let x = Tensor::<Cpu, 3>::from_data(
            TensorData::new(input([b, t, h, hd]), [b, t, h * hd]),
            &dev,
        );
        let split = split_heads(x.clone(), h);
        let want = x.clone().reshape([b, t, h, hd]).swap_dims(1, 2);
        assert_eq!(split.to_data(), want.to_data());
        assert_eq!(merge_heads(split).to_data(), x.to_data());
        // bf16 keeps its type and values.
        let xb = x.cast(DType::BF16);
        let back = merge_heads(split_heads(xb.clone(), h));
        assert_eq!(back.dtype(), DType::BF16);
        assert_eq!(back.to_data(), xb.to_data());
    }
}
