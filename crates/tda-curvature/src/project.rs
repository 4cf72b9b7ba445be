//! Random projections of per-sequence weight gradients (LoGra / LESS-style gradient features).
//!
//! For a tracked layer with taps `g_t` `[d_out]` and `a_t` `[d_a]` (bias column included), the
//! per-sequence weight gradient is `G = Σ_t g_t a_tᵀ` `[d_out, d_a]`. A Kronecker-structured
//! projection `P_out` `[k_out, d_out]`, `P_in` `[k_in, d_a]` maps it to
//!
//! ```text
//!   P_out G P_inᵀ = Σ_t (P_out g_t)(P_in a_t)ᵀ      [k_out, k_in]
//! ```
//!
//! which costs `T·(k_out·d_out + k_in·d_a + k_out·k_in)` per sequence and never forms `G`.
//!
//! Invariants:
//! - Entries of `P_out` / `P_in` are Rademacher `±1/√k` (`k` = their number of rows), so
//!   `E‖P_out G P_inᵀ‖²_F = ‖G‖²_F` (Johnson-Lindenstrauss style; inner products are preserved in
//!   expectation).
//! - The matrices depend only on `(seed, layer name, d_out, d_a, k)`: the same layer gets the same
//!   projection whatever other layers are tracked, on every machine (a fixed splitmix64 stream,
//!   no dependency on an RNG crate's version).
//! - A projected sequence is the concatenation of the layers' `[k_out, k_in]` blocks (row-major),
//!   in the order of the specs; its length is [`GradientProjection::dim`].

use rayon::prelude::*;

use crate::error::{shape_err, Result};
use crate::taps::{LayerBatch, LayerSpec};

/// The projection of one layer.
#[derive(Clone, Debug)]
pub struct LayerProjection {
    pub name: String,
    pub d_out: usize,
    /// `d_in + has_bias`.
    pub d_a: usize,
    pub has_bias: bool,
    pub k_out: usize,
    pub k_in: usize,
    /// `[k_out, d_out]` row-major.
    pub p_out: Vec<f32>,
    /// `[k_in, d_a]` row-major.
    pub p_in: Vec<f32>,
}

/// Kronecker-structured random projections of every tracked layer.
#[derive(Clone, Debug)]
pub struct GradientProjection {
    pub layers: Vec<LayerProjection>,
    pub seed: u64,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a layer name (stable across runs and platforms).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// A `[rows, cols]` Rademacher matrix with entries `±1/√rows`.
fn rademacher(rows: usize, cols: usize, mut state: u64) -> Vec<f32> {
    let s = 1.0 / (rows as f32).sqrt();
    let mut out = Vec::with_capacity(rows * cols);
    let mut bits = 0u64;
    for i in 0..rows * cols {
        if i % 64 == 0 {
            bits = splitmix64(&mut state);
        }
        out.push(if bits & 1 == 1 { s } else { -s });
        bits >>= 1;
    }
    out
}

fn dot(x: &[f32], y: &[f32]) -> f32 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

impl GradientProjection {
    /// Projections of the layers `specs` with about `target_dim` dimensions in total: each of the
    /// `L` layers gets `k = ⌊√(target_dim / L)⌋` (at least 1) rows on both sides, clipped to
    /// `d_out` and `d_a`; [`Self::dim`] is the exact total.
    pub fn new(specs: &[LayerSpec], target_dim: usize, seed: u64) -> Result<Self> {
        if specs.is_empty() {
            return Err(shape_err("projection", "no layers to project"));
        }
        if target_dim == 0 {
            return Err(shape_err("projection", "projection dimension 0"));
        }
        let k = ((target_dim as f64 / specs.len() as f64).sqrt().floor() as usize).max(1);
        let layers = specs
            .iter()
            .map(|s| {
                let d_a = s.d_a();
                let (k_out, k_in) = (k.min(s.d_out), k.min(d_a));
                let base = seed ^ name_hash(&s.name).rotate_left(17);
                let st_out = base ^ ((s.d_out as u64) << 32) ^ k_out as u64 ^ 0x6f75_7400;
                let st_in = base ^ ((d_a as u64) << 32) ^ k_in as u64 ^ 0x696e_0000;
                LayerProjection {
                    name: s.name.clone(),
                    d_out: s.d_out,
                    d_a,
                    has_bias: s.has_bias,
                    k_out,
                    k_in,
                    p_out: rademacher(k_out, s.d_out, st_out),
                    p_in: rademacher(k_in, d_a, st_in),
                }
            })
            .collect();
        Ok(Self { layers, seed })
    }

