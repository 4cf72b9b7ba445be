//! An identity operation whose backward hands the incoming gradient to a slot: dL/d(output) of a
//! tapped layer without a zero probe. (`output + probe`, a zero leaf, costs an allocation, a zero
//! fill and an add per tapped layer and batch, and the add's backward.)
//!
//! Only an operation on a tracked tensor is recorded by burn, so [`capture`] applies where
//! something upstream already needs a gradient, on the autodiff backends this crate runs on
//! (CPU, and CUDA with the `cuda` feature); elsewhere it declines and the caller adds a probe.
//! `taps::tests` check the captured `g` against autodiff's weight gradients (Σ_t g_t a_tᵀ = ∂L/∂W).

use std::any::Any;
use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorPrimitive;

use super::softmax::{unwrap, wrap};
use crate::device::Cpu;

/// Where the backward leaves the gradient: the inner backend's float primitive, boxed.
pub type GradSlot = Arc<Mutex<Option<Box<dyn Any + Send>>>>;

/// `x` unchanged and, when `x` is tracked on a supported backend, the slot its gradient will be
/// left in by the backward (the slot stays empty if the scalar does not depend on `x`).
pub fn capture<B: Backend, const D: usize>(x: Tensor<B, D>) -> (Tensor<B, D>, Option<GradSlot>) {
    let prim: Box<dyn Any> = Box::new(x.into_primitive().tensor());
    let prim = match prim.downcast::<FloatTensor<Autodiff<Cpu>>>() {
        Ok(t) => {
            let (out, slot) = record::<Cpu, NoCheckpointing>(*t);
            return (wrap(out), slot);
        }
        Err(p) => p,
    };
    #[cfg(feature = "cuda")]
    let prim = match prim.downcast::<FloatTensor<Autodiff<crate::device::Gpu>>>() {
        Ok(t) => {
            let (out, slot) = record::<crate::device::Gpu, NoCheckpointing>(*t);
            return (wrap(out), slot);
        }
        Err(p) => p,
    };
    let x = unwrap::<B>(prim);
    (Tensor::from_primitive(TensorPrimitive::Float(x)), None)
}

/// The gradient left in `slot` as a tensor of the inner backend `I`, if the backward reached it.
pub fn take_grad<I: Backend, const D: usize>(slot: &GradSlot) -> Option<Tensor<I, D>> {
    let prim: Box<dyn Any> = slot.lock().expect("slot lock").take()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(unwrap::<I>(
        prim,
    ))))
}

#[derive(Debug)]
struct Capture(GradSlot);

impl<B: Backend> Backward<B, 1> for Capture {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let slot = self.0;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            *slot.lock().expect("slot lock") = Some(Box::new(grad.clone()));
            grad
        });
    }
}

fn record<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
) -> (FloatTensor<Autodiff<B, C>>, Option<GradSlot>) {
    let slot: GradSlot = Arc::new(Mutex::new(None));
    match Capture(slot.clone())
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => (prep.finish((), x.primitive), Some(slot)),
        OpsKind::UnTracked(prep) => (prep.finish(x.primitive), None),
    }
}
