//! Shared test helpers: RNG, dense linear algebra in f64, correlations, owned taps.
#![allow(dead_code)]

use tda_curvature::LayerBatch;

/// SplitMix64 + Box-Muller.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        ((self.u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    /// Sample from a discrete distribution.
    pub fn categorical(&mut self, p: &[f64]) -> usize {
        let u = self.uniform();
        let mut c = 0.0;
        for (i, &pi) in p.iter().enumerate() {
            c += pi;
            if u < c {
                return i;
            }
        }
        p.len() - 1
    }
}

/// Owned taps of one layer.
#[derive(Clone, Debug)]
pub struct Taps {
    pub a: Vec<f32>,
    pub g: Vec<f32>,
    pub mask: Vec<bool>,
    pub batch: usize,
    pub seq_len: usize,
}

impl Taps {
    pub fn new(batch: usize, seq_len: usize, d_in: usize, d_out: usize) -> Self {
        Taps {
            a: vec![0.0; batch * seq_len * d_in],
            g: vec![0.0; batch * seq_len * d_out],
            mask: vec![false; batch * seq_len],
            batch,
            seq_len,
        }
    }
    pub fn view(&self) -> LayerBatch<'_> {
        LayerBatch {
            a: &self.a,
            g: &self.g,
            mask: &self.mask,
            batch: self.batch,
            seq_len: self.seq_len,
        }
    }
}

pub fn views(t: &[Taps]) -> Vec<LayerBatch<'_>> {
    t.iter().map(|x| x.view()).collect()
}

/// Solves `m x = b` for SPD `m [n, n]` by Cholesky (f64).
pub fn chol_solve(m: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = m[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                assert!(s > 0.0, "matrix not SPD");
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    let mut y = b.to_vec();
    for i in 0..n {
        for k in 0..i {
            y[i] -= l[i * n + k] * y[k];
        }
        y[i] /= l[i * n + i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            y[i] -= l[k * n + i] * y[k];
        }
        y[i] /= l[i * n + i];
    }
    y
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    sxy / (sxx * syy).sqrt()
}

fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// max_i |x_i − y_i| / max_i |y_i|.
pub fn rel_max_err(x: &[f64], y: &[f64]) -> f64 {
    let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    x.iter()
        .zip(y)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

pub fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}
