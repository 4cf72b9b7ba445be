//! Search: analyse the query, score with the chosen engine, resolve the hits, and read the
//! candidates' documents back from the corpus.

use super::open::CorpusIndex;
use super::query::{Hit, QueryOptions, Ranking, SearchResult};
use super::score::InsertionOrder;
use crate::doc::{Document, SourceRef};
use crate::error::{one_line, CorpusError, Result};
use crate::read::{fetch_documents, DefaultId, ReadOptions};
use tantivy::DocAddress;

impl CorpusIndex {
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

    /// Top-`k` documents for `query`, best first; ties broken by insertion order (corpus file,
    /// row, passage), whatever the segment layout of the index. (With `tantivy_engine`, which
    /// documents tied at the cut make it is tantivy's choice.)
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
            Ranking::Bm25 if opts.tantivy_engine => self.tantivy_bm25(&searcher, &terms, k)?,
            ranking => self.term_at_a_time(&searcher, &terms, k, ranking)?,
        };
        self.sort_hits(&searcher, &mut top)?;
        let hits = self.resolve(&searcher, &top)?;
        Ok(SearchResult {
            hits,
            terms,
            dropped_terms,
        })
    }

    /// Sorts scored documents best first, ties in insertion order.
    fn sort_hits(&self, searcher: &tantivy::Searcher, top: &mut [(f32, DocAddress)]) -> Result<()> {
        let orders = searcher
            .segment_readers()
            .iter()
            .map(InsertionOrder::of)
            .collect::<tantivy::Result<Vec<_>>>()
            .map_err(|e| CorpusError::index(&self.dir, one_line(&e)))?;
        let key = |a: &DocAddress| orders[a.segment_ord as usize].key(a.doc_id);
        top.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| key(&a.1).cmp(&key(&b.1))));
        Ok(())
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
        // The ids come from the index, so the reader need not (and for ordinals could not)
        // recompute them.
        let read = ReadOptions {
            default_id: DefaultId::FileRow,
            ..self.info.read.clone()
        };
        let mut docs = fetch_documents(&sources, &read)?;
        for (d, h) in docs.iter_mut().zip(hits) {
            d.id = h.doc_id.clone();
        }
        Ok(docs)
    }
}
