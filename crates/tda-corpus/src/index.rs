//! The tantivy prefilter index: build, add, open, check against a corpus, and search.
//!
//! Layout and invariants:
//! - One tantivy index per folder. The `body` field is indexed with term frequencies and field
//!   norms only (no positions, not stored); per document the index keeps, as fast fields, the
//!   document id (`doc_id`), its [`SourceRef`] (`file` = index into [`IndexInfo::files`], `row`,
//!   `offset`, `len`) and the byte span of the indexed text in the document (`span_start`,
//!   `span_end`: the whole text, or one passage when [`IndexOptions::passages`] is set).
//! - [`IndexInfo`] (analyzer settings, read options, file fingerprints, counts) is the tantivy
//!   commit payload, so it is written atomically with the documents it describes.
//! - `build` writes into a temporary folder beside the target and renames it into place only
//!   after a successful commit: a failed build leaves no index (and an old one untouched).
//!   `add` commits once at the end or rolls back: a failed add leaves the index as it was.

use crate::doc::{Document, Format, SourceRef};
use crate::error::{one_line, CorpusError, Result};
use crate::fingerprint::{fingerprint_file, FileFingerprint};
use crate::read::{fetch_documents, CorpusFile, CorpusReader, CorpusSpec, ReadOptions, SkipCounts};
use crate::window::passage_spans;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tantivy::collector::TopDocs;
use tantivy::indexer::IndexWriterOptions;
use tantivy::postings::Postings;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, FAST,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{
    DocAddress, DocSet, Index, IndexReader, IndexWriter, TantivyDocument, Term, TERMINATED,
};

/// Version of the index layout; an index of another version is refused.
pub const INDEX_FORMAT_VERSION: u32 = 1;
const TOKENIZER: &str = "tda_body";

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

/// Options of [`CorpusIndex::build`].
#[derive(Clone, Debug)]
pub struct IndexOptions {
    pub analyzer: AnalyzerSettings,
    pub read: ReadOptions,
    /// Indexing threads (tantivy workers).
    pub threads: usize,
    /// Total indexing memory budget in bytes (split over threads, ≥ 15 MB each). Bounds RSS.
    pub memory_budget: usize,
    /// Merge all segments into one after the build (faster queries, slower build).
    pub merge: bool,
    /// Replace an existing index at the target folder.
    pub overwrite: bool,
    /// Split long documents into passages (`None`: one entry per document).
    pub passages: Option<Passages>,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            analyzer: AnalyzerSettings::default(),
            read: ReadOptions::default(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
            memory_budget: 256 << 20,
            merge: true,
            overwrite: false,
            passages: None,
        }
    }
}

/// Whether to draw a progress bar on stderr while indexing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Hidden,
    Bar,
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

/// What one build or add did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BuildSummary {
    pub files_indexed: usize,
    /// Files already in the index with the same fingerprint (add only).
    pub files_unchanged: usize,
    pub docs: u64,
    /// Index entries written (= docs unless passages are used).
    pub entries: u64,
    pub text_bytes: u64,
    pub file_bytes: u64,
    pub skipped: SkipCounts,
    pub seconds: f64,
}

impl BuildSummary {
    pub fn docs_per_s(&self) -> f64 {
        self.docs as f64 / self.seconds.max(1e-9)
    }
    /// Corpus file bytes read per second, in MB (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.file_bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

impl std::fmt::Display for BuildSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "indexed {} docs ({:.1} MB of text) from {} files in {:.1} s: {:.0} docs/s, {:.1} MB/s; {}",
            self.docs,
            self.text_bytes as f64 / 1e6,
            self.files_indexed,
            self.seconds,
            self.docs_per_s(),
            self.mb_per_s(),
            self.skipped
        )?;
        if self.files_unchanged > 0 {
            write!(f, "; {} files already indexed", self.files_unchanged)?;
        }
        Ok(())
    }
}

