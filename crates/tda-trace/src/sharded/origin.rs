//! Where a partial artifact of a sharded job comes from, and the checks a merge makes before it
//! adds anything: one kind, one model, one corpus, one set of settings, and the shards `0..n`
//! each exactly once (a missing, duplicate or stale shard is a one-line error naming the file).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::candidates::{DocSource, PassStats};
use crate::error::{Result, TraceError};
use crate::shard::Shard;

/// What a partial holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartKind {
    /// Sums of the covariance pass (A, S) of a fit.
    FitCovariance,
    /// Sums of the Λ pass of a fit.
    FitLambda,
    /// Scores of a trace.
    Trace,
}

impl std::fmt::Display for PartKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PartKind::FitCovariance => "fit covariance pass",
            PartKind::FitLambda => "fit Λ pass",
            PartKind::Trace => "trace",
        })
    }
}

/// The header of a partial (stored as JSON in the file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    pub kind: PartKind,
    /// Fingerprint of the model folder.
    pub model: String,
    /// Fingerprint of the corpus: one `"<file> <size> <hash>"` per file.
    pub corpus: Vec<String>,
    pub shard: Shard,
    /// Everything else that must be equal across shards (strategy, layers, labels, windows, …).
    pub settings: serde_json::Value,
    /// What the shard read (adds up across shards to the unsharded pass).
    pub stats: PassStats,
    /// Loss targets of the shard's windows.
    pub loss_targets: u64,
    /// Seconds the shard's pass took (not compared).
    pub seconds: f64,
    /// A Λ pass after the eigenbases: the eigenbases folder it used (not compared; its
    /// fingerprint is in `settings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eigenbases: Option<PathBuf>,
}

