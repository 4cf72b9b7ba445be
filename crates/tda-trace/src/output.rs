//! Result structs (serde → JSON) and parquet output (one row per query × result, written to a
//! temporary file beside the target and renamed into place).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float32Array, Float64Array, Float64Builder, ListBuilder, StringArray, StringBuilder,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::error::{io, Result, TraceError};
use crate::measure::Measurement;

/// The score of one loss term of a window: `token` is the token *predicted* there (position
/// `t + 1`), `score` the part of the window's score that comes from predicting it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenScore {
    pub token: String,
    pub score: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerScore {
    pub layer: String,
    pub score: f64,
}

/// What a result row is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One row per document: the sum of its windows' scores, with its best window.
    #[default]
    Document,
    /// One row per window.
    Window,
}

impl std::str::FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "document" => Ok(Self::Document),
            "window" => Ok(Self::Window),
            _ => Err(format!("granularity {s:?}: document or window")),
        }
    }
}

/// One candidate in a query's ranking.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResultRow {
    /// 1-based.
    pub rank: usize,
    /// 0-based ordinal of the document in the candidate pass (ties rank the earlier first).
    #[serde(skip)]
    pub doc: u64,
    pub doc_id: String,
    /// Window number within the document.
    pub window: usize,
    /// Byte span of the window in the document's text.
    pub span: (usize, usize),
    pub text: String,
    /// The influence of the candidate: a window's score, or for a document the sum of its
    /// windows' scores (`window`, `span`, `text` and `per_token` are then its best window's).
    pub score: f64,
    /// Documents (`--granularity document`): the number of windows summed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<usize>,
    /// Documents: the best window's own score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_window_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_token: Option<Vec<TokenScore>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_layer: Option<Vec<LayerScore>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueryResult {
    pub id: String,
    pub prompt: String,
    pub completion: String,
    /// Value of the measurement `f` for this query.
    pub value: f32,
    pub results: Vec<ResultRow>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceOutput {
    pub measurement: Measurement,
    pub strategy: String,
    pub damping: String,
    pub rank: String,
    pub normalization: String,
    pub per_token_count: bool,
    /// One row per document (default) or per window.
    pub granularity: Granularity,
    /// The queries were scored as one target set (the first result is the target's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<crate::query::Aggregate>,
    /// Multi-stage tracing: which preconditioners and which fine-tuning damping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<crate::stages::StagesInfo>,
    /// An ensemble over training states ([`crate::ensemble`]): which states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleInfo>,
    pub queries: Vec<QueryResult>,
    pub report: TraceReport,
    /// Sharded traces: a fingerprint of the preconditioned queries' f32 bits, equal in every shard
    /// of one sharded trace (0 when not sharded).
    #[serde(skip)]
    pub queries_fingerprint: u64,
}

/// What an ensembled trace ([`crate::ensemble::combine`]) was made of.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EnsembleInfo {
    /// Model fingerprints of the states, the first state (the `--model`) first.
    pub states: Vec<String>,
}

/// Receives the result rows of a pass as they are made (unranked: `rank` is 0), instead of a
/// ranking kept in memory: `query` is the query's position.
pub trait RowSink {
    fn push(&mut self, query: usize, row: ResultRow) -> Result<()>;
}

/// How much of a layer's `‖P_q‖²_F` the stored rank-r queries keep (1 = all): the least over the
/// queries and the mean.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LayerKept {
    pub layer: String,
    pub min: f64,
    pub mean: f64,
}

/// Where the time went.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TraceReport {
    /// The model's `--dtype`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_dtype: String,
    /// What the candidate pass read.
    pub corpus: crate::candidates::PassStats,
    pub queries: usize,
    pub candidates: usize,
    pub candidate_tokens: usize,
    /// Query taps + preconditioning + rank-r compression.
    pub queries_s: f64,
    /// Per layer, the share of the preconditioned queries' `‖P_q‖²` the rank-r compression keeps.
    #[serde(default)]
    pub query_rank_kept: Vec<LayerKept>,
    /// Candidates: forward + activation-gradient backward, device → host copies, the query-batched
    /// contraction, normalisation statistics, top-K bookkeeping.
    pub model_s: f64,
    /// Forwards + backwards over the candidates (one per batch unless the memory budget split
    /// batches: fewer windows per forward, or layer groups).
    #[serde(default)]
    pub model_passes: usize,
    pub copy_s: f64,
    pub contraction_s: f64,
    pub stats_s: f64,
    pub topk_s: f64,
    pub total_s: f64,
    pub candidate_tokens_per_s: f64,
}

