//! What an index stores: the tantivy schema and its fields, the analyzer settings, and the build
//! information ([`IndexInfo`]) kept as the commit payload.

use crate::doc::Format;
use crate::error::{CorpusError, Result};
use crate::fingerprint::FileFingerprint;
use crate::read::{ReadOptions, SkipCounts};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, FAST,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};

/// Version of the index layout; an index of another version is refused.
pub const INDEX_FORMAT_VERSION: u32 = 1;
pub(super) const TOKENIZER: &str = "tda_body";

/// How text is cut into index terms. Stored in the index and reused for queries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalyzerSettings {
    /// Split on non-alphanumeric chars (tantivy `SimpleTokenizer`), then lowercase (always).
    /// Tokens longer than this many bytes are dropped.
    pub max_token_bytes: usize,
    /// Remove English stop-words (tantivy's list).
    pub stopwords: bool,
    /// English Snowball stemming.
    pub stemming: bool,
}

impl Default for AnalyzerSettings {
    fn default() -> Self {
        AnalyzerSettings {
            max_token_bytes: 40,
            stopwords: true,
            stemming: false,
        }
    }
}

impl AnalyzerSettings {
    /// The tantivy analyzer for these settings.
    pub fn analyzer(&self) -> TextAnalyzer {
        let b = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(self.max_token_bytes.max(1)))
            .filter(LowerCaser)
            .dynamic();
        let b = if self.stopwords {
            b.filter_dynamic(StopWordFilter::new(Language::English).expect("english stop words"))
        } else {
            b
        };
        let b = if self.stemming {
            b.filter_dynamic(Stemmer::new(Language::English))
        } else {
            b
        };
        b.build()
    }

    /// The terms of `text`, in order.
    pub fn terms(&self, text: &str) -> Vec<String> {
        let mut a = self.analyzer();
        let mut ts = a.token_stream(text);
        let mut out = Vec::new();
        while ts.advance() {
            out.push(ts.token().text.clone());
        }
        out
    }
}

/// Index long documents as overlapping passages of `words` whitespace-separated words starting
/// every `stride` words (the prefilter then ranks passages, close to the model's sequences, instead
/// of whole documents). Each passage is an index entry with its byte span in the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passages {
    pub words: usize,
    pub stride: usize,
}

/// A corpus file as recorded in the index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedFile {
    /// Path relative to its corpus root (file name for a single file).
    pub rel: String,
    /// Absolute path when indexed; [`SourceRef::path`] of its documents.
    pub path: PathBuf,
    pub format: Format,
    pub fingerprint: FileFingerprint,
    pub docs: u64,
}

/// Everything the index knows about how it was built (the commit payload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexInfo {
    pub format_version: u32,
    pub analyzer: AnalyzerSettings,
    pub read: ReadOptions,
    pub files: Vec<IndexedFile>,
    pub docs: u64,
    pub text_bytes: u64,
    pub skipped: SkipCounts,
    /// Passage splitting used (also for `add`).
    #[serde(default)]
    pub passages: Option<Passages>,
    /// Index entries: documents, or passages when split.
    #[serde(default)]
    pub entries: u64,
}

#[derive(Clone, Copy)]
pub(super) struct Fields {
    pub(super) body: Field,
    pub(super) doc_id: Field,
    pub(super) file: Field,
    pub(super) row: Field,
    pub(super) offset: Field,
    pub(super) len: Field,
    pub(super) span_start: Field,
    pub(super) span_end: Field,
}

pub(super) fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let body_opts = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqs)
            .set_fieldnorms(true),
    );
    let num = || NumericOptions::default().set_fast();
    let fields = Fields {
        body: b.add_text_field("body", body_opts),
        doc_id: b.add_text_field("doc_id", FAST),
        file: b.add_u64_field("file", num()),
        row: b.add_u64_field("row", num()),
        offset: b.add_u64_field("offset", num()),
        len: b.add_u64_field("len", num()),
        span_start: b.add_u64_field("span_start", num()),
        span_end: b.add_u64_field("span_end", num()),
    };
    (b.build(), fields)
}

pub(super) fn fields_of(dir: &Path, schema: &Schema) -> Result<Fields> {
    let get = |name: &str| {
        schema
            .get_field(name)
            .map_err(|_| CorpusError::index(dir, format!("not a tda index (no field '{name}')")))
    };
    Ok(Fields {
        body: get("body")?,
        doc_id: get("doc_id")?,
        file: get("file")?,
        row: get("row")?,
        offset: get("offset")?,
        len: get("len")?,
        span_start: get("span_start")?,
        span_end: get("span_end")?,
    })
}
