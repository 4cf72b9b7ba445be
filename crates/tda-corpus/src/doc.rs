//! Documents and the references that point back to their exact source record.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// File format of one corpus file, detected from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line (`.jsonl`, `.ndjson`, `.json`).
    Jsonl,
    /// Plain UTF-8 text (`.txt`): one document per line or per file (see [`crate::TextMode`]).
    Text,
    /// Apache Parquet (`.parquet`), read row group by row group through arrow.
    Parquet,
}

impl Format {
    /// Format of a path from its extension, `None` when unknown.
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            "txt" | "text" => Some(Format::Text),
            "parquet" | "pq" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// Locates the exact record a document came from.
///
/// Invariants, per format:
/// - `Jsonl`: `row` is the 0-based line number; `byte_offset..byte_offset+byte_len` are the
///   exact bytes of that line in the file (without the `\n` / `\r\n` terminator).
/// - `Text`: `row` is the 0-based line number (line mode) or 0 (file mode);
///   `byte_offset..byte_offset+byte_len` are the exact bytes of the document text.
/// - `Parquet`: `row` is the 0-based row number in the file (across row groups); `byte_offset`
///   is 0 and `byte_len` is the byte length of the text value in that row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceRef {
    /// Absolute path of the corpus file.
    pub path: PathBuf,
    pub format: Format,
    pub row: u64,
    pub byte_offset: u64,
    pub byte_len: u64,
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.format {
            Format::Parquet => write!(f, "{} row {}", self.path.display(), self.row),
            _ => write!(
                f,
                "{} line {} bytes {}..{}",
                self.path.display(),
                self.row + 1,
                self.byte_offset,
                self.byte_offset + self.byte_len
            ),
        }
    }
}

/// One corpus document.
///
/// `id` is the id given in the record (jsonl `id` field / parquet id column) when present,
/// otherwise made by [`crate::ReadOptions::default_id`]: by default `<file>:<row>` where `<file>`
/// is the path relative to the corpus root (the file name for a single-file corpus) and `<row>`
/// is `source.row` (for text in file mode just `<file>`); with [`crate::DefaultId::Ordinal`] the
/// document's 1-based position in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub id: String,
    /// The record's title (field / column [`crate::ReadOptions::title_column`]) when that option
    /// is set and the value is a string; `None` otherwise (absent, null, text files).
    pub title: Option<String>,
    pub text: String,
    pub source: SourceRef,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn format_detection() {
        assert_eq!(
            Format::from_path(Path::new("a/b.JSONL")),
            Some(Format::Jsonl)
        );
        assert_eq!(
            Format::from_path(Path::new("x.parquet")),
            Some(Format::Parquet)
        );
        assert_eq!(Format::from_path(Path::new("x.txt")), Some(Format::Text));
        assert_eq!(Format::from_path(Path::new("x.csv")), None);
    }
}
