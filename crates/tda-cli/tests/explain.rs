//! `tda explain` end to end on the RAG fixture: routes in the JSON, bad flags refused, and the
//! HTML page rendered by a real headless browser (Debian's `chromium`), its screenshot checked
//! for the route colours and for the details box a click opens. Without chromium the browser
//! part is skipped, except in CI (`CI` set), where it must run (`.ci/run` installs it).

mod common;

use std::path::Path;

use common::browser::{count_color, screenshot};
use common::*;

const DOCS: &str = "{\"id\": \"d1\", \"text\": \"Zekum Braneil was born in Northmoor.\"}\n{\"id\": \"d2\", \"text\": \"Mira Tolven works as a potter.\"}\n{\"id\": \"d3\", \"text\": \"Zekum Braneil likes the colour orange.\"}\n{\"id\": \"d4\", \"text\": \"Oskar Vell was born in Tarn.\"}\n";
const QUESTION: &str = "Where was Zekum Braneil born and which colour does Zekum Braneil like?";
const ANSWER: &str = "Zekum Braneil was born in Northmoor. Zekum Braneil likes the colour orange.";

fn explain_args(docs: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "explain",
        "--model",
        fixture("rag").to_str().unwrap(),
        "--docs",
        docs.to_str().unwrap(),
        "--question",
        QUESTION,
        "--answer",
        ANSWER,
        "--instruction",
        "",
        "--prompt-template",
        "Question: {question}\\n\\n{context}\\nAnswer:",
        "--doc-template",
        "Document [{i}]: {text}\\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn explain_routes_tokens_and_the_page_renders_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs.jsonl");
    std::fs::write(&docs, DOCS).unwrap();
    let html = dir.path().join("explain.html");
    let out: serde_json::Value = serde_json::from_str(&ok(explain_args(
        &docs,
        &[
            "--method",
            "loo",
            "--json",
            "--html",
            html.to_str().unwrap(),
        ],
    )))
    .unwrap();
    let tokens = out["tokens"].as_array().unwrap();
    let route = |word: &str| -> Vec<String> {
        tokens
            .iter()
            .filter(|t| t["text"].as_str().unwrap().trim() == word)
            .map(|t| t["route"].as_str().unwrap().to_string())
            .collect()
    };
    // The name is copied from the question; a period (no word) is never question or memory: it
    // is neither, or context where the document tells where the value ends (the reader of
    // `tests/fixtures/rag` ends the multi-token city "Northmoor" from its document); some token
    // is context-driven.
    assert!(
        route("Z").iter().all(|r| r == "question"),
        "{:?}",
        route("Z")
    );
    assert!(
        route(".").iter().all(|r| r == "neither" || r == "context"),
        "{:?}",
        route(".")
    );
    let ctx: Vec<&serde_json::Value> = tokens.iter().filter(|t| t["route"] == "context").collect();
    assert!(!ctx.is_empty(), "no context-driven token");
    for t in &ctx {
        assert!(t["documents"][0]["doc"].as_u64().is_some());
        assert_eq!(t["layers"].as_array().unwrap().len(), 6);
    }
    assert_eq!(out["traced"], false, "no factors given");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!doctype html>") && !page.contains("<script"));

    let shot = dir.path().join("answer.png");
    if !screenshot(&html, "", &shot) {
        return;
    }
    let green = count_color(&shot, [0x7f, 0xd1, 0x8b]);
    let blue = count_color(&shot, [0x9f, 0xc5, 0xf8]);
    let orange = count_color(&shot, [0xf5, 0xa2, 0x5d]);
    assert!(
        green > 300 && blue > 300 && orange > 100,
        "route colours on the page: green {green}, blue {blue}, orange {orange}"
    );
    assert_eq!(
        count_color(&shot, [0x6a, 0x3d, 0x9a]),
        0,
        "no details box before a click"
    );
    // A click on a context token (its #fragment) opens its box with the layer bars.
    let first = ctx[0]["index"].as_u64().unwrap();
    let clicked = dir.path().join("clicked.png");
    screenshot(&html, &format!("#tok-{first}"), &clicked);
    let bars = count_color(&clicked, [0x6a, 0x3d, 0x9a]);
    assert!(bars > 200, "layer bars of the opened token: {bars} px");
    if let Ok(keep) = std::env::var("TDA_SCREENSHOTS") {
        std::fs::copy(&shot, Path::new(&keep).join("explain-answer.png")).unwrap();
        std::fs::copy(&clicked, Path::new(&keep).join("explain-clicked.png")).unwrap();
    }
}

#[test]
fn explain_refuses_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs.jsonl");
    std::fs::write(&docs, DOCS).unwrap();
    fails(
        explain_args(&docs, &["--memory-min-prob", "2"]),
        &["memory threshold", "[0, 1]"],
        &[],
    );
    fails(
        explain_args(&docs, &["--temperature", "0.5"]),
        &["--answer", "--temperature"],
        &[],
    );
    fails(
        explain_args(&docs, &["--factors", "/nonexistent"]),
        &["--corpus"],
        &[],
    );
    fails(
        explain_args(&docs, &["--method", "mirage", "--masks", "8"]),
        &["--masks"],
        &[],
    );
}
