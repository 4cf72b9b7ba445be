//! Trains the planted-truth RAG model that `tests/fixtures/rag/` holds:
//!
//! ```sh
//! cargo run --release -p tda-eval --example train_rag -- tests/fixtures/rag [steps]
//! # continue training a folder on 20 000 fresh examples:
//! cargo run --release -p tda-eval --example train_rag -- OUT STEPS INIT_DIR
//! # … with the loss on the answer tokens only (the reading task), on 40 000 fresh examples:
//! cargo run --release -p tda-eval --example train_rag -- OUT STEPS INIT_DIR answer
//! ```
//!
//! A small Llama-shaped model (tied embeddings, byte-level BPE of 512 tokens trained on the set)
//! learns to answer questions of [`tda_eval::rag_set`] from the documents in the
//! prompt (next-token loss on the whole prompt + answer). Deterministic; ≈ 3–5 min on 2 cores.
//! At the end it prints the exact-match rate of greedy answers on held-out examples.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use tda_context::pipeline::generate_answer;
use tda_eval::rag::answer_options;
use tda_eval::rag::{rag_set, template, training_text};
use tda_model::device::CpuAutodiff;
use tda_model::TokenBatch;
use tda_train::train::Trainer;
use tda_train::{train_bpe, ModelShape, TrainParams, END_OF_TEXT};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = PathBuf::from(args.get(1).map_or("tests/fixtures/rag", String::as_str));
    let steps: usize = args.get(2).map_or(1500, |s| s.parse().expect("steps"));
    // Optional: continue from a model folder (its tokenizer is kept) with fresh examples.
    let init = args.get(3).map(PathBuf::from);
    // Optional: the loss on the answer only (after "Answer:"), not on the whole prompt.
    let answer_only = args.get(4).is_some_and(|a| a == "answer");
    let (n_examples, data_seed) = match (&init, answer_only) {
        (Some(_), true) => (40_000, 3),
        (Some(_), false) => (20_000, 2),
        (None, _) => (6000, 1),
    };
    let train_set = rag_set(n_examples, data_seed);
    let texts: Vec<String> = train_set.iter().map(training_text).collect();
    let init =
        init.map(|d| tda_model::load_folder::<CpuAutodiff>(&d, &Default::default()).expect("init"));
    let tok = match &init {
        Some(m) => m.tokenizer.clone(),
        None => train_bpe(texts.iter(), 512).expect("tokenizer"),
    };
    let eot = tok.token_to_id(END_OF_TEXT).expect("eot");
    let shape = ModelShape {
        arch: "llama".into(),
        hidden: 64,
        n_layers: 3,
        n_heads: 4,
        n_kv_heads: Some(4),
        intermediate: 128,
        max_positions: 256,
        vocab_size: 512,
        rope_theta: 10_000.0,
        tie_embeddings: Some(true),
    };
    let cfg = shape.to_model_config(eot).expect("config");
    let seqs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            let mut ids = vec![eot];
            ids.extend(tok.encode(t.as_str(), false).expect("encode").get_ids());
            ids.push(eot);
            ids
        })
        .collect();
    // Per sequence, the position of its first answer token (the prompt is tokenized alone).
    let answer_from: Vec<usize> = train_set
        .iter()
        .map(|ex| {
            let (prompt, _) =
                tda_context::prompt::render_prompt(&template(), &ex.question, &ex.docs, None)
                    .unwrap();
            1 + tok.encode(prompt.as_str(), false).expect("encode").len()
        })
        .collect();
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    assert!(longest <= cfg.max_positions, "example of {longest} tokens");
    eprintln!(
        "{} examples, longest {longest} tokens, {} params",
        seqs.len(),
        cfg.n_params()
    );
    let params = TrainParams {
        seq_len: cfg.max_positions,
        batch_size: 16,
        steps,
        lr: if answer_only {
            1e-3
        } else if args.len() > 3 {
            2e-3
        } else {
            3e-3
        },
        warmup_steps: 50,
        min_lr_ratio: 0.05,
        weight_decay: 0.01,
        grad_clip: 1.0,
        seed: 7,
        checkpoint_every: 0,
        proximal: 0.0,
    };
    let device = Default::default();
    let model = match init {
        Some(m) => m.model,
        None => tda_model::Transformer::<CpuAutodiff>::init(&cfg, 7, &device),
    };
    let mut trainer = Trainer::new(model, &params).expect("trainer");
    let t0 = Instant::now();
    for step in 0..steps {
        let rows: Vec<usize> = (0..params.batch_size)
            .map(|i| (step * params.batch_size + i) % seqs.len())
            .collect();
        let batch: Vec<Vec<u32>> = rows.iter().map(|&r| seqs[r].clone()).collect();
        let mut batch = TokenBatch::new(&batch, eot).expect("batch");
        if answer_only {
            let from: Vec<usize> = rows.iter().map(|&r| answer_from[r]).collect();
            batch = batch.with_loss_from(&from).expect("answer positions");
        }
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
    // Held-out exact match of greedy answers.
    let test = rag_set(100, 99);
    let opts = answer_options(eot);
    let exact = test
        .iter()
        .filter(|ex| {
            generate_answer(&model, &tok, &ex.question, &ex.docs, &opts).unwrap_or_default()
                == ex.answer
        })
        .count();
    eprintln!(
        "saved {} ; held-out exact match {exact}/{} ; {:.0} s",
        out.display(),
        test.len(),
        t0.elapsed().as_secs_f64()
    );
}
