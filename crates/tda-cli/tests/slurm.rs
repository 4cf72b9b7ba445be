//! Sharded fit and trace through a real Slurm (the one-node cluster of
//! `deploy/slurm/local-cluster.sh`), submitted by the project's own `deploy/slurm/fit.sh` and
//! `trace.sh` as array jobs chained to their merges, against the single-process run on the demo
//! corpus (`synth-corpus`, 400 documents) and the tiny GPT-2 fixture.
//!
//! Without a cluster the tests say SKIPPED and pass, except under CI (`CI` set) or with
//! `TDA_SLURM_TEST=1`, where a missing cluster is a failure: `.ci/run` starts it first.
//!
//! Tolerances (why sharded ≠ bit-for-bit): a merge adds the shards' f64 sums in another order,
//! and a shard's batches hold other windows, so taps and sums differ at rounding level. Factors:
//! eigenvalues and the reconstructed A, S to 1e-4 of their largest entry, Λ to 1e-3; scores to
//! 1e-4 of the largest |score|, the same ranking. A killed and resubmitted shard gives
//! bit-for-bit the factors of the uninterrupted sharded run (the same shards, the same sums).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fails, fixture, ok, p, repo, scratch};

fn slurm_up() -> bool {
    Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("idle"))
        .unwrap_or(false)
}

/// Whether to run: a cluster answers; without one, skip (and fail under CI).
fn require_slurm() -> bool {
    if slurm_up() {
        return true;
    }
    if std::env::var_os("CI").is_some() || std::env::var_os("TDA_SLURM_TEST").is_some() {
        panic!("no idle Slurm node answers `sinfo`: run `deploy/slurm/local-cluster.sh` (as root) first (.ci/run does)");
    }
    eprintln!("SKIPPED: no Slurm cluster (run deploy/slurm/local-cluster.sh to run these tests)");
    false
}

/// Runs `deploy/slurm/<script>` with `env`; returns its stdout (`name=jobid` lines).
fn submit(script: &str, env: &[(&str, &str)]) -> String {
    let mut c = Command::new("bash");
    c.arg(repo(&format!("deploy/slurm/{script}")));
    c.env("TDA", env!("CARGO_BIN_EXE_tda")).env("POLL", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "{script} failed:\n{out}\n{err}");
    out
}

fn job_id(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {out}"))
        .trim()
        .to_string()
}

struct World {
    dir: PathBuf,
    model: PathBuf,
    corpus: PathBuf,
    queries: PathBuf,
    factors: PathBuf,
    trace: serde_json::Value,
}

