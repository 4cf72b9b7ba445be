//! The query side: ranking and query options, query analysis (terms weighted and pruned), and
//! the result types.

use super::open::CorpusIndex;
use crate::doc::{Document, SourceRef};
use crate::error::{CorpusError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tantivy::Term;

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

impl CorpusIndex {
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
}

/// tantivy's BM25 idf.
pub fn bm25_idf(df: u64, n: u64) -> f64 {
    (1.0 + (n as f64 - df as f64 + 0.5) / (df as f64 + 0.5)).ln()
}
