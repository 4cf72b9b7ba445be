//! Reader options: which fields hold the text and the id, how text files are cut, size limits.

use serde::{Deserialize, Serialize};

/// How plain-text files are cut into documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TextMode {
    /// One document per line.
    #[default]
    Line,
    /// One document per file.
    File,
}

/// Options of the readers. `Default` gives the Hugging Face layout: text in `text`, id in `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOptions {
    /// Field (jsonl) or column (parquet) holding the text.
    pub text_column: String,
    /// Field / column holding the id; when absent in a record, the id is `<file>:<row>`.
    pub id_column: Option<String>,
    /// How `.txt` files are cut into documents.
    pub text_mode: TextMode,
    /// Documents (lines, text files, parquet values) larger than this are skipped and counted.
    pub max_doc_bytes: usize,
    /// Rows per arrow batch when reading parquet.
    pub parquet_batch_rows: usize,
    /// Turn every skipped record into an error.
    pub strict: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            text_column: "text".into(),
            id_column: Some("id".into()),
            text_mode: TextMode::Line,
            max_doc_bytes: 64 << 20,
            parquet_batch_rows: 1024,
            strict: false,
        }
    }
}
