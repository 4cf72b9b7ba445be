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
pub(crate) struct Kept {
    pub cand: Arc<Candidate>,
    pub per_token: Option<Vec<f64>>,
    pub per_layer: Option<Vec<f64>>,
}

impl Clone for Kept {
    fn clone(&self) -> Self {
        Self {
            cand: self.cand.clone(),
            per_token: self.per_token.clone(),
            per_layer: self.per_layer.clone(),
        }
    }
}

/// Top-K (bounded heaps) or all results per query, and the count of non-finite scores.
pub(crate) struct Keeper {
    kept: Store,
    non_finite: usize,
    first_non_finite: Option<String>,
}

enum Store {
    Top(TopK<Kept>),
    All(Vec<Vec<(f64, Kept)>>, bool),
}

impl Keeper {
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
        }
    }

    /// The kept results per query, best first; an error if any score was not finite.
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

fn token_strings(tokenizer: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&i| tokenizer.decode(&[i], false).unwrap_or_default())
        .collect()
}

impl Keeper {
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
        doc_id: k.cand.doc_id.clone(),
        window: k.cand.window,
        span: k.cand.span,
        text: k.cand.text.clone(),
        score,
        per_token: k.per_token.as_ref().map(|v| {
            token_strings(tokenizer, &k.cand.ids)
                .into_iter()
                .zip(v)
                .map(|(token, &score)| TokenScore { token, score })
                .collect()
        }),
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
        Kept {
            cand: Arc::new(Candidate {
                doc_id: id.into(),
                window: 0,
                span: (0, 1),
                text: "x".into(),
                ids: vec![1, 2],
            }),
            per_token: None,
            per_layer: None,
        }
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
