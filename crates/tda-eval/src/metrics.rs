//! Metrics of attribution quality, each on plain numbers so that any method (influence, BM25,
//! gradient dot product, word overlap) is scored the same way.
//!
//! - Retrieval of a planted truth: [`rank_of`], [`mrr`], [`recall_at_k`].
//! - Agreement of scores: [`pearson`], [`spearman`] (average ranks for ties).
//! - Linear datamodeling score: [`lds`] (Park et al., TRAK): per query, the Spearman correlation
//!   between the summed attribution of each training subset and the measurement of a model
//!   retrained on that subset, averaged over queries.
//! - Citations: [`citation_prf`] (ALCE-style corpus-level precision / recall / F1).
//!
//! Conventions: ranks are 1-based; `None` means "not retrieved" and counts as reciprocal rank 0.
//! Degenerate inputs (fewer than two points, zero variance) give a correlation of `NaN`, never a
//! made-up number; callers decide how to report them.

/// 1-based rank of the first element of `ranked` that is in `relevant`, `None` if none is.
pub fn rank_of<T: PartialEq>(ranked: &[T], relevant: &[T]) -> Option<usize> {
    ranked
        .iter()
        .position(|x| relevant.contains(x))
        .map(|i| i + 1)
}

/// Mean reciprocal rank over queries; an unretrieved truth (`None`) contributes 0. `NaN` when empty.
pub fn mrr(ranks: &[Option<usize>]) -> f64 {
    let s: f64 = ranks
        .iter()
        .map(|r| r.map_or(0.0, |r| 1.0 / r as f64))
        .sum();
    s / ranks.len() as f64
}

/// Share of queries whose truth is ranked within the top `k`. `NaN` when empty.
pub fn recall_at_k(ranks: &[Option<usize>], k: usize) -> f64 {
    ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / ranks.len() as f64
}

/// Pearson correlation of two equally long series; `NaN` if shorter than 2 or constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "pearson: series of different lengths");
    let n = x.len();
    if n < 2 {
        return f64::NAN;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

/// 1-based ranks of `x` in increasing order, ties given their average rank.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman rank correlation (Pearson of the average ranks); `NaN` if shorter than 2 or constant.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "spearman: series of different lengths");
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Linear datamodeling score.
///
/// - `scores[q][i]`: attribution of training example `i` to query `q` (`[queries][train]`);
/// - `subsets[m]`: the training examples kept in retraining run `m` (indices into `scores[q]`);
/// - `outputs[q][m]`: the measurement of query `q` under the model retrained on `subsets[m]`.
///
/// Returns (mean over queries, per-query values). The prediction for a subset is the sum of its
/// members' scores; queries whose correlation is undefined (`NaN`) are left out of the mean and
/// kept as `NaN` in the per-query list.
pub fn lds(scores: &[Vec<f64>], subsets: &[Vec<usize>], outputs: &[Vec<f64>]) -> (f64, Vec<f64>) {
    assert_eq!(scores.len(), outputs.len(), "lds: one output row per query");
    let per_query: Vec<f64> = scores
        .iter()
        .zip(outputs)
        .map(|(s, out)| {
            assert_eq!(out.len(), subsets.len(), "lds: one output per subset");
            let pred: Vec<f64> = subsets
                .iter()
                .map(|m| m.iter().map(|&i| s[i]).sum())
                .collect();
            spearman(&pred, out)
        })
        .collect();
    let ok: Vec<f64> = per_query.iter().copied().filter(|v| !v.is_nan()).collect();
    let mean = ok.iter().sum::<f64>() / ok.len() as f64;
    (mean, per_query)
}

/// Citation precision / recall / F1 against the planted truth (one gold document per sentence).
/// Recall: share of sentences whose gold document is cited. Precision: share of citations that
/// are gold. F1: their harmonic mean (ALCE style, corpus level).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub sentences: usize,
    pub citations: usize,
}

/// Scores `cited[s]` (1-based documents cited for sentence s) against `gold[s]`.
pub fn citation_prf(cited: &[Vec<usize>], gold: &[usize]) -> Prf {
    assert_eq!(
        cited.len(),
        gold.len(),
        "one citation list per gold sentence"
    );
    let hits: usize = cited
        .iter()
        .zip(gold)
        .filter(|(c, g)| c.contains(g))
        .count();
    let n_cites: usize = cited.iter().map(Vec::len).sum();
    let recall = if gold.is_empty() {
        0.0
    } else {
        hits as f64 / gold.len() as f64
    };
    let precision = if n_cites == 0 {
        0.0
    } else {
        hits as f64 / n_cites as f64
    };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    Prf {
        precision,
        recall,
        f1,
        sentences: gold.len(),
        citations: n_cites,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrieval_metrics_by_hand() {
        assert_eq!(rank_of(&["a", "b", "c"], &["c", "x"]), Some(3));
        assert_eq!(rank_of(&["a"], &["z"]), None);
        let ranks = [Some(1), Some(2), None, Some(4)];
        assert!((mrr(&ranks) - (1.0 + 0.5 + 0.0 + 0.25) / 4.0).abs() < 1e-15);
        assert_eq!(recall_at_k(&ranks, 2), 0.5);
        assert_eq!(recall_at_k(&ranks, 4), 0.75);
    }

    #[test]
    fn correlations_by_hand() {
        // Perfect monotone but non-linear: Spearman 1, Pearson < 1.
        let x = [1.0, 2.0, 3.0, 4.0];
        let y = [1.0, 4.0, 9.0, 100.0];
        assert!((spearman(&x, &y) - 1.0).abs() < 1e-12);
        assert!(pearson(&x, &y) < 0.95);
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&x, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Ties take their average rank: ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4].
        assert_eq!(
            average_ranks(&[1.0, 2.0, 2.0, 3.0]),
            vec![1.0, 2.5, 2.5, 4.0]
        );
        // scipy.stats.spearmanr([1,2,3,4,5],[5,6,7,8,7]) = 0.8207826816681233
        let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]);
        assert!((r - 0.8207826816681233).abs() < 1e-12, "{r}");
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn lds_by_hand() {
        // Two queries, three training examples, three subsets.
        let scores = vec![vec![1.0, 2.0, 4.0], vec![1.0, 1.0, 1.0]];
        let subsets = vec![vec![0], vec![0, 1], vec![1, 2]];
        // Query 0: predictions 1, 3, 6; outputs in the same order → 1. Reversed → −1.
        // Query 1: predictions 1, 2, 2 (a tie) against outputs 3, 2, 1 → −0.866….
        let outputs = vec![vec![0.1, 0.2, 0.3], vec![3.0, 2.0, 1.0]];
        let (mean, per) = lds(&scores, &subsets, &outputs);
        assert!((per[0] - 1.0).abs() < 1e-12);
        let want = spearman(&[1.0, 2.0, 2.0], &[3.0, 2.0, 1.0]);
        assert!((per[1] - want).abs() < 1e-12 && (want + 0.8660254037844387).abs() < 1e-12);
        assert!((mean - (1.0 + want) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn citation_prf_by_hand() {
        // Sentence 1 cites its gold doc and one other; sentence 2 cites nothing.
        let p = citation_prf(&[vec![1, 3], vec![]], &[1, 2]);
        assert_eq!(
            (p.precision, p.recall, p.sentences, p.citations),
            (0.5, 0.5, 2, 2)
        );
        assert!((p.f1 - 0.5).abs() < 1e-15);
        assert_eq!(citation_prf(&[vec![]], &[1]).f1, 0.0);
    }
}
