//! Thin row-major wrappers over faer (GEMM, symmetric eigendecomposition, SVD) and small helpers.
//! Public for benchmarks and callers that need the same kernels; all matrices are row-major slices.

use faer::linalg::matmul::matmul;
use faer::traits::ComplexField;
use faer::{Accum, MatMut, MatRef};

/// Runs `f` compiled for the widest SIMD the CPU has (pulp's runtime dispatch: AVX-512 or AVX2
/// on x86-64, where the build's baseline is SSE2). It applies to what is inlined into `f`.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Row-major matrix operand: `data` is `[rows, cols]`; `t` = use its transpose.
#[derive(Clone, Copy)]
pub struct Op<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub t: bool,
}

impl<'a, T> Op<'a, T> {
    pub fn n(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            t: false,
        }
    }
    pub fn t(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            t: true,
        }
    }
    fn out_rows(&self) -> usize {
        if self.t {
            self.cols
        } else {
            self.rows
        }
    }
    fn out_cols(&self) -> usize {
        if self.t {
            self.rows
        } else {
            self.cols
        }
    }
}

fn view<'a, T>(o: Op<'a, T>) -> MatRef<'a, T> {
    let m = MatRef::from_row_major_slice(o.data, o.rows, o.cols);
    if o.t {
        m.transpose()
    } else {
        m
    }
}

/// `c [m, n] (+)= op(a) · op(b)`, row-major, faer's global parallelism.
pub fn gemm<T: ComplexField + Copy>(c: &mut [T], a: Op<'_, T>, b: Op<'_, T>, accumulate: bool) {
    gemm_par(c, a, b, accumulate, faer::get_global_parallelism());
}

/// [`gemm`] with the given parallelism (`Par::Seq` inside parallel loops whose results must not
/// depend on the number of threads).
pub fn gemm_par<T: ComplexField + Copy>(
    c: &mut [T],
    a: Op<'_, T>,
    b: Op<'_, T>,
    accumulate: bool,
    par: faer::Par,
) {
    let (m, k, n) = (a.out_rows(), a.out_cols(), b.out_cols());
    assert_eq!(b.out_rows(), k, "gemm inner dimension");
    assert_eq!(c.len(), m * n, "gemm output size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.iter_mut().for_each(|x| *x = T::zero_impl());
        }
        return;
    }
    let dst: MatMut<'_, T> = MatMut::from_row_major_slice_mut(c, m, n);
    let beta = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    matmul(dst, beta, view(a), view(b), T::one_impl(), par);
}

/// Symmetric eigendecomposition of `m [n, n]` (row-major, symmetrised first).
/// Returns `(eigenvalues ascending [n], eigenvectors [n, n] row-major, column k = k-th vector)`.
pub fn sym_eigen(m: &[f64], n: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
    let mut s = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            s[i * n + j] = 0.5 * (m[i * n + j] + m[j * n + i]);
        }
    }
    // On one thread: faer's parallel tridiagonalisation rounds differently with the number of
    // threads, and the factors must not depend on it (callers run the decompositions of the
    // layers in parallel instead).
    use faer::linalg::evd::{self_adjoint_evd, self_adjoint_evd_scratch, ComputeEigenvectors};
    let mat = MatRef::from_row_major_slice(&s, n, n);
    let mut vals_d = faer::diag::Diag::<f64>::zeros(n);
    let mut u = faer::Mat::<f64>::zeros(n, n);
    let par = faer::Par::Seq;
    let mut buf = faer::dyn_stack::MemBuffer::new(self_adjoint_evd_scratch::<f64>(
        n,
        ComputeEigenvectors::Yes,
        par,
        Default::default(),
    ));
    self_adjoint_evd(
        mat,
        vals_d.as_mut(),
        Some(u.as_mut()),
        par,
        faer::dyn_stack::MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|e| format!("eigendecomposition failed: {e:?}"))?;
    let vals: Vec<f64> = vals_d.column_vector().iter().copied().collect();
    let mut vecs = vec![0.0f64; n * n];
    for i in 0..n {
        for k in 0..n {
            vecs[i * n + k] = u[(i, k)];
        }
    }
    Ok((vals, vecs))
}

/// `(U, σ, V)` of an SVD, row-major.
pub type SvdParts = (Vec<f64>, Vec<f64>, Vec<f64>);

