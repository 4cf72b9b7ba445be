//! What a scoring pass keeps of each candidate: a bounded top-K per query (or everything), and the
//! conversion of kept candidates into result rows (per-token strings, per-layer names).
//!
//! Invariant: a non-finite score (NaN, ±inf) is never dropped or ranked silently: it is counted,
//! and [`Keeper::finish`] turns any into an error naming the first such candidate.

use std::sync::Arc;

use tda_curvature::{LayerSpec, Order, TopK};
use tda_model::Tokenizer;

use crate::candidates::Candidate;
use crate::error::{Result, TraceError};
use crate::output::{LayerScore, ResultRow, TokenScore};

/// One kept candidate and its optional breakdowns.
///
/// A window (`doc: None`) or a whole document: then `cand` is its best window (its per-token
/// scores are that window's), `per_layer` sums over all its windows, and `doc` says how many
/// windows it has and the best window's own score.
#[derive(Clone)]
pub(crate) struct Kept {
    pub cand: Arc<Candidate>,
    pub per_token: Option<Vec<f64>>,
    pub per_layer: Option<Vec<f64>>,
    pub doc: Option<DocSummary>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DocSummary {
    pub windows: usize,
    pub best_window_score: f64,
}

/// Per-document sums over consecutive windows of the same document (one pass delivers a
/// document's windows one after another; `Candidate::doc` tells documents apart even when two
/// share an id). The document score is the sum of its window scores; the best window is the one
/// with the largest score (smallest with `opponents`).
pub(crate) struct DocSums {
    doc: Option<u64>,
    opponents: bool,
    /// `false`: a document scores its best window's score instead of the sum (self-influence,
    /// which is quadratic in the gradient, so windows do not add up).
    sum: bool,
    open: Vec<Option<Open>>,
}

struct Open {
    sum: f64,
    layers: Option<Vec<f64>>,
    windows: usize,
    best: (f64, Kept),
}

impl DocSums {
    pub fn new(queries: usize, opponents: bool) -> Self {
        Self {
            doc: None,
            opponents,
            sum: true,
            open: (0..queries).map(|_| None).collect(),
        }
    }

    /// Documents score their best window (largest score), not the sum.
    pub fn best_window(queries: usize) -> Self {
        Self {
            sum: false,
            ..Self::new(queries, false)
        }
    }

    /// Adds window `k` with score `s` for query `q`; documents completed before it go to `keeper`.
    pub fn push(&mut self, keeper: &mut Keeper, q: usize, s: f64, k: Kept) {
        if self.doc != Some(k.cand.doc) {
            self.flush(keeper);
            self.doc = Some(k.cand.doc);
        }
        match &mut self.open[q] {
            None => {
                self.open[q] = Some(Open {
                    sum: s,
                    layers: k.per_layer.clone(),
                    windows: 1,
                    best: (s, k),
                })
            }
            Some(o) => {
                o.sum += s;
                o.windows += 1;
                if let (Some(acc), Some(l)) = (&mut o.layers, &k.per_layer) {
                    acc.iter_mut().zip(l).for_each(|(a, b)| *a += b);
                }
                let better = if self.opponents {
                    s < o.best.0
                } else {
                    s > o.best.0
                };
                if better || !o.best.0.is_finite() {
                    o.best = (s, k);
                }
            }
        }
    }

    /// Hands every open document to `keeper` (call once more after the pass).
    pub fn flush(&mut self, keeper: &mut Keeper) {
        for (q, slot) in self.open.iter_mut().enumerate() {
            if let Some(o) = slot.take() {
                let (best_score, best) = o.best;
                keeper.push(
                    q,
                    if self.sum { o.sum } else { best_score },
                    Kept {
                        per_layer: o.layers,
                        doc: Some(DocSummary {
                            windows: o.windows,
                            best_window_score: best_score,
                        }),
                        ..best
                    },
                );
            }
        }
        self.doc = None;
    }
}

/// Top-K (bounded heaps), all results per query, or a stream of them, and the count of
/// non-finite scores.
pub(crate) struct Keeper<'a> {
    kept: Store<'a>,
    queries: usize,
    non_finite: usize,
    first_non_finite: Option<String>,
}

