//! Streaming corpus readers: jsonl, plain text and parquet, single files, lists, or directories.
//!
//! Invariants:
//! - Memory is bounded: at most one line (≤ `max_doc_bytes`, longer lines are skipped without being
//!   buffered), one text file (≤ `max_doc_bytes`), or one arrow batch (`parquet_batch_rows` rows) is
//!   held at a time.
//! - Files are read in a deterministic order (as listed; directories sorted by relative path).
//! - A bad record (empty, non-UTF-8, unparsable JSON, missing or null text, too large) is skipped
//!   and counted in [`ReadStats`] — or is an error in strict mode. A file that cannot be read at all
//!   (unreadable, truncated or corrupt parquet, missing text column) is always an error.
//!
//! Layout: `options` (what to read), `spec` (which files, in which order), `reader` (the streaming
//! pass), one module per format (`jsonl`, `text`, `parquet`, with `lines` for the line-oriented
//! ones), `record` (a document or a counted skip), and `fetch` (random access back to given
//! records). Dependencies point one way: `fetch` → `reader` → formats → `record`/`spec`/`options`.

mod fetch;
mod jsonl;
mod lines;
mod options;
mod parquet;
mod reader;
mod record;
mod spec;
mod text;

pub use fetch::{fetch_by_ids, fetch_documents, read_record_bytes};
pub use options::{DefaultId, ReadOptions, TextMode};
pub use reader::{open_corpus, CorpusReader, ReadStats};
pub use record::{SkipCounts, SkipReason};
pub use spec::{CorpusFile, CorpusSpec};
