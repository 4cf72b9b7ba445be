//! Retrieved documents: `{id, title?, text}` read through `tda-corpus` (jsonl, parquet, text, or a
//! folder of them), in file order.

use std::path::Path;

use tda_corpus::{open_corpus, CorpusError, DefaultId, ReadOptions, SkipReason};

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
/// a `.parquet` file (columns `text`, optional `id`, `title`), or anything else `tda-corpus` reads.
/// Blank lines and empty texts are skipped; a record without a text is an error naming its line
/// (jsonl) or row (parquet), since a retrieved document that silently vanished would shift every
/// citation. No document at all is an error.
pub fn read_documents(path: &Path) -> Result<Vec<Document>> {
    let opts = ReadOptions {
        title_column: Some("title".into()),
        default_id: DefaultId::Ordinal,
        strict: true,
        ..ReadOptions::default()
    };
    let mut out = Vec::new();
    for item in open_corpus(path, &opts)? {
        match item {
            Ok(d) => out.push(Document {
                id: d.id,
                title: d.title,
                text: d.text,
            }),
            Err(CorpusError::BadRecord {
                reason: Some(SkipReason::Empty),
                ..
            }) => continue,
            Err(CorpusError::BadRecord {
                path,
                record,
                reason,
                msg,
            }) => {
                let parquet =
                    tda_corpus::Format::from_path(&path) == Some(tda_corpus::Format::Parquet);
                let msg = match (reason, parquet) {
                    (Some(SkipReason::MissingText), false) => {
                        format!("line {}: no string field \"text\"", record + 1)
                    }
                    (Some(SkipReason::MissingText), true) => {
                        format!("row {record}: \"text\" is null or not a string")
                    }
                    (_, false) => format!("line {}: {msg}", record + 1),
                    (_, true) => format!("row {record}: {msg}"),
                };
                return Err(ContextError::invalid(path, msg));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if out.is_empty() {
        return Err(ContextError::invalid(path, "no documents in the file"));
    }
    Ok(out)
}
