//! Candidate stream: documents (a corpus read in streaming, or documents already fetched, e.g.
//! from the prefilter index) → model-length token windows with their text spans → batches.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tda_corpus::{open_corpus, windows, Document, ReadOptions, ReadStats, SkipCounts};
use tda_model::{infer::encode_for_scoring, ModelConfig, Tokenizer};

use crate::budget::MemoryBudget;
use crate::error::{Result, TraceError};
use crate::shard::Shard;

/// How the candidate file is read: documents (the loss on every token of a window), or
/// prompt/completion pairs (the loss on the completion only, as a completion-only fine-tune).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CandidateKind {
    #[default]
    Documents,
    Pairs,
}

/// Where the documents come from.
#[derive(Clone, Debug)]
pub enum DocSource {
    /// A corpus file or folder (jsonl / text / parquet), streamed.
    Corpus { path: PathBuf, read: ReadOptions },
    /// Documents in memory (e.g. fetched from the prefilter index).
    Docs(Arc<Vec<Document>>),
    /// Prompt/completion pairs (supervised fine-tuning data, read from a jsonl of
    /// `{prompt, completion, id?}`): one window per pair, the loss on the completion tokens only.
    Pairs {
        path: PathBuf,
        pairs: Arc<Vec<crate::query::Query>>,
    },
}

impl DocSource {
    /// A corpus read with the default options (text in `text`, id in `id`).
    pub fn corpus(path: impl Into<PathBuf>) -> Self {
        Self::corpus_with(path, ReadOptions::default())
    }
    /// A corpus read with `read` (the `--text-column`, `--strict`, … options).
    pub fn corpus_with(path: impl Into<PathBuf>, read: ReadOptions) -> Self {
        Self::Corpus {
            path: path.into(),
            read,
        }
    }
    pub fn docs(docs: Vec<Document>) -> Self {
        Self::Docs(Arc::new(docs))
    }
    /// The prompt/completion pairs of the jsonl file `path` (errors name the file and line). A
    /// pair without an `id` is named as the corpus readers name a record: `<file name>:<row>`
    /// (0-based line), so it has the same id here and in an index of the file.
    pub fn pairs(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pairs = crate::query::read_numbered_rows(&path, "prompt/completion pairs")?
            .into_iter()
            .map(|(row, mut q): (u64, crate::query::Query)| {
                if q.id.is_empty() {
                    q.id = format!("{file}:{row}");
                }
                q
            })
            .collect();
        Ok(Self::Pairs {
            path,
            pairs: Arc::new(pairs),
        })
    }

    /// The whole file `path` as documents (read with `read`) or as prompt/completion pairs.
    pub fn of_kind(
        path: impl Into<PathBuf>,
        read: &ReadOptions,
        kind: CandidateKind,
    ) -> Result<Self> {
        match kind {
            CandidateKind::Documents => Ok(Self::corpus_with(path, read.clone())),
            CandidateKind::Pairs => Self::pairs(path),
        }
    }

    /// Pairs already read (e.g. the prefilter's), `path` the file they come from.
    pub fn pairs_from(path: impl Into<PathBuf>, pairs: Vec<crate::query::Query>) -> Self {
        Self::Pairs {
            path: path.into(),
            pairs: Arc::new(pairs),
        }
    }

    /// Bytes of the source (for progress), if known.
    pub fn total_bytes(&self) -> Option<u64> {
        match self {
            Self::Corpus { path, .. } => tda_corpus::CorpusSpec::resolve(path)
                .ok()
                .map(|s| s.total_bytes()),
            Self::Docs(d) => Some(d.iter().map(|d| d.text.len() as u64).sum()),
            Self::Pairs { pairs, .. } => Some(
                pairs
                    .iter()
                    .map(|q| (q.prompt.len() + q.completion.len()) as u64)
                    .sum(),
            ),
        }
    }

    /// What the source is, for messages: the corpus path, or "the N fetched documents".
    pub fn describe(&self) -> String {
        match self {
            Self::Corpus { path, .. } => path.display().to_string(),
            Self::Docs(d) => format!("the {} documents fetched by the prefilter", d.len()),
            Self::Pairs { path, .. } => format!("{} (prompt/completion pairs)", path.display()),
        }
    }

