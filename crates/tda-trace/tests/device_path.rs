//! The fit's device path (`tda_trace::device`: A, S and Λ summed by burn tensor operations where
//! the model runs) against the host path (taps copied, faer GEMMs), on the HF fixtures: a GPT-2
//! with biases and tied embeddings, a Llama with an untied `lm_head`.
//!
//! Tolerances. Both paths multiply the same f32 taps; the host sums 256-row slices in f32 and
//! adds them in f64, the device sums a whole batch in f32 (here ≤ 48 rows) and adds it in f64.
//! Sums must agree to 1e-5 of the layer's largest entry (f32 rounding of ≤ 48-term dot products
//! is ~1e-7 relative); fitted factors and scores, which go through an eigendecomposition and
//! damping, to 1e-4 of the largest value.

mod common;

use common::fixture;

use burn::prelude::*;
use tda_curvature::{FactorFitter, FitConfig, LayerBatch, LayerSpec, Strategy};
use tda_model::device::CpuAutodiff;
use tda_model::{frozen, load_folder};
use tda_trace::candidates::{candidate_batch, for_each_batch};
use tda_trace::device::{batch_sums, ComputeOn, DeviceBases};
use tda_trace::fit::fit;
use tda_trace::host::{device_taps, DeviceTaps, Labels, Scalar};
use tda_trace::{
    model_fingerprint, Candidate, DocSource, Fisher, FitOptions, ModuleSelection, Query,
    TraceOptions, WindowOptions,
};

type AD = CpuAutodiff;
type B = tda_model::device::Cpu;

fn docs() -> DocSource {
    let texts = [
        "The cat sat on the mat and looked at the bird.",
        "A quick brown fox jumps over the lazy dog near the river bank.",
        "Short one.",
        "Mira Tolven was born in Kestrel Bay in 1931 and works as a baker.",
    ];
    common::mem_docs(&texts)
}

fn win() -> WindowOptions {
    WindowOptions {
        max_len: 12,
        batch_size: 4,
        ..Default::default()
    }
}

/// One batch of every window (some padded: "Short one." is 3–4 tokens).
fn batch_of(m: &tda_model::HfModel<AD>) -> tda_model::TokenBatch {
    let mut cands: Vec<Candidate> = vec![];
    for_each_batch(&docs(), &m.tokenizer, &m.model.config, &win(), |c, _| {
        cands.extend_from_slice(c);
        Ok(())
    })
    .unwrap();
    assert!(cands.len() >= 4);
    candidate_batch(&cands, 0).unwrap()
}

/// The host copy of device taps, with every padding row overwritten by NaN in *both* copies:
/// neither path may read them.
fn poison_padding(taps: &mut DeviceTaps<B>) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let (b, t) = (taps.batch, taps.seq_len);
    assert!(taps.mask.iter().any(|m| !m), "the batch has padding");
    let dev = Default::default();
    let poison = |x: &mut Tensor<B, 3>| {
        let d = x.dims()[2];
        let mut v: Vec<f32> = x.clone().into_data().to_vec().unwrap();
        for (r, &m) in taps.mask.iter().enumerate() {
            if !m {
                v[r * d..(r + 1) * d].fill(f32::NAN);
            }
        }
        *x = Tensor::from_data(TensorData::new(v.clone(), [b, t, d]), &dev);
        v
    };
    let a = taps.a.iter_mut().map(poison).collect();
    let g = taps.g.iter_mut().map(poison).collect();
    (a, g)
}

fn assert_sums_close(what: &str, specs: &[LayerSpec], host: &FactorFitter, dev: &FactorFitter) {
    let (h, d) = (host.sums().unwrap(), dev.sums().unwrap());
    assert_eq!((h.tokens, h.sequences), (d.tokens, d.sequences), "{what}");
    assert!(h.tokens > 0 || h.sequences > 0);
    let mut worst = 0f64;
    for ((spec, hl), dl) in specs.iter().zip(&h.layers).zip(&d.layers) {
        let scale = hl.iter().flatten().fold(0f64, |s, x| s.max(x.abs()));
        assert!(scale > 0.0, "{what} {}: vacuous", spec.name);
        for (hp, dp) in hl.iter().zip(dl) {
            assert_eq!(hp.len(), dp.len());
            for (x, y) in hp.iter().zip(dp) {
                worst = worst.max((x - y).abs() / scale);
                assert!(
                    (x - y).abs() <= 1e-5 * scale,
                    "{what} {}: host {x} vs device {y} (scale {scale})",
                    spec.name
                );
            }
        }
    }
    eprintln!("{what}: largest difference {worst:.1e} of the layer's largest entry");
}

