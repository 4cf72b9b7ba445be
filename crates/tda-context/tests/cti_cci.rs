//! CTI and CCI against independent numbers on the tiny HF fixtures:
//! - the 2-pass KL equals the per-prefix (inseq-style, one forward per answer token) KL computed
//!   in f64 on the host;
//! - the batched contrastive embedding gradient equals central finite differences of the target
//!   (perturbing one embedding row), in both cases of the target (ŷ ≠ y and ŷ = y);
//! - saliency and input × gradient are the L2 reductions of that gradient;
//! - batching targets into one backward does not change any number.

use std::path::PathBuf;

use burn::module::AutodiffModule;
use tda_context::cci::{contrastive_gradients, Passes, Target};
use tda_context::cti::{select_tokens, token_stats, Threshold};
use tda_context::prompt::{build_prompts, PromptTemplate};
use tda_context::Document;
use tda_model::device::{Cpu, CpuAutodiff};
use tda_model::{TokenBatch, Transformer};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn small_template() -> PromptTemplate {
    PromptTemplate {
        instruction: String::new(),
        prompt: "Q: {question}\n{context}A:".into(),
        doc_untitled: "[{i}] {text}\n".into(),
        ..PromptTemplate::default()
    }
}

struct Case {
    model: Transformer<CpuAutodiff>,
    ctx: Vec<u32>,
    noctx: Vec<u32>,
    answer: Vec<u32>,
}

