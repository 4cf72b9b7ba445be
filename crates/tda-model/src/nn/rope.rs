//! Rotary position embeddings, HF Llama convention (the two halves of a head are rotated together).

use burn::prelude::*;

/// RoPE tables: `cos`, `sin` of shape `[1, 1, t, head_dim]` for positions `offset .. offset + t`.
/// `head_dim` must be even.
pub fn rope_tables<B: Backend>(
    theta: f64,
    head_dim: usize,
    offset: usize,
    t: usize,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(t * head_dim);
    let mut sin = Vec::with_capacity(t * head_dim);
    for p in offset..offset + t {
        // emb = cat(freqs, freqs): both halves of a head use the same frequencies.
        for i in (0..half).chain(0..half) {
            // HF computes inv_freq = 1 / theta^(2i/d) and the angles in f32.
            let inv_freq = (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32;
            let angle = p as f32 * inv_freq;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let shape = [1, 1, t, head_dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// Applies RoPE to `[b, h, t, head_dim]`: x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁].
pub fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let half = d / 2;
    // Worked on as rows of t·d (one copy when `x` is a transposed view), so that multiplying by
    // the tables is a row shared by all b·h rows: the CPU backend's SIMD broadcast path, where a
    // `[1, 1, t, d]` operand would be walked element by element.
    let x = x.reshape([b * h, t, d]);
    let x1 = x.clone().slice([0..b * h, 0..t, 0..half]);
    let x2 = x.clone().slice([0..b * h, 0..t, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 2);
    let rows = |y: Tensor<B, 3>| y.reshape([b * h, t * d]);
    let table = |y: &Tensor<B, 4>| y.clone().reshape([1, t * d]);
    (rows(x) * table(cos) + rows(rotated) * table(sin)).reshape([b, h, t, d])
}
