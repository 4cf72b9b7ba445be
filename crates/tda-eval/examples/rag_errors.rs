//! Prints the held-out questions a RAG model folder answers wrongly (greedy), its exact match, and
//! the right answer sentences per kind of fact:
//! `cargo run --release -p tda-eval --example rag_errors -- tests/fixtures/rag [n]`.

use std::path::PathBuf;

use tda_context::pipeline::generate_answer;
use tda_eval::rag::{answer_options, rag_set};
use tda_model::device::Cpu;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("tests/fixtures/rag", String::as_str));
    let n: usize = args.get(2).map_or(100, |s| s.parse().expect("n"));
    let m = tda_model::load_folder::<Cpu>(&dir, &Default::default()).expect("model folder");
    let opts = answer_options(m.model.config.eos_token_id.expect("eos"));
    let mut exact = 0;
    // Per kind of fact (by its predicate): right sentences, all sentences.
    let kinds = ["was born in", "works as a", "has a", "likes the colour"];
    let mut right = [0usize; 4];
    let mut all = [0usize; 4];
    for ex in rag_set(n, 99) {
        let got = generate_answer(&m.model, &m.tokenizer, &ex.question, &ex.docs, &opts)
            .unwrap_or_default();
        for s in &ex.sentences {
            if let Some(k) = kinds.iter().position(|p| s.contains(p)) {
                all[k] += 1;
                right[k] += usize::from(got.contains(s.as_str()));
            }
        }
        if got == ex.answer {
            exact += 1;
        } else {
            println!("{}\n  want: {}\n  got:  {got}", ex.question, ex.answer);
        }
    }
    println!("exact match {exact}/{n}");
    for (k, kind) in kinds.iter().enumerate() {
        println!("  \"{kind}\" sentences right: {}/{}", right[k], all[k]);
    }
}
