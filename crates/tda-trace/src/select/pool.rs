//! The pool (one jsonl / text / parquet file read into documents that remember their record),
//! the targets, and the output that keeps the selected records as they were.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::{RecordBatch, RecordBatchReader};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use tda_corpus::{open_corpus, Document, Format, ReadOptions, ReadStats};

use super::pick::Selection;
use crate::error::{io, Result, TraceError};
use crate::query::Query;

/// The columns / fields added to each selected record.
pub const RANK_FIELD: &str = "tda_rank";
pub const SCORE_FIELD: &str = "tda_score";

/// A candidate pool: every document of one corpus file, in file order.
///
/// Invariant: `docs[i].source.row` is the record (jsonl line, text line, parquet row) the
/// document came from; records the reader skipped are counted in `stats` and are not in `docs`.
#[derive(Clone, Debug)]
pub struct Pool {
    pub path: PathBuf,
    pub format: Format,
    pub read: ReadOptions,
    pub docs: Vec<Document>,
    pub stats: ReadStats,
}

/// Reads the pool file (`.jsonl`/`.ndjson`/`.json`, `.txt`, `.parquet`); a folder or an unknown
/// extension is an error naming `--pool`.
pub fn read_pool(path: &Path, read: &ReadOptions) -> Result<Pool> {
    let format = Format::from_path(path).ok_or_else(|| {
        TraceError::Usage(format!(
            "--pool {}: expected a .jsonl, .txt or .parquet file",
            path.display()
        ))
    })?;
    if !path.is_file() {
        return Err(TraceError::Usage(format!(
            "--pool {}: not a file (give one .jsonl, .txt or .parquet file)",
            path.display()
        )));
    }
    let mut reader = open_corpus(path, read)?;
    let mut docs = Vec::new();
    for d in reader.by_ref() {
        docs.push(d?);
    }
    let stats = reader.stats().clone();
    if docs.is_empty() {
        return Err(TraceError::Usage(format!(
            "--pool {}: no documents ({})",
            path.display(),
            stats.why_no_documents(read)
        )));
    }
    Ok(Pool {
        path: path.to_path_buf(),
        format,
        read: read.clone(),
        docs,
        stats,
    })
}

/// Targets, read as [`crate::query::read_queries`] reads queries (a `.jsonl` of
/// `{"prompt", "completion", "id"?}`, or plain text with one target per non-blank line); errors
/// name `--targets`.
pub fn read_targets(path: &Path) -> Result<Vec<Query>> {
    crate::query::read_queries(path, "targets").map_err(|e| match e {
        TraceError::Usage(m) => TraceError::Usage(format!("--targets {m}")),
        e => e,
    })
}

/// Output format, from the `--out` extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFormat {
    Jsonl,
    Parquet,
}

impl OutFormat {
    /// `.jsonl` or `.parquet`; anything else is an error naming `--out`.
    pub fn of(path: &Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("jsonl") => Ok(Self::Jsonl),
            Some("parquet") => Ok(Self::Parquet),
            _ => Err(TraceError::Usage(format!(
                "--out {}: expected a .jsonl or .parquet file name",
                path.display()
            ))),
        }
    }

    /// Whether records of a pool in `pool` format can be written unchanged in this format: a jsonl
    /// pool as jsonl, a parquet pool as parquet, a text pool as either.
    pub fn check_pool(self, pool: Format, out: &Path) -> Result<()> {
        match (pool, self) {
            (Format::Jsonl, OutFormat::Parquet) => Err(TraceError::Usage(format!(
                "--out {}: a jsonl pool is written as .jsonl (records are kept as they were)",
                out.display()
            ))),
            (Format::Parquet, OutFormat::Jsonl) => Err(TraceError::Usage(format!(
                "--out {}: a parquet pool is written as .parquet (records are kept as they were)",
                out.display()
            ))),
            _ => Ok(()),
        }
    }
}

fn json_num(x: f64) -> String {
    serde_json::Number::from_f64(x)
        .map(|n| n.to_string())
        .unwrap_or_else(|| "null".into())
}

