//! End-to-end checks of the pipeline on the HF reference fixtures (tests/fixtures: a GPT-2 with
//! tied embeddings and a Llama with an untied `lm_head`, sharded f16 weights).
//!
//! The reference is computed independently of the pipeline's taps, kernels and low-rank queries:
//! per-parameter gradients from burn autodiff (`tap_with_gradients` + `read_params(GradReader)`),
//! rotated into the fitted eigenbasis with naive f64 loops, divided by `Λ + λ` (λ = 0.1·mean Λ per
//! layer), i.e. `−∇fᵀ (G_strategy + λI)⁻¹ ∇L(z)` in dense form.
//!
//! Tolerances: the pipeline runs in f32 (taps, GEMMs, factors stored in f32) and the reference in
//! f64 from f32 gradients; we allow 2e-3 of the largest |score| of the query (observed ≲ 1e-5).

use std::collections::BTreeMap;
mod common;

use common::fixture;

use tda_curvature::{Damping, Factors, Normalization, NormalizeOptions, Rank, Strategy};
use tda_model::device::CpuAutodiff;
use tda_model::model::GradReader;
use tda_model::{load_folder, summed_nll, tap_with_gradients, token_logprobs, TokenBatch};
use tda_trace::candidates::for_each_batch;
use tda_trace::fit::{fit, load_checked, save};
use tda_trace::{
    model_fingerprint, Candidate, DocSource, Fisher, FitOptions, ModuleSelection, Query,
    TraceOptions, WindowOptions,
};

type AD = CpuAutodiff;

fn docs() -> DocSource {
    let texts = [
        "The cat sat on the mat and looked at the bird.",
        "A quick brown fox jumps over the lazy dog near the river bank.",
        "Numbers: one two three four five six seven eight nine ten eleven.",
        "Short one.",
        "Mira Tolven was born in Kestrel Bay in 1931 and works as a baker.",
        "The library keeps records of every family in the district.",
    ];
    common::mem_docs(&texts)
}

fn queries() -> Vec<Query> {
    vec![
        Query {
            id: "a".into(),
            prompt: "Mira Tolven was born in".into(),
            completion: " Kestrel Bay".into(),
        },
        Query {
            id: "b".into(),
            prompt: "The quick brown".into(),
            completion: " fox jumps".into(),
        },
        Query {
            id: "c".into(),
            prompt: "one two".into(),
            completion: " three four".into(),
        },
    ]
}

fn win() -> WindowOptions {
    WindowOptions {
        max_len: 12,
        batch_size: 4,
        max_windows: None,
        ..Default::default()
    }
}

/// Per-layer weight gradients `[d_out, d_a]` (bias as last column) from burn autodiff.
fn dense_grads(
    m: &tda_model::Transformer<AD>,
    specs: &[tda_curvature::LayerSpec],
    ids: &[u32],
    completion_from: Option<usize>,
) -> Vec<Vec<f64>> {
    let device = Default::default();
    let batch = TokenBatch::new(&[ids.to_vec()], 0).unwrap();
    let t = ids.len();
    let (_, grads) = tap_with_gradients(
        m,
        batch.to_tensor::<AD>(&device),
        &|_: &str| false,
        false,
        |logits| match completion_from {
            // log p(completion | prompt): targets at positions ≥ n_prompt.
            Some(np) => token_logprobs(logits, batch.to_tensor::<AD>(&device))
                .narrow(1, np - 1, t - np)
                .sum(),
            None => summed_nll(logits, &batch),
        },
    );
    let w = m.read_params(&GradReader::<AD>(&grads));
    let conv1d = m.config.arch == tda_model::Arch::Gpt2;
    specs
        .iter()
        .map(|s| {
            let wt = &w[&format!("{}.weight", s.name)];
            let mut out = vec![0.0; s.d_out * s.d_a()];
            for i in 0..s.d_out {
                for j in 0..s.d_in {
                    out[i * s.d_a() + j] = if conv1d && s.name != "lm_head" {
                        wt.data[j * s.d_out + i] as f64
                    } else {
                        wt.data[i * s.d_in + j] as f64
                    };
                }
                if s.has_bias {
                    out[i * s.d_a() + s.d_in] = w[&format!("{}.bias", s.name)].data[i] as f64;
                }
            }
            out
        })
        .collect()
}