    /// Total projected dimensions `Σ_l k_out·k_in`.
    pub fn dim(&self) -> usize {
        self.layers.iter().map(|l| l.k_out * l.k_in).sum()
    }

    /// Projected weight gradients of every sequence of the batch: `[batch][dim]`, each the
    /// concatenation of `P_out G_b P_inᵀ` over layers (padding rows ignored).
    pub fn project(&self, batches: &[LayerBatch<'_>]) -> Result<Vec<Vec<f32>>> {
        if batches.len() != self.layers.len() {
            return Err(shape_err(
                "projection",
                format!(
                    "{} layer batches for {} projected layers",
                    batches.len(),
                    self.layers.len()
                ),
            ));
        }
        let n_seq = batches[0].batch;
        for (l, lb) in self.layers.iter().zip(batches) {
            let spec = LayerSpec::new(
                l.name.clone(),
                l.d_a - usize::from(l.has_bias),
                l.d_out,
                l.has_bias,
            );
            lb.validate(&spec)?;
            if lb.batch != n_seq || lb.seq_len != batches[0].seq_len {
                return Err(shape_err(&l.name, "layer batches of different shapes"));
            }
        }
        let blocks: Vec<Vec<Vec<f32>>> = self
            .layers
            .par_iter()
            .zip(batches.par_iter())
            .map(|(l, lb)| (0..n_seq).map(|b| project_seq(l, lb, b)).collect())
            .collect();
        Ok((0..n_seq)
            .map(|b| {
                let mut v = Vec::with_capacity(self.dim());
                for layer in &blocks {
                    v.extend_from_slice(&layer[b]);
                }
                v
            })
            .collect())
    }

    /// The dense reference: `P_out G P_inᵀ` of one layer's full weight gradient `g_w`
    /// `[d_out, d_a]` (row-major). For tests and small layers; [`Self::project`] never forms `G`.
    pub fn project_dense(&self, layer: usize, g_w: &[f64]) -> Vec<f64> {
        let l = &self.layers[layer];
        assert_eq!(g_w.len(), l.d_out * l.d_a, "dense gradient shape");
        // M = P_out G  [k_out, d_a]
        let mut m = vec![0f64; l.k_out * l.d_a];
        for i in 0..l.k_out {
            for o in 0..l.d_out {
                let p = l.p_out[i * l.d_out + o] as f64;
                for j in 0..l.d_a {
                    m[i * l.d_a + j] += p * g_w[o * l.d_a + j];
                }
            }
        }
        let mut out = vec![0f64; l.k_out * l.k_in];
        for i in 0..l.k_out {
            for j in 0..l.k_in {
                out[i * l.k_in + j] = (0..l.d_a)
                    .map(|c| m[i * l.d_a + c] * l.p_in[j * l.d_a + c] as f64)
                    .sum();
            }
        }
        out
    }
}

/// `Σ_t (P_out g_t)(P_in a_t)ᵀ` over the real rows of sequence `b`, `[k_out·k_in]`.
fn project_seq(l: &LayerProjection, lb: &LayerBatch<'_>, b: usize) -> Vec<f32> {
    let d_in = l.d_a - usize::from(l.has_bias);
    let mut acc = vec![0f64; l.k_out * l.k_in];
    let mut pg = vec![0f32; l.k_out];
    let mut pa = vec![0f32; l.k_in];
    for t in 0..lb.seq_len {
        let r = b * lb.seq_len + t;
        if !lb.mask[r] {
            continue;
        }
        let g = &lb.g[r * l.d_out..(r + 1) * l.d_out];
        if g.iter().all(|&x| x == 0.0) {
            continue;
        }
        let a = &lb.a[r * d_in..(r + 1) * d_in];
        for (i, v) in pg.iter_mut().enumerate() {
            *v = dot(&l.p_out[i * l.d_out..(i + 1) * l.d_out], g);
        }
        for (j, v) in pa.iter_mut().enumerate() {
            let row = &l.p_in[j * l.d_a..(j + 1) * l.d_a];
            *v = dot(&row[..d_in], a) + if l.has_bias { row[d_in] } else { 0.0 };
        }
        for (i, &x) in pg.iter().enumerate() {
            let out = &mut acc[i * l.k_in..(i + 1) * l.k_in];
            for (o, &y) in out.iter_mut().zip(&pa) {
                *o += x as f64 * y as f64;
            }
        }
    }
    acc.into_iter().map(|x| x as f32).collect()
}

/// Scales `v` to unit L2 norm in place; returns the norm (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) -> f64 {
    let n = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    if n > 0.0 {
        for x in v.iter_mut() {
            *x = (*x as f64 / n) as f32;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(state: &mut u64) -> f32 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// The factored projection equals `P_out (Σ_t g_t a_tᵀ) P_inᵀ` computed densely, padding rows
    /// are ignored, and the bias column is the constant 1.
    #[test]
    fn factored_projection_matches_dense() {
        let specs = vec![
            LayerSpec::new("l0", 7, 5, true),
            LayerSpec::new("l1", 6, 9, false),
        ];
        let proj = GradientProjection::new(&specs, 2 * 9, 3).unwrap();
        assert_eq!(proj.layers[0].k_out, 3);
        assert_eq!(proj.layers[0].k_in, 3);
        assert_eq!(proj.dim(), 18);
        let (batch, seq_len) = (2, 4);
        let mask = vec![true, true, true, false, true, true, false, false];
        let mut st = 11u64;
        let data: Vec<(Vec<f32>, Vec<f32>)> = specs
            .iter()
            .map(|s| {
                let a = (0..batch * seq_len * s.d_in)
                    .map(|_| lcg(&mut st))
                    .collect();
                let g = (0..batch * seq_len * s.d_out)
                    .map(|_| lcg(&mut st))
                    .collect();
                (a, g)
            })
            .collect();
        let lbs: Vec<LayerBatch> = data
            .iter()
            .map(|(a, g)| LayerBatch {
                a,
                g,
                mask: &mask,
                batch,
                seq_len,
            })
            .collect();
        let out = proj.project(&lbs).unwrap();
        assert_eq!(out.len(), batch);
        for (b, v) in out.iter().enumerate() {
            assert_eq!(v.len(), proj.dim());
            let mut off = 0;
            for (li, s) in specs.iter().enumerate() {
                let (a, g) = &data[li];
                let d_a = s.d_a();
                let mut gw = vec![0f64; s.d_out * d_a];
                for t in 0..seq_len {
                    let r = b * seq_len + t;
                    if !mask[r] {
                        continue;
                    }
                    for o in 0..s.d_out {
                        for c in 0..d_a {
                            let ac = if c < s.d_in { a[r * s.d_in + c] } else { 1.0 };
                            gw[o * d_a + c] += g[r * s.d_out + o] as f64 * ac as f64;
                        }
                    }
                }
                let dense = proj.project_dense(li, &gw);
                for (x, y) in v[off..off + dense.len()].iter().zip(&dense) {
                    assert!((*x as f64 - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
                }
                off += dense.len();
            }
        }
    }

    /// Same seed and layer → same matrices; another seed → different; entries are ±1/√k, and the
    /// squared norm of a projected gradient is preserved on average (JL).
    #[test]
    fn seeded_rademacher_preserves_norm_on_average() {
        let s = vec![LayerSpec::new("x", 64, 48, false)];
        let p1 = GradientProjection::new(&s, 256, 1).unwrap();
        let p1b = GradientProjection::new(&s, 256, 1).unwrap();
        let p2 = GradientProjection::new(&s, 256, 2).unwrap();
        assert_eq!(p1.layers[0].p_out, p1b.layers[0].p_out);
        assert_ne!(p1.layers[0].p_out, p2.layers[0].p_out);
        let k = p1.layers[0].k_out as f32;
        assert!(p1.layers[0]
            .p_in
            .iter()
            .all(|&x| (x.abs() - 1.0 / k.sqrt()).abs() < 1e-6));
        let mut st = 5u64;
        let gw: Vec<f64> = (0..48 * 64).map(|_| lcg(&mut st) as f64).collect();
        let norm2: f64 = gw.iter().map(|x| x * x).sum();
        let mean: f64 = (0..40)
            .map(|seed| {
                let p = GradientProjection::new(&s, 256, seed).unwrap();
                p.project_dense(0, &gw).iter().map(|x| x * x).sum::<f64>()
            })
            .sum::<f64>()
            / 40.0;
        assert!((mean / norm2 - 1.0).abs() < 0.15, "{mean} vs {norm2}");
    }
}
