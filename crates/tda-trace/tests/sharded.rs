//! Sharded fit and trace (`--shard i/n` + merge) against the unsharded run, in process, on the
//! GPT-2 reference fixture with a 23-document corpus (4 and 7 shards: uneven, and 7 leaves some
//! shards with 3 documents and one with 5 windows fewer).
//!
//! Tolerances: a sharded sum is the unsharded f64 sum taken in another order, and a shard's
//! batches hold other windows (other padding), so taps differ at f32 rounding (~1e-7 relative).
//! We compare what the factors mean rather than raw eigenvectors (which are only defined up to
//! sign and rotation within near-equal eigenvalues): eigenvalues and the reconstructed A, S to
//! 1e-4 of the largest entry, Λ to 1e-3 of its largest entry, scores to 1e-4 of the largest
//! |score|. Counts are exact; one shard is bit-for-bit the unsharded fit.

mod common;

use std::path::PathBuf;

use tda_curvature::{Damping, Factors, Rank, Strategy};
use tda_model::device::CpuAutodiff;
use tda_model::load_folder;
use tda_trace::fit::fit;
use tda_trace::sharded::{fit_shard, merge_fit, merge_trace, save_merged, trace_shard, MergedFit};
use tda_trace::{
    model_fingerprint, DocSource, Fisher, FitOptions, Granularity, ModuleSelection, Query, Shard,
    TraceOptions, WindowOptions,
};

type AD = CpuAutodiff;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gpt2")
}

fn docs() -> DocSource {
    let words = [
        "cat", "mat", "bird", "river", "bank", "fox", "dog", "baker", "bay", "city", "record",
        "family", "born", "lives", "works", "north", "south", "garden", "letter", "bridge",
    ];
    DocSource::docs(
        (0..23)
            .map(|i| {
                let n = 4 + (i * 7) % 19;
                let text: Vec<&str> = (0..n)
                    .map(|k| words[(i * 3 + k * 5) % words.len()])
                    .collect();
                let text = format!("Doc {i}: {}.", text.join(" "));
                // ids repeat: documents are told apart by ordinal
                common::mem_doc(i, format!("d{}", i % 20), text)
            })
            .collect(),
    )
}

fn windows(shard: Shard) -> WindowOptions {
    WindowOptions {
        max_len: 12,
        batch_size: 3,
        max_windows: None,
        shard,
        ..Default::default()
    }
}

fn fit_opts(strategy: Strategy, shard: Shard) -> FitOptions {
    FitOptions {
        strategy,
        modules: ModuleSelection::Blocks,
        fisher: Fisher::True { seed: 5 },
        max_block: None,
        windows: windows(shard),
    }
}

/// Runs every pass of a sharded fit over `n` shards through files in `dir`; returns the factors.
fn sharded_fit(strategy: Strategy, n: usize, dir: &std::path::Path) -> Factors {
    let m = load_folder::<AD>(&fixture(), &Default::default()).unwrap();
    let fp = model_fingerprint(&m.dir).unwrap();
    let run = |pass: &str, eig: Option<&std::path::Path>| -> Vec<PathBuf> {
        (0..n)
            .rev() // order does not matter
            .map(|i| {
                let out = dir.join(format!("{pass}-{i}.part"));
                let shard = Shard { index: i, count: n };
                fit_shard(
                    &m.model,
                    &m.tokenizer,
                    &docs(),
                    &fit_opts(strategy, shard),
                    &fp,
                    eig,
                    &out,
                    &mut |_| {},
                )
                .unwrap();
                out
            })
            .collect()
    };
    let first = run("first", None);
    match merge_fit(&first).unwrap() {
        MergedFit::Factors { factors, report } => {
            assert_eq!(report.shards, Some(n));
            factors
        }
        e @ MergedFit::Eigenbases { .. } => {
            let eig = dir.join("eigenbases");
            save_merged(&e, &eig).unwrap();
            let second = run("lambda", Some(&eig));
            match merge_fit(&second).unwrap() {
                MergedFit::Factors { factors, .. } => factors,
                MergedFit::Eigenbases { .. } => panic!("the Λ merge gives factors"),
            }
        }
    }
}

fn unsharded_fit(strategy: Strategy) -> Factors {
    let m = load_folder::<AD>(&fixture(), &Default::default()).unwrap();
    let fp = model_fingerprint(&m.dir).unwrap();
    fit(
        &m.model,
        &m.tokenizer,
        &docs(),
        &fit_opts(strategy, Shard::ALL),
        &fp,
        &mut |_| {},
    )
    .unwrap()
    .0
}

fn max_abs(v: impl Iterator<Item = f64>) -> f64 {
    v.fold(0.0, |m, x| m.max(x.abs()))
}

