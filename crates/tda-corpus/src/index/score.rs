//! The two scoring engines: tantivy's own `BooleanQuery` (BM25, for cross-checks) and the
//! term-at-a-time scorer (BM25 or TF-IDF) with its bounded top-k heap; and the insertion order
//! that breaks score ties.

use super::open::CorpusIndex;
use super::query::{QueryTerm, Ranking};
use crate::error::{one_line, CorpusError, Result};
use tantivy::collector::TopDocs;
use tantivy::fastfield::Column;
use tantivy::postings::Postings;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocAddress, DocSet, SegmentReader, Term, TERMINATED};

/// A document's place in the corpus: (file, row, passage start), from the fast fields. Score ties
/// are broken by it, so that results do not depend on how the indexing threads and merges laid
/// the documents out in segments (a `DocAddress` does: two builds of one corpus differ).
pub(super) type InsertionKey = (u64, u64, u64);

/// The [`InsertionKey`]s of one segment.
pub(super) struct InsertionOrder {
    file: Column<u64>,
    row: Column<u64>,
    span_start: Column<u64>,
}

impl InsertionOrder {
    pub(super) fn of(seg: &SegmentReader) -> tantivy::Result<Self> {
        let ff = seg.fast_fields();
        Ok(InsertionOrder {
            file: ff.u64("file")?,
            row: ff.u64("row")?,
            span_start: ff.u64("span_start")?,
        })
    }

    pub(super) fn key(&self, doc: u32) -> InsertionKey {
        let get = |c: &Column<u64>| c.first(doc).unwrap_or(0);
        (get(&self.file), get(&self.row), get(&self.span_start))
    }
}

impl CorpusIndex {
    /// BM25 evaluated by tantivy's `BooleanQuery` (document-at-a-time, block-max WAND); a term's
    /// weight is its count in the query (a boost).
    pub(super) fn tantivy_bm25(
        &self,
        searcher: &tantivy::Searcher,
        terms: &[QueryTerm],
        k: usize,
    ) -> Result<Vec<(f32, DocAddress)>> {
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
            .map_err(|e| CorpusError::index(&self.dir, e))
    }

    /// Term-at-a-time scoring over every segment: a dense per-segment accumulator, one pass over
    /// each query term's postings, then a bounded heap. For top-10,000 with tens of terms this is
    /// several times faster than tantivy's document-at-a-time union (whose WAND pruning helps
    /// little when k is large). BM25 here reproduces tantivy's arithmetic (f32, same constants,
    /// same quantised-length cache, N = Σ max_doc, avgdl = Σ tokens / N).
    pub(super) fn term_at_a_time(
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
            let order = InsertionOrder::of(seg).map_err(|e| err(&e))?;
            let inv = seg.inverted_index(self.fields.body).map_err(|e| err(&e))?;
            let norms = seg
                .get_fieldnorms_reader(self.fields.body)
                .map_err(|e| err(&e))?;
            let max_doc = seg.max_doc();
            let mut acc = vec![0f32; max_doc as usize];
            // `max_doc` comes from meta.json; postings from the segment files: a mismatch is a
            // corrupt index, not an index out of bounds.
            let past_end = |d: u32| {
                err(&format!(
                    "segment {seg_ord}: a posting names document {d} but meta.json gives the segment {max_doc} documents"
                ))
            };
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
                            if d >= max_doc {
                                return Err(past_end(d));
                            }
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
                            if d >= max_doc {
                                return Err(past_end(d));
                            }
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
                    heap.push(score, DocAddress::new(seg_ord as u32, d as u32), || {
                        order.key(d as u32)
                    });
                }
            }
        }
        Ok(heap.into_vec())
    }
}

/// Bounded min-heap keeping the `k` best (score, address); among equal scores the earlier
/// [`InsertionKey`].
struct TopK {
    k: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(OrdF32, std::cmp::Reverse<Entry>)>>,
}

/// A heap entry's tie order: insertion key, then (unique anyway) address.
type Entry = (InsertionKey, DocAddress);

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
    /// Offers a document; its insertion key is only read when the score can make the cut.
    fn push(&mut self, s: f32, a: DocAddress, key: impl FnOnce() -> InsertionKey) {
        if self.heap.len() < self.k {
            let item = std::cmp::Reverse((OrdF32(s), std::cmp::Reverse((key(), a))));
            self.heap.push(item);
        } else if let Some(min) = self.heap.peek() {
            if OrdF32(s) < min.0 .0 {
                return;
            }
            let item = std::cmp::Reverse((OrdF32(s), std::cmp::Reverse((key(), a))));
            if item < *min {
                self.heap.pop();
                self.heap.push(item);
            }
        }
    }
    fn into_vec(self) -> Vec<(f32, DocAddress)> {
        self.heap
            .into_iter()
            .map(|std::cmp::Reverse((s, std::cmp::Reverse((_, a))))| (s.0, a))
            .collect()
    }
}
