//! Sharded jobs for a cluster scheduler (Slurm array jobs, Kubernetes Indexed Jobs): each task
//! runs one stage over its [`crate::Shard`] of the corpus and writes a partial; a merge checks
//! that the partials are one complete set of shards of one job and combines them exactly.
//!
//! - [`origin`]: what a partial records (model, corpus, shard, settings, stats) and the checks.
//! - [`fit`]: covariance / Λ sums per shard → eigenbases → factors.
//! - [`trace`]: scores per shard (parquet, row groups) → the unsharded top-K.

pub mod fit;
pub mod origin;
pub mod trace;

pub use fit::{fit_shard, merge_fit, save_merged, MergedFit, Stage, STAGE_FILE};
pub use origin::{Origin, PartKind};
pub use trace::{merge_trace, trace_shard};
