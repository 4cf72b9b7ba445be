//! Ensembles over training states (TracIn-CP / TRAK-style averaging): the same queries and
//! candidates traced at several checkpoints of one run, each with its own factors, then combined.
//!
//! Each state's scores of a query are divided by their standard deviation over the candidates
//! (so that every state weighs the same, whatever its gradient scale), and the states are
//! averaged. On the tiny LDS bank this raises EK-FAC's LDS from 0.603 to 0.634 with 4 states
//! (`benches/quality.md` §1).
//!
//! Invariants: every state scored the same candidates for the same queries (checked); the
//! combined ranking is sorted by the mean standardised score (most negative first for
//! opponents), ties keep the first state's order; rows carry the first state's text and ids
//! (a document row's text is the first state's best window).

use std::collections::HashMap;

use crate::error::{Result, TraceError};
pub use crate::output::EnsembleInfo;
use crate::output::TraceOutput;

/// What one state's scores of a query are divided by: their population standard deviation
/// (1 when it is 0 or not finite, so that a constant state contributes zeros rather than NaN).
pub fn scale(x: &[f64]) -> f64 {
    let n = x.len().max(1) as f64;
    let mean = x.iter().sum::<f64>() / n;
    let sd = (x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    if sd > 0.0 && sd.is_finite() {
        sd
    } else {
        1.0
    }
}

/// Combines `outputs` (one per state, each traced with every candidate kept: `top_k: None`)
/// into one output that keeps `top_k` rows per query. `fingerprints[s]` names state `s`.
/// Errors: fewer than two states, or states that scored different queries or candidates.
pub fn combine(
    outputs: Vec<TraceOutput>,
    fingerprints: Vec<String>,
    top_k: Option<usize>,
    opponents: bool,
) -> Result<TraceOutput> {
    if outputs.len() < 2 || fingerprints.len() != outputs.len() {
        return Err(TraceError::Usage(
            "an ensemble needs at least two states, each with its fingerprint".into(),
        ));
    }
    let mut outputs = outputs.into_iter();
    let mut first = outputs.next().expect("two states");
    let rest: Vec<TraceOutput> = outputs.collect();
    let differ = |what: &str| {
        TraceError::Mismatch(format!(
            "the ensemble's states scored different {what}: give checkpoints of one model (same layers) and trace the same corpus"
        ))
    };
    // A document row's window is its best window, which differs between states.
    let by_window = first.granularity == crate::output::Granularity::Window;
    for (q, res) in first.queries.iter_mut().enumerate() {
        let k = |r: &crate::output::ResultRow| (r.doc, if by_window { r.window } else { 0 });
        let own: Vec<f64> = res.results.iter().map(|r| r.score).collect();
        let s0 = scale(&own);
        let mut sum: Vec<f64> = own.iter().map(|v| v / s0).collect();
        let index: HashMap<(u64, usize), usize> = res
            .results
            .iter()
            .enumerate()
            .map(|(i, r)| (k(r), i))
            .collect();
        for other in &rest {
            let o = other.queries.get(q).ok_or_else(|| differ("queries"))?;
            if o.id != res.id || o.results.len() != res.results.len() {
                return Err(differ(if o.id != res.id {
                    "queries"
                } else {
                    "candidates"
                }));
            }
            let scores: Vec<f64> = o.results.iter().map(|r| r.score).collect();
            let s = scale(&scores);
            for r in &o.results {
                let i = *index.get(&k(r)).ok_or_else(|| differ("candidates"))?;
                sum[i] += r.score / s;
            }
        }
        let states = (1 + rest.len()) as f64;
        for (r, v) in res.results.iter_mut().zip(&sum) {
            r.score = v / states;
            // The per-window best and the breakdowns are one state's, not the ensemble's.
            r.best_window_score = None;
            r.per_token = None;
            r.per_layer = None;
        }
        // Stable: ties keep the first state's candidate order.
        res.results.sort_by(|a, b| {
            if opponents {
                a.score.total_cmp(&b.score)
            } else {
                b.score.total_cmp(&a.score)
            }
        });
        if let Some(k) = top_k {
            res.results.truncate(k);
        }
        for (i, r) in res.results.iter_mut().enumerate() {
            r.rank = i + 1;
        }
    }
    for o in &rest {
        first.report.total_s += o.report.total_s;
    }
    first.ensemble = Some(EnsembleInfo {
        states: fingerprints,
    });
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{QueryResult, ResultRow};

    fn row(doc: u64, score: f64) -> ResultRow {
        ResultRow {
            rank: 0,
            doc,
            doc_id: format!("d{doc}"),
            window: 0,
            span: (0, 1),
            text: String::new(),
            score,
            windows: Some(1),
            best_window_score: Some(score),
            per_token: None,
            per_layer: None,
        }
    }

    fn output(scores: &[f64]) -> TraceOutput {
        TraceOutput {
            measurement: Default::default(),
            strategy: "ekfac".into(),
            damping: String::new(),
            rank: String::new(),
            normalization: "none".into(),
            per_token_count: false,
            granularity: Default::default(),
            aggregate: None,
            stages: None,
            ensemble: None,
            queries: vec![QueryResult {
                id: "q".into(),
                prompt: String::new(),
                completion: String::new(),
                value: 0.0,
                results: scores
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| row(i as u64, s))
                    .collect(),
            }],
            report: Default::default(),
            queries_fingerprint: 0,
        }
    }

    #[test]
    fn states_weigh_the_same_whatever_their_scale() {
        // State b is state a's scores ×1000 on another order: standardised, they agree exactly,
        // so the ensemble ranks as a does; a third state that reverses a moves ties only.
        let a = output(&[3.0, 1.0, 2.0, 0.0]);
        let b = output(&[3000.0, 1000.0, 2000.0, 0.0]);
        let c = combine(
            vec![a.clone(), b],
            vec!["a".into(), "b".into()],
            Some(3),
            false,
        )
        .unwrap();
        let ids: Vec<&str> = c.queries[0]
            .results
            .iter()
            .map(|r| r.doc_id.as_str())
            .collect();
        assert_eq!(ids, ["d0", "d2", "d1"]);
        let sd = scale(&[3.0, 1.0, 2.0, 0.0]);
        assert!((c.queries[0].results[0].score - 3.0 / sd).abs() < 1e-12);
        assert_eq!(c.queries[0].results[2].rank, 3);
        assert_eq!(c.ensemble.as_ref().unwrap().states, ["a", "b"]);
        // Mean of standardised scores: (x/sd_a + y/sd_b) / 2.
        let d = output(&[0.0, 2.0, 1.0, 3.0]);
        let e = combine(vec![a, d], vec!["a".into(), "d".into()], None, false).unwrap();
        for r in &e.queries[0].results {
            assert!((r.score - 1.5 / sd).abs() < 1e-12, "{}", r.score);
        }
    }

    #[test]
    fn different_candidates_are_refused() {
        let a = output(&[1.0, 2.0]);
        let b = output(&[1.0, 2.0, 3.0]);
        let err = combine(vec![a, b], vec!["a".into(), "b".into()], None, false).unwrap_err();
        assert!(err.to_string().contains("different candidates"), "{err}");
        assert!(combine(vec![output(&[1.0])], vec!["a".into()], None, false).is_err());
    }
}