/// Covariance sums, then Λ sums in the same eigenbases (`ekfac`) and unrotated (`diagonal`):
/// device equal to host on one batch, with blocks (`max_block`), biases, `lm_head`, padding full
/// of NaN, and the layers fed in two groups on the device (offsets and counting).
#[test]
fn device_sums_equal_host_sums() {
    for (name, max_block) in [("gpt2", None), ("llama", Some(24))] {
        let m = load_folder::<AD>(&fixture(name), &Default::default()).unwrap();
        let specs = ModuleSelection::All
            .specs(&m.model.linear_layers(), max_block)
            .unwrap();
        let fz = frozen(&m.model);
        let batch = batch_of(&m);
        let mut taps = device_taps(&fz, &specs, &batch, Scalar::Loss(Labels::Data)).unwrap();
        let (ha, hg) = poison_padding(&mut taps);
        let host_batches: Vec<LayerBatch<'_>> = ha
            .iter()
            .zip(&hg)
            .map(|(a, g)| LayerBatch {
                a,
                g,
                mask: &taps.mask,
                batch: taps.batch,
                seq_len: taps.seq_len,
            })
            .collect();
        let config = match max_block {
            Some(w) => FitConfig::new(Strategy::Ekfac).with_max_block(w),
            None => FitConfig::new(Strategy::Ekfac),
        };
        // Device, layers in two groups: the second group's sums come from its own taps.
        let split = specs.len() / 2;
        let group = |range: std::ops::Range<usize>| DeviceTaps::<B> {
            a: taps.a[range.clone()].to_vec(),
            g: taps.g[range].to_vec(),
            mask: taps.mask.clone(),
            ..taps_meta(&taps)
        };
        let feed = |fit: &mut FactorFitter, bases: Option<&DeviceBases<B>>| {
            for (first, r) in [(0, 0..split), (split, split..specs.len())] {
                let sums = batch_sums(fit, bases, first, &group(r)).unwrap();
                fit.add_layer_sums(first, &sums).unwrap();
            }
        };
        let mut host = FactorFitter::new(specs.clone(), config).unwrap();
        let mut dev = FactorFitter::new(specs.clone(), config).unwrap();
        host.add(&host_batches).unwrap();
        feed(&mut dev, None);
        assert_sums_close(&format!("{name} covariance"), &specs, &host, &dev);
        host.end_pass().unwrap();
        // Λ in the host's eigenbases for both paths.
        let bases: Vec<_> = (0..specs.len())
            .map(|l| {
                let (a, s) = host.eigenbases(l).unwrap();
                (a.clone(), s.clone())
            })
            .collect();
        let resume =
            || FactorFitter::resume_lambda(specs.clone(), config, bases.clone(), 10, 4).unwrap();
        let (mut host_l, mut dev_l) = (resume(), resume());
        host_l.add(&host_batches).unwrap();
        let up = DeviceBases::<B>::upload(&dev_l, &Default::default()).unwrap();
        feed(&mut dev_l, Some(&up));
        assert_sums_close(&format!("{name} ekfac Λ"), &specs, &host_l, &dev_l);
        // diagonal: Λ of the unrotated per-sequence gradients.
        let diag = FitConfig::new(Strategy::Diagonal);
        let mut host_d = FactorFitter::new(specs.clone(), diag).unwrap();
        let mut dev_d = FactorFitter::new(specs.clone(), diag).unwrap();
        assert!(DeviceBases::<B>::upload(&dev_d, &Default::default()).is_none());
        host_d.add(&host_batches).unwrap();
        feed(&mut dev_d, None);
        assert_sums_close(&format!("{name} diagonal Λ"), &specs, &host_d, &dev_d);
    }
}

