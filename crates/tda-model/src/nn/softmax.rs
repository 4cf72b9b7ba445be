//! Softmax and log-softmax over the last axis, recorded as ONE autodiff operation each.
//!
//! burn records its generic `softmax` as five operations (max, subtract, exp, sum, divide) and
//! `log_softmax` as six; their backward recomputes the exponential and walks the tensor about
//! eight times. Attention probabilities `[b, h, t, t]` and vocabulary log-probabilities
//! `[b, t, V]` are the largest tensors of a forward + backward, so on the autodiff backends this
//! module records one operation with the closed-form backward instead:
//! - softmax `p`: `dx = p ⊙ (dp − Σ_last dp ⊙ p)`;
//! - log-softmax `y`: `dx = dy − exp(y) ⊙ Σ_last dy`.
//!
//! The forward is the backend's own (fused on burn-flex). Values are those of burn's functions
//! up to f32 rounding; `tests::*` check values and gradients against them and against finite
//! differences. Other backends (inference without autodiff) call burn's functions directly.

use std::any::Any;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::activation;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorPrimitive;

/// Softmax over the last axis (see the module docs).
pub fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    fused(x, Kind::Softmax)
}

/// Log-softmax over the last axis (see the module docs).
pub fn log_softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    fused(x, Kind::LogSoftmax)
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Softmax,
    LogSoftmax,
}

/// Dispatches on the concrete backend: the autodiff backends this crate runs on get the
/// one-operation version, every other backend burn's own function.
fn fused<B: Backend, const D: usize>(x: Tensor<B, D>, kind: Kind) -> Tensor<B, D> {
    let dim = D - 1;
    let prim: Box<dyn Any> = Box::new(x.into_primitive().tensor());
    let prim = match prim.downcast::<FloatTensor<Autodiff<crate::device::Cpu>>>() {
        Ok(t) => return wrap(record::<crate::device::Cpu, NoCheckpointing>(*t, dim, kind)),
        Err(p) => p,
    };
    #[cfg(feature = "cuda")]
    let prim = match prim.downcast::<FloatTensor<Autodiff<crate::device::Gpu>>>() {
        Ok(t) => return wrap(record::<crate::device::Gpu, NoCheckpointing>(*t, dim, kind)),
        Err(p) => p,
    };
    let x = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(unwrap::<B>(prim)));
    match kind {
        Kind::Softmax => activation::softmax(x, dim),
        Kind::LogSoftmax => activation::log_softmax(x, dim),
    }
}

/// The primitive back as `B`'s (it is `B`'s: only `B`'s primitive was boxed).
fn unwrap<B: Backend>(prim: Box<dyn Any>) -> FloatTensor<B> {
    *prim
        .downcast::<FloatTensor<B>>()
        .expect("the boxed primitive is the backend's own")
}

fn wrap<B: Backend, const D: usize, P: Any>(prim: P) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(unwrap::<B>(Box::new(prim))))
}

/// The backward of one recorded (log-)softmax; the state is its output and axis.
#[derive(Debug)]
struct Recorded(Kind);

impl<B: Backend> Backward<B, 1> for Recorded {
    type State = (FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (out, dim) = ops.state;
        let kind = self.0;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| match kind {
            Kind::Softmax => {
                let dot = B::float_sum_dim(B::float_mul(grad.clone(), out.clone()), dim);
                B::float_mul(B::float_sub(grad, dot), out)
            }
            Kind::LogSoftmax => {
                let total = B::float_sum_dim(grad.clone(), dim);
                B::float_sub(grad, B::float_mul(B::float_exp(out), total))
            }
        });
    }
}

