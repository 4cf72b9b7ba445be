//! Cutting documents into model-length token windows, keeping window → document → text span.
//!
//! The tokenizer lives in another crate: it is passed as a closure returning token ids and, per
//! token, its `(start, end)` **byte** offsets into the text (what `tokenizers::Encoding::get_offsets`
//! gives for `Tokenizer::encode`), or why the text cannot be tokenized. Special tokens with an
//! empty `(s, s)` span are allowed.

use crate::doc::Document;
use crate::error::{CorpusError, Result};

/// A tokenizer as seen by this crate: text → (token ids, per-token byte offsets into the text), or
/// the tokenizer's error message.
pub type EncodeFn<'a> = &'a dyn Fn(&str) -> std::result::Result<Encoded, String>;

/// Token ids and, per token, its byte offsets into the text.
pub type Encoded = (Vec<u32>, Vec<(usize, usize)>);

/// One window of a document.
///
/// Invariants: `token_ids` are `tokens[token_range.0..token_range.1]` of the document's encoding;
/// `char_span = (start, end)` are **byte** offsets into `doc.text`, on char boundaries, covering
/// every token of the window (so `&doc.text[start..end]` is the exact text the window scores).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub doc_id: String,
    /// 0-based window number within the document.
    pub index: usize,
    pub token_ids: Vec<u32>,
    /// Token positions `[start, end)` within the document's encoding.
    pub token_range: (usize, usize),
    /// Byte span `[start, end)` into `doc.text`.
    pub char_span: (usize, usize),
}

impl Window {
    /// The exact text of the window within its document.
    pub fn text<'a>(&self, doc: &'a Document) -> &'a str {
        doc.text
            .get(self.char_span.0..self.char_span.1)
            .unwrap_or("")
    }
}

/// Cut `doc` into windows of at most `len` tokens, starting every `stride` tokens
/// (`1 ≤ stride ≤ len`; `stride == len` gives disjoint windows). The last window ends at the last
/// token (it may be shorter than `len`); a document with no tokens has no windows.
pub fn windows(
    doc: &Document,
    encode: EncodeFn<'_>,
    len: usize,
    stride: usize,
) -> Result<Vec<Window>> {
    if len == 0 || stride == 0 || stride > len {
        return Err(CorpusError::InvalidArgument(format!(
            "window length {len} and stride {stride}: need 1 <= stride <= length"
        )));
    }
    let (ids, offsets) = encode(&doc.text).map_err(|e| {
        CorpusError::InvalidArgument(format!("document {}: cannot tokenize: {e}", doc.id))
    })?;
    if ids.len() != offsets.len() {
        return Err(CorpusError::InvalidArgument(format!(
            "document {}: tokenizer returned {} ids but {} offsets",
            doc.id,
            ids.len(),
            offsets.len()
        )));
    }
    let n = ids.len();
    let mut out = Vec::new();
    let mut start = 0usize;
    while start < n {
        let end = (start + len).min(n);
        out.push(Window {
            doc_id: doc.id.clone(),
            index: out.len(),
            token_ids: ids[start..end].to_vec(),
            token_range: (start, end),
            char_span: span(&doc.text, &offsets[start..end]),
        });
        if end == n {
            break;
        }
        start += stride;
    }
    Ok(out)
}

/// Byte spans of passages of `words` whitespace-separated words starting every `stride` words
/// (`1 ≤ stride ≤ words`). Each span runs from the start of its first word to the end of its last
/// word; the last passage ends at the last word. A text with no words gives one span `(0, len)`.
pub fn passage_spans(text: &str, words: usize, stride: usize) -> Result<Vec<(usize, usize)>> {
    if words == 0 || stride == 0 || stride > words {
        return Err(CorpusError::InvalidArgument(format!(
            "passages of {words} words every {stride}: need 1 <= stride <= words"
        )));
    }
    let mut bounds: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                bounds.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        bounds.push((s, text.len()));
    }
    if bounds.len() <= words {
        return Ok(vec![(0, text.len())]);
    }
    let mut out = Vec::new();
    let mut first = 0;
    loop {
        let last = (first + words).min(bounds.len()) - 1;
        out.push((bounds[first].0, bounds[last].1));
        if last == bounds.len() - 1 {
            break;
        }
        first += stride;
    }
    Ok(out)
}

