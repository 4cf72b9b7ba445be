//! Rank-r compression of a preconditioned query layer `P [m, n] ≈ (U Σ) Vᵀ`: exact thin SVD when
//! the matrix is small against the rank, randomized SVD (Halko et al. 2011) otherwise.

use crate::linalg::{gemm, orthonormalize, thin_svd, Op, SplitMix};

/// Rank of the stored preconditioned query per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rank {
    /// Exact: thin SVD with all `min(d_out, d_a)` components.
    Full,
    /// Best rank-r approximation (default 32). Exact thin SVD when `min(d_out, d_a) ≤ 4(r + 10)`,
    /// otherwise randomized SVD (Halko et al. 2011: oversampling 10, 2 power iterations, fixed seed).
    Truncated(usize),
}

impl Default for Rank {
    fn default() -> Self {
        Rank::Truncated(32)
    }
}

/// One layer of a preconditioned query: `P ≈ L Rᵀ` with `L [d_out, rank]`, `R [d_a, rank]` (f32).
#[derive(Clone, Debug, PartialEq)]
pub struct LowRankLayer {
    pub rank: usize,
    pub left: Vec<f32>,
    pub right: Vec<f32>,
}

/// `‖L Rᵀ‖²_F = Σ_ij (LᵀL)_ij (RᵀR)_ij`.
pub(crate) fn low_rank_sq_norm(lr: &LowRankLayer, d_out: usize, d_a: usize) -> f64 {
    let r = lr.rank;
    let l: Vec<f64> = lr.left.iter().map(|&x| x as f64).collect();
    let rr: Vec<f64> = lr.right.iter().map(|&x| x as f64).collect();
    let mut ll = vec![0.0; r * r];
    let mut rrr = vec![0.0; r * r];
    gemm(&mut ll, Op::t(&l, d_out, r), Op::n(&l, d_out, r), false);
    gemm(&mut rrr, Op::t(&rr, d_a, r), Op::n(&rr, d_a, r), false);
    ll.iter().zip(&rrr).map(|(a, b)| a * b).sum()
}

pub(crate) fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// Rank-`rank` factors of `p [m, n]` in f64: `(U Σ [m, r], V [n, r], r)` with `p ≈ (U Σ) Vᵀ`.
pub(crate) fn svd_factors(
    p: &[f64],
    m: usize,
    n: usize,
    rank: Rank,
    seed: u64,
) -> std::result::Result<(Vec<f64>, Vec<f64>, usize), String> {
    let full = m.min(n);
    let r = match rank {
        Rank::Full => full,
        Rank::Truncated(r) => r.min(full),
    };
    const OVERSAMPLE: usize = 10;
    let (u, s, v, k) = if r == full || full <= 4 * (r + OVERSAMPLE) {
        let (u, s, v) = thin_svd(p, m, n)?;
        (u, s, v, full)
    } else {
        let (u, s, v) = randomized_svd(p, m, n, r + OVERSAMPLE, 2, seed)?;
        (u, s, v, r + OVERSAMPLE)
    };
    // Keep the first r of k columns.
    let mut left = Vec::with_capacity(m * r);
    for i in 0..m {
        for c in 0..r {
            left.push(u[i * k + c] * s[c]);
        }
    }
    let mut right = Vec::with_capacity(n * r);
    for i in 0..n {
        for c in 0..r {
            right.push(v[i * k + c]);
        }
    }
    Ok((left, right, r))
}

/// Rank-`rank` factorisation `p ≈ (U Σ)(V)ᵀ` of `p [m, n]`.
pub(crate) fn compress(
    p: &[f64],
    m: usize,
    n: usize,
    rank: Rank,
    seed: u64,
) -> std::result::Result<LowRankLayer, String> {
    let (left, right, r) = svd_factors(p, m, n, rank, seed)?;
    Ok(LowRankLayer {
        rank: r,
        left: to_f32(&left),
        right: to_f32(&right),
    })
}

