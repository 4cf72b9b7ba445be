//! Every subcommand end to end through the binary, on the tiny fixtures: what it writes and
//! prints, and that the same command twice gives bit-identical scores (also across thread
//! counts).

mod common;

use common::{fails, fixture, leak, ok, p, repo, run, run_env, scratch, world};
use std::path::Path;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The ranked `(doc_id, window, score)` of every query of a `tda trace --json` output.
fn ranking(out: &serde_json::Value) -> Vec<(String, u64, f64)> {
    out["queries"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|q| q["results"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["doc_id"].as_str().unwrap().to_string(),
                r["window"].as_u64().unwrap(),
                r["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn trace_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let w = world();
    let mut v = vec![
        "trace",
        "--model",
        p(&w.model),
        "--factors",
        p(&w.factors),
        "--corpus",
        p(&w.corpus),
        "--json",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn synth_corpus_index_and_search() {
    let w = world();
    let lines = std::fs::read_to_string(&w.corpus).unwrap();
    assert_eq!(lines.lines().count(), 40);
    let hits = json(&ok([
        "search",
        "--index",
        p(&w.index),
        "--query",
        "born in",
        "--top-k",
        "3",
        "--json",
    ]));
    let first = hits
        .as_array()
        .map(|a| a[0].clone())
        .unwrap_or(hits.clone());
    assert!(
        first.to_string().contains("born"),
        "search should return a biography: {hits}"
    );
    // --add indexes a new file only.
    let dir = scratch();
    let extra = dir.join("more.jsonl");
    std::fs::write(
        &extra,
        "{\"id\": \"x1\", \"text\": \"Zorblat moved to Quenzia.\"}\n",
    )
    .unwrap();
    let idx = dir.join("index");
    ok([
        "index",
        "--corpus",
        p(&w.corpus),
        "--index",
        p(&idx),
        "--quiet",
    ]);
    let r = run([
        "index",
        "--corpus",
        p(&w.corpus),
        p(&extra),
        "--index",
        p(&idx),
        "--add",
        "--quiet",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let hits = ok(["search", "--index", p(&idx), "--query", "Zorblat", "--json"]);
    assert!(hits.contains("x1"), "{hits}");
}

#[test]
fn fit_reports_what_it_read() {
    let w = world();
    let dir = scratch();
    let corpus = dir.join("c.jsonl");
    let mut text = std::fs::read_to_string(&w.corpus).unwrap();
    text.push_str("{\"text\": \"\"}\nnot json\n");
    std::fs::write(&corpus, text).unwrap();
    let out = dir.join("f");
    let r = run([
        "fit",
        "--model",
        p(&w.model),
        "--corpus",
        p(&corpus),
        "--out",
        p(&out),
        "--strategy",
        "kfac",
        "--json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let report = json(&r.stdout);
    assert_eq!(report["corpus"]["documents"], 40);
    assert_eq!(report["corpus"]["skipped"]["empty"], 1);
    assert_eq!(report["corpus"]["skipped"]["bad_json"], 1);
    assert!(
        r.stderr
            .contains("40 documents, 2 records skipped (empty 1, bad JSON 1)"),
        "{}",
        r.stderr
    );
    assert!(out.join("factors.safetensors").is_file() && out.join("fit.json").is_file());
}

#[test]
fn trace_ranks_documents_and_writes_parquet() {
    let dir = scratch();
    let parquet = dir.join("scores.parquet");
    let r = run(trace_args(&[
        "--prompt",
        "Mira Tolven was born in",
        "--completion",
        " Kestrel Bay",
        "--top-k",
        "5",
        "--per-token",
        "--per-layer",
        "--out",
        p(&parquet),
    ]));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let out = json(&r.stdout);
    let rows = ranking(&out);
    assert_eq!(rows.len(), 5);
    assert!(
        rows.windows(2).all(|x| x[0].2 >= x[1].2),
        "sorted: {rows:?}"
    );
    let first = &out["queries"][0]["results"][0];
    let per_layer: f64 = first["per_layer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["score"].as_f64().unwrap())
        .sum();
    let score = first["score"].as_f64().unwrap();
    assert!((per_layer - score).abs() <= 1e-6 * score.abs().max(1.0));
    assert!(out["report"]["corpus"]["windows"].as_u64().unwrap() >= 40);
    let bytes = std::fs::read(&parquet).unwrap();
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
    // `--damping heuristic:S` scales the default heuristic: 0.1 is the default itself, and a
    // larger λ scores differently.
    let q = [
        "--prompt",
        "Mira Tolven was born in",
        "--completion",
        " Kestrel Bay",
    ];
    let with = |d: &'static str| {
        let mut a = q.to_vec();
        a.extend(["--damping", d]);
        ranking(&json(&ok(trace_args(&a))))
    };
    let default = ranking(&json(&ok(trace_args(&q))));
    assert_eq!(with("heuristic:0.1"), default);
    assert_ne!(with("heuristic:10"), default);
}

#[test]
fn trace_queries_file_index_and_relabel() {
    let w = world();
    let dir = scratch();
    let queries = dir.join("q.jsonl");
    std::fs::write(
        &queries,
        "{\"id\": \"a\", \"prompt\": \"Mira Tolven was born in\", \"completion\": \" Kestrel Bay\"}\n\n{\"prompt\": \"The\", \"completion\": \" city\"}\n",
    )
    .unwrap();
    let all = json(&ok(trace_args(&[
        "--queries",
        p(&queries),
        "--top-k",
        "all",
    ])));
    assert_eq!(all["queries"].as_array().unwrap().len(), 2);
    assert_eq!(all["queries"][1]["id"], "q1");
    // Through the prefilter: only retrieved documents are scored, with the same scores.
    let pre = json(&ok(trace_args(&[
        "--queries",
        p(&queries),
        "--index",
        p(&w.index),
        "--candidates",
        "3",
        "--top-k",
        "all",
    ])));
    let full: std::collections::HashMap<(String, u64), f64> = ranking(
        &all["queries"][0]
            .as_object()
            .map(|_| serde_json::json!({"queries": [all["queries"][0].clone()]}))
            .unwrap(),
    )
    .into_iter()
    .map(|(d, win, s)| ((d, win), s))
    .collect();
    let pre0 = ranking(&serde_json::json!({"queries": [pre["queries"][0].clone()]}));
    assert!(!pre0.is_empty() && pre0.len() < full.len());
    for (d, win, s) in pre0 {
        let want = full[&(d.clone(), win)];
        assert!(
            (s - want).abs() <= 1e-9 * want.abs().max(1e-12),
            "{d}: {s} vs {want}"
        );
    }
    let rows = dir.join("rows.jsonl");
    std::fs::write(
        &rows,
        "{\"prompt\": \"Mira Tolven was born in\", \"original\": \" Kestrel Bay\", \"replacement\": \" Tarn\"}\n",
    )
    .unwrap();
    let rel = json(&ok([
        "trace",
        "--model",
        p(&w.model),
        "--factors",
        p(&w.factors),
        "--queries",
        p(&queries),
        "--relabel",
        p(&rows),
        "--json",
    ]));
    assert_eq!(rel[0]["scores"].as_array().unwrap().len(), 2);
    assert!(rel[0]["scores"][0]["score"].as_f64().unwrap().is_finite());
}

/// `--save-queries` while tracing one corpus, `--queries-from` on another: the same ranking and
/// scores as measuring the queries again on it; the saved file is refused with other queries'
/// flags or a file that is not one.
#[test]
fn saved_queries_trace_new_corpora() {
    let w = world();
    let dir = scratch();
    let queries = dir.join("q.jsonl");
    std::fs::write(
        &queries,
        "{\"id\": \"a\", \"prompt\": \"Mira Tolven was born in\", \"completion\": \" Kestrel Bay\"}\n{\"prompt\": \"The\", \"completion\": \" city\"}\n",
    )
    .unwrap();
    let saved = dir.join("targets.q");
    ok(trace_args(&[
        "--queries",
        p(&queries),
        "--save-queries",
        p(&saved),
    ]));
    assert!(saved.is_file());
    // A new shard: the corpus's first half.
    let text = std::fs::read_to_string(&w.corpus).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let shard = dir.join("shard.jsonl");
    std::fs::write(&shard, lines[..lines.len() / 2].join("\n") + "\n").unwrap();
    let args = |extra: &[&'static str]| {
        let mut v = vec!["trace", "--model", p(&w.model), "--factors", p(&w.factors)];
        v.extend(["--corpus", p(&shard), "--top-k", "all", "--json"]);
        v.extend_from_slice(extra);
        v
    };
    let fresh = json(&ok(args(&["--queries", p(&queries)])));
    let reused = json(&ok(args(&["--queries-from", p(&saved)])));
    assert_eq!(ranking(&fresh), ranking(&reused));
    assert!(!ranking(&fresh).is_empty());
    for q in 0..2 {
        assert_eq!(fresh["queries"][q]["id"], reused["queries"][q]["id"]);
        assert_eq!(fresh["queries"][q]["value"], reused["queries"][q]["value"]);
    }
    let kept = &reused["report"]["query_rank_kept"];
    assert!(kept.as_array().is_some_and(|k| !k.is_empty()), "{kept}");
    fails(
        args(&["--queries-from", p(&saved), "--queries", p(&queries)]),
        &["--queries"],
        &[],
    );
    fails(
        args(&["--queries-from", p(&saved), "--damping", "1e-3"]),
        &["--damping"],
        &[],
    );
    fails(args(&["--queries-from", p(&queries)]), &["q.jsonl"], &[]);
}

/// `--compute-on device` (A, S, Λ and the candidate contraction as tensor operations on the
/// model's device; on the CPU that is burn-flex) fits factors and traces scores equal to the host
/// path's: same ranking, scores within 1e-4 of the largest (f32 sums in another order).
#[test]
fn compute_on_device_fits_and_traces_like_the_host() {
    let w = world();
    let dir = scratch();
    let factors = dir.join("factors");
    ok([
        "fit",
        "--model",
        p(&w.model),
        "--corpus",
        p(&w.corpus),
        "--out",
        p(&factors),
        "--compute-on",
        "device",
    ]);
    let args = |factors: &Path, on: &'static str| {
        let mut v = vec!["trace", "--model", p(&w.model), "--factors", p(factors)];
        v.extend([
            "--corpus",
            p(&w.corpus),
            "--prompt",
            "Mira Tolven was born in",
        ]);
        v.extend(["--completion", " Kestrel Bay", "--top-k", "all", "--json"]);
        v.extend(["--compute-on", on]);
        v
    };
    let host = ranking(&json(&ok(args(&w.factors, "host"))));
    let scale = host.iter().fold(0f64, |s, r| s.max(r.2.abs()));
    assert!(host.len() > 10 && scale > 0.0);
    for on in ["host", "device"] {
        for f in [&w.factors, &factors] {
            let got = ranking(&json(&ok(args(f, on))));
            assert_eq!(got.len(), host.len());
            for (x, y) in host.iter().zip(&got) {
                assert!(
                    (x.2 - y.2).abs() <= 1e-4 * scale,
                    "{on} {f:?}: {x:?} vs {y:?}"
                );
            }
        }
    }
    let mut bad = args(&w.factors, "device");
    bad.extend(["--normalization", "cosine"]);
    fails(bad, &["--normalize", "--compute-on host"], &[]);
    fails(
        args(&w.factors, "gpu"),
        &["--compute-on", "host or device"],
        &[],
    );
}

/// `--dtype bf16|f16`: fit and trace with the model held in half precision rank the documents as
/// the f32 run does: for GPT-2 (f32 weights converted on load) and Qwen2 (bf16 weights taken as
/// stored). The taps pass through half-precision activations, so scores differ by rounding, not by
/// 1e-4: Spearman over every document ≥ 0.97 (observed 0.993 bf16 and 0.999 f16 for GPT-2, 0.996
/// for Qwen2; these fixtures' large random weights amplify rounding), and the same top document. A bad dtype is a
/// one-line error.
#[test]
fn half_precision_fits_and_traces_like_f32() {
    let w = world();
    let dir = scratch();
    for (model, dtype) in [
        (fixture("gpt2"), "bf16"),
        (fixture("gpt2"), "f16"),
        (fixture("qwen2"), "bf16"),
    ] {
        let scores = |dtype: &'static str| {
            let name = model.file_name().unwrap().to_string_lossy();
            let factors = dir.join(format!("{name}-{dtype}"));
            let (m, c, f) = (p(&model), p(&w.corpus), p(&factors));
            if !factors.exists() {
                ok([
                    "fit", "--model", m, "--corpus", c, "--out", f, "--dtype", dtype,
                ]);
            }
            let mut v = vec!["trace", "--model", m, "--factors", f, "--corpus", c];
            v.extend([
                "--prompt",
                "Mira Tolven was born in",
                "--completion",
                " Kestrel Bay",
            ]);
            v.extend(["--top-k", "all", "--json", "--dtype", dtype]);
            let out = json(&ok(v));
            assert_eq!(
                out["report"]["model_dtype"], dtype,
                "the trace report names the dtype"
            );
            let mut r = ranking(&out);
            let top = r[0].0.clone();
            r.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            (top, r.into_iter().map(|x| x.2).collect::<Vec<f64>>())
        };
        let (top32, f32s) = scores("f32");
        let (top16, half) = scores(dtype);
        let rho = tda_eval::spearman(&f32s, &half);
        eprintln!(
            "{} {dtype}: Spearman {rho:.4} vs f32 over {} windows",
            model.display(),
            f32s.len()
        );
        assert!(
            rho >= 0.97,
            "{} {dtype}: Spearman {rho} vs f32",
            model.display()
        );
        assert_eq!(top16, top32, "{} {dtype}: top document", model.display());
    }
    let out = dir.join("never");
    fails(
        [
            "fit",
            "--model",
            p(&w.model),
            "--corpus",
            p(&w.corpus),
            "--out",
            p(&out),
            "--dtype",
            "f64",
        ],
        &["--dtype", "unknown dtype \"f64\" (f32, bf16 or f16)"],
        &[&out],
    );
}

#[test]
fn self_influence_ranks_every_window() {
    let w = world();
    let out = json(&ok([
        "self-influence",
        "--model",
        p(&w.model),
        "--factors",
        p(&w.factors),
        "--corpus",
        p(&w.corpus),
        "--top-k",
        "all",
        "--json",
    ]));
    let rows = out.as_array().unwrap();
    assert_eq!(rows.len(), 40, "one row per document");
    let scores: Vec<f64> = rows.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(scores.iter().all(|&s| s >= 0.0));
    assert!(scores.windows(2).all(|x| x[0] >= x[1]));
    // The filter list: the top 10 % of the documents as jsonl, the same rows as the ranking.
    let dir = scratch();
    let flagged = dir.join("flagged.jsonl");
    let r = run([
        "self-influence",
        "--model",
        p(&w.model),
        "--factors",
        p(&w.factors),
        "--corpus",
        p(&w.corpus),
        "--top-pct",
        "10",
        "--out",
        p(&flagged),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("kept the top 10 %: 4 of 40"),
        "{}",
        r.stderr
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&flagged)
        .unwrap()
        .lines()
        .map(json)
        .collect();
    assert_eq!(lines.len(), 4);
    for (l, r) in lines.iter().zip(rows) {
        assert_eq!(l["doc_id"], r["doc_id"]);
        assert_eq!(l["score"], r["score"]);
    }
    // Windows: more rows than documents when documents are longer than a window.
    let win = json(&ok([
        "self-influence",
        "--model",
        p(&w.model),
        "--factors",
        p(&w.factors),
        "--corpus",
        p(&w.corpus),
        "--top-k",
        "all",
        "--granularity",
        "window",
        "--max-len",
        "8",
        "--json",
    ]));
    let win = win.as_array().unwrap();
    assert!(win.len() > 40);
    let best = win
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let docs8 = json(&ok([
        "self-influence",
        "--model",
        p(&w.model),
        "--factors",
        p(&w.factors),
        "--corpus",
        p(&w.corpus),
        "--top-k",
        "1",
        "--max-len",
        "8",
        "--json",
    ]));
    assert_eq!(docs8[0]["score"].as_f64().unwrap(), best);
    assert!(docs8[0]["windows"].as_u64().unwrap() > 1);
}

#[test]
fn train_generate_and_logprobs() {
    let w = world();
    let dir = scratch();
    let model = dir.join("model");
    let r = run([
        "train",
        "--config",
        p(&repo("configs/tiny.toml")),
        "--corpus",
        p(&w.corpus),
        "--out",
        p(&model),
        "--steps",
        "2",
        "--json",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let report = json(&r.stdout);
    assert_eq!(report["steps"], 2);
    assert_eq!(report["corpus"]["docs"], 40);
    assert!(
        r.stderr.contains("40 documents, 0 records skipped"),
        "{}",
        r.stderr
    );
    let gen = json(&ok([
        "generate",
        "--model",
        p(&model),
        "--prompt",
        "Mira",
        "--max-new-tokens",
        "4",
        "--no-stop",
        "--json",
    ]));
    assert_eq!(gen["completion_ids"].as_array().unwrap().len(), 4);
    let lp = json(&ok([
        "logprobs",
        "--model",
        p(&model),
        "--text",
        "Mira Tolven",
        "--json",
    ]));
    assert!(lp["total_logprob"].as_f64().unwrap() < 0.0);
}

#[test]
fn cite_attributes_a_given_answer() {
    let dir = scratch();
    let docs = dir.join("docs.jsonl");
    std::fs::write(
        &docs,
        "{\"id\": \"d1\", \"title\": \"Mira\", \"text\": \"Mira Tolven was born in Tarn.\"}\n{\"id\": \"d2\", \"text\": \"Oskar Vell works as a baker.\"}\n",
    )
    .unwrap();
    let html = dir.join("cite.html");
    let report = dir.join("cite.json");
    let cite = |extra: &[&str]| {
        let mut v = vec![
            "cite",
            "--model",
            p(&fixture("rag")),
            "--docs",
            p(&docs),
            "--question",
            "Where was Mira Tolven born?",
            "--answer",
            "Mira Tolven was born in Tarn.",
            "--json",
        ];
        v.extend_from_slice(extra);
        json(&ok(v))
    };
    let out = cite(&["--html", p(&html), "--out", p(&report)]);
    assert_eq!(out["sentences"].as_array().unwrap().len(), 1);
    assert!(std::fs::read_to_string(&html).unwrap().contains("<html"));
    assert_eq!(json(&std::fs::read_to_string(&report).unwrap()), out);
    // Each method on the same answer: one sentence, its documents scored, the passes.
    for (args, kind, forwards) in [
        (&["--method", "loo"][..], "leave_one_out", 4),
        (
            &["--method", "context-cite", "--masks", "8"][..],
            "context_cite",
            10,
        ),
        (&["--method", "mirage"][..], "mirage", 2),
    ] {
        let out = cite(args);
        assert_eq!(out["settings"]["method"]["kind"], kind);
        assert_eq!(out["passes"]["forwards"], forwards);
        assert_eq!(out["passes"]["backwards"], usize::from(kind == "mirage"));
        assert_eq!(
            out["sentences"][0]["doc_scores"].as_array().unwrap().len(),
            2
        );
    }
}

/// `--requests`: many answers in one run give the reports that one run per answer gives (timings
/// aside), in input order; a bad line names `file:line` and writes nothing.
#[test]
fn cite_requests_equal_one_run_per_request() {
    let dir = scratch();
    let docs = dir.join("docs.jsonl");
    let d1 = "Mira Tolven was born in Tarn.";
    let d2 = "Oskar Vell works as a baker.";
    std::fs::write(
        &docs,
        format!("{{\"id\": \"d1\", \"text\": \"{d1}\"}}\n{{\"id\": \"d2\", \"text\": \"{d2}\"}}\n"),
    )
    .unwrap();
    let qs = [
        (
            "Where was Mira Tolven born?",
            "Mira Tolven was born in Tarn.",
        ),
        (
            "What does Oskar Vell work as?",
            "Oskar Vell works as a baker.",
        ),
    ];
    let requests = dir.join("requests.jsonl");
    let lines: Vec<String> = qs
        .iter()
        .map(|(q, ans)| {
            serde_json::json!({"question": q, "answer": ans, "docs": [
                {"id": "d1", "text": d1}, {"id": "d2", "text": d2}]})
            .to_string()
        })
        .collect();
    std::fs::write(&requests, lines.join("\n") + "\n\n").unwrap();
    let without_timings = |mut v: serde_json::Value| {
        v.as_object_mut().unwrap().remove("timings");
        v
    };
    let out = dir.join("reports.jsonl");
    let m = ["--model", p(&fixture("rag")), "--method", "mirage"];
    ok(["cite", "--requests", p(&requests), "--out", p(&out)]
        .iter()
        .chain(&m));
    let batch: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| without_timings(json(l)))
        .collect();
    assert_eq!(batch.len(), 2);
    for ((q, ans), got) in qs.iter().zip(&batch) {
        let one = json(&ok([
            "cite",
            "--docs",
            p(&docs),
            "--question",
            q,
            "--answer",
            ans,
            "--json",
        ]
        .iter()
        .chain(&m)));
        assert_eq!(&without_timings(one), got, "{q}");
    }
    // A document without text on line 2: named, and the output is not written.
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{}\n{{\"question\": \"q\", \"docs\": [{{\"id\": \"x\"}}]}}\n",
            lines[0]
        ),
    )
    .unwrap();
    let out2 = dir.join("none.jsonl");
    fails(
        ["cite", "--requests", p(&bad), "--out", p(&out2)]
            .iter()
            .chain(&m),
        &["bad.jsonl:2", "missing field `text`"],
        &[&out2],
    );
}

/// Determinism. The same command gives bit-identical factors and scores, with the same thread
/// count and across thread counts: every parallel reduction of fit and trace sums fixed pieces
/// in a fixed order, and each eigendecomposition runs on one thread (faer's parallel
/// tridiagonalisation rounded differently with 1 and 2 threads).
#[test]
fn same_command_twice_gives_identical_scores_across_thread_counts() {
    let dir = scratch();
    let query = [
        "--prompt",
        "Mira Tolven was born in",
        "--completion",
        " Kestrel Bay",
        "--top-k",
        "all",
    ];
    let run_with = |threads: &str, name: &str| {
        let f = dir.join(name);
        let w = world();
        let env = [("RAYON_NUM_THREADS", threads)];
        let r = run_env(
            [
                "fit",
                "--model",
                p(&w.model),
                "--corpus",
                p(&w.corpus),
                "--out",
                p(&f),
            ],
            &env,
        );
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let mut args = trace_args(&query);
        args[4] = p(&f); // --factors: the ones just fitted
        let own = run_env(args, &env);
        assert_eq!(own.code, Some(0), "{}", own.stderr);
        let shared = run_env(trace_args(&query), &env);
        assert_eq!(shared.code, Some(0), "{}", shared.stderr);
        (
            f.join("factors.safetensors"),
            ranking(&json(&own.stdout)),
            ranking(&json(&shared.stdout)),
        )
    };
    let (f2, own2, shared2) = run_with("2", "a");
    let (f2b, own2b, _) = run_with("2", "b");
    assert!(
        std::fs::read(&f2).unwrap() == std::fs::read(&f2b).unwrap(),
        "two runs wrote different factor files"
    );
    assert_eq!(own2, own2b, "two runs gave different scores");
    let (f1, own1, shared1) = run_with("1", "c");
    assert_eq!(
        shared1, shared2,
        "same factors, 1 vs 2 threads: scores must be identical"
    );
    assert!(
        std::fs::read(&f1).unwrap() == std::fs::read(&f2).unwrap(),
        "1 vs 2 threads wrote different factor files"
    );
    assert_eq!(
        own1, own2,
        "1 vs 2 threads: fit and trace must give identical scores"
    );
}

/// Scores by `(query, doc_id, window)` of a `--top-k all` trace.
fn scores_by_doc(out: &serde_json::Value) -> Vec<std::collections::HashMap<String, f64>> {
    out["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            q["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["doc_id"].as_str().unwrap().to_string(),
                        r["score"].as_f64().unwrap(),
                    )
                })
                .collect()
        })
        .collect()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-30)
}

#[test]
fn documents_sum_their_windows_and_target_sets_average_their_queries() {
    let dir = scratch();
    let targets = dir.join("targets.txt");
    std::fs::write(
        &targets,
        "Mira Tolven was born in Kestrel Bay\n\n the city by the river\n",
    )
    .unwrap();
    // Several windows per document: --max-len 8.
    let base = [
        "--queries",
        p(&targets),
        "--top-k",
        "all",
        "--max-len",
        "8",
        "--query-rank",
        "full",
    ];
    let windows = json(&ok(trace_args(
        &[&base[..], &["--granularity", "window"]].concat(),
    )));
    let docs = json(&ok(trace_args(&base)));
    assert_eq!(docs["granularity"], "document");
    assert_eq!(docs["queries"][0]["id"], "t1");
    assert_eq!(docs["queries"][1]["completion"], " the city by the river");
    let mut multi = 0;
    for (q, dq) in docs["queries"].as_array().unwrap().iter().enumerate() {
        for r in dq["results"].as_array().unwrap() {
            let id = r["doc_id"].as_str().unwrap();
            let ws: Vec<f64> = windows["queries"][q]["results"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["doc_id"] == id)
                .map(|w| w["score"].as_f64().unwrap())
                .collect();
            assert_eq!(r["windows"].as_u64().unwrap() as usize, ws.len(), "{id}");
            multi += usize::from(ws.len() > 1);
            let sum: f64 = ws.iter().sum();
            assert!(
                close(r["score"].as_f64().unwrap(), sum, 1e-9),
                "{id}: {r} vs {sum}"
            );
            let best = ws.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(r["best_window_score"].as_f64().unwrap(), best, "{id}");
        }
    }
    assert!(multi > 0, "no document had several windows");
    // The target set's score is the mean of the per-query scores, at the cost of one query.
    let per = scores_by_doc(&docs);
    let agg = json(&ok(trace_args(
        &[&base[..], &["--aggregate", "mean", "--per-query"]].concat(),
    )));
    assert_eq!(agg["aggregate"], "mean");
    assert_eq!(agg["queries"][0]["id"], "target");
    let got = scores_by_doc(&agg);
    assert_eq!(got.len(), 3);
    // f32 queries and contractions: relative to the largest score.
    let scale = got[0].values().fold(0.0f64, |m, s| m.max(s.abs()));
    for (id, s) in &got[0] {
        let want = (per[0][id] + per[1][id]) / 2.0;
        assert!(
            (s - want).abs() <= 1e-5 * scale,
            "{id}: target {s} vs mean {want}"
        );
        assert!(close(got[1][id], per[0][id], 1e-9) && close(got[2][id], per[1][id], 1e-9));
    }
    let only = json(&ok(trace_args(
        &[&base[..], &["--aggregate", "sum"]].concat(),
    )));
    assert_eq!(only["queries"].as_array().unwrap().len(), 1);
    assert_eq!(only["report"]["queries"], 1);
}

#[test]
fn multi_stage_trace_folds_the_fine_tuning_hessian_into_the_query() {
    let w = world();
    let dir = scratch();
    let cfg = dir.join("ft.toml");
    std::fs::write(
        &cfg,
        "[train]\nseq_len = 32\nbatch_size = 4\nsteps = 3\nlr = 1e-3\nweight_decay = 0.0\n",
    )
    .unwrap();
    let ft_corpus = dir.join("ft.jsonl");
    std::fs::write(
        &ft_corpus,
        (0..12)
            .map(|i| {
                format!("{{\"text\": \"Q: Where was person {i} born? A: in the city {i}.\"}}\n")
            })
            .collect::<String>(),
    )
    .unwrap();
    let ft = dir.join("ft");
    ok([
        "train",
        "--config",
        p(&cfg),
        "--init",
        p(&w.model),
        "--corpus",
        p(&ft_corpus),
        "--out",
        p(&ft),
        "--proximal",
        "0.01",
    ]);
    let record = json(&std::fs::read_to_string(ft.join("tda_training.json")).unwrap());
    assert_eq!(record["train"]["proximal"], 0.01);
    let ft_factors = dir.join("ft-factors");
    ok([
        "fit",
        "--model",
        p(&ft),
        "--corpus",
        p(&ft_corpus),
        "--out",
        p(&ft_factors),
    ]);
    let q = [
        "--prompt",
        "Mira Tolven was born in",
        "--completion",
        " Kestrel Bay",
        "--top-k",
        "all",
    ];
    let ms = |extra: &[&'static str]| {
        let mut v = vec![
            "trace",
            "--model",
            p(&ft),
            "--pretrain-model",
            p(&w.model),
            "--corpus",
            p(&w.corpus),
            "--json",
        ];
        v.extend_from_slice(&q);
        v.extend_from_slice(extra);
        json(&ok(v))
    };
    let both = ms(&[
        "--factors",
        p(&ft_factors),
        "--pretrain-factors",
        p(&w.factors),
    ]);
    assert_eq!(both["stages"]["hessians"], "both");
    let alpha = both["stages"]["fine_tune_damping"].as_str().unwrap();
    assert!(alpha.starts_with("proximal 0.01 × T̄"), "{alpha}");
    let s_both = scores_by_doc(&both);
    assert_eq!(s_both[0].len(), 40);
    // The prefilter, per-token and per-layer scores work in multi-stage tracing too.
    let pre = ms(&[
        "--factors",
        p(&ft_factors),
        "--pretrain-factors",
        p(&w.factors),
        "--index",
        p(&w.index),
        "--candidates",
        "5",
        "--per-token",
        "--per-layer",
    ]);
    let rows = pre["queries"][0]["results"].as_array().unwrap();
    assert!(!rows.is_empty() && rows.len() <= 5);
    for r in rows {
        let id = r["doc_id"].as_str().unwrap();
        let score = r["score"].as_f64().unwrap();
        let per_layer: Vec<f64> = r["per_layer"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["score"].as_f64().unwrap())
            .collect();
        // With --per-token every layer is contracted per token; without it, a layer may take the
        // per-sequence contraction (tda_curvature::score::Path): the same sum in another f32
        // order. Both are f32 products summed in f64 over pieces; within a layer the terms
        // ⟨P, G⟩ cancel, so they agree to 1e-5 of the layers' magnitudes (measured 1.2e-6).
        let magnitude: f64 = per_layer.iter().map(|x| x.abs()).sum();
        assert!(
            (score - s_both[0][id]).abs() <= 1e-5 * magnitude.max(score.abs()),
            "{id}: prefiltered {score} vs {}",
            s_both[0][id]
        );
        let layers: f64 = per_layer.iter().sum();
        let tokens: f64 = r["per_token"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["score"].as_f64().unwrap())
            .sum();
        assert!(
            (layers - score).abs() <= 1e-6 * score.abs().max(1.0),
            "{id}: layers {layers} vs {score}"
        );
        // Per-token scores are the best window's: they sum to its score.
        let best = r["best_window_score"].as_f64().unwrap();
        assert!(
            (tokens - best).abs() <= 1e-4 * best.abs().max(1.0),
            "{id}: tokens {tokens} vs {best}"
        );
        if r["windows"] == 1 {
            assert_eq!(best, score);
        }
    }
    // Ablations run, differ from the full score, and need only their own factors.
    let none = ms(&["--hessians", "none"]);
    assert_eq!(none["strategy"], "identity");
    let ft_only = ms(&["--hessians", "fine-tune", "--factors", p(&ft_factors)]);
    let pt_only = ms(&[
        "--hessians",
        "pretrain",
        "--pretrain-factors",
        p(&w.factors),
    ]);
    for other in [&none, &ft_only, &pt_only] {
        let s = scores_by_doc(other);
        assert!(s[0].iter().any(|(id, v)| !close(*v, s_both[0][id], 1e-3)));
    }
    // With the pretrained model on both sides, the pretraining-only variant is single-stage tracing.
    let same = json(&ok([
        &[
            "trace",
            "--model",
            p(&w.model),
            "--pretrain-model",
            p(&w.model),
            "--corpus",
            p(&w.corpus),
            "--json",
            "--hessians",
            "pretrain",
            "--pretrain-factors",
            p(&w.factors),
        ][..],
        &q[..],
    ]
    .concat()));
    let single = json(&ok(trace_args(&q)));
    let (a, b) = (scores_by_doc(&same), scores_by_doc(&single));
    for (id, s) in &b[0] {
        assert!(close(a[0][id], *s, 1e-9), "{id}: {} vs {s}", a[0][id]);
    }
}

#[test]
fn completion_only_pairs_take_the_loss_on_the_completion() {
    let w = world();
    let dir = scratch();
    let (prompt, completion) = ("Mira Tolven was born in", " Kestrel Bay");
    let docs = dir.join("docs.jsonl");
    std::fs::write(
        &docs,
        format!(
            "{{\"id\": \"whole\", \"text\": \"{prompt}{completion}\"}}\n{{\"id\": \"prompt\", \"text\": \"{prompt}\"}}\n"
        ),
    )
    .unwrap();
    let pairs = dir.join("pairs.jsonl");
    std::fs::write(
        &pairs,
        format!(
            "{{\"id\": \"pair\", \"prompt\": \"{prompt}\", \"completion\": \"{completion}\"}}\n"
        ),
    )
    .unwrap();
    let q = [
        "--prompt",
        "The city",
        "--completion",
        " by the river",
        "--top-k",
        "all",
    ];
    let trace_on = |corpus: &Path, extra: &[&'static str]| {
        let mut v = vec![
            "trace",
            "--model",
            p(&w.model),
            "--factors",
            p(&w.factors),
            "--corpus",
            p(corpus),
            "--json",
        ];
        v.extend_from_slice(&q);
        v.extend_from_slice(extra);
        scores_by_doc(&json(&ok(v))).remove(0)
    };
    let d = trace_on(&docs, &[]);
    let pr = trace_on(&pairs, &["--completion-only"]);
    // The loss of "prompt + completion" is the prompt's token losses plus the completion's:
    // gradients, hence scores, add up (the tokenization of this prompt and completion is the same
    // joined or apart).
    let (whole, part, pair) = (d["whole"], d["prompt"], pr["pair"]);
    assert!(
        (part + pair - whole).abs() <= 1e-4 * whole.abs().max(part.abs()),
        "prompt {part} + completion-only pair {pair} ≠ whole {whole}"
    );
    assert!(
        (pair - whole).abs() > 1e-3 * whole.abs(),
        "the mask changed nothing"
    );
    // Factors of completion-only data fit too.
    let f = dir.join("f");
    let r = run([
        "fit",
        "--model",
        p(&w.model),
        "--corpus",
        p(&pairs),
        "--completion-only",
        "--out",
        p(&f),
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("1 documents"), "{}", r.stderr);
    // Through the prefilter: an index of the pairs' completions; the retrieved pair is scored as
    // a pair (the same score as without the index), a pair without an id is named `<file>:<row>`
    // either way, and the pair whose completion shares no word with the query is not retrieved.
    let more = dir.join("more.jsonl");
    std::fs::write(
        &more,
        format!(
            "{{\"id\": \"pair\", \"prompt\": \"{prompt}\", \"completion\": \"{completion}\"}}\n\
             {{\"prompt\": \"Where is the city?\", \"completion\": \" The city lies by the river\"}}\n\
             {{\"id\": \"far\", \"prompt\": \"The city\", \"completion\": \" Zorblat\"}}\n"
        ),
    )
    .unwrap();
    let idx = dir.join("pairs-index");
    let r = run([
        "index",
        "--corpus",
        p(&more),
        "--text-column",
        "completion",
        "--index",
        p(&idx),
        "--quiet",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let q = [
        "--prompt",
        "The city",
        "--completion",
        " by the river Kestrel Bay",
        "--top-k",
        "all",
    ];
    let trace_pairs = |extra: &[&str]| {
        let mut v = vec![
            "trace",
            "--model",
            p(&w.model),
            "--factors",
            p(&w.factors),
            "--corpus",
            p(&more),
            "--completion-only",
            "--json",
        ];
        v.extend_from_slice(&q);
        v.extend_from_slice(extra);
        scores_by_doc(&json(&ok(v))).remove(0)
    };
    let got = trace_pairs(&["--index", p(&idx)]);
    let mut ids: Vec<&str> = got.keys().map(String::as_str).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["more.jsonl:1", "pair"], "{got:?}");
    let all = trace_pairs(&[]);
    // Both name the pair without an id as the index does.
    assert!(
        all.contains_key("far") && all.contains_key("more.jsonl:1"),
        "{all:?}"
    );
    for id in ["pair", "more.jsonl:1"] {
        assert!(
            close(got[id], all[id], 1e-9),
            "{id}: {} vs {}",
            got[id],
            all[id]
        );
    }
}

/// `tda select` with every method on a jsonl pool with a planted duplicate: the output lines are
/// the pool lines plus `tda_rank`/`tda_score` (in rank order, scores non-increasing), `--dedup`
/// drops the duplicate, the token budget holds; a parquet pool round-trips with its schema plus
/// the two columns; a text pool becomes `{"text", "tda_rank", "tda_score"}`.
#[test]
fn select_every_method_keeps_records() {
    use std::collections::HashMap;
    let help = ok(["select", "--help"]);
    for needle in [
        "MEAN over targets",
        "SUM of its windows",
        "--projection-dim",
        "8192",
        "Examples:",
        "one target per non-empty line",
    ] {
        assert!(help.contains(needle), "select --help lacks {needle:?}");
    }
    let w = world();
    let d = scratch();
    let lines: Vec<String> = std::fs::read_to_string(&w.corpus)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let first = json(&lines[1]);
    let dup_text = first["text"].as_str().unwrap().to_string();
    // The planted duplicate: same text (different spacing and case), another id, an extra field.
    let dup = serde_json::json!({"id": "planted-dup", "text": dup_text.to_uppercase().replace(' ', "  "), "extra": [1, 2]});
    let mut pool_lines = lines.clone();
    pool_lines.insert(5, dup.to_string());
    let pool = d.join("pool.jsonl");
    std::fs::write(&pool, pool_lines.join("\n") + "\n").unwrap();
    let by_id: HashMap<String, &String> = pool_lines
        .iter()
        .map(|l| (json(l)["id"].as_str().unwrap().to_string(), l))
        .collect();
    // Targets about the first biography's facts (its first sentence, cut before the town).
    let sentence = dup_text.split(". ").next().unwrap();
    let (prompt, town) = sentence.rsplit_once(" in ").unwrap();
    let targets = d.join("targets.jsonl");
    std::fs::write(
        &targets,
        serde_json::json!({"prompt": format!("{prompt} in"), "completion": format!(" {town}")})
            .to_string()
            + "\n",
    )
    .unwrap();
    let select = |method: &str, out: &std::path::Path, extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "select",
            "--model",
            p(&w.model),
            "--method",
            method,
            "--pool",
            p(&pool),
            "--targets",
            p(&targets),
            "--out",
            p(out),
            "--json",
        ];
        if method == "ekfac" {
            args.extend(["--factors", p(&w.factors)]);
        }
        args.extend_from_slice(extra);
        json(&ok(args))
    };
    for method in ["ekfac", "grad-cosine", "repsim", "bm25"] {
        let out = d.join(format!("sel-{method}.jsonl"));
        let rep = select(method, &out, &["--top-n", "6"]);
        assert_eq!(rep["method"], method);
        assert_eq!(rep["selected"], 6);
        assert_eq!(rep["pool_documents"], 41);
        assert_eq!(rep["scored"], 41, "{method}: every document has a window");
        if method == "grad-cosine" {
            assert!(rep["projection_dim"].as_u64().unwrap() > 0);
        }
        let got: Vec<String> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(got.len(), 6);
        let mut last = f64::INFINITY;
        for (k, l) in got.iter().enumerate() {
            let mut v = json(l);
            let obj = v.as_object_mut().unwrap();
            assert_eq!(obj.remove("tda_rank").unwrap(), k + 1);
            let s = obj.remove("tda_score").unwrap().as_f64().unwrap();
            assert!(s <= last, "{method}: scores in rank order");
            last = s;
            let id = obj["id"].as_str().unwrap();
            let orig = by_id[id];
            assert_eq!(serde_json::Value::Object(obj.clone()), json(orig));
            // The original bytes are kept: the line is the pool line with two fields appended.
            assert!(
                l.starts_with(orig.strip_suffix('}').unwrap()),
                "{l} vs {orig}"
            );
        }
        assert_eq!(
            rep["top"][0]["score"].as_f64().unwrap(),
            json(&got[0])["tda_score"].as_f64().unwrap()
        );
    }
    // BM25 scores the duplicate like the original (same words): both are in the top two
    // without --dedup, only one with it.
    let ids = |path: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| json(l)["id"].as_str().unwrap().to_string())
            .collect()
    };
    let orig_id = first["id"].as_str().unwrap();
    let plain = ids(&d.join("sel-bm25.jsonl"));
    assert!(
        plain[..2].contains(&"planted-dup".to_string())
            && plain[..2].contains(&orig_id.to_string()),
        "{plain:?}"
    );
    let out = d.join("dedup.jsonl");
    let rep = select("bm25", &out, &["--top-n", "6", "--dedup"]);
    assert!(rep["dropped_duplicates"].as_u64().unwrap() >= 1);
    let deduped = ids(&out);
    assert_eq!(deduped.len(), 6);
    assert!(
        !(deduped.contains(&"planted-dup".to_string()) && deduped.contains(&orig_id.to_string()))
    );
    // Token budget: never exceeded, and the next ranked document would not have fit... at least
    // the reported count is what the budget allows.
    let out = d.join("budget.jsonl");
    let rep = select("repsim", &out, &["--token-budget", "400"]);
    let tokens = rep["tokens"].as_u64().unwrap();
    assert!(tokens <= 400 && tokens > 0, "{rep}");
    let sum: u64 = rep["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, tokens, "top holds every selected document here");
    let rep = select("repsim", &d.join("pct.jsonl"), &["--top-pct", "10"]);
    assert_eq!(rep["selected"], 5, "⌈10% of 41⌉");

    // Parquet pool → parquet output: the pool's schema plus the two columns, rows unchanged.
    use arrow::array::{Array, Float64Array, Int64Array, StringArray, UInt64Array};
    use arrow::record_batch::RecordBatch;
    let n = lines.len();
    let texts: Vec<String> = lines
        .iter()
        .map(|l| json(l)["text"].as_str().unwrap().to_string())
        .collect();
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            std::sync::Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("row{i}")),
            )) as arrow::array::ArrayRef,
        ),
        (
            "text",
            std::sync::Arc::new(StringArray::from_iter_values(texts.iter())),
        ),
        (
            "n",
            std::sync::Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i * 10))),
        ),
    ])
    .unwrap();
    let pq_pool = d.join("pool.parquet");
    let f = std::fs::File::create(&pq_pool).unwrap();
    // Small row groups: the selection crosses batches.
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(7))
        .build();
    let mut wr = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
    wr.write(&batch).unwrap();
    wr.close().unwrap();
    let pq_out = d.join("sel.parquet");
    let rep = json(&ok([
        "select",
        "--model",
        p(&w.model),
        "--method",
        "bm25",
        "--pool",
        p(&pq_pool),
        "--targets",
        p(&targets),
        "--top-n",
        "9",
        "--out",
        p(&pq_out),
        "--json",
    ]));
    let f = std::fs::File::open(&pq_out).unwrap();
    let got: Vec<RecordBatch> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
    let got = arrow::compute::concat_batches(&got[0].schema(), &got).unwrap();
    let names: Vec<String> = got
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "text", "n", "tda_rank", "tda_score"]);
    assert_eq!(got.num_rows(), 9);
    let col = |i: usize| got.column(i).clone();
    let id = col(0);
    let id = id.as_any().downcast_ref::<StringArray>().unwrap();
    let text = col(1);
    let text = text.as_any().downcast_ref::<StringArray>().unwrap();
    let nn = col(2);
    let nn = nn.as_any().downcast_ref::<Int64Array>().unwrap();
    let rank = col(3);
    let rank = rank.as_any().downcast_ref::<UInt64Array>().unwrap();
    let score = col(4);
    let score = score.as_any().downcast_ref::<Float64Array>().unwrap();
    for r in 0..9 {
        let row: usize = id.value(r)[3..].parse().unwrap();
        assert_eq!(text.value(r), texts[row]);
        assert_eq!(nn.value(r), row as i64 * 10);
        assert_eq!(rank.value(r), r as u64 + 1);
        assert!(r == 0 || score.value(r) <= score.value(r - 1));
    }
    assert_eq!(rep["top"][0]["id"], id.value(0));
    assert_eq!(score.null_count(), 0);

    // Text pool → jsonl {"text", "tda_rank", "tda_score"}; targets as plain text lines.
    let txt_pool = d.join("pool.txt");
    std::fs::write(&txt_pool, texts.join("\n") + "\n").unwrap();
    let txt_targets = d.join("targets.txt");
    std::fs::write(&txt_targets, format!("\n{sentence}\n\n")).unwrap();
    let txt_out = d.join("sel-txt.jsonl");
    let rep = json(&ok([
        "select",
        "--model",
        p(&w.model),
        "--method",
        "grad-cosine",
        "--projection-dim",
        "256",
        "--pool",
        p(&txt_pool),
        "--targets",
        p(&txt_targets),
        "--top-n",
        "3",
        "--out",
        p(&txt_out),
        "--json",
    ]));
    assert_eq!(rep["targets"], 1);
    assert!(rep["projection_dim"].as_u64().unwrap() <= 256);
    for (k, l) in std::fs::read_to_string(&txt_out)
        .unwrap()
        .lines()
        .enumerate()
    {
        let v = json(l);
        assert_eq!(v.as_object().unwrap().len(), 3);
        assert!(texts.contains(&v["text"].as_str().unwrap().to_string()));
        assert_eq!(v["tda_rank"], k + 1);
    }
}