/// `Q_Sᵀ X Q_A` with naive loops (identity when the strategy has no eigenbasis).
fn rotate(f: &tda_curvature::LayerFactors, x: &[f64]) -> Vec<f64> {
    let (d_out, d_a) = (f.spec.d_out, f.spec.d_a());
    let (Some(sb), Some(ab)) = (&f.s_basis, &f.a_basis) else {
        return x.to_vec();
    };
    assert_eq!(sb.blocks.len(), 1);
    let qs = |i: usize, k: usize| sb.vecs[0][i * d_out + k] as f64;
    let qa = |j: usize, l: usize| ab.vecs[0][j * d_a + l] as f64;
    let mut xq = vec![0.0; d_out * d_a];
    for i in 0..d_out {
        for l in 0..d_a {
            xq[i * d_a + l] = (0..d_a).map(|j| x[i * d_a + j] * qa(j, l)).sum();
        }
    }
    let mut y = vec![0.0; d_out * d_a];
    for k in 0..d_out {
        for l in 0..d_a {
            y[k * d_a + l] = (0..d_out).map(|i| qs(i, k) * xq[i * d_a + l]).sum();
        }
    }
    y
}

/// Dense reference score `−∇fᵀ (G + λI)⁻¹ ∇L`.
fn reference_score(factors: &Factors, gq: &[Vec<f64>], gc: &[Vec<f64>]) -> (f64, Vec<f64>) {
    let mut per_layer = vec![];
    for (l, f) in factors.layers.iter().enumerate() {
        let ones;
        let lam: &[f32] = match &f.lambda {
            Some(v) => v,
            None => {
                ones = vec![1.0f32; f.spec.n_params()];
                &ones
            }
        };
        let mean = lam.iter().map(|&x| x as f64).sum::<f64>() / lam.len() as f64;
        let damp = 0.1 * mean;
        let (rq, rc) = (rotate(f, &gq[l]), rotate(f, &gc[l]));
        per_layer.push(
            -rq.iter()
                .zip(&rc)
                .zip(lam)
                .map(|((a, b), &v)| a * b / (v as f64 + damp))
                .sum::<f64>(),
        );
    }
    (per_layer.iter().sum(), per_layer)
}

fn candidates(m: &tda_model::HfModel<AD>, w: &WindowOptions) -> Vec<Candidate> {
    let mut out = vec![];
    for_each_batch(&docs(), &m.tokenizer, &m.model.config, w, |c, _| {
        out.extend_from_slice(c);
        Ok(())
    })
    .unwrap();
    out
}

type Scores = BTreeMap<(String, String, usize), f64>;

fn run_trace(
    m: &tda_model::HfModel<AD>,
    f: &Factors,
    qs: &[Query],
    opts: &TraceOptions,
) -> (tda_trace::TraceOutput, Scores) {
    let out =
        tda_trace::trace(&m.model, &m.tokenizer, f, qs, &docs(), opts, &mut |_, _| {}).unwrap();
    let mut map = BTreeMap::new();
    for q in &out.queries {
        for r in &q.results {
            map.insert((q.id.clone(), r.doc_id.clone(), r.window), r.score);
        }
    }
    (out, map)
}

fn full_opts() -> TraceOptions {
    TraceOptions {
        rank: Rank::Full,
        top_k: None,
        per_token: true,
        per_layer: true,
        windows: win(),
        // These tests check window-level scores against a dense reference.
        granularity: tda_trace::Granularity::Window,
        ..Default::default()
    }
}

fn fit_fixture(
    m: &tda_model::HfModel<AD>,
    strategy: Strategy,
    modules: ModuleSelection,
) -> Factors {
    let opts = FitOptions {
        strategy,
        modules,
        fisher: Fisher::True { seed: 3 },
        max_block: None,
        windows: win(),
    };
    let fp = model_fingerprint(&m.dir).unwrap();
    fit(&m.model, &m.tokenizer, &docs(), &opts, &fp, &mut |_| {})
        .unwrap()
        .0
}

