//! `tda demo` (the main job on the embedded default) and `tda synth-corpus`.

use std::path::PathBuf;

use clap::Args;
use tda_corpus::ReadOptions;
use tda_eval::biographies;
use tda_model::device::DeviceKind;
use tda_model::infer::{self, GenerateOptions};
use tda_train::{TrainConfig, TrainJob};

use crate::with_backend;

/// The tiny model config, embedded so the demo runs from any directory.
const TINY_TOML: &str = include_str!("../../../../configs/tiny.toml");

#[derive(Args)]
#[command(
    after_help = "Example:\n  tda demo                    # corpus + tiny model under runs/demo, generation, log-probs, EK-FAC factors and the trace of the completion\n  tda demo --steps 50 --out /tmp/demo"
)]
pub struct DemoArgs {
    /// Working folder for the corpus and the model.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Number of generated biographies.
    #[arg(long, default_value_t = 400)]
    pub docs: usize,
    /// Override the training steps of configs/tiny.toml.
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceKind,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  tda synth-corpus --out corpus.jsonl --docs 1000 --seed 0\n  tda synth-corpus --out corpus.jsonl --docs 200 --queries queries.jsonl --n-queries 32   # fact queries for tda trace / tda eval"
)]
pub struct SynthArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 400)]
    pub docs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write fact queries (jsonl of {id, prompt, completion}; id = the stating document).
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Number of fact queries: one per document, from the first, cycling through the four facts.
    #[arg(long, default_value_t = 32, requires = "queries")]
    pub n_queries: usize,
}

pub fn synth(a: &SynthArgs) -> anyhow::Result<()> {
    crate::output::check_out(&a.out, tda_io::Output::File)?;
    if let Some(q) = &a.queries {
        crate::output::check_out(q, tda_io::Output::File)?;
        if a.n_queries == 0 || a.n_queries > a.docs {
            anyhow::bail!(
                "--n-queries {}: must be between 1 and --docs ({})",
                a.n_queries,
                a.docs
            );
        }
    }
    let docs = biographies(a.docs, a.seed);
    tda_eval::write_jsonl(&docs, &a.out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.out.display()))?;
    eprintln!("wrote {} documents to {}", docs.len(), a.out.display());
    if let Some(path) = &a.queries {
        let queries = tda_eval::biographies::fact_queries(&docs, a.n_queries);
        let mut s = String::new();
        for q in &queries {
            s.push_str(&serde_json::to_string(q)?);
            s.push('\n');
        }
        tda_io::write_file(path, s.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        eprintln!("wrote {} fact queries to {}", queries.len(), path.display());
    }
    Ok(())
}

pub fn run(a: &DemoArgs) -> anyhow::Result<()> {
    crate::output::check_out(&a.out, tda_io::Output::Folder)?;
    let corpus = a.out.join("corpus.jsonl");
    let model_dir = a.out.join("model");
    let docs = biographies(a.docs, a.seed);
    tda_eval::write_jsonl(&docs, &corpus)
        .map_err(|e| anyhow::anyhow!("{}: {e}", corpus.display()))?;
    eprintln!(
        "1/5 corpus: {} biographies → {}",
        docs.len(),
        corpus.display()
    );

    let mut config: TrainConfig = toml::from_str(TINY_TOML)?;
    if let Some(s) = a.steps {
        config.train.steps = s;
    }
    config.train.seed = a.seed;
    let job = TrainJob {
        corpus: corpus.clone(),
        read_options: ReadOptions::default(),
        config,
        init: None,
        tokenizer: None,
        out: model_dir.clone(),
    };
    let report = super::train::train_job(&job, a.device)?;
    eprintln!(
        "2/5 trained configs/tiny.toml for {} steps: loss {:.3} → {:.3}, {:.0} tokens/s → {}",
        report.steps,
        report.first_loss,
        report.final_loss,
        report.tokens_per_s,
        model_dir.display()
    );

    let person = &docs[0].person;
    let prompt = format!("{} was born in", person.name);
    let completion: String = with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder::<B>(&model_dir, &device)?;
        let (ids, _) = infer::encode_for_scoring(&m.tokenizer, &m.model.config, &prompt)?;
        let opts = GenerateOptions {
            max_new_tokens: 12,
            stop_token: m.model.config.eos_token_id,
            ..Default::default()
        };
        let new = infer::generate(&m.model, &ids, &opts)?;
        let completion = m.tokenizer.decode(&new, true).map_err(anyhow::Error::msg)?;
        eprintln!("3/5 generation and log-probs");
        println!("prompt:     {prompt}");
        println!("completion: {}", completion.trim_end());
        println!(
            "truth:      {} was born in {} in {}.",
            person.name, person.city, person.year
        );
        let fact = format!(
            "{} was born in {} in {}.",
            person.name, person.city, person.year
        );
        let tokens = infer::score_text(&m.model, &m.tokenizer, &fact)?;
        println!("log-probs of the true sentence:");
        for t in &tokens {
            if let Some(lp) = t.logprob {
                println!("  {:>9.4}  {:?}", lp, t.token);
            }
        }
        let total: f32 = tokens.iter().filter_map(|t| t.logprob).sum();
        println!("  total {total:.3} over {} tokens", tokens.len() - 1);
        completion
    });
    trace_demo(a, &corpus, &model_dir, &prompt, &completion, &docs[0].id)
}

