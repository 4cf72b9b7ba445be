//! Attribution by removing documents: the answer is teacher-forced after prompts that hold only
//! some of the documents, and a document's score is what its presence adds to the log-probability.
//! - [`Method::ContextCite`] (Cohen-Wang et al., 2024): `masks` random subsets (each document
//!   kept with probability ½, one set of masks shared by all sentences and tokens), the target's
//!   logit-probability `log p − log(1 − p)` under each, and a LASSO surrogate
//!   `v(mask) ≈ b + Σ_i w_i mask_i` fitted per target (sklearn's objective, `alpha` = 0.01 as
//!   ContextCite); the score of document i is `w_i`.
//! - [`Method::LeaveOneOut`]: n + 1 forwards; the score of document i is
//!   `log p(target | all) − log p(target | all but i)`.
//!
//! A target is one answer sentence (the sum of its tokens' log-probabilities) or one answer token.
//! Removing a document removes its rendered block; the remaining documents are renumbered
//! `[1..]` in their input order, as a retriever that returned fewer documents would.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tda_model::{TokenBatch, Transformer};
use tokenizers::Tokenizer;

use crate::cci::Passes;
use crate::docs::Document;
use crate::error::{ContextError, Result};
use crate::prompt::{render_prompt, tokenize_prompt, ChatTemplate, PromptTemplate};

/// How documents are scored for an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// CTI + CCI from the model's gradients (MIRAGE): 2 forwards + batched backwards.
    #[default]
    Mirage,
    /// Random document ablations and a LASSO surrogate per target: `masks` + 1 forwards.
    ContextCite { masks: usize, seed: u64, alpha: f32 },
    /// Exact leave-one-out over documents: n + 1 forwards.
    LeaveOneOut,
}

impl Method {
    /// The default `Options::min_share` of `tda cite`: 0 for MIRAGE (as the paper), 0.2 for
    /// the ablation methods (chosen on a separate planted set, `CITE_SEED=5`).
    pub fn default_min_share(&self) -> f32 {
        match self {
            Method::Mirage => 0.0,
            _ => 0.2,
        }
    }

    /// ContextCite with its published defaults (64 masks, LASSO α = 0.01).
    pub fn context_cite() -> Self {
        Method::ContextCite {
            masks: 64,
            seed: 0,
            alpha: 0.01,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Method::Mirage => "mirage",
            Method::ContextCite { .. } => "context-cite",
            Method::LeaveOneOut => "loo",
        }
    }
}

/// Renders and tokenizes the prompt with only the documents where `keep[i]` holds.
pub struct Ablator<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: &'a PromptTemplate,
    pub chat: Option<&'a ChatTemplate>,
    pub question: &'a str,
    pub docs: &'a [Document],
}

impl Ablator<'_> {
    /// Token ids of the prompt holding the kept documents (possibly none).
    pub fn prompt_ids(&self, config: &tda_model::ModelConfig, keep: &[bool]) -> Result<Vec<u32>> {
        let kept: Vec<Document> = self
            .docs
            .iter()
            .zip(keep)
            .filter(|(_, &k)| k)
            .map(|(d, _)| d.clone())
            .collect();
        let (text, spans) = render_prompt(self.template, self.question, &kept, self.chat)?;
        Ok(tokenize_prompt(self.tokenizer, config, text, spans, self.chat.is_some())?.ids)
    }

    /// Per keep-mask, the log-probability of every answer token (teacher-forced), in batched
    /// forwards of at most `max_rows` sequences. Counts one forward per mask in `passes`.
    pub fn answer_logprobs<B: Backend>(
        &self,
        model: &Transformer<B>,
        masks: &[Vec<bool>],
        answer: &[u32],
        max_rows: usize,
        passes: &mut Passes,
    ) -> Result<Vec<Vec<f32>>> {
        let prompts = masks
            .iter()
            .map(|m| self.prompt_ids(&model.config, m))
            .collect::<Result<Vec<_>>>()?;
        let out = teacher_forced(model, &prompts, answer, max_rows)?;
        passes.forwards += masks.len();
        Ok(out)
    }
}

