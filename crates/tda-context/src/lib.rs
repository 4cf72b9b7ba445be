//! Context attribution for RAG answers, MIRAGE-style (Qi et al., EMNLP 2024): which retrieved
//! document supports each sentence of an answer, read from the model's internals.
//!
//! Pipeline ([`attribute`]):
//! 1. [`prompt`]: documents rendered into the prompt (`Document [i](Title: …): text\n`, or the
//!    model's chat template), tokenized once; every prompt token is mapped by byte offsets to the
//!    template, a document header, a title or a document body.
//! 2. Generation (greedy, or sampled with a seed) unless an answer is given.
//! 3. [`cti`]: KL(P_noctx ‖ P_ctx) per answer token from two teacher-forced forward passes;
//!    threshold mean + k·std (k = 1), fixed, or top-k.
//! 4. [`cci`]: for each selected token, the gradient of the contrastive target w.r.t. the input
//!    embeddings (batched: one backward for many tokens), reduced to saliency / input × gradient.
//! 5. [`cite`]: per-token Top-5 %-of-range filter over document tokens, sums per document (headers,
//!    template, titles excluded), sums per answer sentence, ≤ 3 citations per sentence.
//! 6. [`report`]: JSON and a self-contained HTML page.
//!
//! Inputs: a model and tokenizer (`tda-model`), a question, retrieved documents ([`Document`],
//! read by [`read_documents`] through `tda-corpus`), optionally a given answer. Output: an
//! [`Attribution`] (per answer token KL and document scores, per sentence citations) that renders
//! as JSON or a self-contained HTML page.
//!
//! Invariants: exactly two forward passes for CTI and one batched backward per `max_batch_rows`
//! selected tokens for CCI; no weight gradient is ever computed (the model is frozen); a prompt
//! token belongs to at most one document, by byte offsets of a single tokenization; document
//! numbers `[i]` are 1-based positions in the input order.
//!
//! Differences from MIRAGE's code, on purpose: deterministic contrast token (argmax of P_noctx,
//! not sampled); header/template tokens never count for a document; the filter's range is taken
//! over document tokens only; sentences and documents by byte offsets, not re-tokenization.

pub mod ablation;
pub mod cci;
pub mod cite;
pub mod cti;
pub mod docs;
pub mod error;
pub mod pipeline;
pub mod prompt;
pub mod report;

pub use ablation::Method;
pub use cci::Gradient;
pub use cite::CciFilter;
pub use cti::Threshold;
pub use docs::{read_documents, Document};
pub use error::{ContextError, Result};
pub use pipeline::{attribute, Options, Request};
pub use prompt::{ChatTemplate, PromptTemplate};
pub use report::Attribution;
