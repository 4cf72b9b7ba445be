//! Scaled dot-product attention with a causal (optionally sliding-window) mask, grouped-query
//! heads, and the key/value cache used by generation.

use burn::prelude::*;
use burn::tensor::DType;

/// Keys and values of past positions, per block: `[b, h_kv, t_past, head_dim]`.
/// Invariant: every filled slot holds `len` positions.
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    /// Number of positions already in the cache.
    pub len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: (0..n_layers).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Appends this step's `k`, `v` (`[b, h_kv, t, hd]`) to a layer's slot and returns all keys
    /// and values so far (`[b, h_kv, t_past + t, hd]`).
    pub fn append(
        slot: &mut Option<(Tensor<B, 4>, Tensor<B, 4>)>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        *slot = Some((k.clone(), v.clone()));
        (k, v)
    }
}

/// True when query position `q` may attend to key position `k` (absolute positions): causal, and
/// with a window `w` only the `w` most recent positions `q − w < k ≤ q` (as `transformers` masks).
fn visible(q: usize, k: usize, window: Option<usize>) -> bool {
    k <= q && window.is_none_or(|w| q - k < w)
}

/// Additive mask `[1, 1, tq, tk]`: query `i` (absolute position `offset + i`) sees key `j` iff
/// `j ≤ offset + i` and, with a `window`, `j > offset + i − window`; 0 where visible, −∞ elsewhere.
pub fn causal_mask<B: Backend>(
    tq: usize,
    tk: usize,
    offset: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 4> {
    let mut m = vec![0f32; tq * tk];
    for i in 0..tq {
        for j in 0..tk {
            if !visible(offset + i, j, window) {
                m[i * tk + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_data(TensorData::new(m, [1, 1, tq, tk]), device)
}

/// Scaled dot-product attention with a causal mask (see [`causal_mask`]). `q` is `[b, h, tq, hd]`,
/// `k`/`v` are `[b, h_kv, tk, hd]` with `h % h_kv == 0` (grouped-query attention) and
/// `tk = offset + tq`. Returns `[b, tq, h·hd]`.
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    offset: usize,
    window: Option<usize>,
) -> Tensor<B, 3> {
    let [b, h, tq, hd] = q.dims();
    let [_, h_kv, tk, _] = k.dims();
    let (k, v) = if h_kv == h {
        (k, v)
    } else {
        let rep = h / h_kv;
        let expand = |x: Tensor<B, 4>| {
            x.unsqueeze_dim::<5>(2)
                .expand([b, h_kv, rep, tk, hd])
                .reshape([b, h, tk, hd])
        };
        (expand(k), expand(v))
    };
    let scale = 1.0 / (hd as f64).sqrt();
    // Mask and softmax in f32 whatever the model's dtype (as `transformers`' eager attention).
    let dtype = q.dtype();
    let scores = q.matmul(k.swap_dims(2, 3)) * scale;
    let scores = super::cast(scores, DType::F32);
    // A single new query at the end of the cache sees every key unless a window cuts some off.
    let needs_mask = tq > 1 || offset + tq < tk || window.is_some_and(|w| w < tk);
    let scores = if needs_mask {
        let mask = causal_mask::<B>(tq, tk, offset, window, &scores.device());
        // As rows of tq·tk, the mask is one row shared by all b·h rows: the CPU backend's SIMD
        // broadcast path (a `[1, 1, tq, tk]` operand would be walked element by element).
        (scores.reshape([b * h, tq * tk]) + mask.reshape([1, tq * tk])).reshape([b, h, tq, tk])
    } else {
        scores
    };
    let probs = super::cast(super::softmax_last(scores), dtype);
    super::merge_heads(probs.matmul(v))
}

#[cfg(test)]
mod tests {
    use super::visible;

    #[test]
    fn window_keeps_the_most_recent_positions() {
        assert!(visible(5, 5, None) && visible(5, 0, None) && !visible(5, 6, None));
        // window 3: query 5 sees 3, 4, 5.
        let seen: Vec<usize> = (0..8).filter(|&k| visible(5, k, Some(3))).collect();
        assert_eq!(seen, vec![3, 4, 5]);
        // A window at least as long as the sequence is plain causal attention.
        assert!((0..=5).all(|k| visible(5, k, Some(6))));
    }
}
