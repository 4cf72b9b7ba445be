//! Scale-out on one machine: the sharded EK-FAC fit (two shards running concurrently, one core
//! each, as two Slurm array tasks on this 2-core node) against the same fit as one 1-core task,
//! and the share of the merges in the sharded job. Also the sharded trace (two 1-core shards +
//! merge) against one 1-core trace. All figures are ratios of wall times measured in this run.
//!
//! Model and corpus: the GPT-2 reference fixture, the demo's 400 generated biographies
//! (`synth-corpus`), true Fisher, all layers. Run: `cargo bench -p tda-benches --bench sharded`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tda_model::device::CpuAutodiff;
use tda_model::load_folder;
use tda_trace::sharded::{fit_shard, merge_fit, merge_trace, save_merged, trace_shard, MergedFit};
use tda_trace::{
    fit::fit, model_fingerprint, DocSource, FitOptions, Query, Shard, TraceOptions, WindowOptions,
};

type AD = CpuAutodiff;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gpt2")
}

fn windows(shard: Shard) -> WindowOptions {
    WindowOptions {
        shard,
        ..Default::default()
    }
}

/// Runs `f` on a pool of `threads` threads.
fn on<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Runs shard `i` of 2 for each `i` concurrently, each on its own 1-thread pool; wall seconds.
fn two_shards(job: impl Fn(usize) + Sync) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for i in 0..2 {
            let job = &job;
            s.spawn(move || on(1, || job(i)));
        }
    });
    t.elapsed().as_secs_f64()
}

/// The first 8 documents' first sentences: all but the last two words → the last two.
fn queries() -> Vec<Query> {
    tda_eval::biographies(400, 0)
        .iter()
        .take(8)
        .map(|d| {
            let words: Vec<&str> = d.text.split('.').next().unwrap_or("").split(' ').collect();
            let cut = words.len().saturating_sub(2).max(1);
            Query {
                id: d.id.clone(),
                prompt: words[..cut].join(" "),
                completion: format!(" {}", words[cut..].join(" ")),
            }
        })
        .collect()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    tda_eval::write_jsonl(&tda_eval::biographies(400, 0), &corpus).unwrap();
    let source = DocSource::corpus(&corpus);
    let fp = model_fingerprint(&fixture()).unwrap();
    let opts = |shard| FitOptions {
        windows: windows(shard),
        ..Default::default()
    };
    let load = || load_folder::<AD>(&fixture(), &Default::default()).unwrap();

    // One task, one core (after a short warm-up run, so no timing pays for first-touch costs).
    let m = load();
    let warm = FitOptions {
        windows: WindowOptions {
            max_windows: Some(64),
            ..windows(Shard::ALL)
        },
        ..Default::default()
    };
    // The unsharded fit on `threads` cores: (factors, seconds).
    let whole = |threads: usize, o: &FitOptions| {
        let t = Instant::now();
        let (f, _) = on(threads, || {
            fit(&m.model, &m.tokenizer, &source, o, &fp, &mut |_| {})
        })
        .unwrap();
        (f, t.elapsed().as_secs_f64())
    };
    whole(1, &warm);
    let (factors, one) = whole(1, &opts(Shard::ALL));
    let (_, one_two_cores) = whole(2, &opts(Shard::ALL));

    // Two shards at once, one core each: covariance pass, merge, Λ pass, merge.
    let part = |name: &str, i: usize| dir.path().join(format!("{name}-{i}.part"));
    let shard_pass = |name: &str, eig: Option<&Path>| {
        two_shards(|i| {
            let m = load();
            let o = opts(Shard { index: i, count: 2 });
            fit_shard(
                &m.model,
                &m.tokenizer,
                &source,
                &o,
                &fp,
                eig,
                &part(name, i),
                &mut |_| {},
            )
            .unwrap();
        })
    };
    let cov = shard_pass("cov", None);
    let t = Instant::now();
    let eig = dir.path().join("eig");
    save_merged(&merge_fit(&[part("cov", 0), part("cov", 1)]).unwrap(), &eig).unwrap();
    let merge1 = t.elapsed().as_secs_f64();
    let lambda = shard_pass("lambda", Some(&eig));
    let t = Instant::now();
    let merged = merge_fit(&[part("lambda", 0), part("lambda", 1)]).unwrap();
    let merge2 = t.elapsed().as_secs_f64();
    assert!(matches!(merged, MergedFit::Factors { .. }));
    let sharded = cov + merge1 + lambda + merge2;

    // Trace: 8 queries, top 10, one 1-core task vs two 1-core shards + merge.
    let topts = |shard| TraceOptions {
        windows: windows(shard),
        ..Default::default()
    };
    let t = Instant::now();
    on(1, || {
        tda_trace::trace(
            &m.model,
            &m.tokenizer,
            &factors,
            &queries(),
            &source,
            &topts(Shard::ALL),
            &mut |_, _| {},
        )
    })
    .unwrap();
    let trace_one = t.elapsed().as_secs_f64();
    let tpart = |i: usize| dir.path().join(format!("trace-{i}.parquet"));
    let trace_two = two_shards(|i| {
        let m = load();
        let o = topts(Shard { index: i, count: 2 });
        trace_shard(
            &m.model,
            &m.tokenizer,
            &factors,
            "f",
            &fp,
            &queries(),
            &source,
            &o,
            &tpart(i),
            &mut |_, _| {},
        )
        .unwrap();
    });
    let t = Instant::now();
    merge_trace(&[tpart(0), tpart(1)], None).unwrap();
    let trace_merge = t.elapsed().as_secs_f64();

    println!(
        "sharded jobs on this 2-core machine (GPT-2 fixture, 400 biographies, EK-FAC, true Fisher)"
    );
    println!("| job | one task, 1 core (s) | 2 shards at once, 1 core each, + merges (s) | speed-up | merges / job |");
    println!("|---|---|---|---|---|");
    println!(
        "| fit (covariance pass, eigenbases, Λ pass) | {one:.1} | {sharded:.1} (passes {cov:.1} + {lambda:.1}, merges {merge1:.3} + {merge2:.3}) | {:.2}× | {:.1} % |",
        one / sharded,
        100.0 * (merge1 + merge2) / sharded
    );
    println!(
        "| trace (8 queries, top 10) | {trace_one:.1} | {:.1} (shards {trace_two:.1}, merge {trace_merge:.3}) | {:.2}× | {:.1} % |",
        trace_two + trace_merge,
        trace_one / (trace_two + trace_merge),
        100.0 * trace_merge / (trace_two + trace_merge)
    );
    println!(
        "reference: the unsharded fit as one process on both cores (rayon): {one_two_cores:.1} s ({:.2}× the 1-core task)",
        one / one_two_cores
    );
}
