//! CTI — context-sensitive token identification. For every answer token y_t, both next-token
//! distributions are teacher-forced on the same answer prefix y_<t:
//! P_ctx(· | prompt with documents, y_<t) and P_noctx(· | prompt without documents, y_<t).
//! The score is **KL(P_noctx ‖ P_ctx)** in nats over the full vocabulary — the direction inseq
//! (and so MIRAGE's code) computes. Two forward passes in total, one per prompt, not one per token.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use tda_model::{TokenBatch, Transformer};

use crate::error::{ContextError, Result};

/// Per answer token statistics from the two teacher-forced passes. All vectors have length T.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TokenStats {
    /// KL(P_noctx ‖ P_ctx) in nats.
    pub kl: Vec<f32>,
    /// argmax of P_noctx: the deterministic contrast token ŷ_t of CCI.
    pub contrast: Vec<u32>,
    /// log P_ctx(y_t).
    pub lp_ctx: Vec<f32>,
    /// log P_noctx(y_t).
    pub lp_noctx: Vec<f32>,
    /// log P_ctx(ŷ_t).
    pub lp_ctx_contrast: Vec<f32>,
}

impl TokenStats {
    /// MIRAGE's contrastive target f_t, evaluated as a number:
    /// log P_ctx(y_t) − log P_ctx(ŷ_t) if ŷ_t ≠ y_t, else log P_ctx(y_t) − log P_noctx(y_t).
    pub fn target(&self, t: usize, y: u32) -> f32 {
        if self.contrast[t] != y {
            self.lp_ctx[t] - self.lp_ctx_contrast[t]
        } else {
            self.lp_ctx[t] - self.lp_noctx[t]
        }
    }
}

fn host(t: Tensor<impl Backend, 1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data")
}

/// Log-softmaxed logits `[T, V]` that predict `answer` after `prompt` (one forward over
/// `prompt ++ answer[..T−1]`).
fn answer_logprobs<B: Backend>(
    model: &Transformer<B>,
    prompt: &[u32],
    answer: &[u32],
) -> Result<Tensor<B, 2>> {
    let n = prompt.len() + answer.len() - 1;
    if n > model.config.max_positions {
        return Err(ContextError::usage(format!(
            "prompt ({} tokens) + answer ({} tokens) is longer than the model's context ({} positions)",
            prompt.len(),
            answer.len(),
            model.config.max_positions
        )));
    }
    let mut seq = prompt.to_vec();
    seq.extend_from_slice(&answer[..answer.len() - 1]);
    let device = model.embed.device();
    let ids = TokenBatch::new(&[seq], 0)?.to_tensor::<B>(&device);
    // The unembedding only at the T predicting positions.
    let mut none = tda_model::nn::NoRecord;
    let hidden = model
        .hidden_with(ids, None, &mut none)
        .narrow(1, prompt.len() - 1, answer.len());
    let logits = model.head_with(hidden, &mut none);
    let v = logits.dims()[2];
    Ok(log_softmax(logits.reshape([answer.len(), v]), 1))
}

/// The CTI statistics of `answer` after the contextual prompt `ctx` and the contextless prompt
/// `noctx`: two forward passes. Errors on an empty answer, an empty prompt, or a sequence longer
/// than the model's context.
pub fn token_stats<B: Backend>(
    model: &Transformer<B>,
    ctx: &[u32],
    noctx: &[u32],
    answer: &[u32],
) -> Result<TokenStats> {
    if answer.is_empty() {
        return Err(ContextError::usage(
            "the answer is empty: nothing to attribute",
        ));
    }
    if ctx.is_empty() || noctx.is_empty() {
        return Err(ContextError::usage("the prompt has no tokens"));
    }
    // The two forwards are independent: one per core when there are two.
    let (lc, ln) = rayon::join(
        || answer_logprobs(model, ctx, answer),
        || answer_logprobs(model, noctx, answer),
    );
    let (lc, ln) = (lc?, ln?);
    let t = answer.len();
    let device = lc.device();
    let y = Tensor::<B, 1, Int>::from_data(
        TensorData::new(answer.iter().map(|&x| x as i32).collect(), [t]),
        &device,
    )
    .reshape([t, 1]);
    let kl = (ln.clone().exp() * (ln.clone() - lc.clone()))
        .sum_dim(1)
        .reshape([t]);
    let contrast = ln.clone().argmax(1); // [t, 1]
    let lp_ctx = lc.clone().gather(1, y.clone()).reshape([t]);
    let lp_noctx = ln.gather(1, y).reshape([t]);
    let lp_ctx_contrast = lc.gather(1, contrast.clone()).reshape([t]);
    let contrast = contrast
        .reshape([t])
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("int data")
        .into_iter()
        .map(|x| x as u32)
        .collect();
    Ok(TokenStats {
        kl: host(kl),
        contrast,
        lp_ctx: host(lp_ctx),
        lp_noctx: host(lp_noctx),
        lp_ctx_contrast: host(lp_ctx_contrast),
    })
}

/// Which answer tokens are context-sensitive.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Threshold {
    /// m_t ≥ mean(m) + k·std(m) over the answer (population std, as MIRAGE). MIRAGE: k = 1.
    MeanStd(f32),
    /// m_t ≥ a fixed value (nats), e.g. calibrated on a dev set.
    Fixed(f32),
    /// The k tokens with the largest m_t (ties by position).
    TopK(usize),
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold::MeanStd(1.0)
    }
}

/// Indices (ascending) of the selected tokens and the effective threshold value
/// (for `TopK`, the smallest selected score).
pub fn select_tokens(scores: &[f32], th: Threshold) -> (Vec<usize>, f32) {
    if scores.is_empty() {
        return (Vec::new(), f32::NAN);
    }
    match th {
        Threshold::MeanStd(k) => {
            let n = scores.len() as f64;
            let mean = scores.iter().map(|&x| x as f64).sum::<f64>() / n;
            let var = scores
                .iter()
                .map(|&x| (x as f64 - mean).powi(2))
                .sum::<f64>()
                / n;
            let thr = (mean + k as f64 * var.sqrt()) as f32;
            (at_least(scores, thr), thr)
        }
        Threshold::Fixed(thr) => (at_least(scores, thr), thr),
        Threshold::TopK(k) => {
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            order.truncate(k);
            let thr = order
                .iter()
                .map(|&i| scores[i])
                .fold(f32::INFINITY, f32::min);
            order.sort_unstable();
            (order, thr)
        }
    }
}

fn at_least(scores: &[f32], thr: f32) -> Vec<usize> {
    (0..scores.len()).filter(|&i| scores[i] >= thr).collect()
}