fn taps_meta(t: &DeviceTaps<B>) -> DeviceTaps<B> {
    DeviceTaps {
        a: vec![],
        g: vec![],
        mask: vec![],
        batch: t.batch,
        seq_len: t.seq_len,
        value: t.value,
        values: vec![],
        t_model: 0.0,
    }
}

fn fit_on(
    m: &tda_model::HfModel<AD>,
    strategy: Strategy,
    compute: ComputeOn,
    budget: Option<u64>,
) -> (tda_curvature::Factors, tda_trace::FitReport) {
    let opts = FitOptions {
        strategy,
        modules: ModuleSelection::All,
        fisher: Fisher::True { seed: 5 },
        windows: WindowOptions {
            compute,
            memory_budget: budget.map(tda_trace::MemoryBudget),
            ..win()
        },
        ..Default::default()
    };
    let fp = model_fingerprint(&m.dir).unwrap();
    fit(&m.model, &m.tokenizer, &docs(), &opts, &fp, &mut |_| {}).unwrap()
}

fn close(what: &str, x: &[f32], y: &[f32], tol: f64) {
    let scale = x.iter().fold(0f64, |s, v| s.max(v.abs() as f64));
    assert!(scale > 0.0, "{what}: vacuous");
    for (a, b) in x.iter().zip(y) {
        assert!(
            ((a - b).abs() as f64) <= tol * scale,
            "{what}: host {a} vs device {b} (scale {scale})"
        );
    }
}

/// `tda fit` end to end (true Fisher, labels sampled on the device in both): factors of the
/// device path equal the host path's, for every strategy with a pass, also when a tight memory
/// budget splits the batch into layer groups; traces with them give the same scores.
#[test]
fn device_fit_equals_host_fit_and_traces_the_same() {
    let m = load_folder::<AD>(&fixture("gpt2"), &Default::default()).unwrap();
    for strategy in [Strategy::Diagonal, Strategy::Kfac, Strategy::Ekfac] {
        let (h, _) = fit_on(&m, strategy, ComputeOn::Host, None);
        let (d, report) = fit_on(&m, strategy, ComputeOn::Device, None);
        assert_eq!(report.copy_s, 0.0, "no taps are copied");
        assert_eq!(
            (h.tokens, h.covariance_sequences, h.lambda_sequences),
            (d.tokens, d.covariance_sequences, d.lambda_sequences)
        );
        for (x, y) in h.layers.iter().zip(&d.layers) {
            let n = format!("{strategy} {}", x.spec.name);
            if let (Some(xa), Some(ya)) = (&x.a_basis, &y.a_basis) {
                close(&format!("{n} eigenvalues of A"), &xa.vals, &ya.vals, 1e-4);
                let (xs, ys) = (x.s_basis.as_ref().unwrap(), y.s_basis.as_ref().unwrap());
                close(&format!("{n} eigenvalues of S"), &xs.vals, &ys.vals, 1e-4);
            }
            let (lx, ly) = (x.lambda_mean(), y.lambda_mean());
            assert!(
                (lx - ly).abs() <= 1e-4 * lx.abs(),
                "{n}: Λ mean {lx} vs {ly}"
            );
        }
        let opts = TraceOptions {
            top_k: Some(100),
            granularity: tda_trace::Granularity::Window,
            windows: win(),
            ..Default::default()
        };
        let qs = [Query {
            id: "q".into(),
            prompt: "Mira Tolven was born in".into(),
            completion: " Kestrel Bay".into(),
        }];
        let run = |f| {
            let out = tda_trace::trace(
                &m.model,
                &m.tokenizer,
                f,
                &qs,
                &docs(),
                &opts,
                &mut |_, _| {},
            )
            .unwrap();
            let mut r: Vec<(String, usize, f64)> = out.queries[0]
                .results
                .iter()
                .map(|r| (r.doc_id.clone(), r.window, r.score))
                .collect();
            r.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            r
        };
        let (sh, sd) = (run(&h), run(&d));
        let scale = sh.iter().fold(0f64, |s, r| s.max(r.2.abs()));
        assert!(
            scale > 0.0 && sh.len() == sd.len() && sh.len() > 4,
            "{sh:?} {sd:?}"
        );
        for (x, y) in sh.iter().zip(&sd) {
            assert_eq!((&x.0, x.1), (&y.0, y.1));
            assert!(
                (x.2 - y.2).abs() <= 1e-4 * scale,
                "{strategy}: {x:?} vs {y:?}"
            );
        }
    }
    // A budget of one window per forward, layer group by layer group.
    let specs = ModuleSelection::All
        .specs(&m.model.linear_layers(), None)
        .unwrap();
    let tight = (1..)
        .map(|k: u64| k << 10)
        .find(|&b| {
            tda_trace::TapPlan::new(
                &specs,
                &m.model.config,
                4,
                12,
                true,
                tda_trace::MemoryBudget(b),
            )
            .is_ok()
        })
        .unwrap();
    let (whole, _) = fit_on(&m, Strategy::Ekfac, ComputeOn::Device, None);
    let (split, report) = fit_on(&m, Strategy::Ekfac, ComputeOn::Device, Some(tight));
    assert!(report.model_passes > 8, "{}", report.model_passes);
    assert_eq!(whole.tokens, split.tokens);
    for (x, y) in whole.layers.iter().zip(&split.layers) {
        let (lx, ly) = (x.lambda_mean(), y.lambda_mean());
        assert!(
            (lx - ly).abs() <= 1e-4 * lx.abs(),
            "{}: {lx} vs {ly}",
            x.spec.name
        );
    }
}