    /// One pass over the documents: `on_doc` for each, then the reader's counts (records skipped
    /// by reason; none for documents in memory). The first error (an unreadable file; a bad
    /// record in strict mode) ends the pass.
    fn for_each_doc(&self, mut on_doc: impl FnMut(Document) -> Result<bool>) -> Result<ReadStats> {
        match self {
            Self::Corpus { path, read } => {
                let mut reader = open_corpus(path, read)?;
                for doc in reader.by_ref() {
                    if !on_doc(doc?)? {
                        break;
                    }
                }
                Ok(reader.stats().clone())
            }
            Self::Docs(docs) => {
                let mut stats = ReadStats::default();
                for d in docs.iter() {
                    stats.docs += 1;
                    if !on_doc(d.clone())? {
                        break;
                    }
                }
                Ok(stats)
            }
            Self::Pairs { .. } => unreachable!("pairs are windowed by for_each_batch"),
        }
    }
}

/// What one pass over a [`DocSource`] read and made: every record is either a document, a skip
/// counted by reason, or a document too short for a window — none is dropped without a count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassStats {
    /// What was read: the corpus path or the prefilter's documents.
    pub source: String,
    /// Documents read.
    pub documents: u64,
    /// Records the reader skipped, by reason.
    pub skipped: SkipCounts,
    /// Documents of fewer than 2 tokens (BOS included): no next-token loss, no window.
    pub too_short: u64,
    /// Windows made (the candidates).
    pub windows: usize,
    /// Tokens in the windows.
    pub tokens: u64,
    /// `--max-windows` ended the pass before the end of the source.
    pub capped: bool,
    /// Tokens per window (the longest a window may be; see [`window_len`]).
    #[serde(default)]
    pub window_len: usize,
}

impl PassStats {
    /// The stats of two disjoint slices of one source, as one (shards of a sharded pass).
    pub fn add(&mut self, o: &PassStats) {
        self.documents += o.documents;
        self.skipped.add(&o.skipped);
        self.too_short += o.too_short;
        self.windows += o.windows;
        self.tokens += o.tokens;
        self.capped |= o.capped;
        self.window_len = self.window_len.max(o.window_len);
    }
}

impl std::fmt::Display for PassStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} documents", self.source, self.documents)?;
        match self.skipped.total() {
            0 => write!(f, ", 0 records skipped")?,
            n => write!(f, ", {n} records skipped ({})", self.skipped.reasons())?,
        }
        write!(
            f,
            ", {} too short for a window → {} windows of ≤ {} tokens ({} tokens)",
            self.too_short, self.windows, self.window_len, self.tokens
        )?;
        if self.capped {
            write!(f, ", stopped at --max-windows")?;
        }
        Ok(())
    }
}

/// How documents are cut and batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowOptions {
    /// Tokens per window (≤ the model's `max_positions`). `0` = min(`max_positions`, 2048).
    pub max_len: usize,
    /// A window starts every `stride` tokens of a document (`0` = the window length: disjoint
    /// windows). With `stride < len`, windows overlap and a window after the first has a loss only
    /// on the tokens the previous one did not cover (its first `len − stride` tokens are context),
    /// so every token of a document is a loss target exactly once, with ≥ `len − stride` tokens of
    /// context (the sliding-window evaluation of Press et al. 2021 / `transformers`' perplexity guide).
    pub stride: usize,
    /// Windows per model batch.
    pub batch_size: usize,
    /// Stop after this many windows (`None` = all).
    pub max_windows: Option<usize>,
    /// The slice of the documents this pass reads (all of them by default).
    pub shard: Shard,
    /// What one batch's taps, logits and graph may take (`None`: [`MemoryBudget::auto`]); a batch
    /// over it is tapped fewer windows at a time, then layer group by layer group
    /// ([`crate::budget::TapPlan`]) by `fit` and `trace`.
    pub memory_budget: Option<MemoryBudget>,
    /// Where `fit` computes its sums: on the host from copied taps, or on the model's device
    /// ([`crate::device`]).
    pub compute: crate::device::ComputeOn,
    /// The precision of `trace`'s contraction on the device (`bf16` needs
    /// [`crate::device::ComputeOn::Device`]; `fit` is always f32).
    pub precision: crate::device::Precision,
}

impl Default for WindowOptions {
    fn default() -> Self {
        Self {
            max_len: 0,
            stride: 0,
            batch_size: 8,
            max_windows: None,
            shard: Shard::ALL,
            memory_budget: None,
            compute: crate::device::ComputeOn::Host,
            precision: crate::device::Precision::F32,
        }
    }
}

