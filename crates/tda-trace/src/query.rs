//! Queries: a prompt and the completion whose measurement is attributed; their tokenization, and
//! their preparation for the one-pass kernel (measurement taps → query gradients →
//! preconditioning with the factors → rank-r compression, all queries batched).

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use tda_curvature::{
    precondition, query_gradients, Damping, Factors, LayerSpec, QueryBatch, QueryGradient,
    QueryLayerGrad, Rank,
};
use tda_model::{TokenBatch, Tokenizer, Transformer};

use crate::error::{Result, TraceError};
use crate::host::{host_taps, Scalar, Target};
use crate::measure::Measurement;

/// One query: `f` is measured on the completion tokens given the prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Query {
    #[serde(default)]
    pub id: String,
    pub prompt: String,
    pub completion: String,
}

/// A training example whose continuation is replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RelabelRow {
    #[serde(default)]
    pub id: String,
    pub prompt: String,
    pub original: String,
    pub replacement: String,
}

/// Reads a jsonl file of rows (`Query` or `RelabelRow`): one JSON object per non-blank line.
/// Errors name the file and line; a file with no row is an error (`what` names the rows).
pub fn read_rows<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    what: &str,
) -> Result<Vec<T>> {
    Ok(read_numbered_rows(path, what)?
        .into_iter()
        .map(|(_, row)| row)
        .collect())
}

/// [`read_rows`] with each row's 0-based line number.
pub fn read_numbered_rows<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    what: &str,
) -> Result<Vec<(u64, T)>> {
    let text = read_utf8(path)?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(line)
            .map_err(|e| TraceError::Usage(format!("{} line {}: {e}", path.display(), i + 1)))?;
        rows.push((i as u64, row));
    }
    if rows.is_empty() {
        return Err(TraceError::Usage(format!(
            "{}: no {what} (expected one JSON object per line)",
            path.display()
        )));
    }
    Ok(rows)
}

