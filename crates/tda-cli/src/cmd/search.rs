//! `tda search`: query the prefilter index, e.g. to inspect the candidates `tda trace` would score.

use std::path::PathBuf;
use tda_corpus::{CorpusIndex, QueryOptions, Ranking};

/// Top-K corpus documents sharing the most weighted terms with a query.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  tda search --index indexes/wiki --query \"Water is composed of hydrogen and oxygen\" --top-k 10\n  tda search --index indexes/wiki --query-file completion.txt --top-k 10000 --ranking tfidf --json > candidates.json"
)]
pub struct SearchArgs {
    /// Index folder built by `tda index`.
    #[arg(long)]
    pub index: PathBuf,
    /// Query text (a prompt + completion may be long).
    #[arg(
        long,
        required_unless_present = "query_file",
        conflicts_with = "query_file"
    )]
    pub query: Option<String>,
    /// Read the query text from a file.
    #[arg(long)]
    pub query_file: Option<PathBuf>,
    /// Number of documents to return.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Ranking function.
    #[arg(long, value_enum, default_value_t = RankingArg::Bm25)]
    pub ranking: RankingArg,
    /// Keep at most this many distinct query terms (highest qtf x idf); 0 keeps all.
    #[arg(long, default_value_t = 64)]
    pub max_terms: usize,
    /// Ignore query terms found in more than this fraction of documents (e.g. 0.5).
    #[arg(long)]
    pub max_df: Option<f64>,
    /// Also print each hit's text (read back from the corpus).
    #[arg(long)]
    pub show_text: bool,
    /// Print JSON (hits, query terms) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankingArg {
    /// Okapi BM25 (tantivy).
    Bm25,
    /// Classic TF-IDF (Lucene ClassicSimilarity).
    Tfidf,
}

pub fn run(args: &SearchArgs) -> anyhow::Result<()> {
    let query = match (&args.query, &args.query_file) {
        (Some(q), _) => q.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?
        }
        (None, None) => anyhow::bail!("give --query or --query-file"),
    };
    let idx = CorpusIndex::open(&args.index)?;
    let opts = QueryOptions {
        ranking: match args.ranking {
            RankingArg::Bm25 => Ranking::Bm25,
            RankingArg::Tfidf => Ranking::TfIdf,
        },
        max_terms: (args.max_terms > 0).then_some(args.max_terms),
        max_doc_freq_ratio: args.max_df,
        tantivy_engine: false,
    };
    let t0 = std::time::Instant::now();
    let res = idx.search_with(&query, args.top_k, &opts)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let texts = if args.show_text {
        Some(idx.fetch(&res.hits)?)
    } else {
        None
    };
    let mut out = String::new();
    if args.json {
        let hits: Vec<serde_json::Value> = res
            .hits
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let mut v = serde_json::json!({
                    "rank": i + 1, "doc_id": h.doc_id, "score": h.score, "source": h.source,
                    "span": h.span,
                });
                if let Some(t) = &texts {
                    v["text"] = serde_json::Value::String(h.text(&t[i]).to_string());
                }
                v
            })
            .collect();
        let json = serde_json::json!({
            "index": args.index, "ranking": opts.ranking, "top_k": args.top_k,
            "terms": res.terms, "dropped_terms": res.dropped_terms, "millis": ms, "hits": hits,
        });
        out = serde_json::to_string_pretty(&json)? + "\n";
    } else {
        eprintln!(
            "{} hits in {ms:.1} ms; {} query terms used, {} dropped",
            res.hits.len(),
            res.terms.len(),
            res.dropped_terms
        );
        for (i, h) in res.hits.iter().enumerate() {
            out += &format!(
                "{:>6}  {:>9.4}  {}  ({})\n",
                i + 1,
                h.score,
                h.doc_id,
                h.source
            );
            if let Some(t) = &texts {
                let s: String = h.text(&t[i]).chars().take(300).collect();
                out += &format!("        {}\n", s.replace('\n', " "));
            }
        }
    }
    // A closed pipe (`| head`) is not an error.
    use std::io::Write;
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
