//! The whole pipeline on the tiny fixtures: report structure and pass counts, generated and
//! given answers, clear errors on bad input, JSON/HTML output written atomically.

use std::path::PathBuf;

use tda_context::cci::{contrastive_gradients, Passes, Target};
use tda_context::prompt::{build_prompts, Part, PromptTemplate};
use tda_context::{attribute, CciFilter, Document, Options, Request, Threshold};
use tda_model::device::CpuAutodiff;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn options() -> Options {
    let mut o = Options {
        template: PromptTemplate {
            instruction: String::new(),
            prompt: "Q: {question}\n{context}A:".into(),
            doc: "[{i}]({title}) {text}\n".into(),
            doc_untitled: "[{i}] {text}\n".into(),
            ..PromptTemplate::default()
        },
        ..Options::default()
    };
    o.generation.max_new_tokens = 6;
    o
}

fn docs() -> Vec<Document> {
    vec![
        Document::new("x", Some("<b>"), "the cat sat."),
        Document::new("y", None, "a dog & ran."),
    ]
}

#[test]
fn given_answer_report_and_pass_counts() {
    let m = tda_model::load_folder::<CpuAutodiff>(&fixture("gpt2"), &Default::default()).unwrap();
    let docs = docs();
    let mut opts = options();
    opts.threshold = Threshold::TopK(3);
    opts.max_batch_rows = 2;
    let req = Request {
        question: "who sat?",
        docs: &docs,
        answer: Some("The cat. It sat."),
    };
    let a = attribute(&m.model, &m.tokenizer, None, &req, &opts).unwrap();
    assert!(!a.generated);
    assert_eq!(a.answer, "The cat. It sat.");
    assert_eq!(a.sentences.len(), 2);
    assert_eq!(a.sentences[0].text, "The cat.");
    // Pass counts: 2 forwards for CTI, ceil(3 / 2) batched backwards with 3 rows.
    assert_eq!(a.passes.forwards, 2);
    assert_eq!(a.passes.backwards, 2);
    assert_eq!(a.passes.gradient_rows, 3);
    assert_eq!(a.passes.generated_tokens, 0);
    let sel: Vec<_> = a.tokens.iter().filter(|t| t.selected).collect();
    assert_eq!(sel.len(), 3);
    // Tokens tile the answer: their texts concatenate to it (the separator dropped), and their
    // spans are ordered and cover every non-space byte.
    let joined: String = a.tokens.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(joined.trim(), a.answer);
    for (b, ch) in a.answer.char_indices().filter(|(_, c)| !c.is_whitespace()) {
        let n = a
            .tokens
            .iter()
            .filter(|t| t.start <= b && b < t.end)
            .count();
        assert_eq!(n, 1, "byte {b} ({ch:?}) covered by {n} tokens");
    }
    for t in &a.tokens {
        assert_eq!(t.selected, t.doc_scores.is_some());
        if let Some(ds) = &t.doc_scores {
            assert_eq!(ds.len(), 2);
            let un = t.doc_scores_unfiltered.as_ref().unwrap();
            for (f, u) in ds.iter().zip(un) {
                assert!(*f <= *u + 1e-6, "filtered mass exceeds unfiltered");
            }
        }
    }
    for s in &a.sentences {
        assert!(s.citations.len() <= 3);
        for w in s.citations.windows(2) {
            assert!(
                s.doc_scores[w[0] - 1] >= s.doc_scores[w[1] - 1],
                "ordered by score"
            );
        }
        // Sentence scores are the sums of its selected tokens' document scores.
        for d in 0..2 {
            let sum: f32 = s
                .tokens
                .iter()
                .filter_map(|&t| a.tokens[t].doc_scores.as_ref().map(|x| x[d]))
                .sum();
            assert!((sum - s.doc_scores[d]).abs() <= 1e-6 * (1.0 + sum.abs()));
        }
    }
    // Unfiltered document scores are sums of saliency over BODY tokens only (an independent
    // recomputation from the gradients).
    let pair = build_prompts(
        &m.tokenizer,
        &m.model.config,
        &opts.template,
        "who sat?",
        &docs,
        None,
    )
    .unwrap();
    let ans = m
        .tokenizer
        .encode(" The cat. It sat.", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let t0 = sel[0];
    let g = contrastive_gradients(
        &m.model,
        &pair.with_docs.ids,
        &ans,
        &[Target {
            t: t0.index,
            y: t0.id,
            contrast: t0.contrast_id,
        }],
        1,
        false,
        &mut Passes::default(),
    )
    .unwrap();
    for d in 0..2 {
        let want: f32 = (0..pair.with_docs.ids.len())
            .filter(|&j| pair.with_docs.parts[j] == Part::Body(d))
            .map(|j| g[0].saliency[j])
            .sum();
        let got = t0.doc_scores_unfiltered.as_ref().unwrap()[d];
        assert!(
            (want - got).abs() <= 1e-5 * (1.0 + want.abs()),
            "doc {d}: {got} vs {want}"
        );
    }
    // Title tokens count only when asked.
    let mut with_titles = opts.clone();
    with_titles.count_titles = true;
    with_titles.filter = CciFilter::All;
    let b = attribute(&m.model, &m.tokenizer, None, &req, &with_titles).unwrap();
    let title_mass: f32 = (0..pair.with_docs.ids.len())
        .filter(|&j| pair.with_docs.parts[j] == Part::Title(0))
        .map(|j| g[0].saliency[j])
        .sum();
    let u = b.tokens[t0.index].doc_scores_unfiltered.as_ref().unwrap()[0];
    let u0 = t0.doc_scores_unfiltered.as_ref().unwrap()[0];
    assert!(title_mass > 0.0);
    assert!((u - u0 - title_mass).abs() <= 1e-5 * (1.0 + u.abs()));

    // JSON and HTML.
    let json: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
    assert_eq!(
        json["settings"]["kl_direction"],
        "KL(P_noctx || P_ctx), nats, full vocabulary"
    );
    assert_eq!(json["tokens"].as_array().unwrap().len(), a.tokens.len());
    assert!(json["sentences"][0]["citations"].is_array());
    let html = a.to_html();
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("&lt;b&gt;"), "titles are escaped");
    assert!(
        html.contains("&amp;") && !html.contains(" & "),
        "document text is escaped"
    );
    assert!(!html.contains("<script"), "self-contained, no scripts");
    for s in &a.sentences {
        for c in &s.citations {
            assert!(html.contains(&format!("href=\"#doc-{c}\"")));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sub/report.html");
    tda_io::write_file(&out, html.as_bytes()).unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), html);
    let names: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file left behind");
}

