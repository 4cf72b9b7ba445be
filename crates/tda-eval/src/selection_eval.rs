//! Data selection vs random: does fine-tuning on the documents `tda select` picks lower the loss
//! on a target skill more than fine-tuning on as many random documents?
//!
//! Per seed (the data, the tokenizer, the base model, the random subset and the batch order all
//! depend on it):
//! 1. People from `biographies(400, 1000 + seed)`. A **base** GPT-2-shaped model ([`crate::tiny_gpt2`])
//!    is pretrained from scratch on all 400 plain biographies: it knows the facts but has never
//!    seen the question/answer format.
//! 2. The **pool** (400 documents, written to `work/pool-SEED.jsonl`): 340 plain biographies,
//!    30 "fact cards" (`Card: … | city: … | job: …`) and 30 question/answer documents — the
//!    target skill, 7.5 % of the pool.
//! 3. **Targets** for scoring: 16 question/answer examples about people without a QA document in
//!    the pool. **Evaluation**: 44 other such examples about yet other people (never used for
//!    selection).
//! 4. Each `tda select` method (EK-FAC with factors fitted on the pool, grad-cosine with
//!    `projection_dim` projected dimensions, repsim, BM25) selects `pct` % of the pool; plus a
//!    random `pct` %, and all of it.
//! 5. Each subset fine-tunes the base model for the same 40 steps (8 sequences of 64 tokens, lr
//!    1e-3); the figure is the mean NLL per completion token on the evaluation examples, with the
//!    fraction of QA documents among the selected.
//!
//! Reported per arm: mean over seeds with a 95 % CI (Student t), the paired difference to the
//! random arm (same seed = same data and base model) with its CI, and the per-seed values.
//! Deterministic in the seeds.

use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use tda_model::device::CpuAutodiff;
use tda_model::{TokenBatch, Transformer};
use tda_trace::select::{
    pick, read_pool, score_bm25, score_ekfac, score_grad_cosine, score_repsim, Budget,
    GradCosineOptions, Scores,
};
use tda_trace::{fit, DocSource, FitOptions, Query, TraceOptions, WindowOptions};
use tda_train::{pack, train_bpe, TrainParams, Trainer};

use crate::methods::MethodError;
use crate::{biographies, SyntheticDoc};

type AD = CpuAutodiff;

const N_PEOPLE: usize = 400;
const N_PLAIN: usize = 340;
const N_CARDS: usize = 30;
const N_QA: usize = 30;
const N_TARGETS: usize = 8; // people → 2 examples each = 16 targets
const FT_STEPS: usize = 40;
const FT_BATCH: usize = 8;
const SEQ: usize = 64;

/// What to run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SelectionSpec {
    pub seeds: u64,
    /// Pretraining steps of the base model (batches of 16).
    pub base_steps: usize,
    /// grad-cosine's projected dimensions.
    pub projection_dim: usize,
    /// Share of the pool each method selects, in percent.
    pub pct: f64,
}

impl Default for SelectionSpec {
    fn default() -> Self {
        Self {
            seeds: 3,
            base_steps: 300,
            projection_dim: 8192,
            pct: 5.0,
        }
    }
}

/// One arm's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ArmRow {
    pub arm: String,
    /// Mean NLL per completion token on the evaluation examples, and its 95 % half-width.
    pub target_nll: [f64; 2],
    /// Paired difference to the random arm (negative = better than random), ± 95 %.
    pub minus_random: [f64; 2],
    /// Fraction of QA (target-skill) documents in the subset (`None` for the base model).
    pub qa_fraction: Option<f64>,
    pub per_seed: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SelectionReport {
    pub pool: usize,
    pub qa_in_pool: usize,
    pub selected: usize,
    pub targets: usize,
    pub evaluation: usize,
    pub grad_cosine_dims: usize,
    pub rows: Vec<ArmRow>,
    /// Per method: scoring seconds summed over seeds.
    pub seconds: Vec<(String, f64)>,
}

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

fn err(e: impl std::fmt::Display) -> MethodError {
    MethodError::Usage(e.to_string())
}

