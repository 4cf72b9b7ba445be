//! Corpus ingestion and the TF-IDF / BM25 prefilter of `tda`.
//!
//! - [`open_corpus`]: stream [`Document`]s from jsonl, text or parquet (file, list, or directory),
//!   each with a [`SourceRef`] back to its exact record; bad records are skipped and counted.
//! - [`windows`]: cut a document into model-length token windows with exact text spans,
//!   given any tokenizer as a closure.
//! - [`CorpusIndex`]: a tantivy index of the corpus; [`CorpusIndex::search`] returns the top-K
//!   candidates (BM25 or classic TF-IDF) that `tda trace` scores with influence functions.

pub mod doc;
pub mod error;
pub mod fingerprint;
#[cfg(feature = "index")]
pub mod index;
pub mod read;
pub mod window;

pub use doc::{Document, Format, SourceRef};
pub use error::{CorpusError, Result};
pub use fingerprint::{fingerprint_file, FileFingerprint};
#[cfg(feature = "index")]
pub use index::{
    bm25_idf, AnalyzerSettings, BuildSummary, CorpusIndex, Hit, IndexInfo, IndexOptions,
    IndexedFile, Passages, Progress, QueryOptions, QueryTerm, Ranking, SearchResult,
};
pub use read::{
    fetch_by_ids, fetch_documents, open_corpus, read_record_bytes, CorpusFile, CorpusReader,
    CorpusSpec, DefaultId, ReadOptions, ReadStats, SkipCounts, SkipReason, TextMode,
};
pub use window::{passage_spans, windows, EncodeFn, Window};

/// Default folder for the index of a corpus: `indexes/<corpus file stem or folder name>`.
pub fn default_index_dir(corpus: &std::path::Path) -> std::path::PathBuf {
    let name = corpus
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty() && s != "." && s != "..")
        .unwrap_or_else(|| "corpus".into());
    std::path::Path::new("indexes").join(name)
}
