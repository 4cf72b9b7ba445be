//! Gradient taps: after one forward and one backward of a scalar, the input activations `a` and the
//! output gradients `g` of chosen linear layers, and the gradient w.r.t. the input embeddings.
//!
//! Mechanism (burn has no hooks): where a tracked layer's output is already tracked, an identity
//! operation ([`crate::nn::capture`]) records it and its backward hands dL/d(output) over; before
//! anything is tracked (the first block's first layers), the output gets a zero "probe" tensor
//! added, a leaf whose gradient is dL/d(output). With a frozen model ([`Module::no_grad`])
//! burn computes no weight gradients and keeps no activations for them, so the backward is an
//! activation-gradient backward only. The identity Σ_t g_t a_tᵀ = ∂L/∂W (and Σ_t g_t = ∂L/∂b)
//! holds for every layer; the tests check it against autodiff.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;

use crate::model::Transformer;
use crate::nn::{capture, cast, take_grad, GradSlot, Recorder};

/// Which linear layers to tap, by HF module name.
pub trait LayerFilter {
    fn wants(&self, name: &str) -> bool;
}
impl<F: Fn(&str) -> bool> LayerFilter for F {
    fn wants(&self, name: &str) -> bool {
        self(name)
    }
}

/// Taps of one linear layer. `a`: `[b, t, d_in]` (without the bias column), `g`: `[b, t, d_out]`.
/// Rows of padding tokens hold whatever the forward produced in `a` and zeros in `g`
/// (with right padding and a causal mask nothing depends on them); use the batch mask.
#[derive(Clone, Debug)]
pub struct LayerTap<B: Backend> {
    pub name: String,
    pub has_bias: bool,
    pub a: Tensor<B, 3>,
    pub g: Tensor<B, 3>,
}

/// Result of [`tap`].
#[derive(Clone, Debug)]
pub struct Taps<B: Backend> {
    /// In forward order.
    pub layers: Vec<LayerTap<B>>,
    /// dL/d(input token embeddings) `[b, t, d]`, when asked for.
    pub input_grad: Option<Tensor<B, 3>>,
    /// The value of the scalar that was differentiated.
    pub value: f32,
}

/// How a tapped layer's output gradient is obtained: captured by an identity operation where the
/// output is already tracked, else the gradient of a zero probe added to it.
enum Grad<B: AutodiffBackend> {
    Captured(GradSlot, [usize; 3]),
    Probe(Tensor<B, 3>),
}

struct TapRecorder<'f, B: AutodiffBackend> {
    filter: &'f dyn LayerFilter,
    want_input_grad: bool,
    probes: Vec<(String, Tensor<B::InnerBackend, 3>, Grad<B>)>,
    embeddings: Option<Tensor<B, 3>>,
}

impl<B: AutodiffBackend> Recorder<B> for TapRecorder<'_, B> {
    fn linear(&mut self, name: &str, input: &Tensor<B, 3>, output: Tensor<B, 3>) -> Tensor<B, 3> {
        if !self.filter.wants(name) {
            return output;
        }
        let a = input.clone().inner();
        let dims = output.dims();
        let (output, slot) = capture(output);
        if let Some(slot) = slot {
            self.probes
                .push((name.to_string(), a, Grad::Captured(slot, dims)));
            return output;
        }
        // Nothing upstream is tracked yet (the first block's first layers): a zero leaf built
        // from an inner-backend tensor (burn only lets leaves require grad).
        let probe = Tensor::<B, 3>::from_inner(Tensor::zeros(dims, (&a.device(), output.dtype())))
            .require_grad();
        self.probes
            .push((name.to_string(), a, Grad::Probe(probe.clone())));
        output + probe
    }
    fn embeddings(&mut self, e: Tensor<B, 3>) -> Tensor<B, 3> {
        if !self.want_input_grad {
            return e;
        }
        let e = Tensor::<B, 3>::from_inner(e.inner()).require_grad();
        self.embeddings = Some(e.clone());
        e
    }
}

/// Runs `measure(logits)` → scalar on `ids` `[b, t]`, backpropagates it and returns the taps of
/// every layer that `filter` accepts, plus the embedding gradient if `input_grad`. Also returns
/// burn's gradients (weight gradients are there only if the model is not frozen).
pub fn tap_with_gradients<B, F>(
    model: &Transformer<B>,
    ids: Tensor<B, 2, Int>,
    filter: &dyn LayerFilter,
    input_grad: bool,
    measure: F,
) -> (Taps<B::InnerBackend>, B::Gradients)
where
    B: AutodiffBackend,
    F: FnOnce(Tensor<B, 3>) -> Tensor<B, 1>,
{
    run_tap(model, filter, input_grad, |rec| {
        measure(model.forward_with(ids, None, rec))
    })
}