/// One candidate: a token window of a document.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// 0-based ordinal of the document in this pass (tells apart documents that share an id).
    pub doc: u64,
    /// First position whose token is a loss target: 1 for document windows (every token after
    /// the first), the completion's first token for a prompt/completion pair.
    pub loss_from: usize,
    pub doc_id: String,
    /// Window number within the document.
    pub window: usize,
    /// Byte span of the window in the document's text.
    pub span: (usize, usize),
    /// The window's text.
    pub text: String,
    pub ids: Vec<u32>,
}

/// The default window length when `--max-len` is not given: a model's whole context (32k for
/// Qwen2) would make batches of tens of GB of taps.
pub const DEFAULT_MAX_LEN: usize = 2048;

/// Effective window length: `max_len`, or min(the model's `max_positions`, [`DEFAULT_MAX_LEN`])
/// when `max_len` is 0. A length above the model's context is an error (never clamped silently).
/// Printed with the corpus summary ([`PassStats::window_len`]).
pub fn window_len(opts: &WindowOptions, cfg: &ModelConfig) -> Result<usize> {
    match opts.max_len {
        0 => Ok(cfg.max_positions.min(DEFAULT_MAX_LEN)),
        n if n > cfg.max_positions => Err(TraceError::Usage(format!(
            "--max-len {n} is longer than the model's context ({} positions)",
            cfg.max_positions
        ))),
        n => Ok(n),
    }
}