/// Trains `model` for `p.steps` steps on `texts` packed into `SEQ`-token sequences (drawn in a
/// seeded shuffled order, epoch after epoch).
fn train(
    model: Transformer<AD>,
    tok: &tda_model::Tokenizer,
    texts: &[String],
    p: &TrainParams,
) -> Result<Transformer<AD>, MethodError> {
    let eot = model
        .config
        .eos_token_id
        .expect("the base config has an eos");
    let ids = texts
        .iter()
        .map(|t| {
            Ok(tok
                .encode(t.as_str(), false)
                .map_err(err)?
                .get_ids()
                .to_vec())
        })
        .collect::<Result<Vec<_>, MethodError>>()?;
    let seqs = pack(&ids, eot, SEQ);
    let mut rng = StdRng::seed_from_u64(p.seed ^ 0x5e1ec7);
    let mut order: Vec<usize> = Vec::new();
    let mut trainer = Trainer::new(model, p).map_err(err)?;
    for _ in 0..p.steps {
        let b: Vec<Vec<u32>> = (0..p.batch_size)
            .map(|_| {
                if order.is_empty() {
                    order = (0..seqs.len()).collect();
                    order.shuffle(&mut rng);
                }
                seqs[order.pop().expect("refilled")].clone()
            })
            .collect();
        trainer
            .step(&TokenBatch::new(&b, eot).map_err(err)?)
            .map_err(err)?;
    }
    Ok(trainer.into_model())
}

