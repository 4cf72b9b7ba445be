//! The prefilter step of `tda trace`: queries → BM25 / TF-IDF hits in a corpus index → the
//! candidate documents whose windows are scored with influence.
//!
//! Invariants: the index is checked against the corpus before it is used (a stale index is an
//! error, not a silent mismatch); documents are deduplicated across queries and keep the order in
//! which they were first retrieved (query order, then rank); each query retrieves at most
//! `candidates` documents, so at most `queries × candidates` documents are scored.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tda_corpus::{CorpusIndex, Ranking, ReadOptions};

use crate::candidates::{CandidateKind, DocSource};
use crate::error::{Result, TraceError};
use crate::query::Query;

/// Retrieval settings: which index, how many documents per query, which ranking.
#[derive(Clone, Debug)]
pub struct Prefilter {
    /// Folder written by `tda index` for the same corpus.
    pub index: PathBuf,
    /// Documents retrieved per query.
    pub candidates: usize,
    pub ranking: Ranking,
}

impl Prefilter {
    /// BM25, the default of `tda trace --index`.
    pub fn bm25(index: impl Into<PathBuf>, candidates: usize) -> Self {
        Self {
            index: index.into(),
            candidates,
            ranking: Ranking::Bm25,
        }
    }
}

/// What the prefilter retrieved.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PrefilterReport {
    /// Distinct documents, over all queries.
    pub documents: usize,
    /// Hits per query (before deduplication across queries).
    pub hits_per_query: Vec<usize>,
}

/// The retrieval text of a query: its prompt and completion, as one bag of words.
pub fn query_text(q: &Query) -> String {
    format!("{} {}", q.prompt, q.completion)
}

/// Retrieves the candidate documents of `queries` from the index `p.index` of `corpus`. `read`
/// must be the options the index was built with (documents are fetched with the index's own).
/// Errors: a stale index, different read options, no document retrieved for any query.
pub fn prefilter(
    p: &Prefilter,
    corpus: &Path,
    read: &ReadOptions,
    queries: &[Query],
) -> Result<(DocSource, PrefilterReport)> {
    let (index, hits, report) = retrieve(p, corpus, Some(read), queries)?;
    Ok((DocSource::docs(index.fetch(&hits)?), report))
}

/// [`prefilter`] for a jsonl file of prompt/completion pairs (supervised fine-tuning data,
/// `{"prompt", "completion", "id"?}` per line), indexed as documents whose text is one of the
/// pair's fields (`tda index --text-column completion`: what the model was trained to say). Each
/// hit's line is re-read as a pair and scored as [`DocSource::pairs`] scores it, the loss on the
/// completion only; a pair without an `id` takes the index's (`<file>:<row>`). The index's own
/// read options say which field it holds, so none are given here.
pub fn prefilter_pairs(
    p: &Prefilter,
    pairs: &Path,
    queries: &[Query],
) -> Result<(DocSource, PrefilterReport)> {
    if pairs.extension().is_none_or(|e| e != "jsonl") {
        return Err(TraceError::Usage(format!(
            "{}: prompt/completion pairs are read from a .jsonl file",
            pairs.display()
        )));
    }
    let (index, hits, report) = retrieve(p, pairs, None, queries)?;
    let read = &index.info().read;
    let mut selected = Vec::with_capacity(hits.len());
    for h in &hits {
        let bytes = tda_corpus::read_record_bytes(&h.source, read)?;
        let line = h.source.row + 1;
        let mut pair: Query = serde_json::from_slice(&bytes).map_err(|e| {
            TraceError::Usage(format!(
                "{} line {line}: not a prompt/completion pair ({e}); --completion-only reads \
                 {{\"prompt\", \"completion\"}} objects",
                pairs.display()
            ))
        })?;
        if pair.id.is_empty() {
            pair.id = h.doc_id.clone();
        }
        selected.push(pair);
    }
    Ok((DocSource::pairs_from(pairs, selected), report))
}

/// The index's hits for `queries`, deduplicated across queries in retrieval order; `read`, when
/// given, must be the options the index was built with.
fn retrieve(
    p: &Prefilter,
    corpus: &Path,
    read: Option<&ReadOptions>,
    queries: &[Query],
) -> Result<(CorpusIndex, Vec<tda_corpus::Hit>, PrefilterReport)> {
    if p.candidates == 0 {
        return Err(TraceError::Usage("--candidates must be at least 1".into()));
    }
    let index = CorpusIndex::open(&p.index)?;
    index.check_corpus(corpus)?;
    if let Some(read) = read {
        check_read_options(&p.index, &index.info().read, read)?;
    }
    let mut seen = HashSet::new();
    let mut hits = Vec::new();
    let mut report = PrefilterReport::default();
    for q in queries {
        let found = index.search(&query_text(q), p.candidates, p.ranking)?;
        report.hits_per_query.push(found.len());
        for h in found {
            if seen.insert(h.doc_id.clone()) {
                hits.push(h);
            }
        }
    }
    report.documents = hits.len();
    if hits.is_empty() {
        return Err(TraceError::Usage(format!(
            "the prefilter {} found no document for any of the {} queries (none of their words \
             is in the index); trace without --index to score the whole corpus",
            p.index.display(),
            queries.len()
        )));
    }
    Ok((index, hits, report))
}

/// The corpus options given to the trace must be those the index was built with.
fn check_read_options(dir: &Path, built: &ReadOptions, given: &ReadOptions) -> Result<()> {
    let differ = |flag: &str, b: String, g: String| {
        TraceError::Usage(format!(
            "{flag} {g} differs from the index {}, built with {b}; rebuild it (tda index \
             --overwrite) or pass the same option",
            dir.display()
        ))
    };
    if built.text_column != given.text_column {
        return Err(differ(
            "--text-column",
            built.text_column.clone(),
            given.text_column.clone(),
        ));
    }
    if built.id_column != given.id_column {
        let show = |c: &Option<String>| c.clone().unwrap_or_else(|| "none".into());
        return Err(differ(
            "--id-column",
            show(&built.id_column),
            show(&given.id_column),
        ));
    }
    if built.text_mode != given.text_mode {
        let show = |m: tda_corpus::TextMode| format!("{m:?}").to_lowercase();
        return Err(differ(
            "--text-mode",
            show(built.text_mode),
            show(given.text_mode),
        ));
    }
    Ok(())
}

/// The candidates of a trace: every document (or pair) of `corpus`, or the prefilter's when
/// `prefilter` is given (then the report says what it retrieved). `read` applies to documents.
pub fn candidate_source(
    corpus: &Path,
    read: &ReadOptions,
    kind: CandidateKind,
    prefilter: Option<&Prefilter>,
    queries: &[Query],
) -> Result<(DocSource, Option<PrefilterReport>)> {
    let (source, report) = match (kind, prefilter) {
        (kind, None) => (DocSource::of_kind(corpus, read, kind)?, None),
        (CandidateKind::Documents, Some(p)) => {
            let (s, r) = self::prefilter(p, corpus, read, queries)?;
            (s, Some(r))
        }
        (CandidateKind::Pairs, Some(p)) => {
            let (s, r) = prefilter_pairs(p, corpus, queries)?;
            (s, Some(r))
        }
    };
    Ok((source, report))
}
