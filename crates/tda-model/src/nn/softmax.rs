//! Softmax and log-softmax over the last axis, and SiLU, recorded as ONE autodiff operation each.
//!
//! burn records its generic `softmax` as five operations (max, subtract, exp, sum, divide) and
//! `log_softmax` as six; their backward recomputes the exponential and walks the tensor about
//! eight times. Attention probabilities `[b, h, t, t]` and vocabulary log-probabilities
//! `[b, t, V]` are the largest tensors of a forward + backward, so on the autodiff backends this
//! module records one operation with the closed-form backward instead:
//! - softmax `p`: `dx = p ⊙ (dp − Σ_last dp ⊙ p)`;
//! - log-softmax `y`: `dx = dy − p ⊙ Σ_last dy`, the softmax `p = exp(y)` saved by the forward;
//! - SiLU `x·σ(x)` (burn: sigmoid, recomputed in the backward, and a product):
//!   `dx = dy ⊙ σ(x)·(1 + x·(1 − σ(x)))`, the factor saved by the forward.
//!
//! The forward is the backend's own, except on the CPU backend (with or without autodiff): there
//! kernels with a vectorising exponential ([`cpu`]). Values are those of burn's
//! functions up to f32 rounding; `tests::*` check values and gradients against them and against
//! finite differences. Other backends call burn's functions directly.

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

use crate::device::Cpu;

/// Softmax over the last axis (see the module docs).
pub fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    fused(x, Kind::Softmax)
}

/// Log-softmax over the last axis (see the module docs).
pub fn log_softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    fused(x, Kind::LogSoftmax)
}

/// SiLU (swish): x·σ(x), elementwise (see the module docs).
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    fused(x, Kind::Silu)
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Softmax,
    LogSoftmax,
    Silu,
}

/// Dispatches on the concrete backend: the autodiff backends this crate runs on get the
/// one-operation version, every other backend burn's own function.
fn fused<B: Backend, const D: usize>(x: Tensor<B, D>, kind: Kind) -> Tensor<B, D> {
    let dim = D - 1;
    let prim: Box<dyn Any> = Box::new(x.into_primitive().tensor());
    let prim = match prim.downcast::<FloatTensor<Autodiff<Cpu>>>() {
        Ok(t) => return wrap(record::<Cpu, NoCheckpointing>(*t, dim, kind, cpu::forward)),
        Err(p) => p,
    };
    let prim = match prim.downcast::<FloatTensor<Cpu>>() {
        Ok(t) => return wrap(cpu::forward(*t, dim, kind, false).0),
        Err(p) => p,
    };
    #[cfg(feature = "cuda")]
    let prim = match prim.downcast::<FloatTensor<Autodiff<crate::device::Gpu>>>() {
        Ok(t) => {
            let forward = backend_forward::<crate::device::Gpu>;
            return wrap(record::<crate::device::Gpu, NoCheckpointing>(
                *t, dim, kind, forward,
            ));
        }
        Err(p) => p,
    };
    let x = Tensor::<B, D>::from_primitive(TensorPrimitive::Float(unwrap::<B>(prim)));
    match kind {
        Kind::Softmax => activation::softmax(x, dim),
        Kind::LogSoftmax => activation::log_softmax(x, dim),
        Kind::Silu => activation::silu(x),
    }
}

/// The primitive back as `B`'s (it is `B`'s: only `B`'s primitive was boxed). Shared with
/// [`super::capture`], which dispatches on the backend the same way.
pub(super) fn unwrap<B: Backend>(prim: Box<dyn Any>) -> FloatTensor<B> {
    *prim
        .downcast::<FloatTensor<B>>()
        .expect("the boxed primitive is the backend's own")
}

pub(super) fn wrap<B: Backend, const D: usize, P: Any>(prim: P) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(unwrap::<B>(Box::new(prim))))
}

/// The backward of one recorded operation. The state is what the forward saved (softmax: its
/// output p; log-softmax: the softmax p = exp(y) of its output; SiLU: the derivative factor) and
/// the axis.
#[derive(Debug)]
struct Recorded(Kind);

