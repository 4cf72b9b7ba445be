//! Corpus ingestion and the TF-IDF / BM25 prefilter of `tda`: the one crate that reads corpus
//! files.
//!
//! **Job.** Turn corpus files into [`Document`]s that know exactly where they came from, cut them
//! into model-length windows, and index them so that `tda trace` scores only the top-K candidates
//! with influence functions.
//!
//! **Inputs.** Corpus paths — a `.jsonl` / `.json` / `.ndjson`, `.txt` or `.parquet` file, a
//! list of files, or folders of such shards — read with [`ReadOptions`] (text / id / title field
//! or column, how ids are made when absent, how text files are cut, size limits, strict mode); a
//! tokenizer as a closure for [`windows`]; query text for [`CorpusIndex::search`].
//!
//! **Outputs.**
//! - [`open_corpus`]: a stream of [`Document`]s (bad records skipped and counted);
//!   [`fetch_documents`] / [`fetch_by_ids`] / [`read_record_bytes`] re-read given records.
//! - [`windows`]: token windows of a document with exact text spans.
//! - [`CorpusIndex`]: a tantivy index folder ([`CorpusIndex::build`], [`CorpusIndex::add`]);
//!   [`CorpusIndex::search`] returns the top-K [`Hit`]s (BM25 or classic TF-IDF) and
//!   [`CorpusIndex::candidates`] their documents.
//!
//! **Invariants a caller can rely on.**
//! - *Stable ids.* A document's id is the record's own id, else a deterministic default
//!   ([`DefaultId`]: `<file>:<row>`, or the 1-based ordinal in the stream). Files are read in a
//!   deterministic order (as listed; folders sorted by relative path), so the same corpus and
//!   options give the same ids; an index stores the ids it was built with and returns them.
//! - *Exact provenance.* A [`SourceRef`] points back to the exact bytes of the record (the jsonl
//!   line or text span by byte range, the parquet row); [`read_record_bytes`] and
//!   [`fetch_documents`] read exactly that record again.
//! - *Skip accounting.* A bad record (empty, non-UTF-8, not JSON, missing text, too large) is
//!   skipped and counted by reason in [`ReadStats`] / [`SkipCounts`], or is an error in strict
//!   mode; a file that cannot be read at all is always an error. Nothing is dropped silently.
//! - *Index fingerprint check.* An index records each file's fingerprint:
//!   [`CorpusIndex::check_corpus`] refuses a corpus with changed, missing or extra files, and
//!   [`CorpusIndex::add`] refuses a changed file.
//! - *Atomic index builds.* `build` fills a hidden `tda_io` temporary folder beside the target and
//!   swaps it in only after a successful commit (a failed build leaves no index, an old one
//!   intact); `add` commits once or rolls back. Corpus walking skips hidden entries (so tda-io
//!   temporaries) and index folders.
//! - Reading holds at most one line, one text file or one parquet batch in memory; every error is
//!   one line naming the file.
//!
//! Layout: [`doc`] (documents, sources), [`read`] (options, walking, the three formats, the
//! stream, random access), [`window`], [`index`] (schema, build, check, query, scoring, search),
//! [`fingerprint`], [`error`].

pub mod doc;
pub mod error;
pub mod fingerprint;
#[cfg(feature = "index")]
pub mod index;
pub mod read;
pub mod window;

pub use doc::{Document, Format, SourceRef};
pub use error::{CorpusError, Result};
pub use fingerprint::{fingerprint_file, FileFingerprint, Fnv};
#[cfg(feature = "index")]
pub use index::{
    bm25_idf, AnalyzerSettings, BuildSummary, CorpusIndex, Hit, IndexInfo, IndexOptions,
    IndexedFile, Passages, Progress, QueryOptions, QueryTerm, Ranking, SearchResult,
};
pub use read::{
    fetch_by_ids, fetch_documents, open_corpus, read_record_bytes, CorpusFile, CorpusReader,
    CorpusSpec, DefaultId, ReadOptions, ReadStats, SkipCounts, SkipReason, TextMode,
};
pub use window::{passage_spans, windows, EncodeFn, Encoded, Window};

/// Default folder for the index of a corpus: `indexes/<corpus file stem or folder name>`.
pub fn default_index_dir(corpus: &std::path::Path) -> std::path::PathBuf {
    let name = corpus
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty() && s != "." && s != "..")
        .unwrap_or_else(|| "corpus".into());
    std::path::Path::new("indexes").join(name)
}
