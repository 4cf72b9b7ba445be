//! Factor files: safetensors, one f32 tensor per layer and factor, written atomically through
//! `tda_io` (unique temp file in the same directory, fsync, rename, fsync of the directory) and
//! read back through `memmap2`.
//!
//! Tensors (`d_a = d_in + has_bias`):
//! - `<layer>.A_eigvecs [d_a, d_a]` (or `<layer>.A_eigvecs.block<k> [s_k, s_k]` when block-diagonal),
//!   column `c` = eigenvector `c`; `<layer>.A_eigvals [d_a]` (ascending within each block, ≥ 0).
//! - `<layer>.S_eigvecs`, `<layer>.S_eigvals` likewise with `d_out` (`kfac`, `ekfac`).
//! - `<layer>.lambda [d_out, d_a]` (`diagonal`, `ekfac`; recomputed as `T̄ λ_S ⊗ λ_A` for `kfac`).
//!
//! Metadata (`__metadata__`, strings): `format = tda-curvature-factors`, `format_version = 1`,
//! `fingerprint`, `strategy`, `max_block` (`none` or width), `tokens`, `covariance_sequences`,
//! `lambda_sequences`, `loss_targets` (optional), `layers` (JSON list of `{name, d_in, d_out, has_bias}`). Damping is never stored.

use crate::error::{CurvatureError, Result};
use crate::factors::{kron_lambda, Eigenbasis, Factors, FitConfig, LayerFactors, Strategy};
use crate::linalg::partition;
use crate::taps::LayerSpec;
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

pub const FORMAT: &str = "tda-curvature-factors";
pub const FORMAT_VERSION: u32 = 1;

mod queries;
mod sums;
pub use queries::{load_queries, save_queries, SavedQueries, QUERIES_FORMAT};
pub use sums::{load_sums, save_sums, sums_header, SumsHeader, SUMS_FORMAT};

/// A scalar stored little-endian in a safetensors file.
trait Scalar: Copy {
    const DTYPE: Dtype;
    /// Used on big-endian machines only (little-endian ones borrow the slice).
    #[cfg_attr(target_endian = "little", allow(dead_code))]
    fn le_bytes(self) -> Vec<u8>;
}

impl Scalar for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn le_bytes(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}

impl Scalar for f64 {
    const DTYPE: Dtype = Dtype::F64;
    fn le_bytes(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}

/// A tensor to write: its shape and the slice holding it (borrowed, not copied, on
/// little-endian machines).
struct LeView<'a, T> {
    shape: Vec<usize>,
    data: &'a [T],
}

