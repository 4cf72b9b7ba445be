//! Retrieved documents: `{id, title?, text}` from jsonl or parquet.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use arrow::array::{Array, LargeStringArray, StringArray, StringViewArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{ContextError, Result};

/// One retrieved document. `id` defaults to its 1-based position when the file has none.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Document {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub text: String,
}

impl Document {
    pub fn new(id: impl Into<String>, title: Option<&str>, text: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            title: title.map(str::to_string),
            text: text.into(),
        }
    }
}

/// Reads documents from a `.jsonl` (one object per line with `text`, optional `id`, `title`) or
/// a `.parquet` file (columns `text`, optional `id`, `title`). Blank lines are skipped; a line
/// that is not such an object is an error naming the line. Empty files are an error.
pub fn read_documents(path: &Path) -> Result<Vec<Document>> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let docs = match ext.as_str() {
        "parquet" => read_parquet(path)?,
        _ => read_jsonl(path)?,
    };
    if docs.is_empty() {
        return Err(ContextError::invalid(path, "no documents in the file"));
    }
    Ok(docs)
}

fn read_jsonl(path: &Path) -> Result<Vec<Document>> {
    let f = File::open(path).map_err(|e| ContextError::io(path, e))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| ContextError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| ContextError::invalid(path, format!("line {}: not JSON: {e}", n + 1)))?;
        let text = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
            ContextError::invalid(path, format!("line {}: no string field \"text\"", n + 1))
        })?;
        let id = match v.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(x)) => x.to_string(),
            _ => (out.len() + 1).to_string(),
        };
        let title = v.get("title").and_then(|t| t.as_str());
        out.push(Document::new(id, title, text));
    }
    Ok(out)
}

fn str_at(arr: &dyn Array, i: usize) -> Option<&str> {
    if arr.is_null(i) {
        return None;
    }
    let any = arr.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        return Some(a.value(i));
    }
    if let Some(a) = any.downcast_ref::<LargeStringArray>() {
        return Some(a.value(i));
    }
    any.downcast_ref::<StringViewArray>().map(|a| a.value(i))
}

fn read_parquet(path: &Path) -> Result<Vec<Document>> {
    let f = File::open(path).map_err(|e| ContextError::io(path, e))?;
    let bad = |e: parquet::errors::ParquetError| ContextError::invalid(path, e.to_string());
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(bad)?
        .build()
        .map_err(bad)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| ContextError::invalid(path, e.to_string()))?;
        let text = batch.column_by_name("text").ok_or_else(|| {
            ContextError::invalid(path, "no column \"text\" (string) in the parquet file")
        })?;
        let id = batch.column_by_name("id");
        let title = batch.column_by_name("title");
        for i in 0..batch.num_rows() {
            let t = str_at(text.as_ref(), i).ok_or_else(|| {
                ContextError::invalid(
                    path,
                    format!("row {}: \"text\" is null or not a string", out.len()),
                )
            })?;
            let id = id
                .and_then(|c| str_at(c.as_ref(), i).map(str::to_string))
                .unwrap_or_else(|| (out.len() + 1).to_string());
            let title = title.and_then(|c| str_at(c.as_ref(), i));
            out.push(Document::new(id, title, t));
        }
    }
    Ok(out)
}
