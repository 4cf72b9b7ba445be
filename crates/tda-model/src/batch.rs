//! Right-padded token batches and per-token log-probabilities.

use burn::prelude::*;

use crate::error::{ModelError, Result};

/// `batch` sequences right-padded to `seq_len` tokens. Invariant: `ids.len() == batch * seq_len`,
/// `lengths[i] ≤ seq_len`, positions `≥ lengths[i]` hold `pad`, `1 ≤ loss_from[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBatch {
    /// `[batch, seq_len]`, row-major.
    pub ids: Vec<u32>,
    pub lengths: Vec<usize>,
    /// Per sequence, the first position whose token is a loss target (1 = every token after the
    /// first; a prompt/completion pair with a completion-only loss starts at its completion).
    pub loss_from: Vec<usize>,
    pub batch: usize,
    pub seq_len: usize,
}

impl TokenBatch {
    /// Pads `seqs` on the right with `pad`. Every sequence needs at least one token.
    pub fn new(seqs: &[Vec<u32>], pad: u32) -> Result<Self> {
        if seqs.is_empty() {
            return Err(ModelError::Usage("empty batch".into()));
        }
        if seqs.iter().any(Vec::is_empty) {
            return Err(ModelError::Usage(
                "a sequence in the batch has no tokens".into(),
            ));
        }
        let seq_len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(seqs.len() * seq_len);
        for s in seqs {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad, seq_len - s.len()));
        }
        Ok(Self {
            ids,
            lengths: seqs.iter().map(Vec::len).collect(),
            loss_from: vec![1; seqs.len()],
            batch: seqs.len(),
            seq_len,
        })
    }

    /// The loss of sequence `i` only on its tokens at positions `≥ from[i]` (e.g. the completion of
    /// a prompt/completion pair). Each `from[i]` must leave at least one target token.
    pub fn with_loss_from(mut self, from: &[usize]) -> Result<Self> {
        if from.len() != self.batch {
            return Err(ModelError::Usage(format!(
                "{} loss starts for {} sequences",
                from.len(),
                self.batch
            )));
        }
        for (i, (&f, &n)) in from.iter().zip(&self.lengths).enumerate() {
            if f < 1 || f >= n {
                return Err(ModelError::Usage(format!(
                    "sequence {i}: loss from position {f} leaves no target in its {n} tokens"
                )));
            }
        }
        self.loss_from = from.to_vec();
        Ok(self)
    }

    /// Token mask `[batch · seq_len]`: true for real tokens.
    pub fn mask(&self) -> Vec<bool> {
        self.lengths
            .iter()
            .flat_map(|&n| (0..self.seq_len).map(move |t| t < n))
            .collect()
    }

    /// Target mask `[batch, seq_len − 1]` as f32: 1 where token `t + 1` is a real token (it has a
    /// log-prob) at or after the sequence's `loss_from`.
    pub fn target_mask<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        let t1 = self.seq_len.saturating_sub(1);
        let m: Vec<f32> = self
            .lengths
            .iter()
            .zip(&self.loss_from)
            .flat_map(|(&n, &from)| {
                (0..t1).map(move |t| if t + 1 < n && t + 1 >= from { 1.0 } else { 0.0 })
            })
            .collect();
        Tensor::from_data(TensorData::new(m, [self.batch, t1]), device)
    }

    /// Number of loss targets: tokens at positions `≥ loss_from` of each sequence.
    pub fn n_targets(&self) -> usize {
        self.lengths
            .iter()
            .zip(&self.loss_from)
            .map(|(&n, &f)| n.saturating_sub(f))
            .sum()
    }

    /// The ids as an int tensor `[batch, seq_len]`.
    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        let ids: Vec<i32> = self.ids.iter().map(|&x| x as i32).collect();
        Tensor::from_data(TensorData::new(ids, [self.batch, self.seq_len]), device)
    }
}

/// log p(ids[:, t+1] | ids[:, ≤ t]) for every position: `[b, t, V]` logits → `[b, t − 1]`.
pub fn token_logprobs<B: Backend>(logits: Tensor<B, 3>, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
    let [b, t, _] = logits.dims();
    let lp = crate::nn::log_softmax_last(logits.narrow(1, 0, t - 1));
    let targets = ids.narrow(1, 1, t - 1).reshape([b, t - 1, 1]);
    lp.gather(2, targets).reshape([b, t - 1])
}

/// Σ over real target tokens of −log p: the training loss summed (not averaged) over the batch.
/// Returns a one-element tensor.
pub fn summed_nll<B: Backend>(logits: Tensor<B, 3>, batch: &TokenBatch) -> Tensor<B, 1> {
    let device = logits.device();
    let ids = batch.to_tensor::<B>(&device);
    (token_logprobs(logits, ids) * batch.target_mask::<B>(&device))
        .sum()
        .neg()
}