fn case(name: &str) -> Case {
    let m = tda_model::load_folder::<CpuAutodiff>(&fixture(name), &Default::default()).unwrap();
    let docs = vec![
        Document::new("1", None, "the cat sat."),
        Document::new("2", None, "a dog ran."),
    ];
    let pair = build_prompts(
        &m.tokenizer,
        &m.model.config,
        &small_template(),
        "who sat?",
        &docs,
        None,
    )
    .unwrap();
    let answer = m
        .tokenizer
        .encode(" the cat sat", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(pair.with_docs.ids.len() + answer.len() <= m.model.config.max_positions);
    Case {
        model: m.model,
        ctx: pair.with_docs.ids,
        noctx: pair.without_docs.ids,
        answer,
    }
}

/// log-softmax of the last position's logits after `seq`, in f64.
fn last_logprobs(model: &Transformer<Cpu>, seq: &[u32]) -> Vec<f64> {
    let ids = TokenBatch::new(&[seq.to_vec()], 0)
        .unwrap()
        .to_tensor::<Cpu>(&Default::default());
    let logits = model.forward(ids);
    let [_, t, v] = logits.dims();
    let row: Vec<f64> = logits
        .narrow(1, t - 1, 1)
        .reshape([v])
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    row.iter().map(|x| x - lse).collect()
}

fn prefix(p: &[u32], y: &[u32], t: usize) -> Vec<u32> {
    let mut s = p.to_vec();
    s.extend_from_slice(&y[..t]);
    s
}

#[test]
fn two_pass_kl_equals_per_prefix_kl() {
    for name in ["gpt2", "llama", "qwen2"] {
        let c = case(name);
        let inf = c.model.valid();
        let stats = token_stats(&inf, &c.ctx, &c.noctx, &c.answer).unwrap();
        assert_eq!(stats.kl.len(), c.answer.len());
        for t in 0..c.answer.len() {
            let lc = last_logprobs(&inf, &prefix(&c.ctx, &c.answer, t));
            let ln = last_logprobs(&inf, &prefix(&c.noctx, &c.answer, t));
            let kl: f64 = ln.iter().zip(&lc).map(|(n, c)| n.exp() * (n - c)).sum();
            let kl_rev: f64 = lc.iter().zip(&ln).map(|(c, n)| c.exp() * (c - n)).sum();
            let got = stats.kl[t] as f64;
            assert!(
                (got - kl).abs() <= 1e-4 + 1e-3 * kl.abs(),
                "{name} t={t}: KL(noctx||ctx) {got} vs per-prefix {kl}"
            );
            // The direction is the stated one, not the reverse (they differ on these models).
            if (kl - kl_rev).abs() > 1e-2 {
                assert!(
                    (got - kl_rev).abs() > 1e-3,
                    "{name} t={t}: looks like KL(ctx||noctx)"
                );
            }
            let argmax = (0..ln.len())
                .max_by(|&a, &b| ln[a].total_cmp(&ln[b]))
                .unwrap();
            assert_eq!(
                stats.contrast[t] as usize, argmax,
                "{name} t={t}: contrast token"
            );
            let y = c.answer[t] as usize;
            assert!((stats.lp_ctx[t] as f64 - lc[y]).abs() < 1e-4);
            assert!((stats.lp_noctx[t] as f64 - ln[y]).abs() < 1e-4);
            assert!((stats.lp_ctx_contrast[t] as f64 - lc[argmax]).abs() < 1e-4);
        }
        assert!(
            stats.kl.iter().all(|&k| k >= -1e-5),
            "{name}: KL must be ≥ 0"
        );
    }
}

#[test]
fn threshold_rules() {
    let m = [1.0, 2.0, 3.0, 10.0];
    // mean 4, population std sqrt(((9+4+1+36)/4)) = sqrt(12.5) ≈ 3.536
    let (sel, thr) = select_tokens(&m, Threshold::MeanStd(1.0));
    assert!((thr - (4.0 + 12.5f32.sqrt())).abs() < 1e-5);
    assert_eq!(sel, vec![3]);
    let (sel, _) = select_tokens(&m, Threshold::MeanStd(0.0));
    assert_eq!(sel, vec![3]);
    let (sel, thr) = select_tokens(&m, Threshold::Fixed(2.0));
    assert_eq!((sel, thr), (vec![1, 2, 3], 2.0));
    let (sel, thr) = select_tokens(&m, Threshold::TopK(2));
    assert_eq!((sel, thr), (vec![2, 3], 3.0));
    let (sel, _) = select_tokens(&[0.5], Threshold::MeanStd(1.0));
    assert_eq!(sel, vec![0], "one token is its own mean");
}

/// f for `target` on the inference model, in f64.
fn target_value(model: &Transformer<Cpu>, c: &Case, tg: &Target) -> f64 {
    let lp = last_logprobs(model, &prefix(&c.ctx, &c.answer, tg.t));
    if tg.contrast != tg.y {
        lp[tg.y as usize] - lp[tg.contrast as usize]
    } else {
        lp[tg.y as usize]
    }
}

#[test]
fn contrastive_gradient_matches_finite_differences() {
    // Llama fixture: untied lm_head, so moving an input-embedding row moves only the inputs.
    let c = case("llama");
    let inf = c.model.valid();
    let stats = token_stats(&inf, &c.ctx, &c.noctx, &c.answer).unwrap();
    let cfg = inf.config.clone();
    let d = cfg.hidden;
    let last = c.answer.len() - 1;
    let mut targets = vec![
        Target {
            t: 0,
            y: c.answer[0],
            contrast: stats.contrast[0],
        },
        Target {
            t: last,
            y: c.answer[last],
            contrast: stats.contrast[last],
        },
        // The ŷ = y case (f = log p(y | ctx)).
        Target {
            t: 1,
            y: c.answer[1],
            contrast: c.answer[1],
        },
    ];
    // Make sure the ŷ ≠ y case is exercised.
    if targets[0].contrast == targets[0].y {
        targets[0].contrast = (targets[0].y + 1) % cfg.vocab_size as u32;
    }
    let mut passes = Passes::default();
    let grads =
        contrastive_gradients(&c.model, &c.ctx, &c.answer, &targets, 8, true, &mut passes).unwrap();
    assert_eq!(passes.backwards, 1, "three targets, one backward");
    assert_eq!(passes.gradient_rows, 3);
    let weights = inf.to_weights();
    let key = "model.embed_tokens.weight";
    let emb = &weights[key];
    let device = Default::default();
    // Prompt tokens to perturb: a document token, and the most frequent token of the prompt.
    let mut counts = std::collections::HashMap::new();
    for &x in &c.ctx {
        *counts.entry(x).or_insert(0usize) += 1;
    }
    let frequent = *counts.iter().max_by_key(|(x, n)| (**n, **x)).unwrap().0;
    let rare = c.ctx[c.ctx.len() / 2];
    let eps = 1e-2f32;
    let mut checked = 0;
    for tg in &targets {
        let g = grads.iter().find(|g| g.t == tg.t).unwrap();
        let raw = g.raw.as_ref().unwrap();
        let seq = prefix(&c.ctx, &c.answer, tg.t);
        assert_eq!(raw.len(), seq.len() * d);
        // The reductions are the L2 norms of the raw gradient (and of e ⊙ g).
        for j in 0..c.ctx.len() {
            let gj = &raw[j * d..(j + 1) * d];
            let n: f32 = gj.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(
                (g.saliency[j] - n).abs() <= 1e-6 + 1e-4 * n,
                "saliency t={} j={j}",
                tg.t
            );
            let row = c.ctx[j] as usize;
            let e = &emb.data[row * d..(row + 1) * d];
            let m: f32 = gj
                .iter()
                .zip(e)
                .map(|(a, b)| (a * b) * (a * b))
                .sum::<f32>()
                .sqrt();
            assert!(
                (g.input_x_grad[j] - m).abs() <= 1e-6 + 1e-4 * m,
                "ixg t={} j={j}",
                tg.t
            );
        }
        for (k, &v) in [rare, frequent].iter().enumerate() {
            // A deterministic direction u.
            let u: Vec<f32> = (0..d)
                .map(|i| (((i * 7 + k * 3 + tg.t) % 11) as f32 - 5.0) / 5.0)
                .collect();
            let analytic: f64 = (0..seq.len())
                .filter(|&j| seq[j] == v)
                .map(|j| {
                    raw[j * d..(j + 1) * d]
                        .iter()
                        .zip(&u)
                        .map(|(a, b)| (*a as f64) * (*b as f64))
                        .sum::<f64>()
                })
                .sum();
            let f_at = |s: f32| {
                let mut w = weights.clone();
                let e = w.get_mut(key).unwrap();
                for (x, ui) in e.data[v as usize * d..(v as usize + 1) * d]
                    .iter_mut()
                    .zip(&u)
                {
                    *x += s * ui;
                }
                let m = Transformer::<Cpu>::from_weights(&cfg, &w, &device).unwrap();
                target_value(&m, &c, tg)
            };
            let fd = (f_at(eps) - f_at(-eps)) / (2.0 * eps as f64);
            assert!(
                (fd - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
                "t={} token {v}: finite difference {fd} vs gradient {analytic}",
                tg.t
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}

#[test]
fn batching_targets_changes_nothing() {
    for name in ["gpt2", "qwen2"] {
        let c = case(name);
        let inf = c.model.valid();
        let stats = token_stats(&inf, &c.ctx, &c.noctx, &c.answer).unwrap();
        let targets: Vec<Target> = (0..c.answer.len())
            .map(|t| Target {
                t,
                y: c.answer[t],
                contrast: stats.contrast[t],
            })
            .collect();
        let mut p1 = Passes::default();
        let one = contrastive_gradients(&c.model, &c.ctx, &c.answer, &targets, 1, false, &mut p1)
            .unwrap();
        let mut p2 = Passes::default();
        let all = contrastive_gradients(&c.model, &c.ctx, &c.answer, &targets, 64, false, &mut p2)
            .unwrap();
        assert_eq!(p1.backwards, targets.len());
        assert_eq!(p2.backwards, 1);
        for (a, b) in one.iter().zip(&all) {
            assert_eq!(a.t, b.t);
            for (x, y) in a.saliency.iter().zip(&b.saliency) {
                assert!(
                    (x - y).abs() <= 1e-6 + 1e-4 * x.abs(),
                    "{name} t={}: {x} vs {y}",
                    a.t
                );
            }
        }
        // Causality: a target's gradient is not all zero on the prompt.
        assert!(all.iter().all(|g| g.saliency.iter().any(|&s| s > 0.0)));
    }
}
