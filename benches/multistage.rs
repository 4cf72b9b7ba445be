//! Multi-stage influence on planted facts (pretraining → fine-tuning), against single-stage
//! tracing at either checkpoint and BM25.
//!
//! A tiny GPT-2 is pretrained on generated biographies (each fact stated in exactly one
//! document), then fine-tuned with a proximal term on a question/answer format covering the
//! facts of the first half of the people only. The queries ask, in the QA format, the birthplace
//! of people of the second half: facts that only the pretraining data states. For each method the
//! rank of the stating biography among all biographies gives MRR and recall@10:
//! - multi-stage, both Hessians (`−∇f(θ_ft)ᵀ α(G_ft+αI)⁻¹ (G_pt+λI)⁻¹ ∇L(z, θ_pt)`) and its
//!   ablations (fine-tuning Hessian only, pretraining Hessian only, none);
//! - single-stage at θ_ft (query, candidates and factors all at the fine-tuned model, factors
//!   fitted on the pretraining corpus) and single-stage at θ_pt (the query asked of θ_pt);
//! - BM25 on the query text.
//!
//! Two fine-tuning regimes, on the same pretrained model: **full text** (the QA strings as plain
//! text, factors fitted on them) and **completion-only** (one pair per sequence, the loss on the
//! answer only, factors fitted with `DocSource::Pairs`, as `tda fit --completion-only`).
//! It also reports the cost ratio multi-stage ÷ single-stage trace time (same candidates, same
//! queries, one pass each). Run: `cargo bench -p tda-benches --bench multistage`
//! (`TDA_MS_SEEDS=3` averages over that many seeds; default 2). Two more rows vary α.

use std::time::Instant;

use tda_benches::{
    docs_source, planted_params as params, tiny_gpt2, train_in_order as train_on,
    train_pairs_in_order,
};
use tda_corpus::{CorpusIndex, IndexOptions, Progress, Ranking};
use tda_curvature::Damping;
use tda_eval::biographies;
use tda_eval::metrics::{mrr, rank_of, recall_at_k};
use tda_model::device::CpuAutodiff;
use tda_model::Transformer;
use tda_trace::{
    fit, trace, trace_multistage, FineTuneDamping, FineTuned, FitOptions, Hessians, Query,
    TraceOptions, TraceOutput, WindowOptions,
};
use tda_train::{pack, train_bpe};

type AD = CpuAutodiff;

const PEOPLE: usize = 64;
const PROXIMAL: f64 = 0.01;

fn ranks(out: &TraceOutput) -> Vec<Option<usize>> {
    out.queries
        .iter()
        .map(|q| {
            let ranked: Vec<&str> = q.results.iter().map(|r| r.doc_id.as_str()).collect();
            rank_of(&ranked, &[q.id.as_str()])
        })
        .collect()
}

const REGIMES: [&str; 2] = ["full text", "completion-only"];

struct Row {
    method: &'static str,
    regime: &'static str,
    mrr: Vec<f64>,
    r10: Vec<f64>,
}