fn check_against_dense(name: &str, modules: ModuleSelection) {
    let m = load_folder::<AD>(&fixture(name), &Default::default()).unwrap();
    let cands = candidates(&m, &win());
    assert!(cands.len() > 6, "some documents span several windows");
    for strategy in [
        Strategy::Identity,
        Strategy::Diagonal,
        Strategy::Kfac,
        Strategy::Ekfac,
    ] {
        let factors = fit_fixture(&m, strategy, modules.clone());
        let specs = factors.specs();
        let (out, got) = run_trace(&m, &factors, &queries(), &full_opts());
        let mut worst = 0.0f64;
        for q in &queries() {
            let (ids, np) = tda_trace::query::encode_query(
                &m.tokenizer,
                &m.model.config,
                &q.prompt,
                &q.completion,
            )
            .unwrap();
            let gq = dense_grads(&m.model, &specs, &ids, Some(np));
            let refs: Vec<(f64, Vec<f64>)> = cands
                .iter()
                .map(|c| {
                    reference_score(&factors, &gq, &dense_grads(&m.model, &specs, &c.ids, None))
                })
                .collect();
            let scale = refs.iter().fold(0.0f64, |a, r| a.max(r.0.abs()));
            assert!(scale > 1e-6, "{name} {strategy}: vacuous (zero scores)");
            for (c, (want, want_layers)) in cands.iter().zip(&refs) {
                let g = got[&(q.id.clone(), c.doc_id.clone(), c.window)];
                let err = (g - want).abs() / scale;
                worst = worst.max(err);
                assert!(
                    err < 2e-3,
                    "{name} {strategy} query {} cand {}#{}: pipeline {g} vs dense {want}",
                    q.id,
                    c.doc_id,
                    c.window
                );
                // Per-layer breakdown against the dense per-layer scores.
                let row = out
                    .queries
                    .iter()
                    .find(|x| x.id == q.id)
                    .unwrap()
                    .results
                    .iter()
                    .find(|r| r.doc_id == c.doc_id && r.window == c.window)
                    .unwrap();
                for (ls, w) in row.per_layer.as_ref().unwrap().iter().zip(want_layers) {
                    assert!(
                        (ls.score - w).abs() / scale < 2e-3,
                        "{name} {strategy} layer {}",
                        ls.layer
                    );
                }
            }
        }
        eprintln!("{name} {strategy}: max relative error vs dense {worst:.2e}");
    }
}

#[test]
fn gpt2_scores_equal_dense_reference_for_every_strategy() {
    // Tied lm_head: autodiff cannot separate its gradient from the embedding's, so blocks only.
    check_against_dense("gpt2", ModuleSelection::Blocks);
}

#[test]
fn llama_scores_equal_dense_reference_including_lm_head() {
    check_against_dense("llama", ModuleSelection::All);
}