/// Log p(answer_t | prompt, answer_<t) for every prompt of `prompts`: `[prompts][T]`.
pub fn teacher_forced<B: Backend>(
    model: &Transformer<B>,
    prompts: &[Vec<u32>],
    answer: &[u32],
    max_rows: usize,
) -> Result<Vec<Vec<f32>>> {
    let t = answer.len();
    if t == 0 {
        return Err(ContextError::usage("the answer is empty"));
    }
    let device = model.embed.device();
    let pad = model.config.eos_token_id.unwrap_or(0);
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(max_rows.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|p| {
                let mut s = p.clone();
                s.extend_from_slice(&answer[..t - 1]);
                s
            })
            .collect();
        if let Some(long) = seqs.iter().find(|s| s.len() > model.config.max_positions) {
            return Err(ContextError::usage(format!(
                "prompt + answer ({} tokens) is longer than the model's context ({} positions)",
                long.len() + 1,
                model.config.max_positions
            )));
        }
        if chunk.iter().any(Vec::is_empty) {
            return Err(ContextError::usage("the prompt has no tokens"));
        }
        let batch = TokenBatch::new(&seqs, pad)?;
        let (k, len) = (chunk.len(), batch.seq_len);
        let logits = model.forward(batch.to_tensor::<B>(&device));
        let v = logits.dims()[2];
        // Rows predicting the answer: prompt_len − 1 + j for j < T, in each sequence.
        let pos: Vec<i32> = chunk
            .iter()
            .enumerate()
            .flat_map(|(r, p)| (0..t).map(move |j| (r * len + p.len() - 1 + j) as i32))
            .collect();
        let ys: Vec<i32> = (0..k)
            .flat_map(|_| answer.iter().map(|&y| y as i32))
            .collect();
        let n = pos.len();
        let rows = logits
            .reshape([k * len, v])
            .select(0, Tensor::from_data(TensorData::new(pos, [n]), &device));
        let lp = log_softmax(rows, 1)
            .gather(
                1,
                Tensor::<B, 1, Int>::from_data(TensorData::new(ys, [n]), &device).reshape([n, 1]),
            )
            .reshape([n])
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 data");
        out.extend(lp.chunks(t).map(<[f32]>::to_vec));
    }
    Ok(out)
}

/// `n_masks` keep-masks over `n` documents, each document kept with probability ½,
/// deterministic in `seed`. Masks are drawn i.i.d. (ContextCite); duplicates are allowed.
pub fn random_masks(n: usize, n_masks: usize, seed: u64) -> Vec<Vec<bool>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xC0_17E7_C17E);
    (0..n_masks)
        .map(|_| (0..n).map(|_| rng.random_bool(0.5)).collect())
        .collect()
}

/// ContextCite's value of a target with log-probability `lp`: the logit `log p − log(1 − p)`,
/// with p capped at 1 − 1e-6 so a certain target stays finite.
pub fn logit_prob(lp: f64) -> f64 {
    let lp = lp.min((1.0f64 - 1e-6).ln());
    lp - (-lp.exp()).ln_1p()
}

/// LASSO with intercept by cyclic coordinate descent, sklearn's objective
/// `1/(2m)·‖y − b − Xw‖² + α‖w‖₁` for `x` of `m` rows × `n` columns. Returns `(w, b)`.
/// Converges when no coordinate moves more than 1e-10 (or after 10 000 sweeps).
pub fn lasso(x: &[Vec<f64>], y: &[f64], alpha: f64) -> (Vec<f64>, f64) {
    let m = y.len();
    let n = x.first().map_or(0, Vec::len);
    if m == 0 {
        return (vec![0.0; n], 0.0);
    }
    let mf = m as f64;
    let xbar: Vec<f64> = (0..n)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / mf)
        .collect();
    let ybar = y.iter().sum::<f64>() / mf;
    let xc: Vec<Vec<f64>> = (0..n)
        .map(|j| x.iter().map(|r| r[j] - xbar[j]).collect())
        .collect();
    let norm: Vec<f64> = xc
        .iter()
        .map(|c| c.iter().map(|v| v * v).sum::<f64>() / mf)
        .collect();
    let mut w = vec![0.0; n];
    let mut resid: Vec<f64> = y.iter().map(|v| v - ybar).collect();
    for _ in 0..10_000 {
        let mut moved = 0.0f64;
        for j in 0..n {
            if norm[j] == 0.0 {
                continue;
            }
            let rho =
                xc[j].iter().zip(&resid).map(|(a, r)| a * r).sum::<f64>() / mf + norm[j] * w[j];
            let new = rho.signum() * (rho.abs() - alpha).max(0.0) / norm[j];
            let d = new - w[j];
            if d != 0.0 {
                for (r, a) in resid.iter_mut().zip(&xc[j]) {
                    *r -= d * a;
                }
                w[j] = new;
                moved = moved.max(d.abs());
            }
        }
        if moved <= 1e-10 {
            break;
        }
    }
    let b = ybar - w.iter().zip(&xbar).map(|(a, c)| a * c).sum::<f64>();
    (w, b)
}

/// The log-probability of each target: `groups[k]` lists the answer tokens of target k.
pub fn group_logprobs(token_lp: &[f32], groups: &[Vec<usize>]) -> Vec<f64> {
    groups
        .iter()
        .map(|g| g.iter().map(|&t| token_lp[t] as f64).sum())
        .collect()
}

