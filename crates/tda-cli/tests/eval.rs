//! `tda eval` end to end on micro models: what each command prints and writes, the bank's
//! cache, and its refusals. The full-size evaluations are benches (see benches/quality.md).

mod common;

use common::{fails, ok, p, run, scratch};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A model recipe that trains in well under a second.
const MICRO: &str = include_str!("../../../configs/micro.toml");

#[test]
fn eval_lds_bank_is_cached_and_checked() {
    let r = scratch();
    let recipe = r.join("micro.toml");
    std::fs::write(&recipe, MICRO).unwrap();
    let (corpus, queries) = (r.join("bios.jsonl"), r.join("facts.jsonl"));
    ok([
        "synth-corpus",
        "--out",
        p(&corpus),
        "--docs",
        "16",
        "--queries",
        p(&queries),
        "--n-queries",
        "4",
    ]);
    let bank = r.join("bank");
    let out = r.join("lds.json");
    let args = |extra: &[&'static str]| {
        let mut v = vec![
            "eval",
            "lds",
            "--corpus",
            p(&corpus),
            "--queries",
            p(&queries),
            "--bank",
            p(&bank),
            "--config",
            p(&recipe),
            "--models",
            "3",
            "--resamples",
            "50",
            "--methods",
            "ekfac,identity+cosine,bm25",
        ];
        v.extend_from_slice(extra);
        v
    };
    let first = run(args(&["--json", "--out", p(&out)]));
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert!(first.stderr.contains("(4 trained now"), "{}", first.stderr);
    let v = json(&first.stdout);
    assert_eq!(v["eval"], "lds");
    assert_eq!(v["models"], 3);
    assert_eq!(v["documents"], 16);
    assert_eq!(v["settings"]["regime"], "random");
    let rows = v["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(names, ["ekfac", "identity+cosine", "bm25"]);
    for row in rows {
        assert_eq!(row["per_query"].as_array().unwrap().len(), 4);
        if let (Some(l), Some(lo), Some(hi)) = (
            row["lds"].as_f64(),
            row["ci95"][0].as_f64(),
            row["ci95"][1].as_f64(),
        ) {
            assert!((-1.0..=1.0).contains(&l) && lo <= hi, "{row}");
        }
    }
    assert_eq!(
        json(&std::fs::read_to_string(&out).unwrap()),
        v,
        "--out holds the printed JSON"
    );
    assert_eq!(v["bank_std"].as_array().unwrap().len(), 4);

    // Again: nothing retrained, the same numbers; the table names every method.
    let again = run(args(&[]));
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(again.stderr.contains("(0 trained now"), "{}", again.stderr);
    for m in ["ekfac", "identity+cosine", "bm25", "95 % CI"] {
        assert!(again.stdout.contains(m), "{}", again.stdout);
    }

    // The same bank folder with other settings is refused, nothing touched.
    fails(
        args(&["--seed", "1"]),
        &[p(&bank), "other bank settings"],
        &[],
    );
    let other = r.join("other.toml");
    std::fs::write(&other, MICRO.replace("steps = 8", "steps = 9")).unwrap();
    let mut v = args(&[]);
    v[9] = p(&other);
    fails(v, &[p(&bank), "another training recipe"], &[]);
    // Bad flags: one line naming the flag.
    fails(args(&["--fraction", "1.5"]), &["--fraction"], &[]);
    fails(
        args(&["--methods", "ekfac+nope"]),
        &["--methods", "unknown method"],
        &[],
    );
    let mut v = args(&[]);
    v[11] = "1";
    fails(v, &["--models", "1"], &[]);
    fails(args(&["--out", p(&bank)]), &[p(&bank), "is a folder"], &[]);

    // Checkpoint and seed ensembles: the run again with checkpoints, and with the next seed
    // (both cached in the bank), one row per influence method each.
    let ck = json(&ok(args(&[
        "--checkpoints",
        "2",
        "--seed-ensemble",
        "2",
        "--json",
    ])));
    let names: Vec<String> = ck["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let m = r["method"].as_str().unwrap();
            match (r["ensemble"].as_u64(), r["seeds"].as_u64()) {
                (Some(k), _) => format!("{m}+ckpt{k}"),
                (None, Some(k)) => format!("{m}+seeds{k}"),
                (None, None) => m.to_string(),
            }
        })
        .collect();
    assert_eq!(
        names,
        [
            "ekfac",
            "identity+cosine",
            "bm25",
            "ekfac+ckpt2",
            "identity+cosine+ckpt2",
            "ekfac+seeds2",
            "identity+cosine+seeds2"
        ]
    );
    assert!(bank
        .join("full-checkpoints-2/checkpoints/step-000004")
        .is_dir());
    assert!(bank.join("full-seed-1/model.safetensors").is_file());
    for r in ck["rows"].as_array().unwrap() {
        assert_eq!(r["per_query"].as_array().unwrap().len(), 4, "{r}");
        if let Some(l) = r["lds"].as_f64() {
            assert!((-1.0..=1.0).contains(&l), "{r}");
        }
    }

    // The fixed-order regime: its own bank, one example per document.
    let fixed = r.join("fixed");
    let mut v = args(&["--regime", "fixed-order", "--fraction", "0.9", "--json"]);
    v[7] = p(&fixed);
    let f = json(&ok(v));
    assert_eq!(f["settings"]["regime"], "fixed-order");
    assert_eq!(
        f["fraction"],
        14.0 / 16.0,
        "round(0.9 · 16) = 14 documents kept"
    );
}

