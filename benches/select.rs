//! Data selection experiment for `tda select` (issue #10 item 4): does fine-tuning on the selected
//! 5 % of a pool lower the loss on a target skill more than a random 5 %?
//!
//! Per seed (the data, the tokenizer, the base model, the random subset and the batch order all
//! depend on it):
//! 1. People from `tda_eval::biographies(400, seed)`. A **base** GPT-2-style model (2 layers,
//!    d = 64) is pretrained from scratch on all 400 plain biographies: it knows the facts but has
//!    never seen the question/answer format.
//! 2. The **pool** (400 documents, jsonl): 340 plain biographies, 30 "fact cards" (another
//!    format, `Card: … | city: … | job: …`) and 30 question/answer documents
//!    (`Question: Which pet does X keep? Answer: a cat. Question: What does X do for a living?
//!    Answer: X is a baker.`): the target skill, 7.5 % of the pool.
//! 3. **Targets** for scoring: 16 question/answer examples (prompt = the question + `Answer:`,
//!    completion = the answer) about people without a QA document in the pool. **Evaluation**: 44
//!    other such examples about yet other people (never used for selection).
//! 4. Each method of `tda select` (ekfac with factors fitted on the pool, grad-cosine with 8192
//!    projected dims, repsim, bm25) selects 5 % (20 documents); plus a random 5 %, and all.
//! 5. Each subset fine-tunes the base model for the same number of steps (40 × 8 sequences of
//!    64 tokens, lr 1e-3); the figure is the mean NLL per completion token on the evaluation
//!    targets. Also printed: the fraction of QA documents among the selected.
//!
//! Reported: mean over seeds with a 95 % CI (Student t), the paired difference to the random 5 %
//! (same seed = same data and base model) with its 95 % CI, and the per-seed values.
//!
//! Measured (2 cores shared with other builds, CPU backend, `TDA_SELECT_SEEDS=5`, 467 s; target
//! NLL per completion token, mean ± 95 % CI over 5 seeds; Δ = paired difference to the random 5 %):
//!
//! ```text
//! arm                    target NLL          Δ vs random       QA fraction of the subset
//! base (no fine-tuning)  3.249 ± 0.331       +0.365 ± 0.703    -
//! all (400 docs)         2.448 ± 0.316       −0.437 ± 0.624    0.07
//! random 5 %             2.884 ± 0.621        0                0.11
//! ekfac 5 %              1.899 ± 0.167       −0.985 ± 0.467    1.00
//! grad-cosine 5 %        2.728 ± 0.949       −0.156 ± 1.173    0.43
//! repsim 5 %             1.959 ± 0.143       −0.926 ± 0.487    1.00
//! bm25 5 %               2.013 ± 0.158       −0.871 ± 0.492    1.00
//! ```
//!
//! EK-FAC, repsim and BM25 select only QA documents and beat random and all; EK-FAC has the lowest
//! loss on 4 of 5 seeds (all pick 20 of the 30 QA documents; it picks the more useful ones).
//! grad-cosine (raw gradients, no optimizer preconditioning) finds the skill only partly (43 % QA)
//! and is not significantly better than random here; with a near-full projection
//! (`TDA_SELECT_PROJECTION_DIM=200000` → 69624 dims, 2 seeds) it reaches 50 % QA, so the
//! projection size is not the limit. Scoring per seed: ekfac 4–10 s (+ fit ≈ 12 s), grad-cosine
//! 5–10 s, repsim 2–4 s, bm25 ≤ 0.1 s.
//!
//! `cargo bench -p tda-benches --bench select` (`TDA_SELECT_SEEDS=n`, default 3;
//! `TDA_SELECT_BASE_STEPS`, default 300; `TDA_SELECT_PROJECTION_DIM`, default 8192).

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use tda_eval::{biographies, SyntheticDoc};
use tda_model::device::CpuAutodiff;
use tda_model::{TokenBatch, Transformer};
use tda_trace::select::{
    pick, read_pool, score_bm25, score_ekfac, score_grad_cosine, score_repsim, Budget,
    GradCosineOptions, Scores,
};
use tda_trace::{fit, DocSource, FitOptions, Query, TraceOptions, WindowOptions};
use tda_train::{pack, train_bpe, TrainParams, Trainer};

