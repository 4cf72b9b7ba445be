//! The attribution methods that the evaluations compare, each turned into one dense score per
//! (query, training document): influence with each preconditioner and normalisation (through
//! `tda_trace`, exactly as `tda trace` computes it) and the lexical baselines BM25 and TF-IDF
//! (through the same tantivy index as `tda trace --index`).
//!
//! Invariant: `scores[q][i]` is method's score of document `i` (corpus order) for query `q`;
//! higher = more responsible. A document a lexical method does not retrieve scores 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use tda_corpus::{CorpusIndex, Document, IndexOptions, Progress, Ranking, ReadOptions};
use tda_curvature::normalize::{Normalization, NormalizeOptions};
use tda_curvature::{Factors, Strategy};
use tda_model::{Tokenizer, Transformer};
use tda_trace::{fit, DocSource, FitOptions, Query, TraceOptions};

/// One attribution method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `tda trace` with this preconditioner and normalisation.
    Influence {
        strategy: Strategy,
        normalization: Normalization,
    },
    /// The query's prompt + completion as a BM25 query (tantivy).
    Bm25,
    /// The same as TF-IDF (Lucene classic similarity).
    TfIdf,
}

fn strategy_of(s: &str) -> Option<Strategy> {
    Some(match s {
        "identity" => Strategy::Identity,
        "diagonal" => Strategy::Diagonal,
        "kfac" => Strategy::Kfac,
        "ekfac" => Strategy::Ekfac,
        _ => return None,
    })
}

fn normalization_name(n: Normalization) -> &'static str {
    match n {
        Normalization::None => "",
        Normalization::TrainGradNorm => "train-grad-norm",
        Normalization::RelatIF => "relatif",
        Normalization::Cosine => "cosine",
    }
}

impl Method {
    /// `ekfac`, `ekfac+cosine`, `identity+relatif`, `bm25`, `tfidf`, …
    pub fn name(&self) -> String {
        match self {
            Method::Influence {
                strategy,
                normalization,
            } => match normalization {
                Normalization::None => strategy.as_str().to_string(),
                n => format!("{}+{}", strategy.as_str(), normalization_name(*n)),
            },
            Method::Bm25 => "bm25".into(),
            Method::TfIdf => "tfidf".into(),
        }
    }

    /// The methods of an evaluation when none are named: every preconditioner, EK-FAC with
    /// each normalisation, the gradient cosine (identity + cosine), BM25 and TF-IDF.
    pub fn defaults() -> Vec<Method> {
        let inf = |strategy, normalization| Method::Influence {
            strategy,
            normalization,
        };
        vec![
            inf(Strategy::Identity, Normalization::None),
            inf(Strategy::Identity, Normalization::Cosine),
            inf(Strategy::Diagonal, Normalization::None),
            inf(Strategy::Kfac, Normalization::None),
            inf(Strategy::Ekfac, Normalization::None),
            inf(Strategy::Ekfac, Normalization::TrainGradNorm),
            inf(Strategy::Ekfac, Normalization::RelatIF),
            inf(Strategy::Ekfac, Normalization::Cosine),
            Method::Bm25,
            Method::TfIdf,
        ]
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bm25" => return Ok(Method::Bm25),
            "tfidf" => return Ok(Method::TfIdf),
            _ => {}
        }
        let (st, norm) = s.split_once('+').unwrap_or((s, ""));
        let bad = || {
            format!("unknown method {s:?}: identity, diagonal, kfac or ekfac, optionally +train-grad-norm, +relatif or +cosine; or bm25, tfidf")
        };
        let strategy = strategy_of(st).ok_or_else(bad)?;
        let normalization = match norm {
            "" => Normalization::None,
            "train-grad-norm" => Normalization::TrainGradNorm,
            "relatif" => Normalization::RelatIF,
            "cosine" => Normalization::Cosine,
            _ => return Err(bad()),
        };
        Ok(Method::Influence {
            strategy,
            normalization,
        })
    }
}

impl Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// Errors of scoring: one line, naming the file or the method.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    #[error(transparent)]
    Trace(#[from] tda_trace::TraceError),
    #[error(transparent)]
    Index(#[from] tda_corpus::CorpusError),
    #[error("{0}")]
    Usage(String),
}

/// Settings shared by the influence methods (default: `tda fit` and `tda trace`'s defaults).
#[derive(Clone, Debug, Default)]
pub struct InfluenceSettings {
    /// Fit settings (`strategy` is replaced by each method's).
    pub fit: FitOptions,
    /// Trace settings (`normalize`, `top_k` and `granularity` are set per method).
    pub trace: TraceOptions,
}

/// Computes dense scores of one model's training corpus, fitting each preconditioner once and
/// building the lexical index once (in `work`).
pub struct Scorer<'a, AD: AutodiffBackend> {
    pub model: &'a Transformer<AD>,
    pub tokenizer: &'a Tokenizer,
    /// The model's fingerprint (recorded in the factors).
    pub fingerprint: String,
    pub corpus: PathBuf,
    pub read: ReadOptions,
    pub docs: &'a [Document],
    pub settings: InfluenceSettings,
    /// Folder for the lexical index.
    pub work: PathBuf,
    factors: HashMap<&'static str, Factors>,
    /// Seconds spent fitting and tracing / searching, per method name.
    pub seconds: HashMap<String, f64>,
}

