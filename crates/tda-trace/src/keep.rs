//! What a scoring pass keeps of each candidate: a bounded top-K per query (or everything), and the
//! conversion of kept candidates into result rows (per-token strings, per-layer names).
//!
//! Invariant: a NaN score is never kept silently — see [`Keeper::push`].

use std::sync::Arc;

use tda_curvature::{LayerSpec, Order, TopK};
use tda_model::Tokenizer;

use crate::candidates::Candidate;
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

/// Top-K (bounded heaps) or all results per query.
pub(crate) enum Keeper {
    Top(TopK<Kept>),
    All(Vec<Vec<(f64, Kept)>>, bool),
}

impl Keeper {
    pub fn push(&mut self, q: usize, s: f64, k: Kept) {
        match self {
            Keeper::Top(t) => t.push(q, s, k),
            Keeper::All(v, _) => {
                if !s.is_nan() {
                    v[q].push((s, k))
                }
            }
        }
    }
    pub fn into_sorted(self) -> Vec<Vec<(f64, Kept)>> {
        match self {
            Keeper::Top(t) => t.into_sorted(),
            Keeper::All(mut v, opponents) => {
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
        }
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
        match k {
            Some(k) => Keeper::Top(TopK::new(queries, k, order)),
            None => Keeper::All((0..queries).map(|_| Vec::new()).collect(), opponents),
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
