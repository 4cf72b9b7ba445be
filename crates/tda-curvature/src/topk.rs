//! Streaming top-K per query (bounded heaps), so callers never hold dense query × candidate tensors.

use crate::score::CandidateScores;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Which end of the ranking to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Largest scores (proponents: up-weighting raises f).
    Largest,
    /// Smallest scores (opponents).
    Smallest,
}

struct Entry<K> {
    key: f64, // score, negated for `Smallest`
    seq: u64, // insertion order, tie-break (earlier wins)
    item: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl<K> Eq for Entry<K> {}
impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<K> Ord for Entry<K> {
    /// "Greater" = better; BinaryHeap of `Reverse` keeps the worst on top.
    fn cmp(&self, o: &Self) -> Ordering {
        self.key
            .total_cmp(&o.key)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

/// Per-query bounded heaps of `(score, item)`. NaN scores are ignored.
pub struct TopK<K> {
    k: usize,
    order: Order,
    heaps: Vec<BinaryHeap<std::cmp::Reverse<Entry<K>>>>,
    counter: u64,
}

impl<K: Clone> TopK<K> {
    pub fn new(n_queries: usize, k: usize, order: Order) -> Self {
        Self {
            k,
            order,
            heaps: (0..n_queries)
                .map(|_| BinaryHeap::with_capacity(k + 1))
                .collect(),
            counter: 0,
        }
    }

    /// Offers `(score, item)` to query `q`.
    pub fn push(&mut self, q: usize, score: f64, item: K) {
        if score.is_nan() || self.k == 0 {
            return;
        }
        let key = match self.order {
            Order::Largest => score,
            Order::Smallest => -score,
        };
        self.counter += 1;
        let e = Entry {
            key,
            seq: self.counter,
            item,
        };
        let h = &mut self.heaps[q];
        if h.len() < self.k {
            h.push(std::cmp::Reverse(e));
        } else if let Some(worst) = h.peek() {
            if e > worst.0 {
                h.pop();
                h.push(std::cmp::Reverse(e));
            }
        }
    }

    /// Offers every candidate's total score; `items[b]` names candidate `b` of the batch.
    pub fn push_totals(&mut self, scores: &CandidateScores, items: &[K]) {
        assert_eq!(items.len(), scores.batch, "one item per candidate");
        for (b, item) in items.iter().enumerate() {
            for q in 0..scores.n_queries {
                self.push(q, scores.total(b, q), item.clone());
            }
        }
    }

    /// Best-first `(score, item)` lists, one per query.
    pub fn into_sorted(self) -> Vec<Vec<(f64, K)>> {
        let order = self.order;
        self.heaps
            .into_iter()
            .map(|h| {
                let mut v: Vec<Entry<K>> = h.into_iter().map(|r| r.0).collect();
                v.sort_by(|a, b| b.cmp(a));
                v.into_iter()
                    .map(|e| {
                        (
                            if order == Order::Largest {
                                e.key
                            } else {
                                -e.key
                            },
                            e.item,
                        )
                    })
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The heap result equals a full sort of the stream (ties broken by first arrival).
    #[test]
    fn topk_equals_full_sort() {
        let mut x: u64 = 12345;
        let scores: Vec<f64> = (0..1000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % 200) as f64 - 100.0
            })
            .collect();
        for order in [Order::Largest, Order::Smallest] {
            let mut tk = TopK::new(1, 10, order);
            for (i, &s) in scores.iter().enumerate() {
                tk.push(0, s, i);
            }
            tk.push(0, f64::NAN, 9999);
            let got = tk.into_sorted().pop().unwrap();
            let mut idx: Vec<usize> = (0..scores.len()).collect();
            idx.sort_by(|&a, &b| {
                let c = scores[b].total_cmp(&scores[a]);
                let c = if order == Order::Largest {
                    c
                } else {
                    c.reverse()
                };
                c.then(a.cmp(&b))
            });
            let want: Vec<(f64, usize)> = idx[..10].iter().map(|&i| (scores[i], i)).collect();
            assert_eq!(got, want);
        }
    }
}
