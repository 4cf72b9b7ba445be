//! jsonl: one JSON object per line, text, id and title taken from configurable fields.

use super::options::ReadOptions;
use super::record::{default_id, Raw, SkipReason};
use crate::doc::{Document, SourceRef};

pub(super) fn parse_jsonl_line(buf: &[u8], src: SourceRef, rel: &str, opts: &ReadOptions) -> Raw {
    let line = match std::str::from_utf8(buf) {
        Ok(t) => t,
        Err(_) => return Raw::Skip(src.row, SkipReason::InvalidUtf8),
    };
    if line.trim().is_empty() {
        return Raw::Skip(src.row, SkipReason::Empty);
    }
    let value: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(_) => return Raw::Skip(src.row, SkipReason::BadJson),
    };
    let serde_json::Value::Object(mut obj) = value else {
        return Raw::Skip(src.row, SkipReason::BadJson);
    };
    let title = opts.title_column.as_ref().and_then(|c| match obj.get(c) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        _ => None,
    });
    let text = match obj.remove(&opts.text_column) {
        Some(serde_json::Value::String(s)) => s,
        _ => return Raw::Skip(src.row, SkipReason::MissingText),
    };
    if text.trim().is_empty() {
        return Raw::Skip(src.row, SkipReason::Empty);
    }
    let id = opts.id_column.as_ref().and_then(|c| match obj.get(c) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    });
    Raw::Doc {
        own_id: id.is_some(),
        doc: Document {
            id: id.unwrap_or_else(|| default_id(rel, src.row)),
            title,
            text,
            source: src,
        },
    }
}