/// Ranking function of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ranking {
    /// tantivy's Okapi BM25 (k1 = 1.2, b = 0.75, idf = ln(1 + (N − n + 0.5)/(n + 0.5)),
    /// quantised field norms), evaluated by tantivy; a query term's weight is its count in the query.
    #[default]
    Bm25,
    /// Classic vector-space TF-IDF (Lucene `ClassicSimilarity`, i.e. cosine without the constant
    /// query norm): `Σ_t qtf(t) · √tf(t,d) · idf(t)² / √len(d)`, `idf = 1 + ln((N+1)/(n+1))`,
    /// `len(d)` = tantivy's quantised field norm. Evaluated term-at-a-time on tantivy's postings.
    TfIdf,
}

/// Query-side options. Long queries are pruned to the `max_terms` distinct terms of highest
/// `qtf · idf` (the MoreLikeThis rule, but keeping terms seen once).
#[derive(Clone, Debug)]
pub struct QueryOptions {
    pub ranking: Ranking,
    /// Cap on distinct query terms; `None` keeps all.
    pub max_terms: Option<usize>,
    /// Drop terms found in more than this fraction of the documents (`None`: keep all).
    pub max_doc_freq_ratio: Option<f64>,
    /// Evaluate BM25 with tantivy's own `BooleanQuery` (document-at-a-time, block-max WAND)
    /// instead of the term-at-a-time scorer; same scores, slower for large k. For cross-checks.
    pub tantivy_engine: bool,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            ranking: Ranking::Bm25,
            max_terms: Some(64),
            max_doc_freq_ratio: None,
            tantivy_engine: false,
        }
    }
}

/// A query term and how it was weighted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueryTerm {
    pub term: String,
    /// Occurrences in the query (its weight in the score).
    pub qtf: u32,
    /// Documents containing it.
    pub doc_freq: u64,
    /// Pruning score `qtf · idf_bm25`.
    pub selection_score: f64,
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    pub doc_id: String,
    pub score: f32,
    pub source: SourceRef,
    /// Byte span `[start, end)` of the scored text in the document's text: the whole text, or
    /// the passage when the index splits documents.
    pub span: (usize, usize),
}

impl Hit {
    /// The scored text within `doc` (the document this hit points to).
    pub fn text<'a>(&self, doc: &'a Document) -> &'a str {
        doc.text.get(self.span.0..self.span.1).unwrap_or("")
    }
}

/// Hits plus how the query was analysed.
#[derive(Clone, Debug, Serialize)]
pub struct SearchResult {
    pub hits: Vec<Hit>,
    /// Terms used, by decreasing selection score.
    pub terms: Vec<QueryTerm>,
    /// Distinct query terms dropped (absent from the index, too frequent, or over the cap).
    pub dropped_terms: usize,
}

#[derive(Clone, Copy)]
struct Fields {
    body: Field,
    doc_id: Field,
    file: Field,
    row: Field,
    offset: Field,
    len: Field,
    span_start: Field,
    span_end: Field,
}

