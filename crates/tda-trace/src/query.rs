//! Queries: a prompt and the completion whose measurement is attributed; their tokenization, and
//! their preparation for the one-pass kernel (measurement taps → query gradients →
//! preconditioning with the factors → rank-r compression, all queries batched).

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use tda_curvature::{precondition, query_gradients, Damping, Factors, QueryBatch, Rank};
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
    let bytes = std::fs::read(path).map_err(|e| crate::error::io(path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        TraceError::Usage(format!(
            "{}: not UTF-8 text (byte {})",
            path.display(),
            e.valid_up_to()
        ))
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(line)
            .map_err(|e| TraceError::Usage(format!("{} line {}: {e}", path.display(), i + 1)))?;
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(TraceError::Usage(format!(
            "{}: no {what} (expected one JSON object per line)",
            path.display()
        )));
    }
    Ok(rows)
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
    if queries.is_empty() {
        return Err(TraceError::Usage("no queries".into()));
    }
    let t0 = Instant::now();
    let specs = factors.specs();
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
        let taps = host_taps(frozen, &specs, &batch, Scalar::Measure(&target))?;
        grads.extend(query_gradients(&specs, &taps.layer_batches())?);
        values.extend_from_slice(&taps.values);
    }
    let pq = precondition(factors, damping, &grads, rank)?;
    let batch = QueryBatch::new(&specs, &pq)?;
    Ok(PreparedQueries {
        batch,
        values,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