/// The jsonl line of a selected record: the original bytes with `,"tda_rank":R,"tda_score":S`
/// inserted before the closing brace (field order, spacing and number formatting untouched).
fn annotate_line(line: &str, rank: usize, score: f64, pool: &Path, row: u64) -> Result<String> {
    let bad =
        |msg: &str| TraceError::Usage(format!("--pool {} line {}: {msg}", pool.display(), row + 1));
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
    for f in [RANK_FIELD, SCORE_FIELD] {
        if obj.contains_key(f) {
            return Err(bad(&format!("the record already has a field {f:?}")));
        }
    }
    let body = line.trim_end();
    let inner = body
        .strip_suffix('}')
        .ok_or_else(|| bad("does not end with '}'"))?;
    let sep = if obj.is_empty() { "" } else { "," };
    Ok(format!(
        "{inner}{sep}\"{RANK_FIELD}\":{rank},\"{SCORE_FIELD}\":{}}}",
        json_num(score)
    ))
}

fn perr(path: &Path, e: impl std::fmt::Display) -> TraceError {
    TraceError::Parquet {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

fn write_batch_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    tda_io::write_file_with(path, |tmp| -> Result<()> {
        let f = std::fs::File::create(tmp).map_err(|e| io(tmp, e))?;
        let mut w = ArrowWriter::try_new(f, batch.schema(), None).map_err(|e| perr(path, e))?;
        w.write(batch).map_err(|e| perr(path, e))?;
        w.close().map_err(|e| perr(path, e))?;
        Ok(())
    })
}

/// The selected rows of a parquet pool in rank order, with `tda_rank` (u64) and `tda_score`
/// (f64) appended to the original schema. Reads the file batch by batch and keeps only the
/// selected rows in memory.
fn parquet_rows(pool: &Pool, sel: &Selection) -> Result<RecordBatch> {
    let src = &pool.path;
    // Row number in the file → position in the ranking.
    let mut want: HashMap<u64, usize> = HashMap::new();
    for (pos, p) in sel.picked.iter().enumerate() {
        want.insert(pool.docs[p.doc].source.row, pos);
    }
    let f = std::fs::File::open(src).map_err(|e| io(src, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| perr(src, e))?
        .build()
        .map_err(|e| perr(src, e))?;
    let schema = reader.schema();
    for f in [RANK_FIELD, SCORE_FIELD] {
        if schema.column_with_name(f).is_some() {
            return Err(TraceError::Usage(format!(
                "--pool {}: the file already has a column {f:?}",
                src.display()
            )));
        }
    }
    let mut pieces: Vec<RecordBatch> = Vec::new();
    let mut positions: Vec<usize> = Vec::new();
    let mut row0 = 0u64;
    for b in reader {
        let b = b.map_err(|e| perr(src, e))?;
        let mut idx: Vec<u32> = Vec::new();
        for r in 0..b.num_rows() {
            if let Some(&pos) = want.get(&(row0 + r as u64)) {
                idx.push(r as u32);
                positions.push(pos);
            }
        }
        if !idx.is_empty() {
            pieces.push(
                arrow::compute::take_record_batch(&b, &UInt32Array::from(idx))
                    .map_err(|e| perr(src, e))?,
            );
        }
        row0 += b.num_rows() as u64;
    }
    if positions.len() != sel.picked.len() {
        return Err(TraceError::Usage(format!(
            "--pool {}: {} of the {} selected rows were found again (the file changed during the run?)",
            src.display(),
            positions.len(),
            sel.picked.len()
        )));
    }
    let all = arrow::compute::concat_batches(&schema, &pieces).map_err(|e| perr(src, e))?;
    // all[k] is the row at ranking position positions[k]: invert to rank order.
    let mut inv = vec![0u32; positions.len()];
    for (k, &pos) in positions.iter().enumerate() {
        inv[pos] = k as u32;
    }
    let ranked = arrow::compute::take_record_batch(&all, &UInt32Array::from(inv))
        .map_err(|e| perr(src, e))?;
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(RANK_FIELD, DataType::UInt64, false)));
    fields.push(Arc::new(Field::new(SCORE_FIELD, DataType::Float64, false)));
    let mut cols: Vec<ArrayRef> = ranked.columns().to_vec();
    cols.push(Arc::new(UInt64Array::from_iter_values(
        sel.picked.iter().map(|p| p.rank as u64),
    )));
    cols.push(Arc::new(Float64Array::from_iter_values(
        sel.picked.iter().map(|p| p.score),
    )));
    let out_schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    RecordBatch::try_new(out_schema, cols).map_err(|e| perr(src, e))
}

