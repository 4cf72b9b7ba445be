//! Candidate stream: documents (a corpus read in streaming, or documents already fetched, e.g.
//! from the prefilter index) → model-length token windows with their text spans → batches.

use std::path::PathBuf;
use std::sync::Arc;

use tda_corpus::{open_corpus, windows, Document, ReadOptions};
use tda_model::{infer::encode_for_scoring, ModelConfig, Tokenizer};

use crate::error::{Result, TraceError};

/// Where the documents come from.
#[derive(Clone, Debug)]
pub enum DocSource {
    /// A corpus file or folder (jsonl / text / parquet), streamed.
    Corpus { path: PathBuf, read: ReadOptions },
    /// Documents in memory (e.g. fetched from the prefilter index).
    Docs(Arc<Vec<Document>>),
}

impl DocSource {
    pub fn corpus(path: impl Into<PathBuf>) -> Self {
        Self::Corpus {
            path: path.into(),
            read: ReadOptions::default(),
        }
    }
    pub fn docs(docs: Vec<Document>) -> Self {
        Self::Docs(Arc::new(docs))
    }

    /// A fresh pass over the documents.
    pub fn open(&self) -> Result<Box<dyn Iterator<Item = Result<Document>> + Send>> {
        match self {
            Self::Corpus { path, read } => {
                let r = open_corpus(path, read)?;
                Ok(Box::new(r.map(|d| d.map_err(TraceError::from))))
            }
            Self::Docs(d) => {
                let d = d.clone();
                Ok(Box::new((0..d.len()).map(move |i| Ok(d[i].clone()))))
            }
        }
    }

    /// Bytes of the source (for progress), if known.
    pub fn total_bytes(&self) -> Option<u64> {
        match self {
            Self::Corpus { path, .. } => tda_corpus::CorpusSpec::resolve(path)
                .ok()
                .map(|s| s.total_bytes()),
            Self::Docs(d) => Some(d.iter().map(|d| d.text.len() as u64).sum()),
        }
    }
}

/// How documents are cut and batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowOptions {
    /// Tokens per window (≤ the model's `max_positions`). `0` = the model's `max_positions`.
    pub max_len: usize,
    /// Windows per model batch.
    pub batch_size: usize,
    /// Stop after this many windows (`None` = all).
    pub max_windows: Option<usize>,
}

impl Default for WindowOptions {
    fn default() -> Self {
        Self {
            max_len: 0,
            batch_size: 8,
            max_windows: None,
        }
    }
}

/// One candidate: a token window of a document.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub doc_id: String,
    /// Window number within the document.
    pub window: usize,
    /// Byte span of the window in the document's text.
    pub span: (usize, usize),
    /// The window's text.
    pub text: String,
    pub ids: Vec<u32>,
}

/// Effective window length.
pub fn window_len(opts: &WindowOptions, cfg: &ModelConfig) -> usize {
    if opts.max_len == 0 {
        cfg.max_positions
    } else {
        opts.max_len.min(cfg.max_positions)
    }
}

/// Streams `source` as batches of candidate windows (documents are encoded with a leading BOS, as
/// for scoring; windows are disjoint; windows of fewer than 2 tokens are skipped — they have no
/// next-token loss). `on_batch(batch, bytes_done)` is called for each full batch and the last one.
pub fn for_each_batch(
    source: &DocSource,
    tokenizer: &Tokenizer,
    cfg: &ModelConfig,
    opts: &WindowOptions,
    mut on_batch: impl FnMut(&[Candidate], u64) -> Result<()>,
) -> Result<usize> {
    if opts.batch_size == 0 {
        return Err(TraceError::Usage("batch size must be at least 1".into()));
    }
    let len = window_len(opts, cfg);
    if len < 2 {
        return Err(TraceError::Usage(format!(
            "window length {len}: need at least 2 tokens"
        )));
    }
    let encode = |text: &str| -> (Vec<u32>, Vec<(usize, usize)>) {
        encode_for_scoring(tokenizer, cfg, text).unwrap_or_default()
    };
    let mut pending: Vec<Candidate> = Vec::with_capacity(opts.batch_size);
    let mut bytes = 0u64;
    let mut n = 0usize;
    let cap = opts.max_windows.unwrap_or(usize::MAX);
    'docs: for doc in source.open()? {
        let doc = doc?;
        bytes += doc.text.len() as u64 + 1;
        for w in windows(&doc, &encode, len, len)? {
            if w.token_ids.len() < 2 {
                continue;
            }
            if n >= cap {
                break 'docs;
            }
            n += 1;
            pending.push(Candidate {
                text: w.text(&doc).to_string(),
                doc_id: w.doc_id,
                window: w.index,
                span: w.char_span,
                ids: w.token_ids,
            });
            if pending.len() == opts.batch_size {
                on_batch(&pending, bytes)?;
                pending.clear();
            }
        }
    }
    if !pending.is_empty() {
        on_batch(&pending, bytes)?;
    }
    Ok(n)
}
