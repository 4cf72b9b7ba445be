//! Reader options: which fields hold the text, id and title, how documents without an id are
//! named, how text files are cut, size limits.

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

/// The id of a document that has none of its own: no `id_column`, or the record lacks the field
/// (or it is null / not a string or number), or a text file (which has no fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DefaultId {
    /// `<file>:<row>`: `<file>` is the path relative to the corpus root (the file name for a
    /// single file), `<row>` is [`crate::SourceRef::row`]; for text in file mode just `<file>`.
    /// Names the record, so it is the same however the corpus is read (stream, fetch, index).
    #[default]
    FileRow,
    /// The 1-based position of the document among the documents the reader yields, as a string
    /// (`"1"`, `"2"`, …): counted over all files of the corpus in order, skipped records take no
    /// number, documents with their own id still take theirs. It depends on the whole stream, so
    /// [`crate::fetch_documents`] cannot recompute it for a single record and refuses (an error)
    /// a record that would need it. An index stores the ids it was built with (each
    /// `CorpusIndex::add` numbers its new documents from 1 again).
    Ordinal,
}

/// Options of the readers. `Default` gives the Hugging Face layout: text in `text`, id in `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOptions {
    /// Field (jsonl) or column (parquet) holding the text.
    pub text_column: String,
    /// Field / column holding the id; when absent in a record, the id is made by `default_id`.
    pub id_column: Option<String>,
    /// Field (jsonl) / column (parquet) holding a title, read into [`crate::Document::title`]; a
    /// string value gives `Some`, anything else (absent field or column, null, a number…) `None`.
    /// `None` (default): no title is read. Text files never have one.
    #[serde(default)]
    pub title_column: Option<String>,
    /// How the id of a document without one of its own is made.
    #[serde(default)]
    pub default_id: DefaultId,
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
            title_column: None,
            default_id: DefaultId::FileRow,
            text_mode: TextMode::Line,
            max_doc_bytes: 64 << 20,
            parquet_batch_rows: 1024,
            strict: false,
        }
    }
}