#[test]
fn invariants_per_token_per_layer_rank_batching_multiquery() {
    let m = load_folder::<AD>(&fixture("gpt2"), &Default::default()).unwrap();
    let f = fit_fixture(&m, Strategy::Ekfac, ModuleSelection::All);
    let (out, full) = run_trace(&m, &f, &queries(), &full_opts());
    // Per-token sums and per-layer sums equal the total.
    let mut n = 0;
    for q in &out.queries {
        for r in &q.results {
            let scale = r.score.abs().max(1e-9);
            let st: f64 = r.per_token.as_ref().unwrap().iter().map(|t| t.score).sum();
            let sl: f64 = r.per_layer.as_ref().unwrap().iter().map(|t| t.score).sum();
            assert!(
                (st - r.score).abs() <= 1e-9 * scale.max(1.0),
                "per-token sum {st} vs {}",
                r.score
            );
            assert!(
                (sl - r.score).abs() <= 1e-9 * scale.max(1.0),
                "per-layer sum {sl} vs {}",
                r.score
            );
            assert_eq!(r.per_layer.as_ref().unwrap().len(), f.layers.len());
            // Each entry is labelled with the token predicted there: the window's tokens after
            // its first (BOS, or the first token of a continuation window, which nothing in the
            // window predicts), so they spell the end of the window's text.
            let spelled: String = r
                .per_token
                .as_ref()
                .unwrap()
                .iter()
                .map(|t| t.token.as_str())
                .collect();
            assert!(
                !spelled.trim().is_empty() && r.text.ends_with(spelled.trim_end()),
                "per-token labels {spelled:?} are the predicted tokens of {:?}",
                r.text
            );
            if r.window == 0 {
                assert_eq!(
                    spelled.trim_end(),
                    r.text.trim_end(),
                    "after BOS: the whole text"
                );
            }
            n += 1;
        }
    }
    assert!(n > 10);
    let scale = full.values().fold(0.0f64, |a, s| a.max(s.abs()));
    let max_diff = |a: &Scores, b: &Scores| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .map(|(k, v)| (v - b[k]).abs())
            .fold(0.0f64, f64::max)
            / scale
    };
    // Rank r ≥ min(d_out, d_a) of every layer (33 here) equals full rank; rank 2 does not.
    let max_rank = f
        .layers
        .iter()
        .map(|l| l.spec.d_out.min(l.spec.d_a()))
        .max()
        .unwrap();
    let mut o = full_opts();
    o.rank = Rank::Truncated(max_rank);
    let (_, r_full) = run_trace(&m, &f, &queries(), &o);
    assert!(
        max_diff(&full, &r_full) < 1e-4,
        "rank {max_rank} vs full: {}",
        max_diff(&full, &r_full)
    );
    o.rank = Rank::Truncated(2);
    let (_, r2) = run_trace(&m, &f, &queries(), &o);
    assert!(
        max_diff(&full, &r2) > 1e-3,
        "rank 2 should differ from full rank"
    );
    // Batch size invariance (1 and 5 windows per batch).
    for bs in [1, 5] {
        let mut o = full_opts();
        o.windows.batch_size = bs;
        let (_, b) = run_trace(&m, &f, &queries(), &o);
        assert!(
            max_diff(&full, &b) < 1e-4,
            "batch size {bs}: {}",
            max_diff(&full, &b)
        );
    }
    // One pass with 3 queries equals one query at a time.
    let mut single = BTreeMap::new();
    for q in queries() {
        let (_, s) = run_trace(&m, &f, std::slice::from_ref(&q), &full_opts());
        single.extend(s);
    }
    assert!(
        max_diff(&full, &single) < 1e-6,
        "multi vs single: {}",
        max_diff(&full, &single)
    );
    // Top-K equals the head of the full ranking; opponents are the tail.
    let mut o = full_opts();
    o.top_k = Some(3);
    let (top, _) = run_trace(&m, &f, &queries(), &o);
    o.opponents = true;
    let (bottom, _) = run_trace(&m, &f, &queries(), &o);
    for ((t, b), q) in top.queries.iter().zip(&bottom.queries).zip(&out.queries) {
        let all: Vec<f64> = q.results.iter().map(|r| r.score).collect();
        assert!(all.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(
            t.results.iter().map(|r| r.score).collect::<Vec<_>>(),
            all[..3].to_vec()
        );
        let mut tail: Vec<f64> = all[all.len() - 3..].to_vec();
        tail.reverse();
        assert_eq!(b.results.iter().map(|r| r.score).collect::<Vec<_>>(), tail);
        assert_eq!(t.results[0].rank, 1);
    }
}