/// Called with each kept `(query, score, candidate)` as it comes (nothing is kept).
pub(crate) type Stream<'a> = &'a mut dyn FnMut(usize, f64, &Kept);

enum Store<'a> {
    Top(TopK<Kept>),
    All(Vec<Vec<(f64, Kept)>>, bool),
    Stream(Stream<'a>),
}

impl<'a> Keeper<'a> {
    pub fn push(&mut self, q: usize, s: f64, k: Kept) {
        if !s.is_finite() {
            self.non_finite += 1;
            if self.first_non_finite.is_none() {
                self.first_non_finite = Some(format!("{}#{} ({s})", k.cand.doc_id, k.cand.window));
            }
            return;
        }
        match &mut self.kept {
            Store::Top(t) => t.push(q, s, k),
            Store::All(v, _) => v[q].push((s, k)),
            Store::Stream(f) => f(q, s, &k),
        }
    }

    /// The kept results per query, best first (none when streamed); an error if any score was
    /// not finite.
    pub fn finish(self) -> Result<Vec<Vec<(f64, Kept)>>> {
        if let Some(first) = self.first_non_finite {
            return Err(TraceError::Usage(format!(
                "{} scores are not finite (NaN or inf), first of candidate {first}: the damped \
                 curvature is singular or the model overflowed; use a positive --damping (the \
                 default `heuristic` is 0.1 × mean Λ)",
                self.non_finite
            )));
        }
        Ok(match self.kept {
            Store::Top(t) => t.into_sorted(),
            Store::Stream(_) => (0..self.queries).map(|_| vec![]).collect(),
            Store::All(mut v, opponents) => {
                for l in &mut v {
                    // Stable: ties keep arrival order, as TopK does.
                    l.sort_by(|a, b| {
                        if opponents {
                            a.0.total_cmp(&b.0)
                        } else {
                            b.0.total_cmp(&a.0)
                        }
                    });
                }
                v
            }
        })
    }
}

/// Per-token scores labelled with the token each position *predicts*. The score at position `t`
/// comes from the loss term of token `t + 1` (`a_t` with the gradient of `−log p(x_{t+1} | x_≤t)`),
/// so entry `t` is `(token t + 1, score t)`. The window's first token is never predicted and has
/// no entry; the last position predicts nothing and scores 0, so the entries still sum to the
/// window's score.
fn predicted_token_scores(tokenizer: &Tokenizer, ids: &[u32], scores: &[f64]) -> Vec<TokenScore> {
    debug_assert!(
        scores.len() < ids.len() || scores[ids.len() - 1] == 0.0,
        "the last position has no target"
    );
    ids.iter()
        .skip(1)
        .zip(scores)
        .map(|(&id, &score)| TokenScore {
            token: tokenizer.decode(&[id], false).unwrap_or_default(),
            score,
        })
        .collect()
}

impl<'a> Keeper<'a> {
    /// Hands every result to `stream` instead of keeping it.
    pub fn streaming(queries: usize, stream: Stream<'a>) -> Self {
        Keeper {
            kept: Store::Stream(stream),
            queries,
            non_finite: 0,
            first_non_finite: None,
        }
    }

    /// Top `k` (or all when `None`) for each of `queries`, most positive first unless `opponents`.
    pub fn new(queries: usize, k: Option<usize>, opponents: bool) -> Self {
        let order = if opponents {
            Order::Smallest
        } else {
            Order::Largest
        };
        let kept = match k {
            Some(k) => Store::Top(TopK::new(queries, k, order)),
            None => Store::All((0..queries).map(|_| Vec::new()).collect(), opponents),
        };
        Keeper {
            kept,
            queries,
            non_finite: 0,
            first_non_finite: None,
        }
    }
}