/// Smallest byte span covering the non-empty token offsets, clamped to the text and snapped
/// outwards to char boundaries. `(0, 0)` when no token has a non-empty span.
fn span(text: &str, offsets: &[(usize, usize)]) -> (usize, usize) {
    let mut lo = usize::MAX;
    let mut hi = 0usize;
    for &(s, e) in offsets {
        if e > s {
            lo = lo.min(s);
            hi = hi.max(e);
        }
    }
    if lo == usize::MAX {
        return (0, 0);
    }
    let mut lo = lo.min(text.len());
    let mut hi = hi.min(text.len());
    while !text.is_char_boundary(lo) {
        lo -= 1;
    }
    while !text.is_char_boundary(hi) {
        hi += 1;
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{Format, SourceRef};

    /// Whitespace tokenizer with byte offsets, plus a BOS token with an empty span.
    fn ws(text: &str) -> std::result::Result<Encoded, String> {
        let mut ids = vec![0];
        let mut offs = vec![(0, 0)];
        let mut start = None;
        for (i, c) in text
            .char_indices()
            .chain(std::iter::once((text.len(), ' ')))
        {
            match (c.is_whitespace(), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    ids.push(text[s..i].len() as u32);
                    offs.push((s, i));
                    start = None;
                }
                _ => {}
            }
        }
        Ok((ids, offs))
    }

    fn doc(text: &str) -> Document {
        Document {
            id: "d".into(),
            title: None,
            text: text.into(),
            source: SourceRef {
                path: "x".into(),
                format: Format::Text,
                row: 0,
                byte_offset: 0,
                byte_len: 0,
            },
        }
    }

    #[test]
    fn windows_cover_and_spans_are_exact() {
        let d = doc("héllo wörld  un deux trois quatre cinq");
        let w = windows(&d, &ws, 4, 2).unwrap();
        // 8 tokens (BOS + 7 words): windows at 0, 2, 4 (last ends at 8).
        assert_eq!(
            w.iter().map(|w| w.token_range).collect::<Vec<_>>(),
            vec![(0, 4), (2, 6), (4, 8)]
        );
        assert_eq!(w[0].text(&d), "héllo wörld  un");
        assert_eq!(w[1].text(&d), "wörld  un deux trois");
        assert_eq!(w[2].text(&d), "deux trois quatre cinq");
        let disjoint = windows(&d, &ws, 3, 3).unwrap();
        let total: usize = disjoint.iter().map(|w| w.token_ids.len()).sum();
        assert_eq!(total, 8);
        assert!(windows(&doc(""), &ws, 4, 4).unwrap().len() == 1); // BOS only → one window, empty span
        assert_eq!(windows(&doc(""), &ws, 4, 4).unwrap()[0].char_span, (0, 0));
    }

    #[test]
    fn bad_window_args_are_errors() {
        let d = doc("a b c");
        assert!(windows(&d, &ws, 0, 1).is_err());
        assert!(windows(&d, &ws, 2, 3).is_err());
        let bad = |_: &str| Ok((vec![1, 2], vec![(0, 1)]));
        assert!(windows(&d, &bad, 2, 2).is_err());
        let failing = |_: &str| Err("no vocabulary".to_string());
        let e = windows(&d, &failing, 2, 2).unwrap_err().to_string();
        assert!(
            e.contains("cannot tokenize") && e.contains("no vocabulary"),
            "{e}"
        );
    }

    #[test]
    fn passages_cover_every_word() {
        let t = "a bb  ccc\nd é f";
        assert_eq!(passage_spans(t, 10, 5).unwrap(), vec![(0, t.len())]);
        let p = passage_spans(t, 3, 2).unwrap();
        let texts: Vec<&str> = p.iter().map(|&(s, e)| &t[s..e]).collect();
        assert_eq!(texts, ["a bb  ccc", "ccc\nd é", "é f"]);
        let p = passage_spans(t, 2, 2).unwrap();
        let texts: Vec<&str> = p.iter().map(|&(s, e)| &t[s..e]).collect();
        assert_eq!(texts, ["a bb", "ccc\nd", "é f"]);
        assert!(passage_spans(t, 2, 3).is_err());
        assert_eq!(passage_spans("   ", 2, 1).unwrap(), vec![(0, 3)]);
    }

    #[test]
    fn span_snaps_to_char_boundaries() {
        assert_eq!(span("héllo", &[(2, 3)]), (1, 3));
        assert_eq!(span("ab", &[(0, 99)]), (0, 2));
    }
}
