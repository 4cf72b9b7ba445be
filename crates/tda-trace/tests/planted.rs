//! Planted truth: a small GPT-2 trained (in the test) on generated biographies, each fact stated in
//! exactly one document. Tracing `"<name> was born in" → " <city> in <year>."` must rank that
//! person's biography near the top among all documents. Ranks, recall@1/@5 and MRR are printed
//! (`--nocapture`); the assertions use conservative thresholds far above chance.

use tda_eval::biographies;
use tda_model::device::CpuAutodiff;
use tda_model::{TokenBatch, Transformer};
use tda_trace::{fit, DocSource, FitOptions, Query, TraceOptions, WindowOptions};
use tda_train::{pack, train_bpe, TrainParams, Trainer};

type AD = CpuAutodiff;

#[test]
fn tracing_a_fact_finds_its_biography() {
    let n_docs = 48;
    let docs = biographies(n_docs, 11);
    let tok = train_bpe(docs.iter().map(|d| d.text.clone()), 512).unwrap();
    let eot = tok.token_to_id(tda_train::END_OF_TEXT).unwrap();
    let cfg = tda_eval::tiny_gpt2(512, eot);
    let ids: Vec<Vec<u32>> = docs
        .iter()
        .map(|d| {
            tok.encode(d.text.as_str(), false)
                .unwrap()
                .get_ids()
                .to_vec()
        })
        .collect();
    let seqs = pack(&ids, eot, 64);
    let params = TrainParams {
        seq_len: 64,
        batch_size: 16,
        steps: 400,
        lr: 3e-3,
        warmup_steps: 30,
        min_lr_ratio: 0.1,
        weight_decay: 0.0,
        grad_clip: 1.0,
        seed: 0,
        checkpoint_every: 0,
        proximal: 0.0,
    };
    let mut trainer = Trainer::new(
        Transformer::<AD>::init(&cfg, 0, &Default::default()),
        &params,
    )
    .unwrap();
    let mut loss = 0.0;
    for s in 0..params.steps {
        let b: Vec<Vec<u32>> = (0..16)
            .map(|i| seqs[(s * 16 + i) % seqs.len()].clone())
            .collect();
        loss = trainer.step(&TokenBatch::new(&b, 0).unwrap()).unwrap().0;
    }
    eprintln!("trained: final loss {loss:.3}");
    let model = trainer.into_model();
    let source = DocSource::docs(
        docs.iter()
            .enumerate()
            .map(|(i, d)| tda_corpus::Document {
                title: None,
                id: d.id.clone(),
                text: d.text.clone(),
                source: tda_corpus::SourceRef {
                    path: "mem".into(),
                    format: tda_corpus::Format::Jsonl,
                    row: i as u64,
                    byte_offset: 0,
                    byte_len: 0,
                },
            })
            .collect(),
    );
    let windows = WindowOptions {
        max_len: 0,
        batch_size: 8,
        max_windows: None,
        ..Default::default()
    };
    let (factors, _) = fit::fit(
        &model,
        &tok,
        &source,
        &FitOptions {
            windows,
            ..Default::default()
        },
        "planted",
        &mut |_| {},
    )
    .unwrap();
    let n_q = 16;
    let queries: Vec<Query> = docs[..n_q]
        .iter()
        .map(|d| Query {
            id: d.id.clone(),
            prompt: format!("{} was born in", d.person.name),
            completion: format!(" {} in {}.", d.person.city, d.person.year),
        })
        .collect();
    let out = tda_trace::trace(
        &model,
        &tok,
        &factors,
        &queries,
        &source,
        &TraceOptions {
            top_k: None,
            windows,
            ..Default::default()
        },
        &mut |_, _| {},
    )
    .unwrap();
    let ranks: Vec<usize> = out
        .queries
        .iter()
        .map(|q| q.results.iter().find(|r| r.doc_id == q.id).unwrap().rank)
        .collect();
    let recall = |k: usize| ranks.iter().filter(|&&r| r <= k).count() as f64 / n_q as f64;
    let mrr = ranks.iter().map(|&r| 1.0 / r as f64).sum::<f64>() / n_q as f64;
    eprintln!(
        "planted truth over {n_docs} documents, {n_q} facts: ranks {ranks:?}, recall@1 {:.2}, recall@5 {:.2}, MRR {mrr:.2} (chance: recall@5 {:.2})",
        recall(1),
        recall(5),
        5.0 / n_docs as f64
    );
    assert!(recall(5) >= 0.5, "recall@5 {}", recall(5));
    assert!(mrr >= 0.3, "MRR {mrr}");
}