#[test]
fn trace_ensemble_averages_standardised_states() {
    let w = world();
    let dir = scratch();
    // A second training state of the same model: 3 fine-tuning steps on the corpus, own factors.
    let cfg = dir.join("ft.toml");
    std::fs::write(
        &cfg,
        "[train]\nseq_len = 32\nbatch_size = 4\nsteps = 3\nlr = 1e-3\nwarmup_steps = 1\nmin_lr_ratio = 0.1\nweight_decay = 0.0\ngrad_clip = 1.0\nseed = 0\ncheckpoint_every = 0\n",
    )
    .unwrap();
    let (state, state_f) = (dir.join("state"), dir.join("state-factors"));
    ok([
        "train",
        "--config",
        p(&cfg),
        "--init",
        p(&w.model),
        "--corpus",
        p(&w.corpus),
        "--out",
        p(&state),
    ]);
    ok([
        "fit",
        "--model",
        p(&state),
        "--corpus",
        p(&w.corpus),
        "--out",
        p(&state_f),
    ]);
    let q = [
        "--prompt",
        "Mira Tolven was born in",
        "--completion",
        " Kestrel Bay",
    ];
    let with = |extra: &[&'static str]| {
        let mut a = q.to_vec();
        a.extend_from_slice(extra);
        json(&ok(trace_args(&a)))
    };
    let a = ranking(&with(&["--top-k", "all"]));
    let mut b_args = vec![
        "trace",
        "--model",
        p(&state),
        "--factors",
        p(&state_f),
        "--corpus",
    ];
    b_args.extend([p(&w.corpus), "--json", "--top-k", "all"]);
    b_args.extend(q);
    let b = ranking(&json(&ok(b_args)));
    let state_arg = leak(&format!("{}={}", p(&state), p(&state_f)));
    let e = with(&["--top-k", "5", "--ensemble", state_arg]);
    assert_eq!(e["ensemble"]["states"].as_array().unwrap().len(), 2);
    // Expected: the mean over the two states of score / (std over the candidates).
    let sd = |r: &[(String, u64, f64)]| {
        let n = r.len() as f64;
        let m = r.iter().map(|x| x.2).sum::<f64>() / n;
        (r.iter().map(|x| (x.2 - m).powi(2)).sum::<f64>() / n).sqrt()
    };
    let (sa, sb) = (sd(&a), sd(&b));
    let mut want: Vec<(String, f64)> = a
        .iter()
        .map(|(id, _, s)| {
            let sb_doc = b.iter().find(|x| &x.0 == id).expect("same candidates").2;
            (id.clone(), (s / sa + sb_doc / sb) / 2.0)
        })
        .collect();
    want.sort_by(|x, y| y.1.total_cmp(&x.1));
    let got = ranking(&e);
    assert_eq!(got.len(), 5);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0, "ensemble order: {got:?} vs {want:?}");
        assert!(
            (g.2 - w.1).abs() <= 1e-9 * w.1.abs().max(1.0),
            "{g:?} vs {w:?}"
        );
    }
    assert_ne!(a[0].2, b[0].2, "the two states differ");
    // A state whose factors belong to another model is refused.
    let wrong = leak(&format!("{}={}", p(&state), p(&w.factors)));
    let mut v = trace_args(&q);
    v.extend(["--ensemble", wrong]);
    common::fails(v, &["another model"], &[]);
}