/// Streams `source` as batches of candidate windows (documents are encoded with a leading BOS, as
/// for scoring; windows are disjoint, or overlap by `len − stride` tokens of context without a
/// loss, see [`WindowOptions::stride`]; documents of fewer than 2 tokens make no window — they have
/// no next-token loss — and are counted). `on_batch(batch, bytes_done)` is called for each full
/// batch and the last one.
///
/// Errors: a document the tokenizer rejects (naming it), and a pass that makes **no** window (the
/// message says why: no records, every record skipped and for which reason, all too short).
///
/// Sharded (`opts.shard` = `i/n`): only documents whose ordinal `d` has `d mod n = i` are
/// windowed (the others are read, not tokenized); `Candidate::doc` stays the ordinal in the whole
/// source; the stats count this shard's documents, and the reader's skipped records are counted
/// by shard 0 only, so the stats of shards `0..n` add up to the unsharded pass. An empty shard is
/// not an error (the merge checks that the shards together made windows).
pub fn for_each_batch(
    source: &DocSource,
    tokenizer: &Tokenizer,
    cfg: &ModelConfig,
    opts: &WindowOptions,
    mut on_batch: impl FnMut(&[Candidate], u64) -> Result<()>,
) -> Result<PassStats> {
    if opts.batch_size == 0 {
        return Err(TraceError::Usage("--batch-size must be at least 1".into()));
    }
    if opts.max_windows == Some(0) {
        return Err(TraceError::Usage("--max-windows must be at least 1".into()));
    }
    if opts.max_windows.is_some() && !opts.shard.is_all() {
        return Err(TraceError::Usage(
            "--max-windows caps the whole pass and cannot be split across --shard (drop one)"
                .into(),
        ));
    }
    let len = window_len(opts, cfg)?;
    if len < 2 {
        return Err(TraceError::Usage(format!(
            "window length {len}: need at least 2 tokens"
        )));
    }
    let stride = match opts.stride {
        0 => len,
        s if s > len => {
            return Err(TraceError::Usage(format!(
                "--stride {s} is longer than the window of {len} tokens (windows would skip tokens)"
            )))
        }
        s => s,
    };
    if let DocSource::Pairs { pairs, .. } = source {
        if stride != len {
            return Err(TraceError::Usage(
                "--stride applies to documents; prompt/completion pairs are one window each (drop --stride)".into(),
            ));
        }
        return pair_batches(source, pairs, tokenizer, cfg, opts, len, on_batch);
    }
    let encode = |text: &str| encode_for_scoring(tokenizer, cfg, text).map_err(|e| e.to_string());
    let mut pending: Vec<Candidate> = Vec::with_capacity(opts.batch_size);
    let mut bytes = 0u64;
    let mut stats = PassStats {
        source: source.describe(),
        window_len: len,
        ..Default::default()
    };
    let cap = opts.max_windows.unwrap_or(usize::MAX);
    let mut doc_no = 0u64;
    let mut in_shard = 0u64;
    let read = source.for_each_doc(|doc| {
        bytes += doc.text.len() as u64 + 1;
        doc_no += 1;
        if !opts.shard.contains(doc_no - 1) {
            return Ok(true);
        }
        in_shard += 1;
        let ws = windows(&doc, &encode, len, stride)?;
        if ws.iter().all(|w| w.token_ids.len() < 2) {
            stats.too_short += 1;
        }
        // The first token the previous window of this document did not cover.
        let mut covered = 0usize;
        for w in ws {
            let (start, end) = w.token_range;
            let loss_from = covered.saturating_sub(start).max(1);
            covered = end;
            if w.token_ids.len() < 2 {
                continue;
            }
            if stats.windows >= cap {
                stats.capped = true;
                return Ok(false);
            }
            stats.windows += 1;
            stats.tokens += w.token_ids.len() as u64;
            pending.push(Candidate {
                doc: doc_no - 1,
                loss_from,
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
        Ok(true)
    })?;
    if !pending.is_empty() {
        on_batch(&pending, bytes)?;
    }
    stats.documents = in_shard;
    if opts.shard.index == 0 {
        stats.skipped = read.skipped.clone();
    }
    if stats.windows == 0 && opts.shard.is_all() {
        let why = match (source, read.docs) {
            (DocSource::Corpus { read: ro, .. }, 0) => read.why_no_documents(ro),
            (_, 0) => "no documents".to_string(),
            (_, n) => format!(
                "{n} documents, none with at least 2 tokens (BOS included) to make a window"
            ),
        };
        return Err(TraceError::Usage(format!(
            "no candidate windows in {}: {why}",
            stats.source
        )));
    }
    Ok(stats)
}

/// The windows of prompt/completion pairs: one per pair (BOS + prompt + completion, as a query is
/// encoded), the loss from the completion's first token. A pair longer than the window is an error
/// (never truncated silently).
fn pair_batches(
    source: &DocSource,
    pairs: &[crate::query::Query],
    tokenizer: &Tokenizer,
    cfg: &ModelConfig,
    opts: &WindowOptions,
    len: usize,
    mut on_batch: impl FnMut(&[Candidate], u64) -> Result<()>,
) -> Result<PassStats> {
    let mut stats = PassStats {
        source: source.describe(),
        window_len: len,
        ..Default::default()
    };
    let cap = opts.max_windows.unwrap_or(usize::MAX);
    let mut pending = Vec::with_capacity(opts.batch_size);
    let mut bytes = 0u64;
    for (i, q) in pairs.iter().enumerate() {
        if !opts.shard.contains(i as u64) {
            continue;
        }
        if stats.windows >= cap {
            stats.capped = true;
            break;
        }
        let id = if q.id.is_empty() {
            format!("pair-{}", i + 1)
        } else {
            q.id.clone()
        };
        let (ids, n_prompt) = crate::query::encode_query(tokenizer, cfg, &q.prompt, &q.completion)
            .map_err(|e| TraceError::Usage(format!("{}: pair {id}: {e}", source.describe())))?;
        if ids.len() > len {
            return Err(TraceError::Usage(format!(
                "{}: pair {id} has {} tokens, more than the window of {len} (raise --max-len up to the model's context)",
                source.describe(),
                ids.len()
            )));
        }
        stats.documents += 1;
        stats.windows += 1;
        stats.tokens += ids.len() as u64;
        bytes += (q.prompt.len() + q.completion.len()) as u64;
        let text = format!("{}{}", q.prompt, q.completion);
        pending.push(Candidate {
            doc: i as u64,
            loss_from: n_prompt.max(1),
            doc_id: id,
            window: 0,
            span: (0, text.len()),
            text,
            ids,
        });
        if pending.len() == opts.batch_size {
            on_batch(&pending, bytes)?;
            pending.clear();
        }
    }
    if !pending.is_empty() {
        on_batch(&pending, bytes)?;
    }
    Ok(stats)
}

/// The model batch of `cands` (right-padded with `pad`), each with its loss start.
pub fn candidate_batch(cands: &[Candidate], pad: u32) -> Result<tda_model::TokenBatch> {
    let seqs: Vec<Vec<u32>> = cands.iter().map(|c| c.ids.clone()).collect();
    let starts: Vec<usize> = cands.iter().map(|c| c.loss_from).collect();
    Ok(tda_model::TokenBatch::new(&seqs, pad)?.with_loss_from(&starts)?)
}