#[test]
fn eval_fact_tracing_and_tail_patch() {
    let r = scratch();
    let recipe = r.join("micro.toml");
    std::fs::write(&recipe, MICRO).unwrap();
    let work = r.join("facts");
    let base = |cmd: &'static str, extra: &[&'static str]| {
        let mut v = vec![
            "eval",
            cmd,
            "--work",
            p(&work),
            "--config",
            p(&recipe),
            "--people",
            "9",
            "--methods",
            "ekfac,bm25",
            "--prefilter",
            "5",
            "--json",
        ];
        v.extend_from_slice(extra);
        v
    };
    let f = json(&ok(base("fact-tracing", &[])));
    assert_eq!(f["eval"], "fact-tracing");
    assert_eq!(f["queries"], 18, "two queries per person");
    let rows = f["rows"].as_array().unwrap();
    let find = |m: &str, s: &str| {
        rows.iter()
            .find(|r| r["method"] == m && r["stratum"] == s)
            .unwrap_or_else(|| panic!("no row {m} {s}"))
    };
    for m in ["ekfac", "bm25", "bm25@5→ekfac"] {
        for s in [
            "all",
            "same-template",
            "paraphrase",
            "stated-by-1",
            "stated-by-2",
            "stated-by-3",
        ] {
            let row = find(m, s);
            let mrr = row["mrr"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&mrr), "{row}");
            assert!(
                row["recall_at_10"].as_f64().unwrap() >= mrr - 1e-12 || mrr > 0.1,
                "{row}"
            );
        }
    }
    assert_eq!(find("bm25", "all")["queries"], 18);
    // The world is written for the user: queries with their truth, as `tda trace --queries` reads them.
    let q = std::fs::read_to_string(work.join("queries.jsonl")).unwrap();
    let first = json(q.lines().next().unwrap());
    assert!(first["prompt"].is_string() && first["truth"].as_array().unwrap().len() == 1);

    let t = json(&ok(base("tail-patch", &["--top-k", "2"])));
    assert_eq!(t["eval"], "tail-patch");
    let names: Vec<&str> = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ekfac", "bm25", "bm25@5→ekfac", "random"]);
    for row in t["rows"].as_array().unwrap() {
        assert!(row["mean_delta"].as_f64().unwrap().is_finite(), "{row}");
    }
    // Another world in the same folder: refused, the folder's world kept.
    let before = std::fs::read(work.join("corpus.jsonl")).unwrap();
    let mut v = base("fact-tracing", &[]);
    v[7] = "10";
    fails(v, &[p(&work), "--people"], &[]);
    assert_eq!(std::fs::read(work.join("corpus.jsonl")).unwrap(), before);
}

#[test]
fn eval_cite_and_curation() {
    let c = json(&ok([
        "eval",
        "cite",
        "--model",
        p(&common::fixture("rag")),
        "--examples",
        "3",
        "--methods",
        "loo,mirage",
        "--json",
    ]));
    assert_eq!(c["eval"], "cite");
    let names: Vec<&str> = c["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "lexical overlap (ties cited)",
            "lexical overlap, first of ties",
            "loo",
            "mirage"
        ]
    );
    let loo = &c["rows"][2];
    assert!(loo["all"]["f1"].as_f64().unwrap() >= 0.0);
    assert_eq!(loo["faithfulness"].as_array().unwrap().len(), 4);
    // leave-one-out: n + 2 forwards per answer (4 or 5 documents).
    let fwd = loo["cost"][0].as_f64().unwrap();
    assert!((6.0..=7.0).contains(&fwd), "{loo}");
    fails(
        [
            "eval",
            "cite",
            "--model",
            p(&common::fixture("rag")),
            "--methods",
            "bm25",
        ],
        &["--methods", "bm25"],
        &[],
    );

    let r = scratch();
    let recipe = r.join("micro.toml");
    std::fs::write(&recipe, MICRO).unwrap();
    let work = r.join("cur");
    let cur = json(&ok([
        "eval",
        "curation",
        "--work",
        p(&work),
        "--config",
        p(&recipe),
        "--people",
        "10",
        "--seeds",
        "1",
        "--json",
    ]));
    assert_eq!(
        cur["documents"][0], 10,
        "10 biographies, 1 of them shuffled (swaps add documents)"
    );
    let rows = cur["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let all = row["all"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&all), "{row}");
    }
}

#[test]
fn eval_selection_against_random() {
    let r = scratch();
    let work = r.join("sel");
    let s = json(&ok([
        "eval",
        "selection",
        "--work",
        p(&work),
        "--seeds",
        "1",
        "--base-steps",
        "5",
        "--projection-dim",
        "256",
        "--json",
    ]));
    assert_eq!(s["eval"], "selection");
    assert_eq!(s["selected"], 20, "5 % of a 400-document pool");
    let rows = s["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["arm"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "base (no fine-tuning)",
            "all",
            "random 5%",
            "ekfac 5%",
            "grad-cosine 5%",
            "repsim 5%",
            "bm25 5%"
        ]
    );
    assert!(rows[0]["qa_fraction"].is_null());
    assert_eq!(rows[2]["minus_random"][0], 0.0);
    for row in &rows[1..] {
        let qa = row["qa_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&qa), "{row}");
        assert!(row["target_nll"][0].as_f64().unwrap().is_finite(), "{row}");
    }
    // BM25 matches the targets' question words: the QA documents.
    assert!(
        rows[6]["qa_fraction"].as_f64().unwrap() > 0.5,
        "{}",
        rows[6]
    );
    assert!(work.join("pool-0.jsonl").exists());
    fails(
        ["eval", "selection", "--work", p(&work), "--pct", "0"],
        &["--pct"],
        &[],
    );
}