type AD = CpuAutodiff;

const N_PEOPLE: usize = 400;
const N_PLAIN: usize = 340;
const N_CARDS: usize = 30;
const N_QA: usize = 30;
const N_TARGETS: usize = 8; // people → 2 examples each = 16 targets
const SELECT_PCT: f64 = 5.0;
const FT_STEPS: usize = 40;
const FT_BATCH: usize = 8;
const SEQ: usize = 64;

fn first(d: &SyntheticDoc) -> &str {
    d.person.name.split(' ').next().unwrap_or("")
}

fn qa_pairs(d: &SyntheticDoc) -> [(String, String); 2] {
    let f = first(d);
    [
        (
            format!("Question: Which pet does {f} keep? Answer:"),
            format!(" a {}.", d.person.pet),
        ),
        (
            format!("Question: What does {f} do for a living? Answer:"),
            format!(" {f} is a {}.", d.person.job),
        ),
    ]
}

fn qa_doc(d: &SyntheticDoc) -> String {
    qa_pairs(d)
        .iter()
        .map(|(q, a)| format!("{q}{a}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn card_doc(d: &SyntheticDoc) -> String {
    format!(
        "Card: {} | city: {} | job: {} | colour: {} | pet: {}",
        d.person.name, d.person.city, d.person.job, d.person.color, d.person.pet
    )
}

fn params(steps: usize, batch: usize, lr: f64, warmup: usize, seed: u64) -> TrainParams {
    TrainParams {
        seq_len: SEQ,
        batch_size: batch,
        steps,
        lr,
        warmup_steps: warmup,
        min_lr_ratio: 0.1,
        weight_decay: 0.0,
        grad_clip: 1.0,
        seed,
        checkpoint_every: 0,
        proximal: 0.0,
    }
}

/// Trains `model` for `p.steps` steps on `texts` packed into `SEQ`-token sequences (drawn in a
/// seeded shuffled order, epoch after epoch).
fn train(
    model: Transformer<AD>,
    tok: &tda_model::Tokenizer,
    texts: &[String],
    p: &TrainParams,
) -> Transformer<AD> {
    let eot = model.config.eos_token_id.unwrap();
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tok.encode(t.as_str(), false).unwrap().get_ids().to_vec())
        .collect();
    let seqs = pack(&ids, eot, SEQ);
    let mut rng = StdRng::seed_from_u64(p.seed ^ 0x5e1ec7);
    let mut order: Vec<usize> = Vec::new();
    let mut trainer = Trainer::new(model, p).unwrap();
    for _ in 0..p.steps {
        let b: Vec<Vec<u32>> = (0..p.batch_size)
            .map(|_| {
                if order.is_empty() {
                    order = (0..seqs.len()).collect();
                    order.shuffle(&mut rng);
                }
                seqs[order.pop().unwrap()].clone()
            })
            .collect();
        trainer.step(&TokenBatch::new(&b, eot).unwrap()).unwrap();
    }
    trainer.into_model()
}

/// Mean NLL per completion token of `examples` under `model`.
fn target_loss(model: &Transformer<AD>, tok: &tda_model::Tokenizer, examples: &[Query]) -> f64 {
    let mut seqs = Vec::new();
    let mut prompts = Vec::new();
    for q in examples {
        let (ids, n) =
            tda_trace::query::encode_query(tok, &model.config, &q.prompt, &q.completion).unwrap();
        seqs.push(ids);
        prompts.push(n);
    }
    let lps = tda_model::infer::sequence_logprobs(model, &seqs).unwrap();
    let (mut nll, mut n) = (0.0, 0usize);
    for (lp, &np) in lps.iter().zip(&prompts) {
        // lp[t] = log p(token t+1 | ..t); completion tokens are np.. → lp[np-1..].
        for &x in &lp[np - 1..] {
            nll -= x as f64;
            n += 1;
        }
    }
    nll / n as f64
}

fn student_t975(df: usize) -> f64 {
    match df {
        1 => 12.706,
        2 => 4.303,
        3 => 3.182,
        4 => 2.776,
        5 => 2.571,
        6 => 2.447,
        7 => 2.365,
        8 => 2.306,
        9 => 2.262,
        _ => 1.96,
    }
}

fn mean_ci(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return (m, f64::NAN);
    }
    let var = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, student_t975(x.len() - 1) * (var / n).sqrt())
}

