//! The LDS machinery: subsets, the bootstrap interval, and a bank that resumes and refuses a
//! folder made for other inputs.

use burn::module::AutodiffModule;
use tda_corpus::ReadOptions;
use tda_eval::bank::{self, BankSpec};
use tda_eval::lds::lds_with_ci;
use tda_model::device::{Cpu, CpuAutodiff};

#[test]
fn subsets_are_deterministic_sorted_and_of_the_right_size() {
    let spec = BankSpec {
        models: 8,
        fraction: 0.5,
        seed: 3,
        ..Default::default()
    };
    let a = bank::draw_subsets(101, &spec);
    assert_eq!(a, bank::draw_subsets(101, &spec));
    assert_eq!(a.len(), 8);
    for s in &a {
        assert_eq!(s.len(), 51, "round(0.5 · 101)");
        assert!(s.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
        assert!(*s.last().unwrap() < 101);
    }
    assert_ne!(a[0], a[1], "different models draw different subsets");
    let other = bank::draw_subsets(101, &BankSpec { seed: 4, ..spec });
    assert_ne!(a, other);
}

/// Outcomes that are an exact linear datamodel of the true scores: the true scores have LDS 1;
/// noise lowers it; scores unrelated to the outcome have LDS near 0; the interval holds the
/// estimate and narrows with more models.
#[test]
fn lds_of_a_planted_datamodel() {
    let n = 40;
    let spec = BankSpec {
        models: 60,
        fraction: 0.5,
        seed: 0,
        ..Default::default()
    };
    let subsets = bank::draw_subsets(n, &spec);
    let truth: Vec<Vec<f64>> = (0..3)
        .map(|q| {
            (0..n)
                .map(|i| ((i * 7 + q * 13) % 11) as f64 - 5.0)
                .collect()
        })
        .collect();
    let outputs: Vec<Vec<f64>> = truth
        .iter()
        .map(|t| {
            subsets
                .iter()
                .map(|s| s.iter().map(|&i| t[i]).sum())
                .collect()
        })
        .collect();
    let exact = lds_with_ci(&truth, &subsets, &outputs, 200, 1);
    assert!((exact.lds - 1.0).abs() < 1e-12, "{}", exact.lds);
    assert_eq!(exact.ci95, [1.0, 1.0]);

    // Unrelated scores: pseudo-random numbers.
    let mut x = 12345u64;
    let mut rnd = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let unrelated: Vec<Vec<f64>> = truth
        .iter()
        .map(|t| t.iter().map(|_| rnd()).collect())
        .collect();
    let noisy: Vec<Vec<f64>> = truth
        .iter()
        .map(|t| t.iter().map(|v| v + 6.0 * rnd()).collect())
        .collect();
    let u = lds_with_ci(&unrelated, &subsets, &outputs, 200, 1);
    assert!(u.lds.abs() < 0.35, "unrelated scores: {}", u.lds);
    assert!(u.ci95[0] <= u.lds && u.lds <= u.ci95[1], "{u:?}");

    // Noisy truth: strictly between.
    let z = lds_with_ci(&noisy, &subsets, &outputs, 200, 1);
    assert!(
        z.lds > u.lds + 0.2 && z.lds < 0.99,
        "{} vs {}",
        z.lds,
        u.lds
    );
    let few = lds_with_ci(
        &noisy,
        &subsets[..12],
        &outputs.iter().map(|o| o[..12].to_vec()).collect::<Vec<_>>(),
        200,
        1,
    );
    assert!(
        few.ci95[1] - few.ci95[0] > z.ci95[1] - z.ci95[0],
        "12 models give a wider interval than 60: {:?} vs {:?}",
        few.ci95,
        z.ci95
    );
}

const MICRO: &str = include_str!("../../../configs/micro.toml");

#[test]
fn a_bank_resumes_and_refuses_other_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("bios.jsonl");
    tda_eval::write_jsonl(&tda_eval::biographies(12, 0), &corpus).unwrap();
    let spec = BankSpec {
        models: 3,
        fraction: 0.5,
        seed: 0,
        ..Default::default()
    };
    let device = Default::default();
    let mut runs = 0;
    let mut train = |job: &tda_train::TrainJob, ex: &tda_train::Examples| {
        runs += 1;
        bank::train_on::<CpuAutodiff>(job, ex, &device, &mut |_| {})
    };
    let bank_dir = dir.path().join("bank");
    let read = ReadOptions::default();
    let b = bank::build(
        &bank_dir,
        &corpus,
        &read,
        MICRO,
        &spec,
        &mut train,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(b.trained, 4, "the full model and 3 subsets");
    assert_eq!(b.models.len(), 3);
    // Subset models are trained on their documents only, with the full model's tokenizer.
    let sub = std::fs::read_to_string(bank_dir.join("subsets/subset-001.jsonl")).unwrap();
    assert_eq!(sub.lines().count(), 6);
    let full_tok = std::fs::read(b.full.join("tokenizer.json")).unwrap();
    assert_eq!(
        std::fs::read(b.models[1].join("tokenizer.json")).unwrap(),
        full_tok
    );

    // A killed run: the record of model 2 gone → only it is retrained.
    std::fs::remove_file(b.models[2].join(tda_train::TRAINING_RECORD)).unwrap();
    let again = bank::build(
        &bank_dir,
        &corpus,
        &read,
        MICRO,
        &spec,
        &mut train,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(again.trained, 1);
    assert_eq!(again.subsets, b.subsets);
    assert_eq!(runs, 5);

    // The same folder with another recipe or other settings: refused, nothing touched.
    let mut never = |_: &tda_train::TrainJob,
                     _: &tda_train::Examples|
     -> Result<(), bank::BankError> { panic!("must not train") };
    let other = MICRO.replace("steps = 8", "steps = 9");
    let e = bank::build(
        &bank_dir,
        &corpus,
        &read,
        &other,
        &spec,
        &mut never,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("another training recipe"), "{e}");
    let e = bank::build(
        &bank_dir,
        &corpus,
        &read,
        MICRO,
        &BankSpec { models: 4, ..spec },
        &mut never,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("other bank settings"), "{e}");
    tda_eval::write_jsonl(&tda_eval::biographies(12, 1), &corpus).unwrap();
    let e = bank::build(
        &bank_dir,
        &corpus,
        &read,
        MICRO,
        &spec,
        &mut never,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("another corpus"), "{e}");

    // Measurements: log p of a completion is negative and finite on every model.
    let q = tda_eval::biographies::fact_queries(&tda_eval::biographies(12, 0), 4);
    for m in std::iter::once(&b.full).chain(&b.models) {
        let model = tda_model::load_folder::<Cpu>(m, &device).unwrap();
        let v = tda_eval::lds::measure(&model.model, &model.tokenizer, &q).unwrap();
        assert!(v.iter().all(|x| x.is_finite() && *x < 0.0), "{v:?}");
    }
    // … and equal to the value of f that `tda trace` reports for the same queries.
    let full = tda_model::load_folder::<CpuAutodiff>(&b.full, &device).unwrap();
    let v = tda_eval::lds::measure(&full.model.valid(), &full.tokenizer, &q).unwrap();
    let source = tda_trace::DocSource::corpus(dir.path().join("bank/subsets/subset-000.jsonl"));
    let fit_opts = tda_trace::FitOptions {
        strategy: tda_curvature::Strategy::Identity,
        ..Default::default()
    };
    let (factors, _) = tda_trace::fit(
        &full.model,
        &full.tokenizer,
        &source,
        &fit_opts,
        "fp",
        &mut |_| {},
    )
    .unwrap();
    let out = tda_trace::trace(
        &full.model,
        &full.tokenizer,
        &factors,
        &q,
        &source,
        &Default::default(),
        &mut |_, _| {},
    )
    .unwrap();
    for (a, r) in v.iter().zip(&out.queries) {
        assert!(
            (a - r.value as f64).abs() < 1e-4 * a.abs().max(1.0),
            "{a} vs {}",
            r.value
        );
    }
}
