//! Which layers carry a token.
//! - Memory: the per-layer split of the influence of the span's top training documents (EK-FAC
//!   scores are sums over tracked layers), summed per block.
//! - Context: each block writes to the residual stream twice (attention, MLP); the contribution
//!   of a write o_l is the first-order term `Σ_positions ∂log p(y_t)/∂o_l · o_l` (layer
//!   gradient × activation, Ancona et al. 2018) over the positions up to the one that predicts
//!   y_t — the derivative of log p(y_t) when the write is scaled by 1 + ε. It comes from the
//!   gradient taps of the output projections (o = a W + b) in one batched backward.
//!
//! Shares are `|c_l| / Σ|c|` over the listed parts (they sum to 1); `score` keeps the sign.

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use tda_model::{TokenBatch, Transformer};
use tda_trace::ResultRow;

use crate::{ExplainError, Result};

/// One part of the model and its share of a token's attribution.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LayerShare {
    /// `block 3`, `block 3 attention`, `block 3 MLP`, or a module name outside the blocks
    /// (`lm_head`).
    pub layer: String,
    pub score: f64,
    pub share: f64,
}

/// The block number of an HF module name (`model.layers.3.…`, `transformer.h.3.…`).
fn block_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts
        .windows(2)
        .find(|w| w[0] == "layers" || w[0] == "h")
        .and_then(|w| w[1].parse().ok())
}

fn shares(parts: Vec<(String, f64)>) -> Vec<LayerShare> {
    let total: f64 = parts.iter().map(|(_, s)| s.abs()).sum();
    parts
        .into_iter()
        .map(|(layer, score)| LayerShare {
            share: if total > 0.0 {
                score.abs() / total
            } else {
                0.0
            },
            layer,
            score,
        })
        .collect()
}

/// Per block (in order; modules outside blocks after them), the summed per-layer influence of
/// the rows with a positive score (all rows when none is positive).
pub fn influence_shares(rows: &[ResultRow]) -> Vec<LayerShare> {
    let positive: Vec<&ResultRow> = rows.iter().filter(|r| r.score > 0.0).collect();
    let rows: Vec<&ResultRow> = if positive.is_empty() {
        rows.iter().collect()
    } else {
        positive
    };
    let mut blocks: Vec<(Option<usize>, String, f64)> = Vec::new();
    for r in rows {
        for l in r.per_layer.iter().flatten() {
            let b = block_of(&l.layer);
            let label = b.map_or_else(|| l.layer.clone(), |b| format!("block {b}"));
            match blocks.iter_mut().find(|x| x.1 == label) {
                Some(x) => x.2 += l.score,
                None => blocks.push((b, label, l.score)),
            }
        }
    }
    blocks.sort_by_key(|x| x.0.unwrap_or(usize::MAX));
    shares(blocks.into_iter().map(|(_, l, s)| (l, s)).collect())
}

/// Is `name` a residual write (attention or MLP output projection), and which.
fn residual_write(name: &str) -> Option<&'static str> {
    if name.ends_with("self_attn.o_proj") || name.ends_with("attn.c_proj") {
        Some("attention")
    } else if name.ends_with("mlp.down_proj") || name.ends_with("mlp.c_proj") {
        Some("MLP")
    } else {
        None
    }
}