/// [`tap`] when the scalar needs the logits of a few positions only: `measure` gets the logits
/// `[n, vocab]` of the flat positions `positions` (`r·t + i` for row r, position i) of `ids`
/// `[b, t]`; the unembedding runs on those n rows, not on all b·t. So `lm_head`'s tap, if asked
/// for, has one row per selected position (`[1, n, ·]`).
pub fn tap_positions<B, F>(
    model: &Transformer<B>,
    ids: Tensor<B, 2, Int>,
    positions: Tensor<B, 1, Int>,
    filter: &dyn LayerFilter,
    input_grad: bool,
    measure: F,
) -> Taps<B::InnerBackend>
where
    B: AutodiffBackend,
    F: FnOnce(Tensor<B, 2>) -> Tensor<B, 1>,
{
    run_tap(model, filter, input_grad, |rec| {
        let [b, t] = ids.dims();
        let n = positions.dims()[0];
        let x = model.hidden_with(ids, None, rec);
        let d = x.dims()[2];
        let rows = x
            .reshape([b * t, d])
            .select(0, positions)
            .reshape([1, n, d]);
        let v = model.config.vocab_size;
        measure(model.head_with(rows, rec).reshape([n, v]))
    })
    .0
}

/// One forward through `scalar` (which runs the model with the recorder), its backward, and the
/// taps it recorded.
fn run_tap<B, F>(
    model: &Transformer<B>,
    filter: &dyn LayerFilter,
    input_grad: bool,
    scalar: F,
) -> (Taps<B::InnerBackend>, B::Gradients)
where
    B: AutodiffBackend,
    F: FnOnce(&mut TapRecorder<'_, B>) -> Tensor<B, 1>,
{
    let mut rec = TapRecorder::<B> {
        filter,
        want_input_grad: input_grad,
        probes: Vec::new(),
        embeddings: None,
    };
    let scalar = scalar(&mut rec);
    let value = scalar
        .clone()
        .inner()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map(|v| v.iter().sum())
        .unwrap_or(f32::NAN);
    let grads = scalar.backward();
    let layers = collect_taps(model, rec.probes, &grads);
    let input_grad = rec
        .embeddings
        .and_then(|e| e.grad(&grads))
        .map(|g| cast(g, DType::F32));
    (
        Taps {
            layers,
            input_grad,
            value,
        },
        grads,
    )
}

fn collect_taps<B: AutodiffBackend>(
    model: &Transformer<B>,
    probes: Vec<(String, Tensor<B::InnerBackend, 3>, Grad<B>)>,
    grads: &B::Gradients,
) -> Vec<LayerTap<B::InnerBackend>> {
    let infos = model.linear_layers();
    probes
        .into_iter()
        .map(|(name, a, grad)| {
            // No gradient: the scalar does not depend on this layer's output.
            let g = match grad {
                Grad::Captured(slot, dims) => {
                    take_grad(&slot).unwrap_or_else(|| Tensor::zeros(dims, &a.device()))
                }
                Grad::Probe(probe) => probe
                    .grad(grads)
                    .unwrap_or_else(|| Tensor::zeros(probe.dims(), &a.device())),
            };
            let has_bias = infos.iter().any(|i| i.name == name && i.has_bias);
            LayerTap {
                name,
                has_bias,
                a: cast(a, DType::F32),
                g: cast(g, DType::F32),
            }
        })
        .collect()
}

/// [`tap_with_gradients`] without burn's gradients. Pass `model.clone().no_grad()` (a frozen
/// model) so that no weight gradient is computed.
pub fn tap<B, F>(
    model: &Transformer<B>,
    ids: Tensor<B, 2, Int>,
    filter: &dyn LayerFilter,
    input_grad: bool,
    measure: F,
) -> Taps<B::InnerBackend>
where
    B: AutodiffBackend,
    F: FnOnce(Tensor<B, 3>) -> Tensor<B, 1>,
{
    tap_with_gradients(model, ids, filter, input_grad, measure).0
}

/// A frozen copy of `model` for tapping: parameters do not require gradients.
pub fn frozen<B: AutodiffBackend>(model: &Transformer<B>) -> Transformer<B> {
    model.clone().no_grad()
}
