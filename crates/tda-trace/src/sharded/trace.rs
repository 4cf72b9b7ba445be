//! Sharded trace: each task scores its shard of the candidates with the same preconditioned
//! queries and writes a **partial** parquet: one row per kept candidate (the shard's top-K, or
//! every candidate with `--top-k all`, streamed in row groups so memory stays bounded), the
//! origin and the output header in the footer. A merge ranks the union exactly as one unsharded
//! pass does: the top-K of a union is the top-K of the shards' top-Ks, and ties rank the earlier
//! document (its ordinal in the whole corpus) first, as the unsharded pass's heaps do.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, ListArray, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use burn::tensor::backend::AutodiffBackend;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use serde::{Deserialize, Serialize};
use tda_curvature::Factors;
use tda_model::{Tokenizer, Transformer};

use super::origin::{
    check_complete, merged_stats, source_fingerprint, source_settings, Origin, PartKind,
};
use crate::candidates::{window_len, DocSource};
use crate::error::{io, Result, TraceError};
use crate::output::{
    row_columns, row_fields, LayerScore, ResultRow, RowSink, TokenScore, TraceOutput,
};
use crate::query::Query;
use crate::trace::{run, trace, TraceOptions};

/// Footer key of a partial trace file.
const HEADER_KEY: &str = "tda_partial";
/// Rows per row group of a partial.
const ROW_GROUP: usize = 4096;

/// What a partial's footer says: where it comes from, and the output it belongs to (queries,
/// values, settings, the shard's report; no results).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Header {
    origin: Origin,
    output: TraceOutput,
}

/// The columns of a partial: the query's position, the document's ordinal, then a result row's.
fn schema() -> Arc<Schema> {
    let mut fields = vec![
        Field::new("query", DataType::UInt32, false),
        Field::new("doc", DataType::UInt64, false),
    ];
    fields.extend(row_fields());
    Arc::new(Schema::new(fields))
}

/// Writes rows to a partial in row groups of [`ROW_GROUP`].
struct PartWriter {
    path: PathBuf,
    writer: ArrowWriter<File>,
    rows: Vec<(u32, ResultRow)>,
}

impl PartWriter {
    fn create(path: &Path) -> Result<Self> {
        let f = File::create(path).map_err(|e| io(path, e))?;
        let writer = ArrowWriter::try_new(f, schema(), None).map_err(|e| perr(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            rows: Vec::with_capacity(ROW_GROUP),
        })
    }

    fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let batch = to_batch(&self.rows).map_err(|e| perr(&self.path, e))?;
        self.writer.write(&batch).map_err(|e| perr(&self.path, e))?;
        self.writer.flush().map_err(|e| perr(&self.path, e))?;
        self.rows.clear();
        Ok(())
    }

    fn finish(mut self, header: &Header) -> Result<()> {
        self.flush()?;
        self.writer.append_key_value_metadata(KeyValue::new(
            HEADER_KEY.into(),
            serde_json::to_string(header).expect("a header serialises"),
        ));
        self.writer.close().map_err(|e| perr(&self.path, e))?;
        Ok(())
    }
}

impl RowSink for PartWriter {
    fn push(&mut self, query: usize, row: ResultRow) -> Result<()> {
        self.rows.push((query as u32, row));
        if self.rows.len() >= ROW_GROUP {
            self.flush()?;
        }
        Ok(())
    }
}

fn perr(path: &Path, e: impl std::fmt::Display) -> TraceError {
    TraceError::Parquet {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

fn to_batch(
    rows: &[(u32, ResultRow)],
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(
            rows.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(
            rows.iter().map(|(_, r)| r.doc).collect::<Vec<_>>(),
        )),
    ];
    cols.extend(row_columns(rows.iter().map(|(_, r)| r)));
    RecordBatch::try_new(schema(), cols)
}

/// Everything that must be equal across the shards of a trace.
fn settings(
    model: &tda_model::ModelConfig,
    factors_fingerprint: &str,
    opts: &TraceOptions,
    source: &DocSource,
    out: &TraceOutput,
) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "factors": factors_fingerprint,
        "queries": out.queries.iter().map(|q| (&q.id, &q.prompt, &q.completion, q.value)).collect::<Vec<_>>(),
        "preconditioned_queries": format!("{:016x}", out.queries_fingerprint),
        "measurement": out.measurement,
        "damping": out.damping,
        "rank": out.rank,
        "normalization": out.normalization,
        "per_token_count": out.per_token_count,
        "granularity": out.granularity,
        "aggregate": out.aggregate,
        "per_query": opts.per_query,
        "opponents": opts.opponents,
        "per_token": opts.per_token,
        "per_layer": opts.per_layer,
        "top_k": opts.top_k,
        "max_len": window_len(&opts.windows, model)?,
        "source": source_settings(source),
    }))
}