/// `Q diag(λ) Qᵀ` of a (single-block) eigenbasis, f64.
fn reconstruct(b: &tda_curvature::Eigenbasis) -> Vec<f64> {
    let d = b.dim;
    let q = &b.vecs[0];
    let mut m = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            m[i * d + j] = (0..d)
                .map(|c| q[i * d + c] as f64 * b.vals[c] as f64 * q[j * d + c] as f64)
                .sum();
        }
    }
    m
}

fn assert_close_factors(a: &Factors, b: &Factors, what: &str) {
    assert_eq!(
        (
            a.tokens,
            a.covariance_sequences,
            a.lambda_sequences,
            a.loss_targets
        ),
        (
            b.tokens,
            b.covariance_sequences,
            b.lambda_sequences,
            b.loss_targets
        ),
        "{what}: counts"
    );
    assert_eq!(a.specs(), b.specs());
    for (la, lb) in a.layers.iter().zip(&b.layers) {
        let name = format!("{what} {}", la.spec.name);
        for (ba, bb) in [(&la.a_basis, &lb.a_basis), (&la.s_basis, &lb.s_basis)] {
            if let (Some(ba), Some(bb)) = (ba, bb) {
                let top = max_abs(ba.vals.iter().map(|&x| x as f64));
                let dv = max_abs(ba.vals.iter().zip(&bb.vals).map(|(x, y)| (x - y) as f64));
                assert!(
                    dv <= 1e-4 * top,
                    "{name}: eigenvalues differ by {dv} (max {top})"
                );
                let (ra, rb) = (reconstruct(ba), reconstruct(bb));
                let top = max_abs(ra.iter().copied());
                let d = max_abs(ra.iter().zip(&rb).map(|(x, y)| x - y));
                assert!(
                    d <= 1e-4 * top,
                    "{name}: covariances differ by {d} (max {top})"
                );
            }
        }
        if let (Some(x), Some(y)) = (&la.lambda, &lb.lambda) {
            let top = max_abs(x.iter().map(|&v| v as f64));
            let d = max_abs(x.iter().zip(y).map(|(p, q)| (p - q) as f64));
            assert!(d <= 1e-3 * top, "{name}: Λ differs by {d} (max {top})");
        }
    }
}

#[test]
fn sharded_fits_equal_the_unsharded_fit() {
    for strategy in [Strategy::Ekfac, Strategy::Kfac, Strategy::Diagonal] {
        let full = unsharded_fit(strategy);
        for n in [4, 7] {
            let dir = tempfile::tempdir().unwrap();
            let sharded = sharded_fit(strategy, n, dir.path());
            assert_close_factors(&sharded, &full, &format!("{strategy} over {n} shards"));
        }
    }
    // One shard is the unsharded fit, bit for bit (the same sums, added to zero).
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        sharded_fit(Strategy::Ekfac, 1, dir.path()),
        unsharded_fit(Strategy::Ekfac)
    );
}

fn queries() -> Vec<Query> {
    vec![
        Query {
            id: "a".into(),
            prompt: "Doc 3: the cat".into(),
            completion: " sat on the mat".into(),
        },
        Query {
            id: "b".into(),
            prompt: "The river".into(),
            completion: " bank bridge".into(),
        },
    ]
}

fn trace_opts(top_k: Option<usize>, granularity: Granularity, shard: Shard) -> TraceOptions {
    TraceOptions {
        damping: Damping::Absolute(1e-3),
        rank: Rank::Full,
        top_k,
        per_token: true,
        per_layer: true,
        windows: windows(shard),
        granularity,
        ..Default::default()
    }
}

