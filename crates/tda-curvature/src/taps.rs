//! The inputs of every computation: tracked layers ([`LayerSpec`]) and their per-token taps for a
//! batch ([`LayerBatch`]), with the shape and finiteness checks shared by fitting and scoring.

use std::borrow::Cow;

use crate::error::{self, CurvatureError, Result};
use serde::{Deserialize, Serialize};

/// A tracked linear layer `y = W x (+ b)`, `W: [d_out, d_in]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// HF-style name, e.g. `model.layers.0.mlp.down_proj`; used in tensor names and errors.
    pub name: String,
    pub d_in: usize,
    pub d_out: usize,
    pub has_bias: bool,
}

impl LayerSpec {
    pub fn new(name: impl Into<String>, d_in: usize, d_out: usize, has_bias: bool) -> Self {
        Self {
            name: name.into(),
            d_in,
            d_out,
            has_bias,
        }
    }

    /// Width of the activation side including the bias column: `d_in + has_bias`.
    pub fn d_a(&self) -> usize {
        self.d_in + usize::from(self.has_bias)
    }

    /// Number of parameters `d_out · d_a`.
    pub fn n_params(&self) -> usize {
        self.d_out * self.d_a()
    }
}

/// Taps of one layer for a batch of `batch` sequences of `seq_len` tokens (row `b·seq_len + t`).
///
/// `a: [batch·seq_len, d_in]`, `g: [batch·seq_len, d_out]` row-major, `mask: [batch·seq_len]`
/// (`true` = real token). Rows where `mask` is false are ignored whatever their content.
#[derive(Clone, Copy, Debug)]
pub struct LayerBatch<'a> {
    pub a: &'a [f32],
    pub g: &'a [f32],
    pub mask: &'a [bool],
    pub batch: usize,
    pub seq_len: usize,
}

impl<'a> LayerBatch<'a> {
    /// Number of rows `batch · seq_len`.
    pub fn rows(&self) -> usize {
        self.batch * self.seq_len
    }

    /// Checks lengths against `spec` and that real rows are finite.
    pub(crate) fn validate(&self, spec: &LayerSpec) -> Result<()> {
        let n = self.rows();
        let name = &spec.name;
        if self.mask.len() != n {
            return Err(error::shape_err(
                name,
                format!(
                    "mask has {} entries, expected batch·seq_len = {n}",
                    self.mask.len()
                ),
            ));
        }
        if self.a.len() != n * spec.d_in {
            return Err(error::shape_err(
                name,
                format!(
                    "a has {} values, expected {n}×{} (d_in)",
                    self.a.len(),
                    spec.d_in
                ),
            ));
        }
        if self.g.len() != n * spec.d_out {
            return Err(error::shape_err(
                name,
                format!(
                    "g has {} values, expected {n}×{} (d_out)",
                    self.g.len(),
                    spec.d_out
                ),
            ));
        }
        // Every tap is read here once: the scan is compiled for the CPU's widest SIMD.
        let bad = crate::linalg::simd(|| {
            (0..n).filter(|&r| self.mask[r]).find_map(|r| {
                if !all_finite(&self.a[r * spec.d_in..(r + 1) * spec.d_in]) {
                    Some((r, "activations a"))
                } else if !all_finite(&self.g[r * spec.d_out..(r + 1) * spec.d_out]) {
                    Some((r, "output gradients g"))
                } else {
                    None
                }
            })
        });
        match bad {
            Some((r, what)) => Err(error::non_finite(name, format!("{what} (row {r})"))),
            None => Ok(()),
        }
    }

    /// Real (unmasked) row indices of sequence `b`.
    pub(crate) fn real_rows(&self, b: usize) -> impl Iterator<Item = usize> + '_ {
        let start = b * self.seq_len;
        (start..start + self.seq_len).filter(move |&r| self.mask[r])
    }

    /// The real rows of sequence `b`: `(a_ext [n, d_a], g [n, d_out], rows)`, with the bias
    /// column appended when `spec.has_bias` (see [`Self::gather_rows`]).
    pub(crate) fn gather_seq(
        &self,
        spec: &LayerSpec,
        b: usize,
    ) -> (Cow<'a, [f32]>, Cow<'a, [f32]>, Vec<usize>) {
        let rows: Vec<usize> = self.real_rows(b).collect();
        let (a, g) = self.gather_rows(spec, &rows);
        (a, g, rows)
    }

    /// The given rows, compact: `(a_ext [n, d_a], g [n, d_out])`. Borrowed when they are
    /// consecutive and the layer has no bias (the usual case: no padding), else a copy.
    pub(crate) fn gather_rows(
        &self,
        spec: &LayerSpec,
        rows: &[usize],
    ) -> (Cow<'a, [f32]>, Cow<'a, [f32]>) {
        let (d_in, d_out, d_a) = (spec.d_in, spec.d_out, spec.d_a());
        let consecutive = rows.windows(2).all(|w| w[1] == w[0] + 1);
        if let (Some(&r0), true, false) = (rows.first(), consecutive, spec.has_bias) {
            let r1 = r0 + rows.len();
            return (
                Cow::Borrowed(&self.a[r0 * d_in..r1 * d_in]),
                Cow::Borrowed(&self.g[r0 * d_out..r1 * d_out]),
            );
        }
        let mut a = Vec::with_capacity(rows.len() * d_a);
        let mut g = Vec::with_capacity(rows.len() * d_out);
        for &r in rows {
            a.extend_from_slice(&self.a[r * d_in..(r + 1) * d_in]);
            if spec.has_bias {
                a.push(1.0);
            }
            g.extend_from_slice(&self.g[r * d_out..(r + 1) * d_out]);
        }
        (Cow::Owned(a), Cow::Owned(g))
    }
}

/// Whether every value is finite: a branch-free OR over the exponent bits (vectorises, unlike
/// `iter().all(is_finite)`, which stops at each element).
#[inline(always)]
pub fn all_finite(x: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    x.chunks(256).all(|c| {
        c.iter()
            .fold(0u32, |bad, v| bad | u32::from(v.to_bits() & EXP == EXP))
            == 0
    })
}

/// Checks that `batches` has one entry per spec, consistent batch geometry, and valid content.
pub(crate) fn validate_batches(specs: &[LayerSpec], batches: &[LayerBatch<'_>]) -> Result<()> {
    if batches.len() != specs.len() {
        return Err(CurvatureError::Usage(format!(
            "got taps for {} layers, expected {} (one LayerBatch per LayerSpec, same order)",
            batches.len(),
            specs.len()
        )));
    }
    for (spec, lb) in specs.iter().zip(batches) {
        if lb.batch != batches[0].batch || lb.seq_len != batches[0].seq_len {
            return Err(error::shape_err(
                &spec.name,
                format!(
                    "batch geometry {}×{} differs from first layer's {}×{}",
                    lb.batch, lb.seq_len, batches[0].batch, batches[0].seq_len
                ),
            ));
        }
        lb.validate(spec)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::all_finite;

    #[test]
    fn all_finite_finds_any_nan_or_infinity_anywhere() {
        let mut x = vec![1.0f32; 1000];
        x[3] = f32::MAX;
        x[4] = -f32::MIN_POSITIVE / 2.0; // subnormal: finite
        assert!(all_finite(&x));
        assert!(all_finite(&[]));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
            for at in [0, 255, 256, 999] {
                let mut y = x.clone();
                y[at] = bad;
                assert!(!all_finite(&y), "{bad} at {at}");
            }
        }
    }
}
