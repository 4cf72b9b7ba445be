//! Writes planted-truth RAG examples as JSON lines (question, documents, reference answer, the
//! planted documents), for tools outside this repository — e.g. `benches/inseq/run.sh`, which
//! attributes the same answers with Inseq:
//!
//! ```sh
//! cargo run --release -p tda-eval --example rag_jsonl -- 10 20241112 > /tmp/rag.jsonl
//! ```

use std::io::Write;

use tda_eval::rag::rag_set;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(10, |s| s.parse().expect("count"));
    let seed: u64 = args.get(2).map_or(20_241_112, |s| s.parse().expect("seed"));
    let mut out = std::io::stdout().lock();
    for ex in rag_set(n, seed) {
        let line = serde_json::to_string(&ex).expect("json");
        writeln!(out, "{line}").expect("stdout");
    }
}