#[test]
fn sharded_traces_merge_to_the_unsharded_ranking() {
    let m = load_folder::<AD>(&fixture(), &Default::default()).unwrap();
    let fp = model_fingerprint(&m.dir).unwrap();
    let factors = unsharded_fit(Strategy::Ekfac);
    for granularity in [Granularity::Document, Granularity::Window] {
        let full = tda_trace::trace(
            &m.model,
            &m.tokenizer,
            &factors,
            &queries(),
            &docs(),
            &trace_opts(None, granularity, Shard::ALL),
            &mut |_, _| {},
        )
        .unwrap();
        for (n, shard_k, merge_k) in [(4, Some(5), Some(5)), (7, None, Some(8)), (7, None, None)] {
            let dir = tempfile::tempdir().unwrap();
            let parts: Vec<PathBuf> = (0..n)
                .map(|i| {
                    let out = dir.path().join(format!("t-{i}.parquet"));
                    let opts = trace_opts(shard_k, granularity, Shard { index: i, count: n });
                    trace_shard(
                        &m.model,
                        &m.tokenizer,
                        &factors,
                        "f",
                        &fp,
                        &queries(),
                        &docs(),
                        &opts,
                        &out,
                        &mut |_, _| {},
                    )
                    .unwrap();
                    out
                })
                .collect();
            let merged = merge_trace(&parts, Some(merge_k)).unwrap();
            if let Some(k) = shard_k {
                // By default a merge keeps what each shard kept (the shards' --top-k).
                let by_default = merge_trace(&parts, None).unwrap();
                assert!(by_default.queries.iter().all(|q| q.results.len() == k));
            }
            assert_eq!(merged.report.corpus, full.report.corpus, "stats add up");
            assert_eq!(merged.report.candidates, full.report.candidates);
            for (qm, qf) in merged.queries.iter().zip(&full.queries) {
                let want: Vec<_> = qf
                    .results
                    .iter()
                    .take(merge_k.unwrap_or(usize::MAX))
                    .collect();
                assert_eq!(qm.results.len(), want.len());
                assert_eq!(qm.value, qf.value);
                let top = max_abs(qf.results.iter().map(|r| r.score));
                for (a, b) in qm.results.iter().zip(&want) {
                    let where_ = format!("{granularity:?} n={n} query {} rank {}", qm.id, a.rank);
                    assert_eq!(
                        (a.doc, a.window, &a.doc_id),
                        (b.doc, b.window, &b.doc_id),
                        "{where_}"
                    );
                    assert_eq!(
                        (a.rank, a.windows, a.span),
                        (b.rank, b.windows, b.span),
                        "{where_}"
                    );
                    assert!(
                        (a.score - b.score).abs() <= 1e-4 * top,
                        "{where_}: {} vs {}",
                        a.score,
                        b.score
                    );
                    let (pa, pb) = (a.per_layer.as_ref().unwrap(), b.per_layer.as_ref().unwrap());
                    assert_eq!(pa.len(), pb.len());
                    let (ta, tb) = (a.per_token.as_ref().unwrap(), b.per_token.as_ref().unwrap());
                    assert_eq!(
                        ta.iter().map(|t| &t.token).collect::<Vec<_>>(),
                        tb.iter().map(|t| &t.token).collect::<Vec<_>>()
                    );
                }
            }
        }
    }
}

#[test]
fn merges_refuse_missing_duplicate_and_stale_shards() {
    let m = load_folder::<AD>(&fixture(), &Default::default()).unwrap();
    let fp = model_fingerprint(&m.dir).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let part = |name: &str, i: usize, n: usize, seed: u64, eig: Option<&std::path::Path>| {
        let out = dir.path().join(name);
        let mut o = fit_opts(Strategy::Ekfac, Shard { index: i, count: n });
        o.fisher = Fisher::True { seed };
        fit_shard(
            &m.model,
            &m.tokenizer,
            &docs(),
            &o,
            &fp,
            eig,
            &out,
            &mut |_| {},
        )
        .unwrap();
        out
    };
    let (p0, p1, p2) = (
        part("a0", 0, 3, 5, None),
        part("a1", 1, 3, 5, None),
        part("a2", 2, 3, 5, None),
    );
    let err = |paths: &[PathBuf]| match merge_fit(paths) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("merge of {paths:?} must fail"),
    };
    let e = err(&[p0.clone(), p2.clone()]);
    assert!(e.starts_with("missing shard 1 of 3"), "{e}");
    let e = err(&[p0.clone(), p1.clone(), p1.clone(), p2.clone()]);
    assert!(e.contains("are both shard 1/3"), "{e}");
    let stale = part("s1", 1, 3, 6, None);
    let e = err(&[p0.clone(), stale, p2.clone()]);
    assert!(
        e.contains("the settings (fisher: \"true seed 6\" vs \"true seed 5\") differs"),
        "{e}"
    );
    // Λ partials made from eigenbases that were replaced since are refused.
    let eig = dir.path().join("eig");
    save_merged(
        &merge_fit(&[p2.clone(), p0.clone(), p1.clone()]).unwrap(),
        &eig,
    )
    .unwrap();
    let l: Vec<PathBuf> = (0..2)
        .map(|i| part(&format!("l{i}"), i, 2, 5, Some(&eig)))
        .collect();
    let third = part("c0", 0, 1, 9, None);
    save_merged(&merge_fit(&[third]).unwrap(), &eig).unwrap();
    let e = err(&l);
    assert!(e.contains("made from other eigenbases"), "{e}");
    // A Λ shard refuses eigenbases fitted with other settings.
    let mut o = fit_opts(Strategy::Ekfac, Shard { index: 0, count: 2 });
    o.fisher = Fisher::True { seed: 5 };
    let e = fit_shard(
        &m.model,
        &m.tokenizer,
        &docs(),
        &o,
        &fp,
        Some(&eig),
        &dir.path().join("x"),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("other settings"), "{e}");
    assert!(!dir.path().join("x").exists(), "nothing written on error");
}
