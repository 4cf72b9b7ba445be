//! `tokenizer.json` as HF `tokenizers` writes it, checked against the model it is loaded for.

use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Reads `tokenizer.json` and checks that it fits the model: every id it can emit (vocabulary,
/// added tokens, post-processor and padding ids) is below `vocab_size`, and it pads no text past
/// `max_positions` (padding allocates its length for every text).
pub fn load_tokenizer(path: &Path, config: &ModelConfig) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(ModelError::invalid(path, "tokenizer file not found"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    // `tokenizers` panics (instead of erroring) on some JSON syntax errors inside the decoder and
    // on some BPE merges: check those first.
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::invalid(path, format!("not valid JSON: {e}")))?;
    check_bpe_merges(&json["model"]).map_err(|m| ModelError::invalid(path, m))?;
    check_templates(&json["post_processor"]).map_err(|m| ModelError::invalid(path, m))?;
    let tok: Tokenizer = text
        .parse()
        .map_err(|e| ModelError::invalid(path, format!("not a valid tokenizer: {e}")))?;
    let n = tok.get_vocab_size(true);
    if n > config.vocab_size {
        return Err(ModelError::invalid(
            path,
            format!(
                "tokenizer has {n} tokens but the model's vocab_size is {}",
                config.vocab_size
            ),
        ));
    }
    if let Some(p) = tok.get_padding() {
        let fixed = match p.strategy {
            tokenizers::PaddingStrategy::Fixed(n) => n,
            tokenizers::PaddingStrategy::BatchLongest => 0,
        };
        let n = fixed.max(p.pad_to_multiple_of.unwrap_or(0));
        if n > config.max_positions {
            return Err(ModelError::invalid(
                path,
                format!(
                    "padding to {n} tokens is longer than the model's context ({} positions)",
                    config.max_positions
                ),
            ));
        }
    }
    let vocab = tok.get_vocab(true);
    let mut ids: Vec<(u64, String)> = vocab
        .iter()
        .max_by_key(|(_, &i)| i)
        .map(|(t, &i)| (i as u64, format!("token {t:?}")))
        .into_iter()
        .collect();
    for key in ["post_processor", "padding"] {
        extra_ids(&json[key], key, &mut ids);
    }
    if let Some((id, what)) = ids.iter().max() {
        if *id >= config.vocab_size as u64 {
            return Err(ModelError::invalid(
                path,
                format!(
                    "{what} has id {id} but the model's vocab_size is {}",
                    config.vocab_size
                ),
            ));
        }
    }
    Ok(tok)
}

/// `tokenizers` slices out of bounds on a BPE merge whose result is longer than every entry of
/// the vocabulary (and reads past a character on one whose second part is shorter than
/// `continuing_subword_prefix`). A merge is only valid if its result is in the vocabulary, which
/// excludes both: check exactly that, for merges whose two parts are in the vocabulary (the
/// others `tokenizers` reports itself).
fn check_bpe_merges(model: &Value) -> std::result::Result<(), String> {
    let is_bpe = model.get("type").is_none_or(|t| t == "BPE");
    let (Some(vocab), Some(merges)) = (
        model.get("vocab").and_then(Value::as_object),
        model.get("merges").and_then(Value::as_array),
    ) else {
        return Ok(());
    };
    if !is_bpe {
        return Ok(());
    }
    let prefix = model
        .get("continuing_subword_prefix")
        .and_then(Value::as_str)
        .unwrap_or("");
    for (i, m) in merges.iter().enumerate() {
        let pair = match m {
            Value::String(s) => s.split_once(' ').filter(|(_, b)| !b.contains(' ')),
            Value::Array(p) if p.len() == 2 => p[0].as_str().zip(p[1].as_str()),
            _ => None,
        };
        let Some((a, b)) = pair else { continue };
        if !vocab.contains_key(a) || !vocab.contains_key(b) {
            continue;
        }
        let merged = b
            .get(prefix.len()..)
            .map(|rest| format!("{a}{rest}"))
            .filter(|t| vocab.contains_key(t));
        if merged.is_none() {
            return Err(format!(
                "BPE merge {i} ({a:?} + {b:?}): the merged token is not in the vocabulary"
            ));
        }
    }
    Ok(())
}

/// `tokenizers` looks a template's special tokens up by their key in `special_tokens` but checks
/// them by the `id` inside the entry, and panics when the two differ: every special token a
/// `TemplateProcessing` (also inside a `Sequence`) names must be a key of its `special_tokens`.
fn check_templates(v: &Value) -> std::result::Result<(), String> {
    match v {
        Value::Object(o) if o.get("type").is_some_and(|t| t == "TemplateProcessing") => {
            let known = o.get("special_tokens").and_then(Value::as_object);
            for side in ["single", "pair"] {
                let pieces = o.get(side).and_then(Value::as_array).into_iter().flatten();
                for id in pieces.filter_map(|p| p.get("SpecialToken")?.get("id")?.as_str()) {
                    if !known.is_some_and(|k| k.contains_key(id)) {
                        return Err(format!(
                            "post_processor: the {side} template uses special token {id:?}, which is not a key of special_tokens"
                        ));
                    }
                }
            }
            Ok(())
        }
        Value::Object(o) => o.values().try_for_each(check_templates),
        Value::Array(a) => a.iter().try_for_each(check_templates),
        _ => Ok(()),
    }
}

/// Token ids written outside the vocabulary: `ids` lists and `sep` / `cls` pairs of
/// post-processors, `pad_id` of padding.
fn extra_ids(v: &Value, what: &str, out: &mut Vec<(u64, String)>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                let ids: Vec<u64> = match (k.as_str(), c) {
                    ("ids", Value::Array(a)) => a.iter().filter_map(Value::as_u64).collect(),
                    ("sep" | "cls", Value::Array(a)) => {
                        a.get(1).and_then(Value::as_u64).into_iter().collect()
                    }
                    ("pad_id", c) => c.as_u64().into_iter().collect(),
                    _ => Vec::new(),
                };
                out.extend(ids.into_iter().map(|i| (i, format!("{what}.{k}"))));
                extra_ids(c, what, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| extra_ids(c, what, out)),
        _ => {}
    }
}
