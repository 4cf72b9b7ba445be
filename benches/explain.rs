//! `tda explain` on the planted world of `tests/fixtures/explain` (`tda_eval::explain_world`):
//! every case has one fact only in the prompt's documents and one only in the training data.
//! Reports, per context method, the routing precision/recall of both kinds of facts, how often a
//! context fact is cited to its document, and the MRR of the training documents stating a
//! memory fact — traced by EK-FAC through the BM25 prefilter, beside BM25's own ranking of the
//! same query — and the wall time per answer. The training data is traced two ways: as documents
//! (`{"text"}`, the loss on every token) and as the prompt/completion pairs it was trained on
//! (`--completion-only`: the loss on the answers of the RAG and recall examples; the index holds
//! the completions), each with its own factors; the last rows trace with normalised scores.
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
use tda_trace::{CandidateKind, DocSource, FitOptions, Prefilter, TraceOptions, WindowOptions};

fn main() {
    let n: usize = std::env::var("EXPLAIN_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/explain");
    let m = tda_model::load_folder::<CpuAutodiff>(&dir, &Default::default())
        .expect("tests/fixtures/explain (see its make.sh)");
    let world = fixture_world();
    let tmp = tempfile::tempdir().unwrap();
    let fp = tda_trace::model_fingerprint(&dir).unwrap();
    // Documents (loss on every token) and pairs (loss on the answers, as trained): each its file,
    // index (of the text / of the completions) and factors.
    let mut sides = Vec::new();
    for kind in [CandidateKind::Documents, CandidateKind::Pairs] {
        let corpus = tmp.path().join(format!("{kind:?}.jsonl"));
        let mut read = ReadOptions::default();
        let source = match kind {
            CandidateKind::Documents => {
                world.write_corpus(&corpus).unwrap();
                DocSource::corpus_with(&corpus, read.clone())
            }
            CandidateKind::Pairs => {
                world.write_pairs(&corpus).unwrap();
                read.text_column = "completion".into();
                DocSource::pairs(&corpus).unwrap()
            }
        };
        let index_dir = tmp.path().join(format!("{kind:?}-index"));
        let index_opts = IndexOptions {
            read: read.clone(),
            ..IndexOptions::default()
        };
        let (index, _) =
            CorpusIndex::build(&corpus, &index_dir, &index_opts, Progress::Hidden).unwrap();
        let t0 = Instant::now();
        let fit = FitOptions {
            windows: WindowOptions {
                max_windows: Some(1000),
                ..WindowOptions::default()
            },
            ..FitOptions::default()
        };
        let (factors, _) =
            tda_trace::fit(&m.model, &m.tokenizer, &source, &fit, &fp, &mut |_| {}).unwrap();
        println!(
            "explain bench: {n} cases, {} training items as {kind:?}; EK-FAC fit on 1000 windows in {:.1} s",
            world.train.len(),
            t0.elapsed().as_secs_f64()
        );
        sides.push((
            kind,
            corpus,
            read,
            index,
            Prefilter::bm25(&index_dir, 100),
            factors,
        ));
    }
    let cases = &world.cases[..n.min(world.cases.len())];
    use tda_context::Method as M;
    use tda_curvature::Normalization as N;
    for (name, method, kind, norm) in [
        ("MIRAGE", M::Mirage, CandidateKind::Documents, N::None),
        (
            "ContextCite (64 masks)",
            M::context_cite(),
            CandidateKind::Documents,
            N::None,
        ),
        (
            "leave-one-out",
            M::LeaveOneOut,
            CandidateKind::Documents,
            N::None,
        ),
        (
            "leave-one-out, cosine",
            M::LeaveOneOut,
            CandidateKind::Documents,
            N::Cosine,
        ),
        ("loo, pairs", M::LeaveOneOut, CandidateKind::Pairs, N::None),
        (
            "loo, pairs, cosine",
            M::LeaveOneOut,
            CandidateKind::Pairs,
            N::Cosine,
        ),
    ] {
        let (_, corpus, read, index, prefilter, factors) =
            sides.iter().find(|s| s.0 == kind).unwrap();
        let mut opts = ExplainOptions::default();
        opts.cite.template = template();
        opts.cite.method = method;
        let (mut total, mut bm25) = (RouteScore::default(), (0.0f64, 0usize));
        let t = Instant::now();
        for case in cases {
            let memory = Memory {
                factors,
                corpus,
                read,
                kind,
                prefilter: Some(prefilter),
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