/// Scores this shard (`opts.windows.shard`) of `source` and writes the partial parquet `out`
/// (atomically). `factors_fingerprint` identifies the factors file (all shards must use the same).
/// Returns the shard's output header (no results).
#[allow(clippy::too_many_arguments)]
pub fn trace_shard<AD: AutodiffBackend>(
    model: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    factors_fingerprint: &str,
    model_fingerprint: &str,
    queries: &[Query],
    source: &DocSource,
    opts: &TraceOptions,
    out: &Path,
    progress: &mut dyn FnMut(usize, u64),
) -> Result<TraceOutput> {
    let corpus = source_fingerprint(source)?;
    tda_io::write_file_with(out, |tmp| -> Result<TraceOutput> {
        let mut w = PartWriter::create(tmp)?;
        let mut output = match opts.top_k {
            None => run(
                model,
                model,
                tokenizer,
                factors,
                opts.damping,
                None,
                queries,
                source,
                opts,
                Some(&mut w),
                progress,
            )?,
            Some(_) => {
                let o = trace(model, tokenizer, factors, queries, source, opts, progress)?;
                for (qi, q) in o.queries.iter().enumerate() {
                    for r in &q.results {
                        w.push(qi, r.clone())?;
                    }
                }
                o
            }
        };
        output.queries.iter_mut().for_each(|q| q.results.clear());
        let origin = Origin {
            kind: PartKind::Trace,
            model: model_fingerprint.to_string(),
            corpus: corpus.clone(),
            shard: opts.windows.shard,
            settings: settings(&model.config, factors_fingerprint, opts, source, &output)?,
            stats: output.report.corpus.clone(),
            loss_targets: 0,
            seconds: output.report.total_s,
            eigenbases: None,
        };
        let header = Header {
            origin,
            output: output.clone(),
        };
        w.finish(&header)?;
        Ok(output)
    })
}

/// The footer header of a partial trace file.
fn read_header(path: &Path) -> Result<Header> {
    let f = File::open(path).map_err(|e| io(path, e))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| TraceError::Usage(format!("{}: not a partial trace ({e})", path.display())))?;
    let text = b
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == HEADER_KEY))
        .and_then(|k| k.value.clone())
        .ok_or_else(|| {
            TraceError::Usage(format!(
                "{}: not a partial trace (no {HEADER_KEY} footer; written by `tda trace --shard`)",
                path.display()
            ))
        })?;
    serde_json::from_str(&text)
        .map_err(|e| TraceError::Usage(format!("{}: bad partial header ({e})", path.display())))
}

/// Streams the rows of a partial, in file order.
fn for_each_row(path: &Path, mut f: impl FnMut(usize, ResultRow)) -> Result<()> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(1024).build())
        .map_err(|e| perr(path, e))?;
    let bad = |what: &str| TraceError::Usage(format!("{}: bad partial ({what})", path.display()));
    for batch in reader {
        let batch = batch.map_err(|e| perr(path, e))?;
        if batch.schema() != schema() {
            return Err(bad("unexpected columns"));
        }
        let col = |i: usize| batch.column(i);
        let u32s = col(0)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .ok_or_else(|| bad("query"))?;
        let u64s = |i| {
            col(i)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .ok_or_else(|| bad("integers"))
        };
        let strs = |i| {
            col(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| bad("strings"))
        };
        let f64s = |i| {
            col(i)
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| bad("floats"))
        };
        let lists = |i| {
            col(i)
                .as_any()
                .downcast_ref::<ListArray>()
                .ok_or_else(|| bad("lists"))
        };
        let (doc, doc_id, window, s0, s1, text, score) = (
            u64s(1)?,
            strs(2)?,
            u64s(3)?,
            u64s(4)?,
            u64s(5)?,
            strs(6)?,
            f64s(7)?,
        );
        let (windows, best) = (u64s(8)?, f64s(9)?);
        let (ts, tt, ln, ls) = (lists(10)?, lists(11)?, lists(12)?, lists(13)?);
        let floats = |l: &ListArray, r: usize| -> Option<Vec<f64>> {
            (!l.is_null(r)).then(|| {
                let v = l.value(r);
                let v = v.as_any().downcast_ref::<Float64Array>().expect("f64 list");
                v.values().to_vec()
            })
        };
        let texts = |l: &ListArray, r: usize| -> Option<Vec<String>> {
            (!l.is_null(r)).then(|| {
                let v = l.value(r);
                let v = v
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("string list");
                (0..v.len()).map(|i| v.value(i).to_string()).collect()
            })
        };
        for r in 0..batch.num_rows() {
            let per_token = floats(ts, r).zip(texts(tt, r)).map(|(s, t)| {
                t.into_iter()
                    .zip(s)
                    .map(|(token, score)| TokenScore { token, score })
                    .collect()
            });
            let per_layer = floats(ls, r).zip(texts(ln, r)).map(|(s, n)| {
                n.into_iter()
                    .zip(s)
                    .map(|(layer, score)| LayerScore { layer, score })
                    .collect()
            });
            f(
                u32s.value(r) as usize,
                ResultRow {
                    rank: 0,
                    doc: doc.value(r),
                    doc_id: doc_id.value(r).to_string(),
                    window: window.value(r) as usize,
                    span: (s0.value(r) as usize, s1.value(r) as usize),
                    text: text.value(r).to_string(),
                    score: score.value(r),
                    windows: (!windows.is_null(r)).then(|| windows.value(r) as usize),
                    best_window_score: (!best.is_null(r)).then(|| best.value(r)),
                    per_token,
                    per_layer,
                },
            );
        }
    }
    Ok(())
}

