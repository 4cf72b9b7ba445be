//! From per-token gradient scores to documents and citations (MIRAGE's `mirage_cite`, with the
//! fixes of our research notes): a per-token filter over the document tokens, sums over the
//! tokens of each document (headers, template and — unless asked — titles excluded), sums over
//! the selected tokens of each answer sentence, at most `max_citations` documents per sentence.

use std::ops::Range;

/// Which prompt-token scores of one selected answer token survive before summing.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum CciFilter {
    /// Keep a_j ≥ max − p/100·(max − min): the top p % of the score RANGE (MIRAGE `--CCI -5`).
    TopRangePct(f32),
    /// Keep the k largest (MIRAGE `--CCI k`, Top-3 in the paper).
    TopK(usize),
    /// Keep everything.
    All,
}

impl Default for CciFilter {
    fn default() -> Self {
        CciFilter::TopRangePct(5.0)
    }
}

/// Applies `filter` to `scores` restricted to the candidate positions (`candidate[j]`);
/// non-candidates and filtered-out scores become 0. The min/max of the range are taken over the
/// candidates only, so a large gradient on a template token cannot erase all document tokens.
pub fn filter_scores(scores: &[f32], candidate: &[bool], filter: CciFilter) -> Vec<f32> {
    let cand: Vec<usize> = (0..scores.len()).filter(|&j| candidate[j]).collect();
    let mut out = vec![0.0; scores.len()];
    if cand.is_empty() {
        return out;
    }
    match filter {
        CciFilter::All => {
            for &j in &cand {
                out[j] = scores[j];
            }
        }
        CciFilter::TopRangePct(p) => {
            let max = cand
                .iter()
                .map(|&j| scores[j])
                .fold(f32::NEG_INFINITY, f32::max);
            let min = cand
                .iter()
                .map(|&j| scores[j])
                .fold(f32::INFINITY, f32::min);
            let cut = max - p / 100.0 * (max - min);
            for &j in &cand {
                if scores[j] >= cut {
                    out[j] = scores[j];
                }
            }
        }
        CciFilter::TopK(k) => {
            let mut order = cand.clone();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            for &j in order.iter().take(k) {
                out[j] = scores[j];
            }
        }
    }
    out
}

/// Sums `scores` (one per prompt token) into `n_docs` document scores with `doc_of`.
pub fn doc_sums(scores: &[f32], doc_of: &[Option<usize>], n_docs: usize) -> Vec<f32> {
    let mut out = vec![0.0; n_docs];
    for (s, d) in scores.iter().zip(doc_of) {
        if let Some(i) = d {
            out[*i] += s;
        }
    }
    out
}

/// Documents to cite from `scores`: positive scores, at least `min_share` of the positive total,
/// sorted descending (ties by index), at most `max`. 0-based indices.
pub fn citations(scores: &[f32], max: usize, min_share: f32) -> Vec<usize> {
    let total: f32 = scores.iter().filter(|&&s| s > 0.0).sum();
    let mut c: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i] > 0.0 && scores[i] >= min_share * total)
        .collect();
    c.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    c.truncate(max);
    c
}