impl<'a, AD: AutodiffBackend> Scorer<'a, AD> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &'a Transformer<AD>,
        tokenizer: &'a Tokenizer,
        fingerprint: String,
        corpus: &Path,
        read: &ReadOptions,
        docs: &'a [Document],
        settings: InfluenceSettings,
        work: &Path,
    ) -> Self {
        Self {
            model,
            tokenizer,
            fingerprint,
            corpus: corpus.to_path_buf(),
            read: read.clone(),
            docs,
            settings,
            work: work.to_path_buf(),
            factors: HashMap::new(),
            seconds: HashMap::new(),
        }
    }

    /// `scores[q][i]` of `method` for every query and document.
    pub fn scores(
        &mut self,
        method: Method,
        queries: &[Query],
    ) -> Result<Vec<Vec<f64>>, MethodError> {
        let t0 = std::time::Instant::now();
        let out = match method {
            Method::Influence {
                strategy,
                normalization,
            } => self.influence(strategy, normalization, queries)?,
            Method::Bm25 => self.lexical(Ranking::Bm25, queries)?,
            Method::TfIdf => self.lexical(Ranking::TfIdf, queries)?,
        };
        *self.seconds.entry(method.name()).or_default() += t0.elapsed().as_secs_f64();
        Ok(out)
    }

    fn influence(
        &mut self,
        strategy: Strategy,
        normalization: Normalization,
        queries: &[Query],
    ) -> Result<Vec<Vec<f64>>, MethodError> {
        let source = DocSource::corpus_with(&self.corpus, self.read.clone());
        if !self.factors.contains_key(strategy.as_str()) {
            let opts = FitOptions {
                strategy,
                ..self.settings.fit.clone()
            };
            let (factors, _) = fit::fit(
                self.model,
                self.tokenizer,
                &source,
                &opts,
                &self.fingerprint,
                &mut |_| {},
            )?;
            self.factors.insert(strategy.as_str(), factors);
        }
        let factors = &self.factors[strategy.as_str()];
        let opts = TraceOptions {
            top_k: None,
            normalize: NormalizeOptions {
                method: normalization,
                per_token_count: false,
            },
            granularity: tda_trace::Granularity::Document,
            ..self.settings.trace.clone()
        };
        let out = tda_trace::trace(
            self.model,
            self.tokenizer,
            factors,
            queries,
            &source,
            &opts,
            &mut |_, _| {},
        )?;
        let n = self.docs.len();
        let mut scores = vec![vec![0.0; n]; queries.len()];
        for (q, res) in out.queries.iter().enumerate() {
            for r in &res.results {
                let i = r.doc as usize;
                if self.docs.get(i).map(|d| d.id.as_str()) != Some(r.doc_id.as_str()) {
                    return Err(MethodError::Usage(format!(
                        "{}: the trace's document {i} ({}) is not the corpus document it should be; was the corpus changed?",
                        self.corpus.display(),
                        r.doc_id
                    )));
                }
                scores[q][i] = r.score;
            }
        }
        Ok(scores)
    }

    fn lexical(
        &mut self,
        ranking: Ranking,
        queries: &[Query],
    ) -> Result<Vec<Vec<f64>>, MethodError> {
        let dir = self.work.join("index");
        let index = if dir.exists() {
            let idx = CorpusIndex::open(&dir)?;
            idx.check_corpus(&self.corpus)?;
            idx
        } else {
            let opts = IndexOptions {
                read: self.read.clone(),
                ..IndexOptions::default()
            };
            CorpusIndex::build(&self.corpus, &dir, &opts, Progress::Hidden)?.0
        };
        let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(self.docs.len());
        for (i, d) in self.docs.iter().enumerate() {
            if by_id.insert(d.id.as_str(), i).is_some() {
                return Err(MethodError::Usage(format!(
                    "{}: document id {:?} appears twice; lexical baselines need unique ids",
                    self.corpus.display(),
                    d.id
                )));
            }
        }
        let n = self.docs.len();
        let mut scores = vec![vec![0.0; n]; queries.len()];
        for (q, query) in queries.iter().enumerate() {
            let text = tda_trace::prefilter::query_text(query);
            for hit in index.search(&text, n, ranking)? {
                if let Some(&i) = by_id.get(hit.doc_id.as_str()) {
                    scores[q][i] = hit.score as f64;
                }
            }
        }
        Ok(scores)
    }
}
