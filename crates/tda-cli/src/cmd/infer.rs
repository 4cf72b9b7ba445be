//! `tda generate` and `tda logprobs`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tda_model::device::DeviceKind;
use tda_model::infer::{self, GenerateOptions};

use crate::output::print_json;
use crate::with_backend;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  tda generate --model runs/demo/model --prompt \"Mira Tolven was born in\"\n  tda generate --model runs/demo/model --prompt \"The\" --temperature 0.8 --top-p 0.9 --seed 3 --json"
)]
pub struct GenerateArgs {
    /// HF model folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy (then --top-p and --seed are refused).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub temperature: f32,
    /// Nucleus sampling mass (sampling only) [default: 1.0].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Sampling seed (sampling only) [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep generating after the end-of-text token.
    #[arg(long)]
    pub no_stop: bool,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long, default_value = "f32", help = super::DTYPE_HELP)]
    pub dtype: tda_model::ModelDtype,
    /// Print JSON (prompt, completion, token ids) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
#[command(
    after_help = "Example:\n  tda logprobs --model runs/demo/model --text \"Mira Tolven works as a baker.\" --json"
)]
pub struct LogprobsArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub text: String,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long, default_value = "f32", help = super::DTYPE_HELP)]
    pub dtype: tda_model::ModelDtype,
    /// Print JSON: per token its id, string and log p given its prefix.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Generation {
    prompt: String,
    completion: String,
    prompt_ids: Vec<u32>,
    completion_ids: Vec<u32>,
}

/// `(temperature, top_p, seed)` of a generation; sampling flags with a greedy temperature are
/// an error rather than ignored.
pub fn sampling(
    temperature: f32,
    top_p: Option<f32>,
    seed: Option<u64>,
) -> anyhow::Result<(f32, f32, u64)> {
    if !(temperature >= 0.0 && temperature.is_finite()) {
        anyhow::bail!("--temperature {temperature}: must be 0 (greedy) or positive");
    }
    if temperature == 0.0 && (top_p.is_some() || seed.is_some()) {
        anyhow::bail!(
            "--top-p and --seed only apply to sampling: give --temperature > 0 with them"
        );
    }
    let top_p = top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        anyhow::bail!("--top-p {top_p}: must be in (0, 1]");
    }
    Ok((temperature, top_p, seed.unwrap_or(0)))
}

pub fn generate(a: &GenerateArgs) -> anyhow::Result<()> {
    let (temperature, top_p, seed) = sampling(a.temperature, a.top_p, a.seed)?;
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder_as::<B>(&a.model, &device, a.dtype)?;
        let (prompt_ids, _) = infer::encode_for_scoring(&m.tokenizer, &m.model.config, &a.prompt)?;
        let opts = GenerateOptions {
            max_new_tokens: a.max_new_tokens,
            temperature,
            top_p,
            seed,
            stop_token: if a.no_stop {
                None
            } else {
                m.model.config.eos_token_id
            },
        };
        let new = infer::generate(&m.model, &prompt_ids, &opts)?;
        let shown: Vec<u32> = new
            .iter()
            .copied()
            .filter(|&t| Some(t) != opts.stop_token)
            .collect();
        let completion = m
            .tokenizer
            .decode(&shown, true)
            .map_err(anyhow::Error::msg)
            .context("cannot decode the generated tokens")?;
        if a.json {
            print_json(&Generation {
                prompt: a.prompt.clone(),
                completion,
                prompt_ids,
                completion_ids: new,
            })
        } else {
            println!("{}{}", a.prompt, completion);
            Ok(())
        }
    })
}

pub fn logprobs(a: &LogprobsArgs) -> anyhow::Result<()> {
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder_as::<B>(&a.model, &device, a.dtype)?;
        let tokens = infer::score_text(&m.model, &m.tokenizer, &a.text)?;
        if a.json {
            let total: f32 = tokens.iter().filter_map(|t| t.logprob).sum();
            print_json(
                &serde_json::json!({ "text": a.text, "tokens": tokens, "total_logprob": total }),
            )
        } else {
            for t in &tokens {
                match t.logprob {
                    Some(lp) => println!("{:>6}  {:>9.4}  {:?}", t.id, lp, t.token),
                    None => println!("{:>6}  {:>9}  {:?}", t.id, "-", t.token),
                }
            }
            Ok(())
        }
    })
}