/// Writes the selection atomically to `out`:
/// - jsonl pool → `.jsonl`: each selected line as it was in the pool, plus `tda_rank`, `tda_score`;
/// - parquet pool → `.parquet`: the selected rows with the pool's schema plus the two columns;
/// - text pool → `.jsonl` objects `{"text", "tda_rank", "tda_score"}` or `.parquet` with those
///   three columns.
///
/// Records are in rank order (rank 1 first).
pub fn write_selection(pool: &Pool, sel: &Selection, out: &Path) -> Result<()> {
    let fmt = OutFormat::of(out)?;
    fmt.check_pool(pool.format, out)?;
    match (pool.format, fmt) {
        (Format::Jsonl, _) => {
            let bytes = std::fs::read(&pool.path).map_err(|e| io(&pool.path, e))?;
            let mut buf = Vec::new();
            for p in &sel.picked {
                let s = &pool.docs[p.doc].source;
                let (a, b) = (
                    s.byte_offset as usize,
                    (s.byte_offset + s.byte_len) as usize,
                );
                let line = bytes
                    .get(a..b)
                    .and_then(|l| std::str::from_utf8(l).ok())
                    .ok_or_else(|| {
                        TraceError::Usage(format!(
                            "--pool {} line {}: record no longer readable (the file changed during the run?)",
                            pool.path.display(),
                            s.row + 1
                        ))
                    })?;
                let l = annotate_line(line, p.rank, p.score, &pool.path, s.row)?;
                buf.extend_from_slice(l.as_bytes());
                buf.push(b'\n');
            }
            tda_io::write_file(out, &buf)?;
        }
        (Format::Text, OutFormat::Jsonl) => {
            let mut buf = Vec::new();
            for p in &sel.picked {
                let v = serde_json::json!({
                    "text": pool.docs[p.doc].text, RANK_FIELD: p.rank, SCORE_FIELD: p.score,
                });
                serde_json::to_writer(&mut buf, &v).map_err(std::io::Error::from)?;
                buf.write_all(b"\n")?;
            }
            tda_io::write_file(out, &buf)?;
        }
        (Format::Text, OutFormat::Parquet) => {
            let schema = Arc::new(Schema::new(vec![
                Field::new("text", DataType::Utf8, false),
                Field::new(RANK_FIELD, DataType::UInt64, false),
                Field::new(SCORE_FIELD, DataType::Float64, false),
            ]));
            let cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(
                    sel.picked.iter().map(|p| pool.docs[p.doc].text.as_str()),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    sel.picked.iter().map(|p| p.rank as u64),
                )),
                Arc::new(Float64Array::from_iter_values(
                    sel.picked.iter().map(|p| p.score),
                )),
            ];
            let batch = RecordBatch::try_new(schema, cols).map_err(|e| perr(out, e))?;
            write_batch_parquet(out, &batch)?;
        }
        (Format::Parquet, _) => {
            let batch = parquet_rows(pool, sel)?;
            write_batch_parquet(out, &batch)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotate_keeps_the_line_and_appends_two_fields() {
        let p = Path::new("pool.jsonl");
        let l = annotate_line(r#"{"text": "a b",  "id":7, "x":1.50} "#, 3, 0.25, p, 0).unwrap();
        assert_eq!(
            l,
            r#"{"text": "a b",  "id":7, "x":1.50,"tda_rank":3,"tda_score":0.25}"#
        );
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["tda_rank"], 3);
        let e = annotate_line(r#"{"text":"a","tda_score":1}"#, 1, 0.0, p, 4).unwrap_err();
        assert!(e.to_string().contains("line 5"), "{e}");
        assert!(e.to_string().contains("tda_score"), "{e}");
    }
}