#[test]
fn normalisations_match_their_definitions() {
    let m = load_folder::<AD>(&fixture("gpt2"), &Default::default()).unwrap();
    let f = fit_fixture(&m, Strategy::Ekfac, ModuleSelection::Blocks);
    let specs = f.specs();
    let (_, raw) = run_trace(&m, &f, &queries(), &full_opts());
    let cands = candidates(&m, &win());
    let mut o = full_opts();
    o.normalize = NormalizeOptions {
        method: Normalization::TrainGradNorm,
        per_token_count: true,
    };
    let (_, tgn) = run_trace(&m, &f, &queries(), &o);
    o.normalize = NormalizeOptions {
        method: Normalization::Cosine,
        per_token_count: false,
    };
    let (_, cos) = run_trace(&m, &f, &queries(), &o);
    for c in &cands {
        let g = dense_grads(&m.model, &specs, &c.ids, None);
        let sq: f64 = g.iter().flatten().map(|x| x * x).sum();
        for q in ["a", "b", "c"] {
            let k = (q.to_string(), c.doc_id.clone(), c.window);
            let want = raw[&k] / sq / c.ids.len() as f64;
            assert!(
                (tgn[&k] - want).abs() <= 1e-3 * want.abs() + 1e-12,
                "train-grad-norm {} vs {want}",
                tgn[&k]
            );
            assert!(cos[&k].abs() <= 1.0 + 1e-6 && cos[&k].signum() == raw[&k].signum());
        }
    }
}

#[test]
fn factors_roundtrip_and_mismatches_are_clear_errors() {
    let g = load_folder::<AD>(&fixture("gpt2"), &Default::default()).unwrap();
    let l = load_folder::<AD>(&fixture("llama"), &Default::default()).unwrap();
    let fg = model_fingerprint(&g.dir).unwrap();
    let fl = model_fingerprint(&l.dir).unwrap();
    assert_ne!(fg, fl);
    let f = fit_fixture(&g, Strategy::Ekfac, ModuleSelection::Mlp);
    assert!(f.layers.iter().all(|l| l.spec.name.contains(".mlp.")));
    let dir = tempfile::tempdir().unwrap();
    let report = tda_trace::FitReport::default();
    save(&f, &report, dir.path()).unwrap();
    let back = load_checked(dir.path(), &fg, &g.model.linear_layers()).unwrap();
    assert_eq!(back, f);
    // Another model's fingerprint.
    let e = load_checked(dir.path(), &fl, &l.model.linear_layers())
        .unwrap_err()
        .to_string();
    assert!(e.contains("another model"), "{e}");
    // Right fingerprint but the model lacks the layers (e.g. a renamed or reshaped model).
    let e = load_checked(dir.path(), &fg, &l.model.linear_layers())
        .unwrap_err()
        .to_string();
    assert!(e.contains("transformer.h.0.mlp.c_fc"), "{e}");
    // No factors.
    let e = load_checked(&dir.path().join("nope"), &fg, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("tda fit"), "{e}");
    // Tracing the llama with gpt2 factors: the taps do not match.
    let e = tda_trace::trace(
        &l.model,
        &l.tokenizer,
        &f,
        &queries(),
        &docs(),
        &full_opts(),
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("transformer.h.0.mlp.c_fc"), "{e}");
}

#[test]
fn non_finite_activations_name_the_layer() {
    let m = load_folder::<AD>(&fixture("gpt2"), &Default::default()).unwrap();
    let mut w = m.model.to_weights();
    let t = w.get_mut("transformer.h.1.mlp.c_fc.weight").unwrap();
    // Finite weights (the loader rejects NaN) whose products overflow to ±inf in the forward.
    t.data.iter_mut().for_each(|x| *x *= 1e37);
    let b = w.get_mut("transformer.h.1.mlp.c_fc.bias").unwrap();
    b.data.iter_mut().for_each(|x| *x = f32::MAX);
    let bad = tda_model::Transformer::<AD>::from_weights(&m.model.config, &w, &Default::default())
        .unwrap();
    // The host path checks the copied taps; the device path (`tda_trace::device`) the sums.
    for compute in [
        tda_trace::device::ComputeOn::Host,
        tda_trace::device::ComputeOn::Device,
    ] {
        let opts = FitOptions {
            windows: WindowOptions { compute, ..win() },
            ..Default::default()
        };
        let e = fit(&bad, &m.tokenizer, &docs(), &opts, "x", &mut |_| {})
            .unwrap_err()
            .to_string();
        // c_fc's output is the first non-finite tap: the layer after it (mlp.c_proj) sees NaN
        // activations; c_fc itself sees NaN output gradients in the backward.
        assert!(
            e.contains("layer transformer.h.1.mlp.c_proj: non-finite value in activations"),
            "{compute:?}: {e}"
        );
    }
}