/// Byte ranges of the sentences of `text`, trimmed of surrounding whitespace. A sentence ends
/// after `.`, `!`, `?` or `…` (and any closing quotes/brackets) followed by whitespace or the
/// end, or at a newline. Empty pieces are dropped. Rule-based: "e.g. x" splits after "e.g.".
pub fn split_sentences(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    let push = |s: usize, e: usize, out: &mut Vec<Range<usize>>| {
        let piece = &text[s..e];
        let lead = piece.len() - piece.trim_start().len();
        let trail = piece.len() - piece.trim_end().len();
        if lead + trail < piece.len() {
            out.push(s + lead..e - trail);
        }
    };
    while i < chars.len() {
        let (at, c) = chars[i];
        if c == '\n' {
            push(start, at, &mut out);
            start = at + 1;
        } else if matches!(c, '.' | '!' | '?' | '…') {
            let mut j = i + 1;
            while j < chars.len()
                && matches!(
                    chars[j].1,
                    '.' | '!' | '?' | '…' | '"' | '\'' | ')' | ']' | '”' | '’'
                )
            {
                j += 1;
            }
            let end = chars.get(j).map_or(text.len(), |c| c.0);
            if j == chars.len() || chars[j].1.is_whitespace() {
                push(start, end, &mut out);
                start = end;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    push(start, text.len(), &mut out);
    out
}

/// Index of the sentence that token span `(s, e)` of `text` belongs to: the sentence holding its
/// first non-whitespace byte (else the one holding `s`, else the nearest before it).
pub fn sentence_of(text: &str, span: (usize, usize), sentences: &[Range<usize>]) -> Option<usize> {
    let (s, e) = span;
    let s = s.min(text.len());
    let e = e.clamp(s, text.len());
    let first = text
        .get(s..e)
        .and_then(|p| p.char_indices().find(|(_, c)| !c.is_whitespace()))
        .map_or(s, |(k, _)| s + k);
    sentences
        .iter()
        .position(|r| r.contains(&first))
        .or_else(|| sentences.iter().rposition(|r| r.start <= first))
        .or(if sentences.is_empty() { None } else { Some(0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_range_keeps_the_top_of_the_range_over_candidates() {
        let s = [9.0, 1.0, 2.0, 10.0, 0.5, 9.6];
        // Candidates 1..=5: range [0.5, 10], 5 % cut = 10 − 0.475 = 9.525.
        let c = [false, true, true, true, true, true];
        assert_eq!(
            filter_scores(&s, &c, CciFilter::TopRangePct(5.0)),
            vec![0.0, 0.0, 0.0, 10.0, 0.0, 9.6]
        );
        // The non-candidate 9.0 never survives, even with everything kept.
        assert_eq!(filter_scores(&s, &c, CciFilter::All)[0], 0.0);
        assert_eq!(
            filter_scores(&s, &c, CciFilter::TopK(2)),
            vec![0.0, 0.0, 0.0, 10.0, 0.0, 9.6]
        );
        assert_eq!(
            filter_scores(&s, &[false; 6], CciFilter::TopK(2)),
            vec![0.0; 6]
        );
        // 100 % of the range keeps every candidate.
        assert_eq!(
            filter_scores(&s, &c, CciFilter::TopRangePct(100.0)),
            vec![0.0, 1.0, 2.0, 10.0, 0.5, 9.6]
        );
    }

    #[test]
    fn doc_sums_and_citations() {
        let scores = [1.0, 2.0, 3.0, 4.0];
        let doc_of = [None, Some(1), Some(0), Some(1)];
        assert_eq!(doc_sums(&scores, &doc_of, 3), vec![3.0, 6.0, 0.0]);
        assert_eq!(citations(&[3.0, 6.0, 0.0, 1.0, 2.0], 3, 0.0), vec![1, 0, 4]);
        assert_eq!(citations(&[3.0, 6.0, 0.0, 1.0, 2.0], 3, 0.25), vec![1, 0]);
        assert_eq!(citations(&[0.0, 0.0], 3, 0.0), Vec::<usize>::new());
        assert_eq!(citations(&[1.0, 1.0], 1, 0.0), vec![0], "ties by index");
    }

    #[test]
    fn sentences_by_offsets() {
        let t = "Mira was born in Tarn. She works as a baker!  Pi is 3.14 \"really.\" Yes\nNo";
        let s: Vec<&str> = split_sentences(t).into_iter().map(|r| &t[r]).collect();
        assert_eq!(
            s,
            vec![
                "Mira was born in Tarn.",
                "She works as a baker!",
                "Pi is 3.14 \"really.\"",
                "Yes",
                "No"
            ]
        );
        assert!(split_sentences("  \n ").is_empty());
        let u = "Zürich — 東京. Ok";
        let r = split_sentences(u);
        assert_eq!(&u[r[0].clone()], "Zürich — 東京.");
        // Token " She" (leading space) belongs to the second sentence; "." to the first.
        let rs = split_sentences(t);
        assert_eq!(sentence_of(t, (22, 26), &rs), Some(1));
        assert_eq!(sentence_of(t, (21, 22), &rs), Some(0));
        assert_eq!(
            sentence_of(t, (44, 46), &rs),
            Some(1),
            "whitespace-only token"
        );
    }
}
