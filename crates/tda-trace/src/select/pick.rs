//! Ranking and selection: sort by score (ties keep pool order), walk the ranking, skip
//! near-duplicates of what is already selected, stop at the budget.

use std::collections::HashSet;

use crate::error::{Result, TraceError};

/// How much to select.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// The `n` best documents (`n ≥ 1`).
    TopN(usize),
    /// The best `⌈pct/100 · scored⌉` documents, `pct ∈ (0, 100]`.
    TopPct(f64),
    /// Documents in rank order while their summed token count stays `≤ tokens`; the walk stops
    /// at the first document that would exceed it (the selection is a prefix of the ranking,
    /// duplicates aside).
    Tokens(u64),
}

impl Budget {
    /// Checks the bounds (one-line errors naming the flag).
    pub fn validate(&self) -> Result<()> {
        match *self {
            Budget::TopN(0) => Err(TraceError::Usage("--top-n must be at least 1".into())),
            Budget::TopPct(p) if !(p > 0.0 && p <= 100.0) => Err(TraceError::Usage(format!(
                "--top-pct {p}: must be in (0, 100]"
            ))),
            Budget::Tokens(0) => Err(TraceError::Usage(
                "--token-budget must be at least 1".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Near-duplicate filter: a document is dropped when its word 5-gram shingle Jaccard with an
/// already-selected document is `≥ threshold`, or when it equals one after whitespace/case
/// normalisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dedup {
    pub threshold: f64,
}

/// One selected document.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Picked {
    /// Index in the pool.
    pub doc: usize,
    /// 1-based rank among the selected documents.
    pub rank: usize,
    pub score: f64,
    pub tokens: u64,
}

/// What [`pick`] selected.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// In rank order.
    pub picked: Vec<Picked>,
    /// Documents with a score (the ranking's length).
    pub ranked: usize,
    /// Near-duplicates skipped during the walk.
    pub dropped_duplicates: usize,
    /// Tokens of the selected documents.
    pub tokens: u64,
}

/// Normalised words: lower case, split on whitespace.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_lowercase).collect()
}

fn hash_str(s: &[String]) -> u64 {
    // FNV-1a over the words with a separator: deterministic across runs.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in s {
        for b in w.bytes().chain(std::iter::once(0x1f)) {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    h
}

/// Hashed word 5-gram shingles of `text` after normalisation (a text of fewer than 5 words is
/// one shingle of all its words; an empty text has none).
pub fn shingles(text: &str) -> HashSet<u64> {
    let w = words(text);
    if w.is_empty() {
        return HashSet::new();
    }
    if w.len() < 5 {
        return std::iter::once(hash_str(&w)).collect();
    }
    w.windows(5).map(hash_str).collect()
}

fn jaccard(a: &HashSet<u64>, b: &HashSet<u64>) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let inter = a.intersection(b).count();
    inter as f64 / (a.len() + b.len() - inter) as f64
}

/// Ranks the documents with a score (`scores[i] = None`: not ranked) by decreasing score, ties in
/// pool order, and selects along the ranking within `budget`. `text(i)` and `tokens(i)` are asked
/// only for documents the walk reaches.
pub fn pick(
    scores: &[Option<f64>],
    budget: Budget,
    dedup: Option<Dedup>,
    text: &dyn Fn(usize) -> String,
    tokens: &mut dyn FnMut(usize) -> Result<u64>,
) -> Result<Selection> {
    budget.validate()?;
    let mut order: Vec<usize> = (0..scores.len()).filter(|&i| scores[i].is_some()).collect();
    // Stable sort: equal scores keep pool order.
    order.sort_by(|&a, &b| scores[b].unwrap().total_cmp(&scores[a].unwrap()));
    let ranked = order.len();
    let max_n = match budget {
        Budget::TopN(n) => n,
        Budget::TopPct(p) => ((p / 100.0 * ranked as f64).ceil() as usize).max(1),
        Budget::Tokens(_) => usize::MAX,
    };
    let mut sel = Selection {
        ranked,
        ..Default::default()
    };
    let mut kept_shingles: Vec<HashSet<u64>> = Vec::new();
    let mut exact: HashSet<String> = HashSet::new();
    for &i in &order {
        if sel.picked.len() >= max_n {
            break;
        }
        if let Some(d) = dedup {
            let t = text(i);
            let norm = words(&t).join(" ");
            let sh = shingles(&t);
            if exact.contains(&norm) || kept_shingles.iter().any(|k| jaccard(&sh, k) >= d.threshold)
            {
                sel.dropped_duplicates += 1;
                continue;
            }
            exact.insert(norm);
            kept_shingles.push(sh);
        }
        let n_tok = tokens(i)?;
        if let Budget::Tokens(b) = budget {
            if sel.tokens + n_tok > b {
                break;
            }
        }
        sel.tokens += n_tok;
        sel.picked.push(Picked {
            doc: i,
            rank: sel.picked.len() + 1,
            score: scores[i].unwrap(),
            tokens: n_tok,
        });
    }
    if sel.picked.is_empty() {
        return Err(TraceError::Usage(match (budget, order.first()) {
            (_, None) => "no pool document has a score (none made a window)".into(),
            (Budget::Tokens(b), Some(&i)) => format!(
                "--token-budget {b}: the best-ranked document alone has {} tokens",
                tokens(i)?
            ),
            _ => "nothing selected".into(),
        }));
    }
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        scores: &[Option<f64>],
        texts: &[&str],
        budget: Budget,
        dedup: Option<f64>,
    ) -> Selection {
        let t: Vec<String> = texts.iter().map(|s| s.to_string()).collect();
        pick(
            scores,
            budget,
            dedup.map(|threshold| Dedup { threshold }),
            &|i| t[i].clone(),
            &mut |i| Ok(t[i].split_whitespace().count() as u64),
        )
        .unwrap()
    }

