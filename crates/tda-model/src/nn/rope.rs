//! Rotary position embeddings, HF Llama convention (the two halves of a head are rotated together).
//!
//! RoPE is applied in the layout the projections produce, `[b, t, h·head_dim]`, before the
//! heads are split off: every operation then walks contiguous rows (on the CPU backend a strided
//! `[b, h, t, head_dim]` view would be copied element by element, forward and backward).

use burn::prelude::*;
use burn::tensor::TensorCreationOptions;

/// The tables of one forward pass (positions `offset .. offset + t`), for queries (`n_heads`)
/// and keys (`n_kv_heads`).
pub struct Rope<B: Backend> {
    /// `cos`, `sin` repeated over the query heads: `[1, t·n_heads·head_dim]`.
    q: (Tensor<B, 2>, Tensor<B, 2>),
    /// The same over the key/value heads (a clone of `q` when the counts are equal).
    kv: (Tensor<B, 2>, Tensor<B, 2>),
    /// rotate_half as a matrix: `x · R = [−x₂, x₁]`, `[head_dim, head_dim]`.
    rotate: Tensor<B, 2>,
    head_dim: usize,
}

impl<B: Backend> Rope<B> {
    /// Tables for `t` positions from `offset`, computed in f32 and created with `options` (the
    /// device, and the model's dtype if not f32). `head_dim` must be even.
    pub fn new(
        theta: f64,
        head_dim: usize,
        (n_heads, n_kv_heads): (usize, usize),
        offset: usize,
        t: usize,
        options: impl Into<TensorCreationOptions<B>>,
    ) -> Self {
        let options = options.into();
        let half = head_dim / 2;
        // emb = cat(freqs, freqs): both halves of a head use the same frequencies.
        // HF computes inv_freq = 1 / theta^(2i/d) and the angles in f32.
        let inv_freq: Vec<f32> = (0..half)
            .chain(0..half)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        let tables = |heads: usize| {
            let n = t * heads * head_dim;
            let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for p in offset..offset + t {
                for _ in 0..heads {
                    for f in &inv_freq {
                        let angle = p as f32 * f;
                        cos.push(angle.cos());
                        sin.push(angle.sin());
                    }
                }
            }
            (
                Tensor::from_data(TensorData::new(cos, [1, n]), options.clone()),
                Tensor::from_data(TensorData::new(sin, [1, n]), options.clone()),
            )
        };
        let q = tables(n_heads);
        let kv = if n_kv_heads == n_heads {
            q.clone()
        } else {
            tables(n_kv_heads)
        };
        let mut r = vec![0f32; head_dim * head_dim];
        for i in 0..half {
            r[(i + half) * head_dim + i] = -1.0; // out_i = −x_{i+half}
            r[i * head_dim + i + half] = 1.0; // out_{i+half} = x_i
        }
        let rotate = Tensor::from_data(TensorData::new(r, [head_dim, head_dim]), options);
        Self {
            q,
            kv,
            rotate,
            head_dim,
        }
    }

    /// x·cos + rotate_half(x)·sin on `[b, t, h·head_dim]` (queries when `kv` is false), same
    /// shape out. The products with the tables are one row shared by all `b` rows, the CPU
    /// backend's SIMD broadcast path; rotate_half is an exact GEMM with a ±1 permutation.
    pub fn apply(&self, x: Tensor<B, 3>, kv: bool) -> Tensor<B, 3> {
        let [b, t, hd_all] = x.dims();
        let (cos, sin) = if kv { &self.kv } else { &self.q };
        let n = t * hd_all;
        assert_eq!(cos.dims()[1], n, "RoPE tables for another shape");
        let rotated = x
            .clone()
            .reshape([b * t * hd_all / self.head_dim, self.head_dim])
            .matmul(self.rotate.clone());
        (x.reshape([b, n]) * cos.clone() + rotated.reshape([b, n]) * sin.clone())
            .reshape([b, t, hd_all])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Cpu;

    /// Against the textbook formula, per head, with 2 query heads and 1 key head.
    #[test]
    fn rotates_each_head_by_its_position() {
        let dev = Default::default();
        let (hd, t, b) = (4usize, 3usize, 2usize);
        let rope = Rope::<Cpu>::new(10_000.0, hd, (2, 1), 5, t, &dev);
        for (heads, kv) in [(2usize, false), (1, true)] {
            let n = b * t * heads * hd;
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let got = rope
                .apply(
                    Tensor::from_data(TensorData::new(x.clone(), [b, t, heads * hd]), &dev),
                    kv,
                )
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            for bi in 0..b {
                for p in 0..t {
                    for h in 0..heads {
                        let base = ((bi * t + p) * heads + h) * hd;
                        for i in 0..hd {
                            let f = (1.0 / 10_000f64.powf((2 * (i % 2)) as f64 / hd as f64)) as f32;
                            let angle = (5 + p) as f32 * f;
                            let rot = if i < 2 {
                                -x[base + i + 2]
                            } else {
                                x[base + i - 2]
                            };
                            let want = x[base + i] * angle.cos() + rot * angle.sin();
                            assert!((got[base + i] - want).abs() < 1e-6, "{bi} {p} {h} {i}");
                        }
                    }
                }
            }
        }
    }
}
