//! Ranking checked against an independent computation of BM25 and classic TF-IDF, plus numbers
//! checked by hand on a three-document corpus.

mod common;
use common::*;
use std::collections::HashMap;
use tda_corpus::*;

/// Independent analyzer: lowercase, split on non-alphanumeric chars (stop-words disabled in the
/// indexes of this file).
fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
        .collect()
}

/// tantivy stores document lengths on one byte: exact up to 40, then a geometric scale.
/// The independent scorer uses the same quantiser (and exact lengths for avgdl, as tantivy).
fn quantised(len: usize) -> f64 {
    use tantivy::fieldnorm::FieldNormReader;
    FieldNormReader::id_to_fieldnorm(FieldNormReader::fieldnorm_to_id(len as u32)) as f64
}

struct Reference {
    docs: Vec<(String, HashMap<String, u32>, usize)>,
    df: HashMap<String, u64>,
    avgdl: f64,
}

impl Reference {
    fn new(docs: &[(String, String)]) -> Self {
        let mut df: HashMap<String, u64> = HashMap::new();
        let mut out = Vec::new();
        let mut total = 0usize;
        for (id, text) in docs {
            let toks = tokens(text);
            total += toks.len();
            let mut tf: HashMap<String, u32> = HashMap::new();
            for t in &toks {
                *tf.entry(t.clone()).or_default() += 1;
            }
            for t in tf.keys() {
                *df.entry(t.clone()).or_default() += 1;
            }
            out.push((id.clone(), tf, toks.len()));
        }
        let avgdl = total as f64 / docs.len() as f64;
        Reference {
            docs: out,
            df,
            avgdl,
        }
    }

    fn query(&self, q: &str) -> HashMap<String, u32> {
        let mut m = HashMap::new();
        for t in tokens(q) {
            if self.df.contains_key(&t) {
                *m.entry(t).or_default() += 1;
            }
        }
        m
    }

    /// Okapi BM25, k1 = 1.2, b = 0.75, idf = ln(1 + (N - n + 0.5) / (n + 0.5)).
    fn bm25(&self, q: &str) -> Vec<(String, f64)> {
        let n = self.docs.len() as f64;
        let qt = self.query(q);
        self.score(
            |tf, len, t| {
                let df = self.df[t] as f64;
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                let tf = tf as f64;
                qt[t] as f64 * idf * 2.2 * tf
                    / (tf + 1.2 * (0.25 + 0.75 * quantised(len) / self.avgdl))
            },
            &qt,
        )
    }

    /// Lucene ClassicSimilarity: qtf · √tf · idf² / √len, idf = 1 + ln((N+1)/(n+1)).
    fn tfidf(&self, q: &str) -> Vec<(String, f64)> {
        let n = self.docs.len() as f64;
        let qt = self.query(q);
        self.score(
            |tf, len, t| {
                let idf = 1.0 + ((n + 1.0) / (self.df[t] as f64 + 1.0)).ln();
                qt[t] as f64 * (tf as f64).sqrt() * idf * idf / quantised(len).sqrt()
            },
            &qt,
        )
    }

    fn score(
        &self,
        f: impl Fn(u32, usize, &str) -> f64,
        qt: &HashMap<String, u32>,
    ) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = self
            .docs
            .iter()
            .filter_map(|(id, tf, len)| {
                let s: f64 = qt
                    .keys()
                    .filter_map(|t| tf.get(t).map(|&c| f(c, *len, t)))
                    .sum();
                (s > 0.0).then(|| (id.clone(), s))
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

/// Same top-k as the reference, ties at the cut allowed: scores agree to 1e-4 relative, every
/// document strictly above the k-th reference score is present, and each hit's score is its
/// reference score.
fn assert_same_top_k(hits: &[Hit], reference: &[(String, f64)], k: usize) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1e-6);
    let want = &reference[..k.min(reference.len())];
    assert_eq!(hits.len(), want.len(), "number of hits");
    let by_id: HashMap<&str, f64> = reference.iter().map(|(i, s)| (i.as_str(), *s)).collect();
    for (h, (_, ws)) in hits.iter().zip(want) {
        assert!(
            close(h.score as f64, *ws),
            "rank score {} vs reference {}",
            h.score,
            ws
        );
        let own = by_id[h.doc_id.as_str()];
        assert!(
            close(h.score as f64, own),
            "{}: score {} vs reference {}",
            h.doc_id,
            h.score,
            own
        );
    }
    if let Some(&(_, kth)) = want.last() {
        for (id, s) in want {
            if *s > kth && !close(*s, kth) {
                assert!(
                    hits.iter().any(|h| &h.doc_id == id),
                    "{id} (score {s}) missing from top-{k}"
                );
            }
        }
    }
}

fn corpus(n: usize, seed: u64) -> Vec<(String, String)> {
    // Zipf-like vocabulary of 80 words; lengths 1..200 tokens so field norms get quantised.
    let vocab: Vec<String> = (0..80).map(|i| format!("w{i}")).collect();
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let len = 1 + (rng.below(100) * rng.below(100) / 50) as usize;
            let words: Vec<&str> = (0..len)
                .map(|_| {
                    let r = rng.below(80 * 80) as f64;
                    let idx = (80.0 * (r / 6400.0).powi(3)) as usize; // skewed to small ids
                    vocab[idx.min(79)].as_str()
                })
                .collect();
            (
                format!("doc{i}"),
                words.join(if i % 2 == 0 { " " } else { ", " }),
            )
        })
        .collect()
}

