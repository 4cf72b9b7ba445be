//! CCI — contextual cues imputation: for each selected answer token y_t, the gradient of
//! MIRAGE's contrastive target with respect to the input token embeddings of the contextual run,
//! reduced per prompt token to
//! - saliency: ‖∂f/∂e_j‖₂ (captum `Saliency(abs)` + inseq's L2 "vnorm" over the hidden size),
//! - input × gradient: ‖e_j ⊙ ∂f/∂e_j‖₂ (inseq `input_x_gradient` with the same L2 reduction).
//!
//! Target (all terms that depend on the documents are evaluated WITH them):
//! f_t = log p(y_t | ctx, y_<t) − log p(ŷ_t | ctx, y_<t) if ŷ_t ≠ y_t, else log p(y_t | ctx, y_<t)
//! (the − log p(y_t | no ctx) term of that case does not depend on the contextual embeddings, so
//! it does not change the gradient).
//!
//! Batching: several targets share ONE forward + ONE backward. Row r of the batch is the
//! contextual prompt + y_<t_r, right-padded; the differentiated scalar is Σ_r f_{t_r}, and since
//! rows do not interact, row r of the embedding gradient is exactly ∂f_{t_r}/∂e. The model must be
//! frozen (`tda_model::frozen`) so no weight gradient is computed.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use tda_model::{TokenBatch, Transformer};

use crate::error::{ContextError, Result};

/// Which reduction of the embedding gradient scores a prompt token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gradient {
    /// ‖∂f/∂e_j‖₂ (MIRAGE).
    #[default]
    Saliency,
    /// ‖e_j ⊙ ∂f/∂e_j‖₂.
    InputXGradient,
}

/// One gradient target: answer position `t`, the answer token `y`, the contrast token `contrast`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub t: usize,
    pub y: u32,
    pub contrast: u32,
}

/// Per target, per prompt token (length = prompt length): the two reductions of the gradient.
#[derive(Clone, Debug)]
pub struct TokenGradient {
    pub t: usize,
    pub saliency: Vec<f32>,
    pub input_x_grad: Vec<f32>,
    /// The raw gradient ∂f/∂e `[len, d]` row-major over the whole row (prompt + y_<t), when asked.
    pub raw: Option<Vec<f32>>,
}

/// How much work attribution did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Passes {
    /// Inference forward passes (2 for CTI; generation is counted in `generated_tokens`).
    pub forwards: usize,
    /// Forward + input-gradient backward calls (each handles a batch of targets).
    pub backwards: usize,
    /// Targets differentiated in total (Σ batch rows).
    pub gradient_rows: usize,
    /// Tokens generated with the KV cache (0 for a given answer).
    pub generated_tokens: usize,
}

/// The largest number of rows per backward for sequences of `len` tokens so that the logits
/// `[rows, len, vocab]` and their gradient stay under `budget_bytes` (at least 1).
pub fn rows_for_budget(len: usize, vocab: usize, budget_bytes: usize) -> usize {
    // logits, log-softmax output and their gradients: about 4 f32 copies of [rows, len, vocab].
    let per_row = len.max(1) * vocab.max(1) * 4 * 4;
    (budget_bytes / per_row).max(1)
}