fn schema() -> (Schema, Fields) {
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

fn fields_of(dir: &Path, schema: &Schema) -> Result<Fields> {
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

/// An opened prefilter index.
pub struct CorpusIndex {
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    fields: Fields,
    info: IndexInfo,
}

impl CorpusIndex {
    /// Build a new index of the corpus at `corpus` (file or directory) into `dir`.
    pub fn build(
        corpus: &Path,
        dir: &Path,
        opts: &IndexOptions,
        progress: Progress,
    ) -> Result<(CorpusIndex, BuildSummary)> {
        Self::build_many(&[corpus.to_path_buf()], dir, opts, progress)
    }

    /// Build from several corpus paths (files or directories), concatenated.
    pub fn build_many(
        corpus: &[PathBuf],
        dir: &Path,
        opts: &IndexOptions,
        progress: Progress,
    ) -> Result<(CorpusIndex, BuildSummary)> {
        let spec = CorpusSpec::resolve_many(corpus)?;
        if dir.exists() && !opts.overwrite {
            return Err(CorpusError::index(
                dir,
                "already exists (rebuild with --overwrite, or --add new files)",
            ));
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| CorpusError::io(&parent, e))?;
        let name = dir
            .file_name()
            .ok_or_else(|| {
                CorpusError::InvalidArgument(format!("bad index folder {}", dir.display()))
            })?
            .to_string_lossy()
            .into_owned();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = parent.join(format!(".{name}.tmp-{}-{stamp}", std::process::id()));
        let guard = RemoveOnDrop(Some(tmp.clone()));
        std::fs::create_dir(&tmp).map_err(|e| CorpusError::io(&tmp, e))?;

        let (schema, fields) = schema();
        let index = Index::create_in_dir(&tmp, schema).map_err(|e| CorpusError::index(&tmp, e))?;
        index
            .tokenizers()
            .register(TOKENIZER, opts.analyzer.analyzer());
        let mut info = IndexInfo {
            format_version: INDEX_FORMAT_VERSION,
            analyzer: opts.analyzer.clone(),
            read: opts.read.clone(),
            files: Vec::new(),
            docs: 0,
            text_bytes: 0,
            skipped: SkipCounts::default(),
            passages: opts.passages,
            entries: 0,
        };
        let summary = ingest(&index, &tmp, fields, &mut info, spec.files, opts, progress)?;
        if info.docs == 0 {
            return Err(CorpusError::index(
                dir,
                format!(
                    "no documents to index in {} ({})",
                    display_paths(corpus),
                    info.skipped
                ),
            ));
        }
        drop(index);
        // Swap into place: the old index (if any) is removed only once the new one is there.
        if dir.exists() {
            let old = parent.join(format!(".{name}.old-{}-{stamp}", std::process::id()));
            std::fs::rename(dir, &old).map_err(|e| CorpusError::io(dir, e))?;
            std::fs::rename(&tmp, dir).map_err(|e| CorpusError::io(dir, e))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&tmp, dir).map_err(|e| CorpusError::io(dir, e))?;
        }
        std::mem::forget(guard);
        Ok((CorpusIndex::open(dir)?, summary))
    }

    /// Open an existing index (read-only until [`CorpusIndex::add`]).
    pub fn open(dir: &Path) -> Result<CorpusIndex> {
        if !dir.join("meta.json").exists() {
            return Err(CorpusError::index(
                dir,
                "no index here (meta.json missing); build it with `tda index`",
            ));
        }
        let index = Index::open_in_dir(dir).map_err(|e| CorpusError::index(dir, e))?;
        let fields = fields_of(dir, &index.schema())?;
        let metas = index.load_metas().map_err(|e| CorpusError::index(dir, e))?;
        let payload = metas.payload.ok_or_else(|| {
            CorpusError::index(dir, "not a tda index (no build information in meta.json)")
        })?;
        let info: IndexInfo = serde_json::from_str(&payload)
            .map_err(|e| CorpusError::index(dir, format!("unreadable build information: {e}")))?;
        if info.format_version != INDEX_FORMAT_VERSION {
            return Err(CorpusError::index(
                dir,
                format!(
                    "index format {} but this tda reads format {INDEX_FORMAT_VERSION}; rebuild it",
                    info.format_version
                ),
            ));
        }
        index
            .tokenizers()
            .register(TOKENIZER, info.analyzer.analyzer());
        let reader = index.reader().map_err(|e| CorpusError::index(dir, e))?;
        Ok(CorpusIndex {
            dir: dir.to_path_buf(),
            index,
            reader,
            fields,
            info,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn info(&self) -> &IndexInfo {
        &self.info
    }
    /// Number of documents in the index.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Add the files of `corpus` not yet in the index. A file already indexed (same absolute path)
    /// is skipped when its fingerprint is unchanged and is an error when it changed (rebuild).
    /// Read options and analyzer are those stored in the index.
    pub fn add(
        &mut self,
        corpus: &[PathBuf],
        progress: Progress,
        threads: usize,
        memory_budget: usize,
    ) -> Result<BuildSummary> {
        let spec = CorpusSpec::resolve_many(corpus)?;
        let known: HashMap<&Path, &IndexedFile> = self
            .info
            .files
            .iter()
            .map(|f| (f.path.as_path(), f))
            .collect();
        let mut new_files = Vec::new();
        let mut unchanged = 0;
        for f in spec.files {
            match known.get(f.path.as_path()) {
                Some(old) => {
                    let fp = fingerprint_file(&f.path)?;
                    if fp != old.fingerprint {
                        return Err(CorpusError::IndexMismatch {
                            index: self.dir.clone(),
                            corpus: f.path.clone(),
                            msg: "file changed since it was indexed; rebuild the index".into(),
                        });
                    }
                    unchanged += 1;
                }
                None => new_files.push(f),
            }
        }
        let opts = IndexOptions {
            analyzer: self.info.analyzer.clone(),
            read: self.info.read.clone(),
            threads,
            memory_budget,
            merge: false,
            overwrite: false,
            passages: self.info.passages,
        };
        let mut info = self.info.clone();
        let mut summary = if new_files.is_empty() {
            BuildSummary::default()
        } else {
            ingest(
                &self.index,
                &self.dir,
                self.fields,
                &mut info,
                new_files,
                &opts,
                progress,
            )?
        };
        summary.files_unchanged = unchanged;
        self.info = info;
        self.reader
            .reload()
            .map_err(|e| CorpusError::index(&self.dir, e))?;
        Ok(summary)
    }

    /// Check that the corpus at `corpus` is exactly what this index was built from: same files
    /// (matched by path relative to the corpus root, so a moved corpus still matches) with the
    /// same fingerprints. One-line error naming the first difference otherwise.
    pub fn check_corpus(&self, corpus: &Path) -> Result<()> {
        self.check_corpus_many(&[corpus.to_path_buf()])
    }

    pub fn check_corpus_many(&self, corpus: &[PathBuf]) -> Result<()> {
        let spec = CorpusSpec::resolve_many(corpus)?;
        let mismatch = |msg: String| CorpusError::IndexMismatch {
            index: self.dir.clone(),
            corpus: PathBuf::from(display_paths(corpus)),
            msg,
        };
        let mut indexed: HashMap<&str, Vec<&IndexedFile>> = HashMap::new();
        for f in &self.info.files {
            indexed.entry(f.rel.as_str()).or_default().push(f);
        }
        let mut not_indexed = Vec::new();
        for f in &spec.files {
            let fp = fingerprint_file(&f.path)?;
            let candidates = indexed.get_mut(f.rel.as_str());
            let pos = candidates
                .as_ref()
                .and_then(|c| c.iter().position(|x| x.fingerprint == fp));
            match (candidates, pos) {
                (Some(c), Some(i)) => {
                    c.swap_remove(i);
                }
                (Some(c), None) if !c.is_empty() => {
                    return Err(mismatch(format!(
                        "{} changed since indexing (size {} -> {} bytes or content differs); rebuild the index",
                        f.rel, c[0].fingerprint.size, fp.size
                    )))
                }
                _ => not_indexed.push(f.rel.clone()),
            }
        }
        if !not_indexed.is_empty() {
            return Err(mismatch(format!(
                "{} corpus files are not in the index (first: {}); build it from this corpus or add them",
                not_indexed.len(),
                not_indexed[0]
            )));
        }
        let extra: Vec<&str> = indexed.values().flatten().map(|f| f.rel.as_str()).collect();
        if !extra.is_empty() {
            return Err(mismatch(format!(
                "the index has {} files that are not in this corpus (first: {})",
                extra.len(),
                extra[0]
            )));
        }
        Ok(())
    }

    /// Top-`k` documents for `query` with default [`QueryOptions`] (64-term cap).
    pub fn search(&self, query: &str, k: usize, ranking: Ranking) -> Result<Vec<Hit>> {
        Ok(self
            .search_with(
                query,
                k,
                &QueryOptions {
                    ranking,
                    ..Default::default()
                },
            )?
            .hits)
    }

    /// Analyse and prune the query into weighted terms (see [`QueryOptions`]).
    pub fn query_terms(&self, query: &str, opts: &QueryOptions) -> Result<(Vec<QueryTerm>, usize)> {
        let searcher = self.reader.searcher();
        let n = searcher.num_docs();
        let mut counts: HashMap<String, u32> = HashMap::new();
        for t in self.info.analyzer.terms(query) {
            *counts.entry(t).or_default() += 1;
        }
        let distinct = counts.len();
        let mut terms = Vec::with_capacity(distinct);
        for (term, qtf) in counts {
            let df = searcher
                .doc_freq(&Term::from_field_text(self.fields.body, &term))
                .map_err(|e| CorpusError::index(&self.dir, e))?;
            if df == 0 {
                continue;
            }
            if let Some(r) = opts.max_doc_freq_ratio {
                if df as f64 > r * n as f64 {
                    continue;
                }
            }
            let idf = bm25_idf(df, n.max(df));
            terms.push(QueryTerm {
                term,
                qtf,
                doc_freq: df,
                selection_score: qtf as f64 * idf,
            });
        }
        terms.sort_by(|a, b| {
            b.selection_score
                .total_cmp(&a.selection_score)
                .then_with(|| a.term.cmp(&b.term))
        });
        if let Some(m) = opts.max_terms {
            terms.truncate(m);
        }
        let dropped = distinct - terms.len();
        Ok((terms, dropped))
    }

    /// Top-`k` documents for `query`, best first; ties broken by insertion order.
    pub fn search_with(&self, query: &str, k: usize, opts: &QueryOptions) -> Result<SearchResult> {
        let (terms, dropped_terms) = self.query_terms(query, opts)?;
        if k == 0 || terms.is_empty() {
            return Ok(SearchResult {
                hits: Vec::new(),
                terms,
                dropped_terms,
            });
        }
        let searcher = self.reader.searcher();
        let k = k.min(searcher.num_docs() as usize);
        if k == 0 {
            return Ok(SearchResult {
                hits: Vec::new(),
                terms,
                dropped_terms,
            });
        }
        let mut top: Vec<(f32, DocAddress)> = match opts.ranking {
            Ranking::Bm25 if opts.tantivy_engine => {
                let clauses: Vec<(Occur, Box<dyn Query>)> = terms
                    .iter()
                    .map(|t| {
                        let tq: Box<dyn Query> = Box::new(TermQuery::new(
                            Term::from_field_text(self.fields.body, &t.term),
                            IndexRecordOption::WithFreqs,
                        ));
                        let q: Box<dyn Query> = if t.qtf == 1 {
                            tq
                        } else {
                            Box::new(BoostQuery::new(tq, t.qtf as f32))
                        };
                        (Occur::Should, q)
                    })
                    .collect();
                searcher
                    .search(
                        &BooleanQuery::new(clauses),
                        &TopDocs::with_limit(k).order_by_score(),
                    )
                    .map_err(|e| CorpusError::index(&self.dir, e))?
            }
            ranking => self.term_at_a_time(&searcher, &terms, k, ranking)?,
        };
        top.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let hits = self.resolve(&searcher, &top)?;
        Ok(SearchResult {
            hits,
            terms,
            dropped_terms,
        })
    }

    /// Term-at-a-time scoring over every segment: a dense per-segment accumulator, one pass over
    /// each query term's postings, then a bounded heap. For top-10,000 with tens of terms this is
    /// several times faster than tantivy's document-at-a-time union (whose WAND pruning helps
    /// little when k is large). BM25 here reproduces tantivy's arithmetic (f32, same constants,
    /// same quantised-length cache, N = Σ max_doc, avgdl = Σ tokens / N).
    fn term_at_a_time(
        &self,
        searcher: &tantivy::Searcher,
        terms: &[QueryTerm],
        k: usize,
        ranking: Ranking,
    ) -> Result<Vec<(f32, DocAddress)>> {
        const K1: f32 = 1.2;
        const B: f32 = 0.75;
        let err = |e: &dyn std::fmt::Display| CorpusError::index(&self.dir, one_line(e));
        let mut total_docs = 0u64;
        let mut total_tokens = 0u64;
        for seg in searcher.segment_readers() {
            total_docs += seg.max_doc() as u64;
            total_tokens += seg
                .inverted_index(self.fields.body)
                .map_err(|e| err(&e))?
                .total_num_tokens();
        }
        let avgdl = total_tokens as f32 / total_docs.max(1) as f32;
        let mut bm25_norm = [0f32; 256];
        for (id, c) in bm25_norm.iter_mut().enumerate() {
            let len = tantivy::fieldnorm::FieldNormReader::id_to_fieldnorm(id as u8) as f32;
            *c = K1 * (1.0 - B + B * len / avgdl);
        }
        let n_alive = searcher.num_docs() as f64;
        let mut heap = TopK::new(k);
        for (seg_ord, seg) in searcher.segment_readers().iter().enumerate() {
            let inv = seg.inverted_index(self.fields.body).map_err(|e| err(&e))?;
            let norms = seg
                .get_fieldnorms_reader(self.fields.body)
                .map_err(|e| err(&e))?;
            let mut acc = vec![0f32; seg.max_doc() as usize];
            for t in terms {
                let term = Term::from_field_text(self.fields.body, &t.term);
                let Some(mut postings) = inv
                    .read_postings(&term, IndexRecordOption::WithFreqs)
                    .map_err(|e| err(&e))?
                else {
                    continue;
                };
                let mut d = postings.doc();
                match ranking {
                    Ranking::Bm25 => {
                        let df = t.doc_freq.min(total_docs);
                        let x = ((total_docs - df) as f32 + 0.5) / (df as f32 + 0.5);
                        let w = (1.0 + x).ln() * (1.0 + K1) * t.qtf as f32;
                        while d != TERMINATED {
                            let tf = postings.term_freq() as f32;
                            let norm = bm25_norm[norms.fieldnorm_id(d) as usize];
                            acc[d as usize] += w * (tf / (tf + norm));
                            d = postings.advance();
                        }
                    }
                    Ranking::TfIdf => {
                        let idf = 1.0 + ((n_alive + 1.0) / (t.doc_freq as f64 + 1.0)).ln();
                        let w = (t.qtf as f64 * idf * idf) as f32;
                        while d != TERMINATED {
                            acc[d as usize] += w * (postings.term_freq() as f32).sqrt();
                            d = postings.advance();
                        }
                    }
                }
            }
            for (d, &a) in acc.iter().enumerate() {
                if a > 0.0 && !seg.is_deleted(d as u32) {
                    let score = match ranking {
                        Ranking::Bm25 => a,
                        Ranking::TfIdf => a / (norms.fieldnorm(d as u32).max(1) as f32).sqrt(),
                    };
                    heap.push(score, DocAddress::new(seg_ord as u32, d as u32));
                }
            }
        }
        Ok(heap.into_vec())
    }

    /// Doc ids and sources of the given documents, from the fast fields. Ids are decoded in
    /// one sorted pass over each segment's id dictionary (random `ord_to_str` costs ~10 µs each).
    fn resolve(&self, searcher: &tantivy::Searcher, top: &[(f32, DocAddress)]) -> Result<Vec<Hit>> {
        let err = |e: &dyn std::fmt::Display| CorpusError::index(&self.dir, one_line(e));
        let mut hits = Vec::with_capacity(top.len());
        // Per segment: (id ordinal, hit index).
        let mut ords: HashMap<u32, Vec<(u64, usize)>> = HashMap::new();
        let mut by_segment: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, &(_, addr)) in top.iter().enumerate() {
            by_segment.entry(addr.segment_ord).or_default().push(i);
        }
        hits.resize_with(top.len(), || None);
        for (&seg, idxs) in &by_segment {
            let ff = searcher.segment_reader(seg).fast_fields();
            let ids = ff
                .str("doc_id")
                .map_err(|e| err(&e))?
                .ok_or_else(|| err(&"doc_id fast field missing"))?;
            let file = ff.u64("file").map_err(|e| err(&e))?;
            let row = ff.u64("row").map_err(|e| err(&e))?;
            let offset = ff.u64("offset").map_err(|e| err(&e))?;
            let len = ff.u64("len").map_err(|e| err(&e))?;
            let span_start = ff.u64("span_start").map_err(|e| err(&e))?;
            let span_end = ff.u64("span_end").map_err(|e| err(&e))?;
            let seg_ords = ords.entry(seg).or_default();
            for &i in idxs {
                let (score, addr) = top[i];
                let d = addr.doc_id;
                if let Some(ord) = ids.term_ords(d).next() {
                    seg_ords.push((ord, i));
                }
                let file_idx = file.first(d).unwrap_or(0) as usize;
                let f =
                    self.info.files.get(file_idx).ok_or_else(|| {
                        err(&format!("document points to unknown file #{file_idx}"))
                    })?;
                hits[i] = Some(Hit {
                    doc_id: String::new(),
                    score,
                    source: SourceRef {
                        path: f.path.clone(),
                        format: f.format,
                        row: row.first(d).unwrap_or(0),
                        byte_offset: offset.first(d).unwrap_or(0),
                        byte_len: len.first(d).unwrap_or(0),
                    },
                    span: (
                        span_start.first(d).unwrap_or(0) as usize,
                        span_end.first(d).unwrap_or(0) as usize,
                    ),
                });
            }
            seg_ords.sort_unstable();
            let sorted: Vec<u64> = seg_ords.iter().map(|x| x.0).collect();
            let mut next = seg_ords.iter().map(|x| x.1);
            ids.dictionary()
                .sorted_ords_to_term_cb(&sorted, |bytes| {
                    if let Some(i) = next.next() {
                        if let Some(h) = hits[i].as_mut() {
                            h.doc_id = String::from_utf8_lossy(bytes).into_owned();
                        }
                    }
                })
                .map_err(|e| err(&e))?;
        }
        Ok(hits.into_iter().flatten().collect())
    }

    /// The prefilter step of `tda trace --index`: the top-`k` hits for `query` with their
    /// documents read back from the corpus (the scored text is `hit.text(&doc)`).
    pub fn candidates(
        &self,
        query: &str,
        k: usize,
        opts: &QueryOptions,
    ) -> Result<Vec<(Hit, Document)>> {
        let hits = self.search_with(query, k, opts)?.hits;
        let docs = self.fetch(&hits)?;
        Ok(hits.into_iter().zip(docs).collect())
    }

    /// Read back the documents of `hits` from the corpus files (ids as stored in the index).
    pub fn fetch(&self, hits: &[Hit]) -> Result<Vec<Document>> {
        let sources: Vec<SourceRef> = hits.iter().map(|h| h.source.clone()).collect();
        let mut docs = fetch_documents(&sources, &self.info.read)?;
        for (d, h) in docs.iter_mut().zip(hits) {
            d.id = h.doc_id.clone();
        }
        Ok(docs)
    }
}

/// tantivy's BM25 idf.
pub fn bm25_idf(df: u64, n: u64) -> f64 {
    (1.0 + (n as f64 - df as f64 + 0.5) / (df as f64 + 0.5)).ln()
}

fn display_paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

struct RemoveOnDrop(Option<PathBuf>);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Bounded min-heap keeping the `k` best (score, address); ties keep the smaller address.
struct TopK {
    k: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(OrdF32, std::cmp::Reverse<DocAddress>)>>,
}

#[derive(PartialEq, Clone, Copy)]
struct OrdF32(f32);
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k,
            heap: Default::default(),
        }
    }
    fn push(&mut self, s: f32, a: DocAddress) {
        let item = std::cmp::Reverse((OrdF32(s), std::cmp::Reverse(a)));
        if self.heap.len() < self.k {
            self.heap.push(item);
        } else if let Some(min) = self.heap.peek() {
            if item < *min {
                self.heap.pop();
                self.heap.push(item);
            }
        }
    }
    fn into_vec(self) -> Vec<(f32, DocAddress)> {
        self.heap
            .into_iter()
            .map(|std::cmp::Reverse((s, std::cmp::Reverse(a)))| (s.0, a))
            .collect()
    }
}

