//! True-Fisher labels drawn on the model's device: inverse-CDF sampling of softmax(logits) with
//! one uniform per position. Only the uniforms (`[b, t]`, drawn on the host from a generator
//! seeded per sequence) cross to the device; the logits never leave it.
//!
//! Invariants:
//! - a sequence's labels depend on `(seed, key)` only: not on its place in the batch, the batch
//!   size, the thread count or the backend (up to f32 rounding at a category boundary);
//! - padding positions (at or after `real[i]` in row `i`) get label 0 and draw no uniform, so the
//!   labels of real positions do not change with the padding.

use burn::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Width of the first level of the two-level cumulative sum: each f32 running sum has at most
/// `⌈V / CHUNK⌉ + CHUNK` terms (≤ 1,173 for a 151,936 vocabulary), so its rounding stays ~1e-5
/// of a category's mass even on a sequential backend.
const CHUNK: usize = 1024;

/// The generator of one sequence: seeded by `(seed, key)`.
pub(crate) fn seq_rng(seed: u64, key: u64) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(key.wrapping_mul(0xD1B5_4A32_D192_ED03))
            ^ 0x7461_7073,
    )
}

/// One uniform in [0, 1) per real position, `[b, t]` row-major; row `i` draws `real[i]` of them
/// from `seq_rng(seed, keys[i])` in position order, padding gets 0.
pub(crate) fn uniforms(b: usize, t: usize, seed: u64, keys: &[u64], real: &[usize]) -> Vec<f32> {
    let mut u = vec![0f32; b * t];
    for (bi, row) in u.chunks_mut(t).enumerate() {
        let mut rng = seq_rng(seed, keys[bi]);
        for x in row.iter_mut().take(real[bi].min(t)) {
            // f32 rounding can reach 1.0: the label is then the last category, as on the host.
            *x = rng.random::<f64>() as f32;
        }
    }
    u
}

/// Positions sampled at once: bounds the sampler's transient tensors to a few
/// `ROWS × V` f32 (≈ 0.5 GB at a 151,936 vocabulary), whatever the batch.
const ROWS: usize = 256;

/// Labels `[b, t]` with P(label = k) = softmax(logits)_k, from `logits [b, t, V]` and the
/// uniforms `u [b, t]`: the label is the first k whose cumulative mass exceeds `u · Σ mass`
/// (`u = 0` gives 0). Positions are sampled [`ROWS`] at a time.
pub fn sample_on_device<B: Backend>(logits: Tensor<B, 3>, u: Tensor<B, 2>) -> Tensor<B, 2, Int> {
    let [b, t, v] = logits.dims();
    let n = b * t;
    let logits = logits.reshape([n, v]);
    let u = u.reshape([n]);
    let parts: Vec<Tensor<B, 1, Int>> = (0..n)
        .step_by(ROWS)
        .map(|r0| {
            let r = ROWS.min(n - r0);
            sample_rows(logits.clone().narrow(0, r0, r), u.clone().narrow(0, r0, r))
        })
        .collect();
    Tensor::cat(parts, 0).reshape([b, t])
}

