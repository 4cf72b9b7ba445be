//! `x W` of the linear layers as ONE autodiff operation whose products `gemm` writes straight
//! into new buffers on the CPU backend.
//!
//! burn-flex allocates every matmul output zero-filled and then copies it once more to align it
//! (`FlexTensor::empty`): ≈ 5 % of a small Llama's forward + backward on the Kronfluence bench.
//! Here the forward `y = x W` and the backward `dx = dy Wᵀ`, `dW = xᵀ dy` run the same `gemm`
//! kernels burn-flex uses, into buffers that `gemm` fills before anything reads them. f32 on the
//! CPU backend (with or without autodiff); other dtypes and backends use burn's `matmul`.
//! `tests::*` check the value and both gradients against burn's.

use std::any::Any;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorPrimitive};

use super::softmax::{unwrap, wrap};
use crate::device::Cpu;

/// `x [m, k] · w [k, n] → [m, n]` (see the module docs).
pub fn matmul_2d<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    let x: Box<dyn Any> = Box::new(x.into_primitive().tensor());
    let w: Box<dyn Any> = Box::new(w.into_primitive().tensor());
    // `x` and `w` are primitives of the same backend `B`.
    if x.is::<FloatTensor<Autodiff<Cpu>>>() {
        return wrap(record(
            unwrap::<Autodiff<Cpu>>(x),
            unwrap::<Autodiff<Cpu>>(w),
        ));
    }
    if x.is::<FloatTensor<Cpu>>() {
        return wrap(product(&unwrap::<Cpu>(x), &unwrap::<Cpu>(w), false, false));
    }
    let float = |p| Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(unwrap::<B>(p)));
    float(x).matmul(float(w))
}

/// The backward: `dx = dy Wᵀ` and `dW = xᵀ dy`, each only where its parent is tracked.
#[derive(Debug)]
struct MatmulBackward;

impl Backward<Cpu, 2> for MatmulBackward {
    /// `x` (kept when `W` is tracked) and `W` (kept when `x` is tracked).
    type State = (Option<FlexTensor>, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w) = ops.state;
        binary::<Cpu, _, _>(
            ops.parents,
            ops.node,
            grads,
            |dy| product(&dy, &w.expect("W is kept when x is tracked"), false, true),
            |dy| product(&x.expect("x is kept when W is tracked"), &dy, true, false),
        );
    }
}