/// The result row of a kept candidate at 0-based `rank`.
pub(crate) fn to_row(
    rank: usize,
    score: f64,
    k: &Kept,
    tokenizer: &Tokenizer,
    specs: &[LayerSpec],
) -> ResultRow {
    ResultRow {
        rank: rank + 1,
        doc: k.cand.doc,
        doc_id: k.cand.doc_id.clone(),
        window: k.cand.window,
        span: k.cand.span,
        text: k.cand.text.clone(),
        score,
        windows: k.doc.map(|d| d.windows),
        best_window_score: k.doc.map(|d| d.best_window_score),
        per_token: k
            .per_token
            .as_ref()
            .map(|v| predicted_token_scores(tokenizer, &k.cand.ids, v)),
        per_layer: k.per_layer.as_ref().map(|v| {
            specs
                .iter()
                .zip(v)
                .map(|(s, &score)| LayerScore {
                    layer: s.name.clone(),
                    score,
                })
                .collect()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(id: &str) -> Kept {
        window(id, 0, 0)
    }

    fn window(id: &str, doc: u64, w: usize) -> Kept {
        Kept {
            cand: Arc::new(Candidate {
                doc,
                loss_from: 1,
                doc_id: id.into(),
                window: w,
                span: (0, 1),
                text: "x".into(),
                ids: vec![1, 2],
            }),
            per_token: None,
            per_layer: Some(vec![1.0, 2.0]),
            doc: None,
        }
    }

    #[test]
    fn a_document_scores_the_sum_of_its_windows_and_shows_the_best() {
        // Two documents with the same id stay apart (doc ordinals 0 and 1).
        let mut keep = Keeper::new(2, None, false);
        let mut sums = DocSums::new(2, false);
        for (doc, w, s) in [(0, 0, 1.0), (0, 1, 3.0), (0, 2, -0.5), (1, 0, 2.0)] {
            sums.push(&mut keep, 0, s, window("a", doc, w));
            sums.push(&mut keep, 1, -s, window("a", doc, w));
        }
        sums.flush(&mut keep);
        let rows = keep.finish().unwrap();
        let (s0, k0) = &rows[0][0];
        assert_eq!(*s0, 3.5);
        let d = k0.doc.unwrap();
        assert_eq!(
            (d.windows, d.best_window_score, k0.cand.window),
            (3, 3.0, 1)
        );
        assert_eq!(k0.per_layer.as_deref(), Some(&[3.0, 6.0][..]));
        assert_eq!(rows[0][1].0, 2.0);
        assert_eq!(rows[0][1].1.doc.unwrap().windows, 1);
        // Query 1: sums −3.5 and −2; best window = largest score (−0.5 of window 2).
        assert_eq!(rows[1][0].0, -2.0);
        assert_eq!(rows[1][1].0, -3.5);
        assert_eq!(rows[1][1].1.cand.window, 2);
    }

    #[test]
    fn non_finite_scores_are_an_error_not_a_silent_drop() {
        for k in [Some(2), None] {
            let mut keep = Keeper::new(1, k, false);
            keep.push(0, 1.0, kept("a"));
            keep.push(0, f64::NAN, kept("b"));
            keep.push(0, f64::INFINITY, kept("c"));
            let e = keep.finish().err().expect("non-finite scores must fail");
            let msg = e.to_string();
            assert!(msg.starts_with("2 scores are not finite"), "{msg}");
            assert!(msg.contains("b#0") && msg.contains("--damping"), "{msg}");
        }
        let mut keep = Keeper::new(1, None, false);
        keep.push(0, 1.0, kept("a"));
        keep.push(0, 3.0, kept("b"));
        let rows = keep.finish().unwrap();
        assert_eq!(rows[0].len(), 2);
        assert_eq!(rows[0][0].1.cand.doc_id, "b");
    }
}
