//! Prepared queries on disk (`tda trace --save-queries` / `--queries-from`): a fixed target set
//! is measured and preconditioned once, then traced over any number of new corpus shards. The
//! file (`tda_curvature::storage::save_queries`) holds the stored rank-r factors exactly as
//! scored, the [`Factors::id`] they were preconditioned with, and as its origin the model
//! fingerprint, measurement, damping, rank, the queries' texts and their values `f`. Reading it
//! back checks the model and the factors, so scores from it equal a trace that recomputes them.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tda_curvature::storage::{load_queries, save_queries, SavedQueries};
use tda_curvature::{Damping, Factors, Rank};

use crate::error::{Result, TraceError};
use crate::measure::Measurement;
use crate::query::Query;
use crate::trace::PreparedQueries;

#[derive(Serialize, Deserialize)]
struct Origin {
    model: String,
    measurement: Measurement,
    /// `heuristic` or `absolute`, and its number.
    damping: (String, f64),
    /// 0 = full rank.
    rank: usize,
    queries: Vec<Query>,
    values: Vec<f32>,
}

/// Writes `prepared` (made with `factors` on the model of fingerprint `model`) to `path`,
/// atomically.
pub fn save(path: &Path, prepared: &PreparedQueries, model: &str, factors: &Factors) -> Result<()> {
    let origin = Origin {
        model: model.to_string(),
        measurement: prepared.measurement,
        damping: match prepared.damping {
            Damping::Heuristic(s) => ("heuristic".into(), s),
            Damping::Absolute(l) => ("absolute".into(), l),
        },
        rank: match prepared.rank {
            Rank::Full => 0,
            Rank::Truncated(r) => r,
        },
        queries: prepared.queries.clone(),
        values: prepared.values.clone(),
    };
    let saved = SavedQueries {
        specs: factors.specs(),
        factors: factors.id(),
        queries: prepared.preconditioned.clone(),
        origin: serde_json::to_string(&origin).expect("the origin serialises"),
    };
    Ok(save_queries(&saved, path)?)
}

/// Reads queries saved by [`save`] for the model of fingerprint `model` and `factors`: another
/// model, other factors (another fit, even of the same model) or other layers are errors that
/// name the file.
pub fn load(path: &Path, model: &str, factors: &Factors) -> Result<PreparedQueries> {
    let saved = load_queries(path)?;
    let bad = |msg: String| TraceError::Mismatch(format!("{}: {msg}", path.display()));
    let origin: Origin = serde_json::from_str(&saved.origin)
        .map_err(|e| bad(format!("unreadable origin of the saved queries ({e})")))?;
    if origin.model != model {
        return Err(bad(
            "these queries were prepared on another model (fingerprint differs)".into(),
        ));
    }
    if saved.specs != factors.specs() {
        return Err(bad(
            "these queries were prepared for other tracked layers than the factors'".into(),
        ));
    }
    if saved.factors != factors.id() {
        return Err(bad(
            "these queries were preconditioned with other factors (another fit): prepare them again with --save-queries".into(),
        ));
    }
    let n = saved.queries.len();
    if origin.queries.len() != n || origin.values.len() != n || n == 0 {
        return Err(bad(format!(
            "{n} saved queries but {} texts and {} values",
            origin.queries.len(),
            origin.values.len()
        )));
    }
    let damping = match origin.damping.0.as_str() {
        "heuristic" => Damping::Heuristic(origin.damping.1),
        "absolute" => Damping::Absolute(origin.damping.1),
        k => return Err(bad(format!("unknown damping kind {k:?}"))),
    };
    Ok(PreparedQueries {
        queries: origin.queries,
        values: origin.values,
        preconditioned: saved.queries,
        measurement: origin.measurement,
        damping,
        rank: match origin.rank {
            0 => Rank::Full,
            r => Rank::Truncated(r),
        },
        seconds: 0.0,
    })
}