/// Gradients of the contrastive target of every `targets` entry w.r.t. the embeddings of the
/// `prompt` tokens. `max_rows` targets go into one backward. `prompt ++ answer` must fit the model.
pub fn contrastive_gradients<B: AutodiffBackend>(
    model: &Transformer<B>,
    prompt: &[u32],
    answer: &[u32],
    targets: &[Target],
    max_rows: usize,
    keep_raw: bool,
    passes: &mut Passes,
) -> Result<Vec<TokenGradient>> {
    let lp = prompt.len();
    if lp == 0 {
        return Err(ContextError::usage("the prompt has no tokens"));
    }
    for tg in targets {
        if tg.t >= answer.len() || answer[tg.t] != tg.y {
            return Err(ContextError::usage(format!(
                "target t={} does not match the answer",
                tg.t
            )));
        }
        if lp + tg.t > model.config.max_positions {
            return Err(ContextError::usage(format!(
                "prompt + answer ({} tokens) is longer than the model's context ({} positions)",
                lp + tg.t,
                model.config.max_positions
            )));
        }
    }
    let device = model.embed.device();
    let d = model.config.hidden;
    let pad = model.config.eos_token_id.unwrap_or(0);
    // Embeddings of the prompt tokens [lp, d] (for input × gradient).
    let prompt_ids = Tensor::<B::InnerBackend, 1, Int>::from_data(
        TensorData::new(prompt.iter().map(|&x| x as i32).collect(), [lp]),
        &device,
    );
    let emb = model.embed.val().inner().select(0, prompt_ids);
    let frozen = tda_model::frozen(model);
    // Sorted by position, so rows of one batch have similar lengths.
    let mut order: Vec<&Target> = targets.iter().collect();
    order.sort_by_key(|tg| tg.t);
    let mut out = Vec::with_capacity(targets.len());
    for chunk in order.chunks(max_rows.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|tg| {
                let mut s = prompt.to_vec();
                s.extend_from_slice(&answer[..tg.t]);
                s
            })
            .collect();
        let batch = TokenBatch::new(&seqs, pad)?;
        let k = chunk.len();
        let len = batch.seq_len;
        // Flat index of the position that predicts y_t in each row: r·len + (lp + t − 1).
        let pos: Vec<i32> = chunk
            .iter()
            .enumerate()
            .map(|(r, tg)| (r * len + lp + tg.t - 1) as i32)
            .collect();
        let ys: Vec<i32> = chunk.iter().map(|tg| tg.y as i32).collect();
        let cs: Vec<i32> = chunk.iter().map(|tg| tg.contrast as i32).collect();
        let use_contrast: Vec<f32> = chunk
            .iter()
            .map(|tg| if tg.contrast != tg.y { 1.0 } else { 0.0 })
            .collect();
        let ids = batch.to_tensor::<B>(&device);
        let int1 = |x: Vec<i32>| Tensor::<B, 1, Int>::from_data(TensorData::new(x, [k]), &device);
        // Only the k predicting positions go through the unembedding.
        let taps = tda_model::tap_positions(
            &frozen,
            ids,
            int1(pos),
            &|_: &str| false,
            true,
            |rows: Tensor<B, 2>| {
                let lp = log_softmax(rows, 1); // [k, v]
                let py = lp.clone().gather(1, int1(ys).reshape([k, 1]));
                let pc = lp.gather(1, int1(cs).reshape([k, 1]));
                let mask =
                    Tensor::<B, 2>::from_data(TensorData::new(use_contrast, [k, 1]), &device);
                (py - pc * mask).sum()
            },
        );
        passes.backwards += 1;
        passes.gradient_rows += k;
        let full = taps
            .input_grad
            .ok_or_else(|| ContextError::usage("the backend returned no embedding gradient"))?;
        let raw = keep_raw.then(|| {
            full.clone()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 data")
        });
        let g = full.narrow(1, 0, lp); // [k, lp, d]
        let sal = g.clone().square().sum_dim(2).sqrt().reshape([k * lp]);
        let ixg = (g * emb.clone().reshape([1, lp, d]))
            .square()
            .sum_dim(2)
            .sqrt()
            .reshape([k * lp]);
        let to_vec = |t: Tensor<B::InnerBackend, 1>| {
            t.into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 data")
        };
        let (sal, ixg) = (to_vec(sal), to_vec(ixg));
        for (r, tg) in chunk.iter().enumerate() {
            out.push(TokenGradient {
                t: tg.t,
                saliency: sal[r * lp..(r + 1) * lp].to_vec(),
                input_x_grad: ixg[r * lp..(r + 1) * lp].to_vec(),
                raw: raw
                    .as_ref()
                    .map(|g| g[r * len * d..(r * len + lp + tg.t) * d].to_vec()),
            });
        }
    }
    Ok(out)
}