/// Stream `files` into the index and commit once, with `info` updated as the payload.
/// On any error the writer rolls back (nothing of this call is committed).
fn ingest(
    index: &Index,
    dir: &Path,
    fields: Fields,
    info: &mut IndexInfo,
    files: Vec<CorpusFile>,
    opts: &IndexOptions,
    progress: Progress,
) -> Result<BuildSummary> {
    let t0 = Instant::now();
    let threads = opts.threads.max(1);
    let per_thread = (opts.memory_budget / threads).clamp(15 << 20, 4000 << 20);
    let wopts = IndexWriterOptions::builder()
        .memory_budget_per_thread(per_thread)
        .num_worker_threads(threads)
        .num_merge_threads(threads)
        .build();
    let mut writer: IndexWriter = index
        .writer_with_options(wopts)
        .map_err(|e| CorpusError::index(dir, e))?;
    let first_file = info.files.len();
    let mut new_info = info.clone();
    for f in &files {
        new_info.files.push(IndexedFile {
            rel: f.rel.clone(),
            path: f.path.clone(),
            format: f.format,
            fingerprint: fingerprint_file(&f.path)?,
            docs: 0,
        });
    }
    let spec = CorpusSpec {
        files,
        ignored: Vec::new(),
    };
    let total_bytes = spec.total_bytes();
    let bar = match progress {
        Progress::Bar => {
            let b = indicatif::ProgressBar::new(total_bytes);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b
        }
        Progress::Hidden => indicatif::ProgressBar::hidden(),
    };
    let mut reader = CorpusReader::new(spec, opts.read.clone());
    let mut entries = 0u64;
    let result = (|| -> Result<()> {
        while let Some(doc) = reader.next() {
            let doc = doc?;
            let file_idx = first_file + reader.current_file();
            new_info.files[file_idx].docs += 1;
            let spans = match opts.passages {
                Some(p) => passage_spans(&doc.text, p.words, p.stride)?,
                None => vec![(0, doc.text.len())],
            };
            for (start, end) in spans {
                let mut d = TantivyDocument::default();
                d.add_text(fields.body, &doc.text[start..end]);
                d.add_text(fields.doc_id, &doc.id);
                d.add_u64(fields.file, file_idx as u64);
                d.add_u64(fields.row, doc.source.row);
                d.add_u64(fields.offset, doc.source.byte_offset);
                d.add_u64(fields.len, doc.source.byte_len);
                d.add_u64(fields.span_start, start as u64);
                d.add_u64(fields.span_end, end as u64);
                writer
                    .add_document(d)
                    .map_err(|e| CorpusError::index(dir, e))?;
                entries += 1;
            }
            let n = reader.stats().docs;
            if n.is_multiple_of(1024) {
                bar.set_position(reader.bytes_done());
                let secs = t0.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("{n} docs, {:.0} docs/s", n as f64 / secs));
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = writer.rollback();
        bar.abandon();
        return Err(e);
    }
    let stats = reader.stats().clone();
    new_info.docs += stats.docs;
    new_info.entries += entries;
    new_info.text_bytes += stats.text_bytes;
    new_info.skipped.add(&stats.skipped);
    let payload = serde_json::to_string(&new_info).map_err(|e| CorpusError::index(dir, e))?;
    let commit = (|| -> tantivy::Result<()> {
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        if opts.merge {
            let ids = index.searchable_segment_ids()?;
            if ids.len() > 1 {
                writer.merge(&ids).wait()?;
            }
        }
        writer.wait_merging_threads()
    })();
    bar.finish_and_clear();
    commit.map_err(|e| CorpusError::index(dir, e))?;
    let seconds = t0.elapsed().as_secs_f64();
    *info = new_info;
    Ok(BuildSummary {
        files_indexed: stats.files_done,
        files_unchanged: 0,
        docs: stats.docs,
        entries,
        text_bytes: stats.text_bytes,
        file_bytes: total_bytes,
        skipped: stats.skipped,
        seconds,
    })
}
