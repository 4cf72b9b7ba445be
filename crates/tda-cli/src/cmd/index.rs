//! `tda index`: build (or extend) the TF-IDF / BM25 prefilter index of a corpus.

use std::path::PathBuf;
use tda_corpus::{AnalyzerSettings, CorpusIndex, IndexOptions, Passages, Progress};

/// Build a tantivy index of a corpus for the `tda trace` prefilter.
///
/// Example:
///   tda index --corpus data/shards/ --index indexes/pile-sample --text-column text
///   tda index --corpus data/new-shard.parquet --index indexes/pile-sample --add
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  tda index --corpus data/wiki.jsonl            # -> indexes/wiki/\n  tda index --corpus data/shards/ --index indexes/pile --text-column content\n  tda index --corpus data/shards/ --index indexes/pile --add   # index new shards only"
)]
pub struct IndexArgs {
    /// Corpus: a .jsonl/.json/.txt/.parquet file or a directory of shards (repeatable).
    #[arg(long, required = true, num_args = 1..)]
    pub corpus: Vec<PathBuf>,
    /// Index folder [default: indexes/<corpus name>].
    #[arg(long)]
    pub index: Option<PathBuf>,
    #[command(flatten)]
    pub read: super::CorpusArgs,
    /// Keep English stop-words in the index.
    #[arg(long)]
    pub keep_stopwords: bool,
    /// English stemming (running ~ runs ~ run).
    #[arg(long)]
    pub stem: bool,
    /// Add the corpus files not yet in an existing index (analyzer, corpus options and passages
    /// come from the index, so those flags are refused with --add).
    #[arg(long, conflicts_with = "overwrite", conflicts_with_all = ADD_CONFLICTS)]
    pub add: bool,
    /// Replace an existing index (the old one is kept until the new one is complete).
    #[arg(long)]
    pub overwrite: bool,
    /// Indexing threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Indexing memory budget in MiB (bounds memory use whatever the corpus size).
    #[arg(long, default_value_t = 256)]
    pub memory_mib: usize,
    /// Index long documents as passages of this many words (the prefilter then ranks passages,
    /// close to model-length sequences; hits carry the passage's byte span).
    #[arg(long)]
    pub passage_words: Option<usize>,
    /// Words between passage starts [default: passage-words / 2].
    #[arg(long, requires = "passage_words")]
    pub passage_stride: Option<usize>,
    /// Do not merge segments at the end (faster build, slightly slower queries).
    #[arg(long)]
    pub no_merge: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Settings fixed when the index was built; `--add` reuses them.
const ADD_CONFLICTS: [&str; 10] = [
    "no_merge",
    "text_column",
    "id_column",
    "text_mode",
    "max_doc_mib",
    "strict",
    "keep_stopwords",
    "stem",
    "passage_words",
    "passage_stride",
];

pub fn run(args: &IndexArgs) -> anyhow::Result<()> {
    let dir = match &args.index {
        Some(d) => d.clone(),
        None => tda_corpus::default_index_dir(&args.corpus[0]),
    };
    if !args.add {
        crate::output::check_out(&dir, tda_io::Output::Folder)?;
    }
    let progress = if args.quiet {
        Progress::Hidden
    } else {
        Progress::Bar
    };
    let memory = args.memory_mib << 20;
    let summary = if args.add {
        let mut idx = CorpusIndex::open(&dir)?;
        idx.add(&args.corpus, progress, args.threads, memory)?
    } else {
        let opts = IndexOptions {
            analyzer: AnalyzerSettings {
                stopwords: !args.keep_stopwords,
                stemming: args.stem,
                ..Default::default()
            },
            read: args.read.read_options(),
            threads: args.threads,
            memory_budget: memory,
            merge: !args.no_merge,
            overwrite: args.overwrite,
            passages: args.passage_words.map(|words| Passages {
                words,
                stride: args.passage_stride.unwrap_or((words / 2).max(1)),
            }),
        };
        CorpusIndex::build_many(&args.corpus, &dir, &opts, progress)?.1
    };
    eprintln!("{summary}");
    eprintln!("index: {}", dir.display());
    Ok(())
}