fn build(docs: &[(String, String)], dir: &std::path::Path) -> CorpusIndex {
    let p = dir.join("c.jsonl");
    let body: String = docs
        .iter()
        .map(|(id, t)| serde_json::json!({"id": id, "text": t}).to_string() + "\n")
        .collect();
    std::fs::write(&p, body).unwrap();
    let opts = IndexOptions {
        analyzer: AnalyzerSettings {
            stopwords: false,
            ..Default::default()
        },
        threads: 2,
        ..Default::default()
    };
    CorpusIndex::build(&p, &dir.join("idx"), &opts, Progress::Hidden)
        .unwrap()
        .0
}

#[test]
fn hand_checked_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let docs = vec![
        ("d1".to_string(), "apple banana".to_string()),
        ("d2".to_string(), "apple apple cherry".to_string()),
        ("d3".to_string(), "cherry".to_string()),
    ];
    let idx = build(&docs, dir.path());
    // N = 3, n(apple) = 2, avgdl = 6/3 = 2.
    // idf = ln(1 + 1.5/2.5) = ln 1.6 = 0.4700036.
    // d2: tf 2, dl 3: 0.4700036 · 2.2 · 2 / (2 + 1.2 · (0.25 + 0.75 · 1.5)) = 0.5665797.
    // d1: tf 1, dl 2: 0.4700036 · 2.2 · 1 / (1 + 1.2) = 0.4700036.
    let hits = idx.search("Apple?", 10, Ranking::Bm25).unwrap();
    assert_eq!(
        hits.iter().map(|h| h.doc_id.as_str()).collect::<Vec<_>>(),
        ["d2", "d1"]
    );
    assert!(
        (hits[0].score - 0.5665797).abs() < 1e-5,
        "{}",
        hits[0].score
    );
    assert!(
        (hits[1].score - 0.4700036).abs() < 1e-5,
        "{}",
        hits[1].score
    );
    // TF-IDF: idf = 1 + ln(4/3) = 1.2876821, idf² = 1.6581254.
    // d2: √2 · 1.6581254 / √3 = 1.3538592; d1: 1 · 1.6581254 / √2 = 1.1724739.
    let hits = idx.search("apple", 10, Ranking::TfIdf).unwrap();
    assert_eq!(
        hits.iter().map(|h| h.doc_id.as_str()).collect::<Vec<_>>(),
        ["d2", "d1"]
    );
    assert!(
        (hits[0].score - 1.3538592).abs() < 1e-5,
        "{}",
        hits[0].score
    );
    assert!(
        (hits[1].score - 1.1724739).abs() < 1e-5,
        "{}",
        hits[1].score
    );
    // A repeated query term counts twice; an unknown term counts nothing.
    let twice = idx.search("apple apple zebra", 10, Ranking::Bm25).unwrap();
    assert!((twice[0].score - 2.0 * 0.5665797).abs() < 1e-5);
    assert!(idx.search("zebra", 10, Ranking::Bm25).unwrap().is_empty());
    assert!(idx.search("apple", 0, Ranking::Bm25).unwrap().is_empty());
}

#[test]
fn bm25_and_tfidf_top_k_match_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let docs = corpus(400, 7);
    let idx = build(&docs, dir.path());
    let reference = Reference::new(&docs);
    assert!(
        reference.docs.iter().any(|d| d.2 > 60),
        "want lengths past the exact fieldnorm range"
    );
    let queries = [
        "w3",
        "w70 w71 w72",
        "w1 w1 w1 w50 w60, W61 w62 w79 unknownword",
        &docs[17].1.clone(),
        &(docs[3].1.clone() + " " + &docs[250].1),
    ];
    for q in queries {
        for k in [1, 5, 20, 1000] {
            let o = QueryOptions {
                ranking: Ranking::Bm25,
                max_terms: None,
                max_doc_freq_ratio: None,
                tantivy_engine: false,
            };
            let hits = idx.search_with(q, k, &o).unwrap().hits;
            assert_same_top_k(&hits, &reference.bm25(q), k);
            // tantivy's own BM25 evaluation agrees too.
            let t = QueryOptions {
                tantivy_engine: true,
                ..o.clone()
            };
            let hits = idx.search_with(q, k, &t).unwrap().hits;
            assert_same_top_k(&hits, &reference.bm25(q), k);
            let o = QueryOptions {
                ranking: Ranking::TfIdf,
                ..o
            };
            let hits = idx.search_with(q, k, &o).unwrap().hits;
            assert_same_top_k(&hits, &reference.tfidf(q), k);
        }
    }
}

