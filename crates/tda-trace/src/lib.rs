//! The influence pipelines of `tda`: they connect the model's gradient taps (`tda-model`) to the
//! EK-FAC math on arrays (`tda-curvature`) and to the corpus (`tda-corpus`).
//!
//! Inputs: a model (`tda_model::Transformer`) and its tokenizer, a corpus ([`DocSource`]: a corpus
//! path streamed through `tda-corpus`, or documents in memory), queries ([`Query`]: prompt +
//! completion). Outputs: factors on disk ([`fit::save`]), and [`TraceOutput`] (JSON via serde,
//! parquet via [`write_parquet`]).
//!
//! Data flow, one module per step:
//! - [`candidates`]: documents → model-length token windows with their text spans → batches.
//! - [`budget`]: how a batch is tapped within a memory budget (windows per forward, layer groups).
//! - [`host`]: a batch → per-layer taps `a` `[B·T, d_in]`, `g` `[B·T, d_out]` on the host, for the
//!   training loss (labels from the data or sampled from the model) or a [`measure`]ment.
//! - [`device`]: the same sums and scores as tensor operations on the model's device (only sums
//!   and scores are copied), chosen by [`WindowOptions::compute`].
//! - [`fit`]: taps of the corpus → [`tda_curvature::FactorFitter`] passes (A, S, eigenbases, Λ) →
//!   factors saved with the model [`fingerprint`]; [`modules`] chooses the tracked layers.
//! - [`prefilter`]: queries → BM25 / TF-IDF hits in a corpus index → candidate documents.
//! - [`query`]: queries → measurement taps → preconditioned rank-r queries (all batched).
//! - [`trace`]: **one** pass over the candidate windows, all queries scored together → streaming
//!   top-K of documents (sum over their windows) or windows, with per-token / per-layer scores;
//!   target sets aggregated into one query; multi-stage (pretraining → fine-tuning) scores with the
//!   fine-tuning preconditioner folded into the query. [`self_influence`] and [`relabel`] reuse
//!   the steps.
//! - [`saved_queries`]: prepared queries saved once, traced over new corpus shards.
//! - [`output`]: result structs and the parquet writer.
//!
//! Invariants a caller can rely on:
//! - **Sign**: a positive score means that up-weighting the candidate in training raises the
//!   measurement `f` (for `logprob`: makes the completion more likely).
//! - Per-token scores of a window sum to its score; per-layer scores sum to it too. A document's
//!   score is the sum of its windows' scores; a target set's (`Aggregate::Mean`) the mean of its
//!   queries' scores.
//! - Scores do not depend on the batch size or on how many queries share a pass.
//! - Factors are used only with the model they were fitted on (fingerprint and layer shapes are
//!   checked by [`fit::load_checked`]); every artifact is written atomically through `tda-io`.

pub mod budget;
pub mod candidates;
pub mod device;
pub mod ensemble;
pub mod error;
pub mod fingerprint;
pub mod fit;
pub mod host;
mod keep;
pub mod measure;
pub mod modules;
pub mod output;
pub mod prefilter;
pub mod query;
pub mod relabel;
mod sample;
pub mod saved_queries;
pub mod select;
pub mod self_influence;
pub mod shard;
pub mod sharded;
pub mod stages;
pub mod trace;

pub use budget::{MemoryBudget, TapPlan};
pub use candidates::{Candidate, CandidateKind, DocSource, PassStats, WindowOptions};
pub use error::{Result, TraceError};
pub use fingerprint::model_fingerprint;
pub use fit::{fit, Fisher, FitOptions, FitProgress, FitReport};
pub use measure::Measurement;
pub use modules::ModuleSelection;
pub use output::Granularity;
pub use output::{write_parquet, ResultRow, TraceOutput, TraceReport};
pub use prefilter::{candidate_source, prefilter, prefilter_pairs, Prefilter};
pub use query::{read_queries, read_rows, Aggregate, Query, RelabelRow};
pub use relabel::relabel;
pub use self_influence::self_influence;
pub use shard::Shard;
pub use stages::{check_same_family, FineTuneDamping, FineTuned, Hessians, StagesInfo};
pub use trace::{
    prepare_queries, trace, trace_multistage, trace_prepared, PreparedQueries, TraceOptions,
};

/// Factor file name inside a factors folder.
pub const FACTORS_FILE: &str = "factors.safetensors";
/// Human-readable summary written beside the factors.
pub const FIT_REPORT_FILE: &str = "fit.json";
