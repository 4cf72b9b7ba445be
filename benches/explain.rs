//! `tda explain` on the planted world of `tests/fixtures/explain` (`tda_eval::explain_world`):
//! every case has one fact only in the prompt's documents and one only in the training data.
//! Reports, per context method, the routing precision/recall of both kinds of facts, how often a
//! context fact is cited to its document, and the MRR of the training documents stating a
//! memory fact — traced by EK-FAC through the BM25 prefilter, beside BM25's own ranking of the
//! same query — and the wall time per answer; the last rows trace with normalised scores.
//!
//! ```sh
//! cargo bench -p tda-benches --bench explain     # 24 cases (EXPLAIN_N to change)
//! ```

use std::path::PathBuf;
use std::time::Instant;

use tda_corpus::{CorpusIndex, IndexOptions, Progress, Ranking, ReadOptions};
use tda_eval::explain_world::{fixture_world, routed_tokens};
use tda_eval::{score_routes, template, RouteScore};
use tda_explain::{explain, ExplainOptions, Memory};
use tda_model::device::CpuAutodiff;
use tda_trace::{DocSource, FitOptions, Prefilter, TraceOptions, WindowOptions};

fn main() {
    let n: usize = std::env::var("EXPLAIN_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/explain");
    let m = tda_model::load_folder::<CpuAutodiff>(&dir, &Default::default())
        .expect("tests/fixtures/explain (see crates/tda-eval/examples/train_explain.rs)");
    let world = fixture_world();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("train.jsonl");
    world.write_corpus(&corpus).unwrap();
    let read = ReadOptions::default();
    let index_dir = tmp.path().join("index");
    let (index, _) = CorpusIndex::build(
        &corpus,
        &index_dir,
        &IndexOptions::default(),
        Progress::Hidden,
    )
    .unwrap();
    let t0 = Instant::now();
    let fit = FitOptions {
        windows: WindowOptions {
            max_windows: Some(1000),
            ..WindowOptions::default()
        },
        ..FitOptions::default()
    };
    let fp = tda_trace::model_fingerprint(&dir).unwrap();
    let (factors, _) = tda_trace::fit(
        &m.model,
        &m.tokenizer,
        &DocSource::corpus_with(&corpus, read.clone()),
        &fit,
        &fp,
        &mut |_| {},
    )
    .unwrap();
    println!(
        "explain bench: {n} cases, {} training documents; EK-FAC fit on 1000 windows in {:.1} s",
        world.train.len(),
        t0.elapsed().as_secs_f64()
    );
    let prefilter = Prefilter::bm25(&index_dir, 100);
    let cases = &world.cases[..n.min(world.cases.len())];
    use tda_context::Method as M;
    use tda_curvature::Normalization as N;
    for (name, method, norm) in [
        ("MIRAGE", M::Mirage, N::None),
        ("ContextCite (64 masks)", M::context_cite(), N::None),
        ("leave-one-out", M::LeaveOneOut, N::None),
        ("leave-one-out, cosine", M::LeaveOneOut, N::Cosine),
        ("leave-one-out, RelatIF", M::LeaveOneOut, N::RelatIF),
    ] {
        let mut opts = ExplainOptions::default();
        opts.cite.template = template();
        opts.cite.method = method;
        let (mut total, mut bm25) = (RouteScore::default(), (0.0f64, 0usize));
        let t = Instant::now();
        for case in cases {
            let memory = Memory {
                factors: &factors,
                corpus: &corpus,
                read: &read,
                prefilter: Some(&prefilter),
                trace: TraceOptions {
                    top_k: Some(10),
                    normalize: tda_curvature::NormalizeOptions {
                        method: norm,
                        per_token_count: false,
                    },
                    ..TraceOptions::default()
                },
            };
            let e = explain(
                &m.model,
                &m.tokenizer,
                None,
                &case.question,
                &case.docs,
                Some(&case.answer),
                &opts,
                Some(memory),
                &mut |_, _| {},
            )
            .unwrap();
            total.add(&score_routes(
                case,
                &routed_tokens(&serde_json::to_value(&e).unwrap()),
            ));
            // BM25 alone on the same memory queries: rank of the first stating document.
            for (k, gold) in case
                .memory_gold
                .iter()
                .enumerate()
                .filter(|(_, g)| !g.is_empty())
            {
                let value = &case.values[k];
                let Some(sp) = e
                    .memory_spans
                    .iter()
                    .find(|s| s.text.contains(value.as_str()))
                else {
                    continue;
                };
                let q = format!("{} {}", sp.query.prompt, sp.query.completion);
                let hits = index.search(&q, 10, Ranking::Bm25).unwrap();
                if let Some(r) = hits.iter().position(|h| gold.contains(&h.doc_id)) {
                    bm25.0 += 1.0 / (r + 1) as f64;
                }
                bm25.1 += 1;
            }
        }
        println!(
            "  {name:<24} context facts: P {:.2} R {:.2}, cited to the stating document {:.2} | memory facts: P {:.2} R {:.2}, MRR EK-FAC {:.2} (BM25 on the same spans {:.2}, {} spans) | {:.0} ms per answer",
            total.context_precision(),
            total.context_recall(),
            total.citation_accuracy(),
            total.memory_precision(),
            total.memory_recall(),
            total.mrr(),
            if bm25.1 > 0 { bm25.0 / bm25.1 as f64 } else { 0.0 },
            bm25.1,
            t.elapsed().as_secs_f64() / cases.len() as f64 * 1e3
        );
    }
}
