//! `tda demo` end to end on a small world (9 people, 40 training steps): the run and its JSON,
//! the report page rendered by headless chromium and its screenshots checked for the influence
//! colours, the layer bars and the citation view, the re-run from its caches (same output), and
//! a folder made for another world refused before anything is written.

mod common;

use std::path::Path;

use common::browser::{count_color, count_pixels, screenshot_sized};
use common::*;

fn demo_args(out: &Path, steps: u32, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["demo", "--people", "9", "--out"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(out.to_str().unwrap().to_string());
    v.extend(["--steps".to_string(), steps.to_string()]);
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn demo_traces_reports_and_reruns_from_its_caches() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let first = run(demo_args(&out, 40, &[]));
    assert_eq!(first.code, Some(0), "demo failed: {}", first.stderr);
    assert!(first.stderr.contains("trained now"), "{}", first.stderr);
    assert!(first.stderr.contains("fitted now"), "{}", first.stderr);
    for f in [
        "corpus.jsonl",
        "queries.jsonl",
        "model/model.safetensors",
        "factors/factors.safetensors",
        "reader/model.safetensors",
        "report.html",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert!(out.join("index").is_dir(), "the BM25 index");
    assert!(
        first.stdout.contains("stating document") && first.stdout.contains("cited: "),
        "{}",
        first.stdout
    );

    // The re-run reuses the model and the factors and prints the same thing.
    let again = run(demo_args(&out, 40, &[]));
    assert_eq!(again.code, Some(0), "re-run failed: {}", again.stderr);
    assert!(again.stderr.contains("cached →"), "{}", again.stderr);
    assert!(
        again.stderr.contains("(cached"),
        "factors: {}",
        again.stderr
    );
    assert_eq!(first.stdout, again.stdout, "a re-run is deterministic");

    // The JSON: every traced generation ranks every document by influence and by BM25.
    let json: serde_json::Value =
        serde_json::from_str(&ok(demo_args(&out, 40, &["--json"]))).unwrap();
    let docs = json["world"]["documents"].as_u64().unwrap();
    assert!(docs > 50, "{docs} documents");
    let traced = json["traced"].as_array().unwrap();
    assert!(!traced.is_empty());
    for t in traced {
        let top = t["top"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        for (k, d) in top.iter().enumerate() {
            assert_eq!(d["influence_rank"].as_u64(), Some(k as u64 + 1));
            let b = d["bm25_rank"].as_u64().unwrap();
            assert!((1..=docs).contains(&b), "BM25 rank {b}");
            assert!(!d["tokens"].as_array().unwrap().is_empty());
        }
        for s in t["stating"].as_array().unwrap() {
            assert!((1..=docs).contains(&s["influence_rank"].as_u64().unwrap()));
        }
        assert!(!t["layers"].as_array().unwrap().is_empty());
    }
    let sentences = json["citation"]["attribution"]["sentences"]
        .as_array()
        .unwrap();
    assert!(!sentences.is_empty());

    let html = out.join("report.html");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!doctype html>") && !page.contains("<script"));
    assert!(page.contains("id=\"gen-0\"") && page.contains("id=\"cite\""));

    // One screenshot of the whole page (fragment scrolling is not captured by headless chromium).
    let shot = tmp.path().join("demo.png");
    if !screenshot_sized(&html, "", &shot, (1000, 6000)) {
        return;
    }
    // Layer bars are solid red (raises) or blue (lowers).
    let bars = count_color(&shot, [214, 39, 40]) + count_color(&shot, [31, 119, 180]);
    assert!(bars > 300, "layer bars: {bars} px");
    // Tokens are tinted red or blue by their influence (lighter than the bars).
    let tinted = tint(&shot, [214, 39, 40], 0.05, 0.8) + tint(&shot, [31, 119, 180], 0.05, 0.8);
    assert!(tinted > 500, "tokens coloured by influence: {tinted} px");
    // The citation view marks documents by their palette colours; green ([3]), purple, brown,
    // pink and cyan appear nowhere else on the page.
    let palette = [
        [44, 160, 44],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [23, 190, 207],
    ];
    let marks: usize = palette.iter().map(|&c| tint(&shot, c, 0.1, 1.0)).sum();
    assert!(marks > 100, "citation view colours: {marks} px");
    assert!(page.contains("class=\"cite\""), "citation markers");
    if let Ok(keep) = std::env::var("TDA_SCREENSHOTS") {
        std::fs::copy(&shot, Path::new(&keep).join("demo.png")).unwrap();
    }
}

/// Pixels of `png` that are `colour` blended over white at an opacity in `[lo, hi]`.
fn tint(png: &Path, colour: [u8; 3], lo: f64, hi: f64) -> usize {
    count_pixels(png, |p| {
        let mut alphas = Vec::with_capacity(3);
        for c in 0..3 {
            let span = 255.0 - colour[c] as f64;
            if span > 40.0 {
                alphas.push((255.0 - p[c] as f64) / span);
            } else if p[c] < 235 {
                return false;
            }
        }
        let (min, max) = alphas
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        max - min < 0.08 && min >= lo && max <= hi
    })
}

#[test]
fn demo_refuses_a_folder_of_another_world() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    ok(demo_args(&out, 2, &[]));
    let corpus = std::fs::read(out.join("corpus.jsonl")).unwrap();
    let mut args = demo_args(&out, 2, &[]);
    args[2] = "10".into(); // --people 10
    fails(args, &[out.to_str().unwrap(), "another world"], &[]);
    assert_eq!(std::fs::read(out.join("corpus.jsonl")).unwrap(), corpus);
    fails(
        demo_args(&out, 2, &["--reader", "/nonexistent"]),
        &["--reader", "/nonexistent"],
        &[],
    );
}
