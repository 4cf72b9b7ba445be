//! Evaluation data with planted truth and the metrics that score attributions against it.
//!
//! Job: make the corpora, RAG sets and baselines on which `tda`'s attributions are *checked*, and
//! turn rankings and scores into quality numbers. Nothing here is used to compute an attribution.
//!
//! - [`biographies`]: short biographies of invented people; each fact appears in exactly one
//!   document, so "which document taught the model this fact" has a known answer (the demo corpus).
//! - [`rag`]: questions with retrieved documents where each answer sentence is stated in exactly one
//!   document, plus distractors sharing its words (citation ground truth).
//! - [`explain_world`]: people whose facts are only in the training data and questions whose other
//!   fact is only in the prompt's documents (ground truth for `tda explain`'s routing).
//! - [`lexical`]: the word-overlap citation baseline that context attribution must beat.
//! - [`metrics`]: MRR, recall@k, Pearson / Spearman, LDS, citation precision / recall / F1.
//! - [`words`]: the invented vocabulary both generators draw from.
//! - [`bank`]: models retrained on random subsets of a corpus (cached, resumable).
//! - [`methods`]: every attribution method as dense scores per (query, document): influence per
//!   preconditioner and normalisation, BM25, TF-IDF.
//! - [`lds`]: the linear datamodeling score of each method over a bank, with a bootstrap CI.
//! - [`facts`] and [`fact_tracing`]: planted facts in varied templates with hard negatives, and
//!   the MRR / recall@k of their stating documents per method, stratified.
//! - [`cite_eval`]: citation P/R/F1 (all sentences, tie sentences), faithfulness and cost of
//!   each context-attribution method on the planted RAG set, beside word overlap.
//! - [`curation_eval`]: recall of planted corrupted documents (shuffled, wrong-fact swaps) at
//!   the top of the self-influence ranking, beside ‖∇L‖² and the token loss.
//! - [`demo`]: `tda demo` — a fact world traced end to end (generations, EK-FAC, BM25 ranks,
//!   citations) and its one-page HTML report.
//! - [`selection_eval`]: fine-tuning on what `tda select` picks vs on random documents, and the
//!   loss on a held-out target skill.
//! - [`tail_patch`]: one training step on each method's top-k documents and the change of the
//!   target's log-probability (TrackStar's causal check), beside a random control.
//!
//! Invariants: every generator is deterministic in its seed (same seed → same bytes, which models
//! in `tests/fixtures` rely on). Only the CLI, the benches and tests depend on this crate; no
//! library crate does (they may use it as a dev-dependency).

#[cfg(feature = "runs")]
pub mod bank;
pub mod biographies;
pub mod cite_eval;
#[cfg(feature = "runs")]
pub mod curation_eval;
#[cfg(feature = "runs")]
pub mod demo;
pub mod explain_world;
#[cfg(feature = "runs")]
pub mod fact_tracing;
#[cfg(feature = "runs")]
pub mod facts;
#[cfg(feature = "runs")]
pub mod lds;
pub mod lexical;
#[cfg(feature = "runs")]
pub mod methods;
pub mod metrics;
pub mod rag;
#[cfg(feature = "runs")]
pub mod selection_eval;
#[cfg(feature = "runs")]
pub mod tail_patch;
pub mod words;

pub use biographies::{biographies, tiny_gpt2, write_jsonl, Person, SyntheticDoc};
pub use explain_world::{
    explain_world, score_routes, ExplainCase, ExplainWorld, RouteScore, RoutedToken, TrainItem,
};
pub use metrics::{citation_prf, lds, mrr, pearson, rank_of, recall_at_k, spearman, Prf};
pub use rag::{rag_set, rag_training_set, template, training_text, RagExample};
