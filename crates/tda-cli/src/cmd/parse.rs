//! Value parsers of the influence flags shared by `trace`, `self-influence`, `explain`, `select`
//! and `eval` (damping, query rank, top-k, normalisation, ensemble states).

use std::path::PathBuf;

use tda_curvature::{Damping, Normalization, Rank};

pub fn parse_damping(s: &str) -> Result<Damping, String> {
    if s == "heuristic" {
        return Ok(Damping::default());
    }
    let bad = || {
        format!(
            "damping {s:?}: `heuristic` (0.1 × mean Λ per layer), `heuristic:S` (S × mean Λ, S > 0) or a non-negative number (the same λ for every layer)"
        )
    };
    if let Some(scale) = s.strip_prefix("heuristic:") {
        return match scale.parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Ok(Damping::Heuristic(v)),
            _ => Err(bad()),
        };
    }
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(Damping::Absolute(v)),
        _ => Err(bad()),
    }
}

pub fn parse_rank(s: &str) -> Result<Rank, String> {
    if s == "full" {
        return Ok(Rank::Full);
    }
    match s.parse::<usize>() {
        Ok(r) if r > 0 => Ok(Rank::Truncated(r)),
        _ => Err(format!("rank {s:?}: `full` or a positive integer")),
    }
}

/// `--top-k K` or `all` (a newtype: clap reads a bare `Option` field as "flag may be absent").
#[derive(Clone, Copy, Debug)]
pub struct TopKArg(pub Option<usize>);

pub fn parse_top_k(s: &str) -> Result<TopKArg, String> {
    if s == "all" {
        return Ok(TopKArg(None));
    }
    s.parse::<usize>()
        .map(|k| TopKArg(Some(k)))
        .map_err(|_| format!("top-k {s:?}: `all` or an integer"))
}

/// `--ft-damping`: the recorded proximal coefficient, or a damping as `--damping`.
#[derive(Clone, Copy, Debug)]
pub enum FtDampingArg {
    Proximal,
    Damping(Damping),
}

pub fn parse_ft_damping(s: &str) -> Result<FtDampingArg, String> {
    if s == "proximal" {
        return Ok(FtDampingArg::Proximal);
    }
    match parse_damping(s) {
        Ok(Damping::Absolute(0.0)) => Err(format!(
            "ft-damping {s:?}: α must be positive (it is also the fine-tuning proximity)"
        )),
        Ok(d) => Ok(FtDampingArg::Damping(d)),
        Err(_) => Err(format!(
            "ft-damping {s:?}: `proximal`, `heuristic`, `heuristic:S` or a positive number"
        )),
    }
}

pub fn parse_norm(s: &str) -> Result<Normalization, String> {
    match s {
        "none" => Ok(Normalization::None),
        "train-grad-norm" => Ok(Normalization::TrainGradNorm),
        "relatif" => Ok(Normalization::RelatIF),
        "cosine" => Ok(Normalization::Cosine),
        _ => Err(format!(
            "normalization {s:?}: none, train-grad-norm, relatif or cosine"
        )),
    }
}

/// `--ensemble CHECKPOINT=FACTORS`: a model folder and its factors folder.
pub fn parse_ensemble_state(s: &str) -> Result<(PathBuf, PathBuf), String> {
    match s.split_once('=') {
        Some((m, f)) if !m.is_empty() && !f.is_empty() => Ok((m.into(), f.into())),
        _ => Err(format!(
            "ensemble state {s:?}: give CHECKPOINT_DIR=FACTORS_DIR (a model folder and the factors `tda fit` wrote for it)"
        )),
    }
}
