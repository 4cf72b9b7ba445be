//! Writes planted-truth RAG training sequences as token ids, one JSON line each, for the reader's
//! training script (`tests/fixtures/rag/train.py`):
//!
//! ```sh
//! cargo run --release -p tda-eval --example rag_ids -- tests/fixtures/rag 40000 3 > /tmp/ids.jsonl
//! cargo run --release -p tda-eval --example rag_ids -- tests/fixtures/rag 40000 4 training > /tmp/ft.jsonl
//! ```
//!
//! A line is `{"ids": [eot, …prompt, …answer, eot], "answer_from": k}`: `ids[k]` is the first
//! answer token (the prompt is tokenized alone, as `tda cite` does), so a loss on the answer
//! predicts `ids[k..]`. Same encoding as `train_rag` (the tokenizer of the given model folder).

use std::io::Write;

use tda_eval::rag::{rag_set, rag_training_set, template, training_text};
use tda_train::END_OF_TEXT;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let folder = args.get(1).map_or("tests/fixtures/rag", String::as_str);
    let n: usize = args.get(2).map_or(40_000, |s| s.parse().expect("count"));
    let seed: u64 = args.get(3).map_or(3, |s| s.parse().expect("seed"));
    // Optional 4th argument `training`: `rag_training_set` (random tie values, ablated documents).
    let training = args.get(4).is_some_and(|a| a == "training");
    let tok = tda_model::Tokenizer::from_file(format!("{folder}/tokenizer.json"))
        .expect("tokenizer.json");
    let eot = tok.token_to_id(END_OF_TEXT).expect("end-of-text token");
    let encode = |t: &str| -> Vec<u32> { tok.encode(t, false).expect("encode").get_ids().to_vec() };
    let mut out = std::io::stdout().lock();
    let set = if training {
        rag_training_set(n, seed)
    } else {
        rag_set(n, seed)
    };
    for ex in set {
        let (prompt, _) =
            tda_context::prompt::render_prompt(&template(), &ex.question, &ex.docs, None)
                .expect("the planted template renders");
        let mut ids = vec![eot];
        ids.extend(encode(&training_text(&ex)));
        ids.push(eot);
        let answer_from = 1 + encode(&prompt).len();
        let line = serde_json::json!({ "ids": ids, "answer_from": answer_from });
        writeln!(out, "{line}").expect("stdout");
    }
}
