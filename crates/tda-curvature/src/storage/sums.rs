//! Files of pass sums: one shard of a sharded fit, written by [`save_sums`] and added up by a
//! merge. Safetensors, f64 tensors exactly as accumulated:
//! - covariance pass: `<layer>.A_sum.block<k> [s_k, s_k]`, `<layer>.S_sum.block<k>` (the
//!   partition of `max_block`, one block when unset);
//! - Λ pass: `<layer>.lambda_sum [d_out, d_a]`.
//!
//! Metadata: `format = tda-curvature-pass-sums`, `format_version`, `pass`, `strategy`,
//! `max_block`, `tokens`, `sequences`, `layers`, and `origin` (the caller's JSON, verbatim).

use super::{io_err, parse_config, parse_specs, FORMAT_VERSION};
use crate::error::{CurvatureError, Result};
use crate::factors::{FitConfig, Pass, PassSums};
use crate::linalg::partition;
use crate::taps::LayerSpec;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// Format of a file of pass sums (one shard of a sharded fit).
pub const SUMS_FORMAT: &str = "tda-curvature-pass-sums";

/// What a file of pass sums says about itself, besides the sums.
#[derive(Clone, Debug, PartialEq)]
pub struct SumsHeader {
    pub config: FitConfig,
    pub specs: Vec<LayerSpec>,
    /// The caller's description of where the sums come from (JSON: fingerprints, shard, settings),
    /// stored verbatim.
    pub origin: String,
}

type F64View<'a> = super::LeView<'a, f64>;

fn sums_tensor_names(
    spec: &LayerSpec,
    config: &FitConfig,
    pass: Pass,
) -> Vec<(String, Vec<usize>)> {
    match pass {
        Pass::Covariance => {
            let mut out = vec![];
            for (what, d) in [("A", spec.d_a()), ("S", spec.d_out)] {
                for (k, (_, s)) in partition(d, config.max_block).into_iter().enumerate() {
                    out.push((format!("{}.{what}_sum.block{k}", spec.name), vec![s, s]));
                }
            }
            out
        }
        Pass::Lambda => vec![(
            format!("{}.lambda_sum", spec.name),
            vec![spec.d_out, spec.d_a()],
        )],
    }
}

/// Writes `sums` (f64, exactly as accumulated) with `header` to `path`, atomically.
pub fn save_sums(sums: &PassSums, header: &SumsHeader, path: &Path) -> Result<()> {
    let mut tensors: Vec<(String, F64View<'_>)> = vec![];
    for (spec, parts) in header.specs.iter().zip(&sums.layers) {
        for ((name, shape), data) in sums_tensor_names(spec, &header.config, sums.pass)
            .into_iter()
            .zip(parts)
        {
            tensors.push((name, F64View { shape, data }));
        }
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), SUMS_FORMAT.to_string());
    meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    meta.insert(
        "pass".to_string(),
        match sums.pass {
            Pass::Covariance => "covariance",
            Pass::Lambda => "lambda",
        }
        .to_string(),
    );
    meta.insert("strategy".to_string(), header.config.strategy.to_string());
    meta.insert(
        "max_block".to_string(),
        header
            .config
            .max_block
            .map_or("none".to_string(), |w| w.to_string()),
    );
    meta.insert("tokens".to_string(), sums.tokens.to_string());
    meta.insert("sequences".to_string(), sums.sequences.to_string());
    meta.insert(
        "layers".to_string(),
        serde_json::to_string(&header.specs).expect("specs serialise"),
    );
    meta.insert("origin".to_string(), header.origin.clone());
    super::write_tensors(tensors, meta, path)
}

/// The header of a file of pass sums (nothing else is read): a bad or foreign file is refused
/// before any tensor is allocated.
pub fn sums_header(path: &Path) -> Result<(SumsHeader, Pass)> {
    let bytes = std::fs::File::open(path)
        .and_then(|f| {
            // SAFETY: as in `load`: the file is only read, and written once via rename.
            unsafe { memmap2::Mmap::map(&f) }
        })
        .map_err(|e| io_err(path, e))?;
    parse_sums_header(path, &bytes)
}

fn parse_sums_header(path: &Path, bytes: &[u8]) -> Result<(SumsHeader, Pass)> {
    let fmt = |msg: String| CurvatureError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let (_, md) = SafeTensors::read_metadata(bytes)
        .map_err(|e| fmt(format!("not a partial fit (bad header: {e})")))?;
    let meta = md
        .metadata()
        .clone()
        .ok_or_else(|| fmt("not a partial fit (no metadata)".into()))?;
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| fmt(format!("missing metadata key {k:?}")))
    };
    if get("format")? != SUMS_FORMAT {
        return Err(fmt(format!(
            "not a partial fit (format is not {SUMS_FORMAT:?})"
        )));
    }
    if get("format_version")? != FORMAT_VERSION.to_string() {
        return Err(fmt("unsupported format_version".into()));
    }
    let pass = match get("pass")?.as_str() {
        "covariance" => Pass::Covariance,
        "lambda" => Pass::Lambda,
        p => return Err(fmt(format!("unknown pass {p:?}"))),
    };
    Ok((
        SumsHeader {
            config: parse_config(path, &meta)?,
            specs: parse_specs(path, &meta)?,
            origin: get("origin")?,
        },
        pass,
    ))
}

/// Reads a file of pass sums written by [`save_sums`] (shapes and finiteness checked).
pub fn load_sums(path: &Path) -> Result<(SumsHeader, PassSums)> {
    let fmt = |msg: String| CurvatureError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: as in `load`.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    let (header, pass) = parse_sums_header(path, &mmap)?;
    let st = SafeTensors::deserialize(&mmap)
        .map_err(|e| fmt(format!("not a valid safetensors file ({e})")))?;
    let (_, md) = SafeTensors::read_metadata(&mmap).map_err(|e| fmt(e.to_string()))?;
    let meta = md.metadata().clone().unwrap_or_default();
    let num = |k: &str| -> Result<u64> {
        meta.get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| fmt(format!("bad or missing {k}")))
    };
    let mut layers = Vec::with_capacity(header.specs.len());
    for spec in &header.specs {
        let mut parts = vec![];
        for (name, shape) in sums_tensor_names(spec, &header.config, pass) {
            let t = st
                .tensor(&name)
                .map_err(|_| fmt(format!("missing tensor {name}")))?;
            if t.dtype() != Dtype::F64 || t.shape() != shape {
                return Err(fmt(format!(
                    "tensor {name} is {:?} {:?}, expected F64 {shape:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            let v: Vec<f64> = t
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            if !v.iter().all(|x| x.is_finite()) {
                return Err(fmt(format!("tensor {name} contains NaN/Inf")));
            }
            parts.push(v);
        }
        layers.push(parts);
    }
    Ok((
        header,
        PassSums {
            pass,
            tokens: num("tokens")?,
            sequences: num("sequences")?,
            layers,
        },
    ))
}
