//! The measurement `f` whose change is attributed (`logprob`, `loss`, `margin`), computed per
//! sequence from logits over the completion positions.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use tda_model::token_logprobs;

/// The measurement `f` whose change is attributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Measurement {
    /// `log p(completion | prompt)` (sum over completion tokens).
    #[default]
    LogProb,
    /// `−log p(completion | prompt)`.
    Loss,
    /// `Σ_t [logit_y − logsumexp_{v≠y} logit_v]` over completion tokens.
    Margin,
}

impl std::str::FromStr for Measurement {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "logprob" => Ok(Self::LogProb),
            "loss" => Ok(Self::Loss),
            "margin" => Ok(Self::Margin),
            _ => Err(format!(
                "unknown measurement {s:?} (logprob, loss or margin)"
            )),
        }
    }
}

/// Per-sequence measurement `[b]` over target positions weighted by `w [b, t − 1]`.
pub fn measurement_value<AD: AutodiffBackend>(
    kind: Measurement,
    logits: Tensor<AD, 3>,
    ids: Tensor<AD, 2, Int>,
    w: Tensor<AD, 2>,
) -> Tensor<AD, 1> {
    let [b, t, _] = logits.dims();
    let per_pos = match kind {
        Measurement::LogProb => token_logprobs(logits, ids),
        Measurement::Loss => token_logprobs(logits, ids).neg(),
        Measurement::Margin => {
            let x = logits.narrow(1, 0, t - 1);
            let targets = ids.narrow(1, 1, t - 1).reshape([b, t - 1, 1]);
            let lse = x.clone().exp_logsumexp();
            let ly = x.gather(2, targets);
            // logsumexp over v ≠ y = lse + log(1 − p_y); clamped so that p_y → 1 stays finite.
            let one_minus = (ly.clone() - lse.clone())
                .exp()
                .neg()
                .add_scalar(1.0)
                .clamp_min(1e-12);
            (ly - lse - one_minus.log()).reshape([b, t - 1])
        }
    };
    (per_pos * w).sum_dim(1).reshape([b])
}

trait Lse {
    fn exp_logsumexp(self) -> Self;
}
impl<B: Backend> Lse for Tensor<B, 3> {
    /// logsumexp over the last dim, kept `[b, t, 1]`.
    fn exp_logsumexp(self) -> Self {
        let m = self.clone().max_dim(2).detach();
        (self - m.clone()).exp().sum_dim(2).log() + m
    }
}