/// [`sample_on_device`] on `logits [n, V]`, `u [n]`. The cumulative sum is taken in two levels:
/// over chunks of [`CHUNK`] categories, then inside the chosen chunk.
fn sample_rows<B: Backend>(logits: Tensor<B, 2>, u: Tensor<B, 1>) -> Tensor<B, 1, Int> {
    let [n, v] = logits.dims();
    let device = logits.device();
    let c = CHUNK.min(v);
    let nc = v.div_ceil(c);
    let max = logits.clone().max_dim(1);
    let mut p = (logits - max).exp();
    if nc * c > v {
        p = Tensor::cat(vec![p, Tensor::zeros([n, nc * c - v], &device)], 1);
    }
    let p = p.reshape([n, nc, c]);
    let mass = p.clone().sum_dim(2); // [n, nc, 1]
    let cum = mass.clone().cumsum(1);
    let total = cum.clone().narrow(1, nc - 1, 1); // [n, 1, 1]
    let target = u.reshape([n, 1, 1]) * total;
    let chunk = cum
        .clone()
        .lower(target.clone().expand([n, nc, 1]))
        .int()
        .sum_dim(1)
        .clamp_max((nc - 1) as i64); // [n, 1, 1]
    let before = (cum - mass).gather(1, chunk.clone());
    let rest = target - before;
    let inside = p
        .gather(1, chunk.clone().expand([n, 1, c]))
        .cumsum(2)
        .lower(rest.expand([n, 1, c]))
        .int()
        .sum_dim(2)
        .clamp_max((c - 1) as i64);
    (chunk.mul_scalar(c as i64) + inside)
        .clamp_max((v - 1) as i64)
        .reshape([n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tda_model::device::Cpu;

    /// The reference: today's host sampler (f64, one sequential cumulative sum over the whole
    /// vocabulary), fed the same uniforms.
    fn host_sample(logits: &[f32], v: usize, u: &[f32]) -> Vec<i64> {
        u.iter()
            .enumerate()
            .map(|(r, &u)| {
                let row = &logits[r * v..(r + 1) * v];
                let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
                let p: Vec<f64> = row.iter().map(|&x| (x as f64 - m).exp()).collect();
                let target = u as f64 * p.iter().sum::<f64>();
                let mut acc = 0.0;
                for (k, &pk) in p.iter().enumerate() {
                    acc += pk;
                    if target < acc {
                        return k as i64;
                    }
                }
                v as i64 - 1
            })
            .collect()
    }

    fn device_sample(logits: &[f32], b: usize, t: usize, v: usize, u: &[f32]) -> Vec<i64> {
        let dev = Default::default();
        let l = Tensor::<Cpu, 3>::from_data(TensorData::new(logits.to_vec(), [b, t, v]), &dev);
        let u = Tensor::<Cpu, 2>::from_data(TensorData::new(u.to_vec(), [b, t]), &dev);
        sample_on_device(l, u)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap()
    }

    /// Same labels as the f64 host sampler on the same uniforms, for a vocabulary that spans
    /// several chunks and one that does not fill its last chunk (3,000 = 2 × 1,024 + 952).
    #[test]
    fn device_labels_equal_the_host_sampler() {
        let mut rng = StdRng::seed_from_u64(3);
        // 3 × 100 positions: two slices of ROWS.
        for v in [7usize, 3000] {
            let (b, t) = (3, 100);
            let logits: Vec<f32> = (0..b * t * v)
                .map(|_| 3.0 * rng.random::<f32>() - 1.5)
                .collect();
            let real = [t, 25, 1];
            let u = uniforms(b, t, 11, &[5, 6, 7], &real);
            let host = host_sample(&logits, v, &u);
            let dev = device_sample(&logits, b, t, v, &u);
            let same = host.iter().zip(&dev).filter(|(a, b)| a == b).count();
            // f32 vs f64 sums can differ only for a uniform within ~1e-6 of a boundary.
            assert!(same >= b * t - 1, "v={v}: {same} of {} equal", b * t);
            eprintln!(
                "v={v}: {same} of {} labels equal to the host sampler's",
                b * t
            );
            // Padding: label 0, and the real positions do not depend on it.
            assert!(dev[t + 25..2 * t].iter().all(|&x| x == 0));
            assert!(dev[2 * t + 1..].iter().all(|&x| x == 0));
        }
    }

    /// Labels follow the softmax (frequency check with a 4σ band) and are reproducible per
    /// sequence key, wherever the sequence is in the batch.
    #[test]
    fn device_labels_follow_the_softmax_and_the_seed() {
        let row = [0.0f32, 1.0, 2.0, -1.0];
        let (t, v) = (4000, 4);
        let logits: Vec<f32> = (0..t).flat_map(|_| row).collect();
        let u = uniforms(1, t, 7, &[0], &[t]);
        let s = device_sample(&logits, 1, t, v, &u);
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        for (k, &l) in row.iter().enumerate() {
            let f = s.iter().filter(|&&x| x == k as i64).count() as f64 / t as f64;
            let p = (l as f64).exp() / z;
            assert!(
                (f - p).abs() < 4.0 * (p * (1.0 - p) / t as f64).sqrt() + 1e-3,
                "{k}: {f} vs {p}"
            );
        }
        assert_ne!(u, uniforms(1, t, 8, &[0], &[t]));
        let two: Vec<f32> = logits.iter().chain(&logits).copied().collect();
        let u2 = uniforms(2, t, 7, &[9, 0], &[t, t]);
        assert_eq!(&device_sample(&two, 2, t, v, &u2)[t..], &s[..]);
    }
}
