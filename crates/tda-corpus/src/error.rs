//! The one error type of the crate.
//!
//! Invariant: every `Display` is a single line that names the file (or index folder) and what is
//! wrong, so the CLI can print it as is.

use std::path::{Path, PathBuf};

/// Errors from reading a corpus, windowing, or building / querying an index.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{}: {}", .path.display(), one_line(.source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A write through `tda-io`; its message already names the file or folder.
    #[error("{0}")]
    Write(std::io::Error),
    #[error("{}: unsupported corpus format (expected .jsonl, .json, .ndjson, .txt, .parquet or a directory of them)", .path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{}: no corpus files found (.jsonl, .json, .ndjson, .txt, .parquet)", .path.display())]
    NoFiles { path: PathBuf },
    #[error("{}: not a readable parquet file: {}", .path.display(), .msg)]
    Parquet { path: PathBuf, msg: String },
    #[error("{}: column '{}' not found (columns: {})", .path.display(), .column, .available)]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    #[error("{}: column '{}' has type {}, expected a string or binary column", .path.display(), .column, .dtype)]
    ColumnType {
        path: PathBuf,
        column: String,
        dtype: String,
    },
    /// A bad record in strict mode (in lenient mode it is skipped and counted instead). `record`
    /// is 0-based; the message says `line N` (1-based) for jsonl and text, `row N` for parquet.
    #[error("{}: {}: {}", .path.display(), record_place(.path, *.record), .msg)]
    BadRecord {
        path: PathBuf,
        record: u64,
        /// Why the record is bad, when it is a record that lenient mode would skip.
        reason: Option<crate::SkipReason>,
        msg: String,
    },
    #[error("{}: {}", .path.display(), .msg)]
    Index { path: PathBuf, msg: String },
    #[error("index {} does not match corpus {}: {}", .index.display(), .corpus.display(), .msg)]
    IndexMismatch {
        index: PathBuf,
        corpus: PathBuf,
        msg: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl CorpusError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        CorpusError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn parquet(path: &Path, e: impl std::fmt::Display) -> Self {
        CorpusError::Parquet {
            path: path.to_path_buf(),
            msg: one_line(&e),
        }
    }
    pub(crate) fn index(path: &Path, e: impl std::fmt::Display) -> Self {
        CorpusError::Index {
            path: path.to_path_buf(),
            msg: one_line(&e),
        }
    }
}

/// Collapse any multi-line message to one line.
pub(crate) fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub type Result<T, E = CorpusError> = std::result::Result<T, E>;

/// Where a record is, as a person looks for it: `line N` (1-based) in a text or jsonl file,
/// `row N` (0-based, as parquet tools show) in a parquet file.
fn record_place(path: &std::path::Path, record: u64) -> String {
    if crate::Format::from_path(path) == Some(crate::Format::Parquet) {
        format!("row {record}")
    } else {
        format!("line {}", record + 1)
    }
}
