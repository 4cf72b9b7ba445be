//! Id resolution: from scored tantivy addresses to [`Hit`]s (document id, [`SourceRef`], span)
//! through the fast fields.

use super::open::CorpusIndex;
use super::query::Hit;
use crate::doc::SourceRef;
use crate::error::{one_line, CorpusError, Result};
use std::collections::HashMap;
use tantivy::DocAddress;

impl CorpusIndex {
    /// Doc ids and sources of the given documents, from the fast fields. Ids are decoded in
    /// one sorted pass over each segment's id dictionary (random `ord_to_str` costs ~10 µs each).
    pub(super) fn resolve(
        &self,
        searcher: &tantivy::Searcher,
        top: &[(f32, DocAddress)],
    ) -> Result<Vec<Hit>> {
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
}