/// For each answer position in `targets`, the gradient × output of every block's attention and
/// MLP writes (summed over positions) for log p(`answer[t]` | `prompt ++ answer[..t]`).
/// `max_rows` targets share one backward.
pub fn residual_write_shares<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    prompt: &[u32],
    answer: &[u32],
    targets: &[usize],
    max_rows: usize,
) -> Result<Vec<Vec<LayerShare>>> {
    let inner = model.valid();
    let weights: Vec<(String, &'static str, _, _)> = inner
        .blocks
        .iter()
        .flat_map(|b| b.linears())
        .filter_map(|l| {
            residual_write(&l.name).map(|kind| {
                (
                    l.name.clone(),
                    kind,
                    l.weight.val(),
                    l.bias.as_ref().map(|b| b.val()),
                )
            })
        })
        .collect();
    if weights.is_empty() {
        return Err(ExplainError::Usage(
            "the model has no attention/MLP output projections to attribute layers to".into(),
        ));
    }
    let lp = prompt.len();
    if let Some(&t) = targets
        .iter()
        .find(|&&t| t >= answer.len() || lp + t > model.config.max_positions)
    {
        return Err(ExplainError::Usage(format!(
            "answer position {t} is outside the answer or the model's context"
        )));
    }
    let device = model.embed.device();
    let pad = model.config.eos_token_id.unwrap_or(0);
    let frozen = tda_model::frozen(model);
    let mut out = Vec::with_capacity(targets.len());
    for chunk in targets.chunks(max_rows.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&t| {
                let mut s = prompt.to_vec();
                s.extend_from_slice(&answer[..t]);
                s
            })
            .collect();
        let batch = TokenBatch::new(&seqs, pad)?;
        let (k, len) = (chunk.len(), batch.seq_len);
        let pos: Vec<i32> = chunk
            .iter()
            .enumerate()
            .map(|(r, &t)| (r * len + lp + t - 1) as i32)
            .collect();
        let ys: Vec<i32> = chunk.iter().map(|&t| answer[t] as i32).collect();
        let taps = tda_model::tap(
            &frozen,
            batch.to_tensor::<AD>(&device),
            &|name: &str| residual_write(name).is_some(),
            false,
            |logits: Tensor<AD, 3>| {
                let v = logits.dims()[2];
                let int1 =
                    |x: Vec<i32>| Tensor::<AD, 1, Int>::from_data(TensorData::new(x, [k]), &device);
                let rows = logits.reshape([k * len, v]).select(0, int1(pos.clone()));
                log_softmax(rows, 1)
                    .gather(1, int1(ys.clone()).reshape([k, 1]))
                    .sum()
            },
        );
        let mut parts: Vec<Vec<(String, f64)>> = vec![Vec::new(); k];
        for tap in &taps.layers {
            let Some((name, kind, w, b)) = weights.iter().find(|x| x.0 == tap.name) else {
                continue;
            };
            let [_, _, d_in] = tap.a.dims();
            let d_out = tap.g.dims()[2];
            // Every position of the row (padding has g = 0; nothing after p is in the row).
            let mut o = tap.a.clone().reshape([k * len, d_in]).matmul(w.clone());
            if let Some(b) = b {
                o = o + b.clone().reshape([1, d_out]);
            }
            let c: Vec<f32> = (o * tap.g.clone().reshape([k * len, d_out]))
                .reshape([k, len * d_out])
                .sum_dim(1)
                .reshape([k])
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 data");
            let label = match block_of(name) {
                Some(bk) => format!("block {bk} {kind}"),
                None => name.clone(),
            };
            for (p, v) in parts.iter_mut().zip(c) {
                p.push((label.clone(), f64::from(v)));
            }
        }
        out.extend(parts.into_iter().map(shares));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tda_trace::output::LayerScore;

    #[test]
    fn blocks_and_shares() {
        assert_eq!(block_of("model.layers.12.mlp.down_proj"), Some(12));
        assert_eq!(block_of("transformer.h.0.attn.c_proj"), Some(0));
        assert_eq!(block_of("lm_head"), None);
        let row = |score: f64, l: &[(&str, f64)]| ResultRow {
            rank: 1,
            doc: 0,
            doc_id: "d".into(),
            window: 0,
            span: (0, 1),
            text: String::new(),
            score,
            windows: None,
            best_window_score: None,
            per_token: None,
            per_layer: Some(
                l.iter()
                    .map(|(n, s)| LayerScore {
                        layer: n.to_string(),
                        score: *s,
                    })
                    .collect(),
            ),
        };
        let rows = [
            row(
                3.0,
                &[
                    ("model.layers.1.mlp.up_proj", 2.0),
                    ("model.layers.0.self_attn.q_proj", 1.0),
                ],
            ),
            row(
                1.0,
                &[("model.layers.1.mlp.down_proj", -1.0), ("lm_head", 2.0)],
            ),
            row(-5.0, &[("model.layers.0.mlp.up_proj", -5.0)]),
        ];
        let s = influence_shares(&rows);
        let labels: Vec<&str> = s.iter().map(|x| x.layer.as_str()).collect();
        assert_eq!(labels, ["block 0", "block 1", "lm_head"]);
        let scores: Vec<f64> = s.iter().map(|x| x.score).collect();
        assert_eq!(scores, [1.0, 1.0, 2.0], "negative rows left out");
        assert!((s.iter().map(|x| x.share).sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