/// Document scores per target (`[targets][n_docs]`) from the answer's token log-probabilities
/// under each mask (`lp[mask][token]`), with `full` the all-documents log-probabilities.
pub fn scores(
    method: Method,
    masks: &[Vec<bool>],
    lp: &[Vec<f32>],
    full: &[f32],
    groups: &[Vec<usize>],
) -> Vec<Vec<f32>> {
    let full_v = group_logprobs(full, groups);
    let per_mask: Vec<Vec<f64>> = lp.iter().map(|l| group_logprobs(l, groups)).collect();
    match method {
        Method::LeaveOneOut => (0..groups.len())
            .map(|k| {
                (0..masks.len())
                    .map(|i| (full_v[k] - per_mask[i][k]) as f32)
                    .collect()
            })
            .collect(),
        Method::ContextCite { alpha, .. } => {
            let x: Vec<Vec<f64>> = masks
                .iter()
                .map(|m| m.iter().map(|&b| f64::from(u8::from(b))).collect())
                .collect();
            (0..groups.len())
                .map(|k| {
                    let y: Vec<f64> = per_mask.iter().map(|v| logit_prob(v[k])).collect();
                    let (w, _) = lasso(&x, &y, f64::from(alpha));
                    w.into_iter().map(|v| v as f32).collect()
                })
                .collect()
        }
        Method::Mirage => Vec::new(),
    }
}

/// The masks `method` evaluates over `n` documents: ContextCite's random ones, or the n
/// leave-one-out masks (mask i drops document i). Empty for MIRAGE.
pub fn masks_for(method: Method, n: usize) -> Vec<Vec<bool>> {
    match method {
        Method::ContextCite { masks, seed, .. } => random_masks(n, masks, seed),
        Method::LeaveOneOut => (0..n).map(|i| (0..n).map(|j| j != i).collect()).collect(),
        Method::Mirage => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ordinary least squares by the normal equations (Gauss–Jordan elimination), with intercept.
    #[allow(clippy::needless_range_loop)]
    fn ols(x: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
        let n = x[0].len() + 1;
        let rows: Vec<Vec<f64>> = x
            .iter()
            .map(|r| std::iter::once(1.0).chain(r.iter().copied()).collect())
            .collect();
        let mut a = vec![vec![0.0; n + 1]; n];
        for (r, &t) in rows.iter().zip(y) {
            for i in 0..n {
                for j in 0..n {
                    a[i][j] += r[i] * r[j];
                }
                a[i][n] += r[i] * t;
            }
        }
        for c in 0..n {
            let p = (c..n)
                .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
                .unwrap();
            a.swap(c, p);
            for i in 0..n {
                if i != c {
                    let f = a[i][c] / a[c][c];
                    for j in c..=n {
                        a[i][j] -= f * a[c][j];
                    }
                }
            }
        }
        (0..n).map(|i| a[i][n] / a[i][i]).collect()
    }

    #[test]
    fn lasso_without_penalty_is_least_squares_and_its_kkt_conditions_hold() {
        let masks = random_masks(5, 40, 3);
        let x: Vec<Vec<f64>> = masks
            .iter()
            .map(|m| m.iter().map(|&b| f64::from(u8::from(b))).collect())
            .collect();
        let y: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, r)| 2.0 * r[1] - 0.5 * r[3] + 0.1 * r[0] + 0.05 * ((i * 7 % 5) as f64 - 2.0))
            .collect();
        let (w, b) = lasso(&x, &y, 0.0);
        let beta = ols(&x, &y);
        assert!((b - beta[0]).abs() < 1e-7, "{b} vs {}", beta[0]);
        for j in 0..5 {
            assert!(
                (w[j] - beta[j + 1]).abs() < 1e-7,
                "{j}: {} vs {}",
                w[j],
                beta[j + 1]
            );
        }
        // α > 0: zero coefficients have |gradient| ≤ α, non-zero ones have it = α·sign(w).
        let alpha = 0.2;
        let (w, b) = lasso(&x, &y, alpha);
        assert!(
            w[1] > 1.0 && w.iter().filter(|v| **v == 0.0).count() >= 2,
            "{w:?}"
        );
        let m = y.len() as f64;
        for j in 0..5 {
            let g: f64 = x
                .iter()
                .zip(&y)
                .map(|(r, t)| {
                    let pred = b + r.iter().zip(&w).map(|(a, c)| a * c).sum::<f64>();
                    r[j] * (t - pred)
                })
                .sum::<f64>()
                / m;
            if w[j] == 0.0 {
                assert!(g.abs() <= alpha + 1e-8, "{j}: {g}");
            } else {
                assert!((g - alpha * w[j].signum()).abs() < 1e-7, "{j}: {g}");
            }
        }
    }

    #[test]
    fn leave_one_out_scores_are_log_probability_drops() {
        let masks = masks_for(Method::LeaveOneOut, 3);
        assert_eq!(masks[1], vec![true, false, true]);
        let full = [-1.0, -2.0, -0.5];
        let lp = vec![
            vec![-1.0, -2.0, -0.5],
            vec![-3.0, -2.5, -0.5],
            vec![-1.5, -2.0, -0.5],
        ];
        let groups = vec![vec![0, 1], vec![2]];
        let s = scores(Method::LeaveOneOut, &masks, &lp, &full, &groups);
        assert_eq!(s, vec![vec![0.0, 2.5, 0.5], vec![0.0, 0.0, 0.0]]);
        assert!((logit_prob((0.25f64).ln()) - (1.0f64 / 3.0).ln()).abs() < 1e-12);
        assert!(logit_prob(0.0).is_finite());
    }
}