/// Writes the results as parquet: columns `query_id, prompt, completion, value, rank, doc_id,
/// window, span_start, span_end, text, score, windows, best_window_score (null for windows),
/// per_token_scores (list<f64>), per_token_tokens
/// (list<utf8>), layers (list<utf8>), per_layer_scores (list<f64>)`. Atomic (temp + rename).
pub fn write_parquet(out: &TraceOutput, path: &Path) -> Result<()> {
    let perr = |msg: String| TraceError::Parquet {
        path: path.to_path_buf(),
        msg,
    };
    let rows: Vec<(&crate::output::QueryResult, &ResultRow)> = out
        .queries
        .iter()
        .flat_map(|q| q.results.iter().map(move |r| (q, r)))
        .collect();
    let s = |f: &dyn Fn(&(&QueryResult, &ResultRow)) -> String| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let u = |f: &dyn Fn(&(&QueryResult, &ResultRow)) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let mut fields = vec![
        Field::new("query_id", DataType::Utf8, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("completion", DataType::Utf8, false),
        Field::new("value", DataType::Float32, false),
        Field::new("rank", DataType::UInt64, false),
    ];
    fields.extend(row_fields());
    let schema = Arc::new(Schema::new(fields));
    let mut cols: Vec<ArrayRef> = vec![
        s(&|(q, _)| q.id.clone()),
        s(&|(q, _)| q.prompt.clone()),
        s(&|(q, _)| q.completion.clone()),
        Arc::new(Float32Array::from(
            rows.iter().map(|(q, _)| q.value).collect::<Vec<_>>(),
        )),
        u(&|(_, r)| r.rank as u64),
    ];
    cols.extend(row_columns(rows.iter().map(|(_, r)| *r)));
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| perr(e.to_string()))?;
    tda_io::write_file_with(path, |tmp| -> Result<()> {
        let f = std::fs::File::create(tmp).map_err(|e| io(tmp, e))?;
        let mut w = ArrowWriter::try_new(f, schema, None).map_err(|e| perr(e.to_string()))?;
        w.write(&batch).map_err(|e| perr(e.to_string()))?;
        w.close().map_err(|e| perr(e.to_string()))?;
        Ok(())
    })
}

/// The fields of [`row_columns`].
pub(crate) fn row_fields() -> Vec<Field> {
    let list = |name: &str, dt: DataType| {
        Field::new(
            name,
            DataType::List(Arc::new(Field::new("item", dt, true))),
            true,
        )
    };
    vec![
        Field::new("doc_id", DataType::Utf8, false),
        Field::new("window", DataType::UInt64, false),
        Field::new("span_start", DataType::UInt64, false),
        Field::new("span_end", DataType::UInt64, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("windows", DataType::UInt64, true),
        Field::new("best_window_score", DataType::Float64, true),
        list("per_token_scores", DataType::Float64),
        list("per_token_tokens", DataType::Utf8),
        list("layers", DataType::Utf8),
        list("per_layer_scores", DataType::Float64),
    ]
}

/// The columns of result rows, in this order: `doc_id, window, span_start, span_end, text,
/// score, windows, best_window_score` (null for windows), and the breakdown lists
/// `per_token_scores, per_token_tokens, layers, per_layer_scores` (null without a breakdown).
pub(crate) fn row_columns<'a>(rows: impl Iterator<Item = &'a ResultRow> + Clone) -> Vec<ArrayRef> {
    let u = |f: &dyn Fn(&ResultRow) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from(rows.clone().map(f).collect::<Vec<_>>()))
    };
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(
            rows.clone().map(|r| r.doc_id.as_str()).collect::<Vec<_>>(),
        )),
        u(&|r| r.window as u64),
        u(&|r| r.span.0 as u64),
        u(&|r| r.span.1 as u64),
        Arc::new(StringArray::from(
            rows.clone().map(|r| r.text.as_str()).collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            rows.clone().map(|r| r.score).collect::<Vec<_>>(),
        )),
        Arc::new(UInt64Array::from(
            rows.clone()
                .map(|r| r.windows.map(|w| w as u64))
                .collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(
            rows.clone()
                .map(|r| r.best_window_score)
                .collect::<Vec<_>>(),
        )),
    ];
    let mut tok_scores = ListBuilder::new(Float64Builder::new());
    let mut tok_strings = ListBuilder::new(StringBuilder::new());
    let mut layer_names = ListBuilder::new(StringBuilder::new());
    let mut layer_scores = ListBuilder::new(Float64Builder::new());
    for r in rows {
        match &r.per_token {
            Some(v) => {
                for t in v {
                    tok_scores.values().append_value(t.score);
                    tok_strings.values().append_value(&t.token);
                }
                tok_scores.append(true);
                tok_strings.append(true);
            }
            None => {
                tok_scores.append(false);
                tok_strings.append(false);
            }
        }
        match &r.per_layer {
            Some(v) => {
                for l in v {
                    layer_scores.values().append_value(l.score);
                    layer_names.values().append_value(&l.layer);
                }
                layer_scores.append(true);
                layer_names.append(true);
            }
            None => {
                layer_scores.append(false);
                layer_names.append(false);
            }
        }
    }
    cols.extend([
        Arc::new(tok_scores.finish()) as ArrayRef,
        Arc::new(tok_strings.finish()),
        Arc::new(layer_names.finish()),
        Arc::new(layer_scores.finish()),
    ]);
    cols
}
