//! Data selection for fine-tuning (`tda select`): score every document of a candidate **pool**
//! against a **target** set, rank, take the top-N / top-% / a token budget (optionally dropping
//! near-duplicates), and write the selected records as they were, with their rank and score.
//!
//! Score of a pool document `z` against the targets `q_1..q_m` (every method): the **mean over
//! targets** of its per-target score, `s(z) = (1/m) Σ_j s(z, q_j)`. Per method:
//! - [`Method::Ekfac`]: the EK-FAC influence of [`crate::trace`] (`−∇f_qᵀ (G + λI)⁻¹ ∇L(z)` with
//!   `f` = log p(completion | prompt)); a document longer than one window scores the **sum** of
//!   its windows' scores (the influence of the whole document: gradients add up).
//! - [`Method::GradCosine`] (LESS-style): cosine between the document's projected training
//!   gradient direction `−∇L(z)` (windows summed, then L2-normalised) and each target's projected
//!   `∇ log p(completion | prompt)`; projection: [`tda_curvature::GradientProjection`]
//!   (Rademacher, Kronecker-structured per layer, fixed seed) over the block layers.
//! - [`Method::RepSim`]: cosine between mean-pooled final hidden states (the input of `lm_head`,
//!   after the final norm), pooled over every real token of the document's windows and of the
//!   target's prompt + completion.
//! - [`Method::Bm25`]: tantivy BM25 of the document for the query text `prompt + " " +
//!   completion`, over a temporary index of the pool; documents the query does not retrieve
//!   score 0.
//!
//! Sign: for every method a larger score means "more like what the targets need" (for EK-FAC:
//! up-weighting the document raises the targets' log-probability).
//!
//! Documents that make no window (fewer than 2 tokens, or past `--max-windows`) have no model
//! score and are never selected by the model methods; they are counted in [`Scores::unscored`].

mod pick;
mod pool;
mod score;

pub use pick::{pick, shingles, Budget, Dedup, Picked, Selection};
pub use pool::{read_pool, read_targets, write_selection, OutFormat, Pool};
pub use score::{
    score_bm25, score_ekfac, score_grad_cosine, score_repsim, GradCosineOptions, Scores,
};

use std::str::FromStr;

/// How pool documents are scored against the targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Ekfac,
    GradCosine,
    RepSim,
    Bm25,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ekfac => "ekfac",
            Self::GradCosine => "grad-cosine",
            Self::RepSim => "repsim",
            Self::Bm25 => "bm25",
        }
    }
}

/// Serialised as its command-line name (`ekfac`, `grad-cosine`, `repsim`, `bm25`).
impl serde::Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ekfac" => Ok(Self::Ekfac),
            "grad-cosine" => Ok(Self::GradCosine),
            "repsim" => Ok(Self::RepSim),
            "bm25" => Ok(Self::Bm25),
            _ => Err(format!("method {s:?}: ekfac, grad-cosine, repsim or bm25")),
        }
    }
}