#[test]
fn generated_answer() {
    let m = tda_model::load_folder::<CpuAutodiff>(&fixture("llama"), &Default::default()).unwrap();
    let docs = docs();
    let mut opts = options();
    opts.generation.stop_token = Some(u32::MAX); // never stop early: exactly 6 tokens
    let req = Request {
        question: "who sat?",
        docs: &docs,
        answer: None,
    };
    let a = attribute(&m.model, &m.tokenizer, None, &req, &opts).unwrap();
    assert!(a.generated);
    assert_eq!(a.passes.generated_tokens, 6);
    assert_eq!(a.tokens.len(), 6);
    assert_eq!(a.passes.forwards, 2);
    let sel = a.tokens.iter().filter(|t| t.selected).count();
    assert!(sel >= 1);
    assert_eq!(a.passes.gradient_rows, sel);
    assert_eq!(a.passes.backwards, 1, "all selected tokens in one backward");
    // Deterministic: the same call gives the same numbers.
    let b = attribute(&m.model, &m.tokenizer, None, &req, &opts).unwrap();
    assert_eq!(a.answer, b.answer);
    let ka: Vec<f32> = a.tokens.iter().map(|t| t.cti).collect();
    let kb: Vec<f32> = b.tokens.iter().map(|t| t.cti).collect();
    assert_eq!(ka, kb);
}

#[test]
fn bad_input_gives_clear_errors() {
    let m = tda_model::load_folder::<CpuAutodiff>(&fixture("gpt2"), &Default::default()).unwrap();
    let opts = options();
    let docs = docs();
    let run = |docs: &[Document], answer: Option<&str>| {
        attribute(
            &m.model,
            &m.tokenizer,
            None,
            &Request {
                question: "q?",
                docs,
                answer,
            },
            &opts,
        )
        .unwrap_err()
        .to_string()
    };
    assert!(
        run(&[], Some("x")).contains("no documents"),
        "{}",
        run(&[], Some("x"))
    );
    assert!(run(&docs, Some("  ")).contains("answer is empty"));
    let long = vec![Document::new("z", None, "word ".repeat(80))];
    let e = run(&long, Some("x"));
    assert!(
        e.contains("longer than the model's context") || e.contains("context is 64 positions"),
        "{e}"
    );
    // A prompt that fits but leaves no room for the answer.
    let fits = vec![Document::new("z", None, "ab ".repeat(14))];
    let e = run(&fits, Some(&"cat ".repeat(30)));
    assert!(e.contains("longer than the model's context"), "{e}");
    let e = tda_context::read_documents(std::path::Path::new("/nonexistent/docs.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/nonexistent/docs.jsonl: "), "{e}");
}

#[test]
fn documents_from_jsonl_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.jsonl");
    std::fs::write(
        &p,
        "{\"id\": \"a\", \"title\": \"T\", \"text\": \"one\"}\n\n{\"text\": \"two\"}\n{\"id\": 7, \"text\": \"three\"}\n",
    )
    .unwrap();
    let d = tda_context::read_documents(&p).unwrap();
    assert_eq!(d.len(), 3);
    assert_eq!(d[0], Document::new("a", Some("T"), "one"));
    assert_eq!(d[1], Document::new("2", None, "two"));
    assert_eq!(d[2].id, "7");
    std::fs::write(&p, "{\"id\": \"a\"}\n").unwrap();
    let e = tda_context::read_documents(&p).unwrap_err().to_string();
    assert!(e.contains("line 1: no string field \"text\""), "{e}");
    std::fs::write(&p, "\n").unwrap();
    assert!(tda_context::read_documents(&p)
        .unwrap_err()
        .to_string()
        .contains("no documents"));

    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    use std::sync::Arc;
    let q = dir.path().join("d.parquet");
    let batch = RecordBatch::try_from_iter(vec![
        (
            "id",
            Arc::new(StringArray::from(vec!["p1", "p2"])) as ArrayRef,
        ),
        (
            "title",
            Arc::new(StringArray::from(vec![Some("Title"), None])) as ArrayRef,
        ),
        (
            "text",
            Arc::new(StringArray::from(vec!["alpha", "beta"])) as ArrayRef,
        ),
    ])
    .unwrap();
    let f = std::fs::File::create(&q).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let d = tda_context::read_documents(&q).unwrap();
    assert_eq!(
        d,
        vec![
            Document::new("p1", Some("Title"), "alpha"),
            Document::new("p2", None, "beta")
        ]
    );
}