    #[test]
    fn ranks_by_score_ties_in_pool_order() {
        let s = [Some(1.0), Some(3.0), None, Some(1.0), Some(2.0)];
        let texts = ["a", "b", "c", "d", "e"];
        let sel = run(&s, &texts, Budget::TopN(10), None);
        let docs: Vec<usize> = sel.picked.iter().map(|p| p.doc).collect();
        assert_eq!(docs, [1, 4, 0, 3]);
        assert_eq!(sel.ranked, 4);
        assert_eq!(sel.picked[0].rank, 1);
        let sel = run(&s, &texts, Budget::TopPct(50.0), None);
        assert_eq!(sel.picked.len(), 2);
        let sel = run(&s, &texts, Budget::TopPct(1.0), None);
        assert_eq!(sel.picked.len(), 1);
    }

    #[test]
    fn token_budget_is_a_prefix_never_exceeded() {
        let s = [Some(4.0), Some(3.0), Some(2.0), Some(1.0)];
        let texts = ["a b c", "d e", "f g h i", "j"];
        let sel = run(&s, &texts, Budget::Tokens(6), None);
        assert_eq!(sel.picked.len(), 2);
        assert_eq!(sel.tokens, 5);
        let sel = run(&s, &texts, Budget::Tokens(5), None);
        assert_eq!(sel.tokens, 5);
        let t: Vec<String> = texts.iter().map(|s| s.to_string()).collect();
        let e = pick(&s, Budget::Tokens(2), None, &|i| t[i].clone(), &mut |i| {
            Ok(t[i].split_whitespace().count() as u64)
        })
        .unwrap_err();
        assert!(e.to_string().contains("3 tokens"), "{e}");
    }

    #[test]
    fn dedup_drops_near_and_exact_duplicates() {
        let base = "the quick brown fox jumps over the lazy dog near the river bank today";
        let near = "the quick brown fox jumps over the lazy dog near the river bank tonight";
        let exact = "The  QUICK brown fox jumps over the lazy dog near the river bank today";
        let other = "a completely different sentence about selecting fine tuning data well";
        let s = [Some(4.0), Some(3.0), Some(2.0), Some(1.0)];
        let texts = [base, near, exact, other];
        let sel = run(&s, &texts, Budget::TopN(10), Some(0.8));
        let docs: Vec<usize> = sel.picked.iter().map(|p| p.doc).collect();
        assert_eq!(docs, [0, 3]);
        assert_eq!(sel.dropped_duplicates, 2);
        // Without dedup everything is kept; with a threshold above the near-duplicate's Jaccard
        // (9/11 ≈ 0.82) only the exact duplicate goes.
        assert_eq!(run(&s, &texts, Budget::TopN(10), None).picked.len(), 4);
        let sel = run(&s, &texts, Budget::TopN(10), Some(0.9));
        assert_eq!(sel.dropped_duplicates, 1);
        // Duplicates do not count towards N.
        let sel = run(&s, &texts, Budget::TopN(2), Some(0.8));
        assert_eq!(sel.picked.len(), 2);
        assert_eq!(sel.picked[1].doc, 3);
    }

    #[test]
    fn bad_budgets_are_refused() {
        for b in [
            Budget::TopN(0),
            Budget::TopPct(0.0),
            Budget::TopPct(100.5),
            Budget::Tokens(0),
        ] {
            assert!(b.validate().is_err(), "{b:?}");
        }
        assert!(Budget::TopPct(100.0).validate().is_ok());
    }
}