fn record<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    dim: usize,
    kind: Kind,
) -> FloatTensor<Autodiff<B, C>> {
    let forward = |x: FloatTensor<B>| match kind {
        Kind::Softmax => B::softmax(x, dim),
        Kind::LogSoftmax => B::log_softmax(x, dim),
    };
    match Recorded(kind)
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = forward(x.primitive);
            prep.finish((out.clone(), dim), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CpuAutodiff;

    fn input() -> Tensor<CpuAutodiff, 3> {
        // Rows with a −∞ entry (a causal mask) and a large spread.
        let v: Vec<f32> = (0..2 * 3 * 5)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 1.7)
            .collect();
        let mut v = v;
        v[3] = f32::NEG_INFINITY;
        v[4] = f32::NEG_INFINITY;
        Tensor::from_data(TensorData::new(v, [2, 3, 5]), &Default::default()).require_grad()
    }

    /// Value and input gradient of Σ w ⊙ f(x) for a fixed weighting w.
    fn value_and_grad(
        f: impl Fn(Tensor<CpuAutodiff, 3>) -> Tensor<CpuAutodiff, 3>,
    ) -> (Vec<f32>, Vec<f32>) {
        let dev = Default::default();
        let x = input();
        let w: Vec<f32> = (0..30).map(|i| ((i * 7 % 5) as f32) - 2.0).collect();
        let w = Tensor::<CpuAutodiff, 3>::from_data(TensorData::new(w, [2, 3, 5]), &dev);
        let y = f(x.clone());
        let val = y.clone().into_data().to_vec::<f32>().unwrap();
        // −∞ · 0 would be NaN: weight only finite outputs.
        let finite = y.clone().is_finite();
        let loss = (y.mask_fill(finite.clone().bool_not(), 0.0) * w).sum();
        let g = x.grad(&loss.backward()).unwrap();
        (val, g.into_data().to_vec::<f32>().unwrap())
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        for (x, y) in a.iter().zip(b) {
            assert!(
                x == y || (x - y).abs() <= tol * (1.0 + y.abs()),
                "{x} vs {y}"
            );
        }
    }

    #[test]
    fn softmax_equals_burns_value_and_gradient() {
        let (v, g) = value_and_grad(softmax_last);
        let (v0, g0) = value_and_grad(|x| activation::softmax(x, 2));
        close(&v, &v0, 1e-6);
        close(&g, &g0, 1e-5);
    }

    #[test]
    fn log_softmax_equals_burns_value_and_gradient() {
        let (v, g) = value_and_grad(log_softmax_last);
        let (v0, g0) = value_and_grad(|x| activation::log_softmax(x, 2));
        close(&v, &v0, 1e-6);
        close(&g, &g0, 1e-5);
    }

    /// Central differences in f64 of the same weighted sum, at the finite inputs.
    #[test]
    fn gradients_match_finite_differences() {
        let x: Vec<f64> = input()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let w: Vec<f64> = (0..30).map(|i| ((i * 7 % 5) as f64) - 2.0).collect();
        let f = |x: &[f64], log: bool| -> f64 {
            let mut s = 0.0;
            for r in 0..6 {
                let row = &x[r * 5..r * 5 + 5];
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
                for j in 0..5 {
                    let y = if log {
                        row[j] - m - z.ln()
                    } else {
                        (row[j] - m).exp() / z
                    };
                    if y.is_finite() {
                        s += w[r * 5 + j] * y;
                    }
                }
            }
            s
        };
        for (log, fused_grad) in [
            (false, value_and_grad(softmax_last).1),
            (true, value_and_grad(log_softmax_last).1),
        ] {
            for i in 0..30 {
                if !x[i].is_finite() {
                    continue;
                }
                let h = 1e-5;
                let (mut a, mut b) = (x.clone(), x.clone());
                a[i] += h;
                b[i] -= h;
                let fd = (f(&a, log) - f(&b, log)) / (2.0 * h);
                assert!(
                    (fd - fused_grad[i] as f64).abs() < 1e-4 * (1.0 + fd.abs()),
                    "log={log} i={i}: {fd} vs {}",
                    fused_grad[i]
                );
            }
        }
    }

    #[test]
    fn inference_backend_uses_burns_function() {
        let x = input().inner();
        let a = softmax_last(x.clone()).into_data().to_vec::<f32>().unwrap();
        let b = activation::softmax(x, 2)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(a, b);
    }
}