struct Arm {
    name: &'static str,
    losses: Vec<f64>,
    qa_frac: Vec<f64>,
}

fn main() {
    let seeds: u64 = std::env::var("TDA_SELECT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let base_steps: usize = std::env::var("TDA_SELECT_BASE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let projection_dim: usize = std::env::var("TDA_SELECT_PROJECTION_DIM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8192);
    let t_all = Instant::now();
    let names = [
        "base (no fine-tuning)",
        "all",
        "random 5%",
        "ekfac 5%",
        "grad-cosine 5%",
        "repsim 5%",
        "bm25 5%",
    ];
    let mut arms: Vec<Arm> = names
        .iter()
        .map(|&name| Arm {
            name,
            losses: Vec::new(),
            qa_frac: Vec::new(),
        })
        .collect();
    let mut proj_dim = 0;
    for seed in 0..seeds {
        let t_seed = Instant::now();
        let people = biographies(N_PEOPLE, 1000 + seed);
        // Pool: plain biographies, fact cards, QA documents (shuffled); is_qa marks the skill.
        let mut pool: Vec<(String, bool)> = Vec::new();
        pool.extend(people[..N_PLAIN].iter().map(|d| (d.text.clone(), false)));
        pool.extend(people[..N_CARDS].iter().map(|d| (card_doc(d), false)));
        let qa_people = &people[N_PLAIN..N_PLAIN + N_QA];
        pool.extend(qa_people.iter().map(|d| (qa_doc(d), true)));
        pool.shuffle(&mut StdRng::seed_from_u64(seed));
        let rest = &people[N_PLAIN + N_QA..];
        let to_queries = |ds: &[SyntheticDoc]| -> Vec<Query> {
            ds.iter()
                .flat_map(qa_pairs)
                .enumerate()
                .map(|(i, (prompt, completion))| Query {
                    id: format!("q{i}"),
                    prompt,
                    completion,
                })
                .collect()
        };
        let targets = to_queries(&rest[..N_TARGETS]);
        let eval = to_queries(&rest[N_TARGETS..]);
        // Tokenizer over everything the models will read.
        let mut corpus: Vec<String> = people.iter().map(|d| d.text.clone()).collect();
        corpus.extend(pool.iter().map(|(t, _)| t.clone()));
        corpus.extend(
            targets
                .iter()
                .chain(&eval)
                .map(|q| format!("{}{}", q.prompt, q.completion)),
        );
        let tok = train_bpe(corpus.iter().cloned(), 512).unwrap();
        let eot = tok.token_to_id(tda_train::END_OF_TEXT).unwrap();
        let cfg = tda_benches::tiny_gpt2(512, eot);
        // Base: the plain biographies of everyone.
        let bios: Vec<String> = people.iter().map(|d| d.text.clone()).collect();
        let base = train(
            Transformer::<AD>::init(&cfg, seed, &Default::default()),
            &tok,
            &bios,
            &params(base_steps, 16, 3e-3, 30, seed),
        );
        let t_base = t_seed.elapsed().as_secs_f64();
        // The pool as a jsonl file, read back by the `tda select` reader.
        let dir = tempfile::tempdir().unwrap();
        let pool_path = dir.path().join("pool.jsonl");
        let mut s = String::new();
        for (i, (t, _)) in pool.iter().enumerate() {
            s.push_str(&serde_json::json!({"id": format!("d{i}"), "text": t}).to_string());
            s.push('\n');
        }
        std::fs::write(&pool_path, s).unwrap();
        let p = read_pool(&pool_path, &Default::default()).unwrap();
        let windows = WindowOptions {
            max_len: 0,
            batch_size: 8,
            max_windows: None,
            ..Default::default()
        };
        let t_score = Instant::now();
        let (factors, _) = fit::fit(
            &base,
            &tok,
            &DocSource::docs(p.docs.clone()),
            &FitOptions {
                windows,
                ..Default::default()
            },
            "select-bench",
            &mut |_| {},
        )
        .unwrap();
        let opts = TraceOptions {
            windows,
            ..Default::default()
        };
        let none = &mut |_: usize, _: u64| {};
        let scored: Vec<Scores> = vec![
            score_ekfac(&base, &tok, &factors, &targets, &p.docs, &opts, none).unwrap(),
            score_grad_cosine(
                &base,
                &tok,
                &targets,
                &p.docs,
                &GradCosineOptions {
                    projection_dim,
                    windows,
                    ..Default::default()
                },
                none,
            )
            .unwrap(),
            score_repsim(&base, &tok, &targets, &p.docs, &windows, none).unwrap(),
            score_bm25(&p, &targets).unwrap(),
        ];
        proj_dim = scored[1].projection_dim.unwrap_or(0);
        let t_score = t_score.elapsed().as_secs_f64();
        let n_sel = (SELECT_PCT / 100.0 * pool.len() as f64).ceil() as usize;
        // Pool documents in read order = file order = `pool` order.
        assert_eq!(p.docs.len(), pool.len());
        let mut subsets: Vec<Vec<usize>> = Vec::new();
        subsets.push((0..pool.len()).collect());
        let mut all: Vec<usize> = (0..pool.len()).collect();
        all.shuffle(&mut StdRng::seed_from_u64(seed ^ 0xa11));
        subsets.push(all[..n_sel].to_vec());
        for sc in &scored {
            let sel = pick(
                &sc.scores,
                Budget::TopPct(SELECT_PCT),
                None,
                &|i| p.docs[i].text.clone(),
                &mut |_| Ok(1),
            )
            .unwrap();
            subsets.push(sel.picked.iter().map(|x| x.doc).collect());
        }
        arms[0].losses.push(target_loss(&base, &tok, &eval));
        arms[0].qa_frac.push(f64::NAN);
        let t_ft = Instant::now();
        for (k, sub) in subsets.iter().enumerate() {
            let texts: Vec<String> = sub.iter().map(|&i| pool[i].0.clone()).collect();
            let ft = train(
                base.clone(),
                &tok,
                &texts,
                &params(FT_STEPS, FT_BATCH, 1e-3, 5, seed * 31 + 7),
            );
            let arm = &mut arms[k + 1];
            arm.losses.push(target_loss(&ft, &tok, &eval));
            arm.qa_frac
                .push(sub.iter().filter(|&&i| pool[i].1).count() as f64 / sub.len() as f64);
        }
        eprintln!(
            "seed {seed}: base {base_steps} steps {t_base:.0}s, scoring (fit + 4 methods) {t_score:.1}s ({}), fine-tunes {:.0}s",
            scored
                .iter()
                .map(|s| format!("{} {:.1}s", s.method, s.seconds))
                .collect::<Vec<_>>()
                .join(", "),
            t_ft.elapsed().as_secs_f64()
        );
    }
    println!(
        "select bench: pool {} docs ({N_QA} QA = target skill, {N_CARDS} cards, {N_PLAIN} plain), select {SELECT_PCT}% ; {} targets for scoring, {} for evaluation; fine-tune {FT_STEPS}×{FT_BATCH}×{SEQ} tokens; grad-cosine projection {proj_dim} dims; {seeds} seeds; {:.0}s",
        N_PLAIN + N_CARDS + N_QA,
        2 * N_TARGETS,
        2 * (N_PEOPLE - N_PLAIN - N_QA - N_TARGETS),
        t_all.elapsed().as_secs_f64()
    );
    println!(
        "{:<22} {:>22} {:>24} {:>8}   per seed",
        "arm", "target NLL (95% CI)", "Δ vs random, paired", "QA frac"
    );
    let random = arms[2].losses.clone();
    for a in &arms {
        let (m, ci) = mean_ci(&a.losses);
        let diff: Vec<f64> = a.losses.iter().zip(&random).map(|(x, r)| x - r).collect();
        let (dm, dci) = mean_ci(&diff);
        let qa = a.qa_frac.iter().sum::<f64>() / a.qa_frac.len() as f64;
        println!(
            "{:<22} {:>12.4} ± {:<7.4} {:>+14.4} ± {:<7.4} {:>8} {:?}",
            a.name,
            m,
            ci,
            dm,
            dci,
            if qa.is_nan() {
                "-".to_string()
            } else {
                format!("{qa:.2}")
            },
            a.losses
                .iter()
                .map(|x| (x * 1e4).round() / 1e4)
                .collect::<Vec<_>>()
        );
    }
}