#[test]
fn relabel_and_self_influence() {
    let m = load_folder::<AD>(&fixture("gpt2"), &Default::default()).unwrap();
    let f = fit_fixture(&m, Strategy::Ekfac, ModuleSelection::Blocks);
    let specs = f.specs();
    let qs = queries();
    let rows = vec![tda_trace::RelabelRow {
        id: "r".into(),
        prompt: "Mira Tolven was born in".into(),
        original: " Kestrel Bay".into(),
        replacement: " Northmoor".into(),
    }];
    let opts = TraceOptions {
        rank: Rank::Full,
        ..Default::default()
    };
    let s = tda_trace::relabel(&m.model, &m.tokenizer, &f, &qs, &rows, &opts).unwrap();
    // Dense: score(replacement) − score(original).
    let enc = |c: &str| {
        tda_trace::query::encode_query(&m.tokenizer, &m.model.config, &rows[0].prompt, c)
            .unwrap()
            .0
    };
    let go = dense_grads(&m.model, &specs, &enc(" Kestrel Bay"), None);
    let gr = dense_grads(&m.model, &specs, &enc(" Northmoor"), None);
    for (qi, q) in qs.iter().enumerate() {
        let (ids, np) =
            tda_trace::query::encode_query(&m.tokenizer, &m.model.config, &q.prompt, &q.completion)
                .unwrap();
        let gq = dense_grads(&m.model, &specs, &ids, Some(np));
        let want = reference_score(&f, &gq, &gr).0 - reference_score(&f, &gq, &go).0;
        assert!(
            (s[0][qi] - want).abs() <= 2e-3 * want.abs().max(1e-3),
            "relabel {} vs {want}",
            s[0][qi]
        );
    }
    // Self-influence: dense ∇Lᵀ(G+λI)⁻¹∇L, largest first.
    let (si, pass) = tda_trace::self_influence(
        &m.model,
        &m.tokenizer,
        &f,
        &docs(),
        Damping::default(),
        Some(3),
        &win(),
        tda_trace::Granularity::Window,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(si.len(), 3);
    let cands = candidates(&m, &win());
    assert_eq!(pass.windows, cands.len());
    let mut dense: Vec<f64> = cands
        .iter()
        .map(|c| {
            let g = dense_grads(&m.model, &specs, &c.ids, None);
            -reference_score(&f, &g, &g).0
        })
        .collect();
    dense.sort_by(|a, b| b.total_cmp(a));
    for (r, d) in si.iter().zip(&dense) {
        assert!(
            (r.score - d).abs() <= 2e-3 * d.abs(),
            "self-influence {} vs {d}",
            r.score
        );
    }
}

#[test]
fn parquet_output_roundtrips() {
    let m = load_folder::<AD>(&fixture("gpt2"), &Default::default()).unwrap();
    let f = fit_fixture(&m, Strategy::Kfac, ModuleSelection::Blocks);
    let mut o = full_opts();
    o.top_k = Some(2);
    let (out, _) = run_trace(&m, &f, &queries(), &o);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/out.parquet");
    tda_trace::write_parquet(&out, &p).unwrap();
    let file = std::fs::File::open(&p).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = 0;
    for b in reader {
        let b = b.unwrap();
        rows += b.num_rows();
        let score = b
            .column_by_name("score")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap();
        assert_eq!(score.value(0), out.queries[0].results[0].score);
    }
    assert_eq!(rows, 6);
    assert!(
        std::fs::read_dir(p.parent().unwrap()).unwrap().count() == 1,
        "no temp file left"
    );
}

/// `--stride`: overlapping windows make every token after a document's first a loss target exactly
/// once, each non-first window with its first `len − stride` tokens as context; `stride = len` is
/// the disjoint windowing; a stride longer than the window is an error.
#[test]
fn overlapping_windows_target_every_token_once() {
    let m = load_folder::<AD>(&fixture("gpt2"), &Default::default()).unwrap();
    let whole = candidates(
        &m,
        &WindowOptions {
            max_len: 64,
            ..win()
        },
    );
    let (len, stride) = (8, 3);
    let over = candidates(
        &m,
        &WindowOptions {
            max_len: len,
            stride,
            ..win()
        },
    );
    for doc in &whole {
        assert_eq!(doc.window, 0, "one window per document at 64 tokens");
        let n = doc.ids.len();
        let mut hits = vec![0usize; n];
        let ws: Vec<&Candidate> = over.iter().filter(|c| c.doc == doc.doc).collect();
        assert!(n <= len || ws.len() > 1, "{}: {n} tokens", doc.doc_id);
        for w in &ws {
            let start = w.window * stride;
            assert_eq!(w.ids[..], doc.ids[start..start + w.ids.len()]);
            if w.window > 0 {
                assert_eq!(w.loss_from, len - stride, "context of a later window");
            }
            for p in w.loss_from..w.ids.len() {
                hits[start + p] += 1;
            }
        }
        assert_eq!(hits[0], 0);
        assert!(
            hits[1..].iter().all(|&h| h == 1),
            "{}: {hits:?}",
            doc.doc_id
        );
    }
    let disjoint = candidates(
        &m,
        &WindowOptions {
            max_len: len,
            stride: len,
            ..win()
        },
    );
    assert_eq!(
        disjoint,
        candidates(
            &m,
            &WindowOptions {
                max_len: len,
                ..win()
            }
        )
    );
    let err = for_each_batch(
        &docs(),
        &m.tokenizer,
        &m.model.config,
        &WindowOptions {
            max_len: len,
            stride: len + 1,
            ..win()
        },
        |_, _| Ok(()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--stride 9"), "{err}");
}

/// A memory budget small enough to split every batch into single windows and its layers into
/// groups changes neither the factors (token and sequence counts exact, Λ means to f32 rounding)
/// nor the scores (to 1e-4 of the largest |score|: the covariance sums are taken in another
/// order and the eigenbases rounded differently; observed ~1e-6).
#[test]
fn memory_budget_splits_change_neither_factors_nor_scores() {
    let m = load_folder::<AD>(&fixture("gpt2"), &Default::default()).unwrap();
    let specs = ModuleSelection::Blocks
        .specs(&m.model.linear_layers(), None)
        .unwrap();
    // The smallest budget (in 1 KiB steps) that still admits one window of 12 tokens.
    let plan_at = |b: u64| {
        tda_trace::TapPlan::new(
            &specs,
            &m.model.config,
            4,
            12,
            true,
            tda_trace::MemoryBudget(b),
        )
    };
    let tight = (1..)
        .map(|k| k << 10)
        .find(|&b| plan_at(b).is_ok())
        .unwrap();
    let plan = plan_at(tight).unwrap();
    assert!(plan.rows == 1 && plan.groups.len() > 1, "{plan:?}");
    let fp = model_fingerprint(&m.dir).unwrap();
    let fit_with = |budget: Option<u64>| {
        let opts = FitOptions {
            modules: ModuleSelection::Blocks,
            fisher: Fisher::True { seed: 3 },
            windows: WindowOptions {
                memory_budget: budget.map(tda_trace::MemoryBudget),
                ..win()
            },
            ..Default::default()
        };
        fit(&m.model, &m.tokenizer, &docs(), &opts, &fp, &mut |_| {}).unwrap()
    };
    let ((whole, rw), (split, rs)) = (fit_with(None), fit_with(Some(tight)));
    assert!(
        rs.model_passes > rw.model_passes,
        "{} vs {}",
        rs.model_passes,
        rw.model_passes
    );
    assert_eq!(
        (
            whole.tokens,
            whole.covariance_sequences,
            whole.lambda_sequences
        ),
        (
            split.tokens,
            split.covariance_sequences,
            split.lambda_sequences
        )
    );
    for (a, b) in whole.layers.iter().zip(&split.layers) {
        let (x, y) = (a.lambda_mean(), b.lambda_mean());
        assert!(
            (x - y).abs() <= 1e-4 * x.abs(),
            "{}: Λ mean {x} vs {y}",
            a.spec.name
        );
    }
    let opts = |budget: Option<u64>| TraceOptions {
        windows: WindowOptions {
            memory_budget: budget.map(tda_trace::MemoryBudget),
            ..win()
        },
        ..full_opts()
    };
    let (_, a) = run_trace(&m, &whole, &queries(), &opts(None));
    let (out, b) = run_trace(&m, &split, &queries(), &opts(Some(tight)));
    assert!(out.report.model_passes > 0);
    let scale = a.values().fold(0f64, |s, x| s.max(x.abs()));
    assert!(scale > 0.0 && a.len() == b.len());
    for (k, x) in &a {
        let y = b[k];
        assert!((x - y).abs() <= 1e-4 * scale, "{k:?}: {x} vs {y}");
    }
}

/// Queries prepared once, saved and read back score any corpus exactly as a trace that measures
/// them again (same f32 factors: equal to the last bit); another fit of the same model, or
/// another model, is refused naming the file.
#[test]
fn saved_queries_trace_like_fresh_ones() {
    let m = load_folder::<AD>(&fixture("gpt2"), &Default::default()).unwrap();
    let f = fit_fixture(&m, Strategy::Ekfac, ModuleSelection::Blocks);
    let opts = TraceOptions {
        rank: Rank::Truncated(2),
        ..full_opts()
    };
    let fp = model_fingerprint(&m.dir).unwrap();
    let prepared =
        tda_trace::prepare_queries(&m.model, &m.tokenizer, &f, &queries(), &opts).unwrap();
    assert!(prepared
        .preconditioned
        .iter()
        .all(|q| q.kept.iter().all(|&k| k > 0.0 && k <= 1.0 + 1e-6)));
    let dir = std::env::temp_dir().join(format!("tda-saved-q-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("targets.q");
    tda_trace::saved_queries::save(&path, &prepared, &fp, &f).unwrap();
    let back = tda_trace::saved_queries::load(&path, &fp, &f).unwrap();
    let (fresh, _) = run_trace(&m, &f, &queries(), &opts);
    let reused = tda_trace::trace_prepared(
        &m.model,
        &m.tokenizer,
        &f,
        &back,
        &docs(),
        &opts,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(fresh.queries.len(), reused.queries.len());
    for (a, b) in fresh.queries.iter().zip(&reused.queries) {
        assert_eq!((&a.id, &a.prompt, a.value), (&b.id, &b.prompt, b.value));
        let sa: Vec<(String, usize, f64)> = a
            .results
            .iter()
            .map(|r| (r.doc_id.clone(), r.window, r.score))
            .collect();
        let sb: Vec<(String, usize, f64)> = b
            .results
            .iter()
            .map(|r| (r.doc_id.clone(), r.window, r.score))
            .collect();
        assert_eq!(sa, sb);
    }
    assert_eq!(fresh.report.query_rank_kept, reused.report.query_rank_kept);
    assert!(!reused.report.query_rank_kept.is_empty());
    let other = {
        let opts = FitOptions {
            modules: ModuleSelection::Blocks,
            fisher: Fisher::True { seed: 4 },
            windows: win(),
            ..Default::default()
        };
        fit(&m.model, &m.tokenizer, &docs(), &opts, &fp, &mut |_| {})
            .unwrap()
            .0
    };
    let err = tda_trace::saved_queries::load(&path, &fp, &other)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("targets.q") && err.contains("other factors"),
        "{err}"
    );
    let err = tda_trace::saved_queries::load(&path, "another-model", &f)
        .unwrap_err()
        .to_string();
    assert!(err.contains("another model"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