impl<B: Backend> Backward<B, 1> for Recorded {
    type State = (FloatTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (saved, dim) = ops.state;
        let kind = self.0;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| match kind {
            Kind::Softmax => {
                let dot = B::float_sum_dim(B::float_mul(grad.clone(), saved.clone()), dim);
                B::float_mul(B::float_sub(grad, dot), saved)
            }
            Kind::LogSoftmax => {
                let total = B::float_sum_dim(grad.clone(), dim);
                B::float_sub(grad, B::float_mul(saved, total))
            }
            Kind::Silu => B::float_mul(grad, saved),
        });
    }
}

/// A forward: the output and, when `saved` is asked, what the backward needs.
type Forward<B> = fn(FloatTensor<B>, usize, Kind, bool) -> (FloatTensor<B>, Option<FloatTensor<B>>);

/// The backend's own operations.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn backend_forward<B: Backend>(
    x: FloatTensor<B>,
    dim: usize,
    kind: Kind,
    saved: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let out = match kind {
        Kind::Softmax => B::softmax(x, dim),
        Kind::LogSoftmax => {
            let out = B::log_softmax(x, dim);
            let keep = saved.then(|| B::float_exp(out.clone()));
            return (out, keep);
        }
        Kind::Silu => {
            let s = B::sigmoid(x.clone());
            let out = B::float_mul(x.clone(), s.clone());
            if !saved {
                return (out, None);
            }
            // σ·(1 + x·(1 − σ))
            let one_minus = B::float_add_scalar(B::float_neg(s.clone()), 1.0.into());
            let inner = B::float_add_scalar(B::float_mul(x, one_minus), 1.0.into());
            return (out, Some(B::float_mul(s, inner)));
        }
    };
    let keep = saved.then(|| out.clone());
    (out, keep)
}

fn record<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    dim: usize,
    kind: Kind,
    forward: Forward<B>,
) -> FloatTensor<Autodiff<B, C>> {
    match Recorded(kind)
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, saved) = forward(x.primitive, dim, kind, true);
            prep.finish((saved.expect("asked for"), dim), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, dim, kind, false).0),
    }
}

/// The CPU forwards of softmax rows and SiLU, with an exponential that vectorises (burn-flex
/// calls the scalar `expf` per element, the largest single cost of a small model's attention).
mod cpu {
    use burn::backend::flex::FlexTensor;
    use burn::prelude::*;
    use burn::tensor::DType;
    use rayon::prelude::*;

    use super::{backend_forward, Kind};
    use crate::device::Cpu;

    /// Softmax or log-softmax over the last axis (`dim` must be it) or SiLU of an f32 tensor;
    /// anything else goes to the backend's own function. With `saved`, also what the backward
    /// needs.
    pub fn forward(
        x: FlexTensor,
        dim: usize,
        kind: Kind,
        saved: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let dims: Vec<usize> = x.layout().shape().to_vec();
        let n = *dims.last().unwrap_or(&0);
        let ours = match kind {
            Kind::Softmax | Kind::LogSoftmax => dim + 1 == dims.len(),
            Kind::Silu => true,
        };
        if !ours || x.dtype() != DType::F32 || n == 0 {
            return backend_forward::<Cpu>(x, dim, kind, saved);
        }
        let x = x.to_contiguous();
        let src: &[f32] = x.storage::<f32>();
        let mut out = vec![0f32; src.len()];
        // Tasks of ≥ 16k elements (whole rows): small tensors stay on the calling thread.
        let per_task = n * (16_384 / n).max(1);
        let tensor = |v: Vec<f32>| FlexTensor::from_data(TensorData::new(v, dims.clone()));
        match kind {
            Kind::Silu if saved => {
                let mut deriv = vec![0f32; src.len()];
                out.par_chunks_mut(per_task)
                    .zip(deriv.par_chunks_mut(per_task))
                    .zip(src.par_chunks(per_task))
                    .for_each(|((o, d), s)| simd(|| silu_slice(s, o, Some(d))));
                (tensor(out), Some(tensor(deriv)))
            }
            Kind::Silu => {
                out.par_chunks_mut(per_task)
                    .zip(src.par_chunks(per_task))
                    .for_each(|(o, s)| simd(|| silu_slice(s, o, None)));
                (tensor(out), None)
            }
            Kind::LogSoftmax => {
                let mut p = vec![0f32; if saved { src.len() } else { 0 }];
                let rows = |(o, s): (&mut [f32], &[f32]), p: Option<&mut [f32]>| match p {
                    Some(p) => {
                        for ((o, s), p) in o.chunks_mut(n).zip(s.chunks(n)).zip(p.chunks_mut(n)) {
                            log_softmax_row(s, o, Some(p));
                        }
                    }
                    None => {
                        for (o, s) in o.chunks_mut(n).zip(s.chunks(n)) {
                            log_softmax_row(s, o, None);
                        }
                    }
                };
                if saved {
                    out.par_chunks_mut(per_task)
                        .zip(src.par_chunks(per_task))
                        .zip(p.par_chunks_mut(per_task))
                        .for_each(|(os, p)| simd(|| rows(os, Some(p))));
                    (tensor(out), Some(tensor(p)))
                } else {
                    out.par_chunks_mut(per_task)
                        .zip(src.par_chunks(per_task))
                        .for_each(|os| simd(|| rows(os, None)));
                    (tensor(out), None)
                }
            }
            Kind::Softmax => {
                out.par_chunks_mut(per_task)
                    .zip(src.par_chunks(per_task))
                    .for_each(|(o, s)| {
                        simd(|| {
                            for (o, s) in o.chunks_mut(n).zip(s.chunks(n)) {
                                softmax_row(s, o);
                            }
                        })
                    });
                let out = tensor(out);
                let keep = saved.then(|| out.clone());
                (out, keep)
            }
        }
    }

