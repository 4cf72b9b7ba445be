//! Files of preconditioned queries (`tda trace --save-queries`), so that a fixed target set is
//! traced over new corpus shards without measuring and preconditioning it again. Safetensors, f32
//! exactly as scored, per query `i` and layer: `q<i>.<layer>.left [d_out, r]`,
//! `q<i>.<layer>.right [d_a, r]`.
//!
//! Metadata: `format = tda-curvature-queries`, `format_version`, `layers` (specs JSON), `factors`
//! (the [`Factors::id`] they were preconditioned with), `queries` (count), `sq_norms` and `kept`
//! (JSON lists of f64 bit patterns in hex: exact), and `origin` (the caller's JSON, verbatim: model, measurement, damping, rank, texts).

use super::{io_err, parse_specs, F32View, FORMAT_VERSION};
use crate::error::{CurvatureError, Result};
use crate::precondition::{LowRankLayer, PreconditionedQuery};
use crate::taps::LayerSpec;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// Format of a file of preconditioned queries.
pub const QUERIES_FORMAT: &str = "tda-curvature-queries";

/// What a file of preconditioned queries holds.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedQueries {
    pub specs: Vec<LayerSpec>,
    /// [`crate::Factors::id`] of the factors the queries were preconditioned with.
    pub factors: String,
    pub queries: Vec<PreconditionedQuery>,
    /// The caller's JSON, verbatim.
    pub origin: String,
}

/// Writes `saved` to `path` atomically.
pub fn save_queries(saved: &SavedQueries, path: &Path) -> Result<()> {
    let mut tensors: Vec<(String, F32View<'_>)> = vec![];
    for (i, q) in saved.queries.iter().enumerate() {
        if q.layers.len() != saved.specs.len() {
            return Err(CurvatureError::Usage(format!(
                "query {i} has {} layers, the specs {}",
                q.layers.len(),
                saved.specs.len()
            )));
        }
        for (spec, lr) in saved.specs.iter().zip(&q.layers) {
            for (side, rows, data) in [
                ("left", spec.d_out, &lr.left),
                ("right", spec.d_a(), &lr.right),
            ] {
                tensors.push((
                    format!("q{i}.{}.{side}", spec.name),
                    F32View {
                        shape: vec![rows, lr.rank],
                        data,
                    },
                ));
            }
        }
    }
    let json = |v: serde_json::Value| v.to_string();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), QUERIES_FORMAT.to_string());
    meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    meta.insert(
        "layers".to_string(),
        serde_json::to_string(&saved.specs).expect("specs serialise"),
    );
    meta.insert("factors".to_string(), saved.factors.clone());
    meta.insert("queries".to_string(), saved.queries.len().to_string());
    // f64 as the hex of their bits: exact (a decimal JSON number may not parse back to the same bits).
    let bits = |x: f64| format!("{:016x}", x.to_bits());
    let sq: Vec<String> = saved.queries.iter().map(|q| bits(q.sq_norm)).collect();
    let kept: Vec<Vec<String>> = saved
        .queries
        .iter()
        .map(|q| q.kept.iter().map(|&k| bits(k)).collect())
        .collect();
    meta.insert("sq_norms".to_string(), json(serde_json::json!(sq)));
    meta.insert("kept".to_string(), json(serde_json::json!(kept)));
    meta.insert("origin".to_string(), saved.origin.clone());
    super::write_tensors(tensors, meta, path)
}

/// Reads a file written by [`save_queries`] (format, shapes and finiteness checked).
pub fn load_queries(path: &Path) -> Result<SavedQueries> {
    let fmt = |msg: String| CurvatureError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: as in `load`: the file is only read, and written once via rename.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    let (_, md) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| fmt(format!("not a file of saved queries (bad header: {e})")))?;
    let meta = md
        .metadata()
        .clone()
        .ok_or_else(|| fmt("not a file of saved queries (no metadata)".into()))?;
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| fmt(format!("missing metadata key {k:?}")))
    };
    if get("format")? != QUERIES_FORMAT {
        return Err(fmt(format!(
            "not a file of saved queries (format is not {QUERIES_FORMAT:?})"
        )));
    }
    if get("format_version")? != FORMAT_VERSION.to_string() {
        return Err(fmt("unsupported format_version".into()));
    }
    let specs = parse_specs(path, &meta)?;
    let n: usize = get("queries")?
        .parse()
        .map_err(|_| fmt("bad queries count".into()))?;
    let parse = |k: &str| -> Result<serde_json::Value> {
        serde_json::from_str(&get(k)?).map_err(|e| fmt(format!("bad {k} ({e})")))
    };
    let unbits = |x: &String| {
        u64::from_str_radix(x, 16)
            .map(f64::from_bits)
            .map_err(|_| fmt(format!("bad number {x:?}")))
    };
    let sq: Vec<String> = serde_json::from_value(parse("sq_norms")?)
        .map_err(|e| fmt(format!("bad sq_norms ({e})")))?;
    let sq: Vec<f64> = sq.iter().map(unbits).collect::<Result<_>>()?;
    let kept: Vec<Vec<String>> =
        serde_json::from_value(parse("kept")?).map_err(|e| fmt(format!("bad kept ({e})")))?;
    let kept: Vec<Vec<f64>> = kept
        .iter()
        .map(|k| k.iter().map(unbits).collect::<Result<Vec<f64>>>())
        .collect::<Result<_>>()?;
    if sq.len() != n || kept.len() != n || kept.iter().any(|k| k.len() != specs.len()) {
        return Err(fmt(format!(
            "{n} queries but {} norms and {} kept lists",
            sq.len(),
            kept.len()
        )));
    }
    let st = SafeTensors::deserialize(&mmap)
        .map_err(|e| fmt(format!("not a valid safetensors file ({e})")))?;
    let mut queries = Vec::with_capacity(n);
    for (i, (sq_norm, kept)) in sq.into_iter().zip(kept).enumerate() {
        let mut layers = Vec::with_capacity(specs.len());
        for spec in &specs {
            let read = |side: &str, rows: usize| -> Result<(Vec<f32>, usize)> {
                let name = format!("q{i}.{}.{side}", spec.name);
                let t = st
                    .tensor(&name)
                    .map_err(|_| fmt(format!("missing tensor {name}")))?;
                let shape = t.shape();
                if t.dtype() != Dtype::F32 || shape.len() != 2 || shape[0] != rows {
                    return Err(fmt(format!(
                        "tensor {name} is {:?} {shape:?}, expected F32 [{rows}, rank]",
                        t.dtype()
                    )));
                }
                let v: Vec<f32> = t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                if !v.iter().all(|x| x.is_finite()) {
                    return Err(fmt(format!("tensor {name} contains NaN/Inf")));
                }
                Ok((v, shape[1]))
            };
            let (left, r) = read("left", spec.d_out)?;
            let (right, r2) = read("right", spec.d_a())?;
            if r != r2 {
                return Err(fmt(format!(
                    "query {i}, layer {}: ranks {r} and {r2} differ",
                    spec.name
                )));
            }
            layers.push(LowRankLayer {
                rank: r,
                left,
                right,
            });
        }
        queries.push(PreconditionedQuery {
            layers,
            sq_norm,
            kept,
        });
    }
    Ok(SavedQueries {
        specs,
        factors: get("factors")?,
        queries,
        origin: get("origin")?,
    })
}