/// The content fingerprint of a candidate source (file names relative to the corpus root, so
/// shards may see the corpus mounted at different paths).
pub fn source_fingerprint(source: &DocSource) -> Result<Vec<String>> {
    let file = |rel: &str, path: &Path| -> Result<String> {
        let fp = tda_corpus::fingerprint_file(path)?;
        Ok(format!("{rel} {} {:016x}", fp.size, fp.hash))
    };
    match source {
        DocSource::Corpus { path, .. } => tda_corpus::CorpusSpec::resolve(path)?
            .files
            .iter()
            .map(|f| file(&f.rel, &f.path))
            .collect(),
        DocSource::Pairs { path, .. } => Ok(vec![file(
            &path
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
            path,
        )?]),
        DocSource::Docs(docs) => {
            // Documents in memory (the prefilter's): their ids and texts.
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for d in docs.iter() {
                for b in d.id.bytes().chain([0]).chain(d.text.bytes()).chain([0]) {
                    h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            Ok(vec![format!("{} documents {h:016x}", docs.len())])
        }
    }
}

/// How the source is read (which records become documents), for the settings of a partial.
pub fn source_settings(source: &DocSource) -> String {
    match source {
        DocSource::Corpus { read, .. } => format!("{read:?}"),
        DocSource::Pairs { .. } => "prompt/completion pairs".into(),
        DocSource::Docs(_) => "documents".into(),
    }
}

/// Checks that `parts` are one complete set of shards of one job and returns their positions in
/// shard order (`0..n`). Errors name the offending file.
pub fn check_complete(parts: &[(PathBuf, Origin)]) -> Result<Vec<usize>> {
    let Some((p0, o0)) = parts.first() else {
        return Err(TraceError::Usage("no partial files to merge".into()));
    };
    let n = o0.shard.count;
    let mut by_index: Vec<Option<usize>> = vec![None; n];
    for (i, (p, o)) in parts.iter().enumerate() {
        let differs = |what: &str| {
            TraceError::Mismatch(format!(
                "{}: {what} differs from {}'s: not shards of the same job (a stale partial? rerun this shard)",
                p.display(),
                p0.display()
            ))
        };
        if o.kind != o0.kind {
            return Err(TraceError::Mismatch(format!(
                "{}: a {} partial, but {} is a {} partial",
                p.display(),
                o.kind,
                p0.display(),
                o0.kind
            )));
        }
        if o.model != o0.model {
            return Err(differs("the model (fingerprint)"));
        }
        if o.corpus != o0.corpus {
            return Err(differs("the corpus (fingerprint)"));
        }
        if o.settings != o0.settings {
            return Err(differs(&format!(
                "the settings ({})",
                settings_diff(&o.settings, &o0.settings)
            )));
        }
        if o.shard.count != n {
            return Err(TraceError::Mismatch(format!(
                "{}: shard {} of a {}-shard job, but {} is shard {} (mixed shard counts)",
                p.display(),
                o.shard,
                o.shard.count,
                p0.display(),
                o0.shard
            )));
        }
        if let Some(j) = by_index[o.shard.index] {
            return Err(TraceError::Usage(format!(
                "{} and {} are both shard {}: a shard is never counted twice (remove one)",
                parts[j].0.display(),
                p.display(),
                o.shard
            )));
        }
        by_index[o.shard.index] = Some(i);
    }
    let missing: Vec<String> = by_index
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_none())
        .map(|(i, _)| i.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(TraceError::Usage(format!(
            "missing shard{} {} of {n} (have {} of {n}): run {} (e.g. `sbatch --array={}`) and merge again",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            n - missing.len(),
            if missing.len() > 1 { "them" } else { "it" },
            missing.join(",")
        )));
    }
    Ok(by_index.into_iter().map(|i| i.expect("complete")).collect())
}

/// The settings keys whose values differ, e.g. `fisher: "true seed 0" vs "empirical"`.
fn settings_diff(a: &serde_json::Value, b: &serde_json::Value) -> String {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| {
                    let show =
                        |v: Option<&serde_json::Value>| v.map_or("none".into(), |v| v.to_string());
                    format!("{k}: {} vs {}", show(a.get(k)), show(b.get(k)))
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
        _ => "differ".into(),
    }
}

/// The stats of all shards together, in shard order.
pub fn merged_stats(parts: &[(PathBuf, Origin)], order: &[usize]) -> PassStats {
    let mut stats = PassStats {
        source: parts[order[0]].1.stats.source.clone(),
        ..Default::default()
    };
    for &i in order {
        stats.add(&parts[i].1.stats);
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(index: usize, count: usize) -> Origin {
        Origin {
            kind: PartKind::FitCovariance,
            model: "m".into(),
            corpus: vec!["c.jsonl 10 00".into()],
            shard: Shard { index, count },
            settings: serde_json::json!({"fisher": "empirical", "max_len": 16}),
            stats: PassStats::default(),
            loss_targets: 0,
            seconds: 0.0,
            eigenbases: None,
        }
    }

    fn parts(os: Vec<Origin>) -> Vec<(PathBuf, Origin)> {
        os.into_iter()
            .enumerate()
            .map(|(i, o)| (PathBuf::from(format!("p{i}")), o))
            .collect()
    }

    #[test]
    fn a_merge_takes_each_shard_exactly_once() {
        let ok = parts(vec![origin(2, 3), origin(0, 3), origin(1, 3)]);
        assert_eq!(check_complete(&ok).unwrap(), vec![1, 2, 0]);
        let dup = parts(vec![origin(0, 3), origin(1, 3), origin(1, 3), origin(2, 3)]);
        let e = check_complete(&dup).unwrap_err().to_string();
        assert!(e.contains("p1 and p2 are both shard 1/3"), "{e}");
        let missing = parts(vec![origin(0, 4), origin(2, 4)]);
        let e = check_complete(&missing).unwrap_err().to_string();
        assert!(e.starts_with("missing shards 1, 3 of 4"), "{e}");
        let mixed = parts(vec![origin(0, 2), origin(1, 3)]);
        assert!(check_complete(&mixed)
            .unwrap_err()
            .to_string()
            .contains("mixed shard counts"));
        let mut stale = origin(1, 2);
        stale.settings["fisher"] = "true seed 0".into();
        let e = check_complete(&parts(vec![origin(0, 2), stale]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fisher: \"true seed 0\" vs \"empirical\""),
            "{e}"
        );
        let mut other = origin(1, 2);
        other.model = "x".into();
        let e = check_complete(&parts(vec![origin(0, 2), other]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the model (fingerprint) differs"), "{e}");
        assert!(check_complete(&[]).is_err());
    }
}
