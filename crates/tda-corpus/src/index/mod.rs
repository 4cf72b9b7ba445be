//! The tantivy prefilter index: build, add, open, check against a corpus, and search.
//!
//! Layout and invariants:
//! - One tantivy index per folder. The `body` field is indexed with term frequencies and field
//!   norms only (no positions, not stored); per document the index keeps, as fast fields, the
//!   document id (`doc_id`), its [`SourceRef`](crate::SourceRef) (`file` = index into
//!   [`IndexInfo::files`], `row`, `offset`, `len`) and the byte span of the indexed text in the
//!   document (`span_start`, `span_end`: the whole text, or one passage when
//!   [`IndexOptions::passages`] is set).
//! - [`IndexInfo`] (analyzer settings, read options, file fingerprints, counts) is the tantivy
//!   commit payload, so it is written atomically with the documents it describes.
//! - `build` writes into a temporary folder beside the target and renames it into place only
//!   after a successful commit: a failed build leaves no index (and an old one untouched).
//!   `add` commits once at the end or rolls back: a failed add leaves the index as it was.
//!
//! Layout (dependencies point one way, towards `schema`): `schema` (what is stored), `open` (the
//! [`CorpusIndex`] handle), `build` (build / add), `check` (corpus ↔ index fingerprints), `query`
//! (query analysis and result types), `score` (the two scoring engines), `resolve` (addresses →
//! hits), `search` (ties them together and reads documents back).

mod build;
mod check;
mod open;
mod query;
mod resolve;
mod schema;
mod score;
mod search;

pub use build::{BuildSummary, IndexOptions, Progress};
pub use open::CorpusIndex;
pub use query::{bm25_idf, Hit, QueryOptions, QueryTerm, Ranking, SearchResult};
pub use schema::{AnalyzerSettings, IndexInfo, IndexedFile, Passages, INDEX_FORMAT_VERSION};
