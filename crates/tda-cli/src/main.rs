//! `tda`: training-data and context attribution for language models.
//!
//! This crate only parses arguments and calls the libraries; see `cmd/` for one file per command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod output;

#[derive(Parser)]
#[command(
    name = "tda",
    version,
    about = "Training-data attribution for language models: which documents made the model say this?",
    after_help = "Start with `tda demo`: it generates a small corpus, trains a tiny model on it, and generates text.\nEach command has its own --help with examples."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the main job end to end on the embedded default (no download).
    Demo(cmd::demo::DemoArgs),
    /// Train a model from scratch or fine-tune an HF folder.
    Train(cmd::train::TrainArgs),
    /// Generate a continuation of a prompt.
    Generate(cmd::infer::GenerateArgs),
    /// Print each token of a text with its log-probability.
    Logprobs(cmd::infer::LogprobsArgs),
    /// Write the generated biography corpus that the demo and the tests use.
    SynthCorpus(cmd::demo::SynthArgs),
    /// Fit EK-FAC curvature factors of a model on a corpus (for `tda trace`).
    Fit(cmd::fit::FitArgs),
    /// Which training documents made the model say this: influence scores of corpus windows.
    Trace(cmd::trace::TraceArgs),
    /// Merge the partials of a sharded `fit` or `trace` (the reduce step of a cluster job).
    Merge(cmd::merge::MergeArgs),
    /// Self-influence of every corpus window (outliers).
    SelfInfluence(cmd::self_influence::SelfInfluenceArgs),
    /// Build (or extend) the tantivy TF-IDF/BM25 index of a corpus.
    Index(cmd::index::IndexArgs),
    /// Score a candidate pool against target examples and keep the best for fine-tuning.
    Select(cmd::select::SelectArgs),
    /// Query a corpus index: the prefilter behind `tda trace --index`.
    Search(cmd::search::SearchArgs),
    /// Attribute each sentence of a RAG answer to the retrieved documents (MIRAGE-style).
    Cite(cmd::cite::CiteArgs),
    /// Explain one generation token by token: prompt documents, question, training data (traced), layers.
    Explain(cmd::explain::ExplainArgs),
    /// Are the attributions right? Quality against retrained models (LDS).
    #[command(subcommand)]
    Eval(cmd::eval::EvalCommand),
}

/// Parses the command line. `--help` and `--version` print and exit 0; a usage error is one line
/// (clap's message without its usage block, which `--help` shows) and exit 1, like every error.
fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            let text = e.render().to_string();
            let line = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("tip:")
                        && !l.starts_with("For more information")
                })
                .collect::<Vec<_>>()
                .join(" ");
            eprintln!("{line} (see --help)");
            Err(ExitCode::FAILURE)
        }
    }
}

/// The chain of causes joined by ": " on one line, leaving out a cause whose text the message
/// already contains (error types that name a file often print their io cause too).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg.replace('\n', " ")
}

/// Keeps freed tensor buffers in glibc's heap instead of handing them back to the kernel.
///
/// burn allocates a fresh buffer per op; with glibc's defaults, buffers above the (dynamic) mmap
/// threshold are mmapped and unmapped every op, and a freed heap top above 128 KiB is trimmed, so
/// every batch pays page faults and zeroing again (~25 % of a forward+backward on the 2-core CI
/// machine, `perf`: `exc_page_fault`, `clear_page`). Buffers up to 32 MiB (glibc's largest
/// threshold) now come from the heap, and the heap is trimmed only above 1 GiB free. Peak RSS is
/// unchanged to within a few per cent: the high-water mark is the same buffers.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(&a),
        Command::Train(a) => cmd::train::run(&a),
        Command::Generate(a) => cmd::infer::generate(&a),
        Command::Logprobs(a) => cmd::infer::logprobs(&a),
        Command::SynthCorpus(a) => cmd::demo::synth(&a),
        Command::Fit(a) => cmd::fit::run(&a),
        Command::Trace(a) => cmd::trace::run(&a),
        Command::Merge(a) => cmd::merge::run(&a),
        Command::SelfInfluence(a) => cmd::self_influence::run(&a),
        Command::Index(a) => cmd::index::run(&a),
        Command::Search(a) => cmd::search::run(&a),
        Command::Select(a) => cmd::select::run(&a),
        Command::Cite(a) => cmd::cite::run(&a),
        Command::Explain(a) => cmd::explain::run(&a),
        Command::Eval(c) => cmd::eval::run(&c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