/// `tda trace` scored on the device equals the host's scores: both contraction paths (per token
/// when per-token scores are asked for, the cost model's choice otherwise), full-rank and rank-2
/// queries, three queries at once, per-token and per-layer scores, biases (gpt2) and an untied
/// `lm_head` (llama), and a memory budget that scores layer group by layer group.
/// Tolerance: 1e-4 of the query's largest |score| (f32 products; observed below 1e-6).
#[test]
fn device_trace_equals_host_trace() {
    let qs = [
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
            prompt: "The cat".into(),
            completion: " sat on".into(),
        },
    ];
    for name in ["gpt2", "llama"] {
        let m = load_folder::<AD>(&fixture(name), &Default::default()).unwrap();
        let (factors, _) = fit_on(&m, Strategy::Ekfac, ComputeOn::Host, None);
        let specs = factors.specs();
        let tight = (1..)
            .map(|k: u64| k << 10)
            .find(|&b| {
                tda_trace::TapPlan::new(
                    &specs,
                    &m.model.config,
                    4,
                    12,
                    false,
                    tda_trace::MemoryBudget(b),
                )
                .is_ok()
            })
            .unwrap();
        for (per_token, rank, budget) in [
            (true, tda_curvature::Rank::Full, None),
            (false, tda_curvature::Rank::Full, None),
            (false, tda_curvature::Rank::Truncated(2), None),
            (true, tda_curvature::Rank::Truncated(2), Some(tight)),
        ] {
            let run = |compute| {
                let opts = TraceOptions {
                    top_k: Some(100),
                    granularity: tda_trace::Granularity::Window,
                    rank,
                    per_token,
                    per_layer: true,
                    windows: WindowOptions {
                        compute,
                        memory_budget: budget.map(tda_trace::MemoryBudget),
                        ..win()
                    },
                    ..Default::default()
                };
                tda_trace::trace(
                    &m.model,
                    &m.tokenizer,
                    &factors,
                    &qs,
                    &docs(),
                    &opts,
                    &mut |_, _| {},
                )
                .unwrap()
            };
            let (h, d) = (run(ComputeOn::Host), run(ComputeOn::Device));
            let what = format!("{name} per_token={per_token} {rank:?} budget={budget:?}");
            for (hq, dq) in h.queries.iter().zip(&d.queries) {
                let scale = hq.results.iter().fold(0f64, |s, r| s.max(r.score.abs()));
                assert!(scale > 0.0 && hq.results.len() > 4, "{what}: vacuous");
                assert_eq!(hq.results.len(), dq.results.len(), "{what}");
                let find = |r: &tda_trace::ResultRow| {
                    dq.results
                        .iter()
                        .find(|x| x.doc_id == r.doc_id && x.window == r.window)
                        .unwrap()
                        .clone()
                };
                for r in &hq.results {
                    let o = find(r);
                    let near = |x: f64, y: f64| (x - y).abs() <= 1e-4 * scale;
                    assert!(
                        near(r.score, o.score),
                        "{what} {}: {} vs {}",
                        hq.id,
                        r.score,
                        o.score
                    );
                    let (hl, dl) = (r.per_layer.as_ref().unwrap(), o.per_layer.as_ref().unwrap());
                    assert!(
                        hl.iter().zip(dl).all(|(x, y)| near(x.score, y.score)),
                        "{what}: per layer"
                    );
                    assert_eq!(r.per_token.is_some(), per_token);
                    if let (Some(ht), Some(dt)) = (&r.per_token, &o.per_token) {
                        assert!(
                            ht.iter().zip(dt).all(|(x, y)| near(x.score, y.score)),
                            "{what}: per token"
                        );
                    }
                }
            }
        }
    }
}

fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let rank = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        for (k, &i) in idx.iter().enumerate() {
            r[i] = k as f64;
        }
        r
    };
    let (rx, ry) = (rank(x), rank(y));
    let n = x.len() as f64;
    let m = (n - 1.0) / 2.0;
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - m) * (b - m)).sum();
    let var: f64 = rx.iter().map(|a| (a - m) * (a - m)).sum();
    cov / var
}

/// `--precision bf16` (mixed: bf16 GEMM operands, f32 reductions) on the device path: scores
/// stay rank-correlated with the f32 scores (Spearman ≥ 0.95 per query over every window, on
/// both contraction paths; measured values printed) and are not equal to them (the cast is
/// real); without the device path the option is refused, and `fit` refuses it.
#[test]
fn bf16_contraction_correlates_with_f32() {
    let m = load_folder::<AD>(&fixture("llama"), &Default::default()).unwrap();
    let (factors, _) = fit_on(&m, Strategy::Ekfac, ComputeOn::Host, None);
    let qs = [
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
    ];
    let run = |compute, precision, per_token| {
        let opts = TraceOptions {
            top_k: None,
            granularity: tda_trace::Granularity::Window,
            per_token,
            windows: WindowOptions {
                compute,
                precision,
                ..win()
            },
            ..Default::default()
        };
        tda_trace::trace(
            &m.model,
            &m.tokenizer,
            &factors,
            &qs,
            &docs(),
            &opts,
            &mut |_, _| {},
        )
    };
    use tda_trace::device::Precision;
    for per_token in [true, false] {
        let f = run(ComputeOn::Device, Precision::F32, per_token).unwrap();
        let h = run(ComputeOn::Device, Precision::Bf16, per_token).unwrap();
        for (fq, hq) in f.queries.iter().zip(&h.queries) {
            let key = |r: &tda_trace::ResultRow| (r.doc_id.clone(), r.window);
            let mut fr: Vec<_> = fq.results.iter().map(|r| (key(r), r.score)).collect();
            let mut hr: Vec<_> = hq.results.iter().map(|r| (key(r), r.score)).collect();
            fr.sort_by(|a, b| a.0.cmp(&b.0));
            hr.sort_by(|a, b| a.0.cmp(&b.0));
            assert!(fr.len() > 4 && fr.len() == hr.len());
            let (x, y): (Vec<f64>, Vec<f64>) = fr.iter().zip(&hr).map(|(a, b)| (a.1, b.1)).unzip();
            let rho = spearman(&x, &y);
            let scale = x.iter().fold(0f64, |s, v| s.max(v.abs()));
            let err = x
                .iter()
                .zip(&y)
                .fold(0f64, |s, (a, b)| s.max((a - b).abs()))
                / scale;
            eprintln!("bf16 vs f32, per_token={per_token}, query {}: Spearman {rho:.4}, largest difference {err:.1e} of the largest score", fq.id);
            assert!(rho >= 0.95, "Spearman {rho}");
            assert!(err > 0.0, "bf16 changed nothing");
        }
    }
    let e = run(ComputeOn::Host, Precision::Bf16, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--compute-on device"), "{e}");
    let opts = FitOptions {
        windows: WindowOptions {
            compute: ComputeOn::Device,
            precision: Precision::Bf16,
            ..win()
        },
        ..Default::default()
    };
    let e = fit(&m.model, &m.tokenizer, &docs(), &opts, "x", &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("f32"), "{e}");
}
