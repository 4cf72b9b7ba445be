//! A whole `tda train` run: read the corpus, get a tokenizer (train one or reuse), get a model
//! (initialise from a shape or load an HF folder to fine-tune), pack, train, save.

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use tda_corpus::{open_corpus, ReadOptions, ReadStats};
use tda_model::{hf, Tokenizer, Transformer};

use crate::config::TrainConfig;
use crate::tokenizer::{train_bpe, END_OF_TEXT};
use crate::train::{document_sequences, pack, train_subset, StepInfo, TrainReport};
use crate::TrainError;

/// Inputs of a training run.
#[derive(Clone, Debug)]
pub struct TrainJob {
    /// jsonl / text / parquet corpus (anything `tda_corpus::open_corpus` reads).
    pub corpus: PathBuf,
    pub read_options: ReadOptions,
    pub config: TrainConfig,
    /// Fine-tune this HF folder instead of training from scratch.
    pub init: Option<PathBuf>,
    /// Use this `tokenizer.json` instead of training one (from scratch only).
    pub tokenizer: Option<PathBuf>,
    pub out: PathBuf,
}

/// Reads all document texts of a corpus and what the reader counted (skipped records by reason).
/// A corpus with no usable document is an error that says why.
pub fn read_texts(
    corpus: &Path,
    opts: &ReadOptions,
) -> Result<(Vec<String>, ReadStats), TrainError> {
    let mut reader = open_corpus(corpus, opts).map_err(|e| TrainError::Config(e.to_string()))?;
    let mut texts = Vec::new();
    for doc in reader.by_ref() {
        let doc = doc.map_err(|e| TrainError::Config(e.to_string()))?;
        texts.push(doc.text);
    }
    let stats = reader.stats().clone();
    if texts.is_empty() {
        return Err(TrainError::File {
            path: corpus.into(),
            msg: format!("no documents to train on: {}", stats.why_no_documents(opts)),
        });
    }
    Ok((texts, stats))
}

/// How the documents become training sequences.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Examples {
    /// One token stream cut into `seq_len` pieces ([`pack`]): what `tda train` does.
    #[default]
    Packed,
    /// One example per document ([`document_sequences`]), and only the documents with
    /// `keep[i]` (all when `None`) trained on, in the data order of the run with all of them
    /// ([`train_subset`]).
    Documents { keep: Option<Vec<bool>> },
}

/// Runs the job on backend `B`. Returns the report of the training loop.
pub fn run<B: AutodiffBackend>(
    job: &TrainJob,
    device: &B::Device,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<TrainReport, TrainError> {
    run_with::<B>(job, &Examples::Packed, device, on_step)
}

/// [`run`] with the documents turned into training sequences as `examples` says.
pub fn run_with<B: AutodiffBackend>(
    job: &TrainJob,
    examples: &Examples,
    device: &B::Device,
    on_step: &mut dyn FnMut(&StepInfo),
) -> Result<TrainReport, TrainError> {
    let (texts, read) = read_texts(&job.corpus, &job.read_options)?;
    let (model, tokenizer): (Transformer<B>, Tokenizer) = match &job.init {
        Some(dir) => {
            let loaded = hf::load_folder::<B>(dir, device)?;
            (loaded.model, loaded.tokenizer)
        }
        None => {
            let shape = job.config.model.as_ref().ok_or_else(|| {
                TrainError::Config("training from scratch needs a [model] section in the config (or --init DIR to fine-tune)".into())
            })?;
            let tokenizer = match &job.tokenizer {
                Some(path) => Tokenizer::from_file(path).map_err(|e| TrainError::File {
                    path: path.clone(),
                    msg: format!("not a valid tokenizer: {e}"),
                })?,
                None => train_bpe(texts.iter(), shape.vocab_size)?,
            };
            let eot = tokenizer
                .token_to_id(END_OF_TEXT)
                .or_else(|| tokenizer.token_to_id("</s>"))
                .ok_or_else(|| {
                    TrainError::Config(format!("the tokenizer has no {END_OF_TEXT} token"))
                })?;
            let mut model_cfg = shape.to_model_config(eot).map_err(TrainError::Config)?;
            let n = tokenizer.get_vocab_size(true);
            if n > model_cfg.vocab_size {
                return Err(TrainError::Config(format!(
                    "the tokenizer has {n} tokens, more than model.vocab_size = {}",
                    model_cfg.vocab_size
                )));
            }
            model_cfg.vocab_size = model_cfg.vocab_size.max(n);
            (
                Transformer::init(&model_cfg, job.config.train.seed, device),
                tokenizer,
            )
        }
    };
    let eot = model.config.eos_token_id.unwrap_or(0);
    let docs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            tokenizer
                .encode(t.as_str(), false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| TrainError::Tokenizer(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let seq_len = job.config.train.seq_len;
    let (sequences, keep) = match examples {
        Examples::Packed => (pack(&docs, eot, seq_len), None),
        Examples::Documents { keep } => {
            let (seqs, owner) = document_sequences(&docs, eot, seq_len);
            let keep = match keep {
                Some(k) if k.len() != docs.len() => {
                    return Err(TrainError::Config(format!(
                        "{} keep flags for the {} documents of {}",
                        k.len(),
                        docs.len(),
                        job.corpus.display()
                    )))
                }
                Some(k) => Some(owner.iter().map(|&d| k[d]).collect::<Vec<bool>>()),
                None => None,
            };
            (seqs, keep)
        }
    };
    let (_, mut report) = train_subset(
        model,
        &tokenizer,
        &sequences,
        keep.as_deref(),
        &job.config.train,
        &job.out,
        on_step,
    )?;
    report.corpus = Some(read);
    Ok(report)
}