/// Mean NLL per completion token of `examples` under `model`.
fn target_loss(
    model: &Transformer<AD>,
    tok: &tda_model::Tokenizer,
    examples: &[Query],
) -> Result<f64, MethodError> {
    let mut seqs = Vec::new();
    let mut prompts = Vec::new();
    for q in examples {
        let (ids, n) =
            tda_trace::query::encode_query(tok, &model.config, &q.prompt, &q.completion)?;
        seqs.push(ids);
        prompts.push(n);
    }
    let lps =
        tda_model::infer::sequence_logprobs(model, &seqs).map_err(tda_trace::TraceError::from)?;
    let (mut nll, mut n) = (0.0, 0usize);
    for (lp, &np) in lps.iter().zip(&prompts) {
        // lp[t] = log p(token t+1 | ..t); completion tokens are np.. → lp[np-1..].
        for &x in &lp[np - 1..] {
            nll -= x as f64;
            n += 1;
        }
    }
    Ok(nll / n.max(1) as f64)
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

/// Mean and 95 % half-width (Student t; NaN with one value).
fn mean_ci(x: &[f64]) -> [f64; 2] {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    if x.len() < 2 {
        return [m, f64::NAN];
    }
    let var = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
    [m, student_t975(x.len() - 1) * (var / n).sqrt()]
}

/// Arms in report order: base, all, random, then each selection method.
const METHODS: [&str; 4] = ["ekfac", "grad-cosine", "repsim", "bm25"];

/// Runs every seed (pools written in `work`). `progress` gets one line per seed.
pub fn evaluate(
    spec: &SelectionSpec,
    work: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<SelectionReport, MethodError> {
    if !(spec.pct > 0.0 && spec.pct < 100.0) || spec.seeds == 0 {
        return Err(err(format!(
            "selection needs at least one seed and a share in (0, 100) %, got {} seeds and {} %",
            spec.seeds, spec.pct
        )));
    }
    std::fs::create_dir_all(work)
        .map_err(|e| err(format!("{}: cannot create the folder: {e}", work.display())))?;
    let pct = spec.pct;
    let mut names = vec![
        "base (no fine-tuning)".to_string(),
        "all".to_string(),
        format!("random {pct}%"),
    ];
    names.extend(METHODS.iter().map(|m| format!("{m} {pct}%")));
    let mut losses = vec![Vec::new(); names.len()];
    let mut qa_frac = vec![Vec::new(); names.len()];
    let mut seconds = vec![0.0f64; METHODS.len()];
    let (mut proj_dim, mut n_sel) = (0, 0);
    for seed in 0..spec.seeds {
        let t_seed = Instant::now();
        let people = biographies(N_PEOPLE, 1000 + seed);
        // Pool: plain biographies, fact cards, QA documents (shuffled); `true` marks the skill.
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
        let tok = train_bpe(corpus.iter().cloned(), 512).map_err(err)?;
        let eot = tok
            .token_to_id(tda_train::END_OF_TEXT)
            .ok_or_else(|| err("the trained tokenizer has no end-of-text token"))?;
        let bios: Vec<String> = people.iter().map(|d| d.text.clone()).collect();
        let base = train(
            Transformer::<AD>::init(&crate::tiny_gpt2(512, eot), seed, &Default::default()),
            &tok,
            &bios,
            &params(spec.base_steps, 16, 3e-3, 30, seed),
        )?;
        let t_base = t_seed.elapsed().as_secs_f64();
        // The pool as a jsonl file, read back by the `tda select` reader.
        let pool_path = work.join(format!("pool-{seed}.jsonl"));
        let mut s = String::new();
        for (i, (t, _)) in pool.iter().enumerate() {
            s.push_str(&serde_json::json!({"id": format!("d{i}"), "text": t}).to_string());
            s.push('\n');
        }
        tda_io::write_file(&pool_path, s.as_bytes())
            .map_err(|e| err(format!("{}: {e}", pool_path.display())))?;
        let p = read_pool(&pool_path, &Default::default())?;
        let windows = WindowOptions {
            max_len: 0,
            batch_size: 8,
            max_windows: None,
            ..Default::default()
        };
        let t_fit = Instant::now();
        let (factors, _) = fit::fit(
            &base,
            &tok,
            &DocSource::docs(p.docs.clone()),
            &FitOptions {
                windows,
                ..Default::default()
            },
            "selection-eval",
            &mut |_| {},
        )?;
        let fit_s = t_fit.elapsed().as_secs_f64();
        let opts = TraceOptions {
            windows,
            ..Default::default()
        };
        let none = &mut |_: usize, _: u64| {};
        let scored: Vec<Scores> = vec![
            score_ekfac(&base, &tok, &factors, &targets, &p.docs, &opts, none)?,
            score_grad_cosine(
                &base,
                &tok,
                &targets,
                &p.docs,
                &GradCosineOptions {
                    projection_dim: spec.projection_dim,
                    windows,
                    ..Default::default()
                },
                none,
            )?,
            score_repsim(&base, &tok, &targets, &p.docs, &windows, none)?,
            score_bm25(&p, &targets)?,
        ];
        for (s, sc) in seconds.iter_mut().zip(&scored) {
            *s += sc.seconds;
        }
        seconds[0] += fit_s;
        proj_dim = scored[1].projection_dim.unwrap_or(0);
        n_sel = (pct / 100.0 * pool.len() as f64).ceil() as usize;
        if p.docs.len() != pool.len() {
            return Err(err(format!(
                "{}: read {} documents back, wrote {}",
                pool_path.display(),
                p.docs.len(),
                pool.len()
            )));
        }
        // Subsets, in arm order after the base: all, random, each method's selection.
        let mut subsets: Vec<Vec<usize>> = vec![(0..pool.len()).collect()];
        let mut all: Vec<usize> = (0..pool.len()).collect();
        all.shuffle(&mut StdRng::seed_from_u64(seed ^ 0xa11));
        subsets.push(all[..n_sel].to_vec());
        for sc in &scored {
            let sel = pick(
                &sc.scores,
                Budget::TopPct(pct),
                None,
                &|i| p.docs[i].text.clone(),
                &mut |_| Ok(1),
            )?;
            subsets.push(sel.picked.iter().map(|x| x.doc).collect());
        }
        losses[0].push(target_loss(&base, &tok, &eval)?);
        let t_ft = Instant::now();
        for (k, sub) in subsets.iter().enumerate() {
            let texts: Vec<String> = sub.iter().map(|&i| pool[i].0.clone()).collect();
            let ft = train(
                base.clone(),
                &tok,
                &texts,
                &params(FT_STEPS, FT_BATCH, 1e-3, 5, seed * 31 + 7),
            )?;
            losses[k + 1].push(target_loss(&ft, &tok, &eval)?);
            qa_frac[k + 1]
                .push(sub.iter().filter(|&&i| pool[i].1).count() as f64 / sub.len() as f64);
        }
        progress(&format!(
            "seed {seed}: base {} steps {t_base:.0}s, EK-FAC fit {fit_s:.1}s, scoring {}, {} fine-tunes {:.0}s",
            spec.base_steps,
            scored
                .iter()
                .map(|s| format!("{} {:.1}s", s.method, s.seconds))
                .collect::<Vec<_>>()
                .join(", "),
            subsets.len(),
            t_ft.elapsed().as_secs_f64()
        ));
    }
    let random = losses[2].clone();
    let rows = names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let diff: Vec<f64> = losses[k].iter().zip(&random).map(|(x, r)| x - r).collect();
            ArmRow {
                arm: name.clone(),
                target_nll: mean_ci(&losses[k]),
                minus_random: mean_ci(&diff),
                qa_fraction: (!qa_frac[k].is_empty())
                    .then(|| qa_frac[k].iter().sum::<f64>() / qa_frac[k].len() as f64),
                per_seed: losses[k].clone(),
            }
        })
        .collect();
    Ok(SelectionReport {
        pool: N_PLAIN + N_CARDS + N_QA,
        qa_in_pool: N_QA,
        selected: n_sel,
        targets: 2 * N_TARGETS,
        evaluation: 2 * (N_PEOPLE - N_PLAIN - N_QA - N_TARGETS),
        grad_cosine_dims: proj_dim,
        rows,
        seconds: METHODS.iter().map(|m| m.to_string()).zip(seconds).collect(),
    })
}
