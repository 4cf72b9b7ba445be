//! The influence pipeline of `tda`: it connects the model's gradient taps (`tda-model`) to the
//! EK-FAC math on arrays (`tda-curvature`) and to the corpus (`tda-corpus`).
//!
//! - [`fit`]: corpus → token windows → batches → taps of the training loss (labels sampled from the
//!   model, "true Fisher", seeded; or the data's own tokens) → [`tda_curvature::FactorFitter`]
//!   passes → factors saved atomically with the model [`fingerprint`].
//! - [`trace`]: queries (prompt + completion) → taps of the measurement `f` → preconditioned
//!   low-rank queries → **one** pass over the candidate windows (whole corpus or the prefilter's
//!   documents), all queries scored together → streaming top-K with per-token / per-layer scores.
//!   Also self-influence and relabeling influence.
//! - [`output`]: serde result structs (JSON) and parquet output (atomic).
//!
//! **Sign convention**: a positive score means that up-weighting the candidate in training raises
//! the measurement `f` (for `logprob`: makes the completion more likely).

pub mod candidates;
pub mod error;
pub mod fingerprint;
pub mod fit;
pub mod host;
pub mod modules;
pub mod output;
pub mod trace;

pub use candidates::{Candidate, DocSource, WindowOptions};
pub use error::{Result, TraceError};
pub use fingerprint::model_fingerprint;
pub use fit::{fit, Fisher, FitOptions, FitProgress, FitReport};
pub use modules::ModuleSelection;
pub use output::{write_parquet, ResultRow, TraceOutput};
pub use trace::{
    relabel, self_influence, trace, Measurement, Query, RelabelRow, TraceOptions, TraceReport,
};

/// Factor file name inside a factors folder.
pub const FACTORS_FILE: &str = "factors.safetensors";
/// Human-readable summary written beside the factors.
pub const FIT_REPORT_FILE: &str = "fit.json";