#[test]
fn segments_do_not_change_scores() {
    // Index in two parts (build + add: two segments, statistics over both) vs. one build.
    let dir = tempfile::tempdir().unwrap();
    let docs = corpus(300, 11);
    let reference = Reference::new(&docs);
    let write = |p: &std::path::Path, part: &[(String, String)]| {
        let body: String = part
            .iter()
            .map(|(id, t)| serde_json::json!({"id": id, "text": t}).to_string() + "\n")
            .collect();
        std::fs::write(p, body).unwrap();
    };
    let root = dir.path().join("corpus");
    std::fs::create_dir(&root).unwrap();
    write(&root.join("a.jsonl"), &docs[..120]);
    let opts = IndexOptions {
        analyzer: AnalyzerSettings {
            stopwords: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let (mut idx, _) =
        CorpusIndex::build(&root, &dir.path().join("idx"), &opts, Progress::Hidden).unwrap();
    write(&root.join("b.jsonl"), &docs[120..]);
    idx.add(std::slice::from_ref(&root), Progress::Hidden, 1, 64 << 20)
        .unwrap();
    assert_eq!(idx.num_docs(), 300);
    let q = "w5 w9 w9 w33 w40";
    for (ranking, tantivy_engine) in [
        (Ranking::Bm25, false),
        (Ranking::Bm25, true),
        (Ranking::TfIdf, false),
    ] {
        let o = QueryOptions {
            ranking,
            max_terms: None,
            max_doc_freq_ratio: None,
            tantivy_engine,
        };
        let hits = idx.search_with(q, 25, &o).unwrap().hits;
        let r = if ranking == Ranking::Bm25 {
            reference.bm25(q)
        } else {
            reference.tfidf(q)
        };
        assert_same_top_k(&hits, &r, 25);
    }
}

#[test]
fn long_query_pruning_keeps_highest_tf_idf_terms() {
    let dir = tempfile::tempdir().unwrap();
    let docs = corpus(300, 3);
    let idx = build(&docs, dir.path());
    let q = docs[5].1.clone() + " " + &docs[6].1 + " " + &docs[7].1;
    let full = QueryOptions {
        max_terms: None,
        ..Default::default()
    };
    let (all, dropped) = idx.query_terms(&q, &full).unwrap();
    assert_eq!(dropped, 0);
    let capped = QueryOptions {
        max_terms: Some(4),
        ..Default::default()
    };
    let (top, dropped) = idx.query_terms(&q, &capped).unwrap();
    assert_eq!(top.len(), 4.min(all.len()));
    assert_eq!(dropped, all.len() - top.len());
    assert_eq!(top, all[..top.len()].to_vec());
    for w in all.windows(2) {
        assert!(w[0].selection_score >= w[1].selection_score);
    }
    let n = idx.num_docs();
    for t in &all {
        assert!((t.selection_score - t.qtf as f64 * bm25_idf(t.doc_freq, n)).abs() < 1e-9);
    }
    // max_doc_freq_ratio drops common terms.
    let rare = QueryOptions {
        max_doc_freq_ratio: Some(0.05),
        max_terms: None,
        ..Default::default()
    };
    let (kept, _) = idx.query_terms(&q, &rare).unwrap();
    assert!(kept.iter().all(|t| t.doc_freq as f64 <= 0.05 * n as f64));
    assert!(kept.len() < all.len());
}

#[test]
fn stopwords_and_stemming_settings_are_applied_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.txt");
    std::fs::write(&p, "the running dogs\nthe cat runs\nof and the\n").unwrap();
    let opts = IndexOptions {
        analyzer: AnalyzerSettings {
            stemming: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let (idx, summary) =
        CorpusIndex::build(&p, &dir.path().join("i"), &opts, Progress::Hidden).unwrap();
    assert_eq!(summary.docs, 3);
    assert!(
        idx.search("the", 10, Ranking::Bm25).unwrap().is_empty(),
        "stop-word matched"
    );
    let hits = idx.search("run", 10, Ranking::Bm25).unwrap();
    assert_eq!(hits.len(), 2, "stemming: run ~ running ~ runs");
    // Reopened: the analyzer comes from the index, not from defaults.
    drop(idx);
    let idx = CorpusIndex::open(&dir.path().join("i")).unwrap();
    assert!(idx.info().analyzer.stemming);
    assert_eq!(idx.search("run", 10, Ranking::Bm25).unwrap().len(), 2);
}
