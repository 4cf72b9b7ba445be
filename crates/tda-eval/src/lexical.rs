//! The lexical-overlap baseline: cite, for each answer sentence, the documents sharing the most
//! idf-weighted words with it (ties all cited, at most `max`).

use std::collections::{HashMap, HashSet};

fn words(s: &str) -> HashSet<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Overlap score of each document with `sentence`: Σ over shared words of ln(1 + N / df), df
/// counted over `docs`.
pub fn overlap_scores(sentence: &str, docs: &[&str]) -> Vec<f64> {
    let dw: Vec<HashSet<String>> = docs.iter().map(|d| words(d)).collect();
    let mut df: HashMap<&str, usize> = HashMap::new();
    for w in &dw {
        for x in w {
            *df.entry(x.as_str()).or_default() += 1;
        }
    }
    let n = docs.len() as f64;
    let sw = words(sentence);
    dw.iter()
        .map(|w| {
            sw.iter()
                .filter(|x| w.contains(*x))
                .map(|x| (1.0 + n / df[x.as_str()] as f64).ln())
                .sum()
        })
        .collect()
}

/// 1-based documents to cite for `sentence`: those with the top positive overlap score (ties
/// within 1e-9 all cited), at most `max`, in document order.
pub fn cite(sentence: &str, docs: &[&str], max: usize) -> Vec<usize> {
    let s = overlap_scores(sentence, docs);
    let best = s.iter().cloned().fold(0.0f64, f64::max);
    if best <= 0.0 {
        return Vec::new();
    }
    (0..docs.len())
        .filter(|&i| s[i] >= best - 1e-9)
        .take(max)
        .map(|i| i + 1)
        .collect()
}