/// Steps 4 and 5: EK-FAC factors on the corpus, then the generated completion traced back to the
/// training documents; prints the top documents and the rank of the true biography.
fn trace_demo(
    a: &DemoArgs,
    corpus: &std::path::Path,
    model_dir: &std::path::Path,
    prompt: &str,
    completion: &str,
    truth_id: &str,
) -> anyhow::Result<()> {
    use tda_trace::{fit, DocSource, FitOptions, Query, TraceOptions};
    let factors_dir = a.out.join("factors");
    let completion = completion.trim_end();
    let completion = if completion.trim().is_empty() {
        " "
    } else {
        completion
    };
    with_backend!(a.device, |B, AD, device| {
        let m = tda_model::load_folder::<AD>(model_dir, &device)?;
        let fp = tda_trace::model_fingerprint(model_dir)?;
        let source = DocSource::corpus(corpus);
        let (factors, report) = fit::fit(
            &m.model,
            &m.tokenizer,
            &source,
            &FitOptions::default(),
            &fp,
            &mut |_| {},
        )?;
        fit::save(&factors, &report, &factors_dir)?;
        eprintln!(
            "4/5 EK-FAC factors of {} layers on {} windows ({} tokens): covariance pass {:.1}s, eigendecompositions {:.1}s, Λ pass {:.1}s → {}",
            report.layers.len(),
            report.windows,
            report.tokens,
            report.covariance_pass_s,
            report.eigen_s,
            report.lambda_pass_s,
            factors_dir.display()
        );
        let query = Query {
            id: "demo".into(),
            prompt: prompt.to_string(),
            completion: completion.to_string(),
        };
        let opts = TraceOptions {
            top_k: None,
            ..Default::default()
        };
        let out = tda_trace::trace(
            &m.model,
            &m.tokenizer,
            &factors,
            std::slice::from_ref(&query),
            &source,
            &opts,
            &mut |_, _| {},
        )?;
        let q = &out.queries[0];
        eprintln!(
            "5/5 traced the completion over {} windows in {:.1}s ({:.0} candidate tokens/s)",
            out.report.candidates, out.report.total_s, out.report.candidate_tokens_per_s
        );
        println!("top training documents for {prompt:?} → {completion:?} (positive = raised its log-probability):");
        for r in q.results.iter().take(5) {
            println!(
                "  {:>3}. {:+.4e}  {}  {}",
                r.rank,
                r.score,
                r.doc_id,
                r.text.chars().take(90).collect::<String>()
            );
        }
        match q.results.iter().find(|r| r.doc_id == truth_id) {
            Some(r) => println!(
                "the true biography {truth_id} ranks {} of {} (score {:+.4e})",
                r.rank,
                q.results.len(),
                r.score
            ),
            None => println!("the true biography {truth_id} was not scored"),
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