/// Thin SVD of `m [rows, cols]` row-major: `(U [rows, r], σ [r], V [cols, r])`, `r = min(rows, cols)`,
/// singular values non-increasing.
pub fn thin_svd(m: &[f64], rows: usize, cols: usize) -> Result<SvdParts, String> {
    let r = rows.min(cols);
    if r == 0 {
        return Ok((vec![], vec![], vec![]));
    }
    let mat = MatRef::from_row_major_slice(m, rows, cols);
    let svd = mat.thin_svd().map_err(|e| format!("SVD failed: {e:?}"))?;
    let (u, v) = (svd.U(), svd.V());
    let sig: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let mut uu = vec![0.0; rows * r];
    for i in 0..rows {
        for k in 0..r {
            uu[i * r + k] = u[(i, k)];
        }
    }
    let mut vv = vec![0.0; cols * r];
    for i in 0..cols {
        for k in 0..r {
            vv[i * r + k] = v[(i, k)];
        }
    }
    Ok((uu, sig, vv))
}

/// Orthonormalises the columns of `m [rows, cols]` (rows ≥ cols) in place via Householder QR (thin Q).
pub(crate) fn orthonormalize(m: &mut Vec<f64>, rows: usize, cols: usize) {
    let mat = MatRef::from_row_major_slice(m.as_slice(), rows, cols);
    let q = mat.qr().compute_thin_Q();
    for i in 0..rows {
        for k in 0..cols {
            m[i * cols + k] = q[(i, k)];
        }
    }
}

/// Contiguous split of `dim` into `ceil(dim / max_width)` near-equal blocks: `(offset, size)`.
pub(crate) fn partition(dim: usize, max_width: Option<usize>) -> Vec<(usize, usize)> {
    let k = match max_width {
        Some(w) if w > 0 && dim > w => dim.div_ceil(w),
        _ => 1,
    };
    let (base, extra) = (dim / k, dim % k);
    let mut out = Vec::with_capacity(k);
    let mut off = 0;
    for i in 0..k {
        let s = base + usize::from(i < extra);
        out.push((off, s));
        off += s;
    }
    out
}

/// Deterministic SplitMix64 generator with Box-Muller normals (used by the randomized SVD).
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_covers_dim() {
        assert_eq!(partition(10, None), vec![(0, 10)]);
        assert_eq!(partition(10, Some(16)), vec![(0, 10)]);
        assert_eq!(partition(10, Some(4)), vec![(0, 4), (4, 3), (7, 3)]);
        let p = partition(14336, Some(4096));
        assert_eq!(p.len(), 4);
        assert_eq!(p.iter().map(|x| x.1).sum::<usize>(), 14336);
    }

    #[test]
    fn gemm_matches_naive() {
        let a: Vec<f64> = (0..6).map(|x| x as f64).collect(); // 2×3
        let b: Vec<f64> = (0..12).map(|x| (x as f64) * 0.5 - 1.0).collect(); // 3×4
        let mut c = vec![0.0; 8];
        gemm(&mut c, Op::n(&a, 2, 3), Op::n(&b, 3, 4), false);
        for i in 0..2 {
            for j in 0..4 {
                let want: f64 = (0..3).map(|k| a[i * 3 + k] * b[k * 4 + j]).sum();
                assert!((c[i * 4 + j] - want).abs() < 1e-12);
            }
        }
        // aᵀ·a (3×3) via transposed operands
        let mut d = vec![0.0; 9];
        gemm(&mut d, Op::t(&a, 2, 3), Op::n(&a, 2, 3), false);
        for i in 0..3 {
            for j in 0..3 {
                let want: f64 = (0..2).map(|k| a[k * 3 + i] * a[k * 3 + j]).sum();
                assert!((d[i * 3 + j] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn eigen_reconstructs() {
        let n = 5;
        let mut rng = SplitMix::new(3);
        let x: Vec<f64> = (0..n * 8).map(|_| rng.normal()).collect();
        let mut m = vec![0.0; n * n];
        gemm(&mut m, Op::t(&x, 8, n), Op::n(&x, 8, n), false);
        let (vals, vecs) = sym_eigen(&m, n).unwrap();
        assert!(vals.windows(2).all(|w| w[0] <= w[1]), "ascending");
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n)
                    .map(|k| vecs[i * n + k] * vals[k] * vecs[j * n + k])
                    .sum();
                assert!((r - m[i * n + j]).abs() < 1e-10);
            }
        }
    }
}