impl<T: Scalar> View for LeView<'_, T> {
    fn dtype(&self) -> Dtype {
        T::DTYPE
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        #[cfg(target_endian = "little")]
        {
            // SAFETY: f32 and f64 have no padding and any byte pattern is a valid u8; the slice
            // lives as long as `self.data`.
            Cow::Borrowed(unsafe {
                std::slice::from_raw_parts(
                    self.data.as_ptr() as *const u8,
                    std::mem::size_of_val(self.data),
                )
            })
        }
        #[cfg(not(target_endian = "little"))]
        {
            Cow::Owned(self.data.iter().flat_map(|x| x.le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        std::mem::size_of_val(self.data)
    }
}

type F32View<'a> = LeView<'a, f32>;

fn basis_tensors<'a>(
    out: &mut Vec<(String, F32View<'a>)>,
    name: &str,
    side: &str,
    b: &'a Eigenbasis,
) {
    if b.blocks.len() == 1 {
        out.push((
            format!("{name}.{side}_eigvecs"),
            F32View {
                shape: vec![b.dim, b.dim],
                data: &b.vecs[0],
            },
        ));
    } else {
        for (k, (&(_, s), v)) in b.blocks.iter().zip(&b.vecs).enumerate() {
            out.push((
                format!("{name}.{side}_eigvecs.block{k}"),
                F32View {
                    shape: vec![s, s],
                    data: v,
                },
            ));
        }
    }
    out.push((
        format!("{name}.{side}_eigvals"),
        F32View {
            shape: vec![b.dim],
            data: &b.vals,
        },
    ));
}

fn io_err(path: &Path, source: std::io::Error) -> CurvatureError {
    CurvatureError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `factors` to `path` atomically (an existing file is replaced only once the new one is
/// complete and synced).
pub fn save(factors: &Factors, path: &Path) -> Result<()> {
    let mut tensors: Vec<(String, F32View<'_>)> = vec![];
    for l in &factors.layers {
        let name = &l.spec.name;
        if let Some(b) = &l.a_basis {
            basis_tensors(&mut tensors, name, "A", b);
        }
        if let Some(b) = &l.s_basis {
            basis_tensors(&mut tensors, name, "S", b);
        }
        if matches!(factors.strategy, Strategy::Diagonal | Strategy::Ekfac) {
            if let Some(lam) = &l.lambda {
                tensors.push((
                    format!("{name}.lambda"),
                    F32View {
                        shape: vec![l.spec.d_out, l.spec.d_a()],
                        data: lam,
                    },
                ));
            }
        }
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    meta.insert("fingerprint".to_string(), factors.fingerprint.clone());
    meta.insert("strategy".to_string(), factors.strategy.to_string());
    meta.insert(
        "max_block".to_string(),
        factors
            .max_block
            .map_or("none".to_string(), |w| w.to_string()),
    );
    meta.insert("tokens".to_string(), factors.tokens.to_string());
    meta.insert(
        "covariance_sequences".to_string(),
        factors.covariance_sequences.to_string(),
    );
    meta.insert(
        "lambda_sequences".to_string(),
        factors.lambda_sequences.to_string(),
    );
    if let Some(n) = factors.loss_targets {
        meta.insert("loss_targets".to_string(), n.to_string());
    }
    meta.insert(
        "layers".to_string(),
        serde_json::to_string(&factors.specs()).expect("specs serialise"),
    );

    if path.file_name().is_none() {
        return Err(CurvatureError::Format {
            path: path.to_path_buf(),
            msg: "not a file path".into(),
        });
    }
    write_tensors(tensors, meta, path)
}

/// Writes `tensors` with `meta` to `path` atomically, the header's keys sorted (the metadata
/// map's order would otherwise change the bytes from run to run).
fn write_tensors<V: View>(
    tensors: Vec<(String, V)>,
    meta: HashMap<String, String>,
    path: &Path,
) -> Result<()> {
    tda_io::write_file_with(path, |tmp| {
        safetensors::serialize_to_file(tensors, Some(meta), tmp).map_err(|e| {
            SaveError::Curvature(CurvatureError::Format {
                path: tmp.to_path_buf(),
                msg: format!("serialisation failed: {e}"),
            })
        })?;
        tda_io::sort_safetensors_header(tmp).map_err(SaveError::Io)
    })
    .map_err(|e| match e {
        SaveError::Io(source) => CurvatureError::Write(source),
        SaveError::Curvature(e) => e,
    })
}

/// Error inside [`save`]'s atomic write: an io error from `tda_io` (its message already names the
/// temporary or target file) or a serialisation failure.
enum SaveError {
    Io(std::io::Error),
    Curvature(CurvatureError),
}

impl From<std::io::Error> for SaveError {
    fn from(e: std::io::Error) -> Self {
        SaveError::Io(e)
    }
}

/// The largest `d_out × d_a` a layer of a factor file may claim (`lm_head` of a 150k-token,
/// 8192-wide model is 1.2·10⁹): beyond it the file is refused before anything is allocated.
pub const MAX_LAYER_PARAMS: usize = u32::MAX as usize;

/// The string metadata of a factor file, after checking its format and version.
fn read_meta(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let fmt = |msg: String| CurvatureError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let (_, md) =
        SafeTensors::read_metadata(bytes).map_err(|e| fmt(format!("bad header ({e})")))?;
    let meta = md
        .metadata()
        .clone()
        .ok_or_else(|| fmt("missing metadata".into()))?;
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| fmt(format!("missing metadata key {k:?}")))
    };
    if get("format")? != FORMAT {
        return Err(fmt(format!("format is not {FORMAT:?}")));
    }
    let version = get("format_version")?;
    if *version != FORMAT_VERSION.to_string() {
        return Err(fmt(format!(
            "format_version {version} unsupported (this build reads {FORMAT_VERSION})"
        )));
    }
    get("fingerprint")?;
    Ok(meta)
}

/// The `strategy` and `max_block` metadata.
fn parse_config(path: &Path, meta: &HashMap<String, String>) -> Result<FitConfig> {
    let fmt = |msg: String| CurvatureError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| fmt(format!("missing metadata key {k:?}")))
    };
    let strategy: Strategy = get("strategy")?
        .parse()
        .map_err(|e: CurvatureError| fmt(e.to_string()))?;
    let max_block = match get("max_block")?.as_str() {
        "none" => None,
        s => Some(
            s.parse::<usize>()
                .map_err(|_| fmt(format!("bad max_block {s:?}")))?,
        ),
    };
    Ok(FitConfig {
        strategy,
        max_block,
    })
}

/// The `layers` metadata, each layer's size checked against [`MAX_LAYER_PARAMS`].
fn parse_specs(path: &Path, meta: &HashMap<String, String>) -> Result<Vec<LayerSpec>> {
    let fmt = |msg: String| CurvatureError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let text = meta
        .get("layers")
        .ok_or_else(|| fmt("missing metadata key \"layers\"".into()))?;
    let specs: Vec<LayerSpec> =
        serde_json::from_str(text).map_err(|e| fmt(format!("bad layers metadata ({e})")))?;
    for s in &specs {
        let n = s
            .d_in
            .checked_add(usize::from(s.has_bias))
            .and_then(|d_a| d_a.checked_mul(s.d_out));
        if n.is_none_or(|n| n > MAX_LAYER_PARAMS) {
            return Err(fmt(format!(
                "layer {} claims {}×{} parameters, more than any layer tda loads",
                s.name, s.d_out, s.d_in
            )));
        }
    }
    Ok(specs)
}

/// The fingerprint and layers of a factor file, from its header only (nothing else is read).
pub fn layers(path: &Path) -> Result<(String, Vec<LayerSpec>)> {
    let bytes = std::fs::File::open(path)
        .and_then(|f| {
            // SAFETY: as in `load`.
            unsafe { memmap2::Mmap::map(&f) }
        })
        .map_err(|e| io_err(path, e))?;
    let meta = read_meta(path, &bytes)?;
    Ok((meta["fingerprint"].clone(), parse_specs(path, &meta)?))
}

/// Reads factors from `path` (memory-mapped). When `fingerprint` is given it must match the file's.
pub fn load(path: &Path, fingerprint: Option<&str>) -> Result<Factors> {
    let fmt = |msg: String| CurvatureError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the file is only read; factor files are written once via rename and never modified in
    // place, so the mapping cannot be truncated underneath us by this crate.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    let st = SafeTensors::deserialize(&mmap)
        .map_err(|e| fmt(format!("not a valid safetensors file ({e})")))?;
    let meta = read_meta(path, &mmap)?;
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| fmt(format!("missing metadata key {k:?}")))
    };
    let found = get("fingerprint")?;
    if let Some(expected) = fingerprint {
        if expected != found {
            return Err(CurvatureError::Fingerprint {
                path: path.to_path_buf(),
                expected: expected.into(),
                found,
            });
        }
    }
    let FitConfig {
        strategy,
        max_block,
    } = parse_config(path, &meta)?;
    let num = |k: &str| -> Result<u64> { get(k)?.parse().map_err(|_| fmt(format!("bad {k}"))) };
    let (tokens, cov_seq, lam_seq) = (
        num("tokens")?,
        num("covariance_sequences")?,
        num("lambda_sequences")?,
    );
    let loss_targets = match meta.get("loss_targets") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| fmt("bad loss_targets".into()))?,
        ),
    };
    let specs = parse_specs(path, &meta)?;

    let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .map_err(|_| fmt(format!("missing tensor {name}")))?;
        if t.dtype() != Dtype::F32 {
            return Err(fmt(format!(
                "tensor {name} has dtype {:?}, expected F32",
                t.dtype()
            )));
        }
        if t.shape() != shape {
            return Err(fmt(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.shape()
            )));
        }
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if !v.iter().all(|x| x.is_finite()) {
            return Err(fmt(format!("tensor {name} contains NaN/Inf")));
        }
        Ok(v)
    };
    let basis = |name: &str, side: &str, dim: usize| -> Result<Eigenbasis> {
        // The eigenvalues first: their presence bounds `dim` by the file size before the
        // blocks are counted.
        let vals = tensor(&format!("{name}.{side}_eigvals"), &[dim])?;
        let blocks = partition(dim, max_block);
        let vecs = if blocks.len() == 1 {
            vec![tensor(&format!("{name}.{side}_eigvecs"), &[dim, dim])?]
        } else {
            blocks
                .iter()
                .enumerate()
                .map(|(k, &(_, s))| tensor(&format!("{name}.{side}_eigvecs.block{k}"), &[s, s]))
                .collect::<Result<_>>()?
        };
        Ok(Eigenbasis {
            dim,
            blocks,
            vecs,
            vals,
        })
    };
    let tbar = if cov_seq > 0 {
        tokens as f64 / cov_seq as f64
    } else {
        1.0
    };
    let mut layers = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = spec.name.clone();
        let (a_basis, s_basis) = if strategy.uses_eigenbasis() {
            (
                Some(basis(&name, "A", spec.d_a())?),
                Some(basis(&name, "S", spec.d_out)?),
            )
        } else {
            (None, None)
        };
        let lambda = match strategy {
            Strategy::Identity => None,
            Strategy::Kfac => Some(kron_lambda(
                &s_basis.as_ref().unwrap().vals,
                &a_basis.as_ref().unwrap().vals,
                tbar,
            )),
            Strategy::Diagonal | Strategy::Ekfac => Some(tensor(
                &format!("{name}.lambda"),
                &[spec.d_out, spec.d_a()],
            )?),
        };
        layers.push(LayerFactors {
            spec,
            a_basis,
            s_basis,
            lambda,
        });
    }
    Ok(Factors {
        fingerprint: found,
        strategy,
        max_block,
        tokens,
        covariance_sequences: cov_seq,
        lambda_sequences: lam_seq,
        loss_targets,
        layers,
    })
}

/// [`load`] plus a check that the file covers exactly `specs` (same order); errors name the file.
pub fn load_for(path: &Path, fingerprint: &str, specs: &[LayerSpec]) -> Result<Factors> {
    let f = load(path, Some(fingerprint))?;
    f.check_specs(specs).map_err(|e| CurvatureError::Format {
        path: path.to_path_buf(),
        msg: format!("layer mismatch: {e}"),
    })?;
    Ok(f)
}
