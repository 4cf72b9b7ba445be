//! Prints the held-out questions a RAG model folder answers wrongly (greedy), and its exact match:
//! `cargo run --release -p tda-eval --example rag_errors -- tests/fixtures/rag [n]`.

use std::path::PathBuf;

use tda_eval::rag::{rag_set, template};
use tda_model::device::Cpu;
use tda_model::infer::{encode_for_scoring, generate, GenerateOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("tests/fixtures/rag", String::as_str));
    let n: usize = args.get(2).map_or(100, |s| s.parse().expect("n"));
    let m = tda_model::load_folder::<Cpu>(&dir, &Default::default()).expect("model folder");
    let eot = m.model.config.eos_token_id;
    let mut exact = 0;
    for ex in rag_set(n, 99) {
        let (prompt, _) =
            tda_context::prompt::render_prompt(&template(), &ex.question, &ex.docs, None).unwrap();
        let (ids, _) = encode_for_scoring(&m.tokenizer, &m.model.config, &prompt).unwrap();
        let opts = GenerateOptions {
            max_new_tokens: 40,
            stop_token: eot,
            ..Default::default()
        };
        let mut new = generate(&m.model, &ids, &opts).unwrap();
        new.retain(|t| Some(*t) != eot);
        let text = m.tokenizer.decode(&new, false).unwrap();
        if text.trim() == ex.answer {
            exact += 1;
        } else {
            println!(
                "{}\n  want: {}\n  got:  {}",
                ex.question,
                ex.answer,
                text.trim()
            );
        }
    }
    println!("exact match {exact}/{n}");
}