/// The whole file `path` as UTF-8 text (errors name the file and the first bad byte).
fn read_utf8(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| crate::error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        TraceError::Usage(format!(
            "{}: not UTF-8 text (byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Token ids of a query: BOS + prompt, then the completion (tokenized separately), and the
/// number of prompt tokens.
pub fn encode_query(
    tokenizer: &Tokenizer,
    cfg: &tda_model::ModelConfig,
    prompt: &str,
    completion: &str,
) -> Result<(Vec<u32>, usize)> {
    let (mut ids, _) = tda_model::infer::encode_for_scoring(tokenizer, cfg, prompt)?;
    let n_prompt = ids.len();
    let enc = tokenizer
        .encode(completion, false)
        .map_err(|e| TraceError::Usage(format!("cannot tokenize the completion: {e}")))?;
    if enc.get_ids().is_empty() {
        return Err(TraceError::Usage(format!(
            "the completion {completion:?} has no tokens"
        )));
    }
    ids.extend_from_slice(enc.get_ids());
    Ok((ids, n_prompt))
}

/// Queries, preconditioned and packed for the one-pass kernel.
pub struct PreparedQueries {
    pub batch: QueryBatch,
    /// Value of `f` per query.
    pub values: Vec<f32>,
    pub seconds: f64,
}

/// Measurement taps of all queries (batched), query gradients, preconditioning, compression.
#[allow(clippy::too_many_arguments)]
pub fn prepare_queries<AD: AutodiffBackend>(
    frozen: &Transformer<AD>,
    tokenizer: &Tokenizer,
    factors: &Factors,
    queries: &[Query],
    measurement: Measurement,
    damping: Damping,
    rank: Rank,
    batch_size: usize,
) -> Result<PreparedQueries> {
    let t0 = Instant::now();
    let specs = factors.specs();
    let (grads, values) =
        measure_queries(frozen, tokenizer, &specs, queries, measurement, batch_size)?;
    let pq = precondition(factors, damping, &grads, rank)?;
    let batch = QueryBatch::new(&specs, &pq)?;
    Ok(PreparedQueries {
        batch,
        values,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Gradients of the measurement `f` of each query (taps of the completion tokens, batched) on
/// the layers `specs`, and the value of `f` per query.
pub fn measure_queries<AD: AutodiffBackend>(
    frozen: &Transformer<AD>,
    tokenizer: &Tokenizer,
    specs: &[LayerSpec],
    queries: &[Query],
    measurement: Measurement,
    batch_size: usize,
) -> Result<(Vec<QueryGradient>, Vec<f32>)> {
    if queries.is_empty() {
        return Err(TraceError::Usage("no queries".into()));
    }
    let pad = frozen.config.eos_token_id.unwrap_or(0);
    let mut grads = Vec::with_capacity(queries.len());
    let mut values = Vec::with_capacity(queries.len());
    for chunk in queries.chunks(batch_size.max(1)) {
        let mut seqs = Vec::with_capacity(chunk.len());
        let mut prompts = Vec::with_capacity(chunk.len());
        for q in chunk {
            let (ids, n) = encode_query(tokenizer, &frozen.config, &q.prompt, &q.completion)?;
            seqs.push(ids);
            prompts.push(n);
        }
        let batch = TokenBatch::new(&seqs, pad)?;
        let t1 = batch.seq_len - 1;
        let mut weights = vec![0f32; batch.batch * t1];
        for (b, (s, &np)) in seqs.iter().zip(&prompts).enumerate() {
            for t in 0..t1 {
                if t + 1 >= np && t + 1 < s.len() {
                    weights[b * t1 + t] = 1.0;
                }
            }
        }
        let target = Target {
            kind: measurement,
            weights,
        };
        let taps = host_taps(frozen, specs, &batch, Scalar::Measure(&target))?;
        grads.extend(query_gradients(specs, &taps.layer_batches())?);
        values.extend_from_slice(&taps.values);
    }
    Ok((grads, values))
}

/// How the queries of a target set become one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// `∇f_target = (1/Q) Σ_q ∇f_q`: scores are the mean of the per-query scores.
    Mean,
    /// `∇f_target = Σ_q ∇f_q`: scores are the sum of the per-query scores.
    Sum,
}

impl std::str::FromStr for Aggregate {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mean" => Ok(Self::Mean),
            "sum" => Ok(Self::Sum),
            _ => Err(format!("aggregate {s:?}: mean or sum")),
        }
    }
}

/// One query gradient for the whole set: the factored rows of every query stacked per layer
/// (`Σ_q g_qᵀ a_q` is the gradient of `Σ_q f_q`), scaled by `1/Q` for the mean. Exact: the
/// preconditioner and the score are linear in the query gradient, so the target's score is the
/// mean (sum) of the per-query scores before any rank-r compression.
pub fn aggregate_gradients(grads: &[QueryGradient], how: Aggregate) -> QueryGradient {
    let w = match how {
        Aggregate::Mean => 1.0 / grads.len().max(1) as f64,
        Aggregate::Sum => 1.0,
    };
    let n_l = grads.first().map_or(0, |g| g.layers.len());
    let layers = (0..n_l)
        .map(|l| {
            let mut out = QueryLayerGrad {
                n: 0,
                g: vec![],
                a: vec![],
            };
            for q in grads {
                let x = &q.layers[l];
                out.n += x.n;
                out.g.extend(x.g.iter().map(|v| v * w));
                out.a.extend_from_slice(&x.a);
            }
            out
        })
        .collect();
    QueryGradient { layers }
}

/// Reads queries: jsonl of `{prompt, completion, id?}` (extension `.jsonl` or `.json`), or a
/// plain-text file of targets, one per non-blank line: the completion of a query with an empty
/// prompt (ids `t1`, `t2`, … by line). `what` names the rows in errors.
pub fn read_queries(path: &std::path::Path, what: &str) -> Result<Vec<Query>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "jsonl" || ext == "json" {
        return read_rows(path, what);
    }
    let text = read_utf8(path)?;
    let rows: Vec<Query> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Query {
            id: format!("t{}", i + 1),
            prompt: String::new(),
            completion: l.trim_end_matches('\r').to_string(),
        })
        .collect();
    if rows.is_empty() {
        return Err(TraceError::Usage(format!(
            "{}: no {what} (expected one target text per line, or a .jsonl of {{\"prompt\", \"completion\"}})",
            path.display()
        )));
    }
    Ok(rows)
}