fn world() -> World {
    let dir = scratch();
    let model = fixture("gpt2");
    let corpus = dir.join("corpus.jsonl");
    ok(["synth-corpus", "--docs", "400", "--out", p(&corpus)]);
    let queries = dir.join("queries.jsonl");
    std::fs::write(
        &queries,
        [
            r#"{"id":"q0","prompt":"Kadoum Larol was born in","completion":" Greywater"}"#,
            r#"{"id":"q1","prompt":"Stozo works as a","completion":" ferry pilot"}"#,
            r#"{"id":"q2","prompt":"The favourite colour of Sedum Zaisim is","completion":" orange"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let factors = dir.join("factors");
    ok([
        "fit",
        "--model",
        p(&model),
        "--corpus",
        p(&corpus),
        "--out",
        p(&factors),
    ]);
    let trace = serde_json::from_str(&ok(trace_args(&model, &factors, &corpus, &queries))).unwrap();
    World {
        dir,
        model,
        corpus,
        queries,
        factors,
        trace,
    }
}

fn trace_args(model: &Path, factors: &Path, corpus: &Path, queries: &Path) -> Vec<&'static str> {
    vec![
        "trace",
        "--model",
        p(model),
        "--factors",
        p(factors),
        "--corpus",
        p(corpus),
        "--queries",
        p(queries),
        "--top-k",
        "20",
        "--json",
    ]
}

fn max_abs(v: impl Iterator<Item = f64>) -> f64 {
    v.fold(0.0, |m, x| m.max(x.abs()))
}

/// `Q diag(λ) Qᵀ` per block, f64.
fn reconstruct(b: &tda_curvature::Eigenbasis) -> Vec<f64> {
    let mut out = vec![];
    for (&(off, s), q) in b.blocks.iter().zip(&b.vecs) {
        for i in 0..s {
            for j in 0..s {
                out.push(
                    (0..s)
                        .map(|c| q[i * s + c] as f64 * b.vals[off + c] as f64 * q[j * s + c] as f64)
                        .sum(),
                );
            }
        }
    }
    out
}

/// The largest relative differences (eigen/covariance, Λ) of two factor folders; asserts the
/// tolerances of the module doc.
fn compare_factors(a: &Path, b: &Path) -> (f64, f64) {
    let load =
        |d: &Path| tda_curvature::storage::load(&d.join("factors.safetensors"), None).unwrap();
    let (fa, fb) = (load(a), load(b));
    assert_eq!(
        (
            fa.tokens,
            fa.covariance_sequences,
            fa.lambda_sequences,
            fa.loss_targets
        ),
        (
            fb.tokens,
            fb.covariance_sequences,
            fb.lambda_sequences,
            fb.loss_targets
        )
    );
    assert_eq!(fa.specs(), fb.specs());
    let (mut cov, mut lam) = (0.0f64, 0.0f64);
    for (la, lb) in fa.layers.iter().zip(&fb.layers) {
        for (x, y) in [(&la.a_basis, &lb.a_basis), (&la.s_basis, &lb.s_basis)] {
            let (x, y) = (x.as_ref().unwrap(), y.as_ref().unwrap());
            let top = max_abs(x.vals.iter().map(|&v| v as f64));
            cov = cov.max(max_abs(x.vals.iter().zip(&y.vals).map(|(p, q)| (p - q) as f64)) / top);
            let (rx, ry) = (reconstruct(x), reconstruct(y));
            let top = max_abs(rx.iter().copied());
            cov = cov.max(max_abs(rx.iter().zip(&ry).map(|(p, q)| p - q)) / top);
        }
        let (x, y) = (la.lambda.as_ref().unwrap(), lb.lambda.as_ref().unwrap());
        let top = max_abs(x.iter().map(|&v| v as f64));
        lam = lam.max(max_abs(x.iter().zip(y).map(|(p, q)| (p - q) as f64)) / top);
    }
    assert!(cov <= 1e-4, "A/S differ by {cov:e} of their largest entry");
    assert!(lam <= 1e-3, "Λ differs by {lam:e} of its largest entry");
    (cov, lam)
}

/// The largest score difference relative to the largest |score|; asserts the same ranking.
fn compare_traces(a: &serde_json::Value, b: &serde_json::Value) -> f64 {
    let (qa, qb) = (
        a["queries"].as_array().unwrap(),
        b["queries"].as_array().unwrap(),
    );
    assert_eq!(qa.len(), qb.len());
    let mut worst = 0.0f64;
    for (x, y) in qa.iter().zip(qb) {
        assert_eq!(x["id"], y["id"]);
        assert_eq!(
            x["value"], y["value"],
            "the same query values in every shard"
        );
        let (rx, ry) = (
            x["results"].as_array().unwrap(),
            y["results"].as_array().unwrap(),
        );
        assert_eq!(rx.len(), ry.len());
        let top = max_abs(ry.iter().map(|r| r["score"].as_f64().unwrap()));
        for (r, s) in rx.iter().zip(ry) {
            assert_eq!(
                (&r["rank"], &r["doc_id"], &r["window"]),
                (&s["rank"], &s["doc_id"], &s["window"])
            );
            let d = (r["score"].as_f64().unwrap() - s["score"].as_f64().unwrap()).abs() / top;
            worst = worst.max(d);
        }
    }
    assert!(worst <= 1e-4, "scores differ by {worst:e} of the largest");
    worst
}

#[test]
fn sharded_fit_and_trace_through_slurm_equal_the_single_process_run() {
    if !require_slurm() {
        return;
    }
    let w = world();
    for n in ["4", "7"] {
        let t = Instant::now();
        let out = w.dir.join(format!("fit-{n}"));
        submit(
            "fit.sh",
            &[
                ("MODEL", p(&w.model)),
                ("CORPUS", p(&w.corpus)),
                ("OUT_DIR", p(&out)),
                ("N", n),
                ("WAIT", "1"),
            ],
        );
        let (cov, lam) = compare_factors(&out.join("factors"), &w.factors);
        eprintln!("fit over {n} Slurm shards ({:.0} s): A/S within {cov:.1e}, Λ within {lam:.1e} of the single-process fit", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let out = w.dir.join(format!("trace-{n}"));
        submit(
            "trace.sh",
            &[
                ("MODEL", p(&w.model)),
                ("FACTORS", p(&w.factors)),
                ("CORPUS", p(&w.corpus)),
                ("QUERIES", p(&w.queries)),
                ("OUT_DIR", p(&out)),
                ("N", n),
                ("TOP_K", "20"),
                ("WAIT", "1"),
            ],
        );
        let merged: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        let d = compare_traces(&merged, &w.trace);
        assert_eq!(
            merged["report"]["corpus"], w.trace["report"]["corpus"],
            "the shards' stats add up"
        );
        assert!(out.join("results.parquet").is_file());
        eprintln!("trace over {n} Slurm shards ({:.0} s): same top-20 of 3 queries, scores within {d:.1e}", t.elapsed().as_secs_f64());
    }
}

/// The array tasks of job `id` as `(task, state)`.
fn tasks(id: &str) -> Vec<(String, String)> {
    let o = Command::new("squeue")
        .args(["-h", "-r", "-t", "all", "-j", id, "-o", "%i %T"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_killed_shard_is_resubmitted_and_the_merge_stays_exact() {
    if !require_slurm() {
        return;
    }
    let w = world();
    let env = |out: &Path, tda: &Path| -> Vec<(&'static str, &'static str)> {
        vec![
            ("MODEL", p(&w.model)),
            ("CORPUS", p(&w.corpus)),
            ("OUT_DIR", p(out)),
            ("N", "4"),
            ("STRATEGY", "kfac"),
            ("TDA", p(tda)),
        ]
    };
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tda"));
    // The uninterrupted sharded run.
    let clean = w.dir.join("clean");
    submit("fit.sh", &[env(&clean, &bin), vec![("WAIT", "1")]].concat());
    // The same, with shard 2 held (sleeping) until it is cancelled.
    let slow = w.dir.join("slow-tda");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\ncase \"$*\" in *'--shard 2/4'*) sleep 300;; esac\nexec {} \"$@\"\n",
            bin.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .args(["+x", p(&slow)])
        .status()
        .unwrap();
    let out = w.dir.join("killed");
    let jobs = submit("fit.sh", &env(&out, &slow));
    let (cov, merge) = (job_id(&jobs, "cov"), job_id(&jobs, "cov_merge"));
    let task2 = format!("{cov}_2");
    wait_for("shard 2 to run", || {
        tasks(&cov)
            .iter()
            .any(|(t, s)| *t == task2 && s == "RUNNING")
    });
    assert!(Command::new("scancel")
        .arg(&task2)
        .status()
        .unwrap()
        .success());
    // The other shards finish; the merge never runs (afterok is not satisfied) and is removed.
    let parts = out.join("parts");
    wait_for("shards 0, 1, 3", || {
        (0..4)
            .filter(|i| parts.join(format!("cov-{i}.part")).exists())
            .count()
            == 3
    });
    wait_for("the merge to be cancelled", || {
        tasks(&merge)
            .iter()
            .all(|(_, s)| s != "PENDING" && s != "RUNNING")
    });
    assert!(
        !parts.join("cov-2.part").exists(),
        "a killed shard leaves no partial"
    );
    assert!(!out.join("factors").exists(), "no merge without all shards");
    let leftovers: Vec<_> = std::fs::read_dir(&parts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let merged_dir = w.dir.join("merged-by-hand");
    let glob: Vec<&str> = (0..4)
        .map(|i| parts.join(format!("cov-{i}.part")))
        .filter(|p| p.exists())
        .map(|x| p(&x))
        .collect();
    fails(
        [vec!["merge"], glob, vec!["--out", p(&merged_dir)]].concat(),
        &["missing shard 2 of 4"],
        &[&merged_dir],
    );
    // Resubmitted: only the missing shard runs, then the merge.
    submit(
        "fit.sh",
        &[env(&out, &bin), vec![("WAIT", "1"), ("RESUME", "1")]].concat(),
    );
    let a = std::fs::read(out.join("factors/factors.safetensors")).unwrap();
    let b = std::fs::read(clean.join("factors/factors.safetensors")).unwrap();
    assert!(
        a == b,
        "the resubmitted run's factors are bit-for-bit the uninterrupted run's"
    );
    // A duplicate or a stale partial is refused.
    let part = |i: usize| parts.join(format!("cov-{i}.part"));
    let all: Vec<&str> = (0..4).map(|i| p(&part(i))).collect();
    let copy = parts.join("copy-of-1.part");
    std::fs::copy(part(1), &copy).unwrap();
    fails(
        [
            vec!["merge"],
            all.clone(),
            vec![p(&copy), "--out", p(&merged_dir)],
        ]
        .concat(),
        &["are both shard 1/4", "never counted twice"],
        &[&merged_dir],
    );
    let stale = parts.join("stale-1.part");
    ok([
        "fit",
        "--model",
        p(&w.model),
        "--corpus",
        p(&w.corpus),
        "--strategy",
        "kfac",
        "--seed",
        "7",
        "--shard",
        "1/4",
        "--out",
        p(&stale),
    ]);
    fails(
        [
            "merge",
            all[0],
            p(&stale),
            all[2],
            all[3],
            "--out",
            p(&merged_dir),
        ],
        &["stale partial", "fisher"],
        &[&merged_dir],
    );
}
