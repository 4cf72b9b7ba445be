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
//! `TDA_SELECT_BASE_STEPS`, default 300; `TDA_SELECT_PROJECTION_DIM`, default 8192), or the same
//! run as `tda eval selection --work DIR` (the code is `tda_eval::selection_eval`).

use tda_eval::selection_eval::{evaluate, SelectionSpec};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let d = SelectionSpec::default();
    let spec = SelectionSpec {
        seeds: env_or("TDA_SELECT_SEEDS", d.seeds),
        base_steps: env_or("TDA_SELECT_BASE_STEPS", d.base_steps),
        projection_dim: env_or("TDA_SELECT_PROJECTION_DIM", d.projection_dim),
        ..d
    };
    let t0 = std::time::Instant::now();
    let work = tempfile::tempdir().expect("temp dir");
    let r = evaluate(&spec, work.path(), &mut |m| eprintln!("{m}")).expect("selection run");
    println!(
        "select bench: pool {} docs ({} QA = target skill), select {}% ({} docs); {} targets for scoring, {} for evaluation; grad-cosine projection {} dims; {} seeds; {:.0}s",
        r.pool,
        r.qa_in_pool,
        spec.pct,
        r.selected,
        r.targets,
        r.evaluation,
        r.grad_cosine_dims,
        spec.seeds,
        t0.elapsed().as_secs_f64()
    );
    println!(
        "{:<22} {:>22} {:>24} {:>8}   per seed",
        "arm", "target NLL (95% CI)", "Δ vs random, paired", "QA frac"
    );
    for a in &r.rows {
        println!(
            "{:<22} {:>12.4} ± {:<7.4} {:>+14.4} ± {:<7.4} {:>8} {:?}",
            a.arm,
            a.target_nll[0],
            a.target_nll[1],
            a.minus_random[0],
            a.minus_random[1],
            a.qa_fraction.map_or("-".to_string(), |q| format!("{q:.2}")),
            a.per_seed
                .iter()
                .map(|x| (x * 1e4).round() / 1e4)
                .collect::<Vec<_>>()
        );
    }
}
