//! One module per subcommand.

pub mod cite;
pub mod demo;
pub mod eval;
pub mod explain;
pub mod fit;
pub mod index;
pub mod infer;
pub mod merge;
pub mod parse;
pub mod search;
pub mod select;
pub mod self_influence;
pub mod trace;
pub mod train;

use tda_corpus::{ReadOptions, TextMode};
use tda_model::device::{check_cuda, DeviceKind};

/// `--dtype`, the same for every command that runs a model (`tda_model::ModelDtype`).
pub const DTYPE_HELP: &str = "Parameters and activations in f32, bf16 or f16. Half-precision weights stored so are copied to the device as stored (half the memory, no f32 copy); norms, attention softmax, logits, curvature and scores stay f32. On a GPU half precision runs on tensor cores; on the CPU backend its GEMMs convert to f32 and run slower.";

/// How a corpus is read: the same flags for every command that reads one (index, fit, trace,
/// self-influence, train). Each pass prints what it read and skipped; a pass with no usable
/// record is an error that says why.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Corpus")]
pub struct CorpusArgs {
    /// Field (jsonl) or column (parquet) holding the text.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Field or column holding the document id (records without one are named `<file>:<row>`).
    #[arg(long, default_value = "id")]
    pub id_column: String,
    /// Plain-text files: one document per line or per file.
    #[arg(long, value_enum, default_value_t = TextModeArg::Line)]
    pub text_mode: TextModeArg,
    /// Skip documents larger than this many MiB (counted in the summary).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_doc_mib: u32,
    /// Fail on the first bad record instead of skipping and counting it.
    #[arg(long)]
    pub strict: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextModeArg {
    Line,
    File,
}

impl CorpusArgs {
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            text_column: self.text_column.clone(),
            id_column: Some(self.id_column.clone()),
            text_mode: match self.text_mode {
                TextModeArg::Line => TextMode::Line,
                TextModeArg::File => TextMode::File,
            },
            max_doc_bytes: (self.max_doc_mib as usize) << 20,
            strict: self.strict,
            ..Default::default()
        }
    }
}

/// Supervised fine-tuning data: a jsonl of `{prompt, completion, id?}` pairs instead of documents.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Corpus")]
pub struct PairArgs {
    /// The corpus is a jsonl of {"prompt", "completion"} pairs: one window per pair (BOS, prompt,
    /// completion), the loss on the completion tokens only (as a completion-only fine-tune). With
    /// `--index I` (built by `tda index --corpus FILE --text-column completion`), the prefilter's
    /// hits are re-read and scored as pairs.
    #[arg(long, conflicts_with_all = ["text_column", "id_column", "text_mode", "max_doc_mib", "strict"])]
    pub completion_only: bool,
}

impl PairArgs {
    /// Documents or pairs.
    pub fn kind(&self) -> tda_trace::CandidateKind {
        if self.completion_only {
            tda_trace::CandidateKind::Pairs
        } else {
            tda_trace::CandidateKind::Documents
        }
    }

    /// The candidate source of `corpus`: its documents read with `read`, or its pairs.
    pub fn source(
        &self,
        corpus: &std::path::Path,
        read: &CorpusArgs,
    ) -> anyhow::Result<tda_trace::DocSource> {
        Ok(tda_trace::DocSource::of_kind(
            corpus,
            &read.read_options(),
            self.kind(),
        )?)
    }
}

/// How the corpus is cut into model-length windows (shared by fit, trace and self-influence).
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Windows")]
pub struct WindowArgs {
    /// Tokens per window (0 = min(the model's max_positions, 2048), printed with the corpus summary; more than max_positions is an error).
    #[arg(long, default_value_t = 0)]
    pub max_len: usize,
    /// Overlapping windows: a window starts every N tokens (≤ the window length; default: the
    /// window length, disjoint). A window after a document's first scores only the tokens the
    /// previous one did not, with the overlap as context: every token is a loss target once.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub stride: Option<u32>,
    /// Windows per model batch.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Use at most this many windows.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_windows: Option<u64>,
}

impl WindowArgs {
    pub fn options(&self) -> tda_trace::WindowOptions {
        tda_trace::WindowOptions {
            max_len: self.max_len,
            stride: self.stride.map_or(0, |s| s as usize),
            batch_size: self.batch_size as usize,
            max_windows: self.max_windows.map(|n| n as usize),
            shard: tda_trace::Shard::ALL,
            memory_budget: None,
            compute: tda_trace::device::ComputeOn::Host,
            precision: tda_trace::device::Precision::F32,
        }
    }
}

/// `--compute-on`, or its default for the device: the model's device on a GPU, the host's
/// faster kernels on a CPU.
pub fn compute_on(
    flag: Option<tda_trace::device::ComputeOn>,
    device: DeviceKind,
) -> tda_trace::device::ComputeOn {
    flag.unwrap_or(match device {
        DeviceKind::Cuda => tda_trace::device::ComputeOn::Device,
        DeviceKind::Cpu => tda_trace::device::ComputeOn::Host,
    })
}

/// Fails with a clear message when `kind` cannot run here (CUDA requested without driver or feature).
pub fn check_device(kind: DeviceKind) -> anyhow::Result<()> {
    if kind == DeviceKind::Cuda {
        check_cuda().map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// Runs `$body` with `B` bound to the inference backend and `AD` to its autodiff backend and
/// `device` to the device, for the device kind `$kind`.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $AD:ident, $device:ident| $body:block) => {{
        $crate::cmd::check_device($kind)?;
        match $kind {
            tda_model::device::DeviceKind::Cpu => {
                #[allow(dead_code)]
                type $B = tda_model::device::Cpu;
                #[allow(dead_code)]
                type $AD = tda_model::device::CpuAutodiff;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            tda_model::device::DeviceKind::Cuda => {
                #[allow(dead_code)]
                type $B = tda_model::device::Gpu;
                #[allow(dead_code)]
                type $AD = tda_model::device::GpuAutodiff;
                let $device = Default::default();
                $body
            }
            #[cfg(not(feature = "cuda"))]
            tda_model::device::DeviceKind::Cuda => {
                unreachable!("check_device rejects cuda without the feature")
            }
        }
    }};
}