/// Randomized SVD with `l` columns and `iters` power iterations: `(U [m, l], σ [l], V [n, l])`.
fn randomized_svd(
    p: &[f64],
    m: usize,
    n: usize,
    l: usize,
    iters: usize,
    seed: u64,
) -> std::result::Result<crate::linalg::SvdParts, String> {
    let mut rng = SplitMix::new(0x5EED_0000 ^ seed);
    let omega: Vec<f64> = (0..n * l).map(|_| rng.normal()).collect();
    let mut y = vec![0.0; m * l];
    gemm(&mut y, Op::n(p, m, n), Op::n(&omega, n, l), false);
    orthonormalize(&mut y, m, l);
    let mut z = vec![0.0; n * l];
    for _ in 0..iters {
        gemm(&mut z, Op::t(p, m, n), Op::n(&y, m, l), false);
        orthonormalize(&mut z, n, l);
        gemm(&mut y, Op::n(p, m, n), Op::n(&z, n, l), false);
        orthonormalize(&mut y, m, l);
    }
    // B = Yᵀ P [l, n] = Ũ Σ Vᵀ, U = Y Ũ.
    let mut b = vec![0.0; l * n];
    gemm(&mut b, Op::t(&y, m, l), Op::n(p, m, n), false);
    let (ub, s, v) = thin_svd(&b, l, n)?; // ub [l, l], v [n, l]
    let mut u = vec![0.0; m * l];
    gemm(&mut u, Op::n(&y, m, l), Op::n(&ub, l, l), false);
    Ok((u, s, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(lr: &LowRankLayer, m: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..lr.rank)
                    .map(|c| lr.left[i * lr.rank + c] as f64 * lr.right[j * lr.rank + c] as f64)
                    .sum();
            }
        }
        out
    }

    /// Randomized rank-r SVD of an exactly rank-r matrix recovers it (to f32 storage precision),
    /// and on a decaying spectrum it is as good as the exact truncated SVD (to 1e-6 relative).
    #[test]
    fn randomized_svd_matches_exact() {
        let (m, n, r) = (300, 200, 8);
        let mut rng = SplitMix::new(1);
        let a: Vec<f64> = (0..m * r).map(|_| rng.normal()).collect();
        let b: Vec<f64> = (0..r * n).map(|_| rng.normal()).collect();
        let mut p = vec![0.0; m * n];
        gemm(&mut p, Op::n(&a, m, r), Op::n(&b, r, n), false);
        let lr = compress(&p, m, n, Rank::Truncated(r), 0).unwrap();
        let d = dense(&lr, m, n);
        let num: f64 = d.iter().zip(&p).map(|(x, y)| (x - y).powi(2)).sum();
        let den: f64 = p.iter().map(|x| x * x).sum();
        assert!((num / den).sqrt() < 1e-6, "rel err {}", (num / den).sqrt());

        // decaying spectrum: σ_k = 0.7^k
        let (u, _, v) =
            thin_svd(&(0..m * n).map(|_| rng.normal()).collect::<Vec<_>>(), m, n).unwrap();
        let k = m.min(n);
        let mut q = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                q[i * n + j] = (0..k)
                    .map(|c| u[i * k + c] * 0.7f64.powi(c as i32) * v[j * k + c])
                    .sum();
            }
        }
        let exact = compress(&q, m, n, Rank::Full, 0).unwrap();
        let mut ex_trunc = exact.clone();
        ex_trunc.rank = r;
        ex_trunc.left = (0..m)
            .flat_map(|i| exact.left[i * k..i * k + r].to_vec())
            .collect();
        ex_trunc.right = (0..n)
            .flat_map(|i| exact.right[i * k..i * k + r].to_vec())
            .collect();
        let rnd = compress(&q, m, n, Rank::Truncated(r), 7).unwrap();
        let err = |lr: &LowRankLayer| {
            dense(lr, m, n)
                .iter()
                .zip(&q)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let (e_ex, e_rnd) = (err(&ex_trunc), err(&rnd));
        assert!(
            e_rnd <= e_ex * (1.0 + 1e-6) + 1e-6,
            "randomized {e_rnd} vs exact {e_ex}"
        );
    }
}