fn record(
    x: FloatTensor<Autodiff<Cpu>>,
    w: FloatTensor<Autodiff<Cpu>>,
) -> FloatTensor<Autodiff<Cpu>> {
    let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
    let y = product(&x.primitive, &w.primitive, false, false);
    match MatmulBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = (
                w_tracked.then_some(x.primitive),
                x_tracked.then_some(w.primitive),
            );
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// `op(a) · op(b)` with `op` the transpose where asked, for 2-D tensors with any strides.
fn product(a: &FlexTensor, b: &FlexTensor, ta: bool, tb: bool) -> FlexTensor {
    if a.dtype() != DType::F32 || b.dtype() != DType::F32 {
        let t = |x: &FlexTensor, tr: bool| {
            let x = Tensor::<Cpu, 2>::from_primitive(TensorPrimitive::Float(x.clone()));
            if tr {
                x.transpose()
            } else {
                x
            }
        };
        return t(a, ta).matmul(t(b, tb)).into_primitive().tensor();
    }
    // (rows, cols, row stride, column stride) of op(x).
    let view = |x: &FlexTensor, tr: bool| {
        let (dims, st) = (x.layout().shape(), x.layout().strides());
        if tr {
            (dims[1], dims[0], st[1], st[0])
        } else {
            (dims[0], dims[1], st[0], st[1])
        }
    };
    let (m, k, a_rs, a_cs) = view(a, ta);
    let (k2, n, b_rs, b_cs) = view(b, tb);
    assert_eq!(k, k2, "matmul inner dimensions");
    let out = if m == 0 || n == 0 || k == 0 {
        vec![0f32; m * n]
    } else {
        let a_ptr = a.storage::<f32>()[a.layout().start_offset()..].as_ptr();
        let b_ptr = b.storage::<f32>()[b.layout().start_offset()..].as_ptr();
        let mut out = Vec::<f32>::with_capacity(m * n);
        // burn-flex's threshold for splitting a product between threads.
        let par = if m * n * k >= 192 * 192 * 192 {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: the operands are f32 tensors whose layouts address `m × k` and `k × n`
        // elements of their storage from the start offsets with these strides; `out` has room
        // for `m × n` values, and `gemm` writes every one of them (dst = 1·a·b, `read_dst`
        // false: `out` is never read) before `set_len`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                a_ptr,
                a_cs,
                a_rs,
                b_ptr,
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
            out.set_len(m * n);
        }
        out
    };
    FlexTensor::from_data(TensorData::new(out, [m, n]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CpuAutodiff;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) * 0.03)
            .collect()
    }

    /// Value and the gradients of Σ c ⊙ f(x, w) for a fixed weighting `c`.
    fn run(
        f: impl Fn(Tensor<CpuAutodiff, 2>, Tensor<CpuAutodiff, 2>) -> Tensor<CpuAutodiff, 2>,
        x: Tensor<CpuAutodiff, 2>,
        w: Tensor<CpuAutodiff, 2>,
    ) -> [Vec<f32>; 3] {
        let (x, w) = (x.require_grad(), w.require_grad());
        let y = f(x.clone(), w.clone());
        let c = Tensor::<CpuAutodiff, 2>::from_data(
            TensorData::new(values(y.dims().iter().product(), 3), y.dims()),
            &y.device(),
        );
        let v = y.clone().into_data().to_vec::<f32>().unwrap();
        let grads = (y * c).sum().backward();
        let g = |t: &Tensor<CpuAutodiff, 2>| t.grad(&grads).unwrap().into_data().to_vec().unwrap();
        [v, g(&x), g(&w)]
    }

    fn close(a: &[Vec<f32>; 3], b: &[Vec<f32>; 3]) {
        for (u, v) in a.iter().zip(b) {
            assert_eq!(u.len(), v.len());
            for (p, q) in u.iter().zip(v) {
                assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{p} vs {q}");
            }
        }
    }

    #[test]
    fn value_and_gradients_equal_burns() {
        let dev = Default::default();
        let t = |r: usize, c: usize, s: usize| {
            Tensor::<CpuAutodiff, 2>::from_data(TensorData::new(values(r * c, s), [r, c]), &dev)
        };
        let (x, w) = (t(7, 5, 0), t(5, 3, 1));
        close(
            &run(matmul_2d, x.clone(), w.clone()),
            &run(|a, b| a.matmul(b), x, w),
        );
        // Strided operands (transposed views), as burn hands some of them over.
        let (x, w) = (t(5, 7, 0), t(3, 5, 1));
        close(
            &run(
                |a, b| matmul_2d(a.transpose(), b.transpose()),
                x.clone(),
                w.clone(),
            ),
            &run(|a, b| a.transpose().matmul(b.transpose()), x, w),
        );
    }

    #[test]
    fn untracked_and_empty_products() {
        let dev = Default::default();
        let x = Tensor::<Cpu, 2>::from_data(TensorData::new(values(12, 0), [4, 3]), &dev);
        let w = Tensor::<Cpu, 2>::from_data(TensorData::new(values(6, 1), [3, 2]), &dev);
        let (ours, burns) = (matmul_2d(x.clone(), w.clone()), x.matmul(w));
        let (a, b) = (
            ours.to_data().to_vec::<f32>().unwrap(),
            burns.to_data().to_vec::<f32>().unwrap(),
        );
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1e-6));
        // k = 0: a zero product.
        let x = Tensor::<Cpu, 2>::zeros([2, 0], &dev);
        let w = Tensor::<Cpu, 2>::zeros([0, 3], &dev);
        assert_eq!(
            matmul_2d(x, w).to_data().to_vec::<f32>().unwrap(),
            vec![0.0; 6]
        );
    }
}
