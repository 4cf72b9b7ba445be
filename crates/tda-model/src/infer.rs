//! Inference: per-token log-probs of a text and generation with a KV cache.

use burn::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokenizers::Tokenizer;

use crate::batch::{token_logprobs, TokenBatch};
use crate::error::{ModelError, Result};
use crate::model::{KvCache, Transformer};

/// One token of a scored text.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub token: String,
    /// log p(token | previous tokens); `None` for the first token, which has no prefix.
    pub logprob: Option<f32>,
}

/// Token ids and their byte offsets `(start, end)` into the text.
pub type Encoded = (Vec<u32>, Vec<(usize, usize)>);

/// Tokenizes `text` for scoring: the tokenizer's own special tokens, then a leading BOS (or EOS
/// when the model has no BOS, as GPT-2 does) if the tokenizer did not add one, so the first text
/// token has a prefix. Returns ids and byte offsets into `text` (`(0, 0)` for added tokens).
pub fn encode_for_scoring(
    tokenizer: &Tokenizer,
    model: &crate::config::ModelConfig,
    text: &str,
) -> Result<Encoded> {
    let enc = tokenizer
        .encode(text, true)
        .map_err(|e| ModelError::Usage(format!("cannot tokenize the text: {e}")))?;
    let mut ids = enc.get_ids().to_vec();
    let mut offsets = enc.get_offsets().to_vec();
    if let Some(start) = model.bos_token_id.or(model.eos_token_id) {
        if ids.first() != Some(&start) {
            ids.insert(0, start);
            offsets.insert(0, (0, 0));
        }
    }
    Ok((ids, offsets))
}

/// log p of every token of each sequence given its prefix: one forward pass over the padded batch.
/// Returns per sequence `len − 1` values.
pub fn sequence_logprobs<B: Backend>(
    model: &Transformer<B>,
    seqs: &[Vec<u32>],
) -> Result<Vec<Vec<f32>>> {
    let pad = model.config.eos_token_id.unwrap_or(0);
    let batch = TokenBatch::new(seqs, pad)?;
    check_length(model, batch.seq_len)?;
    if batch.seq_len < 2 {
        return Ok(seqs.iter().map(|_| Vec::new()).collect());
    }
    let device = model.embed.device();
    let ids = batch.to_tensor::<B>(&device);
    let lp = token_logprobs(model.forward(ids.clone()), ids);
    let flat = lp
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data");
    let t1 = batch.seq_len - 1;
    Ok(batch
        .lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| flat[i * t1..i * t1 + n - 1].to_vec())
        .collect())
}

/// Scores `text`: its tokens with their log-probs (see [`encode_for_scoring`]).
pub fn score_text<B: Backend>(
    model: &Transformer<B>,
    tokenizer: &Tokenizer,
    text: &str,
) -> Result<Vec<TokenLogprob>> {
    let (ids, _) = encode_for_scoring(tokenizer, &model.config, text)?;
    let lps = sequence_logprobs(model, std::slice::from_ref(&ids))?.remove(0);
    Ok(ids
        .iter()
        .enumerate()
        .map(|(i, &id)| TokenLogprob {
            id,
            token: tokenizer.id_to_token(id).unwrap_or_default(),
            logprob: (i > 0).then(|| lps[i - 1]),
        })
        .collect())
}

fn check_length<B: Backend>(model: &Transformer<B>, n: usize) -> Result<()> {
    if n > model.config.max_positions {
        return Err(ModelError::Usage(format!(
            "sequence of {n} tokens is longer than the model's context ({} positions)",
            model.config.max_positions
        )));
    }
    Ok(())
}

/// Decoding settings. `temperature == 0` is greedy; otherwise softmax(logits / T) restricted to
/// the smallest set of tokens whose probability reaches `top_p`, sampled with `seed`.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    /// Stop after emitting this token (usually EOS).
    pub stop_token: Option<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_token: None,
        }
    }
}

/// Picks the next token from logits `[V]`.
fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 {
                    (i, x)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, (((x - max) / opts.temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0.0;
    let mut n = 0;
    for p in &probs {
        kept += p.1 / total;
        n += 1;
        if kept >= opts.top_p as f64 {
            break;
        }
    }
    let mass: f64 = probs[..n].iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * mass;
    for p in &probs[..n] {
        u -= p.1;
        if u <= 0.0 {
            return p.0 as u32;
        }
    }
    probs[n - 1].0 as u32
}

/// Generates up to `max_new_tokens` after `prompt` with a KV cache (one forward for the prompt,
/// then one single-token forward per new token). Stops at the stop token or at the model's
/// context length. Returns the new tokens only.
pub fn generate<B: Backend>(
    model: &Transformer<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(ModelError::Usage("the prompt has no tokens".into()));
    }
    check_length(model, prompt.len())?;
    let device = model.embed.device();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cache = KvCache::new(model.config.n_layers);
    let mut out = Vec::new();
    let mut input: Vec<u32> = prompt.to_vec();
    while out.len() < opts.max_new_tokens && cache.len + input.len() <= model.config.max_positions {
        let batch = TokenBatch::new(&[input.clone()], 0)?;
        let logits = model.forward_with(
            batch.to_tensor::<B>(&device),
            Some(&mut cache),
            &mut crate::nn::NoRecord,
        );
        let [_, t, v] = logits.dims();
        let last = logits.narrow(1, t - 1, 1).reshape([v]);
        let last = last
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 data");
        let next = pick(&last, opts, &mut rng);
        out.push(next);
        if Some(next) == opts.stop_token {
            break;
        }
        input = vec![next];
    }
    Ok(out)
}

/// Log-softmax of a logits row, for callers that need the whole next-token distribution.
pub fn log_softmax_last<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 3> {
    crate::nn::log_softmax_last(logits)
}