    /// Runs `f` compiled for the widest SIMD the CPU has (pulp's runtime dispatch: AVX-512 or
    /// AVX2 on x86-64, where the build's baseline is SSE2). It applies to what is inlined into
    /// `f`, hence the `#[inline(always)]` kernels below.
    #[inline(always)]
    pub fn simd<R>(f: impl FnOnce() -> R) -> R {
        pulp::Arch::new().dispatch(f)
    }

    /// x·σ(x) into `out` and, when given, σ(x)·(1 + x·(1 − σ(x))) into `deriv`;
    /// σ(x) = 1/(1 + e^−x) for x ≥ 0 and e^x/(1 + e^x) below (no overflow either way).
    #[inline(always)]
    pub fn silu_slice(x: &[f32], out: &mut [f32], deriv: Option<&mut [f32]>) {
        let sigma = |v: f32| {
            let e = exp_nonpositive(-v.abs());
            let num = if v >= 0.0 { 1.0 } else { e };
            num / (1.0 + e)
        };
        match deriv {
            Some(d) => {
                for ((o, d), &v) in out.iter_mut().zip(d.iter_mut()).zip(x) {
                    let s = sigma(v);
                    *o = v * s;
                    *d = s * (1.0 + v * (1.0 - s));
                }
            }
            None => {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v * sigma(v);
                }
            }
        }
    }

    /// One row: exp(x − max) / Σ. A row of −∞ gives NaN, as the division 0/0 does in burn.
    #[inline(always)]
    pub fn softmax_row(x: &[f32], out: &mut [f32]) {
        let (_, sum) = exp_shifted(x, out);
        let inv = 1.0 / sum;
        for o in out.iter_mut() {
            *o *= inv;
        }
    }

    /// One row: x − max − ln Σ exp(x − max) into `out` and, when given, the softmax
    /// exp(x − max) / Σ into `p`. A row of −∞ gives NaN, as in burn.
    #[inline(always)]
    pub fn log_softmax_row(x: &[f32], out: &mut [f32], p: Option<&mut [f32]>) {
        let lse = match p {
            Some(p) => {
                let (max, sum) = exp_shifted(x, p);
                let inv = 1.0 / sum;
                p.iter_mut().for_each(|v| *v *= inv);
                max + sum.ln()
            }
            None => {
                let (max, sum) = exp_shifted(x, out); // `out` as scratch for the exponentials
                max + sum.ln()
            }
        };
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v - lse;
        }
    }

    /// exp(x − max) into `out`; returns (max, Σ). Max and sum run over 8 independent lanes and
    /// the exponentials in their own loop, so that each loop vectorises.
    #[inline(always)]
    fn exp_shifted(x: &[f32], out: &mut [f32]) -> (f32, f32) {
        let mut lanes = [f32::NEG_INFINITY; 8];
        let chunks = x.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            for (m, &v) in lanes.iter_mut().zip(c) {
                *m = if v > *m { v } else { *m };
            }
        }
        let max = lanes
            .iter()
            .chain(tail)
            .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        for (o, &v) in out.iter_mut().zip(x) {
            *o = exp_nonpositive(v - max);
        }
        let mut sums = [0f32; 8];
        let chunks = out.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for (s, &v) in sums.iter_mut().zip(c) {
                *s += v;
            }
        }
        (max, sums.iter().sum::<f32>() + tail)
    }

    /// e^x for x ≤ 0 (and NaN), branch-free so the loop vectorises: Cody–Waite reduction
    /// x = k·ln2 + r, |r| ≤ ln2/2, Cephes' `expf` polynomial for e^r (relative error ≤ 2e-7 in
    /// `tests::exp_matches_std`), 2^k built in the exponent bits. x < −87.3 (e^x below the
    /// smallest normal f32) gives 0, as −∞ does.
    #[inline(always)]
    pub fn exp_nonpositive(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
        let xc = if x < -87.3 { -87.3 } else { x }; // NaN stays NaN
        let t = xc * LOG2E + ROUND;
        let k = t - ROUND;
        let r = xc - k * LN2_HI - k * LN2_LO;
        let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
            * r
            + 1.666_666_5e-1)
            * r
            + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
        let er = p * r * r + r + 1.0;
        // k sits in the low mantissa bits of t: k + 127 in the exponent field is 2^k.
        let ki = t.to_bits().wrapping_sub(ROUND.to_bits());
        let scale = f32::from_bits(ki.wrapping_add(127) << 23);
        if x < -87.3 {
            0.0
        } else {
            er * scale
        }
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

    #[test]
    fn silu_equals_burns_value_and_gradient() {
        // −∞ is not a SiLU input: replace it by large negative values.
        let finite = |x: Tensor<CpuAutodiff, 3>| x.clamp_min(-100.0);
        let (v, g) = value_and_grad(|x| silu(finite(x)));
        let (v0, g0) = value_and_grad(|x| activation::silu(finite(x)));
        close(&v, &v0, 1e-6);
        close(&g, &g0, 1e-5);
        let x = input().inner().clamp_min(-100.0);
        let a = silu(x.clone()).into_data().to_vec::<f32>().unwrap();
        let b = activation::silu(x).into_data().to_vec::<f32>().unwrap();
        close(&a, &b, 1e-6);
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
        // kind 0 softmax, 1 log-softmax, 2 SiLU
        let f = |x: &[f64], kind: usize| -> f64 {
            let mut s = 0.0;
            for r in 0..6 {
                let row = &x[r * 5..r * 5 + 5];
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
                for j in 0..5 {
                    let y = match kind {
                        0 => (row[j] - m).exp() / z,
                        1 => row[j] - m - z.ln(),
                        _ => row[j] / (1.0 + (-row[j]).exp()),
                    };
                    if y.is_finite() {
                        s += w[r * 5 + j] * y;
                    }
                }
            }
            s
        };
        for (kind, fused_grad) in [
            (0, value_and_grad(softmax_last).1),
            (1, value_and_grad(log_softmax_last).1),
            (2, value_and_grad(silu).1),
        ] {
            for i in 0..30 {
                if !x[i].is_finite() {
                    continue;
                }
                let h = 1e-5;
                let (mut a, mut b) = (x.clone(), x.clone());
                a[i] += h;
                b[i] -= h;
                let fd = (f(&a, kind) - f(&b, kind)) / (2.0 * h);
                assert!(
                    (fd - fused_grad[i] as f64).abs() < 1e-4 * (1.0 + fd.abs()),
                    "kind={kind} i={i}: {fd} vs {}",
                    fused_grad[i]
                );
            }
        }
    }

    #[test]
    fn exp_matches_std() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (got, want) = (cpu::exp_nonpositive(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2e-7, "relative error {worst}");
        assert_eq!(cpu::exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(cpu::exp_nonpositive(-100.0), 0.0);
        assert_eq!(cpu::exp_nonpositive(0.0), 1.0);
        assert!(cpu::exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn inference_softmax_is_burns_to_f32_rounding() {
        let x = input().inner();
        let a = softmax_last(x.clone()).into_data().to_vec::<f32>().unwrap();
        let b = activation::softmax(x.clone(), 2)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        close(&a, &b, 1e-6);
        let a = log_softmax_last(x.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let b = activation::log_softmax(x, 2)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        close(&a, &b, 1e-6);
    }
}