/// The best `k` rows of one query, bounded in memory (`None`: all rows).
struct Best {
    k: Option<usize>,
    opponents: bool,
    rows: Vec<ResultRow>,
}

impl Best {
    /// Better first; ties: the earlier candidate (document ordinal, then window) first.
    fn order(&self, a: &ResultRow, b: &ResultRow) -> std::cmp::Ordering {
        let by_score = if self.opponents {
            a.score.total_cmp(&b.score)
        } else {
            b.score.total_cmp(&a.score)
        };
        by_score
            .then(a.doc.cmp(&b.doc))
            .then(a.window.cmp(&b.window))
    }
    fn push(&mut self, r: ResultRow) {
        self.rows.push(r);
        if let Some(k) = self.k {
            if self.rows.len() >= 2 * k.max(512) {
                self.settle();
            }
        }
    }
    fn settle(&mut self) {
        let mut rows = std::mem::take(&mut self.rows);
        rows.sort_by(|a, b| self.order(a, b));
        if let Some(k) = self.k {
            rows.truncate(k);
        }
        self.rows = rows;
    }
}

/// Merges the partial traces `paths` (all shards of one sharded trace, any order) into the
/// output of the unsharded trace with `top_k` results per query: `Some(Some(k))`, all
/// (`Some(None)`, held in memory), or as many as each shard kept (`None`).
pub fn merge_trace(paths: &[PathBuf], top_k: Option<Option<usize>>) -> Result<TraceOutput> {
    let mut parts = vec![];
    let mut headers = vec![];
    for p in paths {
        let h = read_header(p)?;
        parts.push((p.clone(), h.origin.clone()));
        headers.push(h);
    }
    let order = check_complete(&parts)?;
    let first = &headers[order[0]];
    let kept = first.origin.settings["top_k"].as_u64().map(|k| k as usize);
    let top_k = top_k.unwrap_or(kept);
    if let (Some(want), Some(have)) = (top_k, kept) {
        if want > have {
            return Err(TraceError::Usage(format!(
                "--top-k {want} is more than the {have} results each shard kept: rerun the shards with --top-k {want} (or all)"
            )));
        }
    }
    if top_k.is_none() && kept.is_some() {
        return Err(TraceError::Usage(format!(
            "--top-k all: the shards kept only their top {} (rerun them with --top-k all)",
            kept.unwrap_or(0)
        )));
    }
    let opponents = first.origin.settings["opponents"]
        .as_bool()
        .unwrap_or(false);
    let nq = first.output.queries.len();
    let mut best: Vec<Best> = (0..nq)
        .map(|_| Best {
            k: top_k,
            opponents,
            rows: vec![],
        })
        .collect();
    let mut bad_query = None;
    for &i in &order {
        for_each_row(&parts[i].0, |q, row| match best.get_mut(q) {
            Some(b) => b.push(row),
            None => bad_query = Some((i, q)),
        })?;
        if let Some((i, q)) = bad_query {
            return Err(TraceError::Usage(format!(
                "{}: bad partial (row for query {q} of {nq})",
                parts[i].0.display()
            )));
        }
    }
    let mut out = first.output.clone();
    for (q, mut b) in out.queries.iter_mut().zip(best) {
        b.settle();
        q.results = b.rows;
        for (r, row) in q.results.iter_mut().enumerate() {
            row.rank = r + 1;
        }
    }
    let stats = merged_stats(&parts, &order);
    let mut report = out.report.clone();
    report.corpus = stats;
    report.candidates = headers.iter().map(|h| h.output.report.candidates).sum();
    report.candidate_tokens = headers
        .iter()
        .map(|h| h.output.report.candidate_tokens)
        .sum();
    let sum = |f: fn(&crate::TraceReport) -> f64| {
        headers.iter().map(|h| f(&h.output.report)).sum::<f64>()
    };
    report.queries_s = sum(|r| r.queries_s);
    report.model_s = sum(|r| r.model_s);
    report.model_passes = headers.iter().map(|h| h.output.report.model_passes).sum();
    report.copy_s = sum(|r| r.copy_s);
    report.contraction_s = sum(|r| r.contraction_s);
    report.stats_s = sum(|r| r.stats_s);
    report.topk_s = sum(|r| r.topk_s);
    report.total_s = sum(|r| r.total_s);
    report.candidate_tokens_per_s = report.candidate_tokens as f64 / report.total_s.max(1e-9);
    out.report = report;
    if out.report.candidates == 0 {
        return Err(TraceError::Usage(format!(
            "no candidate windows in any of the {} shards: {}",
            order.len(),
            out.report.corpus
        )));
    }
    Ok(out)
}
