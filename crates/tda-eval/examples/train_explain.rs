//! Trains the planted `tda explain` model (`tests/fixtures/explain`): the RAG reader of
//! `tests/fixtures/rag` fine-tuned on [`tda_eval::explain_world`] — memorised facts stated in
//! training documents, recall examples, and plain RAG examples:
//!
//! ```sh
//! cargo run --release -p tda-eval --example train_explain -- tests/fixtures/explain 1200 tests/fixtures/rag
//! ```
//!
//! Deterministic. At the end it prints the exact match of greedy answers on the world's cases.
//! Two other modes, for training with `tests/fixtures/rag/train.py` (PyTorch, ≈ 3.5× burn's CPU
//! throughput on this model) and checking the result with tda's own loader:
//!
//! ```sh
//! cargo run --release -p tda-eval --example train_explain -- --ids tests/fixtures/rag > ids.jsonl
//! cargo run --release -p tda-eval --example train_explain -- --eval tests/fixtures/explain
//! ```
//!
//! `--ids` writes the world's training items as `{"ids", "answer_from"}` lines (the format of
//! `rag_ids`; `answer_from` = 1 for statement documents, trained on every token).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use tda_context::pipeline::generate_answer;
use tda_eval::rag::answer_options;
use tda_model::device::CpuAutodiff;
use tda_model::TokenBatch;
use tda_train::train::Trainer;
use tda_train::TrainParams;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let device = Default::default();
    let w = tda_eval::explain_world::fixture_world();
    let load = |dir: &str| {
        tda_model::load_folder::<CpuAutodiff>(std::path::Path::new(dir), &device)
            .expect("model folder")
    };
    match args[1].as_str() {
        "--ids" => {
            let m = load(&args[2]);
            let eot = m.model.config.eos_token_id.expect("eos");
            for (ids, from) in sequences(&w, &m.tokenizer, eot) {
                println!("{}", serde_json::json!({ "ids": ids, "answer_from": from }));
            }
            return;
        }
        "--eval" => {
            let m = load(&args[2]);
            exact_match(&m.model.valid(), &m.tokenizer, &w);
            return;
        }
        _ => {}
    }
    let out = PathBuf::from(&args[1]);
    let steps: usize = args[2].parse().expect("steps");
    let m = load(&args[3]);
    let tok = m.tokenizer.clone();
    let eot = m.model.config.eos_token_id.expect("eos");
    let seqs = sequences(&w, &tok, eot);
    eprintln!("{} training items, {} cases", seqs.len(), w.cases.len());
    let params = TrainParams {
        seq_len: m.model.config.max_positions,
        batch_size: 16,
        steps,
        lr: 1e-3,
        warmup_steps: 50,
        min_lr_ratio: 0.05,
        weight_decay: 0.01,
        grad_clip: 1.0,
        seed: 11,
        checkpoint_every: 0,
        proximal: 0.0,
    };
    let mut trainer = Trainer::new(m.model, &params).expect("trainer");
    let t0 = Instant::now();
    for step in 0..steps {
        let rows: Vec<usize> = (0..16).map(|i| (step * 16 + i) % seqs.len()).collect();
        let batch: Vec<Vec<u32>> = rows.iter().map(|&r| seqs[r].0.clone()).collect();
        let from: Vec<usize> = rows.iter().map(|&r| seqs[r].1).collect();
        let batch = TokenBatch::new(&batch, eot)
            .and_then(|b| b.with_loss_from(&from))
            .expect("batch");
        let (loss, _) = trainer.step(&batch).expect("step");
        if step % 100 == 0 || step + 1 == steps {
            eprintln!(
                "step {step:5}  loss {loss:.4}  {:.0} s",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let model = trainer.into_model().valid();
    tda_model::save_folder(&model, &tok, &out).expect("save");
    eprintln!(
        "saved {}; {:.0} s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    exact_match(&model, &tok, &w);
}

/// Greedy exact match of `model` on the world's cases, printed (with the misses).
fn exact_match(
    model: &tda_model::Transformer<
        <CpuAutodiff as burn::tensor::backend::AutodiffBackend>::InnerBackend,
    >,
    tok: &tda_model::Tokenizer,
    w: &tda_eval::explain_world::ExplainWorld,
) {
    let eot = model.config.eos_token_id.expect("eos");
    let opts = answer_options(eot);
    let mut exact = 0;
    for c in &w.cases {
        let got = generate_answer(model, tok, &c.question, &c.docs, &opts).unwrap_or_default();
        if got == c.answer {
            exact += 1;
        } else {
            eprintln!("want {:?}\n got {got:?}", c.answer);
        }
    }
    eprintln!("exact match on the {} cases: {exact}", w.cases.len());
}

/// The world's training items as (ids = eot, text, eot; index of the first loss target).
fn sequences(
    w: &tda_eval::explain_world::ExplainWorld,
    tok: &tda_model::Tokenizer,
    eot: u32,
) -> Vec<(Vec<u32>, usize)> {
    w.train
        .iter()
        .map(|it| {
            let mut ids = vec![eot];
            ids.extend(
                tok.encode(it.text.as_str(), false)
                    .expect("encode")
                    .get_ids(),
            );
            ids.push(eot);
            let from = it.answer_at.map_or(1, |at| {
                1 + tok
                    .encode(it.text[..at].trim_end(), false)
                    .expect("encode")
                    .len()
            });
            (ids, from)
        })
        .collect()
}