fn main() {
    let seeds: u64 = std::env::var("TDA_MS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let mut rows: Vec<Row> = [
        "multi-stage (both Hessians)",
        "multi-stage, fine-tuning Hessian only",
        "multi-stage, pretraining Hessian only",
        "multi-stage, no Hessian (grad dot across checkpoints)",
        "multi-stage, α = 10 × proximal",
        "multi-stage, α = heuristic (0.1 × mean Λ_ft)",
        "single-stage at θ_ft",
        "single-stage at θ_pt",
        "BM25",
    ]
    .into_iter()
    .flat_map(|method| {
        REGIMES.map(|regime| Row {
            method,
            regime,
            mrr: vec![],
            r10: vec![],
        })
    })
    .collect();
    let mut cost_ratio = vec![];
    for seed in 0..seeds {
        let docs = biographies(PEOPLE, 100 + seed);
        let qa = |d: &tda_eval::SyntheticDoc| {
            (
                format!("Q: Where was {} born? A:", d.person.name),
                format!(" {}.", d.person.city),
            )
        };
        let ft_texts: Vec<String> = docs[..PEOPLE / 2]
            .iter()
            .flat_map(|d| {
                let (q, a) = qa(d);
                let first = d.person.name.split(' ').next().unwrap_or("");
                [
                    format!("{q}{a}"),
                    format!("Q: What does {first} work as? A: a {}.", d.person.job),
                ]
            })
            .collect();
        let tok = train_bpe(
            docs.iter()
                .map(|d| d.text.clone())
                .chain(ft_texts.iter().cloned()),
            512,
        )
        .unwrap();
        let eot = tok.token_to_id(tda_train::END_OF_TEXT).unwrap();
        let cfg = tiny_gpt2(512, eot);
        let encode = |t: &str| tok.encode(t, false).unwrap().get_ids().to_vec();
        let pt_seqs = pack(
            &docs.iter().map(|d| encode(&d.text)).collect::<Vec<_>>(),
            eot,
            64,
        );
        let ft_seqs = pack(
            &ft_texts.iter().map(|t| encode(t)).collect::<Vec<_>>(),
            eot,
            64,
        );
        let t0 = Instant::now();
        let (pt, pt_loss) = train_on(
            Transformer::<AD>::init(&cfg, seed, &Default::default()),
            &pt_seqs,
            &params(400, 3e-3, 0.0, seed),
        );
        eprintln!(
            "seed {seed}: pretrained (loss {pt_loss:.3}) in {:.0}s",
            t0.elapsed().as_secs_f64()
        );
        let windows = WindowOptions {
            max_len: 64,
            batch_size: 8,
            max_windows: None,
            ..Default::default()
        };
        let fo = FitOptions {
            windows,
            ..Default::default()
        };
        let pt_source = docs_source(
            &docs
                .iter()
                .map(|d| (d.id.clone(), d.text.clone()))
                .collect::<Vec<_>>(),
        );
        let (pt_f, _) = fit::fit(&pt, &tok, &pt_source, &fo, "pt", &mut |_| {}).unwrap();
        let pairs: Vec<Query> = docs[..PEOPLE / 2]
            .iter()
            .flat_map(|d| {
                let (q, a) = qa(d);
                let first = d.person.name.split(' ').next().unwrap_or("");
                [
                    (q, a),
                    (
                        format!("Q: What does {first} work as? A:"),
                        format!(" a {}.", d.person.job),
                    ),
                ]
            })
            .enumerate()
            .map(|(i, (prompt, completion))| Query {
                id: format!("ft-{i}"),
                prompt,
                completion,
            })
            .collect();
        for (ri, regime) in REGIMES.iter().enumerate() {
            let t1 = Instant::now();
            let (ft, ft_loss, ft_source) = if ri == 0 {
                let (m, l) = train_on(pt.clone(), &ft_seqs, &params(150, 1e-3, PROXIMAL, seed));
                let src = docs_source(
                    &ft_texts
                        .iter()
                        .enumerate()
                        .map(|(i, t)| (format!("ft-{i}"), t.clone()))
                        .collect::<Vec<_>>(),
                );
                (m, l, src)
            } else {
                let seqs: Vec<(Vec<u32>, usize)> = pairs
                    .iter()
                    .map(|q| {
                        let (ids, n) =
                            tda_trace::query::encode_query(&tok, &cfg, &q.prompt, &q.completion)
                                .unwrap();
                        (ids, n)
                    })
                    .collect();
                let (m, l) = train_pairs_in_order(
                    pt.clone(),
                    &seqs,
                    eot,
                    &params(150, 1e-3, PROXIMAL, seed),
                );
                let src = tda_trace::DocSource::Pairs {
                    path: "ft-pairs".into(),
                    pairs: std::sync::Arc::new(pairs.clone()),
                };
                (m, l, src)
            };
            eprintln!(
            "seed {seed}: fine-tuned ({regime}, loss {ft_loss:.3}, proximal {PROXIMAL}) in {:.0}s",
            t1.elapsed().as_secs_f64()
        );
            let (ft_f, _) = fit::fit(&ft, &tok, &ft_source, &fo, "ft", &mut |_| {}).unwrap();
            let (ft_on_pt_f, _) = fit::fit(&ft, &tok, &pt_source, &fo, "ft", &mut |_| {}).unwrap();
            let queries: Vec<Query> = docs[PEOPLE / 2..]
                .iter()
                .map(|d| {
                    let (prompt, completion) = qa(d);
                    Query {
                        id: d.id.clone(),
                        prompt,
                        completion,
                    }
                })
                .collect();
            let opts = TraceOptions {
                top_k: None,
                windows,
                ..Default::default()
            };
            let multi_with = |h: Hessians, alpha: FineTuneDamping| {
                let fine_tuned = FineTuned {
                    model: &ft,
                    factors: h.uses_fine_tune().then_some((&ft_f, alpha)),
                    hessians: h,
                };
                let pt_factors = h.uses_pretrain().then_some(&pt_f);
                let t = Instant::now();
                let out = trace_multistage(
                    &pt,
                    pt_factors,
                    &fine_tuned,
                    &tok,
                    &queries,
                    &pt_source,
                    &opts,
                    &mut |_, _| {},
                )
                .unwrap();
                (out, t.elapsed().as_secs_f64())
            };
            let multi = |h: Hessians| multi_with(h, FineTuneDamping::Proximal(PROXIMAL));
            let (both, t_multi) = multi(Hessians::Both);
            let t = Instant::now();
            let single_ft = trace(
                &ft,
                &tok,
                &ft_on_pt_f,
                &queries,
                &pt_source,
                &opts,
                &mut |_, _| {},
            )
            .unwrap();
            let t_single = t.elapsed().as_secs_f64();
            let single_pt = trace(
                &pt,
                &tok,
                &pt_f,
                &queries,
                &pt_source,
                &opts,
                &mut |_, _| {},
            )
            .unwrap();
            cost_ratio.push(t_multi / t_single);
            let mut all = vec![
                ranks(&both),
                ranks(&multi(Hessians::FineTune).0),
                ranks(&multi(Hessians::Pretrain).0),
                ranks(&multi(Hessians::None).0),
                ranks(&multi_with(Hessians::Both, FineTuneDamping::Proximal(10.0 * PROXIMAL)).0),
                ranks(&multi_with(Hessians::Both, FineTuneDamping::Damping(Damping::default())).0),
                ranks(&single_ft),
                ranks(&single_pt),
            ];
            // BM25 over the same biographies.
            let dir = tempfile::tempdir().unwrap();
            let corpus = dir.path().join("bios.jsonl");
            tda_eval::biographies::write_jsonl(&docs, &corpus).unwrap();
            let (idx, _) = CorpusIndex::build(
                &corpus,
                &dir.path().join("index"),
                &IndexOptions::default(),
                Progress::Hidden,
            )
            .unwrap();
            all.push(
                queries
                    .iter()
                    .map(|q| {
                        let hits = idx
                            .search(
                                &format!("{} {}", q.prompt, q.completion),
                                PEOPLE,
                                Ranking::Bm25,
                            )
                            .unwrap();
                        let ranked: Vec<&str> = hits.iter().map(|h| h.doc_id.as_str()).collect();
                        rank_of(&ranked, &[q.id.as_str()])
                    })
                    .collect(),
            );
            for (row, r) in rows
                .iter_mut()
                .filter(|row| row.regime == *regime)
                .zip(&all)
            {
                row.mrr.push(mrr(r));
                row.r10.push(recall_at_k(r, 10));
            }
            if let Some(st) = &both.stages {
                eprintln!(
                    "seed {seed}: α {} (mean {:.3e} in factor units)",
                    st.fine_tune_damping.as_deref().unwrap_or("-"),
                    st.alpha_mean.unwrap_or(f64::NAN)
                );
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "multi-stage fact tracing: {PEOPLE} biographies, {} QA queries about facts only pretraining states, {seeds} seed(s) (chance MRR ≈ {:.3})",
        PEOPLE / 2,
        (1..=PEOPLE).map(|r| 1.0 / r as f64).sum::<f64>() / PEOPLE as f64
    );
    println!("| fine-tuning | method | MRR | recall@10 | MRR per seed |");
    println!("|---|---|---|---|---|");
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| REGIMES.iter().position(|x| *x == r.regime));
    for r in sorted {
        println!(
            "| {} | {} | {:.3} | {:.3} | {} |",
            r.regime,
            r.method,
            mean(&r.mrr),
            mean(&r.r10),
            r.mrr
                .iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!(
        "cost: multi-stage trace ÷ single-stage trace (same {} candidates and queries) = {:.2}",
        PEOPLE,
        mean(&cost_ratio)
    );
}
